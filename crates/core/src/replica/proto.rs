//! The client protocol of a Raft node: requests and answers carried in app frames
//! ([`TAG_APP`](super::TAG_APP)) over the cluster's transport.
//!
//! # Wire format, version 1
//!
//! Every message (after the transport's app tag) starts with a 10-byte header:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0     | protocol version ([`VERSION`], 1) |
//! | 1     | kind: a request `0x01..=0x7f`, an answer `0x81..=0xff` |
//! | 2..10 | request id, `u64` little-endian, chosen by the client and echoed by the answer |
//!
//! then the kind's body (integers little-endian, `bytes` = a `u32` length and the bytes; the
//! body must end exactly where the message does):
//!
//! | kind | name | body |
//! |------|------|------|
//! | 0x01 | Submit | `op: bytes` — an operation for the state machine (for the replicated KV store, a [`KvOp`](crate::raft::KvOp) encoded) |
//! | 0x02 | WaitCommitted | `index: u64`, `timeout_ms: u32` — answer once this node has applied `index` |
//! | 0x03 | Status | — |
//! | 0x04 | Read | `query: bytes` — a read-only query for the state machine ([`StateMachine::query`](crate::raft::StateMachine::query); for the KV store an encoded [`KvOp::Get`](crate::raft::KvOp)), answered from the leader's state after a ReadIndex (linearizable) |
//! | 0x05 | TransferLeader | `to: u64` — hand leadership to voter `to`; answered when `to` leads |
//! | 0x06 | ChangeMembership | `changes: u32` count (at most [`MAX_CHANGES`]) and (`kind: u8` — 1 add voter, 2 add learner, 3 remove — `node: u64`) each |
//! | 0x07 | Membership | — |
//! | 0x81 | Ok | `index: u64`, `result: bytes` — a Submit committed at `index` with the state machine's result; a WaitCommitted's applied index (empty result); a Read's confirmed read index with the query's answer; a TransferLeader's new term (empty result); a ChangeMembership's log index once the joint configuration is applied (empty result) |
//! | 0x82 | NotLeader | `leader: u64` — the leader this node knows, 0 when it knows none |
//! | 0x83 | Busy | `retry_after_ms: u32` — not done, safe to send again (back-pressure, or leadership lost before the operation was applied) |
//! | 0x84 | Error | `code: u8` (an [`ErrorKind`], see [`error_code`]), `message: bytes` (UTF-8) |
//! | 0x85 | Status | `id, leader, term, commit, applied: u64`, `voters: u32` count and `u64` each, `stats: u32` count and (`name: bytes`, `value: u64`) each |
//! | 0x86 | Membership | four id lists, each a `u32` count (at most [`MAX_VOTERS`]) and `u64` each: voters, learners, outgoing voters (joint only), learners next (joint only) — see [`Membership`] |
//!
//! Kinds 0x04–0x07 and 0x86 were added to version 1 without changing any earlier encoding: a
//! node of an older build answers them `Error` (`corrupt`: unknown request kind).
//!
//! A Submit is answered once its fate is known: `Ok` when committed and applied, `Busy` when it
//! was dropped (never applied: resend it), `NotLeader` on a follower, `Error` with code
//! `timeout` when the node cannot tell any more (a snapshot covered it: it may have been
//! applied). A client that gets no answer (the node died) cannot tell either: resending gives
//! at-least-once semantics, so operations that may be resent should be idempotent (set) or
//! conditional (cas).
//!
//! A Read is answered only by the leader, once a quorum confirmed it still leads at the read
//! index and that index is applied (`NotLeader` elsewhere; `Busy` when leadership was lost
//! first: ask again); reads write no log entry. A ChangeMembership is `Error` (`busy`, with
//! the reason) while another change or a leadership transfer is under way, and
//! `invalid argument` with a readable reason for a change that cannot be made (e.g. the
//! leader removing itself: "transfer leadership first").
//!
//! Every byte is validated by [`Request::decode`] and [`Answer::decode`]: truncated, trailing
//! or oversized fields, unknown kinds and versions are errors (`Corrupt`, or `Unsupported`
//! for another version), never a panic, and nothing is allocated from an unchecked length.

use crate::error::{Error, ErrorKind, Result};
use crate::raft::{MemberChange, Membership};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of the header: version, kind, request id.
pub const HEADER_LEN: usize = 10;
/// The longest error message sent or accepted, in bytes.
pub const MAX_MESSAGE: usize = 4096;
/// The most voters a status may list.
pub const MAX_VOTERS: usize = 1024;
/// The most stats a status may carry.
pub const MAX_STATS: usize = 256;
/// The longest stat name, in bytes.
pub const MAX_STAT_NAME: usize = 64;
/// The most member changes one request may carry.
pub const MAX_CHANGES: usize = 64;

