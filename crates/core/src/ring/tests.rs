//! In-process ring tests (threads share one mapping). Multi-process tests live in
//! `tests/ring_process.rs`.

use super::layout::{SLOT_CLAIMING, SLOT_IDLE};
use super::*;
use crate::error::ErrorKind;
use crate::shm::{self, SegmentOptions};
use crate::testutil::TempDir;
use std::time::Instant;

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

/// Polls `c` (waiting in between, so stalls are checked) until `n` frames arrived or an
/// error; gives up after 10 s.
fn drain(c: &mut Consumer, n: usize) -> Result<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < n {
        c.poll(usize::MAX, |f| got.push(f.to_vec()))?;
        if got.len() < n {
            c.wait(
                WaitStrategy::SpinThenPark { spins: 10 },
                Duration::from_millis(50),
            )?;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "consumer never resumed"
        );
    }
    Ok(got)
}

/// Makes slot `i` the winner of a `len`-byte claim at the tail that died after its CAS and
/// before it confirmed.
fn forge_unconfirmed_winner(r: &Ring, i: usize, len: u64) {
    forge_stale_claim(r, i, len);
    r.shared().tail.fetch_add(len, Ordering::AcqRel);
    kill_slot(r, i);
}

#[test]
fn a_dead_unconfirmed_winner_is_padded_up_to_the_next_claim_only() {
    // Slot 0 won a 64-byte claim and died before confirming; slot 2 recorded a 960-byte
    // claim at the same position and died before its (failing) CAS. 960 bytes further on
    // lies, by construction, a committed header of the live producer: the stale record's
    // end looks like a frame boundary. Recovery pads the winner's 64 bytes only, and the
    // live producer's frames all arrive intact.
    let dir = TempDir::new("unconfirmed");
    let r = ring(&dir, 1 << 16, true);
    let dead = r.producer().unwrap();
    let mut live = r.producer().unwrap();
    let stale = r.producer().unwrap();
    live.send(&frame(1, 0, 40)).unwrap();
    forge_stale_claim(&r, 2, 64 + 20 * 48);
    kill_slot(&r, 2);
    forge_unconfirmed_winner(&r, 0, 64);
    for seq in 1..30 {
        live.send(&frame(1, seq, 40)).unwrap(); // 48-byte frames
    }
    let mut c = r.consumer().unwrap();
    let got: Vec<_> = drain(&mut c, 30)
        .unwrap()
        .iter()
        .map(|f| check_frame(f))
        .collect();
    assert_eq!(got, (0..30).map(|s| (1, s)).collect::<Vec<_>>());
    assert_eq!(r.stats().unblocked, 1);
    assert_eq!(r.stats().corrupt_frames, 0);
    // The records are settled: taking the slots over pads nothing more.
    let mut taker = r.producer_in_slot(0).unwrap();
    taker.send(&frame(2, 0, 40)).unwrap();
    let mut taker2 = r.producer_in_slot(2).unwrap();
    taker2.send(&frame(3, 0, 40)).unwrap();
    let got: Vec<_> = drain(&mut c, 2)
        .unwrap()
        .iter()
        .map(|f| check_frame(f))
        .collect();
    assert_eq!(got, [(2, 0), (3, 0)]);
    assert_eq!(r.stats().unblocked, 1);
    drop((live, taker, taker2, c));
    std::mem::forget((dead, stale));
}

#[test]
fn two_dead_claimants_of_one_position_are_told_apart() {
    // Slots 0 and 1 both recorded a claim at the same tail and died; slot 0's CAS won (64
    // bytes), slot 1's lost (its record says 200). The live producer's frames after the
    // winner's range survive. (Before: the winner's range was padded, then the stale
    // record's walk over the live frames padded the header of the fifth.)
    let dir = TempDir::new("two-dead");
    let r = ring(&dir, 1 << 16, true);
    let (d0, d1) = (r.producer().unwrap(), r.producer().unwrap());
    let mut live = r.producer().unwrap();
    forge_stale_claim(&r, 1, 200);
    kill_slot(&r, 1);
    forge_unconfirmed_winner(&r, 0, 64);
    for seq in 0..10 {
        live.send(&frame(2, seq, 24)).unwrap();
    }
    let mut c = r.consumer().unwrap();
    let got: Vec<_> = drain(&mut c, 10)
        .unwrap()
        .iter()
        .map(|f| check_frame(f))
        .collect();
    assert_eq!(got, (0..10).map(|s| (2, s)).collect::<Vec<_>>());
    for i in 0..2 {
        let s = r.producer_slot(i);
        assert_eq!(
            s.state.load(Ordering::Acquire),
            SLOT_IDLE,
            "slot {i} settled"
        );
    }
    drop((live, c));
    std::mem::forget((d0, d1));
}

