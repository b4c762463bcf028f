//! C ABI of the vector kernels, int8 quantization and the HNSW index.
//!
//! Vectors are contiguous arrays of `float` (or `int8_t` codes, or IEEE half floats as
//! `uint16_t`), with their length passed beside them and checked against the index. An index
//! handle is thread-safe: inserts, removals and searches may run on any threads at once;
//! `emf_hnsw_compact` waits for the calls in progress and holds the others off while it
//! runs (the engine's `hnsw::Index` keeps that rule; this file holds no lock). A caller that
//! must not block (a VM scheduler thread) uses the `emf_hnsw_try_*` forms, which answer
//! `EMF_ERR_BUSY` at once, having done nothing, where the plain form would wait, and makes
//! the plain call from a thread that may block. A handle must not be freed while another
//! thread uses it.

use std::ffi::c_char;

use super::handle::{borrow, free, new_handle, Handle, Shared};
use super::{
    c_str, emf_status_t, guard, require_out, typed, typed_mut, write_out, FfiError, FfiResult,
    EMF_ERR_INVALID_ARGUMENT, EMF_ERR_TOO_LARGE, EMF_ERR_UNSUPPORTED,
};
use engine::hnsw::{Filter, Hit, Index, IndexRead, Originals, Params, SearchOptions};
use engine::vector::{self, f16, Metric};

/// Metric: `1 − cos(a, b)`.
pub const EMF_METRIC_COSINE: u32 = 0;
/// Metric: `1 − a·b` (for a plain dot product of `int8_t` codes use `emf_dot_i8`).
pub const EMF_METRIC_DOT: u32 = 1;
/// Metric: `|a − b|²`.
pub const EMF_METRIC_L2SQ: u32 = 2;

/// Originals: int8 codes only.
pub const EMF_ORIGINALS_NONE: u32 = 0;
/// Originals: kept as half floats for re-ranking.
pub const EMF_ORIGINALS_F16: u32 = 1;
/// Originals: kept as floats for re-ranking.
pub const EMF_ORIGINALS_F32: u32 = 2;

/// Search flag: re-rank the int8 candidates with the original vectors (when kept).
pub const EMF_SEARCH_RERANK: u32 = 1;

fn metric(code: u32) -> FfiResult<Metric> {
    Ok(Metric::from_code(code)?)
}

/// `a · b` elements of an array argument; `EMF_ERR_TOO_LARGE` when the product overflows
/// (the header's rule: sizes beyond a limit, arithmetic overflow included).
fn product(a: usize, b: usize, what: &str) -> FfiResult<usize> {
    a.checked_mul(b).ok_or_else(|| {
        FfiError::new(
            EMF_ERR_TOO_LARGE,
            format!("`{what}`: {a} · {b} values overflow the address space"),
        )
    })
}

fn dim_eq(dim: usize, want: usize, what: &str) -> FfiResult {
    if dim == want {
        Ok(())
    } else if want == 0 {
        Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "{what}: the index has no dimension yet (created with dim 0, nothing inserted)"
            ),
        ))
    } else {
        Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("{what} has {dim} dimensions, the index {want}"),
        ))
    }
}

/// Quantizes `dim` floats to int8 codes with a per-vector scale (`x ≈ scale · code`).
/// Fails on NaN or infinite values.
///
/// # Safety
///
/// `x` readable for `dim` floats; `out_codes` writable for `dim` bytes; `out_scale` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_quantize_f32(
    x: *const f32,
    dim: usize,
    out_codes: *mut i8,
    out_scale: *mut f32,
) -> emf_status_t {
    guard(|| {
        require_out(out_scale, "out_scale")?;
        // SAFETY: caller contract (NULL, length and alignment checked inside).
        let x = unsafe { typed(x, dim, "x") }?;
        // SAFETY: as above.
        let codes = unsafe { typed_mut(out_codes, dim, "out_codes") }?;
        let scale = vector::quantize_into(x, codes)?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { write_out(out_scale, scale, "out_scale") }
    })
}

/// Writes `scale · codes[i]` for `dim` codes into `out`.
///
/// # Safety
///
/// `codes` readable for `dim` bytes; `out` writable for `dim` floats.
#[no_mangle]
pub unsafe extern "C" fn emf_dequantize_i8(
    codes: *const i8,
    dim: usize,
    scale: f32,
    out: *mut f32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let codes = unsafe { typed(codes, dim, "codes") }?;
        // SAFETY: caller contract.
        let out = unsafe { typed_mut(out, dim, "out") }?;
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = f32::from(c) * scale;
        }
        Ok(())
    })
}

/// The shared body of the two-vector functions: checks `out`, borrows both arrays (NULL,
/// length cap, alignment), computes, writes the answer.
///
/// # Safety
///
/// `a`, `b` readable for `dim` values; `out` writable.
unsafe fn two_vectors<T, R>(
    a: *const T,
    b: *const T,
    dim: usize,
    out: *mut R,
    f: impl FnOnce(&[T], &[T]) -> FfiResult<R>,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract (readable for `dim` values).
        let a = unsafe { typed(a, dim, "a") }?;
        // SAFETY: as above.
        let b = unsafe { typed(b, dim, "b") }?;
        let r = f(a, b)?;
        // SAFETY: checked non-NULL, writable by contract.
        unsafe { write_out(out, r, "out") }
    })
}

/// The distance `metric` (`EMF_METRIC_*`) between two float vectors of `dim` values.
///
/// # Safety
///
/// `a`, `b` readable for `dim` floats; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_distance_f32(
    metric_code: u32,
    a: *const f32,
    b: *const f32,
    dim: usize,
    out: *mut f64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe {
        two_vectors(a, b, dim, out, |a, b| {
            Ok(vector::distance(metric(metric_code)?, a, b)?)
        })
    }
}

/// The distance `metric` between two half-float vectors (IEEE binary16 bits as `uint16_t`).
///
/// # Safety
///
/// `a`, `b` readable for `dim` values; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_distance_f16(
    metric_code: u32,
    a: *const u16,
    b: *const u16,
    dim: usize,
    out: *mut f64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract; `f16` is `repr(transparent)` over `u16`.
    unsafe {
        two_vectors(a.cast::<f16>(), b.cast::<f16>(), dim, out, |a, b| {
            Ok(vector::distance(metric(metric_code)?, a, b)?)
        })
    }
}

/// The cosine distance between two int8 code vectors (`1 − cos`: the scales cancel) —
/// `cosine_distance_quantized` of the original design.
///
/// # Safety
///
/// `a`, `b` readable for `dim` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_cosine_distance_i8(
    a: *const i8,
    b: *const i8,
    dim: usize,
    out: *mut f64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { two_vectors(a, b, dim, out, |a, b| Ok(vector::cosine_distance(a, b)?)) }
}

