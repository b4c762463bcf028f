//! The benchmark harness of erlmcp-flow: the suites behind the `erlmcp-flow bench` command,
//! their peers (behind the `peers` and `bench-peers` features), and the samples they share
//! with the criterion benches. Not published: a Rust user of the engine depends on
//! `erlmcp-flow` alone.
//!
//! The package also holds the `erlmcp-flow` command itself (`src/bin`: bench, ring and shm
//! tools, the chaos campaign; `cargo run --release -- bench` from the repository root), the
//! criterion benches (`benches/`) and the repository's integration tests (`tests/*.rs` at the
//! top, which spawn the command). It is the only crate that uses all the others; none uses it.

pub mod suite;
