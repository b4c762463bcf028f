#!/usr/bin/env bash
# Tests that `rebar3 compile' builds the engine and the NIF on its own, with no library built
# beforehand, then that the NIF loads (erlmcp_flow_nif:version/0, abi_version/0):
#
#   (a) in a fresh `git clone' of this repository, run in ffi/erlang/erlmcp_flow (cargo's
#       default target directory, <clone>/target);
#   (b) in a tiny rebar3 project that depends on the application through
#       {git_subdir, "file://<clone (a)>", {ref, Head}, "ffi/erlang"}: rebar3 clones the
#       repository into _build/default/lib/erlmcp_flow and checks out ffi/erlang/erlmcp_flow
#       only (it appends the application's name to the path); the Makefile checks out the rest
#       of the tree from the clone and runs cargo there.
#
# Cost: one release build of the cdylib, plus the workspace's own crates again. (b) shares
# cargo's target directory with (a) (CARGO_TARGET_DIR=<clone (a)>/target, which also tests
# that the Makefile follows CARGO_TARGET_DIR), so the crates.io dependencies compiled by (a)
# are reused; but (b) is a second checkout at another path, so cargo compiles the workspace's
# crates (core, capi, cdylib) again for it, and liberlmcp_flow.a is deleted between (a) and
# (b). So (b) proves the missing-library case for real: its Makefile must find the repository
# root of the dependency, widen the sparse checkout, run cargo in it, and link what cargo made
# (the test checks that the library is back). Reusing the library of (a) in (b) would prove
# none of that; two cold target directories would double the cost for no more proof.
#
# Tests the commit checked out (HEAD), not uncommitted changes. Needs git, make, a C compiler,
# cargo, Erlang/OTP and rebar3; the network only for crates.io (as any cargo build). Works
# from any directory.
#
#   EMF_TEST_BUILD_DIR   work directory (default: a new temporary directory, removed on exit)
#
# Exits non-zero when a step fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

for tool in git make cargo erl rebar3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "test-build.sh: $tool is required" >&2
        exit 1
    fi
done

if [ -n "${EMF_TEST_BUILD_DIR:-}" ]; then
    work="$EMF_TEST_BUILD_DIR"
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/erlmcp_flow-build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi

# The build must find nothing prepared: no library, header or repository named from outside.
unset EMF_LIB_DIR EMF_INCLUDE_DIR EMF_REPO_DIR CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
# rebar3 fetches the git_subdir dependency: not offline. Its cache and global configuration
# are private (HOME stays: cargo and rustup live there).
unset REBAR_OFFLINE
export REBAR_CACHE_DIR="$work/rebar-cache" REBAR_GLOBAL_CONFIG_DIR="$work/rebar-config"
mkdir -p "$REBAR_CACHE_DIR" "$REBAR_GLOBAL_CONFIG_DIR"

head="$(git -C "$repo" rev-parse HEAD)"
step() { echo "test-build.sh: $*" >&2; }
fail() {
    echo "test-build.sh: FAILED: $*" >&2
    exit 1
}

# Loads the NIF with every ebin directory that rebar3 built under `$1' (_build/default/lib;
# a git_subdir dependency's is in its subdirectory) in the code path, and prints its version.
load_check() {
    local args=() dir
    while IFS= read -r dir; do
        args+=(-pa "$dir")
    done < <(find "$1" -maxdepth 6 -type d -name ebin)
    [ ${#args[@]} -gt 0 ] || return 1
    ERL_CRASH_DUMP="$work/erl_crash.dump" erl -noshell "${args[@]}" -eval '
        V = erlmcp_flow_nif:version(),
        A = erlmcp_flow_nif:abi_version(),
        true = is_binary(V) andalso is_integer(A),
        io:format("erlmcp_flow_nif loaded: version ~ts, ABI ~b~n", [V, A]),
        halt(0).'
}

# --- (a) rebar3 compile in a fresh clone -----------------------------------------------------

clone="$work/clone"
step "(a) git clone $repo at ${head:0:12} into $clone"
git clone --quiet --no-checkout "$repo" "$clone"
git -C "$clone" checkout --quiet --detach "$head"
lib_a="$clone/target/release/liberlmcp_flow.a"
[ ! -e "$lib_a" ] || fail "(a) $lib_a exists before the build"

step "(a) rebar3 compile in ffi/erlang/erlmcp_flow (builds the engine with cargo)"
(cd "$clone/ffi/erlang/erlmcp_flow" && rebar3 compile) || fail "(a) rebar3 compile"
[ -f "$lib_a" ] || fail "(a) cargo did not build $lib_a"
load_check "$clone/ffi/erlang/erlmcp_flow/_build/default/lib" ||
    fail "(a) the NIF does not load"

# --- (b) a rebar3 project with a git_subdir dependency ---------------------------------------

project="$work/project"
export CARGO_TARGET_DIR="$clone/target"
rm -f "$lib_a"
step "(b) rebar3 project $project: {git_subdir, \"file://$clone\", {ref, ${head:0:12}...}, \"ffi/erlang\"}"
mkdir -p "$project/src"
cat >"$project/rebar.config" <<EOF
{deps, [{erlmcp_flow, {git_subdir, "file://$clone", {ref, "$head"}, "ffi/erlang"}}]}.
EOF
cat >"$project/src/build_check.app.src" <<'EOF'
{application, build_check,
 [{description, "depends on erlmcp_flow through git_subdir"},
  {vsn, "0.1.0"},
  {applications, [kernel, stdlib, erlmcp_flow]}]}.
EOF
(cd "$project" && rebar3 compile) || fail "(b) rebar3 compile"
dep="$project/_build/default/lib/erlmcp_flow"
[ -f "$dep/crates/cdylib/Cargo.toml" ] ||
    fail "(b) the dependency's sparse checkout was not widened ($dep/crates missing)"
[ -f "$lib_a" ] || fail "(b) cargo did not build $lib_a from the dependency"
load_check "$project/_build/default/lib" || fail "(b) the NIF does not load"

step "ok: (a) fresh clone and (b) git_subdir dependency built the engine and the NIF, which loads"
