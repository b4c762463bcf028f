//! `erlmcp-flow agents worker|chaos`: agent processes of a scheduler directory, and the
//! original design's reliability test for real — thousands of tasks over a pool of agent
//! processes, agents and the scheduler SIGKILLed during the run, then every task checked to
//! have exactly one result in the ledger (the result store).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use erlmcp_flow::queue::Priority;
use erlmcp_flow::sched::runtime::{LedgerChoice, LEDGER_NAME};
use erlmcp_flow::sched::{
    Agent, AgentId, AgentOptions, AgentType, Dispatcher, Ledger, LedgerRecord, Outcome,
    RuntimeOptions, SchedulerConfig, ShmLedger, ShmLedgerOptions, TaskId,
};
use erlmcp_flow::shm::SegmentOptions;
use erlmcp_flow::ErrorKind;

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// The agents of a scheduler directory, their loads and leases, the queued tasks and
    /// the dead letters (no participant attaches, nothing is written)
    Show(super::agents_show::ShowArgs),
    /// Run one agent process of a scheduler directory: answers each task with
    /// `answer(payload)` after WORK_US microseconds of work
    Worker(WorkerArgs),
    /// The original reliability test: TASKS tasks over AGENTS agent processes, KILLS agents
    /// and the scheduler SIGKILLed during the run; exits non-zero unless every task has
    /// exactly one, correct result
    Chaos(AgentsChaosArgs),
    /// The scheduler process of `agents chaos` (submits tasks 1..=TASKS, then serves until
    /// all are done)
    #[command(hide = true)]
    ChaosScheduler(ChaosSchedulerArgs),
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The scheduler directory
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The agent's id
    #[arg(long)]
    id: String,
    /// The agent's type
    #[arg(long = "type", value_name = "TYPE", default_value = "worker")]
    agent_type: String,
    /// Tasks held at once
    #[arg(long, default_value_t = 5)]
    max_tasks: u32,
    /// Microseconds of work per task (a busy loop: CPU work, as an agent does)
    #[arg(long, value_name = "US", default_value_t = 0)]
    work_us: u64,
    /// Exit after this many tasks (0 = until killed)
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Wait up to this many milliseconds for the scheduler directory to appear
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    connect_ms: u64,
}

#[derive(Args)]
pub struct AgentsChaosArgs {
    /// Tasks to run
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Agent processes in the pool (kept at this size: each killed one is replaced)
    #[arg(long, default_value_t = 20)]
    agents: u32,
    /// Agents SIGKILLed during the run
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Times the scheduler process is SIGKILLed and restarted during the run
    #[arg(long, default_value_t = 1)]
    scheduler_kills: u32,
    /// Microseconds of work per task
    #[arg(long, value_name = "US", default_value_t = 300)]
    work_us: u64,
    /// Seed of the campaign's choices
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON line with the counts at the end
    #[arg(long)]
    json: bool,
    /// Parent of the campaign's directory
    #[arg(long, value_name = "DIR", default_value = erlmcp_flow::shm::DEFAULT_DIR)]
    dir: PathBuf,
}

#[derive(Args)]
pub struct ChaosSchedulerArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    tasks: u64,
}

/// What every agent answers: a function of the payload the checker recomputes.
pub fn answer(payload: &[u8]) -> Vec<u8> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in payload {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut v = payload.to_vec();
    v.extend_from_slice(&h.to_le_bytes());
    v
}

const CHAOS_TYPE: &str = "chaos";
/// The chaos ledger is large enough never to compact during a run: the checker reads every
/// `Completed` record of the run from it.
const CHAOS_LEDGER: usize = 256 << 20;

