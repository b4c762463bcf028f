//! The Raft service across processes: `erlmcp-flow raft node` processes, over rings (a
//! [`LocalCluster`], the original `start_cluster(N)`) and over TCP on loopback, with the
//! leader SIGKILLed while a client keeps writing. Checked: every acknowledged write is
//! readable at the end, a follower's not-leader answer names the leader, a new leader
//! acknowledges in a higher term.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use erlmcp_flow::net::tcp::{TcpOptions, TcpTransport};
use erlmcp_flow::net::{NodeId, Transport};
use erlmcp_flow::replica::proto::{Answer, Request};
use erlmcp_flow::replica::{ClientOptions, ClusterOptions, LocalCluster, RaftClient};

#[allow(dead_code)] // not every helper is used here
mod common;
use common::Dir;

fn client_opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// Writes `n` keys `{tag}{i}` = `v{i}`; each is recorded once acknowledged.
fn write<T: Transport>(
    c: &mut RaftClient<T>,
    tag: &str,
    n: usize,
    acked: &mut BTreeMap<String, String>,
) {
    for i in 0..n {
        let (k, v) = (format!("{tag}{i}"), format!("v{i}"));
        c.set(k.as_bytes(), v.as_bytes())
            .unwrap_or_else(|e| panic!("writing {k}: {e}"));
        acked.insert(k, v);
    }
}

fn check_all<T: Transport>(c: &mut RaftClient<T>, acked: &BTreeMap<String, String>) {
    for (k, v) in acked {
        let got = c.get(k.as_bytes()).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(v.as_bytes()),
            "acknowledged write {k} lost"
        );
    }
}

