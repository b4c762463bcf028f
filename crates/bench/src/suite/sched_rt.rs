//! The scheduler's runtime end to end (issue 12's remaining benchmarks): tasks per second with
//! agents as threads and as processes, warm and cold starts, critical tasks under full load,
//! tasks lost under `kill -9`, and the memory of a dispatcher with 60 connected agents.
//!
//! Everything goes through the real runtime ([`Dispatcher`] and [`Agent`] over shared-memory
//! rings in a scratch directory under `/dev/shm`); every task is submitted, leased, delivered
//! into an agent's inbox, answered and its result taken with [`Dispatcher::poll_outcome`].
//! The trivial handler ([`handler`]) echoes the 8-byte payload, so the figures are the
//! runtime's own cost per task.
//!
//! * `sched_tasks_per_s_threads[_shm]`: the dispatcher in the bench thread, one agent thread
//!   per core (each an [`Agent`] with `max_tasks` [`THROUGHPUT_MAX_TASKS`]), a window of
//!   [`WINDOW`] tasks submitted ahead of the results; the ledger in memory, then in shared
//!   memory (the default). Peer: a crossbeam-channel worker pool (as many worker threads, a
//!   task channel and a result channel, the same handler and window).
//! * `sched_tasks_per_s_processes`: the same with agents as OS processes (`erlmcp-flow agents
//!   worker`, as many as cores). Peer: Python's `concurrent.futures.ProcessPoolExecutor` with
//!   as many workers, one `submit` per task of a trivial function, timed inside Python after
//!   its workers started (skipped with a note when `python3` is missing).
//! * `sched_warm_start_us` / `sched_cold_start_ms`: one task's submit→result on an idle,
//!   connected agent process, against spawning a new agent process (spawn, connect, hello,
//!   the task).
//! * `sched_critical_p99_us`: agent threads (one per core but the dispatcher's, default
//!   `max_tasks`) saturated by a deep queue of normal tasks; a critical task submitted every
//!   [`CRITICAL_EVERY`]; the p99 of its submit→result, with the normal tasks' p99 beside it;
//!   with the shared-memory ledger (the default), then in memory (`_mem`: without the
//!   ledger's compaction pauses).
//! * `sched_lost_under_kills`: `erlmcp-flow agents chaos` as a child: lost (must be 0),
//!   duplicated effects, redeliveries.
//! * `sched_runtime_memory_mb`: a fresh child process with a [`Dispatcher`] (shared-memory
//!   ledger), 60 connected [`Agent`]s (default 256 KiB inboxes) and 10,000 queued tasks of
//!   256 bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering}; // std-atomic-ok: a bench's stop flag and counter
use std::sync::Arc;
use std::time::{Duration, Instant};

use erlmcp_flow::queue::Priority;
use erlmcp_flow::sched::runtime::LedgerChoice;
use erlmcp_flow::sched::{
    Agent, AgentId, AgentOptions, AgentType, Dispatcher, Outcome, RuntimeOptions, TaskId,
};
use erlmcp_flow::{Error, ErrorKind};

use super::sched_mem::Rss;
use super::{BenchResult, Better, Settings};

/// The agents' type in these benchmarks.
pub const AGENT_TYPE: &str = "bench";
/// Tasks submitted ahead of the results (ours and the peers').
pub const WINDOW: u64 = 4096;
/// `max_tasks` of the throughput benchmarks' agents (the default, 5, bounds the tasks in
/// flight per agent; a throughput agent takes more at once).
pub const THROUGHPUT_MAX_TASKS: u32 = 64;
/// The interval between critical tasks under full load.
pub const CRITICAL_EVERY: Duration = Duration::from_micros(200);
/// Normal tasks kept queued under full load.
pub const CRITICAL_DEPTH: u64 = 2_000;

