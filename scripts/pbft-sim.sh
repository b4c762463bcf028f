#!/usr/bin/env bash
# The long runs of the PBFT checks (crates/core/src/pbft/), in release:
# * the seeded simulation (tests.rs, many_seeds_with_faults): n = 4, three clients, random
#   loss, duplicates and delays (reordering), one Byzantine replica per seed (silent,
#   equivocating primary or backup, wrong results); agreement, validity and that every
#   accepted result is the committed one, checked along the run; liveness within the limit.
#   The suite runs 24 seeds. A failure prints the seed and the replicas' state.
# * the stateright model (model.rs): breadth-first up to PBFT_MODEL_STATES states and random
#   walks for PBFT_MODEL_WALK_SECS per configuration (the suite: 3,000 states, 3 s).
#
#   scripts/pbft-sim.sh [SEEDS (default 5000)] [MODEL STATES (default 200000)] [WALK SECONDS (default 60)]
set -euo pipefail
cd "$(dirname "$0")/.."
PBFT_SIM_SEEDS="${1:-5000}" PBFT_MODEL_STATES="${2:-200000}" PBFT_MODEL_WALK_SECS="${3:-60}" \
    cargo test --release -p erlmcp-flow --lib -- pbft::tests::many_seeds pbft::model:: --nocapture
