//! `erlmcp-flow agents show`: a scheduler directory read from outside — the agents of the
//! load table (pid, alive?, current tasks, capacity, latency, heartbeat age, inbox), the
//! leases by agent, the queued tasks by type and the dead letters of the ledger.
//!
//! Nothing attaches and nothing is written: the load table is read with
//! [`LoadTable::inspect`] and the ledger with [`ShmLedger::inspect`] (a consistent prefix of
//! a live dispatcher's appends), folded by [`LedgerStatus::from_records`]. A ledger that was
//! compacted holds only the tasks not yet ended, so `completed` and the dead letters count
//! those since the last compaction. A dispatcher whose ledger is in memory or in a file
//! (`LedgerChoice::Memory`/`File`) has no ledger segment: only the agents are shown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use erlmcp_flow::sched::ledger::{LedgerStatus, ShmLedger};
use erlmcp_flow::sched::runtime::{now_micros, LEDGER_NAME, LOADS_NAME};
use erlmcp_flow::sched::{AgentId, Liveness, LoadTable};
use erlmcp_flow::shm::{process_alive, SegmentOptions};
use erlmcp_flow::ErrorKind;

/// `agents show`'s arguments.
#[derive(Args)]
pub struct ShowArgs {
    /// The scheduler directory
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/emf-sched")]
    dir: PathBuf,
    /// Print one JSON object instead of tables
    #[arg(long)]
    json: bool,
}

/// One agent of the load table.
struct AgentRow {
    id: AgentId,
    /// `Some(pid)` for an agent process; `None` for a host token.
    pid: Option<u32>,
    /// `None` when the host judges liveness itself (a token).
    alive: Option<bool>,
    tasks: u32,
    capacity: u32,
    latency_us: u64,
    /// µs since the last heartbeat (0 when the beat is in the future of this clock).
    heartbeat_age_us: u64,
    inbox: bool,
}

/// What the directory shows.
struct Shown {
    dir: PathBuf,
    now: u64,
    agents: Vec<AgentRow>,
    /// Inboxes of agents that hold no load slot (gone agents whose inbox stays until the
    /// dispatcher notices).
    orphan_inboxes: Vec<String>,
    /// `None`: no ledger segment in the directory.
    ledger: Option<LedgerStatus>,
}

fn gather(dir: &Path) -> Result<Shown, String> {
    let opts = SegmentOptions {
        dir: dir.to_owned(),
        ..Default::default()
    };
    let now = now_micros();
    let loads = match LoadTable::inspect(LOADS_NAME, &opts) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(format!("load table: {e}")),
    };
    let ledger = match ShmLedger::inspect(LEDGER_NAME, &opts) {
        Ok(r) => Some(LedgerStatus::from_records(&r)),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(format!("ledger: {e}")),
    };
    if loads.is_none() && ledger.is_none() {
        return Err(format!(
            "no scheduler in {} (neither {LOADS_NAME} nor the ledger {LEDGER_NAME})",
            dir.display()
        ));
    }
    let mut inboxes: Vec<String> = erlmcp_flow::shm::list(dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|n| n.strip_prefix("inbox.").map(str::to_owned))
        .collect();
    let mut agents = Vec::new();
    for (id, l) in loads.unwrap_or_default() {
        let (pid, alive) = match l.liveness {
            Liveness::Process { pid, start_time } => {
                (Some(pid), Some(process_alive(pid, start_time)))
            }
            Liveness::Token(_) => (None, None),
        };
        let inbox = match inboxes.iter().position(|n| n == id.as_str()) {
            Some(i) => {
                inboxes.swap_remove(i);
                true
            }
            None => false,
        };
        agents.push(AgentRow {
            pid,
            alive,
            tasks: l.candidate.current_tasks,
            capacity: l.candidate.max_tasks,
            latency_us: l.candidate.latency_us,
            heartbeat_age_us: now.saturating_sub(l.heartbeat),
            inbox,
            id,
        });
    }
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    inboxes.sort();
    Ok(Shown {
        dir: dir.to_owned(),
        now,
        agents,
        orphan_inboxes: inboxes,
        ledger,
    })
}

