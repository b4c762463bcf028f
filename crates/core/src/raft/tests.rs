//! Tests of the raft module: the log store's recovery (torn and damaged files), the KV
//! encoding, and a deterministic simulated cluster of 3 and 5 nodes over seeded message
//! routing (drop, delay, reorder, duplicate, partitions, crash and restart from disk) with the
//! Raft safety properties checked after every step. Its submodule `lin` drives the same
//! simulation with concurrent clients and checks their histories for linearizability.
//!
//! `EMF_RAFT_SEEDS=N` runs N seeds per simulation test instead of the suite's count
//! (scripts/raft-sim.sh); `EMF_RAFT_SEED=s` reruns the failing seed `s` alone;
//! `EMF_RAFT_TRACE=1` prints every node's role, term, vote and commit at every step;
//! `EMF_RAFT_SUMMARY=1` prints what each run exercised.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use raft::Storage as _;

use super::*;
use crate::testutil::TempDir;

// ---------------------------------------------------------------------------------------------
// The log store.

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// A store at `dir` holding entries 1..=n (term 1), commit `commit`.
fn filled(dir: &std::path::Path, n: u64, commit: u64) -> LogStorage {
    let mut st = LogStorage::open(dir).unwrap();
    let ents: Vec<Entry> = (1..=n)
        .map(|i| entry(i, 1, format!("e{i}").as_bytes()))
        .collect();
    st.append(&ents).unwrap();
    st.set_hard_state(&hs(1, 1, commit)).unwrap();
    let s = st.sync().unwrap();
    assert_eq!(
        (s.records, s.syncs),
        (n + 1, 1),
        "one group commit for all the records"
    );
    st
}

#[test]
fn durable_log_round_trips_and_group_commits() {
    let dir = TempDir::new("raft-rt");
    drop(filled(&dir.0, 5, 3));
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(st.recovery().truncated_bytes, 0);
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (1, 5)
    );
    assert_eq!(st.hard_state(), &hs(1, 1, 3));
    let got = st
        .entries(2, 5, None, raft::GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(&got[0].data[..], b"e2");
    // Out of range asks are errors, not panics.
    assert!(st
        .entries(1, 9, None, raft::GetEntriesContext::empty(false))
        .is_err());
    assert!(st.term(9).is_err());
}

#[test]
fn conflicting_append_replaces_the_suffix_across_restart() {
    let dir = TempDir::new("raft-conflict");
    let mut st = filled(&dir.0, 5, 2);
    st.append(&[entry(3, 2, b"new3")]).unwrap();
    st.sync().unwrap();
    drop(st);
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(st.last_index().unwrap(), 3);
    assert_eq!(st.term(3).unwrap(), 2);
    assert_eq!(st.term(2).unwrap(), 1);
}

#[test]
fn torn_tail_is_truncated_at_every_cut() {
    let dir = TempDir::new("raft-torn");
    drop(filled(&dir.0, 4, 2));
    let path = dir.0.join("log");
    let full = std::fs::read(&path).unwrap();
    // A fifth entry appended, then cut at every byte of it: recovery keeps entries 1..=4.
    let mut st = LogStorage::open(&dir.0).unwrap();
    st.append(&[entry(5, 1, b"e5-with-some-payload")]).unwrap();
    st.sync().unwrap();
    drop(st);
    let longer = std::fs::read(&path).unwrap();
    assert!(longer.len() > full.len());
    for cut in full.len() + 1..longer.len() {
        std::fs::write(&path, &longer[..cut]).unwrap();
        let st = LogStorage::open(&dir.0).unwrap();
        assert_eq!(st.last_index().unwrap(), 4, "cut at {cut}");
        assert_eq!(st.recovery().truncated_bytes, (cut - full.len()) as u64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            full.len() as u64,
            "file truncated"
        );
    }
    // Garbage appended after the last record (a torn write of zeros) is cut too.
    let mut zeros = full.clone();
    zeros.extend_from_slice(&[0u8; 100]);
    std::fs::write(&path, &zeros).unwrap();
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.last_index().unwrap(), st.recovery().truncated_bytes),
        (4, 100)
    );
}

#[test]
fn damage_before_good_records_is_a_clear_error() {
    let dir = TempDir::new("raft-damage");
    drop(filled(&dir.0, 6, 2));
    let path = dir.0.join("log");
    let good = std::fs::read(&path).unwrap();
    // Flip one byte in the middle of the file: good records follow, so no truncation.
    let mut bad = good.clone();
    let mid = good.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let err = LogStorage::open(&dir.0)
        .err()
        .expect("damage in the middle must not be cut away");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.message().contains("valid record follows"),
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bad,
        "the file is left for inspection"
    );
    // A bad magic.
    let mut magic = good.clone();
    magic[0] = b'X';
    std::fs::write(&path, &magic).unwrap();
    assert_eq!(
        LogStorage::open(&dir.0).err().unwrap().kind(),
        ErrorKind::Corrupt
    );
}

#[test]
fn every_single_byte_flip_is_an_error_or_a_truncation_never_a_panic() {
    let dir = TempDir::new("raft-flip");
    drop(filled(&dir.0, 3, 3));
    let path = dir.0.join("log");
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        match LogStorage::open(&dir.0) {
            // A flip in the last record can only be told from a torn write by its position.
            Ok(st) => assert!(
                st.recovery().truncated_bytes > 0,
                "flip at {i} went unnoticed"
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "flip at {i}: {e}"),
        }
    }
}

#[test]
fn commit_beyond_the_log_is_corrupt_not_a_raft_panic() {
    let dir = TempDir::new("raft-commit");
    let mut st = filled(&dir.0, 2, 2);
    st.set_hard_state(&hs(1, 1, 9)).unwrap();
    st.sync().unwrap();
    drop(st);
    let err = LogStorage::open(&dir.0).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.message().contains("beyond the last entry"),
        "{}",
        err.message()
    );
}

#[test]
fn snapshot_compacts_and_survives_restart_and_damage_is_reported() {
    let dir = TempDir::new("raft-snap");
    let mut st = filled(&dir.0, 10, 8);
    let cs = raft::eraftpb::ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    st.set_conf_state(&cs, 0).unwrap();
    st.create_snapshot(6, cs.clone(), b"state@6".to_vec())
        .unwrap();
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (7, 10)
    );
    assert_eq!(st.term(6).unwrap(), 1);
    assert!(st.term(5).is_err());
    drop(st);
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (7, 10)
    );
    assert_eq!(&st.latest_snapshot().data[..], b"state@6");
    assert_eq!(st.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(st.hard_state().commit, 8);
    // A damaged snapshot file: a clear error.
    let snap = dir.0.join("snapshot");
    let mut bytes = std::fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    let err = LogStorage::open(&dir.0).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("snapshot"), "{}", err.message());
    std::fs::write(&snap, &bytes[..10]).unwrap();
    assert_eq!(
        LogStorage::open(&dir.0).err().unwrap().kind(),
        ErrorKind::Corrupt
    );
}

