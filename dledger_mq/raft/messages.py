"""The records the Raft core reads and writes: log entries, hard state and peer messages.

They are frozen attrs classes so that the same classes can go on the wire (issue: the node
runtime) and into the CommitLog without a second definition.
"""

from __future__ import annotations

import enum

import attrs


class EntryKind(enum.IntEnum):
    NORMAL = 0
    #: Appended by every new leader at the start of its term so that it can commit (Raft 5.4.2).
    NOOP = 1


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
    """Leader liveness and commit propagation; ``commit`` is capped at the follower's match."""

    term: int
    source: str
    target: str
    commit: int


@attrs.frozen(slots=True)
class HeartbeatResponse:
    term: int
    source: str
    target: str


@attrs.frozen(slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells an up-to-date follower to campaign at once."""

    term: int
    source: str
    target: str


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
)
