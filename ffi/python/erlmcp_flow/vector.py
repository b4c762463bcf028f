"""Vector kernels, int8 quantization and the HNSW index: thin wrappers of ``emf_quantize_f32``,
``emf_dequantize_i8``, ``emf_distance_f32`` / ``_f16``, ``emf_cosine_distance_i8``,
``emf_dot_i8`` and ``emf_hnsw_*`` (``crates/capi/src/vector.rs``).

* :func:`quantize` / :func:`dequantize`: a float vector as int8 codes with one scale per
  vector (``x ≈ scale · codes``).
* :func:`distance` (``"cosine"``: ``1 − cos``, ``"dot"``: ``1 − a·b``, ``"l2sq"``:
  ``|a − b|²``) for float32 and float16 vectors, :func:`cosine_distance_quantized` and :func:`dot_i8` for
  int8 codes. Every distance is computed by the library (SIMD kernels); none is re-implemented
  here.
* :class:`HnswIndex`: an approximate nearest-neighbour index over int8 codes, built in memory
  or mapped read-only from a saved file (:meth:`HnswIndex.open`).

**NumPy** is needed by this module only, and imported on first use: ``import erlmcp_flow``
works without it (the constants below too); calling a function here without NumPy raises
``ImportError``. Install it with ``pip install 'erlmcp-flow[vector]'``.

**Zero copy.** A NumPy array that already has the type the C ABI takes — C-contiguous, aligned,
native byte order, ``float32`` for vectors (``float16`` for :func:`distance` on half floats,
``int8`` for codes), ``uint64`` for ids — is passed to the library by its buffer address (its
``arr.ctypes.data``), without a copy, and the library reads it in place. Anything else (a list,
``float64``, ``float16`` given to the index, a strided slice such as ``x[:, ::2]`` or
``x[::2]``, ``int64`` ids) is converted first with ``np.ascontiguousarray``: **a copy is made
in that case**. A dtype that does not convert (strings, objects, complex numbers, booleans for
vectors, floats for ids) raises ``TypeError``. Results are NumPy arrays allocated here and
filled in place by the C call.

**Threads.** An index may be used by any number of threads at once (inserts, removals and
searches run concurrently in the library; ctypes releases the GIL during each call, and
``search_batch`` / ``insert_batch`` also spread one call over library threads).
:meth:`HnswIndex.compact` holds the other calls off while it runs (and waits for those in
progress; :meth:`HnswIndex.try_compact` returns ``False`` instead). :meth:`HnswIndex.close`
refuses new calls, waits for those in progress, then frees the handle, so a closed index
raises :class:`~erlmcp_flow.Error` (``EMF_ERR_CLOSED``, also a ``ValueError``) instead of
touching freed memory.

>>> import numpy as np
>>> from erlmcp_flow import HnswIndex, dequantize, quantize
>>> codes, scale = quantize(np.array([0.1, -0.05, 0.0, 0.2], dtype=np.float32))
>>> codes.tolist(), round(scale * 127, 6), [round(float(v), 3) for v in dequantize(codes, scale)]
([64, -32, 0, 127], 0.2, [0.101, -0.05, 0.0, 0.2])
>>> with HnswIndex(dim=2) as index:
...     index.insert_batch([10, 20, 30], np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
...     ids, distances = index.search(np.array([1, 0.1], dtype=np.float32), k=2)
...     ids.tolist(), len(index)
([10, 30], 3)
"""

from __future__ import annotations

import ctypes
import operator
import os
import threading
from ctypes import byref, c_double, c_float, c_int64, c_size_t, c_uint64
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from ._errors import (
    EMF_ERR_BUSY,
    EMF_ERR_CLOSED,
    EMF_ERR_TOO_LARGE,
    EMF_OK,
    Error,
    check,
    error_for,
    last_error_message,
)
from ._native import emf_hnsw_hit_t, emf_hnsw_p, emf_hnsw_params_t, lib
from .codec import EMF_MAX_INPUT_LEN
from .queue import _InvalidValue, _SharedHandle
from .ring import _SIZE_MAX, _U32_MAX, _c_string, _unsigned

# Metrics (include/erlmcp_flow.h).
EMF_METRIC_COSINE = 0
EMF_METRIC_DOT = 1
EMF_METRIC_L2SQ = 2

# Originals kept beside the int8 codes for re-ranking (include/erlmcp_flow.h).
EMF_ORIGINALS_NONE = 0
EMF_ORIGINALS_F16 = 1
EMF_ORIGINALS_F32 = 2

