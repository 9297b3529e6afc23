"""Pure, deterministic placement: messages onto queues, and queues onto a group's consumers.

Queue selection (the leader, before proposing): a message with a sharding key goes to
``queue_for_sharding_key`` (CRC-32 of the key's UTF-8 modulo the queue count, the same on every
node, process and Python version, unlike ``hash()``, which is salted per process); a message
without one goes round-robin. Changing a topic's queue count moves keys to other queues.

Queue assignment (clustering mode): ``assign_queues`` spreads a topic's queues over the group's
live consumers in contiguous blocks, like RocketMQ's ``AllocateMessageQueueAveragely``, from
sorted inputs, so every node that knows the same consumers computes the same assignment.

FIFO hand-over: on a FIFO topic a queue must never be read by two consumers at once, even
while it moves from one to another (a rebalance, or a new leader that does not yet know who
holds what). ``fifo_grant`` gives a consumer only the assigned queues that no other live
consumer still holds (holding: reading it, or a delivered message of it not yet acknowledged);
the old holder, no longer assigned the queue, finishes its message and lets go; the next
heartbeat of the new owner gets it. A new leader first waits one membership expiry, granting
only what consumers say they already hold, so that every live holder has spoken.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

# Producers place keyed messages over a topic's groups with the same formula (wire contract).
from dledger_mq.wire.broker import queue_for_sharding_key as queue_for_sharding_key


class RoundRobinQueues:
    """The leader's round-robin cursor per topic; leader-local, never replicated.

    Which queue an unkeyed message lands on does not matter for correctness (the choice is in
    the entry, so replicas agree), so a new leader may start its cursors anew.
    """

    def __init__(self) -> None:
        self._next_by_topic: dict[str, int] = {}

    def next_queue(self, topic: str, queue_count: int) -> int:
        if queue_count < 1:
            raise ValueError(f"queue_count must be at least 1, got {queue_count}")
        position = self._next_by_topic.get(topic, 0)
        # Kept below the count, so that the cursor never grows without bound.
        self._next_by_topic[topic] = (position + 1) % queue_count
        return position % queue_count

    def forget(self, topic: str) -> None:
        """Drop a deleted topic's cursor."""
        self._next_by_topic.pop(topic, None)


def select_queue(
    topic: str, queue_count: int, sharding_key: str | None, round_robin: RoundRobinQueues
) -> int:
    """The queue for a message that did not name one."""
    if sharding_key is not None:
        return queue_for_sharding_key(sharding_key, queue_count)
    return round_robin.next_queue(topic, queue_count)


class _Sortable(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


_QueueT = TypeVar("_QueueT", bound=_Sortable)


def assign_queues(
    queues: Iterable[_QueueT], consumer_ids: Iterable[str]
) -> dict[str, tuple[_QueueT, ...]]:
    """Every queue to exactly one consumer, each consumer within one queue of any other.

    Queues may be queue ids or, across broker groups, (group, queue id) pairs: anything sortable.
    Inputs are deduplicated and sorted first, so their order never matters. The first
    ``len(queues) % len(consumers)`` consumers (by id) take one queue more; with more consumers
    than queues the last consumers get none. Every consumer appears in the result.
    """
    sorted_queues = sorted(set(queues))
    sorted_consumers = sorted(set(consumer_ids))
    if not sorted_consumers:
        return {}
    consumer_count = len(sorted_consumers)
    base, extra = divmod(len(sorted_queues), consumer_count)
    assignment: dict[str, tuple[_QueueT, ...]] = {}
    start = 0
    for position, consumer_id in enumerate(sorted_consumers):
        size = base + (1 if position < extra else 0)
        assignment[consumer_id] = tuple(sorted_queues[start : start + size])
        start += size
    return assignment


def queues_of(
    consumer_id: str, queues: Iterable[_QueueT], consumer_ids: Iterable[str]
) -> tuple[_QueueT, ...]:
    """The queues ``assign_queues`` gives to ``consumer_id`` (none if it is not among them)."""
    return assign_queues(queues, consumer_ids).get(consumer_id, ())


def fifo_grant(
    consumer_id: str,
    assigned: Iterable[_QueueT],
    holders: Mapping[str, Collection[_QueueT]],
    settling: bool,
) -> tuple[_QueueT, ...]:
    """The assigned queues ``consumer_id`` may read now on a FIFO topic.

    ``holders``: each live consumer's held queues, as its last heartbeat said. ``settling``: the
    leader is new and not every holder has spoken yet, so only what this consumer already holds.
    """
    held_by_others = {
        queue for other, held in holders.items() if other != consumer_id for queue in held
    }
    mine = set(holders.get(consumer_id, ()))
    return tuple(
        queue
        for queue in assigned
        if queue not in held_by_others and (not settling or queue in mine)
    )
