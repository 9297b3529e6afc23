"""LogWriter: group commit from Trio, and a caller returns only once its entries are durable."""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.errors import FsyncFailed
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.runtime.log_writer import INLINE_MAX_ENTRIES, merge_requests, open_log_writer
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.simulated_disks import MemoryDisk, Operation

DIRECTORY = "/node"


class GatedDisk(MemoryDisk):
    """A MemoryDisk whose fsyncs wait for the test to open the gate: an fsync "in flight"."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def check_fault(self, operation: Operation, path: str) -> None:
        if operation == "fsync":
            self.gate.wait()
        super().check_fault(operation, path)


@pytest.fixture
def disk() -> Iterator[GatedDisk]:
    gated = GatedDisk()
    yield gated
    gated.gate.set()


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, f"entry {index}".encode())


def durable_entries(disk: MemoryDisk) -> list[Entry]:
    """What would be left after a power loss right now."""
    crashed = disk.clone()
    crashed.crash(random.Random(0), torn_writes=False)
    log = CommitLog.open(crashed, DIRECTORY)
    return log.entries(log.first_index(), log.last_index() + 1, 1 << 30)


async def test_concurrent_appends_share_fsyncs(disk: GatedDisk) -> None:
    log = CommitLog.open(disk, DIRECTORY)
    async with (
        open_log_writer(log, inline_when_idle=False) as writer,
        trio.open_nursery() as nursery,
    ):
        disk.gate.clear()
        fsyncs_before = disk.operation_counts["fsync"]
        nursery.start_soon(writer.append, [entry(1)])
        await trio.testing.wait_all_tasks_blocked()
        # Entry 1's fsync is in flight; these 50 arrive meanwhile and must share the next one.
        for index in range(2, 52):
            nursery.start_soon(writer.append, [entry(index)])
            await trio.testing.wait_all_tasks_blocked()
        disk.gate.set()
    assert disk.operation_counts["fsync"] - fsyncs_before == 2
    assert (writer.batches_written, writer.requests_written) == (2, 51)
    assert durable_entries(disk) == [entry(index) for index in range(1, 52)]


async def test_under_sync_a_caller_returns_only_after_its_fsync(disk: GatedDisk) -> None:
    log = CommitLog.open(disk, DIRECTORY)
    returned = trio.Event()
    async with (
        open_log_writer(log, inline_when_idle=False) as writer,
        trio.open_nursery() as nursery,
    ):
        disk.gate.clear()

        async def append_and_note() -> None:
            await writer.append([entry(1), entry(2)], HardState(1, "me", 0))
            returned.set()

        nursery.start_soon(append_and_note)
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set()
        assert durable_entries(disk) == []
        disk.gate.set()
        await returned.wait()
        assert durable_entries(disk) == [entry(1), entry(2)]
    assert log.hard_state() == HardState(1, "me", 0)


async def test_under_async_a_caller_returns_before_the_fsync_which_follows_on_a_timer(
    disk: GatedDisk,
) -> None:
    now = [0.0]
    log = CommitLog.open(
        disk, DIRECTORY, flush_policy=FlushPolicy.ASYNC, flush_interval_ms=10, clock=lambda: now[0]
    )
    async with open_log_writer(log, inline_when_idle=False) as writer:
        disk.gate.clear()
        await writer.append([entry(1)])
        assert log.last_index() == 1 and log.durable_index() == 0
        disk.gate.set()
        now[0] = 1.0
        # Real time, not an autojump clock: that clock counts the worker thread's fsync as
        # idle time and could jump past the deadline while the fsync runs. The 10 ms timer
        # fires long before this generous bound.
        with trio.fail_after(10):
            while log.durable_index() < 1:
                await trio.sleep(0.001)
        assert durable_entries(disk) == [entry(1)]


async def test_requests_keep_call_order_and_conflicts_truncate(disk: GatedDisk) -> None:
    log = CommitLog.open(disk, DIRECTORY)
    async with (
        open_log_writer(log, inline_when_idle=False) as writer,
        trio.open_nursery() as nursery,
    ):
        disk.gate.clear()
        nursery.start_soon(writer.append, [entry(1)])
        await trio.testing.wait_all_tasks_blocked()
        for batch in ([entry(2), entry(3), entry(4)], [entry(3, 2)], [entry(4, 2)]):
            nursery.start_soon(writer.append, batch)
            await trio.testing.wait_all_tasks_blocked()
        disk.gate.set()
    assert durable_entries(disk) == [entry(1), entry(2), entry(3, 2), entry(4, 2)]


async def test_a_failed_fsync_fails_the_batch_and_every_later_append(disk: GatedDisk) -> None:
    log = CommitLog.open(disk, DIRECTORY)
    async with open_log_writer(log, inline_when_idle=False) as writer:
        await writer.append([entry(1)])
        disk.inject_fault("fsync", errno.EIO)
        with pytest.raises(FsyncFailed):
            await writer.append([entry(2)])
        with pytest.raises(FsyncFailed):
            await writer.append([entry(2)])
    assert durable_entries(disk) == [entry(1)]


async def test_a_cancelled_append_not_yet_taken_is_withdrawn(disk: GatedDisk) -> None:
    log = CommitLog.open(disk, DIRECTORY)
    async with open_log_writer(log, inline_when_idle=False) as writer:
        disk.gate.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.append, [entry(1)])
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await writer.append([entry(2)])
            disk.gate.set()
    assert durable_entries(disk) == [entry(1)]


@given(
    requests=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()), min_size=1, max_size=8
    )
)
def test_merging_requests_equals_applying_them_in_turn(
    requests: list[tuple[int, int, bool]],
) -> None:
    model = MemoryLogStore()
    model.append([entry(1), entry(2)])
    merged_model = model.copy()
    plan: list[tuple[list[Entry], HardState | None]] = []
    term = 1
    for back, count, with_hard_state in requests:
        term += 1
        first = max(model.last_index() + 1 - back, 1)
        batch = [entry(index, term) for index in range(first, first + count)]
        hard_state = HardState(term, None, 0) if with_hard_state else None
        model.append(batch)
        if hard_state is not None:
            model.set_hard_state(hard_state)
        plan.append((batch, hard_state))
    entries, hard_state = merge_requests(plan)
    merged_model.append(entries)
    if hard_state is not None:
        merged_model.set_hard_state(hard_state)
    assert merged_model.entries(1, merged_model.last_index() + 1, 1 << 30) == model.entries(
        1, model.last_index() + 1, 1 << 30
    )
    assert merged_model.hard_state() == model.hard_state()


async def test_an_idle_writer_writes_inline_and_returns_durable() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    async with open_log_writer(log) as writer:
        fsyncs_before = disk.operation_counts["fsync"]
        assert writer.can_write_now([entry(1)])
        await writer.append([entry(1)])
        writer.write_now([entry(2)])
        # Durable on return, one fsync each, and no worker thread was involved.
        assert durable_entries(disk) == [entry(1), entry(2)]
        assert disk.operation_counts["fsync"] - fsyncs_before == 2
        assert (writer.batches_written, writer.requests_written) == (2, 2)


async def test_a_writer_without_inline_writes_never_offers_them() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY)
    async with open_log_writer(log, inline_when_idle=False) as writer:
        assert not writer.can_write_now([entry(1)])
        with pytest.raises(AssertionError):
            writer.write_now([entry(1)])


async def test_a_big_write_goes_to_the_worker_thread() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    many = [entry(index) for index in range(1, INLINE_MAX_ENTRIES + 2)]
    async with open_log_writer(log) as writer:
        assert not writer.can_write_now(many)
        await writer.append(many)
        assert durable_entries(disk) == many
        assert writer.requests_written == 1
