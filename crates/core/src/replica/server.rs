//! The node server: a [`Replica`] answering the [client protocol](super::proto).
//!
//! [`Server::run_once`] runs one round of the replica and then answers what arrived: on the
//! leader a `Submit` is proposed and answered when its outcome is known (`Ok` with the index
//! and result, `Busy` when it was dropped); on a follower it is answered `NotLeader` naming
//! the leader. `WaitCommitted` is answered once this node has applied the index (or with a
//! `timeout` error), `Status` and `Membership` at once.
//!
//! A `Read` on the leader asks the replica for a ReadIndex read and, only once its
//! [`Outcome::Read`] came (a quorum confirmed the leadership at that index and it is applied),
//! answers `Ok` with the read index and [`StateMachine::query`]'s answer; a read dropped by a
//! leadership change is answered `Busy` (the client asks again, at the new leader), so an old
//! leader cut off from the quorum never answers from stale state. `TransferLeader` is
//! answered `Ok` with the new term once the target leads, with a `timeout` error when raft-rs
//! gave the transfer up (or [`ServeOptions::max_wait`] passed). `ChangeMembership` is answered
//! `Ok` with its index once the joint configuration is applied; refusals are `Error`s with
//! the node's reason (kind `busy` while another change or a transfer is under way).
//!
//! A request that does not decode is answered with an
//! `Error` when its header names a request id, and counted in [`ServeStats::bad_requests`]
//! either way; answers the transport refuses (`Full`, a client gone) are counted in
//! [`ServeStats::answers_lost`] — the client times out and asks again.
//!
//! [`Server::serve`] loops until a stop flag is set: the body of `erlmcp-flow raft node` and
//! of every node of a local cluster. The transport is the caller's choice (rings, TCP, the
//! simulated network); clients are peers of the transport that are not voters.

use std::collections::HashMap;
use std::time::Duration;

use super::proto::{self, Answer, Request, Status};
use super::{Outcome, Replica, Submitted};
use crate::error::{Error, ErrorKind, Result};
use crate::net::{NodeId, Transport};
use crate::raft::{ProposalId, StateMachine};
use crate::sync::{AtomicBool, Ordering};

/// How a [`Server`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// The longest one round waits for a frame ([`Replica::run_once`]'s timeout): how soon
    /// a stop flag is seen.
    pub poll: Duration,
    /// Requests waiting for an outcome or an index at once; beyond, requests are answered
    /// `Busy`.
    pub max_pending: usize,
    /// The longest a `WaitCommitted` may wait (longer requests are capped to it).
    pub max_wait: Duration,
}

