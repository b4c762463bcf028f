//! Unit tests per rule of the pool manager, and a seeded simulation checking its invariants.

use super::*;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn cfg(min: u32, max: u32) -> PoolConfig {
    PoolConfig {
        min_size: min,
        max_size: max,
        ..PoolConfig::new(AgentType::new("coder").unwrap())
    }
}

fn drain(p: &mut Pool) -> Vec<PoolAction> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn starts(p: &mut Pool) -> Vec<u64> {
    drain(p)
        .into_iter()
        .map(|a| match a {
            PoolAction::Start { slot } => slot,
            other => panic!("expected a start, got {other:?}"),
        })
        .collect()
}

/// A pool of `n` live idle agents `a1..an` at time `t`, min `min`, max `max`, no delays.
fn warm(min: u32, max: u32, n: u32, t: Micros) -> Pool {
    let mut p = Pool::new(PoolConfig {
        warmup_delay: 0,
        max_starting: max,
        ..cfg(min, max)
    })
    .unwrap();
    // No agent is idle (there is none): `n` waiting tasks make `n` starts at once.
    p.demand(n as usize, t);
    p.demand(0, t);
    let s = starts(&mut p);
    assert_eq!(s.len() as u32, n.max(min));
    for (k, slot) in s.into_iter().enumerate() {
        p.started(slot, id(&format!("a{}", k + 1)), t).unwrap();
    }
    assert!(drain(&mut p).is_empty());
    assert_eq!(p.stats().live, n);
    p
}

