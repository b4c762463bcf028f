//! The message serializer: rkyv archives of MCP traffic, validated zero-copy reads, a lossless
//! JSON-RPC 2.0 bridge, and zlib compression.
//!
//! Invariants of this module:
//!
//! * The archive format is fixed: an 8-byte header (magic `eMF`, a byte holding the format
//!   version and the [`FLAG_CHECKSUM`] bit, the payload length as a little-endian `u32`), then,
//!   when the flag is set, the CRC32C of the header and the payload (4 bytes, little-endian),
//!   then the payload: an rkyv archive with little-endian, 32-bit relative pointers and
//!   **unaligned** primitives. Any byte slice can be read in place (a ring frame, an Erlang
//!   binary, a Python `bytes`), whatever its address; no copy is ever needed for alignment.
//!   The header's length makes every truncation detectable: rkyv reads its root from the end
//!   of the buffer, and without it a batch cut right after one of its envelopes could pass for
//!   a valid single message.
//! * [`decode`] validates every byte before handing out a view (rkyv's bytecheck), with the
//!   nesting depth bounded so that hostile input cannot overflow the stack. Truncated or
//!   garbage input gives [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt), and so does a
//!   flipped bit in the header or the structure. A flipped bit inside a string or a number
//!   still makes a valid archive, of another message: only an archive encoded with a checksum
//!   ([`EncodeOptions::checksum`]) is refused for it, since [`decode`] verifies the checksum
//!   whenever the flag is set. Archives are encoded without one by default (the same bytes and
//!   speed as before the flag existed); archives without the flag decode as before.
//! * [`decode_unchecked`] is the explicit, `unsafe` opt-in for bytes already validated.
//!
//! ```
//! use erlmcp_flow::codec::{self, Envelope, Value, Member};
//! let call = Envelope::request(7u64, "tools/call", Value::Object(vec![
//!     Member::new("name", "search".into()),
//! ]));
//! let bytes = codec::encode(&call.into()).unwrap();
//! let view = codec::decode(&bytes).unwrap();            // validated, zero-copy
//! let env = &view.envelopes()[0];
//! assert_eq!(env.method(), Some("tools/call"));
//! assert_eq!(env.params.as_ref().unwrap().get("name").unwrap().as_str(), Some("search"));
//! ```

pub mod compress;
pub mod envelope;
pub mod events;
pub mod json;
pub mod jsonrpc;
pub mod ring;
pub mod value;

pub use compress::{compress_if_needed, decompress, Compressed, DEFAULT_THRESHOLD};
pub use envelope::{
    ArchivedEnvelope, ArchivedMessage, Envelope, ErrorObject, Id, Kind, Message, Priority,
};
pub use value::{ArchivedValue, Member, Number, Value};

use std::num::NonZeroUsize;

use rkyv::api::low::{to_bytes_in_with_alloc, LowSerializer};
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;
use rkyv::validation::{archive::ArchiveValidator, shared::SharedValidator, Validator};

use crate::error::{Error, Result};

/// The deepest subtree nesting [`decode`] accepts: JSON's [`json::MAX_DEPTH`] plus the
/// envelope's own levels (batch, strings, members).
pub const MAX_ARCHIVE_DEPTH: usize = json::MAX_DEPTH + 8;

/// The first three bytes of every archive.
pub const MAGIC: [u8; 3] = *b"eMF";
/// The archive format version this build writes and reads (the low 7 bits of byte 3).
pub const FORMAT_VERSION: u8 = 1;
/// The bit of byte 3 saying that a CRC32C follows the header.
pub const FLAG_CHECKSUM: u8 = 0x80;
/// Size of the archive header: magic, version and flags, little-endian `u32` payload length.
pub const HEADER_LEN: usize = 8;
/// Size of the CRC32C between the header and the payload of an archive with
/// [`FLAG_CHECKSUM`]: the little-endian CRC32C of the 8 header bytes followed by the payload.
pub const CHECKSUM_LEN: usize = 4;

