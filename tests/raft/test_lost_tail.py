"""A replica whose recovery cut entries it may have acknowledged (``RaftCore``, "Lost tail"):
it must not help elect a leader without them, yet a cluster whose every replica lost its tail
(a power loss) must still elect one."""

from __future__ import annotations

import random

from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import VoteRequest, VoteResponse
from tests.raft.network import FIVE_NODES, Network, log_entries


def data_of(network: Network, node_id: str) -> list[bytes]:
    return [entry.data for entry in log_entries(network.cores[node_id]) if entry.data]


def granted_votes(network: Network, node_id: str, since: int) -> list[VoteResponse]:
    return [
        message
        for message in network.sent[since:]
        if isinstance(message, VoteResponse) and message.source == node_id and message.granted
    ]


def commit_x_on_n1_and_n2(network: Network) -> int:
    """n3 down; n1 leads and commits X with n2's acknowledgement; X is n2's last entry."""
    network.crash("n3")
    n1 = network.elect("n1")
    index = n1.propose(b"X")
    network.deliver_all()
    assert n1.log.committed >= index
    assert log_entries(network.cores["n2"])[-1].data == b"X"
    return index


def test_rot_in_the_last_record_cannot_elect_a_leader_without_it() -> None:
    """The amnesia of issue 14: X committed by n1 and n2; n1 down; n2's last record rots and is
    cut as a torn write. n2 heard only from n3 (which lacks X): it must not vote for it."""
    network = Network(pre_vote=False)
    commit_x_on_n1_and_n2(network)
    network.crash("n1")
    n2 = network.lose_tail("n2")
    assert n2.recovering and n2.lost_tail
    network.start("n3")
    since = len(network.sent)
    for _ in range(200):
        network.tick_all()
        assert network.leaders() == [], "a leader without X"
    assert granted_votes(network, "n2", since) == []
    assert network.sent_by("n3", VoteRequest), "n3 campaigned: n2 heard where its log ends"

    network.start("n1")
    network.tick_until(lambda: network.leaders() != [] and not network.cores["n2"].recovering)
    assert network.leaders() == ["n1"]
    network.tick_all(5)
    for node_id in ("n1", "n2", "n3"):
        assert b"X" in data_of(network, node_id), node_id
    assert "n2" not in network.recovering_marks


def test_after_a_power_loss_of_every_replica_one_is_elected_and_keeps_what_was_committed() -> None:
    """Every replica lost its tail: none may wait for a leader. Each hears where the others'
    logs end (their pre-vote requests) and votes for the most up-to-date one."""
    network = Network()
    n1 = network.elect("n1")
    for number in range(3):
        n1.propose(b"%d" % number)
    network.deliver_all()
    committed = data_of(network, "n1")
    n1.propose(b"on n1 only")  # n1's own, acknowledged by nobody: cutting it loses nothing
    network.cut("n1", "n2")
    network.cut("n1", "n3")
    network.deliver_all()
    network.heal()
    for node_id in ("n1", "n2", "n3"):
        network.lose_tail(node_id, entries=0)  # the cuts were of garbage, but who can tell?
    assert all(core.recovering for core in network.cores.values())
    network.tick_until(lambda: len(network.leaders()) == 1)
    network.tick_until(lambda: not any(core.recovering for core in network.cores.values()))
    [leader] = network.leaders()
    assert leader == "n1"  # the only log at least as up to date as every other
    for node_id in ("n1", "n2", "n3"):
        assert data_of(network, node_id)[: len(committed)] == committed
    assert network.recovering_marks == set()


def ask(network: Network, voter: str, candidate: str, last: tuple[int, int], term: int) -> bool:
    """Deliver a vote request to ``voter`` alone; was it granted?"""
    last_index, last_term = last
    since = len(network.sent)
    network.cores[voter].step(
        VoteRequest(term, candidate, voter, last_index, last_term, pre_vote=True)
    )
    network.handle_readies()
    [answer] = [
        message
        for message in network.sent[since:]
        if isinstance(message, VoteResponse) and message.source == voter
    ]
    return answer.granted


def end_of(network: Network, node_id: str) -> tuple[int, int]:
    log = network.cores[node_id].log
    return log.last_index(), log.last_term()


def test_it_votes_only_for_a_candidate_at_least_as_up_to_date_as_every_end_it_heard() -> None:
    network = Network()
    n1 = network.elect("n1")
    n1.propose(b"a")
    network.deliver_all()
    network.crash("n1")
    n2 = network.lose_tail("n2", entries=0)
    assert not ask(network, "n2", "n3", (1, 1), term=5)  # one end heard of the two needed
    assert n2.recovering
    assert ask(network, "n2", "n1", (n1.log.last_index(), n1.log.last_term()), term=5)
    # Two ends heard and its own log as far as the furthest: it has recovered.
    assert not n2.recovering
    assert "n2" not in network.recovering_marks


def test_a_lagging_replica_that_lost_its_tail_votes_for_the_up_to_date_one_only() -> None:
    network = Network(FIVE_NODES)
    n1 = network.elect("n1")
    for name in ("n4", "n5"):
        network.cut("n1", name)
    n1.propose(b"Y")
    network.deliver_all()
    network.heal()
    network.crash("n1")
    n4 = network.lose_tail("n4", entries=0)  # behind n2 and n3, which hold Y
    assert n4._log_ends_needed == 3  # five members, quorum three: three others
    assert not ask(network, "n4", "n5", end_of(network, "n5"), term=9)
    assert not ask(network, "n4", "n2", end_of(network, "n2"), term=9)
    assert not ask(network, "n4", "n5", end_of(network, "n5"), term=9)  # n5 counts once
    assert ask(network, "n4", "n3", end_of(network, "n3"), term=9)  # three heard; n3 holds Y
    assert not ask(network, "n4", "n5", end_of(network, "n5"), term=9)  # n5 lacks Y
    assert n4.recovering  # its own log lacks Y too


def test_a_replica_alone_in_its_group_has_no_one_to_ask() -> None:
    core = RaftCore(
        Config("n1", ("n1",)), MemoryLogStore(), random.Random(0), recovering=True, lost_tail=True
    )
    assert not core.recovering
    assert core.ready().recovered
    core.advance()
    core.campaign()
    assert core.role is Role.LEADER
