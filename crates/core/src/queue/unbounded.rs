//! The unbounded MPMC queue: a linked list of blocks of slots. Producers reserve a slot with
//! one `fetch_add` on the tail block's counter and write the value in place; consumers
//! reserve with a `fetch_add` on the head block's counter and take the value. Blocks that
//! every consumer has moved past are retired through crossbeam-epoch.
//!
//! Protocol of a slot (`state` bits):
//! * the producer that reserved index `i` writes the value, then sets `WRITTEN` (Release);
//! * a consumer claims index `i` with a CAS on the head block's `deq` counter, normally once
//!   it has seen `WRITTEN` at `i` (the value is then its own: nobody else touches the slot);
//! * when `i` was reserved but stays unwritten (the producer was preempted), the consumer
//!   claims it anyway and sets `TAKEN`: if `WRITTEN` was set meanwhile the value is its own;
//!   if not, it gives the slot up and looks again, and the producer — seeing `TAKEN` when it
//!   sets `WRITTEN` — takes its value back and reserves another index. A value is therefore
//!   read by exactly one consumer or returned to its producer, never both, never neither,
//!   and consumers are never blocked behind a stalled producer for long.
//!
//! Reclamation: a consumer advances `head` past a block only once the block's indices are all
//! reserved and its successor exists, and it first moves `tail` off the block, so a retired
//! block is reachable from neither root; threads that loaded it before are pinned, and the
//! block is freed only after they unpin (crossbeam-epoch). Under loom the retired blocks are
//! kept until the queue is dropped (loom cannot run crossbeam-epoch), which checks the same
//! slot and index protocol.

use std::mem::MaybeUninit;
use std::ptr;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicPtr, AtomicUsize, Ordering, UnsafeCell};

/// Slots per block.
#[cfg(not(loom))]
const BLOCK: usize = 63;
#[cfg(loom)]
const BLOCK: usize = 2;

const WRITTEN: usize = 1;
const TAKEN: usize = 2;

/// How many times a consumer looks at a reserved but unwritten slot before giving it up.
#[cfg(not(loom))]
const PATIENCE: u32 = 16;
#[cfg(loom)]
const PATIENCE: u32 = 1;

struct Slot<T> {
    value: UnsafeCell<MaybeUninit<T>>,
    state: AtomicUsize,
}

struct Block<T> {
    enq: CachePadded<AtomicUsize>,
    deq: CachePadded<AtomicUsize>,
    next: AtomicPtr<Block<T>>,
    slots: [Slot<T>; BLOCK],
}

impl<T> Block<T> {
    fn new() -> Box<Block<T>> {
        Box::new(Block {
            enq: CachePadded::new(AtomicUsize::new(0)),
            deq: CachePadded::new(AtomicUsize::new(0)),
            next: AtomicPtr::new(ptr::null_mut()),
            slots: std::array::from_fn(|_| Slot {
                value: UnsafeCell::new(MaybeUninit::uninit()),
                state: AtomicUsize::new(0),
            }),
        })
    }
}

/// An unbounded multi-producer multi-consumer FIFO queue, lock-free, with memory reclaimed by
/// crossbeam-epoch.
///
/// ```
/// use erlmcp_flow::queue::Queue;
/// let q = Queue::new();
/// q.push(1);
/// q.push(2);
/// assert_eq!(q.pop(), Some(1));
/// assert_eq!(q.pop(), Some(2));
/// assert_eq!(q.pop(), None);
/// ```
pub struct Queue<T> {
    head: CachePadded<AtomicPtr<Block<T>>>,
    tail: CachePadded<AtomicPtr<Block<T>>>,
    #[cfg(loom)]
    retired: crate::sync::Mutex<Vec<usize>>,
}

// SAFETY: values move between threads through the queue (T: Send); all shared state is
// atomics, and each slot's value is accessed by one thread at a time (slot protocol above).
unsafe impl<T: Send> Send for Queue<T> {}
// SAFETY: as above: `&Queue` only allows push/pop, which follow the slot protocol.
unsafe impl<T: Send> Sync for Queue<T> {}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
type Guard = crossbeam_epoch::Guard;
#[cfg(loom)]
struct Guard;

