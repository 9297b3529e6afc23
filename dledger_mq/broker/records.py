"""The broker commands that go into Raft entries, and their compact, strict, versioned codec.

An entry's data is one msgpack array ``[format_version, tag, field, field, ...]``: the version
says how to read the rest, the tag names the command, and the fields follow in declaration order
(nested records are nested arrays, never maps with field names). ``docs/broker.md`` lists every
command's layout.

``SendBatch`` is the hot path: every replica applies every message, so ``BrokerState`` reads its
messages straight from the unpacked arrays (``unpack_command``, ``send_batch_fields`` and
``check_message_fields``) instead of building a ``Message`` per message. Both paths share
``check_message_fields``, so a message that apply stores always decodes again later
(``read_messages``), and a message the records refuse is never stored.

Decoding is strict: a value of the wrong type is refused, never coerced; every failure is a
``BadRequest`` subclass: ``MalformedCommand`` for bytes that are not a command, and the typed
errors (``InvalidName``, ``InvalidMessage``, ...) for a command whose values break a rule.
"""

from __future__ import annotations

import enum
import functools
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import msgpack

from dledger_mq.broker.access import MAX_RULES_PER_USER, Rule, check_access_key
from dledger_mq.errors import (
    InvalidMessage,
    InvalidName,
    InvalidRule,
    InvalidSettings,
    InvalidTopicConfig,
    MalformedCommand,
    UnsupportedCommandVersion,
)
from dledger_mq.wire.client_auth import STORED_KEY_BYTES

#: The format version written first in every command; a reader refuses any other.
FORMAT_VERSION = 1

#: A message's position is packed as ``raft_index << SLOT_BITS | slot`` in one 64-bit integer.
SLOT_BITS = 16
MAX_BATCH_MESSAGES = 1 << SLOT_BITS
#: The packed position must stay a signed 64-bit integer (``array('q')``).
MAX_RAFT_INDEX = (1 << (63 - SLOT_BITS)) - 1
MAX_INT64 = (1 << 63) - 1

MAX_TOPIC_NAME_LENGTH = 127
MAX_GROUP_NAME_LENGTH = 255
MAX_PRODUCER_ID_LENGTH = 255
MAX_SHARDING_KEY_LENGTH = 255
MAX_TAG_LENGTH = 255
MAX_KEYS = 32
MAX_KEY_LENGTH = 255
#: Characters of all property names and values of one message together (RocketMQ: 32767 bytes).
MAX_PROPERTIES_LENGTH = 32767
MAX_QUEUE_COUNT = 1024
#: Commits in one ``CommitOffsets`` and queues in one ``ResetOffsets``.
MAX_OFFSET_ITEMS = 65536
#: The highest ``max_body_bytes`` a broker may be configured with: a batch entry must still fit
#: in one peer frame (64 MiB).
MAX_BODY_BYTES_CEILING = 32 << 20
MAX_IDEMPOTENCE_WINDOW = 1 << 16
MAX_PRODUCERS_CEILING = 1_000_000
MAX_TOPICS_CEILING = 1_000_000

DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_QUEUE_COUNT = 4
DEFAULT_IDEMPOTENCE_WINDOW = 1024
DEFAULT_MAX_PRODUCERS = 4096
DEFAULT_PRODUCER_EXPIRY_MS = 24 * 3600 * 1000
DEFAULT_MAX_TOPICS = 10_000
#: The furthest ahead a message may be scheduled (RocketMQ 5: 3 days), and the timers (delayed
#: and retried messages) a group holds pending at most.
DEFAULT_MAX_DELAY_MS = 3 * 24 * 3600 * 1000
MAX_DELAY_CEILING_MS = 365 * 24 * 3600 * 1000
DEFAULT_MAX_TIMERS = 2_000_000
MAX_TIMERS_CEILING = 100_000_000

# -- Delayed messages, retries and dead letters (docs/broker.md, "Timers") ---------------------

# The system property names and the retry and dead-letter topic names are part of the wire
# format (clients read them): ``wire/broker.py`` defines them.
#: RocketMQ's retry levels 3 to 18: 10 s, 30 s, 1 min, 2 min, ... 10 min, 20 min, 30 min, 1 h,
#: 2 h; and 16 retries after the first delivery.
DEFAULT_RETRY_DELAYS_MS = tuple(
    seconds * 1000
    for seconds in (10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200)
)
DEFAULT_MAX_ATTEMPTS = 17
MAX_ATTEMPTS_CEILING = 1000
MAX_RETRY_DELAYS = 64
MAX_RETRY_POLICIES = 65536
#: Simple consumers (RocketMQ 5's POP): messages received and not yet acknowledged per
#: (group, topic, queue) at most, and such queues per broker group.
MAX_POP_INFLIGHT = 65536
MAX_POP_QUEUES = 65536
MAX_INVISIBLE_MS = 12 * 3600 * 1000


#: Topic and consumer-group names: letters, digits and ``_ . % -`` (``%`` for the retry and
#: dead-letter topics to come, as in RocketMQ's ``%RETRY%group``).
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.%\-]+")
#: Tag expressions split on ``||`` and strip whitespace, so a tag holding either could never be
#: subscribed to; ``*`` means "every tag".
_TAG_PATTERN = re.compile(r"[^\s|*]+")


