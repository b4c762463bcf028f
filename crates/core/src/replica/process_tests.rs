//! Three Raft node processes over [`RingTransport`] (the test binary spawning itself, as the
//! ledger's SIGKILL test does), each a [`Server`](super::server::Server); a
//! [`RaftClient`](super::client::RaftClient) in the test process writing keys through the
//! leader (the [client protocol](super::proto): not-leader answers name the leader), and the
//! leader SIGKILLed several times and restarted from its data directory. Checked: a new
//! leader acknowledges writes after each kill (in a higher term, within a failover budget),
//! and no acknowledged write is lost (each is read back through the log at the end).
//!
//! Also the real-clock API (`wait_committed`) with replicas on threads of one process, over
//! rings and over TCP on loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::{ClientOptions, RaftClient};
use super::server::{ServeOptions, Server};
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
    let r = Replica::new(node, t, ReplicaOptions::default()).unwrap();
    let mut srv = Server::new(r, ServeOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = std::env::var_os("EMF_REPLICA_CHILD_LOG").is_some();
    let mut last_log = Instant::now();
    while Instant::now() < deadline {
        if log && last_log.elapsed() > Duration::from_millis(500) {
            last_log = Instant::now();
            let r = srv.replica();
            eprintln!(
                "node {id}: term {} leader {:?} commit {} {:?} {:?} {:?}",
                r.term(),
                r.leader(),
                r.node().commit_index(),
                r.stats(),
                r.transport().stats(),
                srv.stats()
            );
        }
        let now = srv.replica().elapsed();
        srv.run_once(now, Duration::from_millis(2)).unwrap();
    }
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

/// Writes `key` (the client retries and follows redirects); the node that acknowledged it.
fn set(c: &mut RaftClient<RingTransport>, key: &[u8], nodes: &mut HashMap<u64, Child>) -> u64 {
    for (id, ch) in nodes.iter_mut() {
        assert!(
            ch.0.try_wait().unwrap().is_none(),
            "node {id} exited by itself"
        );
    }
    let op = KvOp::Set {
        key: key.to_vec(),
        value: b"v".to_vec(),
    };
    let done = c
        .submit(&op.encode())
        .unwrap_or_else(|e| panic!("no leader acknowledged a write in time: {e}"));
    assert_eq!(KvResult::decode(&done.result), Some(KvResult::Done));
    done.node
}

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn ring_cluster_survives_leader_sigkills() {
    let dir = TempDir::new("replica-ring");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let peers: Vec<NodeId> = NODES.iter().map(|&n| NodeId(n)).collect();
    // The client's inbox first, so nodes can answer from their first round.
    let t = RingTransport::open(NodeId(CLIENT), &peers, ring_opts(&dir.0)).unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let mut client = RaftClient::new(t, &NODES, opts).unwrap();
    let mut children: HashMap<u64, Child> = NODES.iter().map(|&n| (n, spawn(&dir.0, n))).collect();
    let kills: usize = std::env::var("EMF_REPLICA_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut k = 0u64;
    let mut failovers = Vec::new();
    for kill in 0..=kills {
        let mut leader = 0;
        for _ in 0..40 {
            let key = format!("k{k}").into_bytes();
            k += 1;
            leader = set(&mut client, &key, &mut children);
            acked.push(key);
        }
        if kill == kills {
            break;
        }
        let term = client.status(leader).unwrap().term;
        // SIGKILL the leader that just acknowledged, restart it from its data directory.
        drop(children.remove(&leader));
        let killed = Instant::now();
        children.insert(leader, spawn(&dir.0, leader));
        let key = format!("k{k}").into_bytes();
        k += 1;
        let by = set(&mut client, &key, &mut children);
        acked.push(key);
        failovers.push(killed.elapsed());
        let new_term = client.status(by).unwrap().term;
        assert!(
            new_term > term,
            "acknowledged in term {new_term} after the leader of {term} died"
        );
    }
    // Every acknowledged write, read back through the log.
    for key in &acked {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(&b"v"[..]),
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
