//! The bytes of a SWIM datagram: our envelope around foca's packet, our identity and our codec.
//!
//! A datagram is
//!
//! ```text
//! [version: u8 = 1][crc32c of the rest: u32 LE][foca packet]
//! ```
//!
//! and a foca packet is a header, then (for most messages) a `u16` count of member updates
//! and the updates, every integer little-endian:
//!
//! ```text
//! identity = id: u64, generation: u64                        (16 bytes)
//! header   = src: identity, src_incarnation: u16, dst: identity, message
//! message  = tag: u8, then Ping/Ack: probe u8 | PingReq/IndirectPing/IndirectAck/
//!            ForwardedAck: identity, probe u8 | Announce, Feed, Gossip, Broadcast,
//!            TurnUndead: nothing
//! member   = identity, incarnation: u16, state: u8 (0 alive, 1 suspect, 2 down)
//! ```
//!
//! Every decode is bounds-checked and every tag and state validated: bytes from another
//! process are never trusted.

use std::fmt;

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Identity, Member, Message, State};

use crate::checksum::crc32c;

/// The envelope's version byte.
pub(crate) const VERSION: u8 = 1;
/// The envelope's length: version and checksum.
pub(crate) const ENVELOPE_LEN: usize = 5;
/// Bytes of an encoded identity.
pub(crate) const IDENTITY_LEN: usize = 16;

/// A member's identity on the wire: its id and the generation of the process behind it.
///
/// A restarted member comes back with a higher generation and wins over (replaces) the
/// identity of its previous life; a member declared down while alive renews itself with
/// `generation + 1` (foca's [`Identity::renew`]) and rejoins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeIdentity {
    pub(crate) id: u64,
    pub(crate) generation: u64,
}