/// The trivial task: the result is the payload.
pub fn handler(payload: &[u8]) -> Vec<u8> {
    payload.to_vec()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The executable that answers `agents worker` and `bench-helper`: this one, unless
/// `EMF_BENCH_HELPER` names another.
fn exe() -> PathBuf {
    std::env::var_os("EMF_BENCH_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("own executable"))
}

/// The cores to use: one agent (or worker) per core.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A scheduler directory under `/dev/shm` (or the temporary directory), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
            PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
        } else {
            std::env::temp_dir()
        };
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("emf-sched-rt-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ty() -> AgentType {
    AgentType::new(AGENT_TYPE).expect("a valid type")
}

fn options(dir: &Path, ledger: LedgerChoice) -> RuntimeOptions {
    RuntimeOptions {
        ledger,
        ..RuntimeOptions::in_dir(dir)
    }
}

/// Steps `d` until `n` agents registered (10 s at most).
fn await_agents(d: &mut Dispatcher, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.stats().agents < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} agents registered after 10 s",
                d.stats().agents
            ));
        }
        d.step(Duration::from_millis(1)).map_err(err)?;
    }
    Ok(())
}

/// Submits `tasks` tasks, at most `window` ahead of the results, and takes every result.
/// Returns the seconds from the first submit to the last result.
fn pump(d: &mut Dispatcher, tasks: u64, window: u64) -> Result<f64, String> {
    let ty = ty();
    let (mut submitted, mut done) = (0u64, 0u64);
    let t0 = Instant::now();
    while done < tasks {
        while submitted < tasks && submitted - done < window {
            match d.submit(&ty, Priority::Normal, submitted.to_le_bytes().to_vec()) {
                Ok(_) => submitted += 1,
                Err(e) if e.kind() == ErrorKind::Full => break,
                Err(e) => return Err(err(e)),
            }
        }
        d.step(Duration::from_millis(1)).map_err(err)?;
        while let Some((id, o)) = d.poll_outcome() {
            match o {
                Outcome::Done(r) if r.len() >= 8 => done += 1,
                other => return Err(format!("task {}: {other:?}", id.0)),
            }
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Agent threads of a scheduler directory, stopped and joined on drop.
struct AgentThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<u64, String>>>,
}

impl AgentThreads {
    fn start(dir: &Path, n: usize, max_tasks: u32) -> AgentThreads {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let (dir, stop) = (dir.to_owned(), stop.clone());
                std::thread::spawn(move || {
                    let opts = AgentOptions {
                        max_tasks,
                        ..AgentOptions::new(dir, AgentId::new(&format!("t{i}")).map_err(err)?, ty())
                    };
                    let mut a = Agent::connect(opts).map_err(err)?;
                    let n = a
                        .run(
                            Duration::from_millis(5),
                            || stop.load(Ordering::Acquire),
                            |t| Ok(handler(&t.payload)),
                        )
                        .map_err(err)?;
                    a.leave().map_err(err)?;
                    Ok(n)
                })
            })
            .collect();
        AgentThreads { stop, threads }
    }

    fn finish(&mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Release);
        let mut total = 0;
        for t in self.threads.drain(..) {
            total += t
                .join()
                .map_err(|_| "an agent thread panicked".to_string())??;
        }
        Ok(total)
    }
}

impl Drop for AgentThreads {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Tasks per second through the runtime with `agents` agent threads, over `runs` runs of
/// `tasks` tasks on the same connected agents: the median run.
pub fn runtime_threads(
    ledger: LedgerChoice,
    agents: usize,
    tasks: u64,
    runs: usize,
) -> Result<f64, String> {
    let scratch = Scratch::new("threads");
    let mut d = Dispatcher::open(&options(&scratch.0, ledger)).map_err(err)?;
    let mut pool = AgentThreads::start(&scratch.0, agents, THROUGHPUT_MAX_TASKS);
    await_agents(&mut d, agents)?;
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        rates.push(tasks as f64 / pump(&mut d, tasks, WINDOW)?);
    }
    pool.finish()?;
    drop(d);
    Ok(median(rates))
}

