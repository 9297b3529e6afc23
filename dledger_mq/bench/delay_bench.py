"""``dledger-mq bench delay``: delayed messages (issue 17) on local three-node clusters.

Three figures, each beside the issue's target, from real node processes (``sync`` flush, a
naming node in each) on free ports of 127.0.0.1, and a producer and consumers in this process:

- **lateness**, on an idle cluster: ``--messages`` messages, scheduled with ``deliver_at``
  (``--batch`` messages a ``send_batch`` share one time) at times spread evenly over ``--spread``
  seconds, the first ``--lead`` seconds after the scheduling began; one consumer reads them.
  For each delivered message: the time this process received it minus its deliver-at time
  (``__DELIVER_AT_MS``, the time asked for), and the time its copy was stored, i.e. became
  visible (``store_timestamp_ms``), minus the deliver-at time: the part before the consumer.
  p50/p99/max of both; any message received or stored before its time is counted as early.
  Target: p99 within 100 ms after its time; none early.
- **memory**, on a fresh cluster: each node's ``VmRSS`` (and ``RssAnon``, and the peak
  ``VmHWM``) from ``/proc/PID/status`` before and after ``--timers`` messages are scheduled 1 to
  2 days ahead (``send_batch`` of ``--timer-batch`` with ``delay=``, ``--concurrency`` in
  flight), once every node has applied them all. Then, in this process, the ``TimerWheel``
  alone holding as many timers (``tracemalloc``), and what a snapshot of it costs (the
  two columns packed, as ``BrokerState.to_snapshot`` does): its
  transient memory and its time. Target: under 50 MB per node for a million pending timers.
- **failover**, on the lateness phase's cluster: ``--kills`` times, ``--failover-messages``
  messages due from 1 s before to 2 s after a SIGKILL of the leader. Beside the time from the
  kill to the new leader (its status says it leads): how late the messages due meanwhile, and
  all of them, were stored and received, and that none is lost and none is stored twice (by
  message id; a copy the consumer is given again at the same offset after the failover is
  at-least-once delivery, counted apart). The killed node is restarted and caught up before
  the next kill.

Progress goes to ``echo`` (a line per phase, and every second while one runs); the report is
text or, with ``--json``, one object. CPU busy by other programs during the lateness and memory
phases is measured from ``/proc`` (``cpu.py``), since this machine is shared.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import trio

from dledger_mq.bench import cpu
from dledger_mq.bench.raft_bench import percentile
from dledger_mq.broker.records import SLOT_BITS
from dledger_mq.broker.timers import TimerWheel
from dledger_mq.clients.consumer import Consumer, ReceivedMessage
from dledger_mq.clients.producer import Producer
from dledger_mq.logs import configure_logging
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.local_cluster import LocalCluster
from dledger_mq.wire.broker import DELIVER_AT_PROPERTY

LATENESS_TOPIC = "bench-delay"
FAILOVER_TOPIC = "bench-delay-failover"
MEMORY_TOPIC = "bench-delay-memory"
#: The issue's targets.
TARGET_P99_MS = 100.0
TARGET_MB_PER_MILLION = 50.0
#: Failover: messages are due from this long before the kill to this long after it.
BEFORE_KILL_SECONDS = 1.0
AFTER_KILL_SECONDS = 2.0
#: Memory: timers are due this far ahead, spread evenly (the broker's max_delay_ms: 3 days).
MEMORY_DELAY_FROM = timedelta(days=1)
MEMORY_DELAY_SPREAD = timedelta(days=1)
#: The broker's default max_timers (node.toml ``max_timers``); more asked for raises it.
DEFAULT_MAX_TIMERS = 2_000_000
#: The longest a cluster may take to elect a leader or to catch a node up.
SETTLE_TIMEOUT_SECONDS = 120.0

Echo = Callable[[str], None]


# -- deliveries ------------------------------------------------------------------------------


@attrs.frozen
class Delivery:
    """One message as the consumer got it."""

    msg_id: str
    #: When this process received it (wall clock, ms since the epoch).
    received_ms: float
    #: When its copy was stored, i.e. became visible (the leader's clock).
    stored_ms: int
    #: The time asked for (``__DELIVER_AT_MS``); None for a message sent without one.
    deliver_at_ms: int | None
    #: (broker group, queue, offset): where the delivered copy lies.
    where: tuple[str, int, int]


class Deliveries:
    """Everything a consumer receives, by message id (each acknowledged at once)."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[Delivery]] = {}
        #: Messages without a deliver-at time (the warm-up ones).
        self.undelayed = 0

    async def collect(self, consumer: Consumer) -> None:
        async for message in consumer:
            self.add(message, time.time() * 1000)
            await message.ack()

    def add(self, message: ReceivedMessage, received_ms: float) -> None:
        raw = message.properties.get(DELIVER_AT_PROPERTY)
        deliver_at = int(raw) if raw is not None and raw.isdigit() else None
        if deliver_at is None:
            self.undelayed += 1
        delivery = Delivery(
            message.msg_id,
            received_ms,
            message.stored.store_timestamp_ms,
            deliver_at,
            (message.group, message.queue_id, message.offset),
        )
        self.by_id.setdefault(message.msg_id, []).append(delivery)

    def delivered(self, msg_ids: Iterable[str]) -> int:
        return sum(1 for msg_id in msg_ids if msg_id in self.by_id)


