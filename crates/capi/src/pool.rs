//! C ABI of the pool manager (`emf_pool_*`) over `engine::sched::Pool`: keeps a pool of agents
//! of one type between `min_size` and `max_size` (pre-warmed, replaced when they die, grown
//! under demand, shrunk when idle). The rules are those of the engine's `sched::pool` module.
//!
//! The pool is a state machine without I/O: every event carries the caller's clock reading
//! `now_us` (µs of any monotonic clock, the same one for every call on a handle). The host
//! starts and stops agents when [`emf_pool_poll_action`] says so and reports back with
//! [`emf_pool_started`] / [`emf_pool_start_failed`] / [`emf_pool_agent_gone`].
//!
//! Thread-safety: an `emf_pool_t` is used by one thread at a time; a second thread calling in
//! while another is inside gets `EMF_ERR_BUSY` (the handle guards itself, it never races).

use std::ffi::c_char;

use super::handle::{borrow, free, new_handle, Exclusive, Handle};
use super::{
    c_str, emf_status_t, guard, require_out, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL,
};
use engine::sched::{AgentId, AgentType, Pool, PoolAction, PoolConfig};

/// Action kind (`emf_pool_poll_action`): no action is pending.
pub const EMF_POOL_ACTION_NONE: u32 = 0;
/// Action kind: start one agent of the pool's type and answer with `emf_pool_started(slot,
/// id)` or `emf_pool_start_failed(slot)`.
pub const EMF_POOL_ACTION_START: u32 = 1;
/// Action kind: stop the (idle) agent named in the buffer gracefully; it no longer counts in
/// the pool, and `emf_pool_agent_gone` for it afterwards is expected.
pub const EMF_POOL_ACTION_STOP: u32 = 2;

/// Options for `emf_pool_new`; fill with `emf_pool_options_default` first. Every value is used
/// as given and checked (out of range: `EMF_ERR_INVALID_ARGUMENT`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_pool_options_t {
    /// Agents kept alive at all times, dead ones replaced (default 5; at most `max_size`).
    pub min_size: u32,
    /// Never more agents, live and starting, than this (default 20; at least 1).
    pub max_size: u32,
    /// Starts in flight at once (default 2; at least 1).
    pub max_starting: u32,
    /// An agent idle this long while more than `min_size` are live is stopped (default 60 s;
    /// at least 1).
    pub idle_timeout_us: u64,
    /// At most one start per this period, the first at once (default 100 ms; may be 0).
    pub warmup_delay_us: u64,
    /// A start not answered by then counts as failed (default 30 s; at least 1).
    pub start_timeout_us: u64,
    /// The longest back-off after consecutive failed starts, which wait
    /// `max(warmup_delay, 10 ms) × 2^n` (default 30 s; at least 1).
    pub max_backoff_us: u64,
}

/// A pool's counters (`emf_pool_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_pool_stats_t {
    /// Agents live (started, not gone, not told to stop).
    pub live: u32,
    /// Starts in flight.
    pub starting: u32,
    /// Live agents with no task in flight.
    pub idle: u32,
    /// Live agents with tasks in flight.
    pub busy: u32,
    /// Agents told to stop, not yet reported gone.
    pub stopping: u32,
    /// Starts that succeeded.
    pub started_total: u64,
    /// STOP actions issued.
    pub stopped_total: u64,
    /// Starts that failed (reported, or timed out).
    pub failed_starts: u64,
    /// Starts that timed out (included in `failed_starts`).
    pub timed_out_starts: u64,
    /// Live agents reported gone (deaths).
    pub died: u64,
    /// Successful starts that replaced a dead agent.
    pub replaced: u64,
}

/// A pool manager. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_pool_t {
    _private: (),
}

impl Handle for emf_pool_t {
    const KIND: u32 = 14;
    const NAME: &'static str = "pool";
    type Target = Pool;
    type Access = Exclusive;
}

