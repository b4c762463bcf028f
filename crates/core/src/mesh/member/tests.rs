//! The membership host loop over the simulated network (deterministic: convergence, key
//! spread, crash, bad frames, back-pressure) and over rings between threads (a live cluster
//! of 10 members, one killed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Member, MemberOptions, MeshEvent, TAG_GOSSIP, TAG_SWIM};
use crate::membership::gossip::GossipConfig;
use crate::membership::swim::SwimConfig;
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::sim::{SimEndpoint, SimNet, SimOptions};
use crate::net::{NodeId, Transport};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use crate::testutil::TempDir;

const MS: u64 = 1_000;

/// Each member's live list, as its thread last saw it.
type LiveLists = BTreeMap<u64, Vec<u64>>;

fn options(seeds: &[u64], probe: Duration) -> MemberOptions {
    MemberOptions {
        swim: SwimConfig {
            generation: 1,
            ..SwimConfig::for_cluster_size(8).with_probe_period(probe)
        },
        gossip: GossipConfig {
            round_interval_us: 20 * MS,
            ..GossipConfig::default()
        },
        seeds: seeds.iter().map(|&s| NodeId(s)).collect(),
        ..MemberOptions::default()
    }
}

struct SimCluster {
    net: SimNet,
    members: BTreeMap<u64, Member<SimEndpoint>>,
    now: u64,
}

impl SimCluster {
    fn new(n: u64, opts: SimOptions) -> SimCluster {
        let net = SimNet::new(opts);
        let mut members = BTreeMap::new();
        for id in 1..=n {
            let ep = net.add_node(NodeId(id)).unwrap();
            let seeds = if id == 1 { vec![] } else { vec![1] };
            let m = Member::new(ep, options(&seeds, Duration::from_millis(100))).unwrap();
            members.insert(id, m);
        }
        SimCluster {
            net,
            members,
            now: 0,
        }
    }

    /// Steps every member each simulated millisecond for `ms`.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += MS;
            self.net.run_until(self.now);
            for m in self.members.values_mut() {
                m.run_once(self.now).unwrap();
            }
        }
    }

    fn converged(&self) -> bool {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        self.members.iter().all(|(id, m)| {
            let others: Vec<NodeId> = ids
                .iter()
                .filter(|o| *o != id)
                .map(|&o| NodeId(o))
                .collect();
            m.live_members() == others
        })
    }

    fn run_until_converged(&mut self, max_ms: u64) {
        for _ in 0..max_ms / 10 {
            if self.converged() {
                return;
            }
            self.run(10);
        }
        panic!("not converged in {max_ms} ms");
    }
}

#[test]
fn members_find_each_other_and_spread_keys() {
    let mut c = SimCluster::new(6, SimOptions::seeded(3));
    c.run_until_converged(5_000);
    for m in c.members.values() {
        let mut peers = m.gossip().peers().to_vec();
        peers.sort_unstable();
        let live: Vec<u64> = m.live_members().iter().map(|n| n.0).collect();
        assert_eq!(peers, live, "gossip's peers are SWIM's live members");
    }
    // A key written on member 2 reaches everyone, as an event where it arrives.
    c.members
        .get_mut(&2)
        .unwrap()
        .put(b"agent/7", b"host-2")
        .unwrap();
    let mut left = 2_000;
    while c.members.values().any(|m| m.get(b"agent/7").is_none()) {
        assert!(left > 0, "the key did not spread");
        c.run(10);
        left -= 10;
    }
    for (id, m) in c.members.iter_mut() {
        let got = m
            .drain_events()
            .into_iter()
            .any(|e| matches!(e, MeshEvent::KeyChanged(ch) if ch.key == b"agent/7"));
        assert_eq!(
            got,
            *id != 2,
            "member {id}: a change event where the key arrived"
        );
    }
    // A delete spreads too.
    c.members.get_mut(&5).unwrap().delete(b"agent/7").unwrap();
    c.run(2_000);
    assert!(c.members.values().all(|m| m.get(b"agent/7").is_none()));
}

#[test]
fn a_forced_round_spreads_a_key_before_the_scheduled_round() {
    let mut c = SimCluster::new(4, SimOptions::seeded(5));
    c.run_until_converged(5_000);
    // Wait until member 2's next scheduled round is at least 10 ms away (rounds: 20 ms).
    while c.members[&2].gossip().next_deadline_us() < c.now + 10 * MS {
        c.run(1);
    }
    let now = c.now;
    let m2 = c.members.get_mut(&2).unwrap();
    m2.put(b"k", b"v").unwrap();
    let (rounds, deadline) = (m2.gossip_stats().rounds, m2.gossip().next_deadline_us());
    let sent = m2.stats().frames_out;
    m2.round(now);
    assert_eq!(m2.gossip_stats().rounds, rounds + 1);
    assert!(
        m2.stats().frames_out >= sent + 3,
        "a push to each of the 3 peers"
    );
    assert_eq!(
        m2.gossip().next_deadline_us(),
        deadline,
        "schedule unchanged"
    );
    // Four members: fan-out min(ceil(log2 4) + 1, 10) = 3, every peer is pushed to; the
    // simulated links take at most a few ms, well before member 2's scheduled round.
    c.run(5);
    for (id, m) in &c.members {
        assert_eq!(m.get(b"k"), Some(&b"v"[..]), "member {id}");
    }
}

