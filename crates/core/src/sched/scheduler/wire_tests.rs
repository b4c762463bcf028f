//! The protections wired into the scheduler: circuit breakers, back-pressure, rate limits and
//! heartbeats read from the shared load table. One test per rule of the module documentation's
//! "Protections" section.

use super::*;
use crate::sched::ratelimit::Rate;
use crate::sched::types::MemLedger;

const MS: Micros = 1_000;

fn ty(name: &str) -> AgentType {
    AgentType::new(name).unwrap()
}

fn agent(name: &str) -> AgentId {
    AgentId::new(name).unwrap()
}

fn sched_with(config: SchedulerConfig) -> Scheduler<MemLedger> {
    Scheduler::new(config, MemLedger::new()).unwrap()
}

/// The deliveries among the pending actions, as (agent, task, attempt); checks that results
/// and dead letters come once per task.
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

/// Opens after 2 calls that all failed; open 100 ms, then one probe.
fn breaker_config() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_timeout: None,
        work_stealing: false,
        breaker: Some(BreakerConfig {
            window: 1_000 * MS,
            buckets: 1,
            min_calls: 2,
            failure_ratio: 0.5,
            slow_call: None,
            open_for: 100 * MS,
            backoff: 2,
            max_open_for: 400 * MS,
            half_open_probes: 1,
        }),
        ..SchedulerConfig::default()
    }
}

#[test]
fn protections_are_off_by_default_and_validated() {
    let c = SchedulerConfig::default();
    assert_eq!(
        (c.breaker.is_none(), c.backpressure.is_none()),
        (true, true)
    );
    assert!(c.rate_limit.is_none());
    let mut s = sched_with(c);
    s.register_agent(agent("a"), ty("t"), 1, Liveness::Token(1), 0)
        .unwrap();
    assert_eq!(s.breaker_state(&agent("a")), None);
    assert!(s.backpressure(&agent("a")).is_none());
    let e = s.observe_lag(&agent("a"), 3, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("back-pressure is off"), "{e}");
    for bad in [
        SchedulerConfig {
            breaker: Some(BreakerConfig {
                min_calls: 0,
                ..BreakerConfig::default()
            }),
            ..SchedulerConfig::default()
        },
        SchedulerConfig {
            backpressure: Some(BackPressureConfig {
                high_water: 4,
                low_water: 4,
            }),
            ..SchedulerConfig::default()
        },
        SchedulerConfig {
            rate_limit: Some(RateLimiterConfig {
                burst: 0,
                ..RateLimiterConfig::default()
            }),
            ..SchedulerConfig::default()
        },
    ] {
        let e = Scheduler::new(bad.clone(), MemLedger::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

#[test]
fn an_open_breaker_sends_tasks_elsewhere_then_probes_and_closes() {
    let mut s = sched_with(breaker_config());
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), ty("t"), 5, Liveness::Token(1), 0)
        .unwrap();
    let t1 = s.submit(&ty("t"), Priority::Normal, vec![1], 0).unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), 1, 1)]);
    s.nack(&a, t1, 1, "broken", MS).unwrap();
    // No other agent: back to `a`, whose breaker is still closed (one call).
    assert_eq!(delivered(&mut s), [("a".into(), 1, 2)]);
    s.nack(&a, t1, 2, "broken", 2 * MS).unwrap();
    assert!(matches!(
        s.breaker_state(&a),
        Some(BreakerState::Open { .. })
    ));
    // Open: the task waits rather than going to `a` (max_attempts 3 is not reached).
    assert!(delivered(&mut s).is_empty());
    assert!(s.is_queued(t1));
    assert_eq!(s.select_agent(&ty("t")), None);
    s.register_agent(b.clone(), ty("t"), 5, Liveness::Token(2), 3 * MS)
        .unwrap();
    assert_eq!(delivered(&mut s), [("b".into(), 1, 3)]);
    s.ack(&b, t1, 3, vec![], 4 * MS).unwrap();
    // While open, every task goes to `b`, however loaded.
    let t2 = s
        .submit(&ty("t"), Priority::Normal, vec![], 5 * MS)
        .unwrap();
    let t3 = s
        .submit(&ty("t"), Priority::Normal, vec![], 5 * MS)
        .unwrap();
    assert_eq!(
        delivered(&mut s),
        [("b".into(), t2.0, 1), ("b".into(), t3.0, 1)]
    );
    // The open period is over (at 102 ms; `b`'s leases, of the 100 ms minimum, expire at
    // 105 ms): `a` (less loaded) gets one probe, and only one.
    s.tick(103 * MS);
    let t4 = s
        .submit(&ty("t"), Priority::Normal, vec![], 103 * MS)
        .unwrap();
    let t5 = s
        .submit(&ty("t"), Priority::Normal, vec![], 103 * MS)
        .unwrap();
    assert_eq!(
        delivered(&mut s),
        [("a".into(), t4.0, 1), ("b".into(), t5.0, 1)]
    );
    assert_eq!(
        s.breaker_state(&a),
        Some(BreakerState::HalfOpen {
            admitted: 1,
            succeeded: 0
        })
    );
    s.ack(&a, t4, 1, vec![], 104 * MS).unwrap();
    assert_eq!(s.breaker_state(&a), Some(BreakerState::Closed));
    let t6 = s
        .submit(&ty("t"), Priority::Normal, vec![], 104 * MS)
        .unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), t6.0, 1)]);
    let st = s.breaker(&a).unwrap().stats();
    assert_eq!(
        (st.failures, st.successes, st.opened, st.closed),
        (2, 1, 1, 1)
    );
    s.assert_consistent();
}

