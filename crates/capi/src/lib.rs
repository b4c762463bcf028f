//! The C ABI of erlmcp-flow: a thin, checked, panic-free boundary over the Rust API of the
//! `erlmcp-flow` crate (imported here as `engine`), declared by `include/erlmcp_flow.h`.
//!
//! This crate is an rlib: `crates/cdylib` links it whole as the C library
//! (`liberlmcp_flow.so`, `liberlmcp_flow.a`), and the benchmark command calls it in-process.
//! `build.rs` generates the header with cbindgen (`cbindgen.toml`); the unit test
//! `header_drift` fails while the committed header differs. It holds no logic of its own:
//! modules [`codec`], [`ring`], [`queue`] (task queue, cache), [`vector`] (kernels, HNSW) and
//! [`flow`] (router, batch processor, state), [`sched`] (the task scheduler), [`pool`] (the
//! pool manager), [`runtime`] (the scheduler's service and agents over a scheduler
//! directory), [`raft`] (a local Raft cluster of node processes, a client of one) and
//! [`raft_node`] (an in-process node running the host's state machine) check
//! arguments, call the engine, and map its
//! [`ErrorKind`] to a status code.
//!
//! Conventions (also in the header's preamble, `include/erlmcp_flow.h`):
//!
//! * Every function returns an [`emf_status_t`]; `EMF_OK` (0) is success. Codes are never
//!   renumbered; new ones are appended.
//! * After a non-OK status, [`emf_last_error_message`] gives this thread's error text.
//! * Out-parameters come last and are written only on success.
//! * Byte inputs are `(const uint8_t *ptr, size_t len)`; `ptr` may be NULL only when `len` is
//!   0. Lengths above `EMF_MAX_INPUT_LEN` are refused with `EMF_ERR_TOO_LARGE` before any
//!   byte is read.
//! * Bytes returned to the caller come in an [`emf_buf_t`] owned by the caller and released
//!   with [`emf_buf_free`]; text written into a caller's buffer reports the length it needs.
//! * Handles are opaque pointers created by `emf_<thing>_new`/`_open` and released by
//!   `emf_<thing>_free`, which accepts NULL and detects a double free.
//! * A panic inside the engine is caught at the boundary and reported as `EMF_ERR_PANIC`.
//! * One rule picks the status for a mistake, whichever function sees it (the preamble in
//!   `cbindgen.toml` has the full text): `EMF_ERR_TOO_LARGE` for a well-formed length, count
//!   or capacity beyond a limit or whose arithmetic overflows; `EMF_ERR_INVALID_ARGUMENT` for
//!   a value wrong whatever the limits (malformed, an unknown code, a size that breaks a rule
//!   other than a maximum, a tuning parameter out of range); `EMF_ERR_IO` when the OS refuses
//!   a file operation or a path is not a regular file; `EMF_ERR_CORRUPT` for bytes that fail
//!   validation — structure always, content only where a CRC32C is present.
#![allow(non_camel_case_types)]

pub mod codec;
pub mod flow;
pub mod gossip;
mod handle;
pub mod pbft;
pub mod pool;
pub mod queue;
pub mod raft;
pub mod raft_node;
pub mod ring;
pub mod runtime;
pub mod sched;
#[cfg(test)]
mod testutil;
pub mod vector;

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use engine::{Error, ErrorKind};

/// A status code: `EMF_OK` or one of the `EMF_ERR_*` codes.
pub type emf_status_t = i32;

