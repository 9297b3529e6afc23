"""A node's snapshots of its broker state: taken every ``snapshot_interval_entries`` applied
entries, in the background, and used on a restart so that only the log's tail is applied again.

The log is trimmed below the oldest snapshot kept (``retention.py``); a follower that needs
what was trimmed gets the leader's snapshot (InstallSnapshot), which becomes its newest.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import structlog
import trio

from dledger_mq.broker.consume_queue import FileQueueStore, QueueStore
from dledger_mq.broker.key_index import KeyIndex
from dledger_mq.broker.service import AppliedSignal
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import ProtocolError, SnapshotError, StorageError
from dledger_mq.node.config import NodeConfig
from dledger_mq.node.data_dir import log_directory
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable
from dledger_mq.raft.pure.membership import Membership
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.commitlog_format import (
    CONSUME_QUEUE_DIRECTORY_NAME,
    SNAPSHOTS_DIRECTORY_NAME,
)
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.snapshots import Snapshot, SnapshotStore, start_from_snapshot

logger = structlog.get_logger()


def snapshot_store(config: NodeConfig) -> SnapshotStore:
    return SnapshotStore(OsDisk(), posixpath.join(log_directory(config), SNAPSHOTS_DIRECTORY_NAME))


def consume_queue_store(config: NodeConfig) -> FileQueueStore:
    return FileQueueStore(
        OsDisk(), posixpath.join(log_directory(config), CONSUME_QUEUE_DIRECTORY_NAME)
    )


def restore_state(
    config: NodeConfig, log: CommitLog, store: SnapshotStore, queues: QueueStore
) -> BrokerState:
    """The broker state of the newest snapshot (``start_from_snapshot``, which also finishes an
    install a crash cut short), with its consume queues reopened as of it; or an empty one when
    the log still starts at 1 (the whole log is then applied again). ``SnapshotError`` when the
    snapshot cannot be read and the log no longer holds what it covers; ``CorruptRecord`` when
    the consume queues lost what the snapshot says they hold."""
    log_events = logger.bind(node=config.node_id, group=config.group)
    snapshot, reset = start_from_snapshot(log, store)
    if snapshot is None:
        queues.clear()  # they are rebuilt with the state, from the log's first entry
        return BrokerState(config.group, queues)
    if reset:
        queues.clear()  # a leader's snapshot: what was derived here before is not of it
    try:
        state = BrokerState.from_snapshot(config.group, snapshot.data, queues)
    except SnapshotError as error:
        if log.first_index() > 1:
            raise SnapshotError(
                f"snapshot {snapshot.index} is unusable ({error.reason}) and the log before it "
                "is gone: start this node with an empty data directory to have it caught up"
            ) from None
        log_events.warning("snapshot_unusable", index=snapshot.index, reason=error.reason)
        queues.clear()
        return BrokerState(config.group, queues)
    log_events.info("state_restored", index=snapshot.index, bytes=len(snapshot.data))
    return state


def snapshot_membership(log: CommitLog, store: SnapshotStore, index: int) -> Membership | None:
    """The group's membership the snapshot at ``index`` records (the one the state was
    restored from), or None: no snapshot there, or one from before memberships were recorded
    (the bootstrap, ``members``, is then in force)."""
    if index == 0:
        return None
    try:
        snapshot = store.get(index, log.term(index))
    except (LogCompacted, LogUnavailable):
        return None
    if snapshot is None or not snapshot.membership:
        return None
    try:
        return Membership.decode(snapshot.membership)
    except ProtocolError as error:
        raise SnapshotError(f"snapshot {index} records a damaged membership: {error}") from None


def install_snapshot(state: BrokerState, store: SnapshotStore, index: int, term: int) -> None:
    """InstallSnapshot on a follower: the state becomes the leader's snapshot, just received."""
    snapshot = store.get(index, term)
    if snapshot is None:
        raise SnapshotError(f"the snapshot {index}@{term} to install is not kept here")
    state.load_snapshot(snapshot.data)
    logger.info("snapshot_installed", index=index, term=term, bytes=len(snapshot.data))


async def take_snapshots(
    config: NodeConfig,
    state: BrokerState,
    log: CommitLog,
    applied: AppliedSignal,
    store: SnapshotStore,
    membership_at: Callable[[int], bytes] = lambda index: b"",
    key_index: KeyIndex | None = None,
) -> None:
    """``membership_at``: the group's membership (encoded) at an index, which each snapshot
    records; ``key_index`` is made durable up to it first (``sync_key_index``). Forever: once
    ``snapshot_interval_entries`` entries or ``snapshot_interval_bytes`` of them were applied
    since the last snapshot (and are durable here), snapshot the state and write it in a
    worker thread."""
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
        snapshot = Snapshot(index, log.term(index), state.to_snapshot(), membership_at(index))
        pin = state.lowest_timer_index()
        # The key index and the queues as of the snapshot go to disk before it, durably (the
        # fsyncs in the worker thread, while apply goes on appending to them).
        checkpoint_key_index(key_index)
        state.queues.flush()

        def save(snapshot: Snapshot = snapshot, pin: int | None = pin) -> None:
            fsync_key_index(key_index)
            state.queues.sync()
            store.save(snapshot, pin)
            # And where the log stands: a restart reads only what comes after.
            log.checkpoint()

        try:
            await trio.to_thread.run_sync(save)
        except (OSError, StorageError) as error:
            # A full or failing disk: reported, and tried again one interval later; the log
            # is never trimmed past the last snapshot that was saved.
            logger.warning("snapshot_failed", node=config.node_id, index=index, error=str(error))
        last_index, last_bytes = index, applied.applied_bytes


def checkpoint_key_index(key_index: KeyIndex | None) -> None:
    """Write the key index's checkpoint at what it covers (on the Trio thread: apply appends
    to it there), so that a restart from the snapshot about to be saved finds it that far and
    needs no scan of the log (``fsync_key_index`` makes it durable). A failure only costs a
    rebuild from the log later."""
    if key_index is None:
        return
    try:
        key_index.checkpoint()
    except (OSError, StorageError) as error:
        key_index.fail(error)


def fsync_key_index(key_index: KeyIndex | None) -> None:
    """The key index's journal fsynced (in the worker thread that saves a snapshot)."""
    if key_index is None:
        return
    try:
        key_index.fsync_journal()
    except OSError as error:
        key_index.fail(error)


def take_final_snapshot(
    config: NodeConfig,
    state: BrokerState,
    log: CommitLog,
    store: SnapshotStore,
    membership_at: Callable[[int], bytes] = lambda index: b"",
    key_index: KeyIndex | None = None,
) -> None:
    """On a graceful stop, once nothing applies any more: a snapshot of everything applied (and
    the log's checkpoint with the close), so that the restart applies nothing again. A crash
    replays from the last periodic one instead. Failing is reported, never fatal."""
    index = state.applied_index
    newest = store.indexes()
    if index == 0 or (newest and newest[0] >= index):
        return
    try:
        log.sync()
        if index > log.durable_index():
            return
        snapshot = Snapshot(index, log.term(index), state.to_snapshot(), membership_at(index))
        checkpoint_key_index(key_index)
        fsync_key_index(key_index)
        state.queues.flush()
        state.queues.sync()
        store.save(snapshot, state.lowest_timer_index())
    except (OSError, StorageError, LogCompacted, LogUnavailable) as error:
        logger.warning("final_snapshot_failed", node=config.node_id, error=str(error))
