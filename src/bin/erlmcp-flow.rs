//! `erlmcp-flow`: the engine's command line.
//!
//! ```text
//! erlmcp-flow bench [--suite NAME]... [--quick] [--out-dir DIR] [--no-write]
//! erlmcp-flow bench list
//! erlmcp-flow bench compare BASELINE.json LATEST.json [--threshold 0.10] [--fail-on-regression] [--by value|ratio]
//! erlmcp-flow stat [NAME] [--dir DIR] [--watch SECONDS]
//! erlmcp-flow shm gc|list [--dir DIR]
//! erlmcp-flow ring create NAME [--capacity BYTES] [--mpsc] [--dir DIR]
//! erlmcp-flow ring produce NAME [--id N | --slot K] [--count N] [--size BYTES] [--hold-claim] [--dir DIR]
//! erlmcp-flow ring consume NAME [--count N] [--manual --progress FILE [--until-empty]] [--dir DIR]
//! erlmcp-flow ring chaos [--kills N] [--seed S] [--zombie-ms MS] [--dir DIR]
//! erlmcp-flow codec encode < message.json > message.emf
//! erlmcp-flow codec decode < message.emf
//! erlmcp-flow version
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use erlmcp_flow::suite::{self, Report, Settings};

#[path = "cli/chaos.rs"]
mod chaos;

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
  erlmcp-flow stat [NAME] [--dir DIR] [--watch SECONDS]
      read a ring's counters from outside (no participant attaches); all rings without NAME
  erlmcp-flow shm gc|list [--dir DIR]
      gc: remove what is provably stale (segments without a live participant, state key
      files whose value is gone); files it cannot judge (e.g. permission denied) are kept
      and listed as skipped. list: list segments
  erlmcp-flow ring create NAME [--capacity BYTES] [--mpsc] [--dir DIR]
  erlmcp-flow ring produce NAME [--id N | --slot K] [--count N] [--size BYTES] [--hold-claim]
                              [--dwell-us US] [--dir DIR]
      send sequence-numbered frames (count 0 = until killed), waiting when the ring is full;
      with --slot, in producer slot K, numbered on from the slot's committed count; with
      --hold-claim, then claim one more frame and hold it uncommitted until stdin closes (a
      producer stuck mid-write, for crash tests); with --dwell-us, each frame is claimed,
      half written, held US microseconds, then finished and committed (kills land mid-claim)
  erlmcp-flow ring consume NAME [--count N] [--dir DIR]
      receive and check sequence-numbered frames (no loss, duplicate, reorder or corruption)
  erlmcp-flow ring consume NAME --manual --progress FILE [--until-empty] [--dir DIR]
      the same with acknowledgements: progress is saved, then acknowledged; a restarted
      consumer accepts redelivered frames and fails on a gap (exit 4) or corruption (exit 3)
  erlmcp-flow ring chaos [--kills N] [--seed S] [--zombie-ms MS] [--dir DIR]
      kill -9 campaign over an SPSC and an MPSC ring: producers, consumers, zombies left
      unreaped, slot takeovers; checks every byte of every frame, prints the counts
  erlmcp-flow codec encode < MESSAGE.json > MESSAGE.emf
      MCP / JSON-RPC text on stdin to an archive on stdout
  erlmcp-flow codec decode < MESSAGE.emf
      a validated archive on stdin to JSON-RPC text on stdout
  erlmcp-flow version";

/// Counts allocations during memory measurements (`bench --suite queue`); idle otherwise.
#[global_allocator]
static ALLOC: erlmcp_flow::suite::alloc::Counting = erlmcp_flow::suite::alloc::Counting;

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
        Some("stat") => stat_cmd(&args[1..]),
        Some("shm") => shm_cmd(&args[1..]),
        Some("ring") => ring_cmd(&args[1..]),
        Some("bench-helper") => {
            erlmcp_flow::suite::ring::helper(&args[1..]).map(|()| ExitCode::SUCCESS)
        }
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

/// Options shared by the shm / ring / stat commands.
pub(crate) struct ShmArgs {
    positional: Vec<String>,
    dir: std::path::PathBuf,
    capacity: usize,
    mpsc: bool,
    id: u32,
    count: u64,
    size: usize,
    hold_claim: bool,
    watch: Option<f64>,
    slot: Option<usize>,
    manual: bool,
    progress: Option<PathBuf>,
    until_empty: bool,
    kills: u64,
    seed: u64,
    zombie_ms: u64,
    dwell_us: u64,
}

