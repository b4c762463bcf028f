#!/usr/bin/env bash
# Runs every test of erlmcp-flow on a fresh machine: Rust (unit, integration, doc, header
# drift), formatting and lints, the layer rules (docs/ARCHITECTURE.md), clippy over the
# feature matrix, the bench smoke run, the C and C++ hosts, Python (the suite, then
# `pip install` / `pip wheel` of the package in a fresh venv), Erlang, the Erlang build from
# scratch (erlang-build: rebar3 compile in a fresh clone and as a git_subdir dependency, cargo
# included), and the cross-language interop test (Python producer, Erlang consumer, C
# subscriber).
# Installs what is missing: Erlang/OTP, rebar3 and libclang (iceoryx2's bindgen, for the
# bench-peers feature) through apt-get (when root), pytest through pip (python-install:
# python3-venv through apt-get when needed, the build dependencies from PyPI).
#
#   scripts/test.sh            everything
#   EMF_SKIP=erlang,python scripts/test.sh    skip stages by name
#
# Prints one line per stage and ends with "stages: N passed, M failed"; exits non-zero when
# any stage fails.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export CARGO_TERM_COLOR=never

skip=",${EMF_SKIP:-},"
passed=0
failed=0
failures=()

stage() {
  local name=$1
  shift
  if [[ "$skip" == *",$name,"* ]]; then
    echo "=== $name: skipped (EMF_SKIP)"
    return
  fi
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

install_deps() {
  local need_apt=()
  command -v erl >/dev/null 2>&1 || need_apt+=(erlang-dev erlang-eunit)
  command -v rebar3 >/dev/null 2>&1 || need_apt+=(rebar3)
  command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
  command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
  command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
  command -v make >/dev/null 2>&1 || need_apt+=(make)
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || need_apt+=(libclang-dev)
  if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing with apt-get: ${need_apt[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null; } ||
        return 1
    else
      echo "missing ${need_apt[*]} and not root: install them first" >&2
      return 1
    fi
  fi
  if ! python3 -c 'import pytest' >/dev/null 2>&1; then
    echo "installing pytest with pip"
    python3 -m pip install --quiet --disable-pip-version-check pytest || return 1
  fi
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" ||
      rustup component add "$c" >/dev/null 2>&1 || true
  done
}

rust_tests() { cargo test --workspace --all-targets --quiet && cargo test --workspace --doc --quiet; }
one_atomics_shim() {
  # All of the engine's atomics come from crates/core/src/sync.rs (std or loom); a line that
  # must use std says why with "std-atomic-ok".
  local bad
  bad=$(grep -rn "std::sync::atomic" crates/core/src --include='*.rs' | grep -v '^crates/core/src/sync.rs:' | grep -v 'std-atomic-ok' || true)
  if [ -n "$bad" ]; then
    echo "std::sync::atomic outside crates/core/src/sync.rs (use crate::sync):"
    echo "$bad"
    return 1
  fi
}
# Clippy runs in stage `features` (scripts/check-features.sh): every package alone, with each
# feature set.
lints() {
  one_atomics_shim &&
    cargo fmt --all -- --check &&
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
}
header_drift() {
  # The unit test header_drift compares OUT_DIR's fresh generation with the committed header;
  # this stage also regenerates the file itself and checks git sees no change.
  EMF_UPDATE_HEADER=1 cargo build -p erlmcp-flow-capi --quiet && git diff --exit-code -- include/erlmcp_flow.h
}
release_build() { cargo build --release --quiet; }
bench_smoke() { cargo run --release --quiet -- bench --quick --out-dir "$repo/target/bench-smoke"; }
# The original reliability test, for real: agent processes and the scheduler SIGKILLed during
# the run; fails unless every task has exactly one correct result in the ledger.
agents_chaos() {
    cargo run --release --quiet -- agents chaos --tasks 10000 --agents 20 --kills 20 --scheduler-kills 2 &&
        cargo run --release --quiet -- agents chaos --tasks 10000 --agents 60 --kills 40 --scheduler-kills 3 --work-us 0 --seed 7
}

stage deps install_deps
stage lints lints
stage layers scripts/check-layers.sh
stage features scripts/check-features.sh
stage rust rust_tests
stage header header_drift
stage release release_build
stage bench-smoke bench_smoke
stage agents-chaos agents_chaos
stage loom env EMF_LOOM_QUICK=1 scripts/loom.sh
stage c-cpp c-examples/run-tests.sh
stage python ffi/python/run-tests.sh
stage python-install ffi/python/test-install.sh
stage erlang ffi/erlang/run-tests.sh
stage erlang-build ffi/erlang/test-build.sh
stage interop tests/interop/run.sh

echo
if [ "$failed" -gt 0 ]; then
  echo "failed stages: ${failures[*]}"
fi
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
