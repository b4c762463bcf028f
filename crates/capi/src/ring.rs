//! C ABI of shared-memory rings: rings, producers and consumers as handles.
//!
//! Thread-safety: an `emf_ring_t` may be used from any number of threads. A producer or a
//! consumer is used by one thread at a time; a second thread calling in while the first is
//! inside gets `EMF_ERR_BUSY` (the handles guard themselves, they never race).

use std::ffi::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Exclusive, Handle, Shared};
use super::{
    bytes, c_str, emf_status_t, guard, require_out, slices, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_EMPTY, EMF_ERR_INVALID_ARGUMENT,
};
use engine::ring::{AckMode, Consumer, Producer, RawClaim, Ring, RingOptions, WaitStrategy};
use engine::shm::SegmentOptions;

/// Wait strategy: busy-poll.
pub const EMF_WAIT_SPIN: u32 = 0;
/// Wait strategy: spin, then yield the thread.
pub const EMF_WAIT_YIELD: u32 = 1;
/// Wait strategy: spin, then sleep on a futex in shared memory (woken across processes).
pub const EMF_WAIT_PARK: u32 = 2;

/// Ring flag (`emf_ring_options_t::flags`): every data frame carries a CRC32C of its
/// payload, checked by consumers; a frame whose bytes changed in the ring is skipped and
/// reported as `EMF_ERR_CORRUPT`.
pub const EMF_RING_CHECKSUM: u32 = 1;

/// Acknowledgement mode (`emf_consumer_set_ack_mode`): every receive releases what it
/// delivered (the default). At most once for `emf_consumer_recv` / `_recv_batch` (released
/// before they return); the poll callback's frames are released after it returns.
pub const EMF_ACK_AUTO: u32 = 0;
/// Acknowledgement mode: nothing is released until `emf_consumer_ack`; a consumer that dies
/// before acknowledging has those frames delivered again to the next one (at least once).
pub const EMF_ACK_MANUAL: u32 = 1;

/// Options for `emf_ring_create`; fill with `emf_ring_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_ring_options_t {
    /// Data region size in bytes: a power of two from 4096 to 1 GiB (default 1 MiB).
    pub capacity: usize,
    /// Several producers (default false).
    pub multi_producer: bool,
    /// Producer slots for a multi-producer ring (default 16).
    pub max_producers: u32,
    /// Subscriber slots including the primary consumer (default 8).
    pub max_subscribers: u32,
    /// Milliseconds before a stalled claim's producer is checked for death (default 100).
    pub stall_timeout_ms: u32,
    /// File mode of the segment (default 0600).
    pub mode: u32,
    /// Directory of the segment file, NUL-terminated; NULL for `/dev/shm`.
    pub dir: *const c_char,
    /// `EMF_RING_*` bits (default 0).
    pub flags: u32,
}

/// A ring's counters, read without attaching.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_ring_stats_t {
    /// Data region size.
    pub capacity: u64,
    /// Claim position.
    pub tail: u64,
    /// Frames committed by all producers.
    pub sent: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Frames delivered to the primary consumer.
    pub received: u64,
    /// Claims refused for lack of space.
    pub backpressure: u64,
    /// Dead producers' claims skipped.
    pub unblocked: u64,
    /// Dead participants reaped.
    pub dead_reaped: u64,
    /// Largest lag seen, bytes.
    pub max_lag: u64,
    /// Invalid frames seen.
    pub corrupt_frames: u64,
    /// Producer slots in use.
    pub producers: u32,
    /// Active subscriber slots (the primary consumer's included).
    pub subscribers: u32,
}

/// One frame of a batch to send.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_slice_t {
    /// The bytes (may be NULL when `len` is 0).
    pub data: *const u8,
    /// Their number.
    pub len: usize,
}

/// Called by `emf_consumer_poll` for each frame; `data` is valid only during the call.
/// Return 0 to go on, anything else to stop after this frame (which counts as consumed).
pub type emf_frame_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> c_int>;

/// A mapped ring. Opaque; thread-safe.
pub struct emf_ring_t {
    _private: (),
}

impl Handle for emf_ring_t {
    const KIND: u32 = 2;
    const NAME: &'static str = "ring";
    type Target = Ring;
    type Access = Shared;
}

/// What an `emf_producer_t` holds: the producer and the claim C is writing into, if any.
pub(crate) struct ProducerState {
    producer: Producer,
    open: Option<RawClaim>,
}

impl ProducerState {
    /// Refuses while a claim is open: a send would overlap it.
    fn no_open_claim(&self) -> FfiResult {
        if self.open.is_some() {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                "the producer has an open claim: commit or abort it first",
            ));
        }
        Ok(())
    }

    /// The open claim, or an error when there is none.
    fn open_claim(&self) -> FfiResult<&RawClaim> {
        self.open.as_ref().ok_or_else(no_open_claim)
    }

    /// Takes the open claim out, or an error when there is none.
    fn take_claim(&mut self) -> FfiResult<RawClaim> {
        self.open.take().ok_or_else(no_open_claim)
    }
}

fn no_open_claim() -> FfiError {
    FfiError::new(EMF_ERR_INVALID_ARGUMENT, "the producer has no open claim")
}

