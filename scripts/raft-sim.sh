#!/usr/bin/env bash
# The long run of the raft module's seeded cluster simulation (crates/core/src/raft/tests.rs),
# in release: 3- and 5-node clusters, in memory and on disk with crashes and restarts, under
# drops, delays, reordering, duplicates and partitions; election safety, log matching, leader
# completeness and state-machine safety checked after every step, then heal and check that
# every replica is equal and holds every acknowledged write. The suite runs 50 seeds. Also the
# garbled-frame run (3 % of frames bit-flipped, every node must stay up) over as many seeds,
# and the membership-churn runs (learners joining, promotions, removals, replacements and
# leadership transfers under the same faults).
# A failing run prints its seed and step; rerun it alone with EMF_RAFT_SEED=<seed>.
#
#   scripts/raft-sim.sh [SEEDS per cluster kind (default 250: 1000 runs in all)]
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_RAFT_SEEDS="${1:-250}" cargo test --release -p erlmcp-flow --lib -- raft::tests::sim_ \
    raft::tests::garbled_ --nocapture
