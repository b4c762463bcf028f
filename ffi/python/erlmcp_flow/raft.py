"""Replicated state: a thin wrapper of ``emf_raft_cluster_*`` and ``emf_raft_client_*``
(``crates/capi/src/raft.rs``, over the Rust ``replica::LocalCluster`` and ``RaftClient``).

A :class:`Cluster` is the original ``start_cluster(N)``: N ``erlmcp-flow raft node``
processes over shared-memory rings in one directory (the binary from ``bin``, else the
environment variable ``EMF_BIN``, else ``PATH``), running the engine's replicated key-value
store. A :class:`Client` talks to a cluster already running (another process's, or nodes
started with ``erlmcp-flow raft node --transport ring``) through its rings. A :class:`Node`
makes this process one node of a cluster, running the host's own state machine (an object
with ``apply``, ``snapshot``, ``restore`` and optionally ``query``) on a thread of the
library's own (``emf_raft_node_*``).

>>> with Cluster.start(3) as c:                                    # doctest: +SKIP
...     i = c.submit_operation(b"an entry")                       # the log index
...     c.wait_committed(i)
...     c.set(b"k", b"v"); c.get(b"k")                            # get: a ReadIndex read
...     c.transfer_leader(2)                                       # the new term
...     c.remove_member(3); c.add_learner(3); c.add_voter(3)
...     c.kill(c.leader()); c.set(b"k", b"w")                     # a new leader answers

Consensus, the leader's batching, durable logs, redirects to the leader (a not-leader answer
names it) and retries during elections are the engine's, bounded by ``timeout_ms``:
:class:`~erlmcp_flow.Timeout` when nothing committed in time (e.g. no quorum; the operation
may or may not be applied later). Each call waits for its commit. One thread at a time uses a
cluster or client: another thread calling meanwhile gets :class:`~erlmcp_flow.Busy`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from ctypes import (
    byref,
    c_char_p,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
    cast,
    create_string_buffer,
    string_at,
)
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_OK,
    Error,
    check,
    error_for,
    last_error_message,
)
from ._native import (
    emf_raft_apply_fn,
    emf_raft_client_options_t,
    emf_raft_client_p,
    emf_raft_cluster_options_t,
    emf_raft_cluster_p,
    emf_raft_node_info_t,
    emf_raft_node_options_t,
    emf_raft_node_p,
    emf_raft_query_fn,
    emf_raft_restore_fn,
    emf_raft_sm_t,
    emf_raft_snapshot_fn,
    emf_raft_member_change_t,
    emf_raft_status_t,
    emf_slice_t,
    lib,
)
from .ring import _U32_MAX, _c_string, _Handle, _unsigned
from .sched import _U64_MAX

#: The most nodes of a cluster.
EMF_RAFT_MAX_NODES = 64
#: A membership change's kind: add a voter (or promote a learner).
EMF_RAFT_ADD_VOTER = 1
#: A membership change's kind: add a learner (or demote a voter).
EMF_RAFT_ADD_LEARNER = 2
#: A membership change's kind: remove a voter or a learner.
EMF_RAFT_REMOVE = 3
#: The most changes one :meth:`~_RaftOps.change_membership` call carries.
EMF_RAFT_MAX_CHANGES = 64
#: A remote node's request (``emf_raft_node_next_request``): apply an operation.
EMF_RAFT_REQ_APPLY = 1
#: A remote node's request: answer the whole state, for a snapshot.
EMF_RAFT_REQ_SNAPSHOT = 2
#: A remote node's request: replace the state with a snapshot.
EMF_RAFT_REQ_RESTORE = 3
#: A remote node's request: answer a read-only query.
EMF_RAFT_REQ_QUERY = 4

# Answers up to this many bytes are read in one call.
_BUF = 4096


@dataclass(frozen=True)
class RaftStatus:
    """One node's status (``emf_raft_status_t``)."""

    #: The node's id.
    id: int
    #: The leader it knows (0: none).
    leader: int
    #: Its current term.
    term: int
    #: Its commit index.
    commit: int
    #: Its applied index.
    applied: int
    #: How many voters its configuration has.
    voters: int


