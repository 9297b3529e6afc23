"""The producer: sends that survive a failover as a pause, never as an error or a duplicate.

    async with Producer(naming="127.0.0.1:9876") as producer:
        receipt = await producer.send("orders", b"...", tags="paid", keys=["o-1"])

Routes come from any naming node (the next one when one fails) and are cached; a ``NotLeader``
answer's leader address is followed at once, and a broken connection or an unknown leader makes
the producer ask naming again, with jittered backoff. Every message carries this producer's id
and a sequence number, so a send retried across a failover is stored once and its receipt names
the original. No timeout arguments: bound a call with a Trio cancel scope.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType

import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import BadRequest, DledgerError, NotLeader, Unavailable
from dledger_mq.wire.admin import NODE_CODEC
from dledger_mq.wire.broker import OutgoingMessage, Receipt, SendReply, SendRequest
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.rpc import RpcConnection, connect, raise_error_reply

#: A cached route is asked for again after this long, leader change or not.
ROUTE_REFRESH_SECONDS = 30.0
BACKOFF_MIN_SECONDS = 0.01
BACKOFF_MAX_SECONDS = 0.5


def naming_addresses(naming: str | Sequence[str]) -> list[str]:
    """``naming`` as one address, a comma-separated string, or a list."""
    items = naming.split(",") if isinstance(naming, str) else list(naming)
    addresses = [item.strip() for item in items if item.strip()]
    if not addresses:
        raise BadRequest("at least one naming address is needed")
    return addresses


class Connections:
    """One long-lived connection per node address, each held open by a task of ``nursery``."""

    def __init__(self, nursery: trio.Nursery, cluster_id: str, name: str) -> None:
        self.nursery = nursery
        self.cluster_id = cluster_id
        self.name = name
        self._open: dict[str, tuple[RpcConnection, trio.CancelScope]] = {}

    async def get(self, address: str) -> RpcConnection:
        if address not in self._open:
            self._open[address] = await self.nursery.start(self._hold, address)
        return self._open[address][0]

    def drop(self, address: str) -> None:
        held = self._open.pop(address, None)
        if held is not None:
            held[1].cancel()

    async def _hold(
        self,
        address: str,
        *,
        task_status: trio.TaskStatus[tuple[RpcConnection, trio.CancelScope]],
    ) -> None:
        with trio.CancelScope() as scope:
            async with connect(address, NODE_CODEC, self.cluster_id, self.name) as connection:
                task_status.started((connection, scope))
                await trio.sleep_forever()


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
        # Any naming node will do: start from a random one so that clients spread out.
        start = self.rng.randrange(len(self.naming))
        for address in self.naming[start:] + self.naming[:start]:
            try:
                async with connect_naming(address, self.cluster_id, "producer") as naming:
                    routes, groups = await naming.routes_and_groups(topic)
            except DledgerError:
                continue
            for route in routes:
                if route.leader_address:
                    return route.leader_address
            if not routes:
                # A new topic: any group with a leader can create it on the first send.
                for group in groups:
                    if group.leader_address:
                        return group.leader_address
        return None


class Producer:
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        cluster_id: str = "local",
        idempotent: bool = True,
    ) -> None:
        self.rng = random.Random()
        self.routes = Routes(naming_addresses(naming), cluster_id, self.rng)
        self.cluster_id = cluster_id
        self.producer_id = uuid.uuid4().hex if idempotent else None
        self._sequences = itertools.count(1)
        self._nursery_manager = trio.open_nursery()
        self._connections: Connections | None = None

    async def __aenter__(self) -> Producer:
        nursery = await self._nursery_manager.__aenter__()
        self._connections = Connections(nursery, self.cluster_id, f"producer-{self.producer_id}")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Every send was awaited by its caller, so nothing is in flight: close the connections.
        assert self._connections is not None
        self._connections.nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(kind, value, traceback)

    async def send(
        self,
        topic: str,
        body: bytes,
        *,
        tags: str | None = None,
        keys: Sequence[str] = (),
        properties: Mapping[str, str] | None = None,
        sharding_key: str | None = None,
    ) -> Receipt:
        """Store one message; returns where (``msg_id``, ``queue_id``, ``offset``)."""
        [receipt] = await self._send(
            topic, [self._message(topic, body, tags, keys, properties, sharding_key)]
        )
        return receipt

    async def send_batch(
        self,
        topic: str,
        bodies: Sequence[bytes],
        *,
        tags: str | None = None,
        sharding_key: str | None = None,
    ) -> list[Receipt]:
        """Store many messages in one request (one log entry); one receipt each, in order."""
        messages = [self._message(topic, body, tags, (), None, sharding_key) for body in bodies]
        return await self._send(topic, messages)

    def _message(
        self,
        topic: str,
        body: bytes,
        tags: str | None,
        keys: Sequence[str],
        properties: Mapping[str, str] | None,
        sharding_key: str | None,
    ) -> OutgoingMessage:
        return OutgoingMessage(
            topic=topic,
            body=body,
            tags=tags,
            keys=tuple(keys),
            properties=dict(properties or {}),
            sharding_key=sharding_key,
            producer_id=self.producer_id,
            sequence=next(self._sequences) if self.producer_id else None,
            born_timestamp_ms=int(time.time() * 1000),
        )

    async def _send(self, topic: str, messages: list[OutgoingMessage]) -> list[Receipt]:
        connections = self._connections
        if connections is None:
            raise BadRequest("use the producer inside `async with`")
        request = SendRequest(tuple(messages))
        backoff = BACKOFF_MIN_SECONDS
        while True:
            address = await self.routes.leader_of(topic)
            try:
                connection = await connections.get(address)
                reply: SendReply = await connection.request(request)
            except NotLeader as error:
                hint = getattr(error, "leader_address", None)
                if hint and hint != address:
                    self.routes.follow(topic, hint)
                    continue  # the leader is known: go there at once
                self.routes.forget(topic)
            except Unavailable:
                connections.drop(address)
                self.routes.forget(topic)
            else:
                for receipt in reply.receipts:
                    if receipt.error_code:
                        raise_error_reply(ErrorReply(receipt.error_code, receipt.error_message))
                return list(reply.receipts)
            await trio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
