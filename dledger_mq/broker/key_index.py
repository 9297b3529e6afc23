"""The key index: where the messages stored with a given key are, per topic (the role of
RocketMQ's IndexFile), for ``message find --topic T --key K``.

It is derived from committed entries like the consume queues, but it is local to a replica and
never part of the replicated state: every replica indexes the entries it applies, in log order
(``apply``), and a lookup only names candidates, which the caller checks against the message
itself (its topic and keys, read from the CommitLog) and its queue. So a hash collision, a
message refused when it was sent, or one whose entry retention deleted is never served.

Memory is bounded: only the newest records (at most ``seal_records``) are in memory, in the
journal; older ones are in sealed segment files on disk, searched by binary search.

Files, in ``<log directory>/keyindex/``:

- ``journal.kij``: append-only records in log order, written as entries are applied and fsynced
  when the node takes a snapshot (``sync``). A record (20 bytes, little-endian) is: key hash u64
  (``key_hash``: BLAKE2b of topic and key; never 0), position i64 (``raft_index << SLOT_BITS |
  slot``), CRC32C u32 of those 16 bytes seeded with the record's ordinal in its file (so a
  misplaced record fails too). A record with hash 0 is a checkpoint: every keyed message of the
  entries up to its raft index is in the index.
- ``<first raft index:020>-<last raft index:020>.kix``: a sealed segment, immutable, written
  whole and durably (temporary file, fsync, rename, fsync of the directory) once the journal
  holds ``seal_records`` records: a header (magic, first and last raft index covered, record
  count, CRC32C) and the journal's records sorted by (hash, position), each checked as above.

On open, the journal is read and checked: a damaged record followed only by damaged bytes is a
torn tail (a crash during an append) and is cut off, with the records of the last entry it
names, which is indexed again when the log is applied again after the restart (from the
snapshot's index on; the journal is fsynced with a checkpoint at each snapshot, so it always
reaches that far). Anything else that fails a check, there or in a segment at any later read,
is ``CorruptRecord``: the node drops the index and rebuilds it from the CommitLog
(``node/key_index_keeper.py``), and queries are refused meanwhile, never answered from it.
Retention deletes the sealed segments whose entries the log no longer holds (``trim``).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import struct
from collections.abc import Iterable

import attrs
import structlog
from crc32c import crc32c

from dledger_mq.broker.records import (
    SLOT_BITS,
    CommandTag,
    RawCommand,
    send_batch_fields,
    unpack_command,
)
from dledger_mq.errors import BadRequest, CorruptRecord
from dledger_mq.raft.storage.disk import Disk, make_directories, write_file_atomically

_logger = structlog.get_logger()

_RECORD = struct.Struct("<Qq")
_CHECKSUM = struct.Struct("<I")
RECORD_BYTES = _RECORD.size + _CHECKSUM.size  # 20
_HEADER = struct.Struct("<8sQQQ")
HEADER_BYTES = _HEADER.size + _CHECKSUM.size  # 36
MAGIC = b"DMQKIX01"
JOURNAL_NAME = "journal.kij"
SEGMENT_SUFFIX = ".kix"
_SEGMENT_NAME = re.compile(r"(\d{20})-(\d{20})\.kix")
#: Records the journal holds before it is sealed into a segment (about 3 MB of memory).
SEAL_RECORDS = 1 << 15
#: Records buffered in memory before they are written to the journal.
FLUSH_RECORDS = 256
#: A journal larger than this is damage, not a journal (it is sealed long before).
MAX_JOURNAL_BYTES = 64 << 20
#: Candidates one lookup returns at most: the work of a query is bounded whatever the key.
MAX_CANDIDATES = 4096
#: Records read at once while a segment is scanned past a matching hash.
_SCAN_BLOCK = 64
_CHECKPOINT = 0
_MESSAGE_TAGS = frozenset(
    {CommandTag.SEND_BATCH, CommandTag.DELIVER_TIMERS, CommandTag.POP_MESSAGES}
)


def key_hash(topic: str, key: str) -> int:
    """A key of a topic as 64 bits, the same on every machine and Python (``hash()`` is
    salted). Topic names hold no NUL, so (topic, key) pairs never run together. Never 0, which
    marks a checkpoint."""
    digest = hashlib.blake2b(topic.encode() + b"\0" + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def encode_record(ordinal: int, hash_value: int, position: int) -> bytes:
    body = _RECORD.pack(hash_value, position)
    return body + _CHECKSUM.pack(crc32c(body, ordinal & 0xFFFFFFFF))


def _decode_record(data: bytes | memoryview, at: int, ordinal: int) -> tuple[int, int] | None:
    """(hash, position) of the record at byte ``at``, or None if it fails its checksum."""
    hash_value, position = _RECORD.unpack_from(data, at)
    (checksum,) = _CHECKSUM.unpack_from(data, at + _RECORD.size)
    if checksum != crc32c(bytes(data[at : at + _RECORD.size]), ordinal & 0xFFFFFFFF):
        return None
    return hash_value, position


def keyed_messages(index: int, data: bytes | RawCommand) -> list[tuple[int, int]]:
    """(key hash, position) of every key of every message an entry stores (none for other
    commands, or bytes that are not a command: apply refused those). ``data``: the entry, or
    the command the state's apply unpacked from it (decoding it again cost a sixth of a
    batched producer's throughput: docs/benchmarks.md)."""
    try:
        raw = data if isinstance(data, RawCommand) else unpack_command(data)
        if raw.tag not in _MESSAGE_TAGS:
            return []
        _, messages = send_batch_fields(raw.fields)
    except BadRequest:  # not a command apply stored anything of
        return []
    found: list[tuple[int, int]] = []
    for slot, fields in enumerate(messages):
        # [topic, queue_id, body, tags, keys, ...]; apply checks each message, this only
        # skips what is not shaped like one (a candidate is checked again when read).
        if type(fields) is not list or len(fields) < 5:
            continue
        keys = fields[4]
        if not keys:
            continue  # most messages: nothing to hash (the loop's cost, per message, shows)
        topic = fields[0]
        if type(topic) is not str or type(keys) is not list:
            continue
        position = index << SLOT_BITS | slot
        # A key given twice (or two keys of one hash) is one candidate: a segment holds each
        # (hash, position) once, and its reader takes a repeat for damage.
        hashes = dict.fromkeys(key_hash(topic, key) for key in keys if type(key) is str)
        found.extend((hash_value, position) for hash_value in hashes)
    return found


