"""A TCP proxy on every directed peer link, so the harness can break the network without root.

Each replica opens one outgoing connection to each peer and only sends on it (the peer answers
the handshake and nothing else), so the directed link ``(src, dst)`` is the connection ``src``
opens to ``dst`` and carries ``src``'s Raft messages to ``dst``. :class:`ProxyNetwork` binds one
listener per ordered pair on 127.0.0.1; the harness configures ``src`` to dial
``address(src, dst)`` for peer ``dst``, and every connection accepted there is relayed to
``dst``'s real peer address. Links are directed, as in the simulator (``jepsen.sim``): cutting
``(a, b)`` loses ``a``'s messages to ``b`` and leaves ``(b, a)`` alone, even though the bytes of
``a``'s handshake reply travel from ``b`` to ``a`` on the cut connection. (A packet-level one-way
drop would break TCP both ways, and teach us nothing the message-level fault does not.)

Peer streams carry length-prefixed frames, so the proxy never drops bytes from the middle of a
connection it keeps open: a connection either forwards everything in order, perhaps late, or is
closed as a whole. The faults, per directed link:

- **Partition** (:meth:`ProxyNetwork.partition`, :meth:`~ProxyNetwork.isolate`,
  :meth:`~ProxyNetwork.split`): the link is cut. Its open connections are closed at once, both
  sockets, abortively (``SO_LINGER`` 0, so a TCP reset rather than a FIN), and whatever the proxy
  still held for them is discarded, as a broken TCP connection loses its unacknowledged data.
  The sending node only writes, so it notices on its next write (the reset makes it fail), logs
  ``peer_disconnected`` and reconnects with its backoff; the receiving node's read fails and it
  drops the connection. While the link stays cut, new connections are accepted and reset at
  once, without dialling ``dst``: the node's TCP connect succeeds, then its handshake fails, and
  it backs off (20 ms doubling to 1 s). We reset rather than hold them: a real partition would
  leave the handshake hanging until the node's 5 s handshake timeout, which would make the
  recovery time after a heal measure that timeout instead of Raft. Either way nothing gets
  through. After :meth:`~ProxyNetwork.heal` the node's next attempt (within about 1.5 s) goes
  through normally.
- **Delay** (:meth:`ProxyNetwork.set_delay`): each chunk read from ``src`` is delivered to
  ``dst`` no earlier than ``mean ± jitter`` (uniform) after it was read, and never ahead of an
  earlier chunk of the same connection (a chunk whose draw is shorter than its predecessor's
  waits for it), as TCP delivers in order. A per-connection channel holds the chunks with their
  delivery times; it is bounded, so a link that falls behind pushes back on the sender like a
  full TCP window.
- **Loss** (:meth:`ProxyNetwork.set_loss`): TCP never loses bytes from an open connection; a
  lost segment is retransmitted after a timeout, and everything behind it waits (head-of-line
  blocking). So each chunk is, with the given probability, held an extra ``retransmit_s`` before
  delivery, and the chunks behind it wait for it.

Delay and loss apply to chunks read after they are set, on open and new connections alike;
chunks already queued keep the delivery time they were given. :meth:`~ProxyNetwork.heal` lifts
every fault at once. The return direction (``dst`` to ``src``: only handshake replies) is copied
as it comes. When either node ends its side of a connection the proxy ends the whole connection:
a FIN from ``src`` is passed on after every queued chunk has been delivered; a FIN from ``dst``
(it closes only when it is done with the connection) closes both sides at once. Any socket error
on either side resets both.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import partial

import attrs
import structlog
import trio

from dledger_mq.wire.address import Address

logger = structlog.get_logger()

Link = tuple[str, str]
#: A node's real peer address: ``"host:port"``, ``(host, port)`` or an :class:`Address`.
UpstreamAddress = str | tuple[str, int] | Address

READ_BYTES = 1 << 16
#: Chunks a connection may hold for delayed delivery before it stops reading from the sender.
QUEUE_CHUNKS = 1024
CONNECT_TIMEOUT_SECONDS = 5.0
LISTEN_HOST = "127.0.0.1"

#: A chunk read from the sender and the earliest time (Trio's clock) to deliver it.
_Chunk = tuple[float, bytes | bytearray]
_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@attrs.define
class LinkStats:
    """What one directed link has carried since the proxy was built."""

    #: Connections ``src`` opened on the link.
    accepted: int = 0
    #: Of those, how many were reset at once because the link was cut.
    refused: int = 0
    #: Open connections a partition closed.
    cut: int = 0
    #: Connections relayed right now.
    open: int = 0
    #: Bytes delivered to ``dst`` (``src``'s messages).
    bytes_forwarded: int = 0
    #: Bytes delivered back to ``src`` (handshake replies).
    bytes_returned: int = 0
    #: Chunks the loss model held back for a retransmission timeout.
    chunks_held: int = 0


@attrs.frozen
class LinkFaults:
    """The delay and loss currently applied to one directed link."""

    delay_mean_s: float = 0.0
    delay_jitter_s: float = 0.0
    loss_probability: float = 0.0
    retransmit_s: float = 0.2


@attrs.define(eq=False)
class _Connection:
    """One relayed connection; a partition cancels its scope and marks it cut."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    cut: bool = False


