#!/usr/bin/env bash
# Runs the cargo-fuzz targets (libFuzzer, nightly) for a while each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Targets: decode, json_to_archive, decompress, capi, ring_corrupt, hnsw_file, raft_step,
# raft_log_open. Default 60 s each. Installs cargo-fuzz
# from crates.io when missing. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode json_to_archive decompress capi ring_corrupt hnsw_file raft_step raft_log_open)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || { echo "needs a nightly toolchain" >&2; exit 1; }
mkdir -p fuzz/corpus/json_to_archive fuzz/corpus/decode fuzz/corpus/capi
# Seed the corpora with the MCP samples the tests use, as JSON and as archives.
cargo build --release --quiet --bin erlmcp-flow
for f in tests/fuzz-seeds/*.json; do
  [ -e "$f" ] || continue
  cp "$f" fuzz/corpus/json_to_archive/
  cp "$f" fuzz/corpus/capi/
  target/release/erlmcp-flow codec encode < "$f" > "fuzz/corpus/decode/$(basename "$f" .json).emf"
  cp "fuzz/corpus/decode/$(basename "$f" .json).emf" fuzz/corpus/capi/
done
for t in "${targets[@]}"; do
  echo "=== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
