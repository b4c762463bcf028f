"""Membership and gossip: a thin wrapper of ``emf_gossip_*`` (``crates/capi/src/gossip.rs``,
over the Rust ``mesh::runner::spawn_member``).

A :class:`Member` makes this process one member of a cluster: SWIM failure detection and
push-pull gossip of a versioned key → value map (deletes as tombstones, anti-entropy), over
the shared-memory rings of one directory (members on one host: ``dir=``) or over TCP
(``listen=`` and ``peers={id: "ip:port"}``). The member runs on a thread of the library;
every method may be called from any thread at once.

>>> with Member(1, dir=d, peers=[2]) as a, Member(2, dir=d, peers=[1], seeds=[1]) as b:  # doctest: +SKIP
...     a.put(b"agent/7", b"host-1"); a.round()
...     b.next_event(timeout_ms=1000)      # GossipEvent(kind='changed', key=b'agent/7', ...)
...     b.get(b"agent/7"), b.members()

Events (:meth:`Member.next_event`): ``member_up``, ``member_suspect``, ``member_down``,
``member_restarted`` (a new generation), ``rejoined`` (this member was declared down and came
back), ``changed`` (a remote write or delete of a key). Each member has one subscription,
made when it starts; its queue is bounded and events not fetched in time are dropped and
counted (``stats().events_dropped``).
"""

from __future__ import annotations

import os
import threading
import weakref
from ctypes import byref, c_char_p, c_size_t, c_uint16, c_uint32, c_uint64
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Union

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_NOT_FOUND,
    EMF_ERR_TIMEOUT,
    EMF_OK,
    check,
    error_for,
    last_error_message,
)
from ._native import (
    emf_buf_t,
    emf_gossip_event_t,
    emf_gossip_member_t,
    emf_gossip_options_t,
    emf_gossip_p,
    emf_gossip_stats_t,
    lib,
)
from .codec import _take
from .ring import _c_string, _unsigned
from .sched import _U64_MAX

#: ``emf_gossip_member_t.state``: answering probes.
EMF_GOSSIP_ALIVE = 1
#: ``emf_gossip_member_t.state``: failed a probe; declared down unless it refutes in time.
EMF_GOSSIP_SUSPECT = 2
#: ``emf_gossip_member_t.state``: declared down, or left.
EMF_GOSSIP_DOWN = 3
#: Event kind: a member became live.
EMF_GOSSIP_EVENT_MEMBER_UP = 1
#: Event kind: a member is suspected.
EMF_GOSSIP_EVENT_MEMBER_SUSPECT = 2
#: Event kind: a member was declared down or left.
EMF_GOSSIP_EVENT_MEMBER_DOWN = 3
#: Event kind: a member restarted (a new generation).
EMF_GOSSIP_EVENT_MEMBER_RESTARTED = 4
#: Event kind: this member was declared down and rejoined.
EMF_GOSSIP_EVENT_REJOINED = 5
#: Event kind: a remote write or delete changed a key.
EMF_GOSSIP_EVENT_KEY_CHANGED = 6
#: The most peers or seeds.
EMF_GOSSIP_MAX_PEERS = 65536

#: State numbers to names.
STATES = {EMF_GOSSIP_ALIVE: "alive", EMF_GOSSIP_SUSPECT: "suspect", EMF_GOSSIP_DOWN: "down"}
#: Event kind numbers to names.
EVENT_KINDS = {
    EMF_GOSSIP_EVENT_MEMBER_UP: "member_up",
    EMF_GOSSIP_EVENT_MEMBER_SUSPECT: "member_suspect",
    EMF_GOSSIP_EVENT_MEMBER_DOWN: "member_down",
    EMF_GOSSIP_EVENT_MEMBER_RESTARTED: "member_restarted",
    EMF_GOSSIP_EVENT_REJOINED: "rejoined",
    EMF_GOSSIP_EVENT_KEY_CHANGED: "changed",
}

BytesLike = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class MemberInfo:
    """A member as this one sees it (``emf_gossip_member_t``)."""

    #: Its id.
    id: int
    #: The generation of its process (higher after a restart).
    generation: int
    #: Its incarnation (raised by itself to refute a suspicion).
    incarnation: int
    #: ``"alive"``, ``"suspect"`` or ``"down"``.
    state: str


@dataclass(frozen=True)
class GossipEvent:
    """An event of a member's subscription (``emf_gossip_event_t``)."""

    #: ``"member_up"``, ``"member_suspect"``, ``"member_down"``, ``"member_restarted"``,
    #: ``"rejoined"`` or ``"changed"``.
    kind: str
    #: The member a membership event is about (0 otherwise).
    member: int = 0
    #: For ``"rejoined"``: the new generation.
    generation: int = 0
    #: For ``"changed"``: the key.
    key: Optional[bytes] = None
    #: For ``"changed"``: the new value, None for a delete.
    value: Optional[bytes] = None
    #: For ``"changed"``: the version (Lamport counter, writer's id).
    version: Optional[tuple] = None


