//! C ABI of the scheduler (`emf_sched_*`): agents, tasks with leases, and the actions the host
//! carries out, over `engine::sched::Scheduler` with an in-memory, shared-memory or file ledger.
//!
//! The scheduler is a state machine without I/O: every event carries the caller's clock
//! reading `now_us` (µs of any monotonic clock, the same one for every call on a handle). The
//! host polls the actions it must carry out with [`emf_sched_poll_action`].
//!
//! Thread-safety: an `emf_sched_t` is used by one thread at a time; a second thread calling in
//! while another is inside gets `EMF_ERR_BUSY` (the handle guards itself, it never races).

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;

use super::handle::{borrow, free, new_handle, Exclusive, Handle};
use super::{
    bytes, c_str, emf_status_t, guard, require_out, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_FULL, EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND,
};
use engine::queue::Priority;
use engine::sched::{
    Action, AgentId, AgentType, BackPressureConfig, BreakerConfig, BreakerState, FileLedger,
    FileLedgerOptions, Ledger, LedgerRecord, Liveness, MemLedger, Rate, RateLimiterConfig,
    Scheduler, SchedulerConfig, SchedulerStats, ShmLedger, ShmLedgerOptions, Strategy, TaskId,
    DEFAULT_MAX_TASKS,
};
use engine::shm::SegmentOptions;

/// Agent selection (`emf_sched_options_t::strategy`): the least-loaded agent with spare
/// capacity (load 70 %, latency 30 %; examines every agent of the type). The default.
pub const EMF_SCHED_LEAST_LOADED: u32 = 0;
/// Agent selection: power of two choices (two random agents, the less loaded wins), seeded
/// with `emf_sched_options_t::seed`.
pub const EMF_SCHED_POWER_OF_TWO: u32 = 1;
/// Agent selection: the next agent with spare capacity after the previous choice.
pub const EMF_SCHED_ROUND_ROBIN: u32 = 2;

/// Ledger (`emf_sched_new`): in memory; tasks do not outlive the handle.
pub const EMF_LEDGER_MEMORY: u32 = 0;
/// Ledger (`emf_sched_new`): a shared-memory segment named `ledger_name` in `ledger_dir`
/// (NULL: `/dev/shm`); survives the death of any process, this one included.
pub const EMF_LEDGER_SHM: u32 = 1;
/// Ledger (`emf_sched_new`): an append-only file at path `ledger_name` (`ledger_dir` must be
/// NULL); survives a reboot.
pub const EMF_LEDGER_FILE: u32 = 2;

/// Action kind (`emf_sched_action_t::kind`): no action is pending.
pub const EMF_SCHED_ACTION_NONE: u32 = 0;
/// Action kind: write task `task` (`data`/`len`: its payload) to agent `agent`'s inbox; the
/// agent quotes `attempt` in `emf_sched_started`/`_ack`/`_nack`; the lease ends at
/// `deadline_us`.
pub const EMF_SCHED_ACTION_DELIVER: u32 = 1;
/// Action kind: tell agent `agent` to drop attempt `attempt` of task `task` (stolen, or
/// completed elsewhere); whatever it answers for it later is ignored.
pub const EMF_SCHED_ACTION_REVOKE: u32 = 2;
/// Action kind: hand task `task`'s result (`data`/`len`) to its submitter; once per task.
pub const EMF_SCHED_ACTION_RESULT: u32 = 3;
/// Action kind: task `task` failed for good (`data`/`len`: the reason, UTF-8); once per task,
/// never together with a result.
pub const EMF_SCHED_ACTION_DEAD_LETTER: u32 = 4;

/// A circuit breaker per agent (`emf_sched_options_t::breaker`; off by default): an agent
/// whose recent calls failed too often stops receiving tasks for a while, then gets a few
/// probes. Defaults (from `emf_sched_options_default`): a 10 s window of 10 buckets, at least 10
/// calls, 50 % failures; open 5 s, doubling up to 60 s; 3 probes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_breaker_options_t {
    /// On or off.
    pub enabled: bool,
    /// The sliding window in µs (at least `buckets`).
    pub window_us: u64,
    /// Buckets of the window (1 to 4096).
    pub buckets: u32,
    /// Calls the window must hold before the breaker can open (at least 1).
    pub min_calls: u32,
    /// The failure ratio that opens it, in (0, 1].
    pub failure_ratio: f64,
    /// A success slower than this (µs) counts as a failure; 0: latency is not judged.
    pub slow_call_us: u64,
    /// The first open period in µs (at least 1).
    pub open_for_us: u64,
    /// Growth of the open period after a failed probe (1 to 1000).
    pub backoff: u32,
    /// The longest open period in µs (at least `open_for_us`).
    pub max_open_for_us: u64,
    /// Probes admitted half-open; that many successes close it (1 to 1,000,000).
    pub half_open_probes: u32,
}

/// A back-pressure controller per agent (`emf_sched_options_t::backpressure`; off by default):
/// an agent whose inbox lag (reported with `emf_sched_observe_lag`) passes `high_water` frames
/// gets no new task until a reading at or below `low_water`. Defaults: 64 and 16.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_backpressure_options_t {
    /// On or off.
    pub enabled: bool,
    /// Lag (frames) above which the agent is a slow consumer (at least 1).
    pub high_water: u64,
    /// Lag at or below which it accepts again (below `high_water`).
    pub low_water: u64,
}

/// An adaptive rate limiter per agent type (`emf_sched_options_t::rate_limit`; off by
/// default): a token bucket whose rate grows additively while the p95 submit-to-result latency
/// stays under the target and shrinks multiplicatively when it does not; `emf_sched_submit`
/// without a token gives `EMF_ERR_FULL`. Rates in thousandths of a token per second. Defaults:
/// 100/s (1 to 10,000), burst 100, target 50 ms, +10/s or ×0.5 per second, on at least 20 of
/// the last 1000 latencies.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_ratelimit_options_t {
    /// On or off.
    pub enabled: bool,
    /// The starting rate (within min..max).
    pub initial_milli_per_sec: u64,
    /// The slowest rate (at least 1).
    pub min_milli_per_sec: u64,
    /// The fastest rate.
    pub max_milli_per_sec: u64,
    /// The bucket's size in tokens (at least 1).
    pub burst: u64,
    /// The p95 latency to stay under, µs (at least 1).
    pub target_p95_us: u64,
    /// What a good interval adds to the rate (above 0).
    pub increase_milli_per_sec: u64,
    /// What a bad interval multiplies the rate by, in (0, 1).
    pub decrease: f64,
    /// Latencies kept (at least 1).
    pub window: u64,
    /// Latencies needed for a decision (1 to `window`).
    pub min_samples: u64,
    /// The least time between two decisions, µs (at least 1).
    pub interval_us: u64,
}

/// Options for `emf_sched_new`; fill with `emf_sched_options_default` first. Every value is
/// used as given and checked (a value out of its range: `EMF_ERR_INVALID_ARGUMENT`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_sched_options_t {
    /// Tasks that may wait in the queue before `emf_sched_submit` gives `EMF_ERR_FULL`
    /// (default 100000; at least 1).
    pub max_queued: usize,
    /// An agent without a heartbeat for longer than this is declared dead by
    /// `emf_sched_tick` (default 5 s); 0: heartbeats are not watched (the host reports deaths
    /// with `emf_sched_agent_dead`).
    pub heartbeat_timeout_us: u64,
    /// Releases of a task's lease before it is dead-lettered (default 3; at least 1).
    pub max_attempts: u32,
    /// The lease length is the type's observed p95 latency × this factor (default 3; > 0).
    pub lease_factor: f64,
    /// The shortest lease (default 100 ms; at least 1 µs).
    pub min_lease_us: u64,
    /// The longest lease (default 10 min; at least `min_lease_us`).
    pub max_lease_us: u64,
    /// The lease before any latency is observed (default 10 s; within the bounds above).
    pub default_lease_us: u64,
    /// Latencies per type the p95 is taken over (default 64; at least 1).
    pub latency_window: u32,
    /// Weight of a new sample in an agent's latency average (default 0.2; in (0, 1]).
    pub ewma_alpha: f64,
    /// `EMF_SCHED_*` agent selection (default `EMF_SCHED_LEAST_LOADED`).
    pub strategy: u32,
    /// Seed of `EMF_SCHED_POWER_OF_TWO` (default 0: a fixed constant).
    pub seed: u64,
    /// Idle agents steal tasks not yet started from busy ones (default true).
    pub work_stealing: bool,
    /// Bytes of a new shared-memory ledger's data area (default 16 MiB; at least 64).
    pub shm_capacity: usize,
    /// Circuit breakers (off by default; the other fields hold the defaults).
    pub breaker: emf_breaker_options_t,
    /// Back-pressure (off by default).
    pub backpressure: emf_backpressure_options_t,
    /// Rate limits (off by default).
    pub rate_limit: emf_ratelimit_options_t,
}

