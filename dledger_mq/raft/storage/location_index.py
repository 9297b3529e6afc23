"""Where each entry of the CommitLog sits, without holding every position in memory.

A location packs (segment slot, byte offset) into one int, as the CommitLog reads them. The
segment being written keeps its entries' offsets in an array (8 bytes an entry); a sealed one
(fsynced, never written again) keeps them in its index file (``<first index>.idx``, written when
the log rolls to the next segment) and reads them from there in blocks, a few blocks cached. So
the memory of the index no longer grows with history, and opening the log need not read every
record of a sealed segment to find them (recovery checks the index file instead).

Index file: a 48-byte header (magic ``DQLX``, version u32, first index u64, entry count u64, end
offset u64, term of the last entry u64, CRC32C of the header's fields before it and of the body
u32, 4 zero bytes) then the body: each
entry's offset as u64, then the segment's term runs as (first index u64, term u64) pairs.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections import OrderedDict

import attrs
from crc32c import crc32c

from dledger_mq.raft.storage.disk import Disk, DiskFile

INDEX_SUFFIX = ".idx"
_MAGIC = b"DQLX"
_VERSION = 1
_HEADER = struct.Struct("<4sIQQQQI4x")
#: The header's fields before its checksum, which covers them (a flipped end offset must not
#: send a scan to the wrong place).
_HEADER_FIELDS = struct.Struct("<4sIQQQQ")
#: Offsets read from an index file at a time, and blocks kept per log.
_BLOCK_ENTRIES = 1024
_CACHED_BLOCKS = 32


@attrs.frozen
class SegmentIndex:
    """What a sealed segment's index file says."""

    base_index: int
    count: int
    end_offset: int
    last_term: int
    #: (first index, term) of each run of the segment's entries.
    runs: tuple[tuple[int, int], ...]


def encode_index(
    base_index: int,
    offsets: array[int],
    end_offset: int,
    last_term: int,
    runs: list[tuple[int, int]],
) -> bytes:
    body = array("Q", offsets).tobytes() + array("Q", [v for run in runs for v in run]).tobytes()
    fields = (_MAGIC, _VERSION, base_index, len(offsets), end_offset, last_term)
    checksum = crc32c(body, crc32c(_HEADER_FIELDS.pack(*fields)))
    return _HEADER.pack(*fields, checksum) + body


def read_index(
    file: DiskFile, base_index: int, segment_size: int, *, checkpoint: bool = False
) -> SegmentIndex | None:
    """The index file's content if it is whole and agrees with its segment; None otherwise
    (then the segment is scanned, as without one). A sealed segment's index covers all of it;
    a ``checkpoint`` of the segment being written covers a durable prefix of it."""
    size = file.size()
    if size < _HEADER.size:
        return None
    header = file.read(0, _HEADER.size)
    magic, version, base, count, end_offset, last_term, checksum = _HEADER.unpack(header)
    if (magic, version, base) != (_MAGIC, _VERSION, base_index):
        return None
    if end_offset > segment_size or (not checkpoint and end_offset != segment_size):
        return None
    body_size = size - _HEADER.size
    runs_size = body_size - 8 * count
    if runs_size < 16 or runs_size % 16:
        return None
    body = file.read(_HEADER.size, body_size)
    fields = _HEADER_FIELDS.pack(magic, version, base, count, end_offset, last_term)
    if len(body) != body_size or crc32c(body, crc32c(fields)) != checksum:
        return None
    values = array("Q")
    values.frombytes(body[8 * count :])
    runs = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    if runs[0][0] != base_index or runs[-1][1] != last_term:
        return None
    return SegmentIndex(base_index, count, end_offset, last_term, runs)


def read_offsets(file: DiskFile, count: int) -> array[int]:
    """Every offset an index file holds (a checkpoint's, loaded for the segment written on)."""
    offsets = array("Q")
    offsets.frombytes(file.read(_HEADER.size, 8 * count))
    return offsets


class _Chunk:
    """One segment's entries: ``count`` from absolute index ``base``, at slot ``slot``."""

    __slots__ = ("base", "count", "offsets", "path", "slot")

    def __init__(
        self, slot: int, base: int, offsets: array[int] | None, count: int, path: str
    ) -> None:
        self.slot = slot
        self.base = base
        #: In memory for the segment being written; None for a sealed one (its index file).
        self.offsets = offsets
        self.count = count
        self.path = path


