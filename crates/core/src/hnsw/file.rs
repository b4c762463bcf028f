//! The index file, and [`MappedHnsw`]: a saved index mapped read-only and searched in place.
//!
//! Layout (little-endian; every section starts at a multiple of 8):
//!
//! ```text
//! header (136 bytes)  magic "EMFHNSW\0", version (2), byte-order mark, metric, dim, m, count,
//!                     live, entry, top level, originals, ef_construction, ef_search, seed,
//!                     upper length, the offset of each section, file length,
//!                     CRC32C (at byte 128), 4 bytes reserved (zero)
//! records             count × record_stride(dim)   [a f32][b f32][id u64][codes i8 × dim]
//! originals           count × dim × (0 | 2 | 4)    f16 or f32 vectors for re-ranking
//! levels              count bytes                  level | 0x80 when removed
//! level-0 lists       count × (2m + 1) u32          count, then ids
//! upper index         count u32                    where a node's upper lists start
//! upper lists         upper length u32              per node and level 1..: count, then ids
//! ```
//!
//! The CRC32C covers every byte of the file but its own four (bytes `0..128` then `132..`).
//! [`MappedHnsw::open`] (and so [`Hnsw::load`]) checks the header's magic, version and file
//! length, then the checksum over the whole file — so any bit flipped on disk or on the way is
//! refused as `Corrupt` — and then every section's bounds, every list's count, and that every
//! id in a level-`l` list names a node of level `l` or more, before the first search. The
//! checksum reads every byte once at open (about 14 GB/s with the CPU's CRC instructions): a
//! 100K × 384 index with f16 originals (131 MB) opens in 12 ms instead of 3 ms from the page
//! cache, and a file not in the page cache is read whole from the disk at open rather than
//! page by page as searches touch it.
//!
//! Files of version 1 (written before the checksum; a 128-byte header without the last two
//! fields) are still read, with the structural checks only; [`Hnsw::save`] always writes
//! version 2, so loading an old file and saving it again adds the checksum.
//!
//! After the checks, searches index the mapping with bounds-checked slices, so even a damage
//! missed here could only stop a search, never read outside the file. A file is written to a
//! temporary name and renamed, so a process that mapped the old file keeps reading the old
//! one intact.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::graph::{self, record_stride, Graph, Originals};
use super::store::{DELETED, LEVEL_SHIFT, MAX_NODES, NONE};
use super::{Hit, Hnsw, Metric, Params, SearchOptions, MAX_LEVEL, READY};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::Ordering;

const MAGIC: &[u8; 8] = b"EMFHNSW\0";
/// The version this build writes: version 1 plus the CRC32C.
const VERSION: u32 = 2;
/// Files written before the checksum: read with the structural checks only.
const VERSION_1: u32 = 1;
const BOM: u32 = 0x0102_0304;
const HEADER: usize = 136;
const HEADER_V1: usize = 128;
/// Where the CRC32C sits in a version-2 header (4 bytes; 4 reserved zero bytes follow).
const CRC_AT: usize = 128;
const REMOVED: u8 = 0x80;

/// What a save writes, gathered from the live index.
pub(crate) struct Snapshot {
    p: Params,
    records: Vec<u8>,
    originals: Vec<u8>,
    levels: Vec<u8>,
    l0: Vec<u32>,
    upper_index: Vec<u32>,
    upper: Vec<u32>,
    entry: Option<(u32, usize)>,
    live: usize,
}

impl Snapshot {
    pub fn new(p: &Params, n: usize) -> Snapshot {
        Snapshot {
            p: *p,
            records: Vec::with_capacity(n * record_stride(p.dim)),
            originals: Vec::new(),
            levels: Vec::with_capacity(n),
            l0: Vec::with_capacity(n * (2 * p.m + 1)),
            upper_index: Vec::with_capacity(n),
            upper: Vec::new(),
            entry: None,
            live: 0,
        }
    }