class CommandTag(enum.IntEnum):
    SEND_BATCH = 1
    COMMIT_OFFSETS = 2
    RESET_OFFSETS = 3
    CREATE_TOPIC = 4
    UPDATE_TOPIC = 5
    DELETE_TOPIC = 6
    CONFIGURE_BROKER = 7
    ADD_USER = 8
    REMOVE_USER = 9
    GRANT = 10
    REVOKE = 11
    DELIVER_TIMERS = 12
    CONFIGURE_GROUP = 13
    POP_MESSAGES = 14
    ACK_POPPED = 15
    CHANGE_INVISIBLE = 16
    DELETE_GROUP = 17


# ---------------------------------------------------------------------------------------------
# Name and message rules, shared by the records and the apply hot path.


@functools.lru_cache(maxsize=4096)
def _name_problem(name: str, max_length: int) -> str | None:
    # Cached: apply checks the topic of every message, and a broker sees few distinct names.
    if not name:
        return "must not be empty"
    if len(name) > max_length:
        return f"longer than {max_length} characters"
    if _NAME_PATTERN.fullmatch(name) is None:
        return "only letters, digits and _ . % - are allowed"
    return None


def check_name(kind: str, name: object, max_length: int) -> None:
    """Raise ``InvalidName`` unless ``name`` is a valid topic or group name."""
    if type(name) is not str:
        raise InvalidName(kind, repr(name), "must be a string")
    problem = _name_problem(name, max_length)
    if problem is not None:
        raise InvalidName(kind, name, problem)


def check_topic_name(name: object) -> None:
    check_name("topic", name, MAX_TOPIC_NAME_LENGTH)


def check_group_name(name: object) -> None:
    check_name("group", name, MAX_GROUP_NAME_LENGTH)


@functools.lru_cache(maxsize=4096)
def tag_problem(tag: str) -> str | None:
    """Why ``tag`` cannot be a message tag, or None. Shared with the tag-expression parser."""
    if len(tag) > MAX_TAG_LENGTH:
        return f"longer than {MAX_TAG_LENGTH} characters"
    if _TAG_PATTERN.fullmatch(tag) is None:
        return "must be non-empty without whitespace, '|' or '*'"
    return None


def _is_int64(value: object) -> bool:
    # bool is an int subclass; true/false where a number belongs is still garbage.
    return type(value) is int and 0 <= value <= MAX_INT64


def _check_optional_text(field: str, value: object, max_length: int) -> None:
    if value is None:
        return
    if type(value) is not str:
        raise InvalidMessage(field, "must be a string or None")
    if not 0 < len(value) <= max_length:
        raise InvalidMessage(field, f"must have 1 to {max_length} characters")


def check_message_fields(
    topic: object,
    queue_id: object,
    body: object,
    tags: object,
    keys: object,
    properties: object,
    born_timestamp_ms: object,
    producer_id: object,
    sequence: object,
    sharding_key: object,
) -> None:
    """Raise ``InvalidName`` or ``InvalidMessage`` unless the fields make a valid message.

    Checks types and the format's fixed limits, not the broker's settings (``max_body_bytes``),
    which ``BrokerState`` checks: a message stored under one setting must stay readable after the
    setting changes.
    """
    check_topic_name(topic)
    if not (type(queue_id) is int and 0 <= queue_id < MAX_QUEUE_COUNT):
        raise InvalidMessage("queue_id", f"must be an integer in [0, {MAX_QUEUE_COUNT})")
    if type(body) is not bytes:
        raise InvalidMessage("body", "must be bytes")
    if tags is not None:
        if type(tags) is not str:
            raise InvalidMessage("tags", "must be a string or None")
        problem = tag_problem(tags)
        if problem is not None:
            raise InvalidMessage("tags", problem)
    if type(keys) is not tuple and type(keys) is not list:
        raise InvalidMessage("keys", "must be a sequence of strings")
    if len(keys) > MAX_KEYS:
        raise InvalidMessage("keys", f"more than {MAX_KEYS} keys")
    for key in keys:
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise InvalidMessage("keys", f"each key must have 1 to {MAX_KEY_LENGTH} characters")
    if type(properties) is not dict and type(properties) is not types.MappingProxyType:
        raise InvalidMessage("properties", "must be a mapping of strings to strings")
    if properties:
        length = 0
        for name, value in properties.items():
            if type(name) is not str or not name or type(value) is not str:
                raise InvalidMessage("properties", "names must be non-empty, values strings")
            length += len(name) + len(value)
        if length > MAX_PROPERTIES_LENGTH:
            raise InvalidMessage("properties", f"more than {MAX_PROPERTIES_LENGTH} characters")
    if not _is_int64(born_timestamp_ms):
        raise InvalidMessage("born_timestamp_ms", "must be a non-negative 64-bit integer")
    _check_optional_text("producer_id", producer_id, MAX_PRODUCER_ID_LENGTH)
    if sequence is not None and not _is_int64(sequence):
        raise InvalidMessage("sequence", "must be a non-negative 64-bit integer or None")
    if (producer_id is None) != (sequence is None):
        raise InvalidMessage("sequence", "producer_id and sequence come together or not at all")
    _check_optional_text("sharding_key", sharding_key, MAX_SHARDING_KEY_LENGTH)


# ---------------------------------------------------------------------------------------------
# Records.


def _keys_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        # tuple("o-1") would silently become three one-letter keys.
        raise InvalidMessage("keys", "must be a sequence of strings, not one string")
    if not isinstance(value, Sequence):
        raise InvalidMessage("keys", "must be a sequence of strings")
    return tuple(value)


