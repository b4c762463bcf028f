//! In-process ring tests (threads share one mapping). Multi-process tests live in
//! `tests/ring_process.rs`.

use super::*;
use crate::codec::{jsonrpc, Encoder};
use std::sync::atomic::AtomicUsize as AtomicUsizeStd; // std-atomic-ok: a static in tests

/// A temporary directory for segments, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsizeStd = AtomicUsizeStd::new(0); // std-atomic-ok: test counter
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("emf-ring-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ring under test: a shared-memory segment normally; under Miri (which cannot map
/// files) the same algorithm on a heap allocation.
fn ring(dir: &TempDir, cap: usize, mpsc: bool) -> Ring {
    let opts = RingOptions {
        capacity: cap,
        multi_producer: mpsc,
        stall_timeout: Duration::from_millis(20),
        ..RingOptions::in_dir(&dir.0)
    };
    if cfg!(miri) {
        Ring::anonymous("t", &opts).unwrap()
    } else {
        Ring::create("t", &opts).unwrap()
    }
}

/// Iteration counts shrink under Miri, which runs code thousands of times slower.
const SCALE: u64 = if cfg!(miri) { 100 } else { 1 };

fn frame(producer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(12));
    v.extend_from_slice(&producer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    while v.len() < len {
        v.push((seq as u8).wrapping_add(v.len() as u8));
    }
    v
}

fn check_frame(f: &[u8]) -> (u32, u64) {
    let p = u32::from_le_bytes(f[..4].try_into().unwrap());
    let s = u64::from_le_bytes(f[4..12].try_into().unwrap());
    for (i, b) in f.iter().enumerate().skip(12) {
        assert_eq!(
            *b,
            (s as u8).wrapping_add(i as u8),
            "payload byte {i} of {p}/{s}"
        );
    }
    (p, s)
}

#[test]
fn spsc_wraps_many_laps_without_loss_or_reorder() {
    let dir = TempDir::new("wrap");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    let mut next_send = 0u64;
    let mut next_recv = 0u64;
    // Sizes that do not divide the capacity force padding at the end of every lap.
    let sizes = [12usize, 13, 100, 333, 64, 1000, 17];
    while next_recv < 20_000 / SCALE {
        loop {
            let len = sizes[next_send as usize % sizes.len()];
            match p.send(&frame(0, next_send, len)) {
                Ok(()) => next_send += 1,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full);
                    break;
                }
            }
        }
        c.poll(usize::MAX, |f| {
            let (_, s) = check_frame(f);
            assert_eq!(s, next_recv);
            assert_eq!(f.len(), sizes[s as usize % sizes.len()]);
            next_recv += 1;
        })
        .unwrap();
    }
    let st = r.stats();
    assert_eq!(st.sent, next_send);
    assert_eq!(st.received, next_recv);
    assert!(st.backpressure > 0);
    assert!(st.tail > 4096 * 100 / SCALE, "many laps");
}

