"""Routing to agents, batching, and shared state: thin wrappers of ``emf_router_*``,
``emf_batch_*`` and ``emf_state_*`` (``crates/capi/src/flow.rs``).

* :class:`Router` sends messages to agents' inboxes by name. An inbox is a multi-producer
  ring ``inbox.<agent>`` in the router's directory, made when the agent registers;
  :meth:`Router.register_agent` returns its :class:`~erlmcp_flow.Consumer`.
* :class:`BatchProcessor` collects messages for one ring and sends them in batches: when
  ``batch_size`` are pending, when the oldest has waited ``timeout_ms`` (on :meth:`tick`),
  on :meth:`flush`, and at once when the ring's consumer is idle and waiting.
* :class:`StateStore` shares immutable values between processes by reference:
  :meth:`StateStore.share_state` returns a reference (an ``int``) and
  :meth:`StateStore.read_shared_state` maps the value for reading, in place
  (:class:`SharedValue`).

Thread-safety (the library's): a :class:`Router` and a :class:`BatchProcessor` are used by
one thread at a time (a second thread calling in gets :class:`~erlmcp_flow.Busy`). A
:class:`StateStore` and a :class:`SharedValue` may be used from any number of threads.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
import threading
import warnings
import weakref
from ctypes import POINTER, byref, c_int64, c_size_t, c_uint8, c_uint32, c_uint64
from typing import Callable, Iterable, Optional, Tuple, Union

from ._errors import EMF_ERR_FULL, EMF_OK, check, error_for, last_error_message
from ._native import (
    emf_batch_p,
    emf_consumer_p,
    emf_router_p,
    emf_slice_t,
    emf_state_store_p,
    emf_state_value_p,
    lib,
)
from .codec import BytesLike, _input
from .ring import (
    DEFAULT_BUFFER_SIZE,
    EMF_FLUSH_DEMAND,
    EMF_FLUSH_IDLE,
    EMF_FLUSH_NONE,
    EMF_FLUSH_SIZE,
    EMF_FLUSH_TIMEOUT,
    _SIZE_MAX,
    _U32_MAX,
    Consumer,
    Ring,
    _c_string,
    _frame_bytes,
    _Handle,
    _ring_handle_owner,
    _unsigned,
)

_U64_MAX = 2**64 - 1


class FlushReason(enum.IntEnum):
    """Why a :class:`BatchProcessor` sent a batch (an ``EMF_FLUSH_*`` code; compares equal to
    it)."""

    #: ``batch_size`` messages were pending.
    SIZE = EMF_FLUSH_SIZE
    #: The oldest pending message had waited ``timeout_ms`` (:meth:`BatchProcessor.tick`).
    TIMEOUT = EMF_FLUSH_TIMEOUT
    #: The ring's consumer was idle and waiting: sent at once.
    IDLE = EMF_FLUSH_IDLE
    #: Asked for.
    DEMAND = EMF_FLUSH_DEMAND


def _reason(code: int) -> Optional[FlushReason]:
    if code == EMF_FLUSH_NONE:
        return None
    try:
        return FlushReason(code)
    except ValueError:  # a code of a newer library: keep the number
        return code


def _slices(frames: list):
    """``(keep-alive, emf_slice_t array or None, n)`` describing ``frames`` (bytes-like) in
    one contiguous copy. The keep-alive must outlive the call that reads the slices."""
    n = len(frames)
    if n == 0:
        return None, None, 0
    try:
        block = bytearray().join(frames)
        lengths = [memoryview(f).nbytes for f in frames]
    except TypeError:
        frames = [_frame_bytes(f, i) for i, f in enumerate(frames)]
        block = bytearray().join(frames)
        lengths = [len(f) for f in frames]
    table = (emf_slice_t * n)()
    base = ctypes.addressof((ctypes.c_char * len(block)).from_buffer(block)) if block else 0
    offset = 0
    for i, length in enumerate(lengths):
        table[i].data = base + offset if length else None
        table[i].len = length
        offset += length
    return block, table, n


# --- Router ----------------------------------------------------------------------------------


class Router(_Handle):
    """Sends messages to agents' inboxes by name (``emf_router_new``).

    ``dir``: the directory of the inbox files (``/dev/shm`` when None); ``inbox_capacity``:
    bytes of each inbox ring made by :meth:`register_agent`, a power of two from 4096 to
    1 GiB (0: the library's 1 MiB). The router keeps one producer per agent it has sent to,
    so any number of routers (in any processes) may send to one inbox.

    One thread at a time (another thread calling in gets :class:`~erlmcp_flow.Busy`)."""

    _free = lib.emf_router_free

    def __init__(self, dir: Union[str, os.PathLike, None] = None, inbox_capacity: int = 0):
        dir_c = None if dir is None else _c_string(dir, "dir", path=True)
        capacity = _unsigned(inbox_capacity, "inbox_capacity", _SIZE_MAX)
        handle = emf_router_p()
        check(lib.emf_router_new(dir_c, capacity, byref(handle)))
        super().__init__(handle)
        #: The directory of the inboxes (None: ``/dev/shm``).
        self.dir = dir
        self._accepted = c_size_t(0)

    def register_agent(self, agent: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Consumer:
        """Creates ``agent``'s inbox, or reopens it after a restart (its unread messages are
        kept), and returns its consumer (``emf_router_register_agent``): the inbox's primary
        consumer, :class:`~erlmcp_flow.Busy` while another live one holds it. Agent names
        follow ring names (1-194 of ``[A-Za-z0-9._-]``, not starting with ``.``; else
        ``EMF_ERR_INVALID_ARGUMENT``).
        ``buffer_size`` as for :class:`~erlmcp_flow.Consumer`."""
        agent_c = _c_string(agent, "agent")
        buffer_size = _unsigned(buffer_size, "buffer_size", _SIZE_MAX)
        out = emf_consumer_p()
        handle = self._enter()
        try:
            status = lib.emf_router_register_agent(handle, agent_c, byref(out))
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return Consumer._adopt(out, buffer_size=buffer_size, agent=agent)

    def unregister_agent(self, agent: str) -> None:
        """Removes ``agent``'s inbox (``emf_router_unregister_agent``); processes that hold it
        keep their mapping. :class:`~erlmcp_flow.NotFound` when it has none."""
        agent_c = _c_string(agent, "agent")
        handle = self._enter()
        try:
            status = lib.emf_router_unregister_agent(handle, agent_c)
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())

    def send_direct(self, agent: str, data: BytesLike) -> None:
        """Sends one message to ``agent`` (``emf_router_send_direct``).
        :class:`~erlmcp_flow.Full` when its inbox is full (nothing sent; the message is still
        yours), :class:`~erlmcp_flow.NotFound` when the agent has no inbox,
        ``EMF_ERR_TOO_LARGE`` past the inbox's largest frame (a quarter of its capacity)."""
        agent_c = _c_string(agent, "agent")
        ptr, n = _input(data)
        handle = self._enter()
        try:
            status = lib.emf_router_send_direct(handle, agent_c, ptr, n)
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())

    def send_batch(self, agent: str, messages: Iterable[BytesLike]) -> Tuple[int, list]:
        """Sends ``messages`` to ``agent`` in order with one claim (``emf_router_send_batch``)
        and returns ``(accepted, not_accepted)``: the first ``accepted`` messages are in the
        inbox; ``not_accepted`` is the list of the other messages (the very objects passed
        in, in order), which were NOT sent (back-pressure) and are still yours to send again.
        ``(0, all of them)`` when the inbox had room for none.

        Errors send nothing: :class:`~erlmcp_flow.NotFound` (no inbox), ``EMF_ERR_TOO_LARGE``
        (a message past the inbox's largest frame)."""
        agent_c = _c_string(agent, "agent")
        if not isinstance(messages, list):
            messages = list(messages)
        keep, table, n = _slices(messages)
        handle = self._enter()
        try:
            status = lib.emf_router_send_batch(handle, agent_c, table, n, byref(self._accepted))
            accepted = self._accepted.value
        finally:
            self._lock.release()
        del keep
        if status == EMF_ERR_FULL:
            accepted = 0
        elif status != EMF_OK:
            raise error_for(status, last_error_message())
        return accepted, messages[accepted:]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<erlmcp_flow.Router dir={self.dir!r} {state}>"