    /// Adds the next node (ids in `lists` are already renumbered).
    pub fn push(
        &mut self,
        record: &[u8],
        original: Option<&[u8]>,
        level: usize,
        deleted: bool,
        lists: &[Vec<u32>],
    ) {
        let m = self.p.m;
        self.records.extend_from_slice(record);
        if let Some(o) = original {
            self.originals.extend_from_slice(o);
        }
        self.levels
            .push(level as u8 | if deleted { REMOVED } else { 0 });
        let put = |out: &mut Vec<u32>, ids: &[u32], cap: usize| {
            let n = ids.len().min(cap);
            out.push(n as u32);
            out.extend_from_slice(&ids[..n]);
            out.extend(std::iter::repeat_n(NONE, cap - n));
        };
        put(&mut self.l0, lists.first().map_or(&[][..], |v| v), 2 * m);
        self.upper_index.push(self.upper.len() as u32);
        for l in 1..=level {
            put(&mut self.upper, lists.get(l).map_or(&[][..], |v| v), m);
        }
    }

    pub fn finish(&mut self, entry: Option<(u32, usize)>, live: usize) {
        self.entry = entry;
        self.live = live;
    }

    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        let n = self.levels.len();
        if self.upper.len() > u32::MAX as usize {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "upper lists exceed 2^32 entries",
            ));
        }
        let mut out = vec![0u8; HEADER];
        let section = |out: &mut Vec<u8>, bytes: &[u8]| -> u64 {
            while out.len() % 8 != 0 {
                out.push(0);
            }
            let at = out.len() as u64;
            out.extend_from_slice(bytes);
            at
        };
        let offs = [
            section(&mut out, &self.records),
            section(&mut out, &self.originals),
            section(&mut out, &self.levels),
            section(&mut out, bytemuck::cast_slice(&self.l0)),
            section(&mut out, bytemuck::cast_slice(&self.upper_index)),
            section(&mut out, bytemuck::cast_slice(&self.upper)),
        ];
        let len = out.len() as u64;
        let (entry, top) = self.entry.map_or((NONE, 0), |(e, l)| (e, l as u32));
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            BOM,
            self.p.metric.code(),
            self.p.dim as u32,
            self.p.m as u32,
            n as u32,
            self.live as u32,
            entry,
            top,
            self.p.originals.bytes() as u32,
            self.p.ef_construction as u32,
            self.p.ef_search as u32,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&self.p.seed.to_le_bytes());
        h.extend_from_slice(&(self.upper.len() as u64).to_le_bytes());
        for o in offs {
            h.extend_from_slice(&o.to_le_bytes());
        }
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&[0; 8]); // the CRC32C, then 4 reserved bytes
        debug_assert_eq!(h.len(), HEADER);
        out[..HEADER].copy_from_slice(&h);
        let crc = file_crc(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

pub(crate) fn save(index: &Hnsw, path: &Path) -> Result<()> {
    let bytes = index.snapshot().bytes()?;
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("{}: {e}", path.display()));
    // A name of its own per save (process and a counter): two saves to one path at once
    // each write their own file, and the last rename wins whole.
    use std::sync::atomic::{AtomicU64, Ordering as StdOrdering}; // std-atomic-ok: a process-wide counter (loom cannot build statics)
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let k = SAVES.fetch_add(1, StdOrdering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}.{k}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

enum Backing {
    Map(memmap2::Mmap),
    /// 8-aligned heap copy (from bytes).
    Heap(Vec<u64>, usize),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap(v, len) => &bytemuck::cast_slice(v)[..*len],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sections {
    records: usize,
    originals: usize,
    levels: usize,
    l0: usize,
    upper_index: usize,
    upper: usize,
    upper_len: usize,
}

/// A saved index, mapped read-only and searched in place (see the module documentation).
///
/// The file must not be changed in place while it is mapped ([`Hnsw::save`] never does: it
/// renames a new file over the old name). Searches are `&self` and thread-safe.
pub struct MappedHnsw {
    backing: Backing,
    p: Params,
    count: usize,
    live: usize,
    entry: Option<(u32, usize)>,
    s: Sections,
}

impl std::fmt::Debug for MappedHnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedHnsw")
            .field("params", &self.p)
            .field("len", &self.live)
            .finish_non_exhaustive()
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("hnsw file: {what}"))
}

/// The CRC32C of a version-2 file: every byte but the four that hold it.
fn file_crc(b: &[u8]) -> u32 {
    crate::checksum::crc32c_append(crate::checksum::crc32c(&b[..CRC_AT]), &b[CRC_AT + 4..])
}