# Search flag (include/erlmcp_flow.h).
EMF_SEARCH_RERANK = 1

#: Names accepted for ``metric=``: ``"cosine"`` (``1 − cos(a, b)``), ``"dot"`` (``1 − a·b``,
#: for vectors normalised beforehand) and ``"l2sq"`` (``|a − b|²``).
METRICS = {"cosine": EMF_METRIC_COSINE, "dot": EMF_METRIC_DOT, "l2sq": EMF_METRIC_L2SQ}

#: Names accepted for ``originals=``: None (or ``"none"``: int8 codes only), ``"f16"``,
#: ``"f32"`` (the vectors also kept as half floats / floats, for ``search(rerank=True)``).
ORIGINALS = {"none": EMF_ORIGINALS_NONE, "f16": EMF_ORIGINALS_F16, "f32": EMF_ORIGINALS_F32}

_METRIC_NAMES = {code: name for name, code in METRICS.items()}
_ORIGINALS_NAMES = {EMF_ORIGINALS_NONE: None, EMF_ORIGINALS_F16: "f16", EMF_ORIGINALS_F32: "f32"}

_U64_MAX = 2**64 - 1

#: The id in the unused slots of :meth:`HnswIndex.search_batch` results (``2**64 - 1``);
#: their distance is ``inf``.
NO_HIT_ID = _U64_MAX


# --- NumPy, imported on first use -----------------------------------------------------------

_np = None
_HIT_DTYPE = None  # emf_hnsw_hit_t as a NumPy structured dtype
_import_lock = threading.Lock()


def _numpy():
    """The ``numpy`` module, imported (and the hit dtype checked) on the first call."""
    global _np, _HIT_DTYPE
    if _np is not None:
        return _np
    with _import_lock:
        if _np is None:
            try:
                import numpy
            except ImportError as e:
                raise ImportError(
                    "erlmcp_flow.vector needs NumPy; install it with "
                    "`pip install numpy` (or `pip install 'erlmcp-flow[vector]'`)"
                ) from e
            hit = numpy.dtype([("id", numpy.uint64), ("distance", numpy.float32)], align=True)
            # The library writes arrays of emf_hnsw_hit_t: the dtype must have its layout.
            if (
                hit.itemsize != ctypes.sizeof(emf_hnsw_hit_t)
                or hit.fields["id"][1] != emf_hnsw_hit_t.id.offset
                or hit.fields["distance"][1] != emf_hnsw_hit_t.distance.offset
            ):
                raise ImportError("erlmcp_flow.vector: emf_hnsw_hit_t layout mismatch")
            _HIT_DTYPE = hit
            _np = numpy
    return _np


# --- argument conversion --------------------------------------------------------------------

# dtype kinds converted to float32 (with a copy): floats, signed and unsigned integers.
_FLOAT_SOURCE_KINDS = "fiu"


def _is_ready(arr, dtype) -> bool:
    """True when ``arr`` can be handed to C as is: an ndarray of exactly ``dtype`` (native
    byte order), C-contiguous and aligned."""
    flags = arr.flags
    return arr.dtype == dtype and flags.c_contiguous and flags.aligned


def _contiguous(np, arr, dtype):
    """``arr`` converted to a C-contiguous, aligned ``dtype`` array (a copy)."""
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not out.flags.aligned:  # a contiguous view of unaligned memory is returned as is
        out = out.copy()
    return out


def _floats(np, x, name: str, dtype=None):
    """``x`` as an ndarray the C ABI can read as ``dtype`` (float32 by default): ``x`` itself
    when it already is one (zero copy), else a converted copy. Shape is not checked here."""
    dtype = np.float32 if dtype is None else dtype
    if isinstance(x, np.ndarray) and _is_ready(x, dtype):
        return x
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in _FLOAT_SOURCE_KINDS:
        raise TypeError(
            f"{name} must hold real numbers (float32 is passed without a copy), "
            f"not {arr.dtype}"
        )
    return _contiguous(np, arr, dtype)


def _shape_error(name: str, want: str, arr) -> _InvalidValue:
    return _InvalidValue(f"{name} must be {want}; got shape {tuple(arr.shape)}")


def _vector(np, x, dim: Optional[int], name: str):
    """A 1-D float32 vector (of ``dim`` values when ``dim`` is given)."""
    arr = _floats(np, x, name)
    if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim):
        want = "a 1-D array" if dim is None else f"a 1-D array of {dim} values"
        raise _shape_error(name, want, arr)
    return arr


