#!/usr/bin/env bash
# Builds the erlmcp_flow NIF, runs the EUnit tests of the application in
# ffi/erlang/erlmcp_flow, then its quality gates: Xref and Dialyzer over src/ and test/ (the
# checks are in its rebar.config). Works from any directory, without network access once
# Erlang/OTP, rebar3, Dialyzer and the tools application are installed.
#
#   EMF_LIB_DIR  directory of liberlmcp_flow.a (default: <repo>/target/release)
#
# Dialyzer's base PLT (erts, kernel, stdlib, eunit) is built once into the rebar3 cache dir
# ($REBAR_CACHE_DIR) and reused by every later run; building it takes 30-40 s on 2 cores.
#
# Exits non-zero when the build or any test fails, or on any Xref or Dialyzer warning.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

install_erlang() {
    local packages=(erlang-dev erlang-eunit erlang-dialyzer erlang-tools rebar3)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${packages[@]}"
    fi
}

# Xref is part of the tools application (Debian erlang-tools).
has_xref() {
    erl -noshell -eval 'halt(case code:which(xref) of non_existing -> 1; _ -> 0 end).'
}

if ! command -v erl >/dev/null 2>&1 || ! command -v rebar3 >/dev/null 2>&1 \
        || ! command -v dialyzer >/dev/null 2>&1 || ! has_xref; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-tests.sh: installing Erlang/OTP, Dialyzer and rebar3 with apt-get" >&2
        install_erlang
    else
        echo "run-tests.sh: erl, rebar3, dialyzer and xref are required" \
             "(apt-get install erlang-dev erlang-eunit erlang-dialyzer erlang-tools rebar3)" >&2
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
# The quality gates over src/ and test/ (Xref through the `check' profile, which compiles the
# tests as sources; Dialyzer through the test profile). Both fail on any warning.
rebar3 as check xref
rebar3 as test dialyzer
