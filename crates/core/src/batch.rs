//! The batch processor (by default `batch_size = 100`, `batch_timeout = 10 ms`):
//! messages for one ring are collected and sent as one batch — on size, on timeout, on
//! demand, and at once when the consumer is idle and waiting, so that batching never adds
//! latency at low load.
//!
//! ```
//! use erlmcp_flow::batch::{BatchOptions, BatchProcessor};
//! use erlmcp_flow::ring::{Ring, RingOptions};
//! # let dir = std::env::temp_dir().join(format!("emf-doc-batch-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let ring = Ring::create("doc-batch", &RingOptions::in_dir(&dir)).unwrap();
//! let mut consumer = ring.consumer().unwrap();
//! consumer.poll(1, |_| {}).unwrap(); // a consumer that has caught up: "idle"
//! let mut b = BatchProcessor::new(ring.producer().unwrap(), BatchOptions::default());
//! b.send_message(b"hello").unwrap();     // the consumer is idle: flushed at once
//! assert_eq!(b.pending(), 0);
//! # drop((b, consumer)); ring.unlink().unwrap();
//! ```

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::ring::Producer;

/// When to flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Flush when this many messages are pending (default 100).
    pub batch_size: usize,
    /// Flush when the oldest pending message has waited this long (default 10 ms).
    pub batch_timeout: Duration,
    /// Refuse new messages (`Full`) when this many are pending and cannot be flushed.
    pub max_pending: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            batch_size: 100,
            batch_timeout: Duration::from_millis(10),
            max_pending: 10_000,
        }
    }
}

/// Why a flush happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `batch_size` reached.
    Size,
    /// `batch_timeout` passed.
    Timeout,
    /// The consumer was idle and waiting.
    Idle,
    /// The caller asked.
    Demand,
}

/// Counters of a batch processor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Messages sent to the ring.
    pub sent: u64,
    /// Flushes by size.
    pub flush_size: u64,
    /// Flushes by timeout.
    pub flush_timeout: u64,
    /// Flushes because the consumer was idle.
    pub flush_idle: u64,
    /// Flushes on demand.
    pub flush_demand: u64,
    /// Flushes that left messages pending because the ring was full.
    pub partial: u64,
}

/// Collects messages and sends them in batches through one producer. One thread at a time.
pub struct BatchProcessor {
    producer: Producer,
    opts: BatchOptions,
    data: Vec<u8>,
    ends: Vec<usize>,
    first_at: Option<Instant>,
    stats: BatchStats,
}

impl BatchProcessor {
    /// A processor sending through `producer`.
    pub fn new(producer: Producer, opts: BatchOptions) -> BatchProcessor {
        BatchProcessor {
            producer,
            opts: BatchOptions {
                batch_size: opts.batch_size.max(1),
                ..opts
            },
            data: Vec::new(),
            ends: Vec::new(),
            first_at: None,
            stats: BatchStats::default(),
        }
    }

    /// Messages waiting to be sent.
    pub fn pending(&self) -> usize {
        self.ends.len()
    }