const REQ_SUBMIT: u8 = 0x01;
const REQ_WAIT: u8 = 0x02;
const REQ_STATUS: u8 = 0x03;
const REQ_READ: u8 = 0x04;
const REQ_TRANSFER: u8 = 0x05;
const REQ_CHANGE: u8 = 0x06;
const REQ_MEMBERSHIP: u8 = 0x07;
const ANS_OK: u8 = 0x81;
const ANS_NOT_LEADER: u8 = 0x82;
const ANS_BUSY: u8 = 0x83;
const ANS_ERROR: u8 = 0x84;
const ANS_STATUS: u8 = 0x85;
const ANS_MEMBERSHIP: u8 = 0x86;
const CHANGE_VOTER: u8 = 1;
const CHANGE_LEARNER: u8 = 2;
const CHANGE_REMOVE: u8 = 3;

/// A client's request to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Replicate `op` (opaque bytes for the state machine) and answer when it is applied.
    Submit {
        /// The operation.
        op: Vec<u8>,
    },
    /// Answer once this node has applied log index `index`, or with a `timeout` error after
    /// `timeout_ms` (a node caps it).
    WaitCommitted {
        /// The log index.
        index: u64,
        /// The longest wait, in milliseconds.
        timeout_ms: u32,
    },
    /// The node's [`Status`].
    Status,
    /// A linearizable read: the leader confirms it still leads (ReadIndex), then answers
    /// `query` from its applied state ([`StateMachine::query`]).
    ///
    /// [`StateMachine::query`]: crate::raft::StateMachine::query
    Read {
        /// The query (for the KV store, an encoded [`KvOp::Get`](crate::raft::KvOp)).
        query: Vec<u8>,
    },
    /// Hand leadership to voter `to`; answered `Ok` with the new term once `to` leads.
    TransferLeader {
        /// The voter to lead.
        to: u64,
    },
    /// A membership change by joint consensus; answered `Ok` with its log index once the
    /// joint configuration is applied (the leader then leaves it on its own).
    ChangeMembership {
        /// The changes, made together.
        changes: Vec<MemberChange>,
    },
    /// The node's configuration ([`Answer::Membership`]).
    Membership,
}

/// What a node knows of itself and the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The node's id.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index.
    pub applied: u64,
    /// The voters of its configuration (a node sends them in increasing order).
    pub voters: Vec<u64>,
    /// Named counters (the host loop's, the node's and the server's), in a stable order.
    pub stats: Vec<(String, u64)>,
}

impl Status {
    /// The counter named `name`, if the node sent one.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

/// A node's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Done: a Submit committed at `index` with the state machine's `result`; a
    /// WaitCommitted's applied index, `result` empty.
    Ok {
        /// The log index.
        index: u64,
        /// The state machine's result bytes.
        result: Vec<u8>,
    },
    /// This node does not lead; `leader` is the one it knows (`None`: none yet).
    NotLeader {
        /// The leader's id.
        leader: Option<u64>,
    },
    /// Not done: send the request again (after about `retry_after_ms`).
    Busy {
        /// A hint, in milliseconds.
        retry_after_ms: u32,
    },
    /// Failed: the kind and a readable message.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// Why.
        message: String,
    },
    /// The answer to [`Request::Status`].
    Status(Status),
    /// The answer to [`Request::Membership`]: the configuration the node has applied.
    Membership(Membership),
}

impl Answer {
    /// An `Error` answer from an [`Error`] (the message cut to [`MAX_MESSAGE`] bytes).
    pub fn from_error(e: &Error) -> Answer {
        Answer::Error {
            kind: e.kind(),
            message: truncate(e.message(), MAX_MESSAGE).to_owned(),
        }
    }
}

/// The stable wire code of an error kind (0 is never sent).
pub fn error_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => 1,
        ErrorKind::Full => 2,
        ErrorKind::Empty => 3,
        ErrorKind::Timeout => 4,
        ErrorKind::Closed => 5,
        ErrorKind::Corrupt => 6,
        ErrorKind::Io => 7,
        ErrorKind::NotLeader => 8,
        ErrorKind::Unsupported => 9,
        ErrorKind::TooLarge => 10,
        ErrorKind::NotFound => 11,
        ErrorKind::Busy => 12,
    }
}

