//! The scheduler: a state machine without I/O that turns submitted tasks into leases on agents
//! and results back to submitters, and never loses an accepted task.
//!
//! The host feeds it events, each with a clock reading `now` ([`Scheduler::submit`],
//! [`Scheduler::register_agent`], [`Scheduler::heartbeat`], [`Scheduler::agent_dead`],
//! [`Scheduler::started`], [`Scheduler::ack`], [`Scheduler::nack`], [`Scheduler::tick`]) and
//! carries out the [`Action`]s it takes from [`Scheduler::poll_action`]: write a task to an
//! agent's inbox ([`Action::Deliver`]), tell an agent to drop a task ([`Action::Revoke`]), hand a
//! result to its submitter ([`Action::Result`]), report a dead letter ([`Action::DeadLetter`]).
//!
//! # The rules
//!
//! * **Write-ahead.** Every state change that matters after a crash is appended to the
//!   [`Ledger`] before it takes effect and before its action is emitted: `Accepted` before
//!   [`Scheduler::submit`] returns the id, `Leased` before the `Deliver`, `Completed` before the
//!   `Result`, `DeadLettered` before the `DeadLetter`. An accepted task is never lost.
//! * **Back-pressure.** At most [`SchedulerConfig::max_queued`] tasks wait in the queue; beyond
//!   that `submit` fails with [`ErrorKind::Full`] and the caller keeps its task. Tasks put back
//!   in the queue (released leases) are never refused, so the bound may be passed by them.
//! * **Priority lanes.** Queued tasks wait per agent type in one lane per [`Priority`]: a
//!   critical task is delivered before every lower one of its type; FIFO within a lane. A task
//!   whose type has no agent (yet) waits for one.
//! * **Leases.** A delivery carries a deadline: `now` + the type's lease length, which is the
//!   p95 of the type's last [`SchedulerConfig::latency_window`] delivery-to-ack latencies
//!   (recomputed after each sample until the window is full, then every `latency_window / 8`
//!   samples) × [`SchedulerConfig::lease_factor`], clamped to `[min_lease, max_lease]`
//!   ([`SchedulerConfig::default_lease`] before any observation). [`Scheduler::tick`] releases
//!   expired leases; a dead agent's leases (reported by [`Scheduler::agent_dead`], or
//!   [`SchedulerConfig::heartbeat_timeout`] without a heartbeat) and those of an unregistered
//!   agent are released at once; [`Scheduler::nack`] releases one early. A released task goes
//!   back to the front of its lane, and to another agent than the one it was released from when
//!   another of its type has capacity.
//! * **Dead letters.** Every release counts as a failed attempt (a steal does not: it is the
//!   scheduler's choice, not a failure). A task released [`SchedulerConfig::max_attempts`] times
//!   is dead-lettered: reported by an action and kept in [`Scheduler::dead_letters`], never
//!   dropped.
//! * **Exactly one effect.** The first result for a task wins; every later one (the first agent
//!   of a redelivered task answering late, a duplicated message) is counted in
//!   [`SchedulerStats::duplicates`] and ignored. A result from an agent that does not hold the
//!   task's lease (an old attempt, an agent declared dead, an agent not re-registered after a
//!   scheduler restart) still completes the task when it has not ended: the work was done. The
//!   current holder, if any, is then sent a `Revoke`.
//! * **Work stealing.** An agent reports [`Scheduler::started`] when it begins a task; a
//!   delivered task not yet started is in that agent's backlog. When an agent holds no task and
//!   nothing of its type is queued, it takes the oldest un-started task of the most loaded agent
//!   of its type that holds at least two tasks (so tasks never bounce back and forth): a
//!   `Revoke` to the victim, a new `Leased` record and a `Deliver` to the thief. This is the one
//!   documented case where two agents may both work on a task (the victim may have started it
//!   before the revoke arrived); the first result wins as above.
//! * **Recovery.** [`Scheduler::recover`] replays the ledger: tasks accepted and not ended are
//!   queued again (leases of before the crash are void; their agents may still answer, and the
//!   dedup rule absorbs it), ids continue after the largest id seen, completed tasks' results
//!   are not sent again, and the failed-attempt counts are kept. The registry is not durable:
//!   agents register again after a scheduler restart — a heartbeat or `started` from an unknown
//!   agent fails with [`ErrorKind::NotFound`], which tells the agent to do so.
//!
//! # Protections (options, all off by default)
//!
//! * **Circuit breaker** ([`SchedulerConfig::breaker`]): one [`Breaker`] per agent id. A
//!   matching `ack` is a success (with its delivery-to-ack latency); a `nack`, an expired
//!   lease and each lease of an agent that died (reported, or heartbeats missed) are failures.
//!   An agent whose breaker does not admit ([`Breaker::peek`]) is not a candidate: its type's
//!   tasks go to the other agents, or wait. The chosen agent's breaker is then asked
//!   ([`Breaker::allow`]), so a half-open breaker admits at most `half_open_probes` probes. A
//!   probe lease is never stolen (its outcome would never be reported and its slot would be
//!   lost); a probe revoked because another agent answered the task first counts as a
//!   failure (conservative: the breaker reopens, with its bounded back-off, rather than waiting
//!   for ever), one revoked because the same agent answered an older attempt as a success. Breakers outlive a death and a new incarnation of the same id (a crash-looping
//!   agent stays shunned); `unregister_agent` forgets it, and `tick` forgets a closed one whose agent is gone. They are not durable: a scheduler
//!   restart starts every breaker closed.
//! * **Back-pressure** ([`SchedulerConfig::backpressure`]): one [`BackPressure`] per registered
//!   agent. The host reports the agent's inbox lag with [`Scheduler::observe_lag`]; every
//!   `Deliver` counts as one frame sent ([`BackPressure::on_sent`]). An agent that is not
//!   accepting is not a candidate (for new tasks nor for steals) until a reading shows it
//!   drained to the low-water mark. A new incarnation of an agent starts with an empty inbox.
//! * **Rate limit** ([`SchedulerConfig::rate_limit`]): one [`RateLimiter`] per agent type.
//!   `submit` takes a token (after the `max_queued` check); without one it fails with
//!   [`ErrorKind::Full`] whose message says how long to wait (nothing is accepted; counted in
//!   [`SchedulerStats::throttled`]). Every completing `ack` feeds the task's submit-to-result
//!   latency to [`RateLimiter::observe_latency`] (queueing included: what overload shows in).
//! * **Shared heartbeats** ([`Scheduler::set_heartbeat_source`]): agents in other processes
//!   beat by writing their slot of a [`LoadTable`] rather than sending `heartbeat` events.
//!   When [`Scheduler::tick`] finds agents silent for longer than the heartbeat timeout, it
//!   first reads the source once and takes each registered agent's newer table heartbeat as a
//!   sign of life (by agent id; the table's clock must be the clock of the events).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::backpressure::{BackPressure, BackPressureConfig};
use super::breaker::{Admission, Breaker, BreakerConfig, BreakerState};
use super::loads::LoadTable;
use super::ratelimit::{RateLimiter, RateLimiterConfig};
use super::strategy::{Candidate, Strategy};
use super::types::{AgentId, AgentType, Attempt, Ledger, LedgerRecord, Liveness, Micros, TaskId};
use crate::error::{Error, ErrorKind, Result};
use crate::priority::Priority;

/// An agent's capacity when the host has no better idea (the original design's `max_tasks`).
pub const DEFAULT_MAX_TASKS: u32 = 5;

