"""How clients find and reach the leader of a topic's group: naming, routes, connections."""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import attrs
import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError, Unavailable, UsageError, sole_error_unwrapped
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
class TopicPart:
    """One broker group's share of a topic, as naming said: a topic spread over groups has a
    part per group, and a queue is named by (group, queue id)."""

    group: str
    #: The topic's queues in this group (0: a new topic, which a send here creates).
    queues: int
    #: The group's idempotence window (see ``Producer``).
    idempotence_window: int


@attrs.frozen
class _Leader:
    address: str | None
    learned_at: float


class NotSent(Exception):
    """A call given up before its request left this client (no leader known, no connection):
    the message is certainly not stored, so another group may take it."""

    def __init__(self, group: str, reason: str) -> None:
        super().__init__(f"group {group}: {reason}")
        self.group = group
        self.reason = reason


class Routes:
    """Where a topic's queues are (its parts, one per broker group) and which node leads each
    group, as naming last said."""

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
        self._parts: dict[str, tuple[tuple[TopicPart, ...], float]] = {}
        #: Every group this client heard of, and its leader (None: it has none right now).
        self._leaders: dict[str, _Leader] = {}
        #: The parts of every topic ever found (never forgotten: a topic whose groups are all
        #: down is waited for, not created again elsewhere).
        self._seen: dict[str, tuple[TopicPart, ...]] = {}
        #: Client addresses of each group's live replicas as naming last listed them: where to
        #: look for a new leader when no naming node answers.
        self._replicas: dict[str, tuple[str, ...]] = {}
        #: The last leader of each group that was given up on (dead, or no longer leading).
        self._given_up: dict[str, str] = {}
        #: Topics being asked about, and the event set at the next answer (or end of asking).
        self._asking: set[str] = set()
        self._answers: dict[str, trio.Event] = {}

    async def parts(self, topic: str) -> tuple[TopicPart, ...]:
        """The topic's parts, from the cache or else from naming (asked until a group that
        holds it has a leader). A topic no group holds yet is one part: the group a send
        creates it in (the first with a leader, by name, so that producers agree)."""
        while True:
            cached = self._parts.get(topic)
            if cached is not None and time.monotonic() - cached[1] < ROUTE_REFRESH_SECONDS:
                return cached[0]
            await self._ask_until(topic, lambda: self._fresh_parts(topic))

    def cached_parts(self, topic: str) -> tuple[TopicPart, ...]:
        """The parts last heard of, fresh or not (none if never found)."""
        return self._seen.get(topic, ())

    def known_leader(self, group: str) -> str | None:
        """The group's leader as last heard (a hint followed or naming), if any and fresh."""
        leader = self._leaders.get(group)
        if leader is None or time.monotonic() - leader.learned_at >= ROUTE_REFRESH_SECONDS:
            return None
        return leader.address

    async def leader_of(self, topic: str, group: str) -> str:
        """The address of ``group``'s leader, asking naming (about ``topic``) until it has one."""
        while True:
            address = self.known_leader(group)
            if address is not None:
                return address
            await self._ask_until(topic, lambda: self.known_leader(group) is not None, group)

    async def refresh(self, topic: str) -> None:
        """Ask naming about ``topic`` now (once; a consumer looking for new groups, a producer
        about a group it skipped whose leader it no longer knows). While one caller asks, the
        others wait for its answer rather than ask too."""
        if topic in self._asking:
            await self._answers.setdefault(topic, trio.Event()).wait()
            return
        self._asking.add(topic)
        try:
            self._parts.pop(topic, None)
            await self._ask_naming(topic)
        finally:
            self._asking.discard(topic)
            self._answered(topic)

    def follow(self, group: str, address: str) -> None:
        """Send to ``address`` from now on (a ``NotLeader`` hint)."""
        self._leaders[group] = _Leader(address, time.monotonic())

    def forget(self, group: str) -> None:
        """The group's leader is not known any more: ask naming again."""
        leader = self._leaders.pop(group, None)
        if leader is not None and leader.address is not None:
            self._given_up[group] = leader.address

    def _fresh_parts(self, topic: str) -> bool:
        cached = self._parts.get(topic)
        return cached is not None and time.monotonic() - cached[1] < ROUTE_REFRESH_SECONDS

    async def _ask_until(
        self, topic: str, answered: Callable[[], bool], group: str | None = None
    ) -> None:
        """Ask naming about ``topic`` until ``answered()``. One caller per topic asks, in a
        loop with backoff; the others re-check after each of its answers (many sends that lose
        their route at once, a failover, must not each ask every naming node), and one of
        them takes over the asking if it stops (answered for itself) before they are."""
        while not answered():
            if topic in self._asking:
                await self._answers.setdefault(topic, trio.Event()).wait()
                continue
            self._asking.add(topic)
            try:
                backoff = BACKOFF_MIN_SECONDS
                while True:
                    problems = await self._ask_naming(topic)
                    self._answered(topic)
                    if answered():
                        return
                    what = (
                        f"the leader of group {group}" if group else f"a route to topic {topic!r}"
                    )
                    self.stalls.note(what, "; ".join(problems) or "naming knows no leader")
                    await trio.sleep(backoff * (0.5 + self.rng.random()))
                    backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            finally:
                self._asking.discard(topic)
                self._answered(topic)

    def _answered(self, topic: str) -> None:
        """Wake whoever waits on ``topic``'s asking (an answer came, or the asker left)."""
        event = self._answers.pop(topic, None)
        if event is not None:
            event.set()

    async def _ask_naming(self, topic: str) -> list[str]:
        """Ask every naming node at once about ``topic``; the first answer with a leader is
        taken (asking them in turn would make a paused or partitioned naming node cost a
        silence timeout before the next one is tried). Returns what each said otherwise."""
        answers: list[tuple[tuple[TopicRoute, ...], tuple[GroupRoute, ...]]] = []
        problems: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            for address in self.naming:
                nursery.start_soon(
                    self._ask_one, address, topic, answers, problems, nursery.cancel_scope
                )
        if not answers:
            if self._try_replicas(topic):
                return []
            return [f"{address}: {problems.get(address, '?')}" for address in self.naming]
        routes, groups = answers[0]
        now = time.monotonic()
        for group_route in groups:
            self._leaders[group_route.group] = _Leader(group_route.leader_address, now)
            self._replicas[group_route.group] = group_route.replicas
        for route in routes:
            self._leaders[route.group] = _Leader(route.leader_address, now)
            self._replicas[route.group] = route.replicas
        parts = tuple(
            TopicPart(route.group, route.queues, route.idempotence_window) for route in routes
        )
        if not parts and not self.cached_parts(topic):
            # A new topic: it is created in the first group with a leader, by name.
            creators = [g for g in groups if g.leader_address]
            if creators:
                parts = (TopicPart(creators[0].group, 0, creators[0].idempotence_window),)
        if routes:
            self._seen[topic] = parts
        if parts and any(self.known_leader(part.group) for part in parts):
            self._parts[topic] = (parts, now)
            return []
        if routes:
            return [f"no group of topic {topic!r} has a leader right now"]
        if groups:
            # Known before but held by no live group now (its groups are down): wait for them
            # rather than create it again elsewhere.
            return [f"no live group holds topic {topic!r} right now"]
        return ["no broker group is registered"]

    def _try_replicas(self, topic: str) -> bool:
        """No naming node answers (the ones this client knows are down: often the node that
        also led): send to a replica of each group whose leader is unknown, as if it led,
        other than the one given up on. A follower answers ``NotLeader`` naming the leader,
        which is followed (``call_leader``), and a dead one is given up on in turn. So a
        client that found its routes once rides out a leader's death even when that node ran
        its only naming node. Whether any group got a replica to try."""
        now = time.monotonic()
        tried = False
        for group, replicas in self._replicas.items():
            if self.known_leader(group) is not None:
                continue
            others = [address for address in replicas if address != self._given_up.get(group)]
            if others:
                self._leaders[group] = _Leader(self.rng.choice(others), now)
                tried = True
        cached = self._parts.get(topic)
        parts = self._seen.get(topic) or (cached[0] if cached is not None else ())
        if tried and parts:
            self._parts[topic] = (parts, now)
        return tried

    async def _ask_one(
        self,
        address: str,
        topic: str,
        answers: list[tuple[tuple[TopicRoute, ...], tuple[GroupRoute, ...]]],
        problems: dict[str, str],
        done: trio.CancelScope,
    ) -> None:
        problems[address] = f"no answer within {SILENCE_SECONDS:g} s"
        with trio.move_on_after(SILENCE_SECONDS):
            try:
                async with connect_naming(
                    address, self.cluster_id, "client", ssl_context=self.ssl_context
                ) as naming:
                    routes, groups = await naming.routes_and_groups(topic)
            except DledgerError as error:
                problems[address] = str(error).removeprefix(f"cannot reach {address}: ")
                return
            if any(route.leader_address for route in routes) or (
                not routes and any(g.leader_address for g in groups)
            ):
                answers.insert(0, (routes, groups))
                done.cancel()
            else:
                answers.append((routes, groups))
                problems[address] = (
                    "no group of the topic has a leader right now"
                    if routes
                    else "no group has a leader right now"
                    if groups
                    else "no broker group is registered"
                )


