"""Requests and replies over one WebSocket, shared by every client-facing service.

Both sides shake hands first (``Hello`` → ``Welcome`` or ``ErrorReply``). Then the client may
have many requests in flight; each carries a request id and the reply echoes it. A typed error
travels as ``ErrorReply`` and is raised again on the client side as the same error class.
Nothing a client sends can stop a server: bad frames get an ``ErrorReply`` and the connection
is closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import structlog
import trio

from dledger_mq import errors
from dledger_mq.errors import (
    AuthenticationFailed,
    DledgerError,
    HandshakeRefused,
    InternalError,
    ProtocolError,
    TooManyConnections,
    Unavailable,
    UsageError,
)
from dledger_mq.wire.address import Address
from dledger_mq.wire.client_auth import (
    MAX_ACCESS_KEY_LENGTH,
    Credentials,
    check_client_proof,
    client_proof,
)
from dledger_mq.wire.codec import Codec, Decoded
from dledger_mq.wire.handshake import (
    PROTOCOL_VERSION,
    Authenticate,
    Authenticated,
    ErrorReply,
    Hello,
    Welcome,
    check_peer,
)
from dledger_mq.wire.peer_auth import check_nonce, new_nonce
from dledger_mq.wire.websocket import (
    GOING_AWAY,
    TRY_AGAIN_LATER,
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


@attrs.define
class Session:
    """Who is on the other end of one client connection: its address and, once it signed in,
    its access key (``client_auth.py``)."""

    peer_host: str
    user: str | None = None

    @property
    def loopback(self) -> bool:
        """The client runs on this machine (or is an in-memory test stream)."""
        return is_loopback(self.peer_host)


def is_loopback(host: str) -> bool:
    if not host:
        return True  # not a socket: a test's in-memory stream
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ClientAccess(Protocol):
    """A service's policy for who may connect: the keys users sign in with, and whether an
    authenticated (or anonymous) session may go on past the handshake."""

    def stored_key(self, access_key: str) -> bytes | None: ...

    def admit(self, session: Session) -> None:
        """Raise (``AuthenticationRequired``, ``PermissionDenied``) to refuse ``session``."""


class OpenAccess:
    """Anyone may connect, and no one can sign in: for tests and tools that need no users."""

    def stored_key(self, access_key: str) -> bytes | None:
        return None

    def admit(self, session: Session) -> None:
        return None


@attrs.frozen
class ServerLimits:
    """Bounds on one client connection (``node.toml``: ``client_hello_timeout_ms``,
    ``client_idle_timeout_ms``, ``max_pre_auth_bytes``)."""

    #: ``Hello`` (and, if it signs in, ``Authenticate``) within this long of the upgrade.
    hello_timeout_seconds: float = 10.0
    #: A client that sent no whole message and answered no ping for this long is dropped; it
    #: is pinged after half of it.
    idle_timeout_seconds: float = 600.0
    #: Bytes of one message taken before the handshake is done; after it, the service's limit.
    max_pre_auth_bytes: int = 64 << 10


DEFAULT_LIMITS = ServerLimits()

Handler = Callable[[object, Session], Awaitable[object]]


async def serve_requests(
    websocket: WebSocket,
    codec: Codec,
    cluster_id: str,
    node_id: str,
    handle: Handler,
    to_reply: Callable[[DledgerError], ErrorReply] = error_reply,
    access: ClientAccess | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> None:
    """Serve one client connection: handshake, then answer requests, many at once.

    The task that reads a request answers it: before answering it starts a new task to read
    the next one, so a request reaches its handler without a hop between tasks, and a slow
    request (a long poll) never holds up the others.
    """
    log = logger.bind(node=node_id)
    access = access or OpenAccess()
    max_message_bytes = websocket.max_message_bytes
    websocket.max_message_bytes = min(max_message_bytes, limits.max_pre_auth_bytes)
    session = Session(websocket.peer_host)
    try:
        with trio.fail_after(limits.hello_timeout_seconds):
            await _shake_hands(websocket, codec, cluster_id, node_id, access, session)
        websocket.max_message_bytes = max_message_bytes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drop_when_idle, websocket, limits.idle_timeout_seconds, log)
            _ReadAndAnswer(websocket, codec, handle, to_reply, nursery, session).start()
    except* WebSocketClosed:
        pass
    except* trio.TooSlowError:
        log.info("client_dropped", reason="no handshake in time", peer=session.peer_host)
        await websocket.aclose(GOING_AWAY, "no handshake in time")
    except* DledgerError as group:
        error = _first_leaf(group)
        log.warning("client_refused", reason=str(error), peer=session.peer_host)
        await _send_quietly(websocket, codec.encode(to_reply(error)))
        await websocket.aclose()


async def _shake_hands(
    websocket: WebSocket,
    codec: Codec,
    cluster_id: str,
    node_id: str,
    access: ClientAccess,
    session: Session,
) -> None:
    hello = _decode(codec, await websocket.get_message()).message
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
    check_peer(hello, cluster_id, what="client")
    if not hello.nonce:
        access.admit(session)  # anonymous: refused in place of Welcome, or let in
    else:
        check_nonce(hello.nonce)
    nonce = new_nonce()
    await websocket.send_message(
        codec.encode(Welcome(cluster_id, node_id, PROTOCOL_VERSION, nonce=nonce))
    )
    if not hello.nonce:
        return
    sign_in = _decode(codec, await websocket.get_message()).message
    if not isinstance(sign_in, Authenticate):
        raise ProtocolError(f"expected Authenticate, got {type(sign_in).__name__}")
    if not 0 < len(sign_in.access_key) <= MAX_ACCESS_KEY_LENGTH:
        raise AuthenticationFailed("authentication failed")
    check_client_proof(
        access.stored_key(sign_in.access_key),
        sign_in.access_key,
        sign_in.proof,
        cluster_id,
        hello.nonce,
        nonce,
    )
    session.user = sign_in.access_key
    access.admit(session)
    await websocket.send_message(codec.encode(Authenticated(sign_in.access_key)))


async def _drop_when_idle(websocket: WebSocket, idle_seconds: float, log: Any) -> None:
    """Ping a client silent for half of ``idle_seconds``; close it once silent for all of it."""
    pinged_at = -math.inf
    while True:
        silent = trio.current_time() - websocket.last_heard
        if silent >= idle_seconds:
            log.info("client_dropped", reason="idle", peer=websocket.peer_host)
            await websocket.aclose(GOING_AWAY, "idle")
            return
        if silent >= idle_seconds / 2 and pinged_at < websocket.last_heard:
            pinged_at = trio.current_time()
            await websocket.ping()
        half_way = silent < idle_seconds / 2
        await trio.sleep_until(websocket.last_heard + idle_seconds / (2 if half_way else 1))


class _ReadAndAnswer:
    """The reading turn of one connection, passed from task to task."""

    def __init__(
        self,
        websocket: WebSocket,
        codec: Codec,
        handle: Handler,
        to_reply: Callable[[DledgerError], ErrorReply],
        nursery: trio.Nursery,
        session: Session,
    ) -> None:
        self.session = session
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
                reply = await self.handle(decoded.message, self.session)
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

    def peer_gone(self) -> bool:
        """Known closed, or the other side has closed it (a request sent now reaches nobody:
        its fate is not in doubt). Costs a system call: for when that matters."""
        return self._closed or self.websocket.peer_closed()

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
    address: str,
    codec: Codec,
    cluster_id: str,
    client_name: str,
    credentials: Credentials | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[RpcConnection]:
    """Connect to a service's address (HOST:PORT), shake hands and sign in with
    ``credentials`` if given; ``Unavailable`` if it cannot be reached (``TooManyConnections``
    if it holds too many), ``HandshakeRefused`` if it is not of our cluster and version,
    ``AuthenticationFailed`` if it does not take the credentials. With ``ssl_context``: TLS,
    the node's certificate verified (``wire/tls.py``)."""
    try:
        host_port = Address.parse(address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        websocket = await connect_websocket(host_port.host, host_port.port, ssl_context=ssl_context)
    except OSError as error:
        raise Unavailable(f"cannot reach {address}: {describe_os_error(error)}") from None
    except WebSocketHandshakeError as error:
        hint = ""
        if ssl_context is None and "closed during the handshake" in str(error):
            hint = " (if the cluster speaks TLS: --tls-ca FILE, DLEDGER_MQ_TLS_CA or tls=)"
        raise Unavailable(f"cannot reach {address}: {error}{hint}") from None
    try:
        nonce = new_nonce() if credentials is not None else b""
        hello = Hello(cluster_id, client_name, PROTOCOL_VERSION, nonce=nonce)
        await websocket.send_message(codec.encode(hello))
        reply = await _handshake_reply(websocket, codec, address, Welcome)
        check_peer(reply, cluster_id, what="node")
        if credentials is not None:
            check_nonce(reply.nonce)
            proof = client_proof(credentials, cluster_id, nonce, reply.nonce)
            await websocket.send_message(codec.encode(Authenticate(credentials.access_key, proof)))
            await _handshake_reply(websocket, codec, address, Authenticated)
    except WebSocketClosed as error:
        await websocket.aclose()
        if error.code == TRY_AGAIN_LATER:
            raise TooManyConnections(f"{address} refused us: {error.reason}") from None
        raise Unavailable(f"cannot reach {address}: {error}") from None
    except BaseException:
        await websocket.aclose()
        raise
    try:
        yield RpcConnection(websocket, codec, reply.node_id)
    finally:
        await websocket.aclose()


async def _handshake_reply(
    websocket: WebSocket, codec: Codec, address: str, expected: type[ReplyT]
) -> ReplyT:
    reply = _decode(codec, await websocket.get_message()).message
    if isinstance(reply, ErrorReply):
        error = error_from_reply(reply)
        if isinstance(error, HandshakeRefused):
            raise type(error)(f"{address} refused us: {reply.message}")
        raise error
    if not isinstance(reply, expected):
        raise ProtocolError(f"{address} answered the handshake with {reply!r}")
    return reply