/// A producer attached to a ring. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_producer_t {
    _private: (),
}

impl Handle for emf_producer_t {
    const KIND: u32 = 3;
    const NAME: &'static str = "producer";
    type Target = ProducerState;
    type Access = Exclusive;
}

/// A consumer or subscriber of a ring. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_consumer_t {
    _private: (),
}

impl Handle for emf_consumer_t {
    const KIND: u32 = 4;
    const NAME: &'static str = "consumer";
    type Target = Consumer;
    type Access = Exclusive;
}

fn seg_opts(dir: *const c_char, mode: u32) -> FfiResult<SegmentOptions> {
    let mut o = SegmentOptions::default();
    if !dir.is_null() {
        o.dir = PathBuf::from(c_str(dir, "dir")?);
    }
    if mode != 0 {
        if mode & !0o777 != 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("mode {mode:o} has bits outside 0777"),
            ));
        }
        o.mode = mode;
    }
    Ok(o)
}

fn strategy(code: u32) -> FfiResult<WaitStrategy> {
    match code {
        EMF_WAIT_SPIN => Ok(WaitStrategy::Spin),
        EMF_WAIT_YIELD => Ok(WaitStrategy::SpinThenYield { spins: 100 }),
        EMF_WAIT_PARK => Ok(WaitStrategy::SpinThenPark { spins: 100 }),
        _ => Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("unknown wait strategy {code}"),
        )),
    }
}

/// Fills `*out` with the default ring options.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_options_default(out: *mut emf_ring_options_t) -> emf_status_t {
    guard(|| {
        let d = RingOptions::default();
        let o = emf_ring_options_t {
            capacity: d.capacity,
            multi_producer: d.multi_producer,
            max_producers: d.max_producers as u32,
            max_subscribers: d.max_subscribers as u32,
            stall_timeout_ms: d.stall_timeout.as_millis() as u32,
            mode: 0o600,
            dir: std::ptr::null(),
            flags: 0,
        };
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out, o, "out") }
    })
}

/// Creates ring `name` (a stale segment of that name is replaced; a live one gives
/// `EMF_ERR_BUSY`). `opts` may be NULL for the defaults.
///
/// # Safety
///
/// `name` a NUL-terminated string; `opts` NULL or readable (its `dir` NULL or a
/// NUL-terminated string); `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_create(
    name: *const c_char,
    opts: *const emf_ring_options_t,
    out: *mut *mut emf_ring_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let name = c_str(name, "name")?;
        let mut o = RingOptions::default();
        if !opts.is_null() {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            let c = unsafe { opts.read_unaligned() };
            o.capacity = c.capacity;
            o.multi_producer = c.multi_producer;
            o.max_producers = c.max_producers as usize;
            o.max_subscribers = c.max_subscribers as usize;
            o.stall_timeout = Duration::from_millis(c.stall_timeout_ms as u64);
            o.segment = seg_opts(c.dir, c.mode)?;
            if c.flags & !EMF_RING_CHECKSUM != 0 {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!("unknown ring flags {:#x}", c.flags & !EMF_RING_CHECKSUM),
                ));
            }
            o.checksum = c.flags & EMF_RING_CHECKSUM != 0;
        }
        let h = new_handle::<emf_ring_t>(Ring::create(name, &o)?)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Opens an existing ring. `dir` may be NULL for `/dev/shm`.
///
/// # Safety
///
/// `name` a NUL-terminated string; `dir` NULL or one; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_open(
    name: *const c_char,
    dir: *const c_char,
    out: *mut *mut emf_ring_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let name = c_str(name, "name")?;
        let h = new_handle::<emf_ring_t>(Ring::open(name, &seg_opts(dir, 0)?)?)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Releases a ring handle (producers and consumers keep the mapping alive). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `ring`.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_free(ring: *mut emf_ring_t) -> emf_status_t {
    // SAFETY: caller contract; liveness checked by the slab.
    guard(|| unsafe { free(ring) })
}

/// Removes the ring's file; processes that mapped it keep working.
///
/// # Safety
///
/// `ring` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_unlink(ring: *const emf_ring_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(ring) }?;
        Ok(r.unlink()?)
    })
}

/// Closes the ring to producers: every later send or claim answers `EMF_ERR_CLOSED`;
/// consumers still drain what was committed.
///
/// # Safety
///
/// `ring` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_close(ring: *const emf_ring_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(ring) }?;
        r.close();
        Ok(())
    })
}

/// Stores the largest payload one frame can carry in `*out`.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_max_payload(
    ring: *const emf_ring_t,
    out: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let r = unsafe { borrow(ring) }?;
        // SAFETY: writable by contract.
        unsafe { write_out(out, r.max_payload(), "out") }
    })
}

/// Reads the ring's counters into `*out`.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_ring_stats(
    ring: *const emf_ring_t,
    out: *mut emf_ring_stats_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let s = unsafe { borrow(ring) }?.stats();
        let st = emf_ring_stats_t {
            capacity: s.capacity,
            tail: s.tail,
            sent: s.sent,
            bytes: s.bytes,
            received: s.received,
            backpressure: s.backpressure,
            unblocked: s.unblocked,
            dead_reaped: s.dead_reaped,
            max_lag: s.max_lag,
            corrupt_frames: s.corrupt_frames,
            producers: s.producers.iter().filter(|p| p.alive).count() as u32,
            subscribers: s.subscribers.len() as u32,
        };
        // SAFETY: writable by contract.
        unsafe { write_out(out, st, "out") }
    })
}