#[test]
fn a_crashed_member_is_reported_down_and_leaves_gossip() {
    let mut c = SimCluster::new(5, SimOptions::seeded(9));
    let rx = c.members.get_mut(&1).unwrap().subscribe();
    c.run_until_converged(5_000);
    c.net.crash(NodeId(4)).unwrap();
    let crashed = c.members.remove(&4).unwrap();
    let suspicion = crashed.swim().config().suspicion_timeout.as_millis() as u64;
    c.run(suspicion + 2_000);
    for (id, m) in c.members.iter_mut() {
        assert!(!m.live_members().contains(&NodeId(4)), "{id} still sees 4");
        assert!(!m.gossip().peers().contains(&4));
        let events = m.drain_events();
        assert!(
            events.contains(&MeshEvent::MemberDown(NodeId(4))),
            "{id}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, MeshEvent::MemberDown(n) if *n != NodeId(4))),
            "{id}: a healthy member went down: {events:?}"
        );
    }
    // The subscriber saw the same.
    let seen: Vec<MeshEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(seen.contains(&MeshEvent::MemberUp(NodeId(4))));
    assert!(seen.contains(&MeshEvent::MemberDown(NodeId(4))));
}

#[test]
fn a_scheduler_redelivers_the_tasks_of_agents_on_a_crashed_member() {
    use crate::priority::Priority;
    use crate::sched::{AgentId, AgentType, Liveness, MemLedger, Scheduler, SchedulerConfig};

    let mut c = SimCluster::new(4, SimOptions::seeded(21));
    c.run_until_converged(5_000);
    // The scheduler runs beside member 1; agent "a3" on member 3, "a2" on member 2.
    let mut s = Scheduler::new(
        SchedulerConfig {
            heartbeat_timeout: None,
            work_stealing: false,
            ..SchedulerConfig::default()
        },
        MemLedger::new(),
    )
    .unwrap();
    let ty = AgentType::new("t").unwrap();
    let (a2, a3) = (AgentId::new("a2").unwrap(), AgentId::new("a3").unwrap());
    s.register_agent(a3.clone(), ty.clone(), 4, Liveness::Token(3), 0)
        .unwrap();
    s.set_agent_host(&a3, Some(3)).unwrap();
    let tasks: Vec<_> = (0..3)
        .map(|_| s.submit(&ty, Priority::Normal, vec![], 0).unwrap())
        .collect();
    assert!(tasks.iter().all(|t| s.lease_of(*t).unwrap().0 == a3));
    s.register_agent(a2.clone(), ty.clone(), 4, Liveness::Token(2), 0)
        .unwrap();
    s.set_agent_host(&a2, Some(2)).unwrap();
    c.members.get_mut(&1).unwrap().drain_events();

    c.net.crash(NodeId(3)).unwrap();
    c.members.remove(&3).unwrap();
    let mut dead = Vec::new();
    for _ in 0..100 {
        c.run(100);
        for e in c.members.get_mut(&1).unwrap().drain_events() {
            dead.extend(s.on_membership(&e, c.now));
        }
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(
        dead,
        std::slice::from_ref(&a3),
        "member 1 learned that 3 is down"
    );
    // Every task leased on the dead host went to the agent on a live one, attempt 2.
    for t in &tasks {
        assert_eq!(s.lease_of(*t), Some((a2.clone(), 2)));
    }
    assert_eq!(s.agent_load(&a3), None);
}

#[test]
fn a_restarted_member_comes_back_as_a_new_generation() {
    // Six members, so that every gossip round pulls as well as pushes: a pull is what brings
    // an old key back to a member that restarted empty (or anti-entropy, every 10 s).
    let mut c = SimCluster::new(6, SimOptions::seeded(12));
    c.run_until_converged(5_000);
    c.members
        .get_mut(&3)
        .unwrap()
        .put(b"agent/x", b"on-3")
        .unwrap();
    c.run(1_000);
    // Member 3's process dies and comes back at once (before anyone suspects it), empty.
    c.net.crash(NodeId(3)).unwrap();
    c.members.remove(&3);
    c.net.restart(NodeId(3)).unwrap();
    let ep = c.net.endpoint(NodeId(3)).unwrap();
    let mut opts = options(&[1], Duration::from_millis(100));
    opts.swim.generation = 2;
    c.members.insert(3, Member::new(ep, opts).unwrap());
    c.run_until_converged(5_000);
    c.run(1_000);
    for (id, m) in c.members.iter_mut() {
        if *id == 3 {
            // Gossip brought its old key back to it.
            assert_eq!(m.get(b"agent/x"), Some(&b"on-3"[..]));
            continue;
        }
        let g = m
            .members()
            .into_iter()
            .find(|x| x.id == 3)
            .unwrap()
            .generation;
        assert_eq!(g, 2, "member {id} sees generation {g}");
        let events = m.drain_events();
        assert!(
            events.contains(&MeshEvent::MemberRestarted(NodeId(3))),
            "{id}: {events:?}"
        );
    }
}

#[test]
fn bad_frames_are_counted_and_dropped() {
    let mut c = SimCluster::new(2, SimOptions::seeded(1));
    c.run_until_converged(3_000);
    let mut raw = c.net.add_node(NodeId(9)).unwrap();
    let frames: [&[u8]; 5] = [
        b"",
        b"X hello",
        &[TAG_SWIM, 1, 2, 3],
        &[TAG_GOSSIP, 0xff, 0xff, 0xff, 0xff],
        &[TAG_SWIM],
    ];
    for f in frames {
        raw.send(NodeId(1), f).unwrap();
    }
    c.run(5);
    let st = c.members[&1].stats();
    assert_eq!(st.unknown_tag, 2);
    assert_eq!(st.rejected, 3);
    assert_eq!(c.members[&1].live_members(), vec![NodeId(2)]);
    // Still working.
    c.run(1_000);
    assert!(c.converged());
}

#[test]
fn sends_answered_full_are_dropped_and_counted() {
    // Links that hold one frame in flight: bursts overflow them.
    let opts = SimOptions {
        link_capacity: 1,
        ..SimOptions::seeded(5)
    };
    let mut c = SimCluster::new(4, opts);
    c.members
        .get_mut(&1)
        .unwrap()
        .put(b"k", &[7u8; 2000])
        .unwrap();
    c.run(3_000);
    let full: u64 = c.members.values().map(|m| m.stats().dropped_full).sum();
    assert!(full > 0, "no send was refused");
    // Datagram semantics: the protocols retransmit, the cluster still forms.
    c.run_until_converged(10_000);
}

/// `n` members over rings, one thread each; member `victim` is stopped (no leave: a crash)
/// once the cluster has formed, and the others must report it down.
#[test]
fn ten_members_over_rings_detect_a_killed_one() {
    let n = 10u64;
    let victim = 7u64;
    let dir = TempDir::new("mesh-member");
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    // Create every inbox first so no early send finds a peer missing.
    let transports: Vec<RingTransport> = ids
        .iter()
        .map(|&id| {
            let peers: Vec<NodeId> = ids.iter().copied().filter(|&p| p != id).collect();
            RingTransport::open(id, &peers, RingNetOptions::in_dir(&dir.0)).unwrap()
        })
        .collect();
    let live = Arc::new(Mutex::new(LiveLists::new()));
    let downs = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let stops: Vec<Arc<AtomicBool>> = ids
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut threads = Vec::new();
    for (t, stop) in transports.into_iter().zip(stops.iter().cloned()) {
        let id = t.local_id().0;
        let seeds: Vec<u64> = if id == 1 { vec![] } else { vec![1] };
        let mut opts = options(&seeds, Duration::from_millis(200));
        // Generous for a shared 2-core machine: a member is declared down 2 s after it is
        // suspected.
        opts.swim.suspicion_timeout = Duration::from_secs(2);
        let (live, downs) = (live.clone(), downs.clone());
        threads.push(std::thread::spawn(move || {
            let mut m = Member::new(t, opts).unwrap();
            m.put(format!("agent/{id}").as_bytes(), b"up").unwrap();
            while !stop.load(Ordering::Acquire) {
                m.poll(Duration::from_millis(20)).unwrap();
                for e in m.drain_events() {
                    if let MeshEvent::MemberDown(d) = e {
                        downs.lock().unwrap().push((id, d.0));
                    }
                }
                let ids = m.live_members().iter().map(|n| n.0).collect();
                live.lock().unwrap().insert(id, ids);
            }
            (id, m.gossip().len(), m.stats(), m.swim().local_health())
        }));
    }
    let wait = |what: &str, secs: u64, ok: &dyn Fn(&LiveLists) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if ok(&live.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                live.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the cluster did not form", 20, &|l| {
        l.len() == n as usize && l.values().all(|v| v.len() == n as usize - 1)
    });

    stops[victim as usize - 1].store(true, Ordering::Release);
    let killed_at = Instant::now();
    wait("the killed member was not detected", 20, &|l| {
        l.iter()
            .filter(|(&id, _)| id != victim)
            .all(|(_, v)| v.len() == n as usize - 2 && !v.contains(&victim))
    });
    let took = killed_at.elapsed();
    for s in &stops {
        s.store(true, Ordering::Release);
    }
    let mut keys = Vec::new();
    for t in threads {
        let (id, len, st, health) = t.join().unwrap();
        assert_eq!(st.rejected + st.unknown_tag, 0, "member {id}: {st:?}");
        keys.push((id, len, health));
    }
    let downs = downs.lock().unwrap().clone();
    assert!(
        downs.iter().all(|&(_, d)| d == victim),
        "a healthy member was declared down: {downs:?}"
    );
    // Every member had every agent's key by the end (gossip over the same rings).
    assert!(
        keys.iter().all(|&(_, len, _)| len == n as usize),
        "{keys:?}"
    );
    eprintln!("10 members over rings: the killed member was detected in {took:?}");
}
