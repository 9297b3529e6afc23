"""The consumer of a group, in clustering mode: each topic's queues are spread over the group's
live consumers, each message is delivered to one of them, and progress survives a failover.
On a FIFO topic each queue's messages are delivered one at a time, in order, each only after
the previous one was settled.

    async with Consumer(naming="127.0.0.1:9876", group="billing",
                        subscriptions={"orders": "paid || refunded"}) as consumer:
        async for message in consumer:
            await message.ack()          # or: await message.nack("why")

    # or let the consumer settle each message: acknowledged when the handler returns,
    # retried when it raises
    await consumer.run(handle)

A message is settled once: ``ack()``, or ``nack()`` (a handler that raised, or a message not
settled within ``invisible_duration``, is nacked). A nacked message is stored again by the
broker in the group's retry topic (``%RETRY%group``, which every consumer of the group also
reads) and delivered after the group's next retry delay with ``attempt`` one higher; after the
group's last attempt it goes to the dead-letter topic (``%DLQ%group``) instead. Either way its
queue moves on: a failing message never holds back the group's committed offset. On a FIFO
queue a nacked message is retried in place, after the same delays, and the queue waits.

A topic may be spread over several broker groups; the consumer reads each group on its own (a
group that fails over or goes down pauses only its own queues, and is picked up again when it
is back), and looks for groups a topic was extended to every few seconds. Every second it
heartbeats to each group's leader, naming the topic's queues in every group as naming lists
them; each leader spreads all of them over the live consumers, the same way, and answers with
its own group's share (rebalancing when a consumer joins or leaves). For each queue one task
long-polls from the consumer group's committed offset in that broker group and hands messages
to the ``async for``. Acknowledged offsets are committed through that group's log in batches; a
message not settled before a failover or a rebalance is delivered again (at least once), so
processing should be idempotent (``msg_id`` is stable, also across retries).

A group that never committed in a queue starts where ``start`` says: ``"earliest"`` (the first
message kept, the default, so nothing stored before the first start is skipped),
``"latest"`` (what is stored from now on) or an aware ``datetime`` (the first message stored at
or after it). A broadcasting consumer (every consumer of the group gets every message) keeps
its progress in a local file (``offsets_path``) and resumes from it.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal

import attrs
import structlog
import trio

from dledger_mq.clients import tracing
from dledger_mq.clients.inputs import check_subscriptions
from dledger_mq.clients.routing import SILENCE_SECONDS, RoutedClient
from dledger_mq.errors import (
    BadRequest,
    DledgerError,
    TopicNotFound,
    UsageError,
    sole_error_unwrapped,
)
from dledger_mq.wire.broker import (
    ORIGIN_TOPIC_PROPERTY,
    CommitOffsetsReply,
    CommitOffsetsRequest,
    ConsumerHeartbeat,
    ConsumerHeartbeatReply,
    GroupQueues,
    OffsetForTimeReply,
    OffsetForTimeRequest,
    PullReply,
    PullRequest,
    QueryOffsetsReply,
    QueryOffsetsRequest,
    QueueOffset,
    SendBackReply,
    SendBackRequest,
    StoredMessage,
    attempt_of,
    retry_topic,
    system_topic_group,
)
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.files import write_file_durably
from dledger_mq.wire.rpc import ReplyT
from dledger_mq.wire.tls import TlsOption

logger = structlog.get_logger()

HEARTBEAT_SECONDS = 1.0
#: A pull or offset query that finds no topic (a replica still replaying its log) waits this
#: long before it asks again.
TOPIC_RETRY_SECONDS = 0.1
#: How often the consumer asks naming which broker groups hold its topics.
DISCOVER_SECONDS = 5.0
COMMIT_SECONDS = 0.2
#: The longest a closing consumer spends on its final offset commit.
FINAL_COMMIT_SECONDS = 2.0
LONG_POLL_MS = 1000
PULL_BATCH = 64
#: A message not settled this long after the application received it is nacked (RocketMQ's
#: push consumer: consumeTimeout, 15 minutes).
DEFAULT_INVISIBLE_DURATION = timedelta(minutes=15)
#: A send-back the broker cannot take yet (no leader, a full disk) is tried again after this.
SEND_BACK_RETRY_SECONDS = 1.0

StartPosition = Literal["earliest", "latest"] | datetime


def default_offsets_path(group: str) -> Path:
    """Where a broadcasting consumer of ``group`` keeps its progress, unless told otherwise."""
    return Path.home() / ".dledger-mq" / "broadcast" / f"{group}.json"


class StoredMessageView:
    """What a delivered message shows of its ``stored`` form (both consumers' messages)."""

    stored: StoredMessage

    @property
    def body(self) -> bytes:
        return self.stored.body

    @property
    def msg_id(self) -> str:
        """The id its first store gave it: the same on every retry."""
        return self.stored.msg_id

    @property
    def tags(self) -> str | None:
        return self.stored.tags

    @property
    def keys(self) -> tuple[str, ...]:
        return self.stored.keys

    @property
    def properties(self) -> dict[str, str]:
        return self.stored.properties

    @property
    def queue_id(self) -> int:
        return self.stored.queue_id

    @property
    def group(self) -> str:
        """The broker group that stored it: its queue is (``group``, ``queue_id``)."""
        return self.stored.group

    @property
    def offset(self) -> int:
        return self.stored.offset


@attrs.define(eq=False)
class ReceivedMessage(StoredMessageView):
    """A message as delivered; settle it once, with ``ack()`` or ``nack()``."""

    stored: StoredMessage
    _consumer: Consumer
    _reader: _GroupReader
    #: Which delivery this is (1: the first).
    attempt: int = 1
    #: When it is nacked unless settled before (trio clock), once the application has it.
    deadline: float = math.inf
    #: "ack" or "nack" once settled.
    outcome: str | None = None
    _settled: trio.Event = attrs.Factory(trio.Event)

    @property
    def topic(self) -> str:
        """The topic it was sent to (for a retried message too, though it is read from the
        group's retry topic)."""
        return self.stored.properties.get(ORIGIN_TOPIC_PROPERTY, self.stored.topic)

    @property
    def settled(self) -> bool:
        return self.outcome is not None

    async def ack(self) -> None:
        """Done with it: the group's offset may move past it. Ignored once settled (a message
        nacked for running past its invisible duration stays nacked)."""
        if self._settle("ack"):
            self._reader.acknowledge(self)

    async def nack(self, error: str | BaseException | None = None) -> None:
        """Failed: delivered again after the group's retry delay (``attempt`` one higher), or
        to the dead-letter topic after the last attempt. Returns at once; the broker is told in
        the background. Ignored once settled."""
        if self._settle("nack"):
            self._reader.nacked(self, _error_text(error))

    def _settle(self, outcome: str) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self._settled.set()
        self._consumer._unsettled.discard(self)
        return True


def _error_text(error: str | BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return error


class _QueueProgress:
    """Which offsets of one queue are done; the committable offset is the end of the done prefix."""

    def __init__(self, start: int) -> None:
        self.committed = start
        self.next_to_commit = start
        self._done: set[int] = set()
        #: Set (and replaced) whenever the done prefix grows.
        self.advanced = trio.Event()

    def done(self, offset: int) -> None:
        self.done_range(offset, offset + 1)

    def done_range(self, start: int, end: int) -> None:
        """Offsets ``[start, end)`` are done: in constant time when they extend the done
        prefix (a filter left them out, or retention deleted millions of them)."""
        before = self.next_to_commit
        if start <= self.next_to_commit:
            self.next_to_commit = max(self.next_to_commit, end)
        else:
            self._done.update(range(start, end))
        while self.next_to_commit in self._done:
            self._done.discard(self.next_to_commit)
            self.next_to_commit += 1
        if self._done and min(self._done) < self.next_to_commit:
            self._done = {offset for offset in self._done if offset >= self.next_to_commit}
        if self.next_to_commit != before:
            self.advanced.set()
            self.advanced = trio.Event()


class Consumer(RoutedClient):
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        group: str,
        topic: str | None = None,
        tags: str = "*",
        subscriptions: Mapping[str, str] | None = None,
        broadcasting: bool = False,
        start: StartPosition = "earliest",
        invisible_duration: timedelta = DEFAULT_INVISIBLE_DURATION,
        offsets_path: str | Path | None = None,
        cluster_id: str = "local",
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        """``subscriptions``: topic -> tag expression (``topic`` and ``tags`` name one).
        ``broadcasting``: every consumer of the group receives every message; progress is this
        consumer's own, in ``offsets_path`` (default ``~/.dledger-mq/broadcast/GROUP.json``:
        two broadcasting consumers of one group on one machine need a path each), and a failed
        message is not retried."""
        wanted = dict(subscriptions or {})
        if topic is not None:
            wanted.setdefault(topic, tags)
        check_subscriptions(group, wanted)
        for name in wanted:
            if system_topic_group(name) is not None:
                raise UsageError(f"{name!r}: a group's retry topic is read by the group itself")
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise UsageError("start must be an aware datetime (with a time zone)")
        elif start not in ("earliest", "latest"):
            raise UsageError("start must be 'earliest', 'latest' or an aware datetime")
        if invisible_duration <= timedelta(0):
            raise UsageError("invisible_duration must be positive")
        self.broadcasting = broadcasting
        self.group = group
        #: topic -> tag expression, as the application asked.
        self.subscriptions = dict(wanted)
        if not broadcasting:
            wanted[retry_topic(group)] = "*"
        self._topics = wanted
        self.start = start
        self.invisible_duration = invisible_duration
        self.offsets_path = (
            Path(offsets_path) if offsets_path is not None else default_offsets_path(group)
        )
        self.consumer_id = uuid.uuid4().hex
        self._saving_broadcast_offsets = trio.Lock()
        super().__init__(naming, cluster_id, f"consumer-{self.consumer_id}", credentials, tls)
        self._send, self._receive = trio.open_memory_channel[ReceivedMessage](PULL_BATCH)
        #: One reader per (topic, broker group) that holds the topic.
        self._readers: dict[tuple[str, str], _GroupReader] = {}
        #: Messages the application holds, not yet settled: nacked at their deadline.
        self._unsettled: set[ReceivedMessage] = set()
        self._deadlines: list[tuple[float, int, ReceivedMessage]] = []
        self._deadline_added = trio.Event()
        self._delivered = 0
        #: Idempotence of send-backs: this consumer's own producer id and sequence.
        self._send_back_producer = f"retry-{self.consumer_id}"
        self._send_back_sequence = 0
        #: Send-backs under way: a closing consumer lets them finish (briefly) before its
        #: final commit, so that a nacked message is not delivered again as well.
        self._sending_back = 0
        self._sent_back = trio.Event()
        #: A broadcasting consumer's progress: (topic, broker group, queue) -> next offset.
        self._saved_offsets: dict[tuple[str, str, int], int] = {}

    @property
    def topic(self) -> str:
        """The first topic subscribed to (a consumer of one topic: that one)."""
        return next(iter(self.subscriptions))

    @property
    def queues(self) -> tuple[tuple[str, int], ...]:
        """This consumer's queues of its subscribed topics, (broker group, queue id), as each
        group's leader last said (the retry topic's aside)."""
        return tuple(
            sorted(
                (broker_group, queue_id)
                for (topic, broker_group), reader in self._readers.items()
                if topic in self.subscriptions
                for queue_id in reader.queue_ids
            )
        )

    @property
    def fifo(self) -> bool:
        """Whether a topic read is FIFO, as a leader last said."""
        return any(reader.fifo for reader in self._readers.values())

    def layout(self, topic: str) -> tuple[GroupQueues, ...]:
        """The topic's queues in every broker group that naming lists for it."""
        return tuple(
            GroupQueues(part.group, part.queues)
            for part in self.routes.cached_parts(topic)
            if part.queues > 0
        )

    async def __aenter__(self) -> Consumer:
        if self.broadcasting:
            self._saved_offsets = await trio.to_thread.run_sync(
                read_broadcast_offsets, self.offsets_path
            )
        await self._open()
        self.nursery.start_soon(self._discover_loop)
        self.nursery.start_soon(self._deadline_loop)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # Commit what was acknowledged before leaving, so that the next owner starts there: at
        # most FINAL_COMMIT_SECONDS, and best effort (what is not committed is delivered again).
        # The connections must be closed whatever happens: they outlive cancellation.
        try:
            with trio.move_on_after(FINAL_COMMIT_SECONDS) as scope:
                scope.shield = True
                while self._sending_back:
                    await self._sent_back.wait()
                async with trio.open_nursery() as nursery:
                    for reader in self._readers.values():
                        nursery.start_soon(reader.final_commit)
                if self.broadcasting:
                    await self._save_broadcast_offsets()
        except BaseException:
            await self._close(kind, value, traceback)
            raise
        return await self._close(kind, value, traceback)

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> ReceivedMessage:
        message = await self._receive.receive()
        message.deadline = trio.current_time() + self.invisible_duration.total_seconds()
        self._unsettled.add(message)
        self._delivered += 1
        heapq.heappush(self._deadlines, (message.deadline, self._delivered, message))
        self._deadline_added.set()
        return message

    async def run(
        self,
        handler: Callable[[ReceivedMessage], Awaitable[object]],
        *,
        concurrency: int = 1,
    ) -> None:
        """Hand every message to ``handler``, ``concurrency`` at a time, until cancelled: a
        message is acknowledged when the handler returns (unless it settled the message
        itself) and nacked with the exception when it raises one. With OpenTelemetry, each call
        is a ``process TOPIC`` span continuing the producer's trace (``clients/tracing.py``)."""
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")

        model = "broadcasting" if self.broadcasting else "clustering"

        async def work() -> None:
            async for message in self:
                with tracing.processing(self.group, message, consumption_model=model) as outcome:
                    try:
                        await handler(message)
                    except Exception as error:  # the application's failure: a retry, not a crash
                        outcome.failed(error)
                        await message.nack(error)
                    else:
                        await message.ack()

        with sole_error_unwrapped():  # Ctrl-C comes out as KeyboardInterrupt, not in a group
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(work)

    async def _deadline_loop(self) -> None:
        """Nack each message the application did not settle within its invisible duration."""
        while True:
            while self._deadlines and self._deadlines[0][2].settled:
                heapq.heappop(self._deadlines)
            wait = math.inf
            if self._deadlines:
                wait = self._deadlines[0][0] - trio.current_time()
                if wait <= 0:
                    _, _, message = heapq.heappop(self._deadlines)
                    seconds = self.invisible_duration.total_seconds()
                    await message.nack(f"not settled within its invisible duration ({seconds} s)")
                    continue
            self._deadline_added = trio.Event()
            with trio.move_on_after(wait):
                await self._deadline_added.wait()

    def _next_send_back_sequence(self) -> int:
        self._send_back_sequence += 1
        return self._send_back_sequence

    async def _discover_loop(self) -> None:
        """A reader for every broker group of every topic, as naming lists them: now, and
        every ``DISCOVER_SECONDS`` (a topic extended to a new group is read there too). A
        reader is never stopped: a group that is down is read again when it is back."""
        while True:
            for topic, tags in self._topics.items():
                for part in await self.routes.parts(topic):
                    if (topic, part.group) not in self._readers:
                        reader = _GroupReader(self, topic, tags, part.group)
                        self._readers[(topic, part.group)] = reader
                        self.nursery.start_soon(reader.heartbeat_loop)
                        self.nursery.start_soon(reader.commit_loop)
            await trio.sleep(DISCOVER_SECONDS)
            with trio.move_on_after(SILENCE_SECONDS * 2):
                for topic in self._topics:
                    await self.routes.refresh(topic)

    # -- broadcasting progress ---------------------------------------------------------------

    def saved_offset(self, topic: str, broker_group: str, queue_id: int) -> int | None:
        return self._saved_offsets.get((topic, broker_group, queue_id))

    def save_offset(self, topic: str, broker_group: str, queue_id: int, offset: int) -> None:
        self._saved_offsets[(topic, broker_group, queue_id)] = offset

    async def _save_broadcast_offsets(self) -> None:
        # One writer at a time: every reader saves on its own heartbeat and leaving saves once
        # more, and two writes at once would race on the one temporary file.
        async with self._saving_broadcast_offsets:
            data = encode_broadcast_offsets(self._saved_offsets)
            await trio.to_thread.run_sync(write_file_durably, self.offsets_path, data)


class _GroupReader:
    """What a consumer reads of one topic from one broker group: its share of the group's
    queues (from heartbeats to the group's leader), a puller per queue, and their progress and
    commits."""

    def __init__(self, consumer: Consumer, topic: str, tags: str, broker_group: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.tags = tags
        self.broker_group = broker_group
        #: The group's own retry topic: it may well not exist (no message failed yet).
        self.is_retry_topic = system_topic_group(topic) is not None
        self._progress: dict[int, _QueueProgress] = {}
        #: Per queue, the offset after the last message handed to the application.
        self._delivered_end: dict[int, int] = {}
        self._pullers: dict[int, trio.CancelScope] = {}
        #: This consumer's queues of this group, as its leader last said.
        self.queue_ids: tuple[int, ...] = ()
        #: Whether the topic is FIFO, as the leader last said.
        self.fifo = False
        #: The consumer group's retry policy, as the leader last said.
        self.max_attempts = 0
        self.retry_delays_ms: tuple[int, ...] = ()
        #: The consumer group's reset generation our offsets were read at (None: not read yet).
        self.reset_generation: int | None = None
        self._broadcast_dirty = False

    async def _call(self, request: object, reply_type: type[ReplyT]) -> ReplyT:
        silence = SILENCE_SECONDS
        if isinstance(request, PullRequest):
            silence += request.wait_ms / 1000  # a long poll is silent on purpose
        while True:
            try:
                return await self.consumer.call_leader(
                    self.topic, self.broker_group, request, reply_type, silence
                )
            except TopicNotFound:
                if isinstance(request, ConsumerHeartbeat):
                    raise
                # A replica that restarted has not applied the topic's creation yet. Whether
                # the topic is gone for good is the heartbeat's to say (it stops the pullers).
                self.consumer.stalls.note(
                    f"topic {self.topic!r} in group {self.broker_group}",
                    "the replica has not applied it yet",
                )
                await trio.sleep(TOPIC_RETRY_SECONDS)

    def acknowledge(self, message: ReceivedMessage) -> None:
        progress = self._progress.get(message.queue_id)
        if progress is not None:
            progress.done(message.offset)
            if self.consumer.broadcasting:
                self._broadcast_dirty = True

    def nacked(self, message: ReceivedMessage, error: str) -> None:
        if self.fifo or self.consumer.broadcasting:
            # A FIFO queue retries in place (its puller waits on the outcome); a broadcasting
            # consumer's failures are its own: not retried, the queue moves on.
            if self.consumer.broadcasting and not self.fifo:
                self.acknowledge(message)
            return
        self.consumer.nursery.start_soon(self._send_back, message, error, False)

    async def _send_back(self, message: ReceivedMessage, error: str, dead_letter: bool) -> None:
        """Have the broker store the failed message for its next attempt (or as a dead
        letter), then move the queue past it. Tried until it is done; the queue's committed
        offset waits meanwhile, so a consumer that dies first leaves it to be delivered again."""
        consumer = self.consumer
        consumer._sending_back += 1
        try:
            await self._send_back_until_done(message, error, dead_letter)
        finally:
            consumer._sending_back -= 1
            consumer._sent_back.set()
            consumer._sent_back = trio.Event()

    async def _send_back_until_done(
        self, message: ReceivedMessage, error: str, dead_letter: bool
    ) -> None:
        consumer = self.consumer
        request = SendBackRequest(
            consumer.group,
            self.topic,
            message.queue_id,
            message.offset,
            error,
            consumer._send_back_producer,
            consumer._next_send_back_sequence(),
            dead_letter,
        )
        while True:
            try:
                reply = await self._call(request, SendBackReply)
            except BadRequest as refused:
                # The message is gone (retention deleted it, its topic was deleted): nothing
                # to retry; the queue moves on.
                logger.warning("send_back_refused", msg_id=message.msg_id, reason=str(refused))
                break
            except DledgerError as problem:
                consumer.stalls.note(f"retry of {message.msg_id}", str(problem))
                await trio.sleep(SEND_BACK_RETRY_SECONDS)
                continue
            if reply.dead_letter:
                logger.info(
                    "message_dead_lettered",
                    msg_id=message.msg_id,
                    group=consumer.group,
                    attempts=message.attempt,
                )
            break
        self.acknowledge(message)

    # -- membership ------------------------------------------------------------------------------

    def held_queues(self) -> tuple[int, ...]:
        """Queues read now, or with a delivered message not yet acknowledged."""
        in_flight = {
            queue_id
            for queue_id, progress in self._progress.items()
            if progress.next_to_commit < self._delivered_end.get(queue_id, 0)
        }
        return tuple(sorted(set(self._pullers) | in_flight))

    async def heartbeat_loop(self) -> None:
        consumer = self.consumer
        while True:
            heartbeat = ConsumerHeartbeat(
                consumer.group,
                self.topic,
                consumer.consumer_id,
                consumer.broadcasting,
                self.held_queues(),
                consumer.layout(self.topic),
            )
            try:
                reply = await self._call(heartbeat, ConsumerHeartbeatReply)
            except TopicNotFound:
                queue_ids: tuple[int, ...] = ()  # not created yet: wait for the first send
                if not self.is_retry_topic:
                    consumer.stalls.note(
                        f"topic {self.topic!r}",
                        "it does not exist yet (the first send creates it)",
                    )
            else:
                queue_ids = reply.queue_ids
                self.fifo = reply.fifo
                self.max_attempts = reply.max_attempts
                self.retry_delays_ms = reply.retry_delays_ms
                if self.reset_generation is not None and (
                    reply.reset_generation != self.reset_generation
                ):
                    await self._restart_pullers()
            if queue_ids != self.queue_ids:
                await self._rebalance(queue_ids)
            if consumer.broadcasting and self._broadcast_dirty:
                self._broadcast_dirty = False
                await consumer._save_broadcast_offsets()
            await trio.sleep(HEARTBEAT_SECONDS)

    async def _restart_pullers(self) -> None:
        """The group's offsets were reset: drop what is unacknowledged, read from the new ones."""
        for scope in self._pullers.values():
            scope.cancel()
        self._pullers.clear()
        self._progress.clear()
        self._delivered_end.clear()
        self.reset_generation = None
        self.queue_ids = ()  # the next rebalance starts every puller again

    async def _rebalance(self, queue_ids: tuple[int, ...]) -> None:
        released = set(self._pullers) - set(queue_ids)
        for queue_id in released:
            self._pullers.pop(queue_id).cancel()
        await self.commit()
        held = set(self.held_queues())
        for queue_id in list(self._progress):
            # A released queue's progress stays while a delivered message of it is not yet
            # acknowledged (its ack is still committed, and the queue is still held).
            if queue_id not in self._pullers and queue_id not in held:
                self._progress.pop(queue_id)
                self._delivered_end.pop(queue_id, None)
        for queue_id in set(queue_ids) - set(self._pullers):
            self._pullers[queue_id] = await self.consumer.nursery.start(self._pull_loop, queue_id)
        self.queue_ids = queue_ids

    # -- reading -----------------------------------------------------------------------------

    async def _pull_loop(
        self, queue_id: int, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        consumer = self.consumer
        with trio.CancelScope() as scope:
            # Started only once the start offset is known, so that ``queue_ids`` means ready.
            offset, committed = await self._start_offset(queue_id)
            progress = self._progress[queue_id] = _QueueProgress(offset)
            # A start chosen here ("latest", a time) is committed, so that the group keeps it.
            progress.committed = committed
            task_status.started(scope)
            while True:
                request = PullRequest(
                    self.topic,
                    queue_id,
                    offset,
                    PULL_BATCH,
                    self.tags,
                    LONG_POLL_MS,
                    consumer.group,
                )
                reply = await self._call(request, PullReply)
                # What the tag filter left out, or retention deleted, counts as consumed.
                gap_start = offset
                for stored in reply.messages:
                    if stored.offset > gap_start:
                        progress.done_range(gap_start, stored.offset)
                    gap_start = stored.offset + 1
                if reply.next_offset > gap_start:
                    progress.done_range(gap_start, reply.next_offset)
                for stored in reply.messages:
                    if self.fifo:
                        await self._deliver_in_place(stored)
                    else:
                        message = ReceivedMessage(
                            stored, consumer, self, attempt_of(stored.properties)
                        )
                        await consumer._send.send(message)
                        self._delivered_end[queue_id] = stored.offset + 1
                offset = reply.next_offset

    async def _deliver_in_place(self, stored: StoredMessage) -> None:
        """FIFO: deliver the message until it is acknowledged, waiting the group's retry delay
        after each nack; after the last attempt it goes to the dead-letter topic. The queue's
        next message waits meanwhile."""
        consumer = self.consumer
        attempt = attempt_of(stored.properties)
        while True:
            message = ReceivedMessage(stored, consumer, self, attempt)
            await consumer._send.send(message)
            self._delivered_end[stored.queue_id] = stored.offset + 1
            await message._settled.wait()
            if message.outcome == "ack" or consumer.broadcasting:
                if message.outcome != "ack":
                    self.acknowledge(message)
                return
            if self.max_attempts and attempt >= self.max_attempts:
                await self._send_back(message, "no attempt left (FIFO, retried in place)", True)
                return
            delays = self.retry_delays_ms or (1000,)
            await trio.sleep(delays[min(attempt - 1, len(delays) - 1)] / 1000)
            attempt += 1

    async def _start_offset(self, queue_id: int) -> tuple[int, int]:
        """Where this consumer reads the queue from, and the offset committed there already
        (below the start when the start was chosen here and should be committed)."""
        consumer = self.consumer
        if consumer.broadcasting:
            saved = consumer.saved_offset(self.topic, self.broker_group, queue_id)
            if saved is not None:
                return saved, saved
            start = await self._chosen_start(queue_id)
            consumer.save_offset(self.topic, self.broker_group, queue_id, start)
            return start, start
        offsets = await self._call(
            QueryOffsetsRequest(consumer.group, self.topic), QueryOffsetsReply
        )
        self.reset_generation = offsets.reset_generation
        for item in offsets.offsets:
            if item.queue_id == queue_id and item.offset >= 0:
                return item.offset, item.offset
        start = await self._chosen_start(queue_id)
        return start, -1 if start > 0 else start

    async def _chosen_start(self, queue_id: int) -> int:
        """The offset ``start`` names in a queue the group never read."""
        start = self.consumer.start
        if self.is_retry_topic or start == "earliest":
            return 0  # a pull from below the first message kept reads from that one
        if start == "latest":
            end = await self._call(PullRequest(self.topic, queue_id, 0, 1, "*", 0), PullReply)
            return end.max_offset
        assert isinstance(start, datetime)
        reply = await self._call(
            OffsetForTimeRequest(self.topic, queue_id, int(start.timestamp() * 1000)),
            OffsetForTimeReply,
        )
        return reply.offset

    # -- progress ------------------------------------------------------------------------------

    async def commit_loop(self) -> None:
        while True:
            await trio.sleep(COMMIT_SECONDS)
            await self.commit()

    async def final_commit(self) -> None:
        with contextlib.suppress(DledgerError):
            await self.commit()

    async def commit(self) -> None:
        consumer = self.consumer
        if consumer.broadcasting:
            # A broadcasting consumer's progress is its own: kept in its file.
            for queue_id, progress in self._progress.items():
                consumer.save_offset(
                    self.topic, self.broker_group, queue_id, progress.next_to_commit
                )
            return
        offsets = tuple(
            QueueOffset(queue_id, progress.next_to_commit)
            for queue_id, progress in self._progress.items()
            if progress.next_to_commit > progress.committed
        )
        if not offsets:
            return
        reply = await self._call(
            CommitOffsetsRequest(consumer.group, self.topic, offsets, self.reset_generation),
            CommitOffsetsReply,
        )
        if reply.stale:
            await self._restart_pullers()
            return
        for item in offsets:
            kept = self._progress.get(item.queue_id)
            if kept is not None:
                kept.committed = max(kept.committed, item.offset)


# -- a broadcasting consumer's progress file ---------------------------------------------------

_OFFSETS_FORMAT_VERSION = 1
#: A progress file larger than this is not one (topics x groups x queues of one consumer).
MAX_OFFSETS_FILE_BYTES = 16 << 20


def encode_broadcast_offsets(offsets: Mapping[tuple[str, str, int], int]) -> bytes:
    entries = [
        {"topic": topic, "group": group, "queue": queue_id, "offset": offset}
        for (topic, group, queue_id), offset in sorted(offsets.items())
    ]
    document = {"version": _OFFSETS_FORMAT_VERSION, "saved_at": time.time(), "offsets": entries}
    return json.dumps(document, indent=1).encode()


def read_broadcast_offsets(path: Path) -> dict[tuple[str, str, int], int]:
    """What ``encode_broadcast_offsets`` wrote; {} when there is no file. ``UsageError`` when
    the file is not one (it is written whole or not at all, so that is not a crash's doing)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_OFFSETS_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise UsageError(f"cannot read the consumer's progress file {path}: {error}") from None
    try:
        if len(data) > MAX_OFFSETS_FILE_BYTES:
            raise ValueError(f"larger than {MAX_OFFSETS_FILE_BYTES} bytes")
        document = json.loads(data)
        if document.get("version") != _OFFSETS_FORMAT_VERSION:
            raise ValueError(f"format version {document.get('version')!r}")
        offsets: dict[tuple[str, str, int], int] = {}
        for entry in document["offsets"]:
            topic, group, queue_id, offset = (
                entry["topic"],
                entry["group"],
                entry["queue"],
                entry["offset"],
            )
            if not (
                isinstance(topic, str)
                and isinstance(group, str)
                and type(queue_id) is int
                and type(offset) is int
                and offset >= 0
            ):
                raise ValueError(f"a bad entry {entry!r:.80}")
            offsets[(topic, group, queue_id)] = offset
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(
            f"the consumer's progress file {path} is not one ({error}); move it away to start "
            "from the consumer's start position"
        ) from None
    return offsets
