"""Shared-memory rings: Ring, Producer, Consumer (and the raw emf_ring_* / emf_producer_* /
emf_consumer_* functions): round trips, batches under back-pressure, subscribers, consumer
restart, bad input, closed handles, threads, and a producer in another process.

Every ring lives in pytest's temporary directory (never /dev/shm itself) and is unlinked at
the end of its test."""

import ctypes
import gc
import itertools
import math
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
import time
from ctypes import byref, c_bool, c_size_t, c_uint64
from pathlib import Path

import pytest

import erlmcp_flow as emf
from erlmcp_flow._native import (
    emf_consumer_p,
    emf_frame_fn,
    emf_producer_p,
    emf_ring_options_t,
    emf_ring_p,
    emf_ring_stats_t,
    emf_slice_t,
    lib,
)

PACKAGE_ROOT = Path(emf.__file__).resolve().parents[1]  # ffi/python
SEQ = struct.Struct("<Q")
_names = itertools.count()


def last_error():
    return emf._errors.last_error_message()


def expect_error(code, fn, *args, **kwargs):
    with pytest.raises(emf.Error) as err:
        fn(*args, **kwargs)
    assert err.value.code == code, str(err.value)
    assert err.value.message.strip()
    return err.value


@pytest.fixture
def make_ring(tmp_path):
    """Creates rings in tmp_path; closes and unlinks them all at the end."""
    made = []

    def make(capacity=1 << 16, **options):
        ring = emf.Ring.create(f"t{os.getpid()}-{next(_names)}", capacity=capacity,
                               dir=tmp_path, **options)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        if not ring.closed:
            ring.unlink()
            ring.close()
    assert not any(p.name.startswith("emf-t") for p in tmp_path.iterdir()), "a ring was left"


@pytest.fixture
def ring(make_ring):
    return make_ring()


def seq_frame(i, size=None):
    """Frame i: its sequence number, then filler up to `size` bytes (varying by default)."""
    size = 8 + (i * 7919) % 61 if size is None else size
    return SEQ.pack(i) + bytes([i % 251]) * (size - 8)


def check_seq(frames, start):
    for k, f in enumerate(frames):
        assert f == seq_frame(start + k), f"frame {start + k}"
    return start + len(frames)


# --- round trips --------------------------------------------------------------------------


