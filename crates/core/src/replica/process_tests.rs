//! Three Raft node processes over [`RingTransport`] (the test binary spawning itself, as the
//! ledger's SIGKILL test does), a client in the test process writing keys through the leader,
//! and the leader SIGKILLed several times and restarted from its data directory. Checked: a
//! new leader acknowledges writes after each kill (within a failover budget), and no
//! acknowledged write is lost (a dump of the final leader's state, taken after a barrier
//! write, holds every one).
//!
//! The host protocol rides on the replicas' app frames ([`Replica::send_app`]):
//! request `[kind u8][req u64 le][key]` (`S` set, `D` dump), answer
//! `[req u64 le][status u8][payload]` (0 ok — a set's payload is the leader's term, a
//! dump's a `KvStore` snapshot —,
//! 1 not the leader — payload the leader's id, 0 if unknown —, 2 try again).
//!
//! Also the real-clock API (`wait_committed`) with replicas on threads of one process, over
//! rings and over TCP on loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::raft::{Config, KvOp, KvResult, KvStore, LogStorage};
use crate::testutil::TempDir;

const CLIENT: u64 = 100;
const NODES: [u64; 3] = [1, 2, 3];

fn ring_opts(dir: &Path) -> RingNetOptions {
    let mut o = RingNetOptions::in_dir(dir.join("net"));
    o.inbox_capacity = 4 << 20;
    o
}

fn node_config(id: u64) -> Config {
    let mut c = Config::new(id, NODES.to_vec());
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c.snapshot_entries = 200;
    c
}

/// The node process of [`ring_cluster_survives_leader_sigkills`].
#[test]
#[ignore = "the child process of ring_cluster_survives_leader_sigkills"]
fn replica_node_child() {
    let (Ok(dir), Ok(id)) = (
        std::env::var("EMF_REPLICA_CHILD_DIR"),
        std::env::var("EMF_REPLICA_CHILD_ID"),
    ) else {
        panic!("run by ring_cluster_survives_leader_sigkills only");
    };
    let dir = PathBuf::from(dir);
    let id: u64 = id.parse().unwrap();
    let peers: Vec<NodeId> = NODES
        .iter()
        .chain(&[CLIENT])
        .filter(|&&n| n != id)
        .map(|&n| NodeId(n))
        .collect();
    let t = RingTransport::open(NodeId(id), &peers, ring_opts(&dir)).unwrap();
    let storage = LogStorage::open(dir.join(format!("n{id}"))).unwrap();
    let node = Node::new(node_config(id), storage, KvStore::new()).unwrap();
    let mut r = Replica::new(node, t, ReplicaOptions::default()).unwrap();
    let mut waiting: HashMap<ProposalId, (NodeId, u64)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = std::env::var_os("EMF_REPLICA_CHILD_LOG").is_some();
    let mut last_log = Instant::now();
    while Instant::now() < deadline {
        let now = r.elapsed();
        if log && last_log.elapsed() > Duration::from_millis(500) {
            last_log = Instant::now();
            eprintln!(
                "node {id}: term {} leader {:?} commit {} {:?} {:?}",
                r.term(),
                r.leader(),
                r.node().commit_index(),
                r.stats(),
                r.transport().stats()
            );
        }
        let round = r.run_once(now, Duration::from_millis(2)).unwrap();
        for (p, o) in round.outcomes {
            r.forget(p);
            if let Some((to, req)) = waiting.remove(&p) {
                let ok = matches!(&o, Outcome::Committed { result, .. }
                    if KvResult::decode(result) == Some(KvResult::Done));
                let term = r.term().to_le_bytes();
                answer(&mut r, to, req, if ok { 0 } else { 2 }, &term);
            }
        }
        for f in r.take_app_frames() {
            if f.payload.len() < 9 {
                continue;
            }
            let req = u64::from_le_bytes(f.payload[1..9].try_into().unwrap());
            let key = f.payload[9..].to_vec();
            let leader = r.leader().unwrap_or(0);
            match f.payload[0] {
                b'D' if r.node().is_leader() => {
                    let snap = r.node().state_machine().snapshot();
                    answer(&mut r, f.from, req, 0, &snap);
                }
                b'S' => {
                    let op = KvOp::Set {
                        key,
                        value: b"v".to_vec(),
                    };
                    match r.submit(&op.encode(), now) {
                        Ok(Submitted::Pending(p)) => {
                            waiting.insert(p, (f.from, req));
                        }
                        Ok(Submitted::NotLeader { leader }) => {
                            let l = leader.unwrap_or(0).to_le_bytes();
                            answer(&mut r, f.from, req, 1, &l);
                        }
                        Err(_) => answer(&mut r, f.from, req, 2, &[]),
                    }
                }
                _ => answer(&mut r, f.from, req, 1, &leader.to_le_bytes()),
            }
        }
    }
}