/// Success.
pub const EMF_OK: emf_status_t = 0;
/// A required pointer argument was NULL.
pub const EMF_ERR_NULL_ARGUMENT: emf_status_t = 1;
/// An argument is wrong whatever the limits: malformed (bad JSON, non-UTF-8 text, NaN, a
/// misaligned pointer), an unknown code or flag, a size breaking a rule other than a maximum,
/// a tuning parameter out of its range, a stale handle. (Beyond a maximum: `EMF_ERR_TOO_LARGE`.)
pub const EMF_ERR_INVALID_ARGUMENT: emf_status_t = 2;
/// Full: back-pressure. The caller still owns what it tried to hand over.
pub const EMF_ERR_FULL: emf_status_t = 3;
/// Empty: nothing to take.
pub const EMF_ERR_EMPTY: emf_status_t = 4;
/// A wait timed out.
pub const EMF_ERR_TIMEOUT: emf_status_t = 5;
/// The object was closed.
pub const EMF_ERR_CLOSED: emf_status_t = 6;
/// Bytes failed validation. The structure is always checked (truncated, garbage, bad offsets,
/// lengths or codes); a flipped bit in the content (a string, a number, a vector) is detected
/// only where a CRC32C is present: HNSW index files (format 2, every file this library
/// saves), archives made with `EMF_ARCHIVE_CHECKSUM`, frames of rings created with a frame
/// checksum.
pub const EMF_ERR_CORRUPT: emf_status_t = 7;
/// The operating system refused a file or mapping operation, or a path is not a regular file
/// (a directory, a FIFO).
pub const EMF_ERR_IO: emf_status_t = 8;
/// This Raft node is not the leader.
pub const EMF_ERR_NOT_LEADER: emf_status_t = 9;
/// Not supported by this build or object.
pub const EMF_ERR_UNSUPPORTED: emf_status_t = 10;
/// The engine panicked; the operation did not complete. The process is still sound.
pub const EMF_ERR_PANIC: emf_status_t = 11;
/// A caller-provided buffer is too small; the required length was reported.
pub const EMF_ERR_BUFFER_TOO_SMALL: emf_status_t = 12;
/// A well-formed length, count or capacity is beyond a limit (input length, batch size, cache
/// capacity, decompression limit, value size), or its arithmetic (count × size) overflows.
pub const EMF_ERR_TOO_LARGE: emf_status_t = 13;
/// A looked-up item does not exist.
pub const EMF_ERR_NOT_FOUND: emf_status_t = 14;
/// The resource is held by another live participant (a second producer on a
/// single-producer ring, a name in use).
pub const EMF_ERR_BUSY: emf_status_t = 15;

/// A caller's callback asked to stop (`emf_archive_visit`): the walk ended early, nothing
/// else went wrong.
pub const EMF_ERR_STOPPED: emf_status_t = 16;

/// The ABI version. Bumped on any incompatible change to the C ABI; every binding checks
/// `emf_abi_version() == EMF_ABI_VERSION` at load.
pub const EMF_ABI_VERSION: u32 = 4;
/// Major version of the library.
pub const EMF_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const EMF_VERSION_MINOR: u32 = 1;
/// Patch version of the library.
pub const EMF_VERSION_PATCH: u32 = 0;

/// The longest byte input any function accepts (2 GiB - 1: archives use 32-bit offsets).
pub const EMF_MAX_INPUT_LEN: usize = i32::MAX as usize;

/// The status code for an error kind.
pub fn status_of(kind: ErrorKind) -> emf_status_t {
    match kind {
        ErrorKind::InvalidArgument => EMF_ERR_INVALID_ARGUMENT,
        ErrorKind::Full => EMF_ERR_FULL,
        ErrorKind::Empty => EMF_ERR_EMPTY,
        ErrorKind::Timeout => EMF_ERR_TIMEOUT,
        ErrorKind::Closed => EMF_ERR_CLOSED,
        ErrorKind::Corrupt => EMF_ERR_CORRUPT,
        ErrorKind::Io => EMF_ERR_IO,
        ErrorKind::NotLeader => EMF_ERR_NOT_LEADER,
        ErrorKind::Unsupported => EMF_ERR_UNSUPPORTED,
        ErrorKind::TooLarge => EMF_ERR_TOO_LARGE,
        ErrorKind::NotFound => EMF_ERR_NOT_FOUND,
        ErrorKind::Busy => EMF_ERR_BUSY,
        // `ErrorKind` is non-exhaustive: a kind the engine adds before this ABI gives it a
        // code of its own is reported as unsupported, with the engine's message.
        _ => EMF_ERR_UNSUPPORTED,
    }
}

/// An error at the boundary: a status and a message.
#[derive(Debug)]
pub(crate) struct FfiError {
    status: emf_status_t,
    message: Cow<'static, str>,
}