def _frozen_properties(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidMessage("properties", "must be a mapping of strings to strings")
    # A read-only copy, so that a frozen message stays frozen.
    return types.MappingProxyType(dict(value))


@attrs.frozen
class Message:
    """One message as the producer gave it; the leader adds the store timestamp per batch.

    ``producer_id`` and ``sequence`` make the send idempotent (both None: not idempotent).
    ``queue_id`` is chosen before proposing (``dledger_mq.broker.assignment``).
    """

    topic: str
    queue_id: int
    body: bytes
    tags: str | None = None
    keys: tuple[str, ...] = attrs.field(default=(), converter=_keys_tuple)
    #: Not hashed: a read-only mapping has no hash; equal messages still hash equal.
    properties: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_properties, hash=False
    )
    born_timestamp_ms: int = 0
    producer_id: str | None = None
    sequence: int | None = None
    sharding_key: str | None = None

    def __attrs_post_init__(self) -> None:
        check_message_fields(
            self.topic,
            self.queue_id,
            self.body,
            self.tags,
            self.keys,
            self.properties,
            self.born_timestamp_ms,
            self.producer_id,
            self.sequence,
            self.sharding_key,
        )


def _check_queue_count(topic: str, queue_count: object) -> None:
    if not (type(queue_count) is int and 1 <= queue_count <= MAX_QUEUE_COUNT):
        raise InvalidTopicConfig(topic, f"queue_count must be an integer in [1, {MAX_QUEUE_COUNT}]")


@attrs.frozen
class BrokerSettings:
    """Settings that change what apply does, so they are replicated state, never local config.

    Two replicas applying the same entry under different limits would diverge; so the leader
    proposes ``ConfigureBroker`` when its node configuration differs from these, and every
    replica applies the change at the same index.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    auto_create_topics: bool = True
    default_queue_count: int = DEFAULT_QUEUE_COUNT
    #: Sequences remembered per idempotent producer: its highest and the ``window - 1`` below.
    idempotence_window: int = DEFAULT_IDEMPOTENCE_WINDOW
    #: Idempotent producers remembered at once; the least recently active is forgotten first.
    max_producers: int = DEFAULT_MAX_PRODUCERS
    #: A producer silent this long (by store timestamps) is forgotten.
    producer_expiry_ms: int = DEFAULT_PRODUCER_EXPIRY_MS
    #: Topics the group holds at most; creating one more is refused (``TopicLimitReached``).
    #: Last: a ``ConfigureBroker`` written before it existed has one field fewer.
    max_topics: int = DEFAULT_MAX_TOPICS
    #: How far ahead a message may be scheduled, and how many timers may be pending (a send
    #: past either is refused). Added after ``max_topics``.
    max_delay_ms: int = DEFAULT_MAX_DELAY_MS
    max_timers: int = DEFAULT_MAX_TIMERS

    def __attrs_post_init__(self) -> None:
        bounds = {
            "max_topics": (1, MAX_TOPICS_CEILING),
            "max_body_bytes": (1, MAX_BODY_BYTES_CEILING),
            "default_queue_count": (1, MAX_QUEUE_COUNT),
            "idempotence_window": (1, MAX_IDEMPOTENCE_WINDOW),
            "max_producers": (1, MAX_PRODUCERS_CEILING),
            "producer_expiry_ms": (1, MAX_INT64),
            "max_delay_ms": (1, MAX_DELAY_CEILING_MS),
            "max_timers": (1, MAX_TIMERS_CEILING),
        }
        for name, (lowest, highest) in bounds.items():
            value = getattr(self, name)
            if not (type(value) is int and lowest <= value <= highest):
                raise InvalidSettings(name, f"must be an integer in [{lowest}, {highest}]")
        if type(self.auto_create_topics) is not bool:
            raise InvalidSettings("auto_create_topics", "must be true or false")


@attrs.frozen
class ConfigureBroker:
    settings: BrokerSettings


def _messages_tuple(value: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(value)


def _delays_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


@attrs.frozen
class RetryPolicy:
    """How a consumer group's failed messages are retried: delivered at most ``max_attempts``
    times in all; before attempt ``n + 1`` the message waits ``delays_ms[n - 1]`` (the last
    delay repeats when the list is shorter)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    delays_ms: tuple[int, ...] = attrs.field(
        default=DEFAULT_RETRY_DELAYS_MS, converter=_delays_tuple
    )

    def __attrs_post_init__(self) -> None:
        if not (type(self.max_attempts) is int and 1 <= self.max_attempts <= MAX_ATTEMPTS_CEILING):
            raise InvalidSettings(
                "max_attempts", f"must be an integer in [1, {MAX_ATTEMPTS_CEILING}]"
            )
        if not 1 <= len(self.delays_ms) <= MAX_RETRY_DELAYS:
            raise InvalidSettings("retry_delays", f"must list 1 to {MAX_RETRY_DELAYS} delays")
        for delay in self.delays_ms:
            if not (type(delay) is int and 0 <= delay <= MAX_DELAY_CEILING_MS):
                raise InvalidSettings(
                    "retry_delays", f"each must be an integer in [0, {MAX_DELAY_CEILING_MS}] ms"
                )

    def delay_before(self, attempt: int) -> int:
        """How long a message waits before delivery number ``attempt`` (2 or more)."""
        return self.delays_ms[min(attempt - 2, len(self.delays_ms) - 1)]


@attrs.frozen
class ConfigureGroup:
    """Sets a consumer group's retry policy (before any consumer of it exists, if need be)."""

    group: str
    policy: RetryPolicy

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)
        if type(self.policy) is not RetryPolicy:
            raise MalformedCommand("a group's policy must be a RetryPolicy")


