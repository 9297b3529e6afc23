"""`dledger-mq topic ...` and `dledger-mq group ...`: topics and consumer groups, through the
leader of the cluster that ``--endpoints`` (default: the local cluster) names."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import cluster_options, json_option, leader_admin, main, one_line_errors


@main.group()
def topic() -> None:
    """Create, change, list, describe and delete topics."""


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
        async with leader_admin(endpoints, root, cluster_id) as connection:
            reply = await connection.create_topic(name, queues, fifo)
        verb = "created" if reply.created else "already exists:"
        return f"topic {verb} {reply.topic.name} ({reply.topic.queue_count} queues)"

    click.echo(trio.run(create))


@topic.command("update")
@click.argument("name")
@click.option(
    "--queues",
    type=click.IntRange(min=1),
    default=None,
    help="The new queue count (queues can be added, never removed).",
)
@click.option(
    "--fifo/--no-fifo", default=None, help="Turn FIFO delivery on or off (default: unchanged)."
)
@cluster_options
@one_line_errors
def topic_update(
    name: str,
    queues: int | None,
    fifo: bool | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Change topic NAME's queue count or FIFO flag; what is not given stays as it is."""
    if queues is None and fifo is None:
        raise click.UsageError("give --queues, --fifo or --no-fifo")

    async def update() -> str:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            info = await connection.update_topic(name, queues, fifo)
        return (
            f"topic updated: {info.name} ({info.queue_count} queues{', fifo' if info.fifo else ''})"
        )

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
        async with leader_admin(endpoints, root, cluster_id) as connection:
            await connection.delete_topic(name)

    trio.run(delete)
    click.echo(f"topic deleted: {name}")


@topic.command("list")
@cluster_options
@json_option("a list of topic objects")
@one_line_errors
def topic_list(endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every topic with its queue count and messages per queue (as the leader knows them)."""

    async def list_topics() -> list[dict[str, object]]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
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
@json_option("the topic as an object")
@one_line_errors
def topic_describe(
    name: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Topic NAME: its queues and the offset the next message in each will get."""
    from dledger_mq.errors import TopicNotFound

    async def describe() -> dict[str, object]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            topics = {t.name: t for t in await connection.list_topics()}
        if name not in topics:
            raise TopicNotFound(name)
        info = topics[name]
        return {
            "name": info.name,
            "queues": info.queue_count,
            "fifo": info.fifo,
            "next_offsets": list(info.max_offsets),
        }

    described = trio.run(describe)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    fifo = " (fifo)" if described["fifo"] else ""
    click.echo(f"topic {described['name']}: {described['queues']} queues{fifo}")
    offsets = described["next_offsets"]
    assert isinstance(offsets, list)
    for queue_id, offset in enumerate(offsets):
        click.echo(f"  queue {queue_id}: next offset {offset}")


@main.group()
def group() -> None:
    """Consumer groups: list them, their lag per queue, and reset their offsets."""


@group.command("list")
@cluster_options
@json_option("a list of group objects")
@one_line_errors
def group_list(endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every consumer group that committed offsets, with its topics."""

    async def run() -> list[dict[str, object]]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            groups = await connection.list_groups()
        return [{"group": info.group, "topics": list(info.topics)} for info in groups]

    groups = trio.run(run)
    if as_json:
        click.echo(json.dumps(groups, indent=2))
        return
    for item in groups:
        topics = item["topics"]
        assert isinstance(topics, list)
        click.echo(f"{item['group']}  topics={','.join(topics)}")


@group.command("describe")
@click.argument("name")
@click.option("--topic", required=True)
@cluster_options
@json_option("the group's queues and consumers as an object")
@one_line_errors
def group_describe(
    name: str, topic: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Lag of group NAME in TOPIC, per queue, and its live consumers."""

    async def run() -> dict[str, object]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            reply = await connection.describe_group(name, topic)
        return {
            "group": name,
            "topic": topic,
            "consumers": list(reply.consumers),
            "queues": [
                {
                    "queue_id": q.queue_id,
                    "committed_offset": None if q.committed_offset < 0 else q.committed_offset,
                    "min_offset": q.min_offset,
                    "max_offset": q.max_offset,
                    "lag": q.lag,
                }
                for q in reply.queues
            ],
            "lag": sum(q.lag for q in reply.queues),
        }

    described = trio.run(run)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    consumers = described["consumers"]
    queues = described["queues"]
    assert isinstance(consumers, list) and isinstance(queues, list)
    click.echo(f"group {name}, topic {topic}: {len(consumers)} live consumers")
    for queue in queues:
        committed = "-" if queue["committed_offset"] is None else queue["committed_offset"]
        # Retention deleted messages the group had not consumed: it continues from min.
        skipped = (
            f"  (below min {queue['min_offset']}: retention deleted {skipped_count}, "
            f"consumption continues from {queue['min_offset']})"
            if (skipped_count := queue["min_offset"] - (queue["committed_offset"] or 0)) > 0
            and queue["committed_offset"] is not None
            else ""
        )
        click.echo(
            f"  queue {queue['queue_id']}: committed {committed}  min {queue['min_offset']}"
            f"  max {queue['max_offset']}  lag {queue['lag']}{skipped}"
        )
    click.echo(f"  total lag {described['lag']}")


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
        async with leader_admin(endpoints, root, cluster_id) as connection:
            queues = await connection.reset_offset(
                name, topic, -1 if to_offset is None else to_offset, to_time_ms
            )
        return "\n".join(f"queue {q.queue_id}: offset {q.committed_offset}" for q in queues)

    click.echo(trio.run(run))


def _parse_time_ms(text: str) -> int:
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
