//! The membership host loop: SWIM failure detection ([`crate::membership::swim`]) and
//! push-pull gossip of agents' state ([`crate::membership::gossip`]) run by one
//! [`Member`] over one [`Transport`].
//!
//! Each call of [`Member::run_once`] (or [`Member::poll`], which waits on the transport and
//! reads a real clock):
//!
//! 1. receives the frames that are ready and hands each to its machine by its tag byte,
//!    [`TAG_SWIM`] or [`TAG_GOSSIP`]. A frame with another tag, or one its machine refuses
//!    (garbled, oversized, spoofed), is dropped and counted ([`MemberStats::unknown_tag`],
//!    [`MemberStats::rejected`]); never fatal. Frames are read *before* timers fire, so a
//!    member that was starved reads the acks that came meanwhile before judging its probes
//!    (the SWIM local-health rules);
//! 2. fires the machines' due timers;
//! 3. sends what they produced, each datagram prefixed with its tag. **Datagram semantics**:
//!    a send answered `Full` (the peer's inbox or queue is full) is dropped and counted in
//!    [`MemberStats::dropped_full`], not kept for retry: both protocols retransmit by design
//!    (SWIM probes every period and piggybacks each update several times, gossip pushes each
//!    update to several peers and pulls and anti-entropy repair the rest), and a probe or ack
//!    delivered late is worth less than a fresh one. Any other send error (the peer is down
//!    or unknown to the transport) is counted in [`MemberStats::send_failed`];
//! 4. feeds SWIM's live members to [`Gossip::set_peers`] when they change, and turns
//!    membership changes and remote key changes into [`MeshEvent`]s: kept for
//!    [`Member::drain_events`] (bounded: the oldest are dropped and counted beyond
//!    [`MemberOptions::max_events`]) and sent to every [`Member::subscribe`]r (bounded
//!    channels: an event a slow subscriber has no room for is counted in
//!    [`MemberStats::events_dropped`]).
//!
//! Identity: the member's id is its transport's [`NodeId`]; its SWIM generation is
//! [`SwimConfig::generation`], or, when that is 0, the wall-clock time in µs when the member
//! is made, so a restarted process always comes back as a newer generation.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{ErrorKind, Result};
use crate::membership::gossip::{Change, Gossip, GossipConfig, GossipStats, Version};
use crate::membership::swim::{Member as SwimMember, MemberEvent, Swim, SwimConfig, SwimStats};
use crate::membership::Datagram;
use crate::net::{Frame, NodeId, Transport};

/// The tag byte of a frame holding a SWIM datagram.
pub const TAG_SWIM: u8 = b'S';
/// The tag byte of a frame holding a gossip datagram.
pub const TAG_GOSSIP: u8 = b'G';

/// How a [`Member`] is made.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberOptions {
    /// SWIM's settings (a `generation` of 0 is replaced by the wall clock, module docs).
    pub swim: SwimConfig,
    /// Gossip's settings.
    pub gossip: GossipConfig,
    /// Members to announce this one to (any live member of the cluster will do); empty for
    /// the first member, which waits to be contacted.
    pub seeds: Vec<NodeId>,
    /// Frames handled per [`Member::run_once`] at most (the rest wait for the next call), so
    /// a flood cannot starve the timers.
    pub max_frames_per_run: usize,
    /// Events kept for [`Member::drain_events`] (and the capacity of each subscription).
    pub max_events: usize,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            swim: SwimConfig::default(),
            gossip: GossipConfig::default(),
            seeds: Vec::new(),
            max_frames_per_run: 1024,
            max_events: 4096,
        }
    }
}

/// A change seen by a [`Member`]: of the membership or of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// A member became live.
    MemberUp(NodeId),
    /// A member is suspected (it may still refute).
    MemberSuspect(NodeId),
    /// A member was declared down or left.
    MemberDown(NodeId),
    /// A member restarted: a new generation replaced the one known (its old process is gone).
    MemberRestarted(NodeId),
    /// The cluster declared this member down while it ran; it rejoined as `generation`.
    Rejoined {
        /// The new generation.
        generation: u64,
    },
    /// A key changed by a remote write or delete (local writes are not reported).
    KeyChanged(Change),
}

/// Counters of a [`Member`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent (accepted by the transport).
    pub frames_out: u64,
    /// Frames with an unknown tag byte (or empty), dropped.
    pub unknown_tag: u64,
    /// Frames refused by SWIM or gossip (bad bytes), dropped.
    pub rejected: u64,
    /// Sends answered `Full` (back-pressure), dropped: datagram semantics (module docs).
    pub dropped_full: u64,
    /// Sends that failed otherwise (peer down, unknown, payload too large), dropped.
    pub send_failed: u64,
    /// Events dropped: the oldest of a full [`Member::drain_events`] queue, or one a
    /// subscriber had no room for.
    pub events_dropped: u64,
    /// Times the live member list given to gossip changed.
    pub peer_changes: u64,
}