/// The error kind of a wire code; `None` for a code this build does not know.
pub fn error_kind(code: u8) -> Option<ErrorKind> {
    Some(match code {
        1 => ErrorKind::InvalidArgument,
        2 => ErrorKind::Full,
        3 => ErrorKind::Empty,
        4 => ErrorKind::Timeout,
        5 => ErrorKind::Closed,
        6 => ErrorKind::Corrupt,
        7 => ErrorKind::Io,
        8 => ErrorKind::NotLeader,
        9 => ErrorKind::Unsupported,
        10 => ErrorKind::TooLarge,
        11 => ErrorKind::NotFound,
        12 => ErrorKind::Busy,
        _ => return None,
    })
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn header(kind: u8, req: u64, body: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + body);
    b.push(VERSION);
    b.push(kind);
    b.extend_from_slice(&req.to_le_bytes());
    b
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A bounds-checked reader over bytes from the wire.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::corrupt(format!(
                "client protocol: {what} needs {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A length-prefixed field of at most `max` bytes (checked against what is left before
    /// anything is allocated).
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(Error::corrupt(format!(
                "client protocol: {what} of {n} bytes is beyond the {max}-byte limit"
            )));
        }
        self.take(n, what)
    }
    fn count(&mut self, max: usize, each: usize, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n > max || n.saturating_mul(each) > self.0.len() {
            return Err(Error::corrupt(format!(
                "client protocol: {n} {what} (at most {max}, {} bytes left)",
                self.0.len()
            )));
        }
        Ok(n)
    }
    fn end(&self, what: &str) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt(format!(
                "client protocol: {} bytes after the end of {what}",
                self.0.len()
            )))
        }
    }
}

/// Reads the header: (kind, request id, body). `Unsupported` for another version.
fn read_header(bytes: &[u8]) -> Result<(u8, u64, Reader<'_>)> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::corrupt(format!(
            "client protocol: a {}-byte message is shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "client protocol version {} (this build speaks {VERSION})",
                bytes[0]
            ),
        ));
    }
    let req = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    Ok((bytes[1], req, Reader(&bytes[HEADER_LEN..])))
}

/// The request id of a message whose header is readable (any version), to address an error
/// answer to a request that did not decode.
pub fn request_id(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= HEADER_LEN && bytes[1] < 0x80)
        .then(|| u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes")))
}

impl Request {
    /// The request's bytes with request id `req`.
    pub fn encode(&self, req: u64) -> Vec<u8> {
        match self {
            Request::Submit { op } => {
                let mut b = header(REQ_SUBMIT, req, 4 + op.len());
                put_bytes(&mut b, op);
                b
            }
            Request::WaitCommitted { index, timeout_ms } => {
                let mut b = header(REQ_WAIT, req, 12);
                b.extend_from_slice(&index.to_le_bytes());
                b.extend_from_slice(&timeout_ms.to_le_bytes());
                b
            }
            Request::Status => header(REQ_STATUS, req, 0),
            Request::Read { query } => {
                let mut b = header(REQ_READ, req, 4 + query.len());
                put_bytes(&mut b, query);
                b
            }
            Request::TransferLeader { to } => {
                let mut b = header(REQ_TRANSFER, req, 8);
                b.extend_from_slice(&to.to_le_bytes());
                b
            }
            Request::ChangeMembership { changes } => {
                let changes = &changes[..changes.len().min(MAX_CHANGES)];
                let mut b = header(REQ_CHANGE, req, 4 + 9 * changes.len());
                b.extend_from_slice(&(changes.len() as u32).to_le_bytes());
                for c in changes {
                    let (k, id) = match *c {
                        MemberChange::AddVoter(id) => (CHANGE_VOTER, id),
                        MemberChange::AddLearner(id) => (CHANGE_LEARNER, id),
                        MemberChange::Remove(id) => (CHANGE_REMOVE, id),
                    };
                    b.push(k);
                    b.extend_from_slice(&id.to_le_bytes());
                }
                b
            }
            Request::Membership => header(REQ_MEMBERSHIP, req, 0),
        }
    }

