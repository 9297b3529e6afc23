"""``dledger-mq bench produce --api trio,asyncio,sync``: what each face of the SDK costs.

One local three-node cluster and one producer per API on it, all open at once: the Trio
``Producer`` in this process's Trio run, ``dledger_mq.aio.Producer`` on an asyncio loop in a
thread of its own (Trio in guest mode on that loop), ``dledger_mq.sync.Producer`` called from
a plain thread (the SDK's Trio thread underneath). Each kind of sending (one at a time; batched,
``--concurrency`` calls of ``--batch`` messages in flight: asyncio tasks or threads for the
facades) runs in slices of half ``--seconds`` in the order of the APIs and then back (trio,
asyncio, sync, sync, asyncio, trio), so each sees the same machine as far as can be; the report
puts them side by side with each one's ratio to Trio.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from dledger_mq import aio, sync
from dledger_mq.bench.produce_bench import TOPIC
from dledger_mq.bench.raft_bench import Throughput
from dledger_mq.bench.side_by_side import Sender, TrioSender, phase_json, side_by_side
from dledger_mq.clients.producer import Producer
from dledger_mq.logs import configure_logging
from dledger_mq.node.local_cluster import LocalCluster

APIS = ("trio", "asyncio", "sync")

T = TypeVar("T")


class AsyncioSender:
    """An ``aio.Producer`` on an asyncio loop running in a thread of its own."""

    def __init__(self, naming: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-asyncio")
        self.producer = aio.Producer(naming=naming)

    async def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return await trio.to_thread.run_sync(future.result)

    async def open(self) -> None:
        self.thread.start()
        await self._run(self.producer.__aenter__())

    async def close(self) -> None:
        try:
            await self._run(self.producer.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await trio.to_thread.run_sync(self.thread.join)
            self.loop.close()

    async def one_at_a_time(self, seconds: float, size: int) -> Throughput:
        async def sending() -> Throughput:
            body = b"x" * size
            latencies = []
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                start = time.perf_counter()
                await self.producer.send(TOPIC, body)
                latencies.append((time.perf_counter() - start) * 1000)
            return Throughput(
                "one at a time", len(latencies), time.perf_counter() - began, latencies
            )

        return await self._run(sending())

    async def batched(self, seconds: float, size: int, batch: int, concurrency: int) -> Throughput:
        async def sending() -> Throughput:
            bodies = [b"y" * size] * batch
            latencies: list[float] = []
            began = time.perf_counter()

            async def worker() -> None:
                while time.perf_counter() - began < seconds:
                    start = time.perf_counter()
                    await self.producer.send_batch(TOPIC, bodies)
                    latencies.append((time.perf_counter() - start) * 1000)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return Throughput(
                f"batched {concurrency}x{batch}",
                len(latencies) * batch,
                time.perf_counter() - began,
                latencies,
            )

        return await self._run(sending())


class SyncSender:
    """A ``sync.Producer`` called from plain threads (one, or ``concurrency`` for batches)."""

    def __init__(self, naming: list[str]) -> None:
        self.producer = sync.Producer(naming=naming)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self.producer.__enter__)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.producer.close)

    async def one_at_a_time(self, seconds: float, size: int) -> Throughput:
        def sending() -> Throughput:
            body = b"x" * size
            latencies = []
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                start = time.perf_counter()
                self.producer.send(TOPIC, body)
                latencies.append((time.perf_counter() - start) * 1000)
            return Throughput(
                "one at a time", len(latencies), time.perf_counter() - began, latencies
            )

        return await trio.to_thread.run_sync(sending)

    async def batched(self, seconds: float, size: int, batch: int, concurrency: int) -> Throughput:
        def sending() -> Throughput:
            bodies = [b"y" * size] * batch
            latencies: list[float] = []
            began = time.perf_counter()

            def worker() -> None:
                while time.perf_counter() - began < seconds:
                    start = time.perf_counter()
                    self.producer.send_batch(TOPIC, bodies)
                    latencies.append((time.perf_counter() - start) * 1000)

            with ThreadPoolExecutor(concurrency, thread_name_prefix="bench-sync") as pool:
                for done in [pool.submit(worker) for _ in range(concurrency)]:
                    done.result()
            return Throughput(
                f"batched {concurrency}x{batch}",
                len(latencies) * batch,
                time.perf_counter() - began,
                latencies,
            )

        return await trio.to_thread.run_sync(sending)


@asynccontextmanager
async def senders(
    apis: Sequence[str], directory: str | None, echo: Callable[[str], None]
) -> AsyncIterator[dict[str, Sender]]:
    root = Path(tempfile.mkdtemp(prefix="bench-api-", dir=directory or "."))
    cluster = LocalCluster(root, "sync", with_naming=True)
    try:
        cluster.start_all()
        echo(f"cluster of 3 under {root}; waiting for a leader, then a producer per API")
        with trio.fail_after(60):
            await cluster.leader()
        naming = list(cluster.naming.values())
        async with AsyncExitStack() as stack:
            opened: dict[str, Sender] = {}
            for api in apis:
                if api == "trio":
                    producer = await stack.enter_async_context(Producer(naming=naming))
                    opened[api] = TrioSender(producer)
                else:
                    facade = AsyncioSender(naming) if api == "asyncio" else SyncSender(naming)
                    await facade.open()
                    stack.push_async_callback(facade.close)
                    opened[api] = facade
            with trio.fail_after(60):
                for sender in opened.values():  # a send or more each; the first makes the topic
                    await sender.one_at_a_time(0.1, 8)
            yield opened
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


async def compare(
    apis: Sequence[str],
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    echo: Callable[[str], None],
) -> dict[str, dict[str, Throughput]]:
    """kind -> api -> its throughput."""
    async with senders(apis, directory, echo) as opened:
        return await side_by_side(opened, seconds, size, batch, concurrency, echo)


def _ratio(throughput: Throughput, reference: Throughput | None) -> float | None:
    if reference is None or not reference.entries_per_second:
        return None
    return throughput.entries_per_second / reference.entries_per_second


async def run(
    apis: Sequence[str],
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
    results = await compare(apis, seconds, size, batch, concurrency, directory, echo)
    if as_json:
        return json.dumps(_json_report(results, seconds, size), indent=2)
    lines = []
    for kind, by in results.items():
        for api, throughput in by.items():
            ratio = _ratio(throughput, by.get("trio"))
            shown = "" if ratio is None or api == "trio" else f"  {api}/trio {ratio:.3f}"
            lines.append(throughput.row(28, f"{kind}, {api}") + shown)
    return "\n".join(lines)


def _json_report(
    results: dict[str, dict[str, Throughput]], seconds: float, size: int
) -> dict[str, object]:
    phases = []
    for kind, by in results.items():
        for api, throughput in by.items():
            ratio = _ratio(throughput, by.get("trio"))
            phases.append(
                {
                    **phase_json(kind, throughput),
                    "api": api,
                    "ratio_to_trio": None if ratio is None else round(ratio, 3),
                }
            )
    return {"seconds": seconds, "size": size, "phases": phases}
