"""The pool manager: a thin wrapper of ``emf_pool_*`` (``crates/capi/src/pool.rs``).

A :class:`Pool` keeps a pool of agents of one type between ``min_size`` and ``max_size``:
pre-warmed (one start per ``warmup_delay_us``, at most ``max_starting`` in flight), dead agents
replaced, one more agent started when tasks wait and every agent is busy, agents idle for
``idle_timeout_us`` above ``min_size`` stopped; failed starts back off exponentially (bounded
by ``max_backoff_us``) so a broken start command is not spun on. The rules live in the Rust
core (``erlmcp_flow::sched::pool``).

It starts nothing itself: the caller carries out the :class:`PoolAction` s it takes from
:meth:`Pool.poll_action` — ``"start"`` one agent (a worker process, a callable) and report
:meth:`~Pool.started` with its id or :meth:`~Pool.start_failed`; ``"stop"`` an idle agent —
and reports what happens to agents (:meth:`~Pool.agent_gone`, :meth:`~Pool.observe`, the
queue's :meth:`~Pool.demand`). Every event takes a clock reading ``now`` in microseconds; it
defaults to the monotonic clock, and a simulation may pass its own (one clock per pool).

>>> p = Pool("coder", min_size=1, max_size=2)
>>> p.ensure_min(now=0)
>>> a = p.poll_action(); (a.kind, a.slot)
('start', 1)
>>> p.started(a.slot, "w1", now=10)
>>> p.stats().live
1
>>> p.close()

One thread at a time uses the library object; this wrapper serialises the calls of several
Python threads with a lock.
"""

from __future__ import annotations

import ctypes
from ctypes import byref, c_size_t, c_uint32, c_uint64
from dataclasses import dataclass
from typing import List, Optional

from ._errors import EMF_OK, check, error_for, last_error_message
from ._native import emf_pool_options_t, emf_pool_p, emf_pool_stats_t, lib
from .ring import _U32_MAX, _c_string, _Handle, _unsigned
from .sched import _U64_MAX, _now

# Action kinds (include/erlmcp_flow.h).
EMF_POOL_ACTION_NONE = 0
EMF_POOL_ACTION_START = 1
EMF_POOL_ACTION_STOP = 2

#: ``EMF_POOL_ACTION_*`` code -> :attr:`PoolAction.kind`.
POOL_ACTION_KINDS = {EMF_POOL_ACTION_START: "start", EMF_POOL_ACTION_STOP: "stop"}

# An agent id is at most 194 bytes: a NUL more always fits.
_AGENT_BUF = 256


@dataclass(frozen=True)
class PoolAction:
    """One action to carry out."""

    #: ``"start"`` (start one agent; answer with the slot) or ``"stop"`` (stop ``agent``).
    kind: str
    #: The start's slot (start; else 0).
    slot: int = 0
    #: The agent to stop (stop; else None).
    agent: Optional[str] = None


@dataclass(frozen=True)
class PoolStats:
    """A pool's counters (``emf_pool_stats_t``)."""

    #: Agents live (started, not gone, not told to stop).
    live: int
    #: Starts in flight.
    starting: int
    #: Live agents with no task in flight.
    idle: int
    #: Live agents with tasks in flight.
    busy: int
    #: Agents told to stop, not yet reported gone.
    stopping: int
    #: Starts that succeeded.
    started_total: int
    #: Stop actions issued.
    stopped_total: int
    #: Starts that failed (reported, or timed out).
    failed_starts: int
    #: Starts that timed out (included in ``failed_starts``).
    timed_out_starts: int
    #: Live agents reported gone (deaths).
    died: int
    #: Successful starts that replaced a dead agent.
    replaced: int


