//! [`Index`]: one handle over a live [`Hnsw`] or a mapped [`MappedHnsw`], safe to share
//! between threads for every operation, compaction included, with batch search on N threads.
//!
//! # Locking rule
//!
//! [`Hnsw::compact`] renumbers the nodes into new storage and frees the old one, so it needs
//! the index to itself (`&mut Hnsw`), while every other operation takes `&self` and runs
//! alongside the others. An `Index` keeps that rule with one reader-writer lock of its own:
//!
//! * **Read side** — insert, batch insert, search, batch search, remove, save, and the
//!   statistics ([`IndexRead::len`], [`IndexRead::memory_bytes`]): all go through an
//!   [`IndexRead`] guard ([`Index::read`], or the shortcuts on `Index` that take one for the
//!   call). Any number run at once.
//! * **Write side** — [`Index::compact`] only: it waits for the read-side calls in progress,
//!   and from the moment it waits no new read-side call starts until it is done (the lock
//!   prefers writers, as std's lock does on Linux, so a stream of searches cannot starve a
//!   compaction).
//! * [`Index::params`] and [`Index::is_mapped`] never change and take no lock.
//! * **Try variants** never wait: [`Index::try_read`] and [`Index::try_compact`] answer
//!   [`ErrorKind::Busy`] at once, having done nothing, where [`Index::read`] and
//!   [`Index::compact`] would block (a read while a compaction runs or waits; a compaction
//!   while any other call runs). A caller that must not block (a scheduler thread of a host
//!   VM) tries first and moves the call to a thread that may block when it is busy.
//!
//! One thread must not call [`Index::compact`] while it holds an [`IndexRead`] of the same
//! index: the compaction would wait for that guard forever ([`Index::try_compact`] says
//! `Busy` instead). Nor should it enter the read side a second time (an `Index` shortcut
//! included) while holding a guard: a compaction waiting between the two would hold the
//! second one off while itself waiting for the first; use the guard's own methods. A mapped index is read-only: insert, remove, save and compact are
//! `Unsupported` ([`Index::load`] makes an in-memory copy that can change).
//!
//! # A dimension fixed by the first insert
//!
//! [`Index::new`] takes `dim` 0 to leave the dimension open: the index is empty and
//! dimensionless ([`Index::dim`] 0) until the first insert fixes it to that vector's length.
//! Fixing it is a write-side step like a compaction: the first insert of a dimensionless
//! index ([`Index::insert`], [`Index::insert_new`], or a non-empty [`Index::insert_batch`])
//! takes the write side, and only if the index is still dimensionless builds the graph for
//! its dimension; then it inserts on the read side. Of concurrent first inserts exactly one
//! fixes the dimension; the others insert into the index it built, and fail with
//! `InvalidArgument` when their dimension differs. While dimensionless, a search answers no
//! hits, `len` is 0, a compaction does nothing, a removal is `NotFound`, and a save, a batch
//! search of rows that cannot be split, and the read guard's own inserts (which cannot take
//! the write side) are refused. The `try_` forms answer `Busy` rather than wait for the
//! write side.
//!
//! ```
//! use erlmcp_flow::hnsw::{Index, Params, SearchOptions};
//! let index = Index::new(Params::new(0)).unwrap(); // the first insert says
//! assert_eq!(index.dim(), 0);
//! let id = index.insert_new(&[0.5, 0.5, 0.0]).unwrap();
//! assert_eq!((id, index.dim()), (0, 3));
//! assert!(index.insert(7, &[1.0, 0.0]).is_err()); // not 3 values
//! let hits = index.search(&[0.5, 0.4, 0.0], &SearchOptions { k: 1, ..Default::default() });
//! assert_eq!(hits.unwrap()[0].id, 0);
//! ```
//!
//! ```
//! use erlmcp_flow::hnsw::{Index, Params, SearchOptions};
//! let index = Index::new(Params::new(2)).unwrap();
//! index.insert_batch(&[1, 2, 3], &[1.0, 0.0, 0.0, 1.0, -1.0, 0.0], 2).unwrap();
//! let opts = SearchOptions { k: 1, ..Default::default() };
//! let hits = index.search_batch(&[0.9, 0.1, 0.1, 0.9], &opts, 2).unwrap();
//! assert_eq!((hits[0][0].id, hits[1][0].id), (1, 2));
//! index.remove(2).unwrap();
//! index.compact().unwrap();
//! assert_eq!(index.read().len(), 2);
//! ```

use std::path::Path;

