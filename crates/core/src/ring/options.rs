//! How a ring is created ([`RingOptions`]) and how its participants wait ([`WaitStrategy`]).

use std::path::Path;
use std::time::Duration;

use crate::shm::SegmentOptions;

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
    pub(super) fn pause(self, spins: u32) -> bool {
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
