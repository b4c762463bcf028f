"""The raw C ABI through ctypes: declarations, struct layouts, NULL and oversized arguments,
double frees, the error-text buffer, the ABI check and library discovery."""

import ctypes
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
import textwrap
from ctypes import byref, c_bool, c_size_t
from pathlib import Path

import pytest

import erlmcp_flow as emf
from erlmcp_flow import _native
from erlmcp_flow._native import (
    emf_buf_t,
    emf_cache_stats_t,
    emf_encode_options_t,
    emf_envelope_info_t,
    emf_hnsw_hit_t,
    emf_hnsw_params_t,
    emf_message_p,
    emf_ring_options_t,
    emf_ring_stats_t,
    emf_sched_action_t,
    emf_raft_client_options_t,
    emf_raft_cluster_options_t,
    emf_pbft_group_options_t,
    emf_raft_node_info_t,
    emf_raft_node_options_t,
    emf_gossip_event_t,
    emf_gossip_member_t,
    emf_gossip_options_t,
    emf_gossip_stats_t,
    emf_raft_request_t,
    emf_raft_sm_t,
    emf_raft_status_t,
    emf_raft_member_change_t,
    emf_sched_agent_load_t,
    emf_sched_options_t,
    emf_sched_stats_t,
    emf_service_options_t,
    emf_service_stats_t,
    emf_slice_t,
    emf_task_queue_stats_t,
    emf_value_event_t,
    lib,
)

REPO = Path(__file__).resolve().parents[3]
HEADER = REPO / "include" / "erlmcp_flow.h"
PACKAGE_DIR = Path(emf.__file__).resolve().parent
SAMPLE = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
HUGE = 2**31 + 7  # > EMF_MAX_INPUT_LEN


def last_error():
    return emf._errors.last_error_message()


def archive_buf():
    """A fresh library-owned emf_buf_t holding the archive of SAMPLE."""
    out = emf_buf_t()
    assert lib.emf_json_to_archive(SAMPLE, len(SAMPLE), None, byref(out)) == emf.EMF_OK
    return out


# --- declarations ---------------------------------------------------------------------------


def header_functions():
    text = HEADER.read_text()
    return set(re.findall(r"^\S.*?\b(emf_\w+)\(", text, flags=re.M))


def test_every_header_function_is_declared():
    declared = set(_native.PROTOTYPES)
    assert header_functions() == declared
    for name in declared:
        fn = getattr(lib, name)
        assert fn.argtypes is not None, name
        assert fn.restype is not None, name


def test_argument_counts_match_the_header():
    """Every declaration's parameter count is the one the header gives the function."""
    text = HEADER.read_text()
    found = 0
    for name, params in re.findall(r"^\S[^;()]*?\b(emf_\w+)\(([^)]*)\);", text, flags=re.M):
        params = params.strip()
        count = 0 if params in ("", "void") else params.count(",") + 1
        assert len(_native.PROTOTYPES[name][1]) == count, name
        found += 1
    assert found == len(header_functions())


