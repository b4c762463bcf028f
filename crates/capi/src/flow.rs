//! C ABI of the router, the batch processor and shared state.
//!
//! Thread-safety: a router and a batch processor are used by one thread at a time (a second
//! thread calling in gets `EMF_ERR_BUSY`). A state store may be used from any thread; a state
//! value handle is immutable and may be read from any thread until freed.

use std::ffi::c_char;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::handle::{borrow, free, new_handle, Exclusive, Handle, Shared};
use super::ring::{emf_consumer_t, emf_ring_t, emf_slice_t};
use super::{
    bytes, c_str, emf_status_t, guard, require_out, slices, write_out, FfiError, FfiResult,
};
use engine::batch::{BatchOptions, BatchProcessor, FlushReason};
use engine::router::{Router, RouterOptions};
use engine::state::{SharedValue, StateRef, StateStore};

/// No flush happened.
pub const EMF_FLUSH_NONE: u32 = 0;
/// Flushed: batch size reached.
pub const EMF_FLUSH_SIZE: u32 = 1;
/// Flushed: batch timeout passed.
pub const EMF_FLUSH_TIMEOUT: u32 = 2;
/// Flushed: the consumer was idle and waiting.
pub const EMF_FLUSH_IDLE: u32 = 3;
/// Flushed on demand.
pub const EMF_FLUSH_DEMAND: u32 = 4;

fn reason_code(r: Option<FlushReason>) -> u32 {
    match r {
        None => EMF_FLUSH_NONE,
        Some(FlushReason::Size) => EMF_FLUSH_SIZE,
        Some(FlushReason::Timeout) => EMF_FLUSH_TIMEOUT,
        Some(FlushReason::Idle) => EMF_FLUSH_IDLE,
        Some(FlushReason::Demand) => EMF_FLUSH_DEMAND,
    }
}

fn dir_or_default(dir: *const c_char) -> FfiResult<PathBuf> {
    Ok(if dir.is_null() {
        PathBuf::from(engine::shm::DEFAULT_DIR)
    } else {
        PathBuf::from(c_str(dir, "dir")?)
    })
}

/// A router sending to agents' inboxes by name. Opaque; one thread at a time.
pub struct emf_router_t {
    _private: (),
}

impl Handle for emf_router_t {
    const KIND: u32 = 5;
    const NAME: &'static str = "router";
    type Target = Router;
    type Access = Exclusive;
}

/// Creates a router whose inboxes live in `dir` (NULL: `/dev/shm`) with `inbox_capacity`
/// bytes each (0: 1 MiB).
///
/// # Safety
///
/// `dir` NULL or NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_router_new(
    dir: *const c_char,
    inbox_capacity: usize,
    out: *mut *mut emf_router_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let mut opts = RouterOptions::in_dir(&dir_or_default(dir)?);
        if inbox_capacity != 0 {
            opts.inbox.capacity = inbox_capacity;
        }
        let h = new_handle::<emf_router_t>(Router::new(opts))?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a router. NULL is fine.
///
/// # Safety
///
/// No other thread may be using `r`.
#[no_mangle]
pub unsafe extern "C" fn emf_router_free(r: *mut emf_router_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free, the busy flag a free while the
    // router is in use.
    guard(|| unsafe { free(r) })
}

