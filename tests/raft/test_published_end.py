"""Recovery tells a torn write from rot by where the log was published (``published_end.py``):
a cut that may take acknowledged entries makes the replica recover as one that lost its tail."""

from __future__ import annotations

import errno
import random

import pytest
from structlog.testing import capture_logs

from dledger_mq.errors import StorageError
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.commitlog_format import LOST_TAIL_MARK, RECOVERING_FILE_NAME
from dledger_mq.raft.storage.disk import make_directories
from dledger_mq.raft.storage.published_end import (
    MAX_FILE_BYTES,
    PUBLISHED_END_FILE_NAME,
    RECORD_SIZE,
    PublishedEnd,
    PublishedEndWriter,
    encode_published_end,
    read_published_end,
)
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from tests.raft.test_commitlog import DIRECTORY, make_entries, segment_path

MARK = f"{DIRECTORY}/{RECOVERING_FILE_NAME}"


def written_log(disk: MemoryDisk, *, close: bool = False) -> None:
    """Ten entries in five batches; the process then dies (the page cache stays) or closes."""
    log = CommitLog.open(disk, DIRECTORY)
    for first in range(1, 11, 2):
        log.append(make_entries(first, 2))
    if close:
        log.close()


def damage_last_segment(disk: MemoryDisk, *, flip_from_end: int = 0, garbage: bytes = b"") -> None:
    path = segment_path(disk)
    data = bytearray(disk.contents(path))
    if flip_from_end:
        data[len(data) - flip_from_end] ^= 0x10
    disk.set_contents(path, bytes(data) + garbage)


def test_rot_in_the_last_published_record_is_a_lost_tail() -> None:
    disk = MemoryDisk()
    written_log(disk)
    damage_last_segment(disk, flip_from_end=3)
    log = CommitLog.open(disk, DIRECTORY)
    assert log.last_index() == 9  # the rotten record is cut, as a torn one would be ...
    assert log.recovering and log.lost_tail  # ... but it was acknowledged: not forgotten
    assert disk.contents(MARK) == LOST_TAIL_MARK


def test_a_write_torn_by_a_process_crash_loses_nothing_acknowledged() -> None:
    disk = MemoryDisk()
    written_log(disk)
    damage_last_segment(disk, garbage=b"DQLR" + bytes(20))  # after where the log was published
    log = CommitLog.open(disk, DIRECTORY)
    assert log.last_index() == 10 and log.recovery.bytes_dropped == 24
    assert not log.recovering and not disk.exists(MARK)


def test_after_a_power_loss_a_cut_cannot_be_judged() -> None:
    disk = MemoryDisk()
    written_log(disk)
    disk.crash(random.Random(0), torn_writes=False)  # the page cache is gone: a new boot
    damage_last_segment(disk, garbage=b"DQLR" + bytes(20))
    log = CommitLog.open(disk, DIRECTORY)
    assert log.last_index() == 10
    assert log.recovering and log.lost_tail


def test_a_clean_close_stays_exact_after_a_reboot() -> None:
    disk = MemoryDisk()
    written_log(disk, close=True)
    disk.crash(random.Random(0), torn_writes=False)
    damage_last_segment(disk, garbage=b"DQLR" + bytes(20))
    log = CommitLog.open(disk, DIRECTORY)
    assert log.last_index() == 10 and log.recovery.bytes_dropped == 24
    assert not log.recovering


def test_the_mark_is_durable_before_anything_is_cut() -> None:
    disk = MemoryDisk()
    written_log(disk)
    damage_last_segment(disk, flip_from_end=3)
    disk.inject_fault("truncate", errno.EIO)
    with pytest.raises(StorageError):
        CommitLog.open(disk, DIRECTORY)
    disk.crash(random.Random(0), torn_writes=False)
    assert disk.contents(MARK) == LOST_TAIL_MARK
    log = CommitLog.open(disk, DIRECTORY)
    assert log.lost_tail and log.last_index() == 9


def test_finishing_recovery_ends_the_lost_tail() -> None:
    disk = MemoryDisk()
    written_log(disk)
    damage_last_segment(disk, flip_from_end=3)
    log = CommitLog.open(disk, DIRECTORY)
    log.finish_recovery()
    assert not log.recovering and not log.lost_tail and not disk.exists(MARK)
    log.close()
    assert not CommitLog.open(disk, DIRECTORY).recovering


def test_a_repaired_corruption_is_a_lost_tail() -> None:
    disk = MemoryDisk()
    written_log(disk, close=True)
    disk.remove(segment_path(disk)[: -len(".log")] + ".idx")  # scanned on open
    damage_last_segment(disk, flip_from_end=3 * 42 + 1)  # three whole records follow it
    log = CommitLog.open(disk, DIRECTORY, repair=True)
    assert log.last_index() < 10 and log.lost_tail


def test_the_newest_intact_record_counts_and_the_file_stays_small() -> None:
    disk = MemoryDisk()
    make_directories(disk, DIRECTORY)
    writer = PublishedEndWriter(disk, DIRECTORY)
    for offset in range(2 * MAX_FILE_BYTES // RECORD_SIZE + 5):
        writer.record(1, offset)
    path = f"{DIRECTORY}/{PUBLISHED_END_FILE_NAME}"
    assert len(disk.contents(path)) <= MAX_FILE_BYTES
    newest = read_published_end(disk, DIRECTORY)
    assert newest == PublishedEnd(1, 2 * MAX_FILE_BYTES // RECORD_SIZE + 4, disk.boot_id())
    assert newest.is_exact_on(disk)
    # A torn append is skipped: the record before it counts; those after it are found.
    torn = encode_published_end(PublishedEnd(1, 10**9, disk.boot_id()))[:-7]
    disk.set_contents(path, disk.contents(path) + torn)
    assert read_published_end(disk, DIRECTORY) == newest
    writer.close(1, 7)
    disk.crash(random.Random(0), torn_writes=False)
    closed = read_published_end(disk, DIRECTORY)
    assert closed == PublishedEnd(1, 7, "") and closed.is_exact_on(disk)


def test_the_published_file_is_one_of_the_logs_own() -> None:
    disk = MemoryDisk()
    written_log(disk, close=True)
    with capture_logs() as events:
        CommitLog.open(disk, DIRECTORY)
    assert not [e for e in events if e["event"] == "commitlog.unknown_file_ignored"]
