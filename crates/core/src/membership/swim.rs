//! SWIM membership and failure detection, with suspicion, refutation by incarnation and a
//! Lifeguard-like local health, as a state machine without I/O.
//!
//! The protocol core is the [`foca`] crate (SWIM + infection-style dissemination + suspicion:
//! direct probe, indirect probes through `k` members, suspicion refuted by the suspect raising
//! its incarnation, periodic gossip and announce). [`Swim`] is its driver: it gives foca our
//! wire format (an envelope with a version byte and a CRC32C around a bounds-checked codec,
//! every datagram validated whole before foca sees it; `swim/wire.rs`), our identities (a member id plus a generation, so a restarted
//! process rejoins as a new identity that replaces its previous life), a seeded random
//! source, and a timer wheel on the caller's clock (`now_us`). Nothing here sends, sleeps or
//! reads a clock: every call takes `now_us` and appends the datagrams to send to `out`.
//!
//! ```
//! use erlmcp_flow::membership::swim::{Swim, SwimConfig};
//! use erlmcp_flow::membership::Datagram;
//!
//! let mut a = Swim::new(1, SwimConfig::default()).unwrap();
//! let mut b = Swim::new(2, SwimConfig::default()).unwrap();
//! let mut out = Vec::new();
//! b.join(&[1], 0, &mut out).unwrap(); // b announces itself to a
//! // A perfect network: deliver until quiet.
//! while let Some(Datagram { to, payload }) = out.pop() {
//!     let (from, node) = if to == 1 { (2, &mut a) } else { (1, &mut b) };
//!     node.handle(from, &payload, 10, &mut out).unwrap();
//! }
//! assert_eq!(a.live_members(), vec![2]);
//! assert_eq!(b.live_members(), vec![1]);
//! ```
//!
//! # Local health (what is implemented of Lifeguard)
//!
//! foca has no Lifeguard. A member that runs late (CPU starvation, a paused process) would
//! otherwise accuse healthy members: it judges a probe when its deadline has long passed,
//! before the acks of the indirect probes it has only just sent could come back. And a
//! starved *suspect* refutes late. The measures, all in this driver ([`SwimConfig::local_health`],
//! on by default):
//!
//! 1. **Read before judging.** The host loop hands received datagrams to [`Swim::handle`]
//!    before calling [`Swim::tick`], so acks that arrived during a stall count.
//! 2. **Late indirect probes get their whole window.** When the indirect-probe timer fires
//!    `L` µs late, the end of that probe cycle (where foca decides "suspect") moves `L` later.
//! 3. **A local health score** `h` in `0..max_health` (Lifeguard's LHM). It goes up by one
//!    on a late tick (a timer overdue by more than [`SwimConfig::late_threshold`]; at most
//!    once per probe period), on a failed probe of ours (the member answered neither directly
//!    nor through the indirect probes) and on a refutation (the cluster suspected *us*); it
//!    goes down by one for each probe cycle of ours that succeeded.
//! 4. **Timeouts scaled by the multiplier** `h + 1` ([`Swim::local_health`]): the probe
//!    period, the probe RTT and the suspicion timeout of the suspicions we raise are
//!    multiplied when their timers are armed. An unhealthy member probes less often and
//!    waits longer before accusing; a member that keeps running late stays at the maximum.
//! 5. **Buddy system.** When we suspect a member we tell it directly (a gossip datagram
//!    carrying only its suspicion) instead of waiting for gossip to reach it; and when a
//!    datagram makes us refute a suspicion of ourselves, the refutation goes straight back to
//!    its sender (the suspecter, for a buddy notice). Only the suspecter's timer can declare
//!    a member down, so the refutation must reach that member in time.
//!
//! Not implemented: Lifeguard's "dogpile" (suspicion timeouts that shrink with independent
//! confirmations) and nacks in indirect probes; foca has no hook for either.
//!
//! One foca behaviour is corrected: it sends `TurnUndead` ("you are down") to a member whose
//! suspicion timer ran out even when that member refuted in time; such messages are dropped
//! ([`SwimStats::spurious_turn_undead`]), or the member would renew itself for nothing.
//!
//! # Identities, restarts and stale input
//!
//! On the wire a member is `(id, generation)`. [`SwimConfig::generation`] must grow across
//! restarts of a member (the mesh host loop uses the wall clock in µs): the new identity wins
//! the conflict with the old one everywhere ([`MemberEvent::Restarted`]). A member declared
//! down while alive renews itself with `generation + 1` and rejoins
//! ([`MemberEvent::Rejoined`]). Updates carrying an older incarnation than known are ignored
//! by the SWIM ordering (foca); datagrams addressed to an older generation of this member are
//! dropped and counted ([`SwimStats::stale`]); datagrams whose sender is not who the
//! transport says, that are not addressed to this member, truncated, oversized, of an unknown
//! version or with a bad checksum are refused with an error and counted.

