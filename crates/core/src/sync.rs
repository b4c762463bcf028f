//! The one place concurrent primitives come from: `std` normally, `loom` under `cfg(loom)`, so
//! that every concurrent structure can be model-checked. `scripts/test.sh` (stage `lints`)
//! fails when `std::sync::atomic` is named anywhere else in `src/` (clippy's
//! `disallowed-types` cannot be used for this: it sees through the re-export).
//!
//! [`Backoff`], the pause of every retry loop, lives here too: it is a loom yield in models.
//!
//! Process-wide statics that loom cannot construct in a `const` context (the C ABI's token
//! counter) use `std` directly, with a comment saying why.
#![allow(unused_imports)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
// loom's locks answer with std's result types.
pub(crate) use std::sync::TryLockError;
// loom has no compiler fence; a full fence is a correct stand-in in models.
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence as compiler_fence;
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

/// `UnsafeCell` with loom's access tracking under `cfg(loom)`: `with`/`with_mut` hand out raw
/// pointers, so the same code reads and writes through it in both builds.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(v))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spin-then-yield backoff for the retry loops (queues, the HNSW index, the cache's lock); a
/// loom yield under `cfg(loom)` (a model must see every spin as a scheduling point).
pub(crate) struct Backoff {
    #[cfg(not(loom))]
    inner: crossbeam_utils::Backoff,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            #[cfg(not(loom))]
            inner: crossbeam_utils::Backoff::new(),
        }
    }

    /// A short pause: another thread is mid-operation on the same slot.
    pub(crate) fn spin(&self) {
        #[cfg(not(loom))]
        self.inner.spin();
        #[cfg(loom)]
        loom::thread::yield_now();
    }

    /// A longer pause: wait for another thread to make progress.
    pub(crate) fn snooze(&self) {
        #[cfg(not(loom))]
        self.inner.snooze();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}