fn agent_id(p: *const c_char) -> FfiResult<AgentId> {
    Ok(AgentId::new(c_str(p, "agent")?)?)
}

fn options_default() -> emf_pool_options_t {
    // The type is replaced by emf_pool_new's argument.
    let d = PoolConfig::new(AgentType::new("default").expect("a valid type"));
    emf_pool_options_t {
        min_size: d.min_size,
        max_size: d.max_size,
        max_starting: d.max_starting,
        idle_timeout_us: d.idle_timeout,
        warmup_delay_us: d.warmup_delay,
        start_timeout_us: d.start_timeout,
        max_backoff_us: d.max_backoff,
    }
}

/// Fills `*out` with the default pool options.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_options_default(out: *mut emf_pool_options_t) -> emf_status_t {
    // SAFETY: writable by contract (NULL checked inside).
    guard(|| unsafe { write_out(out, options_default(), "out") })
}

/// Creates a pool manager for agents of type `agent_type` (1-255 bytes of UTF-8) with options
/// `opts` (NULL: the defaults). Nothing is started until its first event (typically
/// `emf_pool_ensure_min`).
///
/// # Safety
///
/// `opts` NULL or readable; `agent_type` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_new(
    opts: *const emf_pool_options_t,
    agent_type: *const c_char,
    out: *mut *mut emf_pool_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let o = if opts.is_null() {
            options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let ty = AgentType::new(c_str(agent_type, "agent_type")?)?;
        let pool = Pool::new(PoolConfig {
            agent_type: ty,
            min_size: o.min_size,
            max_size: o.max_size,
            idle_timeout: o.idle_timeout_us,
            warmup_delay: o.warmup_delay_us,
            max_starting: o.max_starting,
            start_timeout: o.start_timeout_us,
            max_backoff: o.max_backoff_us,
        })?;
        let h = new_handle::<emf_pool_t>(pool)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a pool manager (the agents it started are the host's; nothing is stopped). NULL is
/// fine.
///
/// # Safety
///
/// No other thread may be using `p`.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_free(p: *mut emf_pool_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(p) })
}

/// Brings the pool towards `min_size` (the original `ensure_min_pool/0`): times out late
/// starts and issues the starts the warm-up rule allows now (one per `warmup_delay_us`, at
/// most `max_starting` in flight, fewer during a back-off).
///
/// # Safety
///
/// `p` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_ensure_min(p: *mut emf_pool_t, now_us: u64) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.ensure_min(now_us);
        Ok(())
    })
}

/// Start `slot` succeeded: agent `agent` (an agent id: 1-194 characters of
/// `A-Z a-z 0-9 . _ -`, not starting with `.`) is live and idle. A start that had timed out is
/// adopted when there is room, else a STOP for the agent follows. `EMF_ERR_NOT_FOUND` for a
/// slot never issued; `EMF_ERR_INVALID_ARGUMENT` for a slot already answered or an id already
/// in the pool. Nothing changes on an error.
///
/// # Safety
///
/// `p` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_started(
    p: *mut emf_pool_t,
    slot: u64,
    agent: *const c_char,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.started(slot, id, now_us)?;
        Ok(())
    })
}

/// Start `slot` failed for `reason` (NULL: none given; for the host's log). Failed starts back
/// off exponentially (bounded by `max_backoff_us`). Errors as `emf_pool_started`.
///
/// # Safety
///
/// `p` a live handle; `reason` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_start_failed(
    p: *mut emf_pool_t,
    slot: u64,
    reason: *const c_char,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        let why = if reason.is_null() {
            "no reason given"
        } else {
            c_str(reason, "reason")?
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.start_failed(slot, why, now_us)?;
        Ok(())
    })
}

/// Agent `agent` died or stopped. A live one is a death: replaced if the pool falls below
/// `min_size`. One told to stop is forgotten. `EMF_ERR_NOT_FOUND` for an agent not in the pool.
///
/// # Safety
///
/// `p` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_agent_gone(
    p: *mut emf_pool_t,
    agent: *const c_char,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.agent_gone(&id, now_us)?;
        Ok(())
    })
}

