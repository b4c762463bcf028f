//! A counting global allocator for memory measurements: the `erlmcp-flow` executable installs
//! it; it counts only while a measurement has switched counting on, so other benchmarks pay
//! one relaxed load per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering}; // std-atomic-ok: a process-wide static allocator counter (const init)

static ON: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The counting allocator (wraps the system allocator).
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters do not affect the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Bytes allocated minus bytes freed while `f` ran (requested sizes; the allocator's own
/// overhead per block is not included). `None` when the counting allocator is not installed.
pub fn net_allocated<R>(f: impl FnOnce() -> R) -> (R, Option<isize>) {
    // Any allocation proves installation.
    drop(Box::new(0u8));
    let installed = INSTALLED.load(Ordering::Relaxed);
    LIVE.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::SeqCst);
    let r = f();
    ON.store(false, Ordering::SeqCst);
    (r, installed.then(|| LIVE.load(Ordering::Relaxed)))
}
