//! Tests of the durable ledgers: round trips, torn tails, bit flips, compaction, ownership,
//! and a child process killed with SIGKILL in the middle of its appends.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::codec::tests::every_kind;
use super::shm::LEDGER_HEADER;
use super::*;
use crate::error::ErrorKind;
use crate::priority::Priority;
use crate::sched::types::{AgentId, AgentType, Ledger, LedgerRecord, MemLedger, TaskId};
use crate::shm::SegmentOptions;
use crate::testutil::TempDir;

fn shm_opts(dir: &Path, capacity: usize) -> ShmLedgerOptions {
    ShmLedgerOptions {
        capacity,
        segment: SegmentOptions {
            dir: dir.to_owned(),
            ..Default::default()
        },
    }
}

/// A small deterministic generator (SplitMix64) for the seeded tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn accepted(id: u64, payload_len: usize) -> LedgerRecord {
    LedgerRecord::Accepted {
        id: TaskId(id),
        agent_type: AgentType::new("coder").unwrap(),
        priority: Priority::Normal,
        payload: vec![id as u8; payload_len],
    }
}

/// The records a workload appends: each step accepts a new task, leases it, and completes
/// the oldest one once more than `window` are live. Deterministic given where it starts
/// (the replay of the ledger), so the parent of a killed child can recompute what the child
/// appended.
struct Workload {
    live: VecDeque<u64>,
    next: u64,
    window: usize,
    pending: VecDeque<LedgerRecord>,
}

impl Workload {
    fn after(replayed: &[LedgerRecord], window: usize) -> Workload {
        let (live, max) = summary(replayed);
        Workload {
            live: live.keys().map(|t| t.0).collect(),
            next: max.map_or(1, |m| m.0 + 1),
            window,
            pending: VecDeque::new(),
        }
    }
}

impl Iterator for Workload {
    type Item = LedgerRecord;
    fn next(&mut self) -> Option<LedgerRecord> {
        if self.pending.is_empty() {
            let id = self.next;
            self.next += 1;
            self.pending.push_back(accepted(id, (id % 40) as usize));
            self.pending.push_back(LedgerRecord::Leased {
                id: TaskId(id),
                agent: AgentId::new("agent-1").unwrap(),
                attempt: 1,
                deadline: id * 1000,
            });
            self.live.push_back(id);
            if self.live.len() > self.window {
                let old = self.live.pop_front().unwrap();
                self.pending.push_back(LedgerRecord::Completed {
                    id: TaskId(old),
                    result: vec![7; (old % 13) as usize],
                });
            }
        }
        self.pending.pop_front()
    }
}

