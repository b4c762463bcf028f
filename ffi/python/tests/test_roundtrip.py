"""JSON -> archive -> JSON round trips of MCP messages, and field access through Message."""

import json
import math
import sys

import pytest

import erlmcp_flow as emf
from helpers import BIG, MESSAGES, assert_same_json


def test_versions():
    assert emf.abi_version() == emf.ABI_VERSION == 4
    assert emf.version().count(".") == 2
    assert emf.library_path.is_file()


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_round_trip(name):
    text = json.dumps(MESSAGES[name], ensure_ascii=False)
    archive = emf.encode(text)
    assert isinstance(archive, bytes)
    assert emf.validate(archive) == 1
    decoded = emf.decode(archive)
    assert_same_json(decoded, text)
    with emf.Message(archive) as m:
        assert len(m) == 1
        assert_same_json(m.to_json(), text)


def test_the_header_example_comes_back_byte_for_byte():
    text = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    assert emf.decode(emf.encode(text)) == text


def test_top_level_members_come_back_in_canonical_order():
    text = '{"params":{"b":1,"a":2},"method":"m","id":9,"jsonrpc":"2.0","x":0}'
    assert emf.decode(emf.encode(text)) == (
        '{"jsonrpc":"2.0","id":9,"method":"m","params":{"b":1,"a":2},"x":0}'
    )


def test_big_integers_survive_exactly():
    text = json.dumps(MESSAGES["big_integers"])
    decoded = emf.decode(emf.encode(text))
    assert str(BIG) in decoded and f"-{BIG}" in decoded
    value = json.loads(decoded)
    assert value["id"] == BIG
    assert value["result"]["big"] == BIG
    assert value["result"]["past_u64"] == 2**64


def test_floats_read_back_to_the_same_double():
    floats = MESSAGES["floats"]["result"]
    decoded = json.loads(emf.decode(emf.encode(json.dumps(MESSAGES["floats"]))))["result"]
    assert decoded == floats
    assert all(isinstance(x, float) for x in decoded)
    assert math.copysign(1.0, decoded[1]) == -1.0  # -0.0 keeps its sign


def test_large_text_payload():
    text = json.dumps(MESSAGES["resources_read"])
    assert len(text) > 100_000
    archive = emf.encode(text)
    with emf.Message(archive) as m:
        payload = json.loads(m.payload_json(0))
    assert payload == MESSAGES["resources_read"]["result"]


def test_batch():
    names = ["initialize", "tools_call", "progress", "error", "unicode", "big_integers"]
    batch = [MESSAGES[n] for n in names]
    text = json.dumps(batch, ensure_ascii=False)
    archive = emf.encode(text)
    assert emf.validate(archive) == len(batch)
    assert_same_json(emf.decode(archive), text)
    with emf.Message(archive) as m:
        assert len(m) == len(batch) > 1
        kinds = [e.kind for e in m]
        assert kinds == ["request", "request", "notification", "error", "request", "response"]
        assert m.envelope(-1).id == BIG
        assert json.loads(m.payload_json(1)) == MESSAGES["tools_call"]["params"]
        assert_same_json(m.to_json(), text)


def test_envelope_fields():
    text = json.dumps(MESSAGES["tools_call"])
    archive = emf.encode(text, priority="high", created_at_us=1_700_000_000_000_000, deadline_us=42)
    with emf.Message(archive) as m:
        e = m.envelope(0)
    assert e == emf.Envelope(
        kind="request",
        priority="high",
        created_at_us=1_700_000_000_000_000,
        deadline_us=42,
        id=3,
        id_type="int",
        method="tools/call",
        error_code=None,
    )
    assert e.has_id


@pytest.mark.parametrize(
    "name, kind, id_value, id_type, method, error_code",
    [
        ("progress", "notification", emf.NO_ID, "none", "notifications/progress", None),
        ("error", "error", 5, "int", None, -32601),
        ("error_null_id", "error", None, "null", None, -32700),
        ("tools_list", "request", "req-2", "string", "tools/list", None),
        ("unicode", "request", "ünï-😀", "string", "échos/读", None),
        ("big_integers", "response", BIG, "other_number", None, None),
        ("initialize_result", "response", 1, "int", None, None),
    ],
)
def test_envelope_kinds_and_ids(name, kind, id_value, id_type, method, error_code):
    with emf.Message.from_json(json.dumps(MESSAGES[name])) as m:
        e = m.envelope(0)
    assert e.kind == kind
    if id_value is emf.NO_ID:
        assert e.id is emf.NO_ID
    else:
        assert e.id == id_value and type(e.id) is type(id_value)
    assert e.has_id == (id_value is not emf.NO_ID)
    assert e.id_type == id_type
    assert e.method == method
    assert e.error_code == error_code
    assert e.priority == "normal"
    assert e.created_at_us > 0  # 0 asks for "now"
    assert e.deadline_us == 0