/// Creates (or reopens after a restart) `agent`'s inbox and attaches its consumer. Agent
/// names are 1-194 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`
/// (`EMF_ERR_INVALID_ARGUMENT` otherwise, here and in every router call taking an agent).
///
/// # Safety
///
/// `r` a live handle; `agent` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_router_register_agent(
    r: *mut emf_router_t,
    agent: *const c_char,
    out: *mut *mut emf_consumer_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let agent = c_str(agent, "agent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let c = unsafe { borrow(r) }?.register_agent(agent)?;
        let h = new_handle::<emf_consumer_t>(c)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Removes `agent`'s inbox.
///
/// # Safety
///
/// `r` a live handle; `agent` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn emf_router_unregister_agent(
    r: *mut emf_router_t,
    agent: *const c_char,
) -> emf_status_t {
    guard(|| {
        let agent = c_str(agent, "agent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        Ok(unsafe { borrow(r) }?.unregister_agent(agent)?)
    })
}

/// Sends one message to `agent`: `EMF_ERR_FULL` when its inbox is full (nothing sent),
/// `EMF_ERR_NOT_FOUND` when it has no inbox.
///
/// # Safety
///
/// `r` a live handle; `agent` NUL-terminated; `data` readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn emf_router_send_direct(
    r: *mut emf_router_t,
    agent: *const c_char,
    data: *const u8,
    len: usize,
) -> emf_status_t {
    guard(|| {
        let agent = c_str(agent, "agent")?;
        // SAFETY: caller contract.
        let b = unsafe { bytes(data, len, "data") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        Ok(unsafe { borrow(r) }?.send_direct(agent, b)?)
    })
}

/// Sends `n` messages to `agent` in order; `*out_accepted` says how many were sent.
/// Messages `*out_accepted..n` were not accepted (back-pressure) and stay the caller's.
/// `EMF_ERR_FULL` when none could be sent.
///
/// # Safety
///
/// `r` a live handle; `agent` NUL-terminated; `frames` readable for `n` slices;
/// `out_accepted` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_router_send_batch(
    r: *mut emf_router_t,
    agent: *const c_char,
    frames: *const emf_slice_t,
    n: usize,
    out_accepted: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_accepted, "out_accepted")?;
        let agent = c_str(agent, "agent")?;
        // SAFETY: caller contract.
        let slices = unsafe { slices(frames, n) }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let out = unsafe { borrow(r) }?.send_batch(agent, &slices)?;
        if out.accepted == 0 && n > 0 {
            // As emf_producer_send_batch: nothing fit is back-pressure, not success.
            return Err(FfiError::new(
                super::EMF_ERR_FULL,
                "the agent's inbox is full: no message of the batch fits",
            ));
        }
        // SAFETY: writable by contract.
        unsafe { write_out(out_accepted, out.accepted, "out_accepted") }
    })
}

/// A batch processor. Opaque; one thread at a time.
pub struct emf_batch_t {
    _private: (),
}

impl Handle for emf_batch_t {
    const KIND: u32 = 6;
    const NAME: &'static str = "batch";
    type Target = BatchProcessor;
    type Access = Exclusive;
}

/// Creates a batch processor sending to `ring` through its own producer. Zero arguments take
/// the original design's defaults: `batch_size` 100, `timeout_ms` 10, `max_pending` 10000.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_new(
    ring: *const emf_ring_t,
    batch_size: usize,
    timeout_ms: u32,
    max_pending: usize,
    out: *mut *mut emf_batch_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let d = BatchOptions::default();
        let opts = BatchOptions {
            batch_size: if batch_size == 0 {
                d.batch_size
            } else {
                batch_size
            },
            batch_timeout: if timeout_ms == 0 {
                d.batch_timeout
            } else {
                Duration::from_millis(timeout_ms as u64)
            },
            max_pending: if max_pending == 0 {
                d.max_pending
            } else {
                max_pending
            },
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let producer = unsafe { borrow(ring) }?.producer()?;
        let h = new_handle::<emf_batch_t>(BatchProcessor::new(producer, opts))?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a batch processor; pending messages are flushed first when they fit
/// (`EMF_ERR_FULL` and nothing freed when some could not be sent — flush later or drop them
/// knowingly with `emf_batch_discard`). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `b`.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_free(b: *mut emf_batch_t) -> emf_status_t {
    guard(|| {
        if b.is_null() {
            return Ok(());
        }
        {
            // SAFETY: liveness checked by the slab; the caller's contract excludes concurrent
            // use. The borrow ends (its busy flag released) before the free below.
            let mut p = unsafe { borrow(b) }?;
            p.flush()?;
            if p.pending() > 0 {
                return Err(FfiError::new(
                    super::EMF_ERR_FULL,
                    format!(
                        "{} messages could not be sent; nothing was freed",
                        p.pending()
                    ),
                ));
            }
        }
        // SAFETY: caller contract; the slab refuses a double free.
        unsafe { free(b) }
    })
}

/// Frees a batch processor and the messages it still holds, and stores their number in
/// `*out_discarded` (may be NULL).
///
/// # Safety
///
/// No other thread may be using `b`; `out_discarded` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_discard(
    b: *mut emf_batch_t,
    out_discarded: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes concurrent use.
        // A temporary: the borrow ends (its busy flag released) with this statement.
        let n = unsafe { borrow(b) }?.pending();
        // SAFETY: caller contract; the slab refuses a double free.
        unsafe { free(b) }?;
        if !out_discarded.is_null() {
            // SAFETY: non-NULL and writable by contract.
            unsafe { out_discarded.write(n) };
        }
        Ok(())
    })
}

