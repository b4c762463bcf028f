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
use crate::sync::{AtomicBool, Ordering, RwLock, RwLockReadGuard, TryLockError};

enum Kind {
    Live(Hnsw),
    Mapped(MappedHnsw),
}

/// An HNSW index, built in memory ([`Index::new`], [`Index::load`]) or a saved file mapped
/// read-only ([`Index::open`]); thread-safe for every operation (see the module
/// documentation for the locking rule).
pub struct Index {
    params: Params,
    mapped: bool,
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
        };
        Index {
            params,
            mapped,
            kind: RwLock::new(kind),
        }
    }

    /// An empty in-memory index ([`Hnsw::new`]).
    pub fn new(params: Params) -> Result<Index> {
        Ok(Hnsw::new(params)?.into())
    }

    /// Maps a saved index read-only ([`MappedHnsw::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Index> {
        Ok(MappedHnsw::open(path)?.into())
    }

    /// Reads a saved index into a new in-memory index that can change ([`Hnsw::load`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Index> {
        Ok(Hnsw::load(path)?.into())
    }

    /// The parameters (no lock: they never change).
    pub fn params(&self) -> &Params {
        &self.params
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
        let mut kind = self.kind.write().unwrap_or_else(|e| e.into_inner());
        compact_kind(&mut kind)
    }

    /// [`Index::compact`] without waiting: `Busy` (nothing done) while any other call on the
    /// index runs or another compaction does.
    pub fn try_compact(&self) -> Result<()> {
        if self.mapped {
            return Err(read_only());
        }
        let mut kind = match self.kind.try_write() {
            Ok(k) => k,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    "compact: the index is in use by other calls (or another compaction)",
                ))
            }
        };
        compact_kind(&mut kind)
    }

    /// [`IndexRead::insert`] (waits while a compaction runs).
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        self.read().insert(id, vector)
    }

    /// [`IndexRead::insert_batch`] (waits while a compaction runs).
    pub fn insert_batch(&self, ids: &[u64], vectors: &[f32], threads: usize) -> Result<()> {
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

impl Kind {
    fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        match self {
            Kind::Live(h) => h.search(query, opts),
            Kind::Mapped(m) => m.search(query, opts),
        }
    }
}

fn compact_kind(kind: &mut Kind) -> Result<()> {
    match kind {
        Kind::Live(h) => h.compact(),
        Kind::Mapped(_) => Err(read_only()),
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
    fn live(&self) -> Result<&Hnsw> {
        match &*self.kind {
            Kind::Live(h) => Ok(h),
            Kind::Mapped(_) => Err(read_only()),
        }
    }

    /// [`Hnsw::insert`]; `Unsupported` for a mapped index.
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        self.live()?.insert(id, vector)
    }

    /// [`Hnsw::insert_batch`]; `Unsupported` for a mapped index.
    pub fn insert_batch(&self, ids: &[u64], vectors: &[f32], threads: usize) -> Result<()> {
        self.live()?.insert_batch(ids, vectors, threads)
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

    /// [`Hnsw::remove`]; `Unsupported` for a mapped index.
    pub fn remove(&self, id: u64) -> Result<()> {
        self.live()?.remove(id)
    }

    /// [`Hnsw::save`]; `Unsupported` for a mapped index.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.live()?.save(path)
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        match &*self.kind {
            Kind::Live(h) => h.len(),
            Kind::Mapped(m) => m.len(),
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
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
