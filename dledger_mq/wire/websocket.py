"""WebSocket connections driven by wsproto in the task that uses them: no task of their own.

trio-websocket runs a reader task per connection and hands each message over a memory channel
to whoever calls ``get_message``: a hop between tasks per message (on a server, a second one to
the task that answers). On this machine a hop costs about as much as the loopback send itself,
and a request crosses this layer twice, so here the task that wants a message reads the socket
itself, and a sender writes straight to the socket when no one else is writing
(``dledger-mq bench transport`` compares both on the same frames; docs/benchmarks.md).

The protocol is plain RFC 6455 through wsproto, the sans-I/O implementation trio-websocket
itself drives, so any WebSocket client or server talks to these (tests check trio-websocket's
client against our server and ours against its server). Binary messages only carry payloads;
pings are answered while reading; a close is answered and raised as ``WebSocketClosed``; a
message larger than the limit closes the connection with 1009 (message too big).

Rules, as in Trio's streams: one task reads at a time (callers take turns, see
``wire/rpc.py``); any number may send, each message is written whole.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError, RemoteProtocolError

from dledger_mq.wire.frames import DEFAULT_MAX_FRAME_BYTES
from dledger_mq.wire.socket_io import SocketReader, peer_has_closed, write_now

READ_BYTES = 1 << 16
#: A peer that has not finished the HTTP upgrade by then is dropped.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
#: RFC 6455 close codes used here.
NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
GOING_AWAY = 1001
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013


class WebSocketClosed(Exception):
    """The connection is closed (by either side, or broken); ``code`` says how (RFC 6455)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class WebSocketHandshakeError(Exception):
    """The other side did not complete a WebSocket upgrade."""


