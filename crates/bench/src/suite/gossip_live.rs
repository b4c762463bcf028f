//! Live gossip convergence (issue 14): N member *processes* of the `erlmcp-flow` binary
//! (`gossip member --report`) over inbox rings in one directory under `/dev/shm`, on this
//! machine.
//!
//! [`LiveCluster`] starts the N processes (ids 1..=N, every one seeded with member 1), reads
//! their `--report` lines (each carries CLOCK_MONOTONIC, the same clock in every process) on
//! one thread per process, and kills them all and removes the directory when dropped, even
//! when a measurement fails. A measurement ([`LiveCluster::converge`]): once every member sees
//! the N − 1 others live (SWIM), member 1 is told on its stdin to write one key; it reports
//! when it wrote it, every other member reports when it first held it; convergence is the last
//! of those times less the write's, and rounds are that over the gossip round interval.
//!
//! Rows ([`live_results`], run by `erlmcp-flow bench --suite gossip`):
//! `gossip_convergence_ms_live16` / `_live64` and `gossip_convergence_rounds_live16` /
//! `_live64` at the default 100 ms rounds, and the same with `_10ms` at 10 ms rounds; each the
//! median of [`REPS`] keys (3 with `--quick`) in one running cluster. Beside the 100 ms rows,
//! the Serf/memberlist model's figure for the same N from the simulator (its defaults: 200 ms
//! interval, fan-out 3), as the suite's simulated rows do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::gossip::{measure, SEEDS};
use super::{BenchResult, Better, Settings};

/// Keys measured per configuration in a full run (3 with `--quick`).
pub const REPS: usize = 5;
/// How long a cluster may take until every member sees every other.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one key may take to reach every member.
const KEY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`LiveCluster`] is started.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The `erlmcp-flow` binary.
    pub binary: PathBuf,
    /// Member processes (ids 1..=members).
    pub members: usize,
    /// Gossip's round interval in ms (`--round-ms`).
    pub round_ms: u64,
    /// SWIM's probe period in ms (`--probe-ms`).
    pub probe_ms: u64,
}

/// What the members reported so far.
#[derive(Debug, Default, Clone)]
pub struct Reports {
    /// Each member's last `live` count, by id.
    pub live: HashMap<u64, usize>,
    /// When each key was first held, by key, then by member id (µs, CLOCK_MONOTONIC).
    pub held: HashMap<String, HashMap<u64, u64>>,
    /// When member 1 wrote each key (µs, CLOCK_MONOTONIC).
    pub written: HashMap<String, u64>,
    /// `(observer, member)` for every `down` line.
    pub downs: Vec<(u64, u64)>,
    /// `(observer, line)` for every `rejoined` line (the cluster had declared it down).
    pub rejoins: Vec<(u64, String)>,
    /// Lines that did not parse, `(observer, line)`.
    pub garbled: Vec<(u64, String)>,
}

impl Reports {
    fn take(&mut self, id: u64, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|x| x.parse::<u64>().ok());
        match (w.first().copied(), w.len()) {
            (Some("live"), 3) if num(1).is_some() && num(2).is_some() => {
                self.live.insert(id, num(1).unwrap_or(0) as usize);
            }
            (Some("key"), 3) if num(2).is_some() => {
                let t = num(2).unwrap_or(0);
                self.held
                    .entry(w[1].to_string())
                    .or_default()
                    .entry(id)
                    .or_insert(t);
            }
            (Some("put"), 3) if num(2).is_some() => {
                self.written.insert(w[1].to_string(), num(2).unwrap_or(0));
            }
            (Some("down"), 3) if num(1).is_some() => {
                self.downs.push((id, num(1).unwrap_or(0)));
            }
            (Some("rejoined"), _) => self.rejoins.push((id, line.to_string())),
            (Some("up" | "suspect" | "restarted"), 3) => {}
            _ => self.garbled.push((id, line.to_string())),
        }
    }
}

/// One key's spread: from its write at member 1 to the last member holding it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveConvergence {
    /// Milliseconds from the write to the last member's first holding it.
    pub ms: f64,
    /// `ms` over the round interval.
    pub rounds: f64,
}

/// N running member processes; killed (SIGKILL) and their directory removed on drop.
pub struct LiveCluster {
    opts: LiveOptions,
    dir: PathBuf,
    children: Vec<Option<Child>>,
    stdin: Option<ChildStdin>,
    lines: Receiver<(u64, String)>,
    reports: Reports,
}