/// Queues one message; `*out_flush` receives an `EMF_FLUSH_*` code saying whether (and why)
/// a batch was sent. `EMF_ERR_FULL` when `max_pending` messages are waiting (not queued).
///
/// # Safety
///
/// `b` a live handle; `data` readable for `len` bytes; `out_flush` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_send(
    b: *mut emf_batch_t,
    data: *const u8,
    len: usize,
    out_flush: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out_flush, "out_flush")?;
        // SAFETY: caller contract.
        let d = unsafe { bytes(data, len, "data") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(b) }?.send_message(d)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_flush, reason_code(r), "out_flush") }
    })
}

/// Flushes when the batch timeout has passed (call from a timer); `*out_flush` as above.
///
/// # Safety
///
/// `b` a live handle; `out_flush` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_tick(b: *mut emf_batch_t, out_flush: *mut u32) -> emf_status_t {
    guard(|| {
        require_out(out_flush, "out_flush")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(b) }?.tick(Instant::now())?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_flush, reason_code(r), "out_flush") }
    })
}

/// Sends everything pending that fits; `*out_sent` says how many.
///
/// # Safety
///
/// `b` a live handle; `out_sent` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_flush(
    b: *mut emf_batch_t,
    out_sent: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_sent, "out_sent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(b) }?.flush()?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_sent, n, "out_sent") }
    })
}

/// Stores the number of pending messages in `*out_pending` and the milliseconds until the
/// timeout flush is due in `*out_due_ms` (-1 when nothing is pending, 0 when overdue).
///
/// # Safety
///
/// `b` a live handle; outs writable.
#[no_mangle]
pub unsafe extern "C" fn emf_batch_pending(
    b: *mut emf_batch_t,
    out_pending: *mut usize,
    out_due_ms: *mut i64,
) -> emf_status_t {
    guard(|| {
        require_out(out_pending, "out_pending")?;
        require_out(out_due_ms, "out_due_ms")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let p = unsafe { borrow(b) }?;
        let due = p.deadline().map_or(-1, |d| {
            d.saturating_duration_since(Instant::now()).as_millis() as i64
        });
        let n = p.pending();
        // SAFETY: both checked non-NULL; writable by contract.
        unsafe { write_out(out_pending, n, "out_pending") }?;
        // SAFETY: as above.
        unsafe { write_out(out_due_ms, due, "out_due_ms") }
    })
}

/// A store of shared values. Opaque; thread-safe.
pub struct emf_state_store_t {
    _private: (),
}

impl Handle for emf_state_store_t {
    const KIND: u32 = 7;
    const NAME: &'static str = "store";
    type Target = StateStore;
    type Access = Shared;
}

/// A shared value mapped for reading. Opaque; immutable; thread-safe.
pub struct emf_state_value_t {
    _private: (),
}

impl Handle for emf_state_value_t {
    const KIND: u32 = 8;
    const NAME: &'static str = "value";
    type Target = SharedValue;
    type Access = Shared;
}

/// Opens the state store `name` in `dir` (NULL: `/dev/shm`).
///
/// # Safety
///
/// `name` NUL-terminated; `dir` NULL or NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_state_open(
    name: *const c_char,
    dir: *const c_char,
    out: *mut *mut emf_state_store_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let store = StateStore::open(c_str(name, "name")?, &dir_or_default(dir)?)?;
        let h = new_handle::<emf_state_store_t>(store)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a state store handle (shared values stay). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `s`.
#[no_mangle]
pub unsafe extern "C" fn emf_state_free(s: *mut emf_state_store_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(s) })
}

/// Shares `value` under `key` and stores its reference in `*out_ref`; the key's previous
/// reference is retired (its current readers keep it).
///
/// # Safety
///
/// `s` a live handle; `key` NUL-terminated; `value` readable for `len`; `out_ref` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_state_share(
    s: *const emf_state_store_t,
    key: *const c_char,
    value: *const u8,
    len: usize,
    out_ref: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_ref, "out_ref")?;
        // SAFETY: caller contract.
        let v = unsafe { bytes(value, len, "value") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(s) }?.share_state(c_str(key, "key")?, v)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_ref, r.0, "out_ref") }
    })
}

