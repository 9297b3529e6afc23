"""A typed error crosses the wire as itself: the client raises the class the server raised,
with the same fields (the registry in ``errors.py``), and a reply of the wrong type is the
other side's fault, a ``ProtocolError``."""

from __future__ import annotations

import inspect
import types
import typing

import pytest
import trio

from dledger_mq import errors
from dledger_mq.errors import (
    ERRORS,
    DledgerError,
    InvalidName,
    InvalidOffset,
    LeadershipTransferInProgress,
    NotLeader,
    ProtocolError,
    TopicNotFound,
    Unavailable,
)
from dledger_mq.wire.admin import ADMIN_CODEC, ProposeRequest, StatusReply
from dledger_mq.wire.codec import Codec
from dledger_mq.wire.handshake import HANDSHAKE_TYPES, ErrorReply
from dledger_mq.wire.rpc import error_from_reply, error_reply, raise_error_reply
from tests.wire.rpc_server import serve_admin_requests

HANDSHAKE_CODEC = Codec(HANDSHAKE_TYPES)
SAMPLES = {str: "x", int: 7, bool: True, float: 1.5}


def sample_arguments(kind: type[DledgerError]) -> dict[str, object] | None:
    """A value for each constructor argument, from its annotation; None if one is not a
    scalar (the error is local, never on the wire)."""
    hints = typing.get_type_hints(kind.__init__, vars(errors))
    arguments: dict[str, object] = {}
    for name in kind.fields:
        hint = hints.get(name, str)
        candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        value = next((SAMPLES[c] for c in candidates if c in SAMPLES), None)
        if value is None and type(None) not in candidates:
            return None
        arguments[name] = value
    return arguments


WIRE_ERRORS = sorted(
    name
    for name, kind in ERRORS.items()
    if kind.__module__ == "dledger_mq.errors" and sample_arguments(kind) is not None
)


@pytest.mark.parametrize("code", WIRE_ERRORS)
def test_every_error_comes_back_as_its_class_with_its_fields(code: str) -> None:
    kind = ERRORS[code]
    arguments = sample_arguments(kind)
    assert arguments is not None
    error = kind(**arguments)
    reply = HANDSHAKE_CODEC.decode(HANDSHAKE_CODEC.encode(error_reply(error))).message
    back = error_from_reply(reply)
    assert type(back) is kind
    assert back.field_values() == error.field_values()
    assert str(back) == str(error)
    assert (back.retriable, back.refresh_routes) == (kind.retriable, kind.refresh_routes)


def test_an_offset_error_keeps_the_queues_bounds() -> None:
    """It once arrived without min_offset and max_offset (rebuilt with ``__new__``)."""
    with pytest.raises(InvalidOffset) as raised:
        raise_error_reply(error_reply(InvalidOffset("orders", 2, 99, 10, 40)))
    assert (raised.value.min_offset, raised.value.max_offset) == (10, 40)


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


def test_not_leader_declares_the_leaders_id_and_address() -> None:
    with pytest.raises(NotLeader) as raised:
        raise_error_reply(error_reply(NotLeader("n2"), leader_address="127.0.0.1:9882"))
    assert raised.value.leader_hint == "n2"
    assert raised.value.leader_address == "127.0.0.1:9882"
    assert raised.value.retriable and raised.value.refresh_routes
    with pytest.raises(LeadershipTransferInProgress) as transfer:
        raise_error_reply(error_reply(LeadershipTransferInProgress("n3"), "127.0.0.1:9883"))
    assert (transfer.value.leader_hint, transfer.value.leader_address) == (
        "n3",
        "127.0.0.1:9883",
    )


def test_an_unknown_error_code_is_a_plain_error_naming_the_code() -> None:
    with pytest.raises(DledgerError, match="^FromTheFuture: something new$") as raised:
        raise_error_reply(ErrorReply("FromTheFuture", "something new", retriable=True))
    assert raised.value.retriable


def test_fields_that_do_not_fit_the_code_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="does not fit"):
        raise_error_reply(ErrorReply("TopicNotFound", "x", False, {"queue": 3}))


def test_two_error_classes_of_one_name_are_refused() -> None:
    with pytest.raises(TypeError, match="two error classes are named TopicNotFound"):
        type("TopicNotFound", (DledgerError,), {})


def test_every_constructor_argument_is_an_attribute() -> None:
    for kind in ERRORS.values():
        names = set(inspect.signature(kind.__init__).parameters) - {"self", "message"}
        if kind.__init__ in (Exception.__init__, object.__init__):
            continue
        assert set(kind.fields) == names, kind


async def test_a_reply_of_the_wrong_type_is_a_protocol_error() -> None:
    async def answer_wrongly(message: object) -> object:
        return StatusReply("n1", "g", "a", "leader", 1, "n1", "a", 0, 0, 0, ())

    from dledger_mq.wire.admin import ProposeReply
    from dledger_mq.wire.rpc import connect

    with trio.fail_after(10):
        async with trio.open_nursery() as server:
            address = await serve_admin_requests(server, answer_wrongly)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:
                with pytest.raises(ProtocolError, match="answered ProposeRequest with StatusReply"):
                    await connection.call(ProposeRequest(b"x"), ProposeReply)
            server.cancel_scope.cancel()


def test_the_protocol_doc_lists_every_error_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    missing = [
        name
        for name, kind in ERRORS.items()
        if kind.__module__ == "dledger_mq.errors" and f"| `{name}` |" not in doc
    ]
    assert missing == [], f"docs/protocol.md lacks error codes {missing}"


@pytest.mark.parametrize(
    ("raised", "received"),
    [
        (errors.UsageError("an empty batch"), errors.InternalError),
        (errors.BadRequest("the client's mistake"), errors.BadRequest),
    ],
)
async def test_local_misuse_while_serving_is_the_nodes_bug_not_the_clients(
    raised: DledgerError, received: type[DledgerError]
) -> None:
    """A ``UsageError`` (the node misusing its own parts) is answered as an ``InternalError``;
    a ``BadRequest`` goes back to the client as itself."""

    async def fail(message: object) -> object:
        raise raised

    from dledger_mq.wire.admin import ProposeReply
    from dledger_mq.wire.rpc import connect

    with trio.fail_after(10):
        async with trio.open_nursery() as server:
            address = await serve_admin_requests(server, fail)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:
                with pytest.raises(DledgerError) as caught:
                    await connection.call(ProposeRequest(b"x"), ProposeReply)
                # Served once more on the same connection: the bug took nothing down.
                with pytest.raises(DledgerError):
                    await connection.call(ProposeRequest(b"x"), ProposeReply)
            server.cancel_scope.cancel()
    assert type(caught.value) is received
