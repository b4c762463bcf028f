//! The live index's node storage: chunks of nodes found through a fixed two-level directory.
//!
//! # Invariants (the publication scheme)
//!
//! * A node id is handed out once (`fetch_add`), and the chunk holding it exists before the
//!   id is used: [`Store::ensure`] allocates it under a mutex and publishes its pointer with
//!   a `Release` store; readers `Acquire` it.
//! * A node's record (codes, scale, external id, level) and its upper-level neighbour lists
//!   are written by the thread that allocated the id, **before** the id is stored anywhere
//!   another thread can read it (a neighbour slot or the entry point, `Release`). Readers only
//!   reach a node through such a slot (`Acquire`), so the record is fully written when they
//!   read it, and it is never written again.
//! * Neighbour lists are arrays of `AtomicU32` (a count, then ids) changed in place by the
//!   holder of the node's lock bit. A reader copies a list without the lock and may see it
//!   half rewritten: every id it can see was stored by a writer after that id's node was
//!   initialised (or is the `NONE` filler), so any id it follows is a valid, initialised
//!   node. A torn list costs search quality for one step, never memory safety.
//! * Nothing is freed while the index is shared: chunks, directories and upper lists live
//!   until the index is dropped or compacted, both of which take `&mut self`. That is the
//!   argued alternative to epoch reclamation here: removal marks a node deleted and unlinks
//!   it; `compact` reclaims.
//!
//! `model.rs` checks the publication step with loom (small chunk sizes under `cfg(loom)`).

#[cfg(not(loom))]
use std::ptr::NonNull;

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicPtr, AtomicU32, Mutex, Ordering};

#[cfg(not(loom))]
pub(crate) const CHUNK_SHIFT: u32 = 10;
#[cfg(loom)]
pub(crate) const CHUNK_SHIFT: u32 = 1;
#[cfg(not(loom))]
const MID_SHIFT: u32 = 8;
#[cfg(loom)]
const MID_SHIFT: u32 = 1;
#[cfg(not(loom))]
const TOP: usize = 256;
#[cfg(loom)]
const TOP: usize = 2;

const CHUNK: usize = 1 << CHUNK_SHIFT;
const MID: usize = 1 << MID_SHIFT;

/// The most nodes an index can hold (ids are `u32`; 2^28 with the production sizes).
pub(crate) const MAX_NODES: usize = CHUNK * MID * TOP;

/// An empty neighbour slot.
pub(crate) const NONE: u32 = u32::MAX;

/// Flag bits of a node.
pub(crate) const LOCKED: u32 = 1;
pub(crate) const DELETED: u32 = 2;
/// A node's level sits in bits 8..16 of its flags (set before the node is published).
pub(crate) const LEVEL_SHIFT: u32 = 8;

/// Byte sizes of the per-node parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Record bytes (a multiple of 8).
    pub stride: usize,
    /// Original-vector bytes (0 without originals).
    pub orig: usize,
    /// Level-0 list length in u32 (count + m0 ids).
    pub l0: usize,
    /// An upper level's list length in u32 (count + m ids).
    pub up: usize,
}

/// Fixed-size byte records, one per node of a chunk.
#[cfg(not(loom))]
struct Bytes {
    ptr: NonNull<u64>,
    words: usize,
    cap: usize,
    stride: usize,
}

#[cfg(not(loom))]
impl Bytes {
    fn new(stride: usize) -> Bytes {
        let words = CHUNK * stride / 8;
        let mut v = std::mem::ManuallyDrop::new(vec![0u64; words]);
        Bytes {
            ptr: NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            words,
            cap: v.capacity(),
            stride,
        }
    }

    /// # Safety
    /// Only the thread that allocated node `i` calls this, before `i` is published, and
    /// never while another thread reads record `i`.
    unsafe fn write(&self, i: usize, f: impl FnOnce(&mut [u8])) {
        // SAFETY: `i < CHUNK` (callers take the low bits of an id), so the offset stays
        // inside the allocation of `CHUNK · stride` bytes.
        let p = unsafe { self.ptr.as_ptr().cast::<u8>().add(i * self.stride) };
        // SAFETY: `stride` bytes from `p` are inside the allocation; the caller guarantees
        // nobody else touches them now.
        let s = unsafe { std::slice::from_raw_parts_mut(p, self.stride) };
        f(s)
    }

