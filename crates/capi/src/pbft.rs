//! C ABI of Byzantine agreement (`emf_pbft_group_*`): a local PBFT group of replica threads
//! in this process over rings, and its client, over `engine::mesh::pbft::LocalGroup` (see
//! `crates/core/src/mesh/pbft/`).
//!
//! `emf_pbft_group_start` starts n = 3f + 1 replicas (fresh Ed25519 keys by default) of an
//! order log — each operation is answered with its position in the agreed order (`u64`
//! little-endian) and a running checksum (`u64` little-endian): 16 bytes — and a client.
//! `emf_pbft_group_execute` is the original `fast_path_consensus`: it agrees on one
//! operation and returns the result with the path that completed it
//! (`EMF_PBFT_PATH_FAST`: 2f + 1 matching tentative replies, prepared at 2f + 1 replicas;
//! `EMF_PBFT_PATH_SLOW`: f + 1 matching committed replies). `EMF_ERR_TIMEOUT` when the group
//! did not answer in time; the request then stays outstanding and the next call answers
//! `EMF_ERR_BUSY` unless the group answers it first. `emf_pbft_group_stop_replica` crashes
//! one replica (for tests: with one of four stopped the group goes on; with the primary
//! stopped it changes view first). Freeing the handle stops the replicas.
//!
//! The handle is one thread at a time (else `EMF_ERR_BUSY`).

use std::ffi::c_char;
use std::path::Path;
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Exclusive, Handle};
use super::{
    bytes, c_str, emf_buf_t, emf_status_t, guard, require_out, write_buf, write_out, FfiError,
    FfiResult, EMF_ERR_INVALID_ARGUMENT,
};
use engine::mesh::pbft::{LocalGroup, LocalGroupOptions};
use engine::pbft::Path as DonePath;

/// `emf_pbft_group_execute`'s path: 2f + 1 matching tentative replies (the fast path).
pub const EMF_PBFT_PATH_FAST: u32 = 1;
/// `emf_pbft_group_execute`'s path: f + 1 matching committed replies (the slow path).
pub const EMF_PBFT_PATH_SLOW: u32 = 2;

/// Options for `emf_pbft_group_start`; fill with `emf_pbft_group_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct emf_pbft_group_options_t {
    /// Replicas, 3f + 1 with f >= 1 (default 4).
    pub n: u32,
    /// Non-zero (default): Ed25519 signatures with fresh random keys. 0: the simulation's
    /// keyed hash (NOT secure; tests only).
    pub ed25519: u32,
    /// Non-zero (default): complete on 2f + 1 tentative replies (the fast path). 0: only on
    /// f + 1 committed replies.
    pub accept_tentative: u32,
    /// The primary's batch window, microseconds (default 0: order each request at once).
    pub batch_window_us: u64,
    /// A backup waiting this long for a request starts a view change, ms (default 200; at
    /// least 1).
    pub view_change_timeout_ms: u32,
    /// The client sends a request again to every replica after this long, ms (default 100;
    /// at least 1).
    pub retransmit_ms: u32,
    /// The longest `emf_pbft_group_execute` waits, ms (default 10000; at least 1).
    pub timeout_ms: u32,
}

/// A local PBFT group and its client. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_pbft_group_t {
    _private: (),
}

impl Handle for emf_pbft_group_t {
    const KIND: u32 = 24;
    const NAME: &'static str = "pbft group";
    type Target = LocalGroup;
    type Access = Exclusive;
}

fn millis(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn options_default() -> emf_pbft_group_options_t {
    let d = LocalGroupOptions::default();
    emf_pbft_group_options_t {
        n: d.n as u32,
        ed25519: u32::from(d.ed25519),
        accept_tentative: u32::from(d.accept_tentative),
        batch_window_us: d.batch_window_us,
        view_change_timeout_ms: millis(d.view_change_timeout_us / 1000),
        retransmit_ms: millis(d.retransmit_us / 1000),
        timeout_ms: millis(d.timeout.as_millis() as u64),
    }
}

fn options_of(o: &emf_pbft_group_options_t) -> FfiResult<LocalGroupOptions> {
    for (v, name) in [
        (o.view_change_timeout_ms, "view_change_timeout_ms"),
        (o.retransmit_ms, "retransmit_ms"),
        (o.timeout_ms, "timeout_ms"),
    ] {
        if v == 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("`{name}` must be at least 1 ms"),
            ));
        }
    }
    if o.n < 4 || (o.n - 1) % 3 != 0 || o.n > 64 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`n` = {} is not 3f + 1 with f >= 1 (and at most 64)", o.n),
        ));
    }
    Ok(LocalGroupOptions {
        n: o.n as usize,
        ed25519: o.ed25519 != 0,
        accept_tentative: o.accept_tentative != 0,
        batch_window_us: o.batch_window_us,
        view_change_timeout_us: u64::from(o.view_change_timeout_ms) * 1000,
        retransmit_us: u64::from(o.retransmit_ms) * 1000,
        timeout: Duration::from_millis(o.timeout_ms.into()),
    })
}

