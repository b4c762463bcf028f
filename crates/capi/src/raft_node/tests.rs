//! The in-process node's C ABI driven as a C host would: three nodes of one process over
//! rings with a counter state machine written as `extern "C"` callbacks, a client
//! (`emf_raft_client_*`) submitting; a failing callback stopping its node; bad arguments.

use std::ffi::CString;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: a test's counter, never modelled

use super::*;
use crate::raft::{
    emf_raft_client_connect, emf_raft_client_free, emf_raft_client_submit, emf_raft_client_t,
    emf_raft_client_wait_committed,
};
use crate::{
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_CLOSED, EMF_ERR_NULL_ARGUMENT, EMF_ERR_TIMEOUT, EMF_OK,
};

use crate::testutil::{ffi, last_error};

/// The counter a node's callbacks work on: the sum of the operations (u64, little-endian)
/// applied; the operation `u64::MAX` makes `apply` fail.
#[derive(Default)]
struct Counter {
    sum: AtomicU64,
    applied: AtomicU64,
}

unsafe extern "C" fn c_apply(
    ctx: *mut c_void,
    _index: u64,
    op: *const u8,
    len: usize,
    emit: emf_raft_emit_fn,
    emit_ctx: *mut c_void,
) -> c_int {
    // SAFETY: the test passes a live `Counter`.
    let c = unsafe { &*ctx.cast::<Counter>() };
    // SAFETY: `op` readable for `len` during the call.
    let op = unsafe { std::slice::from_raw_parts(op, len) };
    let Ok(v) = <[u8; 8]>::try_from(op) else {
        // Not an operation of the counter: answered (an empty result), not failed.
        return 0;
    };
    let v = u64::from_le_bytes(v);
    if v == u64::MAX {
        return 42;
    }
    let sum = c.sum.fetch_add(v, Ordering::Relaxed) + v;
    c.applied.fetch_add(1, Ordering::Relaxed);
    let out = sum.to_le_bytes();
    // SAFETY: the library's emit with its context, during the callback.
    unsafe { emit.unwrap()(emit_ctx, out.as_ptr(), out.len()) }
}

unsafe extern "C" fn c_snapshot(
    ctx: *mut c_void,
    emit: emf_raft_emit_fn,
    emit_ctx: *mut c_void,
) -> c_int {
    // SAFETY: as in `c_apply`.
    let c = unsafe { &*ctx.cast::<Counter>() };
    let out = c.sum.load(Ordering::Relaxed).to_le_bytes();
    // SAFETY: as in `c_apply`.
    unsafe { emit.unwrap()(emit_ctx, out.as_ptr(), out.len()) }
}

unsafe extern "C" fn c_restore(ctx: *mut c_void, data: *const u8, len: usize) -> c_int {
    // SAFETY: as in `c_apply`.
    let c = unsafe { &*ctx.cast::<Counter>() };
    // SAFETY: `data` readable for `len` during the call.
    let d = unsafe { std::slice::from_raw_parts(data, len) };
    match <[u8; 8]>::try_from(d) {
        Ok(v) => {
            c.sum.store(u64::from_le_bytes(v), Ordering::Relaxed);
            0
        }
        Err(_) => 1,
    }
}

const SM: emf_raft_sm_t = emf_raft_sm_t {
    apply: Some(c_apply),
    snapshot: Some(c_snapshot),
    restore: Some(c_restore),
    query: None,
};

