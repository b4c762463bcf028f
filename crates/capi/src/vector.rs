//! C ABI of the vector kernels, int8 quantization and the HNSW index.
//!
//! Vectors are contiguous arrays of `float` (or `int8_t` codes, or IEEE half floats as
//! `uint16_t`), with their length passed beside them and checked against the index. An index
//! handle is thread-safe: inserts, removals and searches may run on any threads at once;
//! `emf_hnsw_compact` waits for the calls in progress and holds the others off while it
//! runs. A handle must not be freed while another thread uses it.

use std::ffi::c_char;
use std::sync::RwLock;

use super::handle::{borrow, free, new_handle, Handle, Shared};
use super::{
    c_str, emf_status_t, guard, require_out, typed, typed_mut, write_out, FfiError, FfiResult,
    EMF_ERR_INVALID_ARGUMENT, EMF_ERR_TOO_LARGE, EMF_ERR_UNSUPPORTED,
};
use engine::hnsw::{Filter, Hnsw, MappedHnsw, Originals, Params, SearchOptions};
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
    /// Vector dimensions (1..65536).
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

enum Index {
    Live(Hnsw),
    Mapped(MappedHnsw),
}

/// An HNSW index: built in memory (`emf_hnsw_new`, `emf_hnsw_load`) or a saved file mapped
/// read-only (`emf_hnsw_open`). Opaque; thread-safe (see the module notes).
pub struct emf_hnsw_t {
    index: RwLock<Index>,
}

impl Handle for emf_hnsw_t {
    const KIND: u32 = 11;
    const NAME: &'static str = "index";
    type Target = Self;
    type Access = Shared;
}

fn with_index<R>(h: *const emf_hnsw_t, f: impl FnOnce(&Index) -> FfiResult<R>) -> FfiResult<R> {
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let h = unsafe { borrow(h) }?;
    let g = h.index.read().unwrap_or_else(|e| e.into_inner());
    f(&g)
}

/// Registers `index` as a new handle and writes it to `out`.
///
/// # Safety
///
/// `out` writable (checked non-NULL by the caller).
unsafe fn publish(index: Index, out: *mut *mut emf_hnsw_t) -> FfiResult {
    let h = new_handle::<emf_hnsw_t>(emf_hnsw_t {
        index: RwLock::new(index),
    })?;
    // SAFETY: writable by the caller's contract.
    unsafe { write_out(out, h, "out") }
}

fn live(i: &Index) -> FfiResult<&Hnsw> {
    match i {
        Index::Live(h) => Ok(h),
        Index::Mapped(_) => Err(FfiError::new(
            EMF_ERR_UNSUPPORTED,
            "the index is a mapped file, read-only (emf_hnsw_load makes a copy that can change)",
        )),
    }
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
        unsafe { publish(Index::Live(Hnsw::new(p)?), out) }
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
        let m = MappedHnsw::open(c_str(path, "path")?)?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { publish(Index::Mapped(m), out) }
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
        let idx = Hnsw::load(c_str(path, "path")?)?;
        // SAFETY: writable by contract, checked non-NULL.
        unsafe { publish(Index::Live(idx), out) }
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

/// Writes the index's parameters.
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
        let p = with_index(index, |i| {
            Ok(emf_hnsw_params_t::from_params(match i {
                Index::Live(h) => h.params(),
                Index::Mapped(m) => m.params(),
            }))
        })?;
        // SAFETY: writable by contract (NULL checked inside).
        unsafe { write_out(out, p, "out") }
    })
}

/// Inserts a vector of `dim` floats under `id`. `EMF_ERR_INVALID_ARGUMENT` when `id` is
/// already in the index, `dim` differs from the index's, or a value is NaN or infinite.
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
    guard(|| {
        // SAFETY: caller contract.
        let v = unsafe { typed(vector, dim, "vector") }?;
        with_index(index, |i| {
            let h = live(i)?;
            dim_eq(dim, h.params().dim, "vector")?;
            Ok(h.insert(id, v)?)
        })
    })
}

/// Inserts `n` vectors (`vectors` holds `n · dim` floats, row after row) under `ids` on
/// `threads` threads (0: one per CPU). All are checked first: on an error none is inserted.
/// `EMF_ERR_TOO_LARGE` when `n · dim` floats exceed `EMF_MAX_INPUT_LEN` bytes or overflow.
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
        with_index(index, |i| {
            let h = live(i)?;
            dim_eq(dim, h.params().dim, "vectors")?;
            Ok(h.insert_batch(ids, vs, threads as usize)?)
        })
    })
}

/// Searches for the `k` nearest vectors to `query` (`dim` floats). `ef` candidates are kept
/// (0: the index's `ef_search`); `flags` may hold `EMF_SEARCH_RERANK`. When `filter_words`
/// is not 0, only ids whose bit is set in `filter` (id `i`: bit `i % 64` of word `i / 64`)
/// are returned. Writes up to `k` hits, closest first, into `out_hits` and their number to
/// `*out_count`.
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
    guard(|| {
        require_out(out_count, "out_count")?;
        // SAFETY: caller contract.
        let q = unsafe { typed(query, dim, "query") }?;
        // SAFETY: caller contract.
        let out = unsafe { typed_mut(out_hits, k, "out_hits") }?;
        // SAFETY: caller contract.
        let bits = unsafe { typed(filter, filter_words, "filter") }?;
        let n = search_into(index, q, k, ef, flags, bits, out)?;
        // SAFETY: checked non-NULL, writable by contract.
        unsafe { write_out(out_count, n, "out_count") }
    })
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

