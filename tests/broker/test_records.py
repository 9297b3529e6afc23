"""Property tests of the broker command codec: every command round-trips, and anything else
(random bytes, damaged encodings, well-framed commands with wrong values) is refused with a
``BadRequest``, never another exception; plus the message rules and the message id format."""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.broker.message_id import MessageId, format_message_id, parse_message_id
from dledger_mq.broker.records import (
    FORMAT_VERSION,
    MAX_BATCH_MESSAGES,
    MAX_KEYS,
    MAX_PROPERTIES_LENGTH,
    MAX_RAFT_INDEX,
    MAX_TOPIC_NAME_LENGTH,
    BrokerSettings,
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
    decode_command,
    encode_command,
    message_fields,
    read_messages,
)
from dledger_mq.broker.state import BrokerState, SendBatchResult, SendReceipt
from dledger_mq.errors import (
    BadRequest,
    InvalidMessage,
    InvalidMessageId,
    InvalidName,
    InvalidSettings,
    InvalidTopicConfig,
    MalformedCommand,
    UnsupportedCommandVersion,
)

names = st.text("abcXYZ019_.%-", min_size=1, max_size=12)
tags = st.text("abcpaid-_.", min_size=1, max_size=8)
counters = st.integers(min_value=0, max_value=2**63 - 1)
queue_ids = st.integers(min_value=0, max_value=15)
short_text = st.text(min_size=1, max_size=10)

messages = st.builds(
    Message,
    topic=names,
    queue_id=queue_ids,
    body=st.binary(max_size=64),
    tags=st.none() | tags,
    keys=st.lists(short_text, max_size=3).map(tuple),
    properties=st.dictionaries(short_text, st.text(max_size=10), max_size=3),
    born_timestamp_ms=counters,
    producer_id=st.none(),
    sequence=st.none(),
    sharding_key=st.none() | short_text,
)
idempotent_messages = st.builds(
    lambda message, producer_id, sequence: attrs.evolve(
        message, producer_id=producer_id, sequence=sequence
    ),
    messages,
    short_text,
    counters,
)
settings = st.builds(
    BrokerSettings,
    max_body_bytes=st.integers(1, 32 << 20),
    auto_create_topics=st.booleans(),
    default_queue_count=st.integers(1, 1024),
    idempotence_window=st.integers(1, 1 << 16),
    max_producers=st.integers(1, 1_000_000),
    producer_expiry_ms=st.integers(1, 2**63 - 1),
)
commands = st.one_of(
    st.builds(
        SendBatch, counters, st.lists(messages | idempotent_messages, min_size=1, max_size=5)
    ),
    st.builds(
        CommitOffsets,
        names,
        st.lists(st.builds(OffsetCommit, names, queue_ids, counters), min_size=1, max_size=4),
        st.none() | counters,
    ),
    st.builds(
        ResetOffsets,
        names,
        names,
        st.lists(queue_ids, min_size=1, max_size=4, unique=True).flatmap(
            lambda ids: st.tuples(*(st.builds(QueueOffset, st.just(i), counters) for i in ids))
        ),
    ),
    st.builds(CreateTopic, names, st.integers(1, 1024), st.booleans()),
    st.builds(UpdateTopic, names, st.integers(1, 1024), st.booleans()),
    st.builds(DeleteTopic, names),
    st.builds(ConfigureBroker, settings),
)

#: msgpack values of every kind, for fields where a command expects something specific.
any_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


def refused_or_decoded(data: bytes) -> None:
    try:
        command = decode_command(data)
    except BadRequest as error:
        assert str(error)  # refused, and says why
    else:
        # Whatever decodes is a valid command, and encodes back to something equal.
        assert decode_command(encode_command(command)) == command


@given(commands)
def test_every_command_round_trips(command: Any) -> None:
    assert decode_command(encode_command(command)) == command


@given(st.binary(max_size=300))
def test_random_bytes_are_refused_with_a_bad_request_only(data: bytes) -> None:
    refused_or_decoded(data)


@given(commands, st.data())
def test_damaged_encodings_are_refused_with_a_bad_request_only(command: Any, data: Any) -> None:
    encoded = bytearray(encode_command(command))
    damage = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    position = data.draw(st.integers(0, len(encoded) - 1))
    if damage == "flip":
        encoded[position] ^= data.draw(st.integers(1, 255))
    elif damage == "truncate":
        del encoded[position:]
    else:
        encoded.insert(position, data.draw(st.integers(0, 255)))
    refused_or_decoded(bytes(encoded))


