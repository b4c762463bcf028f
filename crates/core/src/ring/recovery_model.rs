//! Loom models of claim + death + recovery on a multi-producer ring (see `recovery`).
//!
//! Producer A dies after a chosen step of its claim (after recording it, after its CAS,
//! after confirming, after committing); producer B is alive and sends one frame, racing A for
//! the same tail. Then either the consumer recovers the stall (`Ring::recover_stall`) or a
//! new producer takes A's slot over (`Ring::settle_dead_slot`). In every interleaving: B's
//! frame arrives intact exactly once, A's frame arrives exactly when A committed it, and
//! nothing is padded over a frame that somebody else wrote.
//!
//! The model repeats the memory accesses of `Producer::claim_fast` / `commit_header` and of
//! `recovery` with the same orderings, on words that stand for the data region, and calls
//! the production decision [`evidence_end`] and header encoding. Keep them in step.
//!
//! Run with `scripts/loom.sh recovery_model`.

use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::layout::{decode_header, frame_size, header, SLOT_CLAIMING, SLOT_IDLE, SLOT_OWNED};
use super::recovery::evidence_end;

/// Data region: 8 words (64 bytes); no claim here wraps.
const WORDS: usize = 8;
const CAPACITY: u64 = (WORDS * 8) as u64;
/// A claims one 24-byte frame (32 bytes), B one 8-byte frame (16 bytes): different lengths,
/// so a record of one taken for the other's would pad the wrong range.
const A_LEN: usize = 24;
const B_LEN: usize = 8;

struct Slot {
    state: AtomicU32,
    pos: AtomicU64,
    len: AtomicU64,
}

struct Model {
    tail: AtomicU64,
    words: Vec<AtomicU64>,
    slots: [Slot; 2],
    /// B (the live producer) has sent everything.
    b_done: AtomicBool,
    /// Recover as the ring did before claims were confirmed: any dead record covering the
    /// stalled position whose end is below the tail was padded (the model must catch it).
    old_rule: bool,
}

#[derive(Clone, Copy)]
struct Rec {
    state: u32,
    pos: u64,
    len: u64,
    alive: bool,
}

impl Rec {
    fn covers(&self, x: u64) -> bool {
        (self.state == SLOT_CLAIMING || self.state == SLOT_OWNED)
            && self.pos <= x
            && x < self.pos + self.len
    }
}

/// The payload word `i` of producer `p`'s frame.
fn value(p: usize, i: usize) -> u64 {
    0xA0 + 0x10 * p as u64 + i as u64
}

impl Model {
    fn new() -> Model {
        let slot = || Slot {
            state: AtomicU32::new(SLOT_IDLE),
            pos: AtomicU64::new(0),
            len: AtomicU64::new(0),
        };
        Model {
            tail: AtomicU64::new(0),
            words: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
            slots: [slot(), slot()],
            b_done: AtomicBool::new(false),
            old_rule: false,
        }
    }

    fn word(&self, pos: u64) -> &AtomicU64 {
        &self.words[((pos % CAPACITY) / 8) as usize]
    }

    fn committed_at(&self, pos: u64) -> bool {
        decode_header(self.word(pos).load(Ordering::Acquire), pos).is_some()
    }

    /// Producer `p` sends one frame of `len` bytes, dying after step `die_after` (1 =
    /// recorded, 2 = CAS tried, 3 = confirmed, 4 = committed; 5 = never). A live producer
    /// retries a lost CAS like `claim_fast`; one that dies after step 2 stops even if it
    /// lost. True when the frame was committed.
    fn produce(&self, p: usize, len: usize, die_after: u8) -> bool {
        let s = &self.slots[p];
        let size = frame_size(len) as u64;
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            s.pos.store(tail, Ordering::Release);
            s.len.store(size, Ordering::Release);
            s.state.store(SLOT_CLAIMING, Ordering::Release);
            if die_after == 1 {
                return false;
            }
            let won = self
                .tail
                .compare_exchange(tail, tail + size, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if die_after == 2 {
                return false;
            }
            if !won {
                thread::yield_now();
                continue;
            }
            s.state.store(SLOT_OWNED, Ordering::Release);
            if die_after == 3 {
                return false;
            }
            for i in 0..len / 8 {
                self.word(tail + 8 + 8 * i as u64)
                    .store(value(p, i), Ordering::Relaxed);
            }
            self.word(tail)
                .store(header(tail, len, false), Ordering::Release);
            if die_after == 4 {
                return true;
            }
            s.state.store(SLOT_IDLE, Ordering::Release);
            return true;
        }
    }

    fn records(&self, dead: usize) -> [Rec; 2] {
        [0, 1].map(|i| {
            let s = &self.slots[i];
            let state = s.state.load(Ordering::Acquire);
            Rec {
                state,
                pos: s.pos.load(Ordering::Acquire),
                len: s.len.load(Ordering::Acquire),
                alive: i != dead,
            }
        })
    }

