//! The runtime with agents as threads of the test process (agents as processes, killed with
//! SIGKILL, are exercised by `erlmcp-flow agents chaos`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering}; // std-atomic-ok: test flags, never modelled
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{self, ReportFrame};
use super::*;
use crate::priority::Priority;
use crate::ring::Ring;
use crate::sched::types::{AgentId, AgentType, TaskId};
use crate::testutil::TempDir;
use crate::ErrorKind;

fn ty(s: &str) -> AgentType {
    AgentType::new(s).unwrap()
}

fn opts(dir: &TempDir) -> RuntimeOptions {
    RuntimeOptions {
        reports_capacity: 1 << 16,
        load_slots: 16,
        ledger: LedgerChoice::Shm { capacity: 1 << 20 },
        ..RuntimeOptions::in_dir(&dir.0)
    }
}

fn agent_opts(dir: &TempDir, id: &str, t: &str) -> AgentOptions {
    AgentOptions {
        inbox_capacity: 1 << 14,
        ..AgentOptions::new(&dir.0, AgentId::new(id).unwrap(), ty(t))
    }
}

/// The answer every test agent gives: the payload reversed.
fn answer(p: &[u8]) -> Vec<u8> {
    p.iter().rev().copied().collect()
}

/// Steps `d` until `want` outcomes came (or the test deadline passes), returning them.
fn collect(d: &mut Dispatcher, want: usize) -> BTreeMap<TaskId, Outcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = BTreeMap::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} outcomes",
            got.len()
        );
        d.step(Duration::from_millis(5)).unwrap();
        while let Some((id, o)) = d.poll_outcome() {
            assert!(got.insert(id, o).is_none(), "task {id:?} ended twice");
        }
    }
    got
}

