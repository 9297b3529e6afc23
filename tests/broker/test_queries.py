"""Message queries in the broker service (``broker/queries.py``): by id and by key, answered
from the log and the queues, never from the index alone; bad input is a typed error; a
damaged index is refused (``Unavailable``) until it is rebuilt from the log."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.broker.key_index import HEADER_BYTES, RECORD_BYTES, KeyIndex
from dledger_mq.broker.records import (
    BrokerSettings,
    ConfigureBroker,
    Message,
    SendBatch,
    encode_command,
)
from dledger_mq.broker.service import BrokerService
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import (
    DledgerError,
    InvalidMessageId,
    MessageNotFound,
    NotLeader,
    Unavailable,
)
from dledger_mq.node.key_index_keeper import catch_up_once
from dledger_mq.raft.pure.core import Config, RaftCore
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from dledger_mq.wire.broker import (
    ATTEMPT_PROPERTY,
    DELIVER_AT_PROPERTY,
    FindMessagesRequest,
    GetMessageRequest,
    OutgoingMessage,
    SendRequest,
)


class _Leader:
    """One replica that commits at once: each proposal goes to the log, the state and the
    key index, as the node's ``apply`` does."""

    def __init__(self, state: BrokerState, log: MemoryLogStore, index: KeyIndex) -> None:
        self.core = RaftCore(Config("n1", ("n1",)), MemoryLogStore(), random.Random(0))
        self.state, self.log, self.index = state, log, index
        self.leading = True

    @property
    def is_leader(self) -> bool:
        return self.leading

    async def read_barrier(self) -> None:
        if not self.leading:
            raise NotLeader(None)

    async def propose_and_apply(self, data: bytes) -> object:
        index = self.log.last_index() + 1
        self.log.append([Entry(index, 1, data)])
        result = self.state.apply(index, data)
        self.index.apply(index, data)
        return result


def broker(seal_records: int = 4, auto_create: bool = True) -> BrokerService:
    state = BrokerState("broker-a")
    log = MemoryLogStore()
    index = KeyIndex.open(MemoryDisk(), "/keyindex", seal_records)
    index.live = True
    leader = _Leader(state, log, index)
    settings_command = encode_command(
        ConfigureBroker(BrokerSettings(auto_create_topics=auto_create))
    )
    trio.run(leader.propose_and_apply, settings_command)
    return BrokerService(state, leader, log, key_index=index, monotonic_ms=lambda: 0)


def send(service: BrokerService, *messages: OutgoingMessage) -> list[str]:
    reply = trio.run(service.send, SendRequest(messages))
    return [receipt.msg_id for receipt in reply.receipts]


def test_a_message_is_got_by_its_id_with_where_it_is() -> None:
    service = broker()
    [first] = send(service, OutgoingMessage("orders", b"one", "paid", ("k1",), {"a": "b"}))
    [second] = send(service, OutgoingMessage("orders", b"two", queue_id=0))
    view = trio.run(service.queries.get_message, GetMessageRequest(first))
    assert (view.message.topic, view.message.body, view.message.keys) == ("orders", b"one", ("k1",))
    assert view.message.properties == {"a": "b"} and view.message.attempt == 1
    assert view.message.message_id == first and view.message.offset >= 0
    again = service.queries.get_message_now(second)
    assert (again.queue_id, again.offset, again.body) == (0, again.offset, b"two")


def test_ids_that_name_no_stored_message_are_refused_with_why() -> None:
    service = broker(auto_create=False)
    # A message the leader let through but apply refused (its topic went meanwhile): in the
    # log, in no queue.
    batch = SendBatch(1000, (Message("missing", 0, b"x"),))
    trio.run(service.replica.propose_and_apply, encode_command(batch))
    last = service.state.applied_index
    for text, reason in [
        (f"broker-b:{last}:0", "names broker group broker-b"),
        (f"broker-a:{last + 5}:0", "no such entry"),
        (f"broker-a:{last}:7", "no message at that slot"),
        (f"broker-a:{last}:0", "not stored"),  # the refused message's own place
        ("broker-a:1:0", "no message at that slot"),  # a settings entry
    ]:
        with pytest.raises(MessageNotFound, match=reason):
            service.queries.get_message_now(text)
    with pytest.raises(InvalidMessageId):
        service.queries.get_message_now("broker-a:01:0")


def test_a_delayed_message_is_got_by_its_id_before_it_has_an_offset() -> None:
    service = broker()
    at = str(service.clock_ms() + 3_600_000)
    [delayed] = send(
        service, OutgoingMessage("orders", b"later", properties={DELIVER_AT_PROPERTY: at})
    )
    view = service.queries.get_message_now(delayed)
    assert view.offset == -1 and view.body == b"later"


