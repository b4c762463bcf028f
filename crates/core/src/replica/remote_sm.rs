//! A [`StateMachine`] answered by another thread or process's code *asynchronously*: every
//! call the node makes into the machine becomes a [`SmRequest`] that the host fetches with
//! [`RemoteSmHost::next`] and answers with [`RemoteSmHost::reply`], while the node's thread
//! waits for the answer. This is how a host that cannot be called synchronously from the
//! node's thread — an Erlang VM, whose NIFs cannot call into Erlang code — runs the
//! replicated state machine of a node started with [`spawn_node`](super::node::spawn_node):
//! the host's own process loops on `next` and `reply`; no thread or lock lives in the
//! binding.
//!
//! # Rules
//!
//! * One request is outstanding at a time, in the order the node makes them: `Apply`s in
//!   log order, a `Snapshot` between two applies, a `Restore` before the applies after it.
//! * `Apply`, `Snapshot` and `Query` wait for their answer. An `Apply` or `Snapshot` answered
//!   with an error, not answered within the timeout ([`remote_sm`]), or pending when the host
//!   closes ([`RemoteSmHost::close`], or drops it) stops the node with a readable error
//!   ([`abort_node`]): nothing after it is applied or persisted, and a restart from the data
//!   directory replays the entry. A `Query` answered with an error, or not in time, only
//!   refuses that query.
//! * A `Restore` does **not** wait: the node may restore its snapshot while it opens, before
//!   the host could have a handle to answer with (`spawn_node` returns only once the node is
//!   open). Its request is queued and the node goes on; the *next* request waits for the
//!   restore's answer first, and a refused restore (an error answer) stops the node there,
//!   before any later operation reaches the host. The host therefore never applies an entry
//!   on a state it refused.
//! * Answers name their request's id: an answer to a request that timed out, or to none, is
//!   refused with `NotFound` and changes nothing.
//!
//! The node's thread is blocked while the host computes an answer: its heartbeats and
//! elections wait too, so a host slower than an election timeout makes its node lose
//! leadership. Keep `apply` quick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::node::abort_node;
use crate::error::{Error, ErrorKind, Result};
use crate::raft::StateMachine;
use crate::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The default time the node waits for an answer ([`remote_sm`]).
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node asks of the host's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmRequestKind {
    /// Apply the operation `op` committed at log `index` and answer its result bytes.
    Apply {
        /// The log index (several operations batched in one entry share it).
        index: u64,
        /// The operation's bytes.
        op: Vec<u8>,
    },
    /// Answer the whole state, for a snapshot.
    Snapshot,
    /// Replace the state with the snapshot `data` (validate it: an error answer refuses it
    /// and stops the node); answer empty bytes.
    Restore {
        /// The snapshot's bytes (from this node's data directory or from the leader).
        data: Vec<u8>,
    },
    /// Answer the read-only `query` from the current state (an error answer refuses it).
    Query {
        /// The query's bytes.
        query: Vec<u8>,
    },
}

impl SmRequestKind {
    /// What the request is, for messages: `apply at index 7`, `snapshot`, ...
    fn describe(&self) -> String {
        match self {
            SmRequestKind::Apply { index, .. } => format!("apply at index {index}"),
            SmRequestKind::Snapshot => "snapshot".to_owned(),
            SmRequestKind::Restore { data } => format!("restore of {} bytes", data.len()),
            SmRequestKind::Query { .. } => "query".to_owned(),
        }
    }
}

/// One request of the node to the host ([`RemoteSmHost::next`]), answered by
/// [`RemoteSmHost::reply`] with its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmRequest {
    /// The request's id (from 1, increasing), named by the answer.
    pub id: u64,
    /// What is asked.
    pub kind: SmRequestKind,
}

/// The request handed to the host (or queued for it) and not answered yet.
#[derive(Debug)]
struct Pending {
    id: u64,
    what: String,
    /// A restore: the node did not wait for it.
    deferred: bool,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Requests not yet fetched by the host (at most a deferred restore and one more).
    queued: VecDeque<SmRequest>,
    /// The requests not answered yet, oldest first.
    pending: VecDeque<Pending>,
    /// The answer to the oldest pending request, once given.
    answer: Option<(u64, Result<Vec<u8>>)>,
    /// The host closed (or dropped) its end.
    closed: bool,
    /// The node stopped while waiting because the host closed.
    interrupted: bool,
    /// The node's end was dropped (the node's loop ended).
    node_gone: bool,
    /// The error with which the machine stopped its node.
    failure: Option<Error>,
}

