//! Tests of the simulated network: determinism by seed, and every fault observed.

use std::collections::{BTreeMap, BTreeSet};

use super::sim::{DropReason, Event, LinkFaults, SimNet, SimOptions};
use super::{NodeId, Transport};
use crate::error::ErrorKind;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn net3(seed: u64, link: LinkFaults) -> SimNet {
    let net = SimNet::new(SimOptions {
        link,
        ..SimOptions::seeded(seed)
    });
    for id in [A, B, C] {
        net.add_node(id).unwrap();
    }
    net
}

fn faulty() -> LinkFaults {
    LinkFaults {
        drop: 0.1,
        duplicate: 0.1,
        reorder: 0.1,
        reorder_window: 30,
        min_delay: 1,
        max_delay: 20,
    }
}

/// A chatty workload: every node sends to every other at each tick, each delivery is
/// answered, with a crash, a partition and a heal on the way. Returns the trace digest and
/// what each node received, in order.
fn run(seed: u64) -> (u64, Vec<Event>, BTreeMap<NodeId, Vec<Vec<u8>>>) {
    let net = net3(seed, faulty());
    let mut got: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
    for t in 0..300u64 {
        match t {
            100 => net.partition(&[&[A], &[B, C]]).unwrap(),
            150 => net.heal(),
            200 => net.crash(C).unwrap(),
            230 => net.restart(C).unwrap(),
            _ => {}
        }
        for from in [A, B, C] {
            for to in [A, B, C] {
                if from != to && net.is_up(from) {
                    net.send(from, to, format!("{t}:{}>{}", from.0, to.0).as_bytes())
                        .unwrap();
                }
            }
        }
        // One frame at a time: the finest interleaving; replies go out at once.
        while let Some(d) = net.step(t) {
            got.entry(d.to).or_default().push(d.frame.payload.clone());
            if d.frame.payload.len() < 40 {
                let mut reply = b"re:".to_vec();
                reply.extend_from_slice(&d.frame.payload);
                net.send(d.to, d.frame.from, &reply).unwrap();
            }
        }
    }
    (net.trace_digest(), net.trace(), got)
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let (d1, t1, g1) = run(42);
    let (d2, t2, g2) = run(42);
    assert_eq!(t1, t2, "same seed, same trace");
    assert_eq!(d1, d2);
    assert_eq!(g1, g2, "same seed, same deliveries");
    assert!(t1.len() > 1000, "a real workload: {} events", t1.len());
    let (d3, t3, _) = run(43);
    assert_ne!(d1, d3, "another seed, another trace");
    assert_ne!(t1, t3);
}

/// 20 seeds in the suite; `EMF_NET_SIM_SEEDS=N` runs N (`scripts/net-sim.sh`), from
/// `EMF_NET_SIM_SEED` (default 0).
#[test]
fn many_seeds_replay() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (first, n) = (env("EMF_NET_SIM_SEED", 0), env("EMF_NET_SIM_SEEDS", 20));
    for seed in first..first + n {
        let (d1, _, got) = run(seed);
        assert_eq!(d1, run(seed).0, "seed {seed} does not replay");
        assert!(!got.is_empty(), "seed {seed}: nothing delivered");
    }
}

/// Sends `n` numbered frames a -> b, one per tick, and runs the clock far enough.
fn numbered(net: &SimNet, n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    for i in 0..n {
        net.send(A, B, &i.to_le_bytes()).unwrap();
        for d in net.deliver_due(u64::from(i)) {
            got.push(u32::from_le_bytes(d.frame.payload[..].try_into().unwrap()));
        }
    }
    for d in net.deliver_due(u64::MAX) {
        got.push(u32::from_le_bytes(d.frame.payload[..].try_into().unwrap()));
    }
    got
}

#[test]
fn reliable_links_deliver_everything_once_in_order() {
    let net = net3(1, LinkFaults::RELIABLE);
    let got = numbered(&net, 500);
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    let s = net.stats();
    assert_eq!((s.sent, s.delivered), (500, 500));
}

