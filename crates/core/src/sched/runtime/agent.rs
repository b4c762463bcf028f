//! One agent's end of a scheduler directory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::wire::{self, InboxFrame, ReportFrame};
use super::{now_micros, segment_in, LOADS_NAME, REPORTS_RING};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{Consumer, Producer, Ring, RingOptions, WaitStrategy};
use crate::router::inbox_name;
use crate::sched::loads::{LoadTable, SlotRef};
use crate::sched::types::{AgentId, AgentType, Attempt, Liveness, Micros, TaskId};
use crate::shm::process_start_ticks;

/// The longest an idle [`Agent::recv`] waits between two heartbeats.
const HEARTBEAT_SLICE: Duration = Duration::from_millis(500);

/// How an [`Agent`] joins a scheduler directory.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The scheduler directory ([`super::RuntimeOptions::dir`]).
    pub dir: PathBuf,
    /// The agent's id (unique among the live agents of the directory).
    pub id: AgentId,
    /// Its type: the tasks it takes.
    pub agent_type: AgentType,
    /// Tasks it may hold at once (default 5, at least 1).
    pub max_tasks: u32,
    /// Bytes of its inbox ring (default 256 KiB; a power of two from 4 KiB): the largest
    /// task payload it can take is a quarter of it, less 21 bytes.
    pub inbox_capacity: usize,
    /// Report `started` when [`Agent::recv`] hands a task out (default true): the scheduler
    /// then never steals it. Off saves a frame per task; tasks may then be stolen while
    /// running, and the first result wins.
    pub report_started: bool,
    /// How long a report waits for space in a full reports ring before
    /// [`ErrorKind::Timeout`] (default 10 s; the task's lease then expires and it is
    /// delivered again: nothing is lost).
    pub report_timeout: Duration,
}

impl AgentOptions {
    /// Default options for agent `id` of `agent_type` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, id: AgentId, agent_type: AgentType) -> AgentOptions {
        AgentOptions {
            dir: dir.into(),
            id,
            agent_type,
            max_tasks: crate::sched::DEFAULT_MAX_TASKS,
            inbox_capacity: 256 << 10,
            report_started: true,
            report_timeout: Duration::from_secs(10),
        }
    }
}

/// A task leased to this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task.
    pub id: TaskId,
    /// The attempt (reports quote it).
    pub attempt: Attempt,
    /// When the lease expires ([`super::now_micros`]); a result after it may lose to another
    /// agent's.
    pub deadline: Micros,
    /// The payload.
    pub payload: Vec<u8>,
    /// When it was handed out (for the latency in the load table).
    received: Micros,
}

/// One agent: its inbox, its producer on the reports ring, its load slot.
pub struct Agent {
    opts: AgentOptions,
    inbox: Consumer,
    inbox_ring: Ring,
    reports: Producer,
    loads: LoadTable,
    slot: SlotRef,
    backlog: VecDeque<Task>,
    buf: Vec<u8>,
    pid: u32,
    start_ticks: u64,
    left: bool,
}

