"""``dledger-mq bench produce|consume|e2e``: the SDK against a local three-node cluster.

Three `dledger-mq node` processes (``sync`` flush, a naming node in each) on free ports, and
producers in this process:

- one at a time: one ``send`` in flight, sends/s and latency p50/p99/p999;
- batched: ``--concurrency`` producers' ``send_batch`` of ``--batch`` messages in flight;
- failover: ``--kills`` times, SIGKILL the leader while one producer sends one at a time, and
  measure the longest gap between two acknowledged sends around the kill. No error may reach
  the sending code: a failover is a pause.

With ``--groups N`` (N > 1): N broker groups of three nodes (``LocalGroups``: naming run by
the first group's nodes, one cluster secret), a topic held by the first group alone and a topic
spread over all N (4 queues in each group), and each of one at a time and batched measured for
both, side by side in the same run, in slices of half ``--seconds`` in the order one group, N
groups, N groups, one group. Beside each figure: the messages each group stored and the cores
busy (each group's nodes, this process, the machine, everything else: ``cpu.py``). Leader kills,
if asked for, take the groups' leaders in turn under sends to the spread topic. ``--json``
prints every figure as one object.

``consume`` stores messages first, then times one consumer of a new group reading and
acknowledging them all. ``e2e`` runs producers and a consumer at once and times each message
from its send to its delivery.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from dledger_mq.bench import cpu
from dledger_mq.bench.raft_bench import Throughput, percentile
from dledger_mq.clients.admin import connect_admin
from dledger_mq.clients.consumer import Consumer
from dledger_mq.clients.naming import connect_naming
from dledger_mq.clients.producer import Producer
from dledger_mq.errors import DledgerError
from dledger_mq.logs import configure_logging
from dledger_mq.node.local_cluster import LocalCluster, LocalGroups

TOPIC = "bench"


async def one_at_a_time(
    producer: Producer,
    seconds: float,
    size: int,
    topic: str = TOPIC,
    stored: Counter[str] | None = None,
) -> Throughput:
    """``stored``, when given, counts the messages stored in each broker group."""
    body = b"x" * size
    latencies = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        receipt = await producer.send(topic, body)
        latencies.append((time.perf_counter() - start) * 1000)
        if stored is not None:
            stored[receipt.group] += 1
    return Throughput("one at a time", len(latencies), time.perf_counter() - began, latencies)


async def batched(
    producer: Producer,
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    topic: str = TOPIC,
    stored: Counter[str] | None = None,
) -> Throughput:
    bodies = [b"y" * size] * batch
    latencies: list[float] = []
    done = 0
    began = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - began < seconds:
            start = time.perf_counter()
            receipts = await producer.send_batch(topic, bodies)
            latencies.append((time.perf_counter() - start) * 1000)
            done += batch
            if stored is not None:
                stored[receipts[0].group] += batch

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return Throughput(
        f"batched {concurrency}x{batch}", done, time.perf_counter() - began, latencies
    )


async def failover_pauses(
    cluster: LocalCluster | Sequence[LocalCluster],
    producer: Producer,
    kills: int,
    size: int,
    echo: Callable[[str], None],
    topic: str = TOPIC,
) -> list[float]:
    """``cluster``: the group whose leader is killed, or several, whose leaders are killed in
    turn (one kill at a time)."""
    groups = [cluster] if isinstance(cluster, LocalCluster) else list(cluster)
    pauses = []
    for kill in range(1, kills + 1):
        group = groups[(kill - 1) % len(groups)]
        leader, pause = await _one_failover(group, producer, b"f" * size, topic)
        pauses.append(pause)
        name = leader if len(groups) == 1 else f"{group.group} {leader}"
        echo(f"  kill {kill}/{kills}: {name} killed, sends paused {pause * 1000:.0f} ms")
        group.start(leader)
        await trio.sleep(1.0)
    return pauses


async def _one_failover(
    cluster: LocalCluster, producer: Producer, body: bytes, topic: str = TOPIC
) -> tuple[str, float]:
    """Kill the leader under one-at-a-time sends; returns it and the longest gap between
    two acknowledgements around the kill."""
    acknowledged_at: list[float] = []
    stop = trio.Event()

    async def send_forever() -> None:
        while not stop.is_set():
            await producer.send(topic, body)
            acknowledged_at.append(time.perf_counter())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_forever)
        await trio.sleep(0.5)
        leader, _ = await cluster.leader()
        killed_at = time.perf_counter()
        cluster.kill(leader)
        while not acknowledged_at or acknowledged_at[-1] < killed_at + 0.5:
            await trio.sleep(0.01)
        stop.set()
    window = [t for t in acknowledged_at if t >= killed_at - 0.5]
    gaps = [later - earlier for earlier, later in zip(window, window[1:], strict=False)]
    return leader, max(gaps, default=0.0)


async def consume_all(naming: list[str], group: str, count: int) -> Throughput:
    began = time.perf_counter()
    seen = 0
    async with Consumer(naming=naming, group=group, topic=TOPIC) as consumer:
        async for message in consumer:
            await message.ack()
            seen += 1
            if seen == count:
                break
    return Throughput("consume", seen, time.perf_counter() - began, [])


async def end_to_end(
    producer: Producer,
    naming: list[str],
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    rate: float = 0.0,
) -> tuple[Throughput, int]:
    """Producers and one consumer at once; latency from each send to its delivery.

    ``rate`` (messages/s over all producers, 0 for as fast as they can) paces the producers:
    unpaced, they can outrun the consumer on a small machine, and the latency then measures a
    growing backlog rather than the path. Returns the consumer's figures and the number of
    messages sent.
    """
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    stop = trio.Event()
    counter = itertools.count()
    padding = b"e" * max(0, size - 12)
    sent = 0
    interval = concurrency * batch / rate if rate > 0 else 0.0

    async def produce(first_at: float) -> None:
        nonlocal sent
        next_at = first_at
        while not stop.is_set():
            if interval:
                await trio.sleep_until(next_at)
                next_at += interval
            bodies = [b"%012d" % next(counter) + padding for _ in range(batch)]
            now = time.perf_counter()
            for body in bodies:
                sent_at[body[:12]] = now
            await producer.send_batch(TOPIC, bodies)
            sent += batch

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for number in range(concurrency):
            nursery.start_soon(produce, start + number * interval / concurrency)
        async with Consumer(naming=naming, group="bench-e2e", topic=TOPIC) as consumer:
            async for message in consumer:
                started = sent_at.pop(message.body[:12], None)
                if started is not None:
                    latencies.append((time.perf_counter() - started) * 1000)
                await message.ack()
                if time.perf_counter() - began >= seconds:
                    break
        stop.set()
    name = f"end to end {concurrency}x{batch}"
    return Throughput(name, len(latencies), time.perf_counter() - began, latencies), sent


@asynccontextmanager
async def bench_cluster(
    directory: str | None, echo: Callable[[str], None], tls: bool = False
) -> AsyncIterator[tuple[LocalCluster, Producer]]:
    root = Path(tempfile.mkdtemp(prefix="bench-produce-", dir=directory or "."))
    cluster = LocalCluster(root, "sync", with_naming=True, tls=tls)
    try:
        for node_id in cluster.members:
            cluster.start(node_id)
        echo(f"cluster of 3 under {root}{' (TLS)' if tls else ''}; waiting for a leader")
        with trio.fail_after(30):
            await cluster.leader()
        naming = list(cluster.naming.values())
        async with Producer(naming=naming, tls=cluster.client_tls) as producer:
            await producer.send(TOPIC, b"warm up")  # creates the topic
            yield cluster, producer
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


async def run_consume(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    echo: Callable[[str], None],
) -> str:
    async with bench_cluster(directory, echo) as (cluster, producer):
        stored = await batched(producer, seconds, size, batch, concurrency)
        echo(f"  stored {stored.entries} messages; consuming them")
        naming = list(cluster.naming.values())
        consumed = await consume_all(naming, "bench-consume", stored.entries + 1)
    return "\n".join(
        [
            stored.row(),
            f"{'consume':<22} {consumed.entries_per_second:>10,.0f}/s   "
            f"({consumed.entries} messages, one consumer, each acknowledged)",
        ]
    )


async def run_e2e(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    rate: float,
    directory: str | None,
    echo: Callable[[str], None],
) -> str:
    async with bench_cluster(directory, echo) as (cluster, producer):
        result, sent = await end_to_end(
            producer, list(cluster.naming.values()), seconds, size, batch, concurrency, rate
        )
    return "\n".join(
        [
            result.row(),
            f"{'sent':<22} {sent / result.seconds:>10,.0f}/s   "
            f"({sent} messages, {f'paced at {rate:,.0f}/s' if rate else 'unpaced'}; "
            f"{sent - result.entries} not yet delivered at the end)",
        ]
    )


#: With ``--groups N``: a topic held by the first group alone, measured beside ``TOPIC``
#: spread over all N groups, in the same cluster and the same run.
ONE_GROUP_TOPIC = "bench-one-group"
#: Queues each group holds of either topic (a new topic's default, 4, in every group).
QUEUES_PER_GROUP = 4


def _stored_text(stored: Counter[str]) -> str:
    return ", ".join(f"{group} {count:,}" for group, count in sorted(stored.items()))


@attrs.frozen
class Phase:
    """One figure of the run: a kind of sending (one at a time, batched) to a topic spread
    over ``groups`` broker groups."""

    kind: str
    groups: int
    throughput: Throughput
    #: Messages stored in each broker group.
    stored: dict[str, int]
    #: Cores busy on average during the phase: per node (``GROUP/NODE``), ``bench`` (this
    #: process: the producers), ``machine`` (everything) and ``others`` (the machine's less
    #: ours: other programs, the kernel's own threads).
    node_cores: dict[str, float]

    @property
    def cores(self) -> dict[str, float]:
        """As ``node_cores``, with each broker group's nodes added up."""
        cores: dict[str, float] = {}
        for label, value in self.node_cores.items():
            group = label.split("/", 1)[0]
            cores[group] = round(cores.get(group, 0.0) + value, 3)
        return cores

    @property
    def busiest_node(self) -> tuple[str, float] | None:
        nodes = [(value, label) for label, value in self.node_cores.items() if "/" in label]
        if not nodes:
            return None
        value, label = max(nodes)
        return label, value

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.groups} group{'s' if self.groups > 1 else ''}"

    @property
    def cpu_per_message_us(self) -> float | None:
        """CPU of this run's own processes (every node, the bench) per message stored, in µs:
        what a message costs, whoever else shares the machine."""
        if not self.cores or not self.throughput.entries:
            return None
        ours = sum(v for label, v in self.cores.items() if label not in (cpu.MACHINE, cpu.OTHERS))
        return ours * self.throughput.seconds / self.throughput.entries * 1e6

    def as_json(self) -> dict[str, object]:
        values = sorted(self.throughput.latencies_ms)
        per_message = self.cpu_per_message_us
        return {
            "name": self.kind,
            "groups": self.groups,
            "messages": self.throughput.entries,
            "seconds": round(self.throughput.seconds, 3),
            "per_second": round(self.throughput.entries_per_second, 1),
            "p50_ms": round(percentile(values, 0.5), 3),
            "p99_ms": round(percentile(values, 0.99), 3),
            "p999_ms": round(percentile(values, 0.999), 3),
            "stored": self.stored,
            "cores": self.cores,
            "node_cores": {k: v for k, v in self.node_cores.items() if "/" in k},
            "cpu_us_per_message": None if per_message is None else round(per_message, 1),
        }


