"""Consume queues: per (topic, queue id), the place in the log of every message, by offset.

A queue is derived state (``BrokerState.apply`` appends to it), but it is not kept in memory:
memory must not grow with history. ``FileQueueStore`` keeps each queue in files of fixed-width
entries, as RocketMQ's ConsumeQueue does; only a short tail of entries not written yet (at most
``FLUSH_ENTRIES``) is in memory. ``MemoryQueueStore`` is the same in memory, for tests and tools.

Entry (16 bytes, little-endian): position i64 (``raft_index << SLOT_BITS | slot``), tag code u32,
CRC32C u32 of those 12 bytes seeded with the entry's offset (so a misplaced entry fails too).
Files: ``<directory>/t-<topic>/<queue id>/<first offset:020>.cq``, ``ENTRIES_PER_FILE`` each.

Offsets are replicated (every replica gives a message the same offset); what a replica *holds*
of a queue is local: ``base_offset`` is its first offset with a known place. It is 0 unless the
queue's files were dropped for a leader's snapshot (InstallSnapshot: the offsets before it are in
no log here) or retention deleted whole files below the log's first entry.

Durability: entries are written (not fsynced) as the tail fills; ``flush`` writes the tails and
``sync`` fsyncs them, which the node does before saving a snapshot, so a snapshot's queues are
on disk whole. Opened for a snapshot (``open_queue``), a queue keeps its entries up to the
snapshot's ``max_offset`` and drops those after (the log's entries after the snapshot are applied
again); a queue whose files hold less than that is damage (``CorruptRecord``). Reads check every
entry's checksum and that positions increase: rot is reported, never served.
"""

from __future__ import annotations

import bisect
import posixpath
import struct
from array import array
from collections.abc import Sequence
from typing import Protocol

import structlog
from crc32c import crc32c

from dledger_mq.errors import CorruptRecord, FsyncFailed
from dledger_mq.raft.storage.disk import Disk, make_directories

_logger = structlog.get_logger()

_ENTRY = struct.Struct("<qI")
_CHECKSUM = struct.Struct("<I")
ENTRY_BYTES = _ENTRY.size + _CHECKSUM.size  # 16
#: Entries per file (4 MiB): whole files are what retention deletes.
ENTRIES_PER_FILE = 1 << 18
#: Entries a queue holds in memory before it writes them to its file.
FLUSH_ENTRIES = 256
_SUFFIX = ".cq"
_DIGITS = 20


class ConsumeQueue(Protocol):
    @property
    def base_offset(self) -> int:
        """The first offset whose entry this replica holds."""
        ...

    @property
    def max_offset(self) -> int:
        """The offset the next message gets."""
        ...

    def append(self, position: int, code: int) -> int:
        """Add the next entry; returns its offset."""
        ...

    def read(self, start: int, stop: int) -> tuple[Sequence[int], Sequence[int]]:
        """Positions and tag codes of offsets ``[start, stop)``, within what is held."""
        ...

    def find(self, position: int) -> int:
        """The first held offset whose position is at least ``position`` (``max_offset`` if
        none)."""
        ...


class QueueStore(Protocol):
    def new_queue(self, topic: str, queue_id: int) -> ConsumeQueue:
        """An empty queue (any entries left from an earlier topic of that name go)."""
        ...

    def open_queue(self, topic: str, queue_id: int, max_offset: int) -> ConsumeQueue:
        """The queue as of a snapshot in which it ended at ``max_offset``."""
        ...

    def drop_topic(self, topic: str) -> None: ...

    def clear(self) -> None:
        """Every queue's entries go (the state is about to be a leader's snapshot)."""
        ...

    def flush(self) -> None:
        """Write every queue's tail (not durably)."""
        ...

    def sync(self) -> None:
        """Make what ``flush`` wrote durable (blocking: a worker thread's)."""
        ...

    def trim(self, below_position: int) -> None:
        """Retention: drop what only places below ``below_position`` (the log's start)."""
        ...


# -- in memory ------------------------------------------------------------------------------------


class MemoryConsumeQueue:
    __slots__ = ("_base", "_codes", "_positions")

    def __init__(self, base: int = 0) -> None:
        self._base = base
        self._positions = array("q")
        self._codes = array("I")

    @property
    def base_offset(self) -> int:
        return self._base

    @property
    def max_offset(self) -> int:
        return self._base + len(self._positions)

    def append(self, position: int, code: int) -> int:
        self._positions.append(position)
        self._codes.append(code)
        return self._base + len(self._positions) - 1

    def read(self, start: int, stop: int) -> tuple[Sequence[int], Sequence[int]]:
        low, high = start - self._base, stop - self._base
        return self._positions[low:high], self._codes[low:high]

    def find(self, position: int) -> int:
        return self._base + bisect.bisect_left(self._positions, position)

    def truncate(self, max_offset: int) -> None:
        del self._positions[max_offset - self._base :]
        del self._codes[max_offset - self._base :]

    def drop_below(self, offset: int) -> None:
        count = offset - self._base
        if count > 0:
            del self._positions[:count]
            del self._codes[:count]
            self._base = offset


