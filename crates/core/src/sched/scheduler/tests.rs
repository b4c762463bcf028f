//! One test per rule of the scheduler.

use super::*;
use crate::sched::types::MemLedger;

const S: Micros = 1_000_000;

fn ty(name: &str) -> AgentType {
    AgentType::new(name).unwrap()
}

fn agent(name: &str) -> AgentId {
    AgentId::new(name).unwrap()
}

fn token(n: u64) -> Liveness {
    Liveness::Token(n)
}

/// No heartbeat watch (these tests tick past the 5 s default), no stealing.
fn sched() -> Scheduler<MemLedger> {
    sched_with(SchedulerConfig {
        heartbeat_timeout: None,
        work_stealing: false,
        ..SchedulerConfig::default()
    })
}

fn sched_with(config: SchedulerConfig) -> Scheduler<MemLedger> {
    Scheduler::new(config, MemLedger::new()).unwrap()
}

/// The deliveries among the pending actions, as (agent, task, attempt).
fn delivered(s: &mut Scheduler<MemLedger>) -> Vec<(String, u64, Attempt)> {
    s.drain_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Deliver {
                agent,
                task,
                attempt,
                ..
            } => Some((agent.to_string(), task.0, attempt)),
            _ => None,
        })
        .collect()
}

fn records(s: &Scheduler<MemLedger>) -> Vec<LedgerRecord> {
    s.ledger().replay().unwrap()
}

/// A ledger whose appends fail while `fail` is set.
#[derive(Default)]
struct FlakyLedger {
    inner: MemLedger,
    fail: bool,
}

impl Ledger for FlakyLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        if self.fail {
            return Err(Error::new(ErrorKind::Io, "disk full"));
        }
        self.inner.append(record)
    }
    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        self.inner.replay()
    }
}

#[test]
fn config_out_of_range_is_refused() {
    let d = SchedulerConfig::default();
    assert!(d.validate().is_ok());
    let bad = [
        SchedulerConfig {
            max_queued: 0,
            ..d.clone()
        },
        SchedulerConfig {
            max_attempts: 0,
            ..d.clone()
        },
        SchedulerConfig {
            heartbeat_timeout: Some(0),
            ..d.clone()
        },
        SchedulerConfig {
            lease_factor: f64::NAN,
            ..d.clone()
        },
        SchedulerConfig {
            lease_factor: 0.0,
            ..d.clone()
        },
        SchedulerConfig {
            min_lease: 0,
            ..d.clone()
        },
        SchedulerConfig {
            min_lease: 10,
            max_lease: 5,
            default_lease: 7,
            ..d.clone()
        },
        SchedulerConfig {
            default_lease: d.max_lease + 1,
            ..d.clone()
        },
        SchedulerConfig {
            latency_window: 0,
            ..d.clone()
        },
        SchedulerConfig {
            ewma_alpha: 0.0,
            ..d.clone()
        },
        SchedulerConfig {
            ewma_alpha: 1.5,
            ..d.clone()
        },
    ];
    for c in bad {
        let e = Scheduler::new(c.clone(), MemLedger::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{c:?}");
    }
}

#[test]
fn bad_agents_are_refused_with_clear_errors() {
    let mut s = sched();
    let e = s
        .register_agent(agent("a"), ty("t"), 0, token(1), 0)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("max_tasks"), "{e}");
    let ghost = agent("ghost");
    for e in [
        s.heartbeat(&ghost, 0).unwrap_err(),
        s.agent_dead(&ghost, 0).unwrap_err(),
        s.unregister_agent(&ghost, 0).unwrap_err(),
        s.started(&ghost, TaskId(1), 1, 0).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("register it again"), "{e}");
    }
    let e = s.ack(&ghost, TaskId(1), 1, vec![], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "an id never handed out");
}

