"""Node processes on free ports of 127.0.0.1, for the benchmarks, the demo and the tests.

Unlike ``cluster up`` (fixed ports from ``--base-port``, a supervisor, a folder that outlives it),
a ``LocalCluster`` is a throw-away: its ports are whatever the kernel has free, its nodes are
started and killed one by one by the program that owns it, and ``close`` stops them all.
``LocalGroups`` is several of them, one per broker group, sharing naming (run by the first
group's nodes) and the cluster secret, as ``cluster up --groups N`` lays them out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import trio

from dledger_mq.node.certificates import CA_FILE_NAME, TLS_DIRECTORY_NAME
from dledger_mq.node.cluster_layout import group_name, write_configs
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.config import Member
from dledger_mq.node.processes import start_node, stop_processes
from dledger_mq.wire.tls import client_ssl_context


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free now: all are bound at once before
    any is released (ports probed one at a time may come back twice)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def ports_needed(count: int, with_naming: bool = False) -> int:
    """How many ports ``count`` nodes take: a peer and a client port each, and a naming port."""
    return (3 if with_naming else 2) * count


def cluster_on_free_ports(
    count: int, with_naming: bool = False, ports: list[int] | None = None
) -> tuple[dict[str, Member], dict[str, str]]:
    """Members ``n1``..``nCOUNT`` and, ``with_naming``, each one's naming address: every port
    from one ``free_ports`` call, so that no two of them are the same (or from ``ports``, taken
    by the caller in one such call with others)."""
    if ports is None:
        ports = free_ports(ports_needed(count, with_naming))
    if len(ports) != ports_needed(count, with_naming):
        raise ValueError(f"{count} nodes need {ports_needed(count, with_naming)} ports")
    node_ids = [f"n{number}" for number in range(1, count + 1)]
    members = {
        node_id: Member(
            peer=f"127.0.0.1:{ports[2 * position]}",
            client=f"127.0.0.1:{ports[2 * position + 1]}",
        )
        for position, node_id in enumerate(node_ids)
    }
    naming = (
        {
            node_id: f"127.0.0.1:{ports[2 * count + position]}"
            for position, node_id in enumerate(node_ids)
        }
        if with_naming
        else {}
    )
    return members, naming


class LocalCluster:
    """Three node processes on free ports; always stopped by ``close``."""

    def __init__(
        self,
        root: Path,
        flush: str,
        with_naming: bool = False,
        settings: dict[str, object] | None = None,
        environment: Mapping[str, str] | None = None,
        tls: bool = False,
        *,
        group: str = "broker-a",
        register_with: list[str] | None = None,
        cluster_root: Path | None = None,
        ports: list[int] | None = None,
        http: bool = False,
    ) -> None:
        """``environment``: the nodes' (default: this process's). ``tls``: every port speaks
        TLS (a CA made under ``root``); ``client_tls`` is what clients connect with.

        ``group``: the broker group the three form; ``register_with``: the naming nodes they
        register with (default: their own); ``cluster_root``: where the cluster secret and the
        CA are, shared with other groups (default: ``root``); ``ports``: the
        ``ports_needed(3, with_naming)`` ports to listen on (default: free ones); ``http``: each
        node serves /metrics on a free port of its own (``self.http``)."""
        self.environment = environment
        self.root = root
        self.group = group
        #: ``naming``: node id -> the naming node it runs, when ``with_naming``.
        self.members, self.naming = cluster_on_free_ports(3, with_naming, ports)
        #: node id -> its operator HTTP address (/metrics), with ``http``.
        self.http = (
            {
                node_id: f"127.0.0.1:{port}"
                for node_id, port in zip(self.members, free_ports(3), strict=True)
            }
            if http
            else {}
        )
        paths = write_configs(
            root,
            self.members,
            flush,
            self.naming,
            settings=settings,
            tls=tls,
            group=group,
            register_with=register_with,
            cluster_root=cluster_root,
            http=self.http,
        )
        ca_file = (cluster_root or root) / TLS_DIRECTORY_NAME / CA_FILE_NAME
        self.client_tls = client_ssl_context(str(ca_file)) if tls else None
        self.paths = dict(zip(self.members, paths, strict=True))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node_id: str) -> None:
        path = self.paths[node_id]
        self.processes[node_id] = start_node(path, path.parent / "node.log", self.environment)

    def kill(self, node_id: str) -> None:
        process = self.processes[node_id]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def start_all(self) -> None:
        for node_id in self.members:
            self.start(node_id)

    def close(self) -> None:
        stop_processes(list(self.processes.values()))

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        return [(node_id, member.client) for node_id, member in self.members.items()]

    async def leader(self) -> tuple[str, str]:
        """(node id, client address) of the leader, waiting until there is one."""
        while True:
            # A deposed leader may not know it yet: the highest term wins.
            leaders = [
                (status.term, node_id, address)
                for node_id, address, status in await fetch_all(self.endpoints, tls=self.client_tls)
                if status is not None and status.role == "leader"
            ]
            if leaders:
                _, node_id, address = max(leaders)
                return node_id, address
            await trio.sleep(0.01)


class LocalGroups:
    """``count`` broker groups (broker-a, broker-b, ...) of three node processes each, on free
    ports: the first group's nodes run the naming nodes, every node registers with them, and
    all share one cluster secret (and with ``tls``, one CA) under ``root``. The first group
    lives in ``root/nN``, the others in ``root/broker-X/nN``, as ``cluster up --groups``
    lays them out. Always stopped by ``close``, which stops every node it started by PID."""

    def __init__(
        self,
        root: Path,
        flush: str,
        count: int,
        settings: dict[str, object] | None = None,
        environment: Mapping[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        if count < 1:
            raise ValueError(f"groups: at least 1, got {count}")
        first_ports = ports_needed(3, with_naming=True)
        other_ports = ports_needed(3)
        # Every port of every group from one call: ports probed apart may come back twice.
        ports = free_ports(first_ports + other_ports * (count - 1))
        first = LocalCluster(
            root,
            flush,
            with_naming=True,
            settings=settings,
            environment=environment,
            tls=tls,
            group=group_name(0),
            ports=ports[:first_ports],
        )
        self.root = root
        self.groups: dict[str, LocalCluster] = {first.group: first}
        for position in range(1, count):
            group = group_name(position)
            begin = first_ports + other_ports * (position - 1)
            self.groups[group] = LocalCluster(
                root / group,
                flush,
                settings=settings,
                environment=environment,
                tls=tls,
                group=group,
                register_with=list(first.naming.values()),
                cluster_root=root,
                ports=ports[begin : begin + other_ports],
            )
        #: Node id -> the naming node it runs (group a's nodes run them all).
        self.naming = first.naming
        self.client_tls = first.client_tls

    def start_all(self) -> None:
        for cluster in self.groups.values():
            cluster.start_all()

    def close(self) -> None:
        """Stop every node of every group (SIGTERM, then SIGKILL), by the PIDs started here."""
        stop_processes(
            [process for cluster in self.groups.values() for process in cluster.processes.values()]
        )

    async def leaders(self) -> dict[str, tuple[str, str]]:
        """Group -> (node id, client address) of its leader, waiting until each has one."""
        return {group: await cluster.leader() for group, cluster in self.groups.items()}
