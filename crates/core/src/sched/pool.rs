//! The pool manager: a state machine without I/O that keeps a pool of agents of one type
//! between `min_size` and `max_size` — pre-warmed, replaced when they die, grown under demand
//! and shrunk when idle (the original design's `erlmcp_flow_pool_manager`).
//!
//! The host starts and stops agents (an Erlang spawn, a Python callable in a worker process, a
//! command line for OS-process agents); the pool only decides. It takes events, each with a
//! clock reading `now` (µs of any monotonic clock, the same one for every call on a pool):
//! [`Pool::ensure_min`], [`Pool::started`], [`Pool::start_failed`], [`Pool::agent_gone`],
//! [`Pool::observe`], [`Pool::demand`], [`Pool::tick`], and the host carries out the
//! [`PoolAction`]s it takes from [`Pool::poll_action`]: start one agent
//! ([`PoolAction::Start`], answered by `started(slot, id)` or `start_failed(slot)`) or stop an
//! idle one ([`PoolAction::Stop`]).
//!
//! # The rules
//!
//! * **Bounds.** Agents *live* (reported started, not gone, not told to stop) plus starts in
//!   flight (*starting*: a `Start` issued and not yet answered nor timed out) never exceed
//!   [`PoolConfig::max_size`]. At most [`PoolConfig::max_starting`] starts are in flight.
//! * **Warm-up.** While live + starting < [`PoolConfig::min_size`], the pool starts agents
//!   one at a time: the first at once, then at most one start per
//!   [`PoolConfig::warmup_delay`] (so a pool of 5 with a 100 ms delay is warm after about
//!   400 ms plus the start time). Every event re-evaluates this; [`Pool::tick`] (or
//!   [`Pool::ensure_min`], named after the original `ensure_min_pool/0`) must be called
//!   regularly for delayed starts to happen. A new pool starts nothing until its first event.
//! * **Replacement.** A live agent reported gone ([`Pool::agent_gone`]: it died) is removed;
//!   if the pool is then below `min_size`, a start is owed and issued under the warm-up rule.
//!   A replacement start that succeeds is counted in [`PoolStats::replaced`]; one that fails
//!   is owed again.
//! * **Growth.** The host reports how many tasks of the pool's type wait ([`Pool::demand`])
//!   and each agent's tasks in flight ([`Pool::observe`]; a new agent has none). When more
//!   tasks wait than starts are in flight and no live agent is idle (every one has
//!   in-flight > 0, or there is none), one more agent is started, under the warm-up spacing,
//!   `max_starting` and `max_size`.
//! * **Shrink.** An agent idle (in-flight 0) for [`PoolConfig::idle_timeout`] while more than
//!   `min_size` agents are live and no task waits is sent a [`PoolAction::Stop`] — the one idle
//!   longest first, never taking the pool below `min_size`. From then on it is no longer live
//!   (nor counted towards `max_size`); [`Pool::agent_gone`] for it afterwards is expected and
//!   is not a death (no replacement), and [`Pool::observe`] for it is ignored.
//! * **Start timeout.** A start not answered within [`PoolConfig::start_timeout`] counts as
//!   failed (at the next `tick`/`ensure_min`). If the host reports it started later, the agent
//!   is adopted when the pool has room under `max_size`, else it is sent a `Stop` at once; a
//!   late `start_failed` is accepted and changes nothing. The pool remembers the last
//!   [`TIMED_OUT_MEMORY`] timed-out slots for this.
//! * **Back-off.** After `n` consecutive failed starts (reported or timed out), no start is
//!   issued before `min(max(warmup_delay, MIN_BACKOFF) × 2^n, max_backoff)` µs from the last
//!   failure ([`MIN_BACKOFF`] = 10 ms, [`PoolConfig::max_backoff`] default 30 s): a broken
//!   start command is retried ever more slowly, never spun on. A successful start resets `n`.
//! * **Errors.** A slot never issued, or an agent not in the pool: [`ErrorKind::NotFound`];
//!   a slot already answered, or `started` with an id already in the pool:
//!   [`ErrorKind::InvalidArgument`]. Nothing changes on an error.
//!
//! A `now` smaller than one seen before is taken as the latest one seen: a clock that steps
//! back delays the pool, never confuses it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::error::{Error, ErrorKind, Result};

