"""An operator's client: node status, topics, groups, users, leadership transfer, message
queries (and, on a node the harness runs with ``raw-proposals``, raw proposals), over WebSocket.

Speaks only the wire format. No timeout arguments: callers bound calls with Trio cancel scopes.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from dledger_mq.errors import UsageError
from dledger_mq.wire.admin import (
    ADMIN_CODEC,
    AddUserRequest,
    ChangeMembershipRequest,
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
    MembershipReply,
    MembershipRequest,
    NodeStatsReply,
    NodeStatsRequest,
    ProposeBatchReply,
    ProposeBatchRequest,
    ProposeReply,
    ProposeRequest,
    QueueLagInfo,
    RemoveUserRequest,
    ResetOffsetReply,
    ResetOffsetRequest,
    RevokeRequest,
    RuleInfo,
    StatusReply,
    StatusRequest,
    TopicChangedReply,
    TopicInfo,
    TopicStatusReply,
    TopicStatusRequest,
    TransferLeaderReply,
    TransferLeaderRequest,
    UpdateGroupRequest,
    UpdateTopicRequest,
    UserChangedReply,
    UserInfo,
    WhoAmIReply,
    WhoAmIRequest,
)
from dledger_mq.wire.broker import (
    MAX_QUERY_MESSAGES,
    CommitOffsetsReply,
    CommitOffsetsRequest,
    FindMessagesReply,
    FindMessagesRequest,
    GetMessageReply,
    GetMessageRequest,
    MessageView,
    OffsetForTimeReply,
    OffsetForTimeRequest,
    OutgoingMessage,
    PullReply,
    PullRequest,
    QueryOffsetsReply,
    QueryOffsetsRequest,
    QueueOffset,
    Receipt,
    SendReply,
    SendRequest,
    view_of,
)
from dledger_mq.wire.client_auth import Credentials, as_credentials, stored_key
from dledger_mq.wire.rpc import RpcConnection, connect
from dledger_mq.wire.tls import TlsOption, client_ssl_context


class AdminConnection:
    def __init__(self, connection: RpcConnection) -> None:
        self.connection = connection
        self.node_id = connection.node_id

    async def status(self) -> StatusReply:
        reply = await self.connection.call(StatusRequest(), StatusReply)
        return reply

    async def node_stats(self) -> NodeStatsReply:
        """What this node did and holds (``dledger-mq node status``)."""
        reply = await self.connection.call(NodeStatsRequest(), NodeStatsReply)
        return reply

    async def topic_status(self, name: str) -> TopicStatusReply:
        """Per queue of ``name`` in this node's broker group: min and max offset, last store
        time."""
        reply = await self.connection.call(TopicStatusRequest(name), TopicStatusReply)
        return reply

    async def propose(self, data: bytes) -> int:
        reply = await self.connection.call(ProposeRequest(data), ProposeReply)
        return reply.index

    async def propose_batch(self, entries: list[bytes]) -> int:
        """Propose many entries at once; returns the index of the first."""
        reply = await self.connection.call(ProposeBatchRequest(tuple(entries)), ProposeBatchReply)
        return reply.first_index

    async def create_topic(
        self, name: str, queue_count: int, fifo: bool = False
    ) -> CreateTopicReply:
        """Create ``name`` (on the leader); creating it again alike is not an error."""
        reply = await self.connection.call(
            CreateTopicRequest(name, queue_count, fifo), CreateTopicReply
        )
        return reply

    async def update_topic(
        self, name: str, queue_count: int | None = None, fifo: bool | None = None
    ) -> TopicInfo:
        """Change what is given; None keeps the topic's queue count or FIFO flag as it is."""
        reply = await self.connection.call(
            UpdateTopicRequest(name, queue_count, fifo), TopicChangedReply
        )
        assert reply.topic is not None
        return reply.topic

    async def delete_topic(self, name: str) -> None:
        await self.connection.call(DeleteTopicRequest(name), TopicChangedReply)

    async def list_topics(self) -> tuple[TopicInfo, ...]:
        reply = await self.connection.call(ListTopicsRequest(), ListTopicsReply)
        return reply.topics

    async def list_groups(self) -> tuple[GroupInfo, ...]:
        reply = await self.connection.call(ListGroupsRequest(), ListGroupsReply)
        return reply.groups

    async def describe_group(self, group: str, topic: str) -> DescribeGroupReply:
        reply = await self.connection.call(DescribeGroupRequest(group, topic), DescribeGroupReply)
        return reply

    async def delete_group(self, group: str) -> bool:
        """Forget ``group`` in this broker group; whether it knew the group."""
        reply = await self.connection.call(DeleteGroupRequest(group), GroupDeletedReply)
        return reply.existed

    async def group_policy(self, group: str) -> DescribeGroupReply:
        """The group's retry policy (no topic: no queues in the reply)."""
        return await self.describe_group(group, "")

    async def update_group(
        self, group: str, max_attempts: int, retry_delays_ms: Sequence[int]
    ) -> GroupPolicyReply:
        reply = await self.connection.call(
            UpdateGroupRequest(group, max_attempts, tuple(retry_delays_ms)), GroupPolicyReply
        )
        return reply

    async def pull(self, topic: str, queue_id: int, offset: int, max_count: int) -> PullReply:
        """Messages of one queue from ``offset`` on, without waiting (a look, not a consumer)."""
        reply = await self.connection.call(
            PullRequest(topic, queue_id, offset, max_count, "*", 0), PullReply
        )
        return reply

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Queue id -> the group's committed offset, for the queues it committed in."""
        reply = await self.connection.call(QueryOffsetsRequest(group, topic), QueryOffsetsReply)
        return {item.queue_id: item.offset for item in reply.offsets if item.offset >= 0}

    async def commit_offset(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        await self.connection.call(
            CommitOffsetsRequest(group, topic, (QueueOffset(queue_id, offset),)),
            CommitOffsetsReply,
        )

    async def send(self, message: OutgoingMessage) -> Receipt:
        """Store one message in this node's group (it must lead)."""
        reply = await self.connection.call(SendRequest((message,)), SendReply)
        [receipt] = reply.receipts
        return receipt

    async def reset_offset(
        self, group: str, topic: str, to_offset: int = -1, to_time_ms: int = -1
    ) -> tuple[QueueLagInfo, ...]:
        reply = await self.connection.call(
            ResetOffsetRequest(group, topic, to_offset, to_time_ms), ResetOffsetReply
        )
        return reply.offsets

    async def change_membership(
        self, action: str, node_id: str, peer: str = "", client: str = ""
    ) -> MembershipReply:
        """One single-server change of the group through its leader: ``add-learner`` (with the
        new member's addresses), ``promote`` or ``remove``; answered once committed."""
        request = ChangeMembershipRequest(action, node_id, peer, client)
        return await self.connection.call(request, MembershipReply)

    async def membership(self) -> MembershipReply:
        """The group's voters and learners, as this node's log says now."""
        return await self.connection.call(MembershipRequest(), MembershipReply)

    async def transfer_leader(self, target: str) -> str:
        reply = await self.connection.call(TransferLeaderRequest(target), TransferLeaderReply)
        return reply.leader

    # -- users (the leader's) ------------------------------------------------------------------

    async def add_user(
        self, access_key: str, secret_key: str, rules: tuple[RuleInfo, ...] = ()
    ) -> UserInfo:
        """A new user; only the stored key of ``secret_key`` leaves this machine."""
        request = AddUserRequest(access_key, stored_key(secret_key), rules)
        reply = await self.connection.call(request, UserChangedReply)
        assert reply.user is not None
        return reply.user

    async def remove_user(self, access_key: str) -> None:
        await self.connection.call(RemoveUserRequest(access_key), UserChangedReply)

    async def grant(self, access_key: str, rule: RuleInfo) -> UserInfo:
        reply = await self.connection.call(GrantRequest(access_key, rule), UserChangedReply)
        assert reply.user is not None
        return reply.user

    async def revoke(self, access_key: str, rule: RuleInfo) -> UserInfo:
        reply = await self.connection.call(RevokeRequest(access_key, rule), UserChangedReply)
        assert reply.user is not None
        return reply.user

    async def list_users(self) -> tuple[UserInfo, ...]:
        return (await self.connection.call(ListUsersRequest(), ListUsersReply)).users

    async def who_am_i(self) -> WhoAmIReply:
        return await self.connection.call(WhoAmIRequest(), WhoAmIReply)

    # -- message queries (docs/operations.md, "Finding a message") -----------------------------

    async def get_message(self, message_id: str) -> MessageView:
        """The message ``message_id`` names; this node must lead the group the id names
        (``NotLeader`` with the leader's address otherwise; ``MessageNotFound`` if no stored
        message has that id)."""
        reply = await self.connection.call(GetMessageRequest(message_id), GetMessageReply)
        return reply.message

    async def find_messages(self, topic: str, key: str, limit: int = 32) -> tuple[MessageView, ...]:
        """The newest ``limit`` (at most 1024) messages of ``topic`` in this node's group
        with ``key`` among their keys, oldest first; this node must lead its group."""
        return (await self.find_messages_reply(topic, key, limit)).messages

    async def find_messages_reply(self, topic: str, key: str, limit: int = 32) -> FindMessagesReply:
        """``find_messages`` with whether more messages may match (``truncated``)."""
        return await self.connection.call(FindMessagesRequest(topic, key, limit), FindMessagesReply)

    async def list_messages(
        self,
        topic: str,
        queue_id: int,
        from_time_ms: int,
        to_time_ms: int | None = None,
        limit: int = 32,
    ) -> tuple[MessageView, ...]:
        """Up to ``limit`` messages of one queue of this node's group, in offset order, from
        the first stored at or after ``from_time_ms`` (a binary search on store times,
        ``OffsetForTimeRequest``) and stored before ``to_time_ms`` (None: up to the end). Read
        as a pull is: from this replica, up to what it has applied."""
        if not 1 <= limit <= MAX_QUERY_MESSAGES:
            raise UsageError(f"limit must be in [1, {MAX_QUERY_MESSAGES}]")
        offset = (
            await self.connection.call(
                OffsetForTimeRequest(topic, queue_id, from_time_ms), OffsetForTimeReply
            )
        ).offset
        found: list[MessageView] = []
        while len(found) < limit:
            reply = await self.pull(topic, queue_id, offset, limit - len(found))
            for message in reply.messages:
                # Store times do not go back along a queue: the first one past the end ends it.
                if to_time_ms is not None and message.store_timestamp_ms >= to_time_ms:
                    return tuple(found)
                found.append(view_of(message))
            if not reply.messages or reply.next_offset >= reply.max_offset:
                break
            offset = reply.next_offset
        return tuple(found[:limit])


#: The calls an admin connection makes (its public coroutine methods), by name: what the
#: asyncio and blocking admins (``dledger_mq.aio``, ``dledger_mq.sync``) offer.
ADMIN_METHODS = frozenset(
    name
    for name, value in vars(AdminConnection).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(value)
)


@asynccontextmanager
async def connect_admin(
    address: str,
    cluster_id: str = "local",
    credentials: Credentials | tuple[str, str] | None = None,
    tls: TlsOption = None,
) -> AsyncIterator[AdminConnection]:
    """Connect to one node's client address (HOST:PORT), shake hands and sign in with
    ``credentials`` (by default from ``DLEDGER_MQ_ACCESS_KEY``/``DLEDGER_MQ_SECRET_KEY``);
    ``tls`` as in ``Producer``."""
    async with connect(
        address,
        ADMIN_CODEC,
        cluster_id,
        "admin-client",
        as_credentials(credentials),
        client_ssl_context(tls),
    ) as connection:
        yield AdminConnection(connection)


async def topic_parts(admins: Mapping[str, AdminConnection], name: str) -> dict[str, TopicInfo]:
    """The topic as each broker group holds it (groups without it left out), given an admin
    connection to each group's leader."""
    parts = {}
    for group, connection in admins.items():
        for info in await connection.list_topics():
            if info.name == name:
                parts[group] = info
    return parts


def resolve_groups(names: str | None, known: Sequence[str]) -> list[str]:
    """The broker groups ``names`` (comma-separated; ``b`` for ``broker-b``) picks of
    ``known``, or all of them when None. ``UsageError`` names one that is not there."""
    if names is None:
        return list(known)
    chosen = []
    for name in (item.strip() for item in names.split(",")):
        group = name if name in known else f"broker-{name}"
        if group not in known:
            shown = ", ".join(known) or "none"
            raise UsageError(f"no broker group {name!r} has a leader (groups: {shown})")
        if group not in chosen:
            chosen.append(group)
    if not chosen:
        raise UsageError("name at least one broker group")
    return chosen


def spread_queues(total: int, groups: Sequence[str], explicit: bool = False) -> dict[str, int]:
    """``total`` queues over ``groups``, as evenly as can be (the first groups take one more).
    With fewer queues than groups, only the first ``total`` groups get one; unless the groups
    were chosen (``explicit``): then each must get one, and it is a ``UsageError``."""
    if not groups:
        raise UsageError("no broker group to create the topic in")
    if total < len(groups):
        if explicit:
            raise UsageError(f"{total} queues cannot be spread over {len(groups)} groups")
        groups = groups[:total]
    base, extra = divmod(total, len(groups))
    return {group: base + (1 if position < extra else 0) for position, group in enumerate(groups)}
