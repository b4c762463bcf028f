"""TaskQueue and Cache (emf_task_queue_*, emf_cache_*): priority order and FIFO within a
priority, the four enqueue answers with the task that is not queued handed back, counters,
argument checks in Python and in the library, closed handles, LRU eviction, values larger
than the get buffer, TTL expiry, the sweeper, binary keys and values, threads (no task lost or
duplicated; no value read through another thread's buffer), and the raw C ABI of both.

Waits poll a condition against a deadline; no sleep stands in for synchronisation."""

import ctypes
import doctest
import gc
import struct
import sys
import threading
import time
import weakref
from ctypes import byref, c_size_t, c_uint32

import pytest

import erlmcp_flow as emf
from erlmcp_flow._native import (
    emf_buf_t,
    emf_cache_p,
    emf_cache_stats_t,
    emf_task_queue_p,
    emf_task_queue_stats_t,
    lib,
)

PRIORITIES = ["critical", "high", "normal", "low"]
SIZE_MAX = 2**64 - 1 if ctypes.sizeof(ctypes.c_size_t) == 8 else 2**32 - 1
DEADLINE = 10.0  # seconds: the upper bound of every poll


def wait_until(condition, timeout=DEADLINE, what="condition"):
    """Polls ``condition()`` until it is true; fails the test past ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def coarse_resolution():
    """Resolution of CLOCK_MONOTONIC_COARSE (the cache's clock), in seconds."""
    try:
        return time.clock_getres(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))
    except OSError:
        return 0.01


def last_error():
    return emf._errors.last_error_message()


# --- TaskQueue: order ------------------------------------------------------------------------


def test_dequeue_by_priority_then_fifo():
    with emf.TaskQueue() as q:
        sent = []
        for i in range(40):
            priority = PRIORITIES[(i * 7) % 4]
            task = f"{priority}-{i}".encode()
            assert q.enqueue(task, priority) == ("ok", None, None)
            sent.append((task, priority))
        assert len(q) == 40
        want = [t for p in PRIORITIES for t in sent if t[1] == p]
        got = [q.dequeue() for _ in range(40)]
        assert got == want
        assert q.dequeue() is None
        assert len(q) == 0


def test_default_priority_is_normal_and_codes_are_accepted():
    with emf.TaskQueue() as q:
        q.enqueue(b"n")
        q.enqueue(b"c", emf.EMF_PRIORITY_CRITICAL)
        q.enqueue(b"l", emf.EMF_PRIORITY_LOW)
        q.enqueue(b"h", 1)
        assert q.drain() == [(b"c", "critical"), (b"h", "high"), (b"n", "normal"), (b"l", "low")]


def test_empty_dequeue_is_none_and_counts_nothing():
    with emf.TaskQueue() as q:
        assert q.dequeue() is None
        assert q.drain() == []
        assert q.stats()["dequeued"] == 0
        q.enqueue(b"x")
        assert q.dequeue() == (b"x", "normal")
        assert q.dequeue() is None
        assert q.stats()["dequeued"] == 1


def test_binary_empty_and_large_tasks_round_trip():
    tasks = [b"", b"\x00", b"a\x00b\x00", bytes(range(256)) * 3, b"\xff" * (1 << 20), b""]
    with emf.TaskQueue() as q:
        for t in tasks:
            assert q.enqueue(t).status == "ok"
        # bytearray and memoryview inputs are copied by the library too.
        source = bytearray(b"mutable")
        q.enqueue(source)
        source[:] = b"changed"
        q.enqueue(memoryview(b"xview")[1:])
        got = q.drain()
        assert [t for t, _ in got] == tasks + [b"mutable", b"view"]
        assert all(isinstance(t, bytes) for t, _ in got)


def test_task_must_be_bytes_like():
    with emf.TaskQueue() as q:
        with pytest.raises(TypeError):
            q.enqueue("text")
        with pytest.raises(TypeError):
            q.enqueue(42)
        assert q.stats()["enqueued"] == 0


# --- TaskQueue: primary, overflow, rejection, eviction ---------------------------------------


