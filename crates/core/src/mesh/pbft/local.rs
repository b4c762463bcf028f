//! [`LocalGroup`]: a PBFT group of replica threads in this process and a client, over rings
//! — what the hosts (C, Python, Erlang's `fast_path_consensus/1`) start and call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    spawn_replica, Addresses, MeshClient, OrderLog, PbftTransport, ReplicaHandle, ReplicaInfo,
    ReplicaSpec,
};
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::NodeId;
use crate::pbft::{
    Authenticator, Client, ClientConfig, Completion, Config, Ed25519Keys, Principal, SimKeys,
};

/// Keys of one principal of a [`LocalGroup`].
pub type GroupKeys = Box<dyn Authenticator + Send>;

/// How a [`LocalGroup`] is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGroupOptions {
    /// Replicas, 3f + 1 with f >= 1.
    pub n: usize,
    /// Sign with Ed25519 (fresh random keys from `/dev/urandom`); `false`: the simulation's
    /// insecure keyed hash ([`SimKeys`]), for tests.
    pub ed25519: bool,
    /// The client completes on 2f + 1 tentative replies (the fast path); `false`: only on
    /// f + 1 committed replies.
    pub accept_tentative: bool,
    /// The primary's batch window, microseconds (0: order each request at once).
    pub batch_window_us: u64,
    /// A backup waiting this long for a request it knows starts a view change, microseconds.
    pub view_change_timeout_us: u64,
    /// The client sends a request again to every replica after this long, microseconds.
    pub retransmit_us: u64,
    /// The longest [`LocalGroup::execute`] waits.
    pub timeout: Duration,
}

impl Default for LocalGroupOptions {
    /// Four replicas, Ed25519, the fast path, no batch window, a 200 ms view-change timeout,
    /// retransmission after 100 ms, 10 s per call.
    fn default() -> Self {
        LocalGroupOptions {
            n: 4,
            ed25519: true,
            accept_tentative: true,
            batch_window_us: 0,
            view_change_timeout_us: 200_000,
            retransmit_us: 100_000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The client endpoint's node in a [`LocalGroup`] (replicas are nodes `1..=n`).
pub const LOCAL_ENDPOINT: NodeId = NodeId(1000);
/// The client's id in a [`LocalGroup`].
pub const LOCAL_CLIENT: u64 = 1;

/// `n` replica threads replicating an [`OrderLog`] over rings in a directory, and one client.
/// Dropping it stops the replicas; the ring files stay in the directory (remove it).
pub struct LocalGroup {
    replicas: Vec<Option<ReplicaHandle>>,
    client: MeshClient<GroupKeys, RingTransport>,
    dir: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGroup")
            .field("dir", &self.dir)
            .field("replicas", &self.replicas)
            .finish()
    }
}

fn random_seed() -> Result<[u8; 32]> {
    use std::io::Read;
    let mut s = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut s))
        .map_err(|e| Error::new(ErrorKind::Io, format!("pbft group: no random key: {e}")))?;
    Ok(s)
}

