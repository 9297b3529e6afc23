"""The producer: sends that survive a failover as a pause, never as an error or a duplicate.

    async with Producer(naming="127.0.0.1:9876") as producer:
        receipt = await producer.send("orders", b"...", tags="paid", keys=["o-1"])

Routes come from any naming node (the next one when one fails) and are cached; a ``NotLeader``
answer's leader address is followed at once, and a broken connection or an unknown leader makes
the producer ask naming again, with jittered backoff. Every message carries this producer's id
and a sequence number, so a send retried across a failover is stored once and its receipt names
the original. No timeout arguments: bound a call with a Trio cancel scope.

A topic may be spread over several broker groups (each its own Raft group and leader). Sends
without a sharding key take the groups in turn, as many turns each as it has queues, and the
group's leader picks the queue. A group whose leader is not known or cannot be reached is
skipped for a while (RocketMQ's latency fault tolerance): its failover or outage is no pause
for the others. But once a request has left the client its fate is unknown, so it is retried
in that group only, where the broker deduplicates it; another group could store it twice. A
message with a sharding key goes to one (group, queue) of all the topic's queues and waits
for it: order per key is kept through a failover.

The broker remembers only the last ``idempotence_window`` sequences of a producer (its route
says how many); a retry of an older one could not be told from a new message and is refused.
So the producer keeps the span of its sequences in flight, from the oldest not yet answered to
the newest sent, within that window: a send that would widen it further waits (it does not
fail) until older sends are answered, however many calls are made at once.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType

import attrs
import trio

from dledger_mq.clients import tracing
from dledger_mq.clients.inputs import check_message_input
from dledger_mq.clients.routing import SILENCE_SECONDS, NotSent, RoutedClient, TopicPart
from dledger_mq.errors import UsageError
from dledger_mq.wire.broker import (
    DELIVER_AT_PROPERTY,
    SYSTEM_PROPERTY_PREFIX,
    OutgoingMessage,
    Receipt,
    SendReply,
    SendRequest,
    queue_for_sharding_key,
)
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.rpc import raise_error_reply
from dledger_mq.wire.tls import TlsOption


def scheduled_properties(
    properties: Mapping[str, str] | None, delay: timedelta | None, deliver_at: datetime | None
) -> dict[str, str]:
    """A message's properties, with its delivery time when it has one. Names starting with
    ``__`` are the system's: refused."""
    result = dict(properties or {})
    reserved = [name for name in result if name.startswith(SYSTEM_PROPERTY_PREFIX)]
    if reserved:
        raise UsageError(f"property names starting with {SYSTEM_PROPERTY_PREFIX!r} are reserved")
    if delay is not None and deliver_at is not None:
        raise UsageError("give delay or deliver_at, not both")
    if delay is not None:
        if not isinstance(delay, timedelta) or delay < timedelta(0):
            raise UsageError("delay must be a timedelta of zero or more")
        at_ms = int(time.time() * 1000) + delay // timedelta(milliseconds=1)
    elif deliver_at is not None:
        if not isinstance(deliver_at, datetime) or deliver_at.tzinfo is None:
            raise UsageError("deliver_at must be an aware datetime (with a time zone)")
        at_ms = int(deliver_at.timestamp() * 1000)
    else:
        return result
    result[DELIVER_AT_PROPERTY] = str(max(0, at_ms))
    return result


class SequenceWindow:
    """The sequences of one producer that are in flight, and the wait that keeps their span
    within the broker's idempotence window.

    Invariant: ``newest sent - oldest in flight < window``, so every sequence in flight, and
    hence every retry, is still one the broker remembers. Sends are admitted in call order
    (``trio.Lock`` is fair): a large batch that waits is not overtaken by small sends.
    """

    def __init__(self) -> None:
        self._next = 1
        #: First sequences of the sends in flight (a min-heap), and those since answered.
        self._in_flight: list[int] = []
        self._done: set[int] = set()
        self._admission = trio.Lock()
        self._released = trio.Event()

    @property
    def oldest_in_flight(self) -> int:
        while self._in_flight and self._in_flight[0] in self._done:
            self._done.discard(heapq.heappop(self._in_flight))
        return self._in_flight[0] if self._in_flight else self._next

    @property
    def span(self) -> int:
        """Sequences from the oldest in flight to the newest sent (0 when none is in flight)."""
        return self._next - self.oldest_in_flight

    async def acquire(self, count: int, window: int) -> int:
        """The first of ``count`` consecutive sequences, once sending them keeps the span
        within ``window``."""
        if count > window:
            raise UsageError(
                f"a batch of {count} messages exceeds the broker's idempotence window of "
                f"{window}: a retry of it could not be deduplicated; send smaller batches"
            )
        if not self._admission.locked() and self._fits(count, window):
            return self._take(count)  # nobody waits and it fits: no trip to the scheduler
        async with self._admission:
            while not self._fits(count, window):
                released = self._released
                await released.wait()
            return self._take(count)

    def _fits(self, count: int, window: int) -> bool:
        return self._next + count - 1 - self.oldest_in_flight < window

    def _take(self, count: int) -> int:
        first = self._next
        self._next += count
        heapq.heappush(self._in_flight, first)
        return first

    def release(self, first: int) -> None:
        """The send that took ``first`` is answered (or given up): it is never retried."""
        self._done.add(first)
        self._released.set()
        self._released = trio.Event()


