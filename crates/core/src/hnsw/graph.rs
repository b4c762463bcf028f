//! The HNSW algorithms over any node storage: the live index (`store.rs`) and a mapped file
//! (`file.rs`) implement [`Graph`], and search, neighbour selection and the distance of the
//! int8 records are written once, here.
//!
//! A record is `[a: f32][b: f32][external id: u64][codes: i8 × dim]`, little-endian, where
//! the vector is `scale · codes` and `a`, `b` are what the metric needs from it: for cosine
//! `a = 1/|codes|` (the scale cancels), for dot `a = scale`, for squared L2 `a = scale` and
//! `b = |scale · codes|²`. One int8 dot product (simsimd) and two multiplications give any
//! distance.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::error::Result;
use crate::vector::{self, f16, Element, Metric};

/// Bytes before the codes in a record.
pub(crate) const REC_HEADER: usize = 16;

/// Record bytes for `dim`-dimensional vectors (a multiple of 8).
pub(crate) const fn record_stride(dim: usize) -> usize {
    (REC_HEADER + dim).div_ceil(8) * 8
}

#[inline(always)]
fn f32_at(r: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]])
}

/// The external id stored in a record.
#[inline(always)]
pub(crate) fn record_ext(r: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[8..16]);
    u64::from_le_bytes(b)
}

#[inline(always)]
fn record_codes(r: &[u8], dim: usize) -> &[i8] {
    bytemuck::cast_slice(&r[REC_HEADER..REC_HEADER + dim])
}

/// What a metric needs of a vector, besides its codes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Factors {
    a: f32,
    b: f32,
}

/// Quantizes `v` into a record (`out` is `record_stride(dim)` bytes).
pub(crate) fn encode_record(metric: Metric, ext: u64, v: &[f32], out: &mut [u8]) -> Result<()> {
    let dim = v.len();
    let codes: &mut [i8] = bytemuck::cast_slice_mut(&mut out[REC_HEADER..REC_HEADER + dim]);
    let scale = vector::quantize_into(v, codes)?;
    let f = factors(metric, codes, scale);
    out[0..4].copy_from_slice(&f.a.to_le_bytes());
    out[4..8].copy_from_slice(&f.b.to_le_bytes());
    out[8..16].copy_from_slice(&ext.to_le_bytes());
    Ok(())
}

/// Replaces the external id of an encoded record (`insert_new` encodes before it picks one).
pub(crate) fn set_record_ext(record: &mut [u8], ext: u64) {
    record[8..16].copy_from_slice(&ext.to_le_bytes());
}

fn factors(metric: Metric, codes: &[i8], scale: f32) -> Factors {
    let sq = i8::dot(codes, codes);
    match metric {
        Metric::Cosine => Factors {
            a: if sq > 0.0 {
                (1.0 / sq.sqrt()) as f32
            } else {
                0.0
            },
            b: 0.0,
        },
        Metric::Dot => Factors { a: scale, b: 0.0 },
        Metric::L2Sq => Factors {
            a: scale,
            b: (sq * f64::from(scale) * f64::from(scale)) as f32,
        },
    }
}

#[inline(always)]
fn combine(metric: Metric, idot: f64, x: Factors, y: Factors) -> f32 {
    let p = idot as f32 * x.a * y.a;
    match metric {
        Metric::Cosine | Metric::Dot => 1.0 - p,
        Metric::L2Sq => (x.b + y.b - 2.0 * p).max(0.0),
    }
}

/// The distance between two records.
#[inline(always)]
pub(crate) fn record_distance(metric: Metric, dim: usize, a: &[u8], b: &[u8]) -> f32 {
    let f = |r: &[u8]| Factors {
        a: f32_at(r, 0),
        b: f32_at(r, 4),
    };
    combine(
        metric,
        i8::dot(record_codes(a, dim), record_codes(b, dim)),
        f(a),
        f(b),
    )
}

/// A query, quantized like a record.
pub(crate) struct Query {
    pub metric: Metric,
    pub codes: Vec<i8>,
    f: Factors,
}

impl Query {
    pub fn new(metric: Metric, v: &[f32]) -> Result<Query> {
        let mut codes = vec![0i8; v.len()];
        let scale = vector::quantize_into(v, &mut codes)?;
        let f = factors(metric, &codes, scale);
        Ok(Query { metric, codes, f })
    }

