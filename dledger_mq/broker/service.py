"""The broker's request handlers on one replica: send (leader only), pull, offsets, and the
administration of topics and consumer groups. ``handlers()`` maps each request type to its
handler; the node adds its replica's own requests to that one table.

A send becomes one SEND_BATCH entry: the leader picks queues, validates, stamps the store time
and proposes; the reply is what ``BrokerState.apply`` made of it (receipts, or the original's
receipt for a retried idempotent send). A pull reads the consume queue of this replica's state,
which holds only committed entries, and the messages from the CommitLog; with nothing new it
waits (long polling) until something is applied or ``wait_ms`` passes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import structlog
import trio

from dledger_mq.broker.access import Rule, User
from dledger_mq.broker.assignment import (
    RoundRobinQueues,
    fifo_grant,
    queues_of,
    select_queue,
)
from dledger_mq.broker.key_index import KeyIndex
from dledger_mq.broker.message_id import format_message_id
from dledger_mq.broker.queries import MessageQueries
from dledger_mq.broker.records import (
    MAX_INVISIBLE_MS,
    MAX_PRODUCER_ID_LENGTH,
    MAX_QUEUE_COUNT,
    SLOT_BITS,
    AckPopped,
    AddUser,
    BrokerSettings,
    ChangeInvisible,
    CommitOffsets,
    ConfigureBroker,
    ConfigureGroup,
    CreateTopic,
    DeleteGroup,
    DeleteTopic,
    DeliverTimers,
    Grant,
    Message,
    OffsetCommit,
    PopMessages,
    PoppedRef,
    PopQueue,
    RemoveUser,
    ResetOffsets,
    RetryPolicy,
    Revoke,
    SendBatch,
    UpdateTopic,
    check_group_name,
    check_name,
    encode_command,
    read_messages,
)
from dledger_mq.broker.records import QueueOffset as RecordQueueOffset
from dledger_mq.broker.state import (
    BrokerState,
    CommitOutcome,
    GroupDeleted,
    InvisibleChanged,
    MessagesPopped,
    OffsetsCommitted,
    OffsetsReset,
    PoppedAcked,
    Refused,
    SendBatchResult,
    SendReceipt,
    TopicCreated,
    TopicDeleted,
    TopicUpdated,
    UsersChanged,
)
from dledger_mq.broker.tag_filter import TagFilter, parse_tag_expression
from dledger_mq.broker.traffic import Traffic
from dledger_mq.errors import (
    BadRequest,
    DiskFull,
    DledgerError,
    InvalidMessage,
    InvalidName,
    NotLeader,
    TopicNotFound,
    Unavailable,
)
from dledger_mq.raft.pure.core import RaftCore
from dledger_mq.raft.pure.log_store import LogCompacted, LogStore
from dledger_mq.wire.admin import (
    AddUserRequest,
    CreateTopicReply,
    CreateTopicRequest,
    DeleteGroupRequest,
    DeleteTopicRequest,
    DescribeGroupReply,
    DescribeGroupRequest,
    GrantRequest,
    GroupDeletedReply,
    GroupInfo,
    GroupPolicyReply,
    ListGroupsReply,
    ListGroupsRequest,
    ListTopicsReply,
    ListTopicsRequest,
    ListUsersReply,
    ListUsersRequest,
    QueueLagInfo,
    QueueStatus,
    RemoveUserRequest,
    ResetOffsetReply,
    ResetOffsetRequest,
    RevokeRequest,
    RuleInfo,
    TopicChangedReply,
    TopicInfo,
    TopicStatusReply,
    TopicStatusRequest,
    UpdateGroupRequest,
    UpdateTopicRequest,
    UserChangedReply,
    UserInfo,
)
from dledger_mq.wire.broker import (
    ATTEMPT_PROPERTY,
    DELIVER_AT_PROPERTY,
    LAST_ERROR_PROPERTY,
    MAX_LAST_ERROR_LENGTH,
    MAX_LAYOUT_GROUPS,
    ORIGIN_MSG_ID_PROPERTY,
    ORIGIN_TOPIC_PROPERTY,
    AckReply,
    AckRequest,
    ChangeInvisibleReply,
    ChangeInvisibleRequest,
    CommitOffsetsReply,
    CommitOffsetsRequest,
    ConsumerHeartbeat,
    ConsumerHeartbeatReply,
    FindMessagesRequest,
    GetMessageRequest,
    OffsetForTimeReply,
    OffsetForTimeRequest,
    OutgoingMessage,
    PullReply,
    PullRequest,
    QueryOffsetsReply,
    QueryOffsetsRequest,
    QueueOffset,
    Receipt,
    ReceivedRecord,
    ReceiveReply,
    ReceiveRequest,
    SendBackReply,
    SendBackRequest,
    SendReply,
    SendRequest,
    StoredMessage,
    attempt_of,
    dead_letter_topic,
    retry_topic,
    system_topic_group,
)
from dledger_mq.wire.codec import MAX_NAME_LENGTH
from dledger_mq.wire.rpc import error_reply

logger = structlog.get_logger()

#: Bounds on the leader's consumer membership (not replicated: memory of the leader's).
MAX_CONSUMER_ID_LENGTH = MAX_PRODUCER_ID_LENGTH
MAX_CONSUMERS_PER_GROUP = 4096
MAX_CONSUMER_GROUP_TOPICS = 65536

#: Upper bounds a client cannot raise. A pull reply carries at most MAX_PULL_BYTES of bodies
#: (but always one message), so that it stays far below the connection's message limit.
MAX_PULL_COUNT = 1024
MAX_PULL_WAIT_MS = 30_000
MAX_PULL_BYTES = 4 << 20
#: A consumer that has not heartbeat for this long leaves its group (clients beat every 1 s).
CONSUMER_EXPIRY_MS = 3000

#: Timers fired by one DELIVER_TIMERS entry at most, and the bytes of their bodies (one always).
MAX_FIRED_PER_ENTRY = 1024
MAX_FIRED_BYTES = 4 << 20
#: The longest the timer loop sleeps without looking again (a leader change, a new timer).
TIMER_IDLE_SECONDS = 1.0
#: A waiting receive looks again this often (a received message may become visible again
#: with nothing applied), and hands at most this many expired messages to the dead letters.
RECEIVE_RECHECK_SECONDS = 0.2
MAX_DEAD_LETTERS_PER_RECEIVE = 64
#: (group, topic) pairs whose next receive's first queue the leader remembers.
MAX_RECEIVE_CURSORS = 65536

#: Answers one request (of the type it is registered for) with its reply.
RequestHandler = Callable[[Any], Awaitable[object]]


class AppliedSignal:
    """Fires whenever an entry is applied; long polls wait on it. Made before the replica and
    the service, so that the replica's ``apply`` can fire it and the service wait on it."""

    def __init__(self) -> None:
        self._event = trio.Event()
        #: Bytes of entry data applied since the start (what a snapshot saves replaying).
        self.applied_bytes = 0

    def notify(self, size: int = 0) -> None:
        self.applied_bytes += size
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Until the next entry is applied."""
        await self._event.wait()


class ReplicaHandle(Protocol):
    """What the service needs of its replica: who leads, and a way to propose. The Trio
    ``Replica`` is one; the simulator hands the synchronous parts of the service its driver."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def core(self) -> RaftCore: ...

    async def propose_and_apply(self, data: bytes) -> object: ...

    async def read_barrier(self) -> None:
        """Until this replica's state may be read linearizably (it still leads, and has
        applied what was committed when the barrier began); ``NotLeader`` otherwise."""
        ...


