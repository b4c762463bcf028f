//! # erlmcp-flow
//!
//! The native core of a multi-agent orchestration system built around the Model Context
//! Protocol (MCP): many agents, in many processes and languages, exchanging tasks and results.
//! Erlang/OTP loads it as a NIF, C and C++ link it through `include/erlmcp_flow.h`, Python
//! loads it with ctypes, and Rust uses this crate directly. The Rust API is the real one; the
//! C ABI (the `erlmcp-flow-capi` crate) and every binding only wrap it.
//!
//! ## Modules
//!
//! * [`codec`] — rkyv-archived MCP messages read in place after validation, a lossless
//!   JSON-RPC 2.0 bridge, and zlib compression with a decompression limit.
//! * [`vector`] — int8 quantization with a calibrated per-vector scale and SIMD distance
//!   kernels (simsimd) for i8, f16 and f32.
//! * [`hnsw`] — a concurrent HNSW index over int8 vectors, saved to a file that other
//!   processes map and search in place.
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
mod priority;
pub mod queue;
pub mod ring;
pub mod router;
pub mod shm;
pub mod state;
mod sync;
#[cfg(test)]
mod testutil;
pub mod vector;

pub use error::{Error, ErrorKind, Result};

/// The crate version, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
