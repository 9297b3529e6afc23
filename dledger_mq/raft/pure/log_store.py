"""The log store: what the Raft core reads, and what the driver writes.

The core only *reads* a store (``first_index``, ``last_index``, ``term``, ``entries``,
``hard_state``). The driver writes it while handling a ``Ready``: ``append`` then
``set_hard_state``, and only then sends the Ready's messages. The on-disk CommitLog implements the
same protocol.
"""

from __future__ import annotations

from typing import Protocol

from dledger_mq.raft.pure.messages import Entry, HardState


class LogCompacted(Exception):
    """The entry asked for was trimmed from the front of the log."""


class LogUnavailable(Exception):
    """The entry asked for is beyond the end of the log."""


class LogStore(Protocol):
    def hard_state(self) -> HardState: ...

    def first_index(self) -> int:
        """Index of the first entry still held (``last_index() + 1`` when empty)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry, or ``first_index() - 1`` when empty (0 for a new log)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``.

        Index 0 (before the log) has term 0. The term of ``first_index() - 1`` is kept when the
        prefix is trimmed so that the entry after it can still be matched.
        """
        ...

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        """Entries in ``[low, high)`` up to ``max_bytes``, but always at least one."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Write ``entries``, first dropping any held entry at or after ``entries[0].index``.

        Invariant: ``entries[0].index <= last_index() + 1`` and indexes are consecutive.
        """
        ...

    def set_hard_state(self, hard_state: HardState) -> None: ...

    def trim_prefix(self, index: int) -> None:
        """Forget entries before ``index`` (retention); the driver never trims what it needs."""
        ...

    def reset_to_snapshot(self, index: int, term: int) -> None:
        """Hold no entries, starting after a snapshot at (index, term) (``Ready.snapshot``)."""
        ...


class MemoryLogStore:
    """A log store in memory: for tests, the simulator, and as the model of the on-disk one."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        # _entries[0] is a sentinel holding the index and term just before the first entry.
        self._entries: list[Entry] = [Entry(index=0, term=0)]

    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise LogCompacted(index)
        if index - offset >= len(self._entries):
            raise LogUnavailable(index)
        return self._entries[index - offset].term

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        offset = self._entries[0].index
        if low <= offset:
            raise LogCompacted(low)
        if high > self.last_index() + 1:
            raise LogUnavailable(high)
        result: list[Entry] = []
        size = 0
        for entry in self._entries[low - offset : high - offset]:
            size += entry.size_bytes
            if result and size > max_bytes:
                break
            result.append(entry)
        return result

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        offset = self._entries[0].index
        first = entries[0].index
        assert offset < first <= self.last_index() + 1, (first, offset, self.last_index())
        for before, after in zip(entries, entries[1:], strict=False):
            if after.index != before.index + 1 or after.term < before.term:
                raise ValueError(
                    f"entries must be consecutive with terms not going down: "
                    f"{before.index}@{before.term} then {after.index}@{after.term}"
                )
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def trim_prefix(self, index: int) -> None:
        """Forget entries before ``index`` (retention); callers never trim what they still need."""
        offset = self._entries[0].index
        if index <= offset + 1:
            return
        assert index <= self.last_index() + 1
        keep = self._entries[index - 1 - offset]
        self._entries = [Entry(index=keep.index, term=keep.term), *self._entries[index - offset :]]

    def reset_to_snapshot(self, index: int, term: int) -> None:
        self._entries = [Entry(index=index, term=term)]
        self._hard_state = HardState(
            self._hard_state.term, self._hard_state.vote, max(self._hard_state.commit, index)
        )

    def copy(self) -> MemoryLogStore:
        clone = MemoryLogStore()
        clone._hard_state = self._hard_state
        clone._entries = list(self._entries)
        return clone