impl FfiError {
    pub(crate) fn new(status: emf_status_t, message: impl Into<Cow<'static, str>>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(name: &str) -> Self {
        FfiError::new(EMF_ERR_NULL_ARGUMENT, format!("argument `{name}` is NULL"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::new(status_of(e.kind()), e.into_message())
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

thread_local! {
    // A Cow: static messages (back-pressure, a hot path) are stored without allocating.
    static LAST_ERROR: RefCell<Cow<'static, str>> = const { RefCell::new(Cow::Borrowed("")) };
}

fn set_last_error(message: Cow<'static, str>) {
    // `try_with`: during thread teardown the slot may be gone; losing the text then is fine.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.try_borrow_mut() {
            *s = message;
        }
    });
}

/// Runs an entry point's body: catches panics, records the error text, returns the status.
///
/// Every `extern "C"` function calls this first thing, so that no panic crosses the
/// boundary (which would abort the host).
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> emf_status_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EMF_OK,
        Ok(Err(e)) => {
            set_last_error(e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            // Dropping a panic payload can itself panic: drop it under a second guard, and
            // only if that drop panics too, leak the second payload.
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
            set_last_error(format!("internal panic: {what}").into());
            EMF_ERR_PANIC
        }
    }
}

/// Borrows a caller's byte range.
///
/// # Safety
///
/// When `ptr` is non-NULL it must point to `len` readable bytes that stay unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, name: &str) -> FfiResult<&'a [u8]> {
    if len > EMF_MAX_INPUT_LEN {
        return Err(FfiError::new(
            EMF_ERR_TOO_LARGE,
            format!("`{name}` length {len} exceeds the maximum of {EMF_MAX_INPUT_LEN} bytes"),
        ));
    }
    if ptr.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL, `len` ≤ isize::MAX (checked above), and the caller guarantees the
    // range is readable and unchanged for 'a (function contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows `n` caller slices (`emf_slice_t`), each as [`bytes`] would.
///
/// # Safety
///
/// `frames` readable for `n` elements, each readable for its length, unchanged during `'a`.
pub(crate) unsafe fn slices<'a>(
    frames: *const ring::emf_slice_t,
    n: usize,
) -> FfiResult<Vec<&'a [u8]>> {
    if n > 0 && frames.is_null() {
        return Err(FfiError::null("frames"));
    }
    if n > 1 << 24 {
        return Err(FfiError::new(
            EMF_ERR_TOO_LARGE,
            format!("batch of {n} frames is larger than 16M"),
        ));
    }
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        // In bounds: `frames` is readable for n elements (contract) and i < n.
        let fp = frames.wrapping_add(i);
        // SAFETY: readable (above); plain data, read without alignment assumptions.
        let f = unsafe { fp.read_unaligned() };
        // SAFETY: caller contract for each slice.
        slices.push(unsafe { bytes(f.data, f.len, "frames[i].data") }?);
    }
    Ok(slices)
}

/// The checks of a caller's array argument: the length cap, NULL (allowed only for an empty
/// array) and alignment. Answers whether the array is empty-and-NULL.
fn check_array<T>(ptr: *const T, len: usize, name: &str) -> FfiResult<bool> {
    let size = std::mem::size_of::<T>().max(1);
    if len > EMF_MAX_INPUT_LEN / size {
        return Err(FfiError::new(
            EMF_ERR_TOO_LARGE,
            format!("`{name}`: {len} values exceed the maximum of {EMF_MAX_INPUT_LEN} bytes"),
        ));
    }
    if ptr.is_null() {
        return if len == 0 {
            Ok(true)
        } else {
            Err(FfiError::null(name))
        };
    }
    if ptr.cast::<u8>().addr() % std::mem::align_of::<T>() != 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "`{name}` is not aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
        ));
    }
    Ok(false)
}