def test_ok_then_backpressure_then_rejected_hands_the_same_task_back():
    with emf.TaskQueue(max_primary=2, max_overflow=2) as q:
        assert q.enqueue(b"p1") == emf.Enqueued("ok")
        assert q.enqueue(b"p2", "low").status == "ok"
        r = q.enqueue(b"o1", "high")
        assert r == ("backpressure", None, None) and r.queued
        assert q.enqueue(b"o2").status == "backpressure"
        mine = bytearray(b"refused task")
        r = q.enqueue(mine, "critical")
        assert r.status == "rejected" and not r.queued
        assert r.returned is mine  # the caller's very object
        assert r.returned_priority == "critical"
        r = q.enqueue(b"")
        assert r == ("rejected", b"", "normal")
        s = q.stats()
        assert s["depth"] == 4 and s["primary_depth"] == 2 and s["overflow_depth"] == 2
        assert (s["enqueued"], s["spills"], s["rejections"], s["evictions"]) == (4, 2, 2, 0)
        assert s["max_depth"] == 4
        # Nothing refused was queued: exactly the four accepted come out, by priority.
        assert q.drain() == [(b"o1", "high"), (b"p1", "normal"), (b"o2", "normal"), (b"p2", "low")]
        # Room again: the primary first.
        assert q.enqueue(b"again").status == "ok"
        s = q.stats()
        assert (s["depth"], s["dequeued"], s["enqueued"]) == (1, 4, 5)


def test_drop_policy_none_rejects_even_a_higher_priority_arrival():
    with emf.TaskQueue(max_primary=1, max_overflow=0, drop_policy="none") as q:
        assert q.enqueue(b"low", "low").status == "ok"
        assert q.enqueue(b"crit", "critical") == ("rejected", b"crit", "critical")
        assert q.stats()["evictions"] == 0
        assert q.drain() == [(b"low", "low")]


def test_low_priority_policy_evicts_the_newest_lowest_and_hands_it_back():
    with emf.TaskQueue(max_primary=3, max_overflow=1, drop_policy="low_priority") as q:
        assert q.enqueue(b"n1", "normal").status == "ok"
        assert q.enqueue(b"l1", "low").status == "ok"
        assert q.enqueue(b"l2\x00", "low").status == "ok"
        assert q.enqueue(b"h1", "high").status == "backpressure"
        # Full (4). A critical arrival evicts the newest low task.
        r = q.enqueue(b"c1", "critical")
        assert r == ("evicted", b"l2\x00", "low") and r.queued
        assert isinstance(r.returned, bytes)
        # A low arrival has nothing below it to evict: refused.
        assert q.enqueue(b"l3", "low") == ("rejected", b"l3", "low")
        # A normal arrival evicts the last low task, then a high one evicts a normal one.
        assert q.enqueue(b"n2", "normal") == ("evicted", b"l1", "low")
        assert q.enqueue(b"h2", "high") == ("evicted", b"n2", "normal")
        # Same priority as the lowest queued (high, normal are left: n1 normal): normal
        # arrival cannot evict n1.
        assert q.enqueue(b"n3", "normal") == ("rejected", b"n3", "normal")
        s = q.stats()
        assert s["depth"] == 4
        assert (s["enqueued"], s["evictions"], s["rejections"], s["spills"]) == (7, 3, 2, 1)
        # Every task is accounted for: queued, dequeued, or handed back by an eviction.
        assert s["enqueued"] - s["dequeued"] - s["evictions"] == s["depth"]
        assert q.drain() == [(b"c1", "critical"), (b"h1", "high"), (b"h2", "high"), (b"n1", "normal")]


def test_eviction_with_an_empty_evicted_task():
    with emf.TaskQueue(max_primary=1, max_overflow=0, drop_policy="low_priority") as q:
        q.enqueue(b"", "low")
        assert q.enqueue(b"x", "high") == ("evicted", b"", "low")
        assert q.drain() == [(b"x", "high")]


def test_zero_max_primary_takes_the_library_default_and_zero_overflow_means_none():
    with emf.TaskQueue(max_primary=0, max_overflow=0) as q:
        answers = [q.enqueue(b"t").status for _ in range(1001)]
        assert answers == ["ok"] * 1000 + ["rejected"]
    with emf.TaskQueue(max_primary=1, max_overflow=0) as q:
        assert [q.enqueue(b"t").status for _ in range(2)] == ["ok", "rejected"]


