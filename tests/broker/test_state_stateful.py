"""Stateful: any interleaving of sends (with retried idempotent sends), topic changes, offset
commits and resets, consumers joining, leaving and consuming, settings changes, garbage entries
and restarts keeps BrokerState equal to a simple model. Checked after every step:

- per queue, the stored messages are exactly the model's, in append order: none lost, none
  reordered, none stored that the model refused;
- no (producer id, sequence) is stored twice, and a retry is answered with the original receipt;
- a committed offset never goes back except through a reset;
- a restart (a fresh state rebuilt by re-applying the same entries) equals the state it replaces.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dledger_mq.broker.assignment import assign_queues
from dledger_mq.broker.consume_queue import FileQueueStore
from dledger_mq.broker.message_id import format_message_id
from dledger_mq.broker.records import (
    BrokerSettings,
    Command,
    CommitOffsets,
    ConfigureBroker,
    CreateTopic,
    DeleteTopic,
    Message,
    OffsetCommit,
    QueueOffset,
    ResetOffsets,
    SendBatch,
    UpdateTopic,
    decode_command,
    encode_command,
    read_messages,
)
from dledger_mq.broker.state import (
    ApplyResult,
    BrokerState,
    CommitOutcome,
    OffsetsCommitted,
    OffsetsReset,
    Refused,
    SendBatchResult,
    SendReceipt,
    TopicConfig,
    TopicCreated,
    TopicDeleted,
    TopicUpdated,
)
from dledger_mq.errors import (
    BadRequest,
    InvalidOffset,
    InvalidTopicConfig,
    MessageTooLarge,
    QueueNotFound,
    SequenceOutsideWindow,
    TopicExists,
    TopicNotFound,
)
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

GROUP = "broker-a"
TOPICS = ("orders", "payments", "audit")
GROUPS = ("billing", "stats")
PRODUCERS = ("p1", "p2")
CONSUMERS = ("c1", "c2", "c3")
#: Small, so that retries fall out of it.
WINDOW = 6
DEFAULT_QUEUE_COUNT = 2
MAX_BODY_BYTES = 16
MAX_QUEUE_ID = 3
START_MS = 1_700_000_000_000

QueueKey = tuple[str, int]
OffsetKey = tuple[str, str, int]


@attrs.frozen
class Planned:
    """A message of a send rule, with what the model expects of it."""

    message: Message
    #: (producer id, sequence) of an idempotent message.
    key: tuple[str, int] | None


message_plans = st.tuples(
    st.sampled_from(TOPICS),
    st.sampled_from([0, 0, 0, 1, 1, 2, MAX_QUEUE_ID]),
    st.sampled_from([None, *PRODUCERS]),
    st.integers(0, 15),  # the sequence, for idempotent messages
    st.integers(0, 15),  # 0: an oversized body
    st.sampled_from([None, "paid", "refunded"]),
)


class BrokerAgainstModel(RuleBasedStateMachine):
    @initialize(auto_create=st.booleans())
    def start(self, auto_create: bool) -> None:
        # The node's queue store, in files on a simulated disk, small enough to roll files.
        self.state = BrokerState(
            GROUP,
            FileQueueStore(MemoryDisk(), "/consumequeue", entries_per_file=5, flush_entries=3),
        )
        self.entries: list[tuple[int, bytes]] = []
        self.last_index = 0
        self.clock_ms = START_MS
        self.settings = BrokerSettings(
            max_body_bytes=MAX_BODY_BYTES,
            auto_create_topics=auto_create,
            default_queue_count=DEFAULT_QUEUE_COUNT,
            idempotence_window=WINDOW,
        )
        self.apply(ConfigureBroker(self.settings))
        # The model.
        self.topics: dict[str, TopicConfig] = {}
        self.queues: dict[QueueKey, list[bytes]] = {}
        self.attempted: dict[tuple[str, int], Message] = {}
        self.stored: dict[tuple[str, int], tuple[str, int, int]] = {}
        self.highest_sequence: dict[str, int] = {}
        self.offsets: dict[OffsetKey, int] = {}
        self.generations: dict[str, int] = {}
        self.consumers: set[str] = set()
        self.bodies_made = 0
        self.reset_keys: set[OffsetKey] = set()
        self.previous_offsets: dict[OffsetKey, int] = {}
        # A topic and a consumer from the start, so that short runs store and consume too.
        self.create_topic("orders", 2, False)
        self.join("c1")

    def apply(self, command: Command | bytes) -> ApplyResult:
        data = command if isinstance(command, bytes) else encode_command(command)
        # Gaps stand for entries the broker never sees (a new leader's no-op).
        self.last_index += 2 if len(self.entries) % 3 == 0 else 1
        self.entries.append((self.last_index, data))
        return self.state.apply(self.last_index, data)

    # -- sends ------------------------------------------------------------------------------

    def plan(
        self,
        topic: str,
        queue_id: int,
        producer: str | None,
        sequence: int,
        size: int,
        tags: str | None,
    ) -> Planned:
        key = None if producer is None else (producer, sequence)
        if key is not None and key in self.attempted:
            return Planned(self.attempted[key], key)  # a retry: the very same message
        self.bodies_made += 1
        body = b"m%d" % self.bodies_made
        if size == 0:
            body = body.ljust(MAX_BODY_BYTES + 1, b".")
        message = Message(
            topic,
            queue_id,
            body,
            tags=tags,
            producer_id=producer,
            sequence=None if producer is None else sequence,
            born_timestamp_ms=self.clock_ms,
        )
        if key is not None:
            self.attempted[key] = message
        return Planned(message, key)

    @rule(plans=st.lists(message_plans, min_size=1, max_size=5))
    def send(self, plans: list[Any]) -> None:
        self.send_planned([self.plan(*plan) for plan in plans])

    @precondition(lambda self: bool(self.topics))
    @rule(data=st.data(), count=st.integers(1, 8), producer=st.sampled_from([None, *PRODUCERS]))
    def send_to_existing_queues(
        self, data: st.DataObject, count: int, producer: str | None
    ) -> None:
        """Mostly storable sends, so that runs build up queues worth consuming and rebuilding."""
        planned: list[Planned] = []
        for _ in range(count):
            topic = data.draw(st.sampled_from(sorted(self.topics)), label="topic")
            queue_id = data.draw(st.integers(0, self.topics[topic].queue_count - 1), label="queue")
            sequence = self.highest_sequence.get(producer or "", -1) + 1 + len(planned)
            planned.append(self.plan(topic, queue_id, producer, sequence, 1, None))
        self.send_planned(planned)

    def send_planned(self, planned: list[Planned]) -> None:
        self.clock_ms += 1
        result = self.apply(SendBatch(self.clock_ms, [p.message for p in planned]))
        assert isinstance(result, SendBatchResult)
        assert len(result.outcomes) == len(planned)
        created: list[str] = []
        for slot, (plan, outcome) in enumerate(zip(planned, result.outcomes, strict=True)):
            self.check_outcome(slot, plan, outcome, created)
        assert list(result.created_topics) == created

    def check_outcome(
        self, slot: int, plan: Planned, outcome: SendReceipt | Refused, created: list[str]
    ) -> None:
        message, key = plan.message, plan.key
        if key is not None and key[0] in self.highest_sequence:
            too_old = key[1] <= self.highest_sequence[key[0]] - WINDOW
            if key in self.stored:
                if too_old and isinstance(outcome, Refused):
                    assert isinstance(outcome.error, SequenceOutsideWindow)
                    event("a stored sequence fell out of the window")
                    return
                assert isinstance(outcome, SendReceipt) and outcome.duplicate, outcome
                event("a retry answered with the original receipt")
                assert (outcome.msg_id, outcome.queue_id, outcome.offset) == self.stored[key]
                return
            if too_old:
                assert isinstance(outcome, Refused), outcome
                assert isinstance(outcome.error, SequenceOutsideWindow)
                event("a new sequence below the window refused")
                return
        expected_error = self.expected_send_error(message)
        if expected_error is not None:
            assert isinstance(outcome, Refused), outcome
            assert type(outcome.error) is expected_error, outcome
            return
        if message.topic not in self.topics:
            self.topics[message.topic] = TopicConfig(message.topic, DEFAULT_QUEUE_COUNT, False)
            for queue_id in range(DEFAULT_QUEUE_COUNT):
                self.queues[(message.topic, queue_id)] = []
            created.append(message.topic)
        queue = self.queues[(message.topic, message.queue_id)]
        queue.append(message.body)
        expected = (
            format_message_id(GROUP, self.last_index, slot),
            message.queue_id,
            len(queue) - 1,
        )
        assert isinstance(outcome, SendReceipt) and not outcome.duplicate, outcome
        assert (outcome.msg_id, outcome.queue_id, outcome.offset) == expected
        if key is not None:
            self.stored[key] = expected
            self.highest_sequence[key[0]] = max(self.highest_sequence.get(key[0], -1), key[1])

    def expected_send_error(self, message: Message) -> type[BadRequest] | None:
        if len(message.body) > MAX_BODY_BYTES:
            return MessageTooLarge
        topic = self.topics.get(message.topic)
        if topic is None and not self.settings.auto_create_topics:
            return TopicNotFound
        queue_count = DEFAULT_QUEUE_COUNT if topic is None else topic.queue_count
        return QueueNotFound if message.queue_id >= queue_count else None

    # -- topics -----------------------------------------------------------------------------

    @rule(topic=st.sampled_from(TOPICS), queue_count=st.integers(1, 4), fifo=st.booleans())
    def create_topic(self, topic: str, queue_count: int, fifo: bool) -> None:
        result = self.apply(CreateTopic(topic, queue_count, fifo))
        config = TopicConfig(topic, queue_count, fifo)
        if topic not in self.topics:
            assert result == TopicCreated(config, created=True)
            self.topics[topic] = config
            for queue_id in range(queue_count):
                self.queues[(topic, queue_id)] = []
        elif self.topics[topic] == config:
            assert result == TopicCreated(config, created=False)
        else:
            assert isinstance(result, Refused) and isinstance(result.error, TopicExists)

    @rule(topic=st.sampled_from(TOPICS), queue_count=st.integers(1, 4), fifo=st.booleans())
    def update_topic(self, topic: str, queue_count: int, fifo: bool) -> None:
        result = self.apply(UpdateTopic(topic, queue_count, fifo))
        existing = self.topics.get(topic)
        if existing is None:
            assert isinstance(result, Refused) and isinstance(result.error, TopicNotFound)
        elif queue_count < existing.queue_count:
            assert isinstance(result, Refused) and isinstance(result.error, InvalidTopicConfig)
        else:
            assert result == TopicUpdated(TopicConfig(topic, queue_count, fifo))
            for queue_id in range(existing.queue_count, queue_count):
                self.queues[(topic, queue_id)] = []
            self.topics[topic] = TopicConfig(topic, queue_count, fifo)

    @rule(topic=st.sampled_from(TOPICS))
    def delete_topic(self, topic: str) -> None:
        result = self.apply(DeleteTopic(topic))
        if topic not in self.topics:
            assert isinstance(result, Refused) and isinstance(result.error, TopicNotFound)
            return
        assert result == TopicDeleted(topic)
        del self.topics[topic]
        for queue_key in [key for key in self.queues if key[0] == topic]:
            del self.queues[queue_key]
        for offset_key in [key for key in self.offsets if key[1] == topic]:
            del self.offsets[offset_key]
            self.previous_offsets.pop(offset_key, None)

    @rule()
    def toggle_auto_creation(self) -> None:
        self.settings = attrs.evolve(
            self.settings, auto_create_topics=not self.settings.auto_create_topics
        )
        self.apply(ConfigureBroker(self.settings))

    # -- offsets ----------------------------------------------------------------------------

    @rule(
        group=st.sampled_from(GROUPS),
        commits=st.lists(
            st.tuples(st.sampled_from(TOPICS), st.integers(0, MAX_QUEUE_ID), st.integers(0, 8)),
            min_size=1,
            max_size=4,
        ),
        generation=st.sampled_from(["none", "current", "stale"]),
    )
    def commit(self, group: str, commits: list[tuple[str, int, int]], generation: str) -> None:
        current = self.generations.get(group, 0)
        carried = {"none": None, "current": current, "stale": current + 1}[generation]
        result = self.apply(
            CommitOffsets(group, [OffsetCommit(*commit) for commit in commits], carried)
        )
        expected = []
        for topic, queue_id, offset in commits:
            queue = self.queues.get((topic, queue_id))
            if carried is not None and carried != current:
                expected.append(CommitOutcome.STALE_GENERATION)
            elif queue is None:
                expected.append(CommitOutcome.UNKNOWN_QUEUE)
            elif offset > len(queue):
                expected.append(CommitOutcome.BEYOND_MAX_OFFSET)
            elif offset > self.offsets.get((group, topic, queue_id), -1):
                self.offsets[(group, topic, queue_id)] = offset
                expected.append(CommitOutcome.ADVANCED)
            else:
                expected.append(CommitOutcome.UNCHANGED)
        assert result == OffsetsCommitted(tuple(expected))

    @rule(
        group=st.sampled_from(GROUPS),
        topic=st.sampled_from(TOPICS),
        resets=st.dictionaries(st.integers(0, MAX_QUEUE_ID), st.integers(0, 6), min_size=1),
    )
    def reset(self, group: str, topic: str, resets: dict[int, int]) -> None:
        result = self.apply(
            ResetOffsets(group, topic, [QueueOffset(q, offset) for q, offset in resets.items()])
        )
        if topic not in self.topics:
            assert isinstance(result, Refused) and isinstance(result.error, TopicNotFound)
            return
        for queue_id, offset in resets.items():  # the first bad item names the refusal
            if (topic, queue_id) not in self.queues:
                assert isinstance(result, Refused) and isinstance(result.error, QueueNotFound)
                return
            if offset > len(self.queues[(topic, queue_id)]):
                assert isinstance(result, Refused) and isinstance(result.error, InvalidOffset)
                return
        self.generations[group] = self.generations.get(group, 0) + 1
        assert result == OffsetsReset(group, topic, self.generations[group])
        for queue_id, offset in resets.items():
            self.offsets[(group, topic, queue_id)] = offset
            self.reset_keys.add((group, topic, queue_id))

    # -- consumers (clustering mode, group "billing") ---------------------------------------

    @rule(consumer=st.sampled_from(CONSUMERS))
    def join(self, consumer: str) -> None:
        self.consumers.add(consumer)

    @rule(consumer=st.sampled_from(CONSUMERS))
    def leave(self, consumer: str) -> None:
        self.consumers.discard(consumer)

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data(), topic=st.sampled_from(TOPICS), max_count=st.integers(1, 4))
    def consume(self, data: st.DataObject, topic: str, max_count: int) -> None:
        """A live consumer reads its assigned queues from the committed offsets, in order, and
        acknowledges what it read, carrying the group's reset generation."""
        if topic not in self.topics:
            return
        group = "billing"
        consumer = data.draw(st.sampled_from(sorted(self.consumers)), label="consumer")
        assignment = assign_queues(range(self.topics[topic].queue_count), self.consumers)
        commits = []
        for queue_id in assignment[consumer]:
            start = self.state.committed_offset(group, topic, queue_id) or 0
            positions = self.state.locate(topic, queue_id, start, max_count)
            assert [p.offset for p in positions] == list(range(start, start + len(positions)))
            bodies = [self.body_at(raft_index, slot) for _, raft_index, slot in positions]
            assert bodies == self.queues[(topic, queue_id)][start : start + max_count]
            if positions:
                event("consumed and acknowledged")
                commits.append(OffsetCommit(topic, queue_id, positions[-1].offset + 1))
        if commits:
            self.commit_acknowledged(group, commits)

    def commit_acknowledged(self, group: str, commits: list[OffsetCommit]) -> None:
        generation = self.state.reset_generation(group)
        assert generation == self.generations.get(group, 0)
        result = self.apply(CommitOffsets(group, commits, generation))
        assert result == OffsetsCommitted((CommitOutcome.ADVANCED,) * len(commits))
        for commit in commits:
            self.offsets[(group, commit.topic, commit.queue_id)] = commit.offset

    # -- failures ---------------------------------------------------------------------------

    @rule()
    def restart(self) -> None:
        rebuilt = BrokerState.replay(GROUP, self.entries)
        assert rebuilt == self.state
        event(f"restarted with {sum(map(len, self.queues.values())) // 10 * 10}+ messages")
        self.state = rebuilt

    @rule()
    def restart_from_a_snapshot(self) -> None:
        """A restart from a snapshot instead of the whole log: the same state, and it goes on
        as the model says (every rule and invariant keeps running against it)."""
        # The queues' files outlive the process; the snapshot is taken with them flushed.
        data = self.state.to_snapshot()
        self.state.queues.flush()
        self.state.queues.sync()
        restored = BrokerState.from_snapshot(GROUP, data, self.state.queues)
        assert restored == self.state
        assert restored.applied_index == self.state.applied_index
        event("restarted from a snapshot")
        self.state = restored

    @rule(data=st.binary(max_size=40))
    def garbage_entry(self, data: bytes) -> None:
        try:
            decode_command(data)
        except BadRequest:
            pass
        else:
            return  # by a fluke a valid command; the model would not know it
        assert isinstance(self.apply(data), Refused)

    # -- invariants -------------------------------------------------------------------------

    def body_at(self, raft_index: int, slot: int) -> bytes:
        data = dict(self.entries)[raft_index]
        return read_messages(data, [slot]).messages[0].body

    def teardown(self) -> None:
        if hasattr(self, "entries"):
            event(f"ran {len(self.entries) // 10 * 10}+ entries")
            event(f"stored {sum(map(len, self.queues.values())) // 10 * 10}+ messages")

    @invariant()
    def queues_hold_exactly_the_model_messages_in_order(self) -> None:
        assert self.state.topics() == tuple(self.topics[name] for name in sorted(self.topics))
        data_by_index = dict(self.entries)
        identities = []
        for (topic, queue_id), bodies in self.queues.items():
            positions = self.state.locate(topic, queue_id, 0, 1 << 20)
            assert self.state.max_offset(topic, queue_id) == len(bodies)
            messages = [
                read_messages(data_by_index[raft_index], [slot]).messages[0]
                for _, raft_index, slot in positions
            ]
            assert [m.body for m in messages] == bodies
            identities += [(m.producer_id, m.sequence) for m in messages if m.producer_id]
        assert len(identities) == len(set(identities)), "an idempotent send stored twice"

    @invariant()
    def offsets_match_and_never_go_back_except_by_reset(self) -> None:
        for group in GROUPS:
            assert self.state.reset_generation(group) == self.generations.get(group, 0)
        for (group, topic, queue_id), offset in self.offsets.items():
            assert self.state.committed_offset(group, topic, queue_id) == offset
            previous = self.previous_offsets.get((group, topic, queue_id))
            if previous is not None and (group, topic, queue_id) not in self.reset_keys:
                assert offset >= previous
        self.previous_offsets = dict(self.offsets)
        self.reset_keys.clear()


BrokerAgainstModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBrokerStateAgainstTheModel = BrokerAgainstModel.TestCase
