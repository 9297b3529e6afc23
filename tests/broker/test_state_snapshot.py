"""A broker snapshot comes back as the same state, and anything else is a SnapshotError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.broker.records import CreateTopic, encode_command
from dledger_mq.broker.state import SNAPSHOT_FORMAT_VERSION, BrokerState
from dledger_mq.errors import SnapshotError


def a_state() -> BrokerState:
    state = BrokerState("broker-a")
    state.apply(1, encode_command(CreateTopic("orders", 2, False)))
    return state


def test_a_snapshot_of_another_group_or_version_is_refused() -> None:
    data = a_state().to_snapshot()
    with pytest.raises(SnapshotError, match="not 'broker-b'"):
        BrokerState.from_snapshot("broker-b", data)
    fields = msgpack.unpackb(data)
    fields[0] = SNAPSHOT_FORMAT_VERSION + 1
    with pytest.raises(SnapshotError, match="format version"):
        BrokerState.from_snapshot("broker-a", msgpack.packb(fields))


@given(st.binary(max_size=200))
def test_any_bytes_are_a_state_or_a_snapshot_error(data: bytes) -> None:
    with contextlib.suppress(SnapshotError):
        BrokerState.from_snapshot("broker-a", data)


@given(st.integers(min_value=0, max_value=400))
def test_a_cut_snapshot_is_refused(length: int) -> None:
    data = a_state().to_snapshot()
    if length >= len(data):
        return
    with pytest.raises(SnapshotError):
        BrokerState.from_snapshot("broker-a", data[:length])
