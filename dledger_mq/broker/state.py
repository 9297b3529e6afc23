"""The broker's replicated state: everything derived, deterministically, from committed entries.

``BrokerState.apply(index, data)`` is the whole interface of change. It reads no clock, no
randomness and no local configuration, so every replica that applies the same entries holds the
same state; the leader stamps what apply needs (the store timestamp) into the entries, and the
settings that change what apply does are themselves replicated (``ConfigureBroker``).

On restart the state is rebuilt by applying the log's committed entries again, from the first
(``BrokerState.replay``); snapshots, so that the log can be trimmed, come later.

Invariants:

- ``applied_index`` only grows; entries are applied once each, in log order.
- A consume queue's offsets are consecutive from its ``min_offset``, and its positions
  (``raft_index << SLOT_BITS | slot``) strictly increase, so queue order is log order.
- A committed group offset moves back only through ``ResetOffsets``.
- For an idempotent producer, a (producer id, sequence) it remembers names exactly one stored
  message, and a sequence it may have forgotten is refused, never stored a second time.
"""

from __future__ import annotations

import enum
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs
import msgpack

from dledger_mq.broker.access import MAX_RULES_PER_USER, MAX_USERS, Rule, User
from dledger_mq.broker.consume_queue import ConsumeQueue, MemoryQueueStore, QueueStore
from dledger_mq.broker.message_id import format_message_id
from dledger_mq.broker.records import (
    MAX_BATCH_MESSAGES,
    MAX_POP_INFLIGHT,
    MAX_POP_QUEUES,
    MAX_RAFT_INDEX,
    MAX_RETRY_POLICIES,
    MESSAGE_FIELD_COUNT,
    SLOT_BITS,
    AckPopped,
    AddUser,
    BrokerSettings,
    ChangeInvisible,
    CommandTag,
    CommitOffsets,
    ConfigureBroker,
    ConfigureGroup,
    CreateTopic,
    DeleteGroup,
    DeleteTopic,
    Grant,
    Message,
    PopMessages,
    RawCommand,
    RemoveUser,
    ResetOffsets,
    RetryPolicy,
    Revoke,
    UpdateTopic,
    check_message_fields,
    command_from_fields,
    send_batch_fields,
    unpack_command,
)
from dledger_mq.broker.tag_filter import MATCH_ALL, TagFilter, tag_code
from dledger_mq.broker.timers import TimerWheel
from dledger_mq.errors import (
    BadRequest,
    InvalidMessage,
    InvalidOffset,
    InvalidTopicConfig,
    MalformedCommand,
    MessageTooLarge,
    QueueNotFound,
    SequenceOutsideWindow,
    SnapshotError,
    TimerLimitReached,
    TopicExists,
    TopicLimitReached,
    TopicNotFound,
    UserExists,
    UserNotFound,
)
from dledger_mq.wire.broker import (
    ATTEMPT_PROPERTY,
    DELIVER_AT_PROPERTY,
    dead_letter_topic,
    system_topic_group,
)

_SLOT_MASK = (1 << SLOT_BITS) - 1
#: Sequences a new producer's window holds before it first grows (doubling, up to the window).
_INITIAL_WINDOW_CAPACITY = 4
_NO_SEQUENCE = -1
#: Consume-queue entries ``scan`` looks at, at most, per call: bounds the work of a filtered pull.
DEFAULT_MAX_SCANNED = 4096


# ---------------------------------------------------------------------------------------------
# Results of apply.


@attrs.frozen(eq=False)
class Refused:
    """The entry (or one message of it) was refused; the state did not change for it.

    Equal when the errors have the same type and text, so that results compare across replicas.
    """

    error: BadRequest

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Refused)
            and type(self.error) is type(other.error)
            and self.error.args == other.error.args
        )

    def __hash__(self) -> int:
        return hash((type(self.error), self.error.args))


@attrs.frozen
class SendReceipt:
    """Where a message is stored. For a ``duplicate``, the original's place."""

    group: str
    raft_index: int
    slot: int
    queue_id: int
    offset: int
    duplicate: bool

    @property
    def msg_id(self) -> str:
        # Derived on demand: followers apply millions of messages and never read their ids.
        return format_message_id(self.group, self.raft_index, self.slot)


@attrs.frozen
class SendBatchResult:
    """One outcome per message of the batch, in slot order."""

    outcomes: tuple[SendReceipt | Refused, ...]
    #: Topics auto-created by this batch, in order: the handler announces them to naming.
    created_topics: tuple[str, ...]


@attrs.frozen
class TopicConfig:
    name: str
    queue_count: int
    fifo: bool


@attrs.frozen
class TopicCreated:
    topic: TopicConfig
    #: False when the topic already existed with this configuration.
    created: bool


@attrs.frozen
class TopicUpdated:
    topic: TopicConfig


@attrs.frozen
class TopicDeleted:
    name: str


class CommitOutcome(enum.IntEnum):
    ADVANCED = 0
    #: Not ahead of the committed offset (acknowledgements race; not an error).
    UNCHANGED = 1
    #: Carried an older reset generation: a ``ResetOffsets`` came in between.
    STALE_GENERATION = 2
    UNKNOWN_QUEUE = 3
    BEYOND_MAX_OFFSET = 4


@attrs.frozen
class OffsetsCommitted:
    outcomes: tuple[CommitOutcome, ...]


@attrs.frozen
class OffsetsReset:
    group: str
    topic: str
    reset_generation: int


@attrs.frozen
class TimersDelivered:
    """Per fired timer, in slot order: where its copy went, or why it did not (fired before,
    not due yet, or its topic gone)."""

    outcomes: tuple[SendReceipt | Refused, ...]


@attrs.frozen
class Popped:
    """One message a receive handed out: until when it is invisible, which delivery it is."""

    queue_id: int
    offset: int
    attempt: int
    invisible_until_ms: int
    pop_id: int


@attrs.frozen
class MessagesPopped:
    """What a receive got (apply may refuse offsets another receive took meanwhile), and
    where the dead letters went."""

    popped: tuple[Popped, ...]
    dead: tuple[SendReceipt | Refused, ...]


@attrs.frozen
class PoppedAcked:
    """Per reference, whether it was still the message's receive (False: already acknowledged,
    or handed out again since)."""

    acked: tuple[bool, ...]


@attrs.frozen
class InvisibleChanged:
    changed: bool
    invisible_until_ms: int


@attrs.frozen
class GroupConfigured:
    group: str
    policy: RetryPolicy


@attrs.frozen
class GroupDeleted:
    group: str
    #: False when the broker group knew nothing of it (deleting is idempotent).
    existed: bool


@attrs.frozen
class SettingsChanged:
    settings: BrokerSettings


@attrs.frozen
class UsersChanged:
    """A user was added or removed, or its rules changed: ``user`` as it is now (None: gone)."""

    access_key: str
    user: User | None


ApplyResult = (
    SendBatchResult
    | OffsetsCommitted
    | OffsetsReset
    | TopicCreated
    | TopicUpdated
    | TopicDeleted
    | SettingsChanged
    | UsersChanged
    | TimersDelivered
    | GroupConfigured
    | GroupDeleted
    | MessagesPopped
    | PoppedAcked
    | InvisibleChanged
    | Refused
)


