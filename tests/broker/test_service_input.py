"""Whatever a client asks of the broker service, within what the decoder lets through, is
answered or refused with a typed error; it never fails with anything else (which the node
would answer as an InternalError: a bug)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.broker.records import BrokerSettings, ConfigureBroker, CreateTopic, encode_command
from dledger_mq.broker.service import BrokerService
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import BadRequest, DiskFull, DledgerError, InvalidName
from dledger_mq.raft.pure.core import Config, RaftCore
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.wire.admin import (
    CreateTopicRequest,
    DeleteTopicRequest,
    DescribeGroupRequest,
    ListGroupsRequest,
    ListTopicsRequest,
    ResetOffsetRequest,
    StatusRequest,
    UpdateGroupRequest,
    UpdateTopicRequest,
)
from dledger_mq.wire.broker import (
    AckRequest,
    ChangeInvisibleRequest,
    ConsumerHeartbeat,
    OffsetForTimeRequest,
    OutgoingMessage,
    PullRequest,
    QueryOffsetsRequest,
    ReceiveRequest,
    SendBackRequest,
    SendRequest,
)
from dledger_mq.wire.codec import MAX_INT, MIN_INT

WIRE_INTS = st.integers(min_value=MIN_INT, max_value=MAX_INT)
SMALL_INTS = st.integers(min_value=MIN_INT, max_value=2000)
NAMES = st.sampled_from(["orders", "missing", "", "bad name!", "x" * 300, "%RETRY%g"])


class _Leader:
    """A single replica that commits at once: what it is given is applied to ``state``."""

    def __init__(self, state: BrokerState) -> None:
        self.core = RaftCore(Config("n1", ("n1",)), MemoryLogStore(), random.Random(0))
        self.core.campaign()
        self.state = state
        self.next_index = 2

    @property
    def is_leader(self) -> bool:
        return True

    async def read_barrier(self) -> None:
        pass  # a single replica that leads: always current

    async def propose_and_apply(self, data: bytes) -> object:
        self.next_index += 1
        return self.state.apply(self.next_index - 1, data)


def service() -> BrokerService:
    state = BrokerState("broker-a")
    state.apply(1, encode_command(CreateTopic("orders", 4, True)))
    return BrokerService(state, _Leader(state), MemoryLogStore(), monotonic_ms=lambda: 0)


REQUESTS = st.one_of(
    st.builds(
        PullRequest,
        NAMES,
        SMALL_INTS | WIRE_INTS,
        SMALL_INTS | WIRE_INTS,
        SMALL_INTS | WIRE_INTS,
        st.text(max_size=12),
        st.just(0),
    ),
    st.builds(QueryOffsetsRequest, NAMES, NAMES),
    st.builds(
        ConsumerHeartbeat,
        NAMES,
        NAMES,
        st.text(max_size=8),
        st.booleans(),
        st.lists(SMALL_INTS | WIRE_INTS, max_size=4).map(tuple),
    ),
    st.builds(
        SendRequest,
        st.lists(
            st.builds(
                OutgoingMessage,
                NAMES,
                st.binary(max_size=20),
                st.none() | st.text(max_size=8),
                st.lists(st.text(max_size=8), max_size=3).map(tuple),
                st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                st.none() | st.text(max_size=8),
                st.none() | st.text(max_size=8),
                st.none() | WIRE_INTS,
                WIRE_INTS,
                SMALL_INTS | WIRE_INTS,
            ),
            max_size=3,
        ).map(tuple),
    ),
)


@settings(max_examples=400, deadline=None)
@given(REQUESTS)
def test_every_request_is_answered_or_refused_with_a_typed_error(request: Any) -> None:
    broker = service()
    try:
        if isinstance(request, PullRequest):
            broker.pull_now(request)
        elif isinstance(request, QueryOffsetsRequest):
            broker.query_offsets_now(request)
        elif isinstance(request, ConsumerHeartbeat):
            broker.consumer_heartbeat_now(request)
        else:
            broker.prepare_send(request)
    except DledgerError:
        pass


ADMIN_REQUESTS = st.one_of(
    st.builds(CreateTopicRequest, NAMES, SMALL_INTS | WIRE_INTS, st.booleans()),
    st.builds(
        UpdateTopicRequest, NAMES, st.none() | SMALL_INTS | WIRE_INTS, st.none() | st.booleans()
    ),
    st.builds(DeleteTopicRequest, NAMES),
    st.just(ListTopicsRequest()),
    st.just(ListGroupsRequest()),
    st.builds(DescribeGroupRequest, NAMES, NAMES),
    st.builds(ResetOffsetRequest, NAMES, NAMES, SMALL_INTS | WIRE_INTS, SMALL_INTS | WIRE_INTS),
    st.builds(QueryOffsetsRequest, NAMES, NAMES),
    st.builds(
        UpdateGroupRequest,
        NAMES,
        SMALL_INTS | WIRE_INTS,
        st.lists(SMALL_INTS | WIRE_INTS, max_size=3).map(tuple),
    ),
    st.builds(
        SendBackRequest,
        NAMES,
        NAMES,
        SMALL_INTS,
        SMALL_INTS | WIRE_INTS,
        st.text(max_size=8),
        st.text(max_size=8),
        WIRE_INTS,
        st.booleans(),
    ),
    st.builds(OffsetForTimeRequest, NAMES, SMALL_INTS, WIRE_INTS),
    st.builds(
        ReceiveRequest,
        NAMES,
        NAMES,
        st.sampled_from(["*", "a || b", "||"]),
        SMALL_INTS | WIRE_INTS,
        SMALL_INTS | WIRE_INTS,
        st.just(0),
    ),
    st.builds(
        AckRequest,
        NAMES,
        NAMES,
        st.lists(
            st.sampled_from(["0:0:2", "x", "1:2", "0:0:99999999999999999999"]), max_size=2
        ).map(tuple),
    ),
    st.builds(
        ChangeInvisibleRequest,
        NAMES,
        NAMES,
        st.sampled_from(["0:0:2", "bad", ""]),
        SMALL_INTS | WIRE_INTS,
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ADMIN_REQUESTS, min_size=1, max_size=4))
def test_every_administration_request_is_answered_or_refused_with_a_typed_error(
    requests: list[Any],
) -> None:
    """Through the service's one dispatch table, as the node serves them, several in a row so
    that one request's effect (a topic created, deleted, resized) meets the next."""
    broker = service()

    async def ask_all() -> None:
        for request in requests:
            with contextlib.suppress(DledgerError):
                await broker.handle(request)

    trio.run(ask_all)