fn search_into(
    index: *const emf_hnsw_t,
    q: &[f32],
    k: usize,
    ef: usize,
    flags: u32,
    bits: &[u64],
    out: &mut [emf_hnsw_hit_t],
) -> FfiResult<usize> {
    let o = options(k, ef, flags, bits)?;
    let hits = with_index(index, |i| {
        Ok(match i {
            Index::Live(h) => {
                dim_eq(q.len(), h.params().dim, "query")?;
                h.search(q, &o)?
            }
            Index::Mapped(m) => {
                dim_eq(q.len(), m.params().dim, "query")?;
                m.search(q, &o)?
            }
        })
    })?;
    for (o, h) in out.iter_mut().zip(&hits) {
        *o = emf_hnsw_hit_t {
            id: h.id,
            distance: h.distance,
        };
    }
    Ok(hits.len().min(out.len()))
}

/// Searches `nq` queries (`queries` holds `nq · dim` floats) on `threads` threads (0: one per
/// CPU): query `i`'s hits go to `out_hits[i·k ..]`, their number to `out_counts[i]` (slots
/// past a query's count are left as they were). The outputs are written only when every
/// query succeeded. `EMF_ERR_TOO_LARGE` when `nq · dim` or `nq · k` overflow or the arrays
/// exceed `EMF_MAX_INPUT_LEN` bytes.
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
        options(k, ef, flags, bits)?;
        // The handle and the dimension are checked even when there is nothing to search.
        let want = with_index(index, |i| {
            Ok(match i {
                Index::Live(h) => h.params().dim,
                Index::Mapped(m) => m.params().dim,
            })
        })?;
        dim_eq(dim, want, "queries")?;
        if nq == 0 {
            return Ok(());
        }
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t as usize,
        }
        .clamp(1, engine::hnsw::MAX_THREADS)
        .min(nq);
        let per = nq.div_ceil(threads);
        let idx = index as usize; // a token, not dereferenced: Send across the scope
                                  // Each thread answers into its own buffers; the caller's are written at the end,
                                  // only when every query succeeded.
        type Part = FfiResult<(Vec<emf_hnsw_hit_t>, Vec<usize>)>;
        let parts: Vec<Part> = std::thread::scope(|s| {
            let jobs: Vec<_> = qs
                .chunks(per * dim)
                .map(|qs| {
                    s.spawn(move || -> Part {
                        let n = qs.len() / dim;
                        let (mut hits, mut counts) =
                            (vec![emf_hnsw_hit_t::default(); n * k], vec![0usize; n]);
                        for ((q, out), c) in qs
                            .chunks(dim)
                            .zip(hits.chunks_mut(k.max(1)))
                            .zip(&mut counts)
                        {
                            let index = idx as *const emf_hnsw_t;
                            *c = search_into(index, q, k, ef, flags, bits, out)?;
                        }
                        Ok((hits, counts))
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(FfiError::new(
                            super::EMF_ERR_PANIC,
                            "a search thread panicked",
                        ))
                    })
                })
                .collect()
        });
        let parts: Vec<_> = parts.into_iter().collect::<FfiResult<_>>()?;
        // Only each query's hits are written: slots past its count keep what the caller
        // put there.
        let mut q_at = 0;
        for (hits, cs) in parts {
            for (i, &c) in cs.iter().enumerate() {
                let (from, to) = (i * k, (q_at + i) * k);
                out[to..to + c].copy_from_slice(&hits[from..from + c]);
            }
            counts[q_at..q_at + cs.len()].copy_from_slice(&cs);
            q_at += cs.len();
        }
        Ok(())
    })
}

/// Removes `id` (`EMF_ERR_NOT_FOUND` when absent). Its memory is reclaimed by
/// `emf_hnsw_compact`.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_remove(index: *const emf_hnsw_t, id: u64) -> emf_status_t {
    guard(|| with_index(index, |i| Ok(live(i)?.remove(id)?)))
}

/// Reclaims the memory of removed vectors. Waits for calls in progress on this index and
/// holds others off until it is done.
///
/// # Safety
///
/// `index` a live handle (or NULL: `EMF_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn emf_hnsw_compact(index: *const emf_hnsw_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a free.
        let h = unsafe { borrow(index) }?;
        let mut g = h.index.write().unwrap_or_else(|e| e.into_inner());
        match &mut *g {
            Index::Live(h) => Ok(h.compact()?),
            Index::Mapped(_) => live(&g).map(|_| ()),
        }
    })
}

/// Writes the index to the file `path` (a temporary file renamed over it, so processes that
/// mapped the old file keep reading it intact).
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
        with_index(index, |i| Ok(live(i)?.save(path)?))
    })
}

/// Writes the number of live vectors and the bytes the index holds (for a mapped index, the
/// file's size). Either out-pointer may be NULL.
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
    guard(|| {
        let (len, mem) = with_index(index, |i| {
            Ok(match i {
                Index::Live(h) => (h.len(), h.memory_bytes()),
                Index::Mapped(m) => (m.len(), m.memory_bytes()),
            })
        })?;
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{
        EMF_ERR_CORRUPT, EMF_ERR_NOT_FOUND, EMF_ERR_NULL_ARGUMENT, EMF_ERR_TOO_LARGE, EMF_OK,
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
        unsafe { emf_hnsw_params_default(0, p.as_mut_ptr()) };
        let mut x = null_mut();
        // SAFETY: dim 0 is refused.
        let st = unsafe { emf_hnsw_new(p.as_ptr(), &mut x) };
        assert_eq!(st, EMF_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL params refused.
        let st = unsafe { emf_hnsw_new(null(), &mut x) };
        assert_eq!(st, EMF_ERR_NULL_ARGUMENT);
    }
}
