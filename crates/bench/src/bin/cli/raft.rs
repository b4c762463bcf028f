//! `erlmcp-flow raft node|status|put|get|transfer|members|cluster`: the Raft service from the
//! command line — run one node of a cluster (rings on one host, TCP between hosts), ask the
//! nodes for their status, write and read keys, move the leadership, list or change the
//! members, or start a local cluster of node processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use erlmcp_flow::net::tcp::{TcpOptions, TcpTransport};
use erlmcp_flow::net::{NodeId, Transport};
use erlmcp_flow::raft::{MemberChange, Membership};
use erlmcp_flow::replica::client::default_client_ids;
use erlmcp_flow::replica::proto::Status;
use erlmcp_flow::replica::{
    run_node, ClientOptions, ClusterOptions, LocalCluster, NodeSpec, NodeTransport, RaftClient,
};

#[derive(Subcommand)]
pub enum RaftCmd {
    /// Run one node of a cluster (the replicated KV store) until SIGTERM or Ctrl-C
    Node(NodeArgs),
    /// Print each node's id, leader, term, commit and applied index and voters
    Status(StatusArgs),
    /// Write KEY = VALUE through the leader; prints the log index
    Put(PutArgs),
    /// Read KEY at the leader (a linearizable ReadIndex read, no log entry); prints the
    /// value, exits 1 when absent
    Get(GetArgs),
    /// Hand the leadership to node --to; prints the new term once it leads
    Transfer(TransferArgs),
    /// Print the voters and learners, or change them: `members add N` (a voter, or promote a
    /// learner), `members add-learner N`, `members remove N` (the leader cannot remove
    /// itself: transfer the leadership first)
    Members(MembersArgs),
    /// Start a local cluster of node processes over rings and keep it up until Ctrl-C
    Cluster(ClusterArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// Inbox rings in --net-dir (nodes on one host)
    Ring,
    /// TCP: --listen and a --peer-addr per other node
    Tcp,
}

/// `ID=HOST:PORT`.
fn parse_addr(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id = id.parse().map_err(|e| format!("{id:?}: {e}"))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?}: no address"))?;
    Ok((id, addr))
}

#[derive(Args)]
pub struct NodeArgs {
    /// This node's id (one of --peers)
    #[arg(long)]
    id: u64,
    /// The voters of the cluster, this node included
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<u64>,
    /// The durable log's directory (reopened after a restart)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the log in memory (benchmarks; a restarted node has forgotten everything)
    #[arg(long)]
    memory: bool,
    /// How nodes and clients reach this node
    #[arg(long, value_enum, default_value = "ring")]
    transport: TransportKind,
    /// Ring transport: the cluster's directory of inbox rings
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/emf-raft")]
    net_dir: PathBuf,
    /// Ring transport: the inbox capacity in KiB (a power of two)
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    inbox_kib: usize,
    /// Ring transport: client ids accepted (default 1000001..=1000008)
    #[arg(long, value_delimiter = ',')]
    clients: Vec<u64>,
    /// TCP transport: the address to listen on
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// TCP transport: another node's address, ID=HOST:PORT (one per other node)
    #[arg(long, value_name = "ID=HOST:PORT", value_parser = parse_addr)]
    peer_addr: Vec<(u64, SocketAddr)>,
    /// TCP transport: a client's listening address, ID=HOST:PORT (the node dials it to
    /// answer)
    #[arg(long, value_name = "ID=HOST:PORT", value_parser = parse_addr)]
    client_addr: Vec<(u64, SocketAddr)>,
    /// One Raft tick, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 10)]
    tick_ms: u64,
    /// Ticks without a leader before an election
    #[arg(long, default_value_t = 10)]
    election_tick: usize,
}

/// How a command reaches the nodes.
#[derive(Args)]
pub struct ConnArgs {
    /// The nodes to ask
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<u64>,
    /// Ring transport: the cluster's directory of inbox rings
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/emf-raft")]
    net_dir: PathBuf,
    /// TCP: a node's address, ID=HOST:PORT (given: TCP is used)
    #[arg(long, value_name = "ID=HOST:PORT", value_parser = parse_addr)]
    peer_addr: Vec<(u64, SocketAddr)>,
    /// TCP: this client's listening address (a --client-addr of the nodes)
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// This client's id (default: the first free of 1000001..=1000008 over rings, 1000001
    /// over TCP)
    #[arg(long)]
    client_id: Option<u64>,
    /// Give up after this many milliseconds
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print every counter of each node too
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The key
    key: String,
    /// The value
    value: String,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The key
    key: String,
}

#[derive(Args)]
pub struct TransferArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The voter to lead
    #[arg(long, value_name = "N")]
    to: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MembersAction {
    /// Add N as a voter (or promote the learner N)
    Add,
    /// Add N as a learner (gets the log, does not vote; or demote the voter N)
    AddLearner,
    /// Remove the voter or learner N
    Remove,
}

