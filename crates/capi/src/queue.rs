//! C ABI of the task queue and the LRU cache. Both are thread-safe: any thread may call in
//! at any time, except that a handle must not be freed while another thread uses it.
//! Tasks, keys and values are byte strings, copied in and out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Handle, Shared};
use super::{
    bytes, emf_buf_t, emf_status_t, guard, require_out, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_EMPTY, EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND,
    EMF_ERR_TOO_LARGE,
};
use engine::cache::{CacheOptions, LruCache, Sweeper};
use engine::queue::{DropPolicy, Enqueue, Priority, TaskQueue, TaskQueueOptions};

/// Drop policy: a full queue refuses arrivals.
pub const EMF_DROP_NONE: u32 = 0;
/// Drop policy: a higher-priority arrival evicts the newest lowest-priority task.
pub const EMF_DROP_LOW_PRIORITY: u32 = 1;

/// Enqueue answer: queued in the primary queue.
pub const EMF_ENQUEUE_OK: u32 = 0;
/// Enqueue answer: queued in the overflow; slow down.
pub const EMF_ENQUEUE_BACKPRESSURE: u32 = 1;
/// Enqueue answer: not queued (both queues full); the task stays the caller's.
pub const EMF_ENQUEUE_REJECTED: u32 = 2;
/// Enqueue answer: queued by evicting a lower-priority task, returned in `out_evicted`.
pub const EMF_ENQUEUE_EVICTED: u32 = 3;

/// A task queue of byte-string tasks. Opaque; thread-safe.
pub struct emf_task_queue_t {
    _private: (),
}

impl Handle for emf_task_queue_t {
    const KIND: u32 = 9;
    const NAME: &'static str = "queue";
    type Target = TaskQueue<Box<[u8]>>;
    type Access = Shared;
}

/// Counters of a task queue (`emf_task_queue_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_task_queue_stats_t {
    /// Tasks queued now.
    pub depth: u64,
    /// Of which in the primary queue.
    pub primary_depth: u64,
    /// Of which in the overflow.
    pub overflow_depth: u64,
    /// 99th percentile of the depth after each enqueue.
    pub depth_p99: u64,
    /// Largest depth seen.
    pub max_depth: u64,
    /// Tasks accepted.
    pub enqueued: u64,
    /// Tasks dequeued.
    pub dequeued: u64,
    /// Tasks that landed in the overflow.
    pub spills: u64,
    /// Tasks refused.
    pub rejections: u64,
    /// Tasks evicted by higher-priority arrivals.
    pub evictions: u64,
}

fn priority(code: u32) -> FfiResult<Priority> {
    Priority::from_code(code).ok_or_else(|| {
        FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("priority {code} is not one of EMF_PRIORITY_* (0..3)"),
        )
    })
}

/// Creates a task queue holding `max_primary` tasks (0: 1000) plus `max_overflow` more in the
/// overflow (`SIZE_MAX`: 10000), with drop policy `EMF_DROP_*`.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_task_queue_new(
    max_primary: usize,
    max_overflow: usize,
    drop_policy: u32,
    out: *mut *mut emf_task_queue_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let d = TaskQueueOptions::default();
        let drop_policy = match drop_policy {
            EMF_DROP_NONE => DropPolicy::None,
            EMF_DROP_LOW_PRIORITY => DropPolicy::LowPriority,
            other => {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!("drop policy {other} is not one of EMF_DROP_*"),
                ))
            }
        };
        let opts = TaskQueueOptions {
            max_primary: if max_primary == 0 {
                d.max_primary
            } else {
                max_primary
            },
            max_overflow: if max_overflow == usize::MAX {
                d.max_overflow
            } else {
                max_overflow
            },
            drop_policy,
        };
        let h = new_handle::<emf_task_queue_t>(TaskQueue::new(opts))?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a task queue and the tasks still in it (dequeue them first to keep them). NULL is
/// fine.
///
/// # Safety
///
/// No other thread may be using `q`.
#[no_mangle]
pub unsafe extern "C" fn emf_task_queue_free(q: *mut emf_task_queue_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(q) })
}

