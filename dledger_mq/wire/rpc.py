"""Requests and replies over one WebSocket, shared by every client-facing service.

Both sides shake hands first (``Hello`` → ``Welcome`` or ``ErrorReply``). Then the client may
have many requests in flight; each carries a request id and the reply echoes it. A typed error
travels as ``ErrorReply`` and is raised again on the client side as the same error class.
Nothing a client sends can stop a server: bad frames get an ``ErrorReply`` and the connection
is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
import trio

from dledger_mq import errors
from dledger_mq.errors import (
    DledgerError,
    HandshakeRefused,
    InternalError,
    ProtocolError,
    Unavailable,
    UsageError,
)
from dledger_mq.wire.address import Address
from dledger_mq.wire.codec import Codec, Decoded
from dledger_mq.wire.handshake import PROTOCOL_VERSION, ErrorReply, Hello, Welcome, check_peer
from dledger_mq.wire.websocket import (
    WebSocket,
    WebSocketClosed,
    WebSocketHandshakeError,
    connect_websocket,
)

logger = structlog.get_logger()

ReplyT = TypeVar("ReplyT")

#: Requests of one connection answered at once; a client may have more in flight, but the
#: server reads no further until one is answered.
MAX_REQUESTS_IN_FLIGHT = 1024


def error_reply(error: DledgerError, leader_address: str | None = None) -> ErrorReply:
    """The wire form of ``error``: its code, text and fields (``leader_address`` filled in for
    an error that has one and does not know it yet)."""
    fields = error.field_values()
    if "leader_address" in fields and fields["leader_address"] is None:
        fields["leader_address"] = leader_address
    for name, value in fields.items():
        if not isinstance(value, str | int | bool | float | type(None)):
            fields[name] = str(value)  # a path or the like: its text travels
    return ErrorReply(code=error.code, message=str(error), retriable=error.retriable, fields=fields)


def error_from_reply(reply: ErrorReply) -> DledgerError:
    """The error an ``ErrorReply`` stands for: the same class with the same fields. A code this
    side does not know is a plain ``DledgerError`` keeping the reply's ``retriable``; fields
    that do not fit the code are the sender's fault, a ``ProtocolError``."""
    kind = errors.ERRORS.get(reply.code)
    if kind is None:
        unknown = DledgerError(f"{reply.code}: {reply.message}")
        unknown.retriable = reply.retriable  # type: ignore[misc]
        return unknown
    try:
        return kind.from_fields(reply.message, reply.fields)
    except (TypeError, ValueError) as error:
        return ProtocolError(f"an error reply {reply.code} that does not fit its code: {error}")


def raise_error_reply(reply: ErrorReply) -> None:
    """Raise the error an ``ErrorReply`` stands for (see ``error_from_reply``)."""
    raise error_from_reply(reply)


def describe_os_error(error: OSError) -> str:
    """What went wrong, in the words of the system call that failed ("Connection refused"),
    also when Trio wraps the attempts of one connect in a group."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno).lower()
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()  # a failed name lookup's errno is negative
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        else:
            cause = cause.__cause__
    return str(error)


# -- the server side -----------------------------------------------------------------------------


Handler = Callable[[object], Awaitable[object]]


async def serve_requests(
    websocket: WebSocket,
    codec: Codec,
    cluster_id: str,
    node_id: str,
    handle: Handler,
    to_reply: Callable[[DledgerError], ErrorReply] = error_reply,
) -> None:
    """Serve one client connection: handshake, then answer requests, many at once.

    The task that reads a request answers it: before answering it starts a new task to read
    the next one, so a request reaches its handler without a hop between tasks, and a slow
    request (a long poll) never holds up the others.
    """
    log = logger.bind(node=node_id)
    try:
        hello = _decode(codec, await websocket.get_message()).message
        if not isinstance(hello, Hello):
            raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
        check_peer(hello, cluster_id, what="client")
        await websocket.send_message(codec.encode(Welcome(cluster_id, node_id, PROTOCOL_VERSION)))
        async with trio.open_nursery() as nursery:
            _ReadAndAnswer(websocket, codec, handle, to_reply, nursery).start()
    except* WebSocketClosed:
        pass
    except* DledgerError as group:
        error = _first_leaf(group)
        log.warning("client_refused", reason=str(error))
        await _send_quietly(websocket, codec.encode(to_reply(error)))
        await websocket.aclose()


class _ReadAndAnswer:
    """The reading turn of one connection, passed from task to task."""

    def __init__(
        self,
        websocket: WebSocket,
        codec: Codec,
        handle: Handler,
        to_reply: Callable[[DledgerError], ErrorReply],
        nursery: trio.Nursery,
    ) -> None:
        self.websocket = websocket
        self.codec = codec
        self.handle = handle
        self.to_reply = to_reply
        self.nursery = nursery
        #: Requests being answered; at the limit, the next is not read until one is done, so
        #: that a client that pipelines without end meets TCP flow control, not our memory.
        self.in_flight = 0
        self._answered = trio.Event()

    def start(self) -> None:
        self.nursery.start_soon(self._read_then_answer)

    @staticmethod
    def _bug(decoded: Decoded) -> InternalError:
        """A bug met while answering one request (an unexpected exception, or a ``UsageError``:
        the node misusing its own parts), logged with its traceback; it must not take the node
        and every connection down, and it is not the client's mistake."""
        request = type(decoded.message).__name__
        logger.exception("request_failed", request=request)
        return InternalError(f"the node failed on {request}; see its log")

    async def _read_then_answer(self) -> None:
        while self.in_flight >= MAX_REQUESTS_IN_FLIGHT:
            self._answered = trio.Event()
            await self._answered.wait()
        decoded = _decode(self.codec, await self.websocket.get_message())
        self.in_flight += 1
        self.start()
        try:
            try:
                reply = await self.handle(decoded.message)
            except DledgerError as error:
                reply = self.to_reply(
                    error if not isinstance(error, UsageError) else self._bug(decoded)
                )
            except Exception:
                reply = self.to_reply(self._bug(decoded))
            await _send_quietly(
                self.websocket, self.codec.encode(reply, decoded.request_id, decoded.group)
            )
        finally:
            self.in_flight -= 1
            self._answered.set()


