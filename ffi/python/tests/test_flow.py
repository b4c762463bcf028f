"""Router, BatchProcessor, StateStore and SharedValue (emf_router_*, emf_batch_*, emf_state_*):
partial batch acceptance, flushes by size, idle consumer and timeout (driven through tick with
a fake wait: no sleep is used to synchronise), close/discard under back-pressure, shared
values held across a re-share and gone after release, zero-copy views, and another process.

Everything lives in pytest's temporary directory (never /dev/shm itself)."""

import ctypes
import gc
import itertools
import os
import struct
import subprocess
import sys
import textwrap
import threading
from ctypes import POINTER, byref, c_size_t, c_uint8
from pathlib import Path

import pytest

import erlmcp_flow as emf
from erlmcp_flow._native import lib

PACKAGE_ROOT = Path(emf.__file__).resolve().parents[1]  # ffi/python
SEQ = struct.Struct("<I")
_names = itertools.count()


def unique(prefix):
    return f"{prefix}{os.getpid()}-{next(_names)}"


def expect_error(code, fn, *args, **kwargs):
    with pytest.raises(emf.Error) as err:
        fn(*args, **kwargs)
    assert err.value.code == code, str(err.value)
    assert err.value.message.strip()
    return err.value


def drain(consumer):
    """Every frame ready now, without waiting."""
    got = []
    while True:
        frames = consumer.recv_batch(4096)
        if not frames:
            return got
        got += frames


def message(i, size=100):
    return SEQ.pack(i) + bytes([i % 251]) * (size - 4)


# --- Router ------------------------------------------------------------------------------------


@pytest.fixture
def router(tmp_path):
    with emf.Router(tmp_path, inbox_capacity=4096) as r:
        yield r


def test_router_sends_to_a_registered_agent_and_refuses_unknown_ones(router, tmp_path):
    with router.register_agent("planner") as inbox:
        assert isinstance(inbox, emf.Consumer) and inbox.agent == "planner"
        assert inbox.ring is None and "planner" in repr(inbox)
        assert (tmp_path / "emf-inbox.planner").exists()
        router.send_direct("planner", b"task 1")
        router.send_direct("planner", bytearray(b"task 2"))
        router.send_direct("planner", memoryview(b"xtask 3")[1:])
        assert drain(inbox) == [b"task 1", b"task 2", b"task 3"]
        assert inbox.recv() is None
    err = expect_error(emf.EMF_ERR_NOT_FOUND, router.send_direct, "nobody", b"x")
    assert isinstance(err, emf.NotFound)
    with pytest.raises(emf.NotFound):
        router.send_batch("nobody", [b"x"])
    router.unregister_agent("planner")
    assert not (tmp_path / "emf-inbox.planner").exists()
    with pytest.raises(emf.NotFound):
        router.send_direct("planner", b"x")
    with pytest.raises(emf.NotFound):
        router.unregister_agent("planner")


def test_router_partial_batch_returns_exactly_the_messages_not_accepted(router):
    msgs = [message(i) for i in range(200)]
    with router.register_agent("a") as inbox:
        accepted, rest = router.send_batch("a", msgs)
        assert 0 < accepted < len(msgs)
        assert rest == msgs[accepted:]
        assert all(r is m for r, m in zip(rest, msgs[accepted:]))  # the caller's own objects
        # Full inbox: nothing accepted, everything handed back.
        again, rest2 = router.send_batch("a", rest)
        assert (again, rest2) == (0, rest)
        with pytest.raises(emf.Full):
            router.send_direct("a", message(999))  # no room for one more
        got = drain(inbox)
        assert got == msgs[:accepted]  # exactly the accepted prefix arrived, once
        while rest:  # resend what was not accepted until everything is through
            n, rest = router.send_batch("a", rest)
            assert n > 0
            got += drain(inbox)
        assert got == msgs


def test_router_batch_accepts_any_iterable_and_mixed_buffers(router):
    with router.register_agent("m") as inbox:
        assert router.send_batch("m", []) == (0, [])
        frames = (b"a", bytearray(b"bc"), memoryview(b"a-b-c")[::2], b"")
        assert router.send_batch("m", iter(frames)) == (4, [])
        assert drain(inbox) == [b"a", b"bc", b"abc", b""]
        with pytest.raises(TypeError):
            router.send_batch("m", [b"x", "text"])
        too_big = b"x" * 4096
        expect_error(emf.EMF_ERR_TOO_LARGE, router.send_batch, "m", [b"ok", too_big])
        assert inbox.recv() is None  # an error sends nothing