    fn clear(&self, i: usize, r: &Rec) {
        let _ = self.slots[i].state.compare_exchange(
            r.state,
            SLOT_IDLE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn pad(&self, pos: u64, end: u64) {
        assert!(pos < end && end - pos <= CAPACITY);
        self.word(pos).store(
            header(pos, (end - pos) as usize - 8, true),
            Ordering::Release,
        );
    }

    /// `Ring::finish_owned`: pad from the first uncommitted frame (walking from `from`).
    fn finish_owned(&self, i: usize, r: &Rec, from: u64) {
        let end = r.pos + r.len;
        let mut pos = r.pos.max(from);
        while pos < end {
            match decode_header(self.word(pos).load(Ordering::Acquire), pos) {
                Some(h) => pos += frame_size(h.len) as u64,
                None => break,
            }
        }
        if pos < end {
            self.pad(pos, end);
        }
        self.clear(i, r);
    }

    /// `Ring::pad_unconfirmed`.
    fn pad_unconfirmed(&self, pos: u64, tail: u64, recs: &[Rec; 2]) -> bool {
        let ends = recs
            .iter()
            .filter(|r| r.state == SLOT_CLAIMING && r.pos == pos)
            .map(|r| r.pos + r.len)
            .filter(|&e| e > pos && e < tail && self.committed_at(e));
        let starts = recs.iter().map(|r| r.pos);
        let Some(end) = evidence_end(pos, tail, CAPACITY, ends.chain(starts)) else {
            return false;
        };
        self.pad(pos, end);
        for (i, r) in recs.iter().enumerate() {
            if r.state == SLOT_CLAIMING && r.pos == pos {
                self.clear(i, r);
            }
        }
        true
    }

    /// `Ring::recover_stall` with slot `dead` dead (the lock is not modelled: one recoverer).
    fn recover_stall(&self, pos: u64, dead: usize) {
        let tail = self.tail.load(Ordering::Acquire);
        if self.committed_at(pos) || tail <= pos {
            return;
        }
        let recs = self.records(dead);
        if self.old_rule {
            for (i, r) in recs.iter().enumerate() {
                if r.covers(pos) && !r.alive && r.pos + r.len <= tail {
                    self.finish_owned(i, r, r.pos);
                }
            }
            return;
        }
        if recs.iter().any(|r| r.covers(pos) && r.alive) {
            return;
        }
        if self.committed_at(pos) {
            return;
        }
        if let Some(i) = (0..2).find(|&i| {
            let r = &recs[i];
            r.covers(pos) && !r.alive && r.state == SLOT_OWNED && r.pos + r.len <= tail
        }) {
            self.finish_owned(i, &recs[i], pos);
            return;
        }
        if recs
            .iter()
            .any(|r| r.state == SLOT_CLAIMING && r.pos == pos && !r.alive)
        {
            assert!(self.pad_unconfirmed(pos, tail, &recs), "sound evidence");
            return;
        }
        panic!("a stall at {pos} that no claim covers: reported as corrupt in production");
    }

    /// `Ring::settle_dead_slot` for slot `dead`; false = undecidable now.
    fn settle_dead_slot(&self, dead: usize, consumer_at: u64) -> bool {
        let recs = self.records(dead);
        let r = recs[dead];
        if r.state != SLOT_CLAIMING && r.state != SLOT_OWNED {
            return true;
        }
        let tail = self.tail.load(Ordering::Acquire);
        if r.state == SLOT_OWNED && r.pos + r.len <= tail {
            self.finish_owned(dead, &r, consumer_at);
            return true;
        }
        if r.pos + r.len > tail || r.pos < consumer_at || self.committed_at(r.pos) {
            self.clear(dead, &r);
            return true;
        }
        let recs = self.records(dead);
        let at = |x: &Rec| (x.state == SLOT_CLAIMING || x.state == SLOT_OWNED) && x.pos == r.pos;
        if recs.iter().any(|x| at(x) && x.state == SLOT_OWNED) || self.committed_at(r.pos) {
            self.clear(dead, &r);
            return true;
        }
        if recs.iter().any(|x| at(x) && x.alive) {
            return false;
        }
        assert!(self.pad_unconfirmed(r.pos, tail, &recs), "sound evidence");
        true
    }

    /// Consumes from `head` until `want` data frames arrived, recovering stalls when
    /// `recover` (slot `dead` is dead). Returns the producers of the frames, in order.
    fn consume(&self, head: &mut u64, want: usize, recover: Option<usize>) -> Vec<usize> {
        let mut got = Vec::new();
        while got.len() < want {
            let pos = *head;
            match decode_header(self.word(pos).load(Ordering::Acquire), pos) {
                Some(h) if h.padding => *head += frame_size(h.len) as u64,
                Some(h) => {
                    let p = match h.len {
                        A_LEN => 0,
                        B_LEN => 1,
                        other => panic!("a frame of {other} bytes: padded over"),
                    };
                    for i in 0..h.len / 8 {
                        let v = self.word(pos + 8 + 8 * i as u64).load(Ordering::Relaxed);
                        assert_eq!(v, value(p, i), "payload of producer {p} intact");
                    }
                    got.push(p);
                    *head += frame_size(h.len) as u64;
                }
                None => {
                    // Everything sent and consumed, yet frames are missing: stop, so that
                    // the caller's check says which (instead of waiting forever).
                    if self.b_done.load(Ordering::Acquire)
                        && *head >= self.tail.load(Ordering::Acquire)
                    {
                        break;
                    }
                    if let Some(dead) = recover {
                        self.recover_stall(pos, dead);
                    }
                    thread::yield_now();
                }
            }
        }
        got
    }
}

/// A dies after `die_after`; B is live and sends two frames; the consumer recovers stalls
/// while B runs.
fn consumer_recovers(die_after: u8, old_rule: bool) {
    loom::model(move || {
        let m = Arc::new(Model {
            old_rule,
            ..Model::new()
        });
        let (ma, mb) = (m.clone(), m.clone());
        let a = thread::spawn(move || ma.produce(0, A_LEN, die_after));
        let b = thread::spawn(move || {
            assert!(mb.produce(1, B_LEN, 5) && mb.produce(1, B_LEN, 5));
            mb.b_done.store(true, Ordering::Release);
        });
        let a_committed = a.join().unwrap(); // A is dead from here on
        let mut head = 0;
        let mut got = m.consume(&mut head, 2 + usize::from(a_committed), Some(0));
        b.join().unwrap();
        got.sort_unstable();
        let want: Vec<usize> = if a_committed {
            vec![0, 1, 1]
        } else {
            vec![1, 1]
        };
        assert_eq!(got, want);
        // Nothing else is in the ring: whatever lies between here and the tail is padding.
        let tail = m.tail.load(Ordering::Acquire);
        while head < tail {
            let h = decode_header(m.word(head).load(Ordering::Acquire), head);
            let h = h.unwrap_or_else(|| {
                m.recover_stall(head, 0);
                decode_header(m.word(head).load(Ordering::Acquire), head).expect("recovered")
            });
            assert!(h.padding, "an unexpected frame at {head}");
            head += frame_size(h.len) as u64;
        }
    });
}

/// A dies after `die_after`; a new producer settles A's slot while B runs; then a consumer
/// (which never recovers anything itself) must get everything. (A consumer running during
/// the takeover as well is too large a model for loom's branch budget.)
fn takeover_settles(die_after: u8) {
    loom::model(move || {
        let m = Arc::new(Model::new());
        let (ma, mb) = (m.clone(), m.clone());
        let a = thread::spawn(move || ma.produce(0, A_LEN, die_after));
        let b = thread::spawn(move || {
            assert!(mb.produce(1, B_LEN, 5));
            mb.b_done.store(true, Ordering::Release);
        });
        let a_committed = a.join().unwrap();
        while !m.settle_dead_slot(0, 0) {
            thread::yield_now();
        }
        b.join().unwrap();
        let mut head = 0;
        let mut got = m.consume(&mut head, 1 + usize::from(a_committed), None);
        got.sort_unstable();
        let want: Vec<usize> = if a_committed { vec![0, 1] } else { vec![1] };
        assert_eq!(got, want);
        let st = m.slots[0].state.load(Ordering::Acquire);
        assert_eq!(st, SLOT_IDLE, "A's slot settled");
    });
}

#[test]
fn recovery_model_death_after_recording() {
    consumer_recovers(1, false);
}

#[test]
fn recovery_model_death_after_the_cas() {
    consumer_recovers(2, false);
}

#[test]
fn recovery_model_death_after_confirming() {
    consumer_recovers(3, false);
}

#[test]
fn recovery_model_death_after_committing() {
    consumer_recovers(4, false);
}

#[test]
fn recovery_model_takeover_after_recording() {
    takeover_settles(1);
}

#[test]
fn recovery_model_takeover_after_the_cas() {
    takeover_settles(2);
}

#[test]
fn recovery_model_takeover_after_confirming() {
    takeover_settles(3);
}

#[test]
#[should_panic(expected = "left == right")]
fn recovery_model_catches_the_old_rule() {
    // A records a claim and dies before its CAS; B claims the same position: the old rule
    // padded B's second frame while B was writing it.
    consumer_recovers(1, true);
}