/// Agent `agent` has `in_flight` tasks now (0: idle). Ignored for an agent told to stop;
/// `EMF_ERR_NOT_FOUND` for one not in the pool.
///
/// # Safety
///
/// `p` a live handle; `agent` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_observe(
    p: *mut emf_pool_t,
    agent: *const c_char,
    in_flight: u32,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        let id = agent_id(agent)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.observe(&id, in_flight, now_us)?;
        Ok(())
    })
}

/// `queued` tasks of the pool's type wait (replaces the previous reading). When more wait than
/// starts are in flight and no live agent is idle, one more agent is started.
///
/// # Safety
///
/// `p` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_demand(
    p: *mut emf_pool_t,
    queued: usize,
    now_us: u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.demand(queued, now_us);
        Ok(())
    })
}

/// Advances time: times out late starts, stops agents idle past `idle_timeout_us` above
/// `min_size`, issues the starts the rules allow. Call it regularly (or at
/// `emf_pool_next_deadline`).
///
/// # Safety
///
/// `p` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_tick(p: *mut emf_pool_t, now_us: u64) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(p) }?.tick(now_us);
        Ok(())
    })
}

/// Takes the next action to carry out, oldest first: `*out_kind` is `EMF_POOL_ACTION_*`;
/// `*out_slot` the START's slot (else 0); for a STOP the agent's id is written into
/// `agent_buf` (at most `agent_cap - 1` bytes and a NUL) and its length into `*out_agent_len`
/// (0 for the other kinds, with `agent_buf[0]` = NUL when `agent_cap` > 0). When the id does
/// not fit: `EMF_ERR_BUFFER_TOO_SMALL`, `*out_agent_len` says how long it is, and the action
/// stays pending (poll again with a larger buffer; 195 bytes always suffice).
///
/// # Safety
///
/// `p` a live handle; `out_kind`, `out_slot`, `out_agent_len` writable; `agent_buf` writable
/// for `agent_cap` bytes (NULL when `agent_cap` is 0).
#[no_mangle]
pub unsafe extern "C" fn emf_pool_poll_action(
    p: *mut emf_pool_t,
    out_kind: *mut u32,
    out_slot: *mut u64,
    agent_buf: *mut c_char,
    agent_cap: usize,
    out_agent_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_kind, "out_kind")?;
        require_out(out_slot, "out_slot")?;
        require_out(out_agent_len, "out_agent_len")?;
        if agent_buf.is_null() && agent_cap > 0 {
            return Err(FfiError::null("agent_buf"));
        }
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(p) }?;
        let (kind, slot, name): (u32, u64, &[u8]) = match h.peek_action() {
            None => (EMF_POOL_ACTION_NONE, 0, b""),
            Some(PoolAction::Start { slot }) => (EMF_POOL_ACTION_START, *slot, b""),
            Some(PoolAction::Stop { agent }) => {
                (EMF_POOL_ACTION_STOP, 0, agent.as_str().as_bytes())
            }
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_agent_len, name.len(), "out_agent_len") }?;
        if agent_cap == 0 && name.is_empty() {
            // Nothing to write: no buffer needed.
        } else if name.len() >= agent_cap {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the agent id is {} bytes and a NUL, the buffer {agent_cap}",
                    name.len()
                ),
            ));
        } else {
            // SAFETY: `agent_buf` is non-NULL (cap > len ≥ 0) and writable for `agent_cap` >
            // len bytes; the name is the pool's, so the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr(), agent_buf.cast::<u8>(), name.len());
            }
            // SAFETY: len < cap: in bounds of the caller's buffer.
            let end = unsafe { agent_buf.add(name.len()) };
            // SAFETY: `end` is in bounds (above) and writable by contract.
            unsafe { end.write(0) };
        }
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_kind, kind, "out_kind") }?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_slot, slot, "out_slot") }?;
        h.poll_action();
        Ok(())
    })
}

