"""Where the nodes of a local cluster live: their ids, ports and files under one root folder.

``dledger-mq cluster up`` derives every port from one base port, so that two local clusters
(or a test) can run side by side with ``--base-port``:

| what | ports (base 9876, the default) |
|---|---|
| naming node of node *i* | base + i (9876-9878; 9876-9880 with five nodes) |
| client address of node *i* | base + 5 + i (9881-9883) |
| peer address of node *i* | base + 15 + i (9891-9893) |

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
from dledger_mq.node.config import ConfigError, Member, load_config, parse_config, render_config
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
HOST = "127.0.0.1"

CONFIG_FILE_NAME = "node.toml"
LOG_FILE_NAME = "node.log"
PID_FILE_NAME = "node.pid"


@attrs.frozen
class LocalNode:
    node_id: str
    naming: str
    client: str
    peer: str
    directory: Path

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


@attrs.frozen
class ClusterLayout:
    root: Path
    nodes: tuple[LocalNode, ...]

    @classmethod
    def derive(
        cls, root: Path, node_count: int = DEFAULT_NODE_COUNT, base_port: int = DEFAULT_BASE_PORT
    ) -> ClusterLayout:
        if node_count not in NODE_COUNTS:
            raise ConfigError(f"nodes: must be one of {NODE_COUNTS}, got {node_count}")
        if not 1 <= base_port <= 65535 - PORT_SPAN:
            raise ConfigError(f"base port: must be in [1, {65535 - PORT_SPAN}], got {base_port}")
        return cls(
            root,
            tuple(
                LocalNode(
                    node_id=f"n{position + 1}",
                    naming=f"{HOST}:{base_port + NAMING_PORT_OFFSET + position}",
                    client=f"{HOST}:{base_port + CLIENT_PORT_OFFSET + position}",
                    peer=f"{HOST}:{base_port + PEER_PORT_OFFSET + position}",
                    directory=root / f"n{position + 1}",
                )
                for position in range(node_count)
            ),
        )

    @classmethod
    def load(cls, root: Path) -> ClusterLayout | None:
        """The cluster whose configs are under ``root``, or None if there is none.

        Any one config is enough: each holds every member's addresses and every naming node.
        """
        configs = sorted(root.glob(f"*/{CONFIG_FILE_NAME}")) if root.is_dir() else []
        # An empty config is one an earlier version wrote without fsync and a power cut
        # emptied; the others say the same, and ``write_configs`` writes it again.
        configs = [path for path in configs if path.stat().st_size > 0]
        if not configs:
            return None
        config = load_config(configs[0], {})
        naming = list(config.naming)
        if len(naming) != len(config.members):
            raise ConfigError(
                f"{configs[0]}: not a `cluster up` config (one naming node per member expected)"
            )
        return cls(
            root,
            tuple(
                LocalNode(node_id, naming_address, member.client, member.peer, root / node_id)
                for (node_id, member), naming_address in zip(
                    config.members.items(), naming, strict=True
                )
            ),
        )

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    def node(self, node_id: str) -> LocalNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ConfigError(f"no node {node_id!r} in {self.root} (nodes: {', '.join(self.node_ids)})")

    @property
    def members(self) -> dict[str, Member]:
        return {node.node_id: Member(peer=node.peer, client=node.client) for node in self.nodes}

    @property
    def naming(self) -> dict[str, str]:
        return {node.node_id: node.naming for node in self.nodes}

    @property
    def base_port(self) -> int:
        return int(self.nodes[0].naming.rsplit(":", 1)[1]) - NAMING_PORT_OFFSET

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """(node id, client address) of every node."""
        return [(node.node_id, node.client) for node in self.nodes]

    def write_configs(self, flush: str, disk: Disk | None = None, tls: bool = False) -> list[Path]:
        """Write every node's config that is missing (so data and ports persist), durably;
        with ``tls``, a local CA and each new node's certificate first."""
        return write_configs(self.root, self.members, flush, self.naming, disk, tls=tls)

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
) -> list[Path]:
    """Write each node's config under ``root`` unless it exists (so data and ports persist).

    Durably: a power cut after this returns leaves every config whole. ``naming`` maps a node
    id to the address of the naming node it runs; every node registers with all of them.
    ``settings``: further ``node.toml`` keys for every node (the benchmarks' retention).
    ``tls``: a local CA under ``root/tls`` (unless there is one) and a certificate for each
    new node in its folder, named in its config (docs/security.md, "TLS").
    """
    disk = disk or OsDisk()
    naming = naming or {}
    paths = []
    make_directories(disk, str(root))
    secret_path = root / CLUSTER_SECRET_FILE_NAME
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
                    root / TLS_DIRECTORY_NAME, directory, node_id, sorted(hosts)
                )
            config = parse_config(
                {
                    "node_id": node_id,
                    "members": {k: attrs.asdict(v) for k, v in members.items()},
                    "data_dir": str(directory / "data"),
                    "flush": flush,
                    "naming_listen": naming.get(node_id, ""),
                    "naming": list(naming.values()),
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
