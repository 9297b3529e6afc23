"""`dledger-mq demo` and `dledger-mq bench`: demonstrations and benchmarks on throw-away
clusters."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from dledger_mq.cli.main import json_option, main, one_line_errors, sigterm_as_interrupt

F = TypeVar("F", bound=Callable[..., Any])


@main.group()
def demo() -> None:
    """Short live demonstrations against a throw-away local cluster."""


@demo.command("failover")
@click.option(
    "--warmup",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="Seconds of traffic before the leader is killed.",
)
@click.option(
    "--after",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="Seconds of traffic after the kill, before the killed node is restarted.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the temporary cluster lives (default: the system's temporary directory).",
)
@one_line_errors
def demo_failover(warmup: float, after: float, directory: Path | None) -> None:
    """Kill the leader under a live producer and consumer, and watch nothing get lost.

    Starts three nodes on free ports, sends and consumes through the SDK, SIGKILLs the leader,
    shows the election and the client following the new leader, restarts the node and ends
    with a summary. Exits non-zero if an acknowledged message was not consumed.
    """
    sigterm_as_interrupt()
    from dledger_mq.demo import run_failover_demo

    result = trio.run(
        functools.partial(
            run_failover_demo, click.echo, warmup_s=warmup, after_kill_s=after, directory=directory
        )
    )
    counts = result.counts
    click.echo("")
    click.echo(f"killed leader        {result.killed}; new leader {result.new_leader}")
    click.echo(f"election             {result.election_s:.2f} s after the kill")
    click.echo(f"longest send pause   {counts.longest_pause_s:.2f} s (no error reached the app)")
    click.echo(f"sent / acknowledged  {counts.sent:,} / {counts.acknowledged:,}")
    click.echo(f"consumed (distinct)  {len(counts.consumed_values):,}")
    click.echo(f"lost                 {counts.lost}")
    if counts.lost:
        raise click.ClickException(f"{counts.lost} acknowledged messages were not consumed")


@main.group()
def bench() -> None:
    """Benchmarks whose figures go into docs/benchmarks.md."""


@bench.command("log")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write (default: a temporary directory under the current one, removed after).",
)
@click.option(
    "--seconds",
    type=float,
    default=1.5,
    show_default=True,
    help="Per case for the log; the raw loop beside it runs as long again.",
)
@click.option("--count", type=int, default=None, help="Batches per case instead of --seconds.")
@click.option(
    "--entry-sizes", default="100,1024", show_default=True, help="Bytes, comma-separated."
)
@click.option("--batch-sizes", default="1,16,256", show_default=True, help="Comma-separated.")
@click.option("--policies", default="sync,async", show_default=True, help="Flush policies.")
def bench_log(
    directory: str | None,
    seconds: float,
    count: int | None,
    entry_sizes: str,
    batch_sizes: str,
    policies: str,
) -> None:
    """CommitLog append throughput and latency beside a raw write+fsync loop, and reads."""
    from dledger_mq.bench.log_bench import main as bench_log_main

    bench_log_main(
        directory=directory,
        seconds=seconds,
        count=count,
        entry_sizes=entry_sizes,
        batch_sizes=batch_sizes,
        policies=policies,
    )


@bench.command("raft")
@click.option(
    "--seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Duration of the one-at-a-time and the pipelined phases each.",
)
@click.option(
    "--window",
    type=int,
    default=8,
    show_default=True,
    help="Batch requests in flight in the pipelined phase.",
)
@click.option(
    "--batch",
    type=int,
    default=256,
    show_default=True,
    help="Entries per request in the pipelined phase.",
)
@click.option(
    "--kills",
    type=int,
    default=10,
    show_default=True,
    help="Leader kills in the failover phase (0 to skip it).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the temporary cluster lives (default: the current directory).",
)
@one_line_errors
def bench_raft(seconds: float, window: int, batch: int, kills: int, directory: str | None) -> None:
    """Committed entries/s and latency through the leader of a local 3-node cluster, and
    failover time over repeated leader kills."""
    sigterm_as_interrupt()
    from dledger_mq.bench.raft_bench import run

    report = trio.run(
        run, seconds, window, batch, kills, directory, lambda text: click.echo(text, err=True)
    )
    click.echo(report)


@bench.command("transport")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Per case.")
@one_line_errors
def bench_transport(seconds: float) -> None:
    """Raw Trio TCP, trio-websocket and our WebSocket driver: same frames, two processes."""
    try:
        import trio_websocket  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "bench transport compares our WebSocket driver with trio-websocket, which only the "
            "tests install: pip install -e '.[test]'"
        ) from None
    from dledger_mq.bench.transport_bench import run

    click.echo(run(seconds, lambda text: click.echo(text, err=True)))


def _sdk_bench_options(function: F, batch: int = 64) -> F:
    for option in (
        click.option("--dir", "directory", type=click.Path(file_okay=False), default=None),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="send_batch calls in flight.",
        ),
        click.option(
            "--batch",
            type=click.IntRange(min=1),
            default=batch,
            show_default=True,
            help="Messages per send_batch.",
        ),
        click.option(
            "--size",
            type=click.IntRange(min=12),
            default=100,
            show_default=True,
            help="Message body bytes.",
        ),
        click.option("--seconds", type=float, default=5.0, show_default=True),
    ):
        function = option(function)
    return function


def _check_apis(context: click.Context, parameter: click.Parameter, value: str) -> tuple[str, ...]:
    """``--api``: SDK faces by name, each once, in the order given."""
    from dledger_mq.bench.api_bench import APIS

    chosen: list[str] = []
    for name in (item.strip() for item in value.split(",")):
        if name not in APIS:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(APIS)}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


@bench.command("produce")
@functools.partial(_sdk_bench_options, batch=256)
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Leader kills during one-at-a-time sends (0 to skip).",
)
@click.option("--tls", is_flag=True, help="TLS on every port of the cluster (as cluster up --tls).")
@click.option(
    "--groups",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Broker groups of 3 nodes. With 2 or more, every figure twice, side by side in the "
    "same run: a topic in one group, and a topic spread over all of them.",
)
@click.option(
    "--metrics",
    "metrics",
    is_flag=True,
    help="Instead: two clusters side by side in the same run, one without /metrics and one "
    "serving and scraped every second, to show what metrics cost (no kills).",
)
@click.option(
    "--api",
    "apis",
    default="trio",
    show_default=True,
    callback=_check_apis,
    metavar="API,...",
    help="Instead, with more than Trio: each of trio, asyncio (dledger_mq.aio) and sync "
    "(dledger_mq.sync) named, side by side in the same run on one cluster (no kills).",
)
@json_option("the figures")
@one_line_errors
def bench_produce(
    seconds: float,
    size: int,
    batch: int,
    concurrency: int,
    kills: int,
    tls: bool,
    groups: int,
    metrics: bool,
    apis: tuple[str, ...],
    as_json: bool,
    directory: str | None,
) -> None:
    """The producer SDK through naming against a local 3-node cluster: sends/s, latency, and
    how long a leader kill pauses the sends; with --groups N, one group beside N; with
    --metrics, metrics off beside on; with --api trio,asyncio,sync, the SDK's faces side by
    side."""
    sigterm_as_interrupt()
    if metrics or apis != ("trio",):
        # Side by side in one run: metrics off and on, or the SDK's faces.
        if tls or groups > 1 or (metrics and apis != ("trio",)):
            raise click.UsageError("--metrics and --api each compare one group without TLS")
        from dledger_mq.bench import api_bench, metrics_bench

        compare = metrics_bench.run if metrics else functools.partial(api_bench.run, apis)
        click.echo(
            trio.run(
                compare,
                seconds,
                size,
                batch,
                concurrency,
                directory,
                lambda text: click.echo(text, err=True),
                as_json,
            )
        )
        return
    from dledger_mq.bench.produce_bench import run

    report = trio.run(
        functools.partial(
            run,
            seconds,
            size,
            batch,
            concurrency,
            kills,
            directory,
            lambda text: click.echo(text, err=True),
            tls,
            groups=groups,
            as_json=as_json,
        )
    )
    click.echo(report)


@bench.command("consume")
@_sdk_bench_options
@one_line_errors
def bench_consume(
    seconds: float, size: int, batch: int, concurrency: int, directory: str | None
) -> None:
    """Store messages for --seconds, then time one consumer reading and acking them all."""
    sigterm_as_interrupt()
    from dledger_mq.bench.produce_bench import run_consume

    click.echo(
        trio.run(
            run_consume,
            seconds,
            size,
            batch,
            concurrency,
            directory,
            lambda text: click.echo(text, err=True),
        )
    )


@bench.command("e2e")
@_sdk_bench_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Messages/s offered by all producers together (0: as fast as they can).",
)
@one_line_errors
def bench_e2e(
    seconds: float, size: int, batch: int, concurrency: int, rate: float, directory: str | None
) -> None:
    """Producers and a consumer at once: messages/s and send-to-delivery latency."""
    sigterm_as_interrupt()
    from dledger_mq.bench.produce_bench import run_e2e

    click.echo(
        trio.run(
            run_e2e,
            seconds,
            size,
            batch,
            concurrency,
            rate,
            directory,
            lambda text: click.echo(text, err=True),
        )
    )


@bench.command("open")
@click.option(
    "--entries",
    type=click.IntRange(min=1),
    default=10_000_000,
    show_default=True,
    help="Entries to write.",
)
@click.option("--size", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None)
@one_line_errors
def bench_open(entries: int, size: int, runs: int, directory: str | None) -> None:
    """How long opening a CommitLog of --entries takes, with its index files and checkpoint
    and without them (every record read)."""
    import logging
    import shutil
    import tempfile

    import structlog

    from dledger_mq.bench.open_bench import run

    # The log's own info events (one per open) would drown the report.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    where = tempfile.mkdtemp(prefix="bench-open-", dir=directory or ".")
    try:
        click.echo(run(where, entries, size, runs, lambda text: click.echo(text, err=True)))
    finally:
        shutil.rmtree(where, ignore_errors=True)


@bench.command("soak")
@click.option(
    "--messages",
    type=click.IntRange(min=1),
    default=10_000_000,
    show_default=True,
    help="Messages to send in all.",
)
@click.option(
    "--checkpoints",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Evenly spaced points at which to measure (after an empty cluster).",
)
@click.option("--size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None)
@click.option(
    "--retention-bytes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The nodes' retention_bytes (0: none; retention_hours stays 72).",
)
@click.option(
    "--segment-size-bytes",
    type=click.IntRange(min=1 << 20),
    default=None,
    help="The nodes' log segment size (default: the node's, 1 GiB).",
)
@one_line_errors
def bench_soak(
    messages: int,
    checkpoints: int,
    size: int,
    batch: int,
    concurrency: int,
    directory: str | None,
    retention_bytes: int,
    segment_size_bytes: int | None,
) -> None:
    """How costs grow with history: per node, RSS, disk and the time from a restart of every
    node to ready (a leader, everything applied), empty and at each checkpoint."""
    sigterm_as_interrupt()
    from dledger_mq.bench.soak_bench import run

    settings: dict[str, object] = {
        "retention_bytes": retention_bytes,
        # Retention looks every 10 s by default; a soak fills the disk faster.
        "retention_check_ms": 1000,
    }
    if segment_size_bytes:
        settings["segment_size_bytes"] = segment_size_bytes
    from dledger_mq.logs import configure_logging

    configure_logging("warning")  # the report alone on standard output

    click.echo(
        trio.run(
            run,
            messages,
            checkpoints,
            size,
            batch,
            concurrency,
            directory,
            lambda text: click.echo(text, err=True),
            settings,
        )
    )


@bench.command("delay")
@click.option(
    "--messages",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Lateness: messages scheduled on an idle cluster (0 to skip).",
)
@click.option(
    "--lead",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    help="Seconds from the start of the scheduling to the first deliver-at time.",
)
@click.option(
    "--spread",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Lateness: seconds the deliver-at times are spread over.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Lateness and failover: messages per send_batch, sharing one deliver-at time.",
)
@click.option(
    "--timers",
    type=click.IntRange(min=0),
    default=1_000_000,
    show_default=True,
    help="Memory: timers scheduled 1-2 days ahead on a fresh cluster (0 to skip).",
)
@click.option(
    "--timer-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Memory: messages per send_batch.",
)
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Failover: leader kills (SIGKILL) while timers are due (0 to skip).",
)
@click.option(
    "--failover-messages",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Failover: messages due from 1 s before to 2 s after each kill.",
)
@click.option(
    "--size", type=click.IntRange(min=1), default=16, show_default=True, help="Body bytes."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="send_batch calls in flight while scheduling.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds after the last deliver-at time before a message not delivered is lost.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the temporary clusters live (default: the current directory).",
)
@json_option("the figures")
@one_line_errors
def bench_delay(
    messages: int,
    lead: float,
    spread: float,
    batch: int,
    timers: int,
    timer_batch: int,
    kills: int,
    failover_messages: int,
    size: int,
    concurrency: int,
    wait: float,
    directory: str | None,
    as_json: bool,
) -> None:
    """Delayed messages: how late they are delivered on an idle cluster (p50/p99/max, none
    early), what a million pending timers cost each node (RSS), and how late messages due
    around a leader kill are beside the failover time (none lost, none stored twice).

    Exits non-zero if a message was lost, early or stored twice (the report is printed
    first)."""
    sigterm_as_interrupt()
    from dledger_mq.bench.delay_bench import Settings, run

    settings = Settings(
        messages=messages,
        lead=lead,
        spread=spread,
        batch=batch,
        timers=timers,
        timer_batch=timer_batch,
        kills=kills,
        failover_messages=failover_messages,
        size=size,
        concurrency=concurrency,
        wait=wait,
    )
    report, correct = trio.run(
        functools.partial(
            run, settings, directory, lambda text: click.echo(text, err=True), as_json=as_json
        )
    )
    click.echo(report)
    if not correct:
        raise click.ClickException("a delayed message was lost, early or stored twice")
