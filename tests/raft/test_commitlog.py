"""The CommitLog's guarantees, one test each: reads, writes, errors, recovery, retention."""

from __future__ import annotations

import errno
import random
import threading
from pathlib import Path

import pytest

from dledger_mq.errors import (
    CorruptLog,
    CorruptRecord,
    DataDirError,
    DiskFull,
    FormatVersionError,
    FsyncFailed,
    StorageError,
)
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable, MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, EntryKind, HardState
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.commitlog_format import (
    FORMAT_VERSION,
    META_MAGIC,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
)
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

DIRECTORY = "/node1"


def make_entries(first: int, count: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [
        Entry(index, term, bytes([index % 251]) * size) for index in range(first, first + count)
    ]


def all_entries(log: CommitLog) -> list[Entry]:
    return log.entries(log.first_index(), log.last_index() + 1, 1 << 40)


def segment_names(disk: MemoryDisk) -> list[str]:
    return [name for name in disk.list_directory(DIRECTORY) if name.endswith(".log")]


def segment_path(disk: MemoryDisk, position: int = -1) -> str:
    return f"{DIRECTORY}/{segment_names(disk)[position]}"


# -- reading and writing ----------------------------------------------------------------------


def test_a_new_log_is_empty_with_term_zero_before_it() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY)
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    assert log.hard_state() == HardState()
    assert log.entries(1, 1, 100) == []


def test_entries_come_back_as_written_across_segments() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    written = [Entry(1, 1, b"", EntryKind.NOOP)]
    log.append(written)
    for first in range(2, 60, 3):
        batch = make_entries(first, 3, size=first)
        log.append(batch)
        written += batch
    assert len(segment_names(disk)) > 5
    assert all_entries(log) == written
    assert [log.term(index) for index in range(0, 60)] == [0] + [1] * 59


def test_reads_stop_at_max_bytes_but_return_at_least_one_entry_like_the_model() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY, segment_size_bytes=150)
    model = MemoryLogStore()
    for first in range(1, 40, 4):
        batch = make_entries(first, 4, size=first % 7 * 5)
        log.append(batch)
        model.append(batch)
    for max_bytes in (0, 1, 20, 26, 100, 1000):
        for low in range(1, 41):
            for high in range(low, 41):
                assert log.entries(low, high, max_bytes) == model.entries(low, high, max_bytes)


def test_out_of_range_reads_raise_like_the_model() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY)
    model = MemoryLogStore()
    for store in (log, model):
        store.append(make_entries(1, 10))
        store.trim_prefix(4)
    for store in (log, model):
        with pytest.raises(LogCompacted):
            store.term(2)
        with pytest.raises(LogUnavailable):
            store.term(11)
        with pytest.raises(LogCompacted):
            store.entries(3, 5, 100)
        with pytest.raises(LogUnavailable):
            store.entries(5, 12, 100)
        assert store.term(3) == 1


def test_append_at_an_earlier_index_replaces_the_suffix() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=120)
    log.append(make_entries(1, 20, term=1))
    log.append(make_entries(6, 2, term=2))
    assert log.last_index() == 7
    assert [entry.term for entry in all_entries(log)] == [1] * 5 + [2] * 2
    log.close()
    reopened = CommitLog.open(disk, DIRECTORY, segment_size_bytes=120)
    assert [entry.term for entry in all_entries(reopened)] == [1] * 5 + [2] * 2


def test_a_batch_with_a_gap_in_its_indexes_is_refused_before_any_write() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY)
    log.append(make_entries(1, 3))
    with pytest.raises(ValueError):
        log.append([Entry(4, 1), Entry(6, 1)])
    assert log.last_index() == 3


def test_hard_state_survives_reopen_and_term_and_vote_survive_a_crash() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.append(make_entries(1, 5))
    log.set_hard_state(HardState(term=3, vote="n2", commit=2))
    log.set_hard_state(HardState(term=3, vote="n2", commit=5))
    crashed = disk.clone()
    crashed.crash(random.Random(1))
    after_crash = CommitLog.open(crashed, DIRECTORY)
    assert after_crash.hard_state() == HardState(term=3, vote="n2", commit=2)
    log.close()
    assert CommitLog.open(disk, DIRECTORY).hard_state() == HardState(term=3, vote="n2", commit=5)