#[test]
fn submit_writes_ahead_then_leases_then_delivers() {
    let mut s = sched();
    s.register_agent(agent("a"), ty("t"), 5, token(1), 0)
        .unwrap();
    let id = s
        .submit(&ty("t"), Priority::Normal, b"job".to_vec(), 10)
        .unwrap();
    assert_eq!(id, TaskId(1));
    let r = records(&s);
    assert!(
        matches!(&r[0], LedgerRecord::Accepted { id: TaskId(1), payload, .. } if payload == b"job")
    );
    assert!(matches!(
        &r[1],
        LedgerRecord::Leased { id: TaskId(1), attempt: 1, deadline, .. } if *deadline == 10 + s.config().default_lease
    ));
    match s.poll_action() {
        Some(Action::Deliver {
            agent: a,
            task,
            attempt,
            payload,
            deadline,
        }) => {
            assert_eq!(
                (a, task, attempt, &payload[..]),
                (agent("a"), id, 1, &b"job"[..])
            );
            assert_eq!(deadline, 10 + s.config().default_lease);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.poll_action(), None);
    let st = s.stats();
    assert_eq!((st.queued, st.leased), (0, 1));
}

#[test]
fn a_failed_accept_is_an_error_and_the_id_is_not_reused() {
    let mut s = Scheduler::new(SchedulerConfig::default(), FlakyLedger::default()).unwrap();
    s.ledger.fail = true;
    let e = s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(s.stats().queued, 0);
    s.ledger.fail = false;
    assert_eq!(
        s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap(),
        TaskId(2)
    );
}

#[test]
fn back_pressure_is_an_error_the_caller_can_act_on() {
    let mut s = sched_with(SchedulerConfig {
        max_queued: 2,
        ..SchedulerConfig::default()
    });
    s.submit(&ty("t"), Priority::Normal, vec![1], 0).unwrap();
    s.submit(&ty("t"), Priority::Normal, vec![2], 0).unwrap();
    let e = s
        .submit(&ty("t"), Priority::Critical, vec![3], 0)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Full);
    assert!(e.message().contains("max_queued"), "{e}");
    assert_eq!(records(&s).len(), 2, "the refused task was not accepted");
    // An agent drains the queue; submits are accepted again.
    s.register_agent(agent("a"), ty("t"), 5, token(1), 0)
        .unwrap();
    assert_eq!(s.stats().queued, 0);
    assert!(s.submit(&ty("t"), Priority::Normal, vec![3], 0).is_ok());
}

#[test]
fn queued_of_counts_a_type_s_waiting_tasks_only() {
    let mut s = sched();
    let (t, u) = (ty("t"), ty("u"));
    assert_eq!(s.queued_of(&t), 0, "a type never seen");
    let first = s.submit(&t, Priority::Low, vec![], 0).unwrap();
    s.submit(&t, Priority::Critical, vec![], 0).unwrap();
    s.submit(&u, Priority::Normal, vec![], 0).unwrap();
    assert_eq!((s.queued_of(&t), s.queued_of(&u)), (2, 1));
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 1, token(1), 1)
        .unwrap();
    let d = delivered(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(s.queued_of(&t), 1, "the leased task is not waiting");
    // The agent dies: its task waits again; then its late result completes it while it is
    // queued, and a completed task is not counted although its lane entry stays.
    s.agent_dead(&a, 2).unwrap();
    assert_eq!(s.queued_of(&t), 2);
    s.ack(&a, TaskId(d[0].1), d[0].2, vec![], 3).unwrap();
    assert_eq!(s.queued_of(&t), 1);
    assert_ne!(TaskId(d[0].1), first, "the critical one went first");
    assert_eq!(s.queued_of(&u), 1);
}

#[test]
fn critical_overtakes_and_each_lane_is_fifo() {
    let mut s = sched();
    let t = ty("t");
    let mut ids = Vec::new();
    for p in [
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ] {
        ids.push(s.submit(&t, p, vec![], 0).unwrap().0);
    }
    // Another type's agent does not take them.
    s.register_agent(agent("other"), ty("u"), 5, token(9), 0)
        .unwrap();
    assert!(delivered(&mut s).is_empty());
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let mut order = Vec::new();
    for now in 1..=6 {
        let d = delivered(&mut s);
        assert_eq!(d.len(), 1, "capacity 1: one at a time");
        order.push(d[0].1);
        s.ack(&a, TaskId(d[0].1), 1, vec![], now).unwrap();
    }
    assert_eq!(order, [ids[2], ids[5], ids[4], ids[1], ids[3], ids[0]]);
}