@dataclass(frozen=True)
class Membership:
    """The configuration the leader has applied (:meth:`~_RaftOps.membership`)."""

    #: The voters (while ``joint``, the incoming ones).
    voters: Tuple[int, ...]
    #: The learners (receive the log, do not vote).
    learners: Tuple[int, ...]
    #: True while a change is half way (the joint configuration of old and new voters).
    joint: bool


@dataclass(frozen=True)
class NodeStats:
    """A node's status and counters, from :meth:`Cluster.stats`; or why it did not answer
    (``error``: the status name and message)."""

    node: int
    leader: int = 0
    term: int = 0
    commit: int = 0
    applied: int = 0
    voters: Tuple[int, ...] = ()
    #: The node's counters by the engine's names (``proposed``, ``batches``, ``redirected``...).
    counters: Dict[str, int] = field(default_factory=dict)
    error: Optional[Tuple[str, str]] = None


def _bytes(value, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def _parse_stats(text: str) -> List[NodeStats]:
    out = []
    for line in text.splitlines():
        words = line.split(" ")
        node = int(words[0].removeprefix("node="))
        if len(words) > 1 and words[1].startswith("error="):
            out.append(NodeStats(node, error=(words[1][6:], " ".join(words[2:]))))
            continue
        fields: dict = {"counters": {}}
        for w in words[1:]:
            k, _, v = w.partition("=")
            if k == "voters":
                fields["voters"] = tuple(int(x) for x in v.split(",") if x)
            elif k in ("leader", "term", "commit", "applied"):
                fields[k] = int(v)
            else:
                fields["counters"][k] = int(v)
        out.append(NodeStats(node, **fields))
    return out


class _RaftOps(_Handle):
    """The calls a cluster and a client share (``emf_raft_<kind>_*``)."""

    _kind = ""

    def _fn(self, name: str):
        return getattr(lib, f"emf_raft_{self._kind}_{name}")

    def _call(self, name: str, *args) -> int:
        """``emf_raft_<kind>_<name>(handle, *args)`` for one thread at a time (another thread
        inside: :class:`~erlmcp_flow.Busy`); returns the status, raising for any but OK and
        BUFFER_TOO_SMALL."""
        handle = self._enter(blocking=False)
        try:
            status = self._fn(name)(handle, *args)
            # BUFFER_TOO_SMALL: the operation was applied; its bytes wait in the handle.
            if status not in (EMF_OK, EMF_ERR_BUFFER_TOO_SMALL):
                raise error_for(status, last_error_message())
            return status
        finally:
            self._lock.release()

    def _answer(self, status: int, buf, length: c_size_t) -> bytes:
        """The answer's bytes: from ``buf``, or from ``_result`` when they did not fit."""
        if status == EMF_OK:
            return buf.raw[: length.value]
        big = create_string_buffer(max(length.value, 1))
        n = c_size_t()
        self._call("result", big, length.value, byref(n))
        return big.raw[: n.value]

    def submit(self, op: bytes) -> Tuple[int, bytes]:
        """Replicates ``op`` and waits until it is applied: ``(index, result)`` (the state
        machine's result bytes; for bytes that are no key-value operation its ``Invalid``
        answer)."""
        op = _bytes(op, "op")
        index, n, buf = c_uint64(), c_size_t(), create_string_buffer(_BUF)
        st = self._call("submit", op, len(op), byref(index), buf, _BUF, byref(n))
        return index.value, self._answer(st, buf, n)

    def submit_operation(self, op: bytes) -> int:
        """The original ``submit_operation(Op) -> {ok, Index}``: the log index of ``op``
        once applied."""
        return self.submit(op)[0]

    def append_entry(self, entry: bytes) -> int:
        """The original ``append_entry(Entry)``: the index once committed (the leader batches
        the entries proposed meanwhile)."""
        entry = _bytes(entry, "entry")
        index = c_uint64()
        self._call("append_entry", entry, len(entry), byref(index))
        return index.value

    def submit_many(self, ops: Sequence[bytes], window: int = 64) -> List[int]:
        """Submits every operation of ``ops`` with up to ``window`` in flight at once and waits
        until each has an answer (within the timeout in all): their log indexes, in order —
        the pipelined submit (one call, a few round trips, batched by the leader) where
        :meth:`submit` waits for each. Results of the state machine are not returned.

        When any operation fails, the first failure is raised (its class as for a single
        submit: :class:`~erlmcp_flow.Timeout` — it may yet commit — and so on) with
        ``indexes`` (0 for a failed operation) and ``statuses`` (one code each) attached."""
        data = [_bytes(op, "op") for op in ops]
        n = len(data)
        table = (emf_slice_t * max(n, 1))()
        for i, b in enumerate(data):
            table[i].data = cast(c_char_p(b), c_void_p) if b else None
            table[i].len = len(b)
        indexes = (c_uint64 * max(n, 1))()
        statuses = (c_int32 * max(n, 1))()
        try:
            self._call(
                "submit_many",
                table,
                n,
                _unsigned(window, "window", _U32_MAX),
                indexes,
                statuses,
            )
        except Error as e:
            e.indexes = list(indexes[:n])
            e.statuses = list(statuses[:n])
            raise
        # `data` kept the bytes the table points into alive until here.
        return list(indexes[:n])

    def wait_committed(self, index: int, timeout_ms: int = 10_000) -> int:
        """Waits until the leader has applied ``index``: its applied index (≥ ``index``);
        :class:`~erlmcp_flow.Timeout` after ``timeout_ms``."""
        applied = c_uint64()
        self._call(
            "wait_committed",
            _unsigned(index, "index", _U64_MAX),
            _unsigned(timeout_ms, "timeout_ms", _U32_MAX),
            byref(applied),
        )
        return applied.value

    def leader_and_term(self) -> Tuple[int, int]:
        """``(leader, term)``, asked of the nodes (waits for an election under way)."""
        leader, term = c_uint64(), c_uint64()
        self._call("leader", byref(leader), byref(term))
        return leader.value, term.value

    def leader(self) -> int:
        """The current leader's id."""
        return self.leader_and_term()[0]

    def term(self) -> int:
        """The current leader's term."""
        return self.leader_and_term()[1]

    def status(self, node: int) -> RaftStatus:
        """Node ``node``'s status (:class:`~erlmcp_flow.Timeout` when it does not answer)."""
        s = emf_raft_status_t()
        self._call("status", _unsigned(node, "node", _U64_MAX), byref(s))
        return RaftStatus(s.id, s.leader, s.term, s.commit, s.applied, s.voters)

    def stats(self) -> List[NodeStats]:
        """Every node's status and counters, or why it did not answer."""
        n, buf = c_size_t(), create_string_buffer(_BUF)
        st = self._call("stats", buf, _BUF, byref(n))
        return _parse_stats(self._answer(st, buf, n).decode("utf-8"))

    def set(self, key: bytes, value: bytes) -> int:
        """Sets ``key`` to ``value`` in the replicated store: the log index."""
        key, value = _bytes(key, "key"), _bytes(value, "value")
        index = c_uint64()
        self._call("set", key, len(key), value, len(value), byref(index))
        return index.value

    def read(self, query: bytes) -> Tuple[int, bytes]:
        """A linearizable read: the leader confirms with a quorum that it still leads
        (ReadIndex; no log entry) and answers ``query`` from its applied state (for the
        key-value store, an encoded get: :meth:`get` is the easy way). ``(read index,
        answer)``; :class:`~erlmcp_flow.InvalidArgument` for a query the state machine
        refuses."""
        query = _bytes(query, "query")
        index, n, buf = c_uint64(), c_size_t(), create_string_buffer(_BUF)
        st = self._call("read", query, len(query), byref(index), buf, _BUF, byref(n))
        return index.value, self._answer(st, buf, n)

    def transfer_leader(self, to: int) -> int:
        """Hands the leadership to voter ``to`` and waits until it leads: the new term.
        :class:`~erlmcp_flow.InvalidArgument` for a learner or a non-member,
        :class:`~erlmcp_flow.Timeout` when the transfer did not finish."""
        term = c_uint64()
        self._call("transfer_leader", _unsigned(to, "to", _U64_MAX), byref(term))
        return term.value

    def change_membership(self, changes: Sequence[Tuple[int, int]]) -> int:
        """Changes the configuration by joint consensus: ``changes`` are ``(kind, node)``
        pairs (``EMF_RAFT_ADD_VOTER``, ``EMF_RAFT_ADD_LEARNER``, ``EMF_RAFT_REMOVE``) made
        together. Returns the change's log index once the joint configuration is applied (the
        leader then leaves it on its own: :meth:`membership`). Another change under way is
        waited for within the timeout; :class:`~erlmcp_flow.InvalidArgument` with the reason
        for a change that cannot be made (removing the leader: transfer the leadership
        first)."""
        changes = list(changes)
        if not 1 <= len(changes) <= EMF_RAFT_MAX_CHANGES:
            raise ValueError(f"1 to {EMF_RAFT_MAX_CHANGES} changes, not {len(changes)}")
        arr = (emf_raft_member_change_t * len(changes))()
        for i, (kind, node) in enumerate(changes):
            arr[i].kind = _unsigned(kind, "kind", _U32_MAX)
            arr[i].node = _unsigned(node, "node", _U64_MAX)
        index = c_uint64()
        self._call("change_membership", arr, len(changes), byref(index))
        return index.value

    def add_voter(self, node: int) -> int:
        """Adds ``node`` as a voter (or promotes the learner ``node``): the change's
        index."""
        return self.change_membership([(EMF_RAFT_ADD_VOTER, node)])

    def add_learner(self, node: int) -> int:
        """Adds ``node`` as a learner (or demotes the voter ``node``): the change's
        index."""
        return self.change_membership([(EMF_RAFT_ADD_LEARNER, node)])

    def remove_member(self, node: int) -> int:
        """Removes the voter or learner ``node``: the change's index."""
        return self.change_membership([(EMF_RAFT_REMOVE, node)])

    def membership(self) -> Membership:
        """The configuration the leader has applied."""
        ids = (c_uint64 * (2 * EMF_RAFT_MAX_NODES))()
        nv, nl, joint = c_size_t(), c_size_t(), c_uint32()
        self._call(
            "membership", ids, 2 * EMF_RAFT_MAX_NODES, byref(nv), byref(nl), byref(joint)
        )
        v, n = nv.value, nv.value + nl.value
        return Membership(tuple(ids[:v]), tuple(ids[v:n]), bool(joint.value))

    def get(self, key: bytes) -> Optional[bytes]:
        """``key``'s value from a linearizable read at the leader (ReadIndex, no log
        entry), or None."""
        key = _bytes(key, "key")
        index, found, n, buf = c_uint64(), c_uint32(), c_size_t(), create_string_buffer(_BUF)
        st = self._call("get", key, len(key), byref(index), byref(found), buf, _BUF, byref(n))
        value = self._answer(st, buf, n)
        return value if found.value else None

    def cas(
        self, key: bytes, expected: Optional[bytes], new: bytes
    ) -> Tuple[bool, Optional[bytes]]:
        """Sets ``key`` to ``new`` when it holds ``expected`` (None: when it is absent):
        ``(swapped, previous value or None)``."""
        key, new = _bytes(key, "key"), _bytes(new, "new")
        exp = b"" if expected is None else _bytes(expected, "expected")
        index, swapped, had = c_uint64(), c_uint32(), c_uint32()
        n, buf = c_size_t(), create_string_buffer(_BUF)
        st = self._call(
            "cas",
            key,
            len(key),
            byref(index),
            0 if expected is None else 1,
            exp,
            len(exp),
            new,
            len(new),
            byref(swapped),
            byref(had),
            buf,
            _BUF,
            byref(n),
        )
        previous = self._answer(st, buf, n)
        return bool(swapped.value), (previous if had.value else None)


def _timeouts(opts, timeout_ms, attempt_timeout_ms) -> None:
    if timeout_ms is not None:
        opts.timeout_ms = _unsigned(timeout_ms, "timeout_ms", _U32_MAX)
    if attempt_timeout_ms is not None:
        opts.attempt_timeout_ms = _unsigned(attempt_timeout_ms, "attempt_timeout_ms", _U32_MAX)


class Cluster(_RaftOps):
    """A local cluster (``emf_raft_cluster_t``); make one with :meth:`start`. Closing it
    stops the nodes and removes a directory :meth:`start` made."""

    _free = lib.emf_raft_cluster_free
    _kind = "cluster"

    def __init__(self, handle, dir: str, owned_dir: bool):
        super().__init__(handle)
        #: The cluster's directory (rings in ``net/``, logs in ``node.I/``, each node's
        #: standard error in ``node.I.log``).
        self.dir = dir
        self._owned_dir = owned_dir

    @classmethod
    def start(
        cls,
        n: int = 3,
        dir: Optional[str] = None,
        *,
        bin: Optional[str] = None,
        memory: bool = False,
        tick_ms: Optional[int] = None,
        election_tick: Optional[int] = None,
        start_timeout_ms: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        attempt_timeout_ms: Optional[int] = None,
    ) -> "Cluster":
        """Starts nodes ``1..n`` in ``dir`` (None: a new directory under ``/dev/shm``,
        removed by :meth:`close`) and waits until they have elected a leader. Options (None
        keeps the engine's default): ``memory`` (logs in memory), ``tick_ms`` (10),
        ``election_tick`` (10), ``start_timeout_ms`` (20000), ``timeout_ms`` (10000 per
        call), ``attempt_timeout_ms`` (500 per node)."""
        opts = emf_raft_cluster_options_t()
        check(lib.emf_raft_cluster_options_default(byref(opts)))
        if bin is not None:
            opts.bin = _c_string(bin, "bin", path=True)
        opts.memory = 1 if memory else 0
        if tick_ms is not None:
            opts.tick_ms = _unsigned(tick_ms, "tick_ms", _U64_MAX)
        if election_tick is not None:
            opts.election_tick = _unsigned(election_tick, "election_tick", _U32_MAX)
        if start_timeout_ms is not None:
            opts.start_timeout_ms = _unsigned(start_timeout_ms, "start_timeout_ms", _U32_MAX)
        _timeouts(opts.client, timeout_ms, attempt_timeout_ms)
        n = _unsigned(n, "n", _U32_MAX)
        owned = dir is None
        if owned:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            dir = tempfile.mkdtemp(prefix="emf-raft-", dir=base)
        path = os.fspath(dir)
        handle = emf_raft_cluster_p()
        try:
            check(
                lib.emf_raft_cluster_start(
                    n, _c_string(path, "dir", path=True), byref(opts), byref(handle)
                )
            )
        except BaseException:
            if owned:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(handle, path, owned)

    def close(self) -> None:
        """Stops the nodes and frees the cluster; removes the directory :meth:`start` made.
        Calling it again does nothing."""
        super().close()
        if self._owned_dir:
            self._owned_dir = False
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL after 2 s) and keeps the handle: calls time
        out until nodes are started again with :meth:`restart`."""
        self._call("stop")

    def members(self) -> List[int]:
        """The node ids, ``[1..n]``."""
        ids = (c_uint64 * EMF_RAFT_MAX_NODES)()
        n = c_size_t()
        self._call("members", ids, EMF_RAFT_MAX_NODES, byref(n))
        return list(ids[: n.value])

    def kill(self, node: int) -> None:
        """SIGKILLs node ``node`` (for tests: a crash); :class:`~erlmcp_flow.NotFound` when it
        is not running."""
        self._call("kill", _unsigned(node, "node", _U64_MAX))

    def restart(self, node: int) -> None:
        """Starts node ``node`` again from its data directory."""
        self._call("restart", _unsigned(node, "node", _U64_MAX))


class Client(_RaftOps):
    """A client of a running cluster (``emf_raft_client_t``) through the rings of
    ``net_dir`` (a :class:`Cluster`'s ``dir/net``, or the ``--net-dir`` of ``erlmcp-flow raft
    node``) to the nodes ``nodes``. Closing it leaves the cluster running."""

    _free = lib.emf_raft_client_free
    _kind = "client"

    def __init__(
        self,
        net_dir: str,
        nodes: Sequence[int],
        *,
        timeout_ms: Optional[int] = None,
        attempt_timeout_ms: Optional[int] = None,
    ):
        opts = emf_raft_client_options_t()
        check(lib.emf_raft_client_options_default(byref(opts)))
        _timeouts(opts, timeout_ms, attempt_timeout_ms)
        ids = [_unsigned(i, "node", _U64_MAX) for i in nodes]
        arr = (c_uint64 * max(len(ids), 1))(*ids)
        handle = emf_raft_client_p()
        check(
            lib.emf_raft_client_connect(
                _c_string(net_dir, "net_dir", path=True), arr, len(ids), byref(opts),
                byref(handle),
            )
        )
        super().__init__(handle)


# --- an in-process node with the host's state machine -------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """An in-process node's view as of its latest round (``emf_raft_node_info_t``)."""

    #: The node's id.
    id: int
    #: The leader it knows of (0: none).
    leader: int
    #: Its current term.
    term: int
    #: Its commit index.
    commit: int
    #: The index its state machine has applied.
    applied: int
    #: False once the node stopped or failed (:meth:`Node.stop` says why).
    running: bool