fn cstr(p: &std::path::Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("emf-capi-node-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn start(
    dir: &std::path::Path,
    id: u64,
    voters: &[u64],
    ctx: &Counter,
) -> (emf_status_t, *mut emf_raft_node_t) {
    let ring = cstr(&dir.join("net"));
    let data = cstr(&dir.join(format!("node-{id}")));
    let mut o = options_default();
    // SAFETY: writable out-parameter.
    assert_eq!(unsafe { emf_raft_node_options_default(&mut o) }, EMF_OK);
    o.id = id;
    o.voters = voters.as_ptr();
    o.n_voters = voters.len();
    o.ring_dir = ring.as_ptr();
    o.data_dir = data.as_ptr();
    o.snapshot_entries = 4;
    let mut n = null_mut();
    // SAFETY: options, strings and the counter outlive the node (stopped by the caller).
    let st =
        unsafe { emf_raft_node_start(&o, &SM, std::ptr::from_ref(ctx).cast_mut().cast(), &mut n) };
    (st, n)
}

fn connect(dir: &std::path::Path, nodes: &[u64]) -> *mut emf_raft_client_t {
    let ring = cstr(&dir.join("net"));
    let mut c = null_mut();
    // SAFETY: valid strings and arrays; NULL options.
    let st = unsafe {
        emf_raft_client_connect(ring.as_ptr(), nodes.as_ptr(), nodes.len(), null(), &mut c)
    };
    assert_eq!(st, EMF_OK, "{}", last_error());
    c
}

/// A client whose calls give up after `timeout_ms`.
fn connect_quick(dir: &std::path::Path, nodes: &[u64], timeout_ms: u32) -> *mut emf_raft_client_t {
    let ring = cstr(&dir.join("net"));
    let mut o = crate::raft::emf_raft_client_options_t {
        timeout_ms: 0,
        attempt_timeout_ms: 0,
    };
    assert_eq!(
        ffi!(crate::raft::emf_raft_client_options_default(&mut o)),
        EMF_OK
    );
    o.timeout_ms = timeout_ms;
    o.attempt_timeout_ms = timeout_ms.min(200);
    let mut c = null_mut();
    // SAFETY: valid strings, arrays and options.
    let st =
        unsafe { emf_raft_client_connect(ring.as_ptr(), nodes.as_ptr(), nodes.len(), &o, &mut c) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    c
}

/// Submits `v`; the index and the counter's result.
fn submit(c: *mut emf_raft_client_t, v: u64) -> (emf_status_t, u64, u64) {
    let op = v.to_le_bytes();
    let (mut index, mut buf, mut len) = (0u64, [0u8; 8], 0usize);
    // SAFETY: valid buffers and out-parameters.
    let st = unsafe {
        emf_raft_client_submit(c, op.as_ptr(), 8, &mut index, buf.as_mut_ptr(), 8, &mut len)
    };
    (st, index, u64::from_le_bytes(buf))
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn three_nodes_of_one_process_run_the_hosts_counter() {
    let dir = tmp("three");
    let voters = [1u64, 2, 3];
    let counters: Vec<Counter> = voters.iter().map(|_| Counter::default()).collect();
    let nodes: Vec<_> = voters
        .iter()
        .zip(&counters)
        .map(|(&id, c)| {
            let (st, n) = start(&dir.0, id, &voters, c);
            assert_eq!(st, EMF_OK, "{}", last_error());
            n
        })
        .collect();
    // The same id twice on the same rings: its inbox is held.
    let spare = Counter::default();
    let (st, _) = start(&dir.0, 1, &voters, &spare);
    assert_eq!(st, EMF_ERR_BUSY, "{}", last_error());
    let c = connect(&dir.0, &voters);
    let mut last = 0;
    for v in 1..=10u64 {
        let (st, index, sum) = submit(c, v);
        assert_eq!(st, EMF_OK, "{}", last_error());
        assert_eq!(sum, v * (v + 1) / 2, "the host's result");
        last = index;
    }
    let mut applied = 0;
    // SAFETY: live client; writable out-parameter.
    let st = unsafe { emf_raft_client_wait_committed(c, last, 10_000, &mut applied) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    for (n, counter) in nodes.iter().zip(&counters) {
        let mut info = emf_raft_node_info_t::default();
        // Every node applies the last index (the client's wait asks the leader only).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: live handle; writable out-parameter.
            assert_eq!(unsafe { emf_raft_node_info(*n, &mut info) }, EMF_OK);
            if info.applied >= last {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{info:?}");
            std::thread::yield_now();
        }
        assert_eq!(info.running, 1);
        assert!(info.leader != 0 && info.term > 0, "{info:?}");
        assert_eq!(counter.sum.load(Ordering::Relaxed), 55);
    }
    for n in nodes {
        // SAFETY: live handles, freed once.
        assert_eq!(unsafe { emf_raft_node_stop(n) }, EMF_OK, "{}", last_error());
        let mut info = emf_raft_node_info_t::default();
        // SAFETY: stopped but live handle.
        assert_eq!(unsafe { emf_raft_node_info(n, &mut info) }, EMF_OK);
        assert_eq!(info.running, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { emf_raft_node_free(n) }, EMF_OK);
    }
    // SAFETY: live client.
    assert_eq!(unsafe { emf_raft_client_free(c) }, EMF_OK);
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn a_failing_callback_stops_the_node_with_a_readable_error() {
    let dir = tmp("fail");
    let counter = Counter::default();
    let (st, n) = start(&dir.0, 1, &[1], &counter);
    assert_eq!(st, EMF_OK, "{}", last_error());
    let c = connect(&dir.0, &[1]);
    assert_eq!(submit(c, 5).0, EMF_OK, "{}", last_error());
    // The failing operation is never answered: the client times out or finds the node gone.
    let o = crate::raft::emf_raft_client_options_t {
        timeout_ms: 300,
        attempt_timeout_ms: 100,
    };
    // SAFETY: live client.
    assert_eq!(unsafe { emf_raft_client_free(c) }, EMF_OK);
    let ring = cstr(&dir.0.join("net"));
    let mut c = null_mut();
    // SAFETY: valid strings and arrays and options.
    let st = unsafe { emf_raft_client_connect(ring.as_ptr(), [1u64].as_ptr(), 1, &o, &mut c) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    assert_ne!(submit(c, u64::MAX).0, EMF_OK);
    let mut info = emf_raft_node_info_t::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: live handle; writable out-parameter.
        assert_eq!(unsafe { emf_raft_node_info(n, &mut info) }, EMF_OK);
        if info.running == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::yield_now();
    }
    // SAFETY: live handle.
    assert_eq!(unsafe { emf_raft_node_stop(n) }, EMF_ERR_STOPPED);
    let e = last_error();
    assert!(
        e.contains("apply callback failed") && e.contains("returned 42"),
        "{e}"
    );
    assert_eq!(
        counter.sum.load(Ordering::Relaxed),
        5,
        "nothing applied after the failure"
    );
    // A second stop: already stopped.
    // SAFETY: live handle.
    assert_eq!(unsafe { emf_raft_node_stop(n) }, EMF_OK);
    // SAFETY: live handles, freed once.
    assert_eq!(unsafe { emf_raft_node_free(n) }, EMF_OK);
    // SAFETY: live client, freed once.
    assert_eq!(unsafe { emf_raft_client_free(c) }, EMF_OK);
}

#[test]
fn start_refuses_bad_arguments() {
    let dir = tmp("args");
    let ring = cstr(&dir.0.join("net"));
    let voters = [1u64, 2, 3];
    let mut o = options_default();
    o.id = 1;
    o.voters = voters.as_ptr();
    o.n_voters = 3;
    let mut n = null_mut();
    let ctx = null_mut();
    // Every call passes valid or NULL pointers; nothing starts.
    assert_eq!(
        ffi!(emf_raft_node_start(&o, &SM, ctx, &mut n)),
        EMF_ERR_NULL_ARGUMENT
    );
    assert!(last_error().contains("ring_dir"));
    o.ring_dir = ring.as_ptr();
    assert_eq!(
        ffi!(emf_raft_node_start(null(), &SM, ctx, &mut n)),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_node_start(&o, null(), ctx, &mut n)),
        EMF_ERR_NULL_ARGUMENT
    );
    let mut no_apply = SM;
    no_apply.apply = None;
    assert_eq!(
        ffi!(emf_raft_node_start(&o, &no_apply, ctx, &mut n)),
        EMF_ERR_NULL_ARGUMENT
    );
    assert!(last_error().contains("sm->apply"));
    o.id = 7;
    assert_eq!(
        ffi!(emf_raft_node_start(&o, &SM, ctx, &mut n)),
        EMF_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("one of the voters"),
        "{}",
        last_error()
    );
    o.id = 1;
    o.tick_ms = 0;
    assert_eq!(
        ffi!(emf_raft_node_start(&o, &SM, ctx, &mut n)),
        EMF_ERR_INVALID_ARGUMENT
    );
    o.tick_ms = 10;
    o.n_voters = EMF_RAFT_MAX_NODES + 1;
    assert_eq!(
        ffi!(emf_raft_node_start(&o, &SM, ctx, &mut n)),
        EMF_ERR_TOO_LARGE
    );
    assert!(n.is_null());
    assert_eq!(ffi!(emf_raft_node_free(null_mut())), EMF_OK);
    let mut info = emf_raft_node_info_t::default();
    assert_eq!(
        ffi!(emf_raft_node_info(null_mut(), &mut info)),
        EMF_ERR_NULL_ARGUMENT
    );
}

/// What the self-stopping machine's callbacks share with the test: its own node's handle
/// and the status its `emf_raft_node_stop` got.
struct SelfStop {
    node: std::sync::atomic::AtomicPtr<emf_raft_node_t>, // std-atomic-ok: a test's cell
    got: std::sync::atomic::AtomicI32,                   // std-atomic-ok: a test's cell
}

unsafe extern "C" fn self_apply(
    ctx: *mut c_void,
    _index: u64,
    _op: *const u8,
    _len: usize,
    _emit: emf_raft_emit_fn,
    _emit_ctx: *mut c_void,
) -> c_int {
    // SAFETY: the test passes a live `SelfStop`.
    let s = unsafe { &*ctx.cast::<SelfStop>() };
    let n = s.node.load(Ordering::Acquire);
    if !n.is_null() {
        // SAFETY: the node's live handle (freed by the test after it is stopped).
        let st = unsafe { emf_raft_node_stop(n) };
        s.got.store(st, Ordering::Release);
    }
    0
}

unsafe extern "C" fn no_snapshot(_: *mut c_void, _: emf_raft_emit_fn, _: *mut c_void) -> c_int {
    0
}

unsafe extern "C" fn any_restore(_: *mut c_void, _: *const u8, _: usize) -> c_int {
    0
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn a_callback_cannot_stop_its_own_node() {
    let dir = tmp("self");
    let ring = cstr(&dir.0.join("net"));
    let one = [1u64];
    let mut o = options_default();
    o.id = 1;
    o.voters = one.as_ptr();
    o.n_voters = 1;
    o.ring_dir = ring.as_ptr();
    let sm = emf_raft_sm_t {
        apply: Some(self_apply),
        snapshot: Some(no_snapshot),
        restore: Some(any_restore),
        query: None,
    };
    let ctx = SelfStop {
        node: std::sync::atomic::AtomicPtr::new(null_mut()),
        got: std::sync::atomic::AtomicI32::new(-1),
    };
    let mut n = null_mut();
    let p = std::ptr::from_ref(&ctx).cast_mut().cast();
    assert_eq!(ffi!(emf_raft_node_start(&o, &sm, p, &mut n)), EMF_OK);
    ctx.node.store(n, Ordering::Release);
    let c = connect(&dir.0, &one);
    assert_eq!(submit(c, 1).0, EMF_OK, "{}", last_error());
    assert_eq!(ctx.got.load(Ordering::Acquire), EMF_ERR_BUSY);
    let mut info = emf_raft_node_info_t::default();
    assert_eq!(ffi!(emf_raft_node_info(n, &mut info)), EMF_OK);
    assert_eq!(info.running, 1, "the node goes on");
    assert_eq!(ffi!(emf_raft_node_free(n)), EMF_OK);
    assert_eq!(ffi!(emf_raft_client_free(c)), EMF_OK);
}

// ---- a node whose state machine the host answers (emf_raft_node_start_remote) ----

fn start_remote(
    dir: &std::path::Path,
    id: u64,
    voters: &[u64],
    timeout_ms: u64,
) -> (emf_status_t, *mut emf_raft_node_t) {
    let ring = cstr(&dir.join("net"));
    let data = cstr(&dir.join(format!("node-{id}")));
    let mut o = options_default();
    o.id = id;
    o.voters = voters.as_ptr();
    o.n_voters = voters.len();
    o.ring_dir = ring.as_ptr();
    o.data_dir = data.as_ptr();
    o.snapshot_entries = 4;
    let mut n = null_mut();
    // SAFETY: options and strings live during the call (copied by it).
    let st = unsafe { emf_raft_node_start_remote(&o, timeout_ms, &mut n) };
    (st, n)
}

/// The handle, sent to a host thread (the handle is thread-safe).
#[derive(Clone, Copy)]
struct SendNode(*mut emf_raft_node_t);
// SAFETY: `emf_raft_node_t` is a Shared handle, usable from any thread until freed (the test
// joins the host thread before freeing).
unsafe impl Send for SendNode {}

/// A host answering a counter's requests with the C calls, with a buffer of 2 bytes first
/// (so every 8-byte operation is fetched twice: the kept-request path); answers the
/// operation `u64::MAX` with a failure. Ends when the node stops (`EMF_ERR_CLOSED`).
/// Returns the kinds seen and the final sum.
fn counter_host(n: SendNode) -> std::thread::JoinHandle<(Vec<u32>, u64)> {
    std::thread::spawn(move || {
        let n = n;
        let (mut kinds, mut sum) = (Vec::new(), 0u64);
        let mut buf = vec![0u8; 2];
        loop {
            let mut r = emf_raft_request_t::default();
            let mut len = 0usize;
            // SAFETY: live handle; buffers valid for their lengths.
            let st = unsafe {
                emf_raft_node_next_request(n.0, 100, &mut r, buf.as_mut_ptr(), buf.len(), &mut len)
            };
            match st {
                EMF_OK => {}
                EMF_ERR_TIMEOUT => continue,
                EMF_ERR_BUFFER_TOO_SMALL => {
                    assert!(len > buf.len());
                    buf.resize(len, 0);
                    continue;
                }
                EMF_ERR_CLOSED => return (kinds, sum),
                other => panic!("next_request: {other} {}", last_error()),
            }
            kinds.push(r.kind);
            let bytes = &buf[..len];
            let (status, answer): (c_int, Vec<u8>) = match r.kind {
                EMF_RAFT_REQ_APPLY => match <[u8; 8]>::try_from(bytes).map(u64::from_le_bytes) {
                    Ok(u64::MAX) => (7, b"the counter cannot add MAX".to_vec()),
                    Ok(v) => {
                        sum += v;
                        (0, sum.to_le_bytes().to_vec())
                    }
                    Err(_) => (0, Vec::new()),
                },
                EMF_RAFT_REQ_SNAPSHOT => (0, sum.to_le_bytes().to_vec()),
                EMF_RAFT_REQ_RESTORE => match <[u8; 8]>::try_from(bytes) {
                    Ok(b) => {
                        sum = u64::from_le_bytes(b);
                        (0, Vec::new())
                    }
                    Err(_) => (1, b"not a counter".to_vec()),
                },
                EMF_RAFT_REQ_QUERY => (0, sum.to_le_bytes().to_vec()),
                k => panic!("unknown kind {k}"),
            };
            // SAFETY: live handle; `answer` readable.
            let st =
                unsafe { emf_raft_node_reply(n.0, r.id, status, answer.as_ptr(), answer.len()) };
            if st == EMF_ERR_CLOSED {
                return (kinds, sum);
            }
            assert_eq!(st, EMF_OK, "{}", last_error());
        }
    })
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn a_remote_node_is_answered_by_its_host_and_restarts_through_it() {
    let dir = tmp("remote");
    let one = [1u64];
    let (st, n) = start_remote(&dir.0, 1, &one, 0);
    assert_eq!(st, EMF_OK, "{}", last_error());
    let host = counter_host(SendNode(n));
    let c = connect(&dir.0, &one);
    for v in 1..=10u64 {
        let (st, _, sum) = submit(c, v);
        assert_eq!(st, EMF_OK, "{}", last_error());
        assert_eq!(sum, v * (v + 1) / 2, "the host's answer");
    }
    assert_eq!(ffi!(emf_raft_node_stop(n)), EMF_OK, "{}", last_error());
    let (kinds, sum) = host.join().unwrap();
    assert_eq!(sum, 55);
    assert!(kinds.contains(&EMF_RAFT_REQ_SNAPSHOT), "{kinds:?}");
    // Answers to a stopped node: refused.
    assert_eq!(
        ffi!(emf_raft_node_reply(n, 1, 0, null(), 0)),
        EMF_ERR_CLOSED
    );
    assert_eq!(ffi!(emf_raft_node_free(n)), EMF_OK);

    // Restarted from its data directory: the host restores the snapshot first, then
    // applies only what followed it.
    let (st, n) = start_remote(&dir.0, 1, &one, 0);
    assert_eq!(st, EMF_OK, "{}", last_error());
    let host = counter_host(SendNode(n));
    let (st, _, sum) = submit(c, 100);
    assert_eq!(st, EMF_OK, "{}", last_error());
    assert_eq!(sum, 155, "the state survived the restart");
    assert_eq!(ffi!(emf_raft_node_stop(n)), EMF_OK, "{}", last_error());
    let (kinds, _) = host.join().unwrap();
    assert_eq!(kinds.first(), Some(&EMF_RAFT_REQ_RESTORE), "{kinds:?}");
    let applies = kinds.iter().filter(|&&k| k == EMF_RAFT_REQ_APPLY).count();
    assert!(applies < 11, "not every entry replayed: {kinds:?}");
    assert_eq!(ffi!(emf_raft_node_free(n)), EMF_OK);
    assert_eq!(ffi!(emf_raft_client_free(c)), EMF_OK);
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn a_remote_hosts_failure_stops_the_node_with_its_reason() {
    let dir = tmp("remote-fail");
    let one = [1u64];
    let (st, n) = start_remote(&dir.0, 1, &one, 0);
    assert_eq!(st, EMF_OK, "{}", last_error());
    let host = counter_host(SendNode(n));
    let c = connect_quick(&dir.0, &one, 2000);
    assert_eq!(submit(c, 5).0, EMF_OK, "{}", last_error());
    // The host fails this apply: the node stops; the client gets no answer.
    let (st, _, _) = submit(c, u64::MAX);
    assert_ne!(st, EMF_OK);
    let (_, sum) = host.join().unwrap();
    assert_eq!(sum, 5);
    assert_eq!(ffi!(emf_raft_node_stop(n)), EMF_ERR_STOPPED);
    let msg = last_error();
    assert!(
        msg.contains("apply at index") && msg.contains("the counter cannot add MAX"),
        "{msg}"
    );
    assert_eq!(ffi!(emf_raft_node_free(n)), EMF_OK);
    assert_eq!(ffi!(emf_raft_client_free(c)), EMF_OK);
}

#[test]
#[cfg_attr(miri, ignore = "maps rings and files, runs nodes on threads")]
fn a_remote_node_without_answers_times_out_and_calls_are_checked() {
    let dir = tmp("remote-timeout");
    let one = [1u64];
    let (st, n) = start_remote(&dir.0, 1, &one, 50);
    assert_eq!(st, EMF_OK, "{}", last_error());
    let mut r = emf_raft_request_t::default();
    let mut len = 0usize;
    assert_eq!(
        ffi!(emf_raft_node_next_request(
            n,
            1,
            &mut r,
            null_mut(),
            0,
            &mut len
        )),
        EMF_ERR_TIMEOUT,
        "no request yet"
    );
    assert_eq!(
        ffi!(emf_raft_node_next_request(
            n,
            1,
            null_mut(),
            null_mut(),
            0,
            &mut len
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_node_next_request(
            n,
            1,
            &mut r,
            null_mut(),
            8,
            &mut len
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_node_reply(n, 99, 0, null(), 0)),
        crate::EMF_ERR_NOT_FOUND
    );
    // A submit the host never answers: the node gives up after 50 ms and stops.
    let client_thread = {
        let dir = dir.0.clone();
        std::thread::spawn(move || {
            let c = connect_quick(&dir, &[1], 1000);
            let st = submit(c, 1).0;
            assert_eq!(ffi!(emf_raft_client_free(c)), EMF_OK);
            st
        })
    };
    loop {
        let st = ffi!(emf_raft_node_next_request(
            n,
            100,
            &mut r,
            null_mut(),
            0,
            &mut len
        ));
        if st == EMF_ERR_CLOSED {
            break;
        }
        // The apply (8 bytes) does not fit; never answered.
        assert!(
            st == EMF_ERR_TIMEOUT || st == EMF_ERR_BUFFER_TOO_SMALL,
            "{st}"
        );
    }
    assert_eq!(r.kind, EMF_RAFT_REQ_APPLY);
    assert_eq!(ffi!(emf_raft_node_stop(n)), EMF_ERR_STOPPED);
    assert!(last_error().contains("did not answer"), "{}", last_error());
    assert_ne!(client_thread.join().unwrap(), EMF_OK);
    // A callback node makes no requests.
    let counter = Counter::default();
    let (st, cb) = start(&dir.0, 2, &[2], &counter);
    assert_eq!(st, EMF_OK, "{}", last_error());
    assert_eq!(
        ffi!(emf_raft_node_next_request(
            cb,
            1,
            &mut r,
            null_mut(),
            0,
            &mut len
        )),
        crate::EMF_ERR_UNSUPPORTED
    );
    assert_eq!(ffi!(emf_raft_node_free(cb)), EMF_OK);
    assert_eq!(ffi!(emf_raft_node_free(n)), EMF_OK);
}
