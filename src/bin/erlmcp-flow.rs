//! `erlmcp-flow`: the engine's command line.
//!
//! ```text
//! erlmcp-flow bench [--suite NAME]... [--quick] [--out-dir DIR] [--no-write]
//! erlmcp-flow bench list
//! erlmcp-flow bench compare BASELINE.json LATEST.json [--threshold 0.10] [--fail-on-regression] [--by value|ratio]
//! erlmcp-flow codec encode < message.json > message.emf
//! erlmcp-flow codec decode < message.emf
//! erlmcp-flow version
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use erlmcp_flow::suite::{self, Report, Settings};

const USAGE: &str = "\
usage:
  erlmcp-flow bench [--suite NAME]... [--quick] [--out-dir DIR] [--no-write]
      run the benchmark suites (all by default), print a table and write
      bench/results/<suite>_<UTC timestamp>.json
  erlmcp-flow bench list
      list the suites
  erlmcp-flow bench compare BASELINE.json LATEST.json [--threshold 0.10] [--fail-on-regression]
                                [--by value|ratio]
      compare two result files; with --fail-on-regression exit 1 when a result is worse
      than the baseline by more than the threshold. --by ratio compares the ratio against
      the peer measured in the same run (steadier on a shared machine)
  erlmcp-flow codec encode < MESSAGE.json > MESSAGE.emf
      MCP / JSON-RPC text on stdin to an archive on stdout
  erlmcp-flow codec decode < MESSAGE.emf
      a validated archive on stdin to JSON-RPC text on stdout
  erlmcp-flow version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("compare") => compare(&args[2..]),
            Some("list") => {
                for s in suite::all() {
                    println!("{:<12} {}", s.name, s.about);
                }
                Ok(ExitCode::SUCCESS)
            }
            _ => bench(&args[1..]),
        },
        Some("codec") => codec_cmd(args.get(1).map(String::as_str)),
        Some("version" | "--version" | "-V") => {
            println!("erlmcp-flow {}", erlmcp_flow::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown command\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("erlmcp-flow: {msg}");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &[String]) -> Result<ExitCode, String> {
    let mut names = Vec::new();
    let mut settings = Settings::full();
    let mut out_dir = PathBuf::from("bench/results");
    let mut write = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--suite" => names.push(it.next().ok_or("--suite needs a name")?.clone()),
            "--quick" => settings = Settings::quick(),
            "--out-dir" => out_dir = it.next().ok_or("--out-dir needs a path")?.into(),
            "--no-write" => write = false,
            other => return Err(format!("unknown bench option {other:?}\n{USAGE}")),
        }
    }
    let all = suite::all();
    for n in &names {
        if !all.iter().any(|s| s.name == n) {
            let known: Vec<&str> = all.iter().map(|s| s.name).collect();
            return Err(format!("unknown suite {n:?} (known: {})", known.join(", ")));
        }
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect();
    let interactive = std::io::stdout().is_terminal();
    let total: usize = chosen.iter().map(|s| s.steps).sum();
    let mut done = 0usize;
    let machine = suite::Machine::this();
    println!(
        "erlmcp-flow {} bench on {} ({} cpus){}",
        erlmcp_flow::VERSION,
        machine.model,
        machine.cpus,
        if settings.samples < Settings::full().samples {
            ", --quick"
        } else {
            ""
        }
    );
    for s in chosen {
        let mut progress = |step: &str| {
            if interactive {
                let width = 30;
                let filled = (done * width)
                    .checked_div(total)
                    .unwrap_or(width)
                    .min(width);
                eprint!(
                    "\r[{}{}] {}/{} {}: {:<28}",
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    done,
                    total,
                    s.name,
                    step
                );
                let _ = std::io::stderr().flush();
            }
            done += 1;
        };
        let results = (s.run)(settings, &mut progress);
        if interactive {
            eprint!("\r{:<80}\r", "");
        }
        let (timestamp, stamp) = suite::utc_now();
        let report = Report {
            suite: s.name.to_owned(),
            timestamp,
            machine: machine.clone(),
            results,
        };
        println!(
            "\n== {} — {}\n{}",
            s.name,
            s.about,
            suite::table(&report.results)
        );
        if write {
            std::fs::create_dir_all(&out_dir)
                .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
            let path = out_dir.join(format!("{}_{stamp}.json", s.name));
            std::fs::write(&path, report.to_json() + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(args: &[String]) -> Result<ExitCode, String> {
    let mut files = Vec::new();
    let mut threshold = 0.10;
    let mut fail = false;
    let mut by = suite::CompareBy::Value;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threshold" => {
                let t = it.next().ok_or("--threshold needs a number")?;
                threshold = t
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| format!("bad threshold {t:?}"))?;
            }
            "--fail-on-regression" => fail = true,
            "--by" => {
                by = match it.next().map(String::as_str) {
                    Some("value") => suite::CompareBy::Value,
                    Some("ratio") => suite::CompareBy::Ratio,
                    other => return Err(format!("--by takes value or ratio, not {other:?}")),
                }
            }
            f if !f.starts_with("--") => files.push(f.to_owned()),
            other => return Err(format!("unknown compare option {other:?}")),
        }
    }
    let [base, latest] = files.as_slice() else {
        return Err("compare needs BASELINE.json and LATEST.json".into());
    };
    let read = |p: &str| -> Result<Report, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"))?;
        Report::from_json(&bytes).map_err(|e| format!("{p}: {e}"))
    };
    let (b, l) = (read(base)?, read(latest)?);
    let rows = suite::compare(&b, &l, threshold, by);
    if rows.is_empty() {
        return Err("the two files have no result names in common".into());
    }
    println!(
        "{:<28} {:>14} {:>14} {:>9}  verdict (threshold {:.0}%)",
        "metric",
        "baseline",
        "latest",
        "gain",
        threshold * 100.0
    );
    let mut regressed = 0;
    for r in &rows {
        regressed += usize::from(r.regressed);
        println!(
            "{:<28} {:>14.4} {:>14.4} {:>+8.1}%  {}",
            r.name,
            r.baseline,
            r.latest,
            -r.worse_by * 100.0,
            if r.regressed {
                "REGRESSED"
            } else if r.worse_by < -threshold {
                "improved"
            } else {
                "ok"
            }
        );
    }
    println!("{} compared, {} regressed", rows.len(), regressed);
    Ok(if fail && regressed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn codec_cmd(what: Option<&str>) -> Result<ExitCode, String> {
    use erlmcp_flow::codec::jsonrpc;
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let out: Vec<u8> = match what {
        Some("encode") => jsonrpc::json_to_archive(&input, Default::default())
            .map_err(|e| e.to_string())?
            .to_vec(),
        Some("decode") => {
            let mut json = jsonrpc::archive_to_json(&input).map_err(|e| e.to_string())?;
            json.push('\n');
            json.into_bytes()
        }
        _ => return Err(format!("codec needs encode or decode\n{USAGE}")),
    };
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| format!("cannot write stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
