//! The PBFT suite (issue 14): n = 4 replicas on threads of this process over rings, driven
//! by client endpoints in this thread through [`erlmcp_flow::mesh::pbft`].
//!
//! Every group is four [`spawn_replica`] threads over inbox rings in a scratch directory
//! under `/dev/shm`, replicating an [`OrderLog`], signing with **Ed25519** (a replica
//! verifies every client request and every vote); two client endpoints share it: one whose
//! clients accept the fast path (2f + 1 matching *tentative* replies: prepared at 2f + 1
//! replicas) and one whose clients ignore tentative replies and wait for f + 1 matching
//! *committed* ones (the slow, classic path). The replicas are the same for both; only the
//! client's rule differs, so the two paths are measured on the same requests.
//!
//! * `pbft_fast_p50_us` / `pbft_fast_p99_us` and `pbft_slow_p50_us` / `pbft_slow_p99_us`:
//!   one request at a time, the fast and the slow client taking turns on the same sequence of
//!   64-byte operations; each request timed from submit to completion; batching off (the
//!   primary orders each request at once). The original: −33 % latency for the fast path.
//! * `pbft_throughput_batched`: [`SLOTS`] clients keeping a request each in flight, the
//!   primary batching (up to 64 requests, or what arrived within [`BATCH_WINDOW_US`]); fast
//!   clients; completions per second, median of the runs. Beside it, the same load with slow
//!   clients (`pbft_throughput_slow`, printed as the peer: the original claims 1.5× for the
//!   fast path). The same with the insecure simulation keys ([`SimKeys`]) is printed and
//!   reported as `pbft_throughput_batched_simkeys`: what the protocol costs without the
//!   signatures.
//! * `pbft_view_change_ms`: the primary stopped (its thread ends: a crash to the others),
//!   timed from the stop to the first completion of a request submitted right after it (in
//!   the new view); view-change timeout [`VIEW_CHANGE_TIMEOUT_US`], the client's
//!   retransmission after [`RETRANSMIT_US`]; median over the repetitions, each on a fresh
//!   group.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: a scratch directory counter
use std::time::{Duration, Instant};

use erlmcp_flow::mesh::pbft::{
    spawn_replica, Addresses, MeshClient, OrderLog, PbftTransport, ReplicaHandle, ReplicaSpec,
};
use erlmcp_flow::net::ring::{RingNetOptions, RingTransport};
use erlmcp_flow::net::NodeId;
use erlmcp_flow::pbft::{
    Authenticator, Client, ClientConfig, Config, Ed25519Keys, Path as DonePath, Principal, SimKeys,
};

use super::{BenchResult, Better, Settings, Suite};

/// Replicas: n = 3f + 1 with f = 1.
pub const N: usize = 4;
/// The size of one operation, in bytes.
pub const OP_BYTES: usize = 64;
/// Clients with a request in flight in the throughput runs (per endpoint).
pub const SLOTS: usize = 64;
/// The primary's batch window in the throughput runs, in microseconds.
pub const BATCH_WINDOW_US: u64 = 500;
/// The view-change timeout of every group, in microseconds.
pub const VIEW_CHANGE_TIMEOUT_US: u64 = 100_000;
/// The clients' retransmission timeout, in microseconds.
pub const RETRANSMIT_US: u64 = 50_000;
/// Measurements (progress steps).
pub const STEPS: usize = 4;

/// The fast-path endpoint's node.
const FAST: NodeId = NodeId(101);
/// The slow-path endpoint's node.
const SLOW: NodeId = NodeId(102);
/// The first client id of an endpoint: `base(FAST) + slot`.
fn base(endpoint: NodeId) -> u64 {
    endpoint.0 * 10_000
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Operation `k`: 64 bytes.
pub fn op(k: u64) -> Vec<u8> {
    let mut v = vec![k as u8; OP_BYTES];
    v[..8].copy_from_slice(&k.to_le_bytes());
    v
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = if Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
            PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("emf-pbft-bench-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which authenticator the group signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Ed25519 signatures (the real thing).
    Ed25519,
    /// The simulation's keyed hash (not secure: the protocol's cost without signatures).
    Sim,
}

/// Keys of one principal, boxed so that both kinds run through the same code.
type AnyKeys = Box<dyn Authenticator + Send>;

/// The deterministic key material of a bench group.
struct KeyRing {
    kind: Keys,
    replica_seeds: Vec<[u8; 32]>,
    replica_pubs: Vec<[u8; 32]>,
    clients: Vec<(u64, [u8; 32])>,
}

fn client_seed(id: u64) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..8].copy_from_slice(&id.to_le_bytes());
    s
}

