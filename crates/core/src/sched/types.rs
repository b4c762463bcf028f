//! The vocabulary shared by the scheduler's parts: ids, times, liveness and the ledger trait.

use crate::error::{Error, Result};
use crate::priority::Priority;

/// A point in time or a duration in microseconds, read from a clock the caller chooses (the
/// state machines never read a clock themselves, so a simulation can drive them exactly).
pub type Micros = u64;

/// A task's id: unique within a scheduler's ledger, never reused (a restarted scheduler
/// continues after the largest id its ledger holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

/// How many times a task has been handed to an agent (1 for the first delivery).
pub type Attempt = u32;

/// An agent's name: 1 to 194 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`: the
/// agent's inbox is the ring `inbox.<id>`, so the id follows the segment-name rules (and `""`,
/// `"."`, `".."` are refused).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

/// The longest agent id: a segment name is at most 200 characters, and `inbox.` takes 6.
pub const MAX_AGENT_ID_LEN: usize = crate::router::MAX_AGENT_NAME_LEN;

impl AgentId {
    /// Checks `id` and makes an agent id of it. The rules are the router's
    /// ([`crate::router::validate_agent_name`]), so an id is always a valid inbox name.
    pub fn new(id: &str) -> Result<AgentId> {
        crate::router::validate_agent_name(id).map(|()| AgentId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's type (its capabilities): tasks name the type they need. Any non-empty UTF-8 text
/// of at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentType(String);

impl AgentType {
    /// Checks `name` and makes an agent type of it.
    pub fn new(name: &str) -> Result<AgentType> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid(format!(
                "agent type {name:?} must be 1-255 bytes of UTF-8"
            )));
        }
        Ok(AgentType(name.to_owned()))
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the scheduler tells that an agent is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// An OS process: its pid and its start time (in clock ticks since boot, as
    /// `/proc/<pid>/stat` field 22 gives it), so that a reused pid is not taken for the agent.
    Process {
        /// The process id.
        pid: u32,
        /// The process's start time.
        start_time: u64,
    },
    /// A token the host gives and checks itself (an Erlang process, a thread): the host tells
    /// the scheduler when the agent is gone.
    Token(u64),
}

/// One durable fact of the scheduler: what a restarted scheduler replays to know every
/// accepted task's state. A task is accepted once its `Accepted` record is in the ledger; it
/// ends with exactly one `Completed` or `DeadLettered`.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerRecord {
    /// A task was accepted: from now on it is never lost.
    Accepted {
        /// The task.
        id: TaskId,
        /// The agent type it needs.
        agent_type: AgentType,
        /// Its priority.
        priority: Priority,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A task was leased to an agent until `deadline`.
    Leased {
        /// The task.
        id: TaskId,
        /// The agent.
        agent: AgentId,
        /// The attempt (1 for the first delivery).
        attempt: Attempt,
        /// When the lease expires.
        deadline: Micros,
    },
    /// A task's lease ended without a result (expired, agent dead, refused): it is queued
    /// again.
    Released {
        /// The task.
        id: TaskId,
        /// Why.
        reason: String,
    },
    /// A task completed with this result (the first result wins; later ones are duplicates).
    Completed {
        /// The task.
        id: TaskId,
        /// Its result.
        result: Vec<u8>,
    },
    /// A task failed `max_attempts` times: it is reported, never dropped.
    DeadLettered {
        /// The task.
        id: TaskId,
        /// Why.
        reason: String,
    },
}

/// Where the scheduler keeps its durable facts. An append is durable when it returns `Ok`
/// (for the file-backed ledger: once its group commit has reached the disk).
pub trait Ledger {
    /// Appends `record`.
    fn append(&mut self, record: &LedgerRecord) -> Result<()>;
    /// Appends `records`, in order (a group commit: a ledger that syncs makes the whole batch
    /// durable at once, e.g. one write and one `fdatasync` for the file-backed ledger). On
    /// `Err`, a prefix of the batch may have been appended. The default appends one by one.
    fn append_batch(&mut self, records: &[LedgerRecord]) -> Result<()> {
        records.iter().try_for_each(|r| self.append(r))
    }
    /// Every record appended so far, in order (what a restarted scheduler replays). A ledger
    /// may compact: it then returns records equivalent for replay (e.g. only the tasks not yet
    /// ended, and the largest task id ever accepted as an `Accepted` or ended record).
    fn replay(&self) -> Result<Vec<LedgerRecord>>;
}

/// A ledger in memory: for tests and for schedulers that do not need to outlive their process.
#[derive(Debug, Default)]
pub struct MemLedger {
    records: Vec<LedgerRecord>,
}

impl MemLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Ledger for MemLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        self.records.push(record.clone());
        Ok(())
    }
    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        Ok(self.records.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_follow_the_segment_name_rules() {
        for ok in ["a", "planner-1", "x.y_z", &"a".repeat(MAX_AGENT_ID_LEN)] {
            assert_eq!(AgentId::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"a".repeat(195),
        ] {
            let e = AgentId::new(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn agent_types_are_bounded() {
        assert!(AgentType::new("coder").is_ok());
        assert!(AgentType::new("").is_err());
        assert!(AgentType::new(&"t".repeat(256)).is_err());
    }

    #[test]
    fn mem_ledger_replays_in_order() {
        let mut l = MemLedger::new();
        let a = LedgerRecord::Completed {
            id: TaskId(1),
            result: vec![1],
        };
        let b = LedgerRecord::DeadLettered {
            id: TaskId(2),
            reason: "x".into(),
        };
        l.append(&a).unwrap();
        l.append(&b).unwrap();
        assert_eq!(l.replay().unwrap(), vec![a, b]);
    }
}