#[test]
fn select_agent_is_least_loaded_and_none_without_capacity() {
    let mut s = sched();
    let t = ty("t");
    assert_eq!(s.select_agent(&t), None, "unknown type");
    s.register_agent(agent("a"), t.clone(), 2, token(1), 0)
        .unwrap();
    s.register_agent(agent("b"), t.clone(), 2, token(2), 0)
        .unwrap();
    for _ in 0..4 {
        s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    }
    let d = delivered(&mut s);
    let on_a = d.iter().filter(|x| x.0 == "a").count();
    assert_eq!((on_a, d.len()), (2, 4), "spread by load: {d:?}");
    assert_eq!(s.select_agent(&t), None, "no_capacity");
    s.ack(
        &agent("b"),
        TaskId(d.iter().find(|x| x.0 == "b").unwrap().1),
        1,
        vec![],
        5,
    )
    .unwrap();
    assert_eq!(s.select_agent(&t), Some(agent("b")));
    let load = s.agent_load(&agent("b")).unwrap();
    assert_eq!(
        (load.current_tasks, load.max_tasks, load.latency_us),
        (1, 2, 5)
    );
}

#[test]
fn lease_length_is_the_p95_times_the_factor_clamped() {
    let mut s = sched_with(SchedulerConfig {
        lease_factor: 2.0,
        min_lease: 1_000,
        max_lease: 1_000_000,
        default_lease: 50_000,
        latency_window: 20,
        work_stealing: false,
        ..SchedulerConfig::default()
    });
    let (t, a) = (ty("t"), agent("a"));
    assert_eq!(
        s.lease_length(&t),
        50_000,
        "the default before any observation"
    );
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    // 20 latencies: 19 of 100 µs, one of 10,000 µs: p95 (nearest rank 19) is 100 µs.
    let mut now = 0;
    for i in 0..20u64 {
        let id = s.submit(&t, Priority::Normal, vec![], now).unwrap();
        now += if i == 7 { 10_000 } else { 100 };
        s.ack(&a, id, 1, vec![], now).unwrap();
    }
    assert_eq!(s.lease_length(&t), 1_000, "2 × 100 µs, raised to min_lease");
    // Twenty slow ones: the p95 is 600,000 µs; 2 × that is cut to max_lease.
    for _ in 0..20 {
        let id = s.submit(&t, Priority::Normal, vec![], now).unwrap();
        now += 600_000;
        s.ack(&a, id, 1, vec![], now).unwrap();
    }
    assert_eq!(s.lease_length(&t), 1_000_000);
    let id = s.submit(&t, Priority::Normal, vec![], now).unwrap();
    match s.drain_actions().last() {
        Some(Action::Deliver { task, deadline, .. }) => {
            assert_eq!((*task, *deadline), (id, now + 1_000_000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_lease_goes_to_another_agent_at_the_front_of_its_lane() {
    let mut s = sched();
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let first = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    let second = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), first.0, 1)]);
    s.register_agent(b.clone(), t.clone(), 1, token(2), 0)
        .unwrap();
    assert_eq!(delivered(&mut s), [("b".into(), second.0, 1)]);
    let lease = s.config().default_lease;
    s.tick(lease - 1);
    assert!(delivered(&mut s).is_empty(), "not yet expired");
    // Both expire; `first` goes to b, `second` to a: never back to the agent that timed out.
    s.tick(lease);
    let d = delivered(&mut s);
    assert_eq!(d, [("b".into(), first.0, 2), ("a".into(), second.0, 2)]);
    let st = s.stats();
    assert_eq!((st.expired, st.redeliveries), (2, 2));
    assert!(records(&s)
        .iter()
        .any(|r| matches!(r, LedgerRecord::Released { id, reason } if *id == first && reason.contains("expired"))));
}

#[test]
fn an_expired_lease_returns_to_the_same_agent_when_it_is_the_only_one() {
    let mut s = sched();
    let t = ty("t");
    s.register_agent(agent("a"), t.clone(), 1, token(1), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    let low = s.submit(&t, Priority::Low, vec![], 0).unwrap();
    delivered(&mut s);
    s.tick(s.config().default_lease);
    // Back at the front of its lane: before `low`, which was queued.
    assert_eq!(delivered(&mut s), [("a".into(), id.0, 2)]);
    assert!(s.is_queued(low));
}

#[test]
fn a_dead_agent_s_leases_are_released_at_once() {
    let mut s = sched();
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    let ids: Vec<_> = (0..3)
        .map(|_| s.submit(&t, Priority::Normal, vec![], 0).unwrap())
        .collect();
    delivered(&mut s);
    s.agent_dead(&a, 1).unwrap();
    assert_eq!(s.stats().queued, 3);
    assert_eq!(s.agent_load(&a), None);
    s.register_agent(b.clone(), t.clone(), 5, token(2), 2)
        .unwrap();
    let d = delivered(&mut s);
    // Oldest first, attempt 2.
    let order: Vec<_> = d.iter().map(|x| (x.1, x.2)).collect();
    assert_eq!(order, ids.iter().map(|i| (i.0, 2)).collect::<Vec<_>>());
    assert_eq!(s.stats().agents_dead, 1);
}

#[test]
fn missed_heartbeats_declare_an_agent_dead_in_tick() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: Some(S),
        work_stealing: false,
        ..SchedulerConfig::default()
    });
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    s.register_agent(b.clone(), t.clone(), 5, token(2), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    let holder = delivered(&mut s)[0].0.clone();
    let (holder, other) = if holder == "a" { (a, b) } else { (b, a) };
    s.heartbeat(&other, S / 2).unwrap();
    s.tick(S);
    assert!(
        s.agent_load(&holder).is_some(),
        "a timeout of exactly 1 s is not missed yet"
    );
    s.heartbeat(&other, S + S / 2).unwrap();
    s.tick(S + 1);
    assert_eq!(s.agent_load(&holder), None);
    assert_eq!(delivered(&mut s), [(other.to_string(), id.0, 2)]);
    // The dead agent's heartbeat tells it to register again.
    assert_eq!(
        s.heartbeat(&holder, S + 2).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_dead_host_s_agents_are_dead_and_their_tasks_go_to_other_hosts() {
    let mut s = sched();
    let t = ty("t");
    let (a1, a2, b) = (agent("a1"), agent("a2"), agent("b"));
    for (i, id) in [&a1, &a2, &b].into_iter().enumerate() {
        s.register_agent(id.clone(), t.clone(), 2, token(i as u64), 0)
            .unwrap();
    }
    s.set_agent_host(&a1, Some(7)).unwrap();
    s.set_agent_host(&a2, Some(7)).unwrap();
    s.set_agent_host(&b, Some(8)).unwrap();
    assert_eq!(s.agent_host(&a2), Some(7));
    assert_eq!(
        s.set_agent_host(&agent("ghost"), Some(7))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let ids: Vec<_> = (0..6)
        .map(|_| s.submit(&t, Priority::Normal, vec![], 0).unwrap())
        .collect();
    assert_eq!(delivered(&mut s).len(), 6);
    // A member with no agents: nothing happens.
    assert!(s.host_down(9, 1).is_empty());
    let mut gone = s.host_down(7, 1);
    gone.sort();
    assert_eq!(gone, [a1.clone(), a2.clone()]);
    assert_eq!((s.agent_load(&a1), s.agent_load(&a2)), (None, None));
    assert_eq!(s.stats().agents_dead, 2);
    // b already holds two; the other four wait for capacity, none went to a2 on the way.
    let d = delivered(&mut s);
    assert!(d.is_empty(), "b is full: {d:?}");
    assert_eq!(s.stats().queued, 4);
    // A new agent on a live host takes them, at attempt 2.
    let c = agent("c");
    s.register_agent(c.clone(), t.clone(), 4, token(9), 2)
        .unwrap();
    assert_eq!(s.agent_host(&c), None);
    let d = delivered(&mut s);
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|(who, task, attempt)| who == "c"
        && *attempt == 2
        && ids.iter().any(|i| i.0 == *task)));
}

#[test]
fn agents_silent_at_once_do_not_pass_tasks_to_each_other() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: Some(S),
        max_attempts: 2,
        work_stealing: false,
        ..SchedulerConfig::default()
    });
    let t = ty("t");
    let (a, b, c) = (agent("a"), agent("b"), agent("c"));
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    s.register_agent(b.clone(), t.clone(), 5, token(2), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), id.0, 1)]);
    s.register_agent(c.clone(), t.clone(), 5, token(3), S / 2)
        .unwrap();
    // a and b are both silent: the task goes to c, one failed attempt, not two.
    s.tick(S + 1);
    assert_eq!(delivered(&mut s), [("c".into(), id.0, 2)]);
    assert!(s.dead_letters().is_empty());
    assert_eq!(s.stats().agents, 1);
}