/// One action to carry out, filled by `emf_sched_poll_action`. The pointers (`agent`, `data`)
/// point into the handle and stay valid until the next `emf_sched_poll_action` or
/// `emf_sched_free` on it; copy what must live longer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_sched_action_t {
    /// `EMF_SCHED_ACTION_*`.
    pub kind: u32,
    /// The attempt (DELIVER, REVOKE; else 0).
    pub attempt: u32,
    /// The task (0 for NONE).
    pub task: u64,
    /// When the lease expires (DELIVER; else 0).
    pub deadline_us: u64,
    /// The agent, NUL-terminated (DELIVER, REVOKE; else NULL).
    pub agent: *const c_char,
    /// The payload (DELIVER), the result (RESULT) or the reason (DEAD_LETTER); NULL when
    /// `len` is 0.
    pub data: *const u8,
    /// The length of `data`.
    pub len: usize,
}

impl emf_sched_action_t {
    const NONE: emf_sched_action_t = emf_sched_action_t {
        kind: EMF_SCHED_ACTION_NONE,
        attempt: 0,
        task: 0,
        deadline_us: 0,
        agent: std::ptr::null(),
        data: std::ptr::null(),
        len: 0,
    };
}

/// A scheduler's counters (`emf_sched_stats`). `completed` and `dead_lettered` include what a
/// recovered ledger held; the others count since the handle was made.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_sched_stats_t {
    /// Tasks waiting in the queue.
    pub queued: u64,
    /// Tasks leased to an agent.
    pub leased: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks dead-lettered.
    pub dead_lettered: u64,
    /// Late or repeated results, `started`/`nack` for attempts no longer leased: ignored.
    pub duplicates: u64,
    /// Deliveries after the first of a task (steals excluded).
    pub redeliveries: u64,
    /// Tasks taken from a busy agent by an idle one.
    pub steals: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Agents declared dead (reported, or heartbeats missed).
    pub agents_dead: u64,
    /// Ledger appends that failed inside an event.
    pub ledger_errors: u64,
    /// Agents registered.
    pub agents: u64,
}

/// One agent's load (`emf_sched_agent_load`), as the scheduler's strategy sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_sched_agent_load_t {
    /// Tasks it holds (leased, not acknowledged).
    pub current_tasks: u32,
    /// Of those, the ones it has not reported started (its backlog, open to stealing).
    pub backlog: u32,
    /// Its capacity (`max_tasks`).
    pub max_tasks: u32,
    /// Its delivery-to-ack latency average in µs (0 before its first acknowledged task).
    pub latency_us: u64,
    /// When it last gave a sign of life (registration or heartbeat), on the events' clock.
    pub last_heartbeat_us: u64,
}

/// The ledger behind a handle: one of the three kinds.
pub(crate) enum AnyLedger {
    Memory(MemLedger),
    Shm(ShmLedger),
    File(FileLedger),
}

impl Ledger for AnyLedger {
    fn append(&mut self, record: &LedgerRecord) -> engine::Result<()> {
        match self {
            AnyLedger::Memory(l) => l.append(record),
            AnyLedger::Shm(l) => l.append(record),
            AnyLedger::File(l) => l.append(record),
        }
    }

    fn append_batch(&mut self, records: &[LedgerRecord]) -> engine::Result<()> {
        match self {
            AnyLedger::Memory(l) => l.append_batch(records),
            AnyLedger::Shm(l) => l.append_batch(records),
            AnyLedger::File(l) => l.append_batch(records),
        }
    }

    fn replay(&self) -> engine::Result<Vec<LedgerRecord>> {
        match self {
            AnyLedger::Memory(l) => l.replay(),
            AnyLedger::Shm(l) => l.replay(),
            AnyLedger::File(l) => l.replay(),
        }
    }
}

/// What an `emf_sched_t` holds: the scheduler and the last polled action, whose bytes C
/// reads until the next poll.
pub(crate) struct SchedState {
    sched: Scheduler<AnyLedger>,
    polled: Option<Action>,
    polled_agent: Option<CString>,
}

/// A scheduler. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_sched_t {
    _private: (),
}

impl Handle for emf_sched_t {
    const KIND: u32 = 13;
    const NAME: &'static str = "sched";
    type Target = SchedState;
    type Access = Exclusive;
}

pub(crate) fn agent_id(p: *const c_char, name: &str) -> FfiResult<AgentId> {
    Ok(AgentId::new(c_str(p, name)?)?)
}

pub(crate) fn agent_type(p: *const c_char, name: &str) -> FfiResult<AgentType> {
    Ok(AgentType::new(c_str(p, name)?)?)
}

/// The body of the calls about one agent: decodes `agent` (argument errors first), borrows
/// the handle, and runs `f` on its scheduler with the id.
///
/// # Safety
///
/// `s` a live handle or NULL, not used by another thread concurrently (the slab checks
/// liveness); `agent` NULL or a NUL-terminated string.
unsafe fn on_agent<R>(
    s: *mut emf_sched_t,
    agent: *const c_char,
    f: impl FnOnce(&mut Scheduler<AnyLedger>, &AgentId) -> engine::Result<R>,
) -> FfiResult<R> {
    let id = agent_id(agent, "agent")?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut h = unsafe { borrow(s) }?;
    Ok(f(&mut h.sched, &id)?)
}

pub(crate) fn config_of(o: &emf_sched_options_t) -> FfiResult<SchedulerConfig> {
    let strategy = match o.strategy {
        EMF_SCHED_LEAST_LOADED => Strategy::LeastLoaded,
        EMF_SCHED_POWER_OF_TWO => Strategy::power_of_two(o.seed),
        EMF_SCHED_ROUND_ROBIN => Strategy::round_robin(),
        s => {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("strategy {s} is not one of EMF_SCHED_* (0..2)"),
            ))
        }
    };
    let c = SchedulerConfig {
        max_queued: o.max_queued,
        heartbeat_timeout: (o.heartbeat_timeout_us != 0).then_some(o.heartbeat_timeout_us),
        max_attempts: o.max_attempts,
        lease_factor: o.lease_factor,
        min_lease: o.min_lease_us,
        max_lease: o.max_lease_us,
        default_lease: o.default_lease_us,
        latency_window: o.latency_window as usize,
        ewma_alpha: o.ewma_alpha,
        strategy,
        work_stealing: o.work_stealing,
        breaker: o.breaker.enabled.then(|| {
            let b = &o.breaker;
            BreakerConfig {
                window: b.window_us,
                buckets: b.buckets,
                min_calls: b.min_calls,
                failure_ratio: b.failure_ratio,
                slow_call: (b.slow_call_us != 0).then_some(b.slow_call_us),
                open_for: b.open_for_us,
                backoff: b.backoff,
                max_open_for: b.max_open_for_us,
                half_open_probes: b.half_open_probes,
            }
        }),
        backpressure: o.backpressure.enabled.then_some(BackPressureConfig {
            high_water: o.backpressure.high_water,
            low_water: o.backpressure.low_water,
        }),
        rate_limit: o.rate_limit.enabled.then(|| {
            let r = &o.rate_limit;
            RateLimiterConfig {
                initial_rate: Rate::milli_per_sec(r.initial_milli_per_sec),
                min_rate: Rate::milli_per_sec(r.min_milli_per_sec),
                max_rate: Rate::milli_per_sec(r.max_milli_per_sec),
                burst: r.burst,
                target_p95: r.target_p95_us,
                increase: Rate::milli_per_sec(r.increase_milli_per_sec),
                decrease: r.decrease,
                window: usize::try_from(r.window).unwrap_or(usize::MAX),
                min_samples: usize::try_from(r.min_samples).unwrap_or(usize::MAX),
                interval: r.interval_us,
            }
        }),
    };
    c.validate()?;
    Ok(c)
}

pub(crate) fn options_default() -> emf_sched_options_t {
    let d = SchedulerConfig::default();
    emf_sched_options_t {
        max_queued: d.max_queued,
        heartbeat_timeout_us: d.heartbeat_timeout.unwrap_or(0),
        max_attempts: d.max_attempts,
        lease_factor: d.lease_factor,
        min_lease_us: d.min_lease,
        max_lease_us: d.max_lease,
        default_lease_us: d.default_lease,
        latency_window: d.latency_window as u32,
        ewma_alpha: d.ewma_alpha,
        strategy: EMF_SCHED_LEAST_LOADED,
        seed: 0,
        work_stealing: d.work_stealing,
        shm_capacity: ShmLedgerOptions::default().capacity,
        breaker: {
            let b = BreakerConfig::default();
            emf_breaker_options_t {
                enabled: false,
                window_us: b.window,
                buckets: b.buckets,
                min_calls: b.min_calls,
                failure_ratio: b.failure_ratio,
                slow_call_us: b.slow_call.unwrap_or(0),
                open_for_us: b.open_for,
                backoff: b.backoff,
                max_open_for_us: b.max_open_for,
                half_open_probes: b.half_open_probes,
            }
        },
        backpressure: {
            let b = BackPressureConfig::default();
            emf_backpressure_options_t {
                enabled: false,
                high_water: b.high_water,
                low_water: b.low_water,
            }
        },
        rate_limit: {
            let r = RateLimiterConfig::default();
            emf_ratelimit_options_t {
                enabled: false,
                initial_milli_per_sec: r.initial_rate.as_milli_per_sec(),
                min_milli_per_sec: r.min_rate.as_milli_per_sec(),
                max_milli_per_sec: r.max_rate.as_milli_per_sec(),
                burst: r.burst,
                target_p95_us: r.target_p95,
                increase_milli_per_sec: r.increase.as_milli_per_sec(),
                decrease: r.decrease,
                window: r.window as u64,
                min_samples: r.min_samples as u64,
                interval_us: r.interval,
            }
        },
    }
}