def test_round_trip_of_every_bytes_like(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert c.recv() is None
        sent = [b"hello", bytearray(b"world"), memoryview(b"view"), b"", bytes(range(256)),
                memoryview(bytearray(b"xxabcxx"))[2:5], memoryview(b"a-b-c")[::2]]
        for data in sent:
            p.send(data)
        for data in sent:
            got = c.recv()
            assert type(got) is bytes and got == bytes(data)
        assert c.recv() is None
    stats = ring.stats()
    assert (stats.sent, stats.received) == (len(sent), len(sent))
    assert stats.bytes == sum(len(bytes(d)) for d in sent)
    assert (stats.producers, stats.capacity) == (0, 1 << 16)  # the producer is closed now


def test_stats_is_a_dataclass_of_the_struct(ring):
    stats = ring.stats()
    assert [f for f, _ in emf_ring_stats_t._fields_] == list(stats.__dataclass_fields__)
    assert stats.subscribers == 1  # the primary consumer's slot is always active
    assert ring.max_payload == (1 << 16) // 4 - 8


def test_batch_round_trip_with_mixed_sizes(ring):
    rng = random.Random(7)
    frames = [bytes([rng.randrange(256)]) * rng.randrange(0, 600) for _ in range(300)]
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        got, pending = [], list(frames)
        while pending:
            sent = p.send_batch(pending)
            pending = pending[sent:]
            got += c.recv_batch(max_frames=50)
        while True:
            more = c.recv_batch(max_frames=50)
            if not more:
                break
            assert len(more) <= 50
            got += more
    assert got == frames


@pytest.mark.parametrize(
    "frames",
    [
        [b"aaaa", b"bb", b"cccccc"],  # lengths sum to count x first length: not one size
        [b"\x04\x00\x00\x00", b"", b"\x04\x00\x00\x00xxxx"],
        [b"same"] * 100,
        [b""] * 10,
        [b"x" * 1000] * 3,
        [bytes([4, 0, 0, 0]) * 2, b"abcdefg", b"z"],
    ],
)
def test_recv_batch_splits_frames_exactly(ring, frames):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert p.send_batch(frames) == len(frames)
        assert c.recv_batch() == frames
        assert c.recv_batch() == []


def test_send_batch_accepts_any_iterable_and_views(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert p.send_batch(iter([b"a", b"b"])) == 2
        assert p.send_batch((bytearray(b"c"), memoryview(b"d"))) == 2
        # Multi-byte items: the byte length counts, not len().
        wide = memoryview(bytes(range(16))).cast("I")
        assert len(wide) == 4
        assert p.send_batch([wide, b"e"]) == 2
        assert p.send_batch([b"e", wide]) == 2  # same len() pattern, other byte lengths
        assert p.send_batch([memoryview(b"a-b-c")[::2]]) == 1  # non-contiguous: copied
        assert p.send_batch([]) == 0
        assert c.recv_batch() == [b"a", b"b", b"c", b"d", bytes(range(16)), b"e", b"e",
                                  bytes(range(16)), b"abc"]


def test_the_slice_table_follows_changing_lengths(ring):
    """The producer reuses its emf_slice_t table while lengths repeat, and rebuilds it when
    they change or the staging block grows."""
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        batches = [[b"ab", b"cd"], [b"ef", b"gh"], [b"ijk", b"l"], [b"m" * 9000, b"n"],
                   [b"op", b"qr"], [b"s"] * 3]
        for batch in batches:
            assert p.send_batch(batch) == len(batch)
            assert c.recv_batch() == batch


# --- back-pressure --------------------------------------------------------------------------


def test_send_raises_full_and_keeps_nothing(make_ring):
    ring = make_ring(capacity=4096)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        sent = 0
        with pytest.raises(emf.Full) as err:
            while True:
                p.send(seq_frame(sent, 100))
                sent += 1
        assert isinstance(err.value, emf.Error)
        assert err.value.code == emf.EMF_ERR_FULL and err.value.name == "EMF_ERR_FULL"
        assert 20 < sent < 4096 // 100
        assert ring.stats().backpressure >= 1
        frames = c.recv_batch(max_frames=10_000)
        assert frames == [seq_frame(i, 100) for i in range(sent)]
        p.send(seq_frame(sent, 100))  # room again
        assert c.recv() == seq_frame(sent, 100)


def test_send_batch_partial_acceptance_loses_nothing(make_ring):
    """What send_batch does not send is the caller's: re-sent later, everything arrives once
    and in order."""
    ring = make_ring(capacity=4096)
    total = 3000
    frames = [seq_frame(i) for i in range(total)]
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        pending, expected, partial, refused = frames, 0, 0, 0
        rng = random.Random(3)
        while pending:
            batch = pending[:rng.randrange(1, 200)]
            sent = p.send_batch(batch)
            assert 0 <= sent <= len(batch)
            if sent == 0:
                refused += 1
            elif sent < len(batch):
                partial += 1
            pending = pending[sent:]
            if partial and not refused:
                continue  # read nothing until the ring refuses a whole batch once
            # Read only some of what is there, so that the ring stays nearly full.
            expected = check_seq(c.recv_batch(max_frames=rng.randrange(0, 40)), expected)
        while expected < total:
            got = c.recv_batch()
            assert got, f"stuck at {expected}"
            expected = check_seq(got, expected)
        assert c.recv() is None
        stats = ring.stats()
    assert partial > 0 and refused > 0, (partial, refused)
    assert stats.sent == stats.received == total
    assert stats.backpressure > 0


def test_send_batch_fills_exactly_what_fits(make_ring):
    """The longest prefix that fits is sent: a 4 KiB ring holds 56 frames of 64 bytes
    (8 + 64 each), so a batch of 57 sends 56, and the 57th is left to the caller."""
    ring = make_ring(capacity=4096)
    frames = [seq_frame(i, 64) for i in range(57)]
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert p.send_batch(frames) == 56
        stats = ring.stats()
        assert (stats.sent, stats.tail, stats.backpressure) == (56, 56 * 72, 0)
        assert p.send_batch(frames[56:]) == 0  # no room for one more: counted once
        assert ring.stats().backpressure == 1
        assert c.recv_batch(max_frames=100) == frames[:56]
        # Again with the ring's end inside the batch: frames wrap, one padding gap.
        assert p.send_batch(frames[56:] + frames[:3]) == 4
        assert c.recv_batch() == frames[56:] + frames[:3]
    # Mixed sizes, into an empty ring: everything up to the first frame that does not fit,
    # nothing after it (the small frame that would fit in the 32 bytes left is not sent out
    # of order). A 1000-byte frame takes 8 + 1008 bytes: 4 take 4064 of 4096.
    other = make_ring(capacity=4096)
    big = [seq_frame(i, 1000) for i in range(5)]
    with emf.Producer(other) as p, emf.Consumer(other) as c:
        assert p.send_batch(big + [b"tiny"]) == 4
        assert other.stats().backpressure == 0
        assert c.recv_batch() == big[:4]
        assert p.send_batch(big[4:] + [b"tiny"]) == 2
        assert c.recv_batch() == big[4:] + [b"tiny"]
    # The raw call: out_sent says the same.
    p = emf_producer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    try:
        data = [bytes([i]) * 64 for i in range(57)]
        table = (emf_slice_t * 57)(*[emf_slice_t(ctypes.cast(ctypes.c_char_p(d), ctypes.c_void_p),
                                                 64) for d in data])
        sent = c_size_t(0)
        with emf.Consumer(ring) as c:
            assert lib.emf_producer_send_batch(p, table, 57, byref(sent)) == emf.EMF_OK
            assert sent.value == 56
            sent.value = 999
            assert lib.emf_producer_send_batch(p, table, 57, byref(sent)) == emf.EMF_ERR_FULL
            assert sent.value == 999  # untouched on EMF_ERR_FULL
            assert c.recv_batch(max_frames=100) == data[:56]
    finally:
        assert lib.emf_producer_free(p) == emf.EMF_OK


def test_send_batch_returns_zero_when_full(make_ring):
    ring = make_ring(capacity=4096)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        while p.send_batch([b"x" * 500]) == 1:
            pass
        assert p.send_batch([b"y"] * 3) in (0, 1, 2, 3)  # small frames may still fit
        while p.send_batch([b"y"]) == 1:
            pass
        sent_before = ring.stats().sent
        assert p.send_batch([b"z"] * 5) == 0
        assert ring.stats().sent == sent_before
        assert all(f != b"z" for f in c.recv_batch(max_frames=100))


def test_send_with_timeout(make_ring):
    ring = make_ring(capacity=4096)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        while True:
            try:
                p.send(b"late")
            except emf.Full:
                break
        for wait in ("spin", "yield", "park", emf.EMF_WAIT_PARK):
            start = time.monotonic()
            e = expect_error(emf.EMF_ERR_TIMEOUT, p.send, b"late", timeout=0.05, wait=wait)
            assert isinstance(e, emf.Timeout)
            assert time.monotonic() - start >= 0.045
        expect_error(emf.EMF_ERR_TIMEOUT, p.send, b"late", timeout=0)

        def drain_later():
            time.sleep(0.1)
            c.recv_batch()

        t = threading.Thread(target=drain_later)
        t.start()
        start = time.monotonic()
        p.send(b"on time", timeout=10, wait="park")  # woken by the consumer's release
        t.join()
        assert time.monotonic() - start < 5
        assert c.recv_batch() == [b"on time"]
        assert c.recv() is None  # the timed-out sends sent nothing
        p.send(b"inf", timeout=math.inf)
        assert c.recv() == b"inf"


def test_long_waits_are_made_of_short_library_waits(ring, monkeypatch):
    """A long timeout is cut into library waits of at most _WAIT_CHUNK_MS, so that signals
    are handled between them; the total still honours the timeout."""
    monkeypatch.setattr(emf.ring, "_WAIT_CHUNK_MS", 20)
    assert list(itertools.islice(emf.ring._waits(math.inf), 3)) == [20, 20, 20]
    assert list(emf.ring._waits(0)) == [0]
    with emf.Consumer(ring) as c:
        start = time.monotonic()
        assert c.wait(0.15) is False
        assert c.recv(timeout=0.1) is None
        assert 0.24 <= time.monotonic() - start < 3


# --- consumers ------------------------------------------------------------------------------


def test_recv_and_wait_timeouts(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        for wait in ("spin", "yield", "park", emf.EMF_WAIT_SPIN):
            start = time.monotonic()
            assert c.recv(timeout=0.05, wait=wait) is None
            assert c.recv_batch(timeout=0.05, wait=wait) == []
            assert c.wait(0.05, wait=wait) is False
            assert time.monotonic() - start >= 0.14
        assert c.recv(timeout=0) is None and c.wait(0) is False

        def send_later():
            time.sleep(0.1)
            p.send(b"later")
            time.sleep(0.1)
            p.send_batch([b"b1", b"b2"])

        t = threading.Thread(target=send_later)
        t.start()
        try:
            assert c.recv(timeout=10) == b"later"
            assert c.wait(10) is True
            assert c.recv_batch(timeout=10) in ([b"b1", b"b2"], [b"b1"])
        finally:
            t.join()
        c.recv_batch()
        p.send(b"x")
        assert c.wait(0) is True and c.wait(1, wait="spin") is True
        assert c.recv() == b"x"


def test_wait_consumes_padding_instead_of_reporting_it(ring):
    """An aborted claim leaves padding: wait() skips it and reports no frame (it used to
    answer True with nothing to receive)."""
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        slot = ctypes.POINTER(ctypes.c_uint8)()
        assert lib.emf_producer_claim(p._handle, 100, byref(slot)) == emf.EMF_OK
        assert lib.emf_producer_abort(p._handle) == emf.EMF_OK
        assert c.lag == 8 + 104  # the padding is still ahead of the consumer
        for wait in ("spin", "park"):
            assert c.wait(0, wait=wait) is False
        assert c.lag == 0  # consumed by the wait
        assert c.recv() is None
        # Padding, then a frame: wait answers True, and recv gets the frame.
        assert lib.emf_producer_claim(p._handle, 10, byref(slot)) == emf.EMF_OK
        assert lib.emf_producer_abort(p._handle) == emf.EMF_OK
        p.send(b"after the gap")
        assert c.wait(0.5) is True
        assert c.recv() == b"after the gap"
        stats = ring.stats()
    assert (stats.sent, stats.received) == (1, 1)


def test_lag(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert c.lag == 0
        p.send(b"12345678")
        assert c.lag == 16  # 8-byte header + payload, rounded to 8
        c.recv()
        assert c.lag == 0


def test_iteration_consumes_only_what_it_yields(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        p.send_batch([b"1", b"2", b"3", b"4"])
        for frame in c:
            if frame == b"2":
                break
        assert list(c) == [b"3", b"4"]
        assert list(c) == []


def test_buffer_grows_for_large_frames(make_ring):
    ring = make_ring(capacity=1 << 20)
    big = bytes(range(256)) * 1000
    with emf.Producer(ring) as p, emf.Consumer(ring, buffer_size=64) as c:
        assert c.buffer_size == 64
        p.send(big)
        assert c.recv() == big
        assert c.buffer_size >= len(big)
    with emf.Producer(ring) as p, emf.Consumer(ring, buffer_size=100) as c:
        p.send_batch([b"small", big, b"tail"])
        got = []
        while len(got) < 3:
            got += c.recv_batch()
        assert got == [b"small", big, b"tail"]
        # Grown once, to the size recv_batch reported (the frame and its 4-byte prefix).
        assert c.buffer_size == len(big) + 4


def test_recv_batch_fills_the_buffer_then_stops(make_ring):
    ring = make_ring(capacity=1 << 20)
    frames = [bytes([i]) * 1000 for i in range(20)]
    with emf.Producer(ring) as p, emf.Consumer(ring, buffer_size=4096) as c:
        assert p.send_batch(frames) == 20
        first = c.recv_batch()
        assert first == frames[: len(first)] and 1 <= len(first) <= 4
        assert c.recv_batch(max_frames=0) == []
        rest = []
        while len(first) + len(rest) < 20:
            rest += c.recv_batch()
        assert first + rest == frames


def test_consumer_restart_resumes(ring):
    with emf.Producer(ring) as p:
        p.send_batch([seq_frame(i) for i in range(10)])
        with emf.Consumer(ring) as c:
            assert check_seq([c.recv() for _ in range(4)], 0) == 4
        with emf.Consumer(ring) as c:  # resumes at frame 4
            assert check_seq(c.recv_batch(), 4) == 10
            p.send(seq_frame(10))
        c = emf.Consumer(ring)
        assert c.recv() == seq_frame(10)
        c.close()
    assert ring.stats().received == 11


def test_second_primary_consumer_is_busy(ring):
    with emf.Consumer(ring):
        e = expect_error(emf.EMF_ERR_BUSY, emf.Consumer, ring)
        assert isinstance(e, emf.Busy) and e.name == "EMF_ERR_BUSY"
    emf.Consumer(ring).close()  # free again


def test_subscribers_fan_out(make_ring):
    ring = make_ring(max_subscribers=4)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        p.send(b"before")
        s1 = emf.Consumer.subscribe(ring)
        s2 = emf.Consumer.subscribe(ring)
        assert s1.subscriber and not c.subscriber
        assert ring.stats().subscribers == 3
        frames = [seq_frame(i) for i in range(200)]
        assert p.send_batch(frames) == 200
        assert c.recv_batch() == [b"before"] + frames
        assert s1.recv_batch() == frames  # frames from subscription on
        assert [s2.recv() for _ in range(200)] == frames
        s3 = emf.Consumer.subscribe(ring)
        expect_error(emf.EMF_ERR_BUSY, emf.Consumer.subscribe, ring)  # 3 slots besides the primary
        s3.close()
        s3 = emf.Consumer.subscribe(ring)  # the freed slot is reused
        s1.close()
        s2.close()
        s3.close()
        assert ring.stats().subscribers == 1


def test_a_slow_subscriber_holds_the_producer_back(make_ring):
    ring = make_ring(capacity=4096)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c, emf.Consumer.subscribe(ring) as s:
        sent = 0
        while p.send_batch([seq_frame(sent, 64)]) == 1:
            sent += 1
            c.recv()  # the primary keeps up, the subscriber does not
        assert sent > 10
        assert [SEQ.unpack_from(f)[0] for f in s.recv_batch()] == list(range(sent))
        assert p.send_batch([b"now"]) == 1


# --- producers ------------------------------------------------------------------------------


def test_second_producer_on_a_single_producer_ring_is_busy(ring):
    with emf.Producer(ring):
        e = expect_error(emf.EMF_ERR_BUSY, emf.Producer, ring)
        assert isinstance(e, emf.Busy)
        # Another handle to the same ring in this process: still one producer.
        with emf.Ring.open(ring.name, dir=ring.dir) as again:
            expect_error(emf.EMF_ERR_BUSY, emf.Producer, again)
    with emf.Producer(ring) as p:  # free again
        p.send(b"x")


def test_multi_producer_ring(make_ring):
    ring = make_ring(multi_producer=True, max_producers=2)
    with emf.Producer(ring) as a, emf.Producer(ring) as b, emf.Consumer(ring) as c:
        expect_error(emf.EMF_ERR_BUSY, emf.Producer, ring)  # both slots taken
        assert ring.stats().producers == 2

        def run(p, tag):
            for i in range(500):
                frame = tag + SEQ.pack(i)
                while p.send_batch([frame]) == 0:
                    time.sleep(0.0005)

        threads = [threading.Thread(target=run, args=(a, b"A")),
                   threading.Thread(target=run, args=(b, b"B"))]
        for t in threads:
            t.start()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 1000 and time.monotonic() < deadline:
            got += c.recv_batch(timeout=1)
        for t in threads:
            t.join()
    for tag in (b"A", b"B"):
        assert [SEQ.unpack_from(f, 1)[0] for f in got if f[:1] == tag] == list(range(500))


def test_handles_outlive_the_ring_handle(ring):
    p, c = emf.Producer(ring), emf.Consumer(ring)
    ring.unlink()
    ring.close()
    p.send(b"still mapped")
    assert c.recv() == b"still mapped"
    assert p.ring is ring and c.ring is ring
    p.close()
    c.close()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../up", ".hidden", "x" * 201, "sp ace", "caf\u00e9", "tab\t", "\ud800"],
)
def test_bad_names_are_invalid_arguments(tmp_path, name):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.create, name, dir=tmp_path)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.open, name, dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nul_in_a_name_or_dir_is_refused_before_c_cuts_it(tmp_path):
    e = expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.create, "ok\0bad", dir=tmp_path)
    assert "NUL" in e.message
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.open, "ok", dir=f"{tmp_path}\0x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options",
    [
        {"capacity": 1000},
        {"capacity": 3 * 4096},
        {"capacity": 2048},
        {"capacity": 0},
        {"max_subscribers": 0},
        {"multi_producer": True, "max_producers": 0},
        {"mode": 0o4600},
    ],
)
def test_bad_options_are_invalid_arguments(tmp_path, options):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.create, "bad-opts", dir=tmp_path,
                 **options)


