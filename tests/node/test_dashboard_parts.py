"""The dashboard's pure parts: throughput from samples, topics and groups merged over broker
groups, the page's requests validated, messages made JSON, and the message queries asked of each
broker group (through stand-ins for the admin client)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
import pytest

from dledger_mq.dashboard import actions
from dledger_mq.dashboard.actions import (
    MessageQuery,
    ResetOffset,
    TransferLeader,
    message_object,
    parse,
    query_messages,
)
from dledger_mq.dashboard.auth import Viewer
from dledger_mq.dashboard.collector import History, Target, merge_consumer_groups, merge_topics
from dledger_mq.errors import BadRequest, MessageNotFound, TopicNotFound
from dledger_mq.wire.admin import TopicInfo
from dledger_mq.wire.broker import FindMessagesReply, MessageView


def test_throughput_is_the_change_between_samples_per_second() -> None:
    history = History()
    history.add(100.0, {"broker-a": 10}, {"orders": 0})
    history.add(102.0, {"broker-a": 30}, {"orders": 8, "new": 5})
    history.add(103.0, {"broker-a": 31}, {"orders": 8, "new": 6})
    assert list(history.times) == [102.0, 103.0]
    assert list(history.groups["broker-a"]) == [10.0, 1.0]
    assert list(history.topics["orders"]) == [4.0, 0.0]
    # A topic first seen in a sample has no rate there, and its column lines up with the times.
    assert list(history.topics["new"]) == [None, 1.0]
    assert history.latest("groups", "broker-a") == 1.0


def test_a_topic_over_several_broker_groups_is_one_topic() -> None:
    def part(group: str, offsets: list[tuple[int | None, int]]) -> dict[str, object]:
        queues = [
            {"broker_group": group, "queue_id": i, "min_offset": low, "max_offset": high}
            for i, (low, high) in enumerate(offsets)
        ]
        return {"name": "orders", "fifo": False, "queues": queues}

    [merged] = merge_topics([part("broker-a", [(0, 5), (2, 3)]), part("broker-b", [(1, 4)])])
    assert merged["messages"] == 12 and merged["held"] == 9
    assert isinstance(merged["queues"], list) and len(merged["queues"]) == 3
    # A queue whose min offset a sample did not ask for (its describe budget was spent).
    [partial] = merge_topics([part("broker-a", [(0, 5)]), part("broker-b", [(None, 4)])])
    assert partial["messages"] == 9 and partial["held"] is None


def test_a_consumer_group_sums_its_lag_retries_and_dead_letters() -> None:
    def part(consumers: list[str], lag: int) -> dict[str, object]:
        return {
            "group": "billing",
            "queues": [{"lag": lag}],
            "consumers": consumers,
            "retrying": 1,
            "dead_letters": 2,
        }

    [merged] = merge_consumer_groups([part(["c1"], 3), part(["c1", "c2"], 4)])
    assert merged["consumers"] == ["c1", "c2"]
    assert (merged["lag"], merged["retrying"], merged["dead_letters"]) == (7, 2, 4)


def test_the_pages_requests_are_validated() -> None:
    assert parse({"action": "transfer_leader", "group": "broker-a", "target": "n2"}) == (
        TransferLeader("broker-a", "n2")
    )
    assert parse(
        {"action": "reset_offset", "group": "g", "topic": "t", "to_offset": "3", "to_time_ms": ""}
    ) == ResetOffset("g", "t", 3, -1)
    for bad in (
        {"action": "reset_offset", "group": "g", "topic": "t"},
        {"action": "reset_offset", "group": "g", "topic": "t", "to_offset": 1, "to_time_ms": 2},
        {"action": "transfer_leader", "group": "", "target": "n2"},
        {"action": "transfer_leader", "group": ["x"], "target": "n2"},
        {"action": "reset_offset", "group": "g", "topic": "t", "to_offset": "many"},
        {"action": "messages", "kind": "by_mood"},
        {"action": "drop_everything"},
    ):
        with pytest.raises(BadRequest):
            parse(bad)
    query = parse(
        {"action": "messages", "kind": "by_key", "topic": "t", "key": "k", "limit": 10**6}
    )
    assert query == MessageQuery("by_key", topic="t", key="k", limit=actions.MAX_MESSAGES)
    # By time, no end time (the page sends "" for an empty field): up to the newest.
    for no_end in ({}, {"to_time_ms": ""}):
        by_time = {"action": "messages", "kind": "by_time", "topic": "t", "from_time_ms": "5"}
        assert parse({**by_time, **no_end}) == MessageQuery("by_time", topic="t", from_time_ms=5)
    assert parse({**by_time, "to_time_ms": "9", "queue_id": "1"}) == MessageQuery(
        "by_time", topic="t", queue_id=1, from_time_ms=5, to_time_ms=9
    )
    for bad_time in ({"to_time_ms": "5"}, {"queue_id": "-1"}):
        with pytest.raises(BadRequest):
            parse({**by_time, **bad_time})


def view(message_id: str, body: bytes = b"hello", **fields: object) -> MessageView:
    values: dict[str, object] = {
        "message_id": message_id,
        "topic": "orders",
        "queue_id": 0,
        "offset": 0,
        "keys": (),
        "tags": None,
        "properties": {},
        "body": body,
        "born_time_ms": 1,
        "store_time_ms": 2,
        "attempt": 1,
    }
    values.update(fields)
    return MessageView(**values)  # type: ignore[arg-type]


def ids_and_messages(answer: dict[str, object]) -> tuple[list[object], list[dict[str, object]]]:
    """A query's answer: its messages' ids, and its messages."""
    messages = answer["messages"]
    assert isinstance(messages, list)
    return [message["message_id"] for message in messages], messages


def test_a_message_becomes_json_with_its_delivery_attempt() -> None:
    message = view(
        "broker-a:7:0",
        b"\xffhello",
        offset=-1,
        keys=("k", "k2"),
        tags="new",
        properties={"__ATTEMPT": "3", "source": "web"},
        attempt=3,
    )
    assert message_object("broker-a", message) == {
        "message_id": "broker-a:7:0",
        "broker_group": "broker-a",
        "topic": "orders",
        "queue_id": 0,
        "offset": -1,
        "keys": ["k", "k2"],
        "tags": "new",
        "properties": {"__ATTEMPT": "3", "source": "web"},
        "body": "\ufffdhello",
        "body_bytes": 6,
        "born_time_ms": 1,
        "store_time_ms": 2,
        "attempt": 3,
    }


async def test_the_message_queries_ask_each_broker_group_holding_the_topic_as_the_viewer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By id: only the group the id names (an id nothing holds says why); by key and by time:
    every group with the topic, merged by store time, saying when more may match."""
    asked: list[tuple[str, str, tuple[object, ...]]] = []

    class Admin:
        def __init__(self, group: str, queues: int) -> None:
            self.group = group
            self.queues = queues

        async def list_topics(self) -> list[TopicInfo]:
            return [TopicInfo("orders", self.queues, False, (0,) * self.queues)]

        async def get_message(self, message_id: str) -> MessageView:
            asked.append((self.group, "get_message", (message_id,)))
            if message_id.endswith(":9:0"):
                raise MessageNotFound(message_id, "no such entry in the log yet")
            return view(message_id, properties={"__ATTEMPT": "2"}, attempt=2)

        async def find_messages_reply(self, topic: str, key: str, limit: int) -> FindMessagesReply:
            asked.append((self.group, "find_messages_reply", (topic, key, limit)))
            time = 10 if self.group == "broker-a" else 5
            found = (view(f"{self.group}:3:0", store_time_ms=time, keys=(key,)),)
            return FindMessagesReply(found, truncated=self.group == "broker-b")

        async def list_messages(self, *arguments: object) -> tuple[MessageView, ...]:
            asked.append((self.group, "list_messages", arguments))
            return (view(f"{self.group}:4:0"),)

    groups = {"broker-a": Admin("broker-a", 2), "broker-b": Admin("broker-b", 1)}
    opened: list[tuple[Viewer, tuple[str, ...]]] = []

    @contextlib.asynccontextmanager
    async def admins(
        target: Target, viewer: Viewer, only: tuple[str, ...] = ()
    ) -> AsyncIterator[dict[str, Admin]]:
        opened.append((viewer, only))
        yield {name: admin for name, admin in groups.items() if not only or name in only}

    monkeypatch.setattr(actions, "viewer_admins", admins)
    viewer = Viewer("v", None, False, 0.0)
    target = Target(endpoints=[])

    found = await query_messages(target, viewer, MessageQuery("by_id", message_id="broker-b:7:1"))
    assert found["truncated"] is False and "not_found" not in found
    [message] = ids_and_messages(found)[1]
    assert (message["message_id"], message["broker_group"], message["attempt"]) == (
        "broker-b:7:1",
        "broker-b",
        2,
    )
    missing = await query_messages(target, viewer, MessageQuery("by_id", message_id="broker-a:9:0"))
    assert missing == {
        "messages": [],
        "truncated": False,
        "not_found": "no such entry in the log yet",
    }
    with pytest.raises(BadRequest):  # not a message id: asks no group
        await query_messages(target, viewer, MessageQuery("by_id", message_id="nonsense"))

    by_key = await query_messages(
        target, viewer, MessageQuery("by_key", topic="orders", key="k", limit=1)
    )
    # Oldest first, the newest kept: broker-b's was stored earlier.
    assert ids_and_messages(by_key)[0] == ["broker-a:3:0"]
    assert by_key["truncated"] is True

    by_time = MessageQuery("by_time", topic="orders", queue_id=1, from_time_ms=5)
    listed = await query_messages(target, viewer, by_time)
    assert ids_and_messages(listed)[0] == ["broker-a:4:0"]
    with pytest.raises(BadRequest, match="no queue 2"):
        await query_messages(target, viewer, attrs.evolve(by_time, queue_id=2))
    with pytest.raises(TopicNotFound):
        await query_messages(target, viewer, attrs.evolve(by_time, topic="audit"))

    assert asked == [
        ("broker-b", "get_message", ("broker-b:7:1",)),
        ("broker-a", "get_message", ("broker-a:9:0",)),
        ("broker-a", "find_messages_reply", ("orders", "k", 1)),
        ("broker-b", "find_messages_reply", ("orders", "k", 1)),
        # Up to the newest: no end time; broker-b has no queue 1.
        ("broker-a", "list_messages", ("orders", 1, 5, None, 20)),
    ]
    # As the viewer, never as the dashboard; by id, only the id's group.
    assert opened[:2] == [(viewer, ("broker-b",)), (viewer, ("broker-a",))]
    assert {seen for seen, _ in opened} == {viewer}