def test_a_reader_in_another_thread_never_sees_a_partial_entry() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY, segment_size_bytes=2000)
    stop = threading.Event()
    problems: list[str] = []

    def read_constantly() -> None:
        while not stop.is_set():
            last = log.last_index()
            if last >= 1:
                for entry in log.entries(max(1, last - 20), last + 1, 1 << 20):
                    if entry.data != bytes([entry.index % 251]) * 50:
                        problems.append(f"bad entry {entry}")

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for first in range(1, 2000, 10):
            log.append(make_entries(first, 10, size=50))
    finally:
        stop.set()
        reader.join()
    assert problems == []


# -- bad input --------------------------------------------------------------------------------


def test_a_missing_directory_is_a_data_dir_error_without_create() -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        CommitLog.open(MemoryDisk(), "/nowhere", create=False)


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DataDirError, match="not a dledger-mq log"):
        CommitLog.open(OsDisk(), str(tmp_path))
    assert [path.name for path in tmp_path.iterdir()] == ["photo.jpg"]


def test_a_file_where_the_directory_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"")
    with pytest.raises(DataDirError, match="not a directory"):
        CommitLog.open(OsDisk(), str(tmp_path / "log"))


def test_a_meta_file_of_another_format_version_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    CommitLog.open(OsDisk(), str(directory)).close()
    meta = directory / "meta"
    meta.write_bytes(META_MAGIC + (FORMAT_VERSION + 1).to_bytes(4, "little") + bytes(4))
    with pytest.raises(FormatVersionError) as raised:
        CommitLog.open(OsDisk(), str(directory))
    assert raised.value.found_version == FORMAT_VERSION + 1


def test_a_meta_file_that_is_not_ours_is_refused() -> None:
    disk = MemoryDisk()
    CommitLog.open(disk, DIRECTORY).close()
    disk.set_contents(f"{DIRECTORY}/meta", b"something else entirely")
    with pytest.raises(DataDirError, match="meta"):
        CommitLog.open(disk, DIRECTORY)


def test_a_log_on_real_files_reopens(tmp_path: Path) -> None:
    directory = str(tmp_path / "a" / "b")
    log = CommitLog.open(OsDisk(), directory, segment_size_bytes=300)
    log.append(make_entries(1, 50))
    log.set_hard_state(HardState(2, None, 50))
    log.close()
    reopened = CommitLog.open(OsDisk(), directory, segment_size_bytes=300)
    assert all_entries(reopened) == make_entries(1, 50)
    assert reopened.hard_state() == HardState(2, None, 50)
    reopened.close()


def test_a_full_disk_is_disk_full_loses_nothing_and_can_be_retried() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=4096)
    log.append(make_entries(1, 5))
    disk.capacity_bytes = disk.used_bytes + 30
    with pytest.raises(DiskFull) as raised:
        log.append(make_entries(6, 5))
    assert raised.value.retriable
    assert log.last_index() == 5
    crashed = disk.clone()
    crashed.crash(random.Random(0))
    assert all_entries(CommitLog.open(crashed, DIRECTORY)) == make_entries(1, 5)
    disk.capacity_bytes = None
    log.append(make_entries(6, 5))
    log.close()
    assert all_entries(CommitLog.open(disk, DIRECTORY)) == make_entries(1, 10)


def test_a_full_disk_while_writing_the_state_keeps_the_old_state() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.set_hard_state(HardState(1, "a", 0))
    disk.capacity_bytes = disk.used_bytes + 5
    with pytest.raises(DiskFull):
        log.set_hard_state(HardState(2, "b", 0))
    assert log.hard_state() == HardState(1, "a", 0)
    disk.capacity_bytes = None
    log.set_hard_state(HardState(2, "b", 0))
    disk.crash(random.Random(0))
    assert CommitLog.open(disk, DIRECTORY).hard_state() == HardState(2, "b", 0)


