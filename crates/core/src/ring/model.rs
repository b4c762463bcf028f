//! Loom models of the ring protocol: the orderings of claim → write → commit → consume →
//! release, the wrap-around with lap tags, and the multi-producer claim.
//!
//! Loom explores every interleaving (and every allowed reordering of relaxed/acquire/release
//! accesses) of small programs; it needs its own atomics and cells, so the model cannot run
//! on mapped bytes. It therefore uses the production frame-header encoding
//! (`layout::header` / `layout::decode_header` / `layout::frame_size`) and repeats, step by
//! step and with the same `Ordering`s, the memory accesses of `Producer::claim_with`,
//! `Producer::commit_raw`, `Consumer::next` and `Consumer::publish`. Keep them in step.
//!
//! Run with `scripts/loom.sh`.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::layout::{decode_header, frame_size, header};

/// Frames carry one u64 payload: 16 bytes with the header.
const FRAME: u64 = frame_size(8) as u64;

struct ModelRing {
    /// The claim position (`RingShared::tail`).
    tail: AtomicU64,
    /// The consumer's position (`SubscriberSlot::position`).
    head: AtomicU64,
    /// One header word per frame slot (the frame's commit flag, in the data region).
    headers: Vec<AtomicU64>,
    /// The payload of each frame slot (plain memory in the data region).
    payload: Vec<UnsafeCell<u64>>,
    capacity: u64,
}

impl ModelRing {
    fn new(slots: usize) -> ModelRing {
        ModelRing {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            headers: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            capacity: slots as u64 * FRAME,
        }
    }

    fn slot(&self, pos: u64) -> usize {
        ((pos % self.capacity) / FRAME) as usize
    }

    /// `Producer::claim_with` + write + `commit_raw`. `mpsc` claims with a CAS.
    fn try_send(&self, value: u64, mpsc: bool) -> bool {
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            // The space check against the slowest consumer (`min_head`, Acquire).
            let head = self.head.load(Ordering::Acquire);
            if (tail + FRAME).saturating_sub(head) > self.capacity {
                return false; // Full: the caller keeps `value`
            }
            if mpsc {
                if self
                    .tail
                    .compare_exchange(tail, tail + FRAME, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    thread::yield_now();
                    continue;
                }
            } else {
                self.tail.store(tail + FRAME, Ordering::Release);
            }
            let i = self.slot(tail);
            // Write the payload in place: nobody reads this slot until the header below.
            self.payload[i].with_mut(|p| {
                // SAFETY: the claim gives this producer the slot; loom checks the claim.
                unsafe { *p = value }
            });
            self.headers[i].store(header(tail, 8, false), Ordering::Release);
            return true;
        }
    }

    /// `Consumer::next` + read + `Consumer::publish`.
    fn try_recv(&self, head: &mut u64) -> Option<u64> {
        let i = self.slot(*head);
        let word = self.headers[i].load(Ordering::Acquire);
        // A header from an earlier lap carries another tag and is not a frame.
        let h = decode_header(word, *head)?;
        assert_eq!(h.len, 8);
        // SAFETY: the committed header (Acquire) orders the producer's write before this read.
        let v = self.payload[i].with(|p| unsafe { *p });
        *head += FRAME;
        self.head.store(*head, Ordering::Release);
        Some(v)
    }
}

fn send_all(ring: &ModelRing, values: &[u64], mpsc: bool) {
    for &v in values {
        while !ring.try_send(v, mpsc) {
            thread::yield_now();
        }
    }
}

fn recv_n(ring: &ModelRing, n: usize) -> Vec<u64> {
    let mut head = 0;
    let mut got = Vec::new();
    while got.len() < n {
        match ring.try_recv(&mut head) {
            Some(v) => got.push(v),
            None => thread::yield_now(),
        }
    }
    got
}

#[test]
fn spsc_wraps_without_loss_reorder_or_race() {
    loom::model(|| {
        // Two slots and three frames: the third reuses the first slot on the next lap.
        let ring = Arc::new(ModelRing::new(2));
        let r = ring.clone();
        let p = thread::spawn(move || send_all(&r, &[11, 22, 33], false));
        assert_eq!(recv_n(&ring, 3), [11, 22, 33]);
        p.join().unwrap();
    });
}

#[test]
fn mpsc_claims_never_collide() {
    loom::model(|| {
        let ring = Arc::new(ModelRing::new(2));
        let (a, b) = (ring.clone(), ring.clone());
        let pa = thread::spawn(move || send_all(&a, &[1], true));
        let pb = thread::spawn(move || send_all(&b, &[2], true));
        let mut got = recv_n(&ring, 2);
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        pa.join().unwrap();
        pb.join().unwrap();
    });
}

#[test]
fn a_full_ring_refuses_instead_of_overwriting() {
    loom::model(|| {
        let ring = ModelRing::new(1);
        assert!(ring.try_send(7, false));
        assert!(!ring.try_send(8, false), "back-pressure, not an overwrite");
        let mut head = 0;
        assert_eq!(ring.try_recv(&mut head), Some(7));
        assert!(ring.try_send(8, false));
        assert_eq!(ring.try_recv(&mut head), Some(8));
    });
}

#[test]
fn slot_reuse_waits_for_the_consumers_release() {
    loom::model(|| {
        // One slot: the second frame reuses it only after the consumer released the first;
        // the Release/Acquire pair on the consumer position orders the consumer's read of the
        // old payload before the producer's write of the new one.
        let ring = Arc::new(ModelRing::new(1));
        let r = ring.clone();
        let p = thread::spawn(move || send_all(&r, &[5, 6], false));
        assert_eq!(recv_n(&ring, 2), [5, 6]);
        p.join().unwrap();
    });
}
