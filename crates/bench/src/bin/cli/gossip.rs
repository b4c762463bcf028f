//! `erlmcp-flow gossip member|cluster`: SWIM membership and gossip of agents' state from the
//! command line — run one member (rings on one host, TCP between hosts) and show its member
//! list as it changes, or run a local cluster of members (threads over rings) with optional
//! loss, CPU stress and a killed member, and report false positives and detection time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use erlmcp_flow::membership::swim::{MemberState, SwimConfig};
use erlmcp_flow::mesh::member::{Member, MemberOptions, MeshEvent};
use erlmcp_flow::net::ring::{RingNetOptions, RingTransport};
use erlmcp_flow::net::tcp::{TcpOptions, TcpTransport};
use erlmcp_flow::net::{Frame, NodeId, Transport};
use erlmcp_flow::ring::WaitStrategy;

#[derive(Subcommand)]
pub enum GossipCmd {
    /// Run one member until SIGTERM or Ctrl-C (or --duration-s), printing membership changes,
    /// remote key changes and the member list
    Member(MemberArgs),
    /// Run a local cluster of members (one thread each, over rings) and report false
    /// positives, suspicions and the detection time of a killed member; exits 1 on a false
    /// positive or an undetected kill
    Cluster(ClusterArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// Inbox rings in --net-dir (members on one host)
    Ring,
    /// TCP: --listen and a --peer-addr per other member
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

/// `KEY=VALUE`.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

#[derive(Args)]
pub struct MemberArgs {
    /// This member's id
    #[arg(long)]
    id: u64,
    /// Every member's id (the transport's peers; this one may be included)
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<u64>,
    /// Members to announce this one to (default: the lowest other id of --peers; none for
    /// the member with the lowest id)
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// How members reach each other
    #[arg(long, value_enum, default_value = "ring")]
    transport: TransportKind,
    /// Ring transport: the cluster's directory of inbox rings
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/emf-gossip")]
    net_dir: PathBuf,
    /// TCP transport: the address to listen on
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// TCP transport: another member's address, ID=HOST:PORT (one per other member)
    #[arg(long, value_name = "ID=HOST:PORT", value_parser = parse_addr)]
    peer_addr: Vec<(u64, SocketAddr)>,
    /// Keys to write at start, KEY=VALUE
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    put: Vec<(String, String)>,
    /// SWIM's probe period in milliseconds (other timings scale with it)
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    probe_ms: u64,
    /// Print the member list every MS milliseconds (0: only on changes)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    show_ms: u64,
    /// Stop after this many seconds (default: until SIGTERM or Ctrl-C)
    #[arg(long, value_name = "S")]
    duration_s: Option<u64>,
    /// Gossip's round interval in milliseconds (push and pull every round)
    #[arg(long, value_name = "MS", default_value_t = 100)]
    round_ms: u64,
    /// Machine-readable mode for a harness: stdout carries only one line per event, each
    /// ending with CLOCK_MONOTONIC in µs (system-wide, so processes compare): `live COUNT T`
    /// when the number of live members changes, `key KEY T` when a remote key is first
    /// held, `up|suspect|down|restarted ID T`, `rejoined GEN T`, and `put KEY T` for each
    /// `put KEY VALUE` line read from stdin (written when the line is read)
    #[arg(long)]
    report: bool,
    /// Ring transport: spins of a waiting receive before it parks on the inbox's futex
    /// (default: the ring's own); 0 parks at once, for many members on few cores
    #[arg(long, value_name = "N")]
    ring_spins: Option<u32>,
}

#[derive(Args)]
pub struct ClusterArgs {
    /// Number of members
    #[arg(long, default_value_t = 16)]
    members: u64,
    /// How long to run, in seconds
    #[arg(long, value_name = "S", default_value_t = 30)]
    duration_s: u64,
    /// SWIM's probe period in milliseconds (other timings scale with it)
    #[arg(long, value_name = "MS", default_value_t = 200)]
    probe_ms: u64,
    /// Probability that a datagram is lost (each send, each member)
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    loss: f64,
    /// Busy-looping threads started beside the members (CPU stress)
    #[arg(long, value_name = "N", default_value_t = 0)]
    stress: usize,
    /// Kill (stop without leaving) this member half way through; the others must report it
    /// down
    #[arg(long, value_name = "ID")]
    kill: Option<u64>,
    /// The directory of the inbox rings (removed at the end)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
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

pub fn run(cmd: &GossipCmd) -> Result<ExitCode, String> {
    match cmd {
        GossipCmd::Member(a) => member(a),
        GossipCmd::Cluster(a) => cluster(a),
    }
}

fn err(e: erlmcp_flow::Error) -> String {
    e.to_string()
}

fn options(probe_ms: u64, n: usize, seeds: &[u64]) -> MemberOptions {
    MemberOptions {
        swim: SwimConfig::for_cluster_size(n)
            .with_probe_period(Duration::from_millis(probe_ms.max(10))),
        seeds: seeds.iter().map(|&s| NodeId(s)).collect(),
        ..MemberOptions::default()
    }
}

fn member(a: &MemberArgs) -> Result<ExitCode, String> {
    let peers: Vec<NodeId> = a
        .peers
        .iter()
        .copied()
        .filter(|&p| p != a.id)
        .map(NodeId)
        .collect();
    let seeds = match &a.seeds {
        Some(s) => s.clone(),
        None => peers
            .iter()
            .map(|p| p.0)
            .filter(|&p| p < a.id)
            .min()
            .into_iter()
            .collect(),
    };
    if a.round_ms == 0 {
        return Err("--round-ms must be at least 1".into());
    }
    let mut opts = options(a.probe_ms, a.peers.len(), &seeds);
    opts.gossip.round_interval_us = a.round_ms * 1000;
    install_stop_handler();
    match a.transport {
        TransportKind::Ring => {
            std::fs::create_dir_all(&a.net_dir)
                .map_err(|e| format!("{}: {e}", a.net_dir.display()))?;
            let ring_opts = RingNetOptions {
                // Every other member may send to this one's inbox.
                max_producers: RingNetOptions::in_dir(&a.net_dir)
                    .max_producers
                    .max(a.peers.len() + 1),
                wait: match a.ring_spins {
                    Some(spins) => WaitStrategy::SpinThenPark { spins },
                    None => WaitStrategy::default(),
                },
                ..RingNetOptions::in_dir(&a.net_dir)
            };
            let t = RingTransport::open(NodeId(a.id), &peers, ring_opts).map_err(err)?;
            run_member(a, Member::new(t, opts).map_err(err)?)
        }
        TransportKind::Tcp => {
            let listen = a
                .listen
                .as_deref()
                .ok_or("--transport tcp needs --listen")?;
            let listen = parse_addr(&format!("0={listen}"))?.1;
            let addrs: Vec<(NodeId, SocketAddr)> =
                a.peer_addr.iter().map(|&(id, s)| (NodeId(id), s)).collect();
            let t = TcpTransport::bind(NodeId(a.id), listen, &addrs, TcpOptions::default())
                .map_err(err)?;
            run_member(a, Member::new(t, opts).map_err(err)?)
        }
    }
}

fn print_members<T: Transport>(m: &Member<T>) {
    let list = m.members();
    let live = list.iter().filter(|x| x.state != MemberState::Down).count();
    println!(
        "member {}: {} live of {} known; health x{}",
        m.id().0,
        live,
        list.len(),
        m.swim().local_health()
    );
    for x in list {
        println!(
            "  {:>6}  {:<8} generation {} incarnation {}",
            x.id,
            format!("{:?}", x.state).to_lowercase(),
            x.generation,
            x.incarnation
        );
    }
}

/// CLOCK_MONOTONIC in µs: the same clock in every process of the machine.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Lines read from stdin by a thread (`--report`), so the member loop never blocks on it.
fn stdin_lines() -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `--report`: one event as a line (see [`MemberArgs::report`]); `None` for events without
/// a line (deletes).
fn report_line(e: &MeshEvent, now: u64) -> Option<String> {
    Some(match e {
        MeshEvent::KeyChanged(c) => {
            c.value.as_ref()?;
            format!("key {} {now}", String::from_utf8_lossy(&c.key))
        }
        MeshEvent::MemberUp(id) => format!("up {} {now}", id.0),
        MeshEvent::MemberSuspect(id) => format!("suspect {} {now}", id.0),
        MeshEvent::MemberDown(id) => format!("down {} {now}", id.0),
        MeshEvent::MemberRestarted(id) => format!("restarted {} {now}", id.0),
        MeshEvent::Rejoined { generation } => format!("rejoined {generation} {now}"),
    })
}

/// The `--report` loop: event lines with monotonic times, puts from stdin.
fn run_report<T: Transport>(a: &MemberArgs, mut m: Member<T>) -> Result<ExitCode, String> {
    let input = stdin_lines();
    let start = Instant::now();
    let mut held = std::collections::HashSet::new();
    let mut live = usize::MAX;
    // Stdin is looked at between polls, so a put may wait up to a poll; its line carries the
    // time it was written, so the wait does not bias a measurement. (A poll returns sooner
    // when a frame arrives or a timer is due.) Short polls would cost every member wake-ups.
    let wait = Duration::from_millis(50);
    while !STOP.load(Ordering::Relaxed) {
        if a.duration_s
            .is_some_and(|d| start.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        while let Ok(line) = input.try_recv() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("put"), Some(k), Some(v)) => {
                    m.put(k.as_bytes(), v.as_bytes()).map_err(err)?;
                    println!("put {k} {}", monotonic_us());
                }
                (None, ..) => {}
                _ => eprintln!("gossip member {}: ignored input {line:?}", a.id),
            }
        }
        m.poll(wait).map_err(err)?;
        let now = monotonic_us();
        for e in m.drain_events() {
            if let MeshEvent::KeyChanged(c) = &e {
                if c.value.is_none() || !held.insert(c.key.clone()) {
                    continue;
                }
            }
            if let Some(l) = report_line(&e, now) {
                println!("{l}");
            }
        }
        let n = m.live_members().len();
        if n != live {
            live = n;
            println!("live {n} {now}");
        }
    }
    eprintln!("gossip member {}: stopped; {:?}", a.id, m.stats());
    Ok(ExitCode::SUCCESS)
}

fn run_member<T: Transport>(a: &MemberArgs, mut m: Member<T>) -> Result<ExitCode, String> {
    for (k, v) in &a.put {
        m.put(k.as_bytes(), v.as_bytes()).map_err(err)?;
    }
    if a.report {
        return run_report(a, m);
    }
    eprintln!(
        "gossip member {} (generation {}): running; Ctrl-C stops it",
        a.id,
        m.swim().generation()
    );
    let start = Instant::now();
    let mut shown = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        if a.duration_s
            .is_some_and(|d| start.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        m.poll(Duration::from_millis(50)).map_err(err)?;
        let mut changed = false;
        for e in m.drain_events() {
            match e {
                MeshEvent::KeyChanged(c) => match c.value {
                    Some(v) => println!(
                        "key {} = {}",
                        String::from_utf8_lossy(&c.key),
                        String::from_utf8_lossy(&v)
                    ),
                    None => println!("key {} deleted", String::from_utf8_lossy(&c.key)),
                },
                other => {
                    println!("{other:?}");
                    changed = true;
                }
            }
        }
        let due = a.show_ms > 0 && shown.elapsed() >= Duration::from_millis(a.show_ms);
        if changed || due {
            print_members(&m);
            shown = Instant::now();
        }
    }
    m.leave().map_err(err)?;
    // Let the leave go out.
    let _ = m.poll(Duration::from_millis(10));
    print_members(&m);
    eprintln!("gossip member {}: left; {:?}", a.id, m.stats());
    Ok(ExitCode::SUCCESS)
}

/// A transport that loses each sent datagram with probability `loss` (a lossy network).
struct Lossy<T> {
    inner: T,
    loss: f64,
    rng: u64,
}

impl<T: Transport> Transport for Lossy<T> {
    fn local_id(&self) -> NodeId {
        self.inner.local_id()
    }

