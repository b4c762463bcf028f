//! Support for the multi-process replica tests ([`super::process_tests`],
//! [`super::netns_tests`]): the node process's loop (a [`Server`] answering the [client
//! protocol](super::proto)), a client of the tests (a [`RaftClient`] that retries until a
//! deadline and checks the node processes are alive), the node processes (the test binary
//! re-running itself), and a partition switch for clusters on loopback.
//!
//! # What a node process reads and writes
//!
//! [`node_process`] reads its settings from the environment ([`ENV_DIR`] and the other `ENV_*`
//! names): its id, the data directory, the transport (rings in the data directory, or TCP with
//! its listen address or an inherited listening socket, its peers' addresses, and optionally
//! the partition file of a [`Cut`]). Every 20 ms it writes its view to `status.<id>` in the
//! data directory ([`Status`]): the tests see a node's role even while the network cuts it off
//! (the file system is shared across network namespaces). It exits when its parent does (or
//! after two minutes), so a crashed test leaves nothing running.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::checksum::crc32c;
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::tcp::{TcpOptions, TcpTransport};
use crate::raft::{Config, KvOp, KvResult, KvStore, LogStorage, StateMachine};

/// The client's node id (a transport peer of every node, not a Raft member).
pub(super) const CLIENT: u64 = 100;
/// The Raft members.
pub(super) const NODES: [u64; 3] = [1, 2, 3];

/// The node's data directory (its log in `n<id>/`, its status file, the rings).
pub(super) const ENV_DIR: &str = "EMF_REPLICA_CHILD_DIR";
/// The node's id.
pub(super) const ENV_ID: &str = "EMF_REPLICA_CHILD_ID";
/// `ring` (the default) or `tcp`.
pub(super) const ENV_NET: &str = "EMF_REPLICA_CHILD_NET";
/// TCP: the address to listen on.
pub(super) const ENV_LISTEN: &str = "EMF_REPLICA_CHILD_LISTEN";
/// TCP: the number of an inherited listening socket (instead of [`ENV_LISTEN`]).
pub(super) const ENV_LISTEN_FD: &str = "EMF_REPLICA_CHILD_LISTEN_FD";
/// TCP: the peers, `id=addr,id=addr,…`.
pub(super) const ENV_PEERS: &str = "EMF_REPLICA_CHILD_PEERS";
/// TCP: the partition file of a [`Cut`] (absent: no cut).
pub(super) const ENV_CUT: &str = "EMF_REPLICA_CHILD_CUT";
/// Set: the node processes print their view to stderr twice a second.
pub(super) const ENV_LOG: &str = "EMF_REPLICA_CHILD_LOG";

/// The test function that is the node process.
const CHILD_TEST: &str = "replica::process_tests::replica_node_child";

pub(super) fn ring_opts(dir: &Path) -> RingNetOptions {
    let mut o = RingNetOptions::in_dir(dir.join("net"));
    o.inbox_capacity = 4 << 20;
    o
}

/// TCP settings of the tests: reconnect within 100 ms of a peer's return.
pub(super) fn tcp_opts() -> TcpOptions {
    TcpOptions {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(200),
        ..TcpOptions::default()
    }
}

pub(super) fn node_config(id: u64) -> Config {
    let mut c = Config::new(id, NODES.to_vec());
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c.snapshot_entries = 200;
    c
}

