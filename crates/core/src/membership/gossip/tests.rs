use super::sim::{gossip_convergence, memberlist_convergence, MemberlistModel, Sim, SimConfig};
use super::wire::{self, KIND_PULL, KIND_PUSH};
use super::*;
use std::collections::BTreeMap;

fn member(id: u64) -> Gossip {
    Gossip::new(id, GossipConfig::default()).unwrap()
}

/// Delivers datagrams between the given members (by id = index) until none is left;
/// returns how many were delivered.
fn exchange(members: &mut [Gossip], mut queue: Vec<(u64, Datagram)>, now: u64) -> usize {
    let mut delivered = 0;
    while let Some((from, d)) = queue.pop() {
        delivered += 1;
        let mut out = Vec::new();
        members[d.to as usize]
            .handle(from, &d.payload, now, &mut out)
            .unwrap();
        let to = d.to;
        queue.extend(out.into_iter().map(|o| (to, o)));
    }
    delivered
}

fn sim(nodes: usize, seed: u64) -> Sim {
    Sim::new(SimConfig {
        nodes,
        seed,
        ..SimConfig::default()
    })
    .unwrap()
}

// ---- configuration and local operations ----

#[test]
fn bad_config_is_invalid_argument() {
    let bad = [
        GossipConfig {
            round_interval_us: 0,
            ..GossipConfig::default()
        },
        GossipConfig {
            max_fan_out: 0,
            ..GossipConfig::default()
        },
        GossipConfig {
            retransmit_mult: 0,
            ..GossipConfig::default()
        },
        GossipConfig {
            max_datagram: 10,
            ..GossipConfig::default()
        },
        GossipConfig {
            max_pull_answer: 59_999,
            ..GossipConfig::default()
        },
        GossipConfig {
            max_datagram: 1000,
            max_key: 100,
            max_value: 900,
            ..GossipConfig::default()
        },
    ];
    for c in bad {
        let e = Gossip::new(1, c.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{c:?}");
        assert!(!e.message().is_empty());
    }
    let edge = GossipConfig {
        max_datagram: 1000,
        max_key: 100,
        max_value: 1000 - 100 - wire::COUNTED_HEADER - wire::ENTRY_OVERHEAD,
        ..GossipConfig::default()
    };
    Gossip::new(1, edge).unwrap();
}

#[test]
fn put_get_delete_and_versions() {
    let mut g = member(7);
    assert!(g.is_empty());
    assert_eq!(g.get(b"a"), None);
    let v1 = g.put(b"a", b"1", 0).unwrap();
    assert_eq!(
        v1,
        Version {
            counter: 1,
            origin: 7
        }
    );
    let v2 = g.put(b"b", b"2", 0).unwrap();
    let v3 = g.put(b"a", b"3", 0).unwrap();
    assert!(v1 < v2 && v2 < v3);
    assert_eq!(g.get(b"a"), Some(&b"3"[..]));
    assert_eq!(g.version(b"a"), Some(v3));
    assert_eq!(g.len(), 2);
    let d = g.delete(b"a", 0).unwrap().unwrap();
    assert!(d > v3);
    assert_eq!(g.get(b"a"), None);
    assert_eq!(g.version(b"a"), Some(d), "the tombstone keeps its version");
    assert_eq!((g.len(), g.tombstones()), (1, 1));
    assert_eq!(g.delete(b"a", 0).unwrap(), None, "already deleted");
    assert_eq!(g.delete(b"zz", 0).unwrap(), None, "never written");
    let v4 = g.put(b"a", b"back", 0).unwrap();
    assert!(v4 > d);
    assert_eq!(
        (g.get(b"a"), g.len(), g.tombstones()),
        (Some(&b"back"[..]), 2, 0)
    );
    let mut all: Vec<_> = g.iter().collect();
    all.sort();
    assert_eq!(all, vec![(&b"a"[..], &b"back"[..]), (&b"b"[..], &b"2"[..])]);
    assert_eq!(g.stats().local_writes, 5);
    // Empty keys and values are fine.
    g.put(b"", b"", 0).unwrap();
    assert_eq!(g.get(b""), Some(&b""[..]));
}

#[test]
fn put_beyond_the_maxima_is_too_large() {
    let c = GossipConfig {
        max_key: 4,
        max_value: 8,
        ..GossipConfig::default()
    };
    let mut g = Gossip::new(1, c).unwrap();
    assert_eq!(
        g.put(b"12345", b"", 0).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(
        g.put(b"k", &[0; 9], 0).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(
        g.delete(b"12345", 0).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    g.put(b"1234", &[0; 8], 0).unwrap();
    assert_eq!(g.len(), 1);
}

#[test]
fn remote_versions_advance_the_lamport_clock() {
    let mut a = member(1);
    let mut b = member(2);
    for i in 0..5u8 {
        a.put(&[i], b"x", 0).unwrap();
    }
    b.set_peers([1]);
    a.set_peers([2]);
    let mut out = Vec::new();
    a.round(0, &mut out);
    let q = out.into_iter().map(|d| (1, d)).collect();
    let mut ms = vec![member(0), a, b];
    exchange(&mut ms, q, 0);
    let v = ms[2].put(b"new", b"y", 0).unwrap();
    assert_eq!(
        v,
        Version {
            counter: 6,
            origin: 2
        }
    );
}

#[test]
fn fan_out_and_retransmit_limit_follow_n() {
    let mut g = member(0);
    assert_eq!((g.fan_out(), g.retransmit_limit()), (1, 1));
    g.set_peers(1..16); // N = 16
    assert_eq!((g.fan_out(), g.retransmit_limit()), (5, 5));
    g.set_peers(1..1000); // N = 1000
    assert_eq!((g.fan_out(), g.retransmit_limit()), (10, 10));
    let mut g = Gossip::new(
        0,
        GossipConfig {
            retransmit_mult: 3,
            ..GossipConfig::default()
        },
    )
    .unwrap();
    g.set_peers(1..16);
    assert_eq!((g.fan_out(), g.retransmit_limit()), (5, 15));
    g.set_peers([0, 3, 3, 2]);
    assert_eq!(g.peers(), &[2, 3], "self dropped, duplicates once");
}

// ---- rounds ----

/// Push and pull targets of a round: disjoint, of the documented sizes, never self.
#[test]
fn push_and_pull_sets_are_disjoint() {
    for n in [2usize, 3, 4, 5, 9, 16, 64, 1000] {
        let mut g = member(0);
        g.set_peers(0..n as u64);
        g.put(b"k", b"v", 0).unwrap();
        let f = g.fan_out();
        let peers = n - 1;
        for _ in 0..50 {
            let mut out = Vec::new();
            // Keep an update to push in every round.
            let v = g.version(b"k").unwrap();
            g.items.values_mut().flatten().for_each(|i| i.sends = 0);
            assert_eq!(g.version(b"k"), Some(v));
            g.round(0, &mut out);
            let push: Vec<u64> = out
                .iter()
                .filter(|d| d.payload[1] == KIND_PUSH)
                .map(|d| d.to)
                .collect();
            let pull: Vec<u64> = out
                .iter()
                .filter(|d| d.payload[1] == KIND_PULL)
                .map(|d| d.to)
                .collect();
            if peers == 1 {
                assert_eq!((&push[..], &pull[..]), (&[1][..], &[1][..]));
                continue;
            }
            assert_eq!(push.len(), f.min(peers - 1), "n={n}");
            assert_eq!(pull.len(), f.min(peers - push.len()), "n={n}");
            assert!(!pull.is_empty());
            if peers >= 2 * f {
                assert_eq!((push.len(), pull.len()), (f, f));
            }
            let mut all: Vec<u64> = push.iter().chain(&pull).copied().collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), push.len() + pull.len(), "n={n}: overlap");
            assert!(!all.contains(&0), "n={n}: self");
            assert!(all.iter().all(|&p| (p as usize) < n));
        }
    }
}

#[test]
fn an_update_is_pushed_until_its_retransmit_limit() {
    for (mult, rounds) in [(1, 1), (3, 3)] {
        let c = GossipConfig {
            retransmit_mult: mult,
            ..GossipConfig::default()
        };
        let mut g = Gossip::new(0, c).unwrap();
        g.set_peers(1..16);
        g.put(b"k", b"v", 0).unwrap();
        let mut pushes = 0;
        for _ in 0..20 {
            let mut out = Vec::new();
            g.round(0, &mut out);
            pushes += out.iter().filter(|d| d.payload[1] == KIND_PUSH).count();
        }
        // N = 16: 5 peers a round, 5 * mult peer-sends.
        assert_eq!(pushes as u32, g.retransmit_limit());
        assert_eq!(pushes, 5 * rounds);
        assert_eq!(g.stats().pushes, pushes as u64);
        assert!(g.recent.is_empty());
    }
}

#[test]
fn tick_schedules_rounds_and_anti_entropy() {
    let c = GossipConfig {
        round_interval_us: 1_000,
        anti_entropy_interval_us: 10_000,
        ..GossipConfig::default()
    };
    let mut g = Gossip::new(0, c.clone()).unwrap();
    g.set_peers(1..4);
    assert_eq!(g.next_deadline_us(), 0);
    let mut out = Vec::new();
    g.tick(0, &mut out);
    let first = g.next_deadline_us();
    assert!(first < 1_000 || g.stats().rounds == 1);
    let mut now = 0;
    while now < 100_000 {
        now = g.next_deadline_us().max(now);
        g.tick(now, &mut out);
    }
    let s = g.stats();
    assert!((99..=101).contains(&s.rounds), "{s:?}");
    assert!((9..=11).contains(&s.anti_entropy), "{s:?}");
    // Off.
    let mut g = Gossip::new(
        0,
        GossipConfig {
            anti_entropy_interval_us: 0,
            ..c
        },
    )
    .unwrap();
    g.set_peers(1..4);
    let mut now = 0;
    while now < 100_000 {
        g.tick(now, &mut out);
        now = g.next_deadline_us().max(now + 1);
    }
    assert_eq!(g.stats().anti_entropy, 0);
    // Late ticks do not burst: one round per tick.
    let before = g.stats().rounds;
    g.tick(10_000_000, &mut out);
    assert_eq!(g.stats().rounds, before + 1);
    assert!(g.next_deadline_us() > 10_000_000);
}

// ---- convergence in simulation ----

#[test]
fn random_writes_converge_everywhere() {
    for seed in 1..=3 {
        let mut s = Sim::new(SimConfig {
            nodes: 16,
            seed,
            loss: 0.1,
            ..SimConfig::default()
        })
        .unwrap();
        let mut rng = seed;
        for step in 0..200u64 {
            rng = mix(rng + step);
            let who = (rng % 16) as usize;
            let key = [(rng >> 8) as u8 % 20];
            if rng % 7 == 0 {
                s.delete(who, &key).unwrap();
            } else {
                s.put(who, &key, &rng.to_le_bytes()).unwrap();
            }
            let t = s.now() + 3_000;
            s.run_until(t);
        }
        // Pushes and pulls (and anti-entropy) settle it within a few seconds.
        let t = s.now() + 3_000_000;
        s.run_until(t);
        assert!(s.converged(), "seed {seed}");
        assert!(s.member(0).len() > 5);
    }
}

#[test]
fn concurrent_puts_on_one_key_resolve_identically() {
    for seed in 1..=5 {
        let mut s = sim(8, seed);
        s.run_until(250_000);
        let mut versions = Vec::new();
        for i in 0..8 {
            versions.push((s.put(i, b"k", format!("from {i}").as_bytes()).unwrap(), i));
        }
        // Also a second key written concurrently by two members with equal counters.
        let winner = versions.iter().max().unwrap();
        s.run_until(2_000_000);
        assert!(s.converged(), "seed {seed}");
        for i in 0..8 {
            assert_eq!(s.member(i).version(b"k"), Some(winner.0));
            assert_eq!(
                s.member(i).get(b"k"),
                Some(format!("from {}", winner.1).as_bytes())
            );
        }
    }
}

#[test]
fn equal_versions_with_different_values_resolve_identically() {
    // Only a member that restarted under its id without its state can do this.
    let v = Version {
        counter: 5,
        origin: 9,
    };
    let mut a = member(1);
    let mut b = member(2);
    let mut out = Vec::new();
    for (g, first, second) in [(&mut a, b"xx", b"yy"), (&mut b, b"yy", b"xx")] {
        for val in [first, second] {
            let mut p = vec![WIRE_VERSION, KIND_PUSH, 1, 0, 0, 0];
            wire::put_entry(&mut p, v, b"k", Some(val), 0);
            g.handle(9, &p, 0, &mut out).unwrap();
        }
    }
    assert_eq!(a.get(b"k"), Some(&b"yy"[..]));
    assert_eq!(b.get(b"k"), Some(&b"yy"[..]));
}

fn push_of(version: Version, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![WIRE_VERSION, KIND_PUSH, 1, 0, 0, 0];
    wire::put_entry(&mut p, version, key, value, 0);
    p
}

#[test]
fn deletes_win_over_stale_writes_and_lose_to_later_ones() {
    let mut s = sim(8, 3);
    let v1 = s.put(2, b"k", b"old").unwrap();
    s.run_until(1_000_000);
    assert!(s.converged());
    let d = s.delete(5, b"k").unwrap().unwrap();
    assert!(d > v1);
    s.run_until(2_000_000);
    assert!(s.converged());
    for i in 0..8 {
        assert_eq!(
            (s.member(i).get(b"k"), s.member(i).version(b"k")),
            (None, Some(d))
        );
    }
    // A stale copy of the old value (a late duplicate) does not bring it back.
    let mut out = Vec::new();
    s.member_mut(0)
        .handle(2, &push_of(v1, b"k", Some(b"old")), 2_000_000, &mut out)
        .unwrap();
    assert_eq!(s.member(0).get(b"k"), None);
    assert_eq!(
        s.member(0).stats().remote_stale,
        s.member(0).stats().remote_stale.max(1)
    );
    // A later write on any member resurrects it everywhere.
    let v2 = s.put(7, b"k", b"new").unwrap();
    assert!(v2 > d);
    s.run_until(3_000_000);
    assert!(s.converged());
    for i in 0..8 {
        assert_eq!(s.member(i).get(b"k"), Some(&b"new"[..]));
    }
}

#[test]
fn tombstones_expire_after_their_ttl_and_then_stale_copies_resurrect() {
    let c = GossipConfig {
        tombstone_ttl_us: 5_000_000,
        ..GossipConfig::default()
    };
    let mut g = Gossip::new(1, c).unwrap();
    let v1 = g.put(b"k", b"old", 0).unwrap();
    let d = g.delete(b"k", 1_000_000).unwrap().unwrap();
    let mut out = Vec::new();
    g.tick(1_000_000, &mut out);
    assert!(g.next_deadline_us() <= 6_000_000);
    g.tick(5_999_999, &mut out);
    assert_eq!((g.tombstones(), g.version(b"k")), (1, Some(d)));
    g.tick(6_000_000, &mut out);
    assert_eq!((g.tombstones(), g.version(b"k")), (0, None));
    assert_eq!(g.stats().tombstones_dropped, 1);
    // The documented trade-off: a member away longer than the TTL brings the old value back...
    g.handle(2, &push_of(v1, b"k", Some(b"old")), 7_000_000, &mut out)
        .unwrap();
    assert_eq!(g.get(b"k"), Some(&b"old"[..]));
    // ...but local writes still outrank everything seen before (the clock was kept).
    assert!(g.put(b"k", b"x", 7_000_000).unwrap() > d);
}

/// A member partitioned away while many updates were pushed (and their retransmits used up)
/// gets everything after the partition heals.
#[test]
fn a_partitioned_member_is_repaired_after_healing() {
    let mut s = sim(16, 4);
    s.set_group(15, 1);
    for i in 0..100u32 {
        s.put((i % 15) as usize, &i.to_le_bytes(), b"v").unwrap();
        let t = s.now() + 10_000;
        s.run_until(t);
    }
    s.run_until(s.now() + 2_000_000);
    assert_eq!(s.member(15).len(), 0);
    assert_eq!(s.member(0).len(), 100);
    assert!(s.member(0).recent.is_empty(), "retransmits used up");
    s.heal();
    s.run_until(s.now() + 1_000_000);
    assert!(s.converged());
    assert_eq!(s.member(15).len(), 100);
}

/// Anti-entropy alone (no rounds) reconciles two members both ways, sending only the
/// difference: every entry that crosses changes its receiver.
#[test]
fn anti_entropy_sends_only_the_difference_both_ways() {
    for (shared, only_a, only_b, newer) in [(0, 5, 0, 0), (1000, 30, 40, 20), (5000, 1, 1, 1)] {
        let mut a = member(0);
        let mut b = member(1);
        a.set_peers([1]);
        b.set_peers([0]);
        for i in 0u32..shared {
            let v = a.put(&i.to_le_bytes(), b"same", 0).unwrap();
            let p = push_of(v, &i.to_le_bytes(), Some(b"same"));
            b.handle(0, &p, 0, &mut Vec::new()).unwrap();
        }
        for i in 0u32..only_a {
            a.put(format!("a{i}").as_bytes(), b"x", 0).unwrap();
        }
        for i in 0u32..only_b {
            b.put(format!("b{i}").as_bytes(), b"y", 0).unwrap();
        }
        for i in 0u32..newer {
            b.put(&i.to_le_bytes(), b"newer", 0).unwrap();
        }
        let (sa, sb) = (a.stats(), b.stats());
        let mut out = Vec::new();
        a.anti_entropy(0, &mut out);
        assert_eq!(out.len(), 1);
        let q = out.into_iter().map(|d| (0, d)).collect();
        let mut ms = vec![a, b];
        exchange(&mut ms, q, 0);
        let (a, b) = (&ms[0], &ms[1]);
        assert_eq!(a.len() as u32, shared + only_a + only_b);
        assert_eq!(a.len(), b.len());
        for (k, v) in a.iter() {
            assert_eq!(b.get(k), Some(v));
            assert_eq!(a.version(k), b.version(k));
        }
        let (da, db) = (a.stats(), b.stats());
        assert_eq!(
            da.remote_applied - sa.remote_applied,
            (only_b + newer) as u64
        );
        assert_eq!(db.remote_applied - sb.remote_applied, only_a as u64);
        assert_eq!(da.remote_stale, sa.remote_stale, "a got nothing it had");
        assert_eq!(db.remote_stale, sb.remote_stale, "b got nothing it had");
    }
}

#[test]
fn every_datagram_fits_max_datagram() {
    let max = 600;
    let mut s = Sim::new(SimConfig {
        nodes: 12,
        seed: 9,
        gossip: GossipConfig {
            max_datagram: max,
            max_key: 64,
            max_value: max - 64 - wire::COUNTED_HEADER - wire::ENTRY_OVERHEAD,
            anti_entropy_interval_us: 500_000,
            ..GossipConfig::default()
        },
        ..SimConfig::default()
    })
    .unwrap();
    // Members 10 and 11 join late: everything reaches them by pull and anti-entropy in
    // many datagrams.
    s.set_down(10, true);
    s.set_group(11, 1);
    let big = vec![7u8; s.member(0).config().max_value];
    for i in 0u32..300 {
        let v: &[u8] = if i % 10 == 0 { &big } else { b"small" };
        s.put((i % 10) as usize, format!("key-{i}").as_bytes(), v)
            .unwrap();
    }
    s.run_until(3_000_000);
    s.set_down(10, false);
    s.heal();
    s.run_until(8_000_000);
    assert!(s.converged());
    assert_eq!(s.member(10).len(), 300);
    let n = s.net_stats();
    assert!(n.largest <= max, "{n:?}");
    assert!(n.largest > max / 2, "big entries were sent: {n:?}");
    assert!(
        s.member(0).stats().push_deferred > 0,
        "pushes were prioritised"
    );
}

#[test]
fn runs_are_deterministic_by_seed() {
    let run = |seed| {
        let mut s = Sim::new(SimConfig {
            nodes: 32,
            seed,
            loss: 0.1,
            ..SimConfig::default()
        })
        .unwrap();
        for i in 0..20u8 {
            s.put(i as usize, &[i], &[i]).unwrap();
            let t = s.now() + 7_000;
            s.run_until(t);
        }
        s.run_until(1_000_000);
        let stats: Vec<GossipStats> = (0..32).map(|i| s.member(i).stats()).collect();
        (s.net_stats(), stats)
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn drain_changes_reports_remote_changes_once_coalesced() {
    let mut a = member(0);
    let mut b = member(1);
    a.put(b"x", b"1", 0).unwrap();
    let v = a.put(b"x", b"2", 0).unwrap();
    let d = a.put(b"y", b"3", 0).unwrap();
    let d = Version {
        counter: d.counter + 1,
        ..d
    };
    let mut out = Vec::new();
    b.handle(
        0,
        &push_of(
            Version {
                counter: 1,
                origin: 0,
            },
            b"x",
            Some(b"1"),
        ),
        0,
        &mut out,
    )
    .unwrap();
    b.handle(0, &push_of(v, b"x", Some(b"2")), 0, &mut out)
        .unwrap();
    let y = Version {
        counter: d.counter - 1,
        ..d
    };
    b.handle(0, &push_of(y, b"y", Some(b"3")), 0, &mut out)
        .unwrap();
    b.handle(0, &push_of(d, b"y", None), 0, &mut out).unwrap();
    b.handle(0, &push_of(v, b"x", Some(b"2")), 0, &mut out)
        .unwrap(); // duplicate
    b.put(b"local", b"not reported", 0).unwrap();
    // A tombstone of a key b never showed is no change.
    b.handle(
        0,
        &push_of(
            Version {
                counter: 90,
                origin: 0,
            },
            b"never",
            None,
        ),
        0,
        &mut out,
    )
    .unwrap();
    assert_eq!(b.version(b"never").map(|v| v.counter), Some(90));
    let changes = b.drain_changes();
    assert_eq!(
        changes,
        vec![
            Change {
                key: b"x".to_vec(),
                value: Some(b"2".to_vec()),
                version: v
            },
            Change {
                key: b"y".to_vec(),
                value: None,
                version: d
            },
        ]
    );
    assert!(b.drain_changes().is_empty());
    assert!(out.is_empty(), "pushes are not answered");
    // A local write drops a pending remote change of its key.
    let w = Version {
        counter: 100,
        origin: 0,
    };
    b.handle(0, &push_of(w, b"x", Some(b"remote")), 0, &mut out)
        .unwrap();
    b.put(b"x", b"local", 0).unwrap();
    assert!(b.drain_changes().is_empty());
}

// ---- bad input ----

#[test]
fn bad_datagrams_are_rejected_counted_and_change_nothing() {
    let c = GossipConfig {
        max_key: 16,
        max_value: 64,
        max_datagram: 1024,
        ..GossipConfig::default()
    };
    let mut g = Gossip::new(1, c).unwrap();
    g.put(b"mine", b"v", 0).unwrap();
    let good = push_of(
        Version {
            counter: 3,
            origin: 2,
        },
        b"key",
        Some(b"value"),
    );
    let mut cases: Vec<(Vec<u8>, ErrorKind)> = vec![
        (vec![], ErrorKind::Corrupt),
        (vec![WIRE_VERSION], ErrorKind::Corrupt),
        (vec![2, KIND_PUSH, 0, 0, 0, 0], ErrorKind::Unsupported),
        (vec![0xff; 40], ErrorKind::Unsupported),
        (vec![WIRE_VERSION, 99], ErrorKind::Corrupt),
        (
            vec![WIRE_VERSION, KIND_PUSH, 0xff, 0xff, 0xff, 0xff],
            ErrorKind::Corrupt,
        ),
        (
            vec![WIRE_VERSION, 3, 0xff, 0xff, 0xff, 0x0f],
            ErrorKind::Corrupt,
        ),
        (
            vec![WIRE_VERSION, 4, 2, 0, 0, 0, 1, 2, 3],
            ErrorKind::Corrupt,
        ),
        (vec![WIRE_VERSION, KIND_PULL, 0, 17], ErrorKind::Corrupt),
        (
            vec![WIRE_VERSION, KIND_PULL, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorKind::Corrupt,
        ),
        (
            vec![WIRE_VERSION, KIND_PULL, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorKind::Corrupt,
        ),
        (vec![0; 1025], ErrorKind::TooLarge),
        ([&good[..], &[0]].concat(), ErrorKind::Corrupt),
        (
            push_of(
                Version {
                    counter: 0,
                    origin: 2,
                },
                b"k",
                None,
            ),
            ErrorKind::Corrupt,
        ),
        (
            push_of(
                Version {
                    counter: 1,
                    origin: 2,
                },
                &[1; 17],
                None,
            ),
            ErrorKind::TooLarge,
        ),
        (
            push_of(
                Version {
                    counter: 1,
                    origin: 2,
                },
                b"k",
                Some(&[1; 65]),
            ),
            ErrorKind::TooLarge,
        ),
    ];
    let mut bad_flags = good.clone();
    bad_flags[6 + 16] = 0x80;
    cases.push((bad_flags, ErrorKind::Corrupt));
    // Every truncation of a valid datagram.
    for n in 0..good.len() {
        cases.push((good[..n].to_vec(), ErrorKind::Corrupt));
    }
    // A second entry that is too large: the first is not applied either.
    let mut two = good.clone();
    two[2] = 2;
    wire::put_entry(
        &mut two,
        Version {
            counter: 4,
            origin: 2,
        },
        &[0; 17],
        None,
        0,
    );
    cases.push((two, ErrorKind::TooLarge));
    let before = g.stats();
    for (i, (bytes, kind)) in cases.iter().enumerate() {
        let mut out = Vec::new();
        let e = g.handle(2, bytes, 5, &mut out).unwrap_err();
        assert_eq!(e.kind(), *kind, "case {i}: {e}");
        assert!(out.is_empty());
    }
    let after = g.stats();
    assert_eq!(after.rejected - before.rejected, cases.len() as u64);
    assert_eq!((g.len(), g.get(b"key")), (1, None));
    assert!(g.drain_changes().is_empty());
    // The good one is accepted, from a sender that is not a peer.
    g.handle(2, &good, 5, &mut Vec::new()).unwrap();
    assert_eq!(g.get(b"key"), Some(&b"value"[..]));
}

#[test]
fn random_bytes_never_panic() {
    let mut g = member(1);
    g.put(b"k", b"v", 0).unwrap();
    let mut r = 42u64;
    for len in 0..2000usize {
        let mut bytes = Vec::with_capacity(len % 300);
        for _ in 0..len % 300 {
            r = mix(r);
            bytes.push(r as u8);
        }
        // Half of them with a valid header, so the body parsers are exercised.
        if len % 2 == 0 && bytes.len() >= 2 {
            bytes[0] = WIRE_VERSION;
            bytes[1] = 1 + (len / 2 % 4) as u8;
        }
        let _ = g.handle(3, &bytes, 0, &mut Vec::new());
    }
    assert_eq!(g.get(b"k"), Some(&b"v"[..]));
}

// ---- measurements (short; the bench suite runs N = 1000) ----

#[test]
fn convergence_is_faster_than_the_memberlist_model() {
    for (nodes, loss) in [(64, 0.0), (64, 0.1), (1000, 0.1)] {
        let c = SimConfig {
            nodes,
            loss,
            seed: 11,
            ..SimConfig::default()
        };
        let ours = gossip_convergence(&c, 5_000_000)
            .unwrap()
            .expect("converges");
        let theirs =
            memberlist_convergence(&c, MemberlistModel::default(), 20_000_000).expect("converges");
        assert!(ours.rounds < 8.0, "{nodes} {loss}: {ours:?}");
        assert!(
            ours.us * 2 < theirs.us,
            "{nodes} {loss}: {ours:?} vs {theirs:?}"
        );
        assert!(
            theirs.us > 300_000,
            "{nodes} {loss}: memberlist model {theirs:?}"
        );
    }
}

/// The kept bucket hashes of a large store stay equal to the ones computed from its entries
/// through writes, overwrites, remote merges, deletes and expiries.
#[test]
fn kept_bucket_hashes_match_the_entries() {
    let c = GossipConfig {
        tombstone_ttl_us: 1_000,
        ..GossipConfig::default()
    };
    let mut g = Gossip::new(1, c).unwrap();
    let mut now = 0;
    for i in 0u32..6000 {
        g.put(&i.to_le_bytes(), b"v", now).unwrap();
    }
    assert!(g.leaves.is_some());
    let mut r = 7u64;
    let mut out = Vec::new();
    for step in 0..3000u64 {
        r = mix(r ^ step);
        let key = ((r >> 8) % 7000) as u32;
        match r % 4 {
            0 => {
                g.put(&key.to_le_bytes(), b"w", now).unwrap();
            }
            1 => {
                g.delete(&key.to_le_bytes(), now).unwrap();
            }
            2 => {
                let v = Version {
                    counter: r % 10_000 + 1,
                    origin: r % 5,
                };
                let p = push_of(v, &key.to_le_bytes(), (r & 16 != 0).then_some(&b"x"[..]));
                g.handle(2, &p, now, &mut out).unwrap();
            }
            _ => {
                now += 300;
                g.tick(now, &mut out);
            }
        }
    }
    assert!(g.stats().tombstones_dropped > 0);
    for bits in [0, 1, 5, 10, 12] {
        assert_eq!(g.digest(bits), g.compute_digest(bits), "bits {bits}");
    }
}

/// After a delete, tombstones spread, then expire on every member and stay gone (no member
/// fetches one back), while the key stays deleted.
#[test]
fn tombstones_expire_everywhere_and_do_not_bounce_back() {
    let mut s = Sim::new(SimConfig {
        nodes: 16,
        seed: 21,
        gossip: GossipConfig {
            tombstone_ttl_us: 2_000_000,
            anti_entropy_interval_us: 300_000,
            ..GossipConfig::default()
        },
        ..SimConfig::default()
    })
    .unwrap();
    s.put(3, b"k", b"v").unwrap();
    s.put(3, b"other", b"stays").unwrap();
    s.run_until(1_000_000);
    s.delete(9, b"k").unwrap().unwrap();
    s.run_until(2_000_000);
    assert!(s.converged());
    assert!((0..16).all(|i| s.member(i).tombstones() == 1));
    s.run_until(6_000_000);
    assert!(s.converged());
    for i in 0..16 {
        let m = s.member(i);
        assert_eq!(
            (m.tombstones(), m.version(b"k"), m.len()),
            (0, None, 1),
            "member {i}"
        );
        assert_eq!(
            m.stats().tombstones_dropped,
            1,
            "member {i}: dropped once, never refetched"
        );
    }
    // Converged members only exchange digests: no summaries, wants or entries.
    let before: Vec<GossipStats> = (0..16).map(|i| s.member(i).stats()).collect();
    s.run_until(8_000_000);
    for (i, b) in before.iter().enumerate() {
        let a = s.member(i).stats();
        assert_eq!(
            a.datagrams_out - b.datagrams_out,
            a.pulls - b.pulls,
            "member {i}"
        );
        assert_eq!(
            a.remote_applied + a.remote_stale,
            b.remote_applied + b.remote_stale
        );
    }
}

// ---- seeded chaos: random members, settings, writes, loss, duplicates, partitions ----

/// One seeded run: random cluster and settings; random puts and deletes on random members
/// while datagrams are lost, duplicated, reordered and partitions and stops come and go; then
/// everything heals. Every member must end with, for every key, the greatest version written
/// anywhere and its value.
fn chaos_run(seed: u64) {
    let mut r = mix(seed.wrapping_add(0xC4A0_5EED));
    let mut next = move || {
        r = mix(r);
        r
    };
    let n = 3 + (next() % 14) as usize;
    let max_datagram = [256usize, 1_000, 60_000][(next() % 3) as usize];
    let config = SimConfig {
        nodes: n,
        seed,
        loss: (next() % 30) as f64 / 100.0,
        duplicate: (next() % 20) as f64 / 100.0,
        latency_us: (100, 100 + next() % 5_000),
        gossip: GossipConfig {
            round_interval_us: [2_000, 10_000, 100_000][(next() % 3) as usize],
            anti_entropy_interval_us: [0, 300_000, 1_000_000][(next() % 3) as usize],
            max_fan_out: 1 + (next() % 10) as usize,
            max_datagram,
            max_pull_answer: max_datagram * [1, 4, 1000][(next() % 3) as usize],
            max_key: 16,
            max_value: 64,
            retransmit_mult: 1 + (next() % 4) as u32,
            ..GossipConfig::default()
        },
    };
    let mut s = Sim::new(config.clone()).unwrap();
    let mut down = vec![false; n];
    let mut truth: BTreeMap<Vec<u8>, (Version, Option<Vec<u8>>)> = BTreeMap::new();
    // What a subscriber of each member sees: its local writes and its drained changes.
    let mut shadow: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = vec![BTreeMap::new(); n];
    let drain = |s: &mut Sim, shadow: &mut Vec<BTreeMap<Vec<u8>, Vec<u8>>>| {
        for (i, sh) in shadow.iter_mut().enumerate() {
            for c in s.member_mut(i).drain_changes() {
                match c.value {
                    Some(v) => sh.insert(c.key, v),
                    None => sh.remove(&c.key),
                };
            }
        }
    };
    for _ in 0..150 {
        let who = (next() % n as u64) as usize;
        let key = vec![(next() % 12) as u8; 1 + (next() % 16) as usize];
        match next() % 20 {
            0..=10 if !down[who] => {
                let value = vec![next() as u8; (next() % 65) as usize];
                let v = s.put(who, &key, &value).unwrap();
                shadow[who].insert(key.clone(), value.clone());
                let e = truth.entry(key).or_insert((v, None));
                if v >= e.0 {
                    *e = (v, Some(value));
                }
            }
            11..=13 if !down[who] => {
                if let Some(v) = s.delete(who, &key).unwrap() {
                    shadow[who].remove(&key);
                    let e = truth.entry(key).or_insert((v, None));
                    if v >= e.0 {
                        *e = (v, None);
                    }
                }
            }
            14 => s.set_group(who, 1),
            15 => s.heal(),
            16 => {
                down[who] = !down[who];
                s.set_down(who, down[who]);
            }
            _ => {}
        }
        let t = s.now() + next() % 30_000;
        s.run_until(t);
        drain(&mut s, &mut shadow);
    }
    s.heal();
    for (i, d) in down.iter_mut().enumerate() {
        if *d {
            *d = false;
            s.set_down(i, false);
        }
    }
    // Pulls alone repair everything (anti-entropy may be off): allow many rounds.
    let t = s.now() + 400 * config.gossip.round_interval_us.max(10_000);
    s.run_until(t);
    drain(&mut s, &mut shadow);
    assert!(s.converged(), "seed {seed}: {config:?}");
    for (i, sh) in shadow.iter().enumerate() {
        let m = s.member(i);
        for (key, (v, value)) in &truth {
            assert_eq!(
                m.version(key),
                Some(*v),
                "seed {seed} member {i} key {key:?}"
            );
            assert_eq!(m.get(key), value.as_deref(), "seed {seed} member {i}");
        }
        assert_eq!(m.len(), truth.values().filter(|e| e.1.is_some()).count());
        let shown: BTreeMap<Vec<u8>, Vec<u8>> =
            m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(&shown, sh, "seed {seed} member {i}: the changes reported");
    }
    assert!(s.net_stats().largest <= max_datagram, "seed {seed}");
}

/// 20 seeded chaos runs (`EMF_SIM_SEEDS` changes the count; `scripts/gossip-sim.sh` runs
/// many more in release).
#[test]
fn chaos_runs_converge_to_the_greatest_versions() {
    let seeds: u64 = std::env::var("EMF_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for seed in 0..seeds {
        chaos_run(seed);
    }
}

/// A tombstone travels with its age: the receiver drops it when it is `tombstone_ttl_us` old,
/// not `tombstone_ttl_us` after it arrived; an expired one is not kept for an unknown key but
/// still deletes an older value.
#[test]
fn tombstones_travel_with_their_age() {
    let c = GossipConfig {
        tombstone_ttl_us: 10_000,
        ..GossipConfig::default()
    };
    let tomb = |counter, key: &[u8], age| {
        let mut p = vec![WIRE_VERSION, KIND_PUSH, 1, 0, 0, 0];
        wire::put_entry(&mut p, Version { counter, origin: 5 }, key, None, age);
        p
    };
    let mut a = Gossip::new(1, c.clone()).unwrap();
    let mut out = Vec::new();
    a.handle(5, &tomb(3, b"x", 4_000), 100_000, &mut out)
        .unwrap();
    assert_eq!(a.tombstones(), 1);
    assert_eq!(a.next_deadline_us(), 0, "not ticked yet");
    a.tick(100_000, &mut out);
    a.tick(105_999, &mut out);
    assert_eq!(a.tombstones(), 1);
    a.tick(106_000, &mut out);
    assert_eq!((a.tombstones(), a.version(b"x")), (0, None));
    // Expired, unknown key: nothing kept.
    a.handle(5, &tomb(4, b"y", 10_000), 200_000, &mut out)
        .unwrap();
    assert_eq!((a.tombstones(), a.version(b"y")), (0, None));
    // Expired, older value held: the value goes, the tombstone at the next tick.
    a.put(b"z", b"v", 200_000).unwrap();
    a.handle(5, &tomb(50, b"z", 50_000), 200_000, &mut out)
        .unwrap();
    assert_eq!((a.get(b"z"), a.tombstones()), (None, 1));
    a.tick(200_000, &mut out);
    assert_eq!((a.tombstones(), a.len()), (0, 0));
    // Forwarded on, it carries its age: a second member drops it at the same moment.
    let mut b = Gossip::new(2, c).unwrap();
    b.set_peers([3]);
    b.handle(5, &tomb(60, b"w", 1_000), 300_000, &mut out)
        .unwrap();
    let mut pushed = Vec::new();
    b.round(302_000, &mut pushed);
    let mut d = Gossip::new(
        3,
        GossipConfig {
            tombstone_ttl_us: 10_000,
            ..GossipConfig::default()
        },
    )
    .unwrap();
    d.handle(2, &pushed[0].payload, 302_500, &mut out).unwrap();
    assert_eq!(d.tombstones(), 1);
    d.tick(302_500, &mut out);
    d.tick(309_499, &mut out);
    assert_eq!(d.tombstones(), 1, "3 ms old when sent, 0.5 ms in transit");
    d.tick(309_500, &mut out);
    assert_eq!(d.tombstones(), 0);
}

/// A member with an empty store pulling from a large one gets at most `max_pull_answer` bytes
/// per pull, different parts from different peers, and everything over a few rounds.
#[test]
fn pull_answers_are_capped_and_spread() {
    let c = GossipConfig {
        max_datagram: 1_000,
        max_pull_answer: 10_000,
        max_key: 16,
        max_value: 128,
        anti_entropy_interval_us: 0,
        ..GossipConfig::default()
    };
    let mut ms: Vec<Gossip> = (0..3).map(|i| Gossip::new(i, c.clone()).unwrap()).collect();
    for k in 0u32..1000 {
        let v = ms[0].put(&k.to_le_bytes(), &[1; 50], 0).unwrap();
        let p = push_of(v, &k.to_le_bytes(), Some(&[1; 50]));
        ms[1].handle(0, &p, 0, &mut Vec::new()).unwrap();
    }
    // Member 2 (empty) pulls from 0 and 1 at once.
    let digest = wire::pull(false, 0, &[0]);
    let mut got = Vec::new();
    for from in [0usize, 1] {
        let mut out = Vec::new();
        ms[from].handle(2, &digest, 0, &mut out).unwrap();
        let bytes: usize = out.iter().map(|d| d.payload.len()).sum();
        assert!(
            bytes <= 10_000 + out.len() * wire::COUNTED_HEADER,
            "{bytes}"
        );
        assert!(out.iter().all(|d| d.payload.len() <= 1_000));
        assert_eq!(ms[from].stats().answers_capped, 1);
        for d in out {
            ms[2]
                .handle(from as u64, &d.payload, 0, &mut Vec::new())
                .unwrap();
        }
        got.push(ms[2].len());
    }
    assert!(
        got[0] > 100 && got[1] > got[0] + 100,
        "different parts: {got:?}"
    );
    // Rounds of pulls bring the rest.
    ms[2].set_peers([0, 1]);
    for round in 0..200 {
        let mut out = Vec::new();
        ms[2].round(round, &mut out);
        let q = out.into_iter().map(|d| (2, d)).collect();
        exchange(&mut ms, q, round);
        if ms[2].len() == 1000 {
            return;
        }
    }
    panic!("not all entries after 200 rounds: {}", ms[2].len());
}
