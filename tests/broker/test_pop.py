"""Simple consumers (RocketMQ 5's POP) in the replicated state: a message received is invisible
to other receives until its time, acknowledged once by the receive that has it, received again
with a higher attempt once its time passed, and dead-lettered after the group's last attempt;
the group's offset follows what is acknowledged; all of it survives a snapshot."""

from __future__ import annotations

from dledger_mq.broker.records import (
    AckPopped,
    ChangeInvisible,
    ConfigureGroup,
    CreateTopic,
    Message,
    PopMessages,
    PoppedRef,
    PopQueue,
    RetryPolicy,
    SendBatch,
    encode_command,
)
from dledger_mq.broker.state import (
    BrokerState,
    InvisibleChanged,
    MessagesPopped,
    PoppedAcked,
    SendReceipt,
)

GROUP = "broker-a"


class Log:
    def __init__(self) -> None:
        self.state = BrokerState(GROUP)

    def apply(self, command: object) -> object:
        index = self.state.applied_index + 1
        return self.state.apply(index, encode_command(command))  # type: ignore[arg-type]

    def pop(self, now: int, offsets: tuple[int, ...], scan_end: int) -> MessagesPopped:
        result = self.apply(
            PopMessages(now, (), "billing", "orders", 1_000, (PopQueue(0, scan_end, offsets),), ())
        )
        assert isinstance(result, MessagesPopped), result
        return result


def _log_with_messages(count: int) -> Log:
    log = Log()
    log.apply(CreateTopic("orders", 1))
    log.apply(SendBatch(0, [Message("orders", 0, b"%d" % n) for n in range(count)]))
    return log


def test_a_received_message_is_invisible_until_its_time_then_received_again() -> None:
    log = _log_with_messages(3)
    first = log.pop(10_000, (0, 1), 2)
    assert [(p.offset, p.attempt, p.invisible_until_ms) for p in first.popped] == [
        (0, 1, 11_000),
        (1, 1, 11_000),
    ]
    # A receive that raced it (chose the same offsets before it applied) gets none of them.
    assert log.pop(10_500, (0, 1, 2), 3).popped[0].offset == 2
    assert log.pop(10_999, (0,), 3).popped == ()
    again = log.pop(11_000, (0,), 3)
    assert [(p.offset, p.attempt) for p in again.popped] == [(0, 2)]
    # The group's offset: everything below the lowest message not acknowledged.
    assert log.state.committed_offset("billing", "orders", 0) == 0


def test_an_ack_counts_only_from_the_receive_that_has_the_message() -> None:
    log = _log_with_messages(2)
    [zero, one] = log.pop(10_000, (0, 1), 2).popped
    [zero_again] = log.pop(11_000, (0,), 2).popped  # zero's time passed: received anew
    stale = log.apply(AckPopped("billing", "orders", (PoppedRef(0, 0, zero.pop_id),)))
    assert stale == PoppedAcked((False,))
    acked = log.apply(
        AckPopped(
            "billing",
            "orders",
            (PoppedRef(0, 0, zero_again.pop_id), PoppedRef(0, 1, one.pop_id)),
        )
    )
    assert acked == PoppedAcked((True, True))
    assert log.state.committed_offset("billing", "orders", 0) == 2
    assert log.pop(20_000, (0, 1), 2).popped == ()  # acknowledged: never again


def test_change_invisible_moves_the_time_it_comes_back() -> None:
    log = _log_with_messages(1)
    [zero] = log.pop(10_000, (0,), 1).popped
    changed = log.apply(
        ChangeInvisible("billing", "orders", PoppedRef(0, 0, zero.pop_id), 10_500, 5_000)
    )
    assert changed == InvisibleChanged(True, 15_500)
    assert log.pop(12_000, (0,), 1).popped == ()
    assert [p.attempt for p in log.pop(15_500, (0,), 1).popped] == [2]


def test_after_the_last_attempt_the_message_goes_to_the_dead_letters() -> None:
    log = _log_with_messages(1)
    log.apply(ConfigureGroup("billing", RetryPolicy(2, (1_000,))))
    log.pop(10_000, (0,), 1)
    log.pop(11_000, (0,), 1)  # attempt 2, the last
    assert log.pop(12_000, (0,), 1).popped == ()  # not handed out a third time
    letter = Message(
        "%DLQ%billing", 0, b"0", properties={"__ORIGIN_TOPIC": "orders", "__ATTEMPT": "3"}
    )
    result = log.apply(PopMessages(12_000, (letter,), "billing", "orders", 1_000, (), ((0, 0),)))
    assert isinstance(result, MessagesPopped)
    [stored] = result.dead
    assert isinstance(stored, SendReceipt) and stored.offset == 0
    assert log.state.max_offset("%DLQ%billing", 0) == 1
    assert log.state.committed_offset("billing", "orders", 0) == 1


def test_receives_survive_a_snapshot() -> None:
    log = _log_with_messages(3)
    log.pop(10_000, (0, 2), 3)
    restored = BrokerState.from_snapshot(GROUP, log.state.to_snapshot(), log.state.queues)
    assert restored == log.state
    assert restored.pop_progress("billing", "orders", 0)[0] == 3
    assert sorted(restored.pop_progress("billing", "orders", 0)[1]) == [0, 2]
