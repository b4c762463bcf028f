//! The runtime's C ABI driven the way C does: a service and agents of this process.

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use super::*;
use crate::codec::EMF_PRIORITY_NORMAL;
use crate::testutil::last_error;
use crate::{EMF_ERR_FULL, EMF_ERR_NULL_ARGUMENT, EMF_OK};

/// A scheduler directory removed when dropped.
struct Dir(PathBuf, CString);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("emf-capi-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let c = CString::new(p.to_str().unwrap()).unwrap();
        Dir(p, c)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_options() -> emf_service_options_t {
    let mut o = emf_service_options_t {
        ledger: 99,
        ..service_options_default()
    };
    // SAFETY: writable out-parameter.
    assert_eq!(unsafe { emf_service_options_default(&mut o) }, EMF_OK);
    assert_eq!(o.ledger, EMF_LEDGER_SHM);
    o.sched.shm_capacity = 1 << 20;
    o.reports_capacity = 1 << 16;
    o.load_slots = 16;
    o
}

fn start(dir: &Dir, o: &emf_service_options_t) -> *mut emf_service_t {
    let mut s = null_mut();
    // SAFETY: valid arguments.
    let st = unsafe { emf_service_start(o, dir.1.as_ptr(), &mut s) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    s
}

fn connect(dir: &Dir, id: &CStr, max: u32) -> *mut emf_agent_t {
    let mut a = null_mut();
    // SAFETY: valid arguments.
    let st =
        unsafe { emf_agent_connect(dir.1.as_ptr(), id.as_ptr(), c"echo".as_ptr(), max, &mut a) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    a
}

fn submit(s: *mut emf_service_t, payload: &[u8]) -> u64 {
    let mut id = 0;
    // SAFETY: a live handle and valid arguments.
    let st = unsafe {
        emf_service_submit(
            s,
            c"echo".as_ptr(),
            EMF_PRIORITY_NORMAL,
            payload.as_ptr(),
            payload.len(),
            &mut id,
        )
    };
    assert_eq!(st, EMF_OK, "{}", last_error());
    id
}

/// Receives one task (waiting up to 10 s): (id, attempt, payload).
fn recv(a: *mut emf_agent_t) -> (u64, u32, Vec<u8>) {
    let mut buf = vec![0u8; 1024];
    let (mut id, mut att, mut n) = (0, 0, 0);
    // SAFETY: a live handle, a 1024-byte buffer, writable outs.
    let st =
        unsafe { emf_agent_recv(a, 10_000, &mut id, &mut att, buf.as_mut_ptr(), 1024, &mut n) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    buf.truncate(n);
    (id, att, buf)
}

/// Waits up to 10 s for a task's outcome: (kind, bytes).
fn wait(s: *mut emf_service_t, id: u64) -> (u32, Vec<u8>) {
    let mut buf = vec![0u8; 1024];
    let (mut kind, mut n) = (0, 0);
    // SAFETY: a live handle, a 1024-byte buffer, writable outs.
    let st = unsafe { emf_service_wait(s, id, 10_000, &mut kind, buf.as_mut_ptr(), 1024, &mut n) };
    assert_eq!(st, EMF_OK, "{}", last_error());
    buf.truncate(n);
    (kind, buf)
}

fn stats(s: *mut emf_service_t) -> emf_service_stats_t {
    let mut st = emf_service_stats_t::default();
    // SAFETY: a live handle, a writable out.
    assert_eq!(unsafe { emf_service_stats(s, &mut st) }, EMF_OK);
    st
}

/// Waits (for a condition, up to 10 s) until the service registered `n` agents.
fn until_agents(s: *mut emf_service_t, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats(s).sched.agents != n {
        assert!(
            std::time::Instant::now() < deadline,
            "agents never registered"
        );
        std::thread::yield_now();
    }
}

#[test]
fn submit_recv_complete_wait_with_buffers_too_small_on_both_sides() {
    let dir = Dir::new("cycle");
    let s = start(&dir, &small_options());
    let a = connect(&dir, c"w1", 2);
    until_agents(s, 1);
    // SAFETY: live handles and valid arguments throughout; freed once at the end.
    unsafe {
        let id = submit(s, b"hello");
        // Too small a buffer: the task stays received and comes out again.
        let (mut tid, mut att, mut n) = (0, 0, 0);
        let mut small = [0u8; 2];
        let st = emf_agent_recv(a, 10_000, &mut tid, &mut att, small.as_mut_ptr(), 2, &mut n);
        assert_eq!(st, EMF_ERR_BUFFER_TOO_SMALL);
        assert_eq!((tid, att, n), (id, 1, 5));
        let mut held = 0;
        assert_eq!(emf_agent_held(a, &mut held), EMF_OK);
        assert_eq!(held, 1);
        assert_eq!(
            emf_agent_recv(a, 0, &mut tid, &mut att, null_mut(), 0, &mut n),
            EMF_ERR_BUFFER_TOO_SMALL
        );
        let (tid, att, payload) = recv(a);
        assert_eq!((tid, att, &payload[..]), (id, 1, &b"hello"[..]));
        // Nothing else: a timeout.
        let (mut x, mut y, mut z) = (0, 0, 0);
        assert_eq!(
            emf_agent_recv(a, 0, &mut x, &mut y, null_mut(), 0, &mut z),
            EMF_ERR_TIMEOUT
        );
        assert_eq!(emf_agent_heartbeat(a), EMF_OK);
        // Answering an attempt not held is NOT_FOUND.
        assert_eq!(
            emf_agent_complete(a, tid, att + 1, null(), 0),
            EMF_ERR_NOT_FOUND
        );
        assert_eq!(
            emf_agent_complete(a, tid, att, b"HELLO!".as_ptr(), 6),
            EMF_OK
        );
        assert_eq!(
            emf_agent_complete(a, tid, att, b"again".as_ptr(), 5),
            EMF_ERR_NOT_FOUND
        );
        assert_eq!(emf_agent_held(a, &mut held), EMF_OK);
        assert_eq!(held, 0);
        // The outcome, first into a buffer too small: kept for the retry.
        let (mut kind, mut n) = (0, 0);
        let mut b3 = [0u8; 3];
        assert_eq!(
            emf_service_wait(s, id, 10_000, &mut kind, b3.as_mut_ptr(), 3, &mut n),
            EMF_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!((kind, n), (EMF_OUTCOME_DONE, 6));
        assert_eq!(wait(s, id), (EMF_OUTCOME_DONE, b"HELLO!".to_vec()));
        // Taken: a second wait does not find it.
        assert_eq!(
            emf_service_wait(s, id, 0, &mut kind, null_mut(), 0, &mut n),
            EMF_ERR_NOT_FOUND
        );
        // A task nobody answers yet: a timeout, then its outcome.
        let id2 = submit(s, b"");
        assert_eq!(
            emf_service_wait(s, id2, 0, &mut kind, null_mut(), 0, &mut n),
            EMF_ERR_TIMEOUT
        );
        let (t2, a2, p2) = recv(a);
        assert_eq!((t2, p2.len()), (id2, 0));
        assert_eq!(emf_agent_complete(a, t2, a2, null(), 0), EMF_OK);
        assert_eq!(wait(s, id2), (EMF_OUTCOME_DONE, Vec::new()));
        let st = stats(s);
        assert_eq!((st.sched.completed, st.inboxes), (2, 1));
        assert_eq!(emf_agent_free(a), EMF_OK);
        assert_eq!(emf_agent_free(a), EMF_ERR_INVALID_ARGUMENT);
        assert_eq!(emf_service_free(s), EMF_OK);
        assert_eq!(emf_service_free(s), EMF_ERR_INVALID_ARGUMENT);
    }
}

#[test]
fn a_failed_task_is_dead_lettered_and_a_left_agents_task_goes_to_another() {
    let dir = Dir::new("fail");
    let mut o = small_options();
    o.sched.max_attempts = 2;
    o.ledger = EMF_LEDGER_MEMORY;
    let s = start(&dir, &o);
    let a = connect(&dir, c"w1", 1);
    until_agents(s, 1);
    // SAFETY: live handles and valid arguments throughout; freed once at the end.
    unsafe {
        let id = submit(s, b"x");
        let (t, att, _) = recv(a);
        assert_eq!(emf_agent_fail(a, t, att, null()), EMF_OK);
        // Delivered again (the only agent), failed again: the second failure is the last.
        let (t, att, p) = recv(a);
        assert_eq!((t, att, &p[..]), (id, 2, &b"x"[..]));
        assert_eq!(emf_agent_fail(a, t, att, c"cannot".as_ptr()), EMF_OK);
        let (kind, why) = wait(s, id);
        assert_eq!(kind, EMF_OUTCOME_DEAD_LETTER);
        let why = String::from_utf8(why).unwrap();
        assert!(why.ends_with("cannot"), "{why}");
        assert_eq!(emf_agent_fail(a, t, att, null()), EMF_ERR_NOT_FOUND);
        // The only agent receives a task; a second agent joins; the first leaves holding the
        // task: it goes to the second.
        let id = submit(s, b"y");
        let (t, att, _) = recv(a);
        assert_eq!(t, id);
        let b = connect(&dir, c"w2", 1);
        until_agents(s, 2);
        assert_eq!(emf_agent_free(a), EMF_OK);
        let (t2, att2, p) = recv(b);
        assert_eq!((t2, &p[..]), (id, &b"y"[..]));
        assert!(att2 > att);
        assert_eq!(emf_agent_complete(b, t2, att2, b"Y".as_ptr(), 1), EMF_OK);
        assert_eq!(wait(s, id), (EMF_OUTCOME_DONE, b"Y".to_vec()));
        assert_eq!(emf_agent_free(b), EMF_OK);
        assert_eq!(emf_service_free(s), EMF_OK);
    }
}

#[test]
fn back_pressure_orphans_and_many_waiting_threads() {
    let dir = Dir::new("orph");
    let mut o = small_options();
    o.sched.max_queued = 2;
    let s = start(&dir, &o);
    // SAFETY: live handles and valid arguments throughout; freed once at the end.
    unsafe {
        let a1 = submit(s, b"1");
        let a2 = submit(s, b"2");
        let mut id = 7;
        assert_eq!(
            emf_service_submit(s, c"echo".as_ptr(), 2, b"3".as_ptr(), 1, &mut id),
            EMF_ERR_FULL
        );
        assert_eq!(id, 7);
        // No orphan yet.
        let (mut oid, mut kind, mut n) = (0, 0, 0);
        assert_eq!(
            emf_service_take_orphan(s, &mut oid, &mut kind, null_mut(), 0, &mut n),
            EMF_ERR_EMPTY
        );
        // The service stops with two tasks accepted; its successor recovers them.
        assert_eq!(emf_service_free(s), EMF_OK);
        let s = start(&dir, &o);
        let w = connect(&dir, c"w1", 4);
        for _ in 0..2 {
            let (t, att, p) = recv(w);
            let r: Vec<u8> = [b"r".as_slice(), &p].concat();
            assert_eq!(emf_agent_complete(w, t, att, r.as_ptr(), r.len()), EMF_OK);
        }
        // Both outcomes are orphans (no future of this handle waits for them).
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "orphans never came");
            let mut b1 = [0u8; 1];
            match emf_service_take_orphan(s, &mut oid, &mut kind, b1.as_mut_ptr(), 1, &mut n) {
                EMF_ERR_EMPTY => std::thread::yield_now(),
                EMF_ERR_BUFFER_TOO_SMALL => {
                    assert_eq!(n, 2);
                    let mut b2 = [0u8; 2];
                    let mut oid2 = 0;
                    let st = emf_service_take_orphan(
                        s,
                        &mut oid2,
                        &mut kind,
                        b2.as_mut_ptr(),
                        2,
                        &mut n,
                    );
                    assert_eq!(st, EMF_OK);
                    assert_eq!((oid2, kind), (oid, EMF_OUTCOME_DONE));
                    got.push((oid, b2.to_vec()));
                }
                st => panic!("take_orphan gave {st}: {}", last_error()),
            }
        }
        got.sort();
        assert_eq!(got, vec![(a1, b"r1".to_vec()), (a2, b"r2".to_vec())]);
        // Threads waiting at once, each for its own task; one more thread waiting for a task
        // already waited for is BUSY.
        let ids: Vec<u64> = (0..2).map(|i| submit(s, &[i])).collect();
        let addr = s.addr();
        let waiters: Vec<_> = ids
            .iter()
            .map(|&id| {
                std::thread::spawn(move || {
                    let s = std::ptr::without_provenance_mut::<emf_service_t>(addr);
                    wait(s, id)
                })
            })
            .collect();
        for _ in 0..2 {
            let (t, att, p) = recv(w);
            assert_eq!(emf_agent_complete(w, t, att, p.as_ptr(), p.len()), EMF_OK);
        }
        for (i, h) in waiters.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), (EMF_OUTCOME_DONE, vec![i as u8]));
        }
        assert_eq!(emf_agent_free(w), EMF_OK);
        assert_eq!(emf_service_free(s), EMF_OK);
    }
}

