//! The transport layer: frames between the nodes of a cluster, named by [`NodeId`].
//!
//! Consensus and membership (issue 13: Raft, later gossip and PBFT) are state machines without
//! I/O; a [`Transport`] carries their messages. The same protocol code runs over three:
//!
//! * [`sim`] — a simulated network in one process, deterministic by seed and driven by the
//!   caller's clock: per-link drop, delay, duplication and reordering, partitions and heal,
//!   node crash and restart. A failing seed replays exactly.
//! * [`ring`] — nodes in different processes on one host: each node owns an inbox ring (a
//!   multi-producer [`crate::ring::Ring`]) in a shared directory under `/dev/shm`.
//! * [`tcp`] — nodes on different hosts: length-prefixed frames over `std::net`, a listener
//!   thread, one outgoing connection per peer with reconnect and exponential backoff, bounded
//!   queues both ways.
//!
//! ```
//! use erlmcp_flow::net::{sim::{SimNet, SimOptions}, NodeId, Transport};
//!
//! let net = SimNet::new(SimOptions::seeded(7));
//! let mut a = net.add_node(NodeId(1)).unwrap();
//! let mut b = net.add_node(NodeId(2)).unwrap();
//! a.send(NodeId(2), b"hello").unwrap();
//! net.run_until(10_000); // the caller's clock: frames are delivered when their time comes
//! let f = b.try_recv().unwrap().unwrap();
//! assert_eq!((f.from, &f.payload[..]), (NodeId(1), &b"hello"[..]));
//! assert_eq!(a.send(NodeId(9), b"?").unwrap_err().kind(), erlmcp_flow::ErrorKind::NotFound);
//! ```
//!
//! # What every transport promises
//!
//! * `send` either accepts a frame (`Ok`), or answers why not, and the caller keeps it:
//!   [`ErrorKind::Full`] is back-pressure (a bounded queue or ring is
//!   full: retry later or drop, the caller decides), `NotFound` names a node that is not a
//!   peer, `TooLarge` a payload beyond the transport's maximum, `Closed` a transport that was
//!   shut down or a node that is down.
//! * An accepted frame is delivered at most once per copy sent, whole, with the sender's id,
//!   or not at all (a network may lose it; the simulated one may also duplicate it on
//!   purpose). Protocols above retransmit; no transport retries forever on their behalf.
//! * Bytes from another process or host are validated before they become a [`Frame`]:
//!   framing, size limits, and that the sender is a configured peer. Invalid input is
//!   dropped and counted in the transport's statistics, never delivered and never a panic.

pub mod ring;
pub mod sim;
pub mod tcp;

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// A node of a cluster. Ids are chosen by the deployment (Raft's ids are `u64` too); 0 is
/// allowed but conventionally unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// A received frame: who sent it and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sender (validated: a configured peer of the receiver).
    pub from: NodeId,
    /// The payload, as the sender passed it to [`Transport::send`].
    pub payload: Vec<u8>,
}

/// Frames to and from the other nodes of a cluster.
///
/// One value per node, used from one thread at a time (`&mut self`). See the module docs for
/// what every implementation promises.
pub trait Transport {
    /// This node's id.
    fn local_id(&self) -> NodeId;

    /// Sends `payload` to `to`. `Ok` means the transport accepted it (queued or written); see
    /// the module docs for the errors (`Full` is back-pressure: nothing was sent).
    fn send(&mut self, to: NodeId, payload: &[u8]) -> Result<()>;

    /// The next received frame, if one is ready; never blocks.
    fn try_recv(&mut self) -> Result<Option<Frame>>;

    /// The next received frame, waiting up to `timeout` for one (`Ok(None)` when none came).
    /// The simulated network has no real time: there it is [`Transport::try_recv`].
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>>;
}

/// The error of a send to a node that is not a peer.
pub(crate) fn unknown_peer(me: NodeId, to: NodeId) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("{to} is not a peer of {me} (not in its configuration)"),
    )
}

/// The error of a payload beyond a transport's limit.
pub(crate) fn too_large(len: usize, max: usize, what: &str) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("a {len}-byte payload is beyond the {max}-byte limit of {what}"),
    )
}

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod ring_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tcp_tests;