def test_stats_has_every_field_and_depth_figures():
    with emf.TaskQueue(max_primary=10, max_overflow=10) as q:
        s = q.stats()
        assert list(s) == [name for name, _ in emf_task_queue_stats_t._fields_]
        assert all(v == 0 for v in s.values())
        for i in range(15):
            q.enqueue(b"%d" % i)
        for _ in range(5):
            q.dequeue()
        s = q.stats()
        assert s == {
            "depth": 10,
            "primary_depth": 10,
            "overflow_depth": 0,
            "depth_p99": 15,  # depths 1..15 after each enqueue: the 99th percentile is 15
            "max_depth": 15,
            "enqueued": 15,
            "dequeued": 5,
            "spills": 5,
            "rejections": 0,
            "evictions": 0,
        }
        assert len(q) == 10


# --- TaskQueue: arguments and lifetime ---------------------------------------------------------


def test_unknown_priority_names_are_value_errors_raised_before_the_library():
    with emf.TaskQueue() as q:
        # Leave a known error text on this thread: a name refused in Python must not change it.
        assert lib.emf_task_queue_dequeue(None, byref(emf_buf_t()), None) != emf.EMF_OK
        before = last_error()
        for bad in ("urgent", "Critical", "", "normal "):
            with pytest.raises(ValueError) as err:
                q.enqueue(b"x", bad)
            assert isinstance(err.value, emf.Error)
            assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
            assert repr(bad) in err.value.message
        assert last_error() == before
        # Codes go to the library, which refuses unknown ones.
        with pytest.raises(emf.Error) as err:
            q.enqueue(b"x", 4)
        assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "4" in err.value.message
        with pytest.raises(emf.Error):
            q.enqueue(b"x", -1)
        with pytest.raises(TypeError):
            q.enqueue(b"x", None)
        with pytest.raises(TypeError):
            q.enqueue(b"x", True)
        assert q.stats()["enqueued"] == 0


def test_envelopes_and_tasks_share_one_priority():
    # One conversion for both (codec's); the queue module still exports the names.
    assert emf.queue._priority_code is emf.codec._priority_code
    assert emf.queue.PRIORITY_NAMES is emf.codec.PRIORITY_NAMES is emf.PRIORITY_NAMES
    assert sorted(emf.PRIORITY_NAMES.values()) == sorted(PRIORITIES)
    text = '{"jsonrpc":"2.0","method":"n"}'
    with emf.TaskQueue() as q:
        for code, name in emf.PRIORITY_NAMES.items():
            for given in (name, code):
                q.enqueue(b"t", given)
                assert q.dequeue() == (b"t", name)
                with emf.Message(emf.encode(text, priority=given)) as m:
                    assert m.envelope(0).priority == name
        # An unknown name is refused the same way by both: a ValueError that is an Error.
        for call in (lambda: q.enqueue(b"t", "urgent"), lambda: emf.encode(text, priority="urgent")):
            with pytest.raises(ValueError) as err:
                call()
            assert isinstance(err.value, emf.Error)
            assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
            assert "'urgent'" in err.value.message


def test_bad_drop_policies_and_sizes():
    for bad in ("drop", "LOW_PRIORITY", ""):
        with pytest.raises(ValueError) as err:
            emf.TaskQueue(drop_policy=bad)
        assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as err:
        emf.TaskQueue(drop_policy=2)  # goes to the library
    assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "drop policy" in err.value.message
    with emf.TaskQueue(drop_policy=emf.EMF_DROP_LOW_PRIORITY) as q:
        assert "EMF" not in repr(q) and "open" in repr(q)
    for kwargs in ({"max_primary": -1}, {"max_overflow": -1}, {"max_overflow": SIZE_MAX}):
        with pytest.raises(emf.Error) as err:
            emf.TaskQueue(**kwargs)
        assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(TypeError):
        emf.TaskQueue(max_primary=1.5)


def test_queue_use_after_close_raises_and_close_is_idempotent():
    q = emf.TaskQueue()
    q.enqueue(b"left behind")  # freed with the queue
    with q:
        pass
    assert q.closed and "closed" in repr(q)
    q.close()
    for call in (
        lambda: q.enqueue(b"x"),
        q.dequeue,
        q.drain,
        q.stats,
        lambda: len(q),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError):
        with q:
            pass


def test_queue_is_freed_by_the_garbage_collector():
    q = emf.TaskQueue()
    q.enqueue(b"x")
    finalizer = q._finalizer
    ref = weakref.ref(q)
    del q
    gc.collect()
    assert ref() is None and not finalizer.alive


