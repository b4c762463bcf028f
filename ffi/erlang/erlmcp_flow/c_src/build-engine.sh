#!/bin/sh
# Called by c_src/Makefile when the engine's header or static library is missing:
#
#   build-engine.sh sources    makes sure the repository's working tree holds the engine's
#                              sources (Cargo.toml, crates/, include/, .cargo/)
#   build-engine.sh library    that, then `cargo build --release -p erlmcp-flow-cdylib' at the
#                              repository root, into $TARGET_DIR
#
# Environment (set by the Makefile): REPO_DIR (the repository root), TARGET_DIR (cargo's
# target directory), CARGO (the cargo command).
#
# In a rebar3 git_subdir dependency, rebar3 clones the whole repository into
# _build/<profile>/lib/erlmcp_flow and checks out only the application's directory (a sparse
# checkout of ffi/erlang/erlmcp_flow); the clone holds every commit object, so the rest of the
# tree is checked out from it here, without the network.
set -eu

what=${1:-}
repo=${REPO_DIR:?REPO_DIR is not set}
target=${TARGET_DIR:?TARGET_DIR is not set}
cargo=${CARGO:-cargo}

die() {
    echo "erlmcp_flow: $*" >&2
    exit 1
}

have_sources() {
    [ -f "$repo/Cargo.toml" ] && [ -f "$repo/crates/cdylib/Cargo.toml" ] &&
        [ -f "$repo/include/erlmcp_flow.h" ]
}

# A sparse checkout (rebar3 git_subdir) is widened to the whole tree.
widen_sparse_checkout() {
    command -v git >/dev/null 2>&1 || return 1
    # Only the erlmcp-flow clone itself: never a repository that merely contains a copy.
    top=$(git -C "$repo" rev-parse --show-toplevel 2>/dev/null) || return 1
    [ "$(cd "$top" && pwd -P)" = "$(cd "$repo" && pwd -P)" ] || return 1
    git -C "$repo" cat-file -e HEAD:crates/cdylib/Cargo.toml 2>/dev/null || return 1
    [ "$(git -C "$repo" config --bool core.sparseCheckout 2>/dev/null)" = true ] || return 1
    echo "erlmcp_flow: checking out the engine's sources in $repo (it was a sparse checkout)" >&2
    if ! git -C "$repo" sparse-checkout disable >/dev/null 2>&1; then
        # git before 2.25: every path in the patterns, then the index applied to the tree.
        (
            cd "$repo" &&
                patterns=$(git rev-parse --git-path info/sparse-checkout) &&
                printf '/*\n' >"$patterns" &&
                git read-tree -mu HEAD
        ) || return 1
    fi
}

ensure_sources() {
    if have_sources; then
        return 0
    fi
    widen_sparse_checkout || true
    have_sources || die "the engine's sources are not in $repo (no Cargo.toml, crates/cdylib or include/erlmcp_flow.h): set EMF_REPO_DIR to the erlmcp-flow repository, or EMF_LIB_DIR and EMF_INCLUDE_DIR to a built liberlmcp_flow.a and its header"
}

case $what in
sources)
    ensure_sources
    ;;
library)
    ensure_sources
    command -v "${cargo%% *}" >/dev/null 2>&1 ||
        die "cargo not found: the NIF links the Rust engine, which is built with cargo (install Rust from https://rustup.rs and put cargo on PATH, or set CARGO), unless EMF_LIB_DIR names a directory holding liberlmcp_flow.a already"
    echo "erlmcp_flow: building the engine: $cargo build --release -p erlmcp-flow-cdylib (in $repo, target directory $target)" >&2
    # shellcheck disable=SC2086 # CARGO may carry arguments, e.g. "cargo +stable".
    (cd "$repo" && CARGO_TARGET_DIR="$target" $cargo build --release -p erlmcp-flow-cdylib) ||
        die "cargo build --release -p erlmcp-flow-cdylib failed (in $repo)"
    [ -f "$target/release/liberlmcp_flow.a" ] ||
        die "cargo built no $target/release/liberlmcp_flow.a"
    ;;
*)
    die "usage: build-engine.sh sources|library"
    ;;
esac
