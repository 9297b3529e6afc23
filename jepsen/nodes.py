"""The real `dledger-mq node` processes of a harness run, and the faults done to processes.

Every node runs a naming node too, and dials each peer through the harness's proxy
(``peer_dial``), so partitions need no root. Each node is its own process group, started with
the harness-only switches in ``DLEDGER_MQ_HARNESS``; kill, pause and resume act on that group
by PID. ``close`` (always called, from a ``finally``) resumes and stops whatever is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.admin import AdminConnection
from dledger_mq.errors import DledgerError
from dledger_mq.node.certificates import CA_FILE_NAME, TLS_DIRECTORY_NAME, node_tls_settings
from dledger_mq.node.cluster_layout import write_text_durably
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.config import Member, parse_config, render_config
from dledger_mq.node.data_dir import has_log, initialise_log
from dledger_mq.node.harness import HARNESS_ENVIRONMENT_VARIABLE
from dledger_mq.node.local_cluster import cluster_on_free_ports
from dledger_mq.node.processes import start_node, stop_processes
from dledger_mq.wire.admin import ADMIN_CODEC, RuleInfo, StatusReply
from dledger_mq.wire.client_auth import Credentials, new_secret_key
from dledger_mq.wire.peer_auth import CLUSTER_SECRET_FILE_NAME, write_cluster_secret
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.tls import client_ssl_context

CLUSTER_ID = "local"


@attrs.define(eq=False)
class NodeProcess:
    node_id: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Nodes:
    """``size`` nodes under ``root``; ``dial(src, dst)`` is where src reaches dst's peer port."""

    def __init__(self, root: Path, size: int, harness_options: list[str]) -> None:
        self.root = root
        self.members: dict[str, Member]
        self.members, self.naming = cluster_on_free_ports(size, with_naming=True)
        self.harness_options = harness_options
        self.nodes: dict[str, NodeProcess] = {}
        #: With ``write_configs(tls=True)``: what clients trust; after ``add_user``: whom they
        #: sign in as. None: plain connections, anonymous (protected mode, loopback).
        self.tls: ssl.SSLContext | None = None
        self.credentials: Credentials | None = None

    @property
    def node_ids(self) -> list[str]:
        return list(self.members)

    @property
    def naming_addresses(self) -> list[str]:
        return list(self.naming.values())

    def peer_addresses(self) -> dict[str, str]:
        return {node_id: member.peer for node_id, member in self.members.items()}

    def write_configs(
        self, dial: Callable[[str, str], str], tls: bool = False, **settings: object
    ) -> None:
        # Peer links authenticate (through the proxy too: it only relays bytes).
        secret_path = self.root / CLUSTER_SECRET_FILE_NAME
        if not secret_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_cluster_secret(str(secret_path))
        ca_directory = self.root / TLS_DIRECTORY_NAME
        for node_id in self.members:
            directory = self.root / node_id
            directory.mkdir(parents=True, exist_ok=True)
            tls_settings: dict[str, object] = {}
            if tls:
                tls_settings = node_tls_settings(ca_directory, directory, node_id, ["127.0.0.1"])
                self.tls = client_ssl_context(str(ca_directory / CA_FILE_NAME))
            config = parse_config(
                {
                    "node_id": node_id,
                    "cluster_id": CLUSTER_ID,
                    "members": {k: attrs.asdict(v) for k, v in self.members.items()},
                    "data_dir": str(directory / "data"),
                    "naming_listen": self.naming[node_id],
                    "naming": self.naming_addresses,
                    "cluster_secret_file": str(secret_path),
                    **tls_settings,
                    "peer_dial": {
                        peer: dial(node_id, peer) for peer in self.members if peer != node_id
                    },
                    **settings,
                }
            )
            path = directory / "node.toml"
            write_text_durably(path, render_config(config))  # read again at every restart
            if not has_log(config):
                initialise_log(config)  # as `dledger-mq node --init` would
            self.nodes[node_id] = NodeProcess(node_id, path, directory / "node.log")

    # -- processes -------------------------------------------------------------------------------

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        environment = dict(os.environ)
        environment[HARNESS_ENVIRONMENT_VARIABLE] = ",".join(self.harness_options)
        node.process = start_node(node.config_path, node.log_path, environment)
        node.paused = False

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """SIGKILL the node's process group and reap it."""
        process = self.nodes[node_id].process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.nodes[node_id].paused = False

    def wipe(self, node_id: str) -> None:
        """SIGKILL the node and delete its data directory: its disk is lost. Started again, it
        rejoins recovering (no vote until a leader has caught it up)."""
        self.kill(node_id)
        shutil.rmtree(self.root / node_id / "data", ignore_errors=True)

    def pause(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running and node.process is not None:
            os.killpg(node.process.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running and node.process is not None and node.paused:
            os.killpg(node.process.pid, signal.SIGCONT)
        node.paused = False

    def heal(self) -> list[str]:
        """Resume paused nodes and restart dead ones; returns the ids restarted."""
        restarted = []
        for node_id, node in self.nodes.items():
            if node.paused:
                self.resume(node_id)
            if not node.running:
                self.start(node_id)
                restarted.append(node_id)
        return restarted

    def close(self) -> None:
        """Resume and stop every node this object started (SIGTERM, then SIGKILL)."""
        for node_id in self.nodes:
            self.resume(node_id)
        stop_processes([node.process for node in self.nodes.values() if node.process is not None])

    # -- status ----------------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        return [(node_id, member.client) for node_id, member in self.members.items()]

    async def statuses(self) -> dict[str, StatusReply | None]:
        found = await fetch_all(self.endpoints, CLUSTER_ID, self.credentials, self.tls)
        return {node_id: status for node_id, _, status in found}

    async def add_user(self) -> None:
        """A user allowed everything, added through protected mode's loopback door (as
        `cluster up` does); from then on every client of the run signs in as it."""
        credentials = Credentials("jepsen", new_secret_key())
        while True:
            leader = await self.leader()
            if leader is not None:
                address = self.members[leader].client
                try:
                    async with connect(
                        address, ADMIN_CODEC, CLUSTER_ID, "jepsen", None, self.tls
                    ) as anonymous:
                        await AdminConnection(anonymous).add_user(
                            credentials.access_key,
                            credentials.secret_key,
                            (RuleInfo("cluster", "admin"),),
                        )
                    self.credentials = credentials
                    return
                except DledgerError:
                    pass
            await trio.sleep(0.1)

    async def leader(self) -> str | None:
        """The node that says it leads in the highest term, if any answers."""
        leaders = [
            (status.term, node_id)
            for node_id, status in (await self.statuses()).items()
            if status is not None and status.role == "leader"
        ]
        return max(leaders)[1] if leaders else None

    async def wait_none_recovering(self, poll_seconds: float = 0.1) -> None:
        """Until no node says it is recovering (a node down says nothing)."""
        while any(
            status is not None and status.role == "recovering"
            for status in (await self.statuses()).values()
        ):
            await trio.sleep(poll_seconds)

    async def wait_recovered(self, poll_seconds: float = 0.1) -> None:
        """Until every node answers, one leads, and all have applied the leader's commit index."""
        while True:
            statuses = await self.statuses()
            answered = [status for status in statuses.values() if status is not None]
            leaders = [status for status in answered if status.role == "leader"]
            if len(answered) == len(statuses) and leaders:
                commit = max(leaders, key=lambda status: status.term).commit_index
                if all(status.applied_index >= commit for status in answered):
                    return
            await trio.sleep(poll_seconds)