impl KeyRing {
    fn new(kind: Keys, client_ids: &[u64]) -> KeyRing {
        let replica_seeds: Vec<[u8; 32]> = (0..N as u8).map(|i| [i + 1; 32]).collect();
        let replica_pubs = replica_seeds.iter().map(Ed25519Keys::public_key).collect();
        let clients = client_ids
            .iter()
            .map(|&c| (c, Ed25519Keys::public_key(&client_seed(c))))
            .collect();
        KeyRing {
            kind,
            replica_seeds,
            replica_pubs,
            clients,
        }
    }

    fn replica(&self, i: u32) -> Result<AnyKeys, String> {
        Ok(match self.kind {
            Keys::Sim => Box::new(SimKeys::new(Principal::Replica(i), 1)),
            Keys::Ed25519 => Box::new(
                Ed25519Keys::new(
                    &self.replica_seeds[i as usize],
                    &self.replica_pubs,
                    &self.clients,
                )
                .map_err(err)?,
            ),
        })
    }

    fn client(&self, id: u64) -> Result<AnyKeys, String> {
        Ok(match self.kind {
            Keys::Sim => Box::new(SimKeys::new(Principal::Client(id), 1)),
            Keys::Ed25519 => {
                Box::new(Ed25519Keys::new(&client_seed(id), &self.replica_pubs, &[]).map_err(err)?)
            }
        })
    }
}

/// A running group of four replica threads and its two endpoints.
pub struct Group {
    replicas: Vec<Option<ReplicaHandle>>,
    /// Fast-path clients.
    pub fast: MeshClient<AnyKeys, RingTransport>,
    /// Slow-path clients.
    pub slow: MeshClient<AnyKeys, RingTransport>,
    _dir: Scratch,
}

impl Group {
    /// Four replicas signing with `keys`, the primary batching within `batch_window_us`,
    /// and two endpoints of `slots` clients each.
    pub fn start(keys: Keys, slots: usize, batch_window_us: u64) -> Result<Group, String> {
        let dir = Scratch::new("group");
        let ids = |e: NodeId| (0..slots as u64).map(move |s| base(e) + s);
        let all: Vec<u64> = ids(FAST).chain(ids(SLOW)).collect();
        let ring = KeyRing::new(keys, &all);
        let addrs = Addresses::numbered(N)
            .with_clients(FAST, ids(FAST))
            .and_then(|a| a.with_clients(SLOW, ids(SLOW)))
            .map_err(err)?;
        let mut cfg = Config::new(N);
        cfg.batch_window_us = batch_window_us;
        cfg.view_change_timeout_us = VIEW_CHANGE_TIMEOUT_US;
        cfg.max_pending = 4 * slots.max(1024);
        let mut replicas = Vec::new();
        for i in 0..N as u32 {
            let t = PbftTransport::Ring {
                dir: dir.0.clone(),
                inbox_capacity: 8 << 20,
            };
            let mut spec = ReplicaSpec::new(i, cfg.clone(), addrs.clone(), t);
            spec.poll = Duration::from_millis(1);
            replicas.push(Some(
                spawn_replica(spec, ring.replica(i)?, OrderLog::new()).map_err(err)?,
            ));
        }
        let endpoint = |e: NodeId, tentative: bool| -> Result<_, String> {
            let mut cc = ClientConfig::new(N);
            cc.accept_tentative = tentative;
            cc.retransmit_us = RETRANSMIT_US;
            let clients = ids(e)
                .map(|id| Client::new(cc.clone(), id, ring.client(id)?, 0).map_err(err))
                .collect::<Result<Vec<_>, String>>()?;
            let mut o = RingNetOptions::in_dir(&dir.0);
            o.inbox_capacity = 8 << 20;
            MeshClient::over_rings(e, addrs.clone(), clients, o).map_err(err)
        };
        let fast = endpoint(FAST, true)?;
        let slow = endpoint(SLOW, false)?;
        Ok(Group {
            replicas,
            fast,
            slow,
            _dir: dir,
        })
    }

    /// Stops replica `i` (a crash, to the others).
    pub fn stop(&mut self, i: usize) -> Result<(), String> {
        match self.replicas[i].take() {
            Some(h) => h.stop().map_err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for h in self.replicas.iter_mut().filter_map(Option::take) {
            let _ = h.stop();
        }
    }
}

/// Executes `op` on `c` and returns the microseconds it took and the path.
fn timed(c: &mut MeshClient<AnyKeys, RingTransport>, op: &[u8]) -> Result<(f64, DonePath), String> {
    let t = Instant::now();
    let done = c.execute(op, Duration::from_secs(10)).map_err(err)?;
    Ok((t.elapsed().as_secs_f64() * 1e6, done.path))
}

/// The `p` quantile (nearest rank), sorting `v`.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    quantile(&mut v, 0.5)
}

