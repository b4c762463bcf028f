"""Shared-memory frame rings: thin wrappers of ``emf_ring_*``, ``emf_producer_*`` and
``emf_consumer_*``.

A ring is a named file in ``/dev/shm`` (or a directory you pass) mapped by every process that
uses it. :class:`Producer` sends frames (bytes); :class:`Consumer` receives them in order,
either as the primary consumer (which resumes where the previous one stopped) or as a fan-out
subscriber (:meth:`Consumer.subscribe`). Every method converts its arguments, calls the
library, and converts the answer; the ring itself (claims, back-pressure, waiting, recovery
from dead processes) is Rust.

Delivery: a send that returned committed its frame; ``recv`` / ``recv_batch`` release what
they return (at most once) unless the consumer is in ``ack_mode="manual"``, where nothing is
released before :meth:`Consumer.ack` and a consumer that dies first has its frames delivered
again (at least once); a producer restarted in its predecessor's slot
(``Producer(ring, slot=K)``) reads :attr:`Producer.committed` to resend exactly the missing
frames. The full table is in ffi/python/README.md ("Delivery guarantees").

Thread-safety: a :class:`Ring` may be used from any number of threads. A :class:`Producer` or
:class:`Consumer` is used by one thread at a time, like the library's handles: a second
thread calling in while another is inside gets :class:`Busy` (``EMF_ERR_BUSY``). ``close()``
waits for a call in progress on another thread. Handles are never freed by a process other
than the one that made them (a ``fork`` child that inherits one leaves it alone).
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
import threading
import time
import weakref
from array import array
from ctypes import byref, c_bool, c_size_t, c_uint32, c_uint64
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Iterable, Iterator, List, Optional, Union

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_BUSY,
    EMF_ERR_EMPTY,
    EMF_ERR_FULL,
    EMF_ERR_INVALID_ARGUMENT,
    EMF_ERR_TIMEOUT,
    EMF_OK,
    Busy,
    Error,
    check,
    error_for,
    last_error_message,
)
from ._native import (
    emf_consumer_p,
    emf_producer_p,
    emf_ring_options_t,
    emf_ring_p,
    emf_ring_stats_t,
    emf_slice_t,
    lib,
)
from .codec import BytesLike, _input

# Batch processor flush reasons (include/erlmcp_flow.h; see erlmcp_flow.flow.FlushReason).
EMF_FLUSH_NONE = 0
EMF_FLUSH_SIZE = 1
EMF_FLUSH_TIMEOUT = 2
EMF_FLUSH_IDLE = 3
EMF_FLUSH_DEMAND = 4

# Wait strategies (include/erlmcp_flow.h).
EMF_WAIT_SPIN = 0
EMF_WAIT_YIELD = 1
EMF_WAIT_PARK = 2

#: Names accepted for ``wait=``: busy-poll, spin then yield, spin then sleep on a futex in
#: shared memory (woken across processes).
WAIT_STRATEGIES = {"spin": EMF_WAIT_SPIN, "yield": EMF_WAIT_YIELD, "park": EMF_WAIT_PARK}

# Ring flags (``emf_ring_options_t.flags``; include/erlmcp_flow.h).
EMF_RING_CHECKSUM = 1

# Acknowledgement modes (``emf_consumer_set_ack_mode``; include/erlmcp_flow.h).
EMF_ACK_AUTO = 0
EMF_ACK_MANUAL = 1

#: Names accepted for ``ack_mode=``: every receive releases what it delivered (``"auto"``,
#: the default), or nothing is released until :meth:`Consumer.ack` (``"manual"``).
ACK_MODES = {"auto": EMF_ACK_AUTO, "manual": EMF_ACK_MANUAL}

#: Default size of a consumer's receive buffer (grown when a frame needs more).
DEFAULT_BUFFER_SIZE = 256 * 1024

_U32_MAX = 2**32 - 1
_SIZE_MAX = ctypes.c_size_t(-1).value
# Long waits are made of library waits of at most this many milliseconds, so that Python
# handles signals (Ctrl-C) in between: a C call cannot be interrupted.
_WAIT_CHUNK_MS = 200

# An emf_slice_t is {pointer, size_t}: two machine words, filled from one array of words.
assert ctypes.sizeof(ctypes.c_void_p) == ctypes.sizeof(c_size_t)
assert ctypes.sizeof(emf_slice_t) == 2 * ctypes.sizeof(c_size_t)
_WORD = next(code for code in "LQ" if array(code).itemsize == ctypes.sizeof(c_size_t))
_unpack_u32 = struct.Struct("<I").unpack_from
_monotonic = time.monotonic


def _invalid(message: str) -> Error:
    return Error(EMF_ERR_INVALID_ARGUMENT, message)


def _unsigned(value: int, name: str, limit: int) -> int:
    """Refuses what ctypes would otherwise wrap silently (negative or too big)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise _invalid(f"{name} {value} is out of range 0..{limit}")
    return value