def merge_throughputs(parts: Sequence[Throughput]) -> Throughput:
    """Slices of one kind of sending as one figure."""
    return Throughput(
        parts[0].name,
        sum(part.entries for part in parts),
        sum(part.seconds for part in parts),
        [latency for part in parts for latency in part.latencies_ms],
    )


class CpuMeter:
    """CPU seconds of each node (labelled ``GROUP/NODE``), of this process and of the
    machine."""

    def __init__(self, groups: dict[str, LocalCluster]) -> None:
        self.groups = groups

    def sample(self) -> cpu.CpuSample | None:
        return cpu.sample(
            {
                f"{group}/{node_id}": [process.pid]
                for group, cluster in self.groups.items()
                for node_id, process in cluster.processes.items()
            }
        )


async def measured(meter: CpuMeter, usage: cpu.CpuUse, phase: Awaitable[Throughput]) -> Throughput:
    before = meter.sample()
    result = await phase
    usage.add(before, meter.sample())
    return result


async def compare_groups(
    groups: LocalGroups,
    producer: Producer,
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    echo: Callable[[str], None],
) -> list[Phase]:
    """Each kind of sending to the one-group topic and to the topic over every group, in
    slices of ``seconds / 2`` in the order one, all, all, one: so that both see the same
    machine (a slower minute, another program starting) as far as can be."""
    meter = CpuMeter(groups.groups)
    count = len(groups.groups)
    topics = {1: ONE_GROUP_TOPIC, count: TOPIC}
    kinds: list[tuple[str, Callable[[str, Counter[str]], Awaitable[Throughput]]]] = [
        (
            "one at a time",
            lambda topic, stored: one_at_a_time(producer, seconds / 2, size, topic, stored),
        ),
        (
            f"batched {concurrency}x{batch}",
            lambda topic, stored: batched(
                producer, seconds / 2, size, batch, concurrency, topic, stored
            ),
        ),
    ]
    phases = []
    for kind, send in kinds:
        slices: dict[int, list[Throughput]] = {1: [], count: []}
        stored: dict[int, Counter[str]] = {1: Counter(), count: Counter()}
        usage = {1: cpu.CpuUse(), count: cpu.CpuUse()}
        for spread in (1, count, count, 1):
            result = await measured(meter, usage[spread], send(topics[spread], stored[spread]))
            slices[spread].append(result)
            echo(
                f"  {kind}, {spread} group{'s' if spread > 1 else ''}: {result.entries} "
                f"messages in {result.seconds:.1f} s ({_stored_text(stored[spread])} so far)"
            )
        for spread in (1, count):
            phases.append(
                Phase(
                    kind,
                    spread,
                    merge_throughputs(slices[spread]),
                    dict(stored[spread]),
                    usage[spread].cores(),
                )
            )
    return phases


