//! `liberlmcp_flow.so` and `liberlmcp_flow.a`: the C library that `include/erlmcp_flow.h`
//! declares. Every function lives in the `erlmcp-flow-capi` crate; linking it here is what
//! puts its `#[no_mangle]` symbols into the shared and static libraries (nothing else is
//! exported). This crate holds no code of its own.

pub use erlmcp_flow_capi::*;
