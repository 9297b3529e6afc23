"""A replica that lost its log does not vote until a leader has caught it up (``RaftCore``'s
"recovering"): the amnesia that lost committed entries, and what recovery must still allow."""

from __future__ import annotations

from dledger_mq.raft.pure.core import Role
from dledger_mq.raft.pure.messages import TimeoutNow, VoteRequest, VoteResponse
from tests.raft.network import Network, log_entries


def data_of(network: Network, node_id: str) -> list[bytes]:
    return [entry.data for entry in log_entries(network.cores[node_id]) if entry.data]


def test_a_wiped_replica_cannot_help_elect_a_leader_without_what_it_had_acknowledged() -> None:
    """n1 and n2 commit X while n3 is down; n1 crashes; n2's disk is wiped. The old code let
    n3 win with n2's vote, and X was gone. Now nobody leads until n1 is back, then X stays."""
    network = Network(pre_vote=False)
    network.crash("n3")
    n1 = network.elect("n1")
    index = n1.propose(b"X")
    network.deliver_all()
    assert n1.log.committed >= index
    network.crash("n1")
    network.wipe("n2")
    wiped_at = len(network.sent)
    network.start("n3")
    for _ in range(200):
        network.tick_all()
        assert network.leaders() == [], "a leader without X"
    since_wipe = [m for m in network.sent[wiped_at:] if m.source == "n2"]
    # It only tells where its log ends (pre-votes it never counts), and grants nothing.
    assert all(m.pre_vote for m in since_wipe if isinstance(m, VoteRequest))
    assert not any(isinstance(m, VoteResponse) and m.granted for m in since_wipe)
    assert any(isinstance(m, VoteResponse) for m in since_wipe)  # it was asked, and refused

    network.start("n1")
    network.tick_until(lambda: network.leaders() != [] and not network.cores["n2"].recovering)
    [leader] = network.leaders()
    assert leader == "n1"  # n3 lacks X: only n1 could win
    network.tick_all(5)
    for node_id in ("n1", "n2", "n3"):
        assert b"X" in data_of(network, node_id), node_id
    assert "n2" not in network.recovering_marks


def test_a_recovering_replica_never_campaigns_nor_takes_leadership() -> None:
    network = Network()
    network.wipe("n2")
    core = network.cores["n2"]
    core.campaign()
    network.tick("n2", 500)
    assert core.role is Role.FOLLOWER and core.term == 0
    core.step(TimeoutNow(term=1, source="n1", target="n2"))
    assert core.role is Role.FOLLOWER
    assert all(request.pre_vote for request in network.sent_by("n2", VoteRequest))


def test_once_caught_up_it_keeps_the_leaders_vote_and_votes_again_later() -> None:
    network = Network()
    n1 = network.elect("n1")
    for number in range(5):
        n1.propose(b"%d" % number)
    network.deliver_all()
    n2 = network.wipe("n2")
    assert n2.recovering
    network.tick_until(lambda: not network.cores["n2"].recovering)
    network.deliver_all()
    assert data_of(network, "n2") == data_of(network, "n1")
    hard_state = network.stores["n2"].hard_state()
    # The vote it may have given in this term is unknown: it is the leader's now, durably.
    assert (hard_state.term, hard_state.vote) == (n1.term, "n1")
    assert "n2" not in network.recovering_marks

    # It votes again: with n1 gone, n2 and n3 elect one of them.
    network.crash("n1")
    network.tick_until(lambda: network.leaders() != [])
    assert network.leaders()[0] in ("n2", "n3")
    assert any(m.granted for m in network.sent_by("n2", VoteResponse) if not m.pre_vote) or (
        network.leaders() == ["n2"]
    )


def test_a_crash_during_recovery_leaves_the_replica_recovering() -> None:
    network = Network()
    n1 = network.elect("n1")
    n1.propose(b"a")
    network.deliver_all()
    network.wipe("n2")
    network.crash("n2")  # before any leader reached it
    n2 = network.start("n2")
    assert n2.recovering
    n2.campaign()
    network.deliver_all()
    assert all(request.pre_vote for request in network.sent_by("n2", VoteRequest))
    assert n2.role is Role.FOLLOWER


def test_it_catches_up_to_the_leaders_last_index_not_only_its_commit() -> None:
    """Entries the leader holds beyond its commit index may have been acknowledged by this
    replica before it lost them: recovery ends only past them."""
    network = Network()
    n1 = network.elect("n1")
    network.cut("n1", "n3")
    network.cut("n3", "n1")
    network.wipe("n2")
    network.cut("n1", "n2")
    # Appended on n1 alone: not committed, but possibly acknowledged by n2's lost log.
    n1.propose(b"beyond the commit index")
    network.deliver_all()
    committed = n1.log.committed
    network.heal()
    network.tick_until(lambda: not network.cores["n2"].recovering)
    assert network.cores["n2"].log.last_index() >= committed + 1
    assert b"beyond the commit index" in data_of(network, "n2")
