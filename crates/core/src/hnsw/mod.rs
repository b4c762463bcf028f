//! A concurrent HNSW index over int8 vectors (`erlmcp_flow_hnsw`; by default `M = 16`,
//! `ef_construction = 200`, `ef_search = 50`).
//!
//! * Vectors are stored as calibrated int8 codes ([`crate::vector`]: one scale per vector)
//!   and compared with simsimd's int8 dot product; the original vectors can be kept as f16 or
//!   f32 ([`Originals`]) to re-rank the int8 candidates exactly.
//! * Metrics: cosine, dot, squared L2 ([`Metric`]). Ids are the caller's `u64`s.
//! * Everything takes `&self` except [`Hnsw::compact`]: searches run while other threads
//!   insert and remove. [`Hnsw::insert_batch`] builds on N threads.
//! * [`Hnsw::remove`] unlinks a node and repairs its neighbours' lists; the node's memory
//!   stays (searches may still be passing through it) until [`Hnsw::compact`].
//! * [`Hnsw::save`] writes a file that [`MappedHnsw::open`] maps read-only and searches in
//!   place — several processes can map one file; the file carries a CRC32C of its bytes, and
//!   the checksum and the structure are validated before use.
//!
//! ```
//! use erlmcp_flow::hnsw::{Hnsw, Params, SearchOptions};
//! let index = Hnsw::new(Params::new(3)).unwrap();
//! index.insert(7, &[1.0, 0.0, 0.0]).unwrap();
//! index.insert(8, &[0.0, 1.0, 0.0]).unwrap();
//! let hits = index.search(&[0.9, 0.1, 0.0], &SearchOptions { k: 1, ..Default::default() }).unwrap();
//! assert_eq!(hits[0].id, 7);
//! ```
//!
//! How concurrent access stays sound is argued in `store.rs` (publication before linking,
//! neighbour slots as atomics, nothing freed while shared) and model-checked with loom.

mod file;
mod graph;
mod index;
mod store;

#[cfg(all(test, loom))]
mod model;
#[cfg(all(test, not(loom)))]
mod tests;

use std::collections::HashMap;

pub use crate::vector::Metric;
#[doc(hidden)]
pub use file::reseal_file;
pub use file::MappedHnsw;
pub use graph::{Filter, Hit, Originals, SearchOptions};
pub use index::{Index, IndexRead};

use graph::{record_ext, record_stride, Graph, Query, Scored};
use store::{Layout, Store, DELETED, LEVEL_SHIFT, LOCKED, MAX_NODES, NONE};

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering};

/// Set once a node's record and lists are written (a save skips nodes without it).
const READY: u32 = 4;
/// Levels above this are never drawn (probability 16^-31).
pub(crate) const MAX_LEVEL: usize = 31;
const EMPTY: u64 = u64::MAX;
/// Batch calls use at most this many threads (a caller's absurd count is not spawned).
pub const MAX_THREADS: usize = 64;

/// Index parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Vector dimensions (1..=65536). [`Index::new`] also takes 0: the dimension of the
    /// first vector inserted ([`Hnsw::new`] does not).
    pub dim: usize,
    /// The distance.
    pub metric: Metric,
    /// Neighbours per node on upper levels; level 0 keeps `2·m` (2..=128; default 16).
    pub m: usize,
    /// Candidates kept while inserting (default 200).
    pub ef_construction: usize,
    /// Candidates kept while searching when a search does not say (default 50).
    pub ef_search: usize,
    /// Keep original vectors for re-ranking (default none).
    pub originals: Originals,
    /// Seed of the level draws (the same inserts give the same graph on one thread).
    pub seed: u64,
}

