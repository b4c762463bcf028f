//! A client of a Raft cluster: [`RaftClient`] speaks the [client protocol](super::proto)
//! over any [`Transport`] on which it is a peer of the nodes (its own id is not a voter).
//!
//! It keeps a guess of the leader, follows `NotLeader` answers to the leader they name,
//! retries `Busy` answers and unreachable nodes with a bounded exponential back-off, and
//! gives up with an [`ErrorKind::Timeout`] error after [`ClientOptions::timeout`]. A request
//! whose answer never comes (the node died) is sent again to the next node when
//! [`ClientOptions::resend_unanswered`] is on: at-least-once — see [`proto`](super::proto).
//!
//! The key-value helpers ([`RaftClient::set`], [`get`](RaftClient::get),
//! [`cas`](RaftClient::cas)) submit [`KvOp`]s for a cluster running the [`KvStore`]
//! (`erlmcp-flow raft node` does) — a get is a linearizable [`read`](RaftClient::read), not
//! a log entry; [`RaftClient::submit`] carries any operation. Leadership transfer
//! ([`RaftClient::transfer_leader`]) and membership changes
//! ([`RaftClient::change_membership`], [`RaftClient::membership`]) go to the leader the
//! same way.
//!
//! [`KvStore`]: crate::raft::KvStore

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::proto::{Answer, Request, Status, MAX_CHANGES};
use super::TAG_APP;
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::{NodeId, Transport};
use crate::raft::{KvOp, KvResult, MemberChange, Membership};

/// How a [`RaftClient`] retries and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// The longest one call ([`RaftClient::submit`], [`RaftClient::wait_committed`], …) may
    /// take, retries included.
    pub timeout: Duration,
    /// How long one request waits for its answer before the next node is tried.
    pub attempt_timeout: Duration,
    /// The first back-off after a `Busy` answer or an unreachable node.
    pub backoff_min: Duration,
    /// The longest back-off.
    pub backoff_max: Duration,
    /// Send a submit again (to the next node) when its answer did not come in
    /// `attempt_timeout`: at-least-once. Off: such a submit fails with `Timeout`.
    pub resend_unanswered: bool,
}

impl Default for ClientOptions {
    /// 10 s per call, 500 ms per attempt, back-off 1–100 ms, resend on.
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(100),
            resend_unanswered: true,
        }
    }
}

/// A committed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its log index.
    pub index: u64,
    /// The state machine's result.
    pub result: Vec<u8>,
    /// The node (the leader) that answered.
    pub node: u64,
}

/// The client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent.
    pub requests: u64,
    /// `NotLeader` answers followed.
    pub redirects: u64,
    /// `Busy` answers.
    pub busy: u64,
    /// Requests whose answer did not come in time.
    pub unanswered: u64,
    /// Frames received that were not the awaited answer (late answers, other bytes).
    pub stray: u64,
}

/// The client ids nodes started by `erlmcp-flow raft node` over rings accept by default
/// (a ring transport knows its peers in advance): `1_000_001..=1_000_008`.
pub fn default_client_ids() -> Vec<u64> {
    (1_000_001..=1_000_008).collect()
}

/// A client of the nodes `nodes` over transport `t`: see the module docs.
pub struct RaftClient<T: Transport> {
    t: T,
    nodes: Vec<u64>,
    target: u64,
    req: u64,
    opts: ClientOptions,
    stats: ClientStats,
}

impl RaftClient<RingTransport> {
    /// A client over the rings of the cluster directory `net_dir`, taking the first of
    /// `client_ids` that no live process holds (`Busy` when all are held).
    pub fn over_rings(
        net_dir: &Path,
        nodes: &[u64],
        client_ids: &[u64],
        opts: ClientOptions,
    ) -> Result<RaftClient<RingTransport>> {
        let peers: Vec<NodeId> = nodes.iter().map(|&n| NodeId(n)).collect();
        let mut last = Error::invalid("raft client: no client id given");
        for &id in client_ids {
            match RingTransport::open(NodeId(id), &peers, RingNetOptions::in_dir(net_dir)) {
                Ok(t) => return RaftClient::new(t, nodes, opts),
                Err(e) if e.kind() == ErrorKind::Busy => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Busy,
            format!("raft client: every client id {client_ids:?} is in use: {last}"),
        ))
    }
}