/// Recomputes the checksum of version-2 index file bytes in place (for the fuzz target: it
/// damages a file on purpose and re-seals it, to reach the structural checks behind the
/// checksum). Bytes too short for the header are left alone.
#[doc(hidden)]
pub fn reseal_file(bytes: &mut [u8]) {
    if bytes.len() >= HEADER && u32_at(bytes, 8) == VERSION {
        let crc = file_crc(bytes);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl MappedHnsw {
    /// Maps the index file at `path` read-only and validates it: the CRC32C over every byte,
    /// then the structure (module documentation). `Corrupt` for a damaged file, `NotFound`
    /// when there is none, `Io` when the OS refuses it or `path` is not a regular file (a
    /// directory, a FIFO, a device).
    pub fn open(path: impl AsRef<Path>) -> Result<MappedHnsw> {
        let path = path.as_ref();
        let io = |e: std::io::Error| {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Io,
            };
            Error::new(kind, format!("{}: {e}", path.display()))
        };
        let not_a_file = |what: &str| {
            Error::new(
                ErrorKind::Io,
                format!("{}: {what}, not an index file", path.display()),
            )
        };
        // Looked at before the open: opening a FIFO for reading would wait for a writer.
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(not_a_file("is a directory"));
        }
        if !meta.is_file() {
            return Err(not_a_file("is not a regular file"));
        }
        let f = File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(not_a_file("is not a regular file"));
        }
        let len = meta.len();
        if len < HEADER_V1 as u64 {
            return Err(corrupt(format!("{} bytes is shorter than the header", len)));
        }
        // SAFETY: the mapping is read-only and private to this value; the file is not
        // changed in place by this crate (saves rename a new file over the name). A file
        // truncated by someone else while mapped is outside what this API can defend
        // (SIGBUS), as for every mapped file; the documentation says so.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        MappedHnsw::parse(Backing::Map(map))
    }

    /// Validates `bytes` as an index file (checksum and structure, as [`MappedHnsw::open`])
    /// and searches a copy of them (for bytes that did not come from a file, e.g. received
    /// from another process).
    pub fn from_bytes(bytes: &[u8]) -> Result<MappedHnsw> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        MappedHnsw::parse(Backing::Heap(v, bytes.len()))
    }

    fn parse(backing: Backing) -> Result<MappedHnsw> {
        let b = backing.bytes();
        let short = || corrupt(format!("{} bytes is shorter than the header", b.len()));
        if b.len() < HEADER_V1 {
            return Err(short());
        }
        if &b[..8] != MAGIC {
            return Err(corrupt("not an erlmcp-flow HNSW file (magic)"));
        }
        let version = u32_at(b, 8);
        let header = match version {
            VERSION => HEADER,
            VERSION_1 => HEADER_V1,
            _ => {
                return Err(corrupt(format!(
                    "version {version}, this build reads {VERSION_1} and {VERSION}"
                )))
            }
        };
        if b.len() < header {
            return Err(short());
        }
        if u64_at(b, 120) != b.len() as u64 {
            return Err(corrupt(format!(
                "the header says {} bytes, the file has {} (truncated, or extended)",
                u64_at(b, 120),
                b.len()
            )));
        }
        if version == VERSION {
            let (stored, computed) = (u32_at(b, CRC_AT), file_crc(b));
            if stored != computed {
                return Err(corrupt(format!(
                    "checksum mismatch: the header's CRC32C is {stored:#010x}, the file's bytes \
                     give {computed:#010x} (damaged on disk or on the way)"
                )));
            }
            if u32_at(b, CRC_AT + 4) != 0 {
                return Err(corrupt("reserved header bytes are not zero"));
            }
        }
        if u32_at(b, 12) != BOM {
            return Err(corrupt("written on a machine of the other byte order"));
        }
        let metric = Metric::from_code(u32_at(b, 16)).map_err(|e| corrupt(e.message()))?;
        let (dim, m, count, live) = (
            u32_at(b, 20) as usize,
            u32_at(b, 24) as usize,
            u32_at(b, 28) as usize,
            u32_at(b, 32) as usize,
        );
        let (entry, top) = (u32_at(b, 36), u32_at(b, 40) as usize);
        let originals =
            Originals::from_bytes(u32_at(b, 44)).ok_or_else(|| corrupt("bad originals kind"))?;
        let p = Params {
            dim,
            metric,
            m,
            ef_construction: u32_at(b, 48) as usize,
            ef_search: u32_at(b, 52) as usize,
            originals,
            seed: u64_at(b, 56),
        };
        p.check().map_err(|e| corrupt(e.message()))?;
        if count > MAX_NODES || live > count {
            return Err(corrupt(format!("{live} live of {count} nodes")));
        }
        let upper_len = usize::try_from(u64_at(b, 64)).map_err(|_| corrupt("upper length"))?;
        let sizes = [
            count.checked_mul(record_stride(dim)),
            count.checked_mul(dim * originals.bytes()),
            Some(count),
            count.checked_mul((2 * m + 1) * 4),
            count.checked_mul(4),
            upper_len.checked_mul(4),
        ];
        let mut offs = [0usize; 6];
        let mut end = header;
        for (i, size) in sizes.iter().enumerate() {
            let off = usize::try_from(u64_at(b, 72 + 8 * i)).map_err(|_| corrupt("offset"))?;
            let size = size.ok_or_else(|| corrupt("section size overflows"))?;
            // Sections follow each other at the next multiple of 8, the last ending the file:
            // a damaged dimension, count or offset shows up as a layout mismatch.
            if off != end.div_ceil(8) * 8 || off.checked_add(size).is_none_or(|e| e > b.len()) {
                return Err(corrupt(format!(
                    "section {i} at {off} of {size} bytes is out of place"
                )));
            }
            offs[i] = off;
            end = off + size;
        }
        if end != b.len() {
            return Err(corrupt(format!(
                "sections end at {end}, the file at {}",
                b.len()
            )));
        }
        let s = Sections {
            records: offs[0],
            originals: offs[1],
            levels: offs[2],
            l0: offs[3],
            upper_index: offs[4],
            upper: offs[5],
            upper_len,
        };
        let entry = if entry == NONE {
            if live > 0 {
                return Err(corrupt("live nodes but no entry point"));
            }
            None
        } else {
            Some((entry, top))
        };
        let mapped = MappedHnsw {
            backing,
            p,
            count,
            live,
            entry,
            s,
        };
        mapped.check_graph()?;
        Ok(mapped)
    }

    fn levels(&self) -> &[u8] {
        &self.backing.bytes()[self.s.levels..self.s.levels + self.count]
    }

    fn u32s(&self, off: usize, n: usize) -> &[u32] {
        // Offsets are multiples of 8 into 8-aligned memory (a page or a Vec<u64>), checked
        // in `parse`; a failed cast gives an empty slice rather than a wrong one.
        bytemuck::try_cast_slice(&self.backing.bytes()[off..off + 4 * n]).unwrap_or(&[])
    }

    fn l0(&self) -> &[u32] {
        self.u32s(self.s.l0, self.count * (2 * self.p.m + 1))
    }

    fn upper_index(&self) -> &[u32] {
        self.u32s(self.s.upper_index, self.count)
    }

    fn upper(&self) -> &[u32] {
        self.u32s(self.s.upper, self.s.upper_len)
    }

    fn level_of(&self, id: usize) -> usize {
        usize::from(self.levels()[id] & !REMOVED)
    }

    /// The list of `id` at `level`, count first (bounds checked in `check_graph`).
    fn list(&self, id: usize, level: usize) -> &[u32] {
        if level == 0 {
            let l = 2 * self.p.m + 1;
            &self.l0()[id * l..(id + 1) * l]
        } else {
            let up = self.p.m + 1;
            let at = self.upper_index()[id] as usize + (level - 1) * up;
            self.upper().get(at..at + up).unwrap_or(&[])
        }
    }

    fn check_graph(&self) -> Result<()> {
        let n = self.count;
        if self.l0().len() != n * (2 * self.p.m + 1)
            || self.upper_index().len() != n
            || self.upper().len() != self.s.upper_len
        {
            return Err(corrupt("misaligned list sections"));
        }
        if let Some((e, top)) = self.entry {
            if e as usize >= n || top > MAX_LEVEL || self.level_of(e as usize) != top {
                return Err(corrupt(format!(
                    "entry point {e} at level {top} is not a node of that level"
                )));
            }
        }
        let top = self.entry.map_or(0, |(_, t)| t);
        for id in 0..n {
            let level = self.level_of(id);
            if level > top {
                return Err(corrupt(format!("node {id} is above the top level")));
            }
            if level > 0 {
                let at = self.upper_index()[id] as usize;
                if at + level * (self.p.m + 1) > self.s.upper_len {
                    return Err(corrupt(format!(
                        "node {id}'s upper lists are out of bounds"
                    )));
                }
            }
            for l in 0..=level {
                let list = self.list(id, l);
                let cap = list.len() - 1;
                let c = list[0] as usize;
                if c > cap {
                    return Err(corrupt(format!(
                        "node {id} level {l}: {c} neighbours, at most {cap}"
                    )));
                }
                for &x in &list[1..=c] {
                    if x as usize >= n || self.level_of(x as usize) < l {
                        return Err(corrupt(format!(
                            "node {id} level {l}: neighbour {x} is not a node of that level"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The parameters the index was built with.
    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no vector is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes of the file (mapped; the kernel shares them between processes).
    pub fn memory_bytes(&self) -> usize {
        self.backing.bytes().len()
    }

    /// Searches, as [`Hnsw::search`].
    pub fn search(&self, query: &[f32], opts: &SearchOptions<'_>) -> Result<Vec<Hit>> {
        graph::search(self, query, opts, self.p.ef_search)
    }

    /// A mutable in-memory copy ([`Hnsw::load`]).
    pub fn to_hnsw(&self) -> Result<Hnsw> {
        let mut index = Hnsw::new(self.p)?;
        let stride = record_stride(self.p.dim);
        let orig = self.p.dim * self.p.originals.bytes();
        let bytes = self.backing.bytes();
        let mut upper = 0;
        {
            let ids = index.ids.get_mut().unwrap_or_else(|e| e.into_inner());
            for id in 0..self.count {
                let removed = self.levels()[id] & REMOVED != 0;
                let record = &bytes[self.s.records + id * stride..][..stride];
                if !removed && ids.insert(super::ext_of(record), id as u32).is_some() {
                    return Err(corrupt(format!(
                        "id {} is in the file twice",
                        super::ext_of(record)
                    )));
                }
            }
        }
        for id in 0..self.count {
            let node = id as u32;
            let level = self.level_of(id);
            index.store.ensure(node)?;
            let record = &bytes[self.s.records + id * stride..][..stride];
            let original = (orig > 0).then(|| &bytes[self.s.originals + id * orig..][..orig]);
            // SAFETY: `index` is not shared yet; node `node` is written once.
            unsafe { index.store.init(node, record, original) };
            upper += index.store.init_upper(node, level);
            let removed = if self.levels()[id] & REMOVED != 0 {
                DELETED
            } else {
                0
            };
            index.store.flags(node).store(
                READY | removed | (level as u32) << LEVEL_SHIFT,
                Ordering::Relaxed,
            );
            for l in 0..=level {
                let list = self.list(id, l);
                super::write_list(index.store.list(node, l), &list[1..=list[0] as usize]);
            }
        }
        index.next.store(self.count as u32, Ordering::Relaxed);
        index.upper_bytes.store(upper, Ordering::Relaxed);
        index.live.store(self.live, Ordering::Relaxed);
        index.entry.store(
            self.entry.map_or(super::EMPTY, |(e, l)| super::pack(e, l)),
            Ordering::Relaxed,
        );
        Ok(index)
    }
}

impl Graph for MappedHnsw {
    fn dim(&self) -> usize {
        self.p.dim
    }
    fn metric(&self) -> Metric {
        self.p.metric
    }
    fn entry(&self) -> Option<(u32, usize)> {
        self.entry
    }
    fn id_bound(&self) -> u32 {
        self.count as u32
    }
    #[inline(always)]
    fn with_record<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let stride = record_stride(self.p.dim);
        f(&self.backing.bytes()[self.s.records + id as usize * stride..][..stride])
    }
    #[inline(always)]
    fn neighbours(&self, id: u32, level: usize, out: &mut Vec<u32>) {
        if let Some((c, ids)) = self.list(id as usize, level).split_first() {
            out.extend_from_slice(&ids[..(*c as usize).min(ids.len())]);
        }
    }
    fn deleted(&self, id: u32) -> bool {
        self.levels()[id as usize] & REMOVED != 0
    }
    fn originals(&self) -> Originals {
        self.p.originals
    }
    fn with_original<R>(&self, id: u32, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let o = self.p.dim * self.p.originals.bytes();
        (o > 0).then(|| f(&self.backing.bytes()[self.s.originals + id as usize * o..][..o]))
    }
}
