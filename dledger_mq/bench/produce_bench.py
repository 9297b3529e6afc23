"""``dledger-mq bench produce|consume|e2e``: the SDK against a local three-node cluster.

Three `dledger-mq node` processes (``sync`` flush, a naming node in each) on free ports, and
producers in this process:

- one at a time: one ``send`` in flight, sends/s and latency p50/p99/p999;
- batched: ``--concurrency`` producers' ``send_batch`` of ``--batch`` messages in flight;
- failover: ``--kills`` times, SIGKILL the leader while one producer sends one at a time, and
  measure the longest gap between two acknowledged sends around the kill. No error may reach
  the sending code: a failover is a pause.

``consume`` stores messages first, then times one consumer of a new group reading and
acknowledging them all. ``e2e`` runs producers and a consumer at once and times each message
from its send to its delivery.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from dledger_mq.bench.raft_bench import Throughput, percentile
from dledger_mq.clients.consumer import Consumer
from dledger_mq.clients.producer import Producer
from dledger_mq.node.local_cluster import LocalCluster

TOPIC = "bench"


async def one_at_a_time(producer: Producer, seconds: float, size: int) -> Throughput:
    body = b"x" * size
    latencies = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        await producer.send(TOPIC, body)
        latencies.append((time.perf_counter() - start) * 1000)
    return Throughput("one at a time", len(latencies), time.perf_counter() - began, latencies)


async def batched(
    producer: Producer, seconds: float, size: int, batch: int, concurrency: int
) -> Throughput:
    bodies = [b"y" * size] * batch
    latencies: list[float] = []
    done = 0
    began = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - began < seconds:
            start = time.perf_counter()
            await producer.send_batch(TOPIC, bodies)
            latencies.append((time.perf_counter() - start) * 1000)
            done += batch

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return Throughput(
        f"batched {concurrency}x{batch}", done, time.perf_counter() - began, latencies
    )


async def failover_pauses(
    cluster: LocalCluster, producer: Producer, kills: int, size: int, echo: Callable[[str], None]
) -> list[float]:
    pauses = []
    for kill in range(1, kills + 1):
        leader, pause = await _one_failover(cluster, producer, b"f" * size)
        pauses.append(pause)
        echo(f"  kill {kill}/{kills}: {leader} killed, sends paused {pause * 1000:.0f} ms")
        cluster.start(leader)
        await trio.sleep(1.0)
    return pauses


async def _one_failover(
    cluster: LocalCluster, producer: Producer, body: bytes
) -> tuple[str, float]:
    """Kill the leader under one-at-a-time sends; returns it and the longest gap between
    two acknowledgements around the kill."""
    acknowledged_at: list[float] = []
    stop = trio.Event()

    async def send_forever() -> None:
        while not stop.is_set():
            await producer.send(TOPIC, body)
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


async def run(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    kills: int,
    directory: str | None,
    echo: Callable[[str], None],
    tls: bool = False,
) -> str:
    async with bench_cluster(directory, echo, tls) as (cluster, producer):
        one = await one_at_a_time(producer, seconds, size)
        echo(f"  one at a time: {one.entries} sends")
        many = await batched(producer, seconds, size, batch, concurrency)
        echo(f"  batched: {many.entries} messages")
        pauses = await failover_pauses(cluster, producer, kills, size, echo) if kills else []
    lines = [one.row(), many.row()]
    if pauses:
        ordered = sorted(pauses)
        lines.append(
            f"{'failover':<22} sends paused: median {percentile(ordered, 0.5) * 1000:.0f} ms, "
            f"worst {ordered[-1] * 1000:.0f} ms over {len(ordered)} leader kills, no error"
        )
    return "\n".join(lines)
