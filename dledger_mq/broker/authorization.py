"""Who may connect to a node, and what each request needs (docs/security.md, "Permissions").

With no users in the group's state, a node is in *protected mode*: anonymous clients are let in
from loopback only (as Redis does), or from anywhere when ``protected_mode = false``. Once a
user exists, every client signs in, and each request needs the rules below:

| request | needs |
|---|---|
| send | ``publish`` on each topic, and ``create`` on one that does not exist yet |
| pull, offset for a time, find messages by key | ``subscribe`` on the topic |
| get a message by id | ``subscribe`` on its topic, checked once it is read (an id names none) |
| offsets, consumer heartbeat, send back, receive/ack | ``subscribe`` on the group and the topic |
| set a group's retry policy | ``admin`` on the group |

A group's retry and dead-letter topics (``%RETRY%group``, ``%DLQ%group``) are the group's:
where a rule would name such a topic, ``subscribe`` (or ``admin``) on the group is needed.
| create/update/delete topic | ``admin`` on the topic |
| reset offsets | ``admin`` on the group |
| transfer leadership, users | ``admin`` on ``cluster`` |
| status, list topics/groups, describe group, whoami | signing in |
"""

from __future__ import annotations

from dledger_mq.broker.access import CLUSTER, User, group_resource, topic_resource
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import AuthenticationRequired, PermissionDenied
from dledger_mq.wire.admin import (
    AddUserRequest,
    ChangeMembershipRequest,
    CreateTopicRequest,
    DeleteGroupRequest,
    DeleteTopicRequest,
    GrantRequest,
    ListUsersRequest,
    ProposeBatchRequest,
    ProposeRequest,
    RemoveUserRequest,
    ResetOffsetRequest,
    RevokeRequest,
    TransferLeaderRequest,
    UpdateGroupRequest,
    UpdateTopicRequest,
)
from dledger_mq.wire.broker import (
    AckRequest,
    ChangeInvisibleRequest,
    CommitOffsetsRequest,
    ConsumerHeartbeat,
    FindMessagesRequest,
    GetMessageReply,
    OffsetForTimeRequest,
    PullRequest,
    QueryOffsetsRequest,
    ReceiveRequest,
    SendBackRequest,
    SendRequest,
    system_topic_group,
)
from dledger_mq.wire.rpc import Session

_CLUSTER_ADMIN = (
    TransferLeaderRequest,
    ChangeMembershipRequest,
    AddUserRequest,
    RemoveUserRequest,
    GrantRequest,
    RevokeRequest,
    ListUsersRequest,
    ProposeRequest,
    ProposeBatchRequest,
)


def required(message: object, state: BrokerState) -> set[tuple[str, str]]:
    """The (action, resource) pairs ``message`` needs."""
    if isinstance(message, SendRequest):
        needs = set()
        for outgoing in message.messages:
            needs.add(("publish", topic_resource(outgoing.topic)))
            if state.topic(outgoing.topic) is None:
                needs.add(("create", topic_resource(outgoing.topic)))
        return needs
    if isinstance(message, PullRequest | OffsetForTimeRequest | FindMessagesRequest):
        return {_on_topic("subscribe", message.topic)}
    if isinstance(
        message,
        CommitOffsetsRequest
        | QueryOffsetsRequest
        | ConsumerHeartbeat
        | SendBackRequest
        | ReceiveRequest
        | AckRequest
        | ChangeInvisibleRequest,
    ):
        return {
            ("subscribe", group_resource(message.group)),
            _on_topic("subscribe", message.topic),
        }
    if isinstance(message, CreateTopicRequest | UpdateTopicRequest | DeleteTopicRequest):
        return {_on_topic("admin", message.name)}
    if isinstance(message, ResetOffsetRequest | UpdateGroupRequest | DeleteGroupRequest):
        return {("admin", group_resource(message.group))}
    if isinstance(message, _CLUSTER_ADMIN):
        return {("admin", CLUSTER)}
    return set()


def required_of_reply(reply: object) -> set[tuple[str, str]]:
    """What a reply needs before it leaves, when its request could not say: a message read
    by id shows its body, as a pull does, and only the message says its topic."""
    if isinstance(reply, GetMessageReply):
        return {_on_topic("subscribe", reply.message.topic)}
    return set()


def _on_topic(action: str, topic: str) -> tuple[str, str]:
    """``action`` on ``topic``; on a group's retry or dead-letter topic, on the group."""
    group = system_topic_group(topic)
    return (action, topic_resource(topic) if group is None else group_resource(group))


class BrokerAccess:
    """A node's ``ClientAccess`` (``wire/rpc.py``): users from the replicated state."""

    def __init__(self, state: BrokerState, protected_mode: bool = True) -> None:
        self.state = state
        self.protected_mode = protected_mode

    def stored_key(self, access_key: str) -> bytes | None:
        user = self.state.user(access_key)
        return user.stored_key if user is not None else None

    def anonymous_allowed(self, session: Session) -> bool:
        if self.state.user_count:
            return False
        return session.loopback or not self.protected_mode

    def admit(self, session: Session) -> None:
        if session.user is None and not self.anonymous_allowed(session):
            if self.state.user_count:
                raise AuthenticationRequired("this cluster has users: sign in")
            raise AuthenticationRequired(
                "protected mode: no users exist, so only clients on the nodes' own machines "
                "are let in; add a user (dledger-mq user add) and sign in"
            )

    def user_of(self, session: Session) -> User | None:
        """The user ``session`` signed in as, None if anonymous and let in; raises if it may
        not go on (anonymous where users exist, or a user removed since it signed in)."""
        if session.user is None:
            self.admit(session)
            return None
        user = self.state.user(session.user)
        if user is None:
            raise AuthenticationRequired(f"user {session.user!r} no longer exists")
        return user

    def authorize(self, session: Session, message: object) -> None:
        """Raise ``AuthenticationRequired`` or ``PermissionDenied`` unless ``session`` may
        send ``message``."""
        self._check(session, required(message, self.state))

    def authorize_reply(self, session: Session, reply: object) -> None:
        """Raise ``PermissionDenied`` unless ``session`` may see ``reply``
        (``required_of_reply``)."""
        needs = required_of_reply(reply)
        if needs:
            self._check(session, needs)

    def _check(self, session: Session, needs: set[tuple[str, str]]) -> None:
        user = self.user_of(session)
        if user is None:
            return
        for action, resource in sorted(needs):
            if not user.allows(action, resource):
                raise PermissionDenied(user.access_key, action, resource)