@attrs.frozen
class DeleteGroup:
    """Forgets a consumer group in this broker group: its committed offsets, its retry policy
    and its receives in flight (its retry and dead-letter topics stay, as topics)."""

    group: str

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)


def _fired_tuple(value: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((due, position) for due, position in value)


@attrs.frozen
class DeliverTimers:
    """The leader fires due timers: ``fired[i]`` is (due, position) of the timer whose message
    ``messages[i]`` copies (the copy sits at slot ``i`` of this entry, as in a ``SendBatch``).
    Apply stores a copy only if its timer is still pending and due by ``store_timestamp_ms``,
    so an entry proposed twice (a new leader firing what its predecessor fired) stores once."""

    store_timestamp_ms: int
    messages: tuple[Message, ...] = attrs.field(converter=_messages_tuple)
    fired: tuple[tuple[int, int], ...] = attrs.field(converter=_fired_tuple)

    def __attrs_post_init__(self) -> None:
        _check_send_batch_header(self.store_timestamp_ms, len(self.messages))
        _check_fired(self.fired, len(self.messages))
        for message in self.messages:
            if type(message) is not Message:
                raise InvalidMessage("batch", "every item must be a Message")


def _ints_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _pairs_tuple(value: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a, b in value)


@attrs.frozen
class PopQueue:
    """What one receive takes from one queue: ``offsets`` (new ones below ``scan_end``, or
    received before and invisible no longer), and ``scan_end``, where the next new one is
    looked for (offsets below it that are not taken were filtered out: consumed)."""

    queue_id: int
    scan_end: int
    offsets: tuple[int, ...] = attrs.field(converter=_ints_tuple)

    def __attrs_post_init__(self) -> None:
        _check_queue_id("pop", self.queue_id)
        _check_offset("scan_end", self.scan_end)
        if len(self.offsets) > MAX_POP_INFLIGHT:
            raise InvalidMessage("offsets", f"more than {MAX_POP_INFLIGHT}")
        for offset in self.offsets:
            _check_offset("offset", offset)


def _pop_queues_tuple(value: Iterable[PopQueue]) -> tuple[PopQueue, ...]:
    return tuple(value)


@attrs.frozen
class PopMessages:
    """A simple consumer's receive, as the leader chose it: in each queue the offsets are
    handed out (invisible to other receives) until ``store_timestamp_ms + invisible_ms``.
    ``messages[i]`` are copies of messages that used their last attempt, for the group's
    dead-letter topic, each of the received-and-expired offset ``dead[i]`` (queue, offset);
    they sit at slot ``i`` of this entry, as in a ``SendBatch``."""

    store_timestamp_ms: int
    messages: tuple[Message, ...] = attrs.field(converter=_messages_tuple)
    group: str
    topic: str
    invisible_ms: int
    queues: tuple[PopQueue, ...] = attrs.field(converter=_pop_queues_tuple)
    dead: tuple[tuple[int, int], ...] = attrs.field(converter=_pairs_tuple)

    def __attrs_post_init__(self) -> None:
        if not _is_int64(self.store_timestamp_ms):
            raise InvalidMessage("store_timestamp_ms", "must be a non-negative 64-bit integer")
        if len(self.messages) > MAX_BATCH_MESSAGES or len(self.dead) != len(self.messages):
            raise MalformedCommand("POP_MESSAGES names one dead offset per message")
        check_group_name(self.group)
        check_topic_name(self.topic)
        if not (type(self.invisible_ms) is int and 1 <= self.invisible_ms <= MAX_INVISIBLE_MS):
            raise InvalidMessage("invisible_ms", f"must be in [1, {MAX_INVISIBLE_MS}]")
        if len(self.queues) > MAX_QUEUE_COUNT:
            raise InvalidMessage("queues", f"more than {MAX_QUEUE_COUNT}")
        for queue in self.queues:
            if type(queue) is not PopQueue:
                raise MalformedCommand("every item must be a PopQueue")
        for queue_id, offset in self.dead:
            _check_queue_id("dead", queue_id)
            _check_offset("dead offset", offset)


@attrs.frozen
class PoppedRef:
    """A received message, by the receive that handed it out (``pop_id``: its entry's index):
    an acknowledgement or a change of a receive that another one superseded does nothing."""

    queue_id: int
    offset: int
    pop_id: int

    def __attrs_post_init__(self) -> None:
        _check_queue_id("popped", self.queue_id)
        _check_offset("offset", self.offset)
        _check_offset("pop_id", self.pop_id)


def _refs_tuple(value: Iterable[PoppedRef]) -> tuple[PoppedRef, ...]:
    return tuple(value)


@attrs.frozen
class AckPopped:
    group: str
    topic: str
    refs: tuple[PoppedRef, ...] = attrs.field(converter=_refs_tuple)

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)
        check_topic_name(self.topic)
        if not 1 <= len(self.refs) <= MAX_OFFSET_ITEMS:
            raise InvalidMessage("refs", f"must hold 1 to {MAX_OFFSET_ITEMS}")
        for ref in self.refs:
            if type(ref) is not PoppedRef:
                raise MalformedCommand("every item must be a PoppedRef")