mod wire;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{
    Codec, Config, Foca, Message, NoCustomBroadcast, Notification, OwnedNotification,
    PeriodicParams, Runtime, State, Timer,
};

use self::wire::{NodeIdentity, WireCodec, ENVELOPE_LEN};
use super::Datagram;
use crate::error::{Error, ErrorKind, Result};

/// The configuration of a [`Swim`] member. Every member of a cluster should use the same
/// timings (each member's own are what it uses to judge the others).
#[derive(Debug, Clone, PartialEq)]
pub struct SwimConfig {
    /// The seed of this member's random choices (whom to probe, to gossip to). Mixed with the
    /// member's id and generation, so one seed for a whole cluster is fine; the same seed and
    /// the same inputs give the same outputs.
    pub seed: u64,
    /// The generation of this member's process: must be higher than that of any previous
    /// life of the same id (a wall-clock time in µs at start is a good choice). 0 is fine for
    /// a member that never restarts.
    pub generation: u64,
    /// How often this member probes one other member (SWIM's protocol period).
    pub probe_period: Duration,
    /// How long the direct probe waits for an ack before asking `indirect_probes` members to
    /// probe on our behalf (less than `probe_period`; the probe fails at the end of the
    /// period).
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a member we suspect has to refute before we declare it down.
    pub suspicion_timeout: Duration,
    /// How many times each membership update is piggybacked before it is dropped.
    pub max_transmissions: u8,
    /// How often updates are pushed to `gossip_fanout` random members (besides piggybacking
    /// on probes); `None` for pure SWIM.
    pub gossip_period: Option<Duration>,
    /// Members per periodic gossip.
    pub gossip_fanout: usize,
    /// How often a member asks one random member for its member list (to learn the whole
    /// cluster fast after joining) and, at twice that, announces itself to one member it
    /// believes down (to heal partitions); `None` to disable both.
    pub announce_period: Option<Duration>,
    /// How often [`Swim::join`] announces again to its seeds until one answers.
    pub join_retry: Duration,
    /// How long a member declared down is remembered (its old identity refused) before it is
    /// forgotten.
    pub remove_down_after: Duration,
    /// The largest datagram this member sends and accepts, envelope included.
    pub max_datagram: usize,
    /// The largest health multiplier ([`Swim::local_health`]), at least 1 (1 = local health
    /// off). Lifeguard's default is 8.
    pub max_health: u32,
    /// A timer delivered later than this means this member was not running (starved, paused):
    /// the health score goes up (module docs).
    pub late_threshold: Duration,
    /// The Lifeguard-like measures (module docs): the health multiplier and the protection of
    /// late probe cycles. On by default; off gives foca's plain SWIM (for comparison).
    pub local_health: bool,
}

impl SwimConfig {
    /// LAN timings (memberlist's defaults: 1 s probe period, 500 ms probe timeout, 3 indirect
    /// probes, gossip to 3 members every 200 ms) with the cluster-size dependent parts for `n`
    /// members: suspicion timeout `4 × max(1, log10 n) × probe_period` and updates
    /// piggybacked `ceil(4 × log10(n + 1))` times.
    pub fn for_cluster_size(n: usize) -> SwimConfig {
        let mut c = SwimConfig {
            seed: 0,
            generation: 0,
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            indirect_probes: 3,
            suspicion_timeout: Duration::ZERO,
            max_transmissions: 0,
            gossip_period: Some(Duration::from_millis(200)),
            gossip_fanout: 3,
            announce_period: Some(Duration::from_secs(30)),
            join_retry: Duration::from_secs(1),
            remove_down_after: Duration::from_secs(24 * 3600),
            max_datagram: 1400,
            max_health: 8,
            late_threshold: Duration::from_millis(100),
            local_health: true,
        };
        let n = n.max(1) as f64;
        c.max_transmissions = (4.0 * (n + 1.0).log10()).ceil().clamp(3.0, 255.0) as u8;
        c.suspicion_timeout = c.probe_period.mul_f64(4.0 * n.log10().max(1.0));
        c
    }

