//! The Replica API for reads, leadership transfer and membership changes, over
//! [`SimNet`]: a node joins as a learner (its transport learns the peers; the others' get it
//! with `SimNet::add_node`), is promoted while another voter is removed, and leadership moves.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::net::sim::{SimEndpoint, SimNet, SimOptions};
use crate::raft::{Config, KvOp, KvStore, LogStorage, MemberChange};

type R = Replica<KvStore, SimEndpoint>;

struct Cluster {
    net: SimNet,
    reps: BTreeMap<u64, R>,
    now: u64,
    outcomes: BTreeMap<(u64, ProposalId), Outcome>,
}

fn opts() -> ReplicaOptions {
    ReplicaOptions {
        tick: Duration::from_millis(2),
        max_backlog: 64,
        max_recv: 64,
    }
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let mut c = Cluster {
            net: SimNet::new(SimOptions::seeded(7)),
            reps: BTreeMap::new(),
            now: 0,
            outcomes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.net.add_node(NodeId(id)).unwrap();
        }
        for id in 1..=n {
            c.add(id, (1..=n).collect());
        }
        c.reps.get_mut(&1).unwrap().node_mut().campaign().unwrap();
        assert!(c.run_until(500, |c| c.leader() == Some(1)));
        c
    }

    fn add(&mut self, id: u64, voters: Vec<u64>) {
        let mut cfg = Config::new(id, voters);
        cfg.snapshot_entries = 0;
        let node = Node::new(cfg, LogStorage::memory(), KvStore::new()).unwrap();
        let ep = self.net.endpoint(NodeId(id)).unwrap();
        self.reps
            .insert(id, Replica::new(node, ep, opts()).unwrap());
    }

    fn leader(&self) -> Option<u64> {
        let l: Vec<u64> = self
            .reps
            .values()
            .filter(|r| r.node().is_leader())
            .map(|r| r.id())
            .collect();
        let agreed = l.len() == 1 && self.reps.values().all(|r| r.leader() == Some(l[0]));
        agreed.then(|| l[0])
    }

    fn step(&mut self) {
        self.now += 1;
        self.net.run_until(self.now);
        let now = Duration::from_millis(self.now);
        for (&id, r) in self.reps.iter_mut() {
            let round = r.run_once(now, Duration::ZERO).unwrap();
            for (p, o) in round.outcomes {
                r.forget(p);
                self.outcomes.insert((id, p), o);
            }
        }
    }

    fn run_until(&mut self, steps: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Runs until `id`'s outcome at `node` is known.
    fn outcome(&mut self, node: u64, s: Submitted) -> Outcome {
        let Submitted::Pending(id) = s else {
            panic!("not pending: {s:?}")
        };
        assert!(self.run_until(2000, |c| c.outcomes.contains_key(&(node, id))));
        self.outcomes.remove(&(node, id)).unwrap()
    }

    fn set(&mut self, at: u64, key: &str) -> Outcome {
        let op = KvOp::Set {
            key: key.into(),
            value: b"v".to_vec(),
        };
        let now = Duration::from_millis(self.now);
        let s = self
            .reps
            .get_mut(&at)
            .unwrap()
            .submit(&op.encode(), now)
            .unwrap();
        self.outcome(at, s)
    }
}

#[test]
fn reads_transfers_and_membership_through_the_replica() {
    let mut c = Cluster::new(3);
    assert!(matches!(c.set(1, "a"), Outcome::Committed { .. }));
    // A read at the leader; a follower names the leader.
    let now = Duration::from_millis(c.now);
    let s = c.reps.get_mut(&1).unwrap().read(now).unwrap();
    let Outcome::Read { index } = c.outcome(1, s) else {
        panic!("not a read outcome")
    };
    let r1 = &c.reps[&1];
    assert!(r1.node().applied_index() >= index);
    assert_eq!(r1.state_machine().get(b"a"), Some(&b"v"[..]));
    let s = c.reps.get_mut(&2).unwrap().read(now).unwrap();
    assert_eq!(s, Submitted::NotLeader { leader: Some(1) });
    // Leadership moves to 2.
    c.reps.get_mut(&1).unwrap().transfer_leader(2).unwrap();
    assert!(c.run_until(2000, |c| c.leader() == Some(2)));
    let e = c.reps.get_mut(&1).unwrap().transfer_leader(3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotLeader);
    // Node 4 joins as a learner (the network knows it; its replica starts after the change).
    c.net.add_node(NodeId(4)).unwrap();
    let s = c
        .reps
        .get_mut(&2)
        .unwrap()
        .change_membership(&[MemberChange::AddLearner(4)])
        .unwrap();
    let Outcome::Committed { result, .. } = c.outcome(2, s) else {
        panic!("membership change not committed")
    };
    assert!(result.is_empty());
    c.add(4, vec![]);
    assert!(c.run_until(2000, |c| c.reps[&4].state_machine().get(b"a").is_some()));
    assert_eq!(c.reps[&4].membership().learners, vec![4]);
    // Promote 4, remove 1: joint consensus, then 1 is out and stops.
    let s = c
        .reps
        .get_mut(&2)
        .unwrap()
        .change_membership(&[MemberChange::AddVoter(4), MemberChange::Remove(1)])
        .unwrap();
    assert!(matches!(c.outcome(2, s), Outcome::Committed { .. }));
    assert!(c.run_until(2000, |c| c.reps[&1].is_removed()
        && c.reps
            .values()
            .all(|r| r.is_removed() || !r.membership().is_joint())));
    assert_eq!(c.reps[&2].membership().voters, vec![2, 3, 4]);
    c.reps.remove(&1);
    assert!(matches!(c.set(2, "b"), Outcome::Committed { .. }));
    assert!(c.run_until(2000, |c| c.reps[&4].state_machine().get(b"b").is_some()));
    // Leadership can go to the promoted node.
    c.reps.get_mut(&2).unwrap().transfer_leader(4).unwrap();
    assert!(c.run_until(2000, |c| c.leader() == Some(4)));
}
