//! Frame rings on shared memory: variable-size frames written in place by one or many
//! producers and read in place by a consumer and any number of fan-out subscribers, across
//! processes.
//!
//! ```
//! use erlmcp_flow::ring::{Ring, RingOptions};
//! # let dir = std::env::temp_dir().join(format!("emf-doc-ring-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let opts = RingOptions { capacity: 1 << 16, ..RingOptions::in_dir(&dir) };
//! let ring = Ring::create("doc-ring", &opts).unwrap();
//! let mut producer = ring.producer().unwrap();
//! let mut consumer = ring.consumer().unwrap();
//!
//! let mut claim = producer.try_claim(5).unwrap();    // space in the ring, ours alone
//! claim.as_mut_slice().copy_from_slice(b"hello");    // written in place
//! claim.commit();                                    // now visible to consumers
//!
//! let mut got = Vec::new();
//! consumer.poll(16, |frame| got.push(frame.to_vec())).unwrap();
//! assert_eq!(got, [b"hello".to_vec()]);
//! # drop((producer, consumer)); ring.unlink().unwrap();
//! ```
//!
//! # How it works
//!
//! The segment holds a claim position (`tail`), per-producer and per-subscriber slots, and the
//! data region; see [`layout`]. A producer claims a range by advancing `tail` (a plain store
//! for a single producer, a CAS for several), writes the frame, then writes the frame's 8-byte
//! header with Release ordering: the header is the commit flag, so a consumer polls one word.
//! Consumers keep their own positions in their slots; a claim never passes the slowest active
//! consumer, so a full ring answers [`ErrorKind::Full`](crate::ErrorKind::Full) and the caller
//! keeps its message.
//!
//! # Invariants
//!
//! * No pointer is stored in shared memory: positions, offsets and lengths only. Every value
//!   read from the segment is bounds-checked before use (capacity, offsets, frame lengths).
//! * A frame is delivered only when its header carries this lap's tag and the committed bit;
//!   a half-written frame is never delivered.
//! * Before claiming, a producer records the range it is about to claim in its own slot. If it
//!   dies between claim and commit, a consumer that has waited `stall_timeout` (default
//!   100 ms) checks the producer's pid (and process start time); when it is dead, the
//!   uncommitted part of the range is overwritten with padding frames and counted as
//!   `unblocked`. A slow but live producer is never skipped.
//! * The primary consumer's position survives the consumer: a restarted consumer resumes
//!   where the last one stopped. Subscribers that die are reaped by producers and stop
//!   holding the ring back.
//!
//! Trust: participants are cooperating processes that may crash at any instruction. A
//! process that deliberately writes garbage into the segment can stall the ring or make
//! consumers see corrupt frames, but cannot make another process read out of bounds.
//!
//! # Delivery guarantees
//!
//! What a crash (kill -9 of any one process) does to frames, path by path. "Committed" means
//! the frame's header is written: from then on the frame is in the segment, whatever happens
//! to its producer, until every consumer has released it. Nothing survives a reboot or the
//! removal of the segment (rings live in memory).
//!
//! | Path | Guarantee | What a crash does |
//! |---|---|---|
//! | [`Producer::send`], [`Claim::commit`], [`Producer::send_batch`] (the `n` it returned) | once `Ok` returned, committed: it reaches every consumer attached before it (the rows below say how often a crashing consumer sees it) | producer dies inside the call: the frame is either committed whole or never delivered (its claim becomes padding); [`Producer::committed`] in a producer restarted with [`Ring::producer_in_slot`] says which |
//! | `send` answering `Full` / `Timeout` / an error | nothing was written; the caller keeps the frame | — |
//! | [`Consumer::poll`] (callback), [`AckMode::Auto`] | at least once while the callback runs; released when the call returns | consumer dies during the callback: that batch is delivered again to the next consumer; after the call returned: released, not redelivered |
//! | [`Consumer::recv_into`], [`Consumer::recv_batch_into`], [`AckMode::Auto`] | at most once: released before they return | consumer dies after the call and before it used the bytes: those frames are lost to it |
//! | any receive in [`AckMode::Manual`], then [`Consumer::ack`] | at least once: nothing is released before `ack` | consumer dies before `ack`: every unacknowledged frame is delivered again, in order, to the next consumer of the slot (dedupe by your own sequence numbers if effects must be once) |
//! | fan-out subscribers ([`Ring::subscribe`]) | as above for each subscriber, from the moment it attached | a dead subscriber's slot is reaped and its position dropped: a new subscriber starts at the tail |
//!
//! A frame whose bytes change inside the ring (a stray write, a bit flip) is delivered as it
//! is, unless the ring was created with [`RingOptions::checksum`]: then it is skipped and
//! reported as `Corrupt`. A damaged frame header is reported as `Corrupt` once nothing can
//! commit it any more, never waited on forever.

pub mod futex;
pub mod layout;
mod recovery;
pub mod seq;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layout::{
    data_off, decode_header, frame_size, header, subscribers_off, ProducerSlot, RingConfig,
    RingShared, SubscriberSlot, CHECKSUM_LEN, FLAG_CHECKSUM, FLAG_MPSC, FRAME_HEADER, MAX_PAYLOAD,
    PRODUCERS_OFF, RING_VERSION, SHARED_OFF, SLOT_ACTIVE, SLOT_CLAIMING, SLOT_FREE, SLOT_IDLE,
    SLOT_OWNED,
};
use recovery::{committed_in, Stall};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::{self, process_alive, process_start_ticks, Segment, SegmentKind, SegmentOptions};
use crate::sync::{compiler_fence, fence, AtomicU64, Ordering};

/// How to create a ring.
#[derive(Debug, Clone)]
pub struct RingOptions {
    /// Data region size in bytes: a power of two from 4 KiB to 1 GiB.
    pub capacity: usize,
    /// Several producers (claims by CAS) instead of one.
    pub multi_producer: bool,
    /// Producer slots (forced to 1 for a single-producer ring).
    pub max_producers: usize,
    /// Subscriber slots, the primary consumer's included.
    pub max_subscribers: usize,
    /// How long a claim may stay uncommitted before the producer's liveness is checked.
    pub stall_timeout: Duration,
    /// Every data frame carries a CRC32C of its payload (4 bytes after it), written at
    /// commit and checked by consumers before delivery: a frame whose bytes changed in the
    /// ring is reported as `Corrupt` instead of delivered. Costs a checksum per frame on
    /// both sides (`erlmcp-flow bench --suite ring`, `spsc_crc_64b_throughput`).
    pub checksum: bool,
    /// Where and with which mode the segment file is created.
    pub segment: SegmentOptions,
}

impl Default for RingOptions {
    fn default() -> Self {
        RingOptions {
            capacity: 1 << 20,
            multi_producer: false,
            max_producers: 16,
            max_subscribers: 8,
            stall_timeout: Duration::from_millis(100),
            checksum: false,
            segment: SegmentOptions::default(),
        }
    }
}

impl RingOptions {
    /// Default options with segments in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        RingOptions {
            segment: SegmentOptions {
                dir: dir.to_owned(),
                ..SegmentOptions::default()
            },
            ..RingOptions::default()
        }
    }
}

/// How a waiting consumer or producer passes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Busy-poll (lowest latency, burns a core).
    Spin,
    /// Spin `spins` times, then yield the thread between polls.
    SpinThenYield {
        /// Spins before yielding.
        spins: u32,
    },
    /// Spin, then sleep on a futex in shared memory until woken by the other side.
    SpinThenPark {
        /// Spins before parking.
        spins: u32,
    },
}

impl WaitStrategy {
    /// One step of waiting: spins or yields, and returns true when the caller should park
    /// now instead (`SpinThenPark` after its spins).
    fn pause(self, spins: u32) -> bool {
        match self {
            WaitStrategy::Spin => std::hint::spin_loop(),
            WaitStrategy::SpinThenYield { spins: n } => {
                if spins < n {
                    std::hint::spin_loop()
                } else {
                    std::thread::yield_now()
                }
            }
            WaitStrategy::SpinThenPark { spins: n } => {
                if spins >= n {
                    return true;
                }
                std::hint::spin_loop()
            }
        }
        false
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenPark { spins: 1000 }
    }
}

#[derive(Debug)]
struct Inner {
    /// `mem.body()`, computed once: every hot path starts from it.
    body: *mut u8,
    mem: Memory,
    capacity: u64,
    mpsc: bool,
    max_producers: usize,
    max_subscribers: usize,
    stall_timeout: Duration,
    data_offset: usize,
    /// Bytes after each data frame's payload: [`CHECKSUM_LEN`] with checksums, else 0.
    extra: usize,
}

// SAFETY: `body` points into `mem`, which `Inner` owns and keeps mapped (or allocated) for
// its whole life; everything reached through it in shared memory is atomics or bytes whose
// access is ordered by the ring protocol, so sharing the pointer across threads is what
// sharing `mem` already was (`Memory` is Send + Sync).
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