/// Borrows a caller's array of `len` values of `T`.
///
/// # Safety
///
/// When `ptr` is non-NULL it must point to `len` readable values that stay unchanged for
/// `'a` (alignment and the length cap are checked here).
pub(crate) unsafe fn typed<'a, T>(ptr: *const T, len: usize, name: &str) -> FfiResult<&'a [T]> {
    if check_array(ptr, len, name)? {
        return Ok(&[]);
    }
    // SAFETY: non-NULL, aligned, `len · size_of::<T>()` ≤ isize::MAX (all checked), readable
    // and unchanged for 'a by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows a caller's writable array of `len` values of `T`.
///
/// # Safety
///
/// When `ptr` is non-NULL it must point to `len` writable values not otherwise accessed
/// during `'a`.
pub(crate) unsafe fn typed_mut<'a, T>(
    ptr: *mut T,
    len: usize,
    name: &str,
) -> FfiResult<&'a mut [T]> {
    if check_array(ptr.cast_const(), len, name)? {
        return Ok(&mut []);
    }
    // SAFETY: as in `typed`, plus: writable and exclusively ours for 'a (caller contract).
    // Built from the caller's mutable pointer itself, never from a shared borrow.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A NUL-terminated UTF-8 string argument.
pub(crate) fn c_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and, by the caller's contract, a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| {
            FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("`{name}` is not valid UTF-8"),
            )
        })
}

/// Writes `value` through an out-pointer.
///
/// # Safety
///
/// A non-NULL `out` must be valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T, name: &str) -> FfiResult {
    if out.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid and aligned for a write of T.
    // `write` does not drop the (possibly uninitialised) old value.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks that an out-pointer is non-NULL before any work is done.
pub(crate) fn require_out<T>(out: *mut T, name: &str) -> FfiResult {
    if out.is_null() {
        Err(FfiError::null(name))
    } else {
        Ok(())
    }
}

/// Returns `EMF_ABI_VERSION` of the library actually loaded.
///
/// A host compares it with the `EMF_ABI_VERSION` macro of the header it was compiled against
/// and refuses to run on a mismatch. Thread-safe.
#[no_mangle]
pub extern "C" fn emf_abi_version() -> u32 {
    EMF_ABI_VERSION
}

/// Returns the library version as a static NUL-terminated string such as `"0.1.0"`.
/// Thread-safe; the string is never freed.
#[no_mangle]
pub extern "C" fn emf_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Returns a static NUL-terminated name for a status code (`"EMF_ERR_CORRUPT"`), or
/// `"EMF_ERR_UNKNOWN"` for a code this library does not define. Thread-safe.
#[no_mangle]
pub extern "C" fn emf_status_name(status: emf_status_t) -> *const c_char {
    let name: &'static str = match status {
        EMF_OK => "EMF_OK\0",
        EMF_ERR_NULL_ARGUMENT => "EMF_ERR_NULL_ARGUMENT\0",
        EMF_ERR_INVALID_ARGUMENT => "EMF_ERR_INVALID_ARGUMENT\0",
        EMF_ERR_FULL => "EMF_ERR_FULL\0",
        EMF_ERR_EMPTY => "EMF_ERR_EMPTY\0",
        EMF_ERR_TIMEOUT => "EMF_ERR_TIMEOUT\0",
        EMF_ERR_CLOSED => "EMF_ERR_CLOSED\0",
        EMF_ERR_CORRUPT => "EMF_ERR_CORRUPT\0",
        EMF_ERR_IO => "EMF_ERR_IO\0",
        EMF_ERR_NOT_LEADER => "EMF_ERR_NOT_LEADER\0",
        EMF_ERR_UNSUPPORTED => "EMF_ERR_UNSUPPORTED\0",
        EMF_ERR_PANIC => "EMF_ERR_PANIC\0",
        EMF_ERR_BUFFER_TOO_SMALL => "EMF_ERR_BUFFER_TOO_SMALL\0",
        EMF_ERR_TOO_LARGE => "EMF_ERR_TOO_LARGE\0",
        EMF_ERR_NOT_FOUND => "EMF_ERR_NOT_FOUND\0",
        EMF_ERR_BUSY => "EMF_ERR_BUSY\0",
        EMF_ERR_STOPPED => "EMF_ERR_STOPPED\0",
        _ => "EMF_ERR_UNKNOWN\0",
    };
    name.as_ptr().cast()
}