/// How archives are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Write a CRC32C of the archive ([`FLAG_CHECKSUM`], 4 more bytes), so that [`decode`]
    /// refuses an archive with any bit flipped, inside strings and numbers too. Costs one
    /// CRC32C pass over the archive when encoding and again when decoding (with the CPU's CRC
    /// instructions about 40 ns for 200 bytes, 2.7 µs for 64 KB: decoding a 64 KB message,
    /// which validates its structure in under 1 µs, becomes 4 times slower). Off by default.
    pub checksum: bool,
}

impl EncodeOptions {
    /// The options with the checksum on.
    pub const CHECKSUM: EncodeOptions = EncodeOptions { checksum: true };

    fn header_len(self) -> usize {
        if self.checksum {
            HEADER_LEN + CHECKSUM_LEN
        } else {
            HEADER_LEN
        }
    }

    fn version_byte(self) -> u8 {
        if self.checksum {
            FORMAT_VERSION | FLAG_CHECKSUM
        } else {
            FORMAT_VERSION
        }
    }
}

/// Encodes a message into a fresh archive buffer.
///
/// Fails with `InvalidArgument` when a value is nested deeper than [`json::MAX_DEPTH`] (such
/// an archive could not be decoded).
pub fn encode(msg: &Message) -> Result<AlignedVec> {
    Encoder::new().encode_to_vec(msg)
}

/// [`encode`] with options (a checksum).
///
/// ```
/// use erlmcp_flow::codec::{self, EncodeOptions, Envelope, Value};
/// let n = Envelope::notification("notifications/progress", Value::Object(vec![]));
/// let mut bytes = codec::encode_with(&n.into(), EncodeOptions::CHECKSUM).unwrap().to_vec();
/// assert!(codec::decode(&bytes).is_ok());
/// let last = bytes.len() - 1;
/// bytes[last] ^= 1; // any flipped bit is refused
/// assert!(codec::decode(&bytes).is_err());
/// ```
pub fn encode_with(msg: &Message, opts: EncodeOptions) -> Result<AlignedVec> {
    Encoder::with_options(opts).encode_to_vec(msg)
}

/// A reusable encoder: keeps its scratch arena and output buffer between calls, so encoding
/// in a loop allocates nothing once warmed up.
///
/// ```
/// use erlmcp_flow::codec::{self, Encoder, Envelope, Value};
/// let mut enc = Encoder::new();
/// let n = Envelope::notification("notifications/progress", Value::Object(vec![]));
/// let bytes = enc.encode(&n.into()).unwrap();
/// assert!(codec::decode(bytes).is_ok());
/// ```
pub struct Encoder {
    arena: Arena,
    buf: AlignedVec,
    opts: EncodeOptions,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Creates an encoder (default options: no checksum).
    pub fn new() -> Self {
        Encoder::with_options(EncodeOptions::default())
    }

    /// Creates an encoder writing archives with `opts`.
    pub fn with_options(opts: EncodeOptions) -> Self {
        Encoder {
            arena: Arena::new(),
            buf: AlignedVec::new(),
            opts,
        }
    }

    /// The options this encoder writes with.
    pub fn options(&self) -> EncodeOptions {
        self.opts
    }

    /// Encodes `msg` into the encoder's buffer and returns the archive bytes.
    pub fn encode(&mut self, msg: &Message) -> Result<&[u8]> {
        check_depth(msg)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let buf = serialize_into(msg, buf, &mut self.arena, self.opts)?;
        self.buf = buf;
        Ok(&self.buf)
    }

    /// Encodes `msg` directly into `out` (for example a claimed ring frame) and returns the
    /// archive's length. `TooLarge` when it does not fit; `out` is then partly overwritten.
    pub fn encode_into_slice(&mut self, msg: &Message, out: &mut [u8]) -> Result<usize> {
        check_depth(msg)?;
        let cap = out.len();
        let too_large = || {
            Error::new(
                crate::ErrorKind::TooLarge,
                format!("the archive does not fit in {cap} bytes"),
            )
        };
        let header = self.opts.header_len();
        if cap < header {
            return Err(too_large());
        }
        let (head, body) = out.split_at_mut(header);
        let written = to_bytes_in_with_alloc::<_, _, rancor::Failure>(
            msg,
            rkyv::ser::writer::Buffer::from(body),
            self.arena.acquire(),
        )
        .map_err(|_| too_large())?
        .len();
        head[..3].copy_from_slice(&MAGIC);
        head[3] = self.opts.version_byte();
        head[4..HEADER_LEN].copy_from_slice(&(written as u32).to_le_bytes());
        let end = header + written;
        if self.opts.checksum {
            seal(&mut out[..end]);
        }
        Ok(end)
    }