def test_dequeued_evicted_and_read_bytes_are_freed():
    """Thousands of dequeues, evictions and cache reads of 50 KB leave the resident size flat
    (each emf_buf_t the library hands over is released)."""

    def rss_kb():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        pytest.skip("no /proc/self/status")

    task = b"t" * 50_000
    with emf.TaskQueue(max_primary=1, max_overflow=0, drop_policy="low_priority") as q, \
            emf.Cache(capacity=4, ttl_ms=None) as c:  # fmt: skip
        c.put(b"k", task)

        def work():
            for _ in range(1000):
                assert q.enqueue(task, "low").status == "ok"
                assert q.enqueue(task, "high").status == "evicted"
                assert q.dequeue() == (task, "high")
                assert c.get(b"k") == task

        work()
        before = rss_kb()
        work()
        work()
        # 2000 rounds x 150 KB handed over per round: a leak would add ~300 MB.
        assert rss_kb() - before < 20_000


# --- TaskQueue: threads ------------------------------------------------------------------------


def test_two_producers_two_consumers_lose_and_duplicate_nothing():
    """Producers retry what is rejected (the task handed back); consumers take until both
    producers are done and the queue is empty. Every task arrives exactly once, and each
    consumer sees one producer's tasks of one priority in the order they were sent."""
    per_producer = 5000
    rec = struct.Struct("<BII")  # producer, priority code, sequence number
    q = emf.TaskQueue(max_primary=64, max_overflow=64)
    done = threading.Event()
    producers_left = [2]
    lock = threading.Lock()
    got = [[], []]
    answers = [dict.fromkeys(("ok", "backpressure", "rejected", "evicted"), 0) for _ in range(2)]
    errors = []

    def produce(pid):
        try:
            for seq in range(per_producer):
                priority = (seq * 5 + pid) % 4
                task = rec.pack(pid, priority, seq)
                while True:
                    r = q.enqueue(task, PRIORITIES[priority])
                    answers[pid][r.status] += 1
                    if r.queued:
                        break
                    assert r.returned is task and r.returned_priority == PRIORITIES[priority]
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            with lock:
                producers_left[0] -= 1
                if producers_left[0] == 0:
                    done.set()

    def consume(cid):
        try:
            mine = got[cid]
            while True:
                item = q.dequeue()
                if item is not None:
                    mine.append(item)
                elif done.is_set():
                    item = q.dequeue()  # the last enqueue happened before done was set
                    if item is None:
                        return
                    mine.append(item)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "threads did not finish"
    assert not errors, errors
    try:
        everything = got[0] + got[1]
        assert len(everything) == 2 * per_producer
        decoded = [rec.unpack(task) + (priority,) for task, priority in everything]
        keys = sorted((pid, seq) for pid, _, seq, _ in decoded)
        assert keys == [(pid, seq) for pid in range(2) for seq in range(per_producer)]
        for pid, code, seq, name in decoded:
            assert name == PRIORITIES[code]
        for mine in got:
            last = {}
            for task, _ in mine:
                pid, code, seq = rec.unpack(task)
                assert seq > last.get((pid, code), -1), "out of order within a priority"
                last[(pid, code)] = seq
        s = q.stats()
        assert s["depth"] == 0
        assert s["enqueued"] == s["dequeued"] == 2 * per_producer
        assert s["rejections"] == sum(a["rejected"] for a in answers)
        assert s["spills"] == sum(a["backpressure"] for a in answers)
        assert s["evictions"] == 0
    finally:
        q.close()


def test_close_waits_for_calls_in_progress_and_later_calls_raise():
    """Four threads call a queue and a cache in a loop while the main thread closes both:
    every thread ends with the closed-handle ValueError, never with a library error (a call
    that reached the library after the free would get EMF_ERR_INVALID_ARGUMENT for the stale
    handle) or a crash. Repeated, as the race is timing-dependent."""
    for _ in range(20):
        q = emf.TaskQueue(max_primary=1 << 20)
        c = emf.Cache(capacity=1024, ttl_ms=None)
        calls = [0]
        outcomes = []

        def hammer(i):
            try:
                while True:
                    q.enqueue(b"t%d" % i)
                    q.dequeue()
                    c.put(b"k%d" % i, b"v" * 5000)  # larger than the get buffer
                    assert c.get(b"k%d" % i) == b"v" * 5000
                    q.stats()
                    calls[0] += 1
            except ValueError as e:
                outcomes.append(("closed", str(e)))
            except BaseException as e:
                outcomes.append(("error", repr(e)))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: calls[0] >= 40, what="the threads to get going")
        q.close()
        c.close()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads)
        assert [o for o in outcomes if o[0] != "closed"] == []
        assert len(outcomes) == 4 and all("closed" in text for _, text in outcomes)