/// Copies the calling thread's last error message into `buf`.
///
/// Writes at most `cap - 1` bytes of UTF-8 text plus a terminating NUL, and stores the
/// message's full length (without the NUL) in `*out_len`. Returns `EMF_OK` when it fit,
/// `EMF_ERR_BUFFER_TOO_SMALL` when it was cut (call again with `*out_len + 1` bytes), and
/// `EMF_ERR_NULL_ARGUMENT` when `out_len` is NULL, or `buf` is NULL with `cap > 0`.
/// `buf` may be NULL with `cap == 0` to ask for the length only. The message is empty when no
/// call on this thread has failed yet. This call never changes the stored message.
///
/// # Safety
///
/// `buf` must be valid for `cap` bytes of writes; `out_len` valid for one write.
#[no_mangle]
pub unsafe extern "C" fn emf_last_error_message(
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    let run = || -> emf_status_t {
        if out_len.is_null() || (buf.is_null() && cap > 0) {
            return EMF_ERR_NULL_ARGUMENT;
        }
        let message = LAST_ERROR
            .try_with(|s| s.try_borrow().map(|s| s.clone()).unwrap_or_default())
            .unwrap_or_default();
        let msg = message.as_bytes();
        let status = if cap == 0 {
            EMF_ERR_BUFFER_TOO_SMALL
        } else {
            // Cut on a character boundary so the copy stays valid UTF-8.
            let mut n = msg.len().min(cap - 1);
            while n > 0 && !message.is_char_boundary(n) {
                n -= 1;
            }
            // SAFETY: `buf` is non-NULL (cap > 0) and valid for `cap` bytes (contract);
            // n + 1 ≤ cap; source and destination cannot overlap (ours is a fresh String).
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
            }
            // SAFETY: n < cap, so the NUL is in bounds of the caller's `cap` bytes.
            let end = unsafe { buf.add(n) };
            // SAFETY: `end` is in bounds (above) and writable by contract.
            unsafe { end.write(0) };
            if n == msg.len() {
                EMF_OK
            } else {
                EMF_ERR_BUFFER_TOO_SMALL
            }
        };
        // SAFETY: checked non-NULL above; valid for a write by contract.
        unsafe { out_len.write(msg.len()) };
        status
    };
    catch_unwind(run).unwrap_or(EMF_ERR_PANIC)
}

/// A byte buffer owned by the caller, returned by the library.
///
/// `data` is NULL when `len` is 0. Release it with [`emf_buf_free`], exactly once. `token` is
/// the library's private identity of the buffer: do not change it. Thanks to it the library
/// refuses a second free of the same buffer (also through a copy of the struct, even after
/// the memory was reused for a newer buffer) and the free of memory it never returned.
/// Initialise an empty `emf_buf_t` with all fields zero. A buffer may be freed on any thread.
#[repr(C)]
#[derive(Debug)]
pub struct emf_buf_t {
    /// The bytes.
    pub data: *mut u8,
    /// The number of bytes.
    pub len: usize,
    /// Private: the library's identity of this buffer.
    pub token: u64,
}

impl emf_buf_t {
    /// An empty buffer.
    pub const EMPTY: emf_buf_t = emf_buf_t {
        data: std::ptr::null_mut(),
        len: 0,
        token: 0,
    };

    pub(crate) fn from_vec(v: Vec<u8>) -> emf_buf_t {
        if v.is_empty() {
            return emf_buf_t::EMPTY;
        }
        let boxed: Box<[u8]> = v.into_boxed_slice();
        let len = boxed.len();
        let data = Box::into_raw(boxed).cast::<u8>();
        let token = handle::register_buffer(data, len);
        emf_buf_t { data, len, token }
    }
}