/// Attaches a producer (`EMF_ERR_BUSY` when a single-producer ring already has a live one).
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_new(
    ring: *const emf_ring_t,
    out: *mut *mut emf_producer_t,
) -> emf_status_t {
    guard(|| new_producer(ring, None, out))
}

/// Attaches a producer in slot `slot` (0 on a single-producer ring), taking it over when its
/// holder died; `EMF_ERR_BUSY` while a live producer holds it. A producer restarted in its
/// predecessor's slot reads with `emf_producer_committed` how many frames the slot has
/// committed, so one that numbers its frames can resend exactly the missing ones.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_new_in_slot(
    ring: *const emf_ring_t,
    slot: u32,
    out: *mut *mut emf_producer_t,
) -> emf_status_t {
    guard(|| new_producer(ring, Some(slot as usize), out))
}

fn new_producer(
    ring: *const emf_ring_t,
    slot: Option<usize>,
    out: *mut *mut emf_producer_t,
) -> FfiResult {
    require_out(out, "out")?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let r = unsafe { borrow(ring) }?;
    let producer = match slot {
        Some(i) => r.producer_in_slot(i)?,
        None => r.producer()?,
    };
    let h = new_handle::<emf_producer_t>(ProducerState {
        producer,
        open: None,
    })?;
    // SAFETY: writable by contract.
    unsafe { write_out(out, h, "out") }
}

/// Stores in `*out` the frames committed through the producer's slot so far, by it and by
/// every earlier holder of the slot (a predecessor that was killed included), and in
/// `*out_slot` (if not NULL) the slot's index. A frame counts once its send returned.
///
/// # Safety
///
/// `p` a live handle; `out` writable; `out_slot` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_committed(
    p: *mut emf_producer_t,
    out: *mut u64,
    out_slot: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let s = unsafe { borrow(p) }?;
        let (n, slot) = (s.producer.committed(), s.producer.slot_index() as u32);
        if !out_slot.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { write_out(out_slot, slot, "out_slot") }?;
        }
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, n, "out") }
    })
}

/// Detaches and frees a producer; an open claim is aborted. NULL is fine.
///
/// # Safety
///
/// No other thread may be using `p`.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_free(p: *mut emf_producer_t) -> emf_status_t {
    guard(|| {
        if !p.is_null() {
            // SAFETY: liveness checked by the slab; the caller's contract excludes concurrent
            // use. The borrow ends (its busy flag released) before the free below.
            let mut s = unsafe { borrow(p) }?;
            if let Some(c) = s.open.take() {
                s.producer.abort_raw(c);
            }
        }
        // SAFETY: caller contract; the slab refuses a double free, the busy flag a free while
        // the producer is in use.
        unsafe { free(p) }
    })
}

/// Sends one frame. `EMF_ERR_FULL` when the ring is full: nothing was sent, the caller keeps
/// the data and may retry, wait (`emf_producer_send_timeout`) or give up.
///
/// # Safety
///
/// `p` a live handle; `data` readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_send(
    p: *mut emf_producer_t,
    data: *const u8,
    len: usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let b = unsafe { bytes(data, len, "data") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        s.no_open_claim()?;
        Ok(s.producer.send(b)?)
    })
}

/// Sends one frame, waiting for space with `strategy` (`EMF_WAIT_*`) up to `timeout_ms`;
/// `EMF_ERR_TIMEOUT` when no space came.
///
/// # Safety
///
/// `p` a live handle; `data` readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_send_timeout(
    p: *mut emf_producer_t,
    data: *const u8,
    len: usize,
    strategy_code: u32,
    timeout_ms: u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let b = unsafe { bytes(data, len, "data") }?;
        let st = strategy(strategy_code)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        s.no_open_claim()?;
        Ok(s.producer
            .send_timeout(b, st, Duration::from_millis(timeout_ms as u64))?)
    })
}

/// Sends `n` frames in order with one claim; `*out_sent` says how many were sent. Frames
/// `out_sent..n` were not sent (back-pressure) and stay the caller's. Returns `EMF_OK` even
/// when only some were sent; `EMF_ERR_FULL` when none could be.
///
/// # Safety
///
/// `p` a live handle; `frames` readable for `n` slices, each readable for its length;
/// `out_sent` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_send_batch(
    p: *mut emf_producer_t,
    frames: *const emf_slice_t,
    n: usize,
    out_sent: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_sent, "out_sent")?;
        // SAFETY: caller contract.
        let slices = unsafe { slices(frames, n) }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        s.no_open_claim()?;
        let sent = s.producer.send_batch(&slices)?;
        if sent == 0 && n > 0 {
            return Err(FfiError::new(
                super::EMF_ERR_FULL,
                "ring is full: no frame of the batch fits",
            ));
        }
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_sent, sent, "out_sent") }
    })
}

