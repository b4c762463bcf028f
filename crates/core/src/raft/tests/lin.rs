//! Linearizability of the replicated key-value store: simulated clients issue concurrent
//! get / set / compare-and-set operations to the seeded cluster of `super` (drops, delays,
//! duplicates, partitions, crashes and restarts), every invocation and response is stamped
//! on the simulation clock, and the history is checked against a sequential KV.
//!
//! The checker is Wing & Gong's search with Lowe's memoisation (a linearized-set + state
//! cache), run per key: linearizability is local (Herlihy & Wing), so a history is
//! linearizable iff its restriction to every key is. An operation whose outcome is unknown
//! (the node crashed, reported it `unknown`, or the client gave up waiting) may be placed
//! anywhere after its invocation, or left out; a get whose outcome is unknown changes nothing
//! and is left out. An operation the node refused (`NotLeader`, `Full`) or reported
//! `dropped` is taken as never applied: the checker thereby also checks that claim.
//!
//! stateright's `LinearizabilityTester` was weighed: its search has no memo (every
//! interleaving is re-explored: exponential on histories of a few dozen concurrent
//! operations), it works on a whole object (no split by key), and an operation with no
//! response must be its thread's last. It is kept here as an oracle: on small random
//! histories both must give the same verdict.
//!
//! The suite checks 8 histories of 300 operations (3 nodes in memory; 3 and 5 nodes on disk
//! with crashes), a regression seed, the checker on hand-made histories (stale read, double
//! compare-and-set, an unknown write seen before its invocation or flickering), and a
//! deliberately broken read path (gets answered off the log by the contacted replica) that
//! must be caught. `EMF_RAFT_LIN_OPS=N` sets the operations per history, `EMF_RAFT_SEEDS` /
//! `EMF_RAFT_SEED` the seeds as for the other simulations (scripts/raft-lin.sh: 12 histories
//! of 10^4); `EMF_RAFT_SUMMARY=1` prints what each run exercised; `EMF_RAFT_LIN_TRACE=1`
//! prints every refused and dropped operation.

use std::collections::{BTreeMap, HashSet};

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

use super::*;

/// One operation of a client history (also built by the client-protocol lin test in
/// `replica/ops_tests.rs`).
#[derive(Debug, Clone)]
pub(crate) struct HistOp {
    pub(crate) client: usize,
    pub(crate) op: KvOp,
    /// Invocation time (simulation clock: odd half-steps, after a step's Ready).
    pub(crate) inv: u64,
    /// Response time (even half-steps, in a step's Ready) and result; `None`: unknown.
    pub(crate) ret: Option<(u64, KvResult)>,
}

fn key_of(op: &KvOp) -> &[u8] {
    match op {
        KvOp::Set { key, .. } | KvOp::Get { key } | KvOp::Cas { key, .. } => key,
    }
}

/// The sequential specification of one key: the new value and the result.
fn apply(state: &Option<Vec<u8>>, op: &KvOp) -> (Option<Vec<u8>>, KvResult) {
    match op {
        KvOp::Get { .. } => (state.clone(), KvResult::Value(state.clone())),
        KvOp::Set { value, .. } => (Some(value.clone()), KvResult::Done),
        KvOp::Cas { expected, new, .. } => {
            let swapped = state == expected;
            let next = if swapped {
                Some(new.clone())
            } else {
                state.clone()
            };
            (
                next,
                KvResult::Cas {
                    swapped,
                    previous: state.clone(),
                },
            )
        }
    }
}

/// Search nodes a key's check may visit before giving up (a give-up is reported as a failure:
/// an undecided history is not a pass).
const BUDGET: u64 = 20_000_000;

