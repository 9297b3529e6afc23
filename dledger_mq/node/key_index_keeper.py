"""Keeps a node's key index (``broker/key_index.py``) caught up with what the replica applied.

While the index is live, ``apply`` feeds it. It is not live after a restart that found it
behind the restored state (its files were lost, or a leader's snapshot was installed), nor once
it was found damaged: then this task drops a damaged index's files and indexes the log's
entries, from the first one the index lacks up to the applied index, in chunks on the Trio
thread (so that entries applied meanwhile are never missed or indexed twice: the step that
reaches the applied index also makes the index live, with no await in between). Queries are
refused meanwhile (``Unavailable``), never answered from a partial index.
"""

from __future__ import annotations

import posixpath

import structlog
import trio

from dledger_mq.broker.key_index import KeyIndex
from dledger_mq.broker.service import AppliedSignal
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import StorageError
from dledger_mq.node.config import NodeConfig
from dledger_mq.node.data_dir import log_directory
from dledger_mq.raft.pure.log_store import LogCompacted, LogStore, LogUnavailable
from dledger_mq.raft.storage.commitlog_format import KEY_INDEX_DIRECTORY_NAME
from dledger_mq.raft.storage.disk import OsDisk

logger = structlog.get_logger()

#: Entries, and bytes of them, indexed between two yields to the event loop.
CATCH_UP_ENTRIES = 1024
CATCH_UP_BYTES = 1 << 20
#: How long the keeper waits after a failed disk operation before it tries again.
RETRY_SECONDS = 1.0


def open_key_index(config: NodeConfig, state: BrokerState) -> KeyIndex:
    """This node's key index, live at once when it reaches the restored state's index (the
    common case: it was synced with the snapshot the state comes from)."""
    index = KeyIndex.open(OsDisk(), posixpath.join(log_directory(config), KEY_INDEX_DIRECTORY_NAME))
    if index.covered_index >= state.applied_index and not index.damaged:
        index.live = True
    else:
        logger.info(
            "key_index_behind",
            node=config.node_id,
            covered_index=index.covered_index,
            applied_index=state.applied_index,
        )
    return index


def catch_up_once(index: KeyIndex, state: BrokerState, log: LogStore) -> None:
    """Index one chunk of the entries the index lacks (and go live if that was the last)."""
    target = state.applied_index
    start = max(index.covered_index + 1, log.first_index())
    index.skip_to(start)
    if start > target:
        index.catch_up((), target)
        return
    stop = min(target + 1, start + CATCH_UP_ENTRIES)
    try:
        entries = log.entries(start, stop, CATCH_UP_BYTES)
    except (LogCompacted, LogUnavailable):
        return  # retention trimmed it meanwhile: the next round starts at the new first entry
    index.catch_up(((entry.index, entry.data) for entry in entries), target)


async def keep_key_index(
    index: KeyIndex, state: BrokerState, log: LogStore, applied: AppliedSignal
) -> None:
    """Forever: while the index is not live, rebuild or catch it up (module docstring)."""
    while True:
        if index.live:
            with trio.move_on_after(RETRY_SECONDS):
                await applied.wait()
            continue
        try:
            if index.damaged:
                logger.warning("key_index_rebuilding", applied_index=state.applied_index)
                index.reset()
            catch_up_once(index, state, log)
        except (OSError, StorageError) as error:
            index.fail(error)
            await trio.sleep(RETRY_SECONDS)
            continue
        await trio.sleep(0)  # let requests and applies run between chunks
