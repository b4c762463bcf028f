//! The PBFT wire format: versioned, length-checked, signed.
//!
//! Every message is `"PB"`, the format version (1), a kind byte, the fields little-endian,
//! then the sender's 64-byte signature over everything before it. Variable-length fields are
//! a `u32` length then the bytes; lists are a `u32` count then the items, each embedded
//! message being a length-prefixed complete message with its own signature (a pre-prepare
//! carries its clients' signed requests, a view change the signed pre-prepares and prepares of
//! its certificates). Every length and count is checked against the bytes that remain and the
//! configured limits before anything is allocated; trailing bytes are refused. Encoding is
//! deterministic, so a signature is checked over the re-encoded fields.

use sha2::{Digest as _, Sha256};

use super::auth::{Authenticator, Principal, Signature};
use crate::error::{Error, ErrorKind, Result};

/// A SHA-256 digest.
pub(crate) type Digest = [u8; 32];

const MAGIC: [u8; 2] = *b"PB";
const VERSION: u8 = 1;
const HEADER: usize = 4;
const SIG: usize = 64;

/// Bounds a decoder enforces (from [`super::Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_message: usize,
    pub max_op: usize,
    pub max_batch: usize,
    pub n: usize,
}

/// A client's request, signed by the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Request {
    pub client: u64,
    pub timestamp: u64,
    pub op: Vec<u8>,
    pub sig: Signature,
}

/// The primary's ordering of a batch at `seq` in `view`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PrePrepare {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub batch: Vec<Request>,
    pub replica: u32,
    pub sig: Signature,
}

/// A prepare or a commit vote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Vote {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub replica: u32,
    pub sig: Signature,
}

/// A replica's answer to a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Reply {
    pub view: u64,
    pub client: u64,
    pub timestamp: u64,
    pub replica: u32,
    pub tentative: bool,
    pub result: Vec<u8>,
    pub sig: Signature,
}

/// "My state after executing up to `seq` has digest `digest`."
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub digest: Digest,
    pub replica: u32,
    pub sig: Signature,
}

/// A pre-prepare and 2f matching prepares from distinct backups.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PreparedCert {
    pub pre_prepare: PrePrepare,
    pub prepares: Vec<Vote>,
}

/// A replica's vote to move to `new_view`, with what it knows must survive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ViewChange {
    pub new_view: u64,
    pub stable_seq: u64,
    pub stable_digest: Digest,
    /// 2f + 1 checkpoints of (`stable_seq`, `stable_digest`); empty when `stable_seq` is 0.
    pub proof: Vec<Checkpoint>,
    pub prepared: Vec<PreparedCert>,
    pub replica: u32,
    pub sig: Signature,
}

/// The new primary's proof that `view` starts, and the pre-prepares it re-issues.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NewView {
    pub view: u64,
    pub view_changes: Vec<ViewChange>,
    pub pre_prepares: Vec<PrePrepare>,
    pub replica: u32,
    pub sig: Signature,
}

/// A lagging replica asks for the state at the stable checkpoint `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Fetch {
    pub seq: u64,
    pub replica: u32,
    pub sig: Signature,
}

/// The state at checkpoint `seq` (checked against the stable checkpoint's digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct StateMsg {
    pub seq: u64,
    pub state: Vec<u8>,
    pub replica: u32,
    pub sig: Signature,
}

/// Any PBFT message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Message {
    Request(Request),
    PrePrepare(PrePrepare),
    Prepare(Vote),
    Commit(Vote),
    Reply(Reply),
    Checkpoint(Checkpoint),
    ViewChange(ViewChange),
    NewView(NewView),
    Fetch(Fetch),
    State(StateMsg),
}

const K_REQUEST: u8 = 1;
const K_PRE_PREPARE: u8 = 2;
const K_PREPARE: u8 = 3;
const K_COMMIT: u8 = 4;
const K_REPLY: u8 = 5;
const K_CHECKPOINT: u8 = 6;
const K_VIEW_CHANGE: u8 = 7;
const K_NEW_VIEW: u8 = 8;
const K_FETCH: u8 = 9;
const K_STATE: u8 = 10;

/// A byte writer.
#[derive(Default)]
pub(crate) struct W(pub Vec<u8>);