/// The exact integer dot product of two int8 code vectors (any length) (multiply by both scales for the
/// dot product of the vectors they stand for).
///
/// # Safety
///
/// `a`, `b` readable for `dim` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_dot_i8(
    a: *const i8,
    b: *const i8,
    dim: usize,
    out: *mut i64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { two_vectors(a, b, dim, out, |a, b| Ok(vector::dot(a, b)? as i64)) }
}

/// Parameters of an index (`emf_hnsw_params_default` fills the original design's).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_hnsw_params_t {
    /// Vector dimensions (1..65536); 0 for `emf_hnsw_new`: the length of the first vector
    /// inserted (`emf_hnsw_params` reports 0 until then).
    pub dim: u32,
    /// `EMF_METRIC_*`.
    pub metric: u32,
    /// Neighbours per node on upper levels, `2·m` on level 0 (2..128; default 16).
    pub m: u32,
    /// Candidates kept while inserting (default 200).
    pub ef_construction: u32,
    /// Candidates kept while searching when a search passes 0 (default 50).
    pub ef_search: u32,
    /// `EMF_ORIGINALS_*` (default none).
    pub originals: u32,
    /// Seed of the level draws.
    pub seed: u64,
}

impl emf_hnsw_params_t {
    fn from_params(p: &Params) -> Self {
        emf_hnsw_params_t {
            dim: p.dim as u32,
            metric: p.metric.code(),
            m: p.m as u32,
            ef_construction: p.ef_construction as u32,
            ef_search: p.ef_search as u32,
            originals: match p.originals {
                Originals::None => EMF_ORIGINALS_NONE,
                Originals::F16 => EMF_ORIGINALS_F16,
                Originals::F32 => EMF_ORIGINALS_F32,
            },
            seed: p.seed,
        }
    }

    fn to_params(self) -> FfiResult<Params> {
        Ok(Params {
            dim: self.dim as usize,
            metric: metric(self.metric)?,
            m: self.m as usize,
            ef_construction: self.ef_construction as usize,
            ef_search: self.ef_search as usize,
            originals: match self.originals {
                EMF_ORIGINALS_NONE => Originals::None,
                EMF_ORIGINALS_F16 => Originals::F16,
                EMF_ORIGINALS_F32 => Originals::F32,
                o => {
                    return Err(FfiError::new(
                        EMF_ERR_INVALID_ARGUMENT,
                        format!("originals {o} is not one of EMF_ORIGINALS_*"),
                    ))
                }
            },
            seed: self.seed,
        })
    }
}

/// One search answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_hnsw_hit_t {
    /// The id given at insertion.
    pub id: u64,
    /// Distance to the query (int8 estimate, or exact when re-ranked).
    pub distance: f32,
}

/// An HNSW index: built in memory (`emf_hnsw_new`, `emf_hnsw_load`) or a saved file mapped
/// read-only (`emf_hnsw_open`). Opaque; thread-safe (see the module notes).
pub struct emf_hnsw_t {
    _private: (),
}

impl Handle for emf_hnsw_t {
    const KIND: u32 = 11;
    const NAME: &'static str = "index";
    type Target = Index;
    type Access = Shared;
}

/// Whether a call waits while a compaction runs (`emf_hnsw_<op>`) or answers `EMF_ERR_BUSY`
/// at once (`emf_hnsw_try_<op>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block,
    Try,
}

/// Borrows the index behind `h` and enters its read side as `wait` says, then runs `f`.
fn with_read<R>(
    h: *const emf_hnsw_t,
    wait: Wait,
    f: impl FnOnce(&Index, &IndexRead<'_>) -> FfiResult<R>,
) -> FfiResult<R> {
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let index = unsafe { borrow(h) }?;
    let read = match wait {
        Wait::Block => index.read(),
        Wait::Try => index.try_read()?,
    };
    f(index, &read)
}

/// `EMF_ERR_UNSUPPORTED` for a mapped index, naming the C function that makes a copy that
/// can change (the engine's message names its own).
fn writable(index: &Index) -> FfiResult {
    if index.is_mapped() {
        return Err(FfiError::new(
            EMF_ERR_UNSUPPORTED,
            "the index is a mapped file, read-only (emf_hnsw_load makes a copy that can change)",
        ));
    }
    Ok(())
}

/// Registers `index` as a new handle and writes it to `out`.
///
/// # Safety
///
/// `out` writable (checked non-NULL by the caller).
unsafe fn publish(index: Index, out: *mut *mut emf_hnsw_t) -> FfiResult {
    let h = new_handle::<emf_hnsw_t>(index)?;
    // SAFETY: writable by the caller's contract.
    unsafe { write_out(out, h, "out") }
}

/// Writes the original design's parameters (`M` 16, `ef_construction` 200, `ef_search` 50,
/// cosine, no originals) for `dim` dimensions.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_params_default(
    dim: u32,
    out: *mut emf_hnsw_params_t,
) -> emf_status_t {
    guard(|| {
        let p = emf_hnsw_params_t::from_params(&Params::new(dim as usize));
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out, p, "out") }
    })
}

/// Creates an empty index.
///
/// # Safety
///
/// `params` readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_new(
    params: *const emf_hnsw_params_t,
    out: *mut *mut emf_hnsw_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        if params.is_null() {
            return Err(FfiError::null("params"));
        }
        // SAFETY: non-NULL and readable by contract; a plain-data struct.
        let p = unsafe { params.read_unaligned() }.to_params()?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { publish(Index::new(p)?, out) }
    })
}

/// Maps the index file at `path` read-only and validates it (searches only; other processes
/// may map the same file): its CRC32C over every byte, then its structure. A damaged file
/// gives `EMF_ERR_CORRUPT`, a missing one `EMF_ERR_NOT_FOUND`, one the OS refuses or a path
/// that is not a regular file (a directory) `EMF_ERR_IO`.
///
/// # Safety
///
/// `path` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_open(
    path: *const c_char,
    out: *mut *mut emf_hnsw_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let m = Index::open(c_str(path, "path")?)?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { publish(m, out) }
    })
}

/// Reads the index file at `path` into a new in-memory index that can change. The file is
/// validated and the errors are those of `emf_hnsw_open`.
///
/// # Safety
///
/// `path` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_load(
    path: *const c_char,
    out: *mut *mut emf_hnsw_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let idx = Index::load(c_str(path, "path")?)?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { publish(idx, out) }
    })
}

/// Frees an index (a mapped one is unmapped). NULL is fine.
///
/// # Safety
///
/// No other thread may be using `index`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_free(index: *mut emf_hnsw_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(index) })
}

