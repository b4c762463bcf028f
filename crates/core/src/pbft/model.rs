//! A `stateright` model of PBFT over the real [`Replica`] and [`Client`]: n = 4, one or two
//! clients with one request each, messages delivered in any order or lost, timeouts as
//! nondeterministic events (enough for one view change), a client retransmission, and
//! optionally a Byzantine replica that equivocates its votes and lies in its replies.
//!
//! Properties, in every reachable state:
//! * AGREEMENT — the committed histories of correct replicas are prefixes of one another
//!   (no two commit different requests at one sequence number), and a client never accepts a
//!   result that a correct replica commits differently (nor two results for one request);
//! * VALIDITY — only requests clients issued are committed, each at most once.
//!
//! The state space with loss and reordering is far too large to exhaust; the suite runs a
//! breadth-first search bounded by a state count (every interleaving of the first steps) and a
//! set of random walks to terminal states (deep paths: complete runs, view changes).
//! `PBFT_MODEL_STATES` and `PBFT_MODEL_WALKS` raise the bounds (`scripts/pbft-model.sh`).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use stateright::{Checker, Model, Property, UniformChooser};

use super::tests::LogApp;
use super::wire::{self, Message};
use super::*;

const N: usize = 4;
const CLIENT0: u64 = 100;
const CLUSTER: u64 = 7;

#[derive(Clone)]
struct State {
    replicas: Vec<Replica<LogApp, SimKeys>>,
    clients: Vec<Client<SimKeys>>,
    /// Messages in flight: (from, to, bytes), kept sorted (a multiset).
    net: Vec<(Principal, Principal, Vec<u8>)>,
    timeouts: u8,
    drops: u8,
    retransmits: u8,
    completions: Vec<(u64, Completion)>,
}

impl State {
    fn key(&self) -> String {
        let mut s = String::new();
        for r in &self.replicas {
            s.push_str(&r.fingerprint());
            s.push('#');
        }
        for c in &self.clients {
            s.push_str(&c.fingerprint());
            s.push('#');
        }
        s.push_str(&format!(
            "{:?} {} {} {} {:?}",
            self.net, self.timeouts, self.drops, self.retransmits, self.completions
        ));
        s
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.replicas {
            writeln!(f, "{}", r.fingerprint())?;
        }
        writeln!(f, "completions {:?}", self.completions)?;
        writeln!(f, "{} messages in flight", self.net.len())
    }
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Deliver(usize),
    Drop(usize),
    Timeout(usize),
    Retransmit(usize),
}

struct PbftModel {
    clients: usize,
    timeouts: u8,
    drops: u8,
    retransmits: u8,
    /// Replica 3 is Byzantine: equivocating votes and wrong replies.
    byzantine: bool,
    /// Mutation: replicas execute tentatively at pre-prepare (the checker must catch it).
    loose: bool,
}

fn config() -> Config {
    let mut c = Config::new(N);
    c.checkpoint_interval = 16;
    c.log_window = 32;
    c.batch_max = 2;
    c
}

impl PbftModel {
    fn is_byz(&self, i: usize) -> bool {
        self.byzantine && i == N - 1
    }

