"""``dledger-mq bench soak``: how a node's costs grow with the history it holds.

A local three-node cluster (``sync`` flush, a naming node in each) on free ports; producers in
this process send ``--messages`` messages (default 10 M, ``--size`` bytes each) in batches.
First, and then at each of ``--checkpoints`` evenly spaced points, it measures per node:

- **RSS**: the resident memory of the node process (``VmRSS`` in ``/proc/PID/status``);
- **disk**: the bytes of every file under the node's data directory;
- **restart to ready**: every node stopped gracefully and started again, until a leader is
  elected and every node has applied the leader's commit index; then the RSS again.

The first row is an empty cluster, measured the same way, so that the restart time of a full one
can be compared with it side by side (docs/benchmarks.md has the targets: RSS at most 100 MB
per node, flat; a restart at 10 M at most 1 s slower than an empty cluster's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.producer import Producer
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.local_cluster import LocalCluster
from dledger_mq.node.processes import stop_processes

TOPIC = "soak"
#: The longest a restart may take before the soak gives up on it.
RESTART_TIMEOUT_SECONDS = 1800.0


@attrs.frozen
class NodeCost:
    node_id: str
    rss_bytes: int
    disk_bytes: int
    rss_after_restart_bytes: int


@attrs.frozen
class Checkpoint:
    messages: int
    restart_seconds: float
    nodes: tuple[NodeCost, ...]

    def rows(self) -> list[str]:
        return [
            f"{self.messages:>12,} {node.node_id:>4} {node.rss_bytes / 1e6:>8.1f} MB "
            f"{node.disk_bytes / 1e6:>10.1f} MB {self.restart_seconds:>9.2f} s "
            f"{node.rss_after_restart_bytes / 1e6:>8.1f} MB"
            for node in self.nodes
        ]


HEADER = f"{'messages':>12} {'node':>4} {'RSS':>11} {'disk':>13} {'restart':>11} {'RSS after':>11}"


def rss_bytes(pid: int) -> int:
    """Resident memory of a running process, from ``/proc`` (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_bytes(directory: Path) -> int:
    total = 0
    for folder, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile (a temporary file)
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def _data_dir(cluster: LocalCluster, node_id: str) -> Path:
    return cluster.paths[node_id].parent / "data"


async def restart_to_ready(cluster: LocalCluster) -> float:
    """Stop every node gracefully, start them again; seconds until a leader is elected and
    every node has applied its commit index."""
    stop_processes(list(cluster.processes.values()))
    began = time.perf_counter()
    for node_id in cluster.members:
        cluster.start(node_id)
    with trio.fail_after(RESTART_TIMEOUT_SECONDS):
        while True:
            statuses = [status for _, _, status in await fetch_all(cluster.endpoints)]
            leaders = [s for s in statuses if s is not None and s.role == "leader"]
            if leaders and all(s is not None for s in statuses):
                commit = max(leaders, key=lambda s: s.term).commit_index
                if all(s is not None and s.applied_index >= commit for s in statuses):
                    return time.perf_counter() - began
            await trio.sleep(0.02)


async def measure(cluster: LocalCluster, messages: int) -> Checkpoint:
    before = {
        node_id: (rss_bytes(process.pid), disk_bytes(_data_dir(cluster, node_id)))
        for node_id, process in cluster.processes.items()
    }
    seconds = await restart_to_ready(cluster)
    return Checkpoint(
        messages,
        seconds,
        tuple(
            NodeCost(node_id, rss, disk, rss_bytes(cluster.processes[node_id].pid))
            for node_id, (rss, disk) in before.items()
        ),
    )


async def send(
    naming: list[str],
    count: int,
    size: int,
    batch: int,
    concurrency: int,
    progress: Callable[[int], None],
) -> None:
    """Send ``count`` messages: ``concurrency`` tasks of ``send_batch`` calls."""
    body = b"s" * size
    remaining = count
    sent = 0

    async def worker(producer: Producer) -> None:
        nonlocal remaining, sent
        while remaining > 0:
            take = min(batch, remaining)
            remaining -= take
            await producer.send_batch(TOPIC, [body] * take)
            sent += take
            progress(sent)

    async with Producer(naming=naming) as producer, trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, producer)


async def run(
    messages: int,
    checkpoints: int,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    echo: Callable[[str], None],
    settings: dict[str, object] | None = None,
) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=directory or "."))
    cluster = LocalCluster(root, "sync", with_naming=True, settings=settings)
    naming = list(cluster.naming.values())
    lines = [HEADER]
    try:
        for node_id in cluster.members:
            cluster.start(node_id)
        echo(f"cluster of 3 under {root}; waiting for a leader")
        with trio.fail_after(60):
            await cluster.leader()
        checkpoint = await measure(cluster, 0)
        lines += checkpoint.rows()
        echo(f"  empty cluster: ready {checkpoint.restart_seconds:.2f} s after a restart")
        done = 0
        for number in range(1, checkpoints + 1):
            target = messages * number // checkpoints
            last_report = time.perf_counter()

            def progress(sent: int, base: int = done) -> None:
                nonlocal last_report
                now = time.perf_counter()
                if now - last_report >= 10:
                    last_report = now
                    echo(f"  sent {base + sent:,} of {messages:,}")

            await send(naming, target - done, size, batch, concurrency, progress)
            done = target
            checkpoint = await measure(cluster, done)
            lines += checkpoint.rows()
            echo(f"  {done:,} messages: ready {checkpoint.restart_seconds:.2f} s after a restart")
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)
