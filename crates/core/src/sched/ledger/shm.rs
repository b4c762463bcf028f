//! [`ShmLedger`]: the ledger in a shared-memory segment, which outlives every process (the
//! scheduler's included): a scheduler killed at any instruction is replaced by another process
//! that opens the segment, takes over its owner lock and replays.
//!
//! # Layout
//!
//! The segment (kind `Ledger`, named `ledger.<name>`) holds after its header page a ledger
//! header ([`LEDGER_HEADER`] bytes: magic, version, data capacity, a nonce that identifies this
//! very segment, the owner lock) and then the data area: frames at 8-aligned offsets, each
//!
//! ```text
//! commit: u32 | len: u32 | crc: u32 | body: len bytes | zero padding to 8
//! ```
//!
//! where `len`, `crc` and `body` are the shared record frame (the CRC covers `len` and the
//! body) and `commit` is [`COMMITTED`] once the frame is whole. The bytes after the last frame
//! are zero.
//!
//! # Appending and replaying
//!
//! The owner writes `len`, `crc` and the body with plain stores, then stores `commit` with
//! `Release`; a reader loads `commit` with `Acquire` and reads the frame only when it is
//! [`COMMITTED`], so it sees every byte the writer wrote before. A process killed before its
//! commit store leaves a frame whose `commit` is 0: the log ends there (a torn append is
//! ignored) and the next owner zeroes everything from there on before it appends (a long torn
//! frame must not leave bytes where a later, shorter frame's successor will be looked for). A
//! killed process loses no store it made: the memory is the segment's, not the process's. So
//! an append that returned `Ok` is replayed, and nothing else: a `commit` word that is neither
//! 0 nor [`COMMITTED`], a committed frame whose CRC or body is wrong, or a frame that runs past
//! the data area is `ErrorKind::Corrupt`.
//!
//! # Ownership
//!
//! One scheduler appends at a time: the owner lock holds the owner's pid and the low 32 bits
//! of its start time in one word (taken with a compare-and-swap), the whole start time in
//! another, as the ring's recovery lock does. A lock whose holder is dead (gone, a zombie, or
//! its pid reused by a later process) is taken over; a live holder's gives `Busy`.
//!
//! # Compaction
//!
//! When a record does not fit, the owner writes the compacted records (the tasks not yet
//! ended and the largest id ever used, see [`compact`](super::compact)) and the new record
//! into a new segment, under a temporary name, with itself as the owner, and renames it over
//! the ledger's name: a process that opens the name sees the old segment or the new one, both
//! whole.
//!
//! The owner does not read the segment to compact it: it keeps in memory, as it appends, where
//! the frames of the tasks not yet ended are, which tasks ended, the largest id and where the
//! first end of that task is (built once by the scan at open, rebuilt at each compaction). A
//! compaction copies the surviving frames' bytes from the old mapping into the new segment as
//! they are (the same bytes a decode and re-encode would give: the encoding is canonical), in
//! their order, and checks each copied frame's length and CRC (a frame damaged since it was
//! appended gives `Corrupt` and nothing is replaced). Its cost follows the records it keeps,
//! not the size of the segment (the replaced segment, whose unmapping costs the kernel time
//! that grows with its written pages, is dropped on a short-lived thread when it is large).
//! If even that does not fit, the append gives `ErrorKind::Full` and changes nothing.
//! A process that took the lock of a segment that was meanwhile replaced (it opened the old
//! file before the rename, and the owner died after it) sees that the file under the name has
//! another nonce, and opens again.

