//! One node of a Raft cluster from a [`NodeSpec`]: the replicated [`KvStore`] is what
//! `erlmcp-flow raft node` and every node of a [`LocalCluster`](super::cluster::LocalCluster)
//! run ([`run_node`]); any other [`StateMachine`] runs with [`run_node_with`], and
//! [`spawn_node`] runs one on a thread of its own behind a [`NodeHandle`], so that a host
//! process (a C or Python program through the C ABI) can *be* one node of a cluster, with
//! its own state machine, next to node processes or other in-process nodes.
//!
//! # Snapshots of a host's state machine
//!
//! Every `snapshot_entries` applied entries the node asks the machine for
//! [`StateMachine::snapshot`] (the *whole* state: the log before it is compacted away), and a
//! node that starts from a data directory holding a snapshot, or that falls so far behind
//! that the leader sends one, calls [`StateMachine::restore`] with those bytes and then
//! applies only the entries after it. A machine whose snapshot leaves something out diverges
//! after a restart; one whose `restore` refuses bytes stops its node with that error.
//!
//! # A state machine that cannot go on
//!
//! `apply` and `snapshot` answer no error: an operation the machine cannot parse is answered
//! in the machine's own encoding. When the machine itself fails (a host callback reported
//! an error, its process state is broken), it calls [`abort_node`] from inside the callback:
//! the node stops at once — nothing after that point is applied or persisted, so a restart
//! from the data directory replays the entry — and [`NodeHandle::stop`] (or
//! [`run_node_with`]) returns the error.
//!
//! Over rings, the node's peers are the other voters and the client ids listed in
//! [`NodeTransport::Ring`] (the `erlmcp-flow raft node` command lists
//! [`default_client_ids`](super::client::default_client_ids) by default) — a ring transport
//! knows its peers in advance. Over TCP, clients are peers with an address the node dials to
//! answer ([`NodeTransport::Tcp`]).

use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::server::{ServeOptions, Server};
use super::{Replica, ReplicaOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::tcp::{TcpOptions, TcpTransport};
use crate::net::{NodeId, Transport};
use crate::raft::{Config, KvStore, LogStorage, Node, StateMachine};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

/// How a node reaches its peers and clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeTransport {
    /// Inbox rings in the cluster directory `dir` (nodes on one host).
    Ring {
        /// The cluster's ring directory (under `/dev/shm` for speed).
        dir: PathBuf,
        /// The node's inbox capacity in bytes (a power of two).
        inbox_capacity: usize,
        /// The client ids whose requests the node accepts.
        clients: Vec<u64>,
    },
    /// TCP: the node listens on `listen` and dials its peers.
    Tcp {
        /// The address to listen on.
        listen: SocketAddr,
        /// The other voters' addresses.
        peers: Vec<(u64, SocketAddr)>,
        /// The clients' addresses (each a client's listening address).
        clients: Vec<(u64, SocketAddr)>,
    },
}

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// This node's id (one of `voters`).
    pub id: u64,
    /// The voters of the cluster (used when the data directory is new).
    pub voters: Vec<u64>,
    /// The durable log's directory; `None` keeps the log in memory (benchmarks: a node
    /// restarted in memory has forgotten its votes and log, which Raft's safety assumes it
    /// has not — restart memory nodes only with the whole cluster).
    pub data_dir: Option<PathBuf>,
    /// The transport.
    pub transport: NodeTransport,
    /// One Raft tick of the clock.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Applied entries between snapshots (0: never).
    pub snapshot_entries: u64,
}

impl NodeSpec {
    /// Node `id` of `voters` with the defaults: 10 ms ticks, elections after 10 ticks,
    /// heartbeats every 2, snapshots every 10 000 entries.
    pub fn new(
        id: u64,
        voters: Vec<u64>,
        data_dir: Option<PathBuf>,
        transport: NodeTransport,
    ) -> NodeSpec {
        NodeSpec {
            id,
            voters,
            data_dir,
            transport,
            tick: Duration::from_millis(10),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_entries: 10_000,
        }
    }

    fn check(&self) -> Result<()> {
        if self.id == 0 || !self.voters.contains(&self.id) {
            return Err(Error::invalid(format!(
                "raft node {}: the id must be one of the voters {:?} (and not 0)",
                self.id, self.voters
            )));
        }
        let clients: Vec<u64> = match &self.transport {
            NodeTransport::Ring { clients, .. } => clients.clone(),
            NodeTransport::Tcp { peers, clients, .. } => {
                for v in &self.voters {
                    if *v != self.id && !peers.iter().any(|(p, _)| p == v) {
                        return Err(Error::invalid(format!(
                            "raft node {}: no address for voter {v}",
                            self.id
                        )));
                    }
                }
                clients.iter().map(|c| c.0).collect()
            }
        };
        if let Some(c) = clients.iter().find(|c| self.voters.contains(c)) {
            return Err(Error::invalid(format!(
                "raft node {}: client id {c} is a voter",
                self.id
            )));
        }
        Ok(())
    }
}

