"""Deleting a consumer group forgets, on every replica alike, its committed offsets, its retry
policy and its receives in flight; again, it is a no-op that says so; a snapshot taken after
it knows nothing of the group; a malformed command changes nothing."""

from __future__ import annotations

import msgpack
import pytest

from dledger_mq.broker.records import (
    CommitOffsets,
    ConfigureGroup,
    DeleteGroup,
    OffsetCommit,
    RetryPolicy,
    decode_command,
    encode_command,
)
from dledger_mq.broker.state import BrokerState, GroupDeleted, Refused
from dledger_mq.errors import BadRequest
from tests.broker.test_pop import GROUP, _log_with_messages


def test_a_deleted_group_is_forgotten_and_a_snapshot_agrees() -> None:
    log = _log_with_messages(3)
    log.apply(CommitOffsets("billing", (OffsetCommit("orders", 0, 1),)))
    log.apply(ConfigureGroup("billing", RetryPolicy(2, (1_000,))))
    log.pop(10_000, (1,), 2)
    assert log.state.knows_group("billing")
    assert log.apply(DeleteGroup("billing")) == GroupDeleted("billing", True)
    assert not log.state.knows_group("billing")
    assert log.state.groups() == ()
    assert log.state.committed_offset("billing", "orders", 0) is None
    assert log.state.retry_policy("billing") != RetryPolicy(2, (1_000,))
    assert log.apply(DeleteGroup("billing")) == GroupDeleted("billing", False)
    restored = BrokerState.from_snapshot(GROUP, log.state.to_snapshot(), log.state.queues)
    assert restored == log.state


def test_delete_group_round_trips_and_a_bad_name_is_refused() -> None:
    assert decode_command(encode_command(DeleteGroup("billing"))) == DeleteGroup("billing")
    with pytest.raises(BadRequest, match="invalid group name"):
        DeleteGroup("")
    log = _log_with_messages(1)
    before = BrokerState.from_snapshot(GROUP, log.state.to_snapshot(), log.state.queues)
    # The command as a peer could send it: a group name that is not a name.
    raw = msgpack.packb([1, 17, ""])
    result = log.state.apply(log.state.applied_index + 1, raw)
    assert isinstance(result, Refused)
    # Every replicated fact as it was, but the applied index (a refused entry is applied).
    now, then = log.state._comparable(), before._comparable()
    assert now[1] == then[1] + 1 and now[:1] + now[2:] == then[:1] + then[2:]