use ahash::{AHashMap, AHashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::codec::{self, task_of, Frame, FRAME_HEADER};
use super::ends_task;
use crate::error::{Error, ErrorKind, Result};
use crate::sched::types::{Ledger, LedgerRecord, TaskId};
use crate::shm::{
    process_alive, process_start_ticks, segment_path, validate_name, Segment, SegmentKind,
    SegmentOptions, HEADER_LEN,
};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The first 8 bytes of the ledger header.
pub const LEDGER_MAGIC: [u8; 8] = *b"EMFLEDG\x01";
/// The ledger header's layout version.
pub const LEDGER_VERSION: u32 = 1;
/// Bytes of the ledger header, before the data area.
pub const LEDGER_HEADER: usize = 64;
/// The value of a frame's `commit` word once the frame is whole.
pub const COMMITTED: u32 = 0x4C44_4731;
/// Bytes of a frame before its body: `commit`, `len`, `crc`.
const SHM_FRAME_HEADER: usize = 4 + FRAME_HEADER;
/// The longest ledger name (the segment name `ledger.<name>.new-<pid>-<n>` must stay within
/// the 200 characters of a segment name).
pub const MAX_NAME_LEN: usize = 160;

/// The ledger header, at the start of the segment's body.
#[repr(C)]
struct LedgerHeader {
    magic: [u8; 8],
    version: u32,
    _pad: u32,
    /// Bytes of the data area.
    capacity: u64,
    /// Identifies this segment (a replacement has another).
    nonce: u64,
    /// The owner: pid << 32 | low 32 bits of its start time; 0 = none.
    owner: AtomicU64,
    /// The owner's whole start time.
    owner_ticks: AtomicU64,
    _reserved: [u64; 2],
}

// Under loom the atomics are loom's (larger) types; the layout is only used without it.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<LedgerHeader>() == LEDGER_HEADER);

/// How to open a [`ShmLedger`].
#[derive(Debug, Clone)]
pub struct ShmLedgerOptions {
    /// Bytes of the data area of a new segment (default 16 MiB; at least 64). An existing
    /// ledger keeps the capacity it was made with.
    pub capacity: usize,
    /// Where the segment lives, and its file mode.
    pub segment: SegmentOptions,
}

impl Default for ShmLedgerOptions {
    fn default() -> Self {
        ShmLedgerOptions {
            capacity: 16 << 20,
            segment: SegmentOptions::default(),
        }
    }
}

/// This process's owner token and whole start time.
fn my_token() -> (u64, u64) {
    let me = std::process::id();
    let ticks = process_start_ticks(me);
    ((u64::from(me) << 32) | (ticks & 0xffff_ffff), ticks)
}

/// True when the holder of `token` (whose whole start time may be `ticks`) is alive.
fn holder_alive(token: u64, ticks: u64) -> bool {
    let pid = (token >> 32) as u32;
    let lo = token & 0xffff_ffff;
    // `ticks` may not be written yet, or belong to the holder that `token` replaced: only
    // trust it when its low bits agree with the token.
    let ticks = if ticks & 0xffff_ffff == lo { ticks } else { 0 };
    if !process_alive(pid, ticks) {
        return false;
    }
    let now = process_start_ticks(pid);
    lo == 0 || now == 0 || now & 0xffff_ffff == lo
}

/// A unique suffix for this process's temporary segment names.
fn temp_suffix() -> String {
    use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering}; // std-atomic-ok: a process-local counter in a static (loom cannot build one)
    static COUNTER: StdAtomicU64 = StdAtomicU64::new(0);
    let n = COUNTER.fetch_add(1, StdOrdering::Relaxed);
    format!("new-{}-{n}", std::process::id())
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// A ledger in a shared-memory segment (see the module docs). The process that holds one owns
/// the ledger until it drops it or dies.
pub struct ShmLedger {
    seg: Segment,
    seg_name: String,
    path: PathBuf,
    opts: SegmentOptions,
    token: u64,
    /// Where the next frame goes (the end of the committed frames).
    tail: usize,
    buf: Vec<u8>,
    /// What a compaction keeps, maintained as frames are appended (boxed: it is large).
    index: Box<FrameIndex>,
}

/// Where a frame is in the data area: the offset of its commit word and the bytes of its codec
/// frame (length, CRC, body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FrameAt {
    off: usize,
    len: usize,
}

/// A frame of a task not yet ended, in its task's chain.
#[derive(Debug, Clone, Copy)]
struct Link {
    at: FrameAt,
    /// The next frame of the same task (or of the free list); `NIL` ends the chain.
    next: usize,
}

const NIL: usize = usize::MAX;

/// The owner's account of its segment's frames: exactly what [`compact`](super::compact)
/// would keep of them, without reading them. Its size follows the tasks not yet ended and the tasks ended in the
/// segment (each has a frame there), so it is bounded by the segment and shrinks at each
/// compaction.
#[derive(Debug, Default)]
struct FrameIndex {
    /// The frames of the tasks not yet ended, chained per task, and the free slots.
    links: Vec<Link>,
    /// The first free slot of `links` (`NIL`: none).
    free: usize,
    /// Each task not yet ended: the first and last slot of its chain.
    live: AHashMap<TaskId, (usize, usize)>,
    /// The tasks with an ending record in the segment.
    ended: AHashSet<TaskId>,
    /// The largest task id in the segment.
    max: Option<TaskId>,
    /// The first ending record of task `max`, when it has one.
    max_end: Option<FrameAt>,
    /// Scratch space of a compaction: the frames it keeps.
    kept: Vec<(FrameAt, TaskId, bool)>,
}

impl FrameIndex {
    fn new() -> FrameIndex {
        FrameIndex {
            free: NIL,
            ..Default::default()
        }
    }

    fn clear(&mut self) {
        self.links.clear();
        self.free = NIL;
        self.live.clear();
        self.ended.clear();
        self.max = None;
        self.max_end = None;
    }