/// Fills `*out` with the default scheduler options.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_options_default(out: *mut emf_sched_options_t) -> emf_status_t {
    // SAFETY: writable by contract (NULL checked inside).
    guard(|| unsafe { write_out(out, options_default(), "out") })
}

/// Creates a scheduler with options `opts` (NULL: the defaults) over a ledger of kind
/// `ledger` (`EMF_LEDGER_*`): `EMF_LEDGER_MEMORY` (`ledger_name` and `ledger_dir` NULL),
/// `EMF_LEDGER_SHM` (segment `ledger_name` in directory `ledger_dir`, NULL for `/dev/shm`;
/// a live owner's ledger gives `EMF_ERR_BUSY`) or `EMF_LEDGER_FILE` (path `ledger_name`,
/// `ledger_dir` NULL). A durable ledger that holds records is recovered (the scheduler that
/// wrote it died or was freed): its accepted tasks not ended are queued again and delivered
/// once agents register; ids continue after the largest seen; `now_us` is the clock reading
/// of that recovery. No agent is registered after a recovery: agents register again.
///
/// # Safety
///
/// `opts` NULL or readable; `ledger_name`, `ledger_dir` NULL or NUL-terminated strings; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_new(
    opts: *const emf_sched_options_t,
    ledger: u32,
    ledger_name: *const c_char,
    ledger_dir: *const c_char,
    now_us: u64,
    out: *mut *mut emf_sched_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let o = if opts.is_null() {
            options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let config = config_of(&o)?;
        let no_dir = || -> FfiResult {
            if ledger_dir.is_null() {
                Ok(())
            } else {
                Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    "`ledger_dir` is only for EMF_LEDGER_SHM",
                ))
            }
        };
        let l = match ledger {
            EMF_LEDGER_MEMORY => {
                no_dir()?;
                if !ledger_name.is_null() {
                    return Err(FfiError::new(
                        EMF_ERR_INVALID_ARGUMENT,
                        "an in-memory ledger has no name: pass NULL",
                    ));
                }
                AnyLedger::Memory(MemLedger::new())
            }
            EMF_LEDGER_SHM => {
                let name = c_str(ledger_name, "ledger_name")?;
                let mut segment = SegmentOptions::default();
                if !ledger_dir.is_null() {
                    segment.dir = PathBuf::from(c_str(ledger_dir, "ledger_dir")?);
                }
                AnyLedger::Shm(ShmLedger::open(
                    name,
                    &ShmLedgerOptions {
                        capacity: o.shm_capacity,
                        segment,
                    },
                )?)
            }
            EMF_LEDGER_FILE => {
                no_dir()?;
                let path = c_str(ledger_name, "ledger_name")?;
                AnyLedger::File(FileLedger::open(path, &FileLedgerOptions::default())?)
            }
            k => {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!("ledger {k} is not one of EMF_LEDGER_* (0..2)"),
                ))
            }
        };
        // On an empty ledger, recovery is a plain start.
        let sched = Scheduler::recover(config, l, now_us)?;
        let h = new_handle::<emf_sched_t>(SchedState {
            sched,
            polled: None,
            polled_agent: None,
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a scheduler (closing its ledger: a durable one keeps its records for a later
/// `emf_sched_new`). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `s`.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_free(s: *mut emf_sched_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(s) })
}

/// Registers agent `agent` (1-194 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`)
/// of type `agent_type`, holding at most `max_tasks` tasks at once (0: 5). Its liveness: an OS
/// process `pid` started at `start_time_or_token` (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`) when `pid` is not 0; else a token `start_time_or_token` the host checks
/// itself (reporting deaths with `emf_sched_agent_dead`). Registering again with the same type
/// and liveness updates the capacity and keeps the agent's tasks; with another, the old
/// incarnation's tasks are released.
///
/// # Safety
///
/// `s` a live handle; `agent`, `agent_type` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_register_agent(
    s: *mut emf_sched_t,
    agent: *const c_char,
    agent_type: *const c_char,
    max_tasks: u32,
    pid: u32,
    start_time_or_token: u64,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent, "agent")?;
        let ty = self::agent_type(agent_type, "agent_type")?;
        let liveness = if pid != 0 {
            Liveness::Process {
                pid,
                start_time: start_time_or_token,
            }
        } else {
            Liveness::Token(start_time_or_token)
        };
        let max = if max_tasks == 0 {
            DEFAULT_MAX_TASKS
        } else {
            max_tasks
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(s) }?;
        h.sched.register_agent(id, ty, max, liveness, now_us)?;
        Ok(())
    })
}

/// Removes agent `agent`; its tasks are delivered again elsewhere. `EMF_ERR_NOT_FOUND` when it
/// is not registered.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_unregister_agent(
    s: *mut emf_sched_t,
    agent: *const c_char,
    now_us: u64,
) -> emf_status_t {
    // SAFETY: caller contract.
    guard(|| unsafe { on_agent(s, agent, |sc, id| sc.unregister_agent(id, now_us)) })
}

/// A sign of life from agent `agent`. `EMF_ERR_NOT_FOUND` when it is not registered (declared
/// dead, or the scheduler was recovered): the agent should register again.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_heartbeat(
    s: *mut emf_sched_t,
    agent: *const c_char,
    now_us: u64,
) -> emf_status_t {
    // SAFETY: caller contract.
    guard(|| unsafe { on_agent(s, agent, |sc, id| sc.heartbeat(id, now_us)) })
}

/// The host saw agent `agent` die: it is removed and its tasks are delivered again elsewhere
/// at once. `EMF_ERR_NOT_FOUND` when it is not registered.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_agent_dead(
    s: *mut emf_sched_t,
    agent: *const c_char,
    now_us: u64,
) -> emf_status_t {
    // SAFETY: caller contract.
    guard(|| unsafe { on_agent(s, agent, |sc, id| sc.agent_dead(id, now_us)) })
}

/// Records that agent `agent` runs on cluster member `host` (a gossip member id, see
/// `emf_gossip_start`); 0: on no member in particular (the default). `emf_sched_host_down`
/// then takes the agent for dead when its host is. `EMF_ERR_NOT_FOUND` when the agent is not
/// registered.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_set_agent_host(
    s: *mut emf_sched_t,
    agent: *const c_char,
    host: u64,
) -> emf_status_t {
    // SAFETY: caller contract.
    guard(|| unsafe {
        on_agent(s, agent, |sc, id| {
            sc.set_agent_host(id, (host != 0).then_some(host))
        })
    })
}

/// Membership declared cluster member `host` dead (an `EMF_GOSSIP_EVENT_MEMBER_DOWN`):
/// every agent recorded on it (`emf_sched_set_agent_host`) is dead, as if
/// `emf_sched_agent_dead` were called for each, and their leased tasks are delivered again
/// elsewhere. `*out_n` (NULL: not wanted) gets the number of agents so removed.
///
/// # Safety
///
/// `s` a live handle; `out_n` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_host_down(
    s: *mut emf_sched_t,
    host: u64,
    now_us: u64,
    out_n: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(s) }?;
        let gone = h.sched.host_down(host, now_us);
        if !out_n.is_null() {
            // SAFETY: non-NULL; writable by contract.
            unsafe { write_out(out_n, gone.len(), "out_n") }?;
        }
        Ok(())
    })
}

/// Reports agent `agent`'s inbox lag (`lag_frames` frames written, not yet read) for the
/// back-pressure controller: above its high-water mark the agent gets no new task until a
/// reading at or below the low-water mark. `EMF_ERR_NOT_FOUND` when the agent is not
/// registered; `EMF_ERR_INVALID_ARGUMENT` when back-pressure is off.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_observe_lag(
    s: *mut emf_sched_t,
    agent: *const c_char,
    lag_frames: u64,
    now_us: u64,
) -> emf_status_t {
    // SAFETY: caller contract.
    guard(|| unsafe { on_agent(s, agent, |sc, id| sc.observe_lag(id, lag_frames, now_us)) })
}

/// Breaker state (`emf_sched_breaker_state`): closed, tasks flow.
pub const EMF_BREAKER_CLOSED: u32 = 0;
/// Breaker state: open, the agent gets no task.
pub const EMF_BREAKER_OPEN: u32 = 1;
/// Breaker state: half-open, a few probe tasks are admitted.
pub const EMF_BREAKER_HALF_OPEN: u32 = 2;

/// Agent `agent`'s circuit breaker state (`EMF_BREAKER_*`) into `*out_state`.
/// `EMF_ERR_NOT_FOUND` when the agent has no breaker (breakers off, or an unknown agent).
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `out_state` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_breaker_state(
    s: *mut emf_sched_t,
    agent: *const c_char,
    out_state: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out_state, "out_state")?;
        let id = agent_id(agent, "agent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let h = unsafe { borrow(s) }?;
        let st = h.sched.breaker_state(&id).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_NOT_FOUND,
                format!("agent {id} has no circuit breaker (breakers off, or not registered)"),
            )
        })?;
        let code = match st {
            BreakerState::Closed => EMF_BREAKER_CLOSED,
            BreakerState::Open { .. } => EMF_BREAKER_OPEN,
            BreakerState::HalfOpen { .. } => EMF_BREAKER_HALF_OPEN,
        };
        // SAFETY: checked writable above (non-NULL, caller contract).
        unsafe { write_out(out_state, code, "out_state") }
    })
}

