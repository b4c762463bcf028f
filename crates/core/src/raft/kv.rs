//! The state machine a node applies committed operations to, and the reference one: a
//! replicated key-value store with set, get and compare-and-set.

use std::collections::BTreeMap;

use crate::{Error, ErrorKind, Result};

/// What a [`Node`](super::Node) applies committed operations to.
///
/// Every replica applies the same operations in the same order, so `apply` must be
/// deterministic: its result and its effect may depend only on the state and the operation
/// (never on a clock, a random number or the replica). An operation the machine cannot parse
/// is answered (an error result of the machine's own encoding), not a panic: operations are
/// bytes a client proposed.
pub trait StateMachine {
    /// Applies the operation committed at log `index` and returns its result bytes.
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8>;
    /// The whole state, for a snapshot (the log before it is then compacted away).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's (bytes from disk or from the leader: validated).
    fn restore(&mut self, data: &[u8]) -> Result<()>;
    /// Answers a read-only `query` from the current state (a linearizable read when asked
    /// after a ReadIndex confirmed and applied). The default refuses every query.
    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        let _ = query;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this state machine answers no queries",
        ))
    }
    /// Checks a snapshot received from a peer before raft-rs takes it ([`Node::step`]
    /// rejects the message on an error): bytes this accepts, [`restore`](Self::restore) must
    /// accept too, or the node fails in [`Node::ready`]. The default accepts everything.
    ///
    /// [`Node::step`]: super::Node::step
    /// [`Node::ready`]: super::Node::ready
    fn check_snapshot(&self, data: &[u8]) -> Result<()> {
        let _ = data;
        Ok(())
    }
}

/// An operation of the key-value store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Reads `key`. Proposed through the log it is a linearizable read that costs an entry;
    /// the client protocol's `Read` answers it with [`StateMachine::query`] after a ReadIndex
    /// instead (no entry).
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if its value is `expected` (`None`: the key is absent).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value required (`None`: absent).
        expected: Option<Vec<u8>>,
        /// The value set on success.
        new: Vec<u8>,
    },
}

/// The result of a [`KvOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResult {
    /// A set was applied.
    Done,
    /// The value read by a get (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A compare-and-set: whether it swapped, and the value before it.
    Cas {
        /// True when the value matched and was replaced.
        swapped: bool,
        /// The value before the operation (`None`: absent).
        previous: Option<Vec<u8>>,
    },
    /// The operation's bytes did not decode; nothing changed.
    Invalid,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn opt(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

impl KvOp {
    /// The operation's bytes, as proposed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvOp::Set { key, value } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            KvOp::Get { key } => {
                out.push(2);
                put_bytes(&mut out, key);
            }
            KvOp::Cas { key, expected, new } => {
                out.push(3);
                put_bytes(&mut out, key);
                put_opt(&mut out, expected.as_deref());
                put_bytes(&mut out, new);
            }
        }
        out
    }

    /// Decodes an operation; `None` when the bytes are not exactly one.
    pub fn decode(bytes: &[u8]) -> Option<KvOp> {
        let mut r = Reader(bytes);
        let op = match r.u8()? {
            1 => KvOp::Set {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            2 => KvOp::Get { key: r.bytes()? },
            3 => KvOp::Cas {
                key: r.bytes()?,
                expected: r.opt()?,
                new: r.bytes()?,
            },
            _ => return None,
        };
        r.end()?;
        Some(op)
    }
}

impl KvResult {
    /// The result's bytes, as [`StateMachine::apply`] returns them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvResult::Done => out.push(1),
            KvResult::Value(v) => {
                out.push(2);
                put_opt(&mut out, v.as_deref());
            }
            KvResult::Cas { swapped, previous } => {
                out.push(3);
                out.push(u8::from(*swapped));
                put_opt(&mut out, previous.as_deref());
            }
            KvResult::Invalid => out.push(4),
        }
        out
    }

    /// Decodes a result; `None` when the bytes are not exactly one.
    pub fn decode(bytes: &[u8]) -> Option<KvResult> {
        let mut r = Reader(bytes);
        let res = match r.u8()? {
            1 => KvResult::Done,
            2 => KvResult::Value(r.opt()?),
            3 => {
                let swapped = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                KvResult::Cas {
                    swapped,
                    previous: r.opt()?,
                }
            }
            4 => KvResult::Invalid,
            _ => return None,
        };
        r.end()?;
        Some(res)
    }
}

/// The replicated key-value store: the reference [`StateMachine`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: u64,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// The value of `key` in this replica (a local, possibly stale read).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The log index of the last operation applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Applies one operation (decoded) and returns its result.
    pub fn execute(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Set { key, value } => {
                self.map.insert(key, value);
                KvResult::Done
            }
            KvOp::Get { key } => KvResult::Value(self.map.get(&key).cloned()),
            KvOp::Cas { key, expected, new } => {
                let previous = self.map.get(&key).cloned();
                let swapped = previous == expected;
                if swapped {
                    self.map.insert(key, new);
                }
                KvResult::Cas { swapped, previous }
            }
        }
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        self.applied = index;
        match KvOp::decode(op) {
            Some(op) => self.execute(op).encode(),
            None => KvResult::Invalid.encode(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<()> {
        let bad = || Error::corrupt("kv snapshot: truncated or malformed");
        let mut r = Reader(data);
        let applied = r.take(8).ok_or_else(bad)?;
        let n = r.take(8).ok_or_else(bad)?;
        let applied = u64::from_le_bytes(applied.try_into().map_err(|_| bad())?);
        let n = u64::from_le_bytes(n.try_into().map_err(|_| bad())?);
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = r.bytes().ok_or_else(bad)?;
            let v = r.bytes().ok_or_else(bad)?;
            map.insert(k, v);
        }
        r.end().ok_or_else(bad)?;
        self.map = map;
        self.applied = applied;
        Ok(())
    }

    fn check_snapshot(&self, data: &[u8]) -> Result<()> {
        KvStore::new().restore(data)
    }

    /// Answers an encoded [`KvOp::Get`] with the bytes applying it would give (an encoded
    /// [`KvResult::Value`]); any other operation (a set, a cas: not read-only) or bytes that
    /// do not decode are `InvalidArgument`.
    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        match KvOp::decode(query) {
            Some(KvOp::Get { key }) => Ok(KvResult::Value(self.map.get(&key).cloned()).encode()),
            Some(op) => Err(Error::invalid(format!(
                "kv query: only a get is read-only, not {op:?}"
            ))),
            None => Err(Error::invalid(format!(
                "kv query: {} bytes that are not a KV operation",
                query.len()
            ))),
        }
    }
}