#[test]
fn max_attempts_dead_letters_once_and_reports_it() {
    let mut s = sched_with(SchedulerConfig {
        max_attempts: 2,
        heartbeat_timeout: None,
        work_stealing: false,
        ..SchedulerConfig::default()
    });
    let t = ty("t");
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let id = s.submit(&t, Priority::High, b"p".to_vec(), 0).unwrap();
    assert_eq!(delivered(&mut s).len(), 1);
    assert!(s.nack(&a, id, 1, "busy", 1).unwrap());
    assert_eq!(delivered(&mut s), [("a".into(), id.0, 2)]);
    s.tick(1 + s.config().default_lease);
    let actions = s.drain_actions();
    assert_eq!(actions.len(), 1, "{actions:?}");
    match &actions[0] {
        Action::DeadLetter { task, reason } => {
            assert_eq!(*task, id);
            assert!(
                reason.contains("2 failed attempts") && reason.contains("expired"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let dl = s.dead_letters();
    assert_eq!(dl.len(), 1);
    let spec = dl[0].spec.as_ref().unwrap();
    assert_eq!(
        (spec.priority, &spec.payload[..]),
        (Priority::High, &b"p"[..])
    );
    assert!(
        matches!(records(&s).last(), Some(LedgerRecord::DeadLettered { id: x, .. }) if *x == id)
    );
    // A late result of the dead-lettered task is a duplicate: no second effect.
    assert_eq!(s.ack(&a, id, 2, vec![], 5).unwrap(), AckOutcome::Duplicate);
    assert!(s.drain_actions().is_empty());
    let st = s.stats();
    assert_eq!(
        (st.dead_lettered, st.completed, st.queued, st.leased),
        (1, 0, 0, 0)
    );
}

#[test]
fn the_first_result_wins_and_later_ones_are_counted() {
    let mut s = sched();
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    delivered(&mut s);
    s.register_agent(b.clone(), t.clone(), 1, token(2), 0)
        .unwrap();
    s.tick(s.config().default_lease);
    assert_eq!(delivered(&mut s), [("b".into(), id.0, 2)]);
    // The first agent answers late: it completes the task (the work was done), b is revoked.
    assert_eq!(
        s.ack(&a, id, 1, b"r1".to_vec(), 100).unwrap(),
        AckOutcome::Completed
    );
    assert_eq!(
        s.drain_actions(),
        [
            Action::Revoke {
                agent: b.clone(),
                task: id,
                attempt: 2
            },
            Action::Result {
                task: id,
                result: b"r1".to_vec()
            },
        ]
    );
    assert_eq!(s.agent_load(&b).unwrap().current_tasks, 0);
    // b's answer and a duplicated message of a's: no effect, counted.
    assert_eq!(
        s.ack(&b, id, 2, b"r2".to_vec(), 101).unwrap(),
        AckOutcome::Duplicate
    );
    assert_eq!(
        s.ack(&a, id, 1, b"r1".to_vec(), 102).unwrap(),
        AckOutcome::Duplicate
    );
    assert!(s.drain_actions().is_empty());
    assert_eq!(s.stats().duplicates, 2);
    let completed = records(&s)
        .iter()
        .filter(|r| matches!(r, LedgerRecord::Completed { .. }))
        .count();
    assert_eq!(completed, 1);
}

#[test]
fn a_result_for_a_queued_task_completes_it_without_delivery() {
    let mut s = sched();
    let t = ty("t");
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    delivered(&mut s);
    s.agent_dead(&a, 1).unwrap();
    assert!(s.is_queued(id));
    // The agent was not dead after all (or a message was late): its result counts.
    assert_eq!(s.ack(&a, id, 1, vec![7], 2).unwrap(), AckOutcome::Completed);
    assert_eq!(s.stats().queued, 0);
    s.register_agent(a, t, 1, token(1), 3).unwrap();
    assert_eq!(
        s.drain_actions(),
        [Action::Result {
            task: id,
            result: vec![7]
        }]
    );
}

#[test]
fn nack_releases_early_and_stale_messages_are_ignored() {
    let mut s = sched();
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    s.register_agent(b.clone(), t.clone(), 1, token(2), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    let first = delivered(&mut s)[0].0.clone();
    let (first, second) = if first == "a" { (a, b) } else { (b, a) };
    assert!(!s.nack(&first, id, 7, "wrong attempt", 1).unwrap());
    assert!(!s.nack(&second, id, 1, "not mine", 1).unwrap());
    assert!(s.nack(&first, id, 1, "shutting down", 1).unwrap());
    assert_eq!(delivered(&mut s), [(second.to_string(), id.0, 2)]);
    assert!(!s.started(&first, id, 1, 2).unwrap(), "a stale start");
    assert!(s.started(&second, id, 2, 2).unwrap());
    assert_eq!(s.stats().duplicates, 3);
}

#[test]
fn unregister_releases_and_redelivers() {
    let mut s = sched();
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 2, token(1), 0)
        .unwrap();
    let x = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    let y = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    delivered(&mut s);
    s.register_agent(b.clone(), t.clone(), 2, token(2), 0)
        .unwrap();
    s.unregister_agent(&a, 1).unwrap();
    assert_eq!(
        delivered(&mut s),
        [("b".into(), x.0, 2), ("b".into(), y.0, 2)]
    );
    assert_eq!(s.stats().agents, 1);
}

#[test]
fn registering_again_keeps_or_voids_leases_by_identity() {
    let mut s = sched();
    let t = ty("t");
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 1, token(1), 0)
        .unwrap();
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    delivered(&mut s);
    // The same process says hello again with a larger capacity: its lease stays.
    s.register_agent(a.clone(), t.clone(), 3, token(1), 1)
        .unwrap();
    assert_eq!(s.lease_of(id), Some((a.clone(), 1)));
    assert_eq!(s.agent_load(&a).unwrap().max_tasks, 3);
    // A new process under the same name: the old one's lease is released and redelivered.
    s.register_agent(a.clone(), t.clone(), 3, token(2), 2)
        .unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), id.0, 2)]);
}

