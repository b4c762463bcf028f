//! Raft consensus as a state machine without I/O: tikv's raft-rs (`RawNode` and its Ready
//! loop) is the core; this module adds what raft-rs leaves to its user — the log store
//! ([`LogStorage`]: in memory, or durable with checksummed records, torn-write truncation,
//! group commit, snapshots and compaction), leader batching, the apply loop with
//! proposal tracking, and a replicated key-value store ([`KvStore`]) behind the
//! [`StateMachine`] trait.
//!
//! A [`Node`] is stepped by its host: [`Node::propose`] an operation, [`Node::step`] a message
//! received from a peer, [`Node::tick`] every tick interval, and [`Node::ready`] to collect the
//! work done — messages to send, results of applied operations, proposals that will never
//! apply, reads that may proceed. Beyond proposals: linearizable reads
//! ([`Node::read_index`]), leadership transfer ([`Node::transfer_leader`]) and membership
//! changes by joint consensus, voters and learners ([`Node::change_membership`]). The node never sends, sleeps or reads a clock: the host passes the time (any
//! monotonic [`Duration`]) and moves the bytes, which is how a seeded simulation drives it.
//!
//! ```
//! use std::time::Duration;
//! use erlmcp_flow::raft::{Config, KvOp, KvResult, KvStore, LogStorage, Node, Proposed};
//!
//! // A single-voter cluster elects itself after an election timeout.
//! let mut node = Node::new(Config::new(1, vec![1]), LogStorage::memory(), KvStore::new()).unwrap();
//! let mut now = Duration::ZERO;
//! while !node.is_leader() {
//!     node.tick();
//!     now += Duration::from_millis(10);
//!     node.ready(now).unwrap();
//! }
//! let op = KvOp::Set { key: b"k".to_vec(), value: b"v".to_vec() };
//! let Proposed::Accepted(id) = node.propose(&op.encode(), now).unwrap() else { panic!() };
//! let out = node.ready(now).unwrap();
//! assert_eq!(out.applied[0].id, id);
//! assert_eq!(KvResult::decode(&out.applied[0].result), Some(KvResult::Done));
//! assert_eq!(node.state_machine().get(b"k"), Some(&b"v"[..]));
//! ```
//!
//! # Decisions
//!
//! * raft-rs 0.7 with its `protobuf-codec` (protobuf 2): the `prost-codec` needs `protoc` at
//!   build time. Messages travel as protobuf bytes ([`Outgoing::bytes`], [`Node::step`]).
//! * Our own log ([`LogStorage`]) rather than `raft-engine`: raft-engine is built for many
//!   raft groups per process and pulls a C build (lz4-sys), prometheus, rayon, nix, a
//!   scripting engine (rhai), with its own file format; one group per node needs one
//!   append-only file, and ours shares the engine's CRC32C and error type.
//! * raft-rs assumes peers that follow the protocol (crash faults, not Byzantine ones) and
//!   `panic!`s on some impossible messages. [`Node::step`] checks what it would trust (see
//!   there), so a garbled frame is an error, never a panic (tested with mutated traffic and
//!   bit-flipped frames in a running cluster); a peer that lies consistently within the
//!   protocol is PBFT's business.
//! * Reads are served by the leader only (ReadIndex, raft-rs's safe mode: a quorum's
//!   heartbeat answers, no lease on clocks); a follower answers [`Proposed::NotLeader`]
//!   rather than forwarding, since a forwarded request that is lost is never answered.
//! * Membership changes always go through a joint configuration, left explicitly by whoever
//!   leads (not raft-rs's auto-leave, which a leader change loses); the stored ConfState
//!   carries the index of the change it results from ([`LogStorage::conf_index`]).

mod kv;
mod storage;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, ReadState, StateRole};

pub use kv::{KvOp, KvResult, KvStore, StateMachine};
pub use storage::{LogStorage, Recovery, SyncStats, DEFAULT_COMPACT_BYTES};

use crate::{Error, ErrorKind, Result};

/// A node's settings. [`Config::new`] gives the defaults; fields are public to tune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's id (not 0).
    pub id: u64,
    /// The voters of a new cluster (including `id`); used only when the storage is empty — a
    /// restarted node takes its configuration from its storage. Empty: the node joins an
    /// existing cluster (it starts without a configuration and learns it from the snapshot
    /// the leader sends once [`Node::change_membership`] added it).
    pub voters: Vec<u64>,
    /// Ticks without hearing from a leader before a follower campaigns (default 10).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats (default 2).
    pub heartbeat_tick: usize,
    /// The randomised election timeout is drawn from `[min, max)` ticks; 0 means raft-rs's
    /// default (`election_tick`, `2 × election_tick`). raft-rs draws it from a thread-local
    /// random generator: a seeded simulation sets `max = min + 1` and randomises who ticks.
    pub min_election_tick: usize,
    /// See [`min_election_tick`](Self::min_election_tick).
    pub max_election_tick: usize,
    /// Pre-vote: a node asks whether it could win before it bumps its term (default on).
    pub pre_vote: bool,
    /// Check-quorum: a leader that has not heard from a quorum for an election timeout steps
    /// down (default on).
    pub check_quorum: bool,
    /// Append messages in flight per follower (the replication pipeline; default 256).
    pub max_inflight_msgs: usize,
    /// The largest append message raft-rs builds, in bytes (default 1 MiB).
    pub max_size_per_msg: u64,
    /// Operations per batch entry (default 256).
    pub max_batch_ops: usize,
    /// Bytes of operations per batch entry (default 256 KiB); also the largest operation.
    pub max_batch_bytes: usize,
    /// The longest an operation waits in the leader's batch while the pipeline is busy
    /// (default 10 ms); when a quorum of followers has a free pipeline slot the batch goes out
    /// at the next [`Node::ready`] without waiting.
    pub batch_window: Duration,
    /// Bytes of proposed but uncommitted entries beyond which proposals are refused with
    /// [`ErrorKind::Full`] (default 64 MiB).
    pub max_uncommitted_bytes: u64,
    /// Applied entries after which a snapshot is taken and the log compacted (0: never;
    /// default 10 000).
    pub snapshot_entries: u64,
    /// Write periodic snapshots of a durable log on a thread of the store's
    /// ([`LogStorage::begin_snapshot`]): the loop goes on while the state is written and
    /// synced, and installs the snapshot at a later Ready (default true). Off: the Ready
    /// that takes a snapshot waits for its file (the deterministic simulations use this).
    /// Snapshots taken because the configuration changed are always written at once (a
    /// joining node must find the new configuration in the next snapshot it is sent).
    pub background_snapshots: bool,
}

impl Config {
    /// The defaults for node `id` of a cluster of `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> Config {
        Config {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 2,
            min_election_tick: 0,
            max_election_tick: 0,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
            max_batch_ops: 256,
            max_batch_bytes: 256 << 10,
            batch_window: Duration::from_millis(10),
            max_uncommitted_bytes: 64 << 20,
            snapshot_entries: 10_000,
            background_snapshots: true,
        }
    }
}