# --- Batch processor -------------------------------------------------------------------------


def _free_batch_in_owner(handle, owner_pid: int) -> None:
    # A finalizer: must not raise. Messages that cannot be sent when the processor is
    # collected are discarded (nobody can send them any more); the handle is never leaked.
    if os.getpid() != owner_pid:
        return
    if lib.emf_batch_free(handle) == EMF_OK:
        return
    dropped = c_size_t(0)
    if lib.emf_batch_discard(handle, byref(dropped)) == EMF_OK and dropped.value:
        try:
            warnings.warn(
                f"erlmcp_flow.BatchProcessor collected with {dropped.value} messages that "
                f"could not be sent; they were discarded (call close() or discard())",
                ResourceWarning,
                stacklevel=2,
            )
        except Exception:  # interpreter shutdown
            pass


class BatchProcessor(_Handle):
    """Collects messages for ``ring`` and sends them in batches through its own producer
    (``emf_batch_new``): a single-producer ring that already has a live producer refuses it
    with :class:`~erlmcp_flow.Busy`.

    A batch is sent when ``batch_size`` messages are pending (:attr:`FlushReason.SIZE`), when
    the oldest has waited ``timeout_ms`` and :meth:`tick` is called
    (:attr:`FlushReason.TIMEOUT`), on :meth:`flush`, and at once when the ring's primary
    consumer has caught up or is waiting (:attr:`FlushReason.IDLE`), so that batching adds no
    latency at low load. What the ring has no room for stays pending, in order.
    ``max_pending`` bounds the messages held (then :meth:`send_message` raises
    :class:`~erlmcp_flow.Full`). 0 for any of the three takes the library's default (100,
    10 ms, 10000).

    :meth:`close` (and leaving a ``with`` block) sends what is pending and raises
    :class:`~erlmcp_flow.Full` when some could not be sent, leaving the processor open;
    :meth:`discard` drops them knowingly. One thread at a time (another thread calling in
    gets :class:`~erlmcp_flow.Busy`)."""

    _free = lib.emf_batch_free

    def __init__(
        self,
        ring: Ring,
        batch_size: int = 100,
        timeout_ms: int = 10,
        max_pending: int = 10_000,
    ):
        ring = _ring_handle_owner(ring)
        batch_size = _unsigned(batch_size, "batch_size", _SIZE_MAX)
        timeout_ms = _unsigned(timeout_ms, "timeout_ms", _U32_MAX)
        max_pending = _unsigned(max_pending, "max_pending", _SIZE_MAX)
        out = emf_batch_p()
        ring_handle = ring._enter(blocking=True)
        try:
            status = lib.emf_batch_new(ring_handle, batch_size, timeout_ms, max_pending, byref(out))
        finally:
            ring._lock.release()
        check(status)
        self._handle = out
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _free_batch_in_owner, out, self._owner)
        #: The ring it sends to.
        self.ring = ring
        self._flush_code = c_uint32(0)
        self._count = c_size_t(0)
        self._due = c_int64(0)

    # -- sending --

    def send_message(self, data: BytesLike) -> Optional[FlushReason]:
        """Queues one message (``emf_batch_send``) and returns the flush it caused
        (:class:`FlushReason`), or None. :class:`~erlmcp_flow.Full` when ``max_pending``
        messages are waiting and the ring has no room for them (the message was not queued;
        it is still yours). ``EMF_ERR_TOO_LARGE`` past the ring's largest frame."""
        ptr, n = _input(data)
        handle = self._enter()
        try:
            status = lib.emf_batch_send(handle, ptr, n, byref(self._flush_code))
            code = self._flush_code.value
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return _reason(code)

    def tick(self, wait: Optional[Callable[[float], object]] = None) -> Optional[FlushReason]:
        """Sends the pending batch when the oldest message has waited ``timeout_ms``
        (``emf_batch_tick``) and returns :attr:`FlushReason.TIMEOUT`, else None. Call it from
        a timer, :attr:`due_ms` milliseconds after :meth:`send_message` left messages pending.

        With ``wait``, a callable taking seconds (``time.sleep``, ``threading.Event().wait``,
        or a test's fake), ``tick`` is the timer itself: while messages are pending it calls
        ``wait(due_ms / 1000)`` (at least 1 ms) and ticks again, until the timeout flush
        happened (returns :attr:`FlushReason.TIMEOUT`); None at once when nothing is
        pending. The loop ends on the library's clock, not on how long ``wait`` waited."""
        if wait is not None and not callable(wait):
            raise TypeError(f"wait must be callable, not {type(wait).__name__}")
        while True:
            handle = self._enter()
            try:
                status = lib.emf_batch_tick(handle, byref(self._flush_code))
                code = self._flush_code.value
                if status == EMF_OK and code == EMF_FLUSH_NONE and wait is not None:
                    status = lib.emf_batch_pending(handle, byref(self._count), byref(self._due))
            finally:
                self._lock.release()
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            if code != EMF_FLUSH_NONE or wait is None or self._count.value == 0:
                return _reason(code)
            wait(max(self._due.value, 1) / 1000)

    def flush(self) -> int:
        """Sends everything pending that fits (``emf_batch_flush``) and returns how many were
        sent; the rest stays pending, in order."""
        handle = self._enter()
        try:
            status = lib.emf_batch_flush(handle, byref(self._count))
            sent = self._count.value
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return sent

    def _pending(self) -> Tuple[int, int]:
        handle = self._enter()
        try:
            status = lib.emf_batch_pending(handle, byref(self._count), byref(self._due))
            result = self._count.value, self._due.value
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return result

    @property
    def pending(self) -> int:
        """Messages waiting to be sent (``emf_batch_pending``)."""
        return self._pending()[0]

    @property
    def due_ms(self) -> Optional[int]:
        """Milliseconds until the timeout flush is due (``emf_batch_pending``): 0 when
        overdue (or less than 1 ms away), None when nothing is pending."""
        due = self._pending()[1]
        return None if due < 0 else due

    # -- ending --

    def close(self) -> None:
        """Sends what is pending and frees the processor (``emf_batch_free``). When some
        messages could not be sent (the ring is full) raises :class:`~erlmcp_flow.Full` and
        frees nothing: the processor stays open with them pending (call :meth:`flush` or
        :meth:`close` again once the consumer has caught up, or :meth:`discard`). Calling it
        on a closed processor does nothing."""
        with self._lock:
            if self._handle is None:
                return
            if os.getpid() == self._owner:
                status = lib.emf_batch_free(self._handle)
                if status != EMF_OK:
                    raise error_for(status, last_error_message())
            self._finalizer.detach()
            self._handle = None

    def discard(self) -> int:
        """Frees the processor and drops the messages it still holds, knowingly
        (``emf_batch_discard``); returns how many were dropped (0 when closed already)."""
        with self._lock:
            if self._handle is None:
                return 0
            dropped = c_size_t(0)
            if os.getpid() == self._owner:
                check(lib.emf_batch_discard(self._handle, byref(dropped)))
            self._finalizer.detach()
            self._handle = None
            return dropped.value

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<erlmcp_flow.BatchProcessor ring={self.ring.name!r} {state}>"


