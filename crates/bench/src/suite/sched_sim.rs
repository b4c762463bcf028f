//! Scheduling policies compared on a virtual clock (issue 12's `sched_p99_vs_round_robin`,
//! `sched_mean_depth`, `sched_balance`).
//!
//! A discrete-event simulation drives the real [`Scheduler`] the way a host does: it submits
//! tasks as they arrive, carries out the scheduler's actions (a `Deliver` goes into the
//! agent's inbox, a `Revoke` takes an un-started task out of it, a `Result` goes back to the
//! submitter), reports `started` when an agent picks a task from its inbox and `ack` when it
//! finishes it, beats every agent's heartbeat once a (virtual) second and ticks the scheduler
//! every 10 ms. Nothing waits on a real clock: time is the `now` of the next event, so a run is
//! deterministic for its seed and costs only the scheduler's own work.
//!
//! # The model
//!
//! * [`SimConfig::agents`] agents of one type, heterogeneous: agent `i`'s mean service time is
//!   `base_service_us × (1 + (slowest − 1) · i / (agents − 1))`, i.e. spread evenly from 1× to
//!   [`SimConfig::slowest`]× (default 1 ms to 4 ms).
//! * Each agent **serves one task at a time**, in the order its inbox received them (a
//!   single-threaded worker polling its inbox, as the Python and C agents are). It may *hold*
//!   up to `max_tasks` (default 5, the scheduler's default) leased tasks: one in service, the
//!   others waiting in its inbox (its backlog, which work stealing may take from). An agent
//!   whose `started` is answered `false` (that attempt is no longer leased to it: revoked or
//!   expired) drops the task without serving it.
//! * Arrivals are Poisson at [`SimConfig::load`] (default 90 %) of the pool's capacity
//!   `Σ 1 / mean service time`. Each task carries an exponential amount of work `w` (mean 1);
//!   on agent `i` it takes `w × mean_i`. The arrival times and amounts of work come from the
//!   seed alone ([`Workload`]), so every strategy sees the very same sequence.
//! * The scheduler runs with its default settings except the strategy (leases from the
//!   observed p95, heartbeats watched, work stealing on), over a ledger that counts its
//!   appends and keeps nothing: durability is not what is measured here.
//!
//! # What is measured
//!
//! Over the tasks after the first [`SimConfig::warmup`] (the pool starts empty) and over the
//! time from the first measured arrival to the last arrival:
//!
//! * **latency**: from `submit` to the `Result` the `ack` produces (queueing in the scheduler,
//!   waiting in the inbox and service included); its p50 and p99;
//! * **mean depth**: the time-averaged number of tasks an agent holds (leased: in service or
//!   in its backlog), averaged over the agents;
//! * **balance**: `1 − CV` of the agents' utilisations, where agent `i`'s utilisation is the
//!   fraction of the time it was serving (its own capacity used) and CV is the coefficient of
//!   variation (population standard deviation / mean). 100 % when every agent is busy the same
//!   fraction of its time, whatever its speed; it falls as some agents are saturated while
//!   others idle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use erlmcp_flow::queue::Priority;
use erlmcp_flow::sched::{
    Action, AgentId, AgentType, Attempt, Ledger, LedgerRecord, Liveness, Micros, Scheduler,
    SchedulerConfig, Strategy, TaskId, DEFAULT_MAX_TASKS,
};

use super::{BenchResult, Better, Settings};

/// The simulated pool and load.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Agents in the pool (default 12).
    pub agents: usize,
    /// Mean service time of the fastest agent, µs (default 1000).
    pub base_service_us: f64,
    /// The slowest agent's mean service time as a multiple of the fastest's (default 4).
    pub slowest: f64,
    /// Tasks an agent may hold at once (default [`DEFAULT_MAX_TASKS`]).
    pub max_tasks: u32,
    /// Arrival rate as a fraction of the pool's capacity (default 0.9).
    pub load: f64,
    /// Tasks submitted in all (default 100,000).
    pub tasks: usize,
    /// Leading tasks left out of the measurements (default a tenth of `tasks`).
    pub warmup: usize,
    /// Scheduler ticks every this many µs (default 10 ms).
    pub tick_us: Micros,
    /// Every agent beats its heartbeat every this many µs (default 1 s).
    pub heartbeat_us: Micros,
    /// Work stealing on (the scheduler's default) or off.
    pub work_stealing: bool,
    /// The seed of the arrivals and the amounts of work.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agents: 12,
            base_service_us: 1000.0,
            slowest: 4.0,
            max_tasks: DEFAULT_MAX_TASKS,
            load: 0.9,
            tasks: 100_000,
            warmup: 10_000,
            tick_us: 10_000,
            heartbeat_us: 1_000_000,
            work_stealing: true,
            seed: 1,
        }
    }
}