class MemoryQueueStore:
    """Queues in memory, outliving a ``BrokerState`` as files do (a snapshot reopens them)."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, int], MemoryConsumeQueue] = {}

    def new_queue(self, topic: str, queue_id: int) -> MemoryConsumeQueue:
        queue = self._queues[(topic, queue_id)] = MemoryConsumeQueue()
        return queue

    def open_queue(self, topic: str, queue_id: int, max_offset: int) -> MemoryConsumeQueue:
        queue = self._queues.get((topic, queue_id))
        if queue is None or not queue.base_offset <= max_offset <= queue.max_offset:
            queue = self._queues[(topic, queue_id)] = MemoryConsumeQueue(max_offset)
        queue.truncate(max_offset)
        return queue

    def drop_topic(self, topic: str) -> None:
        for key in [key for key in self._queues if key[0] == topic]:
            del self._queues[key]

    def clear(self) -> None:
        self._queues.clear()

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def trim(self, below_position: int) -> None:
        for queue in self._queues.values():
            queue.drop_below(queue.find(below_position))


# -- in files -------------------------------------------------------------------------------------


def _file_name(first_offset: int) -> str:
    return f"{first_offset:0{_DIGITS}d}{_SUFFIX}"


def _first_offset_of(name: str) -> int | None:
    digits = name[: -len(_SUFFIX)]
    if name.endswith(_SUFFIX) and len(digits) == _DIGITS and digits.isdigit():
        return int(digits)
    return None


def encode_entries(first_offset: int, positions: Sequence[int], codes: Sequence[int]) -> bytes:
    parts = []
    pack, pack_checksum = _ENTRY.pack, _CHECKSUM.pack
    for number, (position, code) in enumerate(zip(positions, codes, strict=True)):
        entry = pack(position, code)
        parts.append(entry)
        parts.append(pack_checksum(crc32c(entry, (first_offset + number) & 0xFFFFFFFF)))
    return b"".join(parts)


class FileConsumeQueue:
    """One queue in files (module docstring); the store makes and opens them."""

    def __init__(
        self,
        disk: Disk,
        directory: str,
        entries_per_file: int = ENTRIES_PER_FILE,
        flush_entries: int = FLUSH_ENTRIES,
    ) -> None:
        self._disk = disk
        self._directory = directory
        self._entries_per_file = entries_per_file
        self._flush_entries = flush_entries
        #: First offsets of the files, ascending; each holds consecutive entries from there.
        self._files: list[int] = []
        #: Offsets before this are in files; the tail holds those from here on.
        self._written_end = 0
        self._tail_positions = array("q")
        self._tail_codes = array("I")
        self._base = 0
        #: (position, offset) of the last ``find`` answered from the files.
        self._found: tuple[int, int] | None = None
        #: Files written to since the last ``sync``, and whether one was created.
        self.dirty: set[str] = set()
        self.created_files = False

    # -- opening ---------------------------------------------------------------------------

    def restart_at(self, offset: int) -> None:
        """Hold nothing; the next entry gets ``offset``. Its files go, durably: entries of
        another history must not come back after a crash."""
        for first in self._files:
            self._remove(first)
        if self._files:
            self._disk.fsync_directory(self._directory)
        self._files = []
        self._written_end = self._base = offset
        self._found = None
        self._tail_positions = array("q")
        self._tail_codes = array("I")

    def _list_files(self) -> list[int]:
        names = self._disk.list_directory(self._directory) if self._exists() else []
        return sorted(f for f in (_first_offset_of(n) for n in names) if f is not None)

    def load(self, max_offset: int) -> None:
        """Take the files as they are, up to ``max_offset`` (see the module docstring)."""
        firsts = self._list_files()
        if not firsts:
            if max_offset > 0:
                _logger.info(
                    "consume_queue_starts_empty", directory=self._directory, offset=max_offset
                )
            self.restart_at(max_offset)
            return
        self._files = firsts
        last = firsts[-1]
        end = last + self._size(last) // ENTRY_BYTES
        if end < max_offset or firsts[0] > max_offset:
            raise CorruptRecord(
                self._directory,
                0,
                f"consume queue files hold offsets {firsts[0]}..{end}, the snapshot needs "
                f"them up to {max_offset}",
            )
        # Entries after the snapshot go: the log's entries after it are applied again.
        while len(self._files) > 1 and self._files[-1] >= max_offset:
            self._remove(self._files.pop())
        first = self._files[-1]
        path = self._path(first)
        file = self._disk.open(path)
        try:
            if file.size() != (max_offset - first) * ENTRY_BYTES:
                file.truncate((max_offset - first) * ENTRY_BYTES)
                file.fsync()
        finally:
            file.close()
        self._written_end = max_offset
        self._base = self._files[0]

    # -- the queue -------------------------------------------------------------------------

    @property
    def base_offset(self) -> int:
        return self._base

    @property
    def max_offset(self) -> int:
        return self._written_end + len(self._tail_positions)

    def append(self, position: int, code: int) -> int:
        self._tail_positions.append(position)
        self._tail_codes.append(code)
        if len(self._tail_positions) >= self._flush_entries:
            try:
                self.flush()
            except OSError as error:
                # Apply must not fail for a disk (a full one, say): the entries stay in memory
                # and the next flush writes them (a snapshot's flush fails loudly instead).
                _logger.warning(
                    "consume_queue_not_written", directory=self._directory, error=str(error)
                )
        return self._written_end + len(self._tail_positions) - 1

    def read(self, start: int, stop: int) -> tuple[Sequence[int], Sequence[int]]:
        start, stop = max(start, self._base), min(stop, self.max_offset)
        if start >= stop:
            return array("q"), array("I")
        positions, codes = array("q"), array("I")
        if start < self._written_end:
            self._read_files(start, min(stop, self._written_end), positions, codes)
        if stop > self._written_end:
            low = max(start, self._written_end) - self._written_end
            positions.extend(self._tail_positions[low : stop - self._written_end])
            codes.extend(self._tail_codes[low : stop - self._written_end])
        return positions, codes

    def find(self, position: int) -> int:
        tail = self._tail_positions
        if tail and tail[0] <= position:
            return self._written_end + bisect.bisect_left(tail, position)
        # Every pull asks for the same position (the log's first index) until retention moves
        # it: an answer inside the files never changes, so the binary search over them (a read
        # per step) is made once per position.
        if self._found is not None and self._found[0] == position:
            return max(self._found[1], self._base)
        low, high = self._base, self._written_end
        while low < high:
            middle = (low + high) // 2
            [found], _ = self.read(middle, middle + 1)
            if found < position:
                low = middle + 1
            else:
                high = middle
        if low < self._written_end:
            self._found = (position, low)
        return low

    def flush(self) -> None:
        """Write the tail to the files (not fsynced; ``sync``)."""
        while self._tail_positions:
            if not self._files or self._written_end - self._files[-1] >= self._entries_per_file:
                make_directories(self._disk, self._directory)
                self._files.append(self._written_end)
                self.created_files = True
            first = self._files[-1]
            room = self._entries_per_file - (self._written_end - first)
            count = min(room, len(self._tail_positions))
            data = encode_entries(
                self._written_end, self._tail_positions[:count], self._tail_codes[:count]
            )
            path = self._path(first)
            file = self._disk.open(path, create=True)
            try:
                if file.size() != (self._written_end - first) * ENTRY_BYTES:
                    # A write cut short earlier (an error part way): start from what counts.
                    file.truncate((self._written_end - first) * ENTRY_BYTES)
                file.append(data)
            finally:
                file.close()
            self.dirty.add(path)
            self._written_end += count
            del self._tail_positions[:count]
            del self._tail_codes[:count]

    def sync(self) -> None:
        """Fsync what ``flush`` wrote so far. May run in a worker thread while the event loop
        writes on: what is written meanwhile stays marked for the next ``sync``."""
        created, self.created_files = self.created_files, False
        paths = set(self.dirty)
        for path in sorted(paths):
            if not self._disk.exists(path):
                continue  # removed by retention or a drop meanwhile
            file = self._disk.open(path)
            try:
                file.fsync()
            finally:
                file.close()
        self.dirty -= paths
        if created:
            self._disk.fsync_directory(self._directory)

    def trim(self, below_position: int) -> None:
        """Drop whole files every entry of which places below ``below_position``."""
        while len(self._files) > 1:
            [last_position], _ = self.read(self._files[1] - 1, self._files[1])
            if last_position >= below_position:
                break
            self._remove(self._files.pop(0))
            self._base = self._files[0]

    def remove_all(self) -> None:
        """Every file of this queue goes (whatever it holds); it is empty from 0."""
        self._files = self._list_files()
        self.restart_at(0)

    # -- files -----------------------------------------------------------------------------

    def _read_files(self, start: int, stop: int, positions: array[int], codes: array[int]) -> None:
        number = bisect.bisect_right(self._files, start) - 1
        offset = start
        while offset < stop:
            first = self._files[number]
            end = self._files[number + 1] if number + 1 < len(self._files) else self._written_end
            count = min(stop, end) - offset
            path = self._path(first)
            try:
                file = self._disk.open(path)
            except FileNotFoundError:
                raise CorruptRecord(path, 0, "consume queue file missing") from None
            try:
                data = file.read((offset - first) * ENTRY_BYTES, count * ENTRY_BYTES)
            finally:
                file.close()
            if len(data) != count * ENTRY_BYTES:
                raise CorruptRecord(path, (offset - first) * ENTRY_BYTES, "consume queue cut short")
            self._decode(path, first, offset, data, positions, codes)
            offset += count
            number += 1

    def _decode(
        self,
        path: str,
        first: int,
        offset: int,
        data: bytes,
        positions: array[int],
        codes: array[int],
    ) -> None:
        view = memoryview(data)
        unpack, unpack_checksum = _ENTRY.unpack_from, _CHECKSUM.unpack_from
        previous = positions[-1] if positions else -1
        for at in range(0, len(data), ENTRY_BYTES):
            position, code = unpack(view, at)
            (checksum,) = unpack_checksum(view, at + _ENTRY.size)
            entry_offset = offset + at // ENTRY_BYTES
            expected = crc32c(view[at : at + _ENTRY.size], entry_offset & 0xFFFFFFFF)
            if checksum != expected or position <= previous:
                raise CorruptRecord(
                    path,
                    (entry_offset - first) * ENTRY_BYTES,
                    f"consume queue entry {entry_offset} is damaged",
                )
            previous = position
            positions.append(position)
            codes.append(code)

    def _path(self, first: int) -> str:
        return posixpath.join(self._directory, _file_name(first))

    def _size(self, first: int) -> int:
        file = self._disk.open(self._path(first))
        try:
            return file.size()
        finally:
            file.close()

    def _exists(self) -> bool:
        return self._disk.exists(self._directory)

    def _remove(self, first: int) -> None:
        path = self._path(first)
        if self._disk.exists(path):
            self._disk.remove(path)
        self.dirty.discard(path)


class FileQueueStore:
    """Every queue of a replica in files under ``directory`` (module docstring)."""

    def __init__(
        self,
        disk: Disk,
        directory: str,
        *,
        entries_per_file: int = ENTRIES_PER_FILE,
        flush_entries: int = FLUSH_ENTRIES,
    ) -> None:
        self._disk = disk
        self._directory = directory
        self._entries_per_file = entries_per_file
        self._flush_entries = flush_entries
        self._queues: dict[tuple[str, int], FileConsumeQueue] = {}
        #: The first fsync that failed in this run, if one did (``sync``).
        self._fsync_failed: FsyncFailed | None = None

    def _queue(self, topic: str, queue_id: int) -> FileConsumeQueue:
        # "t-" keeps a topic called "." or ".." a plain directory name.
        directory = posixpath.join(self._directory, f"t-{topic}", str(queue_id))
        queue = FileConsumeQueue(self._disk, directory, self._entries_per_file, self._flush_entries)
        self._queues[(topic, queue_id)] = queue
        return queue

    def new_queue(self, topic: str, queue_id: int) -> FileConsumeQueue:
        queue = self._queue(topic, queue_id)
        queue.remove_all()
        return queue

    def open_queue(self, topic: str, queue_id: int, max_offset: int) -> FileConsumeQueue:
        queue = self._queue(topic, queue_id)
        queue.load(max_offset)
        return queue

    def drop_topic(self, topic: str) -> None:
        for key in [key for key in self._queues if key[0] == topic]:
            self._queues.pop(key).remove_all()

    def clear(self) -> None:
        # The queues in use stay usable, holding nothing (readers see no entries, not missing
        # files) until the state that holds them is replaced.
        for queue in self._queues.values():
            queue.restart_at(queue.max_offset)
        if not self._disk.exists(self._directory):
            return
        for topic_directory in self._disk.list_directory(self._directory):
            topic_path = posixpath.join(self._directory, topic_directory)
            for queue_directory in self._disk.list_directory(topic_path):
                FileConsumeQueue(
                    self._disk, posixpath.join(topic_path, queue_directory)
                ).remove_all()

    def flush(self) -> None:
        for queue in self._queues.values():
            queue.flush()

    def sync(self) -> None:
        """Fsync every queue; ``FsyncFailed`` once an fsync has failed in this run, then and
        ever after: the kernel may have dropped the pages it could not write and marked them
        clean, so a later fsync would "succeed" without them (fsyncgate), and a snapshot saved
        after it would count entries the files no longer hold. The queues are trusted again
        only after a restart, rebuilt from an older snapshot and the log."""
        if self._fsync_failed is not None:
            raise self._fsync_failed
        try:
            for queue in list(self._queues.values()):
                queue.sync()
        except OSError as error:
            self._fsync_failed = FsyncFailed(error.filename or self._directory, error.errno)
            raise self._fsync_failed from None

    def trim(self, below_position: int) -> None:
        for queue in self._queues.values():
            queue.trim(below_position)
