"""``dledger-mq bench raft``: proposals through the leader of a local three-node cluster.

Starts three `dledger-mq node` processes (``sync`` flush) on free ports under a temporary
directory, then measures, 100 B entries:

- one at a time: one proposal in flight, committed entries/s and latency p50/p99/p999;
- pipelined: ``--window`` batch requests of ``--batch`` entries in flight;
- failover: ``--kills`` times, SIGKILL the leader while a client proposes one at a time, and
  time from the kill to the first proposal committed by the new leader.

Beside them, in the same run, the raw rate of this machine's ``os.write`` + ``os.fsync`` of
100 B, which bounds one-at-a-time latency from below (each proposal waits for two fsyncs in
sequence: the leader's, then a follower's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.errors import DledgerError, NotLeader
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.harness import HARNESS_ENVIRONMENT_VARIABLE
from dledger_mq.node.local_cluster import LocalCluster

ENTRY_BYTES = 100
REQUEST_TIMEOUT_SECONDS = 2.0


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    position = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[position]


@attrs.frozen
class Throughput:
    name: str
    entries: int
    seconds: float
    latencies_ms: list[float]

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0

    def row(self, width: int = 22, name: str | None = None) -> str:
        """One line: ``name`` (default: its own) padded to ``width``, rate and latencies."""
        values = sorted(self.latencies_ms)
        return (
            f"{name or self.name:<{width}} {self.entries_per_second:>10,.0f}/s   "
            f"p50 {percentile(values, 0.5):6.2f} ms  p99 {percentile(values, 0.99):6.2f} ms"
            f"  p999 {percentile(values, 0.999):6.2f} ms  ({self.entries} entries)"
        )


class LeaderClient:
    """Follows the leader: reconnects on NotLeader or a broken connection, then retries.

    Each connection is held open by a task in ``nursery`` until it is dropped.
    """

    def __init__(self, cluster: LocalCluster, nursery: trio.Nursery) -> None:
        self.cluster = cluster
        self.nursery = nursery
        self.connection: AdminConnection | None = None
        self._scope: trio.CancelScope | None = None

    async def propose_batch(self, entries: list[bytes]) -> int:
        while True:
            connection = self.connection or await self._open()
            try:
                with trio.fail_after(REQUEST_TIMEOUT_SECONDS):
                    return await connection.propose_batch(entries)
            except (NotLeader, trio.TooSlowError):
                self.drop()
            except DledgerError as error:
                if not error.retriable:
                    raise
                self.drop()

    def drop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self.connection = None
        self._scope = None

    async def _open(self) -> AdminConnection:
        while True:
            _, address = await self.cluster.leader()
            try:
                self.connection, self._scope = await self.nursery.start(self._hold, address)
            except DledgerError:
                await trio.sleep(0.01)
                continue
            return self.connection

    @staticmethod
    async def _hold(
        address: str,
        *,
        task_status: trio.TaskStatus[tuple[AdminConnection, trio.CancelScope]],
    ) -> None:
        with trio.CancelScope() as scope:
            async with connect_admin(address) as connection:
                task_status.started((connection, scope))
                await trio.sleep_forever()


async def one_at_a_time(
    client: LeaderClient, seconds: float, echo: Callable[[str], None]
) -> Throughput:
    latencies = []
    entry = b"x" * ENTRY_BYTES
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        await client.propose_batch([entry])
        latencies.append((time.perf_counter() - start) * 1000)
    elapsed = time.perf_counter() - began
    echo(f"  one at a time: {len(latencies)} proposals in {elapsed:.1f} s")
    return Throughput("one at a time", len(latencies), elapsed, latencies)


async def pipelined(
    client: LeaderClient, seconds: float, window: int, batch: int, echo: Callable[[str], None]
) -> Throughput:
    latencies: list[float] = []
    entries = [b"y" * ENTRY_BYTES] * batch
    began = time.perf_counter()
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - began < seconds:
            start = time.perf_counter()
            await client.propose_batch(entries)
            latencies.append((time.perf_counter() - start) * 1000)
            done += batch

    async with trio.open_nursery() as nursery:
        for _ in range(window):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - began
    echo(f"  pipelined: {done} entries in {elapsed:.1f} s")
    return Throughput(f"pipelined {window}x{batch}", done, elapsed, latencies)


async def failovers(
    cluster: LocalCluster, client: LeaderClient, kills: int, echo: Callable[[str], None]
) -> list[float]:
    times = []
    entry = b"f" * ENTRY_BYTES
    for kill in range(1, kills + 1):
        leader, _ = await cluster.leader()
        await client.propose_batch([entry])
        killed_at = time.perf_counter()
        cluster.kill(leader)
        client.drop()
        await client.propose_batch([entry])
        times.append(time.perf_counter() - killed_at)
        echo(f"  kill {kill}/{kills}: {leader} killed, next commit after {times[-1] * 1000:.0f} ms")
        cluster.start(leader)
        await _caught_up(cluster)
    return times


async def _caught_up(cluster: LocalCluster) -> None:
    while True:
        rows = await fetch_all(cluster.endpoints)
        statuses = [status for _, _, status in rows]
        if all(statuses) and len({s.commit_index for s in statuses if s}) == 1:
            return
        await trio.sleep(0.05)


def raw_fsync_rate(directory: Path, seconds: float) -> Throughput:
    path = directory / "raw-fsync"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    latencies = []
    data = b"r" * ENTRY_BYTES
    began = time.perf_counter()
    try:
        while time.perf_counter() - began < seconds:
            start = time.perf_counter()
            os.write(descriptor, data)
            os.fsync(descriptor)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(descriptor)
    return Throughput("raw write+fsync", len(latencies), time.perf_counter() - began, latencies)


async def run(
    seconds: float,
    window: int,
    batch: int,
    kills: int,
    directory: str | None,
    echo: Callable[[str], None],
) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench-raft-", dir=directory or "."))
    # Raw proposals measure Raft alone; only the harness switch opens them.
    cluster = LocalCluster(
        root, "sync", environment={**os.environ, HARNESS_ENVIRONMENT_VARIABLE: "raw-proposals"}
    )
    try:
        for node_id in cluster.members:
            cluster.start(node_id)
        echo(f"cluster of 3 under {root}; waiting for a leader")
        with trio.fail_after(30):
            leader, _ = await cluster.leader()
        echo(f"leader {leader}")
        async with trio.open_nursery() as nursery:
            client = LeaderClient(cluster, nursery)
            raw = raw_fsync_rate(root, min(seconds, 2.0))
            one = await one_at_a_time(client, seconds, echo)
            piped = await pipelined(client, seconds, window, batch, echo)
            failover_seconds = await failovers(cluster, client, kills, echo) if kills else []
            nursery.cancel_scope.cancel()
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    lines = [raw.row(), one.row(), piped.row()]
    lines.append(
        f"{'one at a time / raw':<22} {one.entries_per_second / raw.entries_per_second:>10.2f}"
        " (ratio of rates, same run)"
    )
    if failover_seconds:
        ordered = sorted(failover_seconds)
        lines.append(
            f"{'failover':<22} median {percentile(ordered, 0.5) * 1000:.0f} ms, "
            f"worst {ordered[-1] * 1000:.0f} ms, best {ordered[0] * 1000:.0f} ms "
            f"over {len(ordered)} leader kills (SIGKILL to next commit)"
        )
    return "\n".join(lines)
