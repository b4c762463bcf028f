//! The one place concurrent primitives come from: `std` normally, `loom` under `cfg(loom)`, so
//! that every concurrent structure can be model-checked (`scripts/loom.sh`). clippy's
//! `disallowed-types` (see `clippy.toml`) forbids the `std` atomics everywhere else.
//!
//! Process-wide statics that loom cannot construct in a `const` context (the C ABI's handle
//! registries and token counter) use `std` directly, with an `allow` and a comment saying why.
#![allow(clippy::disallowed_types, unused_imports)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