/// Validated creation parameters.
#[derive(Debug, Clone, Copy)]
struct Params {
    capacity: usize,
    max_producers: usize,
    max_subscribers: usize,
    data_offset: usize,
    stall_ns: u64,
    mpsc: bool,
    checksum: bool,
}

impl Params {
    fn of(opts: &RingOptions) -> Result<Params> {
        let cap = opts.capacity;
        // The C ABI's rule: beyond a maximum is TooLarge, otherwise malformed is invalid.
        if cap > 1 << 30 {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("ring capacity {cap} is larger than the maximum of 1 GiB"),
            ));
        }
        if !cap.is_power_of_two() || cap < 4096 {
            return Err(Error::invalid(format!(
                "ring capacity {cap} must be a power of two from 4096 to 1 GiB"
            )));
        }
        let max_p = if opts.multi_producer {
            opts.max_producers
        } else {
            1
        };
        let max_s = opts.max_subscribers;
        if max_p > 1024 || max_s > 1024 {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "max_producers and max_subscribers must be from 1 to 1024",
            ));
        }
        if max_p == 0 || max_s == 0 {
            return Err(Error::invalid(
                "max_producers and max_subscribers must be from 1 to 1024",
            ));
        }
        Ok(Params {
            capacity: cap,
            max_producers: max_p,
            max_subscribers: max_s,
            data_offset: data_off(max_p, max_s),
            stall_ns: opts.stall_timeout.as_nanos().min(u64::MAX as u128) as u64,
            mpsc: opts.multi_producer,
            checksum: opts.checksum,
        })
    }

    /// Writes the configuration and marks the primary consumer's slot active.
    ///
    /// # Safety
    ///
    /// `body` points to `data_offset + capacity` zeroed, page-aligned bytes that nobody else
    /// uses yet.
    unsafe fn init(&self, body: *mut u8) {
        // SAFETY: RingConfig fits in the body's first line (caller's contract).
        unsafe {
            body.cast::<RingConfig>().write(RingConfig {
                version: RING_VERSION,
                flags: if self.mpsc { FLAG_MPSC } else { 0 }
                    | if self.checksum { FLAG_CHECKSUM } else { 0 },
                capacity: self.capacity as u64,
                max_producers: self.max_producers as u32,
                max_subscribers: self.max_subscribers as u32,
                stall_timeout_ns: self.stall_ns,
                data_offset: self.data_offset as u64,
            });
        }
        // The primary consumer's slot is always active, so that producers never run over
        // messages nobody has read yet, attached consumer or not.
        let s0 = body
            .wrapping_add(subscribers_off(self.max_producers))
            .cast::<SubscriberSlot>();
        // SAFETY: subscriber slot 0 lies inside the body (data_offset ≥ its end) and is
        // zeroed, a valid SubscriberSlot.
        unsafe { (*s0).state.store(SLOT_ACTIVE, Ordering::Relaxed) };
    }
}

/// Where a ring's body lives.
#[derive(Debug)]
enum Memory {
    /// A shared-memory segment (any process can attach).
    Mapped(Segment),
    /// This process's heap ([`Ring::anonymous`]).
    Heap(HeapBody),
}

impl Memory {
    fn body(&self) -> *mut u8 {
        match self {
            Memory::Mapped(s) => s.body(),
            Memory::Heap(h) => h.ptr,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Memory::Mapped(s) => s.body_len(),
            Memory::Heap(h) => h.len,
        }
    }

    fn name(&self) -> &str {
        match self {
            Memory::Mapped(s) => s.name(),
            Memory::Heap(h) => &h.name,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        match self {
            Memory::Mapped(s) => s.path().to_owned(),
            Memory::Heap(h) => std::path::PathBuf::from(format!("(anonymous ring {})", h.name)),
        }
    }

    fn unlink(&self) -> Result<()> {
        match self {
            Memory::Mapped(s) => s.unlink(),
            Memory::Heap(_) => Ok(()),
        }
    }
}

/// A zeroed, page-aligned heap allocation holding a ring body.
#[derive(Debug)]
struct HeapBody {
    ptr: *mut u8,
    len: usize,
    name: String,
}

// SAFETY: the allocation is plain memory owned by this value; shared mutation goes through
// atomics and the ring's claim protocol, exactly as for a mapped segment.
unsafe impl Send for HeapBody {}
// SAFETY: as above.
unsafe impl Sync for HeapBody {}

impl HeapBody {
    fn layout(len: usize) -> Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len, 4096)
            .map_err(|_| Error::invalid("ring too large for this address space"))
    }

    fn zeroed(name: &str, len: usize) -> Result<HeapBody> {
        let layout = HeapBody::layout(len)?;
        // SAFETY: `len` > 0 (it includes a 4 KiB data region).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::new(ErrorKind::TooLarge, "cannot allocate the ring"));
        }
        Ok(HeapBody {
            ptr,
            len,
            name: name.to_owned(),
        })
    }
}

