"""Producer and consumer requests to a broker group (tags 60-69).

Sends go to the group's leader (otherwise ``NotLeader`` with the leader's address); pulls may be
served by any replica, up to what it has applied.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import attrs

from dledger_mq.errors import UsageError
from dledger_mq.wire.codec import MAX_NAME_LENGTH, Codec
from dledger_mq.wire.handshake import HANDSHAKE_TYPES, ErrorFieldValue

# -- Delayed messages, retries and dead letters (docs/broker.md, "Timers") ---------------------

#: System properties: the broker sets them (a producer sets only ``DELIVER_AT_PROPERTY``, through
#: ``send(delay=...)``). Names starting with ``__`` are reserved.
SYSTEM_PROPERTY_PREFIX = "__"
#: When a delayed message becomes visible (ms since the epoch, decimal).
DELIVER_AT_PROPERTY = "__DELIVER_AT_MS"
#: On a retried or dead-lettered message: where it was first stored, its id there, which
#: delivery of it this is (1: the first), and why the last one failed.
ORIGIN_TOPIC_PROPERTY = "__ORIGIN_TOPIC"
ORIGIN_MSG_ID_PROPERTY = "__ORIGIN_MSG_ID"
ATTEMPT_PROPERTY = "__ATTEMPT"
LAST_ERROR_PROPERTY = "__LAST_ERROR"
MAX_LAST_ERROR_LENGTH = 1024
RETRY_TOPIC_PREFIX = "%RETRY%"
DLQ_TOPIC_PREFIX = "%DLQ%"


def attempt_of(properties: dict[str, str]) -> int:
    """Which delivery of its message this is (1: the first), as its properties say."""
    attempt = properties.get(ATTEMPT_PROPERTY, "1")
    return int(attempt) if attempt.isascii() and attempt.isdigit() and len(attempt) < 10 else 1


def retry_topic(group: str) -> str:
    """The topic a consumer group's failed messages wait in for their next attempt."""
    return RETRY_TOPIC_PREFIX + group


def dead_letter_topic(group: str) -> str:
    """Where a consumer group's messages go after their last attempt failed."""
    return DLQ_TOPIC_PREFIX + group


def system_topic_group(topic: str) -> str | None:
    """The consumer group a retry or dead-letter topic belongs to; None for any other topic."""
    for prefix in (RETRY_TOPIC_PREFIX, DLQ_TOPIC_PREFIX):
        if topic.startswith(prefix) and len(topic) > len(prefix):
            return topic[len(prefix) :]
    return None


def queue_for_sharding_key(sharding_key: str, queue_count: int) -> int:
    """Same key, same queue, as long as the queue count stays the same: CRC-32 of the key's
    UTF-8, the same on every node, process and Python version (``hash()`` is salted). A
    producer applies it to a topic's queues over all its groups, (group, queue id) sorted; a
    broker, to its own queues when a message names none."""
    if queue_count < 1:
        raise ValueError(f"queue_count must be at least 1, got {queue_count}")
    return zlib.crc32(sharding_key.encode()) % queue_count


@attrs.frozen
class OutgoingMessage:
    """A message as a producer sends it; the broker picks the queue unless ``queue_id`` >= 0."""

    topic: str
    body: bytes
    tags: str | None = None
    keys: tuple[str, ...] = ()
    properties: dict[str, str] = attrs.field(factory=dict)
    sharding_key: str | None = None
    #: With ``sequence``: the idempotence key; a retried send is stored once.
    producer_id: str | None = None
    sequence: int | None = None
    born_timestamp_ms: int = 0
    queue_id: int = -1


@attrs.frozen
class SendRequest:
    messages: tuple[OutgoingMessage, ...]


@attrs.frozen
class Receipt:
    """Where one message is stored, or why it was refused (``error_code`` non-empty)."""

    msg_id: str
    topic: str
    queue_id: int
    offset: int
    #: True when the broker had stored this (producer id, sequence) before: the original.
    duplicate: bool
    error_code: str = ""
    error_message: str = ""
    #: The refusal's fields (``errors.DledgerError.fields``), as an ``ErrorReply`` carries them.
    error_fields: dict[str, ErrorFieldValue] = attrs.field(factory=dict)

    @property
    def group(self) -> str:
        """The broker group that stored the message: a queue is (group, ``queue_id``)."""
        return self.msg_id.rsplit(":", 2)[0] if self.msg_id else ""


@attrs.frozen
class SendReply:
    receipts: tuple[Receipt, ...]


@attrs.frozen
class PullRequest:
    topic: str
    queue_id: int
    offset: int
    max_count: int = 32
    tag_expression: str = "*"
    #: Long polling: with nothing new, wait up to this long for a matching message to commit.
    wait_ms: int = 0
    #: The consumer group pulling, for the metrics only ("": none named).
    consumer_group: str = ""


