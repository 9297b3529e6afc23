"""Users, rules and limits as replicated state (``broker/access.py``, ``records.py``,
``state.py``) and what each request needs (``broker/authorization.py``)."""

from __future__ import annotations

import msgpack
import pytest

from dledger_mq.broker.access import Rule, User
from dledger_mq.broker.authorization import BrokerAccess, required
from dledger_mq.broker.records import (
    AddUser,
    BrokerSettings,
    CommandTag,
    ConfigureBroker,
    CreateTopic,
    Grant,
    RemoveUser,
    Revoke,
    decode_command,
    encode_command,
)
from dledger_mq.broker.state import BrokerState, UsersChanged
from dledger_mq.errors import (
    AuthenticationRequired,
    InvalidName,
    InvalidRule,
    PermissionDenied,
    TopicLimitReached,
    UserExists,
    UserNotFound,
)
from dledger_mq.wire.admin import (
    AddUserRequest,
    CreateTopicRequest,
    DeleteTopicRequest,
    ListTopicsRequest,
    ResetOffsetRequest,
    StatusRequest,
    TransferLeaderRequest,
)
from dledger_mq.wire.broker import (
    CommitOffsetsRequest,
    OutgoingMessage,
    PullRequest,
    SendRequest,
)
from dledger_mq.wire.client_auth import stored_key
from dledger_mq.wire.rpc import Session
from tests.broker.test_state import Log, message, refusal

KEY = stored_key("secret")


def test_a_rule_matches_a_name_a_prefix_or_everything() -> None:
    assert Rule("topic:orders", "publish").allows("publish", "topic:orders")
    assert not Rule("topic:orders", "publish").allows("publish", "topic:orders2")
    assert Rule("topic:orders*", "publish").allows("publish", "topic:orders2")
    assert not Rule("topic:orders*", "publish").allows("subscribe", "topic:orders2")
    assert not Rule("topic:orders*", "publish").allows("publish", "group:orders")
    assert Rule("group:*", "subscribe").allows("subscribe", "group:billing")
    assert Rule("cluster", "admin").allows("publish", "topic:anything")


@pytest.mark.parametrize(
    ("resource", "action"),
    [
        ("topic:orders", "write"),
        ("queue:orders", "publish"),
        ("topic:", "publish"),
        ("topic:or*ders", "publish"),
        ("topic:a b", "publish"),
        ("everything", "admin"),
    ],
)
def test_a_rule_that_does_not_parse_is_refused(resource: str, action: str) -> None:
    with pytest.raises(InvalidRule):
        Rule(resource, action)


def test_users_are_added_granted_revoked_and_removed_alike_on_every_replica() -> None:
    log = Log()
    result = log.apply(AddUser("alice", KEY, (Rule("topic:orders", "publish"),)))
    assert isinstance(result, UsersChanged)
    assert isinstance(refusal(log.apply(AddUser("alice", KEY))), UserExists)
    log.apply(Grant("alice", Rule("group:billing", "subscribe")))
    log.apply(Grant("alice", Rule("group:billing", "subscribe")))  # twice: no change
    log.apply(Revoke("alice", Rule("topic:orders", "publish")))
    user = log.state.user("alice")
    assert user == User("alice", KEY, frozenset({Rule("group:billing", "subscribe")}))
    assert isinstance(refusal(log.apply(Grant("bob", Rule("cluster", "admin")))), UserNotFound)
    assert log.rebuilt() == log.state
    snapshot = BrokerState.from_snapshot("broker-a", log.state.to_snapshot())
    assert snapshot == log.state and snapshot.user("alice") == user
    log.apply(RemoveUser("alice"))
    assert log.state.users() == ()
    assert log.rebuilt() == log.state


def test_user_commands_round_trip_and_bad_ones_are_refused_at_decode() -> None:
    for command in (
        AddUser("alice", KEY, (Rule("cluster", "admin"),)),
        RemoveUser("alice"),
        Grant("alice", Rule("topic:a*", "create")),
        Revoke("alice", Rule("group:g", "subscribe")),
    ):
        assert decode_command(encode_command(command)) == command
    bad_name = msgpack.packb([1, int(CommandTag.REMOVE_USER), "al ice"])
    with pytest.raises(InvalidName):
        decode_command(bad_name)
    bad_rule = msgpack.packb([1, int(CommandTag.GRANT), "alice", "topic:x", "own"])
    with pytest.raises(InvalidRule):
        decode_command(bad_rule)


def test_a_snapshot_from_before_users_still_loads() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 2))
    fields = msgpack.unpackb(log.state.to_snapshot(), raw=False, strict_map_key=False)
    old = msgpack.packb(fields[:8], use_bin_type=True)
    assert BrokerState.from_snapshot("broker-a", old) == log.state


def test_a_configure_broker_from_before_max_topics_still_decodes() -> None:
    settings = BrokerSettings()
    old = msgpack.packb(
        [1, int(CommandTag.CONFIGURE_BROKER), *list(encode_fields(settings))[:6]],
        use_bin_type=True,
    )
    decoded = decode_command(old)
    assert isinstance(decoded, ConfigureBroker) and decoded.settings == settings


def encode_fields(settings: BrokerSettings) -> list[object]:
    return list(msgpack.unpackb(encode_command(ConfigureBroker(settings)))[2:])


