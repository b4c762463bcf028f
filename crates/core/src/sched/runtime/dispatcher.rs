//! The dispatcher: one scheduler directory's [`Scheduler`], its reports ring and its agents'
//! inboxes (see the module documentation of [`super`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::wire::{self, InboxFrame, ReportFrame, TASK_HEADER};
use super::{
    now_micros, AnyLedger, LedgerChoice, RuntimeOptions, LEDGER_NAME, LOADS_NAME, REPORTS_RING,
};
use crate::error::{Error, ErrorKind, Result};
use crate::priority::Priority;
use crate::ring::{AckMode, Consumer, Producer, Ring, RingOptions, WaitStrategy};
use crate::router::inbox_name;
use crate::sched::ledger::{FileLedger, ShmLedger, ShmLedgerOptions};
use crate::sched::loads::LoadTable;
use crate::sched::registry::Registry;
use crate::sched::scheduler::{Action, Scheduler, SchedulerStats};
use crate::sched::types::{AgentId, AgentType, Liveness, MemLedger, Micros, TaskId};
use crate::shm::{process_alive, SegmentOptions};

/// How a task ended, as its submitter learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its result (the first one reported).
    Done(Vec<u8>),
    /// Given up after `max_attempts` failed attempts: why.
    DeadLetter(String),
}

/// A dispatcher's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    /// The scheduler's counters.
    pub sched: SchedulerStats,
    /// Agents with an inbox (registered).
    pub agents: usize,
    /// Report frames handled.
    pub reports: u64,
    /// Report frames refused (undecodable, or about unknown tasks/agents).
    pub bad_reports: u64,
    /// Inbox frames waiting for space in a full inbox.
    pub pending_deliveries: usize,
    /// Agents found dead by their process identity.
    pub deaths: u64,
    /// Outcomes not yet taken with [`Dispatcher::poll_outcome`].
    pub outcomes: usize,
}

/// One registered agent's inbox.
struct Inbox {
    producer: Producer,
    /// Frames that found the inbox full, in order.
    pending: VecDeque<Vec<u8>>,
    pid: u32,
    start_ticks: u64,
    /// A hello request was sent since the scheduler last forgot the agent.
    asked: bool,
}

/// Everything but the reports consumer (so a report can be handled while it is borrowed).
struct Core {
    sched: Scheduler<AnyLedger>,
    seg: SegmentOptions,
    loads: Arc<LoadTable>,
    /// The registered agents, for lookups from any thread (by id through the LRU cache, by
    /// type); mirrors the scheduler's registrations.
    registry: Arc<Registry>,
    inboxes: HashMap<AgentId, Inbox>,
    /// Inboxes of agents not registered here (found at open, or an agent reporting without
    /// having said hello): asked to say hello every liveness check until they do, or until
    /// their agent is found gone (then the inbox is removed).
    asking: HashMap<AgentId, Producer>,
    outcomes: VecDeque<(TaskId, Outcome)>,
    stats: DispatcherStats,
    last_error: Option<Error>,
}

/// The scheduler of a directory, in the process that runs it (see the module documentation).
pub struct Dispatcher {
    pub(super) inner: Inner,
    pub(super) reports: Consumer,
}

/// A dispatcher without its reports consumer (a [`super::Service`] waits on the consumer
/// without holding the lock that guards this).
pub(super) struct Inner {
    core: Core,
    loads: Arc<LoadTable>,
    liveness_interval: Micros,
    last_liveness: Micros,
    last_tick: Micros,
    batch: usize,
}

/// Entries of the registry's lookup cache (the original design's cache size).
const REGISTRY_CACHE: usize = 10_000;

/// The largest capacity an agent may announce in its hello.
pub const MAX_AGENT_TASKS: u32 = 1 << 16;

/// Removes agent `id`'s inbox file when no live agent holds the id: the dispatcher takes the
/// id's load slot for a moment (so no new incarnation can create its inbox meanwhile), removes
/// the file, and gives the slot back. True when it did (or there was no file). A live agent
/// (the slot held by a live process, this one's agents included) keeps its inbox.
fn remove_if_abandoned(loads: &LoadTable, seg: &SegmentOptions, id: &AgentId) -> bool {
    let me = std::process::id();
    let liveness = Liveness::Process {
        pid: me,
        start_time: crate::shm::process_start_ticks(me),
    };
    let Ok(slot) = loads.claim(id, liveness, 1, now_micros()) else {
        return false;
    };
    let path = crate::shm::segment_path(&seg.dir, &inbox_name(id.as_str()));
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let _ = loads.release(slot);
    removed
}

