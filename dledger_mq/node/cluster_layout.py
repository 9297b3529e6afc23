"""Where the nodes of a local cluster live: their ids, ports and files under one root folder.

``dledger-mq cluster up`` derives every port from one base port, so that two local clusters
(or a test) can run side by side with ``--base-port``:

| what | ports (base 9876, the default) |
|---|---|
| naming node of node *i* | base + i (9876-9878; 9876-9880 with five nodes) |
| client address of node *i* | base + 5 + i (9881-9883) |
| peer address of node *i* | base + 15 + i (9891-9893) |
| HTTP (/metrics, /healthz, /readyz) of node *i*, group *g* | base - 75 + 5g + i (9801-9803) |
| the dashboard | base - 1796 (8080) |

(Group *g* counts from 0 for broker-a; with a base port under 76 the nodes serve no HTTP, and
under 2820 there is no dashboard: its port would be a privileged one.)

Each node has ``ROOT/nN/node.toml`` (its config), ``node.log``, ``node.pid`` and ``data/``.
The configs are the cluster's record of itself: a later ``cluster up`` reads them back, so
they are written durably (temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import attrs

from dledger_mq.node.certificates import CA_FILE_NAME, TLS_DIRECTORY_NAME, node_tls_settings
from dledger_mq.node.config import (
    ConfigError,
    Member,
    load_config,
    parse_config,
    render_config,
)
from dledger_mq.node.data_dir import has_log, initialise_log
from dledger_mq.raft.storage.disk import Disk, OsDisk, make_directories, write_file_atomically
from dledger_mq.wire.address import Address
from dledger_mq.wire.peer_auth import (
    CLUSTER_SECRET_FILE_NAME,
    new_cluster_secret_text,
    write_cluster_secret,
)
from dledger_mq.wire.tls import client_ssl_context

DEFAULT_ROOT = Path(".dledger-mq")
DEFAULT_BASE_PORT = 9876
NODE_COUNTS = (3, 5)
DEFAULT_NODE_COUNT = 3
NAMING_PORT_OFFSET = 0
CLIENT_PORT_OFFSET = 5
PEER_PORT_OFFSET = 15
#: Ports a cluster of the most nodes spans from its base port: base .. base + PORT_SPAN - 1.
PORT_SPAN = PEER_PORT_OFFSET + max(NODE_COUNTS)
#: HTTP ports lie below the base: 9801 for the default base, 5 a group (8 groups: 40 ports).
HTTP_PORTS_BELOW_BASE = 75


def http_address(base_port: int, position: int, number: int) -> str:
    """The HTTP address of node ``number`` (from 0) of the ``position``-th group; "" when the
    base port leaves no room below it."""
    if base_port <= HTTP_PORTS_BELOW_BASE:
        return ""
    return f"{HOST}:{base_port - HTTP_PORTS_BELOW_BASE + position * max(NODE_COUNTS) + number}"


HOST = "127.0.0.1"

#: The dashboard's port lies below the base: 8080 for the default base.
DASHBOARD_PORT_BELOW_BASE = 1796
DASHBOARD_DIRECTORY_NAME = "dashboard"


def dashboard_address(base_port: int) -> str:
    """Where `cluster up`'s dashboard listens; "" when that would be a privileged port."""
    port = base_port - DASHBOARD_PORT_BELOW_BASE
    return f"{HOST}:{port}" if port >= 1024 else ""


@attrs.frozen
class LocalService:
    """A process `cluster up` runs and supervises beside the nodes (the dashboard): named
    ``node_id`` as the lab verbs name it, its log and pid file in ``directory``."""

    node_id: str
    directory: Path
    command: tuple[str, ...]
    #: Where it serves, for the start-up lines.
    address: str = ""

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.node_id}.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / f"{self.node_id}.pid"


CONFIG_FILE_NAME = "node.toml"
LOG_FILE_NAME = "node.log"
PID_FILE_NAME = "node.pid"


