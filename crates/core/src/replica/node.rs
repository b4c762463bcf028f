//! One node of a Raft cluster running the replicated [`KvStore`], from a [`NodeSpec`]: what
//! `erlmcp-flow raft node` and every node of a [`LocalCluster`](super::cluster::LocalCluster)
//! run ([`run_node`]).
//!
//! Over rings, the node's peers are the other voters and the client ids listed in
//! [`NodeTransport::Ring`] (the `erlmcp-flow raft node` command lists
//! [`default_client_ids`](super::client::default_client_ids) by default) — a ring transport
//! knows its peers in advance. Over TCP, clients are peers with an address the node dials to
//! answer ([`NodeTransport::Tcp`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::server::{ServeOptions, Server};
use super::{Replica, ReplicaOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::tcp::{TcpOptions, TcpTransport};
use crate::net::{NodeId, Transport};
use crate::raft::{Config, KvStore, LogStorage, Node};
use crate::sync::AtomicBool;

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

fn serve_on<T: Transport>(spec: &NodeSpec, t: T, clients: &[u64], stop: &AtomicBool) -> Result<()> {
    let storage = match &spec.data_dir {
        Some(d) => LogStorage::open(d)?,
        None => LogStorage::memory(),
    };
    let mut cfg = Config::new(spec.id, spec.voters.clone());
    cfg.election_tick = spec.election_tick;
    cfg.heartbeat_tick = spec.heartbeat_tick;
    cfg.snapshot_entries = spec.snapshot_entries;
    let node = Node::new(cfg, storage, KvStore::new())?;
    let opts = ReplicaOptions {
        tick: spec.tick,
        ..ReplicaOptions::default()
    };
    let mut replica = Replica::new(node, t, opts)?;
    // Clients speak the client protocol only: a Raft frame from one is refused.
    replica.set_clients(clients.iter().copied());
    Server::new(replica, ServeOptions::default())?.serve(stop)
}

/// Runs node `spec` until `stop` is set: opens its transport (creating a ring directory)
/// and log, then serves the client
/// protocol ([`Server::serve`]). Errors: a bad spec (`InvalidArgument`), the transport's or
/// the log's (a second process for the same id is `Busy`).
pub fn run_node(spec: &NodeSpec, stop: &AtomicBool) -> Result<()> {
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
            serve_on(spec, t, clients, stop)
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
            let ids: Vec<u64> = clients.iter().map(|c| c.0).collect();
            serve_on(spec, t, &ids, stop)
        }
    }
}
