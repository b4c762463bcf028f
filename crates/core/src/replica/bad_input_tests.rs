//! Garbage frames on the transports, at the host loop: an intruder — a peer of every node's
//! transport (as a client is), not a Raft member — sends empty frames, unknown tags, random
//! bytes behind the Raft tag and a well-formed heartbeat of term 99 that claims to come from
//! a member, and to the node whose host declared it a client ([`Replica::set_clients`]) a
//! heartbeat of term 99 from itself, while a leader commits writes. Every such frame is
//! counted in [`ReplicaStats::rejected`], no node adopts the forged term, and the writes
//! commit. Over rings and over TCP (the transports that carry bytes from other processes;
//! garbage below the frame layer is the transports' own tests).

use std::time::{Duration, Instant};

use protobuf::Message as _;

use super::cluster_support::{node_config, StopOnDrop};
use super::*;
use crate::net::ring::RingTransport;
use crate::net::tcp::TcpTransport;
use crate::raft::{KvOp, KvStore, LogStorage};
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::testutil::TempDir;

const INTRUDER: u64 = 100;
const NODES: [u64; 3] = [1, 2, 3];
/// The node whose host knows the intruder is a client (the others step its frames).
const CLIENT_AWARE: u64 = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The garbage frames sent to node `to` in one burst.
fn garbage(rng: &mut Rng, to: u64) -> Vec<Vec<u8>> {
    let mut v = vec![Vec::new(), b"X unknown tag".to_vec()];
    for _ in 0..4 {
        let n = (rng.next() % 64) as usize;
        let mut b = vec![TAG_RAFT];
        b.extend((0..n).map(|_| rng.next() as u8));
        v.push(b);
    }
    let msg = |from: u64| {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = 99;
        let mut b = vec![TAG_RAFT];
        b.extend(m.write_to_bytes().unwrap());
        b
    };
    // Forged as from another member: refused by every node (`step_from`).
    v.push(msg(if to == 2 { 3 } else { 2 }));
    // From itself, a stranger: a node follows a stranger's heartbeat (it may lag behind the
    // change that made it leader), so only a host that declared the intruder a client
    // refuses it — node 3's does (`Replica::set_clients`).
    if to == CLIENT_AWARE {
        v.push(msg(INTRUDER));
    }
    v
}

/// Nodes `ts` (ids 1..=3, each with the intruder as a transport peer) on threads, node 1
/// leading from the test's thread, the intruder sending garbage to every node between writes.
fn garbage_is_rejected_and_counted<T: Transport + Send>(ts: Vec<T>, mut intruder: T) {
    let stop = Arc::new(crate::sync::AtomicBool::new(false));
    // Per node: the frames it rejected and the keys it holds, as its thread last saw them.
    let rejected: Vec<Arc<AtomicU64>> = NODES.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let keys: Vec<Arc<AtomicU64>> = NODES.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut reps: Vec<_> = ts
        .into_iter()
        .map(|t| {
            let id = t.local_id().0;
            let node = Node::new(node_config(id), LogStorage::memory(), KvStore::new()).unwrap();
            let mut r = Replica::new(node, t, ReplicaOptions::default()).unwrap();
            if id == CLIENT_AWARE {
                r.set_clients([INTRUDER]);
            }
            r
        })
        .collect();
    let mut leader = reps.remove(0);
    let mut rng = Rng(13);
    let mut sent = [0u64; 3];
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for (i, mut r) in reps.into_iter().enumerate() {
            let (stop, count) = (stop.clone(), rejected[i + 1].clone());
            let held = keys[i + 1].clone();
            hs.push(s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = r.elapsed();
                    r.run_once(now, Duration::from_millis(5)).unwrap();
                    count.store(r.stats().rejected, Ordering::Relaxed);
                    held.store(r.node().state_machine().len() as u64, Ordering::Relaxed);
                }
                r
            }));
        }
        let _stop = StopOnDrop(stop.clone());
        leader.node_mut().campaign().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !leader.node().is_leader() {
            assert!(Instant::now() < deadline, "no leader");
            let now = leader.elapsed();
            leader.run_once(now, Duration::from_millis(5)).unwrap();
        }
        for k in 0..20u8 {
            for (i, &to) in NODES.iter().enumerate() {
                for g in garbage(&mut rng, to) {
                    intruder.send(NodeId(to), &g).unwrap();
                    sent[i] += 1;
                }
            }
            let op = KvOp::Set {
                key: vec![k],
                value: b"v".to_vec(),
            };
            let now = leader.elapsed();
            let Submitted::Pending(p) = leader.submit(&op.encode(), now).unwrap() else {
                panic!("node 1 lost its leadership to garbage");
            };
            let o = leader.wait_committed(p, Duration::from_secs(10)).unwrap();
            assert!(matches!(o, Outcome::Committed { .. }), "{o:?}");
        }
        // Every garbage frame reaches its node and is counted there; every write applies.
        while leader.stats().rejected < sent[0]
            || (1..3).any(|i| {
                rejected[i].load(Ordering::Relaxed) < sent[i]
                    || keys[i].load(Ordering::Relaxed) < 20
            })
        {
            assert!(
                Instant::now() < deadline,
                "garbage not all counted: sent {sent:?}, leader {}, followers {} {}",
                leader.stats().rejected,
                rejected[1].load(Ordering::Relaxed),
                rejected[2].load(Ordering::Relaxed)
            );
            let now = leader.elapsed();
            leader.run_once(now, Duration::from_millis(5)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = vec![leader.stats().rejected];
        for h in hs {
            let r = h.join().unwrap();
            assert!(r.term() < 99, "node {} took the forged term", r.id());
            assert_eq!(r.node().state_machine().len(), 20, "node {}", r.id());
            all.push(r.stats().rejected);
        }
        assert!(leader.term() < 99);
        assert_eq!(all, sent, "rejected exactly the garbage");
    });
}

#[test]
#[cfg_attr(miri, ignore = "maps files, threads and real time")]
fn garbage_frames_over_rings_are_rejected_and_counted() {
    use crate::net::ring::RingNetOptions;
    let dir = TempDir::new("replica-garbage-ring");
    let opts = || RingNetOptions::in_dir(&dir.0);
    let all: Vec<u64> = NODES.iter().copied().chain([INTRUDER]).collect();
    let open = |id: u64| {
        let peers: Vec<NodeId> = all
            .iter()
            .filter(|&&n| n != id)
            .map(|&n| NodeId(n))
            .collect();
        RingTransport::open(NodeId(id), &peers, opts()).unwrap()
    };
    let intruder = open(INTRUDER);
    let ts = NODES.iter().map(|&n| open(n)).collect();
    garbage_is_rejected_and_counted(ts, intruder);
}

#[test]
#[cfg_attr(miri, ignore = "sockets, threads and real time")]
fn garbage_frames_over_tcp_are_rejected_and_counted() {
    use crate::net::tcp::TcpOptions;
    let ids: Vec<u64> = NODES.iter().copied().chain([INTRUDER]).collect();
    let ls: Vec<std::net::TcpListener> = ids
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<std::net::SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut ts: Vec<TcpTransport> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let peers: Vec<(NodeId, std::net::SocketAddr)> = ids
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, &n)| (NodeId(n), addrs[j]))
                .collect();
            TcpTransport::from_listener(NodeId(ids[i]), l, &peers, TcpOptions::default()).unwrap()
        })
        .collect();
    let intruder = ts.pop().unwrap();
    garbage_is_rejected_and_counted(ts, intruder);
}
