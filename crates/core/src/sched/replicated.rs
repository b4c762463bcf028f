//! The scheduler's ledger replicated by Raft, for a scheduler whose host may be lost: a
//! [`LedgerMachine`] (a [`StateMachine`] run by every node of a Raft cluster) and a
//! [`RaftLedger`] (the [`Ledger`] a [`Scheduler`](super::Scheduler) writes through, a
//! [`RaftClient`] of that cluster). A scheduler on another host recovers with
//! `Scheduler::recover(config, RaftLedger::new(client), now)`: the tasks accepted and not
//! ended, their attempts and the largest id, as from a local ledger — nothing accepted is lost
//! while a quorum of the cluster lives.
//!
//! # Operations
//!
//! Operations are the ledger's own record frames (length, CRC32C, body: the codec of
//! [`ShmLedger`](super::ShmLedger) and [`FileLedger`](super::FileLedger)), validated on apply:
//!
//! * `[1][writer: u64][seq: u64][frames…]` — append the records. Raft's client resends an
//!   operation it had no answer for (at-least-once); the machine keeps, per writer, the last
//!   `seq` applied and skips an append whose `seq` is not newer, so each append takes effect
//!   once. Answer: `[1]` applied, `[2]` a duplicate skipped.
//! * `[2][offset: u32][max: u32]` — as a read ([`StateMachine::query`], what
//!   [`RaftLedger`]'s replay sends: a ReadIndex read, no log entry) or as an operation: a
//!   page of the compacted records (see
//!   [`compact`]) from record `offset`, at most `max` bytes of frames
//!   (at least one record): `[0][version: u64][total: u32][frames…]`. `version` counts the
//!   appends applied; a replay whose pages do not all have the same version starts again.
//!
//! Anything else is answered `[0xff]` with a readable message and changes nothing (every
//! replica refuses it the same way). The snapshot is the compacted records and the writers'
//! sequence numbers.
//!
//! The machine compacts its records (dropping ended tasks) whenever they have doubled since
//! the last compaction, so its memory follows the live tasks, not the history.

use std::collections::BTreeMap;

use super::ledger::codec::{decode_frame, encode_frame, Frame};
use super::ledger::compact;
use super::types::{Ledger, LedgerRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::net::Transport;
use crate::raft::StateMachine;
use crate::replica::client::RaftClient;
use crate::sync::Mutex;

const OP_APPEND: u8 = 1;
const OP_PAGE: u8 = 2;
const ANS_APPLIED: u8 = 1;
const ANS_DUPLICATE: u8 = 2;
const ANS_PAGE: u8 = 0;
const ANS_INVALID: u8 = 0xff;
const SNAP_MAGIC: &[u8; 8] = b"EMFLEDG1";
/// The most bytes of frames one append operation carries (a larger batch is split; a single
/// larger record goes alone). Keeps operations well inside a ring inbox's largest frame.
const MAX_OP_FRAMES: usize = 64 << 10;
/// The bytes of frames a replay asks for per page.
const PAGE_BYTES: u32 = 64 << 10;
/// Writers remembered for duplicate detection.
const MAX_WRITERS: usize = 4096;

/// The replicated ledger's state machine: see the module documentation.
#[derive(Debug, Default)]
pub struct LedgerMachine {
    records: Vec<LedgerRecord>,
    /// `records.len()` right after the last compaction.
    compacted_len: usize,
    /// Per writer: the last sequence number applied and the log index it came at (the
    /// oldest writers are forgotten beyond [`MAX_WRITERS`]).
    writers: BTreeMap<u64, (u64, u64)>,
    /// Appends applied (duplicates not counted).
    version: u64,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every frame of `b` (which must end exactly after the last one).
fn decode_frames(mut b: &[u8]) -> Result<Vec<LedgerRecord>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match decode_frame(b)? {
            Frame::Record(r, n) => {
                out.push(r);
                b = &b[n..];
            }
            Frame::Truncated => {
                return Err(Error::corrupt(
                    "replicated ledger: a record frame is cut short",
                ))
            }
        }
    }
    Ok(out)
}

fn invalid(msg: &str) -> Vec<u8> {
    let mut v = vec![ANS_INVALID];
    v.extend_from_slice(msg.as_bytes());
    v
}

