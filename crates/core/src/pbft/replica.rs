//! The PBFT replica state machine (see the module docs of [`super`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::auth::{Authenticator, Principal};
use super::wire::{
    batch_digest, sha256, Checkpoint, Digest, Fetch, Limits, Message, NewView, PrePrepare,
    PreparedCert, Reply, Request, StateMsg, ViewChange, Vote, R, W,
};
use super::{App, Config, Dest, Outgoing, Stats};
use crate::error::{Error, ErrorKind, Result};

/// One sequence number's log entry.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// The accepted pre-prepare of the current view.
    pre_prepare: Option<PrePrepare>,
    /// Prepares of the current view, by replica (any digest; matched against the pre-prepare).
    prepares: BTreeMap<u32, Vote>,
    /// Commits of the current view, by replica.
    commits: BTreeMap<u32, Vote>,
    prepared: bool,
    committed: bool,
    /// The highest-view prepared certificate this replica holds for the sequence number
    /// (kept across view changes: it goes into view-change messages).
    cert: Option<PreparedCert>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CachedReply {
    timestamp: u64,
    result: Vec<u8>,
}

/// The one batch executed tentatively, and how to undo it.
#[derive(Debug, Clone)]
struct Tentative {
    seq: u64,
    /// The view in which the batch was prepared and executed.
    view: u64,
    /// The executed batch's digest: its results are kept at commit only for this batch.
    digest: Digest,
    /// The application's state before the batch.
    undo: Vec<u8>,
    /// The reply cache entries the batch replaced, in execution order.
    replies_undo: Vec<(u64, Option<CachedReply>)>,
    /// The requests executed and their results.
    done: Vec<(Request, Vec<u8>)>,
}

/// A PBFT replica: a state machine without I/O, stepped by [`Replica::handle`] and
/// [`Replica::tick`], over an application `A` and an authenticator `K`.
#[derive(Clone)]
pub struct Replica<A: App, K: Authenticator> {
    cfg: Config,
    lim: Limits,
    f: usize,
    id: u32,
    keys: K,
    app: A,
    view: u64,
    /// Sent a view change for `view`, waiting for its new view.
    changing: bool,
    log: BTreeMap<u64, Slot>,
    /// h: the stable checkpoint's sequence number.
    low: u64,
    stable_digest: Digest,
    stable_proof: Vec<Checkpoint>,
    checkpoints: BTreeMap<u64, BTreeMap<u32, Checkpoint>>,
    /// This replica's own states at checkpoints >= h (served to lagging replicas).
    snapshots: BTreeMap<u64, Vec<u8>>,
    /// The last sequence number committed and executed.
    executed: u64,
    tentative: Option<Tentative>,
    /// The last sequence number assigned (primary) or re-issued (new view).
    next_seq: u64,
    /// Requests the primary has not ordered yet.
    pending: VecDeque<Request>,
    pending_keys: BTreeSet<(u64, u64)>,
    batch_since: Option<u64>,
    /// (client, timestamp) -> sequence number, for the pre-prepared requests in the log.
    known: BTreeMap<(u64, u64), u64>,
    /// The last reply to each client (part of the replicated state).
    replies: BTreeMap<u64, CachedReply>,
    /// Requests seen and not executed yet: they drive the view-change timer.
    waiting: BTreeMap<(u64, u64), Request>,
    vc_deadline: Option<u64>,
    vc_timeout: u64,
    /// During a view change, when to send our view change again (it may have been lost).
    vc_resend: Option<u64>,
    /// The new view this replica issued as primary of the current view (sent again to a
    /// replica still asking for the view).
    new_view_msg: Option<Vec<u8>>,
    view_changes: BTreeMap<u64, BTreeMap<u32, ViewChange>>,
    /// The stable checkpoint being fetched: (seq, digest), and when to ask again.
    fetching: Option<(u64, Digest)>,
    fetch_again: u64,
    stats: Stats,
    now: u64,
    /// Mutation for the model checker: execute tentatively at pre-prepare (unsafe).
    #[cfg(test)]
    pub(crate) loose_tentative: bool,
}

fn forged(what: &'static str) -> Error {
    Error::invalid(what)
}

impl<A: App, K: Authenticator> Replica<A, K> {
    /// Replica `id` (`0..n`) of a group with `config`, signing with `keys`, over `app` in its
    /// initial state (every replica must start from the same state).
    pub fn new(config: Config, id: u32, keys: K, app: A) -> Result<Self> {
        config.validate()?;
        if id as usize >= config.n {
            return Err(Error::invalid(format!(
                "pbft: replica id {id} is not below n = {}",
                config.n
            )));
        }
        let mut r = Replica {
            lim: config.limits(),
            f: config.f(),
            vc_timeout: config.view_change_timeout_us,
            cfg: config,
            id,
            keys,
            app,
            view: 0,
            changing: false,
            log: BTreeMap::new(),
            low: 0,
            stable_digest: [0; 32],
            stable_proof: Vec::new(),
            checkpoints: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            executed: 0,
            tentative: None,
            next_seq: 0,
            pending: VecDeque::new(),
            pending_keys: BTreeSet::new(),
            batch_since: None,
            known: BTreeMap::new(),
            replies: BTreeMap::new(),
            waiting: BTreeMap::new(),
            vc_deadline: None,
            vc_resend: None,
            new_view_msg: None,
            view_changes: BTreeMap::new(),
            fetching: None,
            fetch_again: 0,
            stats: Stats::default(),
            now: 0,
            #[cfg(test)]
            loose_tentative: false,
        };
        let state = r.encode_state();
        r.stable_digest = sha256(&state);
        r.snapshots.insert(0, state);
        Ok(r)
    }

    /// This replica's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The group's parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current view (the target view during a view change).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether a view change is under way (sent, new view not installed).
    pub fn in_view_change(&self) -> bool {
        self.changing
    }