use super::{Hit, Hnsw, MappedHnsw, Params, SearchOptions, MAX_THREADS};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::{
    AtomicBool, AtomicUsize, Ordering, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

enum Kind {
    Live(Hnsw),
    Mapped(MappedHnsw),
    /// Created with `dim` 0 and nothing inserted yet: the first insert builds the graph.
    Dimensionless,
}

/// An HNSW index, built in memory ([`Index::new`], [`Index::load`]) or a saved file mapped
/// read-only ([`Index::open`]); thread-safe for every operation (see the module
/// documentation for the locking rule).
pub struct Index {
    /// The parameters, `dim` 0 when left to the first insert (`dim` below says).
    params: Params,
    mapped: bool,
    /// The dimension, 0 until fixed. Stored with the write side held, after the graph is
    /// built and before the lock is let go; read without a lock by [`Index::params`].
    dim: AtomicUsize,
    kind: RwLock<Kind>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("params", &self.params)
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

impl From<Hnsw> for Index {
    fn from(h: Hnsw) -> Index {
        Index::wrap(Kind::Live(h))
    }
}

impl From<MappedHnsw> for Index {
    fn from(m: MappedHnsw) -> Index {
        Index::wrap(Kind::Mapped(m))
    }
}

fn read_only() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "the index is a mapped file, read-only (loading the file instead makes a copy that \
         can change)",
    )
}

fn busy(what: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        format!("{what}: the index is being compacted (or a compaction waits)"),
    )
}

impl Index {
    fn wrap(kind: Kind) -> Index {
        let (params, mapped) = match &kind {
            Kind::Live(h) => (*h.params(), false),
            Kind::Mapped(m) => (*m.params(), true),
            Kind::Dimensionless => unreachable!("built by Index::new"),
        };
        Index {
            params,
            mapped,
            dim: AtomicUsize::new(params.dim),
            kind: RwLock::new(kind),
        }
    }

    /// An empty in-memory index ([`Hnsw::new`]); `params.dim` 0 leaves the dimension to the
    /// first insert (see the module documentation). The other parameters are checked now.
    pub fn new(params: Params) -> Result<Index> {
        if params.dim != 0 {
            return Ok(Hnsw::new(params)?.into());
        }
        // Every check but the dimension's, on a stand-in dimension.
        Hnsw::new(Params { dim: 1, ..params })?;
        Ok(Index {
            params,
            mapped: false,
            dim: AtomicUsize::new(0),
            kind: RwLock::new(Kind::Dimensionless),
        })
    }