def test_a_failed_fsync_stops_the_log_and_loses_nothing_acknowledged() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.append(make_entries(1, 5))
    disk.inject_fault("fsync", errno.EIO)
    with pytest.raises(FsyncFailed) as raised:
        log.append(make_entries(6, 5))
    assert not raised.value.retriable
    assert log.last_index() == 5, "entries whose fsync failed must never be published"
    for attempt in (
        lambda: log.append(make_entries(6, 5)),
        lambda: log.set_hard_state(HardState(1, None, 0)),
        lambda: log.trim_prefix(2),
        log.sync,
    ):
        with pytest.raises(FsyncFailed):
            attempt()
    assert all_entries(log) == make_entries(1, 5)
    disk.crash(random.Random(0), torn_writes=False)
    assert all_entries(CommitLog.open(disk, DIRECTORY)) == make_entries(1, 5)


def test_a_failed_fsync_of_the_state_file_stops_the_log() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.set_hard_state(HardState(1, "a", 0))
    disk.inject_fault("fsync", errno.EIO)
    with pytest.raises(FsyncFailed):
        log.set_hard_state(HardState(2, "b", 0))
    assert log.hard_state() == HardState(1, "a", 0)
    with pytest.raises(StorageError):
        log.append(make_entries(1, 1))


# -- recovery ---------------------------------------------------------------------------------


def write_then_damage(offset_from_end: int, *, flip: bool) -> tuple[MemoryDisk, str, int]:
    """A 3-segment log whose last segment is damaged; returns disk, path, size before."""
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    for first in range(1, 31, 3):
        log.append(make_entries(first, 3))
    log.close()
    path = segment_path(disk)
    # A torn write is never under a checkpoint (one covers only fsynced bytes): the damage
    # here is as after a crash that came before the close's checkpoint.
    disk.remove(path[: -len(".log")] + ".idx")
    data = bytearray(disk.contents(path))
    if flip:
        data[len(data) - offset_from_end] ^= 0x40
    else:
        del data[len(data) - offset_from_end :]
    disk.set_contents(path, bytes(data))
    return disk, path, len(disk.contents(path))


def test_a_torn_tail_is_cut_back_to_the_last_whole_entry() -> None:
    disk, path, size = write_then_damage(5, flip=False)
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    assert log.last_index() == 29
    (cut,) = log.recovery.cuts
    assert cut.path == path and not cut.repaired
    assert cut.offset + cut.bytes_dropped == size
    assert cut.bytes_dropped == RECORD_HEADER_SIZE + 10 - 5
    log.append(make_entries(30, 1, size=3))
    assert all_entries(log)[-1] == make_entries(30, 1, size=3)[0]


def test_a_bit_flip_in_the_last_entry_is_cut_and_the_replica_lost_its_tail() -> None:
    disk, _path, _size = write_then_damage(3, flip=True)
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    assert log.last_index() == 29
    assert all_entries(log) == make_entries(1, 29)
    # Published before the close, so rot rather than a torn write (test_published_end.py).
    assert log.lost_tail


def test_corruption_followed_by_intact_entries_refuses_to_start() -> None:
    record_size = RECORD_HEADER_SIZE + 10
    disk, path, _size = write_then_damage(2 * record_size + 3, flip=True)
    with pytest.raises(CorruptLog) as raised:
        CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    assert isinstance(raised.value, CorruptRecord)
    assert raised.value.path == path
    assert raised.value.offset == len(disk.contents(path)) - 3 * record_size
    assert path in str(raised.value) and str(raised.value.offset) in str(raised.value)


def test_a_refused_open_changes_no_file() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    log.append(make_entries(1, 3))
    log.trim_prefix(4)
    log.close()
    path = segment_path(disk)
    data = bytearray(disk.contents(path))
    data[-1] ^= 1  # a torn tail, but cutting it would lose the entry before the trim point
    disk.set_contents(path, bytes(data))
    before = {name: disk.contents(f"{DIRECTORY}/{name}") for name in disk.list_directory(DIRECTORY)}
    with pytest.raises(CorruptRecord, match="before its trim point"):
        CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    after = {name: disk.contents(f"{DIRECTORY}/{name}") for name in disk.list_directory(DIRECTORY)}
    assert after == before
    repaired = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200, repair=True)
    assert repaired.recovery.first_index_moved_from == 4
    assert (repaired.first_index(), repaired.last_index(), repaired.term(2)) == (3, 2, 1)


