"""Timers and simple consumers under random interleavings, against a model: delayed messages are
delivered exactly once and never before their time, however the leader's firings are repeated
or stale; receives that race never hand one message to two holders; an acknowledged message
never comes back; a replay or a snapshot rebuilds the same state at every step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dledger_mq.broker.records import (
    SLOT_BITS,
    AckPopped,
    CreateTopic,
    DeliverTimers,
    Message,
    PopMessages,
    PoppedRef,
    PopQueue,
    SendBatch,
    encode_command,
    read_messages,
)
from dledger_mq.broker.state import BrokerState, MessagesPopped, SendBatchResult, TimersDelivered
from dledger_mq.wire.broker import DELIVER_AT_PROPERTY

GROUP = "broker-a"
INVISIBLE_MS = 1_000


class TimersAndReceives(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.state = BrokerState(GROUP)
        self.entries: list[bytes] = []
        self.now = 10_000
        self.apply(CreateTopic("orders", 2))
        self.apply(CreateTopic("work", 2))
        #: Delayed messages sent: body -> due time; delivered: body -> how many times.
        self.due: dict[bytes, int] = {}
        self.delivered: dict[bytes, int] = {}
        self.sent = 0
        #: Receives: (queue, offset) -> (pop_id, until) of the receive that holds it.
        self.held: dict[tuple[int, int], tuple[int, int]] = {}
        self.acked: set[tuple[int, int]] = set()
        self.work_sent = 0

    def apply(self, command: object) -> object:
        data = encode_command(command)  # type: ignore[arg-type]
        self.entries.append(data)
        return self.state.apply(len(self.entries), data)

    # -- delayed messages --------------------------------------------------------------------

    @rule(delay=st.integers(-500, 5_000), queue=st.integers(0, 1))
    def send_delayed(self, delay: int, queue: int) -> None:
        body = b"d%d" % self.sent
        self.sent += 1
        at = self.now + delay
        message = Message("orders", queue, body, properties={DELIVER_AT_PROPERTY: str(at)})
        result = self.apply(SendBatch(self.now, [message]))
        assert isinstance(result, SendBatchResult)
        if at <= self.now:
            self.delivered[body] = self.delivered.get(body, 0) + 1  # at once
        else:
            self.due[body] = at

    @rule(step=st.integers(1, 3_000))
    def time_passes(self, step: int) -> None:
        self.now += step

    @rule(limit=st.integers(1, 5), repeat=st.booleans(), early=st.integers(0, 2_000))
    def leader_fires(self, limit: int, repeat: bool, early: int) -> None:
        """A leader fires what is due by its clock, maybe twice (a new leader), or stamps an
        entry earlier than the timers it names (a clock behind): apply must hold."""
        due = self.state.due_timers(self.now, limit)
        if not due:
            return
        copies = []
        for _, position in due:
            data = self.entries[(position >> SLOT_BITS) - 1]
            [message] = read_messages(data, [position & ((1 << SLOT_BITS) - 1)]).messages
            copies.append(message)
        stamp = self.now - early
        for _ in range(2 if repeat else 1):
            result = self.apply(DeliverTimers(max(stamp, 0), copies, due))
            assert isinstance(result, TimersDelivered)
        for message, (due_ms, _) in zip(copies, due, strict=True):
            if due_ms <= stamp:
                self.delivered[message.body] = self.delivered.get(message.body, 0) + 1
                del self.due[message.body]

    # -- simple consumers --------------------------------------------------------------------

    @rule(count=st.integers(1, 4), queue=st.integers(0, 1))
    def send_work(self, count: int, queue: int) -> None:
        messages = [Message("work", queue, b"w%d" % (self.work_sent + n)) for n in range(count)]
        self.work_sent += count
        self.apply(SendBatch(self.now, messages))

    def plan_receive(self, queue: int, count: int) -> PopQueue:
        """What a leader would choose from the state as it is now."""
        next_offset, inflight = self.state.pop_progress("g", "work", queue)
        expired = sorted(o for o, held in inflight.items() if held[0] <= self.now)
        end = min(next_offset + count, self.state.max_offset("work", queue))
        return PopQueue(queue, end, (*expired, *range(next_offset, end)))

    @rule(queue=st.integers(0, 1), counts=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def receives_race(self, queue: int, counts: list[int]) -> None:
        """Several receives chosen from the same state, applied one after the other."""
        plans = [self.plan_receive(queue, count) for count in counts]
        for plan in plans:
            result = self.apply(PopMessages(self.now, (), "g", "work", INVISIBLE_MS, (plan,), ()))
            assert isinstance(result, MessagesPopped)
            for popped in result.popped:
                key = (popped.queue_id, popped.offset)
                assert key not in self.acked, "an acknowledged message came back"
                holder = self.held.get(key)
                assert holder is None or holder[1] <= self.now, "handed to two receives"
                self.held[key] = (popped.pop_id, popped.invisible_until_ms)

    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        if not self.held:
            return
        key = data.draw(st.sampled_from(sorted(self.held)))
        pop_id, _ = self.held[key]
        stale = data.draw(st.booleans())
        ref = PoppedRef(key[0], key[1], pop_id + 1 if stale else pop_id)
        [acked] = self.apply(AckPopped("g", "work", (ref,))).acked  # type: ignore[attr-defined]
        assert acked == (not stale)
        if acked:
            del self.held[key]
            self.acked.add(key)

    # -- restarts ------------------------------------------------------------------------------

    @rule()
    def restart_from_a_snapshot(self) -> None:
        restored = BrokerState.from_snapshot(GROUP, self.state.to_snapshot(), self.state.queues)
        assert restored == self.state
        self.state = restored

    @invariant()
    def each_delayed_message_is_delivered_once_and_never_early(self) -> None:
        assert all(count == 1 for count in self.delivered.values())
        assert self.state.pending_timers == len(self.due)
        assert len(self.delivered) + len(self.due) == self.sent
        earliest = self.state.next_timer_due_ms()
        assert earliest == (min(self.due.values()) if self.due else None)

    @invariant()
    def the_group_offset_is_below_every_held_message(self) -> None:
        for queue in (0, 1):
            committed = self.state.committed_offset("g", "work", queue)
            held = [offset for (q, offset) in self.held if q == queue]
            if committed is not None and held:
                assert committed <= min(held)

    def teardown(self) -> None:
        if hasattr(self, "entries"):
            replayed = BrokerState.replay(GROUP, enumerate(self.entries, start=1))
            assert replayed == self.state


TimersAndReceives.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
test_timers_and_receives = TimersAndReceives.TestCase