def _c_string(value, name: str, path: bool = False) -> bytes:
    """A ``str`` (or ``bytes``; any path-like for ``path``) as the bytes of a C string.

    The library checks the text (names: 1-200 of ``[A-Za-z0-9._-]``, UTF-8); only a NUL
    byte, which C would silently take for the end, is refused here."""
    if path and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        # Lone surrogates are passed on as invalid UTF-8 for the library to refuse.
        data = value.encode("utf-8", "surrogateescape" if path else "surrogatepass")
    elif isinstance(value, bytes):
        data = value
    else:
        expected = "a str or path" if path else "a str"
        raise TypeError(f"{name} must be {expected}, not {type(value).__name__}")
    if b"\0" in data:
        raise _invalid(f"{name} {value!r} contains a NUL byte")
    return data


def _timeout_ms(timeout) -> Union[int, float]:
    """Seconds as whole milliseconds (rounded up); ``math.inf`` stays infinite."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise _invalid(f"timeout {timeout!r} must be a number of seconds >= 0")
    if math.isinf(timeout):
        return math.inf
    return math.ceil(timeout * 1000)


def _waits(ms: Union[int, float]) -> Iterator[int]:
    """The library waits (in ms, each at most ``_WAIT_CHUNK_MS``) that make up ``ms``: one
    at least, then more while the deadline is ahead. ``math.inf``: without end."""
    if math.isinf(ms):
        while True:
            yield _WAIT_CHUNK_MS
    deadline = _monotonic() + ms / 1000
    chunk = min(ms, _WAIT_CHUNK_MS)
    while True:
        yield chunk
        remaining = deadline - _monotonic()
        if remaining <= 0:
            return
        chunk = min(_WAIT_CHUNK_MS, math.ceil(remaining * 1000))


def _strategy(wait: Union[str, int]) -> int:
    """``"spin"``, ``"yield"``, ``"park"``, or an ``EMF_WAIT_*`` code (checked by the
    library)."""
    if isinstance(wait, str):
        try:
            return WAIT_STRATEGIES[wait]
        except KeyError:
            raise _invalid(
                f"unknown wait strategy {wait!r} (expected one of {', '.join(WAIT_STRATEGIES)})"
            ) from None
    return _unsigned(wait, "wait", _U32_MAX)


def _ack_mode(mode: Union[str, int]) -> int:
    """``"auto"``, ``"manual"``, or an ``EMF_ACK_*`` code (checked by the library)."""
    if isinstance(mode, str):
        try:
            return ACK_MODES[mode]
        except KeyError:
            raise _invalid(
                f"unknown ack mode {mode!r} (expected one of {', '.join(ACK_MODES)})"
            ) from None
    return _unsigned(mode, "ack_mode", _U32_MAX)


def _frame_bytes(frame, index: int):
    """A frame that ``b"".join`` refused (e.g. a non-contiguous view) as bytes; TypeError for
    what is not bytes-like."""
    if isinstance(frame, str):
        raise TypeError(f"frames[{index}] must be bytes-like, not str")
    try:
        return memoryview(frame).tobytes()
    except TypeError:
        raise TypeError(f"frames[{index}] must be bytes-like, not {type(frame).__name__}") from None


def _free_in_owner(free, handle, owner_pid: int) -> None:
    # A finalizer: must not raise. Only the process that made the handle frees it: in a fork
    # child the library's copy would detach the parent's producer or consumer from the ring.
    if os.getpid() == owner_pid:
        free(handle)


class _Handle:
    """A library handle with ``close()`` (idempotent), a context manager, a finalizer, and a
    lock that keeps ``close`` from freeing the handle while a call uses it."""

    _free = None  # the emf_*_free function

    def __init__(self, handle):
        self._handle = handle
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(
            self, _free_in_owner, type(self)._free, handle, self._owner
        )

    def close(self) -> None:
        """Frees the handle. Calling it again does nothing."""
        with self._lock:
            if self._finalizer.detach() is not None and os.getpid() == self._owner:
                check(type(self)._free(self._handle))
            self._handle = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self):
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self):
        handle = self._handle
        if handle is None:
            raise ValueError(f"operation on a closed erlmcp_flow.{type(self).__name__}")
        return handle

    def _enter(self, blocking: bool = False):
        """Takes the lock for one call and returns the live handle; release ``_lock`` after.

        Non-blocking for producers and consumers: another thread inside is the library's
        ``EMF_ERR_BUSY``, raised here before the shared receive buffer could be touched."""
        if not self._lock.acquire(blocking):
            raise Busy(
                EMF_ERR_BUSY,
                f"this erlmcp_flow.{type(self).__name__} is in use by another thread",
            )
        if self._handle is None:
            self._lock.release()
            self._live()
        return self._handle


@dataclass(frozen=True)
class RingStats:
    """A ring's counters (``emf_ring_stats_t``)."""

    #: Data region size in bytes.
    capacity: int
    #: Claim position (bytes ever claimed).
    tail: int
    #: Frames committed by all producers.
    sent: int
    #: Payload bytes committed.
    bytes: int
    #: Frames delivered to the primary consumer.
    received: int
    #: Claims refused for lack of space.
    backpressure: int
    #: Dead producers' claims skipped.
    unblocked: int
    #: Dead participants reaped.
    dead_reaped: int
    #: Largest lag seen, bytes.
    max_lag: int
    #: Invalid frames seen.
    corrupt_frames: int
    #: Producer slots held by live producers.
    producers: int
    #: Active subscriber slots (the primary consumer's included).
    subscribers: int