# --- Cache: basics -----------------------------------------------------------------------------


def test_cache_hit_miss_and_counters():
    with emf.Cache(capacity=100, ttl_ms=None) as c:
        assert c.get(b"absent") is None
        assert c.get(b"absent", b"dflt") == b"dflt"
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"
        c.put(b"k", b"v2")  # replaces
        assert c.get(b"k") == b"v2"
        s = c.stats()
        assert list(s) == [name for name, _ in emf_cache_stats_t._fields_]
        assert s == {"len": 1, "capacity": 100, "hits": 2, "misses": 2, "evictions": 0,
                     "expirations": 0}  # fmt: skip
        assert len(c) == 1


def test_cache_lru_eviction_with_one_shard():
    with emf.Cache(capacity=3, ttl_ms=None, shards=1) as c:
        c[b"a"] = b"1"
        c[b"b"] = b"2"
        c[b"c"] = b"3"
        assert c[b"a"] == b"1"  # a is now the most recently used; b the least
        c[b"d"] = b"4"  # evicts b
        assert c.get(b"b") is None
        assert [c.get(k) for k in (b"a", b"c", b"d")] == [b"1", b"3", b"4"]
        s = c.stats()
        assert (s["len"], s["capacity"], s["evictions"]) == (3, 3, 1)
        # Replacing an existing key evicts nothing but refreshes it: then a put evicts the
        # least recently used, which is now c (a, c, d were read in that order; a replaced).
        c[b"a"] = b"1'"
        c[b"e"] = b"5"
        assert b"c" not in c
        assert [c.get(k) for k in (b"a", b"d", b"e")] == [b"1'", b"4", b"5"]
        assert c.stats()["evictions"] == 2


def test_cache_capacity_zero_takes_the_library_default():
    with emf.Cache(capacity=0, shards=1) as c:
        assert c.stats()["capacity"] == 10000


def test_values_larger_than_the_get_buffer():
    big = bytes(range(256)) * 4096  # 1 MiB
    with emf.Cache(capacity=10, ttl_ms=None, shards=1, get_buffer_size=16) as c:
        c.put(b"small", b"0123456789abcdef")  # exactly the buffer
        c.put(b"big", big)
        c.put(b"bigger", big + b"!")
        assert c.get(b"small") == b"0123456789abcdef"
        hits = c.stats()["hits"]
        assert c.get(b"big") == big
        # The library counts a hit for the lookup that found the buffer too small, and one
        # for the lookup into the grown buffer (documented in emf_cache_get_into).
        assert c.stats()["hits"] == hits + 2
        assert c.get(b"bigger") == big + b"!"
        assert c.get(b"small") == b"0123456789abcdef"  # the grown buffer serves small values
        assert c.get(b"big") == big
        assert c.stats()["hits"] == hits + 6


def test_binary_keys_and_values_with_nul_bytes_and_empty_ones():
    with emf.Cache(capacity=100, ttl_ms=None) as c:
        keys = [b"a", b"a\x00", b"a\x00b", b"a\x00c", b"\x00", b"\x00\x00", b""]
        for i, k in enumerate(keys):
            c.put(k, b"\x00value\x00" + bytes([i]))
        for i, k in enumerate(keys):
            assert c.get(k) == b"\x00value\x00" + bytes([i])
        assert len(c) == len(keys)
        c.put(b"empty", b"")
        assert c.get(b"empty") == b"" and b"empty" in c
        assert c[b"empty"] == b""
        c.put(b"", b"")
        assert c.get(b"") == b""
        # bytearray and memoryview keys name the same entries as bytes.
        assert c.get(bytearray(b"a\x00b")) == b"\x00value\x00\x02"
        assert c.get(memoryview(b"xa\x00c")[1:]) == b"\x00value\x00\x03"
        with pytest.raises(TypeError):
            c.get("a")
        with pytest.raises(TypeError):
            c.put(b"k", "v")


