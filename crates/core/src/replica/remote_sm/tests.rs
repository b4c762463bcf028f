//! The remote state machine: requests and answers between a node's thread and a host
//! thread (ids, order, wrong answers refused, timeouts, close, a deferred restore), and
//! nodes of a cluster whose state machines are host threads looping on `next`/`reply`
//! (answers, identical lists, a restart restoring its snapshot through the host).

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::replica::client::{ClientOptions, RaftClient};
use crate::replica::node::{catch_abort, spawn_node, NodeSpec, NodeTransport};
use crate::testutil::TempDir;

const LONG: Duration = Duration::from_secs(10);

/// Runs `f` on the node's end as the node's loop would, with its [`abort_node`] caught.
fn on_node<T: Send + 'static>(
    sm: RemoteSm,
    f: impl FnOnce(&mut RemoteSm) -> T + Send + 'static,
) -> JoinHandle<(RemoteSm, Result<T>)> {
    std::thread::spawn(move || {
        let mut sm = sm;
        let mut out = None;
        let r = catch_abort(|| {
            out = Some(f(&mut sm));
            Ok(())
        });
        (sm, r.map(|()| out.unwrap()))
    })
}

fn fetch(host: &RemoteSmHost) -> SmRequest {
    host.next(LONG).unwrap().expect("a request within the wait")
}

