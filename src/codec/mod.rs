//! The message serializer: rkyv archives of MCP traffic, validated zero-copy reads, a lossless
//! JSON-RPC 2.0 bridge, and zlib compression.
//!
//! Invariants of this module:
//!
//! * The archive format is fixed: little-endian, 32-bit relative pointers, **unaligned**
//!   primitives. Any byte slice can be read in place (a ring frame, an Erlang binary, a Python
//!   `bytes`), whatever its address; no copy is ever needed for alignment.
//! * [`decode`] validates every byte before handing out a view (rkyv's bytecheck), with the
//!   nesting depth bounded so that hostile input cannot overflow the stack. Truncated,
//!   garbage or bit-flipped input gives [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt).
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
pub mod json;
pub mod jsonrpc;
pub mod value;

pub use compress::{compress_if_needed, decompress, Compressed, DEFAULT_THRESHOLD};
pub use envelope::{
    ArchivedEnvelope, ArchivedMessage, Envelope, ErrorObject, Id, Kind, Message, Priority,
};
pub use value::{ArchivedValue, Member, Number, Value};

use std::num::NonZeroUsize;

use rkyv::api::high::{to_bytes_in_with_alloc, HighSerializer};
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;
use rkyv::validation::{archive::ArchiveValidator, shared::SharedValidator, Validator};

use crate::error::{Error, Result};

/// The deepest subtree nesting [`decode`] accepts: JSON's [`json::MAX_DEPTH`] plus the
/// envelope's own levels (batch, strings, members).
pub const MAX_ARCHIVE_DEPTH: usize = json::MAX_DEPTH + 8;

/// Encodes a message into a fresh archive buffer.
///
/// Fails with `InvalidArgument` when a value is nested deeper than [`json::MAX_DEPTH`] (such
/// an archive could not be decoded).
pub fn encode(msg: &Message) -> Result<AlignedVec> {
    Encoder::new().encode_to_vec(msg)
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
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Creates an encoder.
    pub fn new() -> Self {
        Encoder {
            arena: Arena::new(),
            buf: AlignedVec::new(),
        }
    }

    /// Encodes `msg` into the encoder's buffer and returns the archive bytes.
    pub fn encode(&mut self, msg: &Message) -> Result<&[u8]> {
        check_depth(msg)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let buf = serialize_into(msg, buf, &mut self.arena)?;
        self.buf = buf;
        Ok(&self.buf)
    }

    /// Encodes `msg` into a new buffer (the arena is still reused).
    pub fn encode_to_vec(&mut self, msg: &Message) -> Result<AlignedVec> {
        check_depth(msg)?;
        serialize_into(msg, AlignedVec::new(), &mut self.arena)
    }
}

fn serialize_into(msg: &Message, buf: AlignedVec, arena: &mut Arena) -> Result<AlignedVec> {
    to_bytes_in_with_alloc::<_, _, rancor::Error>(msg, buf, arena.acquire())
        .map_err(|e| Error::invalid(format!("cannot encode message: {e}")))
}

// Serialization, validation and the JSON writer recurse once per nesting level. Refuse a value
// that would produce an archive `decode` rejects; walk iteratively so that the check itself
// cannot overflow.
fn check_depth(msg: &Message) -> Result<()> {
    let mut stack: Vec<(&Value, usize)> = Vec::new();
    for e in msg.envelopes() {
        let roots = [
            e.params.as_ref(),
            e.result.as_ref(),
            e.error.as_ref().and_then(|er| er.data.as_ref()),
        ];
        stack.extend(roots.into_iter().flatten().map(|v| (v, 0)));
        stack.extend(e.extra.iter().map(|m| (&m.value, 1)));
        while let Some((v, depth)) = stack.pop() {
            match v {
                Value::Array(items) if !items.is_empty() || depth >= json::MAX_DEPTH => {
                    if depth >= json::MAX_DEPTH {
                        return Err(Error::invalid(format!(
                            "value nested deeper than {} levels",
                            json::MAX_DEPTH
                        )));
                    }
                    stack.extend(items.iter().map(|i| (i, depth + 1)));
                }
                Value::Object(members) => {
                    if depth >= json::MAX_DEPTH {
                        return Err(Error::invalid(format!(
                            "value nested deeper than {} levels",
                            json::MAX_DEPTH
                        )));
                    }
                    stack.extend(members.iter().map(|m| (&m.value, depth + 1)));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The serializer type [`Encoder`] uses, for callers that archive their own types.
pub type Serializer<'a> = HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>;

/// Validates `bytes` as an archived [`Message`] and returns a zero-copy view of it.
///
/// Any address and any length is accepted; what fails validation is `Corrupt`.
///
/// ```
/// use erlmcp_flow::{codec, ErrorKind};
/// assert_eq!(codec::decode(b"garbage!").unwrap_err().kind(), ErrorKind::Corrupt);
/// assert_eq!(codec::decode(&[]).unwrap_err().kind(), ErrorKind::Corrupt);
/// ```
pub fn decode(bytes: &[u8]) -> Result<&ArchivedMessage> {
    let mut validator = Validator::new(
        ArchiveValidator::with_max_depth(bytes, NonZeroUsize::new(MAX_ARCHIVE_DEPTH)),
        SharedValidator::new(),
    );
    rkyv::api::access_with_context::<ArchivedMessage, _, rancor::Error>(bytes, &mut validator)
        .map_err(|e| Error::corrupt(format!("archive failed validation: {e}")))
}

/// Returns a view of `bytes` as an archived [`Message`] **without validating it**.
///
/// # Safety
///
/// `bytes` must be exactly the bytes of an archive that [`decode`] accepted (or that
/// [`encode`] produced), unmodified since. Anything else is undefined behaviour. Never pass
/// bytes that another process can still write.
pub unsafe fn decode_unchecked(bytes: &[u8]) -> &ArchivedMessage {
    // SAFETY: the caller guarantees the bytes are a valid archive of `Message` (contract
    // above); the format's unaligned primitives make any address acceptable.
    unsafe { rkyv::api::access_unchecked::<ArchivedMessage>(bytes) }
}

/// Deserializes an archived message into an owned one.
pub fn to_owned(msg: &ArchivedMessage) -> Result<Message> {
    rkyv::deserialize::<Message, rancor::Error>(msg)
        .map_err(|e| Error::corrupt(format!("cannot deserialize archive: {e}")))
}
