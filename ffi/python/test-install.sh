#!/usr/bin/env bash
# Tests the packaging of the Python binding: `pip install ./ffi/python` and `pip wheel
# ./ffi/python` must build the C library with cargo and bundle it in the package, so that
# `import erlmcp_flow` works with no ERLMCP_FLOW_LIB and no build tree.
#
# In a fresh venv in a temporary directory: installs the package from the repository, then,
# from a directory outside the repository and with ERLMCP_FLOW_LIB and PYTHONPATH unset,
# imports it and checks that the library it loaded is the one inside the installed package
# (and the one cargo just built), its ABI version, and a codec round trip. Then builds a wheel
# and checks that it holds the library (and that the library loads).
#
# cargo builds in $CARGO_TARGET_DIR, by default the repository's target/, so after
# `cargo build --release` only the final link is redone. pip needs the package index for the
# build dependencies (setuptools, setuptools-rust). Works from any directory; exits non-zero
# on failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# pip runs cargo from ffi/python: make a relative directory absolute first.
[[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
unset ERLMCP_FLOW_LIB PYTHONPATH

fail() {
    echo "test-install.sh: $*" >&2
    exit 1
}

# The venv module (python3-venv on Debian, where `python3 -m venv` fails without ensurepip).
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing python3-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends python3-venv >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y --no-install-recommends python3-venv >/dev/null; } ||
            fail "cannot install python3-venv"
    else
        fail "$python has no venv module (install python3-venv) and this is not root"
    fi
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/emf-py-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
venv_python="$tmp/venv/bin/python"
pip=("$venv_python" -m pip --disable-pip-version-check --quiet)
export PIP_ROOT_USER_ACTION=ignore
# setuptools builds in the temporary directory rather than ffi/python/build: every run starts
# from nothing (no file of an earlier build can end up in the package) and leaves no copy of
# the library in the source tree.
printf '[build]\nbuild_base = %s\n' "$tmp/build" >"$tmp/setup.cfg"
export DIST_EXTRA_CONFIG="$tmp/setup.cfg"

echo "pip install $here (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
"${pip[@]}" install "$here"

# Outside the repository, so that only the installed package can be imported.
mkdir "$tmp/elsewhere"
(
    cd "$tmp/elsewhere"
    "$venv_python" - "$tmp/venv" "$CARGO_TARGET_DIR" <<'EOF'
import hashlib
import os
import sys
from pathlib import Path

venv, target_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
assert "ERLMCP_FLOW_LIB" not in os.environ, "ERLMCP_FLOW_LIB must be unset for this test"

import erlmcp_flow as emf
from erlmcp_flow import _native

package_dir = Path(emf.__file__).resolve().parent
assert venv in package_dir.parents, f"imported {package_dir}, not the installed package"
lib = Path(emf.library_path).resolve()
assert lib.parent == package_dir, f"loaded {lib}, not a library bundled in {package_dir}"
assert lib.name in _native.BUNDLED_FILES, f"unexpected file name {lib.name}"
assert lib.is_file()

# It is the library cargo just built (in CARGO_TARGET_DIR), not some other copy.
built = target_dir / "release" / _native.LIBRARY_FILE
if not os.environ.get("CARGO_BUILD_TARGET"):
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(lib) == digest(built), f"{lib} differs from {built}"

assert emf.abi_version() == emf.ABI_VERSION, (emf.abi_version(), emf.ABI_VERSION)
text = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search"}}'
archive = emf.encode(text, priority="high")
assert emf.validate(archive) == 1
assert emf.decode(archive) == text, emf.decode(archive)
with emf.Message(archive) as m:
    e = m.envelope(0)
    assert (e.kind, e.priority, e.id, e.method) == ("request", "high", 7, "tools/call"), e
print(f"installed package ok: {lib.name}, ABI {emf.abi_version()}, version {emf.version()}")
EOF
) || fail "the installed package does not work without ERLMCP_FLOW_LIB"

echo "pip wheel $here"
"${pip[@]}" wheel --no-deps --wheel-dir "$tmp/wheels" "$here"
(
    cd "$tmp/elsewhere"
    "$venv_python" - "$tmp/wheels" <<'EOF'
import ctypes
import re
import sys
import sysconfig
import zipfile
from pathlib import Path

# Not importing erlmcp_flow here: the library is loaded from the wheel alone.
wheels = sorted(Path(sys.argv[1]).glob("erlmcp_flow-*.whl"))
assert len(wheels) == 1, wheels
wheel = wheels[0]
# A platform wheel: it carries a native library.
assert not wheel.name.endswith("-none-any.whl"), wheel.name
installed = Path(sysconfig.get_paths()["platlib"]) / "erlmcp_flow"
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("erlmcp_flow/liberlmcp_flow")]
    assert len(libs) == 1, f"{wheel.name} holds {libs or 'no library'}"
    name = libs[0].split("/", 1)[1]
    # The same file as the one `pip install` put in the package (and that worked there).
    assert (installed / name).is_file(), f"{name} is not what pip install bundled"
    assert z.read(libs[0]) == (installed / name).read_bytes(), f"{name} differs from {installed}"
    extracted = Path(z.extract(libs[0], Path(sys.argv[1]) / "unpacked"))
cdll = ctypes.CDLL(str(extracted))
cdll.emf_abi_version.restype = ctypes.c_uint32
abi = cdll.emf_abi_version()
expected = re.search(r"^ABI_VERSION = (\d+)$", (installed / "_native.py").read_text(), re.M)
assert expected and abi == int(expected.group(1)), (abi, expected)
print(f"wheel ok: {wheel.name} holds erlmcp_flow/{name} (ABI {abi})")
EOF
) || fail "the wheel does not bundle a working library"