#[inline]
fn pin() -> Guard {
    #[cfg(not(loom))]
    {
        crossbeam_epoch::pin()
    }
    #[cfg(loom)]
    {
        Guard
    }
}

impl<T> Queue<T> {
    /// An empty queue (one block allocated).
    pub fn new() -> Self {
        let b = Box::into_raw(Block::new());
        Queue {
            head: CachePadded::new(AtomicPtr::new(b)),
            tail: CachePadded::new(AtomicPtr::new(b)),
            #[cfg(loom)]
            retired: crate::sync::Mutex::new(Vec::new()),
        }
    }

    /// Appends `value` at the back. Never fails (the queue grows).
    pub fn push(&self, value: T) {
        let _guard = pin();
        let mut value = value;
        loop {
            let t = self.tail.load(Ordering::Acquire);
            // SAFETY: `t` was reachable from `tail` while we are pinned: not freed before we
            // unpin (reclamation argument in the module docs).
            let b = unsafe { &*t };
            let i = b.enq.fetch_add(1, Ordering::Relaxed);
            if i < BLOCK {
                let slot = &b.slots[i];
                // SAFETY: index `i` was handed to us alone by the fetch_add; no consumer
                // reads the value before it sees WRITTEN.
                slot.value.with_mut(|p| unsafe { (*p).write(value) });
                let prev = slot.state.fetch_or(WRITTEN, Ordering::AcqRel);
                if prev & TAKEN == 0 {
                    return;
                }
                // The consumer of this index gave up on it: the value is still ours.
                // SAFETY: we wrote it just above and no consumer will read it (TAKEN was
                // set before WRITTEN).
                value = slot
                    .value
                    .with(|p| unsafe { std::ptr::read(p.cast::<T>()) });
                continue;
            }
            // The block is full: move to (or create) the next one.
            let next = b.next.load(Ordering::Acquire);
            if !next.is_null() {
                let _ = self
                    .tail
                    .compare_exchange(t, next, Ordering::AcqRel, Ordering::Acquire);
                continue;
            }
            let nb = Block::new();
            // Pre-fill slot 0 with our value: the block is published with it.
            nb.slots[0].value.with_mut(|p| {
                // SAFETY: the block is not shared yet.
                unsafe { (*p).write(value) };
            });
            nb.slots[0].state.store(WRITTEN, Ordering::Relaxed);
            nb.enq.store(1, Ordering::Relaxed);
            let nb = Box::into_raw(nb);
            match b
                .next
                .compare_exchange(ptr::null_mut(), nb, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let _ = self
                        .tail
                        .compare_exchange(t, nb, Ordering::AcqRel, Ordering::Acquire);
                    return;
                }
                Err(_) => {
                    // Another producer linked a block first: take the value back, free ours.
                    // SAFETY: `nb` was never published; we own it.
                    let nb = unsafe { Box::from_raw(nb) };
                    // SAFETY: slot 0 holds the value we wrote above.
                    value = nb.slots[0]
                        .value
                        .with(|p| unsafe { std::ptr::read(p.cast::<T>()) });
                }
            }
        }
    }

    /// Removes the value at the front, or `None` when the queue is empty.
    pub fn pop(&self) -> Option<T> {
        let guard = pin();
        loop {
            let h = self.head.load(Ordering::Acquire);
            // SAFETY: reachable from `head` while pinned (module docs).
            let b = unsafe { &*h };
            let i = b.deq.load(Ordering::Acquire);
            if i >= BLOCK {
                let next = b.next.load(Ordering::Acquire);
                if next.is_null() {
                    return None;
                }
                // Move `tail` off the block before retiring it, so that it is unreachable.
                let _ = self
                    .tail
                    .compare_exchange(h, next, Ordering::AcqRel, Ordering::Acquire);
                if self
                    .head
                    .compare_exchange(h, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.retire(h, &guard);
                }
                continue;
            }
            let slot = &b.slots[i];
            let backoff = crate::sync::Backoff::new();
            let mut waited = 0;
            loop {
                if slot.state.load(Ordering::Acquire) & WRITTEN != 0 {
                    break; // the common case: a written value is waiting at `i`
                }
                if b.enq.load(Ordering::Acquire) <= i {
                    return None; // nobody reserved index i yet: empty
                }
                // Reserved, not written yet: the producer is between its fetch_add and its
                // write. Wait a little before giving the slot up (which makes it retry).
                if waited == PATIENCE || b.deq.load(Ordering::Relaxed) != i {
                    break;
                }
                waited += 1;
                // Spin, then yield: with more threads than cores the producer may be
                // preempted and needs the CPU to finish its write.
                backoff.snooze();
            }
            // Claim index `i` (other consumers may race for it).
            if b.deq
                .compare_exchange_weak(i, i + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if slot.state.load(Ordering::Acquire) & WRITTEN != 0 {
                // Written before we claimed it, and ours alone now: the producer is done
                // with the slot, nobody else reserved `i`.
                // SAFETY: WRITTEN (Acquire) was set (Release) after the value was written;
                // the CAS on `deq` made `i` ours.
                return Some(
                    slot.value
                        .with(|p| unsafe { std::ptr::read(p.cast::<T>()) }),
                );
            }
            let prev = slot.state.fetch_or(TAKEN, Ordering::AcqRel);
            if prev & WRITTEN != 0 {
                // SAFETY: as above: written (observed with Acquire), and the index is ours.
                return Some(
                    slot.value
                        .with(|p| unsafe { std::ptr::read(p.cast::<T>()) }),
                );
            }
            // Gave up on a slow producer's slot: it takes its value back; look again.
        }
    }

    /// True when no value is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        let _guard = pin();
        let h = self.head.load(Ordering::Acquire);
        // SAFETY: as in `pop`.
        let b = unsafe { &*h };
        let i = b.deq.load(Ordering::Acquire).min(BLOCK);
        b.enq.load(Ordering::Acquire).min(BLOCK) <= i && b.next.load(Ordering::Acquire).is_null()
    }

    #[cfg(not(loom))]
    fn retire(&self, b: *mut Block<T>, guard: &Guard) {
        let addr = b as usize;
        let free = move || {
            // SAFETY: the block came from `Box::into_raw` in `push`/`new`, is unreachable
            // (see below), and this closure runs once, after every thread that could still
            // hold it has unpinned.
            drop(unsafe { Box::from_raw(addr as *mut Block<T>) })
        };
        // SAFETY: the block is unreachable from `head` and `tail` (we moved both past it) and
        // from other blocks (its predecessor was retired before); threads still holding it
        // are pinned, and `free` runs after they unpin. It frees the block's memory only:
        // every value in it was taken (all indices reserved and resolved) — `Slot` holds
        // `MaybeUninit`, so nothing is dropped twice. `T` need not be 'static: no `T` is
        // touched by `free`.
        unsafe { guard.defer_unchecked(free) };
    }

    #[cfg(loom)]
    fn retire(&self, b: *mut Block<T>, _guard: &Guard) {
        self.retired.lock().unwrap().push(b as usize);
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // Exclusive access: drop the values still queued, then free the blocks.
        let mut b = self.head.load(Ordering::Relaxed);
        while !b.is_null() {
            // SAFETY: blocks from `head` on are live and owned by the queue.
            let blk = unsafe { Box::from_raw(b) };
            // Indices below `deq` were claimed by consumers (taken, or given up and taken
            // back by their producer); from `deq` on, a WRITTEN slot holds a queued value.
            let first = blk.deq.load(Ordering::Relaxed).min(BLOCK);
            for slot in &blk.slots[first..] {
                if slot.state.load(Ordering::Relaxed) == WRITTEN {
                    // SAFETY: written and never claimed: the value is initialised and ours.
                    slot.value
                        .with_mut(|p| unsafe { std::ptr::drop_in_place(p.cast::<T>()) });
                }
            }
            b = blk.next.load(Ordering::Relaxed);
        }
        #[cfg(loom)]
        for addr in self.retired.lock().unwrap().drain(..) {
            // SAFETY: retired blocks are unreachable; their values were all taken.
            drop(unsafe { Box::from_raw(addr as *mut Block<T>) });
        }
    }
}