class Ring(_Handle):
    """A mapped ring (``emf_ring_t``). Make one with :meth:`create` or :meth:`open`.

    The ring handle only maps the segment: producers and consumers keep the mapping alive
    after it is closed. Thread-safe."""

    _free = lib.emf_ring_free

    def __init__(self, handle, name: str, dir):
        super().__init__(handle)
        #: The ring's name.
        self.name = name
        #: The directory of its file (None: ``/dev/shm``).
        self.dir = dir

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int = 1 << 20,
        multi_producer: bool = False,
        max_subscribers: int = 8,
        stall_timeout_ms: int = 100,
        mode: int = 0o600,
        dir: Union[str, os.PathLike, None] = None,
        max_producers: int = 16,
        checksum: bool = False,
    ) -> "Ring":
        """Creates ring ``name`` (``emf_ring_create``).

        ``capacity``: data region in bytes, a power of two from 4096 to 1 GiB; a frame carries
        at most a quarter of it (:attr:`max_payload`). ``max_producers`` applies to a
        multi-producer ring; ``max_subscribers`` counts the primary consumer. ``mode``: file
        mode of the segment. ``dir``: directory of the segment file (``/dev/shm`` when None).
        ``checksum`` (``EMF_RING_CHECKSUM``): every frame carries a CRC32C that consumers
        check; a frame whose bytes changed in the ring is skipped and reported as
        ``Error(EMF_ERR_CORRUPT)``, the frames before it having been delivered.
        A stale ring of that name is replaced; one with live participants gives :class:`Busy`.
        Bad names and options give ``EMF_ERR_INVALID_ARGUMENT``."""
        name_c = _c_string(name, "name")
        dir_c = None if dir is None else _c_string(dir, "dir", path=True)
        opts = emf_ring_options_t()
        check(lib.emf_ring_options_default(byref(opts)))
        opts.capacity = _unsigned(capacity, "capacity", _SIZE_MAX)
        opts.multi_producer = bool(multi_producer)
        opts.max_producers = _unsigned(max_producers, "max_producers", _U32_MAX)
        opts.max_subscribers = _unsigned(max_subscribers, "max_subscribers", _U32_MAX)
        opts.stall_timeout_ms = _unsigned(stall_timeout_ms, "stall_timeout_ms", _U32_MAX)
        opts.mode = _unsigned(mode, "mode", _U32_MAX)
        opts.dir = dir_c
        opts.flags = EMF_RING_CHECKSUM if checksum else 0
        handle = emf_ring_p()
        check(lib.emf_ring_create(name_c, byref(opts), byref(handle)))
        return cls(handle, name, dir)

    @classmethod
    def open(cls, name: str, dir: Union[str, os.PathLike, None] = None) -> "Ring":
        """Opens an existing ring (``emf_ring_open``), e.g. from another process.
        ``EMF_ERR_NOT_FOUND`` when there is none."""
        name_c = _c_string(name, "name")
        dir_c = None if dir is None else _c_string(dir, "dir", path=True)
        handle = emf_ring_p()
        check(lib.emf_ring_open(name_c, dir_c, byref(handle)))
        return cls(handle, name, dir)

    def stats(self) -> RingStats:
        """The ring's counters (``emf_ring_stats``)."""
        out = emf_ring_stats_t()
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_ring_stats(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return RingStats(**{field: getattr(out, field) for field, _ in out._fields_})

    @property
    def max_payload(self) -> int:
        """The largest frame, in bytes (``emf_ring_max_payload``)."""
        out = c_size_t(0)
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_ring_max_payload(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return out.value

    def unlink(self) -> None:
        """Removes the ring's file; processes that mapped it keep working."""
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_ring_unlink(handle)
        finally:
            self._lock.release()
        check(status)

    def close_to_producers(self) -> None:
        """Closes the ring to producers: later sends raise Error(EMF_ERR_CLOSED); consumers
        still drain what was committed."""
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_ring_close(handle)
        finally:
            self._lock.release()
        check(status)

    def _attach(self, attach, out):
        handle = self._enter(blocking=True)
        try:
            status = attach(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return out

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<erlmcp_flow.Ring {self.name!r} dir={self.dir!r} {state}>"


def _ring_handle_owner(ring) -> "Ring":
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be an erlmcp_flow.Ring, not {type(ring).__name__}")
    return ring


class Producer(_Handle):
    """A producer attached to a ring (``emf_producer_new``), or with ``slot=K`` in producer
    slot ``K`` (``emf_producer_new_in_slot``).

    A single-producer ring refuses a second live producer with :class:`Busy`. One thread at a
    time; ``close()`` (or the garbage collector) detaches it.

    ``slot``: 0 on a single-producer ring, below ``max_producers`` on a multi-producer one
    (else ``EMF_ERR_INVALID_ARGUMENT``). The slot is taken over when its holder died;
    :class:`Busy` while a live producer holds it. A producer restarted in its predecessor's
    slot reads :attr:`committed`: the frames the slot has committed, the dead predecessor's
    included, so a producer that numbers its frames can resend exactly the missing ones::

        p = emf.Producer(ring, slot=3)
        for seq in range(p.committed, total):   # frames 0 .. committed-1 are in the ring
            p.send(frame(seq), timeout=math.inf)
    """

    _free = lib.emf_producer_free

    def __init__(self, ring: Ring, *, slot: Optional[int] = None):
        ring = _ring_handle_owner(ring)
        if slot is None:
            attach = lib.emf_producer_new
        else:
            index = _unsigned(slot, "slot", _U32_MAX)

            def attach(handle, out):
                return lib.emf_producer_new_in_slot(handle, index, out)

        handle = ring._attach(attach, emf_producer_p())
        super().__init__(handle)
        #: The ring it was attached through.
        self.ring = ring
        self._sent = c_size_t(0)
        self._sent_ref = byref(self._sent)
        # send_batch: the frames of a batch are copied into this block, at a stable address,
        # so that the emf_slice_t table of the last batch can serve the next one.
        self._staging_size = 16 * 1024
        self._staging = ctypes.create_string_buffer(self._staging_size)
        self._table = None
        self._table_lengths = None

    def send(
        self,
        data: BytesLike,
        timeout: Optional[float] = None,
        wait: Union[str, int] = "park",
    ) -> None:
        """Sends one frame.

        Without ``timeout``: :class:`Full` (``EMF_ERR_FULL``) when the ring has no room;
        nothing was sent and the data is still yours. With ``timeout`` (seconds; ``math.inf``
        waits without end): waits for room with ``wait`` (``"spin"``, ``"yield"``,
        ``"park"``), and raises :class:`Timeout` (``EMF_ERR_TIMEOUT``; nothing sent) when
        none came. ``EMF_ERR_TOO_LARGE`` past :attr:`Ring.max_payload`."""
        ptr, n = _input(data)
        code = _strategy(wait)
        if timeout is None:
            handle = self._enter()
            try:
                status = lib.emf_producer_send(handle, ptr, n)
            finally:
                self._lock.release()
        else:
            ms = _timeout_ms(timeout)
            handle = self._enter()
            try:
                for chunk in _waits(ms):
                    status = lib.emf_producer_send_timeout(handle, ptr, n, code, chunk)
                    if status != EMF_ERR_TIMEOUT:
                        break
            finally:
                self._lock.release()
        if status != EMF_OK:
            raise error_for(status, last_error_message())

    def send_batch(self, frames: Iterable[BytesLike]) -> int:
        """Sends frames in order with one claim (``emf_producer_send_batch``) and returns how
        many were sent: the longest prefix that fits. ``frames[sent:]`` were NOT sent
        (back-pressure) and are still yours, to send again later; 0 when the ring had room for
        none (``EMF_ERR_FULL``).
        ``EMF_ERR_TOO_LARGE`` (nothing sent) when a frame is past :attr:`Ring.max_payload`.

        The frames are joined into a staging block the producer keeps, and described to the
        library by an array of ``emf_slice_t`` that is rebuilt only when the frame lengths
        differ from the previous batch's."""
        if not isinstance(frames, (list, tuple)):
            frames = list(frames)
        n = len(frames)
        try:
            block = b"".join(frames)
        except TypeError:
            frames = [_frame_bytes(f, i) for i, f in enumerate(frames)]
            block = b"".join(frames)
        total = len(block)
        lengths = list(map(len, frames))
        if sum(lengths) != total:
            # A memoryview of multi-byte items: len() counts items, not bytes. (Each frame's
            # byte count is >= its len(), so equal sums mean equal lengths.)
            lengths = [memoryview(f).nbytes for f in frames]
        handle = self._enter()
        try:
            if total > self._staging_size:
                self._staging = ctypes.create_string_buffer(max(total, 2 * self._staging_size))
                self._staging_size = len(self._staging)
                self._table_lengths = None
            base = ctypes.addressof(self._staging)
            ctypes.memmove(base, block, total)
            if lengths != self._table_lengths:
                starts = accumulate(lengths, initial=base)
                words = array(_WORD, chain.from_iterable(zip(starts, lengths)))
                self._table = (emf_slice_t * n).from_buffer(words) if n else None
                self._table_lengths = lengths
            status = lib.emf_producer_send_batch(handle, self._table, n, self._sent_ref)
            sent = self._sent.value
        finally:
            self._lock.release()
        if status == EMF_OK:
            return sent
        if status == EMF_ERR_FULL:
            return 0
        raise error_for(status, last_error_message())

    def _committed(self):
        count, slot = c_uint64(0), c_uint32(0)
        handle = self._enter()
        try:
            status = lib.emf_producer_committed(handle, byref(count), byref(slot))
        finally:
            self._lock.release()
        check(status)
        return count.value, slot.value

    @property
    def committed(self) -> int:
        """Frames committed through this producer's slot so far, by this producer and every
        earlier holder of the slot, a killed one included (``emf_producer_committed``). A
        frame counts once its send returned."""
        return self._committed()[0]

    @property
    def slot(self) -> int:
        """The producer slot this producer holds (``emf_producer_committed``'s ``out_slot``)."""
        return self._committed()[1]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<erlmcp_flow.Producer ring={self.ring.name!r} {state}>"


class Consumer(_Handle):
    """The primary consumer of a ring (``emf_consumer_new``), or with :meth:`subscribe` a
    fan-out subscriber (``emf_consumer_subscribe``).

    The primary consumer resumes where the previous one stopped; while another live process
    holds it, :class:`Busy`. A subscriber sees every frame committed after it subscribed. Both
    hold producers back until they have read a frame. Frames come as ``bytes``, in order.

    Frames are copied by the library into one reusable buffer of ``buffer_size`` bytes, grown
    when a frame needs more, and sliced from there. One thread at a time. Iterating yields the
    frames that are ready, without waiting.

    ``ack_mode`` (see :attr:`ack_mode`): ``"auto"`` (the default) releases what every receive
    delivered; ``"manual"`` releases nothing until :meth:`ack`, so a consumer that dies or is
    closed first has its unacknowledged frames delivered again, in order, to the next primary
    consumer (at least once). A frame that fails its checksum (a ring created with
    ``checksum=True``) raises ``Error(EMF_ERR_CORRUPT)`` and is skipped: the next receive
    goes on after it."""

    _free = lib.emf_consumer_free

    def __init__(
        self,
        ring: Ring,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        ack_mode: Union[str, int] = "auto",
        _subscribe=False,
    ):
        ring = _ring_handle_owner(ring)
        buffer_size = _unsigned(buffer_size, "buffer_size", _SIZE_MAX)
        code = _ack_mode(ack_mode)
        attach = lib.emf_consumer_subscribe if _subscribe else lib.emf_consumer_new
        handle = ring._attach(attach, emf_consumer_p())
        self._init_attached(handle, ring, buffer_size, bool(_subscribe), None)
        if code != EMF_ACK_AUTO:
            try:
                self.set_ack_mode(code)
            except BaseException:
                self.close()
                raise

    @classmethod
    def _adopt(cls, handle, *, buffer_size: int, agent: str) -> "Consumer":
        """Wraps a consumer handle the library attached elsewhere (an agent's inbox consumer
        from ``emf_router_register_agent``). ``buffer_size`` must be checked already."""
        self = cls.__new__(cls)
        self._init_attached(handle, None, buffer_size, False, agent)
        return self

    def _init_attached(self, handle, ring, buffer_size: int, subscriber: bool, agent) -> None:
        _Handle.__init__(self, handle)
        #: The ring it was attached through (None for an agent's inbox consumer, whose ring
        #: the router opened).
        self.ring = ring
        #: True for a fan-out subscriber.
        self.subscriber = subscriber
        #: The agent whose inbox this is (:meth:`Router.register_agent`), else None.
        self.agent = agent
        self._set_buffer(max(buffer_size, 64))
        self._count = c_size_t(0)
        self._used = c_size_t(0)
        self._ready = c_bool(False)
        self._count_ref = byref(self._count)
        self._used_ref = byref(self._used)
        self._ready_ref = byref(self._ready)
        self._ack_code = EMF_ACK_AUTO

    @classmethod
    def subscribe(
        cls,
        ring: Ring,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        ack_mode: Union[str, int] = "auto",
    ) -> "Consumer":
        """Attaches a fan-out subscriber. :class:`Busy` when every subscriber slot is taken.
        (A subscriber that dies has its slot reaped: a new subscriber starts at the tail, so
        ``ack_mode="manual"`` lets a subscriber :meth:`rewind`, not redeliver to another.)"""
        return cls(ring, buffer_size=buffer_size, ack_mode=ack_mode, _subscribe=True)

    # -- the receive buffer --

    def _set_buffer(self, size: int) -> None:
        self._buffer = ctypes.create_string_buffer(size)
        self._address = ctypes.addressof(self._buffer)
        self._view = memoryview(self._buffer).cast("B")
        self._capacity = size

    def _grow(self, needed: int) -> None:
        self._set_buffer(max(needed, 2 * self._capacity))

    @property
    def buffer_size(self) -> int:
        """Current size of the receive buffer."""
        return self._capacity

    # -- receiving (callers hold the lock) --

    def _recv_locked(self, handle) -> Optional[bytes]:
        while True:
            status = lib.emf_consumer_recv(handle, self._address, self._capacity, self._count_ref)
            if status == EMF_OK:
                return self._view[: self._count.value].tobytes()
            if status == EMF_ERR_EMPTY:
                return None
            if status == EMF_ERR_BUFFER_TOO_SMALL:
                self._grow(self._count.value)  # the frame stayed; its length was reported
                continue
            raise error_for(status, last_error_message())

    def _batch_locked(self, handle, max_frames: int) -> List[bytes]:
        if max_frames == 0:
            return []  # (the library would still ask for room for the next frame)
        while True:
            status = lib.emf_consumer_recv_batch(
                handle, self._address, self._capacity, max_frames, self._count_ref, self._used_ref
            )
            if status == EMF_OK:
                break
            if status == EMF_ERR_BUFFER_TOO_SMALL:
                # The next frame does not fit (nothing consumed); the bytes it needs, length
                # prefix included, were reported in out_bytes.
                self._grow(self._used.value)
                continue
            raise error_for(status, last_error_message())
        count = self._count.value
        if count == 0:
            return []
        used = self._used.value
        raw = self._view[:used].tobytes()
        # Frames of one size (common in streams of one message type): when every length
        # prefix equals the first (checked with four strided byte slices, no Python loop),
        # the frames sit at fixed offsets.
        (length,) = _unpack_u32(raw, 0)
        stride = length + 4
        if used == count * stride and all(
            raw[i::stride] == raw[i : i + 1] * count for i in range(4)
        ):
            return [raw[o : o + length] for o in range(4, used + 4, stride)]
        frames = []
        append = frames.append
        offset = 0
        for _ in range(count):
            (length,) = _unpack_u32(raw, offset)
            offset += 4
            append(raw[offset : offset + length])
            offset += length
        return frames

    def _wait_locked(self, handle, code: int, ms: int) -> bool:
        check(lib.emf_consumer_wait(handle, code, ms, self._ready_ref))
        return self._ready.value

    # -- public API --

    def recv(
        self,
        timeout: Optional[float] = None,
        wait: Union[str, int] = "park",
    ) -> Optional[bytes]:
        """The next frame, or None when none is ready.

        ``timeout`` None (or 0): do not wait. Else wait up to ``timeout`` seconds
        (``math.inf``: without end) with ``wait`` (``"spin"``, ``"yield"``, ``"park"``)."""
        ms = 0 if timeout is None else _timeout_ms(timeout)
        code = _strategy(wait)
        handle = self._enter()
        try:
            frame = self._recv_locked(handle)
            if frame is not None or not ms:
                return frame
            for chunk in _waits(ms):
                if self._wait_locked(handle, code, chunk):
                    frame = self._recv_locked(handle)
                    if frame is not None:
                        return frame
            return None
        finally:
            self._lock.release()

    def recv_batch(
        self,
        max_frames: int = 1024,
        timeout: Optional[float] = None,
        wait: Union[str, int] = "park",
    ) -> List[bytes]:
        """Up to ``max_frames`` ready frames, in order, as a list (``emf_consumer_recv_batch``);
        empty when none is ready. Fewer may come when the buffer fills (see ``buffer_size``).

        ``timeout`` as for :meth:`recv`: with one, waits until at least one frame is ready."""
        max_frames = _unsigned(max_frames, "max_frames", _SIZE_MAX)
        ms = 0 if timeout is None else _timeout_ms(timeout)
        code = _strategy(wait)
        handle = self._enter()
        try:
            frames = self._batch_locked(handle, max_frames)
            if frames or not ms or max_frames == 0:
                return frames
            for chunk in _waits(ms):
                if self._wait_locked(handle, code, chunk):
                    frames = self._batch_locked(handle, max_frames)
                    if frames:
                        return frames
            return frames
        finally:
            self._lock.release()

    def wait(self, timeout: float, wait: Union[str, int] = "park") -> bool:
        """Waits up to ``timeout`` seconds (``math.inf``: without end) until a frame is ready
        (``emf_consumer_wait``). True when a frame is ready (ring padding on the way is skipped,
        not reported), False on timeout."""
        ms = _timeout_ms(timeout)
        code = _strategy(wait)
        handle = self._enter()
        try:
            for chunk in _waits(ms):
                if self._wait_locked(handle, code, chunk):
                    return True
            return False
        finally:
            self._lock.release()

    # -- acknowledgement --

    @property
    def ack_mode(self) -> str:
        """``"auto"`` or ``"manual"``: when delivered frames are released (their space goes
        back to producers, and a primary consumer attached later starts after them).
        Assigning it calls :meth:`set_ack_mode`."""
        # Only a mode the library accepted is kept, so it has a name.
        return "manual" if self._ack_code == EMF_ACK_MANUAL else "auto"

    @ack_mode.setter
    def ack_mode(self, mode: Union[str, int]) -> None:
        self.set_ack_mode(mode)

    def set_ack_mode(self, mode: Union[str, int]) -> None:
        """Chooses the acknowledgement mode (``emf_consumer_set_ack_mode``): ``"auto"``
        (``EMF_ACK_AUTO``) or ``"manual"`` (``EMF_ACK_MANUAL``), or the code. An unknown mode
        is ``EMF_ERR_INVALID_ARGUMENT``. Switching to ``"auto"`` acknowledges what was
        delivered."""
        code = _ack_mode(mode)
        handle = self._enter()
        try:
            status = lib.emf_consumer_set_ack_mode(handle, code)
            if status == EMF_OK:
                self._ack_code = code
        finally:
            self._lock.release()
        check(status)

    def ack(self) -> None:
        """Releases every frame delivered so far (``emf_consumer_ack``): they will not be
        delivered again. Needed only in ``"manual"`` mode (harmless in ``"auto"``)."""
        handle = self._enter()
        try:
            status = lib.emf_consumer_ack(handle)
        finally:
            self._lock.release()
        check(status)

    def rewind(self) -> int:
        """Forgets the frames delivered since the last :meth:`ack` (``emf_consumer_rewind``):
        the next receive delivers them again, in order. Returns how many there were."""
        out = c_uint64(0)
        handle = self._enter()
        try:
            status = lib.emf_consumer_rewind(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return out.value

    @property
    def unacked(self) -> int:
        """Frames delivered and not acknowledged yet (``emf_consumer_unacked``); always 0 in
        ``"auto"`` mode."""
        out = c_uint64(0)
        handle = self._enter()
        try:
            status = lib.emf_consumer_unacked(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return out.value

    @property
    def lag(self) -> int:
        """Bytes committed or claimed that this consumer has not consumed
        (``emf_consumer_lag``)."""
        out = c_uint64(0)
        handle = self._enter()
        try:
            status = lib.emf_consumer_lag(handle, byref(out))
        finally:
            self._lock.release()
        check(status)
        return out.value

    def __iter__(self) -> Iterator[bytes]:
        """Yields the frames that are ready, one at a time, and stops when none is (a frame
        is consumed only when it is yielded)."""
        while True:
            frame = self.recv()
            if frame is None:
                return
            yield frame

    def __repr__(self) -> str:
        kind = "subscriber" if self.subscriber else "consumer"
        state = "closed" if self.closed else "open"
        if self.ring is None:
            return f"<erlmcp_flow.Consumer inbox agent={self.agent!r} {state}>"
        return f"<erlmcp_flow.Consumer {kind} ring={self.ring.name!r} {state}>"


__all__ = [
    "EMF_FLUSH_NONE", "EMF_FLUSH_SIZE", "EMF_FLUSH_TIMEOUT", "EMF_FLUSH_IDLE", "EMF_FLUSH_DEMAND",
    "EMF_WAIT_SPIN", "EMF_WAIT_YIELD", "EMF_WAIT_PARK", "WAIT_STRATEGIES",
    "EMF_RING_CHECKSUM", "EMF_ACK_AUTO", "EMF_ACK_MANUAL", "ACK_MODES",
    "DEFAULT_BUFFER_SIZE", "Ring", "RingStats", "Producer", "Consumer",
]  # fmt: skip
