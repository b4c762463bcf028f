"""The scheduler through the C ABI: a full cycle, redelivery after an agent's death,
back-pressure, dead letters, recovery from a file ledger, and argument errors."""

import pytest

import erlmcp_flow as emf
from erlmcp_flow.sched import now_us


def drain(s):
    return s.actions()


def test_full_cycle_register_submit_deliver_ack_result():
    with emf.Scheduler() as s:
        s.register_agent("w1", "coder", 2, token=7, now=10)
        task = s.submit("coder", b"job", "high", now=20)
        assert task == 1
        (d,) = drain(s)
        assert (d.kind, d.agent, d.task, d.attempt, d.data) == ("deliver", "w1", 1, 1, b"job")
        assert d.deadline_us == 20 + 10_000_000
        assert s.started("w1", task, 1, now=25) is True
        assert s.started("w1", task, 2, now=25) is False
        assert s.ack("w1", task, 1, b"done", now=30) is False
        (r,) = drain(s)
        assert (r.kind, r.task, r.data, r.agent) == ("result", task, b"done", None)
        assert s.poll_action() is None
        assert s.ack("w1", task, 1, b"again", now=31) is True
        assert s.poll_action() is None
        assert s.select_agent("coder") == "w1"
        assert s.select_agent("tester") is None
        st = s.stats()
        assert (st.completed, st.duplicates, st.agents, st.queued, st.leased) == (1, 2, 1, 0, 0)
        s.heartbeat("w1", now=40)
        s.tick(now=50)
        s.unregister_agent("w1", now=60)
        with pytest.raises(emf.NotFound):
            s.heartbeat("w1", now=70)


def test_default_clock_is_monotonic_microseconds():
    before = now_us()
    with emf.Scheduler() as s:
        s.register_agent("w", "t")
        s.submit("t", b"x")
        (d,) = drain(s)
        # The default lease (10 s) from a reading taken by the wrapper.
        assert before + 10_000_000 <= d.deadline_us <= now_us() + 10_000_000


def test_many_tasks_on_three_agents_come_back_exactly_once():
    """100 tasks on 3 agents working one task per round; one agent dies halfway. Every
    result comes back once; a REVOKE (a steal by an idle agent) drops an attempt."""
    inbox = {f"a{i}": [] for i in range(3)}
    results = {}

    def carry_out(s):
        for a in s.actions():
            if a.kind == "deliver":
                inbox[a.agent].append((a.task, a.attempt, a.data))
            elif a.kind == "revoke":
                inbox[a.agent].remove(next(j for j in inbox[a.agent] if j[:2] == (a.task, a.attempt)))
            elif a.kind == "result":
                assert a.task not in results
                results[a.task] = a.data
            else:
                raise AssertionError(a)

    with emf.Scheduler(strategy="round_robin", heartbeat_timeout_us=0) as s:
        for i, name in enumerate(inbox):
            s.register_agent(name, "t", 4, token=i + 1, now=0)
        ids = {s.submit("t", b"%d" % i, now=1): i for i in range(100)}
        carry_out(s)
        t = 2
        for rnd in range(1000):
            if len(results) == 100:
                break
            t += 1
            if rnd == 5:
                assert inbox["a2"]
                del inbox["a2"]
                s.agent_dead("a2", now=t)
            for name in list(inbox):
                if inbox[name]:
                    task, attempt, data = inbox[name].pop(0)
                    assert s.started(name, task, attempt, now=t) is True
                    assert s.ack(name, task, attempt, data + b"!", now=t) is False
                    carry_out(s)
            s.tick(now=t)
            carry_out(s)
        assert results == {task: b"%d!" % i for task, i in ids.items()}
        st = s.stats()
        assert (st.completed, st.duplicates, st.agents_dead, st.agents) == (100, 0, 1, 2)
        assert st.redeliveries > 0


