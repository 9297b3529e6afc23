"""`cluster status` merges the supervisor's view of a node's process with the node's own
answer; the newer fact wins."""

from __future__ import annotations

from dledger_mq.node.cluster_status import status_objects
from dledger_mq.wire.admin import StatusReply


def _reply(node_id: str) -> StatusReply:
    return StatusReply(node_id, "broker-a", "", "follower", 1, "n1", None, 3, 3, 3, ())


def test_a_node_that_answered_is_running_even_if_the_supervisor_has_not_seen_it_yet() -> None:
    # The supervisor marks a node "starting" until its own next probe; this probe already got
    # an answer (a replica just added was shown "starting" after it had been promoted).
    states = {
        "n4": {"state": "starting", "pid": 42},
        "n5": {"state": "starting", "pid": 43},
    }
    probes = [("n4", "127.0.0.1:1", _reply("n4")), ("n5", "127.0.0.1:2", "connection refused")]
    shown = {str(o["id"]): o for o in status_objects(probes, states)}
    assert shown["n4"]["state"] == "running"
    assert shown["n4"]["pid"] == 42
    assert shown["n5"]["state"] == "starting"
    assert shown["n5"]["role"] == "unreachable"


def test_other_supervisor_states_are_shown_as_they_are() -> None:
    states = {"n1": {"state": "paused", "pid": 7}}
    shown = status_objects([("n1", "127.0.0.1:1", _reply("n1"))], states)
    assert shown[0]["state"] == "paused"
