"""Snapshots of the state machine beside the log: ``snapshots/SNAPSHOT-<index>.snap``.

A snapshot holds the state machine's bytes as of a Raft index (and that entry's term, so that a
snapshot is used only with a log that holds the same entry there). Each file is written
durably (temporary file, fsync, rename, fsync of the directory) and checksummed; the newest that
reads back whole is the one used, and the two newest are kept, so that a snapshot damaged on
disk falls back to the one before. docs/commitlog.md, "Snapshots", has the layout.
"""

from __future__ import annotations

import posixpath
import struct

import attrs
import structlog
from crc32c import crc32c

from dledger_mq.errors import SnapshotError
from dledger_mq.raft.storage.disk import Disk, make_directories, write_file_atomically

_logger = structlog.get_logger()

SNAPSHOT_MAGIC = b"DQSN"
SNAPSHOT_FORMAT_VERSION = 1
#: magic | format version u32 | index u64 | term u64 | body length u64 | CRC32C of the body u32
_HEADER = struct.Struct("<4sIQQQI")
_PREFIX, _SUFFIX = "SNAPSHOT-", ".snap"
_INDEX_DIGITS = 20
#: Snapshots kept: the newest, and the one before should the newest be damaged.
KEEP = 2


@attrs.frozen
class Snapshot:
    index: int
    term: int
    data: bytes


def snapshot_file_name(index: int) -> str:
    return f"{_PREFIX}{index:0{_INDEX_DIGITS}d}{_SUFFIX}"


def _index_of(name: str) -> int | None:
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    digits = name[len(_PREFIX) : -len(_SUFFIX)]
    return int(digits) if len(digits) == _INDEX_DIGITS and digits.isdigit() else None


def encode_snapshot(snapshot: Snapshot) -> bytes:
    header = _HEADER.pack(
        SNAPSHOT_MAGIC,
        SNAPSHOT_FORMAT_VERSION,
        snapshot.index,
        snapshot.term,
        len(snapshot.data),
        crc32c(snapshot.data),
    )
    return header + snapshot.data


def decode_snapshot(data: bytes) -> Snapshot:
    """The snapshot ``data`` holds; ``SnapshotError`` if it is cut, damaged or not one."""
    if len(data) < _HEADER.size:
        raise SnapshotError(f"snapshot cut short ({len(data)} bytes)")
    magic, version, index, term, length, checksum = _HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("not a snapshot (bad magic)")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot format version {version}; this build reads {SNAPSHOT_FORMAT_VERSION}"
        )
    body = data[_HEADER.size :]
    if len(body) != length:
        raise SnapshotError(f"snapshot body of {len(body)} bytes, {length} announced")
    if crc32c(body) != checksum:
        raise SnapshotError("snapshot checksum mismatch")
    return Snapshot(index, term, body)


class SnapshotStore:
    def __init__(self, disk: Disk, directory: str) -> None:
        self.disk = disk
        self.directory = directory

    def indexes(self) -> list[int]:
        """The indexes of the snapshot files present, newest first."""
        if not self.disk.exists(self.directory):
            return []
        found = (_index_of(name) for name in self.disk.list_directory(self.directory))
        return sorted((index for index in found if index is not None), reverse=True)

    def save(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` durably, then delete all but the ``KEEP`` newest."""
        make_directories(self.disk, self.directory)
        path = posixpath.join(self.directory, snapshot_file_name(snapshot.index))
        write_file_atomically(self.disk, path, encode_snapshot(snapshot))
        for index in self.indexes()[KEEP:]:
            self.disk.remove(posixpath.join(self.directory, snapshot_file_name(index)))
        _logger.info(
            "snapshot_saved", index=snapshot.index, term=snapshot.term, bytes=len(snapshot.data)
        )

    def latest(self) -> Snapshot | None:
        """The newest snapshot that reads back whole (a damaged one is reported and skipped),
        or None."""
        for index in self.indexes():
            path = posixpath.join(self.directory, snapshot_file_name(index))
            file = self.disk.open(path)
            try:
                data = file.read(0, file.size())
            finally:
                file.close()
            try:
                snapshot = decode_snapshot(data)
            except SnapshotError as error:
                _logger.warning("snapshot_unreadable", path=path, reason=error.reason)
                continue
            if snapshot.index != index:
                _logger.warning("snapshot_unreadable", path=path, reason="index differs from name")
                continue
            return snapshot
        return None
