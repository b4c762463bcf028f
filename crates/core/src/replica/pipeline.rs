//! Pipelined submits: many operations in flight from one [`RaftClient`].
//!
//! [`RaftClient::submit`] sends one operation and waits for its answer, so a client commits at
//! most one operation per round trip and the leader's batching has nothing to batch. A
//! [`Pipeline`] keeps up to [`PipelineOptions::window`] `Submit` requests outstanding, each
//! under its own request id, and matches the answers by id as they come (answers of one node
//! arrive in commit order, but answers of different nodes, retries and redirects interleave).
//! The wire format is the [client protocol](super::proto)'s, unchanged: a pipeline is the same
//! requests, sent without waiting.
//!
//! Every operation ends as exactly one [`Done`], in the order answers arrive:
//!
//! * `Ok` — committed: [`Done::outcome`] holds the index and the state machine's result;
//! * `NotLeader` — the operation is sent again to the leader named (or, when none is known,
//!   to the next node after [`PipelineOptions::backoff`]);
//! * `Busy`, or the transport answering `Full` — sent again after the back-off;
//! * no answer within [`PipelineOptions::resend_after`] (the node died) — sent again to the
//!   next node: at-least-once, as [`ClientOptions::resend_unanswered`]. A late answer to the
//!   first send is then a stray, counted and ignored;
//! * `Error` — the operation is done with that error.
//!
//! Nothing is dropped silently: [`Pipeline::submit`] answers [`ErrorKind::Full`] when the
//! window is full (poll first), and every operation taken is in flight until its `Done`.
//!
//! [`ClientOptions::resend_unanswered`]: super::client::ClientOptions::resend_unanswered

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Committed, RaftClient};
use super::proto::{Answer, Request};
use super::TAG_APP;
use crate::error::{Error, ErrorKind, Result};
use crate::net::{NodeId, Transport};

/// How a [`Pipeline`] sends and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Operations in flight at most (sent or waiting to be sent again). Keep the window's
    /// requests within the leader's inbox and its answers within the client's.
    pub window: usize,
    /// An operation unanswered this long is sent again to the next node.
    pub resend_after: Duration,
    /// The pause before an operation answered `Busy` (or `NotLeader` without a leader, or
    /// refused by the transport) is sent again.
    pub backoff: Duration,
}

impl Default for PipelineOptions {
    /// 1024 operations in flight, resent after 500 ms without an answer, 1 ms back-off.
    fn default() -> Self {
        PipelineOptions {
            window: 1024,
            resend_after: Duration::from_millis(500),
            backoff: Duration::from_millis(1),
        }
    }
}

/// A finished operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The caller's tag given to [`Pipeline::submit`].
    pub tag: u64,
    /// Committed (index, result, the node that answered), or the `Error` answer.
    pub outcome: Result<Committed>,
    /// When the answer was received.
    pub at: Instant,
}

/// A pipeline's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// `Submit` requests sent (first sends and resends).
    pub sent: u64,
    /// Operations finished.
    pub done: u64,
    /// `NotLeader` answers followed.
    pub redirects: u64,
    /// `Busy` answers and sends refused with `Full`.
    pub busy: u64,
    /// Requests sent again for want of an answer.
    pub resent: u64,
    /// Frames that were not an answer to a request in flight.
    pub stray: u64,
}

/// An operation sent and not yet answered.
struct Inflight {
    tag: u64,
    op: Vec<u8>,
    node: u64,
    sent: Instant,
}

/// An operation waiting to be sent (again).
struct Queued {
    tag: u64,
    op: Vec<u8>,
    not_before: Instant,
}

/// Many submits in flight over one client: see the module docs.
pub struct Pipeline {
    opts: PipelineOptions,
    next_req: u64,
    inflight: HashMap<u64, Inflight>,
    queue: VecDeque<Queued>,
    done: VecDeque<Done>,
    stats: PipelineStats,
    /// When in-flight operations are next checked for a missing answer (the check walks
    /// them all: done every `resend_after / 8`, not every poll).
    next_check: Instant,
}

fn next_node(nodes: &[u64], after: u64) -> u64 {
    let i = nodes.iter().position(|&n| n == after).unwrap_or(0);
    nodes[(i + 1) % nodes.len()]
}

