use super::*;
use crate::testutil::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn me() -> Liveness {
    let pid = std::process::id();
    Liveness::Process {
        pid,
        start_time: crate::shm::process_start_ticks(pid),
    }
}

/// A pid that cannot exist (above the kernel's pid_max limit).
const DEAD_PID: u32 = i32::MAX as u32 - 5;

fn dead() -> Liveness {
    Liveness::Process {
        pid: DEAD_PID,
        start_time: 1,
    }
}

#[test]
#[cfg_attr(miri, ignore = "reads /proc")]
fn claim_update_read_release() {
    let t = LoadTable::in_memory(4).unwrap();
    let a = t.claim(&id("a"), me(), 5, 100).unwrap();
    let b = t.claim(&id("b"), Liveness::Token(9), 2, 100).unwrap();
    assert_ne!(a.index(), b.index());
    assert_eq!(
        t.load(a),
        Some(Candidate {
            current_tasks: 0,
            max_tasks: 5,
            latency_us: 0
        })
    );
    assert_eq!(t.update(a, 3, Some(800)).unwrap(), 3);
    assert_eq!(t.update(a, -1, Some(1600)).unwrap(), 2);
    // EWMA: the first sample as is, then 800 + (1600 - 800) / 8.
    assert_eq!(t.load(a).unwrap().latency_us, 900);
    assert_eq!(t.update(a, -10, None).unwrap(), 0, "saturates at 0");
    t.heartbeat(b, 500).unwrap();
    t.heartbeat(b, 400).unwrap();
    let snap = t.snapshot();
    assert_eq!(snap.len(), 2);
    let (ida, la) = &snap[0];
    assert_eq!((ida.as_str(), la.slot, la.liveness), ("a", a, me()));
    let (idb, lb) = &snap[1];
    assert_eq!((idb.as_str(), lb.heartbeat), ("b", 500), "never backwards");
    assert_eq!(lb.liveness, Liveness::Token(9));
    assert_eq!(t.find(&id("b")), Some(b));
    assert_eq!(t.find(&id("c")), None);

    // One slot per id; capacity at least 1; a full table says so.
    let e = t.claim(&id("a"), me(), 5, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let e = t.claim(&id("z"), me(), 0, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    t.claim(&id("c"), me(), 1, 0).unwrap();
    t.claim(&id("d"), me(), 1, 0).unwrap();
    let e = t.claim(&id("e"), me(), 1, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Full, "{e}");

    // A released slot is no longer the agent's, and is reused with fresh counters.
    t.release(a).unwrap();
    assert_eq!(t.release(a).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        t.update(a, 1, None).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(t.heartbeat(a, 1).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(t.load(a), None);
    let e2 = t.claim(&id("e"), me(), 7, 0).unwrap();
    assert_eq!(e2.index(), a.index());
    assert_ne!(e2, a);
    assert_eq!(t.load(e2).unwrap().current_tasks, 0);
    assert_eq!(t.load(e2).unwrap().latency_us, 0);
    // Out-of-range references are refused, not trusted.
    let bogus = SlotRef::from_raw(99, a.to_raw().1);
    assert_eq!(
        t.update(bogus, 1, None).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(t.load(bogus), None);
    assert!(LoadTable::in_memory(0).is_err());
}

#[test]
#[cfg_attr(miri, ignore = "reads /proc")]
fn dead_agents_slots_are_reclaimed() {
    let t = LoadTable::in_memory(2).unwrap();
    let live = t.claim(&id("live"), me(), 5, 0).unwrap();
    let gone = t.claim(&id("gone"), dead(), 5, 0).unwrap();
    // The table is full of slots, but one holder is dead: a claim takes its slot.
    let fresh = t.claim(&id("fresh"), me(), 5, 0).unwrap();
    assert_eq!(fresh.index(), gone.index());
    assert_eq!(
        t.update(gone, 1, None).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(t.reclaim_dead(), 0, "everyone left is alive");
    t.release(fresh).unwrap();
    // A restarted agent (same id, its previous process dead) gets a slot again.
    let old = t.claim(&id("agent"), dead(), 5, 0).unwrap();
    let again = t.claim(&id("agent"), me(), 5, 0).unwrap();
    assert_eq!(again.index(), old.index());
    assert_eq!(t.snapshot().len(), 2);
    // reclaim_dead frees what is dead and nothing else.
    t.release(again).unwrap();
    t.claim(&id("x"), dead(), 1, 0).unwrap();
    assert_eq!(t.reclaim_dead(), 1);
    assert_eq!(t.snapshot().len(), 1);
    assert_eq!(t.load(live).unwrap().max_tasks, 5);
    // A token agent's slot is judged by its owner process (this one): kept.
    t.claim(&id("tok"), Liveness::Token(1), 1, 0).unwrap();
    assert_eq!(t.reclaim_dead(), 0);
}

/// Writes raw words into slot `i` as a hostile or dying process could (the liveness
/// words name this process).
fn forge(t: &LoadTable, i: usize, word: u64, id_bytes: &[u8], kind_len: u32) {
    let s = &t.slots()[i];
    for (k, w) in s.id.iter().enumerate() {
        let mut b = [0u8; 8];
        let part = id_bytes.get(k * 8..).unwrap_or(&[]);
        let n = part.len().min(8);
        b[..n].copy_from_slice(&part[..n]);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    s.kind_len.store(kind_len, Ordering::Relaxed);
    s.live_a
        .store(u64::from(std::process::id()), Ordering::Relaxed);
    s.max_tasks.store(5, Ordering::Relaxed);
    s.tasks.store(tag(word), Ordering::Relaxed);
    s.latency.store(tag(word), Ordering::Relaxed);
    s.word.store(word, Ordering::Release);
}

#[test]
#[cfg_attr(miri, ignore = "reads /proc")]
fn hostile_or_half_written_slots_are_validated() {
    let me = std::process::id();
    let t = LoadTable::in_memory(4).unwrap();
    let (process, token) = (KIND_PROCESS << 16, KIND_TOKEN << 16);
    // Slot 0: a live agent's slot with garbage: an id length beyond the maximum.
    forge(&t, 0, make(me, 3, LIVE), b"x", process | 300);
    // Slot 1: a live owner, an id with a character agent ids cannot have.
    forge(&t, 1, make(me, 3, LIVE), b"a/b", token | 3);
    // Slot 2: an unknown liveness kind (judged by its owner, alive).
    forge(&t, 2, make(me, 3, LIVE), b"ok", (7 << 16) | 2);
    // Slot 3: a claim left unfinished by a process that died.
    forge(&t, 3, make(DEAD_PID, 3, CLAIMING), b"", 0);
    assert!(t.snapshot().is_empty(), "nothing invalid is reported");
    assert_eq!(t.find(&id("ok")), None);
    // Garbage held by the living is never taken; the dead claimer's slot is.
    let s = t.claim(&id("new"), self::me(), 5, 0).unwrap();
    assert_eq!(s.index(), 3);
    assert_eq!(t.reclaim_dead(), 0);
    // The same garbage, its owners dead: reclaimed.
    forge(&t, 1, make(DEAD_PID, 3, LIVE), b"a/b", token | 3);
    forge(&t, 2, make(DEAD_PID, 3, RESERVED), b"ok", (7 << 16) | 2);
    assert_eq!(t.reclaim_dead(), 2);
    assert_eq!(t.snapshot().len(), 1);
    assert_eq!(t.claim(&id("n2"), self::me(), 5, 0).unwrap().index(), 1);
}

#[test]
#[cfg_attr(miri, ignore = "reads /proc")]
fn racing_claims_of_one_id_have_one_winner() {
    for round in 0..200 {
        let t = std::sync::Arc::new(LoadTable::in_memory(4).unwrap());
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let t = &t;
                    s.spawn(move || t.claim(&id("same"), me(), 5, 0).is_ok() as usize)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1, "round {round}");
        assert_eq!(t.snapshot().len(), 1, "round {round}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn shared_tables_are_validated_and_shared() {
    let dir = TempDir::new("loads");
    let opts = SegmentOptions {
        dir: dir.0.clone(),
        ..SegmentOptions::default()
    };
    let a = LoadTable::create("loads.t", 8, &opts).unwrap();
    let b = LoadTable::open("loads.t", &opts).unwrap();
    assert_eq!(b.capacity(), 8);
    let s = a.claim(&id("agent"), me(), 3, 10).unwrap();
    assert_eq!(b.find(&id("agent")), Some(s));
    b.update(s, 2, Some(50)).unwrap();
    assert_eq!(a.load(s).unwrap().current_tasks, 2);
    assert_eq!(
        LoadTable::create("loads.t", 8, &opts).unwrap_err().kind(),
        ErrorKind::Busy
    );
    // Another kind of segment, a bad table header.
    crate::shm::Segment::create(
        "not-loads",
        crate::shm::SegmentKind::State,
        8192,
        &opts,
        |_, _| {},
    )
    .map(drop)
    .unwrap();
    assert_eq!(
        LoadTable::open("not-loads", &opts).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let bad = crate::shm::Segment::create("bad", SegmentKind::Loads, 8192, &opts, |body, _| {
        // SAFETY: the fresh body has more than 64 bytes.
        unsafe { body.cast::<[u8; 8]>().write(*b"EMFLOAD1") };
        // SAFETY: as above; slot_count at offset 8: more slots than the segment holds.
        unsafe { body.wrapping_add(8).cast::<u32>().write(1000) };
        // SAFETY: as above; slot_size at offset 12.
        unsafe { body.wrapping_add(12).cast::<u32>().write(SLOT_SIZE as u32) };
    })
    .unwrap();
    let e = LoadTable::open("bad", &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    drop(bad);
}

const CHILD_ENV: &str = "EMF_LOADS_CHILD_DIR";
const CHILD_UPDATES: u32 = 100_000;

/// The agent process of `an_agent_process_updates_while_another_reads` (run by it, with the
/// table's directory in `EMF_LOADS_CHILD_DIR`): claims `child-agent`, says `claimed`, waits
/// for `go`, then updates its load and heartbeat `CHILD_UPDATES` times, says `done` and waits
/// to be killed.
#[test]
#[ignore = "the agent process of an_agent_process_updates_while_another_reads"]
fn child_agent() {
    let dir =
        std::env::var(CHILD_ENV).expect("run by an_agent_process_updates_while_another_reads");
    let opts = SegmentOptions {
        dir: dir.into(),
        ..SegmentOptions::default()
    };
    let t = LoadTable::open("loads.mp", &opts).unwrap();
    let s = t.claim(&id("child-agent"), me(), CHILD_UPDATES, 0).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "claimed").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "go");
    for i in 1..=CHILD_UPDATES {
        t.update(s, 1, Some(u64::from(i))).unwrap();
        t.heartbeat(s, u64::from(i)).unwrap();
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    // Killed by the parent; EOF on stdin if the parent died first.
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
#[cfg_attr(miri, ignore = "spawns a process")]
fn an_agent_process_updates_while_another_reads() {
    let dir = TempDir::new("loads-mp");
    let opts = SegmentOptions {
        dir: dir.0.clone(),
        ..SegmentOptions::default()
    };
    let t = LoadTable::create("loads.mp", 4, &opts).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sched::loads::tests::child_agent",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = |want: &str| loop {
        let l = lines
            .next()
            .expect("the agent process ended early")
            .unwrap();
        // libtest may print the test's name on the same line first.
        if l.trim_end().ends_with(want) {
            break;
        }
    };
    wait_for("claimed");
    let snap = t.snapshot();
    assert_eq!(snap.len(), 1);
    let (agent, load) = &snap[0];
    assert_eq!(agent.as_str(), "child-agent");
    let child_pid = child.id();
    assert!(matches!(load.liveness, Liveness::Process { pid, .. } if pid == child_pid));
    assert_eq!(load.candidate.current_tasks, 0);
    let slot = load.slot;
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    // Read while the agent writes: each counter only moves forward and stays in range.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last_tasks, mut last_beat, mut reads) = (0, 0, 0u64);
    loop {
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1);
        let (agent, l) = &snap[0];
        assert_eq!((agent.as_str(), l.slot), ("child-agent", slot));
        assert_eq!(l.candidate.max_tasks, CHILD_UPDATES);
        assert!(l.candidate.current_tasks >= last_tasks, "{l:?}");
        assert!(l.heartbeat >= last_beat, "{l:?}");
        assert!(l.candidate.latency_us <= u64::from(CHILD_UPDATES), "{l:?}");
        (last_tasks, last_beat) = (l.candidate.current_tasks, l.heartbeat);
        reads += 1;
        if last_tasks == CHILD_UPDATES && last_beat == u64::from(CHILD_UPDATES) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent stalled at {l:?}");
    }
    wait_for("done");
    assert!(reads > 0);
    // kill -9: the slot is the dead agent's until reclaimed, then free for a new claim.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(t.reclaim_dead(), 1);
    assert!(t.snapshot().is_empty());
    assert_eq!(t.load(slot), None);
    t.claim(&id("child-agent"), me(), 1, 0).unwrap();
}
