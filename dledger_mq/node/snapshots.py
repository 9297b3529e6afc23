"""A node's snapshots of its broker state: taken every ``snapshot_interval_entries`` applied
entries, in the background, and used on a restart so that only the log's tail is applied again.

A snapshot is used only with a log that holds its entry (same index, same term): a log that lost
its tail (``async`` flush) or was replaced (a recovering replica) is replayed from its start
instead. The log itself is not trimmed yet (retention comes with InstallSnapshot, issue #14).
"""

from __future__ import annotations

import posixpath

import structlog
import trio

from dledger_mq.broker.service import AppliedSignal
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import SnapshotError
from dledger_mq.node.config import NodeConfig
from dledger_mq.node.data_dir import log_directory
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.commitlog_format import SNAPSHOTS_DIRECTORY_NAME
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.snapshots import Snapshot, SnapshotStore

logger = structlog.get_logger()


def snapshot_store(config: NodeConfig) -> SnapshotStore:
    return SnapshotStore(OsDisk(), posixpath.join(log_directory(config), SNAPSHOTS_DIRECTORY_NAME))


def restore_state(config: NodeConfig, log: CommitLog, store: SnapshotStore) -> BrokerState:
    """The broker state of the newest usable snapshot, or an empty one (the whole log is then
    applied again)."""
    log_events = logger.bind(node=config.node_id, group=config.group)
    snapshot = store.latest()
    if snapshot is None:
        return BrokerState(config.group)
    if not _log_holds(log, snapshot):
        log_events.warning(
            "snapshot_unusable",
            index=snapshot.index,
            reason="the log does not hold its entry",
            log_last_index=log.last_index(),
        )
        return BrokerState(config.group)
    try:
        state = BrokerState.from_snapshot(config.group, snapshot.data)
    except SnapshotError as error:
        log_events.warning("snapshot_unusable", index=snapshot.index, reason=error.reason)
        return BrokerState(config.group)
    log_events.info("state_restored", index=snapshot.index, bytes=len(snapshot.data))
    return state


def _log_holds(log: CommitLog, snapshot: Snapshot) -> bool:
    if not log.first_index() - 1 <= snapshot.index <= log.last_index():
        return False
    try:
        return log.term(snapshot.index) == snapshot.term
    except (LogCompacted, LogUnavailable):
        return False


async def take_snapshots(
    config: NodeConfig,
    state: BrokerState,
    log: CommitLog,
    applied: AppliedSignal,
    store: SnapshotStore,
) -> None:
    """Forever: once ``snapshot_interval_entries`` entries or ``snapshot_interval_bytes`` of
    them were applied since the last snapshot (and are durable here), snapshot the state and
    write it in a worker thread."""
    last_index, last_bytes = state.applied_index, applied.applied_bytes
    while True:
        await applied.wait()
        index = state.applied_index
        due = (
            index - last_index >= config.snapshot_interval_entries
            or applied.applied_bytes - last_bytes >= config.snapshot_interval_bytes
        )
        if not due or index > log.durable_index():
            continue
        snapshot = Snapshot(index, log.term(index), state.to_snapshot())
        await trio.to_thread.run_sync(store.save, snapshot)
        last_index, last_bytes = index, applied.applied_bytes