/// The latencies of [`latency`], in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// Fast-path client: (p50, p99).
    pub fast: (f64, f64),
    /// Slow-path client: (p50, p99).
    pub slow: (f64, f64),
    /// Requests of the fast-path client that completed on the slow path.
    pub fell_back: u64,
}

/// Latencies of `count` requests on each path, taking turns on the same operations (after a
/// warm-up of a tenth).
pub fn latency(g: &mut Group, count: u64) -> Result<Latencies, String> {
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let mut fell_back = 0;
    for k in 0..count + count / 10 {
        let o = op(k);
        let (f, path) = timed(&mut g.fast, &o)?;
        let (s, _) = timed(&mut g.slow, &o)?;
        if k < count / 10 {
            continue; // warm-up
        }
        fell_back += u64::from(path == DonePath::Slow);
        fast.push(f);
        slow.push(s);
    }
    Ok(Latencies {
        fast: (quantile(&mut fast, 0.5), quantile(&mut fast, 0.99)),
        slow: (quantile(&mut slow, 0.5), quantile(&mut slow, 0.99)),
        fell_back,
    })
}

/// Completes `ops` requests through every slot of `c`: requests per second.
pub fn throughput(c: &mut MeshClient<AnyKeys, RingTransport>, ops: u64) -> Result<f64, String> {
    let (mut next, mut done) = (0u64, 0u64);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    while done < ops {
        if Instant::now() > deadline {
            return Err(format!("{done} of {ops} done in 60 s: {:?}", c.stats()));
        }
        while next < ops {
            let Some(slot) = c.free_slot() else { break };
            c.start(slot, &op(next)).map_err(err)?;
            next += 1;
        }
        done += c.poll(Duration::from_millis(1)).map_err(err)?.len() as u64;
    }
    Ok(ops as f64 / t0.elapsed().as_secs_f64())
}

/// The median of `runs` throughput runs of `ops` requests after a warm-up of a tenth.
fn throughput_runs(
    c: &mut MeshClient<AnyKeys, RingTransport>,
    ops: u64,
    runs: usize,
) -> Result<f64, String> {
    throughput(c, (ops / 10).max(100))?;
    let mut v = Vec::new();
    for _ in 0..runs.max(1) {
        v.push(throughput(c, ops)?);
    }
    Ok(median(v))
}

/// Stops the primary of a fresh group and times the first completion after it: ms.
pub fn view_change(keys: Keys) -> Result<f64, String> {
    let mut g = Group::start(keys, 1, 0)?;
    for k in 0..5 {
        timed(&mut g.fast, &op(k))?;
    }
    let t0 = Instant::now();
    g.stop(0)?;
    let done = g
        .fast
        .execute(&op(99), Duration::from_secs(20))
        .map_err(|e| format!("no completion 20 s after stopping the primary: {e}"))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if g.fast.client(0).map_or(0, Client::view) == 0 {
        return Err(format!("completed without a view change: {done:?}"));
    }
    Ok(ms)
}

/// The PBFT suite.
pub fn pbft_suite() -> Suite {
    Suite {
        name: "pbft",
        about: "PBFT, 4 replica threads over rings with Ed25519: fast (tentative) vs slow path latency on the same requests, batched throughput vs the slow path, view change after the primary stops",
        steps: STEPS,
        run,
    }
}