    /// A query standing for a stored record (neighbour selection compares nodes).
    pub fn from_record(metric: Metric, r: &[u8], dim: usize) -> Query {
        Query {
            metric,
            codes: record_codes(r, dim).to_vec(),
            f: Factors {
                a: f32_at(r, 0),
                b: f32_at(r, 4),
            },
        }
    }

    /// The distance to a record.
    #[inline(always)]
    pub fn distance(&self, r: &[u8]) -> f32 {
        let codes = record_codes(r, self.codes.len());
        let y = Factors {
            a: f32_at(r, 0),
            b: f32_at(r, 4),
        };
        combine(self.metric, i8::dot(&self.codes, codes), self.f, y)
    }
}

/// How original vectors are kept for re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Originals {
    /// Not kept: int8 only (the smallest index).
    None,
    /// As IEEE half floats (2 bytes a component).
    F16,
    /// As `f32` (4 bytes a component).
    F32,
}

impl Originals {
    /// Bytes per component (0 for none).
    pub const fn bytes(self) -> usize {
        match self {
            Originals::None => 0,
            Originals::F16 => 2,
            Originals::F32 => 4,
        }
    }

    pub(crate) fn from_bytes(b: u32) -> Option<Originals> {
        match b {
            0 => Some(Originals::None),
            2 => Some(Originals::F16),
            4 => Some(Originals::F32),
            _ => None,
        }
    }

    /// Encodes `v` as stored originals.
    pub(crate) fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Originals::None => Vec::new(),
            Originals::F16 => v
                .iter()
                .flat_map(|&x| vector::f32_to_f16_bits(x).to_le_bytes())
                .collect(),
            Originals::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// The exact distance between `q` and stored originals `o`.
    pub(crate) fn distance(self, metric: Metric, q: &[f32], q16: &[f16], o: &[u8]) -> f32 {
        match self {
            Originals::None => f32::INFINITY,
            Originals::F16 => {
                let o: &[u16] = match bytemuck::try_cast_slice(o) {
                    Ok(s) => s,
                    Err(_) => return f32::INFINITY,
                };
                // SAFETY: simsimd's `f16` is `#[repr(transparent)]` over `u16`, so a `[u16]`
                // is a valid `[f16]` of the same length, alignment and lifetime.
                let o = unsafe { std::slice::from_raw_parts(o.as_ptr().cast::<f16>(), o.len()) };
                metric_distance(metric, q16, o)
            }
            Originals::F32 => match bytemuck::try_cast_slice::<u8, f32>(o) {
                Ok(o) => metric_distance(metric, q, o),
                Err(_) => f32::INFINITY,
            },
        }
    }
}

fn metric_distance<T: Element>(metric: Metric, a: &[T], b: &[T]) -> f32 {
    (match metric {
        Metric::Cosine => T::cosine_distance(a, b),
        Metric::Dot => 1.0 - T::dot(a, b),
        Metric::L2Sq => T::l2sq(a, b),
    }) as f32
}

/// Node storage the algorithms run on.
pub(crate) trait Graph {
    fn dim(&self) -> usize;
    fn metric(&self) -> Metric;
    /// `(entry node, top level)`, or `None` when empty.
    fn entry(&self) -> Option<(u32, usize)>;
    /// Every node id is below this.
    fn id_bound(&self) -> u32;
    /// Runs `f` on node `id`'s record; `id` came from `entry` or `neighbours`.
    fn with_record<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Appends node `id`'s neighbours at `level` (at most its level) to `out`.
    fn neighbours(&self, id: u32, level: usize, out: &mut Vec<u32>);
    /// True for removed (or not yet complete) nodes: routed through, never returned.
    fn deleted(&self, id: u32) -> bool;
    /// How originals are kept.
    fn originals(&self) -> Originals;
    /// Runs `f` on node `id`'s original vector bytes.
    fn with_original<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> Option<R>;

    /// Starts loading node `id`'s record (a hint; nothing by default).
    #[inline(always)]
    fn prefetch(&self, _id: u32) {}

    fn distance(&self, q: &Query, id: u32) -> f32 {
        self.with_record(id, |r| q.distance(r))
    }
}

/// A `(distance, id)` pair ordered by distance (total order; NaN sorts last), then id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored(pub f32, pub u32);

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Per-thread visited marks: a generation number per node id, so a new search is a counter
/// increment, not a clear.
struct Visited {
    tags: Vec<u32>,
    gen: u32,
}

