"""The ``dledger-mq`` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import trio

from dledger_mq.errors import DledgerError

if TYPE_CHECKING:
    from dledger_mq.clients.admin import AdminConnection

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(function: F) -> F:
    """Turn the product's errors into one readable line and a non-zero exit."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (DledgerError, OSError) as error:
            raise click.ClickException(str(error)) from None
        except BaseExceptionGroup as group:  # errors from inside Trio nurseries
            matched, _ = group.split((DledgerError, OSError))
            if matched is None:
                raise
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise click.ClickException(str(first)) from None

    return wrapper  # type: ignore[return-value]


def _sigterm_as_interrupt() -> None:
    """A SIGTERM stops this command as Ctrl-C does, so that its ``finally`` blocks stop the
    node processes it started instead of leaving them running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dledger-mq")
def main() -> None:
    """dledger-mq: a message queue whose broker groups are Raft groups."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The node's TOML file; the flags below override it.",
)
@click.option("--node-id", default=None, help="This node's id (a key of [members]).")
@click.option("--cluster-id", default=None, help="Peers of another cluster id are refused.")
@click.option("--data-dir", default=None, help="Where the CommitLog lives.")
@click.option(
    "--flush",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="sync (default): fsync before acknowledging; async: fsync on an interval.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="ID=PEER,CLIENT",
    help="A member and its addresses, e.g. n1=127.0.0.1:9891,127.0.0.1:9881; "
    "repeat for each (replaces [members]).",
)
@one_line_errors
def node(
    config_path: Path | None,
    node_id: str | None,
    cluster_id: str | None,
    data_dir: str | None,
    flush: str | None,
    log_level: str | None,
    members: tuple[str, ...],
) -> None:
    """Run one replica: its Raft group on the CommitLog, peer and client listeners.

    SIGTERM or SIGINT stops it gracefully: it hands leadership to an up-to-date follower,
    lets the in-flight fsync finish and closes its connections.
    """
    from dledger_mq.logs import configure_logging
    from dledger_mq.node.config import load_config
    from dledger_mq.node.harness import HarnessOptions
    from dledger_mq.node.server import run_node

    overrides: dict[str, Any] = {
        "node_id": node_id,
        "cluster_id": cluster_id,
        "data_dir": data_dir,
        "flush": flush,
        "log_level": log_level,
    }
    if members:
        table = {}
        for text in members:
            member_id, _, addresses = text.partition("=")
            peer, _, client = addresses.partition(",")
            table[member_id] = {"peer": peer, "client": client}
        overrides["members"] = table
    config = load_config(config_path, overrides)
    harness = HarnessOptions.from_environment()
    configure_logging(config.log_level)
    trio.run(functools.partial(run_node, config, harness=harness))


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:9876",
    show_default=True,
    metavar="HOST:PORT",
    help="Where clients and brokers reach this naming node (WebSocket).",
)
@click.option("--cluster-id", default="local", show_default=True)
@click.option(
    "--heartbeat-interval-ms",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Brokers' heartbeat; a route expires after three missed.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@one_line_errors
def naming(listen: str, cluster_id: str, heartbeat_interval_ms: int, log_level: str) -> None:
    """Run a naming node alone: a route registry brokers register with and clients ask."""
    from dledger_mq.logs import configure_logging
    from dledger_mq.naming.server import serve_naming
    from dledger_mq.wire.address import Address

    try:
        address = Address.parse(listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    configure_logging(log_level)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                serve_naming,
                address.host,
                address.port,
                cluster_id,
                f"naming@{listen}",
                heartbeat_interval_ms,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)


@main.group()
def cluster() -> None:
    """A local three-node cluster, and any cluster's status and leadership."""


@cluster.command("up")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=".dledger-mq",
    show_default=True,
    help="Where the nodes' data, configs and logs go.",
)
@click.option("--flush", type=click.Choice(["sync", "async"]), default="sync", show_default=True)
@one_line_errors
def cluster_up(root: Path, flush: str) -> None:
    """Start three nodes on 127.0.0.1, show who leads, stop them all on Ctrl-C.

    Running it again resumes the same data.
    """
    from dledger_mq.node.local_cluster import run_cluster_up

    trio.run(run_cluster_up, root, flush, click.echo)