async def call_leader(
    routes: Routes,
    connections: Connections,
    topic: str,
    group: str,
    request: object,
    reply_type: type[ReplyT],
    rng: random.Random,
    silence_seconds: float = SILENCE_SECONDS,
    only_if_ready: bool = False,
) -> ReplyT:
    """Send ``request`` to the leader of broker group ``group`` (one of ``topic``'s) until
    it answers.

    A retriable error is retried after a jittered backoff, others are the caller's. One that
    says to refresh routes (``NotLeader``, ``Unavailable``) follows its leader address at once
    when it has one, else asks naming again; a broken connection or a node silent for
    ``silence_seconds`` is dropped, and the next try opens another.

    ``only_if_ready``: raise ``NotSent`` rather than wait when the group has no known leader
    or its leader cannot be connected to, as long as the request has not been sent yet. Once
    it has been, its fate is unknown and it is retried here only (the broker deduplicates a
    retry; another group could not).
    """
    backoff = BACKOFF_MIN_SECONDS
    stalls = routes.stalls
    what = f"the leader of group {group} (topic {topic!r})"
    sent = False
    while True:
        if only_if_ready and not sent:
            known = routes.known_leader(group)
            if known is None:
                raise NotSent(group, "no leader known")
            address = known
        else:
            address = await routes.leader_of(topic, group)
        connection: RpcConnection | None = None
        try:
            with trio.move_on_after(silence_seconds):
                connection = await connections.get(address)
                # A leader that died since the last call closed this connection: a request
                # written to it now surely reaches nobody, so it may still go elsewhere.
                if connection.closed or (only_if_ready and not sent and connection.peer_gone()):
                    connections.drop(address)
                    raise Unavailable(f"the connection to {address} is closed")
                sent = True
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
                routes.follow(group, hint)
                continue  # the leader is known: go there at once
            if error.refresh_routes:
                routes.forget(group)
            if only_if_ready and not sent:
                raise NotSent(group, str(error)) from None
            stalls.note(what, str(error) if address in str(error) else f"{address}: {error}")
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
            # One error of the client's own tasks (Ctrl-C landing in one of them while the
            # application waited) comes out as itself too.
            with sole_error_unwrapped():
                raise

    def _client_open(self) -> Connections:
        if self._connections is None:
            raise UsageError(f"use the {type(self).__name__.lower()} inside `async with`")
        return self._connections

    async def call_leader(
        self,
        topic: str,
        group: str,
        request: object,
        reply_type: type[ReplyT],
        silence_seconds: float = SILENCE_SECONDS,
        only_if_ready: bool = False,
    ) -> ReplyT:
        """``request`` answered by the leader of broker group ``group`` (one of ``topic``'s)
        with a ``reply_type`` (see ``call_leader``)."""
        connections = self._client_open()
        return await call_leader(
            self.routes,
            connections,
            topic,
            group,
            request,
            reply_type,
            self.rng,
            silence_seconds,
            only_if_ready,
        )
