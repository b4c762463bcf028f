//! C ABI of the serializer and compressor.
//!
//! All functions here are thread-safe: they share no state except the handle registries.
//! Functions that read an archive from caller memory copy it first, so a writer that changes
//! the memory during the call (another thread, another process through shared memory) can
//! cause at most an `EMF_ERR_CORRUPT` answer, never an out-of-bounds read.

use std::ffi::{c_int, c_void};
use std::ops::ControlFlow;

use super::handle::{borrow, free, new_handle, Exclusive, Handle, Shared};
use super::{
    bytes, emf_buf_t, emf_status_t, guard, require_out, write_buf, write_out, FfiError,
    EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND, EMF_ERR_STOPPED,
};
use engine::codec::events::{self, BuildOptions, Event, ValueBuilder};
use engine::codec::{self, envelope::ArchivedId, jsonrpc, value::NumberRef, ArchivedMessage};

/// Kind code: JSON-RPC request.
pub const EMF_KIND_REQUEST: u32 = 0;
/// Kind code: JSON-RPC success response.
pub const EMF_KIND_RESPONSE: u32 = 1;
/// Kind code: JSON-RPC notification.
pub const EMF_KIND_NOTIFICATION: u32 = 2;
/// Kind code: engine task.
pub const EMF_KIND_TASK: u32 = 3;
/// Kind code: task result.
pub const EMF_KIND_RESULT: u32 = 4;
/// Kind code: JSON-RPC error response.
pub const EMF_KIND_ERROR: u32 = 5;

/// Priority code: critical (served first).
pub const EMF_PRIORITY_CRITICAL: u32 = 0;
/// Priority code: high.
pub const EMF_PRIORITY_HIGH: u32 = 1;
/// Priority code: normal (the default).
pub const EMF_PRIORITY_NORMAL: u32 = 2;
/// Priority code: low.
pub const EMF_PRIORITY_LOW: u32 = 3;

/// Id type: the envelope has no id.
pub const EMF_ID_NONE: u32 = 0;
/// Id type: `null`.
pub const EMF_ID_NULL: u32 = 1;
/// Id type: an integer that fits `int64_t` (in `id_int`).
pub const EMF_ID_INT: u32 = 2;
/// Id type: a string (in `id_str`, `id_str_len`).
pub const EMF_ID_STRING: u32 = 3;
/// Id type: another number (float, or integer beyond `int64_t`); read it from the JSON.
pub const EMF_ID_OTHER_NUMBER: u32 = 4;

/// The default compression threshold in bytes (1 KiB).
pub const EMF_COMPRESS_DEFAULT_THRESHOLD: usize = 1024;

/// Flag of `emf_json_to_archive_ex`: the archive carries a CRC32C of all its bytes (4 bytes
/// more), so that every function reading it refuses any flipped bit with `EMF_ERR_CORRUPT`,
/// inside strings and numbers too. Without it an archive is checked for its structure only:
/// a flip inside a string or a number reads as another valid message. Costs one CRC32C pass
/// over the archive when encoding and again when reading (measured with the CPU's CRC
/// instructions: about 40 ns for 200 bytes, 0.2 µs for 2 KB, 2.7 µs for 64 KB — a 2 KB
/// message validates 20 % slower, a 64 KB one 4 times slower).
pub const EMF_ARCHIVE_CHECKSUM: u32 = 1;

/// Options for [`emf_json_to_archive`] and [`emf_json_to_archive_ex`]. Pass NULL for the
/// defaults (normal priority, created now, no deadline).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_encode_options_t {
    /// An `EMF_PRIORITY_*` code.
    pub priority: u32,
    /// Creation time, µs since the UNIX epoch; 0 = now.
    pub created_at_us: u64,
    /// Deadline, µs since the UNIX epoch; 0 = none.
    pub deadline_us: u64,
}

/// A validated, immutable archive held by the library. Opaque.
///
/// Thread-safety: immutable after `emf_message_open`; any number of threads may read one
/// message at once. It must not be freed while another thread still uses it.
pub struct emf_message_t {
    // Invariant: `bytes` passed `codec::decode` in `emf_message_open` and is never modified.
    bytes: Box<[u8]>,
}

impl Handle for emf_message_t {
    const KIND: u32 = 1;
    const NAME: &'static str = "msg";
    type Target = Self;
    type Access = Shared;
}

impl emf_message_t {
    fn view(&self) -> &ArchivedMessage {
        // SAFETY: `bytes` was validated by `codec::decode` when the handle was created and is
        // immutable for the handle's life (struct invariant).
        unsafe { codec::decode_unchecked(&self.bytes) }
    }
}

/// What one envelope of an `emf_message_t` says. Pointers borrow from the message and stay
/// valid until it is freed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_envelope_info_t {
    /// An `EMF_KIND_*` code.
    pub kind: u32,
    /// An `EMF_PRIORITY_*` code.
    pub priority: u32,
    /// Creation time, µs since the UNIX epoch (0 = unknown).
    pub created_at_us: u64,
    /// Deadline, µs since the UNIX epoch (0 = none).
    pub deadline_us: u64,
    /// An `EMF_ID_*` code.
    pub id_type: u32,
    /// The id when `id_type == EMF_ID_INT`.
    pub id_int: i64,
    /// The id's UTF-8 bytes when `id_type == EMF_ID_STRING` (not NUL-terminated), else NULL.
    pub id_str: *const u8,
    /// Length of `id_str`.
    pub id_str_len: usize,
    /// The method's UTF-8 bytes (not NUL-terminated), or NULL when there is none.
    pub method: *const u8,
    /// Length of `method`.
    pub method_len: usize,
    /// True for an error envelope; then `error_code` holds the JSON-RPC error code.
    pub has_error: bool,
    /// The JSON-RPC error code when `has_error`.
    pub error_code: i64,
}

/// Parses MCP / JSON-RPC 2.0 text (one message or a batch) and encodes it as an archive
/// (without a checksum: `emf_json_to_archive_ex` with flags 0).
///
/// `opts` may be NULL. On success `*out` receives the archive; free it with `emf_buf_free`.
/// Errors: `EMF_ERR_INVALID_ARGUMENT` for non-UTF-8 text, invalid JSON or invalid JSON-RPC
/// (the message says where and why), `EMF_ERR_NULL_ARGUMENT`, `EMF_ERR_TOO_LARGE`.
///
/// # Safety
///
/// `json` must be readable for `json_len` bytes; `opts` NULL or readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_json_to_archive(
    json: *const u8,
    json_len: usize,
    opts: *const emf_encode_options_t,
    out: *mut emf_buf_t,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { emf_json_to_archive_ex(json, json_len, opts, 0, out) }
}