#[test]
fn expired_leases_and_deaths_are_failures_and_breakers_outlive_deaths() {
    let mut s = sched_with(SchedulerConfig {
        default_lease: 10 * MS,
        min_lease: MS,
        ..breaker_config()
    });
    let a = agent("a");
    s.register_agent(a.clone(), ty("t"), 5, Liveness::Token(1), 0)
        .unwrap();
    s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap();
    s.tick(10 * MS);
    assert_eq!(s.breaker(&a).unwrap().stats().failures, 1, "an expiry");
    assert_eq!(s.breaker_state(&a), Some(BreakerState::Closed));
    s.submit(&ty("t"), Priority::Normal, vec![], 11 * MS)
        .unwrap();
    assert_eq!(s.lease_of(TaskId(2)).unwrap().0, a);
    // `a` dies holding two leases: two failures, the breaker opens.
    s.agent_dead(&a, 12 * MS).unwrap();
    assert_eq!(s.breaker(&a).unwrap().stats().failures, 3);
    assert!(matches!(
        s.breaker_state(&a),
        Some(BreakerState::Open { .. })
    ));
    // Its next incarnation is still shunned; the tasks wait for the open period to end.
    s.register_agent(a.clone(), ty("t"), 5, Liveness::Token(2), 13 * MS)
        .unwrap();
    s.drain_actions();
    assert_eq!(s.stats().queued, 2);
    s.tick(50 * MS);
    assert_eq!(s.stats().queued, 2);
    s.tick(120 * MS);
    assert_eq!(s.stats().leased, 1, "one probe only");
    // Unregistering forgets the breaker.
    s.unregister_agent(&a, 130 * MS).unwrap();
    assert_eq!(s.breaker_state(&a), None);
    s.assert_consistent();
}

#[test]
fn a_probe_is_never_stolen_and_a_revoked_probe_is_a_failure() {
    let mut s = sched_with(SchedulerConfig {
        work_stealing: true,
        ..breaker_config()
    });
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), ty("t"), 5, Liveness::Token(1), 0)
        .unwrap();
    let t1 = s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap();
    s.nack(&a, t1, 1, "broken", 0).unwrap();
    // Back to `a` (alone), which starts it: it cannot be stolen.
    assert_eq!(s.lease_of(t1), Some((a.clone(), 2)));
    assert!(s.started(&a, t1, 2, 0).unwrap());
    let t2 = s.submit(&ty("t"), Priority::Normal, vec![], 1).unwrap();
    s.nack(&a, t2, 1, "broken", 1).unwrap();
    s.drain_actions();
    assert!(matches!(
        s.breaker_state(&a),
        Some(BreakerState::Open { .. })
    ));
    assert!(s.is_queued(t2));
    // Half-open: the waiting task goes to `a` as its probe.
    s.tick(103 * MS);
    assert_eq!(delivered(&mut s), [("a".into(), t2.0, 2)]);
    // An idle `b` does not steal the probe (nor the started task).
    s.register_agent(b.clone(), ty("t"), 5, Liveness::Token(2), 111 * MS)
        .unwrap();
    assert!(delivered(&mut s).is_empty(), "no steal of a probe");
    assert_eq!(s.stats().steals, 0);
    // `b` answers it anyway (an old attempt): `a`'s probe is revoked and counts as failed.
    s.ack(&b, t2, 1, vec![], 112 * MS).unwrap();
    let revoked = s
        .drain_actions()
        .into_iter()
        .any(|x| matches!(x, Action::Revoke { agent, task, .. } if agent == a && task == t2));
    assert!(revoked);
    assert!(matches!(
        s.breaker_state(&a),
        Some(BreakerState::Open { .. })
    ));
    s.assert_consistent();
}

