#!/usr/bin/env bash
# Regenerates include/erlmcp_flow.h from src/capi/ with the pinned cbindgen (via build.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_UPDATE_HEADER=1 cargo build --lib --quiet
echo "include/erlmcp_flow.h regenerated"
