//! PBFT in a seeded simulated network: drops, duplicates, delays (hence reordering), silent,
//! equivocating and lying replicas, forged and replayed messages; and a tentative execution
//! rolled back by a view change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::wire::{self, Message, PrePrepare, Vote, W};
use super::*;
use crate::error::ErrorKind;

/// The test application: an append-only log of operations; the result of an operation is its
/// position and a running hash of the log, so any divergence shows in the results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogApp {
    pub ops: Vec<(u64, Vec<u8>)>,
    pub results: Vec<Vec<u8>>,
    hash: u64,
}

impl App for LogApp {
    fn execute(&mut self, client: u64, op: &[u8]) -> Vec<u8> {
        for &b in op.iter().chain(&client.to_le_bytes()) {
            self.hash = (self.hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.ops.push((client, op.to_vec()));
        let mut r = (self.ops.len() as u64).to_le_bytes().to_vec();
        r.extend_from_slice(&self.hash.to_le_bytes());
        self.results.push(r.clone());
        r
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut w = W::default();
        w.u64(self.hash);
        w.u32(self.ops.len() as u32);
        for ((c, op), r) in self.ops.iter().zip(&self.results) {
            w.u64(*c);
            w.bytes(op);
            w.bytes(r);
        }
        w.0
    }

    fn restore(&mut self, snapshot: &[u8]) -> crate::error::Result<()> {
        let mut r = wire::R::new(snapshot);
        let hash = r.u64()?;
        let n = r.u32()?;
        let mut app = LogApp {
            hash,
            ..LogApp::default()
        };
        for _ in 0..n {
            let c = r.u64()?;
            app.ops.push((c, r.bytes(1 << 20, "op")?.to_vec()));
            app.results.push(r.bytes(64, "result")?.to_vec());
        }
        r.end()?;
        *self = app;
        Ok(())
    }
}

/// What a Byzantine replica does to its outgoing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Byz {
    /// Sends and receives nothing.
    Silent,
    /// As primary, sends a conflicting pre-prepare (another batch) to odd-numbered replicas.
    Equivocate,
    /// Replies with wrong results (validly signed).
    WrongResults,
}

const CLIENT0: u64 = 100;

fn seed_of(p: Principal) -> [u8; 32] {
    let mut s = [0u8; 32];
    match p {
        Principal::Replica(i) => s[..4].copy_from_slice(&i.to_le_bytes()),
        Principal::Client(c) => {
            s[31] = 1;
            s[..8].copy_from_slice(&c.to_le_bytes());
        }
    }
    s
}

/// Real Ed25519 keys for `p` in a group of `n` replicas and `clients` clients.
pub(crate) fn ed_keys(p: Principal, n: usize, clients: usize) -> Ed25519Keys {
    let replicas: Vec<[u8; 32]> = (0..n as u32)
        .map(|i| Ed25519Keys::public_key(&seed_of(Principal::Replica(i))))
        .collect();
    let cs: Vec<(u64, [u8; 32])> = (0..clients as u64)
        .map(|i| {
            let c = CLIENT0 + i;
            (c, Ed25519Keys::public_key(&seed_of(Principal::Client(c))))
        })
        .collect();
    Ed25519Keys::new(&seed_of(p), &replicas, &cs).unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pct(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

pub(crate) struct Sim<K: Authenticator> {
    pub replicas: Vec<Replica<LogApp, K>>,
    pub clients: Vec<Client<K>>,
    keys: Box<dyn Fn(Principal) -> K>,
    /// (time, order) -> (from, to, bytes)
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    msgs: BTreeMap<u64, (Principal, Principal, Vec<u8>)>,
    order: u64,
    rng: Rng,
    pub now: u64,
    pub drop_pct: u64,
    pub dup_pct: u64,
    pub delay: (u64, u64),
    pub byz: BTreeMap<u32, Byz>,
    /// Replicas cut off from everybody (no Byzantine behaviour: a partition).
    pub partitioned: BTreeSet<u32>,
    /// Drop state-transfer answers.
    pub drop_states: bool,
    /// Requests each client still has to issue.
    pub to_issue: Vec<u32>,
    issued: Vec<u32>,
    pub completions: Vec<(u64, Completion)>,
    pub errors: std::collections::HashMap<ErrorKind, u64>,
    /// Wrong results each correct client was offered (and refused to complete on).
    pub delivered: u64,
}

impl<K: Authenticator> Sim<K> {
    pub fn new(
        cfg: Config,
        clients: usize,
        seed: u64,
        keys: impl Fn(Principal) -> K + 'static,
    ) -> Self {
        let n = cfg.n;
        let replicas = (0..n as u32)
            .map(|i| {
                Replica::new(
                    cfg.clone(),
                    i,
                    keys(Principal::Replica(i)),
                    LogApp::default(),
                )
                .unwrap()
            })
            .collect();
        let mut ccfg = ClientConfig::new(n);
        ccfg.accept_tentative = cfg.tentative;
        ccfg.retransmit_us = cfg.view_change_timeout_us / 2;
        let clients = (0..clients as u64)
            .map(|i| {
                let c = CLIENT0 + i;
                Client::new(ccfg.clone(), c, keys(Principal::Client(c)), 0).unwrap()
            })
            .collect();
        Sim {
            replicas,
            clients,
            keys: Box::new(keys),
            queue: BinaryHeap::new(),
            msgs: BTreeMap::new(),
            order: 0,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            now: 0,
            drop_pct: 0,
            dup_pct: 0,
            delay: (100, 1_000),
            byz: BTreeMap::new(),
            partitioned: BTreeSet::new(),
            drop_states: false,
            to_issue: Vec::new(),
            issued: Vec::new(),
            completions: Vec::new(),
            errors: Default::default(),
            delivered: 0,
        }
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    fn cut(&self, p: Principal) -> bool {
        matches!(p, Principal::Replica(i) if self.partitioned.contains(&i) || self.byz.get(&i) == Some(&Byz::Silent))
    }

    fn push(&mut self, from: Principal, to: Principal, bytes: Vec<u8>) {
        if self.cut(from) || self.cut(to) || self.rng.pct(self.drop_pct) {
            return;
        }
        if self.drop_states
            && matches!(
                Message::decode(&bytes, &self.replicas[0].config_limits()),
                Ok(Message::State(_))
            )
        {
            return;
        }
        let copies = if self.rng.pct(self.dup_pct) { 2 } else { 1 };
        for _ in 0..copies {
            let t = self.now + self.rng.range(self.delay.0, self.delay.1);
            self.order += 1;
            self.queue.push(Reverse((t, self.order)));
            self.msgs.insert(self.order, (from, to, bytes.clone()));
        }
    }

    /// Applies a Byzantine replica's behaviour to one outgoing message.
    fn corrupt(&self, i: u32, to: Principal, bytes: Vec<u8>) -> Vec<u8> {
        let lim = self.replicas[0].config_limits();
        match (self.byz.get(&i), Message::decode(&bytes, &lim)) {
            (Some(Byz::Equivocate), Ok(Message::PrePrepare(mut p))) => {
                if matches!(to, Principal::Replica(j) if j % 2 == 1) {
                    if p.batch.len() > 1 {
                        p.batch.reverse();
                    } else {
                        p.batch.clear();
                    }
                    p.digest = wire::batch_digest(&p.batch);
                    p.sign(&(self.keys)(Principal::Replica(i)));
                    return Message::PrePrepare(p).encode();
                }
                bytes
            }
            (Some(Byz::WrongResults), Ok(Message::Reply(mut r))) => {
                r.result.push(0xEE);
                r.sign(&(self.keys)(Principal::Replica(i)));
                Message::Reply(r).encode()
            }
            _ => bytes,
        }
    }

    fn route(&mut self, from: Principal, out: Vec<Outgoing>) {
        for o in out {
            let dests: Vec<Principal> = match o.to {
                Dest::Replica(j) => vec![Principal::Replica(j)],
                Dest::Client(c) => vec![Principal::Client(c)],
                Dest::AllReplicas => (0..self.n() as u32)
                    .map(Principal::Replica)
                    .filter(|&p| p != from)
                    .collect(),
            };
            for to in dests {
                let bytes = match from {
                    Principal::Replica(i) if self.byz.contains_key(&i) => {
                        self.corrupt(i, to, o.payload.clone())
                    }
                    _ => o.payload.clone(),
                };
                self.push(from, to, bytes);
            }
        }
    }

    /// Delivers `bytes` to `to` now (tests inject forged and replayed messages with it).
    pub fn deliver(&mut self, from: Principal, to: Principal, bytes: &[u8]) {
        self.delivered += 1;
        let mut out = Vec::new();
        let now = self.now;
        match to {
            Principal::Replica(i) => {
                if let Err(e) = self.replicas[i as usize].handle(from, bytes, now, &mut out) {
                    *self.errors.entry(e.kind()).or_default() += 1;
                }
                self.route(to, out);
            }
            Principal::Client(c) => {
                let k = (c - CLIENT0) as usize;
                match self.clients[k].handle(from, bytes, now) {
                    Ok(Some(done)) => self.completions.push((c, done)),
                    Ok(None) => {}
                    Err(e) => *self.errors.entry(e.kind()).or_default() += 1,
                }
            }
        }
    }

    fn issue(&mut self) {
        self.issued.resize(self.clients.len(), 0);
        for k in 0..self.clients.len() {
            if self.to_issue.get(k).copied().unwrap_or(0) > 0 && !self.clients[k].is_busy() {
                self.to_issue[k] -= 1;
                self.issued[k] += 1;
                let c = self.clients[k].id();
                let op = format!("c{c}-op{}", self.issued[k]).into_bytes();
                let mut out = Vec::new();
                self.clients[k].request(&op, self.now, &mut out).unwrap();
                self.route(Principal::Client(c), out);
            }
        }
    }

    /// One step: every message due by the next millisecond, then every timer.
    pub fn step(&mut self) {
        let until = self.now + 1_000;
        while let Some(&Reverse((t, k))) = self.queue.peek() {
            if t > until {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(t);
            let (from, to, bytes) = self.msgs.remove(&k).unwrap();
            self.deliver(from, to, &bytes);
        }
        self.now = until;
        for i in 0..self.n() {
            let mut out = Vec::new();
            self.replicas[i].tick(self.now, &mut out);
            self.route(Principal::Replica(i as u32), out);
        }
        for k in 0..self.clients.len() {
            let mut out = Vec::new();
            self.clients[k].tick(self.now, &mut out);
            let c = self.clients[k].id();
            self.route(Principal::Client(c), out);
        }
        self.issue();
    }

    /// Runs until every client issued and completed its requests (true) or `limit_us`.
    pub fn run(&mut self, limit_us: u64) -> bool {
        self.issue();
        while self.now < limit_us {
            self.step();
            if self.now % 20_000 == 0 {
                self.check_agreement();
            }
            if self.to_issue.iter().all(|&k| k == 0) && self.clients.iter().all(|c| !c.is_busy()) {
                return true;
            }
        }
        false
    }

    /// Runs for `us` more (e.g. to let commits and checkpoints settle).
    pub fn run_for(&mut self, us: u64) {
        let end = self.now + us;
        while self.now < end {
            self.step();
        }
    }

    fn correct(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|&i| !self.byz.contains_key(&(i as u32)))
            .collect()
    }

    /// The committed operations of a replica (its log without the tentative tail).
    fn committed(&self, i: usize) -> &[(u64, Vec<u8>)] {
        let r = &self.replicas[i];
        let ops = &r.app().ops;
        &ops[..ops.len() - r.tentative_requests()]
    }

    /// AGREEMENT: the committed histories of correct replicas are prefixes of one another,
    /// and no operation executes twice.
    pub fn check_agreement(&self) {
        let correct = self.correct();
        let longest = correct
            .iter()
            .map(|&i| self.committed(i))
            .max_by_key(|h| h.len())
            .unwrap();
        for &i in &correct {
            let h = self.committed(i);
            assert_eq!(h, &longest[..h.len()], "replica {i} diverges");
        }
        let distinct: BTreeSet<_> = longest.iter().collect();
        assert_eq!(distinct.len(), longest.len(), "an operation executed twice");
    }

    /// Every completion's result is the one the correct replicas computed, and every
    /// committed operation came from a client request (VALIDITY).
    pub fn check_completions(&self) {
        self.check_agreement();
        let correct = self.correct();
        let best = correct
            .iter()
            .copied()
            .max_by_key(|&i| self.committed(i).len())
            .unwrap();
        let app = self.replicas[best].app();
        let committed = self.committed(best);
        for (c, op) in committed {
            let text = String::from_utf8(op.clone()).unwrap();
            assert!(
                text.starts_with(&format!("c{c}-op")),
                "not a client's: {text}"
            );
        }
        let mut seen = BTreeSet::new();
        for (c, done) in &self.completions {
            assert!(seen.insert((*c, done.timestamp)), "completed twice");
            let pos = done.result[..8].try_into().map(u64::from_le_bytes).unwrap() as usize;
            assert!(
                pos >= 1 && pos <= committed.len(),
                "completed but not committed"
            );
            assert_eq!(
                committed[pos - 1].0,
                *c,
                "result of another client's operation"
            );
            assert_eq!(
                app.results[pos - 1],
                done.result,
                "a wrong result was accepted"
            );
        }
    }
}

impl<A: App, K: Authenticator> Replica<A, K> {
    fn config_limits(&self) -> wire::Limits {
        self.config().limits()
    }
}

fn ed_sim(cfg: Config, clients: usize, seed: u64) -> Sim<Ed25519Keys> {
    let n = cfg.n;
    Sim::new(cfg, clients, seed, move |p| ed_keys(p, n, clients))
}

fn sim_sim(cfg: Config, clients: usize, seed: u64) -> Sim<SimKeys> {
    Sim::new(cfg, clients, seed, |p| SimKeys::new(p, 7))
}

fn small_cfg() -> Config {
    let mut c = Config::new(4);
    c.checkpoint_interval = 4;
    c.log_window = 8;
    c.view_change_timeout_us = 20_000;
    c
}

#[test]
fn normal_case_completes_on_the_fast_path() {
    let mut sim = ed_sim(small_cfg(), 1, 1);
    // Fixed delays: each batch commits before the next prepares, as tentative execution
    // requires (with random delays some requests complete on the slow path).
    sim.delay = (500, 500);
    sim.to_issue = vec![12];
    assert!(sim.run(2_000_000), "did not complete");
    assert_eq!(sim.completions.len(), 12);
    assert!(sim.completions.iter().all(|(_, d)| d.path == Path::Fast));
    sim.run_for(20_000);
    sim.check_completions();
    for r in &sim.replicas {
        assert_eq!(r.last_executed(), 12);
        assert_eq!(r.view(), 0);
        assert_eq!(r.stats().view_changes, 0);
    }
    assert!(sim.errors.is_empty(), "{:?}", sim.errors);
}

#[test]
fn slow_path_when_tentative_execution_is_off() {
    let mut cfg = small_cfg();
    cfg.tentative = false;
    let mut sim = ed_sim(cfg, 1, 2);
    sim.to_issue = vec![5];
    assert!(sim.run(2_000_000));
    assert!(sim.completions.iter().all(|(_, d)| d.path == Path::Slow));
    sim.check_completions();
}

#[test]
fn the_primary_batches_concurrent_requests() {
    let mut cfg = small_cfg();
    cfg.batch_window_us = 2_000;
    cfg.batch_max = 4;
    let mut sim = sim_sim(cfg, 8, 3);
    sim.to_issue = vec![5; 8];
    assert!(sim.run(5_000_000));
    sim.run_for(20_000);
    sim.check_completions();
    let batches = sim.replicas[0].stats().batches;
    assert!(batches < 40, "40 requests in {batches} batches");
    assert_eq!(sim.replicas[0].app().ops.len(), 40);
}

#[test]
fn a_silent_backup_does_not_stop_the_fast_path() {
    let mut sim = ed_sim(small_cfg(), 1, 4);
    sim.delay = (500, 500);
    sim.byz.insert(3, Byz::Silent);
    sim.to_issue = vec![10];
    assert!(sim.run(2_000_000));
    assert!(sim.completions.iter().all(|(_, d)| d.path == Path::Fast));
    sim.check_completions();
}

#[test]
fn a_silent_primary_is_replaced() {
    let mut sim = ed_sim(small_cfg(), 1, 5);
    sim.byz.insert(0, Byz::Silent);
    sim.to_issue = vec![6];
    assert!(sim.run(5_000_000), "no liveness after the view change");
    sim.run_for(20_000);
    sim.check_completions();
    for i in 1..4 {
        assert_eq!(sim.replicas[i].view(), 1);
        assert!(!sim.replicas[i].in_view_change());
    }
}

#[test]
fn an_equivocating_primary_is_detected_and_replaced() {
    let mut cfg = small_cfg();
    cfg.batch_window_us = 1_000;
    let mut sim = ed_sim(cfg, 2, 6);
    sim.byz.insert(0, Byz::Equivocate);
    sim.to_issue = vec![6, 6];
    assert!(sim.run(10_000_000), "no liveness after the view change");
    sim.run_for(50_000);
    sim.check_completions();
    assert!(sim.replicas[1].view() >= 1);
    let forged: u64 = sim.replicas.iter().map(|r| r.stats().forged).sum();
    let changes: u64 = sim.replicas.iter().map(|r| r.stats().view_changes).sum();
    assert!(changes >= 3, "{changes} view changes");
    let _ = forged; // conflicting pre-prepares are only seen by replicas that got both
}

#[test]
fn wrong_results_are_never_accepted() {
    for seed in 0..4 {
        let mut sim = ed_sim(small_cfg(), 1, 10 + seed);
        sim.byz.insert(seed as u32, Byz::WrongResults);
        sim.to_issue = vec![8];
        assert!(sim.run(5_000_000));
        sim.check_completions();
        assert_eq!(sim.completions.len(), 8);
    }
}

#[test]
fn forged_replayed_garbage_and_oversized_messages_are_refused() {
    let mut sim = ed_sim(small_cfg(), 1, 7);
    sim.to_issue = vec![1];
    assert!(sim.run(1_000_000));
    sim.run_for(10_000);
    let keys1 = ed_keys(Principal::Replica(1), 4, 1);
    let d = [1u8; 32];
    let mut v = Vote {
        view: 0,
        seq: 2,
        digest: d,
        replica: 1,
        sig: [0; 64],
    };
    v.sign(&keys1, false);
    let good = v.encode(false);
    // Wrong sender: replica 3 passing off replica 1's vote as its own channel.
    sim.deliver(Principal::Replica(3), Principal::Replica(2), &good);
    assert_eq!(sim.replicas[2].stats().forged, 1);
    // A vote claiming to be replica 3's but signed by 1.
    let mut lie = v.clone();
    lie.replica = 3;
    sim.deliver(
        Principal::Replica(3),
        Principal::Replica(2),
        &lie.encode(false),
    );
    assert_eq!(sim.replicas[2].stats().forged, 2);
    // A flipped signature bit.
    let mut bad = good.clone();
    let len = bad.len();
    bad[len - 1] ^= 1;
    sim.deliver(Principal::Replica(1), Principal::Replica(2), &bad);
    assert_eq!(sim.replicas[2].stats().forged, 3);
    // A prepare "from the primary", validly signed by it.
    let mut pv = Vote {
        replica: 0,
        ..v.clone()
    };
    pv.sign(&ed_keys(Principal::Replica(0), 4, 1), false);
    sim.deliver(
        Principal::Replica(0),
        Principal::Replica(2),
        &pv.encode(false),
    );
    assert_eq!(sim.replicas[2].stats().forged, 4);
    // A request signed by a client the replicas do not know.
    let stranger = ed_keys(Principal::Client(999), 4, 1);
    let mut r = wire::Request {
        client: 999,
        timestamp: 1,
        op: b"x".to_vec(),
        sig: [0; 64],
    };
    r.sign(&stranger);
    sim.deliver(Principal::Client(999), Principal::Replica(0), &r.encode());
    assert_eq!(sim.replicas[0].stats().forged, 1);
    // The valid vote, delivered twice: counted once, the second is stale.
    let stale = sim.replicas[2].stats().stale;
    sim.deliver(Principal::Replica(1), Principal::Replica(2), &good);
    sim.deliver(Principal::Replica(1), Principal::Replica(2), &good);
    assert_eq!(sim.replicas[2].stats().stale, stale + 1);
    // Replaying the executed request and every message of the run changes nothing.
    let before: Vec<LogApp> = sim.replicas.iter().map(|r| r.app().clone()).collect();
    let keys_c = ed_keys(Principal::Client(CLIENT0), 4, 1);
    let mut old = wire::Request {
        client: CLIENT0,
        timestamp: 1,
        op: format!("c{CLIENT0}-op1").into_bytes(),
        sig: [0; 64],
    };
    old.sign(&keys_c);
    for i in 0..4 {
        sim.deliver(
            Principal::Client(CLIENT0),
            Principal::Replica(i),
            &old.encode(),
        );
    }
    sim.run_for(20_000);
    let after: Vec<LogApp> = sim.replicas.iter().map(|r| r.app().clone()).collect();
    assert_eq!(before, after, "a replayed request executed again");
    // Garbage and oversized.
    sim.deliver(Principal::Replica(1), Principal::Replica(2), b"garbage");
    assert_eq!(sim.replicas[2].stats().garbage, 1);
    let mut huge = wire::Request {
        client: CLIENT0,
        timestamp: 9,
        op: vec![0; (1 << 20) + 1],
        sig: [0; 64],
    };
    huge.sign(&keys_c);
    sim.deliver(
        Principal::Client(CLIENT0),
        Principal::Replica(2),
        &huge.encode(),
    );
    assert_eq!(sim.replicas[2].stats().oversized, 1);
    assert!(sim.errors[&ErrorKind::InvalidArgument] >= 5);
    sim.check_completions();
}

#[test]
fn random_bytes_never_panic_a_replica_or_client() {
    let mut sim = sim_sim(small_cfg(), 1, 8);
    sim.to_issue = vec![3];
    assert!(sim.run(1_000_000));
    let mut rng = Rng(77);
    let samples: Vec<Vec<u8>> = sim.msgs.values().map(|m| m.2.clone()).collect();
    for k in 0..3_000 {
        let mut b = if samples.is_empty() || k % 3 == 0 {
            (0..rng.range(0, 300))
                .map(|_| rng.next() as u8)
                .collect::<Vec<_>>()
        } else {
            samples[k % samples.len()].clone()
        };
        if !b.is_empty() {
            let p = rng.next() as usize % b.len();
            b[p] ^= 1 << (rng.next() % 8);
        }
        let to = (rng.next() % 4) as u32;
        let from = (rng.next() % 4) as u32;
        sim.deliver(Principal::Replica(from), Principal::Replica(to), &b);
        sim.deliver(Principal::Replica(from), Principal::Client(CLIENT0), &b);
    }
    sim.to_issue = vec![3];
    assert!(sim.run(5_000_000), "no progress after the garbage");
    sim.check_completions();
}

#[test]
fn checkpoints_advance_and_the_log_is_collected() {
    let mut sim = sim_sim(small_cfg(), 2, 9);
    sim.to_issue = vec![20, 20];
    assert!(sim.run(10_000_000));
    sim.run_for(20_000);
    sim.check_completions();
    for r in &sim.replicas {
        assert!(r.low_watermark() >= 32, "h = {}", r.low_watermark());
        assert!(r.log_len() <= 8, "log of {}", r.log_len());
        assert!(r.stats().stable_checkpoints >= 8);
    }
}

#[test]
fn a_lagging_replica_catches_up_by_state_transfer() {
    for seed in 10..16 {
        let mut sim = sim_sim(small_cfg(), 1, seed);
        sim.partitioned.insert(3);
        sim.to_issue = vec![20];
        assert!(sim.run(5_000_000));
        assert_eq!(sim.replicas[3].last_executed(), 0);
        sim.partitioned.clear();
        // Lossy: fetches and state answers are lost too, and the fetch is repeated.
        sim.drop_pct = 5 * (seed - 10);
        sim.to_issue = vec![10];
        assert!(sim.run(30_000_000), "seed {seed}");
        sim.drop_pct = 0;
        sim.run_for(200_000);
        sim.check_completions();
        let r3 = &sim.replicas[3];
        assert!(r3.stats().state_transfers >= 1, "seed {seed}");
        assert!(
            r3.last_executed() >= 24,
            "seed {seed}: replica 3 at {}",
            r3.last_executed()
        );
        assert_eq!(
            r3.app().ops[..],
            sim.replicas[0].app().ops[..r3.app().ops.len()]
        );
    }
}

#[test]
fn a_lost_state_transfer_is_asked_again() {
    let mut sim = sim_sim(small_cfg(), 1, 11);
    sim.partitioned.insert(3);
    sim.to_issue = vec![8];
    assert!(sim.run(5_000_000));
    sim.partitioned.clear();
    sim.drop_states = true;
    sim.to_issue = vec![4];
    assert!(sim.run(5_000_000));
    sim.run_for(10_000);
    assert_eq!(
        sim.replicas[3].last_executed(),
        0,
        "its state answers were lost"
    );
    // No more requests, hence no new checkpoint: only asking again helps.
    sim.drop_states = false;
    sim.run_for(100_000);
    assert!(sim.replicas[3].last_executed() >= 12);
    assert_eq!(sim.replicas[3].app(), sim.replicas[0].app());
}

/// A replica prepares and tentatively executes a batch; the view change does not keep it
/// (the new view's certificates do not include it); the replica rolls back and executes
/// what the new view orders instead.
#[test]
fn a_tentative_execution_the_view_change_drops_is_rolled_back() {
    let cfg = small_cfg();
    let keys = |i: u32| SimKeys::new(Principal::Replica(i), 7);
    let ck = SimKeys::new(Principal::Client(CLIENT0), 7);
    let mut r2 = Replica::new(cfg.clone(), 2, keys(2), LogApp::default()).unwrap();
    let lim = cfg.limits();
    let mut out = Vec::new();
    let req = |ts: u64, op: &[u8]| {
        let mut r = wire::Request {
            client: CLIENT0,
            timestamp: ts,
            op: op.to_vec(),
            sig: [0; 64],
        };
        r.sign(&ck);
        r
    };
    let a = req(1, b"A");
    let mut pp = PrePrepare {
        view: 0,
        seq: 1,
        digest: wire::batch_digest(std::slice::from_ref(&a)),
        batch: vec![a],
        replica: 0,
        sig: [0; 64],
    };
    pp.sign(&keys(0));
    r2.handle(
        Principal::Replica(0),
        &Message::PrePrepare(pp.clone()).encode(),
        0,
        &mut out,
    )
    .unwrap();
    let prepare = |i: u32| {
        let mut v = Vote {
            view: 0,
            seq: 1,
            digest: pp.digest,
            replica: i,
            sig: [0; 64],
        };
        v.sign(&keys(i), false);
        v.encode(false)
    };
    r2.handle(Principal::Replica(1), &prepare(1), 0, &mut out)
        .unwrap();
    assert_eq!(
        r2.tentative_seq(),
        Some(1),
        "prepared: executed tentatively"
    );
    assert_eq!(r2.app().ops.len(), 1);
    let tentative_replies = out
        .iter()
        .filter_map(|o| match Message::decode(&o.payload, &lim) {
            Ok(Message::Reply(r)) => Some(r.tentative),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(tentative_replies, vec![true]);
    // The view change: replicas 1 and 3 did not prepare A (no certificates).
    out.clear();
    r2.suspect_primary(10, &mut out);
    assert_eq!(r2.app().ops.len(), 0, "rolled back at the view change");
    assert_eq!(r2.stats().rollbacks, 1);
    let vc = |i: u32| {
        let mut vc = wire::ViewChange {
            new_view: 1,
            stable_seq: 0,
            stable_digest: [0; 32],
            proof: vec![],
            prepared: vec![],
            replica: i,
            sig: [0; 64],
        };
        vc.sign(&keys(i));
        vc
    };
    // The new primary (1) orders B at seq 1 in view 1 (A is retransmitted later).
    let b = req(2, b"B");
    let mut nv = wire::NewView {
        view: 1,
        view_changes: vec![vc(1), vc(3), vc(0)],
        pre_prepares: vec![],
        replica: 1,
        sig: [0; 64],
    };
    nv.sign(&keys(1));
    r2.handle(
        Principal::Replica(1),
        &Message::NewView(nv).encode(),
        20,
        &mut out,
    )
    .unwrap();
    assert_eq!(r2.view(), 1);
    assert!(!r2.in_view_change());
    let mut pp_b = PrePrepare {
        view: 1,
        seq: 1,
        digest: wire::batch_digest(std::slice::from_ref(&b)),
        batch: vec![b],
        replica: 1,
        sig: [0; 64],
    };
    pp_b.sign(&keys(1));
    r2.handle(
        Principal::Replica(1),
        &Message::PrePrepare(pp_b.clone()).encode(),
        30,
        &mut out,
    )
    .unwrap();
    for i in [0u32, 3] {
        let mut v = Vote {
            view: 1,
            seq: 1,
            digest: pp_b.digest,
            replica: i,
            sig: [0; 64],
        };
        v.sign(&keys(i), false);
        r2.handle(Principal::Replica(i), &v.encode(false), 40, &mut out)
            .unwrap();
        v.sign(&keys(i), true);
        r2.handle(Principal::Replica(i), &v.encode(true), 40, &mut out)
            .unwrap();
    }
    assert_eq!(r2.last_executed(), 1, "B committed at seq 1");
    assert_eq!(r2.tentative_seq(), None);
    assert_eq!(r2.app().ops, vec![(CLIENT0, b"B".to_vec())]);
}

/// Many seeds: random loss, duplication, reordering and one Byzantine replica of each kind;
/// safety always, liveness within the limit. `PBFT_SIM_SEEDS` raises the count.
#[test]
fn many_seeds_with_faults() {
    let seeds: u64 = std::env::var("PBFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for seed in 0..seeds {
        let mut cfg = small_cfg();
        cfg.batch_window_us = (seed % 3) * 500;
        cfg.batch_max = 1 + (seed % 4) as usize;
        cfg.tentative = seed % 5 != 4;
        let mut sim = sim_sim(cfg, 3, 1_000 + seed);
        sim.drop_pct = seed % 6;
        sim.dup_pct = 5;
        sim.delay = (100, 3_000);
        let byz = [
            None,
            Some(Byz::Silent),
            Some(Byz::Equivocate),
            Some(Byz::WrongResults),
        ];
        if let Some(b) = byz[(seed % 4) as usize] {
            sim.byz.insert((seed / 4 % 4) as u32, b);
        }
        sim.to_issue = vec![6, 6, 6];
        let done = sim.run(60_000_000);
        // Let fast-path completions commit before checking them.
        sim.run_for(300_000);
        if !done {
            for r in &sim.replicas {
                eprintln!(
                    "{} dl{:?} {:?}\n   {}",
                    r.id(),
                    r.next_deadline_us(),
                    r.stats(),
                    r.fingerprint()
                );
            }
        }
        sim.check_completions();
        assert!(
            done,
            "seed {seed}: {} of 18 completed by {} us; views {:?}",
            sim.completions.len(),
            sim.now,
            sim.replicas
                .iter()
                .map(|r| (r.view(), r.in_view_change()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn batches_are_cut_to_fit_a_message() {
    let mut cfg = small_cfg();
    cfg.max_message_bytes = 4_096;
    cfg.max_op_bytes = 1_000;
    cfg.batch_max = 16;
    cfg.batch_window_us = 1_000;
    let keys = |p| SimKeys::new(p, 7);
    let mut primary = Replica::new(
        cfg.clone(),
        0,
        keys(Principal::Replica(0)),
        LogApp::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    for c in 0..6u64 {
        let mut r = wire::Request {
            client: CLIENT0 + c,
            timestamp: 1,
            op: vec![c as u8; 900],
            sig: [0; 64],
        };
        r.sign(&keys(Principal::Client(CLIENT0 + c)));
        primary
            .handle(Principal::Client(CLIENT0 + c), &r.encode(), 0, &mut out)
            .unwrap();
    }
    assert!(out.is_empty(), "waiting for the batch window");
    primary.tick(1_000, &mut out);
    let lim = cfg.limits();
    let sizes: Vec<usize> = out
        .iter()
        .filter_map(|o| match Message::decode(&o.payload, &lim) {
            Ok(Message::PrePrepare(p)) => Some(p.batch.len()),
            _ => None,
        })
        .collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 6);
    assert!(out.iter().all(|o| o.payload.len() <= cfg.max_message_bytes));
}

/// A new primary cannot drop a prepared request: a new view must follow from the view
/// changes it carries; and a view change cannot carry a certificate without 2f prepares.
#[test]
fn forged_view_changes_and_new_views_are_refused() {
    let cfg = small_cfg();
    let keys = |i: u32| SimKeys::new(Principal::Replica(i), 7);
    let ck = SimKeys::new(Principal::Client(CLIENT0), 7);
    let mut r2 = Replica::new(cfg.clone(), 2, keys(2), LogApp::default()).unwrap();
    let mut out = Vec::new();
    let mut a = wire::Request {
        client: CLIENT0,
        timestamp: 1,
        op: b"A".to_vec(),
        sig: [0; 64],
    };
    a.sign(&ck);
    let mut pp = PrePrepare {
        view: 0,
        seq: 1,
        digest: wire::batch_digest(std::slice::from_ref(&a)),
        batch: vec![a],
        replica: 0,
        sig: [0; 64],
    };
    pp.sign(&keys(0));
    let prepare = |i: u32| {
        let mut v = Vote {
            view: 0,
            seq: 1,
            digest: pp.digest,
            replica: i,
            sig: [0; 64],
        };
        v.sign(&keys(i), false);
        v
    };
    let vc = |i: u32, prepared: Vec<wire::PreparedCert>| {
        let mut vc = wire::ViewChange {
            new_view: 1,
            stable_seq: 0,
            stable_digest: [0; 32],
            proof: vec![],
            prepared,
            replica: i,
            sig: [0; 64],
        };
        vc.sign(&keys(i));
        vc
    };
    let cert = wire::PreparedCert {
        pre_prepare: pp.clone(),
        prepares: vec![prepare(2), prepare(3)],
    };
    // A view change whose certificate has one prepare only.
    let thin = vc(
        3,
        vec![wire::PreparedCert {
            pre_prepare: pp.clone(),
            prepares: vec![prepare(3)],
        }],
    );
    let e = r2
        .handle(Principal::Replica(3), &thin.encode(), 0, &mut out)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // A new view carrying replica 3's certificate for A but re-issuing a null batch at 1.
    let null = {
        let mut p = PrePrepare {
            view: 1,
            seq: 1,
            digest: wire::batch_digest(&[]),
            batch: vec![],
            replica: 1,
            sig: [0; 64],
        };
        p.sign(&keys(1));
        p
    };
    let new_view = |pre_prepares: Vec<PrePrepare>| {
        let mut nv = wire::NewView {
            view: 1,
            view_changes: vec![vc(0, vec![]), vc(1, vec![]), vc(3, vec![cert.clone()])],
            pre_prepares,
            replica: 1,
            sig: [0; 64],
        };
        nv.sign(&keys(1));
        Message::NewView(nv).encode()
    };
    let e = r2
        .handle(Principal::Replica(1), &new_view(vec![null]), 0, &mut out)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(r2.view(), 0, "the forged new view was not installed");
    assert_eq!(r2.stats().forged, 2);
    // The honest new view re-issues A at 1.
    let mut again = PrePrepare {
        view: 1,
        replica: 1,
        ..pp.clone()
    };
    again.sign(&keys(1));
    r2.handle(Principal::Replica(1), &new_view(vec![again]), 0, &mut out)
        .unwrap();
    assert_eq!(r2.view(), 1);
    assert!(!r2.in_view_change());
    // ... from the primary of view 1 only.
    let e = r2
        .handle(Principal::Replica(0), &new_view(vec![]), 0, &mut out)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn the_client_refuses_busy_oversized_forged_and_foreign_replies() {
    let n = 4;
    let keys = |p| SimKeys::new(p, 7);
    let mut cfg = ClientConfig::new(n);
    cfg.max_op_bytes = 16;
    let mut c = Client::new(cfg, CLIENT0, keys(Principal::Client(CLIENT0)), 0).unwrap();
    let mut out = Vec::new();
    let e = c.request(&[0; 17], 0, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    let ts = c.request(b"op", 0, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, Dest::Replica(0));
    let e = c.request(b"op2", 0, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let reply = |i: u32, result: &[u8], tentative: bool, ts: u64| {
        let mut r = wire::Reply {
            view: 0,
            client: CLIENT0,
            timestamp: ts,
            replica: i,
            tentative,
            result: result.to_vec(),
            sig: [0; 64],
        };
        r.sign(&keys(Principal::Replica(i)));
        Message::Reply(r).encode()
    };
    // Replica 1's reply arriving "from" replica 2, and a flipped signature.
    let r1 = reply(1, b"ok", false, ts);
    assert!(c.handle(Principal::Replica(2), &r1, 0).is_err());
    let mut bad = r1.clone();
    let k = bad.len() - 1;
    bad[k] ^= 1;
    assert!(c.handle(Principal::Replica(1), &bad, 0).is_err());
    assert_eq!(c.stats().forged, 2);
    // A reply to another timestamp is stale; one committed reply is not enough (f + 1).
    assert_eq!(
        c.handle(Principal::Replica(1), &reply(1, b"ok", false, ts + 1), 0)
            .unwrap(),
        None
    );
    assert_eq!(c.stats().stale, 1);
    assert_eq!(c.handle(Principal::Replica(1), &r1, 0).unwrap(), None);
    // The same replica twice does not count twice.
    assert_eq!(c.handle(Principal::Replica(1), &r1, 0).unwrap(), None);
    // Two tentative replies (2f + 1 = 3 needed) and a different committed result: not yet.
    assert_eq!(
        c.handle(Principal::Replica(2), &reply(2, b"ok", true, ts), 0)
            .unwrap(),
        None
    );
    assert_eq!(
        c.handle(Principal::Replica(3), &reply(3, b"ok", true, ts), 0)
            .unwrap(),
        None
    );
    assert_eq!(
        c.handle(Principal::Replica(0), &reply(0, b"lie", false, ts), 0)
            .unwrap(),
        None
    );
    // The retransmission goes to every replica.
    out.clear();
    c.tick(c.next_deadline_us().unwrap(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, Dest::AllReplicas);
    // A second matching committed reply completes, on the slow path.
    let done = c
        .handle(Principal::Replica(2), &reply(2, b"ok", false, ts), 0)
        .unwrap()
        .unwrap();
    assert_eq!(done.result, b"ok");
    assert_eq!(done.path, Path::Slow);
    assert!(!c.is_busy());
}

/// A Byzantine replica spamming checkpoints and view changes for ever later sequence numbers
/// and views cannot grow a correct replica's memory beyond a bound per replica.
#[test]
fn spam_from_a_byzantine_replica_is_bounded() {
    let cfg = small_cfg();
    let keys = |i: u32| SimKeys::new(Principal::Replica(i), 7);
    let mut r0 = Replica::new(cfg.clone(), 0, keys(0), LogApp::default()).unwrap();
    let mut out = Vec::new();
    for k in 1..500u64 {
        let mut c = wire::Checkpoint {
            seq: k * cfg.checkpoint_interval,
            digest: [k as u8; 32],
            replica: 3,
            sig: [0; 64],
        };
        c.sign(&keys(3));
        r0.handle(Principal::Replica(3), &c.encode(), 0, &mut out)
            .unwrap();
        let mut vc = wire::ViewChange {
            new_view: k + 10,
            stable_seq: 0,
            stable_digest: [0; 32],
            proof: vec![],
            prepared: vec![],
            replica: 3,
            sig: [0; 64],
        };
        vc.sign(&keys(3));
        r0.handle(Principal::Replica(3), &vc.encode(), 0, &mut out)
            .unwrap();
    }
    let (checkpoints, view_changes) = r0.held_votes();
    let per_replica = (cfg.log_window / cfg.checkpoint_interval) as usize + 1;
    assert!(checkpoints <= per_replica, "{checkpoints} checkpoints held");
    assert_eq!(view_changes, 1);
    // One replica alone does not move a correct one to another view.
    assert_eq!(r0.view(), 0);
    assert!(!r0.in_view_change());
}

/// S1 (review): a replica in a view change must not execute tentatively, and a new primary
/// must roll back. Replica 2 prepares batch A at seq 5 in view 0, leaves for view 2 (it is
/// its primary), learns that the checkpoint at 4 is stable, fetches it, and then installs
/// view 2 whose new view re-issues B at seq 5 (prepared in view 1 elsewhere). It must end
/// with B executed at 5, not A's tentative results taken as B's commit.
#[test]
fn no_tentative_execution_during_a_view_change_and_the_new_primary_rolls_back() {
    let cfg = small_cfg(); // K = 4, L = 8
    let keys = |i: u32| SimKeys::new(Principal::Replica(i), 7);
    let ck = SimKeys::new(Principal::Client(CLIENT0), 7);
    let mut r2 = Replica::new(cfg.clone(), 2, keys(2), LogApp::default()).unwrap();
    let lim = cfg.limits();
    let mut out = Vec::new();
    let req = |ts: u64, op: &[u8]| {
        let mut r = wire::Request {
            client: CLIENT0,
            timestamp: ts,
            op: op.to_vec(),
            sig: [0; 64],
        };
        r.sign(&ck);
        r
    };
    let pre_prepare = |view: u64, seq: u64, batch: Vec<wire::Request>| {
        let replica = (view % 4) as u32;
        let mut p = PrePrepare {
            view,
            seq,
            digest: wire::batch_digest(&batch),
            batch,
            replica,
            sig: [0; 64],
        };
        p.sign(&keys(replica));
        p
    };
    let vote = |view: u64, seq: u64, digest: wire::Digest, i: u32, commit: bool| {
        let mut v = Vote {
            view,
            seq,
            digest,
            replica: i,
            sig: [0; 64],
        };
        v.sign(&keys(i), commit);
        v
    };
    // View 0: A prepares at seq 5 at replica 2 only (its prepare and replica 1's).
    let pa = pre_prepare(0, 5, vec![req(1, b"A")]);
    r2.handle(
        Principal::Replica(0),
        &Message::PrePrepare(pa.clone()).encode(),
        0,
        &mut out,
    )
    .unwrap();
    r2.handle(
        Principal::Replica(1),
        &vote(0, 5, pa.digest, 1, false).encode(false),
        0,
        &mut out,
    )
    .unwrap();
    assert_eq!(r2.tentative_seq(), None, "seqs 1..4 are not executed yet");
    // Partitioned, it times out twice: now in the view change to view 2 (its own).
    r2.suspect_primary(10, &mut out);
    r2.suspect_primary(20, &mut out);
    assert_eq!((r2.view(), r2.in_view_change()), (2, true));
    // Seqs 1..4 were null batches elsewhere: the checkpoint at 4 is the initial state.
    let mut w = W::default();
    w.bytes(&LogApp::default().snapshot());
    w.u32(0);
    let state = w.0;
    let digest = wire::sha256(&state);
    let proof: Vec<wire::Checkpoint> = [0u32, 1, 3]
        .iter()
        .map(|&i| {
            let mut c = wire::Checkpoint {
                seq: 4,
                digest,
                replica: i,
                sig: [0; 64],
            };
            c.sign(&keys(i));
            c
        })
        .collect();
    for c in &proof {
        r2.handle(Principal::Replica(c.replica), &c.encode(), 30, &mut out)
            .unwrap();
    }
    assert_eq!(r2.low_watermark(), 4);
    let mut st = wire::StateMsg {
        seq: 4,
        state,
        replica: 0,
        sig: [0; 64],
    };
    st.sign(&keys(0));
    out.clear();
    r2.handle(
        Principal::Replica(0),
        &Message::State(st).encode(),
        40,
        &mut out,
    )
    .unwrap();
    assert_eq!(r2.last_executed(), 4);
    assert_eq!(
        r2.tentative_seq(),
        None,
        "no tentative execution during a view change"
    );
    assert!(
        out.iter()
            .all(|o| !matches!(Message::decode(&o.payload, &lim), Ok(Message::Reply(_)))),
        "no reply during a view change"
    );
    // View 1 (without replica 2) prepared B at seq 5; replicas 0 and 3 carry that
    // certificate into their view changes for view 2.
    let pb = pre_prepare(1, 5, vec![req(2, b"B")]);
    let cert = wire::PreparedCert {
        pre_prepare: pb.clone(),
        prepares: vec![
            vote(1, 5, pb.digest, 0, false),
            vote(1, 5, pb.digest, 3, false),
        ],
    };
    for i in [0u32, 3] {
        let mut vc = wire::ViewChange {
            new_view: 2,
            stable_seq: 4,
            stable_digest: digest,
            proof: proof.clone(),
            prepared: vec![cert.clone()],
            replica: i,
            sig: [0; 64],
        };
        vc.sign(&keys(i));
        r2.handle(Principal::Replica(i), &vc.encode(), 50, &mut out)
            .unwrap();
    }
    assert!(!r2.in_view_change(), "replica 2 issued the new view");
    assert!(r2.is_primary());
    for i in [0u32, 3] {
        r2.handle(
            Principal::Replica(i),
            &vote(2, 5, pb.digest, i, false).encode(false),
            60,
            &mut out,
        )
        .unwrap();
        r2.handle(
            Principal::Replica(i),
            &vote(2, 5, pb.digest, i, true).encode(true),
            60,
            &mut out,
        )
        .unwrap();
    }
    assert_eq!(r2.last_executed(), 5);
    assert_eq!(r2.tentative_seq(), None);
    assert_eq!(
        r2.app().ops,
        vec![(CLIENT0, b"B".to_vec())],
        "B committed at seq 5, A never executed"
    );
}

/// L2 (review): a request superseded by a later one of the same client (which executed)
/// leaves the backups' waiting list, so it cannot force view changes forever.
#[test]
fn a_superseded_request_does_not_force_a_view_change() {
    let cfg = small_cfg();
    let keys = |i: u32| SimKeys::new(Principal::Replica(i), 7);
    let ck = SimKeys::new(Principal::Client(CLIENT0), 7);
    let mut r1 = Replica::new(cfg.clone(), 1, keys(1), LogApp::default()).unwrap();
    let mut out = Vec::new();
    let req = |ts: u64| {
        let mut r = wire::Request {
            client: CLIENT0,
            timestamp: ts,
            op: format!("op{ts}").into_bytes(),
            sig: [0; 64],
        };
        r.sign(&ck);
        r
    };
    // The client sent ts = 5 to the backup only, and ts = 6 to the primary.
    r1.handle(Principal::Client(CLIENT0), &req(5).encode(), 0, &mut out)
        .unwrap();
    let b = vec![req(6)];
    let mut p = PrePrepare {
        view: 0,
        seq: 1,
        digest: wire::batch_digest(&b),
        batch: b,
        replica: 0,
        sig: [0; 64],
    };
    p.sign(&keys(0));
    r1.handle(
        Principal::Replica(0),
        &Message::PrePrepare(p.clone()).encode(),
        10,
        &mut out,
    )
    .unwrap();
    for i in [2u32, 3] {
        let mut v = Vote {
            view: 0,
            seq: 1,
            digest: p.digest,
            replica: i,
            sig: [0; 64],
        };
        v.sign(&keys(i), false);
        r1.handle(Principal::Replica(i), &v.encode(false), 20, &mut out)
            .unwrap();
        v.sign(&keys(i), true);
        r1.handle(Principal::Replica(i), &v.encode(true), 20, &mut out)
            .unwrap();
    }
    assert_eq!(r1.last_executed(), 1);
    r1.tick(20 + 10 * cfg.view_change_timeout_us, &mut out);
    assert!(
        !r1.in_view_change(),
        "ts = 5 was superseded by ts = 6: nothing to wait for"
    );
}
