//! The agents' load table: one fixed slot per registered agent, in shared memory, so that an
//! agent in another OS process updates its own load and heartbeat with atomics and any process
//! reads every load.
//!
//! # Layout
//!
//! A segment of kind [`SegmentKind::Loads`]: after the segment header page, a table header
//! (magic `EMFLOAD1`, slot count, slot size) and `slot count` slots of [`SLOT_SIZE`] bytes.
//! A slot holds:
//!
//! * `word`: the ownership word, `[owner pid: 32][generation: 30][state: 2]`. The states are
//!   `FREE`, `CLAIMING` (the owner is writing the slot), `RESERVED` (written; the owner is
//!   checking that no other slot holds the same agent id) and `LIVE`. Every change of owner
//!   bumps the generation, so a word names one ownership of one slot ([`SlotRef`]);
//! * written once per ownership, while `CLAIMING`: the agent id (length and up to 25 words of
//!   bytes), its [`Liveness`], `max_tasks`, and the owner process's start time;
//! * changed all the time by the agent: `tasks` (`[generation: 32][current tasks: 32]`),
//!   `latency` (`[generation: 32][latency EWMA in µs: 32]`) and `heartbeat` (µs, the caller's
//!   clock).
//!
//! # Why the reads are consistent enough
//!
//! The fields written once per ownership are guarded by a seqlock on `word`: a reader loads
//! `word` (Acquire), copies the fields (Relaxed atomics), issues an Acquire fence and loads
//! `word` again; a claimer changes `word` (a CAS) and issues a Release fence before it writes
//! them. If the reader saw any byte of a newer ownership, the fence pairing makes it see the
//! newer `word` too, and it retries: an id is never torn and never paired with another
//! agent's liveness. The load counters are per-field atomics carrying the generation they
//! belong to: every update is a CAS that checks it, and a claimer resets them with a swap (a
//! read-modify-write too, so it is ordered after any update it did not fail), so an agent
//! that lost its slot (released, or reclaimed after it was judged dead) cannot change the next
//! owner's counters, and a reader refuses counters of another generation. Two counters of one slot may come from
//! moments a few nanoseconds apart: a load is advice for a scheduling choice, and each counter
//! is exact for some moment within the read. (Only `heartbeat` is a plain store: a stale beat
//! could land in a just re-claimed slot and make its new agent look fresh for one beat.)
//!
//! Everything read from the segment is validated: another process may be hostile, or may
//! have died in the middle of a claim. A slot whose id is not a valid agent id, whose length
//! is out of range or whose liveness kind is unknown is skipped (and never written), unless its
//! owner is dead, when it is reclaimed.
//!
//! # Claiming by agent id
//!
//! An agent id holds at most one slot. [`LoadTable::claim`] (lock-free among different ids):
//!
//! 1. looks for a `RESERVED`/`LIVE` slot with the id: live → `Busy`; its agent dead → freed;
//! 2. takes a `FREE` (or reclaimable) slot `i` with a CAS to `CLAIMING`, writes it, and moves
//!    it to `RESERVED` with a CAS;
//! 3. reads every other slot's word with a read-modify-write (`fetch_add(0, AcqRel)`): of two
//!    claimers of one id, each writes its own word and then read-modify-writes the other's,
//!    so (modification order of the RMWs) at least one sees the other. Seeing the id `LIVE`
//!    or `RESERVED` in a lower slot: lose (free `i`, `Busy`). Seeing it `RESERVED` in a higher
//!    slot: wait until that claimer settles (it sees us and loses, or it did not see us and
//!    goes `LIVE` and we lose). Only lower slots wait for higher ones, so waits cannot cycle.
//! 4. moves `i` to `LIVE` with a CAS.
//!
//! A slot is reclaimable when whoever holds it is dead ([`crate::shm::process_alive`]: pid
//! and process start time from `/proc/<pid>/stat`): a `CLAIMING` slot's owner pid (its start
//! time is not published yet, so a reused pid keeps the slot until that process dies too: a
//! leak, never a theft); a `RESERVED` slot's owner; a `LIVE` slot's agent for
//! [`Liveness::Process`], its owner (the host process) for [`Liveness::Token`].
//!
//! `sched/loads/model.rs` checks the claim and the update/read protocols with loom.