impl Default for ServeOptions {
    /// 2 ms polls, 65 536 pending requests, waits of at most 60 s.
    fn default() -> Self {
        ServeOptions {
            poll: Duration::from_millis(2),
            max_pending: 1 << 16,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// The server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Requests decoded.
    pub requests: u64,
    /// App frames that were not valid requests.
    pub bad_requests: u64,
    /// Answers sent.
    pub answers: u64,
    /// Answers the transport refused (the client asks again after its timeout).
    pub answers_lost: u64,
    /// Submits, reads and membership changes taken by this node (as the leader).
    pub proposed: u64,
    /// Requests answered `NotLeader` (submits, reads, changes, transfers at a follower).
    pub redirected: u64,
    /// Reads answered from the state machine after their ReadIndex was confirmed.
    pub reads: u64,
    /// Requests answered `Busy` (back-pressure, dropped proposals, too many pending).
    pub busy: u64,
}

/// A waiting `WaitCommitted`.
struct Waiter {
    client: NodeId,
    req: u64,
    index: u64,
    deadline: Duration,
}

/// A request waiting for its proposal's (or read's) outcome.
struct Pending {
    client: NodeId,
    req: u64,
    /// A read's query, answered once the read is confirmed.
    query: Option<Vec<u8>>,
}

/// A `TransferLeader` waiting for `to` to lead.
struct Transfer {
    client: NodeId,
    req: u64,
    to: u64,
    /// The term when the transfer started: `to` leads in a later one.
    term: u64,
    deadline: Duration,
}

/// A replica serving the client protocol: see the module docs.
pub struct Server<S: StateMachine, T: Transport> {
    replica: Replica<S, T>,
    opts: ServeOptions,
    pending: HashMap<ProposalId, Pending>,
    waiters: Vec<Waiter>,
    transfers: Vec<Transfer>,
    stats: ServeStats,
}

impl<S: StateMachine, T: Transport> Server<S, T> {
    /// A server of `replica`.
    pub fn new(replica: Replica<S, T>, opts: ServeOptions) -> Result<Server<S, T>> {
        if opts.poll.is_zero() || opts.max_pending == 0 {
            return Err(Error::invalid(format!(
                "server: poll and max_pending must be positive: {opts:?}"
            )));
        }
        Ok(Server {
            replica,
            opts,
            pending: HashMap::new(),
            waiters: Vec::new(),
            transfers: Vec::new(),
            stats: ServeStats::default(),
        })
    }

    /// The replica.
    pub fn replica(&self) -> &Replica<S, T> {
        &self.replica
    }

    /// The replica, mutably (campaign, …).
    pub fn replica_mut(&mut self) -> &mut Replica<S, T> {
        &mut self.replica
    }

    /// Gives the replica back.
    pub fn into_replica(self) -> Replica<S, T> {
        self.replica
    }

    /// The server's counters.
    pub fn stats(&self) -> ServeStats {
        self.stats
    }

    /// This node's status, as a `Status` request answers it.
    pub fn status(&self) -> Status {
        let r = &self.replica;
        let n = r.node();
        let (rs, ns, ss) = (r.stats(), n.stats(), self.stats);
        let stats = [
            ("is_leader", u64::from(n.is_leader())),
            ("raft_sent", rs.sent),
            ("raft_received", rs.received),
            ("raft_rejected", rs.rejected),
            ("raft_full", rs.full),
            ("raft_send_failed", rs.send_failed),
            ("raft_discarded", rs.discarded),
            ("raft_backlog", rs.backlog),
            ("ticks", rs.ticks),
            ("rounds", rs.rounds),
            ("proposed", ns.proposed),
            ("batches", ns.batches),
            ("syncs", ns.syncs),
            ("snapshots", ns.snapshots),
            ("malformed_entries", ns.malformed_entries),
            ("requests", ss.requests),
            ("bad_requests", ss.bad_requests),
            ("answers", ss.answers),
            ("answers_lost", ss.answers_lost),
            ("redirected", ss.redirected),
            ("busy", ss.busy),
            ("reads", ss.reads),
            ("pending", self.pending_count() as u64),
        ];
        let mut voters = n.voters();
        voters.sort_unstable();
        Status {
            id: r.id(),
            leader: r.leader().unwrap_or(0),
            term: r.term(),
            commit: n.commit_index(),
            applied: n.applied_index(),
            voters,
            stats: stats.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// Runs until `stop` is set, on the real clock ([`Replica::elapsed`]). Errors: the
    /// replica's (its log's I/O, the transport's receive): the node must restart from its
    /// storage.
    pub fn serve(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let now = self.replica.elapsed();
            self.run_once(now, self.opts.poll)?;
        }
        Ok(())
    }

    /// One round at clock time `now`: the replica's round (waiting up to `timeout` for a
    /// frame), then outcomes, requests and due waits answered.
    pub fn run_once(&mut self, now: Duration, timeout: Duration) -> Result<()> {
        let round = self.replica.run_once(now, timeout)?;
        for (p, o) in round.outcomes {
            self.replica.forget(p);
            let Some(Pending { client, req, query }) = self.pending.remove(&p) else {
                continue;
            };
            let a = match o {
                Outcome::Committed { index, result } => Answer::Ok { index, result },
                // Confirmed: the quorum still followed this leader at `index`, and `index` is
                // applied (this round's state, maybe later: still linearizable).
                Outcome::Read { index } => {
                    let q = query.as_deref().unwrap_or_default();
                    match self.replica.state_machine().query(q) {
                        Ok(result) => {
                            self.stats.reads += 1;
                            Answer::Ok { index, result }
                        }
                        Err(e) => Answer::from_error(&e),
                    }
                }
                Outcome::Dropped => {
                    self.stats.busy += 1;
                    Answer::Busy { retry_after_ms: 1 }
                }
                Outcome::Unknown => Answer::Error {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "node {}: the operation's outcome is unknown (a snapshot covered \
                         it): it may have been applied",
                        self.replica.id()
                    ),
                },
            };
            self.answer(client, req, &a);
        }
        for f in self.replica.take_app_frames() {
            match Request::decode(&f.payload) {
                Ok((req, r)) => {
                    self.stats.requests += 1;
                    self.request(f.from, req, r, now);
                }
                Err(e) => {
                    self.stats.bad_requests += 1;
                    if let Some(req) = proto::request_id(&f.payload) {
                        self.answer(f.from, req, &Answer::from_error(&e));
                    }
                }
            }
        }
        self.answer_waiters(now);
        self.answer_transfers(now);
        Ok(())
    }

    fn pending_count(&self) -> usize {
        self.pending.len() + self.waiters.len() + self.transfers.len()
    }

    fn full(&self) -> bool {
        self.pending_count() >= self.opts.max_pending
    }

    /// Answers a request that became pending as `p`, or its refusal.
    fn proposed(&mut self, client: NodeId, req: u64, r: Result<Submitted>, query: Option<Vec<u8>>) {
        match r {
            Ok(Submitted::Pending(p)) => {
                self.stats.proposed += 1;
                self.pending.insert(p, Pending { client, req, query });
            }
            Ok(Submitted::NotLeader { leader }) => {
                self.stats.redirected += 1;
                self.answer(client, req, &Answer::NotLeader { leader });
            }
            Err(e) if e.kind() == ErrorKind::Full => {
                self.stats.busy += 1;
                self.answer(client, req, &Answer::Busy { retry_after_ms: 1 });
            }
            Err(e) => self.answer(client, req, &Answer::from_error(&e)),
        }
    }

    /// True (and answered `Busy`) when a request that would wait finds no room; a follower
    /// redirects whatever.
    fn refuse_when_full(&mut self, client: NodeId, req: u64) -> bool {
        if self.full() && self.replica.node().is_leader() {
            self.stats.busy += 1;
            self.answer(client, req, &Answer::Busy { retry_after_ms: 1 });
            return true;
        }
        false
    }

    fn transfer(&mut self, client: NodeId, req: u64, to: u64, now: Duration) {
        let term = self.replica.term();
        if !self.replica.node().is_leader() {
            // The target may already lead (a resent request after the transfer was done).
            if to != 0 && self.replica.leader() == Some(to) {
                self.answer(
                    client,
                    req,
                    &Answer::Ok {
                        index: term,
                        result: Vec::new(),
                    },
                );
            } else {
                self.stats.redirected += 1;
                let leader = self.replica.leader();
                self.answer(client, req, &Answer::NotLeader { leader });
            }
            return;
        }
        if to == self.replica.id() {
            self.answer(
                client,
                req,
                &Answer::Ok {
                    index: term,
                    result: Vec::new(),
                },
            );
            return;
        }
        if self.refuse_when_full(client, req) {
            return;
        }
        match self.replica.transfer_leader(to) {
            Ok(()) => self.transfers.push(Transfer {
                client,
                req,
                to,
                term,
                deadline: now + self.opts.max_wait,
            }),
            Err(e) => self.answer(client, req, &Answer::from_error(&e)),
        }
    }

    fn answer_transfers(&mut self, now: Duration) {
        if self.transfers.is_empty() {
            return;
        }
        let id = self.replica.id();
        let term = self.replica.term();
        let leader = self.replica.leader();
        let leads = self.replica.node().is_leader();
        let transferring = self.replica.node().transferring();
        let mut due = Vec::new();
        self.transfers.retain(|t| {
            let a = if leader == Some(t.to) && term > t.term {
                Answer::Ok {
                    index: term,
                    result: Vec::new(),
                }
            } else if leads && transferring.is_none() {
                // raft-rs gives a transfer up after an election timeout.
                Answer::Error {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "node {id}: leadership transfer to {} given up (it did not \
                         campaign in time: down or cut off?)",
                        t.to
                    ),
                }
            } else if now >= t.deadline {
                Answer::Error {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "node {id}: leadership transfer to {} not seen done in time \
                         (leader {leader:?}, term {term})",
                        t.to
                    ),
                }
            } else if !leads && leader.is_some() && leader != Some(t.to) {
                // Another node won the election: say who leads.
                Answer::NotLeader { leader }
            } else {
                return true;
            };
            due.push((t.client, t.req, a));
            false
        });
        for (c, req, a) in due {
            self.answer(c, req, &a);
        }
    }

