"""ReadIndex: a leader's linearizable reads are confirmed by a quorum that still follows it,
at an index no older than what was committed when the read began; a deposed leader that does
not know it yet confirms none."""

from __future__ import annotations

import random

import pytest

from dledger_mq.errors import NotLeader
from dledger_mq.raft.pure.core import Config, RaftCore, ReadState
from dledger_mq.raft.pure.driver import ReplicaDriver
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Heartbeat
from tests.raft.network import Network


def test_a_read_is_confirmed_by_a_quorum_at_the_commit_index() -> None:
    network = Network()
    n1 = network.elect("n1")
    n1.propose(b"a")
    network.deliver_all()
    context = n1.read_index()
    assert network.read_states["n1"] == []
    network.deliver_all()
    assert network.read_states["n1"] == [ReadState(context, n1.log.committed)]
    rounds = [m for m in network.sent_by("n1", Heartbeat) if m.context == context]
    assert len(rounds) == 2  # one heartbeat round, to both followers


def test_a_leader_cut_off_from_the_quorum_confirms_no_read() -> None:
    """The stale read the old code served: the partitioned leader still thinks it leads."""
    network = Network()
    n1 = network.elect("n1")
    network.isolate("n1")
    n1.read_index()
    network.deliver_all()
    assert network.read_states["n1"] == []
    # Meanwhile the others elect a new leader and move on; n1's read is never confirmed.
    network.tick_until(lambda: any(n != "n1" for n in network.leaders()))
    network.heal()
    network.tick_all(3)
    assert network.read_states["n1"] == []


def test_a_read_waits_for_the_first_commit_of_the_leaders_term() -> None:
    network = Network(pre_vote=False, check_quorum=False)
    n1 = network.elect("n1")
    n1.propose(b"a")
    network.deliver_all()
    network.crash("n1")
    n2 = network.cores["n2"]
    n2.campaign()
    network.deliver_all(stop=lambda: n2.role.value == "leader")
    assert n2.log.term(n2.log.committed) != n2.term  # its no-op is not committed yet
    context = n2.read_index()
    network.deliver_all()
    [state] = network.read_states["n2"]
    assert state.context == context
    assert n2.log.term(state.index) == n2.term  # at or after the no-op of its term


def test_a_follower_cannot_start_a_read() -> None:
    network = Network()
    network.elect("n1")
    with pytest.raises(NotLeader) as raised:
        network.cores["n2"].read_index()
    assert raised.value.leader_hint == "n1"


def test_a_single_node_reads_at_once_once_its_term_committed() -> None:
    store = MemoryLogStore()
    core = RaftCore(Config("n1", ("n1",)), store, random.Random(0))
    driver = ReplicaDriver(core)
    core.campaign()
    done: list[bool] = []
    read = driver.read(lambda: done.append(True))
    while driver.has_work():
        work = driver.take(0.0)
        store.append(list(work.entries))
        driver.finish(work)
    assert done == [True] and read.error is None and read.index is not None
    assert read.index >= 1


def test_the_driver_answers_a_read_once_its_index_is_applied_and_fails_it_on_deposition() -> None:
    network = Network()
    n1 = network.elect("n1")
    driver = ReplicaDriver(n1)
    read = driver.read()
    network.isolate("n1")
    while driver.has_work():
        work = driver.take(0.0)
        for message in (*work.send_first, *work.send_after):
            network.send(message)
        driver.finish(work)
    assert not read.done
    # Check-quorum: cut off for an election timeout, n1 steps down; the read fails.
    for _ in range(100):
        n1.tick()
        while driver.has_work():
            driver.finish(driver.take(0.0))
        if read.done:
            break
    assert read.done and isinstance(read.error, NotLeader)