def _decode(codec: Codec, payload: bytes | str) -> Decoded:
    if isinstance(payload, str):
        raise ProtocolError("text messages are not part of the protocol")
    return codec.decode(payload)


def _first_leaf(group: BaseExceptionGroup[DledgerError]) -> DledgerError:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, DledgerError)
    return error


async def _send_quietly(websocket: WebSocket, payload: bytes) -> None:
    with contextlib.suppress(WebSocketClosed):
        await websocket.send_message(payload)


# -- the client side -----------------------------------------------------------------------------


class RpcConnection:
    """Many requests may be in flight on one connection; replies are matched by request id.

    There is no reader task of our own: a waiting request reads the next message itself, and
    hands it over if it is another's reply; the others wait for their turn. With one request in
    flight its reply reaches it without a hop between tasks (each costs about 0.1 ms here).
    """

    def __init__(self, websocket: WebSocket, codec: Codec, node_id: str) -> None:
        self.websocket = websocket
        self.codec = codec
        self.node_id = node_id
        self._request_ids = itertools.count(1)
        self._waiting: set[int] = set()
        self._replies: dict[int, Any] = {}
        #: A request is reading the next message for everyone.
        self._reading = False
        #: Set (and replaced) whenever a message was read or the reader stopped reading.
        self._turn = trio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        """The connection is gone (closed, reset, or it sent garbage): open another."""
        return self._closed

    async def request(self, message: object) -> Any:
        """Send ``message`` and return its reply; an ``ErrorReply`` is raised as its error."""
        request_id = next(self._request_ids)
        self._waiting.add(request_id)
        try:
            await self.websocket.send_message(self.codec.encode(message, request_id))
            while request_id not in self._replies:
                if self._closed:
                    raise Unavailable(f"connection to {self.node_id} closed")
                if self._reading:
                    await self._turn.wait()
                else:
                    await self._read_one()
            reply = self._replies.pop(request_id)
        except WebSocketClosed:
            raise Unavailable(f"connection to {self.node_id} closed") from None
        finally:
            self._waiting.discard(request_id)
            self._replies.pop(request_id, None)
        if isinstance(reply, ErrorReply):
            raise_error_reply(reply)
        return reply

    async def call(self, message: object, reply_type: type[ReplyT]) -> ReplyT:
        """``request``, whose reply must be a ``reply_type``: any other is the other side's
        fault, a ``ProtocolError`` (never an ``AssertionError`` in the caller)."""
        reply = await self.request(message)
        if not isinstance(reply, reply_type):
            raise ProtocolError(
                f"{self.node_id} answered {type(message).__name__} with "
                f"{type(reply).__name__}, not {reply_type.__name__}"
            )
        return reply

    async def _read_one(self) -> None:
        self._reading = True
        try:
            decoded = _decode(self.codec, await self.websocket.get_message())
            if decoded.request_id in self._waiting:
                self._replies[decoded.request_id] = decoded.message
        except (WebSocketClosed, ProtocolError):
            self._closed = True
        finally:
            self._reading = False
            self._turn.set()
            self._turn = trio.Event()


@asynccontextmanager
async def connect(
    address: str, codec: Codec, cluster_id: str, client_name: str
) -> AsyncIterator[RpcConnection]:
    """Connect to a service's address (HOST:PORT) and shake hands; ``Unavailable`` if it
    cannot be reached, ``HandshakeRefused`` if it is not of our cluster and version."""
    try:
        host_port = Address.parse(address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        websocket = await connect_websocket(host_port.host, host_port.port)
    except OSError as error:
        raise Unavailable(f"cannot reach {address}: {describe_os_error(error)}") from None
    except WebSocketHandshakeError as error:
        raise Unavailable(f"cannot reach {address}: {error}") from None
    try:
        hello = Hello(cluster_id, client_name, PROTOCOL_VERSION)
        await websocket.send_message(codec.encode(hello))
        reply = _decode(codec, await websocket.get_message()).message
        if isinstance(reply, ErrorReply):
            raise HandshakeRefused(f"{address} refused us: {reply.message}")
        if not isinstance(reply, Welcome):
            raise ProtocolError(f"{address} answered the handshake with {reply!r}")
        check_peer(reply, cluster_id, what="node")
    except WebSocketClosed as error:
        await websocket.aclose()
        raise Unavailable(f"cannot reach {address}: {error}") from None
    except BaseException:
        await websocket.aclose()
        raise
    try:
        yield RpcConnection(websocket, codec, reply.node_id)
    finally:
        await websocket.aclose()