#[test]
fn a_slow_consumer_gets_no_task_until_it_drains() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: None,
        work_stealing: false,
        backpressure: Some(BackPressureConfig {
            high_water: 2,
            low_water: 0,
        }),
        ..SchedulerConfig::default()
    });
    let (a, b) = (agent("a"), agent("b"));
    s.register_agent(a.clone(), ty("t"), 10, Liveness::Token(1), 0)
        .unwrap();
    for _ in 0..5 {
        s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap();
    }
    // Three sends take the lag above the high-water mark (2): the rest waits.
    assert_eq!(delivered(&mut s).len(), 3);
    let bp = s.backpressure(&a).unwrap();
    assert_eq!((bp.lag(), bp.accepting()), (3, false));
    assert_eq!(s.stats().queued, 2);
    // Another agent takes what `a` cannot.
    s.register_agent(b.clone(), ty("t"), 1, Liveness::Token(2), MS)
        .unwrap();
    assert_eq!(delivered(&mut s), [("b".into(), 4, 1)]);
    // `a` read one frame: still above the low-water mark.
    s.observe_lag(&a, 1, 2 * MS).unwrap();
    assert!(delivered(&mut s).is_empty());
    // `a` drained: it accepts again and the queue is served at once.
    s.observe_lag(&a, 0, 3 * MS).unwrap();
    assert_eq!(delivered(&mut s), [("a".into(), 5, 1)]);
    assert_eq!(s.backpressure(&a).unwrap().lag(), 1);
    let e = s.observe_lag(&agent("ghost"), 0, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A new incarnation starts with an empty inbox: the old one's four tasks come back to
    // it, three before it is judged slow.
    s.observe_lag(&a, 9, 4 * MS).unwrap();
    assert!(!s.backpressure(&a).unwrap().accepting());
    s.register_agent(a.clone(), ty("t"), 10, Liveness::Token(3), 5 * MS)
        .unwrap();
    assert_eq!(delivered(&mut s).len(), 3);
    assert_eq!(s.backpressure(&a).unwrap().lag(), 3);
    s.assert_consistent();
}

#[test]
fn a_throttled_submit_is_an_answer_with_a_retry_hint_and_accepts_nothing() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: None,
        rate_limit: Some(RateLimiterConfig {
            initial_rate: Rate::per_sec(10),
            burst: 2,
            min_samples: 1,
            ..RateLimiterConfig::default()
        }),
        ..SchedulerConfig::default()
    });
    s.register_agent(agent("a"), ty("t"), 10, Liveness::Token(1), 0)
        .unwrap();
    s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap();
    s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap();
    let e = s.submit(&ty("t"), Priority::Normal, vec![], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Full);
    assert!(e.message().contains("retry after 100000 µs"), "{e}");
    assert!(e.message().contains("agent type t"), "{e}");
    assert_eq!(s.stats().throttled, 1);
    let accepted = s
        .ledger()
        .replay()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, LedgerRecord::Accepted { .. }))
        .count();
    assert_eq!(accepted, 2, "nothing accepted when throttled");
    // Another type has its own bucket.
    s.submit(&ty("u"), Priority::Normal, vec![], 0).unwrap();
    // A token is back after the hint.
    s.submit(&ty("t"), Priority::Normal, vec![], 100 * MS)
        .unwrap();
    // Acks feed the type's limiter with submit-to-result latencies.
    let id = TaskId(1);
    let (holder, attempt) = s.lease_of(id).unwrap();
    s.ack(&holder, id, attempt, vec![], 7 * MS).unwrap();
    let l = s.rate_limiter(&ty("t")).unwrap();
    assert_eq!(l.stats().observed, 1);
    assert_eq!(s.rate_limiter(&ty("u")).unwrap().stats().observed, 0);
}

