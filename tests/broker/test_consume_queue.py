"""Consume queues in files: reads across files and the in-memory tail, reopening as of a
snapshot, rot detection, retention, and a durable clear."""

from __future__ import annotations

import errno
import random

import pytest

from dledger_mq.broker.consume_queue import ENTRY_BYTES, FileQueueStore
from dledger_mq.errors import CorruptRecord, FsyncFailed
from dledger_mq.raft.storage.simulated_disks import MemoryDisk


def _store(disk: MemoryDisk) -> FileQueueStore:
    return FileQueueStore(disk, "/cq", entries_per_file=4, flush_entries=3)


def _fill(store: FileQueueStore, count: int) -> None:
    queue = store.new_queue("orders", 0)
    for number in range(count):
        assert queue.append((number + 1) * 10, number % 3) == number


def test_entries_read_back_across_files_and_the_tail() -> None:
    store = _store(MemoryDisk())
    _fill(store, 11)
    queue = store._queues[("orders", 0)]
    positions, codes = queue.read(0, 11)
    assert list(positions) == [(n + 1) * 10 for n in range(11)]
    assert list(codes) == [n % 3 for n in range(11)]
    assert list(queue.read(5, 7)[0]) == [60, 70]
    assert queue.find(55) == 5 and queue.find(10) == 0 and queue.find(999) == 11


def test_a_queue_reopened_as_of_a_snapshot_keeps_what_it_held_then() -> None:
    disk = MemoryDisk()
    store = _store(disk)
    _fill(store, 9)
    store.flush()
    store.sync()
    queue = store._queues[("orders", 0)]
    for number in range(9, 14):  # after the snapshot: written, maybe not durable
        queue.append((number + 1) * 10, 0)
    store.flush()
    disk.crash(random.Random(3))
    reopened = _store(disk).open_queue("orders", 0, 9)
    assert (reopened.base_offset, reopened.max_offset) == (0, 9)
    assert list(reopened.read(0, 9)[0]) == [(n + 1) * 10 for n in range(9)]
    assert reopened.append(1000, 0) == 9


def test_queue_files_holding_less_than_the_snapshot_are_damage() -> None:
    disk = MemoryDisk()
    store = _store(disk)
    _fill(store, 5)
    store.flush()
    store.sync()
    with pytest.raises(CorruptRecord, match="needs them up to 8"):
        _store(disk).open_queue("orders", 0, 8)


def test_a_rotten_entry_is_reported_not_served() -> None:
    disk = MemoryDisk()
    store = _store(disk)
    _fill(store, 4)
    store.flush()
    store.sync()
    path = "/cq/t-orders/0/" + f"{0:020d}.cq"
    data = bytearray(_contents(disk, path))
    data[2 * ENTRY_BYTES + 1] ^= 0x10
    disk.set_contents(path, bytes(data))
    queue = _store(disk).open_queue("orders", 0, 4)
    assert list(queue.read(0, 2)[0]) == [10, 20]
    with pytest.raises(CorruptRecord, match="entry 2 is damaged"):
        queue.read(0, 4)


def _contents(disk: MemoryDisk, path: str) -> bytes:
    file = disk.open(path)
    try:
        return file.read(0, file.size())
    finally:
        file.close()


def test_retention_drops_whole_files_below_the_logs_start() -> None:
    store = _store(MemoryDisk())
    _fill(store, 11)
    store.flush()
    queue = store._queues[("orders", 0)]
    store.trim(below_position=95)  # entries 0..8 place below 95; files hold 4 each
    assert queue.base_offset == 8
    assert list(queue.read(0, 11)[0]) == [90, 100, 110]


def test_a_cleared_store_stays_cleared_after_a_crash() -> None:
    disk = MemoryDisk()
    store = _store(disk)
    _fill(store, 9)
    store.flush()
    store.sync()
    store.clear()
    disk.crash(random.Random(1))
    reopened = _store(disk).open_queue("orders", 0, 20)
    assert (reopened.base_offset, reopened.max_offset) == (20, 20)


def test_a_queue_whose_disk_fails_keeps_its_entries_in_memory_and_writes_them_later() -> None:
    disk = MemoryDisk()
    store = _store(disk)
    queue = store.new_queue("orders", 0)
    disk.inject_fault("append", 28)  # ENOSPC on the first flush
    for number in range(5):
        queue.append((number + 1) * 10, 0)  # never raises: apply must not fail for a disk
    assert list(queue.read(0, 5)[0]) == [10, 20, 30, 40, 50]
    store.flush()
    store.sync()
    reopened = _store(disk).open_queue("orders", 0, 5)
    assert list(reopened.read(0, 5)[0]) == [10, 20, 30, 40, 50]


def test_find_answers_from_files_stay_right_as_the_queue_grows_and_is_trimmed() -> None:
    store = _store(MemoryDisk())
    _fill(store, 11)
    store.flush()
    queue = store._queues[("orders", 0)]
    assert queue.find(35) == 3
    queue.append(120, 0)
    assert queue.find(35) == 3  # the same answer, remembered
    store.trim(below_position=95)
    assert queue.find(35) == queue.base_offset == 8
    assert queue.find(105) == 10


def test_after_a_failed_fsync_the_queues_are_never_synced_again_in_this_run() -> None:
    """fsyncgate: the kernel may drop the pages a failed fsync could not write and mark them
    clean, so a later fsync "succeeds" without them. A snapshot saved after that would count
    entries the files no longer hold (the simulator found it: seed 1553 with a learner)."""
    disk = MemoryDisk()
    store = _store(disk)
    _fill(store, 5)
    store.flush()
    disk.inject_fault("fsync", errno.ENOSPC)
    with pytest.raises(FsyncFailed):
        store.sync()
    assert disk.faults_pending == 0
    with pytest.raises(FsyncFailed):
        store.sync()  # the disk would take it now: the store refuses all the same
