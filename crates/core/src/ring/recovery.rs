//! Recovery of claims left by dead producers: who may pad which range, and how many frames a
//! dead producer committed.
//!
//! # The claim protocol this relies on
//!
//! A producer records a claim in its slot *before* making it: `pending_pos` (the tail it
//! read), `pending_len` and then `state = CLAIMING`. On a
//! single-producer ring the claim is then made by a plain store of the tail, so a dead
//! producer's record is its own exactly when `pending_pos + pending_len <= tail`. On a
//! multi-producer ring the claim is a CAS on the tail that may fail because another producer
//! claimed from the same tail first; only after the CAS succeeded does the producer store
//! `state = OWNED`, and it writes nothing into the range before that store. Before each
//! frame's header it stores `last_pos` (the frame's position, tagged in its three low bits
//! with the low bits of the new count) and then `sent`. A crash between the two leaves a tag
//! that does not match `sent`: `sent` is then exact. A crash after both but before the header
//! leaves `sent` counting one frame too many; recovery sees the matching tag, decides
//! whether that frame's header was written and, if not, marks `last_pos` as [`NOT_WRITTEN`]
//! (see [`committed_in`]).
//!
//! # What recovery may pad
//!
//! * An `OWNED` record of a dead producer (or a single producer's `CLAIMING` record whose
//!   end is at or below the tail): the range is the dead producer's. Frames it committed are
//!   kept; padding starts at the first uncommitted one.
//! * A `CLAIMING` record of a dead multi-ring producer proves nothing by itself: the
//!   producer may have died before its CAS, or lost it. Such a producer wrote nothing, so if
//!   it did win, the first uncommitted position is exactly its `pending_pos` — call it `p`.
//!   Records at `p` are then resolved as follows: when some live producer records `p`, or a
//!   dead one holds `p` as `OWNED`, or the header at `p` is committed, the range belongs to
//!   somebody else (stale record). Otherwise the winner of the CAS from `p` is one of the dead
//!   unconfirmed producers at `p` and wrote nothing: its range is `[p, e)` where `e` is the
//!   next tail value after `p`. Recovery does not trust any record's length for `e`: it takes
//!   the smallest position above `p` that is *known* to be a tail value — the current tail,
//!   any slot's `pending_pos` above `p` (each was read from the tail), or the end of a
//!   recorded claim at `p` whose header is committed. Tail values only grow, so every one of
//!   them is at least `e`, and `e` itself is among them ([`evidence_end`]).
//! * A record of a dead multi-ring producer that starts below the first uncommitted position
//!   but is not `OWNED` is stale (a winner that never confirmed wrote nothing, so nobody
//!   could have passed its start), and is cleared.
//! * Nothing covers a stalled position although the tail is past it: the header there was
//!   damaged. That is reported as corruption, never padded.
//!
//! Every recovery runs under the ring's recovery lock (`RingShared::recovery_lock`, held by
//! one thread of one process; a holder that died is replaced). With the lock held nobody else
//! can pad, so a range judged unfinished stays unfinished (and unconsumed, since consumers
//! never pass an uncommitted header) until this recovery writes it: a delayed recoverer can
//! never pad over a later lap. Padding is written from the end of a range to its start, so a
//! recoverer that dies half way leaves the first header uncommitted and the next one redoes
//! it.

use std::time::{Duration, Instant};

use super::layout::{decode_header, ProducerSlot, SLOT_CLAIMING, SLOT_IDLE, SLOT_OWNED};
use super::Ring;
use crate::shm::{process_alive, process_start_ticks};
use crate::sync::Ordering;

/// One producer slot's claim record, read field by field.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub(super) state: u32,
    pub(super) pos: u64,
    pub(super) len: u64,
    pid: u32,
    ticks: u64,
}

impl Record {
    pub(super) fn read(s: &ProducerSlot) -> Record {
        // The state first: a record seen in a later state than the one its position belongs
        // to is harmless (a live producer moves its record only after committing, and every
        // decision re-reads the header after reading the records).
        let state = s.state.load(Ordering::Acquire);
        Record {
            state,
            pos: s.pending_pos.load(Ordering::Acquire),
            len: u64::from(s.pending_len.load(Ordering::Acquire)),
            pid: s.pid.load(Ordering::Acquire),
            ticks: s.start_ticks.load(Ordering::Acquire),
        }
    }

