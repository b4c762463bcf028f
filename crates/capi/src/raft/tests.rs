//! Argument checks of the Raft C ABI: what is refused before any process starts. (A cluster
//! of node processes is driven from C: `c-examples/raft.c`.)

use std::ffi::CString;
use std::ptr::{null, null_mut};

use super::*;
use crate::{EMF_ERR_IO, EMF_ERR_NULL_ARGUMENT, EMF_OK};

use crate::testutil::{ffi, last_error};

#[test]
fn defaults_are_the_engines() {
    let mut o = cluster_options_default();
    o.tick_ms = 0;
    // SAFETY: writable out-parameter.
    assert_eq!(unsafe { emf_raft_cluster_options_default(&mut o) }, EMF_OK);
    let d = ClusterOptions::default();
    assert_eq!(o.tick_ms, d.tick_ms);
    assert_eq!(o.election_tick as usize, d.election_tick);
    assert!(o.bin.is_null());
    assert_eq!(cluster_options_of(&o).unwrap(), d);
    let mut c = client_options_default();
    c.timeout_ms = 0;
    // SAFETY: writable out-parameter.
    assert_eq!(unsafe { emf_raft_client_options_default(&mut c) }, EMF_OK);
    assert_eq!(client_options_of(&c).unwrap(), ClientOptions::default());
    // SAFETY: NULL is refused.
    let st = unsafe { emf_raft_cluster_options_default(null_mut()) };
    assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
}

