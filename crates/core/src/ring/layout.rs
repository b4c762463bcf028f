//! The ring's layout inside a segment body, and the frame header encoding.
//!
//! ```text
//! body offset   contents                                   written by
//! 0             RingConfig (immutable after creation)       creator
//! 64            tail: claim position (u64)                  producers (CAS / store)
//! 128           data futex word + waiter count              producers / parked consumers
//! 192           space futex word + waiter count             consumers / parked producers
//! 256..384      ring counters (rare events), recovery lock  anyone (fetch_add / fetch_max / CAS)
//! 384           producer slots, 64 B each                   their producer (+ recovery)
//! ...           subscriber slots, 64 B each (0 = primary)   their consumer (+ reaping)
//! data_offset   data region, `capacity` bytes (page aligned)
//! ```
//!
//! Positions are byte offsets that only grow (u64); `pos & (capacity - 1)` is the index in
//! the data region. A frame is an 8-byte header followed by the payload, padded to 8 bytes,
//! and never crosses the end of the data region (a padding frame fills the end instead).
//!
//! Frame header (one u64, written last with Release — it is the commit flag):
//!
//! ```text
//! bits 0..32   tag: (position >> 3) as u32 — tells this lap's frame from an old one
//! bits 32..62  payload length (< 1 GiB)
//! bit  62      committed (zero memory is never a frame)
//! bit  63      padding (skip, deliver nothing)
//! ```

use crate::sync::{AtomicU32, AtomicU64};

/// The ring layout version this build reads and writes. Version 2: producer slots record the
/// claim's confirmation (`SLOT_OWNED`) and the position of the frame being
/// committed; a recovery lock; optional per-frame checksums.
pub const RING_VERSION: u32 = 2;
/// Cache line size used to separate hot words.
pub const LINE: usize = 64;
/// Frame header size.
pub const FRAME_HEADER: usize = 8;
/// Flag in [`RingConfig::flags`]: several producers claim with CAS.
pub const FLAG_MPSC: u32 = 1;
/// Flag in [`RingConfig::flags`]: every data frame ends with a CRC32C of its payload.
pub const FLAG_CHECKSUM: u32 = 2;
/// Bytes a frame's checksum adds after the payload (rings with [`FLAG_CHECKSUM`]).
pub const CHECKSUM_LEN: usize = 4;

/// Immutable ring parameters, at body offset 0. Read out of a mapping by copy (a volatile
/// read of the whole struct, validated before use), never through a reference.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// [`RING_VERSION`].
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Data region size in bytes (a power of two).
    pub capacity: u64,
    /// Number of producer slots.
    pub max_producers: u32,
    /// Number of subscriber slots (slot 0 is the primary consumer).
    pub max_subscribers: u32,
    /// How long a claim may stay uncommitted before its producer's liveness is checked.
    pub stall_timeout_ns: u64,
    /// Offset of the data region from the body start.
    pub data_offset: u64,
}

/// Shared ring state words (offsets 64..384).
#[repr(C)]
pub struct RingShared {
    /// The claim position: everything below it has been claimed by some producer.
    pub tail: AtomicU64,
    _pad0: [u64; 7],
    /// Bumped by producers after a commit when a consumer is parked.
    pub data_futex: AtomicU32,
    /// Number of consumers parked (or about to park) on `data_futex`.
    pub data_waiters: AtomicU32,
    _pad1: [u64; 7],
    /// Bumped by consumers after releasing space when a producer is parked.
    pub space_futex: AtomicU32,
    /// Number of producers parked (or about to park) on `space_futex`.
    pub space_waiters: AtomicU32,
    _pad2: [u64; 7],
    /// Claims refused for lack of space.
    pub backpressure: AtomicU64,
    /// Stalled claims of dead producers skipped with padding.
    pub unblocked: AtomicU64,
    /// Dead subscribers (and producers) whose slots were reclaimed.
    pub dead_reaped: AtomicU64,
    /// The largest distance between the tail and the slowest consumer seen by a producer.
    pub max_lag: AtomicU64,
    /// Frames a consumer found invalid (a header that cannot be right).
    pub corrupt_frames: AtomicU64,
    /// 1 once the ring was closed (`Ring::close`): producers get `Closed` instead of
    /// writing into a ring nobody will read again. Any value other than 0 and 1 is damage.
    pub closed: AtomicU32,
    _pad32: u32,
    /// Who is recovering a dead producer's claim: `pid << 32 | nonce`, 0 when nobody.
    /// Recovery (padding another producer's range) happens only under this lock.
    pub recovery_lock: AtomicU64,
    /// The lock holder's process start time (pid reuse check for a holder that died).
    pub recovery_ticks: AtomicU64,
    _pad3: [u64; 8],
}

/// Slot states.
pub const SLOT_FREE: u32 = 0;
/// An attached participant, not claiming.
pub const SLOT_IDLE: u32 = 1;
/// A producer that recorded the claim it is about to make. On a single-producer ring the
/// claim is made by a plain store, so the record is the producer's exactly when its end is
/// at or below the tail. On a multi-producer ring the CAS that makes the claim may fail
/// (another producer got there first): the record alone proves nothing.
pub const SLOT_CLAIMING: u32 = 2;
/// An attached subscriber (or the primary consumer's slot, always).
pub const SLOT_ACTIVE: u32 = 3;
/// A multi-producer ring's producer whose CAS installed the recorded claim: the range is
/// its own until it commits.
pub const SLOT_OWNED: u32 = 4;