/// Writes the index's parameters (they never change, but for `dim` of an index created with
/// `dim` 0: 0 until the first insert fixes it; this call never waits for a compaction).
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_params(
    index: *const emf_hnsw_t,
    out: *mut emf_hnsw_params_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a free.
        let p = emf_hnsw_params_t::from_params(&unsafe { borrow(index) }?.params());
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out, p, "out") }
    })
}

/// # Safety
///
/// As `emf_hnsw_insert`.
unsafe fn insert(
    index: *const emf_hnsw_t,
    id: u64,
    vector: *const f32,
    dim: usize,
    wait: Wait,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let v = unsafe { typed(vector, dim, "vector") }?;
        // SAFETY: forwarded caller contract.
        unsafe { fix_dim(index, dim, wait) }?;
        with_read(index, wait, |i, r| {
            writable(i)?;
            Ok(r.insert(id, v)?)
        })
    })
}

/// On an index created with `dim` 0 and still without a vector, fixes its dimension to `dim`
/// (the engine's `Index::fix_dim`, or `try_fix_dim`: `EMF_ERR_BUSY` rather than wait); does
/// nothing otherwise.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
unsafe fn fix_dim(index: *const emf_hnsw_t, dim: usize, wait: Wait) -> FfiResult {
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let i = unsafe { borrow(index) }?;
    writable(i)?;
    match wait {
        Wait::Block => i.fix_dim(dim)?,
        Wait::Try => i.try_fix_dim(dim)?,
    }
    Ok(())
}

/// # Safety
///
/// As `emf_hnsw_insert_new`.
unsafe fn insert_new(
    index: *const emf_hnsw_t,
    vector: *const f32,
    dim: usize,
    out_id: *mut u64,
    wait: Wait,
) -> emf_status_t {
    guard(|| {
        require_out(out_id, "out_id")?;
        // SAFETY: caller contract.
        let v = unsafe { typed(vector, dim, "vector") }?;
        // SAFETY: forwarded caller contract.
        unsafe { fix_dim(index, dim, wait) }?;
        let id = with_read(index, wait, |i, r| {
            writable(i)?;
            Ok(r.insert_new(v)?)
        })?;
        // SAFETY: checked non-NULL, writable by contract.
        unsafe { write_out(out_id, id, "out_id") }
    })
}

/// Inserts a vector of `dim` floats under an id the index picks, written to `*out_id`: the
/// smallest id not in use from a counter that starts at 0 and only grows (ids inserted by
/// `emf_hnsw_insert` are skipped, removed ones are not reused; a loaded index counts from 0
/// again). Errors as `emf_hnsw_insert` (no id is used up). Waits while a compaction runs.
///
/// # Safety
///
/// `vector` readable for `dim` floats; `out_id` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_insert_new(
    index: *const emf_hnsw_t,
    vector: *const f32,
    dim: usize,
    out_id: *mut u64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { insert_new(index, vector, dim, out_id, Wait::Block) }
}

/// `emf_hnsw_insert_new` without waiting: `EMF_ERR_BUSY`, nothing inserted, while a
/// compaction runs or waits (or, on an index without a dimension yet, while any call runs).
///
/// # Safety
///
/// As `emf_hnsw_insert_new`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_insert_new(
    index: *const emf_hnsw_t,
    vector: *const f32,
    dim: usize,
    out_id: *mut u64,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { insert_new(index, vector, dim, out_id, Wait::Try) }
}

/// Inserts a vector of `dim` floats under `id`. `EMF_ERR_INVALID_ARGUMENT` when `id` is
/// already in the index, `dim` differs from the index's, or a value is NaN or infinite;
/// `EMF_ERR_UNSUPPORTED` for a mapped index. On an index created with `dim` 0 the first
/// insert fixes the dimension (of concurrent first inserts exactly one does; the others
/// then fit it or fail). Waits while a compaction runs.
///
/// # Safety
///
/// `vector` readable for `dim` floats.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_insert(
    index: *const emf_hnsw_t,
    id: u64,
    vector: *const f32,
    dim: usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { insert(index, id, vector, dim, Wait::Block) }
}

/// `emf_hnsw_insert` without waiting: `EMF_ERR_BUSY`, nothing inserted, while a compaction
/// runs or waits, or, on an index without a dimension yet, while any call runs (for a caller
/// that must not block; call `emf_hnsw_insert` from a thread that may).
///
/// # Safety
///
/// As `emf_hnsw_insert`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_insert(
    index: *const emf_hnsw_t,
    id: u64,
    vector: *const f32,
    dim: usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { insert(index, id, vector, dim, Wait::Try) }
}

/// Inserts `n` vectors (`vectors` holds `n · dim` floats, row after row) under `ids` on
/// `threads` threads (0: one per CPU). All are checked first: on an error none is inserted.
/// `EMF_ERR_TOO_LARGE` when `n · dim` floats exceed `EMF_MAX_INPUT_LEN` bytes or overflow.
/// On an index created with `dim` 0, a batch of `n > 0` first fixes the dimension to `dim`.
/// Waits while a compaction runs.
///
/// # Safety
///
/// `ids` readable for `n` values; `vectors` for `n · dim` floats.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_insert_batch(
    index: *const emf_hnsw_t,
    ids: *const u64,
    n: usize,
    vectors: *const f32,
    dim: usize,
    threads: u32,
) -> emf_status_t {
    guard(|| {
        let total = product(n, dim, "vectors")?;
        // SAFETY: caller contract.
        let ids = unsafe { typed(ids, n, "ids") }?;
        // SAFETY: caller contract.
        let vs = unsafe { typed(vectors, total, "vectors") }?;
        if n > 0 {
            // SAFETY: forwarded caller contract.
            unsafe { fix_dim(index, dim, Wait::Block) }?;
        }
        with_read(index, Wait::Block, |i, r| {
            writable(i)?;
            if n == 0 && i.dim() == 0 {
                return Ok(());
            }
            dim_eq(dim, i.dim(), "vectors")?;
            Ok(r.insert_batch(ids, vs, threads as usize)?)
        })
    })
}