@pytest.mark.parametrize(
    "options",
    [{"capacity": 1 << 31}, {"max_subscribers": 5000},
     {"multi_producer": True, "max_producers": 2000}],
)
def test_options_past_a_maximum_are_too_large(tmp_path, options):
    expect_error(emf.EMF_ERR_TOO_LARGE, emf.Ring.create, "bad-opts", dir=tmp_path, **options)


def test_out_of_range_numbers_are_refused_not_wrapped(tmp_path):
    for options in ({"capacity": -1}, {"mode": 2**32}, {"stall_timeout_ms": -5},
                    {"max_subscribers": 2**32 + 8}):
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Ring.create, "r", dir=tmp_path,
                     **options)
    with pytest.raises(TypeError):
        emf.Ring.create("r", capacity=4096.0, dir=tmp_path)
    with pytest.raises(TypeError):
        emf.Ring.create("r", capacity=True, dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_none_and_wrong_types(ring):
    for bad in (None, 42, b"x"):
        with pytest.raises(TypeError):
            emf.Producer(bad)
        with pytest.raises(TypeError):
            emf.Consumer(bad)
        with pytest.raises(TypeError):
            emf.Consumer.subscribe(bad)
    with pytest.raises(TypeError):
        emf.Ring.create(None)
    with pytest.raises(TypeError):
        emf.Ring.open(None)
    with pytest.raises(TypeError):
        emf.Ring.create("r", dir=42)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        for bad in (None, "text", 42, [b"a"]):
            with pytest.raises(TypeError):
                p.send(bad)
        for bad in (None, 42):
            with pytest.raises(TypeError):
                p.send_batch(bad)
        for bad in ([b"a", None], [b"a", "text"], [b"ok", 42]):
            with pytest.raises(TypeError, match=r"frames\[1\]"):
                p.send_batch(bad)
        with pytest.raises(TypeError):
            c.recv(timeout="1")
        with pytest.raises(TypeError):
            c.wait(None)
        with pytest.raises(TypeError):
            c.recv_batch(max_frames=None)
        for bad_timeout in (-1, float("nan")):
            expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.recv, timeout=bad_timeout)
            expect_error(emf.EMF_ERR_INVALID_ARGUMENT, p.send, b"x", timeout=bad_timeout)
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.wait, 1, wait="nap")
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, p.send, b"x", wait="nap")
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.recv_batch, max_frames=-1)
        # An unknown code is the library's to refuse.
        e = expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.wait, 0.01, wait=7)
        assert "strategy" in e.message
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, p.send, b"x", timeout=0.01, wait=7)
        assert c.recv() is None  # nothing was sent by any of the above
        assert ring.stats().sent == 0


def test_frames_past_max_payload_are_too_large(ring):
    limit = ring.max_payload
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        e = expect_error(emf.EMF_ERR_TOO_LARGE, p.send, bytes(limit + 1))
        assert str(limit) in e.message
        expect_error(emf.EMF_ERR_TOO_LARGE, p.send, bytes(limit + 1), timeout=0.01)
        # A batch with one frame too large sends nothing, not even the frames before it.
        expect_error(emf.EMF_ERR_TOO_LARGE, p.send_batch, [b"a", bytes(limit + 1), b"c"])
        assert ring.stats().sent == 0
        p.send(bytes(limit))  # the limit itself fits
        assert c.recv() == bytes(limit)


def test_open_missing_ring_and_directory(tmp_path):
    expect_error(emf.EMF_ERR_NOT_FOUND, emf.Ring.open, "nobody", dir=tmp_path)
    with pytest.raises(emf.Error):
        emf.Ring.create("r", dir=tmp_path / "no" / "such" / "dir")


def test_create_refuses_a_live_ring_of_the_same_name(ring):
    expect_error(emf.EMF_ERR_BUSY, emf.Ring.create, ring.name, dir=ring.dir)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        p.send(b"ok")
        assert c.recv() == b"ok"


def test_open_from_a_second_handle(ring):
    with emf.Ring.open(ring.name, dir=str(ring.dir)) as other:
        assert other.max_payload == ring.max_payload
        with emf.Producer(other) as p, emf.Consumer(ring) as c:
            p.send(b"across handles")
            assert c.recv() == b"across handles"
        assert other.stats() == ring.stats()


