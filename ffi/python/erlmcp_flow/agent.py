"""Agents of a scheduler directory: a thin wrapper of ``emf_agent_*``
(``crates/capi/src/runtime.rs``).

A :class:`~erlmcp_flow.sched.Service` (in this process or any other, in any language) opens a
directory; agents connect to it by its path, take tasks from their inbox and report results.
:func:`run` is the whole loop of an agent; :class:`Agent` its parts::

    from erlmcp_flow import agent
    agent.run(lambda payload: payload.upper(), type="upper", dir="/dev/shm/emf-sched")

An agent's liveness is its process: when the process dies (even by SIGKILL), the service sees
it gone and delivers its tasks to other agents, so no task is lost.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import byref, c_size_t, c_uint32, c_uint64
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_TIMEOUT,
    EMF_OK,
    error_for,
    last_error_message,
)
from ._native import emf_agent_p, lib
from .codec import BytesLike, _input
from .ring import _U32_MAX, _c_string, _Handle, _unsigned

_FIRST_BUFFER = 4096

__all__ = ["Agent", "Task", "run"]


@dataclass(frozen=True)
class Task:
    """A task received by an :class:`Agent`; answer it with :meth:`Agent.complete` or
    :meth:`Agent.fail`."""

    #: The task's id.
    id: int
    #: The attempt (quoted back in the answer).
    attempt: int
    #: The payload.
    payload: bytes


class Agent(_Handle):
    """Agent ``id`` (1-194 of ``[A-Za-z0-9._-]``, unique among the directory's live agents)
    of type ``type`` in the scheduler directory ``dir`` (None: ``/dev/shm/emf-sched``),
    holding at most ``max_tasks`` tasks at once (0: 5). :class:`NotFound` when no service
    ever opened ``dir``; :class:`Busy` when a live agent has this id. ``close()`` leaves the
    directory: the tasks received and not answered go to other agents. One thread at a time
    uses an agent."""

    _free = lib.emf_agent_free

    def __init__(
        self,
        id: str,
        type: str,
        *,
        dir: Union[str, os.PathLike, None] = None,
        max_tasks: int = 0,
    ):
        handle = emf_agent_p()
        status = lib.emf_agent_connect(
            None if dir is None else _c_string(dir, "dir", path=True),
            _c_string(id, "id"),
            _c_string(type, "type"),
            _unsigned(max_tasks, "max_tasks", _U32_MAX),
            byref(handle),
        )
        if status != EMF_OK:
            raise error_for(status, last_error_message())
        super().__init__(handle)
        #: The agent's id.
        self.id = id
        self._buf = ctypes.create_string_buffer(_FIRST_BUFFER)

    def _call(self, fn, *args) -> None:
        handle = self._enter(blocking=True)
        try:
            status = fn(handle, *args)
            if status != EMF_OK:
                raise error_for(status, last_error_message())
        finally:
            self._lock.release()

    def recv(self, timeout: float = 0.05) -> Optional[Task]:
        """The next task, waiting up to ``timeout`` seconds; None when none came. Records a
        heartbeat."""
        if timeout < 0:
            raise ValueError(f"timeout {timeout!r} must be >= 0")
        ms = min(int(timeout * 1000), _U32_MAX)
        task = c_uint64(0)
        attempt = c_uint32(0)
        n = c_size_t(0)
        handle = self._enter(blocking=True)
        try:
            status = lib.emf_agent_recv(
                handle, ms, byref(task), byref(attempt), self._buf, len(self._buf), byref(n)
            )
            if status == EMF_ERR_BUFFER_TOO_SMALL:
                # The task stays received: fetch it again with the length asked for.
                self._buf = ctypes.create_string_buffer(n.value)
                status = lib.emf_agent_recv(
                    handle, 0, byref(task), byref(attempt), self._buf, len(self._buf), byref(n)
                )
            if status == EMF_ERR_TIMEOUT:
                return None
            if status != EMF_OK:
                raise error_for(status, last_error_message())
            return Task(task.value, attempt.value, self._buf.raw[: n.value])
        finally:
            self._lock.release()

    def complete(self, task: Task, result: BytesLike = b"") -> None:
        """Reports ``task`` done with ``result``. :class:`NotFound` when this agent does not
        hold it (answered already)."""
        ptr, n = _input(result, "result")
        self._call(lib.emf_agent_complete, task.id, task.attempt, ptr, n)

    def fail(self, task: Task, reason: str = "") -> None:
        """Gives ``task`` back without a result: it is delivered again (elsewhere when
        possible) or dead-lettered after the scheduler's ``max_attempts``."""
        self._call(lib.emf_agent_fail, task.id, task.attempt, _c_string(reason, "reason"))

    def heartbeat(self) -> None:
        """A sign of life (a handler running longer than the heartbeat timeout calls it)."""
        self._call(lib.emf_agent_heartbeat)

    def held(self) -> int:
        """Tasks received and not answered yet."""
        n = c_size_t(0)
        self._call(lib.emf_agent_held, byref(n))
        return n.value


def _stopper(stop) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):  # threading.Event, multiprocessing.Event
        return stop.is_set
    if callable(stop):
        return stop
    raise TypeError(f"stop must be None, an Event or a callable, not {type(stop).__name__}")


def run(
    handler: Callable[[bytes], BytesLike],
    *,
    type: str,
    dir: Union[str, os.PathLike, None] = None,
    id: Optional[str] = None,
    max_tasks: int = 0,
    stop=None,
    poll: float = 0.05,
) -> int:
    """Runs an agent: connects (see :class:`Agent`; ``id`` None: ``py-<pid>-<thread>``),
    then polls its inbox and calls ``handler(payload) -> bytes`` for every task — its return
    value completes the task, an exception fails it with the exception's ``repr`` (the task
    is delivered again, or dead-lettered after ``max_attempts``) — until ``stop`` (an
    ``Event`` or a callable returning True; checked at least every ``poll`` seconds), then
    leaves. Returns the number of tasks answered.

    Every receive records a heartbeat: a handler that may run longer than the scheduler's
    heartbeat timeout (5 s by default) belongs in a loop of your own over :class:`Agent`,
    calling :meth:`Agent.heartbeat` while it works."""
    stopped = _stopper(stop)
    if id is None:
        id = f"py-{os.getpid()}-{threading.get_ident() % 1_000_000}"
    answered = 0
    with Agent(id, type, dir=dir, max_tasks=max_tasks) as agent:
        while not stopped():
            task = agent.recv(poll)
            if task is None:
                continue
            try:
                result = handler(task.payload)
                _input(result, "the handler's result")  # a wrong type fails the task
            except Exception as e:
                agent.fail(task, repr(e))
            else:
                agent.complete(task, result)
            answered += 1
    return answered