impl Identity for NodeIdentity {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        self.generation
            .checked_add(1)
            .map(|generation| NodeIdentity {
                id: self.id,
                generation,
            })
    }

    fn addr(&self) -> u64 {
        self.id
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Why bytes were refused by the codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// The codec foca encodes and decodes its packets with (the format in the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WireCodec;

const TAG_PING: u8 = 0;
const TAG_ACK: u8 = 1;
const TAG_PING_REQ: u8 = 2;
const TAG_INDIRECT_PING: u8 = 3;
const TAG_INDIRECT_ACK: u8 = 4;
const TAG_FORWARDED_ACK: u8 = 5;
const TAG_ANNOUNCE: u8 = 6;
const TAG_FEED: u8 = 7;
const TAG_GOSSIP: u8 = 8;
const TAG_BROADCAST: u8 = 9;
const TAG_TURN_UNDEAD: u8 = 10;

fn message_len(m: &Message<NodeIdentity>) -> usize {
    1 + match m {
        Message::Ping(_) | Message::Ack(_) => 1,
        Message::PingReq { .. }
        | Message::IndirectPing { .. }
        | Message::IndirectAck { .. }
        | Message::ForwardedAck { .. } => IDENTITY_LEN + 1,
        _ => 0,
    }
}

fn put_identity(buf: &mut impl BufMut, id: &NodeIdentity) {
    buf.put_u64_le(id.id);
    buf.put_u64_le(id.generation);
}

fn get_identity(buf: &mut impl Buf) -> Result<NodeIdentity, WireError> {
    if buf.remaining() < IDENTITY_LEN {
        return Err(WireError("truncated identity"));
    }
    Ok(NodeIdentity {
        id: buf.get_u64_le(),
        generation: buf.get_u64_le(),
    })
}

fn get_u8(buf: &mut impl Buf, what: &'static str) -> Result<u8, WireError> {
    if buf.remaining() < 1 {
        return Err(WireError(what));
    }
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf, what: &'static str) -> Result<u16, WireError> {
    if buf.remaining() < 2 {
        return Err(WireError(what));
    }
    Ok(buf.get_u16_le())
}

impl Codec<NodeIdentity> for WireCodec {
    type Error = WireError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), WireError> {
        let len = 2 * IDENTITY_LEN + 2 + message_len(&header.message);
        if buf.remaining_mut() < len {
            return Err(WireError("no room for the header"));
        }
        put_identity(&mut buf, &header.src);
        buf.put_u16_le(header.src_incarnation);
        put_identity(&mut buf, &header.dst);
        match &header.message {
            Message::Ping(n) => {
                buf.put_u8(TAG_PING);
                buf.put_u8(*n);
            }
            Message::Ack(n) => {
                buf.put_u8(TAG_ACK);
                buf.put_u8(*n);
            }
            Message::PingReq {
                target,
                probe_number,
            } => {
                buf.put_u8(TAG_PING_REQ);
                put_identity(&mut buf, target);
                buf.put_u8(*probe_number);
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_u8(TAG_INDIRECT_PING);
                put_identity(&mut buf, origin);
                buf.put_u8(*probe_number);
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_u8(TAG_INDIRECT_ACK);
                put_identity(&mut buf, target);
                buf.put_u8(*probe_number);
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_u8(TAG_FORWARDED_ACK);
                put_identity(&mut buf, origin);
                buf.put_u8(*probe_number);
            }
            Message::Announce => buf.put_u8(TAG_ANNOUNCE),
            Message::Feed => buf.put_u8(TAG_FEED),
            Message::Gossip => buf.put_u8(TAG_GOSSIP),
            Message::Broadcast => buf.put_u8(TAG_BROADCAST),
            Message::TurnUndead => buf.put_u8(TAG_TURN_UNDEAD),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, WireError> {
        let src = get_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf, "truncated header")?;
        let dst = get_identity(&mut buf)?;
        let tag = get_u8(&mut buf, "truncated header")?;
        let message = match tag {
            TAG_PING => Message::Ping(get_u8(&mut buf, "truncated ping")?),
            TAG_ACK => Message::Ack(get_u8(&mut buf, "truncated ack")?),
            TAG_PING_REQ..=TAG_FORWARDED_ACK => {
                let other = get_identity(&mut buf)?;
                let probe_number = get_u8(&mut buf, "truncated indirect probe")?;
                match tag {
                    TAG_PING_REQ => Message::PingReq {
                        target: other,
                        probe_number,
                    },
                    TAG_INDIRECT_PING => Message::IndirectPing {
                        origin: other,
                        probe_number,
                    },
                    TAG_INDIRECT_ACK => Message::IndirectAck {
                        target: other,
                        probe_number,
                    },
                    _ => Message::ForwardedAck {
                        origin: other,
                        probe_number,
                    },
                }
            }
            TAG_ANNOUNCE => Message::Announce,
            TAG_FEED => Message::Feed,
            TAG_GOSSIP => Message::Gossip,
            TAG_BROADCAST => Message::Broadcast,
            TAG_TURN_UNDEAD => Message::TurnUndead,
            _ => return Err(WireError("unknown message tag")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), WireError> {
        if buf.remaining_mut() < IDENTITY_LEN + 3 {
            return Err(WireError("no room for a member"));
        }
        put_identity(&mut buf, member.id());
        buf.put_u16_le(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeIdentity>, WireError> {
        let id = get_identity(&mut buf)?;
        let incarnation = get_u16(&mut buf, "truncated member")?;
        let state = match get_u8(&mut buf, "truncated member")? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(WireError("unknown member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// Wraps a foca packet into a datagram: version, checksum, packet.
pub(crate) fn seal(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_LEN + packet.len());
    out.push(VERSION);
    out.extend_from_slice(&crc32c(packet).to_le_bytes());
    out.extend_from_slice(packet);
    out
}

/// The foca packet inside a datagram, after checking its version and checksum.
pub(crate) fn open(datagram: &[u8]) -> Result<&[u8], &'static str> {
    if datagram.len() < ENVELOPE_LEN {
        return Err("shorter than the envelope");
    }
    if datagram[0] != VERSION {
        return Err("unknown envelope version");
    }
    let crc = u32::from_le_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
    let packet = &datagram[ENVELOPE_LEN..];
    if crc32c(packet) != crc {
        return Err("checksum mismatch");
    }
    Ok(packet)
}

/// The incarnation a packet's sender announces (its header's `src_incarnation`), if the
/// packet is long enough to hold one.
pub(crate) fn src_incarnation(packet: &[u8]) -> Option<u16> {
    let b = packet.get(IDENTITY_LEN..IDENTITY_LEN + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// True when a foca packet is a `TurnUndead` message.
pub(crate) fn is_turn_undead(packet: &[u8]) -> bool {
    packet.get(2 * IDENTITY_LEN + 2) == Some(&TAG_TURN_UNDEAD)
}

/// Decodes and validates a whole foca packet before foca sees it (foca applies the updates it
/// has read before it finds trailing garbage): the header, then either nothing or a
/// big-endian `u16` count and exactly that many updates, nothing after. An announce carries
/// no updates; custom broadcasts are not used, so a `Broadcast` carries nothing.
pub(crate) fn validate(mut packet: &[u8]) -> Result<Header<NodeIdentity>, WireError> {
    let header = WireCodec.decode_header(&mut packet)?;
    if packet.is_empty() {
        return Ok(header);
    }
    match header.message {
        Message::Announce => return Err(WireError("an announce carries no updates")),
        Message::Broadcast => return Err(WireError("custom broadcasts are not used")),
        _ => {}
    }
    let count = if packet.len() >= 2 {
        packet.get_u16()
    } else {
        return Err(WireError("truncated update count"));
    };
    for _ in 0..count {
        WireCodec.decode_member(&mut packet)?;
    }
    if !packet.is_empty() {
        return Err(WireError("bytes after the updates"));
    }
    Ok(header)
}
