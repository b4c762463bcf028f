//! [`LedgerStatus`]: what a ledger's records say about its tasks, for a reader outside the
//! scheduler (`erlmcp-flow agents show` reads a live dispatcher's ledger with
//! [`super::ShmLedger::inspect`] and shows this). A pure function of the records: no clock,
//! no I/O.
//!
//! Each task's records are taken in order, as a restarted scheduler replays them:
//! `Accepted` and `Released` queue it, `Leased` leases it, the first `Completed` or
//! `DeadLettered` ends it (a later end is a duplicate, ignored, as [`super::compact`] does).
//! A compacted ledger holds only the tasks not yet ended (and the end of the task with the
//! largest id), so `completed` and `dead_letters` count what happened since the last
//! compaction.

use std::collections::BTreeMap;

use super::codec::task_of;
use crate::priority::Priority;
use crate::sched::types::{AgentId, AgentType, Attempt, LedgerRecord, Micros, TaskId};

/// A task waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTask {
    /// The task.
    pub id: TaskId,
    /// The agent type it needs (`None` when its `Accepted` record is not in the ledger).
    pub agent_type: Option<AgentType>,
    /// Its priority (`Normal` when unknown).
    pub priority: Priority,
    /// How many leases of it ended without a result (its `Released` records).
    pub releases: u32,
}

/// A task leased to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The task.
    pub id: TaskId,
    /// The agent type it needs (`None` when unknown).
    pub agent_type: Option<AgentType>,
    /// The agent holding it.
    pub agent: AgentId,
    /// The attempt (1 for the first delivery).
    pub attempt: Attempt,
    /// When the lease expires (µs of the dispatcher's clock, `CLOCK_MONOTONIC` for the
    /// runtime's dispatchers).
    pub deadline: Micros,
}

/// A dead-lettered task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo {
    /// The task.
    pub id: TaskId,
    /// Why it was given up.
    pub reason: String,
    /// The agent type it needed (`None` when its `Accepted` record is not in the ledger).
    pub agent_type: Option<AgentType>,
    /// Its payload (`None` when its `Accepted` record is not in the ledger).
    pub payload: Option<Vec<u8>>,
}

/// What a ledger's records say (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerStatus {
    /// The tasks waiting for an agent, by id.
    pub queued: Vec<QueuedTask>,
    /// The tasks leased now, by id.
    pub leases: Vec<LeaseInfo>,
    /// Tasks completed (in the records read).
    pub completed: u64,
    /// Tasks dead-lettered (in the records read), in the order they ended.
    pub dead_letters: Vec<DeadLetterInfo>,
    /// The largest task id in the records.
    pub max_id: Option<TaskId>,
    /// How many records were read.
    pub records: usize,
}

/// One task's state while the records are folded.
enum State {
    Queued { releases: u32 },
    Leased(LeaseInfo, u32),
    Ended,
}

struct TaskState {
    agent_type: Option<AgentType>,
    priority: Priority,
    payload: Option<Vec<u8>>,
    state: State,
}

impl LedgerStatus {
    /// Folds `records` (in ledger order) into a status.
    pub fn from_records(records: &[LedgerRecord]) -> LedgerStatus {
        let mut st = LedgerStatus {
            records: records.len(),
            ..LedgerStatus::default()
        };
        let mut tasks: BTreeMap<TaskId, TaskState> = BTreeMap::new();
        for r in records {
            let id = task_of(r);
            st.max_id = st.max_id.max(Some(id));
            let t = tasks.entry(id).or_insert(TaskState {
                agent_type: None,
                priority: Priority::Normal,
                payload: None,
                state: State::Queued { releases: 0 },
            });
            if matches!(t.state, State::Ended) {
                continue;
            }
            let releases = match &t.state {
                State::Queued { releases } | State::Leased(_, releases) => *releases,
                State::Ended => 0,
            };
            match r {
                LedgerRecord::Accepted {
                    agent_type,
                    priority,
                    payload,
                    ..
                } => {
                    t.agent_type = Some(agent_type.clone());
                    t.priority = *priority;
                    t.payload = Some(payload.clone());
                }
                LedgerRecord::Leased {
                    agent,
                    attempt,
                    deadline,
                    ..
                } => {
                    t.state = State::Leased(
                        LeaseInfo {
                            id,
                            agent_type: t.agent_type.clone(),
                            agent: agent.clone(),
                            attempt: *attempt,
                            deadline: *deadline,
                        },
                        releases,
                    );
                }
                LedgerRecord::Released { .. } => {
                    t.state = State::Queued {
                        releases: releases.saturating_add(1),
                    };
                }
                LedgerRecord::Completed { .. } => {
                    st.completed += 1;
                    t.state = State::Ended;
                    t.payload = None;
                }
                LedgerRecord::DeadLettered { reason, .. } => {
                    st.dead_letters.push(DeadLetterInfo {
                        id,
                        reason: reason.clone(),
                        agent_type: t.agent_type.clone(),
                        payload: t.payload.take(),
                    });
                    t.state = State::Ended;
                }
            }
        }
        for (id, t) in tasks {
            match t.state {
                State::Queued { releases } => st.queued.push(QueuedTask {
                    id,
                    agent_type: t.agent_type,
                    priority: t.priority,
                    releases,
                }),
                State::Leased(l, _) => st.leases.push(l),
                State::Ended => {}
            }
        }
        st
    }

