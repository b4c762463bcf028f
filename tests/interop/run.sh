#!/usr/bin/env bash
# Cross-language interop test on one shared-memory ring, in a private temporary directory:
#
#   producer     Python (ffi/python, producer.py)    sends FRAMES sequence-numbered frames
#   consumer     Erlang (ffi/erlang, interop_consumer.erl via erlmcp_flow_ring): the primary
#                consumer, pulled with recv_batch
#   subscriber   C (c_subscriber.c against include/ and target/release): a fan-out subscriber
#
# Both consumers are attached (each says so by creating a file) before the producer starts,
# and both must receive every frame in order and intact. Nothing depends on timing: every
# wait is for a condition, with a generous timeout (INTEROP_TIMEOUT_S, default 300 s).
#
#   INTEROP_FRAMES       frames to send (default 100000)
#   INTEROP_TIMEOUT_S    longest wait for any one condition (default 300)
#   EMF_LIB_DIR          directory of liberlmcp_flow.{so,a} (default <repo>/target/release)
#
# The library files are copied first (a rebuild under way does not mix versions), and
# ffi/erlang is only read: it is copied into the temporary directory and built there with its
# own Makefile through rebar3, like ffi/erlang/run-tests.sh does. Details go to stderr; stdout
# gets one line, "N passed, M failed". Exits non-zero when a check failed. Everything started
# is stopped and the temporary directory removed on exit.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
frames="${INTEROP_FRAMES:-100000}"
timeout_s="${INTEROP_TIMEOUT_S:-300}"
lib_dir="${EMF_LIB_DIR:-$repo/target/release}"
python="${PYTHON:-python3}"
producer_id=7

passed=0
failed=0
pids=()
tmp=""

log() { echo "interop: $*" >&2; }
pass() { passed=$((passed + 1)); log "PASS $*"; }
fail() { failed=$((failed + 1)); log "FAIL $*"; }

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
        fi
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() {
    echo "$passed passed, $failed failed"
    if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}

# Fails the remaining checks (counted as failed) and stops.
abort() {
    local remaining=$1
    shift
    fail "$*"
    failed=$((failed + remaining))
    log "skipping the remaining $remaining checks"
    finish
}

# Shows the log of a participant on stderr.
show() {
    if [ -s "$1" ]; then
        sed 's/^/    | /' "$1" | tail -n 40 >&2
    fi
}