async def _create_topic_in(cluster: LocalCluster, name: str, queues: int) -> None:
    """``name`` with ``queues`` queues in ``cluster``'s group, through its leader."""
    while True:
        _, address = await cluster.leader()
        try:
            async with connect_admin(address, tls=cluster.client_tls) as admin:
                await admin.create_topic(name, queues)
            return
        except DledgerError as error:
            if not error.retriable:
                raise
        except OSError:
            pass
        await trio.sleep(0.05)


async def _wait_for_routes(groups: LocalGroups, name: str, expected: set[str]) -> None:
    """Until every naming node routes ``name`` to exactly the ``expected`` groups, each with
    its leader and queues."""
    for address in groups.naming.values():
        while True:
            try:
                async with connect_naming(address, ssl_context=groups.client_tls) as naming:
                    routes = await naming.routes(name)
            except (DledgerError, OSError):
                routes = ()
            if {route.group for route in routes} == expected and all(
                route.leader_address and route.queues for route in routes
            ):
                break
            await trio.sleep(0.05)


@asynccontextmanager
async def bench_groups(
    count: int, directory: str | None, echo: Callable[[str], None], tls: bool = False
) -> AsyncIterator[tuple[LocalGroups, Producer]]:
    """``count`` broker groups of three nodes, ``ONE_GROUP_TOPIC`` in the first and ``TOPIC``
    over all of them (``QUEUES_PER_GROUP`` queues in each group), and a producer."""
    root = Path(tempfile.mkdtemp(prefix="bench-produce-", dir=directory or "."))
    groups = LocalGroups(root, "sync", count, tls=tls)
    try:
        groups.start_all()
        names = ", ".join(groups.groups)
        echo(
            f"{count} broker groups of 3 ({names}) under {root}{' (TLS)' if tls else ''}; "
            "waiting for their leaders"
        )
        with trio.fail_after(60):
            leaders = await groups.leaders()
            echo("leaders " + ", ".join(f"{g} {node}" for g, (node, _) in leaders.items()))
            first = next(iter(groups.groups.values()))
            await _create_topic_in(first, ONE_GROUP_TOPIC, QUEUES_PER_GROUP)
            for cluster in groups.groups.values():
                await _create_topic_in(cluster, TOPIC, QUEUES_PER_GROUP)
            await _wait_for_routes(groups, ONE_GROUP_TOPIC, {first.group})
            await _wait_for_routes(groups, TOPIC, set(groups.groups))
        echo(
            f"topics: {ONE_GROUP_TOPIC} in {first.group} ({QUEUES_PER_GROUP} queues), "
            f"{TOPIC} over {names} ({QUEUES_PER_GROUP} queues each); naming routes both"
        )
        naming = list(groups.naming.values())
        async with Producer(naming=naming, tls=groups.client_tls) as producer:
            with trio.fail_after(60):
                await producer.send(ONE_GROUP_TOPIC, b"warm up")
                for _ in range(2 * count):  # the groups in turn: a connection to each
                    await producer.send(TOPIC, b"warm up")
            yield groups, producer
    finally:
        groups.close()
        shutil.rmtree(root, ignore_errors=True)


