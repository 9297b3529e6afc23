"""Crash tests: whatever a crash or rot does to the files, recovery returns a prefix of what was
written, keeps everything fsynced before the crash, and never serves a record with a bad checksum.
"""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import CorruptRecord, FsyncFailed, StorageError
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

DIRECTORY = "/node"
SEGMENT_SIZE_BYTES = 300


def entries_for(rng: random.Random, first: int, count: int, term: int) -> list[Entry]:
    return [
        Entry(index, term, rng.randbytes(rng.randint(0, 40)))
        for index in range(first, first + count)
    ]


def all_entries(log: CommitLog) -> list[Entry]:
    return log.entries(log.first_index(), log.last_index() + 1, 1 << 40)


def assert_prefix_of(log: CommitLog, model: MemoryLogStore, durable_index: int) -> None:
    """The recovered log holds the model's entries from its first index up to somewhere between
    ``durable_index`` and the model's end, all of them with intact checksums."""
    assert log.first_index() == model.first_index()
    assert durable_index <= log.last_index() <= model.last_index()
    assert log.term(log.first_index() - 1) == model.term(model.first_index() - 1)
    assert all_entries(log) == model.entries(log.first_index(), log.last_index() + 1, 1 << 40)


def assert_consistent_with(log: CommitLog, model: MemoryLogStore) -> None:
    """Every entry the log still holds is the model's entry at that index."""
    assert log.last_index() <= model.last_index()
    for entry in all_entries(log):
        if entry.index >= model.first_index():
            assert model.entries(entry.index, entry.index + 1, 0) == [entry]


def open_log(disk: MemoryDisk, *, repair: bool = False) -> CommitLog:
    return CommitLog.open(
        disk,
        DIRECTORY,
        segment_size_bytes=SEGMENT_SIZE_BYTES,
        flush_policy=FlushPolicy.ASYNC,
        flush_interval_ms=1 << 30,
        clock=lambda: 0.0,
        repair=repair,
    )


def run_random_history(
    rng: random.Random, disk: MemoryDisk, log: CommitLog, model: MemoryLogStore, steps: int
) -> int:
    """Random appends, conflicts, syncs, trims and votes; returns the highest index the test
    itself knows to be fsynced (explicit syncs and truncations only)."""
    durable_index = log.durable_index()
    term = max(model.hard_state().term, model.term(model.last_index()), 1)
    for _ in range(steps):
        action = rng.random()
        if action < 0.55:
            lowest = max(model.first_index(), model.hard_state().commit + 1)
            if rng.random() < 0.8:
                first = model.last_index() + 1
            else:
                first = rng.randint(lowest, model.last_index() + 1)
            if first <= model.last_index():
                term += 1
                # A conflict cuts durably: what stays below ``first`` is fsynced.
                durable_index = min(durable_index, first - 1)
            batch = entries_for(rng, first, rng.randint(1, 6), term)
            model.append(batch)
            log.append(batch)
        elif action < 0.7:
            log.sync()
            durable_index = model.last_index()
        elif action < 0.8:
            index = rng.randint(model.first_index(), model.last_index() + 1)
            model.trim_prefix(index)
            log.trim_prefix(index)
            durable_index = max(durable_index, index - 1)
        else:
            term += rng.random() < 0.3
            hard_state = HardState(term, rng.choice([None, "a", "b"]), model.hard_state().commit)
            model.set_hard_state(hard_state)
            log.set_hard_state(hard_state)
    return durable_index


def test_recovery_after_random_crashes_keeps_a_prefix_and_everything_fsynced() -> None:
    cases = 0
    for seed in range(150):
        rng = random.Random(seed)
        disk = MemoryDisk()
        model = MemoryLogStore()
        log = open_log(disk)
        for _crash in range(12):
            durable_index = run_random_history(rng, disk, log, model, rng.randint(1, 12))
            disk.crash(rng)
            log = open_log(disk)
            assert_prefix_of(log, model, durable_index)
            recovered, expected = log.hard_state(), model.hard_state()
            assert (recovered.term, recovered.vote) == (expected.term, expected.vote)
            model = rebuild_model(log)
            cases += 1
    assert cases == 1800


def rebuild_model(log: CommitLog) -> MemoryLogStore:
    """A model holding what the recovered log holds, to continue the history from."""
    model = MemoryLogStore()
    first_index = log.first_index()
    if first_index > 1:
        # Placeholders up to the trim point, trimmed away, leave its term behind as on disk.
        placeholders = [Entry(index, 0) for index in range(1, first_index - 1)]
        model.append([*placeholders, Entry(first_index - 1, log.term(first_index - 1))])
        model.trim_prefix(first_index)
    model.append(all_entries(log))
    model.set_hard_state(log.hard_state())
    return model


