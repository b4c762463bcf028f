//! Byzantine agreement: PBFT for n = 3f + 1 replicas as a state machine without I/O
//! (issue 14).
//!
//! Stepped by messages and the caller's clock, returning the messages to send and the
//! requests to execute; [`crate::mesh`] drives it over a transport.
//!
//! # The protocol
//!
//! Castro and Liskov's PBFT with signatures ([`Authenticator`]): a client signs a request and sends it
//! to the primary of the view it knows (`view mod n`); the primary orders a *batch* of up to
//! [`Config::batch_max`] requests, or what arrived within [`Config::batch_window_us`], in one
//! pre-prepare at the next sequence number; backups check it and multicast prepares; a replica
//! with the pre-prepare and 2f matching prepares from other backups is *prepared* and
//! multicasts a commit; with 2f + 1 matching commits it has *committed locally* and executes
//! in sequence order; the client accepts a result on f + 1 matching committed replies.
//!
//! * **Checkpoints and garbage collection.** Every [`Config::checkpoint_interval`] sequence
//!   numbers a replica multicasts the digest of its state (the application's snapshot and the
//!   last reply to each client); 2f + 1 matching checkpoints make it *stable*: the low
//!   watermark h moves there and the log below it is dropped. Only sequence numbers in
//!   (h, h + [`Config::log_window`]] are accepted. A replica that finds a stable checkpoint
//!   beyond what it executed fetches that state from the replicas that vouched for it and
//!   checks it against the digest (state transfer).
//! * **View change.** A replica that waits too long for a request it knows of to commit
//!   ([`Config::view_change_timeout_us`], doubled on each consecutive view change) multicasts
//!   a view change with its stable checkpoint proof and its prepared certificates; it also
//!   joins a view change once f + 1 replicas ask for a later view. The new primary, with 2f + 1
//!   view changes, multicasts a new view that re-issues, for every sequence number between
//!   the highest stable checkpoint and the highest prepared one, the batch of the highest-view
//!   certificate or a null batch; backups recompute it and refuse a new view that differs.
//!   Liveness under loss: the timer for the next view starts only once 2f + 1 view changes
//!   for the current one arrived (a replica that lost a new view does not race ahead alone);
//!   a replica in a view change sends its view change again every timeout; the primary of an
//!   installed view answers a late view change with its (self-certifying) new view; and the
//!   primary times its own requests too, so it leaves a view in which its batches cannot
//!   commit.
//! * **Dedup and reply cache.** A request is executed at most once per (client, timestamp):
//!   one with a timestamp not above the client's last executed one is skipped, and a
//!   retransmitted request already executed is answered from the per-client reply cache.
//!
//! # Example
//!
//! Four replicas and a client in one thread, messages delivered in the order sent (a host delivers
//! them over a transport and calls `tick` at `next_deadline_us`):
//!
//! ```
//! use erlmcp_flow::pbft::{App, Client, ClientConfig, Config, Dest, Outgoing, Path, Principal,
//!                         Replica, SimKeys};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//! impl App for Counter {
//!     fn execute(&mut self, _client: u64, op: &[u8]) -> Vec<u8> {
//!         self.0 += op.len() as u64;
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(&mut self, s: &[u8]) -> erlmcp_flow::Result<()> {
//!         self.0 = u64::from_le_bytes(s.try_into().map_err(|_| erlmcp_flow::Error::corrupt("len"))?);
//!         Ok(())
//!     }
//! }
//!
//! // SimKeys: deterministic and not secure; Ed25519Keys in production.
//! let keys = |p| SimKeys::new(p, 1);
//! let mut replicas: Vec<_> = (0..4)
//!     .map(|i| Replica::new(Config::new(4), i, keys(Principal::Replica(i)), Counter::default()).unwrap())
//!     .collect();
//! let mut client = Client::new(ClientConfig::new(4), 9, keys(Principal::Client(9)), 0).unwrap();
//! let mut queue: std::collections::VecDeque<(Principal, Outgoing)> = Default::default();
//! let mut out = Vec::new();
//! client.request(b"abc", 0, &mut out).unwrap();
//! queue.extend(out.drain(..).map(|o| (Principal::Client(9), o)));
//! let mut done = None;
//! while let Some((from, o)) = queue.pop_front() {
//!     let to: Vec<Principal> = match o.to {
//!         Dest::Replica(i) => vec![Principal::Replica(i)],
//!         Dest::Client(c) => vec![Principal::Client(c)],
//!         Dest::AllReplicas => (0..4).map(Principal::Replica).filter(|&p| p != from).collect(),
//!     };
//!     for p in to {
//!         match p {
//!             Principal::Replica(i) => {
//!                 replicas[i as usize].handle(from, &o.payload, 0, &mut out).unwrap();
//!                 queue.extend(out.drain(..).map(|o| (p, o)));
//!             }
//!             Principal::Client(_) => {
//!                 if let Some(c) = client.handle(from, &o.payload, 0).unwrap() {
//!                     done = Some(c);
//!                 }
//!             }
//!         }
//!     }
//! }
//! let done = done.unwrap();
//! assert_eq!(done.result, 3u64.to_le_bytes());
//! assert_eq!(done.path, Path::Fast); // 2f + 1 = 3 matching tentative replies
//! ```
//!
//! # The fast path: tentative execution, and why it is safe
//!
//! Implemented rule (Castro–Liskov's tentative execution, not a "pre-prepare quorum"): a
//! replica executes a batch *tentatively* as soon as it is **prepared** (pre-prepare + 2f
//! matching prepares from others, 2f + 1 replicas in all) and every lower sequence number has
//! **committed** and been executed; it replies at once, marked tentative. The client accepts
//! **2f + 1 matching tentative replies of one view**, otherwise it waits for **f + 1 matching
//! committed replies**. That saves the commit phase's message delay.
//!
//! Why the client can never see a result that is later undone: 2f + 1 tentative replies of
//! view v for request r at sequence number s include at least f + 1 from correct replicas, each
//! of which holds a prepared certificate for (v, s, d(r)). Any view change is decided by
//! 2f + 1 view-change messages; 2f + 1 and f + 1 out of 3f + 1 intersect in at least one
//! replica, which is correct, so its certificate for (v, s, d) is in every new view's proof.
//! PBFT's prepared-certificate invariant (two certificates for s in views v <= v' carry the
//! same digest; the new primary keeps the highest-view certificate) makes the new view
//! re-issue d at s. And the result was computed on the committed prefix below s (tentative
//! execution waits for it), which no view change alters; f + 1 correct replicas computed it, so
//! it is the correct result. The same argument fails for replies sent *before* the prepare
//! phase (after the pre-prepare only): a pre-prepare seen by 2f + 1 replicas is not a
//! certificate anyone must show, and a view change can order another request at s — this
//! module never lets a client complete on such replies.
//!
//! A replica's own tentative execution can be undone: when a view change starts, it restores
//! the state it had at its last committed execution ([`App::snapshot`] taken before the
//! tentative batch, and the reply cache entries the batch changed) and re-executes the batch
//! when the new view commits it, if it does. At most one batch is tentative at a time (the
//! next one waits for it to commit), so the undo is one snapshot.
//!
//! The argument above needs two more invariants, both enforced: **no tentative execution
//! while a view change is under way** (the prepared flags then belong to the last installed
//! view, and a reply would carry the target view without a certificate of it), and **every
//! replica that installs a new view rolls back first**, the new primary included. As defence
//! in depth, a tentative batch remembers its (seq, view, digest), and a commit keeps its
//! results only if the committed batch is that one; otherwise it is undone and the committed
//! batch executed.
//!
//! Set [`Config::tentative`] to `false` (and [`ClientConfig::accept_tentative`]) for the
//! classic three-phase path, e.g. to compare them.
//!
//! # Bad input
//!
//! [`Replica::handle`] and [`Client::handle`] validate every message before use: garbage or
//! truncated bytes ([`crate::ErrorKind::Corrupt`]), oversized ones
//! ([`crate::ErrorKind::TooLarge`]), bad signatures or a sender that is not the signer
//! ([`crate::ErrorKind::InvalidArgument`]) are refused with an error and counted in
//! [`Stats`]; replayed, duplicate or out-of-window messages are harmless, ignored and counted
//! as [`Stats::stale`]. Nothing panics on input.
//!
//! # Costs
//!
//! Ed25519 (`ed25519-dalek` 2, this project's AMD EPYC build host, release): sign 18 µs,
//! verify 31 µs for 128 bytes; SHA-256 of 4 KiB 2.3 µs. Replica-to-replica votes are signed
//! per *batch*, so batching amortises them; each request still costs one client-signature
//! verification at every replica and one signed reply, about 50 µs of CPU per request per
//! replica (some 20 K requests/s per core). [`SimKeys`] removes that cost where security does
//! not matter (simulations, the model, protocol benchmarks).
//!
//! # How it is checked
//!
//! * A seeded simulation (`tests.rs`): n = 4 with silent, equivocating and lying replicas,
//!   forged, replayed, garbage and oversized messages, loss, duplicates and reordering,
//!   checkpoints, state transfer and a rolled-back tentative execution; agreement, validity
//!   and "every accepted result is the committed one" checked along every run.
//! * A `stateright` model (`model.rs`) over these same types: n = 4, two requests, loss,
//!   reordering, timeouts enough for a view change, optionally a Byzantine replica; the
//!   properties are agreement (replicas and clients) and validity. Replacing the prepared
//!   condition of tentative execution by "pre-prepared" makes it find a client that accepted
//!   a result the view change then reordered.
//!
//! `scripts/pbft-sim.sh` runs both at length.
//!
//! # Limits
//!
//! * Clients have one request outstanding at a time (as in PBFT); the primary's queue is
//!   bounded by [`Config::max_pending`] (further requests are dropped and counted; the client
//!   retransmits).
//! * Messages are retransmitted only when a client retransmits: a replica then repeats its
//!   own pre-prepare / prepare / commit for that request, or its cached reply. Lost view-change
//!   messages are recovered by the next, longer view change.
//! * View changes carry full batches (no separate batch fetch). A pre-prepare holds at most
//!   half of [`Config::max_message_bytes`] in requests, but a view change holds up to
//!   [`Config::log_window`] prepared batches and a new view 2f + 1 view changes: with large
//!   operations and a long window, raise the message limit accordingly (carrying digests and
//!   fetching batches is the known remedy, not implemented).
//! * A replica that moved to a later view alone (it lost messages) stays out until the others
//!   move, as in PBFT; it keeps following stable checkpoints.

mod auth;
mod client;
mod replica;
mod wire;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

pub use auth::{Authenticator, Ed25519Keys, Principal, Signature, SimKeys};
pub use client::{Client, ClientConfig, Completion, Path};
pub use replica::Replica;

use crate::error::{Error, Result};

/// Where an outgoing message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// One replica.
    Replica(u32),
    /// One client.
    Client(u64),
    /// Every replica but the sender.
    AllReplicas,
}

