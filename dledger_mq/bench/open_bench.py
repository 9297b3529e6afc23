"""``dledger-mq bench open``: how long opening a CommitLog of many entries takes, with the index
files and checkpoint a clean close leaves (what an open trusts) and without them (every record
read and checked, as before they existed: what a crash before any checkpoint costs).

It writes ``--entries`` entries of ``--size`` bytes (``async`` flush, batches of 4,096), closes
the log, opens it ``--runs`` times, then removes the index files and opens it once more.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.location_index import INDEX_SUFFIX

_BATCH = 4096


def _open_seconds(directory: str, entries: int) -> float:
    started = time.perf_counter()
    log = CommitLog.open(OsDisk(), directory)
    seconds = time.perf_counter() - started
    if log.last_index() != entries:
        raise RuntimeError(f"opened {log.last_index()} entries, wrote {entries}")
    # Not closed: a close would write a checkpoint again. The files close with the process.
    return seconds


def run(directory: str, entries: int, size: int, runs: int, echo: Callable[[str], None]) -> str:
    path = os.path.join(directory, "log")
    log = CommitLog.open(OsDisk(), path, flush_policy=FlushPolicy.ASYNC)
    body = b"x" * size
    next_index = 1
    while next_index <= entries:
        last = min(entries, next_index + _BATCH - 1)
        log.append([Entry(index=i, term=1, data=body) for i in range(next_index, last + 1)])
        next_index = last + 1
        if next_index % (1 << 20) < _BATCH:
            echo(f"  wrote {next_index - 1:,} of {entries:,}")
    log.close()
    with_index = [_open_seconds(path, entries) for _ in range(runs)]
    for index_file in Path(path).glob(f"*{INDEX_SUFFIX}"):
        index_file.unlink()
    echo("  opening without index files (every record is read)")
    without = _open_seconds(path, entries)
    return "\n".join(
        [
            "| entries | entry bytes | open, index files + checkpoint (min / median / max) "
            "| open, every record read |",
            "|---:|---:|---:|---:|",
            f"| {entries:,} | {size} | {min(with_index):.2f} / "
            f"{statistics.median(with_index):.2f} / {max(with_index):.2f} s | {without:.2f} s |",
        ]
    )
