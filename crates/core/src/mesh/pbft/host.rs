//! [`ReplicaHost`]: one PBFT replica driven over a transport, and the outbox it shares with
//! the client endpoint.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{client_frame, parse_frame, replica_frame, Addresses, Parsed};
use crate::error::{Error, ErrorKind, Result};
use crate::net::{NodeId, Transport};
use crate::pbft::{App, Authenticator, Dest, Outgoing, Principal, Replica};

/// How a [`ReplicaHost`] (and a [`super::MeshClient`]) sends and receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Frames kept per destination node while its transport answers `Full`; beyond, the
    /// oldest are discarded (counted).
    pub max_backlog: usize,
    /// Frames received per round at most (the rest wait for the next round).
    pub max_recv: usize,
}

impl Default for HostOptions {
    /// 4096 frames of backlog per node, 1024 frames per round.
    fn default() -> Self {
        HostOptions {
            max_backlog: 4096,
            max_recv: 1024,
        }
    }
}

/// Counters of a host loop (replica or client endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Frames received and handed to the state machine.
    pub received: u64,
    /// Frames refused: unknown tag, a sender inconsistent with the tag, or the state
    /// machine's `handle` said no.
    pub rejected: u64,
    /// Frames handed to the transport.
    pub sent: u64,
    /// Sends answered `Full` (the frame was kept for retry).
    pub full: u64,
    /// Frames given up after another send error (the node is down) or with no node to go
    /// to (a client missing from the address book).
    pub send_failed: u64,
    /// Frames discarded from a backlog that reached its bound.
    pub discarded: u64,
    /// Frames waiting for their node's back-pressure to clear.
    pub backlog: u64,
    /// Rounds run.
    pub rounds: u64,
}

/// Frames per destination node, kept in order while the transport answers `Full`.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queues: BTreeMap<NodeId, VecDeque<Vec<u8>>>,
    max_backlog: usize,
}

impl Outbox {
    pub(super) fn new(max_backlog: usize) -> Outbox {
        Outbox {
            queues: BTreeMap::new(),
            max_backlog: max_backlog.max(1),
        }
    }

    /// Whether frames wait for back-pressure to clear.
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Sends `frame` to `to`, behind what already waits for it.
    pub(super) fn send<T: Transport>(
        &mut self,
        t: &mut T,
        to: NodeId,
        frame: Vec<u8>,
        stats: &mut HostStats,
    ) {
        if let Some(q) = self.queues.get_mut(&to) {
            q.push_back(frame);
            if q.len() > self.max_backlog {
                q.pop_front();
                stats.discarded += 1;
            }
            return;
        }
        match t.send(to, &frame) {
            Ok(()) => stats.sent += 1,
            Err(e) if e.kind() == ErrorKind::Full => {
                stats.full += 1;
                self.queues.entry(to).or_default().push_back(frame);
            }
            Err(_) => stats.send_failed += 1,
        }
        stats.backlog = self.len();
    }

    /// Retries what waits, in order per node, until a node answers `Full` again.
    pub(super) fn flush<T: Transport>(&mut self, t: &mut T, stats: &mut HostStats) {
        self.queues.retain(|&to, q| {
            while let Some(f) = q.front() {
                match t.send(to, f) {
                    Ok(()) => stats.sent += 1,
                    Err(e) if e.kind() == ErrorKind::Full => {
                        stats.full += 1;
                        return true;
                    }
                    Err(_) => stats.send_failed += 1,
                }
                q.pop_front();
            }
            false
        });
        stats.backlog = self.len();
    }

    fn len(&self) -> u64 {
        self.queues.values().map(|q| q.len() as u64).sum()
    }
}

/// How long to wait for a frame: at most `wait`, less when a deadline comes sooner, and
/// briefly when frames wait for back-pressure to clear.
pub(super) fn wait_for(
    wait: Duration,
    now_us: u64,
    deadline: Option<u64>,
    backlog: bool,
) -> Duration {
    let mut w = wait;
    if let Some(d) = deadline {
        w = w.min(Duration::from_micros(d.saturating_sub(now_us)));
    }
    if backlog {
        w = w.min(Duration::from_micros(100));
    }
    w
}

/// A PBFT replica driven over a transport: see the module docs of [`super`].
pub struct ReplicaHost<A: App, K: Authenticator, T: Transport> {
    replica: Replica<A, K>,
    t: T,
    addrs: Addresses,
    opts: HostOptions,
    outbox: Outbox,
    out: Vec<Outgoing>,
    stats: HostStats,
}