#[test]
fn bad_configs_are_refused() {
    for c in [
        cfg(0, 0),
        cfg(3, 2),
        PoolConfig {
            max_starting: 0,
            ..cfg(1, 2)
        },
        PoolConfig {
            idle_timeout: 0,
            ..cfg(1, 2)
        },
        PoolConfig {
            start_timeout: 0,
            ..cfg(1, 2)
        },
        PoolConfig {
            max_backoff: 0,
            ..cfg(1, 2)
        },
    ] {
        let e = Pool::new(c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    assert_eq!(PoolConfig::default().agent_type.as_str(), "agent");
    let d = PoolConfig::new(AgentType::new("t").unwrap());
    assert_eq!((d.min_size, d.max_size, d.max_starting), (5, 20, 2));
    assert_eq!(
        (d.idle_timeout, d.warmup_delay, d.start_timeout),
        (60 * S, 100 * MS, 30 * S)
    );
    Pool::new(cfg(0, 1)).unwrap();
}

#[test]
fn warm_up_is_gradual_and_bounded_by_max_starting() {
    let mut p = Pool::new(cfg(5, 20)).unwrap();
    assert!(p.poll_action().is_none(), "nothing before the first event");
    p.ensure_min(1_000);
    assert_eq!(starts(&mut p), vec![1], "the first start at once, one only");
    p.tick(1_000 + 99 * MS);
    assert!(starts(&mut p).is_empty(), "not before warmup_delay");
    p.tick(1_000 + 100 * MS);
    assert_eq!(starts(&mut p), vec![2]);
    p.tick(1_000 + 300 * MS);
    assert!(starts(&mut p).is_empty(), "max_starting 2 in flight");
    assert_eq!(p.stats().starting, 2);
    p.started(1, id("w1"), 1_000 + 300 * MS).unwrap();
    assert_eq!(starts(&mut p), vec![3], "a slot freed and the delay passed");
    let mut t = 1_000 + 300 * MS;
    for (slot, name) in [(2, "w2"), (3, "w3")] {
        p.started(slot, id(name), t).unwrap();
    }
    for _ in 0..10 {
        t += 100 * MS;
        p.tick(t);
        for slot in starts(&mut p) {
            p.started(slot, id(&format!("w{slot}")), t).unwrap();
        }
    }
    let st = p.stats();
    assert_eq!(
        (st.live, st.starting, st.idle, st.started_total),
        (5, 0, 5, 5)
    );
    assert_eq!(p.agents().len(), 5);
    p.tick(t + S);
    assert!(drain(&mut p).is_empty(), "warm: nothing more to do");
}

#[test]
fn a_dead_agent_is_replaced_and_counted() {
    let mut p = warm(3, 5, 3, 0);
    p.agent_gone(&id("a2"), 10).unwrap();
    let s = starts(&mut p);
    assert_eq!(s.len(), 1);
    assert_eq!(p.stats().died, 1);
    assert_eq!(p.stats().replaced, 0, "counted when the replacement is up");
    p.started(s[0], id("r1"), 20).unwrap();
    assert_eq!(p.stats().replaced, 1);
    assert_eq!(p.stats().live, 3);
    // A failed replacement is owed again, and counted once when one succeeds.
    p.agent_gone(&id("r1"), 30).unwrap();
    let s = starts(&mut p);
    p.start_failed(s[0], "boom", 40).unwrap();
    p.tick(40 + S);
    let s = starts(&mut p);
    assert_eq!(s.len(), 1);
    p.started(s[0], id("r2"), 40 + S).unwrap();
    assert_eq!(p.stats().replaced, 2);
    // Above min_size a death is not replaced.
    let mut p = warm(1, 5, 3, 0);
    p.agent_gone(&id("a1"), 10).unwrap();
    assert!(drain(&mut p).is_empty());
}

#[test]
fn growth_needs_demand_and_every_agent_busy() {
    let mut p = warm(2, 3, 2, 0);
    p.demand(4, 10);
    assert!(drain(&mut p).is_empty(), "idle agents take the queue");
    p.observe(&id("a1"), 1, 20).unwrap();
    assert!(drain(&mut p).is_empty(), "a2 is still idle");
    p.observe(&id("a2"), 2, 30).unwrap();
    let s = starts(&mut p);
    assert_eq!(s.len(), 1, "one more");
    p.started(s[0], id("g1"), 40).unwrap();
    p.observe(&id("g1"), 1, 50).unwrap();
    p.tick(10 * S);
    assert!(drain(&mut p).is_empty(), "max_size 3 reached");
    assert_eq!(p.stats().live + p.stats().starting, 3);
    // No demand, no growth.
    let mut p = warm(1, 3, 1, 0);
    p.observe(&id("a1"), 3, 10).unwrap();
    p.tick(S);
    assert!(drain(&mut p).is_empty());
}

#[test]
fn growth_respects_the_warmup_spacing() {
    let mut p = Pool::new(PoolConfig {
        max_starting: 5,
        ..cfg(0, 10)
    })
    .unwrap();
    p.demand(10, 0);
    assert_eq!(starts(&mut p).len(), 1);
    p.demand(10, 50 * MS);
    assert!(drain(&mut p).is_empty());
    p.tick(100 * MS);
    assert_eq!(starts(&mut p).len(), 1);
}

#[test]
fn idle_agents_above_min_are_stopped_never_below() {
    let mut p = warm(2, 5, 4, 0);
    p.observe(&id("a4"), 1, 0).unwrap();
    p.tick(60 * S - 1);
    assert!(drain(&mut p).is_empty(), "not idle long enough");
    p.tick(60 * S);
    let stops = drain(&mut p);
    assert_eq!(
        stops,
        vec![
            PoolAction::Stop { agent: id("a1") },
            PoolAction::Stop { agent: id("a2") }
        ]
    );
    let st = p.stats();
    assert_eq!((st.live, st.stopping, st.stopped_total), (2, 2, 2));
    p.tick(600 * S);
    assert!(drain(&mut p).is_empty(), "a3 idle, but min_size 2 live");
    // The stopped agents going is no death and is not replaced; observe for them is ignored.
    p.observe(&id("a1"), 0, 600 * S).unwrap();
    p.agent_gone(&id("a1"), 600 * S).unwrap();
    p.agent_gone(&id("a2"), 600 * S).unwrap();
    assert_eq!(p.stats().died, 0);
    assert!(drain(&mut p).is_empty());
    assert_eq!(
        p.agent_gone(&id("a1"), 600 * S).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn no_idle_stop_while_tasks_wait() {
    let mut p = warm(0, 3, 2, 0);
    p.demand(1, 0);
    p.tick(100 * S);
    assert!(drain(&mut p).is_empty());
    p.demand(0, 100 * S);
    p.tick(100 * S);
    assert_eq!(drain(&mut p).len(), 2);
}

#[test]
fn a_busy_agent_is_not_idle_and_its_clock_restarts() {
    let mut p = warm(0, 3, 1, 0);
    p.observe(&id("a1"), 1, 50 * S).unwrap();
    p.observe(&id("a1"), 0, 70 * S).unwrap();
    p.tick(129 * S);
    assert!(drain(&mut p).is_empty());
    p.tick(130 * S);
    assert_eq!(drain(&mut p), vec![PoolAction::Stop { agent: id("a1") }]);
}

#[test]
fn a_start_not_answered_times_out_and_a_late_answer_is_handled() {
    let mut p = Pool::new(PoolConfig {
        warmup_delay: 0,
        max_starting: 1,
        ..cfg(1, 1)
    })
    .unwrap();
    p.ensure_min(0);
    assert_eq!(starts(&mut p), vec![1]);
    p.tick(30 * S - 1);
    assert_eq!(p.stats().starting, 1);
    p.tick(30 * S);
    let st = p.stats();
    assert_eq!(
        (st.starting, st.failed_starts, st.timed_out_starts),
        (0, 1, 1)
    );
    p.tick(31 * S);
    assert_eq!(starts(&mut p), vec![2], "retried after the back-off");
    // Slot 1 answers late while slot 2 is in flight: max_size 1 is taken, so it is stopped.
    p.started(1, id("late"), 32 * S).unwrap();
    assert_eq!(drain(&mut p), vec![PoolAction::Stop { agent: id("late") }]);
    assert_eq!(p.stats().live, 0);
    // Slot 2 times out too and then answers: now there is room, adopted.
    p.tick(61 * S);
    p.started(2, id("late2"), 62 * S).unwrap();
    assert_eq!(p.agents(), vec![id("late2")]);
    // A late failure is accepted once and changes nothing.
    let mut q = Pool::new(PoolConfig {
        start_timeout: S,
        ..cfg(1, 1)
    })
    .unwrap();
    q.ensure_min(0);
    drain(&mut q);
    q.tick(S);
    let before = q.stats();
    q.start_failed(1, "late", S).unwrap();
    assert_eq!(q.stats(), before);
    assert_eq!(
        q.start_failed(1, "again", 2 * S).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn failed_starts_back_off_exponentially_and_bounded() {
    let mut p = Pool::new(PoolConfig {
        warmup_delay: 100 * MS,
        max_backoff: 2 * S,
        ..cfg(1, 1)
    })
    .unwrap();
    let mut t = 0;
    p.ensure_min(t);
    let mut gaps = Vec::new();
    let mut last = 0;
    while gaps.len() < 8 {
        for slot in starts(&mut p) {
            if slot > 1 {
                gaps.push(t - last);
            }
            last = t;
            p.start_failed(slot, "exec failed", t).unwrap();
        }
        t += MS;
        p.tick(t);
    }
    // After n failures the next start waits 100 ms × 2^n, at most 2 s (to the ms of the tick).
    let want = [200, 400, 800, 1600, 2000, 2000, 2000, 2000];
    let got: Vec<u64> = gaps.iter().map(|g| g / MS).collect();
    assert_eq!(got, want);
    assert_eq!(p.stats().failed_starts, 9);
    // A success resets it.
    let slot = loop {
        if let Some(PoolAction::Start { slot }) = p.poll_action() {
            break slot;
        }
        t += MS;
        p.tick(t);
    };
    p.started(slot, id("ok"), t).unwrap();
    p.agent_gone(&id("ok"), t).unwrap();
    p.tick(t + 100 * MS);
    assert_eq!(starts(&mut p).len(), 1);
    // With no warm-up delay, the back-off base is MIN_BACKOFF, not 0.
    let mut q = Pool::new(PoolConfig {
        warmup_delay: 0,
        ..cfg(1, 1)
    })
    .unwrap();
    q.ensure_min(0);
    assert_eq!(starts(&mut q), vec![1]);
    q.start_failed(1, "x", 0).unwrap();
    q.tick(2 * MIN_BACKOFF - 1);
    assert!(drain(&mut q).is_empty());
    q.tick(2 * MIN_BACKOFF);
    assert_eq!(starts(&mut q), vec![2]);
}

#[test]
fn unknown_and_repeated_answers_are_clear_errors_that_change_nothing() {
    let mut p = Pool::new(cfg(2, 4)).unwrap();
    p.ensure_min(0);
    assert_eq!(starts(&mut p), vec![1]);
    let before = p.stats();
    for slot in [0, 2, 99] {
        assert_eq!(
            p.started(slot, id("x"), 0).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            p.start_failed(slot, "x", 0).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
    assert_eq!(
        p.agent_gone(&id("nobody"), 0).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        p.observe(&id("nobody"), 1, 0).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(p.stats(), before);
    p.started(1, id("w1"), 0).unwrap();
    let before = p.stats();
    let e = p.started(1, id("w9"), 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("already answered"), "{e}");
    p.tick(100 * MS);
    assert_eq!(starts(&mut p), vec![2]);
    let e = p.started(2, id("w1"), 100 * MS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "duplicate agent id");
    assert_eq!(p.stats().live, before.live);
    assert_eq!(p.stats().starting, 1, "slot 2 still in flight");
}

#[test]
fn a_clock_stepping_back_is_taken_as_no_time() {
    let mut p = Pool::new(cfg(2, 2)).unwrap();
    p.ensure_min(10 * S);
    drain(&mut p);
    p.tick(S);
    assert!(drain(&mut p).is_empty());
    p.tick(10 * S + 100 * MS);
    assert_eq!(starts(&mut p), vec![2]);
}

#[test]
fn next_deadline_names_the_next_timed_event() {
    let mut p = Pool::new(cfg(2, 4)).unwrap();
    assert_eq!(p.next_deadline(), None);
    p.ensure_min(0);
    drain(&mut p);
    assert_eq!(
        p.next_deadline(),
        Some(100 * MS),
        "the second warm-up start"
    );
    p.tick(100 * MS);
    drain(&mut p);
    assert_eq!(p.next_deadline(), Some(30 * S), "slot 1's start timeout");
}

// ---- seeded simulation ----
//
// `EMF_POOL_SIM_SEEDS=N` runs N seeds instead of the default 300 (600 random steps and 400
// quiet ones each; about a second in a debug build).

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One run: a host with random start outcomes (quick, failed, late past the timeout, never
/// answered), agents dying, demand waves; invariants checked after every step; then a quiet
/// period with reliable starts must leave the pool at `min_size` at least.
fn simulate(seed: u64, steps: usize) -> PoolStats {
    let mut rng = Rng(seed);
    let min = rng.below(6) as u32;
    let max = min.max(1) + rng.below(6) as u32;
    let c = PoolConfig {
        min_size: min,
        max_size: max,
        idle_timeout: (1 + rng.below(20)) * 100 * MS,
        warmup_delay: rng.below(3) * 50 * MS,
        max_starting: 1 + rng.below(3) as u32,
        start_timeout: (1 + rng.below(10)) * 100 * MS,
        max_backoff: (1 + rng.below(10)) * 100 * MS,
        ..cfg(0, 1)
    };
    let mut p = Pool::new(c.clone()).unwrap();
    let fail_rate = rng.below(60);
    let mut t: Micros = 0;
    // Slots issued and not answered yet: (slot, when the host answers, succeeds?).
    let mut pending: Vec<(u64, Micros, bool)> = Vec::new();
    let mut issued = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let mut stopping = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut next_agent = 0u64;
    let mut queued = 0usize;
    let mut reliable = false;

    let check = |p: &Pool, stopping: Option<&BTreeSet<AgentId>>| {
        let st = p.stats();
        assert!(
            st.live + st.starting <= c.max_size,
            "seed {seed}: {st:?} over max {}",
            c.max_size
        );
        assert!(st.starting <= c.max_starting, "seed {seed}: {st:?}");
        if let Some(stopping) = stopping {
            assert_eq!(st.stopping as usize, stopping.len(), "seed {seed}");
        }
        assert_eq!(st.live as usize, p.agents().len());
    };

    let total = steps + 400;
    for step in 0..total {
        if step == steps {
            reliable = true; // quiet period: starts succeed on time, no deaths, no demand
            queued = 0;
            p.demand(0, t);
        }
        t += rng.below(40) * MS;
        // Host answers whatever is due.
        let mut i = 0;
        while i < pending.len() {
            let (slot, at, ok) = pending[i];
            if at <= t {
                pending.swap_remove(i);
                assert!(
                    answered.insert(slot),
                    "seed {seed}: slot {slot} answered twice"
                );
                if ok {
                    next_agent += 1;
                    let a = id(&format!("g{next_agent}"));
                    p.started(slot, a.clone(), t).unwrap();
                    if !p.agents().contains(&a) {
                        refused.insert(a); // a late start with the pool full: stopped at once
                    }
                } else {
                    p.start_failed(slot, "sim", t).unwrap();
                }
            } else {
                i += 1;
            }
        }
        if !reliable {
            match rng.below(10) {
                0 => {
                    let agents = p.agents();
                    if !agents.is_empty() {
                        let a = &agents[rng.below(agents.len() as u64) as usize];
                        p.agent_gone(a, t).unwrap();
                    }
                }
                1 | 2 => {
                    queued = if rng.chance(50) {
                        0
                    } else {
                        rng.below(30) as usize
                    };
                    p.demand(queued, t);
                }
                3..=5 => {
                    let agents = p.agents();
                    if !agents.is_empty() {
                        let a = &agents[rng.below(agents.len() as u64) as usize];
                        let load = if queued > 0 { rng.below(4) as u32 } else { 0 };
                        p.observe(a, load, t).unwrap();
                    }
                }
                _ => {}
            }
        } else {
            for a in p.agents() {
                p.observe(&a, 0, t).unwrap();
            }
        }
        if rng.chance(50) {
            p.tick(t);
        } else {
            p.ensure_min(t);
        }
        while let Some(a) = p.poll_action() {
            match a {
                PoolAction::Start { slot } => {
                    assert!(issued.insert(slot), "seed {seed}: slot {slot} issued twice");
                    let (delay, ok) = if reliable {
                        (rng.below(c.start_timeout / 2), true)
                    } else {
                        let late = rng.chance(10);
                        let delay = if late {
                            c.start_timeout + rng.below(S)
                        } else {
                            rng.below(c.start_timeout)
                        };
                        (delay, !rng.chance(fail_rate))
                    };
                    if reliable || !rng.chance(2) {
                        pending.push((slot, t + delay, ok));
                    } else {
                        answered.insert(slot); // never answered: the pool times it out
                    }
                }
                PoolAction::Stop { agent } => {
                    assert!(
                        refused.contains(&agent) || p.stats().live >= c.min_size,
                        "seed {seed}: stop below min_size"
                    );
                    assert!(stopping.insert(agent.clone()));
                    if rng.chance(80) {
                        stopping.remove(&agent);
                        p.agent_gone(&agent, t).unwrap();
                    }
                }
            }
            check(&p, None);
        }
        check(&p, Some(&stopping));
    }
    // Every slot issued was answered (or deliberately left to time out) exactly once.
    for (slot, _, _) in &pending {
        answered.insert(*slot);
    }
    assert_eq!(issued, answered, "seed {seed}");
    let st = p.stats();
    assert!(
        st.live >= c.min_size,
        "seed {seed}: after a quiet period {st:?} with {c:?}"
    );
    st
}

#[test]
fn simulation_keeps_the_invariants() {
    let seeds: u64 = std::env::var("EMF_POOL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut seen = PoolStats::default();
    for seed in 0..seeds {
        let st = simulate(seed, 600);
        seen.replaced += st.replaced;
        seen.stopped_total += st.stopped_total;
        seen.timed_out_starts += st.timed_out_starts;
        seen.failed_starts += st.failed_starts;
        seen.died += st.died;
    }
    // The runs went through every rule (a simulation that never replaces, stops or times out
    // would check nothing).
    if seeds >= 100 {
        assert!(
            seen.replaced > 0 && seen.stopped_total > 0 && seen.died > 0,
            "{seen:?}"
        );
        assert!(seen.timed_out_starts > 0 && seen.failed_starts > seen.timed_out_starts);
    }
}