/// Checks a history; `Err` names the first key whose history is not linearizable.
pub(crate) fn check(history: &[HistOp]) -> std::result::Result<(), String> {
    let mut by_key: BTreeMap<&[u8], Vec<&HistOp>> = BTreeMap::new();
    for h in history {
        if h.ret.is_none() && matches!(h.op, KvOp::Get { .. }) {
            continue;
        }
        by_key.entry(key_of(&h.op)).or_default().push(h);
    }
    for (key, ops) in by_key {
        match check_key(ops.clone()) {
            Some(true) => {}
            verdict => {
                let mut msg = format!(
                    "key {}: {} ({} ops):",
                    String::from_utf8_lossy(key),
                    if verdict.is_none() {
                        "undecided within the search budget"
                    } else {
                        "not linearizable"
                    },
                    ops.len()
                );
                for h in ops.iter().take(60) {
                    msg.push_str(&format!(
                        "\n  c{} [{}, {:?}] {:?}",
                        h.client, h.inv, h.ret, h.op
                    ));
                }
                return Err(msg);
            }
        }
    }
    Ok(())
}

struct Search<'a> {
    ops: Vec<&'a HistOp>,
    done: Vec<u64>,
    seen: HashSet<(Vec<u64>, Option<Vec<u8>>)>,
    visits: u64,
}

impl Search<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    /// Whether the completed operations not yet linearized can be, from `state`.
    fn go(&mut self, state: &Option<Vec<u8>>, left: usize) -> Option<bool> {
        if left == 0 {
            return Some(true);
        }
        self.visits += 1;
        if self.visits > BUDGET {
            return None;
        }
        if !self.seen.insert((self.done.clone(), state.clone())) {
            return Some(false);
        }
        // Nothing invoked after the earliest pending response can be linearized before it.
        let min_ret = (0..self.ops.len())
            .filter(|&i| !self.is_done(i))
            .filter_map(|i| self.ops[i].ret.as_ref().map(|r| r.0))
            .min()
            .unwrap_or(u64::MAX);
        // Completed operations first: an unknown one is placed only when something needs it.
        for pass in [true, false] {
            for i in 0..self.ops.len() {
                let h = self.ops[i];
                if h.inv > min_ret {
                    break;
                }
                if self.is_done(i) || h.ret.is_some() != pass {
                    continue;
                }
                let (next, res) = apply(state, &h.op);
                if let Some((_, want)) = &h.ret {
                    if *want != res {
                        continue;
                    }
                }
                self.flip(i);
                let found = self.go(&next, left - usize::from(pass))?;
                self.flip(i);
                if found {
                    return Some(true);
                }
            }
        }
        Some(false)
    }
}

/// One key's history: `Some(verdict)`, `None` when the search budget ran out.
fn check_key(mut ops: Vec<&HistOp>) -> Option<bool> {
    ops.sort_by_key(|h| h.inv);
    let left = ops.iter().filter(|h| h.ret.is_some()).count();
    let mut s = Search {
        done: vec![0; ops.len().div_ceil(64)],
        ops,
        seen: HashSet::new(),
        visits: 0,
    };
    s.go(&None, left)
}

// ---------------------------------------------------------------------------------------------
// The checker on known histories.

fn set(k: &str, v: &str) -> KvOp {
    KvOp::Set {
        key: k.into(),
        value: v.into(),
    }
}
fn get(k: &str) -> KvOp {
    KvOp::Get { key: k.into() }
}
fn cas(k: &str, expected: Option<&str>, new: &str) -> KvOp {
    KvOp::Cas {
        key: k.into(),
        expected: expected.map(Into::into),
        new: new.into(),
    }
}
fn val(v: Option<&str>) -> KvResult {
    KvResult::Value(v.map(Into::into))
}
fn swapped(ok: bool, prev: Option<&str>) -> KvResult {
    KvResult::Cas {
        swapped: ok,
        previous: prev.map(Into::into),
    }
}
fn h(client: usize, inv: u64, ret: Option<(u64, KvResult)>, op: KvOp) -> HistOp {
    HistOp {
        client,
        op,
        inv,
        ret,
    }
}

