"""The dashboard's pure parts: throughput from samples, topics and groups merged over broker
groups, the page's requests validated, messages made JSON, and the messages page waiting for
the admin client's message queries."""

from __future__ import annotations

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
    def part(group: str, offsets: list[tuple[int, int]]) -> dict[str, object]:
        queues = [
            {"broker_group": group, "queue_id": i, "min_offset": low, "max_offset": high}
            for i, (low, high) in enumerate(offsets)
        ]
        return {"name": "orders", "fifo": False, "queues": queues}

    [merged] = merge_topics([part("broker-a", [(0, 5), (2, 3)]), part("broker-b", [(1, 4)])])
    assert merged["messages"] == 12 and merged["held"] == 9
    assert isinstance(merged["queues"], list) and len(merged["queues"]) == 3


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
