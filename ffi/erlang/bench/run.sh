#!/usr/bin/env bash
# Benchmarks NIF send throughput into a shared-memory ring (bench/ring_bench.erl): send/2 and
# send_batch/2 of 64-byte frames, with `erlmcp-flow ring consume' in another OS process and
# with a delivery thread to an Erlang process as consumers. Works from any directory.
#
#   bench/run.sh [FRAMES_PER_CASE]     (default 1000000)
#
#   EMF_LIB_DIR  directory of liberlmcp_flow.a and erlmcp-flow (default: <repo>/target/release)
#   EMF_CLI      the erlmcp-flow binary (default: $EMF_LIB_DIR/erlmcp-flow)
#   ERL_FLAGS    extra emulator flags (erl reads it), e.g. "+sbwt none" on a small machine
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
export EMF_LIB_DIR="${EMF_LIB_DIR:-$repo/target/release}"

if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
    export HOME="${TMPDIR:-/tmp}/erlmcp_flow-erlang-home"
    mkdir -p "$HOME"
fi
export REBAR_OFFLINE=1

cd "$here/erlmcp_flow"
rebar3 compile >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
erlc -o "$out" "$here/bench/ring_bench.erl"
erl -noshell -pa _build/default/lib/erlmcp_flow/ebin -pa "$out" \
    -run ring_bench main "$@"
