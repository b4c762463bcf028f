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
//! erlmcp-flow agents worker --dir DIR --id ID [--type T] [--max-tasks N] [--work-us US] [--count N]
//! erlmcp-flow agents chaos [--tasks N] [--agents N] [--kills N] [--scheduler-kills N] [--seed S]
//! erlmcp-flow agents show [--dir DIR] [--json]
//! erlmcp-flow raft node --id N --peers 1,2,3 (--data-dir DIR | --memory) [--transport ring --net-dir DIR | --transport tcp --listen ADDR --peer-addr ID=ADDR... --client-addr ID=ADDR...]
//! erlmcp-flow raft status|put KEY VALUE|get KEY [--nodes 1,2,3] [--net-dir DIR | --peer-addr ID=ADDR... --listen ADDR]
//! erlmcp-flow raft cluster [--nodes 3] [--dir DIR] [--memory]
//! erlmcp-flow gossip member --id N --peers 1,2,3 [--seeds 1] [--transport ring --net-dir DIR | --transport tcp --listen ADDR --peer-addr ID=ADDR...] [--put KEY=VALUE]... [--show-ms MS] [--round-ms MS] [--report] [--ring-spins N]
//! erlmcp-flow gossip cluster [--members 16] [--duration-s 30] [--loss P] [--stress N] [--kill ID]
//! erlmcp-flow codec encode < message.json > message.emf
//! erlmcp-flow codec decode < message.emf
//! erlmcp-flow version
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use erlmcp_flow_bench::suite::{self, Report, Settings};

#[path = "cli/agents.rs"]
mod agents;
#[path = "cli/agents_show.rs"]
mod agents_show;
#[path = "cli/chaos.rs"]
mod chaos;
#[path = "cli/gossip.rs"]
mod gossip;
#[path = "cli/raft.rs"]
mod raft;

/// The engine's command line: benchmarks, ring tools, shared-memory housekeeping, codec.
#[derive(Parser)]
#[command(
    name = "erlmcp-flow",
    version = erlmcp_flow::VERSION,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark suites (all by default), print a table and write
    /// bench/results/SUITE_TIMESTAMP.json (UTC)
    Bench(BenchArgs),
    /// Read rings' counters from outside (no participant attaches); all rings without NAME
    Stat(StatArgs),
    /// Shared-memory segments: remove what is provably stale, or list them
    Shm {
        #[command(subcommand)]
        cmd: ShmCmd,
    },
    /// Sequence-numbered frames through a ring, and the kill -9 campaign
    Ring {
        #[command(subcommand)]
        cmd: RingCmd,
    },
    /// The scheduler's agents: read a directory from outside, run agent processes, and the
    /// kill -9 reliability test
    Agents {
        #[command(subcommand)]
        cmd: agents::AgentsCmd,
    },
    /// The Raft service: run a node (rings or TCP), ask the nodes' status, put and get keys,
    /// start a local cluster
    Raft {
        #[command(subcommand)]
        cmd: raft::RaftCmd,
    },
    /// SWIM membership and gossip: run a member (rings or TCP) and show its member list, or
    /// a local cluster with loss, CPU stress and a killed member
    Gossip {
        #[command(subcommand)]
        cmd: gossip::GossipCmd,
    },
    /// MCP / JSON-RPC text to an archive and back (stdin to stdout)
    Codec {
        #[command(subcommand)]
        cmd: CodecCmd,
    },
    /// The other side of the benchmarks' cross-process measurements (src/suite/ring.rs)
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    BenchHelper {
        /// Passed to the helper as they are
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the version
    Version,
}

/// The directory of the shared-memory segments (shm, ring and stat commands).
#[derive(Args)]
struct Seg {
    /// Directory of the segments
    #[arg(long, value_name = "DIR", default_value = erlmcp_flow::shm::DEFAULT_DIR)]
    dir: PathBuf,
}

impl Seg {
    fn opts(&self) -> erlmcp_flow::shm::SegmentOptions {
        erlmcp_flow::shm::SegmentOptions {
            dir: self.dir.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCmd>,
    /// Run this suite (repeatable; all suites by default)
    #[arg(long = "suite", value_name = "NAME", value_parser = suite_names())]
    suites: Vec<String>,
    /// Fewer samples: a smoke run, not a measurement
    #[arg(long)]
    quick: bool,
    /// Where to write the result files
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out_dir: PathBuf,
    /// Print the tables only, write no result file
    #[arg(long)]
    no_write: bool,
}

fn suite_names() -> clap::builder::PossibleValuesParser {
    suite::all()
        .into_iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .into()
}

#[derive(Subcommand)]
enum BenchCmd {
    /// List the suites
    List,
    /// Compare two result files; with --fail-on-regression exit 1 when a result is worse
    /// than the baseline by more than the threshold
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// The reference result file
    #[arg(value_name = "BASELINE.json")]
    baseline: PathBuf,
    /// The result file to judge
    #[arg(value_name = "LATEST.json")]
    latest: PathBuf,
    /// Relative change counted as a regression (0.10 = 10%)
    #[arg(long, value_name = "FRACTION", default_value = "0.10", value_parser = threshold)]
    threshold: f64,
    /// Exit 1 when a result regressed
    #[arg(long)]
    fail_on_regression: bool,
    /// Compare the values, or the ratio against the peer measured in the same run
    /// (steadier on a shared machine)
    #[arg(long, value_enum, default_value_t = By::Value)]
    by: By,
}

fn threshold(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| "not a finite number >= 0".to_owned())
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Value,
    Ratio,
}

#[derive(Args)]
struct StatArgs {
    /// Rings to read (all rings of the directory by default)
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Print again every SECONDS, with rates
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    watch: Option<f64>,
    #[command(flatten)]
    seg: Seg,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| "not a positive number of seconds".to_owned())
}

