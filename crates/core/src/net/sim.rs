//! A simulated network: in-process, deterministic by seed, driven by the caller's clock.
//!
//! No threads and no real time. The caller owns the clock (any unit: ticks, microseconds) and
//! moves it forward with [`SimNet::step`], [`SimNet::deliver_due`] or [`SimNet::run_until`];
//! a frame sent at time `t` over a link with delay `d` is due at `t + d`. Every random choice
//! (drop, delay, duplicate, reorder) comes from one SplitMix64 stream seeded by
//! [`SimOptions::seed`] and is drawn in send order, so the same seed and the same calls give
//! the same [`SimNet::trace`]: a failing seed replays exactly.
//!
//! Two ways to drive it:
//!
//! * **Caller dispatch** — [`SimNet::step`] returns the next due frame (one at a time, for the
//!   finest interleaving) and [`SimNet::deliver_due`] all due frames; the caller hands each
//!   to its node's state machine and sends the replies with [`SimNet::send`].
//! * **Endpoints** — [`SimNet::add_node`] returns a [`SimEndpoint`], a [`Transport`] like the
//!   real ones; [`SimNet::run_until`] moves due frames into the nodes' bounded inboxes, where
//!   [`Transport::try_recv`] finds them. Code written against the trait runs unchanged.
//!
//! Faults: per-link [`LinkFaults`] (drop, duplicate, reorder probabilities and a delay range;
//! [`SimOptions::link`] for every link without its own), partitions ([`SimNet::partition`],
//! [`SimNet::isolate`], one-way [`SimNet::block`]) until [`SimNet::heal`], and node
//! [`SimNet::crash`] (its inbox and the frames in flight to it are gone; it cannot send) and
//! [`SimNet::restart`]. Every send, drop, duplicate and delivery is an [`Event`] of the trace
//! and counted in [`SimStats`]: nothing is lost without a record saying why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{too_large, unknown_peer, Frame, NodeId, Transport};
use crate::error::{Error, ErrorKind, Result};

/// The faults of one directed link (or of every link: [`SimOptions::link`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice (the copy has its own delay).
    pub duplicate: f64,
    /// Probability that a frame is held back by up to `reorder_window` extra time units and
    /// leaves the link's FIFO order, so frames sent after it overtake it. Without it a link
    /// delivers in send order whatever the delays.
    pub reorder: f64,
    /// The longest extra delay of a reordered frame (at least 1).
    pub reorder_window: u64,
    /// Shortest delay, in the caller's time units.
    pub min_delay: u64,
    /// Longest delay (uniform between the two; `max_delay >= min_delay`).
    pub max_delay: u64,
}

impl LinkFaults {
    /// No faults, delivery one time unit after the send.
    pub const RELIABLE: LinkFaults = LinkFaults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_window: 1,
        min_delay: 1,
        max_delay: 1,
    };

    fn check(&self) -> Result<()> {
        let p = |x: f64| (0.0..=1.0).contains(&x);
        if !(p(self.drop) && p(self.duplicate) && p(self.reorder)) {
            return Err(Error::invalid(format!(
                "link fault probabilities must be in [0, 1]: {self:?}"
            )));
        }
        if self.min_delay > self.max_delay || self.reorder_window == 0 {
            return Err(Error::invalid(format!(
                "a link needs min_delay <= max_delay and reorder_window >= 1: {self:?}"
            )));
        }
        Ok(())
    }
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults::RELIABLE
    }
}

/// How a simulated network is made.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The seed of every random choice.
    pub seed: u64,
    /// The faults of links without their own ([`SimNet::set_link`]).
    pub link: LinkFaults,
    /// Frames one directed link holds in flight; a send beyond answers `Full`.
    pub link_capacity: usize,
    /// Frames a node's inbox holds (endpoint mode, [`SimNet::run_until`]); a frame due for a
    /// full inbox is dropped and recorded as [`DropReason::InboxFull`].
    pub inbox_capacity: usize,
    /// The largest payload; beyond answers `TooLarge`.
    pub max_payload: usize,
}