impl SimConfig {
    /// Agent `i`'s mean service time, µs.
    pub fn mean_service_us(&self, i: usize) -> f64 {
        let spread = if self.agents > 1 {
            (self.slowest - 1.0) * i as f64 / (self.agents - 1) as f64
        } else {
            0.0
        };
        self.base_service_us * (1.0 + spread)
    }

    /// The pool's capacity: tasks per µs when every agent serves without pause.
    pub fn capacity_per_us(&self) -> f64 {
        (0..self.agents)
            .map(|i| 1.0 / self.mean_service_us(i))
            .sum()
    }
}

/// The arrival sequence every strategy is run on: arrival times (µs) and amounts of work
/// (exponential, mean 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// When task `k` arrives, non-decreasing.
    pub arrivals: Vec<Micros>,
    /// Task `k`'s amount of work: it takes `work[k] × mean service time` on an agent.
    pub work: Vec<f64>,
}

/// splitmix64 (seeded, deterministic).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean 1.
    fn exp(&mut self) -> f64 {
        -self.unit().ln()
    }
}

impl Workload {
    /// Poisson arrivals at `load × capacity` and exponential work, from `cfg.seed`.
    pub fn generate(cfg: &SimConfig) -> Workload {
        let mut rng = Rng(cfg.seed);
        let mean_gap = 1.0 / (cfg.load * cfg.capacity_per_us());
        let mut t = 0.0;
        let mut arrivals = Vec::with_capacity(cfg.tasks);
        let mut work = Vec::with_capacity(cfg.tasks);
        for _ in 0..cfg.tasks {
            t += rng.exp() * mean_gap;
            arrivals.push(t.round() as Micros);
            work.push(rng.exp());
        }
        Workload { arrivals, work }
    }
}

/// A ledger that counts its appends and keeps nothing (the policy is measured, not the
/// durability; a kept log would grow without bound over a long run).
#[derive(Debug, Default)]
struct CountingLedger {
    appends: u64,
}

impl Ledger for CountingLedger {
    fn append(&mut self, _record: &LedgerRecord) -> erlmcp_flow::Result<()> {
        self.appends += 1;
        Ok(())
    }

    fn replay(&self) -> erlmcp_flow::Result<Vec<LedgerRecord>> {
        Ok(Vec::new())
    }
}

/// What one run gave.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOutcome {
    /// Median submit→result latency of the measured tasks, µs.
    pub p50_us: f64,
    /// 99th percentile of the same, µs.
    pub p99_us: f64,
    /// Time-averaged tasks held per agent (leased: in service or waiting in its inbox).
    pub mean_depth: f64,
    /// `1 − CV` of the agents' utilisations (see the module documentation), 0..=1.
    pub balance: f64,
    /// Each agent's utilisation over the measured time, 0..=1.
    pub utilisation: Vec<f64>,
    /// Tasks submitted (accepted by the scheduler).
    pub submitted: u64,
    /// `Result` actions received, per task id (index 0 unused): each must be 1.
    pub results_per_task: Vec<u32>,
    /// `DeadLetter` actions received.
    pub dead_letters: u64,
    /// Submissions the scheduler refused (back-pressure).
    pub refused: u64,
    /// Tasks stolen by idle agents (the scheduler's counter at the end).
    pub steals: u64,
    /// Results the scheduler counted as duplicates.
    pub duplicates: u64,
    /// Leases that expired.
    pub expired: u64,
    /// Agents the scheduler declared dead.
    pub agents_dead: u64,
    /// Tasks still queued or leased at the end (must be 0).
    pub left: usize,
    /// Ledger appends.
    pub ledger_appends: u64,
    /// Virtual time at the end, µs.
    pub end_us: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Task `k` of the workload arrives.
    Arrival(usize),
    /// Agent `agent` finishes the task it serves.
    Done {
        agent: usize,
        task: u64,
        attempt: Attempt,
    },
    /// The host ticks the scheduler.
    Tick,
    /// Every agent beats its heartbeat.
    Heartbeats,
}

