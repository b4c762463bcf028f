//! The scheduler suite: choosing an agent among 60 (issue 12's `sched_select_p99_ns`, here),
//! the scheduling policies compared on a virtual clock (`sched_p99_vs_round_robin`,
//! `sched_mean_depth`, `sched_balance`: [`super::sched_sim`]) and the memory of a loaded
//! scheduler (`sched_memory_mb`: [`super::sched_mem`]); the runtime end to end (tasks per
//! second with agent threads and processes, warm and cold starts, critical tasks under load,
//! tasks lost under kills, the runtime's memory: [`super::sched_rt`]).
//!
//! # Selecting an agent
//!
//! Ours: the agents' loads live in a shared-memory load table (`/dev/shm`), the registry
//! hands out the type's candidates read from it, and a strategy (`LeastLoaded` or
//! `PowerOfTwo`) picks one. The peer, measured in the same run, is the naive registry: a
//! `Mutex<HashMap<String, Agent>>` scanned under its lock for the type's least-loaded agent by
//! the same score, returning the chosen agent's name.
//!
//! Each sample is one select, timed alone with `Instant` (the clock's ~20 ns are included in
//! every figure, ours and the peer's alike); between selects the chosen agent gains a task and
//! a random one finishes one, outside the timed region, so loads keep changing. The three
//! variants run in 20 alternating rounds over the same pool, so the shared machine's noise
//! falls on all of them alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use erlmcp_flow::sched::strategy::score;
use erlmcp_flow::sched::{
    AgentId, AgentType, Candidates, Liveness, LoadTable, Registry, SlotRef, Strategy,
};
use erlmcp_flow::shm::SegmentOptions;

use super::{BenchResult, Better, Settings, Suite};

/// Agents in the pool (the figure).
pub const AGENTS: usize = 60;

/// The naive registry's record of an agent.
struct NaiveAgent {
    agent_type: String,
    current: u32,
    max: u32,
    latency_us: u64,
}

/// The naive peer: one lock around a map, scanned per select.
struct Naive(Mutex<HashMap<String, NaiveAgent>>);

impl Naive {
    fn select(&self, agent_type: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let max_latency = map
            .values()
            .filter(|a| a.agent_type == agent_type)
            .map(|a| a.latency_us)
            .max()
            .unwrap_or(0);
        let mut best: Option<(&String, f64)> = None;
        for (name, a) in map.iter() {
            if a.agent_type != agent_type || a.current >= a.max {
                continue;
            }
            let c = erlmcp_flow::sched::Candidate {
                current_tasks: a.current,
                max_tasks: a.max,
                latency_us: a.latency_us,
            };
            let s = score(&c, max_latency);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((name, s));
            }
        }
        best.map(|(n, _)| n.clone())
    }

    fn adjust(&self, name: &str, delta: i32) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get_mut(name) {
            a.current = a.current.saturating_add_signed(delta).min(a.max);
        }
    }
}

/// xorshift64: the pseudo-random loads and finishing agents.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Appends to `lat` the times (ns) of `n` single calls of `select`, with `after(choice)` run
/// untimed between them.
fn sample<T>(
    n: usize,
    lat: &mut Vec<f64>,
    mut select: impl FnMut() -> T,
    mut after: impl FnMut(T),
) {
    for _ in 0..n {
        let t = Instant::now();
        let c = std::hint::black_box(select());
        lat.push(t.elapsed().as_nanos() as f64);
        after(c);
    }
}

/// p50 and p99 of `lat`.
fn p50_p99(mut lat: Vec<f64>) -> (f64, f64) {
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// The pool: a shared load table in `/dev/shm` (or the temporary directory), a registry of
/// `AGENTS` agents of one type with pseudo-random loads, and the same pool in the naive map.
struct Pool {
    registry: Registry,
    slots: Vec<SlotRef>,
    naive: Naive,
    names: Vec<String>,
    _table_file: TableFile,
}

/// Removes the bench's table segment when done.
struct TableFile(std::path::PathBuf);

impl Drop for TableFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pool() -> Pool {
    let dir = if std::path::Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
        erlmcp_flow::shm::DEFAULT_DIR.into()
    } else {
        std::env::temp_dir()
    };
    let opts = SegmentOptions {
        dir,
        ..SegmentOptions::default()
    };
    let name = format!("loads.bench-{}", std::process::id());
    let table = LoadTable::create(&name, 256, &opts).expect("create the load table");
    let file = TableFile(erlmcp_flow::shm::segment_path(&opts.dir, &name));
    let registry = Registry::new(Arc::new(table), 10_000);
    let ty = AgentType::new("worker").expect("type");
    let mut x = 0x5EED_1234_u64;
    let mut slots = Vec::new();
    let mut naive = HashMap::new();
    let mut names = Vec::new();
    for i in 0..AGENTS {
        let name = format!("agent-{i:02}");
        let info = registry
            .register(
                AgentId::new(&name).expect("id"),
                ty.clone(),
                5,
                Liveness::Token(i as u64),
                0,
            )
            .expect("register");
        let current = (next(&mut x) % 5) as i32;
        let latency = 100 + next(&mut x) % 2000;
        registry
            .loads()
            .update(info.slot, current, Some(latency))
            .expect("update");
        slots.push(info.slot);
        naive.insert(
            name.clone(),
            NaiveAgent {
                agent_type: "worker".into(),
                current: current as u32,
                max: 5,
                latency_us: latency,
            },
        );
        names.push(name);
    }
    Pool {
        registry,
        slots,
        naive: Naive(Mutex::new(naive)),
        names,
        _table_file: file,
    }
}