def test_float_id_is_read_from_the_json():
    with emf.Message.from_json('{"jsonrpc":"2.0","id":2.5,"result":null}') as m:
        e = m.envelope(0)
    assert (e.id, e.id_type) == (2.5, "other_number")


def test_payload_of_each_kind():
    with emf.Message.from_json(json.dumps(MESSAGES["error"])) as m:
        assert json.loads(m.payload_json(0)) == MESSAGES["error"]["error"]
    with emf.Message.from_json(json.dumps(MESSAGES["initialize_result"])) as m:
        assert json.loads(m.payload_json(0)) == MESSAGES["initialize_result"]["result"]
    with emf.Message.from_json('{"jsonrpc":"2.0","id":1,"method":"ping"}') as m:
        with pytest.raises(emf.Error) as err:
            m.payload_json(0)
    assert err.value.code == emf.EMF_ERR_NOT_FOUND
    assert err.value.name == "EMF_ERR_NOT_FOUND" and err.value.message


@pytest.mark.parametrize("priority", ["critical", "high", "normal", "low", 0, 1, 2, 3])
def test_priorities(priority):
    archive = emf.encode('{"jsonrpc":"2.0","method":"n"}', priority=priority)
    with emf.Message(archive) as m:
        got = m.envelope(0).priority
    assert got == (priority if isinstance(priority, str) else emf.PRIORITY_NAMES[priority])


@pytest.mark.parametrize(
    "wrap", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), str]
)
def test_every_bytes_like_input(wrap):
    text = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    source = text if wrap is str else wrap(text.encode())
    archive = emf.encode(source)
    for form in (archive, bytearray(archive), memoryview(archive), memoryview(bytearray(archive))):
        assert emf.decode(form) == text
        assert emf.validate(form) == 1
        with emf.Message(form) as m:
            assert len(m) == 1


def test_sliced_and_non_contiguous_views():
    archive = emf.encode('{"jsonrpc":"2.0","id":1,"method":"a"}')
    padded = bytearray(b"xx" + archive + b"yy")
    assert emf.validate(memoryview(padded)[2:-2]) == 1
    strided = bytearray(len(archive) * 2)
    strided[::2] = archive
    assert emf.validate(memoryview(strided)[::2]) == 1


def test_message_lifetime():
    m = emf.Message(emf.encode('{"jsonrpc":"2.0","id":1,"method":"a"}'))
    assert not m.closed and "envelopes=1" in repr(m)
    m.close()
    m.close()  # idempotent
    assert m.closed and "closed" in repr(m)
    for use in (len, lambda m: m.envelope(0), lambda m: m.to_json(), lambda m: m.payload_json(0)):
        with pytest.raises(ValueError, match="closed"):
            use(m)
    with pytest.raises(ValueError):
        with m:
            pass


def test_message_index_errors():
    with emf.Message.from_json('{"jsonrpc":"2.0","id":1,"method":"a","params":[]}') as m:
        with pytest.raises(IndexError) as err:
            m.envelope(1)
        assert isinstance(err.value.__cause__, emf.Error)
        assert err.value.__cause__.code == emf.EMF_ERR_INVALID_ARGUMENT
        with pytest.raises(IndexError):
            m.payload_json(5)
        with pytest.raises(IndexError):
            m.envelope(-2)
        assert m.envelope(-1).method == "a"


def test_many_messages_are_freed_by_the_garbage_collector():
    archive = emf.encode(json.dumps(MESSAGES["tools_call"]))
    for _ in range(2000):
        m = emf.Message(archive)
        assert m.envelope(0).id == 3
        del m  # the finalizer frees the handle


def test_threads_share_a_message():
    import threading

    archive = emf.encode(json.dumps([MESSAGES["tools_call"], MESSAGES["progress"]]))
    errors = []
    with emf.Message(archive) as m:

        def read():
            try:
                for _ in range(300):
                    assert m.envelope(1).kind == "notification"
                    assert json.loads(m.payload_json(0))["name"] == "search"
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


# --- ids read through emf_message_id_json, names from the library ---------------------------