    /// Accounts for a frame appended at `at`, of a record about `task` that ends it or not.
    fn note(&mut self, at: FrameAt, task: TaskId, ends: bool) {
        if Some(task) > self.max {
            self.max = Some(task);
            self.max_end = None;
        }
        if self.ended.contains(&task) {
            // A record of a task already ended: compaction drops it (the first end of the
            // largest id was noted when it came).
            return;
        }
        if ends {
            self.ended.insert(task);
            if Some(task) == self.max {
                self.max_end = Some(at);
            }
            if let Some((first, last)) = self.live.remove(&task) {
                // Its frames are dropped: their slots go to the free list.
                self.links[last].next = self.free;
                self.free = first;
            }
            return;
        }
        let slot = if self.free != NIL {
            let s = self.free;
            self.free = self.links[s].next;
            self.links[s] = Link { at, next: NIL };
            s
        } else {
            self.links.push(Link { at, next: NIL });
            self.links.len() - 1
        };
        match self.live.get_mut(&task) {
            Some((_, last)) => {
                self.links[*last].next = slot;
                *last = slot;
            }
            None => {
                self.live.insert(task, (slot, slot));
            }
        }
    }

    /// Fills `kept` with the frames [`compact`](super::compact) keeps, in their order in the
    /// segment.
    fn collect_kept(&mut self) {
        self.kept.clear();
        for (&task, &(first, _)) in &self.live {
            let mut s = first;
            while s != NIL {
                self.kept.push((self.links[s].at, task, false));
                s = self.links[s].next;
            }
        }
        if let (Some(at), Some(task)) = (self.max_end, self.max) {
            self.kept.push((at, task, true));
        }
        self.kept.sort_unstable_by_key(|k| k.0.off);
    }
}

impl std::fmt::Debug for ShmLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLedger")
            .field("segment", &self.seg_name)
            .field("tail", &self.tail)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A view of a mapped ledger segment's header and data area.
struct View<'a> {
    seg: &'a Segment,
    /// The ledger's path, for messages (a segment made by compaction was mapped under a
    /// temporary name).
    path: &'a Path,
}

impl<'a> View<'a> {
    fn header_ptr(&self) -> *mut LedgerHeader {
        self.seg.body().cast()
    }

    fn data(&self) -> *mut u8 {
        self.seg.body().wrapping_add(LEDGER_HEADER)
    }

    /// Bytes of the data area: the segment's, whatever the header says.
    fn capacity(&self) -> usize {
        self.seg.body_len() - LEDGER_HEADER
    }