#[test]
fn start_refuses_bad_arguments_before_starting_anything() {
    let dir = CString::new(
        std::env::temp_dir()
            .join(format!("emf-capi-raft-{}", std::process::id()))
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let mut out = null_mut();
    let mut o = cluster_options_default();
    let cases: [(u32, *const c_char, emf_status_t, &str); 4] = [
        (0, dir.as_ptr(), EMF_ERR_INVALID_ARGUMENT, "at least 1"),
        (65, dir.as_ptr(), EMF_ERR_TOO_LARGE, "at most 64"),
        (3, null(), EMF_ERR_NULL_ARGUMENT, "`dir`"),
        (3, c"".as_ptr(), EMF_ERR_INVALID_ARGUMENT, "empty"),
    ];
    for (n, d, want, text) in cases {
        // SAFETY: valid or NULL pointers.
        let st = unsafe { emf_raft_cluster_start(n, d, &o, &mut out) };
        assert_eq!(st, want, "n {n}: {}", last_error());
        assert!(last_error().contains(text), "{}", last_error());
        assert!(out.is_null());
    }
    // SAFETY: NULL out is refused.
    let st = unsafe { emf_raft_cluster_start(3, dir.as_ptr(), &o, null_mut()) };
    assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
    for bad in [
        |o: &mut emf_raft_cluster_options_t| o.tick_ms = 0,
        |o: &mut emf_raft_cluster_options_t| o.election_tick = 1,
        |o: &mut emf_raft_cluster_options_t| o.start_timeout_ms = 0,
        |o: &mut emf_raft_cluster_options_t| o.client.timeout_ms = 0,
        |o: &mut emf_raft_cluster_options_t| o.client.attempt_timeout_ms = 0,
    ] {
        let mut b = o;
        bad(&mut b);
        // SAFETY: valid pointers.
        let st = unsafe { emf_raft_cluster_start(3, dir.as_ptr(), &b, &mut out) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT, "{}", last_error());
    }
    // A binary that does not exist: an I/O error naming the way out, no node left behind.
    o.bin = c"/nonexistent/erlmcp-flow".as_ptr();
    // SAFETY: valid pointers.
    let st = unsafe { emf_raft_cluster_start(1, dir.as_ptr(), &o, &mut out) };
    assert_eq!(st, EMF_ERR_IO, "{}", last_error());
    assert!(last_error().contains("EMF_BIN"), "{}", last_error());
    let _ = std::fs::remove_dir_all(dir.to_str().unwrap());
}

#[test]
fn calls_refuse_null_garbage_and_freed_handles() {
    let garbage = std::ptr::without_provenance_mut::<emf_raft_cluster_t>(0xdead_0000);
    let mut i = 0u64;
    let mut n = 0usize;
    assert_eq!(
        ffi!(emf_raft_cluster_append_entry(
            garbage,
            c"x".as_ptr().cast(),
            1,
            &mut i
        )),
        EMF_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_cluster_append_entry(null_mut(), null(), 0, &mut i)),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_cluster_submit(
            garbage,
            null(),
            0,
            &mut i,
            null_mut(),
            0,
            &mut n
        )),
        EMF_ERR_INVALID_ARGUMENT
    );
    // A NULL buffer with room claimed, a NULL out-pointer: refused first.
    assert_eq!(
        ffi!(emf_raft_cluster_submit(
            garbage,
            null(),
            0,
            &mut i,
            null_mut(),
            8,
            &mut n
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_cluster_submit(
            garbage,
            null(),
            0,
            null_mut(),
            null_mut(),
            0,
            &mut n
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(ffi!(emf_raft_cluster_free(null_mut())), EMF_OK);
    assert_eq!(
        ffi!(emf_raft_cluster_free(garbage)),
        EMF_ERR_INVALID_ARGUMENT
    );
    assert_eq!(ffi!(emf_raft_client_free(null_mut())), EMF_OK);
    assert_eq!(
        ffi!(emf_raft_cluster_leader(garbage, null_mut(), null_mut())),
        EMF_ERR_NULL_ARGUMENT
    );
}

#[test]
fn client_connect_checks_its_arguments() {
    let dir = std::env::temp_dir().join(format!("emf-capi-raftc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = CString::new(dir.to_str().unwrap()).unwrap();
    let mut out = null_mut();
    let nodes = [1u64, 2, 3];
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        nodes.as_ptr(),
        0,
        null(),
        &mut out
    ));
    assert_eq!(st, EMF_ERR_INVALID_ARGUMENT, "{}", last_error());
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        null(),
        3,
        null(),
        &mut out
    ));
    assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        nodes.as_ptr(),
        65,
        null(),
        &mut out
    ));
    assert_eq!(st, EMF_ERR_TOO_LARGE);
    let zero = [0u64, 1];
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        zero.as_ptr(),
        2,
        null(),
        &mut out
    ));
    assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
    let bad = emf_raft_client_options_t {
        timeout_ms: 0,
        attempt_timeout_ms: 1,
    };
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        nodes.as_ptr(),
        3,
        &bad,
        &mut out
    ));
    assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
    // No node runs: the client opens its own inbox and reaches nobody — a timeout, not
    // a hang.
    let o = emf_raft_client_options_t {
        timeout_ms: 100,
        attempt_timeout_ms: 20,
    };
    let st = ffi!(emf_raft_client_connect(
        d.as_ptr(),
        nodes.as_ptr(),
        3,
        &o,
        &mut out
    ));
    assert_eq!(st, EMF_OK, "{}", last_error());
    let mut leader = 0u64;
    let st = ffi!(emf_raft_client_leader(out, &mut leader, null_mut()));
    assert_eq!(st, crate::EMF_ERR_TIMEOUT, "{}", last_error());
    let mut len = 0usize;
    let mut buf = [0u8; 4];
    let st = ffi!(emf_raft_client_stats(
        out,
        buf.as_mut_ptr(),
        buf.len(),
        &mut len
    ));
    assert_eq!(st, EMF_ERR_BUFFER_TOO_SMALL);
    let mut text = vec![0u8; len];
    let st = ffi!(emf_raft_client_result(
        out,
        text.as_mut_ptr(),
        text.len(),
        &mut len
    ));
    assert_eq!(st, EMF_OK);
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("node=1 error=EMF_ERR_CLOSED "), "{text}");
    // Nothing kept any more.
    let st = ffi!(emf_raft_client_result(out, null_mut(), 0, &mut len));
    assert_eq!((st, len), (EMF_OK, 0));
    assert_eq!(ffi!(emf_raft_client_free(out)), EMF_OK);
    assert_eq!(ffi!(emf_raft_client_free(out)), EMF_ERR_INVALID_ARGUMENT);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_transfer_and_membership_refuse_bad_arguments_before_the_handle() {
    let garbage = std::ptr::without_provenance_mut::<emf_raft_cluster_t>(0xdead_0000);
    let cgarbage = std::ptr::without_provenance_mut::<emf_raft_client_t>(0xdead_0000);
    let (mut i, mut n, mut m) = (0u64, 0usize, 0usize);
    // Read: NULL out_len, NULL buffer with room claimed, NULL query with a length.
    assert_eq!(
        ffi!(emf_raft_cluster_read(
            garbage,
            c"q".as_ptr().cast(),
            1,
            &mut i,
            null_mut(),
            0,
            null_mut()
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_client_read(
            cgarbage,
            null(),
            0,
            null_mut(),
            null_mut(),
            8,
            &mut n
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_cluster_read(
            garbage,
            null(),
            3,
            null_mut(),
            null_mut(),
            0,
            &mut n
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_cluster_read(
            garbage,
            null(),
            0,
            null_mut(),
            null_mut(),
            0,
            &mut n
        )),
        EMF_ERR_INVALID_ARGUMENT,
        "a garbage handle"
    );
    // Transfer: node 0 is refused with a reason; a garbage handle after that.
    assert_eq!(
        ffi!(emf_raft_client_transfer_leader(cgarbage, 0, null_mut())),
        EMF_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("node 0"), "{}", last_error());
    assert_eq!(
        ffi!(emf_raft_cluster_transfer_leader(garbage, 2, &mut i)),
        EMF_ERR_INVALID_ARGUMENT
    );
    // Membership changes: none, too many, an unknown kind, NULL with a count.
    let ch = |node, kind| emf_raft_member_change_t { node, kind };
    let many = vec![ch(1, EMF_RAFT_REMOVE); EMF_RAFT_MAX_CHANGES + 1];
    for (changes, what) in [
        (&[][..], "not 0"),
        (&many[..], "not 65"),
        (
            &[ch(2, EMF_RAFT_ADD_VOTER), ch(3, 0)][..],
            "change 1 has kind 0",
        ),
    ] {
        let st = ffi!(emf_raft_cluster_change_membership(
            garbage,
            changes.as_ptr(),
            changes.len(),
            null_mut()
        ));
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains(what), "{what}: {}", last_error());
    }
    assert_eq!(
        ffi!(emf_raft_client_change_membership(
            cgarbage,
            null(),
            1,
            null_mut()
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    // Membership: the counts are required; a NULL id array with room claimed is refused.
    assert_eq!(
        ffi!(emf_raft_cluster_membership(
            garbage,
            null_mut(),
            0,
            null_mut(),
            &mut m,
            null_mut()
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_client_membership(
            cgarbage,
            null_mut(),
            4,
            &mut n,
            &mut m,
            null_mut()
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(
        ffi!(emf_raft_client_membership(
            cgarbage,
            null_mut(),
            0,
            &mut n,
            &mut m,
            null_mut()
        )),
        EMF_ERR_INVALID_ARGUMENT
    );
}