#[test]
fn heartbeats_written_to_the_load_table_keep_agents_alive() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: Some(1_000 * MS),
        ..SchedulerConfig::default()
    });
    let table = Arc::new(LoadTable::in_memory(4).unwrap());
    let (a, b) = (agent("a"), agent("b"));
    let slot = table.claim(&a, Liveness::Token(1), 5, 0).unwrap();
    s.set_heartbeat_source(Some(table.clone()));
    s.register_agent(a.clone(), ty("t"), 5, Liveness::Token(1), 0)
        .unwrap();
    s.register_agent(b.clone(), ty("t"), 5, Liveness::Token(2), 0)
        .unwrap();
    // `a` beats through its slot only; `b` not at all.
    table.heartbeat(slot, 900 * MS).unwrap();
    s.tick(1_500 * MS);
    assert!(s.agent_load(&a).is_some(), "alive by its table heartbeat");
    assert_eq!(s.agent_load(&a).unwrap().last_heartbeat, 900 * MS);
    assert!(s.agent_load(&b).is_none(), "declared dead");
    table.heartbeat(slot, 2_000 * MS).unwrap();
    s.tick(2_500 * MS);
    assert!(s.agent_load(&a).is_some());
    // The beats stop: dead after the timeout.
    s.tick(3_001 * MS);
    assert!(s.agent_load(&a).is_none());
    assert_eq!(s.stats().agents_dead, 2);
    // Without the source, table heartbeats are not read.
    let mut s2 = sched_with(SchedulerConfig {
        heartbeat_timeout: Some(1_000 * MS),
        ..SchedulerConfig::default()
    });
    s2.register_agent(a.clone(), ty("t"), 5, Liveness::Token(1), 3_000 * MS)
        .unwrap();
    table.heartbeat(slot, 4_000 * MS).unwrap();
    s2.tick(4_500 * MS);
    assert!(s2.agent_load(&a).is_none());
}

/// A source that is not a load table: any heartbeat store can be plugged in.
struct Fixed(Vec<(AgentId, Micros)>);

impl HeartbeatSource for Fixed {
    fn for_each_heartbeat(&self, f: &mut dyn FnMut(&AgentId, Micros)) {
        for (id, beat) in &self.0 {
            f(id, *beat);
        }
    }
}

#[test]
fn any_heartbeat_source_can_be_plugged_in_and_removed() {
    let mut s = sched_with(SchedulerConfig {
        heartbeat_timeout: Some(10),
        ..SchedulerConfig::default()
    });
    let a = agent("a");
    s.register_agent(a.clone(), ty("t"), 1, Liveness::Token(1), 0)
        .unwrap();
    s.set_heartbeat_source(Some(Arc::new(Fixed(vec![
        (a.clone(), 100),
        (agent("stranger"), 100),
    ]))));
    s.tick(105);
    assert!(s.agent_load(&a).is_some());
    assert_eq!(
        s.stats().agents,
        1,
        "an unknown id in the source is ignored"
    );
    s.set_heartbeat_source(None);
    s.tick(200);
    assert!(s.agent_load(&a).is_none());
}

#[test]
fn closed_breakers_of_agents_gone_are_forgotten_open_ones_kept() {
    let mut s = sched_with(breaker_config());
    s.register_agent(agent("flaky"), ty("t"), 1, Liveness::Token(1), 0)
        .unwrap();
    // "flaky" fails its only task twice: its breaker opens.
    let task = s.submit(&ty("t"), Priority::Normal, vec![1], 0).unwrap();
    for now in [1, 2] {
        let d = delivered(&mut s);
        assert_eq!(d.len(), 1);
        let (who, t, attempt) = &d[0];
        assert_eq!((who.as_str(), *t), ("flaky", task.0));
        s.nack(&agent("flaky"), task, *attempt, "boom", now)
            .unwrap();
    }
    assert!(matches!(
        s.breaker_state(&agent("flaky")),
        Some(BreakerState::Open { .. })
    ));
    s.register_agent(agent("gone"), ty("t"), 1, Liveness::Token(2), 3)
        .unwrap();
    assert_eq!(s.breaker_state(&agent("gone")), Some(BreakerState::Closed));
    s.agent_dead(&agent("flaky"), 4).unwrap();
    s.agent_dead(&agent("gone"), 4).unwrap();
    assert_eq!(s.breaker_state(&agent("gone")), Some(BreakerState::Closed));
    s.tick(5);
    assert_eq!(
        s.breaker_state(&agent("gone")),
        None,
        "closed and gone: forgotten"
    );
    assert!(
        matches!(
            s.breaker_state(&agent("flaky")),
            Some(BreakerState::Open { .. })
        ),
        "open: kept, the id stays shunned"
    );
}