    /// Decodes a request: (request id, request). Errors on anything malformed (see the
    /// module docs).
    pub fn decode(bytes: &[u8]) -> Result<(u64, Request)> {
        let (kind, req, mut r) = read_header(bytes)?;
        let out = match kind {
            REQ_SUBMIT => Request::Submit {
                op: r
                    .bytes(u32::MAX as usize, "a submitted operation")?
                    .to_vec(),
            },
            REQ_WAIT => Request::WaitCommitted {
                index: r.u64("a wait's index")?,
                timeout_ms: r.u32("a wait's timeout")?,
            },
            REQ_STATUS => Request::Status,
            REQ_READ => Request::Read {
                query: r.bytes(u32::MAX as usize, "a read's query")?.to_vec(),
            },
            REQ_TRANSFER => Request::TransferLeader {
                to: r.u64("a transfer's node")?,
            },
            REQ_CHANGE => {
                let n = r.count(MAX_CHANGES, 9, "member changes")?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.u8("a member change")?;
                    let id = r.u64("a member change's node")?;
                    changes.push(match k {
                        CHANGE_VOTER => MemberChange::AddVoter(id),
                        CHANGE_LEARNER => MemberChange::AddLearner(id),
                        CHANGE_REMOVE => MemberChange::Remove(id),
                        k => {
                            return Err(Error::corrupt(format!(
                                "client protocol: unknown member change kind {k}"
                            )))
                        }
                    });
                }
                Request::ChangeMembership { changes }
            }
            REQ_MEMBERSHIP => Request::Membership,
            k => {
                return Err(Error::corrupt(format!(
                    "client protocol: unknown request kind {k:#04x}"
                )))
            }
        };
        r.end("a request")?;
        Ok((req, out))
    }
}

