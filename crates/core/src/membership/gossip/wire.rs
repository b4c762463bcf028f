//! The gossip wire format: little-endian, versioned, every length checked before use.
//!
//! Every datagram starts with two bytes, the format version ([`WIRE_VERSION`]) and a kind;
//! the rest depends on the kind:
//!
//! | kind | name      | body |
//! |------|-----------|------|
//! | 1    | push      | `u32 n`, then `n` entries: `u64 counter, u64 origin, u8 flags` (bit 0: has a value), `u32 key_len, key`, then with a value `u32 value_len, value`, else (a tombstone) `u64 age_us`, its age at the sender |
//! | 2    | pull      | `u8 flags` (bit 0: anti-entropy, pull back), `u8 bits`, then `2^bits` bucket hashes (`u64`) |
//! | 3    | summaries | `u32 n`, then `n` × (`u64 key_hash, u64 counter, u64 origin`) |
//! | 4    | want      | `u32 n`, then `n` key hashes (`u64`) |
//!
//! A count is checked against the bytes left (each element has a minimum size) before any
//! allocation, a key or value length against the configured maxima, and a datagram must be
//! consumed exactly: trailing bytes are corruption.

use super::Version;
use crate::error::{Error, ErrorKind, Result};

/// The wire format version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

pub(crate) const KIND_PUSH: u8 = 1;
pub(crate) const KIND_PULL: u8 = 2;
pub(crate) const KIND_SUMMARIES: u8 = 3;
pub(crate) const KIND_WANT: u8 = 4;

/// Bytes of the header of push, summaries and want datagrams (version, kind, count).
pub(crate) const COUNTED_HEADER: usize = 6;
/// Bytes of a pull header (version, kind, flags, bits).
pub(crate) const PULL_HEADER: usize = 4;
/// The most bytes of an entry besides its key and value bytes: counter, origin, flags, key
/// length, and a value length (4) or a tombstone's age (8).
pub(crate) const ENTRY_OVERHEAD: usize = 8 + 8 + 1 + 4 + 8;
/// The fewest bytes of an entry: counter, origin, flags, key length, an empty key, and an empty
/// value's length.
const MIN_ENTRY: usize = 8 + 8 + 1 + 4 + 4;
/// Bytes of one summary.
pub(crate) const SUMMARY_LEN: usize = 24;
/// The largest digest: 2^16 buckets.
pub(crate) const MAX_BITS: u8 = 16;

const FLAG_VALUE: u8 = 1;
pub(crate) const FLAG_FULL: u8 = 1;

/// One entry of a push, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WireEntry<'a> {
    pub version: Version,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    /// A tombstone's age at the sender (0 with a value).
    pub age_us: u64,
}

/// A decoded datagram.
#[derive(Debug)]
pub(crate) enum Message<'a> {
    Push(Vec<WireEntry<'a>>),
    Pull {
        full: bool,
        bits: u8,
        hashes: Vec<u64>,
    },
    Summaries(Vec<(u64, Version)>),
    Want(Vec<u64>),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.left() < n {
            return Err(Error::corrupt(format!(
                "gossip datagram truncated: {what} needs {n} bytes, {} left",
                self.left()
            )));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
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
    /// A count of elements of at least `min_len` bytes each, checked against the bytes left.
    fn count(&mut self, min_len: usize, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_len) > self.left() {
            return Err(Error::corrupt(format!(
                "gossip datagram claims {n} {what} of at least {min_len} bytes, {} bytes left",
                self.left()
            )));
        }
        Ok(n)
    }
    fn finish(&self) -> Result<()> {
        if self.left() != 0 {
            return Err(Error::corrupt(format!(
                "gossip datagram has {} trailing bytes",
                self.left()
            )));
        }
        Ok(())
    }
}

