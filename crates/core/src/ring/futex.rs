//! Linux futexes on shared memory: a waiter in one process is woken by a writer in another.
//!
//! The futex word lives in the mapped segment; `FUTEX_WAIT`/`FUTEX_WAKE` without the PRIVATE
//! flag key the wait queue on the physical page, so it works across processes.

use std::time::Duration;

use crate::sync::AtomicU32;

/// Loom stand-in: models never sleep on futexes; a waiter just yields.
#[cfg(loom)]
pub fn wait(_word: &AtomicU32, _expected: u32, timeout: Duration) {
    // Loom models do not sleep on futexes (see `ring::model`); yield instead.
    let _ = timeout;
    loom::thread::yield_now();
}

#[cfg(loom)]
/// Loom stand-in: nothing sleeps on futexes in the models.
pub fn wake_all(_word: &AtomicU32) {}

/// Sleeps while `*word == expected`, for at most `timeout`. Returns on a wake, a timeout, a
/// signal, or when the word already differs; the caller re-checks its condition either way.
#[cfg(not(loom))]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, 4-byte aligned atomic for the duration of the call; the
    // kernel only reads it and compares with `expected`; `ts` outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

/// Registers this process for expedited global memory barriers (once; later calls return the
/// first answer). A registered producer may skip the store-load fence after each commit: a
/// consumer that is about to sleep forces that fence on every registered process with
/// [`barrier_all`] instead (the asymmetric Dekker pattern), so the rare sleeper pays, not
/// every message.
pub fn register_for_barriers() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // Miri does not implement membarrier: producers fence after every commit there.
    if cfg!(miri) {
        return false;
    }
    *REGISTERED.get_or_init(|| {
        // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
                0 as libc::c_long,
            ) == 0
        }
    })
}

/// Executes a full memory barrier on every CPU running a thread of a registered process
/// (a few microseconds). False when the kernel does not support it.
pub fn barrier_all() -> bool {
    if cfg!(miri) {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_GLOBAL_EXPEDITED,
            0 as libc::c_long,
        ) == 0
    }
}

/// Wakes every waiter sleeping on `word`.
#[cfg(not(loom))]
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned atomic; FUTEX_WAKE does not access other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