    /// Recording or holding a claim.
    fn claiming(&self) -> bool {
        self.state == SLOT_CLAIMING || self.state == SLOT_OWNED
    }

    fn covers(&self, x: u64) -> bool {
        self.claiming() && self.pos <= x && x < self.pos.saturating_add(self.len)
    }

    fn alive(&self) -> bool {
        self.pid != 0 && process_alive(self.pid, self.ticks)
    }
}

/// The end of the range a dead, unconfirmed winner claimed from `pos`: the smallest value
/// above `pos` among values known to be tail values (see the module docs). `None` when no
/// such value is sound (damaged records).
pub(super) fn evidence_end(
    pos: u64,
    tail: u64,
    capacity: u64,
    known_tail_values: impl IntoIterator<Item = u64>,
) -> Option<u64> {
    let e = known_tail_values
        .into_iter()
        .filter(|&v| v > pos)
        .fold(tail, u64::min);
    (e > pos && e <= tail && e - pos <= capacity && e % 8 == 0 && pos % 8 == 0).then_some(e)
}

/// `ProducerSlot::last_pos` after a recovery found that the last frame counted in `sent`
/// was never written (never a tagged position: its low bits would name count 7 at a
/// position of all ones, which no 8-aligned ring reaches).
pub(super) const NOT_WRITTEN: u64 = u64::MAX;

/// `last_pos` as a producer stores it: the frame's (8-aligned) position with the low three
/// bits of the count that includes the frame.
#[inline(always)]
pub(super) fn tag_last_pos(pos: u64, count: u64) -> u64 {
    debug_assert_eq!(pos % 8, 0);
    pos | (count & 7)
}

/// The position in a `last_pos` word, if the count stored in `sent` includes that frame
/// (its tag matches `sent`); `None` when the producer died before storing `sent` (which is
/// then exact), or when a recovery already settled the frame.
pub(super) fn counted_last_pos(raw: u64, sent: u64) -> Option<u64> {
    (raw != NOT_WRITTEN && raw & 7 == sent & 7).then_some(raw & !7)
}

/// Frames committed through a producer slot: `sent`, less the frame a dead producer
/// announced but never wrote.
pub(super) fn committed_in(s: &ProducerSlot) -> u64 {
    let sent = s.sent.load(Ordering::Acquire);
    sent - u64::from(s.last_pos.load(Ordering::Acquire) == NOT_WRITTEN && sent > 0)
}

/// What a stalled consumer should do after [`Ring::recover_stall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// Something changed at the position (committed or padded): look again.
    Progress,
    /// A live producer is still writing (or recovery is under way elsewhere): keep waiting.
    Wait,
    /// The tail is past the position and nothing can ever commit it: the header is damaged.
    Corrupt,
}

/// The recovery lock, released on drop.
pub(super) struct RecoveryGuard<'a> {
    ring: &'a Ring,
}

impl Drop for RecoveryGuard<'_> {
    fn drop(&mut self) {
        let sh = self.ring.shared();
        sh.recovery_ticks.store(0, Ordering::Relaxed);
        sh.recovery_lock.store(0, Ordering::Release);
    }
}

/// This process's lock token: pid and start time, so that a holder whose pid was reused is
/// still seen as dead.
fn my_token() -> (u64, u64) {
    let me = std::process::id();
    let ticks = process_start_ticks(me);
    (u64::from(me) << 32 | (ticks & 0xffff_ffff), ticks)
}

fn holder_alive(token: u64, ticks: u64) -> bool {
    let pid = (token >> 32) as u32;
    if !process_alive(pid, ticks) {
        return false;
    }
    // The low 32 bits of the holder's start time are in the token itself (`recovery_ticks`
    // may not be written yet, or may belong to a holder it replaced).
    let lo = token & 0xffff_ffff;
    let now = process_start_ticks(pid);
    lo == 0 || now == 0 || now & 0xffff_ffff == lo
}

