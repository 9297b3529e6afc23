"""Errors shared by every layer.

Each error says whether retrying can help (``retriable``) and carries what the caller needs to
recover, such as the id of the node believed to lead.
"""

from __future__ import annotations


class DledgerError(Exception):
    """Base class of every error the product raises on purpose."""

    retriable: bool = False


class NotLeader(DledgerError):
    """This replica does not lead its group; ``leader_hint`` names the one believed to (or None)."""

    retriable = True

    def __init__(self, leader_hint: str | None, message: str | None = None) -> None:
        self.leader_hint = leader_hint
        super().__init__(message or f"not the leader; leader hint: {leader_hint}")


class LeadershipTransferInProgress(NotLeader):
    """The leader is handing over to ``leader_hint`` and takes no proposals meanwhile."""

    def __init__(self, target: str) -> None:
        super().__init__(target, f"leadership is being transferred to {target}")


class BadRequest(DledgerError):
    """The caller asked for something invalid; retrying the same request cannot help."""


class StorageError(DledgerError):
    """The disk refused or corrupted data; the replica must not acknowledge anything more."""


class CorruptLog(StorageError):
    """A record on disk failed its checksum or framing check before the tail of the log."""


class CorruptRecord(CorruptLog):
    """A record in ``path`` at byte ``offset`` failed its checksum or framing check."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path} at offset {offset}: {reason}")


class DataDirError(StorageError):
    """``path`` is missing, not a directory, or not a dledger-mq log; nothing was changed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FormatVersionError(DataDirError):
    """The data directory was written in a format version this build cannot read."""

    def __init__(self, path: str, found_version: int, supported_version: int) -> None:
        self.found_version = found_version
        self.supported_version = supported_version
        super().__init__(
            path, f"format version {found_version}; this build reads version {supported_version}"
        )


class DiskFull(StorageError):
    """A write to ``path`` failed for lack of space; nothing of it counts, retry once freed."""

    retriable = True

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: no space left on device")


class FsyncFailed(StorageError):
    """An fsync of ``path`` failed: the page cache may have dropped the data, so the log stops.

    Not retriable: after a failed fsync the kernel may mark the pages clean, and a second fsync
    would "succeed" without the data (PostgreSQL's fsyncgate, 2018). Restart and recover instead.
    """

    def __init__(self, path: str, error_number: int | None) -> None:
        self.path = path
        self.error_number = error_number
        super().__init__(f"{path}: fsync failed (errno {error_number}); the log refuses writes")


class ProtocolError(DledgerError):
    """A peer or client sent bytes that are not a valid frame or message; the link is closed."""


class FrameTooLarge(ProtocolError):
    """A frame announced more bytes than the configured limit."""


class HandshakeRefused(DledgerError):
    """The other side belongs to another cluster or speaks another protocol version."""


class Unavailable(DledgerError):
    """The replica cannot serve right now (starting, stopping, no quorum); try again later."""

    retriable = True