# --- Shared state ----------------------------------------------------------------------------


class StateStore(_Handle):
    """The store of shared values ``name`` (1-100 of ``[A-Za-z0-9_-]``) in ``dir``
    (``/dev/shm`` when None), opened with ``emf_state_open``. Every process opening the same
    name and directory sees the same keys and values.

    Values are immutable: sharing a key again publishes a new reference and retires the old
    one (new reads of it get :class:`~erlmcp_flow.NotFound`; a :class:`SharedValue` already
    open keeps reading the old bytes). Thread-safe. Closing the store leaves its values."""

    _free = lib.emf_state_free

    def __init__(self, name: str, dir: Union[str, os.PathLike, None] = None):
        name_c = _c_string(name, "name")
        dir_c = None if dir is None else _c_string(dir, "dir", path=True)
        handle = emf_state_store_p()
        check(lib.emf_state_open(name_c, dir_c, byref(handle)))
        super().__init__(handle)
        #: The store's name.
        self.name = name
        #: Its directory (None: ``/dev/shm``).
        self.dir = dir

    @classmethod
    def open(cls, name: str, dir: Union[str, os.PathLike, None] = None) -> "StateStore":
        """Same as ``StateStore(name, dir)``."""
        return cls(name, dir)

    def _call(self, fn, *args):
        handle = self._enter(blocking=True)
        try:
            status = fn(handle, *args)
        finally:
            self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())

    def share_state(self, key: str, value: BytesLike) -> int:
        """Publishes ``value`` under ``key`` (``emf_state_share``) and returns its reference,
        an ``int`` unique in the store and never reused. The key's previous reference is
        retired."""
        key_c = _c_string(key, "key")
        ptr, n = _input(value, "value")
        out = c_uint64(0)
        self._call(lib.emf_state_share, key_c, ptr, n, byref(out))
        return out.value

    def lookup(self, key: str) -> int:
        """The current reference of ``key`` (``emf_state_lookup``);
        :class:`~erlmcp_flow.NotFound` when none."""
        key_c = _c_string(key, "key")
        out = c_uint64(0)
        self._call(lib.emf_state_lookup, key_c, byref(out))
        return out.value

    def read_shared_state(self, ref: int) -> "SharedValue":
        """Maps the value of ``ref`` for reading (``emf_state_read``): a :class:`SharedValue`,
        to be closed (or used in a ``with`` block). :class:`~erlmcp_flow.NotFound` when the
        reference was released or replaced."""
        ref = _unsigned(ref, "ref", _U64_MAX)
        out = emf_state_value_p()
        self._call(lib.emf_state_read, c_uint64(ref), byref(out))
        return SharedValue._adopt(out, ref)

    def release(self, ref: int) -> None:
        """Retires ``ref`` (``emf_state_release``): new reads get
        :class:`~erlmcp_flow.NotFound`; open :class:`SharedValue` objects keep reading it,
        and its memory is reclaimed when the last one is closed.
        :class:`~erlmcp_flow.NotFound` when it was released or replaced already."""
        ref = _unsigned(ref, "ref", _U64_MAX)
        self._call(lib.emf_state_release, c_uint64(ref))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<erlmcp_flow.StateStore {self.name!r} dir={self.dir!r} {state}>"