/// # Safety
///
/// As `emf_hnsw_search`.
#[allow(clippy::too_many_arguments)]
unsafe fn search(
    index: *const emf_hnsw_t,
    query: *const f32,
    dim: usize,
    k: usize,
    ef: usize,
    flags: u32,
    filter: *const u64,
    filter_words: usize,
    out_hits: *mut emf_hnsw_hit_t,
    out_count: *mut usize,
    wait: Wait,
) -> emf_status_t {
    guard(|| {
        require_out(out_count, "out_count")?;
        // SAFETY: caller contract.
        let q = unsafe { typed(query, dim, "query") }?;
        // SAFETY: caller contract.
        let out = unsafe { typed_mut(out_hits, k, "out_hits") }?;
        // SAFETY: caller contract.
        let bits = unsafe { typed(filter, filter_words, "filter") }?;
        let o = options(k, ef, flags, bits)?;
        let hits = with_read(index, wait, |_, r| Ok(r.search(q, &o)?))?;
        let n = write_hits(&hits, out);
        // SAFETY: checked non-NULL, writable by contract.
        unsafe { write_out(out_count, n, "out_count") }
    })
}

/// Searches for the `k` nearest vectors to `query` (`dim` floats). `ef` candidates are kept
/// (0: the index's `ef_search`); `flags` may hold `EMF_SEARCH_RERANK`. When `filter_words`
/// is not 0, only ids whose bit is set in `filter` (id `i`: bit `i % 64` of word `i / 64`)
/// are returned. Writes up to `k` hits, closest first, into `out_hits` and their number to
/// `*out_count`. Waits while a compaction runs.
///
/// # Safety
///
/// `query` readable for `dim` floats; `filter` for `filter_words` words; `out_hits` writable
/// for `k` hits; `out_count` writable; output buffers do not overlap the inputs.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_search(
    index: *const emf_hnsw_t,
    query: *const f32,
    dim: usize,
    k: usize,
    ef: usize,
    flags: u32,
    filter: *const u64,
    filter_words: usize,
    out_hits: *mut emf_hnsw_hit_t,
    out_count: *mut usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe {
        search(
            index,
            query,
            dim,
            k,
            ef,
            flags,
            filter,
            filter_words,
            out_hits,
            out_count,
            Wait::Block,
        )
    }
}

/// `emf_hnsw_search` without waiting: `EMF_ERR_BUSY`, nothing written, while a compaction
/// runs or waits.
///
/// # Safety
///
/// As `emf_hnsw_search`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_search(
    index: *const emf_hnsw_t,
    query: *const f32,
    dim: usize,
    k: usize,
    ef: usize,
    flags: u32,
    filter: *const u64,
    filter_words: usize,
    out_hits: *mut emf_hnsw_hit_t,
    out_count: *mut usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe {
        search(
            index,
            query,
            dim,
            k,
            ef,
            flags,
            filter,
            filter_words,
            out_hits,
            out_count,
            Wait::Try,
        )
    }
}

fn options<'a>(k: usize, ef: usize, flags: u32, bits: &'a [u64]) -> FfiResult<SearchOptions<'a>> {
    if flags & !EMF_SEARCH_RERANK != 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("unknown search flags {flags:#x}"),
        ));
    }
    Ok(SearchOptions {
        k,
        ef,
        rerank: flags & EMF_SEARCH_RERANK != 0,
        filter: if bits.is_empty() {
            Filter::All
        } else {
            Filter::Bitset(bits)
        },
    })
}

/// Writes as many of `hits` as `out` holds; returns that number.
fn write_hits(hits: &[Hit], out: &mut [emf_hnsw_hit_t]) -> usize {
    for (o, h) in out.iter_mut().zip(hits) {
        *o = emf_hnsw_hit_t {
            id: h.id,
            distance: h.distance,
        };
    }
    hits.len().min(out.len())
}

/// Searches `nq` queries (`queries` holds `nq · dim` floats) on `threads` threads (0: one per
/// CPU): query `i`'s hits go to `out_hits[i·k ..]`, their number to `out_counts[i]` (slots
/// past a query's count are left as they were). The outputs are written only when every
/// query succeeded. `EMF_ERR_TOO_LARGE` when `nq · dim` or `nq · k` overflow or the arrays
/// exceed `EMF_MAX_INPUT_LEN` bytes. Waits while a compaction runs.
///
/// # Safety
///
/// `queries` readable for `nq · dim` floats; `out_hits` writable for `nq · k` hits;
/// `out_counts` for `nq` values; `filter` as in `emf_hnsw_search`; output buffers do not
/// overlap the inputs or each other.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_search_batch(
    index: *const emf_hnsw_t,
    queries: *const f32,
    nq: usize,
    dim: usize,
    k: usize,
    ef: usize,
    flags: u32,
    filter: *const u64,
    filter_words: usize,
    threads: u32,
    out_hits: *mut emf_hnsw_hit_t,
    out_counts: *mut usize,
) -> emf_status_t {
    guard(|| {
        let total = product(nq, dim, "queries")?;
        let hits_len = product(nq, k, "out_hits")?;
        // SAFETY: caller contract.
        let qs = unsafe { typed(queries, total, "queries") }?;
        // SAFETY: caller contract.
        let out = unsafe { typed_mut(out_hits, hits_len, "out_hits") }?;
        // SAFETY: caller contract.
        let counts = unsafe { typed_mut(out_counts, nq, "out_counts") }?;
        // SAFETY: caller contract.
        let bits = unsafe { typed(filter, filter_words, "filter") }?;
        let o = options(k, ef, flags, bits)?;
        // The handle and the dimension are checked even when there is nothing to search.
        let answers = with_read(index, Wait::Block, |i, r| {
            dim_eq(dim, i.dim(), "queries")?;
            if nq > 0 && dim == 0 {
                // Only an index without a dimension gets here: it has no answer to give for
                // `nq` queries of no values, and `out_counts` would be left unwritten.
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    "queries: the index has no dimension yet (created with dim 0, nothing \
                     inserted), and queries of 0 values are none",
                ));
            }
            Ok(r.search_batch(qs, &o, threads as usize)?)
        })?;
        // Every query succeeded: only each query's hits are written, slots past its count
        // keep what the caller put there.
        for (i, (hits, c)) in answers.iter().zip(counts.iter_mut()).enumerate() {
            *c = write_hits(hits, &mut out[i * k..(i + 1) * k]);
        }
        Ok(())
    })
}

/// # Safety
///
/// As `emf_hnsw_remove`.
unsafe fn remove(index: *const emf_hnsw_t, id: u64, wait: Wait) -> emf_status_t {
    guard(|| {
        with_read(index, wait, |i, r| {
            writable(i)?;
            Ok(r.remove(id)?)
        })
    })
}

/// Removes `id` (`EMF_ERR_NOT_FOUND` when absent). Its memory is reclaimed by
/// `emf_hnsw_compact`. Waits while a compaction runs.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_remove(index: *const emf_hnsw_t, id: u64) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { remove(index, id, Wait::Block) }
}

/// `emf_hnsw_remove` without waiting: `EMF_ERR_BUSY`, nothing removed, while a compaction
/// runs or waits.
///
/// # Safety
///
/// As `emf_hnsw_remove`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_remove(index: *const emf_hnsw_t, id: u64) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { remove(index, id, Wait::Try) }
}