impl Drop for HeapBody {
    fn drop(&mut self) {
        if let Ok(layout) = HeapBody::layout(self.len) {
            // SAFETY: allocated in `zeroed` with this same layout and not freed before.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

/// A mapped ring. Cheap to clone; producers and consumers hold a clone.
#[derive(Clone, Debug)]
pub struct Ring {
    inner: Arc<Inner>,
}

impl Ring {
    /// Creates ring `name` (replacing a stale segment of the same name).
    pub fn create(name: &str, opts: &RingOptions) -> Result<Ring> {
        let p = Params::of(opts)?;
        let len = shm::HEADER_LEN + p.data_offset + p.capacity;
        let seg = Segment::create(name, SegmentKind::Ring, len, &opts.segment, |body, _| {
            // SAFETY: `body` is the fresh, zeroed, page-aligned body of `len - HEADER_LEN`
            // bytes, not yet visible to anyone.
            unsafe { p.init(body) }
        })?;
        Ring::from_memory(Memory::Mapped(seg))
    }

    /// Creates a ring in this process's heap, for threads of one process: the same
    /// algorithm without a file (nothing to open from another process, nothing to gc).
    /// `opts.segment` is ignored.
    pub fn anonymous(name: &str, opts: &RingOptions) -> Result<Ring> {
        let p = Params::of(opts)?;
        let heap = HeapBody::zeroed(name, p.data_offset + p.capacity)?;
        // SAFETY: the fresh, zeroed, page-aligned allocation is not shared with anyone yet.
        unsafe { p.init(heap.ptr) };
        Ring::from_memory(Memory::Heap(heap))
    }

    /// Opens an existing ring.
    pub fn open(name: &str, opts: &SegmentOptions) -> Result<Ring> {
        Ring::from_memory(Memory::Mapped(Segment::open(
            name,
            SegmentKind::Ring,
            opts,
        )?))
    }

    /// Opens a ring for reading its counters without attaching as a participant.
    pub fn inspect(name: &str, opts: &SegmentOptions) -> Result<Ring> {
        Ring::from_memory(Memory::Mapped(Segment::inspect(name, opts)?))
    }

    fn from_memory(seg: Memory) -> Result<Ring> {
        if seg.body_len() < data_off(1, 1) {
            return Err(Error::corrupt("ring segment too small for its layout"));
        }
        // SAFETY: the body is page aligned and longer than one line (checked above).
        let cfg = unsafe { &*seg.body().cast::<RingConfig>() };
        // Everything below comes from the file: check it before using any of it.
        let bad = |what: String| Err(Error::corrupt(format!("{}: {what}", seg.path().display())));
        if cfg.version != RING_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: ring layout version {}, this build reads {RING_VERSION}",
                    seg.path().display(),
                    cfg.version
                ),
            ));
        }
        if cfg.flags & !(FLAG_MPSC | FLAG_CHECKSUM) != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: ring flags {:#x} include bits this build does not know",
                    seg.path().display(),
                    cfg.flags
                ),
            ));
        }
        let cap = cfg.capacity;
        let (max_p, max_s) = (cfg.max_producers as usize, cfg.max_subscribers as usize);
        if !cap.is_power_of_two() || !(4096..=1 << 30).contains(&cap) {
            return bad(format!("invalid capacity {cap}"));
        }
        if !(1..=1024).contains(&max_p) || !(1..=1024).contains(&max_s) {
            return bad("invalid slot counts".into());
        }
        let data_offset = data_off(max_p, max_s);
        if cfg.data_offset != data_offset as u64
            || data_offset as u64 + cap != seg.body_len() as u64
        {
            return bad("layout does not match the segment size".into());
        }
        Ok(Ring {
            inner: Arc::new(Inner {
                capacity: cap,
                mpsc: cfg.flags & FLAG_MPSC != 0,
                max_producers: max_p,
                max_subscribers: max_s,
                stall_timeout: Duration::from_nanos(cfg.stall_timeout_ns),
                data_offset,
                extra: if cfg.flags & FLAG_CHECKSUM != 0 {
                    CHECKSUM_LEN
                } else {
                    0
                },
                body: seg.body(),
                mem: seg,
            }),
        })
    }

    fn shared(&self) -> &RingShared {
        // SAFETY: offsets validated in `from_segment`; RingShared is atomics only.
        unsafe {
            &*self
                .inner
                .body
                .wrapping_add(SHARED_OFF)
                .cast::<RingShared>()
        }
    }

    fn producer_slot(&self, i: usize) -> &ProducerSlot {
        assert!(i < self.inner.max_producers);
        // SAFETY: i < max_producers, so the slot lies before the data region (validated
        // layout); ProducerSlot is atomics only, valid for any bit pattern.
        unsafe {
            &*self
                .inner
                .body
                .wrapping_add(PRODUCERS_OFF + i * layout::LINE)
                .cast::<ProducerSlot>()
        }
    }

    fn subscriber_slot(&self, i: usize) -> &SubscriberSlot {
        assert!(i < self.inner.max_subscribers);
        // SAFETY: as for producer slots.
        unsafe {
            &*self
                .inner
                .body
                .wrapping_add(subscribers_off(self.inner.max_producers) + i * layout::LINE)
                .cast::<SubscriberSlot>()
        }
    }

    fn data(&self) -> *mut u8 {
        // In bounds: data_offset + capacity == body length (validated in `from_segment`).
        self.inner.body.wrapping_add(self.inner.data_offset)
    }

    /// The header word of the frame at position `pos` (8-aligned).
    fn header_at(&self, pos: u64) -> &AtomicU64 {
        // Positions are 8-aligned by construction, but some come from shared memory that a
        // crashed or hostile process may have damaged: force the alignment, never trust it.
        let idx = (pos & (self.inner.capacity - 1) & !7) as usize;
        // SAFETY: idx < capacity and 8-aligned, the data region is page aligned, so the u64
        // lies inside it and is aligned; AtomicU64 has the layout of u64.
        unsafe { &*self.data().wrapping_add(idx).cast::<AtomicU64>() }
    }

    /// Bytes a frame with a `len`-byte payload occupies (data frames carry the checksum
    /// after the payload on a checksummed ring; padding frames never do).
    #[inline]
    fn frame_bytes(&self, len: usize, padding: bool) -> usize {
        if padding {
            frame_size(len)
        } else {
            frame_size(len + self.inner.extra)
        }
    }

    /// Writes padding frames over `[pos, end)` (at most one capacity), splitting at the end
    /// of the data region. The piece at `pos` is written last, so that a recoverer that dies
    /// half way leaves `pos` uncommitted and the range is padded again as a whole.
    fn pad_range(&self, pos: u64, end: u64) {
        let cap = self.inner.capacity;
        if pos >= end {
            return;
        }
        let first = (end - pos).min(cap - (pos & (cap - 1)));
        let pieces = [(pos + first, end - pos - first), (pos, first)];
        if pos % 8 != 0 || end - pos > cap || pieces.iter().any(|&(_, n)| n % 8 != 0) {
            // Only a damaged range can get here; a frame cannot describe it.
            self.shared().corrupt_frames.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for (at, n) in pieces {
            if n == 0 {
                continue;
            }
            // n ≥ 8: a non-empty piece between 8-aligned positions.
            self.header_at(at).store(
                header(at, n as usize - FRAME_HEADER, true),
                Ordering::Release,
            );
        }
    }

    /// The ring's name.
    pub fn name(&self) -> &str {
        self.inner.mem.name()
    }

    /// Data region size.
    pub fn capacity(&self) -> usize {
        self.inner.capacity as usize
    }

    /// Largest payload one frame can carry (a quarter of the capacity).
    pub fn max_payload(&self) -> usize {
        (self.inner.capacity as usize / 4 - FRAME_HEADER - self.inner.extra).min(MAX_PAYLOAD)
    }

    /// True when every data frame carries a CRC32C ([`RingOptions::checksum`]).
    pub fn has_checksums(&self) -> bool {
        self.inner.extra != 0
    }

    /// True for a multi-producer ring.
    pub fn is_multi_producer(&self) -> bool {
        self.inner.mpsc
    }

    /// Removes the ring's file. Participants that mapped it keep working (the usual
    /// "unlink once everyone has attached" idiom); see [`Ring::close`] to stop producers.
    pub fn unlink(&self) -> Result<()> {
        self.inner.mem.unlink()
    }

    /// Closes the ring to producers: from now on every claim answers `Closed` (instead of
    /// writing frames nobody will read, e.g. after the owner of an inbox went away);
    /// consumers can still drain what was committed.
    pub fn close(&self) {
        self.shared().closed.store(1, Ordering::Release);
    }

    /// True once the ring was closed with [`Ring::close`].
    pub fn is_closed(&self) -> bool {
        self.shared().closed.load(Ordering::Acquire) != 0
    }

    /// Counts one frame that a layer above the ring found invalid (a payload that fails its
    /// format's validation) in [`RingStats::corrupt_frames`].
    pub(crate) fn count_corrupt_frame(&self) {
        self.shared().corrupt_frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Attaches a producer. A single-producer ring refuses a second live producer (`Busy`).
    /// A slot left by a dead producer is taken over after its unfinished claim is settled
    /// (padded when provably its own).
    pub fn producer(&self) -> Result<Producer> {
        for i in 0..self.inner.max_producers {
            if let Some(p) = self.attach_producer(i)? {
                return Ok(p);
            }
        }
        Err(Error::new(
            ErrorKind::Busy,
            format!(
                "ring {}: all {} producer slots are held by live producers",
                self.name(),
                self.inner.max_producers
            ),
        ))
    }

    /// Attaches a producer in slot `slot` (0 on a single-producer ring; below
    /// `max_producers` on a multi-producer ring), taking it over when its holder died. A
    /// producer that restarts in the slot its predecessor held learns from
    /// [`Producer::committed`] how many frames the slot has committed, the predecessor's
    /// included, so one that numbers its frames can resend exactly those that are missing.
    /// `Busy` while a live producer holds the slot.
    pub fn producer_in_slot(&self, slot: usize) -> Result<Producer> {
        if slot >= self.inner.max_producers {
            return Err(Error::invalid(format!(
                "ring {}: producer slot {slot} does not exist (the ring has {})",
                self.name(),
                self.inner.max_producers
            )));
        }
        self.attach_producer(slot)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Busy,
                format!(
                    "ring {}: producer slot {slot} is held by a live producer",
                    self.name()
                ),
            )
        })
    }

    /// Attaches a producer in slot `i` if it is free or its holder is dead.
    fn attach_producer(&self, i: usize) -> Result<Option<Producer>> {
        let me = std::process::id();
        let s = self.producer_slot(i);
        let pid = s.pid.load(Ordering::Acquire);
        let takeable =
            pid == 0 || (pid != me && !process_alive(pid, s.start_ticks.load(Ordering::Acquire)));
        if !takeable {
            return Ok(None);
        }
        // A dead holder's claim is settled under the recovery lock, which also keeps two
        // processes that take over at once from settling the same record twice.
        let guard = if pid != 0 {
            let Some(g) = self.lock_recovery(Duration::from_millis(100)) else {
                return Ok(None);
            };
            if !self.settle_dead_slot(i) {
                return Ok(None);
            }
            Some(g)
        } else {
            None
        };
        if s.pid
            .compare_exchange(pid, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(None);
        }
        drop(guard);
        if pid != 0 {
            self.shared().dead_reaped.fetch_add(1, Ordering::Relaxed);
        }
        s.start_ticks
            .store(process_start_ticks(me), Ordering::Release);
        let lazy_wake = futex::register_for_barriers();
        s.lazy_wake.store(u32::from(lazy_wake), Ordering::Release);
        s.state.store(SLOT_IDLE, Ordering::Release);
        Ok(Some(Producer {
            ring: self.clone(),
            slot: i,
            slot_ptr: s,
            cached_head: 0,
            sent: committed_in(s),
            bytes: s.bytes.load(Ordering::Relaxed),
            lazy_wake,
            last_reap: None,
            counters: true,
        }))
    }

    /// Attaches the primary consumer, which resumes at the position the previous primary
    /// consumer reached. `Busy` while another live process holds it.
    pub fn consumer(&self) -> Result<Consumer> {
        let s = self.subscriber_slot(0);
        let me = std::process::id();
        let pid = s.pid.load(Ordering::Acquire);
        if pid != 0 && process_alive(pid, s.start_ticks.load(Ordering::Acquire)) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "ring {}: the consumer is held by live pid {pid}",
                    self.name()
                ),
            ));
        }
        if s.pid
            .compare_exchange(pid, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "ring {}: another process attached the consumer first",
                    self.name()
                ),
            ));
        }
        s.start_ticks
            .store(process_start_ticks(me), Ordering::Release);
        self.make_consumer(0)
    }

    /// Attaches a fan-out subscriber that sees every frame committed from now on, at its own
    /// pace (it holds producers back like the primary consumer while attached).
    pub fn subscribe(&self) -> Result<Consumer> {
        let me = std::process::id();
        for i in 1..self.inner.max_subscribers {
            let s = self.subscriber_slot(i);
            let pid = s.pid.load(Ordering::Acquire);
            let state = s.state.load(Ordering::Acquire);
            let free = state == SLOT_FREE
                || (pid != 0 && !process_alive(pid, s.start_ticks.load(Ordering::Acquire)));
            if !free {
                continue;
            }
            if s.pid
                .compare_exchange(pid, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            s.start_ticks
                .store(process_start_ticks(me), Ordering::Release);
            // Start at the current tail; publish the position before becoming active, so a
            // producer that sees the slot active also sees a position it must respect.
            let tail = self.shared().tail.load(Ordering::Acquire);
            s.position.store(tail, Ordering::Release);
            s.state.store(SLOT_ACTIVE, Ordering::Release);
            fence(Ordering::SeqCst);
            return self.make_consumer(i);
        }
        Err(Error::new(
            ErrorKind::Busy,
            format!(
                "ring {}: all {} subscriber slots are taken",
                self.name(),
                self.inner.max_subscribers - 1
            ),
        ))
    }

    fn make_consumer(&self, slot: usize) -> Result<Consumer> {
        let s = self.subscriber_slot(slot);
        let head = s.position.load(Ordering::Acquire);
        if head % 8 != 0 {
            s.pid.store(0, Ordering::Release);
            return Err(Error::corrupt(format!(
                "ring {}: consumer position {head} is damaged (not 8-aligned)",
                self.name()
            )));
        }
        let (received, bytes) = (
            s.received.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
        );
        Ok(Consumer {
            ring: self.clone(),
            slot,
            head,
            received,
            bytes,
            acked: (head, received, bytes),
            ack_mode: AckMode::Auto,
            stall: None,
            reported: None,
            misses: 0,
            lazy_wake: futex::register_for_barriers(),
        })
    }

    /// The smallest position any active consumer still needs; reaps dead subscribers.
    /// With `reap`, subscribers whose process died are detached first (a liveness check per
    /// subscriber: `kill(pid, 0)` and a `/proc` read, so producers rate-limit it).
    fn min_head(&self, reap: bool) -> u64 {
        let mut min = u64::MAX;
        for i in 0..self.inner.max_subscribers {
            let s = self.subscriber_slot(i);
            if s.state.load(Ordering::Acquire) != SLOT_ACTIVE {
                continue;
            }
            if reap && i > 0 {
                let pid = s.pid.load(Ordering::Acquire);
                if pid != 0 && !process_alive(pid, s.start_ticks.load(Ordering::Acquire)) {
                    if s.state
                        .compare_exchange(
                            SLOT_ACTIVE,
                            SLOT_FREE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        self.shared().dead_reaped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            }
            min = min.min(s.position.load(Ordering::Acquire));
        }
        min
    }

    /// Wakes parked consumers after a commit.
    ///
    /// The store of the frame header and the load of `data_waiters` here pair with the
    /// consumer's increment of `data_waiters` and re-check of the header before it sleeps
    /// (Dekker). Either side needs a store-load barrier. A producer registered for
    /// `membarrier` (`lazy`) skips it: the parking consumer forces it on every registered
    /// process with `futex::barrier_all` instead, once per sleep rather than once per frame.
    #[inline]
    fn wake_data_after(&self, lazy: bool) {
        let sh = self.shared();
        if lazy {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if sh.data_waiters.load(Ordering::Relaxed) != 0 {
            sh.data_futex.fetch_add(1, Ordering::Release);
            futex::wake_all(&sh.data_futex);
        }
    }

    /// Wakes producers parked for space after a consumer published its position. The same
    /// asymmetric Dekker pattern as [`Ring::wake_data_after`]: a consumer registered for
    /// `membarrier` (`lazy`) skips the store-load fence, and a producer about to sleep forces
    /// it with `futex::barrier_all` (see [`Producer::send_timeout`]).
    #[inline]
    fn wake_space(&self, lazy: bool) {
        let sh = self.shared();
        if lazy {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if sh.space_waiters.load(Ordering::Relaxed) != 0 {
            sh.space_futex.fetch_add(1, Ordering::Release);
            futex::wake_all(&sh.space_futex);
        }
    }

    /// True when the primary consumer is parked waiting for data, or has consumed
    /// everything committed so far (batching should not hold messages back then).
    pub fn consumer_idle(&self) -> bool {
        let sh = self.shared();
        if sh.data_waiters.load(Ordering::Relaxed) != 0 {
            return true;
        }
        let pos = self.subscriber_slot(0).position.load(Ordering::Acquire);
        pos >= sh.tail.load(Ordering::Acquire)
    }

    /// The ring's counters and participants, read without attaching.
    pub fn stats(&self) -> RingStats {
        let sh = self.shared();
        let tail = sh.tail.load(Ordering::Acquire);
        let producers = (0..self.inner.max_producers)
            .map(|i| self.producer_slot(i))
            .filter(|s| s.pid.load(Ordering::Acquire) != 0 || s.sent.load(Ordering::Relaxed) != 0)
            .map(|s| {
                let pid = s.pid.load(Ordering::Acquire);
                let state = s.state.load(Ordering::Acquire);
                ProducerStats {
                    pid,
                    alive: pid != 0 && process_alive(pid, s.start_ticks.load(Ordering::Acquire)),
                    sent: committed_in(s),
                    bytes: s.bytes.load(Ordering::Relaxed),
                    claiming: state == SLOT_CLAIMING || state == SLOT_OWNED,
                }
            })
            .collect::<Vec<_>>();
        let subscribers = (0..self.inner.max_subscribers)
            .filter_map(|i| {
                let s = self.subscriber_slot(i);
                if s.state.load(Ordering::Acquire) != SLOT_ACTIVE {
                    return None;
                }
                let pid = s.pid.load(Ordering::Acquire);
                let position = s.position.load(Ordering::Acquire);
                Some(SubscriberStats {
                    slot: i,
                    pid,
                    alive: pid != 0 && process_alive(pid, s.start_ticks.load(Ordering::Acquire)),
                    position,
                    lag: tail.saturating_sub(position),
                    received: s.received.load(Ordering::Relaxed),
                    bytes: s.bytes.load(Ordering::Relaxed),
                })
            })
            .collect::<Vec<_>>();
        RingStats {
            name: self.name().to_owned(),
            capacity: self.inner.capacity,
            multi_producer: self.inner.mpsc,
            tail,
            sent: producers.iter().map(|p| p.sent).sum(),
            bytes: producers.iter().map(|p| p.bytes).sum(),
            received: subscribers
                .first()
                .filter(|s| s.slot == 0)
                .map_or(0, |s| s.received),
            backpressure: sh.backpressure.load(Ordering::Relaxed),
            unblocked: sh.unblocked.load(Ordering::Relaxed),
            dead_reaped: sh.dead_reaped.load(Ordering::Relaxed),
            max_lag: sh.max_lag.load(Ordering::Relaxed),
            corrupt_frames: sh.corrupt_frames.load(Ordering::Relaxed),
            producers,
            subscribers,
        }
    }
}

/// A snapshot of a ring's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStats {
    /// Ring name.
    pub name: String,
    /// Data region size.
    pub capacity: u64,
    /// Multi-producer ring.
    pub multi_producer: bool,
    /// Claim position.
    pub tail: u64,
    /// Frames committed by all producers.
    pub sent: u64,
    /// Payload bytes committed by all producers.
    pub bytes: u64,
    /// Frames delivered to the primary consumer.
    pub received: u64,
    /// Claims refused for lack of space.
    pub backpressure: u64,
    /// Dead producers' claims skipped with padding.
    pub unblocked: u64,
    /// Dead participants whose slots were reclaimed.
    pub dead_reaped: u64,
    /// Largest tail-to-slowest-consumer distance seen, in bytes.
    pub max_lag: u64,
    /// Invalid frames seen by consumers.
    pub corrupt_frames: u64,
    /// Producer slots in use (or that have sent).
    pub producers: Vec<ProducerStats>,
    /// Active subscriber slots (slot 0 is the primary consumer).
    pub subscribers: Vec<SubscriberStats>,
}

/// One producer in [`RingStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStats {
    /// Process id (0 = detached).
    pub pid: u32,
    /// The process is alive.
    pub alive: bool,
    /// Frames committed.
    pub sent: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Between claim and commit right now.
    pub claiming: bool,
}

/// One subscriber in [`RingStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Slot index (0 = primary consumer).
    pub slot: usize,
    /// Process id (0 = none attached).
    pub pid: u32,
    /// The process is alive.
    pub alive: bool,
    /// Consumed up to here.
    pub position: u64,
    /// Bytes committed or claimed but not yet consumed.
    pub lag: u64,
    /// Frames delivered.
    pub received: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
}

/// A producer attached to a ring. Use from one thread at a time (`Send`, not `Sync`); attach
/// one producer per thread on a multi-producer ring.
pub struct Producer {
    ring: Ring,
    slot: usize,
    /// `ring.producer_slot(slot)`, computed once: the hot path stores into it several
    /// times per frame.
    slot_ptr: *const ProducerSlot,
    cached_head: u64,
    sent: u64,
    bytes: u64,
    lazy_wake: bool,
    last_reap: Option<Instant>,
    counters: bool,
}

// SAFETY: `slot_ptr` points into the ring's body, which the `ring` clone keeps mapped; a
// Producer moved to another thread touches the slot only through atomics, as before the move.
unsafe impl Send for Producer {}

/// Why a claim failed (turned into an [`Error`] off the hot path).
#[derive(Clone, Copy)]
enum ClaimFail {
    Closed,
    Corrupt(u64),
    Full,
}

/// Where a claimed batch's frames go.
struct Layout {
    start: u64,
    end: u64,
}

impl Producer {
    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    #[inline(always)]
    fn slot(&self) -> &ProducerSlot {
        // SAFETY: `slot_ptr` came from `Ring::producer_slot` (bounds-checked) of the ring
        // this producer holds a clone of, so the mapping outlives `self`; the slot is atomics
        // only.
        unsafe { &*self.slot_ptr }
    }

    /// The producer slot this producer holds (see [`Ring::producer_in_slot`]).
    pub fn slot_index(&self) -> usize {
        self.slot
    }

    /// Frames committed through this producer's slot so far, by this producer and by every
    /// earlier holder of the slot (a predecessor that died included: its last claim was
    /// settled before this producer attached). A frame counts once [`Producer::send`] (or a
    /// commit) has returned, and survives the death of any process; numbering frames with
    /// this count before sending lets a restarted producer resend exactly what is missing.
    pub fn committed(&self) -> u64 {
        self.sent
    }

    /// Stops publishing this producer's `bytes` counter (only to measure what it costs:
    /// `erlmcp-flow bench --suite ring`, result `counters_cost_pct`). The frame count is
    /// part of crash recovery and is always published.
    #[doc(hidden)]
    pub fn disable_counters(&mut self) {
        self.counters = false;
    }

    /// The slowest consumer's position; dead subscribers are reaped at most every 10 ms, so a
    /// producer retrying on a full ring does not pay a liveness check per subscriber per try.
    fn refresh_head(&mut self) -> u64 {
        let now = Instant::now();
        let reap = self
            .last_reap
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(10));
        if reap {
            self.last_reap = Some(now);
        }
        self.ring.min_head(reap)
    }

    #[inline]
    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.ring.max_payload() {
            return Err(self.too_large(len));
        }
        Ok(())
    }

    #[cold]
    fn too_large(&self, len: usize) -> Error {
        Error::new(
            ErrorKind::TooLarge,
            format!(
                "frame of {len} bytes exceeds the ring's maximum payload of {} bytes",
                self.ring.max_payload()
            ),
        )
    }

    /// Claims space for frames of the given payload lengths, all or nothing. Returns where
    /// the claim starts and ends (padding included).
    fn claim_range(&mut self, lens: &[&[u8]]) -> Result<Layout> {
        let cap = self.ring.inner.capacity;
        let ring = self.ring.clone();
        self.claim_with(|tail| {
            // Lay the frames out from `tail`, padding to the end of the data region where a
            // frame would cross it.
            let mut end = tail;
            for p in lens {
                let size = ring.frame_bytes(p.len(), false) as u64;
                let to_end = cap - (end & (cap - 1));
                if size > to_end {
                    end += to_end;
                }
                end += size;
            }
            end
        })
    }

    /// Claims `[tail, end_of(tail))` for the current tail: all or nothing.
    #[inline]
    fn claim_with(&mut self, end_of: impl Fn(u64) -> u64) -> Result<Layout> {
        self.claim_fast(end_of).map_err(|f| self.claim_error(f))
    }

    /// [`Producer::claim_with`] without building an `Error`: the hot path returns two words
    /// or a one-byte reason, never a large `Result` through memory.
    #[inline(always)]
    fn claim_fast(
        &mut self,
        end_of: impl Fn(u64) -> u64,
    ) -> std::result::Result<Layout, ClaimFail> {
        let cap = self.ring.inner.capacity;
        if self.ring.shared().closed.load(Ordering::Relaxed) != 0 {
            return Err(ClaimFail::Closed);
        }
        loop {
            let tail = self.ring.shared().tail.load(Ordering::Acquire);
            if tail % 8 != 0 {
                return Err(ClaimFail::Corrupt(tail));
            }
            let end = end_of(tail);
            if end.saturating_sub(self.cached_head) > cap && !self.refresh_for(tail, end) {
                return Err(ClaimFail::Full);
            }
            // Record the claim before making it: if we die after the claim becomes visible,
            // recovery finds the range here (the CAS / store below is Release). The
            // positions are Release too: a recoverer that reads our next record has seen
            // this claim's commits (see `recovery`). `end - tail` ≤ capacity ≤ 1 GiB.
            let s = self.slot();
            s.pending_pos.store(tail, Ordering::Release);
            s.pending_len.store((end - tail) as u32, Ordering::Release);
            s.state.store(SLOT_CLAIMING, Ordering::Release);
            let sh = self.ring.shared();
            if self.ring.inner.mpsc {
                if sh
                    .tail
                    .compare_exchange_weak(tail, end, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                // Only now is the range ours: say so before writing anything into it, so a
                // record that was never confirmed proves it wrote nothing.
                s.state.store(SLOT_OWNED, Ordering::Release);
            } else {
                sh.tail.store(end, Ordering::Release);
            }
            return Ok(Layout { start: tail, end });
        }
    }

    /// Reloads the slowest consumer's position after the cached one said `[tail, end)` does
    /// not fit; true when it fits now. Counts back-pressure when it still does not.
    #[cold]
    fn refresh_for(&mut self, tail: u64, end: u64) -> bool {
        let cap = self.ring.inner.capacity;
        self.cached_head = self.refresh_head();
        let lag = tail.saturating_sub(self.cached_head);
        let sh = self.ring.shared();
        sh.max_lag.fetch_max(lag, Ordering::Relaxed);
        if end.saturating_sub(self.cached_head) > cap {
            sh.backpressure.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    #[cold]
    fn claim_error(&self, f: ClaimFail) -> Error {
        match f {
            ClaimFail::Closed => match self.ring.shared().closed.load(Ordering::Acquire) {
                1 => Error::new(
                    ErrorKind::Closed,
                    "the ring was closed (its owner unregistered or closed it)",
                ),
                v => Error::corrupt(format!(
                    "ring {}: the closed flag holds {v:#x}, not 0 or 1: the segment is damaged",
                    self.ring.name()
                )),
            },
            ClaimFail::Corrupt(tail) => Error::corrupt(format!(
                "ring {}: the claim position {tail} is damaged (not 8-aligned)",
                self.ring.name()
            )),
            // A static message: back-pressure is a hot path for busy producers.
            ClaimFail::Full => Error::new(
                ErrorKind::Full,
                "ring is full: the slowest consumer has not released enough space",
            ),
        }
    }

    /// Claims room for one frame of `len` payload bytes. Write it through
    /// [`Claim::as_mut_slice`], then [`Claim::commit`]. A claim dropped without commit is
    /// turned into padding (nothing is delivered, nothing wedges).
    ///
    /// `Full` when the slowest consumer is too far behind: the caller keeps its message and
    /// may retry, wait ([`Producer::send_timeout`]) or give up. `TooLarge` past
    /// [`Ring::max_payload`].
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>> {
        let raw = self.claim_raw(len)?;
        Ok(Claim {
            producer: self,
            raw,
            done: false,
        })
    }

    /// Claims one frame and returns where it is, without borrowing the producer (for the C
    /// ABI, which keeps at most one open claim per producer). Write the payload through
    /// [`raw_payload`](Self::raw_payload), then [`commit_raw`](Self::commit_raw) or
    /// [`abort_raw`](Self::abort_raw). Errors as [`try_claim`](Self::try_claim).
    pub fn claim_raw(&mut self, len: usize) -> Result<RawClaim> {
        self.check_len(len)?;
        let cap = self.ring.inner.capacity;
        let size = self.ring.frame_bytes(len, false) as u64;
        let layout = self.claim_with(|tail| {
            let to_end = cap - (tail & (cap - 1));
            tail + if size > to_end { to_end + size } else { size }
        })?;
        // The frame sits at the end of the range; anything before it is wrap padding.
        let pos = layout.end - size;
        if pos > layout.start {
            self.ring.pad_range(layout.start, pos);
        }
        debug_assert!(size <= cap - (pos & (cap - 1)));
        Ok(RawClaim {
            pos,
            len,
            end: layout.end,
            owner: self.slot_ptr as usize,
        })
    }

    /// Refuses a claim made by another producer (see [`RawClaim`]).
    #[inline(always)]
    fn check_owner(&self, c: &RawClaim) {
        assert_eq!(
            c.owner, self.slot_ptr as usize,
            "a RawClaim was passed to a producer that did not make it"
        );
    }

    /// The payload area of an open claim: `c.len()` writable bytes, valid until the claim is
    /// committed or aborted and while this producer lives. Writing through it is the caller's
    /// `unsafe`; their content is undefined until written (old ring data).
    ///
    /// # Panics
    ///
    /// If `c` was made by another producer.
    pub fn raw_payload(&self, c: &RawClaim) -> *mut u8 {
        self.check_owner(c);
        let idx = (c.pos & (self.ring.inner.capacity - 1)) as usize;
        // In bounds: the frame lies inside the data region (claim layout).
        self.ring.data().wrapping_add(idx + FRAME_HEADER)
    }

    /// Commits the first `n` bytes of an open claim (`n` is clamped to its length); the rest
    /// of the claim becomes padding.
    ///
    /// # Panics
    ///
    /// If `c` was made by another producer.
    #[inline]
    pub fn commit_raw(&mut self, c: RawClaim, n: usize) {
        self.check_owner(&c);
        let n = n.min(c.len);
        let used_end = c.pos + self.ring.frame_bytes(n, false) as u64;
        if used_end < c.end {
            self.ring.pad_range(used_end, c.end);
        }
        if self.ring.inner.extra != 0 {
            self.write_checksum(c.pos, n);
        }
        self.commit_header(c.pos, n);
        self.finish_claim();
    }

    /// Counts the frame at `pos` in the slot, then writes its header (the commit). The count
    /// goes first so that a crash can only over-count, which recovery settles from
    /// `last_pos` (see `recovery`).
    #[inline(always)]
    fn commit_header(&mut self, pos: u64, len: usize) {
        self.sent += 1;
        self.bytes += len as u64;
        let s = self.slot();
        s.last_pos.store(pos, Ordering::Relaxed);
        s.sent.store(self.sent, Ordering::Relaxed);
        self.ring
            .header_at(pos)
            .store(header(pos, len, false), Ordering::Release);
    }

    /// Writes the CRC32C of the `len`-byte payload of the frame at `pos` after it.
    #[cold]
    fn write_checksum(&self, pos: u64, len: usize) {
        let idx = (pos & (self.ring.inner.capacity - 1)) as usize + FRAME_HEADER;
        // SAFETY: the frame at `pos` is ours (open claim) and its layout reserved
        // `len + CHECKSUM_LEN` bytes after the header inside the data region; the payload
        // was written by us and nobody else writes or reads it before the commit.
        let payload =
            unsafe { std::slice::from_raw_parts(self.ring.data().wrapping_add(idx), len) };
        let crc = crate::checksum::crc32c(payload).to_le_bytes();
        // SAFETY: the CHECKSUM_LEN bytes after the payload are inside our claim (as above)
        // and do not overlap the local `crc`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                crc.as_ptr(),
                self.ring.data().wrapping_add(idx + len),
                CHECKSUM_LEN,
            );
        }
    }

    /// Turns an open claim into padding.
    ///
    /// # Panics
    ///
    /// If `c` was made by another producer.
    pub fn abort_raw(&mut self, c: RawClaim) {
        self.check_owner(&c);
        self.ring.pad_range(c.pos, c.end);
        self.slot().state.store(SLOT_IDLE, Ordering::Release);
        self.ring.wake_data_after(self.lazy_wake);
    }

    /// Sends one frame (copying `payload` into the ring).
    #[inline]
    pub fn send(&mut self, payload: &[u8]) -> Result<()> {
        let len = payload.len();
        self.check_len(len)?;
        let cap = self.ring.inner.capacity;
        let size = self.ring.frame_bytes(len, false) as u64;
        let layout = match self.claim_fast(|tail| {
            let to_end = cap - (tail & (cap - 1));
            tail + if size > to_end { to_end + size } else { size }
        }) {
            Ok(l) => l,
            Err(f) => return Err(self.claim_error(f)),
        };
        // The frame sits at the end of the range; anything before it is wrap padding.
        let pos = layout.end - size;
        if pos > layout.start {
            self.ring.pad_range(layout.start, pos);
        }
        let raw = RawClaim {
            pos,
            len,
            end: layout.end,
            owner: self.slot_ptr as usize,
        };
        // SAFETY: the payload area of our claim: `len` bytes inside the data region (the
        // frame does not cross its end, by layout), which no consumer reads before the
        // commit below and no other producer writes (claims are disjoint); `payload` is a
        // separate, caller-owned slice.
        unsafe {
            std::ptr::copy_nonoverlapping(payload.as_ptr(), self.raw_payload(&raw), len);
        }
        self.commit_raw(raw, len);
        Ok(())
    }

    /// Sends frames in order with one claim for as many as fit, and returns how many were
    /// sent. The rest (`payloads[n..]`) were not sent and stay the caller's: this is the
    /// batch's answer to back-pressure (partial acceptance, never silent loss).
    pub fn send_batch(&mut self, payloads: &[&[u8]]) -> Result<usize> {
        for p in payloads {
            self.check_len(p.len())?;
        }
        if payloads.is_empty() {
            return Ok(0);
        }
        // Claim the longest prefix that fits in the space the slowest consumer leaves.
        let cap = self.ring.inner.capacity;
        let ring = self.ring.clone();
        let sh = ring.shared();
        let mut n;
        let layout = loop {
            let head = self.refresh_head();
            self.cached_head = head;
            let tail = sh.tail.load(Ordering::Acquire);
            let mut end = tail;
            n = 0;
            for p in payloads {
                let size = self.ring.frame_bytes(p.len(), false) as u64;
                let to_end = cap - (end & (cap - 1));
                let next = end + if size > to_end { to_end + size } else { size };
                if next.saturating_sub(head) > cap {
                    break;
                }
                end = next;
                n += 1;
            }
            if n == 0 {
                sh.backpressure.fetch_add(1, Ordering::Relaxed);
                return Ok(0);
            }
            match self.claim_range(&payloads[..n]) {
                Ok(l) => break l,
                // Another producer took the space meanwhile: measure again.
                Err(e) if e.kind() == ErrorKind::Full => continue,
                Err(e) => return Err(e),
            }
        };
        let cap = self.ring.inner.capacity;
        let mut pos = layout.start;
        for p in &payloads[..n] {
            let size = self.ring.frame_bytes(p.len(), false) as u64;
            let to_end = cap - (pos & (cap - 1));
            if size > to_end {
                self.ring.pad_range(pos, pos + to_end);
                pos += to_end;
            }
            self.write_frame(pos, p);
            pos += size;
        }
        debug_assert_eq!(pos, layout.end);
        self.finish_claim();
        Ok(n)
    }

    /// Sends one frame, waiting for space with `strategy` for at most `timeout`.
    pub fn send_timeout(
        &mut self,
        payload: &[u8],
        strategy: WaitStrategy,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            match self.send(payload) {
                Err(e) if e.kind() == ErrorKind::Full => {}
                other => return other,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("ring {}: no space within {timeout:?}", self.ring.name()),
                ));
            }
            spins += 1;
            if strategy.pause(spins) {
                {
                    let ring = self.ring.clone();
                    let sh = ring.shared();
                    sh.space_waiters.fetch_add(1, Ordering::SeqCst);
                    let seen = sh.space_futex.load(Ordering::SeqCst);
                    // Lazy consumers skip the store-load fence after publishing their
                    // position; force it on them now, so that either they see us waiting or
                    // we see the space they freed (see `Ring::wake_space`). Without kernel
                    // support, nap briefly.
                    let max_nap = if futex::barrier_all() {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_millis(1)
                    };
                    // Re-check after announcing ourselves: a consumer that freed space before
                    // our increment is seen here; one that frees it after will wake us.
                    let head = self.refresh_head();
                    let tail = sh.tail.load(Ordering::Acquire);
                    let need = ring.frame_bytes(payload.len(), false) as u64 * 2;
                    if (tail + need).saturating_sub(head) > ring.inner.capacity {
                        futex::wait(&sh.space_futex, seen, (deadline - now).min(max_nap));
                    }
                    sh.space_waiters.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Writes one frame and commits it.
    fn write_frame(&mut self, pos: u64, payload: &[u8]) {
        let cap = self.ring.inner.capacity;
        let idx = (pos & (cap - 1)) as usize;
        debug_assert!(idx + self.ring.frame_bytes(payload.len(), false) <= cap as usize);
        // SAFETY: [idx + 8, idx + 8 + len) lies inside the data region (the frame does not
        // cross its end, by layout) and belongs to our claim: no consumer reads it before the
        // header below is committed and no producer writes it (claims are disjoint).
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                self.ring.data().wrapping_add(idx + FRAME_HEADER),
                payload.len(),
            );
        }
        if self.ring.inner.extra != 0 {
            self.write_checksum(pos, payload.len());
        }
        self.commit_header(pos, payload.len());
    }

    #[inline]
    fn finish_claim(&mut self) {
        let s = self.slot();
        if self.counters {
            s.bytes.store(self.bytes, Ordering::Relaxed);
        }
        s.state.store(SLOT_IDLE, Ordering::Release);
        self.ring.wake_data_after(self.lazy_wake);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let s = self.slot();
        s.state.store(SLOT_IDLE, Ordering::Release);
        s.start_ticks.store(0, Ordering::Release);
        s.pid.store(0, Ordering::Release);
    }
}

