//! The Raft host loop: a [`raft::Node`](crate::raft::Node) driven over a
//! [`net::Transport`](crate::net::Transport), a clock and its storage (issue 13).
//!
//! `raft/` is a state machine without I/O and `net/` moves bytes; neither may name the other.
//! A [`Replica`] owns one of each and does what a host of a Raft node must do, one
//! [`Replica::run_once`] at a time:
//!
//! 1. receive frames (waiting up to the given timeout for the first one) and step the raft
//!    frames into the node ([`Node::step_from`]: the transport's sender must be the message's);
//!    a frame the node refuses (garbled, not from a member, claiming another sender, …) or
//!    from a peer declared a client ([`Replica::set_clients`]) is
//!    counted in [`ReplicaStats::rejected`], never fatal;
//! 2. tick the node once per [`ReplicaOptions::tick`] of the caller's clock that has passed;
//! 3. run the node's Ready and send its messages. A send answered `Full` (back-pressure) is
//!    kept, in order per peer, and retried by the next call; once a peer's backlog reaches
//!    [`ReplicaOptions::max_backlog`] its older messages are discarded *and counted*
//!    ([`ReplicaStats::discarded`]) and the node is told the peer is unreachable (raft-rs
//!    then probes it again: Raft retransmits what matters). Any other send error
//!    (`Closed`: the peer is down) reports the peer unreachable and counts the message in
//!    [`ReplicaStats::send_failed`]. A snapshot's fate is reported to the node either way.
//! 4. record the outcome of this node's proposals and reads: [`Outcome::Committed`] with the
//!    log index and the state machine's result, [`Outcome::Read`] (a linearizable read may
//!    proceed: read [`Replica::state_machine`]), [`Outcome::Dropped`] (never applied: safe to
//!    retry) or [`Outcome::Unknown`] (a snapshot covered it).
//!
//! Beyond submitting operations: [`Replica::read`] (ReadIndex reads, leader only),
//! [`Replica::transfer_leader`] and [`Replica::change_membership`] (joint consensus; voters
//! and learners). A node that is added starts as a replica whose node has `Config::voters`
//! empty; the other replicas' transports must learn its address (`TcpTransport::add_peer`,
//! `RingTransport::add_peer`, `SimNet::add_node`; see [`Replica::transport_mut`]) — until then
//! messages to it count as [`ReplicaStats::send_failed`] and Raft retries. A removed node
//! reports [`Replica::is_removed`]: it never campaigns, the others refuse its frames (counted
//! in their [`ReplicaStats::rejected`]), and its host should stop it.
//!
//! The clock is the caller's (`now`: any monotonic [`Duration`]), so a simulation steps many
//! replicas over [`net::sim`](crate::net::sim) deterministically; [`Replica::wait_committed`]
//! is the one call that reads a real clock ([`Replica::elapsed`], from the replica's creation).
//!
//! Frames carry one tag byte: [`TAG_RAFT`] for the node's messages and [`TAG_APP`] for the
//! host's own traffic over the same transport (client requests and answers, say): those are
//! queued for [`Replica::take_app_frames`] and sent with [`Replica::send_app`].
//! Anything else is counted in [`ReplicaStats::rejected`].
//!
//! # The Raft service
//!
//! On top of the loop: the [client protocol](proto) carried in app frames (submit an
//! operation, wait for an index, status; answers naming the leader when a node does not
//! lead), the [node server](server::Server) answering it, the [client](client::RaftClient)
//! following redirects and retrying, [one node](node::run_node) of the replicated KV store
//! from a spec (the `erlmcp-flow raft node` command), and [a local cluster](cluster) of node
//! processes over rings (the original `start_cluster(N)`), and a [pipeline] of
//! submits for clients that keep many operations in flight.

pub mod client;
pub mod cluster;
pub mod node;
pub mod pipeline;
pub mod proto;
pub mod remote_sm;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::net::{Frame, NodeId, Transport};
use crate::raft::{MemberChange, Membership, Node, Out, ProposalId, Proposed, StateMachine};

