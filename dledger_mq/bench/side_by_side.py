"""Variants of one thing measured side by side in the same run (``bench produce --metrics``,
``bench produce --api``): each kind of sending (one at a time, batched) in slices of half
``--seconds``, in the order of the variants and then back (A, B, C, C, B, A), so that each sees
the same machine as far as can be; the slices of each variant merged into one figure."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

from dledger_mq.bench.produce_bench import batched, merge_throughputs, one_at_a_time
from dledger_mq.bench.raft_bench import Throughput, percentile
from dledger_mq.clients.producer import Producer


class Sender(Protocol):
    """A producer of some kind, measured for one slice."""

    async def one_at_a_time(self, seconds: float, size: int) -> Throughput: ...

    async def batched(
        self, seconds: float, size: int, batch: int, concurrency: int
    ) -> Throughput: ...


class TrioSender:
    """The Trio ``Producer`` in this process's Trio run."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    async def one_at_a_time(self, seconds: float, size: int) -> Throughput:
        return await one_at_a_time(self.producer, seconds, size)

    async def batched(self, seconds: float, size: int, batch: int, concurrency: int) -> Throughput:
        return await batched(self.producer, seconds, size, batch, concurrency)


async def side_by_side(
    variants: Mapping[str, Sender],
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    echo: Callable[[str], None],
    around: Callable[[str], AbstractAsyncContextManager[object]] | None = None,
) -> dict[str, dict[str, Throughput]]:
    """kind -> variant -> its throughput. ``around(variant)``, when given, is entered around
    each of that variant's slices (the metrics bench scrapes its "on" cluster meanwhile)."""
    kinds: list[tuple[str, Callable[[Sender], Awaitable[Throughput]]]] = [
        ("one at a time", lambda sender: sender.one_at_a_time(seconds / 2, size)),
        (
            f"batched {concurrency}x{batch}",
            lambda sender: sender.batched(seconds / 2, size, batch, concurrency),
        ),
    ]
    results: dict[str, dict[str, Throughput]] = {}
    for kind, send in kinds:
        slices: dict[str, list[Throughput]] = {variant: [] for variant in variants}
        for variant in [*variants, *reversed(list(variants))]:
            async with around(variant) if around is not None else nullcontext():
                result = await send(variants[variant])
            slices[variant].append(result)
            echo(f"  {kind}, {variant}: {result.entries} messages")
        results[kind] = {variant: merge_throughputs(parts) for variant, parts in slices.items()}
    return results


def phase_json(kind: str, throughput: Throughput) -> dict[str, object]:
    """One figure of a side-by-side report, for ``--json``."""
    values = sorted(throughput.latencies_ms)
    return {
        "name": kind,
        "messages": throughput.entries,
        "per_second": round(throughput.entries_per_second, 1),
        "p50_ms": round(percentile(values, 0.5), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
    }
