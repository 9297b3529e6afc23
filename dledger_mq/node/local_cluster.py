"""A local three-node cluster for a newcomer's machine: `dledger-mq cluster up`.

Each node is a `dledger-mq node` process in its own process group, with its data, config and log
under ``./.dledger-mq/nN/``. Running it again resumes the same data. The fixed default ports
belong to this command; tests start nodes on ephemeral ports instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import DledgerError, Unavailable
from dledger_mq.node.config import Member, load_config, parse_config, render_config
from dledger_mq.wire.admin import StatusReply

DEFAULT_ROOT = Path(".dledger-mq")
NAMING_PORTS = (9876, 9877, 9878)
CLIENT_PORTS = (9881, 9882, 9883)
PEER_PORTS = (9891, 9892, 9893)
STATUS_TIMEOUT_SECONDS = 1.0


def default_members(host: str = "127.0.0.1") -> dict[str, Member]:
    return {
        f"n{number}": Member(peer=f"{host}:{peer}", client=f"{host}:{client}")
        for number, (peer, client) in enumerate(zip(PEER_PORTS, CLIENT_PORTS, strict=True), 1)
    }


def write_configs(
    root: Path, members: dict[str, Member], flush: str, naming: dict[str, str] | None = None
) -> list[Path]:
    """Write each node's config under ``root`` unless it exists (so data and ports persist).

    ``naming`` maps a node id to the address of the naming node it runs; every node registers
    with all of them.
    """
    naming = naming or {}
    paths = []
    for node_id in members:
        directory = root / node_id
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "node.toml"
        if not path.exists():
            config = parse_config(
                {
                    "node_id": node_id,
                    "members": {k: attrs.asdict(v) for k, v in members.items()},
                    "data_dir": str(directory / "data"),
                    "flush": flush,
                    "naming_listen": naming.get(node_id, ""),
                    "naming": list(naming.values()),
                }
            )
            path.write_text(render_config(config))
        paths.append(path)
    return paths


def local_endpoints(root: Path = DEFAULT_ROOT) -> list[tuple[str, str]]:
    """(node id, client address) of the cluster under ``root``, else the default addresses."""
    configs = sorted(root.glob("*/node.toml")) if root.is_dir() else []
    if configs:
        config = load_config(configs[0], {})
        return [(node_id, member.client) for node_id, member in config.members.items()]
    return [(node_id, member.client) for node_id, member in default_members().items()]


def start_node(
    config_path: Path, log_path: Path, environment: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``dledger-mq node --config``, its output appended to ``log_path``; ``environment``
    replaces this process's environment when given."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "dledger_mq", "node", "--config", str(config_path)],
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=None if environment is None else dict(environment),
            start_new_session=True,  # its own process group: Ctrl-C here reaches only us
        )


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """SIGTERM each (a graceful stop), then SIGKILL whatever is still running."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def fetch_status(address: str, cluster_id: str = "local") -> StatusReply | None:
    """The node's status, or None if it does not answer within a second."""
    with trio.move_on_after(STATUS_TIMEOUT_SECONDS):
        try:
            async with connect_admin(address, cluster_id) as connection:
                return await connection.status()
        except DledgerError:
            return None
    return None


async def fetch_all(
    endpoints: list[tuple[str, str]], cluster_id: str = "local"
) -> list[tuple[str, str, StatusReply | None]]:
    results: dict[str, StatusReply | None] = {}

    async def one(node_id: str, address: str) -> None:
        results[node_id] = await fetch_status(address, cluster_id)

    async with trio.open_nursery() as nursery:
        for node_id, address in endpoints:
            nursery.start_soon(one, node_id, address)
    return [(node_id, address, results[node_id]) for node_id, address in endpoints]