/// One member of a cluster: SWIM and gossip over a transport.
pub struct Member<T: Transport> {
    transport: T,
    swim: Swim,
    gossip: Gossip,
    start: Instant,
    now_us: u64,
    live: Vec<u64>,
    events: VecDeque<MeshEvent>,
    subscribers: Vec<SyncSender<MeshEvent>>,
    out: Vec<Datagram>,
    buf: Vec<u8>,
    max_frames: usize,
    max_events: usize,
    stats: MemberStats,
}

impl<T: Transport> std::fmt::Debug for Member<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.transport.local_id())
            .field("now_us", &self.now_us)
            .field("live", &self.live)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Member<T> {
    /// A member with the transport's id, announcing itself to `opts.seeds` at once.
    /// `InvalidArgument` for bad settings; send errors are counted, not returned.
    pub fn new(transport: T, opts: MemberOptions) -> Result<Member<T>> {
        let id = transport.local_id().0;
        let mut swim_config = opts.swim;
        if swim_config.generation == 0 {
            swim_config.generation = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1);
        }
        let swim = Swim::new(id, swim_config)?;
        let gossip = Gossip::new(id, opts.gossip)?;
        let mut m = Member {
            transport,
            swim,
            gossip,
            start: Instant::now(),
            now_us: 0,
            live: Vec::new(),
            events: VecDeque::new(),
            subscribers: Vec::new(),
            out: Vec::new(),
            buf: Vec::new(),
            max_frames: opts.max_frames_per_run.max(1),
            max_events: opts.max_events.max(1),
            stats: MemberStats::default(),
        };
        let seeds: Vec<u64> = opts.seeds.iter().map(|s| s.0).collect();
        let mut out = std::mem::take(&mut m.out);
        m.swim.join(&seeds, 0, &mut out)?;
        m.send_all(TAG_SWIM, &mut out);
        m.gossip.tick(0, &mut out);
        m.send_all(TAG_GOSSIP, &mut out);
        m.out = out;
        Ok(m)
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.transport.local_id()
    }

    /// The member's real clock: µs since it was made ([`Member::poll`] uses it; callers of
    /// [`Member::run_once`] may use it or a clock of their own, never both).
    pub fn clock_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Receives what is ready, fires what is due at `now_us`, sends the output (module
    /// docs). Returns the frames handled. Errors only when the transport fails to receive.
    pub fn run_once(&mut self, now_us: u64) -> Result<usize> {
        self.now_us = self.now_us.max(now_us);
        let mut handled = 0;
        while handled < self.max_frames {
            match self.transport.try_recv()? {
                Some(frame) => {
                    self.dispatch(frame);
                    handled += 1;
                }
                None => break,
            }
        }
        self.fire();
        Ok(handled)
    }

    /// Runs one push-pull gossip round at `now_us` (the member's clock, as for
    /// [`Member::run_once`]): the Erlang `gossip_round/1`. SWIM's timers and gossip's own
    /// schedule are left as they are; nothing is received.
    pub fn round(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        let mut out = std::mem::take(&mut self.out);
        self.gossip.round(self.now_us, &mut out);
        self.send_all(TAG_GOSSIP, &mut out);
        self.out = out;
        self.after_step();
    }

    /// Waits up to `timeout` for a frame (less when a timer is due sooner), then runs once
    /// on the real clock ([`Member::clock_us`]). Returns the frames handled.
    pub fn poll(&mut self, timeout: Duration) -> Result<usize> {
        let now = self.clock_us();
        let wait = match self.next_deadline_us() {
            Some(d) if d <= now => Duration::ZERO,
            Some(d) => timeout.min(Duration::from_micros(d - now)),
            None => timeout,
        };
        let mut handled = 0;
        if !wait.is_zero() {
            if let Some(frame) = self.transport.recv_timeout(wait)? {
                self.dispatch(frame);
                handled += 1;
            }
        }
        let now = self.clock_us();
        Ok(handled + self.run_once(now)?)
    }

    /// When something is next due (µs, the member's clock), if anything is armed.
    pub fn next_deadline_us(&self) -> Option<u64> {
        let g = self.gossip.next_deadline_us();
        Some(self.swim.next_deadline_us().map_or(g, |s| s.min(g)))
    }

    /// Every member known (live and down, not this one).
    pub fn members(&self) -> Vec<SwimMember> {
        self.swim.members()
    }

    /// The live members (not this one), ascending.
    pub fn live_members(&self) -> Vec<NodeId> {
        self.live.iter().map(|&id| NodeId(id)).collect()
    }

    /// Writes `key` = `value` locally; gossip spreads it from the next round.
    /// `InvalidArgument`/`TooLarge` beyond the configured sizes.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Version> {
        self.gossip.put(key, value, self.now_us)
    }

    /// Deletes `key` (a tombstone spreads); `None` when there was nothing to delete.
    pub fn delete(&mut self, key: &[u8]) -> Result<Option<Version>> {
        self.gossip.delete(key, self.now_us)
    }

    /// The value of `key`, if live.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.gossip.get(key)
    }

    /// Every live key and value.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.gossip.iter()
    }

    /// The events since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<MeshEvent> {
        self.events.drain(..).collect()
    }

    /// A subscription: every later event, through a channel of `max_events` (events it has
    /// no room for are dropped and counted). Dropping the receiver ends it.
    pub fn subscribe(&mut self) -> Receiver<MeshEvent> {
        let (tx, rx) = mpsc::sync_channel(self.max_events);
        self.subscribers.push(tx);
        rx
    }

    /// Leaves the cluster (SWIM tells a few members; they spread it). The member then ignores
    /// SWIM traffic; gossip keeps answering until the member is dropped.
    pub fn leave(&mut self) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let r = self.swim.leave(self.now_us, &mut out);
        self.send_all(TAG_SWIM, &mut out);
        self.out = out;
        self.after_step();
        r
    }

    /// The counters of the loop.
    pub fn stats(&self) -> MemberStats {
        self.stats
    }

    /// SWIM's counters.
    pub fn swim_stats(&self) -> SwimStats {
        self.swim.stats()
    }

    /// Gossip's counters.
    pub fn gossip_stats(&self) -> GossipStats {
        self.gossip.stats()
    }

    /// The SWIM member (health, generation, configuration).
    pub fn swim(&self) -> &Swim {
        &self.swim
    }

    /// The gossip member.
    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, to add peers (`RingTransport::add_peer`, `TcpTransport::add_peer`).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn dispatch(&mut self, frame: Frame) {
        self.stats.frames_in += 1;
        let from = frame.from.0;
        let mut out = std::mem::take(&mut self.out);
        let (tag, r) = match frame.payload.split_first() {
            Some((&TAG_SWIM, rest)) => (
                TAG_SWIM,
                self.swim.handle(from, rest, self.now_us, &mut out),
            ),
            Some((&TAG_GOSSIP, rest)) => (
                TAG_GOSSIP,
                self.gossip.handle(from, rest, self.now_us, &mut out),
            ),
            _ => {
                self.stats.unknown_tag += 1;
                self.out = out;
                return;
            }
        };
        if r.is_err() {
            self.stats.rejected += 1;
        }
        self.send_all(tag, &mut out);
        self.out = out;
        self.after_step();
    }

    fn fire(&mut self) {
        let now = self.now_us;
        let mut out = std::mem::take(&mut self.out);
        if self.swim.next_deadline_us().is_some_and(|d| d <= now) {
            self.swim.tick(now, &mut out);
            self.send_all(TAG_SWIM, &mut out);
        }
        if self.gossip.next_deadline_us() <= now {
            self.gossip.tick(now, &mut out);
            self.send_all(TAG_GOSSIP, &mut out);
        }
        self.out = out;
        self.after_step();
    }

    fn send_all(&mut self, tag: u8, out: &mut Vec<Datagram>) {
        for d in out.drain(..) {
            self.buf.clear();
            self.buf.push(tag);
            self.buf.extend_from_slice(&d.payload);
            match self.transport.send(NodeId(d.to), &self.buf) {
                Ok(()) => self.stats.frames_out += 1,
                Err(e) if e.kind() == ErrorKind::Full => self.stats.dropped_full += 1,
                Err(_) => self.stats.send_failed += 1,
            }
        }
    }

    /// Membership to gossip's peers, machine events to [`MeshEvent`]s.
    fn after_step(&mut self) {
        for e in self.swim.drain_events() {
            let ev = match e {
                MemberEvent::Up(id) => MeshEvent::MemberUp(NodeId(id)),
                MemberEvent::Suspect(id) => MeshEvent::MemberSuspect(NodeId(id)),
                MemberEvent::Down(id) => MeshEvent::MemberDown(NodeId(id)),
                MemberEvent::Restarted(id) => MeshEvent::MemberRestarted(NodeId(id)),
                MemberEvent::Rejoined { generation } => MeshEvent::Rejoined { generation },
            };
            self.emit(ev);
        }
        let live = self.swim.live_members();
        if live != self.live {
            self.gossip.set_peers(live.iter().copied());
            self.live = live;
            self.stats.peer_changes += 1;
        }
        for c in self.gossip.drain_changes() {
            self.emit(MeshEvent::KeyChanged(c));
        }
    }

    fn emit(&mut self, ev: MeshEvent) {
        let mut dropped = 0;
        self.subscribers.retain(|tx| match tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        if self.events.len() >= self.max_events {
            self.events.pop_front();
            dropped += 1;
        }
        self.events.push_back(ev);
        self.stats.events_dropped += dropped;
    }
}

#[cfg(test)]
mod tests;