#[test]
fn a_damaged_header_is_reported_as_corrupt_not_as_a_slow_producer() {
    // Before: the consumer waited forever with no error and no count.
    let dir = TempDir::new("damaged-header");
    let r = ring(&dir, 1 << 16, true);
    let mut p = r.producer().unwrap();
    for seq in 0..3 {
        p.send(&frame(0, seq, 40)).unwrap();
    }
    let second = frame_size(40) as u64;
    let h = r.header_at(second);
    h.store(h.load(Ordering::Acquire) ^ 0x10, Ordering::Release); // the tag no longer fits
    let mut c = r.consumer().unwrap();
    let e = drain(&mut c, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("damaged"), "{e}");
    assert_eq!(c.position(), second, "the first frame was delivered");
    // Reported again on every look, counted once.
    let e2 = drain(&mut c, 1).unwrap_err();
    assert_eq!(e2.kind(), ErrorKind::Corrupt);
    assert_eq!(r.stats().corrupt_frames, 1);
    assert_eq!(r.stats().unblocked, 0, "nothing was padded");
}

#[test]
fn a_damaged_closed_flag_is_corruption_not_a_close() {
    let dir = TempDir::new("closed-flag");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    r.shared().closed.store(0x5a, Ordering::Release);
    let e = p.send(b"x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    r.shared().closed.store(0, Ordering::Release);
    r.close();
    assert_eq!(p.send(b"x").unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn manual_ack_redelivers_what_a_dead_consumer_did_not_acknowledge() {
    let dir = TempDir::new("ack");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    for seq in 0..6 {
        p.send(&frame(0, seq, 20)).unwrap();
    }
    let seqs = |c: &mut Consumer, n: usize| -> Vec<u64> {
        let mut out = Vec::new();
        c.poll(n, |f| out.push(check_frame(f).1)).unwrap();
        out
    };
    let mut c = r.consumer().unwrap();
    c.set_ack_mode(AckMode::Manual);
    assert_eq!(seqs(&mut c, 2), [0, 1]);
    c.ack();
    assert_eq!(seqs(&mut c, 2), [2, 3]);
    assert_eq!(c.unacked(), 2);
    c.rewind();
    assert_eq!(seqs(&mut c, 1), [2], "rewind delivers again");
    let mut buf = [0u8; 64];
    assert_eq!(c.recv_into(&mut buf).unwrap(), Some(20));
    drop(c); // like a crash after delivery and before ack: frames 2 and 3 not released
    let mut c = r.consumer().unwrap();
    assert_eq!(seqs(&mut c, 10), [2, 3, 4, 5]);
    assert_eq!(r.stats().received, 6);
    drop(c);
    let mut c = r.consumer().unwrap();
    assert!(seqs(&mut c, 10).is_empty(), "auto mode released them");
}

#[test]
fn manual_ack_holds_producers_back_until_acknowledged() {
    let dir = TempDir::new("ack-space");
    let r = ring(&dir, 4096, false);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    c.set_ack_mode(AckMode::Manual);
    let payload = [7u8; 1000];
    let mut sent = 0;
    while p.send(&payload).is_ok() {
        sent += 1;
    }
    assert_eq!(c.poll(usize::MAX, |_| {}).unwrap(), sent);
    assert_eq!(p.send(&payload).unwrap_err().kind(), ErrorKind::Full);
    c.ack();
    p.send(&payload).unwrap();
}

#[test]
fn a_restarted_producer_learns_exactly_how_many_frames_its_slot_committed() {
    let dir = TempDir::new("committed");
    // The three places a producer can die inside `commit_header`: after `last_pos`, after
    // `sent`, after the header.
    for (sent_stored, header_written) in [(false, false), (true, false), (true, true)] {
        let r = ring(&dir, 1 << 16, true);
        let mut p = r.producer_in_slot(1).unwrap();
        assert_eq!(p.committed(), 0);
        for seq in 0..5 {
            p.send(&frame(1, seq, 30)).unwrap();
        }
        // Die inside the commit of frame 5 (the count that includes it is 6).
        let mut claim = p.try_claim(30).unwrap();
        claim.as_mut_slice().copy_from_slice(&frame(1, 5, 30));
        let pos = claim.raw.pos;
        std::mem::forget(claim);
        let s = r.producer_slot(1);
        s.last_pos.store(pos | 6, Ordering::Release);
        if sent_stored {
            s.sent.store(6, Ordering::Release);
        }
        if header_written {
            r.header_at(pos)
                .store(header(pos, 30, false), Ordering::Release);
        }
        kill_slot(&r, 1);
        let want = 5 + u64::from(header_written);
        let mut again = r.producer_in_slot(1).unwrap();
        assert_eq!(
            again.committed(),
            want,
            "sent stored: {sent_stored}, header written: {header_written}"
        );
        for seq in again.committed()..8 {
            again.send(&frame(1, seq, 30)).unwrap();
        }
        assert_eq!(again.committed(), 8);
        let mut c = r.consumer().unwrap();
        let got: Vec<_> = drain(&mut c, 8)
            .unwrap()
            .iter()
            .map(|f| check_frame(f).1)
            .collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>(), "each frame exactly once");
        assert_eq!(r.stats().producers[0].sent, 8);
        drop((again, c));
        std::mem::forget(p);
        r.unlink().unwrap();
    }
}

#[test]
fn a_producer_slot_out_of_range_or_held_is_refused() {
    let dir = TempDir::new("slot-range");
    let r = ring(&dir, 4096, true);
    assert_eq!(
        r.producer_in_slot(16).err().unwrap().kind(),
        ErrorKind::InvalidArgument
    );
    let _p = r.producer_in_slot(3).unwrap();
    assert_eq!(r.producer_in_slot(3).err().unwrap().kind(), ErrorKind::Busy);
}

#[test]
fn checksummed_frames_round_trip_and_a_changed_byte_is_reported() {
    let dir = TempDir::new("crc");
    let opts = RingOptions {
        capacity: 4096,
        checksum: true,
        stall_timeout: Duration::from_millis(20),
        ..RingOptions::in_dir(&dir.0)
    };
    let r = if cfg!(miri) {
        Ring::anonymous("t", &opts).unwrap()
    } else {
        Ring::create("t", &opts).unwrap()
    };
    assert!(r.has_checksums());
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    // Many laps, every size class, claims shortened at commit.
    for seq in 0..500u64 {
        let len = 12 + (seq as usize * 7) % 300;
        p.send(&frame(0, seq, len)).unwrap();
        let mut claim = p.try_claim(400).unwrap();
        let f = frame(1, seq, len);
        claim.as_mut_slice()[..len].copy_from_slice(&f);
        claim.commit_len(len);
        let got = drain(&mut c, 2).unwrap();
        assert_eq!(check_frame(&got[0]), (0, seq));
        assert_eq!(check_frame(&got[1]), (1, seq));
    }
    let pos = c.position();
    p.send(&frame(0, 1000, 40)).unwrap();
    p.send(&frame(0, 1001, 40)).unwrap();
    let idx = (pos & 4095) as usize + FRAME_HEADER + 20;
    // SAFETY: a payload byte of the committed, unconsumed frame at `pos` (test only).
    unsafe { *r.data().wrapping_add(idx) ^= 1 };
    let e = c
        .poll(10, |_| panic!("a bad frame is not delivered"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(check_frame(&drain(&mut c, 1).unwrap()[0]), (0, 1001));
    assert_eq!(r.stats().corrupt_frames, 1);
    assert!(!ring(&TempDir::new("no-crc"), 4096, false).has_checksums());
}

#[test]
fn the_recovery_lock_is_exclusive_and_taken_from_a_dead_holder() {
    let dir = TempDir::new("lock");
    let r = ring(&dir, 4096, true);
    let g = r.lock_recovery(Duration::ZERO).unwrap();
    assert!(r.lock_recovery(Duration::from_millis(5)).is_none());
    drop(g);
    r.shared()
        .recovery_lock
        .store(u64::from(i32::MAX as u32 - 11) << 32 | 1, Ordering::Release);
    assert!(
        r.lock_recovery(Duration::ZERO).is_some(),
        "dead holder replaced"
    );
}
