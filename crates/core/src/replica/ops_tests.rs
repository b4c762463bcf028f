//! The client protocol's Read, TransferLeader, ChangeMembership and Membership requests,
//! answered by [`Server`]s over [`SimNet`] (deterministic): linearizable reads at the leader
//! only (a follower names the leader; an old leader cut off from the quorum never answers
//! from its stale state), leadership transfer, and a member removed, added back as a learner
//! and promoted — with the refusals a client sees on the way.

use std::collections::BTreeMap;
use std::time::Duration;

use super::proto::{Answer, Request};
use super::server::{ServeOptions, Server};
use super::*;
use crate::net::sim::{SimEndpoint, SimNet, SimOptions};
use crate::raft::{Config, KvOp, KvResult, KvStore, LogStorage, MemberChange, Membership};

const CLIENT: u64 = 100;
/// A second client, for the other side of a partition.
const CLIENT2: u64 = 101;

type S = Server<KvStore, SimEndpoint>;

struct Sim {
    net: SimNet,
    srvs: BTreeMap<u64, S>,
    clients: BTreeMap<u64, SimEndpoint>,
    t: u64,
    req: u64,
    /// Answers received: request id → (from, answer).
    answers: BTreeMap<u64, (u64, Answer)>,
}

impl Sim {
    /// Nodes `1..=n`, node 1 elected.
    fn new(n: u64, seed: u64) -> Sim {
        let net = SimNet::new(SimOptions::seeded(seed));
        for id in 1..=n {
            net.add_node(NodeId(id)).unwrap();
        }
        let clients = [CLIENT, CLIENT2]
            .into_iter()
            .map(|c| (c, net.add_node(NodeId(c)).unwrap()))
            .collect();
        let mut s = Sim {
            net,
            srvs: BTreeMap::new(),
            clients,
            t: 0,
            req: 0,
            answers: BTreeMap::new(),
        };
        for id in 1..=n {
            s.start(id, (1..=n).collect());
        }
        s.srvs
            .get_mut(&1)
            .unwrap()
            .replica_mut()
            .node_mut()
            .campaign()
            .unwrap();
        s.run_until(1000, |s| s.leader() == Some(1));
        s
    }

    /// Starts server `id` (`voters` empty: a node joining the cluster).
    fn start(&mut self, id: u64, voters: Vec<u64>) {
        let mut c = Config::new(id, voters);
        c.election_tick = 10;
        c.min_election_tick = 10 + id as usize * 3;
        c.max_election_tick = c.min_election_tick + 1;
        c.snapshot_entries = 0;
        let node = Node::new(c, LogStorage::memory(), KvStore::new()).unwrap();
        let ep = self.net.endpoint(NodeId(id)).unwrap();
        let r = Replica::new(node, ep, ReplicaOptions::default()).unwrap();
        self.srvs
            .insert(id, Server::new(r, ServeOptions::default()).unwrap());
    }

    fn leader(&self) -> Option<u64> {
        let l: Vec<u64> = self
            .srvs
            .values()
            .filter(|s| s.replica().node().is_leader())
            .map(|s| s.replica().id())
            .collect();
        let agreed = l.len() == 1
            && self
                .srvs
                .values()
                .all(|s| s.replica().leader() == Some(l[0]));
        agreed.then(|| l[0])
    }

    fn step(&mut self) {
        self.t += 1;
        self.net.run_until(self.t);
        for s in self.srvs.values_mut() {
            s.run_once(Duration::from_millis(self.t), Duration::ZERO)
                .unwrap();
        }
        self.net.run_until(self.t);
        for c in self.clients.values_mut() {
            while let Some(f) = c.try_recv().unwrap() {
                let (req, a) = Answer::decode(&f.payload[1..]).unwrap();
                assert!(self.answers.insert(req, (f.from.0, a)).is_none());
            }
        }
    }

