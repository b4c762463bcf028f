//! [`MeshClient`]: a client endpoint hosting PBFT clients over a transport.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::host::{wait_for, Outbox};
use super::Addresses;
use super::{client_frame, micros_since, parse_frame, HostOptions, HostStats, Parsed};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::{NodeId, Transport};
use crate::pbft::{Authenticator, Client, Completion, Dest, Outgoing, Principal};

/// The counters of a [`MeshClient`]: its host loop's, and the completions by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// The host loop's counters.
    pub host: HostStats,
    /// Requests started.
    pub started: u64,
    /// Requests completed on the fast path (2f + 1 matching tentative replies).
    pub fast: u64,
    /// Requests completed on the slow path (f + 1 matching committed replies).
    pub slow: u64,
}

/// A client endpoint: one transport node hosting one or more [`Client`]s, its *slots*, each
/// with one request outstanding at a time. See the module docs of [`super`].
///
/// The clock is real: [`Client::request`] and [`Client::tick`] get the microseconds since the
/// endpoint was made. A request that times out in [`MeshClient::execute`] stays outstanding
/// in its slot (PBFT has no cancel: the client keeps retransmitting it until the group
/// answers); the slot is busy until [`MeshClient::poll`] sees it complete.
pub struct MeshClient<K: Authenticator, T: Transport> {
    t: T,
    addrs: Addresses,
    clients: Vec<Client<K>>,
    slot_of: BTreeMap<u64, usize>,
    outbox: Outbox,
    max_recv: usize,
    out: Vec<Outgoing>,
    born: Instant,
    stats: ClientStats,
}

impl<K: Authenticator> MeshClient<K, RingTransport> {
    /// An endpoint at node `endpoint` over the rings of the group's directory (`opts.dir`,
    /// e.g. [`RingNetOptions::in_dir`]; its inbox is made with `opts`), hosting `clients`.
    pub fn over_rings(
        endpoint: NodeId,
        addrs: Addresses,
        clients: Vec<Client<K>>,
        opts: RingNetOptions,
    ) -> Result<MeshClient<K, RingTransport>> {
        let t = RingTransport::open(endpoint, addrs.replicas(), opts)?;
        MeshClient::new(t, addrs, clients, HostOptions::default())
    }
}

impl<K: Authenticator, T: Transport> MeshClient<K, T> {
    /// An endpoint over `t` hosting `clients` (at least one); the address book must place
    /// every one of them at the transport's node.
    pub fn new(
        t: T,
        addrs: Addresses,
        clients: Vec<Client<K>>,
        opts: HostOptions,
    ) -> Result<MeshClient<K, T>> {
        if clients.is_empty() {
            return Err(Error::invalid("pbft endpoint: no client to host"));
        }
        let mut slot_of = BTreeMap::new();
        for (i, c) in clients.iter().enumerate() {
            if addrs.client_node(c.id()) != Some(t.local_id()) {
                return Err(Error::invalid(format!(
                    "pbft endpoint {}: the address book does not place client {} here",
                    t.local_id(),
                    c.id()
                )));
            }
            if slot_of.insert(c.id(), i).is_some() {
                return Err(Error::invalid(format!(
                    "pbft endpoint {}: client {} is given twice",
                    t.local_id(),
                    c.id()
                )));
            }
        }
        Ok(MeshClient {
            t,
            addrs,
            clients,
            slot_of,
            outbox: Outbox::new(opts.max_backlog),
            max_recv: opts.max_recv,
            out: Vec::new(),
            born: Instant::now(),
            stats: ClientStats::default(),
        })
    }

    /// The number of slots (hosted clients).
    pub fn slots(&self) -> usize {
        self.clients.len()
    }

    /// The client in `slot`.
    pub fn client(&self, slot: usize) -> Option<&Client<K>> {
        self.clients.get(slot)
    }

    /// Whether `slot` has a request outstanding (false for a slot that does not exist).
    pub fn is_busy(&self, slot: usize) -> bool {
        self.clients.get(slot).is_some_and(|c| c.is_busy())
    }

    /// A slot without a request outstanding, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.clients.iter().position(|c| !c.is_busy())
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Sends `op` from the client in `slot`; returns the request's timestamp. Errors:
    /// `InvalidArgument` for a slot that does not exist, `Busy` while the slot has a request
    /// outstanding, `TooLarge` beyond the operation limit.
    pub fn start(&mut self, slot: usize, op: &[u8]) -> Result<u64> {
        let now = micros_since(self.born);
        let c = self
            .clients
            .get_mut(slot)
            .ok_or_else(|| Error::invalid(format!("pbft endpoint: no slot {slot}")))?;
        let id = c.id();
        let ts = c.request(op, now, &mut self.out)?;
        self.stats.started += 1;
        self.flush_out(id);
        Ok(ts)
    }

