//! The threaded member runner over rings: members in one process find each other, converge
//! on a put (with forced rounds), report a stopped member and a leaving one down to
//! subscribers; bad specs are refused before any thread starts.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::{spawn_member, MemberHandle, MemberSpec, MemberTransport};
use crate::error::ErrorKind;
use crate::membership::gossip::GossipConfig;
use crate::membership::swim::{MemberState, SwimConfig};
use crate::mesh::member::MeshEvent;
use crate::net::NodeId;
use crate::testutil::TempDir;

/// Member `id` of `1..=n` over rings in `dir`, seeded with member 1, with fast timings: a
/// 100 ms probe period, suspicion for 1 s (generous for a shared 2-core machine), rounds
/// every `round_ms`.
fn spec(dir: &Path, id: u64, n: u64, round_ms: u64) -> MemberSpec {
    let peers: Vec<u64> = (1..=n).filter(|&p| p != id).collect();
    let seeds: &[u64] = if id == 1 { &[] } else { &[1] };
    let mut s = MemberSpec::new(
        id,
        MemberTransport::Ring {
            dir: dir.to_path_buf(),
            inbox_capacity: 1 << 18,
            peers,
        },
        seeds,
    );
    s.options.swim = SwimConfig {
        generation: 1,
        suspicion_timeout: Duration::from_secs(1),
        ..SwimConfig::for_cluster_size(n as usize).with_probe_period(Duration::from_millis(100))
    };
    s.options.gossip = GossipConfig {
        round_interval_us: round_ms * 1_000,
        ..GossipConfig::default()
    };
    s
}

fn start(dir: &Path, n: u64, round_ms: u64) -> Vec<MemberHandle> {
    (1..=n)
        .map(|id| spawn_member(spec(dir, id, n, round_ms)).unwrap())
        .collect()
}

/// Polls `ok` until it holds, failing after `secs` with `what`.
fn wait_for(what: &str, secs: u64, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn formed(ms: &[MemberHandle]) -> bool {
    ms.iter()
        .all(|m| m.live_members().unwrap().len() == ms.len() - 1)
}

/// Waits on `rx` for an event matching `want`, failing after `secs`.
fn wait_event(rx: &Receiver<MeshEvent>, secs: u64, want: impl Fn(&MeshEvent) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if want(&e) => return,
            Ok(_) => {}
            Err(e) => panic!("no matching event: {e}"),
        }
    }
}