    /// Maps a saved index read-only ([`MappedHnsw::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Index> {
        Ok(MappedHnsw::open(path)?.into())
    }

    /// Reads a saved index into a new in-memory index that can change ([`Hnsw::load`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Index> {
        Ok(Hnsw::load(path)?.into())
    }

    /// The parameters (no lock: they never change, but for a `dim` left to the first insert,
    /// 0 until that insert fixes it).
    pub fn params(&self) -> Params {
        Params {
            dim: self.dim(),
            ..self.params
        }
    }

    /// The dimension: 0 while an index created with `dim` 0 has had no insert (no lock).
    pub fn dim(&self) -> usize {
        self.dim.load(Ordering::Acquire)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Kind> {
        self.kind.write().unwrap_or_else(|e| e.into_inner())
    }

    fn try_write(&self, what: &str) -> Result<RwLockWriteGuard<'_, Kind>> {
        match self.kind.try_write() {
            Ok(k) => Ok(k),
            Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => Err(Error::new(
                ErrorKind::Busy,
                format!("{what}: the index is in use by other calls (or a compaction)"),
            )),
        }
    }

    /// Fixes the dimension of a dimensionless index to `dim` (the length of the vectors
    /// about to be inserted), waiting for the write side; does nothing when the dimension is
    /// fixed already, whatever it is (the insert that follows checks the vectors against
    /// it). `InvalidArgument` for a `dim` outside 1..=65536 (nothing fixed).
    pub fn fix_dim(&self, dim: usize) -> Result<()> {
        if self.dim() != 0 || self.mapped {
            return Ok(());
        }
        self.fix_dim_in(&mut self.write(), dim)
    }

    /// [`Index::fix_dim`] without waiting: `Busy`, nothing done, when the write side is
    /// taken (any call in progress) and the dimension still open.
    pub fn try_fix_dim(&self, dim: usize) -> Result<()> {
        if self.dim() != 0 || self.mapped {
            return Ok(());
        }
        self.fix_dim_in(&mut *self.try_write("fix the dimension")?, dim)
    }

    fn fix_dim_in(&self, kind: &mut Kind, dim: usize) -> Result<()> {
        if let Kind::Dimensionless = kind {
            let h = Hnsw::new(Params { dim, ..self.params })?;
            *kind = Kind::Live(h);
            // Published before the write side is let go: whoever sees the new kind sees it.
            self.dim.store(dim, Ordering::Release);
        }
        Ok(())
    }

    /// True for a mapped (read-only) index.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// Enters the read side, waiting while a compaction runs or waits.
    pub fn read(&self) -> IndexRead<'_> {
        // A panic inside a compaction poisons the lock; the index is still whole (the new
        // storage replaces the old one in one step at the end), so it stays usable.
        IndexRead {
            kind: self.kind.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Enters the read side without waiting: `Busy` while a compaction runs or waits.
    pub fn try_read(&self) -> Result<IndexRead<'_>> {
        match self.kind.try_read() {
            Ok(kind) => Ok(IndexRead { kind }),
            Err(TryLockError::Poisoned(e)) => Ok(IndexRead {
                kind: e.into_inner(),
            }),
            Err(TryLockError::WouldBlock) => Err(busy("read")),
        }
    }

    /// Reclaims the memory of removed vectors ([`Hnsw::compact`]), waiting for the calls in
    /// progress and holding new ones off until done. `Unsupported` for a mapped index.
    pub fn compact(&self) -> Result<()> {
        if self.mapped {
            return Err(read_only());
        }
        compact_kind(&mut self.write())
    }

    /// [`Index::compact`] without waiting: `Busy` (nothing done) while any other call on the
    /// index runs or another compaction does.
    pub fn try_compact(&self) -> Result<()> {
        if self.mapped {
            return Err(read_only());
        }
        compact_kind(&mut *self.try_write("compact")?)
    }

    /// [`IndexRead::insert`], fixing the dimension first on a dimensionless index (waits
    /// while a compaction runs).
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        self.fix_dim(vector.len())?;
        self.read().insert(id, vector)
    }

    /// [`IndexRead::insert_new`]: inserts `vector` under an id the index picks and returns
    /// it, fixing the dimension first on a dimensionless index (waits while a compaction
    /// runs).
    pub fn insert_new(&self, vector: &[f32]) -> Result<u64> {
        self.fix_dim(vector.len())?;
        self.read().insert_new(vector)
    }

    /// [`IndexRead::insert_batch`]; on a dimensionless index a non-empty batch first fixes
    /// the dimension to `vectors.len() / ids.len()` (waits while a compaction runs).
    pub fn insert_batch(&self, ids: &[u64], vectors: &[f32], threads: usize) -> Result<()> {
        if let Some(dim) = batch_dim(ids, vectors) {
            self.fix_dim(dim)?;
        }
        self.read().insert_batch(ids, vectors, threads)
    }

    /// [`IndexRead::search`] (waits while a compaction runs).
    pub fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        self.read().search(query, opts)
    }

    /// [`IndexRead::search_batch`] (waits while a compaction runs).
    pub fn search_batch(
        &self,
        queries: &[f32],
        opts: &SearchOptions<'_>,
        threads: usize,
    ) -> Result<Vec<Vec<Hit>>> {
        self.read().search_batch(queries, opts, threads)
    }

    /// [`IndexRead::remove`] (waits while a compaction runs).
    pub fn remove(&self, id: u64) -> Result<()> {
        self.read().remove(id)
    }

    /// [`IndexRead::save`] (waits while a compaction runs).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.read().save(path)
    }
}

/// The dimension a non-empty batch implies (`None`: empty, or not whole rows — the insert
/// then says what is wrong).
fn batch_dim(ids: &[u64], vectors: &[f32]) -> Option<usize> {
    (!ids.is_empty() && vectors.len() % ids.len() == 0).then(|| vectors.len() / ids.len())
}

fn dimensionless(what: &str) -> Error {
    Error::invalid(format!(
        "{what}: the index has no dimension yet (created with dim 0, nothing inserted)"
    ))
}

impl Kind {
    fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        match self {
            Kind::Live(h) => h.search(query, opts),
            Kind::Mapped(m) => m.search(query, opts),
            // An empty index: no hits, for a query of any length.
            Kind::Dimensionless => Ok(Vec::new()),
        }
    }
}

fn compact_kind(kind: &mut Kind) -> Result<()> {
    match kind {
        Kind::Live(h) => h.compact(),
        Kind::Mapped(_) => Err(read_only()),
        Kind::Dimensionless => Ok(()),
    }
}

/// The read side of an [`Index`] (every operation but compaction), entered by [`Index::read`]
/// or [`Index::try_read`]; a compaction waits until every `IndexRead` is dropped.
pub struct IndexRead<'a> {
    kind: RwLockReadGuard<'a, Kind>,
}

