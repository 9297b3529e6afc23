"""The fault-injection proxy: relays in order, cuts whole connections, delays without reordering.

The "nodes" are tiny echo servers on 127.0.0.1; the tests dial the proxy as a node would. Tests
with real sockets use the real clock under a ``trio.fail_after`` deadline and synchronise on
events, never on sleeps; a delay is checked only from below (it may always take longer). The
ordering logic alone is also checked under a mock clock, with memory streams.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from jepsen.proxy import ProxyNetwork, forward_in_order

DEADLINE_SECONDS = 10.0
PING = b"ping"


class Received:
    """What a node received on one incoming connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.first_at: float | None = None
        #: The connection ended with an error (a reset) rather than a clean EOF.
        self.broken = False
        self.closed = trio.Event()
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, size: int) -> None:
        while len(self.data) < size:
            assert not self.closed.is_set(), f"closed after {len(self.data)} of {size} bytes"
            await self._changed.wait()


class Node:
    """An echo server that records every connection it accepts."""

    def __init__(self) -> None:
        self.connections: list[Received] = []
        self.port = 0
        self._accepted = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        received = Received()
        self.connections.append(received)
        self._accepted.set()
        self._accepted = trio.Event()
        try:
            while data := await stream.receive_some(1 << 16):
                if received.first_at is None:
                    received.first_at = trio.current_time()
                received.data += data
                received.notify()
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            received.broken = True
        finally:
            received.closed.set()
            received.notify()

    async def connection(self, index: int) -> Received:
        while len(self.connections) <= index:
            await self._accepted.wait()
        return self.connections[index]


async def start_nodes(nursery: trio.Nursery, names: str) -> dict[str, Node]:
    nodes = {name: Node() for name in names}
    for node in nodes.values():
        listeners = await nursery.start(partial(trio.serve_tcp, node.handle, 0, host="127.0.0.1"))
        node.port = listeners[0].socket.getsockname()[1]
    return nodes


def proxy_for(nodes: dict[str, Node]) -> ProxyNetwork:
    upstreams = {name: f"127.0.0.1:{node.port}" for name, node in nodes.items()}
    return ProxyNetwork(upstreams, random.Random(7))


@asynccontextmanager
async def network(
    names: str = "abc",
) -> AsyncIterator[tuple[ProxyNetwork, dict[str, Node]]]:
    """Start one echo node per name and a proxy in front of them, all under a deadline."""
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            nodes = await start_nodes(nursery, names)
            proxy = proxy_for(nodes)
            await nursery.start(proxy.run)
            yield proxy, nodes
            nursery.cancel_scope.cancel()


