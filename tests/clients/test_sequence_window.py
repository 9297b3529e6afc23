"""The producer keeps the span of its sequences in flight within the broker's idempotence window:
a send that would widen it waits (it never fails), in call order, and a batch larger than the
window is refused before anything is sent."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.clients.producer import SequenceWindow
from dledger_mq.errors import UsageError


async def test_a_send_waits_while_the_oldest_in_flight_would_fall_out_of_the_window() -> None:
    window = SequenceWindow()
    first = await window.acquire(3, window=4)  # sequences 1-3
    assert first == 1
    admitted: list[int] = []

    async def send(count: int) -> None:
        admitted.append(await window.acquire(count, window=4))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, 2)  # would be 4-5: the span 1..5 is 5 > 4
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == []
        window.release(first)
        await trio.testing.wait_all_tasks_blocked()
    assert admitted == [4]
    assert window.span == 2


async def test_sends_are_admitted_in_call_order() -> None:
    window = SequenceWindow()
    held = await window.acquire(3, window=4)  # sequences 1-3
    order: list[str] = []

    async def send(name: str, count: int) -> None:
        first = await window.acquire(count, window=4)
        order.append(name)
        window.release(first)  # answered at once

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "big", 4)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "small", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        window.release(held)
    # The small one (sequence 4) fitted at once, but the big one asked first.
    assert order == ["big", "small"]


async def test_a_batch_larger_than_the_window_is_refused_at_once() -> None:
    window = SequenceWindow()
    with pytest.raises(UsageError, match="exceeds the broker's idempotence window of 8"):
        await window.acquire(9, window=8)
    assert await window.acquire(8, window=8) == 1


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    window=st.integers(1, 32),
    counts=st.lists(st.integers(1, 32), min_size=1, max_size=40),
)
def test_the_span_in_flight_never_exceeds_the_window(
    seed: int, window: int, counts: list[int]
) -> None:
    """Many concurrent sends, answered in a random order: every admitted send's sequences are
    within ``window`` of the oldest one still in flight, and every send is admitted."""
    rng = random.Random(seed)
    counts = [min(count, window) for count in counts]
    in_flight: dict[int, int] = {}
    answered: list[int] = []

    async def send(count: int) -> None:
        first = await window_.acquire(count, window)
        oldest = min(in_flight) if in_flight else first
        assert first + count - 1 - oldest < window, (first, count, oldest, window)
        in_flight[first] = count
        await trio.sleep(rng.random())  # the broker answers whenever
        del in_flight[first]
        window_.release(first)
        answered.append(count)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for count in counts:
                nursery.start_soon(send, count)

    window_ = SequenceWindow()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(answered) == sorted(counts)
    assert window_.span == 0