    fn run_until(&mut self, steps: u64, mut done: impl FnMut(&Sim) -> bool) {
        for _ in 0..steps {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(done(self), "not done in {steps} steps at t={}", self.t);
    }

    /// Sends `r` from `client` to node `to`: the request id.
    fn send_from(&mut self, client: u64, to: u64, r: &Request) -> u64 {
        self.req += 1;
        let mut b = vec![TAG_APP];
        b.extend_from_slice(&r.encode(self.req));
        self.clients
            .get_mut(&client)
            .unwrap()
            .send(NodeId(to), &b)
            .unwrap();
        self.req
    }

    /// Sends `r` to `to` and runs until it is answered.
    fn ask(&mut self, to: u64, r: &Request) -> Answer {
        let req = self.send_from(CLIENT, to, r);
        self.wait(req)
    }

    fn wait(&mut self, req: u64) -> Answer {
        self.run_until(5000, |s| s.answers.contains_key(&req));
        let (_, a) = self.answers.remove(&req).unwrap();
        a
    }
}

fn set(k: &str, v: &str) -> Request {
    Request::Submit {
        op: KvOp::Set {
            key: k.into(),
            value: v.into(),
        }
        .encode(),
    }
}

fn read(k: &str) -> Request {
    Request::Read {
        query: KvOp::Get { key: k.into() }.encode(),
    }
}

fn value(a: &Answer) -> (u64, Option<Vec<u8>>) {
    match a {
        Answer::Ok { index, result } => match KvResult::decode(result) {
            Some(KvResult::Value(v)) => (*index, v),
            r => panic!("not a value: {r:?}"),
        },
        a => panic!("not Ok: {a:?}"),
    }
}

fn committed(a: &Answer) -> u64 {
    match a {
        Answer::Ok { index, .. } => *index,
        a => panic!("not Ok: {a:?}"),
    }
}

#[test]
fn reads_answer_at_the_leader_only_and_see_every_acknowledged_write() {
    let mut s = Sim::new(3, 11);
    let w = committed(&s.ask(1, &set("k", "1")));
    let a = s.ask(1, &read("k"));
    let (index, v) = value(&a);
    assert!(index >= w, "the read index {index} covers the write at {w}");
    assert_eq!(v.as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&s.ask(1, &read("absent"))).1, None);
    // A read writes no log entry.
    let commit = s.srvs[&1].replica().node().commit_index();
    for _ in 0..5 {
        s.ask(1, &read("k"));
    }
    assert_eq!(s.srvs[&1].replica().node().commit_index(), commit);
    assert!(s.srvs[&1].stats().reads >= 7);
    // Followers name the leader.
    for f in [2, 3] {
        assert_eq!(s.ask(f, &read("k")), Answer::NotLeader { leader: Some(1) });
    }
    // A query the state machine refuses (a set is not read-only) is an error answer.
    let q = Request::Read {
        query: KvOp::Set {
            key: b"k".to_vec(),
            value: b"2".to_vec(),
        }
        .encode(),
    };
    match s.ask(1, &q) {
        Answer::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::InvalidArgument);
            assert!(message.contains("read-only"), "{message}");
        }
        a => panic!("{a:?}"),
    }
    assert_eq!(
        s.srvs[&1].replica().state_machine().get(b"k"),
        Some(&b"1"[..])
    );
    // Every node reports the configuration.
    for n in 1..=3 {
        let Answer::Membership(m) = s.ask(n, &Request::Membership) else {
            panic!()
        };
        assert_eq!(
            m,
            Membership {
                voters: vec![1, 2, 3],
                ..Membership::default()
            }
        );
    }
}

/// The old leader is cut off with a client; the others elect a leader and take a write from
/// another client. The old leader cannot confirm a quorum, so its read is never answered
/// from its stale state: it is answered `Busy` when it steps down, later reads `NotLeader`;
/// after the heal the read sees the write.
#[test]
fn a_cut_off_leader_never_answers_a_stale_read() {
    for seed in [1, 2, 3] {
        let mut s = Sim::new(3, seed);
        committed(&s.ask(1, &set("k", "old")));
        s.net
            .partition(&[
                &[NodeId(1), NodeId(CLIENT)],
                &[NodeId(2), NodeId(3), NodeId(CLIENT2)],
            ])
            .unwrap();
        let stale = s.send_from(CLIENT, 1, &read("k"));
        // The majority side elects a leader and commits a new value.
        s.run_until(5000, |s| {
            s.srvs
                .iter()
                .any(|(&id, x)| id != 1 && x.replica().node().is_leader())
        });
        let l = (2..=3)
            .find(|id| s.srvs[id].replica().node().is_leader())
            .unwrap();
        let w = s.send_from(CLIENT2, l, &set("k", "new"));
        let w = committed(&s.wait(w));
        // The old leader steps down (check-quorum): the read is dropped, answered Busy.
        let a = s.wait(stale);
        assert_eq!(a, Answer::Busy { retry_after_ms: 1 }, "seed {seed}");
        assert!(!s.srvs[&1].replica().node().is_leader());
        assert!(matches!(s.ask(1, &read("k")), Answer::NotLeader { .. }));
        s.net.heal();
        s.run_until(5000, |s| s.leader() == Some(l));
        let (index, v) = value(&s.ask(l, &read("k")));
        assert!(index >= w);
        assert_eq!(v.as_deref(), Some(&b"new"[..]), "seed {seed}");
    }
}

