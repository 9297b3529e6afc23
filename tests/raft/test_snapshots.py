"""Snapshot files: written durably and checksummed, the newest whole one used, two kept."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.errors import SnapshotError
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from dledger_mq.raft.storage.snapshots import (
    Snapshot,
    SnapshotStore,
    decode_snapshot,
    encode_snapshot,
    snapshot_file_name,
    trim_floor,
)

DIRECTORY = "/log/snapshots"


def test_the_newest_snapshot_comes_back_and_two_are_kept() -> None:
    disk = MemoryDisk()
    store = SnapshotStore(disk, DIRECTORY)
    assert store.latest() is None
    for index in (10, 20, 30):
        store.save(Snapshot(index, 2, b"state at %d" % index))
    assert store.indexes() == [30, 20]
    assert store.latest() == Snapshot(30, 2, b"state at 30")


def test_a_saved_snapshot_survives_a_power_cut() -> None:
    disk = MemoryDisk()
    SnapshotStore(disk, DIRECTORY).save(Snapshot(7, 1, b"x" * 1000))
    disk.crash(random.Random(0))
    assert SnapshotStore(disk, DIRECTORY).latest() == Snapshot(7, 1, b"x" * 1000)


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before() -> None:
    disk = MemoryDisk()
    store = SnapshotStore(disk, DIRECTORY)
    store.save(Snapshot(10, 1, b"older"))
    store.save(Snapshot(20, 1, b"newer"))
    path = f"{DIRECTORY}/{snapshot_file_name(20)}"
    data = bytearray(encode_snapshot(Snapshot(20, 1, b"newer")))
    data[-1] ^= 0x40
    disk.set_contents(path, bytes(data))
    assert store.latest() == Snapshot(10, 1, b"older")


@given(st.integers(min_value=0, max_value=60))
def test_a_cut_snapshot_is_refused(length: int) -> None:
    data = encode_snapshot(Snapshot(5, 3, b"0123456789"))
    if length < len(data):
        with pytest.raises(SnapshotError):
            decode_snapshot(data[:length])


@given(st.binary(max_size=80))
def test_any_bytes_are_a_snapshot_or_a_snapshot_error(data: bytes) -> None:
    try:
        snapshot = decode_snapshot(data)
    except SnapshotError:
        return
    assert encode_snapshot(snapshot) == data


def test_an_install_gets_its_own_snapshot_when_a_newer_one_arrived_meanwhile() -> None:
    """Two transfers overlapped (seeds 915 and 1275 with a learner): the core installs 128 while
    160 is already saved; the install of 128 must find 128, not fail on "not the newest"."""
    store = SnapshotStore(MemoryDisk(), DIRECTORY)
    store.save(Snapshot(128, 3, b"state at 128"))
    store.save(Snapshot(160, 3, b"state at 160"))
    assert store.get(128, 3) == Snapshot(128, 3, b"state at 128")
    assert store.get(128, 2) is None  # another term's entry at that index is not it
    assert store.get(99, 3) is None
    store.save(Snapshot(200, 3, b"state at 200"))
    assert store.get(128, 3) is None  # only two are kept


def test_a_pin_keeps_the_newest_snapshot_before_it_and_offers_that_one() -> None:
    # The broker's oldest pending timer is at index 25: its message must reach a follower as
    # an entry, so the snapshot sent is one from before it, and the log is kept from there.
    store = SnapshotStore(MemoryDisk(), DIRECTORY)
    for index in (10, 20, 30, 40, 50):
        store.save(Snapshot(index, 1, b"s%d" % index), pin=25)
    assert store.indexes() == [50, 40, 20]
    assert trim_floor(store) == 21
    assert trim_floor(store, pin=15) == 15
    store.pin = lambda: 25
    info = store.newest()
    assert info is not None and info.index == 20
    store.pin = lambda: None
    info = store.newest()
    assert info is not None and info.index == 50
    store.save(Snapshot(60, 1, b"s60"))  # the timer fired: the pinned one goes
    assert store.indexes() == [60, 50]