fn shm_args(args: &[String]) -> Result<ShmArgs, String> {
    let mut a = ShmArgs {
        positional: Vec::new(),
        dir: erlmcp_flow::shm::DEFAULT_DIR.into(),
        capacity: 1 << 20,
        mpsc: false,
        id: 0,
        count: 0,
        size: 64,
        hold_claim: false,
        watch: None,
        slot: None,
        manual: false,
        progress: None,
        until_empty: false,
        kills: 1000,
        seed: 1,
        zombie_ms: 200,
        dwell_us: 0,
    };
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what} needs a number"))
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--dir" => a.dir = it.next().ok_or("--dir needs a path")?.into(),
            "--capacity" => a.capacity = num(it.next(), "--capacity")? as usize,
            "--mpsc" => a.mpsc = true,
            "--hold-claim" => a.hold_claim = true,
            "--id" => a.id = num(it.next(), "--id")? as u32,
            "--count" => a.count = num(it.next(), "--count")?,
            "--size" => a.size = num(it.next(), "--size")? as usize,
            "--slot" => a.slot = Some(num(it.next(), "--slot")? as usize),
            "--manual" => a.manual = true,
            "--progress" => a.progress = Some(it.next().ok_or("--progress needs a path")?.into()),
            "--until-empty" => a.until_empty = true,
            "--kills" => a.kills = num(it.next(), "--kills")?,
            "--seed" => a.seed = num(it.next(), "--seed")?,
            "--zombie-ms" => a.zombie_ms = num(it.next(), "--zombie-ms")?,
            "--dwell-us" => a.dwell_us = num(it.next(), "--dwell-us")?,
            "--watch" => {
                a.watch = Some(
                    it.next()
                        .and_then(|s| s.parse().ok())
                        .filter(|s: &f64| *s > 0.0)
                        .ok_or("--watch needs a positive number of seconds")?,
                )
            }
            o if o.starts_with("--") => return Err(format!("unknown option {o:?}\n{USAGE}")),
            o => a.positional.push(o.to_owned()),
        }
    }
    Ok(a)
}

fn seg_opts(a: &ShmArgs) -> erlmcp_flow::shm::SegmentOptions {
    erlmcp_flow::shm::SegmentOptions {
        dir: a.dir.clone(),
        ..Default::default()
    }
}