#[derive(Args)]
pub struct MembersArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The change to make (none: print the members)
    #[arg(value_enum, requires = "node")]
    action: Option<MembersAction>,
    /// The node to add or remove
    node: Option<u64>,
}

#[derive(Args)]
pub struct ClusterArgs {
    /// Nodes to start (ids 1..=N)
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The cluster's directory (rings in DIR/net, logs in DIR/node.I)
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/emf-raft-cluster")]
    dir: PathBuf,
    /// Logs in memory
    #[arg(long)]
    memory: bool,
}

/// Set by SIGTERM and SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); signal(2) with a
        // valid signal number and an `extern "C"` function of the right type.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn run(cmd: &RaftCmd) -> Result<ExitCode, String> {
    match cmd {
        RaftCmd::Node(a) => node(a),
        RaftCmd::Status(a) => status(a),
        RaftCmd::Put(a) => with_client(&a.conn, |c| {
            let i = c.set(a.key.as_bytes(), a.value.as_bytes()).map_err(err)?;
            println!("ok {i}");
            Ok(ExitCode::SUCCESS)
        }),
        RaftCmd::Get(a) => {
            with_client(&a.conn, |c| match c.get(a.key.as_bytes()).map_err(err)? {
                Some(v) => {
                    println!("{}", String::from_utf8_lossy(&v));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("erlmcp-flow: {} is not set", a.key);
                    Ok(ExitCode::from(1))
                }
            })
        }
        RaftCmd::Transfer(a) => with_client(&a.conn, |c| {
            let term = c.transfer_leader(a.to).map_err(err)?;
            println!("leader {} term {term}", a.to);
            Ok(ExitCode::SUCCESS)
        }),
        RaftCmd::Members(a) => members(a),
        RaftCmd::Cluster(a) => cluster(a),
    }
}

fn print_membership(m: &Membership) {
    println!("voters {:?}", m.voters);
    println!("learners {:?}", m.learners);
    if m.is_joint() {
        println!(
            "joint: outgoing voters {:?}, learners next {:?}",
            m.voters_outgoing, m.learners_next
        );
    }
}