impl<T: Transport> RaftClient<T> {
    /// A client of `nodes` (the voters, or any of them) over `t`, whose id must not be one
    /// of them.
    pub fn new(t: T, nodes: &[u64], opts: ClientOptions) -> Result<RaftClient<T>> {
        if nodes.is_empty() || nodes.contains(&t.local_id().0) {
            return Err(Error::invalid(format!(
                "raft client {}: the nodes {nodes:?} must be given and not include the client",
                t.local_id()
            )));
        }
        if opts.timeout.is_zero() || opts.attempt_timeout.is_zero() {
            return Err(Error::invalid(format!(
                "raft client: timeouts must be positive: {opts:?}"
            )));
        }
        // Request ids start from the clock so that a restarted client (same id, same inbox)
        // never takes an answer meant for its predecessor for its own.
        let req = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(RaftClient {
            target: nodes[0],
            nodes: nodes.to_vec(),
            t,
            req,
            opts,
            stats: ClientStats::default(),
        })
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The transport, mutably (to send raw bytes, say).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// The nodes this client talks to.
    pub fn nodes(&self) -> &[u64] {
        &self.nodes
    }

    /// The node the next submit goes to first (the last leader seen).
    pub fn leader_hint(&self) -> u64 {
        self.target
    }

    /// Sets the node the next submit goes to first.
    pub fn set_leader_hint(&mut self, node: u64) {
        self.target = node;
    }

    /// The options.
    pub fn options(&self) -> ClientOptions {
        self.opts
    }

    /// Changes the options.
    pub fn set_options(&mut self, opts: ClientOptions) {
        self.opts = opts;
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    fn next_node(&self, after: u64) -> u64 {
        let i = self.nodes.iter().position(|&n| n == after).unwrap_or(0);
        self.nodes[(i + 1) % self.nodes.len()]
    }

    /// Sends one request to `node` and waits up to `timeout` for its answer, without
    /// retrying: `Timeout` when none came, the transport's error when the send failed.
    pub fn call(&mut self, node: u64, r: &Request, timeout: Duration) -> Result<Answer> {
        self.req = self.req.wrapping_add(1);
        let req = self.req;
        let mut b = vec![TAG_APP];
        b.extend_from_slice(&r.encode(req));
        self.t.send(NodeId(node), &b)?;
        self.stats.requests += 1;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                self.stats.unanswered += 1;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("raft client: node {node} did not answer within {timeout:?}"),
                ));
            };
            let Some(f) = self.t.recv_timeout(left)? else {
                continue;
            };
            if f.from.0 != node || f.payload.first() != Some(&TAG_APP) {
                self.stats.stray += 1;
                continue;
            }
            match Answer::decode(&f.payload[1..]) {
                Ok((id, a)) if id == req => return Ok(a),
                _ => self.stats.stray += 1,
            }
        }
    }

    fn timeout_error(&self, what: &str, last: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "raft client: {what} not done within {:?} (last: {last})",
                self.opts.timeout
            ),
        )
    }

    /// Replicates `op` and waits until it is committed and applied: its index, the state
    /// machine's result and the leader that answered. Follows redirects and retries (see the
    /// module docs); `Timeout` after [`ClientOptions::timeout`]; an `Error` answer as its
    /// error.
    pub fn submit(&mut self, op: &[u8]) -> Result<Committed> {
        let r = Request::Submit { op: op.to_vec() };
        let resend = self.opts.resend_unanswered;
        self.call_leader("submit", &r, resend, false)
    }

    /// A linearizable read: the leader confirms it still leads (ReadIndex, no log entry),
    /// then answers `query` from its applied state
    /// ([`StateMachine::query`](crate::raft::StateMachine::query)). `index` is the read
    /// index, `result` the answer. Follows redirects and retries `Busy` (leadership lost
    /// before the read was confirmed) like [`submit`](Self::submit); a read that is not
    /// answered is always sent again (it changes nothing).
    pub fn read(&mut self, query: &[u8]) -> Result<Committed> {
        let r = Request::Read {
            query: query.to_vec(),
        };
        self.call_leader("read", &r, true, false)
    }

    /// Hands leadership to voter `to` and waits until it leads: the new term. Errors as the
    /// leader gives them (`InvalidArgument` for a learner or a non-member, `Timeout` when
    /// the transfer did not finish, e.g. `to` is down).
    pub fn transfer_leader(&mut self, to: u64) -> Result<u64> {
        let c = self.call_leader(
            "leadership transfer",
            &Request::TransferLeader { to },
            true,
            false,
        )?;
        if self.nodes.contains(&to) {
            self.target = to;
        }
        Ok(c.index)
    }

    /// Changes the membership by joint consensus and waits until the joint configuration
    /// is applied: its log index (the leader then leaves the joint configuration on its own;
    /// [`membership`](Self::membership) tells when). A change refused because another one
    /// (or a leadership transfer) is under way is retried until the call's timeout, whose
    /// error then gives the reason; `InvalidArgument` with the reason for a change that
    /// cannot be made ("transfer leadership first" when it would remove the leader). Nodes
    /// added here are not added to [`nodes`](Self::nodes): see [`add_node`](Self::add_node).
    pub fn change_membership(&mut self, changes: &[MemberChange]) -> Result<u64> {
        if changes.is_empty() || changes.len() > MAX_CHANGES {
            return Err(Error::invalid(format!(
                "raft client: 1 to {MAX_CHANGES} member changes, not {}",
                changes.len()
            )));
        }
        let r = Request::ChangeMembership {
            changes: changes.to_vec(),
        };
        let resend = self.opts.resend_unanswered;
        Ok(self
            .call_leader("membership change", &r, resend, true)?
            .index)
    }

    /// The configuration the leader has applied (voters, learners, and while a change is
    /// half way the outgoing voters).
    pub fn membership(&mut self) -> Result<Membership> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut last = String::from("nothing sent");
        loop {
            if Instant::now() >= deadline {
                return Err(self.timeout_error("membership", &last));
            }
            let to = self.target;
            match self.call(to, &Request::Membership, self.opts.attempt_timeout) {
                Ok(Answer::Membership(m)) => return Ok(m),
                Ok(Answer::Error { kind, message }) => {
                    return Err(Error::new(kind, format!("node {to}: {message}")))
                }
                Ok(a) => {
                    return Err(Error::corrupt(format!(
                        "raft client: node {to} answered a membership request with {a:?}"
                    )))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Timeout | ErrorKind::Closed | ErrorKind::Full
                    ) =>
                {
                    last = e.to_string();
                    self.target = self.next_node(to);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The leader's configuration once no change is half way (polled with the back-off
    /// until the leader has left the joint configuration, or the call's timeout).
    pub fn membership_settled(&mut self) -> Result<Membership> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut backoff = self.opts.backoff_min;
        loop {
            let m = self.membership()?;
            if !m.is_joint() {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(
                    self.timeout_error("leaving the joint configuration", &format!("{m:?}"))
                );
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.opts.backoff_max);
        }
    }

    /// Adds `node` to the nodes this client talks to (a member added by
    /// [`change_membership`](Self::change_membership)); the transport must reach it.
    pub fn add_node(&mut self, node: u64) {
        if !self.nodes.contains(&node) && node != self.t.local_id().0 {
            self.nodes.push(node);
        }
    }

    /// Sends `r` to the leader, following redirects and retrying `Busy` answers,
    /// unreachable nodes and (when `resend`) unanswered requests, until an `Ok` answer (as
    /// a [`Committed`]) or the call's timeout. `busy_errors`: an `Error` answer of kind
    /// `Busy` is retried too (its message kept for the timeout's error).
    fn call_leader(
        &mut self,
        what: &str,
        r: &Request,
        resend: bool,
        busy_errors: bool,
    ) -> Result<Committed> {
        let start = Instant::now();
        let deadline = start + self.opts.timeout;
        let mut backoff = self.opts.backoff_min;
        let mut hops = 0usize;
        let mut last = String::from("nothing sent");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error(what, &last));
            }
            let to = self.target;
            let wait = self.opts.attempt_timeout.min(deadline - now);
            let mut pause = None;
            match self.call(to, r, wait) {
                Ok(Answer::Ok { index, result }) => {
                    return Ok(Committed {
                        index,
                        result,
                        node: to,
                    })
                }
                Ok(Answer::NotLeader { leader }) => {
                    self.stats.redirects += 1;
                    hops += 1;
                    last = format!("node {to}: not the leader (leader {leader:?})");
                    match leader {
                        Some(l) if l != to && self.nodes.contains(&l) => self.target = l,
                        _ => {
                            self.target = self.next_node(to);
                            // No leader known: an election is under way.
                            pause = Some(backoff);
                        }
                    }
                    // Redirects going round in circles (a stale view): slow down.
                    if hops > self.nodes.len() {
                        pause = Some(backoff);
                    }
                }
                Ok(Answer::Busy { retry_after_ms }) => {
                    self.stats.busy += 1;
                    last = format!("node {to}: busy");
                    pause = Some(backoff.max(Duration::from_millis(retry_after_ms.into())));
                }
                Ok(Answer::Error { kind, message }) if busy_errors && kind == ErrorKind::Busy => {
                    self.stats.busy += 1;
                    last = format!("node {to}: {message}");
                    pause = Some(backoff);
                }
                Ok(Answer::Error { kind, message }) => {
                    return Err(Error::new(kind, format!("node {to}: {message}")))
                }
                Ok(a @ (Answer::Status(_) | Answer::Membership(_))) => {
                    return Err(Error::corrupt(format!(
                        "raft client: node {to} answered a {what} with {a:?}"
                    )))
                }
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    if !resend {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!("{e}: the {what} may or may not have been made"),
                        ));
                    }
                    last = e.to_string();
                    self.target = self.next_node(to);
                }
                Err(e) if matches!(e.kind(), ErrorKind::Closed | ErrorKind::Full) => {
                    last = format!("node {to}: {e}");
                    self.target = self.next_node(to);
                    pause = Some(backoff);
                }
                Err(e) => return Err(e),
            }
            if let Some(p) = pause {
                std::thread::sleep(p.min(deadline.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(self.opts.backoff_max);
                hops = 0;
            }
        }
    }

    /// Waits until node `node` has applied log index `index` (at most `timeout`): its
    /// applied index then. `Timeout` when it did not in time or did not answer.
    pub fn wait_committed_on(&mut self, node: u64, index: u64, timeout: Duration) -> Result<u64> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let r = Request::WaitCommitted {
            index,
            timeout_ms: ms,
        };
        // The node answers by the timeout; allow for the round trip.
        match self.call(node, &r, timeout + self.opts.attempt_timeout)? {
            Answer::Ok { index, .. } => Ok(index),
            Answer::Error { kind, message } => {
                Err(Error::new(kind, format!("node {node}: {message}")))
            }
            Answer::Busy { .. } => Err(Error::new(
                ErrorKind::Full,
                format!("node {node}: too many requests waiting"),
            )),
            a => Err(Error::corrupt(format!(
                "raft client: node {node} answered a wait with {a:?}"
            ))),
        }
    }

    /// Waits until the leader (the node of the last submit) has applied `index`, trying the
    /// other nodes when it does not answer; `Timeout` after `timeout`.
    pub fn wait_committed(&mut self, index: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing sent");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("raft client: index {index} not applied within {timeout:?} ({last})"),
                ));
            }
            let to = self.target;
            match self.wait_committed_on(to, index, left) {
                Ok(i) => return Ok(i),
                Err(e) if matches!(e.kind(), ErrorKind::Closed | ErrorKind::Full) => {
                    last = e.to_string();
                    self.target = self.next_node(to);
                    std::thread::sleep(self.opts.backoff_max.min(left));
                }
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    last = e.to_string();
                    self.target = self.next_node(to);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Node `node`'s status (one request, waiting up to the attempt timeout).
    pub fn status(&mut self, node: u64) -> Result<Status> {
        match self.call(node, &Request::Status, self.opts.attempt_timeout)? {
            Answer::Status(s) => Ok(s),
            Answer::Error { kind, message } => {
                Err(Error::new(kind, format!("node {node}: {message}")))
            }
            a => Err(Error::corrupt(format!(
                "raft client: node {node} answered a status request with {a:?}"
            ))),
        }
    }

    /// Every node's status, or why it could not be had.
    pub fn statuses(&mut self) -> Vec<(u64, Result<Status>)> {
        let nodes = self.nodes.clone();
        nodes.into_iter().map(|n| (n, self.status(n))).collect()
    }

    /// The leader and its term, as the node with the highest term that knows a leader says;
    /// asked until one does or the call's timeout. The leader becomes the next submit's
    /// first target.
    pub fn leader(&mut self) -> Result<(u64, u64)> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut backoff = self.opts.backoff_min;
        loop {
            let best = self
                .statuses()
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .filter(|s| s.leader != 0)
                .max_by_key(|s| s.term);
            if let Some(s) = best {
                self.target = s.leader;
                return Ok((s.leader, s.term));
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("finding the leader", "no node knows one"));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.opts.backoff_max);
        }
    }

    /// Submits a [`KvOp`]: its index and the store's result (`Corrupt` when the result does
    /// not decode: the cluster does not run the KV store).
    pub fn kv(&mut self, op: &KvOp) -> Result<(u64, KvResult)> {
        let c = self.submit(&op.encode())?;
        Self::kv_result(c)
    }

    fn kv_result(c: Committed) -> Result<(u64, KvResult)> {
        let r = KvResult::decode(&c.result).ok_or_else(|| {
            Error::corrupt(format!(
                "raft client: node {} answered with {} bytes that are not a KV result",
                c.node,
                c.result.len()
            ))
        })?;
        if r == KvResult::Invalid {
            return Err(Error::invalid(
                "raft client: the KV store refused the operation",
            ));
        }
        Ok((c.index, r))
    }

    /// Sets `key` to `value`: the index of the write.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        let op = KvOp::Set {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        Ok(self.kv(&op)?.0)
    }

    /// Reads `key` with a linearizable [`read`](Self::read) (ReadIndex at the leader, no
    /// log entry): its value, `None` when absent.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let c = self.read(&KvOp::Get { key: key.to_vec() }.encode())?;
        match Self::kv_result(c)?.1 {
            KvResult::Value(v) => Ok(v),
            r => Err(Error::corrupt(format!("raft client: a get answered {r:?}"))),
        }
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent): whether it swapped
    /// and the value before.
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Option<Vec<u8>>)> {
        let op = KvOp::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.kv(&op)?.1 {
            KvResult::Cas { swapped, previous } => Ok((swapped, previous)),
            r => Err(Error::corrupt(format!("raft client: a cas answered {r:?}"))),
        }
    }
}