@attrs.frozen
class Schedule:
    """Messages a phase scheduled: message id -> the deliver-at time asked for (ms)."""

    due_ms: dict[str, int]
    #: Receipts with an offset (not -1): stored as due already, not as timers.
    stored_at_once: int
    seconds: float


def _stats(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "max": None, "min": None}
    return {
        "p50": round(percentile(ordered, 0.5), 1),
        "p99": round(percentile(ordered, 0.99), 1),
        "max": round(ordered[-1], 1),
        "min": round(ordered[0], 1),
    }


def _stats_text(stats: dict[str, float | None]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} ms"

    return f"p50 {ms(stats['p50'])}  p99 {ms(stats['p99'])}  max {ms(stats['max'])}"


@attrs.frozen
class Outcome:
    """What became of the messages of one schedule."""

    scheduled: int
    stored_at_once: int
    #: Scheduled and never delivered (message ids).
    lost: tuple[str, ...]
    #: Received or stored before their deliver-at time.
    early: int
    #: Message ids whose copy was stored at more than one (group, queue, offset): a timer
    #: fired twice.
    duplicate_copies: int
    #: Message ids the consumer was given more than once at the same offset (at least once).
    redelivered: int
    #: Per message delivered, its first delivery: received - deliver-at, stored - deliver-at.
    receive_late_ms: list[float]
    store_late_ms: list[float]
    #: The first delivery of each message delivered, with the time asked for.
    firsts: tuple[tuple[int, Delivery], ...]

    @classmethod
    def of(cls, schedule: Schedule, deliveries: Deliveries) -> Outcome:
        lost = []
        early = duplicates = redelivered = 0
        receive_late: list[float] = []
        store_late: list[float] = []
        firsts = []
        for msg_id, asked_ms in schedule.due_ms.items():
            got = deliveries.by_id.get(msg_id)
            if not got:
                lost.append(msg_id)
                continue
            places = {delivery.where for delivery in got}
            if len(places) > 1:
                duplicates += 1
            if len(got) > len(places):
                redelivered += 1
            first = min(got, key=lambda delivery: delivery.received_ms)
            # The property is the time asked for, as the broker read it.
            due = first.deliver_at_ms if first.deliver_at_ms is not None else asked_ms
            if any(d.received_ms < due or d.stored_ms < due for d in got):
                early += 1
            receive_late.append(first.received_ms - due)
            store_late.append(float(first.stored_ms - due))
            firsts.append((due, first))
        return cls(
            len(schedule.due_ms),
            schedule.stored_at_once,
            tuple(lost),
            early,
            duplicates,
            redelivered,
            receive_late,
            store_late,
            tuple(firsts),
        )

    @property
    def correct(self) -> bool:
        return not self.lost and not self.early and not self.duplicate_copies

    def counts_json(self) -> dict[str, object]:
        return {
            "scheduled": self.scheduled,
            "delivered": self.scheduled - len(self.lost),
            "lost": len(self.lost),
            "early": self.early,
            "duplicate_copies": self.duplicate_copies,
            "redelivered": self.redelivered,
            "stored_at_once": self.stored_at_once,
        }

    def counts_text(self) -> str:
        return (
            f"early {self.early}, lost {len(self.lost)}, duplicate copies "
            f"{self.duplicate_copies}, redelivered at the same offset {self.redelivered}, "
            f"stored at once (sent after their time) {self.stored_at_once}"
        )


# -- helpers ---------------------------------------------------------------------------------