/// A message a replica or a client asks its driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub to: Dest,
    /// Its bytes, as the receiver's `handle` expects them.
    pub payload: Vec<u8>,
}

/// The replicated application: deterministic, and able to save and restore its state.
pub trait App {
    /// Applies `op` from `client` and returns the result (must be deterministic).
    fn execute(&mut self, client: u64, op: &[u8]) -> Vec<u8>;
    /// The whole state as bytes (checkpoints, state transfer, and the undo of a tentative
    /// execution).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a [`App::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<()>;
}

/// Replica parameters; every replica of a group must use the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Number of replicas, 3f + 1 with f >= 1.
    pub n: usize,
    /// K: a checkpoint every K sequence numbers.
    pub checkpoint_interval: u64,
    /// L: sequence numbers accepted above the low watermark (a multiple of K, >= K).
    pub log_window: u64,
    /// B: at most this many requests in one pre-prepare.
    pub batch_max: usize,
    /// The primary waits at most this long for a batch to fill (0: order at once).
    pub batch_window_us: u64,
    /// A backup waiting this long for a known request starts a view change.
    pub view_change_timeout_us: u64,
    /// Execute prepared batches tentatively and reply early (the fast path).
    pub tentative: bool,
    /// The largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// The largest operation accepted, in bytes.
    pub max_op_bytes: usize,
    /// Requests the primary queues before it drops (and counts) new ones.
    pub max_pending: usize,
}

