"""In-process Raft nodes with a Python state machine (``raft.Node`` over ``emf_raft_node_*``):
three nodes of this process over rings, a client submitting, a node restarted from its data
directory, and an exception in a callback stopping its node."""

import os
import shutil
import struct
import tempfile
import threading
import time

import pytest

import erlmcp_flow as emf
from erlmcp_flow.raft import Client, Node

VOTERS = [1, 2, 3]


class Counter:
    """The sum of the u64 operations applied; ``apply``'s result is the new sum. The
    operation ``b"boom"`` raises."""

    def __init__(self):
        self.sum = 0
        self.applied = []
        self.restored = []
        self.threads = set()

    def apply(self, index, op):
        self.threads.add(threading.get_ident())
        if op == b"boom":
            raise RuntimeError(f"boom at {index}")
        if len(op) != 8:
            return b""  # not a counter operation: answered, not raised
        self.sum += struct.unpack("<Q", op)[0]
        self.applied.append(index)
        return struct.pack("<Q", self.sum)

    def snapshot(self):
        return struct.pack("<Q", self.sum)

    def restore(self, data):
        (self.sum,) = struct.unpack("<Q", data)  # raises on bytes of another length
        self.restored.append(self.sum)

    def query(self, q):
        if q != b"sum":
            raise ValueError("unknown query")
        return struct.pack("<Q", self.sum)


@pytest.fixture
def dir():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="emf-py-node-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_applied(node, index, timeout=10.0):
    deadline = time.monotonic() + timeout
    while node.info().applied < index:
        assert time.monotonic() < deadline, node.info()
        time.sleep(0.001)


def submit(client, v):
    index, result = client.submit(struct.pack("<Q", v))
    return index, struct.unpack("<Q", result)[0]


def test_three_nodes_of_this_process_run_a_python_state_machine(dir):
    sms = [Counter() for _ in VOTERS]
    nodes = [Node(i, VOTERS, dir, sm, snapshot_entries=4) for i, sm in zip(VOTERS, sms)]
    try:
        with Client(os.path.join(dir, "net"), VOTERS, timeout_ms=10_000) as c:
            want = 0
            for v in range(1, 11):
                index, total = submit(c, v)
                want += v
                assert total == want
            for n in nodes:
                wait_applied(n, index)
                info = n.info()
                assert info.running and info.leader in VOTERS and info.term >= 1
            assert [sm.sum for sm in sms] == [55, 55, 55]
            # Every callback ran on a thread of the library's, never this one.
            assert all(threading.get_ident() not in sm.threads for sm in sms)
            # A node of the same id cannot run twice on these rings.
            with pytest.raises(emf.Busy):
                Node(1, VOTERS, dir, Counter())

            # A follower stops and starts again from its data directory with a fresh sm.
            leader = c.leader()
            f = next(i for i, n in enumerate(nodes) if n.id != leader)
            nodes[f].stop()
            assert not nodes[f].info().running
            nodes[f].close()
            for v in range(11, 21):
                index, total = submit(c, v)
                want += v
                assert total == want
            fresh = Counter()
            nodes[f] = Node(VOTERS[f], VOTERS, dir, fresh, snapshot_entries=4)
            assert fresh.restored, "its own snapshot, restored before the constructor returned"
            wait_applied(nodes[f], index)
        for n in nodes:
            n.stop()
        assert [sm.sum for sm in sms[:f] + [fresh] + sms[f + 1 :]] == [want] * 3
        assert fresh.query(b"sum") == struct.pack("<Q", want)
    finally:
        for n in nodes:
            n.close()


def test_an_exception_in_apply_stops_the_node_and_is_chained(dir):
    sm = Counter()
    with Node(1, [1], dir, sm, memory=True) as n:
        with Client(os.path.join(dir, "net"), [1], timeout_ms=300, attempt_timeout_ms=100) as c:
            assert submit(c, 7)[1] == 7
            with pytest.raises(emf.Error):
                c.submit(b"boom")
        deadline = time.monotonic() + 10
        while n.info().running:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(emf.Error) as e:
            n.stop()
        assert e.value.name == "EMF_ERR_STOPPED"
        assert "apply callback failed" in e.value.message
        assert isinstance(e.value.__cause__, RuntimeError)
        assert "boom at" in str(e.value.__cause__)
        assert sm.sum == 7
        n.stop()  # stopped already: nothing more to say
    assert n.closed
    with pytest.raises(ValueError):
        n.info()


def test_bad_state_machines_and_arguments(dir):
    class NoRestore:
        def apply(self, index, op):
            return b""

        def snapshot(self):
            return b""

    with pytest.raises(TypeError, match="restore"):
        Node(1, [1], dir, NoRestore())
    with pytest.raises(emf.Error) as e:
        Node(7, [1, 2, 3], dir, Counter())
    assert e.value.name == "EMF_ERR_INVALID_ARGUMENT" and "voters" in e.value.message
    with pytest.raises(emf.Error):
        Node(1, [1], dir, Counter(), tick_ms=0)