async def connect(proxy: ProxyNetwork, src: str, dst: str) -> trio.SocketStream:
    host, port = proxy.address(src, dst).rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def wait_closed(stream: trio.SocketStream) -> None:
    """Read until the proxy's end of the connection is gone (EOF or reset)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


async def ping(stream: trio.SocketStream) -> None:
    await stream.send_all(PING)
    assert await read_exactly(stream, len(PING)) == PING


async def link_works(proxy: ProxyNetwork, src: str, dst: str) -> bool:
    """Open a new connection on the link: True when a ping comes back, False when it is cut."""
    stream = await connect(proxy, src, dst)
    async with stream:
        try:
            await stream.send_all(PING)
            data = b""
            while len(data) < len(PING):
                chunk = await stream.receive_some()
                if not chunk:
                    return False
                data += chunk
        except trio.BrokenResourceError:
            return False
        assert data == PING
        return True


async def test_bytes_pass_through_in_order_both_ways() -> None:
    async with network() as (proxy, nodes):
        stream = await connect(proxy, "a", "b")
        messages = [f"message {i};".encode() for i in range(100)]
        for message in messages:
            await stream.send_all(message)
        expected = b"".join(messages)
        assert await read_exactly(stream, len(expected)) == expected
        received = await nodes["b"].connection(0)
        assert received.data == expected
        assert [len(node.connections) for node in (nodes["a"], nodes["c"])] == [0, 0]
        await stream.aclose()
        await received.closed.wait()
        assert not received.broken  # the client's FIN was passed on as a FIN
        stats = proxy.stats[("a", "b")]
        assert (stats.accepted, stats.refused, stats.cut, stats.open) == (1, 0, 0, 0)
        assert stats.bytes_forwarded == stats.bytes_returned == len(expected)


async def test_a_large_transfer_arrives_intact() -> None:
    payload = random.Random(3).randbytes(4 * 1024 * 1024)
    async with network() as (proxy, nodes):
        stream = await connect(proxy, "c", "a")
        echoed = bytearray()

        async def receive() -> None:
            echoed.extend(await read_exactly(stream, len(payload)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for offset in range(0, len(payload), 100_000):
                await stream.send_all(payload[offset : offset + 100_000])
        assert echoed == payload
        received = await nodes["a"].connection(0)
        assert received.data == payload
        await stream.aclose()
        await received.closed.wait()
        stats = proxy.stats[("c", "a")]
        assert stats.bytes_forwarded == stats.bytes_returned == len(payload)


async def test_a_partition_resets_open_connections_and_refuses_new_ones() -> None:
    async with network() as (proxy, nodes):
        a_to_b = await connect(proxy, "a", "b")
        b_to_a = await connect(proxy, "b", "a")
        await ping(a_to_b)
        await ping(b_to_a)
        at_b = await nodes["b"].connection(0)

        proxy.partition([("a", "b")])

        assert proxy.blocked == {("a", "b")}
        # Like the node, which only writes: its writes fail soon, and b saw a reset.
        with pytest.raises(trio.BrokenResourceError):
            while True:
                await a_to_b.send_all(PING)
        await at_b.closed.wait()
        assert at_b.broken
        assert at_b.data == PING
        # New connections on the cut link are reset without ever reaching b.
        assert not await link_works(proxy, "a", "b")
        assert len(nodes["b"].connections) == 1
        stats = proxy.stats[("a", "b")]
        assert (stats.accepted, stats.refused, stats.cut, stats.open) == (2, 1, 1, 0)
        # The reverse link is untouched, its open connection and new ones alike.
        await ping(b_to_a)
        assert await link_works(proxy, "b", "a")
        assert proxy.stats[("b", "a")].cut == 0


async def test_a_one_way_partition_leaves_the_reverse_link_working() -> None:
    async with network() as (proxy, _nodes):
        proxy.partition([("b", "a")])
        assert not await link_works(proxy, "b", "a")
        assert await link_works(proxy, "a", "b")
        assert await link_works(proxy, "b", "c")
        # Partitions add up.
        proxy.partition([("c", "a")])
        assert proxy.blocked == {("b", "a"), ("c", "a")}
        assert not await link_works(proxy, "b", "a")
        assert not await link_works(proxy, "c", "a")


async def test_isolate_cuts_every_link_of_the_node_and_only_those() -> None:
    async with network() as (proxy, _nodes):
        open_streams = {link: await connect(proxy, *link) for link in proxy.links()}
        for stream in open_streams.values():
            await ping(stream)

        proxy.isolate("a")

        for link, stream in open_streams.items():
            if "a" in link:
                await wait_closed(stream)
            else:
                await ping(stream)
            assert await link_works(proxy, *link) == ("a" not in link)
        await trio.aclose_forcefully(open_streams[("b", "c")])


def test_split_cuts_the_links_between_sides() -> None:
    proxy = ProxyNetwork({name: ("127.0.0.1", 1) for name in "abcde"}, random.Random(1))
    proxy.split({"a", "b"}, ["c", "d", "e"])
    assert proxy.blocked == {
        link
        for pair in ({"a", "b"}, {"c", "d", "e"})
        for link in proxy.links()
        if (link[0] in pair) != (link[1] in pair)
    }
    proxy.heal()
    assert proxy.blocked == set()
    # A node on both sides is a bridge; a node on no side keeps every link.
    proxy.split("ab", "bc", "d")
    assert proxy.blocked == {
        ("a", "c"), ("c", "a"), ("a", "d"), ("d", "a"),
        ("b", "d"), ("d", "b"), ("c", "d"), ("d", "c"),
    }  # fmt: skip
    proxy.heal()
    proxy.isolate("e")
    assert proxy.blocked == {link for link in proxy.links() if "e" in link}


async def test_split_cuts_real_connections_across_sides() -> None:
    async with network("abcd") as (proxy, _nodes):
        proxy.split(["a", "b"], ["c", "d"])
        for src, dst in proxy.links():
            across = ({src, dst} & {"a", "b"}) and ({src, dst} & {"c", "d"})
            assert await link_works(proxy, src, dst) == (not across)


async def test_heal_lets_new_connections_through() -> None:
    async with network() as (proxy, nodes):
        stream = await connect(proxy, "a", "c")
        await ping(stream)
        proxy.split(["a"], ["b", "c"])
        await wait_closed(stream)
        assert not await link_works(proxy, "a", "c")
        assert not await link_works(proxy, "c", "a")

        proxy.heal()

        assert proxy.blocked == set()
        assert await link_works(proxy, "a", "c")
        assert await link_works(proxy, "c", "a")
        assert len(nodes["c"].connections) == 2


async def test_delay_delivers_in_order_and_not_early() -> None:
    mean, jitter = 0.1, 0.05
    async with network() as (proxy, nodes):
        proxy.set_delay([("a", "b")], mean, jitter)
        assert proxy.faults("a", "b").delay_mean_s == mean
        assert proxy.faults("b", "a").delay_mean_s == 0
        stream = await connect(proxy, "a", "b")
        sent_at = trio.current_time()
        messages = [f"<{i}>".encode() for i in range(30)]
        for message in messages:
            await stream.send_all(message)
            await trio.lowlevel.checkpoint()
        expected = b"".join(messages)
        assert await read_exactly(stream, len(expected)) == expected
        received = await nodes["b"].connection(0)
        assert received.data == expected
        assert received.first_at is not None
        assert received.first_at >= sent_at + mean - jitter


async def test_delay_on_every_link() -> None:
    async with network() as (proxy, nodes):
        proxy.set_delay(None, 0.1, 0.0)
        assert all(proxy.faults(*link).delay_mean_s == 0.1 for link in proxy.links())
        stream = await connect(proxy, "c", "b")
        sent_at = trio.current_time()
        await ping(stream)
        received = await nodes["b"].connection(0)
        assert received.first_at is not None
        assert received.first_at >= sent_at + 0.1


async def test_loss_holds_data_for_a_retransmission_timeout() -> None:
    retransmit = 0.15
    async with network() as (proxy, nodes):
        proxy.set_loss([("b", "c")], 1.0, retransmit_s=retransmit)
        stream = await connect(proxy, "b", "c")
        sent_at = trio.current_time()
        await ping(stream)
        received = await nodes["c"].connection(0)
        assert received.first_at is not None
        assert received.first_at >= sent_at + retransmit
        assert proxy.stats[("b", "c")].chunks_held >= 1
        proxy.heal()
        assert proxy.faults("b", "c").loss_probability == 0


async def test_a_node_that_is_down_is_a_reset_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = ProxyNetwork({"a": "127.0.0.1:9", "b": ("127.0.0.1", closed_port)}, random.Random(2))
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            assert not await link_works(proxy, "a", "b")
            assert proxy.stats[("a", "b")].accepted == 1
            nursery.cancel_scope.cancel()


async def test_cancelling_run_closes_listeners_and_connections() -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            nodes = await start_nodes(nursery, "ab")
            proxy = proxy_for(nodes)
            proxy_scope = trio.CancelScope()
            stopped = trio.Event()

            async def run_proxy(*, task_status: trio.TaskStatus[None]) -> None:
                with proxy_scope:
                    await proxy.run(task_status=task_status)
                stopped.set()

            await nursery.start(run_proxy)
            streams = [await connect(proxy, *link) for link in proxy.links()]
            for stream in streams:
                await ping(stream)
            received = [await nodes["a"].connection(0), await nodes["b"].connection(0)]
            addresses = [proxy.address(*link) for link in proxy.links()]

            proxy_scope.cancel()
            await stopped.wait()

            for stream in streams:
                await wait_closed(stream)
            for connection in received:
                await connection.closed.wait()
            assert [proxy.stats[link].open for link in proxy.links()] == [0, 0]
            with pytest.raises(RuntimeError):
                proxy.address("a", "b")
            for address in addresses:
                host, port = address.rsplit(":", 1)
                with pytest.raises(OSError):
                    await trio.open_tcp_stream(host, int(port))
            nursery.cancel_scope.cancel()


async def test_forward_in_order_never_reorders(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(5)
    source_in, source = trio.testing.memory_stream_one_way_pair()
    sink, sink_out = trio.testing.memory_stream_one_way_pair()
    dues: list[float] = []

    def deliver_at() -> float:
        dues.append(trio.current_time() + rng.uniform(0.0, 1.0))
        return dues[-1]

    messages = [f"{i:04d}".encode() for i in range(50)]
    arrivals: list[float] = []
    outcome: list[bool] = []

    async def write() -> None:
        for message in messages:
            await source_in.send_all(message)
            await trio.sleep(0.01)
        await source_in.aclose()

    async def forward() -> None:
        outcome.append(await forward_in_order(source, sink, deliver_at))
        await sink.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        nursery.start_soon(forward)
        data = bytearray()
        while chunk := await sink_out.receive_some():
            data += chunk
            arrivals += [trio.current_time()] * len(chunk)

    assert outcome == [True]
    assert data == b"".join(messages)
    assert len(dues) == len(messages)  # one chunk a message
    assert any(later < earlier for earlier, later in zip(dues, dues[1:], strict=False))
    for i in range(len(messages)):
        assert arrivals[4 * i] >= max(dues[: i + 1])


async def test_forward_in_order_reports_a_broken_sink(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source_in, source = trio.testing.memory_stream_one_way_pair()
    sink, sink_out = trio.testing.memory_stream_one_way_pair()
    await sink_out.aclose()
    await source_in.send_all(b"lost")
    with trio.fail_after(1):
        assert not await forward_in_order(source, sink, trio.current_time)


def test_bad_arguments_are_refused() -> None:
    proxy = ProxyNetwork({"a": "127.0.0.1:1", "b": "127.0.0.1:2"}, random.Random(1))
    assert proxy.links() == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError):
        proxy.partition([("a", "a")])
    with pytest.raises(ValueError):
        proxy.isolate("z")
    with pytest.raises(ValueError):
        proxy.set_delay(None, 0.1, 0.2)
    with pytest.raises(ValueError):
        proxy.set_loss([("a", "b")], 1.5)
    with pytest.raises(RuntimeError):
        proxy.address("a", "b")
    with pytest.raises(ValueError):
        ProxyNetwork({"a": "127.0.0.1:1", "b": "nowhere"}, random.Random(1))
    with pytest.raises(ValueError):
        ProxyNetwork({"a": "127.0.0.1:1"}, random.Random(1))
