//! The memory of a loaded scheduler (issue 12's `sched_memory_mb`: 60 agents and 10,000
//! queued tasks; the original design's bound is < 512 MB, the goal ≤ 64 MB).
//!
//! Measured in a fresh child process (`erlmcp-flow bench-helper sched-memory`), so that
//! nothing the other benchmarks allocated and freed hides or inflates the figure. The child
//! reads its `/proc/self/status` at start, then builds what a scheduler host holds:
//!
//! * a [`Scheduler`] with its default settings over a [`ShmLedger`] (default capacity,
//!   16 MiB) in a scratch directory under `/dev/shm` (removed at the end);
//! * a shared [`LoadTable`] of 256 slots with a [`Registry`] over it, set as the scheduler's
//!   heartbeat source;
//! * 60 agents registered in both, each with an inbox: a multi-producer [`Ring`] of the
//!   router's default capacity (1 MiB), with the host's producer attached;
//! * 10,000 tasks of 256-byte payloads submitted: the first 300 (60 agents × 5) are leased and
//!   written to their agents' inboxes (task id, attempt, payload) as the host does with each
//!   `Deliver`; the other 9,700 wait in the scheduler's queue;
//!
//! and reads its status again (`loaded`). The rings and the ledger are mmapped files: their
//! pages count in the resident set (`RssShmem`) once they are touched, and only then. A fresh
//! inbox has been touched only where frames were written; a long-lived one has had every page
//! written once its producer wrapped around. So the child then pushes frames through every
//! inbox (its consumer standing in for the agent) until each has wrapped, and reads its status
//! a third time (`rings touched`): the worst case of a host that has run for a while.
//!
//! Every figure is `VmRSS`, shared pages included, of the whole process (its code and libc
//! included), in MiB (2^20 bytes), reported as `MB`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use erlmcp_flow::queue::Priority;
use erlmcp_flow::ring::{Producer, Ring, RingOptions};
use erlmcp_flow::sched::{
    Action, AgentId, AgentType, LoadTable, Registry, Scheduler, SchedulerConfig, ShmLedger,
    ShmLedgerOptions, DEFAULT_MAX_TASKS,
};
use erlmcp_flow::shm::SegmentOptions;

use super::{BenchResult, Better, Settings};

/// Agents registered (the figure).
pub const AGENTS: usize = 60;
/// Tasks submitted.
pub const TASKS: usize = 10_000;
/// Bytes of a task's payload.
pub const PAYLOAD: usize = 256;
/// The inbox rings' capacity: the router's default.
pub const INBOX_CAPACITY: usize = 1 << 20;

/// Resident-set figures of `/proc/self/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: everything resident (anonymous, file-backed and shared pages).
    pub total_kib: u64,
    /// `RssAnon`: the heap, stacks.
    pub anon_kib: u64,
    /// `RssShmem`: shared-memory pages (the rings, the ledger, the load table).
    pub shmem_kib: u64,
}

impl Rss {
    /// This process's figures now; zeros where `/proc` does not say.
    pub fn now() -> Rss {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Rss {
            total_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            shmem_kib: field("RssShmem:"),
        }
    }

    fn line(&self) -> String {
        format!("{} {} {}", self.total_kib, self.anon_kib, self.shmem_kib)
    }

    fn parse(words: &[&str]) -> Option<Rss> {
        let n = |i: usize| words.get(i)?.parse().ok();
        Some(Rss {
            total_kib: n(0)?,
            anon_kib: n(1)?,
            shmem_kib: n(2)?,
        })
    }
}

/// A scratch directory under `/dev/shm` (or the temporary directory), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let base = if std::path::Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
            PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("emf-sched-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The three readings of the child: at start, loaded, every inbox touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readings {
    /// Before anything was built.
    pub base: Rss,
    /// With the scheduler, 60 agents and 10,000 tasks.
    pub loaded: Rss,
    /// The same after every inbox ring was written end to end.
    pub rings_touched: Rss,
}