@given(st.sampled_from(CommandTag), st.lists(any_values, max_size=7))
def test_well_framed_commands_with_any_field_values_are_refused_or_valid(
    tag: CommandTag, fields: list[Any]
) -> None:
    refused_or_decoded(msgpack.packb([FORMAT_VERSION, int(tag), *fields]))


@given(messages, st.integers(0, 9), any_values, counters)
def test_a_message_with_any_field_replaced_is_refused_or_stored_readably(
    message: Message, field_index: int, value: Any, store_timestamp_ms: int
) -> None:
    fields = message_fields(message)
    fields[4], fields[5] = list(message.keys), dict(message.properties)
    fields[field_index] = value
    data = msgpack.packb([FORMAT_VERSION, CommandTag.SEND_BATCH, store_timestamp_ms, [fields]])
    refused_or_decoded(data)
    # Whatever apply stores, a pull can read back: both paths share one set of checks.
    result = BrokerState("broker-a").apply(1, data)
    assert isinstance(result, SendBatchResult)
    if isinstance(result.outcomes[0], SendReceipt):
        assert read_messages(data, [0]).messages[0].body == fields[2]


def test_another_format_version_is_refused_by_name() -> None:
    data = msgpack.packb([FORMAT_VERSION + 1, CommandTag.DELETE_TOPIC, "orders"])
    with pytest.raises(UnsupportedCommandVersion) as refused:
        decode_command(data)
    assert refused.value.found_version == FORMAT_VERSION + 1


def test_a_value_of_the_wrong_type_is_refused_not_coerced() -> None:
    cases = [
        [CommandTag.CREATE_TOPIC, "orders", True, False],  # a boolean as a queue count
        [CommandTag.CREATE_TOPIC, "orders", 4, 1],  # a number as a boolean
        [CommandTag.CREATE_TOPIC, "orders", 4.0, False],
        [CommandTag.DELETE_TOPIC, b"orders"],  # bytes as a name
        [CommandTag.SEND_BATCH, -1, []],
    ]
    for fields in cases:
        with pytest.raises(BadRequest):
            decode_command(msgpack.packb([FORMAT_VERSION, *fields]))


def test_unknown_tag_and_wrong_arity_are_refused() -> None:
    with pytest.raises(MalformedCommand, match="unknown command tag 99"):
        decode_command(msgpack.packb([FORMAT_VERSION, 99]))
    with pytest.raises(MalformedCommand, match="DELETE_TOPIC has 1 fields, got 2"):
        decode_command(msgpack.packb([FORMAT_VERSION, CommandTag.DELETE_TOPIC, "a", "b"]))


def test_a_batch_is_compact_arrays() -> None:
    message = Message("orders", 1, b"x" * 100, born_timestamp_ms=1_700_000_000_000)
    one = encode_command(SendBatch(1_700_000_000_000, [message]))
    hundred = encode_command(SendBatch(1_700_000_000_000, [message] * 100))
    # Per message: the 100-byte body plus about 30 bytes of fields, no field names.
    assert (len(hundred) - len(one)) / 99 < 135
    assert msgpack.unpackb(one)[3][0][:3] == ["orders", 1, b"x" * 100]


