#!/usr/bin/env bash
# The feature matrix: clippy (-D warnings, every target: lib, bins, tests, benches, examples)
# on each package alone with each feature set that matters, so that a package never compiles
# only thanks to features another package switched on, and no `cfg(feature = ...)` branch rots
# unbuilt. Run by scripts/test.sh (stage `features`), which has no other clippy run.
#
#   scripts/check-features.sh            the whole matrix
#   scripts/check-features.sh --list     print the combinations and exit
#
# The combinations (cargo-hack's --each-feature would give the same set: only the bench crate
# has features, and they nest: bench-peers ⊃ peers ⊃ nothing):
#
#   erlmcp-flow          the engine alone (no features)
#   erlmcp-flow-capi     the C ABI alone (no features)
#   erlmcp-flow-cdylib   the C library alone (no features)
#   erlmcp-flow-dataset  the npy reader alone (no features)
#   erlmcp-flow-bench    --no-default-features   (no peer compiled)
#   erlmcp-flow-bench    default (`peers`: serde_json, crossbeam-channel/-queue, concurrent-queue)
#   erlmcp-flow-bench    --features bench-peers  (+ sonic-rs, iceoryx2, quick_cache, moka,
#                        hnsw_rs, anndists; iceoryx2's bindgen needs libclang: libclang-dev)
#
# The engine's own cfgs (loom, fuzzing) are compiled by scripts/loom.sh and the fuzz crate.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

combos=(
  "-p erlmcp-flow"
  "-p erlmcp-flow-capi"
  "-p erlmcp-flow-cdylib"
  "-p erlmcp-flow-dataset"
  "-p erlmcp-flow-bench --no-default-features"
  "-p erlmcp-flow-bench"
  "-p erlmcp-flow-bench --features bench-peers"
)

if [ "${1:-}" = "--list" ]; then
  printf 'cargo clippy %s --all-targets -- -D warnings\n' "${combos[@]}"
  exit 0
fi

failed=()
for c in "${combos[@]}"; do
  start=$SECONDS
  # shellcheck disable=SC2086 # the combination is a list of arguments
  if cargo clippy $c --all-targets --quiet -- -D warnings; then
    echo "features: ok   cargo clippy $c --all-targets ($((SECONDS - start)) s)"
  else
    echo "features: FAIL cargo clippy $c --all-targets ($((SECONDS - start)) s)"
    failed+=("$c")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'features: failed combination: %s\n' "${failed[@]}"
  exit 1
fi