    /// Asks the CPU to start loading record `i` (a hint: no memory is accessed).
    #[inline(always)]
    fn prefetch(&self, i: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let p = self.ptr.as_ptr().cast::<u8>().wrapping_add(i * self.stride);
            let mut off = 0;
            while off < self.stride {
                // SAFETY: a prefetch is only a hint; it never faults or reads into the
                // program, whatever the address (`wrapping_add` keeps the arithmetic defined).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast::<i8>()) };
                off += 64;
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = i;
    }

    /// # Safety
    /// Record `i` was written and published (the caller observed its id through an
    /// `Acquire` load after the writer's `Release` store).
    #[inline(always)]
    unsafe fn read<R>(&self, i: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: in bounds as for `write`.
        let p = unsafe { self.ptr.as_ptr().cast::<u8>().add(i * self.stride) };
        // SAFETY: in bounds; the bytes are immutable once published.
        let s = unsafe { std::slice::from_raw_parts(p, self.stride) };
        f(s)
    }
}

#[cfg(not(loom))]
impl Drop for Bytes {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`words`/`cap` came from a `Vec<u64>` of that length and capacity that
        // was never freed (ManuallyDrop); nobody uses the bytes any more (`&mut self`).
        drop(unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.words, self.cap) });
    }
}

// SAFETY: the bytes are plain data; access is coordinated by the publication protocol.
#[cfg(not(loom))]
unsafe impl Send for Bytes {}
// SAFETY: as above.
#[cfg(not(loom))]
unsafe impl Sync for Bytes {}

/// Under loom every record is its own tracked cell, so a read that is not ordered after the
/// write is reported.
#[cfg(loom)]
struct Bytes {
    cells: Box<[crate::sync::UnsafeCell<Vec<u8>>]>,
}

#[cfg(loom)]
impl Bytes {
    fn new(stride: usize) -> Bytes {
        Bytes {
            cells: (0..CHUNK)
                .map(|_| crate::sync::UnsafeCell::new(vec![0u8; stride]))
                .collect(),
        }
    }
    unsafe fn write(&self, i: usize, f: impl FnOnce(&mut [u8])) {
        // SAFETY: as in the production version (loom checks it).
        self.cells[i].with_mut(|p| f(unsafe { &mut *p }))
    }
    fn prefetch(&self, _i: usize) {}
    unsafe fn read<R>(&self, i: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: as in the production version (loom checks it).
        self.cells[i].with(|p| f(unsafe { &*p }))
    }
}

/// A chunk of `CHUNK` nodes.
pub(crate) struct Chunk {
    records: Bytes,
    originals: Option<Bytes>,
    l0: Box<[AtomicU32]>,
    flags: Box<[AtomicU32]>,
    /// Upper-level lists (`level × up` u32), allocated at the node's initialisation.
    upper: Box<[AtomicPtr<AtomicU32>]>,
}

impl Chunk {
    fn new(layout: Layout) -> Box<Chunk> {
        Box::new(Chunk {
            records: Bytes::new(layout.stride),
            originals: (layout.orig > 0).then(|| Bytes::new(layout.orig)),
            l0: (0..CHUNK * layout.l0)
                .map(|i| AtomicU32::new(if i % layout.l0 == 0 { 0 } else { NONE }))
                .collect(),
            flags: (0..CHUNK).map(|_| AtomicU32::new(0)).collect(),
            upper: (0..CHUNK)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        })
    }
}

type Mid = Box<[AtomicPtr<Chunk>]>;

/// Node storage: a fixed top directory of `TOP` pointers to directories of `MID` chunk
/// pointers. Lookups are two dependent loads; nothing ever moves.
pub(crate) struct Store {
    pub layout: Layout,
    top: Box<[AtomicPtr<Mid>]>,
    grow: Mutex<()>,
    chunks: AtomicU32,
}

impl Store {
    pub fn new(layout: Layout) -> Store {
        Store {
            layout,
            top: (0..TOP)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            grow: Mutex::new(()),
            chunks: AtomicU32::new(0),
        }
    }

