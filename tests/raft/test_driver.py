"""The driver's decisions, shared by the Trio runtime and the simulator: the order of a Ready's
sends around its write, which hard states are written, and how proposals are answered."""

from __future__ import annotations

import random

import pytest

from dledger_mq.errors import NotLeader
from dledger_mq.raft.pure.core import Config, RaftCore, Ready, Role, SoftState
from dledger_mq.raft.pure.driver import ReplicaDriver
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import AppendRequest, Entry, HardState, VoteResponse


def single_node_leader(
    apply: object = None, **options: object
) -> tuple[ReplicaDriver, MemoryLogStore]:
    store = MemoryLogStore()
    core = RaftCore(Config("n1", ("n1",), election_timeout_ticks=2), store, random.Random(1))
    driver = ReplicaDriver(core, apply, **options)  # type: ignore[arg-type]
    while driver.core.role is not Role.LEADER:
        driver.tick()
        run(driver, store)
    run(driver, store)
    return driver, store


def run(driver: ReplicaDriver, store: MemoryLogStore, now: float = 0.0) -> None:
    """Carry out every piece of work as a runtime does, writes taking no time."""
    while driver.has_work():
        work = driver.take(now)
        if work.entries:
            store.append(list(work.entries))
        if work.hard_state is not None:
            store.set_hard_state(work.hard_state)
        driver.finish(work)


def test_a_proposal_is_answered_with_what_apply_made_of_its_last_entry() -> None:
    applied: list[bytes] = []

    def apply(entry: Entry) -> object:
        applied.append(entry.data)
        return f"applied {entry.data.decode()}"

    driver, store = single_node_leader(apply)
    answered: list[str] = []
    proposal = driver.propose([b"a", b"b"], lambda: answered.append("done"))
    assert (proposal.first, proposal.last) == (2, 3)  # after the leader's no-op
    assert not proposal.done
    run(driver, store)
    assert answered == ["done"]
    assert (proposal.result, proposal.error) == ("applied b", None)
    assert applied == [b"a", b"b"]


def test_proposals_of_a_deposed_leader_are_answered_not_leader() -> None:
    config = Config("n1", ("n1", "n2", "n3"), pre_vote=False)
    core = RaftCore(config, MemoryLogStore(), random.Random(1))
    driver = ReplicaDriver(core)
    core.campaign()
    while driver.has_work():
        driver.finish(driver.take(0.0))
    for voter in ("n2", "n3"):
        driver.step(VoteResponse(term=core.term, source=voter, target="n1", granted=True))
    while driver.has_work():
        driver.finish(driver.take(0.0))
    assert driver.is_leader
    proposal = driver.propose([b"x"])
    # A newer term arrives before the entry commits: the proposal is answered at once.
    driver.step(
        AppendRequest(
            term=core.term + 1,
            source="n2",
            target="n1",
            prev_index=0,
            prev_term=0,
            entries=(),
            leader_commit=0,
        )
    )
    driver.finish(driver.take(0.0))
    assert proposal.done and isinstance(proposal.error, NotLeader)
    assert proposal.error.leader_hint == "n2"


def test_a_commit_only_hard_state_is_written_at_most_every_interval() -> None:
    core = RaftCore(Config("n1", ("n1", "n2", "n3")), MemoryLogStore(), random.Random(1))
    driver = ReplicaDriver(core, commit_save_interval=1.0)

    def ready(commit: int, vote_changed: bool = False) -> Ready:
        return Ready(None, HardState(3, "n2", commit), (), (), (), vote_changed=vote_changed)

    assert driver._hard_state_to_save(ready(1), now=10.0) == HardState(3, "n2", 1)
    assert driver._hard_state_to_save(ready(2), now=10.5) is None
    assert driver._hard_state_to_save(ready(3, vote_changed=True), now=10.6) is not None
    assert driver._hard_state_to_save(ready(4), now=11.0) is None
    assert driver._hard_state_to_save(ready(5), now=11.6) == HardState(3, "n2", 5)


def test_acknowledgements_wait_for_the_write_and_a_leaders_appends_do_not() -> None:
    core = RaftCore(Config("n1", ("n1", "n2", "n3")), MemoryLogStore(), random.Random(1))
    driver = ReplicaDriver(core)
    append = AppendRequest(
        term=1,
        source="n2",
        target="n1",
        prev_index=0,
        prev_term=0,
        entries=(Entry(1, 1, b"x"),),
        leader_commit=0,
    )
    driver.step(append)
    work = driver.take(0.0)
    assert work.send_first == ()
    assert [type(m).__name__ for m in work.send_after] == ["AppendResponse"]
    assert work.entries == (Entry(1, 1, b"x"),) and work.must_sync
    with pytest.raises(AssertionError, match="take\\(\\) again before finish\\(\\)"):
        driver.take(0.0)
    driver.finish(work)


def test_role_changes_are_reported_before_their_write() -> None:
    seen: list[SoftState] = []
    driver, _ = single_node_leader(on_soft_state=seen.append)
    assert [soft.role for soft in seen][-1] is Role.LEADER
