//! The bounded MPMC queue: a ring of slots with sequence stamps (Dmitry Vyukov's design).
//! A slot's stamp says whose turn it is: `2·pos` for the producer of position `pos`,
//! `2·pos + 1` for its consumer; after consuming, the stamp becomes `2·(pos + capacity)`, the
//! next lap's producer. (Doubling keeps "written at `pos`" distinct from "free for the
//! producer of `pos + 1`" even with one slot, where `pos + 1` would be both.) Producers and
//! consumers claim positions with a CAS on `tail` / `head`.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Backoff, Ordering, UnsafeCell};

struct Slot<T> {
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded multi-producer multi-consumer FIFO queue, lock-free. A full queue hands the
/// value back (`Err(value)`): nothing is dropped.
///
/// ```
/// use erlmcp_flow::queue::BoundedQueue;
/// let q = BoundedQueue::new(2);
/// assert!(q.push(1).is_ok());
/// assert!(q.push(2).is_ok());
/// assert_eq!(q.push(3), Err(3));
/// assert_eq!(q.pop(), Some(1));
/// ```
pub struct BoundedQueue<T> {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    slots: Box<[Slot<T>]>,
    cap: usize,
}

// SAFETY: values move between threads (T: Send); a slot's value is accessed only by the
// thread whose turn its stamp says it is.
unsafe impl<T: Send> Send for BoundedQueue<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for BoundedQueue<T> {}

impl<T> BoundedQueue<T> {
    /// A queue holding at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(1);
        BoundedQueue {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots: (0..cap)
                .map(|i| Slot {
                    stamp: AtomicUsize::new(2 * i),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            cap,
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Appends `value`, or hands it back when the queue is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        let backoff = Backoff::new();
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos % self.cap];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == 2 * pos {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the stamp said it is position `pos`'s producer's turn and
                        // the CAS made us that producer; no consumer reads before the stamp
                        // store below.
                        slot.value.with_mut(|p| unsafe { (*p).write(value) });
                        slot.stamp.store(2 * pos + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(t) => pos = t,
                }
            } else if stamp < 2 * pos {
                // The slot still holds the previous lap's value: full, unless a consumer
                // is between its CAS and its stamp store.
                if self.head.load(Ordering::Relaxed) + self.cap <= pos {
                    return Err(value);
                }
                backoff.spin();
                pos = self.tail.load(Ordering::Relaxed);
            } else {
                backoff.snooze();
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the value at the front, or `None` when empty.
    pub fn pop(&self) -> Option<T> {
        let backoff = Backoff::new();
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos % self.cap];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == 2 * pos + 1 {
                match self.head.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the stamp (Acquire) says the value of position `pos` is
                        // written; the CAS made us its only consumer.
                        let v = slot
                            .value
                            .with(|p| unsafe { std::ptr::read(p.cast::<T>()) });
                        slot.stamp.store(2 * (pos + self.cap), Ordering::Release);
                        return Some(v);
                    }
                    Err(h) => pos = h,
                }
            } else if stamp == 2 * pos {
                // Not written yet: empty, unless a producer is between its CAS and its store.
                if self.tail.load(Ordering::Relaxed) <= pos {
                    return None;
                }
                backoff.spin();
                pos = self.head.load(Ordering::Relaxed);
            } else {
                backoff.snooze();
                pos = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Values queued (a snapshot).
    pub fn len(&self) -> usize {
        let t = self.tail.load(Ordering::Acquire);
        let h = self.head.load(Ordering::Acquire);
        t.saturating_sub(h).min(self.cap)
    }

    /// True when nothing is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for BoundedQueue<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}