use crate::error::{Error, ErrorKind, Result};
use crate::router::validate_agent_name;
use crate::sync::{fence, AtomicU32, AtomicU64, Backoff, Ordering};

use super::strategy::Candidate;
use super::types::{AgentId, Liveness, Micros, MAX_AGENT_ID_LEN};

#[cfg(not(loom))]
use crate::shm::{Segment, SegmentKind, SegmentOptions};

#[cfg(all(test, loom))]
mod model;

const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const RESERVED: u64 = 2;
const LIVE: u64 = 3;
const GEN_MASK: u64 = (1 << 30) - 1;

/// Words of agent-id bytes in a slot.
const ID_WORDS: usize = MAX_AGENT_ID_LEN.div_ceil(8);

const KIND_PROCESS: u32 = 1;
const KIND_TOKEN: u32 = 2;

/// How many times a reader retries a slot that changes owner under it before skipping it.
const READ_RETRIES: usize = 16;

/// The weight of a new latency sample in the EWMA: 1/8.
const EWMA_SHIFT: u32 = 3;

#[inline]
fn state(w: u64) -> u64 {
    w & 3
}

#[inline]
fn gen(w: u64) -> u64 {
    (w >> 2) & GEN_MASK
}

#[inline]
fn owner(w: u64) -> u32 {
    (w >> 32) as u32
}

#[inline]
fn make(pid: u32, gen: u64, state: u64) -> u64 {
    (u64::from(pid) << 32) | ((gen & GEN_MASK) << 2) | state
}

/// `w`'s slot under a new ownership by `pid` in `state`.
#[inline]
fn successor(w: u64, pid: u32, state: u64) -> u64 {
    make(pid, gen(w) + 1, state)
}

/// The generation tag that the counters of an ownership carry.
#[inline]
fn tag(w: u64) -> u64 {
    gen(w) << 32
}

/// One agent's slot. Every field is an atomic: other processes read and write it.
#[repr(C, align(64))]
pub(crate) struct Slot {
    word: AtomicU64,
    /// `[generation: 32][current tasks: 32]`.
    tasks: AtomicU64,
    /// `[generation: 32][latency EWMA µs: 32]`.
    latency: AtomicU64,
    heartbeat: AtomicU64,
    max_tasks: AtomicU32,
    /// `[liveness kind: 16][id length: 16]`.
    kind_len: AtomicU32,
    live_a: AtomicU64,
    live_b: AtomicU64,
    owner_start: AtomicU64,
    id: [AtomicU64; ID_WORDS],
}

/// Bytes of one slot in the segment.
pub const SLOT_SIZE: usize = 320;
// The shared layout is fixed; loom's atomics are larger model objects and the loom build
// never maps a table (it checks `loads::model`), so the size check holds outside loom.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);

