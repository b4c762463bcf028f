"""MCP / JSON-RPC messages as archives, and zlib compression: thin wrappers of the C ABI.

Every function converts its arguments, calls one ``emf_*`` function, raises :class:`Error`
on a non-OK status, and copies any returned ``emf_buf_t`` into ``bytes`` before releasing it
with ``emf_buf_free``. The encoding, validation and compression logic lives in Rust.
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
import weakref
from ctypes import byref, c_bool, c_size_t
from dataclasses import dataclass
from typing import Optional, Union

from ._errors import (
    EMF_ERR_INVALID_ARGUMENT,
    EMF_OK,
    Error,
    _InvalidValue,
    check,
    last_error_message,
)
from ._native import emf_buf_t, emf_encode_options_t, emf_envelope_info_t, emf_message_p, lib

BytesLike = Union[bytes, bytearray, memoryview]

# Kind codes.
EMF_KIND_REQUEST = 0
EMF_KIND_RESPONSE = 1
EMF_KIND_NOTIFICATION = 2
EMF_KIND_TASK = 3
EMF_KIND_RESULT = 4
EMF_KIND_ERROR = 5

# Priority codes.
EMF_PRIORITY_CRITICAL = 0
EMF_PRIORITY_HIGH = 1
EMF_PRIORITY_NORMAL = 2
EMF_PRIORITY_LOW = 3

# Id types of an envelope.
EMF_ID_NONE = 0
EMF_ID_NULL = 1
EMF_ID_INT = 2
EMF_ID_STRING = 3
EMF_ID_OTHER_NUMBER = 4

EMF_COMPRESS_DEFAULT_THRESHOLD = 1024
EMF_MAX_INPUT_LEN = 2**31 - 1

# Flag of emf_json_to_archive_ex: the archive carries a CRC32C (see encode's ``checksum``).
EMF_ARCHIVE_CHECKSUM = 1
# Flag of emf_value_builder_finish: a message without "jsonrpc" is taken as "2.0".
EMF_ARCHIVE_IMPLICIT_JSONRPC = 2
# Flag of emf_value_builder_new: refuse objects with a repeated key.
EMF_BUILDER_UNIQUE_KEYS = 1
# The deepest nesting of arrays and objects in a value (as in JSON text).
EMF_VALUE_MAX_DEPTH = 128
# Kinds of emf_value_event_t (emf_value_builder_push, emf_archive_visit; declared in
# _native for ctypes, not used by this package's own API).
EMF_VALUE_NULL = 0
EMF_VALUE_BOOL = 1
EMF_VALUE_INT = 2
EMF_VALUE_UINT = 3
EMF_VALUE_FLOAT = 4
EMF_VALUE_NUMBER_TEXT = 5
EMF_VALUE_BIG_INT_LE = 6
EMF_VALUE_STRING = 7
EMF_VALUE_KEY = 8
EMF_VALUE_BEGIN_ARRAY = 9
EMF_VALUE_BEGIN_OBJECT = 10
EMF_VALUE_END = 11

# The library's word for a code it does not define (emf_kind_name, emf_priority_name).
_UNKNOWN_NAME = "unknown"
# A stop for the scan below, should a library ever name every code.
_NAME_SCAN_LIMIT = 1024


def _library_names(name_of) -> dict:
    """Code -> name, asking the library (``emf_kind_name`` or ``emf_priority_name``) for codes
    0, 1, 2, ... until it answers ``"unknown"``. Done once, at import."""
    names = {}
    for code in range(_NAME_SCAN_LIMIT):
        name = name_of(code).decode("utf-8")
        if name == _UNKNOWN_NAME:
            break
        names[code] = name
    return names


def _name_or_code(table: dict, name_of, code: int) -> Union[str, int]:
    """The library's name for ``code``, or ``code`` itself when the library has none."""
    name = table.get(code)
    if name is None:
        # Not in the scanned range (e.g. after a gap in the codes): ask the library directly.
        name = name_of(code).decode("utf-8")
        if name == _UNKNOWN_NAME:
            return code
    return name