impl Params {
    /// The default parameters for `dim`-dimensional cosine vectors.
    pub fn new(dim: usize) -> Params {
        Params {
            dim,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 200,
            ef_search: 50,
            originals: Originals::None,
            seed: 0x5EED_0000_E4F1_0000,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.dim == 0 || self.dim > 65_536 {
            return bad(format!("dim {} is not in 1..=65536", self.dim));
        }
        if !(2..=128).contains(&self.m) {
            return bad(format!("m {} is not in 2..=128", self.m));
        }
        if self.ef_construction == 0 || self.ef_construction > 1 << 20 {
            return bad(format!(
                "ef_construction {} is not in 1..=1048576",
                self.ef_construction
            ));
        }
        if self.ef_search == 0 || self.ef_search > 1 << 20 {
            return bad(format!(
                "ef_search {} is not in 1..=1048576",
                self.ef_search
            ));
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        Layout {
            stride: record_stride(self.dim),
            orig: self.dim * self.originals.bytes(),
            l0: 2 * self.m + 1,
            up: self.m + 1,
        }
    }
}

/// A concurrent HNSW index (see the module documentation).
pub struct Hnsw {
    p: Params,
    level_mult: f64,
    store: Store,
    /// Node ids handed out (all below it have a chunk).
    next: AtomicU32,
    /// `level << 32 | id` of the entry point, or `EMPTY`.
    entry: AtomicU64,
    /// Held to raise or replace the entry point.
    entry_lock: Mutex<()>,
    /// External id → node id, for the live nodes.
    ids: Mutex<HashMap<u64, u32, ahash::RandomState>>,
    live: AtomicUsize,
    upper_bytes: AtomicUsize,
    /// The id [`Hnsw::insert_new`] tries first (it skips ids in use). Read and written only
    /// with the id map locked, so `Relaxed` is enough: the lock orders every access.
    next_ext: AtomicU64,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("params", &self.p)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn pack(id: u32, level: usize) -> u64 {
    (level as u64) << 32 | u64::from(id)
}

fn unpack(e: u64) -> Option<(u32, usize)> {
    (e != EMPTY).then_some((e as u32, (e >> 32) as usize))
}

/// The live index seen as a [`Graph`].
struct Live<'a>(&'a Hnsw);

impl Graph for Live<'_> {
    fn dim(&self) -> usize {
        self.0.p.dim
    }
    fn metric(&self) -> Metric {
        self.0.p.metric
    }
    fn entry(&self) -> Option<(u32, usize)> {
        unpack(self.0.entry.load(Ordering::Acquire))
    }
    fn id_bound(&self) -> u32 {
        self.0.next.load(Ordering::Acquire)
    }
    #[inline(always)]
    fn with_record<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: ids reach the algorithms only from the entry point or neighbour slots,
        // loaded with Acquire after the node was written (store.rs invariants), or are the
        // caller's own node being inserted.
        unsafe { self.0.store.record(id, f) }
    }
    #[inline(always)]
    fn neighbours(&self, id: u32, level: usize, out: &mut Vec<u32>) {
        let list = self.0.store.list(id, level);
        let Some((count, ids)) = list.split_first() else {
            return;
        };
        let n = (count.load(Ordering::Acquire) as usize).min(ids.len());
        let bound = self.0.next.load(Ordering::Relaxed);
        for s in &ids[..n] {
            let v = s.load(Ordering::Acquire);
            if v != NONE && v < bound {
                out.push(v);
            }
        }
    }
    #[inline(always)]
    fn deleted(&self, id: u32) -> bool {
        self.0.store.flags(id).load(Ordering::Acquire) & DELETED != 0
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        self.0.store.prefetch(id);
    }
    fn originals(&self) -> Originals {
        self.0.p.originals
    }
    fn with_original<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // SAFETY: as for `with_record`.
        unsafe { self.0.store.original(id, f) }
    }
}

/// Holds a node's lock bit.
struct NodeLock<'a>(&'a AtomicU32);

impl<'a> NodeLock<'a> {
    fn new(flags: &'a AtomicU32) -> NodeLock<'a> {
        let backoff = crate::sync::Backoff::new();
        while flags.fetch_or(LOCKED, Ordering::Acquire) & LOCKED != 0 {
            backoff.snooze();
        }
        NodeLock(flags)
    }
}

impl Drop for NodeLock<'_> {
    fn drop(&mut self) {
        self.0.fetch_and(!LOCKED, Ordering::Release);
    }
}