/// Queues a copy of `data` at `priority` (`EMF_PRIORITY_*`); `*out_result` says what happened
/// (`EMF_ENQUEUE_*`). On `EMF_ENQUEUE_EVICTED` the evicted task's bytes are moved to
/// `*out_evicted` (free with `emf_buf_free`) and its priority to `*out_evicted_priority`
/// (when non-NULL); otherwise `*out_evicted` is set to the empty buffer `{NULL, 0}` (so
/// freeing it unconditionally is fine; a buffer it held before is not freed). On
/// `EMF_ENQUEUE_REJECTED` nothing was queued: `data` stays the caller's.
///
/// # Safety
///
/// `q` a live handle; `data` readable for `len`; `out_result` and `out_evicted` writable;
/// `out_evicted_priority` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_task_queue_enqueue(
    q: *const emf_task_queue_t,
    data: *const u8,
    len: usize,
    priority_code: u32,
    out_result: *mut u32,
    out_evicted: *mut emf_buf_t,
    out_evicted_priority: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out_result, "out_result")?;
        require_out(out_evicted, "out_evicted")?;
        // SAFETY: caller contract.
        let task = unsafe { bytes(data, len, "data") }?;
        let p = priority(priority_code)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let q = unsafe { borrow(q) }?;
        let (code, evicted) = match q.enqueue(task.into(), p) {
            Enqueue::Ok => (EMF_ENQUEUE_OK, None),
            Enqueue::Backpressure => (EMF_ENQUEUE_BACKPRESSURE, None),
            Enqueue::Rejected(_) => (EMF_ENQUEUE_REJECTED, None),
            Enqueue::Evicted(t, ep) => (EMF_ENQUEUE_EVICTED, Some((t, ep))),
        };
        // The evicted task's bytes move into the buffer (no copy).
        let (buf, evicted_priority) = match evicted {
            Some((t, ep)) => (emf_buf_t::from_vec(t.into_vec()), Some(ep)),
            None => (emf_buf_t::EMPTY, None),
        };
        // SAFETY: writable by contract (checked non-NULL above).
        unsafe { out_evicted.write(buf) };
        if let (Some(ep), false) = (evicted_priority, out_evicted_priority.is_null()) {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_evicted_priority.write(ep as u32) };
        }
        // SAFETY: writable by contract.
        unsafe { write_out(out_result, code, "out_result") }
    })
}

/// Takes the oldest task of the highest priority queued into `*out` (free with
/// `emf_buf_free`) and its priority into `*out_priority` (when non-NULL). `EMF_ERR_EMPTY`
/// when nothing is queued.
///
/// # Safety
///
/// `q` a live handle; `out` writable; `out_priority` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_task_queue_dequeue(
    q: *const emf_task_queue_t,
    out: *mut emf_buf_t,
    out_priority: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let q = unsafe { borrow(q) }?;
        let Some((t, p)) = q.dequeue() else {
            return Err(FfiError::new(EMF_ERR_EMPTY, "the task queue is empty"));
        };
        if !out_priority.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_priority.write(p as u32) };
        }
        // SAFETY: writable by contract.
        unsafe { write_out(out, emf_buf_t::from_vec(t.into_vec()), "out") }
    })
}

/// Writes the queue's counters to `*out`.
///
/// # Safety
///
/// `q` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_task_queue_stats(
    q: *const emf_task_queue_t,
    out: *mut emf_task_queue_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let s = unsafe { borrow(q) }?.stats();
        let c = emf_task_queue_stats_t {
            depth: s.depth as u64,
            primary_depth: s.primary_depth as u64,
            overflow_depth: s.overflow_depth as u64,
            depth_p99: s.depth_p99 as u64,
            max_depth: s.max_depth as u64,
            enqueued: s.enqueued,
            dequeued: s.dequeued,
            spills: s.spills,
            rejections: s.rejections,
            evictions: s.evictions,
        };
        // SAFETY: writable by contract.
        unsafe { write_out(out, c, "out") }
    })
}

type BytesCache = LruCache<Box<[u8]>, Arc<[u8]>>;

/// A cache from byte-string keys to byte-string values. Opaque; thread-safe.
pub struct emf_cache_t {
    cache: Arc<BytesCache>,
    sweeper: Mutex<Option<Sweeper>>,
}

impl Handle for emf_cache_t {
    const KIND: u32 = 10;
    const NAME: &'static str = "cache";
    type Target = Self;
    type Access = Shared;
}

/// Counters of a cache (`emf_cache_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_cache_stats_t {
    /// Entries held now.
    pub len: u64,
    /// Capacity.
    pub capacity: u64,
    /// Gets that found a live entry.
    pub hits: u64,
    /// Gets that found nothing or an expired entry.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries removed because their TTL passed.
    pub expirations: u64,
}