#: Kind code -> name, as the library names them (``emf_kind_name``).
KIND_NAMES = _library_names(lib.emf_kind_name)
#: Priority code -> name, as the library names them (``emf_priority_name``).
PRIORITY_NAMES = _library_names(lib.emf_priority_name)
_PRIORITY_CODES = {name: code for code, name in PRIORITY_NAMES.items()}
#: Id type code -> the name used in :attr:`Envelope.id_type`.
ID_TYPE_NAMES = {
    EMF_ID_NONE: "none",
    EMF_ID_NULL: "null",
    EMF_ID_INT: "int",
    EMF_ID_STRING: "string",
    EMF_ID_OTHER_NUMBER: "other_number",
}

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


class BigNumber(str):
    """An integer id whose exact decimal text Python refuses to turn into an ``int``.

    Python limits int/str conversions to ``sys.get_int_max_str_digits()`` digits (4300 by
    default, since 3.11). An ``EMF_ID_OTHER_NUMBER`` id longer than that comes back as this
    ``str`` subclass holding the exact JSON text (e.g. ``BigNumber('1234...')``), so it is
    neither lost nor mistaken for a string id: test with ``isinstance(id, BigNumber)``. To get
    the ``int``, raise the limit (``sys.set_int_max_str_digits(0)``) and call ``int(id)``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"BigNumber({str.__repr__(self)})"


_JSON_INTEGER = re.compile(r"-?[0-9]+")


def _number_from_json(text: str) -> Union[int, float, BigNumber]:
    """A JSON number's text (from ``emf_message_id_json``) as an exact ``int``, a ``float``,
    or a :class:`BigNumber` when Python's int/str digit limit refuses the integer."""
    if _JSON_INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than sys.get_int_max_str_digits()
            return BigNumber(text)
    return float(text)


def _invalid(message: str) -> Error:
    return Error(EMF_ERR_INVALID_ARGUMENT, message)


def _unsigned(value: int, name: str, limit: int) -> int:
    """Refuses what ctypes would otherwise wrap silently (negative or too big)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise _invalid(f"{name} {value} is out of range 0..{limit}")
    return value


def _input(data: BytesLike, name: str = "data"):
    """Returns ``(pointer argument, length)`` for a bytes-like object.

    ``bytes`` is passed as it is and a writable contiguous buffer through ``from_buffer``;
    both without a copy. A read-only buffer that is not ``bytes`` (a memoryview of bytes, an
    mmap opened read-only, ...) is copied once: ctypes has no zero-copy path for it.
    """
    if isinstance(data, bytes):
        return data, len(data)
    if isinstance(data, str):
        raise TypeError(f"{name} must be bytes-like, not str")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None
    n = view.nbytes
    if n == 0:
        return None, 0
    if view.readonly or not view.c_contiguous:
        copy = view.tobytes()
        return copy, len(copy)
    return (ctypes.c_char * n).from_buffer(view.cast("B")), n


def _take(buf: emf_buf_t) -> bytes:
    """Copies an ``emf_buf_t`` the library returned into ``bytes`` and releases it."""
    try:
        if not buf.data or buf.len == 0:
            return b""
        address = ctypes.addressof(buf.data.contents)
        return (ctypes.c_char * buf.len).from_address(address).raw
    finally:
        check(lib.emf_buf_free(byref(buf)))


def abi_version() -> int:
    """``emf_abi_version()`` of the loaded library."""
    return lib.emf_abi_version()


def version() -> str:
    """The library version, e.g. ``"0.1.0"``."""
    return lib.emf_version_string().decode("ascii")


# The package's one conversion of priorities (the engine has one priority for envelopes and
# the task queue): erlmcp_flow.queue uses these two too.
def _priority_code(priority: Union[str, int]) -> int:
    """A priority name (``"critical"``, ``"high"``, ``"normal"``, ``"low"``; the library's
    own, see :data:`PRIORITY_NAMES`) or an ``EMF_PRIORITY_*`` code -> the code. An unknown
    name raises an :class:`Error` ``EMF_ERR_INVALID_ARGUMENT`` that is also a ``ValueError``;
    an int code is checked by the library (only its u32 range here)."""
    if isinstance(priority, str):
        try:
            return _PRIORITY_CODES[priority]
        except KeyError:
            raise _InvalidValue(
                f"unknown priority {priority!r} (expected one of {', '.join(_PRIORITY_CODES)})"
            ) from None
    return _unsigned(priority, "priority", _U32_MAX)


def _priority_name(code: int) -> Union[str, int]:
    """The library's name of a priority code; a code it has no name for stays an int."""
    return _name_or_code(PRIORITY_NAMES, lib.emf_priority_name, code)


