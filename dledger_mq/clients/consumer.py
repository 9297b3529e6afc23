"""The consumer of a group, in clustering mode: the topic's queues are spread over the group's
live consumers, each message is delivered to one of them, and progress survives a failover.
On a FIFO topic each queue's messages are delivered one at a time, in order, each only after
the previous one was acknowledged.

    async with Consumer(naming="127.0.0.1:9876", group="billing", topic="orders",
                        tags="paid || refunded") as consumer:
        async for message in consumer:
            await message.ack()

A topic may be spread over several broker groups; the consumer reads each group on its own (a
group that fails over or goes down pauses only its own queues, and is picked up again when it
is back), and looks for groups the topic was extended to every few seconds. Every second it
heartbeats to each group's leader, naming the topic's queues in every group as naming lists
them; each leader spreads all of them over the live consumers, the same way, and answers with
its own group's share (rebalancing when a consumer joins or leaves). For each queue one task
long-polls from the consumer group's committed offset in that broker group and hands messages
to the ``async for``. Acknowledged offsets are committed through that group's log in batches; a
message not acknowledged before a failover or a rebalance is delivered again (at least once),
so processing should be idempotent (``msg_id`` is stable).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from types import TracebackType

import attrs
import trio

from dledger_mq.clients.routing import SILENCE_SECONDS, RoutedClient
from dledger_mq.errors import DledgerError, TopicNotFound, UsageError
from dledger_mq.wire.broker import (
    CommitOffsetsReply,
    CommitOffsetsRequest,
    ConsumerHeartbeat,
    ConsumerHeartbeatReply,
    GroupQueues,
    PullReply,
    PullRequest,
    QueryOffsetsReply,
    QueryOffsetsRequest,
    QueueOffset,
    StoredMessage,
)
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.rpc import ReplyT
from dledger_mq.wire.tls import TlsOption

HEARTBEAT_SECONDS = 1.0
#: A pull or offset query that finds no topic (a replica still replaying its log) waits this
#: long before it asks again.
TOPIC_RETRY_SECONDS = 0.1
#: How often the consumer asks naming which broker groups hold its topic.
DISCOVER_SECONDS = 5.0
COMMIT_SECONDS = 0.2
#: The longest a closing consumer spends on its final offset commit.
FINAL_COMMIT_SECONDS = 2.0
LONG_POLL_MS = 1000
PULL_BATCH = 64


@attrs.frozen(eq=False)
class ReceivedMessage:
    """A message as delivered; ``ack()`` marks it consumed for the group."""

    stored: StoredMessage
    _consumer: Consumer

    @property
    def body(self) -> bytes:
        return self.stored.body

    @property
    def msg_id(self) -> str:
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

    async def ack(self) -> None:
        self._consumer._acknowledge(self.stored.group, self.stored.queue_id, self.stored.offset)


class _QueueProgress:
    """Which offsets of one queue are done; the committable offset is the end of the done prefix."""

    def __init__(self, start: int) -> None:
        self.committed = start
        self.next_to_commit = start
        self._done: set[int] = set()
        #: Set (and replaced) whenever the done prefix grows: FIFO delivery waits on it.
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

    async def wait_done(self, offset: int) -> None:
        while self.next_to_commit <= offset:
            await self.advanced.wait()


class Consumer(RoutedClient):
    def __init__(
        self,
        naming: str | Sequence[str] = "127.0.0.1:9876",
        *,
        group: str,
        topic: str,
        tags: str = "*",
        broadcasting: bool = False,
        cluster_id: str = "local",
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        """``broadcasting``: every consumer of the group receives every message; progress is
        this consumer's own (in memory, from the topic's current end), never committed."""
        if not group or not topic:
            raise UsageError("a consumer needs a group and a topic")
        self.broadcasting = broadcasting
        self.group = group
        self.topic = topic
        self.tags = tags
        self.consumer_id = uuid.uuid4().hex
        super().__init__(naming, cluster_id, f"consumer-{self.consumer_id}", credentials, tls)
        self._send, self._receive = trio.open_memory_channel[ReceivedMessage](PULL_BATCH)
        #: One reader per broker group that holds the topic.
        self._readers: dict[str, _GroupReader] = {}

    @property
    def queues(self) -> tuple[tuple[str, int], ...]:
        """This consumer's queues, (broker group, queue id), as each group's leader last said."""
        return tuple(
            sorted(
                (broker_group, queue_id)
                for broker_group, reader in self._readers.items()
                for queue_id in reader.queue_ids
            )
        )

    @property
    def fifo(self) -> bool:
        """Whether the topic is FIFO, as a leader last said."""
        return any(reader.fifo for reader in self._readers.values())

    def layout(self) -> tuple[GroupQueues, ...]:
        """The topic's queues in every broker group that naming lists for it."""
        return tuple(
            GroupQueues(part.group, part.queues)
            for part in self.routes.cached_parts(self.topic)
            if part.queues > 0
        )

    async def __aenter__(self) -> Consumer:
        await self._open()
        self.nursery.start_soon(self._discover_loop)
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
                async with trio.open_nursery() as nursery:
                    for reader in self._readers.values():
                        nursery.start_soon(reader.final_commit)
        except BaseException:
            await self._close(kind, value, traceback)
            raise
        return await self._close(kind, value, traceback)

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> ReceivedMessage:
        return await self._receive.receive()

    def _acknowledge(self, broker_group: str, queue_id: int, offset: int) -> None:
        reader = self._readers.get(broker_group)
        if reader is not None:
            reader.acknowledge(queue_id, offset)

    async def _discover_loop(self) -> None:
        """A reader for every broker group of the topic, as naming lists them: now, and every
        ``DISCOVER_SECONDS`` (a topic extended to a new group is read there too). A reader is
        never stopped: a group that is down is read again when it is back."""
        while True:
            for part in await self.routes.parts(self.topic):
                if part.group not in self._readers:
                    reader = self._readers[part.group] = _GroupReader(self, part.group)
                    self.nursery.start_soon(reader.heartbeat_loop)
                    self.nursery.start_soon(reader.commit_loop)
            await trio.sleep(DISCOVER_SECONDS)
            with trio.move_on_after(SILENCE_SECONDS * 2):
                await self.routes.refresh(self.topic)


