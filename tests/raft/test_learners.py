"""Learners (``Config.learners``; Raft thesis 4.2.1): replicated to like any follower, but they
count in no quorum, never campaign and cannot be handed leadership (asked, they vote: they
may have been promoted without knowing it yet). The ground
on which a new replica catches up before it is made a voter (issue 16)."""

from __future__ import annotations

import random

import pytest

from dledger_mq.errors import BadRequest, UsageError
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import VoteRequest
from tests.raft.network import Network, log_entries


def test_a_learner_gets_every_entry_and_the_commit_index() -> None:
    network = Network(("n1", "n2", "n3"), learners=("n4",))
    leader = network.elect("n1")
    index = leader.propose(b"x")
    network.deliver_all()
    learner = network.cores["n4"]
    assert [entry.data for entry in log_entries(learner)][-1] == b"x"
    network.tick_all(3)  # heartbeats carry the commit index
    assert learner.log.committed == index
    assert [e.data for e in network.applied["n4"] if e.data] == [b"x"]


def test_a_learner_never_campaigns_and_no_one_asks_it_for_a_vote() -> None:
    network = Network(("n1", "n2", "n3"), learners=("n4",))
    network.elect("n1")
    network.isolate("n1")
    network.tick_until(lambda: bool(set(network.leaders()) - {"n1"}))
    assert network.cores["n4"].role is Role.FOLLOWER
    assert network.sent_by("n4", VoteRequest) == []
    assert all(
        request.target != "n4" for request in network.sent if isinstance(request, VoteRequest)
    )
    network.cores["n4"].campaign()  # asked to: still nothing
    assert network.cores["n4"].role is Role.FOLLOWER


def test_a_learner_counts_in_no_quorum() -> None:
    """One voter and a learner: the voter commits alone; two voters and a learner, one voter
    down: nothing commits, whatever the learner has."""
    network = Network(("n1", "n2"), learners=("n3",))
    leader = network.elect("n1")
    network.isolate("n2")
    index = leader.propose(b"needs n2")
    network.deliver_all()
    assert network.cores["n3"].log.last_index() >= index  # the learner has it ...
    assert leader.log.committed < index  # ... and it does not count


def test_a_learner_cannot_be_handed_leadership_but_answers_a_vote_request() -> None:
    """It never campaigns and no candidate counts it; but asked, it votes: it may have been
    promoted in entries it has not received yet (thesis 4.1; the candidate that asks has
    them), and without its vote such a group could lose every election."""
    network = Network(("n1", "n2", "n3"), learners=("n4",))
    leader = network.elect("n1")
    with pytest.raises(BadRequest, match="not a voting peer"):
        leader.transfer_leadership("n4")
    learner = RaftCore(
        Config("n4", ("n1", "n2", "n3"), learners=("n4",)), MemoryLogStore(), random.Random(0)
    )
    learner.step(VoteRequest(term=1, source="n2", target="n4", last_log_index=0, last_log_term=0))
    assert learner.vote == "n2"
    assert learner.role is Role.FOLLOWER


def test_a_leader_of_voters_with_a_learner_keeps_leading_when_the_learner_is_gone() -> None:
    """Check-quorum counts voters only: a silent learner does not depose the leader, and a
    learner's answers would not keep a leader that lost its voters."""
    network = Network(("n1", "n2", "n3"), learners=("n4",))
    leader = network.elect("n1")
    network.isolate("n4")
    network.tick_all(100)
    assert leader.role is Role.LEADER
    network.heal()
    for voter in ("n2", "n3"):
        for other in ("n1", "n4"):  # n1 and the learner on one side, the voters on the other
            network.cut(other, voter)
            network.cut(voter, other)
    # Only the learner still answers n1: were it counted, n1 would keep leading.
    network.tick_until(lambda: leader.role is not Role.LEADER)


def test_learners_are_distinct_from_voters() -> None:
    with pytest.raises(UsageError, match="distinct"):
        Config("n1", ("n1", "n2"), learners=("n2",))
    with pytest.raises(UsageError, match="at least one voting"):
        Config("n1", (), learners=("n1",))


def test_a_term_lost_with_its_hard_state_is_taken_from_the_log() -> None:
    """Found with a learner in the simulator (seed 1106): entries of term 2 persisted, the hard
    state after them not (its fsync failed), a crash; the replica came back in term 0 and its
    vote requests (term 1, log of term 2) were refused by every peer as malformed."""
    from dledger_mq.raft.pure.messages import check_peer_message
    from tests.raft.network import store_with

    network = Network(("n1", "n2", "n3"), stores={"n1": store_with([1, 2], term=0)})
    core = network.cores["n1"]
    assert (core.term, core.vote) == (2, None)
    core.campaign()
    [request, *_] = [m for m in core.outbox if isinstance(m, VoteRequest)]
    check_peer_message(request, "n1", request.target)  # a well-formed request now
    assert request.term > request.last_log_term == 2