    fn send(&mut self, to: NodeId, payload: &[u8]) -> erlmcp_flow::Result<()> {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if ((z >> 11) as f64 / (1u64 << 53) as f64) < self.loss {
            return Ok(());
        }
        self.inner.send(to, payload)
    }

    fn try_recv(&mut self) -> erlmcp_flow::Result<Option<Frame>> {
        self.inner.try_recv()
    }

    fn recv_timeout(&mut self, timeout: Duration) -> erlmcp_flow::Result<Option<Frame>> {
        self.inner.recv_timeout(timeout)
    }
}

/// What the members of a local cluster saw: (ms since start, observer, event).
type Seen = Arc<Mutex<Vec<(u64, u64, MeshEvent)>>>;

fn cluster(a: &ClusterArgs) -> Result<ExitCode, String> {
    if a.members < 2 {
        return Err("--members must be at least 2".into());
    }
    if !(0.0..1.0).contains(&a.loss) {
        return Err("--loss must be in [0, 1)".into());
    }
    install_stop_handler();
    let dir = a.dir.clone().unwrap_or_else(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("emf-gossip-cluster-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_cluster(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_cluster(a: &ClusterArgs, dir: &std::path::Path) -> Result<ExitCode, String> {
    let n = a.members;
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let mut transports = Vec::new();
    for &id in &ids {
        let peers: Vec<NodeId> = ids.iter().copied().filter(|&p| p != id).collect();
        let t = RingTransport::open(id, &peers, RingNetOptions::in_dir(dir)).map_err(err)?;
        transports.push(Lossy {
            inner: t,
            loss: a.loss,
            rng: id.0.wrapping_mul(0x2545_F491_4F6C_DD1D),
        });
    }
    let start = Instant::now();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut stress = Vec::new();
    for _ in 0..a.stress {
        let done = done.clone();
        stress.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !done.load(Ordering::Relaxed) {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            x
        }));
    }
    let stops: Vec<Arc<AtomicBool>> = ids
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut threads = Vec::new();
    for (t, stop) in transports.into_iter().zip(stops.iter().cloned()) {
        let id = t.local_id().0;
        let seeds: Vec<u64> = if id == 1 { vec![] } else { vec![1] };
        let opts = options(a.probe_ms, n as usize, &seeds);
        let (seen, done) = (seen.clone(), done.clone());
        threads.push(std::thread::spawn(move || -> Result<_, String> {
            let mut m = Member::new(t, opts).map_err(err)?;
            m.put(format!("agent/{id}").as_bytes(), b"up")
                .map_err(err)?;
            let mut max_health = 1;
            while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
                m.poll(Duration::from_millis(20)).map_err(err)?;
                max_health = max_health.max(m.swim().local_health());
                for e in m.drain_events() {
                    if !matches!(e, MeshEvent::KeyChanged(_)) {
                        let ms = start.elapsed().as_millis() as u64;
                        seen.lock().expect("not poisoned").push((ms, id, e));
                    }
                }
            }
            let live = m.live_members().len();
            Ok((
                id,
                live,
                m.gossip().len(),
                max_health,
                m.stats(),
                m.swim_stats(),
            ))
        }));
    }
    println!(
        "gossip cluster: {n} members over rings, probe {} ms, loss {}, {} stress threads, {} s",
        a.probe_ms, a.loss, a.stress, a.duration_s
    );
    let end = start + Duration::from_secs(a.duration_s);
    let kill_at = start + Duration::from_secs(a.duration_s) / 2;
    let mut killed: Option<(u64, u64)> = None;
    while Instant::now() < end && !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(victim) = a.kill {
            if killed.is_none() && Instant::now() >= kill_at {
                let i = usize::try_from(victim)
                    .ok()
                    .filter(|&v| v >= 1 && v <= n as usize);
                let i = i.ok_or_else(|| format!("--kill {victim}: no such member"))?;
                stops[i - 1].store(true, Ordering::Relaxed);
                killed = Some((victim, start.elapsed().as_millis() as u64));
                println!("killed member {victim} at {} ms", killed.expect("set").1);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| "a member thread panicked".to_string())??,
        );
    }
    for s in stress {
        let _ = s.join();
    }
    let seen = seen.lock().expect("not poisoned").clone();
    let victim = killed.map(|k| k.0);
    let false_downs: Vec<_> = seen
        .iter()
        .filter(|(_, _, e)| match e {
            MeshEvent::MemberDown(d) => Some(d.0) != victim,
            MeshEvent::Rejoined { .. } => true,
            _ => false,
        })
        .collect();
    let suspicions = seen
        .iter()
        .filter(|(_, _, e)| matches!(e, MeshEvent::MemberSuspect(_)))
        .count();
    let mut detect_ms = None;
    let mut undetected = Vec::new();
    if let Some((v, at)) = killed {
        for &(id, ..) in results.iter().filter(|r| r.0 != v) {
            let t = seen
                .iter()
                .find(|(t, o, e)| *o == id && *t >= at && *e == MeshEvent::MemberDown(NodeId(v)));
            match t {
                Some((t, ..)) => detect_ms = Some(detect_ms.unwrap_or(0).max(t - at)),
                None => undetected.push(id),
            }
        }
    }
    for (id, live, keys, health, st, sw) in &results {
        println!(
            "  member {id:>3}: {live} live, {keys} keys, max health x{health}, \
             frames in/out {}/{}, dropped full {}, probes {}, failed {}, refutations {}",
            st.frames_in,
            st.frames_out,
            st.dropped_full,
            sw.probes,
            sw.failed_probes,
            sw.refutations
        );
    }
    for f in &false_downs {
        println!("FALSE POSITIVE at {} ms: member {} saw {:?}", f.0, f.1, f.2);
    }
    let detect = detect_ms.map_or("null".to_string(), |d| d.to_string());
    println!(
        "{{\"members\":{n},\"duration_s\":{},\"loss\":{},\"stress\":{},\"false_positives\":{},\
         \"suspicions\":{suspicions},\"killed\":{},\"detect_ms\":{detect},\"undetected\":{}}}",
        a.duration_s,
        a.loss,
        a.stress,
        false_downs.len(),
        victim.map_or("null".to_string(), |v| v.to_string()),
        undetected.len()
    );
    if !false_downs.is_empty() || !undetected.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_cluster_detects_its_killed_member() {
        let dir = std::env::temp_dir().join(format!("emf-gossip-cli-{}", std::process::id()));
        let a = ClusterArgs {
            members: 4,
            duration_s: 4,
            probe_ms: 100,
            loss: 0.01,
            stress: 0,
            kill: Some(4),
            dir: Some(dir.clone()),
        };
        assert_eq!(cluster(&a).unwrap(), ExitCode::SUCCESS);
        assert!(!dir.exists(), "the rings' directory is removed");
        let bad = ClusterArgs { members: 1, ..a };
        assert!(cluster(&bad).unwrap_err().contains("at least 2"));
    }
}