def test_repair_cuts_at_the_corruption_and_reports_what_it_dropped() -> None:
    record_size = RECORD_HEADER_SIZE + 10
    disk, path, size = write_then_damage(2 * record_size + 3, flip=True)
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200, repair=True)
    assert log.last_index() == 27
    assert log.recovery.repaired
    assert log.recovery.bytes_dropped == 3 * record_size
    assert all_entries(log) == make_entries(1, 27)
    log.close()
    assert CommitLog.open(disk, DIRECTORY, segment_size_bytes=200).last_index() == 27


def rot_at_the_end_of_the_first_of_many_segments() -> tuple[MemoryDisk, str]:
    """Ten closed segments of 3 entries; a bit flipped in the last byte of the first."""
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    for first in range(1, 31, 3):
        log.append(make_entries(first, 3))
    log.close()
    first_segment = segment_path(disk, 0)
    data = bytearray(disk.contents(first_segment))
    data[-1] ^= 1
    disk.set_contents(first_segment, bytes(data))
    return disk, first_segment


def test_corruption_in_an_earlier_segment_refuses_to_start_even_at_its_end() -> None:
    disk, first_segment = rot_at_the_end_of_the_first_of_many_segments()
    # Without its index file a sealed segment is scanned on open (with it, see below).
    disk.remove(first_segment[: -len(".log")] + ".idx")
    with pytest.raises(CorruptRecord) as raised:
        CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    assert raised.value.path == first_segment
    repaired = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200, repair=True)
    assert len(segment_names(disk)) == 1
    assert all_entries(repaired) == make_entries(1, repaired.last_index())


def test_a_sealed_segment_with_its_index_is_not_read_on_open_and_rot_in_it_is_found_on_read() -> (
    None
):
    disk, first_segment = rot_at_the_end_of_the_first_of_many_segments()
    indexes = [n for n in disk.list_directory(DIRECTORY) if n.endswith(".idx")]
    # Every sealed segment has one, and the last its checkpoint (written on close).
    assert len(indexes) == len(segment_names(disk))
    reopened = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    assert reopened.last_index() == 30
    last_of_first = reopened.first_index()
    while True:
        try:
            reopened.entries(last_of_first, last_of_first + 1, 1000)
        except CorruptRecord as error:
            assert error.path == first_segment
            break
        last_of_first += 1
    assert all_entries_from(reopened, last_of_first + 1) == make_entries(
        last_of_first + 1, 30 - last_of_first
    )


def all_entries_from(log: CommitLog, first: int) -> list[Entry]:
    return log.entries(first, log.last_index() + 1, 1 << 30)


def test_a_checkpoint_spares_the_scan_of_what_it_covers_and_only_that() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.append(make_entries(1, 20))
    log.checkpoint()
    log.append(make_entries(21, 5))
    path = segment_path(disk)
    log.close()  # a close takes its own: remove it to stand for a crash after the first
    disk.remove(path[: -len(".log")] + ".idx")
    log = CommitLog.open(disk, DIRECTORY)
    log.checkpoint()
    log.append(make_entries(26, 5))
    disk.crash(random.Random(0), torn_writes=False)  # entries 26..30 were fsynced (sync)
    reopened = CommitLog.open(disk, DIRECTORY)
    assert all_entries(reopened) == make_entries(1, 30)
    # A bit flipped under the checkpoint is not looked for on open; it is found on read.
    reopened.close()
    data = bytearray(disk.contents(path))
    data[SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + 2] ^= 1
    disk.set_contents(path, bytes(data))
    reopened = CommitLog.open(disk, DIRECTORY)
    assert reopened.last_index() == 30
    with pytest.raises(CorruptRecord):
        reopened.entries(1, 2, 1000)


def test_a_record_that_rots_after_open_is_never_served() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    log.append(make_entries(1, 5))
    path = segment_path(disk)
    data = bytearray(disk.contents(path))
    data[SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + 2] ^= 1
    disk.set_contents(path, bytes(data))
    with pytest.raises(CorruptRecord):
        log.entries(1, 3, 1000)
    assert log.entries(2, 3, 1000) == make_entries(2, 1)