async def test_a_request_the_broker_does_not_answer_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="StatusRequest is not a broker request"):
        await service().handle(StatusRequest())


async def test_a_nearly_full_disk_refuses_sends_only_with_a_retriable_disk_full() -> None:
    broker = service()
    send = SendRequest((OutgoingMessage("orders", b"x", None, (), {}, None, None, None, 0, 0),))
    await broker.send(send)
    broker.refuse_sends_path = "/data/log"  # what retention sets past disk_refuse_percent
    with pytest.raises(DiskFull) as refused:
        await broker.send(send)
    assert refused.value.retriable and refused.value.path == "/data/log"
    assert broker.state.max_offset("orders", 0) == 1  # nothing was stored
    broker.refuse_sends_path = None
    await broker.send(send)
    assert broker.state.max_offset("orders", 0) == 2


async def test_store_time_is_the_leaders_and_never_goes_back() -> None:
    """Idempotence and producer expiry run on store timestamps: only the leader's clock sets
    them (a client's born timestamp does not), and a new leader whose clock is behind stamps
    no earlier than what is stored."""
    state = BrokerState("broker-a")
    clock = {"now": 5_000}
    leader = BrokerService(
        state,
        _Leader(state),
        MemoryLogStore(),
        clock_ms=lambda: clock["now"],
        monotonic_ms=lambda: 0,
    )
    future = OutgoingMessage("orders", b"x", born_timestamp_ms=2**62)
    await leader.send(SendRequest((future,)))
    assert state.last_store_timestamp_ms == 5_000
    clock["now"] = 1_000  # the next leader's clock is behind
    await leader.send(SendRequest((OutgoingMessage("orders", b"y"),)))
    assert state.last_store_timestamp_ms == 5_000


async def test_consumer_membership_is_bounded() -> None:
    from dledger_mq.broker import service as service_module

    broker = service()
    with pytest.raises(BadRequest, match="consumer id"):
        broker.consumer_heartbeat_now(ConsumerHeartbeat("g", "orders", "x" * 300))
    with pytest.raises(BadRequest, match="group"):
        broker.consumer_heartbeat_now(ConsumerHeartbeat("", "orders", "c1"))
    limit = service_module.MAX_CONSUMERS_PER_GROUP
    for number in range(limit):
        broker.consumer_heartbeat_now(ConsumerHeartbeat("g", "orders", f"c{number}"))
    with pytest.raises(BadRequest, match="live consumers"):
        broker.consumer_heartbeat_now(ConsumerHeartbeat("g", "orders", "one-more"))
    broker.consumer_heartbeat_now(ConsumerHeartbeat("g", "orders", "c0"))  # a known one goes on


class _LoggingLeader(_Leader):
    """A single replica whose log holds what it applied (a send-back reads it)."""

    def __init__(self, state: BrokerState, log: MemoryLogStore) -> None:
        super().__init__(state)
        self.log = log

    async def propose_and_apply(self, data: bytes) -> object:
        index = self.log.last_index() + 1
        self.log.append([Entry(index, 1, data)])
        return self.state.apply(index, data)


async def test_a_send_back_needs_no_auto_creation_and_is_stored_once() -> None:
    state = BrokerState("broker-a")
    log = MemoryLogStore()
    leader = _LoggingLeader(state, log)
    await leader.propose_and_apply(encode_command(CreateTopic("orders", 1)))
    await leader.propose_and_apply(
        encode_command(ConfigureBroker(BrokerSettings(auto_create_topics=False)))
    )
    broker = BrokerService(state, leader, log, monotonic_ms=lambda: 0)
    await broker.send(SendRequest((OutgoingMessage("orders", b"x"),)))
    back = SendBackRequest("billing", "orders", 0, 0, "boom", "retry-c1", 1)
    first = await broker.send_back(back)
    again = await broker.send_back(back)  # retried after a lost reply
    assert not first.dead_letter and first.receipt.topic == "%RETRY%billing"
    assert again.receipt.duplicate and again.receipt.msg_id == first.receipt.msg_id
    assert state.pending_timers == 1
    with pytest.raises(InvalidName):
        await broker.send(SendRequest((OutgoingMessage("%RETRY%billing", b"forged"),)))