pub use client::{ClientOptions, Committed, RaftClient};
pub use cluster::{ClusterOptions, LocalCluster};
pub use node::{
    abort_node, run_node, run_node_with, spawn_node, NodeHandle, NodeInfo, NodeSpec, NodeTransport,
};
pub use pipeline::{Done, Pipeline, PipelineOptions, PipelineStats};
pub use remote_sm::{remote_sm, RemoteSm, RemoteSmHost, SmRequest, SmRequestKind};
pub use server::{ServeOptions, ServeStats, Server};

/// The tag byte of a frame holding a Raft message.
pub const TAG_RAFT: u8 = b'R';
/// The tag byte of a frame holding the host's own bytes ([`Replica::send_app`]).
pub const TAG_APP: u8 = b'A';

/// How a [`Replica`] drives its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaOptions {
    /// The clock time of one Raft tick (the node's `election_tick` and `heartbeat_tick` count
    /// these).
    pub tick: Duration,
    /// Messages kept per peer while its transport answers `Full`; beyond, the oldest are
    /// discarded (counted) and the peer is reported unreachable.
    pub max_backlog: usize,
    /// Frames received per [`Replica::run_once`] at most (the rest wait for the next call).
    pub max_recv: usize,
}

impl Default for ReplicaOptions {
    /// A 10 ms tick, 4096 messages of backlog per peer, 4096 frames per call.
    fn default() -> Self {
        ReplicaOptions {
            tick: Duration::from_millis(10),
            max_backlog: 4096,
            max_recv: 4096,
        }
    }
}

/// The answer to [`Replica::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Accepted by this node, the leader: wait for it with [`Replica::wait_committed`] or
    /// poll [`Replica::outcome`].
    Pending(ProposalId),
    /// This node does not lead; `leader` is the one it knows of, if any.
    NotLeader {
        /// The leader's id, when known.
        leader: Option<u64>,
    },
}

/// What became of a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at `index` and applied, with the state machine's result.
    Committed {
        /// The log index.
        index: u64,
        /// What [`StateMachine::apply`] returned.
        result: Vec<u8>,
    },
    /// A read ([`Replica::read`]) may proceed: the state machine has applied `index`, the
    /// commit index the leader confirmed it still led at — read it now.
    Read {
        /// The confirmed commit index.
        index: u64,
    },
    /// Never applied (leadership lost first, or another leader's entry replaced it) — for a
    /// read: leadership lost before it was confirmed: safe to submit again.
    Dropped,
    /// This node can no longer tell (a snapshot from a new leader covered its index).
    Unknown,
}

/// Counters of a replica's host loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Raft messages handed to the transport.
    pub sent: u64,
    /// Raft messages stepped into the node.
    pub received: u64,
    /// Frames refused: unknown tag, or the node's `step` said no.
    pub rejected: u64,
    /// Sends answered `Full` (the message was kept for retry).
    pub full: u64,
    /// Messages given up after another send error (peer down): Raft retransmits.
    pub send_failed: u64,
    /// Messages discarded from a backlog that reached `max_backlog`.
    pub discarded: u64,
    /// Messages waiting for their peer's back-pressure to clear.
    pub backlog: u64,
    /// Ticks given to the node.
    pub ticks: u64,
    /// Calls of [`Replica::run_once`].
    pub rounds: u64,
}

/// What one [`Replica::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Frames received.
    pub received: usize,
    /// Messages handed to the transport.
    pub sent: usize,
    /// Proposals whose outcome became known in this round, with it.
    pub outcomes: Vec<(ProposalId, Outcome)>,
    /// True when the node installed a snapshot from the leader.
    pub snapshot_installed: bool,
}

/// A Raft node driven over a transport: see the module docs.
pub struct Replica<S: StateMachine, T: Transport> {
    node: Node<S>,
    transport: T,
    opts: ReplicaOptions,
    /// The clock time of the last tick given (None until the first `run_once`).
    last_tick: Option<Duration>,
    /// Per peer: (message, is_snapshot) waiting for back-pressure to clear.
    backlog: BTreeMap<u64, VecDeque<(Vec<u8>, bool)>>,
    outcomes: HashMap<ProposalId, Outcome>,
    app: VecDeque<Frame>,
    /// Transport peers that are clients: app frames only (see [`Replica::set_clients`]).
    clients: BTreeSet<u64>,
    stats: ReplicaStats,
    born: Instant,
}