class BrokerService:
    def __init__(
        self,
        state: BrokerState,
        replica: ReplicaHandle,
        log: LogStore,
        desired_settings: BrokerSettings | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic_ms: Callable[[], int] = lambda: int(trio.current_time() * 1000),
        consumer_expiry_ms: int = CONSUMER_EXPIRY_MS,
        applied: AppliedSignal | None = None,
        broker_group: str = "",
        key_index: KeyIndex | None = None,
    ) -> None:
        """``broker_group``: the name of this broker group (a consumer's layout names its
        queues by group). ``key_index``: this replica's, for finding messages by key (None:
        such queries are refused)."""
        self.broker_group = broker_group
        self.state = state
        #: A consumer silent this long leaves its group (the simulator shortens it with the
        #: consumers' heartbeat interval).
        self.consumer_expiry_ms = consumer_expiry_ms
        self.replica = replica
        self.log = log
        self.clock_ms = clock_ms
        #: What this node's configuration asks of the replicated settings (None: anything).
        self.desired_settings = desired_settings
        self.monotonic_ms = monotonic_ms
        self.round_robin = RoundRobinQueues()
        #: (group, topic) -> the queue a simple consumer's next receive looks at first.
        self._receive_cursor: dict[tuple[str, str], int] = {}
        #: (group, topic) -> consumer id -> when its membership lapses (monotonic ms).
        self.consumers: dict[tuple[str, str], dict[str, int]] = {}
        #: (group, topic) -> consumer id -> the queues it said it holds (FIFO hand-over).
        self.holders: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
        #: The term this node last led in, and since when (monotonic ms): membership is
        #: leader-local, so a new term starts it afresh.
        self._leading_term = -1
        self._leading_since_ms = 0
        #: Fired whenever an entry is applied (by whoever applies them): long polls wait on it.
        self.applied = applied or AppliedSignal()
        #: While set (the volume of this path is nearly full, ``node/retention.py``), sends are
        #: refused with ``DiskFull``; everything else goes on.
        self.refuse_sends_path: str | None = None
        #: What this node served (metrics): bytes stored, messages and bytes handed out.
        self.traffic = Traffic()
        self.queries = MessageQueries(self, key_index)
        self._handlers = self.handlers()

    # -- dispatch ------------------------------------------------------------------------------

    def handlers(self) -> dict[type, RequestHandler]:
        """Request type -> its handler, for every request the broker answers."""
        return {
            SendRequest: self.send,
            PullRequest: self.pull,
            CommitOffsetsRequest: self.commit_offsets,
            QueryOffsetsRequest: self.query_offsets,
            ConsumerHeartbeat: self.consumer_heartbeat,
            CreateTopicRequest: self.create_topic,
            UpdateTopicRequest: self.update_topic,
            DeleteTopicRequest: self.delete_topic,
            ListTopicsRequest: _now(self.list_topics),
            TopicStatusRequest: _now(self.topic_status),
            ListGroupsRequest: _now(self.list_groups),
            DescribeGroupRequest: _now(self.describe_group),
            ResetOffsetRequest: self.reset_offset,
            AddUserRequest: self.add_user,
            RemoveUserRequest: self.remove_user,
            GrantRequest: self.grant,
            RevokeRequest: self.revoke,
            ListUsersRequest: _now(self.list_users),
            SendBackRequest: self.send_back,
            OffsetForTimeRequest: _now(self.offset_for_time),
            ReceiveRequest: self.receive,
            AckRequest: self.ack_received,
            ChangeInvisibleRequest: self.change_invisible,
            UpdateGroupRequest: self.update_group,
            DeleteGroupRequest: self.delete_group,
            GetMessageRequest: self.queries.get_message,
            FindMessagesRequest: self.queries.find_messages,
        }

    async def handle(self, message: object) -> object:
        """The reply to a broker request; ``BadRequest`` if ``message`` is not one."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise BadRequest(f"{type(message).__name__} is not a broker request")
        return await handler(message)

    # -- settings ------------------------------------------------------------------------------

    def settings_current(self) -> bool:
        return self.desired_settings is None or self.state.settings == self.desired_settings

    async def keep_settings(self, leader_changed: Callable[[], trio.Event]) -> None:
        """While leading, make the replicated settings what this node's configuration says."""
        while True:
            changed = leader_changed()
            if self.replica.is_leader and not self.settings_current():
                assert self.desired_settings is not None
                with contextlib.suppress(NotLeader):
                    await self.replica.propose_and_apply(
                        encode_command(ConfigureBroker(self.desired_settings))
                    )
                continue
            with trio.move_on_after(1):
                await changed.wait()

    # -- topics --------------------------------------------------------------------------------

    async def create_topic(self, request: CreateTopicRequest) -> CreateTopicReply:
        command = CreateTopic(request.name, request.queue_count, request.fifo)
        result = await self._propose(encode_command(command))
        assert isinstance(result, TopicCreated), result
        return CreateTopicReply(self.topic_info(result.topic.name), result.created)

    async def update_topic(self, request: UpdateTopicRequest) -> TopicChangedReply:
        """Changes only what the request gives; the rest is read from the leader's state."""
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)  # its topics may be behind
        current = self.state.topic(request.name)
        if current is None:
            raise TopicNotFound(request.name)
        command = UpdateTopic(
            request.name,
            current.queue_count if request.queue_count is None else request.queue_count,
            current.fifo if request.fifo is None else request.fifo,
        )
        result = await self._propose(encode_command(command))
        assert isinstance(result, TopicUpdated), result
        return TopicChangedReply(self.topic_info(result.topic.name))

    async def delete_topic(self, request: DeleteTopicRequest) -> TopicChangedReply:
        result = await self._propose(encode_command(DeleteTopic(request.name)))
        assert isinstance(result, TopicDeleted), result
        return TopicChangedReply(None)

    def list_topics(self, request: ListTopicsRequest) -> ListTopicsReply:
        return ListTopicsReply(tuple(self.topic_info(t.name) for t in self.state.topics()))

    def topic_status(self, request: TopicStatusRequest) -> TopicStatusReply:
        """Each queue's first held and next offsets, and when its last message was stored."""
        topic = self.state.topic(request.name)
        if topic is None:
            raise TopicNotFound(request.name)
        queues = []
        for queue_id in range(topic.queue_count):
            max_offset = self.state.max_offset(topic.name, queue_id)
            last_store_time_ms = 0
            if max_offset > 0:
                scan = self.state.scan(topic.name, queue_id, max_offset - 1, 1)
                # Retention may have deleted it: then there is no time to tell.
                with contextlib.suppress(LogCompacted, IndexError):
                    last_store_time_ms = self._store_timestamp_of(scan.positions[0][1])
            queues.append(
                QueueStatus(
                    queue_id, self.held_offset(topic.name, queue_id), max_offset, last_store_time_ms
                )
            )
        return TopicStatusReply(topic.name, tuple(queues))

    def topic_info(self, name: str) -> TopicInfo:
        description = self.state.describe_topic(name)
        return TopicInfo(
            name=description.name,
            queue_count=description.queue_count,
            fifo=description.fifo,
            max_offsets=tuple(queue.max_offset for queue in description.queues),
        )

    # -- users ---------------------------------------------------------------------------------

    async def add_user(self, request: AddUserRequest) -> UserChangedReply:
        rules = tuple(Rule(rule.resource, rule.action) for rule in request.rules)
        command = AddUser(request.access_key, request.stored_key, rules)
        return await self._change_user(command)

    async def remove_user(self, request: RemoveUserRequest) -> UserChangedReply:
        return await self._change_user(RemoveUser(request.access_key))

    async def grant(self, request: GrantRequest) -> UserChangedReply:
        rule = Rule(request.rule.resource, request.rule.action)
        return await self._change_user(Grant(request.access_key, rule))

    async def revoke(self, request: RevokeRequest) -> UserChangedReply:
        rule = Rule(request.rule.resource, request.rule.action)
        return await self._change_user(Revoke(request.access_key, rule))

    async def _change_user(
        self, command: AddUser | RemoveUser | Grant | Revoke
    ) -> UserChangedReply:
        result = await self._propose(encode_command(command))
        assert isinstance(result, UsersChanged), result
        return UserChangedReply(user_info(result.user) if result.user is not None else None)

    def list_users(self, request: ListUsersRequest) -> ListUsersReply:
        return ListUsersReply(tuple(user_info(user) for user in self.state.users()))

    async def _propose(self, data: bytes) -> object:
        """Propose ``data``; what apply made of it, or the error it refused it with."""
        result = await self.replica.propose_and_apply(data)
        if isinstance(result, Refused):
            raise result.error
        return result

    # -- consumer groups -------------------------------------------------------------------------

    def live_consumers(self, group: str, topic: str) -> tuple[str, ...]:
        now = self.monotonic_ms()
        members = self.consumers.get((group, topic), {})
        return tuple(sorted(c for c, expires_at_ms in members.items() if expires_at_ms > now))

    def list_groups(self, request: ListGroupsRequest) -> ListGroupsReply:
        return ListGroupsReply(
            tuple(GroupInfo(g, self.state.group_topics(g)) for g in self.state.groups())
        )

    def describe_group(self, request: DescribeGroupRequest) -> DescribeGroupReply:
        policy = self.state.retry_policy(request.group)
        exists = self.state.knows_group(request.group)
        if not request.topic:
            return DescribeGroupReply((), (), policy.max_attempts, policy.delays_ms, exists)
        return DescribeGroupReply(
            self._lag(request.group, request.topic),
            self.live_consumers(request.group, request.topic),
            policy.max_attempts,
            policy.delays_ms,
            exists,
        )

    async def delete_group(self, request: DeleteGroupRequest) -> GroupDeletedReply:
        """Forget the group here; refused while a consumer of it is live on this leader (it
        would commit again at once: stop the consumers first)."""
        check_group_name(request.group)
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)
        live = sorted(
            {
                consumer
                for (group, topic) in self.consumers
                if group == request.group
                for consumer in self.live_consumers(group, topic)
            }
        )
        if live:
            raise BadRequest(
                f"group {request.group!r} has {len(live)} live consumers "
                f"({', '.join(live[:3])}{', ...' if len(live) > 3 else ''}): stop them first"
            )
        result = await self._propose(encode_command(DeleteGroup(request.group)))
        assert isinstance(result, GroupDeleted), result
        return GroupDeletedReply(result.group, result.existed)

    async def update_group(self, request: UpdateGroupRequest) -> GroupPolicyReply:
        policy = RetryPolicy(request.max_attempts, request.retry_delays_ms)
        await self._propose(encode_command(ConfigureGroup(request.group, policy)))
        return GroupPolicyReply(request.group, policy.max_attempts, policy.delays_ms)

    async def reset_offset(self, request: ResetOffsetRequest) -> ResetOffsetReply:
        await self.reset_offsets(
            request.group, request.topic, request.to_offset, request.to_time_ms
        )
        return ResetOffsetReply(self._lag(request.group, request.topic))

    def _lag(self, group: str, topic: str) -> tuple[QueueLagInfo, ...]:
        """Per queue; a committed offset below the first message retention kept counts from
        that message (``min_offset``): consumers continue from there."""
        lags = []
        for lag in self.state.lag(group, topic):
            held = self.held_offset(topic, lag.queue_id)
            consumed = held if lag.committed_offset is None else max(held, lag.committed_offset)
            lags.append(
                QueueLagInfo(
                    lag.queue_id,
                    -1 if lag.committed_offset is None else lag.committed_offset,
                    lag.max_offset,
                    max(0, lag.max_offset - consumed),
                    min_offset=held,
                )
            )
        return tuple(lags)

    async def reset_offsets(
        self, group: str, topic: str, to_offset: int, to_time_ms: int
    ) -> tuple[tuple[int, int], ...]:
        """Set ``group``'s offset in every queue of ``topic``; returns (queue id, offset) pairs.

        Consumers of the group should be stopped meanwhile: a running one may commit past the
        new offsets (docs/broker.md).
        """
        if (to_offset >= 0) == (to_time_ms >= 0):
            raise BadRequest("give exactly one of an offset and a time")
        topic_config = self.state.topic(topic)
        if topic_config is None:
            raise TopicNotFound(topic)
        offsets = []
        for queue_id in range(topic_config.queue_count):
            low = self.held_offset(topic, queue_id)
            high = self.state.max_offset(topic, queue_id)
            if to_offset >= 0:
                offset = min(max(to_offset, low), high)
            else:
                offset = self.state.offset_for_timestamp(
                    topic, queue_id, to_time_ms, self._store_timestamp_of, from_offset=low
                )
            offsets.append(RecordQueueOffset(queue_id, offset))
        command = ResetOffsets(group, topic, tuple(offsets))
        result = await self._propose(encode_command(command))
        assert isinstance(result, OffsetsReset), result
        return tuple((item.queue_id, item.offset) for item in offsets)

    def offset_for_time(self, request: OffsetForTimeRequest) -> OffsetForTimeReply:
        """Where a consumer group that starts at a time begins, in one queue."""
        low = self.held_offset(request.topic, request.queue_id)
        offset = self.state.offset_for_timestamp(
            request.topic,
            request.queue_id,
            request.timestamp_ms,
            self._store_timestamp_of,
            from_offset=low,
        )
        return OffsetForTimeReply(offset)

    def _store_timestamp_of(self, raft_index: int) -> int:
        [entry] = self.log.entries(raft_index, raft_index + 1, MAX_PULL_BYTES)
        return read_messages(entry.data, []).store_timestamp_ms

    async def consumer_heartbeat(self, heartbeat: ConsumerHeartbeat) -> ConsumerHeartbeatReply:
        """Leader only, and through a read barrier: a deposed leader that does not know it yet
        must not grant FIFO queues or hand out a reset generation the new leader has moved
        past."""
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)
        await self.replica.read_barrier()
        return self.consumer_heartbeat_now(heartbeat)

    def _make_room_for(self, key: tuple[str, str], consumer_id: str, now: int) -> None:
        """Membership is memory on the leader: bounded per group and topic, and in all."""
        members = self.consumers.get(key)
        if members is None and len(self.consumers) >= MAX_CONSUMER_GROUP_TOPICS:
            for stale in [
                k for k, m in self.consumers.items() if max(m.values(), default=0) <= now
            ]:
                del self.consumers[stale]
                self.holders.pop(stale, None)
            if len(self.consumers) >= MAX_CONSUMER_GROUP_TOPICS:
                raise BadRequest(
                    f"consumers of {MAX_CONSUMER_GROUP_TOPICS} group and topic pairs are live"
                )
        if members is not None and consumer_id not in members:
            live = sum(1 for expires_at_ms in members.values() if expires_at_ms > now)
            if live >= MAX_CONSUMERS_PER_GROUP:
                raise BadRequest(
                    f"group {key[0]!r} has {MAX_CONSUMERS_PER_GROUP} live consumers of {key[1]!r}"
                )

    def consumer_heartbeat_now(self, heartbeat: ConsumerHeartbeat) -> ConsumerHeartbeatReply:
        """Leader only: group membership lives on the leader, not in the log (docs/broker.md).
        What ``consumer_heartbeat`` answers once its read barrier passed."""
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)
        check_group_name(heartbeat.group)
        check_name("consumer id", heartbeat.consumer_id, MAX_CONSUMER_ID_LENGTH)
        topic = self.state.topic(heartbeat.topic)
        if topic is None:
            raise TopicNotFound(heartbeat.topic)
        if heartbeat.broadcast:
            return ConsumerHeartbeatReply(
                tuple(range(topic.queue_count)),
                (),
                topic.fifo,
                self.state.reset_generation(heartbeat.group),
            )
        now = self.monotonic_ms()
        term = self.replica.core.term
        if term != self._leading_term:
            # What another leader (or this one in an earlier term) knew is not ours to trust.
            self._leading_term, self._leading_since_ms = term, now
            self.consumers.clear()
            self.holders.clear()
        key = (heartbeat.group, heartbeat.topic)
        self._make_room_for(key, heartbeat.consumer_id, now)
        members = self.consumers.setdefault(key, {})
        holders = self.holders.setdefault(key, {})
        members[heartbeat.consumer_id] = now + self.consumer_expiry_ms
        holders[heartbeat.consumer_id] = heartbeat.held
        for consumer_id, expires_at_ms in list(members.items()):
            if expires_at_ms <= now:
                del members[consumer_id]
                holders.pop(consumer_id, None)
        live = tuple(sorted(members))
        queues = self._assigned_queues(heartbeat, topic.queue_count, live)
        if topic.fifo:
            settling = now - self._leading_since_ms < self.consumer_expiry_ms
            queues = fifo_grant(heartbeat.consumer_id, queues, holders, settling)
            # It holds them from this reply on, before its next heartbeat says so.
            holders[heartbeat.consumer_id] = tuple(sorted(set(heartbeat.held) | set(queues)))
        policy = self.state.retry_policy(heartbeat.group)
        return ConsumerHeartbeatReply(
            tuple(queues),
            live,
            topic.fifo,
            self.state.reset_generation(heartbeat.group),
            policy.max_attempts,
            policy.delays_ms,
        )

    def _assigned_queues(
        self, heartbeat: ConsumerHeartbeat, queue_count: int, live: tuple[str, ...]
    ) -> tuple[int, ...]:
        """This group's queues for the consumer: every queue of every group in its layout
        (this group's as it is here) spread over the live consumers, then this group's share.
        Every consumer heartbeats to every group, so each group's leader computes the same
        spread and, together, they hand every queue to exactly one consumer."""
        layout = heartbeat.layout
        if not layout:
            return queues_of(heartbeat.consumer_id, range(queue_count), live)
        if len(layout) > MAX_LAYOUT_GROUPS:
            raise BadRequest(f"a layout names at most {MAX_LAYOUT_GROUPS} broker groups")
        queues: list[tuple[str, int]] = [(self.broker_group, q) for q in range(queue_count)]
        for part in layout:
            check_name("broker group", part.group, MAX_NAME_LENGTH)
            if not 1 <= part.queues <= MAX_QUEUE_COUNT:
                raise BadRequest(f"a layout's queue count must be in [1, {MAX_QUEUE_COUNT}]")
            if part.group != self.broker_group:
                queues.extend((part.group, q) for q in range(part.queues))
        mine = queues_of(heartbeat.consumer_id, queues, live)
        return tuple(queue for group, queue in mine if group == self.broker_group)

    # -- send ----------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendReply:
        prepared = self.prepare_send(request)
        reply = send_reply(prepared, await self.replica.propose_and_apply(prepared.data))
        if self.traffic.enabled:
            for message, receipt in zip(prepared.messages, reply.receipts, strict=True):
                if receipt.msg_id and not receipt.duplicate:
                    self.traffic.stored(message.topic, len(message.body))
        return reply

    def prepare_send(self, request: SendRequest) -> PreparedSend:
        """The entry a send proposes: queues picked, checked against the state, stamped.

        Raises the typed error at once for a send apply would refuse (it costs no entry), and
        ``Unavailable`` while a new leader's settings are not applied yet.
        """
        if not request.messages:
            raise BadRequest("a send needs at least one message")
        if self.refuse_sends_path is not None:
            raise DiskFull(self.refuse_sends_path)
        if not self.settings_current():
            # A new leader first brings the replicated settings in line with its config.
            raise Unavailable("the broker settings are being applied; retry")
        for message in request.messages:
            if system_topic_group(message.topic) is not None:
                raise InvalidName(
                    "topic", message.topic, "retry and dead-letter topics are the broker's to write"
                )
        messages = tuple(self._to_record(message) for message in request.messages)
        stamp = max(self.clock_ms(), self.state.last_store_timestamp_ms)
        self.state.validate_send(messages, stamp)
        return PreparedSend(encode_command(SendBatch(stamp, messages)), messages)

    def _to_record(self, message: OutgoingMessage) -> Message:
        queue_id = message.queue_id
        if queue_id < 0:
            queue_count = self.state.queue_count_for_send(message.topic)
            queue_id = select_queue(
                message.topic, queue_count, message.sharding_key, self.round_robin
            )
        return Message(
            topic=message.topic,
            queue_id=queue_id,
            body=message.body,
            tags=message.tags,
            keys=message.keys,
            properties=message.properties,
            born_timestamp_ms=message.born_timestamp_ms,
            producer_id=message.producer_id,
            sequence=message.sequence,
            sharding_key=message.sharding_key,
        )

    # -- retries -------------------------------------------------------------------------------

    async def send_back(self, request: SendBackRequest) -> SendBackReply:
        """A consumer's failed message, stored again for its next attempt (or as a dead letter):
        a copy the leader makes from its own log, so the consumer sends no body."""
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)
        check_group_name(request.group)
        if self.refuse_sends_path is not None:
            raise DiskFull(self.refuse_sends_path)
        [found] = self._read_at(request.topic, request.queue_id, request.offset)
        attempt = attempt_of(found.properties) + 1
        policy = self.state.retry_policy(request.group)
        if request.dead_letter:
            attempt = max(attempt, policy.max_attempts + 1)
        message = failed_copy(
            found,
            retry_topic(request.group),
            request.topic,
            attempt,
            request.error,
            request.producer_id,
            request.sequence,
        )
        stamp = max(self.clock_ms(), self.state.last_store_timestamp_ms)
        self.state.validate_send((message,), stamp)
        prepared = PreparedSend(encode_command(SendBatch(stamp, (message,))), (message,))
        [receipt] = send_reply(
            prepared, await self.replica.propose_and_apply(prepared.data)
        ).receipts
        if receipt.error_code:
            raise BadRequest(f"the retry was refused: {receipt.error_message}")
        return SendBackReply(receipt, attempt > policy.max_attempts)

    def _read_at(self, topic: str, queue_id: int, offset: int) -> list[StoredMessage]:
        scan = self.state.scan(topic, queue_id, offset, 1, max_scanned=1)
        if not scan.positions or scan.positions[0].offset != offset:
            raise BadRequest(f"no message at offset {offset} of {topic!r} queue {queue_id} here")
        try:
            return self._read(topic, queue_id, scan.positions)
        except LogCompacted:
            raise BadRequest(f"offset {offset} of {topic!r} queue {queue_id} was deleted") from None

    # -- simple consumers (POP) -----------------------------------------------------------------

    async def receive(self, request: ReceiveRequest) -> ReceiveReply:
        """Leader only: messages handed out through the log (``PopMessages``), so that two
        receives never get one message while it is invisible, whoever leads."""
        if not self.replica.is_leader:
            raise NotLeader(self.replica.core.leader)
        check_group_name(request.group)
        if not 1 <= request.max_messages <= MAX_PULL_COUNT:
            raise BadRequest(f"max_messages must be in [1, {MAX_PULL_COUNT}]")
        if not 1 <= request.invisible_ms <= MAX_INVISIBLE_MS:
            raise BadRequest(f"invisible_ms must be in [1, {MAX_INVISIBLE_MS}]")
        tag_filter = parse_tag_expression(request.tag_expression)
        wait_seconds = max(0, min(request.wait_ms, MAX_PULL_WAIT_MS)) / 1000
        with trio.move_on_after(wait_seconds):
            while True:
                reply = await self._receive_once(request, tag_filter)
                if reply.messages or wait_seconds == 0:
                    return reply
                # A new message is applied, or one received before becomes visible again.
                with trio.move_on_after(RECEIVE_RECHECK_SECONDS):
                    await self.applied.wait()
        return ReceiveReply(())

    async def _receive_once(self, request: ReceiveRequest, tag_filter: TagFilter) -> ReceiveReply:
        topic = self.state.topic(request.topic)
        if topic is None:
            raise TopicNotFound(request.topic)
        now = max(self.clock_ms(), self.state.last_store_timestamp_ms)
        policy = self.state.retry_policy(request.group)
        key = (request.group, request.topic)
        first = self._receive_cursor.get(key, 0) % topic.queue_count
        if key not in self._receive_cursor and len(self._receive_cursor) >= MAX_RECEIVE_CURSORS:
            self._receive_cursor.clear()  # only fairness is lost: every receive starts at 0
        self._receive_cursor[key] = first + 1
        need = request.max_messages
        queues: list[PopQueue] = []
        dead: list[tuple[int, int]] = []
        dead_letters: list[Message] = []
        for step in range(topic.queue_count):
            queue_id = (first + step) % topic.queue_count
            next_offset, inflight = self.state.pop_progress(request.group, request.topic, queue_id)
            taken: list[int] = []
            for offset in sorted(o for o, held in inflight.items() if held[0] <= now):
                attempt = inflight[offset][1]
                if attempt >= policy.max_attempts:
                    if len(dead) < MAX_DEAD_LETTERS_PER_RECEIVE:
                        letter = self._dead_letter_of(request, queue_id, offset, attempt)
                        if letter is not None:
                            dead.append((queue_id, offset))
                            dead_letters.append(letter)
                elif len(taken) < need:
                    taken.append(offset)
            if topic.fifo:
                # One message of a FIFO queue at a time: none while one is invisible.
                if any(held[0] > now for held in inflight.values()):
                    continue
                taken = taken[:1]
            scan_end = next_offset
            wanted = (1 if topic.fifo else need) - len(taken)
            if wanted > 0:
                start = max(next_offset, self.held_offset(request.topic, queue_id))
                scan = self.state.scan(request.topic, queue_id, start, wanted, tag_filter)
                try:
                    found = self._read(request.topic, queue_id, scan.positions)
                except LogCompacted:
                    found = []  # trimmed meanwhile: the next receive looks again
                else:
                    scan_end = scan.next_offset
                taken += [m.offset for m in found if tag_filter.matches(m.tags)]
            if taken or scan_end > next_offset:
                queues.append(PopQueue(queue_id, scan_end, tuple(taken)))
            need -= len(taken)
            if need <= 0:
                break
        if not queues and not dead:
            return ReceiveReply(())
        command = PopMessages(
            now, dead_letters, request.group, request.topic, request.invisible_ms, queues, dead
        )
        result = await self._propose(encode_command(command))
        assert isinstance(result, MessagesPopped), result
        records = []
        for popped in result.popped:
            [stored] = self._read_at(request.topic, popped.queue_id, popped.offset)
            handle = f"{popped.queue_id}:{popped.offset}:{popped.pop_id}"
            records.append(
                ReceivedRecord(stored, popped.attempt, handle, popped.invisible_until_ms)
            )
        self._delivered(request.topic, request.group, [record.message for record in records])
        return ReceiveReply(tuple(records))

    def _delivered(self, topic: str, group: str, messages: Sequence[StoredMessage]) -> None:
        if not messages or not self.traffic.enabled:
            return
        if group and (group, topic) not in self.consumers and not self.state.group_topics(group):
            # A pull names any group it likes: only a group with live consumers or committed
            # offsets labels a series of its own. (A receive's group has state in the log.)
            group = ""
        self.traffic.delivered(topic, group, (len(message.body) for message in messages))

    def _dead_letter_of(
        self, request: ReceiveRequest, queue_id: int, offset: int, attempts: int
    ) -> Message | None:
        """The copy for the dead-letter topic of a received message whose last attempt ran
        out; None if its message is gone."""
        try:
            [found] = self._read_at(request.topic, queue_id, offset)
        except BadRequest:
            return None
        try:
            return failed_copy(
                found,
                dead_letter_topic(request.group),
                request.topic,
                attempts + 1,
                "not acknowledged within its invisible duration",
            )
        except InvalidMessage:
            return None

    async def ack_received(self, request: AckRequest) -> AckReply:
        refs = tuple(_popped_ref(handle) for handle in request.handles)
        result = await self._propose(encode_command(AckPopped(request.group, request.topic, refs)))
        assert isinstance(result, PoppedAcked), result
        return AckReply(result.acked)

    async def change_invisible(self, request: ChangeInvisibleRequest) -> ChangeInvisibleReply:
        stamp = max(self.clock_ms(), self.state.last_store_timestamp_ms)
        command = ChangeInvisible(
            request.group, request.topic, _popped_ref(request.handle), stamp, request.invisible_ms
        )
        result = await self._propose(encode_command(command))
        assert isinstance(result, InvisibleChanged), result
        return ChangeInvisibleReply(result.changed, result.invisible_until_ms)

    # -- timers --------------------------------------------------------------------------------

    async def deliver_timers(self, leader_changed: Callable[[], trio.Event]) -> None:
        """While leading: fire every due timer, oldest first, each by one DELIVER_TIMERS entry
        that copies its message into its queue. A new leader fires what its predecessor had
        not (apply stores each copy once); timers are never fired before their time by this
        node's clock."""
        unreadable: set[int] = set()
        while True:
            changed = leader_changed()
            if not self.replica.is_leader or self.refuse_sends_path is not None:
                with trio.move_on_after(TIMER_IDLE_SECONDS):
                    await changed.wait()
                continue
            now_ms = max(self.clock_ms(), self.state.last_store_timestamp_ms)
            due = [
                pair
                for pair in self.state.due_timers(now_ms, MAX_FIRED_PER_ENTRY + len(unreadable))
                if pair[1] not in unreadable
            ][:MAX_FIRED_PER_ENTRY]
            if not due:
                next_due = self.state.next_timer_due_ms()
                wait = TIMER_IDLE_SECONDS
                if next_due is not None:
                    wait = min(wait, max(0.001, (next_due - self.clock_ms()) / 1000))
                with trio.move_on_after(wait):
                    await self.applied.wait()
                continue
            fired, copies = self._copies_of(due, unreadable)
            if not fired:
                continue
            command = DeliverTimers(now_ms, copies, fired)
            try:
                result = await self.replica.propose_and_apply(encode_command(command))
            except DledgerError as error:
                # Not leading any more, no quorum, a failing disk: the next leader, or this one
                # a little later, fires them (apply stores each once).
                logger.info("timers_not_fired", reason=str(error), timers=len(fired))
                with trio.move_on_after(TIMER_IDLE_SECONDS):
                    await changed.wait()
                continue
            if isinstance(result, Refused):
                logger.error("timers_refused", reason=str(result.error), timers=len(fired))
                unreadable.update(position for _, position in fired)

    def _copies_of(
        self, due: list[tuple[int, int]], unreadable: set[int]
    ) -> tuple[list[tuple[int, int]], list[Message]]:
        """The messages of due timers, read from the log, as their copies (bounded in bytes)."""
        fired: list[tuple[int, int]] = []
        copies: list[Message] = []
        size = 0
        for due_ms, position in due:
            raft_index, slot = position >> SLOT_BITS, position & ((1 << SLOT_BITS) - 1)
            try:
                [entry] = self.log.entries(raft_index, raft_index + 1, MAX_PULL_BYTES)
                [message] = read_messages(entry.data, [slot]).messages
            except (LogCompacted, BadRequest) as error:
                # Retention keeps what timers point at (``lowest_timer_index``): this is a bug.
                logger.error("timer_message_unreadable", position=position, error=str(error))
                unreadable.add(position)
                continue
            if copies and size + len(message.body) > MAX_FIRED_BYTES:
                break
            size += len(message.body)
            properties = dict(message.properties)
            properties.setdefault(
                ORIGIN_MSG_ID_PROPERTY, format_message_id(self.state.group, raft_index, slot)
            )
            try:
                copy = attrs.evolve(message, properties=properties, producer_id=None, sequence=None)
            except InvalidMessage:
                copy = attrs.evolve(message, producer_id=None, sequence=None)
            fired.append((due_ms, position))
            copies.append(copy)
        return fired, copies

    # -- pull ----------------------------------------------------------------------------------

    async def pull(self, request: PullRequest) -> PullReply:
        wait_seconds = max(0, min(request.wait_ms, MAX_PULL_WAIT_MS)) / 1000
        offset = request.offset
        with trio.move_on_after(wait_seconds):
            while True:
                reply = self.pull_now(attrs.evolve(request, offset=offset))
                if reply.messages or wait_seconds == 0:
                    self._delivered(request.topic, request.consumer_group, reply.messages)
                    return reply
                # Nothing matching yet: skip what the filter refused, wait for the next apply.
                offset = reply.next_offset
                await self.applied.wait()
        return self._pull_reply(request, [], offset)

    def held_offset(self, topic: str, queue_id: int) -> int:
        """The queue's first offset whose message this replica's log still holds."""
        return self.state.first_held_offset(topic, queue_id, self.log.first_index())

    def pull_now(self, request: PullRequest) -> PullReply:
        """What this replica holds for ``request`` now, without waiting (``wait_ms`` aside).
        An offset whose message retention deleted reads on from the first one still held."""
        tag_filter = parse_tag_expression(request.tag_expression)
        max_count = max(1, min(request.max_count, MAX_PULL_COUNT))
        while True:
            offset = request.offset
            held = self.held_offset(request.topic, request.queue_id)
            if offset < held:
                logger.info(
                    "pull_below_retained_offset",
                    topic=request.topic,
                    queue_id=request.queue_id,
                    offset=offset,
                    min_offset=held,
                )
                offset = held
            scan = self.state.scan(request.topic, request.queue_id, offset, max_count, tag_filter)
            try:
                messages = self._read(request.topic, request.queue_id, scan.positions)
            except LogCompacted:
                continue  # trimmed meanwhile (retention runs in a worker thread): again
            break
        found = [m for m in messages if tag_filter.matches(m.tags)]
        found, next_offset = _within_pull_bytes(found, scan.next_offset)
        return self._pull_reply(request, found, next_offset)

    def _pull_reply(
        self, request: PullRequest, found: list[StoredMessage], next_offset: int
    ) -> PullReply:
        max_offset = self.state.max_offset(request.topic, request.queue_id)
        return PullReply(tuple(found), next_offset, max_offset)

    def _read(
        self, topic: str, queue_id: int, positions: Sequence[tuple[int, int, int]]
    ) -> list[StoredMessage]:
        by_entry: dict[int, list[tuple[int, int]]] = {}
        for offset, raft_index, slot in positions:
            by_entry.setdefault(raft_index, []).append((offset, slot))
        result: list[StoredMessage] = []
        for raft_index, wanted in by_entry.items():
            [entry] = self.log.entries(raft_index, raft_index + 1, MAX_PULL_BYTES)
            stored = read_messages(entry.data, [slot for _, slot in wanted])
            for (offset, slot), message in zip(wanted, stored.messages, strict=True):
                # A delayed or retried message keeps the id its first store gave it.
                origin = (
                    message.properties.get(ORIGIN_MSG_ID_PROPERTY) if message.properties else None
                )
                result.append(
                    StoredMessage(
                        msg_id=origin or format_message_id(self.state.group, raft_index, slot),
                        topic=topic,
                        queue_id=queue_id,
                        offset=offset,
                        body=message.body,
                        tags=message.tags,
                        keys=message.keys,
                        properties=dict(message.properties),
                        born_timestamp_ms=message.born_timestamp_ms,
                        store_timestamp_ms=stored.store_timestamp_ms,
                    )
                )
        result.sort(key=lambda message: message.offset)
        return result

    # -- offsets -------------------------------------------------------------------------------

    async def commit_offsets(self, request: CommitOffsetsRequest) -> CommitOffsetsReply:
        data = prepare_commit(request)
        return commit_reply(await self.replica.propose_and_apply(data))

    async def query_offsets(self, request: QueryOffsetsRequest) -> QueryOffsetsReply:
        """Through a read barrier (on the leader): offsets never go back for a consumer that
        asks a deposed leader, which would redeliver what the group had committed since."""
        await self.replica.read_barrier()
        return self.query_offsets_now(request)

    def query_offsets_now(self, request: QueryOffsetsRequest) -> QueryOffsetsReply:
        topic = self.state.topic(request.topic)
        if topic is None:
            raise BadRequest(f"no topic {request.topic!r}")
        offsets = []
        for queue_id in range(topic.queue_count):
            committed = self.state.committed_offset(request.group, request.topic, queue_id)
            offsets.append(QueueOffset(queue_id, -1 if committed is None else committed))
        return QueryOffsetsReply(tuple(offsets), self.state.reset_generation(request.group))