impl Slot {
    fn new() -> Slot {
        Slot {
            word: AtomicU64::new(0),
            tasks: AtomicU64::new(0),
            latency: AtomicU64::new(0),
            heartbeat: AtomicU64::new(0),
            max_tasks: AtomicU32::new(0),
            kind_len: AtomicU32::new(0),
            live_a: AtomicU64::new(0),
            live_b: AtomicU64::new(0),
            owner_start: AtomicU64::new(0),
            id: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One ownership of one slot: what [`LoadTable::claim`] returns and the agent's handle for
/// its updates. Plain numbers, so a host can hand it to the agent's process
/// ([`SlotRef::to_raw`]); [`LoadTable::find`] gives it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotRef {
    index: u32,
    word: u64,
}

impl SlotRef {
    /// The slot's index in the table.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// The slot's index and ownership word, e.g. to hand them to another process.
    pub fn to_raw(&self) -> (u32, u64) {
        (self.index, self.word)
    }

    /// A slot reference from [`SlotRef::to_raw`]'s numbers. Nothing is trusted: every use
    /// checks the index and that the slot is still held under this word.
    pub fn from_raw(index: u32, word: u64) -> SlotRef {
        SlotRef { index, word }
    }
}

/// One agent's load as the table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLoad {
    /// The agent's slot.
    pub slot: SlotRef,
    /// How the agent is told alive.
    pub liveness: Liveness,
    /// Current tasks, capacity and latency EWMA, as [`super::Strategy::select`] wants them.
    pub candidate: Candidate,
    /// The agent's last heartbeat (µs of the clock its agent and readers agreed on).
    pub heartbeat: Micros,
}

/// The bytes of an agent id read out of a slot.
struct IdBuf {
    len: usize,
    bytes: [u8; ID_WORDS * 8],
}

impl IdBuf {
    fn as_str(&self) -> Option<&str> {
        let s = std::str::from_utf8(&self.bytes[..self.len]).ok()?;
        validate_agent_name(s).ok().map(|()| s)
    }
}

/// A consistent copy of a `RESERVED` or `LIVE` slot's fields written at claim time.
struct View {
    word: u64,
    id: IdBuf,
    liveness: Option<Liveness>,
    owner_start: u64,
}

/// Where the slots live (held, never read: `LoadTable::slots` points into it).
#[allow(dead_code)]
enum Backing {
    #[cfg(not(loom))]
    Shm(Segment),
    Heap(Box<[Slot]>),
}

/// The table header at the start of the segment's body.
#[repr(C)]
struct TableHeader {
    magic: [u8; 8],
    slot_count: u32,
    slot_size: u32,
    _reserved: [u64; 6],
}

// The loom build never maps a table.
#[cfg_attr(loom, allow(dead_code))]
const TABLE_MAGIC: [u8; 8] = *b"EMFLOAD1";
/// Offset of the first slot in the body.
const SLOTS_OFF: usize = 64;
const _: () = assert!(std::mem::size_of::<TableHeader>() == SLOTS_OFF);

/// The most slots a table may have.
pub const MAX_SLOTS: usize = 1 << 16;

/// A table of agents' loads (see the module documentation).
pub struct LoadTable {
    slots: *const Slot,
    len: usize,
    me: u32,
    my_start: u64,
    _backing: Backing,
}

// SAFETY: the slots are atomics only (valid for any bit pattern, shared by design), and the
// backing (a mapped segment or a boxed slice) lives as long as the table and is never moved
// out from under `slots` (a box's heap memory and a mapping do not move).
unsafe impl Send for LoadTable {}
// SAFETY: as above: `&LoadTable` hands out only shared references to atomics.
unsafe impl Sync for LoadTable {}

impl std::fmt::Debug for LoadTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadTable")
            .field("slots", &self.len)
            .finish()
    }
}

fn check_slots(slots: usize) -> Result<()> {
    if slots == 0 || slots > MAX_SLOTS {
        return Err(Error::invalid(format!(
            "a load table has 1-{MAX_SLOTS} slots, not {slots}"
        )));
    }
    Ok(())
}

impl LoadTable {
    /// A table of `slots` slots in this process's memory: for one process (threads, tests,
    /// simulations). Same protocol as a shared one.
    pub fn in_memory(slots: usize) -> Result<LoadTable> {
        check_slots(slots)?;
        let b: Box<[Slot]> = (0..slots).map(|_| Slot::new()).collect();
        let ptr = b.as_ptr();
        Ok(LoadTable::with_backing(ptr, slots, Backing::Heap(b)))
    }