@dataclass(frozen=True)
class GossipStats:
    """A member's counters (``emf_gossip_stats_t``)."""

    frames_in: int
    frames_out: int
    rejected: int
    dropped_full: int
    send_failed: int
    events_dropped: int
    rounds: int
    anti_entropy: int
    pushes: int
    pulls: int
    local_writes: int
    remote_applied: int
    probes: int
    failed_probes: int
    refutations: int


def _in(value: BytesLike, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes or str, not {type(value).__name__}")
    return bytes(value)


def _free_member(handle, owner_pid: int) -> None:
    # A finalizer: must not raise.
    if os.getpid() == owner_pid:
        lib.emf_gossip_free(handle)


class Member:
    """This process as gossip member ``id`` (``emf_gossip_t``).

    Transport: ``dir=`` (a ring directory shared by the members on this host; ``peers``
    lists every other member's id) or ``listen="ip:port"`` with ``peers={id: "ip:port"}``.
    ``seeds``: members to announce this one to (none for the first). Options (None keeps the
    default): ``gossip_interval_ms`` (100; floats allowed, down to a few ms),
    ``anti_entropy_interval_ms`` (10000; 0 off), ``max_fan_out`` (10; a round pushes to
    ``min(ceil(log2 N) + 1, max_fan_out)`` peers), ``probe_period_ms`` (1000),
    ``suspicion_timeout_ms`` (from the cluster size), ``generation`` (the wall clock),
    ``inbox_capacity`` (1 MiB), ``seed``.

    Thread-safe: calls may overlap (:meth:`next_event` waits without blocking the others);
    :meth:`close` waits for the calls in progress.
    """

    def __init__(
        self,
        id: int,
        *,
        dir: Optional[str] = None,
        listen: Optional[str] = None,
        peers: Union[Sequence[int], Mapping[int, str]] = (),
        seeds: Sequence[int] = (),
        gossip_interval_ms: Optional[float] = None,
        anti_entropy_interval_ms: Optional[float] = None,
        max_fan_out: Optional[int] = None,
        probe_period_ms: Optional[float] = None,
        suspicion_timeout_ms: Optional[float] = None,
        generation: Optional[int] = None,
        inbox_capacity: Optional[int] = None,
        seed: Optional[int] = None,
    ):
        opts = emf_gossip_options_t()
        check(lib.emf_gossip_options_default(byref(opts)))
        opts.id = _unsigned(id, "id", _U64_MAX)
        keep = []
        if (dir is None) == (listen is None):
            raise ValueError("give exactly one of dir= (rings) and listen= (TCP)")
        if dir is not None:
            ring = _c_string(os.fspath(dir), "dir", path=True)
            keep.append(ring)
            opts.ring_dir = ring
            ids = [_unsigned(p, "peer", _U64_MAX) for p in peers]
        else:
            lst = _c_string(listen, "listen")
            keep.append(lst)
            opts.listen = lst
            if not isinstance(peers, Mapping):
                raise TypeError("over TCP, peers must map ids to 'ip:port' addresses")
            ids = [_unsigned(p, "peer", _U64_MAX) for p in peers]
            addrs = [_c_string(a, "peer address") for a in peers.values()]
            addr_arr = (c_char_p * max(len(addrs), 1))(*addrs)
            keep += [addrs, addr_arr]
            opts.peer_addrs = addr_arr
        peer_arr = (c_uint64 * max(len(ids), 1))(*ids)
        opts.peers, opts.n_peers = peer_arr, len(ids)
        sids = [_unsigned(s, "seed", _U64_MAX) for s in seeds]
        seed_arr = (c_uint64 * max(len(sids), 1))(*sids)
        opts.seeds, opts.n_seeds = seed_arr, len(sids)
        keep += [peer_arr, seed_arr]
        for name, value, field in (
            ("gossip_interval_ms", gossip_interval_ms, "gossip_interval_us"),
            ("anti_entropy_interval_ms", anti_entropy_interval_ms, "anti_entropy_interval_us"),
            ("probe_period_ms", probe_period_ms, "probe_period_us"),
            ("suspicion_timeout_ms", suspicion_timeout_ms, "suspicion_timeout_us"),
        ):
            if value is not None:
                if value < 0:
                    raise ValueError(f"{name} must not be negative")
                setattr(opts, field, _unsigned(int(value * 1000), name, _U64_MAX))
        if max_fan_out is not None:
            opts.max_fan_out = _unsigned(max_fan_out, "max_fan_out", 2**32 - 1)
        if generation is not None:
            opts.generation = _unsigned(generation, "generation", _U64_MAX)
        if inbox_capacity is not None:
            opts.inbox_capacity = _unsigned(inbox_capacity, "inbox_capacity", _U64_MAX)
        if seed is not None:
            opts.seed = _unsigned(seed, "seed", _U64_MAX)
        handle = emf_gossip_p()
        check(lib.emf_gossip_start(byref(opts), byref(handle)))
        #: This member's id.
        self.id = opts.id
        self._handle = handle
        self._cond = threading.Condition()
        self._calls = 0
        self._finalizer = weakref.finalize(self, _free_member, handle, os.getpid())

    # Calls in progress are counted so close() never frees the handle under one.
    def _call(self, fn, *args) -> int:
        with self._cond:
            if self._handle is None:
                raise ValueError("operation on a closed erlmcp_flow.gossip.Member")
            self._calls += 1
            handle = self._handle
        try:
            return fn(handle, *args)
        finally:
            with self._cond:
                self._calls -= 1
                self._cond.notify_all()

    def _ok(self, fn, *args) -> None:
        status = self._call(fn, *args)
        if status != EMF_OK:
            raise error_for(status, last_error_message())

    @property
    def port(self) -> int:
        """The TCP port the member listens on (the one picked for port 0); 0 over rings."""
        p = c_uint16()
        self._ok(lib.emf_gossip_port, byref(p))
        return p.value

    def put(self, key: BytesLike, value: BytesLike) -> int:
        """Writes ``key`` = ``value`` (spread from the next round); the version's counter."""
        k, v = _in(key, "key"), _in(value, "value")
        counter = c_uint64()
        self._ok(lib.emf_gossip_put, k, len(k), v, len(v), byref(counter))
        return counter.value

    def get(self, key: BytesLike, default=None):
        """The value of ``key``, or ``default`` when it has none."""
        k = _in(key, "key")
        buf = emf_buf_t()
        status = self._call(lib.emf_gossip_get, k, len(k), byref(buf))
        if status == EMF_ERR_NOT_FOUND:
            return default
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        return _take(buf)

    def delete(self, key: BytesLike) -> bool:
        """Deletes ``key`` (a tombstone spreads); False when it had no value."""
        k = _in(key, "key")
        deleted = c_uint32()
        self._ok(lib.emf_gossip_delete, k, len(k), byref(deleted))
        return bool(deleted.value)

    def members(self) -> List[MemberInfo]:
        """Every member known (live and down, not this one)."""
        n = c_size_t()
        while True:
            cap = max(n.value, 16)
            arr = (emf_gossip_member_t * cap)()
            status = self._call(lib.emf_gossip_members, arr, cap, byref(n))
            if status == EMF_OK:
                return [
                    MemberInfo(m.id, m.generation, m.incarnation, STATES.get(m.state, "?"))
                    for m in arr[: n.value]
                ]
            if status != EMF_ERR_BUFFER_TOO_SMALL:  # else n is the number now
                raise error_for(status, last_error_message())

    def live_members(self) -> List[int]:
        """The ids of the live (alive or suspect) members, ascending."""
        return sorted(m.id for m in self.members() if m.state != "down")

    def round(self) -> int:
        """Runs one push-pull round now (the scheduled rounds go on unchanged); the
        member's round count."""
        n = c_uint64()
        self._ok(lib.emf_gossip_round, byref(n))
        return n.value

    def leave(self) -> None:
        """Leaves the cluster (the others report this member down); it keeps running until
        closed."""
        self._ok(lib.emf_gossip_leave)

    def next_event(self, timeout_ms: int = 0) -> Optional[GossipEvent]:
        """The next event, waiting up to ``timeout_ms``; None when none came."""
        ev = emf_gossip_event_t()
        status = self._call(
            lib.emf_gossip_next_event, _unsigned(timeout_ms, "timeout_ms", _U64_MAX), byref(ev)
        )
        if status == EMF_ERR_TIMEOUT:
            return None
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        key, value = _take(ev.key), _take(ev.value)
        kind = EVENT_KINDS.get(ev.kind, "?")
        if ev.kind == EMF_GOSSIP_EVENT_KEY_CHANGED:
            return GossipEvent(
                kind,
                key=key,
                value=None if ev.deleted else value,
                version=(ev.version_counter, ev.version_origin),
            )
        return GossipEvent(kind, member=ev.member, generation=ev.generation)

    def stats(self) -> GossipStats:
        """The member's counters."""
        s = emf_gossip_stats_t()
        self._ok(lib.emf_gossip_stats, byref(s))
        return GossipStats(*(getattr(s, f) for f, _ in emf_gossip_stats_t._fields_))

    def close(self) -> None:
        """Stops the member (without leaving: call :meth:`leave` first for a graceful exit)
        once the calls in progress returned, and frees it. Calling it again does nothing."""
        with self._cond:
            if self._handle is None:
                return
            handle, self._handle = self._handle, None
            while self._calls:
                self._cond.wait()
        if self._finalizer.detach() is not None:
            check(lib.emf_gossip_free(handle))

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Member":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