@attrs.frozen
class PreparedSend:
    """A send's entry, and its messages as the records the entry holds."""

    data: bytes
    messages: tuple[Message, ...]


def send_reply(prepared: PreparedSend, result: object) -> SendReply:
    """What a send answers once its entry is applied (``result``: what apply made of it)."""
    if isinstance(result, Refused):
        raise result.error
    assert isinstance(result, SendBatchResult), result
    return SendReply(
        tuple(
            _receipt(message.topic, outcome)
            for message, outcome in zip(prepared.messages, result.outcomes, strict=True)
        )
    )


def prepare_commit(request: CommitOffsetsRequest) -> bytes:
    """The entry an offset commit proposes."""
    command = CommitOffsets(
        request.group,
        tuple(OffsetCommit(request.topic, item.queue_id, item.offset) for item in request.offsets),
        request.reset_generation,
    )
    return encode_command(command)


def commit_reply(result: object) -> CommitOffsetsReply:
    """What an offset commit answers once its entry is applied."""
    if isinstance(result, Refused):
        raise result.error
    assert isinstance(result, OffsetsCommitted), result
    return CommitOffsetsReply(CommitOutcome.STALE_GENERATION in result.outcomes)


def _popped_ref(handle: str) -> PoppedRef:
    """The receive a handle (``queue:offset:pop_id``) names; ``BadRequest`` if it is none."""
    parts = handle.split(":")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) < 19 for p in parts):
        raise BadRequest(f"{handle[:60]!r} is not a receipt handle")
    return PoppedRef(int(parts[0]), int(parts[1]), int(parts[2]))


