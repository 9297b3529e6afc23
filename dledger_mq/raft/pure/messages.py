"""The records the Raft core reads and writes: log entries, hard state and peer messages.

They are frozen attrs classes so that the same classes can go on the wire (issue: the node
runtime) and into the CommitLog without a second definition.
"""

from __future__ import annotations

import enum

import attrs

from dledger_mq.errors import ProtocolError
from dledger_mq.raft.pure.membership import Membership


class EntryKind(enum.IntEnum):
    NORMAL = 0
    #: Appended by every new leader at the start of its term so that it can commit (Raft 5.4.2).
    NOOP = 1
    #: A new membership of the group (``membership.py``), in force once appended.
    CONFIG = 2


#: Bytes counted for an entry's header when batching by size; keeps empty entries from being free.
ENTRY_OVERHEAD_BYTES = 16


@attrs.frozen(slots=True)
class Entry:
    index: int
    term: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL

    @property
    def size_bytes(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD_BYTES


@attrs.frozen(slots=True)
class HardState:
    """What a replica must have on disk before it sends any message that depends on it."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@attrs.frozen(slots=True)
class VoteRequest:
    """RequestVote. With ``pre_vote`` it only asks whether the target *would* vote."""

    term: int
    source: str
    target: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    #: Set when campaigning on a leader's TimeoutNow: voters must not ignore it for the lease.
    leadership_transfer: bool = False


@attrs.frozen(slots=True)
class VoteResponse:
    term: int
    source: str
    target: str
    granted: bool
    pre_vote: bool = False


@attrs.frozen(slots=True)
class AppendRequest:
    """AppendEntries as pushed by the leader; many may be in flight to one follower."""

    term: int
    source: str
    target: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@attrs.frozen(slots=True)
class AppendResponse:
    """Reply to an AppendRequest.

    On success ``match_index`` is the last index known to match the leader's log. On rejection
    ``rejected_index`` is the request's ``prev_index`` and ``hint_index``/``hint_term`` tell the
    leader where to probe next.
    """

    term: int
    source: str
    target: str
    success: bool
    match_index: int = 0
    rejected_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@attrs.frozen(slots=True)
class Heartbeat:
    """Leader liveness and commit propagation; ``commit`` is capped at the follower's match.
    ``last_index`` is the leader's last index when it sent this: how far a replica that lost
    its log must catch up before it votes again (``RaftCore`` "recovering")."""

    term: int
    source: str
    target: str
    commit: int
    last_index: int = 0
    #: The leader's latest read context (``RaftCore.read_index``); echoed in the response.
    context: int = 0


@attrs.frozen(slots=True)
class HeartbeatResponse:
    """``recovering``: the replica lost its log and holds only up to ``last_index`` now, so
    the leader must not believe what it acknowledged before (its match goes back)."""

    term: int
    source: str
    target: str
    recovering: bool = False
    last_index: int = 0
    #: The heartbeat's ``context``: this follower knew the leader when it got that read's round.
    context: int = 0


@attrs.frozen(slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells an up-to-date follower to campaign at once."""

    term: int
    source: str
    target: str


@attrs.frozen(slots=True)
class SnapshotNeeded:
    """From a leader's core to its own driver, never on the wire: ``target`` needs entries this
    log no longer holds, so it must get the leader's latest snapshot (``SnapshotChunk``s)."""

    term: int
    source: str
    target: str


@attrs.frozen(slots=True)
class InstallSnapshot:
    """From a follower's driver to its own core, never on the wire: the snapshot of the
    state at ``index`` (entry term ``snapshot_term``) that leader ``source`` sent is durable
    here. The core answers it as an append that matched up to ``index``."""

    term: int
    source: str
    target: str
    index: int
    snapshot_term: int
    #: The group's membership at ``index`` as the snapshot records it (empty: none recorded).
    membership: bytes = b""


#: The largest ``SnapshotChunk.data``: a chunk is one frame, well under the frame bound.
MAX_SNAPSHOT_CHUNK_BYTES = 256 << 10
#: The largest snapshot a replica takes in (a broker snapshot holds no message bodies).
MAX_SNAPSHOT_BYTES = 1 << 36


@attrs.frozen(slots=True)
class SnapshotChunk:
    """Bytes ``[offset, offset + len(data))`` of the leader's snapshot file at (``index``,
    ``snapshot_term``) of ``total_bytes``; ``checksum`` is the CRC32C of ``data``."""

    term: int
    source: str
    target: str
    index: int
    snapshot_term: int
    total_bytes: int
    offset: int
    data: bytes
    checksum: int


@attrs.frozen(slots=True)
class SnapshotChunkAck:
    """The receiver holds the snapshot at (``index``, ``snapshot_term``) up to ``next_offset``:
    the sender goes on from there (after a dropped link or a restart too)."""

    term: int
    source: str
    target: str
    index: int
    snapshot_term: int
    next_offset: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
    | SnapshotNeeded
    | InstallSnapshot
    | SnapshotChunk
    | SnapshotChunkAck
)


