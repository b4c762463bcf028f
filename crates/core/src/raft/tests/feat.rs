//! Unit tests of the Raft features beyond replication: ReadIndex reads, leadership transfer,
//! membership changes by joint consensus and learners, on a small lock-step cluster (every
//! node ticks and runs its Ready each round; messages are delivered the round after, except
//! to and from isolated nodes).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

struct Cluster {
    nodes: BTreeMap<u64, Node<KvStore>>,
    root: TempDir,
    now: Duration,
    /// (from, message) to deliver next round.
    wire: Vec<(u64, Outgoing)>,
    isolated: BTreeSet<u64>,
    reads: Vec<(u64, ReadReady)>,
    applied: Vec<(u64, Applied)>,
    dropped: Vec<(u64, ProposalId)>,
    /// Messages a node refused (e.g. from a removed node), by the refusing node's id.
    refused: BTreeMap<u64, u64>,
}

fn cfg(id: u64, voters: Vec<u64>) -> Config {
    let mut c = Config::new(id, voters);
    c.snapshot_entries = 0;
    c
}

impl Cluster {
    /// Nodes 1..=n, durable, with node 1 elected.
    fn new(n: u64, name: &str) -> Cluster {
        let root = TempDir::new(name);
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            root,
            now: Duration::ZERO,
            wire: Vec::new(),
            isolated: BTreeSet::new(),
            reads: Vec::new(),
            applied: Vec::new(),
            dropped: Vec::new(),
            refused: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id, (1..=n).collect());
        }
        c.nodes.get_mut(&1).unwrap().campaign().unwrap();
        assert!(c.run_until(200, |c| c.leader() == Some(1)), "node 1 leads");
        // An entry of the leader's term is committed everywhere.
        assert!(c.run_until(200, |c| {
            let ci = c.nodes[&1].commit_index();
            c.nodes[&1].raw.raft.commit_to_current_term()
                && c.nodes
                    .values()
                    .all(|n| n.applied_index() == ci && n.leader() == Some(1))
        }));
        c
    }

    fn start(&mut self, id: u64, voters: Vec<u64>) {
        let st = LogStorage::open(self.root.0.join(format!("n{id}"))).unwrap();
        let node = Node::new(cfg(id, voters), st, KvStore::new()).unwrap();
        self.nodes.insert(id, node);
    }

    fn node(&mut self, id: u64) -> &mut Node<KvStore> {
        self.nodes.get_mut(&id).unwrap()
    }

    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.is_leader() && !self.isolated.contains(&n.id()))
            .map(|n| n.id())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    fn round(&mut self) {
        self.now += Duration::from_millis(10);
        for (from, m) in std::mem::take(&mut self.wire) {
            if self.isolated.contains(&from) || self.isolated.contains(&m.to) {
                if m.is_snapshot {
                    if let Some(n) = self.nodes.get_mut(&from) {
                        n.report_snapshot(m.to, false);
                    }
                }
                continue;
            }
            let Some(n) = self.nodes.get_mut(&m.to) else {
                continue;
            };
            if n.step(&m.bytes).is_err() {
                *self.refused.entry(m.to).or_default() += 1;
            }
            if m.is_snapshot {
                self.nodes
                    .get_mut(&from)
                    .unwrap()
                    .report_snapshot(m.to, true);
            }
        }
        let now = self.now;
        for (&id, n) in self.nodes.iter_mut() {
            n.tick();
            let out = n.ready(now).unwrap();
            self.wire.extend(out.messages.into_iter().map(|m| (id, m)));
            self.reads.extend(out.reads.into_iter().map(|r| (id, r)));
            self.applied
                .extend(out.applied.into_iter().map(|a| (id, a)));
            self.dropped
                .extend(out.dropped.into_iter().map(|d| (id, d)));
        }
    }

    fn run_until(&mut self, rounds: usize, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..rounds {
            if done(self) {
                return true;
            }
            self.round();
        }
        done(self)
    }

    fn set(&mut self, at: u64, key: &str, value: &str) -> ProposalId {
        let op = KvOp::Set {
            key: key.into(),
            value: value.into(),
        };
        let now = self.now;
        match self.node(at).propose(&op.encode(), now).unwrap() {
            Proposed::Accepted(id) => id,
            other => panic!("set at {at}: {other:?}"),
        }
    }

    fn applied_id(&self, node: u64, id: ProposalId) -> bool {
        self.applied.iter().any(|(n, a)| (*n, a.id) == (node, id))
    }

    fn read_done(&self, node: u64, id: ProposalId) -> Option<u64> {
        self.reads
            .iter()
            .find(|(n, r)| (*n, r.id) == (node, id))
            .map(|(_, r)| r.index)
    }

    fn read(&mut self, at: u64) -> Proposed {
        let now = self.now;
        self.node(at).read_index(now).unwrap()
    }
}

