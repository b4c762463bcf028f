"""The scheduler's runtime from Python: a Service with futures and agents (erlmcp_flow.agent)
as threads, as processes (one SIGKILLed mid-run), and as C processes (c-examples/agent)."""

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import erlmcp_flow as emf
from erlmcp_flow import agent

import agent_procs

REPO = Path(__file__).resolve().parents[3]
# Waits are for conditions; this only bounds a hang.
LONG = 60


def service(tmp_path, **kw):
    kw.setdefault("shm_capacity", 8 << 20)
    kw.setdefault("reports_capacity", 1 << 20)
    kw.setdefault("load_slots", 64)
    return emf.Service(tmp_path / "sched", **kw)


def until(cond, what):
    """Waits for a condition (yielding the CPU), failing after LONG seconds."""
    deadline = time.monotonic() + LONG
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def start_threads(n, d, handler, stop, **kw):
    threads = [
        threading.Thread(
            target=agent.run,
            args=(handler,),
            kwargs=dict(type="echo", dir=d, id=f"t{i}", stop=stop, **kw),
        )
        for i in range(n)
    ]
    for t in threads:
        t.start()
    return threads


def test_agents_in_threads_answer_every_task_once(tmp_path):
    with service(tmp_path) as s:
        stop = threading.Event()
        threads = start_threads(3, tmp_path / "sched", agent_procs.answer, stop, max_tasks=4)
        try:
            # Every 50th payload is longer than the agent's first buffer (4 KiB).
            payloads = [b"task-%d" % i + b"x" * (i * 30 if i % 50 == 0 else 0) for i in range(300)]
            futures = [s.submit("echo", p, priority=i % 4) for i, p in enumerate(payloads)]
            results = [f.result(timeout=LONG) for f in futures]
            # The registry knows the agents while they serve.
            assert s.agent("t0") == {"type": "echo", "max_tasks": 4, "pid": os.getpid()}
            assert s.agent("nobody") is None
        finally:
            stop.set()
            for t in threads:
                t.join()
        until(lambda: s.agent("t1") is None, "the agents to leave the registry")
        # One result per task for the submitter. (Work stealing may have run a task twice —
        # taken from a busy agent just as it started it —: the later answer is counted as a
        # duplicate and dropped.)
        assert results == [b"r:" + p for p in payloads]
        st = s.stats()
        assert (st.sched.completed, st.sched.dead_lettered, st.bad_reports) == (300, 0, 0)


def test_a_handler_exception_fails_the_task_until_it_is_dead_lettered(tmp_path):
    seen = []

    def handler(payload):
        seen.append(payload)
        if payload == b"bad":
            raise ValueError("boom")
        if payload == b"wrong type":
            return "not bytes"
        return payload

    with service(tmp_path, max_attempts=2) as s:
        stop = threading.Event()
        threads = start_threads(1, tmp_path / "sched", handler, stop)
        try:
            bad = s.submit("echo", b"bad")
            wrong = s.submit("echo", b"wrong type")
            good = s.submit("echo", b"fine")
            with pytest.raises(emf.DeadLettered) as e:
                bad.result(timeout=LONG)
            assert e.value.task == bad.task
            assert "ValueError('boom')" in e.value.reason
            assert isinstance(wrong.exception(timeout=LONG), emf.DeadLettered)
            assert good.result(timeout=LONG) == b"fine"
            assert good.exception() is None
        finally:
            stop.set()
            threads[0].join()
        assert seen.count(b"bad") == 2 and seen.count(b"wrong type") == 2
        assert s.stats().sched.dead_lettered == 2


def test_the_future_api(tmp_path):
    with service(tmp_path) as s:
        f = s.submit("echo", b"later")
        # No agent yet: not done, a timeout, still pending.
        assert not f.done() and f.running()
        with pytest.raises(concurrent.futures.TimeoutError):
            f.result(timeout=0)
        with pytest.raises(TimeoutError):
            f.exception(timeout=0.01)
        assert not f.cancel() and not f.cancelled()
        called = []
        fired = threading.Event()
        f.add_done_callback(lambda fut: (called.append(fut.result()), fired.set()))
        # Two threads wait for the same future at once: both get the result.
        pool = concurrent.futures.ThreadPoolExecutor(2)
        waits = [pool.submit(f.result, LONG) for _ in range(2)]
        stop = threading.Event()
        threads = start_threads(1, tmp_path / "sched", agent_procs.answer, stop)
        try:
            assert [w.result() for w in waits] == [b"r:later"] * 2
            assert fired.wait(LONG)
            assert called == [b"r:later"] and f.done() and not f.running()
            # Added after the end: called at once.
            f.add_done_callback(lambda fut: called.append("again"))
            assert called[-1] == "again"
        finally:
            stop.set()
            threads[0].join()
            pool.shutdown()