#[test]
fn an_idle_agent_steals_the_oldest_unstarted_task() {
    let mut s = sched_with(SchedulerConfig::default());
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    let ids: Vec<_> = (0..4)
        .map(|_| s.submit(&t, Priority::Normal, vec![], 0).unwrap())
        .collect();
    assert_eq!(delivered(&mut s).len(), 4);
    assert!(s.started(&a, ids[0], 1, 1).unwrap());
    assert_eq!(s.agent_load(&a).unwrap().backlog, 3);
    // b arrives idle with nothing queued: it takes a's oldest un-started task, ids[1].
    s.register_agent(b.clone(), t.clone(), 5, token(2), 2)
        .unwrap();
    let actions = s.drain_actions();
    assert_eq!(
        actions.len(),
        2,
        "one steal: b then holds one task: {actions:?}"
    );
    assert_eq!(
        actions[0],
        Action::Revoke {
            agent: a.clone(),
            task: ids[1],
            attempt: 1
        }
    );
    assert!(
        matches!(&actions[1], Action::Deliver { agent: x, task, attempt: 2, .. } if *x == b && *task == ids[1])
    );
    assert_eq!(s.lease_of(ids[1]), Some((b.clone(), 2)));
    assert_eq!(s.stats().steals, 1);
    // A steal is not a failure: no Released record.
    assert!(!records(&s)
        .iter()
        .any(|r| matches!(r, LedgerRecord::Released { .. })));
    // a's late answer for the revoked attempt still completes it once; b's is a duplicate.
    assert_eq!(
        s.ack(&a, ids[1], 1, vec![], 3).unwrap(),
        AckOutcome::Completed
    );
    assert_eq!(
        s.ack(&b, ids[1], 2, vec![], 4).unwrap(),
        AckOutcome::Duplicate
    );
    // b is idle again and a holds 3 (one started): b steals ids[2].
    let d = delivered(&mut s);
    assert_eq!(d, [("b".into(), ids[2].0, 2)]);
}

