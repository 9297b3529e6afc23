"""`dledger-mq node` configuration: a TOML file, overridden by command-line flags.

Example (the same ``members`` table goes into every node's file)::

    node_id = "n1"
    cluster_id = "local"
    data_dir = ".dledger-mq/n1"
    flush = "sync"

    [members.n1]
    peer = "127.0.0.1:9891"      # Raft traffic between replicas (raw TCP)
    client = "127.0.0.1:9881"    # clients and operators (WebSocket)
    [members.n2]
    ...
"""

from __future__ import annotations

import enum
import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs

from dledger_mq.broker.records import (
    DEFAULT_IDEMPOTENCE_WINDOW,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_MAX_TIMERS,
    DEFAULT_MAX_TOPICS,
    MAX_DELAY_CEILING_MS,
    MAX_IDEMPOTENCE_WINDOW,
    MAX_TIMERS_CEILING,
    MAX_TOPICS_CEILING,
)
from dledger_mq.errors import UsageError
from dledger_mq.raft.storage.commitlog import FlushPolicy
from dledger_mq.wire.address import Address
from dledger_mq.wire.codec import strict_structure_hook


class ConfigError(UsageError):
    """A configuration value is missing or wrong; the message names the key and the reason."""


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _address(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        Address.parse(value)
    except ValueError as error:
        raise ConfigError(f"{attribute.name}: {error}") from None


@attrs.frozen
class Member:
    peer: str = attrs.field(validator=_address)
    client: str = attrs.field(validator=_address)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name}: must be positive, got {value}")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name}: must not be negative, got {value}")