impl SimOptions {
    /// Reliable links (delay 1), generous bounds, and `seed`.
    pub fn seeded(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            link: LinkFaults::RELIABLE,
            link_capacity: 4096,
            inbox_capacity: 4096,
            max_payload: 16 << 20,
        }
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions::seeded(0)
    }
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The link's drop probability.
    Fault,
    /// A partition or a blocked link separated sender and receiver (at send or delivery).
    Partition,
    /// The receiver was down when the frame came due, or crashed while it was in flight.
    Crashed,
    /// The receiver's inbox was full (endpoint mode).
    InboxFull,
}

/// One entry of the trace: what the network did, when. Frames are numbered by `seq` in send
/// order (a duplicate gets a number of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frame was accepted, due at `due`.
    Sent {
        /// The clock at the send.
        at: u64,
        /// The frame's number.
        seq: u64,
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Payload length.
        len: usize,
        /// When it comes due.
        due: u64,
        /// Held back out of the link's order.
        reordered: bool,
    },
    /// Frame `seq` was copied as `copy`, due at `due`.
    Duplicated {
        /// The original's number.
        seq: u64,
        /// The copy's number.
        copy: u64,
        /// When the copy comes due.
        due: u64,
    },
    /// Frame `seq` was lost.
    Dropped {
        /// The clock when it was lost.
        at: u64,
        /// The frame's number.
        seq: u64,
        /// Why.
        reason: DropReason,
    },
    /// Frame `seq` reached its receiver.
    Delivered {
        /// The clock at delivery.
        at: u64,
        /// The frame's number.
        seq: u64,
    },
    /// A node crashed; the frames in flight to it follow as [`DropReason::Crashed`] drops.
    Crashed {
        /// The clock.
        at: u64,
        /// The node.
        node: NodeId,
        /// Frames delivered to its inbox and not yet taken, lost with it.
        inbox_lost: usize,
    },
    /// A node restarted.
    Restarted {
        /// The clock.
        at: u64,
        /// The node.
        node: NodeId,
    },
    /// The partition or the blocked links changed (partition, isolate, block, heal).
    Topology {
        /// The clock.
        at: u64,
    },
}

/// Counters of a simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Frames accepted by `send` (duplicates not included).
    pub sent: u64,
    /// Frames handed to receivers (duplicates included).
    pub delivered: u64,
    /// Copies made by the duplicate fault.
    pub duplicated: u64,
    /// Frames held back out of order by the reorder fault.
    pub reordered: u64,
    /// Frames lost to the drop fault.
    pub dropped_fault: u64,
    /// Frames lost to partitions and blocked links.
    pub dropped_partition: u64,
    /// Frames lost because their receiver was down.
    pub dropped_crashed: u64,
    /// Frames lost to a full inbox.
    pub dropped_inbox_full: u64,
    /// Sends refused with `Full` (link capacity).
    pub refused_full: u64,
}

/// A frame handed to its receiver by [`SimNet::step`] or [`SimNet::deliver_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The clock at delivery.
    pub at: u64,
    /// The receiver.
    pub to: NodeId,
    /// The frame's number in the trace.
    pub seq: u64,
    /// Sender and bytes.
    pub frame: Frame,
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `p` (always draws, so the stream does not depend on `p`).
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    /// Uniform in `lo..=hi` (always draws).
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        let r = self.next();
        match (hi - lo).checked_add(1) {
            Some(span) => lo + r % span,
            None => r,
        }
    }
}

#[derive(Debug)]
struct Node {
    up: bool,
    inbox: VecDeque<Frame>,
    /// The partition group (equal groups can talk).
    group: usize,
}