#[test]
fn leadership_moves_on_request_and_bad_targets_are_refused() {
    let mut s = Sim::new(3, 5);
    let term = s.srvs[&1].replica().term();
    // At a follower: the leader is named.
    assert_eq!(
        s.ask(2, &Request::TransferLeader { to: 3 }),
        Answer::NotLeader { leader: Some(1) }
    );
    let a = s.ask(1, &Request::TransferLeader { to: 3 });
    let new_term = committed(&a);
    assert!(new_term > term);
    s.run_until(1000, |s| s.leader() == Some(3));
    assert_eq!(s.srvs[&3].replica().term(), new_term);
    // Asking again (a resent request) is answered at once; so is `to` = the leader.
    assert_eq!(
        committed(&s.ask(1, &Request::TransferLeader { to: 3 })),
        new_term
    );
    assert_eq!(
        committed(&s.ask(3, &Request::TransferLeader { to: 3 })),
        new_term
    );
    for bad in [0, 9] {
        match s.ask(3, &Request::TransferLeader { to: bad }) {
            Answer::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::InvalidArgument, "{message}")
            }
            a => panic!("{bad}: {a:?}"),
        }
    }
    // Reads follow the leadership.
    committed(&s.ask(3, &set("k", "v")));
    assert_eq!(value(&s.ask(3, &read("k"))).1.as_deref(), Some(&b"v"[..]));
    assert_eq!(s.ask(1, &read("k")), Answer::NotLeader { leader: Some(3) });
}

/// A voter is removed, then added back (empty storage) as a learner, then promoted; the
/// leader refuses to remove itself; a change while another is under way is `Busy`.
#[test]
fn a_member_is_removed_added_back_as_learner_and_promoted() {
    let mut s = Sim::new(3, 9);
    committed(&s.ask(1, &set("a", "1")));
    let change = |c: MemberChange| Request::ChangeMembership { changes: vec![c] };
    match s.ask(1, &change(MemberChange::Remove(1))) {
        Answer::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::InvalidArgument);
            assert!(message.contains("transfer leadership first"), "{message}");
        }
        a => panic!("{a:?}"),
    }
    assert_eq!(
        s.ask(2, &change(MemberChange::Remove(3))),
        Answer::NotLeader { leader: Some(1) }
    );
    // Remove 3; a second change sent right behind it finds the first under way.
    let r = s.send_from(CLIENT, 1, &change(MemberChange::Remove(3)));
    let busy = s.send_from(CLIENT, 1, &change(MemberChange::AddLearner(3)));
    assert!(committed(&s.wait(r)) > 0);
    match s.wait(busy) {
        Answer::Error { kind, message } => assert_eq!(kind, ErrorKind::Busy, "{message}"),
        a => panic!("{a:?}"),
    }
    s.run_until(5000, |s| {
        s.srvs[&3].replica().is_removed() && !s.srvs[&1].replica().membership().is_joint()
    });
    s.srvs.remove(&3);
    let Answer::Membership(m) = s.ask(1, &Request::Membership) else {
        panic!()
    };
    assert_eq!((m.voters, m.learners), (vec![1, 2], vec![]));
    committed(&s.ask(1, &set("b", "2")));
    // Node 3 comes back with an empty storage, as a learner, then is promoted.
    let i = committed(&s.ask(1, &change(MemberChange::AddLearner(3))));
    s.start(3, vec![]);
    s.run_until(5000, |s| {
        s.srvs[&3].replica().node().applied_index() >= i
            && !s.srvs[&1].replica().membership().is_joint()
    });
    let Answer::Membership(m) = s.ask(1, &Request::Membership) else {
        panic!()
    };
    assert_eq!((m.voters, m.learners), (vec![1, 2], vec![3]));
    assert_eq!(
        s.srvs[&3].replica().state_machine().get(b"b"),
        Some(&b"2"[..])
    );
    // A learner cannot be handed the leadership.
    match s.ask(1, &Request::TransferLeader { to: 3 }) {
        Answer::Error { kind, .. } => assert_eq!(kind, ErrorKind::InvalidArgument),
        a => panic!("{a:?}"),
    }
    committed(&s.ask(1, &change(MemberChange::AddVoter(3))));
    s.run_until(5000, |s| !s.srvs[&1].replica().membership().is_joint());
    let Answer::Membership(m) = s.ask(3, &Request::Membership) else {
        panic!()
    };
    assert_eq!((m.voters, m.learners), (vec![1, 2, 3], vec![]));
    // The promoted node can lead and serves reads of everything written.
    committed(&s.ask(1, &Request::TransferLeader { to: 3 }));
    s.run_until(2000, |s| s.leader() == Some(3));
    assert_eq!(value(&s.ask(3, &read("a"))).1.as_deref(), Some(&b"1"[..]));
    // No changes at all: refused with a reason.
    match s.ask(3, &Request::ChangeMembership { changes: vec![] }) {
        Answer::Error { kind, .. } => assert_eq!(kind, ErrorKind::InvalidArgument),
        a => panic!("{a:?}"),
    }
}
