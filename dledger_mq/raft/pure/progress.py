"""What a leader knows about each follower's log, and the push pipeline towards it.

A follower starts in PROBE: one AppendRequest at a time until one succeeds and the match point is
known. Then it is in REPLICATE: the leader pushes batches optimistically, up to
``max_inflight_appends`` unacknowledged at once (DLedger's entry pusher, etcd's inflights). A
follower that needs entries the leader's log no longer holds is in SNAPSHOT: nothing is pushed
until it acknowledges the leader's snapshot (an append response matching up to its index).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Invariant: match < next."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "recent_active",
        "read_context",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # In PROBE, one append is outstanding; no more until its answer or a heartbeat reply.
        self.probe_sent = False
        # In REPLICATE, the last index of each append in flight, oldest first.
        self.inflight: deque[int] = deque()
        # Heard from since the leader last checked its quorum.
        self.recent_active = False
        # The latest read context it answered a heartbeat of (``RaftCore.read_index``).
        self.read_context = 0

    def is_paused(self, max_inflight_appends: int) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= max_inflight_appends

    def sent(self, last_sent_index: int | None) -> None:
        """An append went out carrying entries up to ``last_sent_index`` (None: no entries)."""
        if self.state is ProgressState.REPLICATE:
            if last_sent_index is not None:
                self.next = last_sent_index + 1
                self.inflight.append(last_sent_index)
        else:
            self.probe_sent = True

    def acknowledged(self, match_index: int) -> bool:
        """A success reply; returns whether it told us anything new."""
        self.free_to(match_index)
        if match_index <= self.match:
            return False
        self.match = match_index
        self.next = max(self.next, match_index + 1)
        self.probe_sent = False
        return True

    def rejected(self, rejected_index: int, next_probe_index: int) -> bool:
        """A rejection of the append at ``rejected_index``; returns False when it is stale."""
        if self.state is ProgressState.SNAPSHOT:
            return False  # an answer to an append sent before the snapshot was needed
        if self.state is ProgressState.REPLICATE:
            if rejected_index <= self.match:
                return False
            self.become_probe()
            return True
        if self.next - 1 != rejected_index:
            return False
        self.next = max(min(rejected_index, next_probe_index + 1), self.match + 1)
        self.probe_sent = False
        return True

    def free_to(self, index: int) -> None:
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()

    def lost_entries(self, last_index: int) -> None:
        """The follower lost its log and holds only up to ``last_index`` now (it is
        recovering): its match goes back, the only time it does, and probing starts there."""
        self.match = min(self.match, last_index)
        self.become_probe()

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