impl Ring {
    /// Takes the recovery lock, waiting at most `patience` for a live holder; a dead holder
    /// is replaced. `None` when another live thread or process keeps holding it.
    pub(super) fn lock_recovery(&self, patience: Duration) -> Option<RecoveryGuard<'_>> {
        let sh = self.shared();
        let (token, ticks) = my_token();
        let deadline = Instant::now() + patience;
        loop {
            let cur = sh.recovery_lock.load(Ordering::Acquire);
            let free = cur == 0
                || (cur != token && !holder_alive(cur, sh.recovery_ticks.load(Ordering::Acquire)));
            if free
                && sh
                    .recovery_lock
                    .compare_exchange(cur, token, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                sh.recovery_ticks.store(ticks, Ordering::Release);
                return Some(RecoveryGuard { ring: self });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::yield_now();
        }
    }

    fn records(&self) -> Vec<Record> {
        (0..self.inner.max_producers)
            .map(|i| Record::read(self.producer_slot(i)))
            .collect()
    }

    /// A data or padding frame is committed at `pos` in this lap.
    fn committed_at(&self, pos: u64) -> bool {
        decode_header(self.header_at(pos).load(Ordering::Acquire), pos).is_some()
    }

    /// The dead owner of record `r` provably holds its range.
    fn owns(&self, r: &Record, tail: u64) -> bool {
        let sound = r.pos % 8 == 0
            && r.len % 8 == 0
            && r.len > 0
            && r.len <= self.inner.capacity
            && r.pos.saturating_add(r.len) <= tail;
        sound && (r.state == SLOT_OWNED || (!self.inner.mpsc && r.state == SLOT_CLAIMING))
    }

    /// The primary consumer's position: everything below it was committed, and the data at
    /// and above it is intact (producers never claim a lap past the slowest consumer).
    fn primary_position(&self) -> u64 {
        self.subscriber_slot(0).position.load(Ordering::Acquire)
    }

