"""Messages between brokers, clients and naming nodes (tags 50-55).

A broker replica registers with every naming node and repeats the registration as its
heartbeat; clients ask any naming node where a topic lives.
"""

from __future__ import annotations

import attrs

from dledger_mq.wire.codec import Codec
from dledger_mq.wire.handshake import HANDSHAKE_TYPES


@attrs.frozen
class RegisteredTopic:
    """A topic as one broker group holds it: its queues there are ``0 .. queues - 1``."""

    name: str
    queues: int


@attrs.frozen
class BrokerRegistration:
    """One broker replica as it describes itself: its group, role and term, and its topics."""

    group: str
    node_id: str
    role: str
    term: int
    address: str
    topics: tuple[RegisteredTopic, ...]
    #: The group's idempotence window (replicated broker setting): a producer keeps the span of
    #: its sequences in flight within it.
    idempotence_window: int


@attrs.frozen
class RegisterBroker:
    registration: BrokerRegistration


@attrs.frozen
class RegisterReply:
    #: The registration lapses unless repeated within this many milliseconds.
    expires_in_ms: int


@attrs.frozen
class GetRoutes:
    """Routes of ``topic``, or of every topic when it is empty."""

    topic: str


@attrs.frozen
class TopicRoute:
    """One broker group's part of a topic: a topic spread over groups has one route per group,
    and a queue is named by (group, queue id)."""

    topic: str
    group: str
    leader_id: str | None
    leader_address: str | None
    term: int
    #: Client addresses of every live replica of the group, the leader included.
    replicas: tuple[str, ...]
    #: See ``BrokerRegistration.idempotence_window``.
    idempotence_window: int
    #: The topic's queues in this group: ``0 .. queues - 1``.
    queues: int


@attrs.frozen
class GroupRoute:
    """A live broker group, whatever its topics: where to send what creates a new topic."""

    group: str
    leader_id: str | None
    leader_address: str | None
    term: int
    replicas: tuple[str, ...]
    idempotence_window: int


@attrs.frozen
class RoutesReply:
    routes: tuple[TopicRoute, ...]
    groups: tuple[GroupRoute, ...] = ()


NAMING_CODEC = Codec(
    {
        **HANDSHAKE_TYPES,
        50: RegisterBroker,
        51: RegisterReply,
        52: GetRoutes,
        53: RoutesReply,
    }
)