/// Creates a cache of `capacity` entries (0: 10000; at most 2^31) whose entries live `ttl_ms`
/// after they were put (0: forever; `UINT64_MAX`: the default 5000 ms; an entry lives at
/// least its TTL and at most one coarse clock tick, a few ms, longer), over `shards` shards
/// (0: chosen from the capacity and the machine; rounded up to a power of two). The capacity
/// is split evenly over the shards and so rounded up to a multiple of their number
/// (`emf_cache_stats` reports it); memory is taken as entries arrive, not up front.
/// `EMF_ERR_TOO_LARGE` for a capacity above 2^31.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_new(
    capacity: usize,
    ttl_ms: u64,
    shards: u32,
    out: *mut *mut emf_cache_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let d = CacheOptions::default();
        if capacity > 1 << 31 {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("capacity {capacity} is above the limit of 2^31 entries"),
            ));
        }
        let opts = CacheOptions {
            capacity: if capacity == 0 { d.capacity } else { capacity },
            ttl: match ttl_ms {
                0 => None,
                u64::MAX => d.ttl,
                ms => Some(Duration::from_millis(ms)),
            },
            shards: shards as usize,
        };
        let h = new_handle::<emf_cache_t>(emf_cache_t {
            cache: Arc::new(LruCache::new(opts)),
            sweeper: Mutex::new(None),
        })?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a cache (stopping its sweeper). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `c`.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_free(c: *mut emf_cache_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(c) })
}

/// Stores a copy of `value` under a copy of `key` (replacing any value, restarting its TTL).
///
/// # Safety
///
/// `c` a live handle; `key` readable for `key_len`, `value` for `value_len`.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_put(
    c: *const emf_cache_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: caller contract.
        let v = unsafe { bytes(value, value_len, "value") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(c) }?.cache.put(k.into(), v.into());
        Ok(())
    })
}

/// Looks `key` up: on a hit its value is copied to `*out` (free with `emf_buf_free`);
/// `EMF_ERR_NOT_FOUND` on a miss (absent or expired).
///
/// # Safety
///
/// `c` a live handle; `key` readable for `key_len`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_get(
    c: *const emf_cache_t,
    key: *const u8,
    key_len: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let v = unsafe { borrow(c) }?
            .cache
            .get(k)
            .ok_or_else(|| FfiError::new(EMF_ERR_NOT_FOUND, "no live entry for this key"))?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, emf_buf_t::from_vec(v.to_vec()), "out") }
    })
}

/// Looks `key` up and copies its value into `buf` (no allocation); `*out_len` receives the
/// value's length. `EMF_ERR_NOT_FOUND` on a miss; `EMF_ERR_BUFFER_TOO_SMALL` when `cap` is
/// smaller than the value (`*out_len` says how much is needed; the hit is still counted).
///
/// # Safety
///
/// `c` a live handle; `key` readable for `key_len`; `buf` writable for `cap` bytes (NULL
/// when `cap` is 0); `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_get_into(
    c: *const emf_cache_t,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_len, "out_len")?;
        if buf.is_null() && cap > 0 {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(c) }?
            .cache
            .get_with(k, |v| {
                if v.len() <= cap && !v.is_empty() {
                    // SAFETY: `buf` is non-NULL (cap ≥ len > 0) and writable for `cap` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), buf, v.len()) };
                }
                v.len()
            })
            .ok_or_else(|| FfiError::new(EMF_ERR_NOT_FOUND, "no live entry for this key"))?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_len, n, "out_len") }?;
        if n > cap {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!("the value is {n} bytes, the buffer {cap}"),
            ));
        }
        Ok(())
    })
}

/// Removes `key` (live, or expired and not yet swept); `EMF_ERR_NOT_FOUND` when it was
/// absent.
///
/// # Safety
///
/// `c` a live handle; `key` readable for `key_len`.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_remove(
    c: *const emf_cache_t,
    key: *const u8,
    key_len: usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(c) }?
            .cache
            .remove(k)
            .map(|_| ())
            .ok_or_else(|| FfiError::new(EMF_ERR_NOT_FOUND, "no entry for this key"))
    })
}

/// Removes every expired entry now; `*out_removed` (when non-NULL) says how many.
///
/// # Safety
///
/// `c` a live handle; `out_removed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_sweep(
    c: *const emf_cache_t,
    out_removed: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(c) }?.cache.sweep();
        if !out_removed.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_removed.write(n) };
        }
        Ok(())
    })
}

