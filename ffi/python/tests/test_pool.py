"""The pool manager through the C ABI: warm-up, replacement, growth and shrink, back-off,
a host loop starting real worker processes, and argument errors."""

import multiprocessing

import pytest

import erlmcp_flow as emf

MS = 1000


def S(n):
    """``n`` seconds in µs."""
    return n * 1_000_000


def start_all(p, now, prefix="w"):
    """Answers every pending start with agent ``<prefix><slot>``; returns the slots."""
    slots = []
    for a in p.actions():
        assert a.kind == "start" and a.agent is None
        p.started(a.slot, f"{prefix}{a.slot}", now=now)
        slots.append(a.slot)
    return slots


def test_warm_up_one_start_per_delay_bounded_in_flight():
    with emf.Pool("coder", min_size=3, max_size=5, warmup_delay_us=100 * MS) as p:
        assert p.poll_action() is None, "nothing before the first event"
        p.ensure_min(now=0)
        assert p.actions() == [emf.PoolAction("start", 1)]
        p.tick(now=99 * MS)
        assert p.actions() == []
        assert p.next_deadline() == 100 * MS
        p.tick(now=100 * MS)
        assert [a.slot for a in p.actions()] == [2]
        p.tick(now=300 * MS)
        assert p.actions() == [], "max_starting (2) in flight"
        p.started(1, "w1", now=300 * MS)
        p.started(2, "w2", now=300 * MS)
        assert start_all(p, 300 * MS) == [3]
        st = p.stats()
        assert (st.live, st.starting, st.idle, st.busy, st.started_total) == (3, 0, 3, 0, 3)


def test_death_is_replaced_and_idle_surplus_is_stopped():
    with emf.Pool("coder", min_size=2, max_size=3, warmup_delay_us=0, idle_timeout_us=S(60)) as p:
        p.ensure_min(now=0)
        start_all(p, 0)
        p.agent_gone("w1", now=10)
        assert start_all(p, 20, "r") == [3]
        st = p.stats()
        assert (st.live, st.died, st.replaced) == (2, 1, 1)
        # Growth: tasks wait and every agent is busy.
        p.demand(5, now=30)
        assert p.actions() == []
        p.observe("w2", 1, now=30)
        p.observe("r3", 4, now=30)
        assert start_all(p, 40, "g") == [4]
        p.observe("g4", 1, now=40)
        p.tick(now=S(100))
        assert p.actions() == [], "max_size reached"
        # Demand over: the idle one above min_size is stopped after idle_timeout.
        p.demand(0, now=S(100))
        p.observe("g4", 0, now=S(100))
        p.tick(now=S(160))
        assert p.actions() == [emf.PoolAction("stop", 0, "g4")]
        assert p.stats().stopping == 1
        p.agent_gone("g4", now=S(161))
        st = p.stats()
        assert (st.live, st.stopping, st.died, st.stopped_total) == (2, 0, 1, 1)


def test_failed_starts_back_off():
    with emf.Pool("t", min_size=1, max_size=1, warmup_delay_us=100 * MS, max_backoff_us=S(1)) as p:
        p.ensure_min(now=0)
        (a,) = p.actions()
        p.start_failed(a.slot, "exec: not found", now=0)
        p.tick(now=199 * MS)
        assert p.actions() == []
        p.tick(now=200 * MS)
        (a,) = p.actions()
        p.start_failed(a.slot, now=200 * MS)
        p.tick(now=599 * MS)
        assert p.actions() == []
        p.tick(now=600 * MS)
        assert len(p.actions()) == 1
        assert p.stats().failed_starts == 2


def test_a_start_not_answered_times_out():
    with emf.Pool("t", min_size=1, max_size=1, start_timeout_us=S(1)) as p:
        p.ensure_min(now=0)
        p.actions()
        p.tick(now=S(1))
        st = p.stats()
        assert (st.starting, st.failed_starts, st.timed_out_starts) == (0, 1, 1)


def _worker(conn):
    conn.send("up")
    conn.recv()  # the stop order


def test_host_loop_with_worker_processes():
    """A host that starts real processes for START and stops them for STOP: the pool warms
    up to min_size with live processes and replaces one that is killed."""
    ctx = multiprocessing.get_context("spawn")
    procs = {}
    t = 0
    with emf.Pool("proc", min_size=2, max_size=3, warmup_delay_us=0) as p:

        def carry_out():
            for a in p.actions():
                if a.kind == "start":
                    parent, child = ctx.Pipe()
                    proc = ctx.Process(target=_worker, args=(child,))
                    proc.start()
                    assert parent.recv() == "up"  # the agent reports itself up
                    name = f"proc-{proc.pid}"
                    procs[name] = (proc, parent)
                    p.started(a.slot, name, now=t)
                else:
                    proc, conn = procs.pop(a.agent)
                    conn.send("stop")
                    proc.join(10)
                    p.agent_gone(a.agent, now=t)

        p.ensure_min(now=t)
        carry_out()
        assert p.stats().live == 2 and len(procs) == 2
        victim = sorted(procs)[0]
        proc, _ = procs.pop(victim)
        proc.kill()
        proc.join(10)
        t += 1
        p.agent_gone(victim, now=t)
        carry_out()
        assert p.stats().live == 2 and p.stats().replaced == 1
        assert all(pr.is_alive() for pr, _ in procs.values())
        for proc, conn in procs.values():
            conn.send("stop")
            proc.join(10)


def test_bad_input_raises():
    with pytest.raises(emf.Error) as e:
        emf.Pool("t", min_size=3, max_size=2)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error):
        emf.Pool("t", min_size=-1)
    with pytest.raises(emf.Error):
        emf.Pool("")
    p = emf.Pool("t", min_size=1, max_size=2)
    with pytest.raises(emf.NotFound):
        p.started(7, "w", now=0)
    with pytest.raises(emf.NotFound):
        p.agent_gone("ghost", now=0)
    with pytest.raises(emf.NotFound):
        p.observe("ghost", 0, now=0)
    p.ensure_min(now=0)
    (a,) = p.actions()
    p.started(a.slot, "w", now=0)
    with pytest.raises(emf.Error) as e:
        p.started(a.slot, "v", now=0)
    assert "already answered" in str(e.value)
    with pytest.raises(emf.Error):
        p.started(a.slot, "..", now=0)
    p.close()
    p.close()
    with pytest.raises(ValueError):
        p.tick(now=0)