impl W {
    fn header(kind: u8) -> W {
        W(vec![MAGIC[0], MAGIC[1], VERSION, kind])
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn digest(&mut self, d: &Digest) {
        self.0.extend_from_slice(d);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn list<T>(&mut self, items: &[T], mut put: impl FnMut(&mut W, &T)) {
        self.u32(items.len() as u32);
        for it in items {
            put(self, it);
        }
    }
}

/// A checked byte reader: every read fails with [`ErrorKind::Corrupt`] past the end.
pub(crate) struct R<'a> {
    b: &'a [u8],
}

fn short() -> Error {
    Error::corrupt("pbft: message truncated")
}

impl<'a> R<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        R { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(short());
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn digest(&mut self) -> Result<Digest> {
        Ok(self.take(32)?.try_into().unwrap())
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("pbft: {what} of {len} bytes exceeds the limit of {max}"),
            ));
        }
        self.take(len)
    }
    /// A list count, each item being at least `min_item` bytes and at most `max` items.
    fn count(&mut self, min_item: usize, max: usize, what: &'static str) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("pbft: {n} {what} exceed the limit of {max}"),
            ));
        }
        if n.saturating_mul(min_item) > self.b.len() {
            return Err(short());
        }
        Ok(n)
    }
    pub fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt("pbft: trailing bytes after a message"))
        }
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::corrupt("pbft: a flag is neither 0 nor 1")),
        }
    }
}

/// Splits a message into (kind, fields, signature) after checking its frame.
fn frame<'a>(bytes: &'a [u8], lim: &Limits) -> Result<(u8, &'a [u8], Signature)> {
    if bytes.len() > lim.max_message {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "pbft: message of {} bytes exceeds the limit of {}",
                bytes.len(),
                lim.max_message
            ),
        ));
    }
    if bytes.len() < HEADER + SIG {
        return Err(short());
    }
    if bytes[..2] != MAGIC {
        return Err(Error::corrupt("pbft: not a PBFT message (bad magic)"));
    }
    if bytes[2] != VERSION {
        return Err(Error::corrupt(format!(
            "pbft: unsupported message version {}",
            bytes[2]
        )));
    }
    let (body, sig) = bytes.split_at(bytes.len() - SIG);
    Ok((bytes[3], &body[HEADER..], sig.try_into().unwrap()))
}

fn expect<'a>(bytes: &'a [u8], kind: u8, lim: &Limits) -> Result<(R<'a>, Signature)> {
    let (k, body, sig) = frame(bytes, lim)?;
    if k != kind {
        return Err(Error::corrupt(format!(
            "pbft: embedded message of kind {k} where kind {kind} belongs"
        )));
    }
    Ok((R::new(body), sig))
}

fn replica_id(r: &mut R<'_>, lim: &Limits) -> Result<u32> {
    let id = r.u32()?;
    if id as usize >= lim.n {
        return Err(Error::corrupt(format!("pbft: no replica {id}")));
    }
    Ok(id)
}

impl Request {
    fn put(&self, w: &mut W) {
        w.u64(self.client);
        w.u64(self.timestamp);
        w.bytes(&self.op);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        Ok(Request {
            client: r.u64()?,
            timestamp: r.u64()?,
            op: r.bytes(lim.max_op, "operation")?.to_vec(),
            sig,
        })
    }
    /// The signed bytes.
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_REQUEST);
        self.put(&mut w);
        w.0
    }
    pub fn encode(&self) -> Vec<u8> {
        with_sig(self.body(), &self.sig)
    }
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (mut r, sig) = expect(bytes, K_REQUEST, lim)?;
        let m = Self::get(&mut r, lim, sig)?;
        r.end()?;
        Ok(m)
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
    pub fn verify(&self, keys: &impl Authenticator) -> bool {
        keys.verify(Principal::Client(self.client), &self.body(), &self.sig)
    }
}

fn with_sig(mut body: Vec<u8>, sig: &Signature) -> Vec<u8> {
    body.extend_from_slice(sig);
    body
}