def test_topics_are_capped_by_creation_and_by_sends() -> None:
    log = Log(ConfigureBroker(BrokerSettings(max_topics=2)))
    log.apply(CreateTopic("a", 1))
    log.send(message(topic="b"))
    error = refusal(log.apply(CreateTopic("c", 1)))
    assert isinstance(error, TopicLimitReached) and error.max_topics == 2
    [outcome] = log.send(message(topic="d")).outcomes
    assert isinstance(refusal(outcome), TopicLimitReached)
    with pytest.raises(TopicLimitReached):
        log.state.validate_send([message(topic="d")])  # the leader refuses before proposing
    assert [topic.name for topic in log.state.topics()] == ["a", "b"]
    assert log.state.topic("d") is None
    log.send(message(topic="a"))  # existing topics take messages as before


# -- what requests need ---------------------------------------------------------------------


def send(*topics: str) -> SendRequest:
    return SendRequest(tuple(OutgoingMessage(topic, b"x") for topic in topics))


def test_what_each_request_needs() -> None:
    log = Log()
    log.apply(CreateTopic("orders", 1))
    state = log.state
    assert required(send("orders", "orders"), state) == {("publish", "topic:orders")}
    assert required(send("new"), state) == {("publish", "topic:new"), ("create", "topic:new")}
    assert required(PullRequest("orders", 0, 0), state) == {("subscribe", "topic:orders")}
    assert required(CommitOffsetsRequest("billing", "orders", ()), state) == {
        ("subscribe", "group:billing"),
        ("subscribe", "topic:orders"),
    }
    assert required(DeleteTopicRequest("orders"), state) == {("admin", "topic:orders")}
    assert required(CreateTopicRequest("x", 1), state) == {("admin", "topic:x")}
    assert required(ResetOffsetRequest("billing", "orders"), state) == {("admin", "group:billing")}
    assert required(TransferLeaderRequest("n2"), state) == {("admin", "cluster")}
    assert required(AddUserRequest("bob", KEY), state) == {("admin", "cluster")}
    assert required(StatusRequest(), state) == set()
    assert required(ListTopicsRequest(), state) == set()


def access_with(*users: AddUser, protected_mode: bool = True) -> BrokerAccess:
    log = Log()
    for user in users:
        log.apply(user)
    log.apply(CreateTopic("orders", 1))
    return BrokerAccess(log.state, protected_mode)


def test_a_publisher_cannot_delete_a_topic_and_a_subscriber_cannot_publish() -> None:
    access = access_with(
        AddUser("pub", KEY, (Rule("topic:orders", "publish"),)),
        AddUser("sub", KEY, (Rule("topic:orders", "subscribe"), Rule("group:g", "subscribe"))),
    )
    publisher, subscriber = Session("10.0.0.1", "pub"), Session("10.0.0.2", "sub")
    access.authorize(publisher, send("orders"))
    with pytest.raises(PermissionDenied, match="may not admin on topic:orders"):
        access.authorize(publisher, DeleteTopicRequest("orders"))
    with pytest.raises(PermissionDenied, match="may not create on topic:new"):
        access.authorize(publisher, send("new"))
    access.authorize(subscriber, PullRequest("orders", 0, 0))
    access.authorize(subscriber, CommitOffsetsRequest("g", "orders", ()))
    with pytest.raises(PermissionDenied, match="may not publish on topic:orders"):
        access.authorize(subscriber, send("orders"))
    with pytest.raises(PermissionDenied, match="may not subscribe on group:other"):
        access.authorize(subscriber, CommitOffsetsRequest("other", "orders", ()))


def test_protected_mode_lets_anonymous_clients_in_from_loopback_only() -> None:
    access = access_with()
    access.admit(Session("127.0.0.1"))
    access.admit(Session("::1"))
    access.authorize(Session("127.0.0.1"), DeleteTopicRequest("orders"))
    with pytest.raises(AuthenticationRequired, match="protected mode"):
        access.admit(Session("10.1.2.3"))
    access_with(protected_mode=False).admit(Session("10.1.2.3"))


def test_once_a_user_exists_everyone_signs_in() -> None:
    access = access_with(AddUser("admin", KEY, (Rule("cluster", "admin"),)))
    with pytest.raises(AuthenticationRequired):
        access.admit(Session("127.0.0.1"))
    with pytest.raises(AuthenticationRequired, match="no longer exists"):
        access.authorize(Session("127.0.0.1", "removed"), StatusRequest())
    access.authorize(Session("10.0.0.1", "admin"), TransferLeaderRequest("n2"))


def test_a_message_query_needs_subscribe_on_the_messages_topic() -> None:
    """Finding by key names the topic in the request; getting by id does not, so the reply is
    checked against the message's topic before it leaves (``authorize_reply``)."""
    from dledger_mq.wire.broker import (
        FindMessagesRequest,
        GetMessageReply,
        GetMessageRequest,
        MessageView,
    )

    access = access_with(AddUser("sub", KEY, (Rule("topic:orders", "subscribe"),)))
    subscriber = Session("10.0.0.2", "sub")
    access.authorize(subscriber, FindMessagesRequest("orders", "k"))
    with pytest.raises(PermissionDenied, match="may not subscribe on topic:secret"):
        access.authorize(subscriber, FindMessagesRequest("secret", "k"))
    access.authorize(subscriber, GetMessageRequest("broker-a:5:0"))  # no topic to check yet

    def reply(topic: str) -> GetMessageReply:
        view = MessageView("broker-a:5:0", topic, 0, 0, (), None, {}, b"body", 0, 1, 1)
        return GetMessageReply(view)

    access.authorize_reply(subscriber, reply("orders"))
    with pytest.raises(PermissionDenied, match="may not subscribe on topic:secret"):
        access.authorize_reply(subscriber, reply("secret"))
    with pytest.raises(PermissionDenied, match="group:g"):
        access.authorize_reply(subscriber, reply("%DLQ%g"))  # a group's: a group rule