/// `emf_json_to_archive` with `flags`: 0 or `EMF_ARCHIVE_CHECKSUM`. Unknown flag bits give
/// `EMF_ERR_INVALID_ARGUMENT`. Archives of either kind are read by the same functions.
///
/// # Safety
///
/// `json` must be readable for `json_len` bytes; `opts` NULL or readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_json_to_archive_ex(
    json: *const u8,
    json_len: usize,
    opts: *const emf_encode_options_t,
    flags: u32,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        if flags & !EMF_ARCHIVE_CHECKSUM != 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("unknown archive flags {flags:#x} (known: EMF_ARCHIVE_CHECKSUM)"),
            ));
        }
        let encoding = codec::EncodeOptions {
            checksum: flags & EMF_ARCHIVE_CHECKSUM != 0,
        };
        // SAFETY: caller contract. Copied so that the UTF-8 check and the parse see the same
        // bytes even if the caller's memory changes.
        let text = unsafe { bytes(json, json_len, "json") }?.to_vec();
        // SAFETY: caller contract (NULL or readable).
        let meta = unsafe { metadata(opts) }?;
        let archive = jsonrpc::json_to_archive_with(&text, meta, encoding)?;
        // SAFETY: `out` checked non-NULL; writable by contract.
        unsafe { write_buf(out, archive.to_vec()) }
    })
}

/// The metadata of NULL (the defaults) or caller options.
///
/// # Safety
///
/// `opts` NULL or readable.
unsafe fn metadata(opts: *const emf_encode_options_t) -> Result<jsonrpc::Metadata, FfiError> {
    if opts.is_null() {
        return Ok(jsonrpc::Metadata::default());
    }
    // SAFETY: non-NULL and readable by contract; the struct is plain old data, and
    // `read_unaligned` needs no alignment.
    let o = unsafe { opts.read_unaligned() };
    Ok(jsonrpc::Metadata {
        priority: codec::Priority::from_code(o.priority).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("unknown priority code {}", o.priority),
            )
        })?,
        created_at_us: o.created_at_us,
        deadline_us: o.deadline_us,
    })
}

/// Validates an archive and writes it as JSON-RPC text (UTF-8, not NUL-terminated).
///
/// Errors: `EMF_ERR_CORRUPT` when the bytes are not a valid archive (structure; and the
/// checksum when it has one, see `EMF_ARCHIVE_CHECKSUM`).
///
/// # Safety
///
/// `archive` readable for `len` bytes and unchanged during the call; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_archive_to_json(
    archive: *const u8,
    len: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract. Copied: validation and reading must see the same bytes.
        let b = unsafe { bytes(archive, len, "archive") }?.to_vec();
        let json = jsonrpc::archive_to_json(&b)?;
        // SAFETY: `out` checked non-NULL; writable by contract.
        unsafe { write_buf(out, json.into_bytes()) }
    })
}

/// Validates an archive in place and stores its number of envelopes (1, or the batch size)
/// in `*out_count`. Errors: `EMF_ERR_CORRUPT`.
///
/// # Safety
///
/// `archive` readable for `len` bytes; `out_count` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_archive_validate(
    archive: *const u8,
    len: usize,
    out_count: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_count, "out_count")?;
        // SAFETY: caller contract. Copied, as everywhere an archive is read.
        let b = unsafe { bytes(archive, len, "archive") }?.to_vec();
        let n = codec::decode(&b)?.envelopes().len();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_count, n, "out_count") }
    })
}