fn members(a: &MembersArgs) -> Result<ExitCode, String> {
    with_client(&a.conn, |c| {
        if let (Some(action), Some(n)) = (a.action, a.node) {
            let change = match action {
                MembersAction::Add => MemberChange::AddVoter(n),
                MembersAction::AddLearner => MemberChange::AddLearner(n),
                MembersAction::Remove => MemberChange::Remove(n),
            };
            let i = c.change_membership(&[change]).map_err(err)?;
            println!("ok {i}");
        }
        print_membership(&c.membership_settled().map_err(err)?);
        Ok(ExitCode::SUCCESS)
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn node(a: &NodeArgs) -> Result<ExitCode, String> {
    let data_dir = match (&a.data_dir, a.memory) {
        (_, true) => None,
        (Some(d), false) => Some(d.clone()),
        (None, false) => return Err("raft node: give --data-dir DIR or --memory".into()),
    };
    let transport = match a.transport {
        TransportKind::Ring => NodeTransport::Ring {
            dir: a.net_dir.clone(),
            inbox_capacity: a.inbox_kib << 10,
            clients: if a.clients.is_empty() {
                default_client_ids()
            } else {
                a.clients.clone()
            },
        },
        TransportKind::Tcp => {
            let listen = a
                .listen
                .as_deref()
                .ok_or("raft node: --transport tcp needs --listen HOST:PORT")?;
            let (_, listen) = parse_addr(&format!("0={listen}"))?;
            NodeTransport::Tcp {
                listen,
                peers: a.peer_addr.clone(),
                clients: a.client_addr.clone(),
            }
        }
    };
    let mut spec = NodeSpec::new(a.id, a.peers.clone(), data_dir, transport);
    spec.tick = Duration::from_millis(a.tick_ms.max(1));
    spec.election_tick = a.election_tick;
    install_stop_handler();
    eprintln!(
        "raft node {}: voters {:?}, {}",
        a.id,
        a.peers,
        match &spec.data_dir {
            Some(d) => format!("log in {}", d.display()),
            None => "log in memory".into(),
        }
    );
    run_node(&spec, &STOP).map_err(|e| format!("raft node {}: {e}", a.id))?;
    eprintln!("raft node {}: stopped", a.id);
    Ok(ExitCode::SUCCESS)
}

fn with_client<F>(c: &ConnArgs, f: F) -> Result<ExitCode, String>
where
    F: FnOnce(&mut dyn KvClient) -> Result<ExitCode, String>,
{
    let opts = ClientOptions {
        timeout: Duration::from_millis(c.timeout_ms.max(1)),
        attempt_timeout: Duration::from_millis(c.timeout_ms.clamp(1, 500)),
        ..ClientOptions::default()
    };
    if c.peer_addr.is_empty() {
        let ids = c.client_id.map_or_else(default_client_ids, |i| vec![i]);
        let mut client = RaftClient::over_rings(&c.net_dir, &c.nodes, &ids, opts).map_err(err)?;
        f(&mut client)
    } else {
        let listen = c
            .listen
            .as_deref()
            .ok_or("over TCP give --listen HOST:PORT (a --client-addr of the nodes)")?;
        let (_, listen) = parse_addr(&format!("0={listen}"))?;
        let id = c.client_id.unwrap_or(default_client_ids()[0]);
        let peers: Vec<(NodeId, SocketAddr)> =
            c.peer_addr.iter().map(|&(n, a)| (NodeId(n), a)).collect();
        let t =
            TcpTransport::bind(NodeId(id), listen, &peers, TcpOptions::default()).map_err(err)?;
        let nodes: Vec<u64> = c.peer_addr.iter().map(|p| p.0).collect();
        let mut client = RaftClient::new(t, &nodes, opts).map_err(err)?;
        f(&mut client)
    }
}

/// What the commands need of a client, whatever its transport.
pub trait KvClient {
    fn set(&mut self, key: &[u8], value: &[u8]) -> erlmcp_flow::Result<u64>;
    fn get(&mut self, key: &[u8]) -> erlmcp_flow::Result<Option<Vec<u8>>>;
    fn statuses(&mut self) -> Vec<(u64, erlmcp_flow::Result<Status>)>;
    fn transfer_leader(&mut self, to: u64) -> erlmcp_flow::Result<u64>;
    fn change_membership(&mut self, changes: &[MemberChange]) -> erlmcp_flow::Result<u64>;
    fn membership_settled(&mut self) -> erlmcp_flow::Result<Membership>;
}

impl<T: Transport> KvClient for RaftClient<T> {
    fn set(&mut self, key: &[u8], value: &[u8]) -> erlmcp_flow::Result<u64> {
        RaftClient::set(self, key, value)
    }
    fn get(&mut self, key: &[u8]) -> erlmcp_flow::Result<Option<Vec<u8>>> {
        RaftClient::get(self, key)
    }
    fn statuses(&mut self) -> Vec<(u64, erlmcp_flow::Result<Status>)> {
        RaftClient::statuses(self)
    }
    fn transfer_leader(&mut self, to: u64) -> erlmcp_flow::Result<u64> {
        RaftClient::transfer_leader(self, to)
    }
    fn change_membership(&mut self, changes: &[MemberChange]) -> erlmcp_flow::Result<u64> {
        RaftClient::change_membership(self, changes)
    }
    fn membership_settled(&mut self) -> erlmcp_flow::Result<Membership> {
        RaftClient::membership_settled(self)
    }
}

fn print_statuses(all: &[(u64, erlmcp_flow::Result<Status>)], verbose: bool) -> bool {
    println!(
        "{:>8} {:>8} {:>8} {:>10} {:>10}  voters",
        "node", "leader", "term", "commit", "applied"
    );
    let mut any = false;
    for (n, s) in all {
        match s {
            Ok(s) => {
                any = true;
                let leader = if s.leader == 0 {
                    "-".to_string()
                } else {
                    s.leader.to_string()
                };
                println!(
                    "{:>8} {:>8} {:>8} {:>10} {:>10}  {:?}",
                    s.id, leader, s.term, s.commit, s.applied, s.voters
                );
                if verbose {
                    for (k, v) in &s.stats {
                        println!("{:>20} {v}", k);
                    }
                }
            }
            Err(e) => println!("{n:>8} unreachable: {e}"),
        }
    }
    any
}

fn status(a: &StatusArgs) -> Result<ExitCode, String> {
    with_client(&a.conn, |c| {
        let all = c.statuses();
        Ok(if print_statuses(&all, a.verbose) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn cluster(a: &ClusterArgs) -> Result<ExitCode, String> {
    let opts = ClusterOptions {
        bin: Some(std::env::current_exe().map_err(err)?),
        memory: a.memory,
        ..ClusterOptions::default()
    };
    install_stop_handler();
    let mut c = LocalCluster::start(a.nodes, &a.dir, opts).map_err(err)?;
    let ids = c.members().to_vec();
    print_statuses(&c.stats(), false);
    println!(
        "cluster up in {} (nodes {ids:?}); try: erlmcp-flow raft status --net-dir {} --nodes {}",
        a.dir.display(),
        a.dir.join("net").display(),
        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    println!("Ctrl-C stops it");
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    Ok(ExitCode::SUCCESS)
}
