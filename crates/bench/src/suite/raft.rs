//! The Raft suite (issue 13): a replicated key-value store of node processes over rings,
//! driven end to end by a client process (this one) through the client protocol.
//!
//! Every cluster is a [`LocalCluster`]: N `erlmcp-flow raft node` processes (this executable,
//! or `EMF_BENCH_HELPER`), their rings in a scratch directory under `/dev/shm`; the bench is
//! the client, keeping many operations in flight with a [`Pipeline`]. An operation is a 64-byte
//! [`KvOp::Set`] (8-byte key among [`KEYS`], 47-byte value), acknowledged once committed on a
//! quorum and applied by the leader.
//!
//! * `raft_mem_throughput`: 3 nodes, logs in memory; operations per second through a window
//!   of [`WINDOW`], the median of the runs. The original `run_consensus`.
//! * `raft_fsync_throughput`: the same with durable logs (checksummed records, group commit
//!   with `fdatasync`) in a data directory on a real disk (the temporary directory; the
//!   output names its device and file system). Peer: etcd (`etcdctl check perf --load=xl`
//!   against a 1-node etcd with its data on the same disk) when `etcd` and `etcdctl` are in
//!   `PATH` and the run is not `--quick` (the check takes a minute).
//! * `raft_commit_p50_ms` / `raft_commit_p99_ms` (and `_fsync_`): open loop at half the
//!   measured throughput: operation `i` is due at `start + i / rate` and its latency runs
//!   from that time to its acknowledgement, whether or not it could be sent on time (no
//!   coordinated omission). The original `measure_consensus_latency`. The same at a light
//!   [`LIGHT_RATE`] (`raft_commit_10k_p50_ms` / `_p99_ms`, and `_fsync_`): the floor that
//!   queueing at half the maximum adds to.
//! * `raft_failover_ms`: the leader SIGKILLed, to the first write acknowledged by a new
//!   leader; median over the repetitions (the max is printed and reported as
//!   `raft_failover_max_ms`). Durable logs (under `/dev/shm`): the killed node restarts from
//!   its log and catches up before the next repetition.
//! * `raft_5node_throughput`: `raft_mem_throughput` with 5 nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: a scratch directory counter
use std::time::{Duration, Instant};

use erlmcp_flow::raft::KvOp;
use erlmcp_flow::replica::{
    ClientOptions, ClusterOptions, LocalCluster, Pipeline, PipelineOptions,
};

use super::{BenchResult, Better, Settings, Suite};

/// Operations in flight in the throughput runs.
pub const WINDOW: usize = 2048;
/// Distinct keys written (the store stays small).
pub const KEYS: u64 = 4096;
/// The size of one operation, in bytes.
pub const OP_BYTES: usize = 64;
/// The light load of the `_10k_` latency figures, in operations per second.
pub const LIGHT_RATE: f64 = 10_000.0;
/// Measurements (progress steps).
pub const STEPS: usize = 5;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The executable that answers `raft node`: this one, unless `EMF_BENCH_HELPER` names
/// another.
fn exe() -> PathBuf {
    std::env::var_os("EMF_BENCH_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("own executable"))
}

/// Operation `k`: a set of key `k % KEYS` to a 47-byte value, 64 bytes encoded.
pub fn op(k: u64) -> Vec<u8> {
    KvOp::Set {
        key: (k % KEYS).to_le_bytes().to_vec(),
        value: vec![k as u8; OP_BYTES - 17],
    }
    .encode()
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path, tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("emf-raft-bench-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shm_base() -> PathBuf {
    if Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
        PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
    } else {
        std::env::temp_dir()
    }
}

/// Where the logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// In memory (`--memory`).
    Memory,
    /// Durable, in the cluster directory under `/dev/shm` (fast `fdatasync`; failover runs).
    Shm,
    /// Durable, in the temporary directory (a real disk, see [`disk_of`]).
    Disk,
}

/// A running cluster and its directories (the cluster stops before they are removed).
pub struct Bench {
    /// The cluster.
    pub cluster: LocalCluster,
    _dirs: Vec<Scratch>,
}

