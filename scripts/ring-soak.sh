#!/usr/bin/env bash
# Long ring checks that do not belong in CI:
#   1. MESSAGES (default 10^8) sequence-checked 64-byte frames between two processes;
#   2. a kill -9 loop of KILLS (default 1000) producer processes, with the resume times;
#   3. the mixed campaign `erlmcp-flow ring chaos`: KILLS kills of producers and consumers of an
#      SPSC and an MPSC ring, zombies left unreaped, slot takeovers, every byte of every frame
#      checked; its last line is JSON (kills, frames, corrupt, lost_after_ack, recovery);
#   4. gc leaves no files behind.
#
#   scripts/ring-soak.sh [MESSAGES] [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-100000000}
kills=${2:-1000}
cargo build --release --quiet --bin erlmcp-flow
bin=target/release/erlmcp-flow
base=/dev/shm
[ -d "$base" ] || base=${TMPDIR:-/tmp}
dir=$(mktemp -d "$base/emf-soak.XXXXXX")
trap 'rm -rf "$dir"' EXIT

echo "=== $messages frames, producer and consumer in two processes"
$bin ring create soak --capacity 1048576 --dir "$dir" >/dev/null
start=$(date +%s.%N)
$bin ring produce soak --count "$messages" --size 64 --dir "$dir" &
producer=$!
$bin ring consume soak --count "$messages" --dir "$dir"
wait "$producer"
end=$(date +%s.%N)
echo "rate: $(echo "$messages / ($end - $start)" | bc) msg/s (including the checks)"
$bin stat soak --dir "$dir"

echo "=== kill -9 loop, $kills iterations"
EMF_KILL_ITERATIONS=$kills cargo test --release --quiet --test ring_process kill_9 -- --nocapture 2>&1 |
  grep -E "kill -9 loop|test result"

echo "=== chaos campaign, $kills kills"
$bin ring chaos soak --kills "$kills" --seed "${EMF_CHAOS_SEED:-42}" --dir "$dir"

echo "=== gc"
$bin shm gc --dir "$dir"
left=$(ls -A "$dir")
if [ -n "$left" ]; then
  echo "files left behind: $left"
  exit 1
fi
echo "no files left behind"