// ---------------------------------------------------------------------------------------
// ShmLedger

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_every_kind_round_trips_and_survives_reopening() {
    let dir = TempDir::new("ledger-rt");
    let opts = shm_opts(&dir.0, 1 << 16);
    let mut l = ShmLedger::open("rt", &opts).unwrap();
    assert!(l.replay().unwrap().is_empty());
    for r in every_kind() {
        l.append(&r).unwrap();
    }
    l.append_batch(&every_kind()).unwrap();
    let mut want = every_kind();
    want.extend(every_kind());
    assert_eq!(l.replay().unwrap(), want);
    assert_eq!(
        ShmLedger::open("rt", &opts).unwrap_err().kind(),
        ErrorKind::Busy,
        "one owner at a time"
    );
    drop(l);
    let mut l = ShmLedger::open("rt", &opts).unwrap();
    assert_eq!(l.replay().unwrap(), want);
    l.append(&accepted(9, 3)).unwrap();
    want.push(accepted(9, 3));
    assert_eq!(l.replay().unwrap(), want);
    drop(l);
    ShmLedger::remove("rt", &opts.segment).unwrap();
    assert!(ShmLedger::open("rt", &opts)
        .unwrap()
        .replay()
        .unwrap()
        .is_empty());
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_torn_appends_are_ignored_and_overwritten() {
    let dir = TempDir::new("ledger-torn");
    let opts = shm_opts(&dir.0, 1 << 16);
    let base: Vec<_> = (1..=3).map(|i| accepted(i, 5)).collect();
    let long = accepted(4, 3000);
    let mut cuts = vec![0, 1, 4, 7, 8, 9, 100, 2999];
    cuts.push(usize::MAX); // every byte but the commit word
    for cut in cuts {
        let name = format!("torn{cut}");
        let mut l = ShmLedger::open(&name, &opts).unwrap();
        l.append_batch(&base).unwrap();
        l.append_torn(&long, cut);
        assert_eq!(l.replay().unwrap(), base, "cut {cut}");
        // Killed: the next owner takes over, ignores the torn frame and appends after the
        // last committed one; a short frame must not expose the torn frame's bytes.
        l.forge_dead_owner();
        std::mem::forget(l);
        let mut l = ShmLedger::open(&name, &opts).unwrap();
        assert_eq!(l.replay().unwrap(), base, "cut {cut}");
        let short = LedgerRecord::Released {
            id: TaskId(1),
            reason: String::new(),
        };
        l.append(&short).unwrap();
        l.append(&short).unwrap();
        let mut want = base.clone();
        want.extend([short.clone(), short]);
        assert_eq!(l.replay().unwrap(), want, "cut {cut}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_flipped_bytes_never_replay_a_record_that_was_not_appended() {
    let dir = TempDir::new("ledger-flip");
    let opts = shm_opts(&dir.0, 4096);
    let mut l = ShmLedger::open("flip", &opts).unwrap();
    let records = every_kind();
    // The extent of each committed frame (commit word to the end of its body).
    let mut frames = Vec::new();
    for r in &records {
        let start = l.used();
        l.append(r).unwrap();
        let mut f = Vec::new();
        codec::encode_frame(r, &mut f).unwrap();
        frames.push(LEDGER_HEADER + start..LEDGER_HEADER + start + 4 + f.len());
    }
    let end = LEDGER_HEADER + l.used() + 64;
    let (mut corrupt, mut ok) = (0, 0);
    for off in 0..end {
        for x in [0xFFu8, 0x01, 0x80] {
            let p = l.byte_ptr(off);
            // SAFETY: test-only; `p` is inside the mapping and this process owns the ledger.
            unsafe { *p ^= x };
            let got = l.replay();
            // SAFETY: as above (restores the byte).
            unsafe { *p ^= x };
            let in_frame = frames.iter().any(|f| f.contains(&off));
            match got {
                Ok(v) => {
                    assert!(
                        !in_frame,
                        "flip {x:#x} at {off} in a committed frame replayed"
                    );
                    assert!(records.starts_with(&v), "flip {x:#x} at {off}: {v:?}");
                    ok += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                        "{e}"
                    );
                    corrupt += 1;
                }
            }
        }
    }
    assert!(corrupt > 0 && ok > 0);
    assert_eq!(l.replay().unwrap(), records);
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_compaction_keeps_the_live_tasks_and_the_max_id_or_answers_full() {
    let dir = TempDir::new("ledger-compact");
    let opts = shm_opts(&dir.0, 4096);
    let mut l = ShmLedger::open("c", &opts).unwrap();
    let mut model = MemLedger::new();
    // About 100 KB of records through 4 KB: only compaction lets them in.
    let mut compactions = 0;
    for r in Workload::after(&[], 6).take(3000) {
        let before = l.used();
        l.append(&r).unwrap();
        model.append(&r).unwrap();
        compactions += usize::from(l.used() < before);
    }
    assert!(compactions > 20, "{compactions}");
    let all = model.replay().unwrap();
    let got = l.replay().unwrap();
    assert_eq!(compact(&got), compact(&all));
    assert_eq!(summary(&got), summary(&all));
    drop(l);
    let mut l = ShmLedger::open("c", &opts).unwrap();
    assert_eq!(summary(&l.replay().unwrap()), summary(&all));
    // Tasks that never end fill it up: Full, and the refused record is not appended.
    let mut id = 100_000;
    let err = loop {
        id += 1;
        match l.append(&accepted(id, 50)) {
            Ok(()) => model.append(&accepted(id, 50)).unwrap(),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    assert_eq!(
        summary(&l.replay().unwrap()),
        summary(&model.replay().unwrap())
    );
    // Ending a task makes room again.
    let done = LedgerRecord::Completed {
        id: TaskId(100_001),
        result: vec![],
    };
    l.append(&done).unwrap();
    model.append(&done).unwrap();
    l.append(&accepted(id, 0)).unwrap();
    model.append(&accepted(id, 0)).unwrap();
    assert_eq!(
        summary(&l.replay().unwrap()),
        summary(&model.replay().unwrap())
    );
    let too_big = accepted(id + 1, 5000);
    assert_eq!(l.append(&too_big).unwrap_err().kind(), ErrorKind::TooLarge);
}

/// A random record about task `id`: any kind, with fields of random sizes.
fn random_record(rng: &mut Rng, id: u64) -> LedgerRecord {
    let id = TaskId(id);
    let n = rng.below(60) as usize;
    match rng.below(5) {
        0 => LedgerRecord::Accepted {
            id,
            agent_type: AgentType::new("t").unwrap(),
            priority: Priority::High,
            payload: vec![7; n],
        },
        1 => LedgerRecord::Leased {
            id,
            agent: AgentId::new("a-1").unwrap(),
            attempt: rng.below(4) as u32,
            deadline: rng.next(),
        },
        2 => LedgerRecord::Released {
            id,
            reason: "r".repeat(n),
        },
        3 => LedgerRecord::Completed {
            id,
            result: vec![1; n],
        },
        _ => LedgerRecord::DeadLettered {
            id,
            reason: "d".repeat(n),
        },
    }
}

fn frame_bytes(r: &LedgerRecord) -> usize {
    let mut f = Vec::new();
    codec::encode_frame(r, &mut f).unwrap();
    (4 + f.len() + 7) & !7
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_compaction_from_the_index_equals_compact_of_the_segment() {
    // Random workloads (every record kind, ends, duplicate ends, records after an end, huge
    // ids, reopenings) through random small capacities: after every append the ledger holds
    // exactly what the reference says, byte for byte in its framing: appended, or
    // `compact(what it held)` followed by the record, or unchanged with `Full`.
    let dir = TempDir::new("ledger-index");
    let mut compactions = 0;
    for seed in 0..12u64 {
        let mut rng = Rng(seed);
        let cap = 1024 + 8 * rng.below(400) as usize;
        let opts = shm_opts(&dir.0, cap);
        let name = format!("p{seed}");
        let mut l = ShmLedger::open(&name, &opts).unwrap();
        let mut model: Vec<LedgerRecord> = Vec::new();
        let mut all: Vec<LedgerRecord> = Vec::new();
        let mut next = 1u64;
        let sane = seed % 2 == 0;
        let mut ended = std::collections::BTreeSet::new();
        let mut used: Vec<u64> = Vec::new();
        let mut live: Vec<u64> = Vec::new();
        let (mut fulls, mut steps) = (0, 0);
        for step in 0..1500 {
            let pick = rng.below(10);
            let id = if live.is_empty() || pick < 2 {
                // A new task; now and then far above the others.
                next += if rng.below(10) == 0 {
                    1 + rng.below(1 << 40)
                } else {
                    1
                };
                used.push(next);
                live.push(next);
                next
            } else if pick < 9 {
                live[rng.below(live.len() as u64) as usize]
            } else {
                used[rng.below(used.len() as u64) as usize]
            };
            let mut r = random_record(&mut rng, id);
            if (2..9).contains(&pick) && rng.below(3) == 0 {
                // Live tasks end soon enough to leave room.
                r = LedgerRecord::Completed {
                    id: TaskId(id),
                    result: vec![3; rng.below(20) as usize],
                };
            }
            if ended.contains(&id) && !ends_task(&r) && (sane || rng.below(20) != 0) {
                // Sane workloads only repeat ends after an end; the others now and then
                // append another record (it outlives compactions that no longer hold the end).
                r = LedgerRecord::Completed {
                    id: TaskId(id),
                    result: vec![],
                };
            } else if ended.contains(&id) && !ends_task(&r) && !live.contains(&id) {
                // Such a task looks live again once a compaction drops its end: end it again.
                live.push(id);
            }
            let before = l.used();
            let need = frame_bytes(&r);
            match l.append(&r) {
                Ok(()) if before + need <= cap => model.push(r.clone()),
                Ok(()) => {
                    model = compact(&model);
                    model.push(r.clone());
                    compactions += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full, "{e}");
                    let c: usize = compact(&model).iter().map(frame_bytes).sum();
                    assert!(c + need > cap, "Full but {c} + {need} fit {cap}");
                    fulls += 1;
                    continue;
                }
            }
            steps += 1;
            if ends_task(&r) {
                ended.insert(id);
                live.retain(|&t| t != id);
            }
            all.push(r);
            assert_eq!(l.replay().unwrap(), model, "seed {seed} step {step}");
            assert_eq!(l.used(), model.iter().map(frame_bytes).sum::<usize>());
            if sane {
                assert_eq!(compact(&model), compact(&all), "seed {seed} step {step}");
            }
            if rng.below(100) == 0 {
                // Reopen: the index is rebuilt by the scan.
                drop(l);
                l = ShmLedger::open(&name, &opts).unwrap();
                assert_eq!(l.replay().unwrap(), model);
            }
            if rng.below(50) == 0 {
                l.compact().unwrap();
                model = compact(&model);
                compactions += 1;
                assert_eq!(l.replay().unwrap(), model);
            }
        }
        assert!(steps > 1000, "seed {seed}: {steps} appends, {fulls} Full");
    }
    assert!(compactions > 500, "{compactions}");
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_compaction_refuses_a_kept_frame_damaged_since_its_append() {
    let dir = TempDir::new("ledger-damaged");
    let opts = shm_opts(&dir.0, 4096);
    let mut l = ShmLedger::open("d", &opts).unwrap();
    l.append(&accepted(1, 10)).unwrap();
    l.append(&accepted(2, 10)).unwrap();
    let path = l.path().to_owned();
    // A byte of task 1's payload (the frame at 0: commit, len, crc, then the body).
    let p = l.byte_ptr(LEDGER_HEADER + 4 + 8 + 20);
    // SAFETY: test-only; inside the mapping, this process owns the ledger.
    unsafe { *p ^= 1 };
    let before = std::fs::read(&path).unwrap();
    assert_eq!(l.compact().unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing replaced");
    // SAFETY: as above (restores the byte).
    unsafe { *p ^= 1 };
    l.compact().unwrap();
    assert_eq!(l.replay().unwrap(), vec![accepted(1, 10), accepted(2, 10)]);
}

#[test]
#[ignore = "a benchmark: prints the time of compactions of a full 16 MiB ledger"]
fn shm_compaction_time() {
    // `cargo test --release -p erlmcp-flow --lib shm_compaction_time -- --ignored --nocapture`
    let name = format!("bench-compact-{}", std::process::id());
    let opts = ShmLedgerOptions::default();
    let mut l = ShmLedger::open(&name, &opts).unwrap();
    let mut times = Vec::new();
    let mut plain = Vec::new();
    for r in Workload::after(&[], 64).take(3_000_000) {
        let before = l.used();
        let t = Instant::now();
        l.append(&r).unwrap();
        let e = t.elapsed();
        if l.used() < before {
            times.push(e);
        } else {
            plain.push(e);
        }
    }
    drop(l);
    ShmLedger::remove(&name, &opts.segment).unwrap();
    times.sort();
    plain.sort();
    println!(
        "ShmLedger 16 MiB, 64 live tasks: {} compactions, median {:?}, max {:?}; {} plain \
         appends, median {:?}, p99 {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        plain.len(),
        plain[plain.len() / 2],
        plain[plain.len() * 99 / 100],
    );
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_inspect_reads_a_consistent_prefix_while_the_owner_appends_and_compacts() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering}; // std-atomic-ok: test coordination, never modelled
    let dir = TempDir::new("ledger-inspect");
    let opts = shm_opts(&dir.0, 4096);
    let all: Vec<LedgerRecord> = Workload::after(&[], 6).take(3000).collect();
    // Every prefix of this workload has its own summary (each record changes it), so an
    // inspection names exactly one prefix.
    let prefixes: std::collections::HashMap<_, usize> = (0..=all.len())
        .map(|k| (format!("{:?}", summary(&all[..k])), k))
        .collect();
    assert_eq!(prefixes.len(), all.len() + 1);
    let l = ShmLedger::open("ins", &opts).unwrap();
    let inspections = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let (compactions, seen) = std::thread::scope(|s| {
        let owner = s.spawn(|| {
            let mut l = l;
            let mut compactions = 0;
            for (i, r) in all.iter().enumerate() {
                // Between chunks, wait for one more inspection, so that inspections
                // certainly fall in the middle of the run; within a chunk they race.
                if i % 100 == 0 {
                    let n = inspections.load(Ordering::Acquire);
                    while inspections.load(Ordering::Acquire) == n {
                        std::thread::yield_now();
                    }
                }
                let before = l.used();
                l.append(r).unwrap();
                compactions += usize::from(l.used() < before);
            }
            done.store(true, Ordering::Release);
            compactions
        });
        let mut seen = Vec::new();
        loop {
            let finished = done.load(Ordering::Acquire);
            let got = ShmLedger::inspect("ins", &opts.segment).unwrap();
            let k = *prefixes
                .get(&format!("{:?}", summary(&got)))
                .unwrap_or_else(|| panic!("an inspection that is no prefix: {got:?}"));
            seen.push(k);
            inspections.fetch_add(1, Ordering::Release);
            if finished {
                break;
            }
        }
        (owner.join().unwrap(), seen)
    });
    assert!(compactions > 20, "{compactions}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "inspections go forward"
    );
    assert_eq!(*seen.last().unwrap(), all.len());
    // The inspection that ends the owner's wait at record 100·j (j = 2..=29) started after
    // the owner's wait at 100·(j-1) began: it saw 100 to 2900 records.
    let middle = seen.iter().filter(|&&k| (100..=2900).contains(&k)).count();
    assert!(middle >= 28, "{middle} inspections during the run");
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shm_inspect_writes_nothing_and_refuses_what_is_not_a_ledger() {
    let dir = TempDir::new("ledger-inspect-err");
    let opts = shm_opts(&dir.0, 1 << 16);
    let seg = &opts.segment;
    assert_eq!(
        ShmLedger::inspect("missing", seg).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let mut l = ShmLedger::open("ok", &opts).unwrap();
    l.append_batch(&every_kind()).unwrap();
    let path = l.path().to_owned();
    let before = std::fs::read(&path).unwrap();
    assert_eq!(ShmLedger::inspect("ok", seg).unwrap(), every_kind());
    assert_eq!(std::fs::read(&path).unwrap(), before, "not a byte written");
    // The owner is still the owner, and a compaction shows the compacted records.
    l.append(&accepted(50, 1)).unwrap();
    l.compact().unwrap();
    let got = ShmLedger::inspect("ok", seg).unwrap();
    assert_eq!(got, l.replay().unwrap());
    // A damaged commit word: Corrupt.
    // SAFETY: in bounds (checked by byte_ptr); this test owns the ledger.
    unsafe { *l.byte_ptr(LEDGER_HEADER + 1) ^= 0x40 };
    assert_eq!(
        ShmLedger::inspect("ok", seg).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    // Garbage under a ledger's name: too short for a header, or a header that is no
    // segment's.
    let garbage = crate::shm::segment_path(&dir.0, "ledger.junk");
    std::fs::write(&garbage, b"not a ledger").unwrap();
    assert_eq!(
        ShmLedger::inspect("junk", seg).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let mut rng = Rng(12);
    let bytes: Vec<u8> = (0..3 * crate::shm::HEADER_LEN)
        .map(|_| rng.next() as u8)
        .collect();
    std::fs::write(&garbage, bytes).unwrap();
    assert_eq!(
        ShmLedger::inspect("junk", seg).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

/// The child of [`shm_survives_sigkill_at_any_moment`]: appends the workload as fast as it
/// can and records, after each append returned, how many it has done (8 bytes to the report
/// file with one `write`, which a SIGKILL cannot tear). Runs until killed.
#[test]
#[ignore = "the child process of shm_survives_sigkill_at_any_moment"]
fn ledger_kill_child() {
    let (Ok(dir), Ok(report)) = (
        std::env::var("EMF_LEDGER_CHILD_DIR"),
        std::env::var("EMF_LEDGER_CHILD_REPORT"),
    ) else {
        panic!("run by shm_survives_sigkill_at_any_moment only");
    };
    let opts = shm_opts(Path::new(&dir), KILL_CAPACITY);
    let mut l = ShmLedger::open("kill", &opts).unwrap();
    let start = l.replay().unwrap();
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(&report)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (n, r) in Workload::after(&start, KILL_WINDOW).enumerate() {
        l.append(&r).unwrap();
        out.write_all(&(n as u64 + 1).to_le_bytes()).unwrap();
        assert!(Instant::now() < deadline, "never killed");
    }
}

const KILL_CAPACITY: usize = 32 << 10;
const KILL_WINDOW: usize = 10;

/// A child process, killed (SIGKILL) and reaped on drop if the test fails early.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reported(report: &Path) -> u64 {
    let b = std::fs::read(report).unwrap();
    let n = b.len() / 8;
    if n == 0 {
        return 0;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[(n - 1) * 8..n * 8]);
    let v = u64::from_le_bytes(a);
    assert_eq!(v, n as u64, "one report per append, in order");
    v
}

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn shm_survives_sigkill_at_any_moment() {
    let dir = TempDir::new("ledger-kill");
    let opts = shm_opts(&dir.0, KILL_CAPACITY);
    let exe = std::env::current_exe().unwrap();
    let seed = std::env::var("EMF_LEDGER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ed9e5);
    let mut rng = Rng(seed);
    let mut start: Vec<LedgerRecord> = Vec::new();
    // Each round takes some 20 ms; EMF_LEDGER_ROUNDS runs more (scripts or a long soak).
    let rounds = std::env::var("EMF_LEDGER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    for round in 0..rounds {
        let report = dir.0.join(format!("report-{round}"));
        std::fs::write(&report, b"").unwrap();
        let mut child = Child(
            std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "sched::ledger::durable_tests::ledger_kill_child",
                    "--test-threads=1",
                ])
                .env("EMF_LEDGER_CHILD_DIR", &dir.0)
                .env("EMF_LEDGER_CHILD_REPORT", &report)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        // Kill it once it has done a random number of appends (compactions happen every few
        // hundred), a random moment later.
        let target = 1 + rng.below(4000);
        let deadline = Instant::now() + Duration::from_secs(60);
        while reported(&report) < target {
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "round {round}: the child exited"
            );
            assert!(
                Instant::now() < deadline,
                "round {round}: the child is stuck"
            );
            std::thread::yield_now();
        }
        // A live owner keeps the ledger.
        assert_eq!(
            ShmLedger::open("kill", &opts).unwrap_err().kind(),
            ErrorKind::Busy,
            "round {round}"
        );
        for _ in 0..rng.below(20_000) {
            std::hint::spin_loop();
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let n = reported(&report) as usize;
        // `shm gc` keeps a ledger whose processes are all dead.
        let gc = crate::shm::gc(&dir.0).unwrap();
        let seg = crate::shm::segment_path(&dir.0, "ledger.kill");
        assert!(
            !gc.removed.contains(&seg),
            "round {round}: gc removed the ledger"
        );
        // Take over the dead child's lock and replay.
        let l = ShmLedger::open("kill", &opts).unwrap();
        let got = l.replay().unwrap();
        let appended: Vec<_> = Workload::after(&start, KILL_WINDOW).take(n + 1).collect();
        let with = |m: usize| {
            let mut all = start.clone();
            all.extend_from_slice(&appended[..m]);
            compact(&all)
        };
        let c = compact(&got);
        assert!(
            c == with(n) || c == with(n + 1),
            "round {round} (seed {seed}): {n} appends reported, the replay matches neither \
             {n} nor {} of them",
            n + 1
        );
        // No temporary segment of the dead child is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".new-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        start = got;
        drop(l);
        let _ = pid;
    }
}

// ---------------------------------------------------------------------------------------
// FileLedger

/// Opens a file ledger, retrying while it is `Busy` for a moment: another test of this
/// process that spawns a child (the SIGKILL test) shares every open file, and so the lock,
/// with the child between its fork and its exec.
fn open_file(path: &Path, opts: &FileLedgerOptions) -> crate::Result<FileLedger> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match FileLedger::open(path, opts) {
            Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            r => return r,
        }
    }
}

fn file_opts(compact_at: u64) -> FileLedgerOptions {
    FileLedgerOptions { compact_at }
}

#[test]
#[cfg_attr(miri, ignore = "syncs files")]
fn file_every_kind_round_trips_in_batches() {
    let dir = TempDir::new("fledger-rt");
    let path = dir.0.join("l");
    let mut l = open_file(&path, &FileLedgerOptions::default()).unwrap();
    assert!(l.is_empty() && l.replay().unwrap().is_empty());
    let all = every_kind();
    l.append(&all[0]).unwrap();
    l.append_batch(&all[1..4]).unwrap();
    l.append_batch(&[]).unwrap();
    l.append_batch(&all[4..]).unwrap();
    assert_eq!(l.replay().unwrap(), all);
    assert_eq!(
        FileLedger::open(&path, &FileLedgerOptions::default())
            .unwrap_err()
            .kind(),
        ErrorKind::Busy
    );
    drop(l);
    let mut l = open_file(&path, &FileLedgerOptions::default()).unwrap();
    assert_eq!(l.replay().unwrap(), all);
    l.append(&all[0]).unwrap();
    assert_eq!(l.replay().unwrap().len(), all.len() + 1);
    // Not a ledger: refused, not overwritten.
    let other = dir.0.join("other");
    std::fs::write(&other, b"some other file of more than sixteen bytes").unwrap();
    let e = FileLedger::open(&other, &FileLedgerOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

/// Writes a ledger of three batches; returns its bytes, the batches, and the length of the
/// file before the last batch.
fn three_batches(path: &Path) -> (Vec<u8>, Vec<Vec<LedgerRecord>>, usize) {
    let all = every_kind();
    let batches = vec![all[..2].to_vec(), all[2..3].to_vec(), all[3..].to_vec()];
    let mut l = open_file(path, &FileLedgerOptions::default()).unwrap();
    let mut before_last = 0;
    for b in &batches {
        before_last = l.len() as usize;
        l.append_batch(b).unwrap();
    }
    drop(l);
    (std::fs::read(path).unwrap(), batches, before_last)
}

#[test]
#[cfg_attr(miri, ignore = "syncs files")]
fn file_torn_tails_are_truncated() {
    let dir = TempDir::new("fledger-torn");
    let path = dir.0.join("l");
    let (bytes, batches, before_last) = three_batches(&path);
    let first_two: Vec<_> = batches[..2].concat();
    let mut rng = Rng(7);
    for cut in before_last..bytes.len() {
        // A crash in the middle of the last write: a prefix of it, or (the pages of a write
        // reach the disk in any order) the whole length with a zeroed stretch.
        let mut torn = bytes[..cut].to_vec();
        if cut > before_last + 1 && rng.below(2) == 0 {
            let a = before_last + rng.below((cut - before_last) as u64) as usize;
            let mut holed = bytes.clone();
            holed[a..cut].fill(0);
            if holed != bytes {
                torn = holed;
            }
        }
        std::fs::write(&path, &torn).unwrap();
        let mut l = open_file(&path, &FileLedgerOptions::default()).unwrap();
        assert_eq!(l.replay().unwrap(), first_two, "cut {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            before_last
        );
        l.append_batch(&batches[2]).unwrap();
        assert_eq!(l.replay().unwrap(), batches.concat(), "cut {cut}");
    }
    // A torn file header (the creator died while writing it) is a new ledger.
    std::fs::write(&path, &bytes[..5]).unwrap();
    let l = open_file(&path, &FileLedgerOptions::default()).unwrap();
    assert!(l.replay().unwrap().is_empty());
}

#[test]
#[cfg_attr(miri, ignore = "syncs files")]
fn file_flipped_bytes_are_corrupt_or_a_torn_tail() {
    let dir = TempDir::new("fledger-flip");
    let path = dir.0.join("l");
    let (bytes, batches, before_last) = three_batches(&path);
    let first_two: Vec<_> = batches[..2].concat();
    for off in 0..bytes.len() {
        for x in [0xFFu8, 0x01] {
            let mut b = bytes.clone();
            b[off] ^= x;
            std::fs::write(&path, &b).unwrap();
            match open_file(&path, &FileLedgerOptions::default()) {
                Ok(l) => {
                    // Only damage to the last group reads as a torn tail.
                    assert!(off >= before_last, "flip {x:#x} at {off} was not detected");
                    assert_eq!(l.replay().unwrap(), first_two, "flip {x:#x} at {off}");
                }
                Err(e) => {
                    assert!(off < before_last, "flip {x:#x} at {off}: {e}");
                    assert!(
                        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                        "{e}"
                    );
                }
            }
        }
    }
    // Damage behind an open ledger's back, even to its last group, is Corrupt on replay.
    std::fs::write(&path, &bytes).unwrap();
    let l = open_file(&path, &FileLedgerOptions::default()).unwrap();
    for off in [20, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[off] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(l.replay().unwrap_err().kind(), ErrorKind::Corrupt, "{off}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "syncs files")]
fn file_compaction_keeps_the_live_tasks_and_the_max_id() {
    let dir = TempDir::new("fledger-compact");
    let path = dir.0.join("l");
    let mut l = open_file(&path, &file_opts(8192)).unwrap();
    let mut model = MemLedger::new();
    let work: Vec<_> = Workload::after(&[], 5).take(2000).collect();
    for batch in work.chunks(7) {
        l.append_batch(batch).unwrap();
        model.append_batch(batch).unwrap();
        assert!(l.len() <= 8192 + 4096, "{}", l.len());
    }
    let all = model.replay().unwrap();
    assert_eq!(compact(&l.replay().unwrap()), compact(&all));
    drop(l);
    let mut l = open_file(&path, &file_opts(8192)).unwrap();
    assert_eq!(compact(&l.replay().unwrap()), compact(&all));
    l.compact().unwrap();
    assert_eq!(l.replay().unwrap(), compact(&all));
    assert!(!FileLedger::compact_path(&path).exists());
}

// ---------------------------------------------------------------------------------------
// Throughput (not a test: `cargo test --release -p erlmcp-flow --lib ledger_throughput --
// --ignored --nocapture` prints appends/s).

#[test]
#[ignore = "a benchmark: prints appends/s"]
fn ledger_throughput() {
    let rec = |i: u64| LedgerRecord::Leased {
        id: TaskId(i),
        agent: AgentId::new("agent-17").unwrap(),
        attempt: 1,
        deadline: i,
    };
    // The shared-memory ledger in /dev/shm (where segments live), the file one on disk.
    let name = format!("bench-{}", std::process::id());
    let opts = ShmLedgerOptions {
        capacity: 64 << 20,
        ..Default::default()
    };
    let mut l = ShmLedger::open(&name, &opts).unwrap();
    let n = 1_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        l.append(&rec(i)).unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!("ShmLedger: {:.0} appends/s ({n} records)", n as f64 / s);
    drop(l);
    ShmLedger::remove(&name, &opts.segment).unwrap();
    // The file ledger on the disk of the working directory (target/), not /tmp (tmpfs?).
    let fdir = std::env::var("EMF_LEDGER_BENCH_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").into());
    for group in [1usize, 16, 256] {
        let path = Path::new(&fdir).join(format!("ledger-bench-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut l = open_file(&path, &FileLedgerOptions::default()).unwrap();
        let groups = match group {
            1 => 2000,
            16 => 1000,
            _ => 200,
        };
        let batch: Vec<_> = (0..group as u64).map(rec).collect();
        let t = Instant::now();
        for _ in 0..groups {
            l.append_batch(&batch).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "FileLedger, groups of {group}: {:.0} appends/s, {:.0} groups/s ({} on {fdir})",
            (groups * group) as f64 / s,
            groups as f64 / s,
            groups * group
        );
        drop(l);
        let _ = std::fs::remove_file(&path);
    }
}