def _at(due_ms: int) -> datetime:
    return datetime.fromtimestamp(due_ms // 1000, UTC) + timedelta(milliseconds=due_ms % 1000)


async def schedule(
    producer: Producer,
    topic: str,
    times_ms: list[int] | None,
    delays: list[timedelta] | None,
    batch: int,
    count: int,
    size: int,
    concurrency: int,
    echo: Echo,
    label: str,
) -> Schedule:
    """``count`` messages in ``send_batch`` calls of ``batch`` (``concurrency`` in flight, in
    the order of the list): batch ``i`` with ``deliver_at=times_ms[i]`` or ``delay=delays[i]``.
    A line every second."""
    body = b"d" * size
    batches = math.ceil(count / batch)
    due_ms: dict[str, int] = {}
    at_once = 0
    next_batch = 0
    done = 0
    began = time.perf_counter()

    async def worker() -> None:
        nonlocal next_batch, done, at_once
        while next_batch < batches:
            number = next_batch
            next_batch += 1
            size_of = min(batch, count - number * batch)
            if times_ms is not None:
                asked = times_ms[number]
                receipts = await producer.send_batch(topic, [body] * size_of, deliver_at=_at(asked))
            else:
                assert delays is not None
                asked = int(time.time() * 1000) + delays[number] // timedelta(milliseconds=1)
                receipts = await producer.send_batch(topic, [body] * size_of, delay=delays[number])
            for receipt in receipts:
                due_ms[receipt.msg_id] = asked
                if receipt.offset != -1:
                    at_once += 1
            done += size_of

    async def progress() -> None:
        while True:
            await trio.sleep(1.0)
            elapsed = time.perf_counter() - began
            echo(f"  {label}: scheduled {done:,} of {count:,} ({done / elapsed:,.0f}/s)")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress)
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(worker)
        nursery.cancel_scope.cancel()
    return Schedule(due_ms, at_once, time.perf_counter() - began)


async def wait_delivered(
    deliveries: Deliveries, msg_ids: list[str], until_wall: float, echo: Echo, label: str
) -> None:
    """Until every message of ``msg_ids`` was delivered, or ``until_wall`` (epoch seconds);
    a line every second."""
    last = time.perf_counter()
    while time.time() < until_wall:
        got = deliveries.delivered(msg_ids)
        if got == len(msg_ids):
            return
        if time.perf_counter() - last >= 1.0:
            last = time.perf_counter()
            echo(f"  {label}: {got:,} of {len(msg_ids):,} delivered")
        await trio.sleep(0.05)


async def sleep_until(
    wall: float, deliveries: Deliveries, msg_ids: list[str], echo: Echo, label: str
) -> None:
    """Until ``wall`` (epoch seconds), saying every second how many of ``msg_ids`` were
    delivered."""
    while (left := wall - time.time()) > 0:
        await trio.sleep(min(1.0, left))
        if wall - time.time() > 0.05:
            echo(f"  {label}: {deliveries.delivered(msg_ids):,} of {len(msg_ids):,} delivered")


async def wait_for_undelayed(deliveries: Deliveries, count: int) -> None:
    while deliveries.undelayed < count:
        await trio.sleep(0.02)


async def caught_up(cluster: LocalCluster, echo: Echo | None = None) -> int:
    """Until there is a leader and every node has applied its commit index (saying where
    each node is every second, with ``echo``); the leader's term."""
    last = time.perf_counter()
    with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
        while True:
            probes = await fetch_all(cluster.endpoints)
            statuses = [status for _, _, status in probes]
            leaders = [s for s in statuses if s is not None and s.role == "leader"]
            if leaders and all(s is not None for s in statuses):
                leader = max(leaders, key=lambda s: s.term)
                if all(s is not None and s.applied_index >= leader.commit_index for s in statuses):
                    return leader.term
            if echo is not None and time.perf_counter() - last >= 1.0:
                last = time.perf_counter()
                where = ", ".join(
                    f"{node_id} {'down' if s is None else f'{s.role} applied {s.applied_index:,}'}"
                    for node_id, _, s in probes
                )
                echo(f"  waiting for every node to apply: {where}")
            await trio.sleep(0.05)


