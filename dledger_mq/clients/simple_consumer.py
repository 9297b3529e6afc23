"""The simple consumer (RocketMQ 5's POP model): no rebalancing, any number of consumers of a
group on any queue; the application asks for messages and settles each one.

    async with SimpleConsumer(naming="127.0.0.1:9876", group="billing",
                              subscriptions={"orders": "*"}) as consumer:
        for message in await consumer.receive(16, timedelta(seconds=30)):
            ...
            await consumer.ack(message)

A receive takes messages from the topics' queues in every broker group, through each group's
leader and its log, so that while a message is invisible no other receive of the group gets
it, whoever leads. A message not acknowledged within its invisible duration is received again
(``attempt`` one higher; ``change_invisible_duration`` gives it more time, or sets when it comes
back); after the group's ``max_attempts`` it goes to the group's dead-letter topic. On a FIFO
topic a queue hands out one message at a time, the next only once that one is acknowledged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import TracebackType

import attrs

from dledger_mq.clients import tracing
from dledger_mq.clients.consumer import StoredMessageView
from dledger_mq.clients.inputs import check_subscriptions
from dledger_mq.clients.routing import SILENCE_SECONDS, RoutedClient
from dledger_mq.errors import TopicNotFound, UsageError
from dledger_mq.wire.broker import (
    ORIGIN_TOPIC_PROPERTY,
    AckReply,
    AckRequest,
    ChangeInvisibleReply,
    ChangeInvisibleRequest,
    ReceiveReply,
    ReceiveRequest,
    StoredMessage,
)
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.tls import TlsOption

#: The longest one receive waits in one broker group for a message (long polling).
RECEIVE_WAIT = timedelta(seconds=1)
MAX_RECEIVE_MESSAGES = 1024


@attrs.define(eq=False)
class SimpleMessage(StoredMessageView):
    """A received message. ``handle`` names this receive of it."""

    stored: StoredMessage
    topic: str
    attempt: int
    handle: str
    #: When it becomes visible again unless acknowledged (ms since the epoch, broker clock).
    invisible_until_ms: int


class SimpleConsumer(RoutedClient):
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        group: str,
        subscriptions: Mapping[str, str],
        cluster_id: str = "local",
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        """``subscriptions``: topic -> tag expression (``"*"``: every message)."""
        check_subscriptions(group, subscriptions)
        self.group = group
        self.subscriptions = dict(subscriptions)
        super().__init__(naming, cluster_id, f"simple-consumer-{group}", credentials, tls)
        self._turn = itertools.count()

    async def __aenter__(self) -> SimpleConsumer:
        await self._open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._close(kind, value, traceback)

    async def receive(
        self,
        max_messages: int = 16,
        invisible_duration: timedelta = timedelta(seconds=30),
        wait: timedelta = RECEIVE_WAIT,
    ) -> list[SimpleMessage]:
        """Up to ``max_messages`` messages, each invisible to the group's other receives for
        ``invisible_duration``; an empty list when none came within ``wait`` (per broker group
        asked, the last one only: the others are asked without waiting)."""
        if not 1 <= max_messages <= MAX_RECEIVE_MESSAGES:
            raise UsageError(f"max_messages must be in [1, {MAX_RECEIVE_MESSAGES}]")
        invisible_ms = invisible_duration // timedelta(milliseconds=1)
        if invisible_ms < 1:
            raise UsageError("invisible_duration must be at least 1 ms")
        with tracing.receiving(self.group, list(self.subscriptions)) as traced:
            received = await self._receive(max_messages, invisible_ms, wait)
            traced.messages = received
            return received

    async def _receive(
        self, max_messages: int, invisible_ms: int, wait: timedelta
    ) -> list[SimpleMessage]:
        places = [
            (topic, part.group)
            for topic in self.subscriptions
            for part in await self.routes.parts(topic)
        ]
        # Start at another place each time, so that every queue of every group gets its turn.
        first = next(self._turn) % len(places)
        places = places[first:] + places[:first]
        received: list[SimpleMessage] = []
        for number, (topic, broker_group) in enumerate(places):
            last = number == len(places) - 1
            request = ReceiveRequest(
                self.group,
                topic,
                self.subscriptions[topic],
                max_messages - len(received),
                invisible_ms,
                wait // timedelta(milliseconds=1) if last and not received else 0,
            )
            try:
                reply = await self.call_leader(
                    topic,
                    broker_group,
                    request,
                    ReceiveReply,
                    SILENCE_SECONDS + request.wait_ms / 1000,
                )
            except TopicNotFound:
                continue  # not created yet (the first send creates it)
            received += [
                SimpleMessage(
                    record.message,
                    record.message.properties.get(ORIGIN_TOPIC_PROPERTY, topic),
                    record.attempt,
                    record.handle,
                    record.invisible_until_ms,
                )
                for record in reply.messages
            ]
            if len(received) >= max_messages:
                break
        return received

    async def ack(self, message: SimpleMessage) -> bool:
        """Done with it. False when this receive of it no longer counts (it became visible
        again and was received anew, or was acknowledged already)."""
        reply = await self.call_leader(
            message.stored.topic,
            message.group,
            AckRequest(self.group, message.stored.topic, (message.handle,)),
            AckReply,
        )
        return reply.acked[0]

    async def change_invisible_duration(self, message: SimpleMessage, duration: timedelta) -> bool:
        """The message stays invisible for ``duration`` from now instead (a long task asks for
        more time; a failed one can set when it comes back). False as for ``ack``."""
        reply = await self.call_leader(
            message.stored.topic,
            message.group,
            ChangeInvisibleRequest(
                self.group,
                message.stored.topic,
                message.handle,
                max(0, duration // timedelta(milliseconds=1)),
            ),
            ChangeInvisibleReply,
        )
        if reply.changed:
            message.invisible_until_ms = reply.invisible_until_ms
        return reply.changed
