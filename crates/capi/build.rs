//! Build script: generates the C header with cbindgen.
//!
//! The header is always written to `$OUT_DIR/erlmcp_flow.h`; a unit test compares it with the
//! committed `include/erlmcp_flow.h` (at the repository's top) and fails when they differ. The
//! source tree is written only when `EMF_UPDATE_HEADER=1` (see `scripts/gen-header.sh`), never
//! on docs.rs or in ordinary builds. The C library's soname is set by `crates/cdylib`.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=EMF_UPDATE_HEADER");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("erlmcp_flow.h");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        // Only this crate's module tree: the engine's types are not part of the header.
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen failed to generate include/erlmcp_flow.h");
    bindings.write_to_file(&out);

    let docs = env::var_os("DOCS_RS").is_some();
    if !docs && env::var("EMF_UPDATE_HEADER").as_deref() == Ok("1") {
        fs::copy(&out, dir.join("../../include/erlmcp_flow.h")).unwrap();
    }
}
