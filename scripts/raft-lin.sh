#!/usr/bin/env bash
# The long run of the raft linearizability check (crates/core/src/raft/tests/lin.rs), in
# release: five simulated clients issue concurrent get / set / compare-and-set operations to
# 3- and 5-node clusters (in memory, and on disk with crashes and restarts) under drops,
# delays, reordering, duplicates and partitions; each history is checked per key by a
# Wing-Gong/Lowe linearizability checker. The suite runs 8 histories of 300 operations.
# A failing run prints its seed; rerun it alone with EMF_RAFT_SEED=<seed>.
#
#   scripts/raft-lin.sh [OPS per history (default 10000)] [SEEDS per cluster kind (default 4)]
#
# The default is 12 histories of 10^4 operations each (1.2 * 10^5 operations checked).
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_RAFT_LIN_OPS="${1:-10000}" EMF_RAFT_SEEDS="${2:-4}" EMF_RAFT_SUMMARY=1 \
    cargo test --release -p erlmcp-flow --lib -- raft::tests::lin:: --nocapture
