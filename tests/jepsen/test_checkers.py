"""The checkers on small hand-built histories (each case that must pass and each that must fail),
and on histories of a correct model of the queue, which must pass every checker."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen.checkers import (
    availability,
    check_all,
    duplicates,
    fault_windows,
    fifo_exclusive,
    group_independence,
    lost,
    membership,
    order,
    recovered,
    summary,
    unexpected,
)
from jepsen.history import (
    FAIL,
    FAULT,
    INFO,
    INVOKE,
    MEMBERSHIP,
    OK,
    PHASE,
    RECEIVE,
    SEND,
    History,
    Op,
)


class Builder:
    """A history written op by op: each op one second after the previous one, unless ``at``
    says when. A producer is named by its values ("p0-3" is p0's)."""

    def __init__(self) -> None:
        self.history = History()
        self.time = 0.0

    @property
    def ops(self) -> list[Op]:
        return self.history.ops

    def add(self, type: str, f: str, process: str, at: float | None, **fields: Any) -> Builder:
        self.time = self.time + 1.0 if at is None else at
        self.history.add(self.time, process, type, f, **fields)
        return self

    def invoke(self, value: str, key: str | None = None, at: float | None = None) -> Builder:
        return self.add(INVOKE, SEND, producer(value), at, value=value, key=key)

    def ok(
        self,
        value: str,
        queue: int = 0,
        offset: int = 0,
        key: str | None = None,
        at: float | None = None,
        group: str | None = None,
    ) -> Builder:
        return self.add(
            OK,
            SEND,
            producer(value),
            at,
            value=value,
            key=key,
            group=group,
            queue=queue,
            offset=offset,
        )

    def fail(self, value: str, at: float | None = None) -> Builder:
        return self.add(FAIL, SEND, producer(value), at, value=value, error="BadRequest('no')")

    def info(self, value: str, at: float | None = None) -> Builder:
        return self.add(INFO, SEND, producer(value), at, value=value, error="timeout")

    def send(
        self,
        value: str,
        queue: int = 0,
        offset: int = 0,
        key: str | None = None,
        at: float | None = None,
        group: str | None = None,
    ) -> Builder:
        """An invoke and its acknowledgement, both at the same time."""
        self.invoke(value, key, at)
        return self.ok(value, queue, offset, key, at=self.time, group=group)

    def receive(
        self,
        value: str,
        queue: int = 0,
        offset: int = 0,
        consumer: str = "c0",
        key: str | None = None,
        at: float | None = None,
        group: str | None = None,
    ) -> Builder:
        return self.add(
            OK,
            RECEIVE,
            consumer,
            at,
            value=value,
            key=key,
            group=group,
            queue=queue,
            offset=offset,
        )

    def start(self, window: int, at: float | None = None, fault: str = "partition") -> Builder:
        return self.fault(window, "start", at, fault)

    def end(self, window: int, at: float | None = None, fault: str = "partition") -> Builder:
        return self.fault(window, "end", at, fault)

    def fault(self, window: int, phase: str, at: float | None, fault: str, **extra: Any) -> Builder:
        value = {"fault": fault, "phase": phase, "targets": ["n1"], "window": window, **extra}
        return self.add(INFO, FAULT, "nemesis", at, value=value)

    def outage(self, window: int, group: str, start: float, end: float) -> Builder:
        """A window that killed a majority of ``group`` from ``start`` to ``end``."""
        short = group.removeprefix("broker-")
        extra = {"group": group, "majority_down": True, "targets": [f"{short}/n1", f"{short}/n2"]}
        self.fault(window, "start", start, "kill", **extra)
        return self.fault(window, "end", end, "kill", **extra)

    def phase(self, name: str, at: float | None = None) -> Builder:
        return self.add(INFO, PHASE, "runner", at, value=name)


def producer(value: str) -> str:
    return value.rsplit("-", 1)[0]


# --- summary ---------------------------------------------------------------------------------


def test_summary_counts_every_kind_of_op() -> None:
    b = Builder().phase("workload").start(1)
    b.send("p0-1", offset=0).invoke("p0-2").fail("p0-2").invoke("p0-3").info("p0-3")
    b.invoke("p1-1").end(1)
    b.receive("p0-1").receive("p0-1", consumer="c1").receive("p0-3", offset=1)
    result = summary(b.ops)
    assert result.valid
    assert result.counts == {
        "sends": 4,
        "ok": 1,
        "fail": 1,
        "info": 1,
        "receives": 3,
        "received_values": 2,
        "faults": 1,
    }


# --- lost ------------------------------------------------------------------------------------


def test_nothing_lost_when_every_acknowledged_value_is_received() -> None:
    b = Builder().send("p0-1", offset=0).send("p0-2", offset=1)
    b.receive("p0-2", offset=1).receive("p0-1", offset=0)
    result = lost(b.ops)
    assert result.valid
    assert result.counts == {
        "acknowledged": 2,
        "lost": 0,
        "lost_before": 0,
        "lost_during": 0,
        "lost_after": 0,
    }


def test_lost_values_are_counted_by_when_they_were_acknowledged() -> None:
    b = Builder()
    b.send("p0-1", offset=0, at=1.0)  # before the first fault
    b.start(1, at=10.0)
    b.send("p0-2", offset=1, at=10.0)  # at the window's start: during
    b.send("p0-3", offset=2, at=15.0)  # during
    b.send("p0-4", offset=3, at=20.0)  # at the window's end: during
    b.end(1, at=20.0)
    b.send("p0-5", offset=4, at=25.0)  # between windows: after
    b.start(2, at=30.0).end(2, at=31.0)
    b.send("p0-6", offset=5, at=40.0)  # after
    b.send("p0-7", offset=6, at=41.0)  # received: not lost
    b.receive("p0-7", offset=6, at=42.0)
    result = lost(b.ops)
    assert not result.valid
    assert result.counts == {
        "acknowledged": 7,
        "lost": 6,
        "lost_before": 1,
        "lost_during": 3,
        "lost_after": 2,
    }
    assert result.examples[0] == (
        "p0-1: acknowledged at 1.000 s (before the first fault) as queue 0 offset 0, never received"
    )
    assert "p0-3: acknowledged at 15.000 s (during a fault)" in result.examples[2]
    assert not any("p0-7" in line for line in result.examples)


def test_without_faults_every_loss_is_before() -> None:
    b = Builder().send("p0-1").send("p0-2", offset=1).receive("p0-1")
    assert lost(b.ops).counts["lost_before"] == 1


def test_an_unterminated_window_lasts_until_the_last_op() -> None:
    b = Builder().send("p0-1", at=1.0).start(1, at=5.0)
    b.send("p0-2", offset=1, at=8.0)
    b.phase("done", at=9.0)
    counts = lost(b.ops).counts
    assert (counts["lost_before"], counts["lost_during"], counts["lost_after"]) == (1, 1, 0)
    [window] = fault_windows(b.ops)
    assert (window.window, window.start, window.end, window.ended) == (1, 5.0, 9.0, False)


def test_fault_windows_pair_each_start_with_the_end_of_the_same_window() -> None:
    b = Builder().start(1, at=1.0, fault="pause").start(2, at=2.0, fault="partition")
    b.end(1, at=3.0, fault="pause").end(2, at=7.0, fault="partition")
    windows = fault_windows(b.ops)
    assert [(w.window, w.fault, w.start, w.end, w.ended) for w in windows] == [
        (1, "pause", 1.0, 3.0, True),
        (2, "partition", 2.0, 7.0, True),
    ]
    assert windows[0].targets == ("n1",)


# --- duplicates ------------------------------------------------------------------------------


def test_redelivery_at_the_same_position_is_counted_but_valid() -> None:
    b = Builder().send("p0-1", offset=0).send("p0-2", offset=1)
    b.receive("p0-1", offset=0).receive("p0-2", offset=1)
    b.receive("p0-1", offset=0, consumer="c1").receive("p0-1", offset=0, consumer="c0")
    result = duplicates(b.ops)
    assert result.valid
    assert result.counts == {
        "duplicated": 0,
        "conflicting": 0,
        "redelivered_values": 1,
        "redeliveries": 2,
    }


def test_a_value_stored_at_two_offsets_is_invalid() -> None:
    b = Builder().send("p0-1", queue=0, offset=0).receive("p0-1", queue=0, offset=3)
    result = duplicates(b.ops)
    assert not result.valid
    assert result.counts["duplicated"] == 1
    assert result.examples == ["p0-1: stored at 2 positions: queue 0 offset 0, queue 0 offset 3"]


def test_a_value_received_from_two_queues_is_invalid_without_an_acknowledgement() -> None:
    b = Builder().invoke("p0-1").info("p0-1")
    b.receive("p0-1", queue=0, offset=0).receive("p0-1", queue=1, offset=0)
    assert duplicates(b.ops).counts["duplicated"] == 1


def test_two_values_received_at_one_position_conflict() -> None:
    b = Builder().send("p0-1", offset=0).send("p1-1", offset=0)
    b.receive("p0-1", offset=0).receive("p1-1", offset=0).receive("p1-1", offset=0)
    result = duplicates(b.ops)
    assert not result.valid
    assert result.counts == {
        "duplicated": 0,
        "conflicting": 1,
        "redelivered_values": 1,
        "redeliveries": 1,
    }
    assert result.examples == ["queue 0 offset 0: received with 2 different values: p0-1, p1-1"]


def test_the_same_offset_in_different_queues_is_no_conflict() -> None:
    b = Builder().send("p0-1", queue=0, offset=0).send("p1-1", queue=1, offset=0)
    b.receive("p0-1", queue=0, offset=0).receive("p1-1", queue=1, offset=0)
    assert duplicates(b.ops).valid


# --- unexpected ------------------------------------------------------------------------------


def test_received_values_that_were_sent_are_expected() -> None:
    b = Builder().invoke("p0-1").info("p0-1").receive("p0-1").send("p0-2", offset=1)
    b.receive("p0-2", offset=1)
    result = unexpected(b.ops)
    assert result.valid
    assert result.counts == {"unexpected": 0, "unexpected_receives": 0}


def test_a_value_never_sent_is_unexpected() -> None:
    b = Builder().send("p0-1").receive("p0-1").receive("ghost", offset=1).receive("ghost", 1)
    result = unexpected(b.ops)
    assert not result.valid
    assert result.counts == {"unexpected": 1, "unexpected_receives": 2}
    assert result.examples == [
        "'ghost': received by c0 at 3.000 s from queue 0 offset 1, never sent"
    ]


# --- recovered -------------------------------------------------------------------------------


def test_indeterminate_sends_may_or_may_not_be_stored() -> None:
    b = Builder().invoke("p0-1").info("p0-1").invoke("p0-2").info("p0-2")
    b.invoke("p0-3").fail("p0-3").invoke("p0-4")  # p0-4 never completed
    b.receive("p0-1", offset=0).receive("p0-4", offset=1)
    result = recovered(b.ops)
    assert result.valid
    assert result.counts == {
        "indeterminate": 3,
        "recovered": 2,
        "indeterminate_lost": 1,
        "failed": 1,
        "failed_but_stored": 0,
    }


def test_a_failed_send_that_was_received_is_invalid() -> None:
    b = Builder().invoke("p0-1").fail("p0-1", at=2.5).receive("p0-1")
    result = recovered(b.ops)
    assert not result.valid
    assert result.counts["failed_but_stored"] == 1
    assert result.examples == ["p0-1: failed at 2.500 s (BadRequest('no')), received anyway"]


# --- order -----------------------------------------------------------------------------------


def test_a_producers_sends_are_stored_in_order_per_queue() -> None:
    b = Builder().send("p0-1", queue=0, offset=5).send("p0-2", queue=1, offset=0)
    b.send("p0-3", queue=0, offset=6).send("p1-1", queue=0, offset=2)  # another producer
    result = order(b.ops)
    assert result.valid
    assert result.counts == {"storage_order": 0, "delivery_order": 0}


def test_a_later_send_stored_before_an_earlier_one_is_a_storage_order_violation() -> None:
    b = Builder().send("p0-1", queue=0, offset=5).send("p0-2", queue=0, offset=3)
    b.send("p0-3", queue=0, offset=6)
    result = order(b.ops)
    assert not result.valid
    assert result.counts == {"storage_order": 1, "delivery_order": 0}
    assert result.examples == [
        "storage: p0 sent p0-2 after p0-1, but it was stored at queue 0 offset 3, "
        "not after offset 5"
    ]


def test_two_sends_acknowledged_at_the_same_offset_are_a_storage_order_violation() -> None:
    b = Builder().send("p0-1", queue=0, offset=5).send("p0-2", queue=0, offset=5)
    assert order(b.ops).counts["storage_order"] == 1


def test_first_deliveries_out_of_offset_order_are_a_violation() -> None:
    b = Builder()
    for offset in (0, 2, 1, 3):
        b.receive(f"p0-{offset + 1}", queue=0, offset=offset)
    b.receive("p1-1", queue=1, offset=0)  # another queue is ordered on its own
    result = order(b.ops)
    assert not result.valid
    assert result.counts == {"storage_order": 0, "delivery_order": 1}
    assert result.examples[0].startswith(
        "delivery: queue 0 offset 1 (p0-2) first received by c0 at 3.000 s, after offset 2"
    )


def test_a_rebalance_redelivering_from_the_committed_offset_keeps_delivery_order() -> None:
    b = Builder()
    for offset in range(1, 6):
        b.receive(f"p0-{offset}", offset=offset, consumer="c0")
    for offset in range(1, 8):  # c1 takes the queue over from committed offset 1
        b.receive(f"p0-{offset}", offset=offset, consumer="c1")
    b.receive("p0-4", offset=4, consumer="c0")  # c0 still drains what it had pulled
    assert order(b.ops).valid


def test_order_follows_the_history_index_whatever_order_the_ops_are_given_in() -> None:
    b = Builder().receive("p0-1", offset=0).receive("p0-2", offset=1)
    assert order(list(reversed(b.ops))).valid


def test_fifo_order_passes_when_each_key_stays_in_its_queue_in_order() -> None:
    b = Builder()
    b.send("p0-1", queue=2, offset=0, key="k0-1").send("p0-2", queue=1, offset=0, key="k0-2")
    b.send("p0-3", queue=2, offset=1, key="k0-1")
    b.receive("p0-1", queue=2, offset=0, key="k0-1").receive("p0-2", 1, 0, key="k0-2")
    b.receive("p0-3", queue=2, offset=1, key="k0-1")
    result = order(b.ops, fifo=True)
    assert result.valid
    assert result.counts == {
        "storage_order": 0,
        "delivery_order": 0,
        "key_delivery_order": 0,
        "key_order": 0,
    }


def test_fifo_a_key_stored_out_of_its_send_order_is_a_violation() -> None:
    b = Builder().send("p0-1", queue=0, offset=4, key="k0-1")
    b.send("p0-2", queue=0, offset=2, key="k0-1")
    counts = order(b.ops, fifo=True).counts
    assert counts["key_order"] == 1
    assert counts["storage_order"] == 1


def test_fifo_a_key_split_over_two_queues_is_a_violation() -> None:
    b = Builder().send("p0-1", queue=0, offset=4, key="k0-1")
    b.send("p0-2", queue=1, offset=7, key="k0-1")
    result = order(b.ops, fifo=True)
    assert not result.valid
    assert result.counts["key_order"] == 1
    assert result.counts["storage_order"] == 0  # each queue alone is in order
    assert result.examples == [
        "key order: key k0-1: p0-2 stored in queue 1, but the key's first send p0-1 in queue 0"
    ]


def test_fifo_a_key_delivered_out_of_order_is_a_violation() -> None:
    b = Builder().receive("p0-2", queue=0, offset=3, key="k0-1")
    b.receive("p0-1", queue=0, offset=1, key="k0-1")
    result = order(b.ops, fifo=True)
    assert not result.valid
    assert result.counts["key_delivery_order"] == 1
    assert result.examples[1].startswith("key delivery: key k0-1: queue 0 offset 1 (p0-1)")


def test_without_fifo_no_key_counts_are_reported() -> None:
    b = Builder().receive("p0-2", offset=3, key="k0-1").receive("p0-1", offset=1, key="k0-1")
    assert set(order(b.ops).counts) == {"storage_order", "delivery_order"}


# --- availability ----------------------------------------------------------------------------


def test_availability_measures_gaps_and_recovery_per_window() -> None:
    b = Builder().send("p0-1", at=0.5).start(1, at=10.0)
    for t in (12.0, 13.0, 17.0):
        b.send(f"p0-{t:g}", at=t)
    b.end(1, at=20.0).send("p0-21", at=23.0)
    b.start(2, at=30.0, fault="pause").end(2, at=40.0, fault="pause")
    b.send("p0-41", at=41.5)
    b.start(3, at=50.0).send("p0-51", at=51.25).phase("done", at=60.0)
    result = availability(b.ops)
    assert result.valid
    rows = result.details["windows"]
    assert [(row["window"], row["fault"], row["targets"]) for row in rows] == [
        (1, "partition", ["n1"]),
        (2, "pause", ["n1"]),
        (3, "partition", ["n1"]),
    ]
    # Window 1: gaps 2, 1, 4, 3; the first acknowledgement after it comes 3 s after its end.
    assert rows[0]["longest_gap"] == pytest.approx(4.0)
    assert rows[0]["recovery"] == pytest.approx(3.0)
    # Window 2 has no acknowledgement at all.
    assert rows[1]["longest_gap"] == pytest.approx(10.0)
    assert rows[1]["recovery"] == pytest.approx(1.5)
    # Window 3 never ended: it lasts until the last op, and nothing came after it.
    assert (rows[2]["start"], rows[2]["end"], rows[2]["ended"]) == (50.0, 60.0, False)
    assert rows[2]["longest_gap"] == pytest.approx(8.75)
    assert rows[2]["recovery"] is None
    assert result.counts == pytest.approx(
        {
            "windows": 3,
            "max_gap": 10.0,
            "max_recovery": 3.0,
            "unrecovered": 1,
            # Over the workload (0.5 s to 51.25 s) the longest gap is from 23 s to 41.5 s.
            "longest_gap": 18.5,
        }
    )


def test_availability_counts_an_acknowledgement_at_the_end_as_immediate_recovery() -> None:
    b = Builder().start(1, at=1.0).send("p0-1", at=2.0).end(1, at=3.0)
    b.send("p0-2", at=3.0)
    row = availability(b.ops).details["windows"][0]
    assert row["recovery"] == pytest.approx(0.0)
    assert row["longest_gap"] == pytest.approx(1.0)


def test_the_overall_gap_includes_the_stretch_after_the_last_acknowledgement() -> None:
    b = Builder().send("p0-1", at=1.0).invoke("p0-2", at=2.0).info("p0-2", at=7.5)
    result = availability(b.ops)
    assert result.counts == {
        "windows": 0,
        "max_gap": 0.0,
        "max_recovery": 0.0,
        "unrecovered": 0,
        "longest_gap": pytest.approx(6.5),
    }


def test_availability_fails_only_when_no_send_was_ever_acknowledged() -> None:
    b = Builder().start(1).invoke("p0-1").info("p0-1").invoke("p0-2").fail("p0-2").end(1)
    result = availability(b.ops)
    assert not result.valid
    assert result.examples == ["none of the 4 send ops is an acknowledgement"]
    assert result.details["windows"][0]["longest_gap"] == pytest.approx(5.0)
    assert availability(Builder().start(1).end(1).ops).valid  # nothing was sent at all


# --- check_all -------------------------------------------------------------------------------


def test_check_all_runs_every_checker_in_a_fixed_order() -> None:
    b = Builder().phase("workload").send("p0-1", key="k0-1").receive("p0-1", key="k0-1")
    results = check_all(b.ops)
    assert [r.name for r in results] == [
        "summary",
        "lost",
        "duplicates",
        "unexpected",
        "recovered",
        "order",
        "availability",
    ]
    assert all(r.valid for r in results)
    assert "key_order" in check_all(b.ops, fifo=True)[5].counts
    assert all(r.valid for r in check_all([]))


def test_results_are_json_able() -> None:
    b = Builder().start(1).send("p0-1").end(1).send("p0-2", offset=1).receive("p0-3")
    text = json.dumps([attrs.asdict(r) for r in check_all(b.ops, fifo=True)])
    assert '"windows": [{"window": 1, "fault": "partition", "targets": ["n1"]' in text


# --- A correct model of the queue ------------------------------------------------------------

PRODUCERS = 3
CONSUMERS = 2
QUEUES = 3
KEYS_PER_PRODUCER = 2
ACTIONS = ("send", "send", "send", "deliver", "deliver", "rebalance", "fault", "pause")
# How a send ends, chosen by the step's number: mostly acknowledged.
OUTCOMES = ("ok", "ok", "ok", "info stored", "info", "fail")
# Where each model queue is: (broker group, queue id), so that queue 0 is in both groups and a
# checker that keyed on the queue id alone would see conflicts.
PLACES = (("broker-a", 0), ("broker-a", 1), ("broker-b", 0))


class Model:
    """Producers that send one value at a time and queues that keep what is stored, in order.
    Each queue is consumed by one consumer at a time from a read position; a rebalance hands it
    to a consumer that starts again at any earlier position (so redelivers), as from a committed
    offset. At the end every stored message is delivered: nothing acknowledged is lost."""

    def __init__(self, fifo: bool) -> None:
        self.fifo = fifo
        self.b = Builder()
        self.numbers = [0] * PRODUCERS
        self.pending: list[tuple[str, str | None] | None] = [None] * PRODUCERS
        self.stored: list[list[tuple[str, str | None]]] = [[] for _ in range(QUEUES)]
        self.read = [0] * QUEUES
        self.owner = [0] * QUEUES
        self.windows = 0
        self.open = False
        self.acknowledged: list[str] = []

    def step(self, action: str, n: int) -> None:
        if action == "send":
            # Invoke the producer's next send, or complete the one it is waiting for.
            p = n % PRODUCERS
            if self.pending[p] is None:
                self.invoke(p)
            else:
                self.complete(p, OUTCOMES[n // PRODUCERS % len(OUTCOMES)], n)
        elif action == "deliver":
            for _ in range(n // QUEUES % 4 + 1):
                self.deliver(n % QUEUES)
        elif action == "rebalance":
            q = n % QUEUES
            self.owner[q] = n // QUEUES % CONSUMERS
            self.read[q] = n // (QUEUES * CONSUMERS) % (self.read[q] + 1)
        elif action == "fault":
            self.toggle_fault()
        else:
            self.b.time += n % 5 + 0.25

    def invoke(self, p: int) -> None:
        if self.pending[p] is not None:
            return
        self.numbers[p] += 1
        number = self.numbers[p]
        value = f"p{p}-{number}"
        key = f"k{p}-{number % KEYS_PER_PRODUCER}" if self.fifo else None
        self.pending[p] = (value, key)
        self.b.invoke(value, key)

    def complete(self, p: int, outcome: str, n: int) -> None:
        sent = self.pending[p]
        if sent is None:
            return
        self.pending[p] = None
        value, key = sent
        if outcome == "fail":
            self.b.fail(value)
            return
        if self.fifo:
            queue = (p * KEYS_PER_PRODUCER + int(value.split("-")[1]) % KEYS_PER_PRODUCER) % QUEUES
        else:
            queue = n // 7 % QUEUES
        if outcome == "info":
            self.b.info(value)
            return
        offset = len(self.stored[queue])
        self.stored[queue].append((value, key))
        if outcome == "ok":
            group, queue_id = PLACES[queue]
            self.b.ok(value, queue_id, offset, key, group=group)
            self.acknowledged.append(value)
        else:
            self.b.info(value)

    def deliver(self, q: int) -> None:
        offset = self.read[q]
        if offset < len(self.stored[q]):
            value, key = self.stored[q][offset]
            group, queue_id = PLACES[q]
            self.b.receive(
                value, queue_id, offset, consumer=f"c{self.owner[q]}", key=key, group=group
            )
            self.read[q] += 1

    def toggle_fault(self) -> None:
        if self.open:
            self.b.end(self.windows)
        else:
            self.windows += 1
            self.b.start(self.windows)
        self.open = not self.open

    def finish(self, heal: bool) -> list[Op]:
        if not self.acknowledged:
            # The availability check rightly fails a run where nothing was ever acknowledged.
            self.complete(0, "info", 0)
            self.invoke(0)
            self.complete(0, "ok", 0)
        for p in range(PRODUCERS):
            self.complete(p, "info", p)
        if heal and self.open:
            self.toggle_fault()
        self.b.phase("drain")
        for q in range(QUEUES):
            while self.read[q] < len(self.stored[q]):
                self.deliver(q)
        self.b.phase("done")
        return self.b.ops


steps = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 10_000)), min_size=40, max_size=400
)


@st.composite
def correct_histories(draw: st.DrawFn) -> tuple[list[Op], bool, list[str]]:
    fifo = draw(st.booleans())
    model = Model(fifo)
    for action, n in draw(steps):
        model.step(action, n)
    ops = model.finish(heal=draw(st.booleans()))
    return ops, fifo, model.acknowledged


@settings(max_examples=200, deadline=None)
@given(correct_histories())
def test_every_history_of_a_correct_queue_passes(
    history: tuple[list[Op], bool, list[str]],
) -> None:
    ops, fifo, _ = history
    failed = [r for r in check_all(ops, fifo) if not r.valid]
    assert failed == []


@settings(max_examples=200, deadline=None)
@given(correct_histories(), st.data())
def test_dropping_the_receives_of_an_acknowledged_value_is_a_loss(
    history: tuple[list[Op], bool, list[str]], data: st.DataObject
) -> None:
    ops, _, acknowledged = history
    victim = data.draw(st.sampled_from(acknowledged))
    kept = [op for op in ops if not (op.f == RECEIVE and op.value == victim)]
    result = lost(kept)
    assert not result.valid
    assert result.counts["lost"] == 1
    assert result.examples[0].startswith(f"{victim}: acknowledged at ")


def test_a_final_read_missing_an_acknowledged_value_is_loss_even_if_it_was_received() -> None:
    ops = [
        Op(0, 0.0, "p0", "invoke", "send", value="p0-1"),
        Op(1, 0.1, "p0", "ok", "send", value="p0-1", queue=0, offset=0),
        Op(2, 0.2, "c0", "ok", "receive", value="p0-1", queue=0, offset=0),
        Op(3, 0.3, "runner", "info", "phase", value="read"),
    ]
    result = lost(ops)
    assert not result.valid
    assert result.counts["lost"] == 0 and result.counts["lost_from_storage"] == 1

    stored = [*ops, Op(4, 0.4, "reader", "ok", "read", value="p0-1", queue=0, offset=0)]
    assert lost(stored).valid
    # Without a final read there is nothing to compare with.
    assert lost(ops[:3]).valid


def test_fifo_exclusive_flags_two_consumers_holding_one_queue_at_once() -> None:
    def holding(index: int, process: str, offset: int, start: float, end: float) -> list[Op]:
        return [
            Op(index, start, process, "ok", "receive", value=f"v{offset}", queue=0, offset=offset),
            Op(index + 1, end, process, "ok", "ack", value=f"v{offset}", queue=0, offset=offset),
        ]

    # c0 holds offset 0 until 1.0; c1 takes the queue over only after that.
    handed_over = holding(0, "c0", 0, 0.0, 1.0) + holding(2, "c1", 1, 1.5, 1.6)
    assert fifo_exclusive(handed_over).valid
    assert fifo_exclusive(handed_over).counts == {"holdings": 2, "overlaps": 0}

    # c1 receives while c0 still holds offset 0: the queue was read by two consumers at once.
    overlapping = holding(0, "c0", 0, 0.0, 1.0) + holding(2, "c1", 0, 0.5, 0.6)
    result = fifo_exclusive(overlapping)
    assert not result.valid and result.counts["overlaps"] == 1
    assert "c1 received offset 0" in result.examples[0]

    # check_all runs it for fifo histories only.
    assert "fifo_exclusive" in {r.name for r in check_all(overlapping, fifo=True)}
    assert "fifo_exclusive" not in {r.name for r in check_all(overlapping)}


# --- Several broker groups: a queue is (group, queue) ----------------------------------------

A, B = "broker-a", "broker-b"


def test_the_same_queue_and_offset_in_two_groups_are_two_positions() -> None:
    b = Builder().send("p0-1", queue=0, offset=0, group=A).send("p0-2", queue=0, offset=0, group=B)
    b.receive("p0-1", group=A).receive("p0-2", group=B)
    result = duplicates(b.ops)
    assert result.valid and result.counts["conflicting"] == 0

    # One value at queue 0 offset 0 of both groups is stored twice, and says so by group.
    twice = Builder().send("p0-1", group=A).receive("p0-1", group=A).receive("p0-1", group=B)
    result = duplicates(twice.ops)
    assert not result.valid and result.counts["duplicated"] == 1
    assert result.examples == [
        "p0-1: stored at 2 positions: broker-a queue 0 offset 0, broker-b queue 0 offset 0"
    ]


def test_order_is_per_group_and_queue() -> None:
    # p0 sends to queue 0 of a (offset 5), then of b (offset 0): two queues, no regression.
    b = Builder().send("p0-1", offset=5, group=A).send("p0-2", offset=0, group=B)
    b.receive("p0-1", offset=5, group=A).receive("p0-2", offset=0, group=B)
    assert order(b.ops).valid
    # Within one group's queue a regression is still one.
    b.send("p0-3", offset=4, group=A).receive("p0-3", offset=4, group=A)
    result = order(b.ops)
    assert result.counts == {"storage_order": 1, "delivery_order": 1}
    assert "stored at broker-a queue 0 offset 4" in result.examples[0]


def test_fifo_a_key_in_queue_0_of_two_groups_left_its_queue() -> None:
    b = Builder().send("p0-1", key="k0-1", group=A).send("p0-2", key="k0-1", offset=1, group=B)
    result = order(b.ops, fifo=True)
    assert result.counts["key_order"] == 1
    assert result.examples == [
        "key order: key k0-1: p0-2 stored in broker-b queue 0, but the key's first send p0-1 "
        "in broker-a queue 0"
    ]


def test_fifo_exclusive_holdings_of_queue_0_in_two_groups_do_not_overlap() -> None:
    ops = [
        Op(0, 0.0, "c0", "ok", "receive", value="v0", group=A, queue=0, offset=0),
        Op(1, 0.1, "c1", "ok", "receive", value="v1", group=B, queue=0, offset=0),
        Op(2, 1.0, "c0", "ok", "ack", value="v0", group=A, queue=0, offset=0),
        Op(3, 1.1, "c1", "ok", "ack", value="v1", group=B, queue=0, offset=0),
    ]
    assert fifo_exclusive(ops).counts == {"holdings": 2, "overlaps": 0}
    same_group = [attrs.evolve(op, group=A) for op in ops]
    assert fifo_exclusive(same_group).counts["overlaps"] == 1


def test_summary_counts_acknowledgements_per_group_when_there_are_several() -> None:
    b = Builder().send("p0-1", group=A).send("p0-2", group=B).send("p0-3", group=B)
    assert summary(b.ops).counts["ok_broker-b"] == 2
    assert "ok_broker-a" not in summary(Builder().send("p0-1", group=A).ops).counts


def test_fault_windows_keep_the_group_and_whether_its_majority_was_down() -> None:
    (window,) = fault_windows(Builder().outage(1, B, 1.0, 9.0).ops)
    assert (window.group, window.majority_down, window.targets) == (B, True, ("b/n1", "b/n2"))
    (plain,) = fault_windows(Builder().start(1).end(1).ops)
    assert (plain.group, plain.majority_down) == (None, False)


def outage_history(healthy_at: list[float], keyed: bool = False) -> Builder:
    """Group a's majority down from 10 to 20 s; sends to a before, to b at ``healthy_at``,
    and to a again at 24 s."""
    b = Builder().send("p0-1", group=A, at=1.0).outage(1, A, 10.0, 20.0)
    for n, t in enumerate(healthy_at, start=2):
        b.send(f"p0-{n}", offset=n, key="k" if keyed else None, group=B, at=t)
    return b.send("p0-99", offset=1, group=A, at=24.0)


def test_group_independence_passes_when_the_other_group_acknowledges_during_the_outage() -> None:
    result = group_independence(outage_history([12.0, 13.0]).ops, patience_s=6.0)
    assert result.valid
    assert result.counts == {
        "windows": 1,
        "too_short": 0,
        "starved": 0,
        "min_healthy": 2,
        "max_rejoin": 4.0,
        "not_rejoined": 0,
        "ok_broker-a": 2,
        "ok_broker-b": 2,
    }
    (row,) = result.details["windows"]
    assert row["group"] == A and row["healthy_acks"] == 2 and row["down_group_acks"] == 0
    assert row["longest_healthy_gap"] == pytest.approx(7.0)  # from 13 s to the end at 20 s
    assert row["rejoin"] == pytest.approx(4.0)


def test_group_independence_fails_a_window_the_other_group_acknowledged_nothing_in() -> None:
    # b acknowledged only before and after the window, and keyed sends do not count.
    for ops in (outage_history([5.0, 21.0]).ops, outage_history([12.0], keyed=True).ops):
        result = group_independence(ops, patience_s=6.0)
        assert not result.valid and result.counts["starved"] == 1
        assert result.examples == [
            "window 1: kill of a/n1, a/n2 took broker-a's majority away from 10.000 s to "
            "20.000 s, and no other group acknowledged an unkeyed send meanwhile"
        ]


def test_group_independence_does_not_judge_short_windows_or_windows_without_sends() -> None:
    short = group_independence(outage_history([]).ops, patience_s=10.0)
    assert short.valid and short.counts["too_short"] == 1 and short.counts["windows"] == 0
    assert short.details["windows"][0]["judged"] is False
    # A window after the last send op: no producer ran, nothing to judge.
    late = Builder().send("p0-1", group=A, at=1.0).outage(1, A, 10.0, 20.0)
    assert late.ops and group_independence(late.ops).details["windows"] == []
    # Windows that left every majority (a leader killed) are not its business.
    b = Builder().send("p0-1", group=A, at=1.0).start(1, at=2.0).end(1, at=30.0)
    b.send("p0-2", group=A, at=40.0)
    assert group_independence(b.ops).counts["windows"] == 0


def test_group_independence_runs_with_several_groups_and_not_fifo() -> None:
    ops = outage_history([]).ops
    names = [r.name for r in check_all(ops, groups=2, patience_s=6.0)]
    assert names[-1] == "group_independence"
    assert "group_independence" not in [r.name for r in check_all(ops)]
    assert "group_independence" not in [r.name for r in check_all(ops, fifo=True, groups=2)]
    assert not check_all(ops, groups=2, patience_s=6.0)[-1].valid


# --- membership --------------------------------------------------------------------------------


def step(
    b: Builder,
    change: int,
    action: str,
    node: str,
    start: float,
    end: float,
    result: str = OK,
    voters: list[str] | None = None,
    group: str = "broker-a",
) -> Builder:
    value: dict[str, Any] = {"change": change, "action": action, "node": node, "group": group}
    b.add(INVOKE, MEMBERSHIP, "membership", start, value=value, group=group)
    done = {**value, "took_s": end - start}
    if voters is not None:
        done.update(voters=voters, learners=[])
    error = None if result == OK else "TooSlowError"
    return b.add(result, MEMBERSHIP, "membership", end, value=done, group=group, error=error)


def replacement(acks_at: list[float]) -> Builder:
    """Change 1 from 10 to 20 s: n4 added and promoted, n2 removed; sends at ``acks_at``."""
    b = Builder()
    for n, t in enumerate(acks_at):
        b.send(f"p0-{n}", offset=n, group="broker-a", at=t)
    step(b, 1, "start-spare", "n4", 10.0, 11.0, voters=["n1", "n2", "n3"])
    step(b, 1, "add-learner", "n4", 11.0, 12.0, voters=["n1", "n2", "n3"])
    step(b, 1, "catch-up", "n4", 12.0, 14.0, voters=["n1", "n2", "n3"])
    step(b, 1, "promote", "n4", 14.0, 15.0, voters=["n1", "n2", "n3", "n4"])
    step(b, 1, "remove", "n2", 15.0, 19.0, voters=["n1", "n3", "n4"])
    return step(b, 1, "stop", "n2", 19.0, 20.0)


def test_membership_passes_a_replacement_during_which_sends_went_on() -> None:
    result = membership(replacement([9.0, 12.5, 15.5, 18.0, 21.0]).ops, patience_s=6.0)
    assert result.valid, result.examples
    assert result.counts == {
        "changes": 1,
        "added": 1,
        "promoted": 1,
        "removed": 1,
        "failed_steps": 0,
        "indeterminate_steps": 0,
        "open_steps": 0,
        "judged": 1,
        "stalled": 0,
        "shrunk": 0,
        "max_gap": 3.0,
        "min_voters": 3,
    }
    (change,) = result.details["changes"]
    assert change["took_s"] == 10.0 and change["acknowledged"] == 3 and change["judged"]
    remove = next(row for row in result.details["steps"] if row["action"] == "remove")
    assert remove["node"] == "n2" and remove["took_s"] == 4.0 and remove["acknowledged"] == 2
    assert remove["voters"] == ["n1", "n3", "n4"] and remove["result"] == OK


def test_membership_fails_a_change_that_stalled_sends_outside_any_fault() -> None:
    result = membership(replacement([9.0, 11.0, 19.5]).ops, patience_s=6.0)
    assert not result.valid and result.counts["stalled"] == 1
    assert result.examples == [
        "change 1 (broker-a, 10.000 s to 20.000 s, no fault window): 8.500 s without an "
        "acknowledged send in its group"
    ]
    # The same stall while a fault window overlaps it is not judged.
    b = replacement([9.0, 11.0, 19.5]).start(1, at=16.0).end(1, at=25.0)
    faulty = membership(b.ops, patience_s=6.0)
    assert faulty.valid and faulty.counts["judged"] == 0
    assert faulty.details["changes"][0]["fault_windows"] == [1]
    # Another group's acknowledgements do not count for the changed group.
    other = replacement([9.0, 11.0, 19.5])
    for n, t in enumerate([12.0, 14.0, 16.0, 18.0]):
        other.send(f"p1-{n}", offset=n, group="broker-b", at=t)
    assert not membership(other.ops, patience_s=6.0).valid


def test_membership_fails_when_a_group_went_below_its_starting_voters() -> None:
    b = replacement([10.5, 13.0, 16.0, 19.0])
    step(b, 2, "remove", "n3", 30.0, 31.0, voters=["n1", "n4"])
    result = membership(b.ops, patience_s=6.0)
    assert not result.valid and result.counts["shrunk"] == 1 and result.counts["min_voters"] == 2


def test_membership_counts_failed_indeterminate_and_open_steps() -> None:
    b = Builder().send("p0-1", at=1.0)
    step(b, 1, "start-spare", "n4", 2.0, 2.5, voters=["n1", "n2", "n3"])
    step(b, 1, "add-learner", "n4", 3.0, 23.0, result=INFO)
    step(b, 2, "start-spare", "n4", 30.0, 30.5, result=FAIL)
    b.add(INVOKE, MEMBERSHIP, "membership", 31.0, value={"change": 3, "action": "promote"})
    result = membership(b.ops)
    assert result.counts["indeterminate_steps"] == 1
    assert result.counts["failed_steps"] == 1 and result.counts["open_steps"] == 1
    assert result.counts["added"] == 0 and result.counts["changes"] == 3


def test_check_all_runs_membership_only_when_the_history_has_changes() -> None:
    ops = replacement([9.0, 12.5, 15.5, 18.0]).ops
    assert [r.name for r in check_all(ops, patience_s=6.0)][-1] == "membership"
    assert "membership" not in [r.name for r in check_all(Builder().send("p0-1").ops)]