/// Decodes and validates a datagram. `max_key` / `max_value` bound entries (TooLarge).
pub(crate) fn decode(bytes: &[u8], max_key: usize, max_value: usize) -> Result<Message<'_>> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8("the version byte")?;
    if version != WIRE_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("gossip wire version {version} is not supported (this build: {WIRE_VERSION})"),
        ));
    }
    let kind = r.u8("the kind byte")?;
    let msg = match kind {
        KIND_PUSH => {
            let n = r.count(MIN_ENTRY, "entries")?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let counter = r.u64("an entry counter")?;
                let origin = r.u64("an entry origin")?;
                if counter == 0 {
                    return Err(Error::corrupt("gossip entry with version counter 0"));
                }
                let flags = r.u8("entry flags")?;
                if flags & !FLAG_VALUE != 0 {
                    return Err(Error::corrupt(format!(
                        "gossip entry flags {flags:#x} unknown"
                    )));
                }
                let key_len = r.u32("a key length")? as usize;
                if key_len > max_key {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("gossip key of {key_len} bytes, the maximum is {max_key}"),
                    ));
                }
                let key = r.take(key_len, "a key")?;
                let mut age_us = 0;
                let value = if flags & FLAG_VALUE != 0 {
                    let len = r.u32("a value length")? as usize;
                    if len > max_value {
                        return Err(Error::new(
                            ErrorKind::TooLarge,
                            format!("gossip value of {len} bytes, the maximum is {max_value}"),
                        ));
                    }
                    Some(r.take(len, "a value")?)
                } else {
                    age_us = r.u64("a tombstone age")?;
                    None
                };
                entries.push(WireEntry {
                    version: Version { counter, origin },
                    key,
                    value,
                    age_us,
                });
            }
            Message::Push(entries)
        }
        KIND_PULL => {
            let flags = r.u8("pull flags")?;
            if flags & !FLAG_FULL != 0 {
                return Err(Error::corrupt(format!(
                    "gossip pull flags {flags:#x} unknown"
                )));
            }
            let bits = r.u8("digest bits")?;
            if bits > MAX_BITS {
                return Err(Error::corrupt(format!(
                    "gossip digest of 2^{bits} buckets, the maximum is 2^{MAX_BITS}"
                )));
            }
            let n = 1usize << bits;
            if r.left() != n * 8 {
                return Err(Error::corrupt(format!(
                    "gossip digest of 2^{bits} buckets needs {} bytes, has {}",
                    n * 8,
                    r.left()
                )));
            }
            let mut hashes = Vec::with_capacity(n);
            for _ in 0..n {
                hashes.push(r.u64("a bucket hash")?);
            }
            Message::Pull {
                full: flags & FLAG_FULL != 0,
                bits,
                hashes,
            }
        }
        KIND_SUMMARIES => {
            let n = r.count(SUMMARY_LEN, "summaries")?;
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                let hash = r.u64("a key hash")?;
                let counter = r.u64("a summary counter")?;
                let origin = r.u64("a summary origin")?;
                s.push((hash, Version { counter, origin }));
            }
            Message::Summaries(s)
        }
        KIND_WANT => {
            let n = r.count(8, "wanted hashes")?;
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                s.push(r.u64("a wanted hash")?);
            }
            Message::Want(s)
        }
        other => {
            return Err(Error::corrupt(format!(
                "gossip datagram of unknown kind {other}"
            )))
        }
    };
    r.finish()?;
    Ok(msg)
}

/// Appends one push entry to `buf`: a value, or a tombstone `age_us` old.
pub(crate) fn put_entry(
    buf: &mut Vec<u8>,
    version: Version,
    key: &[u8],
    value: Option<&[u8]>,
    age_us: u64,
) {
    buf.extend_from_slice(&version.counter.to_le_bytes());
    buf.extend_from_slice(&version.origin.to_le_bytes());
    buf.push(if value.is_some() { FLAG_VALUE } else { 0 });
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    match value {
        Some(v) => {
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        None => buf.extend_from_slice(&age_us.to_le_bytes()),
    }
}

/// The encoded size of an entry.
pub(crate) fn entry_len(key: &[u8], value: Option<&[u8]>) -> usize {
    8 + 8 + 1 + 4 + key.len() + value.map_or(8, |v| 4 + v.len())
}

/// Encodes a pull (a digest of `2^bits` bucket hashes).
pub(crate) fn pull(full: bool, bits: u8, hashes: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(PULL_HEADER + hashes.len() * 8);
    b.extend_from_slice(&[
        WIRE_VERSION,
        KIND_PULL,
        if full { FLAG_FULL } else { 0 },
        bits,
    ]);
    for h in hashes {
        b.extend_from_slice(&h.to_le_bytes());
    }
    b
}

/// Builds counted datagrams (push, summaries, want) of at most `max` bytes each, starting a
/// new one when the next element would not fit.
pub(crate) struct Chunker {
    kind: u8,
    max: usize,
    buf: Vec<u8>,
    count: u32,
    done: Vec<Vec<u8>>,
}

impl Chunker {
    pub(crate) fn new(kind: u8, max: usize) -> Self {
        Chunker {
            kind,
            max,
            buf: Vec::new(),
            count: 0,
            done: Vec::new(),
        }
    }

    /// Whether an element of `len` bytes fits in the current datagram.
    pub(crate) fn fits(&self, len: usize) -> bool {
        let used = if self.count == 0 {
            COUNTED_HEADER
        } else {
            self.buf.len()
        };
        used + len <= self.max
    }

    /// Starts an element: returns the buffer to append exactly `len` bytes to. `len` must
    /// fit an empty datagram (the configuration guarantees it).
    pub(crate) fn element(&mut self, len: usize) -> &mut Vec<u8> {
        if self.count > 0 && !self.fits(len) {
            self.flush();
        }
        if self.count == 0 {
            self.buf.clear();
            self.buf
                .extend_from_slice(&[WIRE_VERSION, self.kind, 0, 0, 0, 0]);
        }
        self.count += 1;
        &mut self.buf
    }

    fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        self.buf[2..6].copy_from_slice(&self.count.to_le_bytes());
        self.done.push(std::mem::take(&mut self.buf));
        self.count = 0;
    }

    /// The datagrams built, in order.
    pub(crate) fn finish(mut self) -> Vec<Vec<u8>> {
        self.flush();
        self.done
    }
}