impl Answer {
    /// The answer's bytes for request id `req`.
    pub fn encode(&self, req: u64) -> Vec<u8> {
        match self {
            Answer::Ok { index, result } => {
                let mut b = header(ANS_OK, req, 12 + result.len());
                b.extend_from_slice(&index.to_le_bytes());
                put_bytes(&mut b, result);
                b
            }
            Answer::NotLeader { leader } => {
                let mut b = header(ANS_NOT_LEADER, req, 8);
                b.extend_from_slice(&leader.unwrap_or(0).to_le_bytes());
                b
            }
            Answer::Busy { retry_after_ms } => {
                let mut b = header(ANS_BUSY, req, 4);
                b.extend_from_slice(&retry_after_ms.to_le_bytes());
                b
            }
            Answer::Error { kind, message } => {
                let m = truncate(message, MAX_MESSAGE);
                let mut b = header(ANS_ERROR, req, 5 + m.len());
                b.push(error_code(*kind));
                put_bytes(&mut b, m.as_bytes());
                b
            }
            Answer::Status(s) => {
                let mut b = header(ANS_STATUS, req, 64 + 8 * s.voters.len());
                for v in [s.id, s.leader, s.term, s.commit, s.applied] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                let voters = &s.voters[..s.voters.len().min(MAX_VOTERS)];
                b.extend_from_slice(&(voters.len() as u32).to_le_bytes());
                for v in voters {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                let stats = &s.stats[..s.stats.len().min(MAX_STATS)];
                b.extend_from_slice(&(stats.len() as u32).to_le_bytes());
                for (name, v) in stats {
                    put_bytes(&mut b, truncate(name, MAX_STAT_NAME).as_bytes());
                    b.extend_from_slice(&v.to_le_bytes());
                }
                b
            }
            Answer::Membership(m) => {
                let lists = [&m.voters, &m.learners, &m.voters_outgoing, &m.learners_next];
                let n: usize = lists.iter().map(|l| l.len().min(MAX_VOTERS)).sum();
                let mut b = header(ANS_MEMBERSHIP, req, 16 + 8 * n);
                for l in lists {
                    let l = &l[..l.len().min(MAX_VOTERS)];
                    b.extend_from_slice(&(l.len() as u32).to_le_bytes());
                    for v in l {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                }
                b
            }
        }
    }

    /// Decodes an answer: (request id, answer). Errors on anything malformed (see the module
    /// docs).
    pub fn decode(bytes: &[u8]) -> Result<(u64, Answer)> {
        let (kind, req, mut r) = read_header(bytes)?;
        let out = match kind {
            ANS_OK => Answer::Ok {
                index: r.u64("an answer's index")?,
                result: r.bytes(u32::MAX as usize, "an answer's result")?.to_vec(),
            },
            ANS_NOT_LEADER => Answer::NotLeader {
                leader: Some(r.u64("a leader id")?).filter(|&l| l != 0),
            },
            ANS_BUSY => Answer::Busy {
                retry_after_ms: r.u32("a retry hint")?,
            },
            ANS_ERROR => {
                let code = r.u8("an error code")?;
                let kind = error_kind(code).ok_or_else(|| {
                    Error::corrupt(format!("client protocol: unknown error code {code}"))
                })?;
                let m = r.bytes(MAX_MESSAGE, "an error message")?;
                Answer::Error {
                    kind,
                    message: String::from_utf8_lossy(m).into_owned(),
                }
            }
            ANS_STATUS => {
                let mut s = Status {
                    id: r.u64("a status")?,
                    leader: r.u64("a status")?,
                    term: r.u64("a status")?,
                    commit: r.u64("a status")?,
                    applied: r.u64("a status")?,
                    ..Status::default()
                };
                let n = r.count(MAX_VOTERS, 8, "voters")?;
                for _ in 0..n {
                    s.voters.push(r.u64("a voter")?);
                }
                let n = r.count(MAX_STATS, 12, "stats")?;
                for _ in 0..n {
                    let name = r.bytes(MAX_STAT_NAME, "a stat name")?;
                    let name = std::str::from_utf8(name)
                        .map_err(|_| Error::corrupt("client protocol: a stat name is not UTF-8"))?;
                    s.stats.push((name.to_owned(), r.u64("a stat value")?));
                }
                Answer::Status(s)
            }
            ANS_MEMBERSHIP => {
                let mut lists: [Vec<u64>; 4] = Default::default();
                for l in &mut lists {
                    let n = r.count(MAX_VOTERS, 8, "members")?;
                    for _ in 0..n {
                        l.push(r.u64("a member")?);
                    }
                }
                let [voters, learners, voters_outgoing, learners_next] = lists;
                Answer::Membership(Membership {
                    voters,
                    learners,
                    voters_outgoing,
                    learners_next,
                })
            }
            k => {
                return Err(Error::corrupt(format!(
                    "client protocol: unknown answer kind {k:#04x}"
                )))
            }
        };
        r.end("an answer")?;
        Ok((req, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            id: 2,
            leader: 1,
            term: 7,
            commit: 99,
            applied: 98,
            voters: vec![1, 2, 3],
            stats: vec![("sent".into(), 5), ("rejected".into(), 0)],
        }
    }

    fn answers() -> Vec<Answer> {
        vec![
            Answer::Ok {
                index: 42,
                result: b"res".to_vec(),
            },
            Answer::Ok {
                index: 1,
                result: Vec::new(),
            },
            Answer::NotLeader { leader: Some(3) },
            Answer::NotLeader { leader: None },
            Answer::Busy { retry_after_ms: 5 },
            Answer::Error {
                kind: ErrorKind::Timeout,
                message: "slow".into(),
            },
            Answer::Status(status()),
            Answer::Status(Status::default()),
            Answer::Membership(Membership {
                voters: vec![1, 2, 4],
                learners: vec![5],
                voters_outgoing: vec![1, 2, 3],
                learners_next: vec![3],
            }),
            Answer::Membership(Membership::default()),
        ]
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Submit { op: b"op".to_vec() },
            Request::Submit { op: Vec::new() },
            Request::WaitCommitted {
                index: 9,
                timeout_ms: 100,
            },
            Request::Status,
            Request::Read {
                query: b"get k".to_vec(),
            },
            Request::Read { query: Vec::new() },
            Request::TransferLeader { to: 3 },
            Request::ChangeMembership {
                changes: vec![
                    MemberChange::AddVoter(4),
                    MemberChange::AddLearner(5),
                    MemberChange::Remove(u64::MAX),
                ],
            },
            Request::ChangeMembership {
                changes: Vec::new(),
            },
            Request::Membership,
        ]
    }

    #[test]
    fn round_trips() {
        for (i, r) in requests().into_iter().enumerate() {
            let b = r.encode(i as u64 + 1000);
            assert_eq!(b[0], VERSION);
            assert_eq!(request_id(&b), Some(i as u64 + 1000));
            assert_eq!(Request::decode(&b).unwrap(), (i as u64 + 1000, r));
            assert!(Answer::decode(&b).is_err(), "a request is not an answer");
        }
        for (i, a) in answers().into_iter().enumerate() {
            let b = a.encode(i as u64);
            assert_eq!(Answer::decode(&b).unwrap(), (i as u64, a));
            assert!(Request::decode(&b).is_err(), "an answer is not a request");
            assert_eq!(request_id(&b), None);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let reqs = requests().into_iter().map(|r| r.encode(7));
        let ans = answers().into_iter().map(|a| a.encode(7));
        for b in reqs.chain(ans) {
            let is_req = b[1] < 0x80;
            let dec = |x: &[u8]| {
                if is_req {
                    Request::decode(x).map(|_| ())
                } else {
                    Answer::decode(x).map(|_| ())
                }
            };
            for n in 0..b.len() {
                let e = dec(&b[..n]).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{n} of {b:?}: {e}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(dec(&longer).unwrap_err().kind(), ErrorKind::Corrupt);
        }
    }

    #[test]
    fn bad_versions_kinds_codes_and_lengths_are_refused() {
        let mut b = Request::Status.encode(1);
        b[0] = 2;
        let e = Request::decode(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("version 2"), "{e}");
        assert_eq!(request_id(&b), Some(1), "still answerable");
        for k in [0u8, 0x08, 0x7f, 0x80, 0x87, 0xff] {
            let mut b = Request::Status.encode(1);
            b[1] = k;
            assert!(Request::decode(&b).is_err() && Answer::decode(&b).is_err());
        }
        let mut b = Answer::Error {
            kind: ErrorKind::Io,
            message: "x".into(),
        }
        .encode(1);
        b[HEADER_LEN] = 0;
        assert!(Answer::decode(&b).unwrap_err().message().contains("code 0"));
        // A length beyond what is there (or beyond the limit) allocates nothing and fails.
        let mut b = Request::Submit { op: vec![1] }.encode(1);
        b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&b).unwrap_err().kind(), ErrorKind::Corrupt);
        let mut b = Answer::Status(status()).encode(1);
        b[HEADER_LEN + 40..HEADER_LEN + 44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Answer::decode(&b).unwrap_err().message().contains("voters"));
        // Member changes: an unknown kind, more than the limit, a count beyond the body.
        let changes = Request::ChangeMembership {
            changes: vec![MemberChange::AddVoter(4)],
        };
        for k in [0u8, 4, 0xff] {
            let mut b = changes.encode(1);
            b[HEADER_LEN + 4] = k;
            let e = Request::decode(&b).unwrap_err();
            assert!(e.message().contains("member change kind"), "{e}");
        }
        for n in [2u32, MAX_CHANGES as u32 + 1, u32::MAX] {
            let mut b = changes.encode(1);
            b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&n.to_le_bytes());
            let e = Request::decode(&b).unwrap_err();
            assert!(e.message().contains("member changes"), "{n}: {e}");
        }
        let many = Request::ChangeMembership {
            changes: vec![MemberChange::Remove(1); MAX_CHANGES + 5],
        };
        match Request::decode(&many.encode(1)).unwrap().1 {
            Request::ChangeMembership { changes } => assert_eq!(changes.len(), MAX_CHANGES),
            r => panic!("{r:?}"),
        }
        let mut b = Answer::Membership(Membership::default()).encode(1);
        b[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Answer::decode(&b)
            .unwrap_err()
            .message()
            .contains("members"));
        // Invalid UTF-8 in a message is shown, not refused; in a stat name it is refused.
        let mut b = Answer::Error {
            kind: ErrorKind::Io,
            message: "ab".into(),
        }
        .encode(1);
        let n = b.len();
        b[n - 1] = 0xff;
        match Answer::decode(&b).unwrap().1 {
            Answer::Error { message, .. } => assert_eq!(message, "a\u{fffd}"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let a = Answer::Error {
            kind: ErrorKind::Io,
            message: "é".repeat(MAX_MESSAGE),
        };
        let (_, back) = Answer::decode(&a.encode(1)).unwrap();
        let Answer::Error { message, .. } = back else {
            panic!()
        };
        assert_eq!(message.len(), MAX_MESSAGE);
        assert!(message.chars().all(|c| c == 'é'));
        for code in 0..=255u8 {
            if let Some(k) = error_kind(code) {
                assert_eq!(error_code(k), code);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: garbage of every length, and mutated valid
        // messages (more likely to get past the header).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<Vec<u8>> = requests()
            .into_iter()
            .map(|r| r.encode(3))
            .chain(answers().into_iter().map(|a| a.encode(3)))
            .collect();
        let mut decoded = 0;
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                (0..next() % 80).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                valid[(next() % valid.len() as u64) as usize].clone()
            };
            if !b.is_empty() {
                let n = b.len() as u64;
                b[(next() % n) as usize] = next() as u8;
            }
            decoded += usize::from(Request::decode(&b).is_ok());
            decoded += usize::from(Answer::decode(&b).is_ok());
            let _ = request_id(&b);
        }
        assert!(
            decoded > 0,
            "some mutations stay valid (a changed byte in a body)"
        );
    }
}
