"""Delayed messages, retries and dead letters in the replicated state (docs/broker.md,
"Timers"): a timer is stored at once and delivered by DELIVER_TIMERS exactly once, never
before its time; a retried message waits its group's delay, and past the last attempt goes to
the dead-letter topic; all of it survives a snapshot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.broker.records import (
    SLOT_BITS,
    BrokerSettings,
    ConfigureBroker,
    ConfigureGroup,
    DeliverTimers,
    Message,
    RetryPolicy,
    SendBatch,
    encode_command,
    read_messages,
)
from dledger_mq.broker.state import (
    BrokerState,
    GroupConfigured,
    Refused,
    SendBatchResult,
    SendReceipt,
    TimersDelivered,
)
from dledger_mq.broker.timers import BUCKET_MS, TimerWheel
from dledger_mq.errors import InvalidMessage, TimerLimitReached
from dledger_mq.wire.broker import ATTEMPT_PROPERTY, DELIVER_AT_PROPERTY

GROUP = "broker-a"


class Log:
    """A state and the entries it applied, so that the leader's reads can be played."""

    def __init__(self) -> None:
        self.state = BrokerState(GROUP)
        self.entries: dict[int, bytes] = {}

    def apply(self, command: object) -> object:
        index = self.state.applied_index + 1
        data = encode_command(command)  # type: ignore[arg-type]
        self.entries[index] = data
        return self.state.apply(index, data)

    def fire(self, now_ms: int, limit: int = 100) -> TimersDelivered:
        """What the leader's timer loop does: read each due timer's message, copy it."""
        due = self.state.due_timers(now_ms, limit)
        messages = []
        for _, position in due:
            index, slot = position >> SLOT_BITS, position & ((1 << SLOT_BITS) - 1)
            [message] = read_messages(self.entries[index], [slot]).messages
            messages.append(message)
        result = self.apply(DeliverTimers(now_ms, messages, due))
        assert isinstance(result, TimersDelivered)
        return result


def _delayed(body: bytes, at_ms: int, topic: str = "orders") -> Message:
    return Message(topic, 0, body, properties={DELIVER_AT_PROPERTY: str(at_ms)})


def test_a_delayed_message_is_stored_at_once_and_delivered_at_its_time_once() -> None:
    log = Log()
    result = log.apply(SendBatch(1_000, [_delayed(b"later", 5_000), Message("orders", 0, b"now")]))
    assert isinstance(result, SendBatchResult)
    scheduled, immediate = result.outcomes
    assert isinstance(scheduled, SendReceipt) and scheduled.offset == -1
    assert isinstance(immediate, SendReceipt) and immediate.offset == 0
    assert log.state.pending_timers == 1
    assert log.state.max_offset("orders", 0) == 1
    assert log.state.due_timers(4_999, 10) == []  # never early
    assert log.state.next_timer_due_ms() == 5_000

    delivered = log.fire(5_000)
    [copy] = delivered.outcomes
    assert isinstance(copy, SendReceipt) and copy.offset == 1
    assert log.state.pending_timers == 0
    assert log.state.max_offset("orders", 0) == 2
    # A second leader proposing the same firing stores nothing again.
    again = log.apply(
        DeliverTimers(5_001, [_delayed(b"later", 5_000)], [(5_000, scheduled.raft_index << 16)])
    )
    assert isinstance(again, TimersDelivered)
    assert isinstance(again.outcomes[0], Refused)
    assert log.state.max_offset("orders", 0) == 2


def test_a_timer_fired_before_its_time_is_kept() -> None:
    log = Log()
    log.apply(SendBatch(1_000, [_delayed(b"later", 5_000)]))
    [(due, position)] = log.state.due_timers(10_000, 10)
    early = log.apply(DeliverTimers(4_000, [_delayed(b"later", 5_000)], [(due, position)]))
    assert isinstance(early, TimersDelivered) and isinstance(early.outcomes[0], Refused)
    assert log.state.pending_timers == 1