/// An open claim that does not borrow its producer, for bindings that hand the claim to a
/// caller across calls (the C ABI's `emf_producer_claim` / `_commit` / `_abort`). Made by
/// [`Producer::claim_raw`]; pass it back, once, to [`Producer::commit_raw`] or
/// [`Producer::abort_raw`] of the same producer (it is neither `Clone` nor `Copy`). Rust code
/// should use [`Producer::try_claim`] and [`Claim`], which the borrow checker keeps right.
///
/// The frame is at `pos` with room for `len` payload bytes; the claim covers `[pos, end)`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an open claim stalls the ring until it is committed or aborted"]
pub struct RawClaim {
    pos: u64,
    len: usize,
    end: u64,
    /// The producer slot that made it (its address): a claim given to another producer is
    /// refused with a panic rather than committed into someone else's range.
    owner: usize,
}

impl RawClaim {
    /// The claimed payload length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the claim has no payload bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy for [`Claim`], whose `done` flag makes sure it is used once.
    fn dup(&self) -> RawClaim {
        RawClaim { ..*self }
    }
}

/// Space claimed in the ring for one frame. Commit it, or drop it to abort.
pub struct Claim<'a> {
    producer: &'a mut Producer,
    raw: RawClaim,
    done: bool,
}

impl Claim<'_> {
    /// The frame's payload bytes, to write in place. Their content is undefined until
    /// written (old ring data).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let p = self.producer.raw_payload(&self.raw);
        // SAFETY: the range lies inside the data region and belongs to this claim (see
        // `Producer::write_frame`); the `&mut self` borrow keeps it unique in this process.
        unsafe { std::slice::from_raw_parts_mut(p, self.raw.len) }
    }

    /// Makes the frame visible to consumers.
    pub fn commit(self) {
        let n = self.raw.len;
        self.commit_len(n);
    }

    /// Commits only the first `n` bytes written (`n` ≤ the claimed length); the rest of the
    /// claim becomes padding.
    pub fn commit_len(mut self, n: usize) {
        self.done = true;
        self.producer.commit_raw(self.raw.dup(), n);
    }

    /// Gives the space back as padding; nothing is delivered.
    pub fn abort(mut self) {
        self.done = true;
        self.producer.abort_raw(self.raw.dup());
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.producer.abort_raw(self.raw.dup());
        }
    }
}