/// The digest of a batch: SHA-256 over its requests' complete (signed) encodings.
pub(crate) fn batch_digest(batch: &[Request]) -> Digest {
    let mut h = Sha256::new();
    h.update((batch.len() as u64).to_le_bytes());
    for r in batch {
        let e = r.encode();
        h.update((e.len() as u64).to_le_bytes());
        h.update(&e);
    }
    h.finalize().into()
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

impl PrePrepare {
    fn put(&self, w: &mut W) {
        w.u64(self.view);
        w.u64(self.seq);
        w.digest(&self.digest);
        w.list(&self.batch, |w, r| w.bytes(&r.encode()));
        w.u32(self.replica);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        let view = r.u64()?;
        let seq = r.u64()?;
        let digest = r.digest()?;
        let n = r.count(4 + HEADER + SIG + 20, lim.max_batch, "requests in a batch")?;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            batch.push(Request::decode(r.bytes(lim.max_message, "request")?, lim)?);
        }
        let replica = replica_id(r, lim)?;
        if batch_digest(&batch) != digest {
            return Err(Error::corrupt(
                "pbft: pre-prepare digest does not match its batch",
            ));
        }
        Ok(PrePrepare {
            view,
            seq,
            digest,
            batch,
            replica,
            sig,
        })
    }
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_PRE_PREPARE);
        self.put(&mut w);
        w.0
    }
    pub fn encode(&self) -> Vec<u8> {
        with_sig(self.body(), &self.sig)
    }
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (mut r, sig) = expect(bytes, K_PRE_PREPARE, lim)?;
        let m = Self::get(&mut r, lim, sig)?;
        r.end()?;
        Ok(m)
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
    /// The primary's signature and every request's client signature.
    pub fn verify(&self, keys: &impl Authenticator) -> bool {
        keys.verify(Principal::Replica(self.replica), &self.body(), &self.sig)
            && self.batch.iter().all(|r| r.verify(keys))
    }
}

impl Vote {
    fn put(&self, w: &mut W) {
        w.u64(self.view);
        w.u64(self.seq);
        w.digest(&self.digest);
        w.u32(self.replica);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        Ok(Vote {
            view: r.u64()?,
            seq: r.u64()?,
            digest: r.digest()?,
            replica: replica_id(r, lim)?,
            sig,
        })
    }
    pub fn body(&self, commit: bool) -> Vec<u8> {
        let mut w = W::header(if commit { K_COMMIT } else { K_PREPARE });
        self.put(&mut w);
        w.0
    }
    pub fn encode(&self, commit: bool) -> Vec<u8> {
        with_sig(self.body(commit), &self.sig)
    }
    pub fn decode_prepare(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (mut r, sig) = expect(bytes, K_PREPARE, lim)?;
        let m = Self::get(&mut r, lim, sig)?;
        r.end()?;
        Ok(m)
    }
    pub fn sign(&mut self, keys: &impl Authenticator, commit: bool) {
        self.sig = keys.sign(&self.body(commit));
    }
    pub fn verify(&self, keys: &impl Authenticator, commit: bool) -> bool {
        keys.verify(
            Principal::Replica(self.replica),
            &self.body(commit),
            &self.sig,
        )
    }
}

impl Reply {
    fn put(&self, w: &mut W) {
        w.u64(self.view);
        w.u64(self.client);
        w.u64(self.timestamp);
        w.u32(self.replica);
        w.u8(self.tentative as u8);
        w.bytes(&self.result);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        Ok(Reply {
            view: r.u64()?,
            client: r.u64()?,
            timestamp: r.u64()?,
            replica: replica_id(r, lim)?,
            tentative: r.bool()?,
            result: r.bytes(lim.max_message, "result")?.to_vec(),
            sig,
        })
    }
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_REPLY);
        self.put(&mut w);
        w.0
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
    pub fn verify(&self, keys: &impl Authenticator) -> bool {
        keys.verify(Principal::Replica(self.replica), &self.body(), &self.sig)
    }
}

impl Checkpoint {
    fn put(&self, w: &mut W) {
        w.u64(self.seq);
        w.digest(&self.digest);
        w.u32(self.replica);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        Ok(Checkpoint {
            seq: r.u64()?,
            digest: r.digest()?,
            replica: replica_id(r, lim)?,
            sig,
        })
    }
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_CHECKPOINT);
        self.put(&mut w);
        w.0
    }
    pub fn encode(&self) -> Vec<u8> {
        with_sig(self.body(), &self.sig)
    }
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (mut r, sig) = expect(bytes, K_CHECKPOINT, lim)?;
        let m = Self::get(&mut r, lim, sig)?;
        r.end()?;
        Ok(m)
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
    pub fn verify(&self, keys: &impl Authenticator) -> bool {
        keys.verify(Principal::Replica(self.replica), &self.body(), &self.sig)
    }
}