/// Stores the current reference of `key` in `*out_ref` (`EMF_ERR_NOT_FOUND` when none).
///
/// # Safety
///
/// `s` a live handle; `key` NUL-terminated; `out_ref` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_state_lookup(
    s: *const emf_state_store_t,
    key: *const c_char,
    out_ref: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_ref, "out_ref")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(s) }?.lookup(c_str(key, "key")?)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out_ref, r.0, "out_ref") }
    })
}

/// Maps the value of `state_ref` for reading (`EMF_ERR_NOT_FOUND` when released or
/// replaced). Read it with `emf_state_value_data`; free it with `emf_state_value_free`.
///
/// # Safety
///
/// `s` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_state_read(
    s: *const emf_state_store_t,
    state_ref: u64,
    out: *mut *mut emf_state_value_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let value = unsafe { borrow(s) }?.read_shared_state(StateRef(state_ref))?;
        let h = new_handle::<emf_state_value_t>(value)?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Stores a pointer to the value's bytes and their length; valid until the value is freed.
///
/// # Safety
///
/// `v` a live handle; outs writable.
#[no_mangle]
pub unsafe extern "C" fn emf_state_value_data(
    v: *const emf_state_value_t,
    out_data: *mut *const u8,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_data, "out_data")?;
        require_out(out_len, "out_len")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let bytes = unsafe { borrow(v) }?.value();
        // SAFETY: both checked non-NULL; writable by contract.
        unsafe { write_out(out_data, bytes.as_ptr(), "out_data") }?;
        // SAFETY: as above.
        unsafe { write_out(out_len, bytes.len(), "out_len") }
    })
}

/// Releases a mapped value (the memory is reclaimed once nobody maps it and it was
/// released or replaced). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `v`.
#[no_mangle]
pub unsafe extern "C" fn emf_state_value_free(v: *mut emf_state_value_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(v) })
}

/// Retires `state_ref`: new reads get `EMF_ERR_NOT_FOUND`; current readers keep it.
///
/// # Safety
///
/// `s` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_state_release(
    s: *const emf_state_store_t,
    state_ref: u64,
) -> emf_status_t {
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    guard(|| Ok(unsafe { borrow(s) }?.release(StateRef(state_ref))?))
}