#[test]
#[cfg_attr(miri, ignore = "threads and timed waits")]
fn requests_are_answered_by_id_in_order() {
    let (sm, host) = remote_sm(7, Some(LONG));
    assert_eq!(host.id(), 7);
    assert_eq!(host.next(Duration::from_millis(1)).unwrap(), None, "idle");
    let t = on_node(sm, |sm| {
        let a = sm.apply(3, b"op");
        let s = sm.snapshot();
        let q = sm.query(b"q");
        (a, s, q)
    });
    let r = fetch(&host);
    assert_eq!(
        r.kind,
        SmRequestKind::Apply {
            index: 3,
            op: b"op".to_vec()
        }
    );
    assert_eq!(
        host.reply(r.id + 1, Ok(vec![])).unwrap_err().kind(),
        ErrorKind::NotFound,
        "an id not awaiting an answer"
    );
    host.reply(r.id, Ok(b"applied".to_vec())).unwrap();
    assert_eq!(
        host.reply(r.id, Ok(vec![])).unwrap_err().kind(),
        ErrorKind::NotFound,
        "answered already"
    );
    let s = fetch(&host);
    assert_eq!((s.id, &s.kind), (r.id + 1, &SmRequestKind::Snapshot));
    host.reply(s.id, Ok(b"state".to_vec())).unwrap();
    let q = fetch(&host);
    assert_eq!(
        q.kind,
        SmRequestKind::Query {
            query: b"q".to_vec()
        }
    );
    host.reply(q.id, Err(Error::invalid("unknown query")))
        .unwrap();
    let (sm, r) = t.join().unwrap();
    let (a, s, q) = r.unwrap();
    assert_eq!((a, s), (b"applied".to_vec(), b"state".to_vec()));
    let e = q.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "a refused query only");
    assert!(e.message().contains("unknown query"), "{e}");
    drop(sm);
    let e = host.next(LONG).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "the node's end is gone");
    assert!(e.message().contains("node has stopped"), "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "threads and timed waits")]
fn a_failed_apply_stops_the_node_with_the_hosts_message() {
    let (sm, host) = remote_sm(2, Some(LONG));
    let t = on_node(sm, |sm| sm.apply(5, b"x"));
    let r = fetch(&host);
    host.reply(r.id, Err(Error::invalid("cannot parse x")))
        .unwrap();
    let e = t.join().unwrap().1.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.message().contains("raft node 2")
            && e.message().contains("apply at index 5")
            && e.message().contains("cannot parse x"),
        "{e}"
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads and timed waits")]
fn an_unanswered_request_times_out_and_a_late_answer_is_refused() {
    let (sm, host) = remote_sm(1, Some(Duration::from_millis(30)));
    let t = on_node(sm, |sm| sm.apply(1, b"slow"));
    let r = fetch(&host);
    let (sm, res) = t.join().unwrap();
    let e = res.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(
        e.message().contains("did not answer the apply at index 1"),
        "{e}"
    );
    assert_eq!(
        host.reply(r.id, Ok(vec![])).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A timed-out query refuses only that query; the machine goes on.
    let t = on_node(sm, |sm| sm.query(b"q"));
    let q = fetch(&host);
    let (sm, res) = t.join().unwrap();
    assert_eq!(res.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
    assert!(q.id > r.id);
    let t = on_node(sm, |sm| sm.apply(2, b"quick"));
    let a = fetch(&host);
    host.reply(a.id, Ok(b"ok".to_vec())).unwrap();
    assert_eq!(t.join().unwrap().1.unwrap(), b"ok");
}

#[test]
#[cfg_attr(miri, ignore = "threads and timed waits")]
fn closing_the_host_interrupts_a_pending_request() {
    let (sm, host) = remote_sm(4, Some(LONG));
    let t = on_node(sm, |sm| sm.apply(9, b"op"));
    let _ = fetch(&host);
    assert!(!host.interrupted());
    host.close();
    let e = t.join().unwrap().1.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
    assert!(e.message().contains("closed"), "{e}");
    assert!(host.interrupted());
    assert_eq!(host.next(LONG).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        host.reply(1, Ok(vec![])).unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads and timed waits")]
fn a_restore_does_not_wait_and_its_refusal_stops_the_next_call() {
    let (mut sm, host) = remote_sm(3, Some(LONG));
    // No host is listening yet: the restore returns at once.
    sm.restore(b"snap").unwrap();
    let t = on_node(sm, |sm| sm.apply(11, b"after"));
    let r = fetch(&host);
    assert_eq!(
        r.kind,
        SmRequestKind::Restore {
            data: b"snap".to_vec()
        }
    );
    // The apply is not handed out before the restore is answered.
    assert_eq!(host.next(Duration::from_millis(20)).unwrap(), None);
    host.reply(r.id, Err(Error::corrupt("bad snapshot")))
        .unwrap();
    // The node's end stays alive (as in a node still unwinding): the host sees no request.
    let (_sm, res) = t.join().unwrap();
    let e = res.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(
        e.message().contains("restore of 4 bytes") && e.message().contains("bad snapshot"),
        "{e}"
    );
    assert_eq!(
        host.next(Duration::ZERO).unwrap(),
        None,
        "the apply was never made"
    );

    // Accepted: the apply follows.
    let (mut sm, host) = remote_sm(3, Some(LONG));
    sm.restore(b"snap").unwrap();
    let t = on_node(sm, |sm| sm.apply(12, b"after"));
    let r = fetch(&host);
    host.reply(r.id, Ok(vec![])).unwrap();
    let a = fetch(&host);
    assert_eq!(a.id, r.id + 1);
    host.reply(a.id, Ok(b"1".to_vec())).unwrap();
    assert_eq!(t.join().unwrap().1.unwrap(), b"1");
}

// ---- nodes of a cluster with host threads as state machines ----

const NODES: [u64; 3] = [1, 2, 3];
const CLIENT: u64 = 100;

/// A host thread running an append-only list for one node: results are the new length.
struct ListHost {
    host: Arc<RemoteSmHost>,
    list: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Every request kind seen, in order (`a`pply, `s`napshot, `r`estore, `q`uery).
    seen: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

fn encode(list: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in list {
        out.extend_from_slice(&(op.len() as u32).to_le_bytes());
        out.extend_from_slice(op);
    }
    out
}

fn decode(mut d: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut v = Vec::new();
    while !d.is_empty() {
        let n = u32::from_le_bytes(d.get(..4)?.try_into().ok()?) as usize;
        v.push(d.get(4..4 + n)?.to_vec());
        d = &d[4 + n..];
    }
    Some(v)
}

impl ListHost {
    fn start(host: RemoteSmHost) -> ListHost {
        let host = Arc::new(host);
        let list = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(String::new()));
        let (h, l, s) = (host.clone(), list.clone(), seen.clone());
        let thread = std::thread::spawn(move || loop {
            let r = match h.next(LONG) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) => return,
            };
            let mut list = l.lock().unwrap();
            let (tag, answer) = match r.kind {
                SmRequestKind::Apply { op, .. } => {
                    list.push(op);
                    ('a', Ok((list.len() as u64).to_le_bytes().to_vec()))
                }
                SmRequestKind::Snapshot => ('s', Ok(encode(&list))),
                SmRequestKind::Restore { data } => match decode(&data) {
                    Some(v) => {
                        *list = v;
                        ('r', Ok(Vec::new()))
                    }
                    None => ('r', Err(Error::corrupt("list: a bad snapshot"))),
                },
                SmRequestKind::Query { .. } => ('q', Ok(encode(&list))),
            };
            s.lock().unwrap().push(tag);
            drop(list);
            if h.reply(r.id, answer).is_err() {
                return;
            }
        });
        ListHost {
            host,
            list,
            seen,
            thread: Some(thread),
        }
    }

    fn list(&self) -> Vec<Vec<u8>> {
        self.list.lock().unwrap().clone()
    }

    /// Closes the host's end and joins its thread.
    fn close(&mut self) {
        self.host.close();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for ListHost {
    fn drop(&mut self) {
        self.close();
    }
}

fn spec(dir: &Path, id: u64) -> NodeSpec {
    let t = NodeTransport::Ring {
        dir: dir.join("net"),
        inbox_capacity: 1 << 20,
        clients: vec![CLIENT],
    };
    let mut s = NodeSpec::new(id, NODES.to_vec(), Some(dir.join(format!("node-{id}"))), t);
    s.snapshot_entries = 4;
    s
}

fn start(dir: &Path, id: u64) -> (crate::replica::NodeHandle, ListHost) {
    let (sm, host) = remote_sm(id, Some(LONG));
    let node = spawn_node(spec(dir, id), sm).unwrap();
    // The host starts answering only once the node is open, as a binding's would.
    (node, ListHost::start(host))
}

/// Stops a node the way a binding does: closes the host's end first (the node may be
/// waiting for it), then joins the node; a `Closed` error the close caused is a stop.
fn stop(node: crate::replica::NodeHandle, mut host: ListHost) {
    host.close();
    match node.stop() {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Closed && host.host.interrupted() => {}
        Err(e) => panic!("stopping node: {e}"),
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and files")]
fn host_threads_run_the_clusters_list_and_a_restart_restores_through_the_host() {
    let dir = TempDir::new("replica-remote-sm");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
        resend_unanswered: false,
        ..ClientOptions::default()
    };
    let mut c = RaftClient::over_rings(&dir.0.join("net"), &NODES, &[CLIENT], opts).unwrap();
    let mut nodes: Vec<Option<(crate::replica::NodeHandle, ListHost)>> =
        NODES.iter().map(|&n| Some(start(&dir.0, n))).collect();
    let mut last = 0;
    for i in 0..12u64 {
        let done = c.submit(format!("op-{i}").as_bytes()).unwrap();
        assert_eq!(
            u64::from_le_bytes(done.result.as_slice().try_into().unwrap()),
            i + 1,
            "the host's answer is the client's result"
        );
        last = done.index;
    }
    for n in NODES {
        assert!(c.wait_committed_on(n, last, LONG).unwrap() >= last);
    }
    // Applied (the commit index was published after the round that applied it).
    let deadline = Instant::now() + LONG;
    while nodes
        .iter()
        .any(|n| n.as_ref().unwrap().1.list().len() < 12)
    {
        assert!(Instant::now() < deadline, "every host applied the 12 ops");
        std::thread::yield_now();
    }
    let want: Vec<Vec<u8>> = (0..12).map(|i| format!("op-{i}").into_bytes()).collect();
    for n in nodes.iter().flatten() {
        assert_eq!(n.1.list(), want, "every host holds the same list");
        assert!(
            n.1.seen.lock().unwrap().contains('s'),
            "snapshots were asked"
        );
    }
    // A node restarted from its data directory: its host is asked to restore the latest
    // snapshot before any apply, then applies only the entries after it.
    let (node, host) = nodes[2].take().unwrap();
    stop(node, host);
    let (node, host) = start(&dir.0, NODES[2]);
    let deadline = Instant::now() + LONG;
    while host.list().len() < 12 {
        assert!(Instant::now() < deadline, "the restarted host caught up");
        std::thread::yield_now();
    }
    assert_eq!(host.list(), want);
    let seen = host.seen.lock().unwrap().clone();
    assert!(seen.starts_with('r'), "restored first: {seen}");
    assert!(
        seen.matches('a').count() < 12,
        "only the entries after the snapshot applied: {seen}"
    );
    nodes[2] = Some((node, host));
    for (node, host) in nodes.into_iter().flatten() {
        stop(node, host);
    }
}
