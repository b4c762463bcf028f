#!/usr/bin/env bash
# The long runs of the scheduler's protection simulations (crates/core/src/sched/{breaker,
# backpressure,ratelimit}.rs): the failing-agent and slow-consumer simulations over
# EMF_SIM_SEEDS seeded runs each (default 20000; the test suite runs 200), and the rate
# limiter's chaotic token accounting over EMF_SIM_STEPS steps (default 10^9; the suite: 10^7).
#
#   scripts/sched-sim.sh
#   EMF_SIM_SEEDS=100000 EMF_SIM_STEPS=10000000000 scripts/sched-sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export EMF_SIM_SEEDS="${EMF_SIM_SEEDS:-20000}"
export EMF_SIM_STEPS="${EMF_SIM_STEPS:-1000000000}"
cargo test -p erlmcp-flow --lib -- sched::breaker::tests sched::backpressure::tests \
    sched::ratelimit::tests
