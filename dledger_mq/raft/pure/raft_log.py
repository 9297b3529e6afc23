"""The core's view of the log: the persisted store plus entries not yet persisted.

Entries the core appends (as leader, or from a leader's AppendRequest) go first to the
*unstable* tail, are handed to the driver in a ``Ready``, and leave the unstable tail when the
driver reports them persisted (``stable_to``). An index at or after ``unstable_offset`` is read
from the unstable tail even if the store still holds an older entry there: that older entry was
overwritten by a conflict and will be replaced on disk when the Ready is persisted.

A follower that takes in a leader's snapshot (``restore``) holds no entries until after it; until
the driver has made its store start there too (``snapshot_installed``), ``pending_snapshot`` stands
in for the store's start.

Invariant: applied <= committed <= last_index.
"""

from __future__ import annotations

from collections.abc import Callable

from dledger_mq.raft.pure.log_store import LogStore
from dledger_mq.raft.pure.membership import Membership, MembershipHistory
from dledger_mq.raft.pure.messages import Entry, EntryKind

#: Entries read at a time when the log is scanned for memberships at start.
_SCAN_BYTES = 4 << 20


class RaftLog:
    def __init__(self, store: LogStore, applied: int, membership: Membership | None = None) -> None:
        """``membership``: the one in force at ``applied`` (a snapshot's, or the bootstrap);
        ``CONFIG`` entries after it are read from the store."""
        self.store = store
        # The commit index reaches disk lazily; entries the state machine applied were committed.
        self.committed = max(store.hard_state().commit, applied)
        self.unstable: list[Entry] = []
        self.unstable_offset = store.last_index() + 1
        # ``applied`` is the state machine's own: it rebuilds from the log after a restart.
        assert 0 <= applied <= store.last_index(), (applied, store.last_index())
        self.applied = applied
        #: (index, term) of a snapshot to install: the log starts after it; the store does too
        #: once the driver has carried out the Ready that takes it.
        self.pending_snapshot: tuple[int, int] | None = None
        #: The memberships of the log's ``CONFIG`` entries (None: no membership is tracked,
        #: as for a log without one given).
        self.memberships = MembershipHistory(applied, membership or Membership.of(("untracked",)))
        self.tracks_membership = membership is not None
        #: Called whenever the current membership changes (set by the core).
        self.on_membership_change: Callable[[], None] = lambda: None
        if membership is not None:
            self.memberships.appended(applied + 1, self._scan_configs(applied + 1))

    def _scan_configs(self, low: int) -> list[tuple[int, Membership]]:
        configs = []
        high = self.store.last_index() + 1
        while low < high:
            entries = self.store.entries(low, high, _SCAN_BYTES)
            configs += _configs_of(entries)
            low = entries[-1].index + 1
        return configs

    @property
    def membership(self) -> Membership:
        return self.memberships.current

    # -- reading ---------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot[0] + 1
        return self.store.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable_offset + len(self.unstable) - 1
        return self.unstable_offset - 1

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at ``index``, or 0 when the index is beyond the log (never matches a real term)."""
        if index >= self.unstable_offset:
            position = index - self.unstable_offset
            if position < len(self.unstable):
                return self.unstable[position].term
            return 0
        if self.pending_snapshot is not None:
            snapshot_index, snapshot_term = self.pending_snapshot
            return snapshot_term if index == snapshot_index else 0
        if index < self.store.first_index() - 1:
            return 0
        return self.store.term(index)

    def match_term(self, index: int, term: int) -> bool:
        # Beyond the end, term() says 0, which must not match a prev_term of 0.
        return index <= self.last_index() and self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: is a log ending at (last_index, last_term) at least as up to date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def slice(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        """Entries in ``[low, high)``, at most ``max_bytes`` of them but always at least one."""
        if low >= high:
            return []
        result: list[Entry] = []
        if low < self.unstable_offset:
            result = self.store.entries(low, min(high, self.unstable_offset), max_bytes)
            if len(result) < min(high, self.unstable_offset) - low:
                return result
        if high > self.unstable_offset:
            size = sum(entry.size_bytes for entry in result)
            start = max(low, self.unstable_offset) - self.unstable_offset
            for entry in self.unstable[start : high - self.unstable_offset]:
                size += entry.size_bytes
                if result and size > max_bytes:
                    break
                result.append(entry)
        return result

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with its term.

        A follower answers a rejected append with this, so the leader can skip a whole run of
        entries from a term it does not have instead of probing one index at a time.
        """
        index = min(index, self.last_index())
        floor = self.first_index() - 1
        while index > floor:
            entry_term = self.term(index)
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return index, self.term(index)

    # -- writing ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries at ``entries[0].index``, dropping any entry from there on."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.committed, f"truncating committed entry {first} <= {self.committed}"
        if self.tracks_membership:
            configs = _configs_of(entries)
            if (configs or first <= self.memberships.newest_index) and self.memberships.appended(
                first, configs
            ):
                self.on_membership_change()
        end = self.unstable_offset + len(self.unstable)
        if first == end:
            self.unstable.extend(entries)
        elif first <= self.unstable_offset:
            self.unstable_offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - self.unstable_offset :]
            self.unstable.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries; returns the last index now known to match, or None."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for position, entry in enumerate(entries):
            if self.term(entry.index) != entry.term:
                self.append(list(entries[position:]))
                break
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), (index, self.last_index())
            self.committed = index
            return True
        return False

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable)

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        if self.committed <= self.applied or self.pending_snapshot is not None:
            return []
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted the log up to (index, term); stop holding those entries."""
        if index < self.unstable_offset or self.term(index) != term:
            # Overwritten since the Ready was taken; the new entries come in the next Ready.
            return
        del self.unstable[: index + 1 - self.unstable_offset]
        self.unstable_offset = index + 1

    def restore(self, index: int, term: int, membership: Membership | None = None) -> None:
        """Start over after a leader's snapshot at (index, term), committed there: every entry
        held goes (they did not match the leader's log beyond the commit index). ``membership``:
        the snapshot's (None: a snapshot that carries none keeps the current one)."""
        assert index > self.committed, (index, self.committed)
        self.pending_snapshot = (index, term)
        self.unstable = []
        self.unstable_offset = index + 1
        self.committed = index
        if self.tracks_membership and self.memberships.reset(
            index, membership or self.memberships.current
        ):
            self.on_membership_change()

    def snapshot_installed(self, index: int, term: int) -> None:
        """The driver made the store start after the snapshot and the state machine hold it."""
        self.applied = max(self.applied, index)
        if self.pending_snapshot == (index, term):
            self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index
        self.memberships.forget_before(index)


def _configs_of(entries: list[Entry]) -> list[tuple[int, Membership]]:
    """The memberships of the ``CONFIG`` entries among ``entries`` (checked when they came in:
    a stored one that does not decode is a corrupt log, and says so)."""
    return [
        (entry.index, Membership.decode(entry.data))
        for entry in entries
        if entry.kind is EntryKind.CONFIG
    ]
