//! The durable ledgers: [`ShmLedger`] (a shared-memory segment: survives the death of any
//! process, the scheduler's included) and [`FileLedger`] (an append-only file with group
//! commit: survives a reboot).
//!
//! Both frame each record the same way (length, CRC32C, body) so that a torn append
//! (a process killed, or a machine stopped, in the middle of writing) is detected and
//! ignored, while damage to a record that was durably appended is reported as
//! `ErrorKind::Corrupt`, never replayed as something else. Both compact the same way
//! ([`compact`]): the records of the tasks not yet ended, in their order, and the record that
//! shows the largest task id ever used, so a restarted scheduler never reuses an id.

pub(super) mod codec;
pub mod file;
pub mod shm;
pub mod view;

#[cfg(test)]
mod durable_tests;
#[cfg(all(test, loom))]
mod model;

use std::collections::{BTreeMap, BTreeSet};

use super::types::{LedgerRecord, TaskId};
use codec::task_of;

pub use file::{FileLedger, FileLedgerOptions};
pub use shm::{ShmLedger, ShmLedgerOptions};
pub use view::{DeadLetterInfo, LeaseInfo, LedgerStatus, QueuedTask};

/// True for the records that end a task (`Completed`, `DeadLettered`).
pub fn ends_task(r: &LedgerRecord) -> bool {
    matches!(
        r,
        LedgerRecord::Completed { .. } | LedgerRecord::DeadLettered { .. }
    )
}

/// The records equivalent to `records` for replay: every record of the tasks not yet ended,
/// in their original order, and, when the task with the largest id has ended, its first
/// ending record (so the largest id ever used survives compaction and ids are never reused).
/// Records of ended tasks are dropped otherwise.
pub fn compact(records: &[LedgerRecord]) -> Vec<LedgerRecord> {
    let mut ended = BTreeSet::new();
    let mut max: Option<TaskId> = None;
    for r in records {
        let id = task_of(r);
        max = max.max(Some(id));
        if ends_task(r) {
            ended.insert(id);
        }
    }
    let mut kept_max_end = false;
    records
        .iter()
        .filter(|r| {
            let id = task_of(r);
            if !ended.contains(&id) {
                return true;
            }
            if Some(id) == max && ends_task(r) && !kept_max_end {
                kept_max_end = true;
                return true;
            }
            false
        })
        .cloned()
        .collect()
}

/// What a replay says, independent of compaction: the records of every task not yet ended
/// (in order) and the largest task id ever used. Two record sequences are equivalent for
/// replay exactly when their summaries are equal.
pub fn summary(records: &[LedgerRecord]) -> (BTreeMap<TaskId, Vec<LedgerRecord>>, Option<TaskId>) {
    let mut live: BTreeMap<TaskId, Vec<LedgerRecord>> = BTreeMap::new();
    let mut ended = BTreeSet::new();
    let mut max = None;
    for r in records {
        let id = task_of(r);
        max = max.max(Some(id));
        if ends_task(r) {
            ended.insert(id);
        }
        live.entry(id).or_default().push(r.clone());
    }
    live.retain(|id, _| !ended.contains(id));
    (live, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::types::{AgentId, AgentType};

    pub(crate) fn accepted(id: u64) -> LedgerRecord {
        LedgerRecord::Accepted {
            id: TaskId(id),
            agent_type: AgentType::new("t").unwrap(),
            priority: crate::priority::Priority::Normal,
            payload: id.to_le_bytes().to_vec(),
        }
    }

    #[test]
    fn compaction_keeps_exactly_the_live_tasks_and_the_max_id() {
        let leased = |id| LedgerRecord::Leased {
            id: TaskId(id),
            agent: AgentId::new("a").unwrap(),
            attempt: 1,
            deadline: 9,
        };
        let done = |id| LedgerRecord::Completed {
            id: TaskId(id),
            result: vec![id as u8],
        };
        let dead = |id| LedgerRecord::DeadLettered {
            id: TaskId(id),
            reason: "x".into(),
        };
        let log = vec![
            accepted(1),
            accepted(2),
            leased(1),
            accepted(3),
            done(2),
            leased(3),
            accepted(4),
            dead(4),
            done(4), // a duplicate result after the end: not kept
        ];
        let c = compact(&log);
        assert_eq!(
            c,
            vec![accepted(1), leased(1), accepted(3), leased(3), dead(4)]
        );
        assert_eq!(summary(&c), summary(&log));
        assert_eq!(summary(&c).1, Some(TaskId(4)));
        assert_eq!(compact(&c), c, "compaction is idempotent");
        // The largest id belongs to a live task: nothing else of ended tasks is kept.
        let log2 = vec![accepted(7), done(7), accepted(8)];
        assert_eq!(compact(&log2), vec![accepted(8)]);
        // Everything ended: only the largest id's end.
        let log3 = vec![accepted(1), done(1), accepted(2), done(2)];
        assert_eq!(compact(&log3), vec![done(2)]);
        assert_eq!(summary(&compact(&log3)), summary(&log3));
        assert!(compact(&[]).is_empty());
    }
}