use super::types::{AgentId, AgentType, Micros};

/// The shortest back-off base after a failed start, 10 ms: with a `warmup_delay` of 0 a
/// failing start command is still not spun on.
pub const MIN_BACKOFF: Micros = 10_000;

/// How many timed-out start slots the pool remembers (oldest forgotten first), so that a late
/// `started`/`start_failed` for them is recognised rather than refused.
pub const TIMED_OUT_MEMORY: usize = 1024;

/// A pool's settings. [`PoolConfig::new`] gives the defaults for a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The type of the agents the pool starts.
    pub agent_type: AgentType,
    /// Agents kept alive at all times (pre-warmed; dead ones replaced). Default 5.
    pub min_size: u32,
    /// Never more agents (live + starting) than this; at least 1 and at least `min_size`.
    /// Default 20.
    pub max_size: u32,
    /// An agent idle this long while the pool is above `min_size` is stopped. Default 60 s; at
    /// least 1 µs.
    pub idle_timeout: Micros,
    /// At most one start per this period (the first at once). Default 100 ms; may be 0.
    pub warmup_delay: Micros,
    /// Starts in flight at once. Default 2; at least 1.
    pub max_starting: u32,
    /// A start not answered by then counts as failed. Default 30 s; at least 1 µs.
    pub start_timeout: Micros,
    /// The longest back-off after consecutive failed starts. Default 30 s; at least 1 µs.
    pub max_backoff: Micros,
}

impl PoolConfig {
    /// The defaults for agents of type `agent_type`: min 5, max 20, idle timeout 60 s, warm-up
    /// delay 100 ms, 2 starts in flight, start timeout 30 s, back-off up to 30 s.
    pub fn new(agent_type: AgentType) -> PoolConfig {
        PoolConfig {
            agent_type,
            min_size: 5,
            max_size: 20,
            idle_timeout: 60_000_000,
            warmup_delay: 100_000,
            max_starting: 2,
            start_timeout: 30_000_000,
            max_backoff: 30_000_000,
        }
    }

    /// Checks the settings ([`ErrorKind::InvalidArgument`] naming the first wrong one).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.max_size == 0 {
            return bad("pool max_size must be at least 1".into());
        }
        if self.min_size > self.max_size {
            return bad(format!(
                "pool min_size {} exceeds max_size {}",
                self.min_size, self.max_size
            ));
        }
        if self.max_starting == 0 {
            return bad("pool max_starting must be at least 1".into());
        }
        if self.idle_timeout == 0 {
            return bad("pool idle_timeout must be at least 1 µs".into());
        }
        if self.start_timeout == 0 {
            return bad("pool start_timeout must be at least 1 µs".into());
        }
        if self.max_backoff == 0 {
            return bad("pool max_backoff must be at least 1 µs".into());
        }
        Ok(())
    }
}

impl Default for PoolConfig {
    /// [`PoolConfig::new`] for the agent type `"agent"`: set `agent_type` to the pool's own
    /// (`PoolConfig { agent_type, ..PoolConfig::default() }`).
    fn default() -> PoolConfig {
        PoolConfig::new(AgentType::new("agent").expect("a valid agent type"))
    }
}

/// What the host must do for the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Start one agent of the pool's type; answer with [`Pool::started`]`(slot, id)` or
    /// [`Pool::start_failed`]`(slot, ..)`. Slots are unique per pool, from 1 on.
    Start {
        /// The start's number, quoted in the answer.
        slot: u64,
    },
    /// Stop this agent gracefully (it is idle); it is no longer counted in the pool.
    Stop {
        /// The agent.
        agent: AgentId,
    },
}