    /// Clears slot `i`'s record if it still is `r` (nobody took the slot meanwhile).
    fn clear_record(&self, i: usize, r: &Record) {
        let _ = self.producer_slot(i).state.compare_exchange(
            r.state,
            SLOT_IDLE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// A consumer has seen no committed frame at `pos` for the stall timeout although the
    /// tail is past it. Pads the range there if its producer provably died holding it.
    pub(super) fn recover_stall(&self, pos: u64) -> Stall {
        let Some(_guard) = self.lock_recovery(Duration::ZERO) else {
            return Stall::Wait;
        };
        let tail = self.shared().tail.load(Ordering::Acquire);
        if self.committed_at(pos) || tail <= pos {
            return Stall::Progress;
        }
        let recs = self.records();
        if recs.iter().any(|r| r.covers(pos) && r.alive()) {
            return Stall::Wait;
        }
        // A live owner that moved its record on had committed `pos` first.
        if self.committed_at(pos) {
            return Stall::Progress;
        }
        if let Some(i) = recs
            .iter()
            .position(|r| r.covers(pos) && self.owns(r, tail))
        {
            self.finish_owned(i, &recs[i]);
            return Stall::Progress;
        }
        if self.inner.mpsc
            && recs
                .iter()
                .any(|r| r.state == SLOT_CLAIMING && r.pos == pos)
        {
            if self.pad_unconfirmed(pos, tail, &recs) {
                return Stall::Progress;
            }
            return Stall::Corrupt;
        }
        // Unconfirmed records that start below `pos` lost their CAS: clear them.
        for (i, r) in recs.iter().enumerate() {
            if r.covers(pos) && self.inner.mpsc && r.state == SLOT_CLAIMING {
                self.clear_record(i, r);
            }
        }
        Stall::Corrupt
    }

    /// Settles the record of producer slot `i`, whose owner is dead, before the slot is taken
    /// over: pads what it provably owned, counts what it committed, clears a stale record.
    /// False when that cannot be decided yet (a live producer recorded the same position and
    /// has not confirmed); the slot must not be taken then.
    pub(super) fn settle_dead_slot(&self, i: usize) -> bool {
        let r = Record::read(self.producer_slot(i));
        if !r.claiming() {
            return true;
        }
        let tail = self.shared().tail.load(Ordering::Acquire);
        if self.owns(&r, tail) {
            self.finish_owned(i, &r);
            return true;
        }
        let stale = !self.inner.mpsc
            || r.state != SLOT_CLAIMING
            || r.pos % 8 != 0
            || r.pos.saturating_add(r.len) > tail
            || r.pos < self.primary_position();
        if stale || self.committed_at(r.pos) {
            self.clear_record(i, &r);
            return true;
        }
        let recs = self.records();
        let at = |x: &Record| x.claiming() && x.pos == r.pos;
        if recs.iter().any(|x| at(x) && x.state == SLOT_OWNED) || self.committed_at(r.pos) {
            self.clear_record(i, &r);
            return true;
        }
        if recs.iter().any(|x| at(x) && x.alive()) {
            return false;
        }
        if !self.pad_unconfirmed(r.pos, tail, &recs) {
            // Damaged records; nothing provable to pad. Free the slot, keep the data.
            self.clear_record(i, &r);
        }
        true
    }

    /// The winner of the CAS from `pos` died before confirming and wrote nothing: pads its
    /// range and clears every dead unconfirmed record at `pos`. False when the range cannot
    /// be bounded soundly.
    fn pad_unconfirmed(&self, pos: u64, tail: u64, recs: &[Record]) -> bool {
        let ends = recs
            .iter()
            .filter(|r| r.state == SLOT_CLAIMING && r.pos == pos)
            .map(|r| r.pos.saturating_add(r.len))
            .filter(|&e| e % 8 == 0 && e > pos && e < tail && self.committed_at(e));
        let starts = recs.iter().map(|r| r.pos).filter(|&p| p % 8 == 0);
        let Some(end) = evidence_end(pos, tail, self.inner.capacity, ends.chain(starts)) else {
            return false;
        };
        self.pad_range(pos, end);
        for (i, r) in recs.iter().enumerate() {
            if r.state == SLOT_CLAIMING && r.pos == pos {
                self.clear_record(i, r);
            }
        }
        self.shared().unblocked.fetch_add(1, Ordering::Relaxed);
        self.wake_data_after(false);
        true
    }

    /// Settles a dead producer's provably owned claim `r` in slot `i`: its `sent` count is
    /// made exact, the uncommitted rest of the range becomes padding, the record is cleared.
    fn finish_owned(&self, i: usize, r: &Record) {
        let s = self.producer_slot(i);
        let end = r.pos + r.len;
        // Count: `sent` announced each frame before its header; when the last announced
        // frame's header was never written, mark it so (`NOT_WRITTEN`), once: the decision
        // is made before any padding, so a recoverer that dies after it and the next one
        // agree, and `sent` itself is never rewritten.
        // Frames commit in order, each announced before its header: of this claim's
        // announced frames only the last can lack its header, and it belongs to this claim
        // exactly when its position lies in the claim's range.
        // A frame whose tag does not match `sent` was never counted: nothing to settle.
        let counted = counted_last_pos(
            s.last_pos.load(Ordering::Acquire),
            s.sent.load(Ordering::Acquire),
        );
        if let Some(last) = counted.filter(|last| (r.pos..end).contains(last)) {
            let written = last < self.primary_position()
                || decode_header(self.header_at(last).load(Ordering::Acquire), last)
                    .is_some_and(|h| !h.padding);
            if !written {
                s.last_pos.store(NOT_WRITTEN, Ordering::Release);
            }
        }
        // Pad from the first uncommitted frame. Walk from where the primary consumer stands
        // (below it, the data may already belong to a later lap).
        let cap = self.inner.capacity;
        loop {
            let mut pos = r.pos.max(self.primary_position());
            while pos < end {
                match decode_header(self.header_at(pos).load(Ordering::Acquire), pos) {
                    Some(h) => {
                        let size = self.frame_bytes(h.len, h.padding) as u64;
                        if size > cap - (pos & (cap - 1)) || pos + size > end {
                            break;
                        }
                        pos += size;
                    }
                    None => break,
                }
            }
            if pos >= end {
                break;
            }
            // The walk stopped at an uncommitted header; had consumers passed it and
            // producers lapped it meanwhile, the tail would be a lap past it. Otherwise it
            // stays uncommitted (nobody else pads while we hold the lock).
            if self.shared().tail.load(Ordering::Acquire) <= pos + cap {
                self.pad_range(pos, end);
                self.shared().unblocked.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.clear_record(i, r);
        self.wake_data_after(false);
    }
}