/// Starts `n` nodes with `logs`; rings always under `/dev/shm`.
pub fn start(n: usize, logs: Logs) -> Result<Bench, String> {
    let shm = Scratch::new(&shm_base(), "net");
    let mut dirs = Vec::new();
    let dir = match logs {
        Logs::Memory | Logs::Shm => shm.0.clone(),
        Logs::Disk => {
            // The cluster directory on disk, its `net/` a link to the rings under /dev/shm.
            let disk = Scratch::new(&std::env::temp_dir(), "data");
            std::fs::create_dir_all(shm.0.join("net")).map_err(err)?;
            std::fs::create_dir_all(&disk.0).map_err(err)?;
            std::os::unix::fs::symlink(shm.0.join("net"), disk.0.join("net")).map_err(err)?;
            let d = disk.0.clone();
            dirs.push(disk);
            d
        }
    };
    dirs.push(shm);
    let opts = ClusterOptions {
        bin: Some(exe()),
        memory: logs == Logs::Memory,
        client: ClientOptions {
            attempt_timeout: Duration::from_millis(20),
            backoff_max: Duration::from_millis(2),
            ..ClientOptions::default()
        },
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(n, &dir, opts).map_err(err)?;
    // The cluster is dropped (its nodes stopped) before the directories.
    dirs.reverse();
    Ok(Bench {
        cluster,
        _dirs: dirs,
    })
}

/// The device and file system holding `path` (from `/proc/mounts`, longest prefix).
pub fn disk_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[0], f[2]))
        })
        .max_by_key(|m| m.0)
        .map_or_else(
            || "an unknown file system".to_string(),
            |(_, dev, fs)| format!("{dev} ({fs})"),
        )
}

fn pipeline(window: usize) -> Pipeline {
    Pipeline::new(PipelineOptions {
        window,
        resend_after: Duration::from_secs(2),
        backoff: Duration::from_millis(1),
    })
    .expect("valid options")
}

/// Commits `ops` operations through a window of `window`: operations per second.
pub fn throughput(c: &mut LocalCluster, ops: u64, window: usize) -> Result<f64, String> {
    c.leader().map_err(err)?;
    let client = c.client();
    let mut p = pipeline(window);
    let (mut next, mut done) = (0u64, 0u64);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    while done < ops {
        if Instant::now() > deadline {
            return Err(format!("{done} of {ops} done in 60 s: {:?}", p.stats()));
        }
        while next < ops && p.has_room() {
            p.submit(client, op(next), next).map_err(err)?;
            next += 1;
        }
        p.poll(client, Duration::from_millis(1)).map_err(err)?;
        while let Some(d) = p.take_done() {
            d.outcome.map_err(|e| format!("operation {}: {e}", d.tag))?;
            done += 1;
        }
    }
    Ok(ops as f64 / t0.elapsed().as_secs_f64())
}

/// The median of `runs` throughput runs of `ops` operations (after a warm-up of a tenth).
pub fn throughput_runs(c: &mut LocalCluster, ops: u64, runs: usize) -> Result<f64, String> {
    throughput(c, (ops / 10).max(1000), WINDOW)?;
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        rates.push(throughput(c, ops, WINDOW)?);
    }
    Ok(median(rates))
}

/// Open-loop commit latency at `rate` operations per second for `secs`: (p50, p99, max) in
/// milliseconds, each operation timed from when it was due.
pub fn open_loop(c: &mut LocalCluster, rate: f64, secs: f64) -> Result<(f64, f64, f64), String> {
    c.leader().map_err(err)?;
    let client = c.client();
    let mut p = pipeline(1 << 16);
    let total = (rate * secs).max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now() + Duration::from_millis(1);
    let due = |i: u64| t0 + period.mul_f64(i as f64);
    let mut lat = Vec::with_capacity(total as usize);
    let mut next = 0u64;
    let deadline = due(total) + Duration::from_secs(30);
    while (lat.len() as u64) < total {
        let now = Instant::now();
        if now > deadline {
            return Err(format!("{} of {total} done: {:?}", lat.len(), p.stats()));
        }
        while next < total && due(next) <= now && p.has_room() {
            p.submit(client, op(next), next).map_err(err)?;
            next += 1;
        }
        let wait = if next < total {
            due(next).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(1)
        };
        p.poll(client, wait.min(Duration::from_millis(1)))
            .map_err(err)?;
        while let Some(d) = p.take_done() {
            d.outcome.map_err(|e| format!("operation {}: {e}", d.tag))?;
            lat.push(d.at.saturating_duration_since(due(d.tag)).as_secs_f64() * 1e3);
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize];
    Ok((q(0.5), q(0.99), q(1.0)))
}

/// SIGKILLs the leader `reps` times, each time timing the kill to the first write
/// acknowledged by another node (ms); the killed node restarts and catches up between.
pub fn failover(c: &mut LocalCluster, reps: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for rep in 0..reps {
        let (old, _) = c.client().leader().map_err(err)?;
        let before = c.client().submit(&op(rep as u64)).map_err(err)?;
        let t0 = Instant::now();
        c.kill(old).map_err(err)?;
        let mut k = 0u64;
        loop {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("no new leader 20 s after killing {old}"));
            }
            k += 1;
            match c.client().submit(&op(k)) {
                Ok(cm) if cm.node != old => break,
                Ok(cm) => {
                    return Err(format!(
                        "node {} acknowledged a write after it was killed",
                        cm.node
                    ))
                }
                Err(_) => continue,
            }
        }
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        c.restart(old).map_err(err)?;
        let idx = c.client().submit(&op(k + 1)).map_err(err)?.index;
        c.client()
            .wait_committed_on(old, idx.max(before.index), Duration::from_secs(20))
            .map_err(|e| format!("node {old} did not catch up after its restart: {e}"))?;
    }
    Ok(out)
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    Ok(l.local_addr().map_err(err)?.port())
}

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The writes per second `etcdctl check perf` measured: the number before `writes/s` on its
/// throughput line (`PASS: Throughput is N writes/s`, or `FAIL: Throughput too low: N
/// writes/s` when the load's target rate was not reached — then N is what etcd sustained).
pub fn parse_etcd_perf(out: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.contains("Throughput"))?;
    let words: Vec<&str> = l.split_whitespace().collect();
    let i = words.iter().position(|w| w.starts_with("writes/s"))?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}

