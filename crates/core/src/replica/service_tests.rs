//! The Raft service in one process: three [`Server`]s on threads over rings (and over TCP),
//! a [`RaftClient`] in the test's thread. Redirects, KV helpers, waits, status, and bad
//! requests answered or counted.

use std::path::Path;
use std::time::Duration;

use super::client::{ClientOptions, RaftClient};
use super::proto::{Answer, Request, VERSION};
use super::server::{ServeOptions, Server};
use super::*;
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::raft::{Config, KvOp, KvStore, LogStorage};
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::testutil::TempDir;

const NODES: [u64; 3] = [1, 2, 3];
const CLIENTS: [u64; 2] = [100, 101];

fn server<T: Transport>(t: T) -> Server<KvStore, T> {
    let id = t.local_id().0;
    let mut c = Config::new(id, NODES.to_vec());
    c.election_tick = 10;
    let node = Node::new(c, LogStorage::memory(), KvStore::new()).unwrap();
    let r = Replica::new(node, t, ReplicaOptions::default()).unwrap();
    Server::new(r, ServeOptions::default()).unwrap()
}

fn peers_of(id: u64) -> Vec<NodeId> {
    NODES
        .iter()
        .chain(&CLIENTS)
        .filter(|&&n| n != id)
        .map(|&n| NodeId(n))
        .collect()
}

/// Runs the servers on threads while `body` uses a client; stops and joins them after.
fn with_cluster<T, C>(ts: Vec<T>, client: C, body: impl FnOnce(&mut RaftClient<C>))
where
    T: Transport + Send,
    C: Transport,
{
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let hs: Vec<_> = ts
            .into_iter()
            .map(|t| {
                let stop = stop.clone();
                s.spawn(move || {
                    let mut srv = server(t);
                    srv.serve(&stop).unwrap();
                    srv.stats()
                })
            })
            .collect();
        let opts = ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let mut c = RaftClient::new(client, &NODES, opts).unwrap();
        // Whatever `body` does, the servers stop (a failed assertion must not hang the test).
        struct Stop(Arc<AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = Stop(stop.clone());
        body(&mut c);
        drop(guard);
        let answered: u64 = hs.into_iter().map(|h| h.join().unwrap().answers).sum();
        assert!(answered > 0);
    });
}

