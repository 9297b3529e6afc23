"""`dledger-mq topic ...` and `dledger-mq group ...`: topics and consumer groups, through the
leader of every broker group that ``--endpoints`` (default: the local cluster) names.

A topic may be spread over several broker groups: its queues are (group, queue id), each group
holding its own queues 0..n-1, and what a command shows or changes is the sum over them."""

from __future__ import annotations

import json
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import (
    cluster_options,
    group_admins,
    json_option,
    main,
    one_line_errors,
    parse_time_ms,
)
from dledger_mq.clients.admin import AdminConnection, resolve_groups, spread_queues, topic_parts
from dledger_mq.errors import TopicNotFound, UsageError

GROUPS_HELP = (
    "Broker groups, comma-separated (`broker-b` or just `b`; default: every group with a leader)."
)


def _shown_groups(parts: dict[str, int]) -> str:
    return ", ".join(f"{group} {count}" for group, count in parts.items())


@main.group()
def topic() -> None:
    """Create, change, list, describe and delete topics."""


@topic.command("create")
@click.argument("name")
@click.option(
    "--queues",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Queues in all, spread evenly over the groups.",
)
@click.option("--fifo", is_flag=True, help="Deliver each queue one message at a time, in order.")
@click.option("--groups", "group_names", default=None, metavar="GROUP,...", help=GROUPS_HELP)
@cluster_options
@one_line_errors
def topic_create(
    name: str,
    queues: int,
    fifo: bool,
    group_names: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Create topic NAME over the broker groups (through each one's leader); creating it
    again alike is not an error."""

    async def create() -> str:
        async with group_admins(endpoints, root, cluster_id) as admins:
            chosen = resolve_groups(group_names, list(admins))
            spread = spread_queues(queues, chosen, explicit=group_names is not None)
            created = False
            for group, count in spread.items():
                reply = await admins[group].create_topic(name, count, fifo)
                spread[group] = reply.topic.queue_count
                created = created or reply.created
        verb = "created" if created else "already exists:"
        total = sum(spread.values())
        where = f": {_shown_groups(spread)}" if len(spread) > 1 else ""
        return f"topic {verb} {name} ({total} queues{where})"

    click.echo(trio.run(create))


@topic.command("update")
@click.argument("name")
@click.option(
    "--queues",
    type=click.IntRange(min=1),
    default=None,
    help="The new queue count in each group that holds it (queues can be added, never "
    "removed); with --add-group, the queues there (default: as in its other groups).",
)
@click.option(
    "--fifo/--no-fifo", default=None, help="Turn FIFO delivery on or off (default: unchanged)."
)
@click.option(
    "--add-group",
    default=None,
    metavar="GROUP",
    help="Extend the topic onto this broker group (a new group takes new queues).",
)
@cluster_options
@one_line_errors
def topic_update(
    name: str,
    queues: int | None,
    fifo: bool | None,
    add_group: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Change topic NAME's queue count or FIFO flag, or extend it onto another broker group;
    what is not given stays as it is."""
    if queues is None and fifo is None and add_group is None:
        raise click.UsageError("give --queues, --fifo, --no-fifo or --add-group")

    async def update() -> str:
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, name)
            if not parts:
                raise TopicNotFound(name)
            if add_group is not None:
                [group] = resolve_groups(add_group, list(admins))
                if group in parts:
                    raise UsageError(f"topic {name!r} is already in group {group}")
                model = max(parts.values(), key=lambda info: info.queue_count)
                count = queues or model.queue_count
                reply = await admins[group].create_topic(
                    name, count, model.fifo if fifo is None else fifo
                )
                parts[group] = reply.topic
                if fifo is not None:
                    for other in parts:
                        if other != group:
                            parts[other] = await admins[other].update_topic(name, None, fifo)
            else:
                for group in parts:
                    parts[group] = await admins[group].update_topic(name, queues, fifo)
        infos = list(parts.values())
        total = sum(info.queue_count for info in infos)
        where = {group: info.queue_count for group, info in parts.items()}
        shown = f": {_shown_groups(where)}" if len(parts) > 1 else ""
        fifo_now = ", fifo" if all(info.fifo for info in infos) else ""
        return f"topic updated: {name} ({total} queues{fifo_now}{shown})"

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
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, name)
            if not parts:
                raise TopicNotFound(name)
            for group in parts:
                await admins[group].delete_topic(name)

    trio.run(delete)
    click.echo(f"topic deleted: {name}")