impl Hnsw {
    /// An empty index.
    pub fn new(params: Params) -> Result<Hnsw> {
        params.check()?;
        Ok(Hnsw {
            level_mult: 1.0 / (params.m as f64).ln(),
            store: Store::new(params.layout()),
            p: params,
            next: AtomicU32::new(0),
            entry: AtomicU64::new(EMPTY),
            entry_lock: Mutex::new(()),
            ids: Mutex::new(HashMap::default()),
            live: AtomicUsize::new(0),
            upper_bytes: AtomicUsize::new(0),
            next_ext: AtomicU64::new(0),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Live vectors (inserted and not removed).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no vector is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `id` is live.
    pub fn contains(&self, id: u64) -> bool {
        self.lock_ids().contains_key(&id)
    }

    /// Bytes held by the index: node storage (int8 records, neighbour lists, originals),
    /// upper-level lists and the id map.
    pub fn memory_bytes(&self) -> usize {
        let map = self.lock_ids().capacity() * (8 + 4 + 1);
        self.store.bytes() + self.upper_bytes.load(Ordering::Relaxed) + map
    }

    /// The part of [`Hnsw::memory_bytes`] taken by original vectors kept for re-ranking (0
    /// without originals): what an int8-only index of the same vectors saves.
    pub fn originals_bytes(&self) -> usize {
        self.store.originals_bytes()
    }

    fn lock_ids(
        &self,
    ) -> impl std::ops::DerefMut<Target = HashMap<u64, u32, ahash::RandomState>> + '_ {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flags(&self, id: u32) -> u32 {
        self.store.flags(id).load(Ordering::Acquire)
    }

    fn level(&self, id: u32) -> usize {
        (self.flags(id) >> LEVEL_SHIFT & 0xFF) as usize
    }

    /// The level of node `id`, drawn from the seed and the id (deterministic).
    fn draw_level(&self, id: u32) -> usize {
        let mut z = self.p.seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    /// Inserts `vector` under `id`. An id that is already live is refused
    /// (`InvalidArgument`); remove it first to replace it.
    pub fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        let record = self.encode(id, vector)?;
        let node = self.reserve(id)?;
        self.insert_node(node, &record, vector);
        Ok(())
    }

    /// Inserts `vector` under an id the index picks, and returns it: the smallest id not in
    /// use from a counter that starts at 0 and only grows (an id given back by
    /// [`Hnsw::remove`] is not reused; ids taken by [`Hnsw::insert`] are skipped). The id is
    /// chosen with the id map locked, so concurrent calls, and inserts under ids of the
    /// caller's, never collide. A loaded index counts from 0 again (skipping the ids in it).
    /// On an error (dimensions, values that are not finite) no id is used up.
    pub fn insert_new(&self, vector: &[f32]) -> Result<u64> {
        // Checked and encoded first, with a placeholder id patched in below.
        let mut record = self.encode(0, vector)?;
        let (id, node) = self.reserve_new()?;
        graph::set_record_ext(&mut record, id);
        self.insert_node(node, &record, vector);
        Ok(id)
    }

    /// Picks the next free id from `next_ext` and maps it to a fresh node, under the map lock.
    fn reserve_new(&self) -> Result<(u64, u32)> {
        let mut map = self.lock_ids();
        if self.next.load(Ordering::Relaxed) as usize >= MAX_NODES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("the index holds at most {MAX_NODES} nodes"),
            ));
        }
        let mut id = self.next_ext.load(Ordering::Relaxed);
        while map.contains_key(&id) {
            id = id.checked_add(1).ok_or_else(|| {
                Error::new(
                    ErrorKind::TooLarge,
                    "no id left to assign (2^64 - 1 reached)",
                )
            })?;
        }
        let node = self.allocate()?;
        map.insert(id, node);
        // u64::MAX taken: the next call finds it in use and fails with TooLarge.
        self.next_ext.store(id.saturating_add(1), Ordering::Relaxed);
        Ok((id, node))
    }

    /// Inserts `ids.len()` vectors, `vectors` holding them one after another, on `threads`
    /// threads (0: one per CPU). Everything is checked first (dimensions, finite values, ids
    /// unique and not live): on an error nothing is inserted.
    pub fn insert_batch(&self, ids: &[u64], vectors: &[f32], threads: usize) -> Result<()> {
        let dim = self.p.dim;
        if vectors.len() != ids.len() * dim {
            return Err(Error::invalid(format!(
                "{} ids need {} values ({} dimensions each), got {}",
                ids.len(),
                ids.len() * dim,
                dim,
                vectors.len()
            )));
        }
        let records: Vec<Vec<u8>> = ids
            .iter()
            .zip(vectors.chunks_exact(dim))
            .map(|(&id, v)| self.encode(id, v))
            .collect::<Result<_>>()?;
        let nodes = {
            let mut map = self.lock_ids();
            let mut seen = std::collections::HashSet::with_capacity(ids.len());
            for &id in ids {
                if map.contains_key(&id) {
                    return Err(Error::invalid(format!("id {id} is already in the index")));
                }
                if !seen.insert(id) {
                    return Err(Error::invalid(format!(
                        "id {id} appears twice in the batch"
                    )));
                }
            }
            let first = self.next.load(Ordering::Relaxed) as usize;
            if first + ids.len() > MAX_NODES {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("the index holds at most {MAX_NODES} nodes"),
                ));
            }
            let mut nodes = Vec::with_capacity(ids.len());
            for &id in ids {
                let node = self.allocate()?;
                map.insert(id, node);
                nodes.push(node);
            }
            nodes
        };
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t,
        }
        .clamp(1, MAX_THREADS)
        .min(ids.len().max(1));
        let work = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = work.fetch_add(1, Ordering::Relaxed);
                    if i >= nodes.len() {
                        break;
                    }
                    self.insert_node(nodes[i], &records[i], &vectors[i * dim..(i + 1) * dim]);
                });
            }
        });
        Ok(())
    }

    fn encode(&self, id: u64, vector: &[f32]) -> Result<Vec<u8>> {
        if vector.len() != self.p.dim {
            return Err(Error::invalid(format!(
                "vector has {} dimensions, the index {}",
                vector.len(),
                self.p.dim
            )));
        }
        let mut record = vec![0u8; record_stride(self.p.dim)];
        graph::encode_record(self.p.metric, id, vector, &mut record)?;
        Ok(record)
    }

    /// Maps `id` to a fresh node id whose chunk exists.
    fn reserve(&self, id: u64) -> Result<u32> {
        let mut map = self.lock_ids();
        if map.contains_key(&id) {
            return Err(Error::invalid(format!("id {id} is already in the index")));
        }
        if self.next.load(Ordering::Relaxed) as usize >= MAX_NODES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("the index holds at most {MAX_NODES} nodes"),
            ));
        }
        let node = self.allocate()?;
        map.insert(id, node);
        Ok(node)
    }

    /// The next node id, its chunk allocated before the id is counted in `next` (Release):
    /// whoever scans `0..next` (a save, the entry-point search) finds every chunk in place.
    /// Called with the id map locked, which serialises allocation.
    fn allocate(&self) -> Result<u32> {
        let node = self.next.load(Ordering::Relaxed);
        self.store.ensure(node)?;
        self.next.store(node + 1, Ordering::Release);
        Ok(node)
    }

    /// Writes, links and publishes node `node` (reserved by this thread).
    fn insert_node(&self, node: u32, record: &[u8], vector: &[f32]) {
        let level = self.draw_level(node);
        let original =
            (self.p.originals != Originals::None).then(|| self.p.originals.encode(vector));
        // SAFETY: `node` was reserved by this thread and is not published yet.
        unsafe { self.store.init(node, record, original.as_deref()) };
        self.store
            .flags(node)
            .fetch_or((level as u32) << LEVEL_SHIFT, Ordering::Release);
        let up = self.store.init_upper(node, level);
        self.upper_bytes.fetch_add(up, Ordering::Relaxed);
        let g = Live(self);
        let q = Query::from_record(self.p.metric, record, self.p.dim);

        let mut raise = None;
        let mut ep = self.entry.load(Ordering::Acquire);
        if unpack(ep).is_none_or(|(_, top)| level > top) {
            let guard = self.entry_lock.lock().unwrap_or_else(|e| e.into_inner());
            ep = self.entry.load(Ordering::Acquire);
            match unpack(ep) {
                None => {
                    self.store.flags(node).fetch_or(READY, Ordering::Release);
                    self.entry.store(pack(node, level), Ordering::Release);
                    self.live.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some((_, top)) if level > top => raise = Some(guard),
                Some(_) => {}
            }
        }
        let Some((entry, top)) = unpack(ep) else {
            return;
        };
        let mut eps = graph::descend(&g, &q, entry, top, level);
        let not_me = |n: u32| n != node && !g.deleted(n);
        // First choose and write this node's own lists at every level, then publish it by
        // linking it into its neighbours' lists: a search can only reach the node after its
        // lists are complete (linking level by level let a search descend onto it while its
        // level-0 list was still empty, and answer one hit).
        let mut chosen_at = Vec::with_capacity(level.min(top) + 1);
        for l in (0..=level.min(top)).rev() {
            let found = graph::search_layer(&g, &q, &eps, self.p.ef_construction, l, &not_me);
            let chosen = graph::select(&g, &found, self.p.m);
            {
                let _lock = NodeLock::new(self.store.flags(node));
                write_list(self.store.list(node, l), &chosen);
            }
            chosen_at.push((l, chosen));
            if !found.is_empty() {
                eps = found;
            }
        }
        for (l, chosen) in &chosen_at {
            for &n in chosen {
                self.link(&g, n, node, *l);
            }
        }
        self.store.flags(node).fetch_or(READY, Ordering::Release);
        if raise.is_some() {
            self.entry.store(pack(node, level), Ordering::Release);
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        drop(raise);
        // A removal may have emptied the index, or removed the entry, while this node was
        // being linked without it: the entry must name a live node.
        if unpack(self.entry.load(Ordering::Acquire))
            .is_none_or(|(e, _)| self.flags(e) & DELETED != 0)
        {
            self.replace_entry();
        }
    }

    /// Adds `new` to `n`'s list at `level`, pruning with the heuristic when it is full.
    fn link(&self, g: &Live<'_>, n: u32, new: u32, level: usize) {
        let cap = if level == 0 { 2 * self.p.m } else { self.p.m };
        let list = self.store.list(n, level);
        if list.is_empty() {
            return;
        }
        let _lock = NodeLock::new(self.store.flags(n));
        let mut ids = Vec::with_capacity(cap + 1);
        g.neighbours(n, level, &mut ids);
        if ids.contains(&new) {
            return;
        }
        if ids.len() < cap {
            list[ids.len() + 1].store(new, Ordering::Release);
            list[0].store(ids.len() as u32 + 1, Ordering::Release);
            return;
        }
        ids.push(new);
        self.prune_into(g, n, &ids, cap, list);
    }

    /// Rewrites `n`'s list (held locked by the caller) with the heuristic's choice among
    /// `ids`.
    fn prune_into(&self, g: &Live<'_>, n: u32, ids: &[u32], cap: usize, list: &[AtomicU32]) {
        let base = g.with_record(n, |r| Query::from_record(self.p.metric, r, self.p.dim));
        let mut scored: Vec<Scored> = ids
            .iter()
            .map(|&c| Scored(g.distance(&base, c), c))
            .collect();
        scored.sort_unstable();
        let chosen = graph::select(g, &scored, cap);
        write_list(list, &chosen);
    }

    /// `n`'s new list (for the caller to write, holding `n` locked or `&mut self`): every id
    /// of `kept`, the free places filled from `extra` closest first, by the selection
    /// heuristic, and at least the closest one when the heuristic keeps none. A repair never
    /// evicts a live neighbour: the evicted node could lose its only way in.
    fn refill(
        &self,
        g: &Live<'_>,
        n: u32,
        mut kept: Vec<u32>,
        extra: &[u32],
        cap: usize,
    ) -> Vec<u32> {
        kept.truncate(cap);
        if kept.len() < cap && !extra.is_empty() {
            let (metric, dim) = (self.p.metric, self.p.dim);
            let base = g.with_record(n, |r| Query::from_record(metric, r, dim));
            let mut scored: Vec<Scored> = extra
                .iter()
                .map(|&c| Scored(g.distance(&base, c), c))
                .collect();
            scored.sort_unstable();
            let before = kept.len();
            for &Scored(d, c) in &scored {
                if kept.len() >= cap {
                    break;
                }
                let good = g.with_record(c, |rc| {
                    kept.iter().all(|&k| {
                        g.with_record(k, |rk| graph::record_distance(metric, dim, rc, rk)) > d
                    })
                });
                if good {
                    kept.push(c);
                }
            }
            if kept.len() == before {
                kept.push(scored[0].1);
            }
        }
        kept
    }

    /// Searches for the nearest live vectors to `query`.
    pub fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        graph::search(&Live(self), query, opts, self.p.ef_search)
    }

    /// Removes `id`: it is no longer returned, and its neighbours are relinked among
    /// themselves (when that would leave a node it lists unreachable, one neighbour keeps it
    /// as a route that searches pass through). Its memory is reclaimed by
    /// [`Hnsw::compact`]. `NotFound` when absent.
    pub fn remove(&self, id: u64) -> Result<()> {
        let node = {
            // Under the map lock: a concurrent insert of the same id, or a save, sees the id
            // either live or removed, never both.
            let mut ids = self.lock_ids();
            let node = *ids.get(&id).ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("id {id} is not in the index"))
            })?;
            if self.flags(node) & READY == 0 {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("id {id} is still being inserted"),
                ));
            }
            ids.remove(&id);
            self.store.flags(node).fetch_or(DELETED, Ordering::AcqRel);
            node
        };
        self.live.fetch_sub(1, Ordering::Relaxed);
        let g = Live(self);
        let mut unlinked = Vec::new();
        for l in 0..=self.level(node) {
            let mut around = Vec::new();
            g.neighbours(node, l, &mut around);
            for &n in &around {
                if g.deleted(n) {
                    continue;
                }
                let cap = if l == 0 { 2 * self.p.m } else { self.p.m };
                let list = self.store.list(n, l);
                let _lock = NodeLock::new(self.store.flags(n));
                let mut ids = Vec::with_capacity(4 * cap);
                g.neighbours(n, l, &mut ids);
                if !ids.contains(&node) {
                    continue;
                }
                // Other removed nodes stay: they may be routes that `n` still needs.
                ids.retain(|&x| x != node);
                let extra: Vec<u32> = around
                    .iter()
                    .copied()
                    .filter(|&x| x != n && !g.deleted(x) && !ids.contains(&x))
                    .collect();
                write_list(list, &self.refill(&g, n, ids, &extra, cap));
                if l == 0 {
                    unlinked.push(n);
                }
            }
        }
        // Checked under the entry lock (two removals at once could otherwise each leave the
        // other's pick in place).
        self.replace_entry();
        if !unlinked.is_empty() {
            self.keep_reachable(node, &unlinked);
        }
        Ok(())
    }

    /// After `node` was unlinked from the level-0 lists of `unlinked` (its neighbours, nearest
    /// first): when a search for it from the entry point no longer meets every live node it
    /// lists, one of those it does meet lists `node` again, as a route that searches pass
    /// through (never return) until compaction, so nothing is cut off. (Unlinking whatever
    /// it left behind cut off nodes whose only ways in were removed nodes, e.g. two that
    /// listed only each other.) A live node the search misses may still be reachable
    /// farther away: then the route costs one list slot until compaction.
    fn keep_reachable(&self, node: u32, unlinked: &[u32]) {
        let g = Live(self);
        let Some((entry, top)) = g.entry() else {
            return;
        };
        let mut out = Vec::new();
        g.neighbours(node, 0, &mut out);
        out.retain(|&y| !g.deleted(y));
        let cap = 2 * self.p.m;
        let q = g.with_record(node, |r| Query::from_record(self.p.metric, r, self.p.dim));
        let eps = graph::descend(&g, &q, entry, top, 0);
        let mut probe = out.clone();
        probe.extend_from_slice(unlinked);
        let met = graph::met_by_search(&g, &q, &eps, cap, 0, &probe);
        if met[..out.len()].iter().all(|&m| m) {
            return;
        }
        for (&n, _) in unlinked.iter().zip(&met[out.len()..]).filter(|(_, &m)| m) {
            let _lock = NodeLock::new(self.store.flags(n));
            let mut ids = Vec::with_capacity(cap);
            g.neighbours(n, 0, &mut ids);
            if ids.contains(&node) {
                return;
            }
            if g.deleted(n) {
                continue;
            }
            if ids.len() >= cap {
                // Give up a node `node` lists: it stays reachable through `node`.
                match ids.iter().rposition(|x| out.contains(x)) {
                    Some(i) => {
                        ids.remove(i);
                    }
                    None => continue,
                }
            }
            ids.push(node);
            write_list(self.store.list(n, 0), &ids);
            return;
        }
    }

    /// Picks a new entry point (the highest live node) after the current one was removed.
    fn replace_entry(&self) {
        let _guard = self.entry_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, _)) = unpack(self.entry.load(Ordering::Acquire)) {
            if self.flags(e) & DELETED == 0 {
                return;
            }
        }
        self.pick_entry();
    }

    /// Sets the entry point to the highest live node, or empty (the caller holds
    /// `entry_lock`, or `&mut self`).
    fn pick_entry(&self) {
        let best = self.highest_live();
        self.entry
            .store(best.map_or(EMPTY, |(id, l)| pack(id, l)), Ordering::Release);
    }

    /// Reclaims the memory of removed vectors: the live nodes are renumbered densely into
    /// new storage and the old storage is freed. Needs `&mut self` (no concurrent access).
    pub fn compact(&mut self) -> Result<()> {
        let n = self.next.load(Ordering::Relaxed);
        self.repair_before_compact(n);
        let mut remap = vec![NONE; n as usize];
        let mut order = Vec::new();
        for id in 0..n {
            if self.flags(id) & (DELETED | READY) == READY {
                remap[id as usize] = order.len() as u32;
                order.push(id);
            }
        }
        let fresh = Store::new(self.p.layout());
        let mut upper = 0;
        for (new, &old) in order.iter().enumerate() {
            let new = new as u32;
            fresh.ensure(new)?;
            let level = self.level(old);
            let g = Live(self);
            let record = g.with_record(old, <[u8]>::to_vec);
            let original = g.with_original(old, <[u8]>::to_vec);
            // SAFETY: `fresh` is not shared; node `new` is written once.
            unsafe { fresh.init(new, &record, original.as_deref()) };
            upper += fresh.init_upper(new, level);
            fresh
                .flags(new)
                .store(READY | (level as u32) << LEVEL_SHIFT, Ordering::Relaxed);
            for l in 0..=level {
                let mut ids = Vec::new();
                g.neighbours(old, l, &mut ids);
                let ids: Vec<u32> = ids
                    .into_iter()
                    .map(|x| remap[x as usize])
                    .filter(|&x| x != NONE)
                    .collect();
                write_list(fresh.list(new, l), &ids);
            }
        }
        let entry = unpack(self.entry.load(Ordering::Relaxed))
            .and_then(|(e, l)| (remap[e as usize] != NONE).then(|| pack(remap[e as usize], l)));
        let mut old = std::mem::replace(&mut self.store, fresh);
        self.free_store(&mut old, n);
        self.next.store(order.len() as u32, Ordering::Relaxed);
        self.upper_bytes.store(upper, Ordering::Relaxed);
        self.entry.store(entry.unwrap_or(EMPTY), Ordering::Relaxed);
        let ids = self.ids.get_mut().unwrap_or_else(|e| e.into_inner());
        for node in ids.values_mut() {
            *node = remap[*node as usize];
        }
        ids.shrink_to_fit();
        if entry.is_none() && !order.is_empty() {
            self.pick_entry();
        }
        Ok(())
    }

    /// Until compaction, removed nodes stay in the graph as tombstones that searches route
    /// through (never return). Before they go: every list still naming a removed node takes
    /// that node's live neighbours as candidates (the removal's repair only reached the
    /// nodes the removed one listed), and then every live node the level-0 walk from the
    /// entry point no longer reaches is linked back ([`Hnsw::reconnect`]), so that dropping
    /// the tombstones cannot cut anything off.
    fn repair_before_compact(&mut self, n: u32) {
        let live = |id: u32| self.flags(id) & (DELETED | READY) == READY;
        let g = Live(self);
        for id in (0..n).filter(|&id| live(id)) {
            for l in 0..=self.level(id) {
                let mut ids = Vec::new();
                g.neighbours(id, l, &mut ids);
                if ids.iter().all(|&x| live(x)) {
                    continue;
                }
                let kept: Vec<u32> = ids.iter().copied().filter(|&x| live(x)).collect();
                let mut extra = Vec::new();
                for &x in ids.iter().filter(|&&x| !live(x)) {
                    let mut via = Vec::new();
                    g.neighbours(x, l, &mut via);
                    extra.extend(
                        via.into_iter()
                            .filter(|&y| y != id && live(y) && !kept.contains(&y)),
                    );
                }
                extra.sort_unstable();
                extra.dedup();
                let cap = if l == 0 { 2 * self.p.m } else { self.p.m };
                let fresh = self.refill(&g, id, kept, &extra, cap);
                write_list(self.store.list(id, l), &fresh);
            }
        }
        self.reconnect(n);
    }

    /// Makes level 0 strongly connected again once the tombstones are gone, so that a
    /// search finds every live node from wherever its descent lands: dropping them can cut
    /// off a node whose only ways in (or out) were removed nodes, or a group of nodes that
    /// list only each other, which no check of a node's own links sees. Two walks from the
    /// entry point (the one compaction keeps):
    ///
    /// 1. backwards: a node that cannot reach the entry lists the nearest node that can
    ///    (found by a search), giving up its farthest entry when its list is full (none of
    ///    its entries reaches the entry either);
    /// 2. forwards: a node the entry cannot reach is listed by its nearest reached node (one
    ///    of its own neighbours, else one a search finds). A full list gives up an entry
    ///    that is on neither walk's tree, so no link made here undoes another.
    ///
    /// Costs two walks of the level-0 links, plus a search for each node reconnected.
    fn reconnect(&mut self, n: u32) {
        let live = |id: u32| self.flags(id) & (DELETED | READY) == READY;
        let start = match unpack(self.entry.load(Ordering::Relaxed)) {
            Some((e, _)) if live(e) => e,
            _ => match self.highest_live() {
                Some((e, _)) => e,
                None => return,
            },
        };
        let g = Live(self);
        let cap = 2 * self.p.m;
        let (metric, dim) = (self.p.metric, self.p.dim);
        let nodes = n as usize;
        // The level-0 links of the live nodes, changed here and written back at the end.
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for id in (0..n).filter(|&id| live(id)) {
            g.neighbours(id, 0, &mut adj[id as usize]);
            adj[id as usize].retain(|&x| live(x));
        }
        let mut changed = vec![false; nodes];
        let nearest = |u: u32, admit: &dyn Fn(u32) -> bool| -> Vec<u32> {
            let q = g.with_record(u, |r| Query::from_record(metric, r, dim));
            let from = [Scored(g.distance(&q, start), start)];
            graph::search_layer(&g, &q, &from, self.p.ef_construction, 0, admit)
                .into_iter()
                .map(|s| s.1)
                .filter(|&x| x != u)
                .collect()
        };
        let mut queue = std::collections::VecDeque::new();

        // 1. Backwards: `next[x]` is x's first hop towards the entry (NONE: none).
        let mut radj: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for (x, out) in adj.iter().enumerate() {
            for &y in out {
                radj[y as usize].push(x as u32);
            }
        }
        let mut next = vec![NONE; nodes];
        let back = |next: &mut [u32],
                    radj: &[Vec<u32>],
                    from: u32,
                    queue: &mut std::collections::VecDeque<u32>| {
            queue.push_back(from);
            while let Some(x) = queue.pop_front() {
                for &p in &radj[x as usize] {
                    if next[p as usize] == NONE {
                        next[p as usize] = x;
                        queue.push_back(p);
                    }
                }
            }
        };
        next[start as usize] = start;
        back(&mut next, &radj, start, &mut queue);
        for u in 0..n {
            if !live(u) || next[u as usize] != NONE {
                continue;
            }
            let reaches = |x: u32| live(x) && next[x as usize] != NONE;
            let Some(&r) = nearest(u, &reaches).first() else {
                continue;
            };
            let list = &mut adj[u as usize];
            if list.len() >= cap {
                if let Some(e) = list.pop() {
                    radj[e as usize].retain(|&x| x != u);
                }
            }
            list.push(r);
            radj[r as usize].push(u);
            changed[u as usize] = true;
            next[u as usize] = r;
            back(&mut next, &radj, u, &mut queue);
        }

        // 2. Forwards: `parent[x]` is the node through which x was first reached.
        let mut parent = vec![NONE; nodes];
        let walk = |parent: &mut [u32],
                    adj: &[Vec<u32>],
                    from: u32,
                    queue: &mut std::collections::VecDeque<u32>| {
            queue.push_back(from);
            while let Some(x) = queue.pop_front() {
                for &y in &adj[x as usize] {
                    if parent[y as usize] == NONE {
                        parent[y as usize] = x;
                        queue.push_back(y);
                    }
                }
            }
        };
        parent[start as usize] = start;
        walk(&mut parent, &adj, start, &mut queue);
        for u in 0..n {
            if !live(u) || parent[u as usize] != NONE {
                continue;
            }
            // Its own reached neighbours first (its list is in selection order: nearest
            // first), then those a search finds.
            let reached = |x: u32| live(x) && parent[x as usize] != NONE;
            let mut cands: Vec<u32> = adj[u as usize]
                .iter()
                .copied()
                .filter(|&x| reached(x))
                .collect();
            for x in nearest(u, &reached) {
                if !cands.contains(&x) {
                    cands.push(x);
                }
            }
            for r in cands {
                let list = &mut adj[r as usize];
                if list.len() >= cap {
                    let spare = list
                        .iter()
                        .rposition(|&x| parent[x as usize] != r && next[r as usize] != x);
                    match spare {
                        Some(i) => {
                            list.remove(i);
                        }
                        None => continue,
                    }
                }
                list.push(u);
                changed[r as usize] = true;
                parent[u as usize] = r;
                walk(&mut parent, &adj, u, &mut queue);
                break;
            }
        }
        for (id, list) in adj.iter().enumerate() {
            if changed[id] {
                write_list(self.store.list(id as u32, 0), list);
            }
        }
    }

    /// The first live node of the highest level (None when no node is live).
    fn highest_live(&self) -> Option<(u32, usize)> {
        let mut best: Option<(u32, usize)> = None;
        for id in 0..self.next.load(Ordering::Acquire) {
            let f = self.flags(id);
            if f & (DELETED | READY) == READY {
                let l = (f >> LEVEL_SHIFT & 0xFF) as usize;
                if best.is_none_or(|(_, bl)| l > bl) {
                    best = Some((id, l));
                }
            }
        }
        best
    }

    fn free_store(&self, store: &mut Store, n: u32) {
        let levels: Vec<(u32, usize)> = (0..n)
            .map(|id| {
                (
                    id,
                    (store.flags(id).load(Ordering::Relaxed) >> LEVEL_SHIFT & 0xFF) as usize,
                )
            })
            .collect();
        store.free(levels.into_iter());
    }

    /// Writes the index to `path` (atomically: a temporary file renamed over it). Nodes
    /// inserted while the save runs may or may not be in the file; the file is consistent.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        file::save(self, path.as_ref())
    }

    /// Reads a saved index into memory (a mutable copy; [`MappedHnsw::open`] searches the
    /// file in place instead). The file is validated as by [`MappedHnsw::open`], checksum
    /// first: a damaged file is `Corrupt`, a path that is not a regular file `Io`.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Hnsw> {
        MappedHnsw::open(path)?.to_hnsw()
    }
}