/// A 1-node etcd with its data in the temporary directory (the disk of
/// `raft_fsync_throughput`), measured by `etcdctl check perf --load=xl`: writes per second.
///
/// `check perf` drives a fixed target rate per load (`s` 150 writes/s, `m` 1000, `l` 8000,
/// `xl` 15 000, from 50 to 1000 clients) for 60 s and reports the rate reached: below the
/// target, that is etcd's capacity on this machine; at it, a lower bound. `xl` is the only
/// load above what etcd sustains here, so its figure is the comparable one.
pub fn etcd_check_perf() -> Result<f64, String> {
    let dir = Scratch::new(&std::env::temp_dir(), "etcd");
    std::fs::create_dir_all(&dir.0).map_err(err)?;
    let (cp, pp) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.0.join("etcd.log")).map_err(err)?;
    let child = Command::new("etcd")
        .args(["--name", "n1", "--data-dir"])
        .arg(dir.0.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start etcd: {e}"))?;
    let _etcd = Proc(child);
    let endpoint = format!("127.0.0.1:{cp}");
    let ctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint])
            .args(args)
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = ctl(&["endpoint", "health"]).map_err(err)?;
        if o.status.success() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "etcd not healthy after 20 s: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = ctl(&["check", "perf", "--load=xl"]).map_err(err)?;
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    parse_etcd_perf(&text).ok_or_else(|| format!("no throughput in etcdctl's output: {text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The Raft suite.
pub fn raft_suite() -> Suite {
    Suite {
        name: "raft",
        about: "a replicated KV store of 3 (and 5) node processes over rings: commits/s in memory and with fdatasync (peer: etcd check perf), open-loop commit latency, leader failover",
        steps: STEPS,
        run,
    }
}

fn run(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let quick = settings.samples < 10;
    let (ops, runs, secs, reps) = if quick {
        (5_000, 1, 0.3, 1)
    } else {
        (200_000, 3, 3.0, 7)
    };
    let fail = |what: &str, e: String| -> ! { panic!("raft suite: {what}: {e}") };
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut progress = |name: &str| {
        eprintln!("raft: [{:.1} s] {name}", t0.elapsed().as_secs_f64());
        progress(name)
    };

    progress("raft_mem_throughput");
    let mut b = start(3, Logs::Memory).unwrap_or_else(|e| fail("3 nodes in memory", e));
    let mem = throughput_runs(&mut b.cluster, ops, runs).unwrap_or_else(|e| fail("memory", e));
    out.push(
        BenchResult::new("raft_mem_throughput", mem, "ops/s", Better::Higher)
            .with_targets(Some(100_000.0), Some(300_000.0)),
    );
    let (p50, p99, max) =
        open_loop(&mut b.cluster, mem / 2.0, secs).unwrap_or_else(|e| fail("memory latency", e));
    eprintln!(
        "raft: in memory, open loop at {:.0} ops/s: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
        mem / 2.0
    );
    out.push(
        BenchResult::new("raft_commit_p50_ms", p50, "ms", Better::Lower)
            .with_targets(None, Some(1.0)),
    );
    out.push(
        BenchResult::new("raft_commit_p99_ms", p99, "ms", Better::Lower)
            .with_targets(Some(100.0), Some(1.0)),
    );
    let (l50, l99, lmax) = open_loop(&mut b.cluster, LIGHT_RATE, secs)
        .unwrap_or_else(|e| fail("memory latency, light load", e));
    eprintln!(
        "raft: in memory, open loop at {LIGHT_RATE:.0} ops/s: p50 {l50:.3} ms, p99 {l99:.3} ms, max {lmax:.3} ms"
    );
    out.push(BenchResult::new(
        "raft_commit_10k_p50_ms",
        l50,
        "ms",
        Better::Lower,
    ));
    out.push(
        BenchResult::new("raft_commit_10k_p99_ms", l99, "ms", Better::Lower)
            .with_targets(None, Some(1.0)),
    );
    drop(b);

    progress("raft_fsync_throughput");
    let mut b = start(3, Logs::Disk).unwrap_or_else(|e| fail("3 nodes on disk", e));
    let disk = disk_of(&std::env::temp_dir());
    eprintln!(
        "raft: durable logs (fdatasync) in {} on {disk}",
        std::env::temp_dir().display()
    );
    let fs = throughput_runs(&mut b.cluster, ops / 2, runs).unwrap_or_else(|e| fail("fsync", e));
    let mut r = BenchResult::new("raft_fsync_throughput", fs, "ops/s", Better::Higher)
        .with_targets(None, Some(100_000.0));
    progress("raft_fsync_commit_p99_ms");
    let (f50, f99, fmax) =
        open_loop(&mut b.cluster, fs / 2.0, secs).unwrap_or_else(|e| fail("fsync latency", e));
    eprintln!(
        "raft: fdatasync, open loop at {:.0} ops/s: p50 {f50:.3} ms, p99 {f99:.3} ms, max {fmax:.3} ms",
        fs / 2.0
    );
    let (g50, g99, gmax) = open_loop(&mut b.cluster, LIGHT_RATE, secs)
        .unwrap_or_else(|e| fail("fsync latency, light load", e));
    eprintln!(
        "raft: fdatasync, open loop at {LIGHT_RATE:.0} ops/s: p50 {g50:.3} ms, p99 {g99:.3} ms, max {gmax:.3} ms"
    );
    drop(b);
    if quick {
        eprintln!("raft_fsync_throughput: etcd peer skipped (--quick; its check takes a minute)");
    } else if !(in_path("etcd") && in_path("etcdctl")) {
        eprintln!("raft_fsync_throughput: etcd peer skipped (etcd or etcdctl not in PATH)");
    } else {
        match etcd_check_perf() {
            Ok(w) => {
                eprintln!("raft_fsync_throughput: etcd 1 node, check perf --load=xl: {w} writes/s");
                r = r.with_peer("etcd 1 node (check perf --load=xl)", w);
            }
            Err(e) => eprintln!("raft_fsync_throughput: etcd peer failed: {e}"),
        }
    }
    out.push(r);
    out.push(
        BenchResult::new("raft_fsync_commit_p50_ms", f50, "ms", Better::Lower)
            .with_targets(None, Some(5.0)),
    );
    out.push(
        BenchResult::new("raft_fsync_commit_p99_ms", f99, "ms", Better::Lower)
            .with_targets(Some(100.0), Some(5.0)),
    );
    out.push(BenchResult::new(
        "raft_fsync_commit_10k_p50_ms",
        g50,
        "ms",
        Better::Lower,
    ));
    out.push(
        BenchResult::new("raft_fsync_commit_10k_p99_ms", g99, "ms", Better::Lower)
            .with_targets(None, Some(5.0)),
    );

    progress("raft_failover_ms");
    let mut b = start(3, Logs::Shm).unwrap_or_else(|e| fail("3 durable nodes", e));
    let f = failover(&mut b.cluster, reps).unwrap_or_else(|e| fail("failover", e));
    drop(b);
    let fmax = f.iter().copied().fold(0.0, f64::max);
    eprintln!("raft: failover over {} kills (ms): {f:.1?}", f.len());
    out.push(
        BenchResult::new("raft_failover_ms", median(f), "ms", Better::Lower)
            .with_targets(None, Some(300.0)),
    );
    out.push(
        BenchResult::new("raft_failover_max_ms", fmax, "ms", Better::Lower)
            .with_targets(None, Some(300.0)),
    );

    progress("raft_5node_throughput");
    let mut b = start(5, Logs::Memory).unwrap_or_else(|e| fail("5 nodes in memory", e));
    let five = throughput_runs(&mut b.cluster, ops, runs).unwrap_or_else(|e| fail("5 nodes", e));
    out.push(
        BenchResult::new("raft_5node_throughput", five, "ops/s", Better::Higher)
            .with_targets(Some(100_000.0), None),
    );
    progress("done");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_64_bytes() {
        assert_eq!(op(0).len(), OP_BYTES);
        assert_eq!(op(u64::MAX).len(), OP_BYTES);
    }

    #[test]
    fn etcd_output_parses() {
        let out = "60 / 60 Booting up [...]\nPASS: Throughput is 151 writes/s\nPASS: Slowest request took 0.04s\n";
        assert_eq!(parse_etcd_perf(out), Some(151.0));
        assert_eq!(
            parse_etcd_perf("FAIL: Throughput too low: 4695 writes/s\nSlowest request"),
            Some(4695.0)
        );
        assert_eq!(parse_etcd_perf("PASS\n"), None);
        assert_eq!(parse_etcd_perf("Throughput is many writes/s"), None);
    }

    #[test]
    fn disk_of_names_a_file_system() {
        assert!(!disk_of(Path::new("/")).is_empty());
    }
}