async def find_leader_address(
    endpoints: list[tuple[str, str]], cluster_id: str = "local", patience_seconds: float = 5.0
) -> str:
    """The client address of the leader, waiting a little while an election runs."""
    with trio.move_on_after(patience_seconds):
        while True:
            for _, _, status in await fetch_all(endpoints, cluster_id):
                if status is not None and status.role == "leader":
                    return status.address
            await trio.sleep(0.05)
    raise Unavailable("no leader reachable")


def status_objects(rows: list[tuple[str, str, StatusReply | None]]) -> list[dict[str, object]]:
    objects: list[dict[str, object]] = []
    for node_id, address, status in rows:
        if status is None:
            objects.append(
                {
                    "id": node_id,
                    "address": address,
                    "role": "unreachable",
                    "term": None,
                    "leader": None,
                    "last_index": None,
                    "commit_index": None,
                    "applied_index": None,
                    "followers": [],
                }
            )
            continue
        role = "candidate" if status.role == "pre-candidate" else status.role
        objects.append(
            {
                # The node's own id: endpoints given by address are known only by it.
                "id": status.node_id,
                "address": address,
                "role": role,
                "term": status.term,
                "leader": status.leader,
                "last_index": status.last_index,
                "commit_index": status.commit_index,
                "applied_index": status.applied_index,
                "followers": [
                    {"id": f.node_id, "match_index": f.match_index, "lag": f.lag}
                    for f in status.followers
                ],
            }
        )
    return objects


def render_table(objects: list[dict[str, object]]) -> str:
    header = ("ID", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST", "COMMIT", "APPLIED", "LAG")
    rows: list[tuple[str, ...]] = [header]
    for node in objects:
        followers = node["followers"]
        assert isinstance(followers, list)
        lag = ",".join(f"{f['id']}={f['lag']}" for f in followers) or "-"
        rows.append(
            tuple(
                "-" if node[key] is None else str(node[key])
                for key in (
                    "id",
                    "address",
                    "role",
                    "term",
                    "leader",
                    "last_index",
                    "commit_index",
                    "applied_index",
                )
            )
            + (lag,)
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def summary_line(objects: list[dict[str, object]]) -> str:
    leaders = [node for node in objects if node["role"] == "leader"]
    parts = [f"{node['id']}:{node['role']}" for node in objects]
    if leaders:
        leader = leaders[0]
        head = f"leader {leader['id']} (term {leader['term']}, commit {leader['commit_index']})"
    else:
        head = "no leader yet"
    return f"{head} | " + " ".join(parts)


async def run_cluster_up(root: Path, flush: str, echo: Callable[[str], None]) -> None:
    members = default_members()
    naming = {
        node_id: f"127.0.0.1:{port}" for node_id, port in zip(members, NAMING_PORTS, strict=True)
    }
    paths = write_configs(root, members, flush, naming)
    processes = []
    try:
        for path in paths:
            node_id = path.parent.name
            processes.append(start_node(path, path.parent / "node.log"))
            member = load_config(path, {}).members[node_id]
            echo(
                f"{node_id}: naming {naming[node_id]}, client {member.client}, peer {member.peer}, "
                f"data {path.parent / 'data'}, log {path.parent / 'node.log'}"
            )
        echo("Ctrl-C stops all three nodes.")
        endpoints = [(node_id, member.client) for node_id, member in members.items()]
        last = ""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal last
                    while True:
                        for process, path in zip(processes, paths, strict=True):
                            if process.poll() is not None:
                                raise DledgerError(
                                    f"{path.parent.name} exited with code {process.returncode}; "
                                    f"see {path.parent / 'node.log'}"
                                )
                        line = summary_line(status_objects(await fetch_all(endpoints)))
                        if line != last:
                            echo(line)
                            last = line
                        await trio.sleep(1)

                nursery.start_soon(watch)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        echo("stopping...")
    finally:
        stop_processes(processes)
    echo("stopped")


def dump_json(objects: list[dict[str, object]]) -> str:
    return json.dumps(objects, indent=2)