class Pool(_Handle):
    """A pool manager (``emf_pool_new``) for agents of ``agent_type``.

    Options (checked by the library; ``None`` keeps the default): ``min_size`` (5),
    ``max_size`` (20), ``max_starting`` (2), ``idle_timeout_us`` (60 s), ``warmup_delay_us``
    (100 ms), ``start_timeout_us`` (30 s), ``max_backoff_us`` (30 s). Nothing is started until
    the first event (typically :meth:`ensure_min`)."""

    _free = lib.emf_pool_free

    def __init__(
        self,
        agent_type: str,
        *,
        min_size: Optional[int] = None,
        max_size: Optional[int] = None,
        max_starting: Optional[int] = None,
        idle_timeout_us: Optional[int] = None,
        warmup_delay_us: Optional[int] = None,
        start_timeout_us: Optional[int] = None,
        max_backoff_us: Optional[int] = None,
    ):
        opts = emf_pool_options_t()
        check(lib.emf_pool_options_default(byref(opts)))
        for name, value, limit in (
            ("min_size", min_size, _U32_MAX),
            ("max_size", max_size, _U32_MAX),
            ("max_starting", max_starting, _U32_MAX),
            ("idle_timeout_us", idle_timeout_us, _U64_MAX),
            ("warmup_delay_us", warmup_delay_us, _U64_MAX),
            ("start_timeout_us", start_timeout_us, _U64_MAX),
            ("max_backoff_us", max_backoff_us, _U64_MAX),
        ):
            if value is not None:
                setattr(opts, name, _unsigned(value, name, limit))
        handle = emf_pool_p()
        check(lib.emf_pool_new(byref(opts), _c_string(agent_type, "agent_type"), byref(handle)))
        super().__init__(handle)
        self.agent_type = agent_type

    def _run(self, fn, *args) -> None:
        """``fn(handle, *args)`` under the lock; raises for a non-OK status."""
        handle = self._enter(blocking=True)
        try:
            status = fn(handle, *args)
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()

    def ensure_min(self, now: Optional[int] = None) -> None:
        """Brings the pool towards ``min_size`` (the original ``ensure_min_pool/0``): the starts
        the warm-up rule allows now."""
        self._run(lib.emf_pool_ensure_min, _now(now))

    def tick(self, now: Optional[int] = None) -> None:
        """Advances time: late starts time out, idle agents above ``min_size`` are stopped,
        due starts issued. Call it regularly (or at :meth:`next_deadline`)."""
        self._run(lib.emf_pool_tick, _now(now))

    def started(self, slot: int, agent: str, now: Optional[int] = None) -> None:
        """Start ``slot`` succeeded: ``agent`` is live and idle. :class:`NotFound` for a slot
        never issued; :class:`Error` with ``EMF_ERR_INVALID_ARGUMENT`` for a slot already answered or an id
        already in the pool."""
        self._run(
            lib.emf_pool_started,
            _unsigned(slot, "slot", _U64_MAX),
            _c_string(agent, "agent"),
            _now(now),
        )

    def start_failed(self, slot: int, reason: str = "", now: Optional[int] = None) -> None:
        """Start ``slot`` failed (counts towards the back-off)."""
        self._run(
            lib.emf_pool_start_failed,
            _unsigned(slot, "slot", _U64_MAX),
            _c_string(reason, "reason"),
            _now(now),
        )

    def agent_gone(self, agent: str, now: Optional[int] = None) -> None:
        """``agent`` died (replaced if the pool falls below ``min_size``) or, after a stop
        action, stopped. :class:`NotFound` for an agent not in the pool."""
        self._run(lib.emf_pool_agent_gone, _c_string(agent, "agent"), _now(now))

    def observe(self, agent: str, in_flight: int, now: Optional[int] = None) -> None:
        """``agent`` has ``in_flight`` tasks now (0: idle)."""
        self._run(
            lib.emf_pool_observe,
            _c_string(agent, "agent"),
            _unsigned(in_flight, "in_flight", _U32_MAX),
            _now(now),
        )

    def demand(self, queued: int, now: Optional[int] = None) -> None:
        """``queued`` tasks of the pool's type wait (replaces the previous reading)."""
        self._run(lib.emf_pool_demand, _unsigned(queued, "queued", 2**63 - 1), _now(now))

    def poll_action(self) -> Optional[PoolAction]:
        """The next action to carry out, oldest first; None when none is pending."""
        kind, slot, n = c_uint32(0), c_uint64(0), c_size_t(0)
        buf = ctypes.create_string_buffer(_AGENT_BUF)
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_pool_poll_action(
                handle, byref(kind), byref(slot), buf, len(buf), byref(n)
            )
            if status != EMF_OK:
                # A buffer too small cannot happen with 256 bytes; raised if it does.
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()
        if kind.value == EMF_POOL_ACTION_NONE:
            return None
        agent = buf.raw[: n.value].decode() if kind.value == EMF_POOL_ACTION_STOP else None
        return PoolAction(kind=POOL_ACTION_KINDS[kind.value], slot=slot.value, agent=agent)

    def actions(self) -> List[PoolAction]:
        """Every pending action, oldest first."""
        out = []
        while (a := self.poll_action()) is not None:
            out.append(a)
        return out

    def next_deadline(self) -> Optional[int]:
        """When the pool next needs a :meth:`tick` (µs of its clock); None when nothing is
        pending in time."""
        out = c_uint64(0)
        self._run(lib.emf_pool_next_deadline, byref(out))
        return None if out.value == _U64_MAX else out.value

    def stats(self) -> PoolStats:
        """The counters."""
        st = emf_pool_stats_t()
        self._run(lib.emf_pool_stats, byref(st))
        return PoolStats(**{name: getattr(st, name) for name, _ in st._fields_})


__all__ = [
    "EMF_POOL_ACTION_NONE",
    "EMF_POOL_ACTION_START",
    "EMF_POOL_ACTION_STOP",
    "POOL_ACTION_KINDS",
    "Pool",
    "PoolAction",
    "PoolStats",
]