/// The crossbeam-channel worker pool: `workers` threads, a task channel, a result channel, the
/// same handler and window; tasks per second, the median of `runs` runs.
#[cfg(feature = "peers")]
pub fn crossbeam_pool(workers: usize, tasks: u64, runs: usize) -> f64 {
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let (rtx, rrx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, rtx) = (rx.clone(), rtx.clone());
            std::thread::spawn(move || {
                for p in rx.iter() {
                    if rtx.send(handler(&p)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        let (mut submitted, mut done) = (0u64, 0u64);
        let t0 = Instant::now();
        while done < tasks {
            while submitted < tasks && submitted - done < WINDOW {
                tx.send(submitted.to_le_bytes().to_vec()).expect("workers");
                submitted += 1;
            }
            let r = rrx.recv().expect("workers");
            std::hint::black_box(r);
            done += 1;
            while let Ok(r) = rrx.try_recv() {
                std::hint::black_box(r);
                done += 1;
            }
        }
        rates.push(tasks as f64 / t0.elapsed().as_secs_f64());
    }
    drop(tx);
    for t in threads {
        let _ = t.join();
    }
    median(rates)
}

/// Agent processes (`erlmcp-flow agents worker`) of a scheduler directory.
fn spawn_workers(dir: &Path, ids: &[String], ty: &str, max_tasks: u32, count: u64) -> Vec<Proc> {
    ids.iter()
        .map(|id| {
            Proc(
                Command::new(exe())
                    .args(["agents", "worker", "--type", ty, "--id", id])
                    .args(["--max-tasks", &max_tasks.to_string()])
                    .args(["--count", &count.to_string()])
                    .arg("--dir")
                    .arg(dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn an agent process"),
            )
        })
        .collect()
}

/// Steps `d` until the outcome of `id` (10 s at most); other outcomes are dropped.
fn await_outcome(d: &mut Dispatcher, id: TaskId) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((got, o)) = d.poll_outcome() {
            if got == id {
                return match o {
                    Outcome::Done(_) => Ok(()),
                    Outcome::DeadLetter(why) => Err(format!("task {}: {why}", id.0)),
                };
            }
        }
        if Instant::now() > deadline {
            return Err(format!("task {}: no outcome after 10 s", id.0));
        }
        d.step(Duration::from_micros(100)).map_err(err)?;
    }
}

/// What the process benchmarks measure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessFigures {
    /// Tasks per second (median run).
    pub tasks_per_s: f64,
    /// Warm start: submit→result on an idle connected agent process, median, µs.
    pub warm_us: f64,
    /// Cold start: spawn + connect + hello + the task, median, ms.
    pub cold_ms: f64,
}

/// Agents as processes: throughput (`runs` runs of `tasks`), then `starts` warm and cold
/// starts. The ledger is in shared memory (the default).
pub fn runtime_processes(
    workers: usize,
    tasks: u64,
    runs: usize,
    starts: usize,
) -> Result<ProcessFigures, String> {
    let scratch = Scratch::new("procs");
    let dir = &scratch.0;
    let mut d =
        Dispatcher::open(&options(dir, LedgerChoice::Shm { capacity: 16 << 20 })).map_err(err)?;
    let ids: Vec<String> = (0..workers).map(|i| format!("p{i}")).collect();
    let procs = spawn_workers(dir, &ids, AGENT_TYPE, THROUGHPUT_MAX_TASKS, 0);
    await_agents(&mut d, workers)?;
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        rates.push(tasks as f64 / pump(&mut d, tasks, WINDOW)?);
    }
    let ty = ty();
    let mut warm = Vec::new();
    for k in 0..starts.max(1) {
        // Let the agents go idle (parked on their inboxes), as a pre-warmed pool waits.
        let idle = Instant::now() + Duration::from_millis(5);
        while Instant::now() < idle {
            d.step(Duration::from_millis(1)).map_err(err)?;
        }
        let t = Instant::now();
        let id = d
            .submit(&ty, Priority::Normal, (k as u64).to_le_bytes().to_vec())
            .map_err(err)?;
        await_outcome(&mut d, id)?;
        warm.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(procs);
    let mut cold = Vec::new();
    let cold_ty = AgentType::new("cold").map_err(err)?;
    for k in 0..starts.max(1) {
        // The task waits for an agent of its type; none runs until the spawn.
        let id = d
            .submit(
                &cold_ty,
                Priority::Normal,
                (k as u64).to_le_bytes().to_vec(),
            )
            .map_err(err)?;
        let t = Instant::now();
        let mut p = spawn_workers(dir, &[format!("c{k}")], "cold", 5, 1);
        await_outcome(&mut d, id)?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        // It leaves after its one task; reap it (killed if it has not exited yet).
        let _ = p[0].0.wait();
        p.clear();
    }
    drop(d);
    Ok(ProcessFigures {
        tasks_per_s: median(rates),
        warm_us: median(warm),
        cold_ms: median(cold),
    })
}

/// The Python peer of the process benchmark: prints the median tasks per second of `reps`
/// runs of `n` tasks over `w` worker processes.
const PYTHON_POOL: &str = r#"
import sys, time, statistics
import concurrent.futures as cf, multiprocessing as mp
def f(x):
    return x
n, w, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with cf.ProcessPoolExecutor(max_workers=w, mp_context=mp.get_context("fork")) as ex:
    list(ex.map(f, range(4 * w)))
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        fs = [ex.submit(f, i) for i in range(n)]
        for x in fs:
            x.result()
        rates.append(n / (time.perf_counter() - t))
print("rate", statistics.median(rates))
"#;

/// Reads the `rate N` line the Python peer prints.
pub fn parse_rate(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("rate "))
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
}