    /// Whether this replica is the primary of its view.
    pub fn is_primary(&self) -> bool {
        self.primary(self.view) == self.id
    }

    /// The last sequence number committed and executed.
    pub fn last_executed(&self) -> u64 {
        self.executed
    }

    /// The sequence number executed tentatively, if one is.
    pub fn tentative_seq(&self) -> Option<u64> {
        self.tentative.as_ref().map(|t| t.seq)
    }

    /// Requests executed tentatively (not committed yet).
    pub fn tentative_requests(&self) -> usize {
        self.tentative.as_ref().map_or(0, |t| t.done.len())
    }

    /// h, the low watermark: the last stable checkpoint.
    pub fn low_watermark(&self) -> u64 {
        self.low
    }

    /// Log entries held (garbage-collected at each stable checkpoint).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Counters of what was refused and done.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The application (its state includes any tentative execution).
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The earliest time [`Replica::tick`] has something to do, if any.
    pub fn next_deadline_us(&self) -> Option<u64> {
        let batch = if self.is_primary() && !self.changing && !self.pending.is_empty() {
            self.batch_since.map(|t| t + self.cfg.batch_window_us)
        } else {
            None
        };
        let fetch = self.fetching.map(|_| self.fetch_again);
        [self.vc_deadline, batch, self.vc_resend, fetch]
            .into_iter()
            .flatten()
            .min()
    }

    fn primary(&self, view: u64) -> u32 {
        (view % self.cfg.n as u64) as u32
    }

    fn quorum(&self) -> usize {
        2 * self.f + 1
    }

    fn in_window(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.low + self.cfg.log_window
    }

    /// Handles one message from `from` (the transport's idea of the sender) at `now_us`,
    /// appending what to send to `out`. Garbage, oversized and forged messages are refused
    /// with an error (and counted); stale ones are ignored (and counted).
    pub fn handle(
        &mut self,
        from: Principal,
        bytes: &[u8],
        now_us: u64,
        out: &mut Vec<Outgoing>,
    ) -> Result<()> {
        self.now = self.now.max(now_us);
        let r = Message::decode(bytes, &self.lim).and_then(|m| self.step(from, m, out));
        if let Err(e) = &r {
            match e.kind() {
                ErrorKind::TooLarge => self.stats.oversized += 1,
                ErrorKind::Corrupt => self.stats.garbage += 1,
                _ => self.stats.forged += 1,
            }
        }
        r
    }

