"""Retention: what a pass deletes, what it never deletes, and when sends are refused."""

from __future__ import annotations

from dledger_mq.node.config import Member, NodeConfig
from dledger_mq.node.retention import DiskUsage, enforce_retention
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from dledger_mq.raft.storage.snapshots import Snapshot, SnapshotStore


def _config(**settings: object) -> NodeConfig:
    member = Member(client="127.0.0.1:1", peer="127.0.0.1:2")
    return NodeConfig(node_id="n1", members={"n1": member}, data_dir="/d", **settings)  # type: ignore[arg-type]


def _log_with_snapshots(snapshot_indexes: list[int]) -> tuple[CommitLog, SnapshotStore]:
    disk = MemoryDisk(clock=lambda: 1000.0)
    log = CommitLog.open(disk, "/log", segment_size_bytes=512)
    for first in range(1, 101, 5):  # one batch never spans segments: small batches
        log.save([Entry(index=i, term=1, data=b"x" * 40) for i in range(first, first + 5)])
    log.set_hard_state(HardState(term=1, commit=100))
    store = SnapshotStore(disk, "/log/snapshots")
    for index in snapshot_indexes:
        store.save(Snapshot(index, 1, b"state"))
    return log, store


def _usage(percent: int) -> DiskUsage:
    return DiskUsage(total=100, used=percent, free=100 - percent)


def test_size_retention_deletes_old_segments_but_never_past_the_oldest_snapshot_kept() -> None:
    log, store = _log_with_snapshots([40, 60])
    outcome = enforce_retention(
        _config(retention_bytes=1, retention_hours=0), log, store, disk_usage=lambda _: _usage(10)
    )
    assert outcome.first_index_before == 1
    assert 1 < outcome.first_index <= 41  # the entry after the older snapshot kept
    assert log.first_index() == outcome.first_index
    assert not outcome.refuse_sends


def test_nothing_is_deleted_without_a_snapshot() -> None:
    log, store = _log_with_snapshots([])
    outcome = enforce_retention(
        _config(retention_bytes=1, retention_hours=0.0001),
        log,
        store,
        now_seconds=10**9,
        disk_usage=lambda _: _usage(99),
    )
    assert outcome.first_index == 1


def test_age_retention_deletes_segments_written_longer_ago() -> None:
    log, store = _log_with_snapshots([50, 90])
    kept = enforce_retention(
        _config(retention_hours=1),
        log,
        store,
        now_seconds=1000.0 + 60,
        disk_usage=lambda _: _usage(10),
    )
    assert kept.first_index == 1  # a minute old: kept
    aged = enforce_retention(
        _config(retention_hours=1),
        log,
        store,
        now_seconds=1000.0 + 7200,
        disk_usage=lambda _: _usage(10),
    )
    assert 1 < aged.first_index <= 51


def test_a_nearly_full_volume_deletes_down_to_the_floor_and_refuses_sends() -> None:
    log, store = _log_with_snapshots([70, 80])
    outcome = enforce_retention(
        _config(retention_hours=0), log, store, disk_usage=lambda _: _usage(95)
    )
    assert 1 < outcome.first_index <= 71
    assert outcome.refuse_sends
    calm = enforce_retention(
        _config(retention_hours=0), log, store, disk_usage=lambda _: _usage(50)
    )
    assert not calm.refuse_sends