impl<A: App, K: Authenticator, T: Transport> ReplicaHost<A, K, T> {
    /// Drives `replica` over `t`; the transport's node must be the replica's in `addrs`,
    /// and `addrs` must name as many replicas as the group has.
    pub fn new(
        replica: Replica<A, K>,
        t: T,
        addrs: Addresses,
        opts: HostOptions,
    ) -> Result<ReplicaHost<A, K, T>> {
        let me = addrs.replica_node(replica.id());
        if me != Some(t.local_id()) {
            return Err(Error::invalid(format!(
                "pbft replica {}: its transport is {}, the address book says {:?}",
                replica.id(),
                t.local_id(),
                me
            )));
        }
        Ok(ReplicaHost {
            replica,
            t,
            addrs,
            outbox: Outbox::new(opts.max_backlog),
            opts,
            out: Vec::new(),
            stats: HostStats::default(),
        })
    }

    /// The replica.
    pub fn replica(&self) -> &Replica<A, K> {
        &self.replica
    }

    /// The replica, mutably (e.g. [`Replica::suspect_primary`]; what it appends to an
    /// outgoing list must then be sent with [`ReplicaHost::send`]).
    pub fn replica_mut(&mut self) -> &mut Replica<A, K> {
        &mut self.replica
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// The address book.
    pub fn addresses(&self) -> &Addresses {
        &self.addrs
    }

    /// The counters.
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// One round at the caller's clock `now_us`: retry the backlog, tick the replica, receive
    /// up to [`HostOptions::max_recv`] frames (waiting up to `wait` for the first one, less
    /// when the replica's next deadline comes sooner) and hand each to the replica, and send
    /// what it answered. Returns the number of frames received. Errors: the
    /// transport's receive errors only (a refused frame is counted, not an error).
    pub fn run_once(&mut self, now_us: u64, wait: Duration) -> Result<usize> {
        self.stats.rounds += 1;
        self.outbox.flush(&mut self.t, &mut self.stats);
        self.replica.tick(now_us, &mut self.out);
        self.flush_out();
        // A deadline the tick left in the past has nothing to do now: do not spin on it.
        let deadline = self.replica.next_deadline_us().filter(|&d| d > now_us);
        let w = wait_for(wait, now_us, deadline, !self.outbox.is_empty());
        let mut got = 0;
        let mut next = self.t.recv_timeout(w)?;
        while let Some(frame) = next {
            got += 1;
            self.deliver(frame.from, &frame.payload, now_us);
            if got >= self.opts.max_recv {
                break;
            }
            next = self.t.try_recv()?;
        }
        self.flush_out();
        Ok(got)
    }

    /// Sends the replica's output `out` (drained), as the loop does.
    pub fn send(&mut self, out: &mut Vec<Outgoing>) {
        self.out.append(out);
        self.flush_out();
    }

    fn deliver(&mut self, from: NodeId, frame: &[u8], now_us: u64) {
        let (principal, bytes) = match parse_frame(frame) {
            Some(Parsed::Replica(b)) => match self.addrs.replica_of(from) {
                Some(i) => (Principal::Replica(i), b),
                None => {
                    self.stats.rejected += 1;
                    return;
                }
            },
            Some(Parsed::Client(c, b)) if self.addrs.client_node(c) == Some(from) => {
                (Principal::Client(c), b)
            }
            _ => {
                self.stats.rejected += 1;
                return;
            }
        };
        match self.replica.handle(principal, bytes, now_us, &mut self.out) {
            Ok(()) => self.stats.received += 1,
            Err(_) => self.stats.rejected += 1,
        }
    }

    fn flush_out(&mut self) {
        let me = self.replica.id();
        for o in std::mem::take(&mut self.out) {
            match o.to {
                Dest::Replica(i) if i != me => match self.addrs.replica_node(i) {
                    Some(n) => {
                        let f = replica_frame(&o.payload);
                        self.outbox.send(&mut self.t, n, f, &mut self.stats);
                    }
                    None => self.stats.send_failed += 1,
                },
                Dest::Replica(_) => {}
                Dest::AllReplicas => {
                    let f = replica_frame(&o.payload);
                    for i in 0..self.addrs.n() as u32 {
                        if i != me {
                            let n = self.addrs.replica_node(i).expect("in range");
                            self.outbox.send(&mut self.t, n, f.clone(), &mut self.stats);
                        }
                    }
                }
                Dest::Client(c) => match self.addrs.client_node(c) {
                    Some(n) => {
                        let f = client_frame(c, &o.payload);
                        self.outbox.send(&mut self.t, n, f, &mut self.stats);
                    }
                    None => self.stats.send_failed += 1,
                },
            }
        }
    }
}

impl<A: App, K: Authenticator, T: Transport> std::fmt::Debug for ReplicaHost<A, K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHost")
            .field("id", &self.replica.id())
            .field("view", &self.replica.view())
            .field("executed", &self.replica.last_executed())
            .field("stats", &self.stats)
            .finish()
    }
}