#: Most broker groups `cluster up --groups` makes (each spans PORT_SPAN ports).
MAX_GROUPS = 8
GROUP_PREFIX = "broker-"


def group_name(position: int) -> str:
    """The ``position``-th broker group of a local cluster: broker-a, broker-b, ..."""
    return f"{GROUP_PREFIX}{chr(ord('a') + position)}"


def short_group_name(group: str) -> str:
    """How a node name spells its group: ``b`` for broker-b."""
    return group.removeprefix(GROUP_PREFIX)


@attrs.frozen
class LocalNode:
    #: Its name in this cluster: ``n1``, or with several groups ``b/n1`` (group b's n1).
    node_id: str
    #: The naming node it runs ("" for none: only the first group's nodes run one).
    naming: str
    client: str
    peer: str
    directory: Path
    group: str = "broker-a"
    #: Its id among its group's members (its config's ``node_id``); default: ``node_id``.
    member: str = ""
    #: Where it serves /metrics, /healthz and /readyz ("" for nowhere).
    http: str = ""

    @property
    def member_id(self) -> str:
        return self.member or self.node_id

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE_NAME

    @property
    def pid_path(self) -> Path:
        return self.directory / PID_FILE_NAME

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"


#: In a node's folder: `cluster remove-replica` took it out of its group; `cluster up` no
#: longer starts it.
REMOVED_FILE_NAME = "REMOVED"


def _member_number(member_id: str) -> tuple[int, str]:
    digits = member_id.lstrip("n")
    return (int(digits), member_id) if digits.isdigit() else (1 << 30, member_id)


def _node_name(group: str, member_id: str, group_count: int) -> str:
    return member_id if group_count == 1 else f"{short_group_name(group)}/{member_id}"


def _group_directory(root: Path, position: int, group: str) -> Path:
    """The first group's nodes live in ``root/nN`` (so a one-group cluster can grow), the
    others in ``root/GROUP/nN``."""
    return root if position == 0 else root / group


