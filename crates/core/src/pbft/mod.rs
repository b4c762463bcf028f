//! Byzantine agreement: PBFT for n = 3f + 1 replicas as a state machine without I/O
//! (issue 14).
//!
//! Stepped by messages and the caller's clock, returning the messages to send and the
//! requests to execute; [`crate::mesh`] drives it over a transport.