impl LedgerMachine {
    /// An empty ledger.
    pub fn new() -> LedgerMachine {
        LedgerMachine::default()
    }

    /// The records a replay gives now (compacted).
    pub fn records(&self) -> Vec<LedgerRecord> {
        compact(&self.records)
    }

    /// Appends applied so far (duplicates skipped are not counted).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn append(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        let (Some(writer), Some(seq)) = (u64_at(op, 1), u64_at(op, 9)) else {
            return invalid("replicated ledger: an append without writer and sequence");
        };
        let records = match decode_frames(&op[17..]) {
            Ok(r) => r,
            Err(e) => return invalid(e.message()),
        };
        if let Some(&(last, _)) = self.writers.get(&writer) {
            if seq <= last {
                return vec![ANS_DUPLICATE];
            }
        }
        self.writers.insert(writer, (seq, index));
        if self.writers.len() > MAX_WRITERS {
            // Forget the writer heard from longest ago (deterministic: by log index).
            if let Some((&w, _)) = self.writers.iter().min_by_key(|(_, &(_, at))| at) {
                self.writers.remove(&w);
            }
        }
        self.records.extend(records);
        self.version += 1;
        if self.records.len() >= 2 * self.compacted_len.max(512) {
            self.records = compact(&self.records);
            self.compacted_len = self.records.len();
        }
        vec![ANS_APPLIED]
    }

    fn page(&self, op: &[u8]) -> Vec<u8> {
        let (Some(offset), Some(max)) = (u32_at(op, 1), u32_at(op, 5)) else {
            return invalid("replicated ledger: a page request without offset and size");
        };
        if op.len() != 9 {
            return invalid("replicated ledger: a page request of the wrong length");
        }
        let all = compact(&self.records);
        let mut out = vec![ANS_PAGE];
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(all.len() as u32).to_le_bytes());
        let head = out.len();
        for r in all.iter().skip(offset as usize) {
            let before = out.len();
            if encode_frame(r, &mut out).is_err() {
                return invalid("replicated ledger: a record cannot be encoded");
            }
            if out.len() - head > max as usize && before > head {
                out.truncate(before);
                break;
            }
        }
        out
    }
}

impl StateMachine for LedgerMachine {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        match op.first() {
            Some(&OP_APPEND) => self.append(index, op),
            Some(&OP_PAGE) => self.page(op),
            _ => invalid("replicated ledger: not a ledger operation"),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = SNAP_MAGIC.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.writers.len() as u32).to_le_bytes());
        for (w, (seq, at)) in &self.writers {
            for v in [*w, *seq, *at] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for r in compact(&self.records) {
            // Records came from decoded frames: they encode again.
            let _ = encode_frame(&r, &mut out);
        }
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<()> {
        *self = Self::decode_snapshot(data)?;
        Ok(())
    }

    fn check_snapshot(&self, data: &[u8]) -> Result<()> {
        Self::decode_snapshot(data).map(|_| ())
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        if query.first() == Some(&OP_PAGE) {
            Ok(self.page(query))
        } else {
            Err(Error::invalid(
                "replicated ledger: the only query is a page request",
            ))
        }
    }
}

impl LedgerMachine {
    fn decode_snapshot(data: &[u8]) -> Result<LedgerMachine> {
        let bad = |what: &str| Error::corrupt(format!("replicated ledger snapshot: {what}"));
        if data.get(..8) != Some(&SNAP_MAGIC[..]) {
            return Err(bad("bad magic"));
        }
        let version = u64_at(data, 8).ok_or_else(|| bad("cut short"))?;
        let n = u32_at(data, 16).ok_or_else(|| bad("cut short"))? as usize;
        if n > MAX_WRITERS {
            return Err(bad("too many writers"));
        }
        let mut at = 20;
        let mut writers = BTreeMap::new();
        for _ in 0..n {
            let (Some(w), Some(seq), Some(idx)) = (
                u64_at(data, at),
                u64_at(data, at + 8),
                u64_at(data, at + 16),
            ) else {
                return Err(bad("cut short"));
            };
            writers.insert(w, (seq, idx));
            at += 24;
        }
        let records = decode_frames(&data[at..])?;
        Ok(LedgerMachine {
            compacted_len: records.len(),
            records,
            writers,
            version,
        })
    }
}