struct Shared {
    id: u64,
    timeout: Duration,
    inner: Mutex<Inner>,
    /// Signalled when a request is queued or the node's end is gone (the host waits).
    to_host: Condvar,
    /// Signalled when an answer arrives or the host closes (the node waits).
    to_node: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's end: a [`StateMachine`] whose calls are requests to the [`RemoteSmHost`].
/// Give it to [`spawn_node`](super::node::spawn_node).
pub struct RemoteSm {
    shared: Arc<Shared>,
}

/// The host's end: fetches the node's requests and answers them. `Send + Sync`; every
/// method takes `&self`. Dropping it closes it ([`close`](Self::close)).
pub struct RemoteSmHost {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteSm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSm")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RemoteSmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSmHost")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// A state machine for node `id` answered by a host: the node's end and the host's.
/// `timeout` bounds each wait of the node for an answer (`None`:
/// [`DEFAULT_REMOTE_TIMEOUT`]).
pub fn remote_sm(id: u64, timeout: Option<Duration>) -> (RemoteSm, RemoteSmHost) {
    let shared = Arc::new(Shared {
        id,
        timeout: timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT),
        inner: Mutex::new(Inner {
            next_id: 1,
            ..Inner::default()
        }),
        to_host: Condvar::new(),
        to_node: Condvar::new(),
    });
    (
        RemoteSm {
            shared: shared.clone(),
        },
        RemoteSmHost { shared },
    )
}

impl RemoteSm {
    /// Queues a request; returns its id, or why the host cannot take it.
    fn send(&self, inner: &mut Inner, kind: SmRequestKind, deferred: bool) -> Result<u64> {
        let what = kind.describe();
        if inner.closed {
            inner.interrupted = true;
            return Err(Error::new(
                ErrorKind::Closed,
                format!(
                    "raft node {}: the host's state machine is closed ({what} not made)",
                    self.shared.id
                ),
            ));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.queued.push_back(SmRequest { id, kind });
        inner.pending.push_back(Pending { id, what, deferred });
        self.shared.to_host.notify_all();
        Ok(id)
    }

    /// Waits for the answer to the oldest pending request (`id`): its bytes, or the error
    /// that answered it or that ended the wait.
    fn wait(&self, mut inner: MutexGuard<'_, Inner>) -> (Result<Vec<u8>>, u64) {
        let sh = &self.shared;
        let (id, what) = match inner.pending.front() {
            Some(p) => (p.id, p.what.clone()),
            None => unreachable!("wait without a pending request"),
        };
        let deadline = Instant::now() + sh.timeout;
        loop {
            if let Some((aid, r)) = inner.answer.take() {
                debug_assert_eq!(aid, id);
                inner.pending.pop_front();
                let r = r.map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "raft node {}: the host's state machine failed the {what}: {}",
                            sh.id,
                            e.message()
                        ),
                    )
                });
                return (r, id);
            }
            if inner.closed {
                inner.interrupted = true;
                inner.pending.clear();
                inner.queued.clear();
                let e = Error::new(
                    ErrorKind::Closed,
                    format!(
                        "raft node {}: the host closed its state machine during the {what}",
                        sh.id
                    ),
                );
                return (Err(e), id);
            }
            let now = Instant::now();
            if now >= deadline {
                // Forget the request: a late answer is refused (NotFound).
                inner.pending.pop_front();
                inner.queued.retain(|q| q.id != id);
                let e = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "raft node {}: the host's state machine did not answer the {what} \
                         within {:?}",
                        sh.id, sh.timeout
                    ),
                );
                return (Err(e), id);
            }
            inner = sh
                .to_node
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records `e` as the machine's failure and stops the node with it ([`abort_node`]).
    fn fail(&self, e: Error) -> ! {
        self.shared.lock().failure = Some(e.clone());
        abort_node(e)
    }

    /// Makes request `kind` and waits for its answer, after the answer to a deferred
    /// restore (a refused restore stops the node).
    fn call(&self, kind: SmRequestKind) -> Result<Vec<u8>> {
        let mut inner = self.shared.lock();
        if inner.pending.front().is_some_and(|p| p.deferred) {
            let (r, _) = self.wait(inner);
            if let Err(e) = r {
                self.fail(e);
            }
            inner = self.shared.lock();
        }
        self.send(&mut inner, kind, false)?;
        self.wait(inner).0
    }
}

