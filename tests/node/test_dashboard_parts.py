"""The dashboard's pure parts: throughput from samples, topics and groups merged over broker
groups, the page's requests validated, messages made JSON, and the messages page waiting for
the admin client's message queries."""

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
    message_queries_available,
    parse,
    query_messages,
)
from dledger_mq.dashboard.auth import Viewer
from dledger_mq.dashboard.collector import History, Target, merge_consumer_groups, merge_topics
from dledger_mq.errors import BadRequest


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


async def test_the_messages_page_says_not_available_until_the_client_has_the_queries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    viewer = Viewer("v", None, False, 0.0)
    if message_queries_available():
        pytest.skip("the admin client has the message queries now")
    answer = await query_messages(Target(endpoints=[]), viewer, MessageQuery("by_id", "x"))
    assert answer == {"available": False, "messages": []}


def test_a_message_becomes_json_with_its_delivery_attempts() -> None:
    @attrs.frozen
    class Stored:
        msg_id: str
        body: bytes
        keys: tuple[str, ...]
        properties: dict[str, str]

    shown = message_object(Stored("m1", b"\xffhello", ("k",), {"__ATTEMPT": "3"}))
    assert shown == {
        "msg_id": "m1",
        "body": "\ufffdhello",
        "keys": ["k"],
        "properties": {"__ATTEMPT": "3"},
        "attempts": 3,
    }


async def test_the_messages_page_lights_up_once_the_admin_client_has_the_queries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The names another branch adds to AdminConnection: once there, the page's queries reach
    every broker group's leader, as the viewer, and the answers come back as JSON."""

    @attrs.frozen
    class Stored:
        msg_id: str
        topic: str
        body: bytes
        properties: dict[str, str]

    asked: list[tuple[str, tuple[object, ...]]] = []

    class Admin:
        async def get_message(self, message_id: str) -> Stored | None:
            asked.append(("get_message", (message_id,)))
            return Stored(message_id, "orders", b"hello", {"__ATTEMPT": "2"})

        async def find_messages(self, topic: str, key: str, limit: int) -> list[Stored]:
            asked.append(("find_messages", (topic, key, limit)))
            return [Stored("m2", topic, b"by key", {})]

        async def list_messages(self, *arguments: object) -> tuple[Stored, ...]:
            asked.append(("list_messages", arguments))
            return ()

    for method in actions.MESSAGE_QUERIES.values():
        monkeypatch.setattr(actions.AdminConnection, method, getattr(Admin, method), raising=False)
    viewers: list[Viewer] = []

    @contextlib.asynccontextmanager
    async def admins(target: Target, viewer: Viewer) -> AsyncIterator[dict[str, Admin]]:
        viewers.append(viewer)
        yield {"broker-a": Admin()}

    monkeypatch.setattr(actions, "viewer_admins", admins)
    viewer = Viewer("v", None, False, 0.0)
    target = Target(endpoints=[])
    assert message_queries_available()
    found = await query_messages(target, viewer, MessageQuery("by_id", message_id="m1"))
    assert found == {
        "available": True,
        "messages": [
            {
                "broker_group": "broker-a",
                "msg_id": "m1",
                "topic": "orders",
                "body": "hello",
                "properties": {"__ATTEMPT": "2"},
                "attempts": 2,
            }
        ],
    }
    by_key = await query_messages(target, viewer, MessageQuery("by_key", topic="t", key="k"))
    assert isinstance(by_key, dict) and len(by_key["messages"]) == 1
    by_time = MessageQuery("by_time", topic="t", queue_id=1, from_time_ms=5, to_time_ms=9)
    assert await query_messages(target, viewer, by_time) == {"available": True, "messages": []}
    assert asked == [
        ("get_message", ("m1",)),
        ("find_messages", ("t", "k", 20)),
        ("list_messages", ("t", 1, 5, 9, 20)),
    ]
    assert viewers == [viewer] * 3  # as the viewer, never as the dashboard