impl ViewChange {
    fn put(&self, w: &mut W) {
        w.u64(self.new_view);
        w.u64(self.stable_seq);
        w.digest(&self.stable_digest);
        w.list(&self.proof, |w, c| w.bytes(&c.encode()));
        w.list(&self.prepared, |w, p| {
            w.bytes(&p.pre_prepare.encode());
            w.list(&p.prepares, |w, v| w.bytes(&v.encode(false)));
        });
        w.u32(self.replica);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        let new_view = r.u64()?;
        let stable_seq = r.u64()?;
        let stable_digest = r.digest()?;
        let min_embedded = 4 + HEADER + SIG;
        let n = r.count(min_embedded, lim.n, "checkpoints in a proof")?;
        let mut proof = Vec::with_capacity(n);
        for _ in 0..n {
            proof.push(Checkpoint::decode(
                r.bytes(lim.max_message, "checkpoint")?,
                lim,
            )?);
        }
        let n = r.count(2 * min_embedded, lim.max_message, "prepared certificates")?;
        let mut prepared = Vec::with_capacity(n);
        for _ in 0..n {
            let pre_prepare = PrePrepare::decode(r.bytes(lim.max_message, "pre-prepare")?, lim)?;
            let k = r.count(min_embedded, lim.n, "prepares in a certificate")?;
            let mut prepares = Vec::with_capacity(k);
            for _ in 0..k {
                prepares.push(Vote::decode_prepare(
                    r.bytes(lim.max_message, "prepare")?,
                    lim,
                )?);
            }
            prepared.push(PreparedCert {
                pre_prepare,
                prepares,
            });
        }
        Ok(ViewChange {
            new_view,
            stable_seq,
            stable_digest,
            proof,
            prepared,
            replica: replica_id(r, lim)?,
            sig,
        })
    }
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_VIEW_CHANGE);
        self.put(&mut w);
        w.0
    }
    pub fn encode(&self) -> Vec<u8> {
        with_sig(self.body(), &self.sig)
    }
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (mut r, sig) = expect(bytes, K_VIEW_CHANGE, lim)?;
        let m = Self::get(&mut r, lim, sig)?;
        r.end()?;
        Ok(m)
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
}

impl NewView {
    fn put(&self, w: &mut W) {
        w.u64(self.view);
        w.list(&self.view_changes, |w, v| w.bytes(&v.encode()));
        w.list(&self.pre_prepares, |w, p| w.bytes(&p.encode()));
        w.u32(self.replica);
    }
    fn get(r: &mut R<'_>, lim: &Limits, sig: Signature) -> Result<Self> {
        let view = r.u64()?;
        let min_embedded = 4 + HEADER + SIG;
        let n = r.count(min_embedded, lim.n, "view changes")?;
        let mut view_changes = Vec::with_capacity(n);
        for _ in 0..n {
            view_changes.push(ViewChange::decode(
                r.bytes(lim.max_message, "view change")?,
                lim,
            )?);
        }
        let n = r.count(min_embedded, lim.max_message, "pre-prepares")?;
        let mut pre_prepares = Vec::with_capacity(n);
        for _ in 0..n {
            pre_prepares.push(PrePrepare::decode(
                r.bytes(lim.max_message, "pre-prepare")?,
                lim,
            )?);
        }
        Ok(NewView {
            view,
            view_changes,
            pre_prepares,
            replica: replica_id(r, lim)?,
            sig,
        })
    }
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_NEW_VIEW);
        self.put(&mut w);
        w.0
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
}

impl Fetch {
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_FETCH);
        w.u64(self.seq);
        w.u32(self.replica);
        w.0
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
}

impl StateMsg {
    pub fn body(&self) -> Vec<u8> {
        let mut w = W::header(K_STATE);
        w.u64(self.seq);
        w.bytes(&self.state);
        w.u32(self.replica);
        w.0
    }
    pub fn sign(&mut self, keys: &impl Authenticator) {
        self.sig = keys.sign(&self.body());
    }
}

