"""Every decoder of remote input refuses what is not a valid message with a ProtocolError, and
nothing else: arrays of any shape under every tag, integers of any size (each protocol's
integers lie in [-1, 2^63 - 1] once decoded), bytes that are not msgpack at all (msgpack
itself holds integers in [-2^63, 2^64 - 1]). Bounded so
that CI stays fast."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import ProtocolError
from dledger_mq.raft.runtime.transport import PEER_CODEC
from dledger_mq.wire.admin import NODE_CODEC
from dledger_mq.wire.codec import MAX_INT, MIN_INT, Codec
from dledger_mq.wire.naming import NAMING_CODEC

CODECS = {"node": NODE_CODEC, "naming": NAMING_CODEC, "peer": PEER_CODEC}

_SCALAR = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.floats(allow_nan=False),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


def integers_of(value: Any) -> list[int]:
    """Every integer inside a decoded message (bools aside)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if attrs.has(type(value)):
        return [
            i
            for field in attrs.fields(type(value))
            for i in integers_of(getattr(value, field.name))
        ]
    if isinstance(value, list | tuple):
        return [i for item in value for i in integers_of(item)]
    if isinstance(value, dict):
        return [i for item in value.values() for i in integers_of(item)]
    return []


@pytest.mark.parametrize("name", sorted(CODECS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_array_under_any_tag_is_a_message_or_a_protocol_error(name: str, data: Any) -> None:
    codec: Codec = CODECS[name]
    tag = data.draw(st.sampled_from(sorted(codec.type_by_tag)) | st.integers(-2, 200))
    fields = data.draw(st.lists(_VALUE, max_size=12))
    request_id = data.draw(st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1))
    group = data.draw(st.text(max_size=8) | st.integers(0, 3))
    payload = msgpack.packb([tag, request_id, group, *fields], use_bin_type=True)
    try:
        decoded = codec.decode(payload)
    except ProtocolError:
        return
    assert all(MIN_INT <= value <= MAX_INT for value in integers_of(decoded.message))


@pytest.mark.parametrize("name", sorted(CODECS))
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=80))
def test_any_bytes_are_a_message_or_a_protocol_error(name: str, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        CODECS[name].decode(data)


def test_an_integer_past_64_signed_bits_is_refused_where_a_number_belongs() -> None:
    from dledger_mq.wire.broker import PullRequest

    good = NODE_CODEC.encode(PullRequest("orders", 0, 5))
    array = msgpack.unpackb(good)
    array[5] = (1 << 64) - 1  # the offset
    with pytest.raises(ProtocolError, match="outside"):
        NODE_CODEC.decode(msgpack.packb(array))
