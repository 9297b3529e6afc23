"""The real `dledger-mq node` processes of a harness run, and the faults done to processes.

Every node runs a naming node too, and dials each peer through the harness's proxy
(``peer_dial``), so partitions need no root. With several broker groups (``groups``), each is a
Raft group of ``size`` nodes of its own (broker-a, broker-b, ...); every node registers with
every naming node, and the harness names a node by its group and member id, ``a/n1``,
``b/n1`` (with one group: ``n1``), which is also its folder under ``root``. Each node is its
own process group, started with the harness-only switches in ``DLEDGER_MQ_HARNESS``; kill,
pause and resume act on that process group by PID. ``close`` (always called, from a
``finally``) resumes and stops whatever is left.
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
from dledger_mq.node.cluster_layout import group_name, short_group_name, write_text_durably
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.config import Member, parse_config, render_config
from dledger_mq.node.data_dir import has_log, initialise_log
from dledger_mq.node.harness import HARNESS_ENVIRONMENT_VARIABLE
from dledger_mq.node.local_cluster import free_ports
from dledger_mq.node.processes import start_node, stop_processes
from dledger_mq.wire.admin import ADMIN_CODEC, RuleInfo, StatusReply
from dledger_mq.wire.client_auth import Credentials, new_secret_key
from dledger_mq.wire.peer_auth import CLUSTER_SECRET_FILE_NAME, write_cluster_secret
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.tls import client_ssl_context

CLUSTER_ID = "local"


@attrs.define(eq=False)
class NodeProcess:
    #: The harness's name for it: ``n1``, or with several groups ``a/n1``.
    node_id: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Nodes:
    """``groups`` broker groups of ``size`` nodes under ``root``; ``dial(src, dst)`` is where
    src reaches dst's peer port (both harness names of one group)."""

    def __init__(self, root: Path, size: int, harness_options: list[str], groups: int = 1) -> None:
        self.root = root
        self.size = size
        #: The broker groups, in order: broker-a, broker-b, ...
        self.groups = [group_name(position) for position in range(groups)]
        #: Harness name -> its addresses; the naming node each runs; its group; its member id.
        self.members: dict[str, Member] = {}
        self.naming: dict[str, str] = {}
        self.group_of: dict[str, str] = {}
        self.member_of: dict[str, str] = {}
        # Every port from one call (the proxy's too), so that none is chosen twice: a proxy
        # listener on a port picked for a node would keep that node from starting.
        links = groups * size * (size - 1)
        ports = iter(free_ports(3 * size * groups + links))
        for group in self.groups:
            for number in range(size):
                member_id = f"n{number + 1}"
                name = member_id if groups == 1 else f"{short_group_name(group)}/{member_id}"
                self.members[name] = Member(
                    peer=f"127.0.0.1:{next(ports)}", client=f"127.0.0.1:{next(ports)}"
                )
                self.naming[name] = f"127.0.0.1:{next(ports)}"
                self.group_of[name] = group
                self.member_of[name] = member_id
        #: A port for the proxy's listener of each directed link ``(src, dst)`` in a group.
        self.link_ports = {
            (src, dst): next(ports)
            for names in self.peer_groups()
            for src in names
            for dst in names
            if src != dst
        }
        self.harness_options = harness_options
        self.nodes: dict[str, NodeProcess] = {}
        #: With ``write_configs(tls=True)``: what clients trust; after ``add_user``: whom they
        #: sign in as. None: plain connections, anonymous (protected mode, loopback).
        self.tls: ssl.SSLContext | None = None
        self.credentials: Credentials | None = None

    @property
    def node_ids(self) -> list[str]:
        return list(self.members)

    def group_node_ids(self, group: str) -> list[str]:
        """The harness names of ``group``'s nodes."""
        return [name for name, of in self.group_of.items() if of == group]

    @property
    def naming_addresses(self) -> list[str]:
        return list(self.naming.values())

    def peer_addresses(self) -> dict[str, str]:
        return {node_id: member.peer for node_id, member in self.members.items()}

    def peer_groups(self) -> list[list[str]]:
        """The nodes that talk to each other: each group's (groups never do)."""
        return [self.group_node_ids(group) for group in self.groups]

    def write_configs(
        self, dial: Callable[[str, str], str], tls: bool = False, **settings: object
    ) -> None:
        # Peer links authenticate (through the proxy too: it only relays bytes); every group
        # shares the cluster secret and the CA.
        secret_path = self.root / CLUSTER_SECRET_FILE_NAME
        if not secret_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_cluster_secret(str(secret_path))
        ca_directory = self.root / TLS_DIRECTORY_NAME
        for name in self.members:
            group = self.group_of[name]
            peers = self.group_node_ids(group)
            member_id = self.member_of[name]
            directory = self.root / name
            directory.mkdir(parents=True, exist_ok=True)
            tls_settings: dict[str, object] = {}
            if tls:
                tls_settings = node_tls_settings(ca_directory, directory, member_id, ["127.0.0.1"])
                self.tls = client_ssl_context(str(ca_directory / CA_FILE_NAME))
            config = parse_config(
                {
                    "node_id": member_id,
                    "cluster_id": CLUSTER_ID,
                    "group": group,
                    "members": {
                        self.member_of[peer]: attrs.asdict(self.members[peer]) for peer in peers
                    },
                    "data_dir": str(directory / "data"),
                    "naming_listen": self.naming[name],
                    "naming": self.naming_addresses,
                    "cluster_secret_file": str(secret_path),
                    **tls_settings,
                    "peer_dial": {
                        self.member_of[peer]: dial(name, peer) for peer in peers if peer != name
                    },
                    **settings,
                }
            )
            path = directory / "node.toml"
            write_text_durably(path, render_config(config))  # read again at every restart
            if not has_log(config):
                initialise_log(config)  # as `dledger-mq node --init` would
            self.nodes[name] = NodeProcess(name, path, directory / "node.log")

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
        `cluster up` does) in every group (users are a group's); from then on every client of
        the run signs in as it."""
        credentials = Credentials("jepsen", new_secret_key())
        for group in self.groups:
            while True:
                leader = await self.leader(group)
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
                        break
                    except DledgerError:
                        pass
                await trio.sleep(0.1)
        self.credentials = credentials

    async def leader(self, group: str | None = None) -> str | None:
        """The node of ``group`` (default: the only one) that says it leads in the highest
        term, if any answers."""
        if group is None:
            if len(self.groups) != 1:
                raise ValueError("several broker groups: name the group whose leader you want")
            group = self.groups[0]
        return (await self.leaders())[group]

    async def leaders(self) -> dict[str, str | None]:
        """Each group's node that says it leads in the highest term (None: none answers so)."""
        statuses = await self.statuses()
        found: dict[str, str | None] = {}
        for group in self.groups:
            leaders = [
                (status.term, name)
                for name in self.group_node_ids(group)
                if (status := statuses.get(name)) is not None and status.role == "leader"
            ]
            found[group] = max(leaders)[1] if leaders else None
        return found

    async def wait_none_recovering(self, poll_seconds: float = 0.1) -> None:
        """Until no node says it is recovering (a node down says nothing)."""
        while any(
            status is not None and status.role == "recovering"
            for status in (await self.statuses()).values()
        ):
            await trio.sleep(poll_seconds)

    async def wait_recovered(self, poll_seconds: float = 0.1) -> None:
        """Until every node answers, each group has a leader, and every node has applied its
        group's leader's commit index."""
        while True:
            statuses = await self.statuses()
            if all(_group_recovered(statuses, self.group_node_ids(g)) for g in self.groups):
                return
            await trio.sleep(poll_seconds)


def _group_recovered(statuses: dict[str, StatusReply | None], names: list[str]) -> bool:
    answered = [status for name in names if (status := statuses.get(name)) is not None]
    leaders = [status for status in answered if status.role == "leader"]
    if len(answered) != len(names) or not leaders:
        return False
    commit = max(leaders, key=lambda status: status.term).commit_index
    return all(status.applied_index >= commit for status in answered)