def proc_status_kb(pid: int) -> dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``VmHWM`` of process ``pid`` in kB (empty if it is gone)."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "VmHWM"):
                found[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


def _cpu_sample(cluster: LocalCluster) -> cpu.CpuSample | None:
    return cpu.sample({node_id: [p.pid] for node_id, p in cluster.processes.items()})


def _others(usage: cpu.CpuUse) -> float | None:
    cores = usage.cores()
    return cores.get(cpu.OTHERS) if cores else None


def _start_cluster(
    directory: str | None, settings: dict[str, object] | None = None
) -> tuple[Path, LocalCluster]:
    root = Path(tempfile.mkdtemp(prefix="bench-delay-", dir=directory or "."))
    cluster = LocalCluster(root, "sync", with_naming=True, settings=settings)
    cluster.start_all()
    return root, cluster


# -- lateness --------------------------------------------------------------------------------


@attrs.frozen
class Lateness:
    messages: int
    lead: float
    spread: float
    batch: int
    outcome: Outcome
    others_cores: float | None

    @property
    def met(self) -> bool:
        p99 = _stats(self.outcome.receive_late_ms)["p99"]
        return p99 is not None and p99 <= TARGET_P99_MS and self.outcome.correct

    def as_json(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "lead_s": self.lead,
            "spread_s": self.spread,
            "batch": self.batch,
            **self.outcome.counts_json(),
            "receive_late_ms": _stats(self.outcome.receive_late_ms),
            "store_late_ms": _stats(self.outcome.store_late_ms),
            "target_p99_ms": TARGET_P99_MS,
            "met": self.met,
            "others_cores": self.others_cores,
        }

    def text(self) -> list[str]:
        times = math.ceil(self.messages / self.batch)
        others = "" if self.others_cores is None else f"; others busy {self.others_cores:.2f} cores"
        return [
            f"lateness, idle cluster: {self.messages:,} messages due over {self.spread:g} s from "
            f"{self.lead:g} s after scheduling began ({times:,} times, {self.batch} a time)"
            f"{others}",
            f"  {'received - deliver-at':<24}{_stats_text(_stats(self.outcome.receive_late_ms))}"
            f"   (target p99 <= {TARGET_P99_MS:g} ms: {'met' if self.met else 'NOT met'})",
            f"  {'stored - deliver-at':<24}{_stats_text(_stats(self.outcome.store_late_ms))}",
            f"  {self.outcome.counts_text()}",
        ]


async def lateness_phase(
    cluster: LocalCluster,
    producer: Producer,
    messages: int,
    lead: float,
    spread: float,
    batch: int,
    size: int,
    concurrency: int,
    wait: float,
    echo: Echo,
) -> Lateness:
    naming = list(cluster.naming.values())
    await producer.send(LATENESS_TOPIC, b"warm up")  # creates the topic
    deliveries = Deliveries()
    usage = cpu.CpuUse()
    async with (
        Consumer(naming=naming, group="bench-delay", topic=LATENESS_TOPIC) as consumer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(deliveries.collect, consumer)
        with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
            await wait_for_undelayed(deliveries, 1)
        echo(f"lateness: the consumer reads {LATENESS_TOPIC}; scheduling {messages:,}")
        before = _cpu_sample(cluster)
        start = time.time()
        batches = math.ceil(messages / batch)
        times = [
            int((start + lead + spread * number / batches) * 1000) for number in range(batches)
        ]
        scheduled = await schedule(
            producer,
            LATENESS_TOPIC,
            times,
            None,
            batch,
            messages,
            size,
            concurrency,
            echo,
            "lateness",
        )
        echo(
            f"  lateness: {messages:,} scheduled in {scheduled.seconds:.2f} s; the first due "
            f"in {times[0] / 1000 - time.time():.1f} s, the last in "
            f"{times[-1] / 1000 - time.time():.1f} s"
        )
        await wait_delivered(
            deliveries, list(scheduled.due_ms), times[-1] / 1000 + wait, echo, "lateness"
        )
        usage.add(before, _cpu_sample(cluster))
        # Anything delivered twice comes soon after: a moment to see it.
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    outcome = Outcome.of(scheduled, deliveries)
    result = Lateness(messages, lead, spread, batch, outcome, _others(usage))
    echo(
        f"  lateness: received - deliver-at {_stats_text(_stats(outcome.receive_late_ms))}; "
        f"lost {len(outcome.lost)}, early {outcome.early}"
    )
    return result


# -- failover --------------------------------------------------------------------------------


@attrs.frozen
class Kill:
    killed: str
    new_leader: str
    failover_ms: float
    kill_ms: float
    outcome: Outcome

    def _split(self) -> tuple[list[Delivery], list[Delivery], list[Delivery]]:
        """The first deliveries of messages due before the kill, during the failover (from the
        kill to the new leader), after it; each with its due time in ``deliver_at_ms``."""
        before, during, after = [], [], []
        leader_ms = self.kill_ms + self.failover_ms
        for due, delivery in self.outcome.firsts:
            delivery = attrs.evolve(delivery, deliver_at_ms=due)
            if due < self.kill_ms:
                before.append(delivery)
            elif due < leader_ms:
                during.append(delivery)
            else:
                after.append(delivery)
        return before, during, after

    def as_json(self) -> dict[str, object]:
        parts = dict(zip(("before", "during", "after"), self._split(), strict=True))
        store_max = _stats(self.outcome.store_late_ms)["max"]
        receive_max = _stats(self.outcome.receive_late_ms)["max"]
        return {
            "killed": self.killed,
            "new_leader": self.new_leader,
            "failover_ms": round(self.failover_ms, 1),
            **self.outcome.counts_json(),
            "receive_late_ms": _stats(self.outcome.receive_late_ms),
            "store_late_ms": _stats(self.outcome.store_late_ms),
            "due": {
                name: {
                    "messages": len(part),
                    "receive_late_ms": _stats([d.received_ms - _due(d) for d in part]),
                    "store_late_ms": _stats([float(d.stored_ms - _due(d)) for d in part]),
                }
                for name, part in parts.items()
            },
            "store_late_max_minus_failover_ms": (
                None if store_max is None else round(store_max - self.failover_ms, 1)
            ),
            "receive_late_max_minus_failover_ms": (
                None if receive_max is None else round(receive_max - self.failover_ms, 1)
            ),
        }

    def text(self, number: int) -> list[str]:
        _, during, after = self._split()
        outcome = self.outcome
        return [
            f"  kill {number}: {self.killed} killed; new leader {self.new_leader} after "
            f"{self.failover_ms:,.0f} ms; {len(during)} messages due meanwhile, stored "
            f"{_max_text([float(d.stored_ms - _due(d)) for d in during])} late at most, received "
            f"{_max_text([d.received_ms - _due(d) for d in during])}",
            f"    all {outcome.scheduled:,}: stored - deliver-at "
            f"{_stats_text(_stats(outcome.store_late_ms))}",
            f"    {'':<{len(str(outcome.scheduled)) + 6}}received - deliver-at "
            f"{_stats_text(_stats(outcome.receive_late_ms))}",
            f"    due after the new leader: received - deliver-at "
            f"{_stats_text(_stats([d.received_ms - _due(d) for d in after]))}",
            f"    {outcome.counts_text()}",
        ]


def _due(delivery: Delivery) -> int:
    assert delivery.deliver_at_ms is not None
    return delivery.deliver_at_ms


def _max_text(values: list[float]) -> str:
    return f"{max(values):,.0f} ms" if values else "-"


@attrs.frozen
class Failover:
    kills: tuple[Kill, ...]
    messages: int

    def as_json(self) -> dict[str, object]:
        return {
            "messages_per_kill": self.messages,
            "before_kill_s": BEFORE_KILL_SECONDS,
            "after_kill_s": AFTER_KILL_SECONDS,
            "kills": [kill.as_json() for kill in self.kills],
            "failover_ms": _stats([kill.failover_ms for kill in self.kills]),
            "lost": sum(len(kill.outcome.lost) for kill in self.kills),
            "early": sum(kill.outcome.early for kill in self.kills),
            "duplicate_copies": sum(kill.outcome.duplicate_copies for kill in self.kills),
            "redelivered": sum(kill.outcome.redelivered for kill in self.kills),
            "correct": all(kill.outcome.correct for kill in self.kills),
        }

    def text(self) -> list[str]:
        lines = [
            f"failover: {len(self.kills)} leader kill{'s' if len(self.kills) > 1 else ''} "
            f"(SIGKILL), {self.messages:,} messages due "
            f"from {BEFORE_KILL_SECONDS:g} s before to {AFTER_KILL_SECONDS:g} s after each"
        ]
        for number, kill in enumerate(self.kills, 1):
            lines += kill.text(number)
        summary = self.as_json()
        lines.append(
            f"  in all: lost {summary['lost']}, early {summary['early']}, duplicate copies "
            f"{summary['duplicate_copies']}, redelivered at the same offset "
            f"{summary['redelivered']}"
        )
        return lines


async def _new_leader(cluster: LocalCluster, killed: str) -> str:
    with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
        while True:
            node_id, _ = await cluster.leader()
            if node_id != killed:
                return node_id
            await trio.sleep(0.01)


async def failover_phase(
    cluster: LocalCluster,
    producer: Producer,
    kills: int,
    messages: int,
    lead: float,
    batch: int,
    size: int,
    concurrency: int,
    wait: float,
    echo: Echo,
) -> Failover:
    naming = list(cluster.naming.values())
    await producer.send(FAILOVER_TOPIC, b"warm up")
    deliveries = Deliveries()
    results = []
    async with (
        Consumer(naming=naming, group="bench-delay-failover", topic=FAILOVER_TOPIC) as consumer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(deliveries.collect, consumer)
        with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
            await wait_for_undelayed(deliveries, 1)
        echo(f"failover: the consumer reads {FAILOVER_TOPIC}")
        for number in range(1, kills + 1):
            label = f"kill {number}/{kills}"
            await caught_up(cluster, echo)
            leader, _ = await cluster.leader()
            start = time.time()
            kill_at = start + lead + BEFORE_KILL_SECONDS
            window = BEFORE_KILL_SECONDS + AFTER_KILL_SECONDS
            batches = math.ceil(messages / batch)
            times = [int((start + lead + window * n / batches) * 1000) for n in range(batches)]
            scheduled = await schedule(
                producer,
                FAILOVER_TOPIC,
                times,
                None,
                batch,
                messages,
                size,
                concurrency,
                echo,
                label,
            )
            echo(
                f"  {label}: {messages:,} scheduled; killing {leader} in "
                f"{kill_at - time.time():.1f} s"
            )
            await sleep_until(kill_at, deliveries, list(scheduled.due_ms), echo, label)
            killed_at = time.time()
            cluster.kill(leader)
            new_leader = await _new_leader(cluster, leader)
            failover_ms = (time.time() - killed_at) * 1000
            echo(f"  {label}: {leader} killed; new leader {new_leader} after {failover_ms:,.0f} ms")
            await wait_delivered(
                deliveries, list(scheduled.due_ms), times[-1] / 1000 + wait, echo, label
            )
            await trio.sleep(0.5)  # anything delivered twice comes soon after
            outcome = Outcome.of(scheduled, deliveries)
            results.append(Kill(leader, new_leader, failover_ms, killed_at * 1000, outcome))
            echo(
                f"  {label}: stored - deliver-at max "
                f"{_max_text(outcome.store_late_ms)}, received - deliver-at max "
                f"{_max_text(outcome.receive_late_ms)}; lost {len(outcome.lost)}, "
                f"duplicate copies {outcome.duplicate_copies}; restarting {leader}"
            )
            cluster.start(leader)
        await caught_up(cluster, echo)
        nursery.cancel_scope.cancel()
    return Failover(tuple(results), messages)


# -- memory ----------------------------------------------------------------------------------


@attrs.frozen
class NodeMemory:
    node_id: str
    before_kb: dict[str, int]
    after_kb: dict[str, int]

    def growth_mb(self, field: str = "VmRSS") -> float:
        return (self.after_kb.get(field, 0) - self.before_kb.get(field, 0)) / 1000


@attrs.frozen
class WheelCost:
    timers: int
    #: tracemalloc: bytes held by the wheel.
    bytes: int
    #: tracemalloc: the peak above that while a snapshot packs its columns.
    snapshot_extra_bytes: int
    #: Seconds a snapshot takes to pack it, without tracemalloc (the node's loop is blocked).
    snapshot_seconds: float

    def as_json(self) -> dict[str, object]:
        million = 1e6 / self.timers
        return {
            "timers": self.timers,
            "mb": round(self.bytes / 1e6, 2),
            "mb_per_million": round(self.bytes / 1e6 * million, 2),
            "snapshot_extra_mb": round(self.snapshot_extra_bytes / 1e6, 1),
            "snapshot_seconds": round(self.snapshot_seconds, 3),
        }


@attrs.frozen
class Memory:
    timers: int
    batch: int
    scheduling_seconds: float
    stored_at_once: int
    nodes: tuple[NodeMemory, ...]
    #: Leader terms before and after the scheduling (a difference: elections meanwhile).
    terms: tuple[int, int]
    others_cores: float | None
    wheel: WheelCost | None

    def per_million(self, node: NodeMemory, field: str = "VmRSS") -> float:
        return node.growth_mb(field) * 1e6 / self.timers

    @property
    def worst_per_million(self) -> float:
        return max(self.per_million(node) for node in self.nodes)

    @property
    def met(self) -> bool:
        return self.worst_per_million < TARGET_MB_PER_MILLION

    def as_json(self) -> dict[str, object]:
        def mb(kb: dict[str, int], field: str) -> float | None:
            return round(kb[field] / 1000, 1) if field in kb else None

        return {
            "timers": self.timers,
            "batch": self.batch,
            "delay": "1-2 days",
            "scheduling_seconds": round(self.scheduling_seconds, 2),
            "stored_at_once": self.stored_at_once,
            "nodes": {
                node.node_id: {
                    "rss_before_mb": mb(node.before_kb, "VmRSS"),
                    "rss_after_mb": mb(node.after_kb, "VmRSS"),
                    "rss_growth_mb": round(node.growth_mb(), 1),
                    "rss_mb_per_million": round(self.per_million(node), 1),
                    "anon_before_mb": mb(node.before_kb, "RssAnon"),
                    "anon_after_mb": mb(node.after_kb, "RssAnon"),
                    "anon_mb_per_million": round(self.per_million(node, "RssAnon"), 1),
                    "peak_mb": mb(node.after_kb, "VmHWM"),
                }
                for node in self.nodes
            },
            "worst_mb_per_million": round(self.worst_per_million, 1),
            "target_mb_per_million": TARGET_MB_PER_MILLION,
            "met": self.met,
            "elections_during_scheduling": self.terms[1] - self.terms[0],
            "others_cores": self.others_cores,
            "wheel": None if self.wheel is None else self.wheel.as_json(),
        }

    def text(self) -> list[str]:
        others = "" if self.others_cores is None else f"; others busy {self.others_cores:.2f} cores"
        rate = self.timers / self.scheduling_seconds if self.scheduling_seconds else 0.0
        lines = [
            f"memory: {self.timers:,} timers due 1-2 days ahead, scheduled in "
            f"{self.scheduling_seconds:.1f} s ({rate:,.0f}/s, batches of {self.batch}){others}",
            f"  {'node':<5}{'RSS before':>12}{'RSS after':>12}{'growth':>10}"
            f"{'per million':>13}{'anon per million':>18}{'peak VmHWM':>12}",
        ]
        for node in self.nodes:
            before = node.before_kb.get("VmRSS", 0) / 1000
            after = node.after_kb.get("VmRSS", 0) / 1000
            lines.append(
                f"  {node.node_id:<5}{before:>9.1f} MB{after:>9.1f} MB{node.growth_mb():>+7.1f} MB"
                f"{self.per_million(node):>10.1f} MB{self.per_million(node, 'RssAnon'):>15.1f} MB"
                f"{node.after_kb.get('VmHWM', 0) / 1000:>9.1f} MB"
            )
        lines.append(
            f"  worst node: {self.worst_per_million:.1f} MB per million timers (target under "
            f"{TARGET_MB_PER_MILLION:g} MB: {'met' if self.met else 'NOT met'}); leader "
            f"elections while scheduling: {self.terms[1] - self.terms[0]}; stored at once: "
            f"{self.stored_at_once}"
        )
        if self.wheel is not None:
            wheel = self.wheel.as_json()
            lines.append(
                f"  TimerWheel alone (this process, tracemalloc): {wheel['mb']} MB for "
                f"{self.wheel.timers:,} timers ({wheel['mb_per_million']} MB per million); "
                f"packing them for a snapshot: +{wheel['snapshot_extra_mb']} MB "
                f"at the peak, {wheel['snapshot_seconds']} s"
            )
        return lines


def wheel_cost(timers: int, batch: int, echo: Echo) -> WheelCost:
    """The ``TimerWheel`` alone with ``timers`` timers laid out as the memory phase's (batches
    of ``batch`` at one due time, one log entry each, due 1-2 days ahead, in log order)."""
    now_ms = int(time.time() * 1000)
    start_ms = now_ms + MEMORY_DELAY_FROM // timedelta(milliseconds=1)
    spread_ms = MEMORY_DELAY_SPREAD // timedelta(milliseconds=1)
    batches = math.ceil(timers / batch)
    echo(f"wheel: {timers:,} timers in a TimerWheel in this process (tracemalloc)")
    tracemalloc.start()
    try:
        wheel = TimerWheel()
        last = time.perf_counter()
        for number in range(timers):
            if number % 10_000 == 0 and time.perf_counter() - last >= 1.0:
                last = time.perf_counter()
                echo(f"  wheel: {number:,} of {timers:,} timers added")
            entry = number // batch
            position = (1000 + entry) << SLOT_BITS | number % batch
            wheel.add(start_ms + spread_ms * entry // batches, position)
        held, _ = tracemalloc.get_traced_memory()
        echo(f"  wheel: {held / 1e6:.1f} MB held; packing it as a snapshot does")
        tracemalloc.reset_peak()
        packed = _pack(wheel)
        _, peak = tracemalloc.get_traced_memory()
        del packed
    finally:
        tracemalloc.stop()
    began = time.perf_counter()
    _pack(wheel)
    seconds = time.perf_counter() - began
    return WheelCost(timers, held, max(0, peak - held), seconds)


def _pack(wheel: TimerWheel) -> list[bytes]:
    """What a snapshot makes of the wheel (``BrokerState.to_snapshot``): its two columns."""
    return [column.tobytes() for column in wheel.columns()]


async def memory_phase(
    directory: str | None,
    timers: int,
    batch: int,
    size: int,
    concurrency: int,
    echo: Echo,
) -> Memory:
    settings: dict[str, object] | None = None
    if timers > DEFAULT_MAX_TIMERS:
        settings = {"max_timers": timers}
    root, cluster = _start_cluster(directory, settings)
    try:
        echo(f"memory: a fresh cluster of 3 under {root}; waiting for a leader")
        with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
            await cluster.leader()
        naming = list(cluster.naming.values())
        async with Producer(naming=naming) as producer:
            await producer.send(MEMORY_TOPIC, b"warm up")
            await caught_up(cluster)
            await trio.sleep(2.0)  # whatever the start left to do
            term_before = await caught_up(cluster)
            before = {
                node_id: proc_status_kb(process.pid)
                for node_id, process in cluster.processes.items()
            }
            echo(
                "  memory: RSS before "
                + ", ".join(f"{n} {kb.get('VmRSS', 0) / 1000:.1f} MB" for n, kb in before.items())
            )
            batches = math.ceil(timers / batch)
            delays = [
                MEMORY_DELAY_FROM + MEMORY_DELAY_SPREAD * number / batches
                for number in range(batches)
            ]
            usage = cpu.CpuUse()
            sample = _cpu_sample(cluster)
            scheduled = await schedule(
                producer,
                MEMORY_TOPIC,
                None,
                delays,
                batch,
                timers,
                size,
                concurrency,
                echo,
                "memory",
            )
            usage.add(sample, _cpu_sample(cluster))
        echo(f"  memory: {timers:,} scheduled in {scheduled.seconds:.1f} s; every node applying")
        await caught_up(cluster, echo)
        await trio.sleep(2.0)  # a snapshot under way ends
        term_after = await caught_up(cluster)
        nodes = tuple(
            NodeMemory(node_id, before[node_id], proc_status_kb(process.pid))
            for node_id, process in cluster.processes.items()
        )
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    echo(
        "  memory: RSS after "
        + ", ".join(f"{n.node_id} {n.after_kb.get('VmRSS', 0) / 1000:.1f} MB" for n in nodes)
    )
    wheel = wheel_cost(timers, batch, echo)
    return Memory(
        timers,
        batch,
        scheduled.seconds,
        scheduled.stored_at_once,
        nodes,
        (term_before, term_after),
        _others(usage),
        wheel,
    )


# -- the command -----------------------------------------------------------------------------


@attrs.frozen
class Settings:
    messages: int = 5000
    lead: float = 3.0
    spread: float = 5.0
    batch: int = 10
    timers: int = 1_000_000
    timer_batch: int = 256
    kills: int = 3
    failover_messages: int = 1000
    size: int = 16
    concurrency: int = 4
    wait: float = 30.0


async def run(
    settings: Settings, directory: str | None, echo: Echo, as_json: bool = False
) -> tuple[str, bool]:
    """The report (text or JSON), and whether every message was delivered once and in time
    (none lost, none early, none stored twice)."""
    configure_logging("warning")  # the report alone on standard output
    load = os.getloadavg()
    echo(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    lateness: Lateness | None = None
    failover: Failover | None = None
    memory: Memory | None = None
    s = settings
    if s.messages or s.kills:
        root, cluster = _start_cluster(directory)
        try:
            echo(f"cluster of 3 under {root}; waiting for a leader")
            with trio.fail_after(SETTLE_TIMEOUT_SECONDS):
                leader, _ = await cluster.leader()
            echo(f"leader {leader}")
            async with Producer(naming=list(cluster.naming.values())) as producer:
                if s.messages:
                    lateness = await lateness_phase(
                        cluster,
                        producer,
                        s.messages,
                        s.lead,
                        s.spread,
                        s.batch,
                        s.size,
                        s.concurrency,
                        s.wait,
                        echo,
                    )
                if s.kills:
                    failover = await failover_phase(
                        cluster,
                        producer,
                        s.kills,
                        s.failover_messages,
                        s.lead,
                        s.batch,
                        s.size,
                        s.concurrency,
                        s.wait,
                        echo,
                    )
        finally:
            cluster.close()
            shutil.rmtree(root, ignore_errors=True)
    if s.timers:
        memory = await memory_phase(directory, s.timers, s.timer_batch, s.size, s.concurrency, echo)
    correct = (lateness is None or lateness.outcome.correct) and (
        failover is None or all(kill.outcome.correct for kill in failover.kills)
    )
    if as_json:
        report = {
            "settings": attrs.asdict(settings),
            "machine": {"cores": os.cpu_count(), "load_average_at_start": list(load)},
            "lateness": None if lateness is None else lateness.as_json(),
            "memory": None if memory is None else memory.as_json(),
            "failover": None if failover is None else failover.as_json(),
            "correct": correct,
        }
        return json.dumps(report, indent=2), correct
    lines: list[str] = []
    for part in (lateness, memory, failover):
        if part is not None:
            lines += part.text()
    return "\n".join(lines), correct
