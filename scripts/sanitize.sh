#!/usr/bin/env bash
# Sanitizer and memcheck runs (nightly, x86_64 Linux):
#   asan      the unit tests of the engine, the C ABI and the bench suites, and tests/codec.rs,
#             under AddressSanitizer;
#   tsan      the engine's concurrent unit tests (rings, shm, queues, cache, HNSW, router,
#             batch processor, state) under ThreadSanitizer, with std rebuilt instrumented
#             (-Zbuild-std: needs the rust-src component of the nightly toolchain);
#   valgrind  the C and C++ hosts under valgrind memcheck (definite and possible leaks fail).
#
#   scripts/sanitize.sh [asan|tsan|valgrind]...      (default: all three)
#   EMF_TSAN_FILTER="ring:: queue::" scripts/sanitize.sh tsan     other test filters
#
# Each check builds into its own target directory (target/asan, target/tsan).
set -euo pipefail
cd "$(dirname "$0")/.."
host=x86_64-unknown-linux-gnu
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(asan tsan valgrind)

need_nightly() {
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "sanitize: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
  fi
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "sanitize: sanitizers are run on x86_64 Linux only (target $host)" >&2
    exit 1
  fi
}

need_rust_src() {
  # -Zbuild-std compiles std from source: without an instrumented std, ThreadSanitizer misses
  # the synchronisation inside std (Mutex, Arc, thread join) and reports false races.
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "sanitize: installing rust-src for the nightly toolchain (needed by -Zbuild-std)"
    if ! rustup component add rust-src --toolchain nightly; then
      echo "sanitize: cannot install rust-src for nightly, so ThreadSanitizer cannot run" \
        "(it needs -Zbuild-std); install it with: rustup component add rust-src --toolchain nightly" >&2
      exit 1
    fi
  fi
}

for w in "${what[@]}"; do
  case "$w" in
    asan)
      need_nightly
      echo "=== AddressSanitizer: cargo +nightly test (lib tests of core, capi and bench; tests/codec.rs)"
      # scripts/lsan.supp: the ring tests that forget a producer to simulate kill -9 (why there).
      RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
        ASAN_OPTIONS="detect_leaks=1" LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
        EMF_TEST_STACK_KIB=1024 \
        cargo +nightly test --target "$host" --target-dir target/asan \
        -p erlmcp-flow -p erlmcp-flow-capi -p erlmcp-flow-bench --lib --test codec
      ;;
    tsan)
      need_nightly
      need_rust_src
      # The concurrent modules; vector and codec tests are single-threaded (and the recall
      # tests would take long under ThreadSanitizer). --test-threads=1: each test's own threads
      # race with each other, not with other tests' (whose reports would be mixed in).
      # shellcheck disable=SC2206 # a list of filters
      filters=(${EMF_TSAN_FILTER:-ring:: shm:: queue:: cache:: hnsw:: router:: batch:: state::})
      echo "=== ThreadSanitizer: cargo +nightly test -Zbuild-std -p erlmcp-flow --lib ${filters[*]}"
      # No suppressions: a report is a race to fix (or a false positive to explain here).
      # halt_on_error: the test binary fails at the first report, naming both accesses.
      RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" \
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
        cargo +nightly test -Zbuild-std --target "$host" --target-dir target/tsan \
        -p erlmcp-flow --lib -- --test-threads=1 "${filters[@]}"
      ;;
    valgrind)
      echo "=== valgrind: C and C++ hosts"
      cargo build --release -p erlmcp-flow-cdylib --quiet
      c-examples/run-tests.sh --valgrind
      ;;
    *) echo "unknown check $w (asan, tsan, valgrind)" >&2; exit 2 ;;
  esac
done
