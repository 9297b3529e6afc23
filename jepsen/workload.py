"""The workloads: producers send unique values through the SDK, consumers in one group take them.

``queue``: each producer process ``pN`` sends ``"pN-1"``, ``"pN-2"``, ... one at a time, at a
paced rate; every send is recorded as ``invoke`` and then ``ok`` (with where it was stored),
``fail`` (the broker refused it: definitely not stored) or ``info`` (a timeout or any other
error: it may or may not have been stored). Consumers ``cN`` of one group record every message
handed to them (``receive``) and acknowledge it.

``fifo``: the same on a FIFO topic, each send with a sharding key ``kN-M`` owned by producer
``pN`` (the key also goes in the message's keys, so a receive can be checked per key).

With several broker groups the topic spans them all (the runner creates it in each); every
receipt and message names its group, which goes into the history with the queue: a queue is
(group, queue).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import trio

from dledger_mq.clients import Consumer, Producer
from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import BadRequest, DledgerError
from dledger_mq.wire.broker import PullReply, PullRequest
from jepsen.history import ACK, FAIL, INFO, INVOKE, OK, READ, READER, RECEIVE, SEND, History
from jepsen.nodes import Nodes

TOPIC = "jepsen"
GROUP = "jepsen-checker"
WORKLOADS = ("queue", "fifo")
#: How long a fifo consumer "processes" each message before acknowledging it.
PROCESS_SECONDS = 0.002


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

    @property
    def fifo(self) -> bool:
        return self.name == "fifo"


class Workload:
    def __init__(
        self,
        options: WorkloadOptions,
        nodes: Nodes,
        history: History,
        now: Callable[[], float],
    ) -> None:
        self.options = options
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
        return len(self.acknowledged - self.received)

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
        count = 0
        nodes = self.nodes
        async with connect_admin(address, credentials=nodes.credentials, tls=nodes.tls) as admin:
            topic = next((t for t in await admin.list_topics() if t.name == TOPIC), None)
            if topic is None:
                return 0
            for queue_id in range(topic.queue_count):
                offset = 0
                while True:
                    reply: PullReply = await admin.connection.request(
                        PullRequest(TOPIC, queue_id, offset, 512)
                    )
                    for stored in reply.messages:
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
                    if reply.next_offset >= reply.max_offset or not reply.messages:
                        break
                    offset = reply.next_offset
        return count

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
                self.history.add(self.now(), process, INVOKE, SEND, value=value, key=key)
                await self._send(producer, process, value, key)
                # Paced, never bursting to catch up after a stall.
                next_send = max(next_send + interval, trio.current_time())
                await trio.sleep_until(next_send)

    async def _send(self, producer: Producer, process: str, value: str, key: str | None) -> None:
        record = self.history.add
        try:
            with trio.move_on_after(self.options.send_timeout_s) as scope:
                receipt = await producer.send(
                    TOPIC, value.encode(), keys=[key] if key else (), sharding_key=key
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
            queue=receipt.queue_id,
            offset=receipt.offset,
            msg_id=receipt.msg_id,
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
                )
                if value not in self.received:
                    self.received.add(value)
                    self.progress.set()
                    self.progress = trio.Event()
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