/// A follower answers a submit with the leader's id.
fn check_redirect<T: Transport>(c: &mut RaftClient<T>, leader: u64, nodes: &[u64]) {
    let follower = nodes.iter().copied().find(|&n| n != leader).unwrap();
    let a = c
        .call(
            follower,
            &Request::Submit { op: b"x".to_vec() },
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(
        a,
        Answer::NotLeader {
            leader: Some(leader)
        }
    );
}

#[test]
fn ring_cluster_keeps_acknowledged_writes_across_leader_sigkills() {
    let dir = Dir::new("raft-ring");
    let opts = ClusterOptions {
        bin: Some(env!("CARGO_BIN_EXE_erlmcp-flow").into()),
        client: client_opts(),
        ..ClusterOptions::default()
    };
    let mut c = LocalCluster::start(3, &dir.0, opts).unwrap();
    assert_eq!(c.members(), &[1, 2, 3]);
    // The original API: submit_operation / append_entry -> index, wait_committed(index).
    let i1 = c.append_entry(b"an opaque entry").unwrap();
    let i2 = c.submit_operation(b"another").unwrap();
    assert!(i2 > i1);
    assert!(c.wait_committed(i2, Duration::from_secs(5)).unwrap() >= i2);
    let mut acked = BTreeMap::new();
    let mut term = c.term().unwrap();
    for round in 0..3 {
        write(c.client(), &format!("r{round}-"), 20, &mut acked);
        let leader = c.leader().unwrap();
        check_redirect(c.client(), leader, &[1, 2, 3]);
        c.kill(leader).unwrap();
        assert!(c.pid(leader).is_none());
        // Writes go on under a new leader, in a higher term.
        write(c.client(), &format!("k{round}-"), 20, &mut acked);
        let (new_leader, new_term) = c.client().leader().unwrap();
        assert!(
            new_leader != leader && new_term > term,
            "{leader}/{term} -> {new_leader}/{new_term}"
        );
        term = new_term;
        c.restart(leader).unwrap();
    }
    check_all(c.client(), &acked);
    // The commands users run, against the same cluster (the cluster's client holds the first
    // client id: these take the next free one).
    let leader = c.leader().unwrap();
    let net = dir.0.join("net");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
            .args(["raft"])
            .args(args)
            .arg("--net-dir")
            .arg(&net)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, out) = cli(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    for n in 1..=3 {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&n.to_string()))
            .unwrap_or_else(|| panic!("no line for node {n}:\n{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], leader.to_string(), "{out}");
        assert!(line.ends_with("[1, 2, 3]"), "{out}");
    }
    let (code, out) = cli(&["put", "from-cli", "yes"]);
    assert!(code == Some(0) && out.starts_with("ok "), "{out}");
    assert_eq!(cli(&["get", "from-cli"]), (Some(0), "yes\n".to_string()));
    assert_eq!(cli(&["get", "k0-1"]), (Some(0), "v1\n".to_string()));
    let (code, out) = cli(&["get", "never-set"]);
    assert!(code == Some(1) && out.contains("not set"), "{out}");
    for (n, s) in c.stats() {
        let s = s.unwrap_or_else(|e| panic!("node {n}: {e}"));
        assert_eq!(s.voters, vec![1, 2, 3]);
    }
    c.stop();
    assert!(c.pid(1).is_none());
}

/// Reads, leadership transfer and membership changes on a local cluster of node processes,
/// through the API and through the commands: node 3 is removed (its process keeps running),
/// added back as a learner with its data, promoted, and then leads.
#[test]
fn ring_cluster_reads_transfers_and_changes_members() {
    use erlmcp_flow::raft::{KvOp, KvResult, MemberChange};
    let dir = Dir::new("raft-members");
    let opts = ClusterOptions {
        bin: Some(env!("CARGO_BIN_EXE_erlmcp-flow").into()),
        client: client_opts(),
        ..ClusterOptions::default()
    };
    let mut c = LocalCluster::start(3, &dir.0, opts).unwrap();
    c.client().set(b"a", b"1").unwrap();
    let get = |k: &str| KvOp::Get { key: k.into() }.encode();
    let value = |b: Vec<u8>| match KvResult::decode(&b) {
        Some(KvResult::Value(v)) => v,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        value(c.read(&get("a")).unwrap()).as_deref(),
        Some(&b"1"[..])
    );
    // Leadership to a chosen node, away from node 3.
    let leader = c.leader().unwrap();
    let to = if leader == 3 { 1 } else { 3 };
    let term = c.transfer_leader(to).unwrap();
    assert_eq!((c.leader().unwrap(), c.term().unwrap()), (to, term));
    let to = if to == 3 { 2 } else { to };
    c.transfer_leader(to).unwrap();
    assert_eq!(c.leader().unwrap(), to);
    // Remove 3, write without it, add it back as a learner, promote it.
    let e = c
        .change_membership(&[MemberChange::Remove(to)])
        .unwrap_err();
    assert!(e.message().contains("transfer leadership first"), "{e}");
    c.change_membership(&[MemberChange::Remove(3)]).unwrap();
    c.client().set(b"b", b"2").unwrap();
    let i = c.change_membership(&[MemberChange::AddLearner(3)]).unwrap();
    assert!(i > 0);
    let m = c.client().membership_settled().unwrap();
    assert_eq!((m.voters.len(), m.learners.clone()), (2, vec![3]), "{m:?}");
    assert!(c
        .client()
        .wait_committed_on(3, i, Duration::from_secs(10))
        .is_ok());
    c.change_membership(&[MemberChange::AddVoter(3)]).unwrap();
    let m = c.client().membership_settled().unwrap();
    assert_eq!(m.voters, vec![1, 2, 3]);
    assert_eq!(c.membership().unwrap(), m);
    c.transfer_leader(3).unwrap();
    assert_eq!(c.leader().unwrap(), 3);
    assert_eq!(
        value(c.read(&get("b")).unwrap()).as_deref(),
        Some(&b"2"[..])
    );
    // The commands.
    let net = dir.0.join("net");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
            .args(["raft"])
            .args(args)
            .arg("--net-dir")
            .arg(&net)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, out) = cli(&["members"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("voters [1, 2, 3]") && out.contains("learners []"),
        "{out}"
    );
    let (code, out) = cli(&["transfer", "--to", "1"]);
    assert!(
        code == Some(0) && out.starts_with("leader 1 term "),
        "{out}"
    );
    let (code, out) = cli(&["members", "add-learner", "2"]);
    assert!(code == Some(0) && out.contains("learners [2]"), "{out}");
    // The previous change's joint configuration may still be being left: retried.
    let (code, out) = cli(&["members", "add", "2"]);
    assert!(code == Some(0) && out.contains("voters [1, 2, 3]"), "{out}");
    let (code, out) = cli(&["members", "remove", "1"]);
    assert!(
        code != Some(0) && out.contains("transfer leadership first"),
        "{out}"
    );
    let (code, out) = cli(&["members", "remove"]);
    assert!(code != Some(0), "a change needs a node: {out}");
    let (code, out) = cli(&["transfer", "--to", "9"]);
    assert!(code != Some(0) && out.contains("9"), "{out}");
    assert_eq!(cli(&["get", "b"]), (Some(0), "2\n".to_string()));
    c.stop();
}

/// A node process, SIGKILLed and reaped on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcp_cluster_of_node_processes_survives_a_leader_sigkill() {
    let dir = Dir::new("raft-tcp");
    // Ports picked by binding, then freed for the nodes (a clash makes a node exit: the
    // client's writes then fail loudly, not silently).
    let ls: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    let client_listener = ls.into_iter().nth(3).unwrap();
    const CLIENT: u64 = 1_000_001;
    let spawn = |id: u64| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"));
        cmd.args(["raft", "node", "--id", &id.to_string(), "--peers", "1,2,3"])
            .args([
                "--transport",
                "tcp",
                "--listen",
                &addrs[id as usize - 1].to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.0.join(format!("node.{id}")))
            .args(["--client-addr", &format!("{CLIENT}={}", addrs[3])]);
        for p in 1..=3u64 {
            if p != id {
                cmd.args(["--peer-addr", &format!("{p}={}", addrs[p as usize - 1])]);
            }
        }
        Node(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut nodes: BTreeMap<u64, Node> = (1..=3).map(|i| (i, spawn(i))).collect();
    let peers: Vec<(NodeId, SocketAddr)> = (1..=3)
        .map(|i| (NodeId(i), addrs[i as usize - 1]))
        .collect();
    let t = TcpTransport::from_listener(
        NodeId(CLIENT),
        client_listener,
        &peers,
        TcpOptions::default(),
    )
    .unwrap();
    let mut c = RaftClient::new(t, &[1, 2, 3], client_opts()).unwrap();
    let mut acked = BTreeMap::new();
    write(&mut c, "a", 20, &mut acked);
    let (leader, term) = c.leader().unwrap();
    check_redirect(&mut c, leader, &[1, 2, 3]);
    drop(nodes.remove(&leader));
    write(&mut c, "b", 20, &mut acked);
    let (new_leader, new_term) = c.leader().unwrap();
    assert!(new_leader != leader && new_term > term);
    nodes.insert(leader, spawn(leader));
    write(&mut c, "c", 10, &mut acked);
    check_all(&mut c, &acked);
    for (id, n) in &mut nodes {
        assert!(
            n.0.try_wait().unwrap().is_none(),
            "node {id} exited by itself"
        );
    }
}