#[derive(Debug)]
struct InFlight {
    from: NodeId,
    to: NodeId,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Sim {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    next_seq: u64,
    nodes: BTreeMap<NodeId, Node>,
    links: BTreeMap<(NodeId, NodeId), LinkFaults>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Frames in flight by (due, seq): delivery order.
    flight: BTreeMap<(u64, u64), InFlight>,
    /// Frames in flight per directed link (for `link_capacity`).
    per_link: BTreeMap<(NodeId, NodeId), usize>,
    /// The due time of the last in-order frame of each link (FIFO).
    last_due: BTreeMap<(NodeId, NodeId), u64>,
    trace: Vec<Event>,
    stats: SimStats,
}

impl Sim {
    fn node(&self, id: NodeId) -> Result<&Node> {
        self.nodes.get(&id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{id} is not a node of the simulated network"),
            )
        })
    }

    fn can_talk(&self, from: NodeId, to: NodeId) -> bool {
        let (Some(a), Some(b)) = (self.nodes.get(&from), self.nodes.get(&to)) else {
            return false;
        };
        a.group == b.group && !self.blocked.contains(&(from, to))
    }

    fn drop_frame(&mut self, seq: u64, reason: DropReason) {
        match reason {
            DropReason::Fault => self.stats.dropped_fault += 1,
            DropReason::Partition => self.stats.dropped_partition += 1,
            DropReason::Crashed => self.stats.dropped_crashed += 1,
            DropReason::InboxFull => self.stats.dropped_inbox_full += 1,
        }
        self.trace.push(Event::Dropped {
            at: self.now,
            seq,
            reason,
        });
    }

    fn send(&mut self, from: NodeId, to: NodeId, payload: &[u8]) -> Result<()> {
        if !self.node(from)?.up {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("{from} is down (crashed) and cannot send"),
            ));
        }
        if !self.nodes.contains_key(&to) {
            return Err(unknown_peer(from, to));
        }
        if payload.len() > self.opts.max_payload {
            return Err(too_large(
                payload.len(),
                self.opts.max_payload,
                "the simulated network",
            ));
        }
        let link = (from, to);
        let in_flight = self.per_link.get(&link).copied().unwrap_or(0);
        if in_flight >= self.opts.link_capacity {
            self.stats.refused_full += 1;
            return Err(Error::new(
                ErrorKind::Full,
                format!("the link {from} -> {to} has {in_flight} frames in flight (its capacity)"),
            ));
        }
        let f = self.links.get(&link).copied().unwrap_or(self.opts.link);
        // Every draw happens whatever the outcome, so one choice never shifts the others.
        let lost = self.rng.chance(f.drop);
        let dup = self.rng.chance(f.duplicate);
        let reordered = self.rng.chance(f.reorder);
        let delay = self.rng.between(f.min_delay, f.max_delay);
        let hold = self.rng.between(1, f.reorder_window);
        let dup_delay = self.rng.between(f.min_delay, f.max_delay);

        let seq = self.next_seq;
        self.next_seq += 1;
        let mut due = self.now.saturating_add(delay);
        if reordered {
            due = due.saturating_add(hold);
            self.stats.reordered += 1;
        } else {
            let last = self.last_due.entry(link).or_insert(0);
            due = due.max(*last);
            *last = due;
        }
        self.stats.sent += 1;
        self.trace.push(Event::Sent {
            at: self.now,
            seq,
            from,
            to,
            len: payload.len(),
            due,
            reordered,
        });
        if lost {
            self.drop_frame(seq, DropReason::Fault);
            return Ok(());
        }
        if !self.can_talk(from, to) {
            self.drop_frame(seq, DropReason::Partition);
            return Ok(());
        }
        self.enqueue(due, seq, from, to, payload.to_vec());
        if dup {
            let copy = self.next_seq;
            self.next_seq += 1;
            let cdue = self.now.saturating_add(dup_delay).max(due);
            self.stats.duplicated += 1;
            self.trace.push(Event::Duplicated {
                seq,
                copy,
                due: cdue,
            });
            self.enqueue(cdue, copy, from, to, payload.to_vec());
        }
        Ok(())
    }

    fn enqueue(&mut self, due: u64, seq: u64, from: NodeId, to: NodeId, payload: Vec<u8>) {
        *self.per_link.entry((from, to)).or_insert(0) += 1;
        self.flight
            .insert((due, seq), InFlight { from, to, payload });
    }

    fn advance(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// The next frame due at or before the clock that reaches its receiver.
    fn pop_due(&mut self) -> Option<Delivery> {
        loop {
            let (&(due, seq), _) = self.flight.first_key_value()?;
            if due > self.now {
                return None;
            }
            let f = self.flight.remove(&(due, seq)).expect("first key");
            if let Some(n) = self.per_link.get_mut(&(f.from, f.to)) {
                *n -= 1;
            }
            if !self.nodes.get(&f.to).is_some_and(|n| n.up) {
                self.drop_frame(seq, DropReason::Crashed);
                continue;
            }
            if !self.can_talk(f.from, f.to) {
                self.drop_frame(seq, DropReason::Partition);
                continue;
            }
            self.stats.delivered += 1;
            self.trace.push(Event::Delivered { at: self.now, seq });
            return Some(Delivery {
                at: self.now,
                to: f.to,
                seq,
                frame: Frame {
                    from: f.from,
                    payload: f.payload,
                },
            });
        }
    }
}

