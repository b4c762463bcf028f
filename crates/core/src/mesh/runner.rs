//! A gossip member on a thread of its own: [`spawn_member`] opens the transport named in a
//! [`MemberSpec`] (rings in a shared directory on one host, or TCP), runs a
//! [`Member`] on a new thread, and answers a [`MemberHandle`] whose methods may be called
//! from any thread. This is the runner every host binding wraps (the C ABI, Python, the
//! Erlang NIF): no lock, thread or protocol logic lives in a binding.
//!
//! The thread owns the member. A handle's call is a command sent to it over a channel and
//! answered on a reply channel; between commands the thread waits on the transport for at
//! most [`MemberSpec::poll_slice`] (the latency a command may wait for, default 2 ms), so
//! the member's timers run on time whatever the callers do.
//!
//! # `round`
//!
//! [`MemberHandle::round`] runs one push-pull round on the member's thread at once
//! ([`Member::round`]: SWIM's timers and gossip's schedule are left alone) and returns the
//! member's round count.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::member::{Member, MemberOptions, MemberStats, MeshEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::membership::gossip::{GossipStats, Version};
use crate::membership::swim::{Member as SwimMember, SwimStats};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::tcp::{TcpOptions, TcpTransport};
use crate::net::{NodeId, Transport};

/// How a member reaches the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberTransport {
    /// Inbox rings in the shared directory `dir` (members on one host). A ring transport
    /// accepts frames from known peers only, so `peers` lists every other member that may
    /// ever send to this one.
    Ring {
        /// The cluster's ring directory (under `/dev/shm` for speed).
        dir: PathBuf,
        /// The inbox capacity in bytes (a power of two from 4 KiB; 1 MiB is a good default).
        inbox_capacity: usize,
        /// The ids of the other members.
        peers: Vec<u64>,
    },
    /// TCP: the member listens on `listen` and dials `peers`.
    Tcp {
        /// The address to listen on (port 0 picks one).
        listen: SocketAddr,
        /// The other members' ids and listening addresses.
        peers: Vec<(u64, SocketAddr)>,
    },
}

/// Everything a member needs to run ([`spawn_member`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    /// This member's id (not 0).
    pub id: u64,
    /// The transport.
    pub transport: MemberTransport,
    /// SWIM and gossip settings and the seeds to announce to ([`MemberOptions::seeds`]).
    pub options: MemberOptions,
    /// The longest the member's thread waits on the transport before it looks at its
    /// commands again (default 2 ms; at least 100 µs).
    pub poll_slice: Duration,
}

impl MemberSpec {
    /// Member `id` over `transport` announcing itself to `seeds`, with the default options.
    pub fn new(id: u64, transport: MemberTransport, seeds: &[u64]) -> MemberSpec {
        MemberSpec {
            id,
            transport,
            options: MemberOptions {
                seeds: seeds.iter().map(|&s| NodeId(s)).collect(),
                ..MemberOptions::default()
            },
            poll_slice: Duration::from_millis(2),
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("gossip member {}: {what}", self.id)));
        if self.id == 0 {
            return bad("the id must not be 0".into());
        }
        let peers: Vec<u64> = match &self.transport {
            MemberTransport::Ring { peers, .. } => peers.clone(),
            MemberTransport::Tcp { peers, .. } => peers.iter().map(|p| p.0).collect(),
        };
        if peers.contains(&self.id) {
            return bad("it lists itself among its peers".into());
        }
        if let Some(s) = self.options.seeds.iter().find(|s| !peers.contains(&s.0)) {
            return bad(format!("seed {} is not one of the peers {peers:?}", s.0));
        }
        self.options.swim.validate()?;
        self.options.gossip.validate()
    }
}

/// Every counter of a running member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberHandleStats {
    /// The host loop's.
    pub member: MemberStats,
    /// SWIM's.
    pub swim: SwimStats,
    /// Gossip's.
    pub gossip: GossipStats,
}

/// A command to a member's thread, with its reply channel.
enum Command {
    Put(Vec<u8>, Vec<u8>, Sender<Result<Version>>),
    Delete(Vec<u8>, Sender<Result<Option<Version>>>),
    Get(Vec<u8>, Sender<Option<Vec<u8>>>),
    Entries(Sender<Vec<(Vec<u8>, Vec<u8>)>>),
    Members(Sender<Vec<SwimMember>>),
    Live(Sender<Vec<NodeId>>),
    Round(Sender<u64>),
    Stats(Sender<MemberHandleStats>),
    Subscribe(Sender<Receiver<MeshEvent>>),
    Leave(Sender<Result<()>>),
    Stop,
}

