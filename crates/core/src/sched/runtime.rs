//! The scheduler's runtime: the sans-I/O [`Scheduler`](crate::sched::Scheduler) wired to shared-memory rings, so agents in
//! any process (threads, OS processes, other languages through the C ABI) take tasks from it
//! and report results, and so the scheduler process itself may be killed and restarted without
//! losing an accepted task.
//!
//! # A scheduler directory
//!
//! One directory (default under `/dev/shm`) holds, as segments:
//!
//! | segment | what | written by |
//! |---|---|---|
//! | `ledger.sched` ([`LEDGER_NAME`]) | the [`ShmLedger`] of accepted tasks (or a file ledger elsewhere, see [`LedgerChoice`]) | the dispatcher |
//! | `sched.reports` ([`REPORTS_RING`]) | one multi-producer ring of [`wire::ReportFrame`]s: hello, started, ack, nack, bye | every agent |
//! | `inbox.<agent>` ([`crate::router::inbox_name`]) | one ring per agent of [`wire::InboxFrame`]s: tasks, revokes, hello requests | the dispatcher |
//! | `sched.loads` ([`LOADS_NAME`]) | the [`LoadTable`](crate::sched::LoadTable): every agent's current tasks, latency and heartbeat | each agent, its own slot |
//!
//! The [`Dispatcher`] (one per directory, in the scheduler's process) owns the ledger and the
//! consumer of the reports ring; [`Agent`] is one agent's end: it creates its inbox, claims a
//! load slot, says hello, then receives tasks and reports on them. [`Service`] runs a dispatcher
//! on a thread of its own behind a thread-safe handle whose [`Service::submit`] gives a
//! [`TaskFuture`]. [`PoolHost`] keeps a [`crate::sched::Pool`] of agents of a type alive
//! against a dispatcher: pre-warmed, replaced when they die, grown under demand, shrunk when
//! idle; [`CommandLauncher`] starts them as OS processes from a command line.
//!
//! # Why nothing is lost
//!
//! * A task is in the ledger (`Accepted`) before `submit` returns its id; a restarted
//!   dispatcher ([`Dispatcher::open`] on a directory whose ledger exists) re-queues every
//!   accepted task that has not ended (see [`Scheduler::recover`](crate::sched::Scheduler::recover)) and writes a `Hello` request
//!   into every inbox it finds, so live agents register again.
//! * The dispatcher acknowledges a report frame only after the scheduler has handled it (its
//!   ledger record appended): a dispatcher killed in between reads the frame again.
//! * An agent's death is seen by its process identity (pid and start time, checked every
//!   [`RuntimeOptions::liveness_interval`]) or by missing heartbeats; its leases are released
//!   and the tasks delivered to another agent. Its inbox is removed: a replacement with the
//!   same id starts empty.
//! * A delivery that does not fit into a full inbox waits in the dispatcher and is retried;
//!   a result that does not fit into a full reports ring waits in the agent.
//! * Effects are once per task: the first result completes the task, later ones (a
//!   redelivered task's first agent answering late) are counted as duplicates.
//!
//! * Agents' inboxes belong to their agents: an agent creates its own (replacing a dead
//!   predecessor's) and removes it when it leaves; the dispatcher removes the inbox of an agent
//!   found dead only while it holds that id's load slot, so a new incarnation's inbox is never
//!   removed by mistake.
//!
//! What a crash of the dispatcher's process does not keep: outcomes it had produced but not
//! handed out (a future's result, a `poll_outcome` not yet called) are not handed out again by
//! its successor. They stay in the ledger as `Completed` / `DeadLettered` records (readable with
//! [`crate::sched::ShmLedger::inspect`] and `erlmcp-flow agents show`) until its next
//! compaction. In-process submitters die with the dispatcher, so this only matters to a host
//! whose submitters outlive it (the Erlang scheduler process restarted by its supervisor).
//!
//! The clock of every event is [`now_micros`] (`CLOCK_MONOTONIC`, system-wide), so lease
//! deadlines written by one dispatcher mean the same to its successor.

