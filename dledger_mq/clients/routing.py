"""How clients find and reach the leader of a topic's group: naming, routes, connections."""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Sequence
from types import TracebackType

import attrs
import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError, Unavailable, UsageError
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import NODE_CODEC
from dledger_mq.wire.client_auth import Credentials, as_credentials
from dledger_mq.wire.naming import GroupRoute, TopicRoute
from dledger_mq.wire.rpc import ReplyT, RpcConnection, connect
from dledger_mq.wire.tls import TlsOption, client_ssl_context

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
        raise UsageError("at least one naming address is needed")
    for address in addresses:
        try:
            Address.parse(address)
        except ValueError as error:
            raise UsageError(f"naming address: {error}") from None
    return addresses


class Connections:
    """One long-lived connection per node address, each held open by a task of ``nursery``.

    Once open, a connection stays until dropped or closed, even while the code around the
    client is being cancelled: the client's last words (a consumer's final offset commit) still
    go out on it. Such a task is shielded from that cancellation, so ``close`` must reach every
    one of them — also one whose ``get`` was given up on, or that lost a race to another.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        cluster_id: str,
        name: str,
        credentials: Credentials | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credentials = credentials
        self.ssl_context = ssl_context
        self.nursery = nursery
        self.cluster_id = cluster_id
        self.name = name
        self._open: dict[str, tuple[RpcConnection, trio.CancelScope]] = {}
        self._held: set[trio.CancelScope] = set()
        #: Addresses being connected to, and the event their connecting sets when done.
        self._connecting: dict[str, trio.Event] = {}
        self._closed = False

    async def get(self, address: str) -> RpcConnection:
        """The connection to ``address``, opened by the first caller that needs it while the
        others wait for it (a thousand sends at once must not open a thousand connections)."""
        while True:
            if self._closed:
                raise Unavailable("the client is closed")
            if address in self._open:
                return self._open[address][0]
            connecting = self._connecting.get(address)
            if connecting is not None:
                await connecting.wait()  # then use it, or try in turn if it failed
                continue
            connecting = self._connecting[address] = trio.Event()
            try:
                self._open[address] = await self.nursery.start(self._hold, address)
            finally:
                del self._connecting[address]
                connecting.set()

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
        async with connect(
            address, NODE_CODEC, self.cluster_id, self.name, self.credentials, self.ssl_context
        ) as connection:
            with trio.CancelScope(shield=not self._closed) as scope:
                self._held.add(scope)
                try:
                    task_status.started((connection, scope))
                    await trio.sleep_forever()
                finally:
                    self._held.discard(scope)


@attrs.define
class Stall:
    """What a client has been waiting for, since when, and why: a call that cannot complete
    yet (no route, no leader, a node that does not answer). For a CLI or an application to
    show; the client itself keeps retrying."""

    what: str
    reason: str
    since: float

    def describe(self) -> str:
        return f"waiting for {self.what}: {self.reason}"


class Stalls:
    """The client's current stall, if any: set by a failed attempt, cleared by a success."""

    def __init__(self) -> None:
        self.current: Stall | None = None

    def note(self, what: str, reason: str) -> None:
        since = self.current.since if self.current is not None else time.monotonic()
        self.current = Stall(what, reason, since)

    def clear(self) -> None:
        self.current = None


@attrs.frozen
class Route:
    """Where to send what concerns a topic, as naming said."""

    leader_address: str
    #: The group's idempotence window (see ``Producer``).
    idempotence_window: int


