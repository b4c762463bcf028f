//! A local cluster: N node processes (`erlmcp-flow raft node`) over rings in one directory,
//! and a client — the original `start_cluster(N)`.
//!
//! ```no_run
//! use erlmcp_flow::replica::{ClusterOptions, LocalCluster};
//! use std::time::Duration;
//!
//! let mut c = LocalCluster::start(3, "/dev/shm/my-cluster".as_ref(), ClusterOptions::default())?;
//! let index = c.submit_operation(b"an entry")?;          // {ok, Index}
//! c.wait_committed(index, Duration::from_secs(1))?;
//! let leader = c.leader()?;
//! c.kill(leader)?;                                       // SIGKILL
//! c.client().set(b"k", b"v")?;                           // a new leader answers
//! c.restart(leader)?;
//! # Ok::<(), erlmcp_flow::Error>(())
//! ```
//!
//! # The node program
//!
//! Nodes are started as `BIN raft node --id I --peers 1,..,N --transport ring --net-dir
//! DIR/net --data-dir DIR/node.I [--memory] --tick-ms T --election-tick E` with `BIN` from
//! [`ClusterOptions::bin`], else the environment variable `EMF_BIN`, else `erlmcp-flow`
//! found in `PATH`. Each node's standard error goes to `DIR/node.I.log`.
//!
//! Node ids are `1..=N`; the client takes one of the
//! [default client ids](super::client::default_client_ids). Every child is reaped: [`stop`]
//! (SIGTERM, then SIGKILL after a grace period) runs on drop.
//!
//! [`stop`]: LocalCluster::stop

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{default_client_ids, ClientOptions, RaftClient};
use super::proto::Status;
use crate::error::{Error, ErrorKind, Result};
use crate::net::ring::RingTransport;
use crate::raft::{MemberChange, Membership};

/// How a [`LocalCluster`] starts its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The `erlmcp-flow` binary (see the module docs for the fallback).
    pub bin: Option<PathBuf>,
    /// Logs in memory (`--memory`): faster, but a killed node restarts empty — see
    /// [`NodeSpec::data_dir`](super::node::NodeSpec::data_dir).
    pub memory: bool,
    /// One Raft tick, in milliseconds.
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    pub election_tick: usize,
    /// The longest [`LocalCluster::start`] waits for a leader.
    pub start_timeout: Duration,
    /// The client's options.
    pub client: ClientOptions,
}

impl Default for ClusterOptions {
    /// Durable logs, 10 ms ticks, elections after 10 ticks, 20 s to elect a first leader.
    fn default() -> Self {
        ClusterOptions {
            bin: None,
            memory: false,
            tick_ms: 10,
            election_tick: 10,
            start_timeout: Duration::from_secs(20),
            client: ClientOptions::default(),
        }
    }
}

/// N node processes and a client: see the module docs.
pub struct LocalCluster {
    dir: PathBuf,
    bin: PathBuf,
    ids: Vec<u64>,
    opts: ClusterOptions,
    children: BTreeMap<u64, Child>,
    client: RaftClient<RingTransport>,
}