    fn with_backing(slots: *const Slot, len: usize, backing: Backing) -> LoadTable {
        let me = std::process::id();
        LoadTable {
            slots,
            len,
            me,
            my_start: my_start_ticks(me),
            _backing: backing,
        }
    }

    /// Creates the shared table `name` (a segment name) of `slots` slots in `opts.dir`. A
    /// stale table of the same name (no live participant) is replaced; a live one is `Busy`.
    #[cfg(not(loom))]
    pub fn create(name: &str, slots: usize, opts: &SegmentOptions) -> Result<LoadTable> {
        check_slots(slots)?;
        let len = crate::shm::HEADER_LEN + SLOTS_OFF + slots * SLOT_SIZE;
        let seg = Segment::create(name, SegmentKind::Loads, len, opts, |body, n| {
            debug_assert!(n >= SLOTS_OFF + slots * SLOT_SIZE);
            let h = TableHeader {
                magic: TABLE_MAGIC,
                slot_count: slots as u32,
                slot_size: SLOT_SIZE as u32,
                _reserved: [0; 6],
            };
            // SAFETY: `body` is the fresh, unshared body of at least SLOTS_OFF bytes, page
            // aligned; the slots after it are zero (ftruncate), which is a free slot.
            unsafe { body.cast::<TableHeader>().write(h) };
        })?;
        let ptr = seg.body().wrapping_add(SLOTS_OFF).cast::<Slot>();
        Ok(LoadTable::with_backing(ptr, slots, Backing::Shm(seg)))
    }

    /// Opens the shared table `name` in `opts.dir`, checking its header.
    #[cfg(not(loom))]
    pub fn open(name: &str, opts: &SegmentOptions) -> Result<LoadTable> {
        let seg = Segment::open(name, SegmentKind::Loads, opts)?;
        Self::from_segment(seg, name)
    }

    /// Every live agent's load in the shared table `name`, read from outside: the segment is
    /// mapped without attaching and nothing is written (`erlmcp-flow agents show`). The same
    /// reads as [`LoadTable::snapshot`].
    #[cfg(not(loom))]
    pub fn inspect(name: &str, opts: &SegmentOptions) -> Result<Vec<(AgentId, AgentLoad)>> {
        let seg = Segment::inspect(name, opts)?;
        let kind = seg.header().kind;
        if kind != SegmentKind::Loads as u32 {
            return Err(Error::corrupt(format!(
                "{}: a segment of kind {kind}, not a load table",
                seg.path().display()
            )));
        }
        Ok(Self::from_segment(seg, name)?.snapshot())
    }

