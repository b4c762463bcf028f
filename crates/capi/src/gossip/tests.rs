//! The gossip C ABI: two members over rings spread a put and a delete and report them as
//! events; every entry point refuses bad arguments with a status and a message.

use std::ffi::CString;
use std::time::{Duration, Instant};

use super::*;
use crate::testutil::{ffi, last_error};
use crate::{emf_buf_free, EMF_ERR_NULL_ARGUMENT, EMF_OK};

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("emf-capi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Member `id` of {1, 2} over rings in `dir`, fast timings.
fn start(dir: &CString, id: u64) -> *mut emf_gossip_t {
    let mut o = options_default();
    ffi!(emf_gossip_options_default(&mut o));
    let peers = [3 - id];
    let seeds = [1u64];
    o.id = id;
    o.ring_dir = dir.as_ptr();
    o.inbox_capacity = 1 << 16;
    o.peers = peers.as_ptr();
    o.n_peers = 1;
    if id == 2 {
        o.seeds = seeds.as_ptr();
        o.n_seeds = 1;
    }
    o.gossip_interval_us = 20_000;
    o.probe_period_us = 100_000;
    o.suspicion_timeout_us = 1_000_000;
    o.generation = 1;
    let mut g = std::ptr::null_mut();
    assert_eq!(
        ffi!(emf_gossip_start(&o, &mut g)),
        EMF_OK,
        "{}",
        last_error()
    );
    g
}

fn get(g: *mut emf_gossip_t, key: &[u8]) -> Option<Vec<u8>> {
    let mut b = emf_buf_t::EMPTY;
    let st = ffi!(emf_gossip_get(g, key.as_ptr(), key.len(), &mut b));
    if st == EMF_ERR_NOT_FOUND {
        assert!(b.data.is_null());
        return None;
    }
    assert_eq!(st, EMF_OK, "{}", last_error());
    // SAFETY: a buffer of the library, `len` bytes.
    let v = unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec();
    assert_eq!(ffi!(emf_buf_free(&mut b)), EMF_OK);
    Some(v)
}

/// The next key event of `g` within 5 s: (key, value or None for a delete).
fn next_key_event(g: *mut emf_gossip_t) -> (Vec<u8>, Option<Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no key event");
        let mut ev = event_struct(MeshEvent::MemberUp(NodeId(0)));
        let st = ffi!(emf_gossip_next_event(g, 100, &mut ev));
        if st == EMF_ERR_TIMEOUT {
            continue;
        }
        assert_eq!(st, EMF_OK, "{}", last_error());
        let mut key = std::mem::replace(&mut ev.key, emf_buf_t::EMPTY);
        let mut value = std::mem::replace(&mut ev.value, emf_buf_t::EMPTY);
        let read = |b: &emf_buf_t| {
            if b.data.is_null() {
                Vec::new()
            } else {
                // SAFETY: a buffer of the library, `len` bytes.
                unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec()
            }
        };
        let (k, v) = (read(&key), read(&value));
        assert_eq!(ffi!(emf_buf_free(&mut key)), EMF_OK);
        assert_eq!(ffi!(emf_buf_free(&mut value)), EMF_OK);
        if ev.kind == EMF_GOSSIP_EVENT_KEY_CHANGED {
            assert_eq!(ev.version_origin, 1);
            return (k, (ev.deleted == 0).then_some(v));
        }
        assert!(k.is_empty() && v.is_empty());
    }
}

#[test]
fn two_members_spread_a_put_and_a_delete() {
    let dir = Dir::new("gossip");
    let d = CString::new(dir.0.to_str().unwrap()).unwrap();
    let a = start(&d, 1);
    let b = start(&d, 2);
    // They find each other.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ms = [emf_gossip_member_t::default(); 4];
        let mut n = 0;
        assert_eq!(
            ffi!(emf_gossip_members(a, ms.as_mut_ptr(), 4, &mut n)),
            EMF_OK
        );
        if n == 1 && ms[0].id == 2 && ms[0].state == EMF_GOSSIP_ALIVE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 2 not seen: {:?}",
            &ms[..n]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut counter = 0;
    assert_eq!(
        ffi!(emf_gossip_put(
            a,
            b"k".as_ptr(),
            1,
            b"v1".as_ptr(),
            2,
            &mut counter
        )),
        EMF_OK
    );
    assert!(counter > 0);
    let mut rounds = 0;
    assert_eq!(ffi!(emf_gossip_round(a, &mut rounds)), EMF_OK);
    assert!(rounds > 0);
    assert_eq!(next_key_event(b), (b"k".to_vec(), Some(b"v1".to_vec())));
    assert_eq!(get(b, b"k"), Some(b"v1".to_vec()));
    let mut deleted = 9;
    assert_eq!(
        ffi!(emf_gossip_delete(a, b"k".as_ptr(), 1, &mut deleted)),
        EMF_OK
    );
    assert_eq!(deleted, 1);
    assert_eq!(
        ffi!(emf_gossip_delete(a, b"k".as_ptr(), 1, &mut deleted)),
        EMF_OK
    );
    assert_eq!(deleted, 0);
    assert_eq!(next_key_event(b), (b"k".to_vec(), None));
    assert_eq!(get(b, b"k"), None);
    let mut s = emf_gossip_stats_t::default();
    assert_eq!(ffi!(emf_gossip_stats(a, &mut s)), EMF_OK);
    assert_eq!(s.local_writes, 2);
    assert!(s.rounds > 0 && s.frames_out > 0 && s.frames_in > 0, "{s:?}");
    assert_eq!(s.rejected, 0);
    let mut port = 7;
    assert_eq!(ffi!(emf_gossip_port(a, &mut port)), EMF_OK);
    assert_eq!(port, 0);
    // b leaves; a sees it down.
    assert_eq!(ffi!(emf_gossip_leave(b)), EMF_OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ev = event_struct(MeshEvent::MemberUp(NodeId(0)));
        if ffi!(emf_gossip_next_event(a, 100, &mut ev)) == EMF_OK
            && ev.kind == EMF_GOSSIP_EVENT_MEMBER_DOWN
        {
            assert_eq!(ev.member, 2);
            break;
        }
        assert!(Instant::now() < deadline, "member 2 not reported down");
    }
    assert_eq!(ffi!(emf_gossip_free(b)), EMF_OK);
    assert_ne!(ffi!(emf_gossip_free(b)), EMF_OK, "a double free is refused");
    assert_eq!(ffi!(emf_gossip_free(a)), EMF_OK);
}