    fn owner(&self) -> &'a AtomicU64 {
        let p = self
            .header_ptr()
            .cast::<u8>()
            .wrapping_add(std::mem::offset_of!(LedgerHeader, owner))
            .cast::<AtomicU64>();
        // SAFETY: the header lies at the start of the body, which is at least LEDGER_HEADER
        // bytes (checked when the ledger is opened) and page aligned; an atomic is valid for
        // any bit pattern and may be changed by other processes; the segment outlives 'a.
        unsafe { &*p }
    }

    fn owner_ticks(&self) -> &'a AtomicU64 {
        let p = self
            .header_ptr()
            .cast::<u8>()
            .wrapping_add(std::mem::offset_of!(LedgerHeader, owner_ticks))
            .cast::<AtomicU64>();
        // SAFETY: as for `owner`.
        unsafe { &*p }
    }

    /// The plain header fields (magic, version, capacity, nonce), copied.
    fn fields(&self) -> ([u8; 8], u32, u64, u64) {
        let base = self.header_ptr().cast::<u8>();
        macro_rules! copy {
            ($field:ident: $t:ty) => {{
                let p = base
                    .wrapping_add(std::mem::offset_of!(LedgerHeader, $field))
                    .cast::<$t>();
                // SAFETY: in bounds and aligned as for `owner`; a plain integer or byte array,
                // valid for any bit pattern, read once by a volatile copy (another process may
                // write it: the caller checks what it got).
                unsafe { p.read_volatile() }
            }};
        }
        (
            copy!(magic: [u8; 8]),
            copy!(version: u32),
            copy!(capacity: u64),
            copy!(nonce: u64),
        )
    }

    fn check(&self) -> Result<u64> {
        let (magic, version, capacity, nonce) = self.fields();
        let path = self.path.display();
        if magic != LEDGER_MAGIC {
            return Err(Error::corrupt(format!("{path}: not a ledger (bad magic)")));
        }
        if version != LEDGER_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{path}: ledger version {version}, this build reads {LEDGER_VERSION}"),
            ));
        }
        if capacity != self.capacity() as u64 {
            return Err(Error::corrupt(format!(
                "{path}: ledger header says {capacity} data bytes, the segment has {}",
                self.capacity()
            )));
        }
        Ok(nonce)
    }

    /// The commit word of the frame at `pos` (`pos + 4 <= capacity`, `pos % 8 == 0`).
    fn commit(&self, pos: usize) -> &'a AtomicU32 {
        debug_assert!(pos + 4 <= self.capacity() && pos % 8 == 0);
        // SAFETY: in bounds (above); aligned: the data area starts 64 bytes into a page-aligned
        // body and `pos` is a multiple of 8; an atomic is valid for any bit pattern.
        unsafe { &*self.data().wrapping_add(pos).cast::<AtomicU32>() }
    }

    /// Copies `len` bytes of the data area from `pos` (in bounds: checked by the caller).
    fn copy_out(&self, pos: usize, len: usize, out: &mut Vec<u8>) {
        assert!(pos + len <= self.capacity());
        out.clear();
        out.resize(len, 0);
        let src = self.data().wrapping_add(pos);
        // SAFETY: the source range is inside the data area (asserted); `out` holds `len`
        // bytes and is not shared. The bytes were made visible by the Acquire load of the
        // frame's commit word; after that, only a hostile process could change them, and the
        // copy is then validated like any untrusted bytes (CRC, decoding).
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) };
    }

    /// The committed records and the offset where the next frame goes.
    fn scan(&self) -> Result<(Vec<LedgerRecord>, usize)> {
        let mut records = Vec::new();
        let tail = self.scan_with(|_, r| records.push(r))?;
        Ok((records, tail))
    }

    /// Calls `f` with each committed frame's place and record, in order; returns the offset
    /// where the next frame goes.
    fn scan_with(&self, mut f: impl FnMut(FrameAt, LedgerRecord)) -> Result<usize> {
        self.check()?;
        let cap = self.capacity();
        let path = self.path.display();
        let mut pos = 0;
        let mut buf = Vec::new();
        while pos + 4 <= cap {
            match self.commit(pos).load(Ordering::Acquire) {
                0 => break,
                COMMITTED => {}
                other => {
                    return Err(Error::corrupt(format!(
                        "{path}: frame at {pos} has commit word {other:#x}"
                    )))
                }
            }
            if pos + SHM_FRAME_HEADER > cap {
                return Err(Error::corrupt(format!(
                    "{path}: frame at {pos} runs past the data area"
                )));
            }
            self.copy_out(pos + 4, 4, &mut buf);
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > cap - pos - SHM_FRAME_HEADER {
                return Err(Error::corrupt(format!(
                    "{path}: frame at {pos} of {len} bytes runs past the data area"
                )));
            }
            self.copy_out(pos + 4, FRAME_HEADER + len, &mut buf);
            match codec::decode_frame(&buf) {
                Ok(Frame::Record(r, n)) => f(FrameAt { off: pos, len: n }, r),
                Ok(Frame::Truncated) => unreachable!("the whole frame was copied"),
                Err(e) => {
                    return Err(Error::corrupt(format!(
                        "{path}: committed frame at {pos}: {e}"
                    )))
                }
            }
            pos += align8(SHM_FRAME_HEADER + len);
        }
        Ok(pos.min(cap))
    }
}

/// Writes a new ledger segment's header into `body` (`len` bytes), owned by `token`.
///
/// # Safety
///
/// `body` must be valid for writes of `len` bytes, 8-aligned, zero-filled and not yet
/// visible to other processes (the segment is not marked ready).
unsafe fn init_segment(body: *mut u8, len: usize, nonce: u64, token: (u64, u64)) {
    let put = |off: usize, bytes: &[u8]| {
        assert!(off + bytes.len() <= len);
        let dst = body.wrapping_add(off);
        // SAFETY: in bounds (asserted) of memory the caller guarantees writable and ours
        // alone. The atomics (owner, commit words) are written as plain bytes: nothing else
        // sees the segment before its Release store of `ready`, which publishes all of this.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    };
    use std::mem::offset_of;
    put(offset_of!(LedgerHeader, magic), &LEDGER_MAGIC);
    put(
        offset_of!(LedgerHeader, version),
        &LEDGER_VERSION.to_ne_bytes(),
    );
    put(
        offset_of!(LedgerHeader, capacity),
        &((len - LEDGER_HEADER) as u64).to_ne_bytes(),
    );
    put(offset_of!(LedgerHeader, nonce), &nonce.to_ne_bytes());
    put(offset_of!(LedgerHeader, owner), &token.0.to_ne_bytes());
    put(
        offset_of!(LedgerHeader, owner_ticks),
        &token.1.to_ne_bytes(),
    );
}

/// True when `frame` (a codec frame: length, CRC, body) is whole: its length field says its
/// length and its CRC matches.
fn frame_intact(frame: &[u8]) -> bool {
    if frame.len() < FRAME_HEADER {
        return false;
    }
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    len as usize == frame.len() - FRAME_HEADER
        && codec::frame_crc(len, &frame[FRAME_HEADER..]) == crc
}

/// Writes the commit word of the frame at `pos` of a new segment's data area `data` as plain
/// bytes (nothing else sees the segment before its `ready` store, which publishes them).
///
/// # Safety
///
/// `data` must be the data area of a segment being built (not yet visible to another
/// process), with `pos + 4` bytes inside it.
unsafe fn commit_plain(data: *mut u8, pos: usize) {
    let c = COMMITTED.to_ne_bytes();
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), data.wrapping_add(pos), 4) };
}