/// `id=addr,…` as the node processes take their peers.
pub(super) fn format_peers(peers: &[(NodeId, SocketAddr)]) -> String {
    peers
        .iter()
        .map(|(id, a)| format!("{}={a}", id.0))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_peers(s: &str) -> Vec<(NodeId, SocketAddr)> {
    s.split(',')
        .map(|p| {
            let (id, a) = p.split_once('=').expect("id=addr");
            (NodeId(id.parse().unwrap()), a.parse().unwrap())
        })
        .collect()
}

/// The body of the node process (see the module docs).
pub(super) fn node_process() {
    let var = |k: &str| std::env::var(k).ok();
    let (Some(dir), Some(id)) = (var(ENV_DIR), var(ENV_ID)) else {
        panic!("run by the multi-process replica tests only");
    };
    let dir = PathBuf::from(dir);
    let id: u64 = id.parse().unwrap();
    match var(ENV_NET).as_deref().unwrap_or("ring") {
        "ring" => {
            let peers: Vec<NodeId> = NODES
                .iter()
                .chain(&[CLIENT])
                .filter(|&&n| n != id)
                .map(|&n| NodeId(n))
                .collect();
            serve(
                &dir,
                RingTransport::open(NodeId(id), &peers, ring_opts(&dir)).unwrap(),
            );
        }
        "tcp" => {
            let peers = parse_peers(&var(ENV_PEERS).expect("peers"));
            let listener = match var(ENV_LISTEN_FD) {
                Some(fd) => {
                    use std::os::fd::FromRawFd;
                    let fd: i32 = fd.parse().unwrap();
                    // SAFETY: the parent passed this listening socket to this process (see
                    // `Cluster::spawn`) and nothing else in this process uses the descriptor:
                    // the listener owns it from here on.
                    unsafe { TcpListener::from_raw_fd(fd) }
                }
                None => TcpListener::bind(var(ENV_LISTEN).expect("listen address")).unwrap(),
            };
            let t = TcpTransport::from_listener(NodeId(id), listener, &peers, tcp_opts()).unwrap();
            match var(ENV_CUT) {
                Some(cut) => serve(&dir, Cut::new(t, cut)),
                None => serve(&dir, t),
            }
        }
        other => panic!("unknown transport {other}"),
    }
}

/// Runs a replica over `t`, a [`Server`] of the client protocol, until the parent exits.
fn serve<T: Transport>(dir: &Path, t: T) {
    let id = t.local_id().0;
    let storage = LogStorage::open(dir.join(format!("n{id}"))).unwrap();
    let node = Node::new(node_config(id), storage, KvStore::new()).unwrap();
    let mut r = Replica::new(node, t, ReplicaOptions::default()).unwrap();
    r.set_clients([CLIENT]);
    let mut srv = Server::new(r, ServeOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let parent = std::os::unix::process::parent_id();
    let log = std::env::var_os(ENV_LOG).is_some();
    let (mut last_log, mut last_status) = (Instant::now(), None::<Instant>);
    while Instant::now() < deadline && std::os::unix::process::parent_id() == parent {
        if log && last_log.elapsed() > Duration::from_millis(500) {
            last_log = Instant::now();
            let r = srv.replica();
            eprintln!(
                "node {id}: term {} leader {:?} commit {} {:?} {:?}",
                r.term(),
                r.leader(),
                r.node().commit_index(),
                r.stats(),
                srv.stats()
            );
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_millis(20)) {
            last_status = Some(Instant::now());
            Status::of(srv.replica()).write(dir, id);
        }
        let now = srv.replica().elapsed();
        srv.run_once(now, Duration::from_millis(2)).unwrap();
    }
}

/// A node's view, as it writes it to `status.<id>` in its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status {
    pub term: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
    /// CRC32C of the state machine's snapshot.
    pub digest: u32,
}

impl Status {
    fn of<T: Transport>(r: &Replica<KvStore, T>) -> Status {
        Status {
            term: r.term(),
            leader: r.leader().unwrap_or(0),
            is_leader: r.node().is_leader(),
            commit: r.node().commit_index(),
            applied: r.node().applied_index(),
            digest: crc32c(&r.node().state_machine().snapshot()),
        }
    }

    fn write(&self, dir: &Path, id: u64) {
        let s = format!(
            "{} {} {} {} {} {}\n",
            self.term,
            self.leader,
            u8::from(self.is_leader),
            self.commit,
            self.applied,
            self.digest
        );
        let tmp = dir.join(format!("status.{id}.tmp"));
        if std::fs::write(&tmp, s).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(format!("status.{id}")));
        }
    }

    /// Node `id`'s last written view, if it wrote one.
    pub fn read(dir: &Path, id: u64) -> Option<Status> {
        let s = std::fs::read_to_string(dir.join(format!("status.{id}"))).ok()?;
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        let [term, leader, is_leader, commit, applied, digest] = v[..] else {
            return None;
        };
        Some(Status {
            term,
            leader,
            is_leader: is_leader == 1,
            commit,
            applied,
            digest: u32::try_from(digest).ok()?,
        })
    }
}

