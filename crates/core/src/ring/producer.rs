//! Producers: attaching to a slot, claiming space, writing and committing frames.

use std::time::{Duration, Instant};

use super::layout::{
    header, ProducerSlot, CHECKSUM_LEN, FRAME_HEADER, SLOT_CLAIMING, SLOT_IDLE, SLOT_OWNED,
};
use super::recovery::{committed_in, tag_last_pos};
use super::{futex, Ring, WaitStrategy};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::{process_alive, process_start_ticks};
use crate::sync::Ordering;

impl Ring {
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
        // (and a reserved word that nothing reads or writes).
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
    /// `last_pos` (see `recovery`). `last_pos` carries the low three bits of the count it goes
    /// with (positions are 8-aligned): a crash between it and `sent` leaves a tag that does
    /// not match `sent`, so recovery knows `sent` does not count that frame yet.
    #[inline(always)]
    fn commit_header(&mut self, pos: u64, len: usize) {
        self.sent += 1;
        self.bytes += len as u64;
        let s = self.slot();
        s.last_pos
            .store(tag_last_pos(pos, self.sent), Ordering::Relaxed);
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
    pub(super) pos: u64,
    len: usize,
    end: u64,
    /// The producer slot that made it (its address): a claim given to another producer is
    /// refused with a panic rather than committed into someone else's range.
    owner: usize,
}

impl RawClaim {
    /// The claimed payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the claim has no payload bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy for [`Claim`], whose `done` flag makes sure it is used once.
    #[inline]
    fn dup(&self) -> RawClaim {
        RawClaim { ..*self }
    }
}

/// Space claimed in the ring for one frame. Commit it, or drop it to abort.
pub struct Claim<'a> {
    producer: &'a mut Producer,
    pub(super) raw: RawClaim,
    done: bool,
}

impl Claim<'_> {
    /// The frame's payload bytes, to write in place. Their content is undefined until
    /// written (old ring data).
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let p = self.producer.raw_payload(&self.raw);
        // SAFETY: the range lies inside the data region and belongs to this claim (see
        // `Producer::write_frame`); the `&mut self` borrow keeps it unique in this process.
        unsafe { std::slice::from_raw_parts_mut(p, self.raw.len) }
    }

    /// Makes the frame visible to consumers.
    #[inline]
    pub fn commit(self) {
        let n = self.raw.len;
        self.commit_len(n);
    }

    /// Commits only the first `n` bytes written (`n` ≤ the claimed length); the rest of the
    /// claim becomes padding.
    #[inline]
    pub fn commit_len(mut self, n: usize) {
        self.done = true;
        self.producer.commit_raw(self.raw.dup(), n);
    }

    /// Gives the space back as padding; nothing is delivered.
    #[inline]
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