/// Reclaims the memory of removed vectors. Waits for calls in progress on this index and
/// holds others off until it is done (they wait, or their `emf_hnsw_try_*` forms answer
/// `EMF_ERR_BUSY`). `EMF_ERR_UNSUPPORTED` for a mapped index.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_compact(index: *const emf_hnsw_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a free.
        let index = unsafe { borrow(index) }?;
        writable(index)?;
        Ok(index.compact()?)
    })
}

/// `emf_hnsw_compact` without waiting: `EMF_ERR_BUSY`, nothing done, while another call on
/// the index (or another compaction) runs.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_compact(index: *const emf_hnsw_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a free.
        let index = unsafe { borrow(index) }?;
        writable(index)?;
        Ok(index.try_compact()?)
    })
}

/// Writes the index to the file `path` (a temporary file renamed over it, so processes that
/// mapped the old file keep reading it intact). Waits while a compaction runs.
///
/// # Safety
///
/// `path` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_save(
    index: *const emf_hnsw_t,
    path: *const c_char,
) -> emf_status_t {
    guard(|| {
        let path = c_str(path, "path")?;
        with_read(index, Wait::Block, |i, r| {
            writable(i)?;
            Ok(r.save(path)?)
        })
    })
}

/// # Safety
///
/// As `emf_hnsw_stats`.
unsafe fn stats(
    index: *const emf_hnsw_t,
    out_len: *mut usize,
    out_memory_bytes: *mut usize,
    wait: Wait,
) -> emf_status_t {
    guard(|| {
        let (len, mem) = with_read(index, wait, |_, r| Ok((r.len(), r.memory_bytes())))?;
        if !out_len.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_len.write(len) };
        }
        if !out_memory_bytes.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { out_memory_bytes.write(mem) };
        }
        Ok(())
    })
}

/// Writes the number of live vectors and the bytes the index holds (for a mapped index, the
/// file's size). Either out-pointer may be NULL. Waits while a compaction runs.
///
/// # Safety
///
/// Non-NULL out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_stats(
    index: *const emf_hnsw_t,
    out_len: *mut usize,
    out_memory_bytes: *mut usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { stats(index, out_len, out_memory_bytes, Wait::Block) }
}