#[derive(Subcommand)]
enum ShmCmd {
    /// Remove what is provably stale (segments without a live participant, state key files
    /// whose value is gone); files it cannot judge (e.g. permission denied) are kept and
    /// listed as skipped
    Gc(Seg),
    /// List the segments
    List(Seg),
}

#[derive(Subcommand)]
enum RingCmd {
    /// Create a ring (its segment outlives this command)
    Create(CreateArgs),
    /// Send sequence-numbered frames (count 0 = until killed), waiting when the ring is full
    Produce(ProduceArgs),
    /// Receive and check sequence-numbered frames (no loss, duplicate, reorder or
    /// corruption); with --manual, acknowledge after saving progress, and exit 3 on a
    /// corrupt frame, 4 on a gap, 5 on a duplicate
    Consume(ConsumeArgs),
    /// Kill -9 campaign over an SPSC and an MPSC ring: producers, consumers, zombies left
    /// unreaped, slot takeovers; checks every byte of every frame, prints the counts
    Chaos(ChaosArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The ring's name
    name: String,
    /// Capacity in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    capacity: usize,
    /// Multi-producer (default: single producer)
    #[arg(long)]
    mpsc: bool,
    #[command(flatten)]
    seg: Seg,
}

#[derive(Args)]
struct ProduceArgs {
    /// The ring's name
    name: String,
    /// Producer id carried by the frames
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "slot")]
    id: u32,
    /// Produce in producer slot K, numbered on from the slot's committed count (the frames
    /// carry K as their id)
    #[arg(long, value_name = "K")]
    slot: Option<usize>,
    /// Number of frames (0 = until killed)
    #[arg(long, value_name = "N", default_value_t = 0)]
    count: u64,
    /// Frame size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Then claim one more frame and hold it uncommitted until stdin closes (a producer
    /// stuck mid-write, for crash tests)
    #[arg(long)]
    hold_claim: bool,
    /// Claim each frame, write half, hold it US microseconds, then finish and commit (kills
    /// land mid-claim)
    #[arg(long, value_name = "US", default_value_t = 0)]
    dwell_us: u64,
    #[command(flatten)]
    seg: Seg,
}

#[derive(Args)]
struct ConsumeArgs {
    /// The ring's name
    name: String,
    /// Number of frames to receive (0 = until killed)
    #[arg(long, value_name = "N", default_value_t = 0)]
    count: u64,
    /// Acknowledge manually: progress is saved, then acknowledged; a restarted consumer
    /// accepts redelivered frames and fails on a gap (exit 4) or corruption (exit 3)
    #[arg(long, requires = "progress")]
    manual: bool,
    /// Where --manual saves its progress
    #[arg(long, value_name = "FILE")]
    progress: Option<PathBuf>,
    /// With --manual: stop once the ring is empty
    #[arg(long, requires = "manual")]
    until_empty: bool,
    #[command(flatten)]
    seg: Seg,
}

#[derive(Args)]
struct ChaosArgs {
    /// Prefix of the campaign's directory
    #[arg(default_value = "chaos")]
    name: String,
    /// Number of kills
    #[arg(long, value_name = "N", default_value_t = 1000)]
    kills: u64,
    /// Seed of the campaign's random choices (a campaign is repeatable by seed)
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Leave a killed process unreaped (a zombie) for up to MS milliseconds (0 = never)
    #[arg(long, value_name = "MS", default_value_t = 200)]
    zombie_ms: u64,
    #[command(flatten)]
    seg: Seg,
}

#[derive(Subcommand)]
enum CodecCmd {
    /// MCP / JSON-RPC text on stdin to an archive on stdout
    Encode,
    /// A validated archive on stdin to JSON-RPC text on stdout
    Decode,
}

/// Counts allocations during memory measurements (`bench --suite queue`); idle otherwise.
#[global_allocator]
static ALLOC: erlmcp_flow_bench::suite::alloc::Counting = erlmcp_flow_bench::suite::alloc::Counting;