/// What a running node publishes after every round (read by [`NodeHandle::info`]).
#[derive(Debug, Default)]
struct Published {
    leader: AtomicU64,
    term: AtomicU64,
    commit: AtomicU64,
    applied: AtomicU64,
    running: AtomicBool,
}

/// A running node's view of the cluster, as of its latest round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// The index its state machine has applied.
    pub applied: u64,
    /// False once the node's loop has ended (stopped, or failed: [`NodeHandle::stop`] says).
    pub running: bool,
}

/// The payload [`abort_node`] unwinds with.
struct NodeAbort(Error);

/// Stops the node whose state machine calls it, from inside [`StateMachine::apply`],
/// [`StateMachine::snapshot`] or [`StateMachine::restore`], with `err`: see the module docs.
/// The node's loop ([`run_node_with`], [`spawn_node`]) returns `err`; nothing after the call
/// is applied or persisted. Unwinds without running the panic hook (no message on stderr);
/// called outside a node's loop, it is an uncaught panic of the calling thread.
pub fn abort_node(err: Error) -> ! {
    panic::resume_unwind(Box::new(NodeAbort(err)))
}

/// Runs `f`, turning an [`abort_node`] into its error (any other panic goes on unwinding).
pub(super) fn catch_abort(f: impl FnOnce() -> Result<()>) -> Result<()> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => match p.downcast::<NodeAbort>() {
            Ok(a) => Err(a.0),
            Err(p) => panic::resume_unwind(p),
        },
    }
}

/// The message of a panic's payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The node's replica over `t`, with its log opened and `sm` restored from it.
fn open_server<S: StateMachine, T: Transport>(
    spec: &NodeSpec,
    t: T,
    clients: &[u64],
    sm: S,
) -> Result<Server<S, T>> {
    let storage = match &spec.data_dir {
        Some(d) => LogStorage::open(d)?,
        None => LogStorage::memory(),
    };
    let mut cfg = Config::new(spec.id, spec.voters.clone());
    cfg.election_tick = spec.election_tick;
    cfg.heartbeat_tick = spec.heartbeat_tick;
    cfg.snapshot_entries = spec.snapshot_entries;
    let node = Node::new(cfg, storage, sm)?;
    let opts = ReplicaOptions {
        tick: spec.tick,
        ..ReplicaOptions::default()
    };
    let mut replica = Replica::new(node, t, opts)?;
    // Clients speak the client protocol only: a Raft frame from one is refused.
    replica.set_clients(clients.iter().copied());
    Server::new(replica, ServeOptions::default())
}

/// Serves until `stop`, publishing after every round.
fn serve<S: StateMachine, T: Transport>(
    srv: &mut Server<S, T>,
    stop: &AtomicBool,
    publish: Option<&Published>,
) -> Result<()> {
    let poll = ServeOptions::default().poll;
    while !stop.load(Ordering::Relaxed) {
        let now = srv.replica().elapsed();
        srv.run_once(now, poll)?;
        if let Some(p) = publish {
            let r = srv.replica();
            p.leader.store(r.leader().unwrap_or(0), Ordering::Relaxed);
            p.term.store(r.term(), Ordering::Relaxed);
            p.commit.store(r.node().commit_index(), Ordering::Relaxed);
            p.applied.store(r.node().applied_index(), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Opens node `spec`'s transport (creating a ring directory) and hands it, with the client
/// ids, to `f`.
fn with_transport<R>(spec: &NodeSpec, f: impl FnOnce(Opened) -> Result<R>) -> Result<R> {
    spec.check()?;
    let others = spec.voters.iter().filter(|&&v| v != spec.id);
    match &spec.transport {
        NodeTransport::Ring {
            dir,
            inbox_capacity,
            clients,
        } => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "raft node {}: cannot create {}: {e}",
                        spec.id,
                        dir.display()
                    ),
                )
            })?;
            let peers: Vec<NodeId> = others.chain(clients).map(|&n| NodeId(n)).collect();
            let mut o = RingNetOptions::in_dir(dir);
            o.inbox_capacity = *inbox_capacity;
            o.max_producers = o.max_producers.max(peers.len());
            let t = RingTransport::open(NodeId(spec.id), &peers, o)?;
            f(Opened::Ring(t, clients.clone()))
        }
        NodeTransport::Tcp {
            listen,
            peers,
            clients,
        } => {
            let all: Vec<(NodeId, SocketAddr)> = peers
                .iter()
                .chain(clients)
                .filter(|(n, _)| *n != spec.id)
                .map(|&(n, a)| (NodeId(n), a))
                .collect();
            let t = TcpTransport::bind(NodeId(spec.id), *listen, &all, TcpOptions::default())?;
            f(Opened::Tcp(t, clients.iter().map(|c| c.0).collect()))
        }
    }
}

/// A node's opened transport and its client ids.
enum Opened {
    Ring(RingTransport, Vec<u64>),
    Tcp(TcpTransport, Vec<u64>),
}