def _failover_line(pauses: list[float], groups: int) -> str:
    ordered = sorted(pauses)
    spread = f", one of {groups} groups' leaders each time" if groups > 1 else ""
    return (
        f"{'failover':<22} sends paused: median {percentile(ordered, 0.5) * 1000:.0f} ms, "
        f"worst {ordered[-1] * 1000:.0f} ms over {len(ordered)} leader kills{spread}, no error"
    )


def _failover_json(pauses: list[float]) -> dict[str, object]:
    ordered = sorted(pauses)
    return {
        "kills": len(ordered),
        "pauses_ms": [round(pause * 1000, 1) for pause in pauses],
        "median_ms": round(percentile(ordered, 0.5) * 1000, 1),
        "worst_ms": round(ordered[-1] * 1000, 1),
    }


def _ratio(by: dict[tuple[str, int], Phase], kind: str, groups: int) -> float:
    """Messages/s of ``kind`` over ``groups`` groups / over one group."""
    one = by[(kind, 1)].throughput.entries_per_second
    return by[(kind, groups)].throughput.entries_per_second / one if one else float("nan")


def _busiest_text(phase: Phase) -> str:
    busiest = phase.busiest_node
    return "?" if busiest is None else f"{busiest[0]} {busiest[1]:.2f}"