def failed_copy(
    found: StoredMessage,
    topic: str,
    origin_topic: str,
    attempt: int,
    error: str,
    producer_id: str | None = None,
    sequence: int | None = None,
) -> Message:
    """A failed message stored again, in ``topic`` (its group's retry or dead-letter topic):
    where it was first stored and its id there (kept from the first failure), which delivery
    comes next, and why the last failed (left out if the properties would grow past their
    limit: the reason is the one thing to give up). Its deliver-at time does not travel."""
    properties = {
        name: value
        for name, value in found.properties.items()
        if name not in (DELIVER_AT_PROPERTY, LAST_ERROR_PROPERTY)
    }
    properties.setdefault(ORIGIN_TOPIC_PROPERTY, origin_topic)
    properties.setdefault(ORIGIN_MSG_ID_PROPERTY, found.msg_id)
    properties[ATTEMPT_PROPERTY] = str(attempt)

    def copy(with_error: bool) -> Message:
        if with_error and error:
            properties[LAST_ERROR_PROPERTY] = error[:MAX_LAST_ERROR_LENGTH]
        else:
            properties.pop(LAST_ERROR_PROPERTY, None)
        return Message(
            topic=topic,
            queue_id=0,
            body=found.body,
            tags=found.tags,
            keys=found.keys,
            properties=properties,
            born_timestamp_ms=found.born_timestamp_ms,
            producer_id=producer_id,
            sequence=sequence,
        )

    try:
        return copy(with_error=True)
    except InvalidMessage:
        return copy(with_error=False)