/// A member running on a thread of its own ([`spawn_member`]). Every method takes `&self`
/// and may be called from any thread at once (`MemberHandle` is `Send + Sync`); calls are
/// served in order by the member's thread. After the member stopped (by [`stop`](Self::stop)
/// or because its transport failed) every call is `Closed`. Dropping the handle stops the
/// member and joins its thread (an error is then lost: call [`stop`](Self::stop) to see it).
pub struct MemberHandle {
    id: u64,
    local_addr: Option<SocketAddr>,
    commands: Sender<Command>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for MemberHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberHandle")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .field("running", &self.is_running())
            .finish()
    }
}

/// Opens member `spec`'s transport (creating the ring directory) and starts it on a new
/// thread; returns once the member is made (it has announced itself to its seeds). Errors:
/// a bad spec (`InvalidArgument`), the transport's (a second live member with the same id
/// in a ring directory is `Busy`, a TCP address in use is `Io`).
pub fn spawn_member(spec: MemberSpec) -> Result<MemberHandle> {
    spec.check()?;
    let id = spec.id;
    let (tx, rx) = mpsc::channel::<Command>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Option<SocketAddr>>>();
    let thread = std::thread::Builder::new()
        .name(format!("emf-gossip-{id}"))
        .spawn(move || {
            let r = open_and_run(&spec, rx, &ready_tx);
            if let Err(e) = &r {
                // An open that failed: the caller is still waiting (else nobody listens).
                let _ = ready_tx.send(Err(e.clone()));
            }
            r
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("gossip member {id}: cannot start its thread: {e}"),
            )
        })?;
    let mut h = MemberHandle {
        id,
        local_addr: None,
        commands: tx,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(addr)) => {
            h.local_addr = addr;
            Ok(h)
        }
        Ok(Err(e)) => {
            let _ = h.join();
            Err(e)
        }
        Err(_) => Err(h.join().err().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("gossip member {id}: its thread ended before it started"),
            )
        })),
    }
}

fn open_and_run(
    spec: &MemberSpec,
    rx: Receiver<Command>,
    ready: &mpsc::Sender<Result<Option<SocketAddr>>>,
) -> Result<()> {
    let id = NodeId(spec.id);
    match &spec.transport {
        MemberTransport::Ring {
            dir,
            inbox_capacity,
            peers,
        } => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "gossip member {}: cannot create {}: {e}",
                        spec.id,
                        dir.display()
                    ),
                )
            })?;
            let peers: Vec<NodeId> = peers.iter().map(|&p| NodeId(p)).collect();
            let mut o = RingNetOptions::in_dir(dir);
            o.inbox_capacity = *inbox_capacity;
            o.max_producers = o.max_producers.max(peers.len());
            let t = RingTransport::open(id, &peers, o)?;
            let m = Member::new(t, spec.options.clone())?;
            let _ = ready.send(Ok(None));
            run(m, rx, spec.poll_slice)
        }
        MemberTransport::Tcp { listen, peers } => {
            let peers: Vec<(NodeId, SocketAddr)> =
                peers.iter().map(|&(p, a)| (NodeId(p), a)).collect();
            let t = TcpTransport::bind(id, *listen, &peers, TcpOptions::default())?;
            let addr = t.local_addr();
            let m = Member::new(t, spec.options.clone())?;
            let _ = ready.send(Ok(Some(addr)));
            run(m, rx, spec.poll_slice)
        }
    }
}

/// The member's loop: commands, then the transport and the timers, until told to stop.
fn run<T: Transport>(mut m: Member<T>, rx: Receiver<Command>, slice: Duration) -> Result<()> {
    let slice = slice.max(Duration::from_micros(100));
    loop {
        // Commands first; a command that arrives while the transport is waited on waits
        // at most one slice.
        let mut next = match rx.recv_timeout(Duration::ZERO) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        while let Some(c) = next {
            if !serve(&mut m, c) {
                return Ok(());
            }
            next = rx.try_recv().ok();
        }
        m.poll(slice)?;
    }
}