#: A group whose leader could not be reached is skipped by unkeyed sends for this long, doubled
#: while it stays so, up to GROUP_FAULT_MAX_SECONDS (a failover takes a few hundred ms).
GROUP_FAULT_SECONDS = 0.25
GROUP_FAULT_MAX_SECONDS = 2.0


class GroupFaults:
    """Groups unkeyed sends skip for now, and until when (monotonic seconds)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._length: dict[str, float] = {}

    def mark(self, group: str, now: float) -> None:
        length = min(self._length.get(group, GROUP_FAULT_SECONDS / 2) * 2, GROUP_FAULT_MAX_SECONDS)
        self._length[group] = length
        self._until[group] = now + length

    def clear(self, group: str) -> None:
        if self._until.pop(group, None) is not None:
            self._length.pop(group, None)

    def available(self, group: str, now: float) -> bool:
        return self._until.get(group, 0.0) <= now

    def soonest(self, groups: Sequence[str]) -> str:
        """Of ``groups``, the one skipped for the shortest time from now."""
        return min(groups, key=lambda group: self._until.get(group, 0.0))


def _message_type(properties: Mapping[str, str], sharding_key: str | None) -> str:
    """``messaging.rocketmq.message.type``: delayed, ordered by a key, or neither."""
    if DELIVER_AT_PROPERTY in properties:
        return "delay"
    return "normal" if sharding_key is None else "fifo"


def keyed_queue(sharding_key: str, parts: Sequence[TopicPart]) -> tuple[str, int]:
    """The (group, queue id) a keyed message goes to, of all the topic's queues."""
    queues = sorted((part.group, queue) for part in parts for queue in range(part.queues))
    if not queues:
        raise UsageError("the topic has no queues yet")
    return queues[queue_for_sharding_key(sharding_key, len(queues))]


