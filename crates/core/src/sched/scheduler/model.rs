//! A `stateright` model of the lease/ack/redeliver protocol, over the real [`Scheduler`]: two
//! agents (capacity 2) and two tasks (one critical, one normal), and every interleaving of
//! agents processing or refusing their inbox, the network delivering their answers in any order
//! (one of them twice), leases expiring, one agent death (and restarts), and one scheduler crash
//! recovered from the ledger. Checked in every reachable state: never two effects (a `Result`
//! and a `DeadLetter`, or two of either) for a task, and the scheduler's bookkeeping; on every
//! path to a terminal state: both tasks ended.

use std::hash::{Hash, Hasher};

use stateright::{Checker, Model, Property};

use super::*;

/// A ledger that can be cloned with the state.
#[derive(Debug, Clone, Default)]
struct VecLedger(Vec<LedgerRecord>);

impl Ledger for VecLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        self.0.push(record.clone());
        Ok(())
    }
    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        Ok(self.0.clone())
    }
}

const AGENTS: usize = 2;
const TASKS: usize = 2;
const LEASE: Micros = 1_000;

#[derive(Debug, Clone)]
struct State {
    sched: Scheduler<VecLedger>,
    /// Delivered attempts an agent has not processed yet.
    inbox: [Vec<(TaskId, Attempt)>; AGENTS],
    alive: [bool; AGENTS],
    incarnation: [u64; AGENTS],
    /// Answers in flight: (agent, task, attempt, result (true) or refusal).
    net: Vec<(usize, TaskId, Attempt, bool)>,
    /// `Result` and `DeadLetter` actions per task.
    effects: [u8; TASKS],
    now: Micros,
    kills: u8,
    crashes: u8,
    dups: u8,
}

impl State {
    fn key(&self) -> (String, String) {
        let mut net = self.net.clone();
        net.sort();
        (
            self.sched.fingerprint(),
            format!(
                "{:?} {:?} {:?} {:?} {:?} {} {} {} {}",
                self.inbox,
                self.alive,
                self.incarnation,
                net,
                self.effects,
                self.now,
                self.kills,
                self.crashes,
                self.dups
            ),
        )
    }
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    /// The agent takes its next inbox task and answers with a result (true) or a refusal.
    Process(usize, bool),
    /// The network delivers answer k (and keeps a copy when `dup`).
    Receive(usize, bool),
    /// Time passes beyond every lease.
    Expire,
    Kill(usize),
    Restart(usize),
    Crash,
}

/// The fault budgets of one run.
struct LeaseModel {
    kills: u8,
    crashes: u8,
    dups: u8,
}

fn name(i: usize) -> AgentId {
    AgentId::new(&format!("a{i}")).unwrap()
}

fn ty() -> AgentType {
    AgentType::new("t").unwrap()
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_timeout: None,
        max_attempts: 2,
        min_lease: LEASE,
        max_lease: LEASE,
        default_lease: LEASE,
        work_stealing: true,
        ..SchedulerConfig::default()
    }
}

fn register(s: &mut State, i: usize) {
    let token = Liveness::Token(s.incarnation[i]);
    s.sched
        .register_agent(name(i), ty(), 2, token, s.now)
        .unwrap();
}

/// Carries out the scheduler's actions.
fn settle(s: &mut State) {
    while let Some(a) = s.sched.poll_action() {
        match a {
            Action::Deliver {
                agent,
                task,
                attempt,
                ..
            } => {
                let i = (0..AGENTS).find(|&i| name(i) == agent).unwrap();
                if s.alive[i] {
                    s.inbox[i].push((task, attempt));
                }
            }
            Action::Revoke {
                agent,
                task,
                attempt,
            } => {
                let i = (0..AGENTS).find(|&i| name(i) == agent).unwrap();
                s.inbox[i].retain(|&x| x != (task, attempt));
            }
            Action::Result { task, .. } | Action::DeadLetter { task, .. } => {
                s.effects[task.0 as usize - 1] += 1;
            }
        }
    }
    s.sched.assert_consistent();
}

impl Model for LeaseModel {
    type State = State;
    type Action = Step;

    fn init_states(&self) -> Vec<State> {
        let mut s = State {
            sched: Scheduler::new(config(), VecLedger::default()).unwrap(),
            inbox: Default::default(),
            alive: [true; AGENTS],
            incarnation: [0; AGENTS],
            net: Vec::new(),
            effects: [0; TASKS],
            now: 0,
            kills: self.kills,
            crashes: self.crashes,
            dups: self.dups,
        };
        for i in 0..AGENTS {
            register(&mut s, i);
        }
        s.sched.submit(&ty(), Priority::Normal, vec![1], 0).unwrap();
        s.sched
            .submit(&ty(), Priority::Critical, vec![2], 0)
            .unwrap();
        settle(&mut s);
        vec![s]
    }