/// A consumer (the primary one, or a fan-out subscriber). Use from one thread at a time.
pub struct Consumer {
    ring: Ring,
    slot: usize,
    /// Next position to read.
    head: u64,
    received: u64,
    bytes: u64,
    /// Position, frames and bytes released to producers (published in the slot). Equal to
    /// `head` and its counts except in [`AckMode::Manual`] between delivery and [`Consumer::ack`].
    acked: (u64, u64, u64),
    ack_mode: AckMode,
    stall: Option<(u64, Instant)>,
    /// The stalled position already reported (and counted) as corrupt.
    reported: Option<u64>,
    misses: u32,
    /// This process is registered for `membarrier`: releases skip the store-load fence.
    lazy_wake: bool,
}

/// When a consumer releases delivered frames (their space goes back to producers, and a
/// restarted consumer starts after them). See the delivery table in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Every receive releases what it delivered: `poll` after its handler returned,
    /// `recv_into` / `recv_batch_into` before returning.
    #[default]
    Auto,
    /// Nothing is released until [`Consumer::ack`]: a consumer that dies first has its
    /// unacknowledged frames delivered again to the next consumer (at least once).
    Manual,
}

/// How many empty polls pass between two looks at the claim position for stalled claims.
const STALL_CHECK_EVERY: u32 = 1024;