def test_router_inbox_survives_an_agent_restart(router):
    inbox = router.register_agent("w")
    with pytest.raises(emf.Busy):
        router.register_agent("w")  # its primary consumer is held
    inbox.close()
    router.send_direct("w", b"kept")
    with router.register_agent("w") as again:
        assert again.recv() == b"kept"


def test_router_refuses_bad_arguments(router, tmp_path):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, router.register_agent, "bad/name")
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, router.register_agent, "nul\0")
    for bad in ("", ".", "..", ".hidden"):  # would be the files inbox., inbox.., ...
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, router.register_agent, bad)
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, router.send_direct, bad, b"x")
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, router.unregister_agent, bad)
    assert not any(p.name.startswith("emf-inbox.") for p in tmp_path.iterdir())
    with pytest.raises(TypeError):
        router.send_direct("a", "text")
    with pytest.raises(TypeError):
        router.register_agent(7)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.Router, tmp_path, inbox_capacity=-1)
    with emf.Router(tmp_path, inbox_capacity=1000) as odd:  # not a power of two
        expect_error(emf.EMF_ERR_INVALID_ARGUMENT, odd.register_agent, "x")


def test_router_close_and_use_after_close(tmp_path):
    r = emf.Router(tmp_path)
    assert "open" in repr(r)
    r.close()
    r.close()
    assert r.closed and "closed" in repr(r)
    with pytest.raises(ValueError):
        r.send_direct("a", b"x")


def test_two_routers_send_to_one_inbox(tmp_path):
    with emf.Router(tmp_path, 1 << 16) as owner, emf.Router(tmp_path) as other:
        with owner.register_agent("shared") as inbox:
            owner.send_direct("shared", b"1")
            other.send_direct("shared", b"2")
            assert other.send_batch("shared", [b"3", b"4"]) == (2, [])
            assert drain(inbox) == [b"1", b"2", b"3", b"4"]
        owner.unregister_agent("shared")


# --- BatchProcessor ------------------------------------------------------------------------------


@pytest.fixture
def make_ring(tmp_path):
    made = []

    def make(capacity=1 << 16, **options):
        ring = emf.Ring.create(unique("b"), capacity=capacity, dir=tmp_path, **options)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        if not ring.closed:
            ring.unlink()
            ring.close()


def busy_consumer(ring, batch):
    """The primary consumer, made "busy" (not caught up): one unread frame in the ring, sent
    by the batch processor itself (an idle consumer gets it at once)."""
    c = emf.Consumer(ring)
    assert batch.send_message(b"unread") is emf.FlushReason.IDLE
    return c


def test_batch_flushes_at_once_for_an_idle_consumer(make_ring):
    ring = make_ring()
    with emf.Consumer(ring) as c, emf.BatchProcessor(ring) as b:
        for i in range(5):
            assert b.send_message(message(i)) is emf.FlushReason.IDLE
            assert b.pending == 0 and b.due_ms is None
            assert c.recv() == message(i)  # caught up again: the next one goes at once too


def test_batch_flushes_on_size(make_ring):
    ring = make_ring()
    with emf.BatchProcessor(ring, batch_size=10, timeout_ms=60_000) as b:
        c = busy_consumer(ring, b)
        for i in range(9):
            assert b.send_message(message(i)) is None
            assert b.pending == i + 1
        reason = b.send_message(message(9))
        assert reason is emf.FlushReason.SIZE and reason == emf.EMF_FLUSH_SIZE
        assert b.pending == 0 and b.due_ms is None
        assert drain(c) == [b"unread"] + [message(i) for i in range(10)]
        c.close()


def test_batch_tick_before_the_timeout_does_nothing(make_ring):
    ring = make_ring()
    with emf.BatchProcessor(ring, batch_size=100, timeout_ms=60_000) as b:
        c = busy_consumer(ring, b)
        assert b.tick() is None  # nothing pending
        assert b.send_message(b"late") is None
        assert 0 < b.due_ms <= 60_000
        assert b.tick() is None and b.pending == 1  # a minute early
        assert b.flush() == 1 and b.pending == 0
        assert b.tick() is None
        assert drain(c) == [b"unread", b"late"]
        c.close()


