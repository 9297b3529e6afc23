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
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType

from dledger_mq.clients.routing import RoutedClient
from dledger_mq.wire.broker import OutgoingMessage, Receipt, SendReply, SendRequest
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.rpc import raise_error_reply


class Producer(RoutedClient):
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        cluster_id: str = "local",
        idempotent: bool = True,
    ) -> None:
        self.producer_id = uuid.uuid4().hex if idempotent else None
        super().__init__(naming, cluster_id, f"producer-{self.producer_id}")
        self._sequences = itertools.count(1)

    async def __aenter__(self) -> Producer:
        await self._open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Every send was awaited by its caller, so nothing is in flight: close the connections.
        return await self._close(kind, value, traceback)

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
        reply = await self.call_leader(topic, SendRequest(tuple(messages)))
        assert isinstance(reply, SendReply)
        for receipt in reply.receipts:
            if receipt.error_code:
                raise_error_reply(ErrorReply(receipt.error_code, receipt.error_message))
        return list(reply.receipts)
