"""The workloads: producers send unique values through the SDK, consumers in one group take them.

``queue``: each producer process ``pN`` sends ``"pN-1"``, ``"pN-2"``, ... one at a time, at a
paced rate; every send is recorded as ``invoke`` and then ``ok`` (with where it was stored),
``fail`` (the broker refused it: definitely not stored) or ``info`` (a timeout or any other
error: it may or may not have been stored). Consumers ``cN`` of one group record every message
handed to them (``receive``) and acknowledge it.

``fifo``: the same on a FIFO topic, each send with a sharding key ``kN-M`` owned by producer
``pN`` (the key also goes in the message's keys, so a receive can be checked per key).

``delay``: the same, each send delayed by a random ``delay_min_s`` .. ``delay_max_s``: every
other send asks ``delay=`` (the producer turns it into a time), the others ``deliver_at=`` a
time the workload computes; the invoke records the delay, the wall clock and, for the latter,
the time asked. Receives record the message's store timestamp (when it became visible) and
its ``__DELIVER_AT_MS`` property, to check it was never delivered early and how late it was.

``retry``: the same sends; the consumer group has a small retry policy (``max_attempts``,
``retry_delays_ms``, set in every broker group before the consumers start), and consumers hand
each message to a handler (``Consumer.run``) that fails with probability ``fail_rate``. The
choice is a function of (seed, value, attempt), so a message delivered twice (at-least-once)
meets the same fate each time: a value's fate is decided by its attempts alone. Each handler
outcome is recorded (``ack``: handled; ``nack``: failed, with the error the broker will keep as
the dead letter's last error). The drain waits until every acknowledged value was handled or
failed its last attempt, and then until the dead-letter topics hold the latter; the final read
also reads every group's ``%DLQ%group``.

With several broker groups the topic spans them all (the runner creates it in each); every
receipt and message names its group, which goes into the history with the queue: a queue is
(group, queue).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from dledger_mq.clients import Consumer, Producer, ReceivedMessage
from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.errors import BadRequest, DledgerError
from dledger_mq.wire.broker import (
    ATTEMPT_PROPERTY,
    DELIVER_AT_PROPERTY,
    LAST_ERROR_PROPERTY,
    PullReply,
    PullRequest,
    Receipt,
    StoredMessage,
    dead_letter_topic,
)
from jepsen.history import (
    ACK,
    FAIL,
    INFO,
    INVOKE,
    NACK,
    OK,
    READ,
    READER,
    RECEIVE,
    SEND,
    History,
)
from jepsen.nodes import Nodes

TOPIC = "jepsen"
GROUP = "jepsen-checker"
DEAD_LETTERS = dead_letter_topic(GROUP)
WORKLOADS = ("queue", "fifo", "delay", "retry")
#: How long a fifo consumer "processes" each message before acknowledging it.
PROCESS_SECONDS = 0.002
#: How often the drain of the retry workload looks at the dead-letter topics.
DEAD_LETTER_POLL_SECONDS = 0.5


@attrs.frozen
class WorkloadOptions:
    name: str = "queue"
    producers: int = 4
    consumers: int = 2
    #: Sends per second over all producers (0: each producer as fast as it can).
    rate: float = 200.0
    #: A send not acknowledged within this long is recorded as indeterminate (info).
    send_timeout_s: float = 5.0
    keys_per_producer: int = 4
    #: Queues of the topic in each broker group.
    queues: int = 4
    #: ``delay``: each send's delay is drawn uniformly from this range, in seconds.
    delay_min_s: float = 0.5
    delay_max_s: float = 5.0
    #: ``delay``: a delayed message made visible more than this late, with no fault window
    #: overlapping its due time to this much after it (nor ``settle_s`` before), is late.
    on_time_s: float = 1.0
    #: ``delay``: how long after a fault window's end the cluster may still be recovering
    #: (restarts, an election, clients reconnecting): lateness is not judged meanwhile.
    settle_s: float = 5.0
    #: ``retry``: the consumer group's policy (deliveries in all; the wait before each retry,
    #: the last one repeating) and the probability that a handler fails a delivery.
    max_attempts: int = 3
    retry_delays_ms: tuple[int, ...] = (200, 1000)
    fail_rate: float = 0.3

    @property
    def fifo(self) -> bool:
        return self.name == "fifo"

    @property
    def delayed(self) -> bool:
        return self.name == "delay"

    @property
    def retrying(self) -> bool:
        return self.name == "retry"

    def retry_delay_ms(self, attempt: int) -> int:
        """The policy's wait before delivery number ``attempt`` (2 or more)."""
        delays = self.retry_delays_ms
        return delays[min(attempt - 2, len(delays) - 1)]

    def describe(self) -> dict[str, object]:
        """What the run's meta (run.json, the report) says about the workload."""
        if self.delayed:
            return {
                "delays s": f"{self.delay_min_s:g}-{self.delay_max_s:g}",
                "on time within s": self.on_time_s,
                "settle after a fault s": self.settle_s,
            }
        if self.retrying:
            return {
                "max attempts": self.max_attempts,
                "retry delays ms": ",".join(map(str, self.retry_delays_ms)),
                "handler fail rate": self.fail_rate,
            }
        return {}


