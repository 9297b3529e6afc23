"""The CommitLog's bytes on disk: records, segment headers, the meta file and the state file.

All integers are little-endian. Every structure carries its own magic and a CRC32C, so a reader
can tell "not ours", "torn" and "rotted" apart. docs/commitlog.md has the layout tables.
"""

from __future__ import annotations

import struct

import attrs
from crc32c import crc32c

from dledger_mq.raft.pure.messages import Entry, EntryKind, HardState

#: Bumped on any change to a layout below; a data directory of another version is refused.
FORMAT_VERSION = 1

META_FILE_NAME = "meta"
IDENTITY_FILE_NAME = "identity"
#: Present while the replica is recovering: it lost its log and does not vote until caught up.
RECOVERING_FILE_NAME = "recovering"
#: The recovering mark's content when the replica kept its hard state and lost only entries at
#: the end of its log (a cut): it may vote once it has heard from enough peers (``RaftCore``).
#: An empty mark is a replica that lost its whole log (made when it came back empty).
LOST_TAIL_MARK = b"lost-tail"
#: Present while the log is reset to start after a snapshot (``CommitLog.reset_to_snapshot``).
RESETTING_FILE_NAME = "resetting"
#: Where the state machine's snapshots live, beside the log (``snapshots.py``).
SNAPSHOTS_DIRECTORY_NAME = "snapshots"
#: Where the broker's consume queues live, beside the log (``broker/consume_queue.py``).
CONSUME_QUEUE_DIRECTORY_NAME = "consumequeue"
#: Where the broker's key index lives, beside the log (``broker/key_index.py``).
KEY_INDEX_DIRECTORY_NAME = "keyindex"
STATE_FILE_NAME = "state"
SEGMENT_SUFFIX = ".log"
TEMPORARY_SUFFIX = ".tmp"
_SEGMENT_NAME_DIGITS = 20

# -- records ------------------------------------------------------------------------------------

RECORD_MAGIC = int.from_bytes(b"DQLR", "little")
RECORD_MAGIC_BYTES = b"DQLR"
#: magic u32 | body length u32 | index u64 | term u64 | kind u8 | 3 zero bytes   (28 bytes) ...
RECORD_PREFIX = struct.Struct("<IIQQB3x")
#: ... then the CRC32C of those 28 bytes followed by the body.
RECORD_CHECKSUM = struct.Struct("<I")
RECORD_HEADER_SIZE = RECORD_PREFIX.size + RECORD_CHECKSUM.size  # 32
#: Bodies are bounded so that a garbage length field can be rejected without reading it.
MAX_BODY_BYTES = (1 << 31) - 1

_ENTRY_KINDS = frozenset(kind.value for kind in EntryKind)
_KINDS_BY_VALUE = tuple(EntryKind(value) for value in range(max(_ENTRY_KINDS) + 1))


def encode_entries(
    entries: list[Entry], first_index: int, previous_term: int, base_location: int
) -> tuple[bytes, list[int]]:
    """The records of ``entries`` as one buffer, and each record's location: ``base_location``
    plus its offset in the buffer (the caller packs the segment and file offset into the base).

    Indexes must run consecutively from ``first_index`` and terms must not fall below
    ``previous_term`` or each other: recovery refuses a log that breaks either, so it is refused
    here, before it is written. This is the append hot path: one pack and one checksum per entry,
    with the bound methods looked up once.
    """
    parts: list[bytes] = []
    locations: list[int] = []
    add_part = parts.append
    add_location = locations.append
    pack_prefix = RECORD_PREFIX.pack
    pack_checksum = RECORD_CHECKSUM.pack
    location = base_location
    expected_index = first_index
    for entry in entries:
        if entry.index != expected_index:
            raise ValueError(f"entry index {entry.index} where {expected_index} was expected")
        term = entry.term
        if term < previous_term:
            raise ValueError(f"entry {entry.index} has term {term}, below {previous_term}")
        previous_term = term
        data = entry.data
        body_length = len(data)
        if body_length > MAX_BODY_BYTES:
            raise ValueError(f"entry {entry.index}: body of {body_length} bytes is too large")
        prefix = pack_prefix(RECORD_MAGIC, body_length, expected_index, term, entry.kind)
        add_part(prefix)
        add_part(pack_checksum(crc32c(data, crc32c(prefix))))
        add_part(data)
        add_location(location)
        location += RECORD_HEADER_SIZE + body_length
        expected_index += 1
    return b"".join(parts), locations