/// Bytes used in a replaced segment from which [`retire`] unmaps it on another thread.
const RETIRE_IN_BACKGROUND: usize = 1 << 20;

/// Drops `old`, a segment replaced by a compaction, of which `used` bytes were written.
///
/// Unmapping the written pages and freeing the unlinked file costs the kernel time that grows
/// with them (about 3 ms for a full 16 MiB ledger, most of a compaction): for large ones that
/// is done on a short-lived thread, so the owner (the dispatcher) does not wait for it. The
/// segment is already replaced under its name; nothing depends on when it is unmapped. When
/// no thread can be started it is dropped here.
fn retire(old: Segment, used: usize) {
    if used < RETIRE_IN_BACKGROUND {
        return drop(old);
    }
    // On an error the closure, and the segment with it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("emf-ledger-unmap".into())
        .spawn(move || drop(old));
}

fn new_nonce() -> u64 {
    // Unique enough to tell a segment from its replacement: the time, the pid, a counter.
    use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering}; // std-atomic-ok: a process-local counter in a static (loom cannot build one)
    static N: StdAtomicU64 = StdAtomicU64::new(0);
    crate::shm::now_ns()
        ^ (u64::from(std::process::id()) << 40)
        ^ N.fetch_add(1, StdOrdering::Relaxed).rotate_left(20)
}

/// The nonce of the ledger segment now under `path`, read with `pread` (not mapped).
fn nonce_at(path: &Path) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    let mut b = [0u8; 8];
    let off = HEADER_LEN + std::mem::offset_of!(LedgerHeader, nonce);
    f.read_exact_at(&mut b, off as u64).ok()?;
    Some(u64::from_ne_bytes(b))
}

