"""Bad input: every failure is an erlmcp_flow.Error with the right code and a message."""

import ctypes
import json
import random

import pytest

import erlmcp_flow as emf
from helpers import MESSAGES


def expect_error(code, fn, *args, **kwargs):
    with pytest.raises(emf.Error) as err:
        fn(*args, **kwargs)
    e = err.value
    assert e.code == code, str(e)
    assert e.name == emf.status_name(code)
    assert e.message.strip(), "the library gave no message"
    assert e.name in str(e) and e.message in str(e)
    return e


@pytest.mark.parametrize(
    "text",
    [
        "{",
        '{"jsonrpc":"2.0","id":1,"method":"m",}',
        '{"jsonrpc":"2.0","id":1,"method":"m"} trailing',
        "nul",
        "[1,2",
        '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":01}}',
        '{"jsonrpc":"2.0","id":1,"result":"\\ud800"}',
    ],
)
def test_invalid_json(text):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, text)


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"\xff"}',
        b'{"jsonrpc":"2.0","id":1,"method":"\xc3"}',
        b'{"jsonrpc":"2.0","id":1,"method":"\xed\xa0\x80"}',  # encoded surrogate
        b"\xfe\xff",
    ],
)
def test_non_utf8(data):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, data)


@pytest.mark.parametrize(
    "value",
    [
        {"id": 1, "method": "m"},  # no "jsonrpc"
        {"jsonrpc": "1.0", "id": 1, "method": "m"},
        {"jsonrpc": 2.0, "id": 1, "method": "m"},
        {"jsonrpc": "2.0", "id": 1},  # no method/result/error
        {"jsonrpc": "2.0", "id": 1, "method": "m", "params": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "m", "params": "s"},
        {"jsonrpc": "2.0", "id": 1, "method": "m", "result": 1},
        {"jsonrpc": "2.0", "result": 1},  # response without id
        {"jsonrpc": "2.0", "id": None, "method": "m"},  # request with null id
        {"jsonrpc": "2.0", "id": [1], "method": "m"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "error": "oops"},
        [],
        [1, 2],
        [MESSAGES["tools_list"], {"id": 1}],
        "just a string",
        42,
        None,
    ],
)
def test_valid_json_that_is_not_json_rpc(value):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, json.dumps(value))


def test_duplicate_members():
    expect_error(
        emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, '{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}'
    )


@pytest.mark.parametrize("empty", ["", b"", bytearray(), memoryview(b""), "   "])
def test_empty_input(empty):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, empty)


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_empty_archive(empty):
    expect_error(emf.EMF_ERR_CORRUPT, emf.decode, empty)
    expect_error(emf.EMF_ERR_CORRUPT, emf.validate, empty)
    expect_error(emf.EMF_ERR_CORRUPT, emf.Message, empty)


def test_unknown_priority():
    msg = '{"jsonrpc":"2.0","method":"m"}'
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, priority="urgent")
    e = expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, priority=4)
    assert "4" in e.message  # the library's own message
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, priority=-1)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, priority=2**32 + 2)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, deadline_us=-5)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.encode, msg, created_at_us=2**64)
    with pytest.raises(TypeError):
        emf.encode(msg, priority=1.0)