def decode_entries(
    buffer: bytes, offsets: list[int], first_index: int, terms: list[int]
) -> list[Entry] | tuple[int, str]:
    """The entries whose records start at ``offsets`` in ``buffer``, expected to be
    ``first_index`` onwards with ``terms``; or (offset, reason) for the first that is not intact.

    The read path: one unpack and one checksum per record, no intermediate objects.
    """
    unpack_prefix = RECORD_PREFIX.unpack_from
    unpack_checksum = RECORD_CHECKSUM.unpack_from
    kinds = _KINDS_BY_VALUE
    result: list[Entry] = []
    index = first_index
    buffer_size = len(buffer)
    for offset, term in zip(offsets, terms, strict=True):
        body_start = offset + RECORD_HEADER_SIZE
        if body_start > buffer_size:
            return offset, "record cut short on disk"
        magic, body_length, record_index, record_term, kind = unpack_prefix(buffer, offset)
        (checksum,) = unpack_checksum(buffer, offset + RECORD_PREFIX.size)
        body = buffer[body_start : body_start + body_length]
        if (
            magic != RECORD_MAGIC
            or len(body) != body_length
            or crc32c(body, crc32c(buffer[offset : offset + RECORD_PREFIX.size])) != checksum
            or kind >= len(kinds)
        ):
            return offset, "record damaged on disk (magic, length or checksum)"
        if record_index != index or record_term != term:
            return offset, f"record is ({record_index}, {record_term}), expected ({index}, {term})"
        result.append(Entry(index, term, body, kinds[kind]))
        index += 1
    return result


@attrs.frozen(slots=True)
class RecordHeader:
    body_length: int
    index: int
    term: int
    kind: int
    checksum: int


def parse_record_header(buffer: bytes | memoryview, offset: int) -> RecordHeader | str:
    """The header at ``offset``, or why it cannot be one (the body is not checked here)."""
    magic, body_length, index, term, kind = RECORD_PREFIX.unpack_from(buffer, offset)
    if magic != RECORD_MAGIC:
        return "bad record magic"
    if kind not in _ENTRY_KINDS:
        return f"unknown entry kind {kind}"
    if body_length > MAX_BODY_BYTES:
        return f"body length {body_length} out of range"
    (checksum,) = RECORD_CHECKSUM.unpack_from(buffer, offset + RECORD_PREFIX.size)
    return RecordHeader(body_length, index, term, kind, checksum)


def record_checksum_matches(buffer: memoryview, offset: int, header: RecordHeader) -> bool:
    body_start = offset + RECORD_HEADER_SIZE
    prefix_checksum = crc32c(buffer[offset : offset + RECORD_PREFIX.size])
    body = buffer[body_start : body_start + header.body_length]
    return crc32c(body, prefix_checksum) == header.checksum


# -- segment header -----------------------------------------------------------------------------

SEGMENT_MAGIC = b"DQSG"
#: magic | format version u32 | base index u64 | term of base index - 1 u64 | zero u32 | CRC32C
SEGMENT_HEADER = struct.Struct("<4sIQQ4xI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 32


@attrs.frozen(slots=True)
class SegmentHeader:
    base_index: int
    previous_term: int


def encode_segment_header(header: SegmentHeader) -> bytes:
    body = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, header.base_index, header.previous_term, 0
    )
    checksum = crc32c(body[: SEGMENT_HEADER_SIZE - 4])
    return body[: SEGMENT_HEADER_SIZE - 4] + RECORD_CHECKSUM.pack(checksum)


def decode_segment_header(data: bytes) -> SegmentHeader | str:
    """The header, or why ``data`` is not a valid one."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"segment header cut short ({len(data)} of {SEGMENT_HEADER_SIZE} bytes)"
    magic, version, base_index, previous_term, checksum = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        return "bad segment magic"
    if crc32c(data[: SEGMENT_HEADER_SIZE - 4]) != checksum:
        return "segment header checksum mismatch"
    if version != FORMAT_VERSION:
        return f"segment format version {version}, expected {FORMAT_VERSION}"
    return SegmentHeader(base_index, previous_term)


def segment_file_name(base_index: int) -> str:
    return f"{base_index:0{_SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_file_name(name: str) -> int | None:
    """The base index a segment file name encodes, or None for any other name."""
    stem = name.removesuffix(SEGMENT_SUFFIX)
    if stem == name or len(stem) != _SEGMENT_NAME_DIGITS or not stem.isdigit():
        return None
    return int(stem)


# -- meta file ----------------------------------------------------------------------------------

META_MAGIC = b"dledger-mq log\n\x00"
#: magic (16 bytes) | format version u32 | CRC32C of the first 20 bytes
META = struct.Struct("<16sII")


def encode_meta() -> bytes:
    body = META_MAGIC + FORMAT_VERSION.to_bytes(4, "little")
    return body + RECORD_CHECKSUM.pack(crc32c(body))


def decode_meta_version(data: bytes) -> int | str:
    """The format version recorded in a meta file, or why it is not a dledger-mq meta file.

    The version is read before the checksum is trusted to mean anything else, so that a future
    format with a longer meta file still gets a clear "other version" answer.
    """
    if len(data) < META.size or not data.startswith(META_MAGIC):
        return "no dledger-mq log meta file magic"
    _magic, version, checksum = META.unpack_from(data)
    if version == FORMAT_VERSION and crc32c(data[: META.size - 4]) != checksum:
        return "meta file checksum mismatch"
    return int(version)


# -- identity file ------------------------------------------------------------------------------

IDENTITY_MAGIC = b"DQID"
#: magic | then three times: length u16 + UTF-8 (cluster id, group, node id) | CRC32C of all before
_IDENTITY_LENGTH = struct.Struct("<H")
MAX_IDENTITY_PART_BYTES = 1024


@attrs.frozen(slots=True)
class LogIdentity:
    """Whose log this is: checked on every open, so that a node never runs on another's log."""

    cluster_id: str
    group: str
    node_id: str

    def describe(self) -> str:
        return f"node {self.node_id} of group {self.group} in cluster {self.cluster_id}"