/// Runs node `spec` with the replicated [`KvStore`] until `stop` is set: see
/// [`run_node_with`].
pub fn run_node(spec: &NodeSpec, stop: &AtomicBool) -> Result<()> {
    run_node_with(spec, KvStore::new(), stop)
}

/// Runs node `spec` with state machine `sm` (empty: restored from the data directory's
/// snapshot, if any) until `stop` is set: opens its transport (creating a ring directory)
/// and log, then serves the client protocol ([`Server::serve`]) on the calling thread.
/// Errors: a bad spec (`InvalidArgument`), the transport's or the log's (a second process
/// for the same id is `Busy`), the state machine's (a refused snapshot, [`abort_node`]).
pub fn run_node_with<S: StateMachine>(spec: &NodeSpec, sm: S, stop: &AtomicBool) -> Result<()> {
    catch_abort(|| {
        with_transport(spec, |o| match o {
            Opened::Ring(t, c) => serve(&mut open_server(spec, t, &c, sm)?, stop, None),
            Opened::Tcp(t, c) => serve(&mut open_server(spec, t, &c, sm)?, stop, None),
        })
    })
}

/// One node running on a thread of its own ([`spawn_node`]); dropping it stops the node and
/// joins the thread (an error is then lost: call [`stop`](Self::stop) to see it).
pub struct NodeHandle {
    id: u64,
    stop: Arc<AtomicBool>,
    published: Arc<Published>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("info", &self.info())
            .finish()
    }
}

/// Starts node `spec` with state machine `sm` on a new thread and returns once its transport
/// and log are open (their errors are returned here, as [`run_node_with`]'s): the thread then
/// serves until [`NodeHandle::stop`]. Every call into `sm` is made on that thread. A node
/// restarted from its data directory (`spec.data_dir`) gets an empty `sm`: it is restored
/// from the latest snapshot and the entries after it are applied again.
pub fn spawn_node<S>(spec: NodeSpec, sm: S) -> Result<NodeHandle>
where
    S: StateMachine + Send + 'static,
{
    // A bad spec is refused before any thread starts.
    spec.check()?;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Published::default());
    published.running.store(true, Ordering::Relaxed);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (st, pb) = (stop.clone(), published.clone());
    let id = spec.id;
    let thread = std::thread::Builder::new()
        .name(format!("emf-raft-node-{id}"))
        .spawn(move || {
            // `running` turns false however the loop ends (a panic too).
            struct Ended(Arc<Published>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.running.store(false, Ordering::Relaxed);
                }
            }
            let _ended = Ended(pb.clone());
            let r = catch_abort(|| {
                with_transport(&spec, |o| match o {
                    Opened::Ring(t, c) => {
                        serve(&mut open(&spec, t, &c, sm, &ready_tx)?, &st, Some(&pb))
                    }
                    Opened::Tcp(t, c) => {
                        serve(&mut open(&spec, t, &c, sm, &ready_tx)?, &st, Some(&pb))
                    }
                })
            });
            // An open that failed before the server existed: the caller is still waiting.
            if let Err(e) = &r {
                let _ = ready_tx.send(Err(e.clone()));
            }
            r
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("raft node {id}: cannot start its thread: {e}"),
            )
        })?;
    let mut h = NodeHandle {
        id,
        stop,
        published,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => {
            let _ = h.join();
            Err(e)
        }
        Err(_) => Err(h.join().err().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("raft node {id}: its thread ended before it opened"),
            )
        })),
    }
}

/// Opens the server and tells the waiting [`spawn_node`] it did.
fn open<S: StateMachine, T: Transport>(
    spec: &NodeSpec,
    t: T,
    clients: &[u64],
    sm: S,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<Server<S, T>> {
    let srv = open_server(spec, t, clients, sm)?;
    let _ = ready.send(Ok(()));
    Ok(srv)
}

impl NodeHandle {
    /// The node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of the thread running the node (every call into its state machine is made
    /// on it), `None` once stopped: a host refuses to stop a node from inside its own
    /// callback (the thread would join itself).
    pub fn thread_id(&self) -> Option<std::thread::ThreadId> {
        self.thread.as_ref().map(|t| t.thread().id())
    }

    /// The node's view as of its latest round (`running` false once its loop ended).
    pub fn info(&self) -> NodeInfo {
        let p = &self.published;
        NodeInfo {
            id: self.id,
            leader: p.leader.load(Ordering::Relaxed),
            term: p.term.load(Ordering::Relaxed),
            commit: p.commit.load(Ordering::Relaxed),
            applied: p.applied.load(Ordering::Relaxed),
            running: p.running.load(Ordering::Relaxed),
        }
    }

    /// Stops the node and joins its thread. Errors: what ended its loop (its log's I/O, the
    /// transport's, the state machine's [`abort_node`] or refused snapshot); `Ok` when it
    /// was serving until told to stop. The data directory may then be opened again.
    pub fn stop(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            None => Ok(()),
            Some(t) => t.join().unwrap_or_else(|p| {
                Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "raft node {}: its thread panicked: {}",
                        self.id,
                        panic_message(&*p)
                    ),
                ))
            }),
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}
