#!/usr/bin/env bash
# The long run of the multi-process Raft tests over TCP (crates/core/src/replica/netns_tests.rs
# and process_tests.rs): three node processes, each in a network namespace of its own, the
# leader's and then a follower's link taken down and brought up (check: the majority keeps
# committing, the cut-off leader steps down, all converge, no acknowledged write lost); the
# same scenario on loopback with partitions by frame filters; and the leader SIGKILLed
# EMF_REPLICA_KILLS times (default here 10) over TCP and over rings. Repeated ROUNDS times.
#
#   scripts/raft-netns.sh [ROUNDS (default 20)]
#
# As root the namespace test must create its namespaces (EMF_RNET_REQUIRE_NETNS=1: a failure
# fails the run); otherwise it says why and runs over loopback. Needs `ip` (iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
export EMF_REPLICA_SUMMARY=1 EMF_REPLICA_KILLS="${EMF_REPLICA_KILLS:-10}"
if [ "$(id -u)" = 0 ]; then
    export EMF_RNET_REQUIRE_NETNS=1
else
    echo "raft-netns: not root, the namespace test will run over loopback" >&2
fi
cargo test --release -p erlmcp-flow --lib --no-run
for i in $(seq "$rounds"); do
    echo "=== round $i/$rounds"
    cargo test --release -p erlmcp-flow --lib -q -- replica::netns_tests \
        replica::process_tests::tcp_cluster replica::process_tests::ring_cluster \
        --nocapture --test-threads=1
done
