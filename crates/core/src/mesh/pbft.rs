//! The PBFT host loop over a [`Transport`]: what [`crate::replica`] is to Raft, for the
//! Byzantine agreement of [`crate::pbft`].
//!
//! * [`ReplicaHost`] drives one [`pbft::Replica`] over a transport and the caller's clock:
//!   receive a frame → [`pbft::Replica::handle`], [`pbft::Replica::tick`] when its deadline
//!   has come, and send what it answers, keeping frames the transport refuses with
//!   [`ErrorKind::Full`] (back-pressure) for retry, in order per peer.
//! * [`MeshClient`] is a client endpoint: one transport node hosting one or more
//!   [`pbft::Client`]s (each with one request outstanding, as in PBFT). [`MeshClient::execute`]
//!   submits an operation and waits for its [`Completion`] (fast or slow path, with the
//!   result), or answers [`ErrorKind::Timeout`]; [`MeshClient::start`] and
//!   [`MeshClient::poll`] keep many requests in flight, one per hosted client.
//! * [`spawn_replica`] runs a replica from a [`ReplicaSpec`] on a thread of its own, over
//!   [`net::ring`](crate::net::ring) (one host) or [`net::tcp`](crate::net::tcp), behind a
//!   [`ReplicaHandle`] with stop and join.
//! * [`LocalGroup`]: `n` replica threads and a client over rings in one directory, with
//!   fresh Ed25519 keys — what the hosts start (Erlang's `fast_path_consensus/1` is its
//!   [`LocalGroup::execute`]).
//! * [`OrderLog`], a small [`App`] for tests, benchmarks and the hosts: it answers each
//!   operation with its position in the agreed order.
//!
//! # Who is who: the address book
//!
//! PBFT names replicas `0..n` and clients by a `u64` id; a transport names nodes by
//! [`NodeId`]. [`Addresses`] maps one to the other and every replica and client endpoint of
//! a group must use the same:
//!
//! * replica `i` is the transport node `replicas[i]` ([`Addresses::numbered`] takes
//!   `NodeId(i + 1)`, so replicas are nodes `1..=n`);
//! * client `c` is reached at the transport node of its *endpoint*; several clients may share
//!   one endpoint (a [`MeshClient`] with many slots), and an endpoint is never a replica.
//!
//! # Frames
//!
//! Every frame starts with a tag byte:
//!
//! * [`TAG_REPLICA`] `b'P'`, then a PBFT message — between replicas only;
//! * [`TAG_CLIENT`] `b'C'`, then the client id (8 bytes, little-endian), then a PBFT message —
//!   between a client endpoint and a replica, both ways (requests in, replies out).
//!
//! A replica takes a frame only when its sender is consistent with its tag: a `P` frame from
//! a replica's node, a `C` frame from the endpoint of the client it names. Anything else, and
//! anything [`pbft::Replica::handle`] refuses (garbage, forged, …), is dropped and counted in
//! [`HostStats::rejected`], never fatal. The transport's sender check comes on top of PBFT's
//! signatures, not instead of them: a replica still verifies every signature.
//!
//! # Back-pressure and loss
//!
//! A send answered `Full` is kept per destination node and retried first by the next round;
//! a destination's backlog beyond [`HostOptions::max_backlog`] frames loses its oldest,
//! counted in [`HostStats::discarded`]. Any other send error (`Closed`: the node is down)
//! drops the frame, counted in [`HostStats::send_failed`]. Both are message loss, which PBFT
//! recovers from by the client's retransmission and the view change.

mod addresses;
mod app;
mod client;
mod host;
mod local;
mod spawn;

#[cfg(test)]
mod tests;

pub use addresses::Addresses;
pub use app::OrderLog;
pub use client::{ClientStats, MeshClient};
pub use host::{HostOptions, HostStats, ReplicaHost};
pub use local::{GroupKeys, LocalGroup, LocalGroupOptions, LOCAL_CLIENT, LOCAL_ENDPOINT};
pub use spawn::{spawn_replica, PbftTransport, ReplicaHandle, ReplicaInfo, ReplicaSpec};

#[cfg(doc)]
use crate::error::ErrorKind;
#[cfg(doc)]
use crate::net::{NodeId, Transport};
#[cfg(doc)]
use crate::pbft::{self, App, Completion};

/// The tag byte of a frame between replicas.
pub const TAG_REPLICA: u8 = b'P';
/// The tag byte of a frame between a client endpoint and a replica (then the client id).
pub const TAG_CLIENT: u8 = b'C';

/// Bytes before the PBFT message in a [`TAG_CLIENT`] frame.
const CLIENT_HEADER: usize = 9;

/// A replica-to-replica frame holding `payload`.
fn replica_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(1 + payload.len());
    f.push(TAG_REPLICA);
    f.extend_from_slice(payload);
    f
}

/// A client frame for client `client` holding `payload`.
fn client_frame(client: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(CLIENT_HEADER + payload.len());
    f.push(TAG_CLIENT);
    f.extend_from_slice(&client.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A received frame, split by its tag.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    Replica(&'a [u8]),
    Client(u64, &'a [u8]),
}

fn parse_frame(frame: &[u8]) -> Option<Parsed<'_>> {
    match *frame.first()? {
        TAG_REPLICA => Some(Parsed::Replica(&frame[1..])),
        TAG_CLIENT if frame.len() >= CLIENT_HEADER => {
            let id = u64::from_le_bytes(frame[1..CLIENT_HEADER].try_into().ok()?);
            Some(Parsed::Client(id, &frame[CLIENT_HEADER..]))
        }
        _ => None,
    }
}

/// Microseconds since `born`: the real clock of the threaded runners.
fn micros_since(born: std::time::Instant) -> u64 {
    born.elapsed().as_micros() as u64
}