def make_workload(
    options: WorkloadOptions,
    nodes: Nodes,
    history: History,
    now: Callable[[], float],
    seed: int = 0,
) -> Workload:
    """The workload ``options.name`` names."""
    if options.delayed:
        return DelayWorkload(options, nodes, history, now, seed)
    if options.retrying:
        return RetryWorkload(options, nodes, history, now, seed)
    return Workload(options, nodes, history, now, seed)


def wall_ms() -> int:
    """The wall clock in ms since the epoch, as the broker stamps messages."""
    return int(time.time() * 1000)


class Workload:
    def __init__(
        self,
        options: WorkloadOptions,
        nodes: Nodes,
        history: History,
        now: Callable[[], float],
        seed: int = 0,
    ) -> None:
        self.options = options
        self.seed = seed
        #: Where clients find routes, how they sign in and speak TLS (``--secure``).
        self.nodes = nodes
        self.naming = nodes.naming_addresses
        self.history = history
        self.now = now
        self.acknowledged: set[str] = set()
        self.received: set[str] = set()
        self.counts = {OK: 0, FAIL: 0, INFO: 0, RECEIVE: 0}
        #: Acknowledged sends per broker group (the receipt's), for the progress line.
        self.acknowledged_by_group: dict[str, int] = {}
        #: Errors that ended a consumer (it was started again), for the run's summary.
        self.consumer_errors: list[str] = []
        #: Set each time a value is received for the first time: the drain phase waits on it.
        self.progress = trio.Event()

    @property
    def unconsumed(self) -> int:
        """Acknowledged values the consumers have not finished with: the drain waits for 0."""
        return len(self.acknowledged - self.received)

    @property
    def progress_note(self) -> str:
        """What the progress line adds about this workload."""
        return ""

    async def setup(self, nodes: Nodes) -> None:
        """What the workload needs in the cluster besides the topic, before it starts."""

    async def settle(self, nodes: Nodes) -> None:
        """After the consumers saw every acknowledged value: what else the drain waits for."""

    async def produce(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            for index in range(self.options.producers):
                nursery.start_soon(self._producer, index, stop)

    async def consume(self) -> None:
        """Run the consumers until cancelled."""
        async with trio.open_nursery() as nursery:
            for index in range(self.options.consumers):
                nursery.start_soon(self._consumer, index)

    async def final_read(self, address: str) -> int:
        """Record every message still stored in one group, reading each of its queues from
        offset 0 at ``address`` (a node of the group that has applied its leader's commit
        index); returns how many."""
        nodes = self.nodes
        async with connect_admin(address, credentials=nodes.credentials, tls=nodes.tls) as admin:
            count = 0
            for stored in await read_topic(admin, TOPIC):
                count += 1
                self.history.add(
                    self.now(),
                    READER,
                    OK,
                    READ,
                    value=stored.body.decode(errors="replace"),
                    key=stored.keys[0] if stored.keys else None,
                    group=stored.group,
                    queue=stored.queue_id,
                    offset=stored.offset,
                    msg_id=stored.msg_id,
                )
            return count + await self._read_more(admin)

    async def _read_more(self, admin: AdminConnection) -> int:
        """What else the final read records, at the same node; returns how many."""
        return 0

    async def _producer(self, index: int, stop: trio.Event) -> None:
        process = f"p{index}"
        interval = self.options.producers / self.options.rate if self.options.rate else 0.0
        async with Producer(
            self.naming, credentials=self.nodes.credentials, tls=self.nodes.tls
        ) as producer:
            next_send = trio.current_time()
            for number in itertools.count(1):
                if stop.is_set():
                    return
                value = f"{process}-{number}"
                key = None
                if self.options.fifo:
                    key = f"k{index}-{number % self.options.keys_per_producer}"
                recorded, asked = self._schedule(process, number)
                self.history.add(
                    self.now(), process, INVOKE, SEND, value=value, key=key, **recorded
                )
                await self._send(producer, process, value, key, asked)
                # Paced, never bursting to catch up after a stall.
                next_send = max(next_send + interval, trio.current_time())
                await trio.sleep_until(next_send)

    def _schedule(self, process: str, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the next send records on its invoke, and what it passes to ``Producer.send``
        besides the body and keys (a delay)."""
        return {}, {}

    def _ok_fields(self, receipt: Receipt) -> dict[str, Any]:
        """Where an acknowledged send's receipt says it was stored, for its ``ok``."""
        return {"queue": receipt.queue_id, "offset": receipt.offset}

    async def _send(
        self,
        producer: Producer,
        process: str,
        value: str,
        key: str | None,
        asked: dict[str, Any],
    ) -> None:
        record = self.history.add
        try:
            with trio.move_on_after(self.options.send_timeout_s) as scope:
                receipt = await producer.send(
                    TOPIC, value.encode(), keys=[key] if key else (), sharding_key=key, **asked
                )
        except BadRequest as error:
            self.counts[FAIL] += 1
            record(self.now(), process, FAIL, SEND, value=value, key=key, error=repr(error))
            return
        except DledgerError as error:
            self.counts[INFO] += 1
            record(self.now(), process, INFO, SEND, value=value, key=key, error=repr(error))
            return
        if scope.cancelled_caught:
            self.counts[INFO] += 1
            record(self.now(), process, INFO, SEND, value=value, key=key, error="timeout")
            return
        self.counts[OK] += 1
        self.acknowledged.add(value)
        group = receipt.group
        self.acknowledged_by_group[group] = self.acknowledged_by_group.get(group, 0) + 1
        record(
            self.now(),
            process,
            OK,
            SEND,
            value=value,
            key=key,
            group=group,
            msg_id=receipt.msg_id,
            **self._ok_fields(receipt),
        )

    async def _consumer(self, index: int) -> None:
        # A consumer the SDK gives up on (say the topic vanished with a lost log) is started
        # again: the harness must keep observing whatever the cluster still delivers.
        while True:
            try:
                await self._consume_until_error(f"c{index}")
            except* DledgerError as group:
                self.consumer_errors.append(f"c{index}: {group.exceptions[0]!r}")
            await trio.sleep(0.5)

    async def _consume_until_error(self, process: str) -> None:
        async with Consumer(
            self.naming,
            group=GROUP,
            topic=TOPIC,
            credentials=self.nodes.credentials,
            tls=self.nodes.tls,
        ) as consumer:
            async for message in consumer:
                value = self._received(process, message)
                if self.options.fifo:
                    # Some processing time, so that a queue held by two consumers at once
                    # would show as overlapping holdings (the fifo_exclusive checker).
                    await trio.sleep(PROCESS_SECONDS)
                await message.ack()
                self.history.add(
                    self.now(),
                    process,
                    OK,
                    ACK,
                    value=value,
                    group=message.group,
                    queue=message.queue_id,
                    offset=message.offset,
                )

    def _received(self, process: str, message: ReceivedMessage) -> str:
        """Record a message handed to a consumer; returns its value."""
        value = message.body.decode(errors="replace")
        self.counts[RECEIVE] += 1
        self.history.add(
            self.now(),
            process,
            OK,
            RECEIVE,
            value=value,
            key=message.keys[0] if message.keys else None,
            group=message.group,
            queue=message.queue_id,
            offset=message.offset,
            msg_id=message.msg_id,
            **self._receive_fields(message),
        )
        if value not in self.received:
            self.received.add(value)
            self._advance()
        return value

    def _receive_fields(self, message: ReceivedMessage) -> dict[str, Any]:
        """What else a receive records (delays, attempts)."""
        return {}

    def _advance(self) -> None:
        """Wake the drain: a value it waits for may be done."""
        self.progress.set()
        self.progress = trio.Event()


async def read_topic(admin: AdminConnection, topic: str) -> list[StoredMessage]:
    """Every message of ``topic`` this node holds, each queue from offset 0 ([] when the topic
    is not there)."""
    info = next((t for t in await admin.list_topics() if t.name == topic), None)
    if info is None:
        return []
    found: list[StoredMessage] = []
    for queue_id in range(info.queue_count):
        offset = 0
        while True:
            reply: PullReply = await admin.connection.request(
                PullRequest(topic, queue_id, offset, 512)
            )
            found.extend(reply.messages)
            if reply.next_offset >= reply.max_offset or not reply.messages:
                break
            offset = reply.next_offset
    return found


def _property_ms(message: ReceivedMessage | StoredMessage, name: str) -> int | None:
    text = message.properties.get(name)
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


class DelayWorkload(Workload):
    """``delay``: every send delayed; receives record when each became visible."""

    def _schedule(self, process: str, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = random.Random(f"{self.seed}/{process}/{number}")
        delay_ms = round(rng.uniform(self.options.delay_min_s, self.options.delay_max_s) * 1000)
        asked_at = wall_ms()
        recorded: dict[str, Any] = {"delay_ms": delay_ms, "wall_ms": asked_at}
        if number % 2:
            return recorded, {"delay": timedelta(milliseconds=delay_ms)}
        # The time itself, for the other half: deliver_at is what the checker compares with.
        at_ms = asked_at + delay_ms
        recorded["deliver_at_ms"] = at_ms
        return recorded, {"deliver_at": datetime.fromtimestamp(at_ms / 1000, UTC)}

    def _ok_fields(self, receipt: Receipt) -> dict[str, Any]:
        # Stored as a timer: in no queue yet, the receipt's offset -1 is no position.
        fields: dict[str, Any] = {"queue": receipt.queue_id, "wall_ms": wall_ms()}
        if receipt.offset >= 0:
            fields["offset"] = receipt.offset
        return fields

    def _receive_fields(self, message: ReceivedMessage) -> dict[str, Any]:
        return {
            "stored_ms": message.stored.store_timestamp_ms,
            "deliver_at_ms": _property_ms(message, DELIVER_AT_PROPERTY),
            "wall_ms": wall_ms(),
        }


class HandlerFailure(Exception):
    """What the retry workload's handler raises on a delivery it fails."""


class RetryWorkload(Workload):
    """``retry``: handlers fail at random; failed messages are retried, then dead-lettered."""

    def __init__(
        self,
        options: WorkloadOptions,
        nodes: Nodes,
        history: History,
        now: Callable[[], float],
        seed: int = 0,
    ) -> None:
        super().__init__(options, nodes, history, now, seed)
        #: Values whose fate the consumers decided: handled, or failed at the last attempt.
        self.finished: set[str] = set()
        #: Values whose last attempt failed: the dead-letter topics must come to hold them.
        self.dead: set[str] = set()
        self.counts[NACK] = 0

    @property
    def unconsumed(self) -> int:
        return len(self.acknowledged - self.finished)

    @property
    def progress_note(self) -> str:
        return f" nacked {self.counts[NACK]:,}, last attempts failed {len(self.dead):,}"

    def fails(self, value: str, attempt: int) -> bool:
        """Whether the handler fails this delivery: the same for every delivery of it."""
        return random.Random(f"{self.seed}/{value}/{attempt}").random() < self.options.fail_rate

    async def setup(self, nodes: Nodes) -> None:
        """The group's policy in every broker group, through its leader, before any consumer
        of the group exists."""
        options = self.options
        for group in nodes.groups:
            while True:
                leader = await nodes.leader(group)
                if leader is not None:
                    try:
                        async with connect_admin(
                            nodes.members[leader].client,
                            credentials=nodes.credentials,
                            tls=nodes.tls,
                        ) as admin:
                            await admin.update_group(
                                GROUP, options.max_attempts, options.retry_delays_ms
                            )
                            break
                    except DledgerError:
                        pass
                await trio.sleep(0.1)

    async def settle(self, nodes: Nodes) -> None:
        """Until every group's dead-letter topic, read at its leader, holds every value whose
        last attempt failed (the consumer stores it there in the background)."""
        while True:
            found: set[str] = set()
            try:
                for leader in (await nodes.leaders()).values():
                    if leader is None:
                        break
                    async with connect_admin(
                        nodes.members[leader].client,
                        credentials=nodes.credentials,
                        tls=nodes.tls,
                    ) as admin:
                        found.update(
                            m.body.decode(errors="replace")
                            for m in await read_topic(admin, DEAD_LETTERS)
                        )
            except DledgerError:
                pass
            if self.dead <= found:
                return
            await trio.sleep(DEAD_LETTER_POLL_SECONDS)

    async def _read_more(self, admin: AdminConnection) -> int:
        letters = await read_topic(admin, DEAD_LETTERS)
        for stored in letters:
            attempts = _property_ms(stored, ATTEMPT_PROPERTY)
            self.history.add(
                self.now(),
                READER,
                OK,
                READ,
                value=stored.body.decode(errors="replace"),
                topic=DEAD_LETTERS,
                group=stored.group,
                queue=stored.queue_id,
                offset=stored.offset,
                msg_id=stored.msg_id,
                # The property is the attempt it would have been: one more than those made.
                attempt=attempts - 1 if attempts is not None else None,
                error=stored.properties.get(LAST_ERROR_PROPERTY),
            )
        return len(letters)

    def _receive_fields(self, message: ReceivedMessage) -> dict[str, Any]:
        read_from = message.stored.topic
        return {
            "topic": None if read_from == TOPIC else read_from,
            "attempt": message.attempt,
            "stored_ms": message.stored.store_timestamp_ms,
            "wall_ms": wall_ms(),
        }

    async def _consume_until_error(self, process: str) -> None:
        async with Consumer(
            self.naming,
            group=GROUP,
            topic=TOPIC,
            credentials=self.nodes.credentials,
            tls=self.nodes.tls,
        ) as consumer:

            async def handle(message: ReceivedMessage) -> None:
                await self._handle(process, message)

            await consumer.run(handle)

    async def _handle(self, process: str, message: ReceivedMessage) -> None:
        value = self._received(process, message)
        attempt = message.attempt
        place = {
            "group": message.group,
            "queue": message.queue_id,
            "offset": message.offset,
            "attempt": attempt,
        }
        read_from = message.stored.topic
        if read_from != TOPIC:
            place["topic"] = read_from
        if self.fails(value, attempt):
            failure = HandlerFailure(f"jepsen: {value} attempt {attempt} fails")
            self.counts[NACK] += 1
            # As the consumer words it for the broker (the dead letter's last error).
            error = f"{type(failure).__name__}: {failure}"
            self.history.add(
                self.now(), process, OK, NACK, value=value, error=error, wall_ms=wall_ms(), **place
            )
            if attempt >= self.options.max_attempts:
                self.dead.add(value)
                self._finish(value)
            raise failure
        self.history.add(self.now(), process, OK, ACK, value=value, **place)
        self._finish(value)

    def _finish(self, value: str) -> None:
        if value not in self.finished:
            self.finished.add(value)
            self._advance()
