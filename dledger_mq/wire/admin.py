"""Requests any client may send to any node: status, raw proposals, leadership transfer.

The broker's own requests (send, pull, ...) come with the broker; these serve operators, the
``cluster`` commands and ``bench raft``.
"""

from __future__ import annotations

import attrs

from dledger_mq.wire.broker import BROKER_TYPES
from dledger_mq.wire.codec import Codec
from dledger_mq.wire.handshake import HANDSHAKE_TYPES


@attrs.frozen
class StatusRequest:
    pass


@attrs.frozen
class FollowerLag:
    node_id: str
    match_index: int
    lag: int


@attrs.frozen
class StatusReply:
    node_id: str
    group: str
    address: str
    role: str
    term: int
    leader: str | None
    leader_address: str | None
    last_index: int
    commit_index: int
    applied_index: int
    followers: tuple[FollowerLag, ...]


@attrs.frozen
class ProposeRequest:
    data: bytes


@attrs.frozen
class ProposeReply:
    index: int


@attrs.frozen
class ProposeBatchRequest:
    """Many entries in one request: they commit together, at consecutive indexes."""

    entries: tuple[bytes, ...]


@attrs.frozen
class ProposeBatchReply:
    first_index: int
    count: int


@attrs.frozen
class TransferLeaderRequest:
    target: str


@attrs.frozen
class TransferLeaderReply:
    leader: str


@attrs.frozen
class TopicInfo:
    name: str
    queue_count: int
    fifo: bool
    #: Per queue, the offset the next message will get.
    max_offsets: tuple[int, ...]


@attrs.frozen
class CreateTopicRequest:
    name: str
    queue_count: int
    fifo: bool = False


@attrs.frozen
class CreateTopicReply:
    topic: TopicInfo
    #: False when the topic already existed with this configuration.
    created: bool


@attrs.frozen
class UpdateTopicRequest:
    """Change a topic's queue count (it can only grow) or FIFO flag; None keeps what it is."""

    name: str
    queue_count: int | None = None
    fifo: bool | None = None


@attrs.frozen
class DeleteTopicRequest:
    name: str


@attrs.frozen
class TopicChangedReply:
    #: The topic as it is now; None once deleted.
    topic: TopicInfo | None


@attrs.frozen
class ListTopicsRequest:
    pass


@attrs.frozen
class ListTopicsReply:
    #: As this replica has applied them (a follower may lag a little behind the leader).
    topics: tuple[TopicInfo, ...]


@attrs.frozen
class GroupInfo:
    group: str
    topics: tuple[str, ...]


@attrs.frozen
class ListGroupsRequest:
    pass


@attrs.frozen
class ListGroupsReply:
    groups: tuple[GroupInfo, ...]


@attrs.frozen
class QueueLagInfo:
    queue_id: int
    #: -1 when the group never committed in this queue.
    committed_offset: int
    max_offset: int
    lag: int
    #: The first offset whose message the replica still holds (retention deletes older ones):
    #: a committed offset below it continues from it.
    min_offset: int = 0


@attrs.frozen
class DescribeGroupRequest:
    group: str
    topic: str


@attrs.frozen
class DescribeGroupReply:
    queues: tuple[QueueLagInfo, ...]
    #: Live consumers as the leader knows them (empty on a follower).
    consumers: tuple[str, ...]
    #: The group's retry policy (the default where none was set).
    max_attempts: int = 0
    retry_delays_ms: tuple[int, ...] = ()
    #: The broker group knows the group: it has a retry policy, committed offsets or receives.
    exists: bool = False


@attrs.frozen
class UpdateGroupRequest:
    """Set a consumer group's retry policy (it may have no consumer yet)."""

    group: str
    max_attempts: int
    retry_delays_ms: tuple[int, ...]


@attrs.frozen
class GroupPolicyReply:
    group: str
    max_attempts: int
    retry_delays_ms: tuple[int, ...]


@attrs.frozen
class ResetOffsetRequest:
    """Move a group's offsets in a topic to ``to_offset``, or to the first message stored at or
    after ``to_time_ms`` (exactly one of them is >= 0)."""

    group: str
    topic: str
    to_offset: int = -1
    to_time_ms: int = -1


@attrs.frozen
class ResetOffsetReply:
    #: Per queue, the offset the group now starts from.
    offsets: tuple[QueueLagInfo, ...]


@attrs.frozen
class RuleInfo:
    """``action`` (publish, subscribe, create, admin) on ``resource`` (``cluster``,
    ``topic:PATTERN``, ``group:PATTERN``): ``broker/access.py``."""

    resource: str
    action: str


@attrs.frozen
class UserInfo:
    access_key: str
    rules: tuple[RuleInfo, ...]


@attrs.frozen
class AddUserRequest:
    """A new user. Only the stored key travels (``client_auth.stored_key``): the secret key
    never leaves the machine that made it."""

    access_key: str
    stored_key: bytes
    rules: tuple[RuleInfo, ...] = ()


@attrs.frozen
class RemoveUserRequest:
    access_key: str


@attrs.frozen
class GrantRequest:
    access_key: str
    rule: RuleInfo