#[test]
fn drops_are_observed_and_recorded() {
    let net = net3(
        2,
        LinkFaults {
            drop: 0.3,
            ..LinkFaults::RELIABLE
        },
    );
    let got = numbered(&net, 1000);
    let s = net.stats();
    assert!(s.dropped_fault > 200 && s.dropped_fault < 400, "{s:?}");
    assert_eq!(got.len() as u64 + s.dropped_fault, 1000);
    // The delivered ones are the ones not recorded as dropped, in order.
    let dropped: BTreeSet<u64> = net
        .trace()
        .iter()
        .filter_map(|e| match e {
            Event::Dropped {
                seq,
                reason: DropReason::Fault,
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    let want: Vec<u32> = (0..1000u32)
        .filter(|i| !dropped.contains(&u64::from(*i)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn duplicates_are_observed() {
    let net = net3(
        3,
        LinkFaults {
            duplicate: 0.2,
            ..LinkFaults::RELIABLE
        },
    );
    let got = numbered(&net, 1000);
    let s = net.stats();
    assert!(s.duplicated > 100, "{s:?}");
    assert_eq!(got.len() as u64, 1000 + s.duplicated);
    let distinct: BTreeSet<u32> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 1000, "every frame at least once");
}

#[test]
fn delays_stay_in_range_and_fifo_holds_without_reorder() {
    let net = net3(
        4,
        LinkFaults {
            min_delay: 5,
            max_delay: 50,
            ..LinkFaults::RELIABLE
        },
    );
    let mut sent_at = BTreeMap::new();
    let mut got = Vec::new();
    for i in 0..400u64 {
        net.send(A, B, &i.to_le_bytes()).unwrap();
        sent_at.insert(i, i);
        for d in net.deliver_due(i) {
            got.push((
                d.at,
                u64::from_le_bytes(d.frame.payload[..].try_into().unwrap()),
            ));
        }
    }
    let mut t = 400;
    while let Some(due) = net.next_due() {
        t = t.max(due);
        for d in net.deliver_due(t) {
            got.push((
                d.at,
                u64::from_le_bytes(d.frame.payload[..].try_into().unwrap()),
            ));
        }
    }
    let order: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(order, (0..400).collect::<Vec<_>>(), "FIFO per link");
    let mut late = 0;
    for (at, i) in &got {
        assert!(
            *at >= sent_at[i] + 5,
            "frame {i} delivered at {at}, too early"
        );
        if *at > sent_at[i] + 5 {
            late += 1;
        }
    }
    assert!(late > 100, "delays vary ({late} late)");
}

#[test]
fn reordering_is_observed() {
    let net = net3(
        5,
        LinkFaults {
            reorder: 0.2,
            reorder_window: 10,
            ..LinkFaults::RELIABLE
        },
    );
    let got = numbered(&net, 500);
    assert_eq!(got.len(), 500, "nothing lost");
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 20, "{inversions} inversions");
    assert!(net.stats().reordered > 50);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..500).collect::<Vec<_>>());
}

#[test]
fn partitions_cut_and_heal_restores() {
    let net = net3(6, LinkFaults::RELIABLE);
    net.partition(&[&[A], &[B, C]]).unwrap();
    net.send(A, B, b"across").unwrap();
    net.send(B, C, b"within").unwrap();
    net.send(C, A, b"across back").unwrap();
    let d = net.deliver_due(10);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].frame.payload, b"within");
    assert_eq!(net.stats().dropped_partition, 2);
    // In flight when the partition starts: dropped when it comes due.
    net.heal();
    net.send(A, B, b"in flight").unwrap();
    net.isolate(B).unwrap();
    assert!(net.deliver_due(20).is_empty());
    assert_eq!(net.stats().dropped_partition, 3);
    net.heal();
    net.send(A, B, b"healed").unwrap();
    let d = net.deliver_due(30);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].frame.payload, b"healed");
    // One-way block.
    net.block(A, B);
    net.send(A, B, b"blocked").unwrap();
    net.send(B, A, b"open").unwrap();
    let d = net.deliver_due(40);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].frame.payload, b"open");
    net.heal();
}