/// Fills `out` with the defaults (see `emf_pbft_group_options_t`).
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_options_default(
    out: *mut emf_pbft_group_options_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, options_default(), "out") }
    })
}

/// Starts a group in directory `dir` (NUL-terminated; created if needed; its rings stay
/// there after the group is freed — remove the directory) with `opts` (NULL: the defaults)
/// and returns its handle in `*out`. Errors: `EMF_ERR_INVALID_ARGUMENT` (bad options, an
/// empty `dir`), the rings' errors.
///
/// # Safety
///
/// `dir` a NUL-terminated string; `opts` NULL or readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_start(
    dir: *const c_char,
    opts: *const emf_pbft_group_options_t,
    out: *mut *mut emf_pbft_group_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let dir = c_str(dir, "dir")?;
        if dir.is_empty() {
            return Err(FfiError::new(EMF_ERR_INVALID_ARGUMENT, "`dir` is empty"));
        }
        let o = if opts.is_null() {
            options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let o = options_of(&o)?;
        let group = LocalGroup::start(Path::new(dir), &o)?;
        let h = new_handle::<emf_pbft_group_t>(group)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Agrees on operation `op` (`len` bytes, at most 1 MiB) and writes the result into `*out`
/// (release it with `emf_buf_free`) and the path into `*out_path` (`EMF_PBFT_PATH_FAST` or
/// `EMF_PBFT_PATH_SLOW`). `EMF_ERR_TIMEOUT`: no agreed answer in time; `EMF_ERR_BUSY`: an
/// earlier request that timed out is still unanswered.
///
/// # Safety
///
/// `g` a live handle; `op` readable for `len` bytes (NULL only with `len` 0); `out` and
/// `out_path` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_execute(
    g: *mut emf_pbft_group_t,
    op: *const u8,
    len: usize,
    out: *mut emf_buf_t,
    out_path: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        require_out(out_path, "out_path")?;
        // SAFETY: caller contract.
        let op = unsafe { bytes(op, len, "op") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut st = unsafe { borrow(g) }?;
        let done = st.execute(op)?;
        let path = match done.path {
            DonePath::Fast => EMF_PBFT_PATH_FAST,
            DonePath::Slow => EMF_PBFT_PATH_SLOW,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_path, path, "out_path") }?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, done.result) }
    })
}

/// Stops replica `i` (`0..n`): a crash, to the others. `EMF_ERR_NOT_FOUND` beyond `n` or
/// when it is already stopped.
///
/// # Safety
///
/// `g` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_stop_replica(
    g: *mut emf_pbft_group_t,
    i: u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut st = unsafe { borrow(g) }?;
        Ok(st.stop_replica(i as usize)?)
    })
}

/// The view the client knows into `*out_view` (0 until a view change; its primary is
/// replica `view mod n`).
///
/// # Safety
///
/// `g` a live handle; `out_view` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_view(
    g: *mut emf_pbft_group_t,
    out_view: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_view, "out_view")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let v = st.client_view();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_view, v, "out_view") }
    })
}