/// Identifies a proposal or a read of this node (unique for the node's lifetime; restarts
/// start again from 1 — a result is only ever reported to the incarnation that proposed it).
/// Reads ([`Node::read_index`]) are numbered apart, with the top bit set
/// ([`is_read`](Self::is_read)): the operations of a batch take consecutive numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

impl ProposalId {
    const READ: u64 = 1 << 63;

    /// True for the id of a read.
    pub fn is_read(self) -> bool {
        self.0 & Self::READ != 0
    }
}

/// The answer to [`Node::propose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposed {
    /// Taken into the leader's batch; its result comes in [`Out::applied`], or its id in
    /// [`Out::dropped`] / [`Out::unknown`].
    Accepted(ProposalId),
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader {
        /// The leader's id, when known.
        leader: Option<u64>,
    },
}

/// A message for a peer: raft-rs's protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The peer's id.
    pub to: u64,
    /// The encoded message, for the peer's [`Node::step`].
    pub bytes: Vec<u8>,
    /// True for a snapshot: the host reports its fate with [`Node::report_snapshot`] (until
    /// then the leader sends that peer nothing else).
    pub is_snapshot: bool,
}

/// The result of one of this node's proposals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The proposal.
    pub id: ProposalId,
    /// The log index it was committed at.
    pub index: u64,
    /// What [`StateMachine::apply`] returned.
    pub result: Vec<u8>,
}

/// A read of [`Node::read_index`] that may proceed: read the state machine now (before
/// anything else is applied, or later — either is linearizable, the read's linearization point
/// lying between its request and this answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReady {
    /// The read (its id comes from the same counter as the proposals').
    pub id: ProposalId,
    /// The commit index the leader confirmed it still led at; the state machine has applied
    /// at least this far.
    pub index: u64,
}

/// One change of a membership change ([`Node::change_membership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Adds a voter, or promotes a learner to voter.
    AddVoter(u64),
    /// Adds a learner (receives the log, does not vote), or demotes a voter to learner.
    AddLearner(u64),
    /// Removes a voter or a learner.
    Remove(u64),
}

/// The configuration in force (after the last configuration change applied); ids sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// The learners.
    pub learners: Vec<u64>,
    /// While joint: the voters of the outgoing configuration (decisions need a majority of
    /// both); empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// While joint: voters of the outgoing configuration that become learners on leaving it.
    pub learners_next: Vec<u64>,
}

impl Membership {
    /// True while a change is half way: the joint configuration of old and new voters.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// True when `id` is a voter or a learner, in either half of a joint configuration.
    pub fn contains(&self, id: u64) -> bool {
        [
            &self.voters,
            &self.learners,
            &self.voters_outgoing,
            &self.learners_next,
        ]
        .iter()
        .any(|l| l.contains(&id))
    }
}

/// The work done by one [`Node::ready`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Out {
    /// Messages to send, in order per peer. Sending may fail or drop: Raft retries.
    pub messages: Vec<Outgoing>,
    /// Results of this node's proposals, in log order.
    pub applied: Vec<Applied>,
    /// Proposals that will never be applied (leadership lost before they were replicated, or
    /// their entry was replaced by another leader's): safe to retry.
    pub dropped: Vec<ProposalId>,
    /// Proposals whose outcome this node can no longer tell (a snapshot from the new leader
    /// covered their index, or this node was removed from the configuration): they may or may
    /// not have been applied.
    pub unknown: Vec<ProposalId>,
    /// Reads ([`Node::read_index`]) that may proceed now: the state machine holds every write
    /// committed before they were asked for. Reads that cannot complete (leadership lost
    /// first) are in [`dropped`](Self::dropped).
    pub reads: Vec<ReadReady>,
    /// Entries appended to the log by this Ready.
    pub entries_persisted: u64,
    /// What the log's group commit wrote.
    pub sync: SyncStats,
    /// True when a snapshot from the leader was installed.
    pub snapshot_installed: bool,
}

/// Counters of a node's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations accepted by [`Node::propose`].
    pub proposed: u64,
    /// Batch entries handed to raft-rs.
    pub batches: u64,
    /// Batches flushed because they were full.
    pub flush_full: u64,
    /// Batches flushed because the window expired while the pipeline was busy.
    pub flush_window: u64,
    /// Batches flushed because a pipeline slot was free.
    pub flush_slot: u64,
    /// Committed normal entries whose batch header did not decode (skipped, never applied).
    pub malformed_entries: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Snapshots taken.
    pub snapshots: u64,
    /// Reads asked for with [`Node::read_index`].
    pub reads: u64,
    /// Membership changes proposed with [`Node::change_membership`].
    pub conf_changes: u64,
    /// Configuration changes applied (entering and leaving joint configurations).
    pub conf_applied: u64,
    /// Committed configuration changes raft-rs refused to apply (left without effect).
    pub conf_refused: u64,
    /// Leadership transfers started with [`Node::transfer_leader`].
    pub transfers: u64,
}

const BATCH_MAGIC: u8 = 0xB1;
const BATCH_HEADER: usize = 1 + 8 + 8 + 4;

/// A batch flushed into the log and not yet applied.
#[derive(Debug, Clone, Copy)]
struct Flushed {
    index: u64,
    term: u64,
    first: u64,
    count: u64,
}

/// A decoded batch entry: (proposer, first proposal id, operations).
fn decode_batch(data: &[u8]) -> Option<(u64, u64, Vec<&[u8]>)> {
    if data.len() < BATCH_HEADER || data[0] != BATCH_MAGIC {
        return None;
    }
    let proposer = u64::from_le_bytes(data[1..9].try_into().ok()?);
    let first = u64::from_le_bytes(data[9..17].try_into().ok()?);
    let count = u32::from_le_bytes(data[17..21].try_into().ok()?) as usize;
    let mut rest = &data[BATCH_HEADER..];
    let mut ops = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        if rest.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
        if rest.len() - 4 < n {
            return None;
        }
        ops.push(&rest[4..4 + n]);
        rest = &rest[4 + n..];
    }
    rest.is_empty().then_some((proposer, first, ops))
}