fn answer(r: &mut Replica<KvStore, RingTransport>, to: NodeId, req: u64, status: u8, p: &[u8]) {
    let mut b = req.to_le_bytes().to_vec();
    b.push(status);
    b.extend_from_slice(p);
    // The client reads its inbox continuously; a lost answer makes it retry.
    let _ = r.send_app(to, &b);
}

/// A node process, SIGKILLed and reaped on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, id: u64) -> Child {
    let exe = std::env::current_exe().unwrap();
    Child(
        std::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "replica::process_tests::replica_node_child",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("EMF_REPLICA_CHILD_DIR", dir)
            .env("EMF_REPLICA_CHILD_ID", id.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(match std::env::var_os("EMF_REPLICA_CHILD_LOG") {
                Some(_) => std::process::Stdio::inherit(),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .unwrap(),
    )
}

struct Client {
    t: RingTransport,
    req: u64,
    target: u64,
}

enum Answer {
    Ok(u64, Vec<u8>),
    Retry,
}

impl Client {
    /// One request to the node it believes leads; follows not-leader answers; `Retry` on a
    /// timeout or a try-again answer (then the next node is tried).
    fn call(&mut self, kind: u8, key: &[u8]) -> Answer {
        self.req += 1;
        let mut b = vec![TAG_APP, kind];
        b.extend_from_slice(&self.req.to_le_bytes());
        b.extend_from_slice(key);
        let to = self.target;
        if self.t.send(NodeId(to), &b).is_err() {
            self.target = to % 3 + 1;
            return Answer::Retry;
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(f) = self.t.recv_timeout(left).unwrap() else {
                break;
            };
            let p = &f.payload;
            if p.len() < 10 || p[0] != TAG_APP {
                continue;
            }
            if u64::from_le_bytes(p[1..9].try_into().unwrap()) != self.req {
                continue; // a late answer to an earlier request
            }
            match p[9] {
                0 => return Answer::Ok(f.from.0, p[10..].to_vec()),
                1 => {
                    let l = u64::from_le_bytes(p[10..18].try_into().unwrap());
                    self.target = if NODES.contains(&l) && l != to {
                        l
                    } else {
                        to % 3 + 1
                    };
                    return Answer::Retry;
                }
                _ => return Answer::Retry,
            }
        }
        self.target = to % 3 + 1;
        Answer::Retry
    }

    /// Writes `key` until acknowledged; the node that acknowledged it and its term.
    fn set(
        &mut self,
        key: &[u8],
        deadline: Instant,
        nodes: &mut HashMap<u64, Child>,
    ) -> (u64, u64) {
        loop {
            assert!(
                Instant::now() < deadline,
                "no leader acknowledged a write in time"
            );
            for (id, c) in nodes.iter_mut() {
                assert!(
                    c.0.try_wait().unwrap().is_none(),
                    "node {id} exited by itself"
                );
            }
            if let Answer::Ok(n, t) = self.call(b'S', key) {
                return (n, u64::from_le_bytes(t[..8].try_into().unwrap()));
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn ring_cluster_survives_leader_sigkills() {
    let dir = TempDir::new("replica-ring");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let peers: Vec<NodeId> = NODES.iter().map(|&n| NodeId(n)).collect();
    // The client's inbox first, so nodes can answer from their first round.
    let t = RingTransport::open(NodeId(CLIENT), &peers, ring_opts(&dir.0)).unwrap();
    let mut client = Client {
        t,
        req: 0,
        target: 1,
    };
    let mut children: HashMap<u64, Child> = NODES.iter().map(|&n| (n, spawn(&dir.0, n))).collect();
    let kills: usize = std::env::var("EMF_REPLICA_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut k = 0u64;
    let mut failovers = Vec::new();
    for kill in 0..=kills {
        let (mut leader, mut term) = (0, 0);
        for _ in 0..40 {
            let key = format!("k{k}").into_bytes();
            k += 1;
            (leader, term) = client.set(&key, deadline, &mut children);
            acked.push(key);
        }
        if kill == kills {
            break;
        }
        // SIGKILL the leader that just acknowledged, restart it from its data directory.
        drop(children.remove(&leader));
        let killed = Instant::now();
        children.insert(leader, spawn(&dir.0, leader));
        let key = format!("k{k}").into_bytes();
        k += 1;
        let (_, new_term) = client.set(&key, deadline, &mut children);
        acked.push(key);
        failovers.push(killed.elapsed());
        assert!(
            new_term > term,
            "acknowledged in term {new_term} after the leader of {term} died"
        );
    }
    // A barrier write, then the state of the node that acknowledged it (it has applied every
    // write committed before the barrier).
    let dump = loop {
        assert!(Instant::now() < deadline, "no dump");
        let (n, _) = client.set(b"barrier", deadline, &mut children);
        client.target = n;
        if let Answer::Ok(_, snap) = client.call(b'D', b"") {
            break snap;
        }
    };
    let mut kv = KvStore::new();
    kv.restore(&dump).unwrap();
    for key in &acked {
        assert!(
            kv.get(key).is_some(),
            "acknowledged write {} lost",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(failovers.len(), kills);
    for f in &failovers {
        assert!(
            *f < Duration::from_secs(5),
            "failover took {f:?}: {failovers:?}"
        );
    }
    if std::env::var_os("EMF_REPLICA_SUMMARY").is_some() {
        eprintln!("acked {} writes, failovers {failovers:?}", acked.len());
    }
}

/// The real-clock API over a transport in one process: followers on their own threads, the
/// leader in the test's; `submit` on a follower names the leader, `wait_committed` returns
/// the committed outcome with its index, and times out on an id that was never proposed.
fn wait_committed_with_threads<T: Transport + Send>(ts: Vec<T>) {
    use crate::sync::{Arc, AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let mut reps: Vec<_> = ts
        .into_iter()
        .map(|t| {
            let id = t.local_id().0;
            let node = Node::new(node_config(id), LogStorage::memory(), KvStore::new()).unwrap();
            Replica::new(node, t, ReplicaOptions::default()).unwrap()
        })
        .collect();
    let mut leader = reps.remove(0);
    let leader_id = leader.id();
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for mut r in reps {
            let stop = stop.clone();
            hs.push(s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = r.elapsed();
                    r.run_once(now, Duration::from_millis(5)).unwrap();
                }
                r
            }));
        }
        leader.node_mut().campaign().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !leader.node().is_leader() {
            assert!(Instant::now() < deadline, "no leader");
            let now = leader.elapsed();
            leader.run_once(now, Duration::from_millis(5)).unwrap();
        }
        let mut last = 0;
        for k in 0..50u8 {
            let op = KvOp::Set {
                key: vec![k],
                value: b"v".to_vec(),
            };
            let now = leader.elapsed();
            let Submitted::Pending(p) = leader.submit(&op.encode(), now).unwrap() else {
                panic!("the leader refused");
            };
            match leader.wait_committed(p, Duration::from_secs(10)).unwrap() {
                Outcome::Committed { index, result } => {
                    assert!(index > last, "indexes grow: {index} after {last}");
                    last = index;
                    assert_eq!(KvResult::decode(&result), Some(KvResult::Done));
                }
                o => panic!("{o:?}"),
            }
        }
        let e = leader
            .wait_committed(ProposalId(1 << 40), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            let mut r = h.join().unwrap();
            assert_eq!(r.leader(), Some(leader_id));
            let now = r.elapsed();
            let op = KvOp::Set {
                key: b"x".to_vec(),
                value: b"v".to_vec(),
            };
            assert_eq!(
                r.submit(&op.encode(), now).unwrap(),
                Submitted::NotLeader {
                    leader: Some(leader_id)
                }
            );
            assert_eq!(r.stats().rejected, 0);
        }
    });
}

#[test]
#[cfg_attr(miri, ignore = "threads and real time")]
fn wait_committed_over_rings_with_threads() {
    let dir = TempDir::new("replica-wait");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let ts = NODES
        .iter()
        .map(|&id| {
            let peers: Vec<NodeId> = NODES
                .iter()
                .filter(|&&n| n != id)
                .map(|&n| NodeId(n))
                .collect();
            RingTransport::open(NodeId(id), &peers, ring_opts(&dir.0)).unwrap()
        })
        .collect();
    wait_committed_with_threads(ts);
}

#[test]
#[cfg_attr(miri, ignore = "threads, sockets and real time")]
fn wait_committed_over_tcp_with_threads() {
    use crate::net::tcp::{TcpOptions, TcpTransport};
    let ls: Vec<std::net::TcpListener> = NODES
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<std::net::SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    let ts = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let peers: Vec<(NodeId, std::net::SocketAddr)> = NODES
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, &n)| (NodeId(n), addrs[j]))
                .collect();
            TcpTransport::from_listener(NodeId(NODES[i]), l, &peers, TcpOptions::default()).unwrap()
        })
        .collect();
    wait_committed_with_threads(ts);
}