def test_a_dead_agents_task_is_delivered_again_and_its_late_result_ignored():
    with emf.Scheduler() as s:
        s.register_agent("a", "t", 1, now=0)
        s.register_agent("b", "t", 1, now=0)
        task = s.submit("t", b"p", now=1)
        (first,) = drain(s)
        s.agent_dead(first.agent, now=2)
        with pytest.raises(emf.NotFound):
            s.agent_dead(first.agent, now=2)
        (again,) = drain(s)
        assert (again.kind, again.task, again.attempt) == ("deliver", task, 2)
        assert again.agent != first.agent
        assert s.ack(again.agent, task, 2, b"r2", now=3) is False
        assert s.ack(first.agent, task, 1, b"r1", now=4) is True
        assert [(a.kind, a.data) for a in drain(s)] == [("result", b"r2")]
        st = s.stats()
        assert (st.agents_dead, st.redeliveries, st.duplicates) == (1, 1, 1)


def test_back_pressure_is_full_and_refusals_dead_letter():
    with emf.Scheduler(max_queued=1, max_attempts=1) as s:
        s.submit("t", b"x", now=0)
        with pytest.raises(emf.Full):
            s.submit("t", b"y", now=0)
        s.register_agent("w", "t", 1, now=1)
        (d,) = drain(s)
        assert s.nack("w", d.task, d.attempt, "cannot", now=2) is True
        (dl,) = drain(s)
        assert (dl.kind, dl.task) == ("dead_letter", d.task)
        assert "cannot" in dl.reason
        assert s.nack("w", d.task, d.attempt, now=3) is False
        assert s.stats().dead_lettered == 1


def test_dead_letters_keep_their_reason_and_payload():
    with emf.Scheduler(max_attempts=1) as s:
        assert s.dead_letters() == []
        s.register_agent("w", "t", 3, now=0)
        big = bytes(range(256)) * 40
        ids = [s.submit("t", p, now=1) for p in (b"small", b"", big)]
        delivered = drain(s)
        assert [d.task for d in delivered] == ids
        for d, why in zip(delivered, ("bad input", "no", "\u00e9t\u00e9")):
            assert s.nack("w", d.task, d.attempt, why, now=2) is True
        assert [a.kind for a in drain(s)] == ["dead_letter"] * 3
        dls = s.dead_letters()
        assert [(x.task, x.payload) for x in dls] == list(zip(ids, (b"small", b"", big)))
        assert dls[0].reason.endswith("refused by agent w: bad input")
        assert dls[2].reason.endswith("\u00e9t\u00e9")
        assert isinstance(dls[0], emf.SchedDeadLetter)
        assert s.dead_letters() == dls, "reading removes nothing"
    with pytest.raises(ValueError):
        s.dead_letters()


def test_a_file_ledger_is_recovered(tmp_path):
    path = tmp_path / "ledger"
    with emf.Scheduler(file=path, now=0) as s:
        ids = [s.submit("t", p, now=1) for p in (b"one", b"two", b"three")]
        s.register_agent("w", "t", 1, now=2)
        (d,) = drain(s)
        assert d.task == ids[0]
        s.ack("w", d.task, d.attempt, b"r", now=3)
    with emf.Scheduler(file=path, now=10) as s:
        st = s.stats()
        assert (st.queued, st.completed, st.agents) == (2, 1, 0)
        with pytest.raises(emf.NotFound):
            s.heartbeat("w", now=11)
        s.register_agent("w", "t", 5, now=12)
        assert [(a.kind, a.task, a.data) for a in drain(s)] == [
            ("deliver", ids[1], b"two"),
            ("deliver", ids[2], b"three"),
        ]
        assert s.submit("t", b"", now=13) == ids[2] + 1


def test_a_shm_ledger_has_one_live_owner(tmp_path):
    with emf.Scheduler(shm="sched-led", dir=tmp_path, shm_capacity=1 << 16, now=0) as s:
        s.submit("t", b"p", now=1)
        with pytest.raises(emf.Busy):
            emf.Scheduler(shm="sched-led", dir=tmp_path, now=0)
    with emf.Scheduler(shm="sched-led", dir=tmp_path, now=5) as s:
        assert s.stats().queued == 1


