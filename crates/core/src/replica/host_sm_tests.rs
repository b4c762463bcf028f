//! Nodes with a host's own state machine: three in-process nodes ([`spawn_node`]) over rings
//! running an append-only list, driven by a [`RaftClient`]. Submits answered with the list's
//! results, every node applying the same sequence, a node stopped and restarted from its
//! data directory catching up through the leader's snapshot, and a state machine that
//! aborts its node; the same nodes over TCP.

use std::path::Path;
use std::time::{Duration, Instant};

use super::client::{ClientOptions, RaftClient};
use super::node::{abort_node, spawn_node, NodeHandle, NodeSpec, NodeTransport};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::NodeId;
use crate::raft::StateMachine;
use crate::sync::{Arc, Mutex};
use crate::testutil::TempDir;

const NODES: [u64; 3] = [1, 2, 3];
const CLIENT: u64 = 100;

/// What a [`ListSm`] holds, shared with the test.
#[derive(Debug, Default)]
struct ListState {
    /// Every operation applied, with its log index.
    entries: Vec<(u64, Vec<u8>)>,
    /// The length of every list restored from a snapshot.
    restored: Vec<usize>,
}

/// An append-only list whose result is its new length (u64, little-endian): deterministic.
/// The operation `boom` aborts the node ([`abort_node`]).
#[derive(Debug, Clone, Default)]
struct ListSm(Arc<Mutex<ListState>>);

impl ListSm {
    fn entries(&self) -> Vec<(u64, Vec<u8>)> {
        self.0.lock().unwrap().entries.clone()
    }
    fn restored(&self) -> Vec<usize> {
        self.0.lock().unwrap().restored.clone()
    }
}

fn decode_list(mut d: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (d.get(..n)?, d.get(n..)?);
        d = b;
        Some(a)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut v = Vec::new();
    for _ in 0..count {
        let index = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        v.push((index, take(len)?.to_vec()));
    }
    d.is_empty().then_some(v)
}

impl StateMachine for ListSm {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        if op == b"boom" {
            abort_node(Error::invalid(format!("list: boom at index {index}")));
        }
        let mut s = self.0.lock().unwrap();
        s.entries.push((index, op.to_vec()));
        (s.entries.len() as u64).to_le_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        let s = self.0.lock().unwrap();
        let mut out = (s.entries.len() as u32).to_le_bytes().to_vec();
        for (i, op) in &s.entries {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&(op.len() as u32).to_le_bytes());
            out.extend_from_slice(op);
        }
        out
    }
    fn restore(&mut self, data: &[u8]) -> Result<()> {
        let v = decode_list(data).ok_or_else(|| Error::corrupt("list: a bad snapshot"))?;
        let mut s = self.0.lock().unwrap();
        s.restored.push(v.len());
        s.entries = v;
        Ok(())
    }
    fn check_snapshot(&self, data: &[u8]) -> Result<()> {
        decode_list(data)
            .map(|_| ())
            .ok_or_else(|| Error::corrupt("list: a bad snapshot"))
    }
    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        match query {
            b"len" => Ok((self.0.lock().unwrap().entries.len() as u64)
                .to_le_bytes()
                .to_vec()),
            _ => Err(Error::invalid("list: unknown query")),
        }
    }
}

fn spec(dir: &Path, id: u64, voters: &[u64]) -> NodeSpec {
    let t = NodeTransport::Ring {
        dir: dir.join("net"),
        inbox_capacity: 1 << 20,
        clients: vec![CLIENT],
    };
    let mut s = NodeSpec::new(id, voters.to_vec(), Some(dir.join(format!("node-{id}"))), t);
    s.snapshot_entries = 4;
    s
}

fn client(dir: &Path, nodes: &[u64]) -> RaftClient<RingTransport> {
    std::fs::create_dir_all(dir.join("net")).unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
        // Exactly once: the test counts the list's length.
        resend_unanswered: false,
        ..ClientOptions::default()
    };
    RaftClient::over_rings(&dir.join("net"), nodes, &[CLIENT], opts).unwrap()
}

fn len_of(result: &[u8]) -> u64 {
    u64::from_le_bytes(result.try_into().unwrap())
}