/// Serves one command; false to stop.
fn serve<T: Transport>(m: &mut Member<T>, c: Command) -> bool {
    match c {
        Command::Put(k, v, r) => drop(r.send(m.put(&k, &v))),
        Command::Delete(k, r) => drop(r.send(m.delete(&k))),
        Command::Get(k, r) => drop(r.send(m.get(&k).map(<[u8]>::to_vec))),
        Command::Entries(r) => {
            drop(r.send(m.entries().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()))
        }
        Command::Members(r) => drop(r.send(m.members())),
        Command::Live(r) => drop(r.send(m.live_members())),
        Command::Round(r) => {
            let now = m.clock_us();
            m.round(now);
            let _ = r.send(m.gossip_stats().rounds);
        }
        Command::Stats(r) => drop(r.send(MemberHandleStats {
            member: m.stats(),
            swim: m.swim_stats(),
            gossip: m.gossip_stats(),
        })),
        Command::Subscribe(r) => drop(r.send(m.subscribe())),
        Command::Leave(r) => drop(r.send(m.leave())),
        Command::Stop => return false,
    }
    true
}

impl MemberHandle {
    /// The member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address a TCP member listens on (the port picked for port 0); `None` over rings.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// False once the member's loop has ended (stopped, or failed: [`stop`](Self::stop)
    /// says why).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Sends a command and waits for its answer; `Closed` once the member has stopped.
    fn call<R>(&self, make: impl FnOnce(Sender<R>) -> Command) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        self.commands.send(make(tx)).map_err(|_| self.closed())?;
        rx.recv().map_err(|_| self.closed())
    }

    fn closed(&self) -> Error {
        Error::new(
            ErrorKind::Closed,
            format!("gossip member {}: it has stopped", self.id),
        )
    }

    /// Writes `key` = `value`; gossip spreads it from the next round. The new version;
    /// `InvalidArgument`/`TooLarge` beyond the configured sizes.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Version> {
        self.call(|r| Command::Put(key.to_vec(), value.to_vec(), r))?
    }

    /// Deletes `key` (a tombstone spreads); `None` when there was nothing to delete.
    pub fn delete(&self, key: &[u8]) -> Result<Option<Version>> {
        self.call(|r| Command::Delete(key.to_vec(), r))?
    }

    /// The value of `key`, if live.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.call(|r| Command::Get(key.to_vec(), r))
    }

    /// Every live key and value.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.call(Command::Entries)
    }

    /// Every member known (live and down, not this one), with its state.
    pub fn members(&self) -> Result<Vec<SwimMember>> {
        self.call(Command::Members)
    }

    /// The live members (not this one), ascending.
    pub fn live_members(&self) -> Result<Vec<NodeId>> {
        self.call(Command::Live)
    }

    /// Runs one push-pull round now (module docs: `round`); returns the member's round
    /// count.
    pub fn round(&self) -> Result<u64> {
        self.call(Command::Round)
    }

    /// Every counter.
    pub fn stats(&self) -> Result<MemberHandleStats> {
        self.call(Command::Stats)
    }

    /// A subscription to every later [`MeshEvent`] (member up, suspect, down, restarted,
    /// rejoined; keys changed by remote writes), through a bounded channel of
    /// [`MemberOptions::max_events`]: events a slow subscriber has no room for are dropped and
    /// counted in [`MemberStats::events_dropped`]. Dropping the receiver ends it; it
    /// disconnects when the member stops.
    pub fn subscribe(&self) -> Result<Receiver<MeshEvent>> {
        self.call(Command::Subscribe)
    }

    /// Leaves the cluster (the others learn it from SWIM and report this member down, not
    /// failed). The member keeps running (answering gossip) until stopped.
    pub fn leave(&self) -> Result<()> {
        self.call(Command::Leave)?
    }

    /// Stops the member (without leaving: the others detect it as failed) and joins its
    /// thread. Errors: what ended its loop (the transport failing); `Ok` when it ran until
    /// told to stop.
    pub fn stop(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let _ = self.commands.send(Command::Stop);
        match self.thread.take() {
            None => Ok(()),
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("gossip member {}: its thread panicked", self.id),
                ))
            }),
        }
    }
}

impl Drop for MemberHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests;
