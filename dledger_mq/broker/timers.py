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
        #: Sorted once it fires (``due``); until then timers are appended, in O(1).
        self.sorted = False

    def __len__(self) -> int:
        return len(self.dues) - self.start

    def sort(self) -> None:
        if self.sorted:
            return
        dues, positions = self.dues[self.start :], self.positions[self.start :]
        # By due time alone, stably: equal ones keep their order, which is position order
        # (timers are added in log order). Cheaper than sorting pairs.
        order = sorted(range(len(dues)), key=dues.__getitem__)
        self.dues = array("q", (dues[i] for i in order))
        self.positions = array("q", (positions[i] for i in order))
        self.start = 0
        self.sorted = True

    def earliest(self) -> int:
        return self.dues[self.start] if self.sorted else min(self.dues[self.start :])

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
        #: The earliest due time pending, cached (None: to be found again, or none pending).
        self._earliest: int | None = None

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
        if self._count == 1 or (self._lowest is not None and position < self._lowest):
            self._lowest = position
        if self._earliest is not None and due_ms < self._earliest:
            self._earliest = due_ms

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
        if self._earliest == due_ms:
            self._earliest = None
        return True

    def next_due_ms(self) -> int | None:
        """When the earliest timer is due; None with none pending. Asked after every apply:
        cached, and found without sorting (a bucket is sorted only once it fires)."""
        if self._earliest is None and self._count:
            while self._keys and self._keys[0] not in self._buckets:
                heapq.heappop(self._keys)
            self._earliest = self._buckets[self._keys[0]].earliest()
        return self._earliest

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

    def columns(self) -> tuple[array[int], array[int]]:
        """Every pending timer as two columns (due times, positions), bucket by bucket, each in
        its order: what a snapshot records, without a Python object per timer (a snapshot of a
        million timers must not stall the node). ``add`` in this order rebuilds the wheel."""
        dues, positions = array("q"), array("q")
        for key in sorted(self._buckets):
            bucket = self._buckets[key]
            dues.extend(bucket.dues[bucket.start :])
            positions.extend(bucket.positions[bucket.start :])
        return dues, positions

    def pairs(self) -> list[tuple[int, int]]:
        """Every pending timer, sorted by (due, position)."""
        return sorted(pair for bucket in self._buckets.values() for pair in bucket.pairs())

    def comparable(self) -> list[tuple[int, int]]:
        return self.pairs()