def _receipt(topic: str, outcome: SendReceipt | Refused) -> Receipt:
    if isinstance(outcome, Refused):
        refusal = error_reply(outcome.error)
        return Receipt("", topic, -1, -1, False, refusal.code, refusal.message, refusal.fields)
    return Receipt(outcome.msg_id, topic, outcome.queue_id, outcome.offset, outcome.duplicate)


def _within_pull_bytes(
    found: list[StoredMessage], next_offset: int
) -> tuple[list[StoredMessage], int]:
    """The first of ``found`` whose bodies fit in ``MAX_PULL_BYTES`` (at least one), and the
    offset to pull from next."""
    total = 0
    for kept, message in enumerate(found):
        total += len(message.body)
        if total > MAX_PULL_BYTES and kept > 0:
            return found[:kept], message.offset
    return found, next_offset


def user_info(user: User) -> UserInfo:
    """A user as it travels: its rules, never its stored key."""
    rules = tuple(RuleInfo(rule.resource, rule.action) for rule in sorted(user.rules))
    return UserInfo(user.access_key, rules)


def _now(handler: Callable[[Any], object]) -> RequestHandler:
    """A handler that answers without waiting, as a ``RequestHandler``."""

    async def answer(request: object) -> object:
        return handler(request)

    return answer