/// Builds the loaded scheduler in this process (see the module documentation) and returns the
/// readings. Everything is removed before it returns.
pub fn measure() -> erlmcp_flow::Result<Readings> {
    let base = Rss::now();
    let scratch = Scratch::new();
    let seg = SegmentOptions {
        dir: scratch.0.clone(),
        ..SegmentOptions::default()
    };
    let ledger = ShmLedger::open(
        "sched-mem",
        &ShmLedgerOptions {
            segment: seg.clone(),
            ..ShmLedgerOptions::default()
        },
    )?;
    let table = Arc::new(LoadTable::create("loads.sched-mem", 256, &seg)?);
    let registry = Registry::new(table.clone(), 1024);
    let mut sched = Scheduler::new(SchedulerConfig::default(), ledger)?;
    sched.set_heartbeat_source(Some(table.clone()));
    let ty = AgentType::new("worker")?;
    let mut inboxes: Vec<(Ring, Producer)> = Vec::with_capacity(AGENTS);
    let mut index = std::collections::HashMap::new();
    for i in 0..AGENTS {
        let name = format!("agent-{i:02}");
        let id = AgentId::new(&name)?;
        let liveness = erlmcp_flow::sched::Liveness::Token(i as u64);
        registry.register(id.clone(), ty.clone(), DEFAULT_MAX_TASKS, liveness, 0)?;
        sched.register_agent(id.clone(), ty.clone(), DEFAULT_MAX_TASKS, liveness, 0)?;
        let ring = Ring::create(
            &erlmcp_flow::router::inbox_name(&name),
            &RingOptions {
                capacity: INBOX_CAPACITY,
                multi_producer: true,
                segment: seg.clone(),
                ..RingOptions::default()
            },
        )?;
        let producer = ring.producer()?;
        inboxes.push((ring, producer));
        index.insert(id, i);
    }
    let mut frame = Vec::with_capacity(12 + PAYLOAD);
    for k in 0..TASKS {
        let payload: Vec<u8> = (0..PAYLOAD).map(|j| (k + j) as u8).collect();
        sched.submit(&ty, Priority::Normal, payload, 1)?;
        while let Some(action) = sched.poll_action() {
            if let Action::Deliver {
                agent,
                task,
                attempt,
                payload,
                ..
            } = action
            {
                frame.clear();
                frame.extend_from_slice(&task.0.to_le_bytes());
                frame.extend_from_slice(&attempt.to_le_bytes());
                frame.extend_from_slice(&payload);
                inboxes[index[&agent]].1.send(&frame)?;
            }
        }
    }
    let stats = sched.stats();
    if stats.queued + stats.leased != TASKS || stats.leased != AGENTS * DEFAULT_MAX_TASKS as usize {
        return Err(erlmcp_flow::Error::invalid(format!(
            "the scheduler holds {} queued and {} leased, not {TASKS} with {} leased",
            stats.queued,
            stats.leased,
            AGENTS * DEFAULT_MAX_TASKS as usize
        )));
    }
    let loaded = Rss::now();
    // Every inbox written end to end (and drained by its consumer, the agent's side).
    let chunk = vec![0x5a_u8; 4096];
    for (ring, producer) in &mut inboxes {
        let mut consumer = ring.consumer()?;
        let mut sent = 0;
        while sent < INBOX_CAPACITY + chunk.len() {
            producer.send(&chunk)?;
            // Each frame takes at least its payload: the ring has wrapped at the end.
            sent += chunk.len();
            consumer.poll(64, |_| {})?;
        }
        consumer.poll(usize::MAX, |_| {})?;
    }
    let rings_touched = Rss::now();
    drop(inboxes);
    drop(sched);
    drop(scratch);
    Ok(Readings {
        base,
        loaded,
        rings_touched,
    })
}

