"""The key index on disk (``broker/key_index.py``): lookups across the journal and sealed
segments, a bounded answer, a restart that finds it where it was synced, a torn journal tail
cut (never served), rot detected (the index dropped, rebuilt from the log, never served),
retention deleting whole segments, and catching up with the log until it goes live."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.broker.key_index import (
    HEADER_BYTES,
    JOURNAL_NAME,
    RECORD_BYTES,
    KeyIndex,
    keyed_messages,
)
from dledger_mq.broker.records import SLOT_BITS, Message, SendBatch, encode_command
from dledger_mq.errors import CorruptRecord
from dledger_mq.node.key_index_keeper import catch_up_once
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

DIRECTORY = "/data/keyindex"


def batch(*messages: tuple[str, tuple[str, ...]]) -> bytes:
    """A SEND_BATCH entry: (topic, keys) per message."""
    return encode_command(
        SendBatch(1000, tuple(Message(topic, 0, b"body", keys=keys) for topic, keys in messages))
    )


def position(raft_index: int, slot: int = 0) -> int:
    return raft_index << SLOT_BITS | slot


def entries_with_keys(count: int) -> list[tuple[int, bytes]]:
    """Entry n (from 1) holds two messages: key ``k{n % 3}`` in orders, ``k0`` in other."""
    return [(n, batch(("orders", (f"k{n % 3}",)), ("other", ("k0",)))) for n in range(1, count + 1)]


def expected(entries: list[tuple[int, bytes]], topic: str, key: str, through: int) -> list[int]:
    """Positions holding ``key`` in ``topic`` up to entry ``through``, newest first (what a
    lookup names, before the caller checks each message)."""
    found = []
    for index, data in entries:
        if index > through or not data:
            continue
        for slot, message in enumerate(_messages(data)):
            if message.topic == topic and key in message.keys:
                found.append(position(index, slot))
    return sorted(found, reverse=True)


def _messages(data: bytes) -> tuple[Message, ...]:
    from dledger_mq.broker.records import SendBatch, decode_command

    command = decode_command(data)
    assert isinstance(command, SendBatch)
    return command.messages


def live_index(disk: MemoryDisk, seal_records: int = 8) -> KeyIndex:
    index = KeyIndex.open(disk, DIRECTORY, seal_records)
    index.live = True
    return index


def feed(index: KeyIndex, entries: list[tuple[int, bytes]]) -> None:
    for number, data in entries:
        index.apply(number, data)


def test_a_key_is_found_in_the_journal_and_in_sealed_segments_newest_first() -> None:
    disk = MemoryDisk()
    index = live_index(disk)
    entries = entries_with_keys(20)
    feed(index, entries)
    assert len(index.segments) >= 2  # 40 records, sealed every 8
    for key in ("k0", "k1", "k2"):
        lookup = index.lookup("orders", key)
        assert list(lookup.positions) == expected(entries, "orders", key, 20)
        assert not lookup.truncated
    # The same key in another topic is another key.
    assert list(index.lookup("other", "k0").positions) == expected(entries, "other", "k0", 20)
    assert index.lookup("orders", "missing").positions == ()


def test_a_lookup_names_a_bounded_number_of_candidates_the_newest() -> None:
    index = live_index(MemoryDisk())
    entries = entries_with_keys(30)
    feed(index, entries)
    lookup = index.lookup("other", "k0", max_candidates=5)
    assert list(lookup.positions) == expected(entries, "other", "k0", 30)[:5]
    assert lookup.truncated


def test_non_message_entries_and_garbage_hold_no_keys() -> None:
    assert keyed_messages(3, b"") == []
    assert keyed_messages(3, b"\x93\x01\x02\x03") == []
    assert keyed_messages(3, b"{not msgpack") == []
    assert keyed_messages(4, batch(("orders", ("a", "a", "b")))) == keyed_messages(
        4, batch(("orders", ("a", "b")))
    )


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_any_entry_bytes_are_indexed_or_skipped_never_an_error(data: bytes) -> None:
    keyed_messages(1, data)


def test_a_restart_after_sync_finds_the_index_where_it_stood() -> None:
    disk = MemoryDisk()
    index = live_index(disk)
    entries = entries_with_keys(13)
    feed(index, entries)
    index.sync()
    disk.crash(random.Random(1))
    reopened = KeyIndex.open(disk, DIRECTORY, 8)
    assert not reopened.damaged and reopened.covered_index == 13
    for key in ("k0", "k1", "k2"):
        assert list(reopened.lookup("orders", key).positions) == expected(
            entries, "orders", key, 13
        )


@pytest.mark.parametrize("seed", range(40))
def test_a_torn_journal_tail_is_cut_and_its_entries_indexed_again(seed: int) -> None:
    """A crash after unsynced appends: what survives is a prefix, possibly ending in a torn
    record; the reopened index reaches at least the synced checkpoint, holds exactly the keys
    of the entries it claims, and, fed the log again from there, ends as if nothing happened."""
    disk = MemoryDisk()
    index = live_index(disk, seal_records=1000)
    entries = entries_with_keys(60)
    feed(index, entries[:20])
    index.sync()
    for number, data in entries[20:]:
        index.apply(number, data)
        index.flush()  # each entry written, none fsynced
    disk.crash(random.Random(seed))
    reopened = KeyIndex.open(disk, DIRECTORY, 1000)
    assert not reopened.damaged
    assert 20 <= reopened.covered_index <= 60
    through = reopened.covered_index
    for key in ("k0", "k1", "k2"):
        assert list(reopened.lookup("orders", key).positions) == expected(
            entries, "orders", key, through
        )
    reopened.live = True
    feed(reopened, entries)  # the log applied again after the restart
    for key in ("k0", "k1", "k2"):
        assert list(reopened.lookup("orders", key).positions) == expected(
            entries, "orders", key, 60
        )


def test_a_damaged_journal_record_before_the_tail_drops_the_index() -> None:
    disk = MemoryDisk()
    index = live_index(disk, seal_records=1000)
    feed(index, entries_with_keys(10))
    index.sync()
    path = f"{DIRECTORY}/{JOURNAL_NAME}"
    data = bytearray(disk.contents(path))
    data[3 * RECORD_BYTES + 5] ^= 0x40  # rot in record 3 of about 21
    disk.set_contents(path, bytes(data))
    reopened = KeyIndex.open(disk, DIRECTORY, 1000)
    # Never served from: empty, not live, every file gone, to be rebuilt from the log.
    assert (reopened.covered_index, reopened.live, reopened.segments) == (0, False, [])
    assert disk.list_directory(DIRECTORY) == []


def test_a_damaged_segment_header_drops_the_index_on_open() -> None:
    disk = MemoryDisk()
    index = live_index(disk)
    feed(index, entries_with_keys(10))
    index.sync()
    segment = index.segments[0].path
    data = bytearray(disk.contents(segment))
    data[10] ^= 1
    disk.set_contents(segment, bytes(data))
    reopened = KeyIndex.open(disk, DIRECTORY, 8)
    assert (reopened.covered_index, reopened.live, reopened.segments) == (0, False, [])


def test_a_damaged_segment_record_is_caught_by_the_lookup_that_reads_it() -> None:
    disk = MemoryDisk()
    index = live_index(disk)
    feed(index, entries_with_keys(10))
    for segment in index.segments:
        data = bytearray(disk.contents(segment.path))
        for record in range(segment.count):
            data[HEADER_BYTES + record * RECORD_BYTES + 9] ^= 0x01  # every position
        disk.set_contents(segment.path, bytes(data))
    with pytest.raises(CorruptRecord):
        index.lookup("orders", "k0")


def test_retention_deletes_the_segments_that_name_only_deleted_entries() -> None:
    disk = MemoryDisk()
    index = live_index(disk)
    entries = entries_with_keys(20)
    feed(index, entries)
    segments = list(index.segments)
    assert len(segments) >= 2
    index.trim(segments[1].first_index)  # the first segment's entries are all gone
    assert index.segments == segments[1:]
    assert not disk.exists(segments[0].path)
    index.trim(segments[1].last_index)  # the second still names one entry the log holds
    assert index.segments == segments[1:]
    reopened = KeyIndex.open(disk, DIRECTORY, 8)
    assert reopened.segments == segments[1:]


class _State:
    def __init__(self, applied_index: int) -> None:
        self.applied_index = applied_index


def test_catching_up_from_the_log_goes_live_at_the_applied_index() -> None:
    """A rebuild: the index starts empty and indexes the log in chunks until it reaches the
    applied index; retention's gap at the log's start is skipped."""
    entries = entries_with_keys(50)
    log = MemoryLogStore()
    log.append([Entry(number, 1, data) for number, data in entries])
    log.trim_prefix(11)  # entries 1-10 deleted by retention
    index = KeyIndex.open(MemoryDisk(), DIRECTORY, 16)
    state = _State(45)
    for _ in range(10):
        catch_up_once(index, state, log)  # type: ignore[arg-type]
        if index.live:
            break
    assert index.live and index.covered_index == 45
    assert list(index.lookup("orders", "k1").positions) == [
        p for p in expected(entries, "orders", "k1", 45) if p >> SLOT_BITS >= 11
    ]
    index.apply(46, entries[45][1])  # live: apply feeds it from here
    assert index.covered_index == 46


def test_a_failed_write_makes_the_index_damaged_and_apply_goes_on() -> None:
    disk = MemoryDisk()
    index = live_index(disk, seal_records=4)
    feed(index, entries_with_keys(1))
    disk.inject_fault("fsync", 5, count=10)
    index.apply(2, entries_with_keys(2)[1][1])  # the seal's fsync fails
    index.apply(3, entries_with_keys(3)[2][1])
    assert index.damaged and not index.live


KEYS = st.sampled_from(["a", "b", "c", "d"])
ENTRY = st.lists(
    st.tuples(st.sampled_from(["orders", "other"]), st.lists(KEYS, max_size=3).map(tuple)),
    min_size=0,
    max_size=3,
)


@settings(max_examples=120, deadline=None)
@given(
    entries=st.lists(ENTRY, min_size=1, max_size=40),
    seal_records=st.integers(2, 30),
    syncs=st.sets(st.integers(1, 40), max_size=6),
    flushes=st.sets(st.integers(1, 40), max_size=10),
    crash_seed=st.integers(0, 1000),
    trim_to=st.integers(1, 41),
)
def test_the_index_after_any_crash_and_replay_names_exactly_the_keyed_messages(
    entries: list[list[tuple[str, tuple[str, ...]]]],
    seal_records: int,
    syncs: set[int],
    flushes: set[int],
    crash_seed: int,
    trim_to: int,
) -> None:
    """The node's cycle: apply (snapshots sync the index now and then), crash at any point,
    reopen, apply again from the last synced index on (what the restored state replays), trim
    to where retention got. Every lookup then names exactly the keyed positions the log still
    holds (a segment's older ones may stay until the whole segment goes), newest first."""
    # An empty one stands for an entry without messages (a no-op, a topic change).
    log = [
        (number, batch(*entry) if entry else b"") for number, entry in enumerate(entries, start=1)
    ]
    disk = MemoryDisk()
    index = live_index(disk, seal_records)
    synced = 0
    for number, data in log:
        index.apply(number, data)
        if number in flushes:
            index.flush()
        if number in syncs:
            index.sync()
            synced = number
    disk.crash(random.Random(crash_seed))
    reopened = KeyIndex.open(disk, DIRECTORY, seal_records)
    assert not reopened.damaged and reopened.covered_index >= synced
    reopened.live = True
    for number, data in log[synced:]:  # the state restored at ``synced`` applies the rest
        reopened.apply(number, data)
    first_kept = min(trim_to, len(log) + 1)
    reopened.trim(first_kept)
    for topic in ("orders", "other"):
        for key in ("a", "b", "c", "d"):
            found = reopened.lookup(topic, key).positions
            wanted = expected(log, topic, key, len(log))
            assert list(found) == sorted(set(found), reverse=True)  # newest first, once each
            kept = [p for p in wanted if p >> SLOT_BITS >= first_kept]
            assert [p for p in found if p >> SLOT_BITS >= first_kept] == kept
            assert set(found) <= set(wanted)