/// The scheduler's settings. [`SchedulerConfig::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// How many tasks may wait in the queue before [`Scheduler::submit`] refuses with
    /// [`ErrorKind::Full`] (default 100,000; at least 1).
    pub max_queued: usize,
    /// An agent without a heartbeat for longer than this is declared dead by
    /// [`Scheduler::tick`] (default 5 s); `None`: heartbeats are not watched (the host reports
    /// deaths itself).
    pub heartbeat_timeout: Option<Micros>,
    /// Releases (expired leases, dead agents, refusals) before a task is dead-lettered
    /// (default 3; at least 1).
    pub max_attempts: u32,
    /// The lease length is the observed p95 latency × this factor (default 3; finite, > 0).
    pub lease_factor: f64,
    /// The shortest lease (default 100 ms; at least 1 µs).
    pub min_lease: Micros,
    /// The longest lease (default 10 min; at least `min_lease`).
    pub max_lease: Micros,
    /// The lease of a type with no observed latency yet (default 10 s; within
    /// `[min_lease, max_lease]`).
    pub default_lease: Micros,
    /// How many recent delivery-to-ack latencies per type the p95 is taken over (default 64;
    /// at least 1).
    pub latency_window: usize,
    /// The weight of a new sample in an agent's latency EWMA (default 0.2; in `(0, 1]`).
    pub ewma_alpha: f64,
    /// How an agent is chosen among those of a task's type (default
    /// [`Strategy::LeastLoaded`]).
    pub strategy: Strategy,
    /// Whether idle agents steal un-started tasks from busy ones (default true).
    pub work_stealing: bool,
    /// A circuit breaker per agent with these settings (default `None`: off). See the
    /// [module documentation](self#protections-options-all-off-by-default).
    pub breaker: Option<BreakerConfig>,
    /// A back-pressure controller per agent with these marks (default `None`: off); the host
    /// reports inbox lags with [`Scheduler::observe_lag`].
    pub backpressure: Option<BackPressureConfig>,
    /// A rate limiter per agent type with these settings, applied by [`Scheduler::submit`]
    /// (default `None`: off).
    pub rate_limit: Option<RateLimiterConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_queued: 100_000,
            heartbeat_timeout: Some(5_000_000),
            max_attempts: 3,
            lease_factor: 3.0,
            min_lease: 100_000,
            max_lease: 600_000_000,
            default_lease: 10_000_000,
            latency_window: 64,
            ewma_alpha: 0.2,
            strategy: Strategy::LeastLoaded,
            work_stealing: true,
            breaker: None,
            backpressure: None,
            rate_limit: None,
        }
    }
}

impl SchedulerConfig {
    /// Checks the settings against the ranges documented on each field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(what));
        if self.max_queued == 0 {
            return bad("max_queued must be at least 1".into());
        }
        if self.heartbeat_timeout == Some(0) {
            return bad("heartbeat_timeout must be at least 1 µs (or None)".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if !(self.lease_factor.is_finite() && self.lease_factor > 0.0) {
            return bad(format!(
                "lease_factor {} must be finite and > 0",
                self.lease_factor
            ));
        }
        if self.min_lease == 0 || self.min_lease > self.max_lease {
            return bad(format!(
                "lease bounds [{}, {}] µs must satisfy 1 <= min_lease <= max_lease",
                self.min_lease, self.max_lease
            ));
        }
        if !(self.min_lease..=self.max_lease).contains(&self.default_lease) {
            return bad(format!(
                "default_lease {} µs must lie in [{}, {}]",
                self.default_lease, self.min_lease, self.max_lease
            ));
        }
        if self.latency_window == 0 {
            return bad("latency_window must be at least 1".into());
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return bad(format!("ewma_alpha {} must lie in (0, 1]", self.ewma_alpha));
        }
        if let Some(b) = &self.breaker {
            b.validate()?;
        }
        if let Some(b) = &self.backpressure {
            b.validate()?;
        }
        if let Some(r) = &self.rate_limit {
            r.validate()?;
        }
        Ok(())
    }
}

/// What the host must carry out, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the task to the agent's inbox. Its `Leased` record is already in the ledger.
    Deliver {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt: the agent quotes it in `started`, `ack` and `nack`.
        attempt: Attempt,
        /// The task's payload (shared, not copied, between deliveries).
        payload: Arc<[u8]>,
        /// When the lease expires (the clock of the events).
        deadline: Micros,
    },
    /// Tell the agent to drop this attempt of the task if it has not started it (it was
    /// stolen, or completed elsewhere). Whatever the agent answers for it later is ignored.
    Revoke {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The revoked attempt.
        attempt: Attempt,
    },
    /// Hand the task's result to its submitter. Its `Completed` record is already in the
    /// ledger; this happens once per task.
    Result {
        /// The task.
        task: TaskId,
        /// The result.
        result: Vec<u8>,
    },
    /// Tell the submitter the task failed for good. Its `DeadLettered` record is already in
    /// the ledger; this happens once per task, never together with a `Result`.
    DeadLetter {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
}

/// A task as it was submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The agent type it needs.
    pub agent_type: AgentType,
    /// Its priority.
    pub priority: Priority,
    /// Its payload.
    pub payload: Arc<[u8]>,
}

/// A dead-lettered task.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The task.
    pub task: TaskId,
    /// Why it was given up.
    pub reason: String,
    /// The task as submitted; `None` when a recovered ledger no longer held its `Accepted`
    /// record (a compacted ledger).
    pub spec: Option<TaskSpec>,
}

/// What [`Scheduler::ack`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The result completed the task (a `Result` action was emitted).
    Completed,
    /// The task had already ended: the result was counted and ignored.
    Duplicate,
}

/// One agent's load, as the strategies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLoad {
    /// The agent.
    pub agent: AgentId,
    /// Its type.
    pub agent_type: AgentType,
    /// How it is known to be alive.
    pub liveness: Liveness,
    /// Tasks it holds (leased, not acknowledged).
    pub current_tasks: u32,
    /// Of those, the ones it has not reported started (its backlog).
    pub backlog: u32,
    /// Its capacity.
    pub max_tasks: u32,
    /// Its latency EWMA in µs (0 before its first acknowledged task).
    pub latency_us: u64,
    /// When it last gave a sign of life (registration or heartbeat).
    pub last_heartbeat: Micros,
}

/// Counters of a scheduler. `completed` and `dead_lettered` are recovered from the ledger; the
/// others count since this scheduler was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Tasks waiting in the queue.
    pub queued: usize,
    /// Tasks leased to an agent.
    pub leased: usize,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks dead-lettered.
    pub dead_lettered: u64,
    /// Results for tasks that had already ended, and `started`/`nack` for attempts no longer
    /// leased: counted and ignored.
    pub duplicates: u64,
    /// Deliveries after the first of a task (steals excluded).
    pub redeliveries: u64,
    /// Tasks taken from a busy agent by an idle one.
    pub steals: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Agents declared dead (reported, or heartbeats missed).
    pub agents_dead: u64,
    /// Ledger appends that failed inside an event (the event then left the task where it was,
    /// or, for a `Released` record, went on: replay voids leases anyway).
    pub ledger_errors: u64,
    /// Agents registered.
    pub agents: usize,
    /// Submissions refused by the rate limiter.
    pub throttled: u64,
}

/// Where [`Scheduler::tick`] reads heartbeats that agents wrote themselves (agents in other
/// processes beat by writing their [`LoadTable`] slot). See the
/// [module documentation](self#protections-options-all-off-by-default).
pub trait HeartbeatSource: Send + Sync {
    /// Calls `f` with the last heartbeat (the clock of the scheduler's events) of every agent
    /// the source knows.
    fn for_each_heartbeat(&self, f: &mut dyn FnMut(&AgentId, Micros));
}

