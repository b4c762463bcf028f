//! Membership and gossip as state machines without I/O (issue 14).
//!
//! Two parts, each stepped by datagrams and the caller's clock, each returning the datagrams
//! to send; neither sends, sleeps or reads a clock itself:
//!
//! * failure detection SWIM-style, with suspicion and local health (a slow member does not
//!   accuse healthy ones);
//! * dissemination of agents' state: versioned key → value, deletes as tombstones, push-pull
//!   rounds with adaptive fan-out and periodic anti-entropy that sends only the difference.
//!
//! Members are named by a `u64` id, the same number as a [`crate::net::NodeId`]; this layer
//! does not name `net` (see `docs/ARCHITECTURE.md`). [`crate::mesh`] drives both over a
//! transport.

pub mod swim;

/// A datagram a membership state machine asks its driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The member it goes to.
    pub to: u64,
    /// Its bytes, as the receiving state machine's `handle` expects them.
    pub payload: Vec<u8>,
}

pub mod gossip;