/// A partition switch for nodes on loopback (where no link can be taken down): the file
/// `path` lists the ids whose link is down, one per line; a `Cut` drops every frame to or
/// from such a node, and everything when its own node is listed — a cable pulled at the
/// switch. It rereads the file at most every 2 ms. Frames already queued below it still
/// arrive; a real link down delays them instead (TCP retransmits after the heal).
pub(super) struct Cut<T> {
    inner: T,
    path: PathBuf,
    down: BTreeSet<u64>,
    read_at: Option<Instant>,
}

impl<T: Transport> Cut<T> {
    pub fn new(inner: T, path: impl Into<PathBuf>) -> Cut<T> {
        Cut {
            inner,
            path: path.into(),
            down: BTreeSet::new(),
            read_at: None,
        }
    }

    fn blocked(&mut self, other: NodeId) -> bool {
        if self
            .read_at
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(2))
        {
            self.read_at = Some(Instant::now());
            self.down = std::fs::read_to_string(&self.path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
        }
        self.down.contains(&self.inner.local_id().0) || self.down.contains(&other.0)
    }
}

impl<T: Transport> Transport for Cut<T> {
    fn local_id(&self) -> NodeId {
        self.inner.local_id()
    }

    fn send(&mut self, to: NodeId, payload: &[u8]) -> crate::Result<()> {
        if self.blocked(to) {
            return Ok(()); // lost on the way, as on a dead link
        }
        self.inner.send(to, payload)
    }

    fn try_recv(&mut self) -> crate::Result<Option<Frame>> {
        loop {
            match self.inner.try_recv()? {
                Some(f) if self.blocked(f.from) => continue,
                f => return Ok(f),
            }
        }
    }

    fn recv_timeout(&mut self, timeout: Duration) -> crate::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.recv_timeout(left)? {
                Some(f) if self.blocked(f.from) => {
                    if left.is_zero() {
                        return Ok(None);
                    }
                }
                f => return Ok(f),
            }
        }
    }
}

/// Writes the partition file of the [`Cut`]s: `down` are the nodes cut off.
pub(super) fn write_cut(path: &Path, down: &BTreeSet<u64>) {
    let s: String = down.iter().map(|d| format!("{d}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A node process, SIGKILLed and reaped on drop.
pub(super) struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start each node process of a cluster.
#[derive(Default)]
pub(super) struct NodeSpawn {
    /// Environment beyond [`ENV_DIR`] and [`ENV_ID`].
    pub env: Vec<(&'static str, String)>,
    /// A listening socket the process inherits (its number goes in [`ENV_LISTEN_FD`]).
    pub listener: Option<TcpListener>,
    /// The network namespace to run it in (`ip netns exec`).
    pub netns: Option<String>,
}

/// The node processes of a test, by id; every one is killed when the cluster is dropped.
pub(super) struct Cluster {
    pub dir: PathBuf,
    pub specs: HashMap<u64, NodeSpawn>,
    pub children: HashMap<u64, Child>,
}

impl Cluster {
    /// Starts every node of `specs` with its data in `dir`.
    pub fn start(dir: &Path, specs: HashMap<u64, NodeSpawn>) -> Cluster {
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            specs,
            children: HashMap::new(),
        };
        let mut ids: Vec<u64> = c.specs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            c.spawn(id);
        }
        c
    }

    /// (Re)starts node `id` from its data directory.
    pub fn spawn(&mut self, id: u64) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let spec = &self.specs[&id];
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => std::process::Command::new(exe),
        };
        cmd.args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ENV_DIR, &self.dir)
        .env(ENV_ID, id.to_string())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(match std::env::var_os(ENV_LOG) {
            Some(_) => std::process::Stdio::inherit(),
            None => std::process::Stdio::null(),
        });
        if let Some(l) = &spec.listener {
            let fd = l.as_raw_fd();
            cmd.env(ENV_LISTEN_FD, fd.to_string());
            let clear_cloexec = move || {
                // SAFETY: fcntl on a descriptor number is async-signal-safe and touches no
                // memory; `fd` is open (this process holds `spec.listener`).
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure runs in the forked child before exec; it allocates nothing
            // and makes one async-signal-safe call, clearing the listener's close-on-exec
            // flag to hand it to the node.
            unsafe {
                cmd.pre_exec(clear_cloexec);
            }
        }
        let child = cmd.spawn().unwrap();
        self.children.insert(id, Child(child));
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        drop(self.children.remove(&id));
    }

    /// Panics when a node process exited by itself.
    pub fn check_alive(&mut self) {
        for (id, c) in self.children.iter_mut() {
            assert!(
                c.0.try_wait().unwrap().is_none(),
                "node {id} exited by itself"
            );
        }
    }

    /// Node `id`'s last written view.
    pub fn status(&self, id: u64) -> Option<Status> {
        Status::read(&self.dir, id)
    }
}