def _endpoints(endpoints: str | None, root: Path) -> list[tuple[str, str]]:
    from dledger_mq.node.local_cluster import local_endpoints

    if endpoints:
        return [(address, address) for address in endpoints.split(",") if address]
    return local_endpoints(root)


@asynccontextmanager
async def _leader_admin(
    endpoints: str | None, root: Path, cluster_id: str
) -> AsyncIterator[AdminConnection]:
    """An admin connection to the leader of the cluster these options name."""
    from dledger_mq.clients.admin import connect_admin
    from dledger_mq.node.local_cluster import find_leader_address

    leader = await find_leader_address(_endpoints(endpoints, root), cluster_id)
    async with connect_admin(leader, cluster_id) as connection:
        yield connection


def cluster_options(function: F) -> F:
    """--endpoints, --root and --cluster-id: which cluster a command talks to."""
    function = click.option("--cluster-id", default="local", show_default=True)(function)
    function = click.option(
        "--root",
        type=click.Path(file_okay=False, path_type=Path),
        default=".dledger-mq",
        show_default=True,
        help="Where `cluster up` keeps the local cluster.",
    )(function)
    return click.option(
        "--endpoints",
        default=None,
        metavar="HOST:PORT,...",
        help="Client addresses of the nodes (default: the local cluster).",
    )(function)


@cluster.command("status")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of node objects.")
@one_line_errors
def cluster_status(endpoints: str | None, root: Path, as_json: bool, cluster_id: str) -> None:
    """Each node's role, term, leader, log positions and followers' lag."""
    from dledger_mq.node.local_cluster import fetch_all, render_table, status_objects

    objects = status_objects(trio.run(fetch_all, _endpoints(endpoints, root), cluster_id))
    if as_json:
        click.echo(json.dumps(objects, indent=2))
    else:
        click.echo(render_table(objects))
    if all(node["role"] == "unreachable" for node in objects):
        raise click.ClickException("no node reachable")


