"""Membership changes (issue 16; docs/architecture.md, "Membership changes"): single-server
changes through ``CONFIG`` entries, in force once appended; a server joins as a learner, is
promoted once caught up, and is removed in a change of its own."""

from __future__ import annotations

import random

import pytest

from dledger_mq.errors import (
    InvalidMembershipChange,
    MembershipChangeInProgress,
    ProtocolError,
)
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.membership import (
    ChangeKind,
    GroupMember,
    Membership,
    MembershipChange,
)
from dledger_mq.raft.pure.messages import (
    AppendRequest,
    Entry,
    EntryKind,
    InstallSnapshot,
)
from tests.raft.network import Network


def change(kind: ChangeKind, node_id: str) -> MembershipChange:
    return MembershipChange(kind, GroupMember(node_id, f"peer-{node_id}", f"client-{node_id}"))


def commit_change(network: Network, leader: RaftCore, kind: ChangeKind, node_id: str) -> int:
    index = leader.propose_membership_change(change(kind, node_id))
    network.deliver_all()
    network.tick_all(2)  # heartbeats carry the commit index to everyone
    assert leader.log.committed >= index
    return index


def test_a_new_server_joins_as_a_learner_catches_up_and_then_votes() -> None:
    network = Network()
    leader = network.elect("n1")
    for n in range(5):
        leader.propose(f"before {n}".encode())
    network.deliver_all()
    joiner = network.join("n4")
    assert joiner.is_learner
    commit_change(network, leader, ChangeKind.ADD_LEARNER, "n4")
    # Replicated to, counted nowhere: it has every entry, and the quorum is still 2 of 3.
    assert joiner.log.last_index() == leader.log.last_index()
    assert leader.quorum == 2 and "n4" in leader.progress
    commit_change(network, leader, ChangeKind.PROMOTE, "n4")
    assert network.cores["n4"].is_learner is False
    assert all(
        core.membership.voter_ids == ("n1", "n2", "n3", "n4") for core in network.cores.values()
    )
    assert leader.quorum == 3
    # n4 now counts: with n2 and n3 cut off, n1 and n4 are two of four, not a majority.
    network.isolate("n2")
    network.isolate("n3")
    index = leader.propose(b"needs three")
    network.deliver_all()
    assert network.cores["n4"].log.last_index() >= index
    assert leader.log.committed < index
    network.heal()
    network.tick_all(3)
    assert leader.log.committed >= index


def test_a_learner_is_promoted_only_once_caught_up() -> None:
    network = Network()
    leader = network.elect("n1")
    network.join("n4")
    commit_change(network, leader, ChangeKind.ADD_LEARNER, "n4")
    network.isolate("n4")
    leader.propose(b"n4 does not have this")
    network.deliver_all()
    network.tick_all(2)
    with pytest.raises(MembershipChangeInProgress, match="n4 has caught up to"):
        leader.propose_membership_change(change(ChangeKind.PROMOTE, "n4"))
    network.heal()
    network.tick_all(3)
    commit_change(network, leader, ChangeKind.PROMOTE, "n4")
    assert "n4" in leader.voters


def test_one_change_at_a_time_and_none_before_the_terms_first_commit() -> None:
    # Without pre-vote and leases, so that n2 can be elected on demand below.
    network = Network(pre_vote=False, check_quorum=False)
    leader = network.elect("n1")
    network.join("n4")
    network.join("n5")
    leader.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n4"))
    with pytest.raises(MembershipChangeInProgress, match="not committed yet"):
        leader.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n5"))
    network.deliver_all()
    network.tick_all(2)
    # A new leader: until its no-op commits it knows not whether an earlier change did.
    network.isolate("n1")
    n2 = network.cores["n2"]
    n2.campaign()
    network.deliver_all(stop=lambda: n2.role is Role.LEADER)
    assert n2.log.term(n2.log.committed) < n2.term
    with pytest.raises(MembershipChangeInProgress, match="not committed an entry of its term"):
        n2.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n5"))
    network.deliver_all()
    n2.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n5"))  # now it may


def test_changes_that_do_not_apply_are_refused_and_change_nothing() -> None:
    network = Network()
    leader = network.elect("n1")
    before = leader.log.last_index()
    with pytest.raises(InvalidMembershipChange, match="already a member"):
        leader.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n2"))
    with pytest.raises(InvalidMembershipChange, match="not a learner"):
        leader.propose_membership_change(change(ChangeKind.PROMOTE, "n2"))
    with pytest.raises(InvalidMembershipChange, match="not a member"):
        leader.propose_membership_change(change(ChangeKind.REMOVE, "n9"))
    with pytest.raises(InvalidMembershipChange, match="hand leadership to another voter"):
        leader.propose_membership_change(change(ChangeKind.REMOVE, "n1"))
    assert leader.log.last_index() == before


