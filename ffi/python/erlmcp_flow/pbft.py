"""Byzantine agreement: a thin wrapper of ``emf_pbft_group_*`` (``crates/capi/src/pbft.rs``,
over the Rust ``mesh::pbft::LocalGroup``).

A :class:`Group` is n = 3f + 1 PBFT replica threads inside this process over shared-memory
rings in one directory, signing with fresh Ed25519 keys, replicating an order log, and a
client. :meth:`Group.fast_path_consensus` (the original design's name) agrees on one
operation and answers its result: 16 bytes, the operation's position in the agreed order and
a running checksum (:meth:`Group.execute` also says which path completed it).

>>> with Group.start() as g:                                        # doctest: +SKIP
...     done = g.execute(b"an operation")
...     done.position, done.path                                    # (1, "fast")
...     g.stop_replica(0)                                           # the primary crashes
...     g.fast_path_consensus(b"next")                              # after a view change

The fast path is tentative execution: replicas execute a request once it is *prepared*
(2f + 1 replicas agree on its order) and the client accepts 2f + 1 matching tentative
replies; otherwise it waits for f + 1 matching *committed* replies (the slow path; the only
one with ``accept_tentative=False``). Both are safe under f Byzantine replicas. A call that
gets no agreed answer within ``timeout_ms`` raises :class:`~erlmcp_flow.Timeout`; the
request then stays outstanding and the next call raises :class:`~erlmcp_flow.Busy` unless
the group answers it first. One thread at a time uses a group (another thread calling
meanwhile gets :class:`~erlmcp_flow.Busy`).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from ctypes import byref, c_uint32, c_uint64
from dataclasses import dataclass
from typing import Optional

from ._errors import EMF_OK, error_for, last_error_message, check
from ._native import emf_buf_t, emf_pbft_group_options_t, emf_pbft_group_p, lib
from .codec import _take
from .ring import _U32_MAX, _c_string, _Handle, _unsigned
from .sched import _U64_MAX

#: :attr:`Completion.path` code: 2f + 1 matching tentative replies (the fast path).
EMF_PBFT_PATH_FAST = 1
#: :attr:`Completion.path` code: f + 1 matching committed replies (the slow path).
EMF_PBFT_PATH_SLOW = 2

_PATHS = {EMF_PBFT_PATH_FAST: "fast", EMF_PBFT_PATH_SLOW: "slow"}


@dataclass(frozen=True)
class Completion:
    """An agreed operation (:meth:`Group.execute`)."""

    #: The order log's 16-byte result.
    result: bytes
    #: ``"fast"`` or ``"slow"``: which rule completed it.
    path: str
    #: The operation's 1-based position in the agreed order.
    position: int
    #: The running checksum of everything agreed up to and including it.
    chain: int


class Group(_Handle):
    """A local PBFT group (``emf_pbft_group_t``); make one with :meth:`start`. Closing it
    stops the replicas and removes a directory :meth:`start` made."""

    _free = lib.emf_pbft_group_free

    def __init__(self, handle, dir: str, owned_dir: bool):
        super().__init__(handle)
        #: The group's ring directory.
        self.dir = dir
        self._owned_dir = owned_dir

    @classmethod
    def start(
        cls,
        n: int = 4,
        dir: Optional[str] = None,
        *,
        ed25519: bool = True,
        accept_tentative: bool = True,
        batch_window_us: Optional[int] = None,
        view_change_timeout_ms: Optional[int] = None,
        retransmit_ms: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> "Group":
        """Starts ``n`` replicas (3f + 1) and a client in ``dir`` (None: a new directory under
        ``/dev/shm``, removed by :meth:`close`). Options (None keeps the engine's default):
        ``ed25519`` (False: the simulation's insecure keys, for tests), ``accept_tentative``
        (False: the slow path only), ``batch_window_us`` (0), ``view_change_timeout_ms``
        (200), ``retransmit_ms`` (100), ``timeout_ms`` (10000 per call)."""
        opts = emf_pbft_group_options_t()
        check(lib.emf_pbft_group_options_default(byref(opts)))
        opts.n = _unsigned(n, "n", _U32_MAX)
        opts.ed25519 = 1 if ed25519 else 0
        opts.accept_tentative = 1 if accept_tentative else 0
        if batch_window_us is not None:
            opts.batch_window_us = _unsigned(batch_window_us, "batch_window_us", _U64_MAX)
        if view_change_timeout_ms is not None:
            opts.view_change_timeout_ms = _unsigned(
                view_change_timeout_ms, "view_change_timeout_ms", _U32_MAX
            )
        if retransmit_ms is not None:
            opts.retransmit_ms = _unsigned(retransmit_ms, "retransmit_ms", _U32_MAX)
        if timeout_ms is not None:
            opts.timeout_ms = _unsigned(timeout_ms, "timeout_ms", _U32_MAX)
        owned = dir is None
        if owned:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            dir = tempfile.mkdtemp(prefix="emf-pbft-", dir=base)
        path = os.fspath(dir)
        handle = emf_pbft_group_p()
        try:
            check(
                lib.emf_pbft_group_start(
                    _c_string(path, "dir", path=True), byref(opts), byref(handle)
                )
            )
        except BaseException:
            if owned:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(handle, path, owned)

    def close(self) -> None:
        """Stops the replicas and frees the group; removes the directory :meth:`start` made.
        Calling it again does nothing."""
        super().close()
        if self._owned_dir:
            self._owned_dir = False
            shutil.rmtree(self.dir, ignore_errors=True)

    def _call(self, name: str, *args) -> None:
        handle = self._enter(blocking=False)
        try:
            status = getattr(lib, "emf_pbft_group_" + name)(handle, *args)
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()

    def execute(self, op: bytes) -> Completion:
        """Agrees on ``op`` (bytes, at most 1 MiB) and returns its :class:`Completion`."""
        op = bytes(op)
        buf = emf_buf_t()
        path = c_uint32()
        self._call("execute", op, len(op), byref(buf), byref(path))
        result = _take(buf)
        position, chain = struct.unpack("<QQ", result)
        return Completion(result, _PATHS[path.value], position, chain)

    def fast_path_consensus(self, op: bytes) -> bytes:
        """The original ``fast_path_consensus/1``: agrees on ``op`` and returns the result."""
        return self.execute(op).result

    def stop_replica(self, i: int) -> None:
        """Stops replica ``i`` (a crash, to the others); :class:`~erlmcp_flow.NotFound` beyond
        ``n`` or when it is already stopped."""
        self._call("stop_replica", _unsigned(i, "i", _U32_MAX))

    def view(self) -> int:
        """The view the client knows (its primary is replica ``view % n``)."""
        v = c_uint64()
        self._call("view", byref(v))
        return v.value
