#!/usr/bin/env bash
# The scheduler's long checks (crates/core/src/sched/scheduler/{sim,model}.rs), in release:
# the seeded simulation over many seeds and the stateright model with every fault at once.
#   scripts/sched-sim.sh [seeds (default 5000)] [steps per seed (default 2000)]
# A failing seed is printed; rerun it alone with EMF_SIM_SEEDS=<seed + 1>.
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_SIM_SEEDS="${1:-5000}" EMF_SIM_STEPS="${2:-2000}" \
    cargo test --release -p erlmcp-flow --lib sched::scheduler::sim -- --nocapture
cargo test --release -p erlmcp-flow --lib sched::scheduler::model -- --include-ignored --nocapture
