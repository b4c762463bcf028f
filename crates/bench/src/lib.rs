//! The benchmark harness of erlmcp-flow: the suites behind the `erlmcp-flow bench` command,
//! their peers (behind the `peers` and `bench-peers` features), and the samples they share
//! with the criterion benches. Not published: a Rust user of the engine depends on
//! `erlmcp-flow` alone.

pub mod suite;
