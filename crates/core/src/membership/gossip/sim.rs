//! A seeded discrete-event simulator of gossip members — a **test and bench harness**, not
//! part of a running engine.
//!
//! [`Sim`] runs N [`Gossip`] members (ids `0..N`) on one simulated clock: each member is
//! ticked at its [`Gossip::next_deadline_us`], each datagram it sends is delivered after a
//! random latency in `latency_us` (so datagrams overtake each other), dropped with
//! probability `loss`, duplicated with probability `duplicate`, or blocked by a partition. Everything is drawn from one seeded generator, so a run is a function of its
//! [`SimConfig`] and the calls made on it. It handles N = 1000 in well under a second per
//! simulated second.
//!
//! [`memberlist_convergence`] is the peer model measured beside ours in the same kind of
//! event loop: Serf/memberlist's push-only rumor mongering with its LAN defaults (a gossip
//! tick every 200 ms to 3 random members, an update retransmitted
//! `4 * ceil(log10(N + 1))` times), so both are measured the same way.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Gossip, GossipConfig, Version};
use crate::error::{Error, Result};

/// splitmix64, the simulator's seeded generator.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        super::mix(self.0)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Members (ids `0..nodes`), each with every other as peer.
    pub nodes: usize,
    /// Probability that a datagram is lost, `0.0..1.0`.
    pub loss: f64,
    /// Probability that a datagram (not lost) is delivered twice, each copy with its own
    /// latency, `0.0..1.0`.
    pub duplicate: f64,
    /// One-way latency, uniform in `lo..=hi` microseconds.
    pub latency_us: (u64, u64),
    /// Seed of the network and of the members (member `i` gets `seed ^ i` mixed).
    pub seed: u64,
    /// The members' settings (`seed` is replaced per member).
    pub gossip: GossipConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 16,
            loss: 0.0,
            duplicate: 0.0,
            latency_us: (200, 1_000),
            seed: 1,
            gossip: GossipConfig::default(),
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Tick member `.0` (if this is still its scheduled time).
    Tick(usize),
    /// Deliver a datagram: from, to, payload.
    Deliver(usize, usize, Vec<u8>),
}

/// Counters of a simulation's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams the members sent.
    pub sent: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Dropped by loss.
    pub lost: u64,
    /// Blocked by a partition.
    pub blocked: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Delivered.
    pub delivered: u64,
    /// The largest datagram sent, in bytes.
    pub largest: usize,
}

/// A seeded simulation of gossip members; see the module documentation.
#[derive(Debug)]
pub struct Sim {
    members: Vec<Gossip>,
    /// Partition group of each member: datagrams cross only within a group.
    group: Vec<u32>,
    down: Vec<bool>,
    scheduled: Vec<u64>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: u64,
    rng: Rng,
    loss: f64,
    duplicate: f64,
    latency: (u64, u64),
    stats: NetStats,
    out: Vec<super::Datagram>,
}