impl std::fmt::Debug for LiveCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCluster")
            .field("opts", &self.opts)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LiveCluster {
    /// Starts `opts.members` processes over rings in a fresh directory under `/dev/shm` (the
    /// system's temporary directory without it). Errors name what failed; the processes
    /// started so far are killed.
    pub fn start(opts: LiveOptions) -> Result<LiveCluster, String> {
        if opts.members < 2 {
            return Err("a live cluster needs at least 2 members".into());
        }
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = base.join(format!(
            "emf-gossip-live-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (tx, lines) = mpsc::channel();
        let mut c = LiveCluster {
            opts: opts.clone(),
            dir,
            children: Vec::new(),
            stdin: None,
            lines,
            reports: Reports::default(),
        };
        let peers = (1..=opts.members)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=opts.members as u64 {
            let mut child = Command::new(&opts.binary)
                .args(["gossip", "member", "--report", "--id", &id.to_string()])
                .args(["--peers", &peers, "--net-dir"])
                .arg(&c.dir)
                .args(["--round-ms", &opts.round_ms.to_string()])
                .args(["--probe-ms", &opts.probe_ms.to_string()])
                // Park at once when idle: N processes share few cores.
                .args(["--ring-spins", "0"])
                .stdin(if id == 1 {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", opts.binary.display()))?;
            if id == 1 {
                c.stdin = child.stdin.take();
            }
            let out = child.stdout.take().ok_or("no stdout pipe")?;
            c.children.push(Some(child));
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((id, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(c)
    }

    /// The directory of the members' inbox rings (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The reports read so far.
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    /// Reads report lines until `done` holds of the reports, or fails after `timeout` with
    /// `what` in the message. A member process that exits is an error.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Reports) -> bool,
    ) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            if done(&self.reports) {
                return Ok(());
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((id, line)) => self.reports.take(id, &line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} members: {what}: not within {timeout:?}",
                        self.opts.members
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{what}: every member's output closed"))
                }
            }
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(status) = c.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(format!("{what}: member {} exited ({status})", i + 1));
                }
            }
        }
    }

    /// Waits until every running member reports all the other running members live.
    pub fn wait_all_live(&mut self, timeout: Duration) -> Result<(), String> {
        let running: Vec<u64> = self.running();
        let n = running.len() - 1;
        self.wait_for(timeout, "every member seeing every other", |r| {
            running.iter().all(|id| r.live.get(id) == Some(&n))
        })
    }

    /// The ids of the members not killed.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.children.len() as u64)
            .filter(|&id| self.children[id as usize - 1].is_some())
            .collect()
    }

    /// Member 1 writes `key`; waits until every other running member holds it; the spread.
    pub fn converge(&mut self, key: &str) -> Result<LiveConvergence, String> {
        let stdin = self.stdin.as_mut().ok_or("member 1 has no stdin")?;
        writeln!(stdin, "put {key} v")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("member 1's stdin: {e}"))?;
        let others: Vec<u64> = self.running().into_iter().filter(|&id| id != 1).collect();
        let k = key.to_string();
        self.wait_for(
            KEY_TIMEOUT,
            &format!("key {key} reaching every member"),
            |r| {
                r.written.contains_key(&k)
                    && r.held
                        .get(&k)
                        .is_some_and(|h| others.iter().all(|id| h.contains_key(id)))
            },
        )?;
        let written = self.reports.written[key];
        let last = others
            .iter()
            .map(|id| self.reports.held[key][id])
            .max()
            .unwrap_or(written);
        let ms = last.saturating_sub(written) as f64 / 1000.0;
        Ok(LiveConvergence {
            ms,
            rounds: ms / self.opts.round_ms as f64,
        })
    }

    /// SIGKILLs member `id` (no leave: a crash) and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<(), String> {
        let slot = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.children.get_mut(i))
            .ok_or_else(|| format!("no member {id}"))?;
        let mut child = slot
            .take()
            .ok_or_else(|| format!("member {id} already killed"))?;
        child.kill().map_err(|e| format!("kill member {id}: {e}"))?;
        let _ = child.wait();
        if id == 1 {
            self.stdin = None;
        }
        Ok(())
    }
}

