"""`dledger-mq send` and `dledger-mq consume`: the SDK from the shell, through naming."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import (
    json_option,
    main,
    naming_addresses,
    naming_option,
    one_line_errors,
    report_stalls,
)


def _stderr(text: str) -> None:
    click.echo(text, err=True)


def _properties(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--property")
        pairs[name] = value
    return pairs


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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to keep trying (no route, no leader) before giving up.",
)
@naming_option
@json_option("the receipt")
@one_line_errors
def send(
    topic: str,
    body: str,
    tags: str | None,
    keys: tuple[str, ...],
    properties: tuple[str, ...],
    sharding_key: str | None,
    timeout: float,
    naming: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Send one message with BODY (UTF-8) to TOPIC; prints its receipt.

    While it cannot reach a leader it keeps trying, says why on stderr after 2 s, and gives up
    after --timeout.
    """
    from dledger_mq.clients import Producer
    from dledger_mq.errors import Unavailable

    pairs = _properties(properties)
    addresses = naming_addresses(naming, root)

    async def run() -> dict[str, object]:
        async with Producer(naming=addresses, cluster_id=cluster_id) as producer:
            stall = None
            with trio.move_on_after(timeout) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(report_stalls, producer, _stderr)
                    receipt = await producer.send(
                        topic,
                        body.encode(),
                        tags=tags,
                        keys=keys,
                        properties=pairs,
                        sharding_key=sharding_key,
                    )
                    nursery.cancel_scope.cancel()
            stall = producer.stalls.current
        if scope.cancelled_caught:
            why = f": {stall.describe()}" if stall is not None else ""
            raise Unavailable(f"gave up after {timeout:g} s{why}")
        return {
            "msg_id": receipt.msg_id,
            "topic": receipt.topic,
            "group": receipt.group,
            "queue_id": receipt.queue_id,
            "offset": receipt.offset,
            "duplicate": receipt.duplicate,
        }

    receipt = trio.run(run)
    if as_json:
        click.echo(json.dumps(receipt))
    else:
        click.echo(f"{receipt['msg_id']} queue={receipt['queue_id']} offset={receipt['offset']}")


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
@json_option("one object per message")
@naming_option
@one_line_errors
def consume(
    topic: str,
    group: str,
    tags: str,
    count: int | None,
    as_json: bool,
    naming: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Print (and acknowledge) the messages of TOPIC for consumer group GROUP.

    It waits for messages as long as it runs; when it cannot reach a leader it says why on
    stderr (after 2 s) and keeps trying.
    """
    from dledger_mq.clients import Consumer

    addresses = naming_addresses(naming, root)

    async def run() -> None:
        seen = 0
        async with (
            Consumer(
                naming=addresses, group=group, topic=topic, tags=tags, cluster_id=cluster_id
            ) as consumer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(report_stalls, consumer, _stderr)
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
                    nursery.cancel_scope.cancel()
                    return

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