pub fn run(cmd: &AgentsCmd) -> Result<ExitCode, String> {
    match cmd {
        AgentsCmd::Show(a) => super::agents_show::run(a),
        AgentsCmd::Worker(a) => worker(a),
        AgentsCmd::Chaos(a) => chaos(a),
        AgentsCmd::ChaosScheduler(a) => chaos_scheduler(a),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn worker(a: &WorkerArgs) -> Result<ExitCode, String> {
    let opts = AgentOptions {
        max_tasks: a.max_tasks,
        ..AgentOptions::new(
            &a.dir,
            AgentId::new(&a.id).map_err(err)?,
            AgentType::new(&a.agent_type).map_err(err)?,
        )
    };
    let deadline = Instant::now() + Duration::from_millis(a.connect_ms);
    let mut agent = loop {
        match Agent::connect(opts.clone()) {
            Ok(agent) => break agent,
            // The scheduler is not there yet, or a dead incarnation's slot is being reaped.
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Busy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(format!("agent {}: {e}", a.id)),
        }
    };
    let mut done = 0u64;
    while a.count == 0 || done < a.count {
        let Some(t) = agent.recv(Duration::from_millis(50)).map_err(err)? else {
            continue;
        };
        let until = Instant::now() + Duration::from_micros(a.work_us);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        match agent.complete(&t, &answer(&t.payload)) {
            // The scheduler is away longer than the report timeout: its successor delivers
            // the task again when the lease is void; keep serving.
            Err(e) if e.kind() == ErrorKind::Timeout => eprintln!("agent {}: {e}", a.id),
            other => other.map_err(err)?,
        }
        done += 1;
    }
    agent.leave().map_err(err)?;
    Ok(ExitCode::SUCCESS)
}

fn chaos_runtime(dir: &Path) -> RuntimeOptions {
    RuntimeOptions {
        config: SchedulerConfig {
            // Kills fail attempts; a task must outlive many of them rather than dead-letter.
            max_attempts: 1_000,
            // Deaths are seen by pid; hung agents by their lease.
            heartbeat_timeout: None,
            max_lease: 5_000_000,
            default_lease: 2_000_000,
            ..SchedulerConfig::default()
        },
        ledger: LedgerChoice::Shm {
            capacity: CHAOS_LEDGER,
        },
        ..RuntimeOptions::in_dir(dir)
    }
}

/// The scheduler process: submits the tasks not yet submitted (a restarted one continues after
/// the last id in the ledger), then serves until every task ended; prints `progress N` lines.
fn chaos_scheduler(a: &ChaosSchedulerArgs) -> Result<ExitCode, String> {
    let mut d = Dispatcher::open(&chaos_runtime(&a.dir)).map_err(err)?;
    let ty = AgentType::new(CHAOS_TYPE).map_err(err)?;
    let mut last_print = Instant::now();
    loop {
        let next = d.scheduler().last_task_id().0 + 1;
        if next <= a.tasks {
            match d.submit(&ty, Priority::Normal, next.to_le_bytes().to_vec()) {
                Ok(id) if id.0 == next => {}
                Ok(id) => return Err(format!("task {next} got id {}", id.0)),
                Err(e) if e.kind() == ErrorKind::Full => {
                    d.step(Duration::from_millis(1)).map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            }
            if next % 64 != 0 {
                continue;
            }
        }
        d.step(Duration::from_millis(1)).map_err(err)?;
        while let Some((id, o)) = d.poll_outcome() {
            match o {
                Outcome::Done(r) if r == answer(&id.0.to_le_bytes()) => {}
                Outcome::Done(_) => return Err(format!("task {}: wrong result", id.0)),
                Outcome::DeadLetter(why) => return Err(format!("task {}: dead: {why}", id.0)),
            }
        }
        let s = d.stats();
        if last_print.elapsed() >= Duration::from_millis(10) || s.sched.completed == a.tasks {
            last_print = Instant::now();
            println!(
                "progress {} redeliveries {} duplicates {} deaths {}",
                s.sched.completed, s.sched.redeliveries, s.sched.duplicates, s.deaths
            );
        }
        if s.sched.completed == a.tasks && next > a.tasks {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Counters of the scheduler process's last `progress` line.
#[derive(Default)]
struct Progress {
    completed: AtomicU64,
    redeliveries: AtomicU64,
    duplicates: AtomicU64,
    deaths: AtomicU64,
}

struct Campaign {
    exe: PathBuf,
    dir: PathBuf,
    a_work_us: u64,
    progress: Arc<Progress>,
    /// Counters of the schedulers killed before (their progress lines restart at the
    /// recovered count).
    carried: [u64; 3],
}

impl Campaign {
    fn scheduler(&mut self, tasks: u64) -> Result<Proc, String> {
        let mut child = Command::new(&self.exe)
            .args(["agents", "chaos-scheduler", "--tasks", &tasks.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let p = self.progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let w: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [c, r, d, k] = w[..] {
                    p.completed.store(c, Ordering::Release);
                    p.redeliveries.store(r, Ordering::Release);
                    p.duplicates.store(d, Ordering::Release);
                    p.deaths.store(k, Ordering::Release);
                }
            }
        });
        Ok(Proc(child))
    }

    fn agent(&self, id: &str) -> Result<Proc, String> {
        let child = Command::new(&self.exe)
            .args(["agents", "worker", "--type", CHAOS_TYPE, "--id", id])
            .args(["--work-us", &self.a_work_us.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start agent {id}: {e}"))?;
        Ok(Proc(child))
    }

    fn counters(&self) -> [u64; 3] {
        let p = &self.progress;
        [
            p.redeliveries.load(Ordering::Acquire),
            p.duplicates.load(Ordering::Acquire),
            p.deaths.load(Ordering::Acquire),
        ]
    }
}

fn chaos(a: &AgentsChaosArgs) -> Result<ExitCode, String> {
    if a.tasks == 0 || a.agents == 0 {
        return Err("--tasks and --agents must be at least 1".into());
    }
    let dir = a
        .dir
        .join(format!("emf-agents-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = chaos_in(&dir, a);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn chaos_in(dir: &Path, a: &AgentsChaosArgs) -> Result<ExitCode, String> {
    let started = Instant::now();
    let mut c = Campaign {
        exe: std::env::current_exe().map_err(err)?,
        dir: dir.to_owned(),
        a_work_us: a.work_us,
        progress: Arc::new(Progress::default()),
        carried: [0; 3],
    };
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut sched = c.scheduler(a.tasks)?;
    let mut agents: Vec<(String, Proc)> = (0..a.agents)
        .map(|i| {
            let id = format!("a{i}");
            c.agent(&id).map(|p| (id, p))
        })
        .collect::<Result<_, _>>()?;
    // Kill points spread over the run: agent kills at k/(kills+1) of the tasks, scheduler
    // kills at (j+0.5)/(scheduler_kills+1).
    let mut plan: Vec<(u64, bool)> = (1..=u64::from(a.kills))
        .map(|k| (a.tasks * k / (u64::from(a.kills) + 1), false))
        .chain((0..u64::from(a.scheduler_kills)).map(|j| {
            (
                a.tasks * (2 * j + 1) / (2 * (u64::from(a.scheduler_kills) + 1)),
                true,
            )
        }))
        .collect();
    plan.sort();
    let (mut agent_kills, mut sched_kills, mut new_ids) = (0u32, 0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut plan = plan.into_iter().peekable();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "not done after 10 minutes: {} of {} completed",
                c.progress.completed.load(Ordering::Acquire),
                a.tasks
            ));
        }
        if let Some(status) = sched.0.try_wait().map_err(err)? {
            if !status.success() {
                return Err(format!("the scheduler failed: {status}"));
            }
            break;
        }
        // An agent that exits by itself (an error) is a failure of the campaign, not a kill.
        for (id, p) in agents.iter_mut() {
            if let Some(status) = p.0.try_wait().map_err(err)? {
                return Err(format!("agent {id} exited by itself: {status}"));
            }
        }
        let done = c.progress.completed.load(Ordering::Acquire);
        if let Some(&(at, is_sched)) = plan.peek() {
            if done >= at {
                plan.next();
                if is_sched {
                    let before = c.counters();
                    sched.0.kill().map_err(err)?;
                    sched.0.wait().map_err(err)?;
                    for (k, v) in before.iter().enumerate() {
                        c.carried[k] += v;
                    }
                    c.progress.completed.store(0, Ordering::Release);
                    sched = c.scheduler(a.tasks)?;
                    sched_kills += 1;
                } else {
                    let i = rng.below(agents.len() as u64) as usize;
                    let (id, mut p) = agents.swap_remove(i);
                    p.0.kill().map_err(err)?;
                    // Half the replacements reuse the id (a stale inbox and load slot to
                    // take over), half come with a new one.
                    let id = if rng.below(2) == 0 {
                        id
                    } else {
                        new_ids += 1;
                        format!("r{new_ids}")
                    };
                    // Leave the killed one a zombie for a moment half the time.
                    if rng.below(2) == 0 {
                        p.0.wait().map_err(err)?;
                    }
                    agents.push((id.clone(), c.agent(&id)?));
                    drop(p);
                    agent_kills += 1;
                }
                continue;
            }
        }
        // Pacing of the campaign's checks (not synchronisation: progress is read from the
        // scheduler's output whenever it comes).
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let last = c.counters();
    drop(agents);
    drop(sched);
    // The result store: every task has exactly one Completed record, with the right result.
    let ledger = ShmLedger::open(
        LEDGER_NAME,
        &ShmLedgerOptions {
            capacity: CHAOS_LEDGER,
            segment: SegmentOptions {
                dir: dir.to_owned(),
                ..Default::default()
            },
        },
    )
    .map_err(err)?;
    let mut results = vec![0u32; a.tasks as usize + 1];
    let mut accepted = vec![0u32; a.tasks as usize + 1];
    let mut wrong = 0u64;
    let mut other = 0u64;
    for r in ledger.replay().map_err(err)? {
        match r {
            LedgerRecord::Completed {
                id: TaskId(i),
                result,
            } if i >= 1 && i <= a.tasks => {
                results[i as usize] += 1;
                if result != answer(&i.to_le_bytes()) {
                    wrong += 1;
                }
            }
            LedgerRecord::Accepted {
                id: TaskId(i),
                payload,
                ..
            } if i >= 1 && i <= a.tasks => {
                accepted[i as usize] += 1;
                if payload != i.to_le_bytes() {
                    wrong += 1;
                }
            }
            // A record of a task that was never submitted.
            LedgerRecord::Completed { .. } | LedgerRecord::Accepted { .. } => wrong += 1,
            LedgerRecord::DeadLettered { .. } => other += 1,
            _ => {}
        }
    }
    // The ledger never compacts in a campaign (CHAOS_LEDGER): each task was accepted once.
    wrong += accepted[1..].iter().filter(|&&n| n != 1).count() as u64;
    let lost = results[1..].iter().filter(|&&n| n == 0).count();
    let duplicated = results[1..].iter().filter(|&&n| n > 1).count();
    let redeliveries = c.carried[0] + last[0];
    let duplicates = c.carried[1] + last[1];
    let deaths = c.carried[2] + last[2];
    println!(
        "agents chaos: {} tasks over {} agent processes in {:.1} s: {} agents and {} schedulers \
         SIGKILLed; lost {lost}, duplicated effects {duplicated}, wrong results {wrong}, dead \
         letters {other}; {redeliveries} redeliveries, {duplicates} late results ignored, \
         {deaths} deaths seen",
        a.tasks,
        a.agents,
        elapsed.as_secs_f64(),
        agent_kills,
        sched_kills,
    );
    if a.json {
        println!(
            "{{\"tasks\":{},\"agents\":{},\"agent_kills\":{agent_kills},\"scheduler_kills\":\
             {sched_kills},\"lost\":{lost},\"duplicated\":{duplicated},\"wrong\":{wrong},\
             \"dead_letters\":{other},\"redeliveries\":{redeliveries},\"seconds\":{:.3}}}",
            a.tasks,
            a.agents,
            elapsed.as_secs_f64()
        );
    }
    if lost + duplicated > 0 || wrong + other > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
