"""The read-only commands at mqadmin's level (issue 18): `topic route` (what naming says),
`topic status` (offsets and last store time per queue), `group progress` (a group's lag over
every topic it consumes: consumerProgress), `cluster list` (every broker group and replica
naming knows) and `node status` (what a node did and holds). Tables on a terminal
(``tables.py``), ``--json`` for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click
import trio

from dledger_mq.cli.cluster import cluster
from dledger_mq.cli.main import (
    cluster_endpoints,
    cluster_options,
    group_admins,
    json_option,
    naming_addresses,
    naming_option,
    one_line_errors,
    parse_addresses,
)
from dledger_mq.cli.servers import node
from dledger_mq.cli.tables import show_table, time_text
from dledger_mq.cli.topics import group, group_lag, topic
from dledger_mq.clients.admin import connect_admin, topic_parts
from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError, TopicNotFound, Unavailable
from dledger_mq.wire.admin import NodeStatsReply, StatusReply
from dledger_mq.wire.naming import GroupRoute, TopicRoute


async def _ask_naming(
    addresses: Sequence[str], cluster_id: str, topic_name: str
) -> tuple[tuple[TopicRoute, ...], tuple[GroupRoute, ...]]:
    """Routes and live groups from the first naming node that answers."""
    problems = []
    for address in addresses:
        try:
            async with connect_naming(address, cluster_id) as naming:
                return await naming.routes_and_groups(topic_name)
        except (DledgerError, OSError) as error:
            problems.append(f"{address}: {error}")
    raise Unavailable("no naming node answered (" + "; ".join(problems) + ")")


@topic.command("route")
@click.argument("name")
@naming_option
@json_option("each broker group's route")
@one_line_errors
def topic_route(name: str, naming: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Where topic NAME lives, as naming tells clients: each broker group's queues, leader and
    live replicas."""
    addresses = naming_addresses(naming, root)
    routes, _ = trio.run(_ask_naming, addresses, cluster_id, name)
    if not routes:
        raise TopicNotFound(name)
    found = [
        {
            "broker_group": route.group,
            "queues": route.queues,
            "leader": route.leader_id,
            "leader_address": route.leader_address,
            "term": route.term,
            "replicas": list(route.replicas),
        }
        for route in sorted(routes, key=lambda route: route.group)
    ]
    if as_json:
        click.echo(json.dumps({"topic": name, "routes": found}, indent=2))
        return
    show_table(
        f"topic {name}: {sum(int(str(r['queues'])) for r in found)} queues",
        ["broker group", "queues", "leader", "leader address", "term", "replicas"],
        [
            [
                r["broker_group"],
                r["queues"],
                r["leader"],
                r["leader_address"],
                r["term"],
                ",".join(r["replicas"]),  # type: ignore[arg-type]
            ]
            for r in found
        ],
    )


@topic.command("status")
@click.argument("name")
@cluster_options
@json_option("each queue's offsets and last store time")
@one_line_errors
def topic_status(
    name: str, endpoints: str | None, root: Path, cluster_id: str, as_json: bool
) -> None:
    """Topic NAME per queue of every broker group: min offset (the first message still held),
    max offset (the next one's), and when its last message was stored."""

    async def run() -> list[dict[str, object]]:
        queues: list[dict[str, object]] = []
        async with group_admins(endpoints, root, cluster_id) as admins:
            parts = await topic_parts(admins, name)
            if not parts:
                raise TopicNotFound(name)
            for broker_group in parts:
                status = await admins[broker_group].topic_status(name)
                queues.extend(
                    {
                        "broker_group": broker_group,
                        "queue_id": q.queue_id,
                        "min_offset": q.min_offset,
                        "max_offset": q.max_offset,
                        "messages": q.max_offset - q.min_offset,
                        "last_store_time": time_text(q.last_store_time_ms),
                        "last_store_time_ms": q.last_store_time_ms or None,
                    }
                    for q in status.queues
                )
        return queues

    queues = trio.run(run)
    if as_json:
        click.echo(json.dumps({"topic": name, "queues": queues}, indent=2))
        return
    show_table(
        f"topic {name}",
        ["broker group", "queue", "min offset", "max offset", "messages", "last store time"],
        [
            [
                q["broker_group"],
                q["queue_id"],
                q["min_offset"],
                q["max_offset"],
                q["messages"],
                q["last_store_time"],
            ]
            for q in queues
        ],
    )