@topic.command("list")
@cluster_options
@json_option("a list of topic objects")
@one_line_errors
def topic_list(endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every topic with its queue count and messages per queue (as the leader knows them)."""

    async def list_topics() -> list[dict[str, object]]:
        merged: dict[str, dict[str, object]] = {}
        async with group_admins(endpoints, root, cluster_id) as admins:
            for group, connection in admins.items():
                for t in await connection.list_topics():
                    entry = merged.setdefault(
                        t.name,
                        {"name": t.name, "queues": 0, "fifo": t.fifo, "messages": 0, "groups": {}},
                    )
                    entry["queues"] = int(str(entry["queues"])) + t.queue_count
                    entry["messages"] = int(str(entry["messages"])) + sum(t.max_offsets)
                    entry["fifo"] = bool(entry["fifo"]) and t.fifo
                    groups = entry["groups"]
                    assert isinstance(groups, dict)
                    groups[group] = t.queue_count
        return [merged[name] for name in sorted(merged)]

    topics = trio.run(list_topics)
    if as_json:
        click.echo(json.dumps(topics, indent=2))
        return
    for item in topics:
        fifo = " fifo" if item["fifo"] else ""
        groups = item["groups"]
        assert isinstance(groups, dict)
        where = f"  groups={','.join(f'{g}:{n}' for g, n in groups.items())}"
        click.echo(
            f"{item['name']}  queues={item['queues']}  messages={item['messages']}{fifo}{where}"
        )


@topic.command("describe")
@click.argument("name")
@cluster_options
@json_option("the topic as an object")
@one_line_errors
def topic_describe(
    name: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Topic NAME: its queues and the offset the next message in each will get."""

    async def describe() -> dict[str, object]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, name)
        if not parts:
            raise TopicNotFound(name)
        return {
            "name": name,
            "queues": sum(info.queue_count for info in parts.values()),
            "fifo": all(info.fifo for info in parts.values()),
            "groups": {
                group: {"queues": info.queue_count, "next_offsets": list(info.max_offsets)}
                for group, info in parts.items()
            },
        }

    described = trio.run(describe)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    fifo = " (fifo)" if described["fifo"] else ""
    click.echo(f"topic {described['name']}: {described['queues']} queues{fifo}")
    groups = described["groups"]
    assert isinstance(groups, dict)
    for group_name, part in groups.items():
        for queue_id, offset in enumerate(part["next_offsets"]):
            click.echo(f"  {group_name} queue {queue_id}: next offset {offset}")


def delays_text(delays_ms: tuple[int, ...]) -> str:
    """Delays as `group update --retry-delays` takes them: 10s,30s,1m,..."""

    def one(ms: int) -> str:
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms >= size and ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"

    return ",".join(one(ms) for ms in delays_ms)


@main.group()
def group() -> None:
    """Consumer groups: list them, their lag per queue, reset their offsets, set their retry
    policy and handle their dead letters."""


@group.command("list")
@cluster_options
@json_option("a list of group objects")
@one_line_errors
def group_list(endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every consumer group that committed offsets, with its topics."""

    async def run() -> list[dict[str, object]]:
        topics: dict[str, set[str]] = {}
        async with group_admins(endpoints, root, cluster_id) as admins:
            for connection in admins.values():
                for info in await connection.list_groups():
                    topics.setdefault(info.group, set()).update(info.topics)
        return [{"group": name, "topics": sorted(topics[name])} for name in sorted(topics)]

    groups = trio.run(run)
    if as_json:
        click.echo(json.dumps(groups, indent=2))
        return
    for item in groups:
        topics = item["topics"]
        assert isinstance(topics, list)
        click.echo(f"{item['group']}  topics={','.join(topics)}")


async def group_lag(
    admins: dict[str, AdminConnection], name: str, topic: str
) -> tuple[set[str], list[dict[str, object]]]:
    """Group ``name``'s live consumers and, per queue of every broker group holding
    ``topic``, its committed offset, the queue's min and max offsets and the lag."""
    parts = await topic_parts(admins, topic)
    if not parts:
        raise TopicNotFound(topic)
    consumers: set[str] = set()
    queues: list[dict[str, object]] = []
    for broker_group in parts:
        reply = await admins[broker_group].describe_group(name, topic)
        consumers.update(reply.consumers)
        queues.extend(
            {
                "broker_group": broker_group,
                "queue_id": q.queue_id,
                "committed_offset": None if q.committed_offset < 0 else q.committed_offset,
                "min_offset": q.min_offset,
                "max_offset": q.max_offset,
                "lag": q.lag,
            }
            for q in reply.queues
        )
    return consumers, queues


@group.command("describe")
@click.argument("name")
@click.option("--topic", default=None, help="Its lag and consumers in this topic.")
@cluster_options
@json_option("the group's queues, consumers and retry policy as an object")
@one_line_errors
def group_describe(
    name: str,
    topic: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Group NAME's retry policy; with --topic, its lag in TOPIC per queue and its live
    consumers."""

    async def run() -> dict[str, object]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            policy = await next(iter(admins.values())).group_policy(name)
            described: dict[str, object] = {
                "group": name,
                "max_attempts": policy.max_attempts,
                "retry_delays_ms": list(policy.retry_delays_ms),
            }
            if topic is None:
                return described
            consumers, queues = await group_lag(admins, name, topic)
        return {
            **described,
            "topic": topic,
            "consumers": sorted(consumers),
            "queues": queues,
            "lag": sum(int(str(q["lag"])) for q in queues),
        }

    described = trio.run(run)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    delays = described["retry_delays_ms"]
    assert isinstance(delays, list)
    click.echo(
        f"group {name}: max attempts {described['max_attempts']}, "
        f"retry delays {delays_text(tuple(delays))}"
    )
    if topic is None:
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
            f"  {queue['broker_group']} queue {queue['queue_id']}: committed {committed}"
            f"  min {queue['min_offset']}"
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
        to_time_ms = parse_time_ms(to_time, "--to-time")

    async def run() -> str:
        lines = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, topic)
            if not parts:
                raise TopicNotFound(topic)
            for broker_group in parts:
                queues = await admins[broker_group].reset_offset(
                    name, topic, -1 if to_offset is None else to_offset, to_time_ms
                )
                lines += [
                    f"{broker_group} queue {q.queue_id}: offset {q.committed_offset}"
                    for q in queues
                ]
        return "\n".join(lines)

    click.echo(trio.run(run))
