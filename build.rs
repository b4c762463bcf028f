//! Build script: generates the C header with cbindgen and sets the cdylib's soname.
//!
//! The header is always written to `$OUT_DIR/erlmcp_flow.h`; a unit test compares it with the
//! committed `include/erlmcp_flow.h` and fails when they differ. The source tree is written
//! only when `EMF_UPDATE_HEADER=1` (see `scripts/gen-header.sh`), never on docs.rs or in
//! ordinary builds.

use std::env;
use std::fs;
use std::path::PathBuf;

fn abi_version(capi: &str) -> u32 {
    capi.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const EMF_ABI_VERSION: u32 = ")
                .and_then(|r| r.trim_end_matches(';').parse().ok())
        })
        .expect("EMF_ABI_VERSION not found in src/capi/mod.rs")
}

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=EMF_UPDATE_HEADER");

    let capi = fs::read_to_string(dir.join("src/capi/mod.rs")).unwrap();
    let abi = abi_version(&capi);
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liberlmcp_flow.so.{abi}");
    }

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("erlmcp_flow.h");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        // Only the C ABI module tree: the rest of the crate is not part of the header.
        .with_src(dir.join("src/capi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen failed to generate include/erlmcp_flow.h");
    bindings.write_to_file(&out);

    let docs = env::var_os("DOCS_RS").is_some();
    if !docs && env::var("EMF_UPDATE_HEADER").as_deref() == Ok("1") {
        fs::copy(&out, dir.join("include/erlmcp_flow.h")).unwrap();
    }
}