/// Submits a task for an agent of type `agent_type` at priority `priority`
/// (`EMF_PRIORITY_*`) with a copy of `payload`. On `EMF_OK` the task is in the ledger (never
/// lost from then on) and `*out_task_id` holds its id (ids start at 1). `EMF_ERR_FULL` when
/// `max_queued` tasks wait already: back-pressure, the caller keeps its task and may retry.
///
/// # Safety
///
/// `s` a live handle; `agent_type` a NUL-terminated string; `payload` readable for `len`;
/// `out_task_id` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_submit(
    s: *mut emf_sched_t,
    agent_type: *const c_char,
    priority: u32,
    payload: *const u8,
    len: usize,
    now_us: u64,
    out_task_id: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_task_id, "out_task_id")?;
        let ty = self::agent_type(agent_type, "agent_type")?;
        let p = Priority::from_code(priority).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("priority {priority} is not one of EMF_PRIORITY_* (0..3)"),
            )
        })?;
        // SAFETY: caller contract.
        let data = unsafe { bytes(payload, len, "payload") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let id = unsafe { borrow(s) }?
            .sched
            .submit(&ty, p, data.to_vec(), now_us)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_task_id, id.0, "out_task_id") }
    })
}

/// Agent `agent` began attempt `attempt` of task `task` (it can no longer be stolen).
/// `*out_current` (when non-NULL) is 1, or 0 when that attempt is not leased to that agent any
/// more (revoked, released, ended: counted as a duplicate). `EMF_ERR_NOT_FOUND` when the agent
/// is not registered.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `out_current` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_started(
    s: *mut emf_sched_t,
    agent: *const c_char,
    task: u64,
    attempt: u32,
    now_us: u64,
    out_current: *mut c_int,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let current = unsafe {
            on_agent(s, agent, |sc, id| {
                sc.started(id, TaskId(task), attempt, now_us)
            })
        }?;
        if !out_current.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_current.write(c_int::from(current)) };
        }
        Ok(())
    })
}

/// A result (a copy of `result`) for attempt `attempt` of task `task` from agent `agent`. The
/// first result of a task completes it (a RESULT action follows); a later one is ignored:
/// `*out_duplicate` (when non-NULL) is then 1, else 0. A result from an agent that does not
/// hold the lease still completes a task not yet ended. `EMF_ERR_NOT_FOUND` for a task id never
/// handed out.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `result` readable for `len`;
/// `out_duplicate` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_ack(
    s: *mut emf_sched_t,
    agent: *const c_char,
    task: u64,
    attempt: u32,
    result: *const u8,
    len: usize,
    now_us: u64,
    out_duplicate: *mut c_int,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent, "agent")?;
        // SAFETY: caller contract.
        let data = unsafe { bytes(result, len, "result") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let outcome =
            unsafe { borrow(s) }?
                .sched
                .ack(&id, TaskId(task), attempt, data.to_vec(), now_us)?;
        if !out_duplicate.is_null() {
            let dup = outcome == engine::sched::AckOutcome::Duplicate;
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_duplicate.write(c_int::from(dup)) };
        }
        Ok(())
    })
}

/// Agent `agent` gives attempt `attempt` of task `task` back without a result, for `reason`
/// (NULL: none given): a failed attempt; the task is delivered again, elsewhere when possible,
/// or dead-lettered after `max_attempts`. `*out_current` (when non-NULL) is 1, or 0 when that
/// attempt was not leased to that agent (ignored, counted as a duplicate).
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `reason` NULL or one; `out_current`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_nack(
    s: *mut emf_sched_t,
    agent: *const c_char,
    task: u64,
    attempt: u32,
    reason: *const c_char,
    now_us: u64,
    out_current: *mut c_int,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent, "agent")?;
        let why = if reason.is_null() {
            "no reason given"
        } else {
            c_str(reason, "reason")?
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let current = unsafe { borrow(s) }?
            .sched
            .nack(&id, TaskId(task), attempt, why, now_us)?;
        if !out_current.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_current.write(c_int::from(current)) };
        }
        Ok(())
    })
}

/// Advances time to `now_us`: agents silent past the heartbeat timeout are declared dead,
/// expired leases are released, queued tasks are delivered. Call it regularly.
///
/// # Safety
///
/// `s` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_tick(s: *mut emf_sched_t, now_us: u64) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(s) }?.sched.tick(now_us);
        Ok(())
    })
}

/// Takes the next action to carry out, oldest first, into `*out` (`kind`
/// `EMF_SCHED_ACTION_NONE` when none is pending). The action's `agent` and `data` point into
/// the handle and stay valid until the next `emf_sched_poll_action` or `emf_sched_free` on it.
/// Its RESULT or DEAD_LETTER record is already durable when it is handed out; an action not
/// carried out (the host crashed) is not repeated, except that a recovered scheduler delivers
/// the tasks not ended again.
///
/// # Safety
///
/// `s` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_poll_action(
    s: *mut emf_sched_t,
    out: *mut emf_sched_action_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(s) }?;
        let state = &mut *h;
        state.polled_agent = None;
        state.polled = state.sched.poll_action();
        let mut a = emf_sched_action_t::NONE;
        let mut agent_c: Option<CString> = None;
        let mut set_agent = |id: &AgentId| -> FfiResult {
            // Agent ids hold no NUL (validated characters); checked anyway.
            agent_c = Some(CString::new(id.as_str()).map_err(|_| {
                FfiError::new(EMF_ERR_INVALID_ARGUMENT, "agent id holds a NUL byte")
            })?);
            Ok(())
        };
        let data = |d: &[u8]| {
            if d.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr()
            }
        };
        match &state.polled {
            None => {}
            Some(Action::Deliver {
                agent,
                task,
                attempt,
                payload,
                deadline,
            }) => {
                a.kind = EMF_SCHED_ACTION_DELIVER;
                a.task = task.0;
                a.attempt = *attempt;
                a.deadline_us = *deadline;
                a.data = data(&payload[..]);
                a.len = payload.len();
                set_agent(agent)?;
            }
            Some(Action::Revoke {
                agent,
                task,
                attempt,
            }) => {
                a.kind = EMF_SCHED_ACTION_REVOKE;
                a.task = task.0;
                a.attempt = *attempt;
                set_agent(agent)?;
            }
            Some(Action::Result { task, result }) => {
                a.kind = EMF_SCHED_ACTION_RESULT;
                a.task = task.0;
                a.data = data(&result[..]);
                a.len = result.len();
            }
            Some(Action::DeadLetter { task, reason }) => {
                a.kind = EMF_SCHED_ACTION_DEAD_LETTER;
                a.task = task.0;
                a.data = data(reason.as_bytes());
                a.len = reason.len();
            }
        }
        // The CString's bytes stay where they are when it moves into the state.
        if let Some(c) = &agent_c {
            a.agent = c.as_ptr();
        }
        state.polled_agent = agent_c;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, a, "out") }
    })
}

/// The agent the scheduler's strategy would give a task of type `agent_type` now, without
/// leasing anything (for hosts that route by themselves): its id is written into `buf` (at
/// most `cap - 1` bytes and a NUL) and its length (without the NUL) into `*out_len`.
/// `EMF_ERR_FULL` when no agent of the type has spare capacity (or none is registered);
/// `EMF_ERR_BUFFER_TOO_SMALL` when the id did not fit (`*out_len` says how long it is).
///
/// # Safety
///
/// `s` a live handle; `agent_type` a NUL-terminated string; `buf` writable for `cap` bytes
/// (NULL when `cap` is 0); `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_select_agent(
    s: *mut emf_sched_t,
    agent_type: *const c_char,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_len, "out_len")?;
        if buf.is_null() && cap > 0 {
            return Err(FfiError::null("buf"));
        }
        let ty = self::agent_type(agent_type, "agent_type")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let id = unsafe { borrow(s) }?
            .sched
            .select_agent(&ty)
            .ok_or_else(|| {
                FfiError::new(
                    EMF_ERR_FULL,
                    format!("no agent of type {} has spare capacity", ty.as_str()),
                )
            })?;
        let name = id.as_str().as_bytes();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_len, name.len(), "out_len") }?;
        if name.len() >= cap {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the agent id is {} bytes and a NUL, the buffer {cap}",
                    name.len()
                ),
            ));
        }
        // SAFETY: `buf` is non-NULL (cap > len ≥ 0 means cap ≥ 1) and writable for `cap` >
        // len bytes; the name is ours, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), name.len());
        }
        // SAFETY: len < cap: in bounds of the caller's buffer.
        let end = unsafe { buf.add(name.len()) };
        // SAFETY: `end` is in bounds (above) and writable by contract.
        unsafe { end.write(0) };
        Ok(())
    })
}

/// The C form of a scheduler's counters.
pub(crate) fn stats_of(st: &SchedulerStats) -> emf_sched_stats_t {
    emf_sched_stats_t {
        queued: st.queued as u64,
        leased: st.leased as u64,
        completed: st.completed,
        dead_lettered: st.dead_lettered,
        duplicates: st.duplicates,
        redeliveries: st.redeliveries,
        steals: st.steals,
        expired: st.expired,
        agents_dead: st.agents_dead,
        ledger_errors: st.ledger_errors,
        agents: st.agents as u64,
    }
}

