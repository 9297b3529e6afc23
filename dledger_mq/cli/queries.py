"""`dledger-mq message get|find|list`: look messages up by id, by key, or by queue and store
time, through the leader of each broker group that ``--endpoints`` (default: the local cluster)
names (docs/operations.md, "Finding a message")."""

from __future__ import annotations

import datetime
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
from dledger_mq.cli.topics import GROUPS_HELP
from dledger_mq.clients.admin import resolve_groups, topic_parts
from dledger_mq.errors import TopicNotFound, UsageError
from dledger_mq.wire.broker import MAX_QUERY_MESSAGES, MessageView

LIMIT_OPTION = click.option(
    "--limit",
    type=click.IntRange(1, MAX_QUERY_MESSAGES),
    default=32,
    show_default=True,
    help="The most messages to show.",
)


def _time_text(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_object(view: MessageView) -> dict[str, object]:
    """One message as ``--json`` prints it."""
    return {
        "message_id": view.message_id,
        "group": view.group,
        "topic": view.topic,
        "queue_id": view.queue_id,
        "offset": view.offset,
        "keys": list(view.keys),
        "tags": view.tags,
        "properties": view.properties,
        "body": view.body.decode(errors="replace"),
        "body_bytes": len(view.body),
        "born_time_ms": view.born_time_ms,
        "store_time_ms": view.store_time_ms,
        "attempt": view.attempt,
    }


def _one_line(view: MessageView) -> str:
    offset = "-" if view.offset < 0 else str(view.offset)
    keys = f" keys={','.join(view.keys)}" if view.keys else ""
    again = f" (attempt {view.attempt})" if view.attempt > 1 else ""
    # One line per message, as `group dlq list` shows bodies: `message get` shows it whole.
    body = view.body.decode(errors="replace")[:200]
    return (
        f"{view.message_id}  {_time_text(view.store_time_ms)}  queue={view.queue_id}"
        f" offset={offset}{keys} [{view.tags or ''}] {body}{again}"
    )


@main.group()
def message() -> None:
    """Find stored messages: by id, by key, or by queue and store time."""


@message.command("get")
@click.argument("message_id")
@cluster_options
@json_option("the message as an object")
@one_line_errors
def message_get(
    message_id: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """The message MESSAGE_ID names (group:raft_index:slot, as `send` prints it), from its
    group's leader."""
    from dledger_mq.broker.message_id import parse_message_id

    group = parse_message_id(message_id).group

    async def run() -> MessageView:
        async with group_admins(endpoints, root, cluster_id, [group]) as admins:
            return await admins[group].get_message(message_id)

    view = trio.run(run)
    if as_json:
        click.echo(json.dumps(message_object(view), indent=2))
        return
    where = f"queue {view.queue_id}, offset {view.offset}"
    if view.offset < 0:
        where = f"queue {view.queue_id}, no offset: delayed or retried (delivered as a copy)"
    click.echo(f"message {view.message_id}")
    click.echo(f"  topic       {view.topic} ({where})")
    click.echo(f"  keys        {', '.join(view.keys) or '-'}")
    click.echo(f"  tags        {view.tags or '-'}")
    click.echo(f"  stored      {_time_text(view.store_time_ms)}")
    if view.born_time_ms:
        click.echo(f"  born        {_time_text(view.born_time_ms)}")
    click.echo(f"  attempt     {view.attempt}")
    for name, value in sorted(view.properties.items()):
        click.echo(f"  property    {name}={value}")
    click.echo(f"  body        {view.body.decode(errors='replace')} ({len(view.body)} bytes)")


@message.command("find")
@click.option("--topic", required=True, help="The topic the messages were sent to.")
@click.option("--key", required=True, help="A key the messages were sent with (send --key).")
@LIMIT_OPTION
@cluster_options
@json_option("an object: the messages (oldest first) and whether more may match")
@one_line_errors
def message_find(
    topic: str,
    key: str,
    limit: int,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """The newest messages of TOPIC sent with KEY, over every broker group that holds TOPIC,
    oldest first."""

    async def run() -> tuple[list[MessageView], bool]:
        found: list[MessageView] = []
        truncated = False
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, topic)
            if not parts:
                raise TopicNotFound(topic)
            for group in parts:
                reply = await admins[group].find_messages_reply(topic, key, limit)
                found.extend(reply.messages)
                truncated = truncated or reply.truncated
        found.sort(key=lambda view: (view.store_time_ms, view.group, view.queue_id, view.offset))
        return found[-limit:], truncated or len(found) > limit

    found, truncated = trio.run(run)
    if as_json:
        objects = [message_object(view) for view in found]
        click.echo(json.dumps({"messages": objects, "truncated": truncated}, indent=2))
        return
    for view in found:
        click.echo(_one_line(view))
    more = " (more may match: raise --limit)" if truncated else ""
    click.echo(f"{len(found)} messages with key {key!r} in {topic}{more}", err=True)


@message.command("list")
@click.option("--topic", required=True)
@click.option("--queue", "queue_id", type=click.IntRange(min=0), required=True)
@click.option(
    "--group",
    "group_name",
    default=None,
    metavar="GROUP",
    help="The broker group of the queue, when the topic is in more than one. " + GROUPS_HELP,
)
@click.option(
    "--from-time",
    required=True,
    metavar="TIME",
    help="The first message stored at or after this time: ISO 8601 (no zone: UTC) or "
    "milliseconds since the epoch.",
)
@click.option(
    "--to-time",
    default=None,
    metavar="TIME",
    help="Only messages stored before this time (default: up to the newest).",
)
@LIMIT_OPTION
@cluster_options
@json_option("an object: the messages, in offset order")
@one_line_errors
def message_list(
    topic: str,
    queue_id: int,
    group_name: str | None,
    from_time: str,
    to_time: str | None,
    limit: int,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Messages of one queue of TOPIC, in offset order, from the first stored at or after
    --from-time (a binary search on store times)."""
    from_time_ms = parse_time_ms(from_time, "--from-time")
    to_time_ms = None if to_time is None else parse_time_ms(to_time, "--to-time")
    if to_time_ms is not None and to_time_ms <= from_time_ms:
        raise click.BadParameter("must be after --from-time", param_hint="--to-time")

    async def run() -> list[MessageView]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, topic)
            if not parts:
                raise TopicNotFound(topic)
            if group_name is not None:
                [group] = resolve_groups(group_name, list(admins))
                if group not in parts:
                    raise UsageError(f"topic {topic!r} has no queues in group {group}")
            elif len(parts) > 1:
                raise UsageError(
                    f"topic {topic!r} is in groups {', '.join(parts)}: name one with --group"
                )
            else:
                [group] = parts
            return list(
                await admins[group].list_messages(topic, queue_id, from_time_ms, to_time_ms, limit)
            )

    found = trio.run(run)
    if as_json:
        objects = [message_object(view) for view in found]
        click.echo(json.dumps({"messages": objects}, indent=2))
        return
    for view in found:
        click.echo(_one_line(view))
    click.echo(f"{len(found)} messages in {topic} queue {queue_id}", err=True)
