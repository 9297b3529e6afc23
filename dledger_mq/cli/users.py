"""`dledger-mq user ...`: users and their permissions (docs/security.md), through the leader of
every broker group (each group's log holds its own copy of the users: a change goes to all).

A user's secret key is made here and printed once; only its stored key (a hash) goes to the
cluster, so no node and no log holds the secret.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import (
    cluster_options,
    group_admins,
    json_option,
    leader_admin,
    main,
    one_line_errors,
)
from dledger_mq.errors import UsageError

ACTION_CHOICE = click.Choice(["publish", "subscribe", "create", "admin"])
#: Shown in usage lines and errors instead of the list of choices.
ACTION_METAVAR = "ACTION"


def _rule_text(resource: str, action: str) -> str:
    return f"{action} on {resource}"


@main.group()
def user() -> None:
    """Add, list and remove users; grant and revoke what they may do."""


@user.command("add")
@click.argument("name")
@click.option("--admin", "is_admin", is_flag=True, help="Grant admin on cluster: everything.")
@json_option("the new user's keys")
@cluster_options
@one_line_errors
def user_add(
    name: str, is_admin: bool, as_json: bool, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Add user NAME with a new secret key, printed once (keep it: it cannot be shown again).
    The user may do nothing until granted (or is an admin with --admin)."""
    from dledger_mq.wire.admin import RuleInfo
    from dledger_mq.wire.client_auth import new_secret_key

    secret_key = new_secret_key()
    rules = (RuleInfo("cluster", "admin"),) if is_admin else ()

    async def add() -> None:
        from dledger_mq.errors import UserExists

        async with group_admins(endpoints, root, cluster_id) as admins:
            # A group that has the user already (an earlier add that stopped half-way) keeps
            # it; the new secret key is then not the user's there, so say so.
            existing = []
            for group, connection in admins.items():
                try:
                    await connection.add_user(name, secret_key, rules)
                except UserExists:
                    existing.append(group)
            if existing and len(existing) == len(admins):
                raise UserExists(name)
            if existing:
                raise UsageError(
                    f"user {name!r} existed in group {', '.join(existing)} (its old key stays "
                    "there): remove the user and add it again"
                )

    trio.run(add)
    if as_json:
        click.echo(json.dumps({"access_key": name, "secret_key": secret_key}))
        return
    click.echo(f"user added: {name}{' (admin)' if is_admin else ''}")
    click.echo(f"access key: {name}")
    click.echo(f"secret key: {secret_key}")
    click.echo("Keep the secret key: it is shown only now.")


@user.command("remove")
@click.argument("name")
@cluster_options
@one_line_errors
def user_remove(name: str, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Remove user NAME: its connections are refused from their next request."""

    async def remove() -> None:
        from dledger_mq.errors import UserNotFound

        async with group_admins(endpoints, root, cluster_id) as admins:
            missing = 0
            for connection in admins.values():
                try:
                    await connection.remove_user(name)
                except UserNotFound:
                    missing += 1  # an earlier remove that stopped half-way
            if missing == len(admins):
                raise UserNotFound(name)

    trio.run(remove)
    click.echo(f"user removed: {name}")


@user.command("list")
@json_option("users and their rules")
@cluster_options
@one_line_errors
def user_list(as_json: bool, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Every user and what it may do."""

    async def fetch() -> list[dict[str, object]]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            users = await connection.list_users()
        return [
            {
                "access_key": info.access_key,
                "rules": [{"action": r.action, "resource": r.resource} for r in info.rules],
            }
            for info in users
        ]

    users = trio.run(fetch)
    if as_json:
        click.echo(json.dumps(users))
        return
    if not users:
        click.echo("no users: protected mode (clients on the nodes' machines only)")
    for entry in users:
        rules = entry["rules"]
        assert isinstance(rules, list)
        shown = ", ".join(_rule_text(r["resource"], r["action"]) for r in rules) or "nothing"
        click.echo(f"{entry['access_key']}: {shown}")


def _change_rule(
    name: str,
    action: str,
    resource: str,
    grant: bool,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
) -> None:
    from dledger_mq.broker.access import check_rule
    from dledger_mq.wire.admin import RuleInfo

    check_rule(resource, action)  # a typo is caught here, not by the leader
    rule = RuleInfo(resource, action)

    async def change() -> None:
        async with group_admins(endpoints, root, cluster_id) as admins:
            for connection in admins.values():
                if grant:
                    await connection.grant(name, rule)
                else:
                    await connection.revoke(name, rule)

    trio.run(change)
    verb = "granted" if grant else "revoked"
    click.echo(f"{verb}: {_rule_text(resource, action)} for {name}")


@user.command("grant")
@click.argument("name")
@click.argument("action", type=ACTION_CHOICE, metavar=ACTION_METAVAR)
@click.argument("resource")
@cluster_options
@one_line_errors
def user_grant(
    name: str, action: str, resource: str, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Let NAME do ACTION on RESOURCE: cluster, topic:NAME or group:NAME, where NAME may end in
    * (a prefix) or be * (every one). E.g. `user grant billing publish 'topic:orders*'`."""
    _change_rule(name, action, resource, True, endpoints, root, cluster_id)


@user.command("revoke")
@click.argument("name")
@click.argument("action", type=ACTION_CHOICE, metavar=ACTION_METAVAR)
@click.argument("resource")
@cluster_options
@one_line_errors
def user_revoke(
    name: str, action: str, resource: str, endpoints: str | None, root: Path, cluster_id: str
) -> None:
    """Take back a rule `user grant` gave (the same ACTION and RESOURCE)."""
    _change_rule(name, action, resource, False, endpoints, root, cluster_id)


@user.command("whoami")
@json_option("who this command signs in as")
@cluster_options
@one_line_errors
def user_whoami(as_json: bool, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Whom the credentials sign in as, and what that user may do."""

    async def ask() -> tuple[str | None, list[tuple[str, str]], bool]:
        async with leader_admin(endpoints, root, cluster_id) as connection:
            reply = await connection.who_am_i()
        return (
            reply.access_key,
            [(r.resource, r.action) for r in reply.rules],
            reply.anonymous_allowed,
        )

    access_key, rules, anonymous = trio.run(ask)
    if as_json:
        shown = [{"action": action, "resource": resource} for resource, action in rules]
        click.echo(json.dumps({"access_key": access_key, "rules": shown, "anonymous": anonymous}))
        return
    if access_key is None:
        click.echo("anonymous (no users exist: protected mode lets this machine in)")
        return
    shown_rules = ", ".join(_rule_text(resource, action) for resource, action in rules)
    click.echo(f"{access_key}: {shown_rules or 'nothing'}")