fn main() -> ExitCode {
    // A closed stdout (`erlmcp-flow stat --watch 1 | head`) ends the command quietly, as it
    // does any Unix filter, instead of `println!` panicking on EPIPE: the Rust runtime
    // ignores SIGPIPE, so put back the default action before anything is written.
    // SAFETY: signal(2) with SIG_DFL installs no handler (nothing of ours runs in signal
    // context); this runs first in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Usage errors exit 2 (clap's), --help and --version exit 0.
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Bench(BenchArgs {
            cmd: Some(BenchCmd::Compare(c)),
            ..
        }) => compare(&c),
        Cmd::Bench(BenchArgs {
            cmd: Some(BenchCmd::List),
            ..
        }) => {
            for s in suite::all() {
                println!("{:<12} {}", s.name, s.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => bench(&b),
        Cmd::Agents { cmd } => agents::run(&cmd),
        Cmd::Raft { cmd } => raft::run(&cmd),
        Cmd::Gossip { cmd } => gossip::run(&cmd),
        Cmd::Codec { cmd } => codec_cmd(&cmd),
        Cmd::Stat(a) => stat_cmd(&a),
        Cmd::Shm { cmd } => shm_cmd(&cmd),
        Cmd::Ring { cmd } => ring_cmd(&cmd),
        Cmd::BenchHelper { args } => {
            erlmcp_flow_bench::suite::ring::helper(&args).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Version => {
            println!("erlmcp-flow {}", erlmcp_flow::VERSION);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("erlmcp-flow: {msg}");
            ExitCode::from(2)
        }
    }
}

fn bench(b: &BenchArgs) -> Result<ExitCode, String> {
    let settings = if b.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let (names, out_dir, write) = (&b.suites, &b.out_dir, !b.no_write);
    let all = suite::all();
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
            std::fs::create_dir_all(out_dir)
                .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
            let path = out_dir.join(format!("{}_{stamp}.json", s.name));
            std::fs::write(&path, report.to_json() + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(c: &CompareArgs) -> Result<ExitCode, String> {
    let threshold = c.threshold;
    let by = match c.by {
        By::Value => suite::CompareBy::Value,
        By::Ratio => suite::CompareBy::Ratio,
    };
    let read = |p: &std::path::Path| -> Result<Report, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        Report::from_json(&bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (b, l) = (read(&c.baseline)?, read(&c.latest)?);
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
    Ok(if c.fail_on_regression && regressed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn codec_cmd(what: &CodecCmd) -> Result<ExitCode, String> {
    use erlmcp_flow::codec::jsonrpc;
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let out: Vec<u8> = match what {
        CodecCmd::Encode => jsonrpc::json_to_archive(&input, Default::default())
            .map_err(|e| e.to_string())?
            .to_vec(),
        CodecCmd::Decode => {
            let mut json = jsonrpc::archive_to_json(&input).map_err(|e| e.to_string())?;
            json.push('\n');
            json.into_bytes()
        }
    };
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| format!("cannot write stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn shm_cmd(cmd: &ShmCmd) -> Result<ExitCode, String> {
    match cmd {
        ShmCmd::Gc(a) => {
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
        ShmCmd::List(a) => {
            for n in erlmcp_flow::shm::list(&a.dir).map_err(|e| e.to_string())? {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stat_cmd(a: &StatArgs) -> Result<ExitCode, String> {
    use erlmcp_flow::ring::Ring;
    let opts = a.seg.opts();
    let names = if a.names.is_empty() {
        erlmcp_flow::shm::list(&a.seg.dir).map_err(|e| e.to_string())?
    } else {
        a.names.clone()
    };
    let rings: Vec<Ring> = names
        .iter()
        .filter_map(|n| match Ring::inspect(n, &opts) {
            Ok(r) => Some(r),
            Err(e) => {
                if !a.names.is_empty() {
                    eprintln!("erlmcp-flow: {n}: {e}");
                }
                None
            }
        })
        .collect();
    if rings.is_empty() {
        return Err(format!("no rings found in {}", a.seg.dir.display()));
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

fn ring_cmd(cmd: &RingCmd) -> Result<ExitCode, String> {
    use erlmcp_flow::ring::{seq, Ring, RingOptions, WaitStrategy};
    use std::time::Duration;
    match cmd {
        RingCmd::Create(a) => {
            let r = Ring::create(
                &a.name,
                &RingOptions {
                    capacity: a.capacity,
                    multi_producer: a.mpsc,
                    segment: a.seg.opts(),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            println!("created ring {} ({} bytes)", r.name(), r.capacity());
            // The segment outlives this process: it is stale only once nobody attaches.
            std::mem::forget(r);
            Ok(ExitCode::SUCCESS)
        }
        RingCmd::Produce(a) => {
            let r = Ring::open(&a.name, &a.seg.opts()).map_err(|e| e.to_string())?;
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
        RingCmd::Consume(a) if a.manual => {
            let r = Ring::open(&a.name, &a.seg.opts()).map_err(|e| e.to_string())?;
            chaos::consume_manual(&r, a)
        }
        RingCmd::Chaos(a) => chaos::campaign(a),
        RingCmd::Consume(a) => {
            let r = Ring::open(&a.name, &a.seg.opts()).map_err(|e| e.to_string())?;
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
    }
}