    /// The counters.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// When the pending batch must be flushed by timeout (`None` when nothing is pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.opts.batch_timeout)
    }

    /// Queues one message; flushes when the batch is full or the consumer is idle.
    /// Returns the flush that happened, if any. `Full` when `max_pending` messages are
    /// already waiting (the message was not queued; the caller keeps it).
    pub fn send_message(&mut self, payload: &[u8]) -> Result<Option<FlushReason>> {
        if self.ends.len() >= self.opts.max_pending {
            // Make room if the ring has some.
            self.flush_as(FlushReason::Demand)?;
            if self.ends.len() >= self.opts.max_pending {
                return Err(Error::new(
                    ErrorKind::Full,
                    "batch processor is full: the ring's consumer is not keeping up",
                ));
            }
        }
        if payload.len() > self.producer.ring().max_payload() {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "message of {} bytes exceeds the ring's maximum payload of {}",
                    payload.len(),
                    self.producer.ring().max_payload()
                ),
            ));
        }
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.first_at.get_or_insert_with(Instant::now);
        if self.ends.len() >= self.opts.batch_size {
            self.flush_as(FlushReason::Size)?;
            return Ok(Some(FlushReason::Size));
        }
        if self.producer.ring().consumer_idle() {
            self.flush_as(FlushReason::Idle)?;
            return Ok(Some(FlushReason::Idle));
        }
        Ok(None)
    }

    /// Flushes when the timeout has passed at `now`. Call it from a timer (the Erlang
    /// gen_server does, on `deadline()`).
    pub fn tick(&mut self, now: Instant) -> Result<Option<FlushReason>> {
        match self.deadline() {
            Some(d) if now >= d => {
                self.flush_as(FlushReason::Timeout)?;
                Ok(Some(FlushReason::Timeout))
            }
            _ => Ok(None),
        }
    }

    /// Sends everything pending that fits; returns how many were sent. What does not fit
    /// stays pending (in order) for the next flush.
    pub fn flush(&mut self) -> Result<usize> {
        self.flush_as(FlushReason::Demand)
    }

    fn flush_as(&mut self, reason: FlushReason) -> Result<usize> {
        if self.ends.is_empty() {
            return Ok(0);
        }
        let mut slices = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            slices.push(&self.data[start..end]);
            start = end;
        }
        let sent = self.producer.send_batch(&slices)?;
        let cut = if sent == 0 { 0 } else { self.ends[sent - 1] };
        self.data.drain(..cut);
        self.ends.drain(..sent);
        for e in &mut self.ends {
            *e -= cut;
        }
        self.stats.sent += sent as u64;
        match reason {
            FlushReason::Size => self.stats.flush_size += 1,
            FlushReason::Timeout => self.stats.flush_timeout += 1,
            FlushReason::Idle => self.stats.flush_idle += 1,
            FlushReason::Demand => self.stats.flush_demand += 1,
        }
        if self.ends.is_empty() {
            self.first_at = None;
        } else {
            self.stats.partial += 1;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Ring, RingOptions};
    use crate::testutil::TempDir;

    fn setup(cap: usize) -> (TempDir, Ring) {
        let dir = TempDir::new("batch");
        let opts = RingOptions {
            capacity: cap,
            ..RingOptions::in_dir(&dir.0)
        };
        // Heap ring under Miri, which cannot map files; the batching logic is the same.
        let ring = if cfg!(miri) {
            Ring::anonymous("b", &opts).unwrap()
        } else {
            Ring::create("b", &opts).unwrap()
        };
        (dir, ring)
    }

    #[test]
    fn flushes_on_size_and_timeout_when_the_consumer_is_busy() {
        let (_d, ring) = setup(1 << 16);
        let mut c = ring.consumer().unwrap();
        let mut b = BatchProcessor::new(
            ring.producer().unwrap(),
            BatchOptions {
                batch_size: 10,
                batch_timeout: Duration::from_millis(5),
                ..Default::default()
            },
        );
        // Keep one unread frame in the ring: the consumer is "busy", not idle.
        b.producer.send(b"unread").unwrap();
        for i in 0..9u8 {
            assert_eq!(b.send_message(&[i]).unwrap(), None);
        }
        assert_eq!(b.send_message(&[9]).unwrap(), Some(FlushReason::Size));
        assert_eq!(b.pending(), 0);
        b.send_message(b"late").unwrap();
        let d = b.deadline().unwrap();
        assert_eq!(b.tick(d - Duration::from_millis(1)).unwrap(), None);
        assert_eq!(b.tick(d).unwrap(), Some(FlushReason::Timeout));
        let mut got = Vec::new();
        c.poll(usize::MAX, |f| got.push(f.to_vec())).unwrap();
        assert_eq!(got.len(), 12);
        assert_eq!(got[11], b"late");
    }

    #[test]
    fn an_idle_consumer_gets_messages_at_once() {
        let (_d, ring) = setup(1 << 16);
        let _c = ring.consumer().unwrap();
        let mut b = BatchProcessor::new(ring.producer().unwrap(), BatchOptions::default());
        assert_eq!(b.send_message(b"x").unwrap(), Some(FlushReason::Idle));
        assert_eq!(b.stats().flush_idle, 1);
    }

    #[test]
    fn a_full_ring_keeps_messages_pending_in_order() {
        let (_d, ring) = setup(4096);
        let mut c = ring.consumer().unwrap();
        let mut b = BatchProcessor::new(
            ring.producer().unwrap(),
            BatchOptions {
                batch_size: 100,
                max_pending: 50,
                ..Default::default()
            },
        );
        b.producer.send(b"busy").unwrap();
        let mut next = 0u32;
        loop {
            match b.send_message(&next.to_le_bytes().repeat(50)) {
                Ok(_) => next += 1,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full);
                    break;
                }
            }
        }
        assert!(b.pending() > 0);
        let mut seen = 0u32;
        let mut first = true;
        while seen < next {
            c.poll(usize::MAX, |f| {
                if first {
                    first = false;
                    return;
                }
                assert_eq!(f, seen.to_le_bytes().repeat(50));
                seen += 1;
            })
            .unwrap();
            b.flush().unwrap();
        }
        assert_eq!(b.pending(), 0);
    }
}
