"""The task scheduler: a thin wrapper of ``emf_sched_*`` (``crates/capi/src/sched.rs``).

A :class:`Scheduler` turns submitted tasks into leases on registered agents and their results
back into actions for the submitter, and never loses an accepted task: every accepted task is
in its ledger (in memory, in a shared-memory segment, or in a file) before
:meth:`Scheduler.submit` returns its id, and a scheduler opened over a durable ledger that
holds records recovers the tasks not yet ended.

It does no I/O of its own: the caller carries out the :class:`Action` s it takes from
:meth:`Scheduler.poll_action` (deliver a task to an agent, revoke one, hand a result or a dead
letter to the submitter) and reports what agents do (:meth:`~Scheduler.started`,
:meth:`~Scheduler.ack`, :meth:`~Scheduler.nack`, :meth:`~Scheduler.heartbeat`,
:meth:`~Scheduler.agent_dead`). Every event takes a clock reading ``now`` in microseconds;
it defaults to :func:`now_us` (the monotonic clock), and a simulation may pass its own (one
clock per scheduler).

>>> s = Scheduler()
>>> s.register_agent("w1", "coder")
>>> task = s.submit("coder", b"job")
>>> d = s.poll_action(); (d.kind, d.agent, d.task == task, d.data)
('deliver', 'w1', True, b'job')
>>> s.ack("w1", d.task, d.attempt, b"done")
False
>>> r = s.poll_action(); (r.kind, r.data)
('result', b'done')
>>> s.close()

One thread at a time uses the library object; this wrapper serialises the calls of several
Python threads with a lock.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import threading
import time
import weakref
from contextlib import contextmanager
from ctypes import byref, c_int, c_size_t, c_uint32, c_uint64
from dataclasses import dataclass
from typing import List, Optional, Union

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_EMPTY,
    EMF_ERR_FULL,
    EMF_ERR_NOT_FOUND,
    EMF_ERR_TIMEOUT,
    EMF_OK,
    Error,
    _InvalidValue,
    check,
    error_for,
    last_error_message,
)
from ._native import (
    emf_sched_action_t,
    emf_sched_options_t,
    emf_sched_p,
    emf_sched_stats_t,
    emf_service_options_t,
    emf_service_p,
    emf_service_stats_t,
    lib,
)
from .codec import BytesLike, _input, _priority_code
from .ring import _U32_MAX, _c_string, _free_in_owner, _Handle, _unsigned

_U64_MAX = 2**64 - 1

# Agent selection (include/erlmcp_flow.h).
EMF_SCHED_LEAST_LOADED = 0
EMF_SCHED_POWER_OF_TWO = 1
EMF_SCHED_ROUND_ROBIN = 2

# Ledger kinds.
EMF_LEDGER_MEMORY = 0
EMF_LEDGER_SHM = 1
EMF_LEDGER_FILE = 2

# Action kinds.
EMF_SCHED_ACTION_NONE = 0
EMF_SCHED_ACTION_DELIVER = 1
EMF_SCHED_ACTION_REVOKE = 2
EMF_SCHED_ACTION_RESULT = 3
EMF_SCHED_ACTION_DEAD_LETTER = 4

# Circuit breaker states (``Scheduler.breaker_state``).
EMF_BREAKER_CLOSED = 0
EMF_BREAKER_OPEN = 1
EMF_BREAKER_HALF_OPEN = 2

#: Names accepted for ``strategy=``.
STRATEGIES = {
    "least_loaded": EMF_SCHED_LEAST_LOADED,
    "power_of_two": EMF_SCHED_POWER_OF_TWO,
    "round_robin": EMF_SCHED_ROUND_ROBIN,
}

#: ``EMF_SCHED_ACTION_*`` code -> :attr:`Action.kind`.
ACTION_KINDS = {
    EMF_SCHED_ACTION_DELIVER: "deliver",
    EMF_SCHED_ACTION_REVOKE: "revoke",
    EMF_SCHED_ACTION_RESULT: "result",
    EMF_SCHED_ACTION_DEAD_LETTER: "dead_letter",
}


def now_us() -> int:
    """The default clock reading of the scheduler's events: the monotonic clock in µs."""
    return time.monotonic_ns() // 1000


def _now(now: Optional[int]) -> int:
    return now_us() if now is None else _unsigned(now, "now", _U64_MAX)