def test_errors():
    with pytest.raises(ValueError):
        emf.Scheduler(strategy="best")
    with pytest.raises(ValueError):
        emf.Scheduler(shm="a", file="b")
    with pytest.raises(ValueError):
        emf.Scheduler(dir="/tmp")
    with pytest.raises(emf.Error) as e:
        emf.Scheduler(max_attempts=0)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as e:
        emf.Scheduler(ewma_alpha=2.0)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as e:
        emf.Scheduler(shm="../x")
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    s = emf.Scheduler()
    for bad in ("", "../x", "a b"):
        with pytest.raises(emf.Error) as e:
            s.register_agent(bad, "t")
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as e:
        s.register_agent("a\0b", "t")
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(ValueError):
        s.register_agent("a", "t", pid=1, token=2)
    with pytest.raises(emf.Error):
        s.register_agent("a", "t", -1)
    with pytest.raises(TypeError):
        s.submit("t", "text, not bytes")
    with pytest.raises(ValueError):
        s.submit("t", b"x", "urgent")
    with pytest.raises(emf.Error) as e:
        s.submit("t", b"x", 9)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as e:
        s.submit("", b"x")
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.NotFound):
        s.ack("a", 42, 1, b"")
    with pytest.raises(emf.NotFound):
        s.started("nobody", 1, 1)
    with pytest.raises(emf.Error):
        s.tick(now=-1)
    s.close()
    s.close()
    with pytest.raises(ValueError):
        s.tick()
    with pytest.raises(ValueError):
        s.poll_action()


def test_concurrent_submits_each_get_their_own_id():
    # submit used to read a shared out-parameter after releasing the lock: two threads could
    # both return the id of the later task.
    import sys
    import threading

    s = emf.Scheduler()
    ids = []
    per_thread = 2000

    def work():
        mine = [s.submit("t", b"") for _ in range(per_thread)]
        ids.extend(mine)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sorted(ids) == list(range(1, 4 * per_thread + 1))
    s.close()


def test_protections_from_python_breaker_backpressure_rate_limit():
    """The protections through the C options: a failing agent's breaker opens and its
    type's tasks go to the other agent; a lagging agent gets nothing until it drains; a rate
    limit answers Full without accepting."""
    breaker = {"min_calls": 2, "failure_ratio": 0.5, "open_for_us": 1_000_000}
    with emf.Scheduler(breaker=breaker, max_attempts=5) as s:
        s.register_agent("bad", "t", 1, token=1, now=0)
        assert s.breaker_state("bad") == "closed"
        task = s.submit("t", b"x", now=10)
        for attempt in (1, 2):
            (d,) = [a for a in s.actions() if a.kind == "deliver"]
            assert (d.agent, d.task, d.attempt) == ("bad", task, attempt)
            s.nack("bad", task, attempt, "boom", now=20 + attempt)
        assert s.breaker_state("bad") == "open"
        assert s.actions() == []  # the task waits: its only agent is shunned
        s.register_agent("good", "t", 1, token=2, now=30)
        (d,) = [a for a in s.actions() if a.kind == "deliver"]
        assert (d.agent, d.task) == ("good", task)
        s.ack("good", task, d.attempt, b"ok", now=40)
        s.actions()
        s.submit("t", b"y", now=50)
        assert [a.agent for a in s.actions() if a.kind == "deliver"] == ["good"]
        with pytest.raises(emf.NotFound):
            s.breaker_state("nobody")
    with emf.Scheduler(backpressure={"high_water": 4, "low_water": 1}) as s:
        s.register_agent("slow", "t", 5, token=1, now=0)
        s.observe_lag("slow", 10, now=1)
        s.submit("t", b"x", now=2)
        assert [a for a in s.actions() if a.kind == "deliver"] == []
        s.observe_lag("slow", 0, now=3)
        assert [a.agent for a in s.actions() if a.kind == "deliver"] == ["slow"]
    with emf.Scheduler() as s:
        s.register_agent("a", "t", token=1, now=0)
        with pytest.raises(emf.Error):
            s.observe_lag("a", 1, now=1)  # back-pressure is off
    with emf.Scheduler(rate_limit={"burst": 2, "initial_milli_per_sec": 1000}) as s:
        s.submit("t", b"1", now=0)
        s.submit("t", b"2", now=0)
        with pytest.raises(emf.Full):
            s.submit("t", b"3", now=0)
        assert s.stats().queued == 2
    with pytest.raises(emf.Error):
        emf.Scheduler(breaker={"no_such": 1})
    with pytest.raises(emf.Error):
        emf.Scheduler(breaker={"failure_ratio": 2.0})
    with pytest.raises(emf.Error):
        emf.Scheduler(rate_limit=[1])