impl Sim {
    /// A simulation of `config.nodes` members at time 0, each ticked once (which schedules
    /// its first round at a random point of the first interval).
    pub fn new(config: SimConfig) -> Result<Sim> {
        if !(0.0..1.0).contains(&config.loss) || !(0.0..1.0).contains(&config.duplicate) {
            return Err(Error::invalid("sim loss and duplicate must be in 0.0..1.0"));
        }
        if config.latency_us.0 > config.latency_us.1 {
            return Err(Error::invalid(
                "sim latency_us must be (lo, hi) with lo <= hi",
            ));
        }
        let n = config.nodes;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let mut g = config.gossip.clone();
            g.seed = super::mix(config.seed ^ super::mix(i as u64 + 1));
            let mut m = Gossip::new(i as u64, g)?;
            m.set_peers(0..n as u64);
            members.push(m);
        }
        let mut sim = Sim {
            members,
            group: vec![0; n],
            down: vec![false; n],
            scheduled: vec![u64::MAX; n],
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng: Rng(super::mix(config.seed)),
            loss: config.loss,
            duplicate: config.duplicate,
            latency: config.latency_us,
            stats: NetStats::default(),
            out: Vec::new(),
        };
        for i in 0..n {
            sim.tick(i);
        }
        Ok(sim)
    }

    /// The simulated time, microseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Gossip {
        &self.members[i]
    }

    /// Member `i`, to write to (send what it returns with [`Sim::send`]).
    pub fn member_mut(&mut self, i: usize) -> &mut Gossip {
        &mut self.members[i]
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The network counters.
    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    /// `put` on member `i` at the current time.
    pub fn put(&mut self, i: usize, key: &[u8], value: &[u8]) -> Result<Version> {
        let now = self.now;
        self.members[i].put(key, value, now)
    }

    /// `delete` on member `i` at the current time.
    pub fn delete(&mut self, i: usize, key: &[u8]) -> Result<Option<Version>> {
        let now = self.now;
        self.members[i].delete(key, now)
    }

    /// Runs one push-pull round on member `i` now (its schedule unchanged).
    pub fn round(&mut self, i: usize) {
        let now = self.now;
        let mut out = std::mem::take(&mut self.out);
        self.members[i].round(now, &mut out);
        self.send(i, &mut out);
        self.out = out;
    }

    /// Puts member `i` in partition group `g` (datagrams cross only within a group; all
    /// start in group 0).
    pub fn set_group(&mut self, i: usize, g: u32) {
        self.group[i] = g;
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// Stops (`true`) or restarts member `i`: a stopped member is neither ticked nor
    /// delivered to (what arrives meanwhile is lost).
    pub fn set_down(&mut self, i: usize, down: bool) {
        self.down[i] = down;
        if !down {
            self.reschedule(i);
        }
    }

    /// Sends `out`, datagrams from member `from`, through the simulated network.
    pub fn send(&mut self, from: usize, out: &mut Vec<super::Datagram>) {
        for d in out.drain(..) {
            self.stats.sent += 1;
            self.stats.bytes += d.payload.len() as u64;
            self.stats.largest = self.stats.largest.max(d.payload.len());
            let to = d.to as usize;
            if to >= self.members.len() {
                continue;
            }
            if self.rng.chance(self.loss) {
                self.stats.lost += 1;
                continue;
            }
            if self.rng.chance(self.duplicate) {
                self.stats.duplicated += 1;
                let at = self.now + self.rng.range(self.latency.0, self.latency.1);
                self.push(at, Event::Deliver(from, to, d.payload.clone()));
            }
            let at = self.now + self.rng.range(self.latency.0, self.latency.1);
            self.push(at, Event::Deliver(from, to, d.payload));
        }
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    fn reschedule(&mut self, i: usize) {
        let at = self.members[i].next_deadline_us().max(self.now);
        if at < self.scheduled[i] || self.scheduled[i] < self.now {
            self.scheduled[i] = at;
            self.push(at, Event::Tick(i));
        }
    }

    fn tick(&mut self, i: usize) {
        let now = self.now;
        let mut out = std::mem::take(&mut self.out);
        self.members[i].tick(now, &mut out);
        self.send(i, &mut out);
        self.out = out;
        self.scheduled[i] = u64::MAX;
        self.reschedule(i);
    }

    /// Processes the next event; false when there is none at or before `until`.
    pub fn step(&mut self, until: u64) -> bool {
        self.step_to(until).is_some()
    }

    /// Processes the next event at or before `until`: `None` when there is none, else the
    /// member a datagram was delivered to, if any.
    fn step_to(&mut self, until: u64) -> Option<Option<usize>> {
        let Reverse((at, _, _)) = self.queue.peek()?;
        if *at > until {
            return None;
        }
        let Reverse((at, _, event)) = self.queue.pop()?;
        self.now = self.now.max(at);
        match event {
            Event::Tick(i) => {
                if self.scheduled[i] == at && !self.down[i] {
                    self.tick(i);
                }
            }
            Event::Deliver(from, to, payload) => {
                if self.group[from] != self.group[to] {
                    self.stats.blocked += 1;
                } else if !self.down[to] {
                    self.stats.delivered += 1;
                    let now = self.now;
                    let mut out = std::mem::take(&mut self.out);
                    // Members only send valid datagrams; an error here is a bug.
                    let r = self.members[to].handle(from as u64, &payload, now, &mut out);
                    debug_assert!(r.is_ok(), "{r:?}");
                    self.send(to, &mut out);
                    self.out = out;
                    if self.members[to].next_deadline_us() < self.scheduled[to] {
                        self.reschedule(to);
                    }
                    return Some(Some(to));
                }
            }
        }
        Some(None)
    }

    /// Runs every event up to `until` and sets the clock there.
    pub fn run_until(&mut self, until: u64) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Members (up or down) whose version of `key` is at least `version`.
    pub fn knowing(&self, key: &[u8], version: Version) -> usize {
        self.members
            .iter()
            .filter(|m| m.version(key).is_some_and(|v| v >= version))
            .count()
    }

    /// Runs until at least `need` members know `version` of `key` (checked after each
    /// event), or until `deadline`; the time it was reached.
    pub fn run_until_known(
        &mut self,
        key: &[u8],
        version: Version,
        need: usize,
        deadline: u64,
    ) -> Option<u64> {
        let knows = |m: &Gossip| m.version(key).is_some_and(|v| v >= version);
        let mut known: Vec<bool> = self.members.iter().map(knows).collect();
        let mut count = known.iter().filter(|&&k| k).count();
        while count < need {
            // Only a delivery changes who knows, and only its receiver.
            match self.step_to(deadline) {
                None => {
                    self.now = self.now.max(deadline);
                    return None;
                }
                Some(Some(to)) if !known[to] && knows(&self.members[to]) => {
                    known[to] = true;
                    count += 1;
                }
                Some(_) => {}
            }
        }
        Some(self.now)
    }

    /// Whether every member that is up holds the same keys, values and versions.
    pub fn converged(&self) -> bool {
        let mut up = self.members.iter().zip(&self.down).filter(|(_, d)| !**d);
        let Some((first, _)) = up.next() else {
            return true;
        };
        up.all(|(m, _)| same_state(first, m))
    }
}

/// Whether two members hold the same keys, values and versions (tombstones included).
fn same_state(a: &Gossip, b: &Gossip) -> bool {
    a.items.len() == b.items.len()
        && a.items.iter().zip(&b.items).all(|((ha, sa), (hb, sb))| {
            ha == hb
                && sa.len() == sb.len()
                && sa.iter().all(|i| {
                    sb.iter()
                        .any(|j| i.key == j.key && i.value == j.value && i.version == j.version)
                })
        })
}

/// The members that make up 99.99 % of `n` (rounded up).
pub fn quorum_9999(n: usize) -> usize {
    (n * 9999).div_ceil(10_000)
}

/// One convergence measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// Simulated microseconds from the write until 99.99 % of members knew it.
    pub us: u64,
    /// The same in round intervals (of the model measured).
    pub rounds: f64,
    /// Datagrams sent per member while spreading it.
    pub datagrams_per_member: f64,
}

/// Measures how long one `put` on member 0 takes to reach 99.99 % of `config.nodes` members
/// (after a warm-up of two round intervals); `None` if not within `deadline_us`.
pub fn gossip_convergence(config: &SimConfig, deadline_us: u64) -> Result<Option<Convergence>> {
    let interval = config.gossip.round_interval_us;
    let mut sim = Sim::new(config.clone())?;
    sim.run_until(2 * interval);
    let sent0 = sim.net_stats().sent;
    let start = sim.now();
    let v = sim.put(0, b"probe", b"value")?;
    let need = quorum_9999(config.nodes);
    Ok(sim
        .run_until_known(b"probe", v, need, start + deadline_us)
        .map(|t| Convergence {
            us: t - start,
            rounds: (t - start) as f64 / interval as f64,
            datagrams_per_member: (sim.net_stats().sent - sent0) as f64 / config.nodes as f64,
        }))
}

/// The memberlist model's settings (its LAN defaults).
#[derive(Debug, Clone, Copy)]
pub struct MemberlistModel {
    /// The gossip interval (200 ms).
    pub interval_us: u64,
    /// Members gossiped to per tick (3).
    pub fan_out: usize,
    /// The retransmit multiplier (4): an update is sent `mult * ceil(log10(N + 1))` times.
    pub retransmit_mult: u32,
}

impl Default for MemberlistModel {
    fn default() -> Self {
        MemberlistModel {
            interval_us: 200_000,
            fan_out: 3,
            retransmit_mult: 4,
        }
    }
}

/// Measures the memberlist model: one update from member 0 spread by push-only rumor
/// mongering (each member's gossip tick, at a random phase, sends it to `fan_out` random
/// others while it was sent fewer than `retransmit_mult * ceil(log10(N + 1))` times), with
/// `config`'s members, loss, latency and seed; the time until 99.99 % knew it, or `None` if
/// the rumor died out first or `deadline_us` passed.
pub fn memberlist_convergence(
    config: &SimConfig,
    model: MemberlistModel,
    deadline_us: u64,
) -> Option<Convergence> {
    let n = config.nodes;
    let mut rng = Rng(super::mix(config.seed ^ 0x6d65_6d62_6572));
    let limit = model.retransmit_mult * (((n + 1) as f64).log10().ceil() as u32).max(1);
    let mut knows = vec![false; n];
    let mut transmits = vec![0u32; n];
    // Events: (time, seq, kind): kind = 0 tick of member, 1 delivery to member.
    let mut q: BinaryHeap<Reverse<(u64, u64, u8, usize)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let start = 2 * model.interval_us;
    for i in 0..n {
        seq += 1;
        q.push(Reverse((
            start + rng.range(0, model.interval_us - 1),
            seq,
            0,
            i,
        )));
    }
    knows[0] = true;
    let mut known = 1;
    // Members that know the update and may still send it.
    let mut active = 1usize;
    let need = quorum_9999(n);
    let mut sent = 0u64;
    let mut scratch: Vec<usize> = Vec::with_capacity(n);
    let done = |t: u64, sent: u64| Convergence {
        us: t - start,
        rounds: (t - start) as f64 / model.interval_us as f64,
        datagrams_per_member: sent as f64 / n as f64,
    };
    if known >= need {
        return Some(done(start, 0));
    }
    while let Some(Reverse((t, _, kind, i))) = q.pop() {
        if t > start + deadline_us || active == 0 && kind == 0 {
            return None;
        }
        if kind == 1 {
            if !knows[i] {
                knows[i] = true;
                known += 1;
                active += 1;
                if known >= need {
                    return Some(done(t, sent));
                }
            }
            continue;
        }
        // A gossip tick of member i.
        if knows[i] && transmits[i] < limit {
            scratch.clear();
            scratch.extend((0..n).filter(|&j| j != i));
            let k = model.fan_out.min(scratch.len());
            for a in 0..k {
                let b = a + (rng.next() % (scratch.len() - a) as u64) as usize;
                scratch.swap(a, b);
            }
            for &j in &scratch[..k] {
                transmits[i] += 1;
                sent += 1;
                if !rng.chance(config.loss) {
                    seq += 1;
                    let at = t + rng.range(config.latency_us.0, config.latency_us.1);
                    q.push(Reverse((at, seq, 1, j)));
                }
            }
            if transmits[i] >= limit {
                active -= 1;
            }
        }
        seq += 1;
        q.push(Reverse((t + model.interval_us, seq, 0, i)));
    }
    None
}
