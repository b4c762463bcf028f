#!/usr/bin/env bash
# Regenerates include/erlmcp_flow.h from crates/capi/src with the pinned cbindgen (via crates/capi/build.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
EMF_UPDATE_HEADER=1 cargo build -p erlmcp-flow-capi --quiet
echo "include/erlmcp_flow.h regenerated"