#[test]
fn a_second_waiter_is_busy_and_an_outcome_too_large_is_kept() {
    let dir = Dir::new("busy");
    let mut o = small_options();
    o.ledger = EMF_LEDGER_MEMORY;
    let s = start(&dir, &o);
    let id = submit(s, b"z");
    let addr = s.addr();
    let waiter = std::thread::spawn(move || {
        let s = std::ptr::without_provenance_mut::<emf_service_t>(addr);
        let (mut kind, mut n) = (0, 0);
        loop {
            // SAFETY: the handle outlives this thread (joined before the free). BUSY only
            // while the main thread's zero-timeout probe holds the slot: try again.
            let st = unsafe { emf_service_wait(s, id, 60_000, &mut kind, null_mut(), 0, &mut n) };
            if st != EMF_ERR_BUSY {
                return (st, kind, n);
            }
        }
    });
    // SAFETY: a live handle and writable outs.
    unsafe {
        let (mut kind, mut n) = (0, 0);
        // Until the waiter is inside, a probe times out; then it is BUSY.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match emf_service_wait(s, id, 0, &mut kind, null_mut(), 0, &mut n) {
                EMF_ERR_BUSY => break,
                EMF_ERR_TIMEOUT => std::thread::yield_now(),
                st => panic!("wait gave {st}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never waited"
            );
        }
    }
    let a = connect(&dir, c"w", 1);
    let (t, att, _) = recv(a);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(emf_agent_complete(a, t, att, b"Z".as_ptr(), 1), EMF_OK);
    }
    // The waiter's buffer was empty: too small, the kind and length told, the outcome kept.
    assert_eq!(
        waiter.join().unwrap(),
        (EMF_ERR_BUFFER_TOO_SMALL, EMF_OUTCOME_DONE, 1)
    );
    assert_eq!(wait(s, id), (EMF_OUTCOME_DONE, b"Z".to_vec()));
    // SAFETY: live handles, no other user.
    unsafe {
        assert_eq!(emf_agent_free(a), EMF_OK);
        assert_eq!(emf_service_free(s), EMF_OK);
    }
}