@attrs.frozen
class ChangeInvisible:
    """A received message stays invisible until ``store_timestamp_ms + invisible_ms`` instead."""

    group: str
    topic: str
    ref: PoppedRef
    store_timestamp_ms: int
    invisible_ms: int

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)
        check_topic_name(self.topic)
        if type(self.ref) is not PoppedRef:
            raise MalformedCommand("ref must be a PoppedRef")
        if not _is_int64(self.store_timestamp_ms):
            raise InvalidMessage("store_timestamp_ms", "must be a non-negative 64-bit integer")
        if not (type(self.invisible_ms) is int and 0 <= self.invisible_ms <= MAX_INVISIBLE_MS):
            raise InvalidMessage("invisible_ms", f"must be in [0, {MAX_INVISIBLE_MS}]")


def _check_fired(fired: object, message_count: int) -> None:
    if type(fired) is not tuple and type(fired) is not list:
        raise MalformedCommand("DELIVER_TIMERS fired must be an array")
    if len(fired) != message_count:
        raise MalformedCommand("DELIVER_TIMERS names one timer per message")
    for pair in fired:
        if (
            (type(pair) is not tuple and type(pair) is not list)
            or len(pair) != 2
            or not _is_int64(pair[0])
            or not _is_int64(pair[1])
        ):
            raise MalformedCommand("a fired timer is [due_ms, position]")


@attrs.frozen
class CreateTopic:
    """Creates a topic; creating it again with the same configuration is not an error."""

    name: str
    queue_count: int
    #: FIFO topics deliver each queue one message at a time, in order, within a group.
    fifo: bool = False

    def __attrs_post_init__(self) -> None:
        _check_topic(self.name, self.queue_count, self.fifo)


@attrs.frozen
class UpdateTopic:
    """Replaces a topic's configuration. Queues can be added, never removed."""

    name: str
    queue_count: int
    fifo: bool = False

    def __attrs_post_init__(self) -> None:
        _check_topic(self.name, self.queue_count, self.fifo)


def _check_topic(name: str, queue_count: int, fifo: bool) -> None:
    check_topic_name(name)
    _check_queue_count(name, queue_count)
    if type(fifo) is not bool:
        raise InvalidTopicConfig(name, "fifo must be true or false")


@attrs.frozen
class DeleteTopic:
    """Drops a topic, its consume queues and every group's offsets in it.

    Its messages stay in the Raft log until the log is trimmed but are no longer reachable; a
    topic created again under the same name starts at offset 0 (message ids stay unique).
    """

    name: str

    def __attrs_post_init__(self) -> None:
        check_topic_name(self.name)


def _commits_tuple(value: Iterable[OffsetCommit]) -> tuple[OffsetCommit, ...]:
    return tuple(value)


def _queue_offsets_tuple(value: Iterable[QueueOffset]) -> tuple[QueueOffset, ...]:
    return tuple(value)


@attrs.frozen
class SendBatch:
    """Messages stored by one entry, at slots 0, 1, 2, ... in this order.

    The leader stamps ``store_timestamp_ms`` (apply never reads a clock); it may coalesce sends
    of many producers and topics into one batch.
    """

    store_timestamp_ms: int
    messages: tuple[Message, ...] = attrs.field(converter=_messages_tuple)

    def __attrs_post_init__(self) -> None:
        _check_send_batch_header(self.store_timestamp_ms, len(self.messages))
        for message in self.messages:
            if type(message) is not Message:
                raise InvalidMessage("batch", "every item must be a Message")


def _check_send_batch_header(store_timestamp_ms: object, message_count: int) -> None:
    if not _is_int64(store_timestamp_ms):
        raise InvalidMessage("store_timestamp_ms", "must be a non-negative 64-bit integer")
    if not 1 <= message_count <= MAX_BATCH_MESSAGES:
        raise InvalidMessage("batch", f"must hold 1 to {MAX_BATCH_MESSAGES} messages")


def _check_offset(field: str, value: object) -> None:
    if not _is_int64(value):
        raise InvalidMessage(field, "must be a non-negative 64-bit integer")


@attrs.frozen
class OffsetCommit:
    """The group has consumed every message of the queue below ``offset`` (the next to read)."""

    topic: str
    queue_id: int
    offset: int

    def __attrs_post_init__(self) -> None:
        check_topic_name(self.topic)
        _check_queue_id(self.topic, self.queue_id)
        _check_offset("offset", self.offset)


def _check_queue_id(topic: str, queue_id: object) -> None:
    if not (type(queue_id) is int and 0 <= queue_id < MAX_QUEUE_COUNT):
        raise InvalidTopicConfig(topic, f"queue_id must be an integer in [0, {MAX_QUEUE_COUNT})")


@attrs.frozen
class CommitOffsets:
    """Moves a group's offsets forward, many queues at once so that acknowledging is cheap.

    An offset lower than the committed one is ignored (acknowledgements race). With
    ``reset_generation`` set, commits are ignored unless it equals the group's current
    generation, so that acknowledgements still in flight cannot undo a ``ResetOffsets``.
    """

    group: str
    offsets: tuple[OffsetCommit, ...] = attrs.field(converter=_commits_tuple)
    reset_generation: int | None = None

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)
        if not 1 <= len(self.offsets) <= MAX_OFFSET_ITEMS:
            raise InvalidMessage("offsets", f"must hold 1 to {MAX_OFFSET_ITEMS} commits")
        for commit in self.offsets:
            if type(commit) is not OffsetCommit:
                raise InvalidMessage("offsets", "every item must be an OffsetCommit")
        if self.reset_generation is not None:
            _check_offset("reset_generation", self.reset_generation)


@attrs.frozen
class QueueOffset:
    queue_id: int
    offset: int