def test_constants_match_the_header():
    defines = dict(re.findall(r"#define (EMF_\w+) (-?\d+)\s*$", HEADER.read_text(), flags=re.M))
    assert defines, "no #define found in the header"
    for name, value in defines.items():
        if name.startswith("EMF_VERSION_"):
            continue
        assert getattr(emf, name) == int(value), name
    assert emf.EMF_MAX_INPUT_LEN == 2**31 - 1


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_match_the_c_compiler(tmp_path):
    fields = {
        "emf_buf_t": emf_buf_t,
        "emf_encode_options_t": emf_encode_options_t,
        "emf_envelope_info_t": emf_envelope_info_t,
        "emf_ring_options_t": emf_ring_options_t,
        "emf_ring_stats_t": emf_ring_stats_t,
        "emf_slice_t": emf_slice_t,
        "emf_task_queue_stats_t": emf_task_queue_stats_t,
        "emf_cache_stats_t": emf_cache_stats_t,
        "emf_hnsw_params_t": emf_hnsw_params_t,
        "emf_hnsw_hit_t": emf_hnsw_hit_t,
        "emf_value_event_t": emf_value_event_t,
        "emf_sched_options_t": emf_sched_options_t,
        "emf_sched_action_t": emf_sched_action_t,
        "emf_sched_stats_t": emf_sched_stats_t,
        "emf_service_options_t": emf_service_options_t,
        "emf_service_stats_t": emf_service_stats_t,
        "emf_sched_agent_load_t": emf_sched_agent_load_t,
        "emf_raft_cluster_options_t": emf_raft_cluster_options_t,
        "emf_pbft_group_options_t": emf_pbft_group_options_t,
        "emf_raft_client_options_t": emf_raft_client_options_t,
        "emf_raft_status_t": emf_raft_status_t,
        "emf_raft_sm_t": emf_raft_sm_t,
        "emf_raft_node_options_t": emf_raft_node_options_t,
        "emf_raft_node_info_t": emf_raft_node_info_t,
        "emf_raft_request_t": emf_raft_request_t,
        "emf_raft_member_change_t": emf_raft_member_change_t,
        "emf_gossip_options_t": emf_gossip_options_t,
        "emf_gossip_member_t": emf_gossip_member_t,
        "emf_gossip_event_t": emf_gossip_event_t,
        "emf_gossip_stats_t": emf_gossip_stats_t,
    }
    lines = []
    for struct, cls in fields.items():
        lines.append(f'printf("{struct} sizeof %zu\\n", sizeof(struct {struct}));')
        for field, _ in cls._fields_:
            lines.append(
                f'printf("{struct} {field} %zu\\n", offsetof(struct {struct}, {field}));'
            )
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"erlmcp_flow.h\"\n"
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(
        ["cc", "-Wall", "-Werror", "-I", str(HEADER.parent), str(source), "-o", str(exe)],
        check=True,
    )
    printed = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert len(printed.splitlines()) == len(lines)
    for line in printed.splitlines():
        struct, field, value = line.split()
        cls = fields[struct]
        got = ctypes.sizeof(cls) if field == "sizeof" else getattr(cls, field).offset
        assert got == int(value), f"{struct}.{field}"


def test_buf_struct_has_the_token_field():
    """Layout of emf_buf_t without a C compiler: {uint8_t *data; size_t len; uint64_t token}."""
    assert [(name, t) for name, t in emf_buf_t._fields_] == [
        ("data", ctypes.POINTER(ctypes.c_uint8)),
        ("len", ctypes.c_size_t),
        ("token", ctypes.c_uint64),
    ]
    assert emf_buf_t.token.offset == 2 * ctypes.sizeof(ctypes.c_void_p)
    empty = emf_buf_t()
    assert (bool(empty.data), empty.len, empty.token) == (False, 0, 0)


def test_kind_and_priority_names():
    assert lib.emf_kind_name(emf.EMF_KIND_REQUEST) == b"request"
    assert lib.emf_kind_name(emf.EMF_KIND_TASK) == b"task"
    assert lib.emf_kind_name(emf.EMF_KIND_ERROR) == b"error"
    assert lib.emf_priority_name(emf.EMF_PRIORITY_CRITICAL) == b"critical"
    assert lib.emf_priority_name(emf.EMF_PRIORITY_LOW) == b"low"
    for bad in (6, 99, 2**31, 2**32 - 1):
        assert lib.emf_kind_name(bad) == b"unknown"
    for bad in (4, 99, 2**32 - 1):
        assert lib.emf_priority_name(bad) == b"unknown"


# --- NULL and oversized arguments -----------------------------------------------------------


def input_calls(ptr, length):
    """Every function taking a byte input, called with (ptr, length) and valid out-params."""
    out = emf_buf_t()
    count = c_size_t()
    handle = emf_message_p()
    flag = c_bool()
    return {
        "emf_json_to_archive": lambda: lib.emf_json_to_archive(ptr, length, None, byref(out)),
        "emf_archive_to_json": lambda: lib.emf_archive_to_json(ptr, length, byref(out)),
        "emf_archive_validate": lambda: lib.emf_archive_validate(ptr, length, byref(count)),
        "emf_message_open": lambda: lib.emf_message_open(ptr, length, byref(handle)),
        "emf_compress_if_needed": lambda: lib.emf_compress_if_needed(
            ptr, length, 1024, byref(out), byref(flag)
        ),
        "emf_decompress": lambda: lib.emf_decompress(ptr, length, 1024, byref(out)),
    }


@pytest.mark.parametrize("name", sorted(input_calls(None, 0)))
def test_null_input_with_nonzero_length(name):
    status = input_calls(None, 5)[name]()
    assert status == emf.EMF_ERR_NULL_ARGUMENT == 1
    assert last_error()


