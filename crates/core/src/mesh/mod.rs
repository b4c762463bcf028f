//! The host loops of the membership and PBFT state machines over a [`crate::net::Transport`]
//! (issue 14): what [`crate::replica`] is to Raft.
//!
//! [`crate::membership`] and [`crate::pbft`] take datagrams and the caller's clock and answer
//! the datagrams to send; this layer receives frames, steps the machines, sends their output
//! (keeping back-pressured frames for retry, or dropping them with a count where the protocol
//! retransmits anyway: see each loop) and exposes the result to the host.
//!
//! * [`member`] — SWIM membership and gossip of agents' state on one transport.
//! * [`pbft`] — PBFT replicas and clients on a transport (replica threads, local groups).
//! * [`runner`] — a [`member::Member`] on a thread of its own behind a thread-safe
//!   [`runner::MemberHandle`] (what the host bindings wrap).

pub mod member;
pub mod pbft;
pub mod runner;