def test_a_torn_new_segment_is_removed() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=100)
    log.append(make_entries(1, 3))
    log.append(make_entries(4, 3))
    log.close()
    disk.set_contents(segment_path(disk), b"DQ")
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=100)
    assert (log.last_index(), len(segment_names(disk))) == (3, 1)
    log.append(make_entries(4, 1))
    assert log.term(4) == 1


# -- flush policies ---------------------------------------------------------------------------


def test_sync_does_one_write_and_one_fsync_per_batch() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY)
    before = disk.operation_counts.copy()
    log.append(make_entries(1, 256))
    # The batch, and the 60-byte record of where the published log now ends (never fsynced).
    assert disk.operation_counts["append"] - before["append"] == 2
    assert disk.operation_counts["fsync"] - before["fsync"] == 1
    assert log.durable_index() == 256


def test_async_fsyncs_at_the_interval_and_a_crash_loses_only_since_then() -> None:
    now = [0.0]
    disk = MemoryDisk()
    log = CommitLog.open(
        disk, DIRECTORY, flush_policy=FlushPolicy.ASYNC, flush_interval_ms=100, clock=lambda: now[0]
    )
    fsyncs = disk.operation_counts["fsync"]
    log.append(make_entries(1, 5))
    log.append(make_entries(6, 5))
    assert (disk.operation_counts["fsync"], log.durable_index()) == (fsyncs, 0)
    now[0] = 0.2
    log.append(make_entries(11, 5))
    assert (disk.operation_counts["fsync"], log.durable_index()) == (fsyncs + 1, 15)
    log.append(make_entries(16, 5))
    disk.crash(random.Random(3), torn_writes=False)
    assert CommitLog.open(disk, DIRECTORY).last_index() == 15


# -- retention --------------------------------------------------------------------------------


def test_trim_prefix_keeps_the_term_before_the_first_entry_across_reopen() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=150)
    log.append(make_entries(1, 10, term=1))
    log.append(make_entries(11, 10, term=2))
    log.trim_prefix(11)
    assert (log.first_index(), log.term(10)) == (11, 1)
    disk.crash(random.Random(0))
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=150)
    assert (log.first_index(), log.term(10), log.last_index()) == (11, 1, 20)
    log.trim_prefix(21)
    log.close()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=150)
    assert (log.first_index(), log.last_index(), log.term(20)) == (21, 20, 2)


def test_trim_by_size_deletes_whole_segments_but_never_past_the_floor() -> None:
    disk = MemoryDisk()
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    for first in range(1, 61, 4):
        log.append(make_entries(first, 4))
    segments_before = len(segment_names(disk))
    assert log.trim_by_size(max_total_bytes=0, floor_index=30) <= 30
    assert 1 < log.first_index() <= 30
    assert len(segment_names(disk)) < segments_before
    assert log.trim_by_size(max_total_bytes=0, floor_index=1000) == log.last_index() - 3
    assert log.trim_by_size(max_total_bytes=1 << 30, floor_index=1000) == log.first_index()


def test_trim_by_age_deletes_segments_last_written_before_the_cutoff() -> None:
    now = [0.0]
    disk = MemoryDisk(clock=lambda: now[0])
    log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=200)
    for first in range(1, 41, 4):
        now[0] = first
        log.append(make_entries(first, 4))
    assert log.trim_by_age(max_age_seconds=100, now_seconds=100, floor_index=1000) == 1
    first_index = log.trim_by_age(max_age_seconds=100, now_seconds=101, floor_index=1000)
    assert first_index == 5
    assert log.trim_by_age(max_age_seconds=0, now_seconds=1000, floor_index=20) <= 20


def test_a_batch_whose_terms_go_down_is_refused_before_any_write() -> None:
    log = CommitLog.open(MemoryDisk(), DIRECTORY)
    log.append(make_entries(1, 3, term=2))
    for bad_batch in ([Entry(4, 1)], [Entry(4, 3), Entry(5, 2)]):
        with pytest.raises(ValueError, match="term"):
            log.append(bad_batch)
    assert log.last_index() == 3