/// An agent thread that answers until `stop`; counts executions.
fn spawn_agent(
    o: AgentOptions,
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    let mut a = Agent::connect(o).unwrap();
    std::thread::spawn(move || {
        a.run(
            Duration::from_millis(5),
            || stop.load(Ordering::Acquire),
            |t| {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok(answer(&t.payload))
            },
        )
        .unwrap()
    })
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn tasks_reach_thread_agents_and_results_come_back_once() {
    let dir = TempDir::new("rt-basic");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = (0..3)
        .map(|i| {
            spawn_agent(
                agent_opts(&dir, &format!("w{i}"), "echo"),
                stop.clone(),
                runs.clone(),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for i in 0..300u32 {
        let p = i.to_le_bytes().to_vec();
        let prio = if i % 10 == 0 {
            Priority::Critical
        } else {
            Priority::Normal
        };
        let id = d.submit(&ty("echo"), prio, p.clone()).unwrap();
        want.insert(id, Outcome::Done(answer(&p)));
        d.step(Duration::ZERO).unwrap();
    }
    let got = collect(&mut d, want.len());
    assert_eq!(got, want);
    // The registry knows them while they serve (lookups by id through the LRU cache, by
    // type), with the load slots they claimed themselves.
    let reg = d.registry().clone();
    let w0 = AgentId::new("w0").unwrap();
    let info = reg.lookup(&w0).unwrap();
    assert_eq!(info.agent_type, ty("echo"));
    assert_eq!(d.loads().find(&w0), Some(info.slot));
    assert_eq!(reg.by_type(&ty("echo")).len(), 3);
    stop.store(true, Ordering::Release);
    let done: u64 = agents.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(done, runs.load(Ordering::Relaxed));
    assert!(done >= 300);
    let s = d.stats();
    assert_eq!(s.sched.completed, 300);
    assert_eq!(s.bad_reports, 0, "{:?}", d.last_report_error());
    // The agents said goodbye: no agent is registered, and their inboxes are gone.
    d.step(Duration::from_millis(1)).unwrap();
    assert_eq!(d.stats().agents, 0);
    assert_eq!(reg.lookup(&w0).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(reg.is_empty());
    drop(d);
    Dispatcher::remove_segments(&dir.0).unwrap();
    assert!(crate::shm::list(&dir.0).unwrap().is_empty());
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn a_leaving_agents_tasks_go_to_another() {
    let dir = TempDir::new("rt-leave");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    // One agent takes tasks and leaves without answering them.
    let mut quitter = Agent::connect(agent_opts(&dir, "quitter", "t")).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    let ids: Vec<TaskId> = (0..4u8)
        .map(|i| d.submit(&ty("t"), Priority::Normal, vec![i]).unwrap())
        .collect();
    let t = quitter
        .recv(Duration::from_secs(10))
        .unwrap()
        .expect("a task");
    assert!(ids.contains(&t.id));
    quitter.leave().unwrap();
    // A second agent gets all four, the abandoned one included.
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let h = spawn_agent(agent_opts(&dir, "stayer", "t"), stop.clone(), runs.clone());
    let got = collect(&mut d, 4);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), ids);
    stop.store(true, Ordering::Release);
    h.join().unwrap();
    assert!(d.stats().sched.redeliveries >= 1);
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn a_restarted_dispatcher_finishes_what_its_predecessor_accepted() {
    let dir = TempDir::new("rt-restart");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..50u8 {
        let id = d.submit(&ty("t"), Priority::Normal, vec![i, 1]).unwrap();
        want.insert(id, Outcome::Done(answer(&[i, 1])));
    }
    // The dispatcher goes away with no agent yet: every task is only in the ledger.
    drop(d);
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    assert_eq!(d.stats().sched.queued, 50);
    let h = spawn_agent(agent_opts(&dir, "a", "t"), stop.clone(), runs.clone());
    let got = collect(&mut d, 25);
    for (id, o) in &got {
        assert_eq!(Some(o), want.get(id));
    }
    // Now the dispatcher dies with the agent still running: the successor asks it to say
    // hello again and the rest completes. Outcomes the dead one had not handed out are in
    // the ledger (the result store): nothing is lost, nothing doubled.
    drop(d);
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let recovered = d.stats().sched.completed as usize;
    assert!(recovered >= 25);
    for (id, o) in collect(&mut d, 50 - recovered) {
        assert_eq!(Some(&o), want.get(&id));
    }
    assert_eq!(d.stats().sched.completed, 50);
    let mut results = BTreeMap::new();
    for r in d.scheduler().ledger().replay().unwrap() {
        if let crate::sched::LedgerRecord::Completed { id, result } = r {
            assert!(
                results.insert(id, Outcome::Done(result)).is_none(),
                "{id:?} twice"
            );
        }
    }
    assert_eq!(results, want);
    stop.store(true, Ordering::Release);
    h.join().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn bad_reports_are_counted_and_change_nothing() {
    let dir = TempDir::new("rt-bad");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let id = d.submit(&ty("t"), Priority::Normal, vec![1]).unwrap();
    let ring = Ring::open(REPORTS_RING, &segment_in(&dir.0)).unwrap();
    let mut p = ring.producer().unwrap();
    p.send(b"").unwrap();
    p.send(&[9, 9, 9]).unwrap();
    let mut v = Vec::new();
    // An ack from an agent nobody knows, for a task that was never submitted.
    wire::encode_report(
        &ReportFrame::Ack {
            agent: AgentId::new("ghost").unwrap(),
            task: TaskId(999),
            attempt: 1,
            result: b"x",
        },
        &mut v,
    );
    p.send(&v).unwrap();
    // A hello from a process that does not exist.
    wire::encode_report(
        &ReportFrame::Hello {
            agent: AgentId::new("ghost").unwrap(),
            pid: i32::MAX as u32,
            start_ticks: 1,
            max_tasks: 1,
            agent_type: ty("t"),
        },
        &mut v,
    );
    p.send(&v).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    let s = d.stats();
    assert_eq!(s.reports, 4);
    assert_eq!(s.bad_reports, 4);
    assert_eq!(s.agents, 0);
    assert!(d.scheduler().is_queued(id), "the task is still waiting");
    assert!(d.poll_outcome().is_none());
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn agents_are_refused_clearly() {
    let dir = TempDir::new("rt-refuse");
    let e = Agent::connect(agent_opts(&dir, "a", "t"))
        .err()
        .expect("no dispatcher");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let _d = Dispatcher::open(&opts(&dir)).unwrap();
    let mut zero = agent_opts(&dir, "a", "t");
    zero.max_tasks = 0;
    assert_eq!(
        Agent::connect(zero).err().unwrap().kind(),
        ErrorKind::InvalidArgument
    );
    let _a = Agent::connect(agent_opts(&dir, "a", "t")).unwrap();
    let e = Agent::connect(agent_opts(&dir, "a", "t")).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // A second dispatcher for the same directory is refused while the first lives.
    let e = Dispatcher::open(&opts(&dir)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn service_futures_resolve_across_threads() {
    let dir = TempDir::new("rt-service");
    let svc = Arc::new(Service::start(&opts(&dir)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = (0..2)
        .map(|i| {
            spawn_agent(
                agent_opts(&dir, &format!("s{i}"), "t"),
                stop.clone(),
                runs.clone(),
            )
        })
        .collect();
    let submitters: Vec<_> = (0..3u8)
        .map(|k| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let mut futs: Vec<_> = (0..100u8)
                    .map(|i| {
                        let p = vec![k, i];
                        (
                            svc.submit(&ty("t"), Priority::Normal, p.clone()).unwrap(),
                            p,
                        )
                    })
                    .collect();
                for (f, p) in &mut futs {
                    assert_eq!(
                        f.wait(Duration::from_secs(60)).unwrap(),
                        Outcome::Done(answer(p))
                    );
                    assert!(f.wait(Duration::ZERO).is_err(), "taken once");
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    assert_eq!(svc.stats().sched.completed, 300);
    // Fire and forget: a dropped future's outcome is discarded, not kept as an orphan.
    drop(svc.submit(&ty("t"), Priority::Normal, vec![9]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while svc.stats().sched.completed < 301 {
        assert!(Instant::now() < deadline, "the dropped task never ran");
        std::thread::yield_now();
    }
    assert!(svc.take_orphan().is_none());
    // A future that times out says so and the task stays owned by the scheduler.
    stop.store(true, Ordering::Release);
    for a in agents {
        a.join().unwrap();
    }
    let mut f = svc.submit(&ty("nobody"), Priority::Low, vec![]).unwrap();
    assert_eq!(
        f.wait(Duration::from_millis(1)).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert!(!f.is_done());
    match Arc::try_unwrap(svc) {
        Ok(s) => s.shutdown(),
        Err(_) => panic!("service still shared"),
    }
    assert_eq!(
        f.wait(Duration::from_millis(1)).unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn an_agent_forgotten_for_missed_heartbeats_is_asked_back() {
    let dir = TempDir::new("rt-forgot");
    let mut o = opts(&dir);
    o.config.heartbeat_timeout = Some(20_000);
    o.liveness_interval = 1_000;
    let mut d = Dispatcher::open(&o).unwrap();
    let mut a = Agent::connect(agent_opts(&dir, "slow", "t")).unwrap();
    d.step(Duration::from_millis(1)).unwrap(); // its hello
    let first = d.submit(&ty("t"), Priority::Normal, vec![1]).unwrap();
    let id = AgentId::new("slow").unwrap();
    assert!(d.scheduler().agent_load(&id).is_some());
    let t = a.recv(Duration::from_secs(10)).unwrap().expect("a task");
    assert_eq!(t.id, first);
    // The agent works on and on without a heartbeat: the scheduler forgets it and puts its
    // task back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.scheduler().agent_load(&id).is_some() {
        assert!(Instant::now() < deadline, "never forgotten");
        d.step(Duration::from_millis(1)).unwrap();
    }
    assert!(d.scheduler().is_queued(first));
    // Its late result still completes the task (the work was done)...
    a.complete(&t, b"late").unwrap();
    let got = collect(&mut d, 1);
    assert_eq!(got[&first], Outcome::Done(b"late".to_vec()));
    // ...and the dispatcher asked it to register again: its next recv says hello, and a new
    // task reaches it.
    assert!(a.recv(Duration::ZERO).unwrap().is_none());
    while d.scheduler().agent_load(&id).is_none() {
        assert!(Instant::now() < deadline, "never registered again");
        d.step(Duration::from_millis(1)).unwrap();
    }
    let second = d.submit(&ty("t"), Priority::Normal, vec![2]).unwrap();
    let t = a.recv(Duration::from_secs(10)).unwrap().expect("a task");
    assert_eq!(t.id, second);
}

// The cases of an independent review of the runtime: each failed before its fix.

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn leave_then_reconnect_with_the_same_id_gets_tasks() {
    let dir = TempDir::new("rv-reconnect");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let a = Agent::connect(agent_opts(&dir, "w", "t")).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    assert_eq!(d.stats().agents, 1);
    a.leave().unwrap();
    let mut b = Agent::connect(agent_opts(&dir, "w", "t")).unwrap();
    d.step(Duration::from_millis(1)).unwrap(); // the old bye and the new hello in one step
    let id = d.submit(&ty("t"), Priority::Normal, vec![1]).unwrap();
    let got = b.recv(Duration::from_secs(10)).unwrap().map(|t| t.id);
    assert_eq!(got, Some(id), "last error {:?}", d.last_report_error());
}

#[test]
#[cfg_attr(miri, ignore = "spawns a process")]
fn a_replacement_with_the_same_id_survives_its_predecessors_death() {
    use crate::ring::RingOptions;
    let dir = TempDir::new("rv-replace");
    let mut o = opts(&dir);
    o.batch = 1;
    o.liveness_interval = 1;
    let mut d = Dispatcher::open(&o).unwrap();
    // The first incarnation: another process (its inbox made by hand, its hello forged).
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (pid, ticks) = (child.id(), crate::shm::process_start_ticks(child.id()));
    let ropts = RingOptions {
        capacity: 1 << 14,
        max_producers: 1,
        max_subscribers: 1,
        ..RingOptions::in_dir(&dir.0)
    };
    let old_inbox = Ring::create(&crate::router::inbox_name("w"), &ropts).unwrap();
    let reports = Ring::open(REPORTS_RING, &segment_in(&dir.0)).unwrap();
    let mut p = reports.producer().unwrap();
    let mut v = Vec::new();
    wire::encode_report(
        &ReportFrame::Hello {
            agent: AgentId::new("w").unwrap(),
            pid,
            start_ticks: ticks,
            max_tasks: 1,
            agent_type: ty("t"),
        },
        &mut v,
    );
    p.send(&v).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    assert_eq!(d.stats().agents, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(old_inbox);
    // Other reports ahead of the new incarnation's hello: its predecessor's death is seen
    // (one frame per step) before the hello is read.
    for _ in 0..3 {
        p.send(&[9, 9, 9]).unwrap();
    }
    let mut b = Agent::connect(agent_opts(&dir, "w", "t")).unwrap();
    for _ in 0..20 {
        d.step(Duration::from_millis(1)).unwrap();
    }
    let id = d.submit(&ty("t"), Priority::Normal, vec![1]).unwrap();
    let got = b.recv(Duration::from_secs(10)).unwrap().map(|t| t.id);
    assert_eq!(got, Some(id), "last error {:?}", d.last_report_error());
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn an_agent_with_a_full_inbox_at_a_restart_registers_again() {
    let dir = TempDir::new("rv-full-hello");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let mut ao = agent_opts(&dir, "w", "t");
    ao.inbox_capacity = 4096;
    let mut a = Agent::connect(ao).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    for i in 0..5u8 {
        d.submit(&ty("t"), Priority::Normal, vec![i; 995]).unwrap();
    }
    d.step(Duration::from_millis(1)).unwrap();
    assert!(d.stats().pending_deliveries > 0, "the inbox is full");
    drop(d);
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    while let Some(t) = a.recv(Duration::from_millis(20)).unwrap() {
        a.complete(&t, b"r").unwrap();
        d.step(Duration::from_millis(1)).unwrap();
    }
    let w = AgentId::new("w").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.scheduler().agent_load(&w).is_none() {
        assert!(Instant::now() < deadline, "never registered again");
        d.step(Duration::from_millis(1)).unwrap();
        let _ = a.recv(Duration::ZERO).unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn deliveries_waiting_for_a_stuck_agent_stay_bounded() {
    let dir = TempDir::new("rv-stuck");
    let mut o = opts(&dir);
    o.config.heartbeat_timeout = None;
    o.config.min_lease = 1_000;
    o.config.default_lease = 1_000;
    o.config.max_lease = 1_000;
    o.config.max_attempts = 1_000_000;
    let mut d = Dispatcher::open(&o).unwrap();
    let mut ao = agent_opts(&dir, "stuck", "t");
    ao.inbox_capacity = 4096;
    ao.max_tasks = 1;
    let _a = Agent::connect(ao).unwrap(); // never reads
    d.step(Duration::from_millis(1)).unwrap();
    d.submit(&ty("t"), Priority::Normal, vec![7; 900]).unwrap();
    for _ in 0..300 {
        d.step(Duration::from_millis(1)).unwrap();
        assert!(d.stats().pending_deliveries <= 4, "{:?}", d.stats());
    }
    assert!(
        d.stats().sched.redeliveries > 10,
        "leases expired meanwhile"
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn the_inbox_of_an_agent_leaving_during_a_restart_is_removed() {
    let dir = TempDir::new("rv-bye-leak");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let a = Agent::connect(agent_opts(&dir, "w", "t")).unwrap();
    d.step(Duration::from_millis(1)).unwrap();
    drop(d);
    a.leave().unwrap();
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    for _ in 0..10 {
        d.step(Duration::from_millis(1)).unwrap();
    }
    let left: Vec<String> = crate::shm::list(&dir.0)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("inbox."))
        .collect();
    assert!(left.is_empty(), "{left:?} left behind");
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn a_successor_service_starts_while_an_old_future_lives() {
    let dir = TempDir::new("rv-svc-busy");
    let svc = Service::start(&opts(&dir)).unwrap();
    let mut f = svc.submit(&ty("nobody"), Priority::Low, vec![]).unwrap();
    svc.shutdown();
    let next = Service::start(&opts(&dir));
    assert!(next.is_ok(), "{:?}", next.err());
    // Waiting for ever on a stopped service answers at once, without overflow.
    assert_eq!(f.wait(Duration::MAX).unwrap_err().kind(), ErrorKind::Closed);
}
