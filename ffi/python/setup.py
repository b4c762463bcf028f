"""Builds the C library with cargo and bundles it in the package (setuptools-rust).

The metadata is in pyproject.toml. This file only declares the Rust part: the cdylib of
``crates/cdylib`` in the cargo workspace two directories up, built in release mode by
``cargo rustc --release`` (in ``$CARGO_TARGET_DIR`` when set, else the workspace's
``target/``) and copied into the package as ``erlmcp_flow/liberlmcp_flow<suffix>``, where
``<suffix>`` is the interpreter's extension-module suffix (e.g.
``.cpython-311-x86_64-linux-gnu.so``). ``erlmcp_flow._native`` looks for it under that name.

It is not a Python extension module: the binding is ``NoBinding`` (setuptools-rust only builds
and copies the library; ctypes loads it).
"""

from pathlib import Path

from setuptools import setup
from setuptools_rust import Binding, RustExtension

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent
CDYLIB_MANIFEST = WORKSPACE / "crates" / "cdylib" / "Cargo.toml"

if not (CDYLIB_MANIFEST.is_file() and (WORKSPACE / "Cargo.toml").is_file()):
    raise SystemExit(
        "erlmcp-flow: building this package compiles the C library from the repository's "
        f"Rust workspace, expected at {WORKSPACE} (with crates/cdylib/Cargo.toml), which is "
        "not there. Build from a checkout of the repository: `pip install ./ffi/python` or "
        "`pip wheel ./ffi/python` from its root. A copy of ffi/python alone or an sdist "
        "cannot build."
    )

setup(
    rust_extensions=[
        RustExtension(
            "erlmcp_flow.liberlmcp_flow",
            path=str(CDYLIB_MANIFEST),
            binding=Binding.NoBinding,
            # Release build even for `pip install -e` (setuptools-rust builds editable installs
            # in debug mode otherwise).
            debug=False,
        )
    ],
)