def _archives():
    single = emf.encode(json.dumps(MESSAGES["tools_call"]))
    batch = emf.encode(json.dumps([MESSAGES["error"], MESSAGES["progress"], MESSAGES["unicode"]]))
    return {"single": single, "batch": batch}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_truncated_archives_are_corrupt(name):
    archive = emf.encode(json.dumps(MESSAGES[name]))
    step = max(1, len(archive) // 2000)  # every length for small archives
    for n in list(range(0, len(archive), step)) + [len(archive) - 1]:
        cut = archive[:n]
        expect_error(emf.EMF_ERR_CORRUPT, emf.validate, cut)
        expect_error(emf.EMF_ERR_CORRUPT, emf.decode, cut)
    expect_error(emf.EMF_ERR_CORRUPT, emf.Message, archive[: len(archive) // 2])


def test_every_truncated_batch_is_corrupt():
    archive = _archives()["batch"]
    for n in range(len(archive)):
        expect_error(emf.EMF_ERR_CORRUPT, emf.validate, archive[:n])


def test_random_garbage_is_corrupt():
    rng = random.Random(1234)
    for _ in range(500):
        garbage = rng.randbytes(rng.randrange(1, 600))
        expect_error(emf.EMF_ERR_CORRUPT, emf.decode, garbage)
        expect_error(emf.EMF_ERR_CORRUPT, emf.validate, garbage)
    expect_error(emf.EMF_ERR_CORRUPT, emf.decode, b"\0" * 4096)
    expect_error(emf.EMF_ERR_CORRUPT, emf.decode, b"\xff" * 4096)


def test_json_text_is_not_an_archive():
    expect_error(emf.EMF_ERR_CORRUPT, emf.decode, b'{"jsonrpc":"2.0","id":1,"method":"m"}')


@pytest.mark.parametrize("which", ["single", "batch"])
def test_bit_flips_never_crash(which):
    """Each single-bit flip is either refused as corrupt or decodes to valid JSON; every
    access path on a flipped archive that opens stays well-behaved."""
    archive = _archives()[which]
    outcomes = {"corrupt": 0, "decoded": 0}
    for bit in range(len(archive) * 8):
        flipped = bytearray(archive)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            text = emf.decode(flipped)
        except emf.Error as e:
            assert e.code == emf.EMF_ERR_CORRUPT, str(e)
            assert e.message
            outcomes["corrupt"] += 1
            continue
        outcomes["decoded"] += 1
        json.loads(text)  # whatever decodes is well-formed JSON
        with emf.Message(flipped) as m:
            for i in range(len(m)):
                m.envelope(i)
                try:
                    m.payload_json(i)
                except emf.Error as e:
                    assert e.code == emf.EMF_ERR_NOT_FOUND
            json.loads(m.to_json())
    assert outcomes["corrupt"] > 0


@pytest.mark.parametrize("which", ["single", "batch"])
def test_every_bit_flip_of_a_checksummed_archive_is_corrupt(which):
    """encode(checksum=True): every single-bit flip is refused by decode, validate and
    Message alike (without the checksum, flips inside strings and numbers decode)."""
    text = {"single": json.dumps(MESSAGES["tools_call"]),
            "batch": json.dumps([MESSAGES["error"], MESSAGES["progress"]])}[which]
    archive = emf.encode(text, checksum=True, created_at_us=5)
    plain = emf.encode(text, created_at_us=5)
    assert len(archive) == len(plain) + 4 and archive[12:] == plain[8:]
    assert emf.decode(archive) == emf.decode(plain)
    assert emf.validate(archive) == emf.validate(plain)
    for bit in range(len(archive) * 8):
        flipped = bytearray(archive)
        flipped[bit // 8] ^= 1 << (bit % 8)
        expect_error(emf.EMF_ERR_CORRUPT, emf.decode, flipped)
        expect_error(emf.EMF_ERR_CORRUPT, emf.validate, flipped)
        expect_error(emf.EMF_ERR_CORRUPT, emf.Message, flipped)
    with pytest.raises(TypeError):
        emf.encode(text, checksum=1)


def test_unknown_archive_flags_are_refused():
    out = emf._native.emf_buf_t()
    sample = b'{"jsonrpc":"2.0","method":"m"}'
    status = emf._native.lib.emf_json_to_archive_ex(sample, len(sample), None, 2, ctypes.byref(out))
    assert status == emf.EMF_ERR_INVALID_ARGUMENT
    assert "flags" in emf._errors.last_error_message()


def test_error_is_an_exception_with_fields():
    e = emf.Error(emf.EMF_ERR_CORRUPT, "bad bytes")
    assert isinstance(e, Exception)
    assert (e.code, e.name, e.message) == (7, "EMF_ERR_CORRUPT", "bad bytes")
    assert str(e) == "EMF_ERR_CORRUPT (7): bad bytes"
    assert emf.Error(999, "x").name == "EMF_ERR_UNKNOWN"


def test_status_constants_match_the_library_names():
    for name in dir(emf):
        if name == "EMF_OK" or name.startswith("EMF_ERR_"):
            assert emf.status_name(getattr(emf, name)) == name
