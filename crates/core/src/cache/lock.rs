//! The shard lock: test-and-test-and-set with backoff. A cache operation holds it for a few
//! tens of nanoseconds, so waiting by spinning (then yielding, for a holder that was
//! preempted) is cheaper than a futex mutex, whose unlock is a second atomic read-modify-write
//! on every operation.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};

use crate::sync::{AtomicBool, Ordering};

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and a guard exists only while `locked`
// is held by its thread (acquired with Acquire, released with Release): one thread at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value (T: Send).
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    fn lock_slow(&self) {
        let backoff = crate::sync::Backoff::new();
        loop {
            while self.locked.load(Ordering::Relaxed) {
                backoff.snooze();
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock (see the Sync impl).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// loom model: two threads increment a counter under the lock; the counter is a loom cell,
/// so an acquisition that did not synchronise with the previous release is reported as a
/// causality violation, and a lost update fails the final assertion.
#[cfg(all(test, loom))]
mod model {
    use super::SpinLock;
    use loom::sync::Arc;

    #[test]
    fn the_spin_lock_excludes_and_publishes() {
        loom::model(|| {
            let l = Arc::new(SpinLock::new(loom::cell::UnsafeCell::new(0u32)));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let l = l.clone();
                    loom::thread::spawn(move || {
                        let g = l.lock();
                        // SAFETY: the lock is held: no other access to the cell.
                        g.with_mut(|p| unsafe { *p += 1 });
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            let g = l.lock();
            // SAFETY: as above.
            assert_eq!(g.with(|p| unsafe { *p }), 2);
        });
    }
}
