"""The task queue and the LRU cache: thin wrappers of ``emf_task_queue_*`` and ``emf_cache_*``
(``crates/capi/src/queue.rs``).

* :class:`TaskQueue` holds byte-string tasks at four priorities (``"critical"``, ``"high"``,
  ``"normal"``, ``"low"``): a primary queue of ``max_primary`` tasks plus an overflow of
  ``max_overflow`` more. :meth:`TaskQueue.dequeue` takes the oldest task of the highest
  priority queued. Every :meth:`TaskQueue.enqueue` answers with an :class:`Enqueued` that says
  what happened, and a task that is not in the queue (refused, or evicted to make room) is
  handed back: no task is ever lost silently.
* :class:`Cache` maps byte-string keys to byte-string values, least recently used entries
  evicted first (within a shard), with a time-to-live and an optional background sweeper.

Both are in-process objects (not shared memory) and thread-safe in the library: any number of
Python threads may call one at once, and the calls run concurrently in the library (ctypes
releases the GIL). ``close()`` refuses new calls, waits for those in progress, then frees the
handle. Handles are freed only by the process that made them (a ``fork`` child leaves
inherited ones alone).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from ctypes import byref, c_size_t, c_uint32
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_EMPTY,
    EMF_ERR_NOT_FOUND,
    EMF_OK,
    _InvalidValue,
    check,
    error_for,
    last_error_message,
)
from ._native import (
    emf_buf_t,
    emf_cache_p,
    emf_cache_stats_t,
    emf_task_queue_p,
    emf_task_queue_stats_t,
    lib,
)
# The priority conversion is codec's (one for envelopes and tasks); PRIORITY_NAMES and
# _PRIORITY_CODES stay importable from this module too.
from .codec import (  # noqa: F401
    _PRIORITY_CODES,
    PRIORITY_NAMES,
    BytesLike,
    _input,
    _priority_code,
    _priority_name,
    _take,
)
from .ring import _SIZE_MAX, _U32_MAX, _free_in_owner, _unsigned

_U64_MAX = 2**64 - 1

# Drop policies (include/erlmcp_flow.h).
EMF_DROP_NONE = 0
EMF_DROP_LOW_PRIORITY = 1

# Enqueue answers (include/erlmcp_flow.h).
EMF_ENQUEUE_OK = 0
EMF_ENQUEUE_BACKPRESSURE = 1
EMF_ENQUEUE_REJECTED = 2
EMF_ENQUEUE_EVICTED = 3

#: Names accepted for ``drop_policy=``: a full queue refuses arrivals, or lets an arrival of
#: higher priority evict the newest task of the lowest priority queued.
DROP_POLICIES = {"none": EMF_DROP_NONE, "low_priority": EMF_DROP_LOW_PRIORITY}

#: ``EMF_ENQUEUE_*`` code -> :attr:`Enqueued.status`.
ENQUEUE_STATUS_NAMES = {
    EMF_ENQUEUE_OK: "ok",
    EMF_ENQUEUE_BACKPRESSURE: "backpressure",
    EMF_ENQUEUE_REJECTED: "rejected",
    EMF_ENQUEUE_EVICTED: "evicted",
}

#: Initial size of each thread's :meth:`Cache.get` buffer (grown when a value needs more).
DEFAULT_GET_BUFFER_SIZE = 4096


class _SharedHandle:
    """A handle of a thread-safe library object, called by any number of threads at once.

    Each call registers itself (:meth:`_enter` / :meth:`_exit`); :meth:`close` refuses new
    calls, waits until none is in progress (the library's free must not race a call), then
    frees the handle. A finalizer frees it when the object is collected."""

    _free = None  # the emf_*_free function

    def __init__(self, handle):
        self._handle = handle
        self._raw = handle  # kept for close(): _handle is None once closing starts
        self._cond = threading.Condition(threading.Lock())
        self._calls = 0
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(
            self, _free_in_owner, type(self)._free, handle, self._owner
        )

    def _enter(self):
        with self._cond:
            handle = self._handle
            if handle is None:
                raise ValueError(f"operation on a closed erlmcp_flow.{type(self).__name__}")
            self._calls += 1
            return handle

    def _exit(self) -> None:
        with self._cond:
            self._calls -= 1
            if self._calls == 0:
                self._cond.notify_all()

    def _call(self, fn, *args) -> int:
        """``fn(handle, *args)``; returns the status (not checked)."""
        handle = self._enter()
        try:
            return fn(handle, *args)
        finally:
            self._exit()

    def close(self) -> None:
        """Waits for calls in progress on other threads, then frees the handle (and what it
        holds). Calling it again does nothing."""
        with self._cond:
            if self._handle is None:
                return
            self._handle = None  # new calls are refused from here on
            while self._calls:
                self._cond.wait()
        if self._finalizer.detach() is not None and os.getpid() == self._owner:
            check(type(self)._free(self._raw))

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self):
        if self._handle is None:
            raise ValueError(f"operation on a closed erlmcp_flow.{type(self).__name__}")
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- task queue ------------------------------------------------------------------------------


class Enqueued(NamedTuple):
    """The answer of :meth:`TaskQueue.enqueue`; a named tuple ``(status, returned,
    returned_priority)``.

    ``status`` is one of:

    * ``"ok"``: queued in the primary queue. ``returned`` and ``returned_priority`` are None.
    * ``"backpressure"``: queued, in the overflow: slow down. ``returned`` is None.
    * ``"rejected"``: NOT queued (both queues full, and nothing could be evicted for it).
      ``returned`` is the very object passed to ``enqueue``, ``returned_priority`` its
      priority: still yours, to retry or deal with.
    * ``"evicted"``: queued, by evicting the newest task of the lowest priority below it
      (``drop_policy="low_priority"``). ``returned`` is the evicted task's bytes and
      ``returned_priority`` its priority: it is no longer in the queue.

    So ``returned`` is always the task that is not in the queue, if any. (An ``EMF_ENQUEUE_*``
    code of a newer library that this package does not know stays an ``int``.)"""

    status: Union[str, int]
    returned: Optional[BytesLike] = None
    returned_priority: Union[str, int, None] = None

    @property
    def queued(self) -> bool:
        """True when the task given to ``enqueue`` is in the queue (every status but
        ``"rejected"``)."""
        return self.status != "rejected"


def _drop_policy_code(drop_policy: Union[str, int]) -> int:
    if isinstance(drop_policy, str):
        try:
            return DROP_POLICIES[drop_policy]
        except KeyError:
            raise _InvalidValue(
                f"unknown drop policy {drop_policy!r} "
                f"(expected one of {', '.join(map(repr, DROP_POLICIES))})"
            ) from None
    # An EMF_DROP_* code is checked by the library.
    return _unsigned(drop_policy, "drop_policy", _U32_MAX)


class TaskQueue(_SharedHandle):
    """A task queue of byte-string tasks (``emf_task_queue_new``).

    ``max_primary`` tasks fit in the primary queue (``0``: the library's default, 1000) and
    ``max_overflow`` more in the overflow (``0``: no overflow). ``drop_policy``:
    ``"none"`` (a full queue refuses arrivals) or ``"low_priority"`` (an arrival of higher
    priority evicts the newest task of the lowest priority queued), or an ``EMF_DROP_*`` code.

    Tasks are copied in and out as ``bytes``. Thread-safe: producers and consumers may be
    different threads, with no lock in Python around the library's calls. Closing the queue
    (or letting it be collected) frees the tasks still in it: :meth:`drain` them first to keep
    them. ``len(q)`` is the number of tasks queued."""

    _free = lib.emf_task_queue_free

    def __init__(
        self,
        max_primary: int = 1000,
        max_overflow: int = 10000,
        drop_policy: Union[str, int] = "none",
    ):
        policy = _drop_policy_code(drop_policy)
        primary = _unsigned(max_primary, "max_primary", _SIZE_MAX)
        # SIZE_MAX means "the library's default" to the C ABI, not "that many": refused here.
        overflow = _unsigned(max_overflow, "max_overflow", _SIZE_MAX - 1)
        handle = emf_task_queue_p()
        check(lib.emf_task_queue_new(primary, overflow, policy, byref(handle)))
        super().__init__(handle)
        #: The options as given.
        self.max_primary = max_primary
        self.max_overflow = max_overflow
        self.drop_policy = drop_policy

    def enqueue(self, task: BytesLike, priority: Union[str, int] = "normal") -> Enqueued:
        """Queues a copy of ``task`` at ``priority`` (``emf_task_queue_enqueue``) and says what
        happened: see :class:`Enqueued`. ``priority`` is ``"critical"``, ``"high"``,
        ``"normal"`` or ``"low"`` (an unknown name raises ``ValueError`` without calling the
        library), or an ``EMF_PRIORITY_*`` code (an unknown code: ``EMF_ERR_INVALID_ARGUMENT``
        from the library)."""
        code = _priority_code(priority)
        ptr, n = _input(task, "task")
        result = c_uint32(0)
        evicted = emf_buf_t()
        evicted_priority = c_uint32(0)
        status = self._call(
            lib.emf_task_queue_enqueue,
            ptr,
            n,
            code,
            byref(result),
            byref(evicted),
            byref(evicted_priority),
        )
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        answer = result.value
        if answer == EMF_ENQUEUE_EVICTED:
            return Enqueued("evicted", _take(evicted), _priority_name(evicted_priority.value))
        if evicted.data:  # only an eviction hands bytes back; never leak a buffer regardless
            _take(evicted)
        if answer == EMF_ENQUEUE_REJECTED:
            return Enqueued("rejected", task, _priority_name(code))
        return Enqueued(ENQUEUE_STATUS_NAMES.get(answer, answer))

    def dequeue(self) -> Optional[Tuple[bytes, Union[str, int]]]:
        """Takes the oldest task of the highest priority queued (``emf_task_queue_dequeue``):
        ``(task bytes, priority name)``, or None when the queue is empty."""
        out = emf_buf_t()
        priority = c_uint32(0)
        status = self._call(lib.emf_task_queue_dequeue, byref(out), byref(priority))
        if status == EMF_OK:
            return _take(out), _priority_name(priority.value)
        if status == EMF_ERR_EMPTY:
            return None
        raise error_for(status, last_error_message())

    def drain(self) -> List[Tuple[bytes, Union[str, int]]]:
        """Dequeues every task queued now, in dequeue order (e.g. before :meth:`close`, which
        frees the tasks left)."""
        tasks = []
        while True:
            item = self.dequeue()
            if item is None:
                return tasks
            tasks.append(item)

    def stats(self) -> Dict[str, int]:
        """The queue's counters (``emf_task_queue_stats``), a dict with every field of
        ``emf_task_queue_stats_t``: ``depth`` (tasks queued now), ``primary_depth``,
        ``overflow_depth``, ``depth_p99`` (99th percentile of the depth after each enqueue),
        ``max_depth``, ``enqueued`` (tasks accepted, those that evicted another included),
        ``dequeued``, ``spills`` (tasks that landed in the overflow), ``rejections``,
        ``evictions``."""
        out = emf_task_queue_stats_t()
        check(self._call(lib.emf_task_queue_stats, byref(out)))
        return {name: getattr(out, name) for name, _ in emf_task_queue_stats_t._fields_}

    def __len__(self) -> int:
        return self.stats()["depth"]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<erlmcp_flow.TaskQueue max_primary={self.max_primary} "
            f"max_overflow={self.max_overflow} drop_policy={self.drop_policy!r} {state}>"
        )


# --- cache -----------------------------------------------------------------------------------


class _GetBuffer:
    """One thread's reusable destination for ``emf_cache_get_into``."""

    __slots__ = ("memory", "address", "capacity", "view", "out_len", "out_len_ref")

    def __init__(self, capacity: int):
        self.memory = ctypes.create_string_buffer(capacity)
        self.address = ctypes.addressof(self.memory)
        self.capacity = capacity
        self.view = memoryview(self.memory).cast("B")
        self.out_len = c_size_t(0)
        self.out_len_ref = byref(self.out_len)


_MISSING = object()


class Cache(_SharedHandle):
    """An LRU cache from byte-string keys to byte-string values (``emf_cache_new``).

    ``capacity``: entries held at most (``0``: the library's default, 10000); the cache is
    split into ``shards`` (``0``: chosen by the library; rounded up to a power of two), each
    holding ``capacity / shards`` (rounded up) and evicting its own least recently used entry,
    so LRU order is exact only with ``shards=1`` (and, in the current library, fewer than
    256 entries per shard: larger shards leave an entry that is already among the most
    recent where it is). ``ttl_ms``: an entry is a miss that many
    milliseconds after it was put (``None``: never expires; ``0`` is refused as ambiguous).
    Expiry is checked when an entry is read, by :meth:`sweep`, and by the background sweeper
    of :meth:`set_sweeper`.

    Keys and values are copied in and out. :meth:`get` copies the value into a buffer each
    thread reuses (``get_buffer_size`` bytes at first, grown to fit a larger value), so a hit
    allocates nothing but the returned ``bytes``. Thread-safe, without a lock in Python
    around the library's calls. Also a mapping: ``c[k]`` (``KeyError`` on a miss),
    ``c[k] = v``, ``del c[k]``, ``k in c`` (a lookup: it counts a hit or a miss and refreshes
    the entry's recency), ``len(c)`` (entries held, expired ones not yet removed included)."""

    _free = lib.emf_cache_free

    def __init__(
        self,
        capacity: int = 10000,
        ttl_ms: Optional[int] = 5000,
        shards: int = 0,
        *,
        get_buffer_size: int = DEFAULT_GET_BUFFER_SIZE,
    ):
        capacity_c = _unsigned(capacity, "capacity", _SIZE_MAX)
        if ttl_ms is None:
            ttl_c = 0  # the C ABI's "forever"
        else:
            # 0 means "forever" and UINT64_MAX "the default 5000 ms" to the C ABI: neither is
            # a number of milliseconds, so both are refused here.
            ttl_c = _unsigned(ttl_ms, "ttl_ms", _U64_MAX)
            if not 1 <= ttl_c < _U64_MAX:
                raise _InvalidValue(
                    f"ttl_ms {ttl_ms} is out of range 1..{_U64_MAX - 1} (None: no expiry)"
                )
        shards_c = _unsigned(shards, "shards", _U32_MAX)
        self._initial_size = max(1, _unsigned(get_buffer_size, "get_buffer_size", _SIZE_MAX))
        handle = emf_cache_p()
        check(lib.emf_cache_new(capacity_c, ttl_c, shards_c, byref(handle)))
        super().__init__(handle)
        self._local = threading.local()
        #: The options as given.
        self.capacity = capacity
        self.ttl_ms = ttl_ms
        self.shards = shards

    def _buffer(self) -> _GetBuffer:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = _GetBuffer(self._initial_size)
        return buf

    def get(self, key: BytesLike, default=None):
        """The value of ``key`` as ``bytes``, or ``default`` (None) on a miss: absent or
        expired (``emf_cache_get_into``). A hit makes the entry the most recently used.

        When the value is larger than this thread's buffer, the buffer is grown to the size
        the library reported and the lookup made again (the library counts a hit for each
        of the two lookups)."""
        kptr, kn = _input(key, "key")
        buf = self._buffer()
        handle = self._enter()
        try:
            while True:
                status = lib.emf_cache_get_into(
                    handle, kptr, kn, buf.address, buf.capacity, buf.out_len_ref
                )
                if status == EMF_OK:
                    return buf.view[: buf.out_len.value].tobytes()
                if status == EMF_ERR_NOT_FOUND:
                    return default
                if status != EMF_ERR_BUFFER_TOO_SMALL:
                    break
                # The value needs out_len bytes; another thread may replace it with a larger
                # one before the next lookup, hence the loop.
                buf = self._local.buf = _GetBuffer(max(buf.out_len.value, 2 * buf.capacity))
        finally:
            self._exit()
        raise error_for(status, last_error_message())

    def put(self, key: BytesLike, value: BytesLike) -> None:
        """Stores a copy of ``value`` under a copy of ``key`` (``emf_cache_put``), replacing
        any value and restarting its TTL; evicts the shard's least recently used entry when
        the shard is full."""
        kptr, kn = _input(key, "key")
        vptr, vn = _input(value, "value")
        check(self._call(lib.emf_cache_put, kptr, kn, vptr, vn))

    def remove(self, key: BytesLike) -> bool:
        """Removes ``key`` (``emf_cache_remove``): True when it was there (expired or not),
        False when absent."""
        kptr, kn = _input(key, "key")
        status = self._call(lib.emf_cache_remove, kptr, kn)
        if status == EMF_OK:
            return True
        if status == EMF_ERR_NOT_FOUND:
            return False
        raise error_for(status, last_error_message())

    def sweep(self) -> int:
        """Removes every expired entry now (``emf_cache_sweep``) and returns how many."""
        removed = c_size_t(0)
        check(self._call(lib.emf_cache_sweep, byref(removed)))
        return removed.value

    def set_sweeper(self, every_ms: int) -> None:
        """Starts, or restarts with a new period, a library thread that sweeps expired entries
        every ``every_ms`` milliseconds (``emf_cache_set_sweeper``); ``0`` stops it. It stops
        when the cache is closed."""
        ms = _unsigned(every_ms, "every_ms", _U32_MAX)
        check(self._call(lib.emf_cache_set_sweeper, ms))

    def stats(self) -> Dict[str, int]:
        """The cache's counters (``emf_cache_stats``), a dict with every field of
        ``emf_cache_stats_t``: ``len`` (entries held, expired ones not yet removed included),
        ``capacity`` (the sum over shards), ``hits``, ``misses`` (absent or expired),
        ``evictions`` (to make room), ``expirations`` (removed because their TTL passed)."""
        out = emf_cache_stats_t()
        check(self._call(lib.emf_cache_stats, byref(out)))
        return {name: getattr(out, name) for name, _ in emf_cache_stats_t._fields_}

    # -- mapping protocol --

    def __getitem__(self, key: BytesLike) -> bytes:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: BytesLike, value: BytesLike) -> None:
        self.put(key, value)

    def __delitem__(self, key: BytesLike) -> None:
        if not self.remove(key):
            raise KeyError(key)

    def __contains__(self, key: BytesLike) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __len__(self) -> int:
        return self.stats()["len"]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<erlmcp_flow.Cache capacity={self.capacity} ttl_ms={self.ttl_ms} "
            f"shards={self.shards} {state}>"
        )


__all__ = [
    "EMF_DROP_NONE", "EMF_DROP_LOW_PRIORITY",
    "EMF_ENQUEUE_OK", "EMF_ENQUEUE_BACKPRESSURE", "EMF_ENQUEUE_REJECTED", "EMF_ENQUEUE_EVICTED",
    "DROP_POLICIES", "ENQUEUE_STATUS_NAMES", "DEFAULT_GET_BUFFER_SIZE",
    "Enqueued", "TaskQueue", "Cache",
]  # fmt: skip