/// Writes the scheduler's counters to `*out`.
///
/// # Safety
///
/// `s` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_stats(
    s: *mut emf_sched_t,
    out: *mut emf_sched_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let o = stats_of(&unsafe { borrow(s) }?.sched.stats());
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, o, "out") }
    })
}

/// The number of dead-lettered tasks of the handle, into `*out`. Dead letters are kept for the
/// handle's life, oldest first (those a recovered ledger held included), and only added to:
/// index `i` of `emf_sched_dead_letter_get` names the same one until `emf_sched_free`.
///
/// # Safety
///
/// `s` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_dead_letter_count(
    s: *mut emf_sched_t,
    out: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(s) }?.sched.dead_letters().len();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, n, "out") }
    })
}

/// Copies `len` bytes of `src` to `buf` (and a NUL after them when `nul`).
///
/// # Safety
///
/// `buf` writable for `len` (+ 1 with `nul`) bytes, not overlapping `src`.
unsafe fn copy_to(buf: *mut u8, src: &[u8], nul: bool) {
    if !src.is_empty() {
        // SAFETY: caller contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf, src.len()) };
    }
    if nul {
        // SAFETY: caller contract: `len + 1` bytes are writable, so `len` is in bounds.
        let end = unsafe { buf.add(src.len()) };
        // SAFETY: in bounds (above), writable by contract.
        unsafe { end.write(0) };
    }
}

/// Reads dead letter `index` (0 = the oldest; see `emf_sched_dead_letter_count`) without
/// removing it: its task id into `*out_task`, its reason (UTF-8) into `reason_buf` with a NUL
/// after it (`*out_reason_len`: its length without the NUL), its payload into `payload_buf`
/// (`*out_payload_len`: its length), and into `*out_has_payload` (when non-NULL) 1, or 0 when
/// the payload is unknown (a recovered, compacted ledger no longer held the task's `Accepted`
/// record; the payload length is then 0).
///
/// `*out_task` and both lengths are written whenever `index` exists; when a buffer is too
/// small (`reason_cap < reason length + 1`, `payload_cap < payload length`) the status is
/// `EMF_ERR_BUFFER_TOO_SMALL`, nothing is copied, and the caller retries with the lengths
/// reported (pass `NULL`, 0 to learn them first). Nothing is lost: dead letters stay until the
/// handle is freed. `EMF_ERR_NOT_FOUND` when `index` ≥ the count.
///
/// # Safety
///
/// `s` a live handle; `reason_buf` writable for `reason_cap` bytes (NULL when 0);
/// `payload_buf` writable for `payload_cap` bytes (NULL when 0); `out_task`, `out_reason_len`,
/// `out_payload_len` writable; `out_has_payload` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn emf_sched_dead_letter_get(
    s: *mut emf_sched_t,
    index: usize,
    out_task: *mut u64,
    reason_buf: *mut c_char,
    reason_cap: usize,
    out_reason_len: *mut usize,
    payload_buf: *mut u8,
    payload_cap: usize,
    out_payload_len: *mut usize,
    out_has_payload: *mut c_int,
) -> emf_status_t {
    guard(|| {
        require_out(out_task, "out_task")?;
        require_out(out_reason_len, "out_reason_len")?;
        require_out(out_payload_len, "out_payload_len")?;
        if reason_buf.is_null() && reason_cap > 0 {
            return Err(FfiError::null("reason_buf"));
        }
        if payload_buf.is_null() && payload_cap > 0 {
            return Err(FfiError::null("payload_buf"));
        }
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let h = unsafe { borrow(s) }?;
        let all = h.sched.dead_letters();
        let d = all.get(index).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_NOT_FOUND,
                format!("dead letter {index} of {}", all.len()),
            )
        })?;
        let reason = d.reason.as_bytes();
        let payload: &[u8] = d.spec.as_ref().map_or(&[], |t| &t.payload[..]);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_task, d.task.0, "out_task") }?;
        // SAFETY: as above.
        unsafe { write_out(out_reason_len, reason.len(), "out_reason_len") }?;
        // SAFETY: as above.
        unsafe { write_out(out_payload_len, payload.len(), "out_payload_len") }?;
        if !out_has_payload.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_has_payload.write(c_int::from(d.spec.is_some())) };
        }
        if reason.len() >= reason_cap || payload.len() > payload_cap {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "dead letter {index}: the reason needs {} bytes (with its NUL), the payload \
                     {}; the buffers have {reason_cap} and {payload_cap}",
                    reason.len() + 1,
                    payload.len()
                ),
            ));
        }
        // SAFETY: `reason_buf` is non-NULL (cap > len ≥ 0) and writable for `reason_cap` >
        // `reason.len()` bytes; our bytes do not overlap the caller's buffer.
        unsafe { copy_to(reason_buf.cast::<u8>(), reason, true) };
        // SAFETY: `payload_buf` is writable for `payload_cap` ≥ `payload.len()` bytes and
        // only touched when the payload is not empty (so non-NULL then); no overlap.
        unsafe { copy_to(payload_buf, payload, false) };
        Ok(())
    })
}

/// Writes agent `agent`'s load to `*out`: the tasks it holds (leases, so the scheduler's own
/// count, not a figure the host sets), its capacity and latency average. `EMF_ERR_NOT_FOUND`
/// when it is not registered.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_agent_load(
    s: *mut emf_sched_t,
    agent: *const c_char,
    out: *mut emf_sched_agent_load_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let id = agent_id(agent, "agent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let load = unsafe { borrow(s) }?.sched.agent_load(&id).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_NOT_FOUND,
                format!("agent {} is not registered", id.as_str()),
            )
        })?;
        let o = emf_sched_agent_load_t {
            current_tasks: load.current_tasks,
            backlog: load.backlog,
            max_tasks: load.max_tasks,
            latency_us: load.latency_us,
            last_heartbeat_us: load.last_heartbeat,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, o, "out") }
    })
}

/// Writes into `*out` how many tasks of type `agent_type` wait in the queue (every priority;
/// 0 for a type never seen): the demand a pool manager of that type reads.
///
/// # Safety
///
/// `s` a live handle; `agent_type` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_sched_queued(
    s: *mut emf_sched_t,
    agent_type: *const c_char,
    out: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let ty = self::agent_type(agent_type, "agent_type")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(s) }?.sched.queued_of(&ty);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, n, "out") }
    })
}