#[test]
fn no_steal_from_an_agent_with_one_task_or_only_started_ones() {
    let mut s = sched_with(SchedulerConfig::default());
    let t = ty("t");
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    let x = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    delivered(&mut s);
    s.register_agent(b.clone(), t.clone(), 5, token(2), 1)
        .unwrap();
    assert!(s.drain_actions().is_empty(), "one task: no bouncing");
    let y = s.submit(&t, Priority::Normal, vec![], 2).unwrap();
    assert_eq!(delivered(&mut s), [("b".into(), y.0, 1)]);
    s.ack(&b, y, 1, vec![], 3).unwrap();
    s.drain_actions();
    let z = s.submit(&t, Priority::Normal, vec![], 4).unwrap();
    let w = s.submit(&t, Priority::Normal, vec![], 4).unwrap();
    delivered(&mut s);
    // Now a holds x and one of z/w, b the other; all started: nothing to steal.
    for id in [x, z, w] {
        let (holder, attempt) = s.lease_of(id).unwrap();
        s.started(&holder, id, attempt, 5).unwrap();
    }
    let (holder, attempt) = s.lease_of(z).unwrap();
    s.ack(&holder, z, attempt, vec![], 6).unwrap();
    assert!(
        !s.drain_actions()
            .iter()
            .any(|a| matches!(a, Action::Revoke { .. })),
        "started tasks are not stolen"
    );
}