/// `erlmcp-flow bench-helper sched-memory`: measures and prints the readings on one line.
pub fn helper() -> Result<(), String> {
    let r = measure().map_err(|e| e.to_string())?;
    println!(
        "{} {} {}",
        r.base.line(),
        r.loaded.line(),
        r.rings_touched.line()
    );
    Ok(())
}

/// Runs [`helper`] in a child process and reads its line.
fn child_readings() -> Result<Readings, String> {
    let exe = std::env::var_os("EMF_BENCH_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("own executable"));
    let out = Command::new(exe)
        .args(["bench-helper", "sched-memory"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("spawn the sched-memory helper: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the sched-memory helper failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let parse = |i: usize| Rss::parse(words.get(i..i + 3).unwrap_or(&[]));
    match (parse(0), parse(3), parse(6)) {
        (Some(base), Some(loaded), Some(rings_touched)) => Ok(Readings {
            base,
            loaded,
            rings_touched,
        }),
        _ => Err(format!("the sched-memory helper printed {text:?}")),
    }
}

/// The suite's part (the same with `--quick`: one build of the loaded scheduler).
pub fn results(_settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    progress("sched_memory_mb");
    let r = child_readings().unwrap_or_else(|e| panic!("{e}"));
    let mb = |kib: u64| kib as f64 / 1024.0;
    let (seed, goal) = (Some(512.0), Some(64.0));
    vec![
        BenchResult::new(
            "sched_memory_mb",
            mb(r.loaded.total_kib),
            "MB",
            Better::Lower,
        )
        .with_targets(seed, goal),
        BenchResult::new(
            "sched_memory_pct_of_512mb",
            mb(r.loaded.total_kib) / 512.0 * 100.0,
            "%",
            Better::Lower,
        ),
        BenchResult::new(
            "sched_memory_delta_mb",
            mb(r.loaded.total_kib.saturating_sub(r.base.total_kib)),
            "MB",
            Better::Lower,
        ),
        BenchResult::new(
            "sched_memory_shmem_mb",
            mb(r.loaded.shmem_kib),
            "MB",
            Better::Lower,
        ),
        BenchResult::new(
            "sched_memory_rings_touched_mb",
            mb(r.rings_touched.total_kib),
            "MB",
            Better::Lower,
        )
        .with_targets(seed, goal),
        BenchResult::new(
            "sched_memory_rings_touched_pct_of_512mb",
            mb(r.rings_touched.total_kib) / 512.0 * 100.0,
            "%",
            Better::Lower,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loaded scheduler is built as described (the helper checks the queued and leased
    /// counts), every inbox's pages do show up in the resident set once written through, and
    /// the scratch directory is gone afterwards.
    #[test]
    #[cfg_attr(miri, ignore = "mmapped segments and /proc")]
    fn measures_a_loaded_scheduler_and_cleans_up() {
        let r = measure().expect("measure");
        if r.base.total_kib == 0 {
            return; // no /proc: nothing to compare
        }
        assert!(r.loaded.total_kib > r.base.total_kib, "{r:?}");
        // 60 rings of 1 MiB, each written end to end: at least 60 MiB of shared pages over
        // the base (not over `loaded`: the loaded scheduler has already written part of the
        // inboxes, how much depends on timing — a CI run saw 28 MiB there).
        let rings_kib = (AGENTS * INBOX_CAPACITY / 1024) as u64;
        assert!(
            r.rings_touched.shmem_kib >= r.base.shmem_kib + rings_kib * 9 / 10,
            "{r:?}"
        );
        assert!(r.rings_touched.shmem_kib >= r.loaded.shmem_kib, "{r:?}");
        let dir = PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
            .join(format!("emf-sched-mem-{}", std::process::id()));
        assert!(!dir.exists(), "{dir:?} left behind");
    }

    #[test]
    fn status_figures_parse() {
        let r = Rss::now();
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(r.total_kib > 0 && r.total_kib >= r.anon_kib);
        }
        let line = r.line();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(Rss::parse(&words), Some(r));
        assert_eq!(Rss::parse(&words[..2]), None);
    }
}