fn shm_cmd(args: &[String]) -> Result<ExitCode, String> {
    let a = shm_args(args.get(1..).unwrap_or_default())?;
    match args.first().map(String::as_str) {
        Some("gc") => {
            let r = erlmcp_flow::shm::gc(&a.dir).map_err(|e| e.to_string())?;
            for p in &r.removed {
                println!("removed {}", p.display());
            }
            for s in &r.skipped {
                println!("skipped {}: {}", s.path.display(), s.reason);
            }
            println!(
                "{} removed, {} kept (in use), {} skipped (could not be judged; never removed)",
                r.removed.len(),
                r.kept.len(),
                r.skipped.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("list") => {
            for n in erlmcp_flow::shm::list(&a.dir).map_err(|e| e.to_string())? {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("shm needs gc or list\n{USAGE}")),
    }
}

fn stat_cmd(args: &[String]) -> Result<ExitCode, String> {
    use erlmcp_flow::ring::Ring;
    let a = shm_args(args)?;
    let opts = seg_opts(&a);
    let names = if a.positional.is_empty() {
        erlmcp_flow::shm::list(&a.dir).map_err(|e| e.to_string())?
    } else {
        a.positional.clone()
    };
    let rings: Vec<Ring> = names
        .iter()
        .filter_map(|n| match Ring::inspect(n, &opts) {
            Ok(r) => Some(r),
            Err(e) => {
                if !a.positional.is_empty() {
                    eprintln!("erlmcp-flow: {n}: {e}");
                }
                None
            }
        })
        .collect();
    if rings.is_empty() {
        return Err(format!("no rings found in {}", a.dir.display()));
    }
    let interactive = std::io::stdout().is_terminal();
    let mut last: Vec<Option<(std::time::Instant, u64, u64)>> = vec![None; rings.len()];
    loop {
        if a.watch.is_some() && interactive {
            print!("\x1b[2J\x1b[H");
        }
        for (r, prev) in rings.iter().zip(last.iter_mut()) {
            let s = r.stats();
            let now = std::time::Instant::now();
            let rate = prev.map(|(t, sent, bytes)| {
                let dt = now.duration_since(t).as_secs_f64().max(1e-9);
                ((s.sent - sent) as f64 / dt, (s.bytes - bytes) as f64 / dt)
            });
            *prev = Some((now, s.sent, s.bytes));
            println!(
                "ring {}  capacity {}  {}  tail {}",
                s.name,
                s.capacity,
                if s.multi_producer { "mpsc" } else { "spsc" },
                s.tail
            );
            println!(
                "  sent {}  bytes {}  received {}  backpressure {}  unblocked {}  dead reaped {}  max lag {}  corrupt {}",
                s.sent, s.bytes, s.received, s.backpressure, s.unblocked, s.dead_reaped, s.max_lag, s.corrupt_frames
            );
            if let Some((m, b)) = rate {
                println!("  rate {m:.0} msg/s  {:.1} MB/s", b / 1e6);
            }
            for p in &s.producers {
                println!(
                    "  producer pid {} {}  sent {}  bytes {}{}",
                    p.pid,
                    if p.alive { "alive" } else { "gone" },
                    p.sent,
                    p.bytes,
                    if p.claiming { "  (claiming)" } else { "" }
                );
            }
            for c in &s.subscribers {
                println!(
                    "  {} pid {} {}  position {}  lag {}  received {}",
                    if c.slot == 0 {
                        "consumer".to_owned()
                    } else {
                        format!("subscriber {}", c.slot)
                    },
                    c.pid,
                    if c.alive { "alive" } else { "detached" },
                    c.position,
                    c.lag,
                    c.received
                );
            }
        }
        let Some(secs) = a.watch else {
            return Ok(ExitCode::SUCCESS);
        };
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
}

fn r_open(
    name: &str,
    opts: &erlmcp_flow::shm::SegmentOptions,
) -> Result<erlmcp_flow::ring::Ring, String> {
    erlmcp_flow::ring::Ring::open(name, opts).map_err(|e| e.to_string())
}

fn ring_cmd(args: &[String]) -> Result<ExitCode, String> {
    use erlmcp_flow::ring::{seq, Ring, RingOptions, WaitStrategy};
    use std::time::Duration;
    let a = shm_args(args.get(1..).unwrap_or_default())?;
    let name = match a.positional.first() {
        Some(n) => n.as_str(),
        None if args.first().map(String::as_str) == Some("chaos") => "chaos",
        None => return Err("ring commands need a ring NAME".into()),
    };
    let opts = seg_opts(&a);
    match args.first().map(String::as_str) {
        Some("create") => {
            let r = Ring::create(
                name,
                &RingOptions {
                    capacity: a.capacity,
                    multi_producer: a.mpsc,
                    segment: opts,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            println!("created ring {} ({} bytes)", r.name(), r.capacity());
            // The segment outlives this process: it is stale only once nobody attaches.
            std::mem::forget(r);
            Ok(ExitCode::SUCCESS)
        }
        Some("produce") => {
            let r = Ring::open(name, &opts).map_err(|e| e.to_string())?;
            // In a slot, the producer is the slot's: its frames carry the slot as their id
            // and continue the slot's numbering (a restarted producer resends nothing and
            // skips nothing).
            let (mut p, id) = match a.slot {
                // A restarted producer may start before its killed predecessor is gone:
                // retry a held slot for a while.
                Some(k) => {
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    let p = loop {
                        match r.producer_in_slot(k) {
                            Err(e)
                                if e.kind() == erlmcp_flow::ErrorKind::Busy
                                    && std::time::Instant::now() < deadline =>
                            {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            other => break other.map_err(|e| e.to_string())?,
                        }
                    };
                    (p, k as u32)
                }
                None => (r.producer().map_err(|e| e.to_string())?, a.id),
            };
            let mut buf = vec![0u8; a.size.max(seq::MIN_LEN)];
            let mut s = if a.slot.is_some() { p.committed() } else { 0 };
            while a.count == 0 || s < a.count {
                seq::fill(&mut buf, id, s);
                if a.dwell_us == 0 {
                    p.send_timeout(
                        &buf,
                        WaitStrategy::SpinThenPark { spins: 200 },
                        Duration::from_secs(3600),
                    )
                    .map_err(|e| e.to_string())?;
                } else {
                    // Claim, write half, dwell, write the rest, commit: a claim stays open
                    // long enough for a kill to land inside it (crash tests).
                    let mut claim = loop {
                        match p.try_claim(buf.len()) {
                            Err(e) if e.kind() == erlmcp_flow::ErrorKind::Full => {
                                std::thread::yield_now()
                            }
                            other => break other.map_err(|e| e.to_string())?,
                        }
                    };
                    let half = buf.len() / 2;
                    claim.as_mut_slice()[..half].copy_from_slice(&buf[..half]);
                    let until = std::time::Instant::now() + Duration::from_micros(a.dwell_us);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    claim.as_mut_slice()[half..].copy_from_slice(&buf[half..]);
                    claim.commit();
                }
                s += 1;
            }
            if a.hold_claim {
                let mut claim = p.try_claim(a.size).map_err(|e| e.to_string())?;
                claim.as_mut_slice().fill(0xEE);
                println!("holding a claim of {} bytes", a.size);
                std::io::stdout()
                    .flush()
                    .map_err(|e| format!("cannot write stdout: {e}"))?;
                // Until stdin closes (or this process is killed); dropping the claim then
                // aborts it.
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                drop(claim);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("consume") if a.manual => chaos::consume_manual(&r_open(name, &opts)?, &a),
        Some("chaos") => chaos::campaign(name, &a),
        Some("consume") => {
            let r = Ring::open(name, &opts).map_err(|e| e.to_string())?;
            let mut c = r.consumer().map_err(|e| e.to_string())?;
            let mut t = seq::Tracker::default();
            let mut err = None;
            while (a.count == 0 || t.received < a.count) && err.is_none() {
                c.poll(4096, |f| {
                    if let Err(e) = t.record(f) {
                        err.get_or_insert(e);
                    }
                })
                .map_err(|e| e.to_string())?;
                c.wait(WaitStrategy::default(), Duration::from_secs(1))
                    .map_err(|e| e.to_string())?;
            }
            if let Some(e) = err {
                return Err(e);
            }
            println!("received {} frames, all in order and intact", t.received);
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("ring needs create, produce or consume\n{USAGE}")),
    }
}