#[test]
fn null_bad_and_freed_handles_answer_with_a_status() {
    let dir = Dir::new("null");
    let mut o = small_options();
    o.ledger = EMF_LEDGER_MEMORY;
    let nul = null();
    // SAFETY: every pointer is NULL, valid, or a handle token the slab checks.
    unsafe {
        assert_eq!(
            emf_service_options_default(null_mut()),
            EMF_ERR_NULL_ARGUMENT
        );
        let mut s = null_mut();
        assert_eq!(
            emf_service_start(&o, dir.1.as_ptr(), null_mut()),
            EMF_ERR_NULL_ARGUMENT
        );
        for tweak in [
            (|o: &mut emf_service_options_t| o.ledger = 3) as fn(&mut emf_service_options_t),
            |o| o.ledger_path = c"/tmp/x".as_ptr(),
            |o| {
                o.ledger = EMF_LEDGER_FILE;
                o.ledger_path = null();
            },
            |o| o.sched.max_queued = 0,
            |o| o.batch = 0,
            |o| o.liveness_interval_us = 0,
        ] {
            let mut bad = o;
            tweak(&mut bad);
            let st = emf_service_start(&bad, dir.1.as_ptr(), &mut s);
            assert!(
                st == EMF_ERR_INVALID_ARGUMENT || st == EMF_ERR_NULL_ARGUMENT,
                "{st}: {}",
                last_error()
            );
            assert!(s.is_null());
        }
        assert_eq!(
            emf_service_start(&o, c"\xff".as_ptr(), &mut s),
            EMF_ERR_INVALID_ARGUMENT
        );
        // No dispatcher in a directory: connect is NOT_FOUND.
        let empty = Dir::new("none");
        let mut a = null_mut();
        assert_eq!(
            emf_agent_connect(empty.1.as_ptr(), c"w".as_ptr(), c"t".as_ptr(), 1, &mut a),
            EMF_ERR_NOT_FOUND
        );
        let s = start(&dir, &o);
        assert_eq!(
            emf_agent_connect(dir.1.as_ptr(), nul, c"t".as_ptr(), 1, &mut a),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_agent_connect(dir.1.as_ptr(), c".bad".as_ptr(), c"t".as_ptr(), 1, &mut a),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            emf_agent_connect(dir.1.as_ptr(), c"w".as_ptr(), nul, 1, &mut a),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_agent_connect(dir.1.as_ptr(), c"w".as_ptr(), c"t".as_ptr(), 1, null_mut()),
            EMF_ERR_NULL_ARGUMENT
        );
        let a = connect(&dir, c"w", 1);
        // The same id again while it lives: BUSY.
        let mut a2 = null_mut();
        assert_eq!(
            emf_agent_connect(dir.1.as_ptr(), c"w".as_ptr(), c"echo".as_ptr(), 1, &mut a2),
            EMF_ERR_BUSY
        );
        let mut id = 0;
        let (mut kind, mut n, mut att) = (0u32, 0usize, 0u32);
        let mut buf = [0u8; 4];
        assert_eq!(
            emf_service_submit(s, nul, 2, null(), 0, &mut id),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_submit(s, c"t".as_ptr(), 4, null(), 0, &mut id),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            emf_service_submit(s, c"t".as_ptr(), 2, null(), 1, &mut id),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_submit(s, c"t".as_ptr(), 2, null(), 0, null_mut()),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_wait(s, 1, 0, null_mut(), null_mut(), 0, &mut n),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_wait(s, 1, 0, &mut kind, null_mut(), 4, &mut n),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_wait(s, 424242, 0, &mut kind, null_mut(), 0, &mut n),
            EMF_ERR_NOT_FOUND
        );
        assert_eq!(
            emf_service_take_orphan(s, null_mut(), &mut kind, null_mut(), 0, &mut n),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(emf_service_stats(s, null_mut()), EMF_ERR_NULL_ARGUMENT);
        assert_eq!(
            emf_agent_recv(a, 0, null_mut(), &mut att, null_mut(), 0, &mut n),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_agent_recv(a, 0, &mut id, &mut att, null_mut(), 4, &mut n),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_agent_complete(a, 1, 1, null(), 3),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_agent_fail(a, 1, 1, c"\xff".as_ptr()),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(emf_agent_held(a, null_mut()), EMF_ERR_NULL_ARGUMENT);
        // A handle of the other kind is refused.
        assert_eq!(
            emf_agent_heartbeat(s.cast::<emf_agent_t>()),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            emf_service_stats(
                a.cast::<emf_service_t>(),
                &mut emf_service_stats_t::default()
            ),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(emf_service_free(a.cast()), EMF_ERR_INVALID_ARGUMENT);
        // NULL, then freed handles: every function answers with a status.
        for (sh, ah) in [(null_mut(), null_mut()), (s, a)] {
            let want = if sh.is_null() {
                EMF_ERR_NULL_ARGUMENT
            } else {
                assert_eq!(emf_agent_free(a), EMF_OK);
                assert_eq!(emf_service_free(s), EMF_OK);
                EMF_ERR_INVALID_ARGUMENT
            };
            let t = c"t".as_ptr();
            assert_eq!(emf_service_submit(sh, t, 2, null(), 0, &mut id), want);
            assert_eq!(
                emf_service_wait(sh, 1, 0, &mut kind, buf.as_mut_ptr(), 4, &mut n),
                want
            );
            assert_eq!(
                emf_service_take_orphan(sh, &mut id, &mut kind, buf.as_mut_ptr(), 4, &mut n),
                want
            );
            assert_eq!(
                emf_service_stats(sh, &mut emf_service_stats_t::default()),
                want
            );
            assert_eq!(
                emf_agent_recv(ah, 0, &mut id, &mut att, buf.as_mut_ptr(), 4, &mut n),
                want
            );
            assert_eq!(emf_agent_complete(ah, 1, 1, null(), 0), want);
            assert_eq!(emf_agent_fail(ah, 1, 1, nul), want);
            assert_eq!(emf_agent_heartbeat(ah), want);
            assert_eq!(emf_agent_held(ah, &mut n), want);
        }
        assert_eq!(emf_agent_free(null_mut()), EMF_OK);
        assert_eq!(emf_service_free(null_mut()), EMF_OK);
        assert_eq!(emf_agent_free(a), EMF_ERR_INVALID_ARGUMENT);
    }
}

#[test]
fn agents_are_looked_up_in_the_registry() {
    let dir = Dir::new("lookup");
    let s = start(&dir, &small_options());
    let a = connect(&dir, c"finder", 3);
    until_agents(s, 1);
    let mut ty = [0 as c_char; 16];
    let (mut len, mut max, mut pid) = (0usize, 0u32, 0u32);
    // SAFETY: a live handle, a 16-byte buffer and writable outputs.
    let st = unsafe {
        emf_service_lookup_agent(
            s,
            c"finder".as_ptr(),
            ty.as_mut_ptr(),
            ty.len(),
            &mut len,
            &mut max,
            &mut pid,
        )
    };
    assert_eq!(st, EMF_OK, "{}", last_error());
    // SAFETY: NUL-terminated by the call.
    assert_eq!(unsafe { CStr::from_ptr(ty.as_ptr()) }, c"echo");
    assert_eq!((len, max, pid), (4, 3, std::process::id()));
    // Too small a buffer: the length, nothing copied.
    let mut tiny = [7 as c_char; 4];
    // SAFETY: as above, with a 4-byte buffer.
    let st = unsafe {
        emf_service_lookup_agent(
            s,
            c"finder".as_ptr(),
            tiny.as_mut_ptr(),
            tiny.len(),
            &mut len,
            &mut max,
            &mut pid,
        )
    };
    assert_eq!(st, EMF_ERR_BUFFER_TOO_SMALL);
    assert_eq!((len, tiny[0]), (4, 7));
    // SAFETY: as above.
    let st = unsafe {
        emf_service_lookup_agent(
            s,
            c"nobody".as_ptr(),
            ty.as_mut_ptr(),
            ty.len(),
            &mut len,
            &mut max,
            &mut pid,
        )
    };
    assert_eq!(st, crate::EMF_ERR_NOT_FOUND);
    // SAFETY: NULL outputs and a bad name answer with a status.
    unsafe {
        assert_eq!(
            emf_service_lookup_agent(
                s,
                c"finder".as_ptr(),
                null_mut(),
                0,
                null_mut(),
                &mut max,
                &mut pid
            ),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            emf_service_lookup_agent(
                s,
                c"..".as_ptr(),
                null_mut(),
                0,
                &mut len,
                &mut max,
                &mut pid
            ),
            EMF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(emf_agent_free(a), EMF_OK);
        assert_eq!(emf_service_free(s), EMF_OK);
    }
}
