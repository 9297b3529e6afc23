"""Node processes on free ports of 127.0.0.1, for the benchmarks, the demo and the tests.

Unlike ``cluster up`` (fixed ports from ``--base-port``, a supervisor, a folder that outlives it),
a ``LocalCluster`` is a throw-away: its ports are whatever the kernel has free, its nodes are
started and killed one by one by the program that owns it, and ``close`` stops them all.
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
from dledger_mq.node.cluster_layout import write_configs
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


def cluster_on_free_ports(
    count: int, with_naming: bool = False
) -> tuple[dict[str, Member], dict[str, str]]:
    """Members ``n1``..``nCOUNT`` and, ``with_naming``, each one's naming address: every port
    from one ``free_ports`` call, so that no two of them are the same."""
    ports = free_ports((3 if with_naming else 2) * count)
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
    ) -> None:
        """``environment``: the nodes' (default: this process's). ``tls``: every port speaks
        TLS (a CA made under ``root``); ``client_tls`` is what clients connect with."""
        self.environment = environment
        self.root = root
        #: ``naming``: node id -> the naming node it runs, when ``with_naming``.
        self.members, self.naming = cluster_on_free_ports(3, with_naming)
        paths = write_configs(root, self.members, flush, self.naming, settings=settings, tls=tls)
        ca_file = root / TLS_DIRECTORY_NAME / CA_FILE_NAME
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