/// Starts (or restarts with a new period) a background thread sweeping expired entries
/// every `every_ms` milliseconds (≥ 1); 0 stops it. It stops when the cache is freed.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_set_sweeper(
    c: *const emf_cache_t,
    every_ms: u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let h = unsafe { borrow(c) }?;
        let mut s = h.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        // Stop the old one first (joins its thread).
        *s = None;
        if every_ms > 0 {
            *s = Some(
                h.cache
                    .start_sweeper(Duration::from_millis(u64::from(every_ms))),
            );
        }
        Ok(())
    })
}

/// Writes the cache's counters to `*out`.
///
/// # Safety
///
/// `c` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cache_stats(
    c: *const emf_cache_t,
    out: *mut emf_cache_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let s = unsafe { borrow(c) }?.cache.stats();
        let st = emf_cache_stats_t {
            len: s.len as u64,
            capacity: s.capacity as u64,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            expirations: s.expirations,
        };
        // SAFETY: writable by contract.
        unsafe { write_out(out, st, "out") }
    })
}

#[cfg(test)]
// Tests drive the C ABI the way C does: several calls per unsafe block read better.
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests {
    use super::*;
    use crate::{emf_buf_free, EMF_ERR_NULL_ARGUMENT, EMF_OK};

    #[test]
    fn task_queue_round_trip_with_back_pressure_and_eviction() {
        let mut q = std::ptr::null_mut();
        // SAFETY: valid out-parameters and inputs throughout; every buffer and the handle
        // are freed once.
        unsafe {
            assert_eq!(
                emf_task_queue_new(1, 1, EMF_DROP_LOW_PRIORITY, &mut q),
                EMF_OK
            );
            let (mut r, mut ev, mut ep) = (9u32, emf_buf_t::EMPTY, 9u32);
            let low = b"low";
            assert_eq!(
                emf_task_queue_enqueue(q, low.as_ptr(), 3, 3, &mut r, &mut ev, &mut ep),
                EMF_OK
            );
            assert_eq!((r, ev.len), (EMF_ENQUEUE_OK, 0));
            assert_eq!(
                emf_task_queue_enqueue(q, b"n".as_ptr(), 1, 2, &mut r, &mut ev, &mut ep),
                EMF_OK
            );
            assert_eq!(r, EMF_ENQUEUE_BACKPRESSURE);
            assert_eq!(
                emf_task_queue_enqueue(q, b"crit".as_ptr(), 4, 0, &mut r, &mut ev, &mut ep),
                EMF_OK
            );
            assert_eq!((r, ep), (EMF_ENQUEUE_EVICTED, 3));
            assert_eq!(std::slice::from_raw_parts(ev.data, ev.len), b"low");
            assert_eq!(emf_buf_free(&mut ev), EMF_OK);
            assert_eq!(
                emf_task_queue_enqueue(
                    q,
                    b"x".as_ptr(),
                    1,
                    2,
                    &mut r,
                    &mut ev,
                    std::ptr::null_mut()
                ),
                EMF_OK
            );
            assert_eq!(r, EMF_ENQUEUE_REJECTED);
            // Bad input.
            assert_eq!(
                emf_task_queue_enqueue(q, b"x".as_ptr(), 1, 4, &mut r, &mut ev, &mut ep),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_task_queue_enqueue(
                    q,
                    b"x".as_ptr(),
                    1,
                    2,
                    std::ptr::null_mut(),
                    &mut ev,
                    &mut ep
                ),
                EMF_ERR_NULL_ARGUMENT
            );
            let mut out = emf_buf_t::EMPTY;
            let mut p = 9;
            assert_eq!(emf_task_queue_dequeue(q, &mut out, &mut p), EMF_OK);
            assert_eq!(
                (std::slice::from_raw_parts(out.data, out.len), p),
                (&b"crit"[..], 0)
            );
            assert_eq!(emf_buf_free(&mut out), EMF_OK);
            assert_eq!(emf_task_queue_dequeue(q, &mut out, &mut p), EMF_OK);
            assert_eq!(emf_buf_free(&mut out), EMF_OK);
            assert_eq!(emf_task_queue_dequeue(q, &mut out, &mut p), EMF_ERR_EMPTY);
            let mut st = emf_task_queue_stats_t::default();
            assert_eq!(emf_task_queue_stats(q, &mut st), EMF_OK);
            assert_eq!(
                (
                    st.enqueued,
                    st.dequeued,
                    st.spills,
                    st.rejections,
                    st.evictions
                ),
                (3, 2, 1, 1, 1)
            );
            assert_eq!(emf_task_queue_free(q), EMF_OK);
            // Stale handle, double free, bad policy.
            assert_eq!(
                emf_task_queue_dequeue(q, &mut out, &mut p),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_task_queue_free(q), EMF_ERR_INVALID_ARGUMENT);
            assert_eq!(
                emf_task_queue_new(1, 1, 7, &mut q),
                EMF_ERR_INVALID_ARGUMENT
            );
        }
    }

    #[test]
    fn cache_round_trip_and_bad_input() {
        let mut c = std::ptr::null_mut();
        // SAFETY: as above.
        unsafe {
            assert_eq!(emf_cache_new(2, 0, 1, &mut c), EMF_OK);
            assert_eq!(
                emf_cache_put(c, b"a".as_ptr(), 1, b"alpha".as_ptr(), 5),
                EMF_OK
            );
            assert_eq!(
                emf_cache_put(c, b"b".as_ptr(), 1, b"beta".as_ptr(), 4),
                EMF_OK
            );
            let mut out = emf_buf_t::EMPTY;
            assert_eq!(emf_cache_get(c, b"a".as_ptr(), 1, &mut out), EMF_OK);
            assert_eq!(std::slice::from_raw_parts(out.data, out.len), b"alpha");
            assert_eq!(emf_buf_free(&mut out), EMF_OK);
            assert_eq!(
                emf_cache_put(c, b"c".as_ptr(), 1, b"gamma".as_ptr(), 5),
                EMF_OK
            ); // evicts b
            assert_eq!(
                emf_cache_get(c, b"b".as_ptr(), 1, &mut out),
                EMF_ERR_NOT_FOUND
            );
            let mut small = [0u8; 2];
            let mut n = 0;
            assert_eq!(
                emf_cache_get_into(c, b"c".as_ptr(), 1, small.as_mut_ptr(), 2, &mut n),
                EMF_ERR_BUFFER_TOO_SMALL
            );
            assert_eq!(n, 5);
            let mut big = [0u8; 8];
            assert_eq!(
                emf_cache_get_into(c, b"c".as_ptr(), 1, big.as_mut_ptr(), 8, &mut n),
                EMF_OK
            );
            assert_eq!(&big[..n], b"gamma");
            assert_eq!(
                emf_cache_get_into(c, b"c".as_ptr(), 1, std::ptr::null_mut(), 8, &mut n),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(emf_cache_remove(c, b"c".as_ptr(), 1), EMF_OK);
            assert_eq!(emf_cache_remove(c, b"c".as_ptr(), 1), EMF_ERR_NOT_FOUND);
            let mut removed = 9;
            assert_eq!(emf_cache_sweep(c, &mut removed), EMF_OK);
            assert_eq!(removed, 0);
            let mut st = emf_cache_stats_t::default();
            assert_eq!(emf_cache_stats(c, &mut st), EMF_OK);
            assert_eq!(
                (st.len, st.capacity, st.hits, st.misses, st.evictions),
                (1, 2, 3, 1, 1)
            );
            assert_eq!(emf_cache_set_sweeper(c, 5), EMF_OK);
            assert_eq!(emf_cache_set_sweeper(c, 0), EMF_OK);
            assert_eq!(emf_cache_set_sweeper(c, 5), EMF_OK); // freed with the cache
            assert_eq!(emf_cache_free(c), EMF_OK);
            assert_eq!(
                emf_cache_put(c, b"a".as_ptr(), 1, b"x".as_ptr(), 1),
                EMF_ERR_INVALID_ARGUMENT
            );
            // A capacity past the limit is TOO_LARGE (the header's rule; it was
            // INVALID_ARGUMENT), the limit itself is fine.
            assert_eq!(emf_cache_new(usize::MAX, 0, 0, &mut c), EMF_ERR_TOO_LARGE);
            assert_eq!(
                emf_cache_new((1 << 31) + 1, 0, 1, &mut c),
                EMF_ERR_TOO_LARGE
            );
            assert_eq!(emf_cache_new(1 << 31, 0, 1, &mut c), EMF_OK);
            assert_eq!(emf_cache_free(c), EMF_OK);
            assert_eq!(
                emf_cache_new(10, 0, 0, std::ptr::null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
        }
    }
}