    /// The same configuration with every timing scaled so the probe period is `period`
    /// (probe RTT, suspicion timeout, gossip and announce periods, join retry and late
    /// threshold keep their ratio to it). For fast local clusters and simulations.
    pub fn with_probe_period(mut self, period: Duration) -> SwimConfig {
        let old = self.probe_period.as_secs_f64().max(1e-9);
        let f = period.as_secs_f64() / old;
        self.probe_period = period;
        self.probe_rtt = self.probe_rtt.mul_f64(f);
        self.suspicion_timeout = self.suspicion_timeout.mul_f64(f);
        self.gossip_period = self.gossip_period.map(|d| d.mul_f64(f));
        self.announce_period = self.announce_period.map(|d| d.mul_f64(f));
        self.join_retry = self.join_retry.mul_f64(f);
        self.late_threshold = self.late_threshold.mul_f64(f);
        self
    }

    /// Checks the configuration; `InvalidArgument` saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("swim config: {what}: {self:?}")));
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return bad("needs 0 < probe_rtt < probe_period");
        }
        if self.suspicion_timeout.is_zero() || self.join_retry.is_zero() {
            return bad("suspicion_timeout and join_retry must be positive");
        }
        if self.gossip_period.is_some_and(|d| d.is_zero())
            || self.announce_period.is_some_and(|d| d.is_zero())
        {
            return bad("gossip_period and announce_period must be positive when set");
        }
        if self.indirect_probes == 0 || self.gossip_fanout == 0 || self.max_transmissions == 0 {
            return bad("indirect_probes, gossip_fanout and max_transmissions must be >= 1");
        }
        if self.max_health == 0 {
            return bad("max_health must be >= 1");
        }
        if !(ENVELOPE_LEN + 128..=65_535).contains(&self.max_datagram) {
            return bad("max_datagram must be in 133..=65535");
        }
        Ok(())
    }

    fn foca_config(&self) -> Config {
        let mut c = Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes = NonZeroUsize::new(self.indirect_probes).expect("validated");
        c.max_transmissions = NonZeroU8::new(self.max_transmissions).expect("validated");
        c.suspect_to_down_after = self.suspicion_timeout;
        c.remove_down_after = self.remove_down_after;
        c.max_packet_size = NonZeroUsize::new(self.max_datagram - ENVELOPE_LEN).expect("validated");
        c.notify_down_members = true;
        let one = NonZeroUsize::new(1).expect("1 > 0");
        c.periodic_announce = self.announce_period.map(|frequency| PeriodicParams {
            frequency,
            num_members: one,
        });
        c.periodic_announce_to_down_members =
            self.announce_period.map(|frequency| PeriodicParams {
                frequency: frequency * 2,
                num_members: one,
            });
        c.periodic_gossip = self.gossip_period.map(|frequency| PeriodicParams {
            frequency,
            num_members: NonZeroUsize::new(self.gossip_fanout).expect("validated"),
        });
        c
    }
}

impl Default for SwimConfig {
    /// [`SwimConfig::for_cluster_size`] of 16.
    fn default() -> Self {
        SwimConfig::for_cluster_size(16)
    }
}

/// What a member believes of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared down unless it refutes in time. Still counted as live.
    Suspect,
    /// Declared down (or left); remembered for `remove_down_after`.
    Down,
}

/// A member of the cluster as this member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its id (the same number as its `net::NodeId`).
    pub id: u64,
    /// The generation of its process (higher after a restart).
    pub generation: u64,
    /// Its incarnation: raised by the member itself to refute a suspicion.
    pub incarnation: u16,
    /// Alive, suspect or down.
    pub state: MemberState,
}

