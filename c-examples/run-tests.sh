#!/usr/bin/env bash
# Builds and runs the C and C++ hosts against an installed erlmcp_flow.
#
#   c-examples/run-tests.sh [--valgrind]
#
# Installs the already-built library (target/release, never rebuilt here) into
# <repo>/target/emf-prefix with scripts/install.sh --no-build, unless EMF_PREFIX names an
# existing installation; builds with make; runs the C program (dynamic and static) and the
# C++ program, then the ring programs: ring_pingpong (C, two processes), a short
# ring_pingpong --bench, and ring_pingpong-cpp (two threads), then the task queue and cache
# programs: queue_cache (C, dynamic and static) and queue_cache-cpp (2 producer + 2 consumer
# threads), then the HNSW programs: hnsw (C, dynamic and static; given <repo>/tests/data for
# the MiniLM recall check) and hnsw-cpp, then the scheduler cycle: sched, the pool manager:
# pool, then the runtime's C ABI with a service and two agent processes: agent --test, a local
# Raft cluster of 3 node processes with a leader SIGKILL: raft, 3 in-process nodes with the
# host's state machine: raft_node, three in-process gossip members: gossip, and a
# Python service with C agent processes (when pytest is there). With --valgrind
# each one also runs under memcheck (the ring ping-pongs, the queue threads and the HNSW
# builds with a small N). Exits non-zero on any failure. Works from any directory. EMF_RING_N sets the ping-pong length (default
# 20000), EMF_QUEUE_N the tasks per producer thread of queue_cache-cpp (default 20000).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

use_valgrind=0
for arg in "$@"; do
  case "$arg" in
    --valgrind) use_valgrind=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--valgrind]" >&2; exit 2 ;;
  esac
done

if [ -n "${EMF_PREFIX:-}" ]; then
  prefix=$EMF_PREFIX
else
  prefix=$repo/target/emf-prefix
  "$repo/scripts/install.sh" --no-build --prefix "$prefix"
fi

make -C "$here" --no-print-directory PREFIX="$prefix"

build=$here/build
failed=0

# The static programs must not need liberlmcp_flow.so at run time.
for prog in serializer-static queue_cache-static hnsw-static; do
  if readelf -d "$build/$prog" | grep -q 'NEEDED.*liberlmcp_flow'; then
    echo "FAIL: build/$prog is linked to liberlmcp_flow.so" >&2
    failed=1
  fi
done

run() {
  local name=$1; shift
  echo "== $name"
  if "$@"; then
    echo "   ok"
  else
    echo "FAIL: $name (exit $?)" >&2
    failed=1
  fi
}

# Memcheck fails on errors and on definite, indirect and possible leaks. valgrind.supp
# suppresses only the library's registry tables (alive for the whole process by design), so a
# buffer or handle the host forgets to free is reported. Rust std's thread-local blocks show as
# "still reachable", which is not a leak.
valgrind_run() {
  local name=$1; shift
  local log=$build/$name.valgrind.log
  echo "== $name (valgrind)"
  if valgrind --quiet --error-exitcode=1 --leak-check=full --num-callers=50 \
      --errors-for-leak-kinds=definite,indirect,possible \
      --show-leak-kinds=definite,indirect,possible \
      --suppressions="$here/valgrind.supp" --log-file="$log" "$@"; then
    echo "   ok (log: ${log#"$repo"/})"
  else
    echo "FAIL: $name under valgrind (log: $log)" >&2
    cat "$log" >&2
    failed=1
  fi
}

for prog in serializer serializer-static serializer-cpp; do
  run "$prog" "$build/$prog"
done
ring_n=${EMF_RING_N:-20000}
run ring_pingpong "$build/ring_pingpong" -n "$ring_n"
run ring_pingpong-bench "$build/ring_pingpong" --bench -n 200000
run ring_pingpong-cpp "$build/ring_pingpong-cpp" -n "$ring_n"
for prog in queue_cache queue_cache-static; do
  run "$prog" "$build/$prog"
done
run queue_cache-cpp "$build/queue_cache-cpp" -n "${EMF_QUEUE_N:-20000}"
for prog in hnsw hnsw-static; do
  run "$prog" "$build/$prog" "$repo/tests/data"
done
run hnsw-cpp "$build/hnsw-cpp"
run sched "$build/sched"
run pool "$build/pool"
run agent "$build/agent" --test
# A local Raft cluster: 3 `erlmcp-flow raft node' processes (the release binary beside the
# library, unless EMF_BIN names one).
run raft env EMF_BIN="${EMF_BIN:-$repo/target/release/erlmcp-flow}" "$build/raft"
# Three in-process nodes with the host's own state machine (a counter) and a client.
run raft_node "$build/raft_node"
# Three in-process gossip members over rings, their events, and the scheduler's host hooks.
# (Not under valgrind: its slowdown against 100 ms probe periods would make members flap.)
run gossip "$build/gossip"
# Cross-language: a Python Service schedules 500 tasks, two C agent processes answer them
# (ffi/python/tests/test_agent.py; the python stage runs it too, finding build/agent).
if python3 -c 'import pytest' >/dev/null 2>&1; then
  run agent-python-c env EMF_C_AGENT="$build/agent" EMF_REQUIRE_C_AGENT=1 \
    ERLMCP_FLOW_LIB="$prefix/lib/liberlmcp_flow.so" \
    python3 -m pytest -q -p no:cacheprovider "$repo/ffi/python/tests/test_agent.py" -k cross_language
else
  echo "== agent-python-c: skipped (no pytest; the python stage runs it)"
fi

if [ "$use_valgrind" = 1 ]; then
  for prog in serializer serializer-static serializer-cpp; do
    valgrind_run "$prog" "$build/$prog"
  done
  # Forked children run under memcheck too (same log); their failures fail the parent.
  valgrind_run ring_pingpong "$build/ring_pingpong" -n 200
  valgrind_run ring_pingpong-bench "$build/ring_pingpong" --bench -n 5000
  valgrind_run ring_pingpong-cpp "$build/ring_pingpong-cpp" -n 100
  # queue_cache forks a child (huge capacities): it runs under memcheck too.
  for prog in queue_cache queue_cache-static; do
    valgrind_run "$prog" "$build/$prog"
  done
  valgrind_run queue_cache-cpp "$build/queue_cache-cpp" -n 2000
  # hnsw forks children (a huge ef; a second process mapping the saved index): under memcheck
  # too. The MiniLM part with the first 1000 vectors (ground truth by brute force).
  for prog in hnsw hnsw-static; do
    valgrind_run "$prog" "$build/$prog" -n 1000 "$repo/tests/data"
  done
  valgrind_run hnsw-cpp "$build/hnsw-cpp" -n 300
  valgrind_run sched "$build/sched"
  valgrind_run pool "$build/pool"
  # The agent processes it spawns run natively; the service side runs under memcheck.
  valgrind_run agent "$build/agent" --test
  # The node processes run natively; the cluster's host side runs under memcheck.
  EMF_BIN="${EMF_BIN:-$repo/target/release/erlmcp-flow}" valgrind_run raft "$build/raft"
  valgrind_run raft_node "$build/raft_node"
fi

if [ "$failed" != 0 ]; then
  echo "c-examples: FAILED" >&2
  exit 1
fi
echo "c-examples: all passed"