impl std::fmt::Debug for IndexRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexRead")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl IndexRead<'_> {
    fn live(&self, what: &str) -> Result<&Hnsw> {
        match &*self.kind {
            Kind::Live(h) => Ok(h),
            Kind::Mapped(_) => Err(read_only()),
            Kind::Dimensionless => Err(dimensionless(what)),
        }
    }

    /// [`Hnsw::insert`]; `Unsupported` for a mapped index; `InvalidArgument` for a
    /// dimensionless one (a guard cannot fix the dimension: [`Index::insert`] does).
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        self.live("insert")?.insert(id, vector)
    }

    /// [`Hnsw::insert_new`]: inserts under an id the index picks, returned; errors as
    /// [`IndexRead::insert`].
    pub fn insert_new(&self, vector: &[f32]) -> Result<u64> {
        self.live("insert")?.insert_new(vector)
    }

    /// [`Hnsw::insert_batch`]; `Unsupported` for a mapped index; on a dimensionless one an
    /// empty batch does nothing and any other is `InvalidArgument` (as for `insert`).
    pub fn insert_batch(&self, ids: &[u64], vectors: &[f32], threads: usize) -> Result<()> {
        if ids.is_empty() && vectors.is_empty() && matches!(*self.kind, Kind::Dimensionless) {
            return Ok(());
        }
        self.live("insert_batch")?
            .insert_batch(ids, vectors, threads)
    }

    /// [`Hnsw::search`] / [`MappedHnsw::search`].
    pub fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        self.kind.search(query, opts)
    }

    /// Searches every query of `queries` (rows of `dim` values, one after another) on
    /// `threads` threads (0: one per CPU; at most [`MAX_THREADS`], and never more than the
    /// queries), each thread taking one contiguous share of the rows. Answer `i` is query
    /// `i`'s hits, as [`IndexRead::search`] gives them.
    ///
    /// All or nothing: when any query fails (a wrong length, a value that is not finite)
    /// the call returns that error and no answers; the threads stop at their next query
    /// once one has failed. `InvalidArgument` when `queries` is not whole rows.
    pub fn search_batch(
        &self,
        queries: &[f32],
        opts: &SearchOptions<'_>,
        threads: usize,
    ) -> Result<Vec<Vec<Hit>>> {
        let dim = match &*self.kind {
            Kind::Live(h) => h.params().dim,
            Kind::Mapped(m) => m.params().dim,
            Kind::Dimensionless if queries.is_empty() => return Ok(Vec::new()),
            Kind::Dimensionless => {
                return Err(dimensionless(
                    "search_batch (the queries cannot be split into rows)",
                ))
            }
        };
        if queries.len() % dim != 0 {
            return Err(Error::invalid(format!(
                "queries: {} values are not rows of {dim} (the index's dim)",
                queries.len()
            )));
        }
        let nq = queries.len() / dim;
        if nq == 0 {
            return Ok(Vec::new());
        }
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t,
        }
        .clamp(1, MAX_THREADS)
        .min(nq);
        let kind: &Kind = &self.kind;
        if threads == 1 {
            return queries.chunks(dim).map(|q| kind.search(q, opts)).collect();
        }
        let per = nq.div_ceil(threads);
        let failed = AtomicBool::new(false);
        let parts: Vec<Result<Vec<Vec<Hit>>>> = std::thread::scope(|s| {
            let jobs: Vec<_> = queries
                .chunks(per * dim)
                .map(|rows| {
                    let failed = &failed;
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(rows.len() / dim);
                        for q in rows.chunks(dim) {
                            if failed.load(Ordering::Relaxed) {
                                break;
                            }
                            match kind.search(q, opts) {
                                Ok(hits) => out.push(hits),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                        Ok(out)
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        // An error wins over the shares that stopped early because of it.
        if let Some(e) = parts.iter().position(Result::is_err) {
            return parts.into_iter().nth(e).expect("position is in range");
        }
        let mut all = Vec::with_capacity(nq);
        for part in parts {
            all.extend(part?);
        }
        debug_assert_eq!(all.len(), nq);
        Ok(all)
    }

    /// [`Hnsw::remove`]; `Unsupported` for a mapped index; `NotFound` for a dimensionless
    /// one (it holds nothing).
    pub fn remove(&self, id: u64) -> Result<()> {
        if let Kind::Dimensionless = &*self.kind {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("id {id} is not in the index"),
            ));
        }
        self.live("remove")?.remove(id)
    }

    /// [`Hnsw::save`]; `Unsupported` for a mapped index; `InvalidArgument` for a
    /// dimensionless one (a file records a dimension).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.live("save")?.save(path)
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        match &*self.kind {
            Kind::Live(h) => h.len(),
            Kind::Mapped(m) => m.len(),
            Kind::Dimensionless => 0,
        }
    }

    /// True when no vector is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index holds ([`Hnsw::memory_bytes`]; for a mapped index, the file's size).
    pub fn memory_bytes(&self) -> usize {
        match &*self.kind {
            Kind::Live(h) => h.memory_bytes(),
            Kind::Mapped(m) => m.memory_bytes(),
            Kind::Dimensionless => 0,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
