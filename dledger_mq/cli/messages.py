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
    parse_duration_ms,
    parse_time_ms,
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
    "--delay",
    default=None,
    metavar="DURATION",
    help="Deliver it this long from now (500ms, 30s, 1m, 2h, 3d; at most the broker's "
    "max_delay_ms, 3 days by default).",
)
@click.option(
    "--deliver-at",
    default=None,
    metavar="TIME",
    help="Deliver it at this time: ISO 8601 (no zone: UTC) or milliseconds since the epoch.",
)
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
    delay: str | None,
    deliver_at: str | None,
    timeout: float,
    naming: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Send one message with BODY (UTF-8) to TOPIC; prints its receipt.

    While it cannot reach a leader it keeps trying, says why on stderr after 2 s, and gives up
    after --timeout. A delayed message is stored at once and delivered at its time: its receipt
    says when, with offset -1 (it has none until then).
    """
    import datetime

    from dledger_mq.clients import Producer
    from dledger_mq.errors import Unavailable

    pairs = _properties(properties)
    if delay is not None and deliver_at is not None:
        raise click.UsageError("give --delay or --deliver-at, not both")
    when: datetime.datetime | None = None
    if delay is not None:
        delay_ms = parse_duration_ms(delay, "--delay")
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(milliseconds=delay_ms)
    elif deliver_at is not None:
        at_ms = parse_time_ms(deliver_at, "--deliver-at")
        when = datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC)
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
                        deliver_at=when,
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
            "deliver_at": None if when is None else when.isoformat(timespec="milliseconds"),
        }

    receipt = trio.run(run)
    if as_json:
        click.echo(json.dumps(receipt))
    elif receipt["deliver_at"] is not None:
        click.echo(
            f"{receipt['msg_id']} queue={receipt['queue_id']} delivered at {receipt['deliver_at']}"
        )
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
@click.option(
    "--start",
    default="earliest",
    show_default=True,
    metavar="earliest|latest|TIME",
    help="Where a group that never consumed TOPIC begins: its first message kept, what is "
    "sent from now on, or the first message stored at or after TIME (ISO 8601 or ms).",
)
@click.option(
    "--fail",
    is_flag=True,
    help="Nack every message instead of acknowledging it (to watch retries and dead letters).",
)
@json_option("one object per message")
@naming_option
@one_line_errors
def consume(
    topic: str,
    group: str,
    tags: str,
    count: int | None,
    start: str,
    fail: bool,
    as_json: bool,
    naming: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    """Print (and acknowledge) the messages of TOPIC for consumer group GROUP.

    It waits for messages as long as it runs; when it cannot reach a leader it says why on
    stderr (after 2 s) and keeps trying.
    """
    import datetime

    from dledger_mq.clients import Consumer
    from dledger_mq.clients.consumer import StartPosition

    addresses = naming_addresses(naming, root)
    position: StartPosition
    if start in ("earliest", "latest"):
        position = "earliest" if start == "earliest" else "latest"
    else:
        start_ms = parse_time_ms(start, "--start")
        position = datetime.datetime.fromtimestamp(start_ms / 1000, datetime.UTC)

    async def run() -> None:
        seen = 0
        async with (
            Consumer(
                naming=addresses,
                group=group,
                topic=topic,
                tags=tags,
                start=position,
                cluster_id=cluster_id,
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
                                "topic": message.topic,
                                "attempt": message.attempt,
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
                    again = f" (attempt {message.attempt})" if message.attempt > 1 else ""
                    click.echo(
                        f"{message.msg_id} [{message.tags or ''}] "
                        f"{message.body.decode(errors='replace')}{again}"
                    )
                if fail:
                    await message.nack("consume --fail")
                else:
                    await message.ack()
                seen += 1
                if count is not None and seen >= count:
                    nursery.cancel_scope.cancel()
                    return

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