class _GroupReader:
    """What a consumer reads from one broker group: its share of the group's queues (from
    heartbeats to the group's leader), a puller per queue, and their progress and commits."""

    def __init__(self, consumer: Consumer, broker_group: str) -> None:
        self.consumer = consumer
        self.broker_group = broker_group
        self._progress: dict[int, _QueueProgress] = {}
        #: Per queue, the offset after the last message handed to the application.
        self._delivered_end: dict[int, int] = {}
        self._pullers: dict[int, trio.CancelScope] = {}
        #: This consumer's queues of this group, as its leader last said.
        self.queue_ids: tuple[int, ...] = ()
        #: Whether the topic is FIFO, as the leader last said.
        self.fifo = False
        #: The consumer group's reset generation our offsets were read at (None: not read yet).
        self.reset_generation: int | None = None

    async def _call(self, request: object, reply_type: type[ReplyT]) -> ReplyT:
        silence = SILENCE_SECONDS
        if isinstance(request, PullRequest):
            silence += request.wait_ms / 1000  # a long poll is silent on purpose
        while True:
            try:
                return await self.consumer.call_leader(
                    self.consumer.topic, self.broker_group, request, reply_type, silence
                )
            except TopicNotFound:
                if isinstance(request, ConsumerHeartbeat):
                    raise
                # A replica that restarted has not applied the topic's creation yet. Whether
                # the topic is gone for good is the heartbeat's to say (it stops the pullers).
                self.consumer.stalls.note(
                    f"topic {self.consumer.topic!r} in group {self.broker_group}",
                    "the replica has not applied it yet",
                )
                await trio.sleep(TOPIC_RETRY_SECONDS)

    def acknowledge(self, queue_id: int, offset: int) -> None:
        progress = self._progress.get(queue_id)
        if progress is not None:
            progress.done(offset)

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
                consumer.topic,
                consumer.consumer_id,
                consumer.broadcasting,
                self.held_queues(),
                consumer.layout(),
            )
            try:
                reply = await self._call(heartbeat, ConsumerHeartbeatReply)
            except TopicNotFound:
                queue_ids: tuple[int, ...] = ()  # not created yet: wait for the first send
                consumer.stalls.note(
                    f"topic {consumer.topic!r}",
                    "it does not exist yet (the first send creates it)",
                )
            else:
                queue_ids = reply.queue_ids
                self.fifo = reply.fifo
                if self.reset_generation is not None and (
                    reply.reset_generation != self.reset_generation
                ):
                    await self._restart_pullers()
            if queue_ids != self.queue_ids:
                await self._rebalance(queue_ids)
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
            offset = await self._committed_offset(queue_id)
            progress = self._progress[queue_id] = _QueueProgress(offset)
            task_status.started(scope)
            while True:
                request = PullRequest(
                    consumer.topic, queue_id, offset, PULL_BATCH, consumer.tags, LONG_POLL_MS
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
                    await consumer._send.send(ReceivedMessage(stored, consumer))
                    self._delivered_end[queue_id] = stored.offset + 1
                    if self.fifo:
                        # One at a time per queue: the next only after this one's ack.
                        await progress.wait_done(stored.offset)
                offset = reply.next_offset

    async def _committed_offset(self, queue_id: int) -> int:
        consumer = self.consumer
        if consumer.broadcasting:
            # Only what is stored from now on; an empty pull says where the queue ends.
            end = await self._call(PullRequest(consumer.topic, queue_id, 0, 1, "*", 0), PullReply)
            return end.max_offset
        offsets = await self._call(
            QueryOffsetsRequest(consumer.group, consumer.topic), QueryOffsetsReply
        )
        self.reset_generation = offsets.reset_generation
        for item in offsets.offsets:
            if item.queue_id == queue_id:
                return max(item.offset, 0)
        return 0

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
            return  # a broadcasting consumer's progress is its own
        offsets = tuple(
            QueueOffset(queue_id, progress.next_to_commit)
            for queue_id, progress in self._progress.items()
            if progress.next_to_commit > progress.committed
        )
        if not offsets:
            return
        reply = await self._call(
            CommitOffsetsRequest(consumer.group, consumer.topic, offsets, self.reset_generation),
            CommitOffsetsReply,
        )
        if reply.stale:
            await self._restart_pullers()
            return
        for item in offsets:
            progress = self._progress.get(item.queue_id)
            if progress is not None:
                progress.committed = max(progress.committed, item.offset)
