#!/usr/bin/env bash
# Sanitizer and memcheck runs:
#   1. the library's unit and integration tests under AddressSanitizer (nightly, x86_64 Linux);
#   2. the C and C++ hosts under valgrind memcheck (definite and possible leaks fail).
#
#   scripts/sanitize.sh [asan|valgrind]...      (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(asan valgrind)
for w in "${what[@]}"; do
  case "$w" in
    asan)
      echo "=== AddressSanitizer: cargo +nightly test (lib + tests/codec.rs)"
      RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
        ASAN_OPTIONS="detect_leaks=1" EMF_TEST_STACK_KIB=1024 \
        cargo +nightly test --target x86_64-unknown-linux-gnu --target-dir target/asan \
        -p erlmcp-flow -p erlmcp-flow-bench --lib --test codec
      ;;
    valgrind)
      echo "=== valgrind: C and C++ hosts"
      cargo build --release -p erlmcp-flow-cdylib --quiet
      c-examples/run-tests.sh --valgrind
      ;;
    *) echo "unknown check $w (asan, valgrind)" >&2; exit 2 ;;
  esac
done
