"""Pending timers of delayed and retried messages: (due time, log position) pairs, in a
timing wheel of one-minute buckets.

A timer names the message it delivers by its place in the log (``raft_index << SLOT_BITS |
slot``): the body stays in the CommitLog, and the timer costs 16 bytes (two ``array('q')``
items) plus its bucket's share, so a million pending timers take about 20 MB. Within a bucket
the pairs are unsorted until the bucket is the earliest one, then sorted once by (due,
position); the leader fires them in that order, so removing them advances a start index
instead of moving memory. Everything here is deterministic: replicas that add and remove the
same timers hold the same wheel, and ``comparable`` says so.
"""

from __future__ import annotations

import bisect
import heapq
from array import array
from collections.abc import Iterator

BUCKET_MS = 60_000


class _Bucket:
    __slots__ = ("dues", "positions", "sorted", "start")

    def __init__(self) -> None:
        self.dues = array("q")
        self.positions = array("q")
        #: Items before ``start`` were removed (fired in order); they go at the next compaction.
        self.start = 0
        self.sorted = True

    def __len__(self) -> int:
        return len(self.dues) - self.start

    def sort(self) -> None:
        if self.sorted:
            return
        pairs = sorted(zip(self.dues[self.start :], self.positions[self.start :], strict=True))
        self.dues = array("q", (due for due, _ in pairs))
        self.positions = array("q", (position for _, position in pairs))
        self.start = 0
        self.sorted = True

    def add(self, due_ms: int, position: int) -> None:
        if self.sorted and len(self) and due_ms < self.dues[-1]:
            # Positions only grow (timers are added in log order): a later due goes last,
            # an earlier one is put in its place, after the timers due at the same time.
            at = bisect.bisect_right(self.dues, due_ms, self.start)
            self.dues.insert(at, due_ms)
            self.positions.insert(at, position)
            return
        self.dues.append(due_ms)
        self.positions.append(position)

    def remove(self, due_ms: int, position: int) -> bool:
        start = self.start
        if start < len(self.dues) and self.positions[start] == position:
            if self.dues[start] != due_ms:
                return False
            self.start += 1
            if self.start * 2 > len(self.dues) and self.start > 64:
                del self.dues[: self.start]
                del self.positions[: self.start]
                self.start = 0
            return True
        try:
            at = self.positions.index(position, start)
        except ValueError:
            return False
        if self.dues[at] != due_ms:
            return False
        del self.dues[at]
        del self.positions[at]
        return True

    def pairs(self) -> Iterator[tuple[int, int]]:
        return zip(self.dues[self.start :], self.positions[self.start :], strict=True)


class TimerWheel:
    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        #: Bucket keys, a heap; a key whose bucket emptied is dropped when it comes to the top.
        self._keys: list[int] = []
        self._count = 0
        #: The lowest position pending, cached (None: to be found again).
        self._lowest: int | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, due_ms: int, position: int) -> None:
        key = due_ms // BUCKET_MS
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
            heapq.heappush(self._keys, key)
        bucket.add(due_ms, position)
        self._count += 1
        if self._count == 1:
            self._lowest = position

    def remove(self, due_ms: int, position: int) -> bool:
        """Remove the timer (``due_ms``, ``position``); False if there is none (fired before)."""
        key = due_ms // BUCKET_MS
        bucket = self._buckets.get(key)
        if bucket is None or not bucket.remove(due_ms, position):
            return False
        self._count -= 1
        if not bucket:
            del self._buckets[key]
        if self._lowest == position:
            self._lowest = None
        return True

    def _head(self) -> _Bucket | None:
        while self._keys:
            bucket = self._buckets.get(self._keys[0])
            if bucket is not None:
                bucket.sort()
                return bucket
            heapq.heappop(self._keys)
        return None

    def next_due_ms(self) -> int | None:
        """When the earliest timer is due; None with none pending."""
        head = self._head()
        return None if head is None else head.dues[head.start]

    def due(self, now_ms: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` timers due at ``now_ms``, earliest first, as (due, position)."""
        found: list[tuple[int, int]] = []
        earliest = self.next_due_ms()
        if earliest is None or earliest > now_ms:
            return found  # the common case, asked after every apply: no sorting
        for key in sorted(self._buckets):
            if key * BUCKET_MS > now_ms or len(found) >= limit:
                break
            bucket = self._buckets[key]
            bucket.sort()
            for due_ms, position in bucket.pairs():
                if due_ms > now_ms or len(found) >= limit:
                    return found
                found.append((due_ms, position))
        return found

    def lowest_position(self) -> int | None:
        """The lowest log position of a pending timer (the log must keep it); None if none."""
        if self._count == 0:
            return None
        if self._lowest is None:
            self._lowest = min(
                min(bucket.positions[bucket.start :]) for bucket in self._buckets.values()
            )
        return self._lowest

    def pairs(self) -> list[tuple[int, int]]:
        """Every pending timer, sorted by (due, position)."""
        return sorted(pair for bucket in self._buckets.values() for pair in bucket.pairs())

    def comparable(self) -> list[tuple[int, int]]:
        return self.pairs()
