"""Queue selection (sharding key, round-robin) and the clustering-mode assignment of queues to
a group's consumers: every queue to exactly one consumer, balanced within one, deterministic."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.broker.assignment import (
    RoundRobinQueues,
    assign_queues,
    fifo_grant,
    queue_for_sharding_key,
    queues_of,
    select_queue,
)

consumer_ids = st.lists(st.text(min_size=1, max_size=8), max_size=12)
queue_counts = st.integers(min_value=0, max_value=40)


@given(queue_counts, consumer_ids)
def test_every_queue_goes_to_exactly_one_consumer(queue_count: int, consumers: list[str]) -> None:
    assignment = assign_queues(range(queue_count), consumers)
    assert set(assignment) == set(consumers)
    assigned = [queue for queues in assignment.values() for queue in queues]
    if consumers:
        assert sorted(assigned) == list(range(queue_count))
    else:
        assert assigned == []


@given(queue_counts, consumer_ids.filter(bool))
def test_consumers_are_balanced_within_one_queue(queue_count: int, consumers: list[str]) -> None:
    sizes = [len(queues) for queues in assign_queues(range(queue_count), consumers).values()]
    assert max(sizes) - min(sizes) <= 1


@given(queue_counts, consumer_ids, st.randoms(use_true_random=False))
def test_the_order_of_the_inputs_never_matters(
    queue_count: int, consumers: list[str], shuffler: random.Random
) -> None:
    queues = list(range(queue_count))
    shuffled_queues, shuffled_consumers = queues[:], consumers + consumers[:1]
    shuffler.shuffle(shuffled_queues)
    shuffler.shuffle(shuffled_consumers)
    assert assign_queues(queues, consumers) == assign_queues(shuffled_queues, shuffled_consumers)


def test_blocks_are_contiguous_like_rocketmq_allocate_averagely() -> None:
    assert assign_queues(range(8), ["c3", "c1", "c2"]) == {
        "c1": (0, 1, 2),
        "c2": (3, 4, 5),
        "c3": (6, 7),
    }
    assert assign_queues(range(2), ["a", "b", "c"]) == {"a": (0,), "b": (1,), "c": ()}
    assert queues_of("b", range(4), ["b", "a"]) == (2, 3)
    assert queues_of("stranger", range(4), ["a"]) == ()


def test_queues_across_broker_groups_are_assigned_as_pairs() -> None:
    queues = [("broker-b", 0), ("broker-a", 1), ("broker-a", 0), ("broker-b", 1)]
    assert assign_queues(queues, ["x", "y"]) == {
        "x": (("broker-a", 0), ("broker-a", 1)),
        "y": (("broker-b", 0), ("broker-b", 1)),
    }


@given(st.text(max_size=20), st.integers(min_value=1, max_value=64))
def test_the_same_sharding_key_always_gets_the_same_queue(key: str, queue_count: int) -> None:
    queue_id = queue_for_sharding_key(key, queue_count)
    assert 0 <= queue_id < queue_count
    assert queue_for_sharding_key(key, queue_count) == queue_id
    assert select_queue("orders", queue_count, key, RoundRobinQueues()) == queue_id


def test_sharding_is_a_stable_hash_not_python_hash() -> None:
    # CRC-32 of the UTF-8 key: the same in every process, so every producer and leader agrees.
    assert [queue_for_sharding_key(key, 8) for key in ("order-1", "order-2", "客户")] == [7, 5, 5]


def test_round_robin_cycles_each_topic_on_its_own() -> None:
    round_robin = RoundRobinQueues()
    picks = [select_queue(topic, 3, None, round_robin) for topic in ["a", "b", "a", "a", "b", "a"]]
    assert picks == [0, 0, 1, 2, 1, 0]
    assert round_robin.next_queue("a", 2) == 1  # a smaller count still lands in range
    round_robin.forget("a")
    assert round_robin.next_queue("a", 3) == 0


def test_zero_queues_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        queue_for_sharding_key("k", 0)
    with pytest.raises(ValueError):
        RoundRobinQueues().next_queue("a", 0)


def test_fifo_grant_withholds_a_queue_another_consumer_still_holds() -> None:
    holders = {"a": (0, 1), "b": ()}
    # "b" is now assigned queue 1, but "a" has not let go of it yet.
    assert fifo_grant("b", (1, 2), holders, settling=False) == (2,)
    # Once "a" stops holding it, "b" gets it.
    assert fifo_grant("b", (1, 2), {"a": (0,), "b": ()}, settling=False) == (1, 2)
    # A consumer keeps what it holds itself.
    assert fifo_grant("a", (0, 1), holders, settling=False) == (0, 1)


def test_fifo_grant_while_a_new_leader_settles_gives_only_what_is_already_held() -> None:
    holders = {"a": (0,), "b": ()}
    assert fifo_grant("a", (0, 1), holders, settling=True) == (0,)
    assert fifo_grant("b", (2, 3), holders, settling=True) == ()
    assert fifo_grant("b", (2, 3), holders, settling=False) == (2, 3)