/// A set acknowledged by a leader.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acked {
    pub node: u64,
    /// The leader's term as it reported it right after acknowledging (the write's term or,
    /// if it has since lost its leadership, a higher one).
    pub term: u64,
    pub index: u64,
}

/// The tests' client: a [`RaftClient`] (own id [`CLIENT`]) whose calls are retried until a
/// deadline, checking between attempts that no node process exited by itself.
pub(super) struct Client<T: Transport> {
    pub c: RaftClient<T>,
}

impl<T: Transport> Client<T> {
    pub fn new(t: T) -> Client<T> {
        let opts = ClientOptions {
            // One call's budget: the caller's deadline is checked between calls.
            timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        Client {
            c: RaftClient::new(t, &NODES, opts).unwrap(),
        }
    }

    /// Writes `key` (value `v`) until a leader acknowledges it (the client follows
    /// redirects and resends unanswered submits; a set is idempotent).
    pub fn set(&mut self, key: &[u8], deadline: Instant, cluster: &mut Cluster) -> Acked {
        let op = KvOp::Set {
            key: key.to_vec(),
            value: b"v".to_vec(),
        }
        .encode();
        loop {
            assert!(
                Instant::now() < deadline,
                "no leader acknowledged a write in time"
            );
            cluster.check_alive();
            let Ok(done) = self.c.submit(&op) else {
                continue;
            };
            assert_eq!(KvResult::decode(&done.result), Some(KvResult::Done));
            // The protocol's answer names no term: ask the leader (unreachable at once: the
            // write is simply done again).
            if let Ok(s) = self.c.status(done.node) {
                return Acked {
                    node: done.node,
                    term: s.term,
                    index: done.index,
                };
            }
        }
    }

    /// Panics unless every key of `acked` is set: each read back with a linearizable get (a
    /// ReadIndex read) from whichever node leads.
    pub fn assert_none_lost(
        &mut self,
        acked: &[Vec<u8>],
        deadline: Instant,
        cluster: &mut Cluster,
    ) {
        for key in acked {
            let value = loop {
                assert!(
                    Instant::now() < deadline,
                    "no leader answered a read in time"
                );
                cluster.check_alive();
                if let Ok(v) = self.c.get(key) {
                    break v;
                }
            };
            assert_eq!(
                value.as_deref(),
                Some(&b"v"[..]),
                "acknowledged write {} lost",
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// Sets its flag when dropped: a test's main thread holds one so that its follower threads
/// stop however it leaves a `thread::scope` (a failed assertion too) — not hang it.
pub(super) struct StopOnDrop(pub crate::sync::Arc<crate::sync::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, crate::sync::Ordering::Relaxed);
    }
}