def test_batch_flushes_on_timeout_through_tick_with_a_fake_wait(make_ring):
    ring = make_ring()
    timeout_ms = 5
    with emf.BatchProcessor(ring, batch_size=100, timeout_ms=timeout_ms) as b:
        c = busy_consumer(ring, b)
        asked = []
        # Nothing pending: tick returns at once, without waiting.
        assert b.tick(wait=asked.append) is None and asked == []
        assert b.send_message(b"late-1") is None
        assert b.send_message(b"late-2") is None
        # The fake wait only records what it is asked for and returns at once: tick keeps
        # ticking (on the library's clock) until the timeout flush has happened.
        reason = b.tick(wait=asked.append)
        assert reason is emf.FlushReason.TIMEOUT and reason == emf.EMF_FLUSH_TIMEOUT
        assert asked, "tick waited for the deadline"
        assert all(0 < s <= timeout_ms / 1000 for s in asked), asked
        assert b.pending == 0 and b.due_ms is None
        assert drain(c) == [b"unread", b"late-1", b"late-2"]
        c.close()


def test_batch_tick_with_a_wait_that_raises_stops(make_ring):
    ring = make_ring()
    with emf.BatchProcessor(ring, timeout_ms=60_000) as b:
        c = busy_consumer(ring, b)
        b.send_message(b"x")

        class Stop(Exception):
            pass

        def wait(seconds):
            assert 0 < seconds <= 60
            raise Stop

        with pytest.raises(Stop):
            b.tick(wait=wait)
        assert b.pending == 1
        with pytest.raises(TypeError):
            b.tick(wait=5)
        c.close()


def fill_pending(make_ring, count, size=100, **options):
    """A batch processor on a 4 KiB ring whose consumer never reads, holding `count` messages
    of which only some fit."""
    ring = make_ring(capacity=4096)
    b = emf.BatchProcessor(ring, batch_size=10_000, timeout_ms=60_000, **options)
    c = busy_consumer(ring, b)
    msgs = [message(i, size) for i in range(count)]
    for m in msgs:
        assert b.send_message(m) is None
    return ring, b, c, msgs


def test_batch_close_raises_full_and_keeps_what_could_not_be_sent(make_ring):
    ring, b, c, msgs = fill_pending(make_ring, 60)
    with pytest.raises(emf.Full) as err:
        b.close()
    assert err.value.code == emf.EMF_ERR_FULL
    assert not b.closed
    left = b.pending
    assert 0 < left < 60
    got = drain(c)
    assert got == [b"unread"] + msgs[: 60 - left]
    b.close()  # now everything fits
    assert b.closed
    b.close()
    assert drain(c) == msgs[60 - left:]
    with pytest.raises(ValueError):
        b.send_message(b"x")
    c.close()


def test_batch_context_manager_raises_full_on_exit(make_ring):
    ring, b, c, msgs = fill_pending(make_ring, 60)
    with pytest.raises(emf.Full):
        with b:
            pass
    assert not b.closed
    left = b.pending
    assert b.discard() == left > 0
    c.close()


def test_batch_discard_drops_pending_messages_knowingly(make_ring):
    ring, b, c, msgs = fill_pending(make_ring, 60)
    assert b.flush() > 0
    left = b.pending
    assert left > 0
    assert b.discard() == left
    assert b.closed and b.discard() == 0
    assert drain(c) == [b"unread"] + msgs[: 60 - left]
    c.close()


def test_batch_refuses_past_max_pending_and_loses_nothing(make_ring):
    ring = make_ring(capacity=4096)
    with emf.Consumer(ring) as c:
        b = emf.BatchProcessor(ring, batch_size=100, timeout_ms=60_000, max_pending=5)
        assert b.send_message(b"unread") is emf.FlushReason.IDLE
        queued = []
        i = 0
        while True:
            m = message(i, 500)
            try:
                b.send_message(m)
            except emf.Full:
                break
            queued.append(m)
            i += 1
        assert b.pending == 5  # the refused message was not queued
        got = drain(c)[1:]
        while b.pending:
            b.flush()
            got += drain(c)
        assert got == queued
        b.close()


