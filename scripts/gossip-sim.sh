#!/usr/bin/env bash
# The long run of the gossip simulations, in release (the test suite runs 20 seeds): seeded
# chaos runs (crates/core/src/membership/gossip/tests.rs, `chaos_run`: random cluster sizes
# and settings, writes and deletes on random members, loss, duplicates, reordering,
# partitions and stopped members, then healing; every member must end with the greatest
# version of every key). A failing seed is printed with its settings.
#
#   scripts/gossip-sim.sh [SEEDS (default 2000; about a minute)]
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_SIM_SEEDS="${1:-2000}" \
    cargo test --release -p erlmcp-flow --lib membership::gossip::tests::chaos -- --nocapture
