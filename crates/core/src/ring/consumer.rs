//! Consumers and fan-out subscribers: attaching, reading frames in place, acknowledging,
//! waiting, and detecting stalled claims.

use std::time::{Duration, Instant};

use super::layout::{
    decode_header, frame_size, CHECKSUM_LEN, FRAME_HEADER, SLOT_ACTIVE, SLOT_FREE,
};
use super::recovery::Stall;
use super::{futex, Ring, WaitStrategy};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::{process_alive, process_start_ticks};
use crate::sync::{fence, Ordering};

impl Ring {
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
    #[inline]
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Bytes committed or claimed that this consumer has not consumed yet.
    #[inline]
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

    /// The error for the data frame at `pos` whose checksum does not match its payload;
    /// counted.
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
    #[inline]
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
    #[inline]
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