    fn correct(&self) -> impl Iterator<Item = usize> + '_ {
        (0..N).filter(|&i| !self.is_byz(i))
    }

    /// What the Byzantine replica does to a message it sends.
    fn corrupt(&self, to: Principal, bytes: Vec<u8>) -> Vec<u8> {
        let keys = SimKeys::new(Principal::Replica(N as u32 - 1), CLUSTER);
        let lim = config().limits();
        match Message::decode(&bytes, &lim) {
            Ok(Message::Reply(mut r)) => {
                r.result.push(0xEE);
                r.sign(&keys);
                Message::Reply(r).encode()
            }
            Ok(Message::Prepare(mut v)) | Ok(Message::Commit(mut v))
                if to == Principal::Replica(1) =>
            {
                let commit = matches!(Message::decode(&bytes, &lim), Ok(Message::Commit(_)));
                v.digest = wire::batch_digest(&[]);
                v.sign(&keys, commit);
                v.encode(commit)
            }
            _ => bytes,
        }
    }

    fn route(&self, s: &mut State, from: Principal, out: Vec<Outgoing>) {
        for o in out {
            let dests: Vec<Principal> = match o.to {
                Dest::Replica(j) => vec![Principal::Replica(j)],
                Dest::Client(c) => vec![Principal::Client(c)],
                Dest::AllReplicas => (0..N as u32)
                    .map(Principal::Replica)
                    .filter(|&p| p != from)
                    .collect(),
            };
            for to in dests {
                let bytes = match from {
                    Principal::Replica(i) if self.is_byz(i as usize) => {
                        self.corrupt(to, o.payload.clone())
                    }
                    _ => o.payload.clone(),
                };
                s.net.push((from, to, bytes));
            }
        }
        s.net.sort();
    }

    fn committed(r: &Replica<LogApp, SimKeys>) -> &[(u64, Vec<u8>)] {
        let ops = &r.app().ops;
        &ops[..ops.len() - r.tentative_requests()]
    }

    fn agreement(&self, s: &State) -> bool {
        let hs: Vec<_> = self
            .correct()
            .map(|i| Self::committed(&s.replicas[i]))
            .collect();
        hs.iter().all(|a| {
            hs.iter().all(|b| {
                let k = a.len().min(b.len());
                a[..k] == b[..k]
            })
        })
    }

    /// A completion is what the correct replicas commit: (1) the test application's result
    /// names the position the operation executed at and a hash of the history up to it, so
    /// every correct replica whose committed history reaches that position must hold this
    /// request there with this result; (2) at least f + 1 correct replicas have committed it
    /// or hold a prepared certificate for it (what a view change must carry forward), so a
    /// completion on replies sent before the prepare phase is caught even if the request is
    /// never ordered again.
    fn clients_agree(&self, s: &State) -> bool {
        let f = (N - 1) / 3;
        s.completions.iter().all(|(c, done)| {
            let op = format!("c{c}-op{}", done.timestamp).into_bytes();
            let twice = s
                .completions
                .iter()
                .any(|(c2, d2)| c2 == c && d2.timestamp == done.timestamp && d2 != done);
            let Some(pos) = done
                .result
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
            else {
                return false;
            };
            let consistent = pos >= 1
                && self.correct().all(|i| {
                    let r = &s.replicas[i];
                    let h = Self::committed(r);
                    let here = h.iter().position(|(cc, o)| cc == c && *o == op);
                    let at_pos = h.len() < pos
                        || (h[pos - 1] == (*c, op.clone())
                            && r.app().results[pos - 1] == done.result);
                    at_pos && here.is_none_or(|k| k + 1 == pos)
                });
            let backed = self
                .correct()
                .filter(|&i| {
                    let r = &s.replicas[i];
                    Self::committed(r).contains(&(*c, op.clone()))
                        || r.certified(*c, done.timestamp)
                })
                .count();
            !twice && consistent && backed > f
        })
    }

    fn validity(&self, s: &State) -> bool {
        self.correct().all(|i| {
            let h = Self::committed(&s.replicas[i]);
            h.iter().enumerate().all(|(k, (c, op))| {
                let issued = (0..self.clients as u64)
                    .any(|j| *c == CLIENT0 + j && *op == format!("c{c}-op1").into_bytes());
                issued && !h[..k].contains(&(*c, op.clone()))
            })
        })
    }
}

impl Model for PbftModel {
    type State = State;
    type Action = Step;

    fn init_states(&self) -> Vec<State> {
        let replicas = (0..N as u32)
            .map(|i| {
                let mut r = Replica::new(
                    config(),
                    i,
                    SimKeys::new(Principal::Replica(i), CLUSTER),
                    LogApp::default(),
                )
                .unwrap();
                r.loose_tentative = self.loose;
                r
            })
            .collect();
        let mut s = State {
            replicas,
            clients: Vec::new(),
            net: Vec::new(),
            timeouts: self.timeouts,
            drops: self.drops,
            retransmits: self.retransmits,
            completions: Vec::new(),
        };
        for j in 0..self.clients as u64 {
            let c = CLIENT0 + j;
            let mut client = Client::new(
                ClientConfig::new(N),
                c,
                SimKeys::new(Principal::Client(c), CLUSTER),
                0,
            )
            .unwrap();
            let mut out = Vec::new();
            client
                .request(format!("c{c}-op1").as_bytes(), 0, &mut out)
                .unwrap();
            s.clients.push(client);
            self.route(&mut s, Principal::Client(c), out);
        }
        vec![s]
    }

    fn actions(&self, s: &State, out: &mut Vec<Step>) {
        for k in 0..s.net.len() {
            if k > 0 && s.net[k] == s.net[k - 1] {
                continue; // the same message twice: one choice
            }
            out.push(Step::Deliver(k));
            if s.drops > 0 {
                out.push(Step::Drop(k));
            }
        }
        if s.timeouts > 0 {
            for i in 0..N {
                if s.replicas[i].view() == 0 && !self.is_byz(i) {
                    out.push(Step::Timeout(i));
                }
            }
        }
        if s.retransmits > 0 {
            for (k, c) in s.clients.iter().enumerate() {
                if c.is_busy() {
                    out.push(Step::Retransmit(k));
                }
            }
        }
    }