impl Pipeline {
    /// An empty pipeline. `InvalidArgument` for a zero window or resend time.
    pub fn new(opts: PipelineOptions) -> Result<Pipeline> {
        if opts.window == 0 || opts.resend_after.is_zero() {
            return Err(Error::invalid(format!(
                "pipeline: window and resend_after must be positive: {opts:?}"
            )));
        }
        // Request ids from the clock, in the upper half of the id space: apart from the ids
        // of the client's own calls, and from a previous pipeline's on the same inbox.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Pipeline {
            opts,
            next_req: t | (1 << 63),
            inflight: HashMap::new(),
            queue: VecDeque::new(),
            done: VecDeque::new(),
            stats: PipelineStats::default(),
            next_check: Instant::now() + opts.resend_after / 8,
        })
    }

    /// The options.
    pub fn options(&self) -> PipelineOptions {
        self.opts
    }

    /// The counters.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// Operations taken and not yet finished (sent, or waiting to be sent again).
    pub fn in_flight(&self) -> usize {
        self.inflight.len() + self.queue.len()
    }

    /// True when [`submit`](Self::submit) would take an operation.
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.opts.window
    }

    /// Takes `op` under the caller's `tag` and sends it to the client's leader hint (or
    /// queues it when the transport pushes back). `Full` when the window is full: poll.
    pub fn submit<T: Transport>(
        &mut self,
        c: &mut RaftClient<T>,
        op: Vec<u8>,
        tag: u64,
    ) -> Result<()> {
        if !self.has_room() {
            return Err(Error::new(
                ErrorKind::Full,
                format!(
                    "pipeline: {} operations in flight (the window)",
                    self.opts.window
                ),
            ));
        }
        let now = Instant::now();
        if self.queue.is_empty() {
            self.send(c, tag, op, now)?;
        } else {
            // Keep the order behind operations waiting to be sent.
            self.queue.push_back(Queued {
                tag,
                op,
                not_before: now,
            });
        }
        Ok(())
    }

    /// Sends one operation to the leader hint; on back-pressure or a closed peer it is
    /// queued. Errors: the transport's other errors.
    fn send<T: Transport>(
        &mut self,
        c: &mut RaftClient<T>,
        tag: u64,
        op: Vec<u8>,
        now: Instant,
    ) -> Result<()> {
        let node = c.leader_hint();
        self.next_req = self.next_req.wrapping_add(1) | (1 << 63);
        let req = self.next_req;
        let r = Request::Submit { op };
        let mut b = vec![TAG_APP];
        b.extend_from_slice(&r.encode(req));
        let Request::Submit { op } = r else {
            unreachable!("built above")
        };
        match c.transport_mut().send(NodeId(node), &b) {
            Ok(()) => {
                self.stats.sent += 1;
                self.inflight.insert(
                    req,
                    Inflight {
                        tag,
                        op,
                        node,
                        sent: now,
                    },
                );
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::Full | ErrorKind::Closed) => {
                self.stats.busy += 1;
                if e.kind() == ErrorKind::Closed {
                    c.set_leader_hint(next_node(c.nodes(), node));
                }
                self.queue.push_front(Queued {
                    tag,
                    op,
                    not_before: now + self.opts.backoff,
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Receives answers (waiting up to `timeout` for the first when none is ready), follows
    /// redirects, sends again what is due: the number of operations finished by this call
    /// (take them with [`take_done`](Self::take_done)). Errors: the transport's.
    pub fn poll<T: Transport>(
        &mut self,
        c: &mut RaftClient<T>,
        timeout: Duration,
    ) -> Result<usize> {
        let before = self.done.len();
        let mut frame = if timeout.is_zero() {
            c.transport_mut().try_recv()?
        } else if self.inflight.is_empty() {
            // Nothing to hear from: wait for the first queued operation's back-off.
            if let Some(q) = self.queue.front() {
                let pause = q.not_before.saturating_duration_since(Instant::now());
                std::thread::sleep(pause.min(timeout));
            }
            c.transport_mut().try_recv()?
        } else {
            c.transport_mut().recv_timeout(timeout)?
        };
        let mut got = 0usize;
        while let Some(f) = frame.take() {
            self.answer(c, f.from.0, &f.payload);
            got += 1;
            // Bounded, so the resends below run under a steady stream of answers.
            if got >= 4 * self.opts.window {
                break;
            }
            frame = c.transport_mut().try_recv()?;
        }
        let now = Instant::now();
        // Unanswered for too long: to the next node. (An operation is resent between
        // `resend_after` and `resend_after * 9 / 8` after its send.)
        if now >= self.next_check {
            self.next_check = now + self.opts.resend_after / 8;
            let late: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(_, f)| now.duration_since(f.sent) >= self.opts.resend_after)
                .map(|(&r, _)| r)
                .collect();
            for r in late {
                let f = self.inflight.remove(&r).expect("listed");
                self.stats.resent += 1;
                if c.leader_hint() == f.node {
                    c.set_leader_hint(next_node(c.nodes(), f.node));
                }
                self.queue.push_back(Queued {
                    tag: f.tag,
                    op: f.op,
                    not_before: now,
                });
            }
        }
        // The queue, in order, as far as it is due and the transport takes it.
        while self.queue.front().is_some_and(|q| q.not_before <= now) {
            let q = self.queue.pop_front().expect("checked");
            let queued = self.queue.len();
            self.send(c, q.tag, q.op, now)?;
            if self.queue.len() > queued {
                break; // pushed back
            }
        }
        Ok(self.done.len() - before)
    }

    fn answer<T: Transport>(&mut self, c: &mut RaftClient<T>, from: u64, payload: &[u8]) {
        if payload.first() != Some(&TAG_APP) {
            self.stats.stray += 1;
            return;
        }
        let Ok((req, a)) = Answer::decode(&payload[1..]) else {
            self.stats.stray += 1;
            return;
        };
        if self.inflight.get(&req).is_none_or(|f| f.node != from) {
            self.stats.stray += 1;
            return;
        }
        let f = self.inflight.remove(&req).expect("found");
        let now = Instant::now();
        let outcome = match a {
            Answer::Ok { index, result } => {
                c.set_leader_hint(from);
                Ok(Committed {
                    index,
                    result,
                    node: from,
                })
            }
            Answer::Error { kind, message } => {
                Err(Error::new(kind, format!("node {from}: {message}")))
            }
            Answer::Status(_) | Answer::Membership(_) => Err(Error::corrupt(format!(
                "pipeline: node {from} answered a submit with {a:?}"
            ))),
            Answer::NotLeader { leader } => {
                self.stats.redirects += 1;
                let not_before = match leader {
                    Some(l) if l != from && c.nodes().contains(&l) => {
                        c.set_leader_hint(l);
                        now
                    }
                    _ => {
                        // An election is under way: try the next node after the back-off.
                        if c.leader_hint() == from {
                            c.set_leader_hint(next_node(c.nodes(), from));
                        }
                        now + self.opts.backoff
                    }
                };
                self.queue.push_back(Queued {
                    tag: f.tag,
                    op: f.op,
                    not_before,
                });
                return;
            }
            Answer::Busy { retry_after_ms } => {
                self.stats.busy += 1;
                let pause = self
                    .opts
                    .backoff
                    .max(Duration::from_millis(retry_after_ms.into()));
                self.queue.push_back(Queued {
                    tag: f.tag,
                    op: f.op,
                    not_before: now + pause,
                });
                return;
            }
        };
        self.stats.done += 1;
        self.done.push_back(Done {
            tag: f.tag,
            outcome,
            at: now,
        });
    }

    /// The next finished operation, in the order answers arrived.
    pub fn take_done(&mut self) -> Option<Done> {
        self.done.pop_front()
    }

    /// Polls until every operation taken has finished, at most `timeout`: `Timeout` with the
    /// number still in flight otherwise (they stay in flight).
    pub fn drain<T: Transport>(&mut self, c: &mut RaftClient<T>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "pipeline: {} operations still in flight after {timeout:?}",
                        self.in_flight()
                    ),
                ));
            }
            self.poll(
                c,
                (deadline - now).min(self.opts.backoff.max(Duration::from_millis(1))),
            )?;
        }
        Ok(())
    }
}