def encode(
    json_text: Union[str, BytesLike],
    *,
    priority: Union[str, int] = "normal",
    created_at_us: int = 0,
    deadline_us: int = 0,
    checksum: bool = False,
) -> bytes:
    """Encodes MCP / JSON-RPC 2.0 text (one message or a batch array) as an archive.

    ``priority`` is a name the library gives a priority (:data:`PRIORITY_NAMES`, from
    ``emf_priority_name``: ``"critical"``, ``"high"``, ``"normal"``, ``"low"``) or an
    ``EMF_PRIORITY_*`` code; ``created_at_us`` 0 means now, ``deadline_us`` 0 means none.
    ``checksum=True`` adds a CRC32C (4 bytes): every reader then refuses the archive with
    ``EMF_ERR_CORRUPT`` if any bit of it changed, inside strings and numbers too (without
    it, only the structure is checked). A ``str`` is encoded as UTF-8. Raises :class:`Error`
    ``EMF_ERR_INVALID_ARGUMENT`` for invalid UTF-8, JSON or JSON-RPC, or an unknown priority.
    """
    if not isinstance(checksum, bool):
        raise TypeError(f"checksum must be a bool, not {type(checksum).__name__}")
    if isinstance(json_text, str):
        json_text = json_text.encode("utf-8")
    opts = emf_encode_options_t(
        priority=_priority_code(priority),
        created_at_us=_unsigned(created_at_us, "created_at_us", _U64_MAX),
        deadline_us=_unsigned(deadline_us, "deadline_us", _U64_MAX),
    )
    ptr, n = _input(json_text, "json")
    out = emf_buf_t()
    flags = EMF_ARCHIVE_CHECKSUM if checksum else 0
    check(lib.emf_json_to_archive_ex(ptr, n, byref(opts), flags, byref(out)))
    return _take(out)


def decode(archive: BytesLike) -> str:
    """Validates an archive and returns it as JSON-RPC text. ``EMF_ERR_CORRUPT`` when the
    bytes are not a valid archive."""
    ptr, n = _input(archive, "archive")
    out = emf_buf_t()
    check(lib.emf_archive_to_json(ptr, n, byref(out)))
    return _take(out).decode("utf-8")


def validate(archive: BytesLike) -> int:
    """Validates an archive and returns its number of envelopes (1, or the batch size)."""
    ptr, n = _input(archive, "archive")
    count = c_size_t(0)
    check(lib.emf_archive_validate(ptr, n, byref(count)))
    return count.value


def compress_if_needed(
    data: BytesLike, threshold: int = EMF_COMPRESS_DEFAULT_THRESHOLD
) -> tuple[bytes, bool]:
    """Zlib-compresses ``data`` when it is at least ``threshold`` bytes long and shrinks below
    0.8 of its size. Returns ``(bytes to send, compressed?)``."""
    threshold = _unsigned(threshold, "threshold", ctypes.c_size_t(-1).value)
    ptr, n = _input(data)
    out = emf_buf_t()
    compressed = c_bool(False)
    check(lib.emf_compress_if_needed(ptr, n, threshold, byref(out), byref(compressed)))
    return _take(out), compressed.value


def decompress(data: BytesLike, max_size: int = 64 * 1024 * 1024) -> bytes:
    """Decompresses a zlib stream. ``EMF_ERR_TOO_LARGE`` when the output would exceed
    ``max_size`` bytes, ``EMF_ERR_CORRUPT`` for a bad stream."""
    max_size = _unsigned(max_size, "max_size", ctypes.c_size_t(-1).value)
    ptr, n = _input(data)
    out = emf_buf_t()
    check(lib.emf_decompress(ptr, n, max_size, byref(out)))
    return _take(out)


