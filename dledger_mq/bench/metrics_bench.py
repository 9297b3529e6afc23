"""``dledger-mq bench produce --metrics``: what recording and serving metrics costs a producer.

Two local three-node clusters at once, alike but for ``http_listen``: "off" has none (its
nodes record nothing), "on" serves /metrics on every node and is scraped every
``SCRAPE_SECONDS`` while it is measured, as Prometheus would. Each kind of sending (one at a
time, batched) runs in slices of half ``--seconds`` in the order off, on, on, off, so both see
the same machine as far as can be; the report puts them side by side with the ratio on/off,
and what the scrapes saw move on the "on" leader (the counters a dashboard would graph).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families

from dledger_mq.bench.produce_bench import TOPIC
from dledger_mq.bench.raft_bench import Throughput
from dledger_mq.bench.side_by_side import TrioSender, phase_json, side_by_side
from dledger_mq.clients.producer import Producer
from dledger_mq.logs import configure_logging
from dledger_mq.node.local_cluster import LocalCluster

#: How often the "on" cluster is scraped while measured (Prometheus' default is 15 s: this
#: scrapes fifteen times as often, so that its cost shows if it has one).
SCRAPE_SECONDS = 1.0
#: The counters the report follows on the "on" cluster's leader.
WATCHED = (
    "rocketmq_messages_in_total",
    "rocketmq_throughput_in_total",
    "dledger_fsync_seconds_count",
    "dledger_write_batch_entries_sum",
)


def scrape(address: str) -> dict[str, float]:
    """``GET /metrics`` of ``address``: each sample's name (labels summed over) to its value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@attrs.define
class Scrapes:
    """What the scraper saw of the "on" cluster."""

    count: int = 0
    failed: int = 0
    first: dict[str, float] = attrs.Factory(dict)
    last: dict[str, float] = attrs.Factory(dict)

    def moved(self) -> dict[str, float]:
        return {name: self.last.get(name, 0.0) - self.first.get(name, 0.0) for name in WATCHED}


async def scrape_forever(cluster: LocalCluster, scrapes: Scrapes) -> None:
    """Scrape every node every ``SCRAPE_SECONDS``; the leader's samples are what is kept."""
    while True:
        leader, _ = await cluster.leader()
        for node_id, address in cluster.http.items():
            try:
                samples = await trio.to_thread.run_sync(scrape, address)
            except OSError:
                scrapes.failed += 1
                continue
            scrapes.count += 1
            if node_id == leader:
                if not scrapes.first:
                    scrapes.first = samples
                scrapes.last = samples
        await trio.sleep(SCRAPE_SECONDS)


@asynccontextmanager
async def two_clusters(
    directory: str | None, echo: Callable[[str], None]
) -> AsyncIterator[dict[str, tuple[LocalCluster, Producer]]]:
    root = Path(tempfile.mkdtemp(prefix="bench-metrics-", dir=directory or "."))
    clusters = {
        "off": LocalCluster(root / "off", "sync", with_naming=True),
        "on": LocalCluster(root / "on", "sync", with_naming=True, http=True),
    }
    try:
        for cluster in clusters.values():
            cluster.start_all()
        echo(f"two clusters of 3 under {root} (metrics off, on); waiting for their leaders")
        async with (
            Producer(naming=list(clusters["off"].naming.values())) as off,
            Producer(naming=list(clusters["on"].naming.values())) as on,
        ):
            with trio.fail_after(60):
                for cluster, producer in ((clusters["off"], off), (clusters["on"], on)):
                    await cluster.leader()
                    await producer.send(TOPIC, b"warm up")  # creates the topic
            yield {"off": (clusters["off"], off), "on": (clusters["on"], on)}
    finally:
        for cluster in clusters.values():
            cluster.close()
        shutil.rmtree(root, ignore_errors=True)


async def compare(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    echo: Callable[[str], None],
) -> tuple[dict[str, dict[str, Throughput]], Scrapes]:
    """kind -> "off"/"on" -> its throughput, and what the scrapes saw."""
    scrapes = Scrapes()
    async with two_clusters(directory, echo) as clusters:

        @asynccontextmanager
        async def scraped_when_on(metrics: str) -> AsyncIterator[None]:
            async with trio.open_nursery() as nursery:
                if metrics == "on":
                    nursery.start_soon(scrape_forever, clusters["on"][0], scrapes)
                yield
                nursery.cancel_scope.cancel()

        senders = {metrics: TrioSender(producer) for metrics, (_, producer) in clusters.items()}
        results = await side_by_side(
            senders, seconds, size, batch, concurrency, echo, around=scraped_when_on
        )
    return results, scrapes


async def run(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    echo: Callable[[str], None],
    as_json: bool = False,
) -> str:
    if as_json:
        configure_logging("warning")
    results, scrapes = await compare(seconds, size, batch, concurrency, directory, echo)
    if as_json:
        return json.dumps(_json_report(results, scrapes, seconds, size), indent=2)
    lines = []
    for kind, by in results.items():
        off, on = by["off"], by["on"]
        ratio = on.entries_per_second / off.entries_per_second if off.entries_per_second else 0
        lines.append(off.row(28, f"{kind}, metrics off"))
        lines.append(on.row(28, f"{kind}, metrics on") + f"  on/off {ratio:.3f}")
    moved = ", ".join(f"{name} +{value:,.0f}" for name, value in scrapes.moved().items())
    lines.append(f"scrapes: {scrapes.count} ({scrapes.failed} failed); on the leader: {moved}")
    return "\n".join(lines)


def _json_report(
    results: dict[str, dict[str, Throughput]], scrapes: Scrapes, seconds: float, size: int
) -> dict[str, object]:
    phases = [
        {**phase_json(kind, throughput), "metrics": metrics}
        for kind, by in results.items()
        for metrics, throughput in by.items()
    ]
    ratios = {
        kind: round(by["on"].entries_per_second / by["off"].entries_per_second, 3)
        for kind, by in results.items()
        if by["off"].entries_per_second
    }
    return {
        "seconds": seconds,
        "size": size,
        "scrape_seconds": SCRAPE_SECONDS,
        "phases": phases,
        "ratios_on_off": ratios,
        "scrapes": scrapes.count,
        "failed_scrapes": scrapes.failed,
        "moved_on_leader": scrapes.moved(),
    }