/// Samples (ns) of one select: the naive peer, ours with `LeastLoaded`, ours with
/// `PowerOfTwo`, measured in `rounds` alternating rounds of `n / rounds` selects each (after a
/// warm-up), so that the machine's noise falls on all three alike.
pub fn select_samples(n: usize, rounds: usize) -> [Vec<f64>; 3] {
    let p = pool();
    let ty = AgentType::new("worker").expect("type");
    let mut buf = Candidates::new();
    let mut least = Strategy::LeastLoaded;
    let mut p2c = Strategy::power_of_two(7);
    let mut x = 42u64;
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..=rounds {
        // Round 0 warms caches and branch predictors and is thrown away.
        let per = if round == 0 { n / 10 } else { n / rounds };
        for (k, lat) in out.iter_mut().enumerate() {
            if k == 0 {
                sample(
                    per,
                    lat,
                    || p.naive.select("worker"),
                    |chosen| {
                        if let Some(name) = chosen {
                            p.naive.adjust(&name, 1);
                        }
                        let done = &p.names[(next(&mut x) % AGENTS as u64) as usize];
                        p.naive.adjust(done, -1);
                    },
                );
                continue;
            }
            let strategy = if k == 1 { &mut least } else { &mut p2c };
            sample(
                per,
                lat,
                || {
                    p.registry.candidates_into(&ty, &mut buf);
                    buf.select(strategy).map(|a| a.slot)
                },
                |chosen| {
                    if let Some(s) = chosen {
                        let _ = p.registry.loads().update(s, 1, None);
                    }
                    let done = p.slots[(next(&mut x) % AGENTS as u64) as usize];
                    let _ = p.registry.loads().update(done, -1, None);
                },
            );
        }
        if round == 0 {
            out.iter_mut().for_each(Vec::clear);
        }
    }
    out
}

fn run_sched(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let n = if settings.samples < 10 {
        20_000
    } else {
        200_000
    };
    progress("sched_select_p99_ns");
    let [naive, least, p2c] = select_samples(n, 20);
    let (naive50, naive99) = p50_p99(naive);
    let (ll50, ll99) = p50_p99(least);
    let (p2c50, p2c99) = p50_p99(p2c);
    let peer = "Mutex<HashMap> scan";
    let mut out = vec![
        BenchResult::new("sched_select_p99_ns", ll99, "ns", Better::Lower)
            .with_targets(Some(1_000_000.0), Some(1_000.0))
            .with_peer(peer, naive99),
        BenchResult::new("sched_select_p50_ns", ll50, "ns", Better::Lower).with_peer(peer, naive50),
        BenchResult::new("sched_select_p2c_p99_ns", p2c99, "ns", Better::Lower)
            .with_targets(Some(1_000_000.0), Some(1_000.0))
            .with_peer(peer, naive99),
        BenchResult::new("sched_select_p2c_p50_ns", p2c50, "ns", Better::Lower)
            .with_peer(peer, naive50),
    ];
    out.extend(super::sched_sim::results(settings, progress));
    out.extend(super::sched_mem::results(settings, progress));
    out.extend(super::sched_rt::results(settings, progress));
    out
}

/// The scheduler suite.
pub fn sched_suite() -> Suite {
    Suite {
        name: "sched",
        about: "select_agent among 60 agents against a Mutex<HashMap> scan; policies vs round-robin (simulated); memory; the runtime end to end (tasks/s, starts, critical p99, kills)",
        steps: 3 + super::sched_rt::STEPS,
        run: run_sched,
    }
}