# Waits (up to $timeout_s) until file $1 exists; gives up early when process $2 has ended.
wait_for_file() {
    local file=$1 pid=$2 deadline=$((SECONDS + timeout_s))
    while [ ! -e "$file" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.1
    done
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/emf-interop.XXXXXX")" || { echo "0 passed, 1 failed"; exit 1; }
mkdir -p "$tmp/lib" "$tmp/ring" "$tmp/beam" "$tmp/home"
total_checks=7

# --- 1. a consistent copy of the library (it may be rebuilt meanwhile) ----------------------

snapshot_library() {
    local attempt f before after ok
    for attempt in $(seq 1 60); do
        ok=1
        for f in liberlmcp_flow.so liberlmcp_flow.a; do
            if [ ! -f "$lib_dir/$f" ]; then ok=0; break; fi
            before="$(stat -c '%s:%Y' "$lib_dir/$f" 2>/dev/null)" || { ok=0; break; }
            cp -f "$lib_dir/$f" "$tmp/lib/$f.tmp" 2>/dev/null || { ok=0; break; }
            after="$(stat -c '%s:%Y' "$lib_dir/$f" 2>/dev/null)" || { ok=0; break; }
            if [ "$before" != "$after" ] || [ "$(stat -c %s "$tmp/lib/$f.tmp")" != "${after%%:*}" ]; then
                ok=0
                break
            fi
            mv -f "$tmp/lib/$f.tmp" "$tmp/lib/$f"
        done
        # Both files must be built from the sources as they are: neither may be older than the
        # newest source of the library's crates. (Not "close in time to each other": the
        # python-install stage relinks the .so alone, long after the .a, from the same
        # sources.)
        if [ "$ok" -eq 1 ]; then
            local so_t a_t src_t
            so_t="$(stat -c %Y "$lib_dir/liberlmcp_flow.so")"
            a_t="$(stat -c %Y "$lib_dir/liberlmcp_flow.a")"
            src_t="$(find "$repo/crates/core" "$repo/crates/capi" "$repo/crates/cdylib" \
                          "$repo/Cargo.toml" "$repo/Cargo.lock" -type f \
                          \( -name '*.rs' -o -name '*.toml' -o -name 'Cargo.lock' \) \
                          -printf '%T@\n' 2>/dev/null | sort -n | tail -1)"
            src_t="${src_t%%.*}"
            if [ "$so_t" -ge "${src_t:-0}" ] && [ "$a_t" -ge "${src_t:-0}" ]; then
                return 0
            fi
        fi
        [ "$attempt" -eq 1 ] && log "waiting for $lib_dir/liberlmcp_flow.{so,a} (being rebuilt?)"
        sleep 5
    done
    return 1
}

if snapshot_library && ERLMCP_FLOW_LIB="$tmp/lib/liberlmcp_flow.so" \
        "$python" -c "import sys; sys.path.insert(0, '$repo/ffi/python'); import erlmcp_flow" \
        >"$tmp/import.log" 2>&1; then
    export ERLMCP_FLOW_LIB="$tmp/lib/liberlmcp_flow.so"
    pass "library copied from $lib_dir and loadable from Python (ffi/python)"
else
    show "$tmp/import.log"
    abort $((total_checks - 1)) "no usable liberlmcp_flow.so and liberlmcp_flow.a in $lib_dir (cargo build --release)"
fi

# --- 2. the C subscriber ------------------------------------------------------------------

# The executable asks for the library's SONAME (liberlmcp_flow.so.<ABI>): name the copy so.
soname="$( (readelf -d "$tmp/lib/liberlmcp_flow.so" 2>/dev/null ||
            objdump -p "$tmp/lib/liberlmcp_flow.so" 2>/dev/null) |
          sed -n 's/.*SONAME[^A-Za-z0-9_]*\(Library soname: \[\)\{0,1\}\([^] ]*\)\]\{0,1\}.*/\2/p' | head -n 1)"
if [ -n "$soname" ] && [ "$soname" != liberlmcp_flow.so ]; then
    ln -sf liberlmcp_flow.so "$tmp/lib/$soname"
fi
if ${CC:-cc} -std=c11 -Wall -Wextra -Werror -O2 -I"$repo/include" \
        -o "$tmp/c_subscriber" "$here/c_subscriber.c" \
        -L"$tmp/lib" -lerlmcp_flow -Wl,-rpath,"$tmp/lib" >"$tmp/cc.log" 2>&1; then
    :
else
    show "$tmp/cc.log"
    abort $((total_checks - 2)) "C subscriber does not compile"
fi

# --- 3. the Erlang application (built from a copy of ffi/erlang) ---------------------------

if ! command -v erl >/dev/null 2>&1 || ! command -v rebar3 >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Erlang/OTP and rebar3 with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends erlang-dev erlang-eunit rebar3 >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 &&
              apt-get install -y --no-install-recommends erlang-dev erlang-eunit rebar3 >/dev/null 2>&1; }
    fi
fi

build_erlang() {
    local src="$repo/ffi/erlang/erlmcp_flow" dst="$tmp/erlang" f
    rm -rf "$dst"
    mkdir -p "$dst/c_src"
    cp -R "$src/src" "$dst/src" || return 1
    for f in rebar.config rebar.lock; do
        if [ -f "$src/$f" ]; then cp "$src/$f" "$dst/$f" || return 1; fi
    done
    if [ -d "$src/include" ]; then cp -R "$src/include" "$dst/include" || return 1; fi
    find "$src/c_src" -maxdepth 1 -type f ! -name '*.o' ! -name '*.so' -exec cp {} "$dst/c_src/" \; || return 1
    (
        cd "$dst" &&
        HOME="$tmp/home" REBAR_CACHE_DIR="$tmp/home/.cache/rebar3" REBAR_OFFLINE=1 \
        EMF_LIB_DIR="$tmp/lib" EMF_INCLUDE_DIR="$repo/include" rebar3 compile
    ) >"$tmp/erlang-build.log" 2>&1
}