    /// Advances the clock to `now_us`: view-change timers and the batch window.
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<Outgoing>) {
        self.now = self.now.max(now_us);
        if let Some(d) = self.vc_deadline {
            if self.now >= d {
                if self.changing || !self.waiting.is_empty() {
                    self.start_view_change(self.view + 1, out);
                } else {
                    // What we waited for was settled (e.g. by a state transfer).
                    self.vc_deadline = None;
                }
            }
        }
        if let Some(t) = self.vc_resend {
            if self.changing && self.now >= t {
                if let Some(vc) = self
                    .view_changes
                    .get(&self.view)
                    .and_then(|m| m.get(&self.id))
                {
                    out.push(Outgoing {
                        to: Dest::AllReplicas,
                        payload: vc.encode(),
                    });
                }
                self.vc_resend = Some(self.now + self.cfg.view_change_timeout_us);
            }
        }
        if self.fetching.is_some() && self.now >= self.fetch_again {
            self.send_fetch(out);
        }
        if self.is_primary() && !self.changing {
            self.maybe_order(out);
        }
    }

    /// Starts a view change now, as if the timer had expired (for tests and for a host that
    /// detects a faulty primary by other means).
    pub fn suspect_primary(&mut self, now_us: u64, out: &mut Vec<Outgoing>) {
        self.now = self.now.max(now_us);
        self.start_view_change(self.view + 1, out);
    }

    fn sender_is(from: Principal, replica: u32) -> Result<()> {
        if from == Principal::Replica(replica) {
            Ok(())
        } else {
            Err(forged("pbft: the sender is not the replica that signed"))
        }
    }

    fn step(&mut self, from: Principal, m: Message, out: &mut Vec<Outgoing>) -> Result<()> {
        match m {
            Message::Request(r) => {
                if !r.verify(&self.keys) {
                    return Err(forged("pbft: bad client signature on a request"));
                }
                self.on_request(r, out);
                Ok(())
            }
            Message::PrePrepare(p) => {
                Self::sender_is(from, p.replica)?;
                if p.replica != self.primary(p.view) {
                    return Err(forged("pbft: a pre-prepare from a backup"));
                }
                if !p.verify(&self.keys) {
                    return Err(forged("pbft: bad signature on a pre-prepare"));
                }
                self.on_pre_prepare(p, out)
            }
            Message::Prepare(v) => {
                Self::sender_is(from, v.replica)?;
                if !v.verify(&self.keys, false) {
                    return Err(forged("pbft: bad signature on a prepare"));
                }
                if v.replica == self.primary(v.view) {
                    return Err(forged("pbft: a prepare from the primary"));
                }
                self.on_vote(v, false, out);
                Ok(())
            }
            Message::Commit(v) => {
                Self::sender_is(from, v.replica)?;
                if !v.verify(&self.keys, true) {
                    return Err(forged("pbft: bad signature on a commit"));
                }
                self.on_vote(v, true, out);
                Ok(())
            }
            Message::Checkpoint(c) => {
                Self::sender_is(from, c.replica)?;
                if !c.verify(&self.keys) {
                    return Err(forged("pbft: bad signature on a checkpoint"));
                }
                self.on_checkpoint(c, out);
                Ok(())
            }
            Message::ViewChange(vc) => {
                Self::sender_is(from, vc.replica)?;
                self.on_view_change(vc, out)
            }
            Message::NewView(nv) => {
                Self::sender_is(from, nv.replica)?;
                self.on_new_view(nv, out)
            }
            Message::Fetch(f) => {
                Self::sender_is(from, f.replica)?;
                if !self
                    .keys
                    .verify(Principal::Replica(f.replica), &f.body(), &f.sig)
                {
                    return Err(forged("pbft: bad signature on a state fetch"));
                }
                match self.snapshots.get(&f.seq) {
                    Some(state) if f.replica != self.id => {
                        let mut m = StateMsg {
                            seq: f.seq,
                            state: state.clone(),
                            replica: self.id,
                            sig: [0; 64],
                        };
                        m.sign(&self.keys);
                        out.push(Outgoing {
                            to: Dest::Replica(f.replica),
                            payload: Message::State(m).encode(),
                        });
                    }
                    _ => self.stats.stale += 1,
                }
                Ok(())
            }
            Message::State(s) => {
                Self::sender_is(from, s.replica)?;
                if !self
                    .keys
                    .verify(Principal::Replica(s.replica), &s.body(), &s.sig)
                {
                    return Err(forged("pbft: bad signature on a state"));
                }
                self.on_state(s, out)
            }
            Message::Reply(_) => Err(Error::corrupt("pbft: a reply sent to a replica")),
        }
    }

    // ---- Normal case ----

    fn on_request(&mut self, r: Request, out: &mut Vec<Outgoing>) {
        let key = (r.client, r.timestamp);
        if let Some(c) = self.replies.get(&r.client) {
            if r.timestamp < c.timestamp {
                self.stats.stale += 1;
                return;
            }
            if r.timestamp == c.timestamp {
                // A retransmission of an executed request: answer from the cache.
                let tentative = self
                    .tentative
                    .as_ref()
                    .is_some_and(|t| t.done.iter().any(|(q, _)| q.client == r.client));
                let result = c.result.clone();
                self.send_reply(r.client, r.timestamp, result, tentative, out);
                // Tentative or committed here, maybe not at the others: repeat our votes.
                if let Some(&seq) = self.known.get(&key) {
                    self.retransmit(seq, out);
                }
                if tentative {
                    // Not committed: the client still waits, so do we.
                    self.wait_for(r);
                }
                self.stats.stale += 1;
                return;
            }
        }
        if let Some(&seq) = self.known.get(&key) {
            // Ordered but not executed: the client is retransmitting, so something was lost
            // (or the primary misbehaves: the timer runs).
            self.retransmit(seq, out);
            self.wait_for(r);
            self.stats.stale += 1;
            return;
        }
        if self.changing {
            self.wait_for(r);
            return;
        }
        if self.is_primary() {
            if self.pending_keys.contains(&key) {
                self.stats.stale += 1;
                return;
            }
            if self.pending.len() >= self.cfg.max_pending {
                self.stats.dropped_requests += 1;
                return;
            }
            self.wait_for(r.clone());
            self.pending_keys.insert(key);
            self.pending.push_back(r);
            self.batch_since.get_or_insert(self.now);
            self.maybe_order(out);
        } else {
            // Relay to the primary (the client may have sent to us only); the timer runs:
            // the primary must order it in time.
            out.push(Outgoing {
                to: Dest::Replica(self.primary(self.view)),
                payload: r.encode(),
            });
            self.wait_for(r);
        }
    }

    /// Remembers a request not committed yet and, at a backup, starts the view-change timer
    /// if it is not running.
    fn wait_for(&mut self, r: Request) {
        let key = (r.client, r.timestamp);
        if !self.waiting.contains_key(&key) {
            if self.waiting.len() >= self.cfg.max_pending {
                self.stats.dropped_requests += 1;
                return;
            }
            self.waiting.insert(key, r);
        }
        // The primary times its own requests too: a primary whose batches cannot commit
        // (e.g. a backup left for a later view alone) joins a view change rather than wait.
        if !self.changing {
            self.vc_deadline.get_or_insert(self.now + self.vc_timeout);
        }
    }

    fn retransmit(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        if let Some(p) = &slot.pre_prepare {
            if p.replica == self.id {
                out.push(Outgoing {
                    to: Dest::AllReplicas,
                    payload: Message::PrePrepare(p.clone()).encode(),
                });
            }
        }
        if let Some(v) = slot.prepares.get(&self.id) {
            out.push(Outgoing {
                to: Dest::AllReplicas,
                payload: v.encode(false),
            });
        }
        if let Some(v) = slot.commits.get(&self.id) {
            out.push(Outgoing {
                to: Dest::AllReplicas,
                payload: v.encode(true),
            });
        }
    }

    /// The primary orders pending requests: a full batch at once, a partial one when the
    /// batch window has passed, as long as the log window has room.
    fn maybe_order(&mut self, out: &mut Vec<Outgoing>) {
        while !self.pending.is_empty() {
            if self.next_seq + 1 > self.low + self.cfg.log_window {
                return; // back-pressure: wait for a stable checkpoint
            }
            let full = self.pending.len() >= self.cfg.batch_max;
            let due = self
                .batch_since
                .is_some_and(|t| self.now >= t + self.cfg.batch_window_us);
            if !full && !due {
                return;
            }
            let mut batch = Vec::new();
            // A pre-prepare must fit in a message: at most half of one in requests (a request
            // alone always fits: Config::validate).
            let budget = self.cfg.max_message_bytes / 2;
            let mut bytes = 0;
            while batch.len() < self.cfg.batch_max {
                let Some(r) = self.pending.front() else {
                    break;
                };
                let size = r.op.len() + 100;
                if !batch.is_empty() && bytes + size > budget {
                    break;
                }
                bytes += size;
                let r = self.pending.pop_front().unwrap();
                let key = (r.client, r.timestamp);
                self.pending_keys.remove(&key);
                let done = self
                    .replies
                    .get(&r.client)
                    .is_some_and(|c| c.timestamp >= r.timestamp);
                if !done && !self.known.contains_key(&key) {
                    batch.push(r);
                }
            }
            // What is left arrived before the batch was cut: its window is as old.
            if self.pending.is_empty() {
                self.batch_since = None;
            }
            if batch.is_empty() {
                continue;
            }
            self.next_seq += 1;
            let mut p = PrePrepare {
                view: self.view,
                seq: self.next_seq,
                digest: batch_digest(&batch),
                batch,
                replica: self.id,
                sig: [0; 64],
            };
            p.sign(&self.keys);
            for r in &p.batch {
                self.known.insert((r.client, r.timestamp), p.seq);
            }
            out.push(Outgoing {
                to: Dest::AllReplicas,
                payload: Message::PrePrepare(p.clone()).encode(),
            });
            self.stats.batches += 1;
            let seq = p.seq;
            self.log.entry(seq).or_default().pre_prepare = Some(p);
            self.check_prepared(seq, out);
        }
    }

    fn on_pre_prepare(&mut self, p: PrePrepare, out: &mut Vec<Outgoing>) -> Result<()> {
        if p.view != self.view || self.changing || !self.in_window(p.seq) || self.is_primary() {
            self.stats.stale += 1;
            return Ok(());
        }
        let slot = self.log.entry(p.seq).or_default();
        if let Some(old) = &slot.pre_prepare {
            if old.digest != p.digest {
                return Err(forged(
                    "pbft: the primary sent two pre-prepares for one sequence number",
                ));
            }
            self.stats.stale += 1;
            let seq = p.seq;
            self.retransmit(seq, out);
            return Ok(());
        }
        let (view, seq, digest) = (p.view, p.seq, p.digest);
        for r in &p.batch {
            self.known.insert((r.client, r.timestamp), seq);
        }
        slot.pre_prepare = Some(p);
        let mut v = Vote {
            view,
            seq,
            digest,
            replica: self.id,
            sig: [0; 64],
        };
        v.sign(&self.keys, false);
        out.push(Outgoing {
            to: Dest::AllReplicas,
            payload: v.encode(false),
        });
        slot.prepares.insert(self.id, v);
        self.check_prepared(seq, out);
        #[cfg(test)]
        if self.loose_tentative {
            self.try_execute(out);
        }
        Ok(())
    }

    fn on_vote(&mut self, v: Vote, commit: bool, out: &mut Vec<Outgoing>) {
        if v.view != self.view || self.changing || !self.in_window(v.seq) {
            self.stats.stale += 1;
            return;
        }
        let slot = self.log.entry(v.seq).or_default();
        let votes = if commit {
            &mut slot.commits
        } else {
            &mut slot.prepares
        };
        if votes.contains_key(&v.replica) {
            self.stats.stale += 1;
            return;
        }
        let seq = v.seq;
        votes.insert(v.replica, v);
        if commit {
            self.check_committed(seq, out);
        } else {
            self.check_prepared(seq, out);
        }
    }

    fn check_prepared(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        let primary = self.primary(self.view);
        let need = 2 * self.f;
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        if slot.prepared {
            return;
        }
        let Some(p) = &slot.pre_prepare else { return };
        let matching: Vec<Vote> = slot
            .prepares
            .values()
            .filter(|v| v.digest == p.digest && v.replica != primary)
            .cloned()
            .collect();
        if matching.len() < need {
            return;
        }
        slot.prepared = true;
        slot.cert = Some(PreparedCert {
            pre_prepare: p.clone(),
            prepares: matching,
        });
        let mut c = Vote {
            view: self.view,
            seq,
            digest: p.digest,
            replica: self.id,
            sig: [0; 64],
        };
        c.sign(&self.keys, true);
        out.push(Outgoing {
            to: Dest::AllReplicas,
            payload: c.encode(true),
        });
        slot.commits.insert(self.id, c);
        self.check_committed(seq, out);
    }

    fn check_committed(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        let quorum = self.quorum();
        if let Some(slot) = self.log.get_mut(&seq) {
            // Counted only once prepared: a commit certificate needs a prepared request.
            if slot.prepared && !slot.committed {
                let digest = slot.pre_prepare.as_ref().map(|p| p.digest);
                let n = slot
                    .commits
                    .values()
                    .filter(|v| Some(v.digest) == digest)
                    .count();
                slot.committed = n >= quorum;
            }
        }
        self.try_execute(out);
    }

    // ---- Execution ----

    fn try_execute(&mut self, out: &mut Vec<Outgoing>) {
        let mut progressed = false;
        while self.fetching.is_none() {
            let s = self.executed + 1;
            let Some(slot) = self.log.get(&s) else { break };
            if slot.committed {
                let committed = slot.pre_prepare.as_ref().unwrap();
                let digest = committed.digest;
                let batch = committed.batch.clone();
                let keep = self
                    .tentative
                    .as_ref()
                    .is_some_and(|t| t.seq == s && t.view == self.view && t.digest == digest);
                if keep {
                    // Its commit arrived: the tentative results become committed.
                    let t = self.tentative.take().unwrap();
                    for (r, result) in t.done {
                        self.settle(r.client, r.timestamp);
                        self.send_reply(r.client, r.timestamp, result, false, out);
                    }
                } else {
                    // Not the batch executed tentatively (if any): undo that, run this one.
                    if self.tentative.is_some() {
                        self.rollback();
                    }
                    self.execute_batch(&batch, false, out);
                }
                self.executed = s;
                progressed = true;
                if s % self.cfg.checkpoint_interval == 0 {
                    self.take_checkpoint(s, out);
                }
                continue;
            }
            // Never during a view change: the prepared flags are the last installed view's,
            // and a reply tagged with the target view would claim a certificate of it.
            if self.may_run_tentatively(slot)
                && self.cfg.tentative
                && self.tentative.is_none()
                && !self.changing
            {
                let p = slot.pre_prepare.as_ref().unwrap();
                let (digest, batch) = (p.digest, p.batch.clone());
                let undo = self.app.snapshot();
                let (done, replies_undo) = self.execute_batch(&batch, true, out);
                self.tentative = Some(Tentative {
                    seq: s,
                    view: self.view,
                    digest,
                    undo,
                    replies_undo,
                    done,
                });
                progressed = true;
            }
            break;
        }
        if progressed && !self.changing {
            self.vc_deadline = if self.waiting.is_empty() {
                None
            } else {
                Some(self.now + self.vc_timeout)
            };
        }
        if self.is_primary() && !self.changing {
            self.maybe_order(out);
        }
    }

    /// Prepared (the only safe rule); the model's mutation loosens it to pre-prepared.
    fn may_run_tentatively(&self, slot: &Slot) -> bool {
        #[cfg(test)]
        if self.loose_tentative && slot.pre_prepare.is_some() {
            return true;
        }
        slot.prepared
    }

    #[allow(clippy::type_complexity)]
    fn execute_batch(
        &mut self,
        batch: &[Request],
        tentative: bool,
        out: &mut Vec<Outgoing>,
    ) -> (Vec<(Request, Vec<u8>)>, Vec<(u64, Option<CachedReply>)>) {
        let mut done = Vec::new();
        let mut undo = Vec::new();
        for r in batch {
            if self
                .replies
                .get(&r.client)
                .is_some_and(|c| c.timestamp >= r.timestamp)
            {
                continue; // executed before (dedup by client and timestamp)
            }
            let result = self.app.execute(r.client, &r.op);
            self.stats.executed += 1;
            let old = self.replies.insert(
                r.client,
                CachedReply {
                    timestamp: r.timestamp,
                    result: result.clone(),
                },
            );
            undo.push((r.client, old));
            if !tentative {
                self.settle(r.client, r.timestamp);
            }
            self.send_reply(r.client, r.timestamp, result.clone(), tentative, out);
            done.push((r.clone(), result));
        }
        (done, undo)
    }

    /// A request of `client` with `timestamp` committed: its earlier requests can never
    /// execute (dedup), so they stop waiting (and stop driving the view-change timer).
    fn settle(&mut self, client: u64, timestamp: u64) {
        self.waiting
            .retain(|&(c, ts), _| c != client || ts > timestamp);
        if self
            .pending_keys
            .iter()
            .any(|&(c, ts)| c == client && ts <= timestamp)
        {
            self.pending_keys
                .retain(|&(c, ts)| c != client || ts > timestamp);
            self.pending
                .retain(|r| r.client != client || r.timestamp > timestamp);
        }
    }

    fn send_reply(
        &mut self,
        client: u64,
        timestamp: u64,
        result: Vec<u8>,
        tentative: bool,
        out: &mut Vec<Outgoing>,
    ) {
        let mut m = Reply {
            view: self.view,
            client,
            timestamp,
            replica: self.id,
            tentative,
            result,
            sig: [0; 64],
        };
        m.sign(&self.keys);
        out.push(Outgoing {
            to: Dest::Client(client),
            payload: Message::Reply(m).encode(),
        });
    }

    /// Undoes the tentative execution, if any: state, reply cache, and the requests go back
    /// to waiting.
    fn rollback(&mut self) {
        let Some(t) = self.tentative.take() else {
            return;
        };
        // Our own snapshot: restoring it cannot meet foreign bytes.
        if let Err(e) = self.app.restore(&t.undo) {
            debug_assert!(false, "restoring our own snapshot failed: {e}");
        }
        for (client, old) in t.replies_undo.into_iter().rev() {
            match old {
                Some(c) => self.replies.insert(client, c),
                None => self.replies.remove(&client),
            };
        }
        for (r, _) in t.done {
            self.waiting.insert((r.client, r.timestamp), r);
        }
        self.stats.rollbacks += 1;
    }

    // ---- Checkpoints and state transfer ----

    fn encode_state(&self) -> Vec<u8> {
        let mut w = W::default();
        w.bytes(&self.app.snapshot());
        w.u32(self.replies.len() as u32);
        for (c, r) in &self.replies {
            w.u64(*c);
            w.u64(r.timestamp);
            w.bytes(&r.result);
        }
        w.0
    }

    fn install_state(&mut self, state: &[u8]) -> Result<()> {
        let mut r = R::new(state);
        let app = r.bytes(usize::MAX, "snapshot")?;
        let n = r.u32()?;
        let mut replies = BTreeMap::new();
        for _ in 0..n {
            let c = r.u64()?;
            let timestamp = r.u64()?;
            let result = r.bytes(self.lim.max_message, "result")?.to_vec();
            replies.insert(c, CachedReply { timestamp, result });
        }
        r.end()?;
        self.app.restore(app)?;
        self.replies = replies;
        Ok(())
    }

    fn take_checkpoint(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        let state = self.encode_state();
        let mut c = Checkpoint {
            seq,
            digest: sha256(&state),
            replica: self.id,
            sig: [0; 64],
        };
        c.sign(&self.keys);
        self.snapshots.insert(seq, state);
        out.push(Outgoing {
            to: Dest::AllReplicas,
            payload: c.encode(),
        });
        self.on_checkpoint(c, out);
    }

    fn on_checkpoint(&mut self, c: Checkpoint, out: &mut Vec<Outgoing>) {
        if c.seq <= self.low || c.seq % self.cfg.checkpoint_interval != 0 {
            self.stats.stale += 1;
            return;
        }
        let (seq, digest, replica) = (c.seq, c.digest, c.replica);
        self.checkpoints.entry(seq).or_default().insert(replica, c);
        // At most L/K + 1 checkpoints per replica (its latest): bounded memory whatever a
        // Byzantine replica sends, and a replica far behind still sees the latest ones.
        let per_replica = (self.cfg.log_window / self.cfg.checkpoint_interval) as usize + 1;
        let mine: Vec<u64> = self
            .checkpoints
            .iter()
            .filter(|(_, set)| set.contains_key(&replica))
            .map(|(&s, _)| s)
            .collect();
        for old in &mine[..mine.len().saturating_sub(per_replica)] {
            if let Some(set) = self.checkpoints.get_mut(old) {
                set.remove(&replica);
            }
        }
        self.checkpoints.retain(|_, set| !set.is_empty());
        let Some(set) = self.checkpoints.get(&seq) else {
            return;
        };
        let proof: Vec<Checkpoint> = set
            .values()
            .filter(|c| c.digest == digest)
            .cloned()
            .collect();
        if proof.len() >= self.quorum() {
            self.make_stable(seq, digest, proof, out);
        }
    }

    fn make_stable(
        &mut self,
        seq: u64,
        digest: Digest,
        proof: Vec<Checkpoint>,
        out: &mut Vec<Outgoing>,
    ) {
        if seq <= self.low {
            return;
        }
        self.low = seq;
        self.stable_digest = digest;
        self.stable_proof = proof;
        self.log.retain(|&s, _| s > seq);
        self.checkpoints.retain(|&s, _| s > seq);
        self.snapshots.retain(|&s, _| s >= seq);
        self.known.retain(|_, &mut s| s > seq);
        self.next_seq = self.next_seq.max(seq);
        self.stats.stable_checkpoints += 1;
        if self.executed < seq {
            // Lagging: what we missed is gone from the log; fetch the state.
            self.rollback();
            self.fetching = Some((seq, digest));
            self.send_fetch(out);
        }
        if self.is_primary() && !self.changing {
            self.maybe_order(out);
        }
    }

    /// Asks the replicas that vouched for the stable checkpoint for its state (again after a
    /// view-change timeout, answers may be lost).
    fn send_fetch(&mut self, out: &mut Vec<Outgoing>) {
        let Some((seq, _)) = self.fetching else {
            return;
        };
        let mut f = Fetch {
            seq,
            replica: self.id,
            sig: [0; 64],
        };
        f.sign(&self.keys);
        let payload = Message::Fetch(f).encode();
        for c in &self.stable_proof {
            if c.replica != self.id {
                out.push(Outgoing {
                    to: Dest::Replica(c.replica),
                    payload: payload.clone(),
                });
            }
        }
        self.fetch_again = self.now + self.cfg.view_change_timeout_us;
    }

    fn on_state(&mut self, s: StateMsg, out: &mut Vec<Outgoing>) -> Result<()> {
        let Some((seq, digest)) = self.fetching else {
            self.stats.stale += 1;
            return Ok(());
        };
        if s.seq != seq {
            self.stats.stale += 1;
            return Ok(());
        }
        if sha256(&s.state) != digest {
            return Err(forged(
                "pbft: a state that does not match the stable checkpoint",
            ));
        }
        self.install_state(&s.state)?;
        self.tentative = None;
        self.executed = seq;
        self.fetching = None;
        self.snapshots.insert(seq, s.state);
        let replies = &self.replies;
        self.waiting
            .retain(|&(c, ts), _| replies.get(&c).is_none_or(|r| r.timestamp < ts));
        self.stats.state_transfers += 1;
        self.try_execute(out);
        Ok(())
    }

    // ---- View change ----

    fn start_view_change(&mut self, view: u64, out: &mut Vec<Outgoing>) {
        if view < self.view || (view == self.view && self.changing) {
            return;
        }
        self.rollback();
        self.view = view;
        self.changing = true;
        self.stats.view_changes += 1;
        self.pending.clear();
        self.pending_keys.clear();
        self.batch_since = None;
        let low = self.low;
        let mut vc = ViewChange {
            new_view: view,
            stable_seq: self.low,
            stable_digest: self.stable_digest,
            proof: self.stable_proof.clone(),
            prepared: self
                .log
                .iter()
                .filter(|(&s, _)| s > low)
                .filter_map(|(_, slot)| slot.cert.clone())
                .collect(),
            replica: self.id,
            sig: [0; 64],
        };
        vc.sign(&self.keys);
        out.push(Outgoing {
            to: Dest::AllReplicas,
            payload: vc.encode(),
        });
        self.view_changes.retain(|&v, _| v >= view);
        self.view_changes
            .entry(view)
            .or_default()
            .insert(self.id, vc);
        self.vc_timeout = self.vc_timeout.saturating_mul(2);
        // The timer for the next view starts only with 2f + 1 view changes for this one, so
        // a replica that lost a new view does not race ahead alone (Castro-Liskov 4.5.2).
        self.vc_deadline = None;
        self.vc_resend = Some(self.now + self.cfg.view_change_timeout_us);
        self.new_view_msg = None;
        self.arm_view_change_timer();
        self.try_new_view(out);
    }

    fn arm_view_change_timer(&mut self) {
        if self.changing
            && self
                .view_changes
                .get(&self.view)
                .is_some_and(|m| m.len() >= self.quorum())
        {
            self.vc_deadline.get_or_insert(self.now + self.vc_timeout);
        }
    }

    /// Checks a view change's signatures, checkpoint proof and prepared certificates.
    fn valid_view_change(&self, vc: &ViewChange) -> bool {
        if !self
            .keys
            .verify(Principal::Replica(vc.replica), &vc.body(), &vc.sig)
        {
            return false;
        }
        if vc.stable_seq > 0 {
            let signers: BTreeSet<u32> = vc
                .proof
                .iter()
                .filter(|c| {
                    c.seq == vc.stable_seq && c.digest == vc.stable_digest && c.verify(&self.keys)
                })
                .map(|c| c.replica)
                .collect();
            if signers.len() < self.quorum() {
                return false;
            }
        }
        let mut seqs = BTreeSet::new();
        for cert in &vc.prepared {
            let p = &cert.pre_prepare;
            if p.view >= vc.new_view
                || p.replica != self.primary(p.view)
                || p.seq <= vc.stable_seq
                || p.seq > vc.stable_seq + self.cfg.log_window
                || !seqs.insert(p.seq)
                || !p.verify(&self.keys)
            {
                return false;
            }
            let signers: BTreeSet<u32> = cert
                .prepares
                .iter()
                .filter(|v| {
                    v.view == p.view
                        && v.seq == p.seq
                        && v.digest == p.digest
                        && v.replica != p.replica
                        && v.verify(&self.keys, false)
                })
                .map(|v| v.replica)
                .collect();
            if signers.len() < 2 * self.f {
                return false;
            }
        }
        true
    }

    fn on_view_change(&mut self, vc: ViewChange, out: &mut Vec<Outgoing>) -> Result<()> {
        if vc.new_view < self.view || (vc.new_view == self.view && !self.changing) {
            if vc.new_view == self.view && vc.replica != self.id {
                // It missed our new view: send it again (it is self-certifying).
                if let Some(nv) = &self.new_view_msg {
                    out.push(Outgoing {
                        to: Dest::Replica(vc.replica),
                        payload: nv.clone(),
                    });
                }
            }
            self.stats.stale += 1;
            return Ok(());
        }
        if self
            .view_changes
            .get(&vc.new_view)
            .is_some_and(|m| m.get(&vc.replica) == Some(&vc))
        {
            self.stats.stale += 1;
            return Ok(());
        }
        if !self.valid_view_change(&vc) {
            return Err(forged("pbft: an invalid view change"));
        }
        let view = vc.new_view;
        // One view change per replica (its latest): bounded memory whatever it sends.
        for set in self.view_changes.values_mut() {
            set.remove(&vc.replica);
        }
        self.view_changes.retain(|_, set| !set.is_empty());
        self.view_changes
            .entry(view)
            .or_default()
            .insert(vc.replica, vc);
        // f + 1 replicas want a later view: at least one correct one does; join the smallest.
        let current = self.view;
        let mut later: BTreeMap<u32, u64> = BTreeMap::new();
        for (&v, set) in self.view_changes.range(current + 1..) {
            for &r in set.keys() {
                later.entry(r).or_insert(v);
            }
        }
        if later.len() > self.f {
            let target = *later.values().min().unwrap();
            self.start_view_change(target, out);
        }
        self.arm_view_change_timer();
        self.try_new_view(out);
        Ok(())
    }

    /// The new view's content from 2f + 1 view changes: the stable checkpoint to start from
    /// (its sequence number, digest and proof) and the batches re-issued above it.
    #[allow(clippy::type_complexity)]
    fn compute_new_view(
        &self,
        vcs: &[ViewChange],
    ) -> (u64, Digest, Vec<Checkpoint>, Vec<(u64, Vec<Request>)>) {
        let best = vcs.iter().max_by_key(|vc| vc.stable_seq).unwrap();
        let min_s = best.stable_seq;
        let mut chosen: BTreeMap<u64, &PrePrepare> = BTreeMap::new();
        for vc in vcs {
            for cert in &vc.prepared {
                let p = &cert.pre_prepare;
                if p.seq <= min_s {
                    continue;
                }
                let e = chosen.entry(p.seq).or_insert(p);
                if p.view > e.view {
                    *e = p;
                }
            }
        }
        let max_s = chosen.keys().next_back().copied().unwrap_or(min_s);
        let batches = (min_s + 1..=max_s)
            .map(|s| {
                (
                    s,
                    chosen.get(&s).map(|p| p.batch.clone()).unwrap_or_default(),
                )
            })
            .collect();
        (min_s, best.stable_digest, best.proof.clone(), batches)
    }

    fn try_new_view(&mut self, out: &mut Vec<Outgoing>) {
        let view = self.view;
        if !self.changing || self.primary(view) != self.id {
            return;
        }
        let Some(set) = self.view_changes.get(&view) else {
            return;
        };
        if set.len() < self.quorum() {
            return;
        }
        // Our own first (it is there: we sent it), then the lowest ids.
        let mut vcs: Vec<ViewChange> = Vec::new();
        if let Some(own) = set.get(&self.id) {
            vcs.push(own.clone());
        }
        for (r, vc) in set {
            if vcs.len() >= self.quorum() {
                break;
            }
            if *r != self.id {
                vcs.push(vc.clone());
            }
        }
        let (min_s, digest, proof, batches) = self.compute_new_view(&vcs);
        let pre_prepares: Vec<PrePrepare> = batches
            .into_iter()
            .map(|(seq, batch)| {
                let mut p = PrePrepare {
                    view,
                    seq,
                    digest: batch_digest(&batch),
                    batch,
                    replica: self.id,
                    sig: [0; 64],
                };
                p.sign(&self.keys);
                p
            })
            .collect();
        let mut nv = NewView {
            view,
            view_changes: vcs,
            pre_prepares: pre_prepares.clone(),
            replica: self.id,
            sig: [0; 64],
        };
        nv.sign(&self.keys);
        let payload = Message::NewView(nv).encode();
        out.push(Outgoing {
            to: Dest::AllReplicas,
            payload: payload.clone(),
        });
        self.new_view_msg = Some(payload);
        self.install_new_view(view, min_s, digest, proof, pre_prepares, out);
    }

    fn on_new_view(&mut self, nv: NewView, out: &mut Vec<Outgoing>) -> Result<()> {
        if nv.replica != self.primary(nv.view) {
            return Err(forged(
                "pbft: a new view from a replica that is not its primary",
            ));
        }
        if !self
            .keys
            .verify(Principal::Replica(nv.replica), &nv.body(), &nv.sig)
        {
            return Err(forged("pbft: bad signature on a new view"));
        }
        if nv.view < self.view || (nv.view == self.view && !self.changing) {
            self.stats.stale += 1;
            return Ok(());
        }
        let signers: BTreeSet<u32> = nv.view_changes.iter().map(|v| v.replica).collect();
        if signers.len() != nv.view_changes.len()
            || signers.len() < self.quorum()
            || nv
                .view_changes
                .iter()
                .any(|vc| vc.new_view != nv.view || !self.valid_view_change(vc))
        {
            return Err(forged("pbft: a new view without 2f + 1 valid view changes"));
        }
        let (min_s, digest, proof, batches) = self.compute_new_view(&nv.view_changes);
        let matches = batches.len() == nv.pre_prepares.len()
            && batches.iter().zip(&nv.pre_prepares).all(|((s, b), p)| {
                p.view == nv.view
                    && p.seq == *s
                    && p.replica == nv.replica
                    && p.digest == batch_digest(b)
                    && self
                        .keys
                        .verify(Principal::Replica(p.replica), &p.body(), &p.sig)
            });
        if !matches {
            return Err(forged(
                "pbft: a new view whose pre-prepares do not follow from its view changes",
            ));
        }
        if nv.view > self.view {
            self.stats.view_changes += 1;
        }
        self.install_new_view(nv.view, min_s, digest, proof, nv.pre_prepares, out);
        Ok(())
    }

    fn install_new_view(
        &mut self,
        view: u64,
        min_s: u64,
        digest: Digest,
        proof: Vec<Checkpoint>,
        pre_prepares: Vec<PrePrepare>,
        out: &mut Vec<Outgoing>,
    ) {
        // Whoever installs it (a backup on a new view, or the new primary on its own): the
        // tentative batch, if any, was not prepared in this view.
        self.rollback();
        self.view = view;
        self.changing = false;
        self.vc_resend = None;
        self.vc_timeout = self.cfg.view_change_timeout_us;
        self.view_changes.retain(|&v, _| v > view);
        if min_s > self.low {
            self.make_stable(min_s, digest, proof, out);
        }
        for slot in self.log.values_mut() {
            slot.pre_prepare = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.prepared = false;
            slot.committed = false;
        }
        self.known.clear();
        let max_s = pre_prepares.last().map_or(min_s, |p| p.seq);
        let primary = self.is_primary();
        for p in pre_prepares {
            let seq = p.seq;
            if !self.in_window(seq) {
                continue;
            }
            for r in &p.batch {
                self.known.insert((r.client, r.timestamp), seq);
            }
            let digest = p.digest;
            let slot = self.log.entry(seq).or_default();
            slot.pre_prepare = Some(p);
            if !primary {
                let mut v = Vote {
                    view,
                    seq,
                    digest,
                    replica: self.id,
                    sig: [0; 64],
                };
                v.sign(&self.keys, false);
                out.push(Outgoing {
                    to: Dest::AllReplicas,
                    payload: v.encode(false),
                });
                slot.prepares.insert(self.id, v);
            }
            self.check_prepared(seq, out);
        }
        self.next_seq = max_s.max(self.low);
        self.pending.clear();
        self.pending_keys.clear();
        if primary {
            let known = &self.known;
            let replies = &self.replies;
            for (key, r) in &self.waiting {
                let done = replies.get(&key.0).is_some_and(|c| c.timestamp >= key.1);
                if !done && !known.contains_key(key) {
                    self.pending.push_back(r.clone());
                    self.pending_keys.insert(*key);
                }
            }
            self.batch_since = (!self.pending.is_empty()).then_some(self.now);
            self.maybe_order(out);
        } else {
            self.batch_since = None;
        }
        self.vc_deadline = (!self.waiting.is_empty()).then_some(self.now + self.vc_timeout);
        self.try_execute(out);
    }

    /// Checkpoint and view-change messages held (bounded per replica).
    #[cfg(test)]
    pub(crate) fn held_votes(&self) -> (usize, usize) {
        (
            self.checkpoints.values().map(|m| m.len()).sum(),
            self.view_changes.values().map(|m| m.len()).sum(),
        )
    }

    /// Whether the request (client, timestamp) is covered by a prepared certificate this
    /// replica holds (of any view), for the model checker.
    #[cfg(test)]
    pub(crate) fn certified(&self, client: u64, timestamp: u64) -> bool {
        self.log.values().any(|slot| {
            slot.cert.as_ref().is_some_and(|c| {
                c.pre_prepare
                    .batch
                    .iter()
                    .any(|r| r.client == client && r.timestamp == timestamp)
            })
        })
    }

    /// A deterministic description of the protocol state (for the model checker).
    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = write!(
            s,
            "v{} c{} h{} e{} t{:?} n{} f{:?} d{:?}|",
            self.view,
            self.changing,
            self.low,
            self.executed,
            self.tentative_seq(),
            self.next_seq,
            self.fetching,
            self.vc_deadline.is_some()
        );
        for (seq, slot) in &self.log {
            let _ = write!(
                s,
                "[{seq} {:?} p{:?} c{:?} {}{} {:?}]",
                slot.pre_prepare.as_ref().map(|p| p.digest),
                slot.prepares
                    .iter()
                    .map(|(r, v)| (*r, v.digest))
                    .collect::<Vec<_>>(),
                slot.commits
                    .iter()
                    .map(|(r, v)| (*r, v.digest))
                    .collect::<Vec<_>>(),
                slot.prepared,
                slot.committed,
                slot.cert
                    .as_ref()
                    .map(|c| (c.pre_prepare.view, c.pre_prepare.digest))
            );
        }
        let _ = write!(
            s,
            "|{:?}|{:?}|{:?}|{:?}|",
            self.pending_keys,
            self.waiting.keys().collect::<Vec<_>>(),
            self.view_changes
                .iter()
                .map(|(v, m)| (*v, m.keys().copied().collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            self.checkpoints
                .iter()
                .map(|(v, m)| (*v, m.keys().copied().collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
        );
        let _ = write!(
            s,
            "|{:?}|{:?}|{:?}|",
            self.replies,
            self.tentative
                .as_ref()
                .map(|t| (t.seq, t.view, t.digest, &t.undo, &t.replies_undo)),
            self.known,
        );
        s.extend(
            self.app
                .snapshot()
                .iter()
                .map(|b| char::from(b'a' + b % 26)),
        );
        s
    }
}