def test_batch_refuses_bad_arguments(make_ring):
    ring = make_ring()
    with pytest.raises(emf.Error) as err:
        emf.BatchProcessor(ring, batch_size=-1)
    assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error):
        emf.BatchProcessor(ring, timeout_ms=2**32)
    with pytest.raises(TypeError):
        emf.BatchProcessor("ring")
    with emf.BatchProcessor(ring) as b:
        expect_error(emf.EMF_ERR_TOO_LARGE, b.send_message, b"x" * ring.max_payload + b"x")
        with pytest.raises(TypeError):
            b.send_message("text")
        assert b.pending == 0
        assert "open" in repr(b)


def test_batch_uses_the_rings_producer_slot(make_ring):
    ring = make_ring()
    with emf.Producer(ring):
        with pytest.raises(emf.Busy):
            emf.BatchProcessor(ring)  # a single-producer ring already has its producer
    ring2 = make_ring(multi_producer=True)
    with emf.Producer(ring2) as p, emf.BatchProcessor(ring2) as b, emf.Consumer(ring2) as c:
        p.send(b"direct")
        b.send_message(b"batched")
        b.flush()
        assert drain(c) == [b"direct", b"batched"]


def test_batch_collected_with_unsendable_messages_discards_them(make_ring):
    ring, b, c, msgs = fill_pending(make_ring, 60)
    with pytest.warns(ResourceWarning):
        del b
        gc.collect()
    assert ring.stats().producers == 0  # the processor's producer was released
    c.close()


def test_batch_in_use_by_another_thread_is_busy(make_ring):
    ring = make_ring()
    with emf.BatchProcessor(ring) as b:
        seen = []

        def use():
            try:
                b.send_message(b"x")
                seen.append("sent")
            except emf.Busy as e:
                seen.append(e.code)

        b._lock.acquire()  # as if this thread were inside a call
        try:
            t = threading.Thread(target=use)
            t.start()
            t.join()
        finally:
            b._lock.release()
        assert seen == [emf.EMF_ERR_BUSY]
        assert b.pending == 0


# --- StateStore / SharedValue --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with emf.StateStore(unique("s"), tmp_path) as s:
        yield s


def value_address(value):
    """The address the library gives for a value's bytes (emf_state_value_data)."""
    data, n = POINTER(c_uint8)(), c_size_t(0)
    assert lib.emf_state_value_data(value._handle, byref(data), byref(n)) == emf.EMF_OK
    return ctypes.cast(data, ctypes.c_void_p).value, n.value


def test_state_share_lookup_read(store):
    ref = store.share_state("registry", b"v1")
    assert isinstance(ref, int) and store.lookup("registry") == ref
    with store.read_shared_state(ref) as v:
        assert isinstance(v, emf.SharedValue) and v.ref == ref
        assert v.tobytes() == b"v1" and bytes(v) == b"v1" and len(v) == 2
        view = v.view
        assert isinstance(view, memoryview) and view.readonly and view.format == "B"
        assert view == b"v1"
        with pytest.raises(TypeError):
            view[0] = 0
    assert v.closed and "closed" in repr(v)
    with pytest.raises(ValueError):
        v.view
    with pytest.raises(ValueError):
        v.tobytes()
    with pytest.raises(ValueError):
        view[0]  # the view handed out was released with the value
    v.close()


def test_state_view_is_zero_copy(store):
    big = os.urandom(100_000)
    ref = store.share_state("big", big)
    with store.read_shared_state(ref) as v, store.read_shared_state(ref) as w:
        address, length = value_address(v)
        assert length == len(big)
        # The view is over the library's mapping itself, not a copy.
        assert ctypes.addressof(v.view.obj) == address
        assert v.view.obj is v._array
        assert v.view == big and w.view == big
        assert ctypes.addressof(w.view.obj) == value_address(w)[0]


