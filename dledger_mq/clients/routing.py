"""How clients find and reach the leader of a topic's group: naming, routes, connections."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from types import TracebackType

import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import BadRequest, DledgerError, NotLeader, Unavailable
from dledger_mq.wire.admin import NODE_CODEC
from dledger_mq.wire.rpc import RpcConnection, connect

#: A cached route is asked for again after this long, leader change or not.
ROUTE_REFRESH_SECONDS = 30.0
BACKOFF_MIN_SECONDS = 0.01
#: A failover takes a few hundred milliseconds: retrying at least every 100 ms finds the new
#: leader soon after it is elected, at the cost of a few cheap requests.
BACKOFF_MAX_SECONDS = 0.1
#: A node that does not answer a request (or a naming query) within this long is treated as
#: gone: a paused process or a half-open connection must not hold a client for ever. A send
#: retried after this is still stored once (idempotent producers).
SILENCE_SECONDS = 1.0


def naming_addresses(naming: str | Sequence[str]) -> list[str]:
    """``naming`` as one address, a comma-separated string, or a list."""
    items = naming.split(",") if isinstance(naming, str) else list(naming)
    addresses = [item.strip() for item in items if item.strip()]
    if not addresses:
        raise BadRequest("at least one naming address is needed")
    return addresses


class Connections:
    """One long-lived connection per node address, each held open by a task of ``nursery``.

    Once open, a connection stays until dropped or closed, even while the code around the
    client is being cancelled: the client's last words (a consumer's final offset commit) still
    go out on it. Such a task is shielded from that cancellation, so ``close`` must reach every
    one of them — also one whose ``get`` was given up on, or that lost a race to another.
    """

    def __init__(self, nursery: trio.Nursery, cluster_id: str, name: str) -> None:
        self.nursery = nursery
        self.cluster_id = cluster_id
        self.name = name
        self._open: dict[str, tuple[RpcConnection, trio.CancelScope]] = {}
        self._held: set[trio.CancelScope] = set()
        self._closed = False

    async def get(self, address: str) -> RpcConnection:
        if self._closed:
            raise Unavailable("the client is closed")
        if address not in self._open:
            held = await self.nursery.start(self._hold, address)
            if address in self._open:
                held[1].cancel()  # another caller connected meanwhile: keep one
            else:
                self._open[address] = held
        return self._open[address][0]

    def drop(self, address: str) -> None:
        held = self._open.pop(address, None)
        if held is not None:
            held[1].cancel()

    def close(self) -> None:
        self._closed = True
        self._open.clear()
        for scope in list(self._held):
            scope.cancel()

    async def _hold(
        self,
        address: str,
        *,
        task_status: trio.TaskStatus[tuple[RpcConnection, trio.CancelScope]],
    ) -> None:
        async with connect(address, NODE_CODEC, self.cluster_id, self.name) as connection:
            with trio.CancelScope(shield=not self._closed) as scope:
                self._held.add(scope)
                try:
                    task_status.started((connection, scope))
                    await trio.sleep_forever()
                finally:
                    self._held.discard(scope)


class Routes:
    """Which node leads the group that holds a topic, as naming last said."""

    def __init__(self, naming: list[str], cluster_id: str, rng: random.Random) -> None:
        self.naming = naming
        self.cluster_id = cluster_id
        self.rng = rng
        self._leader: dict[str, tuple[str, float]] = {}

    async def leader_of(self, topic: str) -> str:
        cached = self._leader.get(topic)
        if cached is not None and time.monotonic() - cached[1] < ROUTE_REFRESH_SECONDS:
            return cached[0]
        backoff = BACKOFF_MIN_SECONDS
        while True:
            address = await self._ask_naming(topic)
            if address is not None:
                self.follow(topic, address)
                return address
            await trio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def follow(self, topic: str, address: str) -> None:
        self._leader[topic] = (address, time.monotonic())

    def forget(self, topic: str) -> None:
        self._leader.pop(topic, None)

    async def _ask_naming(self, topic: str) -> str | None:
        """The leader address of ``topic``'s group, from whichever naming node answers first.

        All are asked at once: asking them in turn would make a paused or partitioned naming
        node cost a silence timeout before the next one is tried.
        """
        found: list[str] = []
        async with trio.open_nursery() as nursery:
            for address in self.naming:
                nursery.start_soon(self._ask_one, address, topic, found, nursery.cancel_scope)
        return found[0] if found else None

    async def _ask_one(
        self, address: str, topic: str, found: list[str], done: trio.CancelScope
    ) -> None:
        with trio.move_on_after(SILENCE_SECONDS):
            try:
                async with connect_naming(address, self.cluster_id, "producer") as naming:
                    routes, groups = await naming.routes_and_groups(topic)
            except DledgerError:
                return
            leaders = [route.leader_address for route in routes if route.leader_address]
            if not routes:
                # A new topic: any group with a leader can create it on the first send.
                leaders = [group.leader_address for group in groups if group.leader_address]
            if leaders:
                found.append(leaders[0])
                done.cancel()


async def call_leader(
    routes: Routes,
    connections: Connections,
    topic: str,
    request: object,
    rng: random.Random,
    silence_seconds: float = SILENCE_SECONDS,
) -> object:
    """Send ``request`` to the leader of ``topic``'s group until it answers.

    A ``NotLeader`` answer's leader address is followed at once; a broken connection, a node
    silent for ``silence_seconds`` or an unknown leader makes the route be asked for again,
    after a jittered backoff. Other errors are the caller's.
    """
    backoff = BACKOFF_MIN_SECONDS
    while True:
        address = await routes.leader_of(topic)
        try:
            with trio.move_on_after(silence_seconds):
                connection = await connections.get(address)
                return await connection.request(request)
            raise Unavailable(f"{address} did not answer within {silence_seconds} s")
        except NotLeader as error:
            hint = getattr(error, "leader_address", None)
            if hint and hint != address:
                routes.follow(topic, hint)
                continue  # the leader is known: go there at once
            routes.forget(topic)
        except Unavailable:
            connections.drop(address)
            routes.forget(topic)
        await trio.sleep(backoff * (0.5 + rng.random()))
        backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)


class RoutedClient:
    """What producers and consumers share: routes through naming, connections held by a
    nursery for the client's lifetime (``async with``), and calls that follow the leader."""

    def __init__(self, naming: str | Sequence[str], cluster_id: str, name: str) -> None:
        self.rng = random.Random()
        self.routes = Routes(naming_addresses(naming), cluster_id, self.rng)
        self.cluster_id = cluster_id
        self.name = name
        self._nursery_manager = trio.open_nursery()
        self._connections: Connections | None = None

    @property
    def nursery(self) -> trio.Nursery:
        if self._connections is None:
            raise BadRequest(f"use the {type(self).__name__.lower()} inside `async with`")
        return self._connections.nursery

    async def _open(self) -> None:
        nursery = await self._nursery_manager.__aenter__()
        self._connections = Connections(nursery, self.cluster_id, self.name)

    async def _close(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._connections is not None
        self._connections.close()
        self.nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(kind, value, traceback)

    async def call_leader(
        self, topic: str, request: object, silence_seconds: float = SILENCE_SECONDS
    ) -> object:
        """``request`` answered by the leader of ``topic``'s group (see ``call_leader``)."""
        if self._connections is None:
            raise BadRequest(f"use the {type(self).__name__.lower()} inside `async with`")
        return await call_leader(
            self.routes, self._connections, topic, request, self.rng, silence_seconds
        )