/// Python's `ProcessPoolExecutor`: tasks per second, or why not.
pub fn python_pool(workers: usize, tasks: u64, reps: usize) -> Result<f64, String> {
    let out = Command::new("python3")
        .args(["-c", PYTHON_POOL])
        .args([tasks.to_string(), workers.to_string(), reps.to_string()])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_rate(&text).ok_or_else(|| format!("python3 printed {text:?}"))
}

/// Latencies under full load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CriticalFigures {
    /// p99 of the critical tasks' submit→result, µs.
    pub critical_p99_us: f64,
    /// Their median, µs.
    pub critical_p50_us: f64,
    /// p99 of the normal tasks' submit→result, µs.
    pub normal_p99_us: f64,
    /// Tasks completed per second during the run.
    pub tasks_per_s: f64,
}

/// Agent threads (default `max_tasks`) saturated by [`CRITICAL_DEPTH`] queued normal tasks; a
/// critical task every [`CRITICAL_EVERY`] until `samples` of them ended.
pub fn critical_under_load(
    ledger: LedgerChoice,
    agents: usize,
    samples: usize,
) -> Result<CriticalFigures, String> {
    let scratch = Scratch::new("crit");
    let mut d = Dispatcher::open(&options(&scratch.0, ledger)).map_err(err)?;
    let mut pool = AgentThreads::start(&scratch.0, agents, erlmcp_flow::sched::DEFAULT_MAX_TASKS);
    await_agents(&mut d, agents)?;
    let ty = ty();
    let mut pending: HashMap<TaskId, (Instant, bool)> = HashMap::new();
    let (mut crit, mut normal) = (Vec::new(), Vec::new());
    let mut queued_normal = 0u64;
    let mut next_critical = Instant::now() + CRITICAL_EVERY;
    let t0 = Instant::now();
    let mut done = 0u64;
    while crit.len() < samples {
        while queued_normal < CRITICAL_DEPTH {
            let id = d
                .submit(&ty, Priority::Normal, 0u64.to_le_bytes().to_vec())
                .map_err(err)?;
            pending.insert(id, (Instant::now(), false));
            queued_normal += 1;
        }
        let now = Instant::now();
        if now >= next_critical {
            next_critical = now + CRITICAL_EVERY;
            let id = d
                .submit(&ty, Priority::Critical, 1u64.to_le_bytes().to_vec())
                .map_err(err)?;
            pending.insert(id, (Instant::now(), true));
        }
        d.step(Duration::from_micros(50)).map_err(err)?;
        while let Some((id, o)) = d.poll_outcome() {
            let end = Instant::now();
            if !matches!(o, Outcome::Done(_)) {
                return Err(format!("task {}: {o:?}", id.0));
            }
            done += 1;
            if let Some((t, critical)) = pending.remove(&id) {
                let us = end.duration_since(t).as_secs_f64() * 1e6;
                if critical {
                    crit.push(us);
                } else {
                    normal.push(us);
                    queued_normal -= 1;
                }
            }
        }
    }
    let rate = done as f64 / t0.elapsed().as_secs_f64();
    pool.finish()?;
    Ok(CriticalFigures {
        critical_p99_us: percentile(&mut crit.clone(), 0.99),
        critical_p50_us: percentile(&mut crit, 0.5),
        normal_p99_us: percentile(&mut normal, 0.99),
        tasks_per_s: rate,
    })
}