/// One producer's slot.
#[repr(C)]
pub struct ProducerSlot {
    /// Owner pid (0 = free).
    pub pid: AtomicU32,
    /// `SLOT_FREE`, `SLOT_IDLE`, `SLOT_CLAIMING` or `SLOT_OWNED`.
    pub state: AtomicU32,
    /// Owner's process start time (pid reuse check).
    pub start_ticks: AtomicU64,
    /// Start of the range being claimed (valid while CLAIMING or OWNED).
    pub pending_pos: AtomicU64,
    /// Length of the range being claimed (valid while CLAIMING or OWNED; ≤ capacity).
    pub pending_len: AtomicU32,
    /// 1 when this producer skips the fence after commits (registered for membarrier).
    pub lazy_wake: AtomicU32,
    _reserved: u64,
    /// Position of the last frame committed through this slot, stored before `sent` and the
    /// header, tagged in its low three bits with the low bits of the count that includes it.
    pub last_pos: AtomicU64,
    /// Frames committed through this slot, by every producer that held it. Stored before
    /// each frame's header, so it may count one frame whose header was never written; a
    /// recovery settles that from `last_pos`.
    pub sent: AtomicU64,
    /// Payload bytes this producer committed (published after each claim: may lag a
    /// crash by one claim).
    pub bytes: AtomicU64,
}

/// One consumer's slot.
#[repr(C)]
pub struct SubscriberSlot {
    /// Everything below this position has been consumed by this subscriber.
    pub position: AtomicU64,
    /// Owner pid (0 = none attached).
    pub pid: AtomicU32,
    /// `SLOT_FREE` or `SLOT_ACTIVE` (slot 0 is always active).
    pub state: AtomicU32,
    /// Owner's process start time.
    pub start_ticks: AtomicU64,
    /// Frames delivered.
    pub received: AtomicU64,
    /// Payload bytes delivered.
    pub bytes: AtomicU64,
    _pad: [u64; 3],
}

/// Offset of [`RingShared`] in the body.
pub const SHARED_OFF: usize = LINE;
/// Offset of the producer slots in the body.
pub const PRODUCERS_OFF: usize = SHARED_OFF + std::mem::size_of::<RingShared>();

const _: () = assert!(std::mem::size_of::<RingConfig>() <= LINE);
// The shared-memory layout is fixed; loom's atomics are larger model objects, and the loom
// build never maps a ring (it checks `ring::model`), so the size checks hold outside loom.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingShared>() == 5 * LINE);
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<ProducerSlot>() == LINE);
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<SubscriberSlot>() == LINE);

/// Offset of the subscriber slots for `max_producers` producer slots.
pub const fn subscribers_off(max_producers: usize) -> usize {
    PRODUCERS_OFF + max_producers * LINE
}

/// Offset of the data region (page aligned).
pub const fn data_off(max_producers: usize, max_subscribers: usize) -> usize {
    let end = subscribers_off(max_producers) + max_subscribers * LINE;
    end.div_ceil(4096) * 4096
}

const COMMITTED: u64 = 1 << 62;
const PADDING: u64 = 1 << 63;
const LEN_MASK: u64 = (1 << 30) - 1;
/// Largest payload a header can describe.
pub const MAX_PAYLOAD: usize = LEN_MASK as usize;

/// The header value of a committed frame at `pos`.
pub fn header(pos: u64, payload_len: usize, padding: bool) -> u64 {
    let tag = (pos >> 3) as u32 as u64;
    tag | ((payload_len as u64 & LEN_MASK) << 32) | COMMITTED | if padding { PADDING } else { 0 }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    /// A padding frame.
    pub padding: bool,
}

/// Decodes `word` read at position `pos`: `None` when no frame has been committed there in
/// this lap.
pub fn decode_header(word: u64, pos: u64) -> Option<Header> {
    if word & COMMITTED == 0 || (word as u32) != (pos >> 3) as u32 {
        return None;
    }
    Some(Header {
        len: ((word >> 32) & LEN_MASK) as usize,
        padding: word & PADDING != 0,
    })
}

/// Bytes a frame with `payload_len` bytes of payload occupies.
pub const fn frame_size(payload_len: usize) -> usize {
    (FRAME_HEADER + payload_len + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_other_laps() {
        for pos in [0u64, 8, 4096, 1 << 33, !7] {
            for len in [0usize, 1, 63, MAX_PAYLOAD] {
                for pad in [false, true] {
                    let h = header(pos, len, pad);
                    assert_eq!(decode_header(h, pos), Some(Header { len, padding: pad }));
                    assert_eq!(decode_header(h, pos.wrapping_add(1 << 20)), None);
                }
            }
        }
        assert_eq!(decode_header(0, 0), None, "zeroed memory is not a frame");
        assert_eq!(frame_size(0), 8);
        assert_eq!(frame_size(1), 16);
        assert_eq!(frame_size(56), 64);
        assert_eq!(frame_size(64), 72);
    }
}