impl Agent {
    /// Joins the directory: creates the agent's inbox, claims its load slot and says hello to
    /// the dispatcher. `NotFound` when no dispatcher ever opened the directory; `Busy` when
    /// a live agent already has this id.
    pub fn connect(opts: AgentOptions) -> Result<Agent> {
        if opts.max_tasks == 0 {
            return Err(Error::invalid(format!(
                "agent {}: max_tasks must be at least 1",
                opts.id
            )));
        }
        let seg = segment_in(&opts.dir);
        let reports = Ring::open(REPORTS_RING, &seg)
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("no scheduler in {}", opts.dir.display()),
                    )
                } else {
                    e
                }
            })?
            .producer()?;
        let loads = LoadTable::open(LOADS_NAME, &seg)?;
        let pid = std::process::id();
        let start_ticks = process_start_ticks(pid);
        let liveness = Liveness::Process {
            pid,
            start_time: start_ticks,
        };
        let slot = loads.claim(&opts.id, liveness, opts.max_tasks, now_micros())?;
        let name = inbox_name(opts.id.as_str());
        let (inbox_ring, inbox) = match Self::fresh_inbox(&name, &opts) {
            Ok(c) => c,
            Err(e) => {
                let _ = loads.release(slot);
                return Err(e);
            }
        };
        let mut a = Agent {
            opts,
            inbox,
            inbox_ring,
            reports,
            loads,
            slot,
            backlog: VecDeque::new(),
            buf: Vec::with_capacity(256),
            pid,
            start_ticks,
            left: false,
        };
        a.hello()?;
        Ok(a)
    }

    /// A new, empty inbox: a stale one (its agent dead) is replaced.
    fn fresh_inbox(name: &str, opts: &AgentOptions) -> Result<(Ring, Consumer)> {
        let ropts = RingOptions {
            capacity: opts.inbox_capacity,
            max_producers: 1,
            max_subscribers: 1,
            ..RingOptions::in_dir(&opts.dir)
        };
        if let Ok(old) = Ring::open(name, &ropts.segment) {
            // The load slot was ours to claim, so no live agent has this id: the inbox is a
            // dead incarnation's. Its frames are void (the dispatcher released its leases).
            old.close();
            old.unlink()?;
        }
        let ring = Ring::create(name, &ropts)?;
        let consumer = ring.consumer()?;
        Ok((ring, consumer))
    }

    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.opts.id
    }

    fn report(&mut self, f: &ReportFrame<'_>) -> Result<()> {
        wire::encode_report(f, &mut self.buf);
        // No deadline when the timeout is too long to add (Duration::MAX: wait for ever).
        let deadline = Instant::now().checked_add(self.opts.report_timeout);
        loop {
            match self.reports.send_timeout(
                &self.buf,
                WaitStrategy::SpinThenYield { spins: 100 },
                Duration::from_millis(50),
            ) {
                Err(e)
                    if e.kind() == ErrorKind::Timeout
                        && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    // The dispatcher is slow or restarting: stay alive in the table.
                    let _ = self.loads.heartbeat(self.slot, now_micros());
                }
                other => return other,
            }
        }
    }

    fn hello(&mut self) -> Result<()> {
        let f = ReportFrame::Hello {
            agent: self.opts.id.clone(),
            pid: self.pid,
            start_ticks: self.start_ticks,
            max_tasks: self.opts.max_tasks,
            agent_type: self.opts.agent_type.clone(),
        };
        self.report(&f)
    }

    /// Records a sign of life in the load table (done by every [`Agent::recv`]; a handler that
    /// runs longer than the scheduler's heartbeat timeout calls it now and then).
    pub fn heartbeat(&self) -> Result<()> {
        self.loads.heartbeat(self.slot, now_micros())
    }

    /// Reads what the inbox holds into the backlog (revokes drop waiting tasks).
    fn drain_inbox(&mut self) -> Result<bool> {
        let mut hello = false;
        let mut bad = None;
        let backlog = &mut self.backlog;
        self.inbox
            .poll(256, |frame| match wire::decode_inbox(frame) {
                Ok(InboxFrame::Task {
                    task,
                    attempt,
                    deadline,
                    payload,
                }) => backlog.push_back(Task {
                    id: task,
                    attempt,
                    deadline,
                    payload: payload.to_vec(),
                    received: 0,
                }),
                Ok(InboxFrame::Revoke { task, attempt }) => {
                    backlog.retain(|t| !(t.id == task && t.attempt == attempt))
                }
                Ok(InboxFrame::Hello) => hello = true,
                Err(e) => bad = Some(e),
            })?;
        if hello {
            self.hello()?;
        }
        if let Some(e) = bad {
            // Only the dispatcher writes here; a bad frame is a bug or damage: say so, the
            // lease of whatever it was expires and the task is delivered again.
            return Err(e);
        }
        Ok(!self.backlog.is_empty())
    }

    /// The next task, waiting up to `timeout` for one (`None` when none came). Records a
    /// heartbeat; reports `started` unless [`AgentOptions::report_started`] is off.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Task>> {
        self.heartbeat()?;
        if self.backlog.is_empty() {
            self.drain_inbox()?;
        }
        // Wait in slices, with a heartbeat after each: a long timeout on an idle agent must
        // not look like a dead agent to the scheduler.
        let deadline = Instant::now().checked_add(timeout);
        while self.backlog.is_empty() && !timeout.is_zero() {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => HEARTBEAT_SLICE,
            };
            if left.is_zero() {
                break;
            }
            if self
                .inbox
                .wait(WaitStrategy::default(), left.min(HEARTBEAT_SLICE))?
            {
                self.drain_inbox()?;
            } else {
                self.heartbeat()?;
            }
        }
        let Some(mut t) = self.backlog.pop_front() else {
            return Ok(None);
        };
        t.received = now_micros();
        let _ = self.loads.update(self.slot, 1, None);
        if self.opts.report_started {
            let f = ReportFrame::Started {
                agent: self.opts.id.clone(),
                task: t.id,
                attempt: t.attempt,
            };
            self.report(&f)?;
        }
        Ok(Some(t))
    }

    /// Reports `task` done with `result`. A result larger than the reports ring's largest
    /// frame (a quarter of [`super::RuntimeOptions::reports_capacity`], less the frame's
    /// header) is refused with `TooLarge`: the task's lease then expires and, after
    /// `max_attempts`, the task is dead-lettered with the reason — never dropped silently.
    pub fn complete(&mut self, task: &Task, result: &[u8]) -> Result<()> {
        let latency = now_micros().saturating_sub(task.received);
        let _ = self.loads.update(self.slot, -1, Some(latency));
        let f = ReportFrame::Ack {
            agent: self.opts.id.clone(),
            task: task.id,
            attempt: task.attempt,
            result,
        };
        self.report(&f)
    }

    /// Gives `task` back (it is delivered again, to another agent when one has room, until
    /// the scheduler's `max_attempts`).
    pub fn fail(&mut self, task: &Task, reason: &str) -> Result<()> {
        let _ = self.loads.update(self.slot, -1, None);
        let f = ReportFrame::Nack {
            agent: self.opts.id.clone(),
            task: task.id,
            attempt: task.attempt,
            reason,
        };
        self.report(&f)
    }

    /// Runs `handler` on every task until `stop` returns true (checked between tasks and at
    /// least every `poll`): `Ok(result)` completes the task, `Err(reason)` fails it.
    pub fn run(
        &mut self,
        poll: Duration,
        mut stop: impl FnMut() -> bool,
        mut handler: impl FnMut(&Task) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<u64> {
        let mut done = 0;
        while !stop() {
            if let Some(t) = self.recv(poll)? {
                match handler(&t) {
                    Ok(r) => self.complete(&t, &r)?,
                    Err(reason) => self.fail(&t, &reason)?,
                }
                done += 1;
            }
        }
        Ok(done)
    }

    /// Leaves the directory: says goodbye (the dispatcher releases whatever this agent still
    /// holds and removes its inbox) and frees the load slot. Dropping an agent does the same.
    pub fn leave(mut self) -> Result<()> {
        self.leave_inner()
    }

    fn leave_inner(&mut self) -> Result<()> {
        if self.left {
            return Ok(());
        }
        self.left = true;
        let f = ReportFrame::Bye {
            agent: self.opts.id.clone(),
        };
        let r = self.report(&f);
        // The inbox is ours to remove while we hold the id's load slot: no other incarnation
        // can have replaced it.
        self.inbox_ring.close();
        let _ = self.inbox_ring.unlink();
        let _ = self.loads.release(self.slot);
        r
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.leave_inner();
    }
}