def _at_most(highest: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        _positive(instance, attribute, value)
        if value > highest:
            raise ConfigError(f"{attribute.name}: must be at most {highest}, got {value}")

    return check


@attrs.frozen
class NodeConfig:
    node_id: str
    members: dict[str, Member]
    data_dir: str
    cluster_id: str = "local"
    group: str = "broker-a"
    flush: str = attrs.field(default="sync")
    flush_interval_ms: int = attrs.field(default=100, validator=_positive)
    segment_size_bytes: int = attrs.field(default=1 << 30, validator=_positive)
    #: One Raft tick. Heartbeats every 5 ticks (50 ms) and elections after 30-60 ticks
    #: (0.3-0.6 s) give sub-second failover on one machine.
    tick_ms: int = attrs.field(default=10, validator=_positive)
    heartbeat_ticks: int = attrs.field(default=5, validator=_positive)
    election_ticks: int = attrs.field(default=30, validator=_positive)
    max_append_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_inflight_appends: int = attrs.field(default=64, validator=_positive)
    max_frame_bytes: int = attrs.field(default=64 << 20, validator=_positive)
    log_level: str = "info"
    #: Replicated broker settings: the leader proposes them when the log's differ.
    auto_create_topics: bool = True
    default_queue_count: int = attrs.field(default=4, validator=_positive)
    max_body_bytes: int = attrs.field(default=4 << 20, validator=_positive)
    #: Sequences remembered per idempotent producer (producers learn it from their routes).
    idempotence_window: int = attrs.field(
        default=DEFAULT_IDEMPOTENCE_WINDOW, validator=_at_most(MAX_IDEMPOTENCE_WINDOW)
    )
    #: Run a naming node inside this node at this address ("" for none).
    naming_listen: str = ""
    #: Serve GET /metrics (Prometheus), /healthz and /readyz at this address ("" for none).
    http_listen: str = ""
    #: Every naming node this replica registers with (and heartbeats to).
    naming: list[str] = attrs.field(factory=list)
    naming_heartbeat_ms: int = attrs.field(default=1000, validator=_positive)
    #: The longest a graceful stop takes (SIGTERM): accepting no clients, handing leadership
    #: over while open connections get their answers; then the node stops regardless.
    graceful_stop_ms: int = attrs.field(default=3000, validator=_positive)
    #: A snapshot of the broker state is taken after this many applied entries, or this many
    #: bytes of them, whichever comes first (a restart applies only what came after it).
    snapshot_interval_entries: int = attrs.field(default=10_000, validator=_positive)
    snapshot_interval_bytes: int = attrs.field(default=16 << 20, validator=_positive)
    #: Retention (docs/operations.md): whole log segments last written this long ago go, as
    #: RocketMQ's file reserved time (0: none go for their age) ...
    retention_hours: float = attrs.field(default=72.0, validator=_not_negative)
    #: ... and the oldest go while the log holds more than this (0: no limit) ...
    retention_bytes: int = attrs.field(default=0, validator=_not_negative)
    #: ... and while the data directory's volume is this full (percent); at
    #: ``disk_refuse_percent`` sends are refused with ``DiskFull`` (consuming goes on). Only
    #: what the oldest snapshot kept covers ever goes; a follower that needed it gets the
    #: snapshot (InstallSnapshot).
    disk_delete_percent: int = attrs.field(default=75, validator=_at_most(100))
    disk_refuse_percent: int = attrs.field(default=90, validator=_at_most(100))
    retention_check_ms: int = attrs.field(default=10_000, validator=_positive)
    #: Members that do not vote in the bootstrap membership: a node being added lists the
    #: group's members and itself, and itself here (`cluster add-replica`, docs/operations.md).
    #: Once the log holds a membership (CONFIG entries), that is in force instead.
    learners: list[str] = attrs.field(factory=list)
    #: Where to dial a peer when not at its ``members`` peer address (a proxy, a NAT):
    #: peer id -> "HOST:PORT". The fault-injection harness routes every link through its proxy.
    peer_dial: dict[str, str] = attrs.field(factory=dict)
    #: A file (mode 0600) holding the cluster secret every peer link proves it holds
    #: (docs/security.md); `cluster up` makes one. Required unless every member is on loopback.
    cluster_secret_file: str = ""
    #: TLS (docs/security.md): this node's certificate and key (mode 0600) and the CA that
    #: signed every member's. All three or none; with them every port speaks TLS and peer
    #: links verify both ends.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    #: Client bounds (docs/security.md, "Limits"). With no users, anonymous clients are let in
    #: from loopback only, unless this is false.
    protected_mode: bool = True
    #: ``Hello`` (and signing in) within this long of connecting.
    client_hello_timeout_ms: int = attrs.field(default=10_000, validator=_positive)
    #: A client that sent nothing and answered no ping for this long is dropped (pinged after
    #: half); it reconnects when it next needs to.
    client_idle_timeout_ms: int = attrs.field(default=600_000, validator=_positive)
    #: Bytes of one message taken from a connection before its handshake is done.
    max_pre_auth_bytes: int = attrs.field(default=64 << 10, validator=_positive)
    #: Client connections held at once, in all and from one IP address (each listener).
    max_client_connections: int = attrs.field(default=10_000, validator=_positive)
    max_connections_per_address: int = attrs.field(default=1_000, validator=_positive)
    #: Replicated: topics the group holds at most (sends that would create more are refused).
    max_topics: int = attrs.field(
        default=DEFAULT_MAX_TOPICS, validator=_at_most(MAX_TOPICS_CEILING)
    )
    #: Replicated: how far ahead a message may be scheduled (``send --delay``), and the
    #: timers (delayed and retried messages) the group holds pending at most.
    max_delay_ms: int = attrs.field(
        default=DEFAULT_MAX_DELAY_MS, validator=_at_most(MAX_DELAY_CEILING_MS)
    )
    max_timers: int = attrs.field(
        default=DEFAULT_MAX_TIMERS, validator=_at_most(MAX_TIMERS_CEILING)
    )

    def __attrs_post_init__(self) -> None:
        if self.node_id not in self.members:
            raise ConfigError(
                f"node_id: {self.node_id!r} is not in members ({', '.join(self.members)})"
            )
        for learner in self.learners:
            if learner not in self.members:
                raise ConfigError(f"learners: {learner!r} is not in members")
        if not set(self.members) - set(self.learners):
            raise ConfigError("learners: at least one member must vote")
        if self.flush not in {policy.value for policy in FlushPolicy}:
            raise ConfigError(f"flush: must be one of sync, async; got {self.flush!r}")
        if self.log_level not in {level.value for level in LogLevel}:
            raise ConfigError(
                f"log_level: must be debug, info, warning or error; got {self.log_level!r}"
            )
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks: must exceed heartbeat_ticks")
        if self.naming_listen:
            _address(self, attrs.fields(NodeConfig).naming_listen, self.naming_listen)
        if self.http_listen:
            _address(self, attrs.fields(NodeConfig).http_listen, self.http_listen)
        for address in self.naming:
            try:
                Address.parse(address)
            except ValueError as error:
                raise ConfigError(f"naming: {error}") from None
        for peer, address in self.peer_dial.items():
            if peer not in self.members or peer == self.node_id:
                raise ConfigError(f"peer_dial: {peer!r} is not one of this node's peers")
            try:
                Address.parse(address)
            except ValueError as error:
                raise ConfigError(f"peer_dial.{peer}: {error}") from None
        addresses = [a for member in self.members.values() for a in (member.peer, member.client)]
        if len(set(addresses)) != len(addresses):
            raise ConfigError(f"members: two addresses are the same: {sorted(addresses)}")
        tls_files = (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        if any(tls_files) and not all(tls_files):
            raise ConfigError("tls_cert_file, tls_key_file, tls_ca_file: give all three or none")
        if not self.cluster_secret_file:
            remote = [
                node_id
                for node_id, member in self.members.items()
                if not _is_loopback(Address.parse(member.peer).host)
            ]
            if remote:
                raise ConfigError(
                    "cluster_secret_file: required when members are not all on loopback "
                    f"({', '.join(remote)} not): peer links must prove they hold the secret"
                )

    @property
    def me(self) -> Member:
        return self.members[self.node_id]

    @property
    def peers(self) -> dict[str, Address]:
        return {
            node_id: Address.parse(self.peer_dial.get(node_id, member.peer))
            for node_id, member in self.members.items()
            if node_id != self.node_id
        }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


_converter = cattrs.Converter(forbid_extra_keys=True)
# A value of the wrong type is refused, not coerced: "false" must not become True.
for _kind in (int, str, bool, float):
    _converter.register_structure_hook(_kind, strict_structure_hook(_kind))


def parse_config(values: dict[str, Any], source: str = "configuration") -> NodeConfig:
    """Build a NodeConfig from plain values; errors name the key and the reason."""
    try:
        return _converter.structure(values, NodeConfig)
    except ConfigError:
        raise
    except Exception as error:  # cattrs reports through exception groups with notes
        raise ConfigError(f"{source}: {_explain(error)}") from None


def load_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    values: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        source = str(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    return parse_config(values, source)


def _explain(error: BaseException, path: str = "") -> str:
    if isinstance(error, BaseExceptionGroup):
        parts = []
        for inner in error.exceptions:
            notes = getattr(inner, "__notes__", [])
            key = path
            for note in notes:
                # cattrs notes look like "Structuring class NodeConfig @ attribute flush".
                if "@ attribute" in note:
                    key = f"{path}.{note.rsplit(' ', 1)[-1]}".lstrip(".")
                elif "@ key" in note:
                    key = f"{path}.{note.rsplit(' ', 1)[-1].strip(chr(39))}".lstrip(".")
            parts.append(_explain(inner, key))
        return "; ".join(parts)
    if isinstance(error, cattrs.ForbiddenExtraKeysError):
        unknown = f"unknown keys {sorted(error.extra_fields)}"
        return f"{path}: {unknown}" if path else unknown
    if isinstance(error, ConfigError) and path:
        return f"{path}.{error}"  # the error names the field: "peer: expected HOST:PORT"
    if isinstance(error, KeyError):
        return f"{path or error.args[0]}: missing"
    reason = str(error) or type(error).__name__
    return f"{path}: {reason}" if path else reason


def render_config(config: NodeConfig) -> str:
    """TOML text for ``config`` (what `cluster up` writes for each node)."""
    lines = []
    for field in attrs.fields(NodeConfig):
        value = getattr(config, field.name)
        if field.name in {"members", "peer_dial"}:
            continue
        default: Any = field.default
        if hasattr(default, "factory"):  # attrs.Factory
            default = default.factory()
        if value != default or field.default is attrs.NOTHING:
            lines.append(f"{field.name} = {_toml_value(value)}")
    if config.peer_dial:
        lines.append("")
        lines.append("[peer_dial]")
        for node_id, address in config.peer_dial.items():
            lines.append(f"{_toml_value(node_id)} = {_toml_value(address)}")
    for node_id, member in config.members.items():
        lines.append("")
        lines.append(f"[members.{_toml_value(node_id)}]")
        lines.append(f"peer = {_toml_value(member.peer)}")
        lines.append(f"client = {_toml_value(member.client)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A JSON string is a TOML basic string: quotes, backslashes and control characters are
    # escaped alike. Not ASCII-only, since TOML refuses JSON's surrogate-pair escapes; and
    # TOML, unlike JSON, wants DEL escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