@attrs.frozen
class ResetOffsets:
    """Sets a group's offsets in one topic, backwards or forwards; queues not named keep theirs.

    Every reset bumps the group's reset generation (see ``CommitOffsets``).
    """

    group: str
    topic: str
    offsets: tuple[QueueOffset, ...] = attrs.field(converter=_queue_offsets_tuple)

    def __attrs_post_init__(self) -> None:
        check_group_name(self.group)
        check_topic_name(self.topic)
        if not 1 <= len(self.offsets) <= MAX_OFFSET_ITEMS:
            raise InvalidMessage("offsets", f"must hold 1 to {MAX_OFFSET_ITEMS} queues")
        seen: set[int] = set()
        for item in self.offsets:
            if type(item) is not QueueOffset:
                raise InvalidMessage("offsets", "every item must be a QueueOffset")
            _check_queue_id(self.topic, item.queue_id)
            _check_offset("offset", item.offset)
            if item.queue_id in seen:
                raise InvalidMessage("offsets", f"queue {item.queue_id} named twice")
            seen.add(item.queue_id)


@attrs.frozen
class AddUser:
    """A new user with its stored key (``wire/client_auth.stored_key``) and first rules."""

    access_key: str
    stored_key: bytes
    rules: tuple[Rule, ...] = ()

    def __attrs_post_init__(self) -> None:
        check_access_key(self.access_key)
        if type(self.stored_key) is not bytes or len(self.stored_key) != STORED_KEY_BYTES:
            raise MalformedCommand(f"a stored key is {STORED_KEY_BYTES} bytes")
        if len(self.rules) > MAX_RULES_PER_USER:
            raise InvalidRule("", f"a user has at most {MAX_RULES_PER_USER} rules")


@attrs.frozen
class RemoveUser:
    access_key: str

    def __attrs_post_init__(self) -> None:
        check_access_key(self.access_key)


@attrs.frozen
class Grant:
    access_key: str
    rule: Rule

    def __attrs_post_init__(self) -> None:
        check_access_key(self.access_key)


@attrs.frozen
class Revoke:
    access_key: str
    rule: Rule

    def __attrs_post_init__(self) -> None:
        check_access_key(self.access_key)


Command = (
    SendBatch
    | DeliverTimers
    | ConfigureGroup
    | DeleteGroup
    | PopMessages
    | AckPopped
    | ChangeInvisible
    | CommitOffsets
    | ResetOffsets
    | CreateTopic
    | UpdateTopic
    | DeleteTopic
    | ConfigureBroker
    | AddUser
    | RemoveUser
    | Grant
    | Revoke
)


# ---------------------------------------------------------------------------------------------
# Encoding.


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True, default=_pack_default)
    return packed


