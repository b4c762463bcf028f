//! The PBFT client: signs requests, retransmits, and decides on replies.

use std::collections::{BTreeMap, BTreeSet};

use super::auth::{Authenticator, Principal};
use super::wire::{Limits, Message, Request};
use super::{Dest, Outgoing, Stats};
use crate::error::{Error, ErrorKind, Result};

/// Client parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Number of replicas, 3f + 1.
    pub n: usize,
    /// Without an answer for this long, the request is sent again, to every replica.
    pub retransmit_us: u64,
    /// Complete on 2f + 1 matching tentative replies (the fast path); otherwise only on
    /// f + 1 matching committed replies.
    pub accept_tentative: bool,
    /// The largest reply accepted, in bytes.
    pub max_message_bytes: usize,
    /// The largest operation sent, in bytes (the replicas' limit).
    pub max_op_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `n` replicas: retransmit after 100 ms, fast path on, 16 MiB replies,
    /// 1 MiB operations.
    pub fn new(n: usize) -> Self {
        ClientConfig {
            n,
            retransmit_us: 100_000,
            accept_tentative: true,
            max_message_bytes: 16 << 20,
            max_op_bytes: 1 << 20,
        }
    }
}

/// How a request completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// 2f + 1 matching tentative replies of one view (prepared at 2f + 1 replicas).
    Fast,
    /// f + 1 matching committed replies.
    Slow,
}

/// A request's outcome, agreed by enough replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request's timestamp (as returned by [`Client::request`]).
    pub timestamp: u64,
    /// The application's result.
    pub result: Vec<u8>,
    /// Which rule completed it.
    pub path: Path,
}

#[derive(Debug, Clone)]
struct Outstanding {
    timestamp: u64,
    payload: Vec<u8>,
    deadline: u64,
    /// (view, result) -> replicas that replied so, tentatively.
    tentative: BTreeMap<(u64, Vec<u8>), BTreeSet<u32>>,
    /// result -> replicas that replied so, committed, with the view each replied in.
    committed: BTreeMap<Vec<u8>, BTreeMap<u32, u64>>,
}

/// A PBFT client with one request outstanding at a time: a state machine without I/O.
#[derive(Clone)]
pub struct Client<K: Authenticator> {
    cfg: ClientConfig,
    lim: Limits,
    f: usize,
    id: u64,
    keys: K,
    view: u64,
    timestamp: u64,
    outstanding: Option<Outstanding>,
    stats: Stats,
}

impl<K: Authenticator> Client<K> {
    /// Client `id` signing with `keys`. Timestamps start above `first_timestamp` (a client
    /// that restarts must start above the last timestamp it used, e.g. with the wall clock in
    /// microseconds; replicas drop requests with old timestamps).
    pub fn new(config: ClientConfig, id: u64, keys: K, first_timestamp: u64) -> Result<Self> {
        if config.n < 4 || (config.n - 1) % 3 != 0 {
            return Err(Error::invalid(format!(
                "pbft: n = {} is not 3f + 1 with f >= 1",
                config.n
            )));
        }
        Ok(Client {
            lim: Limits {
                max_message: config.max_message_bytes,
                max_op: config.max_op_bytes,
                max_batch: 0,
                n: config.n,
            },
            f: (config.n - 1) / 3,
            cfg: config,
            id,
            keys,
            view: 0,
            timestamp: first_timestamp,
            outstanding: None,
            stats: Stats::default(),
        })
    }