#[test]
fn checker_accepts_linearizable_and_rejects_violations() {
    // Concurrent set and get: the read may see either value.
    let ok = vec![
        h(0, 1, Some((4, KvResult::Done)), set("x", "1")),
        h(1, 2, Some((3, val(None))), get("x")),
        h(2, 2, Some((5, val(Some("1")))), get("x")),
    ];
    assert_eq!(check(&ok), Ok(()));
    // A stale read: the set completed before the get began.
    let stale = vec![
        h(0, 1, Some((2, KvResult::Done)), set("x", "1")),
        h(1, 3, Some((4, val(None))), get("x")),
    ];
    assert!(check(&stale).unwrap_err().contains("not linearizable"));
    // Two compare-and-sets from absent both succeed.
    let double = vec![
        h(0, 1, Some((5, swapped(true, None))), cas("x", None, "a")),
        h(1, 2, Some((6, swapped(true, None))), cas("x", None, "b")),
    ];
    assert!(check(&double).is_err());
    // An unknown set explains a read of its value, and may also never have happened.
    let maybe = vec![
        h(0, 1, None, set("x", "1")),
        h(1, 5, Some((6, val(Some("1")))), get("x")),
        h(2, 7, Some((8, val(Some("1")))), get("x")),
    ];
    assert_eq!(check(&maybe), Ok(()));
    let never = vec![
        h(0, 1, None, set("x", "1")),
        h(1, 5, Some((6, val(None))), get("x")),
    ];
    assert_eq!(check(&never), Ok(()));
    // ... but not before its invocation, nor flickering: seen, then gone, with no other write.
    let early = vec![
        h(1, 1, Some((2, val(Some("1")))), get("x")),
        h(0, 3, None, set("x", "1")),
    ];
    assert!(check(&early).is_err());
    let flicker = vec![
        h(0, 1, None, set("x", "1")),
        h(1, 3, Some((4, val(Some("1")))), get("x")),
        h(1, 5, Some((6, val(None))), get("x")),
    ];
    assert!(check(&flicker).is_err());
    // Keys are independent: a violation on one key is found among good ones.
    let mut mixed = ok.clone();
    mixed.extend(stale.iter().map(|o| {
        let mut o = o.clone();
        o.op = match o.op {
            KvOp::Set { value, .. } => KvOp::Set {
                key: b"y".to_vec(),
                value,
            },
            _ => get("y"),
        };
        o
    }));
    assert!(check(&mixed).unwrap_err().starts_with("key y"));
}

/// A single register for stateright's tester.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
struct Reg(Option<Vec<u8>>);

impl SequentialSpec for Reg {
    type Op = KvOp;
    type Ret = KvResult;
    fn invoke(&mut self, op: &KvOp) -> KvResult {
        let (next, res) = apply(&self.0, op);
        self.0 = next;
        res
    }
}

#[test]
fn checker_agrees_with_stateright_on_small_random_histories() {
    let mut rng = Rng(77);
    let (mut yes, mut no) = (0, 0);
    for _ in 0..3000 {
        // 3 clients, up to 3 ops each, sequential per client; results from a real execution
        // at random points inside each interval, then sometimes corrupted; a client's last op
        // sometimes has no response.
        let mut events: Vec<(u64, usize, bool)> = Vec::new(); // (time, op, is_response)
        let mut hist: Vec<HistOp> = Vec::new();
        for c in 0..3 {
            let mut t = rng.below(4) * 2 + 1;
            let n = 1 + rng.below(3);
            for k in 0..n {
                let v = format!("{}", rng.below(3));
                let op = match rng.below(3) {
                    0 => get("x"),
                    1 => set("x", &v),
                    _ => cas("x", [None, Some("0"), Some("1")][rng.below(3) as usize], &v),
                };
                let end = t + 1 + 2 * rng.below(4);
                let unknown = k == n - 1 && rng.chance(200);
                hist.push(h(c, t, (!unknown).then_some((end, KvResult::Done)), op));
                events.push((t, hist.len() - 1, false));
                if !unknown {
                    events.push((end, hist.len() - 1, true));
                }
                t = end + 1 + 2 * rng.below(2);
            }
        }
        // A real execution: each op takes effect at a point inside its interval.
        let mut points: Vec<(u64, usize)> = hist
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let end = o.ret.as_ref().map_or(o.inv + 8, |r| r.0);
                (o.inv + rng.below(end - o.inv), i)
            })
            .collect();
        points.sort();
        let mut state = None;
        for (_, i) in points {
            let (next, res) = apply(&state, &hist[i].op);
            state = next;
            if let Some(r) = hist[i].ret.as_mut() {
                r.1 = res;
            }
        }
        if rng.chance(500) {
            let i = rng.below(hist.len() as u64) as usize;
            if let Some(r) = hist[i].ret.as_mut() {
                r.1 = match &r.1 {
                    KvResult::Value(_) => val([None, Some("0"), Some("1")][rng.below(3) as usize]),
                    KvResult::Cas { swapped, previous } => KvResult::Cas {
                        swapped: !swapped,
                        previous: previous.clone(),
                    },
                    other => other.clone(),
                };
            }
        }
        events.sort();
        let mut t = LinearizabilityTester::<usize, Reg>::new(Reg::default());
        for (_, i, resp) in events {
            let o = &hist[i];
            if resp {
                t.on_return(o.client, o.ret.as_ref().unwrap().1.clone())
                    .unwrap();
            } else {
                t.on_invoke(o.client, o.op.clone()).unwrap();
            }
        }
        let theirs = t.is_consistent();
        let ours = check(&hist).is_ok();
        assert_eq!(ours, theirs, "verdicts differ on {hist:#?}");
        if ours {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(
        yes > 500 && no > 500,
        "both verdicts exercised: {yes} / {no}"
    );
}