@attrs.frozen
class RevokeRequest:
    access_key: str
    rule: RuleInfo


@attrs.frozen
class UserChangedReply:
    #: The user as it is now; None once removed.
    user: UserInfo | None


@attrs.frozen
class ListUsersRequest:
    pass


@attrs.frozen
class ListUsersReply:
    users: tuple[UserInfo, ...]


@attrs.frozen
class WhoAmIRequest:
    pass


@attrs.frozen
class WhoAmIReply:
    """Who this connection is signed in as (None: anonymous) and the rules that apply."""

    access_key: str | None
    rules: tuple[RuleInfo, ...]
    #: Anonymous clients are let in (no users exist, or protected mode is off).
    anonymous_allowed: bool


@attrs.frozen
class MemberInfo:
    node_id: str
    peer: str
    client: str


@attrs.frozen
class ChangeMembershipRequest:
    """One single-server change of the group (leader only): ``add-learner`` (with the new
    member's peer and client addresses), ``promote`` or ``remove``."""

    action: str
    node_id: str
    peer: str = ""
    client: str = ""


@attrs.frozen
class MembershipRequest:
    """The group's membership as this node's log says now."""


@attrs.frozen
class MembershipReply:
    voters: tuple[MemberInfo, ...]
    learners: tuple[MemberInfo, ...]
    #: The index of the entry that made it (0: the bootstrap, or a snapshot's).
    index: int


@attrs.frozen
class TopicStatusRequest:
    """Per queue of a topic in this broker group: its offsets and its last message's time."""

    name: str


@attrs.frozen
class QueueStatus:
    queue_id: int
    #: The first offset whose message is still held (retention deletes older ones).
    min_offset: int
    #: The offset the next message will get.
    max_offset: int
    #: When the queue's last message was stored (ms since the epoch); 0 when it has none.
    last_store_time_ms: int


@attrs.frozen
class TopicStatusReply:
    name: str
    queues: tuple[QueueStatus, ...]


@attrs.frozen
class NodeStatsRequest:
    """What one node did and holds: ``dledger-mq node status``, the figures of /metrics."""


@attrs.frozen
class NodeStatsReply:
    node_id: str
    group: str
    role: str
    term: int
    commit_index: int
    applied_index: int
    #: Messages stored in the group's queues (every replica: the queues' ends).
    messages_in: int
    #: Since this process started, while leading (0 on a node without ``http_listen``).
    bytes_in: int
    messages_out: int
    bytes_out: int
    log_bytes: int
    log_first_index: int
    disk_used_bytes: int
    disk_free_bytes: int
    #: The newest snapshot's index (0: none).
    snapshot_index: int
    #: fsyncs of the log counted, and the bucket bounds (µs) their median and 99th percentile
    #: fall under (-1: none counted).
    fsync_count: int
    fsync_p50_us: int
    fsync_p99_us: int
    #: Whether the node counts traffic and fsyncs (it serves /metrics: ``http_listen``).
    metrics_enabled: bool


@attrs.frozen
class DeleteGroupRequest:
    """Forget a consumer group in this broker group (refused while it has live consumers)."""

    group: str


@attrs.frozen
class GroupDeletedReply:
    group: str
    #: False when the broker group knew nothing of it.
    existed: bool


ADMIN_TYPES: dict[int, type] = {
    30: StatusRequest,
    31: StatusReply,
    32: ProposeRequest,
    33: ProposeReply,
    34: TransferLeaderRequest,
    35: TransferLeaderReply,
    36: ProposeBatchRequest,
    37: ProposeBatchReply,
    38: CreateTopicRequest,
    39: CreateTopicReply,
    40: ListTopicsRequest,
    41: ListTopicsReply,
    42: ListGroupsRequest,
    43: ListGroupsReply,
    44: DescribeGroupRequest,
    45: DescribeGroupReply,
    46: ResetOffsetRequest,
    47: ResetOffsetReply,
    48: UpdateTopicRequest,
    49: DeleteTopicRequest,
    # 50-59 belong to naming; admin continues at 70.
    70: TopicChangedReply,
    71: AddUserRequest,
    72: RemoveUserRequest,
    73: GrantRequest,
    74: RevokeRequest,
    75: UserChangedReply,
    76: ListUsersRequest,
    77: ListUsersReply,
    78: WhoAmIRequest,
    79: WhoAmIReply,
    80: ChangeMembershipRequest,
    81: MembershipRequest,
    82: MembershipReply,
    85: UpdateGroupRequest,
    86: GroupPolicyReply,
    # 87-104 belong to the broker's requests and message queries; admin continues at 105.
    105: TopicStatusRequest,
    106: TopicStatusReply,
    107: NodeStatsRequest,
    108: NodeStatsReply,
    109: DeleteGroupRequest,
    110: GroupDeletedReply,
}

#: Everything a node's client port speaks: the handshake, admin and broker requests.
NODE_CODEC = Codec({**HANDSHAKE_TYPES, **ADMIN_TYPES, **BROKER_TYPES})
#: The name the admin client knows it by.
ADMIN_CODEC = NODE_CODEC
