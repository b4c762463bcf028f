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

/// A client of the lin test: one request at a time.
struct LinClient {
    id: u64,
    hint: u64,
    /// (request id, history index, node, sent at step).
    waiting: Option<(u64, usize, u64, u64)>,
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Steps a lin client waits for an answer before it gives up (the operation is then unknown).
const PATIENCE: u64 = 400;

/// Concurrent clients of the client protocol (sets and cas through Submit, gets through
/// Read) on 3 servers over SimNet with drops, reordering, duplicated Raft messages and
/// partitions that leave the old leader with some clients; the history is checked by the
/// raft lin checker. NotLeader and Busy answers are resent (the request was not applied);
/// no answer in time makes the operation unknown (it may apply at any time after).
fn lin_run(seed: u64, ops: u64) -> (usize, u64) {
    use crate::net::sim::LinkFaults;
    use crate::raft::tests::lin::{check, HistOp};
    let mut s = Sim::new(3, seed);
    let client_ids: Vec<u64> = (200..204).collect();
    for &c in &client_ids {
        let ep = s.net.add_node(NodeId(c)).unwrap();
        s.clients.insert(c, ep);
    }
    let lossy = LinkFaults {
        drop: 0.02,
        duplicate: 0.0,
        reorder: 0.05,
        reorder_window: 3,
        min_delay: 1,
        max_delay: 3,
    };
    s.net.set_default_link(lossy).unwrap();
    for a in 1..=3u64 {
        for b in 1..=3u64 {
            if a != b {
                let dup = LinkFaults {
                    duplicate: 0.02,
                    ..lossy
                };
                s.net.set_link(NodeId(a), NodeId(b), dup).unwrap();
            }
        }
    }
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut clients: Vec<LinClient> = client_ids
        .iter()
        .map(|&id| LinClient {
            id,
            hint: 1,
            waiting: None,
            seen: BTreeMap::new(),
        })
        .collect();
    let mut hist: Vec<HistOp> = Vec::new();
    let mut reqs: BTreeMap<u64, Request> = BTreeMap::new();
    let (mut invoked, mut reads_ok, mut value) = (0u64, 0u64, 0u64);
    let (mut partitioned, mut partitions) = (false, 0u64);
    let mut step = 0u64;
    loop {
        step += 1;
        assert!(step < 200_000, "seed {seed}: the run does not finish");
        // Nemesis: every 150 steps, cut the leader off with half the clients, or heal.
        if step % 150 == 0 && invoked < ops {
            if partitioned {
                s.net.heal();
            } else if let Some(l) = (1..=3).find(|id| s.srvs[id].replica().node().is_leader()) {
                let others: Vec<NodeId> = (1..=3).filter(|&n| n != l).map(NodeId).collect();
                let (a, b) = (NodeId(client_ids[0]), NodeId(client_ids[1]));
                let (c, d) = (NodeId(client_ids[2]), NodeId(client_ids[3]));
                s.net
                    .partition(&[&[NodeId(l), a, b], &[others[0], others[1], c, d]])
                    .unwrap();
            }
            partitioned = !partitioned;
            partitions += u64::from(partitioned);
        }
        if invoked >= ops && partitioned {
            s.net.heal();
            partitioned = false;
        }
        s.step();
        let t = s.t;
        for (ci, c) in clients.iter_mut().enumerate() {
            if let Some((req, hi, node, since)) = c.waiting {
                let resend_to = match s.answers.remove(&req) {
                    Some((_, Answer::Ok { result, .. })) => {
                        let r = KvResult::decode(&result).expect("a KV result");
                        if let KvOp::Get { key } = &hist[hi].op {
                            reads_ok += 1;
                            if let KvResult::Value(v) = &r {
                                c.seen.insert(key.clone(), v.clone());
                            }
                        }
                        hist[hi].ret = Some((2 * t, r));
                        c.waiting = None;
                        None
                    }
                    Some((_, Answer::NotLeader { leader })) => Some(leader.unwrap_or(node % 3 + 1)),
                    Some((_, Answer::Busy { .. })) => Some(node),
                    Some((_, Answer::Error { kind, message })) => {
                        assert_eq!(kind, ErrorKind::Timeout, "seed {seed}: {message}");
                        c.waiting = None;
                        None
                    }
                    Some((_, a)) => panic!("seed {seed}: {a:?}"),
                    None if t - since > PATIENCE => {
                        c.hint = node % 3 + 1;
                        c.waiting = None;
                        None
                    }
                    None => None,
                };
                if let Some(to) = resend_to {
                    let r = reqs[&req].clone();
                    let new = s.send_from(c.id, to, &r);
                    reqs.insert(new, r);
                    c.hint = to;
                    c.waiting = Some((new, hi, to, t));
                }
            }
            if c.waiting.is_none() && invoked < ops {
                invoked += 1;
                let key = vec![b'a' + rnd(3) as u8];
                value += 1;
                let op = match rnd(3) {
                    0 => KvOp::Set {
                        key,
                        value: value.to_le_bytes().to_vec(),
                    },
                    1 => KvOp::Get { key },
                    _ => KvOp::Cas {
                        expected: c.seen.get(&key).cloned().flatten(),
                        key,
                        new: value.to_le_bytes().to_vec(),
                    },
                };
                let r = match &op {
                    KvOp::Get { .. } => Request::Read { query: op.encode() },
                    _ => Request::Submit { op: op.encode() },
                };
                hist.push(HistOp {
                    client: ci,
                    op,
                    inv: 2 * t + 1,
                    ret: None,
                });
                let req = s.send_from(c.id, c.hint, &r);
                reqs.insert(req, r);
                c.waiting = Some((req, hist.len() - 1, c.hint, t));
            }
        }
        if invoked >= ops && clients.iter().all(|c| c.waiting.is_none()) {
            break;
        }
    }
    if let Err(e) = check(&hist) {
        panic!("seed {seed}: {e}\n{hist:#?}");
    }
    let done = hist.iter().filter(|h| h.ret.is_some()).count();
    assert!(partitions >= 2, "seed {seed}: {partitions} partitions");
    (done, reads_ok)
}

#[test]
fn client_protocol_histories_are_linearizable() {
    let seeds: u64 = std::env::var("EMF_REPLICA_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let (mut done, mut reads) = (0, 0);
    for seed in 0..seeds {
        let (d, r) = lin_run(seed, 450);
        done += d;
        reads += r;
    }
    // The runs did something: most operations completed, reads among them.
    assert!(done as u64 > seeds * 225, "{done} completed");
    assert!(reads > seeds * 20, "{reads} reads answered");
}