def write_history_then_last_batch(seed: int) -> tuple[MemoryDisk, list[Entry], list[Entry], int]:
    """A synced log, then one more batch written without fsync; returns the disk, the entries
    before, the last batch, and where in the last segment that batch begins."""
    rng = random.Random(seed)
    disk = MemoryDisk()
    log = open_log(disk)
    before: list[Entry] = []
    for first in range(1, 1 + rng.randint(0, 30), 3):
        batch = entries_for(rng, first, 3, 1)
        log.append(batch)
        before += batch
    log.sync()
    last_batch = entries_for(rng, len(before) + 1, rng.randint(1, 5), 2)
    log.append(last_batch)
    batch_bytes = sum(32 + len(entry.data) for entry in last_batch)
    return disk, before, last_batch, len(disk.contents(last_segment(disk))) - batch_bytes


def last_segment(disk: MemoryDisk) -> str:
    return f"{DIRECTORY}/{[n for n in disk.list_directory(DIRECTORY) if n.endswith('.log')][-1]}"


@pytest.mark.parametrize("seed", range(12))
def test_a_write_cut_at_any_byte_recovers_exactly_the_whole_entries_before_the_cut(
    seed: int,
) -> None:
    disk, before, last_batch, size_before = write_history_then_last_batch(seed)
    path = last_segment(disk)
    full = disk.contents(path)
    record_ends = []
    end = size_before
    for entry in last_batch:
        end += 32 + len(entry.data)
        record_ends.append(end)
    assert record_ends[-1] == len(full)
    for cut in range(size_before, len(full) + 1):
        cut_disk = disk.clone()
        cut_disk.set_contents(path, full[:cut])
        log = open_log(cut_disk)
        whole = sum(1 for record_end in record_ends if record_end <= cut)
        assert all_entries(log) == before + last_batch[:whole]
        assert log.recovery.bytes_dropped == cut - (
            record_ends[whole - 1] if whole else size_before
        )


@settings(max_examples=600, deadline=None)
@given(seed=st.integers(0, 2**32), file_choice=st.integers(0, 10**6), bit=st.integers(0, 10**9))
def test_a_flipped_bit_anywhere_is_cut_as_a_tail_or_refused_never_served(
    seed: int, file_choice: int, bit: int
) -> None:
    rng = random.Random(seed)
    disk = MemoryDisk()
    log = open_log(disk)
    model = MemoryLogStore()
    run_random_history(rng, disk, log, model, 15)
    log.close()
    names = disk.list_directory(DIRECTORY)
    path = f"{DIRECTORY}/{names[file_choice % len(names)]}"
    data = bytearray(disk.contents(path))
    position = bit % (len(data) * 8)
    data[position // 8] ^= 1 << (position % 8)
    disk.set_contents(path, bytes(data))
    try:
        log = open_log(disk)
    except CorruptRecord as error:
        assert error.path.startswith(DIRECTORY)
        if path.endswith(".log"):
            assert error.path == path and error.offset <= position // 8
            repaired = open_log(disk, repair=True)
            assert repaired.recovery.repaired
            assert_consistent_with(repaired, model)
        return
    except StorageError:
        assert not path.endswith(".log"), "segment damage must be reported as CorruptRecord"
        return
    # Opened. What an index file or a checkpoint vouches for is not read on open: a flip
    # there is found when the record is read, and never served.
    try:
        assert_prefix_of(log, model, durable_index=log.first_index() - 1)
    except CorruptRecord as error:
        assert error.path == path
        return
    if log.recovery.cuts:
        # Found on open: it was cut off as a torn tail.
        assert [cut.path for cut in log.recovery.cuts] == [path]
    else:
        # Or it fell in a byte no entry is read from (an index file, then not trusted, or a
        # trimmed record).
        assert not path.endswith(".log") or log.first_index() > 1


def test_a_failed_fsync_then_a_crash_recovers_a_prefix_with_everything_acknowledged() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        disk = MemoryDisk()
        log = CommitLog.open(disk, DIRECTORY, segment_size_bytes=SEGMENT_SIZE_BYTES)
        model = MemoryLogStore()
        acknowledged = 0
        for first in range(1, 1 + rng.randint(1, 40), 4):
            batch = entries_for(rng, first, 4, 1)
            log.append(batch)
            model.append(batch)
            acknowledged = batch[-1].index
        # Two: should the batch start a segment, the first may hit the sealed one's index file
        # (not fatal: the index is only a shortcut); the batch's own fsync must fail.
        disk.inject_fault("fsync", errno.EIO, count=2)
        failed_batch = entries_for(rng, acknowledged + 1, 4, 2)
        model.append(failed_batch)
        with pytest.raises(FsyncFailed):
            log.append(failed_batch)
        disk.clear_faults()
        disk.crash(rng)
        assert_prefix_of(CommitLog.open(disk, DIRECTORY), model, acknowledged)
