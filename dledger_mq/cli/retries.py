"""`dledger-mq group update` (a consumer group's retry policy) and `dledger-mq group dlq ...`
(its dead letters: list them, send them back to their topic). Through the leader of every
broker group that ``--endpoints`` (default: the local cluster) names: each group keeps its own
policy and its own dead-letter topic."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import (
    cluster_options,
    group_admins,
    json_option,
    one_line_errors,
    parse_duration_ms,
)
from dledger_mq.cli.topics import delays_text, group
from dledger_mq.clients.dead_letters import dead_letter_object, dead_letters, redrive
from dledger_mq.errors import BadRequest


def _policy_options(function: Callable[..., None]) -> Callable[..., None]:
    function = click.option(
        "--retry-delays",
        default=None,
        metavar="D1,D2,...",
        help="The wait before each retry (10s,30s,1m,...); a list shorter than the retries "
        "repeats its last delay.",
    )(function)
    return click.option(
        "--max-attempts",
        type=click.IntRange(min=1, max=1000),
        default=None,
        help="Deliveries of a failing message in all (the first one included) before it goes "
        "to the dead-letter topic %DLQ%NAME.",
    )(function)


def _parse_delays(retry_delays: str | None) -> list[int] | None:
    if retry_delays is None:
        return None
    delays = [
        parse_duration_ms(item, "--retry-delays")
        for item in retry_delays.split(",")
        if item.strip()
    ]
    if not delays:
        raise click.BadParameter("needs at least one delay", param_hint="--retry-delays")
    return delays


def _set_policy(
    name: str,
    max_attempts: int | None,
    delays: list[int] | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
    create: bool,
) -> None:
    """Set group ``name``'s policy in every broker group (``create``: refused if one of them
    knows the group already); print what each holds now."""

    async def run() -> list[dict[str, object]]:
        results = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            currents = {group: await admin.group_policy(name) for group, admin in admins.items()}
            known = [group for group, current in currents.items() if current.exists]
            if create and known:
                raise BadRequest(
                    f"group {name!r} exists in {', '.join(known)}: change it with group update"
                )
            for broker_group, connection in admins.items():
                current = currents[broker_group]
                reply = await connection.update_group(
                    name,
                    current.max_attempts if max_attempts is None else max_attempts,
                    current.retry_delays_ms if delays is None else delays,
                )
                results.append(
                    {
                        "broker_group": broker_group,
                        "max_attempts": reply.max_attempts,
                        "retry_delays_ms": list(reply.retry_delays_ms),
                    }
                )
        return results

    results = trio.run(run)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for result in results:
        delays_ms = result["retry_delays_ms"]
        assert isinstance(delays_ms, list)
        click.echo(
            f"{result['broker_group']}: group {name}: max attempts {result['max_attempts']}, "
            f"retry delays {delays_text(tuple(delays_ms))}"
        )


@group.command("update")
@click.argument("name")
@_policy_options
@cluster_options
@json_option("the policy as each broker group holds it")
@one_line_errors
def group_update(
    name: str,
    max_attempts: int | None,
    retry_delays: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Set consumer group NAME's retry policy, in every broker group (it may have no consumer
    yet). What is not given stays as it is (default: 17 attempts, RocketMQ's 16 delays from
    10 s to 2 h)."""
    if max_attempts is None and retry_delays is None:
        raise click.UsageError("give --max-attempts, --retry-delays or both")
    delays = _parse_delays(retry_delays)
    _set_policy(name, max_attempts, delays, endpoints, root, cluster_id, as_json, create=False)


@group.command("create")
@click.argument("name")
@_policy_options
@cluster_options
@json_option("the policy as each broker group holds it")
@one_line_errors
def group_create(
    name: str,
    max_attempts: int | None,
    retry_delays: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Create consumer group NAME in every broker group, with its retry policy (what is not
    given: 17 attempts, RocketMQ's 16 delays from 10 s to 2 h). Refused if a broker group
    knows NAME already. (A consumer also makes its group by committing: this is for setting
    the policy, and permissions, before the first one starts.)"""
    delays = _parse_delays(retry_delays)
    _set_policy(name, max_attempts, delays, endpoints, root, cluster_id, as_json, create=True)


@group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cluster_options
@one_line_errors
def group_delete(name: str, yes: bool, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Delete consumer group NAME in every broker group: its committed offsets, its retry
    policy and its receives in flight. Refused while it has live consumers. Its retry and
    dead-letter topics stay (topic delete removes them)."""
    if not yes:
        click.confirm(f"delete group {name!r} and its offsets in every topic?", abort=True)

    async def delete() -> list[str]:
        existed = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            for broker_group, admin in admins.items():
                if await admin.delete_group(name):
                    existed.append(broker_group)
        return existed

    existed = trio.run(delete)
    if not existed:
        click.echo(f"group {name}: no broker group knew it")
        return
    click.echo(f"group deleted: {name} (in {', '.join(existed)})")


@group.group("dlq")
def dlq() -> None:
    """A consumer group's dead letters (%DLQ%GROUP): messages whose last attempt failed."""


@dlq.command("list")
@click.argument("name")
@cluster_options
@json_option("one object per dead letter")
@one_line_errors
def dlq_list(name: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """The dead letters of consumer group NAME: id, original topic, attempts, last error."""

    async def run() -> list[dict[str, object]]:
        letters = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            for broker_group, connection in admins.items():
                found, redriven = await dead_letters(connection, name)
                letters += [dead_letter_object(broker_group, m, redriven) for m in found]
        return letters

    letters = trio.run(run)
    if as_json:
        click.echo(json.dumps(letters, indent=2))
        return
    if not letters:
        click.echo(f"group {name}: no dead letters")
        return
    for letter in letters:
        redriven = "  (redriven)" if letter["redriven"] else ""
        click.echo(
            f"{letter['msg_id']}  topic {letter['topic']}  attempts {letter['attempts']}  "
            f"error {letter['last_error'] or '-'}{redriven}"
        )
        click.echo(f"    {str(letter['body'])[:200]}")


@dlq.command("redrive")
@click.argument("name")
@click.option(
    "--id",
    "msg_id",
    default=None,
    help="Only this message (its id as consumers saw it); by default every dead letter not "
    "redriven yet.",
)
@cluster_options
@json_option("one object per message sent back")
@one_line_errors
def dlq_redrive(
    name: str,
    msg_id: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Send consumer group NAME's dead letters back to their original topic (as new messages,
    attempt 1, with the property DLQ_REDRIVEN_FROM naming the original id). Without --id every
    one not redriven before goes, and is marked redriven; an interrupted redrive may send a
    few twice when run again."""

    async def run() -> list[dict[str, object]]:
        async with group_admins(endpoints, root, cluster_id) as admins:
            return await redrive(admins, name, msg_id)

    sent = trio.run(run)
    if as_json:
        click.echo(json.dumps(sent, indent=2))
        return
    for item in sent:
        click.echo(f"{item['msg_id']} -> {item['topic']} as {item['new_msg_id']}")
    click.echo(f"group {name}: {len(sent)} dead letters sent back")