/// A snapshot written in the background: nothing changes until its file is durable and it is
/// installed; appends and syncs go on meanwhile; a store dropped (a crash) before the install
/// reopens consistent either way; the calls that must not overlap it wait for it.
#[test]
fn background_snapshot_installs_once_durable_and_survives_a_crash_before() {
    let cs = raft::eraftpb::ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let dir = TempDir::new("raft-snap-bg");
    let mut st = filled(&dir.0, 10, 8);
    st.set_conf_state(&cs, 0).unwrap();
    assert!(st
        .begin_snapshot(9, cs.clone(), b"x".to_vec())
        .is_err_and(|e| e.message().contains("beyond the commit")));
    assert!(!st.snapshot_pending());
    assert!(st
        .begin_snapshot(6, cs.clone(), b"state@6".to_vec())
        .unwrap());
    assert!(st.snapshot_pending());
    // One at a time.
    assert!(!st
        .begin_snapshot(7, cs.clone(), b"state@7".to_vec())
        .unwrap());
    // Not installed yet, whatever the writer's progress: the log and snapshot held are the old.
    assert_eq!(st.first_index().unwrap(), 1);
    // The loop goes on: more entries, a sync.
    st.append(&[entry(11, 1, b"e11")]).unwrap();
    st.set_hard_state(&hs(1, 1, 11)).unwrap();
    st.sync().unwrap();
    assert_eq!(st.finish_snapshot(true).unwrap(), Some(6));
    assert!(!st.snapshot_pending());
    assert_eq!(st.finish_snapshot(true).unwrap(), None);
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (7, 11)
    );
    assert_eq!(&st.latest_snapshot().data[..], b"state@6");
    // The log file was not rewritten (it is far below the compaction size): a reopen drops
    // the six entries the snapshot covers.
    let grown = st.log_bytes();
    assert!(grown > 0);
    drop(st);
    let mut st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (7, 11)
    );
    assert_eq!(&st.latest_snapshot().data[..], b"state@6");
    assert_eq!(st.hard_state().commit, 11);
    assert_eq!(st.recovery().entries_dropped, 6, "{:?}", st.recovery());
    assert_eq!(st.log_bytes(), grown);

    // Dropped while (or after) the writer runs, never installed: the reopened store holds the
    // new snapshot file (when it was complete) and drops the log entries it covers, or the old
    // snapshot and the whole log; entries after it are there either way.
    assert!(st
        .begin_snapshot(10, cs.clone(), b"state@10".to_vec())
        .unwrap());
    st.append(&[entry(12, 1, b"e12")]).unwrap();
    st.sync().unwrap();
    drop(st);
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(&st.latest_snapshot().data[..], b"state@10");
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (11, 12)
    );
    assert_eq!(st.recovery().entries_dropped, 10, "{:?}", st.recovery());
    drop(st);

    // A crash before the writer's rename leaves a snapshot.tmp: ignored and removed on open.
    std::fs::write(dir.0.join("snapshot.tmp"), b"half a snapshot").unwrap();
    let mut st = LogStorage::open(&dir.0).unwrap();
    assert!(!dir.0.join("snapshot.tmp").exists());
    assert_eq!(&st.latest_snapshot().data[..], b"state@10");

    // create_snapshot and apply_snapshot wait for a snapshot being written, then go on.
    st.set_hard_state(&hs(1, 1, 12)).unwrap();
    assert!(st
        .begin_snapshot(11, cs.clone(), b"state@11".to_vec())
        .unwrap());
    st.create_snapshot(12, cs.clone(), b"state@12".to_vec())
        .unwrap();
    assert!(!st.snapshot_pending());
    assert_eq!(&st.latest_snapshot().data[..], b"state@12");
    assert_eq!(st.first_index().unwrap(), 13);
    // From the compaction size on, a background snapshot rewrites the log too.
    st.append(&[entry(13, 1, b"e13"), entry(14, 1, b"e14")])
        .unwrap();
    st.set_hard_state(&hs(1, 1, 14)).unwrap();
    st.sync().unwrap();
    let before = st.log_bytes();
    st.set_compact_bytes(1);
    assert!(st
        .begin_snapshot(13, cs.clone(), b"state@13".to_vec())
        .unwrap());
    assert_eq!(st.finish_snapshot(true).unwrap(), Some(13));
    assert!(st.log_bytes() < before, "{} >= {before}", st.log_bytes());
    drop(st);
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(st.recovery().entries_dropped, 0, "{:?}", st.recovery());
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (14, 14)
    );

    // In memory the snapshot is taken at once.
    let mut m = LogStorage::memory();
    m.set_conf_state(&cs, 0).unwrap();
    m.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
    m.set_hard_state(&hs(1, 1, 2)).unwrap();
    assert!(m.begin_snapshot(2, cs, b"m".to_vec()).unwrap());
    assert!(!m.snapshot_pending());
    assert_eq!(m.first_index().unwrap(), 3);
}

#[test]
fn conf_state_keeps_its_index_across_restarts_and_snapshots() {
    let dir = TempDir::new("raft-conf-index");
    let mut st = filled(&dir.0, 10, 9);
    let old = raft::eraftpb::ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let joint = raft::eraftpb::ConfState {
        voters: vec![1, 2, 4],
        voters_outgoing: vec![1, 2, 3],
        ..Default::default()
    };
    st.set_conf_state(&old, 0).unwrap();
    st.set_conf_state(&joint, 7).unwrap();
    st.sync().unwrap();
    drop(st);
    let mut st = LogStorage::open(&dir.0).unwrap();
    assert_eq!((st.conf_state(), st.conf_index()), (&joint, 7));
    // A snapshot at 9 carries the configuration; a log record of an older change (written
    // before a crash interrupted the log's rewrite) does not override it.
    let new = raft::eraftpb::ConfState {
        voters: vec![1, 2, 4],
        ..Default::default()
    };
    st.set_conf_state(&new, 8).unwrap();
    st.create_snapshot(9, new.clone(), b"s".to_vec()).unwrap();
    st.set_conf_state(&joint, 7).unwrap();
    st.sync().unwrap();
    drop(st);
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!((st.conf_state(), st.conf_index()), (&new, 9));
}

#[test]
fn snapshot_damage_anywhere_is_a_clear_error_never_a_panic() {
    // A snapshot file with any byte flipped, cut at any length, or with bytes appended: the
    // open fails with Corrupt (the log before the snapshot was compacted away: there is
    // nothing to fall back to), and the files are left as they were.
    let dir = TempDir::new("raft-snap-damage");
    let mut st = filled(&dir.0, 10, 8);
    let cs = raft::eraftpb::ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    st.create_snapshot(6, cs, b"state@6".to_vec()).unwrap();
    drop(st);
    let path = dir.0.join("snapshot");
    let good = std::fs::read(&path).unwrap();
    let log = std::fs::read(dir.0.join("log")).unwrap();
    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            damaged.push((format!("bit {bit:#x} of byte {i} flipped"), b));
        }
    }
    for cut in 0..good.len() {
        damaged.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    for extra in [&b"\0"[..], b"garbage", &[0u8; 100]] {
        let mut b = good.clone();
        b.extend_from_slice(extra);
        damaged.push((format!("{} bytes appended", extra.len()), b));
    }
    for (what, bytes) in damaged {
        std::fs::write(&path, &bytes).unwrap();
        match LogStorage::open(&dir.0) {
            Ok(_) => panic!("{what}: the damaged snapshot was accepted"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
                assert!(e.message().contains("snapshot"), "{what}: {e}");
            }
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: file changed");
        assert_eq!(std::fs::read(dir.0.join("log")).unwrap(), log, "{what}");
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(LogStorage::open(&dir.0).unwrap().snapshot_index(), 6);
}

#[test]
fn random_garbage_after_the_last_record_is_cut() {
    // A torn write may leave any bytes, not only zeros: whatever follows the last record and
    // holds no valid record is cut, and the entries before it are kept.
    let dir = TempDir::new("raft-garbage-tail");
    drop(filled(&dir.0, 4, 2));
    let path = dir.0.join("log");
    let good = std::fs::read(&path).unwrap();
    let mut rng = Rng(41);
    for n in [1usize, 5, 8, 9, 13, 64, 4096] {
        let mut b = good.clone();
        b.extend((0..n).map(|_| rng.next() as u8));
        std::fs::write(&path, &b).unwrap();
        let st = LogStorage::open(&dir.0).unwrap();
        assert_eq!(
            (st.last_index().unwrap(), st.recovery().truncated_bytes),
            (4, n as u64),
            "{n} random bytes"
        );
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }
    // A log cut inside its magic (a crash while creating it) starts again, empty.
    std::fs::write(&path, &good[..5]).unwrap();
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.last_index().unwrap(), st.recovery().truncated_bytes),
        (0, 5)
    );
}

fn cs(voters: &[u64], learners: &[u64], outgoing: &[u64], next: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        voters_outgoing: outgoing.to_vec(),
        learners_next: next.to_vec(),
        ..Default::default()
    }
}

