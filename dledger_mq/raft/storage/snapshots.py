"""Snapshots of the state machine beside the log: ``snapshots/SNAPSHOT-<index>.snap``.

A snapshot holds the state machine's bytes as of a Raft index (and that entry's term, so that a
snapshot is used only with a log that holds the same entry there). Each file is written
durably (temporary file, fsync, rename, fsync of the directory) and checksummed; the newest that
reads back whole is the one used, and the two newest are kept, so that a snapshot damaged on
disk falls back to the one before. docs/commitlog.md, "Snapshots", has the layout.

A follower receives a leader's snapshot file as it is (InstallSnapshot,
``raft/pure/snapshot_transfer.py``) into ``RECEIVING-<index>-<term>.part``, not fsynced: it is
checked whole (header, checksum, index, term) before it is saved as a snapshot, so a part torn by
a crash is found then, and the transfer starts over.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Callable

import attrs
import structlog
from crc32c import crc32c

from dledger_mq.errors import SnapshotError, StorageError
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable
from dledger_mq.raft.pure.snapshot_transfer import SnapshotInfo
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.disk import Disk, make_directories, write_file_atomically

_logger = structlog.get_logger()

SNAPSHOT_MAGIC = b"DQSN"
#: 2 added the group's membership at the snapshot's index; 1 is still read (no membership).
SNAPSHOT_FORMAT_VERSION = 2
#: magic | format version u32 | index u64 | term u64 | body length u64 | CRC32C of the body u32
_HEADER = struct.Struct("<4sIQQQI")
#: Version 2: the body starts with the membership's length (u32), then the membership (the
#: encoded ``Membership``, empty if unknown), then the state machine's bytes; all checksummed.
_MEMBERSHIP_LENGTH = struct.Struct("<I")
_PREFIX, _SUFFIX = "SNAPSHOT-", ".snap"
_PART_PREFIX, _PART_SUFFIX = "RECEIVING-", ".part"
_INDEX_DIGITS = 20
#: Snapshots kept: the newest, and the one before should the newest be damaged.
KEEP = 2


@attrs.frozen
class Snapshot:
    index: int
    term: int
    data: bytes
    #: The group's membership at ``index`` (``Membership.encode``; empty: not recorded).
    membership: bytes = b""


def snapshot_file_name(index: int) -> str:
    return f"{_PREFIX}{index:0{_INDEX_DIGITS}d}{_SUFFIX}"


def _index_of(name: str) -> int | None:
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    digits = name[len(_PREFIX) : -len(_SUFFIX)]
    return int(digits) if len(digits) == _INDEX_DIGITS and digits.isdigit() else None


def encode_snapshot(snapshot: Snapshot) -> bytes:
    # One copy of the state's bytes, not one per piece joined: a snapshot may hold tens of MB
    # (a million pending timers are 16 MB).
    prefix = _MEMBERSHIP_LENGTH.pack(len(snapshot.membership)) + snapshot.membership
    header = _HEADER.pack(
        SNAPSHOT_MAGIC,
        SNAPSHOT_FORMAT_VERSION,
        snapshot.index,
        snapshot.term,
        len(prefix) + len(snapshot.data),
        crc32c(snapshot.data, crc32c(prefix)),
    )
    return b"".join((header, prefix, snapshot.data))


def decode_snapshot(data: bytes) -> Snapshot:
    """The snapshot ``data`` holds; ``SnapshotError`` if it is cut, damaged or not one."""
    if len(data) < _HEADER.size:
        raise SnapshotError(f"snapshot cut short ({len(data)} bytes)")
    magic, version, index, term, length, checksum = _HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("not a snapshot (bad magic)")
    if version not in (1, SNAPSHOT_FORMAT_VERSION):
        raise SnapshotError(
            f"snapshot format version {version}; this build reads 1 to {SNAPSHOT_FORMAT_VERSION}"
        )
    body = data[_HEADER.size :]
    if len(body) != length:
        raise SnapshotError(f"snapshot body of {len(body)} bytes, {length} announced")
    if crc32c(body) != checksum:
        raise SnapshotError("snapshot checksum mismatch")
    if version == 1:
        return Snapshot(index, term, body)
    if len(body) < _MEMBERSHIP_LENGTH.size:
        raise SnapshotError("snapshot body too short for its membership")
    (membership_length,) = _MEMBERSHIP_LENGTH.unpack_from(body)
    start = _MEMBERSHIP_LENGTH.size
    if start + membership_length > len(body):
        raise SnapshotError(f"snapshot membership of {membership_length} bytes overruns its body")
    membership = body[start : start + membership_length]
    return Snapshot(index, term, body[start + membership_length :], membership)


def _part_file_name(index: int, term: int) -> str:
    return f"{_PART_PREFIX}{index:0{_INDEX_DIGITS}d}-{term:0{_INDEX_DIGITS}d}{_PART_SUFFIX}"


class SnapshotStore:
    """A replica's snapshot files; also what InstallSnapshot reads and writes
    (``SnapshotFiles``)."""

    def __init__(self, disk: Disk, directory: str) -> None:
        self.disk = disk
        self.directory = directory
        #: The lowest log index a follower must get as an entry, not inside a snapshot (the
        #: broker's oldest pending timer, whose message the log holds); None: no such index.
        #: Asked on the event loop's thread only.
        self.pin: Callable[[], int | None] = lambda: None

    # -- InstallSnapshot -----------------------------------------------------------------------

    def newest(self) -> SnapshotInfo | None:
        """The snapshot to send a follower: the newest, or with a ``pin``, the newest from
        before it (``save`` keeps one), so that the follower gets the pinned entries."""
        pin = self.pin()
        snapshot = None
        if pin is not None:
            for index in self.indexes():
                if index < pin:
                    snapshot = self._read(index)
                    if snapshot is not None:
                        break
        if snapshot is None:
            snapshot = self.latest()
        if snapshot is None:
            return None
        return SnapshotInfo(snapshot.index, snapshot.term, len(encode_snapshot(snapshot)))

    def read_chunk(self, index: int, offset: int, max_bytes: int) -> bytes | None:
        path = posixpath.join(self.directory, snapshot_file_name(index))
        try:
            file = self.disk.open(path)
        except OSError:
            return None  # deleted since: a newer one took its place
        try:
            return file.read(offset, max(0, min(max_bytes, file.size() - offset)))
        finally:
            file.close()

    def received(self, index: int, term: int) -> int:
        path = posixpath.join(self.directory, _part_file_name(index, term))
        if not self.disk.exists(path):
            return 0
        file = self.disk.open(path)
        try:
            return file.size()
        finally:
            file.close()

    def receive(self, index: int, term: int, offset: int, data: bytes) -> None:
        name = _part_file_name(index, term)
        make_directories(self.disk, self.directory)
        if offset == 0:
            for other in self.disk.list_directory(self.directory):
                if other.startswith(_PART_PREFIX) and other != name:
                    self.disk.remove(posixpath.join(self.directory, other))
        path = posixpath.join(self.directory, name)
        file = self.disk.open(path, create=True, truncate=offset == 0)
        try:
            if file.size() != offset:
                raise SnapshotError(f"{path}: {file.size()} bytes held, a chunk at {offset}")
            file.append(data)
        finally:
            file.close()

    def finish_receiving(self, index: int, term: int, total_bytes: int) -> bytes | None:
        path = posixpath.join(self.directory, _part_file_name(index, term))
        data = self._read_whole(path)
        try:
            snapshot = decode_snapshot(data)
            if (snapshot.index, snapshot.term, len(data)) != (index, term, total_bytes):
                raise SnapshotError(
                    f"received {snapshot.index}@{snapshot.term} of {len(data)} bytes, "
                    f"announced {index}@{term} of {total_bytes}"
                )
        except SnapshotError as error:
            _logger.warning("snapshot_received_unusable", path=path, reason=error.reason)
            self.disk.remove(path)
            return None
        self.save(snapshot)
        self.disk.remove(path)
        return snapshot.membership

    def indexes(self) -> list[int]:
        """The indexes of the snapshot files present, newest first."""
        if not self.disk.exists(self.directory):
            return []
        found = (_index_of(name) for name in self.disk.list_directory(self.directory))
        return sorted((index for index in found if index is not None), reverse=True)

    def save(self, snapshot: Snapshot, pin: int | None = None) -> None:
        """Write ``snapshot`` durably, then delete all but the ``KEEP`` newest and, with a
        ``pin`` (see ``SnapshotStore.pin``, as of ``snapshot``), the newest before it: the log
        is kept from there (``trim_floor``) and a follower is sent that one."""
        make_directories(self.disk, self.directory)
        path = posixpath.join(self.directory, snapshot_file_name(snapshot.index))
        write_file_atomically(self.disk, path, encode_snapshot(snapshot))
        indexes = self.indexes()
        kept = set(indexes[:KEEP])
        if pin is not None:
            kept.update([index for index in indexes if index < pin][:1])
        for index in indexes:
            if index not in kept:
                self.disk.remove(posixpath.join(self.directory, snapshot_file_name(index)))
        _logger.info(
            "snapshot_saved", index=snapshot.index, term=snapshot.term, bytes=len(snapshot.data)
        )

    def _read_whole(self, path: str) -> bytes:
        file = self.disk.open(path)
        try:
            return file.read(0, file.size())
        finally:
            file.close()

    def latest(self) -> Snapshot | None:
        """The newest snapshot that reads back whole (a damaged one is reported and skipped),
        or None."""
        for index in self.indexes():
            snapshot = self._read(index)
            if snapshot is not None:
                return snapshot
        return None

    def get(self, index: int, term: int) -> Snapshot | None:
        """The snapshot (index, term) if it is kept and reads back whole, else None. An install
        asks for its own: a newer one may have been received meanwhile (two transfers that
        overlapped), and the core installs them in order."""
        if index not in self.indexes():
            return None
        snapshot = self._read(index)
        return snapshot if snapshot is not None and snapshot.term == term else None

    def _read(self, index: int) -> Snapshot | None:
        path = posixpath.join(self.directory, snapshot_file_name(index))
        data = self._read_whole(path)
        try:
            snapshot = decode_snapshot(data)
        except SnapshotError as error:
            _logger.warning("snapshot_unreadable", path=path, reason=error.reason)
            return None
        if snapshot.index != index:
            _logger.warning("snapshot_unreadable", path=path, reason="index differs from name")
            return None
        return snapshot


def log_holds(log: CommitLog, index: int, term: int) -> bool:
    """The log holds entry ``index`` with ``term`` (or has it just before its first entry)."""
    if not log.first_index() - 1 <= index <= log.last_index():
        return False
    try:
        return log.term(index) == term
    except (LogCompacted, LogUnavailable):
        return False


def start_from_snapshot(log: CommitLog, store: SnapshotStore) -> tuple[Snapshot | None, bool]:
    """The snapshot a starting replica's state machine begins from (None: the log's start),
    with its log made to follow it, and whether that took a reset of the log (the snapshot is a
    leader's: what the replica derived locally before it is not of it).

    The newest snapshot is used if the log holds its entry. One the log does not hold is a
    leader's, received whole, whose install a crash interrupted (or one kept after the log was
    lost): its state was committed, so the log is reset to start after it, as the install would
    have. ``StorageError`` if the log was trimmed past every snapshot (nothing can rebuild it).
    """
    snapshot = store.latest()
    if snapshot is None:
        if log.first_index() > 1:
            raise StorageError(
                f"{log.directory}: the log starts at {log.first_index()} and no snapshot is left"
            )
        return None, False
    if log_holds(log, snapshot.index, snapshot.term):
        return snapshot, False
    if snapshot.index < log.first_index() - 1:
        raise StorageError(
            f"{log.directory}: the log starts at {log.first_index()}, after the newest "
            f"snapshot {snapshot.index}"
        )
    _logger.warning(
        "snapshot_install_finished",
        index=snapshot.index,
        term=snapshot.term,
        log_last_index=log.last_index(),
    )
    log.reset_to_snapshot(snapshot.index, snapshot.term)
    return snapshot, True


def trim_floor(store: SnapshotStore, pin: int | None = None) -> int:
    """The first index a log must keep: the entry after the oldest snapshot kept (so that the
    one before the newest can still be used should the newest be damaged); 1 with none; and
    never past ``pin`` (see ``SnapshotStore.pin``)."""
    indexes = store.indexes()
    floor = min(indexes) + 1 if indexes else 1
    return floor if pin is None else min(floor, pin)