/// The clock reading at which the pool next needs `emf_pool_tick` (a delayed start, a start
/// timeout, an idle agent to stop) into `*out_us`; `UINT64_MAX` when nothing is pending in
/// time. Hosts may sleep until then instead of ticking at a fixed period (events in between
/// may bring it forward: read it again after each).
///
/// # Safety
///
/// `p` a live handle; `out_us` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_next_deadline(
    p: *mut emf_pool_t,
    out_us: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_us, "out_us")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let d = unsafe { borrow(p) }?.next_deadline().unwrap_or(u64::MAX);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_us, d, "out_us") }
    })
}

/// Writes the pool's counters to `*out`.
///
/// # Safety
///
/// `p` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pool_stats(
    p: *mut emf_pool_t,
    out: *mut emf_pool_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let s = unsafe { borrow(p) }?.stats();
        let o = emf_pool_stats_t {
            live: s.live,
            starting: s.starting,
            idle: s.idle,
            busy: s.busy,
            stopping: s.stopping,
            started_total: s.started_total,
            stopped_total: s.stopped_total,
            failed_starts: s.failed_starts,
            timed_out_starts: s.timed_out_starts,
            died: s.died,
            replaced: s.replaced,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, o, "out") }
    })
}

#[cfg(test)]
// Tests drive the C ABI the way C does: several calls per unsafe block read better.
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests {
    use super::*;
    use crate::{EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND, EMF_ERR_NULL_ARGUMENT, EMF_OK};
    use std::ptr::{null, null_mut};

    fn new(min: u32, max: u32) -> *mut emf_pool_t {
        let mut o = options_default();
        o.min_size = min;
        o.max_size = max;
        let mut p = null_mut();
        // SAFETY: valid arguments.
        let st = unsafe { emf_pool_new(&o, c"coder".as_ptr(), &mut p) };
        assert_eq!(st, EMF_OK);
        p
    }

    /// (kind, slot, agent) of the next action.
    fn poll(p: *mut emf_pool_t) -> (u32, u64, String) {
        let (mut kind, mut slot, mut len) = (9, 9, 9);
        let mut buf = [0 as c_char; 200];
        // SAFETY: live handle, writable out-parameters and buffer.
        let st = unsafe {
            emf_pool_poll_action(
                p,
                &mut kind,
                &mut slot,
                buf.as_mut_ptr(),
                buf.len(),
                &mut len,
            )
        };
        assert_eq!(st, EMF_OK);
        let name: Vec<u8> = buf[..len].iter().map(|&c| c as u8).collect();
        (kind, slot, String::from_utf8(name).unwrap())
    }

    fn stats(p: *mut emf_pool_t) -> emf_pool_stats_t {
        let mut s = emf_pool_stats_t::default();
        // SAFETY: live handle, writable out-parameter.
        assert_eq!(unsafe { emf_pool_stats(p, &mut s) }, EMF_OK);
        s
    }

    #[test]
    fn warm_up_idle_stop_and_a_small_buffer_keeps_the_action() {
        let p = new(1, 3);
        // SAFETY: a live handle and valid strings throughout.
        unsafe {
            assert_eq!(emf_pool_ensure_min(p, 0), EMF_OK);
            assert_eq!(poll(p), (EMF_POOL_ACTION_START, 1, String::new()));
            assert_eq!(poll(p).0, EMF_POOL_ACTION_NONE);
            assert_eq!(emf_pool_started(p, 1, c"w-1".as_ptr(), 10), EMF_OK);
            assert_eq!(emf_pool_observe(p, c"w-1".as_ptr(), 2, 10), EMF_OK);
            assert_eq!(emf_pool_demand(p, 5, 100_000), EMF_OK);
            assert_eq!(poll(p), (EMF_POOL_ACTION_START, 2, String::new()));
            assert_eq!(emf_pool_started(p, 2, c"w-2".as_ptr(), 200_000), EMF_OK);
            assert_eq!(emf_pool_demand(p, 0, 200_000), EMF_OK);
            let mut d = 0;
            assert_eq!(emf_pool_next_deadline(p, &mut d), EMF_OK);
            assert_eq!(d, 200_000 + 60_000_000, "w-2's idle timeout");
            assert_eq!(emf_pool_tick(p, d), EMF_OK);
            // A STOP with a 2-byte buffer: too small, length reported, the action kept.
            let (mut kind, mut slot, mut len) = (0, 0, 0);
            let mut small = [0 as c_char; 2];
            let st = emf_pool_poll_action(p, &mut kind, &mut slot, small.as_mut_ptr(), 2, &mut len);
            assert_eq!((st, len), (EMF_ERR_BUFFER_TOO_SMALL, 3));
            assert_eq!(poll(p), (EMF_POOL_ACTION_STOP, 0, "w-2".into()));
            let s = stats(p);
            assert_eq!(
                (s.live, s.stopping, s.stopped_total, s.started_total),
                (1, 1, 1, 2)
            );
            assert_eq!(emf_pool_agent_gone(p, c"w-2".as_ptr(), d), EMF_OK);
            assert_eq!(emf_pool_free(p), EMF_OK);
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_status() {
        let p = new(1, 2);
        let mut o = options_default();
        o.min_size = 3;
        o.max_size = 2;
        let mut q = null_mut();
        let (mut kind, mut slot, mut len) = (0, 0, 0);
        // SAFETY: the pointers are valid or NULL as each call's contract allows.
        unsafe {
            assert_eq!(
                emf_pool_new(&o, c"t".as_ptr(), &mut q),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                emf_pool_new(null(), c"".as_ptr(), &mut q),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_pool_new(null(), null(), &mut q), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_pool_new(null(), c"t".as_ptr(), null_mut()),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(emf_pool_started(p, 7, c"w".as_ptr(), 0), EMF_ERR_NOT_FOUND);
            assert_eq!(emf_pool_start_failed(p, 7, null(), 0), EMF_ERR_NOT_FOUND);
            assert_eq!(
                emf_pool_started(p, 1, c"..".as_ptr(), 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_pool_agent_gone(p, c"w".as_ptr(), 0), EMF_ERR_NOT_FOUND);
            assert_eq!(emf_pool_observe(p, c"w".as_ptr(), 1, 0), EMF_ERR_NOT_FOUND);
            assert_eq!(emf_pool_observe(p, null(), 1, 0), EMF_ERR_NULL_ARGUMENT);
            assert_eq!(
                emf_pool_poll_action(p, &mut kind, &mut slot, null_mut(), 5, &mut len),
                EMF_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                emf_pool_poll_action(p, null_mut(), &mut slot, null_mut(), 0, &mut len),
                EMF_ERR_NULL_ARGUMENT
            );
            // No buffer is needed for a START.
            assert_eq!(emf_pool_tick(p, 0), EMF_OK);
            assert_eq!(
                emf_pool_poll_action(p, &mut kind, &mut slot, null_mut(), 0, &mut len),
                EMF_OK
            );
            assert_eq!((kind, slot, len), (EMF_POOL_ACTION_START, 1, 0));
            assert_eq!(emf_pool_started(p, 1, c"w".as_ptr(), 0), EMF_OK);
            assert_eq!(
                emf_pool_started(p, 1, c"v".as_ptr(), 0),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_pool_free(p), EMF_OK);
            // Freed: every call refuses the handle.
            assert_eq!(emf_pool_tick(p, 0), EMF_ERR_INVALID_ARGUMENT);
            assert_eq!(
                emf_pool_stats(p, &mut emf_pool_stats_t::default()),
                EMF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(emf_pool_free(p), EMF_ERR_INVALID_ARGUMENT);
            assert_eq!(emf_pool_free(null_mut()), EMF_OK);
            assert_eq!(emf_pool_tick(null_mut(), 0), EMF_ERR_NULL_ARGUMENT);
        }
    }
}
