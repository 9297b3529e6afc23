"""A cluster of real `dledger-mq node` processes on 127.0.0.1 and ephemeral ports, for tests.

Each node runs as ``python -m dledger_mq node --config node.toml`` in its own process group, with
its config, data and log under the test's ``tmp_path``. The test drives it from Trio: status and
proposals go through the product's admin client, and every wait polls the real processes under a
deadline (``trio.fail_after``). ``kill_all`` SIGKILLs every process group this object started, by
PID; the fixture calls it whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import DledgerError, NotLeader, Unavailable
from dledger_mq.node.config import NodeConfig, parse_config, render_config
from dledger_mq.node.data_dir import initialise_log
from dledger_mq.node.harness import HARNESS_ENVIRONMENT_VARIABLE
from dledger_mq.node.local_cluster import cluster_on_free_ports, free_ports
from dledger_mq.wire.admin import StatusReply
from dledger_mq.wire.peer_auth import CLUSTER_SECRET_FILE_NAME, write_cluster_secret

#: Fast Raft timing: heartbeats every 30 ms, elections after 200-400 ms.
TICK_MS = 10
HEARTBEAT_TICKS = 3
ELECTION_TICKS = 20

#: Generous upper bounds for a shared 2-core machine; tests normally finish far sooner.
DEADLINE_SECONDS = 15.0
STATUS_TIMEOUT_SECONDS = 2.0
POLL_SECONDS = 0.05
#: `fetch_all` and the `cluster status` command only speak to cluster "local".
CLUSTER_ID = "local"

Statuses = dict[str, StatusReply | None]


@attrs.define(eq=False)
class NodeProcess:
    node_id: str
    config: NodeConfig
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: Size of the log file when the current process started: its own lines come after.
    log_offset: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ProcessCluster:
    def __init__(
        self,
        root: Path,
        size: int = 3,
        with_naming: bool = False,
        with_http: bool = False,
        group: str = "broker-a",
        register_with: Iterable[str] = (),
        secret_file: Path | None = None,
        **settings: object,
    ) -> None:
        """``group``: the broker group these nodes form; ``register_with``: naming nodes run
        elsewhere (another group's) that they also register with; ``secret_file``: the
        cluster secret to share with that other group (default: a new one under ``root``)."""
        self.root = root
        self.group = group
        node_ids = [f"n{number}" for number in range(1, size + 1)]
        member_addresses, naming = cluster_on_free_ports(size, with_naming)
        members = {
            node_id: {"peer": member.peer, "client": member.client}
            for node_id, member in member_addresses.items()
        }
        #: node id -> the naming node it runs, when ``with_naming``.
        self.naming = naming
        #: node id -> its operator HTTP address (/metrics, /healthz, /readyz), ``with_http``.
        self.http = (
            {n: f"127.0.0.1:{port}" for n, port in zip(node_ids, free_ports(size), strict=True)}
            if with_http
            else {}
        )
        self.nodes: dict[str, NodeProcess] = {}
        #: nodes stopped by ``pause`` (SIGSTOP): running, but they cannot answer.
        self.paused: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)
        registered_with = list(self.naming.values()) + list(register_with)
        self.registered_with = registered_with
        self.settings = settings
        self.secret_file = secret_file or root / CLUSTER_SECRET_FILE_NAME
        if secret_file is None:
            write_cluster_secret(str(self.secret_file))  # every peer link authenticates
        for node_id in node_ids:
            directory = root / node_id
            directory.mkdir(parents=True, exist_ok=True)
            config = parse_config(
                {
                    "node_id": node_id,
                    "cluster_id": CLUSTER_ID,
                    "members": members,
                    "data_dir": str(directory / "data"),
                    "tick_ms": TICK_MS,
                    "heartbeat_ticks": HEARTBEAT_TICKS,
                    "election_ticks": ELECTION_TICKS,
                    "group": group,
                    "naming_listen": self.naming.get(node_id, ""),
                    "http_listen": self.http.get(node_id, ""),
                    "naming": registered_with,
                    "cluster_secret_file": str(self.secret_file),
                    **settings,
                }
            )
            config_path = directory / "node.toml"
            config_path.write_text(render_config(config))
            initialise_log(config)  # as `dledger-mq node --init` would
            self.nodes[node_id] = NodeProcess(node_id, config, config_path, directory / "node.log")

    def add_node(self, node_id: str) -> NodeProcess:
        """A new node for this group on free ports, as docs/operations.md ("Changing a group's
        members") tells an operator to make one: its node.toml lists the members and itself,
        itself a learner, with the same secret; its log made. Not started."""
        [peer_port, client_port] = free_ports(2)
        first = next(iter(self.nodes.values())).config
        members = {
            other: {"peer": member.peer, "client": member.client}
            for other, member in first.members.items()
        }
        members[node_id] = {"peer": f"127.0.0.1:{peer_port}", "client": f"127.0.0.1:{client_port}"}
        directory = self.root / node_id
        directory.mkdir(parents=True, exist_ok=True)
        config = parse_config(
            {
                "node_id": node_id,
                "cluster_id": CLUSTER_ID,
                "members": members,
                "learners": [node_id],
                "data_dir": str(directory / "data"),
                "tick_ms": TICK_MS,
                "heartbeat_ticks": HEARTBEAT_TICKS,
                "election_ticks": ELECTION_TICKS,
                "group": self.group,
                "naming": self.registered_with,
                "cluster_secret_file": str(self.secret_file),
                **self.settings,
            }
        )
        config_path = directory / "node.toml"
        config_path.write_text(render_config(config))
        initialise_log(config)
        node = self.nodes[node_id] = NodeProcess(
            node_id, config, config_path, directory / "node.log"
        )
        return node

    # -- addresses -----------------------------------------------------------------------------

    def client_address(self, node_id: str) -> str:
        return self.nodes[node_id].config.me.client

    def peer_address(self, node_id: str) -> str:
        return self.nodes[node_id].config.me.peer

    def endpoints(self, node_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        chosen = self.nodes if node_ids is None else list(node_ids)
        return [(node_id, self.client_address(node_id)) for node_id in chosen]

    @property
    def running(self) -> list[str]:
        return [node_id for node_id, node in self.nodes.items() if node.running]

    # -- processes -----------------------------------------------------------------------------

    def start(self, node_id: str) -> None:
        """Start (or restart, on the same data dir) one node in its own process group."""
        node = self.nodes[node_id]
        assert not node.running, f"{node_id} is already running"
        self.paused.discard(node_id)
        node.log_offset = self.log_mark(node_id)
        with open(node.log_path, "ab") as log_file:
            node.process = subprocess.Popen(
                [sys.executable, "-m", "dledger_mq", "node", "--config", str(node.config_path)],
                # Tests propose raw entries (``propose``): a harness-only door.
                env={**os.environ, HARNESS_ENVIRONMENT_VARIABLE: "raw-proposals"},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """SIGKILL the node's process group: a crash, nothing flushed or handed over."""
        process = self.nodes[node_id].process
        assert process is not None, f"{node_id} was never started"
        _kill_group(process)

    def pause(self, node_id: str) -> None:
        """SIGSTOP the node's process group: alive, connections open, silent."""
        process = self.nodes[node_id].process
        assert process is not None and process.poll() is None, f"{node_id} is not running"
        os.killpg(process.pid, signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        process = self.nodes[node_id].process
        assert process is not None, f"{node_id} was never started"
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)
        self.paused.discard(node_id)

    async def stop(self, node_id: str, timeout: float = DEADLINE_SECONDS) -> int:
        """SIGTERM (a graceful stop) and wait for the exit; returns the exit code. Only once
        the node answers: one still starting (importing, before it catches signals) dies of
        the signal instead (a known gap: it catches SIGTERM once it runs the node)."""
        process = self.nodes[node_id].process
        assert process is not None and process.poll() is None, f"{node_id} is not running"
        await self.wait_until(
            lambda statuses: statuses[node_id] is not None,
            f"{node_id} answering, before its graceful stop",
            [node_id],
        )
        process.send_signal(signal.SIGTERM)
        return await self.wait_exit(node_id, timeout)

    async def wait_exit(self, node_id: str, timeout: float = DEADLINE_SECONDS) -> int:
        process = self.nodes[node_id].process
        assert process is not None
        with trio.fail_after(timeout):
            while process.poll() is None:
                await trio.sleep(POLL_SECONDS)
        return process.returncode

    def kill_all(self) -> None:
        """SIGKILL every process group this cluster started, by PID, and reap them."""
        for node in self.nodes.values():
            if node.process is not None:
                _kill_group(node.process)

    # -- logs ----------------------------------------------------------------------------------

    def log_mark(self, node_id: str) -> int:
        """Where the node's log ends now: pass it as ``since`` to read only what follows."""
        path = self.nodes[node_id].log_path
        return path.stat().st_size if path.exists() else 0

    def log_text(self, node_id: str, since: int = 0) -> str:
        """The node's log from byte ``since`` (a ``log_mark``, or ``log_offset`` of this run)."""
        path = self.nodes[node_id].log_path
        if not path.exists():
            return ""
        return path.read_bytes()[since:].decode(errors="replace")

    def log_events(self, node_id: str, since: int = 0) -> list[dict[str, object]]:
        """The node's JSON log lines (the node logs JSON when stderr is not a terminal)."""
        events = []
        for line in self.log_text(node_id, since).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for node_id, node in self.nodes.items():
            process = node.process
            if process is None:
                state = "never started"
            elif process.poll() is None:
                state = f"running, pid {process.pid}"
            else:
                state = f"exited with code {process.returncode}"
            tail = self.log_text(node_id).splitlines()[-lines:]
            parts.append(f"---- {node_id} ({state}) {node.log_path} ----")
            parts.extend(tail)
        return "\n".join(parts)

    # -- status --------------------------------------------------------------------------------

    async def status(self, node_id: str) -> StatusReply | None:
        """The node's status, or None if it does not answer in time."""
        with trio.move_on_after(STATUS_TIMEOUT_SECONDS):
            # except*: errors raised inside `connect_admin` arrive wrapped in an ExceptionGroup
            # (see test_admin_client_raises_not_leader_itself), which is also why this does not
            # use the product's `fetch_all`.
            try:
                async with connect_admin(self.client_address(node_id), CLUSTER_ID) as admin:
                    return await admin.status()
            except* DledgerError:
                pass
        return None

    async def statuses(self, node_ids: Iterable[str] | None = None) -> Statuses:
        """Every chosen node's status at about the same moment (None: unreachable)."""
        chosen = list(self.nodes if node_ids is None else node_ids)
        results: Statuses = {}

        async def one(node_id: str) -> None:
            results[node_id] = await self.status(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in chosen:
                nursery.start_soon(one, node_id)
        return {node_id: results[node_id] for node_id in chosen}

    async def wait_until(
        self,
        predicate: Callable[[Statuses], bool],
        what: str,
        node_ids: Iterable[str] | None = None,
        timeout: float = DEADLINE_SECONDS,
    ) -> Statuses:
        """Poll the chosen nodes (default: the running ones) until ``predicate`` holds."""
        chosen = list(node_ids) if node_ids is not None else None
        statuses: Statuses = {}
        try:
            with trio.fail_after(timeout):
                while True:
                    statuses = await self.statuses(self.running if chosen is None else chosen)
                    if predicate(statuses):
                        return statuses
                    await trio.sleep(POLL_SECONDS)
        except trio.TooSlowError:
            raise AssertionError(
                f"not within {timeout} s: {what}; last statuses:\n{_describe(statuses)}"
            ) from None

    async def wait_for_leader(
        self,
        exclude: Iterable[str] = (),
        min_term: int = 0,
        timeout: float = DEADLINE_SECONDS,
    ) -> StatusReply:
        """A leader among the running nodes outside ``exclude`` with a term above ``min_term``,
        acknowledged by every running node outside ``exclude`` (same leader, same term).
        A running node that is not paused must answer: one still starting has not agreed yet."""
        excluded = set(exclude)
        statuses = await self.wait_until(
            lambda statuses: (
                agreed_leader(statuses, excluded, min_term) is not None
                and all(
                    status is not None
                    for node_id, status in statuses.items()
                    if node_id not in excluded and node_id not in self.paused
                )
            ),
            f"one leader (not {sorted(excluded)}, term > {min_term}) that all others follow",
            timeout=timeout,
        )
        leader = agreed_leader(statuses, excluded, min_term)
        assert leader is not None
        return leader

    async def wait_caught_up(
        self, index: int, node_ids: Iterable[str] | None = None, timeout: float = DEADLINE_SECONDS
    ) -> Statuses:
        """Every chosen node has committed and applied at least ``index``."""
        return await self.wait_until(
            lambda statuses: all(
                status is not None
                and status.commit_index >= index
                and status.applied_index >= index
                for status in statuses.values()
            ),
            f"every node applied index {index}",
            node_ids,
            timeout,
        )

    # -- proposals -----------------------------------------------------------------------------

    async def propose(self, data: bytes, timeout: float = DEADLINE_SECONDS) -> int:
        """Commit ``data`` through whichever node leads, retrying NotLeader and Unavailable."""
        last_error: BaseException | None = None
        try:
            with trio.fail_after(timeout):
                while True:
                    leader = await self.wait_for_leader()
                    try:
                        async with connect_admin(leader.address, CLUSTER_ID) as admin:
                            return await admin.propose(data)
                    except* (NotLeader, Unavailable) as group:
                        last_error = group.exceptions[0]
                    await trio.sleep(POLL_SECONDS)
        except trio.TooSlowError:
            raise AssertionError(
                f"proposal not committed within {timeout} s; last error: {last_error!r}"
            ) from None


def agreed_leader(
    statuses: Statuses, exclude: set[str] = frozenset(), min_term: int = 0
) -> StatusReply | None:
    """The leader every reachable node outside ``exclude`` reports, with the leader's term."""
    live = {
        node_id: s for node_id, s in statuses.items() if s is not None and node_id not in exclude
    }
    leaders = [s for s in live.values() if s.role == "leader" and s.term > min_term]
    if len(leaders) != 1:
        return None
    leader = leaders[0]
    if all(s.leader == leader.node_id and s.term == leader.term for s in live.values()):
        return leader
    return None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # Only while the child is not reaped is its PID (= its process group id) surely still ours.
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _describe(statuses: Statuses) -> str:
    lines = []
    for node_id, status in statuses.items():
        if status is None:
            lines.append(f"  {node_id}: unreachable")
        else:
            lines.append(
                f"  {node_id}: {status.role} term={status.term} leader={status.leader} "
                f"last={status.last_index} commit={status.commit_index} "
                f"applied={status.applied_index}"
            )
    return "\n".join(lines) or "  (none)"