@attrs.frozen
class StoredMessage:
    msg_id: str
    topic: str
    queue_id: int
    offset: int
    body: bytes
    tags: str | None
    keys: tuple[str, ...]
    properties: dict[str, str]
    born_timestamp_ms: int
    store_timestamp_ms: int

    @property
    def group(self) -> str:
        """The broker group that stored it (message ids are ``group:raft_index:slot``)."""
        return self.msg_id.rsplit(":", 2)[0]


@attrs.frozen
class PullReply:
    messages: tuple[StoredMessage, ...]
    #: Where the next pull of this queue starts (past messages the filter skipped).
    next_offset: int
    max_offset: int


@attrs.frozen
class QueueOffset:
    queue_id: int
    offset: int


@attrs.frozen
class CommitOffsetsRequest:
    group: str
    topic: str
    offsets: tuple[QueueOffset, ...]
    #: The group's reset generation the consumer read its offsets at (None: never stale).
    reset_generation: int | None = None


@attrs.frozen
class CommitOffsetsReply:
    #: The group's offsets were reset since the consumer read them: its commits were ignored,
    #: and it must read its offsets again.
    stale: bool = False


@attrs.frozen
class QueryOffsetsRequest:
    group: str
    topic: str


@attrs.frozen
class QueryOffsetsReply:
    #: Per queue, the committed offset, or -1 when the group never committed there.
    offsets: tuple[QueueOffset, ...]
    #: Bumped by every offset reset of the group; commits carry it back.
    reset_generation: int = 0


@attrs.frozen
class GroupQueues:
    """A topic's queues in one broker group: ``0 .. queues - 1``."""

    group: str
    queues: int


#: The most broker groups a consumer heartbeat's layout may name.
MAX_LAYOUT_GROUPS = 256


@attrs.frozen
class ConsumerHeartbeat:
    """A consumer says it is alive; the leader answers with the queues it should read."""

    group: str
    topic: str
    consumer_id: str
    #: Broadcasting: every consumer reads every queue (and keeps its own progress).
    broadcast: bool = False
    #: Queues this consumer still holds: reading them, or a delivered message not yet
    #: acknowledged. On a FIFO topic no one else is given them meanwhile.
    held: tuple[int, ...] = ()
    #: The topic's queues in every broker group, as the consumer learned them from naming:
    #: the leader balances all of them over the consumers and answers with its own group's
    #: share. Empty: only this group's queues are balanced.
    layout: tuple[GroupQueues, ...] = ()


@attrs.frozen
class ConsumerHeartbeatReply:
    #: This consumer's queues: the topic's queues spread over the group's live consumers.
    queue_ids: tuple[int, ...]
    #: The group's live consumers, sorted.
    consumers: tuple[str, ...]
    #: A FIFO topic: deliver each queue's messages one at a time, each after the last's ack.
    fifo: bool = False
    #: The group's reset generation: a consumer that read its offsets at another one reads
    #: them again (an operator reset them).
    reset_generation: int = 0
    #: The group's retry policy (a FIFO queue retries in place, on the consumer).
    max_attempts: int = 0
    retry_delays_ms: tuple[int, ...] = ()


@attrs.frozen
class SendBackRequest:
    """The message at (``topic``, ``queue_id``, ``offset``) failed for consumer ``group``: the
    leader stores it again in the group's retry topic (``%RETRY%group``), to be delivered after
    the group's next delay, or in its dead-letter topic (``%DLQ%group``) after the last attempt
    or with ``dead_letter``. ``producer_id`` and ``sequence`` make it idempotent, as a send."""

    group: str
    topic: str
    queue_id: int
    offset: int
    error: str
    producer_id: str
    sequence: int
    dead_letter: bool = False


@attrs.frozen
class SendBackReply:
    receipt: Receipt
    #: Stored in the dead-letter topic (no attempt left), not the retry topic.
    dead_letter: bool


@attrs.frozen
class OffsetForTimeRequest:
    """The first offset of the queue stored at or after ``timestamp_ms`` (its end if none)."""

    topic: str
    queue_id: int
    timestamp_ms: int


@attrs.frozen
class OffsetForTimeReply:
    offset: int


@attrs.frozen
class ReceiveRequest:
    """A simple consumer's receive (RocketMQ 5's POP): up to ``max_messages`` of the topic's
    queues in this broker group that match ``tag_expression``, each invisible to other
    receives of the group for ``invisible_ms``; with none, wait up to ``wait_ms``."""

    group: str
    topic: str
    tag_expression: str
    max_messages: int
    invisible_ms: int
    wait_ms: int = 0


@attrs.frozen
class ReceivedRecord:
    """One received message: ``handle`` names this receive of it (ack, change invisible)."""

    message: StoredMessage
    attempt: int
    handle: str
    invisible_until_ms: int


