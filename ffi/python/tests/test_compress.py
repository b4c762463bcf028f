"""zlib compression: threshold behaviour and interoperability with Python's zlib."""

import ctypes
import os
import random
import zlib

import pytest

import erlmcp_flow as emf

TEXT = b"".join(b"tools/call search %d the quick brown fox; " % i for i in range(500))


def test_compressed_output_is_a_zlib_stream():
    out, compressed = emf.compress_if_needed(TEXT)
    assert compressed
    assert len(out) < 0.8 * len(TEXT)
    assert zlib.decompress(out) == TEXT
    assert emf.decompress(out) == TEXT


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_python_zlib_output_decompresses_with_ours(level):
    assert emf.decompress(zlib.compress(TEXT, level)) == TEXT


def test_empty_zlib_stream():
    assert emf.decompress(zlib.compress(b"")) == b""


def test_under_the_threshold_stays_raw():
    small = b"a" * 1023
    assert emf.compress_if_needed(small) == (small, False)
    out, compressed = emf.compress_if_needed(b"a" * 1024)
    assert compressed and zlib.decompress(out) == b"a" * 1024
    assert emf.compress_if_needed(b"") == (b"", False)


def test_custom_threshold():
    data = b"abc" * 100
    assert emf.compress_if_needed(data, threshold=1 << 20) == (data, False)
    out, compressed = emf.compress_if_needed(data, threshold=16)
    assert compressed and zlib.decompress(out) == data


def test_random_bytes_stay_raw():
    noise = os.urandom(64 * 1024)
    assert emf.compress_if_needed(noise) == (noise, False)


@pytest.mark.parametrize("wrap", [bytearray, memoryview, lambda b: memoryview(bytearray(b))])
def test_bytes_like_inputs(wrap):
    out, compressed = emf.compress_if_needed(wrap(TEXT))
    assert compressed
    assert emf.decompress(wrap(out)) == TEXT


def test_decompression_past_max_size_is_refused():
    bomb = zlib.compress(b"\0" * (4 * 1024 * 1024))
    assert len(bomb) < 8 * 1024
    with pytest.raises(emf.Error) as err:
        emf.decompress(bomb, max_size=1024 * 1024)
    assert err.value.code == emf.EMF_ERR_TOO_LARGE == 13
    assert err.value.name == "EMF_ERR_TOO_LARGE" and err.value.message
    assert emf.decompress(bomb, max_size=4 * 1024 * 1024) == b"\0" * (4 * 1024 * 1024)


@pytest.mark.parametrize("max_size", [2**64 - 1, 2**64 - 2, 2**63])
def test_largest_max_size_does_not_overflow(max_size):
    """A limit of SIZE_MAX ("no limit") works: no overflow of max_size + 1 in the library."""
    stream = zlib.compress(TEXT)
    assert emf.decompress(stream, max_size=max_size) == TEXT
    assert emf.decompress(zlib.compress(b""), max_size=max_size) == b""
    out = emf._native.emf_buf_t()
    status = emf._native.lib.emf_decompress(stream, len(stream), max_size, ctypes.byref(out))
    assert status == emf.EMF_OK
    assert ctypes.string_at(out.data, out.len) == TEXT
    assert emf._native.lib.emf_buf_free(ctypes.byref(out)) == emf.EMF_OK


def test_exact_max_size_is_allowed():
    stream = zlib.compress(TEXT)
    assert emf.decompress(stream, max_size=len(TEXT)) == TEXT
    with pytest.raises(emf.Error) as err:
        emf.decompress(stream, max_size=len(TEXT) - 1)
    assert err.value.code == emf.EMF_ERR_TOO_LARGE


@pytest.mark.parametrize(
    "stream",
    [
        b"not zlib at all",
        zlib.compress(TEXT)[:-5],  # truncated
        zlib.compress(TEXT)[:1],
        zlib.compress(TEXT) + b"trailing",
        bytes([0x78, 0x9C]) + random.Random(7).randbytes(100),
    ],
    ids=["garbage", "truncated", "one-byte", "trailing", "random-body"],
)
def test_corrupt_zlib_is_refused(stream):
    with pytest.raises(emf.Error) as err:
        emf.decompress(stream)
    assert err.value.code == emf.EMF_ERR_CORRUPT == 7
    assert err.value.message


def test_bad_arguments():
    with pytest.raises(emf.Error) as err:
        emf.compress_if_needed(b"x", threshold=-1)
    assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error):
        emf.decompress(b"x", max_size=-1)
    with pytest.raises(emf.Error):
        emf.decompress(b"x", max_size=2**64)  # past SIZE_MAX: refused, never wrapped
    with pytest.raises(TypeError):
        emf.compress_if_needed("text is not bytes")
    with pytest.raises(TypeError):
        emf.decompress(12)
