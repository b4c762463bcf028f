#!/usr/bin/env bash
# Benchmarks the serializer against term_to_binary/1, term_to_binary(_, [compressed]) and
# jiffy on the same MCP messages, encode and decode, through the NIF
# (bench/serializer_bench.erl). Works from any directory. Needs jiffy (Debian erlang-jiffy).
#
#   bench/run-serializer.sh [short|full]     (default full: 9 rounds; short: 3, ~10x shorter)
#
#   EMF_LIB_DIR  directory of liberlmcp_flow.a (default: <repo>/target/release)
#   ERL_FLAGS    extra emulator flags (erl reads it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
export EMF_LIB_DIR="${EMF_LIB_DIR:-$repo/target/release}"

if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
    export HOME="${TMPDIR:-/tmp}/erlmcp_flow-erlang-home"
    mkdir -p "$HOME"
fi
export REBAR_OFFLINE=1

if ! erl -noshell -eval 'halt(case code:which(jiffy) of non_existing -> 1; _ -> 0 end).'; then
    echo "run-serializer.sh: jiffy is required (apt-get install erlang-jiffy)" >&2
    exit 1
fi

cd "$here/erlmcp_flow"
rebar3 compile >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
erlc -o "$out" "$here/bench/serializer_bench.erl"
erl -noshell -pa _build/default/lib/erlmcp_flow/ebin -pa "$out" \
    -run serializer_bench main "$@"