def test_find_by_key_checks_every_candidate_against_the_message() -> None:
    service = broker(seal_records=4)  # most candidates come from sealed segments
    sent = []
    for number in range(12):
        keys = ("order-1",) if number % 3 == 0 else (f"order-{number}",)
        [msg_id] = send(service, OutgoingMessage("orders", f"m{number}".encode(), keys=keys))
        sent.append((msg_id, keys))
    send(service, OutgoingMessage("other", b"same key, other topic", keys=("order-1",)))
    wanted = [msg_id for msg_id, keys in sent if "order-1" in keys]
    reply = service.queries.find_messages_now(FindMessagesRequest("orders", "order-1", 32))
    assert [m.message_id for m in reply.messages] == wanted  # oldest first
    assert not reply.truncated and all(m.topic == "orders" for m in reply.messages)
    newest = service.queries.find_messages_now(FindMessagesRequest("orders", "order-1", 2))
    assert [m.message_id for m in newest.messages] == wanted[-2:] and newest.truncated


def test_a_retried_copy_is_found_under_its_origin_id_with_its_attempt() -> None:
    service = broker()
    properties = {ATTEMPT_PROPERTY: "2", "__ORIGIN_MSG_ID": "broker-a:9:0"}
    # As the broker stores a dead letter: a copy that keeps its origin's id.
    dead = Message("%DLQ%g", 0, b"dead", keys=("k",), properties=properties)
    trio.run(service.replica.propose_and_apply, encode_command(SendBatch(1000, (dead,))))
    [found] = service.queries.find_messages_now(FindMessagesRequest("%DLQ%g", "k", 5)).messages
    assert (found.message_id, found.attempt) == ("broker-a:9:0", 2)


def test_queries_go_to_the_leader() -> None:
    service = broker()
    service.replica.leading = False  # type: ignore[attr-defined]
    with pytest.raises(NotLeader):
        trio.run(service.queries.find_messages, FindMessagesRequest("orders", "k", 1))
    with pytest.raises(NotLeader):
        trio.run(service.queries.get_message, GetMessageRequest("broker-a:1:0"))


def test_a_damaged_index_is_refused_until_rebuilt_from_the_log() -> None:
    service = broker(seal_records=4)
    ids = [send(service, OutgoingMessage("orders", b"m", keys=("k",)))[0] for _ in range(9)]
    index = service.queries.key_index
    assert index is not None and index.segments
    disk = index._disk
    assert isinstance(disk, MemoryDisk)
    for segment in index.segments:  # rot in every record of every segment
        data = bytearray(disk.contents(segment.path))
        for record in range(segment.count):
            data[HEADER_BYTES + record * RECORD_BYTES + 3] ^= 0x10
        disk.set_contents(segment.path, bytes(data))
    request = FindMessagesRequest("orders", "k", 32)
    with pytest.raises(Unavailable, match="damaged"):
        service.queries.find_messages_now(request)
    with pytest.raises(Unavailable, match="being built"):
        service.queries.find_messages_now(request)
    # What the keeper does: drop the files, index the log until it reaches the applied index.
    index.reset()
    while not index.live:
        catch_up_once(index, service.state, service.log)
    assert [m.message_id for m in service.queries.find_messages_now(request).messages] == ids


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.builds(
            GetMessageRequest,
            st.sampled_from(["broker-a:2:0", "broker-a:0:0", "a:b:c", "::", "x:1:99999"])
            | st.text(min_size=1, max_size=20),
        ),
        st.builds(
            FindMessagesRequest,
            st.sampled_from(["orders", "missing", "%RETRY%g"]) | st.text(min_size=1, max_size=8),
            st.text(min_size=1, max_size=8),
            st.integers(1, 1024),
        ),
    )
)
def test_every_query_is_answered_or_refused_with_a_typed_error(request: Any) -> None:
    service = broker()
    send(service, OutgoingMessage("orders", b"m", keys=("k",)))
    with contextlib.suppress(DledgerError):
        trio.run(service.handle, request)


def test_a_retry_past_its_last_attempt_is_got_in_the_dead_letter_topic() -> None:
    service = broker()
    late = Message("%RETRY%g", 0, b"late", properties={ATTEMPT_PROPERTY: "99"})
    trio.run(service.replica.propose_and_apply, encode_command(SendBatch(1000, (late,))))
    view = service.queries.get_message_now(f"broker-a:{service.state.applied_index}:0")
    assert (view.topic, view.offset, view.attempt) == ("%DLQ%g", 0, 99)
