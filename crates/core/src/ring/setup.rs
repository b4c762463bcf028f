//! Creating and opening rings: parameter validation, the memory a ring lives in (a shared
//! segment or this process's heap), and the checks of a mapped ring's configuration.

use std::sync::Arc;
use std::time::Duration;

use super::layout::{
    data_off, subscribers_off, RingConfig, SubscriberSlot, CHECKSUM_LEN, FLAG_CHECKSUM, FLAG_MPSC,
    RING_VERSION, SLOT_ACTIVE,
};
use super::{Inner, Ring, RingOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::{self, Segment, SegmentKind, SegmentOptions};
use crate::sync::Ordering;

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
pub(super) enum Memory {
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

    pub(super) fn name(&self) -> &str {
        match self {
            Memory::Mapped(s) => s.name(),
            Memory::Heap(h) => &h.name,
        }
    }

    pub(super) fn path(&self) -> std::path::PathBuf {
        match self {
            Memory::Mapped(s) => s.path().to_owned(),
            Memory::Heap(h) => std::path::PathBuf::from(format!("(anonymous ring {})", h.name)),
        }
    }

    pub(super) fn unlink(&self) -> Result<()> {
        match self {
            Memory::Mapped(s) => s.unlink(),
            Memory::Heap(_) => Ok(()),
        }
    }
}

/// A zeroed, page-aligned heap allocation holding a ring body.
#[derive(Debug)]
pub(super) struct HeapBody {
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
        // Another process can write the mapping at any time, so the configuration is copied
        // out of it once and only the copy is checked and used: no reference into shared
        // memory to a non-atomic struct, and nothing read again after it was validated.
        //
        // SAFETY: the body is page aligned (8-byte alignment suffices) and longer than one
        // line (checked above), so the RingConfig at offset 0 is in bounds and aligned. Its
        // fields are integers, valid for any bit pattern: a concurrent or torn write by a
        // damaged or hostile process can only yield values that the checks below refuse (or
        // a configuration that is merely wrong, which the bounds checks of every access
        // contain). The volatile read cannot be elided or repeated by the compiler. The
        // creator wrote the configuration before marking the segment ready (Release), which
        // `Segment::open` / `inspect` observed (Acquire); after `create` and `anonymous` this
        // thread wrote it itself.
        let cfg: RingConfig = unsafe { std::ptr::read_volatile(seg.body().cast::<RingConfig>()) };
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
}