def _pack_default(value: object) -> object:
    # Message.properties is a read-only mapping, which msgpack does not know.
    if isinstance(value, types.MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def message_fields(message: Message) -> list[Any]:
    """A message as the array stored in a ``SendBatch`` (field order of ``Message``)."""
    return [
        message.topic,
        message.queue_id,
        message.body,
        message.tags,
        message.keys,
        message.properties,
        message.born_timestamp_ms,
        message.producer_id,
        message.sequence,
        message.sharding_key,
    ]


MESSAGE_FIELD_COUNT = 10


def encode_command(command: Command) -> bytes:
    """The entry data for ``command``: ``[FORMAT_VERSION, tag, fields...]`` in msgpack."""
    fields: list[Any]
    if type(command) is SendBatch:
        tag = CommandTag.SEND_BATCH
        fields = [command.store_timestamp_ms, [message_fields(m) for m in command.messages]]
    elif type(command) is CommitOffsets:
        tag = CommandTag.COMMIT_OFFSETS
        commits = [[c.topic, c.queue_id, c.offset] for c in command.offsets]
        fields = [command.group, commits, command.reset_generation]
    elif type(command) is ResetOffsets:
        tag = CommandTag.RESET_OFFSETS
        resets = [[item.queue_id, item.offset] for item in command.offsets]
        fields = [command.group, command.topic, resets]
    elif type(command) is CreateTopic or type(command) is UpdateTopic:
        tag = CommandTag.CREATE_TOPIC if type(command) is CreateTopic else CommandTag.UPDATE_TOPIC
        fields = [command.name, command.queue_count, command.fifo]
    elif type(command) is DeleteTopic:
        tag = CommandTag.DELETE_TOPIC
        fields = [command.name]
    elif type(command) is ConfigureBroker:
        tag = CommandTag.CONFIGURE_BROKER
        settings = command.settings
        fields = [
            settings.max_body_bytes,
            settings.auto_create_topics,
            settings.default_queue_count,
            settings.idempotence_window,
            settings.max_producers,
            settings.producer_expiry_ms,
            settings.max_topics,
            settings.max_delay_ms,
            settings.max_timers,
        ]
    elif type(command) is DeliverTimers:
        tag = CommandTag.DELIVER_TIMERS
        fields = [
            command.store_timestamp_ms,
            [message_fields(m) for m in command.messages],
            [list(pair) for pair in command.fired],
        ]
    elif type(command) is ConfigureGroup:
        tag = CommandTag.CONFIGURE_GROUP
        fields = [command.group, command.policy.max_attempts, list(command.policy.delays_ms)]
    elif type(command) is DeleteGroup:
        tag = CommandTag.DELETE_GROUP
        fields = [command.group]
    elif type(command) is PopMessages:
        tag = CommandTag.POP_MESSAGES
        fields = [
            command.store_timestamp_ms,
            [message_fields(m) for m in command.messages],
            command.group,
            command.topic,
            command.invisible_ms,
            [[q.queue_id, q.scan_end, list(q.offsets)] for q in command.queues],
            [list(pair) for pair in command.dead],
        ]
    elif type(command) is AckPopped:
        tag = CommandTag.ACK_POPPED
        refs = [[r.queue_id, r.offset, r.pop_id] for r in command.refs]
        fields = [command.group, command.topic, refs]
    elif type(command) is ChangeInvisible:
        tag = CommandTag.CHANGE_INVISIBLE
        ref = command.ref
        fields = [
            command.group,
            command.topic,
            [ref.queue_id, ref.offset, ref.pop_id],
            command.store_timestamp_ms,
            command.invisible_ms,
        ]
    elif type(command) is AddUser:
        tag = CommandTag.ADD_USER
        rules = [[rule.resource, rule.action] for rule in command.rules]
        fields = [command.access_key, command.stored_key, rules]
    elif type(command) is RemoveUser:
        tag = CommandTag.REMOVE_USER
        fields = [command.access_key]
    elif type(command) is Grant or type(command) is Revoke:
        tag = CommandTag.GRANT if type(command) is Grant else CommandTag.REVOKE
        fields = [command.access_key, command.rule.resource, command.rule.action]
    else:
        raise TypeError(f"not a broker command: {type(command).__name__}")
    return _pack([FORMAT_VERSION, int(tag), *fields])


# ---------------------------------------------------------------------------------------------
# Decoding.


@attrs.frozen
class RawCommand:
    """A command unpacked but not yet turned into records: its tag and its field values."""

    tag: CommandTag
    fields: list[Any]


_FIELD_COUNTS = {
    CommandTag.SEND_BATCH: (2,),
    CommandTag.COMMIT_OFFSETS: (3,),
    CommandTag.RESET_OFFSETS: (3,),
    CommandTag.CREATE_TOPIC: (3,),
    CommandTag.UPDATE_TOPIC: (3,),
    CommandTag.DELETE_TOPIC: (1,),
    # 6 before ``max_topics`` was a setting.
    CommandTag.CONFIGURE_BROKER: (6, 7, 9),
    CommandTag.ADD_USER: (3,),
    CommandTag.REMOVE_USER: (1,),
    CommandTag.GRANT: (3,),
    CommandTag.REVOKE: (3,),
    CommandTag.DELIVER_TIMERS: (3,),
    CommandTag.CONFIGURE_GROUP: (3,),
    CommandTag.POP_MESSAGES: (7,),
    CommandTag.ACK_POPPED: (3,),
    CommandTag.CHANGE_INVISIBLE: (5,),
    CommandTag.DELETE_GROUP: (1,),
}


def unpack_command(data: bytes) -> RawCommand:
    """The tag and fields of a command, checked for version, tag and field count only.

    Raises ``MalformedCommand`` (or ``UnsupportedCommandVersion``).
    """
    try:
        # timestamp=0 leaves msgpack timestamps as objects, which every type check refuses.
        array = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except Exception as error:  # msgpack raises several unrelated types
        raise MalformedCommand(f"undecodable msgpack: {type(error).__name__}") from None
    if type(array) is not list or len(array) < 2:
        raise MalformedCommand("a command is an array [version, tag, fields...]")
    version, tag, *fields = array
    if type(version) is not int:
        raise MalformedCommand("the format version must be an integer")
    if version != FORMAT_VERSION:
        raise UnsupportedCommandVersion(version, FORMAT_VERSION)
    if type(tag) is not int or tag not in _FIELD_COUNTS:
        raise MalformedCommand(f"unknown command tag {tag!r}")
    command_tag = CommandTag(tag)
    if len(fields) not in _FIELD_COUNTS[command_tag]:
        counts = " or ".join(map(str, _FIELD_COUNTS[command_tag]))
        raise MalformedCommand(f"{command_tag.name} has {counts} fields, got {len(fields)}")
    return RawCommand(command_tag, fields)


def send_batch_fields(fields: list[Any]) -> tuple[int, list[Any]]:
    """A SEND_BATCH's (or DELIVER_TIMERS') store timestamp and its messages, still as raw
    arrays."""
    store_timestamp_ms, messages = fields[:2]
    if type(messages) is not list:
        raise MalformedCommand("SEND_BATCH messages must be an array")
    _check_send_batch_header(store_timestamp_ms, len(messages))
    return store_timestamp_ms, messages


def message_from_fields(fields: object) -> Message:
    if type(fields) is not list or len(fields) != MESSAGE_FIELD_COUNT:
        raise MalformedCommand(f"a message is an array of {MESSAGE_FIELD_COUNT} fields")
    return Message(*fields)


def _list(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        raise MalformedCommand(f"{what} must be an array")
    return value


def _array_of(value: object, length: int, what: str) -> list[Any]:
    items = _list(value, what)
    if len(items) != length:
        raise MalformedCommand(f"{what} must have {length} items")
    return items


def command_from_fields(raw: RawCommand) -> Command:
    """The record for an unpacked command. Raises a ``BadRequest`` subclass on bad values."""
    fields = raw.fields
    tag = raw.tag
    if tag is CommandTag.SEND_BATCH:
        store_timestamp_ms, messages = send_batch_fields(fields)
        return SendBatch(store_timestamp_ms, tuple(message_from_fields(m) for m in messages))
    if tag is CommandTag.COMMIT_OFFSETS:
        group, commits, reset_generation = fields
        items = tuple(
            OffsetCommit(*_array_of(commit, 3, "an offset commit"))
            for commit in _list(commits, "offsets")
        )
        return CommitOffsets(group, items, reset_generation)
    if tag is CommandTag.RESET_OFFSETS:
        group, topic, resets = fields
        reset_items = tuple(
            QueueOffset(*_array_of(item, 2, "a queue offset")) for item in _list(resets, "offsets")
        )
        return ResetOffsets(group, topic, reset_items)
    if tag is CommandTag.CREATE_TOPIC or tag is CommandTag.UPDATE_TOPIC:
        name, queue_count, fifo = fields
        kind = CreateTopic if tag is CommandTag.CREATE_TOPIC else UpdateTopic
        return kind(name, queue_count, fifo)
    if tag is CommandTag.DELETE_TOPIC:
        return DeleteTopic(fields[0])
    if tag is CommandTag.CONFIGURE_BROKER:
        return ConfigureBroker(BrokerSettings(*fields))
    if tag is CommandTag.ADD_USER:
        access_key, stored, rules = fields
        return AddUser(
            access_key,
            stored,
            tuple(Rule(*_array_of(rule, 2, "a rule")) for rule in _list(rules, "rules")),
        )
    if tag is CommandTag.DELIVER_TIMERS:
        store_timestamp_ms, messages = send_batch_fields(fields)
        fired = _list(fields[2], "fired")
        _check_fired(fired, len(messages))
        return DeliverTimers(
            store_timestamp_ms,
            tuple(message_from_fields(m) for m in messages),
            tuple((pair[0], pair[1]) for pair in fired),
        )
    if tag is CommandTag.CONFIGURE_GROUP:
        group, max_attempts, delays = fields
        return ConfigureGroup(group, RetryPolicy(max_attempts, tuple(_list(delays, "delays"))))
    if tag is CommandTag.DELETE_GROUP:
        [group] = fields
        return DeleteGroup(group)
    if tag is CommandTag.POP_MESSAGES:
        store_timestamp_ms, messages = fields[0], _list(fields[1], "messages")
        group, topic, invisible_ms, queues, dead = fields[2:]
        return PopMessages(
            store_timestamp_ms,
            tuple(message_from_fields(m) for m in messages),
            group,
            topic,
            invisible_ms,
            tuple(
                PopQueue(item[0], item[1], tuple(_list(item[2], "offsets")))
                for item in (_array_of(q, 3, "a pop queue") for q in _list(queues, "queues"))
            ),
            tuple(tuple(_array_of(pair, 2, "a dead offset")) for pair in _list(dead, "dead")),
        )
    if tag is CommandTag.ACK_POPPED:
        group, topic, refs = fields
        return AckPopped(
            group,
            topic,
            tuple(PoppedRef(*_array_of(ref, 3, "a popped ref")) for ref in _list(refs, "refs")),
        )
    if tag is CommandTag.CHANGE_INVISIBLE:
        group, topic, ref, store_timestamp_ms, invisible_ms = fields
        return ChangeInvisible(
            group,
            topic,
            PoppedRef(*_array_of(ref, 3, "a popped ref")),
            store_timestamp_ms,
            invisible_ms,
        )
    if tag is CommandTag.REMOVE_USER:
        return RemoveUser(fields[0])
    if tag is CommandTag.GRANT or tag is CommandTag.REVOKE:
        access_key, resource, action = fields
        return (Grant if tag is CommandTag.GRANT else Revoke)(access_key, Rule(resource, action))
    raise AssertionError(f"unhandled command tag {tag}")  # unpack_command knows every tag


def decode_command(data: bytes) -> Command:
    """The command in an entry's data. Raises a ``BadRequest`` subclass on anything invalid:
    ``MalformedCommand`` for bytes that are not a command, typed errors for bad values."""
    return command_from_fields(unpack_command(data))


#: Commands whose fields start ``store_timestamp_ms, [message, ...]``: their messages are stored
#: at their slots, and pulls read them.
_MESSAGE_TAGS = frozenset(
    {CommandTag.SEND_BATCH, CommandTag.DELIVER_TIMERS, CommandTag.POP_MESSAGES}
)


@attrs.frozen
class StoredMessages:
    """Some messages of one SEND_BATCH entry, for a pull: ``messages[i]`` sits at ``slots[i]``."""

    store_timestamp_ms: int
    slots: tuple[int, ...]
    messages: tuple[Message, ...]


def read_messages(data: bytes, slots: Sequence[int]) -> StoredMessages:
    """The messages at ``slots`` of a SEND_BATCH entry, without building the others.

    For pulls: ``BrokerState.locate`` gives (raft index, slot) pairs; the handler reads the
    entries from the log and takes the slots it needs. Raises ``MalformedCommand`` if the entry
    is not a SEND_BATCH or a slot is not in it; a slot apply stored always decodes.
    """
    raw = unpack_command(data)
    if raw.tag not in _MESSAGE_TAGS:
        raise MalformedCommand(f"entry holds {raw.tag.name}, not messages")
    store_timestamp_ms, messages = send_batch_fields(raw.fields)
    picked = []
    for slot in slots:
        if not 0 <= slot < len(messages):
            raise MalformedCommand(f"no slot {slot} in a batch of {len(messages)}")
        picked.append(message_from_fields(messages[slot]))
    return StoredMessages(store_timestamp_ms, tuple(slots), tuple(picked))