impl<T: Transport> RaftClient<T> {
    /// Submits every operation of `ops` with up to `window` of them in flight at once (a
    /// [`Pipeline`]) and waits, at most the client's [`timeout`](super::ClientOptions::timeout)
    /// in all, until each has an answer: one result per operation, in the order of `ops`.
    /// What the hosts' batch submits call: one call commits many operations in a few round
    /// trips, and the leader batches them, where [`submit`](Self::submit) waits for each.
    ///
    /// Each operation is at-least-once, as with `submit`. An operation still unanswered at
    /// the deadline is `Timeout` (it may yet commit: Raft cannot tell); an `Error` answer is
    /// that operation's error; a transport error ends the call, and every operation not yet
    /// answered is that error. `window` 0 is `InvalidArgument`.
    pub fn submit_many<B: AsRef<[u8]>>(
        &mut self,
        ops: &[B],
        window: usize,
    ) -> Result<Vec<Result<Committed>>> {
        let timeout = self.options().timeout;
        let mut p = Pipeline::new(PipelineOptions {
            window,
            resend_after: self.options().attempt_timeout,
            backoff: self.options().backoff_min.max(Duration::from_micros(100)),
        })?;
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Option<Result<Committed>>> = vec![None; ops.len()];
        let mut next = 0;
        let mut failed: Option<Error> = None;
        let collect = |p: &mut Pipeline, out: &mut Vec<Option<Result<Committed>>>| {
            while let Some(d) = p.take_done() {
                out[d.tag as usize] = Some(d.outcome);
            }
        };
        while next < ops.len() || p.in_flight() > 0 {
            while next < ops.len() && p.has_room() {
                if let Err(e) = p.submit(self, ops[next].as_ref().to_vec(), next as u64) {
                    failed = Some(e);
                    break;
                }
                next += 1;
            }
            if failed.is_some() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(1));
            if let Err(e) = p.poll(self, wait) {
                failed = Some(e);
                break;
            }
            collect(&mut p, &mut out);
        }
        collect(&mut p, &mut out);
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(match &failed {
                        Some(e) => e.clone(),
                        None => Error::new(
                            ErrorKind::Timeout,
                            format!("raft: no answer within {timeout:?} (may yet commit)"),
                        ),
                    })
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ring::{RingNetOptions, RingTransport};
    use crate::testutil::TempDir;