@cluster.command("transfer-leader")
@click.option("--to", "target", required=True, help="Id of the node that should lead.")
@cluster_options
@one_line_errors
def cluster_transfer_leader(
    target: str, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Hand leadership to TARGET (it must be an up-to-date member)."""

    async def transfer() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            return await connection.transfer_leader(target)

    click.echo(f"leader is now {trio.run(transfer)}")


@main.group()
def topic() -> None:
    """Create, list and describe topics."""


@topic.command("create")
@click.argument("name")
@click.option("--queues", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--fifo", is_flag=True, help="Deliver each queue one message at a time, in order.")
@cluster_options
@one_line_errors
def topic_create(
    name: str, queues: int, fifo: bool, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Create topic NAME (through the leader); creating it again alike is not an error."""

    async def create() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            reply = await connection.create_topic(name, queues, fifo)
        verb = "created" if reply.created else "already exists:"
        return f"topic {verb} {reply.topic.name} ({reply.topic.queue_count} queues)"

    click.echo(trio.run(create))


@topic.command("update")
@click.argument("name")
@click.option(
    "--queues",
    type=click.IntRange(min=1),
    required=True,
    help="The new queue count (queues can be added, never removed).",
)
@click.option("--fifo/--no-fifo", default=False)
@cluster_options
@one_line_errors
def topic_update(
    name: str, queues: int, fifo: bool, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Change topic NAME's queue count or FIFO flag."""

    async def update() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            info = await connection.update_topic(name, queues, fifo)
        return f"topic updated: {info.name} ({info.queue_count} queues)"

    click.echo(trio.run(update))


@topic.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cluster_options
@one_line_errors
def topic_delete(name: str, yes: bool, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Delete topic NAME: its messages become unreachable and every group's offsets go."""
    if not yes:
        click.confirm(f"delete topic {name!r} and every group's offsets in it?", abort=True)

    async def delete() -> None:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            await connection.delete_topic(name)

    trio.run(delete)
    click.echo(f"topic deleted: {name}")


@topic.command("list")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of topic objects.")
@one_line_errors
def topic_list(endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every topic with its queue count and messages per queue (as the leader knows them)."""

    async def list_topics() -> list[dict[str, object]]:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            topics = await connection.list_topics()
        return [
            {
                "name": t.name,
                "queues": t.queue_count,
                "fifo": t.fifo,
                "messages": sum(t.max_offsets),
            }
            for t in topics
        ]

    topics = trio.run(list_topics)
    if as_json:
        click.echo(json.dumps(topics, indent=2))
        return
    for item in topics:
        fifo = " fifo" if item["fifo"] else ""
        click.echo(f"{item['name']}  queues={item['queues']}  messages={item['messages']}{fifo}")


@topic.command("describe")
@click.argument("name")
@cluster_options
@one_line_errors
def topic_describe(name: str, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Topic NAME: its queues and the offset the next message in each will get."""
    from dledger_mq.errors import BadRequest

    async def describe() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            topics = {t.name: t for t in await connection.list_topics()}
        if name not in topics:
            raise BadRequest(f"no topic {name!r}")
        info = topics[name]
        lines = [f"topic {info.name}: {info.queue_count} queues{' (fifo)' if info.fifo else ''}"]
        lines += [
            f"  queue {queue_id}: next offset {offset}"
            for queue_id, offset in enumerate(info.max_offsets)
        ]
        return "\n".join(lines)

    click.echo(trio.run(describe))


@main.group()
def group() -> None:
    """Consumer groups: list them, their lag per queue, and reset their offsets."""


@group.command("list")
@cluster_options
@one_line_errors
def group_list(endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Every consumer group that committed offsets, with its topics."""

    async def run() -> list[str]:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            groups = await connection.list_groups()
        return [f"{info.group}  topics={','.join(info.topics)}" for info in groups]

    for line in trio.run(run):
        click.echo(line)


@group.command("describe")
@click.argument("name")
@click.option("--topic", required=True)
@cluster_options
@one_line_errors
def group_describe(
    name: str, topic: str, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Lag of group NAME in TOPIC, per queue, and its live consumers."""

    async def run() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            reply = await connection.describe_group(name, topic)
        lines = [f"group {name}, topic {topic}: {len(reply.consumers)} live consumers"]
        lines += [
            f"  queue {q.queue_id}: committed {_offset_text(q.committed_offset)}"
            f"  max {q.max_offset}  lag {q.lag}"
            for q in reply.queues
        ]
        lines.append(f"  total lag {sum(q.lag for q in reply.queues)}")
        return "\n".join(lines)

    click.echo(trio.run(run))


@group.command("reset-offset")
@click.argument("name")
@click.option("--topic", required=True)
@click.option(
    "--to-offset",
    type=click.IntRange(min=0),
    default=None,
    help="Every queue starts again at this offset (clamped to what it holds).",
)
@click.option(
    "--to-time",
    default=None,
    metavar="TIMESTAMP",
    help="Every queue starts at its first message stored at or after this time: "
    "ISO 8601 (2026-11-22T10:00:00+00:00) or milliseconds since the epoch.",
)
@cluster_options
@one_line_errors
def group_reset_offset(
    name: str,
    topic: str,
    to_offset: int | None,
    to_time: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Move group NAME's offsets in TOPIC; stop the group's consumers first."""
    if (to_offset is None) == (to_time is None):
        raise click.UsageError("give exactly one of --to-offset and --to-time")
    to_time_ms = -1
    if to_time is not None:
        to_time_ms = _parse_time_ms(to_time)

    async def run() -> str:
        async with _leader_admin(endpoints, root, cluster_id) as connection:
            queues = await connection.reset_offset(
                name, topic, -1 if to_offset is None else to_offset, to_time_ms
            )
        return "\n".join(f"queue {q.queue_id}: offset {q.committed_offset}" for q in queues)

    click.echo(trio.run(run))


def _offset_text(offset: int) -> str:
    return "-" if offset < 0 else str(offset)


def _parse_time_ms(text: str) -> int:
    import datetime

    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither ISO 8601 nor milliseconds", param_hint="--to-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def naming_option(function: F) -> F:
    function = click.option("--cluster-id", default="local", show_default=True)(function)
    return click.option(
        "--naming",
        default="127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878",
        show_default=True,
        metavar="HOST:PORT,...",
        help="Naming nodes to find routes through.",
    )(function)


@main.command()
@click.argument("topic")
@click.argument("body")
@click.option("--tags", default=None, help="The message's tag (what consumers filter on).")
@click.option("--key", "keys", multiple=True, help="A key to find the message by; repeatable.")
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="A user property; repeatable.",
)
@click.option("--sharding-key", default=None, help="Same key, same queue, in order.")
@naming_option
@one_line_errors
def send(
    topic: str,
    body: str,
    tags: str | None,
    keys: tuple[str, ...],
    properties: tuple[str, ...],
    sharding_key: str | None,
    naming: str,
    cluster_id: str,
) -> None:
    """Send one message with BODY (UTF-8) to TOPIC; prints its receipt."""
    from dledger_mq.clients import Producer

    pairs = dict(item.partition("=")[::2] for item in properties)

    async def run() -> str:
        async with Producer(naming=naming, cluster_id=cluster_id) as producer:
            receipt = await producer.send(
                topic,
                body.encode(),
                tags=tags,
                keys=keys,
                properties=pairs,
                sharding_key=sharding_key,
            )
        return f"{receipt.msg_id} queue={receipt.queue_id} offset={receipt.offset}"

    click.echo(trio.run(run))


@main.command()
@click.argument("topic")
@click.option("--group", required=True, help="The consumer group.")
@click.option("--tags", default="*", show_default=True, help="Tag expression, e.g. 'a || b'.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many messages (default: run until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@naming_option
@one_line_errors
def consume(
    topic: str,
    group: str,
    tags: str,
    count: int | None,
    as_json: bool,
    naming: str,
    cluster_id: str,
) -> None:
    """Print (and acknowledge) the messages of TOPIC for consumer group GROUP."""
    from dledger_mq.clients import Consumer

    async def run() -> None:
        seen = 0
        async with Consumer(
            naming=naming, group=group, topic=topic, tags=tags, cluster_id=cluster_id
        ) as consumer:
            async for message in consumer:
                if as_json:
                    click.echo(
                        json.dumps(
                            {
                                "msg_id": message.msg_id,
                                "queue_id": message.queue_id,
                                "offset": message.offset,
                                "tags": message.tags,
                                "keys": list(message.keys),
                                "properties": message.properties,
                                "body": message.body.decode(errors="replace"),
                            }
                        )
                    )
                else:
                    click.echo(
                        f"{message.msg_id} [{message.tags or ''}] "
                        f"{message.body.decode(errors='replace')}"
                    )
                await message.ack()
                seen += 1
                if count is not None and seen >= count:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


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
    _sigterm_as_interrupt()
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
    _sigterm_as_interrupt()
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


@bench.command("produce")
@functools.partial(_sdk_bench_options, batch=256)
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Leader kills during one-at-a-time sends (0 to skip).",
)
@one_line_errors
def bench_produce(
    seconds: float, size: int, batch: int, concurrency: int, kills: int, directory: str | None
) -> None:
    """The producer SDK through naming against a local 3-node cluster: sends/s, latency, and
    how long a leader kill pauses the sends."""
    _sigterm_as_interrupt()
    from dledger_mq.bench.produce_bench import run

    report = trio.run(
        run,
        seconds,
        size,
        batch,
        concurrency,
        kills,
        directory,
        lambda text: click.echo(text, err=True),
    )
    click.echo(report)


@bench.command("consume")
@_sdk_bench_options
@one_line_errors
def bench_consume(
    seconds: float, size: int, batch: int, concurrency: int, directory: str | None
) -> None:
    """Store messages for --seconds, then time one consumer reading and acking them all."""
    _sigterm_as_interrupt()
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
    _sigterm_as_interrupt()
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


if __name__ == "__main__":
    main()