/// Claims room for one frame of `len` bytes and stores a pointer to it in `*out_data`:
/// write the payload there, then `emf_producer_commit` (or `emf_producer_abort`). The
/// pointer is valid until then. One claim at a time per producer.
///
/// # Safety
///
/// `p` a live handle; `out_data` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_claim(
    p: *mut emf_producer_t,
    len: usize,
    out_data: *mut *mut u8,
) -> emf_status_t {
    guard(|| {
        require_out(out_data, "out_data")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        s.no_open_claim()?;
        let c = s.producer.claim_raw(len)?;
        let ptr = s.producer.raw_payload(&c);
        s.open = Some(c);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_data, ptr, "out_data") }
    })
}

/// Commits the open claim with its first `len` bytes (at most the claimed length).
///
/// # Safety
///
/// `p` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_commit(p: *mut emf_producer_t, len: usize) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        let claimed = s.open_claim()?.len();
        if len > claimed {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("commit of {len} bytes exceeds the claim of {claimed} (claim still open)"),
            ));
        }
        let c = s.take_claim()?;
        s.producer.commit_raw(c, len);
        Ok(())
    })
}

/// Aborts the open claim (its space becomes padding; nothing is delivered).
///
/// # Safety
///
/// `p` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_producer_abort(p: *mut emf_producer_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut s = unsafe { borrow(p) }?;
        let c = s.take_claim()?;
        s.producer.abort_raw(c);
        Ok(())
    })
}

fn new_consumer(
    ring: *const emf_ring_t,
    out: *mut *mut emf_consumer_t,
    subscribe: bool,
) -> FfiResult {
    require_out(out, "out")?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let r = unsafe { borrow(ring) }?;
    let c = if subscribe {
        r.subscribe()?
    } else {
        r.consumer()?
    };
    let h = new_handle::<emf_consumer_t>(c)?;
    // SAFETY: writable by contract.
    unsafe { write_out(out, h, "out") }
}

/// Attaches the primary consumer (it resumes where the previous one stopped);
/// `EMF_ERR_BUSY` while another live process holds it.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_new(
    ring: *const emf_ring_t,
    out: *mut *mut emf_consumer_t,
) -> emf_status_t {
    guard(|| new_consumer(ring, out, false))
}

/// Attaches a fan-out subscriber that sees every frame committed from now on.
///
/// # Safety
///
/// `ring` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_subscribe(
    ring: *const emf_ring_t,
    out: *mut *mut emf_consumer_t,
) -> emf_status_t {
    guard(|| new_consumer(ring, out, true))
}

/// Detaches and frees a consumer. NULL is fine.
///
/// # Safety
///
/// No other thread may be using `c`.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_free(c: *mut emf_consumer_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free, the busy flag a free while the
    // consumer is in use (by its own poll callback, say).
    guard(|| unsafe { free(c) })
}

/// Calls `callback(ctx, data, len)` for up to `limit` ready frames, in order, then releases
/// their space; `*out_count` receives how many. `data` is valid only during the callback,
/// which must not call functions of the same consumer (they answer `EMF_ERR_BUSY`); a
/// callback returning non-zero stops the poll after its frame.
///
/// # Safety
///
/// `c` a live handle; `callback` a valid function; `out_count` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_poll(
    c: *mut emf_consumer_t,
    limit: usize,
    callback: emf_frame_fn,
    ctx: *mut c_void,
    out_count: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_count, "out_count")?;
        let cb = callback.ok_or_else(|| FfiError::null("callback"))?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        // The callback runs while this borrow holds the busy flag: a call of its own on `c`
        // answers EMF_ERR_BUSY.
        let n = cons.poll_until(limit, |f| {
            // SAFETY: the caller provides a valid function; `f` is valid for the call.
            unsafe { cb(ctx, f.as_ptr(), f.len()) == 0 }
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_count, n, "out_count") }
    })
}

/// Copies the next frame into `buf` and consumes it; its length goes to `*out_len`.
/// `EMF_ERR_EMPTY` when none is ready; `EMF_ERR_BUFFER_TOO_SMALL` when `cap` is too small
/// (the frame stays; `*out_len` receives the length needed).
///
/// # Safety
///
/// `c` a live handle; `buf` writable for `cap` bytes; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_recv(
    c: *mut emf_consumer_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    let mut needed = None;
    let st = guard(|| {
        require_out(out_len, "out_len")?;
        if buf.is_null() && cap > 0 {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        let Some(len) = cons.next_len()? else {
            return Err(FfiError::new(EMF_ERR_EMPTY, "no frame is ready"));
        };
        if len > cap {
            needed = Some(len);
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!("the frame is {len} bytes, the buffer {cap}"),
            ));
        }
        let out: &mut [u8] = if cap == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL, writable for `cap` bytes by contract.
            unsafe { std::slice::from_raw_parts_mut(buf, cap) }
        };
        let got = cons.recv_into(out)?.unwrap_or(0);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_len, got, "out_len") }
    });
    if st == EMF_ERR_BUFFER_TOO_SMALL {
        if let Some(n) = needed {
            // SAFETY: out_len was checked non-NULL before this status could arise.
            unsafe { out_len.write(n) };
        }
    }
    st
}