class Routes:
    """Which node leads the group that holds a topic, as naming last said."""

    def __init__(
        self,
        naming: list[str],
        cluster_id: str,
        rng: random.Random,
        stalls: Stalls | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.naming = naming
        self.cluster_id = cluster_id
        self.rng = rng
        self.stalls = stalls or Stalls()
        self._routes: dict[str, tuple[Route, float]] = {}
        #: Topics whose route is being asked for, and the event set when the asking ends.
        self._asking: dict[str, trio.Event] = {}

    async def route(self, topic: str) -> Route:
        """The topic's route, from the cache or else from naming (asked until it answers).

        One caller asks naming for a topic at a time, the others wait for its answer: many
        sends that lose their route at once (a failover) must not each ask every naming node.
        """
        while True:
            cached = self._routes.get(topic)
            if cached is not None and time.monotonic() - cached[1] < ROUTE_REFRESH_SECONDS:
                return cached[0]
            asking = self._asking.get(topic)
            if asking is not None:
                await asking.wait()
                continue
            asking = self._asking[topic] = trio.Event()
            try:
                return await self._ask_until_answered(topic)
            finally:
                del self._asking[topic]
                asking.set()

    async def _ask_until_answered(self, topic: str) -> Route:
        backoff = BACKOFF_MIN_SECONDS
        while True:
            route, problems = await self._ask_naming(topic)
            if route is not None:
                self._routes[topic] = (route, time.monotonic())
                return route
            self.stalls.note(f"a route to topic {topic!r}", "; ".join(problems))
            await trio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    async def leader_of(self, topic: str) -> str:
        return (await self.route(topic)).leader_address

    def follow(self, topic: str, address: str) -> None:
        """Send to ``address`` from now on (a ``NotLeader`` hint); the group stays the same."""
        cached = self._routes.get(topic)
        if cached is not None:
            self._routes[topic] = (attrs.evolve(cached[0], leader_address=address), cached[1])

    def forget(self, topic: str) -> None:
        self._routes.pop(topic, None)

    async def _ask_naming(self, topic: str) -> tuple[Route | None, list[str]]:
        """The route of ``topic``, from whichever naming node answers first with a leader, or
        None and what each naming node said instead.

        All are asked at once: asking them in turn would make a paused or partitioned naming
        node cost a silence timeout before the next one is tried.
        """
        found: list[Route] = []
        problems: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            for address in self.naming:
                nursery.start_soon(
                    self._ask_one, address, topic, found, problems, nursery.cancel_scope
                )
        if found:
            return found[0], []
        return None, [f"{address}: {problems.get(address, '?')}" for address in self.naming]

    async def _ask_one(
        self,
        address: str,
        topic: str,
        found: list[Route],
        problems: dict[str, str],
        done: trio.CancelScope,
    ) -> None:
        problems[address] = f"no answer within {SILENCE_SECONDS:g} s"
        with trio.move_on_after(SILENCE_SECONDS):
            try:
                async with connect_naming(
                    address, self.cluster_id, "producer", ssl_context=self.ssl_context
                ) as naming:
                    routes, groups = await naming.routes_and_groups(topic)
            except DledgerError as error:
                problems[address] = str(error).removeprefix(f"cannot reach {address}: ")
                return
            candidates: Sequence[TopicRoute | GroupRoute] = routes
            if not routes:
                # A new topic: any group with a leader can create it on the first send.
                candidates = groups
            with_leader = [c for c in candidates if c.leader_address]
            if with_leader:
                chosen = with_leader[0]
                assert chosen.leader_address is not None
                found.append(Route(chosen.leader_address, chosen.idempotence_window))
                done.cancel()
            elif candidates:
                problems[address] = f"group {candidates[0].group} has no leader right now"
            else:
                problems[address] = "no broker group is registered"


async def call_leader(
    routes: Routes,
    connections: Connections,
    topic: str,
    request: object,
    reply_type: type[ReplyT],
    rng: random.Random,
    silence_seconds: float = SILENCE_SECONDS,
) -> ReplyT:
    """Send ``request`` to the leader of ``topic``'s group until it answers.

    A retriable error is retried after a jittered backoff, others are the caller's. One that
    says to refresh routes (``NotLeader``, ``Unavailable``) follows its leader address at once
    when it has one, else asks naming again; a broken connection or a node silent for
    ``silence_seconds`` is dropped, and the next try opens another.
    """
    backoff = BACKOFF_MIN_SECONDS
    stalls = routes.stalls
    what = f"the leader of topic {topic!r}"
    while True:
        address = await routes.leader_of(topic)
        connection: RpcConnection | None = None
        try:
            with trio.move_on_after(silence_seconds):
                connection = await connections.get(address)
                reply = await connection.call(request, reply_type)
                stalls.clear()
                return reply
            # Silent: a paused node or a half-open connection; the next try opens another.
            connection = None
            raise Unavailable(f"{address} did not answer within {silence_seconds:g} s")
        except DledgerError as error:
            # What to do is the error's to say (its flags), not a list of types here.
            if not error.retriable:
                raise
            if connection is None or connection.closed:
                connections.drop(address)
            hint = error.leader_address
            if error.refresh_routes and hint and hint != address:
                routes.follow(topic, hint)
                continue  # the leader is known: go there at once
            stalls.note(what, str(error) if address in str(error) else f"{address}: {error}")
            if error.refresh_routes:
                routes.forget(topic)
        await trio.sleep(backoff * (0.5 + rng.random()))
        backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)


class RoutedClient:
    """What producers and consumers share: routes through naming, connections held by a
    nursery for the client's lifetime (``async with``), and calls that follow the leader."""

    def __init__(
        self,
        naming: str | Sequence[str],
        cluster_id: str,
        name: str,
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        """``credentials``: (access key, secret key) to sign in with; by default
        ``DLEDGER_MQ_ACCESS_KEY`` and ``DLEDGER_MQ_SECRET_KEY`` if set, else none (a cluster
        without users lets anonymous clients in from its own machines). ``tls``: the CA file
        (or an ``ssl.SSLContext``) of a cluster that speaks TLS; by default
        ``DLEDGER_MQ_TLS_CA`` if set, else plain connections."""
        self.credentials = as_credentials(credentials)
        self.ssl_context = client_ssl_context(tls)
        self.rng = random.Random()
        #: What the client waits for right now, and why (None: nothing stalls).
        self.stalls = Stalls()
        self.routes = Routes(
            naming_addresses(naming), cluster_id, self.rng, self.stalls, self.ssl_context
        )
        self.cluster_id = cluster_id
        self.name = name
        self._nursery_manager = trio.open_nursery()
        self._connections: Connections | None = None

    @property
    def nursery(self) -> trio.Nursery:
        return self._client_open().nursery

    async def _open(self) -> None:
        nursery = await self._nursery_manager.__aenter__()
        self._connections = Connections(
            nursery, self.cluster_id, self.name, self.credentials, self.ssl_context
        )

    async def _close(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._connections is not None
        self._connections.close()
        self.nursery.cancel_scope.cancel()
        try:
            return await self._nursery_manager.__aexit__(kind, value, traceback)
        except BaseExceptionGroup as group:
            # The application's own error (a refused send, PermissionDenied) comes out as it
            # was raised, not wrapped in the client's nursery's group.
            if value is not None and list(group.exceptions) == [value]:
                return False
            raise

    def _client_open(self) -> Connections:
        if self._connections is None:
            raise UsageError(f"use the {type(self).__name__.lower()} inside `async with`")
        return self._connections

    async def call_leader(
        self,
        topic: str,
        request: object,
        reply_type: type[ReplyT],
        silence_seconds: float = SILENCE_SECONDS,
    ) -> ReplyT:
        """``request`` answered by the leader of ``topic``'s group with a ``reply_type`` (see
        ``call_leader``)."""
        connections = self._client_open()
        return await call_leader(
            self.routes, connections, topic, request, reply_type, self.rng, silence_seconds
        )