mod agent;
mod dispatcher;
mod pool_host;
mod service;
pub mod wire;

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::sched::ledger::{FileLedger, FileLedgerOptions, ShmLedger};
use crate::sched::scheduler::SchedulerConfig;
use crate::sched::types::{Ledger, LedgerRecord, MemLedger, Micros};
use crate::shm::SegmentOptions;

pub use agent::{Agent, AgentOptions, Task};
pub use dispatcher::{Dispatcher, DispatcherStats, Outcome};
pub use pool_host::{CommandLauncher, Launcher, PoolHost};
pub use service::{Service, TaskFuture};

/// The ledger segment's name in a scheduler directory.
pub const LEDGER_NAME: &str = "sched";
/// The reports ring's name in a scheduler directory.
pub const REPORTS_RING: &str = "sched.reports";
/// The load table's name in a scheduler directory.
pub const LOADS_NAME: &str = "sched.loads";

/// Microseconds of `CLOCK_MONOTONIC`: the same clock in every process of the machine.
pub fn now_micros() -> Micros {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Where the dispatcher keeps its ledger.
#[derive(Debug, Clone)]
pub enum LedgerChoice {
    /// In memory: tasks do not outlive the dispatcher (tests, benchmarks).
    Memory,
    /// A shared-memory segment [`LEDGER_NAME`] in the directory (default): survives the death
    /// of any process, the dispatcher's included.
    Shm {
        /// Bytes of a new ledger's data area.
        capacity: usize,
    },
    /// An append-only file with group commit: survives a reboot.
    File {
        /// The file.
        path: PathBuf,
        /// Its options.
        options: FileLedgerOptions,
    },
}

/// How a [`Dispatcher`] is set up.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The directory of the segments (created if missing; default `/dev/shm/emf-sched`).
    pub dir: PathBuf,
    /// The scheduler's settings.
    pub config: SchedulerConfig,
    /// Where the ledger lives (default: shared memory, 16 MiB).
    pub ledger: LedgerChoice,
    /// Bytes of the reports ring (default 4 MiB).
    pub reports_capacity: usize,
    /// Slots of the load table: the most agents at once (default 1024).
    pub load_slots: usize,
    /// How often agents' processes are checked (default 20 ms).
    pub liveness_interval: Micros,
    /// Most report frames handled per [`Dispatcher::step`] (default 4096).
    pub batch: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            dir: PathBuf::from("/dev/shm/emf-sched"),
            config: SchedulerConfig::default(),
            ledger: LedgerChoice::Shm { capacity: 16 << 20 },
            reports_capacity: 4 << 20,
            load_slots: 1024,
            liveness_interval: 20_000,
            batch: 4096,
        }
    }
}

impl RuntimeOptions {
    /// Default options in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        RuntimeOptions {
            dir: dir.to_owned(),
            ..RuntimeOptions::default()
        }
    }

    pub(crate) fn segment(&self) -> SegmentOptions {
        segment_in(&self.dir)
    }
}

pub(crate) fn segment_in(dir: &Path) -> SegmentOptions {
    SegmentOptions {
        dir: dir.to_owned(),
        ..SegmentOptions::default()
    }
}

/// The ledger a dispatcher holds: one of the three kinds, chosen at run time.
pub enum AnyLedger {
    /// In memory.
    Memory(MemLedger),
    /// In shared memory.
    Shm(ShmLedger),
    /// In a file.
    File(FileLedger),
}

impl Ledger for AnyLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        match self {
            AnyLedger::Memory(l) => l.append(record),
            AnyLedger::Shm(l) => l.append(record),
            AnyLedger::File(l) => l.append(record),
        }
    }
    fn append_batch(&mut self, records: &[LedgerRecord]) -> Result<()> {
        match self {
            AnyLedger::Memory(l) => l.append_batch(records),
            AnyLedger::Shm(l) => l.append_batch(records),
            AnyLedger::File(l) => l.append_batch(records),
        }
    }
    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        match self {
            AnyLedger::Memory(l) => l.replay(),
            AnyLedger::Shm(l) => l.replay(),
            AnyLedger::File(l) => l.replay(),
        }
    }
}