impl Visited {
    fn start(&mut self, bound: usize) {
        if self.tags.len() < bound {
            self.tags.resize(bound, 0);
        }
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.tags.fill(0);
            self.gen = 1;
        }
    }

    /// Marks `id`; false when it was already marked in this search.
    #[inline(always)]
    fn insert(&mut self, id: u32) -> bool {
        let i = id as usize;
        if i >= self.tags.len() {
            // A node added while this search runs.
            self.tags.resize(i + 1, 0);
        }
        let t = &mut self.tags[i];
        if *t == self.gen {
            false
        } else {
            *t = self.gen;
            true
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { tags: Vec::new(), gen: 0 }) };
}

/// The `ef` nearest admitted nodes to `q` at `level`, found from `entries`, best first.
/// Every node is routed through; only those for which `admit` is true are returned.
pub(crate) fn search_layer<G: Graph>(
    g: &G,
    q: &Query,
    entries: &[Scored],
    ef: usize,
    level: usize,
    admit: &dyn Fn(u32) -> bool,
) -> Vec<Scored> {
    VISITED.with(|v| {
        // A nested call (none today) would find the cell borrowed; use a fresh set then.
        match v.try_borrow_mut() {
            Ok(mut v) => search_layer_with(g, q, entries, ef, level, admit, &mut v),
            Err(_) => search_layer_with(
                g,
                q,
                entries,
                ef,
                level,
                admit,
                &mut Visited {
                    tags: Vec::new(),
                    gen: 0,
                },
            ),
        }
    })
}

/// Which of `ids` a search of `level` for `q` from `entries` (keeping `ef` candidates)
/// meets on its way: listed by a node it expands, so reachable from `entries` (a node not
/// met may still be reachable, farther than the search went).
pub(crate) fn met_by_search<G: Graph>(
    g: &G,
    q: &Query,
    entries: &[Scored],
    ef: usize,
    level: usize,
    ids: &[u32],
) -> Vec<bool> {
    let met = |v: &Visited| {
        ids.iter()
            .map(|&id| v.tags.get(id as usize).is_some_and(|&t| t == v.gen))
            .collect()
    };
    VISITED.with(|v| match v.try_borrow_mut() {
        Ok(mut v) => {
            search_layer_with(g, q, entries, ef, level, &|_| true, &mut v);
            met(&v)
        }
        Err(_) => {
            let mut v = Visited {
                tags: Vec::new(),
                gen: 0,
            };
            search_layer_with(g, q, entries, ef, level, &|_| true, &mut v);
            met(&v)
        }
    })
}

fn search_layer_with<G: Graph>(
    g: &G,
    q: &Query,
    entries: &[Scored],
    ef: usize,
    level: usize,
    admit: &dyn Fn(u32) -> bool,
    visited: &mut Visited,
) -> Vec<Scored> {
    let ef = ef.max(1);
    visited.start(g.id_bound() as usize);
    let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef * 2);
    let mut results: BinaryHeap<Scored> = BinaryHeap::with_capacity(ef + 1);
    for &e in entries {
        if visited.insert(e.1) {
            candidates.push(Reverse(e));
            if admit(e.1) {
                results.push(e);
            }
        }
    }
    while results.len() > ef {
        results.pop();
    }
    let mut nbrs = Vec::with_capacity(64);
    while let Some(Reverse(c)) = candidates.pop() {
        if results.len() >= ef && results.peek().is_some_and(|w| c.0 > w.0) {
            break;
        }
        nbrs.clear();
        g.neighbours(c.1, level, &mut nbrs);
        // Start the cache misses of all unvisited neighbours at once (records are random
        // accesses), then compute their distances.
        nbrs.retain(|&n| visited.insert(n));
        for &n in &nbrs {
            g.prefetch(n);
        }
        for &n in &nbrs {
            let d = g.distance(q, n);
            if results.len() < ef || results.peek().is_some_and(|w| d < w.0) {
                candidates.push(Reverse(Scored(d, n)));
                if admit(n) {
                    results.push(Scored(d, n));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
    }
    results.into_sorted_vec()
}

/// Greedy descent from the entry point to `down_to` (exclusive of levels below it): the
/// closest node found at each level seeds the next.
pub(crate) fn descend<G: Graph>(
    g: &G,
    q: &Query,
    entry: u32,
    top: usize,
    down_to: usize,
) -> Vec<Scored> {
    let mut eps = vec![Scored(g.distance(q, entry), entry)];
    let mut level = top;
    while level > down_to {
        let found = search_layer(g, q, &eps, 1, level, &|_| true);
        if let Some(&best) = found.first() {
            eps = vec![best];
        }
        level -= 1;
    }
    eps
}

/// The HNSW neighbour-selection heuristic: keeps a candidate (closest first) only when it is
/// closer to the base than to every candidate kept so far, up to `cap`.
pub(crate) fn select<G: Graph>(g: &G, candidates: &[Scored], cap: usize) -> Vec<u32> {
    let mut kept: Vec<u32> = Vec::with_capacity(cap);
    let (metric, dim) = (g.metric(), g.dim());
    for &Scored(d, c) in candidates {
        if kept.len() >= cap {
            break;
        }
        let good = g.with_record(c, |rc| {
            kept.iter()
                .all(|&k| g.with_record(k, |rk| record_distance(metric, dim, rc, rk)) > d)
        });
        if good {
            kept.push(c);
        }
    }
    kept
}

/// What a search may return.
#[derive(Clone, Copy, Default)]
pub enum Filter<'a> {
    /// Every id.
    #[default]
    All,
    /// Ids for which the predicate is true.
    Predicate(&'a (dyn Fn(u64) -> bool + Sync)),
    /// Ids whose bit is set: id `i` is bit `i % 64` of word `i / 64` (ids past the end are
    /// excluded).
    Bitset(&'a [u64]),
}

impl Filter<'_> {
    /// True when `id` may be returned.
    #[inline]
    pub fn allows(&self, id: u64) -> bool {
        match self {
            Filter::All => true,
            Filter::Predicate(p) => p(id),
            Filter::Bitset(b) => b
                .get((id / 64) as usize)
                .is_some_and(|w| w >> (id % 64) & 1 == 1),
        }
    }
}

impl std::fmt::Debug for Filter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::All => f.write_str("All"),
            Filter::Predicate(_) => f.write_str("Predicate(..)"),
            Filter::Bitset(b) => write!(f, "Bitset({} words)", b.len()),
        }
    }
}