    /// This client's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The view the client believes current (its requests go to that view's primary).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether a request is waiting for its result.
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Counters of the replies refused or ignored.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends `op` to the primary; returns its timestamp. [`ErrorKind::Busy`] while a request
    /// is outstanding, [`ErrorKind::TooLarge`] beyond the operation limit.
    pub fn request(&mut self, op: &[u8], now_us: u64, out: &mut Vec<Outgoing>) -> Result<u64> {
        if self.outstanding.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                "pbft: the client has a request outstanding",
            ));
        }
        if op.len() > self.cfg.max_op_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "pbft: operation of {} bytes exceeds the limit of {}",
                    op.len(),
                    self.cfg.max_op_bytes
                ),
            ));
        }
        self.timestamp += 1;
        let mut r = Request {
            client: self.id,
            timestamp: self.timestamp,
            op: op.to_vec(),
            sig: [0; 64],
        };
        r.sign(&self.keys);
        let payload = r.encode();
        out.push(Outgoing {
            to: Dest::Replica((self.view % self.cfg.n as u64) as u32),
            payload: payload.clone(),
        });
        self.outstanding = Some(Outstanding {
            timestamp: self.timestamp,
            payload,
            deadline: now_us + self.cfg.retransmit_us,
            tentative: BTreeMap::new(),
            committed: BTreeMap::new(),
        });
        Ok(self.timestamp)
    }

    /// Retransmits the outstanding request to every replica when its time has come.
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<Outgoing>) {
        if let Some(o) = &mut self.outstanding {
            if now_us >= o.deadline {
                out.push(Outgoing {
                    to: Dest::AllReplicas,
                    payload: o.payload.clone(),
                });
                o.deadline = now_us + self.cfg.retransmit_us;
            }
        }
    }

    /// When [`Client::tick`] next has something to do.
    pub fn next_deadline_us(&self) -> Option<u64> {
        self.outstanding.as_ref().map(|o| o.deadline)
    }

    /// Handles a reply from `from`; returns the completion once enough replicas agree.
    /// Garbage, oversized and forged replies are refused with an error (and counted); replies
    /// to other or earlier requests are ignored (and counted as stale).
    pub fn handle(
        &mut self,
        from: Principal,
        bytes: &[u8],
        _now_us: u64,
    ) -> Result<Option<Completion>> {
        let r = self.step(from, bytes);
        if let Err(e) = &r {
            match e.kind() {
                ErrorKind::TooLarge => self.stats.oversized += 1,
                ErrorKind::Corrupt => self.stats.garbage += 1,
                _ => self.stats.forged += 1,
            }
        }
        r
    }

    fn step(&mut self, from: Principal, bytes: &[u8]) -> Result<Option<Completion>> {
        let reply = match Message::decode(bytes, &self.lim)? {
            Message::Reply(r) => r,
            _ => return Err(Error::corrupt("pbft: a client expects replies only")),
        };
        if from != Principal::Replica(reply.replica) {
            return Err(Error::invalid(
                "pbft: the sender is not the replica that signed",
            ));
        }
        if !reply.verify(&self.keys) {
            return Err(Error::invalid("pbft: bad signature on a reply"));
        }
        let Some(o) = &mut self.outstanding else {
            self.stats.stale += 1;
            return Ok(None);
        };
        if reply.client != self.id || reply.timestamp != o.timestamp {
            self.stats.stale += 1;
            return Ok(None);
        }
        // The view to learn: one that at least one correct replica of the quorum is in.
        let (path, view) = if reply.tentative {
            if !self.cfg.accept_tentative {
                return Ok(None);
            }
            let set = o
                .tentative
                .entry((reply.view, reply.result.clone()))
                .or_default();
            set.insert(reply.replica);
            if set.len() < 2 * self.f + 1 {
                return Ok(None);
            }
            (Path::Fast, reply.view)
        } else {
            let set = o.committed.entry(reply.result.clone()).or_default();
            set.insert(reply.replica, reply.view);
            if set.len() <= self.f {
                return Ok(None);
            }
            let mut views: Vec<u64> = set.values().copied().collect();
            views.sort_unstable_by(|a, b| b.cmp(a));
            (Path::Slow, views[self.f])
        };
        let timestamp = o.timestamp;
        self.outstanding = None;
        self.view = self.view.max(view);
        Ok(Some(Completion {
            timestamp,
            result: reply.result,
            path,
        }))
    }

    /// A deterministic description of the client's state (for the model checker).
    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "{} {} {:?}",
            self.view,
            self.timestamp,
            self.outstanding
                .as_ref()
                .map(|o| (&o.tentative, &o.committed))
        )
    }
}