    /// Chunks allocated.
    pub fn chunks(&self) -> usize {
        self.chunks.load(Ordering::Relaxed) as usize
    }

    /// Bytes allocated by chunks and directories (upper lists are counted by the index).
    pub fn bytes(&self) -> usize {
        let l = self.layout;
        let chunk = CHUNK * (l.stride + l.orig + 4 * l.l0 + 4 + std::mem::size_of::<usize>());
        let mids = self
            .top
            .iter()
            .filter(|p| !p.load(Ordering::Relaxed).is_null())
            .count();
        self.chunks() * chunk + TOP * 8 + mids * MID * 8
    }

    /// Bytes of the original vectors kept for re-ranking (part of [`Store::bytes`]).
    pub fn originals_bytes(&self) -> usize {
        self.chunks() * CHUNK * self.layout.orig
    }

    /// Makes sure the chunk holding node `id` exists.
    pub fn ensure(&self, id: u32) -> Result<()> {
        let id = id as usize;
        if id >= MAX_NODES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("the index holds at most {MAX_NODES} nodes"),
            ));
        }
        if self.chunk(id as u32).is_some() {
            return Ok(());
        }
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let (t, m) = (
            id >> (CHUNK_SHIFT + MID_SHIFT),
            (id >> CHUNK_SHIFT) & (MID - 1),
        );
        let mut mid = self.top[t].load(Ordering::Acquire);
        if mid.is_null() {
            let fresh: Mid = (0..MID)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect();
            mid = Box::into_raw(Box::new(fresh));
            self.top[t].store(mid, Ordering::Release);
        }
        // SAFETY: `mid` is non-null, was published by `Box::into_raw` under this mutex, and
        // is freed only by `Drop` (`&mut self`).
        let slot = unsafe { &(&*mid)[m] };
        if slot.load(Ordering::Acquire).is_null() {
            slot.store(Box::into_raw(Chunk::new(self.layout)), Ordering::Release);
            self.chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The chunk of node `id`, if allocated.
    #[inline(always)]
    fn chunk(&self, id: u32) -> Option<&Chunk> {
        let id = id as usize;
        let t = id >> (CHUNK_SHIFT + MID_SHIFT);
        let mid = self.top.get(t)?.load(Ordering::Acquire);
        if mid.is_null() {
            return None;
        }
        // SAFETY: published by `ensure` (Release, read with Acquire above), freed only by
        // `Drop`, which needs `&mut self`.
        let c = unsafe { &*mid }[(id >> CHUNK_SHIFT) & (MID - 1)].load(Ordering::Acquire);
        // SAFETY: as above, for the chunk.
        (!c.is_null()).then(|| unsafe { &*c })
    }

    #[inline(always)]
    fn at(&self, id: u32) -> (&Chunk, usize) {
        match self.chunk(id) {
            Some(c) => (c, id as usize & (CHUNK - 1)),
            // Ids come from the allocator after `ensure`, or from published slots.
            None => unreachable_chunk(id),
        }
    }

    /// Writes node `id`'s record (and original) before it is published.
    ///
    /// # Safety
    /// The caller allocated `id` (after `ensure`) and has not published it yet.
    pub unsafe fn init(&self, id: u32, record: &[u8], original: Option<&[u8]>) {
        let (c, i) = self.at(id);
        // SAFETY: the caller owns the unpublished node `id`.
        unsafe { c.records.write(i, |r| r.copy_from_slice(record)) };
        if let (Some(o), Some(src)) = (&c.originals, original) {
            // SAFETY: as above.
            unsafe { o.write(i, |r| r.copy_from_slice(src)) };
        }
    }

    /// Allocates node `id`'s upper lists (`levels` of them), before it is published.
    pub fn init_upper(&self, id: u32, levels: usize) -> usize {
        if levels == 0 {
            return 0;
        }
        let up = self.layout.up;
        let list: Box<[AtomicU32]> = (0..levels * up)
            .map(|i| AtomicU32::new(if i % up == 0 { 0 } else { NONE }))
            .collect();
        let (c, i) = self.at(id);
        // Release, paired with the Acquire in `list`: a thread that reached the node early
        // (a removal of the same id) sees the lists initialised, not just the pointer.
        c.upper[i].store(Box::into_raw(list).cast::<AtomicU32>(), Ordering::Release);
        levels * up * 4
    }

    /// Reads node `id`'s record.
    ///
    /// # Safety
    /// `id` was published (observed through an `Acquire` load) or initialised by this thread.
    #[inline(always)]
    pub unsafe fn record<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let (c, i) = self.at(id);
        // SAFETY: forwarded from the caller.
        unsafe { c.records.read(i, f) }
    }

    /// Starts loading node `id`'s record into the cache (a hint).
    #[inline(always)]
    pub fn prefetch(&self, id: u32) {
        if let Some(c) = self.chunk(id) {
            c.records.prefetch(id as usize & (CHUNK - 1));
        }
    }

    /// Reads node `id`'s original vector bytes, when the index keeps them.
    ///
    /// # Safety
    /// As for [`Store::record`].
    pub unsafe fn original<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let (c, i) = self.at(id);
        // SAFETY: forwarded from the caller.
        c.originals.as_ref().map(|o| unsafe { o.read(i, f) })
    }

    /// Node `id`'s list at `level` (count, then ids); `level` must not exceed its level.
    #[inline(always)]
    pub fn list(&self, id: u32, level: usize) -> &[AtomicU32] {
        let (c, i) = self.at(id);
        if level == 0 {
            let l = self.layout.l0;
            &c.l0[i * l..(i + 1) * l]
        } else {
            let up = self.layout.up;
            let levels = (c.flags[i].load(Ordering::Relaxed) >> LEVEL_SHIFT & 0xFF) as usize;
            let p = c.upper[i].load(Ordering::Acquire);
            if p.is_null() || level > levels {
                return &[];
            }
            // SAFETY: allocated by `init_upper` with `levels × up` elements, and the level
            // bits set, before the node was published (the caller reached `id` through an
            // Acquire load, which orders both stores; the allocating thread sees its own);
            // `level <= levels` was checked just above; the allocation lives until `Drop`.
            // SAFETY: as above, the offset is inside the allocation.
            let at = unsafe { p.add((level - 1) * up) };
            // SAFETY: `up` elements from `at` are inside the allocation, live until `Drop`.
            unsafe { std::slice::from_raw_parts(at, up) }
        }
    }

    /// Node `id`'s flags word.
    #[inline(always)]
    pub fn flags(&self, id: u32) -> &AtomicU32 {
        let (c, i) = self.at(id);
        &c.flags[i]
    }

    /// Frees node `id`'s upper lists (used by `Drop`; `levels` from its record).
    fn free_upper(&mut self, id: u32, levels: usize) {
        let up = self.layout.up;
        let (c, i) = self.at(id);
        let p = c.upper[i].swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `p` came from `Box::into_raw` of a `[AtomicU32]` of `levels × up`
            // elements in `init_upper`; swapped out, so it is freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, levels * up)) });
        }
    }

    /// Frees everything, given each allocated node's level.
    pub fn free(&mut self, levels: impl Iterator<Item = (u32, usize)>) {
        for (id, l) in levels {
            if l > 0 {
                self.free_upper(id, l);
            }
        }
        for t in self.top.iter() {
            let mid = t.swap(std::ptr::null_mut(), Ordering::Relaxed);
            if mid.is_null() {
                continue;
            }
            // SAFETY: from `Box::into_raw` in `ensure`; swapped out, freed once.
            let mid = unsafe { Box::from_raw(mid) };
            for c in mid.iter() {
                let c = c.swap(std::ptr::null_mut(), Ordering::Relaxed);
                if !c.is_null() {
                    // SAFETY: as above, for the chunk.
                    drop(unsafe { Box::from_raw(c) });
                }
            }
        }
        self.chunks.store(0, Ordering::Relaxed);
    }
}

#[cold]
#[inline(never)]
fn unreachable_chunk(id: u32) -> ! {
    panic!("hnsw: node {id} has no chunk (an id was used before its chunk was allocated)")
}