@dataclass(frozen=True)
class Action:
    """One action to carry out (``emf_sched_action_t``)."""

    #: ``"deliver"``, ``"revoke"``, ``"result"`` or ``"dead_letter"``.
    kind: str
    #: The task.
    task: int
    #: The agent (deliver, revoke; else None).
    agent: Optional[str] = None
    #: The attempt, which the agent quotes in started/ack/nack (deliver, revoke; else 0).
    attempt: int = 0
    #: When the lease expires, µs of the scheduler's clock (deliver; else 0).
    deadline_us: int = 0
    #: The payload (deliver), the result (result) or the reason, UTF-8 (dead_letter).
    data: bytes = b""

    @property
    def reason(self) -> str:
        """A dead letter's reason as text."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class SchedStats:
    """A scheduler's counters (``emf_sched_stats_t``)."""

    #: Tasks waiting in the queue.
    queued: int
    #: Tasks leased to an agent.
    leased: int
    #: Tasks completed (a recovered ledger's included).
    completed: int
    #: Tasks dead-lettered (a recovered ledger's included).
    dead_lettered: int
    #: Late or repeated answers, ignored.
    duplicates: int
    #: Deliveries after the first of a task (steals excluded).
    redeliveries: int
    #: Tasks taken from a busy agent by an idle one.
    steals: int
    #: Leases that ran out.
    expired: int
    #: Agents declared dead.
    agents_dead: int
    #: Ledger appends that failed inside an event.
    ledger_errors: int
    #: Agents registered.
    agents: int


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered task (``emf_sched_dead_letter_get``)."""

    #: The task.
    task: int
    #: Why it was given up.
    reason: str
    #: Its payload as submitted; None when unknown (a recovered ledger that was compacted no
    #: longer held it).
    payload: Optional[bytes]


class Scheduler(_Handle):
    """A scheduler (``emf_sched_new``) over a ledger: in memory (the default), a shared-memory
    segment ``shm`` (in directory ``dir``, default ``/dev/shm``; :class:`Busy` while another
    live scheduler owns it) or a file ``file``. A durable ledger holding records is recovered:
    its tasks not yet ended are queued again and delivered once agents register (agents must
    register again; their heartbeats raise :class:`NotFound` until they do).

    Options (checked by the library; ``None`` keeps the default): ``max_queued`` (back-pressure
    bound: :meth:`submit` raises :class:`Full` beyond it), ``heartbeat_timeout_us`` (0: not
    watched), ``max_attempts``, ``lease_factor``, ``min_lease_us``, ``max_lease_us``,
    ``default_lease_us``, ``latency_window``, ``ewma_alpha``, ``strategy`` (a name of
    :data:`STRATEGIES`), ``seed``, ``work_stealing``, ``shm_capacity``."""

    _free = lib.emf_sched_free

    def __init__(
        self,
        *,
        shm: Optional[str] = None,
        dir: Union[str, os.PathLike, None] = None,
        file: Union[str, os.PathLike, None] = None,
        now: Optional[int] = None,
        max_queued: Optional[int] = None,
        heartbeat_timeout_us: Optional[int] = None,
        max_attempts: Optional[int] = None,
        lease_factor: Optional[float] = None,
        min_lease_us: Optional[int] = None,
        max_lease_us: Optional[int] = None,
        default_lease_us: Optional[int] = None,
        latency_window: Optional[int] = None,
        ewma_alpha: Optional[float] = None,
        strategy: str = "least_loaded",
        seed: int = 0,
        work_stealing: bool = True,
        shm_capacity: Optional[int] = None,
        breaker: Optional[dict] = None,
        backpressure: Optional[dict] = None,
        rate_limit: Optional[dict] = None,
    ):
        if shm is not None and file is not None:
            raise _InvalidValue("pass shm= or file=, not both")
        if dir is not None and shm is None:
            raise _InvalidValue("dir= is the directory of a shm= ledger")
        opts = emf_sched_options_t()
        check(lib.emf_sched_options_default(byref(opts)))
        for name, value, limit in (
            ("max_queued", max_queued, 2**63 - 1),
            ("heartbeat_timeout_us", heartbeat_timeout_us, _U64_MAX),
            ("max_attempts", max_attempts, _U32_MAX),
            ("min_lease_us", min_lease_us, _U64_MAX),
            ("max_lease_us", max_lease_us, _U64_MAX),
            ("default_lease_us", default_lease_us, _U64_MAX),
            ("latency_window", latency_window, _U32_MAX),
            ("shm_capacity", shm_capacity, 2**63 - 1),
        ):
            if value is not None:
                setattr(opts, name, _unsigned(value, name, limit))
        if lease_factor is not None:
            opts.lease_factor = float(lease_factor)
        if ewma_alpha is not None:
            opts.ewma_alpha = float(ewma_alpha)
        try:
            opts.strategy = STRATEGIES[strategy]
        except KeyError:
            raise _InvalidValue(
                f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})"
            ) from None
        opts.seed = _unsigned(seed, "seed", _U64_MAX)
        opts.work_stealing = bool(work_stealing)
        # The protections: a dict (possibly empty) turns one on; its keys override the
        # defaults, named as the fields of the C option structs.
        for what, given in (
            ("breaker", breaker),
            ("backpressure", backpressure),
            ("rate_limit", rate_limit),
        ):
            if given is None:
                continue
            if not isinstance(given, dict):
                raise _InvalidValue(f"{what}= takes a dict of settings")
            sub = getattr(opts, what)
            fields = {f for f, _ in type(sub)._fields_} - {"enabled"}
            for key, value in given.items():
                if key not in fields:
                    raise _InvalidValue(
                        f"{what}: unknown setting {key!r} (expected {', '.join(sorted(fields))})"
                    )
                if isinstance(getattr(sub, key), float):
                    setattr(sub, key, float(value))
                else:
                    setattr(sub, key, _unsigned(value, f"{what}.{key}", _U64_MAX))
            sub.enabled = True
        if shm is not None:
            kind, name = EMF_LEDGER_SHM, _c_string(shm, "shm")
            directory = None if dir is None else _c_string(dir, "dir", path=True)
        elif file is not None:
            kind, name, directory = EMF_LEDGER_FILE, _c_string(file, "file", path=True), None
        else:
            kind, name, directory = EMF_LEDGER_MEMORY, None, None
        handle = emf_sched_p()
        check(lib.emf_sched_new(byref(opts), kind, name, directory, _now(now), byref(handle)))
        super().__init__(handle)
        self._action = emf_sched_action_t()
        self._flag = c_int(0)

    def _run(self, fn, *args) -> None:
        """``fn(handle, *args)`` under the lock; raises for a non-OK status."""
        handle = self._enter(blocking=True)
        try:
            status = fn(handle, *args)
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()

    def _flagged(self, fn, *args) -> bool:
        """As :meth:`_run` for a function whose last argument is an ``int *`` answer."""
        handle = self._enter(blocking=True)
        try:
            status = fn(handle, *args, byref(self._flag))
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            return bool(self._flag.value)
        finally:
            self._lock.release()

    # ----- agents -----

    def register_agent(
        self,
        agent: str,
        agent_type: str,
        max_tasks: int = 0,
        *,
        pid: int = 0,
        start_time: int = 0,
        token: int = 0,
        now: Optional[int] = None,
    ) -> None:
        """Registers ``agent`` of ``agent_type`` holding at most ``max_tasks`` tasks (0: 5).
        Its liveness: OS process ``pid`` started at ``start_time`` (clock ticks since boot)
        when ``pid`` is given, else a ``token`` the caller checks itself (reporting deaths with
        :meth:`agent_dead`). Registering again with the same type and liveness keeps the
        agent's tasks; with another, the old incarnation's tasks are released."""
        pid = _unsigned(pid, "pid", _U32_MAX)
        if pid and token:
            raise _InvalidValue("pass pid= (and start_time=) or token=, not both")
        value = _unsigned(start_time if pid else token, "start_time/token", _U64_MAX)
        self._run(
            lib.emf_sched_register_agent,
            _c_string(agent, "agent"),
            _c_string(agent_type, "agent_type"),
            _unsigned(max_tasks, "max_tasks", _U32_MAX),
            pid,
            value,
            _now(now),
        )

    def unregister_agent(self, agent: str, now: Optional[int] = None) -> None:
        """Removes ``agent``; its tasks are delivered again elsewhere. :class:`NotFound` when
        it is not registered."""
        self._run(lib.emf_sched_unregister_agent, _c_string(agent, "agent"), _now(now))

    def heartbeat(self, agent: str, now: Optional[int] = None) -> None:
        """A sign of life. :class:`NotFound` when ``agent`` is not registered (declared dead,
        or the scheduler was recovered): it should register again."""
        self._run(lib.emf_sched_heartbeat, _c_string(agent, "agent"), _now(now))

    def agent_dead(self, agent: str, now: Optional[int] = None) -> None:
        """``agent`` died: its tasks are delivered again elsewhere at once."""
        self._run(lib.emf_sched_agent_dead, _c_string(agent, "agent"), _now(now))

    def set_agent_host(self, agent: str, host: Optional[int]) -> None:
        """Records that ``agent`` runs on gossip member ``host`` (None: on no member in
        particular); :meth:`host_down` then takes it for dead with its host."""
        self._run(
            lib.emf_sched_set_agent_host,
            _c_string(agent, "agent"),
            0 if host is None else _unsigned(host, "host", _U64_MAX),
        )

    def host_down(self, host: int, now: Optional[int] = None) -> int:
        """Membership declared member ``host`` dead (a gossip ``member_down`` event): every
        agent recorded on it is dead and its tasks are delivered again elsewhere. The number
        of agents removed."""
        n = c_size_t()
        self._run(lib.emf_sched_host_down, _unsigned(host, "host", _U64_MAX), _now(now), byref(n))
        return n.value

    def observe_lag(self, agent: str, lag_frames: int, now: Optional[int] = None) -> None:
        """Reports ``agent``'s inbox lag for back-pressure (on with ``backpressure=``)."""
        self._run(
            lib.emf_sched_observe_lag,
            _c_string(agent, "agent"),
            _unsigned(lag_frames, "lag_frames", _U64_MAX),
            _now(now),
        )

    def breaker_state(self, agent: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``: ``agent``'s circuit breaker (on with
        ``breaker=``). :class:`NotFound` when it has none."""
        out = c_uint32(0)
        self._run(lib.emf_sched_breaker_state, _c_string(agent, "agent"), byref(out))
        return {
            EMF_BREAKER_CLOSED: "closed",
            EMF_BREAKER_OPEN: "open",
            EMF_BREAKER_HALF_OPEN: "half_open",
        }[out.value]

    def select_agent(self, agent_type: str) -> Optional[str]:
        """The agent the strategy would give a task of ``agent_type`` now (nothing is leased);
        None when no agent of the type has spare capacity."""
        name = _c_string(agent_type, "agent_type")
        buf = ctypes.create_string_buffer(256)
        n = c_size_t(0)
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_sched_select_agent(handle, name, buf, len(buf), byref(n))
            if status == EMF_ERR_FULL:
                return None
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()
        return buf.raw[: n.value].decode()

    # ----- tasks -----

    def submit(
        self,
        agent_type: str,
        payload: BytesLike,
        priority: Union[str, int] = "normal",
        now: Optional[int] = None,
    ) -> int:
        """Accepts a task and returns its id; it is in the ledger, never lost from then on.
        :class:`Full` when ``max_queued`` tasks wait already (back-pressure: nothing was
        accepted; retry later)."""
        name = _c_string(agent_type, "agent_type")
        code = _priority_code(priority)
        ptr, n = _input(payload, "payload")
        # A local out-parameter: `_run` releases the lock before we read it, and a shared one
        # could by then hold another thread's id.
        task = c_uint64(0)
        self._run(lib.emf_sched_submit, name, code, ptr, n, _now(now), byref(task))
        return task.value

    def started(self, agent: str, task: int, attempt: int, now: Optional[int] = None) -> bool:
        """``agent`` began ``attempt`` of ``task``; False when that attempt is no longer
        leased to it (ignored)."""
        return self._flagged(
            lib.emf_sched_started,
            _c_string(agent, "agent"),
            _unsigned(task, "task", _U64_MAX),
            _unsigned(attempt, "attempt", _U32_MAX),
            _now(now),
        )

    def ack(
        self,
        agent: str,
        task: int,
        attempt: int,
        result: BytesLike = b"",
        now: Optional[int] = None,
    ) -> bool:
        """A result for ``task``. Returns True when it is a duplicate (the task had already
        ended; ignored), False when it completed the task (a ``"result"`` action follows).
        :class:`NotFound` for an id never handed out."""
        ptr, n = _input(result, "result")
        return self._flagged(
            lib.emf_sched_ack,
            _c_string(agent, "agent"),
            _unsigned(task, "task", _U64_MAX),
            _unsigned(attempt, "attempt", _U32_MAX),
            ptr,
            n,
            _now(now),
        )

    def nack(
        self,
        agent: str,
        task: int,
        attempt: int,
        reason: str = "",
        now: Optional[int] = None,
    ) -> bool:
        """``agent`` gives ``task`` back without a result (a failed attempt): it is delivered
        again, or dead-lettered after ``max_attempts``. False when that attempt was not leased
        to it (ignored)."""
        return self._flagged(
            lib.emf_sched_nack,
            _c_string(agent, "agent"),
            _unsigned(task, "task", _U64_MAX),
            _unsigned(attempt, "attempt", _U32_MAX),
            _c_string(reason, "reason"),
            _now(now),
        )

    def tick(self, now: Optional[int] = None) -> None:
        """Advances time: silent agents are declared dead, expired leases released, queued
        tasks delivered. Call it regularly."""
        self._run(lib.emf_sched_tick, _now(now))

    def poll_action(self) -> Optional[Action]:
        """The next action to carry out, oldest first; None when none is pending."""
        a = self._action
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_sched_poll_action(handle, byref(a))
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            if a.kind == EMF_SCHED_ACTION_NONE:
                return None
            # Copied while the lock is held: the library's bytes live until the next poll.
            data = ctypes.string_at(a.data, a.len) if a.len else b""
            return Action(
                kind=ACTION_KINDS[a.kind],
                task=a.task,
                agent=a.agent.decode() if a.agent is not None else None,
                attempt=a.attempt,
                deadline_us=a.deadline_us,
                data=data,
            )
        finally:
            self._lock.release()

    def actions(self) -> List[Action]:
        """Every pending action, oldest first."""
        out = []
        while (a := self.poll_action()) is not None:
            out.append(a)
        return out

    def dead_letters(self) -> List[DeadLetter]:
        """Every dead-lettered task, oldest first (a recovered ledger's included), with its
        reason and payload. Reading removes nothing: the scheduler keeps them for its life."""
        handle = self._enter(blocking=True)
        try:
            n = c_size_t(0)
            status = lib.emf_sched_dead_letter_count(handle, byref(n))
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            out = []
            task, rlen, plen, has = c_uint64(0), c_size_t(0), c_size_t(0), c_int(0)
            for i in range(n.value):
                # First the lengths (no buffers: BUFFER_TOO_SMALL), then the bytes. Under the
                # lock, nothing changes in between.
                args = (byref(task), None, 0, byref(rlen), None, 0, byref(plen), byref(has))
                status = lib.emf_sched_dead_letter_get(handle, i, *args)
                if status != EMF_ERR_BUFFER_TOO_SMALL:
                    raise error_for(status, last_error_message())
                reason = ctypes.create_string_buffer(rlen.value + 1)
                payload = ctypes.create_string_buffer(max(plen.value, 1))
                status = lib.emf_sched_dead_letter_get(
                    handle,
                    i,
                    byref(task),
                    reason,
                    len(reason),
                    byref(rlen),
                    payload,
                    plen.value,
                    byref(plen),
                    byref(has),
                )
                if status != EMF_OK:
                    raise error_for(status, last_error_message())
                out.append(
                    DeadLetter(
                        task=task.value,
                        reason=reason.raw[: rlen.value].decode("utf-8", "replace"),
                        payload=payload.raw[: plen.value] if has.value else None,
                    )
                )
            return out
        finally:
            self._lock.release()

    def stats(self) -> SchedStats:
        """The counters."""
        st = emf_sched_stats_t()
        self._run(lib.emf_sched_stats, byref(st))
        return SchedStats(**{name: getattr(st, name) for name, _ in st._fields_})


# ----- the runtime's scheduler end: a service with futures -----------------------------------

#: Outcome kinds (``emf_service_wait``).
EMF_OUTCOME_DONE = 1
EMF_OUTCOME_DEAD_LETTER = 2

_LEDGERS = {"shm": EMF_LEDGER_SHM, "memory": EMF_LEDGER_MEMORY, "file": EMF_LEDGER_FILE}

# The longest single emf_service_wait of a future: waits longer than this are several calls
# (so a closing service is noticed, and Ctrl-C between calls).
_WAIT_SLICE_MS = 200
_FIRST_BUFFER = 4096


class DeadLettered(Exception):
    """A task given up after ``max_attempts`` failed attempts (raised by
    :meth:`TaskFuture.result`): ``task`` is its id and ``reason`` why."""

    def __init__(self, task: int, reason: str):
        super().__init__(f"task {task} was dead-lettered: {reason}")
        self.task = task
        self.reason = reason


@dataclass(frozen=True)
class ServiceStats:
    """A service's counters (``emf_service_stats_t``)."""

    #: The scheduler's counters.
    sched: SchedStats
    #: Agents with an inbox (registered).
    inboxes: int
    #: Report frames handled.
    reports: int
    #: Report frames refused.
    bad_reports: int
    #: Inbox frames waiting for space in a full inbox.
    pending_deliveries: int
    #: Agents found dead by their process identity.
    deaths: int


class Service:
    """A scheduler directory's dispatcher, run by a thread of the library
    (``emf_service_start``): agents in any process (:mod:`erlmcp_flow.agent`, the C agent of
    ``c-examples/agent.c``) connect to the same ``dir`` and take its tasks.

    :meth:`submit` accepts a task (in the ledger before it returns) and gives a
    :class:`TaskFuture`; its :meth:`~TaskFuture.result` calls ``emf_service_wait``. Any number
    of threads may use a service at once. ``ledger`` is ``"shm"`` (default: a segment in
    ``dir``, survives the death of any process, so a service started again on ``dir``
    recovers the tasks not ended — their outcomes come out of :meth:`take_orphan`),
    ``"memory"`` or ``"file"`` (with ``ledger_path``). The other options are the scheduler's
    (see :class:`Scheduler`) and the runtime's: ``reports_capacity``, ``load_slots``,
    ``liveness_interval_us`` (how often agents' processes are checked), ``batch``.

    >>> import tempfile, threading
    >>> from erlmcp_flow import agent
    >>> with tempfile.TemporaryDirectory() as d, Service(d) as s:
    ...     stop = threading.Event()
    ...     t = threading.Thread(target=agent.run, args=(bytes.upper,),
    ...                          kwargs=dict(type="up", dir=d, id="w1", stop=stop))
    ...     t.start()
    ...     f = s.submit("up", b"hello")
    ...     r = f.result(timeout=30)
    ...     stop.set(); t.join()
    >>> r
    b'HELLO'
    """

    def __init__(
        self,
        dir: Union[str, os.PathLike, None] = None,
        *,
        ledger: str = "shm",
        ledger_path: Union[str, os.PathLike, None] = None,
        max_queued: Optional[int] = None,
        heartbeat_timeout_us: Optional[int] = None,
        max_attempts: Optional[int] = None,
        default_lease_us: Optional[int] = None,
        min_lease_us: Optional[int] = None,
        max_lease_us: Optional[int] = None,
        strategy: str = "least_loaded",
        seed: int = 0,
        work_stealing: bool = True,
        shm_capacity: Optional[int] = None,
        reports_capacity: Optional[int] = None,
        load_slots: Optional[int] = None,
        liveness_interval_us: Optional[int] = None,
        batch: Optional[int] = None,
    ):
        opts = emf_service_options_t()
        check(lib.emf_service_options_default(byref(opts)))
        for target, name, value, limit in (
            (opts.sched, "max_queued", max_queued, 2**63 - 1),
            (opts.sched, "heartbeat_timeout_us", heartbeat_timeout_us, _U64_MAX),
            (opts.sched, "max_attempts", max_attempts, _U32_MAX),
            (opts.sched, "default_lease_us", default_lease_us, _U64_MAX),
            (opts.sched, "min_lease_us", min_lease_us, _U64_MAX),
            (opts.sched, "max_lease_us", max_lease_us, _U64_MAX),
            (opts.sched, "shm_capacity", shm_capacity, 2**63 - 1),
            (opts, "reports_capacity", reports_capacity, 2**63 - 1),
            (opts, "load_slots", load_slots, 2**63 - 1),
            (opts, "liveness_interval_us", liveness_interval_us, _U64_MAX),
            (opts, "batch", batch, 2**63 - 1),
        ):
            if value is not None:
                setattr(target, name, _unsigned(value, name, limit))
        try:
            opts.sched.strategy = STRATEGIES[strategy]
        except KeyError:
            raise _InvalidValue(
                f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})"
            ) from None
        opts.sched.seed = _unsigned(seed, "seed", _U64_MAX)
        opts.sched.work_stealing = bool(work_stealing)
        try:
            opts.ledger = _LEDGERS[ledger]
        except KeyError:
            raise _InvalidValue(
                f"unknown ledger {ledger!r} (expected one of {', '.join(_LEDGERS)})"
            ) from None
        if (ledger == "file") != (ledger_path is not None):
            raise _InvalidValue('ledger_path= goes with ledger="file", and only with it')
        # Kept alive with the options while the library reads them.
        path = None if ledger_path is None else _c_string(ledger_path, "ledger_path", path=True)
        opts.ledger_path = path
        directory = None if dir is None else _c_string(dir, "dir", path=True)
        handle = emf_service_p()
        check(lib.emf_service_start(byref(opts), directory, byref(handle)))
        self._handle = handle
        self._users = 0
        self._cond = threading.Condition()
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(
            self, _free_in_owner, lib.emf_service_free, handle, self._owner
        )

    # Any number of threads call in at once (the library's service is thread-safe); close()
    # waits for the calls under way and refuses new ones.
    @contextmanager
    def _use(self):
        with self._cond:
            if self._handle is None:
                raise ValueError("operation on a closed erlmcp_flow.Service")
            self._users += 1
            handle = self._handle
        try:
            yield handle
        finally:
            with self._cond:
                self._users -= 1
                if self._users == 0:
                    self._cond.notify_all()

    def close(self) -> None:
        """Stops the service's thread and frees it (futures not done then raise
        ``ValueError``); the directory stays for a successor. Calling it again does
        nothing."""
        with self._cond:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            while self._users:
                self._cond.wait()
        if self._finalizer.detach() is not None and os.getpid() == self._owner:
            check(lib.emf_service_free(handle))

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(
        self, agent_type: str, payload: BytesLike = b"", priority: Union[str, int] = "normal"
    ) -> "TaskFuture":
        """Accepts a task for an agent of ``agent_type`` (in the ledger before this returns:
        never lost from then on) and returns the future of its outcome. :class:`Full` is
        back-pressure: nothing was accepted, retry later."""
        name = _c_string(agent_type, "agent_type")
        code = _priority_code(priority)
        ptr, n = _input(payload, "payload")
        task = c_uint64(0)
        with self._use() as h:
            status = lib.emf_service_submit(h, name, code, ptr, n, byref(task))
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        return TaskFuture(self, task.value)

    def _wait(self, task: int, timeout_ms: int):
        """One ``emf_service_wait``: ``(kind, bytes)``, or None when the task has not ended."""
        kind = c_uint32(0)
        n = c_size_t(0)
        with self._use() as h:
            buf = ctypes.create_string_buffer(_FIRST_BUFFER)
            status = lib.emf_service_wait(h, task, timeout_ms, byref(kind), buf, len(buf), byref(n))
            if status == EMF_ERR_BUFFER_TOO_SMALL:
                # The outcome was kept: take it with the length the library asked for.
                buf = ctypes.create_string_buffer(n.value)
                status = lib.emf_service_wait(h, task, 0, byref(kind), buf, len(buf), byref(n))
            if status == EMF_ERR_TIMEOUT:
                return None
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            return kind.value, buf.raw[: n.value]

    def take_orphan(self):
        """The oldest outcome no future waits for (a task accepted by a previous service of
        the directory), as ``(task, result_bytes_or_DeadLettered)``; None when there is
        none now."""
        task = c_uint64(0)
        kind = c_uint32(0)
        n = c_size_t(0)
        with self._use() as h:
            buf = ctypes.create_string_buffer(_FIRST_BUFFER)
            args = (byref(task), byref(kind))
            status = lib.emf_service_take_orphan(h, *args, buf, len(buf), byref(n))
            if status == EMF_ERR_BUFFER_TOO_SMALL:
                buf = ctypes.create_string_buffer(n.value)
                status = lib.emf_service_take_orphan(h, *args, buf, len(buf), byref(n))
            if status == EMF_ERR_EMPTY:
                return None
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        return task.value, _outcome(task.value, kind.value, buf.raw[: n.value])

    def agent(self, agent: str) -> Optional[dict]:
        """The registered agent ``agent`` as ``{"type", "max_tasks", "pid"}`` (looked up in
        the service's registry, through its LRU cache), or None when it is not registered."""
        name = _c_string(agent, "agent")
        n = c_size_t(0)
        max_tasks = c_uint32(0)
        pid = c_uint32(0)
        with self._use() as h:
            buf = ctypes.create_string_buffer(256)
            outs = (byref(n), byref(max_tasks), byref(pid))
            status = lib.emf_service_lookup_agent(h, name, buf, len(buf), *outs)
            if status == EMF_ERR_NOT_FOUND:
                return None
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        return {
            "type": buf.raw[: n.value].decode("utf-8"),
            "max_tasks": max_tasks.value,
            "pid": pid.value,
        }

    def stats(self) -> ServiceStats:
        """The counters."""
        st = emf_service_stats_t()
        with self._use() as h:
            check(lib.emf_service_stats(h, byref(st)))
        sched = SchedStats(**{name: getattr(st.sched, name) for name, _ in st.sched._fields_})
        rest = {name: getattr(st, name) for name, _ in st._fields_ if name != "sched"}
        return ServiceStats(sched=sched, **rest)