@attrs.frozen
class ClusterLayout:
    root: Path
    nodes: tuple[LocalNode, ...]

    @classmethod
    def derive(
        cls,
        root: Path,
        node_count: int = DEFAULT_NODE_COUNT,
        base_port: int = DEFAULT_BASE_PORT,
        group_count: int = 1,
    ) -> ClusterLayout:
        if node_count not in NODE_COUNTS:
            raise ConfigError(f"nodes: must be one of {NODE_COUNTS}, got {node_count}")
        if not 1 <= group_count <= MAX_GROUPS:
            raise ConfigError(f"groups: must be in [1, {MAX_GROUPS}], got {group_count}")
        highest = 65535 - PORT_SPAN * group_count
        if not 1 <= base_port <= highest:
            raise ConfigError(f"base port: must be in [1, {highest}], got {base_port}")
        nodes = []
        for position in range(group_count):
            group = group_name(position)
            ports = base_port + position * PORT_SPAN
            for number in range(node_count):
                member_id = f"n{number + 1}"
                nodes.append(
                    LocalNode(
                        node_id=_node_name(group, member_id, group_count),
                        naming=(
                            f"{HOST}:{base_port + NAMING_PORT_OFFSET + number}"
                            if position == 0
                            else ""
                        ),
                        client=f"{HOST}:{ports + CLIENT_PORT_OFFSET + number}",
                        peer=f"{HOST}:{ports + PEER_PORT_OFFSET + number}",
                        directory=_group_directory(root, position, group) / member_id,
                        group=group,
                        member=member_id,
                        http=http_address(base_port, position, number),
                    )
                )
        return cls(root, tuple(nodes))

    @classmethod
    def load(cls, root: Path) -> ClusterLayout | None:
        """The cluster whose configs are under ``root``, or None if there is none.

        Each node's own config says where it is: the first group's are in ``root/*/``, the
        others' in ``root/*/*/``. A node marked removed (``REMOVED``, by `cluster
        remove-replica`) is left out: it is no member any more.
        """
        if not root.is_dir():
            return None
        # An empty config is one an earlier version wrote without fsync and a power cut
        # emptied; the others say the same, and ``write_configs`` writes it again.
        first_group = [
            path
            for path in sorted(root.glob(f"*/{CONFIG_FILE_NAME}"))
            if path.stat().st_size and not (path.parent / REMOVED_FILE_NAME).exists()
        ]
        if not first_group:
            return None
        config = load_config(first_group[0], {})
        if not config.naming_listen or len(config.naming) < 1:
            raise ConfigError(
                f"{first_group[0]}: not a `cluster up` config (it runs no naming node)"
            )
        found = [(path, load_config(path, {})) for path in first_group]
        for path in sorted(root.glob(f"*/*/{CONFIG_FILE_NAME}")):
            if path.stat().st_size and not (path.parent / REMOVED_FILE_NAME).exists():
                other = load_config(path, {})
                if other.group != config.group:
                    found.append((path, other))
        group_count = len({node_config.group for _, node_config in found})
        nodes: dict[tuple[str, str], LocalNode] = {}
        for path, node_config in found:
            group_directory = path.parent.parent
            # Every member a config lists (a config emptied by a power cut is written again
            # from the others), the first group's with the naming node it runs...
            naming = dict(zip(node_config.members, node_config.naming, strict=False))
            for member_id, member in node_config.members.items():
                directory = group_directory / member_id
                if (directory / REMOVED_FILE_NAME).exists():
                    continue
                nodes.setdefault(
                    (node_config.group, member_id),
                    LocalNode(
                        _node_name(node_config.group, member_id, group_count),
                        naming.get(member_id, "") if node_config.naming_listen else "",
                        member.client,
                        member.peer,
                        directory,
                        node_config.group,
                        member_id,
                    ),
                )
        # Where each serves HTTP, its own config says.
        for _, node_config in found:
            key = (node_config.group, node_config.node_id)
            if key in nodes and node_config.http_listen:
                nodes[key] = attrs.evolve(nodes[key], http=node_config.http_listen)
        nodes_list = list(nodes.values())
        # ... and a node added since (its own config lists it; the others' may not).
        nodes_list.sort(key=lambda node: (node.group, _member_number(node.member_id)))
        layout = cls(root, tuple(nodes_list))
        if any(node.http for node in nodes_list):
            # A node whose own config a power cut emptied: its HTTP port as `derive` gives it.
            groups = layout.groups
            layout = cls(
                root,
                tuple(
                    node
                    if node.http
                    else attrs.evolve(
                        node,
                        http=http_address(
                            layout.base_port,
                            groups.index(node.group),
                            _member_number(node.member_id)[0] - 1,
                        ),
                    )
                    for node in nodes_list
                ),
            )
        return layout

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    @property
    def groups(self) -> list[str]:
        """Its broker groups, in order."""
        return sorted({node.group for node in self.nodes})

    def group_nodes(self, group: str) -> list[LocalNode]:
        return [node for node in self.nodes if node.group == group]

    def node(self, node_id: str) -> LocalNode:
        """The node named ``node_id``: ``n1``, or with several groups ``b/n1`` (also
        ``broker-b/n1``)."""
        for node in self.nodes:
            if node_id in (node.node_id, f"{node.group}/{node.member_id}"):
                return node
        raise ConfigError(f"no node {node_id!r} in {self.root} (nodes: {', '.join(self.node_ids)})")

    @property
    def members(self) -> dict[str, Member]:
        """The first group's members (a one-group cluster's), by member id."""
        return {
            node.member_id: Member(peer=node.peer, client=node.client)
            for node in self.group_nodes(self.groups[0])
        }

    @property
    def naming(self) -> dict[str, str]:
        """Member id -> the naming node it runs (the first group's nodes run them)."""
        return {node.member_id: node.naming for node in self.nodes if node.naming}

    @property
    def base_port(self) -> int:
        """From the first group's first node's client port (its naming node may be gone with
        it, if `remove-replica` took it out): node nK's is base + 5 + K - 1."""
        first = self.group_nodes(self.groups[0])[0]
        number = _member_number(first.member_id)[0]
        return int(first.client.rsplit(":", 1)[1]) - CLIENT_PORT_OFFSET - (number - 1)

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """(node name, client address) of every node."""
        return [(node.node_id, node.client) for node in self.nodes]

    def write_configs(self, flush: str, disk: Disk | None = None, tls: bool = False) -> list[Path]:
        """Write every node's config that is missing (so data and ports persist), durably;
        with ``tls``, a local CA and each new node's certificate first. Every node registers
        with every naming node (the first group runs them)."""
        paths = []
        for position, group in enumerate(self.groups):
            nodes = self.group_nodes(group)
            members = {node.member_id: Member(peer=node.peer, client=node.client) for node in nodes}
            paths += write_configs(
                _group_directory(self.root, position, group),
                members,
                flush,
                {node.member_id: node.naming for node in nodes if node.naming},
                disk,
                http={node.member_id: node.http for node in nodes if node.http},
                tls=tls,
                group=group,
                register_with=list(self.naming.values()),
                cluster_root=self.root,
            )
        return paths

    def add_node(self, group: str, member_id: str, disk: Disk | None = None) -> LocalNode:
        """Make a new, empty node of ``group`` on the ports a cluster of five nodes per group
        would give it (``n4``, ``n5``), its config listing the group's nodes and itself, itself
        a learner (`cluster add-replica`); returns it. This layout does not change: load it
        again."""
        if group not in self.groups:
            raise ConfigError(f"no broker group {group!r} in {self.root}")
        number = _member_number(member_id)[0]
        if not 1 <= number <= max(NODE_COUNTS):
            raise ConfigError(
                f"a node added to a local cluster is n1..n{max(NODE_COUNTS)}, not {member_id!r}"
            )
        nodes = self.group_nodes(group)
        if any(node.member_id == member_id for node in nodes):
            raise ConfigError(f"{member_id} is already a node of {group}")
        position = self.groups.index(group)
        directory = _group_directory(self.root, position, group)
        if (directory / member_id / CONFIG_FILE_NAME).exists():
            raise ConfigError(
                f"{directory / member_id} holds a node that was removed: give another id"
            )
        ports = self.base_port + position * PORT_SPAN
        new = LocalNode(
            _node_name(group, member_id, len(self.groups)),
            "",
            f"{HOST}:{ports + CLIENT_PORT_OFFSET + number - 1}",
            f"{HOST}:{ports + PEER_PORT_OFFSET + number - 1}",
            directory / member_id,
            group,
            member_id,
            http_address(self.base_port, position, number - 1),
        )
        members = {
            node.member_id: Member(peer=node.peer, client=node.client) for node in [*nodes, new]
        }
        flush = load_config(nodes[0].config_path, {}).flush
        write_configs(
            directory,
            members,
            flush,
            {},
            disk,
            http={member_id: new.http} if new.http else None,
            settings={"learners": [member_id]},
            tls=self.has_tls,
            group=group,
            register_with=list(self.naming.values()),
            cluster_root=self.root,
        )
        return new

    def with_groups(self, group_count: int) -> ClusterLayout:
        """This cluster grown to ``group_count`` groups (the new ones on the next ports)."""
        first = self.group_nodes(self.groups[0])
        grown = ClusterLayout.derive(self.root, len(first), self.base_port, group_count)
        existing = {(node.group, node.member_id): node for node in self.nodes}
        return ClusterLayout(
            self.root,
            tuple(
                attrs.evolve(existing[(node.group, node.member_id)], node_id=node.node_id)
                if (node.group, node.member_id) in existing
                else node
                for node in grown.nodes
            ),
        )

    @property
    def ca_file(self) -> Path:
        return self.root / TLS_DIRECTORY_NAME / CA_FILE_NAME

    @property
    def has_tls(self) -> bool:
        return self.ca_file.exists()

    def client_tls(self) -> ssl.SSLContext | None:
        """What a client of this cluster connects with: None unless it speaks TLS."""
        return client_ssl_context(str(self.ca_file)) if self.has_tls else None


