#!/usr/bin/env bash
# The long run of the simulated network's replay check (crates/core/src/net/sim_tests.rs,
# many_seeds_replay): SEEDS seeded runs of a three-node workload with drop, duplicate,
# reorder, delays, a partition, a heal, a crash and a restart, each run twice and compared
# (the suite runs 20). A failing seed is printed; rerun it alone with
# EMF_NET_SIM_SEED=<seed> EMF_NET_SIM_SEEDS=1.
#
#   scripts/net-sim.sh [SEEDS (default 2000)] [FIRST SEED (default 0)]
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_NET_SIM_SEEDS="${1:-2000}" EMF_NET_SIM_SEED="${2:-0}" \
    cargo test --release -p erlmcp-flow --lib net::sim_tests::many_seeds_replay -- --nocapture