/// Releases the bytes of `buf` and resets it to `{NULL, 0}`.
///
/// NULL `buf` and an empty buffer are fine (`EMF_OK`). A buffer the library did not return, or
/// already freed through a copy of the struct, gives `EMF_ERR_INVALID_ARGUMENT` and is left
/// untouched. Thread-safe for distinct buffers.
///
/// # Safety
///
/// `buf`, when non-NULL, must point to a readable and writable `emf_buf_t`.
#[no_mangle]
pub unsafe extern "C" fn emf_buf_free(buf: *mut emf_buf_t) -> emf_status_t {
    guard(|| {
        if buf.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL and valid for reads and writes by contract.
        let b = unsafe { &mut *buf };
        if b.data.is_null() {
            b.len = 0;
            return Ok(());
        }
        if !handle::unregister_buffer(b.data, b.len, b.token) {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                "emf_buf_free: buffer was not returned by this library or is already freed",
            ));
        }
        let slice = std::ptr::slice_from_raw_parts_mut(b.data, b.len);
        // SAFETY: the registry proved (data, len, token) came from `Box<[u8]>::into_raw` in
        // `from_vec` and has not been freed since (the entry is removed exactly once, under
        // its shard lock; tokens never repeat, so a stale copy cannot match a newer buffer).
        drop(unsafe { Box::from_raw(slice) });
        *b = emf_buf_t::EMPTY;
        Ok(())
    })
}