@pytest.mark.parametrize("name", sorted(input_calls(None, 0)))
@pytest.mark.parametrize("length", [HUGE, 2**63, 2**64 - 1])
def test_huge_length_is_refused_before_any_read(name, length):
    status = input_calls(b"tiny", length)[name]()
    assert status == emf.EMF_ERR_TOO_LARGE == 13
    assert "exceeds" in last_error()


def test_null_out_parameters():
    archive = emf.encode(SAMPLE)
    n = len(archive)
    out = emf_buf_t()
    calls = [
        lambda: lib.emf_json_to_archive(SAMPLE, len(SAMPLE), None, None),
        lambda: lib.emf_archive_to_json(archive, n, None),
        lambda: lib.emf_archive_validate(archive, n, None),
        lambda: lib.emf_message_open(archive, n, None),
        lambda: lib.emf_compress_if_needed(SAMPLE, len(SAMPLE), 0, None, None),
        lambda: lib.emf_compress_if_needed(SAMPLE, len(SAMPLE), 0, byref(out), None),
        lambda: lib.emf_decompress(SAMPLE, len(SAMPLE), 10, None),
        lambda: lib.emf_message_count(None, byref(c_size_t())),
        lambda: lib.emf_message_envelope(None, 0, byref(emf_envelope_info_t())),
        lambda: lib.emf_message_to_json(None, byref(out)),
        lambda: lib.emf_message_payload_json(None, 0, byref(out)),
        lambda: lib.emf_message_id_json(None, 0, byref(out)),
    ]
    for call in calls:
        assert call() == emf.EMF_ERR_NULL_ARGUMENT
        assert last_error()
    assert not out.data  # out-params are written only on success
    handle = emf_message_p()
    assert lib.emf_message_open(archive, n, byref(handle)) == emf.EMF_OK
    try:
        assert lib.emf_message_count(handle, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_message_envelope(handle, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_message_to_json(handle, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_message_id_json(handle, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
    finally:
        assert lib.emf_message_free(handle) == emf.EMF_OK


def test_null_with_zero_length_is_an_empty_input():
    out = emf_buf_t()
    assert lib.emf_json_to_archive(None, 0, None, byref(out)) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_archive_validate(None, 0, byref(c_size_t())) == emf.EMF_ERR_CORRUPT
    flag = c_bool(True)
    assert lib.emf_compress_if_needed(None, 0, 0, byref(out), byref(flag)) == emf.EMF_OK
    assert (out.len, bool(out.data), flag.value) == (0, False, False)


def test_unknown_priority_code_in_options():
    opts = emf_encode_options_t(priority=77)
    out = emf_buf_t()
    status = lib.emf_json_to_archive(SAMPLE, len(SAMPLE), byref(opts), byref(out))
    assert status == emf.EMF_ERR_INVALID_ARGUMENT
    assert "77" in last_error()


# --- owned buffers and handles --------------------------------------------------------------


def test_buf_free_twice_through_a_copy():
    buf = archive_buf()
    assert buf.len > 0 and buf.data
    copy = emf_buf_t.from_buffer_copy(buf)
    assert lib.emf_buf_free(byref(buf)) == emf.EMF_OK
    assert (buf.len, bool(buf.data)) == (0, False)  # reset to {NULL, 0}
    assert lib.emf_buf_free(byref(copy)) == emf.EMF_ERR_INVALID_ARGUMENT == 2
    assert "already freed" in last_error()
    assert copy.len > 0 and copy.data  # left untouched
    assert lib.emf_buf_free(byref(buf)) == emf.EMF_OK  # now empty: fine


def test_buf_free_null_empty_and_foreign():
    assert lib.emf_buf_free(None) == emf.EMF_OK
    assert lib.emf_buf_free(byref(emf_buf_t())) == emf.EMF_OK
    mine = (ctypes.c_uint8 * 8)()
    foreign = emf_buf_t(ctypes.cast(mine, ctypes.POINTER(ctypes.c_uint8)), 8)
    assert lib.emf_buf_free(byref(foreign)) == emf.EMF_ERR_INVALID_ARGUMENT
    buf = archive_buf()
    assert buf.token != 0
    # A copy of the real buffer with one field changed (the token copied too, so only that
    # field is wrong).
    wrong_len = emf_buf_t(buf.data, buf.len + 1, buf.token)
    assert lib.emf_buf_free(byref(wrong_len)) == emf.EMF_ERR_INVALID_ARGUMENT
    wrong_token = emf_buf_t(buf.data, buf.len, buf.token + 1)
    assert lib.emf_buf_free(byref(wrong_token)) == emf.EMF_ERR_INVALID_ARGUMENT
    no_token = emf_buf_t(buf.data, buf.len)  # token 0: not a buffer the library returned
    assert lib.emf_buf_free(byref(no_token)) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_buf_free(byref(buf)) == emf.EMF_OK


def test_stale_buf_copy_is_refused_after_address_reuse():
    """A stale copy (data, len and token of a freed buffer) is refused even when a newer
    buffer of the same length now lives at the same address; the newer one is unharmed."""
    first = archive_buf()
    stale = emf_buf_t.from_buffer_copy(first)
    assert stale.token == first.token
    address = ctypes.addressof(first.data.contents)
    assert lib.emf_buf_free(byref(first)) == emf.EMF_OK
    newer, others = None, []
    for _ in range(200):
        candidate = archive_buf()
        if ctypes.addressof(candidate.data.contents) == address:
            newer = candidate
            break
        others.append(candidate)
    try:
        if newer is None:
            pytest.skip("the allocator did not reuse the address")
        assert (newer.len, newer.token != stale.token) == (stale.len, True)
        assert lib.emf_buf_free(byref(stale)) == emf.EMF_ERR_INVALID_ARGUMENT == 2
        assert "already freed" in last_error()
        # The newer buffer is still intact and still frees once.
        data = (ctypes.c_char * newer.len).from_address(address).raw
        assert emf.decode(data) == SAMPLE.decode()
        assert lib.emf_buf_free(byref(newer)) == emf.EMF_OK
    finally:
        for other in others:
            assert lib.emf_buf_free(byref(other)) == emf.EMF_OK


def test_message_free_twice_and_use_after_free():
    archive = emf.encode(SAMPLE)
    handle = emf_message_p()
    assert lib.emf_message_open(archive, len(archive), byref(handle)) == emf.EMF_OK
    count = c_size_t()
    assert lib.emf_message_count(handle, byref(count)) == emf.EMF_OK and count.value == 1
    assert lib.emf_message_free(handle) == emf.EMF_OK
    assert lib.emf_message_free(handle) == emf.EMF_ERR_INVALID_ARGUMENT == 2
    assert "already freed" in last_error()
    assert lib.emf_message_count(handle, byref(count)) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_message_free(None) == emf.EMF_OK


def test_stale_message_handle_never_names_a_newer_message():
    """Handles are never-reused tokens: open A, free A, open B, free A again -> refused, and
    B is untouched."""
    archive_a = emf.encode(SAMPLE)
    archive_b = emf.encode('[{"jsonrpc":"2.0","method":"b1"},{"jsonrpc":"2.0","method":"b2"}]')
    a = emf_message_p()
    assert lib.emf_message_open(archive_a, len(archive_a), byref(a)) == emf.EMF_OK
    stale = ctypes.cast(a, ctypes.c_void_p).value
    assert lib.emf_message_free(a) == emf.EMF_OK
    b = emf_message_p()
    assert lib.emf_message_open(archive_b, len(archive_b), byref(b)) == emf.EMF_OK
    try:
        assert ctypes.cast(b, ctypes.c_void_p).value != stale
        assert lib.emf_message_free(a) == emf.EMF_ERR_INVALID_ARGUMENT == 2
        assert "already freed" in last_error()
        count = c_size_t()
        assert lib.emf_message_count(a, byref(count)) == emf.EMF_ERR_INVALID_ARGUMENT
        # B still works.
        assert lib.emf_message_count(b, byref(count)) == emf.EMF_OK and count.value == 2
        info = emf_envelope_info_t()
        assert lib.emf_message_envelope(b, 1, byref(info)) == emf.EMF_OK
        assert ctypes.string_at(info.method, info.method_len) == b"b2"
    finally:
        assert lib.emf_message_free(b) == emf.EMF_OK
    assert lib.emf_message_free(b) == emf.EMF_ERR_INVALID_ARGUMENT


def test_message_id_json():
    text = (
        b'[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":"x\\"y","method":"b"},'
        b'{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}},'
        b'{"jsonrpc":"2.0","method":"n"},'
        b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":1},'
        b'{"jsonrpc":"2.0","id":2.5,"result":1}]'
    )
    archive = emf.encode(text)
    handle = emf_message_p()
    assert lib.emf_message_open(archive, len(archive), byref(handle)) == emf.EMF_OK
    try:
        want = [b"1", b'"x\\"y"', b"null", None, b"123456789012345678901234567890", b"2.5"]
        for index, expected in enumerate(want):
            out = emf_buf_t()
            status = lib.emf_message_id_json(handle, index, byref(out))
            if expected is None:
                assert status == emf.EMF_ERR_NOT_FOUND == 14
                assert not out.data and out.token == 0  # written only on success
                continue
            assert status == emf.EMF_OK
            assert out.token != 0
            assert ctypes.string_at(out.data, out.len) == expected
            assert lib.emf_buf_free(byref(out)) == emf.EMF_OK
        out = emf_buf_t()
        assert lib.emf_message_id_json(handle, len(want), byref(out)) == emf.EMF_ERR_INVALID_ARGUMENT
    finally:
        assert lib.emf_message_free(handle) == emf.EMF_OK


def test_buffers_do_not_leak():
    """Thousands of calls returning buffers leave the resident size flat."""

    def rss_kb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        pytest.skip("no /proc/self/status")

    big = (b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * 50_000 + b'"}')
    archive = emf.encode(big)

    def work():
        for _ in range(400):
            emf.decode(archive)
            emf.encode(big)
            with emf.Message(archive) as m:
                m.payload_json(0)
                m.to_json()

    work()
    before = rss_kb()
    work()
    work()
    # 800 rounds x ~200 KB returned per round: a leak would add ~160 MB.
    assert rss_kb() - before < 20_000


# --- the error-text buffer ------------------------------------------------------------------


def test_last_error_message_with_a_tiny_buffer():
    out = emf_buf_t()
    assert lib.emf_archive_to_json(b"garbage", 7, byref(out)) == emf.EMF_ERR_CORRUPT
    full = c_size_t()
    # Length only: NULL buffer, cap 0.
    assert lib.emf_last_error_message(None, 0, byref(full)) == emf.EMF_ERR_BUFFER_TOO_SMALL
    assert full.value > 12
    tiny = ctypes.create_string_buffer(12)
    n = c_size_t()
    assert lib.emf_last_error_message(tiny, 12, byref(n)) == emf.EMF_ERR_BUFFER_TOO_SMALL == 12
    assert n.value == full.value
    assert tiny.raw[11] == 0 and len(tiny.value) == 11
    exact = ctypes.create_string_buffer(full.value + 1)
    assert lib.emf_last_error_message(exact, full.value + 1, byref(n)) == emf.EMF_OK
    assert len(exact.value) == n.value == full.value
    assert exact.value.startswith(tiny.value)
    assert exact.value.decode() == last_error()  # reading never changes the message
    # One byte short: cut again.
    short = ctypes.create_string_buffer(full.value)
    assert lib.emf_last_error_message(short, full.value, byref(n)) == emf.EMF_ERR_BUFFER_TOO_SMALL
    assert lib.emf_last_error_message(tiny, 12, None) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_last_error_message(None, 12, byref(n)) == emf.EMF_ERR_NULL_ARGUMENT


@pytest.mark.parametrize("initial_capacity", [0, 1, 2, 12, 40])
def test_the_wrapper_retries_with_the_reported_length(initial_capacity):
    """A message longer than the first buffer still comes back whole (every library message
    fits the default 256 bytes, so the retry is forced with a small first buffer)."""
    with pytest.raises(emf.Error) as err:
        emf.decode(b"garbage")
    full = c_size_t()
    assert lib.emf_last_error_message(None, 0, byref(full)) == emf.EMF_ERR_BUFFER_TOO_SMALL
    text = emf._errors.last_error_message(initial_capacity=initial_capacity)
    assert len(text.encode()) == full.value > 40
    assert text == err.value.message


def test_error_text_is_per_thread():
    import threading

    with pytest.raises(emf.Error):
        emf.decode(b"garbage")
    mine = last_error()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(last_error()))
    thread.start()
    thread.join()
    assert mine and seen == [""]


def test_status_names():
    assert lib.emf_status_name(7) == b"EMF_ERR_CORRUPT"
    assert lib.emf_status_name(-1) == b"EMF_ERR_UNKNOWN"
    assert lib.emf_version_string().decode() == emf.version()


# --- ABI check and discovery ----------------------------------------------------------------


def test_abi_mismatch_is_refused():
    _native.check_abi_version(emf.ABI_VERSION)  # the matching version passes
    with pytest.raises(emf.AbiMismatchError) as err:
        emf.check_abi_version(emf.ABI_VERSION + 1, "libfuture.so")
    assert isinstance(err.value, ImportError)
    message = str(err.value)
    assert "libfuture.so" in message
    assert f"version {emf.ABI_VERSION + 1}" in message and f"version {emf.ABI_VERSION}" in message


def test_load_refuses_a_library_of_another_abi(monkeypatch):
    monkeypatch.setattr(_native, "ABI_VERSION", 99)
    with pytest.raises(emf.AbiMismatchError, match="ABI version 99"):
        _native.load_library(emf.library_path)


def run_python(code, env_lib=None, cwd=None, sys_path=None):
    env = {k: v for k, v in os.environ.items() if k != _native.ENV_VAR}
    if env_lib is not None:
        env[_native.ENV_VAR] = str(env_lib)
    env["PYTHONPATH"] = str(sys_path or PACKAGE_DIR.parent)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd or "/",
        capture_output=True,
        text=True,
    )


def test_env_var_comes_first(tmp_path):
    copy = tmp_path / "custom" / "libcopy.so"
    copy.parent.mkdir()
    shutil.copy(emf.library_path, copy)
    r = run_python("import erlmcp_flow as e; print(e.library_path)", env_lib=copy)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(copy)


def test_env_var_pointing_nowhere_is_an_import_error():
    r = run_python(
        """
        try:
            import erlmcp_flow
        except ImportError as e:
            print(type(e).__name__, e)
        """,
        env_lib="/nonexistent/liberlmcp_flow.so",
    )
    assert r.returncode == 0, r.stderr
    assert "LibraryNotFoundError" in r.stdout and "/nonexistent/liberlmcp_flow.so" in r.stdout


@pytest.mark.skipif(
    any((PACKAGE_DIR / name).exists() for name in _native.BUNDLED_FILES),
    reason="a library is bundled in the package",
)
@pytest.mark.skipif(
    not any((REPO / "target" / d / _native.LIBRARY_FILE).exists() for d in ("release", "debug")),
    reason="no library in the build tree",
)
def test_build_tree_is_found_without_env_var():
    r = run_python("import erlmcp_flow as e; print(e.library_path)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).parent in (REPO / "target" / "release", REPO / "target" / "debug")


def test_a_package_near_the_root_has_no_build_tree_to_look_at(monkeypatch):
    # e.g. `pip install --target /opt`: /opt/erlmcp_flow has no <repo> three levels up.
    monkeypatch.setattr(_native, "__file__", "/opt/erlmcp_flow/_native.py")
    package_dir = Path("/opt/erlmcp_flow")
    assert _native.candidate_paths() == [
        ("package directory", package_dir / name) for name in _native.BUNDLED_FILES
    ]


def test_package_directory_comes_before_the_build_tree(tmp_path):
    site = tmp_path / "repo" / "ffi" / "python"
    skip = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(PACKAGE_DIR, site / "erlmcp_flow", ignore=skip)
    code = "import erlmcp_flow as e; print(e.library_path)"
    # Nothing anywhere: the error lists every place looked at.
    r = run_python(code, sys_path=site)
    assert r.returncode != 0
    assert "LibraryNotFoundError" in r.stderr
    for place in ("ERLMCP_FLOW_LIB", "package directory", "target/release", "target/debug"):
        assert place in r.stderr
    # A build tree next to the copy.
    release = tmp_path / "repo" / "target" / "release"
    release.mkdir(parents=True)
    shutil.copy(emf.library_path, release / _native.LIBRARY_FILE)
    r = run_python(code, sys_path=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(release / _native.LIBRARY_FILE)
    # A library in the package directory wins over the build tree: a copy made by hand...
    by_hand = site / "erlmcp_flow" / _native.LIBRARY_FILE
    shutil.copy(emf.library_path, by_hand)
    r = run_python(code, sys_path=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(by_hand)
    # ... and the one `pip install` bundles (named like an extension module of this
    # interpreter) wins over that.
    built_name = f"liberlmcp_flow{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    assert _native.BUNDLED_FILES[0] == built_name
    bundled = site / "erlmcp_flow" / built_name
    shutil.copy(emf.library_path, bundled)
    r = run_python(code, sys_path=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(bundled)
