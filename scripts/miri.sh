#!/usr/bin/env bash
# Runs the library's unit tests under Miri (nightly): the C ABI boundary (buffers, handles,
# error text), the codec's unchecked access path and the JSON/compression code.
#
#   scripts/miri.sh [extra cargo test args]
#
# Installs the miri and rust-src components on the nightly toolchain when missing.
# Tests marked `cfg_attr(miri, ignore)` hold no unsafe code and are too slow under Miri.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component list --toolchain nightly --installed | grep -q '^miri' ||
  rustup component add miri rust-src --toolchain nightly
# Tree Borrows: rkyv's relative pointers are sound under Rust's rules but Miri's default
# Stacked Borrows model rejects them (rkyv issue 436; rkyv itself is tested under Tree Borrows).
# Isolation is off because envelopes and reports read the wall clock.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-tree-borrows -Zmiri-strict-provenance -Zmiri-disable-isolation}"
cargo +nightly miri test --lib --no-default-features "$@"
# The ring tests run on heap rings under Miri (Ring::anonymous): the same claim, commit,
# consume, wrap-around, recovery and wake-up code as on shared memory.