    fn request(&mut self, client: NodeId, req: u64, r: Request, now: Duration) {
        match r {
            Request::Status => {
                let s = self.status();
                self.answer(client, req, &Answer::Status(s));
            }
            Request::WaitCommitted { index, timeout_ms } => {
                let applied = self.replica.node().applied_index();
                if index <= applied {
                    let a = Answer::Ok {
                        index: applied,
                        result: Vec::new(),
                    };
                    self.answer(client, req, &a);
                    return;
                }
                if self.full() {
                    self.stats.busy += 1;
                    self.answer(client, req, &Answer::Busy { retry_after_ms: 1 });
                    return;
                }
                let wait = Duration::from_millis(timeout_ms.into()).min(self.opts.max_wait);
                self.waiters.push(Waiter {
                    client,
                    req,
                    index,
                    deadline: now + wait,
                });
            }
            Request::Membership => {
                let m = self.replica.membership();
                self.answer(client, req, &Answer::Membership(m));
            }
            Request::Submit { op } => {
                // Only what becomes pending needs room (a follower redirects whatever).
                if self.refuse_when_full(client, req) {
                    return;
                }
                let r = self.replica.submit(&op, now);
                self.proposed(client, req, r, None);
            }
            Request::Read { query } => {
                if self.refuse_when_full(client, req) {
                    return;
                }
                let r = self.replica.read(now);
                self.proposed(client, req, r, Some(query));
            }
            Request::ChangeMembership { changes } => {
                if self.refuse_when_full(client, req) {
                    return;
                }
                let r = self.replica.change_membership(&changes);
                self.proposed(client, req, r, None);
            }
            Request::TransferLeader { to } => self.transfer(client, req, to, now),
        }
    }

    fn answer_waiters(&mut self, now: Duration) {
        if self.waiters.is_empty() {
            return;
        }
        let applied = self.replica.node().applied_index();
        let id = self.replica.id();
        let mut due = Vec::new();
        self.waiters.retain(|w| {
            if w.index <= applied {
                due.push((
                    w.client,
                    w.req,
                    Answer::Ok {
                        index: applied,
                        result: Vec::new(),
                    },
                ));
                false
            } else if now >= w.deadline {
                due.push((
                    w.client,
                    w.req,
                    Answer::Error {
                        kind: ErrorKind::Timeout,
                        message: format!(
                            "node {id}: index {} not applied in time (applied {applied})",
                            w.index
                        ),
                    },
                ));
                false
            } else {
                true
            }
        });
        for (c, req, a) in due {
            self.answer(c, req, &a);
        }
    }

    fn answer(&mut self, client: NodeId, req: u64, a: &Answer) {
        match self.replica.send_app(client, &a.encode(req)) {
            Ok(()) => self.stats.answers += 1,
            Err(_) => self.stats.answers_lost += 1,
        }
    }
}