impl StateMachine for RemoteSm {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        let kind = SmRequestKind::Apply {
            index,
            op: op.to_vec(),
        };
        self.call(kind).unwrap_or_else(|e| self.fail(e))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.call(SmRequestKind::Snapshot)
            .unwrap_or_else(|e| self.fail(e))
    }

    fn restore(&mut self, data: &[u8]) -> Result<()> {
        let mut inner = self.shared.lock();
        // A restore right after another unanswered one: settle the first.
        if inner.pending.front().is_some_and(|p| p.deferred) {
            let (r, _) = self.wait(inner);
            if let Err(e) = r {
                self.shared.lock().failure = Some(e.clone());
                return Err(e);
            }
            inner = self.shared.lock();
        }
        let kind = SmRequestKind::Restore {
            data: data.to_vec(),
        };
        let r = self.send(&mut inner, kind, true).map(drop);
        if let Err(e) = &r {
            inner.failure = Some(e.clone());
        }
        r
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        let kind = SmRequestKind::Query {
            query: query.to_vec(),
        };
        self.call(kind)
    }
}

impl Drop for RemoteSm {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.node_gone = true;
        inner.queued.clear();
        inner.pending.clear();
        self.shared.to_host.notify_all();
    }
}

impl RemoteSmHost {
    /// The node's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The node's next request, waiting up to `timeout` for one: `Ok(None)` when none came.
    /// Errors: `Closed` once the node's loop has ended (stopped or failed: its handle's
    /// `stop` says why) or the host closed.
    pub fn next(&self, timeout: Duration) -> Result<Option<SmRequest>> {
        let sh = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut inner = sh.lock();
        loop {
            if inner.closed || inner.node_gone {
                let why = if inner.closed {
                    "the host closed its state machine"
                } else {
                    "the node has stopped"
                };
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("raft node {}: no more requests: {why}", sh.id),
                ));
            }
            if let Some(r) = inner.queued.pop_front() {
                return Ok(Some(r));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            inner = sh
                .to_host
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Answers request `id` with its result (`Apply`: the result bytes; `Snapshot`: the
    /// state; `Restore`: empty; `Query`: the answer) or with an error (the node stops,
    /// except for a `Query`: see the module docs). Answers must come in the order the
    /// requests were fetched. Errors: `NotFound` for an id that is not the oldest request
    /// fetched and unanswered (timed out, answered already, never made), `Closed` once the
    /// node's loop has ended or the host closed.
    pub fn reply(&self, id: u64, result: Result<Vec<u8>>) -> Result<()> {
        let sh = &self.shared;
        let mut inner = sh.lock();
        if inner.closed || inner.node_gone {
            let why = if inner.closed {
                "the host closed its state machine"
            } else {
                "the node has stopped"
            };
            return Err(Error::new(
                ErrorKind::Closed,
                format!(
                    "raft node {}: the answer to request {id} is not taken: {why}",
                    sh.id
                ),
            ));
        }
        let fetched = !inner.queued.iter().any(|q| q.id == id);
        let oldest = inner.pending.front().map(|p| p.id) == Some(id);
        if !oldest || !fetched || inner.answer.is_some() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "raft node {}: request {id} is not awaiting an answer (timed out, \
                     answered already, not fetched yet or never made)",
                    sh.id
                ),
            ));
        }
        inner.answer = Some((id, result));
        sh.to_node.notify_all();
        Ok(())
    }

    /// True while request `id` awaits its answer (made, not answered, not timed out).
    /// Errors: `Closed` as [`next`](Self::next)'s. For a binding that holds a fetched
    /// request back (a caller's buffer was too small) and must not hand out a stale one.
    pub fn awaits(&self, id: u64) -> Result<bool> {
        let inner = self.shared.lock();
        if inner.closed || inner.node_gone {
            return Err(Error::new(
                ErrorKind::Closed,
                format!(
                    "raft node {}: no more requests: the node has stopped or the host closed",
                    self.shared.id
                ),
            ));
        }
        Ok(inner.pending.iter().any(|p| p.id == id) && inner.answer.is_none())
    }

    /// Closes the host's end: the node's next (or current) request stops it with a
    /// `Closed` error, and `next`/`reply` answer `Closed`. Call it before stopping a node
    /// whose thread may be waiting for an answer the host will not give.
    pub fn close(&self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        self.shared.to_node.notify_all();
        self.shared.to_host.notify_all();
    }

    /// The error with which the machine stopped its node (an `Apply` or `Snapshot`
    /// answered with an error, not in time, or interrupted by [`close`](Self::close); a
    /// refused `Restore`), if it did: what the node's `stop` returns, kept here for a
    /// binding that reports host failures apart from its own errors.
    pub fn failure(&self) -> Option<Error> {
        self.shared.lock().failure.clone()
    }

    /// True when the node stopped because the host had closed (a request pending or made
    /// after [`close`](Self::close)):
    /// its `Closed` error then is the host's own doing (a stop), not a failure.
    pub fn interrupted(&self) -> bool {
        self.shared.lock().interrupted
    }
}

impl Drop for RemoteSmHost {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
