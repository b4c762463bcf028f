//! The node server: a [`Replica`] answering the [client protocol](super::proto).
//!
//! [`Server::run_once`] runs one round of the replica and then answers what arrived: on the
//! leader a `Submit` is proposed and answered when its outcome is known (`Ok` with the index
//! and result, `Busy` when it was dropped); on a follower it is answered `NotLeader` naming
//! the leader. `WaitCommitted` is answered once this node has applied the index (or with a
//! `timeout` error), `Status` at once. A request that does not decode is answered with an
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
    /// Submits proposed by this node.
    pub proposed: u64,
    /// Submits answered `NotLeader`.
    pub redirected: u64,
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

/// A replica serving the client protocol: see the module docs.
pub struct Server<S: StateMachine, T: Transport> {
    replica: Replica<S, T>,
    opts: ServeOptions,
    pending: HashMap<ProposalId, (NodeId, u64)>,
    waiters: Vec<Waiter>,
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
            ("pending", (self.pending.len() + self.waiters.len()) as u64),
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
            let Some((client, req)) = self.pending.remove(&p) else {
                continue;
            };
            let a = match o {
                Outcome::Committed { index, result } => Answer::Ok { index, result },
                // The server issues no ReadIndex reads of its own (gets go through the log):
                // were one pending, its answer is the confirmed index.
                Outcome::Read { index } => Answer::Ok {
                    index,
                    result: Vec::new(),
                },
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
        Ok(())
    }

    fn full(&self) -> bool {
        self.pending.len() + self.waiters.len() >= self.opts.max_pending
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
            Request::Submit { op } => {
                // Only what becomes pending needs room (a follower redirects whatever).
                if self.full() && self.replica.node().is_leader() {
                    self.stats.busy += 1;
                    self.answer(client, req, &Answer::Busy { retry_after_ms: 1 });
                    return;
                }
                match self.replica.submit(&op, now) {
                    Ok(Submitted::Pending(p)) => {
                        self.stats.proposed += 1;
                        self.pending.insert(p, (client, req));
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
