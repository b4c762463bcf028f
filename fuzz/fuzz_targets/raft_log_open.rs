//! Arbitrary bytes as the files of a Raft data directory: `LogStorage::open` must answer an
//! error or a store, and a node started over that store must run (ticks, a campaign, a
//! proposal, Ready rounds) without a panic — raft-rs panics on an inconsistent state (a
//! commit index beyond the log, say), so the store checks what it recovers.
//!
//! The first byte chooses how the rest is read:
//! * even — raw files: a `u16` length, that many bytes of `log`, the rest `snapshot` (bit 1
//!   of the first byte: no snapshot file);
//! * odd — records with valid checksums, so the fuzzer gets past the CRC into the replay and
//!   the state checks: 5-byte chunks `[kind, a, b, c, d]` become an entry (index a % 16,
//!   term b % 8), a HardState (term, vote, commit), a ConfState (voters and learners from the
//!   bits of a and b; with the index c % 16 of its change or without one), a base mark
//!   (index, term), or a snapshot file (index, term, voters, with a valid or a garbage
//!   state). The record format is the one `raft/storage.rs` documents; a checksum is CRC32C
//!   over the kind byte and the payload.
//!
//! Bit 2 of the first byte starts the node as a joining one (no voters configured) instead
//! of as node 1 of voters 1, 2, 3.
#![no_main]

use std::path::Path;
use std::time::Duration;

use erlmcp_flow::raft::{Config, KvOp, KvStore, LogStorage, Node, StateMachine};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

fn record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

fn conf(a: u8, b: u8) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = (0..5u64).filter(|i| a & (1 << i) != 0).collect();
    cs.learners = (0..5u64).filter(|i| b & (1 << i) != 0).collect();
    cs
}

fn structured(data: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut log = b"EMFRLOG1".to_vec();
    let mut snap = None;
    for c in data.chunks_exact(5) {
        let (a, b, cc, d) = (c[1], c[2], c[3], c[4]);
        match c[0] % 7 {
            0 | 1 => {
                let mut e = Entry::default();
                e.index = u64::from(a % 16);
                e.term = u64::from(b % 8);
                e.data = KvOp::Set {
                    key: vec![cc % 4],
                    value: vec![d],
                }
                .encode()
                .into();
                record(&mut log, 1, &e.write_to_bytes().unwrap());
            }
            2 => {
                let mut h = HardState::default();
                h.term = u64::from(a % 8);
                h.vote = u64::from(b % 5);
                h.commit = u64::from(cc % 16);
                record(&mut log, 2, &h.write_to_bytes().unwrap());
            }
            3 => record(&mut log, 3, &conf(a, b).write_to_bytes().unwrap()),
            6 => {
                let mut p = u64::from(cc % 16).to_le_bytes().to_vec();
                p.extend_from_slice(&conf(a, b).write_to_bytes().unwrap());
                record(&mut log, 5, &p);
            }
            4 => {
                let mut p = u64::from(a % 16).to_le_bytes().to_vec();
                p.extend_from_slice(&u64::from(b % 8).to_le_bytes());
                record(&mut log, 4, &p);
            }
            _ => {
                let mut meta = SnapshotMetadata::default();
                meta.index = u64::from(a % 16);
                meta.term = u64::from(b % 8);
                meta.set_conf_state(conf(cc, d >> 5));
                let mut s = Snapshot::default();
                s.set_metadata(meta);
                let mut kv = KvStore::new();
                kv.execute(KvOp::Set {
                    key: b"s".to_vec(),
                    value: vec![d],
                });
                s.data = if d % 4 == 0 { vec![d; 3] } else { kv.snapshot() }.into();
                let body = s.write_to_bytes().unwrap();
                let mut f = b"EMFRSNP1".to_vec();
                f.extend_from_slice(&(body.len() as u64).to_le_bytes());
                f.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
                f.extend_from_slice(&body);
                snap = Some(f);
            }
        }
    }
    (log, snap)
}

fn run(dir: &Path, joining: bool) {
    let Ok(st) = LogStorage::open(dir) else {
        return;
    };
    let voters = if joining { vec![] } else { vec![1, 2, 3] };
    let Ok(mut node) = Node::new(Config::new(1, voters), st, KvStore::new()) else {
        return;
    };
    let mut now = Duration::ZERO;
    for i in 0..30 {
        node.tick();
        if i == 3 {
            let _ = node.campaign();
        }
        if i == 5 {
            let op = KvOp::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            };
            let _ = node.propose(&op.encode(), now);
        }
        now += Duration::from_millis(10);
        if node.ready(now).is_err() {
            return;
        }
    }
    assert!(node.applied_index() <= node.commit_index());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("emf-fuzz-raftlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (log, snap) = if mode % 2 == 0 {
        let n = rest.get(..2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        let rest = rest.get(2..).unwrap_or(&[]);
        let n = n.min(rest.len());
        let snap = (mode & 2 == 0).then(|| rest[n..].to_vec());
        (rest[..n].to_vec(), snap)
    } else {
        structured(rest)
    };
    std::fs::write(dir.join("log"), &log).unwrap();
    if let Some(s) = snap {
        std::fs::write(dir.join("snapshot"), &s).unwrap();
    }
    run(&dir, mode & 4 != 0);
    let _ = std::fs::remove_dir_all(&dir);
});
