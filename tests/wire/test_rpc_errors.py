"""A typed error crosses the wire as itself: the client raises the class the server raised."""

from __future__ import annotations

import pytest

from dledger_mq.errors import DledgerError, InvalidName, NotLeader, TopicNotFound, Unavailable
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.rpc import error_reply, raise_error_reply


@pytest.mark.parametrize(
    "error",
    [
        InvalidName("topic", "bad name!", "only letters"),
        TopicNotFound("orders"),
        Unavailable("starting"),
    ],
)
def test_the_client_raises_the_servers_error_class(error: DledgerError) -> None:
    with pytest.raises(type(error)) as raised:
        raise_error_reply(error_reply(error))
    assert str(raised.value) == str(error)
    assert raised.value.retriable == error.retriable


def test_not_leader_keeps_the_leaders_id_and_address() -> None:
    with pytest.raises(NotLeader) as raised:
        raise_error_reply(error_reply(NotLeader("n2"), leader_address="127.0.0.1:9882"))
    assert raised.value.leader_hint == "n2"
    assert raised.value.leader_address == "127.0.0.1:9882"  # type: ignore[attr-defined]
    assert raised.value.retriable


def test_an_unknown_error_code_is_a_plain_error_naming_the_code() -> None:
    with pytest.raises(DledgerError, match="^FromTheFuture: something new$"):
        raise_error_reply(ErrorReply("FromTheFuture", "something new"))
