#!/usr/bin/env bash
# Loom models of the concurrent structures (see crates/core/src/ring/model.rs).
#   scripts/loom.sh [test filter]
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
CARGO_TARGET_DIR=target/loom cargo test --release -p erlmcp-flow --lib "${1:-model}"