#[derive(Debug, Default)]
struct SimAgent {
    /// Leased tasks not yet picked, in delivery order.
    inbox: VecDeque<(TaskId, Attempt)>,
    /// The task in service.
    serving: Option<(TaskId, Attempt)>,
    /// Time spent serving within the measured window, µs.
    busy_us: f64,
}

struct Host<'a> {
    cfg: &'a SimConfig,
    work: &'a Workload,
    sched: Scheduler<CountingLedger>,
    ids: Vec<AgentId>,
    agents: Vec<SimAgent>,
    means: Vec<f64>,
    events: BinaryHeap<Reverse<(Micros, u64, Ev)>>,
    seq: u64,
    /// Workload index of each task id (index 0 unused).
    task_index: Vec<usize>,
    results_per_task: Vec<u32>,
    latencies: Vec<f64>,
    results: u64,
    dead_letters: u64,
    refused: u64,
    /// The measured window and the integrals over it.
    window: (Micros, Micros),
    last_t: Micros,
    held_integral: f64,
}

impl Host<'_> {
    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn agent_ix(&self, id: &AgentId) -> usize {
        // Ids are `a<index>`.
        id.as_str()[1..].parse().expect("a simulated agent's id")
    }

    /// Integrates the held tasks and busy agents from the last event to `t`, within the window.
    fn advance(&mut self, t: Micros) {
        let (w0, w1) = self.window;
        let (a, b) = (self.last_t.max(w0), t.min(w1));
        if b > a {
            let dt = (b - a) as f64;
            self.held_integral += self.sched.stats().leased as f64 * dt;
            for ag in &mut self.agents {
                if ag.serving.is_some() {
                    ag.busy_us += dt;
                }
            }
        }
        self.last_t = t;
    }

    /// Carries out the scheduler's pending actions, then lets idle agents pick their next task.
    fn carry_out(&mut self, now: Micros) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Deliver {
                    agent,
                    task,
                    attempt,
                    ..
                } => {
                    let i = self.agent_ix(&agent);
                    self.agents[i].inbox.push_back((task, attempt));
                }
                Action::Revoke {
                    agent,
                    task,
                    attempt,
                } => {
                    // Not started: out of the inbox. In service: it runs on, and its result
                    // will be counted as a duplicate.
                    let i = self.agent_ix(&agent);
                    self.agents[i].inbox.retain(|&x| x != (task, attempt));
                }
                Action::Result { task, .. } => {
                    let id = task.0 as usize;
                    self.results_per_task[id] += 1;
                    self.results += 1;
                    let k = self.task_index[id];
                    if k >= self.cfg.warmup {
                        self.latencies
                            .push(now.saturating_sub(self.work.arrivals[k]) as f64);
                    }
                }
                Action::DeadLetter { .. } => self.dead_letters += 1,
            }
        }
        for i in 0..self.agents.len() {
            self.pick(i, now);
        }
    }

    /// An idle agent picks the next task of its inbox: `started`, then service.
    fn pick(&mut self, i: usize, now: Micros) {
        while self.agents[i].serving.is_none() {
            let Some((task, attempt)) = self.agents[i].inbox.pop_front() else {
                return;
            };
            let ours = self
                .sched
                .started(&self.ids[i], task, attempt, now)
                .expect("a registered agent");
            if !ours {
                continue;
            }
            let k = self.task_index[task.0 as usize];
            let service = (self.work.work[k] * self.means[i]).round().max(1.0) as Micros;
            self.agents[i].serving = Some((task, attempt));
            self.push(
                now + service,
                Ev::Done {
                    agent: i,
                    task: task.0,
                    attempt,
                },
            );
        }
    }

    fn finished(&self) -> bool {
        self.results + self.dead_letters + self.refused == self.cfg.tasks as u64
    }
}

