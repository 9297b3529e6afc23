"""``dledger-mq bench transport``: raw Trio TCP, trio-websocket and our WebSocket driver.

All three carry the same payload (a ``Heartbeat`` encoded by the peer codec) between two
processes over loopback: an echo server in a child process and a client here. Per transport:

- round trip: one request, wait for its echo, repeat;
- one way: one write (one WebSocket message) per frame, as fast as the link takes them.

Raw TCP and our driver run once more over TLS (a throw-away CA and certificate, as
`cluster up --tls` makes), for what TLS costs each link (docs/benchmarks.md).

The figures decided the peer link (raw TCP) and the client link's driver
(``wire/websocket.py`` rather than trio-websocket); docs/benchmarks.md records them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket, serve_websocket

from dledger_mq.bench.raft_bench import percentile
from dledger_mq.node.local_cluster import free_ports
from dledger_mq.raft.pure.messages import Heartbeat
from dledger_mq.raft.runtime.transport import PEER_CODEC
from dledger_mq.wire.frames import FrameDecoder, encode_frame
from dledger_mq.wire.websocket import (
    WebSocket,
    WebSocketClosed,
    connect_websocket,
    serve_websockets,
)

PAYLOAD = PEER_CODEC.encode(Heartbeat(term=7, source="n1", target="n2", commit=12345), 0, "g")
STOP = b"stop"


@attrs.frozen
class TransportResult:
    transport: str
    round_trips_per_second: float
    round_trip_p50_us: float
    one_way_frames_per_second: float


# -- the echo server (child process) -------------------------------------------------------------


async def _tcp_server(
    port: int, ready: trio.Event, ssl_context: ssl.SSLContext | None = None
) -> None:
    async def handle(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True)
        decoder = FrameDecoder()
        received = 0
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                decoder.receive_data(data)
                for frame in decoder.next_frames():
                    if frame == STOP:
                        await stream.send_all(encode_frame(str(received).encode()))
                        received = 0
                    elif frame[:1] == b"e":
                        await stream.send_all(encode_frame(frame[1:]))
                    else:
                        received += 1
        except trio.BrokenResourceError:
            return

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    ready.set()
    await trio.serve_listeners(handle, listeners)


class _Messages(Protocol):
    async def send_message(self, message: bytes) -> None: ...

    async def get_message(self) -> bytes | str: ...


async def _echo_messages(connection: _Messages) -> None:
    """``e``+payload is echoed; ``stop`` is answered with the count of one-way messages."""
    received = 0
    while True:
        message = await connection.get_message()
        assert isinstance(message, bytes)
        if message == STOP:
            await connection.send_message(str(received).encode())
            received = 0
        elif message[:1] == b"e":
            await connection.send_message(message[1:])
        else:
            received += 1


async def _websocket_server(port: int) -> None:
    async def handle(request: WebSocketRequest) -> None:
        connection = await request.accept()
        with contextlib.suppress(ConnectionClosed):
            await _echo_messages(connection)

    await serve_websocket(handle, "127.0.0.1", port, None)


async def _our_websocket_server(port: int, ssl_context: ssl.SSLContext | None = None) -> None:
    async def handle(connection: WebSocket) -> None:
        with contextlib.suppress(WebSocketClosed):
            await _echo_messages(connection)

    await serve_websockets(handle, "127.0.0.1", port, ssl_context=ssl_context)


def _serve(ports: list[int], certificate: tuple[str, str]) -> None:
    from dledger_mq.node.certificates import server_ssl_context

    tcp_port, websocket_port, our_websocket_port, tls_tcp_port, tls_websocket_port = ports
    server = server_ssl_context(*certificate)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tcp_server, tcp_port, trio.Event())
            nursery.start_soon(_websocket_server, websocket_port)
            nursery.start_soon(_our_websocket_server, our_websocket_port)
            nursery.start_soon(_tcp_server, tls_tcp_port, trio.Event(), server)
            nursery.start_soon(_our_websocket_server, tls_websocket_port, server)

    trio.run(main)


# -- the client ----------------------------------------------------------------------------------


async def _tcp_case(
    port: int, seconds: float, ssl_context: ssl.SSLContext | None = None
) -> TransportResult:
    stream: trio.abc.Stream = await _connect_tcp(port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1")
    decoder = FrameDecoder()

    async def receive_frame() -> bytes:
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                return frame
            decoder.receive_data(await stream.receive_some(1 << 16))

    latencies = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        await stream.send_all(encode_frame(b"e" + PAYLOAD))
        await receive_frame()
        latencies.append((time.perf_counter() - start) * 1e6)
    round_trip_seconds = time.perf_counter() - began
    sent = 0
    began = time.perf_counter()
    frame = encode_frame(b"o" + PAYLOAD)
    while time.perf_counter() - began < seconds:
        for _ in range(100):
            await stream.send_all(frame)
        sent += 100
    await stream.send_all(encode_frame(STOP))
    received = int(await receive_frame())
    one_way_seconds = time.perf_counter() - began
    await stream.aclose()
    assert received == sent, (received, sent)
    return TransportResult(
        "raw Trio TCP" if ssl_context is None else "TCP + TLS",
        len(latencies) / round_trip_seconds,
        percentile(sorted(latencies), 0.5),
        sent / one_way_seconds,
    )


async def _connect_tcp(port: int) -> trio.SocketStream:
    with trio.fail_after(10):
        while True:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)


async def _wait_listening(port: int) -> None:
    await (await _connect_tcp(port)).aclose()


async def _messages_case(name: str, connection: _Messages, seconds: float) -> TransportResult:
    latencies = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        await connection.send_message(b"e" + PAYLOAD)
        await connection.get_message()
        latencies.append((time.perf_counter() - start) * 1e6)
    round_trip_seconds = time.perf_counter() - began
    sent = 0
    began = time.perf_counter()
    message = b"o" + PAYLOAD
    while time.perf_counter() - began < seconds:
        for _ in range(100):
            await connection.send_message(message)
        sent += 100
    await connection.send_message(STOP)
    received = int(await connection.get_message())
    one_way_seconds = time.perf_counter() - began
    assert received == sent, (received, sent)
    return TransportResult(
        name,
        len(latencies) / round_trip_seconds,
        percentile(sorted(latencies), 0.5),
        sent / one_way_seconds,
    )


async def _websocket_case(port: int, seconds: float) -> TransportResult:
    await _wait_listening(port)
    async with open_websocket("127.0.0.1", port, "/", use_ssl=False) as connection:
        return await _messages_case("trio-websocket", connection, seconds)


async def _our_websocket_case(
    port: int, seconds: float, ssl_context: ssl.SSLContext | None = None
) -> TransportResult:
    await _wait_listening(port)
    connection = await connect_websocket("127.0.0.1", port, ssl_context=ssl_context)
    name = "wire/websocket" if ssl_context is None else "wss (ours)"
    try:
        return await _messages_case(name, connection, seconds)
    finally:
        await connection.aclose()


def run(seconds: float, echo: Callable[[str], None]) -> str:
    from dledger_mq.node.certificates import (
        CA_FILE_NAME,
        CERT_FILE_NAME,
        KEY_FILE_NAME,
        make_local_ca,
        make_node_certificate,
    )
    from dledger_mq.wire.tls import client_ssl_context

    ports = free_ports(5)
    tcp_port, websocket_port, our_websocket_port, tls_tcp_port, tls_websocket_port = ports
    with tempfile.TemporaryDirectory() as directory:
        tls_directory = Path(directory)
        make_local_ca(tls_directory)
        make_node_certificate(tls_directory, tls_directory, "bench", ["127.0.0.1"])
        certificate = (str(tls_directory / CERT_FILE_NAME), str(tls_directory / KEY_FILE_NAME))
        client = client_ssl_context(str(tls_directory / CA_FILE_NAME))
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(ports, certificate), daemon=True
        )
        server.start()
        try:
            echo(f"echo server pid {server.pid}; {seconds:.1f} s per case")
            tcp = trio.run(_tcp_case, tcp_port, seconds)
            echo("  raw TCP done")
            websocket = trio.run(_websocket_case, websocket_port, seconds)
            echo("  trio-websocket done")
            ours = trio.run(_our_websocket_case, our_websocket_port, seconds)
            echo("  wire/websocket done")
            tls_tcp = trio.run(_tcp_case, tls_tcp_port, seconds, client)
            echo("  TCP + TLS done")
            tls_ours = trio.run(_our_websocket_case, tls_websocket_port, seconds, client)
            echo("  wss done")
        finally:
            server.kill()
            server.join()
    lines = [
        f"{'transport':<16} {'round trips/s':>14} {'p50 round trip':>15} {'one-way frames/s':>17}"
    ]
    for result in (tcp, websocket, ours, tls_tcp, tls_ours):
        lines.append(
            f"{result.transport:<16} {result.round_trips_per_second:>14,.0f} "
            f"{result.round_trip_p50_us:>12,.0f} us {result.one_way_frames_per_second:>17,.0f}"
        )
    for name, other in (("TCP / trio-ws", websocket), ("ours / trio-ws", ours)):
        top = tcp if other is websocket else ours
        lines.append(
            f"{name:<16} {top.round_trips_per_second / websocket.round_trips_per_second:>14.2f} "
            f"{websocket.round_trip_p50_us / top.round_trip_p50_us:>15.2f} "
            f"{top.one_way_frames_per_second / websocket.one_way_frames_per_second:>17.2f}"
        )
    for name, secure, plain in (
        ("TCP TLS / plain", tls_tcp, tcp),
        ("wss / ws (ours)", tls_ours, ours),
    ):
        lines.append(
            f"{name:<16} {secure.round_trips_per_second / plain.round_trips_per_second:>14.2f} "
            f"{plain.round_trip_p50_us / secure.round_trip_p50_us:>15.2f} "
            f"{secure.one_way_frames_per_second / plain.one_way_frames_per_second:>17.2f}"
        )
    return "\n".join(lines)