/// The counts of `agents chaos --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChaosCounts {
    /// Tasks without a result.
    pub lost: f64,
    /// Tasks with more than one result.
    pub duplicated: f64,
    /// Deliveries after the first.
    pub redeliveries: f64,
    /// Agents SIGKILLed.
    pub agent_kills: f64,
    /// Tasks run.
    pub tasks: f64,
}

/// The number after `"key":` in a flat JSON line.
pub fn json_number(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads the counts from the output of `agents chaos --json`.
pub fn parse_chaos(out: &str) -> Option<ChaosCounts> {
    let line = out.lines().rev().find(|l| l.starts_with('{'))?;
    Some(ChaosCounts {
        lost: json_number(line, "lost")?,
        duplicated: json_number(line, "duplicated")?,
        redeliveries: json_number(line, "redeliveries")?,
        agent_kills: json_number(line, "agent_kills")?,
        tasks: json_number(line, "tasks")?,
    })
}

/// Runs `erlmcp-flow agents chaos --json` with these sizes and reads its counts.
pub fn chaos(tasks: u64, agents: u32, kills: u32, work_us: u64) -> Result<ChaosCounts, String> {
    let out = Command::new(exe())
        .args(["agents", "chaos", "--json"])
        .args(["--tasks", &tasks.to_string()])
        .args(["--agents", &agents.to_string()])
        .args(["--kills", &kills.to_string()])
        .args(["--scheduler-kills", "1"])
        .args(["--work-us", &work_us.to_string()])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("spawn agents chaos: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_chaos(&text).ok_or_else(|| {
        format!(
            "agents chaos ({}) printed {text:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Agents connected in the memory measurement.
pub const MEM_AGENTS: usize = 60;
/// Tasks queued in the memory measurement.
pub const MEM_TASKS: usize = 10_000;
/// Their payload's bytes.
pub const MEM_PAYLOAD: usize = 256;

/// The resident set (`VmRSS`, KiB) before and after building a [`Dispatcher`] with
/// [`MEM_AGENTS`] connected agents and [`MEM_TASKS`] tasks, in this process, and the
/// shared-memory part after.
pub fn measure_runtime_memory() -> Result<(Rss, Rss), Error> {
    let base = Rss::now();
    let scratch = Scratch::new("mem");
    let mut d = Dispatcher::open(&RuntimeOptions::in_dir(&scratch.0))?;
    let ty = ty();
    let mut agents = Vec::with_capacity(MEM_AGENTS);
    for i in 0..MEM_AGENTS {
        let id = AgentId::new(&format!("agent-{i:02}"))?;
        agents.push(Agent::connect(AgentOptions::new(
            &scratch.0,
            id,
            ty.clone(),
        ))?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.stats().agents < MEM_AGENTS && Instant::now() < deadline {
        d.step(Duration::from_millis(1))?;
    }
    for k in 0..MEM_TASKS {
        let payload: Vec<u8> = (0..MEM_PAYLOAD).map(|j| (k + j) as u8).collect();
        d.submit(&ty, Priority::Normal, payload)?;
    }
    d.step(Duration::ZERO)?;
    let s = d.stats();
    let leased = MEM_AGENTS * erlmcp_flow::sched::DEFAULT_MAX_TASKS as usize;
    if s.agents != MEM_AGENTS
        || s.sched.queued + s.sched.leased != MEM_TASKS
        || s.sched.leased != leased
    {
        return Err(Error::invalid(format!(
            "{} agents, {} queued and {} leased, not {MEM_AGENTS}, {MEM_TASKS} with {leased}",
            s.agents, s.sched.queued, s.sched.leased
        )));
    }
    let loaded = Rss::now();
    // Agents leave without their dispatcher taking the byes: the directory goes anyway.
    drop(agents);
    drop(d);
    drop(scratch);
    Ok((base, loaded))
}

/// `erlmcp-flow bench-helper sched-memory-runtime`: prints `base loaded` as six numbers.
pub fn memory_helper() -> Result<(), String> {
    let (b, l) = measure_runtime_memory().map_err(err)?;
    println!(
        "{} {} {} {} {} {}",
        b.total_kib, b.anon_kib, b.shmem_kib, l.total_kib, l.anon_kib, l.shmem_kib
    );
    Ok(())
}

fn child_memory() -> Result<(Rss, Rss), String> {
    let out = Command::new(exe())
        .args(["bench-helper", "sched-memory-runtime"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("spawn the memory helper: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if !out.status.success() || n.len() != 6 {
        return Err(format!(
            "the memory helper printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let rss = |i: usize| Rss {
        total_kib: n[i],
        anon_kib: n[i + 1],
        shmem_kib: n[i + 2],
    };
    Ok((rss(0), rss(3)))
}

/// `mem` (the memory ledger), `shm` (16 MiB, the default) or `shm:MIB`.
fn ledger_arg(a: Option<&String>) -> Result<LedgerChoice, String> {
    match a.map(String::as_str) {
        Some("mem") => Ok(LedgerChoice::Memory),
        Some("shm") | None => Ok(LedgerChoice::Shm { capacity: 16 << 20 }),
        Some(other) => other
            .strip_prefix("shm:")
            .and_then(|m| m.parse::<usize>().ok())
            .map(|mib| LedgerChoice::Shm {
                capacity: mib << 20,
            })
            .ok_or_else(|| format!("sched-rt: ledger {other:?} is not mem, shm or shm:MIB")),
    }
}

/// `erlmcp-flow bench-helper sched-rt KIND ...`: one measurement alone, for profiling
/// (`perf record`) and trying settings: `threads LEDGER AGENTS TASKS`, `critical LEDGER
/// AGENTS SAMPLES`, `processes AGENTS TASKS`.
pub fn helper(args: &[String]) -> Result<(), String> {
    let num = |i: usize| -> Result<u64, String> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("sched-rt: argument {i} is missing or not a number"))
    };
    match args.first().map(String::as_str) {
        Some("threads") => {
            let ledger = ledger_arg(args.get(1))?;
            let r = runtime_threads(ledger, num(2)? as usize, num(3)?, 3)?;
            println!("tasks/s {r:.0}");
        }
        Some("critical") => {
            let ledger = ledger_arg(args.get(1))?;
            let c = critical_under_load(ledger, num(2)? as usize, num(3)? as usize)?;
            println!("{c:?}");
        }
        Some("processes") => {
            let p = runtime_processes(num(1)? as usize, num(2)?, 3, 5)?;
            println!("{p:?}");
        }
        other => return Err(format!("sched-rt: unknown measurement {other:?}")),
    }
    Ok(())
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// The `p` quantile (nearest rank) of `v`, sorted in place (NaN when empty).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Progress steps of [`results`].
pub const STEPS: usize = 6;

/// The suite's part; `--quick` shortens every run (a smoke run).
pub fn results(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let quick = settings.samples < 10;
    let n = cores();
    let (tasks, runs) = if quick { (20_000, 1) } else { (200_000, 5) };
    let mut out = Vec::new();
    let fail = |what: &str, e: String| -> ! { panic!("{what}: {e}") };

    progress("sched_tasks_per_s_threads");
    let mem = runtime_threads(LedgerChoice::Memory, n, tasks, runs)
        .unwrap_or_else(|e| fail("threads, memory ledger", e));
    let shm = runtime_threads(LedgerChoice::Shm { capacity: 16 << 20 }, n, tasks, runs)
        .unwrap_or_else(|e| fail("threads, shm ledger", e));
    let goal = (Some(100_000.0), Some(1_000_000.0));
    #[cfg(feature = "peers")]
    let peer = Some(crossbeam_pool(n, tasks, runs));
    #[cfg(not(feature = "peers"))]
    let peer: Option<f64> = None;
    for (name, value) in [
        ("sched_tasks_per_s_threads", mem),
        ("sched_tasks_per_s_threads_shm", shm),
    ] {
        let r =
            BenchResult::new(name, value, "tasks/s", Better::Higher).with_targets(goal.0, goal.1);
        out.push(match peer {
            Some(p) => r.with_peer("crossbeam-channel pool", p),
            None => r,
        });
    }

    progress("sched_tasks_per_s_processes");
    let (ptasks, pruns, starts) = if quick {
        (5_000, 1, 3)
    } else {
        (20_000, 5, 11)
    };
    let p =
        runtime_processes(n, ptasks, pruns, starts).unwrap_or_else(|e| fail("agent processes", e));
    let mut r = BenchResult::new(
        "sched_tasks_per_s_processes",
        p.tasks_per_s,
        "tasks/s",
        Better::Higher,
    )
    .with_targets(None, Some(300_000.0));
    match python_pool(n, ptasks, if quick { 1 } else { 3 }) {
        Ok(py) => r = r.with_peer("python ProcessPoolExecutor", py),
        Err(e) => eprintln!("sched_tasks_per_s_processes: no Python peer ({e})"),
    }
    out.push(r);

    progress("sched_warm_start_us");
    out.push(BenchResult::new(
        "sched_warm_start_us",
        p.warm_us,
        "us",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "sched_cold_start_ms",
        p.cold_ms,
        "ms",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "sched_cold_over_warm",
        p.cold_ms * 1e3 / p.warm_us,
        "x",
        Better::Higher,
    ));

    progress("sched_critical_p99_us");
    let (agents, samples) = ((n - 1).max(1), if quick { 200 } else { 2_000 });
    let c = critical_under_load(LedgerChoice::Shm { capacity: 16 << 20 }, agents, samples)
        .unwrap_or_else(|e| fail("critical under load", e));
    let cm = critical_under_load(LedgerChoice::Memory, agents, samples)
        .unwrap_or_else(|e| fail("critical under load, memory ledger", e));
    out.push(
        BenchResult::new(
            "sched_critical_p99_us",
            c.critical_p99_us,
            "us",
            Better::Lower,
        )
        .with_targets(Some(1_000.0), Some(50.0)),
    );
    out.push(BenchResult::new(
        "sched_critical_p50_us",
        c.critical_p50_us,
        "us",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "sched_normal_p99_us_under_load",
        c.normal_p99_us,
        "us",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "sched_tasks_per_s_under_load",
        c.tasks_per_s,
        "tasks/s",
        Better::Higher,
    ));

    out.push(
        BenchResult::new(
            "sched_critical_p99_us_mem",
            cm.critical_p99_us,
            "us",
            Better::Lower,
        )
        .with_targets(Some(1_000.0), Some(50.0)),
    );
    out.push(BenchResult::new(
        "sched_normal_p99_us_under_load_mem",
        cm.normal_p99_us,
        "us",
        Better::Lower,
    ));

    progress("sched_lost_under_kills");
    let k = if quick {
        chaos(300, 3, 3, 100)
    } else {
        chaos(10_000, 20, 20, 300)
    }
    .unwrap_or_else(|e| fail("agents chaos", e));
    out.push(
        BenchResult::new("sched_lost_under_kills", k.lost, "tasks", Better::Lower)
            .with_targets(Some(0.0), Some(0.0)),
    );
    out.push(
        BenchResult::new(
            "sched_duplicated_under_kills",
            k.duplicated,
            "tasks",
            Better::Lower,
        )
        .with_targets(None, Some(0.0)),
    );
    out.push(BenchResult::new(
        "sched_redeliveries_under_kills",
        k.redeliveries,
        "tasks",
        Better::Lower,
    ));

    progress("sched_runtime_memory_mb");
    let (base, loaded) = child_memory().unwrap_or_else(|e| fail("runtime memory", e));
    let mb = |kib: u64| kib as f64 / 1024.0;
    out.push(
        BenchResult::new(
            "sched_runtime_memory_mb",
            mb(loaded.total_kib),
            "MB",
            Better::Lower,
        )
        .with_targets(Some(512.0), Some(64.0)),
    );
    out.push(BenchResult::new(
        "sched_runtime_memory_delta_mb",
        mb(loaded.total_kib.saturating_sub(base.total_kib)),
        "MB",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "sched_runtime_memory_shmem_mb",
        mb(loaded.shmem_kib),
        "MB",
        Better::Lower,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(median(vec![2.0, 9.0, 1.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn chaos_counts_parse_from_the_json_line() {
        let out = "agents chaos: 300 tasks ...\n{\"tasks\":300,\"agents\":3,\"agent_kills\":3,\
                   \"scheduler_kills\":1,\"lost\":0,\"duplicated\":2,\"wrong\":0,\
                   \"dead_letters\":0,\"redeliveries\":17,\"seconds\":1.250}\n";
        let c = parse_chaos(out).expect("counts");
        assert_eq!(
            c,
            ChaosCounts {
                lost: 0.0,
                duplicated: 2.0,
                redeliveries: 17.0,
                agent_kills: 3.0,
                tasks: 300.0
            }
        );
        assert_eq!(json_number("{\"seconds\":1.250}", "seconds"), Some(1.25));
        assert_eq!(json_number("{\"lost\":}", "lost"), None);
        assert_eq!(parse_chaos("no json here"), None);
        assert_eq!(parse_chaos("{\"tasks\":3}"), None);
    }

    #[test]
    fn python_rate_parses() {
        assert_eq!(parse_rate("rate 12345.5\n"), Some(12345.5));
        assert_eq!(parse_rate("noise\nrate 7\n"), Some(7.0));
        assert_eq!(parse_rate("rate nan\n"), None);
        assert_eq!(parse_rate("rate 0\n"), None);
        assert_eq!(parse_rate(""), None);
    }

    /// The threads benchmark runs every task through the real runtime to its result, with
    /// either ledger, and its agent threads stop.
    #[test]
    #[cfg_attr(miri, ignore = "mmapped segments and threads")]
    fn threads_benchmark_completes_every_task() {
        for ledger in [
            LedgerChoice::Memory,
            LedgerChoice::Shm { capacity: 1 << 20 },
        ] {
            let rate = runtime_threads(ledger, 2, 500, 2).expect("run");
            assert!(rate.is_finite() && rate > 0.0, "{rate}");
        }
    }

    /// Under load, critical and normal tasks all end, and the critical ones are measured.
    #[test]
    #[cfg_attr(miri, ignore = "mmapped segments and threads")]
    fn critical_run_measures_both_kinds() {
        let c = critical_under_load(LedgerChoice::Memory, 1, 5).expect("run");
        assert!(c.critical_p99_us > 0.0 && c.normal_p99_us > 0.0, "{c:?}");
        assert!(c.critical_p50_us <= c.critical_p99_us);
    }

    /// The runtime's memory figure is taken with every agent registered and every task
    /// accepted (the function checks the counts), and its directory is gone afterwards.
    #[test]
    #[cfg_attr(miri, ignore = "mmapped segments and /proc")]
    fn runtime_memory_is_measured_loaded() {
        let (base, loaded) = measure_runtime_memory().expect("measure");
        if base.total_kib > 0 {
            assert!(loaded.total_kib > base.total_kib, "{base:?} {loaded:?}");
        }
    }
}