/// A change of the membership, in the order it happened ([`Swim::drain_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberEvent {
    /// A member became live (joined, or came back under a new generation after being down).
    Up(u64),
    /// A member became suspect (by our probe or by gossip).
    Suspect(u64),
    /// A live member was declared down, or left.
    Down(u64),
    /// A new generation of a live member replaced the one we knew: the old process is gone
    /// (a host that reacts to `Down` by reclaiming a member's work should do so here too).
    Restarted(u64),
    /// The cluster declared *this* member down while it was running; it renewed its identity
    /// to this generation and rejoined.
    Rejoined {
        /// The new generation.
        generation: u64,
    },
}

/// Counters of a [`Swim`] member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Datagrams appended to `out`.
    pub sent: u64,
    /// Datagrams given to [`Swim::handle`].
    pub received: u64,
    /// Datagrams refused with an error (malformed, oversized, misaddressed, spoofed).
    pub rejected: u64,
    /// Datagrams addressed to an older generation of this member, dropped.
    pub stale: u64,
    /// Datagrams ignored because this member has left.
    pub ignored: u64,
    /// Probe cycles started.
    pub probes: u64,
    /// Probe cycles that ended with the probed member suspected.
    pub failed_probes: u64,
    /// Times this member raised its incarnation to refute a suspicion of itself.
    pub refutations: u64,
    /// Ticks that came later than `late_threshold` (this member was starved).
    pub late_ticks: u64,
    /// The total lateness (µs) of the late ticks.
    pub stalled_us: u64,
    /// Suspicions told directly to the suspect (Lifeguard's buddy system).
    pub buddy_notices: u64,
    /// Refutations sent straight back to the member that told us of our suspicion.
    pub direct_refutations: u64,
    /// Probe cycles whose end was pushed back because their indirect probes went out late.
    pub delayed_cycles: u64,
    /// Timer events foca refused (a probe cycle it found incomplete, ...).
    pub timer_errors: u64,
    /// Times this member was declared down and rejoined under a new generation.
    pub rejoins: u64,
    /// `TurnUndead` messages foca asked to send to a member that refuted its suspicion in
    /// time, dropped (see the module docs).
    pub spurious_turn_undead: u64,
}

/// SplitMix64 as foca's random source: seeded, and the same on every platform.
#[derive(Debug, Clone)]
struct SwimRng(u64);

impl rand_core::RngCore for SwimRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What foca asked for during one call: collected, then acted on by [`Swim::flush`].
#[derive(Default)]
struct Collect {
    sends: Vec<(NodeIdentity, Vec<u8>)>,
    timers: Vec<(Timer<NodeIdentity>, Duration)>,
    notes: Vec<OwnedNotification<NodeIdentity>>,
}

impl Runtime<NodeIdentity> for Collect {
    fn notify(&mut self, notification: Notification<NodeIdentity>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeIdentity>, after: Duration) {
        self.timers.push((event, after));
    }
}

type Core = Foca<NodeIdentity, WireCodec, SwimRng, NoCustomBroadcast>;