#: The largest term or index a peer may send. Both are stored as unsigned 64-bit numbers on
#: disk, and a node adds one to them (a candidate's term, the next index): this bound leaves
#: that room, and keeps them within signed 64-bit arrays too.
MAX_TERM = (1 << 62) - 1
MAX_INDEX = (1 << 62) - 1

_TERMS = {
    VoteRequest: ("term", "last_log_term"),
    VoteResponse: ("term",),
    AppendRequest: ("term", "prev_term"),
    AppendResponse: ("term", "hint_term"),
    Heartbeat: ("term",),
    HeartbeatResponse: ("term",),
    TimeoutNow: ("term",),
    SnapshotChunk: ("term", "snapshot_term"),
    SnapshotChunkAck: ("term", "snapshot_term"),
}
_INDEXES = {
    VoteRequest: ("last_log_index",),
    VoteResponse: (),
    AppendRequest: ("prev_index", "leader_commit"),
    AppendResponse: ("match_index", "rejected_index", "hint_index"),
    Heartbeat: ("commit", "last_index", "context"),
    HeartbeatResponse: ("last_index", "context"),
    TimeoutNow: (),
    SnapshotChunk: ("index",),
    SnapshotChunkAck: ("index",),
}


def check_peer_message(message: Message, source: str, target: str) -> None:
    """Raise ``ProtocolError`` unless ``message`` is one a correct peer ``source`` could send to
    ``target``: terms and indexes in range, an append whose entries follow its ``prev_index``
    one by one with terms that never go back nor exceed its own. Remote input is checked here,
    once, before anything of it reaches the core."""
    kind = type(message)
    if kind not in _TERMS:
        raise ProtocolError(f"{kind.__name__} is not a Raft message")
    if message.source != source or message.target != target:
        raise ProtocolError(
            f"a message from {message.source!r} to {message.target!r} on the link from "
            f"{source!r} to {target!r}"
        )
    for name in _TERMS[kind]:
        value = getattr(message, name)
        if not 0 <= value <= MAX_TERM:
            raise ProtocolError(f"{kind.__name__}.{name} {value} is out of range")
    for name in _INDEXES[kind]:
        value = getattr(message, name)
        if not 0 <= value <= MAX_INDEX:
            raise ProtocolError(f"{kind.__name__}.{name} {value} is out of range")
    if isinstance(message, VoteRequest) and message.last_log_term > message.term:
        raise ProtocolError(f"a vote request of term {message.term} with a later log")
    if isinstance(message, AppendRequest):
        check_append_shape(message)
    if isinstance(message, SnapshotChunk):
        check_chunk_shape(message)
    if isinstance(message, SnapshotChunkAck) and not 0 <= message.next_offset <= MAX_SNAPSHOT_BYTES:
        raise ProtocolError(f"SnapshotChunkAck.next_offset {message.next_offset} is out of range")


def check_chunk_shape(chunk: SnapshotChunk) -> None:
    """A chunk lies within its snapshot, which is bounded, and carries a bounded piece of it."""
    if len(chunk.data) > MAX_SNAPSHOT_CHUNK_BYTES:
        raise ProtocolError(f"a snapshot chunk of {len(chunk.data)} bytes")
    if not 0 < chunk.total_bytes <= MAX_SNAPSHOT_BYTES:
        raise ProtocolError(f"a snapshot of {chunk.total_bytes} bytes")
    if not 0 <= chunk.offset <= chunk.total_bytes - len(chunk.data):
        raise ProtocolError(
            f"a chunk at {chunk.offset} of {len(chunk.data)} bytes in a snapshot of "
            f"{chunk.total_bytes}"
        )
    if not 0 <= chunk.checksum < 1 << 32:
        raise ProtocolError(f"a chunk checksum {chunk.checksum} out of range")
    if chunk.snapshot_term > chunk.term:
        raise ProtocolError(f"a snapshot of term {chunk.snapshot_term} sent in term {chunk.term}")


def check_append_shape(request: AppendRequest) -> None:
    """A correct leader's entries follow ``prev_index`` one by one, their terms never going
    back and never above its own; raises ``ProtocolError`` otherwise."""
    expected_index = request.prev_index + 1
    previous_term = request.prev_term
    if previous_term > request.term:
        raise ProtocolError(
            f"malformed append from {request.source}: previous term {previous_term} after "
            f"its own term {request.term}"
        )
    for entry in request.entries:
        if entry.index != expected_index or not previous_term <= entry.term <= request.term:
            raise ProtocolError(
                f"malformed append from {request.source}: entry {entry.index}@{entry.term} "
                f"after {expected_index - 1}@{previous_term} in term {request.term}"
            )
        if entry.kind is EntryKind.CONFIG:
            Membership.decode(entry.data)  # a membership no correct leader writes: refused
        expected_index += 1
        previous_term = entry.term
    if expected_index - 1 > MAX_INDEX:
        raise ProtocolError(f"malformed append from {request.source}: index out of range")
