//! The host loops of the membership and PBFT state machines over a [`crate::net::Transport`]
//! (issue 14): what [`crate::replica`] is to Raft.
//!
//! [`crate::membership`] and [`crate::pbft`] take datagrams and the caller's clock and answer
//! the datagrams to send; this layer receives frames, steps the machines, sends their output
//! (keeping back-pressured frames for retry) and exposes the result to the host.

pub mod pbft;
