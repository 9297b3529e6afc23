"""The message query requests on the wire (tags 95-98): they round-trip, and every field is
bounded where it is decoded: a peer's out-of-bounds value is a ``ProtocolError``, our own
caller's a ``UsageError`` (h11's remote and local protocol errors)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import ProtocolError, UsageError
from dledger_mq.wire.admin import NODE_CODEC
from dledger_mq.wire.broker import (
    MAX_QUERY_KEY_LENGTH,
    MAX_QUERY_MESSAGE_ID_LENGTH,
    MAX_QUERY_MESSAGES,
    FindMessagesReply,
    FindMessagesRequest,
    GetMessageReply,
    GetMessageRequest,
    MessageView,
    StoredMessage,
    view_of,
)
from dledger_mq.wire.codec import MAX_NAME_LENGTH

VIEWS = st.builds(
    MessageView,
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
    st.integers(0, 1023),
    st.integers(-1, 1 << 40),
    st.lists(st.text(max_size=8), max_size=3).map(tuple),
    st.none() | st.text(max_size=8),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.binary(max_size=40),
    st.integers(0, 1 << 45),
    st.integers(0, 1 << 45),
    st.integers(1, 1000),
)
MESSAGES = st.one_of(
    st.builds(GetMessageRequest, st.text(min_size=1, max_size=MAX_QUERY_MESSAGE_ID_LENGTH)),
    st.builds(GetMessageReply, VIEWS),
    st.builds(
        FindMessagesRequest,
        st.text(min_size=1, max_size=MAX_NAME_LENGTH),
        st.text(min_size=1, max_size=MAX_QUERY_KEY_LENGTH),
        st.integers(1, MAX_QUERY_MESSAGES),
    ),
    st.builds(FindMessagesReply, st.lists(VIEWS, max_size=3).map(tuple), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(MESSAGES, st.integers(0, 1 << 32))
def test_every_query_message_round_trips(message: object, request_id: int) -> None:
    decoded = NODE_CODEC.decode(NODE_CODEC.encode(message, request_id, "broker-a"))
    assert (decoded.message, decoded.request_id, decoded.group) == (message, request_id, "broker-a")


@pytest.mark.parametrize(
    "fields",
    [
        [95, 1, "", "x" * (MAX_QUERY_MESSAGE_ID_LENGTH + 1)],
        [95, 1, "", ""],
        [95, 1, "", 7],
        [97, 1, "", "t" * (MAX_NAME_LENGTH + 1), "k", 1],
        [97, 1, "", "orders", "k" * (MAX_QUERY_KEY_LENGTH + 1), 1],
        [97, 1, "", "orders", "", 1],
        [97, 1, "", "orders", "k", 0],
        [97, 1, "", "orders", "k", MAX_QUERY_MESSAGES + 1],
        [97, 1, "", "orders", "k", True],
    ],
)
def test_a_query_out_of_bounds_from_the_wire_is_a_protocol_error(fields: list[object]) -> None:
    with pytest.raises(ProtocolError):
        NODE_CODEC.decode(msgpack.packb(fields, use_bin_type=True))


def test_a_query_out_of_bounds_from_our_own_caller_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="limit"):
        FindMessagesRequest("orders", "k", 0)
    with pytest.raises(UsageError, match="message_id"):
        GetMessageRequest("x" * (MAX_QUERY_MESSAGE_ID_LENGTH + 1))


def test_a_pulled_message_shows_its_delivery_attempt() -> None:
    pulled = StoredMessage("a:5:0", "t", 1, 9, b"b", "tag", ("k",), {"__ATTEMPT": "3"}, 1, 2)
    view = view_of(pulled)
    assert (view.message_id, view.offset, view.attempt, view.store_time_ms) == ("a:5:0", 9, 3, 2)
    assert view.group == "a"