class LocationIndex:
    """The CommitLog's ``_locations``: position ``p`` is entry ``origin + p``."""

    def __init__(self, disk: Disk, origin: int, offset_bits: int) -> None:
        self._disk = disk
        self._origin = origin
        self._bits = offset_bits
        self._chunks: list[_Chunk] = []
        self._bases: list[int] = []
        self._cache: OrderedDict[tuple[str, int], array[int]] = OrderedDict()

    # -- building ----------------------------------------------------------------------------

    def add_segment(
        self, slot: int, base: int, offsets: array[int] | None, count: int, index_path: str
    ) -> None:
        """A segment found on open: its offsets, or (sealed) its index file's."""
        self._chunks.append(_Chunk(slot, base, offsets, count, index_path))
        self._bases.append(base)

    def seal(self, slot: int, index_path: str) -> None:
        """The segment at ``slot`` has its index file now: its offsets leave memory."""
        # Cached blocks of an earlier file at that path (a segment cut and written again).
        self._forget_cached(index_path)
        for chunk in self._chunks:
            if chunk.slot == slot:
                chunk.offsets = None
                chunk.path = index_path

    def offsets_of(self, slot: int) -> tuple[int, array[int]]:
        """(first index, offsets) of the segment at ``slot``, to write its index file."""
        for chunk in self._chunks:
            if chunk.slot == slot:
                return chunk.base, self._chunk_offsets(chunk, 0, chunk.count)
        return 0, array("Q")  # a segment no entry was written to yet

    # -- the sequence the CommitLog reads ------------------------------------------------------

    def __len__(self) -> int:
        if not self._chunks:
            return 0
        last = self._chunks[-1]
        return last.base + last.count - self._origin

    def __getitem__(self, position: int) -> int:
        absolute = self._origin + position
        chunk = self._chunks[-1]
        if absolute < chunk.base:
            chunk = self._chunks[bisect.bisect_right(self._bases, absolute) - 1]
        elif chunk.offsets is not None:
            # The hot case (a leader reading what it just wrote to send it): the segment being
            # written, in memory.
            return (chunk.slot << self._bits) | chunk.offsets[absolute - chunk.base]
        offset = self._offset(chunk, absolute - chunk.base)
        return (chunk.slot << self._bits) | offset

    def slice(self, start: int, stop: int) -> list[int]:
        result: list[int] = []
        absolute, end = self._origin + start, self._origin + stop
        number = bisect.bisect_right(self._bases, absolute) - 1
        while absolute < end:
            chunk = self._chunks[number]
            take = min(end, chunk.base + chunk.count) - absolute
            slot_bits = chunk.slot << self._bits
            first = absolute - chunk.base
            result.extend(slot_bits | o for o in self._chunk_offsets(chunk, first, first + take))
            absolute += take
            number += 1
        return result

    def extend(self, locations: list[int]) -> None:
        mask = (1 << self._bits) - 1
        for location in locations:
            slot = location >> self._bits
            if not self._chunks or self._chunks[-1].slot != slot:
                base = self._origin + len(self)
                self.add_segment(slot, base, array("Q"), 0, "")
            chunk = self._chunks[-1]
            assert chunk.offsets is not None, "appending to a sealed segment"
            chunk.offsets.append(location & mask)
            chunk.count += 1

    def truncate(self, position: int) -> None:
        """Forget entries from ``position`` on; a sealed segment cut here is in memory again
        (the CommitLog removes its index file)."""
        absolute = self._origin + position
        while self._chunks and self._chunks[-1].base > absolute:
            self._forget_cached(self._chunks.pop().path)
            self._bases.pop()
        if not self._chunks:
            return
        chunk = self._chunks[-1]
        keep = absolute - chunk.base
        if chunk.offsets is None:
            chunk.offsets = self._chunk_offsets(chunk, 0, keep)
            self._forget_cached(chunk.path)
            chunk.path = ""
        else:
            del chunk.offsets[keep:]
        chunk.count = keep

    def drop_prefix(self, count: int) -> None:
        """Forget the first ``count`` positions; segments wholly before go (never the last)."""
        self._origin += count
        while len(self._chunks) > 1 and self._bases[1] <= self._origin:
            self._forget_cached(self._chunks[0].path)
            self._chunks.pop(0)
            self._bases.pop(0)

    def reset(self, origin: int) -> None:
        for chunk in self._chunks:
            self._forget_cached(chunk.path)
        self._chunks, self._bases, self._origin = [], [], origin

    # -- reading sealed offsets ------------------------------------------------------------

    def _offset(self, chunk: _Chunk, number: int) -> int:
        if chunk.offsets is not None:
            return chunk.offsets[number]
        block = self._block(chunk, number // _BLOCK_ENTRIES)
        return block[number % _BLOCK_ENTRIES]

    def _chunk_offsets(self, chunk: _Chunk, low: int, high: int) -> array[int]:
        if chunk.offsets is not None:
            return chunk.offsets[low:high]
        result = array("Q")
        number = low
        while number < high:
            block = self._block(chunk, number // _BLOCK_ENTRIES)
            start = number % _BLOCK_ENTRIES
            take = min(high - number, len(block) - start)
            result.extend(block[start : start + take])
            number += take
        return result

    def _block(self, chunk: _Chunk, block_number: int) -> array[int]:
        key = (chunk.path, block_number)
        block = self._cache.get(key)
        if block is not None:
            self._cache.move_to_end(key)
            return block
        first = block_number * _BLOCK_ENTRIES
        count = min(_BLOCK_ENTRIES, chunk.count - first)
        file = self._disk.open(chunk.path)
        try:
            data = file.read(_HEADER.size + 8 * first, 8 * count)
        finally:
            file.close()
        block = array("Q")
        block.frombytes(data)
        if len(block) != count:
            raise OSError(f"{chunk.path}: index cut short")
        self._cache[key] = block
        if len(self._cache) > _CACHED_BLOCKS:
            self._cache.popitem(last=False)
        return block

    def _forget_cached(self, path: str) -> None:
        for key in [key for key in self._cache if key[0] == path]:
            del self._cache[key]
