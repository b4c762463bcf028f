"""Replicated state through the C ABI: a local cluster of 3 `erlmcp-flow raft node`
processes (EMF_BIN, else <repo>/target/{release,debug}/erlmcp-flow), the key-value store, a
leader SIGKILL, a second client, and argument errors."""

import os
import threading
import time
from pathlib import Path

import pytest

import erlmcp_flow as emf
from erlmcp_flow import raft
from erlmcp_flow.raft import Client, Cluster

REPO = Path(__file__).resolve().parents[3]


def node_binary():
    if os.environ.get("EMF_BIN"):
        return os.environ["EMF_BIN"]
    for kind in ("release", "debug"):
        p = REPO / "target" / kind / "erlmcp-flow"
        if p.is_file():
            return str(p)
    pytest.fail("no erlmcp-flow binary: build it (cargo build -p erlmcp-flow-bench) or set EMF_BIN")


@pytest.fixture
def cluster():
    with Cluster.start(3, bin=node_binary(), timeout_ms=5000, attempt_timeout_ms=200) as c:
        yield c


def test_submit_wait_and_the_kv_store(cluster):
    c = cluster
    assert c.members() == [1, 2, 3]
    assert os.path.isdir(c.dir)
    leader, term = c.leader_and_term()
    assert leader in (1, 2, 3) and term >= 1 and c.leader() == leader and c.term() == term
    first = c.submit_operation(b"opaque")
    indexes = [c.append_entry(b"e%d" % i) for i in range(50)]
    assert indexes == sorted(set(indexes)) and indexes[0] > first
    assert c.wait_committed(indexes[-1], 2000) >= indexes[-1]
    # Pipelined: one call, many in flight; entries batched together share an index.
    many = c.submit_many([b"m%d" % i for i in range(200)] + [b""], window=16)
    assert len(many) == 201 and many[0] > indexes[-1] and many == sorted(many)
    assert c.submit_many([]) == []
    with pytest.raises(emf.Error) as e:
        c.submit_many([b"x"], window=0)
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT" and "window" in e.value.message
    with pytest.raises(TypeError):
        c.submit_many(["text"])
    with pytest.raises(emf.Timeout):
        c.wait_committed(indexes[-1] + 10**6, 50)
    c.set(b"k", b"v1")
    assert c.get(b"k") == b"v1"
    assert c.get(b"absent") is None
    assert c.cas(b"k", b"v0", b"v2") == (False, b"v1")
    assert c.cas(b"k", b"v1", b"v2") == (True, b"v1")
    assert c.cas(b"new", None, b"x") == (True, None)
    assert c.cas(b"new", None, b"y") == (False, b"x")
    big = bytes(range(256)) * 40  # larger than the first buffer: fetched with _result
    c.set(b"big", big)
    assert c.get(b"big") == big
    s = c.status(leader)
    assert s.id == leader and s.leader == leader and s.voters == 3 and s.commit >= indexes[-1]
    stats = c.stats()
    assert [n.node for n in stats] == [1, 2, 3]
    assert all(n.error is None and n.voters == (1, 2, 3) for n in stats)
    assert "proposed" in stats[0].counters


def test_leader_kill_then_write_and_catch_up(cluster):
    c = cluster
    c.set(b"before", b"1")
    old, old_term = c.leader_and_term()
    c.kill(old)
    with pytest.raises(emf.NotFound):
        c.kill(old)
    c.set(b"after", b"2")  # a new leader answers; redirects are the client's
    new, new_term = c.leader_and_term()
    assert new != old and new_term > old_term
    assert c.get(b"before") == b"1"
    dead = [n for n in c.stats() if n.node == old]
    assert dead[0].error is not None and dead[0].error[0] == "EMF_ERR_TIMEOUT"
    c.restart(old)
    index = c.set(b"again", b"3")
    # The restarted node catches up from its log and the leader: polled until it has, up
    # to a generous deadline (a loaded 2-core CI machine restarts a process slowly).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if c.status(old).applied >= index:
                break
        except emf.Timeout:
            pass
    assert c.status(old).applied >= index
    # Two of three down: no quorum, a timeout (not a hang).
    others = [n for n in (1, 2, 3) if n != c.leader()]
    c.kill(others[0])
    c.kill(others[1])
    with pytest.raises(emf.Timeout):
        c.set(b"lost", b"x")


