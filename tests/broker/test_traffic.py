"""A leader's traffic counters stay bounded: a client can name any consumer group, so past
MAX_SERIES label sets the rest are counted together rather than each kept forever."""

from __future__ import annotations

from dledger_mq.broker import traffic
from dledger_mq.broker.traffic import OTHER, Traffic


def test_delivered_counts_messages_and_bytes_per_topic_and_group() -> None:
    counts = Traffic()
    counts.delivered("orders", "billing", [3, 4])
    counts.delivered("orders", "billing", [])
    counts.stored("orders", 7)
    assert counts.messages_out == {("orders", "billing"): 2}
    assert counts.bytes_out == {("orders", "billing"): 7}
    assert counts.bytes_in == {"orders": 7}


def test_label_sets_beyond_the_bound_are_counted_together(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(traffic, "MAX_SERIES", 2)
    counts = Traffic()
    for group in ("a", "b", "c", "d"):
        counts.delivered("orders", group, [1])
        counts.stored(f"topic-{group}", 1)
    assert counts.messages_out == {("orders", "a"): 1, ("orders", "b"): 1, (OTHER, OTHER): 2}
    assert counts.bytes_in == {"topic-a": 1, "topic-b": 1, OTHER: 2}


def test_a_node_without_metrics_counts_nothing() -> None:
    counts = Traffic(enabled=False)
    counts.delivered("orders", "billing", [3])
    counts.stored("orders", 3)
    assert (counts.messages_out, counts.bytes_in) == ({}, {})
