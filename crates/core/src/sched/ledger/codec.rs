//! The binary encoding of a [`LedgerRecord`] and the frame both durable ledgers wrap it in.
//!
//! A record body is a tag byte and the record's fields, little-endian, each variable-length
//! field preceded by its length:
//!
//! | tag | record         | fields                                                        |
//! |-----|----------------|---------------------------------------------------------------|
//! | 1   | `Accepted`     | id u64, priority u8, agent type (u8 len + UTF-8), payload (u32 len + bytes) |
//! | 2   | `Leased`       | id u64, attempt u32, deadline u64, agent (u8 len + id)         |
//! | 3   | `Released`     | id u64, reason (u32 len + UTF-8)                               |
//! | 4   | `Completed`    | id u64, result (u32 len + bytes)                               |
//! | 5   | `DeadLettered` | id u64, reason (u32 len + UTF-8)                               |
//!
//! Decoding checks everything (tag, lengths, UTF-8, the agent id and type rules, no trailing
//! bytes): hostile or damaged bytes give `ErrorKind::Corrupt`, never a panic.
//!
//! A frame is `len: u32` (the body's length), `crc: u32` (the CRC32C of the four `len` bytes
//! followed by the body) and the body.

use crate::checksum::{crc32c, crc32c_append};
use crate::error::{Error, Result};
use crate::priority::Priority;
use crate::sched::types::{AgentId, AgentType, LedgerRecord, TaskId};

const TAG_ACCEPTED: u8 = 1;
const TAG_LEASED: u8 = 2;
const TAG_RELEASED: u8 = 3;
const TAG_COMPLETED: u8 = 4;
const TAG_DEAD_LETTERED: u8 = 5;

/// Bytes of a frame before its body: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;

/// The largest record body either ledger accepts (1 GiB).
pub(crate) const MAX_BODY: usize = 1 << 30;