#[test]
fn bad_arguments_are_refused() {
    let mut g = std::ptr::null_mut();
    assert_eq!(
        ffi!(emf_gossip_start(std::ptr::null(), &mut g)),
        EMF_ERR_NULL_ARGUMENT
    );
    let mut o = options_default();
    assert_eq!(
        ffi!(emf_gossip_start(&o, std::ptr::null_mut())),
        EMF_ERR_NULL_ARGUMENT
    );
    o.id = 1;
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_INVALID_ARGUMENT);
    assert!(
        last_error().contains("neither ring_dir nor listen"),
        "{}",
        last_error()
    );
    let listen = CString::new("not an address").unwrap();
    o.listen = listen.as_ptr();
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_INVALID_ARGUMENT);
    let listen = CString::new("127.0.0.1:0").unwrap();
    o.listen = listen.as_ptr();
    let peers = [2u64];
    o.peers = peers.as_ptr();
    o.n_peers = 1;
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_NULL_ARGUMENT);
    o.n_peers = EMF_GOSSIP_MAX_PEERS + 1;
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_TOO_LARGE);
    o.n_peers = 0;
    o.gossip_interval_us = 0;
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_INVALID_ARGUMENT);
    o.gossip_interval_us = 10_000;
    o.id = 0;
    assert_eq!(ffi!(emf_gossip_start(&o, &mut g)), EMF_ERR_INVALID_ARGUMENT);
    assert!(g.is_null());

    // A lone TCP member: calls on it with bad arguments.
    o.id = 1;
    assert_eq!(
        ffi!(emf_gossip_start(&o, &mut g)),
        EMF_OK,
        "{}",
        last_error()
    );
    let mut port = 0;
    assert_eq!(ffi!(emf_gossip_port(g, &mut port)), EMF_OK);
    assert_ne!(port, 0);
    let mut n = 0;
    assert_eq!(
        ffi!(emf_gossip_members(g, std::ptr::null_mut(), 0, &mut n)),
        EMF_OK
    );
    assert_eq!(n, 0);
    assert_eq!(
        ffi!(emf_gossip_put(
            g,
            std::ptr::null(),
            1,
            b"v".as_ptr(),
            1,
            std::ptr::null_mut()
        )),
        EMF_ERR_NULL_ARGUMENT
    );
    let big = vec![0u8; 2048];
    assert_eq!(
        ffi!(emf_gossip_put(
            g,
            big.as_ptr(),
            big.len(),
            b"v".as_ptr(),
            1,
            std::ptr::null_mut()
        )),
        EMF_ERR_TOO_LARGE
    );
    assert_eq!(
        ffi!(emf_gossip_get(g, b"k".as_ptr(), 1, std::ptr::null_mut())),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(get(g, b"missing"), None);
    assert_eq!(
        ffi!(emf_gossip_put(
            g,
            b"k".as_ptr(),
            1,
            b"v".as_ptr(),
            1,
            std::ptr::null_mut()
        )),
        EMF_OK
    );
    let mut ev = event_struct(MeshEvent::MemberUp(NodeId(0)));
    assert_eq!(ffi!(emf_gossip_next_event(g, 0, &mut ev)), EMF_ERR_TIMEOUT);
    assert_eq!(
        ffi!(emf_gossip_next_event(g, 0, std::ptr::null_mut())),
        EMF_ERR_NULL_ARGUMENT
    );
    assert_eq!(ffi!(emf_gossip_round(g, std::ptr::null_mut())), EMF_OK);
    assert_eq!(
        ffi!(emf_gossip_stats(g, std::ptr::null_mut())),
        EMF_ERR_NULL_ARGUMENT
    );
    // A handle of another type, a forged one.
    let forged = 0x5555_0000usize as *mut emf_gossip_t;
    assert_ne!(ffi!(emf_gossip_round(forged, std::ptr::null_mut())), EMF_OK);
    assert_eq!(ffi!(emf_gossip_free(std::ptr::null_mut())), EMF_OK);
    assert_eq!(ffi!(emf_gossip_free(g)), EMF_OK);
}