def _matrix(np, x, dim: Optional[int], name: str, single: str):
    """A 2-D float32 array of ``dim`` columns (any number when ``dim`` is None), row after
    row. ``single``: the method taking one vector, named in the error for a 1-D array."""
    arr = _floats(np, x, name)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        hint = f" (for one vector use {single}, or x[None, :])" if arr.ndim == 1 else ""
        cols = "dim" if dim is None else dim
        raise _shape_error(name, f"a 2-D array (n, {cols}){hint}", arr)
    return arr


def _codes(np, x, name: str):
    """A 1-D int8 code vector: ``x`` itself when it is one, else a checked copy."""
    if isinstance(x, np.ndarray) and _is_ready(x, np.int8) and x.ndim == 1:
        return x
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold int8 codes, not {arr.dtype}")
    if arr.ndim != 1:
        raise _shape_error(name, "a 1-D array", arr)
    if arr.size and (int(arr.min()) < -128 or int(arr.max()) > 127):
        raise _InvalidValue(f"{name} holds values outside the int8 range -128..127")
    return _contiguous(np, arr, np.int8)


def _id(value, name: str = "id") -> int:
    """An id: an int (or NumPy integer) in 0..2**64-1. Booleans are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not 0 <= value <= _U64_MAX:
        raise _InvalidValue(f"{name} {value} is out of range 0..2**64-1")
    return value


def _ids(np, ids, name: str = "ids"):
    """A 1-D uint64 id array: ``ids`` itself when it is one (zero copy), else a checked copy."""
    if isinstance(ids, np.ndarray):
        if _is_ready(ids, np.uint64) and ids.ndim == 1:
            return ids
        if ids.ndim != 1:
            raise _shape_error(name, "a 1-D array", ids)
        kind = ids.dtype.kind
        if kind == "u":
            return _contiguous(np, ids, np.uint64)
        if kind == "i":
            if ids.size and int(ids.min()) < 0:
                raise _InvalidValue(f"{name} holds a negative id ({int(ids.min())})")
            return _contiguous(np, ids, np.uint64)
        if kind != "O":
            raise TypeError(f"{name} must hold integers, not {ids.dtype}")
    elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{name} must be an iterable of ints, not {type(ids).__name__}")
    return np.fromiter((_id(i, f"{name} element") for i in ids), dtype=np.uint64)


def _count(value, name: str, minimum: int = 1) -> int:
    value = _unsigned(value, name, _SIZE_MAX)
    if value < minimum:
        raise _InvalidValue(f"{name} must be at least {minimum} (got {value})")
    return value


def _metric(metric: Union[str, int]) -> int:
    if isinstance(metric, str):
        try:
            return METRICS[metric]
        except KeyError:
            raise _InvalidValue(
                f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})"
            ) from None
    return _unsigned(metric, "metric", _U32_MAX)  # an EMF_METRIC_* code, checked by the library


def _originals(originals: Union[str, int, None]) -> int:
    if originals is None:
        return EMF_ORIGINALS_NONE
    if isinstance(originals, str):
        try:
            return ORIGINALS[originals]
        except KeyError:
            raise _InvalidValue(
                f"unknown originals {originals!r} (expected None, 'f16' or 'f32')"
            ) from None
    return _unsigned(originals, "originals", _U32_MAX)  # an EMF_ORIGINALS_* code


# --- filters --------------------------------------------------------------------------------


class IdFilter:
    """The ids a search may return, as the bitset the C ABI takes (id ``i`` is bit ``i % 64``
    of word ``i // 64``).

    ``allowed`` is an iterable of ids (a NumPy integer array is converted without a Python
    loop) or a 1-D NumPy ``bool`` mask (``mask[i]`` allows id ``i``). ``search(...,
    filter=...)`` accepts the same values and builds an ``IdFilter`` per call: build one
    yourself to reuse it across searches. An empty set allows nothing.

    The bitset has ``max(id) // 64 + 1`` words, so the largest id sets its size: the library
    takes at most ``EMF_MAX_INPUT_LEN`` bytes (ids below about 1.7e10); a larger id raises
    ``Error`` (``EMF_ERR_TOO_LARGE``) here, before anything that size is allocated."""

    __slots__ = ("words",)

    def __init__(self, allowed):
        np = _np or _numpy()
        if isinstance(allowed, IdFilter):
            self.words = allowed.words
            return
        if isinstance(allowed, np.ndarray) and allowed.dtype == np.bool_:
            self.words = _mask_words(np, allowed)
        else:
            self.words = _id_words(np, _ids(np, allowed, "filter"))

    def __len__(self) -> int:
        """The number of ids allowed."""
        np = _np or _numpy()
        return int(np.unpackbits(self.words.view(np.uint8)).sum())

    def __contains__(self, id) -> bool:
        id = _id(id)
        word = id >> 6
        return word < len(self.words) and bool(int(self.words[word]) >> (id & 63) & 1)

    def __repr__(self) -> str:
        return f"<erlmcp_flow.IdFilter {len(self.words)} words>"


def _word_count(bits: int) -> int:
    """Words of a bitset holding ``bits`` bits: one at least (with ``filter_words == 0`` the
    library would take "no filter", i.e. every id, so an empty set is one zero word)."""
    words = max(1, -(-bits // 64))
    if words * 8 > EMF_MAX_INPUT_LEN:
        raise Error(
            EMF_ERR_TOO_LARGE,
            f"filter: a bitset for ids up to {bits - 1} needs {words * 8} bytes, more than "
            f"the library's maximum of {EMF_MAX_INPUT_LEN} bytes",
        )
    return words


def _mask_words(np, mask):
    if mask.ndim != 1:
        raise _shape_error("filter mask", "a 1-D bool array", mask)
    words = _word_count(mask.shape[0])
    packed = np.packbits(mask, bitorder="little")  # id i: bit i % 8 of byte i // 8
    buf = np.zeros(words * 8, dtype=np.uint8)
    buf[: packed.shape[0]] = packed
    # Little-endian words give id i at bit i % 64 of word i // 64; as native words (no copy
    # on a little-endian machine).
    return buf.view("<u8").astype(np.uint64, copy=False)


def _id_words(np, ids):
    if ids.size == 0:
        return np.zeros(1, dtype=np.uint64)
    words = np.zeros(_word_count(int(ids.max()) + 1), dtype=np.uint64)
    np.bitwise_or.at(words, ids >> np.uint64(6), np.uint64(1) << (ids & np.uint64(63)))
    return words


def _filter_arg(np, filter):
    """(address, number of words, the words array) of a search filter; (None, 0, None) for
    no filter. The caller holds the array until the C call returns."""
    if filter is None:
        return None, 0, None
    f = filter if isinstance(filter, IdFilter) else IdFilter(filter)
    return f.words.ctypes.data, len(f.words), f.words


# --- kernels --------------------------------------------------------------------------------


def quantize(x) -> Tuple["np.ndarray", float]:
    """Quantizes a 1-D vector to int8 codes with one scale (``emf_quantize_f32``): returns
    ``(codes, scale)``, ``codes`` an int8 array, with ``x ≈ scale · codes`` to within
    ``scale / 2`` per value (``scale`` is ``max |x| / 127``; 0 for a zero vector).

    A float32 C-contiguous ``x`` is read in place; anything else is copied to float32 first.
    A NaN or infinite value is refused by the library (``EMF_ERR_INVALID_ARGUMENT``)."""
    np = _np or _numpy()
    v = _vector(np, x, None, "x")
    codes = np.empty(v.shape[0], dtype=np.int8)
    scale = c_float(0.0)
    check(lib.emf_quantize_f32(v.ctypes.data, v.shape[0], codes.ctypes.data, byref(scale)))
    return codes, scale.value


def dequantize(codes, scale: float) -> "np.ndarray":
    """The float32 vector ``scale · codes`` (``emf_dequantize_i8``). An int8 C-contiguous
    ``codes`` is read in place; other integer arrays are checked (-128..127) and copied."""
    np = _np or _numpy()
    c = _codes(np, codes, "codes")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a number, not {type(scale).__name__}") from None
    out = np.empty(c.shape[0], dtype=np.float32)
    check(lib.emf_dequantize_i8(c.ctypes.data, c.shape[0], scale, out.ctypes.data))
    return out


def _pair(np, a, b, dtype):
    a = _floats(np, a, "a", dtype)
    b = _floats(np, b, "b", dtype)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise _InvalidValue(
            f"a and b must be 1-D arrays of the same length; got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


def distance(a, b, metric: Union[str, int] = "cosine") -> float:
    """The distance between two 1-D vectors of the same length: ``"cosine"`` (``1 − cos``),
    ``"dot"`` (``1 − a·b``) or ``"l2sq"`` (``|a − b|²``), or an ``EMF_METRIC_*`` code.

    Two ``float16`` arrays go to ``emf_distance_f16`` (read in place through
    ``.view(np.uint16)``, the half floats' bits); anything else to ``emf_distance_f32``,
    ``float32`` C-contiguous arrays read in place, other inputs (lists, ``float64``, one
    ``float16`` with one ``float32``) copied to float32 first. The result is computed in the
    library (accumulated in double precision or better)."""
    np = _np or _numpy()
    code = _metric(metric)
    out = c_double(0.0)
    if (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.dtype == np.float16
        and b.dtype == np.float16
    ):
        a, b = _pair(np, a, b, np.float16)
        ua, ub = a.view(np.uint16), b.view(np.uint16)
        check(lib.emf_distance_f16(code, ua.ctypes.data, ub.ctypes.data, a.shape[0], byref(out)))
    else:
        a, b = _pair(np, a, b, np.float32)
        check(lib.emf_distance_f32(code, a.ctypes.data, b.ctypes.data, a.shape[0], byref(out)))
    return out.value


def _code_pair(np, a, b):
    a = _codes(np, a, "a")
    b = _codes(np, b, "b")
    if a.shape != b.shape:
        raise _InvalidValue(
            f"a and b must have the same length; got {a.shape[0]} and {b.shape[0]}"
        )
    return a, b


def cosine_distance_quantized(codes_a, codes_b) -> float:
    """The cosine distance ``1 − cos`` between two int8 code vectors (their scales cancel),
    ``emf_cosine_distance_i8``."""
    np = _np or _numpy()
    a, b = _code_pair(np, codes_a, codes_b)
    out = c_double(0.0)
    check(lib.emf_cosine_distance_i8(a.ctypes.data, b.ctypes.data, a.shape[0], byref(out)))
    return out.value


def dot_i8(a, b) -> int:
    """The exact integer dot product of two int8 code vectors (``emf_dot_i8``); multiply by
    both scales for the dot product of the vectors they stand for."""
    np = _np or _numpy()
    a, b = _code_pair(np, a, b)
    out = c_int64(0)
    check(lib.emf_dot_i8(a.ctypes.data, b.ctypes.data, a.shape[0], byref(out)))
    return out.value


# --- the index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HnswParams:
    """An index's parameters (``emf_hnsw_params_t``, as the library reports them)."""

    dim: int
    #: ``"cosine"``, ``"dot"`` or ``"l2sq"`` (an ``int`` for a code this package has no name for).
    metric: Union[str, int]
    m: int
    ef_construction: int
    ef_search: int
    #: None, ``"f16"`` or ``"f32"`` (an ``int`` for an unknown code).
    originals: Union[str, int, None]
    seed: int

    @classmethod
    def _from_c(cls, p: emf_hnsw_params_t) -> "HnswParams":
        return cls(
            dim=p.dim,
            metric=_METRIC_NAMES.get(p.metric, p.metric),
            m=p.m,
            ef_construction=p.ef_construction,
            ef_search=p.ef_search,
            originals=_ORIGINALS_NAMES.get(p.originals, p.originals),
            seed=p.seed,
        )


class _Closed(Error, ValueError):
    """A call on a closed index: an :class:`~erlmcp_flow.Error` with ``EMF_ERR_CLOSED``, and
    a ``ValueError`` like the package's other closed handles."""

    def __init__(self, what: str):
        super().__init__(EMF_ERR_CLOSED, f"operation on a closed erlmcp_flow.{what}")


class HnswIndex(_SharedHandle):
    """An HNSW approximate nearest-neighbour index over int8-quantized vectors
    (``emf_hnsw_new``).

    ``dim``: vector dimensions (1..65536), or 0 (the default): the first insert fixes it to
    its vector's length (of concurrent first inserts exactly one does; the others fit it or
    fail); until then :attr:`dim` is 0, a search finds nothing, and a batch search of
    queries and :meth:`save` are refused. ``metric``: ``"cosine"`` (default), ``"dot"`` or
    ``"l2sq"``. ``m``: neighbours per node (``2·m`` on level 0; 2..128). ``ef_construction``:
    candidates kept while inserting. ``ef_search``: candidates kept by a search that passes
    ``ef=0``. ``originals``: None (codes only), ``"f16"`` or ``"f32"`` to also keep the
    vectors for ``search(rerank=True)``. ``seed``: of the level draws (None: the library's
    default seed, so builds are reproducible). The library checks the ranges.

    Ids are any ints in ``0..2**64-1`` given at insertion, or picked by the index
    (:meth:`insert_new`). :meth:`open` maps a saved file
    read-only (searches only: mutations raise ``Error`` with ``EMF_ERR_UNSUPPORTED``);
    :meth:`load` reads it into a new index that can change.

    Thread-safe (see the module notes); a context manager; freed by :meth:`close` or by the
    garbage collector. ``len(index)`` is the number of live vectors."""

    _free = lib.emf_hnsw_free

    def __init__(
        self,
        dim: int = 0,
        metric: Union[str, int] = "cosine",
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 50,
        originals: Union[str, int, None] = None,
        seed: Optional[int] = None,
    ):
        p = emf_hnsw_params_t()
        check(lib.emf_hnsw_params_default(_unsigned(dim, "dim", _U32_MAX), byref(p)))
        p.metric = _metric(metric)
        p.m = _unsigned(m, "m", _U32_MAX)
        p.ef_construction = _unsigned(ef_construction, "ef_construction", _U32_MAX)
        p.ef_search = _unsigned(ef_search, "ef_search", _U32_MAX)
        p.originals = _originals(originals)
        if seed is not None:
            p.seed = _unsigned(seed, "seed", _U64_MAX)
        handle = emf_hnsw_p()
        check(lib.emf_hnsw_new(byref(p), byref(handle)))
        self._adopt(handle, mapped=False)

    def _adopt(self, handle, mapped: bool) -> None:
        _SharedHandle.__init__(self, handle)
        self._mapped = mapped
        try:
            p = emf_hnsw_params_t()
            check(self._call(lib.emf_hnsw_params, byref(p)))
        except BaseException:
            self.close()
            raise
        self._params = HnswParams._from_c(p)
        self._dim = p.dim

    def _fixed_dim(self) -> Optional[int]:
        """The dimension, or None while the index has none (made with ``dim=0``, nothing
        inserted): the library says, once, when the first insert has fixed it."""
        if self._dim == 0:
            p = emf_hnsw_params_t()
            check(self._call(lib.emf_hnsw_params, byref(p)))
            if p.dim != 0:
                # Every thread that gets here reads the same value: the races are benign.
                self._params = HnswParams._from_c(p)
                self._dim = p.dim
        return self._dim or None

    @classmethod
    def _from_file(cls, fn, path, mapped: bool) -> "HnswIndex":
        cpath = _c_string(path, "path", path=True)
        handle = emf_hnsw_p()
        check(fn(cpath, byref(handle)))
        index = cls.__new__(cls)
        index._adopt(handle, mapped)
        return index

    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> "HnswIndex":
        """Maps the index file at ``path`` read-only, after validating it (``emf_hnsw_open``;
        a damaged file raises ``Error`` with ``EMF_ERR_CORRUPT``). Searches read the mapping
        in place, and other processes may map the same file. :meth:`insert`,
        :meth:`insert_batch`, :meth:`remove`, :meth:`compact`, :meth:`try_compact` and
        :meth:`save` raise
        ``Error`` with ``EMF_ERR_UNSUPPORTED``. A later :meth:`save` to the same path
        replaces the file by a rename: this mapping keeps reading the old one."""
        return cls._from_file(lib.emf_hnsw_open, path, mapped=True)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "HnswIndex":
        """Reads the index file at ``path`` into a new in-memory index that can change
        (``emf_hnsw_load``)."""
        return cls._from_file(lib.emf_hnsw_load, path, mapped=False)

    # -- handle bookkeeping (closed: Error EMF_ERR_CLOSED, also a ValueError) --

    def _enter(self):
        with self._cond:
            handle = self._handle
            if handle is None:
                raise _Closed(type(self).__name__)
            self._calls += 1
            return handle

    def __enter__(self):
        if self._handle is None:
            raise _Closed(type(self).__name__)
        return self

    # -- properties --

    @property
    def params(self) -> HnswParams:
        """The index's parameters as the library reported them when it was made or opened
        (``emf_hnsw_params``); they never change, but for ``dim`` of an index made with
        ``dim=0``: 0 until the first insert fixes it."""
        self._fixed_dim()
        return self._params

    @property
    def dim(self) -> int:
        """The vector dimensions (0 while an index made with ``dim=0`` has no vector)."""
        return self._fixed_dim() or 0

    @property
    def mapped(self) -> bool:
        """True for an index mapped read-only by :meth:`open`."""
        return self._mapped

    def _stats(self) -> Tuple[int, int]:
        n, mem = c_size_t(0), c_size_t(0)
        check(self._call(lib.emf_hnsw_stats, byref(n), byref(mem)))
        return n.value, mem.value

    def __len__(self) -> int:
        """The number of live vectors (``emf_hnsw_stats``)."""
        return self._stats()[0]

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds (for a mapped index, the file's size); ``emf_hnsw_stats``."""
        return self._stats()[1]

    # -- changes --

    def insert(self, id: int, vector) -> None:
        """Inserts ``vector`` (1-D, ``dim`` values) under ``id`` (``emf_hnsw_insert``). A
        C-contiguous float32 vector is read in place; anything else is copied to float32
        first. The library refuses (``EMF_ERR_INVALID_ARGUMENT``) an id already in the index
        and NaN or infinite values."""
        np = _np or _numpy()
        id = _id(id)
        v = _vector(np, vector, self._fixed_dim(), "vector")
        check(self._call(lib.emf_hnsw_insert, id, v.ctypes.data, v.shape[0]))

    def insert_new(self, vector) -> int:
        """Inserts ``vector`` (1-D, ``dim`` values) under an id the index picks, and returns
        it (``emf_hnsw_insert_new``): the smallest id not in use from a counter that starts
        at 0 and only grows (ids given to :meth:`insert` are skipped, removed ones never
        reused; a loaded index counts from 0 again). Errors as :meth:`insert`; a failed call
        uses no id."""
        np = _np or _numpy()
        v = _vector(np, vector, self._fixed_dim(), "vector")
        out = c_uint64(0)
        check(self._call(lib.emf_hnsw_insert_new, v.ctypes.data, v.shape[0], byref(out)))
        return out.value

    def insert_batch(self, ids, vectors, threads: int = 0) -> None:
        """Inserts ``vectors`` (2-D, ``(n, dim)``) under ``ids`` (``n`` ints) on ``threads``
        library threads (0: one per CPU), ``emf_hnsw_insert_batch``. Everything is checked
        first: on an error (an id already there or repeated in ``ids``, a NaN) nothing is
        inserted.

        Zero copy: a C-contiguous float32 ``vectors`` and a C-contiguous uint64 ``ids`` are
        read in place; other arrays (``float16`` or ``float64`` vectors, ``int64`` ids, a
        list) are converted first, **with a copy**."""
        np = _np or _numpy()
        v = _matrix(np, vectors, self._fixed_dim(), "vectors", "insert()")
        i = _ids(np, ids)
        if i.shape[0] != v.shape[0]:
            raise _InvalidValue(f"{i.shape[0]} ids for {v.shape[0]} vectors")
        threads = _unsigned(threads, "threads", _U32_MAX)
        check(
            self._call(
                lib.emf_hnsw_insert_batch,
                i.ctypes.data,
                i.shape[0],
                v.ctypes.data,
                v.shape[1],
                threads,
            )
        )

    def remove(self, id: int) -> None:
        """Removes ``id`` (``emf_hnsw_remove``): it is no longer returned. Raises
        :class:`~erlmcp_flow.NotFound` when it is not in the index. The memory is reclaimed
        by :meth:`compact`."""
        check(self._call(lib.emf_hnsw_remove, _id(id)))

    def compact(self) -> None:
        """Reclaims the memory of removed vectors (``emf_hnsw_compact``); the library holds
        the index's other calls off while it runs."""
        check(self._call(lib.emf_hnsw_compact))

    def try_compact(self) -> bool:
        """:meth:`compact` without waiting (``emf_hnsw_try_compact``): ``False``, nothing
        done, while another call on the index runs (``EMF_ERR_BUSY``); ``True`` once the
        memory is reclaimed. A mapped index raises ``Error`` with ``EMF_ERR_UNSUPPORTED``."""
        st = self._call(lib.emf_hnsw_try_compact)
        if st == EMF_ERR_BUSY:
            return False
        check(st)
        return True

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the index to ``path`` (``emf_hnsw_save``): a temporary file renamed over it,
        so processes that mapped the old file keep reading it intact."""
        cpath = _c_string(path, "path", path=True)
        check(self._call(lib.emf_hnsw_save, cpath))

    # -- searches --

    def _search_args(self, k, ef, rerank):
        k = _count(k, "k")
        ef = _unsigned(ef, "ef", _SIZE_MAX)
        return k, ef, EMF_SEARCH_RERANK if rerank else 0

    def search(self, query, k: int = 10, ef: int = 0, rerank: bool = False, filter=None):
        """The ``k`` nearest vectors to ``query`` (1-D, ``dim`` values), closest first
        (``emf_hnsw_search``): ``(ids, distances)``, a uint64 and a float32 array of the same
        length, at most ``k`` (fewer when the index, or the filter, has fewer).

        ``ef``: candidates kept (0: the index's ``ef_search``; the library uses at least
        ``k``). ``rerank``: re-rank the int8 candidates with the original vectors, giving
        exact distances, when the index keeps them (``originals="f16"``/``"f32"``; without
        originals the library ignores the flag and the distances stay int8 estimates).
        ``filter``: only these ids may be returned: an iterable of ids, a 1-D NumPy bool mask
        (``mask[i]`` allows id ``i``), or an :class:`IdFilter`; an empty set allows nothing.

        A C-contiguous float32 ``query`` is read in place, anything else copied to float32;
        ``k`` must be at least 1. The library refuses a NaN or infinite query."""
        np = _np or _numpy()
        q = _vector(np, query, self._fixed_dim(), "query")
        k, ef, flags = self._search_args(k, ef, rerank)
        faddr, fwords, _words = _filter_arg(np, filter)  # _words: alive through the call
        hits = np.empty(k, dtype=_HIT_DTYPE)
        count = c_size_t(0)
        status = self._call(
            lib.emf_hnsw_search,
            q.ctypes.data,
            q.shape[0],
            k,
            ef,
            flags,
            faddr,
            fwords,
            hits.ctypes.data,
            byref(count),
        )
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        hits = hits[: count.value]
        # The library fills an array of {id, distance} structs; split it into two arrays.
        return hits["id"].copy(), hits["distance"].copy()

    def search_batch(
        self,
        queries,
        k: int = 10,
        ef: int = 0,
        rerank: bool = False,
        filter=None,
        threads: int = 0,
    ):
        """Searches every row of ``queries`` (2-D, ``(nq, dim)``) on ``threads`` library
        threads (0: one per CPU), ``emf_hnsw_search_batch``; same options as :meth:`search`.

        Returns ``(ids, distances, counts)``: ``ids`` a uint64 ``(nq, k)`` array,
        ``distances`` a float32 ``(nq, k)`` array, ``counts`` an int ``(nq,)`` array. Row
        ``i`` holds query ``i``'s ``counts[i]`` hits, closest first; **the unused slots
        after them hold id** ``2**64 - 1`` (:data:`NO_HIT_ID`) **and distance** ``inf``.

        A C-contiguous float32 ``queries`` is read in place; anything else is copied to
        float32 first."""
        np = _np or _numpy()
        qs = _matrix(np, queries, self._fixed_dim(), "queries", "search()")
        k, ef, flags = self._search_args(k, ef, rerank)
        threads = _unsigned(threads, "threads", _U32_MAX)
        faddr, fwords, _words = _filter_arg(np, filter)  # _words: alive through the call
        nq = qs.shape[0]
        hits = np.empty((nq, k), dtype=_HIT_DTYPE)
        hits["id"] = NO_HIT_ID  # the library writes only the first counts[i] of row i
        hits["distance"] = np.inf
        counts = np.zeros(nq, dtype=np.uintp)  # size_t
        status = self._call(
            lib.emf_hnsw_search_batch,
            qs.ctypes.data,
            nq,
            qs.shape[1],
            k,
            ef,
            flags,
            faddr,
            fwords,
            threads,
            hits.ctypes.data,
            counts.ctypes.data,
        )
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return hits["id"].copy(), hits["distance"].copy(), counts.view(np.intp)

    def __repr__(self) -> str:
        if self.closed:
            return "<erlmcp_flow.HnswIndex closed>"
        p = self.params
        kind = "mapped" if self._mapped else "in memory"
        return (
            f"<erlmcp_flow.HnswIndex dim={p.dim} metric={p.metric!r} m={p.m} "
            f"originals={p.originals!r} {kind}>"
        )


__all__ = [
    "EMF_METRIC_COSINE", "EMF_METRIC_DOT", "EMF_METRIC_L2SQ",
    "EMF_ORIGINALS_NONE", "EMF_ORIGINALS_F16", "EMF_ORIGINALS_F32", "EMF_SEARCH_RERANK",
    "METRICS", "ORIGINALS", "NO_HIT_ID",
    "quantize", "dequantize", "distance", "cosine_distance_quantized", "dot_i8",
    "IdFilter", "HnswParams", "HnswIndex",
]  # fmt: skip
