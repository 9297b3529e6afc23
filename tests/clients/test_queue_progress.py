"""A consumer's progress in one queue: acknowledgements in any order, and ranges skipped at
once (a tag filter's, retention's) without a step per offset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.clients.consumer import _QueueProgress


def test_millions_of_offsets_retention_deleted_count_as_consumed_at_once() -> None:
    progress = _QueueProgress(0)
    progress.done_range(0, 5_000_000)
    assert progress.next_to_commit == 5_000_000


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), max_size=30))
def test_the_committable_offset_is_the_end_of_the_done_prefix(
    ranges: list[tuple[int, int]],
) -> None:
    progress = _QueueProgress(3)
    done: set[int] = set()
    for start, length in ranges:
        progress.done_range(start, start + length)
        done.update(range(start, start + length))
        expected = 3
        while expected in done:
            expected += 1
        assert progress.next_to_commit == expected