impl Message {
    /// The complete encoding (fields then signature).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Request(m) => m.encode(),
            Message::PrePrepare(m) => m.encode(),
            Message::Prepare(m) => m.encode(false),
            Message::Commit(m) => m.encode(true),
            Message::Reply(m) => with_sig(m.body(), &m.sig),
            Message::Checkpoint(m) => m.encode(),
            Message::ViewChange(m) => m.encode(),
            Message::NewView(m) => with_sig(m.body(), &m.sig),
            Message::Fetch(m) => with_sig(m.body(), &m.sig),
            Message::State(m) => with_sig(m.body(), &m.sig),
        }
    }

    /// Decodes and structurally validates one message (signatures are checked by the
    /// receiver, which knows the keys).
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Self> {
        let (kind, body, sig) = frame(bytes, lim)?;
        let mut r = R::new(body);
        let m = match kind {
            K_REQUEST => Message::Request(Request::get(&mut r, lim, sig)?),
            K_PRE_PREPARE => Message::PrePrepare(PrePrepare::get(&mut r, lim, sig)?),
            K_PREPARE => Message::Prepare(Vote::get(&mut r, lim, sig)?),
            K_COMMIT => Message::Commit(Vote::get(&mut r, lim, sig)?),
            K_REPLY => Message::Reply(Reply::get(&mut r, lim, sig)?),
            K_CHECKPOINT => Message::Checkpoint(Checkpoint::get(&mut r, lim, sig)?),
            K_VIEW_CHANGE => Message::ViewChange(ViewChange::get(&mut r, lim, sig)?),
            K_NEW_VIEW => Message::NewView(NewView::get(&mut r, lim, sig)?),
            K_FETCH => Message::Fetch(Fetch {
                seq: r.u64()?,
                replica: replica_id(&mut r, lim)?,
                sig,
            }),
            K_STATE => Message::State(StateMsg {
                seq: r.u64()?,
                state: r.bytes(lim.max_message, "state")?.to_vec(),
                replica: replica_id(&mut r, lim)?,
                sig,
            }),
            k => return Err(Error::corrupt(format!("pbft: unknown message kind {k}"))),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            max_message: 1 << 20,
            max_op: 1024,
            max_batch: 8,
            n: 4,
        }
    }

    fn req(ts: u64) -> Request {
        Request {
            client: 9,
            timestamp: ts,
            op: vec![ts as u8; 3],
            sig: [ts as u8; 64],
        }
    }

    fn samples() -> Vec<Message> {
        let batch = vec![req(1), req(2)];
        let pp = PrePrepare {
            view: 1,
            seq: 2,
            digest: batch_digest(&batch),
            batch,
            replica: 1,
            sig: [3; 64],
        };
        let vote = Vote {
            view: 1,
            seq: 2,
            digest: pp.digest,
            replica: 2,
            sig: [4; 64],
        };
        let cp = Checkpoint {
            seq: 4,
            digest: [5; 32],
            replica: 3,
            sig: [6; 64],
        };
        let vc = ViewChange {
            new_view: 2,
            stable_seq: 4,
            stable_digest: [5; 32],
            proof: vec![cp.clone(), cp.clone()],
            prepared: vec![PreparedCert {
                pre_prepare: pp.clone(),
                prepares: vec![vote.clone()],
            }],
            replica: 0,
            sig: [7; 64],
        };
        vec![
            Message::Request(req(5)),
            Message::PrePrepare(pp.clone()),
            Message::Prepare(vote.clone()),
            Message::Commit(vote),
            Message::Reply(Reply {
                view: 1,
                client: 9,
                timestamp: 5,
                replica: 3,
                tentative: true,
                result: b"ok".to_vec(),
                sig: [8; 64],
            }),
            Message::Checkpoint(cp),
            Message::ViewChange(vc.clone()),
            Message::NewView(NewView {
                view: 2,
                view_changes: vec![vc],
                pre_prepares: vec![pp],
                replica: 2,
                sig: [9; 64],
            }),
            Message::Fetch(Fetch {
                seq: 4,
                replica: 1,
                sig: [1; 64],
            }),
            Message::State(StateMsg {
                seq: 4,
                state: vec![1, 2, 3],
                replica: 2,
                sig: [2; 64],
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(Message::decode(&b, &lim()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for m in samples() {
            let b = m.encode();
            for cut in 0..b.len() {
                // The frame's length and the trailing-bytes check refuse every prefix.
                assert!(
                    Message::decode(&b[..cut], &lim()).is_err(),
                    "a {cut}-byte prefix of {m:?} decoded"
                );
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(Message::decode(&longer, &lim()).is_err());
        }
    }

    #[test]
    fn limits_are_checked_before_allocation() {
        let mut big = req(1);
        big.op = vec![0; 2000];
        let e = Message::decode(&big.encode(), &lim()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        // A list count claiming four billion items in a short message.
        let mut w = W::header(K_PRE_PREPARE);
        w.u64(0);
        w.u64(1);
        w.digest(&[0; 32]);
        w.u32(u32::MAX);
        let mut b = w.0;
        b.extend_from_slice(&[0; 64]);
        assert!(Message::decode(&b, &lim()).is_err());
        let small = Limits {
            max_message: 100,
            ..lim()
        };
        let e = Message::decode(&samples()[1].encode(), &small).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert_eq!(
            Message::decode(b"XX\x01\x01", &lim()).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let seeds = samples().iter().map(Message::encode).collect::<Vec<_>>();
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = seeds[i % seeds.len()].clone();
            let flips = 1 + (x % 4) as usize;
            for k in 0..flips {
                let pos = ((x >> (8 * k)) as usize) % b.len();
                b[pos] ^= (x >> 32) as u8 | 1;
            }
            let _ = Message::decode(&b, &lim());
        }
    }
}