/// Copies and validates an archive into a message handle for field access.
/// Free it with `emf_message_free`.
///
/// # Safety
///
/// `archive` readable for `len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_open(
    archive: *const u8,
    len: usize,
    out: *mut *mut emf_message_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract.
        let b = unsafe { bytes(archive, len, "archive") }?;
        let owned: Box<[u8]> = b.into();
        codec::decode(&owned)?;
        let h = new_handle::<emf_message_t>(emf_message_t { bytes: owned })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a message handle. NULL is fine; a second free gives `EMF_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// No other thread may be using `msg`.
#[no_mangle]
pub unsafe extern "C" fn emf_message_free(msg: *mut emf_message_t) -> emf_status_t {
    // SAFETY: caller contract (no concurrent use); the registry checks liveness.
    guard(|| unsafe { free(msg) })
}

/// Stores the number of envelopes in `*out_count`.
///
/// # Safety
///
/// `msg` a live handle; `out_count` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_count(
    msg: *const emf_message_t,
    out_count: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let m = unsafe { borrow(msg) }?;
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out_count, m.view().envelopes().len(), "out_count") }
    })
}

fn envelope_at(m: &emf_message_t, index: usize) -> Result<&codec::ArchivedEnvelope, FfiError> {
    let envs = m.view().envelopes();
    envs.get(index).ok_or_else(|| {
        FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "index {index} out of range (message has {} envelopes)",
                envs.len()
            ),
        )
    })
}

/// Describes envelope `index` of `msg` in `*out`.
///
/// # Safety
///
/// `msg` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_envelope(
    msg: *const emf_message_t,
    index: usize,
    out: *mut emf_envelope_info_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let m = unsafe { borrow(msg) }?;
        let e = envelope_at(m, index)?;
        let (id_type, id_int, id_str, id_str_len) = match e.id.as_ref() {
            None => (EMF_ID_NONE, 0, std::ptr::null(), 0),
            Some(ArchivedId::Null) => (EMF_ID_NULL, 0, std::ptr::null(), 0),
            Some(ArchivedId::String(s)) => (EMF_ID_STRING, 0, s.as_ptr(), s.len()),
            Some(ArchivedId::Number(n)) => match NumberRef::from(n).as_i64() {
                Some(i) => (EMF_ID_INT, i, std::ptr::null(), 0),
                None => (EMF_ID_OTHER_NUMBER, 0, std::ptr::null(), 0),
            },
        };
        let (method, method_len) = match e.method() {
            Some(s) => (s.as_ptr(), s.len()),
            None => (std::ptr::null(), 0),
        };
        let info = emf_envelope_info_t {
            kind: e.kind.to_native() as u32,
            priority: e.priority.to_native() as u32,
            created_at_us: e.created_at_us.to_native(),
            deadline_us: e.deadline_us.to_native(),
            id_type,
            id_int,
            id_str,
            id_str_len,
            method,
            method_len,
            has_error: e.error.is_some(),
            error_code: e.error.as_ref().map_or(0, |er| er.code.to_native()),
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, info, "out") }
    })
}

/// Writes the JSON-RPC id of envelope `index` as JSON text (`1`, `"abc"`, `null`, exact for
/// any number). `EMF_ERR_NOT_FOUND` when the envelope has no id.
///
/// # Safety
///
/// `msg` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_id_json(
    msg: *const emf_message_t,
    index: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let m = unsafe { borrow(msg) }?;
        let e = envelope_at(m, index)?;
        let mut text = Vec::new();
        match e.id.as_ref() {
            None => {
                return Err(FfiError::new(
                    EMF_ERR_NOT_FOUND,
                    format!("envelope {index} has no id"),
                ))
            }
            Some(ArchivedId::Null) => text.extend_from_slice(b"null"),
            Some(ArchivedId::Number(n)) => codec::json::write_number(NumberRef::from(n), &mut text),
            Some(ArchivedId::String(s)) => codec::json::write_string(s.as_str(), &mut text),
        }
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, text) }
    })
}

/// Returns a static NUL-terminated name for a kind code (`"request"`, `"task"`, ...), or
/// `"unknown"`. Thread-safe.
#[no_mangle]
pub extern "C" fn emf_kind_name(kind: u32) -> *const std::ffi::c_char {
    let name: &'static str = match codec::Kind::from_code(kind) {
        Some(codec::Kind::Request) => "request\0",
        Some(codec::Kind::Response) => "response\0",
        Some(codec::Kind::Notification) => "notification\0",
        Some(codec::Kind::Task) => "task\0",
        Some(codec::Kind::Result) => "result\0",
        Some(codec::Kind::Error) => "error\0",
        None => "unknown\0",
    };
    name.as_ptr().cast()
}

/// Returns a static NUL-terminated name for a priority code (`"critical"`, `"high"`,
/// `"normal"`, `"low"`), or `"unknown"`. Thread-safe.
#[no_mangle]
pub extern "C" fn emf_priority_name(priority: u32) -> *const std::ffi::c_char {
    let name: &'static str = match codec::Priority::from_code(priority) {
        Some(codec::Priority::Critical) => "critical\0",
        Some(codec::Priority::High) => "high\0",
        Some(codec::Priority::Normal) => "normal\0",
        Some(codec::Priority::Low) => "low\0",
        None => "unknown\0",
    };
    name.as_ptr().cast()
}

/// Writes the whole message as JSON-RPC text into `*out`.
///
/// # Safety
///
/// `msg` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_to_json(
    msg: *const emf_message_t,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let m = unsafe { borrow(msg) }?;
        let json = jsonrpc::to_json(m.view());
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, json.into_bytes()) }
    })
}

/// Writes the payload of envelope `index` as JSON: `params` for requests, notifications and
/// tasks; `result` for responses and results; the error object for errors.
/// `EMF_ERR_NOT_FOUND` when the envelope has none (e.g. a request without params).
///
/// # Safety
///
/// `msg` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_message_payload_json(
    msg: *const emf_message_t,
    index: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let m = unsafe { borrow(msg) }?;
        let e = envelope_at(m, index)?;
        let mut text = Vec::new();
        if let Some(v) = e.params.as_ref().or(e.result.as_ref()) {
            codec::json::write_value(v, &mut text);
        } else if let Some(err) = e.error.as_ref() {
            text.extend_from_slice(b"{\"code\":");
            codec::json::write_number(NumberRef::NegInt(err.code.to_native()), &mut text);
            text.extend_from_slice(b",\"message\":");
            codec::json::write_string(err.message.as_str(), &mut text);
            if let Some(d) = err.data.as_ref() {
                text.extend_from_slice(b",\"data\":");
                codec::json::write_value(d, &mut text);
            }
            text.push(b'}');
        } else {
            return Err(FfiError::new(
                EMF_ERR_NOT_FOUND,
                format!("envelope {index} has no params, result or error"),
            ));
        }
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, text) }
    })
}

/// Compresses `data` with zlib when `len >= threshold` and the result is smaller than 0.8 ×
/// `len`. `*out` receives the bytes to send (a copy of the input when not compressed) and
/// `*out_compressed` whether they are a zlib stream. Use `EMF_COMPRESS_DEFAULT_THRESHOLD`
/// for the original design's 1 KiB.
///
/// # Safety
///
/// `data` readable for `len` bytes; `out` and `out_compressed` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_compress_if_needed(
    data: *const u8,
    len: usize,
    threshold: usize,
    out: *mut emf_buf_t,
    out_compressed: *mut bool,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        require_out(out_compressed, "out_compressed")?;
        // SAFETY: caller contract.
        let input = unsafe { bytes(data, len, "data") }?;
        let c = codec::compress_if_needed(input, threshold);
        let compressed = c.is_compressed();
        let v = match c {
            codec::Compressed::Zlib(v) => v,
            codec::Compressed::Raw(b) => b.to_vec(),
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, v) }?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_compressed, compressed, "out_compressed") }
    })
}

/// Decompresses a zlib stream whose output may not exceed `max_len` bytes.
/// Errors: `EMF_ERR_TOO_LARGE` past `max_len`; `EMF_ERR_CORRUPT` for a bad stream.
///
/// # Safety
///
/// `data` readable for `len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_decompress(
    data: *const u8,
    len: usize,
    max_len: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract.
        let input = unsafe { bytes(data, len, "data") }?;
        let v = codec::decompress(input, max_len)?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, v) }
    })
}

// ---- values: building messages from events, visiting archives as events --------------------

/// Value event: `null`.
pub const EMF_VALUE_NULL: u32 = 0;
/// Value event: a boolean, `int_value` 0 (false) or 1 (true; any non-zero when building).
pub const EMF_VALUE_BOOL: u32 = 1;
/// Value event: an integer in `int_value`.
pub const EMF_VALUE_INT: u32 = 2;
/// Value event: a non-negative integer in `uint_value`.
pub const EMF_VALUE_UINT: u32 = 3;
/// Value event: a finite double in `float_value` (NaN and infinities are refused).
pub const EMF_VALUE_FLOAT: u32 = 4;
/// Value event: a number as exact JSON number text in `data`, `len`. A visit gives it for an
/// integer beyond 64 bits (digits, maybe a `-`) and for a float beyond the double range
/// (with `.`, `e` or `E`); a builder reads any JSON number text as the JSON parser does.
pub const EMF_VALUE_NUMBER_TEXT: u32 = 5;
/// Value event (building only): an integer of any size as its magnitude, little-endian bytes
/// in `data`, `len`, negative when `int_value` is non-zero.
pub const EMF_VALUE_BIG_INT_LE: u32 = 6;
/// Value event: a string, UTF-8 bytes in `data`, `len` (not NUL-terminated).
pub const EMF_VALUE_STRING: u32 = 7;
/// Value event: the key of the next member of the enclosing object, UTF-8 in `data`, `len`.
pub const EMF_VALUE_KEY: u32 = 8;
/// Value event: the start of an array of `count` items (when building, `count` only
/// reserves memory).
pub const EMF_VALUE_BEGIN_ARRAY: u32 = 9;
/// Value event: the start of an object of `count` members (each a `EMF_VALUE_KEY` then a
/// value; when building, `count` only reserves memory).
pub const EMF_VALUE_BEGIN_OBJECT: u32 = 10;
/// Value event: the end of the innermost array or object.
pub const EMF_VALUE_END: u32 = 11;

/// The deepest nesting of arrays and objects a value may have (as in JSON text).
pub const EMF_VALUE_MAX_DEPTH: usize = 128;