@attrs.frozen
class Segment:
    first_index: int
    last_index: int
    count: int
    path: str


@attrs.frozen
class Lookup:
    #: Positions of candidate messages, newest first.
    positions: tuple[int, ...]
    #: More candidates were left out (``MAX_CANDIDATES``).
    truncated: bool


class KeyIndex:
    """One replica's key index (module docstring). Fed by ``apply`` while ``live``; while not
    (just opened behind the state, or damaged), ``catch_up`` indexes entries from the log."""

    def __init__(self, disk: Disk, directory: str, seal_records: int = SEAL_RECORDS) -> None:
        self._disk = disk
        self.directory = directory
        self.seal_records = seal_records
        self.segments: list[Segment] = []
        #: Invariant: every keyed message of the entries up to ``covered_index`` is in the
        #: index (the journal, in memory, and the segments).
        self.covered_index = 0
        #: True once ``covered_index`` reached the applied index: ``apply`` feeds it from then.
        self.live = False
        #: A write failed or a record failed its check: drop everything and rebuild.
        self.damaged = False
        self._journal: dict[int, list[int]] = {}
        self._journal_records = 0
        self._checkpointed = 0
        self._pending = bytearray()
        self._journal_path = posixpath.join(directory, JOURNAL_NAME)

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, disk: Disk, directory: str, seal_records: int = SEAL_RECORDS) -> KeyIndex:
        """The index as its files leave it. A damaged index is dropped (``key_index_damaged``)
        and starts empty: the node rebuilds it from the log."""
        index = cls(disk, directory, seal_records)
        try:
            index._load()
        except CorruptRecord as error:
            _logger.error(
                "key_index_damaged", path=error.path, offset=error.offset, reason=error.reason
            )
            index.reset()
        return index

    def _load(self) -> None:
        make_directories(self._disk, self.directory)
        for name in self._disk.list_directory(self.directory):
            path = posixpath.join(self.directory, name)
            found = _SEGMENT_NAME.fullmatch(name)
            if found is not None:
                self.segments.append(self._check_segment(path, int(found[1]), int(found[2])))
            elif name.endswith(".tmp"):
                self._disk.remove(path)  # a sealing cut short: the journal still has it all
            elif name != JOURNAL_NAME:
                raise CorruptRecord(path, 0, "not a key index file")
        self.segments.sort(key=lambda segment: segment.first_index)
        for before, after in zip(self.segments, self.segments[1:], strict=False):
            if after.first_index <= before.last_index:
                raise CorruptRecord(after.path, 0, "key index segments overlap")
        if self.segments:
            self.covered_index = self.segments[-1].last_index
        self._load_journal()

    def _check_segment(self, path: str, first_index: int, last_index: int) -> Segment:
        file = self._disk.open(path)
        try:
            size = file.size()
            header = file.read(0, HEADER_BYTES)
        finally:
            file.close()
        if len(header) != HEADER_BYTES:
            raise CorruptRecord(path, 0, "key index segment header cut short")
        magic, first, last, count = _HEADER.unpack_from(header)
        (checksum,) = _CHECKSUM.unpack_from(header, _HEADER.size)
        if (
            magic != MAGIC
            or checksum != crc32c(header[: _HEADER.size])
            or (first, last) != (first_index, last_index)
            or first > last + 1
            or size != HEADER_BYTES + count * RECORD_BYTES
        ):
            raise CorruptRecord(path, 0, "key index segment header is damaged")
        return Segment(first, last, count, path)

    def _load_journal(self) -> None:
        path = self._journal_path
        if not self._disk.exists(path):
            return
        file = self._disk.open(path)
        try:
            size = file.size()
            if size > MAX_JOURNAL_BYTES:
                raise CorruptRecord(path, 0, f"key index journal larger than {MAX_JOURNAL_BYTES}")
            data = file.read(0, size)
        finally:
            file.close()
        view = memoryview(data)
        count = len(data) // RECORD_BYTES
        records: list[tuple[int, int]] = []
        previous = 0
        for ordinal in range(count):
            record = _decode_record(view, ordinal * RECORD_BYTES, ordinal)
            # Raft indexes never go back along the journal (a checkpoint may sit below the
            # last slots of its own entry).
            if record is None or record[1] >> SLOT_BITS < previous:
                # A torn tail only if nothing after it is a record: else the disk rotted it.
                for later in range(ordinal + 1, count):
                    if _decode_record(view, later * RECORD_BYTES, later) is not None:
                        raise CorruptRecord(
                            path, ordinal * RECORD_BYTES, f"key index record {ordinal} damaged"
                        )
                break
            records.append(record)
            previous = record[1] >> SLOT_BITS
        # The last entry's records may be incomplete (the tear cut into them) unless a
        # checkpoint follows: they go, and that entry is indexed again.
        if records and records[-1][0] != _CHECKPOINT:
            last_entry = records[-1][1] >> SLOT_BITS
            while records and records[-1][0] != _CHECKPOINT:
                if records[-1][1] >> SLOT_BITS != last_entry:
                    break
                records.pop()
        if len(records) * RECORD_BYTES != len(data):
            _logger.warning(
                "key_index_tail_cut",
                path=path,
                kept_records=len(records),
                bytes_cut=len(data) - len(records) * RECORD_BYTES,
            )
            file = self._disk.open(path)
            try:
                file.truncate(len(records) * RECORD_BYTES)
                file.fsync()
            finally:
                file.close()
        sealed_through = self.covered_index
        self._journal_records = len(records)
        for hash_value, position in records:
            raft_index = position >> SLOT_BITS
            if hash_value == _CHECKPOINT:
                self._checkpointed = max(self._checkpointed, raft_index)
            elif raft_index > sealed_through:
                # (At or below it: in a segment already, sealed just before a crash.)
                self._journal.setdefault(hash_value, []).append(position)
            self.covered_index = max(self.covered_index, raft_index)

    # -- feeding -------------------------------------------------------------------------------

    def apply(self, index: int, data: bytes | RawCommand) -> None:
        """The applied entry at ``index``, while live; a failed write makes the index
        ``damaged`` (never raises: applying must go on)."""
        if not self.live or self.damaged or index <= self.covered_index:
            return
        try:
            self.add_entry(index, data)
        except (OSError, CorruptRecord) as error:
            self.fail(error)

    def add_entry(self, index: int, data: bytes | RawCommand) -> None:
        """Index one committed entry above ``covered_index``."""
        assert index > self.covered_index, (index, self.covered_index)
        pairs = keyed_messages(index, data)
        for hash_value, position in pairs:
            self._append(hash_value, position)
            self._journal.setdefault(hash_value, []).append(position)
        self.covered_index = index
        if len(self._pending) >= FLUSH_RECORDS * RECORD_BYTES:
            self.flush()
        if self._journal_records >= self.seal_records:
            self.seal()

    def _append(self, hash_value: int, position: int) -> None:
        self._pending += encode_record(self._journal_records, hash_value, position)
        self._journal_records += 1

    def flush(self) -> None:
        """Write the buffered records to the journal (not fsynced)."""
        if not self._pending:
            return
        created = not self._disk.exists(self._journal_path)
        file = self._disk.open(self._journal_path, create=True)
        try:
            file.append(self._pending)
        finally:
            file.close()
        if created:
            # A new file's name is durable only once its directory is fsynced: without it a
            # synced journal could vanish whole in a power loss.
            self._disk.fsync_directory(self.directory)
        self._pending.clear()

    def sync(self) -> None:
        """Make everything indexed durable, with a checkpoint at ``covered_index``: the node
        does it before it saves a snapshot, so that a restart finds the index at least as far
        as the state it restores. ``checkpoint`` then ``fsync_journal``."""
        self.checkpoint()
        self.fsync_journal()

    def checkpoint(self) -> None:
        """Write a checkpoint at ``covered_index`` and everything buffered (not fsynced). On
        the thread that applies: it appends to the journal."""
        if self.damaged:
            return
        if self.covered_index > self._checkpointed:
            self._append(_CHECKPOINT, self.covered_index << SLOT_BITS)
            self._checkpointed = self.covered_index
        self.flush()

    def fsync_journal(self) -> None:
        """Fsync what the journal holds, by its path: safe on a worker thread while apply
        appends (a seal meanwhile replaces the journal by one already durable)."""
        if self._disk.exists(self._journal_path):
            file = self._disk.open(self._journal_path)
            try:
                file.fsync()
            finally:
                file.close()

    def seal(self) -> None:
        """Write the journal's records as a sorted segment, durably, and start a new journal
        with a checkpoint. A crash between the two leaves the journal's records in both: on
        open those the segment covers are skipped."""
        first = self.segments[-1].last_index + 1 if self.segments else 1
        last = self.covered_index
        records = sorted((h, p) for h, positions in self._journal.items() for p in positions)
        header = _HEADER.pack(MAGIC, first, last, len(records))
        parts = [header, _CHECKSUM.pack(crc32c(header))]
        parts.extend(encode_record(ordinal, h, p) for ordinal, (h, p) in enumerate(records))
        path = posixpath.join(self.directory, f"{first:020d}-{last:020d}{SEGMENT_SUFFIX}")
        write_file_atomically(self._disk, path, b"".join(parts))
        self.segments.append(Segment(first, last, len(records), path))
        self._pending.clear()
        write_file_atomically(
            self._disk, self._journal_path, encode_record(0, _CHECKPOINT, last << SLOT_BITS)
        )
        self._journal.clear()
        self._journal_records = 1
        self._checkpointed = last
        _logger.info("key_index_sealed", first_index=first, last_index=last, keys=len(records))

    # -- damage and retention ------------------------------------------------------------------

    def fail(self, error: Exception) -> None:
        """Stop serving and feeding: the node drops the files and rebuilds from the log."""
        _logger.error("key_index_failed", error=str(error), covered_index=self.covered_index)
        self.damaged = True
        self.live = False

    def reset(self) -> None:
        """Drop every file and start empty (``covered_index`` 0, not live): the node rebuilds
        the index from the log (``catch_up``)."""
        if self._disk.exists(self.directory):
            for name in self._disk.list_directory(self.directory):
                self._disk.remove(posixpath.join(self.directory, name))
            self._disk.fsync_directory(self.directory)
        else:
            make_directories(self._disk, self.directory)
        self.segments.clear()
        self._journal.clear()
        self._pending.clear()
        self._journal_records = 0
        self._checkpointed = 0
        self.covered_index = 0
        self.live = False
        self.damaged = False

    def catch_up(self, entries: Iterable[tuple[int, bytes]], target_index: int) -> None:
        """Index committed ``entries`` (in log order, above ``covered_index``), then, if that
        reached ``target_index`` (the applied index: nothing was applied meanwhile), go live.
        Entries the log no longer holds are skipped over: their messages cannot be read."""
        for index, data in entries:
            if index > self.covered_index:
                self.add_entry(index, data)
        if self.covered_index >= target_index:
            self.covered_index = max(self.covered_index, target_index)
            self.live = True
            _logger.info("key_index_live", covered_index=self.covered_index)

    def skip_to(self, index: int) -> None:
        """Nothing below ``index`` can be indexed any more (the log starts there)."""
        self.covered_index = max(self.covered_index, index - 1)

    def trim(self, first_log_index: int) -> None:
        """Delete the segments that name only entries below the log's first one."""
        while self.segments and self.segments[0].last_index < first_log_index:
            segment = self.segments.pop(0)
            self._disk.remove(segment.path)
            _logger.info(
                "key_index_trimmed",
                first_index=segment.first_index,
                last_index=segment.last_index,
            )

    # -- lookups -------------------------------------------------------------------------------

    def lookup(self, topic: str, key: str, max_candidates: int = MAX_CANDIDATES) -> Lookup:
        """Positions of messages that may have ``key`` in ``topic``, newest first. Raises
        ``CorruptRecord`` if a segment fails a check (the caller calls ``fail``)."""
        hash_value = key_hash(topic, key)
        found = list(reversed(self._journal.get(hash_value, ())))
        for segment in reversed(self.segments):
            if len(found) > max_candidates:
                break
            found.extend(reversed(self._search(segment, hash_value, max_candidates + 1)))
        return Lookup(tuple(found[:max_candidates]), len(found) > max_candidates)

    def _search(self, segment: Segment, hash_value: int, limit: int) -> list[int]:
        """Positions with ``hash_value`` in a sorted segment, oldest first (the newest
        ``limit`` of them at most)."""
        file = self._disk.open(segment.path)
        try:

            def record(ordinal: int) -> tuple[int, int]:
                at = HEADER_BYTES + ordinal * RECORD_BYTES
                data = file.read(at, RECORD_BYTES)
                decoded = _decode_record(data, 0, ordinal) if len(data) == RECORD_BYTES else None
                if decoded is None:
                    raise CorruptRecord(segment.path, at, f"key index record {ordinal} damaged")
                return decoded

            low, high = 0, segment.count
            while low < high:  # the first record whose hash is at least hash_value
                middle = (low + high) // 2
                if record(middle)[0] < hash_value:
                    low = middle + 1
                else:
                    high = middle
            positions: list[int] = []
            ordinal = low
            previous = -1
            while ordinal < segment.count:
                at = HEADER_BYTES + ordinal * RECORD_BYTES
                count = min(_SCAN_BLOCK, segment.count - ordinal)
                data = file.read(at, count * RECORD_BYTES)
                if len(data) != count * RECORD_BYTES:
                    raise CorruptRecord(segment.path, at, "key index segment cut short")
                for number in range(count):
                    decoded = _decode_record(data, number * RECORD_BYTES, ordinal + number)
                    if decoded is None or (decoded[0] == hash_value and decoded[1] <= previous):
                        raise CorruptRecord(
                            segment.path,
                            at + number * RECORD_BYTES,
                            f"key index record {ordinal + number} damaged",
                        )
                    if decoded[0] != hash_value:
                        return positions[-limit:]
                    previous = decoded[1]
                    positions.append(decoded[1])
                ordinal += count
            return positions[-limit:]
        finally:
            file.close()
