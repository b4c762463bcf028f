"""erlmcp_flow.gossip: members over rings and TCP spread puts and deletes as events, report
a leaving or stopped member down; bad arguments raise; the scheduler's host hooks."""

import socket
import time

import pytest

import erlmcp_flow as emf
from erlmcp_flow.gossip import GossipEvent, Member

FAST = dict(gossip_interval_ms=20, probe_period_ms=100, suspicion_timeout_ms=1000, generation=1)


def wait_for(what, ok, secs=10.0):
    deadline = time.monotonic() + secs
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def next_of(m, pred, secs=10.0):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        e = m.next_event(timeout_ms=100)
        if e is not None and pred(e):
            return e
    raise AssertionError("no matching event")


def ring_cluster(tmp_path, n):
    ids = list(range(1, n + 1))
    return [
        Member(
            i,
            dir=tmp_path,
            peers=[p for p in ids if p != i],
            seeds=[] if i == 1 else [1],
            inbox_capacity=1 << 16,
            **FAST,
        )
        for i in ids
    ]


def test_members_over_rings_spread_puts_and_deletes(tmp_path):
    ms = ring_cluster(tmp_path, 4)
    try:
        wait_for("cluster formed", lambda: all(len(m.live_members()) == 3 for m in ms))
        assert {x.id for x in ms[0].members()} == {2, 3, 4}
        assert all(x.state == "alive" for x in ms[0].members())
        counter = ms[1].put(b"agent/7", "host-2")
        assert counter > 0
        r1 = ms[1].round()
        assert ms[1].round() > r1
        e = next_of(ms[3], lambda e: e.kind == "changed")
        assert e == GossipEvent("changed", key=b"agent/7", value=b"host-2", version=(counter, 2))
        wait_for("key spread", lambda: all(m.get(b"agent/7") == b"host-2" for m in ms))
        assert ms[0].get(b"missing") is None
        assert ms[0].get(b"missing", b"d") == b"d"
        assert ms[2].delete(b"agent/7") is True
        assert ms[2].delete(b"agent/7") is False
        e = next_of(ms[3], lambda e: e.kind == "changed")
        assert e.key == b"agent/7" and e.value is None
        wait_for("delete spread", lambda: all(m.get(b"agent/7") is None for m in ms))
        # A graceful leave, then a crash (closed without leaving): both reported down.
        ms[3].leave()
        next_of(ms[0], lambda e: e == GossipEvent("member_down", member=4))
        ms[2].close()
        next_of(ms[0], lambda e: e == GossipEvent("member_down", member=3), secs=20)
        assert ms[0].live_members() == [2]
        st = ms[0].stats()
        assert st.rejected == 0 and st.rounds > 0 and st.frames_in > 0
        assert ms[0].port == 0
    finally:
        for m in ms:
            m.close()
    with pytest.raises(ValueError):
        ms[0].get(b"k")
    ms[0].close()  # again: nothing


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for so in socks:
        so.bind(("127.0.0.1", 0))
    ports = [so.getsockname()[1] for so in socks]
    for so in socks:
        so.close()
    return ports


def test_two_members_over_tcp():
    pa, pb = free_ports(2)
    a = Member(1, listen=f"127.0.0.1:{pa}", peers={2: f"127.0.0.1:{pb}"}, **FAST)
    b = Member(2, listen=f"127.0.0.1:{pb}", peers={1: f"127.0.0.1:{pa}"}, seeds=[1], **FAST)
    try:
        assert (a.port, b.port) == (pa, pb)
        wait_for("b seen by a", lambda: a.live_members() == [2])
        a.put(b"k", b"v")
        a.round()
        next_of(b, lambda e: e.kind == "changed" and e.key == b"k")
        assert b.get(b"k") == b"v"
    finally:
        a.close()
        b.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        Member(1)
    with pytest.raises(ValueError):
        Member(1, dir=tmp_path, listen="127.0.0.1:0")
    with pytest.raises(TypeError):
        Member(1, listen="127.0.0.1:0", peers=[2])
    with pytest.raises(emf.Error) as e:
        Member(1, listen="nowhere", peers={})
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT"
    with pytest.raises(emf.Error):
        Member(0, dir=tmp_path)
    with pytest.raises(emf.Error):
        Member(1, dir=tmp_path, peers=[2], seeds=[3])
    with Member(1, dir=tmp_path, peers=[2], **FAST) as m:
        with pytest.raises(emf.Error) as e:
            m.put(b"x" * 2048, b"v")
        assert e.value.name == "EMF_ERR_TOO_LARGE"
        with pytest.raises(TypeError):
            m.put(1, b"v")
        assert m.next_event(timeout_ms=0) is None
        assert m.members() == []


def test_scheduler_host_hooks():
    with emf.Scheduler() as s:
        s.register_agent("a1", "t", max_tasks=2)
        s.register_agent("a2", "t", max_tasks=2)
        s.set_agent_host("a1", 7)
        s.set_agent_host("a2", 8)
        s.set_agent_host("a2", None)
        with pytest.raises(emf.NotFound):
            s.set_agent_host("nobody", 7)
        assert s.host_down(7) == 1
        assert s.host_down(8) == 0
        with pytest.raises(emf.NotFound):
            s.heartbeat("a1")
        s.heartbeat("a2")