def test_a_removed_voter_no_longer_counts_and_the_leader_is_removed_after_handing_over() -> None:
    network = Network()
    leader = network.elect("n1")
    commit_change(network, leader, ChangeKind.REMOVE, "n3")
    assert leader.voters == frozenset({"n1", "n2"}) and "n3" not in leader.progress
    # The removed server may never hear of its removal (the leader stops replicating to it at
    # once) and times out: the others do not listen to it, so it disrupts nothing.
    term = leader.term
    network.tick("n3", 200)
    assert network.cores["n3"].role is not Role.LEADER
    assert (leader.role, leader.term) == (Role.LEADER, term)
    # The leader hands over, then the new one removes it: one voter left, which commits alone.
    leader.transfer_leadership("n2")
    network.deliver_all()
    n2 = network.cores["n2"]
    assert n2.role is Role.LEADER
    network.tick_all(2)
    commit_change(network, n2, ChangeKind.REMOVE, "n1")
    assert n2.quorum == 1
    index = n2.propose(b"alone")
    network.deliver_all()
    assert n2.log.committed >= index


def test_a_dead_server_is_replaced_by_an_empty_one() -> None:
    network = Network()
    leader = network.elect("n1")
    network.crash("n3")  # its disk is gone for good
    network.join("n4")
    commit_change(network, leader, ChangeKind.ADD_LEARNER, "n4")
    commit_change(network, leader, ChangeKind.PROMOTE, "n4")
    commit_change(network, leader, ChangeKind.REMOVE, "n3")
    assert leader.membership.voter_ids == ("n1", "n2", "n4")
    # The group now survives the loss of any one of its three: n1 goes, n2 and n4 elect.
    network.isolate("n1")
    network.tick_until(lambda: bool(set(network.leaders()) - {"n1"}))
    [new_id] = set(network.leaders()) - {"n1"}
    index = network.cores[new_id].propose(b"after the replacement")
    network.deliver_all()
    network.tick_all(2)
    assert network.cores[new_id].log.committed >= index


def test_a_change_dropped_with_a_conflicting_suffix_takes_its_membership_with_it() -> None:
    network = Network()
    leader = network.elect("n1")
    network.join("n4")
    network.isolate("n1")
    # n1 appends the change alone; it never commits.
    leader.propose_membership_change(change(ChangeKind.ADD_LEARNER, "n4"))
    network.deliver_all()
    assert leader.membership.learner_ids == ("n4",)
    network.tick_until(lambda: bool(set(network.leaders()) - {"n1"}))
    [new_id] = set(network.leaders()) - {"n1"}
    network.cores[new_id].propose(b"the new leader's")
    network.heal()
    network.tick_all(5)
    # n1 took the new leader's log: its uncommitted change is gone, and so is n4.
    assert leader.role is Role.FOLLOWER
    assert leader.membership.learner_ids == ()
    assert all(entry.kind is not EntryKind.CONFIG for entry in leader.log.slice(1, 99, 1 << 20))


def test_a_restarted_server_reads_the_membership_from_its_log() -> None:
    network = Network()
    leader = network.elect("n1")
    network.join("n4")
    commit_change(network, leader, ChangeKind.ADD_LEARNER, "n4")
    commit_change(network, leader, ChangeKind.PROMOTE, "n4")
    network.crash("n2")
    restarted = network.restart("n2")
    assert restarted.membership.voter_ids == ("n1", "n2", "n3", "n4")
    assert restarted.quorum == 3


def test_an_installed_snapshot_brings_its_membership() -> None:
    config = Config("n4", ("n1", "n2", "n3"), learners=("n4",))
    core = RaftCore(config, MemoryLogStore(), random.Random(0))
    membership = Membership.of(("n1", "n2", "n4"))
    core.step(
        InstallSnapshot(
            term=3,
            source="n1",
            target="n4",
            index=40,
            snapshot_term=3,
            membership=membership.encode(),
        )
    )
    assert core.membership == membership
    assert core.is_learner is False and core.quorum == 2


def test_an_append_with_a_malformed_membership_is_refused_and_changes_nothing() -> None:
    core = RaftCore(Config("n2", ("n1", "n2", "n3")), MemoryLogStore(), random.Random(0))
    bad = Entry(index=1, term=5, data=b'{"voters": []}', kind=EntryKind.CONFIG)
    with pytest.raises(ProtocolError, match="malformed membership"):
        core.step(
            AppendRequest(
                term=5,
                source="n1",
                target="n2",
                prev_index=0,
                prev_term=0,
                entries=(bad,),
                leader_commit=0,
            )
        )
    assert (core.term, core.log.last_index(), core.membership.voter_ids) == (
        0,
        0,
        ("n1", "n2", "n3"),
    )


def test_a_membership_encodes_to_itself_and_refuses_what_no_group_can_be() -> None:
    membership = Membership(
        (GroupMember("n1", "127.0.0.1:1", "127.0.0.1:2"),), (GroupMember("n2", "p", "c"),)
    )
    assert Membership.decode(membership.encode()) == membership
    with pytest.raises(InvalidMembershipChange, match="at least one voter"):
        Membership((), (GroupMember("n2"),))
    with pytest.raises(InvalidMembershipChange, match="named twice"):
        Membership((GroupMember("n1"),), (GroupMember("n1"),))
    for garbage in (b"", b"[]", b'{"voters": [["n1"]], "learners": []}', b"\xff"):
        with pytest.raises(ProtocolError):
            Membership.decode(garbage)