/// Checks that raft-rs can take `cs` (the ConfState of a snapshot, from a peer or from disk):
/// raft-rs replays it as configuration changes and `panic!`s when that fails or yields another
/// configuration (a node both voter and learner, a learner-next that is no outgoing voter, an
/// id 0, …). This replays it the same way, on a scratch tracker; the error is
/// [`ErrorKind::InvalidArgument`] naming the configuration.
pub(crate) fn check_conf_state(cs: &ConfState) -> Result<()> {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
    use raft::{Changer, ProgressTracker};
    let bad = |why: String| {
        Error::invalid(format!(
            "raft: configuration {cs:?} is not one raft can restore: {why}"
        ))
    };
    let single = |id: u64, t: ConfChangeType| {
        let mut c = ConfChangeSingle {
            node_id: id,
            ..Default::default()
        };
        c.set_change_type(t);
        c
    };
    let all = || {
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
    };
    if all().any(|&id| id == 0) {
        return Err(bad("node id 0".into()));
    }
    let outgoing: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|&id| single(id, ConfChangeType::AddNode))
        .collect();
    let incoming: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|&id| single(id, ConfChangeType::RemoveNode))
        .chain(
            cs.voters
                .iter()
                .map(|&id| single(id, ConfChangeType::AddNode)),
        )
        .chain(
            cs.learners
                .iter()
                .chain(&cs.learners_next)
                .map(|&id| single(id, ConfChangeType::AddLearnerNode)),
        )
        .collect();
    let mut t = ProgressTracker::new(1);
    let apply = |t: &mut ProgressTracker, joint: bool, ccs: &[ConfChangeSingle]| {
        let mut ch = Changer::new(t);
        let r = if joint {
            ch.enter_joint(cs.auto_leave, ccs)
        } else {
            ch.simple(ccs)
        };
        let (cfg, changes) = r.map_err(|e| bad(e.to_string()))?;
        t.apply_conf(cfg, changes, 1);
        Ok::<(), Error>(())
    };
    if outgoing.is_empty() {
        for c in &incoming {
            apply(&mut t, false, std::slice::from_ref(c))?;
        }
    } else {
        for c in &outgoing {
            apply(&mut t, false, std::slice::from_ref(c))?;
        }
        apply(&mut t, true, &incoming)?;
    }
    let got = t.conf().to_conf_state();
    let same =
        |a: &[u64], b: &[u64]| a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x));
    if !(same(&cs.voters, &got.voters)
        && same(&cs.learners, &got.learners)
        && same(&cs.voters_outgoing, &got.voters_outgoing)
        && same(&cs.learners_next, &got.learners_next)
        && cs.auto_leave == got.auto_leave)
    {
        return Err(bad(format!("it restores as {got:?}")));
    }
    Ok(())
}

fn raft_err(what: &str, e: raft::Error) -> Error {
    let kind = match &e {
        raft::Error::Io(_) => ErrorKind::Io,
        raft::Error::ProposalDropped => ErrorKind::Full,
        raft::Error::StepPeerNotFound => ErrorKind::NotFound,
        raft::Error::CodecError(_) => ErrorKind::Corrupt,
        _ => ErrorKind::InvalidArgument,
    };
    Error::new(kind, format!("raft: {what}: {e}"))
}

/// A Raft node: raft-rs's `RawNode` over a [`LogStorage`], applying to a [`StateMachine`].
pub struct Node<S: StateMachine> {
    raw: RawNode<LogStorage>,
    sm: S,
    cfg: Config,
    /// The batch being filled: header space + `[len][op]`s.
    batch: Vec<u8>,
    batch_count: u64,
    batch_first: u64,
    batch_since: Option<Duration>,
    next_id: u64,
    /// The next read's number (its id has [`ProposalId::READ`] set).
    next_read: u64,
    flushed: VecDeque<Flushed>,
    applied: u64,
    stats: Stats,
    dropped: Vec<ProposalId>,
    /// Reads waiting for this leader to commit an entry of its term: (read, term asked in).
    reads_waiting: Vec<(ProposalId, u64)>,
    /// Reads handed to raft-rs, waiting for a quorum's heartbeat answers: (read, term).
    reads_issued: Vec<(ProposalId, u64)>,
    /// Reads confirmed at an index, waiting for it to be applied: (read, index).
    reads_confirmed: Vec<(ProposalId, u64)>,
    /// Ticks held back while the log had unpersisted entries (see [`Node::tick`]).
    deferred_ticks: u32,
}

