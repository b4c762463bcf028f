"""Status codes and the :class:`Error` every failing call raises."""

from __future__ import annotations

import ctypes

from ._native import lib

# Status codes (include/erlmcp_flow.h; never renumbered).
EMF_OK = 0
EMF_ERR_NULL_ARGUMENT = 1
EMF_ERR_INVALID_ARGUMENT = 2
EMF_ERR_FULL = 3
EMF_ERR_EMPTY = 4
EMF_ERR_TIMEOUT = 5
EMF_ERR_CLOSED = 6
EMF_ERR_CORRUPT = 7
EMF_ERR_IO = 8
EMF_ERR_NOT_LEADER = 9
EMF_ERR_UNSUPPORTED = 10
EMF_ERR_PANIC = 11
EMF_ERR_BUFFER_TOO_SMALL = 12
EMF_ERR_TOO_LARGE = 13
EMF_ERR_NOT_FOUND = 14
EMF_ERR_BUSY = 15
EMF_ERR_STOPPED = 16


def status_name(code: int) -> str:
    """The library's name for a status code (``"EMF_ERR_CORRUPT"``, or
    ``"EMF_ERR_UNKNOWN"``)."""
    return lib.emf_status_name(code).decode("ascii")


class Error(Exception):
    """A call into the library failed.

    ``code`` is the ``EMF_ERR_*`` status, ``name`` its name (``"EMF_ERR_CORRUPT"``) and
    ``message`` the library's explanation.
    """

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.code = code
        self.name = status_name(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.name} ({self.code}): {self.message}"


class Full(Error):
    """``EMF_ERR_FULL``: back-pressure. Nothing was sent; the caller still owns the data and
    may retry, wait (``send(data, timeout=...)``) or give up."""


class Timeout(Error):
    """``EMF_ERR_TIMEOUT``: a wait ended without what it waited for (e.g. no space came for
    ``send(data, timeout=...)``; the data was not sent)."""


class Busy(Error):
    """``EMF_ERR_BUSY``: the resource is held by another live participant (a second producer
    on a single-producer ring, the primary consumer held elsewhere, a ring name in use), or a
    producer or consumer is being used by another thread right now."""


class NotFound(Error):
    """``EMF_ERR_NOT_FOUND``: a looked-up item does not exist (a ring or router inbox of that
    name, a shared-state key or a released or replaced state reference, an envelope's id)."""


class _InvalidValue(Error, ValueError):
    """An argument refused in Python before the library is called: both a ``ValueError``
    and an :class:`Error` with code ``EMF_ERR_INVALID_ARGUMENT``."""

    def __init__(self, message: str):
        super().__init__(EMF_ERR_INVALID_ARGUMENT, message)


#: Status code -> the :class:`Error` subclass raised for it (others raise :class:`Error`).
ERROR_CLASSES = {
    EMF_ERR_FULL: Full,
    EMF_ERR_TIMEOUT: Timeout,
    EMF_ERR_BUSY: Busy,
    EMF_ERR_NOT_FOUND: NotFound,
}


def error_for(code: int, message: str) -> Error:
    """The exception for a status code: :class:`Full`, :class:`Timeout`, :class:`Busy` or
    :class:`NotFound` for those codes, else :class:`Error`."""
    return ERROR_CLASSES.get(code, Error)(code, message)


def last_error_message(initial_capacity: int = 256) -> str:
    """This thread's last error text from the library (empty when nothing failed yet).

    A message longer than ``initial_capacity - 1`` bytes is read again with the length the
    library reports."""
    cap = max(1, initial_capacity)
    while True:
        buf = ctypes.create_string_buffer(cap)
        needed = ctypes.c_size_t(0)
        status = lib.emf_last_error_message(buf, cap, ctypes.byref(needed))
        if status == EMF_OK:
            return buf.raw[: needed.value].decode("utf-8", errors="replace")
        if status != EMF_ERR_BUFFER_TOO_SMALL:
            return f"(error text unavailable: {status_name(status)})"
        cap = needed.value + 1


def check(status: int) -> None:
    """Raises :class:`Error` for a non-OK status, with the library's message.

    Call it right after the failing call, on the same thread: the message is thread-local.
    """
    if status != EMF_OK:
        raise error_for(status, last_error_message())