impl Config {
    /// Defaults for `n` replicas: K = 64, L = 128, B = 64, no batch window, a 200 ms view
    /// change timeout, tentative execution on, 16 MiB messages, 1 MiB operations.
    pub fn new(n: usize) -> Self {
        Config {
            n,
            checkpoint_interval: 64,
            log_window: 128,
            batch_max: 64,
            batch_window_us: 0,
            view_change_timeout_us: 200_000,
            tentative: true,
            max_message_bytes: 16 << 20,
            max_op_bytes: 1 << 20,
            max_pending: 10_000,
        }
    }

    /// f, the number of faulty replicas tolerated.
    pub fn f(&self) -> usize {
        (self.n - 1) / 3
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.n < 4 || (self.n - 1) % 3 != 0 {
            return Err(Error::invalid(format!(
                "pbft: n = {} is not 3f + 1 with f >= 1",
                self.n
            )));
        }
        if self.checkpoint_interval == 0
            || self.log_window < self.checkpoint_interval
            || self.log_window % self.checkpoint_interval != 0
        {
            return Err(Error::invalid(
                "pbft: the log window must be a non-zero multiple of the checkpoint interval",
            ));
        }
        if self.batch_max == 0 || self.max_pending == 0 || self.view_change_timeout_us == 0 {
            return Err(Error::invalid(
                "pbft: batch_max, max_pending and view_change_timeout_us must be positive",
            ));
        }
        if self.max_op_bytes + 256 > self.max_message_bytes {
            return Err(Error::invalid(
                "pbft: max_message_bytes must leave room for an operation of max_op_bytes",
            ));
        }
        Ok(())
    }

    fn limits(&self) -> wire::Limits {
        wire::Limits {
            max_message: self.max_message_bytes,
            max_op: self.max_op_bytes,
            max_batch: self.batch_max,
            n: self.n,
        }
    }
}

/// What a replica or client refused or ignored, and what it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Truncated, malformed or unknown messages.
    pub garbage: u64,
    /// Messages beyond a size limit.
    pub oversized: u64,
    /// Bad signatures, a sender that is not the signer, or a message no correct peer sends
    /// (e.g. a pre-prepare from a backup, a new view that does not recompute).
    pub forged: u64,
    /// Replayed, duplicate, old-view or out-of-window messages (ignored).
    pub stale: u64,
    /// Client requests dropped because the primary's queue was full.
    pub dropped_requests: u64,
    /// Requests executed (committed or tentatively; re-executions counted again).
    pub executed: u64,
    /// Pre-prepares issued as primary.
    pub batches: u64,
    /// Tentative executions rolled back.
    pub rollbacks: u64,
    /// View changes started.
    pub view_changes: u64,
    /// States installed from another replica.
    pub state_transfers: u64,
    /// Checkpoints that became stable.
    pub stable_checkpoints: u64,
}