def test_a_deliver_time_past_the_maximum_delay_is_refused_and_stores_nothing() -> None:
    log = Log()
    log.apply(ConfigureBroker(BrokerSettings(max_delay_ms=10_000)))
    refused = log.apply(SendBatch(1_000, [_delayed(b"far", 11_001)]))
    assert isinstance(refused, SendBatchResult)
    [outcome] = refused.outcomes
    assert isinstance(outcome, Refused) and isinstance(outcome.error, InvalidMessage)
    assert log.state.pending_timers == 0
    bad = log.apply(SendBatch(1_000, [Message("o", 0, b"", properties={DELIVER_AT_PROPERTY: "x"})]))
    assert isinstance(bad, SendBatchResult) and isinstance(bad.outcomes[0], Refused)


def test_timers_past_max_timers_are_refused() -> None:
    log = Log()
    log.apply(ConfigureBroker(BrokerSettings(max_timers=2)))
    result = log.apply(SendBatch(0, [_delayed(b"%d" % n, 1_000 + n) for n in range(3)]))
    assert isinstance(result, SendBatchResult)
    assert [type(o) for o in result.outcomes] == [SendReceipt, SendReceipt, Refused]
    third = result.outcomes[2]
    assert isinstance(third, Refused) and isinstance(third.error, TimerLimitReached)


def _retry(attempt: int) -> Message:
    return Message(
        "%RETRY%billing",
        0,
        b"failed",
        properties={ATTEMPT_PROPERTY: str(attempt), "__ORIGIN_TOPIC": "orders"},
    )


def test_a_retried_message_waits_its_groups_delay_then_goes_to_the_dead_letter_topic() -> None:
    log = Log()
    configured = log.apply(ConfigureGroup("billing", RetryPolicy(3, (1_000, 5_000))))
    assert isinstance(configured, GroupConfigured)
    log.apply(SendBatch(10_000, [_retry(2)]))
    assert log.state.due_timers(10_999, 10) == []
    assert [due for due, _ in log.state.due_timers(11_000, 10)] == [11_000]
    log.fire(11_000)
    assert log.state.max_offset("%RETRY%billing", 0) == 1
    log.apply(SendBatch(20_000, [_retry(3)]))
    assert log.state.next_timer_due_ms() == 25_000  # the last delay repeats
    log.apply(SendBatch(30_000, [_retry(4)]))  # past max_attempts = 3
    assert log.state.describe_topic("%DLQ%billing").queues[0].max_offset == 1
    assert log.state.pending_timers == 1


def test_default_policy_applies_to_a_group_never_configured() -> None:
    log = Log()
    log.apply(SendBatch(0, [_retry(2)]))
    assert log.state.next_timer_due_ms() == 10_000  # RocketMQ's first retry level
    assert not log.state.has_retry_policy("billing")


def test_timers_and_policies_survive_a_snapshot() -> None:
    log = Log()
    log.apply(ConfigureGroup("billing", RetryPolicy(5, (2_000,))))
    log.apply(SendBatch(1_000, [_delayed(b"a", 9_000), _delayed(b"b", 3_000), _retry(2)]))
    restored = BrokerState.from_snapshot(GROUP, log.state.to_snapshot())
    assert restored == log.state
    assert restored.pending_timers == 3
    assert restored.retry_policy("billing") == RetryPolicy(5, (2_000,))
    assert restored.lowest_timer_index() == 2


@given(
    st.lists(
        st.tuples(st.integers(0, 5 * BUCKET_MS), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 6 * BUCKET_MS),
)
def test_the_wheel_holds_what_a_sorted_list_would(
    operations: list[tuple[int, bool]], now_ms: int
) -> None:
    wheel = TimerWheel()
    model: list[tuple[int, int]] = []
    for position, (due_ms, fire_first) in enumerate(operations):
        wheel.add(due_ms, position)
        model.append((due_ms, position))
        if fire_first:
            # The leader fires in order: the earliest due timer goes.
            earliest = min(model)
            model.remove(earliest)
            assert wheel.remove(*earliest)
            assert not wheel.remove(*earliest)
    model.sort()
    assert wheel.pairs() == model
    assert len(wheel) == len(model)
    assert wheel.due(now_ms, 1000) == [pair for pair in model if pair[0] <= now_ms]
    assert wheel.next_due_ms() == (model[0][0] if model else None)
    assert wheel.lowest_position() == (min(p for _, p in model) if model else None)
    for pair in model[::2]:  # and out of order
        assert wheel.remove(*pair)
    assert wheel.pairs() == model[1::2]