def test_batch_size_is_bounded() -> None:
    message = Message("orders", 0, b"")
    with pytest.raises(InvalidMessage, match="batch"):
        SendBatch(0, [])
    with pytest.raises(InvalidMessage, match="batch"):
        SendBatch(0, [message] * (MAX_BATCH_MESSAGES + 1))


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"topic": ""}, InvalidName, None),
        ({"topic": "a" * (MAX_TOPIC_NAME_LENGTH + 1)}, InvalidName, None),
        ({"topic": "orders/eu"}, InvalidName, None),
        ({"queue_id": -1}, InvalidMessage, "queue_id"),
        ({"queue_id": True}, InvalidMessage, "queue_id"),
        ({"body": "text"}, InvalidMessage, "body"),
        ({"body": bytearray(b"x")}, InvalidMessage, "body"),
        ({"tags": "paid refunded"}, InvalidMessage, "tags"),
        ({"tags": "paid||refunded"}, InvalidMessage, "tags"),
        ({"tags": "*"}, InvalidMessage, "tags"),
        ({"tags": ""}, InvalidMessage, "tags"),
        ({"keys": "o-1"}, InvalidMessage, "keys"),  # one string, not a sequence of keys
        ({"keys": ("",)}, InvalidMessage, "keys"),
        ({"keys": ("k",) * (MAX_KEYS + 1)}, InvalidMessage, "keys"),
        ({"properties": {"": "x"}}, InvalidMessage, "properties"),
        ({"properties": {"a": 1}}, InvalidMessage, "properties"),
        ({"properties": {"a": "x" * MAX_PROPERTIES_LENGTH}}, InvalidMessage, "properties"),
        ({"born_timestamp_ms": -1}, InvalidMessage, "born_timestamp_ms"),
        ({"producer_id": "p"}, InvalidMessage, "sequence"),  # a producer without a sequence
        ({"sequence": 1}, InvalidMessage, "sequence"),
        ({"producer_id": "", "sequence": 1}, InvalidMessage, "producer_id"),
        ({"producer_id": "p", "sequence": 2**63}, InvalidMessage, "sequence"),
        ({"sharding_key": ""}, InvalidMessage, "sharding_key"),
    ],
)
def test_a_message_breaking_a_rule_is_refused_with_a_typed_error(
    fields: dict[str, Any], error: type[BadRequest], field: str | None
) -> None:
    arguments: dict[str, Any] = {"topic": "orders", "queue_id": 0, "body": b"x", **fields}
    with pytest.raises(error) as refused:
        Message(**arguments)
    if field is not None:
        assert isinstance(refused.value, InvalidMessage)
        assert refused.value.field == field


def test_a_message_is_frozen_including_its_properties() -> None:
    properties = {"region": "eu"}
    message = Message("orders", 0, b"x", properties=properties, keys=["o-1"])
    properties["region"] = "us"
    assert message.properties == {"region": "eu"}
    assert message.keys == ("o-1",)
    with pytest.raises(TypeError):
        message.properties["region"] = "us"  # type: ignore[index]
    assert hash(message) == hash(Message("orders", 0, b"x", properties={"a": "b"}, keys=["o-1"]))


def test_topic_and_settings_values_are_checked() -> None:
    with pytest.raises(InvalidTopicConfig):
        CreateTopic("orders", 0)
    with pytest.raises(InvalidTopicConfig):
        CreateTopic("orders", 1025)
    with pytest.raises(InvalidName):
        DeleteTopic("no spaces")
    with pytest.raises(InvalidSettings, match="max_body_bytes"):
        BrokerSettings(max_body_bytes=0)
    with pytest.raises(InvalidSettings, match="auto_create_topics"):
        BrokerSettings(auto_create_topics=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="queue 1 named twice"):
        ResetOffsets("billing", "orders", [QueueOffset(1, 0), QueueOffset(1, 5)])
    with pytest.raises(InvalidName):
        CommitOffsets("", [OffsetCommit("orders", 0, 1)])


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_read_messages_returns_the_slots_asked_for(batch: list[Message], data: Any) -> None:
    encoded = encode_command(SendBatch(42, batch))
    slots = data.draw(st.lists(st.integers(0, len(batch) - 1), max_size=4))
    stored = read_messages(encoded, slots)
    assert stored.store_timestamp_ms == 42
    assert stored.messages == tuple(batch[slot] for slot in slots)
    with pytest.raises(MalformedCommand, match="no slot"):
        read_messages(encoded, [len(batch)])
    with pytest.raises(MalformedCommand, match="not messages"):
        read_messages(encode_command(DeleteTopic("orders")), [0])


@given(st.text(min_size=1, max_size=30), st.integers(1, MAX_RAFT_INDEX), st.integers(0, 65535))
def test_message_ids_round_trip_whatever_the_group_name(
    group: str, raft_index: int, slot: int
) -> None:
    text = format_message_id(group, raft_index, slot)
    assert parse_message_id(text) == MessageId(group, raft_index, slot)
    assert str(MessageId(group, raft_index, slot)) == text


@given(st.text(max_size=40))
def test_message_id_garbage_is_refused_with_a_typed_error(text: str) -> None:
    try:
        parsed = parse_message_id(text)
    except InvalidMessageId:
        pass
    else:
        assert str(parsed) == text  # one spelling per id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "broker-a",
        "broker-a:1",
        ":1:0",
        "broker-a:01:0",
        "broker-a:1:+0",
        "broker-a:0:0",
        "broker-a:1:65536",
        "broker-a:١:0",
        "broker-a:1:0 ",
    ],
)
def test_non_canonical_message_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidMessageId):
        parse_message_id(text)