/// The task a record is about.
pub(crate) fn task_of(r: &LedgerRecord) -> TaskId {
    match r {
        LedgerRecord::Accepted { id, .. }
        | LedgerRecord::Leased { id, .. }
        | LedgerRecord::Released { id, .. }
        | LedgerRecord::Completed { id, .. }
        | LedgerRecord::DeadLettered { id, .. } => *id,
    }
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<()> {
    let n = u32::try_from(b.len())
        .ok()
        .filter(|&n| (n as usize) < MAX_BODY)
        .ok_or_else(|| {
            Error::new(
                crate::ErrorKind::TooLarge,
                format!("a ledger record field of {} bytes (at most 1 GiB)", b.len()),
            )
        })?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Appends the body of `r` to `out`.
pub(crate) fn encode_body(r: &LedgerRecord, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    match r {
        LedgerRecord::Accepted {
            id,
            agent_type,
            priority,
            payload,
        } => {
            out.push(TAG_ACCEPTED);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(*priority as u8);
            // An AgentType is 1-255 bytes (checked when it was made).
            out.push(agent_type.as_str().len() as u8);
            out.extend_from_slice(agent_type.as_str().as_bytes());
            put_bytes32(out, payload)?;
        }
        LedgerRecord::Leased {
            id,
            agent,
            attempt,
            deadline,
        } => {
            out.push(TAG_LEASED);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&attempt.to_le_bytes());
            out.extend_from_slice(&deadline.to_le_bytes());
            // An AgentId is 1-194 bytes (checked when it was made).
            out.push(agent.as_str().len() as u8);
            out.extend_from_slice(agent.as_str().as_bytes());
        }
        LedgerRecord::Released { id, reason } => {
            out.push(TAG_RELEASED);
            out.extend_from_slice(&id.0.to_le_bytes());
            put_bytes32(out, reason.as_bytes())?;
        }
        LedgerRecord::Completed { id, result } => {
            out.push(TAG_COMPLETED);
            out.extend_from_slice(&id.0.to_le_bytes());
            put_bytes32(out, result)?;
        }
        LedgerRecord::DeadLettered { id, reason } => {
            out.push(TAG_DEAD_LETTERED);
            out.extend_from_slice(&id.0.to_le_bytes());
            put_bytes32(out, reason.as_bytes())?;
        }
    }
    if out.len() - start > MAX_BODY {
        out.truncate(start);
        return Err(Error::new(
            crate::ErrorKind::TooLarge,
            "a ledger record of more than 1 GiB",
        ));
    }
    Ok(())
}

/// Appends the frame of `r` (length, CRC, body) to `out`.
pub(crate) fn encode_frame(r: &LedgerRecord, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    encode_body(r, out)?;
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = frame_crc(len, &out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The CRC of a frame: over its length field and its body.
pub(crate) fn frame_crc(len: u32, body: &[u8]) -> u32 {
    crc32c_append(crc32c(&len.to_le_bytes()), body)
}

/// A cursor over untrusted bytes.
struct Reader<'a> {
    b: &'a [u8],
}

fn corrupt(what: &str) -> Error {
    Error::corrupt(format!("ledger record: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(corrupt(&format!("truncated {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes32(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn str32(&mut self, what: &str) -> Result<String> {
        let b = self.bytes32(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| corrupt(&format!("{what} is not UTF-8")))
    }
    fn str8(&mut self, what: &str) -> Result<&'a str> {
        let n = self.u8(what)? as usize;
        std::str::from_utf8(self.take(n, what)?)
            .map_err(|_| corrupt(&format!("{what} is not UTF-8")))
    }
}

/// Decodes a record body (every byte of `body`, nothing more).
pub(crate) fn decode_body(body: &[u8]) -> Result<LedgerRecord> {
    let mut r = Reader { b: body };
    let tag = r.u8("tag")?;
    let id = TaskId(r.u64("task id")?);
    let rec = match tag {
        TAG_ACCEPTED => {
            let code = r.u8("priority")?;
            let priority = Priority::from_code(u32::from(code))
                .ok_or_else(|| corrupt(&format!("priority code {code}")))?;
            let agent_type = AgentType::new(r.str8("agent type")?)
                .map_err(|e| corrupt(&format!("agent type: {e}")))?;
            let payload = r.bytes32("payload")?.to_vec();
            LedgerRecord::Accepted {
                id,
                agent_type,
                priority,
                payload,
            }
        }
        TAG_LEASED => {
            let attempt = r.u32("attempt")?;
            let deadline = r.u64("deadline")?;
            let agent =
                AgentId::new(r.str8("agent id")?).map_err(|e| corrupt(&format!("agent: {e}")))?;
            LedgerRecord::Leased {
                id,
                agent,
                attempt,
                deadline,
            }
        }
        TAG_RELEASED => LedgerRecord::Released {
            id,
            reason: r.str32("reason")?,
        },
        TAG_COMPLETED => LedgerRecord::Completed {
            id,
            result: r.bytes32("result")?.to_vec(),
        },
        TAG_DEAD_LETTERED => LedgerRecord::DeadLettered {
            id,
            reason: r.str32("reason")?,
        },
        t => return Err(corrupt(&format!("unknown tag {t}"))),
    };
    if !r.b.is_empty() {
        return Err(corrupt(&format!("{} bytes after the record", r.b.len())));
    }
    Ok(rec)
}

/// What [`decode_frame`] found at the start of some bytes.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A whole frame: the record and the frame's length in bytes.
    Record(LedgerRecord, usize),
    /// The bytes end before the frame does (`len` would need more bytes than there are).
    Truncated,
}

/// Decodes the frame at the start of `b`: `Truncated` when `b` is shorter than the frame says,
/// `Corrupt` when the CRC or the body is wrong.
pub(crate) fn decode_frame(b: &[u8]) -> Result<Frame> {
    if b.len() < FRAME_HEADER {
        return Ok(Frame::Truncated);
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len as usize > MAX_BODY {
        return Err(corrupt(&format!("frame length {len}")));
    }
    let end = FRAME_HEADER + len as usize;
    if b.len() < end {
        return Ok(Frame::Truncated);
    }
    let body = &b[FRAME_HEADER..end];
    if frame_crc(len, body) != crc {
        return Err(corrupt("frame checksum mismatch"));
    }
    Ok(Frame::Record(decode_body(body)?, end))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One record of every kind, with edge-case fields.
    pub(crate) fn every_kind() -> Vec<LedgerRecord> {
        vec![
            LedgerRecord::Accepted {
                id: TaskId(1),
                agent_type: AgentType::new("coder").unwrap(),
                priority: Priority::High,
                payload: b"do it".to_vec(),
            },
            LedgerRecord::Accepted {
                id: TaskId(u64::MAX),
                agent_type: AgentType::new(&"é".repeat(127)).unwrap(),
                priority: Priority::Low,
                payload: vec![],
            },
            LedgerRecord::Leased {
                id: TaskId(1),
                agent: AgentId::new(&"a".repeat(194)).unwrap(),
                attempt: 3,
                deadline: u64::MAX - 1,
            },
            LedgerRecord::Released {
                id: TaskId(1),
                reason: "lease expired ⏰".into(),
            },
            LedgerRecord::Completed {
                id: TaskId(1),
                result: (0..=255).collect(),
            },
            LedgerRecord::DeadLettered {
                id: TaskId(0),
                reason: String::new(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for r in every_kind() {
            let mut f = Vec::new();
            encode_frame(&r, &mut f).unwrap();
            match decode_frame(&f).unwrap() {
                Frame::Record(back, n) => {
                    assert_eq!(back, r);
                    assert_eq!(n, f.len());
                }
                Frame::Truncated => panic!("whole frame read as truncated"),
            }
            for cut in 0..f.len() {
                assert!(matches!(decode_frame(&f[..cut]).unwrap(), Frame::Truncated));
            }
        }
    }

    #[test]
    fn hostile_bodies_are_corrupt_never_a_panic() {
        // Every prefix and every single-byte change of every body decodes or is Corrupt;
        // a decoded change never re-encodes to something else than its bytes.
        for r in every_kind() {
            let mut body = Vec::new();
            encode_body(&r, &mut body).unwrap();
            for cut in 0..body.len() {
                let e = decode_body(&body[..cut]).unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
            }
            for i in 0..body.len() {
                for x in [0x01u8, 0x80, 0xFF] {
                    let mut b = body.clone();
                    b[i] ^= x;
                    match decode_body(&b) {
                        Ok(d) => {
                            let mut again = Vec::new();
                            encode_body(&d, &mut again).unwrap();
                            assert_eq!(again, b, "a decode is the inverse of an encode");
                        }
                        Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Corrupt),
                    }
                }
            }
            let mut long = body.clone();
            long.push(0);
            assert_eq!(
                decode_body(&long).unwrap_err().kind(),
                crate::ErrorKind::Corrupt
            );
        }
        let mut f = Vec::new();
        encode_frame(&every_kind()[0], &mut f).unwrap();
        f[9] ^= 1;
        assert_eq!(
            decode_frame(&f).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
    }
}