/// Runs the workload through a scheduler with `strategy` (see the module documentation).
pub fn simulate(cfg: &SimConfig, work: &Workload, strategy: Strategy) -> SimOutcome {
    assert!(cfg.agents >= 1 && cfg.agents < 1000 && cfg.warmup < cfg.tasks);
    assert_eq!(work.arrivals.len(), cfg.tasks);
    let config = SchedulerConfig {
        strategy,
        work_stealing: cfg.work_stealing,
        ..SchedulerConfig::default()
    };
    let sched = Scheduler::new(config, CountingLedger::default()).expect("valid settings");
    let window = (
        work.arrivals[cfg.warmup],
        *work.arrivals.last().expect("tasks"),
    );
    let mut h = Host {
        cfg,
        work,
        sched,
        ids: (0..cfg.agents)
            .map(|i| AgentId::new(&format!("a{i}")).expect("id"))
            .collect(),
        agents: (0..cfg.agents).map(|_| SimAgent::default()).collect(),
        means: (0..cfg.agents).map(|i| cfg.mean_service_us(i)).collect(),
        events: BinaryHeap::new(),
        seq: 0,
        task_index: vec![usize::MAX; cfg.tasks + 1],
        results_per_task: vec![0; cfg.tasks + 1],
        latencies: Vec::with_capacity(cfg.tasks - cfg.warmup),
        results: 0,
        dead_letters: 0,
        refused: 0,
        window,
        last_t: 0,
        held_integral: 0.0,
    };
    let ty = AgentType::new("worker").expect("type");
    for i in 0..cfg.agents {
        h.sched
            .register_agent(
                h.ids[i].clone(),
                ty.clone(),
                cfg.max_tasks,
                Liveness::Token(i as u64),
                0,
            )
            .expect("register");
    }
    h.push(work.arrivals[0], Ev::Arrival(0));
    h.push(cfg.tick_us, Ev::Tick);
    h.push(cfg.heartbeat_us, Ev::Heartbeats);
    let payload = [0u8; 16];
    while let Some(Reverse((now, _, ev))) = h.events.pop() {
        h.advance(now);
        match ev {
            Ev::Arrival(k) => {
                let mut p = payload.to_vec();
                p[..8].copy_from_slice(&(k as u64).to_le_bytes());
                match h.sched.submit(&ty, Priority::Normal, p, now) {
                    Ok(id) => {
                        let id = id.0 as usize;
                        assert!(id < h.task_index.len(), "task ids are dense");
                        h.task_index[id] = k;
                    }
                    Err(_) => h.refused += 1,
                }
                if k + 1 < cfg.tasks {
                    h.push(work.arrivals[k + 1], Ev::Arrival(k + 1));
                }
            }
            Ev::Done {
                agent,
                task,
                attempt,
            } => {
                h.agents[agent].serving = None;
                let mut result = vec![0u8; 8];
                result.copy_from_slice(&task.to_le_bytes());
                h.sched
                    .ack(&h.ids[agent], TaskId(task), attempt, result, now)
                    .expect("ack");
            }
            Ev::Tick => {
                h.sched.tick(now);
                if !h.finished() {
                    h.push(now + cfg.tick_us, Ev::Tick);
                }
            }
            Ev::Heartbeats => {
                for id in &h.ids {
                    // An agent declared dead is not re-registered here: the scheduler's
                    // counters report it, and the outcome shows it.
                    let _ = h.sched.heartbeat(id, now);
                }
                if !h.finished() {
                    h.push(now + cfg.heartbeat_us, Ev::Heartbeats);
                }
            }
        }
        h.carry_out(now);
        if h.finished() {
            break;
        }
    }
    let span = (window.1 - window.0).max(1) as f64;
    let utilisation: Vec<f64> = h.agents.iter().map(|a| a.busy_us / span).collect();
    let mean = utilisation.iter().sum::<f64>() / utilisation.len() as f64;
    let var = utilisation
        .iter()
        .map(|u| (u - mean) * (u - mean))
        .sum::<f64>()
        / utilisation.len() as f64;
    let balance = if mean > 0.0 {
        1.0 - var.sqrt() / mean
    } else {
        0.0
    };
    let mut lat = std::mem::take(&mut h.latencies);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let stats = h.sched.stats();
    SimOutcome {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        mean_depth: h.held_integral / span / cfg.agents as f64,
        balance,
        utilisation,
        submitted: cfg.tasks as u64 - h.refused,
        results_per_task: std::mem::take(&mut h.results_per_task),
        dead_letters: h.dead_letters,
        refused: h.refused,
        steals: stats.steals,
        duplicates: stats.duplicates,
        expired: stats.expired,
        agents_dead: stats.agents_dead,
        left: stats.queued + stats.leased,
        ledger_appends: h.sched.ledger().appends,
        end_us: h.last_t,
    }
}

