//! [`spawn_replica`]: a PBFT replica on a thread of its own, over rings or TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{micros_since, Addresses, HostOptions, ReplicaHost};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::tcp::{TcpOptions, TcpTransport};
use crate::net::{NodeId, Transport};
use crate::pbft::{App, Authenticator, Config, Replica};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

/// How a spawned replica reaches the other replicas and the client endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbftTransport {
    /// Inbox rings in the group's directory `dir` (one host). The replica's peers are the
    /// other replicas and every client endpoint of the address book.
    Ring {
        /// The group's ring directory (under `/dev/shm` for speed); created if needed.
        dir: PathBuf,
        /// The replica's inbox capacity in bytes (a power of two).
        inbox_capacity: usize,
    },
    /// TCP: the replica listens on `listen` and dials `peers`.
    Tcp {
        /// The address to listen on.
        listen: SocketAddr,
        /// The other replicas' and the client endpoints' addresses, by node.
        peers: Vec<(NodeId, SocketAddr)>,
    },
}

/// Everything a spawned replica needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// The replica's id, `0..n`.
    pub id: u32,
    /// The group's parameters (the same at every replica).
    pub config: Config,
    /// The address book (the same at every replica and endpoint).
    pub addrs: Addresses,
    /// The transport.
    pub transport: PbftTransport,
    /// The longest one round waits for a frame (bounds how late a stop is seen).
    pub poll: Duration,
    /// The host loop's options.
    pub host: HostOptions,
}

impl ReplicaSpec {
    /// Replica `id` with `config` and `addrs` over `transport`, polling every 5 ms.
    pub fn new(id: u32, config: Config, addrs: Addresses, transport: PbftTransport) -> ReplicaSpec {
        ReplicaSpec {
            id,
            config,
            addrs,
            transport,
            poll: Duration::from_millis(5),
            host: HostOptions::default(),
        }
    }

    fn check(&self) -> Result<()> {
        self.config.validate()?;
        if self.addrs.n() != self.config.n || self.addrs.replica_node(self.id).is_none() {
            return Err(Error::invalid(format!(
                "pbft replica {}: the address book names {} replicas, the group has {}",
                self.id,
                self.addrs.n(),
                self.config.n
            )));
        }
        if self.poll.is_zero() {
            return Err(Error::invalid(
                "pbft replica: the poll interval must be positive",
            ));
        }
        Ok(())
    }

    fn node(&self) -> NodeId {
        self.addrs.replica_node(self.id).expect("checked")
    }

    fn open_ring(&self, dir: &PathBuf, inbox_capacity: usize) -> Result<RingTransport> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "pbft replica {}: cannot create {}: {e}",
                    self.id,
                    dir.display()
                ),
            )
        })?;
        let me = self.node();
        let peers: Vec<NodeId> = self
            .addrs
            .replicas()
            .iter()
            .copied()
            .chain(self.addrs.endpoints())
            .filter(|&n| n != me)
            .collect();
        let mut o = RingNetOptions::in_dir(dir);
        o.inbox_capacity = inbox_capacity;
        o.max_producers = o.max_producers.max(peers.len());
        RingTransport::open(me, &peers, o)
    }
}

/// What a running replica publishes after every round (read by [`ReplicaHandle::info`]).
#[derive(Debug, Default)]
struct Published {
    view: AtomicU64,
    executed: AtomicU64,
    changing: AtomicBool,
    running: AtomicBool,
}

/// A running replica's state as of its latest round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The replica's id.
    pub id: u32,
    /// Its view (the target view during a view change).
    pub view: u64,
    /// The last sequence number it committed and executed.
    pub executed: u64,
    /// Whether a view change is under way.
    pub in_view_change: bool,
    /// False once the loop has ended (stopped, or failed: [`ReplicaHandle::stop`] says).
    pub running: bool,
}