/// The simulated network. Cheap to clone: clones and [`SimEndpoint`]s share it.
#[derive(Debug, Clone)]
pub struct SimNet {
    inner: Arc<Mutex<Sim>>,
}

impl SimNet {
    /// An empty network at time 0.
    pub fn new(opts: SimOptions) -> SimNet {
        SimNet {
            inner: Arc::new(Mutex::new(Sim {
                rng: Rng(opts.seed),
                opts,
                now: 0,
                next_seq: 0,
                nodes: BTreeMap::new(),
                links: BTreeMap::new(),
                blocked: BTreeSet::new(),
                flight: BTreeMap::new(),
                per_link: BTreeMap::new(),
                last_due: BTreeMap::new(),
                trace: Vec::new(),
                stats: SimStats::default(),
            })),
        }
    }

    fn sim(&self) -> MutexGuard<'_, Sim> {
        // A panic while holding the lock (a failed assertion in a test) leaves the state
        // consistent enough to inspect: every method finishes its edits before returning.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds node `id` (up, in the main partition group) and returns its endpoint.
    /// `InvalidArgument` when it exists.
    pub fn add_node(&self, id: NodeId) -> Result<SimEndpoint> {
        let mut s = self.sim();
        if s.nodes.contains_key(&id) {
            return Err(Error::invalid(format!("{id} is already in the network")));
        }
        s.nodes.insert(
            id,
            Node {
                up: true,
                inbox: VecDeque::new(),
                group: 0,
            },
        );
        Ok(SimEndpoint {
            id,
            net: self.clone(),
        })
    }

    /// Another endpoint of existing node `id` (`NotFound` otherwise).
    pub fn endpoint(&self, id: NodeId) -> Result<SimEndpoint> {
        self.sim().node(id)?;
        Ok(SimEndpoint {
            id,
            net: self.clone(),
        })
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.sim().nodes.keys().copied().collect()
    }