/// What the consumer found at its position.
enum Next {
    Frame { pos: u64, len: usize, padding: bool },
    Empty,
    Stalled,
}

impl Consumer {
    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// This consumer's position.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Bytes committed or claimed that this consumer has not consumed yet.
    pub fn lag(&self) -> u64 {
        self.ring
            .shared()
            .tail
            .load(Ordering::Acquire)
            .saturating_sub(self.head)
    }

    #[inline]
    fn next(&mut self, check_stall: bool) -> Result<Next> {
        let pos = self.head;
        let word = self.ring.header_at(pos).load(Ordering::Acquire);
        if let Some(h) = decode_header(word, pos) {
            let cap = self.ring.inner.capacity;
            let size = self.ring.frame_bytes(h.len, h.padding) as u64;
            if size > cap - (pos & (cap - 1)) {
                return Err(self.past_the_end(pos, h.len));
            }
            if self.stall.is_some() {
                self.stall = None;
            }
            return Ok(Next::Frame {
                pos,
                len: h.len,
                padding: h.padding,
            });
        }
        // Not committed: empty, or a producer is between claim and commit. Reading `tail`
        // would pull the producers' hot cache line on every empty poll, so look only every
        // STALL_CHECK_EVERY misses (and always from `wait`).
        self.misses = self.misses.wrapping_add(1);
        if !check_stall && self.misses % STALL_CHECK_EVERY != 0 {
            return Ok(Next::Empty);
        }
        self.check_stall(pos)
    }