impl Drop for LiveCluster {
    fn drop(&mut self) {
        self.stdin = None;
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `reps` keys through one live cluster; the median spread.
pub fn measure_live(opts: LiveOptions, reps: usize) -> Result<LiveConvergence, String> {
    let mut c = LiveCluster::start(opts)?;
    c.wait_all_live(JOIN_TIMEOUT)?;
    let mut runs = Vec::new();
    for rep in 0..reps.max(1) {
        runs.push(c.converge(&format!("live/{rep}"))?);
    }
    Ok(LiveConvergence {
        ms: median(runs.iter().map(|r| r.ms).collect()),
        rounds: median(runs.iter().map(|r| r.rounds).collect()),
    })
}

/// The binary to run: this process when it is `erlmcp-flow` (the bench command), or
/// `$EMF_BIN`; `None` otherwise (a unit test binary).
fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMF_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    (exe.file_stem()? == "erlmcp-flow").then_some(exe)
}

const PEER: &str = "memberlist_model";

/// The live rows (module docs). Empty, with a message, when the `erlmcp-flow` binary is not
/// the running one (and `EMF_BIN` is not set); a configuration that fails is reported and
/// left out.
pub fn live_results(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let Some(bin) = binary() else {
        eprintln!("gossip: live rows skipped (not run from the erlmcp-flow binary; set EMF_BIN)");
        return Vec::new();
    };
    let quick = settings.samples < Settings::full().samples;
    let reps = if quick { 3 } else { REPS };
    // The peer's seeds, as in the suite's simulated rows.
    let seeds = if quick { &SEEDS[..3] } else { &SEEDS[..] };
    let mut out = Vec::new();
    for (n, round_ms) in [(16, 100), (64, 100), (16, 10), (64, 10)] {
        let suffix = if round_ms == 100 {
            format!("live{n}")
        } else {
            format!("live{n}_{round_ms}ms")
        };
        let name = format!("gossip_convergence_ms_{suffix}");
        progress(&name);
        let opts = LiveOptions {
            binary: bin.clone(),
            members: n,
            round_ms,
            probe_ms: 500,
        };
        let r = match measure_live(opts, reps) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gossip: {name}: {e}");
                continue;
            }
        };
        // The peer in the simulator, for the same N (its own 200 ms interval): beside the
        // rows at our default 100 ms rounds only, as in the simulated rows.
        let peer = (round_ms == 100).then(|| measure(n, 0.0, 100_000, seeds).peer);
        eprintln!(
            "gossip: N = {n} live processes, {round_ms} ms rounds: {:.1} ms ({:.2} rounds){}",
            r.ms,
            r.rounds,
            peer.map_or(String::new(), |p| format!(
                ", memberlist model (simulated) {:.1} ms ({:.2} intervals)",
                p.us as f64 / 1000.0,
                p.rounds
            ))
        );
        let goal = (n == 64).then_some(50.0);
        let mut ms =
            BenchResult::new(name, r.ms, "ms", Better::Lower).with_targets(Some(200.0), goal);
        let mut rounds = BenchResult::new(
            format!("gossip_convergence_rounds_{suffix}"),
            r.rounds,
            "rounds",
            Better::Lower,
        )
        .with_targets(Some(2.0), None);
        if let Some(p) = peer {
            ms = ms.with_peer(PEER, p.us as f64 / 1000.0);
            rounds = rounds.with_peer(PEER, p.rounds);
        }
        out.push(ms);
        out.push(rounds);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_parsed_and_bad_ones_kept_aside() {
        let mut r = Reports::default();
        r.take(2, "live 3 100");
        r.take(2, "key live/0 250");
        r.take(2, "key live/0 900"); // only the first holding counts
        r.take(1, "put live/0 200");
        r.take(3, "down 4 300");
        r.take(3, "rejoined 77 310");
        r.take(3, "suspect 4 290");
        r.take(3, "live x 1");
        r.take(3, "key live/0");
        assert_eq!(r.live.get(&2), Some(&3));
        assert_eq!(r.held["live/0"][&2], 250);
        assert_eq!(r.written["live/0"], 200);
        assert_eq!(r.downs, vec![(3, 4)]);
        assert_eq!(r.rejoins.len(), 1);
        assert_eq!(r.garbled.len(), 2, "{:?}", r.garbled);
    }

    #[test]
    fn a_cluster_needs_two_members_and_a_binary() {
        let opts = LiveOptions {
            binary: PathBuf::from("/nonexistent/erlmcp-flow"),
            members: 1,
            round_ms: 100,
            probe_ms: 500,
        };
        assert!(LiveCluster::start(opts.clone())
            .unwrap_err()
            .contains("at least 2"));
        let err = LiveCluster::start(LiveOptions { members: 2, ..opts }).unwrap_err();
        assert!(err.contains("/nonexistent/erlmcp-flow"), "{err}");
    }
}