@attrs.frozen
class ReceiveReply:
    messages: tuple[ReceivedRecord, ...]


@attrs.frozen
class AckRequest:
    group: str
    topic: str
    handles: tuple[str, ...]


@attrs.frozen
class AckReply:
    #: Per handle: False when it no longer names the message's receive (acknowledged before,
    #: or invisible no longer and received again).
    acked: tuple[bool, ...]


@attrs.frozen
class ChangeInvisibleRequest:
    group: str
    topic: str
    handle: str
    invisible_ms: int


@attrs.frozen
class ChangeInvisibleReply:
    changed: bool
    invisible_until_ms: int


# -- Message queries (docs/operations.md, "Finding a message") ---------------------------------

#: The most messages one query answers, and the longest message id and key a query may name
#: (ids: ``broker/message_id.py``; keys: the broker's ``MAX_KEY_LENGTH``).
MAX_QUERY_MESSAGES = 1024
MAX_QUERY_MESSAGE_ID_LENGTH = 300
MAX_QUERY_KEY_LENGTH = 255


def _bounded_text(max_length: int) -> Callable[[object, attrs.Attribute[str], str], None]:
    """A validator: the field is a string of 1 to ``max_length`` characters. Our own caller
    gets ``UsageError``; decoding a peer's message turns it into ``ProtocolError``."""

    def check(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if type(value) is not str or not 1 <= len(value) <= max_length:
            raise UsageError(f"{attribute.name} must be 1 to {max_length} characters")

    return check


def _query_limit(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 1 <= value <= MAX_QUERY_MESSAGES:
        raise UsageError(f"{attribute.name} must be in [1, {MAX_QUERY_MESSAGES}]")


@attrs.frozen
class MessageView:
    """One stored message as a query shows it: where it is and what it holds."""

    message_id: str
    topic: str
    queue_id: int
    #: Its offset in its queue; -1: in no queue under this id (a delayed or retried message,
    #: delivered later as a copy that carries this id, or not delivered yet).
    offset: int
    keys: tuple[str, ...]
    tags: str | None
    properties: dict[str, str]
    body: bytes
    born_time_ms: int
    store_time_ms: int
    #: Which delivery of its message this is (1: the first; a retry copy says 2, 3, ...).
    attempt: int

    @property
    def group(self) -> str:
        """The broker group that stored it (message ids are ``group:raft_index:slot``)."""
        return self.message_id.rsplit(":", 2)[0]


def view_of(message: StoredMessage) -> MessageView:
    """A pulled message as a query shows it."""
    return MessageView(
        message_id=message.msg_id,
        topic=message.topic,
        queue_id=message.queue_id,
        offset=message.offset,
        keys=message.keys,
        tags=message.tags,
        properties=message.properties,
        body=message.body,
        born_time_ms=message.born_timestamp_ms,
        store_time_ms=message.store_timestamp_ms,
        attempt=attempt_of(message.properties),
    )


@attrs.frozen
class GetMessageRequest:
    """The message a message id names (``group:raft_index:slot``), from the group's leader."""

    message_id: str = attrs.field(validator=_bounded_text(MAX_QUERY_MESSAGE_ID_LENGTH))


@attrs.frozen
class GetMessageReply:
    message: MessageView


@attrs.frozen
class FindMessagesRequest:
    """The newest ``limit`` messages of ``topic`` stored with ``key`` among their keys, from
    the group's leader (its key index)."""

    topic: str = attrs.field(validator=_bounded_text(MAX_NAME_LENGTH))
    key: str = attrs.field(validator=_bounded_text(MAX_QUERY_KEY_LENGTH))
    limit: int = attrs.field(default=32, validator=_query_limit)


@attrs.frozen
class FindMessagesReply:
    #: Oldest first.
    messages: tuple[MessageView, ...]
    #: More may match than were looked at (``limit`` reached, or the bound on candidates).
    truncated: bool


BROKER_TYPES: dict[int, type] = {
    60: SendRequest,
    61: SendReply,
    62: PullRequest,
    63: PullReply,
    64: CommitOffsetsRequest,
    65: CommitOffsetsReply,
    66: QueryOffsetsRequest,
    67: QueryOffsetsReply,
    68: ConsumerHeartbeat,
    69: ConsumerHeartbeatReply,
    83: SendBackRequest,
    84: SendBackReply,
    87: OffsetForTimeRequest,
    88: OffsetForTimeReply,
    89: ReceiveRequest,
    90: ReceiveReply,
    91: AckRequest,
    92: AckReply,
    93: ChangeInvisibleRequest,
    94: ChangeInvisibleReply,
    95: GetMessageRequest,
    96: GetMessageReply,
    97: FindMessagesRequest,
    98: FindMessagesReply,
}

BROKER_CODEC = Codec({**HANDSHAKE_TYPES, **BROKER_TYPES})