    #[cold]
    fn past_the_end(&self, pos: u64, len: usize) -> Error {
        self.ring
            .shared()
            .corrupt_frames
            .fetch_add(1, Ordering::Relaxed);
        Error::corrupt(format!(
            "ring {}: frame at {pos} claims {len} bytes, past the end of the data region",
            self.ring.name(),
        ))
    }

    /// No committed frame at `pos`: empty, or claimed and not committed yet (a producer is
    /// writing, or died while writing: recovered after the stall timeout), or the header
    /// there was damaged (`Corrupt`, once nothing can commit it any more).
    #[cold]
    fn check_stall(&mut self, pos: u64) -> Result<Next> {
        let tail = self.ring.shared().tail.load(Ordering::Acquire);
        if tail <= pos {
            self.stall = None;
            return Ok(Next::Empty);
        }
        let now = Instant::now();
        match self.stall {
            Some((p, since)) if p == pos => {
                if now.duration_since(since) >= self.ring.inner.stall_timeout {
                    match self.ring.recover_stall(pos) {
                        // Look again at once: the range was padded or committed.
                        Stall::Progress => self.stall = None,
                        Stall::Wait => self.stall = Some((pos, now)),
                        Stall::Corrupt => return Err(self.stalled_corrupt(pos, tail)),
                    }
                }
            }
            _ => self.stall = Some((pos, now)),
        }
        Ok(Next::Stalled)
    }

    /// The error for a position nothing will ever commit; counted once per position.
    #[cold]
    fn stalled_corrupt(&mut self, pos: u64, tail: u64) -> Error {
        if self.reported != Some(pos) {
            self.reported = Some(pos);
            self.ring
                .shared()
                .corrupt_frames
                .fetch_add(1, Ordering::Relaxed);
        }
        Error::corrupt(format!(
            "ring {}: the frame header at position {pos} is damaged: the claim position is \
             {tail}, past it, and no live or dead producer's claim covers it after the stall \
             timeout of {:?}; the ring cannot move past it",
            self.ring.name(),
            self.ring.inner.stall_timeout
        ))
    }

    /// A data frame at `idx` whose checksum does not match its payload.
    #[cold]
    fn bad_checksum(&self, pos: u64, len: usize) -> Error {
        self.ring
            .shared()
            .corrupt_frames
            .fetch_add(1, Ordering::Relaxed);
        Error::corrupt(format!(
            "ring {}: the {len}-byte frame at position {pos} fails its CRC32C: its bytes \
             changed in the ring (it was skipped)",
            self.ring.name()
        ))
    }