# ---------------------------------------------------------------------------------------------
# Results of queries.


class QueuePosition(NamedTuple):
    """A consume-queue offset and the message's place in the log (entry index and slot)."""

    offset: int
    raft_index: int
    slot: int


@attrs.frozen
class ScanResult:
    positions: list[QueuePosition]
    #: Where the next scan continues: past every position looked at, matching or not.
    next_offset: int


@attrs.frozen
class QueueStatus:
    queue_id: int
    min_offset: int
    #: The offset the next message will get; the queue holds ``[min_offset, max_offset)``.
    max_offset: int


@attrs.frozen
class TopicDescription:
    name: str
    queue_count: int
    fifo: bool
    queues: tuple[QueueStatus, ...]


@attrs.frozen
class QueueLag:
    topic: str
    queue_id: int
    #: None when the group never committed in this queue.
    committed_offset: int | None
    max_offset: int
    lag: int


# ---------------------------------------------------------------------------------------------
# Internal state.


class _Topic:
    __slots__ = ("config", "queues")

    def __init__(self, config: TopicConfig, queues: list[ConsumeQueue]) -> None:
        self.config = config
        self.queues = queues


def _comparable_queue(queue: ConsumeQueue) -> tuple[Any, ...]:
    positions, codes = queue.read(queue.base_offset, queue.max_offset)
    return (queue.base_offset, queue.max_offset, list(positions), list(codes))


class _Group:
    __slots__ = ("offsets", "reset_generation")

    def __init__(self) -> None:
        self.reset_generation = 0
        self.offsets: dict[str, dict[int, int]] = {}


class _PopQueue:
    """A simple consumer group's progress in one queue: where new messages are looked for, and
    the messages received and not yet acknowledged (offset -> invisible until, attempt, the
    receive's entry index)."""

    __slots__ = ("inflight", "next_offset")

    def __init__(self, next_offset: int) -> None:
        self.next_offset = next_offset
        self.inflight: dict[int, tuple[int, int, int]] = {}

    def consumed_up_to(self) -> int:
        """Every offset below this is acknowledged (or filtered out): the group's offset."""
        return min(self.inflight) if self.inflight else self.next_offset


class _ProducerWindow:
    """The receipts of one idempotent producer's most recent sequences, in a ring.

    A sequence lives at ``sequence % capacity``. The ring starts small and doubles, up to the
    window, whenever a new sequence would overwrite one still inside the window; so a producer
    that sends a few messages costs a few slots, and a busy one at most ``26 * window`` bytes.
    ``forgotten_up_to`` is the highest sequence ever overwritten or dropped: together with the
    window it tells which unknown sequences may have been stored already.
    """

    __slots__ = (
        "forgotten_up_to",
        "highest_sequence",
        "last_active_ms",
        "offsets",
        "positions",
        "queue_ids",
        "sequences",
    )

    def __init__(self) -> None:
        self.highest_sequence = _NO_SEQUENCE
        self.forgotten_up_to = _NO_SEQUENCE
        self.last_active_ms = 0
        self._allocate(_INITIAL_WINDOW_CAPACITY)

    def _allocate(self, capacity: int) -> None:
        self.sequences = array("q", [_NO_SEQUENCE]) * capacity
        self.positions = array("q", [0]) * capacity
        self.offsets = array("q", [0]) * capacity
        self.queue_ids = array("H", [0]) * capacity

    def find(self, producer_id: str, sequence: int, window: int) -> int | None:
        """The ring slot holding ``sequence``, or None if it was never stored.

        Raises ``SequenceOutsideWindow`` if it may have been stored and forgotten.
        """
        ring_slot = sequence % len(self.sequences)
        if self.sequences[ring_slot] == sequence:
            return ring_slot
        if sequence <= self.forgotten_up_to or sequence <= self.highest_sequence - window:
            raise SequenceOutsideWindow(producer_id, sequence, self.highest_sequence, window)
        return None

    def remember(
        self, sequence: int, position: int, queue_id: int, offset: int, window: int
    ) -> None:
        highest = max(self.highest_sequence, sequence)
        while True:
            capacity = len(self.sequences)
            ring_slot = sequence % capacity
            held = self.sequences[ring_slot]
            if held == _NO_SEQUENCE or held <= highest - window or capacity >= window:
                break
            self._grow(min(capacity * 2, window), highest, window)
        if held != _NO_SEQUENCE:
            # Outside the window: a ring that holds the whole window never puts two sequences
            # of one window in one slot. Overwriting it is forgetting it.
            self.forgotten_up_to = max(self.forgotten_up_to, held)
        self.highest_sequence = highest
        self.sequences[ring_slot] = sequence
        self.positions[ring_slot] = position
        self.queue_ids[ring_slot] = queue_id
        self.offsets[ring_slot] = offset

    def _grow(self, capacity: int, highest: int, window: int) -> None:
        old = list(zip(self.sequences, self.positions, self.queue_ids, self.offsets, strict=True))
        while True:
            self._allocate(capacity)
            kept = [e for e in old if e[0] != _NO_SEQUENCE and e[0] > highest - window]
            if self._place(kept):
                break
            # Two kept sequences share a slot in this ring: double again. Sequences within one
            # window of each other never share a slot once the ring holds the whole window.
            assert capacity < window, "kept sequences collide in a full-window ring"
            capacity = min(capacity * 2, window)
        for entry in old:
            if entry[0] != _NO_SEQUENCE and entry[0] <= highest - window:
                self.forgotten_up_to = max(self.forgotten_up_to, entry[0])

    def _place(self, entries: list[tuple[int, int, int, int]]) -> bool:
        capacity = len(self.sequences)
        for sequence, position, queue_id, offset in entries:
            ring_slot = sequence % capacity
            if self.sequences[ring_slot] != _NO_SEQUENCE:
                return False
            self.sequences[ring_slot] = sequence
            self.positions[ring_slot] = position
            self.queue_ids[ring_slot] = queue_id
            self.offsets[ring_slot] = offset
        return True

    def comparable(self) -> tuple[Any, ...]:
        return (
            self.highest_sequence,
            self.forgotten_up_to,
            self.last_active_ms,
            self.sequences,
            self.positions,
            self.queue_ids,
            self.offsets,
        )


# ---------------------------------------------------------------------------------------------
# The state machine.