/// A pool's counters ([`Pool::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Agents live (started, not gone, not told to stop).
    pub live: u32,
    /// Starts in flight.
    pub starting: u32,
    /// Live agents with no task in flight.
    pub idle: u32,
    /// Live agents with tasks in flight.
    pub busy: u32,
    /// Agents told to stop and not yet reported gone.
    pub stopping: u32,
    /// Starts that succeeded (late ones adopted included).
    pub started_total: u64,
    /// `Stop` actions issued.
    pub stopped_total: u64,
    /// Starts that failed (reported, or timed out).
    pub failed_starts: u64,
    /// Starts that timed out (included in `failed_starts`).
    pub timed_out_starts: u64,
    /// Live agents reported gone (deaths; stopped agents are not counted).
    pub died: u64,
    /// Successful starts that replaced a dead agent.
    pub replaced: u64,
}

/// A start in flight.
#[derive(Debug, Clone, Copy)]
struct Starting {
    deadline: Micros,
    replacement: bool,
}

/// A live agent.
#[derive(Debug, Clone, Copy)]
struct Live {
    in_flight: u32,
    /// When it last became idle (in-flight 0); `None` while busy.
    idle_since: Option<Micros>,
}

/// A pool manager for agents of one type. See the module doc for the rules.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    now: Micros,
    next_slot: u64,
    starting: BTreeMap<u64, Starting>,
    timed_out: BTreeSet<u64>,
    agents: BTreeMap<AgentId, Live>,
    stopping: BTreeSet<AgentId>,
    queued: usize,
    /// No start before this time (warm-up spacing and back-off).
    next_start_at: Micros,
    consecutive_failures: u32,
    owed_replacements: u32,
    actions: VecDeque<PoolAction>,
    stats: PoolStats,
}