impl<S: StateMachine, T: Transport> Replica<S, T> {
    /// A replica of `node` over `transport`; the transport's id must be the node's.
    pub fn new(node: Node<S>, transport: T, opts: ReplicaOptions) -> Result<Replica<S, T>> {
        if transport.local_id() != NodeId(node.id()) {
            return Err(Error::invalid(format!(
                "replica: the transport is {}'s but the raft node is {}",
                transport.local_id(),
                node.id()
            )));
        }
        if opts.tick.is_zero() || opts.max_backlog == 0 || opts.max_recv == 0 {
            return Err(Error::invalid(format!(
                "replica: tick, max_backlog and max_recv must be positive: {opts:?}"
            )));
        }
        Ok(Replica {
            node,
            transport,
            opts,
            last_tick: None,
            backlog: BTreeMap::new(),
            outcomes: HashMap::new(),
            app: VecDeque::new(),
            clients: BTreeSet::new(),
            stats: ReplicaStats::default(),
            born: Instant::now(),
        })
    }

    /// The node (leader, term, indexes, storage, state machine, its own stats).
    pub fn node(&self) -> &Node<S> {
        &self.node
    }

    /// The node, mutably (campaign, report_unreachable, …).
    pub fn node_mut(&mut self) -> &mut Node<S> {
        &mut self.node
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Declares the transport peers that are clients, not Raft nodes: a Raft frame from one
    /// is rejected (counted in [`ReplicaStats::rejected`]) before the node sees it; their app
    /// frames are taken as before. The node itself follows a leader outside its
    /// configuration (a node lagging behind a membership change must), so a peer that is no
    /// node — a client with a bug, say — must not get to speak Raft at all. Replaces the
    /// previous set; none by default.
    pub fn set_clients(&mut self, clients: impl IntoIterator<Item = u64>) {
        self.clients = clients.into_iter().collect();
    }

    /// The transport, mutably: to tell it a new peer's address after a membership change
    /// (`TcpTransport::add_peer`, `RingTransport::add_peer`).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The state machine (read it when a read's [`Outcome::Read`] came back).
    pub fn state_machine(&self) -> &S {
        self.node.state_machine()
    }

    /// The configuration in force.
    pub fn membership(&self) -> Membership {
        self.node.membership()
    }

    /// True when this node was removed from the configuration: stop it.
    pub fn is_removed(&self) -> bool {
        self.node.is_removed()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.node.id()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.node.leader()
    }

    /// The node's current term.
    pub fn term(&self) -> u64 {
        self.node.term()
    }

    /// The host loop's counters.
    pub fn stats(&self) -> ReplicaStats {
        let mut s = self.stats;
        s.backlog = self.backlog.values().map(|q| q.len() as u64).sum();
        s
    }

    /// Real time since the replica was made: the clock [`Replica::wait_committed`] uses and a
    /// host may pass to [`Replica::run_once`].
    pub fn elapsed(&self) -> Duration {
        self.born.elapsed()
    }

    /// Submits an operation at clock time `now`. Not on the leader: `NotLeader` naming the
    /// leader it knows. Errors as [`Node::propose`]: `Full` is back-pressure (run a round,
    /// retry), `TooLarge` an operation beyond the batch.
    pub fn submit(&mut self, op: &[u8], now: Duration) -> Result<Submitted> {
        Ok(match self.node.propose(op, now)? {
            Proposed::Accepted(id) => Submitted::Pending(id),
            Proposed::NotLeader { leader } => Submitted::NotLeader { leader },
        })
    }

    /// Asks for a linearizable read at clock time `now` ([`Node::read_index`]): its outcome is
    /// [`Outcome::Read`] (then read [`Replica::state_machine`]) or [`Outcome::Dropped`]. Not on
    /// the leader: `NotLeader` naming the leader it knows.
    pub fn read(&mut self, now: Duration) -> Result<Submitted> {
        Ok(match self.node.read_index(now)? {
            Proposed::Accepted(id) => Submitted::Pending(id),
            Proposed::NotLeader { leader } => Submitted::NotLeader { leader },
        })
    }

    /// Starts handing leadership to voter `to` ([`Node::transfer_leader`]; errors as there:
    /// `NotLeader`, `InvalidArgument` for a learner or a non-member).
    pub fn transfer_leader(&mut self, to: u64) -> Result<()> {
        self.node.transfer_leader(to)
    }

    /// Proposes a membership change by joint consensus ([`Node::change_membership`]); its
    /// outcome is `Committed` (with an empty result) once the joint configuration is applied.
    pub fn change_membership(&mut self, changes: &[MemberChange]) -> Result<Submitted> {
        Ok(match self.node.change_membership(changes)? {
            Proposed::Accepted(id) => Submitted::Pending(id),
            Proposed::NotLeader { leader } => Submitted::NotLeader { leader },
        })
    }

    /// The outcome of proposal (or read) `id`, once known (it stays until [`Replica::forget`]).
    pub fn outcome(&self, id: ProposalId) -> Option<&Outcome> {
        self.outcomes.get(&id)
    }

    /// Forgets the recorded outcome of `id`, returning it.
    pub fn forget(&mut self, id: ProposalId) -> Option<Outcome> {
        self.outcomes.remove(&id)
    }

    /// Runs rounds on the real clock ([`Replica::elapsed`]) until proposal (or read) `id`'s
    /// outcome is known, then returns (and forgets) it. `Timeout` after `timeout`.
    pub fn wait_committed(&mut self, id: ProposalId, timeout: Duration) -> Result<Outcome> {
        let deadline = self.elapsed() + timeout;
        loop {
            if let Some(o) = self.outcomes.remove(&id) {
                return Ok(o);
            }
            let now = self.elapsed();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "replica {}: proposal {} not decided within {timeout:?}",
                        self.id(),
                        id.0
                    ),
                ));
            }
            self.run_once(now, (deadline - now).min(self.opts.tick))?;
        }
    }

    /// Frames of the host's own traffic received since the last call.
    pub fn take_app_frames(&mut self) -> Vec<Frame> {
        self.app.drain(..).collect()
    }

    /// Sends the host's own bytes to `to` over the transport (tagged [`TAG_APP`]); the
    /// transport's errors as they are (`Full`: retry later).
    pub fn send_app(&mut self, to: NodeId, payload: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(payload.len() + 1);
        b.push(TAG_APP);
        b.extend_from_slice(payload);
        self.transport.send(to, &b)
    }

    /// When the next round has work without a frame arriving: the next tick, or the batch
    /// window's end, whichever comes first (`now` if a backlog waits).
    pub fn next_wakeup(&self, now: Duration) -> Duration {
        if !self.backlog.is_empty() {
            return now;
        }
        let tick = self.last_tick.map_or(now, |t| t + self.opts.tick);
        self.node.next_deadline().map_or(tick, |d| d.min(tick))
    }

    /// One round of the host loop at clock time `now` (see the module docs), waiting up to
    /// `timeout` for the first frame when none is ready — never past the next tick or batch
    /// deadline. Errors: the node's Ready failed (the log's I/O: drop the replica and
    /// restart from storage), or the transport failed to receive.
    pub fn run_once(&mut self, now: Duration, timeout: Duration) -> Result<Round> {
        let mut round = Round::default();
        self.stats.rounds += 1;
        // 1. Frames.
        let wait = timeout.min(self.next_wakeup(now).saturating_sub(now));
        let mut first = if wait.is_zero() {
            self.transport.try_recv()?
        } else {
            self.transport.recv_timeout(wait)?
        };
        while let Some(f) = first.take() {
            round.received += 1;
            self.handle_frame(f);
            if round.received >= self.opts.max_recv {
                break;
            }
            first = self.transport.try_recv()?;
        }
        // 2. Ticks.
        match self.last_tick {
            None => self.last_tick = Some(now),
            Some(mut t) => {
                while now >= t + self.opts.tick {
                    t += self.opts.tick;
                    self.node.tick();
                    self.stats.ticks += 1;
                }
                self.last_tick = Some(t);
            }
        }
        // 3. Ready; the backlog goes first so each peer's messages keep their order.
        round.sent += self.flush_backlog();
        let out = self.node.ready(now)?;
        round.sent += self.send_out(&out);
        round.snapshot_installed = out.snapshot_installed;
        // 4. Outcomes.
        for a in out.applied {
            let o = Outcome::Committed {
                index: a.index,
                result: a.result,
            };
            round.outcomes.push((a.id, o.clone()));
            self.outcomes.insert(a.id, o);
        }
        for r in out.reads {
            let o = Outcome::Read { index: r.index };
            round.outcomes.push((r.id, o.clone()));
            self.outcomes.insert(r.id, o);
        }
        for (ids, o) in [
            (&out.dropped, Outcome::Dropped),
            (&out.unknown, Outcome::Unknown),
        ] {
            for id in ids {
                round.outcomes.push((*id, o.clone()));
                self.outcomes.insert(*id, o.clone());
            }
        }
        Ok(round)
    }

    fn handle_frame(&mut self, f: Frame) {
        match f.payload.first() {
            Some(&TAG_RAFT) if self.clients.contains(&f.from.0) => self.stats.rejected += 1,
            Some(&TAG_RAFT) => match self.node.step_from(f.from.0, &f.payload[1..]) {
                Ok(()) => self.stats.received += 1,
                Err(_) => self.stats.rejected += 1,
            },
            Some(&TAG_APP) => {
                let mut f = f;
                f.payload.remove(0);
                self.app.push_back(f);
            }
            _ => self.stats.rejected += 1,
        }
    }

    fn send_out(&mut self, out: &Out) -> usize {
        let mut sent = 0;
        for m in &out.messages {
            let mut b = Vec::with_capacity(m.bytes.len() + 1);
            b.push(TAG_RAFT);
            b.extend_from_slice(&m.bytes);
            if let Some(q) = self.backlog.get_mut(&m.to) {
                // Behind a backlog: keep the order.
                q.push_back((b, m.is_snapshot));
                self.trim(m.to);
                continue;
            }
            sent += usize::from(self.send_one(m.to, b, m.is_snapshot));
        }
        sent
    }

    /// Sends one tagged message; on `Full` it goes to the peer's backlog. True when sent.
    fn send_one(&mut self, to: u64, b: Vec<u8>, is_snapshot: bool) -> bool {
        match self.transport.send(NodeId(to), &b) {
            Ok(()) => {
                self.stats.sent += 1;
                if is_snapshot {
                    self.node.report_snapshot(to, true);
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::Full => {
                self.stats.full += 1;
                self.backlog
                    .entry(to)
                    .or_default()
                    .push_back((b, is_snapshot));
                self.trim(to);
                false
            }
            Err(_) => {
                self.stats.send_failed += 1;
                self.node.report_unreachable(to);
                if is_snapshot {
                    self.node.report_snapshot(to, false);
                }
                false
            }
        }
    }

    /// Keeps a peer's backlog within `max_backlog`, counting what is discarded.
    fn trim(&mut self, to: u64) {
        let Some(q) = self.backlog.get_mut(&to) else {
            return;
        };
        let mut lost_snapshot = false;
        let mut trimmed = false;
        while q.len() > self.opts.max_backlog {
            let (_, snap) = q.pop_front().expect("longer than the bound");
            lost_snapshot |= snap;
            trimmed = true;
            self.stats.discarded += 1;
        }
        if trimmed {
            self.node.report_unreachable(to);
        }
        if lost_snapshot {
            self.node.report_snapshot(to, false);
        }
    }

    /// Retries the backlogs in order; a peer still `Full` keeps the rest of its queue.
    fn flush_backlog(&mut self) -> usize {
        let peers: Vec<u64> = self.backlog.keys().copied().collect();
        let mut sent = 0;
        for to in peers {
            let mut q = self.backlog.remove(&to).expect("listed");
            while let Some((b, snap)) = q.pop_front() {
                match self.transport.send(NodeId(to), &b) {
                    Ok(()) => {
                        sent += 1;
                        self.stats.sent += 1;
                        if snap {
                            self.node.report_snapshot(to, true);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Full => {
                        self.stats.full += 1;
                        q.push_front((b, snap));
                        break;
                    }
                    Err(_) => {
                        self.stats.send_failed += 1;
                        self.node.report_unreachable(to);
                        if snap {
                            self.node.report_snapshot(to, false);
                        }
                    }
                }
            }
            if !q.is_empty() {
                self.backlog.insert(to, q);
            }
        }
        sent
    }
}

#[cfg(test)]
mod bad_input_tests;
#[cfg(test)]
mod cluster_support;
#[cfg(test)]
mod host_sm_tests;
#[cfg(test)]
mod member_tests;
#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod process_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod sim_tests;