def test_a_second_client_and_threads(cluster):
    c = cluster
    c.set(b"shared", b"yes")
    with Client(os.path.join(c.dir, "net"), [1, 2, 3], timeout_ms=5000) as cl:
        assert cl.get(b"shared") == b"yes"
        i = cl.append_entry(b"from the client")
        assert cl.wait_committed(i) >= i
        assert cl.submit_many([b"a", b"b"], window=2)[0] > i
        assert cl.leader() == c.leader()
    # One thread at a time: another thread inside gets Busy, not a race.
    started, errors = threading.Event(), []

    def hold():
        started.set()
        try:
            c.wait_committed(10**9, 300)
        except emf.Timeout:
            pass

    t = threading.Thread(target=hold)
    t.start()
    started.wait()
    for _ in range(100):
        try:
            c.members()
        except emf.Busy as e:
            errors.append(e)
            break
        threading.Event().wait(0.002)
    t.join()
    assert errors, "a second thread was let in"


def test_argument_errors(tmp_path):
    with pytest.raises(emf.Error) as e:
        Cluster.start(0, str(tmp_path), bin=node_binary())
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT"
    with pytest.raises(emf.Error) as e:
        Cluster.start(1, str(tmp_path), bin="/nonexistent/erlmcp-flow")
    assert e.value.name == "EMF_ERR_IO" and "EMF_BIN" in e.value.message
    with pytest.raises(emf.Error) as e:
        Cluster.start(1, str(tmp_path), bin=node_binary(), tick_ms=0)
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT"
    with pytest.raises(emf.Error):
        Cluster.start(-1, str(tmp_path))
    with pytest.raises(emf.Error) as e:
        Client(str(tmp_path), [])
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT"
    with Cluster.start(1, bin=node_binary(), memory=True, timeout_ms=2000) as c:
        d = c.dir
        with pytest.raises(TypeError):
            c.set("text", b"v")
        with pytest.raises(emf.NotFound):
            c.restart(7)
        assert c.submit_operation(b"x") >= 1
    assert not os.path.exists(d), "the directory start made is removed"
    with pytest.raises(ValueError):
        c.leader()


def test_reads_transfer_and_membership(cluster):
    c = cluster
    c.set(b"k", b"v")
    leader = c.leader()
    commit = c.status(leader).commit
    # An encoded get (kind 2, u32 length, key) answered with an encoded value.
    index, answer = c.read(b"\x02\x01\x00\x00\x00k")
    assert index >= 1 and answer == b"\x02\x01\x01\x00\x00\x00v"
    assert c.get(b"k") == b"v" and c.get(b"nope") is None
    assert c.status(leader).commit == commit, "reads write no log entry"
    with pytest.raises(emf.Error) as e:
        c.read(b"x")
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT" and "not a KV operation" in e.value.message
    assert c.membership() == raft.Membership((1, 2, 3), (), False)
    # Leadership moves; bad targets are refused.
    to = leader % 3 + 1
    term = c.transfer_leader(to)
    assert c.leader_and_term() == (to, term)
    for bad in (0, 9):
        with pytest.raises(emf.Error) as e:
            c.transfer_leader(bad)
        assert e.value.name == "EMF_ERR_INVALID_ARGUMENT"
    # The leader cannot remove itself; a follower is removed, added back as a learner (same
    # process, same data), promoted; then it can lead.
    with pytest.raises(emf.Error) as e:
        c.remove_member(to)
    assert "transfer leadership first" in e.value.message
    f = to % 3 + 1
    assert c.remove_member(f) > 0
    c.set(b"while-out", b"1")
    c.add_learner(f)
    for _ in range(200):
        m = c.membership()
        if not m.joint:
            break
        threading.Event().wait(0.01)
    assert (len(m.voters), m.learners, m.joint) == (2, (f,), False)
    c.add_voter(f)
    with Client(os.path.join(c.dir, "net"), [1, 2, 3], timeout_ms=5000) as cl:
        for _ in range(200):
            m = cl.membership()
            if not m.joint:
                break
            threading.Event().wait(0.01)
        assert m == raft.Membership((1, 2, 3), (), False)
        assert cl.transfer_leader(f) > term
        assert cl.leader() == f
        assert cl.read(b"\x02\x09\x00\x00\x00while-out")[1] == b"\x02\x01\x01\x00\x00\x001"
        with pytest.raises(ValueError):
            cl.change_membership([])
        with pytest.raises(emf.Error) as e:
            cl.change_membership([(7, 2)])
        assert "kind 7" in e.value.message