#[cfg(test)]
// Tests drive the C ABI the way C does: several calls per unsafe block read better.
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests {
    use super::*;
    use crate::codec::{EMF_PRIORITY_HIGH, EMF_PRIORITY_NORMAL};
    use crate::{EMF_ERR_BUSY, EMF_ERR_NULL_ARGUMENT, EMF_ERR_TOO_LARGE, EMF_OK};
    use std::ffi::CStr;
    use std::ptr::{null, null_mut};

    /// An action copied out of the handle.
    #[derive(Debug, PartialEq)]
    struct Polled {
        kind: u32,
        agent: Option<String>,
        task: u64,
        attempt: u32,
        deadline_us: u64,
        data: Vec<u8>,
    }

    fn poll(s: *mut emf_sched_t) -> Polled {
        let mut a = emf_sched_action_t::NONE;
        // SAFETY: a live handle and a writable out-parameter; the pointers read are valid
        // until the next poll.
        unsafe {
            assert_eq!(emf_sched_poll_action(s, &mut a), EMF_OK);
            Polled {
                kind: a.kind,
                agent: (!a.agent.is_null())
                    .then(|| CStr::from_ptr(a.agent).to_str().unwrap().to_owned()),
                task: a.task,
                attempt: a.attempt,
                deadline_us: a.deadline_us,
                data: if a.len == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(a.data, a.len).to_vec()
                },
            }
        }
    }

    fn new_mem(opts: Option<&emf_sched_options_t>) -> *mut emf_sched_t {
        let mut s = null_mut();
        // SAFETY: valid arguments.
        let st = unsafe {
            emf_sched_new(
                opts.map_or(null(), |o| o as *const _),
                EMF_LEDGER_MEMORY,
                null(),
                null(),
                0,
                &mut s,
            )
        };
        assert_eq!(st, EMF_OK);
        s
    }

    fn stats(s: *mut emf_sched_t) -> emf_sched_stats_t {
        let mut st = emf_sched_stats_t::default();
        // SAFETY: live handle, writable out-parameter.
        assert_eq!(unsafe { emf_sched_stats(s, &mut st) }, EMF_OK);
        st
    }

    #[test]
    fn agent_load_and_queued_count_and_refuse_bad_input() {
        let s = new_mem(None);
        // SAFETY: a live handle and valid arguments unless a test says otherwise; freed once.
        unsafe {
            let mut l = emf_sched_agent_load_t::default();
            assert_eq!(
                emf_sched_agent_load(s, c"a1".as_ptr(), &mut l),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(
                emf_sched_register_agent(s, c"a1".as_ptr(), c"t".as_ptr(), 3, 0, 1, 5),
                EMF_OK
            );
            let mut id = 0;
            for _ in 0..2 {
                assert_eq!(
                    emf_sched_submit(s, c"t".as_ptr(), EMF_PRIORITY_NORMAL, null(), 0, 6, &mut id),
                    EMF_OK
                );
            }
            assert_eq!(emf_sched_agent_load(s, c"a1".as_ptr(), &mut l), EMF_OK);
            assert_eq!((l.current_tasks, l.backlog, l.max_tasks), (2, 2, 3));
            assert_eq!((l.latency_us, l.last_heartbeat_us), (0, 5));
            assert_eq!(
                emf_sched_started(s, c"a1".as_ptr(), 1, 1, 7, null_mut()),
                EMF_OK
            );
            assert_eq!(emf_sched_agent_load(s, c"a1".as_ptr(), &mut l), EMF_OK);
            assert_eq!((l.current_tasks, l.backlog), (2, 1));
            let mut q = 9usize;
            assert_eq!(emf_sched_queued(s, c"t".as_ptr(), &mut q), EMF_OK);
            assert_eq!(q, 0, "both leased");
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), EMF_PRIORITY_NORMAL, null(), 0, 8, &mut id),
                EMF_OK
            );
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), EMF_PRIORITY_HIGH, null(), 0, 8, &mut id),
                EMF_OK
            );
            assert_eq!(emf_sched_queued(s, c"t".as_ptr(), &mut q), EMF_OK);
            assert_eq!(q, 1, "one more fits the capacity of 3");
            assert_eq!(emf_sched_queued(s, c"other".as_ptr(), &mut q), EMF_OK);
            assert_eq!(q, 0);
            assert_eq!(
                emf_sched_queued(s, c"t".as_ptr(), null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(emf_sched_queued(s, null(), &mut q), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_agent_load(s, c"a1".as_ptr(), null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_agent_load(s, null(), &mut l),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_agent_load(s, c"..".as_ptr(), &mut l),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            assert_ne!(emf_sched_agent_load(s, c"a1".as_ptr(), &mut l), EMF_OK);
        }
    }

    #[test]
    fn host_down_removes_the_agents_of_that_host() {
        let s = new_mem(None);
        // SAFETY: a live handle and valid arguments unless a test says otherwise; freed once.
        unsafe {
            for a in [c"a1", c"a2", c"a3"] {
                assert_eq!(
                    emf_sched_register_agent(s, a.as_ptr(), c"t".as_ptr(), 3, 0, 1, 5),
                    EMF_OK
                );
            }
            assert_eq!(emf_sched_set_agent_host(s, c"a1".as_ptr(), 7), EMF_OK);
            assert_eq!(emf_sched_set_agent_host(s, c"a2".as_ptr(), 7), EMF_OK);
            assert_eq!(emf_sched_set_agent_host(s, c"a3".as_ptr(), 8), EMF_OK);
            // Back to no host: not taken down with host 7.
            assert_eq!(emf_sched_set_agent_host(s, c"a2".as_ptr(), 0), EMF_OK);
            assert_eq!(
                emf_sched_set_agent_host(s, c"nobody".as_ptr(), 7),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(
                emf_sched_set_agent_host(s, null(), 7),
                EMF_ERR_NULL_ARGUMENT
            );
            let mut n = 9usize;
            assert_eq!(emf_sched_host_down(s, 7, 10, &mut n), EMF_OK);
            assert_eq!(n, 1);
            let mut l = emf_sched_agent_load_t::default();
            assert_eq!(
                emf_sched_agent_load(s, c"a1".as_ptr(), &mut l),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(emf_sched_agent_load(s, c"a2".as_ptr(), &mut l), EMF_OK);
            assert_eq!(emf_sched_host_down(s, 9, 11, &mut n), EMF_OK);
            assert_eq!(n, 0);
            assert_eq!(emf_sched_host_down(s, 8, 12, null_mut()), EMF_OK);
            assert_eq!(
                emf_sched_agent_load(s, c"a3".as_ptr(), &mut l),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            assert_ne!(emf_sched_host_down(s, 8, 12, null_mut()), EMF_OK);
        }
    }

    #[test]
    fn a_full_cycle_register_submit_deliver_ack_result() {
        let s = new_mem(None);
        // SAFETY: a live handle and valid arguments throughout; freed once at the end.
        unsafe {
            assert_eq!(
                emf_sched_register_agent(s, c"a1".as_ptr(), c"coder".as_ptr(), 2, 0, 7, 10),
                EMF_OK
            );
            let mut id = 0;
            assert_eq!(
                emf_sched_submit(
                    s,
                    c"coder".as_ptr(),
                    EMF_PRIORITY_NORMAL,
                    b"job".as_ptr(),
                    3,
                    20,
                    &mut id
                ),
                EMF_OK
            );
            assert_eq!(id, 1);
            let d = poll(s);
            assert_eq!(
                (d.kind, d.agent.as_deref(), d.task, d.attempt, &d.data[..]),
                (EMF_SCHED_ACTION_DELIVER, Some("a1"), 1, 1, &b"job"[..])
            );
            // The default lease before any observation: 10 s.
            assert_eq!(d.deadline_us, 20 + 10_000_000);
            let mut current = 9;
            assert_eq!(
                emf_sched_started(s, c"a1".as_ptr(), 1, 1, 30, &mut current),
                EMF_OK
            );
            assert_eq!(current, 1);
            assert_eq!(
                emf_sched_started(s, c"a1".as_ptr(), 1, 2, 30, &mut current),
                EMF_OK
            );
            assert_eq!(current, 0, "attempt 2 was never leased");
            let mut dup = 9;
            assert_eq!(
                emf_sched_ack(s, c"a1".as_ptr(), 1, 1, b"done".as_ptr(), 4, 40, &mut dup),
                EMF_OK
            );
            assert_eq!(dup, 0);
            let r = poll(s);
            assert_eq!(
                (r.kind, r.agent, r.task, &r.data[..]),
                (EMF_SCHED_ACTION_RESULT, None, 1, &b"done"[..])
            );
            assert_eq!(poll(s).kind, EMF_SCHED_ACTION_NONE);
            // A second result is a duplicate; an empty result is fine.
            assert_eq!(
                emf_sched_ack(s, c"a1".as_ptr(), 1, 1, null(), 0, 41, &mut dup),
                EMF_OK
            );
            assert_eq!(dup, 1);
            assert_eq!(poll(s).kind, EMF_SCHED_ACTION_NONE);
            assert_eq!(
                emf_sched_ack(s, c"a1".as_ptr(), 99, 1, null(), 0, 41, null_mut()),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(emf_sched_heartbeat(s, c"a1".as_ptr(), 50), EMF_OK);
            assert_eq!(emf_sched_tick(s, 60), EMF_OK);
            // Selection, and its buffer rules.
            let mut buf = [0 as c_char; 8];
            let mut n = 0;
            assert_eq!(
                emf_sched_select_agent(s, c"coder".as_ptr(), buf.as_mut_ptr(), 8, &mut n),
                EMF_OK
            );
            assert_eq!(
                (n, CStr::from_ptr(buf.as_ptr()).to_str().unwrap()),
                (2, "a1")
            );
            assert_eq!(
                emf_sched_select_agent(s, c"coder".as_ptr(), buf.as_mut_ptr(), 2, &mut n),
                EMF_ERR_BUFFER_TOO_SMALL
            );
            assert_eq!(n, 2);
            assert_eq!(
                emf_sched_select_agent(s, c"coder".as_ptr(), null_mut(), 0, &mut n),
                EMF_ERR_BUFFER_TOO_SMALL
            );
            assert_eq!(
                emf_sched_select_agent(s, c"tester".as_ptr(), buf.as_mut_ptr(), 8, &mut n),
                EMF_ERR_FULL
            );
            let st = stats(s);
            assert_eq!(
                (st.completed, st.duplicates, st.agents, st.queued, st.leased),
                (1, 2, 1, 0, 0)
            );
            assert_eq!(emf_sched_unregister_agent(s, c"a1".as_ptr(), 70), EMF_OK);
            assert_eq!(
                emf_sched_unregister_agent(s, c"a1".as_ptr(), 70),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(
                emf_sched_heartbeat(s, c"a1".as_ptr(), 80),
                EMF_ERR_NOT_FOUND
            );
            // Full agents: no capacity is FULL as well.
            assert_eq!(
                emf_sched_register_agent(s, c"a2".as_ptr(), c"coder".as_ptr(), 1, 0, 1, 90),
                EMF_OK
            );
            assert_eq!(
                emf_sched_submit(
                    s,
                    c"coder".as_ptr(),
                    EMF_PRIORITY_HIGH,
                    null(),
                    0,
                    91,
                    &mut id
                ),
                EMF_OK
            );
            assert_eq!(id, 2);
            assert_eq!(
                emf_sched_select_agent(s, c"coder".as_ptr(), buf.as_mut_ptr(), 8, &mut n),
                EMF_ERR_FULL
            );
            let d = poll(s);
            assert_eq!(
                (d.kind, d.task, d.data.len()),
                (EMF_SCHED_ACTION_DELIVER, 2, 0)
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            assert_eq!(emf_sched_free(s), EMF_ERR_INVALID_ARGUMENT);
        }
    }

    #[test]
    fn back_pressure_is_full_and_refusals_dead_letter() {
        let mut o = options_default();
        o.max_queued = 1;
        o.max_attempts = 1;
        let s = new_mem(Some(&o));
        // SAFETY: a live handle and valid arguments throughout; freed once at the end.
        unsafe {
            let mut id = 0;
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), 2, b"x".as_ptr(), 1, 0, &mut id),
                EMF_OK
            );
            id = 77;
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), 2, b"y".as_ptr(), 1, 0, &mut id),
                EMF_ERR_FULL
            );
            assert_eq!(id, 77, "out-parameters are written only on success");
            assert_eq!(
                emf_sched_register_agent(s, c"w".as_ptr(), c"t".as_ptr(), 1, 0, 1, 1),
                EMF_OK
            );
            let d = poll(s);
            assert_eq!((d.kind, d.task), (EMF_SCHED_ACTION_DELIVER, 1));
            let mut current = 9;
            assert_eq!(
                emf_sched_nack(s, c"w".as_ptr(), 1, 1, c"no".as_ptr(), 2, &mut current),
                EMF_OK
            );
            assert_eq!(current, 1);
            let dl = poll(s);
            assert_eq!((dl.kind, dl.task), (EMF_SCHED_ACTION_DEAD_LETTER, 1));
            let reason = String::from_utf8(dl.data).unwrap();
            assert!(reason.ends_with("refused by agent w: no"), "{reason}");
            assert_eq!(
                emf_sched_nack(s, c"w".as_ptr(), 1, 1, null(), 3, &mut current),
                EMF_OK
            );
            assert_eq!(current, 0);
            assert_eq!(stats(s).dead_lettered, 1);
            assert_eq!(emf_sched_free(s), EMF_OK);
        }
    }

    #[test]
    fn dead_letters_are_read_with_their_payloads_and_buffer_sizes_are_reported() {
        let mut o = options_default();
        o.max_attempts = 1;
        let s = new_mem(Some(&o));
        // SAFETY: a live handle and valid arguments throughout; freed once at the end.
        unsafe {
            let mut n = 9;
            assert_eq!(emf_sched_dead_letter_count(s, &mut n), EMF_OK);
            assert_eq!(n, 0);
            assert_eq!(
                emf_sched_register_agent(s, c"w".as_ptr(), c"t".as_ptr(), 2, 0, 1, 1),
                EMF_OK
            );
            let mut id = 0;
            for p in [&b"first"[..], &b""[..]] {
                assert_eq!(
                    emf_sched_submit(s, c"t".as_ptr(), 2, p.as_ptr(), p.len(), 2, &mut id),
                    EMF_OK
                );
            }
            for task in 1..=2 {
                let d = poll(s);
                assert_eq!((d.kind, d.task), (EMF_SCHED_ACTION_DELIVER, task));
            }
            for task in 1..=2 {
                assert_eq!(
                    emf_sched_nack(s, c"w".as_ptr(), task, 1, c"bad".as_ptr(), 3, null_mut()),
                    EMF_OK
                );
                assert_eq!(poll(s).kind, EMF_SCHED_ACTION_DEAD_LETTER);
            }
            assert_eq!(emf_sched_dead_letter_count(s, &mut n), EMF_OK);
            assert_eq!(n, 2);
            // Lengths first (NULL buffers), then too small, then enough.
            let (mut task, mut rlen, mut plen, mut has) = (0u64, 0usize, 0usize, 9);
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    &mut task,
                    null_mut(),
                    0,
                    &mut rlen,
                    null_mut(),
                    0,
                    &mut plen,
                    &mut has
                ),
                EMF_ERR_BUFFER_TOO_SMALL
            );
            assert_eq!((task, plen, has), (1, 5, 1));
            let mut reason = vec![0 as c_char; rlen + 1];
            let mut payload = vec![0u8; plen];
            // The reason without room for its NUL: too small, nothing copied.
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    &mut task,
                    reason.as_mut_ptr(),
                    rlen,
                    &mut rlen,
                    payload.as_mut_ptr(),
                    plen,
                    &mut plen,
                    null_mut()
                ),
                EMF_ERR_BUFFER_TOO_SMALL
            );
            assert!(reason.iter().all(|&c| c == 0) && payload.iter().all(|&b| b == 0));
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    &mut task,
                    reason.as_mut_ptr(),
                    rlen + 1,
                    &mut rlen,
                    payload.as_mut_ptr(),
                    plen - 1,
                    &mut plen,
                    null_mut()
                ),
                EMF_ERR_BUFFER_TOO_SMALL,
                "the payload does not fit"
            );
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    &mut task,
                    reason.as_mut_ptr(),
                    rlen + 1,
                    &mut rlen,
                    payload.as_mut_ptr(),
                    plen,
                    &mut plen,
                    &mut has
                ),
                EMF_OK
            );
            let text = CStr::from_ptr(reason.as_ptr()).to_str().unwrap();
            assert_eq!(text.len(), rlen);
            assert!(text.ends_with("refused by agent w: bad"), "{text}");
            assert_eq!(&payload[..], b"first");
            // Reading does not remove: the same again; the second has an empty payload.
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    1,
                    &mut task,
                    reason.as_mut_ptr(),
                    rlen + 1,
                    &mut rlen,
                    null_mut(),
                    0,
                    &mut plen,
                    &mut has
                ),
                EMF_OK
            );
            assert_eq!((task, plen, has), (2, 0, 1));
            assert_eq!(emf_sched_dead_letter_count(s, &mut n), EMF_OK);
            assert_eq!(n, 2);
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    2,
                    &mut task,
                    null_mut(),
                    0,
                    &mut rlen,
                    null_mut(),
                    0,
                    &mut plen,
                    &mut has
                ),
                EMF_ERR_NOT_FOUND
            );
            // Argument errors.
            assert_eq!(
                emf_sched_dead_letter_count(s, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    &mut task,
                    null_mut(),
                    4,
                    &mut rlen,
                    null_mut(),
                    0,
                    &mut plen,
                    &mut has
                ),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_dead_letter_get(
                    s,
                    0,
                    null_mut(),
                    null_mut(),
                    0,
                    &mut rlen,
                    null_mut(),
                    0,
                    &mut plen,
                    &mut has
                ),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            assert_eq!(
                emf_sched_dead_letter_count(s, &mut n),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_dead_letter_count(null_mut(), &mut n),
                EMF_ERR_NULL_ARGUMENT
            );
        }
    }

    #[test]
    fn a_dead_agents_task_is_delivered_again_and_its_late_result_is_a_duplicate() {
        let s = new_mem(None);
        // SAFETY: a live handle and valid arguments throughout; freed once at the end.
        unsafe {
            for a in [c"a", c"b"] {
                assert_eq!(
                    emf_sched_register_agent(s, a.as_ptr(), c"t".as_ptr(), 1, 0, 1, 0),
                    EMF_OK
                );
            }
            let mut id = 0;
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), 0, b"p".as_ptr(), 1, 1, &mut id),
                EMF_OK
            );
            let first = poll(s);
            assert_eq!(first.kind, EMF_SCHED_ACTION_DELIVER);
            let victim = CString::new(first.agent.clone().unwrap()).unwrap();
            assert_eq!(emf_sched_agent_dead(s, victim.as_ptr(), 2), EMF_OK);
            assert_eq!(
                emf_sched_agent_dead(s, victim.as_ptr(), 2),
                EMF_ERR_NOT_FOUND
            );
            let again = poll(s);
            assert_eq!(
                (again.kind, again.task, again.attempt),
                (EMF_SCHED_ACTION_DELIVER, id, 2)
            );
            assert_ne!(again.agent, first.agent);
            let other = CString::new(again.agent.unwrap()).unwrap();
            let mut dup = 9;
            assert_eq!(
                emf_sched_ack(s, other.as_ptr(), id, 2, b"r2".as_ptr(), 2, 3, &mut dup),
                EMF_OK
            );
            assert_eq!(dup, 0);
            assert_eq!(
                emf_sched_ack(s, victim.as_ptr(), id, 1, b"r1".as_ptr(), 2, 4, &mut dup),
                EMF_OK
            );
            assert_eq!(dup, 1);
            let r = poll(s);
            assert_eq!((r.kind, &r.data[..]), (EMF_SCHED_ACTION_RESULT, &b"r2"[..]));
            assert_eq!(poll(s).kind, EMF_SCHED_ACTION_NONE);
            let st = stats(s);
            assert_eq!(
                (st.agents_dead, st.redeliveries, st.completed, st.duplicates),
                (1, 1, 1, 1)
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
        }
    }

    #[test]
    fn a_file_ledger_is_recovered_after_free_and_new() {
        let dir = std::env::temp_dir().join(format!("emf-capi-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = CString::new(dir.join("ledger").to_str().unwrap()).unwrap();
        let mut s = null_mut();
        // SAFETY: valid arguments; each handle freed once.
        unsafe {
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_FILE, path.as_ptr(), null(), 0, &mut s),
                EMF_OK
            );
            let mut ids = Vec::new();
            for p in [&b"one"[..], b"two", b"three"] {
                let mut id = 0;
                assert_eq!(
                    emf_sched_submit(s, c"t".as_ptr(), 2, p.as_ptr(), p.len(), 1, &mut id),
                    EMF_OK
                );
                ids.push(id);
            }
            assert_eq!(
                emf_sched_register_agent(s, c"w".as_ptr(), c"t".as_ptr(), 1, 0, 1, 2),
                EMF_OK
            );
            let d = poll(s);
            assert_eq!((d.kind, d.task), (EMF_SCHED_ACTION_DELIVER, ids[0]));
            assert_eq!(
                emf_sched_ack(s, c"w".as_ptr(), ids[0], 1, b"r".as_ptr(), 1, 3, null_mut()),
                EMF_OK
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            // A second scheduler over the same file: the two tasks not ended come back.
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_FILE, path.as_ptr(), null(), 10, &mut s),
                EMF_OK
            );
            let st = stats(s);
            assert_eq!((st.queued, st.completed, st.agents), (2, 1, 0));
            // The agent must register again.
            assert_eq!(emf_sched_heartbeat(s, c"w".as_ptr(), 11), EMF_ERR_NOT_FOUND);
            assert_eq!(
                emf_sched_register_agent(s, c"w".as_ptr(), c"t".as_ptr(), 5, 0, 1, 12),
                EMF_OK
            );
            let mut got = Vec::new();
            loop {
                let a = poll(s);
                if a.kind == EMF_SCHED_ACTION_NONE {
                    break;
                }
                assert_eq!(a.kind, EMF_SCHED_ACTION_DELIVER);
                got.push((a.task, a.data));
            }
            assert_eq!(
                got,
                vec![(ids[1], b"two".to_vec()), (ids[2], b"three".to_vec())]
            );
            let mut id = 0;
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), 2, null(), 0, 13, &mut id),
                EMF_OK
            );
            assert_eq!(id, ids[2] + 1, "ids are never reused");
            assert_eq!(emf_sched_free(s), EMF_OK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_shm_ledger_is_recovered_and_its_live_owner_is_busy() {
        let dir = std::env::temp_dir().join(format!("emf-capi-sched-shm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = CString::new(dir.to_str().unwrap()).unwrap();
        let mut o = options_default();
        o.shm_capacity = 1 << 16;
        let (mut s, mut s2) = (null_mut(), null_mut());
        // SAFETY: valid arguments; each handle freed once.
        unsafe {
            assert_eq!(
                emf_sched_new(
                    &o,
                    EMF_LEDGER_SHM,
                    c"led".as_ptr(),
                    cdir.as_ptr(),
                    0,
                    &mut s
                ),
                EMF_OK
            );
            assert_eq!(
                emf_sched_new(
                    &o,
                    EMF_LEDGER_SHM,
                    c"led".as_ptr(),
                    cdir.as_ptr(),
                    0,
                    &mut s2
                ),
                EMF_ERR_BUSY
            );
            let mut id = 0;
            assert_eq!(
                emf_sched_submit(s, c"t".as_ptr(), 1, b"p".as_ptr(), 1, 1, &mut id),
                EMF_OK
            );
            assert_eq!(emf_sched_free(s), EMF_OK);
            assert_eq!(
                emf_sched_new(
                    &o,
                    EMF_LEDGER_SHM,
                    c"led".as_ptr(),
                    cdir.as_ptr(),
                    5,
                    &mut s
                ),
                EMF_OK
            );
            assert_eq!(stats(s).queued, 1);
            assert_eq!(emf_sched_free(s), EMF_OK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nulls_bad_names_bad_options_and_freed_handles_are_statuses() {
        let s = new_mem(None);
        let mut id = 0u64;
        let mut n = 0usize;
        let mut a = emf_sched_action_t::NONE;
        let mut st = emf_sched_stats_t::default();
        let mut buf = [0 as c_char; 4];
        let bad = c"../x";
        let nul = null::<c_char>();
        // SAFETY: every pointer is NULL, a valid string or a valid out-parameter.
        unsafe {
            // NULL out-parameters and options.
            assert_eq!(emf_sched_options_default(null_mut()), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_MEMORY, nul, nul, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            let mut h = null_mut();
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_FILE, nul, nul, 0, &mut h),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_SHM, nul, nul, 0, &mut h),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_new(null(), 3, nul, nul, 0, &mut h),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_MEMORY, c"x".as_ptr(), nul, 0, &mut h),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_new(
                    null(),
                    EMF_LEDGER_FILE,
                    c"/tmp/x".as_ptr(),
                    c"/tmp".as_ptr(),
                    0,
                    &mut h
                ),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_new(null(), EMF_LEDGER_SHM, bad.as_ptr(), nul, 0, &mut h),
                EMF_ERR_INVALID_ARGUMENT
            );
            for tweak in [
                (|o: &mut emf_sched_options_t| o.max_queued = 0) as fn(&mut emf_sched_options_t),
                |o| o.max_attempts = 0,
                |o| o.lease_factor = f64::NAN,
                |o| o.min_lease_us = 0,
                |o| o.default_lease_us = o.max_lease_us + 1,
                |o| o.latency_window = 0,
                |o| o.ewma_alpha = 1.5,
                |o| o.strategy = 3,
            ] {
                let mut o = options_default();
                tweak(&mut o);
                assert_eq!(
                    emf_sched_new(&o, EMF_LEDGER_MEMORY, nul, nul, 0, &mut h),
                    EMF_ERR_INVALID_ARGUMENT
                );
            }
            let mut o = options_default();
            o.strategy = EMF_SCHED_POWER_OF_TWO;
            o.heartbeat_timeout_us = 0;
            assert_eq!(
                emf_sched_new(&o, EMF_LEDGER_MEMORY, nul, nul, 0, &mut h),
                EMF_OK
            );
            assert_eq!(emf_sched_free(h), EMF_OK);
            assert_eq!(emf_sched_free(null_mut()), EMF_OK);

            // NULL strings and bad names, on a live handle.
            let t = c"t".as_ptr();
            assert_eq!(
                emf_sched_register_agent(s, nul, t, 1, 0, 0, 0),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_register_agent(s, bad.as_ptr(), t, 1, 0, 0, 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_register_agent(s, c"a".as_ptr(), nul, 1, 0, 0, 0),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_register_agent(s, c"a".as_ptr(), c"".as_ptr(), 1, 0, 0, 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_register_agent(s, c"a".as_ptr(), c"\xff\xfe".as_ptr(), 1, 0, 0, 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_sched_unregister_agent(s, nul, 0), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_unregister_agent(s, bad.as_ptr(), 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_sched_heartbeat(s, nul, 0), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_heartbeat(s, bad.as_ptr(), 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_sched_agent_dead(s, nul, 0), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_agent_dead(s, bad.as_ptr(), 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_submit(s, nul, 0, null(), 0, 0, &mut id),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_submit(s, t, 0, null(), 0, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_submit(s, t, 0, null(), 1, 0, &mut id),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_submit(s, t, 0, b"x".as_ptr(), usize::MAX, 0, &mut id),
                EMF_ERR_TOO_LARGE
            );
            assert_eq!(
                emf_sched_submit(s, t, 4, null(), 0, 0, &mut id),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_submit(s, c"".as_ptr(), 0, null(), 0, 0, &mut id),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_started(s, nul, 1, 1, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_started(s, c"nobody".as_ptr(), 1, 1, 0, null_mut()),
                EMF_ERR_NOT_FOUND
            );
            assert_eq!(
                emf_sched_ack(s, nul, 1, 1, null(), 0, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_ack(s, c"a".as_ptr(), 1, 1, null(), 2, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_ack(s, bad.as_ptr(), 1, 1, null(), 0, 0, null_mut()),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_sched_nack(s, nul, 1, 1, nul, 0, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_nack(s, c"a".as_ptr(), 1, 1, c"\xff\xfe".as_ptr(), 0, null_mut()),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_sched_poll_action(s, null_mut()), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_sched_select_agent(s, t, buf.as_mut_ptr(), 4, null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_select_agent(s, t, null_mut(), 4, &mut n),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_sched_select_agent(s, nul, buf.as_mut_ptr(), 4, &mut n),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(emf_sched_stats(s, null_mut()), EMF_ERR_NULL_ARGUMENT);

            // A NULL handle, then a freed one: every function answers with a status.
            for h in [null_mut(), s] {
                let want = if h.is_null() {
                    EMF_ERR_NULL_ARGUMENT
                } else {
                    assert_eq!(emf_sched_free(s), EMF_OK);
                    EMF_ERR_INVALID_ARGUMENT
                };
                let a1 = c"a".as_ptr();
                assert_eq!(emf_sched_register_agent(h, a1, t, 1, 0, 0, 0), want);
                assert_eq!(emf_sched_unregister_agent(h, a1, 0), want);
                assert_eq!(emf_sched_heartbeat(h, a1, 0), want);
                assert_eq!(emf_sched_agent_dead(h, a1, 0), want);
                assert_eq!(emf_sched_submit(h, t, 0, null(), 0, 0, &mut id), want);
                assert_eq!(emf_sched_started(h, a1, 1, 1, 0, null_mut()), want);
                assert_eq!(emf_sched_ack(h, a1, 1, 1, null(), 0, 0, null_mut()), want);
                assert_eq!(emf_sched_nack(h, a1, 1, 1, nul, 0, null_mut()), want);
                assert_eq!(emf_sched_tick(h, 0), want);
                assert_eq!(emf_sched_poll_action(h, &mut a), want);
                assert_eq!(
                    emf_sched_select_agent(h, t, buf.as_mut_ptr(), 4, &mut n),
                    want
                );
                assert_eq!(emf_sched_stats(h, &mut st), want);
            }
            assert_eq!(emf_sched_free(s), EMF_ERR_INVALID_ARGUMENT);
        }
    }
}