# --- closed handles, double close, garbage collection ---------------------------------------


def test_closed_handles_raise_and_double_close_is_fine(make_ring):
    ring = make_ring()
    p, c, s = emf.Producer(ring), emf.Consumer(ring), emf.Consumer.subscribe(ring)
    for h in (p, c, s):
        assert not h.closed and "open" in repr(h)
        h.close()
        h.close()
        assert h.closed and "closed" in repr(h)
    for call in (lambda: p.send(b"x"), lambda: p.send(b"x", timeout=1),
                 lambda: p.send_batch([b"x"]),
                 c.recv, c.recv_batch, lambda: c.wait(0), lambda: c.lag, lambda: list(c),
                 s.recv):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError):
        with p:
            pass
    ring.unlink()
    ring.close()
    ring.close()
    for call in (ring.stats, lambda: ring.max_payload, ring.unlink, lambda: emf.Producer(ring),
                 lambda: emf.Consumer(ring), lambda: emf.Consumer.subscribe(ring)):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_context_managers_close(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        pass
    assert p.closed and c.closed
    with emf.Ring.open(ring.name, dir=ring.dir) as r:
        pass
    assert r.closed and not ring.closed


def test_garbage_collector_detaches_handles(ring):
    for _ in range(50):
        p = emf.Producer(ring)  # a single-producer ring: only works if the last one was freed
        p.send(b"x")
        c = emf.Consumer(ring)
        assert c.recv() == b"x"
        del p, c
        gc.collect()
    assert ring.stats().received == 50


# --- threads -------------------------------------------------------------------------------


def until_busy(probe, thread, limit=30.0):
    """Polls a call that changes nothing until it answers EMF_ERR_BUSY, i.e. until `thread`
    is inside a call on the same handle (a condition, not a guess at how long that takes)."""
    deadline = time.monotonic() + limit
    while probe() != emf.EMF_ERR_BUSY:
        assert thread.is_alive(), "the other thread returned before it was seen inside"
        assert time.monotonic() < deadline, "the other thread never entered its call"
        time.sleep(0.001)  # polling interval


def busy_status(call):
    """EMF_ERR_BUSY when `call` raises Busy, else EMF_OK."""
    try:
        call()
    except emf.Busy:
        return emf.EMF_ERR_BUSY
    return emf.EMF_OK


def test_a_consumer_used_by_two_threads_at_once_is_busy(ring):
    with emf.Consumer(ring) as c, emf.Producer(ring) as p:
        started = threading.Event()
        result = []

        def waiter():
            started.set()
            result.append(c.recv(timeout=30.0))

        t = threading.Thread(target=waiter)
        t.start()
        started.wait()
        until_busy(lambda: busy_status(lambda: c.lag), t)
        e = expect_error(emf.EMF_ERR_BUSY, c.recv)
        assert isinstance(e, emf.Busy)
        expect_error(emf.EMF_ERR_BUSY, c.recv_batch)
        p.send(b"for the waiter")
        t.join()
        assert result == [b"for the waiter"]
        assert c.recv() is None  # usable again


def test_close_waits_for_a_call_in_progress(ring):
    c = emf.Consumer(ring)
    started = threading.Event()
    result = []

    def waiter():
        started.set()
        result.append(c.wait(30.0))

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    until_busy(lambda: busy_status(lambda: c.lag), t)
    closer = threading.Thread(target=c.close)  # blocks until the wait returns, then frees
    closer.start()
    with emf.Producer(ring) as p:
        p.send(b"wake up")
    closer.join()
    t.join()
    assert result == [True] and c.closed


def test_the_library_refuses_concurrent_use_of_a_handle(ring):
    """Below the Python lock: the library itself answers EMF_ERR_BUSY."""
    consumer = emf_consumer_p()
    assert lib.emf_consumer_new(ring._handle, byref(consumer)) == emf.EMF_OK
    try:
        ready = c_bool()
        t = threading.Thread(
            target=lambda: lib.emf_consumer_wait(consumer, emf.EMF_WAIT_PARK, 30000, byref(ready))
        )
        t.start()
        until_busy(lambda: lib.emf_consumer_lag(consumer, byref(c_uint64())), t)
        n = c_size_t()
        status = lib.emf_consumer_recv(consumer, None, 0, byref(n))
        message = last_error()
        with emf.Producer(ring) as p:
            p.send(b"wake up")
        t.join()
        assert status == emf.EMF_ERR_BUSY == 15
        assert "another thread" in message
        assert ready.value is True
    finally:
        assert lib.emf_consumer_free(consumer) == emf.EMF_OK


# --- the raw C ABI --------------------------------------------------------------------------


def test_ring_options_default():
    o = emf_ring_options_t()
    assert lib.emf_ring_options_default(byref(o)) == emf.EMF_OK
    assert (o.capacity, o.multi_producer, o.max_producers, o.max_subscribers,
            o.stall_timeout_ms, o.mode, o.dir, o.flags) == \
        (1 << 20, False, 16, 8, 100, 0o600, None, 0)
    assert lib.emf_ring_options_default(None) == emf.EMF_ERR_NULL_ARGUMENT


def test_raw_null_arguments(ring, tmp_path):
    r = emf_ring_p()
    p = emf_producer_p()
    c = emf_consumer_p()
    n = c_size_t()
    calls = {
        "create name": lambda: lib.emf_ring_create(None, None, byref(r)),
        "create out": lambda: lib.emf_ring_create(b"x", None, None),
        "open name": lambda: lib.emf_ring_open(None, str(tmp_path).encode(), byref(r)),
        "open out": lambda: lib.emf_ring_open(b"x", None, None),
        "unlink": lambda: lib.emf_ring_unlink(None),
        "max_payload": lambda: lib.emf_ring_max_payload(None, byref(n)),
        "max_payload out": lambda: lib.emf_ring_max_payload(ring._handle, None),
        "stats": lambda: lib.emf_ring_stats(None, byref(emf_ring_stats_t())),
        "stats out": lambda: lib.emf_ring_stats(ring._handle, None),
        "producer ring": lambda: lib.emf_producer_new(None, byref(p)),
        "producer out": lambda: lib.emf_producer_new(ring._handle, None),
        "producer in slot ring": lambda: lib.emf_producer_new_in_slot(None, 0, byref(p)),
        "producer in slot out": lambda: lib.emf_producer_new_in_slot(ring._handle, 0, None),
        "committed": lambda: lib.emf_producer_committed(None, byref(c_uint64()), None),
        "consumer ring": lambda: lib.emf_consumer_new(None, byref(c)),
        "consumer out": lambda: lib.emf_consumer_new(ring._handle, None),
        "subscribe out": lambda: lib.emf_consumer_subscribe(ring._handle, None),
        "send": lambda: lib.emf_producer_send(None, b"x", 1),
        "send_timeout": lambda: lib.emf_producer_send_timeout(None, b"x", 1, 0, 0),
        "send_batch": lambda: lib.emf_producer_send_batch(None, None, 0, byref(n)),
        "claim": lambda: lib.emf_producer_claim(None, 1, byref(ctypes.POINTER(ctypes.c_uint8)())),
        "commit": lambda: lib.emf_producer_commit(None, 0),
        "abort": lambda: lib.emf_producer_abort(None),
        "recv": lambda: lib.emf_consumer_recv(None, None, 0, byref(n)),
        "recv_batch": lambda: lib.emf_consumer_recv_batch(None, None, 0, 1, byref(n), byref(n)),
        "wait": lambda: lib.emf_consumer_wait(None, 0, 0, byref(c_bool())),
        "lag": lambda: lib.emf_consumer_lag(None, byref(c_uint64())),
        "set_ack_mode": lambda: lib.emf_consumer_set_ack_mode(None, 1),
        "ack": lambda: lib.emf_consumer_ack(None),
        "rewind": lambda: lib.emf_consumer_rewind(None, None),
        "unacked": lambda: lib.emf_consumer_unacked(None, byref(c_uint64())),
        "poll": lambda: lib.emf_consumer_poll(None, 1, emf_frame_fn(lambda *a: 0), None,
                                              byref(n)),
    }
    for what, call in calls.items():
        assert call() == emf.EMF_ERR_NULL_ARGUMENT, what
        assert last_error(), what
    assert not r and not p and not c  # out-parameters untouched
    # Freeing NULL is fine.
    assert lib.emf_ring_free(None) == lib.emf_producer_free(None) == emf.EMF_OK
    assert lib.emf_consumer_free(None) == emf.EMF_OK


def test_raw_producer_and_consumer_null_buffers(ring):
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    try:
        n, m = c_size_t(), c_size_t()
        assert lib.emf_producer_send(p, None, 4) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_producer_send_timeout(p, None, 4, 0, 0) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_producer_send_batch(p, None, 2, byref(n)) == emf.EMF_ERR_NULL_ARGUMENT
        slices = (emf_slice_t * 2)(emf_slice_t(None, 0), emf_slice_t(None, 3))
        assert lib.emf_producer_send_batch(p, slices, 2, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_producer_send_batch(p, slices, 2, byref(n)) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_producer_send(p, None, 0) == emf.EMF_OK  # an empty frame
        assert lib.emf_producer_send_batch(p, None, 0, byref(n)) == emf.EMF_OK and n.value == 0
        assert lib.emf_consumer_recv(c, None, 5, byref(n)) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_recv(c, None, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_recv_batch(c, None, 5, 1, byref(n), byref(m)) == \
            emf.EMF_ERR_NULL_ARGUMENT
        buf = ctypes.create_string_buffer(16)
        assert lib.emf_consumer_recv_batch(c, buf, 16, 1, None, byref(m)) == \
            emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_recv_batch(c, buf, 16, 1, byref(n), None) == \
            emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_wait(c, 0, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_lag(c, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_consumer_unacked(c, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_producer_committed(p, None, None) == emf.EMF_ERR_NULL_ARGUMENT
        # The nullable out-parameters: out_slot and out_unacked.
        count, slot = c_uint64(7), ctypes.c_uint32(7)
        assert lib.emf_producer_committed(p, byref(count), None) == emf.EMF_OK
        assert count.value == 1  # the empty frame above
        assert lib.emf_producer_committed(p, byref(count), byref(slot)) == emf.EMF_OK
        assert (count.value, slot.value) == (1, 0)
        assert lib.emf_consumer_rewind(c, None) == emf.EMF_OK
        assert lib.emf_consumer_poll(c, 1, emf_frame_fn(), None, byref(n)) == \
            emf.EMF_ERR_NULL_ARGUMENT  # a NULL function pointer
        assert lib.emf_consumer_recv(c, buf, 16, byref(n)) == emf.EMF_OK and n.value == 0
        huge = emf.EMF_MAX_INPUT_LEN + 1
        assert lib.emf_producer_send(p, b"tiny", huge) == emf.EMF_ERR_TOO_LARGE
        assert lib.emf_producer_send_batch(p, None, (1 << 24) + 1, byref(n)) == \
            emf.EMF_ERR_NULL_ARGUMENT
        big = (emf_slice_t * 1)(emf_slice_t(None, 0))
        # A count past the 16M limit is a size limit (ABI 3; was EMF_ERR_INVALID_ARGUMENT).
        assert lib.emf_producer_send_batch(p, big, (1 << 24) + 1, byref(n)) == \
            emf.EMF_ERR_TOO_LARGE
    finally:
        assert lib.emf_consumer_free(c) == emf.EMF_OK
        assert lib.emf_producer_free(p) == emf.EMF_OK


def test_raw_double_free_and_use_after_free(ring, tmp_path):
    r = emf_ring_p()
    assert lib.emf_ring_open(ring.name.encode(), str(tmp_path).encode(), byref(r)) == emf.EMF_OK
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(r, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(r, byref(c)) == emf.EMF_OK
    n = c_size_t()
    assert lib.emf_ring_free(r) == emf.EMF_OK
    assert lib.emf_ring_free(r) == emf.EMF_ERR_INVALID_ARGUMENT
    assert "already freed" in last_error()
    assert lib.emf_ring_max_payload(r, byref(n)) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_producer_new(r, byref(emf_producer_p())) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_producer_send(p, b"abc", 3) == emf.EMF_OK  # the mapping lives on
    for free in (lib.emf_producer_free, lib.emf_consumer_free):
        handle = p if free is lib.emf_producer_free else c
        assert free(handle) == emf.EMF_OK
        assert free(handle) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_producer_send(p, b"abc", 3) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_consumer_recv(c, None, 0, byref(n)) == emf.EMF_ERR_INVALID_ARGUMENT
    # A handle of one type is not accepted as another.
    as_consumer = ctypes.cast(ring._handle, emf_consumer_p)
    assert lib.emf_consumer_lag(as_consumer, byref(c_uint64())) == emf.EMF_ERR_INVALID_ARGUMENT
    with emf.Consumer(ring) as cons:
        assert cons.recv_batch() == [b"abc"]


def test_raw_recv_reports_the_length_needed(ring):
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    try:
        assert lib.emf_producer_send(p, b"0123456789", 10) == emf.EMF_OK
        small = ctypes.create_string_buffer(4)
        n = c_size_t(99)
        assert lib.emf_consumer_recv(c, small, 4, byref(n)) == emf.EMF_ERR_BUFFER_TOO_SMALL
        assert n.value == 10
        n2, used = c_size_t(77), c_size_t(77)
        status = lib.emf_consumer_recv_batch(c, small, 4, 8, byref(n2), byref(used))
        assert status == emf.EMF_ERR_BUFFER_TOO_SMALL
        assert "14" in last_error()
        # The bytes the next frame needs, its length prefix included; out_frames untouched.
        assert (n2.value, used.value) == (77, 14)
        # One byte short is still too small (nothing consumed); NULL with cap 0 asks too.
        buf = ctypes.create_string_buffer(64)
        used.value = 0
        assert lib.emf_consumer_recv_batch(c, buf, 13, 8, byref(n2), byref(used)) == \
            emf.EMF_ERR_BUFFER_TOO_SMALL and used.value == 14
        used.value = 0
        assert lib.emf_consumer_recv_batch(c, None, 0, 8, byref(n2), byref(used)) == \
            emf.EMF_ERR_BUFFER_TOO_SMALL and used.value == 14
        assert (n2.value, ring.stats().received) == (77, 0)
        assert lib.emf_consumer_recv_batch(c, buf, 64, 8, byref(n2), byref(used)) == emf.EMF_OK
        assert (n2.value, used.value) == (1, 14)
        assert buf.raw[:14] == struct.pack("<I", 10) + b"0123456789"
        assert lib.emf_consumer_recv(c, buf, 64, byref(n)) == emf.EMF_ERR_EMPTY
        assert lib.emf_consumer_recv_batch(c, buf, 64, 8, byref(n2), byref(used)) == emf.EMF_OK
        assert (n2.value, used.value) == (0, 0)
    finally:
        lib.emf_consumer_free(c)
        lib.emf_producer_free(p)


def test_raw_poll_with_a_callback(ring):
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    try:
        frames = [b"one", b"", b"three"]
        for f in frames:
            assert lib.emf_producer_send(p, f, len(f)) == emf.EMF_OK
        got, statuses = [], []

        @emf_frame_fn
        def collect(ctx, data, length):
            got.append((ctx, ctypes.string_at(data, length)))
            # Re-entering the same consumer from its callback is refused, not a deadlock.
            statuses.append(lib.emf_consumer_recv(c, None, 0, byref(c_size_t())))
            return 0

        n = c_size_t()
        assert lib.emf_consumer_poll(c, 2, collect, 1234, byref(n)) == emf.EMF_OK
        assert n.value == 2
        assert lib.emf_consumer_poll(c, 16, collect, 1234, byref(n)) == emf.EMF_OK
        assert n.value == 1
        assert got == [(1234, f) for f in frames]
        assert statuses == [emf.EMF_ERR_BUSY] * 3
        assert lib.emf_consumer_poll(c, 16, collect, None, byref(n)) == emf.EMF_OK
        assert n.value == 0
    finally:
        lib.emf_consumer_free(c)
        lib.emf_producer_free(p)


def test_raw_poll_callback_stops_the_poll(ring):
    """A callback returning non-zero stops the poll after its frame, which counts as
    consumed; the next poll starts at the frame after it."""
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    try:
        for i in range(10):
            f = SEQ.pack(i)
            assert lib.emf_producer_send(p, f, len(f)) == emf.EMF_OK
        got = []
        stop_at = {2, 3, 9}

        @emf_frame_fn
        def until(ctx, data, length):
            (seq,) = SEQ.unpack(ctypes.string_at(data, length))
            got.append(seq)
            return 7 if seq in stop_at else 0  # any non-zero value stops

        n = c_size_t()
        assert lib.emf_consumer_poll(c, 100, until, None, byref(n)) == emf.EMF_OK
        assert (n.value, got) == (3, [0, 1, 2])  # stopped after frame 2, which is consumed
        assert lib.emf_consumer_poll(c, 100, until, None, byref(n)) == emf.EMF_OK
        assert (n.value, got[3:]) == (1, [3])  # stops on its first frame: 1 consumed
        assert lib.emf_consumer_poll(c, 2, until, None, byref(n)) == emf.EMF_OK
        assert (n.value, got[4:]) == (2, [4, 5])  # the limit still applies
        assert lib.emf_consumer_poll(c, 100, until, None, byref(n)) == emf.EMF_OK
        assert (n.value, got[6:]) == (4, [6, 7, 8, 9])  # stop on the last frame
        assert lib.emf_consumer_poll(c, 100, until, None, byref(n)) == emf.EMF_OK
        assert n.value == 0 and len(got) == 10
        assert ring.stats().received == 10
        buf = ctypes.create_string_buffer(16)
        assert lib.emf_consumer_recv(c, buf, 16, byref(n)) == emf.EMF_ERR_EMPTY
    finally:
        lib.emf_consumer_free(c)
        lib.emf_producer_free(p)


def test_raw_free_from_its_own_callback_is_busy(ring):
    """Freeing a consumer from inside its own poll callback is refused with EMF_ERR_BUSY (not
    a use after free); the handle stays live and is freed after the poll."""
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    freed = False
    try:
        for f in (b"a", b"b", b"c"):
            assert lib.emf_producer_send(p, f, 1) == emf.EMF_OK
        statuses, messages, seen = [], [], []

        @emf_frame_fn
        def free_me(ctx, data, length):
            seen.append(ctypes.string_at(data, length))
            statuses.append(lib.emf_consumer_free(c))
            messages.append(last_error())
            # The producer is another handle: freeing it from here would be allowed.
            return 0

        n = c_size_t()
        assert lib.emf_consumer_poll(c, 2, free_me, None, byref(n)) == emf.EMF_OK
        assert n.value == 2 and seen == [b"a", b"b"]
        assert statuses == [emf.EMF_ERR_BUSY] * 2
        assert "its own callback" in messages[0]
        # Still live: the poll went on, and the consumer works afterwards.
        buf = ctypes.create_string_buffer(8)
        assert lib.emf_consumer_recv(c, buf, 8, byref(n)) == emf.EMF_OK and buf.raw[:1] == b"c"
        assert lib.emf_consumer_free(c) == emf.EMF_OK
        freed = True
        assert lib.emf_consumer_free(c) == emf.EMF_ERR_INVALID_ARGUMENT
    finally:
        if not freed:
            lib.emf_consumer_free(c)
        lib.emf_producer_free(p)
    with emf.Consumer(ring) as again:  # the primary consumer was released
        assert again.recv() is None


def test_raw_free_while_another_thread_is_inside_is_busy(make_ring):
    """emf_producer_free / emf_consumer_free while another thread is inside a call on the
    handle: EMF_ERR_BUSY, nothing freed; the free succeeds once that call returned."""
    ring = make_ring(capacity=4096)
    p, c = emf_producer_p(), emf_consumer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    assert lib.emf_consumer_new(ring._handle, byref(c)) == emf.EMF_OK
    try:
        # The consumer parks in emf_consumer_wait on an empty ring.
        ready = c_bool()
        t = threading.Thread(
            target=lambda: lib.emf_consumer_wait(c, emf.EMF_WAIT_PARK, 30000, byref(ready)))
        t.start()
        until_busy(lambda: lib.emf_consumer_lag(c, byref(c_uint64())), t)
        status, message = lib.emf_consumer_free(c), last_error()
        assert lib.emf_producer_send(p, b"wake", 4) == emf.EMF_OK
        t.join()
        assert status == emf.EMF_ERR_BUSY and "in use" in message
        assert ready.value is True
        n = c_size_t()
        buf = ctypes.create_string_buffer(16)
        assert lib.emf_consumer_recv(c, buf, 16, byref(n)) == emf.EMF_OK
        assert lib.emf_consumer_lag(c, byref(c_uint64())) == emf.EMF_OK  # still live

        # The producer parks in emf_producer_send_timeout on a full ring.
        while lib.emf_producer_send(p, b"x" * 64, 64) == emf.EMF_OK:
            pass
        result = []
        t = threading.Thread(target=lambda: result.append(
            lib.emf_producer_send_timeout(p, b"y" * 64, 64, emf.EMF_WAIT_PARK, 30000)))
        t.start()
        # emf_producer_abort changes nothing here: EMF_ERR_INVALID_ARGUMENT ("no claim")
        # until the other thread is inside, then EMF_ERR_BUSY.
        until_busy(lambda: lib.emf_producer_abort(p), t)
        status, message = lib.emf_producer_free(p), last_error()
        buf = ctypes.create_string_buffer(128)
        n = c_size_t()
        assert lib.emf_consumer_recv(c, buf, 128, byref(n)) == emf.EMF_OK  # make room
        t.join()
        assert status == emf.EMF_ERR_BUSY and "in use" in message
        assert result == [emf.EMF_OK]
        assert lib.emf_producer_abort(p) == emf.EMF_ERR_INVALID_ARGUMENT  # live: "no claim"
    finally:
        assert lib.emf_consumer_free(c) == emf.EMF_OK
        assert lib.emf_producer_free(p) == emf.EMF_OK
    assert ring.stats().producers == 0


def test_raw_claim_commit_abort(ring):
    p = emf_producer_p()
    assert lib.emf_producer_new(ring._handle, byref(p)) == emf.EMF_OK
    try:
        slot = ctypes.POINTER(ctypes.c_uint8)()
        assert lib.emf_producer_claim(p, 8, byref(slot)) == emf.EMF_OK
        assert lib.emf_producer_send(p, b"x", 1) == emf.EMF_ERR_INVALID_ARGUMENT  # claim open
        ctypes.memmove(slot, b"claimed!", 8)
        assert lib.emf_producer_commit(p, 7) == emf.EMF_OK
        assert lib.emf_producer_commit(p, 7) == emf.EMF_ERR_INVALID_ARGUMENT  # none open
        assert lib.emf_producer_claim(p, 4, byref(slot)) == emf.EMF_OK
        assert lib.emf_producer_abort(p) == emf.EMF_OK
        assert lib.emf_producer_abort(p) == emf.EMF_ERR_INVALID_ARGUMENT
        assert lib.emf_producer_claim(p, ring.max_payload + 1, byref(slot)) == \
            emf.EMF_ERR_TOO_LARGE
        assert lib.emf_producer_claim(p, 3, byref(slot)) == emf.EMF_OK
        ctypes.memmove(slot, b"end", 3)
        # Committing more than was claimed is refused, and the claim stays open.
        assert lib.emf_producer_commit(p, 100) == emf.EMF_ERR_INVALID_ARGUMENT
        assert "claim still open" in last_error()
        assert lib.emf_producer_commit(p, 4) == emf.EMF_ERR_INVALID_ARGUMENT
        assert lib.emf_producer_send(p, b"x", 1) == emf.EMF_ERR_INVALID_ARGUMENT  # still open
        assert lib.emf_producer_commit(p, 3) == emf.EMF_OK  # the same claim, committed
        assert lib.emf_producer_claim(p, 5, byref(slot)) == emf.EMF_OK
        assert lib.emf_producer_commit(p, 6) == emf.EMF_ERR_INVALID_ARGUMENT
        assert lib.emf_producer_abort(p) == emf.EMF_OK  # ... or aborted
        assert lib.emf_producer_claim(p, 3, byref(slot)) == emf.EMF_OK  # freed with it open
    finally:
        assert lib.emf_producer_free(p) == emf.EMF_OK  # aborts the open claim
    with emf.Consumer(ring) as c:
        assert c.recv_batch() == [b"claimed", b"end"]


def test_raw_unknown_wait_strategy(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        ready = c_bool()
        assert lib.emf_consumer_wait(c._handle, 3, 0, byref(ready)) == emf.EMF_ERR_INVALID_ARGUMENT
        assert lib.emf_producer_send_timeout(p._handle, b"x", 1, 99, 0) == \
            emf.EMF_ERR_INVALID_ARGUMENT
        assert c.recv() is None


# --- another process ------------------------------------------------------------------------

PRODUCER_CHILD = """
import struct, sys
import erlmcp_flow as emf

name, directory, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
SEQ = struct.Struct("<Q")

def seq_frame(i):
    size = 8 + (i * 7919) % 61
    return SEQ.pack(i) + bytes([i % 251]) * (size - 8)

partial = refused = 0
with emf.Ring.open(name, dir=directory) as ring, emf.Producer(ring) as p:
    i = 0
    while i < total:
        pending = [seq_frame(j) for j in range(i, min(i + 256, total))]
        while pending:
            sent = p.send_batch(pending)
            if sent == 0:
                refused += 1
                p.send(pending[0], timeout=30)  # wait for room in the library
                sent = 1
            elif sent < len(pending):
                partial += 1
            i += sent
            pending = pending[sent:]
print(partial, refused)
"""


def run_child(code, *args):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), ERLMCP_FLOW_LIB=str(emf.library_path))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cross_process_100k_frames_in_order(make_ring):
    """A producer in another process sends 100k sequence-numbered frames of varying sizes
    through a small ring (64 KiB: back-pressure and partial batches happen); this process
    receives them all, once each, in order."""
    ring = make_ring(capacity=1 << 16)
    total = 100_000
    with emf.Consumer(ring) as c:
        child = run_child(PRODUCER_CHILD, ring.name, ring.dir, total)
        try:
            # Read nothing until the producer has met a full ring, so that back-pressure is
            # certain to be part of the run.
            deadline = time.monotonic() + 60
            while ring.stats().backpressure == 0:
                assert child.poll() is None, child.communicate()[1]
                assert time.monotonic() < deadline, "the producer never filled the ring"
                time.sleep(0.01)
            expected = 0
            deadline = time.monotonic() + 120
            while expected < total:
                frames = c.recv_batch(max_frames=512, timeout=10)
                assert frames or child.poll() is None, f"producer gone after {expected} frames"
                assert time.monotonic() < deadline, f"only {expected} frames in time"
                expected = check_seq(frames, expected)
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert child.returncode == 0, err
        assert c.recv(timeout=0.05) is None  # nothing more: no duplicates
    stats = ring.stats()
    assert stats.sent == stats.received == total
    assert stats.producers == 0  # the child detached
    partial, refused = map(int, out.split())
    assert stats.backpressure > 0 and partial + refused > 0


def test_cross_process_consumer_and_single_sends(make_ring):
    """The other way round: this process sends frame by frame (waiting on Full), a consumer
    in another process checks the order and reports what it saw."""
    ring = make_ring(capacity=4096)
    total = 20_000
    code = """
    import struct, sys
    import erlmcp_flow as emf
    name, directory, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with emf.Ring.open(name, dir=directory) as ring, emf.Consumer(ring) as c:
        print("ready", flush=True)
        for i in range(total):
            frame = c.recv(timeout=30)
            assert frame is not None, f"nothing after {i}"
            assert struct.unpack_from("<Q", frame)[0] == i, (i, frame)
        assert c.recv(timeout=0.05) is None
    print("ok", total)
    """
    child = run_child(code, ring.name, ring.dir, total)
    try:
        assert child.stdout.readline().strip() == "ready"
        with emf.Producer(ring) as p:
            for i in range(total):
                frame = seq_frame(i)
                try:
                    p.send(frame)
                except emf.Full:
                    p.send(frame, timeout=30)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.split() == ["ok", str(total)]
    assert ring.stats().received == total


def test_a_closed_ring_refuses_producers_and_lets_consumers_drain(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        p.send(b"before")
        ring.close_to_producers()
        expect_error(emf.EMF_ERR_CLOSED, p.send, b"after")
        assert c.recv() == b"before"


# --- acknowledgement, producer slots, checksums (ABI 3) -----------------------------------


def run_held_child(code, *args):
    """run_child whose stdin is a pipe: the child may block on it until it is killed."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), ERLMCP_FLOW_LIB=str(emf.library_path))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_child(child):
    """SIGKILLs a child and reaps it (a zombie would still count as a live participant)."""
    child.kill()
    child.wait(timeout=30)
    assert child.returncode == -9, child.returncode
    child.stdout.close()
    child.stderr.close()
    child.stdin.close()


def expect_line(child, want):
    line = child.stdout.readline().split()
    if line[:1] != [want]:
        child.kill()
        _, err = child.communicate(timeout=30)
        pytest.fail(f"child said {line!r}, expected {want!r}; stderr:\n{err}")
    return line[1:]


def test_manual_ack_redelivers_what_a_closed_consumer_did_not_acknowledge(ring):
    frames = [seq_frame(i) for i in range(10)]
    with emf.Producer(ring) as p:
        assert p.send_batch(frames) == 10
    with emf.Consumer(ring, ack_mode="manual") as c:
        assert c.ack_mode == "manual"
        assert c.unacked == 0
        assert c.recv_batch(max_frames=4) == frames[:4]
        assert c.recv() == frames[4]
        assert list(itertools.islice(c, 2)) == frames[5:7]   # iteration receives too
        assert c.unacked == 7
        assert ring.stats().received == 0                    # nothing released
    # Closed without ack: the next primary consumer gets the same frames again, in order.
    with emf.Consumer(ring, ack_mode="manual") as c:
        assert c.recv_batch() == frames
        assert c.unacked == 10
        c.ack()
        assert c.unacked == 0
        c.ack()                                              # nothing to acknowledge: fine
    assert ring.stats().received == 10
    # Acknowledged: released for good, a further consumer sees none of them.
    with emf.Consumer(ring) as c:
        assert c.ack_mode == "auto"
        assert c.recv() is None


def test_auto_mode_releases_before_recv_returns(ring):
    """The contrast: in auto mode (the default) recv / recv_batch are at most once."""
    with emf.Producer(ring) as p:
        assert p.send_batch([seq_frame(i) for i in range(6)]) == 6
    with emf.Consumer(ring) as c:
        assert check_seq(c.recv_batch(max_frames=3), 0) == 3
        assert c.unacked == 0
    with emf.Consumer(ring) as c:
        assert check_seq(c.recv_batch(), 3) == 6


def test_rewind_redelivers_since_the_last_ack(ring):
    with emf.Producer(ring) as p, emf.Consumer(ring, ack_mode="manual") as c:
        assert p.send_batch([seq_frame(i) for i in range(8)]) == 8
        assert check_seq(c.recv_batch(max_frames=3), 0) == 3
        assert c.rewind() == 3
        assert c.unacked == 0
        assert check_seq(c.recv_batch(max_frames=5), 0) == 5   # the same three, then more
        c.ack()
        assert check_seq([c.recv()], 5) == 6
        assert c.rewind() == 1                                 # only since the ack
        assert check_seq(c.recv_batch(), 5) == 8
        c.ack()
        assert c.rewind() == 0
        assert c.recv() is None


def test_switching_to_auto_acknowledges(ring):
    with emf.Producer(ring) as p:
        assert p.send_batch([seq_frame(i) for i in range(5)]) == 5
    with emf.Consumer(ring) as c:
        c.ack_mode = "manual"
        assert check_seq(c.recv_batch(max_frames=2), 0) == 2
        assert c.unacked == 2
        c.set_ack_mode("auto")
        assert (c.ack_mode, c.unacked) == ("auto", 0)
    with emf.Consumer(ring) as c:
        assert check_seq(c.recv_batch(), 2) == 5


def test_ack_mode_bad_input(ring):
    with emf.Consumer(ring) as c:
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.set_ack_mode, "sometimes")
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.set_ack_mode, 7)   # the library's answer
        assert "acknowledgement mode" in last_error()
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, c.set_ack_mode, -1)
        with pytest.raises(TypeError):
            c.set_ack_mode(None)
        assert c.ack_mode == "auto"                                     # unchanged
        c.set_ack_mode(emf.EMF_ACK_MANUAL)
        assert c.ack_mode == "manual"
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Consumer, ring, ack_mode="later")
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Consumer, ring, ack_mode=7)  # the library's
    # A mode refused after attaching detaches the consumer again: the slot is free.
    with emf.Consumer(ring) as c:
        pass
    for call in (c.ack, c.rewind, lambda: c.unacked, lambda: c.set_ack_mode("auto")):
        with pytest.raises(ValueError):
            call()
    raw = emf_consumer_p()
    assert lib.emf_consumer_new(ring._handle, byref(raw)) == emf.EMF_OK
    assert lib.emf_consumer_set_ack_mode(raw, 2) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_consumer_free(raw) == emf.EMF_OK
    assert lib.emf_consumer_ack(raw) == emf.EMF_ERR_INVALID_ARGUMENT        # freed handle
    assert lib.emf_consumer_rewind(raw, None) == emf.EMF_ERR_INVALID_ARGUMENT


MANUAL_CONSUMER_CHILD = """
import struct, sys
import erlmcp_flow as emf

name, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with emf.Ring.open(name, dir=directory) as ring:
    c = emf.Consumer(ring, ack_mode="manual")
    for i in range(count):
        frame = c.recv(timeout=30)
        assert frame is not None and struct.unpack_from("<Q", frame)[0] == i, (i, frame)
    print("received", c.unacked, flush=True)
    sys.stdin.readline()   # killed here, without ack
"""


def test_a_killed_manual_consumer_has_its_frames_redelivered(ring):
    """A consumer in another process receives 40 frames in manual mode and is SIGKILLed
    before it acknowledges them: the next consumer gets those 40 again, in order, then the
    rest; once acknowledged, a further consumer sees none of them."""
    with emf.Producer(ring) as p:
        assert p.send_batch([seq_frame(i) for i in range(60)]) == 60
        child = run_held_child(MANUAL_CONSUMER_CHILD, ring.name, ring.dir, 40)
        try:
            assert expect_line(child, "received") == ["40"]
            expect_error(emf.EMF_ERR_BUSY, emf.Consumer, ring)  # held by the live child
        finally:
            kill_child(child)
        assert ring.stats().received == 0
        with emf.Consumer(ring, ack_mode="manual") as c:
            assert check_seq(c.recv_batch(), 0) == 60
            c.ack()
        p.send(seq_frame(60))
    with emf.Consumer(ring) as c:
        assert c.recv_batch() == [seq_frame(60)]
    assert ring.stats().received == 61


SLOT_PRODUCER_CHILD = """
import math, struct, sys
import erlmcp_flow as emf

name, directory, slot, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
SEQ = struct.Struct("<Q")
with emf.Ring.open(name, dir=directory) as ring:
    p = emf.Producer(ring, slot=slot)
    assert (p.slot, p.committed) == (slot, 0)
    i = 0
    while count < 0 or i < count:
        p.send(SEQ.pack(i) + bytes([i % 251]) * (8 + (i * 7919) % 61 - 8), timeout=math.inf)
        i += 1
    print("sent", p.committed, flush=True)
    sys.stdin.readline()   # killed here
"""


def test_a_producer_restarted_in_its_slot_resends_exactly_the_missing_frames(make_ring):
    """A producer in slot 2 of another process sends 300 frames and is SIGKILLed; a new
    producer in slot 2 reads committed == 300 and resends from 300: the consumer sees
    0..499 exactly once, in order."""
    ring = make_ring(multi_producer=True, max_producers=4)
    with emf.Consumer(ring) as c:
        child = run_held_child(SLOT_PRODUCER_CHILD, ring.name, ring.dir, 2, 300)
        try:
            assert expect_line(child, "sent") == ["300"]
            expect_error(emf.EMF_ERR_BUSY, emf.Producer, ring, slot=2)  # a live holder
            with emf.Producer(ring, slot=1) as other:                    # other slots are free
                assert (other.slot, other.committed) == (1, 0)
        finally:
            kill_child(child)
        with emf.Producer(ring, slot=2) as p:
            assert (p.slot, p.committed) == (2, 300)
            for i in range(p.committed, 500):
                p.send(seq_frame(i))
            assert p.committed == 500
        assert check_seq(c.recv_batch(max_frames=1000), 0) == 500
        assert c.recv() is None
    stats = ring.stats()
    assert stats.sent == stats.received == 500 and stats.dead_reaped >= 1


def test_a_producer_killed_mid_stream_is_resumed_without_loss_or_duplicate(make_ring):
    """The child sends without end through a small ring while this process reads, and is
    SIGKILLed at an arbitrary point (maybe inside a send). The restarted producer's
    committed count says exactly which frames made it: resending from there gives an
    unbroken sequence."""
    ring = make_ring(capacity=4096, multi_producer=True, max_producers=2, stall_timeout_ms=20)
    with emf.Consumer(ring) as c:
        child = run_held_child(SLOT_PRODUCER_CHILD, ring.name, ring.dir, 1, -1)
        got = 0
        try:
            deadline = time.monotonic() + 60
            while got < 3000:
                assert child.poll() is None, child.communicate()[1]
                assert time.monotonic() < deadline, f"only {got} frames"
                got = check_seq(c.recv_batch(max_frames=64, timeout=1), got)
        finally:
            kill_child(child)
        with emf.Producer(ring, slot=1) as p:
            resume = p.committed
            assert resume >= got
            for i in range(resume, resume + 200):
                p.send(seq_frame(i), timeout=10)
                got = check_seq(c.recv_batch(), got)
        deadline = time.monotonic() + 30
        while got < resume + 200:
            assert time.monotonic() < deadline, f"{got} of {resume + 200} frames"
            got = check_seq(c.recv_batch(timeout=1), got)
        assert c.recv(timeout=0.05) is None


def test_producer_slot_bad_input(make_ring):
    single = make_ring()
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Producer, single, slot=1)
    assert "slot 1" in last_error()
    with emf.Producer(single, slot=0) as p:
        assert (p.slot, p.committed) == (0, 0)
        expect_error(emf.EMF_ERR_BUSY, emf.Producer, single)
        expect_error(emf.EMF_ERR_BUSY, emf.Producer, single, slot=0)
    multi = make_ring(multi_producer=True, max_producers=3)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Producer, multi, slot=3)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Producer, multi, slot=2**32)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Producer, multi, slot=-1)
    with pytest.raises(TypeError):
        emf.Producer(multi, slot="1")
    with emf.Producer(multi, slot=2) as p:
        p.send(b"x")
        assert (p.slot, p.committed) == (2, 1)
        with emf.Producer(multi) as q:          # emf_producer_new takes the first free slot
            assert q.slot == 0
    # A slot closed normally keeps its count: the next holder continues it.
    with emf.Producer(multi, slot=2) as p:
        assert p.committed == 1
    with pytest.raises(ValueError):
        p.committed


def test_checksum_ring_round_trips(make_ring):
    ring = make_ring(capacity=1 << 16, checksum=True)
    big = bytes(range(256)) * (ring.max_payload // 256) + b"\x07" * (ring.max_payload % 256)
    frames = [b"", b"x", big, *(seq_frame(i) for i in range(300))]
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        for frame in frames[:3]:
            p.send(frame)
        got = c.recv_batch()
        pending = frames[3:]
        while pending:
            pending = pending[p.send_batch(pending):]
            got += c.recv_batch()
        assert got == frames
    assert ring.stats().corrupt_frames == 0


def flip_in_segment(ring, pattern):
    """Flips one byte of the only copy of `pattern` in the ring's segment file, through a
    second mapping of it."""
    import mmap
    with open(Path(ring.dir) / f"emf-{ring.name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        at = m.find(pattern)
        assert at >= 0 and m.find(pattern, at + 1) < 0, "pattern not found exactly once"
        m[at + 3] ^= 0x40


@pytest.mark.parametrize("receive", ["recv", "recv_batch"])
def test_checksum_reports_a_changed_frame_and_goes_on(make_ring, receive):
    ring = make_ring(capacity=1 << 16, checksum=True)
    marks = [os.urandom(16) for _ in range(3)]
    frames = [b"frame-%d-" % i + m for i, m in enumerate(marks)]
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        assert p.send_batch(frames) == 3
        flip_in_segment(ring, marks[1])
        if receive == "recv":
            assert c.recv() == frames[0]
            expect_error(emf.EMF_ERR_CORRUPT, c.recv)
            assert c.recv() == frames[2]
        else:
            assert c.recv_batch() == [frames[0]]    # the frames before it are delivered
            expect_error(emf.EMF_ERR_CORRUPT, c.recv_batch)
            assert c.recv_batch() == [frames[2]]    # then the one after it
        assert c.recv() is None
    assert ring.stats().corrupt_frames == 1


def test_without_checksum_a_changed_frame_is_delivered_as_it_is(make_ring):
    ring = make_ring(capacity=1 << 16)
    mark = os.urandom(16)
    with emf.Producer(ring) as p, emf.Consumer(ring) as c:
        p.send(b"before" + mark)
        flip_in_segment(ring, mark)
        changed = bytearray(mark)
        changed[3] ^= 0x40
        assert c.recv() == b"before" + bytes(changed)
    assert ring.stats().corrupt_frames == 0


def test_unknown_ring_flags_are_refused(tmp_path):
    o = emf_ring_options_t()
    assert lib.emf_ring_options_default(byref(o)) == emf.EMF_OK
    o.dir = str(tmp_path).encode()
    o.flags = 0x80
    r = emf_ring_p()
    assert lib.emf_ring_create(b"flags", byref(o), byref(r)) == emf.EMF_ERR_INVALID_ARGUMENT
    assert "flags" in last_error() and not r
    assert not list(tmp_path.iterdir())