/// Timers one `tick` fires at most (a guard: foca never arms a timer due immediately).
const MAX_FIRED_PER_TICK: usize = 4096;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One SWIM member: feed it datagrams ([`Swim::handle`]) and ticks ([`Swim::tick`] at
/// [`Swim::next_deadline_us`]), send what it appends to `out`.
pub struct Swim {
    id: u64,
    config: SwimConfig,
    foca: Core,
    rt: Collect,
    /// Armed timers by (due µs, arming order).
    timers: BTreeMap<(u64, u64), Timer<NodeIdentity>>,
    timer_seq: u64,
    now_us: u64,
    seeds: Vec<u64>,
    next_join_us: Option<u64>,
    active: bool,
    left: bool,
    /// The local health score, `0..max_health`.
    health: u32,
    /// When a late tick last raised the health score.
    last_late_us: Option<u64>,
    /// A probe cycle of ours is running (an indirect-probe timer was armed for it).
    probing: bool,
    /// The highest incarnation (of the current generation) this member has sent.
    incarnation: u16,
    generation: u64,
    suspects: HashSet<u64>,
    events: Vec<MemberEvent>,
    stats: SwimStats,
}

impl std::fmt::Debug for Swim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swim")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("now_us", &self.now_us)
            .field("active", &self.active)
            .field("left", &self.left)
            .field("health", &self.health)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Swim {
    /// A member `id` that knows no one yet ([`Swim::join`] to contact seeds, or wait to be
    /// contacted). `InvalidArgument` for a bad configuration.
    pub fn new(id: u64, config: SwimConfig) -> Result<Swim> {
        config.validate()?;
        let identity = NodeIdentity {
            id,
            generation: config.generation,
        };
        let mut mix = SwimRng(id.rotate_left(32) ^ config.generation);
        let seed = config.seed ^ rand_core::RngCore::next_u64(&mut mix);
        let foca = Foca::new(identity, config.foca_config(), SwimRng(seed), WireCodec);
        Ok(Swim {
            id,
            generation: config.generation,
            config,
            foca,
            rt: Collect::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            now_us: 0,
            seeds: Vec::new(),
            next_join_us: None,
            active: false,
            left: false,
            health: 0,
            last_late_us: None,
            probing: false,
            incarnation: 0,
            suspects: HashSet::new(),
            events: Vec::new(),
            stats: SwimStats::default(),
        })
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// This member's current generation (its configured one, or higher after a rejoin).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configuration.
    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// True once some member has answered (this member is part of a cluster), until every
    /// other member is down or this one left.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Announces this member to `seeds` (other members' ids; its own id is skipped), again
    /// every `join_retry` until one answers. With no seeds it waits to be contacted.
    /// `InvalidArgument` after [`Swim::leave`].
    pub fn join(&mut self, seeds: &[u64], now_us: u64, out: &mut Vec<Datagram>) -> Result<()> {
        if self.left {
            return Err(Error::invalid(format!(
                "swim member {} has left: a new member (a higher generation) must join",
                self.id
            )));
        }
        self.advance(now_us);
        self.seeds = seeds.iter().copied().filter(|&s| s != self.id).collect();
        self.seeds.sort_unstable();
        self.seeds.dedup();
        self.announce_to_seeds(out);
        Ok(())
    }

    /// Leaves the cluster: tells a few members this identity is down (they spread it) and
    /// stops; later datagrams are ignored and no timer fires. Idempotent.
    pub fn leave(&mut self, now_us: u64, out: &mut Vec<Datagram>) -> Result<()> {
        if self.left {
            return Ok(());
        }
        self.advance(now_us);
        let r = self.foca.leave_cluster(&mut self.rt);
        self.flush(out, None);
        self.left = true;
        self.active = false;
        self.timers.clear();
        self.next_join_us = None;
        r.map_err(|e| Error::new(ErrorKind::Io, format!("swim leave: {e}")))
    }

    /// Handles a datagram `from` a member (the sender the transport vouches for). Errors
    /// (the datagram is refused, counted in [`SwimStats::rejected`], and nothing else
    /// changes): `TooLarge` beyond `max_datagram`; `Corrupt` for a bad envelope, checksum or
    /// encoding; `InvalidArgument` when the packet claims another sender than `from` or is
    /// addressed to another member. Datagrams for an older generation of this member, or
    /// arriving after [`Swim::leave`], are dropped with `Ok` and counted.
    pub fn handle(
        &mut self,
        from: u64,
        payload: &[u8],
        now_us: u64,
        out: &mut Vec<Datagram>,
    ) -> Result<()> {
        self.advance(now_us);
        self.stats.received += 1;
        if payload.len() > self.config.max_datagram {
            return Err(self.reject(
                ErrorKind::TooLarge,
                from,
                format!(
                    "{} bytes, beyond the {}-byte limit",
                    payload.len(),
                    self.config.max_datagram
                ),
            ));
        }
        let packet = match wire::open(payload) {
            Ok(p) => p,
            Err(why) => return Err(self.reject(ErrorKind::Corrupt, from, why.to_string())),
        };
        let header = match wire::validate(packet) {
            Ok(h) => h,
            Err(e) => return Err(self.reject(ErrorKind::Corrupt, from, e.to_string())),
        };
        if header.src.id != from {
            return Err(self.reject(
                ErrorKind::InvalidArgument,
                from,
                format!("it claims to come from member {}", header.src.id),
            ));
        }
        if header.dst.id != self.id {
            return Err(self.reject(
                ErrorKind::InvalidArgument,
                from,
                format!("it is addressed to member {}", header.dst.id),
            ));
        }
        if self.left {
            self.stats.ignored += 1;
            return Ok(());
        }
        // An announce is addressed to whatever generation the joiner guessed; anything else
        // for an older generation of ours belongs to a previous life.
        if header.dst.generation != self.generation && header.message != Message::Announce {
            self.stats.stale += 1;
            return Ok(());
        }
        let (generation, incarnation) = (self.generation, self.incarnation);
        let r = self.foca.handle_data(packet, &mut self.rt);
        self.flush(out, None);
        if self.config.local_health
            && self.generation == generation
            && self.incarnation > incarnation
        {
            // This datagram made us refute a suspicion of ourselves: its sender (the
            // suspecter itself when it is a buddy notice) hears the refutation at once.
            let me = self.identity();
            let packet = self.notice(header.src, me, self.incarnation, State::Alive);
            out.push(Datagram {
                to: from,
                payload: wire::seal(&packet),
            });
            self.stats.sent += 1;
            self.stats.direct_refutations += 1;
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.reject(ErrorKind::Corrupt, from, e.to_string())),
        }
    }

    /// Fires the timers due by `now_us` (and the join retry). Call it at
    /// [`Swim::next_deadline_us`], after handing the datagrams received so far to
    /// [`Swim::handle`]. A call much later than the deadline is a stall (module docs).
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<Datagram>) {
        let now = self.advance(now_us);
        if self.left {
            return;
        }
        let late = micros(self.config.late_threshold);
        if let Some((&(due, _), _)) = self.timers.first_key_value() {
            if now > due && now - due > late {
                self.stats.late_ticks += 1;
                self.stats.stalled_us = self.stats.stalled_us.saturating_add(now - due);
                // One step of health per probe period at most: a member stalled often is
                // unhealthy, not infinitely so.
                let period = micros(self.config.probe_period);
                if self.config.local_health
                    && self
                        .last_late_us
                        .is_none_or(|t| now.saturating_sub(t) >= period)
                {
                    self.last_late_us = Some(now);
                    self.health_up();
                }
            }
        }
        for _ in 0..MAX_FIRED_PER_TICK {
            let Some(entry) = self.timers.first_entry() else {
                break;
            };
            let due = entry.key().0;
            if due > now {
                break;
            }
            let timer = entry.remove();
            let cycle_end = matches!(timer, Timer::ProbeRandomMember(_));
            let was_probing = cycle_end && std::mem::take(&mut self.probing);
            let suspect = match &timer {
                Timer::ChangeSuspectToDown { member_id, .. } => Some(*member_id),
                _ => None,
            };
            let indirect = matches!(timer, Timer::SendIndirectProbe { .. });
            if self.foca.handle_timer(timer, &mut self.rt).is_err() {
                self.stats.timer_errors += 1;
            }
            if indirect && now > due && self.config.local_health {
                self.delay_cycle_end(now - due);
            }
            if let Some(suspect) = suspect {
                self.drop_spurious_turn_undead(suspect);
            }
            self.flush(out, cycle_end.then_some(was_probing));
        }
        if self.next_join_us.is_some_and(|t| t <= now) {
            self.announce_to_seeds(out);
        }
    }

    /// When [`Swim::tick`] should next be called, if anything is armed.
    pub fn next_deadline_us(&self) -> Option<u64> {
        let timer = self.timers.first_key_value().map(|(&(due, _), _)| due);
        match (timer, self.next_join_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every member this one knows (live and down, not itself), by id.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .foca
            .iter_membership_state()
            .map(|m| Member {
                id: m.id().id,
                generation: m.id().generation,
                incarnation: m.incarnation(),
                state: match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                },
            })
            .collect();
        v.sort_unstable_by_key(|m| (m.id, m.generation));
        v
    }

    /// The ids of the live (alive or suspect) members, not itself, ascending.
    pub fn live_members(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.foca.iter_members().map(|m| m.id().id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The membership changes since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<MemberEvent> {
        std::mem::take(&mut self.events)
    }

    /// The local health multiplier, `1..=max_health`: 1 when healthy; the probe period, probe
    /// RTT and suspicion timeout of this member are multiplied by it (module docs).
    pub fn local_health(&self) -> u32 {
        self.health + 1
    }

    /// The counters.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// Moves the clock to `now_us` (it never goes back) and returns it.
    fn advance(&mut self, now_us: u64) -> u64 {
        self.now_us = self.now_us.max(now_us);
        self.now_us
    }

    fn reject(&mut self, kind: ErrorKind, from: u64, why: String) -> Error {
        self.stats.rejected += 1;
        Error::new(
            kind,
            format!(
                "swim member {}: datagram from {from} refused: {why}",
                self.id
            ),
        )
    }

    fn health_up(&mut self) {
        if !self.config.local_health {
            return;
        }
        self.health = (self.health + 1).min(self.config.max_health - 1);
    }

    fn health_down(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            id: self.id,
            generation: self.generation,
        }
    }

    /// A gossip message to `dst` carrying one update, `member` at `incarnation` in `state`
    /// (our codec, foca's packet layout: header, a big-endian `u16` count, the updates).
    fn notice(
        &self,
        dst: NodeIdentity,
        member: NodeIdentity,
        incarnation: u16,
        state: State,
    ) -> Vec<u8> {
        let header = foca::Header {
            src: self.identity(),
            src_incarnation: self.incarnation,
            dst,
            message: Message::Gossip,
        };
        let mut buf = Vec::with_capacity(64);
        WireCodec
            .encode_header(&header, &mut buf)
            .expect("a Vec has room");
        buf.extend_from_slice(&1u16.to_be_bytes());
        WireCodec
            .encode_member(&foca::Member::new(member, incarnation, state), &mut buf)
            .expect("a Vec has room");
        buf
    }

    /// The indirect probes went out `lateness` after their time: the end of the probe cycle
    /// (the pending `ProbeRandomMember`, which judges the probe) moves by as much, so they get
    /// the window they were meant to have while this member runs.
    fn delay_cycle_end(&mut self, lateness: u64) {
        let key = self
            .timers
            .iter()
            .find(|(_, t)| matches!(t, Timer::ProbeRandomMember(_)))
            .map(|(&k, _)| k);
        if let Some(key) = key {
            let timer = self.timers.remove(&key).expect("found");
            self.timers
                .insert((key.0.saturating_add(lateness), key.1), timer);
            self.stats.delayed_cycles += 1;
        }
    }

    /// foca (1.0 and 2.0) sends `TurnUndead` ("the cluster thinks you are down") to a member
    /// whose suspicion timer ran out even when the member refuted in time and was *not*
    /// declared down; the member would then renew its identity and rejoin for nothing (a
    /// false positive in all but name). Such a message is dropped here: it goes out only to a
    /// member that this member now holds down.
    fn drop_spurious_turn_undead(&mut self, suspect: NodeIdentity) {
        let still_live = self.foca.iter_members().any(|m| *m.id() == suspect);
        if still_live {
            let before = self.rt.sends.len();
            self.rt
                .sends
                .retain(|(to, p)| !(*to == suspect && wire::is_turn_undead(p)));
            self.stats.spurious_turn_undead += (before - self.rt.sends.len()) as u64;
        }
    }

    fn announce_to_seeds(&mut self, out: &mut Vec<Datagram>) {
        if self.active || self.seeds.is_empty() {
            self.next_join_us = None;
            return;
        }
        for i in 0..self.seeds.len() {
            // The seed's generation is unknown: an announce is accepted whatever it says.
            let dst = NodeIdentity {
                id: self.seeds[i],
                generation: 0,
            };
            if self.foca.announce(dst, &mut self.rt).is_err() {
                self.stats.timer_errors += 1;
            }
        }
        self.flush(out, None);
        let retry = micros(self.config.join_retry) * u64::from(self.local_health());
        self.next_join_us = Some(self.now_us.saturating_add(retry));
    }

    /// Acts on what foca asked for during the last call: seals and queues its datagrams, arms
    /// its timers (scaled by the health multiplier), turns its notifications into events and
    /// updates the health score. `cycle_end` is `Some(was_probing)` when the call was the end
    /// of a probe cycle (a `ProbeRandomMember` timer).
    fn flush(&mut self, out: &mut Vec<Datagram>, cycle_end: Option<bool>) {
        let sends = std::mem::take(&mut self.rt.sends);
        for (to, packet) in sends {
            if let Some(inc) = wire::src_incarnation(&packet) {
                if inc > self.incarnation {
                    self.incarnation = inc;
                    self.stats.refutations += 1;
                    self.health_up();
                }
            }
            out.push(Datagram {
                to: to.id,
                payload: wire::seal(&packet),
            });
            self.stats.sent += 1;
        }

        let mult = u64::from(self.local_health());
        let mut suspected = false;
        let mut buddies = Vec::new();
        let timers = std::mem::take(&mut self.rt.timers);
        for (timer, after) in timers {
            let mut after = micros(after);
            match timer {
                Timer::SendIndirectProbe { .. } => {
                    self.probing = true;
                    self.stats.probes += 1;
                    after = after.saturating_mul(mult);
                }
                Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } => {
                    suspected = true;
                    after = after.saturating_mul(mult);
                    if self.config.local_health {
                        buddies.push((member_id, incarnation));
                    }
                }
                Timer::ProbeRandomMember(_) => after = after.saturating_mul(mult),
                _ => {}
            }
            self.timer_seq += 1;
            self.timers
                .insert((self.now_us.saturating_add(after), self.timer_seq), timer);
        }
        for (suspect, incarnation) in buddies {
            // Lifeguard's buddy system: the suspect hears of the suspicion from us at once,
            // not only when gossip reaches it, and refutes sooner.
            let packet = self.notice(suspect, suspect, incarnation, State::Suspect);
            out.push(Datagram {
                to: suspect.id,
                payload: wire::seal(&packet),
            });
            self.stats.sent += 1;
            self.stats.buddy_notices += 1;
        }
        if let Some(was_probing) = cycle_end {
            if suspected {
                self.stats.failed_probes += 1;
                self.health_up();
            } else if was_probing {
                self.health_down();
            }
        }

        let notes = std::mem::take(&mut self.rt.notes);
        for note in notes {
            match note {
                OwnedNotification::MemberUp(m) => self.events.push(MemberEvent::Up(m.id)),
                OwnedNotification::MemberDown(m) => {
                    self.suspects.remove(&m.id);
                    self.events.push(MemberEvent::Down(m.id));
                }
                OwnedNotification::Rename(old, new) => {
                    if old.id == new.id {
                        self.events.push(MemberEvent::Restarted(new.id));
                    }
                }
                OwnedNotification::Active => {
                    self.active = true;
                    self.next_join_us = None;
                }
                OwnedNotification::Idle => {
                    self.active = false;
                    // Alone again: look for the cluster through the seeds.
                    if !self.seeds.is_empty() && self.next_join_us.is_none() {
                        let retry = micros(self.config.join_retry) * mult;
                        self.next_join_us = Some(self.now_us.saturating_add(retry));
                    }
                }
                OwnedNotification::Rejoin(me) => {
                    self.generation = me.generation;
                    self.incarnation = 0;
                    self.stats.rejoins += 1;
                    self.events.push(MemberEvent::Rejoined {
                        generation: me.generation,
                    });
                }
                OwnedNotification::Defunct => {
                    // Only when the identity cannot renew (generation u64::MAX): nothing
                    // more this member can do but be recreated.
                    self.active = false;
                }
            }
        }

        // Suspicions come by gossip without a notification: compare states.
        for m in self.foca.iter_membership_state() {
            let id = m.id().id;
            if m.state() == State::Suspect {
                if self.suspects.insert(id) {
                    self.events.push(MemberEvent::Suspect(id));
                }
            } else {
                self.suspects.remove(&id);
            }
        }
    }
}
