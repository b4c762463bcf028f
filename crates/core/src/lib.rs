//! # erlmcp-flow
//!
//! The native core of a multi-agent orchestration system built around the Model Context
//! Protocol (MCP): many agents, in many processes and languages, exchanging tasks and results.
//! Rust uses this crate directly; everything else goes through the C ABI. The Rust API is the
//! real one; the C ABI and every binding only wrap it.
//!
//! ## Modules
//!
//! From the lowest layer up (`docs/ARCHITECTURE.md` has the layers and which module may use
//! which):
//!
//! * [`shm`] — named shared-memory segments (0600 files under `/dev/shm`), header checks,
//!   process liveness, and the gc that removes provably stale segments.
//! * [`ring`] — frame rings on shared memory between processes: SPSC/MPSC, fan-out
//!   subscribers, claim/commit in place, futex waits, crash recovery, optional CRC32C.
//! * [`codec`] — rkyv-archived MCP messages read in place after validation, a lossless
//!   JSON-RPC 2.0 bridge, and zlib compression with a decompression limit.
//! * [`queue`] — lock-free MPMC queues (unbounded and bounded) and the task queue with
//!   priorities, overflow and back-pressure.
//! * [`cache`] — a sharded concurrent LRU cache with a time-to-live.
//! * [`vector`] — int8 quantization with a calibrated per-vector scale and SIMD distance
//!   kernels (simsimd) for i8, f16 and f32.
//! * [`hnsw`] — a concurrent HNSW index over int8 vectors, saved to a file that other
//!   processes map and search in place.
//! * [`router`] — messages to agents by name, over their inbox rings.
//! * [`batch`] — the batch processor: sends on size, timeout, demand or an idle consumer.
//! * [`state`] — shared state by reference across processes, each value a segment.
//! * [`net`] — transports between the nodes of a cluster: one `Transport` trait over inbox
//!   rings, TCP, and a seeded simulated network for tests.
//! * [`raft`] — Raft consensus (tikv raft-rs) as a state machine without I/O: a durable,
//!   checksummed log with group commit and snapshots, leader batching, a replicated KV store.
//! * [`replica`] — the Raft host loop: a `raft::Node` driven over a `net::Transport`, a clock
//!   and its storage; submit, wait for commit, leader and term.
//! * [`membership`] — SWIM membership with suspicion and push-pull gossip of agents' state
//!   with anti-entropy, as state machines without I/O.
//! * [`pbft`] — PBFT Byzantine agreement with a tentative-execution fast path, as a state
//!   machine without I/O.
//! * [`mesh`] — the host loops of membership and PBFT over a `net::Transport`.
//!
//! [`Error`], [`ErrorKind`] and [`Result`] are every module's error type.
//!
//! ## Around this crate
//!
//! This crate depends on no other crate of the workspace. Around it:
//!
//! * the C ABI is the `erlmcp-flow-capi` crate (`crates/capi`), declared by
//!   `include/erlmcp_flow.h`; `crates/cdylib` packages it as `liberlmcp_flow.so` and
//!   `liberlmcp_flow.a`;
//! * the bindings wrap that library: Python through ctypes (`ffi/python`), Erlang/OTP as a NIF
//!   (`ffi/erlang`), C and C++ through the header (`c-examples/`);
//! * the `erlmcp-flow` command (benchmark suites, ring and shm tools) and the criterion
//!   benches are the `erlmcp-flow-bench` crate (`crates/bench`); `cargo run --release --
//!   bench` runs it from the repository root.
//!
//! ## A first example
//!
//! ```
//! use erlmcp_flow::codec::{self, jsonrpc};
//!
//! // MCP JSON in, a validated zero-copy archive view out, and back to the same JSON.
//! let json = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"grep","arguments":{"q":"x"}}}"#;
//! let archive = jsonrpc::json_to_archive(json, Default::default()).unwrap();
//! let view = codec::decode(&archive).unwrap();
//! assert_eq!(view.envelopes()[0].method(), Some("tools/call"));
//! assert_eq!(jsonrpc::to_json(view).as_bytes(), &json[..]);
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod batch;
pub mod cache;
mod checksum;
pub mod codec;
mod error;
pub mod hnsw;
#[cfg(not(loom))]
pub mod membership;
#[cfg(not(loom))]
pub mod mesh;
// The consensus layers have no loom models; the loom build (scripts/loom.sh) leaves them and
// raft-rs out, which keeps the CI loom stage to the structures it checks.
#[cfg(not(loom))]
pub mod net;
#[cfg(not(loom))]
pub mod pbft;
mod priority;
pub mod queue;
#[cfg(not(loom))]
pub mod raft;
#[cfg(not(loom))]
pub mod replica;
pub mod ring;
pub mod router;
pub mod sched;
pub mod shm;
pub mod state;
mod sync;
#[cfg(test)]
mod testutil;
pub mod vector;

pub use error::{Error, ErrorKind, Result};

/// The crate version, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