impl LocalCluster {
    /// Starts nodes `1..=n` in `dir` (created if needed; its `net/` holds the rings, its
    /// `node.I/` the logs) and waits until they have elected a leader.
    pub fn start(n: usize, dir: &Path, opts: ClusterOptions) -> Result<LocalCluster> {
        if n == 0 || n > 64 {
            return Err(Error::invalid(format!(
                "local cluster: {n} nodes (1 to 64)"
            )));
        }
        let bin = opts
            .bin
            .clone()
            .or_else(|| std::env::var_os("EMF_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("erlmcp-flow"));
        std::fs::create_dir_all(dir.join("net")).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("local cluster: cannot create {}: {e}", dir.display()),
            )
        })?;
        let ids: Vec<u64> = (1..=n as u64).collect();
        let client =
            RaftClient::over_rings(&dir.join("net"), &ids, &default_client_ids(), opts.client)?;
        let mut c = LocalCluster {
            dir: dir.to_path_buf(),
            bin,
            ids: ids.clone(),
            opts,
            children: BTreeMap::new(),
            client,
        };
        for id in ids {
            c.spawn(id)?;
        }
        c.await_leader(c.opts.start_timeout)?;
        Ok(c)
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let peers = self
            .ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.dir.join(format!("node.{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["raft", "node", "--id", &id.to_string(), "--peers", &peers])
            .args(["--transport", "ring", "--net-dir"])
            .arg(self.dir.join("net"))
            .arg("--data-dir")
            .arg(self.dir.join(format!("node.{id}")))
            .args(["--tick-ms", &self.opts.tick_ms.to_string()])
            .args(["--election-tick", &self.opts.election_tick.to_string()]);
        if self.opts.memory {
            cmd.arg("--memory");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "local cluster: cannot start {} (set EMF_BIN or ClusterOptions::bin): {e}",
                        self.bin.display()
                    ),
                )
            })?;
        if let Some(mut old) = self.children.insert(id, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// Fails when a node process has exited by itself (its log says why).
    fn check_children(&mut self) -> Result<()> {
        for (id, c) in &mut self.children {
            if let Some(st) = c.try_wait()? {
                let log = self.dir.join(format!("node.{id}.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("local cluster: node {id} exited ({st}): {tail}"),
                ));
            }
        }
        Ok(())
    }

    fn await_leader(&mut self, timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            let mut o = self.opts.client;
            o.timeout = Duration::from_millis(200);
            o.attempt_timeout = Duration::from_millis(100);
            self.client.set_options(o);
            let r = self.client.leader();
            self.client.set_options(self.opts.client);
            match r {
                Ok(l) => return Ok(l),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("local cluster: no leader within {timeout:?}: {e}"),
                    ))
                }
                Err(_) => {}
            }
        }
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node ids, `1..=n`.
    pub fn members(&self) -> &[u64] {
        &self.ids
    }

    /// The client (KV helpers, status, any request).
    pub fn client(&mut self) -> &mut RaftClient<RingTransport> {
        &mut self.client
    }

    /// Replicates `op` (opaque bytes; the nodes run the KV store, which answers `Invalid`
    /// to what is not a [`KvOp`](crate::raft::KvOp) but logs and commits it): its index
    /// once committed — the original `submit_operation(Op) -> {ok, Index}`.
    pub fn submit_operation(&mut self, op: &[u8]) -> Result<u64> {
        Ok(self.client.submit(op)?.index)
    }

    /// Appends `entry` to the replicated log: its index once committed (the original
    /// `append_entry(Entry)`; the same as [`submit_operation`](Self::submit_operation)).
    pub fn append_entry(&mut self, entry: &[u8]) -> Result<u64> {
        self.submit_operation(entry)
    }

    /// Waits until the leader has applied `index`: its applied index.
    pub fn wait_committed(&mut self, index: u64, timeout: Duration) -> Result<u64> {
        self.client.wait_committed(index, timeout)
    }

    /// A linearizable read of the state machine ([`RaftClient::read`]): the answer to
    /// `query` (for the KV store, an encoded [`KvOp::Get`](crate::raft::KvOp)) from the
    /// leader once it confirmed its leadership.
    pub fn read(&mut self, query: &[u8]) -> Result<Vec<u8>> {
        Ok(self.client.read(query)?.result)
    }

    /// Hands leadership to node `to` and waits until it leads: the new term.
    pub fn transfer_leader(&mut self, to: u64) -> Result<u64> {
        self.client.transfer_leader(to)
    }

    /// Changes the membership ([`RaftClient::change_membership`]): its log index once the
    /// joint configuration is applied. The node processes stay as they are: a removed node
    /// keeps running (no longer in the configuration) and can be added back, as a learner
    /// and then a voter, with its data; an id outside `1..=n` has no process to join with.
    pub fn change_membership(&mut self, changes: &[MemberChange]) -> Result<u64> {
        self.client.change_membership(changes)
    }

    /// The configuration the leader has applied.
    pub fn membership(&mut self) -> Result<Membership> {
        self.client.membership()
    }

    /// The current leader's id (asked of the nodes; waits for an election under way).
    pub fn leader(&mut self) -> Result<u64> {
        Ok(self.client.leader()?.0)
    }

    /// The current leader's term.
    pub fn term(&mut self) -> Result<u64> {
        Ok(self.client.leader()?.1)
    }

    /// Every node's status (id, leader, term, commit and applied index, voters, counters),
    /// or why it did not answer.
    pub fn stats(&mut self) -> Vec<(u64, Result<Status>)> {
        self.client.statuses()
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// SIGKILLs node `id` and reaps it. `NotFound` when it is not running.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let mut c = self.children.remove(&id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("local cluster: node {id} is not running"),
            )
        })?;
        let _ = c.kill();
        match c.wait() {
            // ECHILD: a host that ignores SIGCHLD (the Erlang VM) has the kernel reap it —
            // once it has exited, which is all this wait is for.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(()),
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    /// Starts node `id` again (from its data directory; killing it first if it runs).
    pub fn restart(&mut self, id: u64) -> Result<()> {
        if !self.ids.contains(&id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("local cluster: {id} is not a node of {:?}", self.ids),
            ));
        }
        self.spawn(id)
    }

    /// Stops every node: SIGTERM, then SIGKILL for those still running after 2 s; all are
    /// reaped. The directory stays.
    pub fn stop(&mut self) {
        for c in self.children.values() {
            // SAFETY: kill(2) with the pid of our own unreaped child (it cannot have been
            // reused) and a valid signal number.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (_, mut c) in std::mem::take(&mut self.children) {
            loop {
                match c.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