#[test]
fn back_pressure_keeps_the_message_and_reports_full() {
    let dir = TempDir::new("full");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let mut sent = 0;
    let err = loop {
        match p.send(&[7u8; 100]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Full);
    assert!(sent >= 4096 / 112 - 1);
    // Nobody consumed: nothing was overwritten, every frame is still there.
    let mut c = r.consumer().unwrap();
    assert_eq!(
        c.poll(usize::MAX, |f| assert_eq!(f, &[7u8; 100])).unwrap(),
        sent
    );
    p.send(&[8u8; 100]).unwrap();
    assert_eq!(
        p.try_claim(r.max_payload() + 1).err().unwrap().kind(),
        ErrorKind::TooLarge
    );
}

#[test]
fn batches_accept_a_prefix_under_back_pressure() {
    let dir = TempDir::new("batch");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let msgs: Vec<Vec<u8>> = (0..100).map(|i| frame(0, i, 100)).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let n = p.send_batch(&refs).unwrap();
    assert!(n > 0 && n < 100, "{n}");
    let mut c = r.consumer().unwrap();
    let mut got = 0u64;
    c.poll(usize::MAX, |f| {
        assert_eq!(check_frame(f).1, got);
        got += 1;
    })
    .unwrap();
    assert_eq!(got as usize, n);
    let m = p.send_batch(&refs[n..]).unwrap();
    assert!(m > 0);
    c.poll(usize::MAX, |f| {
        assert_eq!(check_frame(f).1, got);
        got += 1;
    })
    .unwrap();
    assert_eq!(got as usize, n + m);
}

#[test]
fn mpsc_threads_keep_per_producer_order() {
    let dir = TempDir::new("mpsc");
    let r = ring(&dir, 1 << 16, true);
    const PER: u64 = if cfg!(miri) { 50 } else { 50_000 };
    let threads: Vec<_> = (0..3u32)
        .map(|id| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut p = r.producer().unwrap();
                for s in 0..PER {
                    let f = frame(id, s, 12 + (s as usize % 50));
                    p.send_timeout(
                        &f,
                        WaitStrategy::SpinThenPark { spins: 50 },
                        Duration::from_secs(30),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    let mut c = r.consumer().unwrap();
    let mut next = [0u64; 3];
    let mut total = 0;
    while total < 3 * PER {
        total += c
            .poll(usize::MAX, |f| {
                let (id, s) = check_frame(f);
                assert_eq!(s, next[id as usize], "producer {id}");
                next[id as usize] += 1;
            })
            .unwrap() as u64;
        if total < 3 * PER {
            c.wait(
                WaitStrategy::SpinThenPark { spins: 100 },
                Duration::from_secs(10),
            )
            .unwrap();
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(next, [PER; 3]);
}

#[test]
fn subscribers_fan_out_and_hold_producers_back_while_attached() {
    let dir = TempDir::new("fan");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    p.send(b"before").unwrap();
    let mut s1 = r.subscribe().unwrap();
    let mut s2 = r.subscribe().unwrap();
    for i in 0..10u64 {
        p.send(&frame(0, i, 40)).unwrap();
    }
    let mut a = Vec::new();
    c.poll(usize::MAX, |f| a.push(f.to_vec())).unwrap();
    assert_eq!(a.len(), 11, "the primary consumer saw everything");
    for s in [&mut s1, &mut s2] {
        let mut seen = 0;
        s.poll(usize::MAX, |f| {
            assert_eq!(check_frame(f).1, seen);
            seen += 1;
        })
        .unwrap();
        assert_eq!(
            seen, 10,
            "subscribers see frames committed after they joined"
        );
    }
    // s1 stops reading: producers are held back by it...
    let mut sent = 0;
    while p.send(&[1u8; 200]).is_ok() {
        sent += 1;
        c.poll(usize::MAX, |_| {}).unwrap();
        s2.poll(usize::MAX, |_| {}).unwrap();
    }
    assert!(sent > 0);
    assert!(s1.lag() > 3000);
    // ...until it leaves.
    drop(s1);
    c.poll(usize::MAX, |_| {}).unwrap();
    s2.poll(usize::MAX, |_| {}).unwrap();
    p.send(&[1u8; 200]).unwrap();
    assert_eq!(r.stats().subscribers.len(), 2);
}

#[test]
fn aborted_and_shortened_claims_become_padding() {
    let dir = TempDir::new("abort");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    {
        let mut c = p.try_claim(100).unwrap();
        c.as_mut_slice().fill(9);
        // dropped: aborted
    }
    let mut c = p.try_claim(100).unwrap();
    c.as_mut_slice()[..5].copy_from_slice(b"short");
    c.commit_len(5);
    p.try_claim(10).unwrap().abort();
    p.send(b"last").unwrap();
    let mut got = Vec::new();
    r.consumer()
        .unwrap()
        .poll(usize::MAX, |f| got.push(f.to_vec()))
        .unwrap();
    assert_eq!(got, [b"short".to_vec(), b"last".to_vec()]);
}

/// Makes producer slot `i` look like its owner died (a pid that cannot exist).
fn kill_slot(r: &Ring, i: usize) {
    let s = r.producer_slot(i);
    s.start_ticks.store(0, Ordering::Release);
    s.pid.store(i32::MAX as u32 - 11, Ordering::Release);
}

#[test]
fn a_dead_producers_claim_is_skipped_after_the_stall_timeout() {
    let dir = TempDir::new("stall");
    let r = ring(&dir, 1 << 16, true);
    let mut dead = r.producer().unwrap();
    let mut live = r.producer().unwrap();
    live.send(b"one").unwrap();
    let mut claim = dead.try_claim(64).unwrap();
    claim.as_mut_slice().fill(0xEE); // half-written, never committed
    std::mem::forget(claim);
    live.send(b"two").unwrap();
    kill_slot(&r, 0);
    // Like kill -9: `dead` runs no cleanup until the checks are done (it is dropped at the
    // end only to free its memory).

    let mut c = r.consumer().unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 2 {
        c.poll(usize::MAX, |f| got.push(f.to_vec())).unwrap();
        if got.len() < 2 {
            c.wait(
                WaitStrategy::SpinThenPark { spins: 10 },
                Duration::from_secs(5),
            )
            .unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "consumer never resumed"
        );
    }
    assert_eq!(
        got,
        [b"one".to_vec(), b"two".to_vec()],
        "no half-written frame delivered"
    );
    let st = r.stats();
    assert_eq!(st.unblocked, 1);
    drop((live, c));
    drop(dead);
}

#[test]
fn a_slow_live_producer_is_never_skipped() {
    let dir = TempDir::new("slow");
    let r = ring(&dir, 1 << 16, true);
    let mut slow = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    let mut claim = slow.try_claim(8).unwrap();
    // Wait well past the stall timeout while the claim is open: nothing is delivered and
    // nothing is padded, because our own pid is alive.
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        assert_eq!(c.poll(usize::MAX, |_| panic!("no frame yet")).unwrap(), 0);
        c.wait(
            WaitStrategy::SpinThenPark { spins: 10 },
            Duration::from_millis(30),
        )
        .unwrap();
    }
    claim.as_mut_slice().copy_from_slice(b"slowpoke");
    claim.commit();
    let mut got = Vec::new();
    c.poll(usize::MAX, |f| got.push(f.to_vec())).unwrap();
    assert_eq!(got, [b"slowpoke".to_vec()]);
    assert_eq!(r.stats().unblocked, 0);
}

#[test]
fn a_restarted_producer_takes_over_a_dead_slot() {
    let dir = TempDir::new("restart");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    p.send(b"a").unwrap();
    assert_eq!(r.producer().err().unwrap().kind(), ErrorKind::Busy);
    let claim = p.try_claim(30).unwrap();
    std::mem::forget(claim);
    kill_slot(&r, 0);
    // Like kill -9: `p` runs no cleanup while p2 takes over (it is dropped after p2, when
    // its Drop can only clear a slot nobody holds).
    let mut p2 = r.producer().unwrap();
    p2.send(b"b").unwrap();
    let mut got = Vec::new();
    r.consumer()
        .unwrap()
        .poll(usize::MAX, |f| got.push(f.to_vec()))
        .unwrap();
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
    let st = r.stats();
    assert_eq!((st.unblocked, st.dead_reaped), (1, 1));
    drop(p2);
    drop(p);
}

#[test]
fn a_restarted_consumer_resumes_at_its_position() {
    let dir = TempDir::new("resume");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    for i in 0..10u64 {
        p.send(&frame(0, i, 20)).unwrap();
    }
    let mut c = r.consumer().unwrap();
    assert_eq!(c.poll(4, |_| {}).unwrap(), 4);
    assert_eq!(r.consumer().err().unwrap().kind(), ErrorKind::Busy);
    drop(c);
    let mut c = r.consumer().unwrap();
    let mut first = None;
    c.poll(usize::MAX, |f| {
        first.get_or_insert(check_frame(f).1);
    })
    .unwrap();
    assert_eq!(first, Some(4));
}

#[test]
fn messages_are_written_and_validated_in_place() {
    let dir = TempDir::new("msg");
    let r = ring(&dir, 1 << 16, false);
    let mut p = r.producer().unwrap();
    let mut enc = Encoder::new();
    let m = jsonrpc::from_json(
        br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"a":[1,2,3]}}"#,
    )
    .unwrap();
    p.send_message(&mut enc, &m, 1024).unwrap();
    assert_eq!(
        p.send_message(&mut enc, &m, 16).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    p.send(b"not an archive").unwrap();
    let mut c = r.consumer().unwrap();
    let mut results = Vec::new();
    c.poll_messages(usize::MAX, |res| {
        results.push(res.map(|m| m.envelopes()[0].method().map(str::to_owned)))
    })
    .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].as_ref().unwrap().as_deref(), Some("tools/call"));
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(r.stats().corrupt_frames, 1);
}

#[test]
fn a_parked_consumer_is_woken_by_the_producer() {
    let dir = TempDir::new("park");
    let r = ring(&dir, 4096, false);
    let mut c = r.consumer().unwrap();
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        let mut p = r2.producer().unwrap();
        // Send once the consumer is parked (it announced itself as a waiter).
        while r2.shared().data_waiters.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        p.send(b"wake").unwrap();
    });
    let ready = c
        .wait(
            WaitStrategy::SpinThenPark { spins: 0 },
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(ready);
    t.join().unwrap();
    let mut got = Vec::new();
    c.poll(1, |f| got.push(f.to_vec())).unwrap();
    assert_eq!(got, [b"wake".to_vec()]);
}

#[test]
fn a_full_producer_waits_for_space_and_times_out() {
    let dir = TempDir::new("pwait");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    while p.send(&[0u8; 500]).is_ok() {}
    let e = p
        .send_timeout(
            &[0u8; 500],
            WaitStrategy::SpinThenPark { spins: 10 },
            Duration::from_millis(30),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        let mut c = r2.consumer().unwrap();
        while r2.shared().space_waiters.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        c.poll(usize::MAX, |_| {}).unwrap();
    });
    p.send_timeout(
        &[1u8; 500],
        WaitStrategy::SpinThenPark { spins: 0 },
        Duration::from_secs(30),
    )
    .unwrap();
    t.join().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "reads and writes segment files")]