def _free_value_in_owner(handle, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        lib.emf_state_value_free(handle)


class SharedValue:
    """A shared value mapped for reading (``emf_state_value_t``), from
    :meth:`StateStore.read_shared_state`.

    :attr:`view` is a read-only ``memoryview`` (format ``"B"``) of the value's bytes *in the
    shared mapping*, no copy, valid while the value is open; :meth:`tobytes` copies them.
    ``len()`` and ``bytes(value)`` (a copy) work too, and on Python 3.12+ the buffer protocol
    (``memoryview(value)``).

    :meth:`close` (or leaving the ``with`` block) unmaps it. Views derived from :attr:`view`
    (slices, ``memoryview(value.view)``, objects made over its buffer) must be released
    first: while one exists, :meth:`close` raises ``BufferError`` and keeps the value mapped,
    like ``mmap.close``. After close, :attr:`view` and :meth:`tobytes` raise ``ValueError``.
    A value that is garbage collected stays mapped as long as a derived view lives, so a view
    never outlives its memory. Thread-safe."""

    __slots__ = ("ref", "_handle", "_array", "_base_refs", "_view", "_lock", "_finalizer",
                 "_owner", "__weakref__")

    @classmethod
    def _adopt(cls, handle, ref: int) -> "SharedValue":
        self = cls.__new__(cls)
        #: The reference it was read with.
        self.ref = ref
        self._handle = handle
        self._lock = threading.Lock()
        self._owner = os.getpid()
        data = POINTER(c_uint8)()
        length = c_size_t(0)
        status = lib.emf_state_value_data(handle, byref(data), byref(length))
        if status != EMF_OK:
            error = error_for(status, last_error_message())
            lib.emf_state_value_free(handle)
            raise error
        address = ctypes.cast(data, ctypes.c_void_p).value or 0
        # The array over the mapping owns the handle: the finalizer runs when the array dies,
        # and every view derived from `view` keeps the array alive (through the buffer it
        # exported), so memory is never unmapped under a live view.
        self._array = (ctypes.c_ubyte * length.value).from_address(address)
        self._finalizer = weakref.finalize(self._array, _free_value_in_owner, handle, self._owner)
        self._base_refs = sys.getrefcount(self._array)
        self._view = memoryview(self._array).cast("B").toreadonly()
        return self

    def __init__(self, *args, **kwargs):
        raise TypeError("SharedValue objects come from StateStore.read_shared_state()")

    def _live(self) -> memoryview:
        view = self._view
        if view is None:
            raise ValueError("operation on a closed erlmcp_flow.SharedValue")
        return view

    @property
    def view(self) -> memoryview:
        """A read-only memoryview of the value in the shared mapping (no copy); valid until
        :meth:`close`."""
        return self._live()

    def tobytes(self) -> bytes:
        """A copy of the value's bytes."""
        return self._live().tobytes()

    def __len__(self) -> int:
        return len(self._live())

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+ (PEP 688)
        return memoryview(self._live())

    @property
    def closed(self) -> bool:
        return self._view is None

    def close(self) -> None:
        """Releases :attr:`view` and unmaps the value (``emf_state_value_free``).
        ``BufferError`` while a view derived from :attr:`view` still exists: the value stays
        open, and :attr:`view` gives a new view. Calling it again does nothing."""
        with self._lock:
            view = self._view
            if view is None:
                return
            try:
                view.release()
            except BufferError:
                raise BufferError(
                    "cannot close an erlmcp_flow.SharedValue while an object made over its "
                    "view exists; release it first"
                ) from None
            # Slices and copies of the memoryview share its buffer, which holds a reference
            # to the array until the last of them is released.
            if sys.getrefcount(self._array) > self._base_refs:
                self._view = memoryview(self._array).cast("B").toreadonly()
                raise BufferError(
                    "cannot close an erlmcp_flow.SharedValue while views of it (slices, "
                    "memoryviews) exist; release them first"
                )
            self._view = None
            if self._finalizer.detach() is not None and os.getpid() == self._owner:
                check(lib.emf_state_value_free(self._handle))
            self._handle = None

    def __enter__(self) -> "SharedValue":
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._view is None:
            return f"<erlmcp_flow.SharedValue ref={self.ref:#x} closed>"
        return f"<erlmcp_flow.SharedValue ref={self.ref:#x} {len(self._view)} bytes>"


__all__ = ["FlushReason", "Router", "BatchProcessor", "StateStore", "SharedValue"]