    /// Answers every request waiting in `t`'s inbox with what `reply` says.
    fn answer_all(t: &mut RingTransport, mut reply: impl FnMut(u64, Vec<u8>) -> Answer) -> usize {
        let mut n = 0;
        while let Some(f) = t.try_recv().unwrap() {
            let (req, r) = Request::decode(&f.payload[1..]).unwrap();
            let Request::Submit { op } = r else {
                panic!("{r:?}")
            };
            let mut b = vec![TAG_APP];
            b.extend_from_slice(&reply(req, op).encode(req));
            t.send(f.from, &b).unwrap();
            n += 1;
        }
        n
    }

    /// Node 1 never answers, node 2 redirects to 3 once then is busy, node 3 commits: every
    /// operation ends once, committed by node 3; a stray answer is counted and ignored.
    #[test]
    #[cfg_attr(miri, ignore = "shared memory and real time")]
    fn resend_redirect_busy_stray() {
        let dir = TempDir::new("replica-pipeline-unit");
        let o = || RingNetOptions::in_dir(&dir.0);
        let ids = [1u64, 2, 3];
        let mut nodes: Vec<RingTransport> = ids
            .iter()
            .map(|&i| RingTransport::open(NodeId(i), &[NodeId(100)], o()).unwrap())
            .collect();
        let peers: Vec<NodeId> = ids.iter().map(|&i| NodeId(i)).collect();
        let t = RingTransport::open(NodeId(100), &peers, o()).unwrap();
        let mut c = RaftClient::new(t, &ids, super::super::ClientOptions::default()).unwrap();
        let opts = PipelineOptions {
            window: 8,
            resend_after: Duration::from_millis(20),
            backoff: Duration::from_millis(1),
        };
        let mut p = Pipeline::new(opts).unwrap();
        for k in 0..8u64 {
            p.submit(&mut c, vec![k as u8], k).unwrap();
        }
        let e = p.submit(&mut c, vec![9], 9).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full);
        assert_eq!(p.in_flight(), 8);
        // A stray: an answer nobody asked for.
        let mut b = vec![TAG_APP];
        b.extend_from_slice(&Answer::Busy { retry_after_ms: 0 }.encode(12345));
        nodes[2].send(NodeId(100), &b).unwrap();
        let mut redirected = false;
        let mut index = 0;
        let mut seen = [false; 8];
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.iter().any(|s| !s) {
            assert!(Instant::now() < deadline, "{:?}", p.stats());
            p.poll(&mut c, Duration::from_millis(2)).unwrap();
            // Node 1 is silent: its inbox just fills.
            answer_all(&mut nodes[1], |_, _| {
                if redirected {
                    Answer::Busy { retry_after_ms: 0 }
                } else {
                    redirected = true;
                    Answer::NotLeader { leader: Some(3) }
                }
            });
            answer_all(&mut nodes[2], |_, op| {
                index += 1;
                Answer::Ok { index, result: op }
            });
            while let Some(d) = p.take_done() {
                let cm = d.outcome.unwrap();
                assert_eq!((cm.node, cm.result.clone()), (3, vec![d.tag as u8]));
                assert!(!seen[d.tag as usize], "{} twice", d.tag);
                seen[d.tag as usize] = true;
            }
        }
        p.drain(&mut c, Duration::from_secs(1)).unwrap();
        let s = p.stats();
        assert!(s.resent >= 8 && s.redirects >= 1 && s.stray >= 1, "{s:?}");
        assert_eq!((s.done, p.in_flight(), c.leader_hint()), (8, 0, 3));
        assert!(Pipeline::new(PipelineOptions {
            resend_after: Duration::ZERO,
            ..opts
        })
        .is_err());
    }
}