fn exercise<C: Transport>(c: &mut RaftClient<C>) {
    let (leader, term) = c.leader().unwrap();
    assert!(NODES.contains(&leader) && term > 0);
    // Start at a follower: the first submit is redirected.
    let follower = NODES.iter().copied().find(|&n| n != leader).unwrap();
    c.set_leader_hint(follower);
    let mut last = 0;
    for k in 0..20u8 {
        let i = c.set(&[k], b"v").unwrap();
        assert!(i > last, "indexes grow: {i} after {last}");
        last = i;
    }
    assert!(c.stats().redirects >= 1, "{:?}", c.stats());
    assert_eq!(c.leader_hint(), leader);
    for k in 0..20u8 {
        assert_eq!(c.get(&[k]).unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(c.get(b"absent").unwrap(), None);
    assert_eq!(c.cas(b"c", None, b"1").unwrap(), (true, None));
    assert_eq!(
        c.cas(b"c", Some(b"0"), b"2").unwrap(),
        (false, Some(b"1".to_vec()))
    );
    // append_entry: opaque bytes are committed; the KV store answers Invalid (0x03).
    let e = c.submit(b"not a kv op").unwrap();
    assert!(e.index > last && e.node == leader);
    // A follower names the leader.
    let a = c
        .call(
            follower,
            &Request::Submit { op: b"x".to_vec() },
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(
        a,
        Answer::NotLeader {
            leader: Some(leader)
        }
    );
    // Waits: every node applies the index; an index far ahead times out.
    for n in NODES {
        assert!(c
            .wait_committed_on(n, e.index, Duration::from_secs(5))
            .is_ok_and(|i| i >= e.index));
    }
    assert!(c.wait_committed(e.index, Duration::from_secs(5)).unwrap() >= e.index);
    let err = c
        .wait_committed_on(leader, e.index + 1000, Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // Status of every node.
    for (n, s) in c.statuses() {
        let s = s.unwrap();
        assert_eq!(
            (s.id, s.leader, s.voters.clone()),
            (n, leader, NODES.to_vec())
        );
        assert!(s.commit >= e.index && s.term >= term, "{s:?}");
        assert_eq!(s.stat("is_leader"), Some(u64::from(n == leader)));
        assert_eq!(s.stat("raft_rejected"), Some(0));
    }
    // Bad requests: another version is answered with an error naming it; garbage without a
    // readable header is counted and ignored; the node keeps serving.
    let mut b = vec![TAG_APP];
    b.extend_from_slice(&Request::Status.encode(7));
    b[1] = VERSION + 1;
    c.transport_mut().send(NodeId(leader), &b).unwrap();
    let f = c
        .transport_mut()
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("an answer");
    match Answer::decode(&f.payload[1..]).unwrap() {
        (7, Answer::Error { kind, message }) => {
            assert_eq!(kind, ErrorKind::Unsupported);
            assert!(message.contains("version 2"), "{message}");
        }
        a => panic!("{a:?}"),
    }
    for garbage in [&[TAG_APP][..], &[TAG_APP, 1, 2, 3], &[b'Z', 0, 0]] {
        c.transport_mut().send(NodeId(leader), garbage).unwrap();
    }
    let s = c.status(leader).unwrap();
    // The version mismatch and two garbage app frames; the unknown tag is the host loop's.
    assert_eq!(s.stat("bad_requests"), Some(3), "{s:?}");
    assert_eq!(s.stat("raft_rejected"), Some(1), "{s:?}");
    assert_eq!(c.get(&[0]).unwrap().as_deref(), Some(&b"v"[..]));
    // Gets are ReadIndex reads: no log entry, answered by the leader, counted.
    let commit = c.status(leader).unwrap().commit;
    let r = c.read(&KvOp::Get { key: vec![1] }.encode()).unwrap();
    assert!(r.node == leader && r.index >= e.index, "{r:?}");
    assert_eq!(c.status(leader).unwrap().commit, commit);
    assert!(c.status(leader).unwrap().stat("reads") >= Some(22));
    let a = c
        .call(
            follower,
            &Request::Read { query: Vec::new() },
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(
        a,
        Answer::NotLeader {
            leader: Some(leader)
        }
    );
    let m = c.membership().unwrap();
    assert_eq!((m.voters, m.learners), (NODES.to_vec(), vec![]));
    // Leadership moves to the follower; the client follows it.
    let term = c.transfer_leader(follower).unwrap();
    assert_eq!(c.leader_hint(), follower);
    assert_eq!(c.leader().unwrap(), (follower, term));
    c.set_leader_hint(leader);
    assert_eq!(c.get(&[0]).unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(c.leader_hint(), follower, "redirected to the new leader");
    let e = c.change_membership(&[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

fn ring_opts(dir: &Path) -> RingNetOptions {
    RingNetOptions::in_dir(dir.join("net"))
}

#[test]
#[cfg_attr(miri, ignore = "threads and real time")]
fn service_over_rings() {
    let dir = TempDir::new("replica-service");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let ts: Vec<RingTransport> = NODES
        .iter()
        .map(|&id| RingTransport::open(NodeId(id), &peers_of(id), ring_opts(&dir.0)).unwrap())
        .collect();
    let nodes: Vec<NodeId> = NODES.iter().map(|&n| NodeId(n)).collect();
    let client = RingTransport::open(NodeId(CLIENTS[0]), &nodes, ring_opts(&dir.0)).unwrap();
    with_cluster(ts, client, exercise);
}

#[test]
#[cfg_attr(miri, ignore = "threads, sockets and real time")]
fn service_over_tcp() {
    use crate::net::tcp::{TcpOptions, TcpTransport};
    use std::net::{SocketAddr, TcpListener};
    let ls: Vec<TcpListener> = (0..NODES.len() + 1)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    let ids: Vec<u64> = NODES.iter().copied().chain([CLIENTS[0]]).collect();
    let mut ts: Vec<TcpTransport> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let peers: Vec<(NodeId, SocketAddr)> = ids
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, &n)| (NodeId(n), addrs[j]))
                .collect();
            TcpTransport::from_listener(NodeId(ids[i]), l, &peers, TcpOptions::default()).unwrap()
        })
        .collect();
    let client = ts.pop().unwrap();
    with_cluster(ts, client, exercise);
}

/// Deterministic, over the simulated network: the pending bound answers `Busy`; a leader cut
/// off from its followers steps down (check-quorum) with its submits still pending (another
/// leader could commit what it replicated); after the heal it names the new leader, and once
/// the new leader commits over their indexes its submits are answered `Busy` (dropped: safe
/// to resend); a wait past its timeout is answered with a `timeout` error.
#[test]
fn sim_busy_dropped_timeout_and_redirect() {
    use crate::net::sim::{SimEndpoint, SimNet, SimOptions};
    let net = SimNet::new(SimOptions::seeded(3));
    let mut srvs: Vec<Server<KvStore, SimEndpoint>> = NODES
        .iter()
        .map(|&id| {
            let ep = net.add_node(NodeId(id)).unwrap();
            let mut c = Config::new(id, NODES.to_vec());
            c.election_tick = 10;
            c.min_election_tick = 10 + id as usize * 3;
            c.max_election_tick = c.min_election_tick + 1;
            let node = Node::new(c, LogStorage::memory(), KvStore::new()).unwrap();
            let r = Replica::new(node, ep, ReplicaOptions::default()).unwrap();
            let o = ServeOptions {
                max_pending: 2,
                ..ServeOptions::default()
            };
            Server::new(r, o).unwrap()
        })
        .collect();
    let mut client = net.add_node(NodeId(CLIENTS[0])).unwrap();
    let mut t = 0u64;
    let mut answers: Vec<(u64, u64, Answer)> = Vec::new();
    let step = |srvs: &mut Vec<Server<KvStore, SimEndpoint>>,
                client: &mut SimEndpoint,
                answers: &mut Vec<(u64, u64, Answer)>,
                t: &mut u64| {
        *t += 1;
        net.run_until(*t);
        for s in srvs.iter_mut() {
            s.run_once(Duration::from_millis(*t), Duration::ZERO)
                .unwrap();
        }
        net.run_until(*t);
        while let Some(f) = client.try_recv().unwrap() {
            let (req, a) = Answer::decode(&f.payload[1..]).unwrap();
            answers.push((f.from.0, req, a));
        }
    };
    let send = |client: &mut SimEndpoint, to: u64, req: u64, r: &Request| {
        let mut b = vec![TAG_APP];
        b.extend_from_slice(&r.encode(req));
        client.send(NodeId(to), &b).unwrap();
    };
    srvs[0].replica_mut().node_mut().campaign().unwrap();
    while !srvs[0].replica().node().is_leader() {
        step(&mut srvs, &mut client, &mut answers, &mut t);
        assert!(t < 1000, "no leader");
    }
    let op = |k: u8| Request::Submit {
        op: KvOp::Set {
            key: vec![k],
            value: b"v".to_vec(),
        }
        .encode(),
    };
    // Cut the leader (and the client) off from the followers.
    net.partition(&[&[NodeId(1), NodeId(CLIENTS[0])], &[NodeId(2), NodeId(3)]])
        .unwrap();
    for req in 1..=3 {
        send(&mut client, 1, req, &op(req as u8));
    }
    for _ in 0..5 {
        step(&mut srvs, &mut client, &mut answers, &mut t);
    }
    assert_eq!(answers, vec![(1, 3, Answer::Busy { retry_after_ms: 1 })]);
    answers.clear();
    // A wait for an index that will not come in time (the bound is full: Busy too).
    send(
        &mut client,
        1,
        4,
        &Request::WaitCommitted {
            index: 99,
            timeout_ms: 5,
        },
    );
    for _ in 0..3 {
        step(&mut srvs, &mut client, &mut answers, &mut t);
    }
    assert_eq!(answers, vec![(1, 4, Answer::Busy { retry_after_ms: 1 })]);
    answers.clear();
    // Check-quorum: the leader steps down. Its pending submits stay pending: another leader
    // could still commit entries it replicated, so only a log that replaces them decides.
    for _ in 0..400 {
        step(&mut srvs, &mut client, &mut answers, &mut t);
    }
    assert!(!srvs[0].replica().node().is_leader());
    assert_eq!(answers, vec![]);
    // Heal. The old leader learns of the new one and names it; the new one commits; its log
    // replaces the old leader's entries, whose submits are then answered Busy (dropped); a
    // wait past its timeout gets a timeout error.
    net.heal();
    let leader = loop {
        step(&mut srvs, &mut client, &mut answers, &mut t);
        assert!(t < 5000, "no new leader");
        if let Some(l) = srvs[0].replica().leader().filter(|&l| l != 1) {
            break l;
        }
    };
    assert_eq!(answers, vec![], "nothing decided yet");
    send(&mut client, leader, 7, &op(7));
    while answers.len() < 3 {
        step(&mut srvs, &mut client, &mut answers, &mut t);
        assert!(t < 20_000, "unanswered: {answers:?}");
    }
    let wait = Request::WaitCommitted {
        index: 1 << 40,
        timeout_ms: 5,
    };
    send(&mut client, 1, 5, &wait);
    send(&mut client, 1, 6, &op(6));
    while answers.len() < 5 {
        step(&mut srvs, &mut client, &mut answers, &mut t);
        assert!(t < 20_000, "unanswered: {answers:?}");
    }
    answers.sort_by_key(|a| a.1);
    let busy = Answer::Busy { retry_after_ms: 1 };
    assert_eq!(answers[..2], [(1, 1, busy.clone()), (1, 2, busy)]);
    assert!(
        matches!(
            &answers[2],
            (1, 5, Answer::Error { kind: ErrorKind::Timeout, message }) if message.contains("not applied")
        ),
        "{answers:?}"
    );
    assert_eq!(
        answers[3],
        (
            1,
            6,
            Answer::NotLeader {
                leader: Some(leader)
            }
        )
    );
    assert!(
        matches!(&answers[4], (l, 7, Answer::Ok { index, .. }) if *l == leader && *index > 0),
        "{answers:?}"
    );
    // A wait for an index already applied is answered at once, bound or not.
    send(
        &mut client,
        1,
        8,
        &Request::WaitCommitted {
            index: 1,
            timeout_ms: 0,
        },
    );
    answers.clear();
    while answers.is_empty() {
        step(&mut srvs, &mut client, &mut answers, &mut t);
        assert!(t < 20_000);
    }
    assert!(
        matches!(answers[0], (1, 8, Answer::Ok { index, .. }) if index >= 1),
        "{answers:?}"
    );
    let st = srvs[0].stats();
    assert_eq!(
        (st.busy, st.redirected, st.bad_requests),
        (4, 1, 0),
        "{st:?}"
    );
}

/// A pipeline of sets, started at a follower: every operation finishes once, committed, in
/// index order per node; the window is enforced; the values are there afterwards.
fn pipelined<C: Transport>(c: &mut RaftClient<C>) {
    use super::pipeline::{Pipeline, PipelineOptions};
    let (leader, _) = c.leader().unwrap();
    let follower = NODES.iter().copied().find(|&n| n != leader).unwrap();
    c.set_leader_hint(follower);
    let opts = PipelineOptions {
        window: 64,
        ..PipelineOptions::default()
    };
    assert!(Pipeline::new(PipelineOptions { window: 0, ..opts }).is_err());
    let mut p = Pipeline::new(opts).unwrap();
    const N: u64 = 2_000;
    let op = |k: u64| {
        crate::raft::KvOp::Set {
            key: k.to_le_bytes().to_vec(),
            value: vec![k as u8; 48],
        }
        .encode()
    };
    let mut seen = vec![false; N as usize];
    let (mut next, mut done, mut last_index, mut full) = (0u64, 0u64, 0u64, 0u32);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done < N {
        assert!(std::time::Instant::now() < deadline, "{:?}", p.stats());
        while next < N {
            match p.submit(c, op(next), next) {
                Ok(()) => next += 1,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full, "{e}");
                    full += 1;
                    break;
                }
            }
        }
        assert!(p.in_flight() <= 64);
        p.poll(c, Duration::from_millis(5)).unwrap();
        while let Some(d) = p.take_done() {
            let k = d.tag as usize;
            assert!(!seen[k], "operation {k} finished twice");
            seen[k] = true;
            let cm = d.outcome.unwrap();
            assert_eq!(cm.node, leader);
            assert!(cm.index >= last_index, "{} after {last_index}", cm.index);
            last_index = cm.index;
            done += 1;
        }
    }
    p.drain(c, Duration::from_secs(1)).unwrap();
    assert_eq!(p.in_flight(), 0);
    assert!(full > 0, "the window was never full");
    let s = p.stats();
    assert!(s.redirects >= 1 && s.done == N, "{s:?}");
    // Many operations per raft entry: the leader batched.
    let st = c.status(leader).unwrap();
    assert!(st.stat("batches").unwrap() < N / 4, "{st:?}");
    for k in [0, N / 2, N - 1] {
        assert_eq!(
            c.get(&k.to_le_bytes()).unwrap(),
            Some(vec![k as u8; 48]),
            "key {k}"
        );
    }
    // The hosts' batch submit: one call, many in flight, one result per operation in the
    // order given. A chain of compare-and-sets on one key: each finds its predecessor's value
    // (the order was kept), and the results say so.
    use crate::raft::{KvOp, KvResult};
    let e = c.submit_many(&[op(0)], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(c.submit_many::<Vec<u8>>(&[], 8).unwrap().is_empty());
    let mut ops = vec![op(N + 1)];
    let cas = |k: u64| KvOp::Cas {
        key: (N + 1).to_le_bytes().to_vec(),
        expected: Some(vec![(k - 1) as u8; 48]),
        new: vec![k as u8; 48],
    };
    ops.extend((N + 2..N + 200).map(|k| cas(k).encode()));
    // No resend (which is at-least-once and may reorder) unless a node is silent for 5 s.
    let saved = c.options();
    c.set_options(super::ClientOptions {
        attempt_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(20),
        ..saved
    });
    let rs = c.submit_many(&ops, 32).unwrap();
    c.set_options(saved);
    assert_eq!(rs.len(), ops.len());
    let mut last = 0;
    for (i, r) in rs.iter().enumerate() {
        let cm = r.as_ref().unwrap_or_else(|e| panic!("op {i}: {e}"));
        // Operations batched into one entry share its index.
        assert!(cm.index >= last, "op {i} at {} after {last}", cm.index);
        last = cm.index;
        let res = KvResult::decode(&cm.result).unwrap();
        if i == 0 {
            assert_eq!(res, KvResult::Done);
        } else {
            let k = N + 1 + i as u64;
            assert_eq!(
                res,
                KvResult::Cas {
                    swapped: true,
                    previous: Some(vec![(k - 1) as u8; 48])
                },
                "op {i}"
            );
        }
    }
    assert_eq!(
        c.get(&(N + 1).to_le_bytes()).unwrap(),
        Some(vec![(N + 199) as u8; 48])
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads and real time")]
fn pipeline_over_rings() {
    let dir = TempDir::new("replica-pipeline");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let ts: Vec<RingTransport> = NODES
        .iter()
        .map(|&id| RingTransport::open(NodeId(id), &peers_of(id), ring_opts(&dir.0)).unwrap())
        .collect();
    let nodes: Vec<NodeId> = NODES.iter().map(|&n| NodeId(n)).collect();
    let client = RingTransport::open(NodeId(CLIENTS[1]), &nodes, ring_opts(&dir.0)).unwrap();
    with_cluster(ts, client, pipelined);
}
