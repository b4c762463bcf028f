#!/usr/bin/env bash
# The long stress run of the MPMC queues: rounds of random producer/consumer counts (1-4 each)
# on the unbounded and the bounded queue, every value checked for exactly-once delivery in
# producer order, for EMF_STRESS_SECS seconds (default 600).
#
#   scripts/queue-stress.sh            # 10 minutes
#   EMF_STRESS_SECS=3600 scripts/queue-stress.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export EMF_STRESS_SECS="${EMF_STRESS_SECS:-600}"
cargo test --release -p erlmcp-flow --lib queue::tests::stress_mpmc_queues_for_a_while -- --ignored --nocapture
