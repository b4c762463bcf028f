//! The replicated ledger: the state machine alone (appends once per writer sequence, pages,
//! snapshots, bad operations), and a scheduler writing through three in-process Raft nodes
//! whose leader is stopped, then recovered by a second scheduler from the cluster.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::priority::Priority;
use crate::replica::client::ClientOptions;
use crate::replica::node::{spawn_node, NodeHandle, NodeSpec, NodeTransport};
use crate::sched::ledger::summary;
use crate::sched::types::{AgentId, AgentType, Liveness, TaskId};
use crate::sched::{Scheduler, SchedulerConfig};
use crate::testutil::TempDir;

fn accepted(id: u64, payload: &[u8]) -> LedgerRecord {
    LedgerRecord::Accepted {
        id: TaskId(id),
        agent_type: AgentType::new("t").unwrap(),
        priority: Priority::Normal,
        payload: payload.to_vec(),
    }
}

fn completed(id: u64) -> LedgerRecord {
    LedgerRecord::Completed {
        id: TaskId(id),
        result: b"ok".to_vec(),
    }
}

fn append_op(writer: u64, seq: u64, records: &[LedgerRecord]) -> Vec<u8> {
    let mut op = vec![OP_APPEND];
    op.extend_from_slice(&writer.to_le_bytes());
    op.extend_from_slice(&seq.to_le_bytes());
    for r in records {
        encode_frame(r, &mut op).unwrap();
    }
    op
}

fn page_op(offset: u32, max: u32) -> Vec<u8> {
    let mut op = vec![OP_PAGE];
    op.extend_from_slice(&offset.to_le_bytes());
    op.extend_from_slice(&max.to_le_bytes());
    op
}

#[test]
fn appends_apply_once_per_writer_sequence_and_pages_cover_the_compacted_ledger() {
    let mut m = LedgerMachine::new();
    let mut all = Vec::new();
    for i in 1..=2000u64 {
        let mut rs = vec![accepted(i, &[i as u8; 40])];
        if i % 3 == 0 {
            rs.push(completed(i));
        }
        assert_eq!(m.apply(i, &append_op(7, i, &rs)), [ANS_APPLIED]);
        all.extend(rs.clone());
        // A resend of the same append (at-least-once client): skipped.
        if i % 100 == 0 {
            assert_eq!(m.apply(i, &append_op(7, i, &rs)), [ANS_DUPLICATE]);
            assert_eq!(m.apply(i, &append_op(7, i - 1, &rs)), [ANS_DUPLICATE]);
        }
    }
    assert_eq!(m.version(), 2000);
    assert_eq!(summary(&m.records()), summary(&all));
    // Compacted as it went: ended tasks are not all kept.
    assert!(m.records.len() < all.len(), "{}", m.records.len());
    // Pages: small pages, read until the total, give the compacted records in order.
    let mut got = Vec::new();
    loop {
        let r = m.apply(0, &page_op(got.len() as u32, 500));
        assert_eq!(r[0], ANS_PAGE);
        assert_eq!(u64_at(&r, 1), Some(2000));
        let total = u32_at(&r, 9).unwrap() as usize;
        let page = decode_frames(&r[13..]).unwrap();
        assert!(!page.is_empty());
        got.extend(page);
        if got.len() >= total {
            break;
        }
    }
    assert_eq!(got, m.records());
    assert_eq!(
        m.query(&page_op(0, 1 << 20)).unwrap(),
        m.page(&page_op(0, 1 << 20))
    );
    // A snapshot restores the same ledger and the writers' sequences.
    let snap = m.snapshot();
    let mut n = LedgerMachine::new();
    n.check_snapshot(&snap).unwrap();
    n.restore(&snap).unwrap();
    assert_eq!(n.records(), m.records());
    assert_eq!(n.version(), 2000);
    assert_eq!(
        n.apply(1, &append_op(7, 2000, &[accepted(9999, b"")])),
        [ANS_DUPLICATE]
    );
    // Cuts of the snapshot (magic, header, the writers, inside the last record) are refused
    // with Corrupt, never a panic.
    for cut in [0, 7, 8, 19, 20, 43, snap.len() - 1] {
        let e = n.check_snapshot(&snap[..cut]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "cut {cut}: {e}");
    }
}

