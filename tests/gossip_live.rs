//! Gossip live on this machine: 16 `erlmcp-flow gossip member` processes over rings in one
//! /dev/shm directory converge on a key written at member 1; then one is SIGKILLed (a crash,
//! no leave) and every other member must report it down, and no member may ever report a
//! false down (another member down, or itself declared down and rejoining).

use std::path::PathBuf;
use std::time::Duration;

use erlmcp_flow_bench::suite::gossip_live::{LiveCluster, LiveOptions};

const MEMBERS: usize = 16;
const VICTIM: u64 = 16;

#[test]
fn sixteen_member_processes_converge_and_detect_a_killed_one() {
    let mut c = LiveCluster::start(LiveOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_erlmcp-flow")),
        members: MEMBERS,
        round_ms: 100,
        probe_ms: 500,
    })
    .unwrap();
    c.wait_all_live(Duration::from_secs(30)).unwrap();

    let spread = c.converge("agent/1").unwrap();
    // Everyone holds it (converge waited for that); the spread is real and bounded by the
    // key timeout, not a fixed expectation on a shared machine.
    assert!(spread.ms > 0.0, "{spread:?}");
    let held = &c.reports().held["agent/1"];
    assert_eq!(held.len(), MEMBERS - 1, "{held:?}");

    c.kill(VICTIM).unwrap();
    let others: Vec<u64> = c.running();
    assert_eq!(others.len(), MEMBERS - 1);
    c.wait_for(
        Duration::from_secs(30),
        "every member reporting the killed one down",
        |r| others.iter().all(|&o| r.downs.contains(&(o, VICTIM))),
    )
    .unwrap();

    let r = c.reports();
    let false_downs: Vec<_> = r.downs.iter().filter(|d| d.1 != VICTIM).collect();
    assert!(false_downs.is_empty(), "false downs: {false_downs:?}");
    assert!(
        r.rejoins.is_empty(),
        "declared down while running: {:?}",
        r.rejoins
    );
    assert!(
        r.garbled.is_empty(),
        "unparsed report lines: {:?}",
        r.garbled
    );

    let dir = c.dir().to_path_buf();
    assert!(dir.exists());
    drop(c);
    assert!(
        !dir.exists(),
        "the rings' directory is removed with the cluster"
    );
}
