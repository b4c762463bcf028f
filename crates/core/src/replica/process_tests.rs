//! Three Raft node processes (the test binary spawning itself, as the ledger's SIGKILL test
//! does) over [`RingTransport`] and over [`TcpTransport`] on loopback, a client in the test
//! process writing keys (not-leader answers name the leader), and the leader SIGKILLed several times and
//! restarted from its data directory. Checked: a new leader, of a higher term, acknowledges
//! writes after each kill (within a failover budget), and no acknowledged write is lost (each
//! is read back with a linearizable read at the end). The node processes are
//! [`Server`](super::server::Server)s, the client a [`RaftClient`](super::client::RaftClient):
//! the [client protocol](super::proto); the harness is in [`super::cluster_support`].
//!
//! Also the real-clock API (`wait_committed`) with replicas on threads of one process, over
//! rings and over TCP on loopback.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::cluster_support::*;
use super::*;
use crate::net::ring::RingTransport;
use crate::net::tcp::TcpTransport;
use crate::raft::{KvOp, KvResult, KvStore, LogStorage};
use crate::testutil::TempDir;

/// The node process of the multi-process tests ([`node_process`]).
#[test]
#[ignore = "the child process of the multi-process replica tests"]
fn replica_node_child() {
    node_process();
}

/// Writes through the leader, SIGKILLs it (`EMF_REPLICA_KILLS` times, 3 by default) and
/// restarts it, checking each failover and, at the end, that no acknowledged write was lost.
fn survives_leader_sigkills<T: Transport>(cluster: &mut Cluster, client: &mut Client<T>) {
    let kills: usize = std::env::var("EMF_REPLICA_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut k = 0u64;
    let mut failovers = Vec::new();
    for kill in 0..=kills {
        let mut last = None;
        for _ in 0..40 {
            let key = format!("k{k}").into_bytes();
            k += 1;
            last = Some(client.set(&key, deadline, cluster));
            acked.push(key);
        }
        if kill == kills {
            break;
        }
        // SIGKILL the leader that just acknowledged, restart it from its data directory.
        let last = last.expect("40 writes");
        cluster.kill(last.node);
        let killed = Instant::now();
        cluster.spawn(last.node);
        let key = format!("k{k}").into_bytes();
        k += 1;
        let a = client.set(&key, deadline, cluster);
        acked.push(key);
        failovers.push(killed.elapsed());
        assert!(
            a.term > last.term,
            "acknowledged in term {} after the leader of {} died",
            a.term,
            last.term
        );
    }
    client.assert_none_lost(&acked, deadline, cluster);
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

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn ring_cluster_survives_leader_sigkills() {
    let dir = TempDir::new("replica-ring");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let peers: Vec<NodeId> = NODES.iter().map(|&n| NodeId(n)).collect();
    // The client's inbox first, so nodes can answer from their first round.
    let t = RingTransport::open(NodeId(CLIENT), &peers, ring_opts(&dir.0)).unwrap();
    let mut client = Client::new(t);
    let specs = NODES.iter().map(|&n| (n, NodeSpawn::default())).collect();
    let mut cluster = Cluster::start(&dir.0, specs);
    survives_leader_sigkills(&mut cluster, &mut client);
}

/// Listeners on loopback for the nodes and the client, and every node's peer list (the other
/// nodes and the client).
pub(super) fn loopback_listeners() -> (HashMap<u64, TcpListener>, HashMap<u64, SocketAddr>) {
    let ls: HashMap<u64, TcpListener> = NODES
        .iter()
        .chain(&[CLIENT])
        .map(|&n| (n, TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let addrs = ls
        .iter()
        .map(|(&n, l)| (n, l.local_addr().unwrap()))
        .collect();
    (ls, addrs)
}

/// The peers of `id`: every other member of `addrs`.
pub(super) fn peers_of(id: u64, addrs: &HashMap<u64, SocketAddr>) -> Vec<(NodeId, SocketAddr)> {
    let mut v: Vec<_> = addrs
        .iter()
        .filter(|&(&n, _)| n != id)
        .map(|(&n, &a)| (NodeId(n), a))
        .collect();
    v.sort();
    v
}

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn tcp_cluster_survives_leader_sigkills() {
    // The test process binds every listener and keeps it: a restarted node inherits its
    // socket again, so its address never changes and no other process can take the port.
    let dir = TempDir::new("replica-tcp");
    let (mut ls, addrs) = loopback_listeners();
    let specs = NODES
        .iter()
        .map(|&n| {
            let spec = NodeSpawn {
                env: vec![
                    (ENV_NET, "tcp".to_string()),
                    (ENV_PEERS, format_peers(&peers_of(n, &addrs))),
                ],
                listener: ls.remove(&n),
                netns: None,
            };
            (n, spec)
        })
        .collect();
    let t = TcpTransport::from_listener(
        NodeId(CLIENT),
        ls.remove(&CLIENT).unwrap(),
        &peers_of(CLIENT, &addrs)
            .into_iter()
            .filter(|(n, _)| n.0 != CLIENT)
            .collect::<Vec<_>>(),
        tcp_opts(),
    )
    .unwrap();
    let mut client = Client::new(t);
    let mut cluster = Cluster::start(&dir.0, specs);
    survives_leader_sigkills(&mut cluster, &mut client);
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
        let _stop = StopOnDrop(stop.clone());
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