/// `emf_hnsw_stats` without waiting: `EMF_ERR_BUSY`, nothing written, while a compaction
/// runs or waits.
///
/// # Safety
///
/// As `emf_hnsw_stats`.
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_try_stats(
    index: *const emf_hnsw_t,
    out_len: *mut usize,
    out_memory_bytes: *mut usize,
) -> emf_status_t {
    // SAFETY: forwarded caller contract.
    unsafe { stats(index, out_len, out_memory_bytes, Wait::Try) }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{
        EMF_ERR_BUSY, EMF_ERR_CORRUPT, EMF_ERR_NOT_FOUND, EMF_ERR_NULL_ARGUMENT, EMF_ERR_TOO_LARGE,
        EMF_ERR_UNSUPPORTED, EMF_OK,
    };
    use std::ffi::CString;
    use std::ptr::{null, null_mut};

    fn new_index(dim: u32, originals: u32) -> *mut emf_hnsw_t {
        let mut p = std::mem::MaybeUninit::uninit();
        // SAFETY: `p` is writable.
        let st = unsafe { emf_hnsw_params_default(dim, p.as_mut_ptr()) };
        assert_eq!(st, EMF_OK);
        // SAFETY: initialised by the call above.
        let mut p = unsafe { p.assume_init() };
        p.originals = originals;
        let mut h = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { emf_hnsw_new(&p, &mut h) }, EMF_OK);
        h
    }

    #[test]
    fn quantize_and_distances_through_the_abi() {
        let x = [0.1f32, -0.05, 0.0, 0.2];
        let mut codes = [0i8; 4];
        let mut scale = 0f32;
        // SAFETY: all buffers sized 4.
        let st = unsafe { emf_quantize_f32(x.as_ptr(), 4, codes.as_mut_ptr(), &mut scale) };
        assert_eq!(st, EMF_OK);
        assert_eq!(codes, [64, -32, 0, 127]);
        let mut back = [0f32; 4];
        // SAFETY: sized 4.
        let st = unsafe { emf_dequantize_i8(codes.as_ptr(), 4, scale, back.as_mut_ptr()) };
        assert_eq!(st, EMF_OK);
        assert!((back[3] - 0.2).abs() < 1e-6);
        let mut d = 0f64;
        // SAFETY: sized 4.
        let st = unsafe { emf_distance_f32(EMF_METRIC_L2SQ, x.as_ptr(), x.as_ptr(), 4, &mut d) };
        assert_eq!(st, EMF_OK);
        assert_eq!(d, 0.0);
        // SAFETY: sized 4.
        let st = unsafe { emf_cosine_distance_i8(codes.as_ptr(), codes.as_ptr(), 4, &mut d) };
        assert_eq!(st, EMF_OK);
        assert!(d.abs() < 1e-6);
        let mut i = 0i64;
        // SAFETY: sized 4.
        let st = unsafe { emf_dot_i8(codes.as_ptr(), codes.as_ptr(), 4, &mut i) };
        assert_eq!(st, EMF_OK);
        assert_eq!(i, 64 * 64 + 32 * 32 + 127 * 127);
        let h = [0x3C00u16, 0]; // 1.0, 0.0
                                // SAFETY: sized 2.
        let st = unsafe { emf_distance_f16(EMF_METRIC_DOT, h.as_ptr(), h.as_ptr(), 2, &mut d) };
        assert_eq!(st, EMF_OK);
        assert_eq!(d, 0.0);
        // Bad input.
        let nan = [f32::NAN];
        // SAFETY: sized 1.
        let st = unsafe { emf_quantize_f32(nan.as_ptr(), 1, codes.as_mut_ptr(), &mut scale) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL is checked.
        let st = unsafe { emf_quantize_f32(null(), 4, codes.as_mut_ptr(), &mut scale) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        // SAFETY: NULL out is checked.
        let st = unsafe { emf_distance_f32(0, x.as_ptr(), x.as_ptr(), 4, null_mut()) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        // SAFETY: the metric is checked before any read beyond `x`.
        let st = unsafe { emf_distance_f32(7, x.as_ptr(), x.as_ptr(), 4, &mut d) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: the length cap is checked before the pointer is used.
        let st = unsafe { emf_distance_f32(0, x.as_ptr(), x.as_ptr(), usize::MAX / 2, &mut d) };
        assert_eq!(st, EMF_ERR_TOO_LARGE);
        let bytes = [0u8; 12];
        let misaligned = bytes.as_ptr().wrapping_add(1).cast::<f32>();
        // SAFETY: alignment is checked before the pointer is read.
        let st = unsafe { emf_distance_f32(0, misaligned, misaligned, 2, &mut d) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
    }

    /// Issue 9, item 8: the header's rule for statuses. A count or size whose product
    /// overflows is `EMF_ERR_TOO_LARGE`, as a count past `EMF_MAX_INPUT_LEN` is (these
    /// answered `EMF_ERR_INVALID_ARGUMENT` before); a path that is not a regular file is
    /// `EMF_ERR_IO` at open and at load (a directory answered `EMF_ERR_INVALID_ARGUMENT`).
    #[test]
    #[cfg_attr(miri, ignore)] // opens files (Miri cannot)
    fn sizes_are_too_large_and_paths_that_are_no_files_are_io() {
        let dim = 4usize;
        let h = new_index(dim as u32, EMF_ORIGINALS_NONE);
        let v = [0.5f32; 8];
        let ids = [1u64, 2];
        let (mut hits, mut counts) = ([emf_hnsw_hit_t::default(); 4], [0usize; 2]);
        // SAFETY: the product overflows: refused before any pointer is used.
        let st =
            unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), usize::MAX / 2, v.as_ptr(), dim, 1) };
        assert_eq!(st, EMF_ERR_TOO_LARGE);
        // SAFETY: as above, the other way round.
        let st =
            unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), 2, v.as_ptr(), usize::MAX / 3, 1) };
        assert_eq!(st, EMF_ERR_TOO_LARGE);
        // SAFETY: 2^40 ids: past the input limit, refused before any read.
        let st = unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), 1 << 40, v.as_ptr(), 1, 1) };
        assert_eq!(st, EMF_ERR_TOO_LARGE);
        for (nq, k) in [(usize::MAX / 2, 1), (2, usize::MAX / 2)] {
            // SAFETY: the products overflow: refused before any pointer is used.
            let st = unsafe {
                emf_hnsw_search_batch(
                    h,
                    v.as_ptr(),
                    nq,
                    dim,
                    k,
                    0,
                    0,
                    null(),
                    0,
                    1,
                    hits.as_mut_ptr(),
                    counts.as_mut_ptr(),
                )
            };
            assert_eq!(st, EMF_ERR_TOO_LARGE, "nq {nq}, k {k}");
        }
        // SAFETY: sizes match: the same call with sane sizes works.
        let st = unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), 2, v.as_ptr(), dim, 1) };
        assert_eq!(st, EMF_OK);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_free(h) }, EMF_OK);

        let dir = std::env::temp_dir().join(format!("emf-capi-notafile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let cfifo = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
        for path in [&dir, &fifo] {
            let cpath = CString::new(path.to_str().unwrap()).unwrap();
            let mut x = null_mut();
            // SAFETY: NUL-terminated path, writable out. (A FIFO is refused without being
            // opened: opening it would wait for a writer.)
            let st = unsafe { emf_hnsw_open(cpath.as_ptr(), &mut x) };
            assert_eq!(st, crate::EMF_ERR_IO, "open {}", path.display());
            // SAFETY: as above.
            let st = unsafe { emf_hnsw_load(cpath.as_ptr(), &mut x) };
            assert_eq!(st, crate::EMF_ERR_IO, "load {}", path.display());
            assert!(x.is_null());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore)] // maps a file (Miri cannot); hnsw::tests::miri_sized_lifecycle covers the storage
    fn index_lifecycle_through_the_abi() {
        let dim = 8usize;
        let h = new_index(dim as u32, EMF_ORIGINALS_F32);
        let vs: Vec<f32> = (0..100 * dim)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
            .collect();
        let ids: Vec<u64> = (0..100).collect();
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), 100, vs.as_ptr(), dim, 2) };
        assert_eq!(st, EMF_OK);
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert(h, 5, vs.as_ptr(), dim) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: a wrong dim is refused before reading past 4 values.
        let st = unsafe { emf_hnsw_insert(h, 500, vs.as_ptr(), 4) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        let mut hits = [emf_hnsw_hit_t::default(); 5];
        let mut n = 0usize;
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search(
                h,
                vs[7 * dim..].as_ptr(),
                dim,
                5,
                0,
                EMF_SEARCH_RERANK,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n, hits[0].id), (EMF_OK, 5, 7));
        let bits = [1u64 << 9];
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search(
                h,
                vs.as_ptr(),
                dim,
                5,
                100,
                0,
                bits.as_ptr(),
                1,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n, hits[0].id), (EMF_OK, 1, 9));
        // SAFETY: unknown flags are refused.
        let st = unsafe {
            emf_hnsw_search(
                h,
                vs.as_ptr(),
                dim,
                5,
                0,
                8,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        let mut batch = vec![emf_hnsw_hit_t::default(); 10 * 3];
        let mut counts = vec![0usize; 10];
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search_batch(
                h,
                vs.as_ptr(),
                10,
                dim,
                3,
                0,
                0,
                null(),
                0,
                2,
                batch.as_mut_ptr(),
                counts.as_mut_ptr(),
            )
        };
        assert_eq!(st, EMF_OK);
        for q in 0..10 {
            assert_eq!((counts[q], batch[q * 3].id), (3, q as u64));
        }
        // k = 0: every count is written, 0.
        let mut zero = [usize::MAX; 4];
        // SAFETY: sizes match (no hits to write).
        let st = unsafe {
            emf_hnsw_search_batch(
                h,
                vs.as_ptr(),
                4,
                dim,
                0,
                0,
                0,
                null(),
                0,
                2,
                null_mut(),
                zero.as_mut_ptr(),
            )
        };
        assert_eq!((st, zero), (EMF_OK, [0; 4]));
        // A failing batch (a NaN query among them) writes nothing.
        let mut bad_q = vs[..3 * dim].to_vec();
        bad_q[2 * dim] = f32::NAN;
        let mut counts3 = [usize::MAX; 3];
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search_batch(
                h,
                bad_q.as_ptr(),
                3,
                dim,
                3,
                0,
                0,
                null(),
                0,
                2,
                batch.as_mut_ptr(),
                counts3.as_mut_ptr(),
            )
        };
        assert_eq!((st, counts3), (EMF_ERR_INVALID_ARGUMENT, [usize::MAX; 3]));
        // Nothing to search still checks the handle and the dimension.
        let stale = std::ptr::dangling::<emf_hnsw_t>();
        // SAFETY: nq = 0: nothing is read or written; the handle is checked by the slab.
        let st = unsafe {
            emf_hnsw_search_batch(
                stale,
                null(),
                0,
                dim,
                3,
                0,
                0,
                null(),
                0,
                1,
                null_mut(),
                null_mut(),
            )
        };
        assert_ne!(st, EMF_OK);
        // SAFETY: as above.
        let st = unsafe {
            emf_hnsw_search_batch(
                h,
                null(),
                0,
                dim + 1,
                3,
                0,
                0,
                null(),
                0,
                1,
                null_mut(),
                null_mut(),
            )
        };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_remove(h, 7) }, EMF_OK);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_remove(h, 7) }, EMF_ERR_NOT_FOUND);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_compact(h) }, EMF_OK);
        let (mut len, mut mem) = (0usize, 0usize);
        // SAFETY: live handle, writable outs.
        assert_eq!(unsafe { emf_hnsw_stats(h, &mut len, &mut mem) }, EMF_OK);
        assert_eq!(len, 99);
        assert!(mem > 0);
        let path = std::env::temp_dir().join(format!("emf-capi-hnsw-{}", std::process::id()));
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: live handle, NUL-terminated path.
        assert_eq!(unsafe { emf_hnsw_save(h, cpath.as_ptr()) }, EMF_OK);
        let mut m = null_mut();
        // SAFETY: NUL-terminated path, writable out.
        assert_eq!(unsafe { emf_hnsw_open(cpath.as_ptr(), &mut m) }, EMF_OK);
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search(
                m,
                vs[3 * dim..].as_ptr(),
                dim,
                5,
                0,
                0,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, hits[0].id), (EMF_OK, 3));
        // A mapped index is read-only.
        // SAFETY: live handle.
        let st = unsafe { emf_hnsw_insert(m, 1000, vs.as_ptr(), dim) };
        assert_eq!(st, EMF_ERR_UNSUPPORTED);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_compact(m) }, EMF_ERR_UNSUPPORTED);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_compact(m) }, EMF_ERR_UNSUPPORTED);
        let mut p = std::mem::MaybeUninit::uninit();
        // SAFETY: live handle, writable out.
        assert_eq!(unsafe { emf_hnsw_params(m, p.as_mut_ptr()) }, EMF_OK);
        // SAFETY: written by the call above.
        assert_eq!(unsafe { p.assume_init() }.originals, EMF_ORIGINALS_F32);
        let mut l = null_mut();
        // SAFETY: as above.
        assert_eq!(unsafe { emf_hnsw_load(cpath.as_ptr(), &mut l) }, EMF_OK);
        // SAFETY: the loaded copy takes inserts.
        let st = unsafe { emf_hnsw_insert(l, 1000, vs.as_ptr(), dim) };
        assert_eq!(st, EMF_OK);
        std::fs::write(&path, b"EMFHNSW\0garbage").unwrap();
        let mut bad = null_mut();
        // SAFETY: as above.
        let st = unsafe { emf_hnsw_open(cpath.as_ptr(), &mut bad) };
        assert_eq!(st, EMF_ERR_CORRUPT);
        std::fs::remove_file(&path).unwrap();
        for x in [h, m, l] {
            // SAFETY: live handles, freed once.
            assert_eq!(unsafe { emf_hnsw_free(x) }, EMF_OK);
        }
        // SAFETY: the slab refuses a stale handle.
        assert_ne!(unsafe { emf_hnsw_free(h) }, EMF_OK);
        // SAFETY: as above.
        assert_ne!(unsafe { emf_hnsw_remove(h, 1) }, EMF_OK);
        // SAFETY: NULL is fine.
        assert_eq!(unsafe { emf_hnsw_free(null_mut()) }, EMF_OK);
        let mut p = std::mem::MaybeUninit::uninit();
        // SAFETY: writable out.
        unsafe { emf_hnsw_params_default(70_000, p.as_mut_ptr()) };
        let mut x = null_mut();
        // SAFETY: a dim above 65536 is refused (0 is not: the first insert says).
        let st = unsafe { emf_hnsw_new(p.as_ptr(), &mut x) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL params refused.
        let st = unsafe { emf_hnsw_new(null(), &mut x) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
    }

    fn params_of(h: *const emf_hnsw_t) -> emf_hnsw_params_t {
        let mut p = std::mem::MaybeUninit::uninit();
        // SAFETY: live handle, writable out.
        assert_eq!(unsafe { emf_hnsw_params(h, p.as_mut_ptr()) }, EMF_OK);
        // SAFETY: initialised by the call above.
        unsafe { p.assume_init() }
    }

    /// `dim` 0: the first insert fixes the dimension (plain, try, new-id and batch forms);
    /// `emf_hnsw_insert_new` assigns ids 0, 1, ... skipping those in use.
    #[test]
    fn dim_zero_takes_the_first_insert_and_insert_new_assigns_ids() {
        let h = new_index(0, EMF_ORIGINALS_NONE);
        assert_eq!(params_of(h).dim, 0);
        let mut hits = [emf_hnsw_hit_t::default(); 2];
        let mut n = usize::MAX;
        let q = [1.0f32, 0.0, 0.0];
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search(
                h,
                q.as_ptr(),
                3,
                2,
                0,
                0,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n), (EMF_OK, 0));
        let mut counts = [usize::MAX; 1];
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search_batch(
                h,
                q.as_ptr(),
                1,
                3,
                2,
                0,
                0,
                null(),
                0,
                0,
                hits.as_mut_ptr(),
                counts.as_mut_ptr(),
            )
        };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // Queries of 0 values: nq of them cannot be answered (EMF_OK would leave out_counts
        // unwritten); none is an empty answer.
        let mut counts = [usize::MAX; 2];
        for (nq, want) in [(2, EMF_ERR_INVALID_ARGUMENT), (0, EMF_OK)] {
            // SAFETY: nq · 0 queries, nq · 2 hits and nq counts fit the arrays.
            let st = unsafe {
                emf_hnsw_search_batch(
                    h,
                    q.as_ptr(),
                    nq,
                    0,
                    1,
                    0,
                    0,
                    null(),
                    0,
                    0,
                    hits.as_mut_ptr(),
                    counts.as_mut_ptr(),
                )
            };
            assert_eq!(st, want, "nq {nq}");
        }
        assert_eq!(counts, [usize::MAX; 2]);
        // An empty batch fixes nothing.
        // SAFETY: empty arrays.
        let st = unsafe { emf_hnsw_insert_batch(h, [0u64; 0].as_ptr(), 0, q.as_ptr(), 3, 1) };
        assert_eq!((st, params_of(h).dim), (EMF_OK, 0));
        let mut id = u64::MAX;
        // SAFETY: NULL out checked first: nothing inserted, nothing fixed.
        let st = unsafe { emf_hnsw_insert_new(h, q.as_ptr(), 3, null_mut()) };
        assert_eq!((st, params_of(h).dim), (EMF_ERR_NULL_ARGUMENT, 0));
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_try_insert_new(h, q.as_ptr(), 3, &mut id) };
        assert_eq!((st, id, params_of(h).dim), (EMF_OK, 0, 3));
        // SAFETY: 2 of q's 3 values: a short read.
        let st = unsafe { emf_hnsw_insert(h, 1, q.as_ptr(), 2) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        let v = [0.0f32, 1.0, 0.0];
        // SAFETY: sizes match.
        assert_eq!(unsafe { emf_hnsw_insert(h, 1, v.as_ptr(), 3) }, EMF_OK);
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert_new(h, v.as_ptr(), 3, &mut id) };
        assert_eq!((st, id), (EMF_OK, 2));
        // SAFETY: a mismatched dimension uses no id.
        let st = unsafe { emf_hnsw_insert_new(h, v.as_ptr(), 2, &mut id) };
        assert_eq!((st, id), (EMF_ERR_INVALID_ARGUMENT, 2));
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_search(
                h,
                q.as_ptr(),
                3,
                2,
                0,
                0,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n, hits[0].id), (EMF_OK, 2, 0));
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_free(h) }, EMF_OK);

        // A first batch fixes the dimension to its rows.
        let h = new_index(0, EMF_ORIGINALS_F32);
        let vs = [1.0f32, 0.0, 0.0, 1.0];
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert_batch(h, [5u64, 6].as_ptr(), 2, vs.as_ptr(), 2, 1) };
        assert_eq!((st, params_of(h).dim), (EMF_OK, 2));
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert_new(h, vs.as_ptr(), 2, &mut id) };
        assert_eq!((st, id), (EMF_OK, 0));
        // SAFETY: a dimension out of range fixes nothing (a fresh index).
        assert_eq!(unsafe { emf_hnsw_free(h) }, EMF_OK);
        let h = new_index(0, EMF_ORIGINALS_NONE);
        // SAFETY: an empty vector is readable (length 0).
        let st = unsafe { emf_hnsw_insert(h, 1, vs.as_ptr(), 0) };
        assert_eq!((st, params_of(h).dim), (EMF_ERR_INVALID_ARGUMENT, 0));
        // SAFETY: NULL index refused.
        let st = unsafe { emf_hnsw_insert_new(null(), vs.as_ptr(), 2, &mut id) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_free(h) }, EMF_OK);
    }

    /// The `emf_hnsw_try_*` forms answer `EMF_ERR_BUSY` at once, having done and written
    /// nothing, while a compaction waits for (then runs after) a call in progress; the plain
    /// forms wait and succeed. The call in progress is a read-side borrow held by the test.
    #[test]
    fn try_forms_are_busy_while_a_compaction_waits() {
        let dim = 4usize;
        let h = new_index(dim as u32, EMF_ORIGINALS_NONE);
        let vs: Vec<f32> = (0..20 * dim).map(|i| (i % 7) as f32 - 3.0).collect();
        let ids: Vec<u64> = (0..20).collect();
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_insert_batch(h, ids.as_ptr(), 20, vs.as_ptr(), dim, 1) };
        assert_eq!(st, EMF_OK);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_remove(h, 19) }, EMF_OK);
        // SAFETY: live handle, freed at the end after every borrow ended.
        let index = unsafe { borrow(h) }.unwrap();
        let reader = index.read();
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_compact(h) }, EMF_ERR_BUSY);
        let addr = h.addr();
        let compaction = std::thread::spawn(move || {
            let h = std::ptr::without_provenance::<emf_hnsw_t>(addr);
            // SAFETY: the handle outlives this thread (joined before the free).
            unsafe { emf_hnsw_compact(h) }
        });
        let (mut len, mut mem) = (usize::MAX, usize::MAX);
        // The compaction waits once the read side is held off (observed, not slept on).
        // SAFETY: live handle, writable outs.
        while unsafe { emf_hnsw_try_stats(h, &mut len, &mut mem) } == EMF_OK {
            std::thread::yield_now();
        }
        (len, mem) = (usize::MAX, usize::MAX);
        // SAFETY: as above.
        let st = unsafe { emf_hnsw_try_stats(h, &mut len, &mut mem) };
        assert_eq!((st, len, mem), (EMF_ERR_BUSY, usize::MAX, usize::MAX));
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_try_insert(h, 100, vs.as_ptr(), dim) };
        assert_eq!(st, EMF_ERR_BUSY);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_remove(h, 3) }, EMF_ERR_BUSY);
        let mut hits = [emf_hnsw_hit_t {
            id: 77,
            distance: 7.0,
        }; 2];
        let mut n = usize::MAX;
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_try_search(
                h,
                vs.as_ptr(),
                dim,
                2,
                0,
                0,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n, hits[0].id), (EMF_ERR_BUSY, usize::MAX, 77));
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_compact(h) }, EMF_ERR_BUSY);
        // Nothing was done: the call in progress still sees 19 vectors.
        assert_eq!(reader.len(), 19);
        drop(reader);
        assert_eq!(compaction.join().unwrap(), EMF_OK);
        // The try forms work again, and the blocking ones too.
        // SAFETY: sizes match.
        let st = unsafe { emf_hnsw_try_insert(h, 100, vs.as_ptr(), dim) };
        assert_eq!(st, EMF_OK);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_remove(h, 3) }, EMF_OK);
        // SAFETY: sizes match.
        let st = unsafe {
            emf_hnsw_try_search(
                h,
                vs[5 * dim..].as_ptr(),
                dim,
                2,
                0,
                0,
                null(),
                0,
                hits.as_mut_ptr(),
                &mut n,
            )
        };
        assert_eq!((st, n), (EMF_OK, 2));
        // SAFETY: live handle, writable outs.
        assert_eq!(unsafe { emf_hnsw_try_stats(h, &mut len, &mut mem) }, EMF_OK);
        assert_eq!(len, 19);
        // SAFETY: live handle.
        assert_eq!(unsafe { emf_hnsw_try_compact(h) }, EMF_OK);
        // A mapped index cannot compact, tried or not; a stale handle is refused.
        // SAFETY: NULL is refused.
        let st = unsafe { emf_hnsw_try_compact(null()) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
        // SAFETY: live handle, no borrow left.
        assert_eq!(unsafe { emf_hnsw_free(h) }, EMF_OK);
        // SAFETY: the slab refuses a stale handle.
        assert_ne!(unsafe { emf_hnsw_try_stats(h, &mut len, &mut mem) }, EMF_OK);
    }
}
