"""``dledger-mq demo failover``: a failover shown live, in two minutes, to someone watching.

Starts a local three-node cluster on free ports under a temporary directory (so that it never
disturbs ``cluster up``), runs one producer and one consumer through the SDK, SIGKILLs the
leader, and prints what happens as it happens: the election, the client following the new
leader, the running counts (sent, acknowledged, consumed, lost). Then it restarts the killed
node, waits for it to catch up, drains the consumer and ends with a summary. ``lost`` is what
was acknowledged and never consumed: it must stay 0.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients import Consumer, Producer
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.local_cluster import LocalCluster

TOPIC = "demo"
GROUP = "demo-viewers"
STATUS_SECONDS = 0.5


@attrs.define
class Counts:
    sent: int = 0
    acknowledged: int = 0
    consumed: int = 0
    #: Acknowledged values, and those consumed at least once.
    acked_values: set[int] = attrs.field(factory=set)
    consumed_values: set[int] = attrs.field(factory=set)
    longest_pause_s: float = 0.0
    last_ack_at: float = 0.0
    errors: int = 0

    @property
    def lost(self) -> int:
        return len(self.acked_values - self.consumed_values)

    def line(self) -> str:
        return (
            f"sent {self.sent:>6,}  acked {self.acknowledged:>6,}  "
            f"consumed {len(self.consumed_values):>6,}  "
            f"in flight {len(self.acked_values - self.consumed_values):>4,}"
        )


@attrs.frozen
class DemoResult:
    counts: Counts
    election_s: float
    killed: str
    new_leader: str


async def run_failover_demo(
    echo: Callable[[str], None],
    *,
    warmup_s: float = 5.0,
    after_kill_s: float = 5.0,
    rate: float = 200.0,
    directory: Path | None = None,
) -> DemoResult:
    root = Path(tempfile.mkdtemp(prefix="dledger-mq-demo-", dir=directory))
    cluster = LocalCluster(root, "sync", with_naming=True)
    began = trio.current_time()

    def say(text: str) -> None:
        echo(f"[{trio.current_time() - began:6.2f}s] {text}")

    counts = Counts()
    try:
        for node_id in cluster.members:
            cluster.start(node_id)
        say(f"three nodes started under {root}: {', '.join(cluster.members)}")
        leader, _ = await cluster.leader()
        term = await _term_of(cluster, leader)
        say(f"{leader} leads (term {term}); starting a producer and a consumer")
        naming = list(cluster.naming.values())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_produce, naming, counts, rate)
            nursery.start_soon(_consume, naming, counts)
            nursery.start_soon(_show_counts, counts, say)
            await trio.sleep(warmup_s)

            cluster.kill(leader)
            killed_at = trio.current_time()
            say(f">>> SIGKILL {leader}, the leader. The producer keeps calling send().")
            new_leader = await _wait_new_leader(cluster, leader)
            election_s = trio.current_time() - killed_at
            say(f">>> {new_leader} elected leader {election_s:.2f} s after the kill")
            acked_before = counts.acknowledged
            while counts.acknowledged == acked_before:
                await trio.sleep(0.01)
            say(
                f">>> the producer follows {new_leader}: sends acknowledged again "
                f"{trio.current_time() - killed_at:.2f} s after the kill, no error raised"
            )
            await trio.sleep(after_kill_s)

            cluster.start(leader)
            say(f">>> {leader} restarted; it rejoins as a follower and catches up")
            await _wait_caught_up(cluster, leader)
            say(f">>> {leader} caught up")
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
        say("producer stopped; draining the consumer")
        with trio.move_on_after(10 if counts.lost else 0):
            async with Consumer(naming, group=GROUP, topic=TOPIC) as consumer:
                async for message in consumer:
                    counts.consumed_values.add(int(message.body))
                    await message.ack()
                    if not counts.lost:
                        break
        return DemoResult(counts, election_s, leader, new_leader)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


async def _produce(naming: list[str], counts: Counts, rate: float) -> None:
    async with Producer(naming) as producer:
        while True:
            counts.sent += 1
            value = counts.sent
            await producer.send(TOPIC, str(value).encode())
            now = trio.current_time()
            if counts.last_ack_at:
                counts.longest_pause_s = max(counts.longest_pause_s, now - counts.last_ack_at)
            counts.last_ack_at = now
            counts.acknowledged += 1
            counts.acked_values.add(value)
            await trio.sleep(1 / rate)


async def _consume(naming: list[str], counts: Counts) -> None:
    async with Consumer(naming, group=GROUP, topic=TOPIC) as consumer:
        async for message in consumer:
            counts.consumed += 1
            counts.consumed_values.add(int(message.body))
            await message.ack()


async def _show_counts(counts: Counts, say: Callable[[str], None]) -> None:
    while True:
        await trio.sleep(STATUS_SECONDS)
        say(counts.line())


async def _term_of(cluster: LocalCluster, node_id: str) -> int:
    for found, _, status in await fetch_all(cluster.endpoints):
        if found == node_id and status is not None:
            return status.term
    return 0


async def _wait_new_leader(cluster: LocalCluster, old: str) -> str:
    while True:
        for node_id, _, status in await fetch_all(cluster.endpoints):
            if node_id != old and status is not None and status.role == "leader":
                return node_id
        await trio.sleep(0.02)


async def _wait_caught_up(cluster: LocalCluster, node_id: str) -> None:
    while True:
        statuses = {n: s for n, _, s in await fetch_all(cluster.endpoints)}
        mine = statuses.get(node_id)
        leaders = [s for s in statuses.values() if s is not None and s.role == "leader"]
        if mine is not None and leaders and mine.applied_index >= leaders[0].commit_index:
            return
        await trio.sleep(0.1)
