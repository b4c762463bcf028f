//! Arbitrary messages into a Raft node of a three-node cluster: `Node::step` (and the Ready
//! loop, ticks, campaigns and proposals between them) must answer an error or go on, never
//! panic — raft-rs trusts its peers and panics on some impossible messages, so the node checks
//! them first.
//!
//! The input is a sequence of operations; the first byte of each chooses it:
//! * 0 — raw bytes (a length byte, then that many) stepped as they are: the protobuf decoder;
//! * 1 — a message built from small fields (type, sender, receiver, terms, indexes, commit,
//!   up to four entries, a snapshot), so the fuzzer reaches the checks behind the decoder and
//!   raft-rs itself;
//! * 2 — a tick; 3 — a Ready round; 4 — a proposal; 5 — a campaign; 6 — a read index;
//!   7 — a leadership transfer; 8 — a membership change (one or two of add voter / add
//!   learner / remove, nodes 0..5).
//!
//! `step_from` with the transport's sender is used for half of the built messages. An input
//! whose first byte is odd runs on a joining node (no voters configured: it learns them by
//! snapshot, follows strangers, answers votes).
#![no_main]

use std::time::Duration;

use erlmcp_flow::raft::{Config, KvOp, KvStore, LogStorage, MemberChange, Node, StateMachine};
use libfuzzer_sys::fuzz_target;
use protobuf::{Message as _, ProtobufEnum as _};
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn small(&mut self, n: u8) -> u64 {
        u64::from(self.byte().unwrap_or(0) % n)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn built(inp: &mut Input) -> (Message, u64) {
    let mut m = Message::default();
    let t = inp.small(19) as i32;
    m.set_msg_type(MessageType::from_i32(t).unwrap_or(MessageType::MsgHeartbeat));
    m.from = inp.small(5);
    m.to = inp.small(3);
    m.term = inp.small(6);
    m.log_term = inp.small(6);
    m.index = inp.small(12);
    m.commit = inp.small(12);
    m.reject = inp.small(2) == 1;
    m.reject_hint = inp.small(12);
    let n = inp.small(5);
    let mut ents = Vec::new();
    for _ in 0..n {
        let mut e = Entry::default();
        e.index = inp.small(14);
        e.term = inp.small(6);
        e.data = KvOp::Set {
            key: vec![inp.small(4) as u8],
            value: b"v".to_vec(),
        }
        .encode()
        .into();
        ents.push(e);
    }
    m.entries = ents.into();
    if m.get_msg_type() == MessageType::MsgSnapshot || inp.small(8) == 0 {
        let mut meta = SnapshotMetadata::default();
        meta.index = inp.small(14);
        meta.term = inp.small(6);
        let mut cs = ConfState::default();
        let bits = inp.byte().unwrap_or(0b1110);
        cs.voters = (0..5).filter(|i| bits & (1 << i) != 0).collect();
        cs.learners = (0..4).filter(|i| (bits >> 4) & (1 << i) != 0).collect();
        meta.set_conf_state(cs);
        let mut s = Snapshot::default();
        s.set_metadata(meta);
        let mut kv = KvStore::new();
        kv.execute(KvOp::Set {
            key: b"s".to_vec(),
            value: b"v".to_vec(),
        });
        s.data = if inp.small(4) == 0 {
            inp.bytes(8).to_vec().into()
        } else {
            kv.snapshot().into()
        };
        m.set_snapshot(s);
    }
    let sender = if inp.small(2) == 0 { m.from } else { inp.small(5) };
    (m, sender)
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let voters = match inp.byte() {
        Some(b) if b % 2 == 1 => vec![],
        _ => vec![1, 2, 3],
    };
    let mut node =
        Node::new(Config::new(1, voters), LogStorage::memory(), KvStore::new()).expect("a node");
    let mut now = Duration::ZERO;
    while let Some(op) = inp.byte() {
        match op % 9 {
            0 => {
                let n = inp.byte().unwrap_or(0) as usize;
                let b = inp.bytes(n).to_vec();
                let _ = node.step(&b);
            }
            1 => {
                let (m, sender) = built(&mut inp);
                let b = m.write_to_bytes().expect("encodes");
                let _ = if sender % 2 == 0 {
                    node.step(&b)
                } else {
                    node.step_from(sender, &b)
                };
            }
            2 => node.tick(),
            3 => {
                now += Duration::from_millis(10);
                node.ready(now).expect("ready in memory never fails");
            }
            4 => {
                let op = KvOp::Set {
                    key: vec![inp.small(4) as u8],
                    value: b"p".to_vec(),
                };
                let _ = node.propose(&op.encode(), now);
            }
            5 => {
                let _ = node.campaign();
            }
            6 => {
                let _ = node.read_index(now);
            }
            7 => {
                let _ = node.transfer_leader(inp.small(5));
            }
            _ => {
                let mut changes = Vec::new();
                for _ in 0..=inp.small(2) {
                    let id = inp.small(5);
                    changes.push(match inp.small(3) {
                        0 => MemberChange::AddVoter(id),
                        1 => MemberChange::AddLearner(id),
                        _ => MemberChange::Remove(id),
                    });
                }
                let _ = node.change_membership(&changes);
            }
        }
    }
    now += Duration::from_millis(10);
    node.ready(now).expect("ready in memory never fails");
    assert!(node.applied_index() <= node.commit_index());
});