class Producer(RoutedClient):
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        cluster_id: str = "local",
        idempotent: bool = True,
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        self.producer_id = uuid.uuid4().hex if idempotent else None
        super().__init__(naming, cluster_id, f"producer-{self.producer_id}", credentials, tls)
        self.sequences = SequenceWindow()
        self.faults = GroupFaults()
        #: Where the next unkeyed send's turn over the topic's queues starts: at random, so
        #: that many short-lived producers (one per CLI send) do not all begin with one group.
        self._turn = self.rng.randrange(1 << 16)

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
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
    ) -> Receipt:
        """Store one message; returns where (``msg_id``, ``queue_id``, ``offset``).

        With ``delay`` or ``deliver_at`` (an aware datetime) the message is stored now and
        delivered to consumers at that time, never earlier (up to the broker's
        ``max_delay_ms``, 3 days by default); its receipt's ``offset`` is -1 until then."""
        check_message_input(topic, (body,), tags, keys, properties, sharding_key)
        keys, properties = tuple(keys), scheduled_properties(properties, delay, deliver_at)
        with tracing.sending(
            topic,
            1,
            tags=tags,
            keys=keys,
            body_size=len(body),
            message_type=_message_type(properties, sharding_key),
            client_id=self.producer_id,
        ) as outcome:
            properties = tracing.inject(properties)

            def build(first: int | None) -> list[OutgoingMessage]:
                return [self._message(topic, body, tags, keys, properties, sharding_key, first, 0)]

            [receipt] = await self._send(topic, 1, build, sharding_key)
            outcome.attributes({"messaging.message.id": receipt.msg_id})
        return receipt

    async def send_batch(
        self,
        topic: str,
        bodies: Sequence[bytes],
        *,
        tags: str | None = None,
        sharding_key: str | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
    ) -> list[Receipt]:
        """Store many messages in one request (one log entry); one receipt each, in order.
        ``delay`` and ``deliver_at`` as for ``send``, for all of them."""
        check_message_input(topic, bodies, tags, (), None, sharding_key)
        properties = scheduled_properties(None, delay, deliver_at)
        with tracing.sending(
            topic,
            len(bodies),
            tags=tags,
            keys=(),
            body_size=None,
            message_type=_message_type(properties, sharding_key),
            client_id=self.producer_id,
        ):
            # One send span for the batch: its context is every message's creation context.
            properties = tracing.inject(properties)

            def build(first: int | None) -> list[OutgoingMessage]:
                return [
                    self._message(topic, body, tags, (), properties, sharding_key, first, position)
                    for position, body in enumerate(bodies)
                ]

            return await self._send(topic, len(bodies), build, sharding_key)

    def _message(
        self,
        topic: str,
        body: bytes,
        tags: str | None,
        keys: tuple[str, ...],
        properties: dict[str, str],
        sharding_key: str | None,
        first_sequence: int | None,
        position: int,
    ) -> OutgoingMessage:
        return OutgoingMessage(
            topic=topic,
            body=body,
            tags=tags,
            keys=keys,
            properties=properties,
            sharding_key=sharding_key,
            producer_id=self.producer_id,
            sequence=None if first_sequence is None else first_sequence + position,
            born_timestamp_ms=int(time.time() * 1000),
        )

    async def _send(
        self,
        topic: str,
        count: int,
        build: Callable[[int | None], list[OutgoingMessage]],
        sharding_key: str | None,
    ) -> list[Receipt]:
        """Send what ``build`` makes of the first of ``count`` sequences (None when this
        producer is not idempotent), once the window admits them."""
        self._client_open()
        if self.producer_id is None:
            return await self._send_once(topic, build(None), sharding_key)
        parts = await self.routes.parts(topic)
        window = min(part.idempotence_window for part in parts)
        first = await self.sequences.acquire(count, window)
        try:
            return await self._send_once(topic, build(first), sharding_key)
        finally:
            self.sequences.release(first)

    async def _send_once(
        self, topic: str, messages: list[OutgoingMessage], sharding_key: str | None
    ) -> list[Receipt]:
        parts = await self.routes.parts(topic)
        if sharding_key is not None and all(part.queues for part in parts):
            group, queue_id = keyed_queue(sharding_key, parts)
            request = SendRequest(tuple(attrs.evolve(m, queue_id=queue_id) for m in messages))
            reply = await self.call_leader(topic, group, request, SendReply)
        else:
            reply = await self._send_unkeyed(topic, parts, SendRequest(tuple(messages)))
        for receipt in reply.receipts:
            if receipt.error_code:
                raise_error_reply(
                    ErrorReply(
                        receipt.error_code, receipt.error_message, False, receipt.error_fields
                    )
                )
        return list(reply.receipts)

    async def _send_unkeyed(
        self, topic: str, parts: Sequence[TopicPart], request: SendRequest
    ) -> SendReply:
        """To the groups in turn, skipping those whose leader is unknown or unreachable; when
        every group is skipped, wait on the one skipped the shortest."""
        # Interleaved (a, b, a, b, ...), as many turns each as it has queues.
        widest = max(max(part.queues, 1) for part in parts)
        turns = [part.group for q in range(widest) for part in parts if q < max(part.queues, 1)]
        start, self._turn = self._turn, self._turn + 1
        tried: set[str] = set()
        while True:
            now = time.monotonic()
            order = [turns[(start + step) % len(turns)] for step in range(len(turns))]
            ready = [g for g in order if g not in tried and self.faults.available(g, now)]
            group = ready[0] if ready else self.faults.soonest(order)
            if ready and self.routes.known_leader(group) is None:
                # Its skip ran out and its leader is not known (it failed over, or was down):
                # ask naming now, or the group would wait for the route cache to expire.
                with trio.move_on_after(SILENCE_SECONDS):
                    await self.routes.refresh(topic)
            try:
                reply = await self.call_leader(
                    topic, group, request, SendReply, only_if_ready=bool(ready)
                )
            except NotSent:
                self.faults.mark(group, time.monotonic())
                tried.add(group)
                continue
            self.faults.clear(group)
            return reply