ebin="$tmp/erlang/_build/default/lib/erlmcp_flow/ebin"
built=0
for attempt in 1 2 3; do
    if build_erlang && [ -f "$ebin/erlmcp_flow_ring.beam" ]; then
        built=1
        break
    fi
    # ffi/erlang is being worked on: a broken build may be fixed in a moment.
    log "Erlang build attempt $attempt failed; retrying"
    sleep 20
done
if [ "$built" -eq 1 ] && erlc -o "$tmp/beam" "$here/interop_consumer.erl" >>"$tmp/erlang-build.log" 2>&1; then
    pass "C subscriber and Erlang application (ffi/erlang, rebar3) built against the library copy"
else
    show "$tmp/erlang-build.log"
    abort $((total_checks - 2)) "Erlang build failed (ffi/erlang copied to $tmp/erlang)"
fi

# --- 4. the ring, and both consumers attached before the producer starts -------------------

ring_dir="$tmp/ring"
ring="interop-$$"
if ! "$python" "$here/producer.py" create "$ring_dir" "$ring" >"$tmp/create.log" 2>&1; then
    show "$tmp/create.log"
    abort $((total_checks - 3)) "cannot create ring $ring"
fi

# Each participant also runs under `timeout`: a hang is a failure, never a stuck script.
limit=$((4 * timeout_s))
timeout --kill-after=10 "$limit" "$tmp/c_subscriber" "$ring_dir" "$ring" "$frames" "$producer_id" \
    "$tmp/c.ready" "$timeout_s" >"$tmp/c.log" 2>&1 &
c_pid=$!
pids+=("$c_pid")
timeout --kill-after=10 "$limit" erl -noshell -pa "$ebin" -pa "$tmp/beam" \
    -run interop_consumer main "$ring_dir" "$ring" "$frames" "$producer_id" "$tmp/erl.ready" \
    "$timeout_s" >"$tmp/erl.log" 2>&1 &
erl_pid=$!
pids+=("$erl_pid")

if wait_for_file "$tmp/c.ready" "$c_pid" && wait_for_file "$tmp/erl.ready" "$erl_pid"; then
    pass "Erlang primary consumer and C subscriber attached to ring $ring"
else
    show "$tmp/c.log"
    show "$tmp/erl.log"
    abort $((total_checks - 3)) "consumers did not attach within ${timeout_s}s"
fi

# --- 5. produce; 6. and 7. both consumers got everything -----------------------------------

if timeout --kill-after=10 "$limit" "$python" "$here/producer.py" produce "$ring_dir" "$ring" \
        "$frames" "$producer_id" >"$tmp/producer.log" 2>&1; then
    pass "$(tail -n 1 "$tmp/producer.log")"
else
    fail "Python producer"
    show "$tmp/producer.log"
fi

wait "$erl_pid"
erl_status=$?
if [ "$erl_status" -eq 0 ] && grep -q "^erlang-consumer: ok $frames frames" "$tmp/erl.log"; then
    pass "$(grep '^erlang-consumer:' "$tmp/erl.log" | tail -n 1)"
else
    fail "Erlang primary consumer (exit $erl_status)"
    show "$tmp/erl.log"
fi

wait "$c_pid"
c_status=$?
if [ "$c_status" -eq 0 ] && grep -q "^c-subscriber: ok $frames frames" "$tmp/c.log"; then
    pass "$(tail -n 1 "$tmp/c.log")"
else
    fail "C subscriber (exit $c_status)"
    show "$tmp/c.log"
fi
pids=()

# --- the ring's own counters agree; the ring is removed -------------------------------------

if "$python" "$here/producer.py" check "$ring_dir" "$ring" "$frames" >"$tmp/check.log" 2>&1; then
    pass "$(tail -n 1 "$tmp/check.log")"
else
    fail "ring counters"
    show "$tmp/check.log"
fi

finish