#[test]
fn crash_loses_inbox_and_in_flight_and_restart_receives_again() {
    let net = net3(7, LinkFaults::RELIABLE);
    let mut a = net.endpoint(A).unwrap();
    let mut b = net.endpoint(B).unwrap();
    a.send(B, b"queued").unwrap();
    net.run_until(5);
    a.send(B, b"in flight").unwrap();
    net.crash(B).unwrap();
    assert_eq!(b.try_recv().unwrap(), None, "inbox gone");
    assert_eq!(net.in_flight(), 0, "in-flight frames to it gone");
    assert_eq!(b.send(A, b"x").unwrap_err().kind(), ErrorKind::Closed);
    a.send(B, b"while down").unwrap();
    net.run_until(10);
    assert_eq!(net.stats().dropped_crashed, 3);
    net.restart(B).unwrap();
    a.send(B, b"after restart").unwrap();
    net.run_until(20);
    let f = b.try_recv().unwrap().unwrap();
    assert_eq!((f.from, &f.payload[..]), (A, &b"after restart"[..]));
    assert!(net.trace().contains(&Event::Crashed {
        at: 5,
        node: B,
        inbox_lost: 1
    }));
}

#[test]
fn step_interleaves_one_frame_at_a_time_in_due_order() {
    let net = net3(8, LinkFaults::RELIABLE);
    net.set_link(
        A,
        C,
        LinkFaults {
            min_delay: 10,
            max_delay: 10,
            ..LinkFaults::RELIABLE
        },
    )
    .unwrap();
    net.send(A, C, b"slow").unwrap();
    net.send(A, B, b"fast 1").unwrap();
    net.send(B, C, b"fast 2").unwrap();
    assert_eq!(net.next_due(), Some(1));
    assert!(net.step(0).is_none(), "nothing due at 0");
    let d = net.step(1).unwrap();
    assert_eq!((d.to, &d.frame.payload[..]), (B, &b"fast 1"[..]));
    let d = net.step(1).unwrap();
    assert_eq!((d.to, &d.frame.payload[..]), (C, &b"fast 2"[..]));
    assert!(net.step(9).is_none());
    assert_eq!(net.step(10).unwrap().frame.payload, b"slow");
    assert_eq!(net.now(), 10);
    assert!(net.step(3).is_none(), "the clock never goes back");
    assert_eq!(net.now(), 10);
}

#[test]
fn bounds_and_errors_are_answers() {
    let net = SimNet::new(SimOptions {
        link_capacity: 3,
        inbox_capacity: 2,
        max_payload: 8,
        ..SimOptions::seeded(9)
    });
    let mut a = net.add_node(A).unwrap();
    let mut b = net.add_node(B).unwrap();
    assert_eq!(
        net.add_node(A).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(a.send(C, b"?").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        a.send(B, b"123456789").unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    for _ in 0..3 {
        a.send(B, b"x").unwrap();
    }
    assert_eq!(a.send(B, b"x").unwrap_err().kind(), ErrorKind::Full);
    assert_eq!(net.stats().refused_full, 1);
    // Two fit in B's inbox; the third is dropped and recorded.
    assert_eq!(net.run_until(1), 2);
    assert_eq!(net.stats().dropped_inbox_full, 1);
    assert!(b.try_recv().unwrap().is_some());
    assert!(b
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap()
        .is_some());
    assert!(b.try_recv().unwrap().is_none());
    assert_eq!(
        net.set_link(
            A,
            B,
            LinkFaults {
                drop: 1.5,
                ..LinkFaults::RELIABLE
            }
        )
        .unwrap_err()
        .kind(),
        ErrorKind::InvalidArgument
    );
}
