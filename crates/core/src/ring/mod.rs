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

mod consumer;
pub mod futex;
pub mod layout;
mod options;
mod producer;
mod recovery;
pub mod seq;
mod setup;
mod stats;

pub use consumer::{AckMode, Consumer};
pub use options::{RingOptions, WaitStrategy};
pub use producer::{Claim, Producer, RawClaim};
pub use stats::{ProducerStats, RingStats, SubscriberStats};

use std::sync::Arc;
use std::time::Duration;

use layout::{
    frame_size, header, subscribers_off, ProducerSlot, RingShared, SubscriberSlot, FRAME_HEADER,
    MAX_PAYLOAD, PRODUCERS_OFF, SHARED_OFF, SLOT_ACTIVE, SLOT_FREE,
};
use setup::Memory;

use crate::error::Result;
use crate::shm::process_alive;
use crate::sync::{compiler_fence, fence, AtomicU64, Ordering};

/// What every clone of a [`Ring`] shares: the memory and its validated configuration.
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
    /// Bytes after each data frame's payload: [`CHECKSUM_LEN`](layout::CHECKSUM_LEN) with
    /// checksums, else 0.
    extra: usize,
}

// SAFETY: `body` points into `mem`, which `Inner` owns and keeps mapped (or allocated) for
// its whole life; everything reached through it in shared memory is atomics or bytes whose
// access is ordered by the ring protocol, so sharing the pointer across threads is what
// sharing `mem` already was (`Memory` is Send + Sync).
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

/// A mapped ring. Cheap to clone; producers and consumers hold a clone.
#[derive(Clone, Debug)]
pub struct Ring {
    inner: Arc<Inner>,
}

impl Ring {
    #[inline]
    fn shared(&self) -> &RingShared {
        // SAFETY: offsets validated in `Ring::from_memory`; RingShared is atomics (and
        // padding that nothing reads or writes), valid for any bit pattern.
        unsafe {
            &*self
                .inner
                .body
                .wrapping_add(SHARED_OFF)
                .cast::<RingShared>()
        }
    }

    #[inline]
    fn producer_slot(&self, i: usize) -> &ProducerSlot {
        assert!(i < self.inner.max_producers);
        // SAFETY: i < max_producers, so the slot lies before the data region (validated
        // layout); ProducerSlot is atomics (and a reserved word that nothing reads or
        // writes), valid for any bit pattern.
        unsafe {
            &*self
                .inner
                .body
                .wrapping_add(PRODUCERS_OFF + i * layout::LINE)
                .cast::<ProducerSlot>()
        }
    }

    #[inline]
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

    #[inline]
    fn data(&self) -> *mut u8 {
        // In bounds: data_offset + capacity == body length (validated in `Ring::from_memory`).
        self.inner.body.wrapping_add(self.inner.data_offset)
    }

    /// The header word of the frame at position `pos` (8-aligned).
    #[inline]
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
    #[inline]
    pub fn capacity(&self) -> usize {
        self.inner.capacity as usize
    }

    /// Largest payload one frame can carry (a quarter of the capacity).
    #[inline]
    pub fn max_payload(&self) -> usize {
        (self.inner.capacity as usize / 4 - FRAME_HEADER - self.inner.extra).min(MAX_PAYLOAD)
    }

    /// True when every data frame carries a CRC32C ([`RingOptions::checksum`]).
    #[inline]
    pub fn has_checksums(&self) -> bool {
        self.inner.extra != 0
    }

    /// True for a multi-producer ring.
    #[inline]
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
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.shared().closed.load(Ordering::Acquire) != 0
    }

    /// Counts one frame that a layer above the ring found invalid (a payload that fails its
    /// format's validation) in [`RingStats::corrupt_frames`].
    pub(crate) fn count_corrupt_frame(&self) {
        self.shared().corrupt_frames.fetch_add(1, Ordering::Relaxed);
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
    #[inline]
    pub fn consumer_idle(&self) -> bool {
        let sh = self.shared();
        if sh.data_waiters.load(Ordering::Relaxed) != 0 {
            return true;
        }
        let pos = self.subscriber_slot(0).position.load(Ordering::Acquire);
        pos >= sh.tail.load(Ordering::Acquire)
    }
}

#[cfg(all(test, loom))]
mod model;
#[cfg(all(test, loom))]
mod recovery_model;
#[cfg(test)]
mod tests;
