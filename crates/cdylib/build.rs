//! Build script: gives the C library its soname, `liberlmcp_flow.so.<ABI>`, with the ABI
//! version read from `EMF_ABI_VERSION` in `crates/capi/src/lib.rs`.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let capi = dir.join("../capi/src/lib.rs");
    println!("cargo:rerun-if-changed={}", capi.display());
    let src = fs::read_to_string(&capi).unwrap();
    let abi: u32 = src
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const EMF_ABI_VERSION: u32 = ")
                .and_then(|r| r.trim_end_matches(';').parse().ok())
        })
        .expect("EMF_ABI_VERSION not found in crates/capi/src/lib.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liberlmcp_flow.so.{abi}");
    }
}