def _cores_text(cores: dict[str, float]) -> str:
    return ", ".join(f"{label} {value:.2f}" for label, value in cores.items())


def groups_report(phases: list[Phase], groups: int, batch_kind: str, pauses: list[float]) -> str:
    width = max(len(phase.label) for phase in phases) + 1
    lines = [
        phase.throughput.row(width=width, name=phase.label)
        + f"  [{_stored_text(Counter(phase.stored))}]"
        for phase in phases
    ]
    by = {(phase.kind, phase.groups): phase for phase in phases}
    ratios = [f"{kind} {_ratio(by, kind, groups):.2f}" for kind in ("one at a time", batch_kind)]
    lines.append(
        f"{f'{groups} groups / 1 group':<{width}} {', '.join(ratios)}  (messages/s, same run)"
    )
    cores = os.cpu_count() or 0
    if any(phase.cores for phase in phases):
        lines.append(f"cores busy (of {cores}), average over each phase:")
        lines += [
            f"  {phase.label:<{width}} {_cores_text(phase.cores)}; "
            f"busiest node {_busiest_text(phase)}; "
            f"ours {phase.cpu_per_message_us or 0:,.0f} µs CPU a message"
            for phase in phases
        ]
    if pauses:
        lines.append(_failover_line(pauses, groups))
    return "\n".join(lines)