fn damaged_configs_are_refused_on_open() {
    let dir = TempDir::new("cfg");
    let r = ring(&dir, 4096, false);
    let path = r.inner.mem.path();
    let opts = SegmentOptions {
        dir: dir.0.clone(),
        ..Default::default()
    };
    // capacity is at body offset 8 (after version and flags).
    let cap_off = shm::HEADER_LEN + 8;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[cap_off..cap_off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(dir.0.join("emf-bad"), &bytes).unwrap();
    let e = Ring::open("bad", &opts).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    bytes[cap_off..cap_off + 8].copy_from_slice(&4096u64.to_le_bytes());
    bytes[shm::HEADER_LEN..shm::HEADER_LEN + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(dir.0.join("emf-bad2"), &bytes).unwrap();
    let e = Ring::open("bad2", &opts).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(Ring::open("t", &opts).is_ok());
}

#[test]
fn recv_into_and_batches_copy_out_without_losing_frames() {
    let dir = TempDir::new("recv");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    assert_eq!(c.recv_into(&mut [0u8; 16]).unwrap(), None);
    p.send(b"0123456789").unwrap();
    assert_eq!(c.next_len().unwrap(), Some(10));
    let e = c.recv_into(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    let mut buf = [0u8; 16];
    assert_eq!(
        c.recv_into(&mut buf).unwrap(),
        Some(10),
        "the frame was left in place"
    );
    assert_eq!(&buf[..10], b"0123456789");
    for i in 0..10u64 {
        p.send(&frame(0, i, 20)).unwrap();
    }
    let mut big = [0u8; 100];
    let (n, used) = c.recv_batch_into(&mut big, 100).unwrap();
    assert_eq!((n, used), (4, 96), "four 24-byte records fit in 100 bytes");
    let mut at = 0;
    for i in 0..4u64 {
        let len = u32::from_le_bytes(big[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(check_frame(&big[at + 4..at + 4 + len]).1, i);
        at += 4 + len;
    }
    let mut rest = 4u64;
    c.poll(usize::MAX, |f| {
        assert_eq!(check_frame(f).1, rest);
        rest += 1;
    })
    .unwrap();
    assert_eq!(rest, 10);
    p.send(&[1u8; 200]).unwrap();
    assert_eq!(
        c.recv_batch_into(&mut big, 10).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
}

#[test]
fn a_closed_ring_refuses_producers_and_lets_consumers_drain() {
    let dir = TempDir::new("close");
    let r = ring(&dir, 4096, true);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    p.send(b"before").unwrap();
    assert!(!r.is_closed());
    r.close();
    assert!(r.is_closed());
    assert_eq!(p.send(b"after").unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(p.send_batch(&[b"x"]).unwrap_err().kind(), ErrorKind::Closed);
    let mut got = Vec::new();
    c.poll(10, |f| got.push(f.to_vec())).unwrap();
    assert_eq!(got, [b"before".to_vec()]);
}

#[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
struct Tick {
    seq: u64,
    agent: [u8; 16],
    tag: Option<u32>,
}

#[test]
fn typed_frames_round_trip_validated_in_place() {
    let d = TempDir::new("typed");
    let r = ring(&d, 1 << 14, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    let mut next = 0u64;
    let mut check = |c: &mut Consumer| {
        c.poll_archived::<Tick>(usize::MAX, |t| {
            let t = t.unwrap();
            assert_eq!(t.seq, next);
            assert_eq!(t.agent, [next as u8; 16]);
            assert_eq!(
                t.tag.as_ref().map(|v| v.to_native()),
                (next % 3 == 0).then_some(next as u32)
            );
            next += 1;
        })
        .unwrap()
    };
    let mut full = 0;
    for seq in 0..3000u64 {
        let t = Tick {
            seq,
            agent: [seq as u8; 16],
            tag: (seq % 3 == 0).then_some(seq as u32),
        };
        // On back-pressure, drain and send the same value again: nothing is lost.
        loop {
            match p.send_archived(&t, 64) {
                Ok(n) => {
                    assert!(n <= 64);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full);
                    full += 1;
                    assert!(check(&mut c) > 0);
                }
            }
        }
    }
    while check(&mut c) > 0 {}
    assert!(
        full > 0,
        "the ring never filled: the test did not exercise back-pressure"
    );
    let next = next;
    assert_eq!(next, 3000);
}

#[test]
fn typed_frames_refuse_what_does_not_fit_and_flag_what_is_not_an_archive() {
    let d = TempDir::new("typed-bad");
    let r = ring(&d, 1 << 14, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    let t = Tick {
        seq: 1,
        agent: [1; 16],
        tag: None,
    };
    // Too small a reservation: TooLarge, and nothing was delivered.
    assert_eq!(
        p.send_archived(&t, 8).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(
        c.poll(usize::MAX, |_| panic!("nothing was sent")).unwrap(),
        0
    );
    // A frame too short to hold a Tick is reported as corrupt and counted, not read.
    p.send(&[1, 2, 3]).unwrap();
    // An `Option` tag other than 0/1 fails bytecheck.
    let n = p.send_archived(&t, 64).unwrap();
    let mut bytes = vec![0u8; n];
    let mut errors = 0;
    let mut ok = 0;
    c.poll_archived::<Tick>(usize::MAX, |t| match t {
        Ok(v) => {
            assert_eq!(v.seq, 1);
            ok += 1
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            errors += 1
        }
    })
    .unwrap();
    assert_eq!((errors, ok), (1, 1));
    assert_eq!(r.shared().corrupt_frames.load(Ordering::Relaxed), 1);
    // Corrupt the discriminant of the Option in a copy and check validation refuses it.
    bytes.fill(0xFF);
    p.send(&bytes).unwrap();
    let mut seen = None;
    c.poll_archived::<Tick>(1, |t| seen = Some(t.map(|_| ()).map_err(|e| e.kind())))
        .unwrap();
    assert_eq!(seen, Some(Err(ErrorKind::Corrupt)));
}

/// Writes into producer slot `i` the record a producer leaves when it dies after recording a
/// claim of `len` bytes at the current tail but before its CAS on the tail succeeded.
fn forge_stale_claim(r: &Ring, i: usize, len: u64) {
    let s = r.producer_slot(i);
    let tail = r.shared().tail.load(Ordering::Acquire);
    s.pending_pos.store(tail, Ordering::Release);
    s.pending_len.store(len as _, Ordering::Release);
    s.state.store(SLOT_CLAIMING, Ordering::Release);
}

#[test]
fn a_stale_mpsc_claim_record_never_pads_over_other_producers_frames() {
    // Slot 0 dies between recording its claim and a CAS that would have succeeded; slot 1
    // then fills the range the record names. Neither the takeover of slot 0 nor the
    // consumer may pad over slot 1's frames. (Before claims were confirmed after the CAS,
    // the takeover padded [tail, tail + 256) over them and the consumer stopped after 5 of
    // the 7 frames.)
    let dir = TempDir::new("stale-claim");
    let r = ring(&dir, 1 << 16, true);
    let dead = r.producer().unwrap();
    let mut live = r.producer().unwrap();
    forge_stale_claim(&r, 0, 256);
    kill_slot(&r, 0);
    for seq in 0..6 {
        live.send(&frame(1, seq, 40)).unwrap();
    }
    let mut taker = r.producer().unwrap();
    taker.send(&frame(2, 0, 40)).unwrap();
    let mut c = r.consumer().unwrap();
    let mut got = Vec::new();
    c.poll(usize::MAX, |f| got.push(check_frame(f))).unwrap();
    let want: Vec<(u32, u64)> = (0..6).map(|s| (1, s)).chain([(2, 0)]).collect();
    assert_eq!(got, want);
    assert_eq!(r.stats().unblocked, 0, "nothing to unblock");
    drop((live, taker, c));
    std::mem::forget(dead);
}
