#!/usr/bin/env bash
# The issue's false-positive runs of SWIM membership, long (by hand, not in CI).
#
# 1. Simulated (deterministic by seed): 8 members, 1 % loss on every link, one member
#    starved of CPU (it runs only at irregular wake-ups up to a whole probe period apart:
#    its timers fire late, its datagrams wait), MINUTES of simulated time per seed (default
#    10) over SEEDS seeds (default 20). Any member declared down that was not is a failure,
#    printed with its seed. The suite runs the short variant (one seed, 5 simulated
#    minutes): crates/core/src/membership/swim/sim_tests.rs.
# 2. Live: `erlmcp-flow gossip cluster`, MEMBERS members (default 16) as threads over rings
#    for MINUTES real minutes, 1 % of datagrams lost, STRESS busy threads (default: one per
#    CPU) competing for the CPU, member MEMBERS killed half way: exits 1 on any false
#    positive or if the killed member is not reported down by all; its last line is JSON
#    (false_positives, suspicions, detect_ms). The suite runs a 4-member, 4-second variant
#    (crates/bench/src/bin/cli/gossip.rs) and 10 members over rings (mesh/member/tests.rs).
#
#   scripts/membership-soak.sh [MINUTES] [SEEDS] [MEMBERS] [STRESS]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
seeds=${2:-20}
members=${3:-16}
stress=${4:-$(nproc)}

echo "=== simulated: $seeds seeds x $minutes simulated minutes"
EMF_SWIM_SOAK_MINUTES="$minutes" EMF_SWIM_SOAK_SEEDS="$seeds" \
    cargo test --release -p erlmcp-flow --lib -- \
    membership::swim::sim_tests::no_false_positives --nocapture

echo "=== live: $members members over rings, $minutes minutes, 1 % loss, $stress stress threads"
cargo build --release --quiet --bin erlmcp-flow
target/release/erlmcp-flow gossip cluster --members "$members" --duration-s $((minutes * 60)) \
    --loss 0.01 --stress "$stress" --kill "$members"