impl LocalGroup {
    /// Starts the group in `dir` (created if needed; it must not hold another running
    /// group's rings): `n` replica threads, then the client. Errors: bad options
    /// (`InvalidArgument`), the rings', key generation's.
    pub fn start(dir: &Path, opts: &LocalGroupOptions) -> Result<LocalGroup> {
        let mut cfg = Config::new(opts.n);
        cfg.batch_window_us = opts.batch_window_us;
        cfg.view_change_timeout_us = opts.view_change_timeout_us;
        cfg.validate()?;
        if opts.timeout.is_zero() || opts.retransmit_us == 0 {
            return Err(Error::invalid(
                "pbft group: the timeout and the retransmission interval must be positive",
            ));
        }
        let addrs = Addresses::numbered(opts.n).with_clients(LOCAL_ENDPOINT, [LOCAL_CLIENT])?;
        let (replica_keys, client_keys): (Vec<GroupKeys>, GroupKeys) = if opts.ed25519 {
            let seeds = (0..opts.n)
                .map(|_| random_seed())
                .collect::<Result<Vec<_>>>()?;
            let pubs: Vec<[u8; 32]> = seeds.iter().map(Ed25519Keys::public_key).collect();
            let cseed = random_seed()?;
            let clients = [(LOCAL_CLIENT, Ed25519Keys::public_key(&cseed))];
            let r = seeds
                .iter()
                .map(|s| Ok(Box::new(Ed25519Keys::new(s, &pubs, &clients)?) as GroupKeys))
                .collect::<Result<Vec<_>>>()?;
            (r, Box::new(Ed25519Keys::new(&cseed, &pubs, &[])?))
        } else {
            let cluster = u64::from_le_bytes(random_seed()?[..8].try_into().expect("8 bytes"));
            let r = (0..opts.n as u32)
                .map(|i| Box::new(SimKeys::new(Principal::Replica(i), cluster)) as GroupKeys)
                .collect();
            (
                r,
                Box::new(SimKeys::new(Principal::Client(LOCAL_CLIENT), cluster)),
            )
        };
        let mut replicas = Vec::with_capacity(opts.n);
        for (i, keys) in replica_keys.into_iter().enumerate() {
            let t = PbftTransport::Ring {
                dir: dir.to_path_buf(),
                inbox_capacity: 4 << 20,
            };
            let mut spec = ReplicaSpec::new(i as u32, cfg.clone(), addrs.clone(), t);
            spec.poll = Duration::from_millis(2);
            // A replica that fails to start stops those started before it (drop).
            replicas.push(Some(spawn_replica(spec, keys, OrderLog::new())?));
        }
        let mut cc = ClientConfig::new(opts.n);
        cc.accept_tentative = opts.accept_tentative;
        cc.retransmit_us = opts.retransmit_us;
        let client = Client::new(cc, LOCAL_CLIENT, client_keys, 0)?;
        let mut ro = RingNetOptions::in_dir(dir);
        ro.inbox_capacity = 4 << 20;
        let client = MeshClient::over_rings(LOCAL_ENDPOINT, addrs, vec![client], ro)?;
        Ok(LocalGroup {
            replicas,
            client,
            dir: dir.to_path_buf(),
            timeout: opts.timeout,
        })
    }

    /// Agrees on `op` and returns its completion: the [`OrderLog`] result (its position in
    /// the agreed order and the chain) and the path. Errors: `Timeout` when the group did not
    /// answer in time — then `Busy` until that request completes (PBFT has no cancel; a later
    /// call completes it first if the group recovers) — and `TooLarge` beyond 1 MiB.
    pub fn execute(&mut self, op: &[u8]) -> Result<Completion> {
        if self.client.is_busy(0) {
            // Finish the request that timed out, if the group answers it now.
            let start = std::time::Instant::now();
            while self.client.is_busy(0) && start.elapsed() < self.timeout {
                self.client.poll(Duration::from_millis(10))?;
            }
            if self.client.is_busy(0) {
                return Err(Error::new(
                    ErrorKind::Busy,
                    "pbft group: an earlier request is still unanswered",
                ));
            }
        }
        self.client.execute(op, self.timeout)
    }

    /// The number of replicas.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// The ring directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replica `i`'s state, `None` once stopped (or beyond `n`).
    pub fn info(&self, i: usize) -> Option<ReplicaInfo> {
        self.replicas.get(i)?.as_ref().map(ReplicaHandle::info)
    }

    /// The view the client knows (its requests go to that view's primary).
    pub fn client_view(&self) -> u64 {
        self.client.client(0).map_or(0, Client::view)
    }

    /// Stops replica `i` (a crash, to the others; for tests). `NotFound` beyond `n` or when
    /// already stopped; else what ended its loop, if not the stop.
    pub fn stop_replica(&mut self, i: usize) -> Result<()> {
        match self.replicas.get_mut(i).and_then(Option::take) {
            Some(h) => h.stop(),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("pbft group: no running replica {i}"),
            )),
        }
    }
}
