//! A ring's counters and participants ([`Ring::stats`]).

use super::layout::{SLOT_ACTIVE, SLOT_CLAIMING, SLOT_OWNED};
use super::recovery::committed_in;
use super::Ring;
use crate::shm::process_alive;
use crate::sync::Ordering;

impl Ring {
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