    fn next_state(&self, last: &State, step: Step) -> Option<State> {
        let mut s = last.clone();
        match step {
            Step::Deliver(k) => {
                let (from, to, bytes) = s.net.remove(k);
                match to {
                    Principal::Replica(i) => {
                        let mut out = Vec::new();
                        // Refusals (forged votes of the Byzantine replica) are fine.
                        let _ = s.replicas[i as usize].handle(from, &bytes, 0, &mut out);
                        self.route(&mut s, to, out);
                    }
                    Principal::Client(c) => {
                        let k = (c - CLIENT0) as usize;
                        if let Ok(Some(done)) = s.clients[k].handle(from, &bytes, 0) {
                            s.completions.push((c, done));
                        }
                    }
                }
            }
            Step::Drop(k) => {
                s.drops -= 1;
                s.net.remove(k);
            }
            Step::Timeout(i) => {
                s.timeouts -= 1;
                let mut out = Vec::new();
                s.replicas[i].suspect_primary(0, &mut out);
                self.route(&mut s, Principal::Replica(i as u32), out);
            }
            Step::Retransmit(k) => {
                s.retransmits -= 1;
                let mut out = Vec::new();
                // Far enough in the future for the retransmission timer.
                s.clients[k].tick(u64::MAX / 2, &mut out);
                let c = s.clients[k].id();
                self.route(&mut s, Principal::Client(c), out);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("agreement: correct replicas commit the same", |m, s| {
                m.agreement(s)
            }),
            Property::always("agreement: clients accept only what commits", |m, s| {
                m.clients_agree(s)
            }),
            Property::always("validity: only issued requests, once", |m, s| m.validity(s)),
            Property::sometimes("a client completes on the fast path", |_, s: &State| {
                s.completions.iter().any(|(_, d)| d.path == Path::Fast)
            }),
            Property::sometimes("a request completes after a view change", |_, s: &State| {
                !s.completions.is_empty()
                    && s.replicas
                        .iter()
                        .filter(|r| r.view() == 1 && !r.in_view_change())
                        .count()
                        >= 3
            }),
            Property::sometimes("a tentative execution is rolled back", |_, s: &State| {
                s.replicas.iter().any(|r| r.stats().rollbacks > 0)
            }),
        ]
    }
}

const SAFETY: [&str; 3] = [
    "agreement: correct replicas commit the same",
    "agreement: clients accept only what commits",
    "validity: only issued requests, once",
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Breadth-first over every interleaving, up to a state count.
fn bfs(model: PbftModel, states: usize) -> usize {
    let checker = model
        .checker()
        .target_state_count(env("PBFT_MODEL_STATES", states))
        .spawn_bfs()
        .join();
    for p in SAFETY {
        checker.assert_no_discovery(p);
    }
    let n = checker.unique_state_count();
    eprintln!("bfs: {n} unique states");
    n
}

/// Random walks to terminal states (complete runs), safety checked at every step; returns
/// the "sometimes" properties reached.
fn walks(model: PbftModel, seconds: u64) -> Vec<&'static str> {
    let checker = model
        .checker()
        .timeout(Duration::from_secs(
            env("PBFT_MODEL_WALK_SECS", seconds as usize) as u64,
        ))
        .spawn_simulation(1, UniformChooser)
        .join();
    for p in SAFETY {
        checker.assert_no_discovery(p);
    }
    let found: Vec<&'static str> = checker.discoveries().keys().copied().collect();
    eprintln!("walks: {} states, reached {found:?}", checker.state_count());
    found
}

#[test]
fn one_request_every_early_interleaving() {
    let states = bfs(
        PbftModel {
            clients: 1,
            timeouts: 2,
            drops: 1,
            retransmits: 0,
            byzantine: false,
            loose: false,
        },
        3_000,
    );
    assert!(states >= 3_000, "{states} states");
}

#[test]
fn two_requests_loss_and_a_view_change_random_walks() {
    let found = walks(
        PbftModel {
            clients: 2,
            timeouts: 3,
            drops: 2,
            retransmits: 1,
            byzantine: false,
            loose: false,
        },
        3,
    );
    assert!(
        found.contains(&"a client completes on the fast path"),
        "{found:?}"
    );
    assert!(
        found.contains(&"a request completes after a view change"),
        "{found:?}"
    );
}

#[test]
fn a_byzantine_replica_random_walks() {
    let found = walks(
        PbftModel {
            clients: 2,
            timeouts: 3,
            drops: 1,
            retransmits: 1,
            byzantine: true,
            loose: false,
        },
        3,
    );
    assert!(
        found.contains(&"a request completes after a view change"),
        "{found:?}"
    );
}

/// The mutation test: with tentative execution loosened to "pre-prepared" (replies before
/// the prepare phase), the checker must find a client accepting what does not commit.
#[test]
fn the_model_catches_replies_before_the_prepare_phase() {
    let checker = PbftModel {
        clients: 1,
        timeouts: 1,
        drops: 4,
        retransmits: 1,
        byzantine: false,
        loose: true,
    }
    .checker()
    .timeout(Duration::from_secs(3))
    .spawn_simulation(1, UniformChooser)
    .join();
    eprintln!(
        "mutation: {} states, found {:?}",
        checker.state_count(),
        checker.discoveries().keys().collect::<Vec<_>>()
    );
    assert!(
        checker
            .discovery("agreement: clients accept only what commits")
            .is_some(),
        "the mutation was not caught"
    );
}
