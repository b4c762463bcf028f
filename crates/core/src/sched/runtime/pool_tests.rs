//! Pools on the runtime: agents as threads (a test launcher) and as OS processes
//! ([`CommandLauncher`], the test binary itself as the agent), warm-up, replacement of dead
//! agents, growth under demand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering}; // std-atomic-ok: test flags, never modelled
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::priority::Priority;
use crate::sched::pool::PoolConfig;
use crate::sched::types::{AgentId, AgentType};
use crate::testutil::TempDir;

fn ty() -> AgentType {
    AgentType::new("pooled").unwrap()
}

fn opts(dir: &TempDir) -> RuntimeOptions {
    RuntimeOptions {
        reports_capacity: 1 << 16,
        load_slots: 32,
        ledger: LedgerChoice::Memory,
        liveness_interval: 1_000,
        ..RuntimeOptions::in_dir(&dir.0)
    }
}

fn config(min: u32, max: u32) -> PoolConfig {
    PoolConfig {
        min_size: min,
        max_size: max,
        warmup_delay: 0,
        max_starting: 4,
        ..PoolConfig::new(ty())
    }
}

/// Agents as threads; `stop` makes one leave.
struct Threads {
    dir: std::path::PathBuf,
    running: HashMap<AgentId, (Arc<AtomicBool>, JoinHandle<()>)>,
    launched: u32,
}