/// Runs `agents show`.
pub fn run(a: &ShowArgs) -> Result<ExitCode, String> {
    let shown = gather(&a.dir)?;
    let out = if a.json { json(&shown) } else { text(&shown) };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// A deadline relative to `now`, in ms (negative: expired).
fn due_ms(deadline: u64, now: u64) -> String {
    if deadline >= now {
        ms(deadline - now)
    } else {
        format!("-{}", ms(now - deadline))
    }
}

fn text(s: &Shown) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "scheduler directory {}", s.dir.display());
    let _ = writeln!(o, "\nagents: {}", s.agents.len());
    if !s.agents.is_empty() {
        let w = s
            .agents
            .iter()
            .map(|a| a.id.as_str().len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            o,
            "  {:<w$}  {:>8}  {:>5}  {:>5}  {:>8}  {:>11}  {:>16}  {:>5}",
            "AGENT", "PID", "ALIVE", "TASKS", "CAPACITY", "LATENCY_MS", "HEARTBEAT_AGE_MS", "INBOX"
        );
        for a in &s.agents {
            let pid = a.pid.map_or("token".to_owned(), |p| p.to_string());
            let alive = match a.alive {
                Some(true) => "yes",
                Some(false) => "no",
                None => "host",
            };
            let _ = writeln!(
                o,
                "  {:<w$}  {:>8}  {:>5}  {:>5}  {:>8}  {:>11}  {:>16}  {:>5}",
                a.id.as_str(),
                pid,
                alive,
                a.tasks,
                a.capacity,
                ms(a.latency_us),
                ms(a.heartbeat_age_us),
                if a.inbox { "yes" } else { "no" }
            );
        }
    }
    if !s.orphan_inboxes.is_empty() {
        let _ = writeln!(
            o,
            "  inboxes without a load slot: {}",
            s.orphan_inboxes.join(" ")
        );
    }
    let Some(l) = &s.ledger else {
        let _ = writeln!(
            o,
            "\nledger: no {LEDGER_NAME} segment (the dispatcher keeps it in memory or a file)"
        );
        return o;
    };
    let _ = writeln!(
        o,
        "\nledger: {} records, largest task id {}; {} queued, {} leased, {} completed, {} \
         dead-lettered (since the last compaction)",
        l.records,
        l.max_id.map_or("-".to_owned(), |m| m.0.to_string()),
        l.queued.len(),
        l.leases.len(),
        l.completed,
        l.dead_letters.len()
    );
    let _ = writeln!(o, "\nleases: {}", l.leases.len());
    for (agent, leases) in l.leases_by_agent() {
        let _ = writeln!(o, "  {agent}:");
        for x in leases {
            let _ = writeln!(
                o,
                "    task {}  type {}  attempt {}  deadline in {} ms",
                x.id.0,
                x.agent_type.as_ref().map_or("?", |t| t.as_str()),
                x.attempt,
                due_ms(x.deadline, s.now)
            );
        }
    }
    let _ = writeln!(o, "\nqueued: {}", l.queued.len());
    for (t, n) in l.queued_by_type() {
        let _ = writeln!(o, "  {}: {n}", t.map_or("?", |t| t.as_str()));
    }
    let _ = writeln!(o, "\ndead letters: {}", l.dead_letters.len());
    for d in &l.dead_letters {
        let _ = writeln!(
            o,
            "  task {}  type {}  payload {}  reason: {}",
            d.id.0,
            d.agent_type.as_ref().map_or("?", |t| t.as_str()),
            d.payload
                .as_ref()
                .map_or("?".to_owned(), |p| format!("{} bytes", p.len())),
            d.reason
        );
    }
    o
}

/// `s` as a JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("null".to_owned(), |v| v.to_string())
}

/// Bytes as a JSON array of numbers.
fn bytes(b: &[u8]) -> String {
    let items: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", items.join(","))
}

fn json(s: &Shown) -> String {
    let agents: Vec<String> = s
        .agents
        .iter()
        .map(|a| {
            format!(
                "{{\"id\":{},\"pid\":{},\"alive\":{},\"current_tasks\":{},\"capacity\":{},\
                 \"latency_us\":{},\"heartbeat_age_us\":{},\"inbox\":{}}}",
                js(a.id.as_str()),
                opt(a.pid),
                opt(a.alive),
                a.tasks,
                a.capacity,
                a.latency_us,
                a.heartbeat_age_us,
                a.inbox
            )
        })
        .collect();
    let orphans: Vec<String> = s.orphan_inboxes.iter().map(|n| js(n)).collect();
    let ledger = match &s.ledger {
        None => "null".to_owned(),
        Some(l) => {
            let ty = |t: Option<&erlmcp_flow::sched::AgentType>| {
                t.map_or("null".into(), |t| js(t.as_str()))
            };
            let leases: Vec<String> = l
                .leases
                .iter()
                .map(|x| {
                    format!(
                        "{{\"task\":{},\"agent\":{},\"type\":{},\"attempt\":{},\
                         \"deadline_in_us\":{}}}",
                        x.id.0,
                        js(x.agent.as_str()),
                        ty(x.agent_type.as_ref()),
                        x.attempt,
                        x.deadline as i128 - s.now as i128
                    )
                })
                .collect();
            let queued: Vec<String> = l
                .queued_by_type()
                .into_iter()
                .map(|(t, n)| format!("{{\"type\":{},\"count\":{n}}}", ty(t)))
                .collect();
            let dead: Vec<String> = l
                .dead_letters
                .iter()
                .map(|d| {
                    format!(
                        "{{\"task\":{},\"type\":{},\"reason\":{},\"payload\":{}}}",
                        d.id.0,
                        ty(d.agent_type.as_ref()),
                        js(&d.reason),
                        d.payload.as_deref().map_or("null".to_owned(), bytes)
                    )
                })
                .collect();
            format!(
                "{{\"records\":{},\"max_task_id\":{},\"queued_count\":{},\"completed\":{},\
                 \"leases\":[{}],\"queued\":[{}],\"dead_letters\":[{}]}}",
                l.records,
                opt(l.max_id.map(|m| m.0)),
                l.queued.len(),
                l.completed,
                leases.join(","),
                queued.join(","),
                dead.join(",")
            )
        }
    };
    format!(
        "{{\"dir\":{},\"agents\":[{}],\"orphan_inboxes\":[{}],\"ledger\":{}}}\n",
        js(&s.dir.to_string_lossy()),
        agents.join(","),
        orphans.join(","),
        ledger
    )
}