def test_service_and_agent_errors(tmp_path):
    with pytest.raises(emf.NotFound):
        agent.Agent("w", "echo", dir=tmp_path / "nobody")
    with pytest.raises(ValueError):
        emf.Service(tmp_path, ledger="paper")
    with pytest.raises(ValueError):
        emf.Service(tmp_path, ledger="file")  # no ledger_path
    s = service(tmp_path, max_queued=1)
    with pytest.raises(emf.Error) as e:
        s.submit("", b"")
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    s.submit("echo", b"1")
    with pytest.raises(emf.Full):
        s.submit("echo", b"2")
    a = agent.Agent("w", "other", dir=tmp_path / "sched")
    with pytest.raises(emf.Busy):
        agent.Agent("w", "other", dir=tmp_path / "sched")
    assert a.recv(0) is None and a.held() == 0
    with pytest.raises(emf.NotFound):
        a.complete(agent.Task(1, 1, b""), b"x")
    a.close()
    a.close()
    with pytest.raises(ValueError):
        a.recv(0)
    assert s.take_orphan() is None
    s.close()
    s.close()
    with pytest.raises(ValueError):
        s.submit("echo", b"")


def test_a_restarted_service_hands_recovered_outcomes_out_as_orphans(tmp_path):
    with service(tmp_path) as s:
        ids = [s.submit("echo", b"%d" % i).task for i in range(3)]
    # The shared-memory ledger kept the accepted tasks: a new service delivers them again.
    with service(tmp_path) as s:
        stop = threading.Event()
        threads = start_threads(1, tmp_path / "sched", agent_procs.answer, stop)
        try:
            got = {}
            until(lambda: (o := s.take_orphan()) is not None and got.update([o]) or len(got) == 3,
                  "the recovered outcomes")
        finally:
            stop.set()
            threads[0].join()
        assert got == {i: b"r:%d" % n for n, i in enumerate(ids)}


def test_agent_processes_and_one_killed_mid_run(tmp_path):
    """Three agent processes; one takes tasks and is SIGKILLed before answering any: the
    service sees its process gone and delivers its tasks again, so every task completes once."""
    ctx = multiprocessing.get_context("spawn")
    d = str(tmp_path / "sched")
    n = 300
    with service(tmp_path, liveness_interval_us=5_000) as s:
        stop = ctx.Event()
        got_task = ctx.Event()
        victim = ctx.Process(target=agent_procs.victim, args=(d, "victim", got_task))
        healthy = [
            ctx.Process(target=agent_procs.serve, args=(d, f"p{i}", stop)) for i in range(2)
        ]
        victim.start()
        # The victim registers first, so the first tasks go to it too (least loaded).
        until(lambda: s.stats().sched.agents == 1, "the victim to register")
        for p in healthy:
            p.start()
        try:
            until(lambda: s.stats().sched.agents == 3, "the agents to register")
            futures = [s.submit("echo", b"job-%d" % i) for i in range(n)]
            assert got_task.wait(LONG), "the victim never got a task"
            os.kill(victim.pid, signal.SIGKILL)
            results = [f.result(timeout=LONG) for f in futures]
        finally:
            stop.set()
            for p in healthy:
                p.join(LONG)
            if victim.is_alive():
                victim.kill()
            victim.join(LONG)
        assert results == [b"r:job-%d" % i for i in range(n)]
        assert victim.exitcode == -signal.SIGKILL
        assert all(p.exitcode == 0 for p in healthy)
        st = s.stats()
        assert st.deaths == 1 and st.sched.agents_dead == 1
        assert st.sched.redeliveries >= 1, "the victim's tasks were never delivered again"
        assert (st.sched.completed, st.sched.dead_lettered) == (n, 0)


def c_agent():
    """The C example agent (c-examples/run-tests.sh builds it), or None."""
    path = Path(os.environ.get("EMF_C_AGENT", REPO / "c-examples" / "build" / "agent"))
    return path if path.is_file() and os.access(path, os.X_OK) else None


def test_cross_language_python_service_and_c_agent_processes(tmp_path):
    """A Python Service schedules 500 tasks; two C processes (c-examples/agent.c) answer them:
    every result is right and comes back once. Run by the python stage after c-cpp built the
    agent, and by c-examples/run-tests.sh (EMF_REQUIRE_C_AGENT=1: a missing agent fails)."""
    exe = c_agent()
    if exe is None:
        if os.environ.get("EMF_REQUIRE_C_AGENT") == "1":
            pytest.fail("EMF_REQUIRE_C_AGENT=1 and no agent at $EMF_C_AGENT or c-examples/build")
        pytest.skip("no c-examples/build/agent: run c-examples/run-tests.sh first")
    d = tmp_path / "sched"
    n = 500
    # Without work stealing no task is ever run twice: each is answered by exactly one agent.
    with service(tmp_path, work_stealing=False) as s:
        procs = [
            subprocess.Popen([str(exe), "--dir", str(d), "--id", f"c{i}", "--max-tasks", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        try:
            # Every 10th payload is larger than the C agent's first buffer (64 bytes).
            payloads = [b"cross-%d" % i + (b"y" * 500 if i % 10 == 0 else b"") for i in range(n)]
            futures = [s.submit("echo", p) for p in payloads]
            results = [f.result(timeout=LONG) for f in futures]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            outs = [p.communicate(timeout=LONG) for p in procs]
        assert results == [b"r:" + p for p in payloads]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
        handled = sum(int(out.split()[2]) for out, _ in outs)
        assert handled == n
        st = s.stats()
        # Both left (goodbye): no inbox remains.
        assert (st.sched.completed, st.sched.duplicates, st.inboxes) == (n, 0, 0)


def test_module_doctests():
    import doctest

    from erlmcp_flow import sched

    for module in (sched, agent):
        result = doctest.testmod(module, verbose=False)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(sched).attempted > 0