impl ShmLedger {
    /// Opens ledger `name` (1-160 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`),
    /// creating it empty when it does not exist, and becomes its owner: a dead owner's lock is
    /// taken over, a live owner's gives `Busy`.
    pub fn open(name: &str, opts: &ShmLedgerOptions) -> Result<ShmLedger> {
        validate_name(name)?;
        if name.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "ledger name {name:?} is longer than {MAX_NAME_LEN} characters"
            )));
        }
        if opts.capacity < 64 || opts.capacity > (1 << 40) {
            return Err(Error::invalid(format!(
                "ledger capacity {} must be 64 bytes to 1 TiB",
                opts.capacity
            )));
        }
        let seg_name = format!("ledger.{name}");
        let token = my_token();
        // Each turn either opens the segment, creates it, or sees that the segment it opened
        // or tried to create lost a race to a replacement; a few turns always settle unless
        // another process keeps replacing it, which only its live owner does.
        for _ in 0..16 {
            let seg = match Segment::open(&seg_name, SegmentKind::Ledger, &opts.segment) {
                Ok(seg) => seg,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    match Self::create(&seg_name, opts, token)? {
                        Some(l) => return Ok(l),
                        None => continue,
                    }
                }
                Err(e) => return Err(e),
            };
            if seg.body_len() < LEDGER_HEADER + 64 {
                return Err(Error::corrupt(format!(
                    "{}: too small for a ledger",
                    seg.path().display()
                )));
            }
            let v = View {
                seg: &seg,
                path: seg.path(),
            };
            let nonce = v.check()?;
            let cur = v.owner().load(Ordering::Acquire);
            if cur == token.0 {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("ledger {name} is already open in this process"),
                ));
            }
            if cur != 0 && holder_alive(cur, v.owner_ticks().load(Ordering::Acquire)) {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "ledger {name} is owned by live process {}",
                        (cur >> 32) as u32
                    ),
                ));
            }
            if v.owner()
                .compare_exchange(cur, token.0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("ledger {name} was just taken by another process"),
                ));
            }
            v.owner_ticks().store(token.1, Ordering::Release);
            // The lock is ours. Is the segment still the one under the name? Its owner may
            // have replaced it (compaction) after we opened it, and died.
            if nonce_at(seg.path()) != Some(nonce) {
                v.owner().store(0, Ordering::Release);
                continue;
            }
            let mut index = Box::new(FrameIndex::new());
            let tail = v.scan_with(|at, r| index.note(at, task_of(&r), ends_task(&r)))?;
            // Zero what a torn append may have left after the last committed frame.
            // SAFETY: [tail, capacity) is inside the data area; we own the ledger, so no other
            // process writes it, and readers read only committed frames, which end at `tail`.
            unsafe { std::ptr::write_bytes(v.data().wrapping_add(tail), 0, v.capacity() - tail) };
            let l = ShmLedger {
                path: seg.path().to_owned(),
                seg,
                seg_name,
                opts: opts.segment.clone(),
                token: token.0,
                tail,
                buf: Vec::new(),
                index,
            };
            l.sweep_temp_files();
            return Ok(l);
        }
        Err(Error::new(
            ErrorKind::Busy,
            format!("ledger {name} keeps being replaced while it is opened"),
        ))
    }

    /// Creates the ledger segment (under a temporary name, then linked to its name, so that it
    /// appears whole or not at all). `None` when another process created it first.
    fn create(seg_name: &str, opts: &ShmLedgerOptions, token: (u64, u64)) -> Result<Option<Self>> {
        let len = HEADER_LEN + LEDGER_HEADER + align8(opts.capacity);
        let (seg, tmp) = Self::build(seg_name, len, &opts.segment, token, |_, _| {})?;
        let path = segment_path(&opts.segment.dir, seg_name);
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Some(ShmLedger {
                seg,
                path,
                seg_name: seg_name.to_owned(),
                opts: opts.segment.clone(),
                token: token.0,
                tail: 0,
                buf: Vec::new(),
                index: Box::new(FrameIndex::new()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::new(
                ErrorKind::Io,
                format!("cannot link {} to {}: {e}", tmp.display(), path.display()),
            )),
        }
    }

    /// Makes a ledger segment of `len` bytes, owned by `token`, under a temporary name;
    /// `fill` writes its frames (given the data area and its length, zero-filled, not yet
    /// visible to any other process). Returns it and its path.
    fn build(
        seg_name: &str,
        len: usize,
        opts: &SegmentOptions,
        token: (u64, u64),
        fill: impl FnOnce(*mut u8, usize),
    ) -> Result<(Segment, PathBuf)> {
        let tmp_name = format!("{seg_name}.{}", temp_suffix());
        let tmp = segment_path(&opts.dir, &tmp_name);
        // A file of this name can only be left by a dead process that had our pid.
        let _ = std::fs::remove_file(&tmp);
        let nonce = new_nonce();
        let seg = Segment::create(&tmp_name, SegmentKind::Ledger, len, opts, |body, blen| {
            // SAFETY: `body` is the fresh, zero-filled, page-aligned body of `blen` bytes of a
            // segment not marked ready yet.
            unsafe { init_segment(body, blen, nonce, token) };
            fill(body.wrapping_add(LEDGER_HEADER), blen - LEDGER_HEADER);
        })?;
        Ok((seg, tmp))
    }

    /// Removes temporary segments of this ledger left by dead processes.
    fn sweep_temp_files(&self) {
        let prefix = format!("{}{}.new-", crate::shm::FILE_PREFIX, self.seg_name);
        let Ok(dir) = std::fs::read_dir(&self.opts.dir) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !process_alive(p, 0)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn view(&self) -> View<'_> {
        View {
            seg: &self.seg,
            path: &self.path,
        }
    }

    /// Bytes of the data area.
    pub fn capacity(&self) -> usize {
        self.view().capacity()
    }

    /// Bytes of the data area in use.
    pub fn used(&self) -> usize {
        self.tail
    }

    /// The path of the segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the ledger as its compacted records (see [`compact`](super::compact)) plus
    /// `extra` (a codec frame of a record about `task`, ending it or not), in a new segment
    /// renamed over the old one. `Full` when they do not fit. The kept frames are copied as they are from the old
    /// mapping, found by the index (nothing is decoded).
    fn compact_with(&mut self, extra: Option<(&[u8], TaskId, bool)>) -> Result<()> {
        self.view().check()?;
        self.index.collect_kept();
        let mut need: usize = self
            .index
            .kept
            .iter()
            .map(|(at, _, _)| align8(4 + at.len))
            .sum();
        if let Some((f, _, _)) = extra {
            need += align8(4 + f.len());
        }
        let cap = self.capacity();
        if need > cap {
            return Err(Error::new(
                ErrorKind::Full,
                format!(
                    "ledger {}: the tasks not yet ended need {need} bytes of {cap}; nothing \
                     was appended",
                    self.seg_name
                ),
            ));
        }
        let len = HEADER_LEN + LEDGER_HEADER + cap;
        let token = (
            self.token,
            self.view().owner_ticks().load(Ordering::Relaxed),
        );
        let old = self.view().data();
        let kept = &self.index.kept;
        let mut damaged = None;
        let (seg, tmp) = Self::build(&self.seg_name, len, &self.opts, token, |data, dlen| {
            let mut pos = 0;
            for &(at, _, _) in kept {
                // SAFETY: `at` is a committed frame of the old data area (the index holds only
                // frames this owner appended or scanned, inside it); the destination
                // [pos, pos + 4 + len) is inside the new data area (`need` ≤ its capacity),
                // which no other process sees yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        old.wrapping_add(at.off + 4),
                        data.wrapping_add(pos + 4),
                        at.len,
                    )
                };
                // SAFETY: the bytes just written, in the new data area, ours alone.
                let frame =
                    unsafe { std::slice::from_raw_parts(data.wrapping_add(pos + 4), at.len) };
                if damaged.is_none() && !frame_intact(frame) {
                    damaged = Some(at.off);
                }
                // SAFETY: as above.
                unsafe { commit_plain(data, pos) };
                pos += align8(4 + at.len);
            }
            if let Some((f, _, _)) = extra {
                debug_assert!(pos + 4 + f.len() <= dlen);
                // SAFETY: as above; `f` is our own buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(f.as_ptr(), data.wrapping_add(pos + 4), f.len())
                };
                // SAFETY: as above.
                unsafe { commit_plain(data, pos) };
            }
        })?;
        if let Some(off) = damaged {
            drop(seg);
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::corrupt(format!(
                "{}: committed frame at {off} was damaged since it was appended; not compacted",
                self.path.display()
            )));
        }
        let path = self.path.clone();
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot rename {} to {}: {e}", tmp.display(), path.display()),
            ));
        }
        // The old segment is unlinked; dropping it detaches us.
        let old = std::mem::replace(&mut self.seg, seg);
        retire(old, self.tail);
        self.tail = need;
        // The index of the new segment: the kept frames, at their new places, then `extra`.
        let mut kept = std::mem::take(&mut self.index.kept);
        self.index.clear();
        let mut pos = 0;
        for &(at, task, ends) in &kept {
            self.index.note(
                FrameAt {
                    off: pos,
                    len: at.len,
                },
                task,
                ends,
            );
            pos += align8(4 + at.len);
        }
        if let Some((f, task, ends)) = extra {
            self.index.note(
                FrameAt {
                    off: pos,
                    len: f.len(),
                },
                task,
                ends,
            );
        }
        kept.clear();
        self.index.kept = kept;
        Ok(())
    }

    /// Compacts the ledger now (see [`compact`](super::compact)).
    pub fn compact(&mut self) -> Result<()> {
        self.check_owner()?;
        self.compact_with(None)
    }

    fn check_owner(&self) -> Result<()> {
        if self.view().owner().load(Ordering::Acquire) != self.token {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "ledger {}: this process no longer owns it (its lock was overwritten)",
                    self.seg_name
                ),
            ));
        }
        Ok(())
    }

    /// Removes ledger `name`'s segment, unless a live process owns it (`Busy`).
    pub fn remove(name: &str, opts: &SegmentOptions) -> Result<()> {
        let seg_name = format!("ledger.{name}");
        let seg = Segment::open(&seg_name, SegmentKind::Ledger, opts)?;
        if seg.body_len() >= LEDGER_HEADER {
            let v = View {
                seg: &seg,
                path: seg.path(),
            };
            let cur = v.owner().load(Ordering::Acquire);
            if cur != 0 && holder_alive(cur, v.owner_ticks().load(Ordering::Acquire)) {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("ledger {name} is owned by a live process"),
                ));
            }
        }
        seg.unlink()
    }

    /// Reads ledger `name`'s committed records from outside, without owning it and without
    /// writing anything (no owner lock, no attach-table entry, no zeroing of a torn tail): for
    /// `erlmcp-flow agents show` while a dispatcher owns the ledger.
    ///
    /// The result is the log as it was at one moment: the records of a prefix of the appends.
    /// A frame is read only once its commit word is seen (`Acquire`), which the owner stores
    /// (`Release`) after the frame's bytes, and commits go forward in order, so a scan that
    /// runs while the owner appends stops at some committed frame and never reads a frame in
    /// the making. A compaction never writes the segment it replaces: it builds a whole new
    /// one and renames it over the name, so a scan of the old mapping still reads a prefix of
    /// the old log. After a scan the nonce of the file under the name is compared with the
    /// scanned one; when a compaction replaced it meanwhile, the new segment is scanned again
    /// (up to a few turns; then the last whole scan is returned: equivalent for replay, see
    /// [`compact`](super::compact), just older). A compacted ledger no longer holds the ended
    /// tasks' records.
    ///
    /// `NotFound` when the ledger does not exist; `Corrupt` when the file under the name is
    /// not a ledger or a committed frame is damaged; `Unsupported` for another layout version.
    pub fn inspect(name: &str, opts: &SegmentOptions) -> Result<Vec<LedgerRecord>> {
        validate_name(name)?;
        if name.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "ledger name {name:?} is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let seg_name = format!("ledger.{name}");
        let mut last = None;
        for _ in 0..4 {
            let seg = Segment::inspect(&seg_name, opts)?;
            let kind = seg.header().kind;
            if kind != SegmentKind::Ledger as u32 {
                return Err(Error::corrupt(format!(
                    "{}: a segment of kind {kind}, not a ledger",
                    seg.path().display()
                )));
            }
            if seg.body_len() < LEDGER_HEADER + 64 {
                return Err(Error::corrupt(format!(
                    "{}: too small for a ledger",
                    seg.path().display()
                )));
            }
            let v = View {
                seg: &seg,
                path: seg.path(),
            };
            let nonce = v.check()?;
            let (records, _) = v.scan()?;
            if nonce_at(seg.path()) == Some(nonce) {
                return Ok(records);
            }
            // Replaced by a compaction (or removed) while we read: read the new one.
            last = Some(records);
        }
        Ok(last.unwrap_or_default())
    }

    /// Test support: writes the first `cut` bytes of `r`'s frame after the last committed
    /// one without committing it, like an owner killed in the middle of an append.
    #[cfg(test)]
    pub(crate) fn append_torn(&mut self, r: &LedgerRecord, cut: usize) {
        let mut f = Vec::new();
        codec::encode_frame(r, &mut f).unwrap();
        let cut = cut.min(f.len());
        assert!(self.tail + 4 + f.len() <= self.capacity());
        // SAFETY: in bounds (asserted); test-only, we own the ledger.
        unsafe {
            std::ptr::copy_nonoverlapping(
                f.as_ptr(),
                self.view().data().wrapping_add(self.tail + 4),
                cut,
            )
        };
    }

    /// Test support: makes the owner lock look held by a dead process (a pid that cannot
    /// exist), as after the owner's `kill -9`.
    #[cfg(test)]
    pub(crate) fn forge_dead_owner(&self) {
        let dead = u64::from(i32::MAX as u32 - 11) << 32;
        self.view().owner().store(dead, Ordering::Release);
    }

    /// Test support: a pointer to byte `off` of the ledger header and data area (the data
    /// area starts at `LEDGER_HEADER`).
    #[cfg(test)]
    pub(crate) fn byte_ptr(&self, off: usize) -> *mut u8 {
        assert!(off < LEDGER_HEADER + self.capacity());
        self.seg.body().wrapping_add(off)
    }
}