/// The three strategies compared, in report order: least loaded (the default), power of two
/// choices, round-robin (the peer).
pub fn strategies(seed: u64) -> [(&'static str, Strategy); 3] {
    [
        ("least-loaded", Strategy::LeastLoaded),
        ("power-of-two", Strategy::power_of_two(seed ^ 0x5eed)),
        ("round-robin", Strategy::round_robin()),
    ]
}

/// Seeds of a full run (`--quick`: the first one, on a shorter workload).
pub const SEEDS: [u64; 3] = [1, 2, 3];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over the seeds of one strategy's p99 (ms), p50 (ms), mean depth, balance (%) and
/// p99 / round-robin's p99 (same seed).
type Medians = [f64; 5];

/// Runs every strategy on the seeds' workloads; medians per strategy, in [`strategies`]
/// order.
fn run_all(seeds: &[u64], tasks: usize, work_stealing: bool) -> Vec<Medians> {
    let mut per: [[Vec<f64>; 5]; 3] = Default::default();
    for &seed in seeds {
        let cfg = SimConfig {
            tasks,
            warmup: tasks / 10,
            seed,
            work_stealing,
            ..SimConfig::default()
        };
        let work = Workload::generate(&cfg);
        let outs: Vec<SimOutcome> = strategies(seed)
            .into_iter()
            .map(|(_, s)| simulate(&cfg, &work, s))
            .collect();
        let rr_p99 = outs[2].p99_us;
        for (k, o) in outs.iter().enumerate() {
            assert!(
                o.left == 0 && o.dead_letters == 0 && o.refused == 0,
                "the simulation lost or refused tasks: {o:?}"
            );
            per[k][0].push(o.p99_us / 1000.0);
            per[k][1].push(o.p50_us / 1000.0);
            per[k][2].push(o.mean_depth);
            per[k][3].push(o.balance * 100.0);
            per[k][4].push(o.p99_us / rr_p99);
        }
    }
    per.into_iter().map(|s| s.map(median)).collect()
}

/// The results of one mode (`suffix` "" with work stealing, the scheduler's default;
/// "_nosteal" without).
fn mode_results(m: &[Medians], suffix: &str) -> Vec<BenchResult> {
    let (ll, p2c, rr) = (m[0], m[1], m[2]);
    let peer = "round-robin";
    let name = |base: &str| format!("{base}{suffix}");
    vec![
        // The original claim: −60 % against round-robin, i.e. 0.4 of its p99.
        BenchResult::new(name("sched_p99_vs_round_robin"), ll[4], "x", Better::Lower)
            .with_targets(Some(0.4), None),
        BenchResult::new(name("sched_p99_ms"), ll[0], "ms", Better::Lower).with_peer(peer, rr[0]),
        BenchResult::new(name("sched_p50_ms"), ll[1], "ms", Better::Lower).with_peer(peer, rr[1]),
        BenchResult::new(name("sched_mean_depth"), ll[2], "tasks", Better::Lower)
            .with_targets(Some(1.2), None)
            .with_peer(peer, rr[2]),
        BenchResult::new(name("sched_balance"), ll[3], "%", Better::Higher)
            .with_targets(Some(95.0), None)
            .with_peer(peer, rr[3]),
        BenchResult::new(
            name("sched_p2c_p99_vs_round_robin"),
            p2c[4],
            "x",
            Better::Lower,
        )
        .with_targets(Some(0.4), None),
        BenchResult::new(name("sched_p2c_p99_ms"), p2c[0], "ms", Better::Lower)
            .with_peer(peer, rr[0]),
        BenchResult::new(name("sched_p2c_mean_depth"), p2c[2], "tasks", Better::Lower)
            .with_peer(peer, rr[2]),
        BenchResult::new(name("sched_p2c_balance"), p2c[3], "%", Better::Higher)
            .with_peer(peer, rr[3]),
    ]
}

/// The suite's part: every strategy on the same workloads (three seeds of 100,000 tasks; one
/// of 20,000 with `--quick`), with work stealing (the scheduler's default) and without (the
/// selection policies alone, the original design's comparison); medians over the seeds.
pub fn results(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    progress("sched_p99_vs_round_robin");
    let quick = settings.samples < Settings::full().samples;
    let (seeds, tasks) = if quick {
        (&SEEDS[..1], 20_000)
    } else {
        (&SEEDS[..], 100_000)
    };
    let mut out = mode_results(&run_all(seeds, tasks, true), "");
    out.extend(mode_results(&run_all(seeds, tasks, false), "_nosteal"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            agents: 6,
            tasks: 3_000,
            warmup: 300,
            seed,
            ..SimConfig::default()
        }
    }

    /// Every task ends exactly once, with a result; nothing is left, refused or
    /// dead-lettered; the measurements are within their ranges; a run is deterministic.
    #[test]
    fn every_task_completes_once_under_every_strategy() {
        for seed in [1, 2] {
            let cfg = small(seed);
            let work = Workload::generate(&cfg);
            assert_eq!(work, Workload::generate(&cfg), "the workload is seeded");
            for (name, strategy) in strategies(seed) {
                let o = simulate(&cfg, &work, strategy.clone());
                assert_eq!(o.refused, 0, "{name}");
                assert_eq!(o.dead_letters, 0, "{name}");
                assert_eq!(o.left, 0, "{name}: tasks left");
                assert_eq!(o.submitted, cfg.tasks as u64, "{name}");
                assert_eq!(o.agents_dead, 0, "{name}: heartbeats are fed");
                let wrong: Vec<_> = o
                    .results_per_task
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|&(_, &n)| n != 1)
                    .collect();
                assert!(wrong.is_empty(), "{name}: results per task {wrong:?}");
                // Accepted + leased + completed at least, per task.
                assert!(o.ledger_appends >= 3 * cfg.tasks as u64, "{name}");
                assert!(o.p50_us > 0.0 && o.p50_us <= o.p99_us, "{name}: {o:?}");
                assert!(
                    o.mean_depth > 0.0 && o.mean_depth <= f64::from(cfg.max_tasks),
                    "{name}: depth {}",
                    o.mean_depth
                );
                assert!(o.balance <= 1.0, "{name}");
                for u in &o.utilisation {
                    assert!((0.0..=1.0 + 1e-9).contains(u), "{name}: {u}");
                }
                // The pool works off the offered load: mean utilisation near 90 %.
                let mean = o.utilisation.iter().sum::<f64>() / o.utilisation.len() as f64;
                assert!((0.75..=1.0).contains(&mean), "{name}: utilisation {mean}");
                assert_eq!(o, simulate(&cfg, &work, strategy), "{name}: deterministic");
            }
        }
    }

    #[test]
    fn service_times_spread_from_1x_to_the_slowest() {
        let cfg = SimConfig::default();
        assert_eq!(cfg.mean_service_us(0), 1000.0);
        assert_eq!(cfg.mean_service_us(cfg.agents - 1), 4000.0);
        let w = Workload::generate(&SimConfig {
            tasks: 50_000,
            warmup: 0,
            ..cfg.clone()
        });
        // The arrival rate is 90 % of capacity (within sampling error).
        let rate = w.arrivals.len() as f64 / *w.arrivals.last().unwrap() as f64;
        let want = 0.9 * cfg.capacity_per_us();
        assert!((rate / want - 1.0).abs() < 0.03, "{rate} vs {want}");
        let mean_work = w.work.iter().sum::<f64>() / w.work.len() as f64;
        assert!((mean_work - 1.0).abs() < 0.03, "{mean_work}");
    }
}