    /// True when the checksum stored after the payload at `idx` matches it.
    fn checksum_ok(&self, idx: usize, payload: &[u8]) -> bool {
        let mut stored = [0u8; CHECKSUM_LEN];
        // SAFETY: a data frame on a checksummed ring reserves CHECKSUM_LEN bytes after its
        // payload inside the data region (checked in `next` through `frame_bytes`); they were
        // written before the committed header that we read with Acquire.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ring
                    .data()
                    .wrapping_add(idx + FRAME_HEADER + payload.len()),
                stored.as_mut_ptr(),
                CHECKSUM_LEN,
            );
        }
        u32::from_le_bytes(stored) == crate::checksum::crc32c(payload)
    }

    /// How this consumer releases what it delivered ([`AckMode::Auto`] unless changed).
    pub fn ack_mode(&self) -> AckMode {
        self.ack_mode
    }

    /// Chooses when delivered frames are released. Switching to [`AckMode::Auto`] releases
    /// what was delivered and not yet acknowledged.
    pub fn set_ack_mode(&mut self, mode: AckMode) {
        self.ack_mode = mode;
        if mode == AckMode::Auto {
            self.ack();
        }
    }

    /// Releases every frame delivered so far: their space goes back to producers and a
    /// consumer that attaches after this one starts after them. In [`AckMode::Auto`] every
    /// receive already does this.
    pub fn ack(&mut self) {
        if self.acked.0 != self.head {
            self.acked = (self.head, self.received, self.bytes);
            self.publish();
        }
    }

    /// Frames delivered but not acknowledged yet ([`AckMode::Manual`]).
    pub fn unacked(&self) -> u64 {
        self.received - self.acked.1
    }

    /// Forgets the frames delivered since the last [`Consumer::ack`]: the next receive
    /// delivers them again, in order (for a consumer that failed to process them).
    pub fn rewind(&mut self) {
        (self.head, self.received, self.bytes) = self.acked;
        self.stall = None;
    }

    /// Delivers up to `limit` frames to `handler`, in order, and releases their space.
    /// Returns how many were delivered (0 when none are ready).
    #[inline]
    pub fn poll(&mut self, limit: usize, handler: impl FnMut(&[u8])) -> Result<usize> {
        self.poll_while(limit, |_| true, handler)
    }

    /// Like [`Consumer::poll`], but stops after the first frame for which `handler` returns
    /// false (that frame counts as delivered and consumed).
    pub fn poll_until(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(&[u8]) -> bool,
    ) -> Result<usize> {
        let go = std::cell::Cell::new(true);
        self.poll_while(limit, |_| go.get(), |f| go.set(handler(f)))
    }

    /// [`Consumer::poll`] that stops before the first frame whose length `accept` refuses.
    #[inline]
    fn poll_while(
        &mut self,
        limit: usize,
        mut accept: impl FnMut(usize) -> bool,
        mut handler: impl FnMut(&[u8]),
    ) -> Result<usize> {
        let mut n = 0;
        let start = self.head;
        while n < limit {
            let step = match self.next(false) {
                Ok(step) => step,
                // Deliver what we have; the error comes back on the next call.
                Err(_) if n > 0 => break,
                Err(e) => {
                    self.release(start);
                    return Err(e);
                }
            };
            match step {
                Next::Frame { pos, len, padding } => {
                    if !padding && !accept(len) {
                        break;
                    }
                    let next = pos + self.ring.frame_bytes(len, padding) as u64;
                    if !padding {
                        let idx = (pos & (self.ring.inner.capacity - 1)) as usize;
                        // SAFETY: the frame lies inside the data region (checked in `next`);
                        // its header is committed for this lap (Acquire), so the payload was
                        // written before and stays untouched until we publish our position
                        // past it (producers never claim past the slowest consumer).
                        let payload = unsafe {
                            std::slice::from_raw_parts(
                                self.ring.data().wrapping_add(idx + FRAME_HEADER),
                                len,
                            )
                        };
                        if self.ring.inner.extra != 0 && !self.checksum_ok(idx, payload) {
                            if n > 0 {
                                break;
                            }
                            // Skip it (it can never become right) and say so.
                            self.head = next;
                            self.release(start);
                            return Err(self.bad_checksum(pos, len));
                        }
                        handler(payload);
                        n += 1;
                        self.received += 1;
                        self.bytes += len as u64;
                    }
                    self.head = next;
                }
                Next::Empty | Next::Stalled => break,
            }
        }
        self.release(start);
        Ok(n)
    }

    /// After a receive that started at `start`: in [`AckMode::Auto`], releases what it
    /// delivered or skipped.
    #[inline]
    fn release(&mut self, start: u64) {
        if self.head != start && self.ack_mode == AckMode::Auto {
            self.acked = (self.head, self.received, self.bytes);
            self.publish();
        }
    }

    /// The payload length of the next frame, if one is ready (padding is skipped and
    /// released). Nothing is consumed.
    pub fn next_len(&mut self) -> Result<Option<usize>> {
        loop {
            match self.next(false)? {
                Next::Frame {
                    padding: true,
                    pos,
                    len,
                } => {
                    self.head = pos + frame_size(len) as u64;
                    self.release(pos);
                }
                Next::Frame { len, .. } => return Ok(Some(len)),
                Next::Empty | Next::Stalled => return Ok(None),
            }
        }
    }

    /// Copies the next frame into `buf` and consumes it; `Ok(None)` when none is ready.
    /// `TooLarge` (frame left in place) when `buf` is shorter than the frame: ask
    /// [`Consumer::next_len`] for the size.
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        if len > buf.len() {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("the next frame is {len} bytes, the buffer {}", buf.len()),
            ));
        }
        self.poll(1, |f| buf[..f.len()].copy_from_slice(f))?;
        Ok(Some(len))
    }

    /// Copies as many ready frames as fit (up to `max_frames`) into `buf`, each as a
    /// little-endian `u32` length followed by its bytes, and consumes them. Returns
    /// `(frames, bytes used)`. A frame larger than the whole buffer gives `TooLarge` when it
    /// is the first one (nothing consumed).
    pub fn recv_batch_into(&mut self, buf: &mut [u8], max_frames: usize) -> Result<(usize, usize)> {
        if let Some(len) = self.next_len()? {
            if len + 4 > buf.len() {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the next frame needs {} bytes, the buffer has {}",
                        len + 4,
                        buf.len()
                    ),
                ));
            }
        }
        let cap = buf.len();
        let mut reserved = 0;
        let mut used = 0;
        let frames = self.poll_while(
            max_frames,
            |len| {
                let fits = reserved + 4 + len <= cap;
                if fits {
                    reserved += 4 + len;
                }
                fits
            },
            |f| {
                buf[used..used + 4].copy_from_slice(&(f.len() as u32).to_le_bytes());
                buf[used + 4..used + 4 + f.len()].copy_from_slice(f);
                used += 4 + f.len();
            },
        )?;
        Ok((frames, used))
    }

    /// Publishes the acknowledged position (and its counts) in the slot.
    #[inline]
    fn publish(&mut self) {
        let s = self.ring.subscriber_slot(self.slot);
        let (position, received, bytes) = self.acked;
        s.received.store(received, Ordering::Relaxed);
        s.bytes.store(bytes, Ordering::Relaxed);
        s.position.store(position, Ordering::Release);
        self.ring.wake_space(self.lazy_wake);
    }

    /// Waits until a frame is ready (true) or `timeout` passes (false).
    pub fn wait(&mut self, strategy: WaitStrategy, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            // Frames, padding and recovery all count as progress: poll-visible state changed.
            match self.next(true)? {
                Next::Frame {
                    padding: true,
                    pos,
                    len,
                } => {
                    self.head = pos + frame_size(len) as u64;
                    self.release(pos);
                    continue;
                }
                Next::Frame { .. } => return Ok(true),
                Next::Empty | Next::Stalled => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            spins += 1;
            if strategy.pause(spins) {
                {
                    let sh = self.ring.shared();
                    sh.data_waiters.fetch_add(1, Ordering::SeqCst);
                    let seen = sh.data_futex.load(Ordering::SeqCst);
                    // Lazy producers skip the store-load fence after a commit; force it on
                    // them now, so that either they see us waiting or we see their frame
                    // (see `Ring::wake_data_after`). Without kernel support, nap briefly.
                    let max_nap = if futex::barrier_all() {
                        self.ring.inner.stall_timeout.max(Duration::from_millis(1))
                    } else {
                        Duration::from_millis(1)
                    };
                    let ready = decode_header(
                        self.ring.header_at(self.head).load(Ordering::SeqCst),
                        self.head,
                    )
                    .is_some();
                    if !ready {
                        // Wake up at least every stall timeout to check for dead producers.
                        futex::wait(&sh.data_futex, seen, (deadline - now).min(max_nap));
                    }
                    sh.data_waiters.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.publish();
        let s = self.ring.subscriber_slot(self.slot);
        if self.slot != 0 {
            s.state.store(SLOT_FREE, Ordering::Release);
        }
        s.start_ticks.store(0, Ordering::Release);
        s.pid.store(0, Ordering::Release);
        self.ring.wake_space(false);
    }
}

#[cfg(all(test, loom))]
mod model;
#[cfg(all(test, loom))]
mod recovery_model;
#[cfg(test)]
pub(crate) mod tests;