def _result_bytes(value, what: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must return bytes, not {type(value).__name__}")


def _emit(emit, emit_ctx, data: bytes) -> int:
    return emit(emit_ctx, data, len(data)) if data else 0


class _Callbacks:
    """The ctypes callbacks of one node's state machine, kept alive (with the struct the
    library copied them from) until the node is freed; the first exception a callback
    raised, which stopped the node."""

    def __init__(self, sm):
        for name in ("apply", "snapshot", "restore"):
            if not callable(getattr(sm, name, None)):
                raise TypeError(f"the state machine has no method {name}()")
        self.sm = sm
        #: The exception that stopped the node, if one did.
        self.error: Optional[BaseException] = None
        self.apply = emf_raft_apply_fn(self._apply)
        self.snapshot = emf_raft_snapshot_fn(self._snapshot)
        self.restore = emf_raft_restore_fn(self._restore)
        query = getattr(sm, "query", None)
        self.query = emf_raft_query_fn(self._query) if callable(query) else None
        self.struct = emf_raft_sm_t(self.apply, self.snapshot, self.restore)
        if self.query is not None:
            self.struct.query = self.query

    # Each runs on the node's thread (ctypes takes the GIL) and must not raise: an exception
    # is kept and reported as a failure (non-zero), which stops the node.

    def _fail(self, e: BaseException) -> int:
        if self.error is None:
            self.error = e
        return 1

    def _apply(self, _ctx, index, op, n, emit, emit_ctx) -> int:
        try:
            data = string_at(op, n) if n else b""
            out = _result_bytes(self.sm.apply(index, data), "apply()")
            return _emit(emit, emit_ctx, out)
        except BaseException as e:  # noqa: BLE001 — reported by Node.stop()
            return self._fail(e)

    def _snapshot(self, _ctx, emit, emit_ctx) -> int:
        try:
            out = _result_bytes(self.sm.snapshot(), "snapshot()")
            return _emit(emit, emit_ctx, out)
        except BaseException as e:  # noqa: BLE001
            return self._fail(e)

    def _restore(self, _ctx, data, n) -> int:
        try:
            self.sm.restore(string_at(data, n) if n else b"")
            return 0
        except BaseException as e:  # noqa: BLE001
            return self._fail(e)

    def _query(self, _ctx, q, n, emit, emit_ctx) -> int:
        # A refused query leaves the node running: the exception is not kept.
        try:
            out = _result_bytes(self.sm.query(string_at(q, n) if n else b""), "query()")
            return _emit(emit, emit_ctx, out)
        except BaseException:  # noqa: BLE001
            return 1


def _free_node(handle, owner_pid: int, _keep) -> None:
    # A finalizer: must not raise. `_keep` (the callbacks) lives until the node's thread is
    # joined by the free.
    if os.getpid() == owner_pid:
        lib.emf_raft_node_free(handle)


class Node:
    """This process as node ``id`` of the cluster of ``voters``, running the state machine
    ``sm`` (``emf_raft_node_t``), over the rings of ``dir/net`` with its durable log in
    ``dir/node.<id>`` (``memory=True``: in memory) — the layout of a :class:`Cluster`'s
    directory, so a :class:`Client` of ``dir/net`` reaches it, and so do nodes of other
    processes (``erlmcp-flow raft node --net-dir dir/net``).

    ``sm`` has ``apply(index, op: bytes) -> bytes`` (deterministic: the same result and
    effect on every node; an operation it cannot parse is answered, not raised),
    ``snapshot() -> bytes`` (the whole state), ``restore(data: bytes)`` (replaces the state;
    raises on bytes it does not accept) and optionally ``query(q: bytes) -> bytes``. They run
    on the node's own thread (the library's, holding the GIL while in Python), one at a
    time; a node started again from its data directory gets a fresh ``sm`` and restores its
    latest snapshot before the constructor returns. An exception in ``apply``, ``snapshot``
    or ``restore`` stops the node at once (nothing after it is applied or persisted):
    :meth:`stop` raises :class:`~erlmcp_flow.Error` with code ``EMF_ERR_STOPPED``, chained
    from it.

    Options (None keeps the engine's default): ``tick_ms`` (10), ``election_tick`` (10),
    ``heartbeat_tick`` (2), ``snapshot_entries`` (10000; 0: never), ``inbox_capacity``
    (1 MiB), ``clients`` (the ids the node accepts requests from; default those
    :class:`Client` takes).
    """

    def __init__(
        self,
        id: int,
        voters: Sequence[int],
        dir: str,
        sm,
        *,
        memory: bool = False,
        tick_ms: Optional[int] = None,
        election_tick: Optional[int] = None,
        heartbeat_tick: Optional[int] = None,
        snapshot_entries: Optional[int] = None,
        inbox_capacity: Optional[int] = None,
        clients: Optional[Sequence[int]] = None,
    ):
        callbacks = _Callbacks(sm)
        opts = emf_raft_node_options_t()
        check(lib.emf_raft_node_options_default(byref(opts)))
        opts.id = _unsigned(id, "id", _U64_MAX)
        ids = [_unsigned(v, "voter", _U64_MAX) for v in voters]
        voter_arr = (c_uint64 * max(len(ids), 1))(*ids)
        opts.voters, opts.n_voters = voter_arr, len(ids)
        path = os.fspath(dir)
        #: The ring directory (``dir/net``).
        self.net_dir = os.path.join(path, "net")
        #: The log's directory (None: in memory).
        self.data_dir = None if memory else os.path.join(path, f"node.{opts.id}")
        ring = _c_string(self.net_dir, "dir", path=True)
        opts.ring_dir = ring
        data = None if self.data_dir is None else _c_string(self.data_dir, "dir", path=True)
        opts.data_dir = data
        if tick_ms is not None:
            opts.tick_ms = _unsigned(tick_ms, "tick_ms", _U64_MAX)
        if election_tick is not None:
            opts.election_tick = _unsigned(election_tick, "election_tick", _U32_MAX)
        if heartbeat_tick is not None:
            opts.heartbeat_tick = _unsigned(heartbeat_tick, "heartbeat_tick", _U32_MAX)
        if snapshot_entries is not None:
            opts.snapshot_entries = _unsigned(snapshot_entries, "snapshot_entries", _U64_MAX)
        if inbox_capacity is not None:
            opts.inbox_capacity = _unsigned(inbox_capacity, "inbox_capacity", _U64_MAX)
        client_arr = None
        if clients is not None:
            cids = [_unsigned(c, "client", _U64_MAX) for c in clients]
            client_arr = (c_uint64 * max(len(cids), 1))(*cids)
            opts.clients, opts.n_clients = client_arr, len(cids)
        handle = emf_raft_node_p()
        status = lib.emf_raft_node_start(
            byref(opts), byref(callbacks.struct), None, byref(handle)
        )
        if status != EMF_OK:
            raise error_for(status, last_error_message()) from callbacks.error
        #: This node's id.
        self.id = opts.id
        self._callbacks = callbacks
        self._handle = handle
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_node, handle, os.getpid(), callbacks)

    def _live(self):
        if self._handle is None:
            raise ValueError("operation on a closed erlmcp_flow.raft.Node")
        return self._handle

    def info(self) -> NodeInfo:
        """The node's view as of its latest round."""
        with self._lock:
            i = emf_raft_node_info_t()
            check(lib.emf_raft_node_info(self._live(), byref(i)))
        return NodeInfo(i.id, i.leader, i.term, i.commit, i.applied, bool(i.running))

    def stop(self) -> None:
        """Stops the node and joins its thread (no callback runs after this returns).
        Raises what ended it: :class:`~erlmcp_flow.Error` ``EMF_ERR_STOPPED`` chained from
        the state machine's exception, or the log's or transport's error. Stopping again does
        nothing; the node's data directory may then be opened by a new :class:`Node`."""
        with self._lock:
            status = lib.emf_raft_node_stop(self._live())
            if status != EMF_OK:
                raise error_for(status, last_error_message()) from self._callbacks.error

    def close(self) -> None:
        """Stops the node (its error, if any, is dropped: call :meth:`stop` to see it) and
        frees it. Calling it again does nothing."""
        with self._lock:
            if self._handle is not None:
                self._finalizer()
                self._handle = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Node":
        self._live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
