"""Agent processes of test_agent.py (importable by a `spawn` child, which imports this module
and nothing of the test file)."""

import time

from erlmcp_flow import agent


def answer(payload: bytes) -> bytes:
    """What every test agent answers: "r:" and the payload (as c-examples/agent.c does)."""
    return b"r:" + payload


def serve(dir, agent_id, stop):
    """A healthy agent: answers until `stop` is set."""
    agent.run(answer, type="echo", dir=dir, id=agent_id, max_tasks=4, stop=stop)


def victim(dir, agent_id, got_task):
    """An agent that takes tasks and never answers: it sets `got_task` on its first one and
    then waits to be killed."""
    with agent.Agent(agent_id, "echo", dir=dir, max_tasks=4) as a:
        while a.recv(0.05) is None:
            pass
        got_task.set()
        while True:  # held until SIGKILL; the heartbeat keeps it alive to the scheduler
            a.heartbeat()
            time.sleep(0.05)
