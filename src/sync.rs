//! The one place concurrent primitives come from: `std` normally, `loom` under `cfg(loom)`, so
//! that every concurrent structure can be model-checked. `scripts/test.sh` (stage `lints`)
//! fails when `std::sync::atomic` is named anywhere else in `src/` (clippy's
//! `disallowed-types` cannot be used for this: it sees through the re-export).
//!
//! Process-wide statics that loom cannot construct in a `const` context (the C ABI's token
//! counter) use `std` directly, with a comment saying why.
#![allow(unused_imports)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
// loom has no compiler fence; a full fence is a correct stand-in in models.
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence as compiler_fence;
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