fn accepted(p: Proposed) -> ProposalId {
    match p {
        Proposed::Accepted(id) => id,
        other => panic!("not accepted: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ReadIndex.

#[test]
fn read_index_waits_for_the_quorum_and_sees_committed_writes() {
    let mut c = Cluster::new(3, "raft-read");
    let w = c.set(1, "k", "v1");
    assert!(c.run_until(50, |c| c.applied_id(1, w)));
    let r = accepted(c.read(1));
    // Not before the heartbeat round trip to a quorum.
    assert_eq!(c.read_done(1, r), None);
    assert!(c.run_until(50, |c| c.read_done(1, r).is_some()));
    let index = c.read_done(1, r).unwrap();
    assert!(index >= c.applied.iter().find(|(_, a)| a.id == w).unwrap().1.index);
    assert!(c.nodes[&1].applied_index() >= index);
    assert_eq!(c.nodes[&1].state_machine().get(b"k"), Some(&b"v1"[..]));
    assert_eq!(c.nodes[&1].stats().reads, 1);
    // No log entry for the read.
    let last = c.nodes[&1].storage().entries_held().last().unwrap().index;
    assert_eq!(last, c.nodes[&1].commit_index());
}

#[test]
fn read_index_on_a_follower_names_the_leader() {
    let mut c = Cluster::new(3, "raft-read-follower");
    assert_eq!(c.read(2), Proposed::NotLeader { leader: Some(1) });
}

#[test]
fn read_index_on_a_single_voter_completes_at_once() {
    let dir = TempDir::new("raft-read-single");
    let st = LogStorage::open(&dir.0).unwrap();
    let mut n = Node::new(cfg(1, vec![1]), st, KvStore::new()).unwrap();
    let mut now = Duration::ZERO;
    while !n.is_leader() {
        n.tick();
        now += Duration::from_millis(10);
        n.ready(now).unwrap();
    }
    n.ready(now).unwrap();
    let r = accepted(n.read_index(now).unwrap());
    let out = n.ready(now).unwrap();
    assert_eq!(
        out.reads,
        vec![ReadReady {
            id: r,
            index: n.commit_index()
        }]
    );
}

#[test]
fn read_index_of_an_isolated_leader_is_dropped_never_answered() {
    let mut c = Cluster::new(3, "raft-read-isolated");
    c.isolated.insert(1);
    let r = accepted(c.read(1));
    // Check-quorum deposes it; its read is dropped, not answered from a stale state.
    assert!(c.run_until(400, |c| c.dropped.contains(&(1, r))));
    assert_eq!(c.read_done(1, r), None);
    assert!(!c.nodes[&1].is_leader());
    // Meanwhile the others elected a leader and serve reads.
    c.isolated.clear();
    assert!(c.run_until(400, |c| c.leader().is_some_and(|l| l != 1)));
    let l = c.leader().unwrap();
    // (A new leader serves reads once an entry of its term is committed.)
    let r2 = accepted(c.read(l));
    assert!(c.run_until(100, |c| c.read_done(l, r2).is_some()));
}

// ---------------------------------------------------------------------------------------------
// Leadership transfer.

#[test]
fn leadership_moves_to_a_follower_and_to_a_lagging_one() {
    let mut c = Cluster::new(3, "raft-transfer");
    c.node(1).transfer_leader(2).unwrap();
    assert_eq!(c.nodes[&1].transferring(), Some(2));
    assert!(c.run_until(100, |c| c.leader() == Some(2)));
    assert_eq!(c.nodes[&2].stats().transfers, 0);
    // Node 3 misses writes, comes back, and is handed leadership at once: the leader
    // catches it up first (otherwise it could not win), and it holds every write.
    c.isolated.insert(3);
    let ids: Vec<ProposalId> = (0..20).map(|k| c.set(2, &format!("k{k}"), "v")).collect();
    assert!(c.run_until(100, |c| ids.iter().all(|&id| c.applied_id(2, id))));
    c.isolated.clear();
    c.node(2).transfer_leader(3).unwrap();
    assert!(c.run_until(200, |c| c.leader() == Some(3)));
    for k in 0..20 {
        assert_eq!(
            c.nodes[&3].state_machine().get(format!("k{k}").as_bytes()),
            Some(&b"v"[..]),
            "k{k}"
        );
    }
    // To itself: nothing to do.
    c.node(3).transfer_leader(3).unwrap();
    assert_eq!(c.nodes[&3].transferring(), None);
}

#[test]
fn leadership_transfer_refuses_bad_targets() {
    let mut c = Cluster::new(3, "raft-transfer-bad");
    let e = c.node(2).transfer_leader(3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotLeader);
    for bad in [0, 9] {
        let e = c.node(1).transfer_leader(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        assert!(e.to_string().contains("not a voter"), "{e}");
    }
    // A learner cannot lead.
    c.start(4, vec![]);
    let cc = accepted(
        c.node(1)
            .change_membership(&[MemberChange::AddLearner(4)])
            .unwrap(),
    );
    assert!(c.run_until(200, |c| c.applied_id(1, cc)
        && !c.nodes[&1].membership().is_joint()));
    let e = c.node(1).transfer_leader(4).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("learner"), "{e}");
    assert_eq!(c.nodes[&1].transferring(), None);
}

// ---------------------------------------------------------------------------------------------
// Membership.

/// Runs until the change `cc` proposed at `at` is applied and every node in `nodes` left the
/// joint configuration with the same membership.
fn settled(c: &mut Cluster, at: u64, cc: ProposalId) -> Membership {
    assert!(
        c.run_until(400, |c| {
            c.applied_id(at, cc)
                && c.nodes
                    .values()
                    .all(|n| n.is_removed() || n.membership() == c.nodes[&at].membership())
                && !c.nodes[&at].membership().is_joint()
        }),
        "membership settled: {:?}",
        c.nodes.values().map(|n| n.membership()).collect::<Vec<_>>()
    );
    c.nodes[&at].membership()
}

#[test]
fn learner_joins_is_promoted_and_a_voter_is_replaced() {
    let mut c = Cluster::new(3, "raft-members");
    for k in 0..10 {
        c.set(1, &format!("k{k}"), "v");
    }
    // A new node, empty, joins as a learner: it gets the state by snapshot.
    c.start(4, vec![]);
    assert!(!c.nodes[&4].is_removed(), "joining is not removed");
    let cc = accepted(
        c.node(1)
            .change_membership(&[MemberChange::AddLearner(4)])
            .unwrap(),
    );
    let m = settled(&mut c, 1, cc);
    assert_eq!((m.voters, m.learners), (vec![1, 2, 3], vec![4]));
    assert!(c.run_until(200, |c| c.nodes[&4].applied_index()
        == c.nodes[&1].applied_index()));
    assert_eq!(c.nodes[&4].state_machine().get(b"k9"), Some(&b"v"[..]));
    // Learners replicate but do not count: with two voters cut off, nothing commits (for
    // a few rounds, less than the election timeout after which check-quorum deposes 1).
    c.isolated.extend([2, 3]);
    let w = c.set(1, "blocked", "x");
    for _ in 0..6 {
        c.round();
    }
    assert!(!c.applied_id(1, w));
    c.isolated.clear();
    assert!(c.run_until(200, |c| c.applied_id(1, w)));
    // Promote 4 and remove 3 in one joint change.
    let cc = accepted(
        c.node(1)
            .change_membership(&[MemberChange::AddVoter(4), MemberChange::Remove(3)])
            .unwrap(),
    );
    // Busy while it is under way.
    let e = c
        .node(1)
        .change_membership(&[MemberChange::AddLearner(5)])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let m = settled(&mut c, 1, cc);
    assert_eq!((m.voters, m.learners), (vec![1, 2, 4], vec![]));
    assert!(c.run_until(100, |c| c.nodes[&3].is_removed()));
    // The removed node never campaigns and its messages are refused.
    let term = c.nodes[&1].term();
    c.node(3).campaign().ok();
    for _ in 0..100 {
        c.round();
    }
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.nodes[&1].term(), term);
    // The new voters commit without 3, including after 2 is cut off (1 and 4 are a quorum).
    c.isolated.insert(2);
    let w = c.set(1, "after", "y");
    assert!(c.run_until(200, |c| c.applied_id(1, w)));
    c.isolated.clear();
    // Restarts keep the new membership (ConfState and its index in the log store).
    let old = c.nodes[&1].membership();
    for id in [1, 2, 4] {
        c.nodes.remove(&id);
        c.start(id, vec![1, 2, 3]);
        assert_eq!(c.nodes[&id].membership(), old, "node {id} after restart");
    }
    c.nodes.get_mut(&4).unwrap().campaign().unwrap();
    assert!(c.run_until(400, |c| c.leader().is_some()));
    let l = c.leader().unwrap();
    let w = c.set(l, "restarted", "z");
    assert!(c.run_until(200, |c| c.applied_id(l, w)));
    assert!(c.nodes[&l].membership().voters == vec![1, 2, 4]);
}

#[test]
fn membership_change_refuses_bad_input() {
    let mut c = Cluster::new(3, "raft-members-bad");
    let invalid = |c: &mut Cluster, ch: &[MemberChange]| {
        let e = c.node(1).change_membership(ch).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{ch:?}: {e}");
        e.to_string()
    };
    invalid(&mut c, &[]);
    assert!(invalid(&mut c, &[MemberChange::AddVoter(0)]).contains("node 0"));
    assert!(invalid(&mut c, &[MemberChange::Remove(0)]).contains("node 0"));
    assert!(invalid(&mut c, &[MemberChange::Remove(9)]).contains("not a member"));
    assert!(invalid(
        &mut c,
        &[MemberChange::AddVoter(4), MemberChange::AddLearner(4)]
    )
    .contains("twice"));
    assert!(invalid(&mut c, &[MemberChange::Remove(1)]).contains("transfer leadership"));
    assert_eq!(
        c.node(2)
            .change_membership(&[MemberChange::AddLearner(4)])
            .unwrap(),
        Proposed::NotLeader { leader: Some(1) }
    );
    // Nothing was proposed.
    assert_eq!(c.nodes[&1].stats().conf_changes, 0);
    // Removing the last voter: a single-voter cluster cannot remove itself, and raft-rs's
    // own check (no voters left) is reported before anything is proposed.
    let dir = TempDir::new("raft-members-last");
    let st = LogStorage::open(&dir.0).unwrap();
    let mut n = Node::new(cfg(1, vec![1]), st, KvStore::new()).unwrap();
    let mut now = Duration::ZERO;
    while !n.is_leader() {
        n.tick();
        now += Duration::from_millis(10);
        n.ready(now).unwrap();
    }
    n.ready(now).unwrap();
    let e = n.change_membership(&[MemberChange::Remove(1)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = n
        .change_membership(&[MemberChange::AddLearner(2), MemberChange::AddLearner(1)])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(n.membership().voters, vec![1]);
}

#[test]
fn a_leader_elected_by_the_outgoing_half_hands_over_before_leaving() {
    // 1 proposes removing 3; 3 is then elected (by the outgoing majority and the incoming
    // one: 1, 2 vote for it) while joint. It must not leave the joint configuration as a
    // leader outside it: it transfers leadership to an incoming voter.
    let mut c = Cluster::new(3, "raft-members-outgoing");
    let cc = accepted(
        c.node(1)
            .change_membership(&[MemberChange::Remove(3)])
            .unwrap(),
    );
    // Once 1 applied the joint configuration (before it proposes leaving it), 3 is made
    // leader by a transfer (raft-rs's own: `Node::transfer_leader` refuses a voter that is
    // only in the outgoing half).
    assert!(c.run_until(100, |c| c.applied_id(1, cc)));
    assert!(c.nodes[&1].membership().is_joint());
    c.node(1).raw.transfer_leader(3);
    assert!(c.run_until(200, |c| c.nodes[&3].is_leader()));
    assert!(c.nodes[&3].membership().is_joint());
    assert!(c.run_until(400, |c| c.leader().is_some_and(|l| l != 3)
        && !c.nodes[&1].membership().is_joint()
        && !c.nodes[&2].membership().is_joint()));
    assert!(c.nodes[&3].stats().transfers >= 1);
    assert_eq!(c.nodes[&1].membership().voters, vec![1, 2]);
    assert!(c.run_until(200, |c| c.leader().is_some_and(|l| l != 3)));
    assert!(c.nodes[&3].is_removed());
}

#[test]
fn strangers_may_lead_but_not_vote() {
    // A node lagging behind a membership change must follow a leader it does not know yet;
    // anything else from a node outside its configuration is refused.
    let mut n = Node::new(cfg(1, vec![1, 2, 3]), LogStorage::memory(), KvStore::new()).unwrap();
    let msg = |ty: raft::eraftpb::MessageType| {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(ty);
        m.from = 9;
        m.to = 1;
        m.term = 5;
        m.write_to_bytes().unwrap()
    };
    use raft::eraftpb::MessageType::*;
    for ty in [
        MsgRequestVote,
        MsgRequestPreVote,
        MsgAppendResponse,
        MsgTimeoutNow,
    ] {
        let e = n.step(&msg(ty)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{ty:?}: {e}");
    }
    assert_eq!(n.term(), 0);
    n.step(&msg(MsgHeartbeat)).unwrap();
    assert_eq!((n.term(), n.leader()), (5, Some(9)));
    // A node still joining (no configuration) may already be a voter: it answers votes.
    let mut j = Node::new(cfg(4, vec![]), LogStorage::memory(), KvStore::new()).unwrap();
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(MsgRequestVote);
    m.from = 9;
    m.to = 4;
    m.term = 5;
    j.step(&m.write_to_bytes().unwrap()).unwrap();
    let out = j.ready(Duration::ZERO).unwrap();
    assert!(
        out.messages.iter().any(|o| o.to == 9),
        "the vote is answered"
    );
}

#[test]
fn a_joining_node_restarts_from_every_state_of_its_store() {
    // A node joins with no voters and learns them by snapshot. Its store goes through: empty;
    // a HardState only (the term of a leader it does not know yet); a snapshot carrying the
    // configuration; entries after it. Restarted (with no voters, as its host starts it)
    // after every round of the join until it held entries after its snapshot, it comes back
    // from each state and then catches up.
    use raft::eraftpb::MessageType;
    let mut c = Cluster::new(3, "raft-join-restarts");
    for k in 0..5 {
        c.set(1, &format!("k{k}"), "v");
    }
    let restart = |c: &mut Cluster| {
        c.nodes.remove(&4);
        c.start(4, vec![]);
    };
    c.start(4, vec![]);
    restart(&mut c);
    assert_eq!(c.nodes[&4].membership(), Membership::default());
    assert!(c.nodes[&4].storage().is_empty());
    // The leader, a stranger: its heartbeat is followed (the term kept across a restart),
    // entries at the log's start are refused (a configuration comes by snapshot first).
    let term = c.nodes[&1].term();
    let msg = |ty: MessageType, entries: Vec<Entry>| {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(ty);
        (m.from, m.to, m.term) = (1, 4, term);
        m.entries = entries.into();
        m.write_to_bytes().unwrap()
    };
    c.node(4)
        .step(&msg(MessageType::MsgHeartbeat, vec![]))
        .unwrap();
    let e = c
        .node(4)
        .step(&msg(
            MessageType::MsgAppend,
            vec![super::entry(1, term, b"x")],
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let now = c.now;
    c.node(4).ready(now).unwrap();
    restart(&mut c);
    let st = c.nodes[&4].storage();
    assert!(st.is_empty() && st.hard_state().term == term);
    assert_eq!((c.nodes[&4].term(), c.nodes[&4].applied_index()), (term, 0));
    // Joins as a learner, restarted every round; writes go on meanwhile.
    let cc = accepted(
        c.node(1)
            .change_membership(&[MemberChange::AddLearner(4)])
            .unwrap(),
    );
    // (snapshot held, entries after it, voters known) of each store it restarted from.
    let mut seen = BTreeSet::new();
    let mut k = 5;
    for round in 0..600 {
        let st = c.nodes[&4].storage();
        seen.insert((
            st.snapshot_index() > 0,
            !st.entries_held().is_empty(),
            !st.conf_state().voters.is_empty(),
        ));
        let caught_up = c.applied_id(1, cc)
            && c.nodes[&4].applied_index() == c.nodes[&1].applied_index()
            && c.nodes[&4].applied_index() > c.nodes[&4].storage().snapshot_index();
        if caught_up && k >= 15 && c.nodes[&4].state_machine().get(b"k14").is_some() {
            break;
        }
        if round % 3 == 0 && k < 15 {
            c.set(1, &format!("k{k}"), "v");
            k += 1;
        }
        c.round();
        // Restarted every round until it held a snapshot and entries after it; then left
        // to catch up.
        if !seen.contains(&(true, true, true)) {
            restart(&mut c);
        }
    }
    assert!(
        seen.contains(&(true, true, true)),
        "entries after the snapshot: {seen:?}"
    );
    assert!(
        seen.contains(&(true, false, true)),
        "the snapshot alone: {seen:?}"
    );
    // No store without a configuration ever held entries or a snapshot.
    assert!(
        seen.iter()
            .all(|&(snap, ents, voters)| voters || !(snap || ents)),
        "{seen:?}"
    );
    let n4 = &c.nodes[&4];
    assert_eq!(n4.applied_index(), c.nodes[&1].applied_index(), "caught up");
    assert_eq!(
        (n4.membership().voters, n4.membership().learners),
        (vec![1, 2, 3], vec![4])
    );
    for k in 0..15 {
        assert_eq!(
            n4.state_machine().get(format!("k{k}").as_bytes()),
            Some(&b"v"[..]),
            "k{k}"
        );
    }
}