impl Launcher for Threads {
    fn launch(&mut self, id: &AgentId) -> crate::Result<()> {
        let mut a = Agent::connect(AgentOptions {
            inbox_capacity: 1 << 14,
            ..AgentOptions::new(&self.dir, id.clone(), ty())
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            a.run(
                Duration::from_millis(2),
                || s.load(Ordering::Acquire),
                |t| Ok(t.payload.clone()),
            )
            .unwrap();
        });
        self.launched += 1;
        self.running.insert(id.clone(), (stop, h));
        Ok(())
    }
    fn stop(&mut self, id: &AgentId) -> crate::Result<()> {
        if let Some((s, _)) = self.running.get(id) {
            s.store(true, Ordering::Release);
        }
        Ok(())
    }
    fn ended(&mut self, id: &AgentId) -> bool {
        match self.running.get(id) {
            Some((_, h)) if !h.is_finished() => false,
            Some(_) => {
                let (_, h) = self.running.remove(id).unwrap();
                h.join().unwrap();
                true
            }
            None => true,
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        for (_, (s, h)) in self.running.drain() {
            s.store(true, Ordering::Release);
            let _ = h.join();
        }
    }
}

/// Steps dispatcher and pool until `done` holds (the test fails after 60 s).
fn drive<L: Launcher>(
    d: &mut Dispatcher,
    p: &mut PoolHost<L>,
    what: &str,
    mut done: impl FnMut(&mut Dispatcher, &mut PoolHost<L>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(d, p) {
        assert!(Instant::now() < deadline, "{what}: {:?}", p.stats());
        d.step(Duration::from_millis(1)).unwrap();
        p.step(d.scheduler(), now_micros()).unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn thread_pool_warms_up_replaces_and_grows() {
    let dir = TempDir::new("pool-threads");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let launcher = Threads {
        dir: dir.0.clone(),
        running: HashMap::new(),
        launched: 0,
    };
    let mut p = PoolHost::new(config(3, 5), launcher, "t-").unwrap();
    drive(&mut d, &mut p, "warm-up", |d, p| {
        p.stats().live == 3 && d.stats().agents == 3
    });
    assert_eq!(p.launcher().launched, 3);
    // One agent leaves (a crash of a thread agent: its Drop says bye): it is replaced.
    let victim = AgentId::new(&format!("t-{}-1", std::process::id())).unwrap();
    p.launcher().stop(&victim).unwrap();
    drive(&mut d, &mut p, "replacement", |_, p| {
        p.stats().replaced == 1 && p.stats().live == 3
    });
    // Demand: many queued tasks while all are busy grows the pool, never past max_size.
    for i in 0..2_000u32 {
        d.submit(&ty(), Priority::Normal, i.to_le_bytes().to_vec())
            .unwrap();
    }
    let mut outcomes = 0;
    let mut most = 0;
    drive(&mut d, &mut p, "the work", |d, p| {
        while d.poll_outcome().is_some() {
            outcomes += 1;
        }
        let s = p.stats();
        most = most.max(s.live + s.starting);
        outcomes == 2_000
    });
    assert!(most <= 5, "{most} agents");
    drop(p);
}

/// The child of [`process_pool_replaces_killed_agents`]: one agent process.
#[test]
#[ignore = "the agent process of process_pool_replaces_killed_agents"]
fn pool_child_agent() {
    let (Ok(id), Ok(dir)) = (
        std::env::var("EMF_AGENT_ID"),
        std::env::var("EMF_AGENT_DIR"),
    ) else {
        panic!("run by process_pool_replaces_killed_agents only");
    };
    let mut a = Agent::connect(AgentOptions {
        inbox_capacity: 1 << 14,
        ..AgentOptions::new(dir, AgentId::new(&id).unwrap(), ty())
    })
    .unwrap();
    // Until killed (or the test's deadline).
    let deadline = Instant::now() + Duration::from_secs(120);
    a.run(
        Duration::from_millis(5),
        || Instant::now() > deadline,
        |t| Ok(t.payload.iter().rev().copied().collect()),
    )
    .unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "spawns and kills processes")]
fn process_pool_replaces_killed_agents() {
    let dir = TempDir::new("pool-procs");
    let mut d = Dispatcher::open(&opts(&dir)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let launcher = CommandLauncher::new(
        exe.to_str().unwrap(),
        &[
            "--exact",
            "sched::runtime::pool_tests::pool_child_agent",
            "--ignored",
            "--quiet",
        ],
        &dir.0,
        "pooled",
    );
    let mut p = PoolHost::new(config(2, 2), launcher, "p-").unwrap();
    drive(&mut d, &mut p, "warm-up", |d, p| {
        p.stats().live == 2 && d.stats().agents == 2
    });
    // SIGKILL one agent process: the dispatcher sees its pid gone, the pool replaces it.
    let victim = AgentId::new(&format!("p-{}-1", std::process::id())).unwrap();
    let pid = p.launcher().pid(&victim).expect("running");
    // SAFETY: kill(2) of our own child's pid with a valid signal.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    drive(&mut d, &mut p, "replacement", |d, p| {
        p.stats().replaced == 1 && p.stats().live == 2 && d.stats().agents == 2
    });
    assert!(d.stats().deaths >= 1);
    // The pool serves.
    let ids: Vec<_> = (0..50u8)
        .map(|i| d.submit(&ty(), Priority::Normal, vec![i, 7]).unwrap())
        .collect();
    let mut got = HashMap::new();
    drive(&mut d, &mut p, "the work", |d, _| {
        while let Some((id, o)) = d.poll_outcome() {
            got.insert(id, o);
        }
        got.len() == ids.len()
    });
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(got[id], Outcome::Done(vec![7, i as u8]));
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads, rings and /proc")]
fn a_service_keeps_its_pools() {
    let dir = TempDir::new("pool-service");
    let svc = Service::start(&opts(&dir)).unwrap();
    let launcher = Threads {
        dir: dir.0.clone(),
        running: HashMap::new(),
        launched: 0,
    };
    let ix = svc
        .add_pool(config(2, 3), Box::new(launcher), "sv-")
        .unwrap();
    assert!(svc.pool_stats(ix + 1).is_err());
    // Tasks submitted before any agent exists wait for the pool's agents.
    let mut futs: Vec<_> = (0..100u8)
        .map(|i| svc.submit(&ty(), Priority::Normal, vec![i]).unwrap())
        .collect();
    for (i, f) in futs.iter_mut().enumerate() {
        assert_eq!(
            f.wait(Duration::from_secs(60)).unwrap(),
            Outcome::Done(vec![i as u8])
        );
    }
    let (s, err) = svc.pool_stats(ix).unwrap();
    assert!(s.live >= 2 && s.live <= 3, "{s:?}");
    assert!(err.is_none(), "{err:?}");
}