impl<S: StateMachine> Node<S> {
    /// Starts a node over `storage` (empty: a new member of `cfg.voters`; otherwise the node
    /// restarts from what it holds) and state machine `sm` (empty; restored from the storage's
    /// snapshot when there is one — committed entries after it are applied again by
    /// [`ready`](Self::ready)). A store holding entries or a snapshot but no voters is
    /// [`ErrorKind::Corrupt`]; one holding at most a HardState is a joining node's (with
    /// `cfg.voters` empty).
    pub fn new(cfg: Config, mut storage: LogStorage, mut sm: S) -> Result<Node<S>> {
        if cfg.id == 0 {
            return Err(Error::invalid("raft: node id 0 is reserved"));
        }
        if cfg.max_batch_ops == 0 || cfg.max_batch_bytes == 0 {
            return Err(Error::invalid(
                "raft: max_batch_ops and max_batch_bytes must be > 0",
            ));
        }
        if storage.is_empty() && !cfg.voters.is_empty() {
            if !cfg.voters.contains(&cfg.id) {
                return Err(Error::invalid(format!(
                    "raft: node {} is not among the voters {:?} of a new cluster",
                    cfg.id, cfg.voters
                )));
            }
            let cs = raft::eraftpb::ConfState {
                voters: cfg.voters.clone(),
                ..Default::default()
            };
            storage.set_conf_state(&cs, 0)?;
            storage.sync()?;
        } else if !storage.is_empty() && storage.conf_state().voters.is_empty() {
            // A store without a configuration is a new node's (a bootstrap writes its
            // voters, synced, before any entry) or a joining one's: it learns the
            // configuration from a snapshot, which carries it, and takes no entry before
            // that (see `validate`). Its store may hold a HardState (a term, a vote) and
            // nothing else. Entries (or a snapshot) with no voters anywhere — neither in a
            // configuration record nor in the snapshot — are not a node's store: raft-rs
            // would elect a node with no voters over them (and panic).
            return Err(Error::corrupt(
                "raft: the store holds a log but no voters (not a node's store, or damaged)",
            ));
        }
        let snap = storage.latest_snapshot();
        let applied = snap.get_metadata().index;
        if applied > 0 {
            sm.restore(&snap.data)?;
        }
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            min_election_tick: cfg.min_election_tick,
            max_election_tick: cfg.max_election_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            max_uncommitted_size: cfg.max_uncommitted_bytes,
            ..raft::Config::default()
        };
        rcfg.validate()
            .map_err(|e| raft_err("invalid configuration", e))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&rcfg, storage, &logger).map_err(|e| raft_err("cannot start", e))?;
        let batch = vec![0; BATCH_HEADER];
        Ok(Node {
            raw,
            sm,
            cfg,
            batch,
            batch_count: 0,
            batch_first: 1,
            batch_since: None,
            next_id: 1,
            next_read: 1,
            flushed: VecDeque::new(),
            applied,
            stats: Stats::default(),
            dropped: Vec::new(),
            reads_waiting: Vec::new(),
            reads_issued: Vec::new(),
            reads_confirmed: Vec::new(),
            deferred_ticks: 0,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The commit index this node knows of.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index of the last entry applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The voters of the configuration in force.
    pub fn voters(&self) -> Vec<u64> {
        self.raw.raft.prs().conf().to_conf_state().voters
    }

    /// The configuration in force (the last configuration change applied).
    pub fn membership(&self) -> Membership {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        Membership {
            voters: sorted(cs.voters),
            learners: sorted(cs.learners),
            voters_outgoing: sorted(cs.voters_outgoing),
            learners_next: sorted(cs.learners_next),
        }
    }

    /// True when this node has a configuration and is not in it: it was removed (it never
    /// campaigns; its host should stop it). False for a node still joining (no configuration
    /// yet).
    pub fn is_removed(&self) -> bool {
        let m = self.membership();
        m != Membership::default() && !m.contains(self.cfg.id)
    }

    /// The voter a leadership transfer started by this leader is handing over to.
    pub fn transferring(&self) -> Option<u64> {
        self.raw.raft.lead_transferee
    }

    /// The state machine (for local, possibly stale reads; [`read_index`](Self::read_index)
    /// for linearizable ones).
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The state machine, mutably: for a host's own bookkeeping in it. Changing the
    /// replicated state here, outside [`StateMachine::apply`], makes this replica diverge.
    pub fn state_machine_mut(&mut self) -> &mut S {
        &mut self.sm
    }

    /// The log store.
    pub fn storage(&self) -> &LogStorage {
        self.raw.store()
    }

    /// The node's counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Advances raft's logical clock by one tick (elections, heartbeats, check-quorum).
    ///
    /// raft-rs asserts that a node becoming leader has persisted its whole log, and a sole
    /// voter wins the election its tick starts at once: so a node that is not the leader
    /// holds its ticks back while entries stepped in since the last [`Node::ready`] are not
    /// persisted, and gives them on the next tick after the Ready (the election timer is late
    /// by at most that one round).
    pub fn tick(&mut self) {
        if self.unpersisted() && !self.is_leader() {
            self.deferred_ticks = self.deferred_ticks.saturating_add(1);
            return;
        }
        for _ in 0..std::mem::take(&mut self.deferred_ticks) {
            self.raw.tick();
        }
        self.raw.tick();
    }

    /// True between a step that appended entries and the Ready that persists them.
    fn unpersisted(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.last_index() != log.persisted
    }

    /// Asks this node to campaign now (tests, leadership hand-over by hand).
    /// `InvalidArgument` when it is not a voter (joining, a learner, removed); `Busy` while
    /// entries stepped since the last [`Node::ready`] are not persisted (run a Ready first;
    /// see [`Node::tick`]).
    pub fn campaign(&mut self) -> Result<()> {
        // raft-rs's campaign does not check that this node may vote: one without voters (a
        // joining node) would win with an empty quorum and panic (found by raft_step).
        if !self.voters().contains(&self.cfg.id) {
            return Err(Error::invalid(format!(
                "raft: node {} is not a voter of its configuration: it cannot campaign",
                self.cfg.id
            )));
        }
        if self.unpersisted() {
            return Err(Error::new(
                ErrorKind::Busy,
                "raft: cannot campaign with unpersisted entries: run ready first",
            ));
        }
        self.raw
            .campaign()
            .map_err(|e| raft_err("cannot campaign", e))
    }

    /// Tells the leader whether a snapshot sent to `peer` ([`Outgoing::is_snapshot`]) was
    /// delivered (`delivered`) or lost; replication to that peer resumes either way.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(peer, status);
    }

    /// Tells the leader that a message to `peer` could not be sent (the replication pipeline
    /// to it falls back to probing).
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    fn new_id(&mut self) -> ProposalId {
        let id = ProposalId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Asks for a linearizable read (Raft's ReadIndex, §6.4 of the Raft thesis): the leader
    /// notes its commit index, confirms with a quorum's heartbeat answers that it still leads,
    /// and once that index is applied the read comes back in [`Out::reads`] — then read the
    /// state machine. No log entry is written. A new leader first commits an entry of its term
    /// (the read waits for it). The read is [`Out::dropped`] when this node stops leading, or
    /// its term changes, before the quorum answered: ask again (at the leader).
    ///
    /// Only the leader serves reads: on another node the answer is [`Proposed::NotLeader`]
    /// naming the leader it knows (raft-rs could forward the request to the leader, but a
    /// forwarded request that is lost is never answered; a client asking the leader itself
    /// gets a clear answer and knows whom to ask).
    pub fn read_index(&mut self, _now: Duration) -> Result<Proposed> {
        if !self.is_leader() {
            return Ok(Proposed::NotLeader {
                leader: self.leader(),
            });
        }
        let id = ProposalId(ProposalId::READ | self.next_read);
        self.next_read += 1;
        self.stats.reads += 1;
        self.reads_waiting.push((id, self.term()));
        self.issue_reads();
        Ok(Proposed::Accepted(id))
    }

    /// Hands the waiting reads to raft-rs once this leader committed an entry of its term
    /// (raft-rs silently ignores reads before that).
    fn issue_reads(&mut self) {
        if self.reads_waiting.is_empty()
            || !self.is_leader()
            || !self.raw.raft.commit_to_current_term()
        {
            return;
        }
        for (id, term) in std::mem::take(&mut self.reads_waiting) {
            if term != self.term() {
                self.dropped.push(id);
                continue;
            }
            self.raw.read_index(id.0.to_le_bytes().to_vec());
            self.reads_issued.push((id, term));
        }
    }

    fn confirm_read(&mut self, rs: ReadState) {
        let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) else {
            return;
        };
        let id = ProposalId(u64::from_le_bytes(ctx));
        if let Some(k) = self.reads_issued.iter().position(|r| r.0 == id) {
            self.reads_issued.remove(k);
            self.reads_confirmed.push((id, rs.index));
        }
    }

    /// Drops the reads that can no longer be confirmed and completes the applied ones.
    fn settle_reads(&mut self, out: &mut Out) {
        let (leader, term) = (self.is_leader(), self.term());
        for q in [&mut self.reads_waiting, &mut self.reads_issued] {
            q.retain(|&(id, t)| {
                let keep = leader && t == term;
                if !keep {
                    self.dropped.push(id);
                }
                keep
            });
        }
        let applied = self.applied;
        self.reads_confirmed.retain(|&(id, index)| {
            let done = index <= applied;
            if done {
                out.reads.push(ReadReady { id, index });
            }
            !done
        });
    }

    /// Starts handing leadership to voter `to` (Raft's leadership transfer, §3.10): the
    /// leader brings `to`'s log up to date (a lagging follower is caught up first), then
    /// tells it to campaign at once; meanwhile the leader takes no proposals (they answer
    /// [`ErrorKind::Full`]: retry at the new leader). raft-rs gives up after an election
    /// timeout (see [`transferring`](Self::transferring)); watch [`leader`](Self::leader).
    /// `to == id()` does nothing.
    ///
    /// Errors: [`ErrorKind::NotLeader`] on a node that does not lead; `InvalidArgument` for
    /// node 0, a learner, or a node that is not a voter.
    pub fn transfer_leader(&mut self, to: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::new(
                ErrorKind::NotLeader,
                format!(
                    "raft: node {} cannot transfer leadership: it does not lead (leader {:?})",
                    self.cfg.id,
                    self.leader()
                ),
            ));
        }
        if to == self.cfg.id {
            return Ok(());
        }
        let m = self.membership();
        if !m.voters.contains(&to) {
            let what = if m.learners.contains(&to) || m.learners_next.contains(&to) {
                "a learner"
            } else {
                "not a voter of the configuration"
            };
            return Err(Error::invalid(format!(
                "raft: cannot transfer leadership to node {to}: {what}"
            )));
        }
        self.stats.transfers += 1;
        self.raw.transfer_leader(to);
        Ok(())
    }

    /// Proposes a membership change by joint consensus (§4.3 of the Raft thesis): the cluster
    /// first moves to the joint configuration (old and new voters, each majority needed), and
    /// once that is applied the leader proposes leaving it (also a new leader that finds the
    /// configuration joint) — so any change, even of several voters at once, keeps a single
    /// quorum intersection. The outcome is [`Out::applied`] (with an empty result) when the
    /// joint configuration is applied; [`Node::membership`] tells when it was left. A node
    /// that is added starts with an empty storage and `Config::voters` empty; every node takes
    /// a snapshot after applying a change, so the leader sends the newcomer that snapshot
    /// (with the configuration) rather than the log from its start.
    ///
    /// Not on the leader: [`Proposed::NotLeader`]. Errors: `InvalidArgument` for no changes,
    /// node 0, a node named twice, removing a node that is not a member, or a change raft-rs
    /// refuses (removing every voter); [`ErrorKind::Busy`] while another change is under way
    /// (joint, or not yet applied) or a leadership transfer is; `Full` when raft-rs refuses
    /// more uncommitted entries.
    pub fn change_membership(&mut self, changes: &[MemberChange]) -> Result<Proposed> {
        if !self.is_leader() {
            return Ok(Proposed::NotLeader {
                leader: self.leader(),
            });
        }
        if changes.is_empty() {
            return Err(Error::invalid("raft: a membership change without changes"));
        }
        let m = self.membership();
        let mut ccs = Vec::with_capacity(changes.len());
        for (k, c) in changes.iter().enumerate() {
            let (ty, id) = match *c {
                MemberChange::AddVoter(id) => (ConfChangeType::AddNode, id),
                MemberChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
                MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id),
            };
            if id == 0 {
                return Err(Error::invalid(
                    "raft: membership change naming node 0 (reserved)",
                ));
            }
            if changes[..k].iter().any(|p| {
                matches!(*p, MemberChange::AddVoter(x) | MemberChange::AddLearner(x) | MemberChange::Remove(x) if x == id)
            }) {
                return Err(Error::invalid(format!(
                    "raft: membership change naming node {id} twice"
                )));
            }
            if id == self.cfg.id && ty != ConfChangeType::AddNode {
                return Err(Error::invalid(format!(
                    "raft: the leader {id} cannot remove or demote itself: transfer leadership \
                     first"
                )));
            }
            if ty == ConfChangeType::RemoveNode && !m.contains(id) {
                return Err(Error::invalid(format!(
                    "raft: cannot remove node {id}: not a member"
                )));
            }
            let mut cc = ConfChangeSingle::default();
            cc.set_change_type(ty);
            cc.node_id = id;
            ccs.push(cc);
        }
        if m.is_joint()
            || self.raw.raft.pending_conf_index > self.applied
            || self.raw.raft.lead_transferee.is_some()
        {
            return Err(Error::new(
                ErrorKind::Busy,
                "raft: a membership change or leadership transfer is under way",
            ));
        }
        // What raft-rs will check when applying it: refused now, not after committing.
        raft::Changer::new(self.raw.raft.prs())
            .enter_joint(false, &ccs)
            .map_err(|e| raft_err("membership change refused", e))?;
        // The open batch goes first: its operations' ids stay consecutive.
        self.flush(Duration::ZERO)?;
        let id = self.new_id();
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Explicit);
        cc.set_changes(ccs.into());
        let mut ctx = self.cfg.id.to_le_bytes().to_vec();
        ctx.extend_from_slice(&id.0.to_le_bytes());
        self.raw
            .propose_conf_change(ctx, cc)
            .map_err(|e| raft_err("membership change refused", e))?;
        self.stats.conf_changes += 1;
        let index = self.raw.raft.raft_log.last_index();
        self.track_flushed(Flushed {
            index,
            term: self.raw.raft.term,
            first: id.0,
            count: 1,
        });
        Ok(Proposed::Accepted(id))
    }

    /// The leader leaves a joint configuration once it is applied (raft-rs's own auto-leave
    /// is lost if the leader changes before; this one is done by whoever leads). A leader
    /// that is not a voter of the incoming configuration (elected by the outgoing one) hands
    /// leadership to the most up-to-date incoming voter instead: leaving would leave it
    /// leading a cluster it is not a member of.
    fn maybe_leave_joint(&mut self) -> Result<()> {
        let r = &self.raw.raft;
        let m = self.membership();
        if !self.is_leader()
            || !m.is_joint()
            || r.pending_conf_index > self.applied
            || r.lead_transferee.is_some()
            || !r.commit_to_current_term()
        {
            return Ok(());
        }
        if !m.voters.contains(&self.cfg.id) {
            let prs = r.prs();
            let to = m
                .voters
                .iter()
                .copied()
                .max_by_key(|&v| prs.get(v).map_or(0, |p| p.matched));
            if let Some(to) = to {
                self.stats.transfers += 1;
                self.raw.transfer_leader(to);
            }
            return Ok(());
        }
        match self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Ok(()),
            Err(e) => Err(raft_err("cannot leave the joint configuration", e)),
        }
    }

    /// Records a batch (or membership change) appended to the log at `f.index`.
    fn track_flushed(&mut self, f: Flushed) {
        // Batches this node flushed at `index` or later in an earlier term were cut from its
        // log (never committed: a new leader's entries replaced them) before it led again.
        // Dropped now, so `flushed` stays in index order: `apply_entries` matches it against
        // committed entries front to back (found by the linearizability check: a batch
        // flushed below a stale one was applied and then reported dropped).
        while let Some(g) = self.flushed.back().copied().filter(|g| g.index >= f.index) {
            self.flushed.pop_back();
            self.dropped
                .extend((g.first..g.first + g.count).map(ProposalId));
        }
        self.flushed.push_back(f);
    }

    /// Proposes an operation: taken into the leader's batch (flushed by this call when full,
    /// otherwise by [`ready`](Self::ready)); `now` starts the batch window. Not on a leader:
    /// [`Proposed::NotLeader`]. Errors: [`ErrorKind::TooLarge`] for an operation over
    /// `max_batch_bytes`, [`ErrorKind::Full`] while the batch is full and raft-rs refuses more
    /// uncommitted entries (back-pressure: retry after [`ready`](Self::ready)).
    pub fn propose(&mut self, op: &[u8], now: Duration) -> Result<Proposed> {
        if !self.is_leader() {
            return Ok(Proposed::NotLeader {
                leader: self.leader(),
            });
        }
        if op.len() > self.cfg.max_batch_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "raft: operation of {} bytes over max_batch_bytes {}",
                    op.len(),
                    self.cfg.max_batch_bytes
                ),
            ));
        }
        // The op would overflow the batch's bytes (or a full batch is still waiting because
        // raft-rs refused it): flush first; a refusal is back-pressure and the op is not taken.
        if self.batch_count as usize >= self.cfg.max_batch_ops
            || (self.batch_count > 0
                && self.batch.len() - BATCH_HEADER + 4 + op.len() > self.cfg.max_batch_bytes)
        {
            self.flush(now)?;
            self.stats.flush_full += 1;
        }
        if self.batch_count == 0 {
            self.batch_first = self.next_id;
            self.batch_since = Some(now);
        }
        self.batch
            .extend_from_slice(&(op.len() as u32).to_le_bytes());
        self.batch.extend_from_slice(op);
        self.batch_count += 1;
        let id = ProposalId(self.next_id);
        self.next_id += 1;
        self.stats.proposed += 1;
        // A batch full by count goes out now; if raft-rs refuses it, it waits (the op is taken:
        // it is in the batch, nothing is lost) and the next propose answers Full.
        if self.batch_count as usize >= self.cfg.max_batch_ops && self.flush(now).is_ok() {
            self.stats.flush_full += 1;
        }
        Ok(Proposed::Accepted(id))
    }

    /// Hands the batch to raft-rs as one entry.
    fn flush(&mut self, _now: Duration) -> Result<()> {
        if self.batch_count == 0 {
            return Ok(());
        }
        self.batch[0] = BATCH_MAGIC;
        self.batch[1..9].copy_from_slice(&self.cfg.id.to_le_bytes());
        self.batch[9..17].copy_from_slice(&self.batch_first.to_le_bytes());
        self.batch[17..21].copy_from_slice(&(self.batch_count as u32).to_le_bytes());
        // raft-rs takes the bytes; a copy keeps the batch if it refuses them (nothing lost).
        match self.raw.propose(Vec::new(), self.batch.clone()) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.track_flushed(Flushed {
                    index,
                    term: self.raw.raft.term,
                    first: self.batch_first,
                    count: self.batch_count,
                });
                self.batch.truncate(BATCH_HEADER);
                self.batch_count = 0;
                self.batch_since = None;
                self.stats.batches += 1;
                Ok(())
            }
            Err(e) => Err(raft_err("proposal refused", e)),
        }
    }

    /// True when a quorum (counting the leader) has a free replication slot: a flushed batch
    /// would go out at once.
    fn pipeline_free(&self) -> bool {
        let prs = self.raw.raft.prs();
        let voters = prs.conf().to_conf_state().voters;
        let free = voters
            .iter()
            .filter(|&&v| v == self.cfg.id || prs.get(v).is_some_and(|p| !p.ins.full()))
            .count();
        free > voters.len() / 2
    }

    fn maybe_flush(&mut self, now: Duration) -> Result<()> {
        if self.batch_count == 0 || !self.is_leader() {
            return Ok(());
        }
        let since = self.batch_since.unwrap_or(now);
        let slot = self.pipeline_free();
        if !slot && now.saturating_sub(since) < self.cfg.batch_window {
            return Ok(());
        }
        match self.flush(now) {
            Ok(()) if slot => self.stats.flush_slot += 1,
            Ok(()) => self.stats.flush_window += 1,
            // raft-rs refuses more uncommitted bytes: the batch waits for commits.
            Err(e) if e.kind() == ErrorKind::Full => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// When the host must call [`ready`](Self::ready) at the latest for the batch window to
    /// hold (None: no batch waiting).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.batch_since.map(|t| t + self.cfg.batch_window)
    }

    /// Steps a message received from a peer (its [`Outgoing::bytes`]). Bytes that do not
    /// decode are [`ErrorKind::Corrupt`]; a message from a node that is not a member of the
    /// configuration is [`ErrorKind::NotFound`] (except a leader's appends, heartbeats and
    /// snapshots: this node may lag behind the change that made their sender a member); a
    /// message raft-rs would trust and choke on is [`ErrorKind::InvalidArgument`] — addressed
    /// to another node, from itself, of a local type, a forwarded proposal, a forwarded
    /// request that carries a term, without a term, entries that are not contiguous or
    /// conflict with committed ones, entries for a node without a configuration (it learns
    /// one by snapshot first), a zero log term, a heartbeat committing past this node's log,
    /// a snapshot without index, term or voters or with a configuration raft-rs cannot
    /// restore, a message that would elect this node before its log is persisted — and a
    /// snapshot whose data
    /// [`StateMachine::check_snapshot`] refuses is that error. A rejected message changes
    /// nothing; raft-rs's own refusals (a response from a removed peer) are errors too.
    pub fn step(&mut self, bytes: &[u8]) -> Result<()> {
        self.step_checked(None, bytes)
    }

    /// [`Node::step`] for a message that arrived from node `from` over a transport that
    /// vouches for its senders (every transport of the engine does): a message that claims
    /// another sender is [`ErrorKind::InvalidArgument`] — a peer of the transport that is not
    /// this sender (a client, another member) must not speak for it.
    pub fn step_from(&mut self, from: u64, bytes: &[u8]) -> Result<()> {
        self.step_checked(Some(from), bytes)
    }

    fn step_checked(&mut self, sender: Option<u64>, bytes: &[u8]) -> Result<()> {
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| Error::corrupt(format!("raft: message does not decode: {e}")))?;
        if let Some(s) = sender.filter(|&s| s != m.from) {
            return Err(Error::invalid(format!(
                "raft: a message claiming to be from node {} arrived from node {s}",
                m.from
            )));
        }
        if m.to != self.cfg.id || m.from == 0 || m.from == self.cfg.id {
            return Err(Error::invalid(format!(
                "raft: message from {} to {} stepped on node {}",
                m.from, m.to, self.cfg.id
            )));
        }
        if raft::raw_node::is_local_msg(m.get_msg_type()) {
            return Err(Error::invalid(format!(
                "raft: local message type {:?} from the network",
                m.get_msg_type()
            )));
        }
        self.validate(&m)?;
        self.raw.step(m).map_err(|e| raft_err("cannot step", e))
    }

    /// Checks what raft-rs would otherwise trust (and `panic!` on): raft-rs assumes messages
    /// from correct peers; a garbled frame must not take the node down.
    fn validate(&self, m: &Message) -> Result<()> {
        use MessageType::*;
        let bad = |why: String| {
            Err(Error::invalid(format!(
                "raft: message {:?} from {}: {why}",
                m.get_msg_type(),
                m.from
            )))
        };
        let log = &self.raw.raft.raft_log;
        // Only a leader's messages are taken from a node outside this node's configuration:
        // a node that lags behind a membership change (or is still joining, without a
        // configuration) must follow a leader its configuration does not know yet — Raft's
        // safety never depended on it. Votes, answers and the rest from a stranger (a removed
        // node that does not know it yet) are refused: they could only disrupt.
        // A node still joining (no configuration yet) may already be a voter of the
        // configuration in force: it must answer votes too, or a cluster that added it and
        // then lost its leader could never elect one (found by the churn simulation).
        let from_leader = matches!(m.get_msg_type(), MsgAppend | MsgHeartbeat | MsgSnapshot);
        let joining = self.membership() == Membership::default();
        if !from_leader && !joining && self.raw.raft.prs().get(m.from).is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "raft: message from node {}, not a member of the configuration",
                    m.from
                ),
            ));
        }
        // raft-rs treats a term-0 message as local and skips its term checks: only the
        // messages forwarded to a leader travel without a term.
        if m.term == 0 && !matches!(m.get_msg_type(), MsgReadIndex | MsgTransferLeader) {
            return bad("a message without a term".into());
        }
        // Messages that can make this node leader at once: raft-rs asserts the whole log is
        // persisted then. A genuine one never finds unpersisted entries: a node campaigns
        // only with its log persisted (see `tick`), a candidate's log does not change, and a
        // transfer waits until the transferee's log is acknowledged.
        let campaigning = matches!(
            self.raw.raft.state,
            StateRole::Candidate | StateRole::PreCandidate
        );
        let votes = matches!(
            m.get_msg_type(),
            MsgRequestVoteResponse | MsgRequestPreVoteResponse
        );
        if self.unpersisted()
            && ((votes && campaigning) || (m.get_msg_type() == MsgTimeoutNow && !self.is_leader()))
        {
            return bad("it would elect this node before its log is persisted".into());
        }
        match m.get_msg_type() {
            MsgPropose => return bad("proposals are not forwarded between nodes".into()),
            // raft-rs forwards both to the leader from a follower and panics if the message
            // carries a term then: a read index never carries one, a transfer request
            // carries its sender's and is for the leader only.
            MsgReadIndex if m.term != 0 => return bad("a read index with a term".into()),
            MsgTransferLeader if m.term != 0 && !self.is_leader() => {
                return bad("a leader transfer for a node that does not lead".into());
            }
            MsgRequestVote
            | MsgRequestPreVote
            | MsgRequestVoteResponse
            | MsgRequestPreVoteResponse
                if m.term == 0 =>
            {
                return bad("a vote message needs a term".into());
            }
            MsgHeartbeat if m.commit > log.last_index() && m.term >= self.term() => {
                return bad(format!(
                    "commit {} beyond this node's last entry {}",
                    m.commit,
                    log.last_index()
                ));
            }
            // Our bootstrap configuration is in the ConfState, not in the log: a node
            // without a configuration must learn it from a snapshot before taking entries
            // (a leader's log starts after the change that added a node: it sends one). At
            // index 0 they would be appended to an empty log with no voters anywhere — a
            // store `Node::new` refuses. (Entries after an index this node lacks are only
            // answered with a rejection, which leads the leader to send the snapshot.)
            MsgAppend if joining && m.index == 0 && !m.get_entries().is_empty() => {
                return bad("entries for a node without a configuration (a snapshot first)".into());
            }
            MsgAppend => {
                if m.log_term > m.term {
                    return bad("a log term beyond the message's term".into());
                }
                // Every entry has a term >= 1, so only index 0 has log term 0; and raft-rs
                // reads term 0 for an index beyond its log: a zero log term would "match"
                // there and commit past the end.
                if m.index > 0 && m.log_term == 0 {
                    return bad(format!("index {} with log term 0", m.index));
                }
                for (expect, e) in (m.index + 1..).zip(m.get_entries()) {
                    if e.index != expect || e.term == 0 || e.term > m.term || e.term < m.log_term {
                        return bad(format!(
                            "entry {} (term {}) where {expect} (term {}..={}) belongs",
                            e.index, e.term, m.log_term, m.term
                        ));
                    }
                    // From a leader of this term or a newer one (raft-rs ignores older
                    // terms), an entry over this node's committed prefix must be the one
                    // committed (leader completeness).
                    if m.term >= self.term()
                        && e.index <= log.committed
                        // (raft-rs answers 0 for a compacted index: unknown, not a conflict)
                        && log.term(e.index).is_ok_and(|t| t != 0 && t != e.term)
                    {
                        return bad(format!(
                            "entry {} (term {}) conflicts with the committed one",
                            e.index, e.term
                        ));
                    }
                }
            }
            MsgSnapshot => {
                let meta = m.get_snapshot().get_metadata();
                let cs = meta.get_conf_state();
                if meta.index == 0
                    || meta.term == 0
                    || meta.term > m.term
                    || cs.voters.is_empty()
                    || cs.voters.iter().chain(&cs.learners).any(|&v| v == 0)
                {
                    return bad("a snapshot without index, term or voters".into());
                }
                check_conf_state(cs)?;
                self.sm.check_snapshot(&m.get_snapshot().data)?;
            }
            MsgReadIndex | MsgReadIndexResp if m.get_entries().len() != 1 => {
                return bad("a read-index message carries exactly one entry".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the Ready loop: flushes the batch if due, persists the new entries and HardState
    /// with one group commit, applies committed entries, and returns the messages to send and
    /// the results. When applying frees a pipeline slot and a waiting batch is flushed, its
    /// Ready is handled in the same call (a second group commit). An error (an I/O failure of
    /// the log) leaves the node unusable: drop it and start again from its storage.
    pub fn ready(&mut self, now: Duration) -> Result<Out> {
        let mut out = Out::default();
        self.issue_reads();
        self.maybe_leave_joint()?;
        self.maybe_flush(now)?;
        self.process_ready(&mut out)?;
        let batches = self.stats.batches;
        // A batch committed frees a slot: send the next one without waiting for the window.
        self.maybe_flush(now)?;
        if self.stats.batches != batches {
            self.process_ready(&mut out)?;
        }
        if !self.is_leader() {
            self.drop_batch();
        }
        if self.is_removed() {
            // A removed node hears no more entries: what it proposed may or may not commit.
            while let Some(f) = self.flushed.pop_front() {
                out.unknown
                    .extend((f.first..f.first + f.count).map(ProposalId));
            }
            self.drop_batch();
        }
        self.settle_reads(&mut out);
        self.maybe_snapshot()?;
        out.dropped.append(&mut self.dropped);
        Ok(out)
    }

    fn process_ready(&mut self, out: &mut Out) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        for rs in rd.take_read_states() {
            self.confirm_read(rs);
        }
        encode_messages(rd.take_messages(), &mut out.messages)?;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            self.sm.restore(&snap.data)?;
            self.raw.mut_store().apply_snapshot(snap)?;
            self.applied = index;
            while let Some(f) = self.flushed.front().copied().filter(|f| f.index <= index) {
                self.flushed.pop_front();
                out.unknown
                    .extend((f.first..f.first + f.count).map(ProposalId));
            }
            out.snapshot_installed = true;
        }
        let committed = rd.take_committed_entries();
        self.apply_entries(committed, out)?;
        if !rd.entries().is_empty() {
            out.entries_persisted += rd.entries().len() as u64;
            self.raw.mut_store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        let sync = self.raw.mut_store().sync()?;
        out.sync.records += sync.records;
        out.sync.bytes += sync.bytes;
        out.sync.syncs += sync.syncs;
        self.stats.syncs += sync.syncs;
        encode_messages(rd.take_persisted_messages(), &mut out.messages)?;
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Durable with the next group commit; a crash before it only lowers the commit
            // index recovered, which raft-rs learns again from the leader.
            self.raw.mut_store().set_commit(commit)?;
        }
        encode_messages(light.take_messages(), &mut out.messages)?;
        self.apply_entries(light.take_committed_entries(), out)?;
        self.raw.advance_apply();
        Ok(())
    }

    fn drop_batch(&mut self) {
        if self.batch_count > 0 {
            self.dropped
                .extend((self.batch_first..self.batch_first + self.batch_count).map(ProposalId));
            self.batch.truncate(BATCH_HEADER);
            self.batch_count = 0;
            self.batch_since = None;
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Out) -> Result<()> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            // Our flushed batches before this index were replaced by another leader's entries.
            while let Some(f) = self.flushed.front().copied().filter(|f| f.index < e.index) {
                self.flushed.pop_front();
                self.dropped
                    .extend((f.first..f.first + f.count).map(ProposalId));
            }
            let mine = self.flushed.front().copied().filter(|f| f.index == e.index);
            if mine.is_some() {
                self.flushed.pop_front();
            }
            // Whether this entry is the batch we flushed there (same proposer, term and ids).
            let mut ours = false;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => match decode_batch(&e.data) {
                    Some((proposer, first, ops)) => {
                        ours = mine.is_some_and(|f| {
                            proposer == self.cfg.id
                                && f.term == e.term
                                && f.first == first
                                && f.count == ops.len() as u64
                        });
                        for (k, op) in ops.iter().enumerate() {
                            let result = self.sm.apply(e.index, op);
                            if ours {
                                out.applied.push(Applied {
                                    id: ProposalId(first + k as u64),
                                    index: e.index,
                                    result,
                                });
                            }
                        }
                    }
                    None => self.stats.malformed_entries += 1,
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| {
                        Error::corrupt(format!(
                            "raft: conf change {} does not decode: {err}",
                            e.index
                        ))
                    })?;
                    // A version-1 change is one simple change.
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    let mut v2 = ConfChangeV2::default();
                    v2.set_changes(vec![single].into());
                    self.apply_conf(e.index, &v2)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| {
                        Error::corrupt(format!(
                            "raft: conf change {} does not decode: {err}",
                            e.index
                        ))
                    })?;
                    let done = self.apply_conf(e.index, &cc)?;
                    ours = done
                        && mine.is_some_and(|f| {
                            f.term == e.term && f.count == 1 && {
                                let mut ctx = self.cfg.id.to_le_bytes().to_vec();
                                ctx.extend_from_slice(&f.first.to_le_bytes());
                                e.context == ctx
                            }
                        });
                    if ours {
                        out.applied.push(Applied {
                            id: ProposalId(mine.map_or(0, |f| f.first)),
                            index: e.index,
                            result: Vec::new(),
                        });
                    }
                }
            }
            if let (Some(f), false) = (mine, ours) {
                self.dropped
                    .extend((f.first..f.first + f.count).map(ProposalId));
            }
            self.applied = e.index;
        }
        Ok(())
    }

    /// Applies the configuration change committed at `index` (unless the stored ConfState
    /// already holds it: a restarted node re-applying its log). False when raft-rs refused
    /// it (it then has no effect, on every node alike).
    fn apply_conf(&mut self, index: u64, cc: &ConfChangeV2) -> Result<bool> {
        if index <= self.raw.store().conf_index() {
            return Ok(true);
        }
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                // A leader that is no voter once the change is complete (elected by the
                // outgoing half, it applied the leave a predecessor proposed) steps down:
                // raft-rs cannot lead without its own progress (it would panic).
                if self.is_leader()
                    && cs.voters_outgoing.is_empty()
                    && !cs.voters.contains(&self.cfg.id)
                {
                    let term = self.term();
                    self.raw.raft.become_follower(term, 0);
                }
                self.raw.mut_store().set_conf_state(&cs, index)?;
                self.stats.conf_applied += 1;
                Ok(true)
            }
            Err(_) => {
                self.stats.conf_refused += 1;
                Ok(false)
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<()> {
        // A snapshot written in the background is installed once its file is durable.
        if self.raw.mut_store().finish_snapshot(false)?.is_some() {
            self.stats.snapshots += 1;
        }
        let n = self.cfg.snapshot_entries;
        let store = self.raw.store();
        // The configuration in force changed after the latest snapshot: take one now (a node
        // that joins learns the configuration from a snapshot, never from the log's start).
        // Derived from the store, so a restart before the snapshot still takes it.
        let due = store.conf_index() > store.snapshot_index();
        if (!due && (n == 0 || self.applied < store.snapshot_index() + n))
            || self.applied > store.hard_state().commit
        {
            return Ok(());
        }
        let background = self.cfg.background_snapshots && !due;
        if background && store.snapshot_pending() {
            return Ok(()); // one at a time; the next is due from the one being written
        }
        let data = self.sm.snapshot();
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let applied = self.applied;
        if background && self.raw.store().is_durable() {
            self.raw.mut_store().begin_snapshot(applied, conf, data)?;
        } else {
            self.raw.mut_store().create_snapshot(applied, conf, data)?;
            self.stats.snapshots += 1;
        }
        Ok(())
    }
}

fn encode_messages(msgs: Vec<Message>, out: &mut Vec<Outgoing>) -> Result<()> {
    for m in msgs {
        let bytes = m
            .write_to_bytes()
            .map_err(|e| Error::invalid(format!("raft: cannot encode a message: {e}")))?;
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        out.push(Outgoing {
            to: m.to,
            bytes,
            is_snapshot,
        });
    }
    Ok(())
}
