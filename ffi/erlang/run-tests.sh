#!/usr/bin/env bash
# Builds the erlmcp_flow NIF and runs the EUnit tests of the application in
# ffi/erlang/erlmcp_flow. Works from any directory,
# without network access once Erlang/OTP and rebar3 are installed.
#
#   EMF_LIB_DIR  directory of liberlmcp_flow.a (default: <repo>/target/release)
#
# Exits non-zero when the build or any test fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

install_erlang() {
    local packages=(erlang-dev erlang-eunit rebar3)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${packages[@]}"
    fi
}

if ! command -v erl >/dev/null 2>&1 || ! command -v rebar3 >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-tests.sh: installing Erlang/OTP and rebar3 with apt-get" >&2
        install_erlang
    else
        echo "run-tests.sh: erl and rebar3 are required (apt-get install erlang-dev erlang-eunit rebar3)" >&2
        exit 1
    fi
fi

# The serializer's property tests use PropEr (its header proper.hrl comes with
# erlang-proper-dev) and compare with jiffy.
have_erlang_file() {
    erl -noshell -eval "halt(case code:lib_dir($1) of
        {error, _} -> 1;
        Dir -> case filelib:is_file(filename:join(Dir, \"$2\")) of true -> 0; false -> 1 end
    end)." >/dev/null 2>&1
}
missing=()
have_erlang_file proper include/proper.hrl || missing+=(erlang-proper erlang-proper-dev)
have_erlang_file jiffy ebin/jiffy.beam || missing+=(erlang-jiffy)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-tests.sh: installing ${missing[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
            apt-get update
            apt-get install -y --no-install-recommends "${missing[@]}"
        fi
    else
        echo "run-tests.sh: the tests need ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

export EMF_LIB_DIR="${EMF_LIB_DIR:-$repo/target/release}"
if [ ! -f "$EMF_LIB_DIR/liberlmcp_flow.a" ]; then
    echo "run-tests.sh: $EMF_LIB_DIR/liberlmcp_flow.a is missing; build it with 'cargo build --release'" >&2
    exit 1
fi

# rebar3 keeps a cache under $HOME; use a private one when HOME is unset or read-only.
if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
    export HOME="${TMPDIR:-/tmp}/erlmcp_flow-erlang-home"
    mkdir -p "$HOME"
fi
export REBAR_CACHE_DIR="${REBAR_CACHE_DIR:-$HOME/.cache/rebar3}"
mkdir -p "$REBAR_CACHE_DIR"
# No dependencies are fetched; make sure rebar3 never waits on the network.
export REBAR_OFFLINE=1

cd "$here/erlmcp_flow"
rebar3 eunit