class ProxyNetwork:
    def __init__(
        self,
        upstreams: Mapping[str, UpstreamAddress],
        rng: random.Random,
        groups: Iterable[Iterable[str]] | None = None,
        ports: Mapping[Link, int] | None = None,
        inbound: Mapping[str, int] | None = None,
        identify: Callable[[int], str | None] | None = None,
    ) -> None:
        """``groups``: nodes that talk only among themselves (broker groups): links only
        within each (default: one group of every node). ``ports``: the port to listen on for
        a link (default: any free one), e.g. chosen with the nodes' own ports so that no
        listener takes a port a node is about to bind.

        ``inbound``: node -> a port where ANY peer may dial it (a node added to a group while
        it runs is dialled at the one peer address its membership entry gives, not at a
        per-link address); ``identify`` names the node that owns a connection's source port,
        and the connection is then the directed link (that node, dst), with its faults. A
        connection whose source cannot be named is reset at once (the node retries)."""
        if len(upstreams) < 2:
            raise ValueError("a proxy network needs at least two nodes")
        self._upstreams: dict[str, Address] = {
            node: _parse_address(address) for node, address in upstreams.items()
        }
        self._rng = rng
        together = [sorted(self._upstreams)] if groups is None else [sorted(g) for g in groups]
        for group in together:
            for node in group:
                self._check_node(node)
        self._links: list[Link] = sorted(
            {(src, dst) for group in together for src in group for dst in group if src != dst}
        )
        self.stats: dict[Link, LinkStats] = {link: LinkStats() for link in self._links}
        self._faults: dict[Link, LinkFaults] = {link: LinkFaults() for link in self._links}
        self._blocked: set[Link] = set()
        self._open: dict[Link, set[_Connection]] = {link: set() for link in self._links}
        self._ports: dict[Link, int] = {}
        self._wanted_ports = dict(ports or {})
        self._wanted_inbound = dict(inbound or {})
        for node in self._wanted_inbound:
            self._check_node(node)
        self._identify = identify
        self._inbound: dict[str, int] = {}
        #: Connections to an inbound listener whose source could not be named.
        self.unidentified = 0
        self._running = False

    # -- lifetime ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every link until cancelled; every connection is closed on the way out."""
        if self._running:
            raise RuntimeError("this ProxyNetwork is already running")
        self._running = True
        try:
            listeners: dict[Link, list[trio.SocketListener]] = {}
            try:
                for link in self._links:
                    listeners[link] = await trio.open_tcp_listeners(
                        self._wanted_ports.get(link, 0), host=LISTEN_HOST
                    )
            except BaseException:
                for opened in listeners.values():
                    for listener in opened:
                        await trio.aclose_forcefully(listener)
                raise
            inbound: dict[str, list[trio.SocketListener]] = {}
            try:
                for node, port in self._wanted_inbound.items():
                    inbound[node] = await trio.open_tcp_listeners(port, host=LISTEN_HOST)
            except BaseException:
                for opened in [*listeners.values(), *inbound.values()]:
                    for listener in opened:
                        await trio.aclose_forcefully(listener)
                raise
            for link, opened in listeners.items():
                self._ports[link] = opened[0].socket.getsockname()[1]
            for node, opened in inbound.items():
                self._inbound[node] = opened[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for link, opened in listeners.items():
                    nursery.start_soon(trio.serve_listeners, partial(self._serve, link), opened)
                for node, opened in inbound.items():
                    nursery.start_soon(
                        trio.serve_listeners, partial(self._serve_inbound, node), opened
                    )
                task_status.started()
        finally:
            self._ports.clear()
            self._inbound.clear()
            self._running = False

    def address(self, src: str, dst: str) -> str:
        """The ``host:port`` node ``src`` dials to reach ``dst``; valid while :meth:`run` runs."""
        link = self._check_link((src, dst))
        if link not in self._ports:
            raise RuntimeError("the proxy is not listening: start run() first")
        return f"{LISTEN_HOST}:{self._ports[link]}"

    def inbound_address(self, dst: str) -> str:
        """The ``host:port`` any peer dials to reach ``dst`` (see ``inbound``)."""
        self._check_node(dst)
        if dst not in self._inbound:
            raise RuntimeError(f"no inbound listener for {dst!r} (or the proxy is not running)")
        return f"{LISTEN_HOST}:{self._inbound[dst]}"

    def links(self) -> list[Link]:
        """Every directed link, in a stable order."""
        return list(self._links)

    @property
    def blocked(self) -> frozenset[Link]:
        """The links cut right now."""
        return frozenset(self._blocked)

    def faults(self, src: str, dst: str) -> LinkFaults:
        """The delay and loss applied to the link ``(src, dst)`` right now."""
        return self._faults[self._check_link((src, dst))]

    # -- faults --------------------------------------------------------------------------------

    def partition(self, blocked: Iterable[Link]) -> None:
        """Cut these directed links, on top of whatever is cut already."""
        links = [self._check_link(link) for link in blocked]
        cut_now = 0
        for link in links:
            self._blocked.add(link)
            for connection in self._open[link]:
                if not connection.cut:
                    connection.cut = True
                    connection.scope.cancel()
                    cut_now += 1
        if links:
            logger.info("proxy_partition", links=sorted(set(links)), connections_cut=cut_now)

    def isolate(self, node: str) -> None:
        """Cut every link to and from ``node``."""
        self._check_node(node)
        self.partition(link for link in self._links if node in link)

    def split(self, *sides: Iterable[str]) -> None:
        """Cut every link between two nodes placed on different sides.

        A node may be placed on several sides: two nodes keep their links when some side holds
        them both, so ``split({a, b, c}, {c, d, e})`` leaves ``c`` as a bridge. Nodes on no side
        keep all their links.
        """
        groups = [frozenset(side) for side in sides]
        for group in groups:
            for node in group:
                self._check_node(node)
        placed = frozenset().union(*groups)
        self.partition(
            (src, dst)
            for src, dst in self._links
            if src in placed
            and dst in placed
            and not any(src in group and dst in group for group in groups)
        )

    def set_delay(self, links: Iterable[Link] | None, mean_s: float, jitter_s: float) -> None:
        """Deliver each chunk on these links (None: all) ``mean_s ± jitter_s`` late, in order."""
        if not 0 <= jitter_s <= mean_s:
            raise ValueError(f"need 0 <= jitter <= mean, got mean {mean_s} jitter {jitter_s}")
        for link in self._select(links):
            self._faults[link] = attrs.evolve(
                self._faults[link], delay_mean_s=mean_s, delay_jitter_s=jitter_s
            )

    def set_loss(
        self, links: Iterable[Link] | None, probability: float, retransmit_s: float = 0.2
    ) -> None:
        """With ``probability``, hold each chunk on these links (None: all) ``retransmit_s``."""
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if retransmit_s < 0:
            raise ValueError(f"retransmit_s must not be negative, got {retransmit_s}")
        for link in self._select(links):
            self._faults[link] = attrs.evolve(
                self._faults[link], loss_probability=probability, retransmit_s=retransmit_s
            )

    def heal(self) -> None:
        """Undo every partition, delay and loss; new connections on every link go through."""
        healed = sorted(self._blocked)
        self._blocked.clear()
        self._faults = {link: LinkFaults() for link in self._links}
        logger.info("proxy_heal", links=healed)

    # -- relaying ------------------------------------------------------------------------------

    async def _serve_inbound(self, dst: str, downstream: trio.SocketStream) -> None:
        src: str | None = None
        try:
            port = downstream.socket.getpeername()[1]
            src = self._identify(port) if self._identify is not None else None
        except OSError:
            pass
        if src is None or (src, dst) not in self.stats:
            self.unidentified += 1
            logger.info("proxy_inbound_unidentified", node=dst, source=src)
            await _close([downstream], reset=True)
            return
        await self._serve((src, dst), downstream)

    async def _serve(self, link: Link, downstream: trio.SocketStream) -> None:
        stats = self.stats[link]
        stats.accepted += 1
        if link in self._blocked:
            stats.refused += 1
            await _close([downstream], reset=True)
            return
        connection = _Connection()
        self._open[link].add(connection)
        stats.open += 1
        streams: list[trio.SocketStream] = [downstream]
        clean = False
        try:
            with connection.scope:
                upstream_address = self._upstreams[link[1]]
                with trio.move_on_after(CONNECT_TIMEOUT_SECONDS), contextlib.suppress(OSError):
                    streams.append(
                        await trio.open_tcp_stream(upstream_address.host, upstream_address.port)
                    )
                if len(streams) == 2:
                    clean = await self._relay(link, downstream, streams[1])
        finally:
            self._open[link].discard(connection)
            stats.open -= 1
            if connection.cut:
                stats.cut += 1
            await _close(streams, reset=connection.cut or not clean)

    async def _relay(
        self, link: Link, downstream: trio.SocketStream, upstream: trio.SocketStream
    ) -> bool:
        """Relay both directions until one ends; True when it ended with a clean EOF."""
        stats = self.stats[link]
        clean = False

        def forwarded(count: int) -> None:
            stats.bytes_forwarded += count

        def returned(count: int) -> None:
            stats.bytes_returned += count

        async def forward() -> None:
            nonlocal clean
            clean = await forward_in_order(
                downstream, upstream, partial(self._deliver_at, link), on_delivered=forwarded
            )
            nursery.cancel_scope.cancel()

        async def back() -> None:
            nonlocal clean
            clean = await _copy(upstream, downstream, on_delivered=returned)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            nursery.start_soon(back)
        return clean

    def _deliver_at(self, link: Link) -> float:
        faults = self._faults[link]
        delay = 0.0
        if faults.delay_mean_s:
            delay = self._rng.uniform(
                faults.delay_mean_s - faults.delay_jitter_s,
                faults.delay_mean_s + faults.delay_jitter_s,
            )
        if faults.loss_probability and self._rng.random() < faults.loss_probability:
            delay += faults.retransmit_s
            self.stats[link].chunks_held += 1
        return trio.current_time() + delay

    # -- checks --------------------------------------------------------------------------------

    def _check_node(self, node: str) -> None:
        if node not in self._upstreams:
            raise ValueError(f"unknown node {node!r}; nodes are {sorted(self._upstreams)}")

    def _check_link(self, link: Link) -> Link:
        src, dst = link
        self._check_node(src)
        self._check_node(dst)
        if src == dst:
            raise ValueError(f"no link from {src!r} to itself")
        if (src, dst) not in self.stats:
            raise ValueError(f"no link from {src!r} to {dst!r}: they are in different groups")
        return (src, dst)

    def _select(self, links: Iterable[Link] | None) -> list[Link]:
        if links is None:
            return list(self._links)
        return [self._check_link(link) for link in links]


async def forward_in_order(
    source: trio.abc.ReceiveStream,
    sink: trio.abc.SendStream,
    deliver_at: Callable[[], float],
    *,
    on_delivered: Callable[[int], None] | None = None,
    queue_chunks: int = QUEUE_CHUNKS,
) -> bool:
    """Copy ``source`` to ``sink`` until EOF, each chunk at ``deliver_at()`` or later, in order.

    ``deliver_at`` is called as each chunk is read and gives the earliest time (on Trio's clock)
    to send it; a chunk is never sent before the chunks read ahead of it. Returns True when the
    source ended and every chunk was sent, False when either stream broke (what was still
    queued is dropped).
    """
    send_channel, receive_channel = trio.open_memory_channel[_Chunk](queue_chunks)
    broken = False

    async def read() -> None:
        nonlocal broken
        async with send_channel:
            try:
                while data := await source.receive_some(READ_BYTES):
                    await send_channel.send((deliver_at(), data))
            except _STREAM_ERRORS:
                broken = True
                nursery.cancel_scope.cancel()

    async def deliver() -> None:
        nonlocal broken
        async with receive_channel:
            try:
                async for due, data in receive_channel:
                    if due > trio.current_time():
                        await trio.sleep_until(due)
                    await sink.send_all(data)
                    if on_delivered is not None:
                        on_delivered(len(data))
            except _STREAM_ERRORS:
                broken = True
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(deliver)
    return not broken


async def _copy(
    source: trio.abc.ReceiveStream,
    sink: trio.abc.SendStream,
    *,
    on_delivered: Callable[[int], None],
) -> bool:
    """Copy ``source`` to ``sink`` as it comes; True on a clean EOF, False if a stream broke."""
    try:
        while data := await source.receive_some(READ_BYTES):
            await sink.send_all(data)
            on_delivered(len(data))
    except _STREAM_ERRORS:
        return False
    return True


async def _close(streams: Iterable[trio.SocketStream], *, reset: bool) -> None:
    """Close every stream, even when cancelled; ``reset`` sends a TCP reset instead of a FIN."""
    streams = list(streams)
    if reset:
        for stream in streams:
            with contextlib.suppress(OSError):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    with trio.CancelScope(shield=True):
        for stream in streams:
            await trio.aclose_forcefully(stream)


def _parse_address(address: UpstreamAddress) -> Address:
    if isinstance(address, Address):
        return address
    if isinstance(address, str):
        return Address.parse(address)
    host, port = address
    return Address(host, int(port))