/// Flag of `emf_value_builder_new`: refuse an object with two members of the same key (for
/// hosts whose maps cannot hold them).
pub const EMF_BUILDER_UNIQUE_KEYS: u32 = 1;
/// Flag of `emf_value_builder_finish`: a message object without a `"jsonrpc"` member is
/// taken as `"jsonrpc": "2.0"` (a `"jsonrpc"` member that is there must still be `"2.0"`).
pub const EMF_ARCHIVE_IMPLICIT_JSONRPC: u32 = 2;

/// One event of a value stream: what `emf_archive_visit` hands its visitor and what
/// `emf_value_builder_push` takes. `kind` is an `EMF_VALUE_*` code and says which other
/// fields count; the others are 0 / NULL in a visit and ignored when building.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_value_event_t {
    /// An `EMF_VALUE_*` code.
    pub kind: u32,
    /// `EMF_VALUE_INT`: the integer; `EMF_VALUE_BOOL`: 0 or 1; `EMF_VALUE_BIG_INT_LE`:
    /// non-zero for a negative integer.
    pub int_value: i64,
    /// `EMF_VALUE_UINT`: the integer.
    pub uint_value: u64,
    /// `EMF_VALUE_FLOAT`: the double.
    pub float_value: f64,
    /// `EMF_VALUE_STRING`, `EMF_VALUE_KEY`, `EMF_VALUE_NUMBER_TEXT`, `EMF_VALUE_BIG_INT_LE`:
    /// the bytes. In a visit they borrow from the library and are valid only during the
    /// callback.
    pub data: *const u8,
    /// Length of `data`.
    pub len: usize,
    /// `EMF_VALUE_BEGIN_ARRAY`, `EMF_VALUE_BEGIN_OBJECT`: the number of items or members.
    pub count: usize,
}

/// The callback of an `emf_value_visitor_t`: return 0 to go on, non-zero to stop the visit.
pub type emf_value_event_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, event: *const emf_value_event_t) -> c_int>;

/// What `emf_archive_visit` calls for each event.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_value_visitor_t {
    /// Called once per event, in order, on the calling thread.
    pub on_event: emf_value_event_fn,
}

/// A builder of one message from value events (`emf_value_builder_push`), finished into an
/// archive by `emf_value_builder_finish`. Opaque.
///
/// Thread-safety: one thread at a time (a second thread inside gets `EMF_ERR_BUSY`).
pub struct emf_value_builder_t {
    builder: ValueBuilder,
}

impl Handle for emf_value_builder_t {
    const KIND: u32 = 12;
    const NAME: &'static str = "builder";
    type Target = Self;
    type Access = Exclusive;
}