/// Waits (polling, bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and files")]
fn three_host_nodes_apply_the_same_list_and_one_catches_up() {
    let dir = TempDir::new("replica-host-sm");
    let mut c = client(&dir.0, &NODES);
    let sms: Vec<ListSm> = NODES.iter().map(|_| ListSm::default()).collect();
    let mut nodes: Vec<Option<NodeHandle>> = NODES
        .iter()
        .zip(&sms)
        .map(|(&n, sm)| Some(spawn_node(spec(&dir.0, n, &NODES), sm.clone()).unwrap()))
        .collect();
    let mut last = 0;
    for i in 0..10u64 {
        let done = c.submit(format!("op-{i}").as_bytes()).unwrap();
        assert_eq!(len_of(&done.result), i + 1, "the list's own result");
        last = done.index;
    }
    for n in NODES {
        assert!(
            c.wait_committed_on(n, last, Duration::from_secs(10))
                .unwrap()
                >= last
        );
    }
    let want = sms[0].entries();
    assert_eq!(want.len(), 10);
    assert!(want
        .iter()
        .enumerate()
        .all(|(i, e)| e.1 == format!("op-{i}").as_bytes()));
    for sm in &sms[1..] {
        assert_eq!(sm.entries(), want, "every node applied the same sequence");
    }
    let (leader, _) = c.leader().unwrap();
    let info = nodes[0].as_ref().unwrap().info();
    assert!(
        info.running && info.applied >= last && info.leader == leader,
        "{info:?}"
    );

    // A follower stops; the others go on, snapshot and compact their logs.
    let down = NODES.iter().position(|&n| n != leader).unwrap();
    nodes[down].take().unwrap().stop().unwrap();
    // Its inbox goes too (a host whose /dev/shm was wiped): what the leader sends meanwhile
    // is lost rather than delivered on restart, so the leader, whose log is compacted by
    // then, must catch it up with a snapshot.
    let o = RingNetOptions::in_dir(dir.0.join("net"));
    RingTransport::remove_inbox(NodeId(NODES[down]), &o).unwrap();
    let had = sms[down].entries().len();
    for i in 10..60u64 {
        let done = c.submit(format!("op-{i}").as_bytes()).unwrap();
        assert_eq!(len_of(&done.result), i + 1);
        last = done.index;
    }
    // Restarted from its data directory with an empty list: restored from its own snapshot,
    // then from the leader's (its log no longer reaches back to the follower's).
    let sm = ListSm::default();
    nodes[down] = Some(spawn_node(spec(&dir.0, NODES[down], &NODES), sm.clone()).unwrap());
    // The client's first send finds the removed inbox `Closed` and drops it; the next
    // opens the new one.
    let mut tries = 0;
    let caught_up = loop {
        tries += 1;
        match c.wait_committed_on(NODES[down], last, Duration::from_secs(10)) {
            Err(e) if e.kind() == ErrorKind::Closed && tries < 3 => continue,
            r => break r.unwrap(),
        }
    };
    assert!(caught_up >= last);
    let want = sms[(down + 1) % 3].entries();
    assert_eq!(want.len(), 60);
    assert_eq!(sm.entries(), want, "the restarted node caught up");
    assert!(
        sm.restored().iter().any(|&n| n > had),
        "caught up through the leader's snapshot: restored {:?}, had {had}",
        sm.restored()
    );
    assert_eq!(len_of(&sm.query(b"len").unwrap()), 60);
    for h in nodes.into_iter().flatten() {
        h.stop().unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and files")]
fn an_aborting_state_machine_stops_its_node_with_the_error() {
    let dir = TempDir::new("replica-host-abort");
    let mut c = client(&dir.0, &[1]);
    let sm = ListSm::default();
    let h = spawn_node(spec(&dir.0, 1, &[1]), sm.clone()).unwrap();
    let done = c.submit(b"a").unwrap();
    assert_eq!(len_of(&done.result), 1);
    // The same id cannot run twice (its inbox is held).
    let e = spawn_node(spec(&dir.0, 1, &[1]), ListSm::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    c.set_options(ClientOptions {
        timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_millis(100),
        ..c.options()
    });
    assert!(c.submit(b"boom").is_err(), "never answered");
    eventually("the node's loop to end", || !h.info().running);
    let e = h.stop().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("boom at index"), "{e}");
    assert_eq!(sm.entries().len(), 1, "nothing applied after the abort");
    // A bad spec is refused before any thread runs.
    let e = spawn_node(spec(&dir.0, 7, &[1]), ListSm::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "threads and sockets")]
fn host_nodes_over_tcp() {
    use crate::net::tcp::{TcpOptions, TcpTransport};
    use std::net::{SocketAddr, TcpListener};
    let dir = TempDir::new("replica-host-tcp");
    // Free loopback ports for the nodes (released for the nodes to bind: a port taken in
    // between makes spawn_node fail loudly, never pass wrongly); the client keeps its own.
    let addrs: Vec<(u64, SocketAddr)> = NODES
        .iter()
        .map(|&n| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            (n, l.local_addr().unwrap())
        })
        .collect();
    let cl = TcpListener::bind("127.0.0.1:0").unwrap();
    let client_addr = cl.local_addr().unwrap();
    let sms: Vec<ListSm> = NODES.iter().map(|_| ListSm::default()).collect();
    let nodes: Vec<NodeHandle> = addrs
        .iter()
        .zip(&sms)
        .map(|(&(id, listen), sm)| {
            let t = NodeTransport::Tcp {
                listen,
                peers: addrs.iter().copied().filter(|p| p.0 != id).collect(),
                clients: vec![(CLIENT, client_addr)],
            };
            let spec = NodeSpec::new(id, NODES.to_vec(), Some(dir.0.join(format!("n{id}"))), t);
            spawn_node(spec, sm.clone()).unwrap()
        })
        .collect();
    let peers: Vec<(NodeId, SocketAddr)> = addrs.iter().map(|&(n, a)| (NodeId(n), a)).collect();
    let t = TcpTransport::from_listener(NodeId(CLIENT), cl, &peers, TcpOptions::default()).unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
        resend_unanswered: false,
        ..ClientOptions::default()
    };
    let mut c = RaftClient::new(t, &NODES, opts).unwrap();
    let mut last = 0;
    for i in 0..5u64 {
        let done = c.submit(format!("tcp-{i}").as_bytes()).unwrap();
        assert_eq!(len_of(&done.result), i + 1);
        last = done.index;
    }
    for n in NODES {
        assert!(
            c.wait_committed_on(n, last, Duration::from_secs(10))
                .unwrap()
                >= last
        );
    }
    let want = sms[0].entries();
    assert_eq!(want.len(), 5);
    assert!(sms.iter().all(|sm| sm.entries() == want));
    for h in nodes {
        h.stop().unwrap();
    }
}
