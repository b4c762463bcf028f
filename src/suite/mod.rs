//! The benchmark suites behind `erlmcp-flow bench`, as a library.
pub mod samples;