#[test]
fn bad_operations_are_refused_alike_and_change_nothing() {
    let mut m = LedgerMachine::new();
    m.apply(1, &append_op(1, 1, &[accepted(1, b"p")]));
    let before = m.snapshot();
    let good = append_op(2, 1, &[accepted(2, b"q")]);
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![9],
        vec![OP_APPEND, 1, 2],
        vec![OP_PAGE, 1],
        page_op(0, 1).into_iter().chain([0]).collect(),
        good[..good.len() - 1].to_vec(),
    ];
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    bad.push(flipped);
    for op in &bad {
        let r = m.apply(2, op);
        assert_eq!(r.first(), Some(&ANS_INVALID), "{op:?} -> {r:?}");
    }
    assert_eq!(m.snapshot(), before, "nothing changed");
    assert!(m.query(b"x").is_err());
    // Every single-byte mutation of a good append: applied (if it still decodes), refused,
    // or a duplicate; never a panic.
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut op = good.clone();
            op[i] ^= bit;
            let mut t = LedgerMachine::new();
            let r = t.apply(1, &op);
            assert!(matches!(r[0], ANS_APPLIED | ANS_INVALID), "{r:?}");
        }
    }
}

// ---- over a Raft cluster ---------------------------------------------------------------------

const NODES: [u64; 3] = [1, 2, 3];
const CLIENTS: [u64; 2] = [100, 101];

fn spec(dir: &Path, id: u64) -> NodeSpec {
    let t = NodeTransport::Ring {
        dir: dir.join("net"),
        inbox_capacity: 1 << 20,
        clients: CLIENTS.to_vec(),
    };
    let mut s = NodeSpec::new(id, NODES.to_vec(), Some(dir.join(format!("node-{id}"))), t);
    s.snapshot_entries = 16;
    s
}

fn ledger(dir: &Path, client: u64, writer: u64) -> RaftLedger<crate::net::ring::RingTransport> {
    let opts = ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let c = RaftClient::over_rings(&dir.join("net"), &NODES, &[client], opts).unwrap();
    RaftLedger::new(c, writer)
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and files")]
fn a_scheduler_on_a_replicated_ledger_survives_its_host_and_a_leader() {
    let dir = TempDir::new("sched-raft-ledger");
    std::fs::create_dir_all(dir.0.join("net")).unwrap();
    let mut nodes: Vec<Option<NodeHandle>> = NODES
        .iter()
        .map(|&n| Some(spawn_node(spec(&dir.0, n), LedgerMachine::new()).unwrap()))
        .collect();
    let config = SchedulerConfig {
        work_stealing: false,
        ..SchedulerConfig::default()
    };
    let t = AgentType::new("t").unwrap();
    let a = AgentId::new("a").unwrap();
    let mut s = Scheduler::new(config.clone(), ledger(&dir.0, CLIENTS[0], 1)).unwrap();
    s.register_agent(a.clone(), t.clone(), 4, Liveness::Token(1), 0)
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..40u64 {
        ids.push(s.submit(&t, Priority::Normal, vec![i as u8], 1).unwrap());
        if i == 19 {
            // The leader goes away mid-run: the ledger's client finds the next one.
            let (leader, _) = s.ledger().leader().unwrap();
            let k = NODES.iter().position(|&n| n == leader).unwrap();
            nodes[k].take().unwrap().stop().unwrap();
        }
    }
    // Complete the tasks delivered (the agent's capacity: 4).
    let mut done = Vec::new();
    for action in s.drain_actions() {
        if let crate::sched::Action::Deliver { task, attempt, .. } = action {
            if done.len() < 10 {
                s.ack(&a, task, attempt, b"ok".to_vec(), 2).unwrap();
                done.push(task);
            }
        }
    }
    assert_eq!(done.len(), 4, "the agent's capacity bounds deliveries");
    drop(s); // the scheduler's host is lost

    // Another scheduler (another writer, another client) recovers from the cluster.
    let r = Scheduler::recover(config, ledger(&dir.0, CLIENTS[1], 2), 10).unwrap();
    let st = r.stats();
    assert_eq!(st.queued, ids.len() - done.len(), "{st:?}");
    for h in nodes.into_iter().flatten() {
        h.stop().unwrap();
    }
}