/// A [`Ledger`] replicated by a Raft cluster running [`LedgerMachine`]: see the module
/// documentation. An append is durable when it returns `Ok` — committed by a quorum (on
/// their durable logs, when the nodes keep them on disk) and applied. Errors are the
/// client's (`Timeout` when no leader committed it in time: the scheduler then stops, as on a
/// local ledger's I/O error, and a recovery replays what was committed).
pub struct RaftLedger<T: Transport> {
    client: Mutex<RaftClient<T>>,
    writer: u64,
    seq: u64,
}

impl<T: Transport> RaftLedger<T> {
    /// A ledger writing through `client`, as writer `writer` (unique among the cluster's
    /// writers: a scheduler incarnation; e.g. random, or its host id and start time).
    pub fn new(client: RaftClient<T>, writer: u64) -> RaftLedger<T> {
        RaftLedger {
            client: Mutex::new(client),
            writer,
            seq: 0,
        }
    }

    /// The client (to ask for the status of the nodes).
    pub fn client(&mut self) -> &mut RaftClient<T> {
        self.client.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster's leader and term ([`RaftClient::leader`]).
    pub fn leader(&self) -> Result<(u64, u64)> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leader()
    }

    fn submit(&self, op: &[u8]) -> Result<Vec<u8>> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let r = c.submit(op)?.result;
        if r.first() == Some(&ANS_INVALID) {
            return Err(Error::invalid(format!(
                "replicated ledger: the cluster refused the operation: {}",
                String::from_utf8_lossy(&r[1..])
            )));
        }
        Ok(r)
    }

    fn append_op(&mut self, frames: &[u8]) -> Result<()> {
        self.seq += 1;
        let mut op = Vec::with_capacity(17 + frames.len());
        op.push(OP_APPEND);
        op.extend_from_slice(&self.writer.to_le_bytes());
        op.extend_from_slice(&self.seq.to_le_bytes());
        op.extend_from_slice(frames);
        let r = self.submit(&op)?;
        match r.first() {
            Some(&ANS_APPLIED) | Some(&ANS_DUPLICATE) => Ok(()),
            _ => Err(Error::corrupt(
                "replicated ledger: an append answered with something else (not a ledger \
                 cluster?)",
            )),
        }
    }
}

impl<T: Transport> Ledger for RaftLedger<T> {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        self.append_batch(std::slice::from_ref(record))
    }

    fn append_batch(&mut self, records: &[LedgerRecord]) -> Result<()> {
        let mut frames = Vec::new();
        for r in records {
            let before = frames.len();
            encode_frame(r, &mut frames)?;
            if frames.len() > MAX_OP_FRAMES && before > 0 {
                let rest = frames.split_off(before);
                self.append_op(&frames)?;
                frames = rest;
            }
        }
        if !frames.is_empty() {
            self.append_op(&frames)?;
        }
        Ok(())
    }

    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        'again: for _attempt in 0..16 {
            let mut out = Vec::new();
            let mut version = None;
            loop {
                let mut op = vec![OP_PAGE];
                op.extend_from_slice(&(out.len() as u32).to_le_bytes());
                op.extend_from_slice(&PAGE_BYTES.to_le_bytes());
                // A linearizable read (ReadIndex on the leader, then the machine's query):
                // no log entry.
                let r = self
                    .client
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(&op)?
                    .result;
                let (Some(&ANS_PAGE), Some(v), Some(total)) =
                    (r.first(), u64_at(&r, 1), u32_at(&r, 9))
                else {
                    return Err(Error::corrupt(
                        "replicated ledger: a page answer that is not one (not a ledger \
                         cluster?)",
                    ));
                };
                if *version.get_or_insert(v) != v {
                    continue 'again; // appended to between pages: read it all again
                }
                let page = decode_frames(&r[13..])?;
                if page.is_empty() && out.len() < total as usize {
                    return Err(Error::corrupt("replicated ledger: an empty page"));
                }
                out.extend(page);
                if out.len() >= total as usize {
                    return Ok(out);
                }
            }
        }
        Err(Error::new(
            ErrorKind::Busy,
            "replicated ledger: appended to during 16 replays in a row",
        ))
    }
}

#[cfg(test)]
mod tests;