fn run(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let quick = settings.samples < 10;
    let (count, ops, ed_ops, runs, reps) = if quick {
        (50, 500, 200, 1, 1)
    } else {
        (2_000, 20_000, 4_000, 3, 5)
    };
    let fail = |what: &str, e: String| -> ! { panic!("pbft suite: {what}: {e}") };
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut progress = |name: &str| {
        eprintln!("pbft: [{:.1} s] {name}", t0.elapsed().as_secs_f64());
        progress(name)
    };

    progress("pbft_fast_p50_us");
    let mut g = Group::start(Keys::Ed25519, 1, 0).unwrap_or_else(|e| fail("a group", e));
    let Latencies {
        fast: (f50, f99),
        slow: (s50, s99),
        fell_back: fell,
    } = latency(&mut g, count).unwrap_or_else(|e| fail("latency", e));
    drop(g);
    eprintln!(
        "pbft: one request at a time, {count} each, Ed25519: fast p50 {f50:.0} us p99 {f99:.0} us ({fell} fell back to the slow path); slow p50 {s50:.0} us p99 {s99:.0} us"
    );
    // The original claims -33 % latency: the fast path at 2/3 of the slow one.
    out.push(
        BenchResult::new("pbft_fast_p50_us", f50, "us", Better::Lower)
            .with_targets(Some(s50 * 2.0 / 3.0), None)
            .with_peer("slow path (committed replies)", s50),
    );
    out.push(
        BenchResult::new("pbft_fast_p99_us", f99, "us", Better::Lower)
            .with_targets(Some(s99 * 2.0 / 3.0), None)
            .with_peer("slow path (committed replies)", s99),
    );
    out.push(BenchResult::new(
        "pbft_slow_p50_us",
        s50,
        "us",
        Better::Lower,
    ));
    out.push(BenchResult::new(
        "pbft_slow_p99_us",
        s99,
        "us",
        Better::Lower,
    ));
    let mut g = Group::start(Keys::Sim, 1, 0).unwrap_or_else(|e| fail("a group", e));
    let Latencies {
        fast: (g50, g99),
        slow: (t50, t99),
        fell_back: fell,
    } = latency(&mut g, count).unwrap_or_else(|e| fail("latency (sim keys)", e));
    drop(g);
    eprintln!(
        "pbft: the same with the insecure simulation keys: fast p50 {g50:.0} us p99 {g99:.0} us ({fell} fell back); slow p50 {t50:.0} us p99 {t99:.0} us"
    );
    out.push(
        BenchResult::new("pbft_fast_p50_us_simkeys", g50, "us", Better::Lower)
            .with_targets(Some(t50 * 2.0 / 3.0), None)
            .with_peer("slow path (committed replies)", t50),
    );
    out.push(
        BenchResult::new("pbft_fast_p99_us_simkeys", g99, "us", Better::Lower)
            .with_peer("slow path (committed replies)", t99),
    );

    progress("pbft_throughput_batched");
    let mut g = Group::start(Keys::Ed25519, SLOTS, BATCH_WINDOW_US)
        .unwrap_or_else(|e| fail("a batching group", e));
    let fast = throughput_runs(&mut g.fast, ed_ops, runs).unwrap_or_else(|e| fail("fast", e));
    let slow = throughput_runs(&mut g.slow, ed_ops, runs).unwrap_or_else(|e| fail("slow", e));
    drop(g);
    eprintln!(
        "pbft: {SLOTS} clients in flight, batch window {BATCH_WINDOW_US} us, Ed25519: fast {fast:.0} ops/s, slow {slow:.0} ops/s"
    );
    out.push(
        BenchResult::new("pbft_throughput_batched", fast, "ops/s", Better::Higher)
            .with_targets(Some(slow * 1.5), Some(50_000.0))
            .with_peer("slow path (committed replies)", slow),
    );
    out.push(BenchResult::new(
        "pbft_throughput_slow",
        slow,
        "ops/s",
        Better::Higher,
    ));

    progress("pbft_throughput_batched_simkeys");
    let mut g = Group::start(Keys::Sim, SLOTS, BATCH_WINDOW_US)
        .unwrap_or_else(|e| fail("a batching group (sim keys)", e));
    let sfast = throughput_runs(&mut g.fast, ops, runs).unwrap_or_else(|e| fail("fast", e));
    let sslow = throughput_runs(&mut g.slow, ops, runs).unwrap_or_else(|e| fail("slow", e));
    drop(g);
    eprintln!(
        "pbft: the same with the insecure simulation keys: fast {sfast:.0} ops/s, slow {sslow:.0} ops/s"
    );
    out.push(
        BenchResult::new(
            "pbft_throughput_batched_simkeys",
            sfast,
            "ops/s",
            Better::Higher,
        )
        .with_targets(Some(sslow * 1.5), Some(50_000.0))
        .with_peer("slow path (committed replies)", sslow),
    );

    progress("pbft_view_change_ms");
    let mut v = Vec::new();
    for _ in 0..reps {
        v.push(view_change(Keys::Ed25519).unwrap_or_else(|e| fail("view change", e)));
    }
    eprintln!("pbft: view change after the primary stopped (ms): {v:.1?}");
    out.push(
        BenchResult::new("pbft_view_change_ms", median(v), "ms", Better::Lower)
            .with_targets(None, Some(500.0)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_64_bytes_and_distinct() {
        assert_eq!(op(0).len(), OP_BYTES);
        assert_ne!(op(1), op(257));
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
    }
}
