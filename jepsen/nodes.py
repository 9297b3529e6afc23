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

    def __init__(
        self,
        root: Path,
        size: int,
        harness_options: list[str],
        groups: int = 1,
        spares: int = 0,
    ) -> None:
        self.root = root
        self.size = size
        #: The broker groups, in order: broker-a, broker-b, ...
        self.groups = [group_name(position) for position in range(groups)]
        #: Harness name -> its addresses; the naming node each runs; its group; its member id.
        #: Every slot: the ``size`` first members of each group and its ``spares`` spare nodes
        #: (``n4``, ...), which the membership fault starts and adds during the run.
        self.members: dict[str, Member] = {}
        self.naming: dict[str, str] = {}
        self.group_of: dict[str, str] = {}
        self.member_of: dict[str, str] = {}
        #: The nodes that are members of their group now (the harness's view: added once the
        #: leader accepted them as learners, taken out once removed); the nemesis's faults,
        #: the status polls and the recovery wait see only these.
        self.active: set[str] = set()
        slots = size + spares
        # Every port from one call (the proxy's too), so that none is chosen twice: a proxy
        # listener on a port picked for a node would keep that node from starting.
        links = groups * slots * (slots - 1)
        inbound = groups * slots if spares else 0
        ports = iter(free_ports(3 * slots * groups + links + inbound))
        for group in self.groups:
            for number in range(slots):
                member_id = f"n{number + 1}"
                name = member_id if groups == 1 else f"{short_group_name(group)}/{member_id}"
                self.members[name] = Member(
                    peer=f"127.0.0.1:{next(ports)}", client=f"127.0.0.1:{next(ports)}"
                )
                self.naming[name] = f"127.0.0.1:{next(ports)}"
                self.group_of[name] = group
                self.member_of[name] = member_id
                if number < size:
                    self.active.add(name)
        #: A port for the proxy's listener of each directed link ``(src, dst)`` in a group.
        self.link_ports = {
            (src, dst): next(ports)
            for names in self.peer_groups()
            for src in names
            for dst in names
            if src != dst
        }
        #: With spares: a port for the proxy's listener that every peer dials to reach a node
        #: added during the run (its membership entry's peer address: a node's ``peer_dial``
        #: covers only the members its node.toml lists). The proxy tells the dialler by its
        #: connection's source port (``owner_of_port``) and treats it as that directed link.
        self.inbound_ports: dict[str, int] = (
            {name: next(ports) for name in self.members} if spares else {}
        )
        self._dial: Callable[[str, str], str] | None = None
        self._tls = False
        self._settings: dict[str, object] = {}
        self.harness_options = harness_options
        self.nodes: dict[str, NodeProcess] = {}
        #: With ``write_configs(tls=True)``: what clients trust; after ``add_user``: whom they
        #: sign in as. None: plain connections, anonymous (protected mode, loopback).
        self.tls: ssl.SSLContext | None = None
        self.credentials: Credentials | None = None

    @property
    def node_ids(self) -> list[str]:
        """The nodes that are members now (every group)."""
        return [name for name in self.members if name in self.active]

    def group_node_ids(self, group: str) -> list[str]:
        """The harness names of ``group``'s nodes that are members now."""
        return [name for name in self.slot_ids(group) if name in self.active]

    def slot_ids(self, group: str) -> list[str]:
        """Every node ``group`` may have: its members and its spares."""
        return [name for name, of in self.group_of.items() if of == group]

    def spare_ids(self, group: str) -> list[str]:
        """``group``'s nodes that are not members now (never added, or removed)."""
        return [name for name in self.slot_ids(group) if name not in self.active]

    @property
    def naming_addresses(self) -> list[str]:
        """Every naming node a client may ask (spares' too: one runs while its node does)."""
        return list(self.naming.values())

    @property
    def member_naming_addresses(self) -> list[str]:
        """The naming nodes of the members now."""
        return [self.naming[name] for name in self.node_ids]

    def peer_addresses(self) -> dict[str, str]:
        return {node_id: member.peer for node_id, member in self.members.items()}

    def peer_groups(self) -> list[list[str]]:
        """The nodes that may talk to each other: each group's, spares too (groups never do)."""
        return [self.slot_ids(group) for group in self.groups]

    def entry_peer(self, name: str) -> str:
        """The peer address a membership entry gives for ``name`` when it is added during the
        run: the proxy's inbound listener for it (without spares: its own peer address)."""
        port = self.inbound_ports.get(name)
        return f"127.0.0.1:{port}" if port is not None else self.members[name].peer

    def name_of(self, group: str, member_id: str) -> str | None:
        """The harness name of ``group``'s member ``member_id``."""
        for name in self.slot_ids(group):
            if self.member_of[name] == member_id:
                return name
        return None

    def write_configs(
        self, dial: Callable[[str, str], str], tls: bool = False, **settings: object
    ) -> None:
        """Config, secret, certificates and log of every first member (spares: ``prepare``)."""
        self._dial = dial
        self._tls = tls
        self._settings = dict(settings)
        for name in self.node_ids:
            self._write_config(name, self.group_node_ids(self.group_of[name]), learner=False)

    def prepare(self, name: str, members: list[str]) -> None:
        """A spare as an operator makes a node to add (docs/operations.md, "Changing a group's
        members"): its node.toml lists ``members`` (the group's members now, harness names)
        and itself, itself a learner, with the secret (and TLS files); an empty log (whatever
        an earlier life of this slot left is deleted). Not started."""
        node = self.nodes.get(name)
        if node is not None and node.running:
            raise RuntimeError(f"{name} is running: stop it before preparing it again")
        shutil.rmtree(self.root / name / "data", ignore_errors=True)
        self._write_config(name, [*members, name], learner=True)

    def _write_config(self, name: str, peers: list[str], learner: bool) -> None:
        dial = self._dial
        if dial is None:
            raise RuntimeError("write_configs first")
        # Peer links authenticate (through the proxy too: it only relays bytes); every group
        # shares the cluster secret and the CA.
        secret_path = self.root / CLUSTER_SECRET_FILE_NAME
        if not secret_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_cluster_secret(str(secret_path))
        ca_directory = self.root / TLS_DIRECTORY_NAME
        group = self.group_of[name]
        member_id = self.member_of[name]
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        tls_settings: dict[str, object] = {}
        if self._tls:
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
                **({"learners": [member_id]} if learner else {}),
                "data_dir": str(directory / "data"),
                "naming_listen": self.naming[name],
                "naming": self.naming_addresses,
                "cluster_secret_file": str(secret_path),
                **tls_settings,
                "peer_dial": {
                    self.member_of[peer]: dial(name, peer) for peer in peers if peer != name
                },
                **self._settings,
            }
        )
        path = directory / "node.toml"
        write_text_durably(path, render_config(config))  # read again at every restart
        if not has_log(config):
            initialise_log(config)  # as `dledger-mq node --init` would
        self.nodes[name] = NodeProcess(name, path, directory / "node.log")

    # -- processes -------------------------------------------------------------------------------

    def start(self, node_id: str) -> None:
        """Start (or restart, on its data) a member; a node taken out of its group stays
        down (a fault's end may try to restart a node removed meanwhile)."""
        node = self.nodes[node_id]
        if node.running or node_id not in self.active:
            return
        environment = dict(os.environ)
        environment[HARNESS_ENVIRONMENT_VARIABLE] = ",".join(self.harness_options)
        node.process = start_node(node.config_path, node.log_path, environment)
        node.paused = False

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def start_spare(self, node_id: str) -> None:
        """Start a prepared spare (not a member yet: it waits to be added)."""
        node = self.nodes[node_id]
        if not node.running:
            environment = dict(os.environ)
            environment[HARNESS_ENVIRONMENT_VARIABLE] = ",".join(self.harness_options)
            node.process = start_node(node.config_path, node.log_path, environment)
            node.paused = False

    def join(self, node_id: str) -> None:
        """``node_id`` is a member now (a learner, or a voter): faults may take it."""
        self.active.add(node_id)

    def leave(self, node_id: str) -> None:
        """``node_id`` is no longer a member: stop it (SIGTERM by PID, then SIGKILL), and no
        fault's end restarts it."""
        self.active.discard(node_id)
        node = self.nodes.get(node_id)
        if node is not None and node.process is not None:
            self.resume(node_id)
            stop_processes([node.process])
            node.paused = False

    def owner_of_port(self, port: int) -> str | None:
        """The node whose process has the TCP socket bound to 127.0.0.1:``port`` (the source
        of a connection the proxy accepted), read from /proc (Linux); None if none has."""
        inodes = _socket_inodes_on_port(port)
        if not inodes:
            return None
        for name, node in self.nodes.items():
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                fds = os.listdir(f"/proc/{node.process.pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{node.process.pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return name
        return None

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
        """Resume paused nodes and restart dead members; returns the ids restarted."""
        restarted = []
        for node_id, node in self.nodes.items():
            if node.paused:
                self.resume(node_id)
            if not node.running and node_id in self.active:
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
        """The members' client addresses."""
        return [(node_id, self.members[node_id].client) for node_id in self.node_ids]

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


def _socket_inodes_on_port(port: int) -> set[str]:
    """The inodes of TCP sockets whose local port is ``port`` (/proc/net/tcp and tcp6)."""
    wanted = f"{port:04X}"
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[1].rsplit(":", 1)[-1] == wanted:
                        found.add(fields[9])
        except OSError:
            continue
    return found