def encode_identity(identity: LogIdentity) -> bytes:
    body = bytearray(IDENTITY_MAGIC)
    for part in (identity.cluster_id, identity.group, identity.node_id):
        data = part.encode()
        if len(data) > MAX_IDENTITY_PART_BYTES:
            raise ValueError(f"identity part of {len(data)} bytes")
        body += _IDENTITY_LENGTH.pack(len(data)) + data
    return bytes(body) + RECORD_CHECKSUM.pack(crc32c(bytes(body)))


def decode_identity(data: bytes) -> LogIdentity | str:
    """The identity an identity file records, or why ``data`` is not one."""
    if not data.startswith(IDENTITY_MAGIC):
        return "no identity magic"
    if (
        len(data) < len(IDENTITY_MAGIC) + 4
        or crc32c(data[:-4]) != RECORD_CHECKSUM.unpack_from(data, len(data) - 4)[0]
    ):
        return "identity checksum mismatch"
    parts: list[str] = []
    offset = len(IDENTITY_MAGIC)
    end = len(data) - 4
    for _ in range(3):
        if offset + _IDENTITY_LENGTH.size > end:
            return "identity cut short"
        (length,) = _IDENTITY_LENGTH.unpack_from(data, offset)
        offset += _IDENTITY_LENGTH.size
        if offset + length > end:
            return "identity cut short"
        try:
            parts.append(data[offset : offset + length].decode())
        except UnicodeDecodeError:
            return "identity is not UTF-8"
        offset += length
    if offset != end:
        return "identity has trailing bytes"
    return LogIdentity(*parts)


# -- state file ---------------------------------------------------------------------------------

STATE_MAGIC = b"DQST"
#: magic | term u64 | commit u64 | first index u64 | term of first index - 1 u64 | vote length u16
_STATE_PREFIX = struct.Struct("<4sQQQQH")
_NO_VOTE = 0xFFFF


@attrs.frozen(slots=True)
class LogState:
    """What the state file holds: Raft's hard state and where the log begins after trimming."""

    hard_state: HardState
    first_index: int
    term_before_first: int


def encode_state(state: LogState) -> bytes:
    hard_state = state.hard_state
    vote = b"" if hard_state.vote is None else hard_state.vote.encode()
    if len(vote) >= _NO_VOTE:
        raise ValueError(f"vote {hard_state.vote!r} is too long")
    body = _STATE_PREFIX.pack(
        STATE_MAGIC,
        hard_state.term,
        hard_state.commit,
        state.first_index,
        state.term_before_first,
        _NO_VOTE if hard_state.vote is None else len(vote),
    )
    body += vote
    return body + RECORD_CHECKSUM.pack(crc32c(body))


def decode_state(data: bytes) -> LogState | str:
    if len(data) < _STATE_PREFIX.size + 4 or not data.startswith(STATE_MAGIC):
        return "not a state file"
    _magic, term, commit, first_index, term_before_first, vote_length = _STATE_PREFIX.unpack_from(
        data
    )
    vote_bytes = 0 if vote_length == _NO_VOTE else vote_length
    end = _STATE_PREFIX.size + vote_bytes
    if len(data) != end + 4:
        return "state file has the wrong length"
    if crc32c(data[:end]) != RECORD_CHECKSUM.unpack_from(data, end)[0]:
        return "state file checksum mismatch"
    vote = None if vote_length == _NO_VOTE else data[_STATE_PREFIX.size : end].decode()
    return LogState(HardState(term=term, vote=vote, commit=commit), first_index, term_before_first)