/// One search answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The external id given at insertion.
    pub id: u64,
    /// Its distance to the query (int8 estimate, or exact after re-ranking).
    pub distance: f32,
}

/// How to search.
#[derive(Debug, Clone, Copy)]
pub struct SearchOptions<'a> {
    /// Answers wanted.
    pub k: usize,
    /// Candidates kept while searching (at least `k`; 0 means the index's `ef_search`).
    pub ef: usize,
    /// Re-rank the `ef` int8 candidates with the original vectors (when the index keeps
    /// them; ignored otherwise).
    pub rerank: bool,
    /// Which ids may be returned.
    pub filter: Filter<'a>,
}

impl Default for SearchOptions<'_> {
    fn default() -> Self {
        SearchOptions {
            k: 10,
            ef: 0,
            rerank: false,
            filter: Filter::All,
        }
    }
}

/// The full search: descent, level 0, optional re-rank, `k` best.
pub(crate) fn search<G: Graph>(
    g: &G,
    v: &[f32],
    opts: &SearchOptions<'_>,
    ef_default: usize,
) -> Result<Vec<Hit>> {
    if v.len() != g.dim() {
        return Err(crate::Error::invalid(format!(
            "query has {} dimensions, the index {}",
            v.len(),
            g.dim()
        )));
    }
    let q = Query::new(g.metric(), v)?; // refuses NaN and infinities, whatever follows
    if opts.k == 0 {
        return Ok(Vec::new());
    }
    let Some((entry, top)) = g.entry() else {
        return Ok(Vec::new());
    };
    // More candidates than nodes change nothing; bounding ef keeps a huge one from being
    // allocated.
    let ef = if opts.ef == 0 { ef_default } else { opts.ef }
        .max(opts.k)
        .min(g.id_bound() as usize + 1);
    let eps = descend(g, &q, entry, top, 0);
    let admit = |id: u32| !g.deleted(id) && opts.filter.allows(g.with_record(id, record_ext));
    let mut found = search_layer(g, &q, &eps, ef, 0, &admit);
    if opts.rerank && g.originals() != Originals::None {
        let q16: Vec<f16> = match g.originals() {
            Originals::F16 => vector::to_f16(v),
            _ => Vec::new(),
        };
        let kind = g.originals();
        for s in &mut found {
            if let Some(d) = g.with_original(s.1, |o| kind.distance(g.metric(), v, &q16, o)) {
                s.0 = d;
            }
        }
        found.sort_unstable();
    }
    Ok(found
        .into_iter()
        .take(opts.k)
        .map(|Scored(d, id)| Hit {
            id: g.with_record(id, record_ext),
            distance: d,
        })
        .collect())
}