@group.command("progress")
@click.argument("name")
@click.option("--topic", "topic_name", default=None, help="Only this topic.")
@cluster_options
@json_option("every queue's progress")
@one_line_errors
def group_progress(
    name: str,
    topic_name: str | None,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """Consumer group NAME's progress (mqadmin's consumerProgress): per queue of every topic it
    committed in, the broker's offset, the group's and the lag, and its live consumers."""

    async def run() -> dict[str, object]:
        rows: list[dict[str, object]] = []
        consumers: set[str] = set()
        async with group_admins(endpoints, root, cluster_id) as admins:
            topics: set[str] = set()
            for connection in admins.values():
                for info in await connection.list_groups():
                    if info.group == name:
                        topics.update(info.topics)
            if topic_name is not None:
                topics = {topic_name}
            if not topics:
                raise click.UsageError(f"group {name!r} committed no offsets (group list)")
            for each in sorted(topics):
                live, queues = await group_lag(admins, name, each)
                consumers.update(live)
                rows.extend({"topic": each, **queue} for queue in queues)
        return {
            "group": name,
            "consumers": sorted(consumers),
            "queues": rows,
            "lag": sum(int(str(row["lag"])) for row in rows),
        }

    progress = trio.run(run)
    if as_json:
        click.echo(json.dumps(progress, indent=2))
        return
    queues = progress["queues"]
    consumers = progress["consumers"]
    assert isinstance(queues, list) and isinstance(consumers, list)
    show_table(
        f"group {name}: {len(consumers)} live consumers, total lag {progress['lag']}",
        ["topic", "broker group", "queue", "broker offset", "consumer offset", "lag"],
        [
            [
                q["topic"],
                q["broker_group"],
                q["queue_id"],
                q["max_offset"],
                q["committed_offset"],
                q["lag"],
            ]
            for q in queues
        ],
    )


@cluster.command("list")
@naming_option
@json_option("every broker group and replica")
@one_line_errors
def cluster_list(naming: str | None, root: Path, cluster_id: str, as_json: bool) -> None:
    """Every broker group naming knows, with each live replica's role, term and progress
    (mqadmin's clusterList)."""
    from dledger_mq.node.cluster_status import fetch_all

    addresses = naming_addresses(naming, root)

    async def run() -> list[dict[str, object]]:
        _, groups = await _ask_naming(addresses, cluster_id, "")
        found: list[dict[str, object]] = []
        for route in sorted(groups, key=lambda route: route.group):
            endpoints = [(address, address) for address in route.replicas]
            for _, address, status in await fetch_all(endpoints, cluster_id):
                found.append(_replica_row(route.group, address, status))
        return found

    replicas = trio.run(run)
    if as_json:
        click.echo(json.dumps(replicas, indent=2))
        return
    groups = len({r["broker_group"] for r in replicas})
    show_table(
        f"{groups} broker group{'' if groups == 1 else 's'}",
        ["broker group", "node", "address", "role", "term", "commit", "applied"],
        [
            [
                r["broker_group"],
                r["node_id"],
                r["address"],
                r["role"],
                r.get("term"),
                r.get("commit_index"),
                r.get("applied_index"),
            ]
            for r in replicas
        ],
    )


def _replica_row(group_name: str, address: str, status: StatusReply | None) -> dict[str, object]:
    if status is None:
        return {"broker_group": group_name, "address": address, "node_id": None, "role": "down"}
    return {
        "broker_group": group_name,
        "node_id": status.node_id,
        "address": address,
        "role": status.role,
        "term": status.term,
        "leader": status.leader,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
    }


@node.command("status")
@click.argument("addresses", nargs=-1, metavar="[HOST:PORT]...")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, max=60),
    default=1.0,
    show_default=True,
    help="Seconds between two readings, for the rates (0: totals only).",
)
@cluster_options
@json_option("each node's figures")
@one_line_errors
def node_status(
    addresses: tuple[str, ...],
    interval: float,
    endpoints: str | None,
    root: Path,
    cluster_id: str,
    as_json: bool,
) -> None:
    """What nodes did and hold: role, messages in and out (and per second over --interval),
    log and disk, fsync latency, newest snapshot. ADDRESS: a node's client address (default:
    every node --endpoints names, else the local cluster's)."""
    chosen = (
        parse_addresses(",".join(addresses), "ADDRESS")
        if addresses
        else [address for _, address in cluster_endpoints(endpoints, root)]
    )

    async def reading() -> dict[str, NodeStatsReply | str]:
        found: dict[str, NodeStatsReply | str] = {}

        async def one(address: str) -> None:
            try:
                async with connect_admin(address, cluster_id) as admin:
                    found[address] = await admin.node_stats()
            except (DledgerError, OSError) as error:
                found[address] = str(error) or type(error).__name__

        async with trio.open_nursery() as nursery:
            for address in chosen:
                nursery.start_soon(one, address)
        return found

    async def run() -> list[dict[str, object]]:
        first = await reading()
        second = first
        if interval:
            await trio.sleep(interval)
            second = await reading()
        return [
            _node_row(address, first.get(address), second[address], interval) for address in chosen
        ]

    rows = trio.run(run)
    if all("error" in row for row in rows):
        raise Unavailable(
            "no node answered: " + "; ".join(f"{row['address']}: {row['error']}" for row in rows)
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    show_table(
        "nodes",
        [
            "node",
            "group",
            "role",
            "term",
            "applied",
            "in msg/s",
            "out msg/s",
            "messages in",
            "log MiB",
            "disk free GiB",
            "fsync p50/p99 ms",
            "snapshot",
        ],
        [
            [
                r.get("node_id") or r["address"],
                r.get("group"),
                r.get("role", f"unreachable: {r.get('error')}"),
                r.get("term"),
                r.get("applied_index"),
                r.get("messages_in_per_second"),
                r.get("messages_out_per_second"),
                r.get("messages_in"),
                r.get("log_mib"),
                r.get("disk_free_gib"),
                r.get("fsync_ms"),
                r.get("snapshot_index"),
            ]
            for r in rows
        ],
    )


def _node_row(
    address: str,
    before: NodeStatsReply | str | None,
    after: NodeStatsReply | str,
    interval: float,
) -> dict[str, object]:
    if isinstance(after, str):
        return {"address": address, "error": after}
    row: dict[str, object] = {
        "address": address,
        "node_id": after.node_id,
        "group": after.group,
        "role": after.role,
        "term": after.term,
        "commit_index": after.commit_index,
        "applied_index": after.applied_index,
        "messages_in": after.messages_in,
        "bytes_in": after.bytes_in,
        "messages_out": after.messages_out,
        "bytes_out": after.bytes_out,
        "log_bytes": after.log_bytes,
        "log_mib": round(after.log_bytes / 2**20, 1),
        "log_first_index": after.log_first_index,
        "disk_used_bytes": after.disk_used_bytes,
        "disk_free_bytes": after.disk_free_bytes,
        "disk_free_gib": round(after.disk_free_bytes / 2**30, 1),
        "snapshot_index": after.snapshot_index,
        "snapshot_age_entries": after.applied_index - after.snapshot_index,
        "fsync_count": after.fsync_count,
        "fsync_p50_us": after.fsync_p50_us,
        "fsync_p99_us": after.fsync_p99_us,
        "fsync_ms": (
            f"{after.fsync_p50_us / 1000:g}/{after.fsync_p99_us / 1000:g}"
            if after.fsync_count
            else None
        ),
        "metrics_enabled": after.metrics_enabled,
    }
    if interval and isinstance(before, NodeStatsReply):
        row["messages_in_per_second"] = round(
            (after.messages_in - before.messages_in) / interval, 1
        )
        row["messages_out_per_second"] = (
            round((after.messages_out - before.messages_out) / interval, 1)
            if after.metrics_enabled
            else None
        )
    return row
