"""Where the log's acknowledged end was, so that recovery can tell a torn write from rot.

Damage at the end of the last segment is either a write that a crash tore (never acknowledged:
cutting it is right) or rot in a record that was acknowledged (cutting it forgets what this
replica promised its leader: single-replica amnesia, docs/commitlog.md "Recovery"). The bytes
alone cannot say which. So after every write it publishes, the CommitLog appends here the segment
and offset where the published log ends, with the disk's boot id (``Disk.boot_id``), without an
fsync: within one boot the page cache outlives any process, so the newest record is exact, and
damage before it is rot. Across a reboot or power loss only a record fsynced by ``close`` (with
no boot id) is exact; otherwise a cut cannot be judged and the replica recovers as one that may
have lost its tail (``RaftCore``, "recovering").

A record is 60 bytes: magic ``DQLP`` | segment base index u64 | end offset u64 | boot id (36
bytes, ASCII, zero-padded) | CRC32C u32 of the 56 bytes before it. The file is replaced by one
record (atomically) once it holds ``MAX_FILE_BYTES``.
"""

from __future__ import annotations

import posixpath
import struct

import attrs
import structlog
from crc32c import crc32c

from dledger_mq.raft.storage.disk import Disk, DiskFile, read_small_file, write_file_atomically

PUBLISHED_END_FILE_NAME = "published"
_MAGIC = b"DQLP"
_BOOT_ID_BYTES = 36
_BODY = struct.Struct(f"<4sQQ{_BOOT_ID_BYTES}s")
_CHECKSUM = struct.Struct("<I")
RECORD_SIZE = _BODY.size + _CHECKSUM.size
#: About a thousand writes between rewrites of the file.
MAX_FILE_BYTES = 1000 * RECORD_SIZE

_logger = structlog.get_logger("dledger_mq.commitlog")


@attrs.frozen(slots=True)
class PublishedEnd:
    base_index: int
    end_offset: int
    #: ``Disk.boot_id`` when it was written; "" once fsynced (exact after any reboot).
    boot_id: str

    def is_exact_on(self, disk: Disk) -> bool:
        """Nothing published after this record can have been lost with the page cache."""
        current = disk.boot_id()
        return self.boot_id == "" or (current != "" and self.boot_id == current)


def encode_published_end(end: PublishedEnd) -> bytes:
    boot_id = end.boot_id.encode("ascii")[:_BOOT_ID_BYTES]
    body = _BODY.pack(_MAGIC, end.base_index, end.end_offset, boot_id)
    return body + _CHECKSUM.pack(crc32c(body))


def decode_published_end(data: bytes) -> PublishedEnd | None:
    """The record, or None if ``data`` is not an intact one."""
    if len(data) != RECORD_SIZE:
        return None
    body = data[: _BODY.size]
    (checksum,) = _CHECKSUM.unpack_from(data, _BODY.size)
    if crc32c(body) != checksum:
        return None
    magic, base_index, end_offset, boot_id = _BODY.unpack(body)
    if magic != _MAGIC:
        return None
    try:
        text = boot_id.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        return None
    return PublishedEnd(base_index, end_offset, text)


def read_published_end(disk: Disk, directory: str) -> PublishedEnd | None:
    """The newest intact record, or None (no file, or nothing intact in it)."""
    data = read_small_file(
        disk, posixpath.join(directory, PUBLISHED_END_FILE_NAME), 2 * MAX_FILE_BYTES
    )
    if data is None:
        return None
    # The newest first; an append torn by a crash is skipped (it was never acted on), and the
    # records after it, written by the next process, start wherever it ended: found by magic.
    start = data.rfind(_MAGIC)
    while start >= 0:
        end = decode_published_end(data[start : start + RECORD_SIZE])
        if end is not None:
            return end
        start = data.rfind(_MAGIC, 0, start)
    return None


class PublishedEndWriter:
    """Appends a record after each published write; ``close`` makes the last one durable.

    Advisory: if it cannot write, it removes the file (recovery then judges no cut exact, the
    safe side) and stops, rather than fail the log's writes.
    """

    def __init__(self, disk: Disk, directory: str) -> None:
        self._disk = disk
        self._directory = directory
        self._path = posixpath.join(directory, PUBLISHED_END_FILE_NAME)
        self._boot_id = disk.boot_id()
        self._file: DiskFile | None = None
        try:
            self._file = disk.open(self._path, create=True)
        except OSError as error:
            self._give_up(error)

    def record(self, base_index: int, end_offset: int) -> None:
        if self._file is None:
            return
        data = encode_published_end(PublishedEnd(base_index, end_offset, self._boot_id))
        try:
            if self._file.size() >= MAX_FILE_BYTES:
                self._file.close()
                self._file = None
                write_file_atomically(self._disk, self._path, data)
                self._file = self._disk.open(self._path)
            else:
                self._file.append(data)
        except OSError as error:
            self._give_up(error)

    def close(self, base_index: int, end_offset: int) -> None:
        """The log was closed cleanly at this end: the record is exact after any reboot."""
        if self._file is None:
            return
        try:
            self._file.append(encode_published_end(PublishedEnd(base_index, end_offset, "")))
            self._file.fsync()
            self._disk.fsync_directory(self._directory)  # the file itself may be new
        except OSError as error:
            self._give_up(error)
            return
        self._file.close()
        self._file = None

    def abandon(self) -> None:
        """Close without a last record (the log failed, or closed already)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _give_up(self, error: OSError) -> None:
        _logger.warning("commitlog.published_end_failed", file=self._path, error=str(error))
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            if self._disk.exists(self._path):
                self._disk.remove(self._path)
                self._disk.fsync_directory(self._directory)
        except OSError as remove_error:
            _logger.warning(
                "commitlog.published_end_remove_failed", file=self._path, error=str(remove_error)
            )