#[cfg(test)]
// C-style driving of the ABI: several calls per block share one justification.
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests {
    use super::*;
    use crate::{EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND, EMF_OK};
    use std::ffi::CString;

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn router_batch_and_state_through_the_abi() {
        let dir = std::env::temp_dir().join(format!("emf-capi-flow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = CString::new(dir.to_str().unwrap()).unwrap();
        let agent = CString::new("worker").unwrap();
        let ghost = CString::new("ghost").unwrap();
        // SAFETY: valid strings and out-parameters throughout; handles freed once.
        unsafe {
            let mut r = std::ptr::null_mut();
            assert_eq!(emf_router_new(cdir.as_ptr(), 4096, &mut r), EMF_OK);
            let mut inbox = std::ptr::null_mut();
            assert_eq!(
                emf_router_register_agent(r, agent.as_ptr(), &mut inbox),
                EMF_OK
            );
            assert_eq!(
                emf_router_send_direct(r, agent.as_ptr(), b"hi".as_ptr(), 2),
                EMF_OK
            );
            assert_eq!(
                emf_router_send_direct(r, ghost.as_ptr(), b"hi".as_ptr(), 2),
                EMF_ERR_NOT_FOUND
            );
            // Names that would make the files `inbox.`, `inbox..`, `inbox...` are refused
            // everywhere, as ring and state store names are.
            for bad in ["", ".", ".."] {
                let bad = CString::new(bad).unwrap();
                let mut out = std::ptr::null_mut();
                assert_eq!(
                    emf_router_register_agent(r, bad.as_ptr(), &mut out),
                    EMF_ERR_INVALID_ARGUMENT,
                    "{bad:?}"
                );
                assert!(out.is_null());
                assert_eq!(
                    emf_router_unregister_agent(r, bad.as_ptr()),
                    EMF_ERR_INVALID_ARGUMENT
                );
                assert_eq!(
                    emf_router_send_direct(r, bad.as_ptr(), b"hi".as_ptr(), 2),
                    EMF_ERR_INVALID_ARGUMENT
                );
            }
            for f in ["emf-inbox.", "emf-inbox..", "emf-inbox..."] {
                assert!(!dir.join(f).exists(), "{f}");
            }
            let big = [1u8; 1000];
            let frames: Vec<emf_slice_t> = (0..10)
                .map(|_| emf_slice_t {
                    data: big.as_ptr(),
                    len: big.len(),
                })
                .collect();
            let mut accepted = 0;
            let st = emf_router_send_batch(r, agent.as_ptr(), frames.as_ptr(), 10, &mut accepted);
            assert_eq!(st, EMF_OK);
            assert!(accepted > 0 && accepted < 10, "{accepted}");
            let mut buf = vec![0u8; 1 << 16];
            let (mut n, mut used) = (0, 0);
            let st = crate::ring::emf_consumer_recv_batch(
                inbox,
                buf.as_mut_ptr(),
                buf.len(),
                100,
                &mut n,
                &mut used,
            );
            assert_eq!((st, n), (EMF_OK, 1 + accepted));
            assert_eq!(crate::ring::emf_consumer_free(inbox), EMF_OK);
            assert_eq!(emf_router_unregister_agent(r, agent.as_ptr()), EMF_OK);
            assert_eq!(emf_router_free(r), EMF_OK);

            let name = CString::new("b").unwrap();
            let mut o = std::mem::MaybeUninit::uninit();
            crate::ring::emf_ring_options_default(o.as_mut_ptr());
            let mut o = o.assume_init();
            o.dir = cdir.as_ptr();
            let mut ring = std::ptr::null_mut();
            assert_eq!(
                crate::ring::emf_ring_create(name.as_ptr(), &o, &mut ring),
                EMF_OK
            );
            let mut b = std::ptr::null_mut();
            assert_eq!(emf_batch_new(ring, 3, 50, 0, &mut b), EMF_OK);
            let mut flush = 99;
            // No consumer has caught up yet at position 0 == tail 0: idle, flushed at once.
            assert_eq!(emf_batch_send(b, b"a".as_ptr(), 1, &mut flush), EMF_OK);
            assert_eq!(flush, EMF_FLUSH_IDLE);
            let (mut pending, mut due) = (9, 9);
            assert_eq!(emf_batch_pending(b, &mut pending, &mut due), EMF_OK);
            assert_eq!((pending, due), (0, -1));
            assert_eq!(emf_batch_free(b), EMF_OK);
            assert_eq!(crate::ring::emf_ring_unlink(ring), EMF_OK);
            assert_eq!(crate::ring::emf_ring_free(ring), EMF_OK);

            let store_name = CString::new("st").unwrap();
            let key = CString::new("registry").unwrap();
            let mut s = std::ptr::null_mut();
            assert_eq!(
                emf_state_open(store_name.as_ptr(), cdir.as_ptr(), &mut s),
                EMF_OK
            );
            let mut r1 = 0;
            assert_eq!(
                emf_state_share(s, key.as_ptr(), b"v1".as_ptr(), 2, &mut r1),
                EMF_OK
            );
            let mut v = std::ptr::null_mut();
            assert_eq!(emf_state_read(s, r1, &mut v), EMF_OK);
            let mut r2 = 0;
            assert_eq!(
                emf_state_share(s, key.as_ptr(), b"v2!".as_ptr(), 3, &mut r2),
                EMF_OK
            );
            let (mut p, mut len) = (std::ptr::null(), 0);
            assert_eq!(emf_state_value_data(v, &mut p, &mut len), EMF_OK);
            assert_eq!(
                std::slice::from_raw_parts(p, len),
                b"v1",
                "held value survives"
            );
            assert_eq!(emf_state_value_free(v), EMF_OK);
            let mut v2 = std::ptr::null_mut();
            assert_eq!(emf_state_read(s, r1, &mut v2), EMF_ERR_NOT_FOUND);
            let mut found = 0;
            assert_eq!(emf_state_lookup(s, key.as_ptr(), &mut found), EMF_OK);
            assert_eq!(found, r2);
            assert_eq!(emf_state_release(s, r2), EMF_OK);
            assert_eq!(emf_state_release(s, r2), EMF_ERR_NOT_FOUND);
            assert_eq!(emf_state_free(s), EMF_OK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
