#!/usr/bin/env bash
# The long run of the replica module's simulation (crates/core/src/replica/sim_tests.rs), in
# release: Raft clusters of Replicas (the host loop) over net::sim::SimNet, 3 and 5 nodes, in
# memory and on disk with crashes and restarts, under per-link drops, duplicates, reordering
# and delays, partitions and clock skew; election safety, log matching, leader completeness
# and state-machine safety checked after every step, then heal and check that every replica
# is equal and holds every acknowledged write. The suite runs 50 seeds. Then the 3-process
# ring cluster with EMF_REPLICA_KILLS leader SIGKILLs (default 10).
# A failing run prints its seed; rerun it alone with EMF_REPLICA_SEED=<seed>.
#
#   scripts/replica-sim.sh [SEEDS per cluster kind (default 250: 1000 runs in all)]
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_REPLICA_SEEDS="${1:-250}" cargo test --release -p erlmcp-flow --lib -- replica::sim_tests::sim_
# The client protocol's lin check (reads through Request::Read), 450 operations per seed.
EMF_REPLICA_SEEDS="${1:-250}" cargo test --release -p erlmcp-flow --lib -- \
    replica::ops_tests::client_protocol_histories_are_linearizable
EMF_REPLICA_KILLS="${EMF_REPLICA_KILLS:-10}" EMF_REPLICA_SUMMARY=1 cargo test --release \
    -p erlmcp-flow --lib -- replica::process_tests::ring_cluster --nocapture
