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
use crate::raft::{Config, KvStore, LogStorage};
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