/// Stops the replicas and frees the handle (NULL is fine). The directory stays.
///
/// # Safety
///
/// No other thread may be using `g`.
#[no_mangle]
pub unsafe extern "C" fn emf_pbft_group_free(g: *mut emf_pbft_group_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(g) })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::ptr::{null, null_mut};

    use super::*;
    use crate::testutil::{ffi, last_error};
    use crate::{emf_buf_free, EMF_ERR_NOT_FOUND, EMF_ERR_NULL_ARGUMENT, EMF_OK};

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("emf-capi-pbft-{tag}-{}", std::process::id()))
    }

    #[test]
    fn defaults_are_the_engines_and_bad_options_are_refused() {
        let mut o = options_default();
        o.n = 0;
        assert_eq!(ffi!(emf_pbft_group_options_default(&mut o)), EMF_OK);
        assert_eq!(options_of(&o).unwrap(), LocalGroupOptions::default());
        assert_eq!(
            ffi!(emf_pbft_group_options_default(null_mut())),
            EMF_ERR_NULL_ARGUMENT
        );
        let dir = CString::new(temp_dir("bad").to_str().unwrap()).unwrap();
        let mut out = null_mut();
        for (bad, text) in [
            (emf_pbft_group_options_t { n: 5, ..o }, "3f + 1"),
            (emf_pbft_group_options_t { n: 1, ..o }, "3f + 1"),
            (
                emf_pbft_group_options_t { timeout_ms: 0, ..o },
                "timeout_ms",
            ),
            (
                emf_pbft_group_options_t {
                    retransmit_ms: 0,
                    ..o
                },
                "retransmit_ms",
            ),
        ] {
            let st = ffi!(emf_pbft_group_start(dir.as_ptr(), &bad, &mut out));
            assert_eq!(st, EMF_ERR_INVALID_ARGUMENT, "{}", last_error());
            assert!(last_error().contains(text), "{}", last_error());
            assert!(out.is_null());
        }
        let st = ffi!(emf_pbft_group_start(c"".as_ptr(), &o, &mut out));
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        let st = ffi!(emf_pbft_group_start(null(), &o, &mut out));
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        let st = ffi!(emf_pbft_group_start(dir.as_ptr(), &o, null_mut()));
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        assert_eq!(ffi!(emf_pbft_group_free(null_mut())), EMF_OK);
    }

    #[test]
    #[cfg_attr(miri, ignore = "threads and shared memory")]
    fn a_group_agrees_then_survives_its_primary() {
        let path = temp_dir("run");
        let dir = CString::new(path.to_str().unwrap()).unwrap();
        let mut o = options_default();
        o.view_change_timeout_ms = 100;
        let mut g = null_mut();
        assert_eq!(
            ffi!(emf_pbft_group_start(dir.as_ptr(), &o, &mut g)),
            EMF_OK,
            "{}",
            last_error()
        );
        let mut buf = emf_buf_t::EMPTY;
        let mut path_taken = 0u32;
        for i in 1..=3u64 {
            let op = b"an operation";
            let st = ffi!(emf_pbft_group_execute(
                g,
                op.as_ptr(),
                op.len(),
                &mut buf,
                &mut path_taken
            ));
            assert_eq!(st, EMF_OK, "{}", last_error());
            assert!(path_taken == EMF_PBFT_PATH_FAST || path_taken == EMF_PBFT_PATH_SLOW);
            // SAFETY: the library returned `len` bytes at `data`.
            let result = unsafe { std::slice::from_raw_parts(buf.data, buf.len) };
            assert_eq!(result.len(), 16);
            assert_eq!(u64::from_le_bytes(result[..8].try_into().unwrap()), i);
            assert_eq!(ffi!(emf_buf_free(&mut buf)), EMF_OK);
        }
        assert_eq!(ffi!(emf_pbft_group_stop_replica(g, 0)), EMF_OK);
        assert_eq!(ffi!(emf_pbft_group_stop_replica(g, 0)), EMF_ERR_NOT_FOUND);
        assert_eq!(ffi!(emf_pbft_group_stop_replica(g, 9)), EMF_ERR_NOT_FOUND);
        let st = ffi!(emf_pbft_group_execute(
            g,
            null(),
            0,
            &mut buf,
            &mut path_taken
        ));
        assert_eq!(st, EMF_OK, "{}", last_error());
        assert_eq!(ffi!(emf_buf_free(&mut buf)), EMF_OK);
        let mut view = 0;
        assert_eq!(ffi!(emf_pbft_group_view(g, &mut view)), EMF_OK);
        assert!(view >= 1);
        assert_eq!(
            ffi!(emf_pbft_group_execute(
                g,
                null(),
                0,
                null_mut(),
                &mut path_taken
            )),
            EMF_ERR_NULL_ARGUMENT
        );
        assert_eq!(ffi!(emf_pbft_group_free(g)), EMF_OK);
        // A freed handle is refused, not dereferenced.
        assert_ne!(ffi!(emf_pbft_group_view(g, &mut view)), EMF_OK);
        let _ = std::fs::remove_dir_all(&path);
    }
}