#[test]
fn six_members_converge_on_a_put() {
    let dir = TempDir::new("mesh-runner-put");
    let ms = start(&dir.0, 6, 50);
    wait_for("the cluster did not form", 20, || formed(&ms));
    let sub = ms[4].subscribe().unwrap();
    let v = ms[2].put(b"agent/9", b"host-3").unwrap();
    assert_eq!(v.origin, 3);
    assert_eq!(
        ms[2].get(b"agent/9").unwrap().as_deref(),
        Some(&b"host-3"[..])
    );
    // Forced rounds on the writer push the update to ceil(log2 6) + 1 = 4 peers a round,
    // then the others pull it in their own forced rounds.
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ms.iter().any(|m| m.get(b"agent/9").unwrap().is_none()) {
        assert!(Instant::now() < deadline, "the key did not spread");
        for m in &ms {
            let r = m.round().unwrap();
            if m.id() == 3 {
                assert!(r > last, "round count {r} after {last}");
                last = r;
            }
        }
    }
    wait_event(
        &sub,
        5,
        |e| matches!(e, MeshEvent::KeyChanged(c) if c.key == b"agent/9" && c.value.as_deref() == Some(&b"host-3"[..])),
    );
    // A delete spreads the same way.
    assert!(ms[0].delete(b"agent/9").unwrap().is_some());
    assert_eq!(ms[0].delete(b"nothing").unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ms.iter().any(|m| m.get(b"agent/9").unwrap().is_some()) {
        assert!(Instant::now() < deadline, "the delete did not spread");
        for m in &ms {
            m.round().unwrap();
        }
    }
    wait_event(
        &sub,
        5,
        |e| matches!(e, MeshEvent::KeyChanged(c) if c.key == b"agent/9" && c.value.is_none()),
    );
    for m in ms {
        let st = m.stats().unwrap();
        assert_eq!(st.member.rejected + st.member.unknown_tag, 0, "{st:?}");
        assert!(st.gossip.rounds > 0);
        assert!(m.entries().unwrap().is_empty());
        m.stop().unwrap();
    }
}

#[test]
fn a_stopped_member_is_reported_down_and_a_leaving_one_too() {
    let dir = TempDir::new("mesh-runner-down");
    let mut ms = start(&dir.0, 5, 20);
    wait_for("the cluster did not form", 20, || formed(&ms));
    let sub = ms[0].subscribe().unwrap();
    // A crash: member 5 stops without leaving.
    ms.pop().unwrap().stop().unwrap();
    wait_event(&sub, 20, |e| *e == MeshEvent::MemberDown(NodeId(5)));
    let all = ms[0].members().unwrap();
    let five = all.iter().find(|m| m.id == 5).unwrap();
    assert_eq!(five.state, MemberState::Down);
    wait_for("member 5 is still live somewhere", 20, || {
        ms.iter()
            .all(|m| !m.live_members().unwrap().contains(&NodeId(5)))
    });
    // A graceful leave: member 4 tells the others.
    ms[3].leave().unwrap();
    wait_event(&sub, 20, |e| *e == MeshEvent::MemberDown(NodeId(4)));
    assert_eq!(ms[0].live_members().unwrap(), vec![NodeId(2), NodeId(3)]);
    // Nobody healthy was accused.
    while let Ok(e) = sub.try_recv() {
        assert!(
            !matches!(e, MeshEvent::MemberDown(NodeId(id)) if id < 4),
            "{e:?}"
        );
    }
    for m in ms {
        assert!(m.is_running());
        m.stop().unwrap();
    }
    // The subscription ends with its member.
    assert!(sub.recv_timeout(Duration::from_secs(5)).is_err());
}

#[test]
fn bad_specs_are_refused_before_a_thread_starts() {
    let dir = TempDir::new("mesh-runner-bad");
    let mut s = spec(&dir.0, 1, 3, 100);
    s.id = 0;
    assert_eq!(
        spawn_member(s).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let mut s = spec(&dir.0, 2, 3, 100);
    s.options.seeds = vec![NodeId(9)];
    let e = spawn_member(s).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("seed 9"), "{e}");
    let mut s = spec(&dir.0, 2, 3, 100);
    s.options.gossip.round_interval_us = 0;
    assert_eq!(
        spawn_member(s).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let s = MemberSpec::new(
        1,
        MemberTransport::Ring {
            dir: dir.0.clone(),
            inbox_capacity: 1 << 18,
            peers: vec![1, 2],
        },
        &[],
    );
    assert_eq!(
        spawn_member(s).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // A transport that cannot open is an error of spawn_member, not of a later call.
    let s = MemberSpec::new(
        1,
        MemberTransport::Ring {
            dir: dir.0.clone(),
            inbox_capacity: 1000, // not a power of two
            peers: vec![2],
        },
        &[],
    );
    assert!(spawn_member(s).is_err());
}

#[test]
fn a_lone_member_serves_calls_from_many_threads() {
    let dir = TempDir::new("mesh-runner-lone");
    let m = spawn_member(spec(&dir.0, 1, 2, 5)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let m = &m;
            s.spawn(move || {
                for i in 0..50u8 {
                    m.put(&[t, i], &[i]).unwrap();
                    assert_eq!(m.get(&[t, i]).unwrap(), Some(vec![i]));
                }
                // Rounds run without peers too (they send nothing).
                let a = m.round().unwrap();
                let b = m.round().unwrap();
                assert!(b > a);
            });
        }
    });
    assert_eq!(m.entries().unwrap().len(), 200);
    assert!(m.live_members().unwrap().is_empty());
    assert_eq!(m.local_addr(), None);
    let too_big = vec![0u8; 2048];
    assert_eq!(
        m.put(&too_big, b"v").unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    m.stop().unwrap();
}
