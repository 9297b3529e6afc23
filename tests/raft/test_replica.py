"""The replica runtime: a write that fails outside the Ready loop still stops the replica."""

from __future__ import annotations

import errno
import random

import pytest
import trio

from dledger_mq.errors import StorageError
from dledger_mq.raft.pure.core import Config, RaftCore
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.runtime.log_writer import LogWriter, open_log_writer
from dledger_mq.raft.runtime.replica import Replica
from dledger_mq.raft.runtime.transport import TransportConfig
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.simulated_disks import MemoryDisk


def _single_replica() -> tuple[MemoryDisk, CommitLog, RaftCore]:
    """The disk, log and core of a one-member group (it elects itself)."""
    disk = MemoryDisk()
    log = CommitLog.open(disk, "/node")
    config = Config(
        node_id="n1", members=("n1",), election_timeout_ticks=10, heartbeat_interval_ticks=2
    )
    return disk, log, RaftCore(config, log, random.Random(0))


async def _run_leading(
    nursery: trio.Nursery, log: CommitLog, core: RaftCore, writer: LogWriter
) -> Replica:
    """The one-member replica, running in ``nursery``, once it leads."""
    replica = Replica(
        core, log, writer, TransportConfig("c", "n1", "g", {}), random.Random(0), 0.01
    )
    await nursery.start(replica.run)
    while not replica.is_leader:
        await replica.leader_changed.wait()
    return replica


async def test_a_failed_inline_write_fails_the_proposal_and_stops_the_replica(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk, log, core = _single_replica()
    proposal_failed = False
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with open_log_writer(log) as writer, trio.open_nursery() as nursery:
            replica = await _run_leading(nursery, log, core, writer)
            disk.inject_fault("fsync", errno.EIO)
            # Written inline, in this task: the proposer sees the error...
            with pytest.raises(StorageError):
                await replica.propose(b"x")
            proposal_failed = True
            # ...and the replica stops by itself rather than run on with a wedged core
            # (virtual seconds: the clock jumps whenever every task waits).
            with trio.fail_after(60):
                await trio.sleep_forever()
    assert proposal_failed
    assert stopped.value.subgroup(StorageError) is not None


async def test_a_replay_after_a_restart_lets_other_tasks_run_between_batches() -> None:
    """Restarted, a replica applies its whole committed log again; it does so a bounded batch
    per Ready and yields between them, so that heartbeats and clients are served meanwhile."""
    disk = MemoryDisk()
    log = CommitLog.open(disk, "/node")
    log.append([Entry(index, 1, b"x" * 100) for index in range(1, 1001)])
    log.set_hard_state(HardState(1, "n1", 1000))
    config = Config(
        node_id="n1",
        members=("n1",),
        election_timeout_ticks=10,
        heartbeat_interval_ticks=2,
        max_apply_bytes=2048,
    )
    core = RaftCore(config, log, random.Random(0))
    events: list[str] = []
    replayed = trio.Event()

    def apply(entry: Entry) -> object:
        events.append("apply")
        if entry.index == 1000:
            replayed.set()
        return None

    async def another_task() -> None:
        while not replayed.is_set():
            events.append("other")
            await trio.lowlevel.checkpoint()

    # The real clock: the other task never sleeps, so a mock one would never move.
    with trio.fail_after(30):
        async with open_log_writer(log) as writer:
            replica = Replica(
                core,
                log,
                writer,
                TransportConfig("c", "n1", "g", {}),
                random.Random(0),
                0.01,
                apply,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(another_task)
                await nursery.start(replica.run)
                await replayed.wait()
                nursery.cancel_scope.cancel()
    applying = events[events.index("apply") : len(events) - events[::-1].index("apply")]
    batches = len([e for e in applying if e == "apply"]) // 15  # about 15 entries per Ready
    assert applying.count("other") >= batches // 2, (batches, applying.count("other"))


async def test_a_full_disk_makes_the_replica_wait_for_space_not_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk, log, core = _single_replica()
    async with open_log_writer(log) as writer, trio.open_nursery() as nursery:
        replica = await _run_leading(nursery, log, core, writer)
        disk.capacity_bytes = disk.used_bytes  # full: the next append fails with ENOSPC
        done = trio.Event()

        async def propose() -> None:
            await replica.propose(b"x" * 100)
            done.set()

        nursery.start_soon(propose)
        with trio.move_on_after(5):
            await done.wait()
        assert not done.is_set()  # waiting, not failed: the replica is still running
        disk.capacity_bytes = None  # retention freed space
        with trio.fail_after(5):
            await done.wait()
        assert log.entries(log.last_index(), log.last_index() + 1, 1000)[0].data == b"x" * 100
        nursery.cancel_scope.cancel()
