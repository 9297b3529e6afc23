"""Unit tests of BrokerState, one per rule: topics, sends and their limits, idempotent producers
and their window, offsets and resets, queries, refusals, and rebuilding from the log."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dledger_mq.broker.message_id import parse_message_id
from dledger_mq.broker.records import (
    FORMAT_VERSION,
    BrokerSettings,
    Command,
    CommandTag,
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
    encode_command,
    read_messages,
)
from dledger_mq.broker.state import (
    ApplyResult,
    BrokerState,
    CommitOutcome,
    OffsetsCommitted,
    OffsetsReset,
    QueueLag,
    QueuePosition,
    Refused,
    SendBatchResult,
    SendReceipt,
    SettingsChanged,
    TopicConfig,
    TopicCreated,
    TopicDeleted,
    TopicUpdated,
)
from dledger_mq.broker.tag_filter import parse_tag_expression
from dledger_mq.errors import (
    InvalidOffset,
    InvalidTopicConfig,
    MalformedCommand,
    MessageTooLarge,
    QueueNotFound,
    SequenceOutsideWindow,
    TopicExists,
    TopicNotFound,
    UnsupportedCommandVersion,
)

GROUP = "broker-a"
NOW_MS = 1_700_000_000_000


class Log:
    """A Raft log in miniature: entries get consecutive indexes and are applied at once."""

    def __init__(self, *settings_commands: Command) -> None:
        self.state = BrokerState(GROUP)
        self.entries: list[tuple[int, bytes]] = []
        for command in settings_commands:
            self.apply(command)

    def apply(self, command: Command | bytes) -> ApplyResult:
        data = command if isinstance(command, bytes) else encode_command(command)
        index = len(self.entries) + 1
        self.entries.append((index, data))
        return self.state.apply(index, data)

    def send(self, *messages: Message, store_timestamp_ms: int = NOW_MS) -> SendBatchResult:
        result = self.apply(SendBatch(store_timestamp_ms, messages))
        assert isinstance(result, SendBatchResult)
        return result

    def receipts(self, *messages: Message, store_timestamp_ms: int = NOW_MS) -> list[SendReceipt]:
        outcomes = self.send(*messages, store_timestamp_ms=store_timestamp_ms).outcomes
        assert all(isinstance(outcome, SendReceipt) for outcome in outcomes), outcomes
        return [outcome for outcome in outcomes if isinstance(outcome, SendReceipt)]

    def bodies(self, topic: str, queue_id: int) -> list[bytes]:
        data_by_index = dict(self.entries)
        positions = self.state.locate(topic, queue_id, 0, 1 << 30)
        return [
            read_messages(data_by_index[raft_index], [slot]).messages[0].body
            for _, raft_index, slot in positions
        ]

    def rebuilt(self) -> BrokerState:
        return BrokerState.replay(GROUP, self.entries)


def message(body: bytes = b"x", topic: str = "orders", queue_id: int = 0, **fields: Any) -> Message:
    return Message(topic, queue_id, body, **fields)


def idempotent(sequence: int, producer_id: str = "p1", **fields: Any) -> Message:
    return message(f"s{sequence}".encode(), producer_id=producer_id, sequence=sequence, **fields)


def refusal(result: object) -> BaseException:
    assert isinstance(result, Refused), result
    return result.error


# -- topics ---------------------------------------------------------------------------------


def test_create_update_describe_and_delete_a_topic() -> None:
    log = Log()
    created = log.apply(CreateTopic("orders", 2, fifo=True))
    assert created == TopicCreated(TopicConfig("orders", 2, True), created=True)
    assert log.state.topics() == (TopicConfig("orders", 2, True),)
    assert log.apply(UpdateTopic("orders", 3)) == TopicUpdated(TopicConfig("orders", 3, False))
    log.receipts(message(queue_id=2))
    description = log.state.describe_topic("orders")
    assert [(q.queue_id, q.min_offset, q.max_offset) for q in description.queues] == [
        (0, 0, 0),
        (1, 0, 0),
        (2, 0, 1),
    ]
    assert log.apply(DeleteTopic("orders")) == TopicDeleted("orders")
    assert log.state.topics() == ()
    assert log.state.topic("orders") is None


def test_creating_a_topic_again_is_not_an_error_unless_its_configuration_differs() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 2))
    assert log.apply(CreateTopic("orders", 2)) == TopicCreated(
        TopicConfig("orders", 2, False), False
    )
    assert isinstance(refusal(log.apply(CreateTopic("orders", 3))), TopicExists)


def test_a_topic_never_loses_queues() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 4))
    assert isinstance(refusal(log.apply(UpdateTopic("orders", 2))), InvalidTopicConfig)
    assert isinstance(refusal(log.apply(UpdateTopic("missing", 2))), TopicNotFound)
    assert isinstance(refusal(log.apply(DeleteTopic("missing"))), TopicNotFound)


def test_deleting_a_topic_drops_its_offsets_and_a_new_one_starts_at_zero() -> None:
    log = Log()
    first = log.receipts(message(b"old"))[0]
    log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 1)]))
    log.apply(DeleteTopic("orders"))
    assert log.state.committed_offset("billing", "orders", 0) is None
    again = log.receipts(message(b"new"))[0]
    assert again.offset == 0
    assert again.msg_id != first.msg_id
    assert log.bodies("orders", 0) == [b"new"]


# -- sends ----------------------------------------------------------------------------------


def test_a_send_auto_creates_its_topic_with_the_default_queue_count() -> None:
    log = Log()
    result = log.send(message(topic="new", queue_id=3))
    assert result.created_topics == ("new",)
    assert log.state.topic("new") == TopicConfig("new", BrokerSettings().default_queue_count, False)
    assert isinstance(
        refusal(log.send(message(topic="other", queue_id=4)).outcomes[0]), QueueNotFound
    )
    assert log.state.topic("other") is None  # a refused message creates nothing


def test_without_auto_creation_a_send_to_a_missing_topic_is_refused() -> None:
    log = Log(ConfigureBroker(BrokerSettings(auto_create_topics=False)))
    with pytest.raises(TopicNotFound):
        log.state.validate_send([message()])
    assert isinstance(refusal(log.send(message()).outcomes[0]), TopicNotFound)
    assert log.state.topics() == ()


def test_messages_get_consecutive_offsets_per_queue_and_ids_that_locate_them() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 2))
    receipts = log.receipts(message(b"a", queue_id=0), message(b"b", queue_id=1), message(b"c"))
    assert [(r.queue_id, r.offset, r.duplicate) for r in receipts] == [
        (0, 0, False),
        (1, 0, False),
        (0, 1, False),
    ]
    assert [r.msg_id for r in receipts] == [f"{GROUP}:2:0", f"{GROUP}:2:1", f"{GROUP}:2:2"]
    parsed = parse_message_id(receipts[2].msg_id)
    assert log.state.offset_of("orders", 0, parsed.raft_index, parsed.slot) == 1
    assert log.state.offset_of("orders", 1, parsed.raft_index, parsed.slot) is None
    assert log.bodies("orders", 0) == [b"a", b"c"]
    assert log.state.locate("orders", 0, 1, 10) == [QueuePosition(1, 2, 2)]


def test_a_body_over_the_limit_is_refused_before_proposing_and_at_apply() -> None:
    log = Log(ConfigureBroker(BrokerSettings(max_body_bytes=10)))
    with pytest.raises(MessageTooLarge) as refused:
        log.state.validate_send([message(b"x" * 11)])
    assert (refused.value.body_bytes, refused.value.max_body_bytes) == (11, 10)
    outcomes = log.send(message(b"x" * 10), message(b"x" * 11), message(b"y")).outcomes
    assert isinstance(outcomes[0], SendReceipt)
    assert isinstance(refusal(outcomes[1]), MessageTooLarge)
    assert isinstance(outcomes[2], SendReceipt)
    assert log.bodies("orders", 0) == [b"x" * 10, b"y"]


def test_the_default_body_limit_is_four_mebibytes() -> None:
    log = Log()
    log.state.validate_send([message(b"x" * (4 << 20))])
    with pytest.raises(MessageTooLarge):
        log.state.validate_send([message(b"x" * ((4 << 20) + 1))])


def test_validate_send_names_the_queue_and_topic_problems() -> None:
    log = Log(ConfigureBroker(BrokerSettings(default_queue_count=2)))
    with pytest.raises(QueueNotFound):
        log.state.validate_send([message(queue_id=2)])
    log.state.validate_send([message(queue_id=1)])
    assert log.state.queue_count_for_send("orders") == 2


def test_a_bad_message_in_a_batch_is_refused_alone() -> None:
    good = ["orders", 0, b"good", None, [], {}, 0, None, None, None]
    bad_tag = ["orders", 0, b"bad", "has space", [], {}, 0, None, None, None]
    data = msgpack.packb(
        [FORMAT_VERSION, CommandTag.SEND_BATCH, NOW_MS, [good, bad_tag, [1, 2], good]]
    )
    log = Log()
    result = log.apply(data)
    assert isinstance(result, SendBatchResult)
    assert [type(outcome) for outcome in result.outcomes] == [
        SendReceipt,
        Refused,
        Refused,
        SendReceipt,
    ]
    assert log.bodies("orders", 0) == [b"good", b"good"]


# -- idempotent producers -------------------------------------------------------------------


def test_a_retried_send_is_stored_once_and_answered_with_the_original_receipt() -> None:
    log = Log()
    original = log.receipts(idempotent(1), idempotent(2))
    log.receipts(message(b"other"))
    retried = log.receipts(idempotent(2), idempotent(1), idempotent(3))
    assert [r.duplicate for r in retried] == [True, True, False]
    assert (retried[0].msg_id, retried[0].offset) == (original[1].msg_id, original[1].offset)
    assert (retried[1].msg_id, retried[1].offset) == (original[0].msg_id, original[0].offset)
    assert log.bodies("orders", 0) == [b"s1", b"s2", b"other", b"s3"]
    assert log.state.find_receipt("p1", 1) == retried[1]
    assert log.state.find_receipt("p1", 4) is None
    assert log.state.find_receipt("p2", 1) is None


def test_a_retry_inside_one_batch_is_stored_once() -> None:
    log = Log()
    first, second = log.receipts(idempotent(7), idempotent(7))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.msg_id == first.msg_id


def test_sequences_may_arrive_out_of_order_within_the_window() -> None:
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=8)))
    for sequence in (5, 3, 7, 4, 6):
        assert not log.receipts(idempotent(sequence))[0].duplicate
    for sequence in (3, 4, 5, 6, 7):
        assert log.receipts(idempotent(sequence))[0].duplicate


def test_a_sequence_older_than_the_window_is_refused_never_stored_twice() -> None:
    window = 4
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=window)))
    for sequence in range(10):
        log.receipts(idempotent(sequence))
    # Sequences 6..9 are remembered; 5 and below may have been stored and forgotten.
    assert log.receipts(idempotent(6))[0].duplicate
    with pytest.raises(SequenceOutsideWindow) as refused:
        log.state.validate_send([idempotent(5)])
    assert (refused.value.producer_id, refused.value.sequence) == ("p1", 5)
    assert refused.value.highest_sequence == 9
    assert isinstance(refusal(log.send(idempotent(5)).outcomes[0]), SequenceOutsideWindow)
    assert len(log.bodies("orders", 0)) == 10


def test_a_new_sequence_below_the_window_is_refused_too() -> None:
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=4)))
    log.receipts(idempotent(100))
    assert isinstance(refusal(log.send(idempotent(96)).outcomes[0]), SequenceOutsideWindow)
    assert not log.receipts(idempotent(97))[0].duplicate


def test_growing_the_window_does_not_revive_forgotten_sequences() -> None:
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=2)))
    for sequence in range(6):
        log.receipts(idempotent(sequence))
    log.apply(ConfigureBroker(BrokerSettings(idempotence_window=100)))
    for sequence in range(4):
        outcome = log.send(idempotent(sequence)).outcomes[0]
        assert isinstance(outcome, Refused) or outcome.duplicate
    assert len(log.bodies("orders", 0)) == 6


def test_the_least_recently_active_producer_is_forgotten_first() -> None:
    log = Log(ConfigureBroker(BrokerSettings(max_producers=2)))
    log.receipts(idempotent(1, "a"))
    log.receipts(idempotent(1, "b"))
    log.receipts(idempotent(1, "a"))  # a duplicate counts as activity
    log.receipts(idempotent(1, "c"))  # forgets b
    assert log.state.producer_count() == 2
    assert log.state.find_receipt("a", 1) is not None
    assert log.state.find_receipt("b", 1) is None
    # Past the window of memory a retry is stored again: the documented limit.
    assert not log.receipts(idempotent(1, "b"))[0].duplicate


def test_a_silent_producer_expires_by_store_timestamps_not_by_a_clock() -> None:
    log = Log(ConfigureBroker(BrokerSettings(producer_expiry_ms=1000)))
    log.receipts(idempotent(1, "a"), store_timestamp_ms=NOW_MS)
    log.receipts(idempotent(1, "b"), store_timestamp_ms=NOW_MS + 600)
    # A leader with a clock behind does not move the expiry clock back.
    log.receipts(message(), store_timestamp_ms=NOW_MS - 5000)
    assert log.state.last_store_timestamp_ms == NOW_MS + 600
    log.receipts(message(), store_timestamp_ms=NOW_MS + 1001)
    assert log.state.find_receipt("a", 1) is None
    assert log.state.find_receipt("b", 1) is not None


def test_a_large_window_holds_every_sequence_of_a_burst() -> None:
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=1000)))
    batch = [idempotent(sequence) for sequence in range(1000)]
    first = log.receipts(*batch)
    again = log.receipts(*reversed(batch))
    assert all(r.duplicate for r in again)
    assert [r.offset for r in reversed(again)] == [r.offset for r in first]


# -- offsets --------------------------------------------------------------------------------


def test_committed_offsets_only_move_forward() -> None:
    log = Log()
    log.receipts(*(message() for _ in range(5)))
    commit = log.apply(
        CommitOffsets(
            "billing",
            [
                OffsetCommit("orders", 0, 3),
                OffsetCommit("orders", 0, 2),
                OffsetCommit("orders", 0, 3),
                OffsetCommit("orders", 0, 6),
                OffsetCommit("orders", 9, 1),
                OffsetCommit("missing", 0, 1),
            ],
        )
    )
    assert commit == OffsetsCommitted(
        (
            CommitOutcome.ADVANCED,
            CommitOutcome.UNCHANGED,
            CommitOutcome.UNCHANGED,
            CommitOutcome.BEYOND_MAX_OFFSET,
            CommitOutcome.UNKNOWN_QUEUE,
            CommitOutcome.UNKNOWN_QUEUE,
        )
    )
    assert log.state.committed_offset("billing", "orders", 0) == 3
    assert log.state.groups() == ("billing",)
    assert log.state.group_topics("billing") == ("orders",)


def test_a_reset_moves_offsets_back_and_outdates_acknowledgements_in_flight() -> None:
    log = Log()
    log.receipts(*(message() for _ in range(5)))
    log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 4)]))
    generation = log.state.reset_generation("billing")
    assert generation == 0
    reset = log.apply(ResetOffsets("billing", "orders", [QueueOffset(0, 1)]))
    assert reset == OffsetsReset("billing", "orders", 1)
    assert log.state.committed_offset("billing", "orders", 0) == 1
    # An acknowledgement sent before the reset carries the old generation: ignored.
    stale = log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 5)], generation))
    assert stale == OffsetsCommitted((CommitOutcome.STALE_GENERATION,))
    fresh = log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 2)], 1))
    assert fresh == OffsetsCommitted((CommitOutcome.ADVANCED,))


def test_a_reset_out_of_range_is_refused_as_a_whole() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 2))
    log.receipts(message())
    result = log.apply(ResetOffsets("billing", "orders", [QueueOffset(0, 0), QueueOffset(1, 1)]))
    assert isinstance(refusal(result), InvalidOffset)
    assert log.state.committed_offset("billing", "orders", 0) is None
    assert log.state.reset_generation("billing") == 0
    assert isinstance(
        refusal(log.apply(ResetOffsets("b", "nope", [QueueOffset(0, 0)]))), TopicNotFound
    )
    assert isinstance(
        refusal(log.apply(ResetOffsets("b", "orders", [QueueOffset(2, 0)]))), QueueNotFound
    )


def test_lag_counts_what_the_group_has_not_committed() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 2))
    log.receipts(message(), message(), message(queue_id=1))
    log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 1)]))
    assert log.state.lag("billing", "orders") == (
        QueueLag("orders", 0, 1, 2, 1),
        QueueLag("orders", 1, None, 1, 1),
    )


# -- queries --------------------------------------------------------------------------------


def test_scan_skips_messages_whose_tag_cannot_match() -> None:
    log = Log()
    tags = ["paid", None, "refunded", "created", "paid"]
    log.receipts(*(message(f"{i}".encode(), tags=tag) for i, tag in enumerate(tags)))
    paid_or_refunded = parse_tag_expression("paid || refunded")
    result = log.state.scan("orders", 0, 0, 10, paid_or_refunded)
    assert [p.offset for p in result.positions] == [0, 2, 4]
    assert result.next_offset == 5
    first_two = log.state.scan("orders", 0, 0, 2, paid_or_refunded)
    assert ([p.offset for p in first_two.positions], first_two.next_offset) == ([0, 2], 3)
    bounded = log.state.scan("orders", 0, 0, 10, parse_tag_expression("created"), max_scanned=2)
    assert (bounded.positions, bounded.next_offset) == ([], 2)
    beyond = log.state.scan("orders", 0, 7, 10)
    assert (beyond.positions, beyond.next_offset) == ([], 7)


def test_offset_for_timestamp_searches_the_store_timestamps() -> None:
    log = Log()
    for step in range(5):
        log.receipts(message(), store_timestamp_ms=1000 * step)
    timestamps = {index: 1000 * (index - 1) for index, _ in log.entries}
    asked: list[int] = []

    def store_timestamp_of(raft_index: int) -> int:
        asked.append(raft_index)
        return timestamps[raft_index]

    assert log.state.offset_for_timestamp("orders", 0, 2500, store_timestamp_of) == 3
    assert log.state.offset_for_timestamp("orders", 0, 0, store_timestamp_of) == 0
    assert log.state.offset_for_timestamp("orders", 0, 10**6, store_timestamp_of) == 5
    assert len(asked) <= 3 * 4


def test_queries_name_missing_topics_and_queues() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 1))
    with pytest.raises(TopicNotFound):
        log.state.max_offset("missing", 0)
    with pytest.raises(QueueNotFound):
        log.state.locate("orders", 1, 0, 1)
    with pytest.raises(TopicNotFound):
        log.state.describe_topic("missing")


# -- refusals, determinism and rebuilding ---------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", MalformedCommand),
        (b"\xff\x00garbage", MalformedCommand),
        (b"\x93\x02\x06\xa1a", UnsupportedCommandVersion),  # [2, DELETE_TOPIC, "a"]
        (b"\x93\x01\x63\xa1a", MalformedCommand),  # unknown tag 99
    ],
)
def test_garbage_entries_are_refused_without_changing_anything(
    data: bytes, error: type[Exception]
) -> None:
    log = Log()
    log.receipts(message())
    before = log.rebuilt()
    assert isinstance(refusal(log.apply(data)), error)
    assert log.state.applied_index == 2
    # Only the applied index moved.
    assert log.rebuilt() == log.state
    assert log.state.locate("orders", 0, 0, 10) == before.locate("orders", 0, 0, 10)


def test_raw_proposals_of_other_tools_are_refused_deterministically() -> None:
    # ``bench raft`` proposes raw bytes through the admin interface; every replica refuses them.
    first, second = Log(), Log()
    for payload in (b"\x00" * 100, b"bench-123", bytes(range(256))):
        assert first.apply(payload) == second.apply(payload)


def test_entries_must_be_applied_in_increasing_index_order() -> None:
    state = BrokerState(GROUP)
    state.apply(5, encode_command(CreateTopic("orders", 1)))
    with pytest.raises(AssertionError):
        state.apply(5, encode_command(CreateTopic("orders", 1)))


def test_settings_are_replicated_state() -> None:
    log = Log()
    settings = BrokerSettings(max_body_bytes=100, auto_create_topics=False)
    assert log.apply(ConfigureBroker(settings)) == SettingsChanged(settings)
    assert log.state.settings == settings
    assert log.rebuilt().settings == settings


def test_a_rebuilt_state_equals_the_original_and_gives_the_same_results() -> None:
    log = Log(ConfigureBroker(BrokerSettings(idempotence_window=3, max_producers=2)))
    log.apply(CreateTopic("orders", 2))
    log.receipts(idempotent(1), idempotent(2, "p2"), message(queue_id=1))
    log.apply(CommitOffsets("billing", [OffsetCommit("orders", 0, 1)]))
    log.receipts(idempotent(9), idempotent(1, "p3"))
    log.apply(ResetOffsets("billing", "orders", [QueueOffset(0, 0)]))
    rebuilt = log.rebuilt()
    assert rebuilt == log.state
    retry = encode_command(SendBatch(NOW_MS, [idempotent(9), idempotent(2, "p2")]))
    assert rebuilt.apply(99, retry) == log.state.apply(99, retry)
    assert rebuilt == log.state