impl HeartbeatSource for LoadTable {
    /// One pass over the table: each live slot's agent and heartbeat.
    fn for_each_heartbeat(&self, f: &mut dyn FnMut(&AgentId, Micros)) {
        for (id, load) in self.snapshot() {
            f(&id, load.heartbeat);
        }
    }
}

/// A shared heartbeat source, printable.
#[derive(Clone)]
struct Heartbeats(Arc<dyn HeartbeatSource>);

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeartbeatSource")
    }
}

#[derive(Debug, Clone)]
struct Lease {
    agent: AgentId,
    attempt: Attempt,
    deadline: Micros,
    delivered_at: Micros,
    started: bool,
    /// The agent's breaker admitted it as a half-open probe.
    probe: bool,
}

#[derive(Debug, Clone)]
struct Task {
    type_ix: usize,
    priority: Priority,
    payload: Arc<[u8]>,
    /// The last attempt number handed out (0 before the first delivery).
    deliveries: Attempt,
    /// Releases so far.
    failures: u32,
    /// `None`: queued.
    lease: Option<Lease>,
    /// Deliver elsewhere than this agent when possible (the one it was released from).
    avoid: Option<AgentId>,
    /// When it was submitted (or recovered): the rate limiter's latencies start here.
    submitted_at: Micros,
}

#[derive(Debug, Clone)]
struct Agent {
    type_ix: usize,
    max_tasks: u32,
    liveness: Liveness,
    last_heartbeat: Micros,
    latency_us: Option<f64>,
    /// Leased tasks in delivery order.
    leases: Vec<TaskId>,
    /// Its back-pressure controller, when configured.
    backpressure: Option<BackPressure>,
    /// The cluster member (a `membership` id) its process runs on, when the host said so.
    host: Option<u64>,
}

#[derive(Debug, Clone)]
struct TypeState {
    name: AgentType,
    /// One lane per priority, highest first. May hold ids of tasks that ended while queued
    /// (a late result); they are skipped when met.
    lanes: [VecDeque<TaskId>; 4],
    /// Its agents in registration order.
    agents: Vec<AgentId>,
    /// Recent delivery-to-ack latencies.
    window: VecDeque<Micros>,
    /// The lease length from `window`; recomputed after each new sample while the window
    /// fills, then after every `latency_window / 8` new samples (a p95 moves slowly; a
    /// selection per ack cost 11 % of a busy dispatcher).
    lease: Option<Micros>,
    /// Samples since `lease` was computed.
    stale: usize,
    /// Scratch for the p95 selection (no allocation per recomputation).
    scratch: Vec<Micros>,
    /// Its rate limiter, when configured.
    limiter: Option<RateLimiter>,
}

/// The scheduler. See the [module documentation](self) for its rules. A clone is an
/// independent copy (with a clone of the ledger): what a model checker explores.
#[derive(Debug, Clone)]
pub struct Scheduler<L: Ledger> {
    config: SchedulerConfig,
    ledger: L,
    strategy: Strategy,
    next_id: u64,
    tasks: HashMap<TaskId, Task, ahash::RandomState>,
    types: Vec<TypeState>,
    type_index: HashMap<AgentType, usize, ahash::RandomState>,
    agents: BTreeMap<AgentId, Agent>,
    deadlines: BTreeSet<(Micros, TaskId)>,
    queued: usize,
    dead_letters: Vec<DeadLetter>,
    actions: VecDeque<Action>,
    stats: SchedulerStats,
    scratch: Vec<Candidate>,
    /// Circuit breakers by agent id (when configured; they outlive an agent's death).
    breakers: BTreeMap<AgentId, Breaker>,
    heartbeats: Option<Heartbeats>,
    /// The latest `now` seen by a pump (for [`Scheduler::select_agent`]).
    last_now: Micros,
}

impl<L: Ledger> Scheduler<L> {
    /// A scheduler over an empty `ledger`. Fails when `config` is out of range, or when the
    /// ledger holds records (use [`Scheduler::recover`] then: ids must not be reused).
    pub fn new(config: SchedulerConfig, ledger: L) -> Result<Self> {
        config.validate()?;
        if !ledger.replay()?.is_empty() {
            return Err(Error::invalid(
                "the ledger holds records: recover the scheduler from it instead",
            ));
        }
        Ok(Self::empty(config, ledger))
    }

    fn empty(config: SchedulerConfig, ledger: L) -> Self {
        Scheduler {
            strategy: config.strategy.clone(),
            config,
            ledger,
            next_id: 1,
            tasks: HashMap::default(),
            types: Vec::new(),
            type_index: HashMap::default(),
            agents: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            queued: 0,
            dead_letters: Vec::new(),
            actions: VecDeque::new(),
            stats: SchedulerStats::default(),
            scratch: Vec::new(),
            breakers: BTreeMap::new(),
            heartbeats: None,
            last_now: 0,
        }
    }

    /// Rebuilds a scheduler from `ledger.replay()` (after a crash of the previous one): the
    /// tasks accepted and not ended are queued again in id order within their lanes, with their
    /// failed-attempt counts; those that have reached `max_attempts` are dead-lettered now;
    /// new ids continue after the largest id seen. No agent is registered: agents register
    /// again (see the module documentation).
    pub fn recover(config: SchedulerConfig, ledger: L, now: Micros) -> Result<Self> {
        config.validate()?;
        let records = ledger.replay()?;
        let mut s = Self::empty(config, ledger);
        let mut max_id = 0u64;
        for record in records {
            // Bounds a ledger written by another process (a shared-memory one is writable by
            // any of them) may break while its frames check out: id 0 is no task's, and the
            // largest id and attempt would overflow `next_id` and the next attempt number.
            let id = match &record {
                LedgerRecord::Accepted { id, .. }
                | LedgerRecord::Leased { id, .. }
                | LedgerRecord::Released { id, .. }
                | LedgerRecord::Completed { id, .. }
                | LedgerRecord::DeadLettered { id, .. } => id.0,
            };
            if id == 0 || id == u64::MAX {
                return Err(Error::corrupt(format!("ledger record with task id {id}")));
            }
            if matches!(
                record,
                LedgerRecord::Leased {
                    attempt: u32::MAX,
                    ..
                }
            ) {
                return Err(Error::corrupt(format!(
                    "ledger record of task {id} with attempt {}",
                    u32::MAX
                )));
            }
            match record {
                LedgerRecord::Accepted {
                    id,
                    agent_type,
                    priority,
                    payload,
                } => {
                    max_id = max_id.max(id.0);
                    let type_ix = s.type_ix(&agent_type);
                    s.tasks.insert(
                        id,
                        Task {
                            type_ix,
                            priority,
                            payload: payload.into(),
                            deliveries: 0,
                            failures: 0,
                            lease: None,
                            avoid: None,
                            submitted_at: now,
                        },
                    );
                }
                LedgerRecord::Leased { id, attempt, .. } => {
                    max_id = max_id.max(id.0);
                    if let Some(t) = s.tasks.get_mut(&id) {
                        t.deliveries = t.deliveries.max(attempt);
                    }
                }
                LedgerRecord::Released { id, .. } => {
                    max_id = max_id.max(id.0);
                    if let Some(t) = s.tasks.get_mut(&id) {
                        t.failures += 1;
                    }
                }
                LedgerRecord::Completed { id, .. } => {
                    max_id = max_id.max(id.0);
                    s.tasks.remove(&id);
                    s.stats.completed += 1;
                }
                LedgerRecord::DeadLettered { id, reason } => {
                    max_id = max_id.max(id.0);
                    let spec = s.tasks.remove(&id).map(|t| s.spec_of(&t));
                    s.dead_letters.push(DeadLetter {
                        task: id,
                        reason,
                        spec,
                    });
                    s.stats.dead_lettered += 1;
                }
            }
        }
        s.next_id = max_id + 1;
        let mut ids: Vec<TaskId> = s.tasks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let t = &s.tasks[&id];
            let (type_ix, lane) = (t.type_ix, t.priority as usize);
            s.types[type_ix].lanes[lane].push_back(id);
            s.queued += 1;
        }
        let max_attempts = s.config.max_attempts;
        let mut spent: Vec<TaskId> = s
            .tasks
            .iter()
            .filter(|(_, t)| t.failures >= max_attempts)
            .map(|(&id, _)| id)
            .collect();
        spent.sort_unstable();
        for id in spent {
            // On a ledger error the task stays queued; the next pump of its type retries.
            let _ = s.dead_letter(id, "its lease was released before a scheduler restart");
        }
        for ix in 0..s.types.len() {
            s.pump(ix, now);
        }
        Ok(s)
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The ledger.
    pub fn ledger(&self) -> &L {
        &self.ledger
    }

