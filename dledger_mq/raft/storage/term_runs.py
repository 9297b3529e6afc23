"""The terms of a log's entries as runs: (first index, term) where the term changes.

A term changes only when a new leader appends, so a log of millions of entries has a handful of
runs: 16 bytes a run instead of 8 bytes an entry (``CommitLog`` kept an array of every entry's
term; its memory grew with history).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable


class TermRuns:
    __slots__ = ("_starts", "_terms")

    def __init__(self) -> None:
        #: ``_terms[k]`` is the term of entries ``_starts[k]`` up to ``_starts[k + 1]``.
        self._starts: array[int] = array("q")
        self._terms: array[int] = array("q")

    def __len__(self) -> int:
        """The number of runs (not of entries)."""
        return len(self._starts)

    def term(self, index: int) -> int:
        """The term of entry ``index``, which the caller knows is held."""
        return self._terms[bisect.bisect_right(self._starts, index) - 1]

    def terms(self, low: int, high: int) -> list[int]:
        """The terms of entries ``[low, high)``."""
        result: list[int] = []
        run = bisect.bisect_right(self._starts, low) - 1
        index = low
        while index < high:
            end = self._starts[run + 1] if run + 1 < len(self._starts) else high
            count = min(end, high) - index
            result.extend([self._terms[run]] * count)
            index += count
            run += 1
        return result

    def extend(self, first_index: int, terms: Iterable[int]) -> None:
        """Entries from ``first_index`` on have ``terms`` (the caller appends in order)."""
        last = self._terms[-1] if self._terms else None
        for index, term in enumerate(terms, start=first_index):
            if term != last:
                self._starts.append(index)
                self._terms.append(term)
                last = term

    def runs(self, low: int, high: int) -> list[tuple[int, int]]:
        """The runs of entries ``[low, high)``, the first starting at ``low``."""
        if low >= high or not self._starts:
            return []
        first = max(0, bisect.bisect_right(self._starts, low) - 1)
        last = bisect.bisect_left(self._starts, high)
        result = [(max(self._starts[k], low), self._terms[k]) for k in range(first, last)]
        return result

    def truncate(self, index: int) -> None:
        """Forget entries from ``index`` on."""
        while self._starts and self._starts[-1] >= index:
            self._starts.pop()
            self._terms.pop()

    def drop_before(self, index: int) -> None:
        """Forget runs that end before ``index`` (the run holding it stays)."""
        drop = bisect.bisect_right(self._starts, index) - 1
        if drop > 0:
            del self._starts[:drop]
            del self._terms[:drop]

    def clear(self) -> None:
        del self._starts[:]
        del self._terms[:]