/// Copies up to `max_frames` ready frames into `buf`, each as a little-endian `uint32_t`
/// length followed by its bytes, and consumes them. `*out_frames` and `*out_bytes` say how
/// many frames and bytes. `EMF_OK` with 0 frames when none is ready;
/// `EMF_ERR_BUFFER_TOO_SMALL` when the next frame does not fit (nothing consumed; the bytes
/// needed for it, length prefix included, go to `*out_bytes`).
///
/// # Safety
///
/// `c` a live handle; `buf` writable for `cap` bytes; outs writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_recv_batch(
    c: *mut emf_consumer_t,
    buf: *mut u8,
    cap: usize,
    max_frames: usize,
    out_frames: *mut usize,
    out_bytes: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_frames, "out_frames")?;
        require_out(out_bytes, "out_bytes")?;
        if buf.is_null() && cap > 0 {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        if let Some(len) = cons.next_len()? {
            if len + 4 > cap {
                // The documented required-length answer of EMF_ERR_BUFFER_TOO_SMALL.
                // SAFETY: checked non-NULL above; writable by contract.
                unsafe { out_bytes.write(len + 4) };
                return Err(FfiError::new(
                    EMF_ERR_BUFFER_TOO_SMALL,
                    format!(
                        "the next frame needs {} bytes, the buffer has {cap}",
                        len + 4
                    ),
                ));
            }
        }
        let out: &mut [u8] = if cap == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL, writable for `cap` bytes by contract.
            unsafe { std::slice::from_raw_parts_mut(buf, cap) }
        };
        let (frames, used) = cons.recv_batch_into(out, max_frames)?;
        // SAFETY: both checked non-NULL; writable by contract.
        unsafe { write_out(out_frames, frames, "out_frames") }?;
        // SAFETY: as above.
        unsafe { write_out(out_bytes, used, "out_bytes") }
    })
}

/// Waits until a frame is ready (`*out_ready = true`) or `timeout_ms` passes (false).
///
/// # Safety
///
/// `c` a live handle; `out_ready` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_wait(
    c: *mut emf_consumer_t,
    strategy_code: u32,
    timeout_ms: u32,
    out_ready: *mut bool,
) -> emf_status_t {
    guard(|| {
        require_out(out_ready, "out_ready")?;
        let st = strategy(strategy_code)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        let ready = cons.wait(st, Duration::from_millis(timeout_ms as u64))?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_ready, ready, "out_ready") }
    })
}

/// Chooses when the consumer releases what it delivered: `EMF_ACK_AUTO` (the default: every
/// receive releases) or `EMF_ACK_MANUAL` (nothing is released until `emf_consumer_ack`;
/// frames delivered and not acknowledged when the consumer dies are delivered again to the
/// next one). Switching to `EMF_ACK_AUTO` acknowledges what was delivered.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_set_ack_mode(
    c: *mut emf_consumer_t,
    mode: u32,
) -> emf_status_t {
    guard(|| {
        let mode = match mode {
            EMF_ACK_AUTO => AckMode::Auto,
            EMF_ACK_MANUAL => AckMode::Manual,
            _ => {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!("unknown acknowledgement mode {mode}"),
                ))
            }
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        cons.set_ack_mode(mode);
        Ok(())
    })
}

/// Releases every frame delivered so far (their space goes back to producers; a consumer
/// attaching later starts after them). Needed only in `EMF_ACK_MANUAL` mode.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_ack(c: *mut emf_consumer_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        cons.ack();
        Ok(())
    })
}

/// Forgets the frames delivered since the last acknowledgement: the next receive delivers
/// them again, in order. `*out_unacked` (if not NULL) receives how many there were.
///
/// # Safety
///
/// `c` a live handle; `out_unacked` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_rewind(
    c: *mut emf_consumer_t,
    out_unacked: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut cons = unsafe { borrow(c) }?;
        let n = cons.unacked();
        cons.rewind();
        if out_unacked.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL, writable by contract.
        unsafe { write_out(out_unacked, n, "out_unacked") }
    })
}

/// Stores in `*out` how many delivered frames are not acknowledged yet.
///
/// # Safety
///
/// `c` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_unacked(
    c: *mut emf_consumer_t,
    out: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(c) }?.unacked();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, n, "out") }
    })
}

/// Stores in `*out` the bytes committed or claimed that this consumer has not consumed.
///
/// # Safety
///
/// `c` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_consumer_lag(c: *mut emf_consumer_t, out: *mut u64) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let lag = unsafe { borrow(c) }?.lag();
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out, lag, "out") }
    })
}