@pytest.mark.parametrize(
    "id_text, expected",
    [
        ("18446744073709551616", 2**64),
        ("-9223372036854775809", -(2**63) - 1),
        (str(BIG), BIG),
        ("2.5", 2.5),
        ("-0.0", -0.0),
        ("1e22", 1e22),
        ("1E3", 1000.0),
        ("5e-324", 5e-324),
    ],
)
def test_other_number_ids(id_text, expected):
    with emf.Message.from_json('{"jsonrpc":"2.0","id":%s,"result":null}' % id_text) as m:
        e = m.envelope(0)
        if isinstance(expected, int):
            assert m.id_json(0) == id_text  # exact integer text
        else:
            assert float(m.id_json(0)) == expected  # the library may normalise a float's text
    assert e.id_type == "other_number"
    assert e.id == expected and type(e.id) is type(expected)
    if isinstance(expected, float):
        assert math.copysign(1.0, e.id) == math.copysign(1.0, expected)


def test_other_number_id_does_not_reserialise_the_message(monkeypatch):
    """The id comes from emf_message_id_json for that envelope, not from the whole JSON."""
    with emf.Message.from_json(json.dumps(MESSAGES["big_integers"])) as m:

        def refuse():
            raise AssertionError("the whole message was serialised")

        monkeypatch.setattr(m, "_to_json_locked", refuse)
        monkeypatch.setattr(m, "to_json", refuse)
        assert m.envelope(0).id == BIG


def test_integer_id_past_the_digit_limit_is_a_big_number(monkeypatch):
    """An integer id longer than Python's int/str digit limit comes back as its exact text in a
    BigNumber (a str subclass), not as an error, and not as a plain string id."""
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("this Python has no int/str digit limit")
    digits = "7" * 700
    text = '[{"jsonrpc":"2.0","id":%s,"result":1},{"jsonrpc":"2.0","id":-%s,"result":1}]'
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)  # the smallest limit Python allows
    try:
        with emf.Message.from_json(text % (digits, digits)) as m:
            first, second = m.envelope(0), m.envelope(1)
    finally:
        sys.set_int_max_str_digits(previous)
    assert isinstance(first.id, emf.BigNumber) and isinstance(first.id, str)
    assert first.id == digits and repr(first.id) == f"BigNumber('{digits}')"
    assert second.id == "-" + digits and isinstance(second.id, emf.BigNumber)
    assert first.id_type == second.id_type == "other_number"
    assert int(first.id) == int(digits)  # under the default limit again
    # Under the default limit (4300) the same id is an exact int.
    with emf.Message.from_json(text % (digits, digits)) as m:
        assert m.envelope(0).id == int(digits) and type(m.envelope(0).id) is int


def test_id_json_of_every_id_type():
    batch = [
        {"jsonrpc": "2.0", "id": 7, "method": "a"},
        {"jsonrpc": "2.0", "id": "s\u00e9", "method": "b"},
        {"jsonrpc": "2.0", "id": None, "error": {"code": 1, "message": "m"}},
        {"jsonrpc": "2.0", "method": "n"},
    ]
    with emf.Message.from_json(json.dumps(batch)) as m:
        assert [json.loads(m.id_json(i)) for i in range(3)] == [7, "s\u00e9", None]
        assert m.id_json(-2) == "null"
        with pytest.raises(emf.Error) as err:
            m.id_json(3)
        assert err.value.code == emf.EMF_ERR_NOT_FOUND == 14
        with pytest.raises(IndexError):
            m.id_json(4)
    with pytest.raises(ValueError, match="closed"):
        m.id_json(0)


def test_name_tables_come_from_the_library():
    lib = emf._native.lib
    assert emf.KIND_NAMES == {
        code: lib.emf_kind_name(code).decode()
        for code in range(emf.EMF_KIND_REQUEST, emf.EMF_KIND_ERROR + 1)
    }
    assert emf.PRIORITY_NAMES == {
        code: lib.emf_priority_name(code).decode()
        for code in range(emf.EMF_PRIORITY_CRITICAL, emf.EMF_PRIORITY_LOW + 1)
    }
    assert "unknown" not in emf.KIND_NAMES.values()
    assert "unknown" not in emf.PRIORITY_NAMES.values()
    # A code past the scanned table is still asked of the library, and stays an int when the
    # library has no name for it either.
    assert emf.codec._name_or_code({}, lib.emf_kind_name, emf.EMF_KIND_TASK) == "task"
    assert emf.codec._name_or_code({}, lib.emf_kind_name, 77) == 77


def test_priority_names_map_to_the_library_codes():
    for code, name in emf.PRIORITY_NAMES.items():
        archive = emf.encode('{"jsonrpc":"2.0","method":"n"}', priority=name)
        with emf.Message(archive) as m:
            assert m.envelope(0).priority == name
        assert emf.encode('{"jsonrpc":"2.0","method":"n"}', priority=code) is not None
    with pytest.raises(emf.Error) as err:
        emf.encode('{"jsonrpc":"2.0","method":"n"}', priority="unknown")
    assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    assert all(name in err.value.message for name in emf.PRIORITY_NAMES.values())
