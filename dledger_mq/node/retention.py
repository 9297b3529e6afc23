"""Retention: the node deletes whole log segments that no one needs any more, oldest first.

A segment may go once the oldest snapshot kept covers all of it (``trim_floor``), and then only
if it is older than ``retention_hours``, or the log is larger than ``retention_bytes``, or the
volume of the data directory is ``disk_delete_percent`` full. A follower whose next entries went
gets the leader's snapshot (InstallSnapshot); a consumer whose offset went reads on from the first
message kept. At ``disk_refuse_percent`` sends are refused with ``DiskFull`` until space is back;
consuming, administration and elections go on.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from typing import NamedTuple

import attrs
import structlog
import trio

from dledger_mq.broker.records import SLOT_BITS
from dledger_mq.broker.service import BrokerService
from dledger_mq.errors import StorageError
from dledger_mq.node.config import NodeConfig
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.snapshots import SnapshotStore, trim_floor

logger = structlog.get_logger()


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


DiskUsageProbe = Callable[[str], DiskUsage]


def _disk_usage(path: str) -> DiskUsage:
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.used, usage.free)


@attrs.frozen
class RetentionPass:
    first_index_before: int
    first_index: int
    log_bytes: int
    #: Percent of the volume in use after the pass.
    disk_percent: float
    refuse_sends: bool


def enforce_retention(
    config: NodeConfig,
    log: CommitLog,
    snapshots: SnapshotStore,
    *,
    now_seconds: float | None = None,
    disk_usage: DiskUsageProbe = _disk_usage,
    pin: int | None = None,
) -> RetentionPass:
    """One pass (blocking: run it in a worker thread). ``pin``: the lowest index a pending
    timer's message is at, which stays (even on a full disk: it was acknowledged)."""
    floor = trim_floor(snapshots, pin)
    before = log.first_index()
    if config.retention_hours > 0:
        now = time.time() if now_seconds is None else now_seconds
        log.trim_by_age(config.retention_hours * 3600, now, floor)
    if config.retention_bytes > 0:
        log.trim_by_size(config.retention_bytes, floor)
    usage = disk_usage(log.directory)
    if usage.total > 0 and usage.used * 100 >= usage.total * config.disk_delete_percent:
        excess = usage.used - usage.total * config.disk_delete_percent // 100
        log.trim_by_size(max(0, log.size_bytes() - excess), floor)
        usage = disk_usage(log.directory)
    percent = 100 * usage.used / usage.total if usage.total > 0 else 0.0
    return RetentionPass(
        first_index_before=before,
        first_index=log.first_index(),
        log_bytes=log.size_bytes(),
        disk_percent=percent,
        refuse_sends=percent >= config.disk_refuse_percent,
    )


async def keep_retention(
    config: NodeConfig,
    log: CommitLog,
    snapshots: SnapshotStore,
    broker: BrokerService,
    *,
    disk_usage: DiskUsageProbe = _disk_usage,
) -> None:
    """Forever, every ``retention_check_ms``: a retention pass; sends are refused while the
    volume is past ``disk_refuse_percent``."""
    log_events = logger.bind(node=config.node_id, group=config.group)
    while True:
        await trio.sleep(config.retention_check_ms / 1000)
        pin = broker.state.lowest_timer_index()
        outcome = await trio.to_thread.run_sync(
            functools.partial(
                enforce_retention, config, log, snapshots, disk_usage=disk_usage, pin=pin
            )
        )
        # The consume queues' files that only point below the log's start go too.
        try:
            broker.state.queues.trim(outcome.first_index << SLOT_BITS)
        except (OSError, StorageError) as error:
            log_events.warning("consume_queue_trim_failed", error=str(error))
        # And the key index's segments that name only deleted entries.
        key_index = broker.queries.key_index
        if key_index is not None:
            try:
                key_index.trim(outcome.first_index)
            except (OSError, StorageError) as error:
                key_index.fail(error)
        if outcome.first_index > outcome.first_index_before:
            log_events.info(
                "log_trimmed",
                first_index=outcome.first_index,
                entries_removed=outcome.first_index - outcome.first_index_before,
                log_bytes=outcome.log_bytes,
            )
        refusing = broker.refuse_sends_path is not None
        if outcome.refuse_sends and not refusing:
            log_events.error(
                "sends_refused_disk_full",
                disk_percent=round(outcome.disk_percent, 1),
                limit_percent=config.disk_refuse_percent,
            )
            broker.refuse_sends_path = log.directory
        elif refusing and not outcome.refuse_sends:
            log_events.info("sends_accepted_again", disk_percent=round(outcome.disk_percent, 1))
            broker.refuse_sends_path = None