def _outcome(task: int, kind: int, data: bytes):
    if kind == EMF_OUTCOME_DONE:
        return data
    return DeadLettered(task, data.decode("utf-8", "replace"))


class TaskFuture:
    """The outcome of a task submitted through a :class:`Service`, shaped like
    :class:`concurrent.futures.Future`: :meth:`result`, :meth:`exception`, :meth:`done`,
    :meth:`add_done_callback` (``cancel`` always fails: an accepted task belongs to the
    scheduler). Waiting is ``emf_service_wait`` itself, called by the waiting thread."""

    def __init__(self, service: Service, task: int):
        self._service = service
        #: The task's id.
        self.task = task
        self._lock = threading.Lock()  # guards _outcome and _callbacks
        self._waiting = threading.Lock()  # one emf_service_wait per task at a time
        self._outcome = None  # bytes or DeadLettered, once known
        self._known = False
        self._callbacks: list = []
        self._watcher = None

    def __repr__(self) -> str:
        state = "done" if self._known else "pending"
        return f"<TaskFuture task={self.task} {state}>"

    def _settle(self, outcome) -> list:
        """Records the outcome; returns the callbacks to call (outside any lock)."""
        with self._lock:
            if self._known:
                return []
            self._outcome, self._known = outcome, True
            callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _run_callbacks(self, callbacks) -> None:
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # as concurrent.futures does: a callback's error is its own
                pass

    def _poll(self, timeout: Optional[float]) -> bool:
        """Waits up to ``timeout`` seconds (None: for ever) for the outcome; True once known."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._known:
            # One emf_service_wait per task at a time (the library answers a second one with
            # EMF_ERR_BUSY): other threads wait for this lock instead.
            if deadline is None:
                locked = self._waiting.acquire()
            else:
                left = deadline - time.monotonic()
                locked = (
                    self._waiting.acquire(timeout=left)
                    if left > 0
                    else self._waiting.acquire(blocking=False)
                )
            if not locked:
                break
            callbacks = []
            try:
                if self._known:
                    break
                ms = _WAIT_SLICE_MS
                if deadline is not None:
                    ms = max(0, min(ms, int((deadline - time.monotonic()) * 1000)))
                got = self._service._wait(self.task, ms)
                if got is not None:
                    # Recorded before the lock is released: the library's copy is taken.
                    callbacks = self._settle(_outcome(self.task, *got))
            finally:
                self._waiting.release()
            self._run_callbacks(callbacks)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._known

    def done(self) -> bool:
        """True once the task ended (asks the service without waiting)."""
        return self._poll(0)

    def running(self) -> bool:
        """True until the task ends."""
        return not self.done()

    def cancel(self) -> bool:
        """False: an accepted task cannot be withdrawn."""
        return False

    def cancelled(self) -> bool:
        """False (see :meth:`cancel`)."""
        return False

    def result(self, timeout: Optional[float] = None) -> bytes:
        """The task's result, waiting up to ``timeout`` seconds (None: for ever).
        :class:`DeadLettered` when it was given up; ``TimeoutError`` when it has not ended
        yet (it is still the scheduler's: ask again)."""
        if not self._poll(timeout):
            raise concurrent.futures.TimeoutError(f"task {self.task}: no outcome yet")
        if isinstance(self._outcome, DeadLettered):
            raise self._outcome
        return self._outcome

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The :class:`DeadLettered` of a task given up, None for a result; waits as
        :meth:`result`."""
        if not self._poll(timeout):
            raise concurrent.futures.TimeoutError(f"task {self.task}: no outcome yet")
        return self._outcome if isinstance(self._outcome, DeadLettered) else None

    def add_done_callback(self, fn) -> None:
        """Calls ``fn(future)`` once the task ended: now when it has, else on the thread that
        learns the outcome — a waiter in :meth:`result`, or a watcher thread started here
        whose only work is calling ``emf_service_wait``."""
        with self._lock:
            if not self._known:
                self._callbacks.append(fn)
                if self._watcher is None:
                    self._watcher = threading.Thread(
                        target=self._watch, name=f"emf-task-{self.task}", daemon=True
                    )
                    self._watcher.start()
                return
        fn(self)

    def _watch(self) -> None:
        try:
            self._poll(None)
        except (ValueError, Error):
            # The service was closed (or its thread stopped): no outcome came here, so the
            # callbacks do not run; result() says why.
            pass