    /// Sets the faults of the directed link `from -> to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, faults: LinkFaults) -> Result<()> {
        faults.check()?;
        self.sim().links.insert((from, to), faults);
        Ok(())
    }

    /// Sets the faults of every link without its own.
    pub fn set_default_link(&self, faults: LinkFaults) -> Result<()> {
        faults.check()?;
        self.sim().opts.link = faults;
        Ok(())
    }

    /// Splits the network: each of `groups` can talk only within itself; nodes in no group
    /// form one more group together. Frames in flight between groups are dropped when they
    /// come due. Replaces any earlier partition (blocked links stay).
    pub fn partition(&self, groups: &[&[NodeId]]) -> Result<()> {
        let mut s = self.sim();
        for id in groups.iter().flat_map(|g| g.iter()) {
            s.node(*id)?;
        }
        for n in s.nodes.values_mut() {
            n.group = 0;
        }
        for (i, g) in groups.iter().enumerate() {
            for id in *g {
                s.nodes.get_mut(id).expect("checked").group = i + 1;
            }
        }
        let at = s.now;
        s.trace.push(Event::Topology { at });
        Ok(())
    }

    /// Cuts `id` off from every other node (a partition of one).
    pub fn isolate(&self, id: NodeId) -> Result<()> {
        self.partition(&[&[id]])
    }

    /// Blocks the directed link `from -> to` (an asymmetric fault) until [`SimNet::heal`].
    pub fn block(&self, from: NodeId, to: NodeId) {
        let mut s = self.sim();
        s.blocked.insert((from, to));
        let at = s.now;
        s.trace.push(Event::Topology { at });
    }

    /// Ends every partition and unblocks every link.
    pub fn heal(&self) {
        let mut s = self.sim();
        for n in s.nodes.values_mut() {
            n.group = 0;
        }
        s.blocked.clear();
        let at = s.now;
        s.trace.push(Event::Topology { at });
    }

    /// Crashes node `id`: its inbox and every frame in flight to it are gone (recorded as
    /// [`DropReason::Crashed`]), it cannot send (`Closed`), and frames sent to it are dropped
    /// until [`SimNet::restart`]. The caller restarts its state machine from its own durable
    /// state.
    pub fn crash(&self, id: NodeId) -> Result<()> {
        let mut s = self.sim();
        s.node(id)?;
        let node = s.nodes.get_mut(&id).expect("checked");
        node.up = false;
        let inbox_lost = node.inbox.len();
        node.inbox.clear();
        s.stats.dropped_crashed += inbox_lost as u64;
        let gone: Vec<(u64, u64)> = s
            .flight
            .iter()
            .filter(|(_, f)| f.to == id)
            .map(|(k, _)| *k)
            .collect();
        let at = s.now;
        s.trace.push(Event::Crashed {
            at,
            node: id,
            inbox_lost,
        });
        for k in gone {
            let f = s.flight.remove(&k).expect("listed");
            if let Some(n) = s.per_link.get_mut(&(f.from, f.to)) {
                *n -= 1;
            }
            s.drop_frame(k.1, DropReason::Crashed);
        }
        Ok(())
    }

    /// Brings crashed node `id` back, with an empty inbox.
    pub fn restart(&self, id: NodeId) -> Result<()> {
        let mut s = self.sim();
        s.node(id)?;
        s.nodes.get_mut(&id).expect("checked").up = true;
        let at = s.now;
        s.trace.push(Event::Restarted { at, node: id });
        Ok(())
    }

    /// True when `id` is a node and up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.sim().nodes.get(&id).is_some_and(|n| n.up)
    }

    /// Sends `payload` from `from` to `to` at the current time (what [`SimEndpoint`]'s
    /// [`Transport::send`] does). Errors: `NotFound` (unknown sender or receiver), `Closed`
    /// (the sender is down), `TooLarge`, `Full` (the link's capacity). A frame lost to a
    /// fault or a partition is still `Ok`: the sender of a real network cannot tell.
    pub fn send(&self, from: NodeId, to: NodeId, payload: &[u8]) -> Result<()> {
        self.sim().send(from, to, payload)
    }

    /// The clock: the latest time given to `step`, `deliver_due` or `run_until`.
    pub fn now(&self) -> u64 {
        self.sim().now
    }

    /// When the next frame in flight comes due (for jumping the clock to the next event).
    pub fn next_due(&self) -> Option<u64> {
        self.sim().flight.keys().next().map(|&(due, _)| due)
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.sim().flight.len()
    }

    /// Moves the clock to `now` (it never goes back: an earlier time leaves it) and returns
    /// the first frame due by then, if any; frames that cannot be delivered on the way
    /// (receiver down, partition) are recorded and skipped.
    pub fn step(&self, now: u64) -> Option<Delivery> {
        let mut s = self.sim();
        s.advance(now);
        s.pop_due()
    }

    /// Moves the clock to `now` and returns every frame due by then, in due order (ties in
    /// send order). Frames sent while handling them are not included, even if due.
    pub fn deliver_due(&self, now: u64) -> Vec<Delivery> {
        let mut s = self.sim();
        s.advance(now);
        let mut out = Vec::new();
        while let Some(d) = s.pop_due() {
            out.push(d);
        }
        out
    }

    /// The discrete-event loop: jumps the clock from one due frame to the next, up to
    /// `until`, and hands each frame to `handle` with the network (to send replies, crash a
    /// node, partition...). Frames sent by `handle` are delivered in the same run when they
    /// come due by `until`. Returns how many frames were handled; the clock ends at `until`.
    ///
    /// ```
    /// use erlmcp_flow::net::{sim::{SimNet, SimOptions}, NodeId};
    /// let net = SimNet::new(SimOptions::seeded(1));
    /// let (a, b) = (NodeId(1), NodeId(2));
    /// net.add_node(a).unwrap();
    /// net.add_node(b).unwrap();
    /// net.send(a, b, &[3]).unwrap();
    /// // Ping-pong, counting down.
    /// let n = net.run(100, |net, d| {
    ///     let left = d.frame.payload[0];
    ///     if left > 0 {
    ///         net.send(d.to, d.frame.from, &[left - 1]).unwrap();
    ///     }
    /// });
    /// assert_eq!(n, 4);
    /// ```
    pub fn run(&self, until: u64, mut handle: impl FnMut(&SimNet, Delivery)) -> usize {
        let mut n = 0;
        while let Some(due) = self.next_due().filter(|&d| d <= until) {
            // The lock is released before `handle` runs, so it can use the network.
            let d = self.step(due);
            if let Some(d) = d {
                handle(self, d);
                n += 1;
            }
        }
        self.sim().advance(until);
        n
    }

    /// Endpoint mode: moves the clock to `now` and every frame due by then into its
    /// receiver's inbox. Returns how many were delivered.
    pub fn run_until(&self, now: u64) -> usize {
        let mut s = self.sim();
        s.advance(now);
        let mut n = 0;
        while let Some(d) = s.pop_due() {
            let cap = s.opts.inbox_capacity;
            let node = s.nodes.get_mut(&d.to).expect("delivered to a node");
            if node.inbox.len() >= cap {
                // Delivered by the network, refused by the receiver: count it as such.
                s.stats.delivered -= 1;
                s.trace.pop();
                s.drop_frame(d.seq, DropReason::InboxFull);
                continue;
            }
            node.inbox.push_back(d.frame);
            n += 1;
        }
        n
    }

    /// Takes the next frame from `id`'s inbox (endpoint mode).
    pub fn recv(&self, id: NodeId) -> Result<Option<Frame>> {
        let mut s = self.sim();
        s.node(id)?;
        Ok(s.nodes.get_mut(&id).expect("checked").inbox.pop_front())
    }

    /// A copy of the trace so far.
    pub fn trace(&self) -> Vec<Event> {
        self.sim().trace.clone()
    }

    /// A 64-bit digest of the trace (FNV-1a over its debug form): equal digests for equal
    /// traces, for comparing long runs cheaply.
    pub fn trace_digest(&self) -> u64 {
        let s = self.sim();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for e in &s.trace {
            for b in format!("{e:?}").bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The counters.
    pub fn stats(&self) -> SimStats {
        self.sim().stats
    }
}

/// One node's end of a [`SimNet`]: a [`Transport`].
#[derive(Debug, Clone)]
pub struct SimEndpoint {
    id: NodeId,
    net: SimNet,
}

impl SimEndpoint {
    /// The network this endpoint belongs to.
    pub fn net(&self) -> &SimNet {
        &self.net
    }
}

impl Transport for SimEndpoint {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&mut self, to: NodeId, payload: &[u8]) -> Result<()> {
        self.net.send(self.id, to, payload)
    }

    fn try_recv(&mut self) -> Result<Option<Frame>> {
        self.net.recv(self.id)
    }

    /// No real time passes in a simulation: the same as `try_recv`.
    fn recv_timeout(&mut self, _timeout: Duration) -> Result<Option<Frame>> {
        self.net.recv(self.id)
    }
}