    /// One round: retry the backlog, receive replies (waiting up to `wait` for the first,
    /// less when a retransmission is due), hand them to their clients, retransmit what is
    /// due, and return the requests that completed, by slot. Errors: the transport's receive
    /// errors only (a refused reply is counted, not an error).
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<(usize, Completion)>> {
        let mut done = Vec::new();
        self.stats.host.rounds += 1;
        self.outbox.flush(&mut self.t, &mut self.stats.host);
        let now = micros_since(self.born);
        let deadline = self
            .clients
            .iter()
            .filter_map(|c| c.next_deadline_us())
            .min();
        let w = wait_for(wait, now, deadline, !self.outbox.is_empty());
        let mut got = 0;
        let mut next = self.t.recv_timeout(w)?;
        while let Some(frame) = next {
            got += 1;
            self.deliver(frame.from, &frame.payload, &mut done);
            if got >= self.max_recv {
                break;
            }
            next = self.t.try_recv()?;
        }
        let now = micros_since(self.born);
        for i in 0..self.clients.len() {
            if self.clients[i].next_deadline_us().is_some_and(|d| d <= now) {
                self.clients[i].tick(now, &mut self.out);
                let id = self.clients[i].id();
                self.flush_out(id);
            }
        }
        Ok(done)
    }

    /// Submits `op` from the first free slot and waits up to `timeout` for its completion.
    /// Errors: `Busy` when every slot has a request outstanding, `Timeout` when the group did
    /// not answer in time (the request stays outstanding: see the type's docs), the
    /// transport's receive errors. Completions of other slots seen meanwhile are dropped:
    /// use [`MeshClient::start`] and [`MeshClient::poll`] to keep several in flight.
    pub fn execute(&mut self, op: &[u8], timeout: Duration) -> Result<Completion> {
        let start = Instant::now();
        let slot = self.free_slot().ok_or_else(|| {
            Error::new(
                ErrorKind::Busy,
                "pbft endpoint: every client has a request outstanding",
            )
        })?;
        let ts = self.start(slot, op)?;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "pbft client {}: no agreed answer to request {ts} within {timeout:?}",
                        self.clients[slot].id()
                    ),
                ));
            }
            for (s, c) in self.poll(left.min(Duration::from_millis(10)))? {
                if s == slot && c.timestamp == ts {
                    return Ok(c);
                }
            }
        }
    }

    fn deliver(&mut self, from: NodeId, frame: &[u8], done: &mut Vec<(usize, Completion)>) {
        let (Some(Parsed::Client(c, bytes)), Some(r)) =
            (parse_frame(frame), self.addrs.replica_of(from))
        else {
            self.stats.host.rejected += 1;
            return;
        };
        let Some(&slot) = self.slot_of.get(&c) else {
            self.stats.host.rejected += 1;
            return;
        };
        let now = micros_since(self.born);
        match self.clients[slot].handle(Principal::Replica(r), bytes, now) {
            Ok(Some(comp)) => {
                self.stats.host.received += 1;
                match comp.path {
                    crate::pbft::Path::Fast => self.stats.fast += 1,
                    crate::pbft::Path::Slow => self.stats.slow += 1,
                }
                done.push((slot, comp));
            }
            Ok(None) => self.stats.host.received += 1,
            Err(_) => self.stats.host.rejected += 1,
        }
    }

    /// Sends what client `id` asked to send.
    fn flush_out(&mut self, id: u64) {
        for o in std::mem::take(&mut self.out) {
            let f = client_frame(id, &o.payload);
            match o.to {
                Dest::Replica(i) => match self.addrs.replica_node(i) {
                    Some(n) => self.outbox.send(&mut self.t, n, f, &mut self.stats.host),
                    None => self.stats.host.send_failed += 1,
                },
                Dest::AllReplicas => {
                    for i in 0..self.addrs.n() as u32 {
                        let n = self.addrs.replica_node(i).expect("in range");
                        self.outbox
                            .send(&mut self.t, n, f.clone(), &mut self.stats.host);
                    }
                }
                Dest::Client(_) => self.stats.host.send_failed += 1,
            }
        }
    }
}

impl<K: Authenticator, T: Transport> std::fmt::Debug for MeshClient<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("node", &self.t.local_id())
            .field("slots", &self.clients.len())
            .field("stats", &self.stats)
            .finish()
    }
}
