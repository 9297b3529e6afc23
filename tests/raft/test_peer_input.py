"""Remote input is checked at one entry point, before the core sees any of it: a peer frame is
decoded and checked (``decode_peer_message``), and whatever is wrong with it is a
``ProtocolError`` (the link is closed) that changes no state."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import ProtocolError
from dledger_mq.raft.pure.core import Config, RaftCore
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import (
    MAX_INDEX,
    MAX_TERM,
    AppendRequest,
    AppendResponse,
    Entry,
    Heartbeat,
    Message,
    TimeoutNow,
    VoteRequest,
)
from dledger_mq.raft.runtime.transport import PEER_CODEC, decode_peer_message, encode_peer_message

GROUP = "broker-a"


def follower() -> RaftCore:
    return RaftCore(Config("n1", ("n1", "n2", "n3")), MemoryLogStore(), random.Random(0))


def wire(message: Message) -> bytes:
    return encode_peer_message(message, GROUP)


@pytest.mark.parametrize(
    "message",
    [
        Heartbeat(term=(1 << 64) - 1, source="n2", target="n1", commit=0),
        TimeoutNow(term=(1 << 64) - 1, source="n2", target="n1"),
        Heartbeat(term=MAX_TERM + 1, source="n2", target="n1", commit=0),
        Heartbeat(term=1, source="n2", target="n1", commit=-1),
        AppendResponse(term=1, source="n2", target="n1", success=True, match_index=-5),
        VoteRequest(term=1, source="n2", target="n1", last_log_index=0, last_log_term=2),
        AppendRequest(
            term=1,
            source="n2",
            target="n1",
            prev_index=MAX_INDEX,
            prev_term=1,
            entries=(Entry(MAX_INDEX + 1, 1),),
            leader_commit=0,
        ),
    ],
    ids=[
        "term-2^64-1",
        "timeout-now-2^64-1",
        "term-past-max",
        "negative-commit",
        "negative-match",
        "vote-log-after-term",
        "index-past-max",
    ],
)
def test_out_of_range_input_is_a_protocol_error_before_the_core(message: Message) -> None:
    core = follower()
    with pytest.raises(ProtocolError, match="out of range|outside|later log"):
        decode_peer_message(wire(message), GROUP, "n2", "n1")
    assert core.term == 0 and not core.has_ready()


def test_a_malformed_append_with_a_higher_term_changes_nothing() -> None:
    """It once made the node a follower of the forged term before its shape was checked."""
    core = follower()
    forged = AppendRequest(
        term=9,
        source="n2",
        target="n1",
        prev_index=0,
        prev_term=0,
        entries=(Entry(5, 9, b"x"),),
        leader_commit=5,
    )
    with pytest.raises(ProtocolError, match="malformed append"):
        decode_peer_message(wire(forged), GROUP, "n2", "n1")
    with pytest.raises(ProtocolError, match="malformed append"):
        core.step(forged)  # a caller that skipped the entry point: still nothing changes
    assert (core.term, core.leader, core.log.last_index()) == (0, None, 0)


@pytest.mark.parametrize(
    ("source", "target", "group", "reason"),
    [
        ("n3", "n1", GROUP, "on the link from 'n2'"),
        ("n2", "n3", GROUP, "to 'n1'"),
        ("n2", "n1", "broker-b", "group 'broker-b'"),
    ],
)
def test_a_message_that_is_not_from_the_link_to_us_is_refused(
    source: str, target: str, group: str, reason: str
) -> None:
    message = Heartbeat(term=1, source=source, target=target, commit=0)
    with pytest.raises(ProtocolError, match=reason):
        decode_peer_message(encode_peer_message(message, group), GROUP, "n2", "n1")


def test_a_valid_message_comes_through_unchanged() -> None:
    message = AppendRequest(
        term=3,
        source="n2",
        target="n1",
        prev_index=4,
        prev_term=2,
        entries=(Entry(5, 2, b"a"), Entry(6, 3, b"b")),
        leader_commit=4,
    )
    assert decode_peer_message(wire(message), GROUP, "n2", "n1") == message


_FIELD_VALUES = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(min_value=-3, max_value=1 << 40), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.integers(min_value=0, max_value=20),
    fields=st.lists(_FIELD_VALUES, max_size=9),
    source=st.sampled_from(["n2", "n3", "x"]),
)
def test_fuzzed_frames_are_refused_or_harmless(tag: int, fields: list[object], source: str) -> None:
    """Any array a peer may send: either a ProtocolError, or a message the core takes
    without an exception other than the typed refusal, its term still in range."""
    payload = msgpack.packb([tag, 0, GROUP, *fields], use_bin_type=True)
    try:
        message = decode_peer_message(payload, GROUP, source, "n1")
    except ProtocolError:
        return
    core = follower()
    try:
        core.step(message)
    except ProtocolError:
        return
    assert 0 <= core.term <= MAX_TERM


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_bytes_are_refused(data: bytes) -> None:
    try:
        message = decode_peer_message(data, GROUP, "n2", "n1")
    except ProtocolError:
        return
    assert type(message).__name__ in {kind.__name__ for kind in PEER_CODEC.type_by_tag.values()}