    /// Gives the ledger back (e.g. to recover another scheduler from it).
    pub fn into_ledger(self) -> L {
        self.ledger
    }

    // ----- agents -----

    /// Registers an agent of `agent_type` that holds at most `max_tasks` tasks at once
    /// ([`DEFAULT_MAX_TASKS`] when the host has no better idea; at least 1). Registering an id
    /// that is registered with the same type and liveness updates its capacity and keeps its
    /// leases (an agent saying hello again); with another type or liveness it is a new
    /// incarnation: the old one's leases are released as if it had died.
    pub fn register_agent(
        &mut self,
        id: AgentId,
        agent_type: AgentType,
        max_tasks: u32,
        liveness: Liveness,
        now: Micros,
    ) -> Result<()> {
        if max_tasks == 0 {
            return Err(Error::invalid(format!(
                "agent {id}: max_tasks must be at least 1"
            )));
        }
        let type_ix = self.type_ix(&agent_type);
        if let Some(a) = self.agents.get_mut(&id) {
            if a.type_ix == type_ix && a.liveness == liveness {
                a.max_tasks = max_tasks;
                a.last_heartbeat = now;
                self.pump(type_ix, now);
                return Ok(());
            }
            self.remove_agent(
                &id,
                "the agent registered again with a new identity",
                false,
                now,
            );
        }
        if let Some(cfg) = &self.config.breaker {
            if !self.breakers.contains_key(&id) {
                let b = Breaker::new(cfg.clone()).expect("validated with the config");
                self.breakers.insert(id.clone(), b);
            }
        }
        let backpressure = self
            .config
            .backpressure
            .map(|c| BackPressure::new(c).expect("validated with the config"));
        self.agents.insert(
            id.clone(),
            Agent {
                type_ix,
                max_tasks,
                liveness,
                last_heartbeat: now,
                latency_us: None,
                leases: Vec::new(),
                backpressure,
                host: None,
            },
        );
        self.types[type_ix].agents.push(id);
        self.pump(type_ix, now);
        Ok(())
    }

    /// Removes an agent; its leased tasks are released and delivered again elsewhere.
    pub fn unregister_agent(&mut self, id: &AgentId, now: Micros) -> Result<()> {
        self.known(id)?;
        self.remove_agent(id, "the agent unregistered", false, now);
        self.breakers.remove(id);
        Ok(())
    }

    /// Records a sign of life from agent `id`. [`ErrorKind::NotFound`] when the agent is not
    /// registered (declared dead, or the scheduler restarted): it should register again.
    pub fn heartbeat(&mut self, id: &AgentId, now: Micros) -> Result<()> {
        let a = self.agents.get_mut(id).ok_or_else(|| not_registered(id))?;
        a.last_heartbeat = a.last_heartbeat.max(now);
        Ok(())
    }

    /// The host saw agent `id` die (its pid gone, its Erlang process down): it is removed and
    /// its leases are released at once.
    pub fn agent_dead(&mut self, id: &AgentId, now: Micros) -> Result<()> {
        self.known(id)?;
        self.stats.agents_dead += 1;
        self.remove_agent(id, "the agent died", true, now);
        Ok(())
    }

    /// Records that agent `id` runs on cluster member `host` (a [`crate::membership`] member
    /// id, the same number as a [`crate::net::NodeId`]), or on no member in particular
    /// (`None`, the default). [`Self::host_down`] then takes the agent for dead when its host
    /// is. A registration again with the same type and liveness keeps it; a new incarnation
    /// starts without one. [`ErrorKind::NotFound`] when the agent is not registered.
    pub fn set_agent_host(&mut self, id: &AgentId, host: Option<u64>) -> Result<()> {
        let a = self.agents.get_mut(id).ok_or_else(|| not_registered(id))?;
        a.host = host;
        Ok(())
    }

    /// The cluster member agent `id` runs on, as [`Self::set_agent_host`] recorded it.
    pub fn agent_host(&self, id: &AgentId) -> Option<u64> {
        self.agents.get(id).and_then(|a| a.host)
    }

