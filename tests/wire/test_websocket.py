"""Our WebSocket driver: whole messages of any size, closes with their codes, bad peers
refused, and the same protocol as trio-websocket in both directions."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket

from dledger_mq.wire import websocket as websocket_module
from dledger_mq.wire.websocket import (
    ABNORMAL_CLOSURE,
    MESSAGE_TOO_BIG,
    NORMAL_CLOSURE,
    UNSUPPORTED_DATA,
    WebSocket,
    WebSocketClosed,
    WebSocketHandshakeError,
    accept_websocket,
    connect_websocket,
    serve_websockets,
    upgrade_client,
)

DEADLINE_SECONDS = 10


async def echo(websocket: WebSocket) -> None:
    """Sends every message back; ends quietly when the client closes."""
    try:
        while True:
            await websocket.send_message(await websocket.get_message())
    except WebSocketClosed:
        pass


@asynccontextmanager
async def server(
    handler: Callable[[WebSocket], Awaitable[None]] = echo, max_message_bytes: int = 64 << 20
) -> AsyncIterator[int]:
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_websockets(
                    handler,
                    "127.0.0.1",
                    0,
                    max_message_bytes=max_message_bytes,
                    task_status=task_status,
                )
            )
            yield port
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, (1 << 20) + 1, 4 << 20])
async def test_a_message_of_any_size_comes_back_whole(size: int) -> None:
    # 1 MiB + 1 is above trio-websocket's default limit; 4 MiB is the broker's body limit.
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with server() as port:
        websocket = await connect_websocket("127.0.0.1", port)
        await websocket.send_message(payload)
        assert await websocket.get_message() == payload
        await websocket.aclose()


async def test_many_senders_at_once_each_message_arrives_whole() -> None:
    # Messages far bigger than a socket buffer, so writes stop part way and must not interleave.
    payloads = [bytes([number]) * (3 << 20) for number in range(8)]
    received: list[bytes] = []
    async with server() as port:
        websocket = await connect_websocket("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            for payload in payloads:
                nursery.start_soon(websocket.send_message, payload)
            for _ in payloads:
                received.append(await websocket.get_message())
        await websocket.aclose()
    assert sorted(received) == payloads


async def test_a_message_over_the_limit_closes_the_connection_with_1009() -> None:
    closed: list[WebSocketClosed] = []

    async def record(websocket: WebSocket) -> None:
        try:
            await websocket.get_message()
        except WebSocketClosed as error:
            closed.append(error)

    async with server(record, max_message_bytes=1000) as port:
        websocket = await connect_websocket("127.0.0.1", port)
        await websocket.send_message(b"x" * 1001)
        with pytest.raises(WebSocketClosed) as raised:
            await websocket.get_message()
    assert raised.value.code == MESSAGE_TOO_BIG
    assert [error.code for error in closed] == [MESSAGE_TOO_BIG]


async def test_a_close_reaches_the_other_side_with_its_code_and_a_hang_up_as_1006() -> None:
    send_code, receive_code = trio.open_memory_channel[int](2)

    async def record(websocket: WebSocket) -> None:
        try:
            await websocket.get_message()
        except WebSocketClosed as error:
            await send_code.send(error.code)

    async with server(record) as port:
        websocket = await connect_websocket("127.0.0.1", port)
        await websocket.aclose()
        assert await receive_code.receive() == NORMAL_CLOSURE
        with pytest.raises(WebSocketClosed):
            await websocket.get_message()
        with pytest.raises(WebSocketClosed):
            await websocket.send_message(b"after the close")
        # A client that only drops its TCP connection.
        websocket = await connect_websocket("127.0.0.1", port)
        await websocket.stream.aclose()
        assert await receive_code.receive() == ABNORMAL_CLOSURE


async def test_two_readers_at_once_is_a_usage_error() -> None:
    async with server() as port:
        websocket = await connect_websocket("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.get_message)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await websocket.get_message()
            nursery.cancel_scope.cancel()
        await websocket.aclose()


async def test_a_text_message_is_refused_with_1003() -> None:
    async with (
        server() as port,
        trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as client,
    ):
        await client.send_message("text")
        with pytest.raises(trio_websocket.ConnectionClosed) as raised:
            await client.get_message()
    assert raised.value.reason.code == UNSUPPORTED_DATA


async def test_plain_http_and_garbage_are_refused_and_the_server_keeps_serving() -> None:
    async with server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 400")
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x00\x01 not http at all\r\n\r\n")
        while await stream.receive_some(1000):
            pass  # the server closes it (after a 400, if it managed one)
        await stream.aclose()
        websocket = await connect_websocket("127.0.0.1", port)
        await websocket.send_message(b"still serving")
        assert await websocket.get_message() == b"still serving"
        await websocket.aclose()


async def test_a_peer_that_never_finishes_the_upgrade_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket_module, "HANDSHAKE_TIMEOUT_SECONDS", 0.05)
    async with server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert await stream.receive_some(1000) == b""
        await stream.aclose()


async def test_connecting_to_something_that_is_not_a_websocket_server_fails_clearly() -> None:
    async def http_refusal(stream: trio.SocketStream) -> None:
        await stream.receive_some(1000)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, http_refusal, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            with pytest.raises(WebSocketHandshakeError, match="404"):
                await connect_websocket("127.0.0.1", port)
            nursery.cancel_scope.cancel()


# -- the same protocol as trio-websocket ---------------------------------------------------------


async def test_trio_websocket_client_against_our_server_including_a_ping() -> None:
    async with (
        server() as port,
        trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as client,
    ):
        await client.send_message(b"hello")
        assert await client.get_message() == b"hello"
        with trio.fail_after(DEADLINE_SECONDS):
            await client.ping(b"are you there")  # returns once our side has answered
        await client.send_message(b"x" * (300 << 10))
        assert await client.get_message() == b"x" * (300 << 10)


async def test_our_client_against_a_trio_websocket_server() -> None:
    async def trio_websocket_echo(request: trio_websocket.WebSocketRequest) -> None:
        connection = await request.accept()
        try:
            while True:
                await connection.send_message(await connection.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            served = await nursery.start(
                trio_websocket.serve_websocket, trio_websocket_echo, "127.0.0.1", 0, None
            )
            websocket = await connect_websocket("127.0.0.1", served.port)
            for payload in (b"one", b"two" * 50_000):
                await websocket.send_message(payload)
                assert await websocket.get_message() == payload
            await websocket.aclose()
            nursery.cancel_scope.cancel()


async def test_any_trio_stream_works_not_only_tcp() -> None:
    # The path a TLS stream would take: no socket to read or write directly.
    client_stream, server_stream = trio.testing.memory_stream_pair()
    big = b"z" * (200 << 10)  # many reads and writes of the memory stream's chunks
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            server_side: list[WebSocket] = []

            async def accept() -> None:
                websocket = await accept_websocket(server_stream)
                assert websocket is not None
                server_side.append(websocket)
                await echo(websocket)

            nursery.start_soon(accept)
            client = await upgrade_client(client_stream, "memory")
            for payload in (b"hello", big):
                await client.send_message(payload)
                assert await client.get_message() == payload
            await client.aclose()
    assert server_side[0].closed is not None
    assert server_side[0].closed.code == NORMAL_CLOSURE


async def test_a_connection_reset_during_the_handshake_is_a_failed_connect() -> None:
    """A node that dies while a client shakes hands resets the connection: the client gets
    the connect error it handles (``Unavailable`` through rpc), never a Trio stream error.
    This once took down a node whose naming registration met a starting node that crashed."""
    import socket
    import struct

    from dledger_mq.errors import Unavailable
    from dledger_mq.wire.admin import ADMIN_CODEC
    from dledger_mq.wire.rpc import connect

    async def reset_after_the_request(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # the HTTP upgrade request
        # SO_LINGER 0: close with a RST instead of a FIN.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, reset_after_the_request, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(WebSocketHandshakeError, match="closed during the handshake"):
                await connect_websocket("127.0.0.1", port)
            with pytest.raises(Unavailable, match="closed during the handshake"):
                async with connect(f"127.0.0.1:{port}", ADMIN_CODEC, "local", "test"):
                    pass
            nursery.cancel_scope.cancel()


async def test_a_close_sent_with_the_upgrade_is_read_before_the_socket() -> None:
    """A listener over its connection cap accepts and closes at once (1013): the close can
    arrive in the same read as the upgrade's answer, and must be seen as 1013, not lost as a
    hang-up (1006), so that the client tells ``TooManyConnections``."""
    from dledger_mq.errors import TooManyConnections
    from dledger_mq.wire.admin import ADMIN_CODEC
    from dledger_mq.wire.rpc import connect
    from dledger_mq.wire.websocket import ConnectionLimits

    async def never(websocket: WebSocket) -> None:
        raise AssertionError("a refused connection reached the handler")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(serve_websockets, limits=ConnectionLimits(10, 0)),
                never,
                "127.0.0.1",
                0,
            )
            for _ in range(20):
                with pytest.raises(TooManyConnections, match="0 connections from 127.0.0.1"):
                    async with connect(f"127.0.0.1:{port}", ADMIN_CODEC, "local", "c"):
                        pass
            nursery.cancel_scope.cancel()