async def run(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    kills: int,
    directory: str | None,
    echo: Callable[[str], None],
    tls: bool = False,
    groups: int = 1,
    as_json: bool = False,
) -> str:
    """``groups`` > 1: that many broker groups of three nodes, and each figure twice, for a
    topic in one group and for a topic spread over all of them, side by side."""
    settings: dict[str, object] = {
        "seconds": seconds,
        "size": size,
        "batch": batch,
        "concurrency": concurrency,
        "tls": tls,
        "groups": groups,
        "cores": os.cpu_count(),
    }
    if groups > 1 or as_json:
        # The report alone on standard output (the nodes' logs go to their files; these are
        # this process's, made while it writes the nodes' configs).
        configure_logging("warning")
    if groups > 1:
        async with bench_groups(groups, directory, echo, tls) as (cluster, producer):
            phases = await compare_groups(
                cluster, producer, seconds, size, batch, concurrency, echo
            )
            clusters = list(cluster.groups.values())
            pauses = await failover_pauses(clusters, producer, kills, size, echo) if kills else []
        if as_json:
            return json.dumps(_json_report(settings, phases, pauses, groups), indent=2)
        return groups_report(phases, groups, f"batched {concurrency}x{batch}", pauses)
    async with bench_cluster(directory, echo, tls) as (cluster, producer):
        meter = CpuMeter({cluster.group: cluster})
        usage = [cpu.CpuUse(), cpu.CpuUse()]
        one_stored: Counter[str] = Counter()
        one = await measured(
            meter, usage[0], one_at_a_time(producer, seconds, size, stored=one_stored)
        )
        echo(f"  one at a time: {one.entries} sends")
        many_stored: Counter[str] = Counter()
        many = await measured(
            meter,
            usage[1],
            batched(producer, seconds, size, batch, concurrency, stored=many_stored),
        )
        echo(f"  batched: {many.entries} messages")
        pauses = await failover_pauses(cluster, producer, kills, size, echo) if kills else []
    if as_json:
        phases = [
            Phase("one at a time", 1, one, dict(one_stored), usage[0].cores()),
            Phase(many.name, 1, many, dict(many_stored), usage[1].cores()),
        ]
        return json.dumps(_json_report(settings, phases, pauses, 1), indent=2)
    lines = [one.row(), many.row()]
    if pauses:
        lines.append(_failover_line(pauses, 1))
    return "\n".join(lines)


def _json_report(
    settings: dict[str, object], phases: list[Phase], pauses: list[float], groups: int
) -> dict[str, object]:
    report: dict[str, object] = {**settings, "phases": [phase.as_json() for phase in phases]}
    if groups > 1:
        by = {(phase.kind, phase.groups): phase for phase in phases}
        report["ratios"] = {
            kind: round(_ratio(by, kind, groups), 3) for kind, one in by if one == 1
        }
    if pauses:
        report["failover"] = _failover_json(pauses)
    return report