/// A replica running on a thread of its own ([`spawn_replica`]); dropping it stops the
/// replica and joins the thread (an error is then lost: call [`stop`](Self::stop)).
pub struct ReplicaHandle {
    id: u32,
    stop: Arc<AtomicBool>,
    published: Arc<Published>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle")
            .field("info", &self.info())
            .finish()
    }
}

/// Starts replica `spec.id` with `keys` over `app` (in the group's initial state) on a new
/// thread and returns once its transport is open (its errors, and a bad spec, are returned
/// here). The thread then runs rounds on the real clock (microseconds since the start) until
/// [`ReplicaHandle::stop`]; every call into `app` is made on it.
pub fn spawn_replica<A, K>(spec: ReplicaSpec, keys: K, app: A) -> Result<ReplicaHandle>
where
    A: App + Send + 'static,
    K: Authenticator + Send + 'static,
{
    spec.check()?;
    let replica = Replica::new(spec.config.clone(), spec.id, keys, app)?;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Published::default());
    published.running.store(true, Ordering::Relaxed);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (st, pb) = (stop.clone(), published.clone());
    let id = spec.id;
    let thread = std::thread::Builder::new()
        .name(format!("emf-pbft-{id}"))
        .spawn(move || {
            // `running` turns false however the loop ends (a panic too).
            struct Ended(Arc<Published>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.running.store(false, Ordering::Relaxed);
                }
            }
            let _ended = Ended(pb.clone());
            let r = match &spec.transport {
                PbftTransport::Ring {
                    dir,
                    inbox_capacity,
                } => spec
                    .open_ring(dir, *inbox_capacity)
                    .and_then(|t| serve(&spec, replica, t, &ready_tx, &st, &pb)),
                PbftTransport::Tcp { listen, peers } => {
                    TcpTransport::bind(spec.node(), *listen, peers, TcpOptions::default())
                        .and_then(|t| serve(&spec, replica, t, &ready_tx, &st, &pb))
                }
            };
            // An open that failed: the caller is still waiting.
            if let Err(e) = &r {
                let _ = ready_tx.send(Err(e.clone()));
            }
            r
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("pbft replica {id}: cannot start its thread: {e}"),
            )
        })?;
    let mut h = ReplicaHandle {
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
                format!("pbft replica {id}: its thread ended before it opened"),
            )
        })),
    }
}

/// Runs rounds until `stop`, publishing after each.
fn serve<A: App, K: Authenticator, T: Transport>(
    spec: &ReplicaSpec,
    replica: Replica<A, K>,
    t: T,
    ready: &mpsc::Sender<Result<()>>,
    stop: &AtomicBool,
    publish: &Published,
) -> Result<()> {
    let mut host = ReplicaHost::new(replica, t, spec.addrs.clone(), spec.host)?;
    let _ = ready.send(Ok(()));
    let born = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        host.run_once(micros_since(born), spec.poll)?;
        let r = host.replica();
        publish.view.store(r.view(), Ordering::Relaxed);
        publish.executed.store(r.last_executed(), Ordering::Relaxed);
        publish
            .changing
            .store(r.in_view_change(), Ordering::Relaxed);
    }
    Ok(())
}

impl ReplicaHandle {
    /// The replica's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The replica's state as of its latest round.
    pub fn info(&self) -> ReplicaInfo {
        let p = &self.published;
        ReplicaInfo {
            id: self.id,
            view: p.view.load(Ordering::Relaxed),
            executed: p.executed.load(Ordering::Relaxed),
            in_view_change: p.changing.load(Ordering::Relaxed),
            running: p.running.load(Ordering::Relaxed),
        }
    }

    /// Stops the replica and joins its thread: `Ok` when it ran until told to stop, else what
    /// ended its loop (a transport error, a panic). A stopped replica is a crashed one to
    /// the rest of the group.
    pub fn stop(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            None => Ok(()),
            Some(t) => t.join().unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("pbft replica {}: its thread panicked: {msg}", self.id),
                ))
            }),
        }
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}