// ---------------------------------------------------------------------------------------------
// Clients of the simulated cluster.

struct Waiting {
    node: u64,
    id: ProposalId,
    hist: usize,
    since: u64,
}

struct Client {
    waiting: Option<Waiting>,
    /// The node this client believes leads (index into `Sim::nodes`).
    hint: usize,
    /// The value this client last saw at each key (to make compare-and-sets that can succeed).
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// What a run exercised.
#[derive(Debug, Default)]
struct LinStats {
    /// Operations in the history (invoked and not refused).
    ops: u64,
    /// Invocations, refused ones included.
    invoked: u64,
    completed: u64,
    unknown: u64,
    refused: u64,
    dropped: u64,
    cas_swapped: u64,
    reads_seeing_values: u64,
    /// Gets answered through ReadIndex.
    index_reads: u64,
    /// Faults the cluster went through.
    crashes: u64,
    leaders: u64,
    snapshots_installed: u64,
    steps: u64,
}

/// Steps a client waits for its answer before it gives up (the op is then unknown).
const PATIENCE: u64 = 300;

/// Runs `ops` client operations on a simulated cluster of `n` nodes under faults, then heals
/// and lets the waiting clients finish; returns the history. Gets go through ReadIndex
/// (`Node::read_index`: no log entry), sets and compare-and-sets through the log. With
/// `local_reads`, gets are answered from the contacted node's state machine at once (a
/// deliberately broken read path: stale reads).
fn run_clients(
    seed: u64,
    n: u64,
    durable: bool,
    ops: u64,
    local_reads: bool,
    churn: bool,
) -> (Vec<HistOp>, LinStats) {
    let mut sim = Sim::with_spares(seed, n, if churn { 2 } else { 0 }, durable);
    sim.churn = churn;
    sim.own_traffic = false;
    sim.record = true;
    let mut rng = Rng(seed ^ 0x5EED_11AE_0000_0000);
    let keys: Vec<Vec<u8>> = (0..(ops / 40).clamp(4, 64))
        .map(|k| format!("k{k}").into_bytes())
        .collect();
    let mut clients: Vec<Client> = (0..5)
        .map(|c| Client {
            waiting: None,
            hint: c % n as usize,
            seen: BTreeMap::new(),
        })
        .collect();
    let mut hist: Vec<HistOp> = Vec::new();
    let mut refused: Vec<bool> = Vec::new();
    let mut st = LinStats::default();
    let mut seq = 0u64;
    let mut calm = 0u64;
    let trace = std::env::var_os("EMF_RAFT_LIN_TRACE").is_some();
    loop {
        st.ops = st.invoked - st.refused;
        let faults = st.ops < ops;
        if sim.step > 200 * ops.max(100) {
            sim.fail(format!(
                "no progress: {} of {ops} operations after {} steps: {:#?}",
                st.ops,
                sim.step,
                sim.dump()
            ));
        }
        if !faults {
            calm += 1;
            if clients.iter().all(|c| c.waiting.is_none()) || calm > 5000 {
                break;
            }
        }
        // Invocations, after the previous step's Ready: time 2 * step + 1.
        let t_inv = 2 * sim.step + 1;
        let now = sim.now();
        for (c, cl) in clients.iter_mut().enumerate() {
            if cl.waiting.is_some() || !faults || !rng.chance(80) {
                continue;
            }
            let key = keys[rng.below(keys.len() as u64) as usize].clone();
            seq += 1;
            let value = format!("c{c}.{seq}").into_bytes();
            let op = match rng.below(10) {
                0..=3 => KvOp::Get { key: key.clone() },
                4..=6 => KvOp::Set {
                    key: key.clone(),
                    value,
                },
                _ => KvOp::Cas {
                    key: key.clone(),
                    expected: cl.seen.get(&key).cloned().flatten(),
                    new: value,
                },
            };
            if sim.nodes[cl.hint].is_none() {
                cl.hint = rng.below(n) as usize;
            }
            let Some(node) = sim.nodes[cl.hint].as_mut() else {
                continue;
            };
            st.invoked += 1;
            if local_reads {
                if let KvOp::Get { key } = &op {
                    let v = node.sm.kv.get(key).map(<[u8]>::to_vec);
                    hist.push(h(c, t_inv, Some((t_inv, KvResult::Value(v))), op));
                    refused.push(false);
                    continue;
                }
            }
            hist.push(h(c, t_inv, None, op.clone()));
            refused.push(false);
            let asked = match &op {
                KvOp::Get { key } => {
                    let r = node.read_index(now);
                    if let Ok(Proposed::Accepted(id)) = r {
                        sim.read_keys.insert((cl.hint as u64 + 1, id), key.clone());
                    }
                    r
                }
                _ => node.propose(&op.encode(), now),
            };
            match asked {
                Ok(Proposed::Accepted(id)) => {
                    cl.waiting = Some(Waiting {
                        node: cl.hint as u64 + 1,
                        id,
                        hist: hist.len() - 1,
                        since: sim.step,
                    });
                }
                Ok(Proposed::NotLeader { leader }) => {
                    if trace {
                        eprintln!(
                            "not leader {} step {}: {:?}",
                            cl.hint + 1,
                            sim.step,
                            hist.last()
                        );
                    }
                    *refused.last_mut().unwrap() = true;
                    st.refused += 1;
                    cl.hint = match leader {
                        Some(l) => l as usize - 1,
                        None => rng.below(n) as usize,
                    };
                }
                Err(e) if e.kind() == ErrorKind::Full => {
                    *refused.last_mut().unwrap() = true;
                    st.refused += 1;
                }
                Err(e) => panic!("seed {seed}: propose: {e}"),
            }
        }
        sim.run_step(faults);
        // Responses, in this step's Ready: time 2 * step.
        let t_ret = 2 * sim.step;
        for (node, id, outcome) in std::mem::take(&mut sim.outcomes) {
            let Some(cl) = clients.iter_mut().find(|c| {
                c.waiting
                    .as_ref()
                    .is_some_and(|w| (w.node, w.id) == (node, id))
            }) else {
                continue;
            };
            let w = cl.waiting.take().unwrap();
            match outcome {
                Outcome::Applied(bytes) => {
                    let res = KvResult::decode(&bytes)
                        .unwrap_or_else(|| sim.fail("undecodable KV result".into()));
                    let key = key_of(&hist[w.hist].op).to_vec();
                    match (&hist[w.hist].op, &res) {
                        (KvOp::Get { .. }, KvResult::Value(v)) => {
                            st.reads_seeing_values += u64::from(v.is_some());
                            cl.seen.insert(key, v.clone());
                        }
                        (KvOp::Set { value, .. }, _) => {
                            cl.seen.insert(key, Some(value.clone()));
                        }
                        (KvOp::Cas { new, .. }, KvResult::Cas { swapped, previous }) => {
                            st.cas_swapped += u64::from(*swapped);
                            let now = if *swapped {
                                Some(new.clone())
                            } else {
                                previous.clone()
                            };
                            cl.seen.insert(key, now);
                        }
                        _ => {}
                    }
                    hist[w.hist].ret = Some((t_ret, res));
                }
                Outcome::Read(v) => {
                    st.index_reads += 1;
                    st.reads_seeing_values += u64::from(v.is_some());
                    let key = key_of(&hist[w.hist].op).to_vec();
                    cl.seen.insert(key, v.clone());
                    hist[w.hist].ret = Some((t_ret, KvResult::Value(v)));
                }
                Outcome::Dropped => {
                    if trace {
                        eprintln!(
                            "dropped at node {node} step {}: {:?}",
                            sim.step, hist[w.hist]
                        );
                    }
                    refused[w.hist] = true;
                    st.refused += 1;
                    st.dropped += 1;
                }
                Outcome::Unknown => {}
            }
        }
        for node in std::mem::take(&mut sim.crash_log) {
            for cl in clients.iter_mut() {
                if cl.waiting.as_ref().is_some_and(|w| w.node == node) {
                    cl.waiting = None;
                }
            }
        }
        for cl in clients.iter_mut() {
            if cl
                .waiting
                .as_ref()
                .is_some_and(|w| sim.step - w.since > PATIENCE)
            {
                cl.waiting = None;
                cl.hint = rng.below(n) as usize;
            }
        }
    }
    st.crashes = sim.crashes;
    st.leaders = sim.leaders.len() as u64;
    st.snapshots_installed = sim.snapshots_installed;
    st.steps = sim.step;
    let mut out = Vec::new();
    for (o, r) in hist.into_iter().zip(refused) {
        if r {
            continue;
        }
        if o.ret.is_some() {
            st.completed += 1;
        } else {
            st.unknown += 1;
        }
        out.push(o);
    }
    (out, st)
}

fn lin_ops() -> u64 {
    std::env::var("EMF_RAFT_LIN_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn run_and_check(seed: u64, n: u64, durable: bool) {
    run_and_check_churn(seed, n, durable, false);
}

fn run_and_check_churn(seed: u64, n: u64, durable: bool, churn: bool) {
    let (hist, st) = run_clients(seed, n, durable, lin_ops(), false, churn);
    if std::env::var_os("EMF_RAFT_SUMMARY").is_some() {
        eprintln!("lin n={n} durable={durable} seed={seed} {st:?}");
    }
    assert!(
        st.ops >= lin_ops() && st.completed >= 4 * st.unknown && st.index_reads > 0,
        "seed {seed}: too few operations completed: {st:?}"
    );
    if let Err(e) = check(&hist) {
        panic!("seed {seed} (n={n}, durable={durable}): {e}");
    }
}

#[test]
fn lin_three_nodes_memory() {
    for seed in seeds(5000, 3) {
        run_and_check(seed, 3, false);
    }
}

#[test]
fn lin_three_nodes_durable_with_crashes() {
    for seed in seeds(6000, 3) {
        run_and_check(seed, 3, true);
    }
}

#[test]
fn lin_five_nodes_durable_with_crashes() {
    for seed in seeds(7000, 2) {
        run_and_check(seed, 5, true);
    }
}

#[test]
fn lin_three_nodes_durable_with_membership_churn() {
    // Leadership transfers, learners joining, promotions, removals and replacements while
    // the clients run (their gets through ReadIndex at whichever node leads).
    for seed in seeds(7500, 3) {
        run_and_check_churn(seed, 3, true, true);
    }
}

#[test]
fn lin_catches_stale_local_reads() {
    // Gets answered by the contacted node's replica, off the log: a follower or a deposed
    // leader answers stale values. Some seed must show it.
    let caught = (8000..8010).find(|&seed| {
        let (hist, _) = run_clients(seed, 3, false, 300, true, false);
        check(&hist).is_err()
    });
    assert!(
        caught.is_some(),
        "stale local reads went unnoticed in 10 runs"
    );
}

#[test]
fn lin_regression_batch_applied_then_reported_dropped() {
    // A leader re-elected after its log was cut below a batch it had flushed in an earlier
    // term flushed a new batch at a lower index; `Node` matched committed entries against
    // its flushed batches front to back and reported the new batch dropped although it was
    // applied. This seed showed it with 300 operations (and fails with `Node::flush`'s
    // ordering fix reverted, while the simulation's random draws stay as they are).
    let (hist, _) = run_clients(5243, 3, false, 300, false, false);
    if let Err(e) = check(&hist) {
        panic!("seed 5243: {e}");
    }
}