#[test]
fn recovery_requeues_open_tasks_and_continues_ids() {
    let config = SchedulerConfig {
        max_attempts: 2,
        work_stealing: false,
        ..SchedulerConfig::default()
    };
    let mut s = sched_with(config.clone());
    let t = ty("t");
    let a = agent("a");
    s.register_agent(a.clone(), t.clone(), 5, token(1), 0)
        .unwrap();
    let done = s.submit(&t, Priority::Normal, vec![1], 0).unwrap();
    let once = s.submit(&t, Priority::Low, vec![2], 0).unwrap();
    let twice = s.submit(&t, Priority::Normal, vec![3], 0).unwrap();
    let crit = s.submit(&t, Priority::Critical, vec![4], 0).unwrap();
    s.ack(&a, done, 1, b"ok".to_vec(), 1).unwrap();
    s.nack(&a, twice, 1, "no", 1).unwrap();
    s.nack(&a, once, 1, "no", 1).unwrap();
    s.drain_actions();
    let records = s.into_ledger().replay().unwrap();
    let mut ledger = MemLedger::new();
    for r in &records {
        ledger.append(r).unwrap();
    }
    let e = Scheduler::new(config.clone(), clone_ledger(&records)).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidArgument,
        "ids must not be reused"
    );

    let mut r = Scheduler::recover(config, ledger, 10).unwrap();
    // Nothing resent: no agent yet, and `done`'s result is not repeated.
    assert!(r.drain_actions().is_empty());
    let st = r.stats();
    assert_eq!((st.queued, st.leased, st.completed), (3, 0, 1));
    let fresh = r.submit(&t, Priority::Normal, vec![], 11).unwrap();
    assert_eq!(fresh, TaskId(5));
    r.register_agent(a.clone(), t.clone(), 1, token(1), 12)
        .unwrap();
    // Refuse everything: priority order; attempt numbers continue after those of before the
    // crash (the void leases of `crit`, `twice` and `once` were attempts 1, 2 and 2); failure
    // counts too (`twice` and `once` had failed once: one more failure dead-letters them).
    let mut order = Vec::new();
    for now in 13..30 {
        let d = delivered(&mut r);
        if d.is_empty() {
            break;
        }
        assert_eq!(d.len(), 1);
        order.push((d[0].1, d[0].2));
        r.nack(&a, TaskId(d[0].1), d[0].2, "again", now).unwrap();
    }
    assert_eq!(
        order,
        [
            (crit.0, 2),
            (crit.0, 3),
            (twice.0, 3),
            (fresh.0, 1),
            (fresh.0, 2),
            (once.0, 3)
        ]
    );
    let dead: Vec<_> = r.dead_letters().iter().map(|d| d.task).collect();
    assert_eq!(dead, [crit, twice, fresh, once]);
    let st = r.stats();
    assert_eq!((st.queued, st.leased, st.dead_lettered), (0, 0, 4));
}

fn clone_ledger(records: &[LedgerRecord]) -> MemLedger {
    let mut l = MemLedger::new();
    for r in records {
        l.append(r).unwrap();
    }
    l
}

