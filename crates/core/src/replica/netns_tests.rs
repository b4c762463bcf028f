//! Raft across hosts: three node processes over [`TcpTransport`], each in a network namespace
//! of its own, the client in a fourth, all plugged into a bridge in a fifth (the "switch") —
//! addresses from a private range (`10.213.0.0/24`) that no route leads out of. Partitions take
//! a node's switch port down (`ip link set ... down`), heals bring it up.
//!
//! The scenario ([`partition_scenario`]): writes through the leader; the leader's link goes
//! down — the majority elects a new leader of a higher term and keeps committing, the cut-off
//! leader steps down (check-quorum) without raising its term (pre-vote) and commits nothing
//! more; the link comes back and every node converges (the same applied index and state
//! digest, read from the status files the nodes write to the shared file system: a cut-off
//! node still reports); then a follower is cut off and the leader keeps committing with the
//! other; heal, converge; finally no acknowledged write is lost.
//!
//! Namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the `ip` command. Where they
//! cannot be created (a CI container, a user account), the test prints why and runs the same
//! scenario on loopback, where a [`Cut`] in every node and in the client drops the frames of
//! a node whose "link" is down (`tcp_partitions_over_loopback` always runs that way, so the
//! fallback is exercised everywhere). `EMF_RNET_REQUIRE_NETNS=1` makes a failure to create
//! namespaces fail the test instead (scripts/raft-netns.sh sets it).
//!
//! The namespaces are deleted by a drop guard, on success and on failure; ones left by a test
//! process that was killed are swept by the next run.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cluster_support::*;
use super::process_tests::{loopback_listeners, peers_of};
use super::*;
use crate::net::tcp::TcpTransport;
use crate::testutil::TempDir;

/// Every namespace the tests make is named `emfr<pid>x<n>-<role>`.
const PREFIX: &str = "emfr";
const PORT: u16 = 7000;

/// Node `id`'s address on the test's private network.
fn addr_of(id: u64) -> SocketAddr {
    let host = u8::try_from(id).expect("ids below 256");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 213, 0, host)), PORT)
}

/// Runs `ip args`; the error says what failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one test; deleted on drop.
struct Netns {
    prefix: String,
    made: Vec<String>,
}