#[cfg(test)]
// These tests drive the C functions the way a C caller does; grouping several calls with the
// same justification in one block reads better than one block per call here.
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests {
    use super::*;
    use crate::{EMF_ERR_BUSY, EMF_ERR_FULL, EMF_ERR_NULL_ARGUMENT, EMF_OK};
    use std::ffi::CString;

    unsafe extern "C" fn collect(ctx: *mut c_void, data: *const u8, len: usize) -> c_int {
        // SAFETY: ctx is the &mut Vec passed below; data is valid for len bytes.
        let v = unsafe { &mut *ctx.cast::<Vec<Vec<u8>>>() };
        // SAFETY: valid for the call.
        v.push(unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
        0
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn ring_round_trip_through_the_abi() {
        let dir = std::env::temp_dir().join(format!("emf-capi-ring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = CString::new(dir.to_str().unwrap()).unwrap();
        let name = CString::new("abi").unwrap();
        let mut o = std::mem::MaybeUninit::uninit();
        // SAFETY: writable out-parameter.
        assert_eq!(unsafe { emf_ring_options_default(o.as_mut_ptr()) }, EMF_OK);
        // SAFETY: initialised on success.
        let mut o = unsafe { o.assume_init() };
        o.capacity = 4096;
        o.dir = cdir.as_ptr();
        let mut ring = std::ptr::null_mut();
        // SAFETY: valid strings, options and out-parameter.
        let st = unsafe { emf_ring_create(name.as_ptr(), &o, &mut ring) };
        assert_eq!(st, EMF_OK);
        let mut p = std::ptr::null_mut();
        // SAFETY: live ring, valid out.
        assert_eq!(unsafe { emf_producer_new(ring, &mut p) }, EMF_OK);
        let mut p2 = std::ptr::null_mut();
        // SAFETY: single-producer ring: a second producer is refused.
        assert_eq!(unsafe { emf_producer_new(ring, &mut p2) }, EMF_ERR_BUSY);
        // SAFETY: valid input.
        assert_eq!(unsafe { emf_producer_send(p, b"one".as_ptr(), 3) }, EMF_OK);
        let mut slot = std::ptr::null_mut();
        // SAFETY: valid out.
        assert_eq!(unsafe { emf_producer_claim(p, 5, &mut slot) }, EMF_OK);
        // SAFETY: an open claim refuses other sends (no overlapping frames).
        let st = unsafe { emf_producer_send(p, b"x".as_ptr(), 1) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: the claim gave 5 writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(b"two!!".as_ptr(), slot, 5) };
        // SAFETY: live producer with an open claim.
        assert_eq!(unsafe { emf_producer_commit(p, 3) }, EMF_OK);
        // SAFETY: no open claim any more.
        let st = unsafe { emf_producer_commit(p, 3) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        let frames = [
            emf_slice_t {
                data: b"a".as_ptr(),
                len: 1,
            },
            emf_slice_t {
                data: std::ptr::null(),
                len: 0,
            },
        ];
        let mut sent = 0;
        // SAFETY: valid slices.
        let st = unsafe { emf_producer_send_batch(p, frames.as_ptr(), 2, &mut sent) };
        assert_eq!((st, sent), (EMF_OK, 2));
        // SAFETY: NULL data with a length is refused.
        let st = unsafe { emf_producer_send(p, std::ptr::null(), 4) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);

        let mut c = std::ptr::null_mut();
        // SAFETY: live ring, valid out.
        assert_eq!(unsafe { emf_consumer_new(ring, &mut c) }, EMF_OK);
        let mut small = [0u8; 2];
        let mut len = 0;
        // SAFETY: buffer of 2 bytes.
        let st = unsafe { emf_consumer_recv(c, small.as_mut_ptr(), 2, &mut len) };
        assert_eq!((st, len), (EMF_ERR_BUFFER_TOO_SMALL, 3));
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut n = 0;
        // SAFETY: valid callback and context.
        let st = unsafe {
            emf_consumer_poll(
                c,
                16,
                Some(collect),
                (&mut got as *mut Vec<Vec<u8>>).cast(),
                &mut n,
            )
        };
        assert_eq!((st, n), (EMF_OK, 4));
        assert_eq!(
            got,
            [b"one".to_vec(), b"two".to_vec(), b"a".to_vec(), vec![]]
        );
        // SAFETY: empty now.
        let st = unsafe { emf_consumer_recv(c, small.as_mut_ptr(), 2, &mut len) };
        assert_eq!(st, EMF_ERR_EMPTY);
        // Fill the ring: back-pressure is EMF_ERR_FULL.
        let big = [0u8; 900];
        let mut st = EMF_OK;
        for _ in 0..10 {
            // SAFETY: valid input.
            st = unsafe { emf_producer_send(p, big.as_ptr(), big.len()) };
            if st != EMF_OK {
                break;
            }
        }
        assert_eq!(st, EMF_ERR_FULL);
        let mut buf = vec![0u8; 8];
        let (mut frames_n, mut used) = (0, 0);
        // SAFETY: a frame larger than the buffer is refused, nothing consumed.
        let st = unsafe {
            emf_consumer_recv_batch(c, buf.as_mut_ptr(), buf.len(), 8, &mut frames_n, &mut used)
        };
        assert_eq!((st, used), (EMF_ERR_BUFFER_TOO_SMALL, 904));
        buf.resize(4096, 0);
        // SAFETY: valid buffer.
        let st = unsafe {
            emf_consumer_recv_batch(c, buf.as_mut_ptr(), buf.len(), 8, &mut frames_n, &mut used)
        };
        assert_eq!(st, EMF_OK);
        assert!(frames_n >= 3 && used == frames_n * 904, "{frames_n} {used}");
        let mut stats = emf_ring_stats_t::default();
        // SAFETY: valid out.
        assert_eq!(unsafe { emf_ring_stats(ring, &mut stats) }, EMF_OK);
        assert!(stats.backpressure >= 1);
        assert_eq!(stats.received as usize, 4 + frames_n);
        // SAFETY: live handles, freed once each; second frees refused.
        unsafe {
            assert_eq!(emf_consumer_free(c), EMF_OK);
            assert_eq!(emf_consumer_free(c), EMF_ERR_INVALID_ARGUMENT);
            assert_eq!(emf_producer_free(p), EMF_OK);
            assert_eq!(emf_ring_unlink(ring), EMF_OK);
            assert_eq!(emf_ring_free(ring), EMF_OK);
            assert_eq!(emf_ring_free(ring), EMF_ERR_INVALID_ARGUMENT);
            // A freed ring handle used again is refused, not dereferenced.
            assert_eq!(emf_producer_new(ring, &mut p2), EMF_ERR_INVALID_ARGUMENT);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What `reenter` saw: its own consumer, and the statuses and messages of its calls.
    struct Reentry {
        consumer: *mut emf_consumer_t,
        seen: Vec<(emf_status_t, String)>,
    }

    fn last_error() -> String {
        let mut buf = [0 as c_char; 256];
        let mut n = 0usize;
        // SAFETY: 256 writable bytes and a writable length.
        let st = unsafe { crate::emf_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!(st, EMF_OK);
        // SAFETY: NUL-terminated by the call.
        let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        s.to_string_lossy().into_owned()
    }

    unsafe extern "C" fn reenter(ctx: *mut c_void, _data: *const u8, _len: usize) -> c_int {
        // SAFETY: ctx is the &mut Reentry passed by the test.
        let r = unsafe { &mut *ctx.cast::<Reentry>() };
        let mut lag = 0;
        // SAFETY: a live handle, in use by the poll that called us.
        let st = unsafe { emf_consumer_lag(r.consumer, &mut lag) };
        r.seen.push((st, last_error()));
        // SAFETY: as above; the free must be refused, not done.
        let st = unsafe { emf_consumer_free(r.consumer) };
        r.seen.push((st, last_error()));
        1
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn a_callback_reentering_its_consumer_is_busy_and_cannot_free_it() {
        let dir = std::env::temp_dir().join(format!("emf-capi-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = CString::new(dir.to_str().unwrap()).unwrap();
        let name = CString::new("busy").unwrap();
        let mut o = std::mem::MaybeUninit::uninit();
        // SAFETY: writable out-parameter.
        assert_eq!(unsafe { emf_ring_options_default(o.as_mut_ptr()) }, EMF_OK);
        // SAFETY: initialised on success.
        let mut o = unsafe { o.assume_init() };
        o.capacity = 4096;
        o.dir = cdir.as_ptr();
        let (mut ring, mut p, mut c) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: valid arguments throughout; every handle is freed once at the end.
        unsafe {
            assert_eq!(emf_ring_create(name.as_ptr(), &o, &mut ring), EMF_OK);
            assert_eq!(emf_producer_new(ring, &mut p), EMF_OK);
            assert_eq!(emf_consumer_new(ring, &mut c), EMF_OK);
            assert_eq!(emf_producer_send(p, b"a".as_ptr(), 1), EMF_OK);
            assert_eq!(emf_producer_send(p, b"b".as_ptr(), 1), EMF_OK);
        }
        let mut r = Reentry {
            consumer: c,
            seen: Vec::new(),
        };
        let mut n = 0;
        // SAFETY: a valid callback and context; `r` outlives the call.
        let st = unsafe {
            emf_consumer_poll(c, 8, Some(reenter), (&mut r as *mut Reentry).cast(), &mut n)
        };
        assert_eq!((st, n), (EMF_OK, 1));
        let busy = "`consumer` is in use by another thread";
        assert_eq!(r.seen[0], (EMF_ERR_BUSY, busy.to_owned()));
        let busy_free = format!("{busy} (or by its own callback)");
        assert_eq!(r.seen[1], (EMF_ERR_BUSY, busy_free));
        // Released when the poll returned: the consumer is still live and usable.
        let (mut buf, mut len) = ([0u8; 4], 0);
        // SAFETY: valid buffer and handles; freed once each.
        unsafe {
            assert_eq!(emf_consumer_recv(c, buf.as_mut_ptr(), 4, &mut len), EMF_OK);
            assert_eq!(&buf[..len], b"b");
            // A producer's open claim is aborted by its free.
            let mut slot = std::ptr::null_mut();
            assert_eq!(emf_producer_claim(p, 3, &mut slot), EMF_OK);
            assert_eq!(emf_producer_free(p), EMF_OK);
            let st = emf_consumer_recv(c, buf.as_mut_ptr(), 4, &mut len);
            assert_eq!(st, EMF_ERR_EMPTY);
            assert_eq!(emf_consumer_free(c), EMF_OK);
            assert_eq!(emf_ring_unlink(ring), EMF_OK);
            assert_eq!(emf_ring_free(ring), EMF_OK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn ack_mode_slots_checksums_and_counts_through_the_abi() {
        let dir = std::env::temp_dir().join(format!("emf-capi-ack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = CString::new(dir.to_str().unwrap()).unwrap();
        let name = CString::new("ack").unwrap();
        let mut o = std::mem::MaybeUninit::uninit();
        // SAFETY: writable out-parameter.
        assert_eq!(unsafe { emf_ring_options_default(o.as_mut_ptr()) }, EMF_OK);
        // SAFETY: initialised on success.
        let mut o = unsafe { o.assume_init() };
        assert_eq!(o.flags, 0);
        o.capacity = 4096;
        o.dir = cdir.as_ptr();
        o.multi_producer = true;
        o.flags = 0x80;
        let mut ring = std::ptr::null_mut();
        // SAFETY: valid arguments; unknown flags are refused.
        let st = unsafe { emf_ring_create(name.as_ptr(), &o, &mut ring) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        o.flags = EMF_RING_CHECKSUM;
        // SAFETY: valid arguments.
        let st = unsafe { emf_ring_create(name.as_ptr(), &o, &mut ring) };
        assert_eq!(st, EMF_OK);
        let mut p = std::ptr::null_mut();
        // SAFETY: a slot that does not exist.
        let st = unsafe { emf_producer_new_in_slot(ring, 99, &mut p) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: live ring, valid out.
        assert_eq!(unsafe { emf_producer_new_in_slot(ring, 5, &mut p) }, EMF_OK);
        let mut p2 = std::ptr::null_mut();
        // SAFETY: the slot is held.
        let st = unsafe { emf_producer_new_in_slot(ring, 5, &mut p2) };
        assert_eq!(st, EMF_ERR_BUSY);
        for f in [b"f0", b"f1", b"f2"] {
            // SAFETY: valid input.
            assert_eq!(unsafe { emf_producer_send(p, f.as_ptr(), 2) }, EMF_OK);
        }
        let (mut committed, mut slot) = (0u64, 0u32);
        // SAFETY: valid outs.
        let st = unsafe { emf_producer_committed(p, &mut committed, &mut slot) };
        assert_eq!((st, committed, slot), (EMF_OK, 3, 5));
        // SAFETY: NULL out refused.
        let st = unsafe { emf_producer_committed(p, std::ptr::null_mut(), &mut slot) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        let frames = [emf_slice_t {
            data: b"x".as_ptr(),
            len: 1,
        }];
        let mut sent = 0;
        // SAFETY: a count past the limit is TOO_LARGE (before any slice is read).
        let st = unsafe { emf_producer_send_batch(p, frames.as_ptr(), 1 << 40, &mut sent) };
        assert_eq!(st, super::super::EMF_ERR_TOO_LARGE);

        let mut c = std::ptr::null_mut();
        // SAFETY: live ring, valid out.
        assert_eq!(unsafe { emf_consumer_new(ring, &mut c) }, EMF_OK);
        // SAFETY: unknown mode refused.
        let st = unsafe { emf_consumer_set_ack_mode(c, 7) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: live consumer.
        let st = unsafe { emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL) };
        assert_eq!(st, EMF_OK);
        let mut buf = [0u8; 16];
        let mut len = 0;
        for want in [b"f0", b"f1"] {
            // SAFETY: valid buffer.
            let st = unsafe { emf_consumer_recv(c, buf.as_mut_ptr(), 16, &mut len) };
            assert_eq!((st, &buf[..len]), (EMF_OK, &want[..]));
        }
        let mut unacked = 0;
        // SAFETY: valid out.
        assert_eq!(unsafe { emf_consumer_unacked(c, &mut unacked) }, EMF_OK);
        assert_eq!(unacked, 2);
        // SAFETY: live consumer; frees it without acknowledging (like a crash).
        assert_eq!(unsafe { emf_consumer_free(c) }, EMF_OK);
        // SAFETY: live ring, valid out.
        assert_eq!(unsafe { emf_consumer_new(ring, &mut c) }, EMF_OK);
        // SAFETY: live consumer.
        let st = unsafe { emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL) };
        assert_eq!(st, EMF_OK);
        // SAFETY: valid buffer.
        let st = unsafe { emf_consumer_recv(c, buf.as_mut_ptr(), 16, &mut len) };
        assert_eq!((st, &buf[..len]), (EMF_OK, &b"f0"[..]), "delivered again");
        // SAFETY: live consumer, valid out.
        assert_eq!(unsafe { emf_consumer_rewind(c, &mut unacked) }, EMF_OK);
        assert_eq!(unacked, 1);
        // SAFETY: valid buffer.
        let st = unsafe { emf_consumer_recv(c, buf.as_mut_ptr(), 16, &mut len) };
        assert_eq!((st, &buf[..len]), (EMF_OK, &b"f0"[..]), "rewound");
        // SAFETY: live consumer.
        assert_eq!(unsafe { emf_consumer_ack(c) }, EMF_OK);
        // SAFETY: live handles, freed once.
        unsafe {
            assert_eq!(emf_consumer_free(c), EMF_OK);
            assert_eq!(emf_consumer_new(ring, &mut c), EMF_OK);
            let st = emf_consumer_recv(c, buf.as_mut_ptr(), 16, &mut len);
            assert_eq!(
                (st, &buf[..len]),
                (EMF_OK, &b"f1"[..]),
                "f0 was acknowledged"
            );
            assert_eq!(emf_consumer_free(c), EMF_OK);
            assert_eq!(emf_producer_free(p), EMF_OK);
            assert_eq!(emf_ring_unlink(ring), EMF_OK);
            assert_eq!(emf_ring_free(ring), EMF_OK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