    /// Checks the table header of `seg` and makes the table of it.
    #[cfg(not(loom))]
    fn from_segment(seg: Segment, name: &str) -> Result<LoadTable> {
        if seg.body_len() < SLOTS_OFF {
            return Err(Error::corrupt(format!("load table {name:?} is too small")));
        }
        // SAFETY: the body has at least SLOTS_OFF bytes (checked above) and is page aligned;
        // the header is integers and bytes, valid for any bit pattern, copied once by a
        // volatile read and only the copy is checked and used. The creator wrote it before
        // marking the segment ready, which `Segment::open` observed.
        let h = unsafe { seg.body().cast::<TableHeader>().read_volatile() };
        if h.magic != TABLE_MAGIC {
            return Err(Error::corrupt(format!(
                "{name:?} is not a load table (bad magic)"
            )));
        }
        if h.slot_size as usize != SLOT_SIZE {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "load table {name:?} has slots of {} bytes, this build uses {SLOT_SIZE}",
                    h.slot_size
                ),
            ));
        }
        let slots = h.slot_count as usize;
        check_slots(slots)
            .map_err(|_| Error::corrupt(format!("load table {name:?} claims {slots} slots")))?;
        if SLOTS_OFF + slots * SLOT_SIZE > seg.body_len() {
            return Err(Error::corrupt(format!(
                "load table {name:?} claims {slots} slots, its segment holds {}",
                (seg.body_len() - SLOTS_OFF) / SLOT_SIZE
            )));
        }
        let ptr = seg.body().wrapping_add(SLOTS_OFF).cast::<Slot>();
        Ok(LoadTable::with_backing(ptr, slots, Backing::Shm(seg)))
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.len
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: `slots` points at `len` slots inside the backing (checked against the
        // segment's length at open/create, or a boxed slice of exactly `len`), which lives as
        // long as `self`; a slot is atomics only, valid for any bit pattern, and other
        // processes change it only through atomics.
        unsafe { std::slice::from_raw_parts(self.slots, self.len) }
    }

    fn slot(&self, s: SlotRef) -> Result<&Slot> {
        self.slots().get(s.index()).ok_or_else(|| {
            Error::invalid(format!(
                "load slot {} is out of range (the table has {})",
                s.index, self.len
            ))
        })
    }

    /// Copies the claim-time fields of `slot` under the seqlock, starting from word `w`
    /// (already read with Acquire or an AcqRel RMW). `None` when the slot changed owner
    /// meanwhile.
    fn read_fields(slot: &Slot, w: u64) -> Option<View> {
        let kind_len = slot.kind_len.load(Ordering::Relaxed);
        let live_a = slot.live_a.load(Ordering::Relaxed);
        let live_b = slot.live_b.load(Ordering::Relaxed);
        let owner_start = slot.owner_start.load(Ordering::Relaxed);
        let len = (kind_len & 0xFFFF) as usize;
        let mut id = IdBuf {
            len: len.min(MAX_AGENT_ID_LEN + 1),
            bytes: [0; ID_WORDS * 8],
        };
        for (i, word) in slot
            .id
            .iter()
            .enumerate()
            .take(len.min(MAX_AGENT_ID_LEN).div_ceil(8))
        {
            id.bytes[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        fence(Ordering::Acquire);
        if slot.word.load(Ordering::Relaxed) != w {
            return None;
        }
        let liveness = match kind_len >> 16 {
            KIND_PROCESS if live_a <= u64::from(u32::MAX) => Some(Liveness::Process {
                pid: live_a as u32,
                start_time: live_b,
            }),
            KIND_TOKEN => Some(Liveness::Token(live_a)),
            _ => None,
        };
        Some(View {
            word: w,
            id,
            liveness,
            owner_start,
        })
    }

    /// A consistent view of slot `i` if it is `RESERVED` or `LIVE`, with its word.
    fn view(&self, slot: &Slot) -> Option<View> {
        for _ in 0..READ_RETRIES {
            let w = slot.word.load(Ordering::Acquire);
            if !matches!(state(w), RESERVED | LIVE) {
                return None;
            }
            if let Some(v) = Self::read_fields(slot, w) {
                return Some(v);
            }
        }
        None
    }

    /// Whether the holder of a slot in word `w` (with its view, when published) is dead.
    fn holder_dead(&self, w: u64, view: Option<&View>) -> bool {
        match (state(w), view) {
            (FREE, _) => false,
            (CLAIMING, _) => !process_alive(owner(w), 0),
            (LIVE, Some(v)) => match v.liveness {
                Some(Liveness::Process { pid, start_time }) => !process_alive(pid, start_time),
                _ => !process_alive(owner(w), v.owner_start),
            },
            (_, Some(v)) => !process_alive(owner(w), v.owner_start),
            // Published but not readable consistently: judged again on the next look.
            (_, None) => false,
        }
    }

    /// Frees slot `slot` held under `w` (a CAS: nothing happens if it changed meanwhile).
    fn free(slot: &Slot, w: u64) -> bool {
        slot.word
            .compare_exchange(
                w,
                make(0, gen(w) + 1, FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Claims a slot for `agent` with capacity `max_tasks` (at least 1), its load at zero
    /// and its heartbeat at `now`. `Busy` when another live slot holds `agent` (a slot whose
    /// agent is dead is reclaimed instead), `Full` when every slot is held by a live agent.
    pub fn claim(
        &self,
        agent: &AgentId,
        liveness: Liveness,
        max_tasks: u32,
        now: Micros,
    ) -> Result<SlotRef> {
        if max_tasks == 0 {
            return Err(Error::invalid(format!(
                "agent {agent} must have a capacity of at least 1 task"
            )));
        }
        let id = agent.as_str().as_bytes();
        // 1. An existing slot of this id.
        for (j, slot) in self.slots().iter().enumerate() {
            let Some(v) = self.view(slot) else { continue };
            if v.id.bytes[..v.id.len] != *id {
                continue;
            }
            if self.holder_dead(v.word, Some(&v)) {
                Self::free(slot, v.word);
                continue;
            }
            return Err(Error::new(
                ErrorKind::Busy,
                format!("agent {agent} already holds load slot {j}"),
            ));
        }
        // 2. Take a free or reclaimable slot.
        let (i, slot, w) = self.take_slot(agent)?;
        fence(Ordering::Release);
        let (kind, a, b) = match liveness {
            Liveness::Process { pid, start_time } => (KIND_PROCESS, u64::from(pid), start_time),
            Liveness::Token(t) => (KIND_TOKEN, t, 0),
        };
        // Only the words the id covers (readers read no further); the last one zero-padded.
        for (word, part) in slot.id.iter().zip(id.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..part.len()].copy_from_slice(part);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        slot.kind_len
            .store((kind << 16) | id.len() as u32, Ordering::Relaxed);
        slot.live_a.store(a, Ordering::Relaxed);
        slot.live_b.store(b, Ordering::Relaxed);
        slot.owner_start.store(self.my_start, Ordering::Relaxed);
        slot.max_tasks.store(max_tasks, Ordering::Relaxed);
        // Read-modify-writes, not stores: each is ordered after every update that came
        // before it (a stale owner's CAS either precedes it or fails on its new tag).
        slot.tasks.swap(tag(w), Ordering::Relaxed);
        slot.latency.swap(tag(w), Ordering::Relaxed);
        slot.heartbeat.store(now, Ordering::Relaxed);
        let reserved = make(self.me, gen(w), RESERVED);
        if slot
            .word
            .compare_exchange(w, reserved, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("load slot {i} was reclaimed while agent {agent} claimed it"),
            ));
        }
        // 3. No other slot may hold the id.
        if let Err(e) = self.check_unique(i, id, agent) {
            Self::free(slot, reserved);
            return Err(e);
        }
        // 4. Live.
        let live = make(self.me, gen(w), LIVE);
        if slot
            .word
            .compare_exchange(reserved, live, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("load slot {i} was reclaimed while agent {agent} claimed it"),
            ));
        }
        Ok(SlotRef {
            index: i as u32,
            word: live,
        })
    }

    /// Step 2 of a claim: a free or reclaimable slot, moved to `CLAIMING` by this process.
    fn take_slot(&self, agent: &AgentId) -> Result<(usize, &Slot, u64)> {
        for (i, slot) in self.slots().iter().enumerate() {
            let w = slot.word.load(Ordering::Acquire);
            let takeable = match state(w) {
                FREE => true,
                CLAIMING => self.holder_dead(w, None),
                _ => match self.view(slot) {
                    Some(v) if v.word == w => self.holder_dead(w, Some(&v)),
                    _ => false,
                },
            };
            if !takeable {
                continue;
            }
            let claiming = successor(w, self.me, CLAIMING);
            if slot
                .word
                .compare_exchange(w, claiming, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok((i, slot, claiming));
            }
        }
        Err(Error::new(
            ErrorKind::Full,
            format!(
                "no free load slot for agent {agent}: all {} are held by live agents",
                self.len
            ),
        ))
    }

    /// Step 3 of a claim of slot `i` for `id`: every other slot's word is read with a
    /// read-modify-write (see the module documentation).
    fn check_unique(&self, i: usize, id: &[u8], agent: &AgentId) -> Result<()> {
        let busy = |j: usize| {
            Err(Error::new(
                ErrorKind::Busy,
                format!("agent {agent} is being claimed in load slot {j} too"),
            ))
        };
        for (j, slot) in self.slots().iter().enumerate() {
            if j == i {
                continue;
            }
            let backoff = Backoff::new();
            loop {
                let w = slot.word.fetch_add(0, Ordering::AcqRel);
                if !matches!(state(w), RESERVED | LIVE) {
                    break;
                }
                let Some(v) = Self::read_fields(slot, w) else {
                    continue; // changed meanwhile: look again
                };
                if v.id.bytes[..v.id.len] != *id {
                    break;
                }
                if self.holder_dead(w, Some(&v)) {
                    Self::free(slot, w);
                    continue;
                }
                if state(w) == LIVE || j < i {
                    return busy(j);
                }
                // A higher slot reserved for the same id: it sees us and gives up, or it
                // did not and goes live (then we give up). Wait until it settles.
                backoff.snooze();
            }
        }
        Ok(())
    }

    /// Gives up slot `s` (the agent unregisters). `NotFound` when it is no longer held under
    /// `s` (released already, or reclaimed after its agent was judged dead).
    pub fn release(&self, s: SlotRef) -> Result<()> {
        let slot = self.slot(s)?;
        if state(s.word) == LIVE && Self::free(slot, s.word) {
            Ok(())
        } else {
            Err(not_held(s))
        }
    }

    /// The live slot of `agent`, if any: how an agent process finds the slot its scheduler
    /// claimed for it.
    pub fn find(&self, agent: &AgentId) -> Option<SlotRef> {
        let id = agent.as_str().as_bytes();
        self.slots().iter().enumerate().find_map(|(i, slot)| {
            let v = self.view(slot)?;
            (state(v.word) == LIVE && v.liveness.is_some() && v.id.bytes[..v.id.len] == *id)
                .then_some(SlotRef {
                    index: i as u32,
                    word: v.word,
                })
        })
    }

    /// Adds `delta` to slot `s`'s current tasks (saturating at 0 and `u32::MAX`) and, with
    /// `latency_us`, folds a latency sample into its EWMA (weight 1/8; the first sample is
    /// taken as is). Returns the new current task count. `NotFound` when the slot is no
    /// longer held under `s`.
    pub fn update(&self, s: SlotRef, delta: i32, latency_us: Option<u64>) -> Result<u32> {
        let slot = self.slot(s)?;
        if slot.word.load(Ordering::Acquire) != s.word || state(s.word) != LIVE {
            return Err(not_held(s));
        }
        let t = tag(s.word);
        let mut cur = slot.tasks.load(Ordering::Relaxed);
        let current = loop {
            if cur & !0xFFFF_FFFF != t {
                return Err(not_held(s));
            }
            let c = cur as u32;
            let n = if delta < 0 {
                c.saturating_sub(delta.unsigned_abs())
            } else {
                c.saturating_add(delta as u32)
            };
            match slot.tasks.compare_exchange_weak(
                cur,
                t | u64::from(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break n,
                Err(now) => cur = now,
            }
        };
        if let Some(sample) = latency_us {
            let sample = sample.min(u64::from(u32::MAX)) as i64;
            let mut cur = slot.latency.load(Ordering::Relaxed);
            loop {
                if cur & !0xFFFF_FFFF != t {
                    return Err(not_held(s));
                }
                let old = (cur & 0xFFFF_FFFF) as i64;
                let new = if old == 0 {
                    sample
                } else {
                    old + ((sample - old) >> EWMA_SHIFT)
                };
                match slot.latency.compare_exchange_weak(
                    cur,
                    t | new as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
        Ok(current)
    }

    /// Records a heartbeat of slot `s`'s agent at `now` (never moves it backwards).
    /// `NotFound` when the slot is no longer held under `s`.
    pub fn heartbeat(&self, s: SlotRef, now: Micros) -> Result<()> {
        let slot = self.slot(s)?;
        if slot.word.load(Ordering::Acquire) != s.word || state(s.word) != LIVE {
            return Err(not_held(s));
        }
        slot.heartbeat.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// The load of slot `s` as a candidate for [`super::Strategy::select`]; `None` when the
    /// slot is no longer held under `s`. The scheduler's hot path: a few atomic loads.
    #[inline]
    pub fn load(&self, s: SlotRef) -> Option<Candidate> {
        let slot = self.slots().get(s.index())?;
        if slot.word.load(Ordering::Acquire) != s.word {
            return None;
        }
        let max_tasks = slot.max_tasks.load(Ordering::Relaxed);
        let tasks = slot.tasks.load(Ordering::Relaxed);
        let latency = slot.latency.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let t = tag(s.word);
        if slot.word.load(Ordering::Relaxed) != s.word
            || tasks & !0xFFFF_FFFF != t
            || latency & !0xFFFF_FFFF != t
        {
            return None;
        }
        Some(Candidate {
            current_tasks: tasks as u32,
            max_tasks,
            latency_us: latency & 0xFFFF_FFFF,
        })
    }

    /// Every live agent's load, read slot by slot (each slot consistent as the module
    /// documentation says). Slots whose bytes do not validate are left out.
    pub fn snapshot(&self) -> Vec<(AgentId, AgentLoad)> {
        let mut out = Vec::new();
        for (i, slot) in self.slots().iter().enumerate() {
            let Some(v) = self.view(slot) else { continue };
            if state(v.word) != LIVE {
                continue;
            }
            let s = SlotRef {
                index: i as u32,
                word: v.word,
            };
            let (Some(id), Some(liveness), Some(candidate)) =
                (v.id.as_str(), v.liveness, self.load(s))
            else {
                continue;
            };
            let Ok(agent) = AgentId::new(id) else {
                continue;
            };
            let heartbeat = slot.heartbeat.load(Ordering::Relaxed);
            out.push((
                agent,
                AgentLoad {
                    slot: s,
                    liveness,
                    candidate,
                    heartbeat,
                },
            ));
        }
        out
    }

    /// Frees the slots whose holders are dead (see the module documentation); returns how
    /// many.
    pub fn reclaim_dead(&self) -> usize {
        let mut n = 0;
        for slot in self.slots() {
            let w = slot.word.load(Ordering::Acquire);
            let dead = match state(w) {
                FREE => false,
                CLAIMING => self.holder_dead(w, None),
                _ => match self.view(slot) {
                    Some(v) if v.word == w => self.holder_dead(w, Some(&v)),
                    _ => false,
                },
            };
            if dead && Self::free(slot, w) {
                n += 1;
            }
        }
        n
    }
}

fn not_held(s: SlotRef) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "load slot {} is no longer held (released, or reclaimed after its agent died)",
            s.index
        ),
    )
}

#[cfg(not(loom))]
fn process_alive(pid: u32, start: u64) -> bool {
    crate::shm::process_alive(pid, start)
}

#[cfg(not(loom))]
fn my_start_ticks(pid: u32) -> u64 {
    crate::shm::process_start_ticks(pid)
}

// Models run in one process, which is alive; no `/proc` reads inside a loom model.
#[cfg(loom)]
fn process_alive(pid: u32, _start: u64) -> bool {
    pid == std::process::id()
}

#[cfg(loom)]
fn my_start_ticks(_pid: u32) -> u64 {
    1
}

#[cfg(all(test, not(loom)))]
mod tests;