class _Missing:
    """The type of :data:`NO_ID`."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_ID"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return (_Missing, ())


#: The ``id`` of an envelope that has no id at all (a notification), as opposed to an id
#: that is JSON ``null`` (``None``). Falsy, and a singleton: test with ``is NO_ID``.
NO_ID = _Missing()


@dataclass(frozen=True)
class Envelope:
    """What one envelope of a :class:`Message` says.

    ``id`` is ``NO_ID`` when the message has no id, ``None`` for a JSON ``null`` id, else an
    ``int``, a ``str`` or (for a non-integer number id) a ``float``; integers are exact at any
    size, except that one with more digits than Python's int/str limit
    (``sys.get_int_max_str_digits()``) comes back as a :class:`BigNumber`, a ``str`` subclass
    holding its exact text. ``id_type`` names the case (``"none"``, ``"null"``, ``"int"``,
    ``"string"``, ``"other_number"``). ``kind`` and ``priority`` are the library's names
    (``"request"``, ``"normal"``); a code the library does not name stays an ``int``.
    ``method`` and ``error_code`` are ``None`` when absent.
    """

    kind: Union[str, int]
    priority: Union[str, int]
    created_at_us: int
    deadline_us: int
    id: object
    id_type: str
    method: Optional[str]
    error_code: Optional[int]

    @property
    def has_id(self) -> bool:
        """True unless the envelope has no id member (a ``null`` id is an id)."""
        return self.id is not NO_ID


def _free_handle(handle) -> None:
    # A finalizer: must not raise. A failure here would mean the handle was already freed,
    # which the Message never does twice.
    lib.emf_message_free(handle)


def _borrowed_text(ptr, length: int) -> str:
    return ctypes.string_at(ptr, length).decode("utf-8")


class Message:
    """A validated archive held by the library, for field access (``emf_message_t``).

    ``Message(archive)`` copies and validates the bytes. Use it as a context manager or call
    :meth:`close` (idempotent); it is also freed when garbage-collected. Any use after
    ``close`` raises :class:`ValueError`. Methods may be called from several threads; a
    lock keeps ``close`` from freeing the handle while another thread uses it.
    """

    def __init__(self, archive: BytesLike):
        ptr, n = _input(archive, "archive")
        handle = emf_message_p()
        check(lib.emf_message_open(ptr, n, byref(handle)))
        self._handle = handle
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_handle, handle)

    @classmethod
    def from_json(cls, json_text: Union[str, BytesLike], **options) -> "Message":
        """``Message(encode(json_text, **options))``."""
        return cls(encode(json_text, **options))

    # -- lifetime --

    def close(self) -> None:
        """Frees the handle. Calling it again does nothing."""
        with self._lock:
            if self._finalizer.detach() is not None:
                check(lib.emf_message_free(self._handle))
            self._handle = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Message":
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self):
        handle = self._handle
        if handle is None:
            raise ValueError("operation on a closed erlmcp_flow.Message")
        return handle

    # -- access --

    def __len__(self) -> int:
        with self._lock:
            count = c_size_t(0)
            check(lib.emf_message_count(self._live(), byref(count)))
            return count.value

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"envelope index must be an int, not {type(index).__name__}")
        if index < 0:
            index += len(self)
            if index < 0:
                raise IndexError("envelope index out of range")
        return index

    def envelope(self, index: int) -> Envelope:
        """Describes envelope ``index`` (negative counts from the end)."""
        index = self._index(index)
        with self._lock:
            info = emf_envelope_info_t()
            self._check_indexed(lib.emf_message_envelope(self._live(), index, byref(info)), index)
            # Copy what the pointers borrow while the handle is certainly alive.
            method = _borrowed_text(info.method, info.method_len) if info.method else None
            id_value: object
            if info.id_type == EMF_ID_NONE:
                id_value = NO_ID
            elif info.id_type == EMF_ID_NULL:
                id_value = None
            elif info.id_type == EMF_ID_INT:
                id_value = info.id_int
            elif info.id_type == EMF_ID_STRING:
                id_value = _borrowed_text(info.id_str, info.id_str_len)
            elif info.id_type == EMF_ID_OTHER_NUMBER:
                # A float or an integer beyond int64: the library writes this id alone as
                # exact JSON text.
                id_value = _number_from_json(self._id_json_locked(index))
            else:
                # An id type newer than this package: still readable from its JSON text.
                id_value = json.loads(self._id_json_locked(index), parse_int=_number_from_json)
        return Envelope(
            kind=_name_or_code(KIND_NAMES, lib.emf_kind_name, info.kind),
            priority=_priority_name(info.priority),
            created_at_us=info.created_at_us,
            deadline_us=info.deadline_us,
            id=id_value,
            id_type=ID_TYPE_NAMES.get(info.id_type, str(info.id_type)),
            method=method,
            error_code=info.error_code if info.has_error else None,
        )

    def envelopes(self) -> list[Envelope]:
        """All envelopes, in order."""
        return [self.envelope(i) for i in range(len(self))]

    def __iter__(self):
        return iter(self.envelopes())

    def _check_indexed(self, status: int, index: int) -> None:
        """:func:`check`, but an index past the end raises :class:`IndexError` (chained to
        the library's :class:`Error`), as Python sequences do."""
        if status != EMF_OK:
            error = Error(status, last_error_message())
            if status == EMF_ERR_INVALID_ARGUMENT and index >= self._count_locked():
                raise IndexError(error.message) from error
            raise error

    def _count_locked(self) -> int:
        count = c_size_t(0)
        check(lib.emf_message_count(self._live(), byref(count)))
        return count.value

    def _to_json_locked(self) -> str:
        out = emf_buf_t()
        check(lib.emf_message_to_json(self._live(), byref(out)))
        return _take(out).decode("utf-8")

    def _id_json_locked(self, index: int) -> str:
        out = emf_buf_t()
        self._check_indexed(lib.emf_message_id_json(self._live(), index, byref(out)), index)
        return _take(out).decode("utf-8")

    def id_json(self, index: int) -> str:
        """The id of envelope ``index`` as JSON text (``1``, ``"abc"``, ``null``; exact for
        any number). :class:`Error` ``EMF_ERR_NOT_FOUND`` when the envelope has no id."""
        index = self._index(index)
        with self._lock:
            return self._id_json_locked(index)

    def to_json(self) -> str:
        """The whole message as JSON-RPC text."""
        with self._lock:
            return self._to_json_locked()

    def payload_json(self, index: int) -> str:
        """The payload of envelope ``index`` as JSON: ``params`` for requests, notifications
        and tasks, ``result`` for responses and results, the error object for errors.
        :class:`Error` ``EMF_ERR_NOT_FOUND`` when there is none."""
        index = self._index(index)
        with self._lock:
            out = emf_buf_t()
            self._check_indexed(
                lib.emf_message_payload_json(self._live(), index, byref(out)), index
            )
            return _take(out).decode("utf-8")

    def __repr__(self) -> str:
        if self._handle is None:
            return "<erlmcp_flow.Message closed>"
        return f"<erlmcp_flow.Message envelopes={len(self)}>"


__all__ = [
    "EMF_KIND_REQUEST", "EMF_KIND_RESPONSE", "EMF_KIND_NOTIFICATION", "EMF_KIND_TASK",
    "EMF_KIND_RESULT", "EMF_KIND_ERROR",
    "EMF_PRIORITY_CRITICAL", "EMF_PRIORITY_HIGH", "EMF_PRIORITY_NORMAL", "EMF_PRIORITY_LOW",
    "EMF_ID_NONE", "EMF_ID_NULL", "EMF_ID_INT", "EMF_ID_STRING", "EMF_ID_OTHER_NUMBER",
    "EMF_COMPRESS_DEFAULT_THRESHOLD", "EMF_MAX_INPUT_LEN", "EMF_ARCHIVE_CHECKSUM",
    "EMF_ARCHIVE_IMPLICIT_JSONRPC", "EMF_BUILDER_UNIQUE_KEYS", "EMF_VALUE_MAX_DEPTH",
    "EMF_VALUE_NULL", "EMF_VALUE_BOOL", "EMF_VALUE_INT", "EMF_VALUE_UINT", "EMF_VALUE_FLOAT", "EMF_VALUE_NUMBER_TEXT", "EMF_VALUE_BIG_INT_LE", "EMF_VALUE_STRING", "EMF_VALUE_KEY", "EMF_VALUE_BEGIN_ARRAY", "EMF_VALUE_BEGIN_OBJECT", "EMF_VALUE_END",
    "KIND_NAMES", "PRIORITY_NAMES", "ID_TYPE_NAMES", "NO_ID", "BigNumber",
    "Envelope", "Message",
    "abi_version", "version", "encode", "decode", "validate",
    "compress_if_needed", "decompress",
]  # fmt: skip