def test_remove_and_mapping_protocol():
    with emf.Cache(capacity=10, ttl_ms=None) as c:
        c[b"k"] = b"v"
        assert b"k" in c
        assert c.remove(b"k") is True
        assert c.remove(b"k") is False
        assert c.get(b"k") is None and b"k" not in c
        with pytest.raises(KeyError):
            c[b"k"]
        c[b"k"] = b"v"
        del c[b"k"]
        with pytest.raises(KeyError):
            del c[b"k"]
        assert len(c) == 0


# --- Cache: TTL and sweeping ---------------------------------------------------------------------


def test_entries_expire_after_the_ttl():
    ttl_ms = 40
    with emf.Cache(capacity=10, ttl_ms=60_000) as long_lived, emf.Cache(
        capacity=10, ttl_ms=ttl_ms
    ) as c:
        long_lived.put(b"k", b"v")
        t0 = time.monotonic()
        c.put(b"k", b"v")
        wait_until(lambda: c.get(b"k") is None, what="the entry to expire")
        elapsed = time.monotonic() - t0
        # Not before its TTL (the library's clock is CLOCK_MONOTONIC_COARSE: within one tick).
        assert elapsed >= ttl_ms / 1000 - coarse_resolution() - 0.001, elapsed
        s = c.stats()
        assert (s["len"], s["expirations"]) == (0, 1) and s["misses"] >= 1
        assert long_lived.get(b"k") == b"v"
        assert long_lived.sweep() == 0


def test_default_ttl_and_no_expiry():
    with emf.Cache(ttl_ms=None) as c, emf.Cache() as d:
        assert d.ttl_ms == 5000
        c.put(b"k", b"v")
        d.put(b"k", b"v")
        assert c.get(b"k") == b"v" and d.get(b"k") == b"v"
        assert c.sweep() == 0 and d.sweep() == 0


def test_bad_cache_arguments():
    for ttl in (0, -1, 2**64 - 1, 2**64):
        with pytest.raises(emf.Error) as err:
            emf.Cache(ttl_ms=ttl)
        assert err.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(ValueError):
        emf.Cache(ttl_ms=0)  # 0 would mean "forever" to the C ABI: use None
    with pytest.raises(TypeError):
        emf.Cache(ttl_ms=1.5)
    for kwargs in ({"capacity": -1}, {"shards": 2**32}, {"get_buffer_size": -1}):
        with pytest.raises(emf.Error):
            emf.Cache(**kwargs)
    with emf.Cache() as c:
        for every in (-1, 2**32):
            with pytest.raises(emf.Error):
                c.set_sweeper(every)


def test_sweep_removes_expired_entries():
    n = 20
    with emf.Cache(capacity=100, ttl_ms=20) as c:
        for i in range(n):
            c.put(b"%d" % i, b"v")
        removed = [0]

        def swept_all():
            removed[0] += c.sweep()
            return removed[0] == n

        wait_until(swept_all, what="sweep() to remove every entry")
        s = c.stats()
        assert (s["len"], s["expirations"], s["hits"], s["misses"]) == (0, n, 0, 0)
        assert c.sweep() == 0


def test_background_sweeper_removes_entries_and_stops():
    n = 20
    with emf.Cache(capacity=100, ttl_ms=20) as c:
        c.set_sweeper(5)
        for i in range(n):
            c.put(b"%d" % i, b"v")
        # No get or sweep from here: only the sweeper thread can remove them.
        wait_until(lambda: c.stats()["len"] == 0, what="the sweeper to remove every entry")
        assert c.stats()["expirations"] == n
        c.set_sweeper(1)  # restart with another period
        c.set_sweeper(0)  # stopped
        for i in range(n):
            c.put(b"%d" % i, b"v")
        # Let the TTL pass (the library's coarse clock included) with no sweeper running.
        deadline = time.monotonic() + 0.020 + 0.050
        wait_until(lambda: time.monotonic() > deadline, what="the TTL to pass")
        assert c.stats()["len"] == n  # expired, but nothing removed them
        assert c.sweep() == n
        c.set_sweeper(1000)  # left running: close() stops it


# --- Cache: lifetime and threads -----------------------------------------------------------------