def write_configs(
    root: Path,
    members: dict[str, Member],
    flush: str,
    naming: dict[str, str] | None = None,
    disk: Disk | None = None,
    settings: dict[str, object] | None = None,
    tls: bool = False,
    group: str = "broker-a",
    register_with: list[str] | None = None,
    cluster_root: Path | None = None,
    http: dict[str, str] | None = None,
) -> list[Path]:
    """Write each node's config under ``root`` unless it exists (so data and ports persist).
    ``http``: node id -> where it serves /metrics, /healthz and /readyz.

    Durably: a power cut after this returns leaves every config whole. ``naming`` maps a node
    id to the address of the naming node it runs; every node registers with all of them.
    ``settings``: further ``node.toml`` keys for every node (the benchmarks' retention).
    ``tls``: a local CA under ``root/tls`` (unless there is one) and a certificate for each
    new node in its folder, named in its config (docs/security.md, "TLS").
    ``group``: the broker group they form; ``register_with``: every naming node they register
    with (default: those of ``naming``); ``cluster_root``: where the cluster secret and the CA
    are, when the group's folder is not the cluster's (default: ``root``).
    """
    disk = disk or OsDisk()
    naming = naming or {}
    paths = []
    make_directories(disk, str(root))
    cluster_root = cluster_root or root
    secret_path = cluster_root / CLUSTER_SECRET_FILE_NAME
    if not disk.exists(str(secret_path)):
        if isinstance(disk, OsDisk):
            write_cluster_secret(str(secret_path))  # mode 0600 from its creation
        else:  # a simulated disk (tests): no modes there
            write_file_atomically(disk, str(secret_path), new_cluster_secret_text().encode())
    for node_id in members:
        directory = root / node_id
        make_directories(disk, str(directory))
        path = directory / CONFIG_FILE_NAME
        if not disk.exists(str(path)) or _is_empty(disk, str(path)):
            # A new node: its log is made here, on purpose, before its config (a crash in
            # between writes the config again next time and finds the log made).
            tls_settings: dict[str, object] = {}
            if tls:
                addresses = [members[node_id].client, members[node_id].peer]
                addresses += [naming[node_id]] if node_id in naming else []
                hosts = {Address.parse(address).host for address in addresses} | {"localhost"}
                tls_settings = node_tls_settings(
                    cluster_root / TLS_DIRECTORY_NAME, directory, node_id, sorted(hosts)
                )
            config = parse_config(
                {
                    "node_id": node_id,
                    "members": {k: attrs.asdict(v) for k, v in members.items()},
                    "data_dir": str(directory / "data"),
                    "flush": flush,
                    "group": group,
                    "naming_listen": naming.get(node_id, ""),
                    "http_listen": (http or {}).get(node_id, ""),
                    "naming": list(naming.values()) if register_with is None else register_with,
                    "cluster_secret_file": str(secret_path),
                    **tls_settings,
                    **(settings or {}),
                }
            )
            if not has_log(config, disk):
                initialise_log(config, disk)
            write_file_atomically(disk, str(path), render_config(config).encode())
        paths.append(path)
    return paths


def _is_empty(disk: Disk, path: str) -> bool:
    file = disk.open(path)
    try:
        return file.size() == 0
    finally:
        file.close()


def write_text_durably(path: Path, text: str, disk: Disk | None = None) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file whole."""
    write_file_atomically(disk or OsDisk(), os.fspath(path), text.encode())