def test_state_value_readable_while_held_after_reshare(store):
    r1 = store.share_state("k", b"first value")
    held = store.read_shared_state(r1)
    view = held.view
    r2 = store.share_state("k", b"second")
    assert r2 != r1 and store.lookup("k") == r2
    # The old reference is retired for new readers...
    with pytest.raises(emf.NotFound) as err:
        store.read_shared_state(r1)
    assert err.value.code == emf.EMF_ERR_NOT_FOUND
    # ...but the holder keeps reading the old bytes, in place.
    assert view == b"first value" and held.tobytes() == b"first value"
    with store.read_shared_state(r2) as new:
        assert new.tobytes() == b"second"
    held.close()
    with pytest.raises(emf.NotFound):
        store.release(r1)  # retired by the re-share already


def test_state_not_found_after_release(store):
    ref = store.share_state("gone", b"bye")
    held = store.read_shared_state(ref)
    store.release(ref)
    with pytest.raises(emf.NotFound):
        store.read_shared_state(ref)
    with pytest.raises(emf.NotFound):
        store.release(ref)
    assert held.tobytes() == b"bye"  # a current reader keeps it until it closes
    held.close()
    with pytest.raises(emf.NotFound):
        store.read_shared_state(ref)
    with pytest.raises(emf.NotFound):
        store.lookup("never shared")
    with pytest.raises(emf.NotFound):
        store.read_shared_state(12345)


def test_state_empty_value_and_bytes_like_inputs(store):
    for value in (b"", bytearray(b"ba"), memoryview(b"mv"), memoryview(b"a-b-c")[::2]):
        ref = store.share_state("e", value)
        with store.read_shared_state(ref) as v:
            assert v.tobytes() == bytes(value) and len(v.view) == len(bytes(value))
    with pytest.raises(TypeError):
        store.share_state("e", "text")


def test_state_close_refuses_while_views_of_the_value_exist(store):
    ref = store.share_state("k", b"0123456789")
    v = store.read_shared_state(ref)
    part = v.view[2:5]
    again = memoryview(v.view)
    with pytest.raises(BufferError):
        v.close()
    assert not v.closed and part == b"234" and again == b"0123456789"
    assert v.view == b"0123456789"  # still open and readable
    del again
    with pytest.raises(BufferError):
        v.close()
    part.release()
    v.close()
    assert v.closed


def test_state_views_keep_a_collected_value_mapped(store):
    ref = store.share_state("k", b"survivor")
    v = store.read_shared_state(ref)
    part = v.view[0:3]
    del v
    gc.collect()
    store.release(ref)
    assert part == b"sur"  # the mapping lives as long as a view of it
    del part
    gc.collect()


def test_state_refuses_bad_arguments(store, tmp_path):
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.StateStore, "bad name", tmp_path)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, emf.StateStore, "nul\0", tmp_path)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, store.read_shared_state, -1)
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, store.release, 2**64)
    with pytest.raises(TypeError):
        store.read_shared_state("1")
    with pytest.raises(TypeError):
        emf.SharedValue()
    expect_error(emf.EMF_ERR_INVALID_ARGUMENT, store.share_state, "k\0", b"x")


def test_state_store_threads(store):
    refs = {}
    errors = []

    def worker(k):
        try:
            for i in range(50):
                r = store.share_state(f"t{k}", struct.pack("<II", k, i))
                with store.read_shared_state(r) as v:
                    assert struct.unpack("<II", v.view) == (k, i)
            refs[k] = store.lookup(f"t{k}")
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, r in refs.items():
        with store.read_shared_state(r) as v:
            assert v.tobytes() == struct.pack("<II", k, 49)


def test_state_is_shared_with_another_process(store, tmp_path):
    r1 = store.share_state("cfg", b"from the parent")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(PACKAGE_ROOT)!r})
        import erlmcp_flow as emf
        with emf.StateStore({store.name!r}, {str(tmp_path)!r}) as s:
            ref = s.lookup("cfg")
            assert ref == {r1}
            with s.read_shared_state(ref) as v:
                assert v.tobytes() == b"from the parent", v.tobytes()
            print(s.share_state("cfg", b"from the child"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    r2 = int(out.stdout.strip())
    assert store.lookup("cfg") == r2
    with store.read_shared_state(r2) as v:
        assert v.tobytes() == b"from the child"
    with pytest.raises(emf.NotFound):
        store.read_shared_state(r1)