impl Pool {
    /// A pool with `config` (checked: [`ErrorKind::InvalidArgument`]). Nothing is started
    /// until its first event (typically [`Pool::ensure_min`]).
    pub fn new(config: PoolConfig) -> Result<Pool> {
        config.validate()?;
        Ok(Pool {
            config,
            now: 0,
            next_slot: 1,
            starting: BTreeMap::new(),
            timed_out: BTreeSet::new(),
            agents: BTreeMap::new(),
            stopping: BTreeSet::new(),
            queued: 0,
            next_start_at: 0,
            consecutive_failures: 0,
            owed_replacements: 0,
            actions: VecDeque::new(),
            stats: PoolStats::default(),
        })
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Brings the pool towards `min_size` (the original `ensure_min_pool/0`): times out late
    /// starts and issues the starts the warm-up rule allows now. Like [`Pool::tick`] without
    /// stopping idle agents.
    pub fn ensure_min(&mut self, now: Micros) {
        self.advance(now);
        self.expire_starts();
        self.pump();
    }

    /// Advances time: times out late starts, stops agents idle past `idle_timeout` above
    /// `min_size`, and issues the starts the rules allow now. Call it regularly (every
    /// `warmup_delay` or so).
    pub fn tick(&mut self, now: Micros) {
        self.advance(now);
        self.expire_starts();
        self.shrink();
        self.pump();
    }

    /// The host started agent `agent` for start `slot`. The agent is live and idle. A slot
    /// that timed out is adopted when there is room under `max_size`, else the agent is sent a
    /// `Stop`. Errors: slot never issued ([`ErrorKind::NotFound`]); slot already answered, or
    /// `agent` already in the pool ([`ErrorKind::InvalidArgument`]).
    pub fn started(&mut self, slot: u64, agent: AgentId, now: Micros) -> Result<()> {
        let late = self.check_slot(slot)?;
        if self.agents.contains_key(&agent) || self.stopping.contains(&agent) {
            return Err(Error::invalid(format!(
                "agent {agent} is already in the pool (report it gone before reusing its id)"
            )));
        }
        self.advance(now);
        self.consecutive_failures = 0;
        self.stats.started_total += 1;
        if late {
            self.timed_out.remove(&slot);
            if self.size() < self.config.max_size as usize {
                self.add_live(agent);
            } else {
                self.stop(agent);
            }
        } else {
            let s = self.starting.remove(&slot).expect("checked");
            if s.replacement {
                self.stats.replaced += 1;
            }
            self.add_live(agent);
        }
        self.pump();
        Ok(())
    }

    /// Start `slot` failed (`reason` is for the host's log; the pool keeps no text). Counts
    /// towards the back-off. A slot that already timed out is accepted and changes nothing.
    /// Errors as [`Pool::started`].
    pub fn start_failed(&mut self, slot: u64, reason: &str, now: Micros) -> Result<()> {
        let _ = reason;
        let late = self.check_slot(slot)?;
        self.advance(now);
        if late {
            self.timed_out.remove(&slot);
        } else {
            let s = self.starting.remove(&slot).expect("checked");
            self.fail_start(s);
        }
        self.pump();
        Ok(())
    }

    /// Agent `agent` died or stopped. A live one is removed (a death: replaced if the pool
    /// falls below `min_size`); one told to stop is forgotten. [`ErrorKind::NotFound`] for an
    /// agent not in the pool.
    pub fn agent_gone(&mut self, agent: &AgentId, now: Micros) -> Result<()> {
        if self.stopping.remove(agent) {
            self.advance(now);
            self.pump();
            return Ok(());
        }
        if self.agents.remove(agent).is_none() {
            return Err(not_in_pool(agent));
        }
        self.advance(now);
        self.stats.died += 1;
        if self.size() < self.config.min_size as usize {
            self.owed_replacements += 1;
        }
        self.pump();
        Ok(())
    }

    /// Agent `agent` has `in_flight` tasks now (0: idle from now on, unless it was already).
    /// Ignored for an agent told to stop; [`ErrorKind::NotFound`] for one not in the pool.
    pub fn observe(&mut self, agent: &AgentId, in_flight: u32, now: Micros) -> Result<()> {
        if self.stopping.contains(agent) {
            return Ok(());
        }
        if !self.agents.contains_key(agent) {
            return Err(not_in_pool(agent));
        }
        self.advance(now);
        let t = self.now;
        let a = self.agents.get_mut(agent).expect("checked");
        a.in_flight = in_flight;
        if in_flight > 0 {
            a.idle_since = None;
        } else if a.idle_since.is_none() {
            a.idle_since = Some(t);
        }
        self.pump();
        Ok(())
    }

    /// `queued` tasks of the pool's type wait (the latest reading replaces the previous one).
    pub fn demand(&mut self, queued: usize, now: Micros) {
        self.advance(now);
        self.queued = queued;
        self.pump();
    }

    /// Takes the next action to carry out, oldest first.
    pub fn poll_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    /// The next action [`Pool::poll_action`] would take, left in place (a host whose buffer
    /// for it is too small can retry).
    pub fn peek_action(&self) -> Option<&PoolAction> {
        self.actions.front()
    }

    /// The live agents, in id order.
    pub fn agents(&self) -> Vec<AgentId> {
        self.agents.keys().cloned().collect()
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let idle = self.agents.values().filter(|a| a.in_flight == 0).count() as u32;
        PoolStats {
            live: self.agents.len() as u32,
            starting: self.starting.len() as u32,
            idle,
            busy: self.agents.len() as u32 - idle,
            stopping: self.stopping.len() as u32,
            ..self.stats
        }
    }

    /// When the pool next needs a `tick` for a start it is waiting to issue (warm-up spacing or
    /// back-off), a start to time out, or an idle agent to stop; `None` when nothing is
    /// pending in time. Hosts may sleep until then instead of ticking at a fixed period.
    pub fn next_deadline(&self) -> Option<Micros> {
        let mut d: Option<Micros> = self.starting.values().map(|s| s.deadline).min();
        let mut at = |t: Micros| d = Some(d.map_or(t, |x| x.min(t)));
        if self.wants_start() && self.next_start_at > self.now {
            at(self.next_start_at);
        }
        if self.agents.len() > self.config.min_size as usize {
            if let Some(t) = self.agents.values().filter_map(|a| a.idle_since).min() {
                at(t.saturating_add(self.config.idle_timeout));
            }
        }
        d
    }

    // ---- internals ----

    fn advance(&mut self, now: Micros) {
        self.now = self.now.max(now);
    }

    /// Live + starting: what `max_size` bounds.
    fn size(&self) -> usize {
        self.agents.len() + self.starting.len()
    }

    /// Whether `slot` is a start in flight (`Ok(false)`) or one that timed out (`Ok(true)`).
    fn check_slot(&self, slot: u64) -> Result<bool> {
        if self.starting.contains_key(&slot) {
            return Ok(false);
        }
        if self.timed_out.contains(&slot) {
            return Ok(true);
        }
        if slot == 0 || slot >= self.next_slot {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("pool start slot {slot} was never issued"),
            ));
        }
        Err(Error::invalid(format!(
            "pool start slot {slot} was already answered (or timed out long ago)"
        )))
    }

    fn add_live(&mut self, agent: AgentId) {
        self.agents.insert(
            agent,
            Live {
                in_flight: 0,
                idle_since: Some(self.now),
            },
        );
    }

    fn stop(&mut self, agent: AgentId) {
        self.stopping.insert(agent.clone());
        self.stats.stopped_total += 1;
        self.actions.push_back(PoolAction::Stop { agent });
    }

    fn fail_start(&mut self, s: Starting) {
        self.stats.failed_starts += 1;
        if s.replacement {
            self.owed_replacements += 1;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let backoff = self.backoff(self.consecutive_failures);
        self.next_start_at = self.next_start_at.max(self.now.saturating_add(backoff));
    }

    /// The back-off after `n` (≥ 1) consecutive failures.
    fn backoff(&self, n: u32) -> Micros {
        let base = self.config.warmup_delay.max(MIN_BACKOFF);
        let shift = n.min(63);
        base.checked_shl(shift)
            .filter(|v| v >> shift == base)
            .unwrap_or(Micros::MAX)
            .min(self.config.max_backoff)
    }

    fn expire_starts(&mut self) {
        let now = self.now;
        let late: Vec<u64> = self
            .starting
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(&slot, _)| slot)
            .collect();
        for slot in late {
            let s = self.starting.remove(&slot).expect("listed");
            self.stats.timed_out_starts += 1;
            self.fail_start(s);
            self.timed_out.insert(slot);
            if self.timed_out.len() > TIMED_OUT_MEMORY {
                self.timed_out.pop_first();
            }
        }
    }

    fn shrink(&mut self) {
        if self.queued > 0 {
            return;
        }
        let now = self.now;
        let mut idle: Vec<(Micros, AgentId)> = self
            .agents
            .iter()
            .filter_map(|(id, a)| {
                a.idle_since
                    .filter(|&t| now.saturating_sub(t) >= self.config.idle_timeout)
                    .map(|t| (t, id.clone()))
            })
            .collect();
        idle.sort();
        for (_, id) in idle {
            if self.agents.len() <= self.config.min_size as usize {
                break;
            }
            self.agents.remove(&id);
            self.stop(id);
        }
    }

    /// Whether the rules want another start now (bounds and timing aside).
    fn wants_start(&self) -> bool {
        if self.size() < self.config.min_size as usize {
            return true;
        }
        let all_busy = self.agents.values().all(|a| a.in_flight > 0);
        all_busy && self.queued > self.starting.len()
    }

    /// Issues the starts the rules allow now.
    fn pump(&mut self) {
        // Replacements owed beyond what would bring the pool back to `min_size` (the pool
        // recovered otherwise: a late start adopted) are forgiven.
        let short = (self.config.min_size as usize).saturating_sub(self.size());
        self.owed_replacements = self.owed_replacements.min(short as u32);
        while self.wants_start()
            && self.size() < self.config.max_size as usize
            && self.starting.len() < self.config.max_starting as usize
            && self.now >= self.next_start_at
        {
            let slot = self.next_slot;
            self.next_slot += 1;
            let replacement = self.owed_replacements > 0;
            if replacement {
                self.owed_replacements -= 1;
            }
            self.starting.insert(
                slot,
                Starting {
                    deadline: self.now.saturating_add(self.config.start_timeout),
                    replacement,
                },
            );
            self.next_start_at = self.now.saturating_add(self.config.warmup_delay);
            self.actions.push_back(PoolAction::Start { slot });
        }
    }
}

fn not_in_pool(agent: &AgentId) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("agent {agent} is not in the pool"),
    )
}

#[cfg(test)]
mod tests;
