//! `erlmcp-flow agents show` against a live dispatcher and agent of this test process: the
//! command (another process) reads the load table and the ledger from outside, shows the
//! agent, its lease, the queued tasks by type and the dead letter with its payload, and
//! writes not a byte of the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use erlmcp_flow::queue::Priority;
use erlmcp_flow::sched::{
    Agent, AgentId, AgentOptions, AgentType, Dispatcher, LedgerChoice, Outcome, RuntimeOptions,
    SchedulerConfig, TaskId,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("emf-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ty(s: &str) -> AgentType {
    AgentType::new(s).unwrap()
}

/// Every file of `dir` and its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn show(dir: &Path, json: bool) -> String {
    let mut args = vec!["agents", "show", "--dir", dir.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
        .args(&args)
        .output()
        .expect("run erlmcp-flow");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn agents_show_reads_a_live_scheduler_from_outside() {
    let dir = TempDir::new("agents-show");
    let opts = RuntimeOptions {
        reports_capacity: 1 << 16,
        load_slots: 16,
        ledger: LedgerChoice::Shm { capacity: 1 << 20 },
        config: SchedulerConfig {
            max_attempts: 1,
            ..SchedulerConfig::default()
        },
        ..RuntimeOptions::in_dir(&dir.0)
    };
    let mut d = Dispatcher::open(&opts).unwrap();
    let mut agent = Agent::connect(AgentOptions {
        inbox_capacity: 1 << 14,
        max_tasks: 5,
        ..AgentOptions::new(&dir.0, AgentId::new("w1").unwrap(), ty("coder"))
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.stats().agents < 1 {
        assert!(Instant::now() < deadline, "the agent never registered");
        d.step(Duration::from_millis(5)).unwrap();
    }
    let coder: Vec<TaskId> = [b"p1", b"p2", b"p3"]
        .iter()
        .map(|p| {
            d.submit(&ty("coder"), Priority::Normal, p.to_vec())
                .unwrap()
        })
        .collect();
    for p in [b"t1", b"t2"] {
        d.submit(&ty("tester"), Priority::Normal, p.to_vec())
            .unwrap();
    }
    let mut tasks = BTreeMap::new();
    while tasks.len() < 3 {
        assert!(Instant::now() < deadline, "only {} tasks came", tasks.len());
        d.step(Duration::ZERO).unwrap();
        if let Some(t) = agent.recv(Duration::from_millis(5)).unwrap() {
            tasks.insert(t.id, t);
        }
    }
    assert_eq!(tasks.keys().copied().collect::<Vec<_>>(), coder);
    agent.fail(&tasks[&coder[0]], "boom: bad input").unwrap();
    agent.complete(&tasks[&coder[1]], b"ok").unwrap();
    // coder[2] stays leased.
    let mut outcomes = BTreeMap::new();
    while outcomes.len() < 2 {
        assert!(Instant::now() < deadline, "outcomes: {outcomes:?}");
        d.step(Duration::from_millis(5)).unwrap();
        while let Some((id, o)) = d.poll_outcome() {
            outcomes.insert(id, o);
        }
    }
    assert_eq!(outcomes[&coder[1]], Outcome::Done(b"ok".to_vec()));
    assert!(matches!(&outcomes[&coder[0]], Outcome::DeadLetter(r) if r.contains("boom")));

    // Nothing steps now: the directory must be byte for byte the same after the command.
    let before = contents(&dir.0);
    let text = show(&dir.0, false);
    let json = show(&dir.0, true);
    assert_eq!(
        contents(&dir.0),
        before,
        "agents show wrote to the directory"
    );

    let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{json}");
    let a = &agents[0];
    assert_eq!(a["id"], "w1");
    assert_eq!(a["pid"], std::process::id());
    assert_eq!(a["alive"], true);
    assert_eq!(
        a["current_tasks"], 1,
        "three received, one failed, one done"
    );
    assert_eq!(a["capacity"], 5);
    assert_eq!(a["inbox"], true);
    let l = &v["ledger"];
    assert_eq!(l["completed"], 1);
    assert_eq!(l["queued_count"], 2);
    assert_eq!(
        l["queued"],
        serde_json::json!([{"type": "tester", "count": 2}])
    );
    let leases = l["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{json}");
    assert_eq!(leases[0]["task"], coder[2].0);
    assert_eq!(leases[0]["agent"], "w1");
    assert_eq!(leases[0]["type"], "coder");
    assert_eq!(leases[0]["attempt"], 1);
    assert!(leases[0]["deadline_in_us"].as_i64().unwrap() > 0);
    let dead = l["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{json}");
    assert_eq!(dead[0]["task"], coder[0].0);
    assert_eq!(dead[0]["type"], "coder");
    assert_eq!(dead[0]["payload"], serde_json::json!(b"p1"));
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("boom: bad input"));

    for want in [
        "agents: 1",
        "w1",
        "leases: 1",
        &format!("task {}  type coder  attempt 1", coder[2].0),
        "queued: 2",
        "tester: 2",
        "dead letters: 1",
        &format!("task {}  type coder  payload 2 bytes", coder[0].0),
        "boom: bad input",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    drop(agent);
    drop(d);
}

#[test]
fn agents_show_of_a_directory_without_a_scheduler_fails() {
    let dir = TempDir::new("agents-show-empty");
    let out = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
        .args(["agents", "show", "--dir", dir.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scheduler"), "{err}");
}