    /// How many tasks wait per agent type (`None`: type unknown).
    pub fn queued_by_type(&self) -> BTreeMap<Option<&AgentType>, usize> {
        let mut m = BTreeMap::new();
        for q in &self.queued {
            *m.entry(q.agent_type.as_ref()).or_insert(0) += 1;
        }
        m
    }

    /// The leases grouped by agent, each agent's by task id.
    pub fn leases_by_agent(&self) -> BTreeMap<&AgentId, Vec<&LeaseInfo>> {
        let mut m: BTreeMap<&AgentId, Vec<&LeaseInfo>> = BTreeMap::new();
        for l in &self.leases {
            m.entry(&l.agent).or_default().push(l);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::ledger::{compact, summary};

    fn ty(s: &str) -> AgentType {
        AgentType::new(s).unwrap()
    }
    fn accepted(id: u64, t: &str) -> LedgerRecord {
        LedgerRecord::Accepted {
            id: TaskId(id),
            agent_type: ty(t),
            priority: Priority::High,
            payload: vec![id as u8; 3],
        }
    }
    fn leased(id: u64, agent: &str, attempt: u32) -> LedgerRecord {
        LedgerRecord::Leased {
            id: TaskId(id),
            agent: AgentId::new(agent).unwrap(),
            attempt,
            deadline: 1000 + id,
        }
    }
    fn released(id: u64) -> LedgerRecord {
        LedgerRecord::Released {
            id: TaskId(id),
            reason: "expired".into(),
        }
    }
    fn done(id: u64) -> LedgerRecord {
        LedgerRecord::Completed {
            id: TaskId(id),
            result: vec![],
        }
    }
    fn dead(id: u64, why: &str) -> LedgerRecord {
        LedgerRecord::DeadLettered {
            id: TaskId(id),
            reason: why.into(),
        }
    }

    #[test]
    fn each_task_is_in_exactly_the_state_its_last_records_say() {
        let log = vec![
            accepted(1, "coder"),
            accepted(2, "coder"),
            accepted(3, "tester"),
            leased(1, "a1", 1),
            leased(2, "a1", 1),
            leased(3, "b1", 1),
            done(2),
            released(3),
            accepted(4, "coder"),
            leased(4, "a2", 1),
            released(4),
            leased(4, "a2", 2),
            released(4),
            dead(4, "failed 2 times"),
            done(4), // a late duplicate: ignored
            accepted(5, "tester"),
        ];
        let s = LedgerStatus::from_records(&log);
        assert_eq!(s.records, log.len());
        assert_eq!(s.max_id, Some(TaskId(5)));
        assert_eq!(s.completed, 1);
        assert_eq!(
            s.dead_letters,
            vec![DeadLetterInfo {
                id: TaskId(4),
                reason: "failed 2 times".into(),
                agent_type: Some(ty("coder")),
                payload: Some(vec![4; 3]),
            }]
        );
        assert_eq!(
            s.leases,
            vec![LeaseInfo {
                id: TaskId(1),
                agent_type: Some(ty("coder")),
                agent: AgentId::new("a1").unwrap(),
                attempt: 1,
                deadline: 1001,
            }]
        );
        let q: Vec<(u64, u32)> = s.queued.iter().map(|q| (q.id.0, q.releases)).collect();
        assert_eq!(q, vec![(3, 1), (5, 0)]);
        assert!(s.queued.iter().all(|q| q.priority == Priority::High));
        let by_type = s.queued_by_type();
        assert_eq!(by_type.get(&Some(&ty("tester"))), Some(&2));
        assert_eq!(by_type.len(), 1);
        let by_agent = s.leases_by_agent();
        assert_eq!(by_agent.len(), 1);
        assert_eq!(by_agent[&AgentId::new("a1").unwrap()][0].id, TaskId(1));
    }

    #[test]
    fn the_live_tasks_agree_with_summary_and_survive_compaction() {
        let log = vec![
            accepted(1, "x"),
            leased(1, "a", 1),
            accepted(2, "x"),
            done(1),
            accepted(3, "y"),
            leased(3, "a", 1),
            released(3),
            dead(2, "r"),
        ];
        let s = LedgerStatus::from_records(&log);
        let (live, max) = summary(&log);
        let mut ids: Vec<TaskId> = s.queued.iter().map(|q| q.id).collect();
        ids.extend(s.leases.iter().map(|l| l.id));
        ids.sort();
        assert_eq!(ids, live.keys().copied().collect::<Vec<_>>());
        assert_eq!(s.max_id, max);
        // Compaction keeps the live tasks exactly; only the ended tasks' counts shrink.
        let c = LedgerStatus::from_records(&compact(&log));
        assert_eq!((c.queued.clone(), c.leases.clone()), (s.queued, s.leases));
        assert_eq!(c.max_id, max);
        assert_eq!(c.completed, 0);
        assert_eq!(
            c.dead_letters.len(),
            0,
            "task 2's end is not the largest id's"
        );
    }

    #[test]
    fn records_without_their_acceptance_are_shown_with_what_is_known() {
        // The end of the largest id, kept alone by compaction, and a lease whose Accepted
        // record is missing.
        let s = LedgerStatus::from_records(&[leased(7, "a", 2), dead(9, "gone")]);
        assert_eq!(s.leases[0].agent_type, None);
        assert_eq!(s.dead_letters[0].payload, None);
        assert_eq!(s.max_id, Some(TaskId(9)));
        assert_eq!(LedgerStatus::from_records(&[]), LedgerStatus::default());
    }
}