/// Creates a value builder. `flags`: 0 or `EMF_BUILDER_UNIQUE_KEYS` (unknown bits give
/// `EMF_ERR_INVALID_ARGUMENT`). Free it with `emf_value_builder_free`.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_value_builder_new(
    flags: u32,
    out: *mut *mut emf_value_builder_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        if flags & !EMF_BUILDER_UNIQUE_KEYS != 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("unknown builder flags {flags:#x} (known: EMF_BUILDER_UNIQUE_KEYS)"),
            ));
        }
        let builder = if flags & EMF_BUILDER_UNIQUE_KEYS != 0 {
            ValueBuilder::with_unique_keys()
        } else {
            ValueBuilder::new()
        };
        let h = new_handle::<emf_value_builder_t>(emf_value_builder_t { builder })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees a value builder. NULL is fine; a second free gives `EMF_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// No other thread may be using `builder`.
#[no_mangle]
pub unsafe extern "C" fn emf_value_builder_free(builder: *mut emf_value_builder_t) -> emf_status_t {
    // SAFETY: caller contract (no concurrent use); the registry checks liveness.
    guard(|| unsafe { free(builder) })
}

/// Applies `count` events, in order: a value (at the root, as an array item, or after a key
/// in an object), a key, the start or end of an array or object. Refused with
/// `EMF_ERR_INVALID_ARGUMENT`, the message saying what and where (`at $.params[2]`): an
/// unknown kind, misplaced events (a value in an object without a key, an end with nothing
/// open, a second root value), nesting deeper than `EMF_VALUE_MAX_DEPTH`, a NaN or infinite
/// float, text that is not UTF-8, number text that is not a JSON number, and with
/// `EMF_BUILDER_UNIQUE_KEYS` an object with a repeated key (at its end). The events before a
/// refused one stay applied; the refused one changes nothing.
///
/// # Safety
///
/// `builder` a live handle; `events` readable for `count` events, each with `data` readable
/// for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn emf_value_builder_push(
    builder: *mut emf_value_builder_t,
    events: *const emf_value_event_t,
    count: usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let mut b = unsafe { borrow(builder) }?;
        // SAFETY: caller contract.
        let events = unsafe { super::typed(events, count, "events") }?;
        for (i, e) in events.iter().enumerate() {
            // SAFETY: caller contract for each event's bytes.
            unsafe { push_event(&mut b.builder, e) }.map_err(|err| {
                if count > 1 {
                    FfiError::new(err.status, format!("event {i}: {}", err.message))
                } else {
                    err
                }
            })?;
        }
        Ok(())
    })
}

/// Applies one event.
///
/// # Safety
///
/// `e.data` readable for `e.len` bytes when the kind uses it.
unsafe fn push_event(b: &mut ValueBuilder, e: &emf_value_event_t) -> Result<(), FfiError> {
    // SAFETY: caller contract.
    let data = || unsafe { bytes(e.data, e.len, "event.data") };
    let text = |what: &str| -> Result<&str, FfiError> {
        std::str::from_utf8(data()?).map_err(|_| {
            FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("{what} is not UTF-8 text"),
            )
        })
    };
    match e.kind {
        EMF_VALUE_NULL => b.null(),
        EMF_VALUE_BOOL => b.bool(e.int_value != 0),
        EMF_VALUE_INT => b.i64(e.int_value),
        EMF_VALUE_UINT => b.u64(e.uint_value),
        EMF_VALUE_FLOAT => b.f64(e.float_value),
        EMF_VALUE_NUMBER_TEXT => b.number_text(text("number text")?),
        EMF_VALUE_BIG_INT_LE => b.big_int_le(e.int_value != 0, data()?),
        EMF_VALUE_STRING => b.string_bytes(data()?),
        EMF_VALUE_KEY => b.key_bytes(data()?),
        EMF_VALUE_BEGIN_ARRAY => b.begin_array(e.count),
        EMF_VALUE_BEGIN_OBJECT => b.begin_object(e.count),
        EMF_VALUE_END => b.end(),
        k => {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("unknown value event kind {k}"),
            ))
        }
    }
    .map_err(FfiError::from)
}

/// Reads the value built as a JSON-RPC 2.0 message (an object) or batch (a non-empty array
/// of objects), with the rules and messages of `emf_json_to_archive`, and encodes it into
/// `*out` (free it with `emf_buf_free`). `opts` may be NULL (the defaults). `flags`: any of
/// `EMF_ARCHIVE_CHECKSUM` and `EMF_ARCHIVE_IMPLICIT_JSONRPC`. Afterwards, success or not, the
/// builder is empty and may build the next message. Errors: `EMF_ERR_INVALID_ARGUMENT`
/// (nothing built, arrays or objects not ended, not JSON-RPC), `EMF_ERR_TOO_LARGE`.
///
/// # Safety
///
/// `builder` a live handle; `opts` NULL or readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_value_builder_finish(
    builder: *mut emf_value_builder_t,
    opts: *const emf_encode_options_t,
    flags: u32,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the registry; caller contract excludes concurrent free.
        let mut b = unsafe { borrow(builder) }?;
        let known = EMF_ARCHIVE_CHECKSUM | EMF_ARCHIVE_IMPLICIT_JSONRPC;
        if flags & !known != 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!(
                    "unknown archive flags {flags:#x} (known: EMF_ARCHIVE_CHECKSUM, \
                     EMF_ARCHIVE_IMPLICIT_JSONRPC)"
                ),
            ));
        }
        // SAFETY: caller contract.
        let meta = unsafe { metadata(opts) };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                b.builder.reset();
                return Err(e);
            }
        };
        let options = BuildOptions {
            implicit_version: flags & EMF_ARCHIVE_IMPLICIT_JSONRPC != 0,
            encoding: codec::EncodeOptions {
                checksum: flags & EMF_ARCHIVE_CHECKSUM != 0,
            },
        };
        let archive = b.builder.finish_archive(meta, options)?;
        // SAFETY: `out` checked non-NULL; writable by contract.
        unsafe { write_buf(out, archive.to_vec()) }
    })
}

/// Validates an archive and walks it as value events: `visitor->on_event(ctx, &event)` for
/// each, in order, exactly as `emf_archive_to_json` writes the message (each envelope an
/// object: `jsonrpc`, `id`, `method`, `params`, `result`, `error` with `code`, `message`,
/// `data`, then the other members; a batch an array of them). Numbers come as
/// `EMF_VALUE_UINT` (non-negative integers), `EMF_VALUE_INT` (negative ones),
/// `EMF_VALUE_FLOAT`, or `EMF_VALUE_NUMBER_TEXT` (beyond 64 bits or the double range). The
/// event and its bytes are valid only during the callback.
///
/// Returns `EMF_OK` after the last event, `EMF_ERR_STOPPED` when the callback returned
/// non-zero (no event follows), `EMF_ERR_CORRUPT` for bytes that are not a valid archive
/// (then no event was delivered).
///
/// # Safety
///
/// `archive` readable for `len` bytes; `visitor` readable with a valid `on_event`, which must
/// not unwind; `ctx` is passed through untouched.
#[no_mangle]
pub unsafe extern "C" fn emf_archive_visit(
    archive: *const u8,
    len: usize,
    visitor: *const emf_value_visitor_t,
    ctx: *mut c_void,
) -> emf_status_t {
    guard(|| {
        if visitor.is_null() {
            return Err(FfiError::null("visitor"));
        }
        // SAFETY: non-NULL and readable by contract; plain old data.
        let v = unsafe { visitor.read_unaligned() };
        let on_event = v
            .on_event
            .ok_or_else(|| FfiError::null("visitor->on_event"))?;
        // SAFETY: caller contract. Copied: validation and reading must see the same bytes.
        let b = unsafe { bytes(archive, len, "archive") }?.to_vec();
        let msg = codec::decode(&b)?;
        let flow = events::visit_message(msg, &mut |e| {
            let ev = event_of(e);
            // SAFETY: a valid callback by contract; `ev` and the bytes it points to live
            // until it returns.
            if unsafe { on_event(ctx, &ev) } == 0 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        if flow.is_break() {
            return Err(FfiError::new(
                EMF_ERR_STOPPED,
                "the visitor stopped the visit",
            ));
        }
        Ok(())
    })
}

/// The C form of an event.
fn event_of(e: Event<'_>) -> emf_value_event_t {
    let mut ev = emf_value_event_t {
        kind: EMF_VALUE_NULL,
        int_value: 0,
        uint_value: 0,
        float_value: 0.0,
        data: std::ptr::null(),
        len: 0,
        count: 0,
    };
    let text = |ev: &mut emf_value_event_t, kind, s: &str| {
        ev.kind = kind;
        ev.data = s.as_ptr();
        ev.len = s.len();
    };
    match e {
        Event::Null => {}
        Event::Bool(b) => {
            ev.kind = EMF_VALUE_BOOL;
            ev.int_value = i64::from(b);
        }
        Event::Number(NumberRef::PosInt(u)) => {
            ev.kind = EMF_VALUE_UINT;
            ev.uint_value = u;
        }
        Event::Number(NumberRef::NegInt(i)) => {
            ev.kind = EMF_VALUE_INT;
            ev.int_value = i;
        }
        Event::Number(NumberRef::Float(f)) => {
            ev.kind = EMF_VALUE_FLOAT;
            ev.float_value = f;
        }
        Event::Number(NumberRef::Big(s)) => text(&mut ev, EMF_VALUE_NUMBER_TEXT, s),
        Event::String(s) => text(&mut ev, EMF_VALUE_STRING, s),
        Event::Key(s) => text(&mut ev, EMF_VALUE_KEY, s),
        Event::BeginArray(n) => {
            ev.kind = EMF_VALUE_BEGIN_ARRAY;
            ev.count = n;
        }
        Event::BeginObject(n) => {
            ev.kind = EMF_VALUE_BEGIN_OBJECT;
            ev.count = n;
        }
        Event::End => ev.kind = EMF_VALUE_END,
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{emf_buf_free, EMF_ERR_CORRUPT, EMF_ERR_NULL_ARGUMENT, EMF_OK};

    fn take(b: &mut emf_buf_t) -> Vec<u8> {
        let v = if b.data.is_null() {
            Vec::new()
        } else {
            // SAFETY: a buffer returned by the library is readable for `len` bytes.
            unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec()
        };
        // SAFETY: `b` is a live buffer from the library.
        assert_eq!(unsafe { emf_buf_free(b) }, EMF_OK);
        v
    }

    fn ev(kind: u32) -> emf_value_event_t {
        emf_value_event_t {
            kind,
            int_value: 0,
            uint_value: 0,
            float_value: 0.0,
            data: std::ptr::null(),
            len: 0,
            count: 0,
        }
    }

    fn text_ev(kind: u32, s: &[u8]) -> emf_value_event_t {
        emf_value_event_t {
            data: s.as_ptr(),
            len: s.len(),
            ..ev(kind)
        }
    }

    /// Copies every event of a visit into a builder (the bytes are used during the
    /// callback only, as the contract says).
    unsafe extern "C" fn copy_into(ctx: *mut c_void, event: *const emf_value_event_t) -> c_int {
        let b = ctx.cast::<emf_value_builder_t>();
        // SAFETY: a live builder passed as ctx by the test; the event is valid now.
        unsafe { emf_value_builder_push(b, event, 1) }
    }

    struct Seen {
        kinds: Vec<u32>,
        texts: Vec<Vec<u8>>,
        stop_after: usize,
    }

    unsafe extern "C" fn record(ctx: *mut c_void, event: *const emf_value_event_t) -> c_int {
        // SAFETY: ctx is the test's `Seen`, not otherwise used during the visit.
        let seen = unsafe { &mut *ctx.cast::<Seen>() };
        // SAFETY: the event is valid during the callback.
        let e = unsafe { &*event };
        seen.kinds.push(e.kind);
        if !e.data.is_null() {
            // SAFETY: `data` readable for `len` bytes during the callback.
            seen.texts
                .push(unsafe { std::slice::from_raw_parts(e.data, e.len) }.to_vec());
        }
        c_int::from(seen.kinds.len() >= seen.stop_after)
    }

    fn last_error() -> String {
        let mut buf = vec![0u8; 512];
        let mut len = 0;
        // SAFETY: valid buffer and out-parameter.
        unsafe { crate::emf_last_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut len) };
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    fn new_builder(flags: u32) -> *mut emf_value_builder_t {
        let mut b = std::ptr::null_mut();
        // SAFETY: valid out-parameter.
        assert_eq!(unsafe { emf_value_builder_new(flags, &mut b) }, EMF_OK);
        b
    }

    #[test]
    fn visit_then_build_gives_the_same_archive() {
        let json = br#"[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"n":123456789012345678901234567890,"f":0.1,"s":"\u00e9\ud83c\udf89","l":[null,true,-3,1e400]}},{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"m","data":[{}]}},{"jsonrpc":"2.0","id":8,"result":{"ok":false},"x":1}]"#;
        let opts = emf_encode_options_t {
            priority: EMF_PRIORITY_LOW,
            created_at_us: 11,
            deadline_us: 12,
        };
        for flags in [0, EMF_ARCHIVE_CHECKSUM] {
            let mut out = emf_buf_t::EMPTY;
            // SAFETY: valid ranges and out-parameter.
            let st = unsafe {
                emf_json_to_archive_ex(json.as_ptr(), json.len(), &opts, flags, &mut out)
            };
            assert_eq!(st, EMF_OK);
            let archive = take(&mut out);
            let b = new_builder(0);
            let visitor = emf_value_visitor_t {
                on_event: Some(copy_into),
            };
            // SAFETY: valid archive range, visitor and context (a live builder).
            let st =
                unsafe { emf_archive_visit(archive.as_ptr(), archive.len(), &visitor, b.cast()) };
            assert_eq!(st, EMF_OK, "{}", last_error());
            // SAFETY: live builder, valid options and out-parameter.
            let st = unsafe { emf_value_builder_finish(b, &opts, flags, &mut out) };
            assert_eq!(st, EMF_OK, "{}", last_error());
            assert_eq!(take(&mut out), archive);
            // The builder is empty again: finishing now is an error, not the old message.
            // SAFETY: as above.
            let st = unsafe { emf_value_builder_finish(b, &opts, flags, &mut out) };
            assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("no value"), "{}", last_error());
            // SAFETY: live builder, freed once; the second free is detected.
            assert_eq!(unsafe { emf_value_builder_free(b) }, EMF_OK);
            // SAFETY: refused by the registry.
            let st = unsafe { emf_value_builder_free(b) };
            assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        }
    }

    #[test]
    fn build_events_with_implicit_version_and_big_ints() {
        let b = new_builder(EMF_BUILDER_UNIQUE_KEYS);
        let mag = [0u8, 0, 0, 0, 0, 0, 0, 0, 1]; // 2^64
        let events = [
            emf_value_event_t {
                count: 3,
                ..ev(EMF_VALUE_BEGIN_OBJECT)
            },
            text_ev(EMF_VALUE_KEY, b"method"),
            text_ev(EMF_VALUE_STRING, b"task"),
            text_ev(EMF_VALUE_KEY, b"params"),
            emf_value_event_t {
                count: 5,
                ..ev(EMF_VALUE_BEGIN_ARRAY)
            },
            emf_value_event_t {
                int_value: 1,
                ..text_ev(EMF_VALUE_BIG_INT_LE, &mag)
            },
            emf_value_event_t {
                int_value: -5,
                ..ev(EMF_VALUE_INT)
            },
            emf_value_event_t {
                float_value: 2.5,
                ..ev(EMF_VALUE_FLOAT)
            },
            text_ev(EMF_VALUE_NUMBER_TEXT, b"1e400"),
            emf_value_event_t {
                int_value: 1,
                ..ev(EMF_VALUE_BOOL)
            },
            ev(EMF_VALUE_END),
            ev(EMF_VALUE_END),
        ];
        // SAFETY: live builder; valid events.
        let st = unsafe { emf_value_builder_push(b, events.as_ptr(), events.len()) };
        assert_eq!(st, EMF_OK, "{}", last_error());
        let mut out = emf_buf_t::EMPTY;
        // SAFETY: live builder, NULL options, valid out-parameter.
        let st = unsafe {
            emf_value_builder_finish(b, std::ptr::null(), EMF_ARCHIVE_IMPLICIT_JSONRPC, &mut out)
        };
        assert_eq!(st, EMF_OK, "{}", last_error());
        let archive = take(&mut out);
        // SAFETY: valid range and out-parameter.
        let st = unsafe { emf_archive_to_json(archive.as_ptr(), archive.len(), &mut out) };
        assert_eq!(st, EMF_OK);
        assert_eq!(
            take(&mut out),
            br#"{"jsonrpc":"2.0","method":"task","params":[-18446744073709551616,-5,2.5,1e400,true]}"#
        );
        // A visit that stops after 3 events.
        let mut seen = Seen {
            kinds: Vec::new(),
            texts: Vec::new(),
            stop_after: 3,
        };
        let visitor = emf_value_visitor_t {
            on_event: Some(record),
        };
        // SAFETY: valid range, visitor and context.
        let st = unsafe {
            emf_archive_visit(
                archive.as_ptr(),
                archive.len(),
                &visitor,
                (&mut seen as *mut Seen).cast(),
            )
        };
        assert_eq!(st, EMF_ERR_STOPPED);
        assert_eq!(
            seen.kinds,
            [EMF_VALUE_BEGIN_OBJECT, EMF_VALUE_KEY, EMF_VALUE_STRING]
        );
        assert_eq!(seen.texts, [b"jsonrpc".to_vec(), b"2.0".to_vec()]);
        // Without the flag the engine's own rule and message.
        let events = [
            emf_value_event_t {
                count: 1,
                ..ev(EMF_VALUE_BEGIN_OBJECT)
            },
            text_ev(EMF_VALUE_KEY, b"method"),
            text_ev(EMF_VALUE_STRING, b"m"),
            ev(EMF_VALUE_END),
        ];
        // SAFETY: live builder; valid events.
        let st = unsafe { emf_value_builder_push(b, events.as_ptr(), events.len()) };
        assert_eq!(st, EMF_OK);
        // SAFETY: live builder, valid out-parameter.
        let st = unsafe { emf_value_builder_finish(b, std::ptr::null(), 0, &mut out) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("missing \"jsonrpc\""),
            "{}",
            last_error()
        );
        // SAFETY: live builder.
        assert_eq!(unsafe { emf_value_builder_free(b) }, EMF_OK);
    }

    #[test]
    fn builder_and_visit_refuse_misuse() {
        let mut b = std::ptr::null_mut();
        // SAFETY: valid out-parameter; unknown flag refused.
        let st = unsafe { emf_value_builder_new(4, &mut b) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL out refused.
        let st = unsafe { emf_value_builder_new(0, std::ptr::null_mut()) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        let b = new_builder(EMF_BUILDER_UNIQUE_KEYS);
        let push = |e: &[emf_value_event_t]| {
            // SAFETY: live builder; valid events.
            let st = unsafe { emf_value_builder_push(b, e.as_ptr(), e.len()) };
            (st, last_error())
        };
        assert_eq!(push(&[ev(99)]).0, EMF_ERR_INVALID_ARGUMENT);
        assert!(push(&[ev(99)]).1.contains("unknown value event kind 99"));
        assert_eq!(push(&[ev(EMF_VALUE_END)]).0, EMF_ERR_INVALID_ARGUMENT);
        let nan = emf_value_event_t {
            float_value: f64::NAN,
            ..ev(EMF_VALUE_FLOAT)
        };
        let (st, msg) = push(&[ev(EMF_VALUE_BEGIN_ARRAY), ev(EMF_VALUE_NULL), nan]);
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("event 2") && msg.contains("at $[1]"), "{msg}");
        let (st, msg) = push(&[text_ev(EMF_VALUE_STRING, b"\xff")]);
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("UTF-8"), "{msg}");
        let null_data = emf_value_event_t {
            len: 3,
            ..ev(EMF_VALUE_STRING)
        };
        assert_eq!(push(&[null_data]).0, EMF_ERR_NULL_ARGUMENT);
        let (st, msg) = push(&[
            ev(EMF_VALUE_BEGIN_OBJECT),
            text_ev(EMF_VALUE_KEY, b"k"),
            ev(EMF_VALUE_NULL),
            text_ev(EMF_VALUE_KEY, b"k"),
            ev(EMF_VALUE_NULL),
            ev(EMF_VALUE_END),
        ]);
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("the key \"k\""), "{msg}");
        // Deeper than EMF_VALUE_MAX_DEPTH (an array and the refused object are open).
        let mut deep = vec![text_ev(EMF_VALUE_KEY, b"z")];
        deep.extend(vec![ev(EMF_VALUE_BEGIN_ARRAY); EMF_VALUE_MAX_DEPTH]);
        let (st, msg) = push(&deep);
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("nesting deeper"), "{msg}");
        // SAFETY: NULL events with a count.
        let st = unsafe { emf_value_builder_push(b, std::ptr::null(), 1) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        let mut out = emf_buf_t::EMPTY;
        // SAFETY: live builder; unknown finish flag.
        let st = unsafe { emf_value_builder_finish(b, std::ptr::null(), 8, &mut out) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: live builder; arrays still open.
        let st = unsafe { emf_value_builder_finish(b, std::ptr::null(), 0, &mut out) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("not ended"), "{}", last_error());
        // SAFETY: live builder.
        assert_eq!(unsafe { emf_value_builder_free(b) }, EMF_OK);
        // SAFETY: a freed builder is refused.
        assert_eq!(push(&[ev(EMF_VALUE_NULL)]).0, EMF_ERR_INVALID_ARGUMENT);

        let visitor = emf_value_visitor_t {
            on_event: Some(record),
        };
        let none = emf_value_visitor_t { on_event: None };
        let garbage = b"eMF\x01\x04\x00\x00\x00abcd";
        let visit = |v: *const emf_value_visitor_t| {
            // SAFETY: valid archive range (refused as corrupt); `v` NULL or a valid visitor.
            unsafe { emf_archive_visit(garbage.as_ptr(), garbage.len(), v, std::ptr::null_mut()) }
        };
        // NULL visitor, NULL callback, corrupt bytes: refused before any callback.
        assert_eq!(visit(std::ptr::null()), EMF_ERR_NULL_ARGUMENT);
        assert_eq!(visit(&none), EMF_ERR_NULL_ARGUMENT);
        assert_eq!(visit(&visitor), EMF_ERR_CORRUPT);
    }

    #[test]
    fn message_handle_round_trip() {
        let json = br#"[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"x":1}},{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"m"}}]"#;
        let opts = emf_encode_options_t {
            priority: EMF_PRIORITY_HIGH,
            created_at_us: 5,
            deadline_us: 9,
        };
        let mut archive = emf_buf_t::EMPTY;
        // SAFETY: valid input range, options and out-parameter.
        let st = unsafe { emf_json_to_archive(json.as_ptr(), json.len(), &opts, &mut archive) };
        assert_eq!(st, EMF_OK);
        let bytes = take(&mut archive);
        let mut msg = std::ptr::null_mut();
        // SAFETY: valid input range and out-parameter.
        let st = unsafe { emf_message_open(bytes.as_ptr(), bytes.len(), &mut msg) };
        assert_eq!(st, EMF_OK);
        let mut n = 0;
        // SAFETY: live handle, valid out-parameter.
        assert_eq!(unsafe { emf_message_count(msg, &mut n) }, EMF_OK);
        assert_eq!(n, 2);
        let mut info = std::mem::MaybeUninit::<emf_envelope_info_t>::uninit();
        // SAFETY: live handle, valid out-parameter.
        let st = unsafe { emf_message_envelope(msg, 0, info.as_mut_ptr()) };
        assert_eq!(st, EMF_OK);
        // SAFETY: written on success.
        let info = unsafe { info.assume_init() };
        assert_eq!(info.kind, EMF_KIND_REQUEST);
        assert_eq!(info.priority, EMF_PRIORITY_HIGH);
        assert_eq!((info.created_at_us, info.deadline_us), (5, 9));
        assert_eq!(info.id_type, EMF_ID_STRING);
        // SAFETY: borrowed from the live handle.
        let method = unsafe { std::slice::from_raw_parts(info.method, info.method_len) };
        assert_eq!(method, b"tools/call");
        let mut out = emf_buf_t::EMPTY;
        // SAFETY: live handle, valid out-parameter.
        let st = unsafe { emf_message_payload_json(msg, 1, &mut out) };
        assert_eq!(st, EMF_OK);
        assert_eq!(take(&mut out), br#"{"code":-1,"message":"m"}"#);
        // SAFETY: live handle, valid out-parameter.
        assert_eq!(unsafe { emf_message_id_json(msg, 0, &mut out) }, EMF_OK);
        assert_eq!(take(&mut out), br#""a""#);
        // SAFETY: live handle, valid out-parameter.
        assert_eq!(unsafe { emf_message_to_json(msg, &mut out) }, EMF_OK);
        assert_eq!(take(&mut out), json);
        // SAFETY: out of range index is an error, not a read.
        let st = unsafe { emf_message_envelope(msg, 2, std::ptr::null_mut()) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        // SAFETY: live handle freed once; the second free is detected.
        assert_eq!(unsafe { emf_message_free(msg) }, EMF_OK);
        // SAFETY: the registry refuses the stale pointer without dereferencing it.
        assert_eq!(unsafe { emf_message_free(msg) }, EMF_ERR_INVALID_ARGUMENT);
        let mut count = 0;
        // SAFETY: a truncated copy is validated, not trusted.
        let st = unsafe { emf_archive_validate(bytes.as_ptr(), bytes.len() - 1, &mut count) };
        assert_eq!(st, EMF_ERR_CORRUPT);
    }

    /// Issue 9, item 7: an archive made with `EMF_ARCHIVE_CHECKSUM` has every flipped bit
    /// refused by each function that reads archives; without the flag, the same call makes
    /// the same bytes as `emf_json_to_archive`.
    #[test]
    fn checksummed_archives_through_the_abi() {
        let json = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"q":"abc","n":12}}"#;
        let opts = emf_encode_options_t {
            priority: EMF_PRIORITY_NORMAL,
            created_at_us: 77,
            deadline_us: 0,
        };
        let encode = |flags: u32| {
            let mut out = emf_buf_t::EMPTY;
            // SAFETY: valid input range, options and out-parameter.
            let st = unsafe {
                emf_json_to_archive_ex(json.as_ptr(), json.len(), &opts, flags, &mut out)
            };
            (st, take(&mut out))
        };
        let (st, sealed) = encode(EMF_ARCHIVE_CHECKSUM);
        assert_eq!(st, EMF_OK);
        let (st, plain) = encode(0);
        assert_eq!(st, EMF_OK);
        let mut out = emf_buf_t::EMPTY;
        // SAFETY: valid input range, options and out-parameter.
        let st = unsafe { emf_json_to_archive(json.as_ptr(), json.len(), &opts, &mut out) };
        assert_eq!((st, take(&mut out)), (EMF_OK, plain.clone()));
        assert_eq!(sealed.len(), plain.len() + 4);
        assert_eq!(encode(2).0, EMF_ERR_INVALID_ARGUMENT);
        assert_eq!(
            encode(EMF_ARCHIVE_CHECKSUM | 1 << 31).0,
            EMF_ERR_INVALID_ARGUMENT
        );
        // SAFETY: a NULL out is refused before anything is read.
        let st = unsafe {
            emf_json_to_archive_ex(json.as_ptr(), json.len(), &opts, 0, std::ptr::null_mut())
        };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        let read = |b: &[u8]| -> [emf_status_t; 3] {
            let mut n = 0;
            // SAFETY: valid input range and out-parameter.
            let validate = unsafe { emf_archive_validate(b.as_ptr(), b.len(), &mut n) };
            let mut out = emf_buf_t::EMPTY;
            // SAFETY: valid input range and out-parameter.
            let to_json = unsafe { emf_archive_to_json(b.as_ptr(), b.len(), &mut out) };
            take(&mut out);
            let mut msg = std::ptr::null_mut();
            // SAFETY: valid input range and out-parameter.
            let open = unsafe { emf_message_open(b.as_ptr(), b.len(), &mut msg) };
            if open == EMF_OK {
                // SAFETY: a live handle, freed once.
                assert_eq!(unsafe { emf_message_free(msg) }, EMF_OK);
            }
            [validate, to_json, open]
        };
        assert_eq!(read(&sealed), [EMF_OK; 3]);
        // Every bit; under Miri (slow) every 13th.
        for bit in (0..sealed.len() * 8).step_by(if cfg!(miri) { 13 } else { 1 }) {
            let mut b = sealed.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(read(&b), [EMF_ERR_CORRUPT; 3], "bit {bit}");
        }
    }

    #[test]
    fn compression_through_the_abi() {
        let text = b"abcdefgh".repeat(512);
        let mut out = emf_buf_t::EMPTY;
        let mut compressed = false;
        // SAFETY: valid ranges and out-parameters.
        let st = unsafe {
            emf_compress_if_needed(text.as_ptr(), text.len(), 1024, &mut out, &mut compressed)
        };
        assert_eq!(st, EMF_OK);
        assert!(compressed);
        let packed = take(&mut out);
        // SAFETY: valid ranges and out-parameter.
        let st = unsafe { emf_decompress(packed.as_ptr(), packed.len(), 1 << 20, &mut out) };
        assert_eq!(st, EMF_OK);
        assert_eq!(take(&mut out), text);
        // SAFETY: the limit is enforced before the output grows past it.
        let st = unsafe { emf_decompress(packed.as_ptr(), packed.len(), 100, &mut out) };
        assert_eq!(st, crate::EMF_ERR_TOO_LARGE);
    }

    #[test]
    fn names_match_the_rust_api() {
        for k in engine::codec::Kind::ALL {
            // SAFETY: static NUL-terminated string.
            let n = unsafe { std::ffi::CStr::from_ptr(emf_kind_name(k as u32)) };
            assert_eq!(n.to_str().unwrap(), k.name());
        }
        for p in engine::codec::Priority::ALL {
            // SAFETY: static NUL-terminated string.
            let n = unsafe { std::ffi::CStr::from_ptr(emf_priority_name(p as u32)) };
            assert_eq!(n.to_str().unwrap(), p.name());
        }
        // SAFETY: static NUL-terminated string.
        let n = unsafe { std::ffi::CStr::from_ptr(emf_kind_name(99)) };
        assert_eq!(n.to_str().unwrap(), "unknown");
    }

    #[test]
    fn constants_match_the_rust_api() {
        assert_eq!(EMF_VALUE_MAX_DEPTH, engine::codec::json::MAX_DEPTH);
        assert_eq!(
            super::EMF_COMPRESS_DEFAULT_THRESHOLD,
            engine::codec::DEFAULT_THRESHOLD
        );
        for k in engine::codec::Kind::ALL {
            assert_eq!(engine::codec::Kind::from_code(k as u32), Some(k));
        }
        assert_eq!(engine::codec::Kind::Error as u32, super::EMF_KIND_ERROR);
        assert_eq!(engine::codec::Priority::Low as u32, super::EMF_PRIORITY_LOW);
    }
}
