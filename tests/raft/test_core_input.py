"""Bad input from a peer or a caller is a typed error, never a crash or a silent corruption."""

from __future__ import annotations

import random

import pytest

from dledger_mq.errors import BadRequest, ProtocolError, UsageError
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import AppendResponse, Heartbeat, VoteRequest, VoteResponse
from tests.raft.network import Network

MEMBERS = ("n1", "n2", "n3")


def leader_n1() -> RaftCore:
    core = RaftCore(Config("n1", MEMBERS, pre_vote=False), MemoryLogStore(), random.Random(0))
    core.campaign()
    core.step(VoteRequest(term=1, source="n2", target="n1", last_log_index=0, last_log_term=0))
    return core


def test_a_stranger_is_answered_like_anyone_but_counts_for_nothing() -> None:
    """Not a member as the log says now (removed, or added in entries not received yet): its
    acknowledgements count for nothing; a vote it asks for while the leader's lease holds is
    ignored, as anyone's; its leadership is followed (only a majority of the true membership
    elects one; this replica's view may be the stale one)."""
    core = Network().elect("n1")
    before = (core.term, core.role, core.leader, list(core.outbox))
    core.step(AppendResponse(term=1, source="n9", target="n1", success=True, match_index=1))
    core.step(VoteRequest(term=9, source="n9", target="n1", last_log_index=9, last_log_term=9))
    assert (core.term, core.role, core.leader, list(core.outbox)) == before
    core.step(Heartbeat(term=9, source="n9", target="n1", commit=0))
    assert (core.term, core.role, core.leader) == (9, Role.FOLLOWER, "n9")


def test_message_addressed_to_another_node_is_refused() -> None:
    core = leader_n1()
    with pytest.raises(ProtocolError, match="reached 'n1'"):
        core.step(Heartbeat(term=1, source="n2", target="n3", commit=0))


def test_acknowledgement_beyond_the_leaders_log_is_refused() -> None:
    core = RaftCore(Config("n1", MEMBERS, pre_vote=False), MemoryLogStore(), random.Random(0))
    core.campaign()
    core.step(VoteResponse(term=1, source="n2", target="n1", granted=True))
    assert core.role.value == "leader"
    bogus = AppendResponse(term=1, source="n2", target="n1", success=True, match_index=99)
    with pytest.raises(ProtocolError, match="beyond"):
        core.step(bogus)
    assert core.log.committed == 0


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"node_id": "n4"}, "not among the members"),
        ({"members": ("n1", "n1")}, "distinct"),
        ({"heartbeat_interval_ticks": 0}, "at least 1"),
        ({"election_timeout_ticks": 1}, "must exceed"),
        ({"max_inflight_appends": 0}, "at least 1"),
    ],
)
def test_invalid_configuration_says_why(kwargs: dict[str, object], reason: str) -> None:
    arguments: dict[str, object] = {"node_id": "n1", "members": MEMBERS, **kwargs}
    with pytest.raises(UsageError, match=reason):
        Config(**arguments)  # type: ignore[arg-type]


def test_transfer_to_a_stranger_is_refused() -> None:
    core = RaftCore(Config("n1", ("n1",)), MemoryLogStore(), random.Random(0))
    core.campaign()
    assert core.role.value == "leader"
    with pytest.raises(BadRequest, match="not a voting peer"):
        core.transfer_leadership("n7")