/// Writes a Vec into a caller's `emf_buf_t` out-parameter.
///
/// # Safety
///
/// `out` must be valid for a write of `emf_buf_t` (checked non-NULL here).
pub(crate) unsafe fn write_buf(out: *mut emf_buf_t, v: Vec<u8>) -> FfiResult {
    require_out(out, "out")?;
    let b = emf_buf_t::from_vec(v);
    // SAFETY: non-NULL (checked) and valid for a write by the caller's contract.
    unsafe { out.write(b) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let mut buf = [0 as c_char; 256];
        let mut n = 0usize;
        // SAFETY: buf is 256 bytes; n is a valid usize.
        let st = unsafe { emf_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!(st, EMF_OK);
        // SAFETY: the function wrote a NUL-terminated string of n bytes.
        let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_bytes().len(), n);
        s.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_are_caught_and_reported() {
        let st = guard(|| panic!("boom {}", 42));
        assert_eq!(st, EMF_ERR_PANIC);
        assert!(last_error().contains("boom 42"));
        let st = guard(|| Err(FfiError::null("x")));
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        assert!(last_error().contains("`x`"));
    }

    #[test]
    fn error_message_truncates_on_char_boundary_and_reports_length() {
        set_last_error("héllo wörld".into());
        let mut small = [0x7f as c_char; 4];
        let mut n = 0;
        // SAFETY: small has 4 bytes.
        let st = unsafe { emf_last_error_message(small.as_mut_ptr(), 4, &mut n) };
        assert_eq!(st, EMF_ERR_BUFFER_TOO_SMALL);
        assert_eq!(n, "héllo wörld".len());
        // "hé" is 3 bytes; the copy is cut to fit 3 bytes + NUL.
        // SAFETY: NUL-terminated by the call.
        let s = unsafe { std::ffi::CStr::from_ptr(small.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "hé");
        // SAFETY: length-only query with NULL/0 is allowed.
        let st = unsafe { emf_last_error_message(std::ptr::null_mut(), 0, &mut n) };
        assert_eq!(st, EMF_ERR_BUFFER_TOO_SMALL);
        // SAFETY: NULL out_len is reported, not dereferenced.
        let st = unsafe { emf_last_error_message(small.as_mut_ptr(), 4, std::ptr::null_mut()) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        assert_eq!(last_error(), "héllo wörld");
    }

    #[test]
    fn buffers_free_once() {
        let mut b = emf_buf_t::from_vec(vec![1, 2, 3]);
        let copy = emf_buf_t {
            data: b.data,
            len: b.len,
            token: b.token,
        };
        // SAFETY: b is a valid emf_buf_t.
        assert_eq!(unsafe { emf_buf_free(&mut b) }, EMF_OK);
        assert!(b.data.is_null());
        // SAFETY: freeing the reset struct again is a no-op.
        assert_eq!(unsafe { emf_buf_free(&mut b) }, EMF_OK);
        let mut copy = copy;
        // SAFETY: the registry refuses the stale copy without touching its memory.
        assert_eq!(unsafe { emf_buf_free(&mut copy) }, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL is accepted.
        assert_eq!(unsafe { emf_buf_free(std::ptr::null_mut()) }, EMF_OK);
        // A newer buffer of the same length at (possibly) the same address is not freed by a
        // stale copy of an older one.
        let mut first = emf_buf_t::from_vec(vec![9; 32]);
        let stale = emf_buf_t {
            data: first.data,
            len: first.len,
            token: first.token,
        };
        // SAFETY: valid buffer.
        assert_eq!(unsafe { emf_buf_free(&mut first) }, EMF_OK);
        let mut second = emf_buf_t::from_vec(vec![8; 32]);
        let mut stale = stale;
        // SAFETY: refused by token, whatever the address.
        let st = unsafe { emf_buf_free(&mut stale) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: `second` is live and still readable.
        assert_eq!(unsafe { *second.data }, 8);
        // SAFETY: valid buffer.
        assert_eq!(unsafe { emf_buf_free(&mut second) }, EMF_OK);
        let mut bogus = emf_buf_t {
            data: std::ptr::without_provenance_mut(0x1000),
            len: 5,
            token: 1,
        };
        // SAFETY: the registry refuses a pointer it never handed out.
        let st = unsafe { emf_buf_free(&mut bogus) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
    }

    #[test]
    fn every_handle_type_has_its_own_kind_and_a_name() {
        use handle::Handle;
        let kinds = [
            (codec::emf_message_t::KIND, codec::emf_message_t::NAME),
            (ring::emf_ring_t::KIND, ring::emf_ring_t::NAME),
            (ring::emf_producer_t::KIND, ring::emf_producer_t::NAME),
            (ring::emf_consumer_t::KIND, ring::emf_consumer_t::NAME),
            (flow::emf_router_t::KIND, flow::emf_router_t::NAME),
            (flow::emf_batch_t::KIND, flow::emf_batch_t::NAME),
            (flow::emf_state_store_t::KIND, flow::emf_state_store_t::NAME),
            (flow::emf_state_value_t::KIND, flow::emf_state_value_t::NAME),
            (queue::emf_task_queue_t::KIND, queue::emf_task_queue_t::NAME),
            (queue::emf_cache_t::KIND, queue::emf_cache_t::NAME),
            (vector::emf_hnsw_t::KIND, vector::emf_hnsw_t::NAME),
            (sched::emf_sched_t::KIND, sched::emf_sched_t::NAME),
            (pool::emf_pool_t::KIND, pool::emf_pool_t::NAME),
            (runtime::emf_service_t::KIND, runtime::emf_service_t::NAME),
            (runtime::emf_agent_t::KIND, runtime::emf_agent_t::NAME),
            (
                raft::emf_raft_cluster_t::KIND,
                raft::emf_raft_cluster_t::NAME,
            ),
            (raft::emf_raft_client_t::KIND, raft::emf_raft_client_t::NAME),
            (
                raft_node::emf_raft_node_t::KIND,
                raft_node::emf_raft_node_t::NAME,
            ),
            (gossip::emf_gossip_t::KIND, gossip::emf_gossip_t::NAME),
            (
                codec::emf_value_builder_t::KIND,
                codec::emf_value_builder_t::NAME,
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (kind, name) in kinds {
            assert!(seen.insert(kind), "kind {kind} ({name}) is used twice");
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn versions_match_cargo() {
        let v = format!("{EMF_VERSION_MAJOR}.{EMF_VERSION_MINOR}.{EMF_VERSION_PATCH}");
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        // SAFETY: static NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(emf_version_string()) };
        assert_eq!(s.to_str().unwrap(), v);
        for code in 0..=EMF_ERR_STOPPED {
            // SAFETY: static NUL-terminated string.
            let n = unsafe { std::ffi::CStr::from_ptr(emf_status_name(code)) };
            assert!(n.to_str().unwrap().starts_with("EMF_"));
            assert_ne!(n.to_str().unwrap(), "EMF_ERR_UNKNOWN");
        }
    }
}

#[cfg(test)]
mod header_drift {
    #[test]
    fn committed_header_matches_a_fresh_generation() {
        let fresh = include_str!(concat!(env!("OUT_DIR"), "/erlmcp_flow.h"));
        let committed = include_str!("../../../include/erlmcp_flow.h");
        assert!(
            fresh == committed,
            "include/erlmcp_flow.h is stale: run scripts/gen-header.sh and commit the result"
        );
    }
}