class BrokerState:
    """Topics, consume queues, group offsets and idempotent producers of one broker group.

    ``group`` is the Raft group's name; it goes into every message id, so it must be the same on
    every replica and never reused for a new log.
    """

    def __init__(self, group: str, queues: QueueStore | None = None) -> None:
        self.group = group
        #: Where the consume queues live (files in a node: memory must not grow with history).
        self.queues: QueueStore = queues if queues is not None else MemoryQueueStore()
        self._applied_index = 0
        #: The command of the entry applied last, as unpacked (None if it was not one): the
        #: node's key index reads its messages from it rather than decode the entry again.
        #: Not replicated state (no snapshot, no comparison).
        self.last_unpacked: RawCommand | None = None
        self._settings = BrokerSettings()
        #: The highest store timestamp applied: the producers' expiry clock, which never goes
        #: back even if a new leader's clock is behind.
        self._clock_ms = 0
        self._topics: dict[str, _Topic] = {}
        #: Counts changes to the topics or their queue counts (naming is told at once).
        self.topics_changed = 0
        self._groups: dict[str, _Group] = {}
        self._users: dict[str, User] = {}
        #: Least recently active first.
        self._producers: OrderedDict[str, _ProducerWindow] = OrderedDict()
        #: Delayed and retried messages not yet delivered (their bodies stay in the log).
        self._timers = TimerWheel()
        #: Consumer groups' retry policies, where one was set (else the default).
        self._policies: dict[str, RetryPolicy] = {}
        #: Simple consumers' progress: (group, topic, queue) -> received, not acknowledged.
        self._pops: dict[tuple[str, str, int], _PopQueue] = {}

    # -- snapshots -----------------------------------------------------------------------------

    def to_snapshot(self) -> bytes:
        """Every replicated fact as of ``applied_index``, what ``from_snapshot`` rebuilds.
        Message bodies are not in it: they stay in the log (consume queues point at them)."""
        data: bytes = msgpack.packb(
            [
                SNAPSHOT_FORMAT_VERSION,
                self.group,
                self._applied_index,
                list(attrs.astuple(self._settings)),
                self._clock_ms,
                [
                    [
                        topic.config.name,
                        topic.config.queue_count,
                        topic.config.fifo,
                        # Only where each queue ends: its entries are in the queue store, which
                        # the node makes durable before it saves the snapshot.
                        [queue.max_offset for queue in topic.queues],
                    ]
                    for topic in self._topics.values()
                ],
                [
                    [
                        name,
                        group.reset_generation,
                        [[t, list(q.items())] for t, q in group.offsets.items()],
                    ]
                    for name, group in self._groups.items()
                ],
                [
                    [
                        producer_id,
                        window.highest_sequence,
                        window.forgotten_up_to,
                        window.last_active_ms,
                        _packed(window.sequences),
                        _packed(window.positions),
                        _packed(window.offsets),
                        _packed(window.queue_ids),
                    ]
                    for producer_id, window in self._producers.items()
                ],
                [
                    [
                        user.access_key,
                        user.stored_key,
                        [[rule.resource, rule.action] for rule in sorted(user.rules)],
                    ]
                    for user in self._users.values()
                ],
                [_packed(column) for column in self._timers.columns()],
                [
                    [name, policy.max_attempts, list(policy.delays_ms)]
                    for name, policy in self._policies.items()
                ],
                [
                    [
                        group,
                        topic,
                        queue_id,
                        pop.next_offset,
                        [[offset, *held] for offset, held in sorted(pop.inflight.items())],
                    ]
                    for (group, topic, queue_id), pop in self._pops.items()
                ],
            ],
            use_bin_type=True,
        )
        return data

    def load_snapshot(self, data: bytes) -> None:
        """Become the state ``data`` records (a leader's snapshot, InstallSnapshot), in place:
        whoever holds this object sees the new state. The queues' entries go: the leader's
        are before this log's start, so the queues hold only what comes after (their
        ``base_offset``). ``SnapshotError`` before anything changes."""
        BrokerState.from_snapshot(self.group, data, MemoryQueueStore())  # checks it first
        self.queues.clear()
        restored = BrokerState.from_snapshot(self.group, data, self.queues)
        vars(self).update(vars(restored))

    @classmethod
    def from_snapshot(
        cls, group: str, data: bytes, queues: QueueStore | None = None
    ) -> BrokerState:
        """The state ``to_snapshot`` recorded, its queues reopened from ``queues`` as of then;
        ``SnapshotError`` for anything else (another format version, another group, a
        malformed record)."""
        try:
            return cls._from_snapshot(group, data, queues)
        except SnapshotError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
            raise SnapshotError(f"malformed broker snapshot: {error}") from None

    @classmethod
    def _from_snapshot(cls, group: str, data: bytes, queues: QueueStore | None) -> BrokerState:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
        # 8 fields before users were replicated, 9 before timers and retry policies, 11 before
        # simple consumers.
        if not isinstance(fields, list) or len(fields) not in (8, 9, 11, 12):
            raise SnapshotError("a broker snapshot is an array of 8, 9, 11 or 12 fields")
        version, snapshot_group, applied, settings, clock_ms, topics, groups, producers = fields[:8]
        users = fields[8] if len(fields) >= 9 else []
        timers, policies = fields[9:11] if len(fields) >= 11 else ([b"", b""], [])
        pops = fields[11] if len(fields) >= 12 else []
        if version != SNAPSHOT_FORMAT_VERSION:
            raise SnapshotError(
                f"broker snapshot format version {version}; this build reads "
                f"{SNAPSHOT_FORMAT_VERSION}"
            )
        if snapshot_group != group:
            raise SnapshotError(f"a snapshot of group {snapshot_group!r}, not {group!r}")
        state = cls(group, queues)
        state._applied_index = _int(applied)
        state._settings = BrokerSettings(*settings)
        state._clock_ms = _int(clock_ms)
        for name, queue_count, fifo, max_offsets in topics:
            config = TopicConfig(str(name), _int(queue_count), bool(fifo))
            if len(max_offsets) != config.queue_count:
                raise SnapshotError(f"topic {name!r}: {len(max_offsets)} queues recorded")
            state._topics[config.name] = _Topic(
                config,
                [
                    state.queues.open_queue(config.name, queue_id, _int(max_offset))
                    for queue_id, max_offset in enumerate(max_offsets)
                ],
            )
        for name, reset_generation, offsets in groups:
            consumer_group = _Group()
            consumer_group.reset_generation = _int(reset_generation)
            consumer_group.offsets = {
                str(topic): {_int(queue_id): _int(offset) for queue_id, offset in queue_offsets}
                for topic, queue_offsets in offsets
            }
            state._groups[str(name)] = consumer_group
        for producer_id, highest, forgotten, last_active, *rings in producers:
            window = _ProducerWindow()
            window.highest_sequence = _int(highest)
            window.forgotten_up_to = _int(forgotten)
            window.last_active_ms = _int(last_active)
            window.sequences = _unpacked("q", rings[0])
            window.positions = _unpacked("q", rings[1])
            window.offsets = _unpacked("q", rings[2])
            window.queue_ids = _unpacked("H", rings[3])
            if (
                len(
                    {
                        len(ring)
                        for ring in (
                            window.sequences,
                            window.positions,
                            window.offsets,
                            window.queue_ids,
                        )
                    }
                )
                != 1
            ):
                raise SnapshotError(f"producer {producer_id!r}: rings of different sizes")
            state._producers[str(producer_id)] = window
        for access_key, stored, rules in users:
            user = AddUser(access_key, stored, tuple(Rule(*rule) for rule in rules))
            state._users[user.access_key] = User(
                user.access_key, user.stored_key, frozenset(user.rules)
            )
        dues, positions = _unpacked("q", timers[0]), _unpacked("q", timers[1])
        if len(dues) != len(positions):
            raise SnapshotError("timers: due times and positions of different counts")
        for due_ms, position in zip(dues, positions, strict=True):
            state._timers.add(due_ms, position)
        for name, max_attempts, delays in policies:
            state._policies[str(name)] = RetryPolicy(_int(max_attempts), tuple(map(_int, delays)))
        for group, topic, queue_id, next_offset, inflight in pops:
            pop = _PopQueue(_int(next_offset))
            for offset, deadline, attempt, pop_id in inflight:
                pop.inflight[_int(offset)] = (_int(deadline), _int(attempt), _int(pop_id))
            state._pops[(str(group), str(topic), _int(queue_id))] = pop
        return state

    @classmethod
    def replay(cls, group: str, entries: Iterable[tuple[int, bytes]]) -> BrokerState:
        """A state rebuilt by applying (raft index, data) pairs, as on restart."""
        state = cls(group)
        for index, data in entries:
            state.apply(index, data)
        return state

    # -- change --------------------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply the committed entry at Raft index ``index``; never raises for bad data.

        A command that cannot be applied is refused as a whole (``Refused``) before it changes
        anything; in a batch, each message is stored or refused on its own. Both are decided by
        the entry and the state alone, so every replica refuses the same.
        """
        if index <= self._applied_index:
            raise AssertionError(f"entry {index} applied after entry {self._applied_index}")
        if index > MAX_RAFT_INDEX:
            raise AssertionError(f"raft index {index} does not fit a consume-queue position")
        self._applied_index = index
        self.last_unpacked = None
        try:
            raw = self.last_unpacked = unpack_command(data)
            if raw.tag is CommandTag.SEND_BATCH:
                return self._apply_send_batch(index, raw.fields)
            if raw.tag is CommandTag.DELIVER_TIMERS:
                return self._apply_deliver_timers(index, raw.fields)
            command = command_from_fields(raw)
            if type(command) is CommitOffsets:
                return self._apply_commit_offsets(command)
            if type(command) is ResetOffsets:
                return self._apply_reset_offsets(command)
            if type(command) is CreateTopic:
                return self._apply_create_topic(command)
            if type(command) is UpdateTopic:
                return self._apply_update_topic(command)
            if type(command) is DeleteTopic:
                return self._apply_delete_topic(command)
            if type(command) is ConfigureBroker:
                return self._apply_configure(command)
            if isinstance(command, AddUser | RemoveUser | Grant | Revoke):
                return self._apply_user_change(command)
            if type(command) is ConfigureGroup:
                return self._apply_configure_group(command)
            if type(command) is DeleteGroup:
                return self._apply_delete_group(command)
            if type(command) is PopMessages:
                return self._apply_pop(index, command)
            if type(command) is AckPopped:
                return self._apply_ack_popped(command)
            if type(command) is ChangeInvisible:
                return self._apply_change_invisible(command)
            raise AssertionError(f"unhandled command {type(command).__name__}")
        except BadRequest as error:
            return Refused(error)

    def _apply_send_batch(self, index: int, fields: list[Any]) -> SendBatchResult:
        store_timestamp_ms, raw_messages = send_batch_fields(fields)
        if store_timestamp_ms > self._clock_ms:
            self._clock_ms = store_timestamp_ms
            self._expire_producers()
        outcomes: list[SendReceipt | Refused] = []
        created_topics: list[str] = []
        position = index << SLOT_BITS
        for slot, raw in enumerate(raw_messages):
            try:
                outcomes.append(
                    self._store(position | slot, raw, created_topics, store_timestamp_ms)
                )
            except BadRequest as error:
                outcomes.append(Refused(error))
        return SendBatchResult(tuple(outcomes), tuple(created_topics))

    def _store(
        self, position: int, raw: object, created_topics: list[str], store_timestamp_ms: int
    ) -> SendReceipt:
        """Store one message (or find its original); every check comes before any change."""
        if type(raw) is not list or len(raw) != MESSAGE_FIELD_COUNT:
            raise MalformedCommand(f"a message is an array of {MESSAGE_FIELD_COUNT} fields")
        check_message_fields(*raw)
        topic_name, queue_id, body, tags, _, properties, _, producer_id, sequence, _ = raw
        settings = self._settings
        window = None
        if producer_id is not None:
            window = self._producers.get(producer_id)
            if window is not None:
                original = self._find_original(producer_id, window, sequence)
                if original is not None:
                    return original
        if len(body) > settings.max_body_bytes:
            raise MessageTooLarge(len(body), settings.max_body_bytes)
        due_ms = None
        if properties:
            topic_name, due_ms = self._schedule(topic_name, properties, store_timestamp_ms)
        topic = self._topic_for_store(topic_name, queue_id, created_topics)
        if due_ms is not None:
            # Stored now (acknowledged = durable), delivered by the leader's DELIVER_TIMERS.
            self._timers.add(due_ms, position)
            offset = -1
        else:
            offset = topic.queues[queue_id].append(position, tag_code(tags))
        if producer_id is not None:
            if window is None:
                window = self._add_producer(producer_id)
            window.remember(sequence, position, queue_id, offset, settings.idempotence_window)
            window.last_active_ms = self._clock_ms
            self._producers.move_to_end(producer_id)
        return SendReceipt(
            self.group, position >> SLOT_BITS, position & _SLOT_MASK, queue_id, offset, False
        )

    def _topic_for_store(self, topic_name: str, queue_id: int, created: list[str]) -> _Topic:
        """The topic a message of queue ``queue_id`` goes to, created if it may be (every
        check first). Retry and dead-letter topics are created whatever the settings, with
        one queue, as RocketMQ's."""
        settings = self._settings
        topic = self._topics.get(topic_name)
        system = system_topic_group(topic_name) is not None
        if topic is None:
            if not settings.auto_create_topics and not system:
                raise TopicNotFound(topic_name)
            queue_count = 1 if system else settings.default_queue_count
            if queue_id >= queue_count:
                raise QueueNotFound(topic_name, queue_id, queue_count)
        elif queue_id >= topic.config.queue_count:
            raise QueueNotFound(topic_name, queue_id, topic.config.queue_count)
        if topic is None:
            self._check_topic_room(topic_name)
            topic = self._new_topic(TopicConfig(topic_name, queue_count, False))
            self._topics[topic_name] = topic
            self.topics_changed += 1
            created.append(topic_name)
        return topic

    def _schedule(
        self, topic_name: str, properties: Mapping[str, str], store_timestamp_ms: int
    ) -> tuple[str, int | None]:
        """Where a message goes and when: (topic, None) now, (topic, due) for a timer. A
        retried message past its group's last attempt goes to the dead-letter topic; one with
        attempts left waits its policy's delay. Raises for a deliver time that cannot be."""
        settings = self._settings
        due_ms = None
        deliver_at = properties.get(DELIVER_AT_PROPERTY)
        if deliver_at is not None:
            if not (deliver_at.isascii() and deliver_at.isdigit() and len(deliver_at) <= 18):
                raise InvalidMessage("deliver_at", "must be milliseconds since the epoch")
            if int(deliver_at) - store_timestamp_ms > settings.max_delay_ms:
                raise InvalidMessage(
                    "deliver_at",
                    f"more than max_delay_ms ({settings.max_delay_ms}) after the store time",
                )
            due_ms = int(deliver_at)
        group = system_topic_group(topic_name)
        if group is not None and topic_name.startswith("%RETRY%"):
            attempt = properties.get(ATTEMPT_PROPERTY, "")
            if not (attempt.isascii() and attempt.isdigit() and 2 <= int(attempt) <= 1 << 31):
                raise InvalidMessage("attempt", "a retried message's attempt is 2 or more")
            policy = self._policies.get(group, _DEFAULT_POLICY)
            if int(attempt) > policy.max_attempts:
                return dead_letter_topic(group), None
            due_ms = store_timestamp_ms + policy.delay_before(int(attempt))
        if due_ms is None or due_ms <= store_timestamp_ms:
            return topic_name, None
        if len(self._timers) >= settings.max_timers:
            raise TimerLimitReached(settings.max_timers)
        return topic_name, due_ms

    def _apply_deliver_timers(self, index: int, fields: list[Any]) -> TimersDelivered:
        store_timestamp_ms, raw_messages = send_batch_fields(fields)
        fired = fields[2]
        if type(fired) is not list or len(fired) != len(raw_messages):
            raise MalformedCommand("DELIVER_TIMERS names one timer per message")
        if store_timestamp_ms > self._clock_ms:
            self._clock_ms = store_timestamp_ms
            self._expire_producers()
        outcomes: list[SendReceipt | Refused] = []
        position = index << SLOT_BITS
        created: list[str] = []
        for slot, (raw, pair) in enumerate(zip(raw_messages, fired, strict=True)):
            try:
                outcomes.append(
                    self._deliver(position | slot, raw, pair, store_timestamp_ms, created)
                )
            except BadRequest as error:
                outcomes.append(Refused(error))
        return TimersDelivered(tuple(outcomes))

    def _deliver(
        self, position: int, raw: object, pair: object, store_timestamp_ms: int, created: list[str]
    ) -> SendReceipt:
        """Store the copy of a fired timer's message in its queue, if the timer is pending."""
        if type(pair) is not list or len(pair) != 2 or not all(type(v) is int for v in pair):
            raise MalformedCommand("a fired timer is [due_ms, position]")
        due_ms, timer_position = pair
        if type(raw) is not list or len(raw) != MESSAGE_FIELD_COUNT:
            raise MalformedCommand(f"a message is an array of {MESSAGE_FIELD_COUNT} fields")
        check_message_fields(*raw)
        if due_ms > store_timestamp_ms:
            raise BadRequest(f"timer {timer_position} is due at {due_ms}, not yet")
        topic_name, queue_id, _, tags = raw[:4]
        topic = self._topics.get(topic_name)
        if not self._timers.remove(due_ms, timer_position):
            raise BadRequest(f"timer {timer_position} is not pending (fired before)")
        if topic is None or queue_id >= topic.config.queue_count:
            # Deleted while the message waited: it goes with its topic.
            raise TopicNotFound(topic_name)
        offset = topic.queues[queue_id].append(position, tag_code(tags))
        return SendReceipt(
            self.group, position >> SLOT_BITS, position & _SLOT_MASK, queue_id, offset, False
        )

    def _pop_queue(self, group: str, topic: str, queue_id: int, create: bool) -> _PopQueue | None:
        key = (group, topic, queue_id)
        pop = self._pops.get(key)
        if pop is None and create:
            if len(self._pops) >= MAX_POP_QUEUES:
                raise BadRequest(f"simple consumers read {MAX_POP_QUEUES} queues already")
            committed = self.committed_offset(group, topic, queue_id)
            pop = self._pops[key] = _PopQueue(0 if committed is None else committed)
        return pop

    def _commit_pop(self, group: str, topic: str, queue_id: int, pop: _PopQueue) -> None:
        """The group's offset follows its simple consumers: below it, all is acknowledged."""
        consumer_group = self._groups.get(group)
        if consumer_group is None:
            consumer_group = self._groups[group] = _Group()
        queues = consumer_group.offsets.setdefault(topic, {})
        queues[queue_id] = max(queues.get(queue_id, 0), pop.consumed_up_to())

    def _apply_pop(self, index: int, command: PopMessages) -> MessagesPopped:
        if command.store_timestamp_ms > self._clock_ms:
            self._clock_ms = command.store_timestamp_ms
            self._expire_producers()
        now = command.store_timestamp_ms
        topic = self._require_topic(command.topic)
        for queue in command.queues:
            self._require_queue(topic, queue.queue_id)
        deadline = now + command.invisible_ms
        popped: list[Popped] = []
        dead: list[SendReceipt | Refused] = []
        position = index << SLOT_BITS
        policy = self.retry_policy(command.group)
        for slot, (message, (queue_id, offset)) in enumerate(
            zip(command.messages, command.dead, strict=True)
        ):
            dead.append(
                self._dead_letter(position | slot, message, command, queue_id, offset, now, policy)
            )
        for queue in command.queues:
            consume_queue = topic.queues[queue.queue_id]
            pop = self._pop_queue(command.group, command.topic, queue.queue_id, create=True)
            assert pop is not None
            for offset in queue.offsets:
                held = pop.inflight.get(offset)
                if held is not None:
                    held_until, attempt, _ = held
                    if held_until > now or attempt >= policy.max_attempts:
                        continue  # another receive has it, or it is for the dead letters
                    attempt += 1
                elif pop.next_offset <= offset < min(queue.scan_end, consume_queue.max_offset):
                    if len(pop.inflight) >= MAX_POP_INFLIGHT:
                        break
                    attempt = 1
                else:
                    continue  # taken (or acknowledged) by a receive in between
                pop.inflight[offset] = (deadline, attempt, index)
                popped.append(Popped(queue.queue_id, offset, attempt, deadline, index))
            if pop.next_offset < queue.scan_end <= consume_queue.max_offset:
                pop.next_offset = queue.scan_end
            self._commit_pop(command.group, command.topic, queue.queue_id, pop)
        return MessagesPopped(tuple(popped), tuple(dead))

    def _dead_letter(
        self,
        position: int,
        message: Message,
        command: PopMessages,
        queue_id: int,
        offset: int,
        now: int,
        policy: RetryPolicy,
    ) -> SendReceipt | Refused:
        """A received message whose last attempt expired: to the dead-letter topic."""
        pop = self._pop_queue(command.group, command.topic, queue_id, create=False)
        held = None if pop is None else pop.inflight.get(offset)
        if pop is None or held is None or held[0] > now or held[1] < policy.max_attempts:
            return Refused(BadRequest(f"offset {offset} of queue {queue_id} is not dead"))
        if message.topic != dead_letter_topic(command.group):
            return Refused(BadRequest("a dead letter goes to its group's dead-letter topic"))
        try:
            topic = self._topic_for_store(message.topic, 0, [])
        except BadRequest as error:
            return Refused(error)
        del pop.inflight[offset]
        self._commit_pop(command.group, command.topic, queue_id, pop)
        stored_at = topic.queues[0].append(position, tag_code(message.tags))
        return SendReceipt(
            self.group, position >> SLOT_BITS, position & _SLOT_MASK, 0, stored_at, False
        )

    def _apply_ack_popped(self, command: AckPopped) -> PoppedAcked:
        acked: list[bool] = []
        changed: set[int] = set()
        for ref in command.refs:
            pop = self._pop_queue(command.group, command.topic, ref.queue_id, create=False)
            held = None if pop is None else pop.inflight.get(ref.offset)
            if pop is None or held is None or held[2] != ref.pop_id:
                acked.append(False)
                continue
            del pop.inflight[ref.offset]
            changed.add(ref.queue_id)
            acked.append(True)
        for queue_id in sorted(changed):
            pop = self._pop_queue(command.group, command.topic, queue_id, create=False)
            assert pop is not None
            self._commit_pop(command.group, command.topic, queue_id, pop)
        return PoppedAcked(tuple(acked))

    def _apply_change_invisible(self, command: ChangeInvisible) -> InvisibleChanged:
        if command.store_timestamp_ms > self._clock_ms:
            self._clock_ms = command.store_timestamp_ms
        ref = command.ref
        pop = self._pop_queue(command.group, command.topic, ref.queue_id, create=False)
        held = None if pop is None else pop.inflight.get(ref.offset)
        if pop is None or held is None or held[2] != ref.pop_id:
            return InvisibleChanged(False, 0)
        until = command.store_timestamp_ms + command.invisible_ms
        pop.inflight[ref.offset] = (until, held[1], held[2])
        return InvisibleChanged(True, until)

    def _apply_configure_group(self, command: ConfigureGroup) -> GroupConfigured:
        if command.group not in self._policies and len(self._policies) >= MAX_RETRY_POLICIES:
            raise BadRequest(f"{MAX_RETRY_POLICIES} consumer groups have a policy already")
        self._policies[command.group] = command.policy
        return GroupConfigured(command.group, command.policy)

    def _apply_delete_group(self, command: DeleteGroup) -> GroupDeleted:
        group = command.group
        existed = self._groups.pop(group, None) is not None
        existed = self._policies.pop(group, None) is not None or existed
        for key in [key for key in self._pops if key[0] == group]:
            del self._pops[key]
            existed = True
        return GroupDeleted(group, existed)

    def _find_original(
        self, producer_id: str, window: _ProducerWindow, sequence: int
    ) -> SendReceipt | None:
        ring_slot = window.find(producer_id, sequence, self._settings.idempotence_window)
        if ring_slot is None:
            return None
        window.last_active_ms = self._clock_ms
        self._producers.move_to_end(producer_id)
        return self._original_receipt(window, ring_slot)

    def _new_topic(self, config: TopicConfig) -> _Topic:
        queues = [self.queues.new_queue(config.name, i) for i in range(config.queue_count)]
        return _Topic(config, queues)

    @staticmethod
    def _offset_in_queue(offset: int, queue: ConsumeQueue) -> bool:
        """A group's offset may point at most just past the queue's last message."""
        return offset <= queue.max_offset

    def _original_receipt(self, window: _ProducerWindow, ring_slot: int) -> SendReceipt:
        position = window.positions[ring_slot]
        return SendReceipt(
            self.group,
            position >> SLOT_BITS,
            position & _SLOT_MASK,
            window.queue_ids[ring_slot],
            window.offsets[ring_slot],
            True,
        )

    def _add_producer(self, producer_id: str) -> _ProducerWindow:
        while len(self._producers) >= self._settings.max_producers:
            self._producers.popitem(last=False)
        window = _ProducerWindow()
        self._producers[producer_id] = window
        return window

    def _expire_producers(self) -> None:
        deadline_ms = self._clock_ms - self._settings.producer_expiry_ms
        while self._producers:
            oldest = next(iter(self._producers.values()))
            if oldest.last_active_ms >= deadline_ms:
                break
            self._producers.popitem(last=False)

    def _apply_commit_offsets(self, command: CommitOffsets) -> OffsetsCommitted:
        group = self._groups.get(command.group)
        generation = 0 if group is None else group.reset_generation
        outcomes: list[CommitOutcome] = []
        for commit in command.offsets:
            topic = self._topics.get(commit.topic)
            if command.reset_generation is not None and command.reset_generation != generation:
                outcomes.append(CommitOutcome.STALE_GENERATION)
            elif topic is None or commit.queue_id >= topic.config.queue_count:
                outcomes.append(CommitOutcome.UNKNOWN_QUEUE)
            elif not self._offset_in_queue(commit.offset, topic.queues[commit.queue_id]):
                outcomes.append(CommitOutcome.BEYOND_MAX_OFFSET)
            else:
                if group is None:
                    group = self._groups[command.group] = _Group()
                queues = group.offsets.setdefault(commit.topic, {})
                current = queues.get(commit.queue_id)
                if current is None or commit.offset > current:
                    queues[commit.queue_id] = commit.offset
                    outcomes.append(CommitOutcome.ADVANCED)
                else:
                    outcomes.append(CommitOutcome.UNCHANGED)
        return OffsetsCommitted(tuple(outcomes))

    def _apply_reset_offsets(self, command: ResetOffsets) -> OffsetsReset:
        topic = self._require_topic(command.topic)
        for item in command.offsets:
            queue = self._require_queue(topic, item.queue_id)
            # From 0: what a replica holds of a queue is its own (retention), never apply's.
            if not 0 <= item.offset <= queue.max_offset:
                raise InvalidOffset(command.topic, item.queue_id, item.offset, 0, queue.max_offset)
        group = self._groups.get(command.group)
        if group is None:
            group = self._groups[command.group] = _Group()
        queues = group.offsets.setdefault(command.topic, {})
        for item in command.offsets:
            queues[item.queue_id] = item.offset
            # Simple consumers start over there too, what they held forgotten.
            self._pops.pop((command.group, command.topic, item.queue_id), None)
        group.reset_generation += 1
        return OffsetsReset(command.group, command.topic, group.reset_generation)

    def _apply_create_topic(self, command: CreateTopic) -> TopicCreated:
        config = TopicConfig(command.name, command.queue_count, command.fifo)
        existing = self._topics.get(command.name)
        if existing is not None:
            # A retried create (say, across a failover) must not fail because the first landed.
            if existing.config != config:
                raise TopicExists(command.name)
            return TopicCreated(config, created=False)
        self._check_topic_room(command.name)
        self._topics[command.name] = self._new_topic(config)
        self.topics_changed += 1
        return TopicCreated(config, created=True)

    def _apply_update_topic(self, command: UpdateTopic) -> TopicUpdated:
        topic = self._require_topic(command.name)
        if command.queue_count < topic.config.queue_count:
            # Removing queues would strand their messages and offsets; refused, not lost.
            raise InvalidTopicConfig(
                command.name,
                f"cannot shrink from {topic.config.queue_count} to {command.queue_count} queues",
            )
        topic.queues.extend(
            self.queues.new_queue(command.name, queue_id)
            for queue_id in range(topic.config.queue_count, command.queue_count)
        )
        topic.config = TopicConfig(command.name, command.queue_count, command.fifo)
        self.topics_changed += 1
        return TopicUpdated(topic.config)

    def _apply_delete_topic(self, command: DeleteTopic) -> TopicDeleted:
        self._require_topic(command.name)
        del self._topics[command.name]
        self.topics_changed += 1
        self.queues.drop_topic(command.name)
        for group in self._groups.values():
            group.offsets.pop(command.name, None)
        for key in [key for key in self._pops if key[1] == command.name]:
            del self._pops[key]
        return TopicDeleted(command.name)

    def _check_topic_room(self, name: str) -> None:
        if len(self._topics) >= self._settings.max_topics:
            raise TopicLimitReached(name, self._settings.max_topics)

    def _apply_user_change(self, command: AddUser | RemoveUser | Grant | Revoke) -> UsersChanged:
        key = command.access_key
        if type(command) is AddUser:
            if key in self._users:
                raise UserExists(key)
            if len(self._users) >= MAX_USERS:
                raise BadRequest(f"cannot add user {key!r}: {MAX_USERS} users exist")
            user: User | None = User(key, command.stored_key, frozenset(command.rules))
        else:
            existing = self._users.get(key)
            if existing is None:
                raise UserNotFound(key)
            if type(command) is RemoveUser:
                user = None
            elif type(command) is Grant:
                if len(existing.rules) >= MAX_RULES_PER_USER and command.rule not in existing.rules:
                    raise BadRequest(f"user {key!r} has {MAX_RULES_PER_USER} rules already")
                user = attrs.evolve(existing, rules=existing.rules | {command.rule})
            else:
                assert type(command) is Revoke
                user = attrs.evolve(existing, rules=existing.rules - {command.rule})
        if user is None:
            del self._users[key]
        else:
            self._users[key] = user
        return UsersChanged(key, user)

    def _apply_configure(self, command: ConfigureBroker) -> SettingsChanged:
        self._settings = command.settings
        while len(self._producers) > self._settings.max_producers:
            self._producers.popitem(last=False)
        self._expire_producers()
        return SettingsChanged(command.settings)

    # -- checks for the leader, before proposing -----------------------------------------------

    def validate_send(
        self, messages: Sequence[Message], store_timestamp_ms: int | None = None
    ) -> None:
        """Raise the typed error apply would refuse the first refusable message with.

        The leader calls it before proposing, so that a bad send is answered at once and never
        costs a log entry. Apply checks again: state may change before the entry commits.
        A message this state already holds (an idempotent retry) passes: apply answers it with
        the original receipt (see also ``find_receipt``).
        """
        if not 1 <= len(messages) <= MAX_BATCH_MESSAGES:
            raise InvalidMessage("batch", f"must hold 1 to {MAX_BATCH_MESSAGES} messages")
        settings = self._settings
        for message in messages:
            if type(message) is not Message:
                raise InvalidMessage("batch", "every item must be a Message")
            if (
                message.producer_id is not None
                and message.sequence is not None
                and self.find_receipt(message.producer_id, message.sequence) is not None
            ):
                continue
            if len(message.body) > settings.max_body_bytes:
                raise MessageTooLarge(len(message.body), settings.max_body_bytes)
            queue_count = self.queue_count_for_send(message.topic)
            if message.queue_id >= queue_count:
                raise QueueNotFound(message.topic, message.queue_id, queue_count)
            if message.properties:
                stamp = self._clock_ms if store_timestamp_ms is None else store_timestamp_ms
                self._schedule(message.topic, message.properties, stamp)

    def queue_count_for_send(self, topic: str) -> int:
        """The queues a send to ``topic`` may choose from, counting auto-creation.

        Raises ``TopicNotFound`` if the topic does not exist and auto-creation is off.
        """
        existing = self._topics.get(topic)
        if existing is not None:
            return existing.config.queue_count
        system = system_topic_group(topic) is not None
        if self._settings.auto_create_topics or system:
            self._check_topic_room(topic)
            return 1 if system else self._settings.default_queue_count
        raise TopicNotFound(topic)

    def find_receipt(self, producer_id: str, sequence: int) -> SendReceipt | None:
        """The original receipt if this producer's ``sequence`` is stored, else None.

        Raises ``SequenceOutsideWindow`` if it may have been stored and forgotten.
        """
        window = self._producers.get(producer_id)
        if window is None:
            return None
        ring_slot = window.find(producer_id, sequence, self._settings.idempotence_window)
        return None if ring_slot is None else self._original_receipt(window, ring_slot)

    # -- queries -------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def settings(self) -> BrokerSettings:
        return self._settings

    @property
    def last_store_timestamp_ms(self) -> int:
        """The highest store timestamp applied. A leader stamps ``max(now, this)``, so that
        store timestamps never go back along the log, even across leaders with skewed clocks."""
        return self._clock_ms

    def user(self, access_key: str) -> User | None:
        return self._users.get(access_key)

    @property
    def user_count(self) -> int:
        """How many users exist (asked on every anonymous request: no sorting)."""
        return len(self._users)

    def users(self) -> tuple[User, ...]:
        return tuple(sorted(self._users.values(), key=lambda user: user.access_key))

    def topics(self) -> tuple[TopicConfig, ...]:
        return tuple(self._topics[name].config for name in sorted(self._topics))

    def topic(self, name: str) -> TopicConfig | None:
        existing = self._topics.get(name)
        return None if existing is None else existing.config

    def describe_topic(self, name: str) -> TopicDescription:
        topic = self._require_topic(name)
        queues = tuple(
            QueueStatus(queue_id, queue.base_offset, queue.max_offset)
            for queue_id, queue in enumerate(topic.queues)
        )
        config = topic.config
        return TopicDescription(config.name, config.queue_count, config.fifo, queues)

    def min_offset(self, topic: str, queue_id: int) -> int:
        return self._require_queue(self._require_topic(topic), queue_id).base_offset

    def max_offset(self, topic: str, queue_id: int) -> int:
        """The offset the next message of the queue will get (its message count, untrimmed)."""
        return self._require_queue(self._require_topic(topic), queue_id).max_offset

    def locate(
        self, topic: str, queue_id: int, from_offset: int, max_count: int
    ) -> list[QueuePosition]:
        """Up to ``max_count`` positions from ``from_offset`` on (from ``min_offset`` if lower)."""
        return self.scan(topic, queue_id, from_offset, max_count, max_scanned=max_count).positions

    def scan(
        self,
        topic: str,
        queue_id: int,
        from_offset: int,
        max_count: int,
        tag_filter: TagFilter = MATCH_ALL,
        max_scanned: int = DEFAULT_MAX_SCANNED,
    ) -> ScanResult:
        """Positions whose tag code may match ``tag_filter``, looking at ``max_scanned`` at most.

        Codes can collide: confirm each message with ``tag_filter.matches`` once it is read.
        Raises ``TopicNotFound`` or ``QueueNotFound``.
        """
        queue = self._require_queue(self._require_topic(topic), queue_id)
        start = max(from_offset, queue.base_offset)
        if start >= queue.max_offset or max_count <= 0 or max_scanned <= 0:
            return ScanResult([], start)
        codes = tag_filter.codes
        if codes is None:
            # Every position matches: one read, no per-message test.
            stop = min(queue.max_offset, start + min(max_count, max_scanned))
            positions, _ = queue.read(start, stop)
            every = [
                QueuePosition(start + number, packed >> SLOT_BITS, packed & _SLOT_MASK)
                for number, packed in enumerate(positions)
            ]
            return ScanResult(every, stop)
        found: list[QueuePosition] = []
        stop = min(queue.max_offset, start + max_scanned)
        positions, tag_codes = queue.read(start, stop)
        for number, code in enumerate(tag_codes):
            if code in codes:
                packed = positions[number]
                found.append(
                    QueuePosition(start + number, packed >> SLOT_BITS, packed & _SLOT_MASK)
                )
                if len(found) >= max_count:
                    return ScanResult(found, start + number + 1)
        return ScanResult(found, stop)

    def offset_of(self, topic: str, queue_id: int, raft_index: int, slot: int) -> int | None:
        """The queue offset of the message at (raft index, slot), if it is in that queue."""
        queue = self._require_queue(self._require_topic(topic), queue_id)
        packed = raft_index << SLOT_BITS | slot
        offset = queue.find(packed)
        if offset < queue.max_offset:
            [found], _ = queue.read(offset, offset + 1)
            if found == packed:
                return offset
        return None

    def first_held_offset(self, topic: str, queue_id: int, log_first_index: int) -> int:
        """The first offset whose message a log starting at ``log_first_index`` still holds
        (retention trims the log, not the queues); ``max_offset`` if none. Local to a replica:
        never used by ``apply``."""
        queue = self._require_queue(self._require_topic(topic), queue_id)
        return queue.find(log_first_index << SLOT_BITS)

    def offset_for_timestamp(
        self,
        topic: str,
        queue_id: int,
        timestamp_ms: int,
        store_timestamp_of: Callable[[int], int],
        from_offset: int = 0,
    ) -> int:
        """The first offset stored at or after ``timestamp_ms`` (``max_offset`` if none).

        ``store_timestamp_of(raft_index)`` reads an entry's store timestamp from the log; a
        binary search calls it about log2(queue length) times, over offsets from
        ``from_offset`` (the first one the log still holds) on. Exact when store timestamps do
        not go back along the log (see ``last_store_timestamp_ms``).
        """
        queue = self._require_queue(self._require_topic(topic), queue_id)
        low, high = max(from_offset, queue.base_offset), queue.max_offset
        while low < high:
            middle = (low + high) // 2
            [position], _ = queue.read(middle, middle + 1)
            if store_timestamp_of(position >> SLOT_BITS) < timestamp_ms:
                low = middle + 1
            else:
                high = middle
        return low

    def groups(self) -> tuple[str, ...]:
        """Consumer groups that ever committed or reset an offset, sorted."""
        return tuple(sorted(self._groups))

    def group_topics(self, group: str) -> tuple[str, ...]:
        existing = self._groups.get(group)
        return () if existing is None else tuple(sorted(existing.offsets))

    def committed_offset(self, group: str, topic: str, queue_id: int) -> int | None:
        """The next offset the group will consume in this queue, or None if never committed."""
        existing = self._groups.get(group)
        if existing is None:
            return None
        return existing.offsets.get(topic, {}).get(queue_id)

    def reset_generation(self, group: str) -> int:
        """How many resets the group went through; consumers send it with their commits."""
        existing = self._groups.get(group)
        return 0 if existing is None else existing.reset_generation

    def lag(self, group: str, topic: str) -> tuple[QueueLag, ...]:
        """Per queue: messages stored but not yet committed by the group."""
        existing = self._require_topic(topic)
        lags = []
        for queue_id, queue in enumerate(existing.queues):
            committed = self.committed_offset(group, topic, queue_id)
            consumed_up_to = queue.base_offset if committed is None else committed
            lags.append(
                QueueLag(
                    topic, queue_id, committed, queue.max_offset, queue.max_offset - consumed_up_to
                )
            )
        return tuple(lags)

    def producer_count(self) -> int:
        return len(self._producers)

    # -- timers and retry policies ---------------------------------------------------------------

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    def next_timer_due_ms(self) -> int | None:
        return self._timers.next_due_ms()

    def due_timers(self, now_ms: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` timers due at ``now_ms``, earliest first: (due, position)."""
        return self._timers.due(now_ms, limit)

    def lowest_timer_index(self) -> int | None:
        """The lowest log index a pending timer's message is at: the log must keep it (and a
        follower must get it), so retention and snapshots take it into account."""
        lowest = self._timers.lowest_position()
        return None if lowest is None else lowest >> SLOT_BITS

    def retry_policy(self, group: str) -> RetryPolicy:
        return self._policies.get(group, _DEFAULT_POLICY)

    def knows_group(self, group: str) -> bool:
        """The group has a retry policy, committed offsets or receives here."""
        return (
            group in self._policies
            or group in self._groups
            or any(key[0] == group for key in self._pops)
        )

    def has_retry_policy(self, group: str) -> bool:
        return group in self._policies

    def pop_progress(
        self, group: str, topic: str, queue_id: int
    ) -> tuple[int, dict[int, tuple[int, int, int]]]:
        """A simple consumer group's place in a queue: where new messages are looked for, and
        what is received and not acknowledged (offset -> invisible until, attempt, pop id)."""
        pop = self._pops.get((group, topic, queue_id))
        if pop is None:
            committed = self.committed_offset(group, topic, queue_id)
            return (0 if committed is None else committed), {}
        return pop.next_offset, dict(pop.inflight)

    def _require_topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise TopicNotFound(name)
        return topic

    def _require_queue(self, topic: _Topic, queue_id: int) -> ConsumeQueue:
        if not 0 <= queue_id < topic.config.queue_count:
            raise QueueNotFound(topic.config.name, queue_id, topic.config.queue_count)
        return topic.queues[queue_id]

    # -- comparison ------------------------------------------------------------------------------

    def _comparable(self) -> tuple[Any, ...]:
        return (
            self.group,
            self._applied_index,
            self._settings,
            self._clock_ms,
            sorted(
                (name, topic.config, [_comparable_queue(queue) for queue in topic.queues])
                for name, topic in self._topics.items()
            ),
            sorted(
                (name, group.reset_generation, sorted(group.offsets.items()))
                for name, group in self._groups.items()
            ),
            # Order matters here: it decides which producer is forgotten first.
            [(name, window.comparable()) for name, window in self._producers.items()],
            sorted((key, user.stored_key, sorted(user.rules)) for key, user in self._users.items()),
            self._timers.comparable(),
            sorted(self._policies.items()),
            sorted(
                (key, pop.next_offset, sorted(pop.inflight.items()))
                for key, pop in self._pops.items()
            ),
        )

    def __eq__(self, other: object) -> bool:
        """Equal when every replicated fact is: what a replica rebuilt must equal."""
        if not isinstance(other, BrokerState):
            return NotImplemented
        return self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]  # mutable


#: The layout of ``BrokerState.to_snapshot``; a snapshot of another version is not read.
SNAPSHOT_FORMAT_VERSION = 2

_DEFAULT_POLICY = RetryPolicy()


def _packed(values: array[int]) -> bytes | memoryview:
    """An array's items, little-endian, whatever this machine's byte order (msgpack packs the
    view as bytes, without a copy first)."""
    if sys.byteorder == "little":
        return memoryview(values).cast("B")
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def _unpacked(typecode: str, data: object) -> array[int]:
    if not isinstance(data, bytes):
        raise SnapshotError(f"expected bytes for an array of {typecode!r}")
    values = array(typecode)
    if len(data) % values.itemsize:
        raise SnapshotError(f"{len(data)} bytes are not whole items of {values.itemsize}")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def _int(value: object) -> int:
    if type(value) is not int:
        raise SnapshotError(f"expected an integer, got {type(value).__name__}")
    return value