#[test]
fn recovery_dead_letters_tasks_that_spent_their_attempts_and_keeps_dead_letters() {
    let config = SchedulerConfig {
        max_attempts: 3,
        ..SchedulerConfig::default()
    };
    let t = ty("t");
    let mut l = MemLedger::new();
    let acc = |id, p: &[u8]| LedgerRecord::Accepted {
        id: TaskId(id),
        agent_type: t.clone(),
        priority: Priority::Normal,
        payload: p.to_vec(),
    };
    let rel = |id| LedgerRecord::Released {
        id: TaskId(id),
        reason: "x".into(),
    };
    for r in [
        acc(3, b"a"),
        acc(9, b"b"),
        rel(3),
        rel(3),
        LedgerRecord::DeadLettered {
            id: TaskId(9),
            reason: "old".into(),
        },
    ] {
        l.append(&r).unwrap();
    }
    let lower = SchedulerConfig {
        max_attempts: 2,
        ..config.clone()
    };
    let s = Scheduler::recover(lower, clone_ledger(&l.replay().unwrap()), 0).unwrap();
    assert_eq!(
        s.dead_letters().len(),
        2,
        "task 3 has spent max_attempts = 2"
    );
    let mut s = Scheduler::recover(config, l, 0).unwrap();
    assert_eq!(s.dead_letters().len(), 1);
    assert_eq!(
        s.dead_letters()[0].spec.as_ref().unwrap().payload[..],
        b"b"[..]
    );
    assert_eq!(s.stats().queued, 1);
    assert_eq!(
        s.submit(&t, Priority::Normal, vec![], 0).unwrap(),
        TaskId(10)
    );
}

#[test]
fn ledger_errors_leave_tasks_where_they_were() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            work_stealing: false,
            ..SchedulerConfig::default()
        },
        FlakyLedger::default(),
    )
    .unwrap();
    let t = ty("t");
    let a = agent("a");
    let id = s.submit(&t, Priority::Normal, vec![], 0).unwrap();
    s.ledger.fail = true;
    // The lease cannot be written: no delivery, still queued.
    s.register_agent(a.clone(), t.clone(), 1, token(1), 1)
        .unwrap();
    assert!(s.drain_actions().is_empty());
    assert!(s.is_queued(id));
    s.ledger.fail = false;
    s.tick(2);
    assert_eq!(s.drain_actions().len(), 1);
    // The result cannot be written: an error, the lease stays, no Result.
    s.ledger.fail = true;
    assert_eq!(
        s.ack(&a, id, 1, vec![], 3).unwrap_err().kind(),
        ErrorKind::Io
    );
    assert_eq!(s.lease_of(id), Some((a.clone(), 1)));
    assert!(s.drain_actions().is_empty());
    s.ledger.fail = false;
    assert_eq!(s.ack(&a, id, 1, vec![], 4).unwrap(), AckOutcome::Completed);
    assert!(s.stats().ledger_errors >= 1);
    s.assert_consistent();
}

#[test]
fn recovery_refuses_ids_and_attempts_that_would_overflow() {
    let t = ty("t");
    let acc = |id| LedgerRecord::Accepted {
        id: TaskId(id),
        agent_type: t.clone(),
        priority: Priority::Normal,
        payload: vec![],
    };
    let leased = |attempt| LedgerRecord::Leased {
        id: TaskId(1),
        agent: agent("a"),
        attempt,
        deadline: 5,
    };
    for records in [
        vec![acc(u64::MAX)],
        vec![acc(0)],
        vec![acc(1), leased(u32::MAX)],
    ] {
        // Before: `max_id + 1` and `deliveries + 1` overflowed (a panic, or in release a
        // task id 0 and then ids reused).
        let e = Scheduler::recover(SchedulerConfig::default(), clone_ledger(&records), 0)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{records:?}");
    }
    // A large but valid attempt is still accepted.
    let mut s = Scheduler::recover(
        SchedulerConfig::default(),
        clone_ledger(&[acc(1), leased(u32::MAX - 1)]),
        0,
    )
    .unwrap();
    s.register_agent(agent("a"), t.clone(), 1, token(1), 1)
        .unwrap();
    assert_eq!(s.lease_of(TaskId(1)), Some((agent("a"), u32::MAX)));
}
