"""Byzantine agreement through the C ABI: a local PBFT group of 4 replica threads (Ed25519),
the fast path, a stopped primary and the view change, the slow-path client, argument
errors."""

import pytest

import erlmcp_flow as emf
from erlmcp_flow.pbft import Group


def test_agreement_in_order_then_a_view_change():
    with Group.start(view_change_timeout_ms=100, timeout_ms=20000) as g:
        assert g.view() == 0
        first = g.execute(b"one")
        assert (first.position, len(first.result)) == (1, 16)
        assert first.path in ("fast", "slow")
        assert g.fast_path_consensus(b"two")[:8] == (2).to_bytes(8, "little")
        g.stop_replica(0)
        with pytest.raises(emf.NotFound):
            g.stop_replica(0)
        with pytest.raises(emf.NotFound):
            g.stop_replica(7)
        after = g.execute(b"three")
        assert after.position == 3
        assert g.view() >= 1
        assert after.chain != first.chain


def test_a_slow_path_client_waits_for_committed_replies():
    with Group.start(accept_tentative=False, ed25519=False) as g:
        paths = {g.execute(bytes([i])).path for i in range(5)}
        assert paths == {"slow"}


def test_bad_arguments_are_refused():
    for bad in (dict(n=5), dict(n=1), dict(timeout_ms=0), dict(retransmit_ms=0)):
        with pytest.raises(emf.Error) as e:
            Group.start(**bad)
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error):
        Group.start(n=-1)
    g = Group.start(ed25519=False)
    g.close()
    g.close()
    with pytest.raises(ValueError):
        g.execute(b"closed")