impl Ledger for ShmLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        self.check_owner()?;
        self.buf.clear();
        codec::encode_frame(record, &mut self.buf)?;
        let need = align8(4 + self.buf.len());
        let cap = self.capacity();
        if need > cap {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a ledger record of {} bytes does not fit ledger {} ({cap} bytes)",
                    self.buf.len(),
                    self.seg_name
                ),
            ));
        }
        let task = task_of(record);
        let ends = ends_task(record);
        if self.tail + need > cap {
            let frame = std::mem::take(&mut self.buf);
            let r = self.compact_with(Some((&frame, task, ends)));
            self.buf = frame;
            return r;
        }
        let v = self.view();
        // SAFETY: [tail + 4, tail + 4 + len) is inside the data area (checked above); we own
        // the ledger, so nobody else writes there, and readers do not read it before the
        // commit word below is set.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.buf.as_ptr(),
                v.data().wrapping_add(self.tail + 4),
                self.buf.len(),
            )
        };
        // Release: a reader that sees the commit word sees the frame.
        v.commit(self.tail).store(COMMITTED, Ordering::Release);
        let at = FrameAt {
            off: self.tail,
            len: self.buf.len(),
        };
        self.tail += need;
        self.index.note(at, task, ends);
        Ok(())
    }

    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        self.view().scan().map(|(r, _)| r)
    }
}

impl Drop for ShmLedger {
    fn drop(&mut self) {
        // Release the lock if it is still ours (the segment's drop then detaches).
        let _ = self.view().owner().compare_exchange(
            self.token,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}