/// How often leases and heartbeats are checked at most.
const TICK_EVERY: Micros = 1_000;

impl Dispatcher {
    /// Opens the directory `opts.dir` (created if missing) as its dispatcher: creates the
    /// ledger, the reports ring and the load table, or re-adopts them after the previous
    /// dispatcher died — every accepted task that had not ended is queued again and every
    /// agent found (by its inbox) is asked to register again. `Busy` while another live
    /// dispatcher holds the directory's ledger.
    pub fn open(opts: &RuntimeOptions) -> Result<Dispatcher> {
        opts.config.validate()?;
        if opts.batch == 0 || opts.liveness_interval == 0 {
            return Err(Error::invalid(
                "runtime batch and liveness_interval must be at least 1",
            ));
        }
        std::fs::create_dir_all(&opts.dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot create {}: {e}", opts.dir.display()),
            )
        })?;
        let seg = opts.segment();
        let ledger = match &opts.ledger {
            LedgerChoice::Memory => AnyLedger::Memory(MemLedger::new()),
            LedgerChoice::Shm { capacity } => AnyLedger::Shm(ShmLedger::open(
                LEDGER_NAME,
                &ShmLedgerOptions {
                    capacity: *capacity,
                    segment: seg.clone(),
                },
            )?),
            LedgerChoice::File { path, options } => {
                AnyLedger::File(FileLedger::open(path, options)?)
            }
        };
        let now = now_micros();
        let mut sched = Scheduler::recover(opts.config.clone(), ledger, now)?;
        let loads = Arc::new(match LoadTable::open(LOADS_NAME, &seg) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                LoadTable::create(LOADS_NAME, opts.load_slots, &seg)?
            }
            Err(e) => return Err(e),
        });
        sched.set_heartbeat_source(Some(loads.clone()));
        let ring = match Ring::open(REPORTS_RING, &seg) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let ropts = RingOptions {
                    capacity: opts.reports_capacity,
                    multi_producer: true,
                    max_producers: opts.load_slots.clamp(1, 1024),
                    max_subscribers: 1,
                    segment: seg.clone(),
                    ..RingOptions::default()
                };
                Ring::create(REPORTS_RING, &ropts)?
            }
            Err(e) => return Err(e),
        };
        let mut reports = ring.consumer()?;
        reports.set_ack_mode(AckMode::Manual);
        let mut inner = Inner {
            core: Core {
                sched,
                seg,
                loads: loads.clone(),
                registry: Arc::new(Registry::new(loads.clone(), REGISTRY_CACHE)),
                inboxes: HashMap::new(),
                asking: HashMap::new(),
                outcomes: VecDeque::new(),
                stats: DispatcherStats::default(),
                last_error: None,
            },
            loads,
            liveness_interval: opts.liveness_interval,
            last_liveness: now,
            last_tick: 0,
            batch: opts.batch,
        };
        inner.ask_agents_to_register()?;
        Ok(Dispatcher { inner, reports })
    }

    /// Accepts a task (written to the ledger before this returns) and delivers what can be
    /// delivered. `Full` when the queue is at `max_queued` or the type's rate limit has no
    /// token: nothing was accepted, the caller keeps the task.
    pub fn submit(
        &mut self,
        agent_type: &AgentType,
        priority: Priority,
        payload: Vec<u8>,
    ) -> Result<TaskId> {
        self.inner.submit(agent_type, priority, payload)
    }

    /// One round: handles up to `batch` report frames, checks agents' processes (every
    /// `liveness_interval`), ticks the scheduler (leases, heartbeats), writes deliveries and
    /// revokes into inboxes. When nothing was ready, waits up to `timeout` for a report first.
    /// Returns how many report frames were handled.
    pub fn step(&mut self, timeout: Duration) -> Result<usize> {
        let mut n = self.inner.poll(&mut self.reports)?;
        if n == 0 && !timeout.is_zero() && self.reports.wait(WaitStrategy::default(), timeout)? {
            n = self.inner.poll(&mut self.reports)?;
        }
        Ok(n)
    }

    /// The next finished task (result or dead letter), in the order they ended.
    pub fn poll_outcome(&mut self) -> Option<(TaskId, Outcome)> {
        self.inner.core.outcomes.pop_front()
    }

    /// The scheduler (read-only: every event goes through the dispatcher).
    pub fn scheduler(&self) -> &Scheduler<AnyLedger> {
        &self.inner.core.sched
    }

    /// The shared load table.
    pub fn loads(&self) -> &LoadTable {
        &self.inner.loads
    }

    /// The registered agents: look one up by id (through the LRU cache) or list a type's,
    /// from any thread.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.core.registry
    }

    /// The counters.
    pub fn stats(&self) -> DispatcherStats {
        self.inner.stats()
    }

    /// The last report refused, for diagnostics.
    pub fn last_report_error(&self) -> Option<&Error> {
        self.inner.core.last_error.as_ref()
    }

    /// Removes every segment of a scheduler directory (ledger, reports ring, load table,
    /// inboxes) — after its dispatcher and agents stopped; what is held still works until
    /// dropped.
    pub fn remove_segments(dir: &std::path::Path) -> Result<()> {
        let seg = super::segment_in(dir);
        for name in crate::shm::list(dir)? {
            let ours = name == REPORTS_RING
                || name == LOADS_NAME
                || name == format!("ledger.{LEDGER_NAME}")
                || name.starts_with("inbox.");
            if ours {
                let _ = std::fs::remove_file(crate::shm::segment_path(&seg.dir, &name));
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Finds the inboxes of the directory (a previous dispatcher's agents): each live agent is
    /// asked to register again (and asked again until it does), each dead one's inbox removed.
    fn ask_agents_to_register(&mut self) -> Result<()> {
        for name in crate::shm::list(&self.core.seg.dir)? {
            let Some(id) = name.strip_prefix("inbox.") else {
                continue;
            };
            if let Ok(id) = AgentId::new(id) {
                self.core.ask(&id);
            }
        }
        self.core.ask_again();
        Ok(())
    }

    pub(super) fn submit(
        &mut self,
        agent_type: &AgentType,
        priority: Priority,
        payload: Vec<u8>,
    ) -> Result<TaskId> {
        let id = self
            .core
            .sched
            .submit(agent_type, priority, payload, now_micros())?;
        self.core.carry_out();
        Ok(id)
    }

    /// Handles ready reports, liveness, leases; never waits.
    pub(super) fn poll(&mut self, reports: &mut Consumer) -> Result<usize> {
        let core = &mut self.core;
        let n = reports.poll(self.batch, |frame| core.handle_report(frame))?;
        if n > 0 {
            core.carry_out();
            // Only now is every effect of these frames in the ledger: release them.
            reports.ack();
        }
        let now = now_micros();
        if now.saturating_sub(self.last_liveness) >= self.liveness_interval {
            self.last_liveness = now;
            self.core.check_liveness(now);
            self.core.ask_again();
            self.loads.reclaim_dead();
        }
        if now.saturating_sub(self.last_tick) >= TICK_EVERY {
            self.last_tick = now;
            self.core.sched.tick(now);
            self.core.carry_out();
        }
        self.core.flush_pending();
        Ok(n)
    }

    pub(super) fn poll_outcome(&mut self) -> Option<(TaskId, Outcome)> {
        self.core.outcomes.pop_front()
    }

    pub(super) fn scheduler(&self) -> &Scheduler<AnyLedger> {
        &self.core.sched
    }

    pub(super) fn registry(&self) -> &Arc<Registry> {
        &self.core.registry
    }

    pub(super) fn stats(&self) -> DispatcherStats {
        let mut s = self.core.stats.clone();
        s.sched = self.core.sched.stats();
        s.agents = self.core.inboxes.len();
        s.pending_deliveries = self.core.inboxes.values().map(|i| i.pending.len()).sum();
        s.outcomes = self.core.outcomes.len();
        s
    }
}

impl Core {
    fn refuse(&mut self, e: Error) {
        self.stats.bad_reports += 1;
        self.last_error = Some(e);
    }

    fn handle_report(&mut self, frame: &[u8]) {
        self.stats.reports += 1;
        let now = now_micros();
        let f = match wire::decode_report(frame) {
            Ok(f) => f,
            Err(e) => return self.refuse(e),
        };
        let agent_of = match &f {
            ReportFrame::Started { agent, .. } | ReportFrame::Nack { agent, .. } => {
                Some(agent.clone())
            }
            _ => None,
        };
        let r = match f {
            ReportFrame::Hello {
                agent,
                pid,
                start_ticks,
                max_tasks,
                agent_type,
            } => self.hello(agent, pid, start_ticks, max_tasks, agent_type, now),
            ReportFrame::Started {
                agent,
                task,
                attempt,
            } => self.sched.started(&agent, task, attempt, now).map(|_| ()),
            ReportFrame::Ack {
                agent,
                task,
                attempt,
                result,
            } => self
                .sched
                .ack(&agent, task, attempt, result.to_vec(), now)
                .map(|_| ()),
            ReportFrame::Nack {
                agent,
                task,
                attempt,
                reason,
            } => self
                .sched
                .nack(&agent, task, attempt, reason, now)
                .map(|_| ()),
            ReportFrame::Bye { agent } => self.bye(&agent, now),
        };
        if let Err(e) = r {
            if e.kind() == ErrorKind::NotFound {
                if let Some(a) = agent_of {
                    if !self.inboxes.contains_key(&a) {
                        // An agent that never said hello to this dispatcher (it missed the
                        // request, or its hello was refused): ask it.
                        self.ask(&a);
                    }
                }
            }
            self.refuse(e);
        }
    }

    fn hello(
        &mut self,
        agent: AgentId,
        pid: u32,
        start_ticks: u64,
        max_tasks: u32,
        agent_type: AgentType,
        now: Micros,
    ) -> Result<()> {
        if !process_alive(pid, start_ticks) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("hello from agent {agent}: its process {pid} is gone"),
            ));
        }
        if max_tasks == 0 || max_tasks > MAX_AGENT_TASKS {
            return Err(Error::invalid(format!(
                "hello from agent {agent}: max_tasks {max_tasks} is not in 1..={MAX_AGENT_TASKS}"
            )));
        }
        self.asking.remove(&agent);
        let same = self.inboxes.get(&agent).is_some_and(|i| {
            i.pid == pid && i.start_ticks == start_ticks && !i.producer.ring().is_closed()
        });
        if !same {
            let ring = Ring::open(&inbox_name(agent.as_str()), &self.seg)?;
            let producer = ring.producer()?;
            if let Some(old) = self.inboxes.get(&agent) {
                // The previous incarnation's inbox (already replaced by the agent): no more
                // frames go there.
                old.producer.ring().close();
            }
            self.inboxes.insert(
                agent.clone(),
                Inbox {
                    producer,
                    pending: VecDeque::new(),
                    pid,
                    start_ticks,
                    asked: false,
                },
            );
        }
        if let Some(i) = self.inboxes.get_mut(&agent) {
            i.asked = false;
        }
        let liveness = Liveness::Process {
            pid,
            start_time: start_ticks,
        };
        let r =
            self.sched
                .register_agent(agent.clone(), agent_type.clone(), max_tasks, liveness, now);
        match &r {
            Ok(()) => {
                // The agent claimed its load slot before its hello.
                if let Some(slot) = self.loads.find(&agent) {
                    let _ = self
                        .registry
                        .adopt(agent, agent_type, max_tasks, liveness, slot);
                }
            }
            Err(_) if !same => {
                self.inboxes.remove(&agent);
            }
            Err(_) => {}
        }
        r
    }

    fn bye(&mut self, agent: &AgentId, now: Micros) -> Result<()> {
        // The agent removes its inbox itself before it says goodbye (a new incarnation may
        // already have made a new one under the same name: never remove by name here).
        if let Some(i) = self.inboxes.remove(agent) {
            i.producer.ring().close();
        }
        let _ = self.registry.forget(agent);
        self.sched.unregister_agent(agent, now)
    }

    /// Starts asking agent `id` (not registered here) to say hello, through its inbox.
    fn ask(&mut self, id: &AgentId) {
        if self.inboxes.contains_key(id) || self.asking.contains_key(id) {
            return;
        }
        let Ok(ring) = Ring::open(&inbox_name(id.as_str()), &self.seg) else {
            return;
        };
        if let Ok(p) = ring.producer() {
            self.asking.insert(id.clone(), p);
        }
    }

    /// Writes a hello request into the inbox of every agent being asked; the inbox of one
    /// found gone is removed.
    fn ask_again(&mut self) {
        let hello = wire::encode_inbox(&InboxFrame::Hello);
        let mut gone = Vec::new();
        for (id, p) in self.asking.iter_mut() {
            if remove_if_abandoned(&self.loads, &self.seg, id) {
                p.ring().close();
                gone.push(id.clone());
                continue;
            }
            // Full: the agent has frames to read first; asked again at the next check.
            if let Err(e) = p.send(&hello) {
                if e.kind() == ErrorKind::Closed {
                    gone.push(id.clone());
                }
            }
        }
        for id in gone {
            self.asking.remove(&id);
        }
    }

    /// Declares dead every agent whose process is gone; their leases go back to the queue.
    /// An agent alive but forgotten by the scheduler (its heartbeats were missed: a handler
    /// that ran too long) is asked to register again.
    fn check_liveness(&mut self, now: Micros) {
        for (id, i) in self.inboxes.iter_mut() {
            if !i.asked && self.sched.agent_load(id).is_none() {
                let _ = self.registry.forget(id);
                i.asked = true;
                i.pending.push_back(wire::encode_inbox(&InboxFrame::Hello));
            }
        }
        let dead: Vec<AgentId> = self
            .inboxes
            .iter()
            .filter(|(_, i)| !process_alive(i.pid, i.start_ticks))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.stats.deaths += 1;
            let _ = self.registry.forget(&id);
            let _ = self.sched.agent_dead(&id, now);
            if let Some(i) = self.inboxes.remove(&id) {
                // Its frames are void (the leases were released): a replacement with the same
                // id starts with a new, empty inbox of its own.
                i.producer.ring().close();
                remove_if_abandoned(&self.loads, &self.seg, &id);
            }
        }
    }

    /// Carries out the scheduler's actions.
    fn carry_out(&mut self) {
        while let Some(a) = self.sched.poll_action() {
            match a {
                Action::Deliver {
                    agent,
                    task,
                    attempt,
                    payload,
                    deadline,
                } => {
                    let Some(inbox) = self.inboxes.get_mut(&agent) else {
                        // Registered without an inbox cannot happen (hello makes both);
                        // the lease expires and the task goes elsewhere.
                        continue;
                    };
                    if inbox.pending.is_empty() {
                        match inbox.producer.try_claim(TASK_HEADER + payload.len()) {
                            Ok(mut c) => {
                                let b = c.as_mut_slice();
                                wire::put_task_header(b, task, attempt, deadline);
                                b[TASK_HEADER..].copy_from_slice(&payload);
                                c.commit();
                                continue;
                            }
                            Err(e) if e.kind() == ErrorKind::Full => {}
                            // Closed or too large: the lease expires, the task is retried
                            // and, if it never fits, dead-lettered with the reason.
                            Err(e) => {
                                self.last_error = Some(e);
                                continue;
                            }
                        }
                    }
                    inbox
                        .pending
                        .push_back(wire::encode_inbox(&InboxFrame::Task {
                            task,
                            attempt,
                            deadline,
                            payload: &payload,
                        }));
                }
                Action::Revoke {
                    agent,
                    task,
                    attempt,
                } => {
                    if let Some(inbox) = self.inboxes.get_mut(&agent) {
                        inbox
                            .pending
                            .push_back(wire::encode_inbox(&InboxFrame::Revoke { task, attempt }));
                    }
                }
                Action::Result { task, result } => {
                    self.outcomes.push_back((task, Outcome::Done(result)))
                }
                Action::DeadLetter { task, reason } => {
                    self.outcomes.push_back((task, Outcome::DeadLetter(reason)))
                }
            }
        }
        self.flush_pending();
    }

    /// Writes waiting inbox frames, in order, as far as there is space.
    fn flush_pending(&mut self) {
        for (agent, inbox) in self.inboxes.iter_mut() {
            // A waiting delivery whose lease has ended (expired, released, completed) is void:
            // drop it rather than let a stuck agent's backlog grow with every redelivery.
            let sched = &self.sched;
            inbox.pending.retain(|f| match wire::decode_inbox(f) {
                Ok(InboxFrame::Task { task, attempt, .. }) => sched
                    .lease_of(task)
                    .is_some_and(|(a, n)| a == *agent && n == attempt),
                _ => true,
            });
            while let Some(f) = inbox.pending.front() {
                match inbox.producer.send(f) {
                    Ok(()) => {
                        inbox.pending.pop_front();
                    }
                    Err(e) if e.kind() == ErrorKind::Full => break,
                    Err(_) => {
                        // Closed: the agent left; its leases are released by bye/death.
                        inbox.pending.clear();
                    }
                }
            }
        }
    }
}