    /// Membership declared cluster member `host` dead (SWIM's failure detector, in addition
    /// to the local pid checks): every agent recorded on it is dead, as if
    /// [`Self::agent_dead`] were called for each, and their leased tasks are delivered again
    /// elsewhere. None of those tasks goes to another agent of the same dead host. Returns the
    /// agents so removed (none when no agent was on `host`).
    pub fn host_down(&mut self, host: u64, now: Micros) -> Vec<AgentId> {
        let gone: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| a.host == Some(host))
            .map(|(id, _)| id.clone())
            .collect();
        let mut types = Vec::new();
        for id in &gone {
            self.stats.agents_dead += 1;
            if let Some(t) = self.remove_agent_quietly(id, "the agent's host is down", true, now) {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        for t in types {
            self.pump(t, now);
        }
        gone
    }

    /// Applies a membership event of a [`crate::mesh::member::Member`] (or of its runner):
    /// a member declared down, or restarted as a new generation (its old process, and so the
    /// agents recorded on it, are gone), is [`Self::host_down`]; every other event changes
    /// nothing. Returns the agents declared dead.
    #[cfg(not(loom))]
    pub fn on_membership(
        &mut self,
        event: &crate::mesh::member::MeshEvent,
        now: Micros,
    ) -> Vec<AgentId> {
        use crate::mesh::member::MeshEvent;
        match event {
            MeshEvent::MemberDown(host) | MeshEvent::MemberRestarted(host) => {
                self.host_down(host.0, now)
            }
            _ => Vec::new(),
        }
    }

    /// The host read agent `id`'s inbox lag (`lag_frames` frames written and not yet read) at
    /// `now`: with back-pressure on, an agent above the high-water mark gets no new task until
    /// a reading at or below the low-water mark (its type's queue is served then).
    /// [`ErrorKind::NotFound`] when the agent is not registered; `Error::invalid` when
    /// back-pressure is off ([`SchedulerConfig::backpressure`]).
    pub fn observe_lag(&mut self, id: &AgentId, lag_frames: u64, now: Micros) -> Result<()> {
        let a = self.agents.get_mut(id).ok_or_else(|| not_registered(id))?;
        let Some(bp) = a.backpressure.as_mut() else {
            return Err(Error::invalid(
                "back-pressure is off (SchedulerConfig::backpressure): no lag to observe",
            ));
        };
        let was = bp.accepting();
        bp.observe(lag_frames, now);
        if !was && bp.accepting() {
            let type_ix = a.type_ix;
            self.pump(type_ix, now);
        }
        Ok(())
    }

    /// Where [`Scheduler::tick`] also reads heartbeats (e.g. the agents' [`LoadTable`]);
    /// `None` removes it. See the [module documentation](self#protections-options-all-off-by-default).
    pub fn set_heartbeat_source(&mut self, source: Option<Arc<dyn HeartbeatSource>>) {
        self.heartbeats = source.map(Heartbeats);
    }

    /// Agent `id`'s circuit breaker, when breakers are configured and it has one.
    pub fn breaker(&self, id: &AgentId) -> Option<&Breaker> {
        self.breakers.get(id)
    }

    /// The state of agent `id`'s circuit breaker, when it has one.
    pub fn breaker_state(&self, id: &AgentId) -> Option<BreakerState> {
        self.breakers.get(id).map(Breaker::state)
    }

    /// Agent `id`'s back-pressure controller, when back-pressure is configured and the agent
    /// is registered.
    pub fn backpressure(&self, id: &AgentId) -> Option<&BackPressure> {
        self.agents.get(id)?.backpressure.as_ref()
    }

    /// The rate limiter of `agent_type`, when rate limits are configured and the type is known.
    pub fn rate_limiter(&self, agent_type: &AgentType) -> Option<&RateLimiter> {
        let &ix = self.type_index.get(agent_type)?;
        self.types[ix].limiter.as_ref()
    }

    /// The agent the strategy would give a task of `agent_type` now, without leasing anything
    /// (for hosts that route by themselves); `None` when no agent of the type has spare
    /// capacity (`no_capacity`) or none that the protections admit (judged at the latest
    /// event's `now`).
    pub fn select_agent(&mut self, agent_type: &AgentType) -> Option<AgentId> {
        let &ix = self.type_index.get(agent_type)?;
        let now = self.last_now;
        self.select(ix, None, now)
            .map(|i| self.types[ix].agents[i].clone())
    }

    /// The load of agent `id`, or `None` when it is not registered.
    pub fn agent_load(&self, id: &AgentId) -> Option<AgentLoad> {
        self.agents.get(id).map(|a| self.load_of(id, a))
    }

    /// The load of every registered agent, in id order.
    pub fn agent_loads(&self) -> Vec<AgentLoad> {
        self.agents
            .iter()
            .map(|(id, a)| self.load_of(id, a))
            .collect()
    }

    // ----- tasks -----

    /// Accepts a task: its `Accepted` record is in the ledger when this returns its id, so it
    /// is never lost from then on. [`ErrorKind::Full`] when `max_queued` tasks wait already
    /// (back-pressure: the caller keeps its task and may retry); a ledger error is returned
    /// as is (the task was not accepted, and its id is not used again). With a rate limit,
    /// [`ErrorKind::Full`] too when the type's bucket is empty: the message says after how many
    /// µs a token is there (see [`Scheduler::rate_limiter`]).
    pub fn submit(
        &mut self,
        agent_type: &AgentType,
        priority: Priority,
        payload: Vec<u8>,
        now: Micros,
    ) -> Result<TaskId> {
        if self.queued >= self.config.max_queued {
            return Err(Error::new(
                ErrorKind::Full,
                format!(
                    "{} tasks are queued, the bound (max_queued): retry later",
                    self.queued
                ),
            ));
        }
        if self.config.rate_limit.is_some() {
            let ix = self.type_ix(agent_type);
            let limiter = self.types[ix].limiter.as_mut().expect("configured");
            if let Err(t) = limiter.try_acquire(now) {
                self.stats.throttled += 1;
                return Err(Error::new(
                    ErrorKind::Full,
                    format!("agent type {}: {t}", agent_type.as_str()),
                ));
            }
        }
        let id = TaskId(self.next_id);
        // The id is spent even when the append fails: it may have reached the ledger.
        self.next_id += 1;
        let record = LedgerRecord::Accepted {
            id,
            agent_type: agent_type.clone(),
            priority,
            payload,
        };
        self.ledger.append(&record)?;
        let LedgerRecord::Accepted { payload, .. } = record else {
            unreachable!("built above")
        };
        let type_ix = self.type_ix(agent_type);
        self.tasks.insert(
            id,
            Task {
                type_ix,
                priority,
                payload: payload.into(),
                deliveries: 0,
                failures: 0,
                lease: None,
                avoid: None,
                submitted_at: now,
            },
        );
        self.types[type_ix].lanes[priority as usize].push_back(id);
        self.queued += 1;
        self.pump(type_ix, now);
        Ok(id)
    }

    /// Agent `agent` began attempt `attempt` of `task`: the task leaves its backlog and can no
    /// longer be stolen. `Ok(false)` (counted as a duplicate) when that attempt is not leased
    /// to that agent (revoked, released, ended); [`ErrorKind::NotFound`] when the agent is not
    /// registered.
    pub fn started(
        &mut self,
        agent: &AgentId,
        task: TaskId,
        attempt: Attempt,
        _now: Micros,
    ) -> Result<bool> {
        self.known(agent)?;
        match self.tasks.get_mut(&task).and_then(|t| t.lease.as_mut()) {
            Some(l) if l.agent == *agent && l.attempt == attempt => {
                l.started = true;
                Ok(true)
            }
            _ => {
                self.stats.duplicates += 1;
                Ok(false)
            }
        }
    }

    /// A result for `task` from `agent` (attempt `attempt`). The first result of a task
    /// completes it: its `Completed` record is appended, then a `Result` action is emitted.
    /// Any later result is a [`AckOutcome::Duplicate`]. A result from an agent that does not
    /// hold the lease (even an unregistered one) completes a task that has not ended: the work
    /// was done; the holder, if any, gets a `Revoke`. [`ErrorKind::NotFound`] for an id never
    /// handed out; a ledger error leaves the task as it was (the agent may send the result
    /// again; otherwise the lease expires and the task is delivered again).
    pub fn ack(
        &mut self,
        agent: &AgentId,
        task: TaskId,
        attempt: Attempt,
        result: Vec<u8>,
        now: Micros,
    ) -> Result<AckOutcome> {
        if task.0 == 0 || task.0 >= self.next_id {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("task {} was never accepted", task.0),
            ));
        }
        if !self.tasks.contains_key(&task) {
            self.stats.duplicates += 1;
            return Ok(AckOutcome::Duplicate);
        }
        let record = LedgerRecord::Completed { id: task, result };
        self.ledger.append(&record)?;
        let LedgerRecord::Completed { result, .. } = record else {
            unreachable!("built above")
        };
        let t = self.tasks.remove(&task).expect("checked above");
        if let Some(limiter) = self.types[t.type_ix].limiter.as_mut() {
            limiter.observe_latency(now, now.saturating_sub(t.submitted_at));
        }
        match t.lease {
            Some(l) => {
                self.deadlines.remove(&(l.deadline, task));
                if l.agent == *agent && l.attempt == attempt {
                    self.observe(&l, now);
                    self.judge(&l.agent, Some(now.saturating_sub(l.delivered_at)), now);
                } else {
                    if l.probe {
                        // Its own outcome will never be known: a result of the same agent
                        // (an older attempt) is a success, any other a failure (see the
                        // module documentation).
                        let ok = (l.agent == *agent).then(|| now.saturating_sub(l.delivered_at));
                        self.judge(&l.agent, ok, now);
                    }
                    self.actions.push_back(Action::Revoke {
                        agent: l.agent.clone(),
                        task,
                        attempt: l.attempt,
                    });
                }
                if let Some(a) = self.agents.get_mut(&l.agent) {
                    a.leases.retain(|&x| x != task);
                }
            }
            // Its lane entry is skipped when met.
            None => self.queued -= 1,
        }
        self.stats.completed += 1;
        self.actions.push_back(Action::Result { task, result });
        self.pump(t.type_ix, now);
        Ok(AckOutcome::Completed)
    }

    /// Agent `agent` gives attempt `attempt` of `task` back without a result (it refused or
    /// failed it): the lease is released early (a failed attempt) and the task is delivered
    /// again, elsewhere when possible. `Ok(false)` (counted as a duplicate) when that attempt
    /// is not leased to that agent.
    pub fn nack(
        &mut self,
        agent: &AgentId,
        task: TaskId,
        attempt: Attempt,
        reason: &str,
        now: Micros,
    ) -> Result<bool> {
        match self.tasks.get(&task).and_then(|t| t.lease.as_ref()) {
            Some(l) if l.agent == *agent && l.attempt == attempt => {
                let reason = format!("refused by agent {agent}: {reason}");
                self.judge(agent, None, now);
                let type_ix = self.release(task, &reason, true);
                self.pump(type_ix, now);
                Ok(true)
            }
            _ => {
                self.stats.duplicates += 1;
                Ok(false)
            }
        }
    }

    /// Advances time: agents silent for longer than the heartbeat timeout are declared dead,
    /// leases whose deadline is at or before `now` are released, and every type's queue is
    /// served (deliveries, steals).
    pub fn tick(&mut self, now: Micros) {
        // A closed breaker of an agent that is gone holds nothing worth keeping (an open one
        // keeps a crash-looping id shunned): forget it, so ids that never come back (a pool's
        // replacements) do not pile up.
        if self.breakers.len() > self.agents.len() {
            let agents = &self.agents;
            self.breakers.retain(|id, b| {
                agents.contains_key(id) || !matches!(b.state(), BreakerState::Closed)
            });
        }
        if let Some(timeout) = self.config.heartbeat_timeout {
            let silent = |agents: &BTreeMap<AgentId, Agent>| -> Vec<AgentId> {
                agents
                    .iter()
                    .filter(|(_, a)| now.saturating_sub(a.last_heartbeat) > timeout)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            let mut silent_now = silent(&self.agents);
            if let (false, Some(src)) = (silent_now.is_empty(), &self.heartbeats) {
                let agents = &mut self.agents;
                src.0.for_each_heartbeat(&mut |id, beat| {
                    if let Some(a) = agents.get_mut(id) {
                        a.last_heartbeat = a.last_heartbeat.max(beat);
                    }
                });
                silent_now = silent(&self.agents);
            }
            for id in silent_now {
                self.stats.agents_dead += 1;
                // The queues are served below, once every silent agent is out.
                self.remove_agent_quietly(&id, "the agent missed its heartbeats", true, now);
            }
        }
        let expired: Vec<TaskId> = self
            .deadlines
            .iter()
            .take_while(|&&(deadline, _)| deadline <= now)
            .map(|&(_, task)| task)
            .collect();
        // Latest first, so that the earliest ends up at the front of its lane.
        for &task in expired.iter().rev() {
            self.stats.expired += 1;
            if let Some(l) = &self.tasks[&task].lease {
                let agent = l.agent.clone();
                self.judge(&agent, None, now);
            }
            self.release(task, "the lease expired", true);
        }
        for ix in 0..self.types.len() {
            self.pump(ix, now);
        }
    }

    /// The next action to carry out, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every pending action, oldest first.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    /// The dead-lettered tasks, oldest first (those recovered from the ledger included).
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// The counters.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            queued: self.queued,
            leased: self.deadlines.len(),
            agents: self.agents.len(),
            ..self.stats.clone()
        }
    }

    /// Tasks of `agent_type` waiting in the queue, every priority (0 for a type never seen):
    /// the demand a pool manager of that type reads. Counts the type's lanes (O(queued)).
    pub fn queued_of(&self, agent_type: &AgentType) -> usize {
        let Some(&ix) = self.type_index.get(agent_type) else {
            return 0;
        };
        self.types[ix]
            .lanes
            .iter()
            .flatten()
            .filter(|id| self.tasks.get(id).is_some_and(|t| t.lease.is_none()))
            .count()
    }

    /// The largest id handed out so far (0 before the first).
    pub fn last_task_id(&self) -> TaskId {
        TaskId(self.next_id - 1)
    }

    /// Whether `task` was accepted and waits in the queue.
    pub fn is_queued(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_some_and(|t| t.lease.is_none())
    }

    /// The agent and attempt `task` is leased to now, if it is.
    pub fn lease_of(&self, task: TaskId) -> Option<(AgentId, Attempt)> {
        let l = self.tasks.get(&task)?.lease.as_ref()?;
        Some((l.agent.clone(), l.attempt))
    }

    /// The lease length a task of `agent_type` would get now.
    pub fn lease_length(&mut self, agent_type: &AgentType) -> Micros {
        match self.type_index.get(agent_type) {
            Some(&ix) => self.lease_len(ix),
            None => self.config.default_lease,
        }
    }

    // ----- internals -----

    fn known(&self, id: &AgentId) -> Result<()> {
        if self.agents.contains_key(id) {
            Ok(())
        } else {
            Err(not_registered(id))
        }
    }

    fn type_ix(&mut self, t: &AgentType) -> usize {
        if let Some(&ix) = self.type_index.get(t) {
            return ix;
        }
        let ix = self.types.len();
        self.types.push(TypeState {
            name: t.clone(),
            lanes: Default::default(),
            agents: Vec::new(),
            window: VecDeque::new(),
            lease: None,
            stale: 0,
            scratch: Vec::new(),
            limiter: self
                .config
                .rate_limit
                .clone()
                .map(|c| RateLimiter::new(c).expect("validated with the config")),
        });
        self.type_index.insert(t.clone(), ix);
        ix
    }

    fn spec_of(&self, t: &Task) -> TaskSpec {
        TaskSpec {
            agent_type: self.types[t.type_ix].name.clone(),
            priority: t.priority,
            payload: t.payload.clone(),
        }
    }

    fn load_of(&self, id: &AgentId, a: &Agent) -> AgentLoad {
        let backlog = a
            .leases
            .iter()
            .filter(|t| self.tasks[t].lease.as_ref().is_some_and(|l| !l.started))
            .count() as u32;
        AgentLoad {
            agent: id.clone(),
            agent_type: self.types[a.type_ix].name.clone(),
            liveness: a.liveness,
            current_tasks: a.leases.len() as u32,
            backlog,
            max_tasks: a.max_tasks,
            latency_us: a.latency_us.map_or(0, |l| l as u64),
            last_heartbeat: a.last_heartbeat,
        }
    }

    /// Removes agent `id` (known) and releases its leases, oldest at the front of its lane.
    /// `fault`: the agent died, each released lease is a failure for its breaker.
    fn remove_agent(&mut self, id: &AgentId, reason: &str, fault: bool, now: Micros) {
        if let Some(type_ix) = self.remove_agent_quietly(id, reason, fault, now) {
            self.pump(type_ix, now);
        }
    }

    /// [`Self::remove_agent`] without serving the queue (when several agents go at once, none
    /// of their tasks must land on another that is going too). Returns the agent's type.
    fn remove_agent_quietly(
        &mut self,
        id: &AgentId,
        reason: &str,
        fault: bool,
        now: Micros,
    ) -> Option<usize> {
        let a = self.agents.remove(id)?;
        self.types[a.type_ix].agents.retain(|x| x != id);
        for &task in a.leases.iter().rev() {
            // A probe's outcome will never be known: a failure too (see the module docs).
            let probe = self.tasks[&task].lease.as_ref().is_some_and(|l| l.probe);
            if fault || probe {
                self.judge(id, None, now);
            }
            // The agent is gone: nothing to avoid.
            self.release(task, reason, false);
        }
        Some(a.type_ix)
    }

    /// Releases `task`'s lease (a failed attempt) and queues it at the front of its lane, or
    /// dead-letters it after `max_attempts` failures. Returns its type.
    fn release(&mut self, task: TaskId, reason: &str, avoid_holder: bool) -> usize {
        let t = self.tasks.get_mut(&task).expect("a leased task");
        let l = t.lease.take().expect("a leased task");
        let type_ix = t.type_ix;
        t.failures += 1;
        t.avoid = avoid_holder.then(|| l.agent.clone());
        let failures = t.failures;
        self.deadlines.remove(&(l.deadline, task));
        if let Some(a) = self.agents.get_mut(&l.agent) {
            a.leases.retain(|&x| x != task);
        }
        let record = LedgerRecord::Released {
            id: task,
            reason: reason.to_owned(),
        };
        if self.ledger.append(&record).is_err() {
            // Replay voids leases anyway; only the failure count after a restart is lower.
            self.stats.ledger_errors += 1;
        }
        let lane = self.tasks[&task].priority as usize;
        self.types[type_ix].lanes[lane].push_front(task);
        self.queued += 1;
        if failures >= self.config.max_attempts {
            // On a ledger error it stays queued; the next pump of its type retries.
            let _ = self.dead_letter(task, reason);
        }
        type_ix
    }

    /// Dead-letters the queued `task` (its lane entry is then skipped when met).
    fn dead_letter(&mut self, task: TaskId, last_reason: &str) -> Result<()> {
        let t = &self.tasks[&task];
        debug_assert!(t.lease.is_none());
        let reason = format!(
            "{} failed attempts (max_attempts); the last: {last_reason}",
            t.failures
        );
        let record = LedgerRecord::DeadLettered {
            id: task,
            reason: reason.clone(),
        };
        if let Err(e) = self.ledger.append(&record) {
            self.stats.ledger_errors += 1;
            return Err(e);
        }
        let t = self.tasks.remove(&task).expect("checked above");
        self.queued -= 1;
        self.stats.dead_lettered += 1;
        let spec = Some(self.spec_of(&t));
        self.dead_letters.push(DeadLetter {
            task,
            reason: reason.clone(),
            spec,
        });
        self.actions.push_back(Action::DeadLetter { task, reason });
        Ok(())
    }

    /// The first live queued task of a type, highest lane first; drops the lane entries of
    /// tasks that ended while queued.
    fn front(&mut self, type_ix: usize) -> Option<TaskId> {
        let tasks = &self.tasks;
        for lane in self.types[type_ix].lanes.iter_mut() {
            while let Some(&id) = lane.front() {
                if tasks.get(&id).is_some_and(|t| t.lease.is_none()) {
                    return Some(id);
                }
                lane.pop_front();
            }
        }
        None
    }

    /// The index (in the type's agent list) of the agent the strategy picks, avoiding `avoid`
    /// when another agent has capacity.
    /// Agents the protections do not admit at `now` count as having no capacity.
    fn select(&mut self, type_ix: usize, avoid: Option<&AgentId>, now: Micros) -> Option<usize> {
        let ts = &self.types[type_ix];
        self.scratch.clear();
        let mut avoided = None;
        let mut others_free = false;
        for (i, id) in ts.agents.iter().enumerate() {
            let a = &self.agents[id];
            let mut c = Candidate {
                current_tasks: a.leases.len() as u32,
                max_tasks: a.max_tasks,
                latency_us: a.latency_us.map_or(0, |l| l as u64),
            };
            if !Self::admits(&self.breakers, id, a, now) {
                c.current_tasks = c.current_tasks.max(c.max_tasks);
            }
            if avoid == Some(id) {
                avoided = Some(i);
            } else if c.has_capacity() {
                others_free = true;
            }
            self.scratch.push(c);
        }
        if let (Some(i), true) = (avoided, others_free) {
            self.scratch[i].current_tasks = self.scratch[i].max_tasks;
        }
        self.strategy.select(&self.scratch)
    }

    /// Whether the agent's breaker (peeked) and back-pressure let it take a task at `now`.
    fn admits(breakers: &BTreeMap<AgentId, Breaker>, id: &AgentId, a: &Agent, now: Micros) -> bool {
        a.backpressure.as_ref().is_none_or(BackPressure::accepting)
            && breakers.get(id).is_none_or(|b| b.peek(now).is_allowed())
    }

    /// Reports an outcome to agent `id`'s breaker, if it has one: a success with its latency,
    /// or a failure (`None`).
    fn judge(&mut self, id: &AgentId, latency: Option<Micros>, now: Micros) {
        if let Some(b) = self.breakers.get_mut(id) {
            match latency {
                Some(l) => b.on_success(now, l),
                None => b.on_failure(now),
            }
        }
    }

    /// Serves a type's queue while its agents have capacity, then lets idle agents steal.
    fn pump(&mut self, type_ix: usize, now: Micros) {
        self.last_now = self.last_now.max(now);
        while let Some(task) = self.front(type_ix) {
            if self.tasks[&task].failures >= self.config.max_attempts {
                // A dead letter whose record could not be written before: try again.
                if self.dead_letter(task, "a released lease").is_err() {
                    return;
                }
                continue;
            }
            let avoid = self.tasks[&task].avoid.clone();
            let Some(i) = self.select(type_ix, avoid.as_ref(), now) else {
                return;
            };
            let agent = self.types[type_ix].agents[i].clone();
            if self.lease(task, agent, now).is_err() {
                return;
            }
            if self.tasks[&task].deliveries > 1 {
                self.stats.redeliveries += 1;
            }
            let lane = self.tasks[&task].priority as usize;
            let popped = self.types[type_ix].lanes[lane].pop_front();
            debug_assert_eq!(popped, Some(task));
            self.queued -= 1;
        }
        if self.config.work_stealing {
            self.steal(type_ix, now);
        }
    }

    /// Leases the queued or stolen `task` to `agent`: the `Leased` record, then the `Deliver`.
    /// The caller takes it out of its lane or its previous holder.
    fn lease(&mut self, task: TaskId, agent: AgentId, now: Micros) -> Result<()> {
        let type_ix = self.tasks[&task].type_ix;
        let deadline = now.saturating_add(self.lease_len(type_ix));
        let t = self.tasks.get_mut(&task).expect("a live task");
        let attempt = t.deliveries + 1;
        let record = LedgerRecord::Leased {
            id: task,
            agent: agent.clone(),
            attempt,
            deadline,
        };
        if let Err(e) = self.ledger.append(&record) {
            self.stats.ledger_errors += 1;
            return Err(e);
        }
        // After the append: an admission whose task is never sent would hold a probe slot.
        let probe = self.breakers.get_mut(&agent).is_some_and(|b| {
            let admission = b.allow(now);
            debug_assert!(admission.is_allowed(), "peeked before: {admission:?}");
            admission == Admission::Probe
        });
        t.deliveries = attempt;
        t.avoid = None;
        t.lease = Some(Lease {
            agent: agent.clone(),
            attempt,
            deadline,
            delivered_at: now,
            started: false,
            probe,
        });
        let payload = t.payload.clone();
        let a = self.agents.get_mut(&agent).expect("a registered agent");
        a.leases.push(task);
        if let Some(bp) = a.backpressure.as_mut() {
            bp.on_sent(1, now);
        }
        self.deadlines.insert((deadline, task));
        self.actions.push_back(Action::Deliver {
            agent,
            task,
            attempt,
            payload,
            deadline,
        });
        Ok(())
    }

    /// Idle agents of the type (holding no task) take the oldest un-started task of the most
    /// loaded agent holding at least two. Only when nothing of the type is queued.
    fn steal(&mut self, type_ix: usize, now: Micros) {
        if self.front(type_ix).is_some() {
            return;
        }
        loop {
            let ts = &self.types[type_ix];
            let Some(thief) = ts.agents.iter().find(|id| {
                let a = &self.agents[*id];
                a.leases.is_empty() && Self::admits(&self.breakers, id, a, now)
            }) else {
                return;
            };
            let mut victim: Option<(&AgentId, usize, TaskId)> = None;
            for id in &ts.agents {
                let a = &self.agents[id];
                if a.leases.len() < 2 || victim.is_some_and(|(_, n, _)| n >= a.leases.len()) {
                    continue;
                }
                let oldest = a.leases.iter().copied().find(|t| {
                    // A probe is the victim's test: never taken from it.
                    self.tasks[t]
                        .lease
                        .as_ref()
                        .is_some_and(|l| !l.started && !l.probe)
                });
                if let Some(task) = oldest {
                    victim = Some((id, a.leases.len(), task));
                }
            }
            let Some((victim, _, task)) = victim else {
                return;
            };
            let (thief, victim) = (thief.clone(), victim.clone());
            let old = self
                .tasks
                .get_mut(&task)
                .expect("a leased task")
                .lease
                .take();
            let old = old.expect("a leased task");
            // Before the new lease, whose deadline may be the same.
            self.deadlines.remove(&(old.deadline, task));
            if self.lease(task, thief, now).is_err() {
                self.deadlines.insert((old.deadline, task));
                self.tasks.get_mut(&task).expect("a leased task").lease = Some(old);
                return;
            }
            self.agents
                .get_mut(&victim)
                .expect("a registered agent")
                .leases
                .retain(|&x| x != task);
            // The revoke goes before the new delivery.
            let deliver = self.actions.pop_back().expect("just pushed");
            self.actions.push_back(Action::Revoke {
                agent: victim,
                task,
                attempt: old.attempt,
            });
            self.actions.push_back(deliver);
            self.stats.steals += 1;
        }
    }

    /// Feeds a matching result's latency to its agent's EWMA and its type's window.
    fn observe(&mut self, l: &Lease, now: Micros) {
        let sample = now.saturating_sub(l.delivered_at);
        let alpha = self.config.ewma_alpha;
        if let Some(a) = self.agents.get_mut(&l.agent) {
            a.latency_us = Some(match a.latency_us {
                None => sample as f64,
                Some(m) => alpha * sample as f64 + (1.0 - alpha) * m,
            });
            let ts = &mut self.types[a.type_ix];
            let full = ts.window.len() == self.config.latency_window;
            if full {
                ts.window.pop_front();
            }
            ts.window.push_back(sample);
            ts.stale += 1;
            if !full || ts.stale >= (self.config.latency_window / 8).max(1) {
                ts.lease = None;
            }
        }
    }

    /// The type's lease length: p95 of its window × factor, clamped; the default before any
    /// sample.
    fn lease_len(&mut self, type_ix: usize) -> Micros {
        let c = &self.config;
        let ts = &mut self.types[type_ix];
        if ts.window.is_empty() {
            return c.default_lease;
        }
        if let Some(l) = ts.lease {
            return l;
        }
        let v = &mut ts.scratch;
        v.clear();
        v.extend(ts.window.iter().copied());
        // The nearest-rank p95.
        let rank = (v.len() * 95).div_ceil(100).max(1) - 1;
        let (_, &mut p95, _) = v.select_nth_unstable(rank);
        let l = ((p95 as f64 * c.lease_factor) as Micros).clamp(c.min_lease, c.max_lease);
        ts.lease = Some(l);
        ts.stale = 0;
        l
    }

    /// The state that decides the scheduler's future behaviour, in a canonical text (model
    /// checking: two schedulers with the same fingerprint behave alike). Leaves out the ledger
    /// and the counters.
    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> String {
        use std::fmt::Write;
        let mut f = String::new();
        let mut ids: Vec<_> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let t = &self.tasks[&id];
            let lease = t.lease.as_ref().map(|l| {
                (
                    &l.agent,
                    l.attempt,
                    l.deadline,
                    l.delivered_at,
                    l.started,
                    l.probe,
                )
            });
            let _ = write!(
                f,
                "t{} {} {:?} {} {} {:?} {:?};",
                id.0, t.type_ix, t.priority, t.deliveries, t.failures, lease, t.avoid
            );
        }
        for ts in &self.types {
            for lane in &ts.lanes {
                let live: Vec<_> = lane
                    .iter()
                    .filter(|id| self.tasks.get(id).is_some_and(|t| t.lease.is_none()))
                    .collect();
                let _ = write!(f, "{live:?}");
            }
            let _ = write!(f, "{:?} {:?} {:?};", ts.agents, ts.window, ts.lease);
        }
        for (id, a) in &self.agents {
            let _ = write!(
                f,
                "{id} {} {:?} {:?} {:?} {:?};",
                a.max_tasks,
                a.liveness,
                a.latency_us,
                a.leases,
                a.backpressure.as_ref().map(|b| (b.lag(), b.accepting()))
            );
        }
        for (id, b) in &self.breakers {
            let _ = write!(f, "{id} {:?};", b.state());
        }
        let dead: Vec<_> = self.dead_letters.iter().map(|d| d.task).collect();
        let _ = write!(
            f,
            "{} {} {:?} {:?} {:?}",
            self.next_id, self.queued, dead, self.strategy, self.actions
        );
        f
    }

    /// Checks the internal bookkeeping (tests and simulations): every live task is queued in
    /// its lane exactly once or leased to exactly one registered agent, the counters agree.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let mut in_lanes: HashMap<TaskId, usize> = HashMap::new();
        for (ix, ts) in self.types.iter().enumerate() {
            for (p, lane) in ts.lanes.iter().enumerate() {
                for id in lane {
                    if let Some(t) = self.tasks.get(id) {
                        if t.lease.is_none() {
                            assert_eq!((t.type_ix, t.priority as usize), (ix, p), "{id:?} lane");
                            *in_lanes.entry(*id).or_default() += 1;
                        }
                    }
                }
            }
            for id in &ts.agents {
                assert_eq!(self.agents[id].type_ix, ix);
            }
        }
        let mut queued = 0;
        let mut leased = 0;
        for (id, t) in &self.tasks {
            match &t.lease {
                None => {
                    queued += 1;
                    assert_eq!(in_lanes.get(id), Some(&1), "{id:?} queued once");
                }
                Some(l) => {
                    leased += 1;
                    let a = self
                        .agents
                        .get(&l.agent)
                        .expect("leased to a registered agent");
                    assert_eq!(a.leases.iter().filter(|&&x| x == *id).count(), 1);
                    assert!(self.deadlines.contains(&(l.deadline, *id)));
                    assert_eq!(l.attempt, t.deliveries);
                }
            }
            assert!(id.0 < self.next_id);
        }
        assert_eq!(queued, self.queued);
        assert_eq!(leased, self.deadlines.len());
        let held: usize = self.agents.values().map(|a| a.leases.len()).sum();
        assert_eq!(held, leased, "each lease held by one agent");
        for (id, a) in &self.agents {
            assert!(self.types[a.type_ix].agents.contains(id));
            for t in &a.leases {
                let l = self.tasks[t].lease.as_ref().expect("leased");
                assert_eq!(&l.agent, id);
            }
        }
    }
}

fn not_registered(id: &AgentId) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("agent {id} is not registered (declared dead, or the scheduler restarted): register it again"),
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod model;
