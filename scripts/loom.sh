#!/usr/bin/env bash
# Loom models of the concurrent structures (see crates/core/src/ring/model.rs).
#   scripts/loom.sh [test filter]
# EMF_LOOM_QUICK=1 (the CI stage) runs the unbounded queue's 1-producer/2-consumer model with
# two preemptions instead of three (26 s instead of ~340 s on 2 vCPUs); run without it before
# changing src/queue/ or src/ring/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
CARGO_TARGET_DIR=target/loom cargo test --release -p erlmcp-flow --lib "${1:-model}"