    fn actions(&self, s: &State, out: &mut Vec<Step>) {
        for i in 0..AGENTS {
            if s.alive[i] && !s.inbox[i].is_empty() {
                out.push(Step::Process(i, true));
                out.push(Step::Process(i, false));
            }
            if s.alive[i] && s.kills > 0 {
                out.push(Step::Kill(i));
            }
            if !s.alive[i] {
                out.push(Step::Restart(i));
            }
        }
        for k in 0..s.net.len() {
            out.push(Step::Receive(k, false));
            if s.dups > 0 {
                out.push(Step::Receive(k, true));
            }
        }
        if s.sched.stats().leased > 0 {
            out.push(Step::Expire);
        }
        if s.crashes > 0 {
            out.push(Step::Crash);
        }
    }

    fn next_state(&self, last: &State, step: Step) -> Option<State> {
        let mut s = last.clone();
        match step {
            Step::Process(i, ok) => {
                let (task, attempt) = s.inbox[i].remove(0);
                // Started reports of a void incarnation are refused: fine.
                let _ = s.sched.started(&name(i), task, attempt, s.now);
                s.net.push((i, task, attempt, ok));
            }
            Step::Receive(k, dup) => {
                let (i, task, attempt, ok) = if dup {
                    s.dups -= 1;
                    s.net[k]
                } else {
                    s.net.remove(k)
                };
                if ok {
                    s.sched.ack(&name(i), task, attempt, vec![], s.now).unwrap();
                } else {
                    s.sched
                        .nack(&name(i), task, attempt, "refused", s.now)
                        .unwrap();
                }
            }
            Step::Expire => {
                s.now += LEASE;
                s.sched.tick(s.now);
            }
            Step::Kill(i) => {
                s.kills -= 1;
                s.alive[i] = false;
                s.inbox[i].clear();
                // Already removed when the scheduler restarted and it did not register again.
                let _ = s.sched.agent_dead(&name(i), s.now);
            }
            Step::Restart(i) => {
                s.alive[i] = true;
                s.incarnation[i] += 1;
                register(&mut s, i);
            }
            Step::Crash => {
                s.crashes -= 1;
                let ledger = s.sched.ledger().clone();
                s.sched = Scheduler::recover(config(), ledger, s.now).unwrap();
                for i in 0..AGENTS {
                    if s.alive[i] {
                        register(&mut s, i);
                    }
                }
            }
        }
        settle(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("never two effects for a task", |_, s: &State| {
                s.effects.iter().all(|&e| e <= 1)
            }),
            Property::eventually("every task ends", |_, s: &State| {
                s.effects.iter().all(|&e| e == 1)
            }),
            // The model reaches the cases it is about (not vacuous).
            Property::sometimes("a late or duplicated answer is ignored", |_, s: &State| {
                s.sched.stats().duplicates > 0
            }),
            Property::sometimes("a task is dead-lettered", |_, s: &State| {
                s.effects.iter().all(|&e| e == 1) && s.sched.stats().dead_lettered > 0
            }),
            Property::sometimes("a task is stolen", |_, s: &State| {
                s.sched.stats().steals > 0
            }),
        ]
    }
}

fn check(model: LeaseModel) -> usize {
    let checker = model.checker().spawn_bfs().join();
    checker.assert_properties();
    let n = checker.unique_state_count();
    eprintln!("{n} unique states");
    n
}

#[test]
fn lease_protocol_with_a_death_and_a_duplicate() {
    let states = check(LeaseModel {
        kills: 1,
        crashes: 0,
        dups: 1,
    });
    assert!(states > 1_000, "{states} states");
}

#[test]
fn lease_protocol_with_a_scheduler_crash() {
    // The crash itself makes late answers (of the void leases); no duplicate needed.
    let states = check(LeaseModel {
        kills: 0,
        crashes: 1,
        dups: 0,
    });
    assert!(states > 1_000, "{states} states");
}

/// Every fault at once: 1.5 M states, minutes in a debug build.
#[test]
#[ignore = "minutes: run with --ignored (or in release)"]
fn lease_protocol_with_every_fault() {
    let states = check(LeaseModel {
        kills: 1,
        crashes: 1,
        dups: 1,
    });
    assert!(states > 1_000, "{states} states");
}
