#!/usr/bin/env bash
# The long runs of the sched module's checks, in release (the test suite runs short ones):
#  1. the scheduler's seeded simulation (crates/core/src/sched/scheduler/sim.rs) over SEEDS
#     seeds of STEPS steps each, and its stateright model with every fault at once
#     (scheduler/model.rs); a failing seed is printed: rerun it alone with
#     EMF_SIM_SEEDS=<seed + 1>;
#  2. the protection simulations (sched/{breaker,backpressure,ratelimit}.rs): the failing-agent
#     and slow-consumer simulations over EMF_PROTECT_SEEDS seeded runs each (default 20000; the
#     suite runs 200), and the rate limiter's chaotic token accounting over EMF_LIMITER_STEPS
#     steps (default 10^9; the suite: 10^7).
#
#   scripts/sched-sim.sh [SEEDS (default 5000)] [STEPS per seed (default 2000)]
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_SIM_SEEDS="${1:-5000}" EMF_SIM_STEPS="${2:-2000}" \
    cargo test --release -p erlmcp-flow --lib sched::scheduler::sim -- --nocapture
cargo test --release -p erlmcp-flow --lib sched::scheduler::model -- --include-ignored --nocapture
EMF_SIM_SEEDS="${EMF_PROTECT_SEEDS:-20000}" EMF_SIM_STEPS="${EMF_LIMITER_STEPS:-1000000000}" \
    cargo test --release -p erlmcp-flow --lib -- sched::breaker::tests sched::backpressure::tests \
    sched::ratelimit::tests
