"""A node's data directory: where its log lives, whose it is, and how it is made.

A voting member's log is made only on purpose: by ``dledger-mq node --init`` or by the first
``cluster up`` of a folder (when it writes the node's config). A node that finds its log
missing (a replaced disk, a deleted folder) makes a *recovering* one instead: it follows a
leader and takes its entries but does not vote until that leader has caught it up
(``RaftCore``), because an empty replica that votes can elect a leader that lacks entries it
had acknowledged (amnesia), and the committed entries would be lost. A log that is damaged
(its meta file gone, records left) or another node's is refused.
"""

from __future__ import annotations

import posixpath

from dledger_mq.errors import DataDirError
from dledger_mq.node.config import NodeConfig
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.commitlog_format import META_FILE_NAME, LogIdentity
from dledger_mq.raft.storage.disk import Disk, OsDisk

#: What a recovering node says when it starts (docs/operations.md, "A lost data directory").
RECOVERING_HINT = (
    "this node has no log of its own yet: it does not vote until a leader has caught it up; "
    "the nodes of a new cluster need `dledger-mq node --init` once "
    "(docs/operations.md, 'A lost data directory')"
)


def log_directory(config: NodeConfig) -> str:
    return posixpath.join(config.data_dir, "raft", config.group)


def identity_of(config: NodeConfig) -> LogIdentity:
    return LogIdentity(config.cluster_id, config.group, config.node_id)


def has_log(config: NodeConfig, disk: Disk | None = None) -> bool:
    """Whether this node's log was made (its meta file exists, complete or not)."""
    return (disk or OsDisk()).exists(posixpath.join(log_directory(config), META_FILE_NAME))


def initialise_log(config: NodeConfig, disk: Disk | None = None) -> None:
    """Make this node's empty log, recording its identity; ``DataDirError`` if there is one."""
    disk = disk or OsDisk()
    directory = log_directory(config)
    if has_log(config, disk):
        raise DataDirError(
            directory, "already holds a log: start the node without --init (it keeps its log)"
        )
    CommitLog.open(disk, directory, identity=identity_of(config), create=True).close()