    /// Encodes `msg` into a new buffer (the arena is still reused).
    pub fn encode_to_vec(&mut self, msg: &Message) -> Result<AlignedVec> {
        check_depth(msg)?;
        serialize_into(msg, AlignedVec::new(), &mut self.arena, self.opts)
    }
}

/// The CRC32C of a checksummed archive: its 8 header bytes, then its payload.
fn archive_crc(archive: &[u8]) -> u32 {
    let at = HEADER_LEN + CHECKSUM_LEN;
    crate::checksum::crc32c_append(
        crate::checksum::crc32c(&archive[..HEADER_LEN]),
        &archive[at..],
    )
}

/// Writes the CRC32C into a whole checksummed archive (header and payload already written).
fn seal(archive: &mut [u8]) {
    let crc = archive_crc(archive);
    archive[HEADER_LEN..HEADER_LEN + CHECKSUM_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn serialize_into(
    msg: &Message,
    mut buf: AlignedVec,
    arena: &mut Arena,
    opts: EncodeOptions,
) -> Result<AlignedVec> {
    let header = opts.header_len();
    buf.extend_from_slice(&MAGIC);
    buf.push(opts.version_byte());
    buf.extend_from_slice(&[0; 4]);
    if opts.checksum {
        buf.extend_from_slice(&[0; CHECKSUM_LEN]);
    }
    // rkyv pointers are relative, so the archive may start after the header.
    // `Failure` carries no message: the only ways to fail are an archive past the 32-bit
    // offset range or allocation failure, both reported below.
    let too_large = || {
        Error::new(
            crate::ErrorKind::TooLarge,
            "cannot encode message: archive would exceed the 32-bit offset range",
        )
    };
    let mut buf = to_bytes_in_with_alloc::<_, _, rancor::Failure>(msg, buf, arena.acquire())
        .map_err(|_| too_large())?;
    let payload = u32::try_from(buf.len() - header).map_err(|_| too_large())?;
    buf[4..HEADER_LEN].copy_from_slice(&payload.to_le_bytes());
    if opts.checksum {
        seal(&mut buf);
    }
    Ok(buf)
}

// Serialization, validation and the JSON writer recurse once per nesting level. Refuse a value
// that would produce an archive `decode` rejects. The walk recurses, but stops at
// `json::MAX_DEPTH`, so its own depth is bounded whatever the input.
fn check_depth(msg: &Message) -> Result<()> {
    if msg.envelopes().is_empty() {
        return Err(Error::invalid("a batch must hold at least one envelope"));
    }
    fn walk(v: &Value, depth: usize) -> bool {
        match v {
            Value::Array(items) => {
                depth < json::MAX_DEPTH && items.iter().all(|i| walk(i, depth + 1))
            }
            Value::Object(members) => {
                depth < json::MAX_DEPTH && members.iter().all(|m| walk(&m.value, depth + 1))
            }
            _ => true,
        }
    }
    for e in msg.envelopes() {
        let ok = [
            e.params.as_ref(),
            e.result.as_ref(),
            e.error.as_ref().and_then(|er| er.data.as_ref()),
        ]
        .into_iter()
        .flatten()
        .all(|v| walk(v, 0))
            && e.extra.iter().all(|m| walk(&m.value, 1));
        if !ok {
            return Err(Error::invalid(format!(
                "value nested deeper than {} levels",
                json::MAX_DEPTH
            )));
        }
    }
    Ok(())
}

/// The serializer type [`Encoder`] uses, for callers that archive their own types.
pub type Serializer<'a> = LowSerializer<AlignedVec, ArenaHandle<'a>, rancor::Failure>;

/// Validates `bytes` as an archived [`Message`] and returns a zero-copy view of it.
///
/// Any address and any length is accepted; what fails validation is `Corrupt`. The checksum
/// of an archive with [`FLAG_CHECKSUM`] is verified first; an archive without the flag is
/// checked for its structure only (module documentation).
///
/// ```
/// use erlmcp_flow::{codec, ErrorKind};
/// assert_eq!(codec::decode(b"garbage!").unwrap_err().kind(), ErrorKind::Corrupt);
/// assert_eq!(codec::decode(&[]).unwrap_err().kind(), ErrorKind::Corrupt);
/// ```
pub fn decode(bytes: &[u8]) -> Result<&ArchivedMessage> {
    let bytes = payload(bytes)?;
    let mut validator = Validator::new(
        ArchiveValidator::with_max_depth(bytes, NonZeroUsize::new(MAX_ARCHIVE_DEPTH)),
        SharedValidator::new(),
    );
    let msg =
        rkyv::api::access_with_context::<ArchivedMessage, _, rancor::Error>(bytes, &mut validator)
            .map_err(|e| Error::corrupt(format!("archive failed validation: {e}")))?;
    if msg.envelopes().is_empty() {
        // `encode` never writes one (JSON-RPC forbids empty batches).
        return Err(Error::corrupt("archive holds an empty batch"));
    }
    Ok(msg)
}

/// Whether `bytes` start like an archive with a checksum ([`FLAG_CHECKSUM`] set). Says
/// nothing about whether the archive is valid: [`decode`] checks that.
pub fn has_checksum(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..3] == MAGIC && bytes[3] & FLAG_CHECKSUM != 0
}

/// Checks the archive header (and the checksum, when flagged) and returns the rkyv payload.
fn payload(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::corrupt(format!(
            "archive is {} bytes, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[..3] != MAGIC {
        return Err(Error::corrupt("not an erlmcp-flow archive (bad magic)"));
    }
    let version = bytes[3] & !FLAG_CHECKSUM;
    if version != FORMAT_VERSION {
        return Err(Error::corrupt(format!(
            "archive format version {version} is not supported (this build reads \
             {FORMAT_VERSION})"
        )));
    }
    let checksum = bytes[3] & FLAG_CHECKSUM != 0;
    let header = if checksum {
        HEADER_LEN + CHECKSUM_LEN
    } else {
        HEADER_LEN
    };
    if bytes.len() < header {
        return Err(Error::corrupt(format!(
            "archive is {} bytes, shorter than its {header}-byte header and checksum",
            bytes.len()
        )));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[4..HEADER_LEN]);
    let len = u32::from_le_bytes(len) as usize;
    let have = bytes.len() - header;
    if len != have {
        return Err(Error::corrupt(format!(
            "archive length mismatch: header says {len} payload bytes, buffer has {have} \
             (truncated or padded)"
        )));
    }
    if checksum {
        let mut stored = [0u8; CHECKSUM_LEN];
        stored.copy_from_slice(&bytes[HEADER_LEN..header]);
        let (stored, computed) = (u32::from_le_bytes(stored), archive_crc(bytes));
        if stored != computed {
            return Err(Error::corrupt(format!(
                "archive checksum mismatch: CRC32C {stored:#010x} written, {computed:#010x} \
                 computed (bytes damaged after encoding)"
            )));
        }
    }
    Ok(&bytes[header..])
}

/// Returns a view of `bytes` as an archived [`Message`] **without validating it**.
///
/// # Safety
///
/// `bytes` must be exactly the bytes of an archive that [`decode`] accepted (or that
/// [`encode`] produced), unmodified since. Anything else is undefined behaviour. Never pass
/// bytes that another process can still write.
pub unsafe fn decode_unchecked(bytes: &[u8]) -> &ArchivedMessage {
    let header = if has_checksum(bytes) {
        HEADER_LEN + CHECKSUM_LEN
    } else {
        HEADER_LEN
    };
    let body = bytes.get(header..).unwrap_or_default();
    // SAFETY: the caller guarantees the bytes are a whole archive that passed `decode`, so
    // the payload after the header is a valid rkyv archive of `Message` (contract above); the
    // format's unaligned primitives make any address acceptable.
    unsafe { rkyv::api::access_unchecked::<ArchivedMessage>(body) }
}

/// Deserializes an archived message into an owned one.
pub fn to_owned(msg: &ArchivedMessage) -> Result<Message> {
    rkyv::deserialize::<Message, rancor::Error>(msg)
        .map_err(|e| Error::corrupt(format!("cannot deserialize archive: {e}")))
}
