#!/usr/bin/env bash
# Runs the Python binding's pytest suite against the library in the build tree
# (target/release, else target/debug), or against $ERLMCP_FLOW_LIB when it is set.
# Works from any directory; exits non-zero when a test fails. Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

# pytest runs the suite; numpy is needed by erlmcp_flow.vector and its tests.
missing=()
"$python" -c 'import pytest' >/dev/null 2>&1 || missing+=(pytest)
"$python" -c 'import numpy' >/dev/null 2>&1 || missing+=(numpy)
if (( ${#missing[@]} )); then
    PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi

# Pin the build tree's library so that a stale copy in the package directory is not tested.
if [[ -z "${ERLMCP_FLOW_LIB:-}" ]]; then
    for dir in release debug; do
        if [[ -f "$repo/target/$dir/liberlmcp_flow.so" ]]; then
            export ERLMCP_FLOW_LIB="$repo/target/$dir/liberlmcp_flow.so"
            break
        fi
    done
    if [[ -z "${ERLMCP_FLOW_LIB:-}" ]]; then
        echo "run-tests.sh: no liberlmcp_flow.so in $repo/target/{release,debug}; run cargo build --release" >&2
        exit 1
    fi
fi

cd "$repo"
exec "$python" -m pytest -q ffi/python/tests "$@"