#[test]
fn configurations_raft_cannot_restore_are_refused() {
    // Found by the raft_step fuzz target: a snapshot whose ConfState names node 3 as voter
    // and learner made raft-rs panic ("invalid restore") inside step.
    for ok in [
        cs(&[1, 2, 3], &[], &[], &[]),
        cs(&[1, 2, 3], &[5], &[], &[]),
        cs(&[1, 2, 3], &[5], &[1, 2, 4, 6], &[4]),
        cs(&[], &[], &[], &[]),
    ] {
        super::check_conf_state(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    for bad in [
        cs(&[1, 3], &[3], &[], &[]),
        cs(&[0, 1], &[], &[], &[]),
        cs(&[1, 2], &[], &[], &[3]),
        cs(&[1, 2], &[], &[1, 2], &[1]),
    ] {
        let e = super::check_conf_state(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
    // In a snapshot message: refused, no panic.
    let mut n = Node::new(config(1, 3), LogStorage::memory(), KvStore::new()).unwrap();
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (2, 1, 1);
    let mut meta = raft::eraftpb::SnapshotMetadata {
        index: 5,
        term: 1,
        ..Default::default()
    };
    meta.set_conf_state(cs(&[1, 3], &[3], &[], &[]));
    m.mut_snapshot().set_metadata(meta);
    m.mut_snapshot().data = KvStore::new().snapshot().into();
    let e = n.step(&m.write_to_bytes().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    n.ready(Duration::ZERO).unwrap();
    // On disk, in the log or in the snapshot file: Corrupt at open, before raft-rs sees it
    // (raft-rs panics in RawNode::new on a configuration it cannot restore).
    let dir = TempDir::new("raft-bad-conf");
    let mut st = filled(&dir.0, 4, 3);
    st.set_conf_state(&cs(&[1, 2, 3], &[2], &[], &[]), 0)
        .unwrap();
    st.sync().unwrap();
    drop(st);
    let e = LogStorage::open(&dir.0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message().contains("configuration"), "{e}");
    let dir = TempDir::new("raft-bad-snap-conf");
    let mut st = filled(&dir.0, 4, 3);
    st.create_snapshot(2, cs(&[1, 2], &[1], &[], &[]), KvStore::new().snapshot())
        .unwrap();
    drop(st);
    let e = LogStorage::open(&dir.0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    // (The snapshot's configuration is also the store's: either may be named.)
    assert!(e.message().contains("configuration"), "{e}");
}

#[test]
fn nothing_elects_a_node_before_its_log_is_persisted() {
    // Found by the raft_step fuzz target: a sole voter that had appended a leader's entries
    // (not yet persisted: no Ready since) and was asked to campaign became leader at once,
    // and raft-rs panicked (it asserts the whole log is persisted then).
    let mut n = Node::new(config(1, 1), LogStorage::memory(), KvStore::new()).unwrap();
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    (m.to, m.term) = (1, 1);
    m.entries = vec![entry(1, 1, b"x")].into();
    // From a node that is not a voter: a stranger's append is followed (this node may lag
    // behind the change that made it leader), and the sole voter must not campaign until
    // the entry is persisted.
    m.from = 2;
    n.step(&m.write_to_bytes().unwrap()).unwrap();
    assert_eq!(n.campaign().unwrap_err().kind(), ErrorKind::Busy);
    for _ in 0..100 {
        n.tick();
    }
    assert!(!n.is_leader(), "ticks held back");
    n.ready(Duration::ZERO).unwrap();
    n.campaign().unwrap();
    n.ready(Duration::ZERO).unwrap();
    assert!(
        n.is_leader(),
        "the sole voter leads once its log is persisted"
    );
    // A three-voter node: appended, then a campaign, a forged vote and a tick must wait.
    let mut n = Node::new(config(1, 3), LogStorage::memory(), KvStore::new()).unwrap();
    n.step(&m.write_to_bytes().unwrap()).unwrap();
    assert_eq!(n.campaign().unwrap_err().kind(), ErrorKind::Busy);
    let mut v = raft::eraftpb::Message::default();
    v.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
    (v.from, v.to, v.term) = (2, 1, 1);
    assert_eq!(
        n.step(&v.write_to_bytes().unwrap()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    for _ in 0..100 {
        n.tick();
    }
    assert_eq!(
        (n.term(), n.leader()),
        (1, Some(2)),
        "the ticks were held back"
    );
    // After the Ready the held-back ticks count: an election follows at the next tick.
    n.ready(Duration::ZERO).unwrap();
    n.tick();
    assert!(
        n.term() > 1 || n.leader().is_none(),
        "ticks given: {}",
        n.term()
    );
    n.ready(Duration::ZERO).unwrap();
    n.campaign().unwrap();
}

#[test]
fn a_log_without_voters_or_with_bad_terms_is_corrupt() {
    // Found by the raft_log_open fuzz target: a log holding an entry but no configuration
    // opened, and the node over it won an election with no voters (raft-rs panicked).
    let open_as = |records: &[(u8, Vec<u8>)], voters: u64| {
        let dir = TempDir::new("raft-no-voters");
        let mut log = b"EMFRLOG1".to_vec();
        for (kind, p) in records {
            let crc = crate::checksum::crc32c_append(crate::checksum::crc32c(&[*kind]), p);
            log.extend_from_slice(&(p.len() as u32).to_le_bytes());
            log.extend_from_slice(&crc.to_le_bytes());
            log.push(*kind);
            log.extend_from_slice(p);
        }
        std::fs::write(dir.0.join("log"), &log).unwrap();
        let r = LogStorage::open(&dir.0)
            .and_then(|st| Node::new(config(1, voters), st, KvStore::new()).map(|_| ()));
        r.map_err(|e| (e.kind(), e.message().to_string()))
    };
    let write = |records: &[(u8, Vec<u8>)]| open_as(records, 3);
    let e1 = entry(1, 1, b"x").write_to_bytes().unwrap();
    let e2_term0 = entry(2, 0, b"y").write_to_bytes().unwrap();
    let conf = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    let (kind, msg) = write(&[(1, e1.clone())]).unwrap_err();
    assert_eq!(kind, ErrorKind::Corrupt);
    assert!(msg.contains("no voters"), "{msg}");
    // The same for a joining node (no voters configured): a store with no configuration is
    // one only while it holds no entry (a HardState at most).
    let (kind, msg) = open_as(&[(1, e1.clone())], 0).unwrap_err();
    assert_eq!(kind, ErrorKind::Corrupt);
    assert!(msg.contains("no voters"), "{msg}");
    let hard = hs(3, 2, 0).write_to_bytes().unwrap();
    open_as(&[(2, hard.clone())], 0).unwrap();
    open_as(&[], 0).unwrap();
    let (kind, _) = open_as(&[(2, hard), (1, e1.clone())], 0).unwrap_err();
    assert_eq!(kind, ErrorKind::Corrupt);
    let (kind, msg) = write(&[(3, conf.clone()), (1, e1.clone()), (1, e2_term0)]).unwrap_err();
    assert_eq!(kind, ErrorKind::Corrupt);
    assert!(msg.contains("has term 0"), "{msg}");
    write(&[(3, conf), (1, e1)]).unwrap();
}

#[test]
fn requests_a_follower_would_forward_with_a_term_are_refused() {
    // Found by the raft_step fuzz target: a follower forwards a leader transfer (or a read
    // index) to its leader, and raft-rs panics when the message already carries a term.
    let mut n = Node::new(config(1, 3), LogStorage::memory(), KvStore::new()).unwrap();
    let mut hb = raft::eraftpb::Message::default();
    hb.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    (hb.from, hb.to, hb.term) = (2, 1, 1);
    n.step(&hb.write_to_bytes().unwrap()).unwrap();
    assert_eq!(n.leader(), Some(2));
    for t in [
        raft::eraftpb::MessageType::MsgTransferLeader,
        raft::eraftpb::MessageType::MsgReadIndex,
    ] {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(t);
        (m.from, m.to, m.term) = (3, 1, 1);
        m.entries = vec![entry(0, 0, b"ctx")].into();
        let e = n.step(&m.write_to_bytes().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{t:?}");
    }
    n.ready(Duration::ZERO).unwrap();
}

#[test]
fn snapshot_newer_than_the_log_drops_the_covered_entries() {
    // A crash between writing the snapshot file and rewriting the log: the old log still
    // holds entries the snapshot covers.
    let dir = TempDir::new("raft-snap-crash");
    drop(filled(&dir.0, 10, 8));
    let old_log = std::fs::read(dir.0.join("log")).unwrap();
    let mut st = LogStorage::open(&dir.0).unwrap();
    st.create_snapshot(6, Default::default(), b"s".to_vec())
        .unwrap();
    drop(st);
    std::fs::write(dir.0.join("log"), &old_log).unwrap();
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (7, 10)
    );
    assert_eq!(st.recovery().entries_dropped, 6);
}

#[test]
fn received_snapshot_survives_a_crash_before_the_log_rewrite() {
    let dir = TempDir::new("raft-snap-recv");
    drop(filled(&dir.0, 10, 8));
    let old_log = std::fs::read(dir.0.join("log")).unwrap();
    let mut st = LogStorage::open(&dir.0).unwrap();
    let meta = raft::eraftpb::SnapshotMetadata {
        index: 20,
        term: 3,
        ..Default::default()
    };
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.set_metadata(meta);
    snap.data = b"s20".to_vec().into();
    st.apply_snapshot(snap).unwrap();
    drop(st);
    // The crash came after the snapshot file, before the log was rewritten.
    std::fs::write(dir.0.join("log"), &old_log).unwrap();
    let st = LogStorage::open(&dir.0).unwrap();
    assert_eq!(
        (st.first_index().unwrap(), st.last_index().unwrap()),
        (21, 20)
    );
    assert_eq!((st.hard_state().commit, st.hard_state().term), (20, 3));
    assert_eq!(st.recovery().entries_dropped, 10);
    assert_eq!(st.term(20).unwrap(), 3);
}

#[test]
fn kv_ops_and_results_round_trip_and_garbage_is_invalid() {
    let ops = [
        KvOp::Set {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        },
        KvOp::Get { key: b"a".to_vec() },
        KvOp::Cas {
            key: b"a".to_vec(),
            expected: Some(b"1".to_vec()),
            new: b"2".to_vec(),
        },
        KvOp::Cas {
            key: b"b".to_vec(),
            expected: None,
            new: b"x".to_vec(),
        },
    ];
    let mut kv = KvStore::new();
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(KvOp::decode(&op.encode()).as_ref(), Some(op));
        let r = kv.apply(i as u64 + 1, &op.encode());
        results.push(KvResult::decode(&r).unwrap());
    }
    assert_eq!(
        results,
        vec![
            KvResult::Done,
            KvResult::Value(Some(b"1".to_vec())),
            KvResult::Cas {
                swapped: true,
                previous: Some(b"1".to_vec())
            },
            KvResult::Cas {
                swapped: true,
                previous: None
            },
        ]
    );
    assert_eq!(
        KvResult::decode(&kv.apply(5, b"\x07junk")),
        Some(KvResult::Invalid)
    );
    assert_eq!(KvResult::decode(&kv.apply(6, &[])), Some(KvResult::Invalid));
    let mut other = KvStore::new();
    other.restore(&kv.snapshot()).unwrap();
    assert_eq!(other, kv);
    let snap = kv.snapshot();
    for cut in 0..snap.len() {
        assert!(other.restore(&snap[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(other, kv, "a failed restore changes nothing");
}

#[test]
fn kv_query_answers_a_get_as_applying_it_would() {
    let mut kv = KvStore::new();
    kv.apply(
        1,
        &KvOp::Set {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        }
        .encode(),
    );
    for key in [&b"a"[..], b"absent", b""] {
        let get = KvOp::Get { key: key.to_vec() }.encode();
        let answer = kv.query(&get).unwrap();
        let mut copy = kv.clone();
        assert_eq!(answer, copy.apply(2, &get), "key {key:?}");
    }
    assert_eq!(kv.applied_index(), 1, "a query changes nothing");
    let set = KvOp::Set {
        key: b"a".to_vec(),
        value: b"2".to_vec(),
    };
    let e = kv.query(&set.encode()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("read-only"), "{e}");
    assert_eq!(
        kv.query(b"\x02junk").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kv.query(&[]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kv.get(b"a"), Some(&b"1"[..]));

    // A state machine that does not override `query` refuses every query.
    struct Counter;
    impl StateMachine for Counter {
        fn apply(&mut self, _: u64, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<()> {
            Ok(())
        }
    }
    let e = Counter.query(b"anything").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message().contains("no queries"), "{e}");
}

#[test]
fn garbage_and_misaddressed_messages_are_rejected() {
    let mut n = Node::new(
        Config::new(1, vec![1, 2, 3]),
        LogStorage::memory(),
        KvStore::new(),
    )
    .unwrap();
    assert_eq!(
        n.step(b"\xff\xff\xff\xff garbage").unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = 2;
    m.to = 7;
    m.term = 1;
    assert_eq!(
        n.step(&m.write_to_bytes().unwrap()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    m.to = 1;
    m.set_msg_type(raft::eraftpb::MessageType::MsgHup);
    assert_eq!(
        n.step(&m.write_to_bytes().unwrap()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    m.index = 0;
    m.entries = vec![entry(5, 1, b"x")].into();
    assert_eq!(
        n.step(&m.write_to_bytes().unwrap()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // A node not among the voters of a new cluster.
    let err = Node::new(
        Config::new(9, vec![1, 2, 3]),
        LogStorage::memory(),
        KvStore::new(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // Proposals on a follower name no leader yet.
    assert_eq!(
        n.propose(b"op", Duration::ZERO).unwrap(),
        Proposed::NotLeader { leader: None }
    );
    // Well-formed, from a member, but through another sender's connection: refused, and the
    // node does not take its term.
    let mut hb = raft::eraftpb::Message::default();
    hb.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    (hb.from, hb.to, hb.term) = (2, 1, 1);
    let hb = hb.write_to_bytes().unwrap();
    let e = n.step_from(3, &hb).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("arrived from node 3"), "{e}");
    assert_eq!(n.term(), 0);
    n.step_from(2, &hb).unwrap();
    assert_eq!((n.term(), n.leader()), (1, Some(2)));
}

// ---------------------------------------------------------------------------------------------
// The simulated cluster.

mod feat;
pub(crate) mod lin;

/// A state machine that records every operation it applies, for the safety checks.
#[derive(Default)]
struct Recorder {
    kv: KvStore,
    /// (index, ordinal within the entry, operation) applied since the checker last looked.
    seen: Vec<(u64, u32, Vec<u8>)>,
    last: (u64, u32),
}

impl StateMachine for Recorder {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        let ord = if self.last.0 == index {
            self.last.1 + 1
        } else {
            0
        };
        self.last = (index, ord);
        self.seen.push((index, ord, op.to_vec()));
        self.kv.apply(index, op)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }
    fn restore(&mut self, data: &[u8]) -> Result<()> {
        self.kv.restore(data)?;
        self.last = (0, 0);
        Ok(())
    }
    fn check_snapshot(&self, data: &[u8]) -> Result<()> {
        self.kv.check_snapshot(data)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct InFlight {
    at: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
    is_snapshot: bool,
}

struct Sim {
    rng: Rng,
    seed: u64,
    nodes: Vec<Option<Node<Recorder>>>,
    dirs: Vec<Option<PathBuf>>,
    _root: Option<TempDir>,
    step: u64,
    net: Vec<InFlight>,
    /// The partition group of each node: messages cross only within a group.
    group: Vec<u8>,
    drop_per_mille: u64,
    /// Messages delivered with a flipped bit (then errors are expected and the safety checks
    /// are off: Raft does not survive lying peers, only garbled frames must not panic it).
    garble_per_mille: u64,
    /// term → the leader seen in it.
    leaders: HashMap<u64, u64>,
    /// index → (term of the entry, the reporting node's term when first seen committed: the
    /// entry was committed in that term or earlier) for every entry some node reported
    /// committed.
    committed: BTreeMap<u64, (u64, u64)>,
    /// (index, ordinal) → operation applied there.
    applied: HashMap<(u64, u32), Vec<u8>>,
    /// Keys whose set was acknowledged to the proposer.
    acked: Vec<Vec<u8>>,
    /// Proposals in flight: (node, id) → key.
    pending: HashMap<(u64, ProposalId), Vec<u8>>,
    next_key: u64,
    /// Counts of what happened, to show the faults were exercised.
    crashes: u64,
    restarts: u64,
    snapshots_installed: u64,
    /// Whether the simulation proposes its own traffic (off when the linearizability clients
    /// of `lin` drive it).
    own_traffic: bool,
    /// When on, every proposal outcome and crash is recorded for `lin`'s clients.
    record: bool,
    /// (node, proposal, outcome) reported by `ready` since the clients last looked.
    outcomes: Vec<(u64, ProposalId, Outcome)>,
    /// Nodes crashed since the clients last looked (their proposals' outcomes are unknown).
    crash_log: Vec<u64>,
    /// Reads asked with `read_index`: (node, read) → key; the value is taken from the node's
    /// state machine when `ready` says the read may proceed.
    read_keys: HashMap<(u64, ProposalId), Vec<u8>>,
    /// The voters the cluster started with (ids 1..=n); ids beyond are spare slots for nodes
    /// that join.
    initial: u64,
    /// Whether a slot's node exists (started once: crashes and restarts apply to it).
    spawned: Vec<bool>,
    /// Membership changes and leadership transfers as part of the nemesis.
    churn: bool,
    /// What the churn did: changes proposed / transfers started.
    churn_changes: u64,
    churn_transfers: u64,
}

/// What became of a proposal, as the node reported it.
#[derive(Debug)]
enum Outcome {
    /// Applied with this result.
    Applied(Vec<u8>),
    /// Never applied (`Out::dropped`).
    Dropped,
    /// May or may not have been applied (`Out::unknown`).
    Unknown,
    /// A read (`Out::reads`) and the value it read.
    Read(Option<Vec<u8>>),
}

fn config(id: u64, n: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.election_tick = 10;
    c.min_election_tick = 10;
    c.max_election_tick = 11;
    c.heartbeat_tick = 2;
    c.snapshot_entries = 25;
    // Deterministic by seed: snapshots are written in the Ready that takes them.
    c.background_snapshots = false;
    c.max_batch_ops = 4;
    c.max_inflight_msgs = 4;
    c.batch_window = Duration::from_millis(3);
    c
}

impl Sim {
    fn new(seed: u64, n: u64, durable: bool) -> Sim {
        Sim::with_spares(seed, n, 0, durable)
    }

    /// A cluster of `n` voters with `spares` more slots for nodes that join (ids n+1..).
    fn with_spares(seed: u64, n: u64, spares: u64, durable: bool) -> Sim {
        let root = durable.then(|| TempDir::new(&format!("raft-sim-{seed}")));
        let slots = n + spares;
        let mut sim = Sim {
            rng: Rng(seed),
            seed,
            nodes: Vec::new(),
            dirs: Vec::new(),
            _root: None,
            step: 0,
            net: Vec::new(),
            group: vec![0; slots as usize],
            drop_per_mille: 50,
            garble_per_mille: 0,
            leaders: HashMap::new(),
            committed: BTreeMap::new(),
            applied: HashMap::new(),
            acked: Vec::new(),
            pending: HashMap::new(),
            next_key: 0,
            crashes: 0,
            restarts: 0,
            snapshots_installed: 0,
            own_traffic: true,
            record: false,
            outcomes: Vec::new(),
            crash_log: Vec::new(),
            read_keys: HashMap::new(),
            initial: n,
            spawned: vec![false; slots as usize],
            churn: false,
            churn_changes: 0,
            churn_transfers: 0,
        };
        for id in 1..=slots {
            sim.dirs
                .push(root.as_ref().map(|r| r.0.join(format!("n{id}"))));
            sim.nodes.push(None);
        }
        for id in 1..=n {
            sim.start(id);
        }
        sim._root = root;
        sim
    }

    fn start(&mut self, id: u64) {
        let n = self.initial;
        self.spawned[id as usize - 1] = true;
        let storage = match &self.dirs[id as usize - 1] {
            Some(d) => LogStorage::open(d)
                .unwrap_or_else(|e| panic!("seed {}: reopen {id}: {e}", self.seed)),
            None => LogStorage::memory(),
        };
        // A spare joins: no configuration of its own, it learns it by snapshot.
        let mut c = config(id, n);
        if id > n {
            c.voters.clear();
        }
        let node = Node::new(c, storage, Recorder::default()).unwrap();
        self.nodes[id as usize - 1] = Some(node);
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.step)
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {} step {}: {what}", self.seed, self.step)
    }

    /// One step: deliver due messages (some dropped, duplicated, in random order), tick some
    /// nodes, maybe propose, maybe change the faults, run every node's Ready, check.
    fn run_step(&mut self, faults: bool) {
        self.step += 1;
        let now = self.now();
        // Deliver the messages due, in a random order.
        let mut due = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].at <= self.step {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        while !due.is_empty() {
            let m = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            if m.to == 0 || m.to as usize > self.nodes.len() {
                // To a node that does not exist (an answer to a garbled sender id).
                continue;
            }
            let (f, t) = (m.from as usize - 1, m.to as usize - 1);
            let lost =
                (faults && self.rng.chance(self.drop_per_mille)) || self.group[f] != self.group[t];
            let delivered = !lost && self.nodes[t].is_some();
            if delivered {
                if faults && self.rng.chance(20) {
                    let copy = InFlight {
                        at: self.step + 1 + self.rng.below(3),
                        from: m.from,
                        to: m.to,
                        bytes: m.bytes.clone(),
                        is_snapshot: false,
                    };
                    self.net.push(copy);
                }
                let node = self.nodes[t].as_mut().unwrap();
                if self.garble_per_mille > 0 && self.rng.chance(self.garble_per_mille) {
                    let mut b = m.bytes.clone();
                    if !b.is_empty() {
                        let i = self.rng.below(b.len() as u64) as usize;
                        b[i] ^= 1 << self.rng.below(8);
                    }
                    let _ = node.step(&b);
                } else if let Err(e) = node.step(&m.bytes) {
                    // With garbling on, a garbled frame that passed validation may have misled
                    // a node (Raft does not survive lying peers): real messages may be refused.
                    // With membership changes, a node removed (or not yet known) is refused.
                    let stranger = self.churn && e.kind() == ErrorKind::NotFound;
                    if self.garble_per_mille == 0 && !stranger {
                        self.fail(format!(
                            "node {} rejected a message from {}: {e}",
                            m.to, m.from
                        ));
                    }
                }
            }
            if m.is_snapshot {
                if let Some(leader) = self.nodes[f].as_mut() {
                    leader.report_snapshot(m.to, delivered);
                }
            }
        }
        for node in self.nodes.iter_mut().flatten() {
            if self.rng.chance(350) {
                node.tick();
            }
        }
        // Client traffic at whichever node believes it leads.
        if self.own_traffic && self.rng.chance(400) {
            let live: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .collect();
            if !live.is_empty() {
                let i = live[self.rng.below(live.len() as u64) as usize];
                for _ in 0..1 + self.rng.below(6) {
                    self.propose_at(i, now);
                }
            }
        }
        if faults {
            self.faults();
            if self.churn && self.rng.chance(12) {
                self.churn(now);
            }
        }
        // Every node's Ready.
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            let vote = (node.term(), node.raw.raft.vote);
            let out = node
                .ready(now)
                .unwrap_or_else(|e| panic!("seed {}: ready on {}: {e}", self.seed, i + 1));
            let id = i as u64 + 1;
            self.snapshots_installed += u64::from(out.snapshot_installed);
            for a in &out.applied {
                if let Some(key) = self.pending.remove(&(id, a.id)) {
                    if KvResult::decode(&a.result) == Some(KvResult::Done) {
                        self.acked.push(key);
                    }
                }
            }
            for d in out.dropped.iter().chain(&out.unknown) {
                self.pending.remove(&(id, *d));
            }
            if self.record {
                let applied = out
                    .applied
                    .iter()
                    .map(|a| (id, a.id, Outcome::Applied(a.result.clone())));
                let dropped = out.dropped.iter().map(|d| (id, *d, Outcome::Dropped));
                let unknown = out.unknown.iter().map(|d| (id, *d, Outcome::Unknown));
                self.outcomes.extend(applied.chain(dropped).chain(unknown));
                for r in &out.reads {
                    if let Some(key) = self.read_keys.remove(&(id, r.id)) {
                        if node.applied_index() < r.index {
                            self.fail(format!("read {r:?} answered before its index applied"));
                        }
                        let v = node.sm.kv.get(&key).map(<[u8]>::to_vec);
                        self.outcomes.push((id, r.id, Outcome::Read(v)));
                    }
                }
                for d in &out.dropped {
                    self.read_keys.remove(&(id, *d));
                }
            }
            let voted = vote != (node.term(), node.raw.raft.vote) && node.raw.raft.vote != 0;
            for m in out.messages {
                let at = self.step + if faults { self.rng.below(4) } else { 1 };
                self.net.push(InFlight {
                    at,
                    from: id,
                    to: m.to,
                    bytes: m.bytes,
                    is_snapshot: m.is_snapshot,
                });
            }
            // The nemesis's favourite moment: crash right after a vote went out, and come back
            // at once (a node that forgot its vote could then vote twice in one term).
            if faults && voted && self.dirs[i].is_some() && self.rng.chance(300) {
                self.crashes += 1;
                self.restarts += 1;
                self.crash_log.push(id);
                self.pending.retain(|(p, _), _| *p != id);
                self.read_keys.retain(|(p, _), _| *p != id);
                self.nodes[i] = None;
                self.start(id);
            }
        }
        self.check();
    }

    fn propose_at(&mut self, i: usize, now: Duration) {
        let key = format!("k{}", self.next_key).into_bytes();
        self.next_key += 1;
        let op = match self.rng.below(10) {
            0 => KvOp::Get {
                key: b"shared".to_vec(),
            },
            1 => KvOp::Cas {
                key: b"shared".to_vec(),
                expected: None,
                new: key.clone(),
            },
            _ => KvOp::Set {
                key: key.clone(),
                value: b"v".to_vec(),
            },
        };
        let is_set = matches!(op, KvOp::Set { .. });
        let node = self.nodes[i].as_mut().unwrap();
        match node.propose(&op.encode(), now) {
            Ok(Proposed::Accepted(id)) if is_set => {
                self.pending.insert((i as u64 + 1, id), key);
            }
            Ok(Proposed::Accepted(_)) => {}
            Ok(Proposed::NotLeader { leader }) => {
                if leader == Some(i as u64 + 1) {
                    self.fail(format!("node {} names itself leader but refused", i + 1));
                }
            }
            Err(e) if e.kind() == ErrorKind::Full => {}
            Err(e) => self.fail(format!("propose: {e}")),
        }
    }

    fn faults(&mut self) {
        let n = self.nodes.len();
        // Partitions: split into two groups now and then; heal later.
        if self.rng.chance(8) {
            for g in self.group.iter_mut() {
                *g = 0;
            }
            if self.rng.chance(600) {
                let cut = 1 + self.rng.below(n as u64 - 1) as usize;
                for _ in 0..cut {
                    let i = self.rng.below(n as u64) as usize;
                    self.group[i] = 1;
                }
            }
        }
        // Crash a node (its in-memory state is lost; its data directory stays), or restart one.
        if self.dirs[0].is_some() && self.rng.chance(6) {
            let i = self.rng.below(n as u64) as usize;
            if !self.spawned[i] {
                return;
            }
            match self.nodes[i].take() {
                Some(_) => {
                    self.crashes += 1;
                    self.crash_log.push(i as u64 + 1);
                    self.pending.retain(|(id, _), _| *id != i as u64 + 1);
                    self.read_keys.retain(|(id, _), _| *id != i as u64 + 1);
                }
                None => {
                    self.restarts += 1;
                    self.start(i as u64 + 1);
                }
            }
        }
    }

    /// Membership churn at the leader, if there is one: a spare joins as a learner, a
    /// learner is promoted, a voter (not the leader) is removed or replaced by a spare, or
    /// leadership moves to a random voter. Refusals (a change under way, a transfer in
    /// progress, back-pressure) are part of the game.
    fn churn(&mut self, now: Duration) {
        let Some(l) = self
            .nodes
            .iter()
            .flatten()
            .find(|n| n.is_leader())
            .map(|n| n.id())
        else {
            return;
        };
        let m = self.nodes[l as usize - 1].as_ref().unwrap().membership();
        let spare =
            (self.initial + 1..=self.nodes.len() as u64).find(|&id| !self.spawned[id as usize - 1]);
        let others: Vec<u64> = m.voters.iter().copied().filter(|&v| v != l).collect();
        let pick = |rng: &mut Rng, v: &[u64]| v[rng.below(v.len() as u64) as usize];
        let changes = match self.rng.below(5) {
            0 => match spare {
                Some(id) => vec![MemberChange::AddLearner(id)],
                None => return,
            },
            1 if !m.learners.is_empty() => {
                vec![MemberChange::AddVoter(pick(&mut self.rng, &m.learners))]
            }
            2 if m.voters.len() > 3 && !others.is_empty() => {
                vec![MemberChange::Remove(pick(&mut self.rng, &others))]
            }
            3 if !others.is_empty() => match spare {
                Some(id) => vec![
                    MemberChange::AddVoter(id),
                    MemberChange::Remove(pick(&mut self.rng, &others)),
                ],
                None => return,
            },
            _ if !others.is_empty() => {
                let to = pick(&mut self.rng, &others);
                let node = self.nodes[l as usize - 1].as_mut().unwrap();
                node.transfer_leader(to)
                    .unwrap_or_else(|e| self.fail(format!("transfer to {to}: {e}")));
                self.churn_transfers += 1;
                return;
            }
            _ => return,
        };
        let _ = now;
        let node = self.nodes[l as usize - 1].as_mut().unwrap();
        match node.change_membership(&changes) {
            Ok(Proposed::Accepted(_)) => {
                self.churn_changes += 1;
                // A spare named by the change starts now (empty, joining).
                for c in &changes {
                    if let MemberChange::AddLearner(id) | MemberChange::AddVoter(id) = *c {
                        if !self.spawned[id as usize - 1] {
                            self.start(id);
                        }
                    }
                }
            }
            Ok(Proposed::NotLeader { .. }) => self.fail("the leader answered NotLeader".into()),
            Err(e) if matches!(e.kind(), ErrorKind::Busy | ErrorKind::Full) => {}
            Err(e) => self.fail(format!("membership change {changes:?}: {e}")),
        }
    }

    /// The members (voters and learners) by the most advanced live node's configuration.
    fn members(&self) -> Vec<usize> {
        let Some(n) = self
            .nodes
            .iter()
            .flatten()
            .max_by_key(|n| n.applied_index())
        else {
            return Vec::new();
        };
        let m = n.membership();
        (0..self.nodes.len())
            .filter(|&i| m.contains(i as u64 + 1))
            .collect()
    }

    /// The safety properties, over every live node.
    fn check(&mut self) {
        if self.garble_per_mille > 0 {
            return;
        }
        let live: Vec<&Node<Recorder>> = self.nodes.iter().flatten().collect();
        let mut problems = Vec::new();
        if std::env::var_os("EMF_RAFT_TRACE").is_some() {
            let st: Vec<String> = live
                .iter()
                .map(|n| {
                    format!(
                        "{}:{:?}/t{}/v{}/c{}/l{:?}",
                        n.id(),
                        n.raw.raft.state,
                        n.term(),
                        n.raw.raft.vote,
                        n.commit_index(),
                        n.leader()
                    )
                })
                .collect();
            eprintln!("step {} {}", self.step, st.join(" "));
        }
        // Election safety: at most one leader per term.
        for n in &live {
            if n.is_leader() {
                let prev = *self.leaders.entry(n.term()).or_insert(n.id());
                if prev != n.id() {
                    problems.push(format!(
                        "two leaders in term {}: {prev} and {}",
                        n.term(),
                        n.id()
                    ));
                }
            }
        }
        // Committed entries: one term per index across all nodes (state-machine safety of the
        // log), recorded for leader completeness.
        for n in &live {
            let st = n.storage();
            let base = st.snapshot_index();
            for e in st.entries_held() {
                if e.index > n.commit_index() {
                    break;
                }
                let (t, _) = *self.committed.entry(e.index).or_insert((e.term, n.term()));
                if t != e.term {
                    problems.push(format!(
                        "index {} committed with terms {t} and {} (node {})",
                        e.index,
                        e.term,
                        n.id()
                    ));
                }
            }
            let _ = base;
        }
        // Log matching: two logs with an entry of the same index and term agree before it.
        for (a, na) in live.iter().enumerate() {
            for nb in &live[a + 1..] {
                let (sa, sb) = (na.storage(), nb.storage());
                let lo = sa.snapshot_index().max(sb.snapshot_index()) + 1;
                let hi = (sa.snapshot_index() + sa.entries_held().len() as u64)
                    .min(sb.snapshot_index() + sb.entries_held().len() as u64);
                fn at(s: &LogStorage, i: u64) -> &Entry {
                    &s.entries_held()[(i - s.snapshot_index() - 1) as usize]
                }
                let mut matched = false;
                for i in (lo..=hi).rev() {
                    let (ea, eb) = (at(sa, i), at(sb, i));
                    if matched || ea.term == eb.term {
                        matched = true;
                        if ea.term != eb.term || ea.data != eb.data {
                            problems.push(format!(
                                "logs of {} and {} differ at {i} below a matching entry",
                                na.id(),
                                nb.id()
                            ));
                            break;
                        }
                    }
                }
            }
        }
        // Leader completeness: a leader of a later term than the one an entry was committed in
        // holds it (unless compacted into its snapshot). A deposed leader of an older term
        // that does not know yet may lack it.
        for n in &live {
            if !n.is_leader() {
                continue;
            }
            let st = n.storage();
            let last = st.snapshot_index() + st.entries_held().len() as u64;
            for (&i, &(t, by)) in self.committed.range(st.snapshot_index() + 1..) {
                if by >= n.term() {
                    continue;
                }
                if i > last {
                    problems.push(format!(
                        "leader {} (term {}) lacks committed entry {i}",
                        n.id(),
                        n.term()
                    ));
                    break;
                }
                let e = &st.entries_held()[(i - st.snapshot_index() - 1) as usize];
                if e.term != t {
                    problems.push(format!(
                        "leader {} holds term {} at committed {i} (term {t})",
                        n.id(),
                        e.term
                    ));
                }
            }
        }
        // State-machine safety: every node applies the same operation at each position.
        for node in self.nodes.iter_mut().flatten() {
            let id = node.id();
            for (i, ord, op) in node.sm.seen.drain(..) {
                let prev = self.applied.entry((i, ord)).or_insert_with(|| op.clone());
                if *prev != op {
                    problems.push(format!(
                        "node {} applied a different operation at {i}.{ord}",
                        id
                    ));
                }
            }
        }
        if let Some(p) = problems.first() {
            self.fail(p.clone());
        }
    }

    /// Heals everything, restarts crashed nodes and runs without faults until a fresh write
    /// commits everywhere; then the replicas must be equal and hold every acknowledged write.
    fn settle(&mut self) {
        for g in self.group.iter_mut() {
            *g = 0;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_none() && self.spawned[i] {
                self.start(i as u64 + 1);
            }
        }
        let mut marker: Option<(u64, ProposalId)> = None;
        for _ in 0..3000 {
            self.run_step(false);
            if let Some(l) = self
                .nodes
                .iter()
                .flatten()
                .find(|n| n.is_leader())
                .map(|n| n.id() as usize - 1)
            {
                if marker.is_none()
                    || !self.pending.contains_key(&marker.unwrap()) && !self.done(marker.unwrap())
                {
                    let key = format!("final{}", self.step).into_bytes();
                    let op = KvOp::Set {
                        key: key.clone(),
                        value: b"end".to_vec(),
                    };
                    let now = self.now();
                    if let Ok(Proposed::Accepted(id)) =
                        self.nodes[l].as_mut().unwrap().propose(&op.encode(), now)
                    {
                        self.pending.insert((l as u64 + 1, id), key);
                        marker = Some((l as u64 + 1, id));
                    }
                }
            }
            if let Some(m) = marker {
                if self.done(m) && self.all_equal() {
                    let first = self.members()[0];
                    let kv = &self.nodes[first].as_ref().unwrap().sm.kv;
                    for k in &self.acked {
                        if kv.get(k).is_none() {
                            self.fail(format!(
                                "acknowledged write {} lost",
                                String::from_utf8_lossy(k)
                            ));
                        }
                    }
                    return;
                }
            }
        }
        self.fail(format!(
            "no progress after healing: the cluster did not settle (marker {marker:?} pending \
             {}, last acked {:?}, equal {}): {:#?}",
            marker.is_some_and(|m| self.pending.contains_key(&m)),
            self.acked
                .last()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            self.all_equal(),
            self.dump()
        ));
    }

    /// Every live node's indexes and configuration, for a failure message.
    fn dump(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| {
                format!(
                    "{}: {:?} t{} applied {} commit {} snapshot {} ({:?}) conf@{} {:?}",
                    n.id(),
                    n.raw.raft.state,
                    n.term(),
                    n.applied_index(),
                    n.commit_index(),
                    n.storage().snapshot_index(),
                    n.storage()
                        .latest_snapshot()
                        .get_metadata()
                        .get_conf_state()
                        .voters,
                    n.storage().conf_index(),
                    n.membership()
                )
            })
            .collect()
    }

    fn done(&self, marker: (u64, ProposalId)) -> bool {
        !self.pending.contains_key(&marker)
            && self.acked.last().is_some_and(|k| k.starts_with(b"final"))
    }

    fn all_equal(&self) -> bool {
        let members = self.members();
        if members.is_empty() || members.iter().any(|&i| self.nodes[i].is_none()) {
            return false;
        }
        let first = self.nodes[members[0]].as_ref().unwrap();
        if first.membership().is_joint() {
            return false;
        }
        members
            .iter()
            .map(|&i| self.nodes[i].as_ref().unwrap())
            .all(|n| {
                n.applied_index() == first.applied_index()
                    && n.sm.kv == first.sm.kv
                    && n.applied_index() == n.commit_index()
            })
    }
}

/// The seeds of a simulation test: `base..base + n`, n = `EMF_RAFT_SEEDS` or the suite's
/// count; `EMF_RAFT_SEED=s` runs seed `s` alone (of the tests whose range holds it).
fn seeds(base: u64, suite: u64) -> std::ops::Range<u64> {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let n = env("EMF_RAFT_SEEDS").unwrap_or(suite);
    match env("EMF_RAFT_SEED") {
        Some(s) if (base..base + n.max(1000)).contains(&s) => s..s + 1,
        Some(_) => 0..0,
        None => base..base + n,
    }
}

fn run_cluster(n: u64, seed: u64, durable: bool, steps: u64) -> Sim {
    let mut sim = Sim::new(seed, n, durable);
    for _ in 0..steps {
        sim.run_step(true);
    }
    sim.settle();
    if std::env::var("EMF_RAFT_SUMMARY").is_ok() {
        eprintln!(
            "n={n} seed={seed} acked={} leaders={} crashes={} restarts={} snapshots_installed={} final_index={}",
            sim.acked.len(),
            sim.leaders.len(),
            sim.crashes,
            sim.restarts,
            sim.snapshots_installed,
            sim.nodes[0].as_ref().unwrap().applied_index()
        );
    }
    sim
}

#[test]
fn sim_three_nodes_memory() {
    for seed in seeds(1000, 15) {
        run_cluster(3, seed, false, 1500);
    }
}

#[test]
fn sim_three_nodes_durable_with_crashes() {
    for seed in seeds(2000, 15) {
        run_cluster(3, seed, true, 1500);
    }
}

#[test]
fn sim_five_nodes_memory() {
    for seed in seeds(3000, 10) {
        run_cluster(5, seed, false, 1500);
    }
}

#[test]
fn sim_five_nodes_durable_with_crashes() {
    for seed in seeds(4000, 10) {
        run_cluster(5, seed, true, 1500);
    }
}

/// A cluster of `n` voters and two spare slots under the usual faults plus membership churn
/// (learners joining, promotions, removals, replacements, leadership transfers).
fn run_churn(n: u64, seed: u64, durable: bool, steps: u64) -> Sim {
    let mut sim = Sim::with_spares(seed, n, 2, durable);
    sim.churn = true;
    for _ in 0..steps {
        sim.run_step(true);
    }
    sim.settle();
    if std::env::var("EMF_RAFT_SUMMARY").is_ok() {
        let first = sim.members()[0];
        eprintln!(
            "churn n={n} seed={seed} acked={} leaders={} crashes={} changes={} transfers={} \
             members={:?} conf_applied={} final_index={}",
            sim.acked.len(),
            sim.leaders.len(),
            sim.crashes,
            sim.churn_changes,
            sim.churn_transfers,
            sim.nodes[first].as_ref().unwrap().membership(),
            sim.nodes
                .iter()
                .flatten()
                .map(|n| n.stats().conf_applied)
                .sum::<u64>(),
            sim.nodes[first].as_ref().unwrap().applied_index()
        );
    }
    sim
}

#[test]
fn sim_membership_churn_three_nodes_memory() {
    for seed in seeds(9000, 10) {
        run_churn(3, seed, false, 1500);
    }
}

#[test]
fn sim_membership_churn_three_nodes_durable_with_crashes() {
    for seed in seeds(9500, 10) {
        run_churn(3, seed, true, 1500);
    }
}

#[test]
fn sim_membership_churn_five_nodes_durable_with_crashes() {
    for seed in seeds(9700, 5) {
        run_churn(5, seed, true, 1500);
    }
}

#[test]
fn sim_membership_churn_is_exercised() {
    // Not a safety check: the churn must actually change the membership, or the runs above
    // would pass vacuously.
    let (mut joined, mut removed, mut transfers, mut changes) = (0, 0, 0, 0);
    for seed in 9900..9904 {
        let sim = run_churn(3, seed, true, 1500);
        let members = sim.members();
        joined += members.iter().filter(|&&i| i >= 3).count();
        removed += (0..3).filter(|i| !members.contains(i)).count();
        transfers += sim.churn_transfers;
        changes += sim
            .nodes
            .iter()
            .flatten()
            .map(|n| n.stats().conf_applied)
            .max()
            .unwrap_or(0);
    }
    assert!(joined > 0, "no spare became a member");
    assert!(removed > 0, "no initial voter was removed");
    assert!(transfers > 0, "no leadership transfer");
    assert!(changes >= 4, "only {changes} configuration changes applied");
}

#[test]
fn sim_makes_progress_and_exercises_snapshots() {
    // Not a safety check: the simulation must actually elect, commit and compact, or the
    // checks above would pass vacuously.
    let sim = run_cluster(3, 77, true, 800);
    assert!(
        sim.acked.len() > 20,
        "only {} writes acknowledged",
        sim.acked.len()
    );
    assert!(
        sim.leaders.len() > 1,
        "no leader change in 800 faulty steps"
    );
    let snaps: u64 = sim
        .nodes
        .iter()
        .flatten()
        .map(|n| n.stats().snapshots)
        .sum();
    let based = sim
        .nodes
        .iter()
        .flatten()
        .filter(|n| n.storage().snapshot_index() > 0)
        .count();
    assert!(snaps > 0 || based > 0, "no snapshot taken");
    let batches: u64 = sim.nodes.iter().flatten().map(|n| n.stats().batches).sum();
    assert!(batches > 0);
}

#[test]
fn batching_flushes_full_batches_at_once_and_waits_only_while_the_pipeline_is_busy() {
    let mut c = Config::new(1, vec![1]);
    c.max_batch_ops = 3;
    let mut n = Node::new(c, LogStorage::memory(), KvStore::new()).unwrap();
    n.campaign().unwrap();
    let mut now = Duration::ZERO;
    n.ready(now).unwrap();
    assert!(n.is_leader());
    let op = KvOp::Set {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }
    .encode();
    for _ in 0..7 {
        n.propose(&op, now).unwrap();
    }
    // 7 ops at 3 per batch: two full batches went out in propose, the third at ready
    // (single voter: the pipeline is always free, so no waiting for the window).
    assert_eq!(n.stats().flush_full, 2);
    assert_eq!(n.next_deadline(), Some(now + Duration::from_millis(10)));
    let out = n.ready(now).unwrap();
    assert_eq!(out.applied.len(), 7);
    assert_eq!(n.stats().batches, 3);
    assert_eq!(n.stats().flush_slot, 1);
    assert_eq!(n.next_deadline(), None);
    now += Duration::from_millis(1);
    // Three-node leader with followers that never answer: the pipeline fills (2 slots), then a
    // batch waits until the window expires.
    let mut c = Config::new(1, vec![1, 2, 3]);
    c.max_inflight_msgs = 2;
    c.max_batch_ops = 1000;
    let mut n = leader_of_three(c, now);
    // Followers start in Probe state; acknowledge the leader's empty entry so they replicate.
    let last = n.storage().entries_held().last().unwrap().index;
    for v in [2u64, 3] {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgAppendResponse);
        m.from = v;
        m.to = 1;
        m.term = n.term();
        m.index = last;
        n.step(&m.write_to_bytes().unwrap()).unwrap();
    }
    n.ready(now).unwrap();
    let before = n.stats();
    let mut sent = 0;
    for _ in 0..4 {
        n.propose(&op, now).unwrap();
        sent += n.ready(now).unwrap().messages.len();
    }
    let after = n.stats();
    assert!(sent > 0);
    assert_eq!(
        after.flush_slot - before.flush_slot,
        2,
        "two batches fill the two slots"
    );
    assert!(
        n.next_deadline().is_some(),
        "the rest waits while the pipeline is full"
    );
    now += Duration::from_millis(10);
    n.ready(now).unwrap();
    assert_eq!(
        n.stats().flush_window - before.flush_window,
        1,
        "the window flushes it"
    );
}

/// Node 1 of {1, 2, 3}, made leader by votes granted by hand (pre-vote off for brevity).
fn leader_of_three(mut c: Config, now: Duration) -> Node<KvStore> {
    c.pre_vote = false;
    let mut n = Node::new(c, LogStorage::memory(), KvStore::new()).unwrap();
    n.campaign().unwrap();
    n.ready(now).unwrap();
    for v in [2u64, 3] {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVoteResponse);
        m.from = v;
        m.to = 1;
        m.term = n.term();
        n.step(&m.write_to_bytes().unwrap()).unwrap();
    }
    n.ready(now).unwrap();
    assert!(n.is_leader(), "leader after the votes");
    n
}

#[test]
fn leadership_loss_reports_dropped_proposals() {
    let now = Duration::ZERO;
    let mut c = Config::new(1, vec![1, 2, 3]);
    c.max_inflight_msgs = 1;
    let mut n = leader_of_three(c, now);
    // Flushed (the entry is in the log, unacknowledged) and still batched proposals.
    let Proposed::Accepted(a) = n.propose(b"a", now).unwrap() else {
        panic!()
    };
    n.ready(now).unwrap();
    let Proposed::Accepted(b) = n.propose(b"b", now).unwrap() else {
        panic!()
    };
    // Node 2 leads term 9 now: the batch is dropped at once.
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = 2;
    m.to = 1;
    m.term = n.term() + 8;
    n.step(&m.write_to_bytes().unwrap()).unwrap();
    let out = n.ready(now).unwrap();
    assert!(!n.is_leader());
    assert!(out.dropped.contains(&b), "{:?}", out.dropped);
    assert_eq!(
        n.propose(b"x", now).unwrap(),
        Proposed::NotLeader { leader: Some(2) }
    );
    // The new leader replaces the flushed entry: its proposal is dropped when that commits.
    let flushed_at = n.storage().entries_held().last().unwrap().index;
    let other = Entry {
        index: flushed_at,
        term: m.term,
        ..Default::default()
    };
    let mut app = raft::eraftpb::Message::default();
    app.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    app.from = 2;
    app.to = 1;
    app.term = m.term;
    app.index = flushed_at - 1;
    app.log_term = n.storage().entries_held()[(flushed_at - 2) as usize].term;
    app.commit = flushed_at;
    app.entries = vec![other].into();
    n.step(&app.write_to_bytes().unwrap()).unwrap();
    let out = n.ready(now).unwrap();
    assert!(out.dropped.contains(&a), "{:?}", out.dropped);
    assert!(out.applied.is_empty());
}

#[test]
fn a_vote_survives_a_crash() {
    // Node 3 votes for 1 in term 5, crashes, restarts from its directory and is asked by 2 in
    // the same term: it must refuse (a forgotten vote elects two leaders in one term).
    let dir = TempDir::new("raft-vote");
    let vote = |n: &mut Node<KvStore>, from: u64| -> bool {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
        m.from = from;
        m.to = 3;
        m.term = 5;
        n.step(&m.write_to_bytes().unwrap()).unwrap();
        let out = n.ready(Duration::ZERO).unwrap();
        let resp = out
            .messages
            .iter()
            .find(|o| o.to == from)
            .expect("a vote response");
        let r = raft::eraftpb::Message::parse_from_bytes(&resp.bytes).unwrap();
        assert_eq!(
            r.get_msg_type(),
            raft::eraftpb::MessageType::MsgRequestVoteResponse
        );
        !r.reject
    };
    let mut n = Node::new(
        Config::new(3, vec![1, 2, 3]),
        LogStorage::open(&dir.0).unwrap(),
        KvStore::new(),
    )
    .unwrap();
    assert!(vote(&mut n, 1), "first vote of term 5 granted");
    drop(n);
    let mut n = Node::new(
        Config::new(3, vec![1, 2, 3]),
        LogStorage::open(&dir.0).unwrap(),
        KvStore::new(),
    )
    .unwrap();
    assert_eq!(n.term(), 5);
    assert!(
        !vote(&mut n, 2),
        "second vote of term 5 refused after the restart"
    );
    assert!(vote(&mut n, 1), "the same candidate is granted again");
}

#[test]
fn mutated_peer_messages_never_panic_a_node() {
    // Real traffic of a simulated cluster, addressed to node 2, with bytes flipped, cut or
    // appended, stepped into a fresh node 2 (and a node that has followed the real traffic):
    // an error or a harmless step, never a panic.
    let mut sim = Sim::new(5, 3, false);
    let mut traffic: Vec<Vec<u8>> = Vec::new();
    while traffic.len() < 1500 && sim.step < 3000 {
        sim.run_step(true);
        traffic.extend(
            sim.net
                .iter()
                .filter(|m| m.to == 2)
                .map(|m| m.bytes.clone()),
        );
    }
    let mut rng = Rng(99);
    let mut fresh = Node::new(config(2, 3), LogStorage::memory(), KvStore::new()).unwrap();
    let mut rejected = 0;
    for (k, bytes) in traffic.iter().enumerate() {
        let mut b = bytes.clone();
        match rng.below(4) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
            2 => b.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            _ => {
                let i = rng.below(b.len() as u64 + 1) as usize;
                b.insert(i, rng.next() as u8);
            }
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let r = fresh.step(&b);
            fresh.tick();
            fresh
                .ready(Duration::from_millis(k as u64))
                .map(|_| r.is_err())
        }));
        match run {
            Ok(Ok(err)) => rejected += u64::from(err),
            Ok(Err(e)) => panic!("message {k}: ready failed: {e}"),
            Err(_) => panic!("message {k} ({} bytes) panicked the node", b.len()),
        }
    }
    assert!(
        rejected > 0,
        "no mutation was rejected: the test mutates nothing"
    );
}

#[test]
fn garbled_frames_in_a_running_cluster_never_panic_a_node() {
    // Leaders, candidates and followers alike receive bit-flipped frames (3 %) while the
    // cluster runs with every other fault; every node must stay up.
    for seed in seeds(5000, 10) {
        let mut sim = Sim::new(seed, 3, seed % 2 == 0);
        sim.garble_per_mille = 30;
        for _ in 0..1500 {
            sim.run_step(true);
        }
    }
}

/// Only a voter campaigns: raft-rs's own campaign does not check it, and a node without a
/// vote (joining with no configuration yet, or a learner) won with an empty quorum and then
/// panicked (found by the `raft_step` fuzz target). Neither an explicit campaign nor any
/// number of election timeouts makes such a node a candidate or a leader.
#[test]
fn only_a_voter_campaigns() {
    let now = Duration::ZERO;
    // Pre-vote off: any election would raise the term, which the test watches.
    let config = |id| {
        let mut c = config(id, 0);
        c.pre_vote = false;
        c
    };
    // A joining node: no voters configured, an empty store.
    let mut joining = Node::new(config(4), LogStorage::memory(), KvStore::new()).unwrap();
    assert!(joining.voters().is_empty());
    // A learner of {1, 2, 3}.
    let mut store = LogStorage::memory();
    store
        .set_conf_state(&cs(&[1, 2, 3], &[4], &[], &[]), 0)
        .unwrap();
    let mut learner = Node::new(config(4), store, KvStore::new()).unwrap();
    assert_eq!(learner.voters(), &[1, 2, 3]);
    for (name, n) in [("joining", &mut joining), ("learner", &mut learner)] {
        let e = n.campaign().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
        assert!(e.message().contains("not a voter"), "{name}: {e}");
        for _ in 0..100 {
            n.tick();
            n.ready(now).unwrap();
        }
        assert!(!n.is_leader(), "{name} leads");
        assert_eq!(n.term(), 0, "{name} started an election");
    }
    // The same configuration lets a voter campaign (the refusal is about the vote).
    let mut store = LogStorage::memory();
    store
        .set_conf_state(&cs(&[1, 2, 3], &[4], &[], &[]), 0)
        .unwrap();
    let mut voter = Node::new(config(1), store, KvStore::new()).unwrap();
    voter.campaign().unwrap();
    voter.ready(now).unwrap();
    assert!(voter.term() > 0, "a voter's campaign starts an election");
}