def test_cache_use_after_close_raises():
    c = emf.Cache()
    c.set_sweeper(1)
    c.put(b"k", b"v")
    c.close()
    c.close()
    assert c.closed and "closed" in repr(c)
    for call in (
        lambda: c.get(b"k"),
        lambda: c.put(b"k", b"v"),
        lambda: c.remove(b"k"),
        c.sweep,
        lambda: c.set_sweeper(0),
        c.stats,
        lambda: c[b"k"],
        lambda: c.__setitem__(b"k", b"v"),
        lambda: b"k" in c,
        lambda: len(c),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_cache_with_a_sweeper_is_freed_by_the_garbage_collector():
    c = emf.Cache(ttl_ms=10)
    c.set_sweeper(1)
    finalizer = c._finalizer
    del c
    gc.collect()
    assert not finalizer.alive


def test_threads_read_their_own_values_through_their_own_buffers():
    """Each thread puts and reads values of its own (sizes around and above the initial
    get buffer, so buffers grow concurrently): a value read through another thread's buffer
    would come back wrong."""
    rounds = 2000
    errors = []
    with emf.Cache(capacity=100_000, ttl_ms=None, get_buffer_size=64) as c:

        def work(tid):
            try:
                for i in range(rounds):
                    key = b"%d:%d" % (tid, i % 50)
                    value = bytes([tid]) * (1 + (i * 37 + tid * 101) % 3000) + key
                    c.put(key, value)
                    got = c.get(key)
                    assert got == value, (tid, i)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        s = c.stats()
        assert s["len"] == 4 * 50 and s["misses"] == 0


# --- the raw C ABI ---------------------------------------------------------------------------------


def test_raw_queue_abi_null_arguments_and_stale_handles():
    q = emf_task_queue_p()
    assert lib.emf_task_queue_new(0, SIZE_MAX, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_task_queue_new(0, SIZE_MAX, 0, byref(q)) == emf.EMF_OK
    try:
        result, evicted, prio = c_uint32(99), emf_buf_t(), c_uint32(99)
        assert lib.emf_task_queue_enqueue(q, b"x", 1, 2, None, byref(evicted), None) == 1
        assert lib.emf_task_queue_enqueue(q, b"x", 1, 2, byref(result), None, None) == 1
        assert lib.emf_task_queue_enqueue(q, None, 3, 2, byref(result), byref(evicted), None) == 1
        # A bad priority writes no out-parameter.
        status = lib.emf_task_queue_enqueue(q, b"x", 1, 4, byref(result), byref(evicted), byref(prio))
        assert status == emf.EMF_ERR_INVALID_ARGUMENT
        assert (result.value, bool(evicted.data), prio.value) == (99, False, 99)
        # NULL data with length 0 is an empty task; NULL out_evicted_priority is allowed.
        status = lib.emf_task_queue_enqueue(q, None, 0, 3, byref(result), byref(evicted), None)
        assert status == emf.EMF_OK and result.value == emf.EMF_ENQUEUE_OK
        assert (evicted.len, bool(evicted.data)) == (0, False)
        assert lib.emf_task_queue_dequeue(q, None, None) == emf.EMF_ERR_NULL_ARGUMENT
        out = emf_buf_t()
        assert lib.emf_task_queue_dequeue(q, byref(out), None) == emf.EMF_OK
        assert (out.len, lib.emf_buf_free(byref(out))) == (0, emf.EMF_OK)
        assert lib.emf_task_queue_dequeue(q, byref(out), None) == emf.EMF_ERR_EMPTY
        assert "empty" in last_error()
        assert lib.emf_task_queue_stats(q, None) == emf.EMF_ERR_NULL_ARGUMENT
        stats = emf_task_queue_stats_t()
        assert lib.emf_task_queue_stats(q, byref(stats)) == emf.EMF_OK
        assert (stats.enqueued, stats.dequeued) == (1, 1)
        huge = 2**31 + 7
        status = lib.emf_task_queue_enqueue(q, b"x", huge, 2, byref(result), byref(evicted), None)
        assert status == emf.EMF_ERR_TOO_LARGE
    finally:
        assert lib.emf_task_queue_free(q) == emf.EMF_OK
    # A freed handle is refused, never used.
    assert lib.emf_task_queue_free(q) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_task_queue_dequeue(q, byref(emf_buf_t()), None) != emf.EMF_OK
    assert lib.emf_task_queue_stats(q, byref(emf_task_queue_stats_t())) != emf.EMF_OK
    assert lib.emf_task_queue_free(None) == emf.EMF_OK
    # A cache handle is not a queue handle.
    c = emf_cache_p()
    assert lib.emf_cache_new(0, 0, 0, byref(c)) == emf.EMF_OK
    try:
        wrong = ctypes.cast(c, emf_task_queue_p)
        assert lib.emf_task_queue_stats(wrong, byref(emf_task_queue_stats_t())) != emf.EMF_OK
    finally:
        assert lib.emf_cache_free(c) == emf.EMF_OK


def test_raw_cache_abi_get_into_and_null_arguments():
    c = emf_cache_p()
    assert lib.emf_cache_new(0, 0, 0, None) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_cache_new(4, 0, 1, byref(c)) == emf.EMF_OK
    try:
        assert lib.emf_cache_put(c, None, 1, b"v", 1) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_cache_put(c, b"k", 1, None, 1) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_cache_put(c, b"k", 1, b"value", 5) == emf.EMF_OK
        assert lib.emf_cache_put(c, b"e", 1, None, 0) == emf.EMF_OK  # empty value
        n = c_size_t(12345)
        buf = ctypes.create_string_buffer(8)
        assert lib.emf_cache_get_into(c, b"k", 1, buf, 8, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_cache_get_into(c, b"k", 1, None, 8, byref(n)) == emf.EMF_ERR_NULL_ARGUMENT
        # A miss writes nothing.
        assert lib.emf_cache_get_into(c, b"zz", 2, buf, 8, byref(n)) == emf.EMF_ERR_NOT_FOUND
        assert n.value == 12345
        # Too small: the length needed is reported, the buffer untouched.
        buf.raw = b"\xaa" * 8
        assert lib.emf_cache_get_into(c, b"k", 1, buf, 4, byref(n)) == emf.EMF_ERR_BUFFER_TOO_SMALL
        assert n.value == 5 and buf.raw == b"\xaa" * 8
        assert lib.emf_cache_get_into(c, b"k", 1, None, 0, byref(n)) == emf.EMF_ERR_BUFFER_TOO_SMALL
        assert lib.emf_cache_get_into(c, b"k", 1, buf, 5, byref(n)) == emf.EMF_OK
        assert (n.value, buf.raw[:6]) == (5, b"value\xaa")
        assert lib.emf_cache_get_into(c, b"e", 1, None, 0, byref(n)) == emf.EMF_OK and n.value == 0
        out = emf_buf_t()
        assert lib.emf_cache_get(c, b"k", 1, None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_cache_get(c, b"k", 1, byref(out)) == emf.EMF_OK
        assert ctypes.string_at(out.data, out.len) == b"value"
        assert lib.emf_buf_free(byref(out)) == emf.EMF_OK
        assert lib.emf_cache_get(c, b"zz", 2, byref(out)) == emf.EMF_ERR_NOT_FOUND
        assert lib.emf_cache_remove(c, b"zz", 2) == emf.EMF_ERR_NOT_FOUND
        assert lib.emf_cache_remove(c, b"k", 1) == emf.EMF_OK
        assert lib.emf_cache_sweep(c, None) == emf.EMF_OK
        assert lib.emf_cache_stats(c, None) == emf.EMF_ERR_NULL_ARGUMENT
        stats = emf_cache_stats_t()
        assert lib.emf_cache_stats(c, byref(stats)) == emf.EMF_OK
        # Hits: get_into "k" three times (both "too small" answers count), "e" once, and
        # emf_cache_get "k"; misses: "zz" twice. Calls refused for a NULL argument count none.
        assert (stats.len, stats.capacity, stats.hits, stats.misses) == (1, 4, 5, 2)
    finally:
        assert lib.emf_cache_free(c) == emf.EMF_OK
    assert lib.emf_cache_free(c) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_cache_put(c, b"k", 1, b"v", 1) != emf.EMF_OK
    assert lib.emf_cache_set_sweeper(c, 1) != emf.EMF_OK
    assert lib.emf_cache_free(None) == emf.EMF_OK


def test_package_doctests():
    """The examples in the package docstring (queue and cache included) run as shown."""
    result = doctest.testmod(sys.modules["erlmcp_flow"], verbose=False)
    assert result.attempted >= 4 and result.failed == 0