impl Drop for Hnsw {
    fn drop(&mut self) {
        let n = self.next.load(Ordering::Relaxed);
        let mut store = std::mem::replace(&mut self.store, Store::new(self.p.layout()));
        self.free_store(&mut store, n);
    }
}

/// Writes `ids` into a list (count first, `NONE` after the end). The caller holds the lock.
fn write_list(list: &[AtomicU32], ids: &[u32]) {
    let Some((count, slots)) = list.split_first() else {
        return;
    };
    let n = ids.len().min(slots.len());
    for (s, &id) in slots.iter().zip(&ids[..n]) {
        s.store(id, Ordering::Release);
    }
    for s in &slots[n..] {
        s.store(NONE, Ordering::Relaxed);
    }
    count.store(n as u32, Ordering::Release);
}

impl Hnsw {
    /// For `file.rs`: a consistent snapshot of the nodes that are ready.
    pub(crate) fn snapshot(&self) -> file::Snapshot {
        let g = Live(self);
        // The entry first: it was READY before it was published, so it is in the scan below.
        let entry_now = unpack(self.entry.load(Ordering::Acquire));
        let n = self.next.load(Ordering::Acquire);
        let mut remap = vec![NONE; n as usize];
        let mut order = Vec::new();
        for id in 0..n {
            let f = self.flags(id);
            if f & READY != 0 {
                remap[id as usize] = order.len() as u32;
                order.push((id, (f >> LEVEL_SHIFT & 0xFF) as usize, f & DELETED != 0));
            }
        }
        // Ids beyond the scan (inserted while it runs) are left out.
        let at = |x: u32| remap.get(x as usize).copied().unwrap_or(NONE);
        let mut snap = file::Snapshot::new(&self.p, order.len());
        for &(old, level, deleted) in &order {
            let lists: Vec<Vec<u32>> = (0..=level)
                .map(|l| {
                    let mut ids = Vec::new();
                    g.neighbours(old, l, &mut ids);
                    ids.into_iter().map(at).filter(|&x| x != NONE).collect()
                })
                .collect();
            let record = g.with_record(old, <[u8]>::to_vec);
            let original = g.with_original(old, <[u8]>::to_vec);
            snap.push(&record, original.as_deref(), level, deleted, &lists);
        }
        // `live`, the top level and the entry describe the saved nodes, whatever happened
        // meanwhile (an insert may have raised the top after the entry was read, a removal
        // may have taken the entry). The entry is a node of the top level: the current one
        // when it qualifies, else a live one of that level, else any (a removed node still
        // routes searches, as in the live index).
        let live = order.iter().filter(|o| !o.2).count();
        let top = order.iter().map(|o| o.1).max();
        let entry = top.map(|top| {
            let current = entry_now
                .filter(|&(e, l)| l == top && at(e) != NONE)
                .map(|(e, _)| at(e) as usize);
            let pick = current
                .or_else(|| order.iter().position(|o| o.1 == top && !o.2))
                .or_else(|| order.iter().position(|o| o.1 == top))
                .unwrap_or(0);
            (pick as u32, top)
        });
        snap.finish(entry, live);
        snap
    }
}

#[cfg(all(test, not(loom)))]
impl Hnsw {
    /// The external id of node `node` (tests).
    pub(crate) fn store_record_ext(&self, node: u32) -> u64 {
        Live(self).with_record(node, record_ext)
    }
}

/// The external id of a record (used by `file.rs` to rebuild the id map).
pub(crate) fn ext_of(record: &[u8]) -> u64 {
    record_ext(record)
}