class WebSocket:
    """One open connection. Build it with :func:`connect_websocket` or :func:`serve_websockets`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: WSConnection,
        max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.stream = stream
        self.max_message_bytes = max_message_bytes
        self._protocol = protocol
        # The socket itself, for reads and writes that skip the scheduler, when the stream is
        # a plain TCP one; any other stream (TLS, in-memory) goes through its own methods.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._messages: deque[bytes] = deque()
        self._partial: list[bytes] = []
        self._partial_bytes = 0
        self._closed: WebSocketClosed | None = None
        #: Held while a write did not go out whole; other senders queue behind it.
        self._send_lock = trio.StrictFIFOLock()
        self._reading = False
        self._reader = SocketReader(self._socket) if self._socket is not None else None
        #: When the other side last finished a message or answered a ping (Trio's clock): a
        #: peer that trickles a byte now and then is still silent by this measure.
        self.last_heard = trio.current_time()
        self.peer_host = peer_host(stream)
        #: Bytes that came with the upgrade's last read may already hold frames (a server
        #: that accepts and at once closes, say): they are taken before the socket is read.
        self._events_pending = True

    def peer_closed(self) -> bool:
        """The other side closed or reset the connection, as the kernel knows it now (a
        request written now would reach nobody), without reading anything."""
        sock = _socket_of(self.stream)
        try:
            return sock is not None and peer_has_closed(sock)
        except (OSError, ValueError):
            return True  # closed here already

    @property
    def closed(self) -> WebSocketClosed | None:
        """Why the connection closed, once it has."""
        return self._closed

    async def get_message(self) -> bytes:
        """The next binary message; raises ``WebSocketClosed`` once the connection is closed."""
        if self._reading:
            raise trio.BusyResourceError("another task is reading this WebSocket")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._reading = True
        try:
            while not self._messages:
                if self._closed is not None:
                    raise self._closed_error()
                await self._receive_events()
            return self._messages.popleft()
        finally:
            self._reading = False

    async def send_message(self, payload: bytes) -> None:
        """Send ``payload`` as one binary message."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed is not None:
            raise self._closed_error()
        await self._send(self._protocol.send(BytesMessage(data=payload)))

    async def ping(self) -> None:
        """Ask the other side to show it is there; its pong counts as heard (``last_heard``).
        Answered only while it reads: an idle client that does not read stays silent."""
        await self._send_quietly(Ping(payload=b"dledger-mq"))

    async def aclose(self, code: int = NORMAL_CLOSURE, reason: str | None = None) -> None:
        """Send a close frame (if still open) and close the socket; never raises."""
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason)
            with trio.move_on_after(1):
                await self._send_quietly(CloseConnection(code=code, reason=reason))
        await trio.aclose_forcefully(self.stream)

    # -- reading ------------------------------------------------------------------------------

    async def _receive_events(self) -> None:
        if self._events_pending:
            self._events_pending = False
            for event in self._protocol.events():
                await self._on_event(event)
            if self._messages or self._closed is not None:
                return
        data = await self._receive_some()
        if not data:
            self._lost("the connection was closed without a close frame")
            return
        self._protocol.receive_data(data)
        for event in self._protocol.events():
            await self._on_event(event)

    async def _receive_some(self) -> bytes:
        try:
            if self._reader is None:
                return bytes(await self.stream.receive_some(READ_BYTES))
            return await self._reader.receive_some(READ_BYTES)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._lost(str(error) or "closed locally")
            return b""

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, BytesMessage):
            self._partial_bytes += len(event.data)
            if self._partial_bytes > self.max_message_bytes:
                await self._refuse(
                    MESSAGE_TOO_BIG,
                    f"a message of more than {self.max_message_bytes} bytes",
                )
                return
            self._partial.append(bytes(event.data))
            if event.message_finished:
                self.last_heard = trio.current_time()
                self._messages.append(b"".join(self._partial))
                self._partial = []
                self._partial_bytes = 0
        elif isinstance(event, TextMessage):
            await self._refuse(UNSUPPORTED_DATA, "text messages are not part of the protocol")
        elif isinstance(event, Ping):
            await self._send_quietly(event.response())
        elif isinstance(event, Pong):
            self.last_heard = trio.current_time()
        elif isinstance(event, CloseConnection) and self._closed is None:
            self._closed = WebSocketClosed(event.code, event.reason)
            await self._send_quietly(event.response())
            await trio.aclose_forcefully(self.stream)

    async def _refuse(self, code: int, reason: str) -> None:
        self._partial = []
        self._partial_bytes = 0
        await self.aclose(code, reason)

    def _closed_error(self) -> WebSocketClosed:
        # A new exception each time: one instance raised again and again would pile up
        # tracebacks for as long as a caller keeps trying.
        assert self._closed is not None
        return WebSocketClosed(self._closed.code, self._closed.reason)

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = WebSocketClosed(ABNORMAL_CLOSURE, reason)

    # -- writing ------------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if self._socket is not None and not self._send_lock.locked():
            # Nobody is writing: try the socket at once, which spares a pass through the
            # scheduler; only what does not fit waits for the socket to drain.
            try:
                sent = write_now(self._socket, data)
            except OSError as error:
                self._lost(str(error))
                raise self._closed_error() from None
            if sent == len(data):
                return
            data = data[sent:]
            # Taken without a checkpoint: the rest of this message must go before any other.
            self._send_lock.acquire_nowait()
        else:
            await self._send_lock.acquire()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self._lost(str(error) or "closed")
            raise self._closed_error() from None
        except trio.Cancelled:
            # Part of a message may be on the wire: nothing more can follow it.
            self._lost("a send was cancelled part way")
            raise
        finally:
            self._send_lock.release()

    async def _send_quietly(self, event: Event) -> None:
        with contextlib.suppress(WebSocketClosed, ProtocolError, h11.ProtocolError):
            await self._send(self._protocol.send(event))


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under ``stream`` (through TLS), or None (a test's memory stream)."""
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if not isinstance(inner, trio.abc.Stream):
            return None
        stream = inner
    return stream.socket


def peer_host(stream: trio.abc.Stream) -> str:
    """The other side's IP address ("" for a stream that is not a socket's, as in tests;
    "?" if the socket no longer knows)."""
    sock = _socket_of(stream)
    if sock is None:
        return ""
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "?"  # reset before we asked: not loopback, so let in as nothing


class ConnectionLimits:
    """At most ``max_connections`` open on a listener, ``max_per_address`` of them from one IP
    address; one over is upgraded and closed at once with 1013 (try again later) and why."""

    def __init__(self, max_connections: int, max_per_address: int) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.open = 0
        self.per_address: dict[str, int] = {}

    def refusal(self, host: str) -> str | None:
        if self.open >= self.max_connections:
            return f"the listener holds {self.max_connections} connections"
        if self.per_address.get(host, 0) >= self.max_per_address:
            return f"{self.max_per_address} connections from {host} are open"
        return None

    @contextlib.contextmanager
    def held(self, host: str) -> Iterator[None]:
        self.open += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        try:
            yield
        finally:
            self.open -= 1
            self.per_address[host] -= 1
            if not self.per_address[host]:
                del self.per_address[host]


# -- opening -------------------------------------------------------------------------------------


async def connect_websocket(
    host: str,
    port: int,
    *,
    path: str = "/",
    max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocket:
    """Open a TCP connection (TLS over it with ``ssl_context``, verifying that the server's
    certificate names ``host``) and upgrade it; raises ``OSError`` or
    ``WebSocketHandshakeError``."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
    return await upgrade_client(stream, f"{host}:{port}", path, max_message_bytes)


async def upgrade_client(
    stream: trio.abc.Stream,
    host: str,
    path: str = "/",
    max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> WebSocket:
    """The client side of the upgrade on an open stream (``host`` goes in the Host header);
    raises ``WebSocketHandshakeError`` and closes the stream if it fails."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
            protocol = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(protocol.send(Request(host=host, target=path)))
            while True:
                data = await stream.receive_some(READ_BYTES)
                if not data:
                    raise WebSocketHandshakeError(f"{host} closed during the handshake")
                protocol.receive_data(bytes(data))
                for event in protocol.events():
                    if isinstance(event, AcceptConnection):
                        return WebSocket(stream, protocol, max_message_bytes)
                    if isinstance(event, RejectConnection):
                        raise WebSocketHandshakeError(
                            f"{host} refused the WebSocket upgrade (HTTP {event.status_code})"
                        )
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise WebSocketHandshakeError(f"{host} did not finish the handshake") from None
    except ProtocolError as error:
        await trio.aclose_forcefully(stream)
        raise WebSocketHandshakeError(f"{host}: {error}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        # A node that stops (or crashes) while we shake hands resets the connection: a
        # failed connect like any other, never an error of the caller's.
        await trio.aclose_forcefully(stream)
        cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
        raise WebSocketHandshakeError(f"{host} closed during the handshake: {cause}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def accept_websocket(
    stream: trio.abc.Stream, max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> WebSocket | None:
    """Complete the server side of the upgrade; ``None`` (and the stream closed) if the peer
    did not ask for a WebSocket properly."""
    protocol = WSConnection(ConnectionType.SERVER)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
            while True:
                data = await stream.receive_some(READ_BYTES)
                if not data:
                    break
                protocol.receive_data(bytes(data))
                for event in protocol.events():
                    if isinstance(event, Request):
                        await stream.send_all(protocol.send(AcceptConnection()))
                        return WebSocket(stream, protocol, max_message_bytes)
    except RemoteProtocolError as error:
        hint = error.event_hint
        if hint is not None:
            try:
                with trio.move_on_after(1):
                    await stream.send_all(protocol.send(hint))
            except (trio.BrokenResourceError, ProtocolError, h11.ProtocolError, OSError):
                pass
    except (trio.TooSlowError, trio.BrokenResourceError, OSError, ssl.SSLError):
        pass
    await trio.aclose_forcefully(stream)
    return None


WebSocketHandler = Callable[[WebSocket], Awaitable[None]]


async def serve_websockets(
    handler: WebSocketHandler,
    host: str,
    port: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    handler_nursery: trio.Nursery | None = None,
    limits: ConnectionLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections on ``host:port`` and run ``handler`` for each, until
    cancelled; ``task_status.started`` gets the port (the one chosen, if ``port`` is 0).

    Connections run in ``handler_nursery`` when given, so that they outlive the listener (a
    graceful stop stops accepting first); else they stop with it."""

    async def serve_one(tcp: trio.SocketStream) -> None:
        host = peer_host(tcp)
        # The TLS handshake runs in the upgrade's first read, under its timeout.
        stream: trio.abc.Stream = (
            tcp if ssl_context is None else trio.SSLStream(tcp, ssl_context, server_side=True)
        )
        refusal = limits.refusal(host) if limits is not None else None
        with limits.held(host) if limits is not None else contextlib.nullcontext():
            websocket = await accept_websocket(stream, max_message_bytes)
            if websocket is None:
                return
            try:
                if refusal is not None:
                    await websocket.aclose(TRY_AGAIN_LATER, f"too many connections: {refusal}")
                    return
                await handler(websocket)
            finally:
                await websocket.aclose()

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(trio.serve_listeners, handler_nursery=handler_nursery),
            serve_one,
            listeners,
        )
        task_status.started(bound_port)