impl Netns {
    /// The switch (a bridge) and one namespace per node and for the client, each with an
    /// `eth0` on the switch and its address. The error is the reason it could not be done.
    fn create() -> Result<Netns, String> {
        use std::sync::atomic::{AtomicUsize, Ordering}; // std-atomic-ok: a test counter
        static N: AtomicUsize = AtomicUsize::new(0);
        sweep_stale();
        let mut n = Netns {
            prefix: format!(
                "{PREFIX}{}x{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            made: Vec::new(),
        };
        let sw = n.add("sw")?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for id in NODES.iter().chain(&[CLIENT]) {
            let ns = n.add(&format!("h{id}"))?;
            let port = format!("p{id}");
            let cidr = format!("{}/24", addr_of(*id).ip());
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    fn add(&mut self, role: &str) -> Result<String, String> {
        let name = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.made.push(name.clone());
        Ok(name)
    }

    /// The namespace of node `id` (or of the client).
    fn host(&self, id: u64) -> String {
        format!("{}-h{id}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and with it the pair.
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

/// Deletes the namespaces of test processes that no longer run (killed before their guard
/// could clean up).
fn sweep_stale() {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Moves the calling thread (and the threads it starts from now on) into namespace `name`.
fn enter(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: `f` is an open namespace file for the duration of the call; setns changes the
    // network namespace of the calling thread only (threads spawned later inherit it).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Polls `f` every 10 ms until it answers, panicking with `what` at the deadline.
fn wait_for<R>(
    deadline: Instant,
    cluster: &mut Cluster,
    what: &str,
    mut f: impl FnMut(&Cluster) -> Option<R>,
) -> R {
    loop {
        if let Some(r) = f(cluster) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: timed out; status {:?}",
            NODES.map(|n| cluster.status(n))
        );
        cluster.check_alive();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A barrier write, then every node at the same applied index (at least the barrier's) with
/// the same state digest. Returns the barrier's acknowledgement.
fn converge<T: Transport>(
    client: &mut Client<T>,
    cluster: &mut Cluster,
    deadline: Instant,
) -> Acked {
    let b = client.set(b"barrier", deadline, cluster);
    wait_for(deadline, cluster, "convergence after the heal", |c| {
        let st: Vec<Status> = NODES.iter().map(|&n| c.status(n)).collect::<Option<_>>()?;
        let same = st
            .iter()
            .all(|s| (s.applied, s.digest) == (st[0].applied, st[0].digest));
        (same && st[0].applied >= b.index).then_some(())
    });
    b
}

/// What the scenario measured.
#[derive(Debug)]
struct Report {
    acked: usize,
    /// From the leader's link going down to its status saying it no longer leads.
    step_down: Duration,
    /// From the leader's link going down to the first write a new leader acknowledged.
    failover: Duration,
}

/// The scenario of the module docs; `link(id, up)` takes node `id`'s link down or up.
fn partition_scenario<T: Transport>(
    cluster: &mut Cluster,
    client: &mut Client<T>,
    link: &mut dyn FnMut(u64, bool),
) -> Report {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut k = 0u64;
    let mut write = |client: &mut Client<T>, cluster: &mut Cluster| {
        let key = format!("k{k}").into_bytes();
        k += 1;
        let a = client.set(&key, deadline, cluster);
        acked.push(key);
        a
    };
    let mut last = None;
    for _ in 0..20 {
        last = Some(write(client, cluster));
    }
    let first = last.expect("20 writes");
    let old = first.node;

    // The leader's link goes down: the majority elects another leader and commits.
    link(old, false);
    let cut = Instant::now();
    let a = write(client, cluster);
    let failover = cut.elapsed();
    assert!(
        a.node != old && a.term > first.term,
        "acknowledged by node {} in term {} with node {old} (leader of term {}) cut off",
        a.node,
        a.term,
        first.term
    );
    // The cut-off leader steps down (check-quorum).
    let down = wait_for(deadline, cluster, "the cut-off leader steps down", |c| {
        c.status(old)
            .filter(|s| !s.is_leader && s.term == first.term)
    });
    let step_down = cut.elapsed();
    let mut majority = a;
    for _ in 0..20 {
        majority = write(client, cluster);
    }
    // Ever since, it has stayed at its term (pre-vote: its campaigns fail without raising
    // it) and committed nothing the majority did.
    let still = cluster.status(old).expect("a status");
    assert!(
        !still.is_leader && still.term == down.term,
        "the cut-off node {old}: {still:?}, was {down:?}"
    );
    assert!(
        still.commit < majority.index,
        "the cut-off node {old} commits {} while cut off (majority at {})",
        still.commit,
        majority.index
    );

    // Heal: the old leader catches up, everyone converges.
    link(old, true);
    let b = converge(client, cluster, deadline);

    // A follower's link goes down: the leader keeps committing with the other.
    let f = *NODES.iter().find(|&&n| n != b.node).expect("a follower");
    link(f, false);
    for _ in 0..20 {
        let a = write(client, cluster);
        assert_ne!(a.node, f, "acknowledged by the cut-off node");
    }
    link(f, true);
    converge(client, cluster, deadline);

    client.assert_none_lost(&acked, deadline, cluster);
    Report {
        acked: acked.len(),
        step_down,
        failover,
    }
}

/// Checks the failover budget; prints the report when `EMF_REPLICA_SUMMARY` is set.
fn summary(how: &str, r: &Report) {
    assert!(
        r.failover < Duration::from_secs(5) && r.step_down < Duration::from_secs(5),
        "{how}: too slow: {r:?}"
    );
    if std::env::var_os("EMF_REPLICA_SUMMARY").is_some() {
        eprintln!(
            "partition scenario {how}: {} writes acknowledged, failover {:?}, the cut-off \
             leader stepped down after {:?}",
            r.acked, r.failover, r.step_down
        );
    }
}

/// The scenario over network namespaces (see the module docs).
fn run_in_namespaces(ns: &Netns) {
    let dir = TempDir::new("replica-netns");
    let addrs: HashMap<u64, SocketAddr> = NODES
        .iter()
        .chain(&[CLIENT])
        .map(|&n| (n, addr_of(n)))
        .collect();
    let specs: HashMap<u64, NodeSpawn> = NODES
        .iter()
        .map(|&n| {
            let spec = NodeSpawn {
                env: vec![
                    (ENV_NET, "tcp".to_string()),
                    (ENV_LISTEN, addr_of(n).to_string()),
                    (ENV_PEERS, format_peers(&peers_of(n, &addrs))),
                ],
                listener: None,
                netns: Some(ns.host(n)),
            };
            (n, spec)
        })
        .collect();
    let (client_ns, switch, data) = (ns.host(CLIENT), ns.switch(), dir.0.clone());
    // The client runs on a thread of its own, moved into the client's namespace (its
    // transport's threads start there too); the test's thread stays where it was.
    let h = std::thread::spawn(move || {
        enter(&client_ns).unwrap();
        let t = TcpTransport::bind(
            NodeId(CLIENT),
            addr_of(CLIENT),
            &peers_of(CLIENT, &addrs),
            tcp_opts(),
        )
        .unwrap();
        let mut client = Client::new(t);
        let mut cluster = Cluster::start(&data, specs);
        partition_scenario(&mut cluster, &mut client, &mut |id, up| {
            let port = format!("p{id}");
            let state = if up { "up" } else { "down" };
            ip(&["-n", &switch, "link", "set", &port, state]).unwrap();
        })
    });
    match h.join() {
        Ok(r) => summary("over network namespaces", &r),
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// The scenario on loopback, partitions by [`Cut`]s (see the module docs).
fn run_on_loopback() {
    let dir = TempDir::new("replica-loop");
    let cut: PathBuf = dir.0.join("down");
    let (mut ls, addrs) = loopback_listeners();
    let specs: HashMap<u64, NodeSpawn> = NODES
        .iter()
        .map(|&n| {
            let spec = NodeSpawn {
                env: vec![
                    (ENV_NET, "tcp".to_string()),
                    (ENV_PEERS, format_peers(&peers_of(n, &addrs))),
                    (ENV_CUT, cut.display().to_string()),
                ],
                listener: ls.remove(&n),
                netns: None,
            };
            (n, spec)
        })
        .collect();
    let t = TcpTransport::from_listener(
        NodeId(CLIENT),
        ls.remove(&CLIENT).unwrap(),
        &peers_of(CLIENT, &addrs),
        tcp_opts(),
    )
    .unwrap();
    let mut client = Client::new(Cut::new(t, &cut));
    let mut cluster = Cluster::start(&dir.0, specs);
    let mut down = BTreeSet::new();
    let r = partition_scenario(&mut cluster, &mut client, &mut |id, up| {
        if up {
            down.remove(&id);
        } else {
            down.insert(id);
        }
        write_cut(&cut, &down);
    });
    summary("on loopback", &r);
}

#[test]
#[cfg_attr(miri, ignore = "namespaces, processes and sockets")]
fn tcp_partitions_across_network_namespaces() {
    match Netns::create() {
        Ok(ns) => {
            eprintln!(
                "multi-host raft test: running over network namespaces {}-*",
                ns.prefix
            );
            run_in_namespaces(&ns);
        }
        Err(why) => {
            assert!(
                std::env::var_os("EMF_RNET_REQUIRE_NETNS").is_none(),
                "cannot create network namespaces: {why}"
            );
            eprintln!(
                "multi-host raft test: cannot create network namespaces ({why}); running the \
                 same scenario over loopback instead"
            );
            run_on_loopback();
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "processes and sockets")]
fn tcp_partitions_over_loopback() {
    run_on_loopback();
}
