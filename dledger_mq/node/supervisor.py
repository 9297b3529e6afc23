"""`dledger-mq cluster up`: start the local cluster's nodes and keep them running.

The supervisor starts every node as its own process group, reports each exit in one line and
restarts a node that died on its own after a back-off (1 s, doubling up to 30 s while it keeps
dying soon after starting; back to 1 s once it stayed up), so that the cluster survives its own
nodes. From another terminal the lab verbs (``cluster kill|stop|start|restart|pause|resume``)
reach it through its control socket (``control.py``); a node taken down by ``kill`` or ``stop``
stays down until ``start``, so that a demonstration can show two nodes serving alone.

Beside the nodes it runs the services of the cluster (the dashboard, ``LocalService``) the
same way: its own process group, restarted after a back-off when it dies, reachable by the
lab verbs under its name (``cluster kill dashboard``), so that a service dying stops no node
and a node dying stops no service.

Each node's PID is recorded in ``nN/node.pid`` with the process's start time. A supervisor that
was itself killed leaves its nodes running; the next ``cluster up`` on the same folder finds
them through their pid files and supervises them again instead of starting them twice. Ctrl-C
(SIGINT), SIGTERM or SIGHUP stop every node gracefully.
"""

from __future__ import annotations

import enum
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from dledger_mq.errors import BadRequest, DledgerError
from dledger_mq.node.admin_user import admin_credentials, ensure_admin_user
from dledger_mq.node.cluster_layout import (
    DASHBOARD_DIRECTORY_NAME,
    DEFAULT_BASE_PORT,
    DEFAULT_NODE_COUNT,
    REMOVED_FILE_NAME,
    ClusterLayout,
    LocalNode,
    LocalService,
    dashboard_address,
    short_group_name,
)
from dledger_mq.node.cluster_status import (
    STATUS_TIMEOUT_SECONDS,
    leader_of,
    probe_all,
    status_objects,
    summary_line,
)
from dledger_mq.node.config import ConfigError
from dledger_mq.node.control import (
    LEADER_VERBS,
    ControlReply,
    ControlRequest,
    Verb,
    hold_supervisor_lock,
    serve_control,
)
from dledger_mq.node.harness import HarnessOptions
from dledger_mq.node.processes import (
    PidRecord,
    node_command,
    process_is_stopped,
    read_pid_file,
    remove_pid_file,
    signal_group,
    write_pid_file,
)
from dledger_mq.raft.storage.disk import OsDisk, make_directories
from dledger_mq.raft.storage.simulated_disks import PowerLossDisk
from dledger_mq.wire.client_auth import CREDENTIALS_FILE_NAME, Credentials

#: A graceful stop: the node hands leadership over and finishes its last fsync (about 3 s at
#: most); after this long it is killed.
STOP_GRACE_SECONDS = 10.0
#: How often an adopted node (not our child: no exit notification) is checked.
ADOPTED_POLL_SECONDS = 0.1
#: How long `kill leader` and `pause leader` wait for an election that is under way.
LEADER_WAIT_SECONDS = 3.0
STATUS_LINE_SECONDS = 1.0


class NodeState(enum.Enum):
    #: Started, not yet answering status requests.
    STARTING = "starting"
    RUNNING = "running"
    #: Stopped by SIGSTOP (``cluster pause``, or by hand): alive, silent.
    PAUSED = "paused"
    #: Died on its own; started again when its back-off ends.
    RESTARTING = "restarting"
    #: Taken down by ``cluster kill`` or ``cluster stop``; waits for ``cluster start``.
    DOWN = "down"
    #: Died on its own under ``--no-restart``; waits for ``cluster start``.
    EXITED = "exited"


@attrs.define
class RestartBackoff:
    """How long to wait before restarting a node that died: doubling while it keeps dying
    within ``stable_seconds`` of starting, reset once it ran longer."""

    first_seconds: float = 1.0
    max_seconds: float = 30.0
    stable_seconds: float = 10.0
    _next_seconds: float | None = None

    def after_exit(self, ran_seconds: float) -> float:
        if self._next_seconds is None or ran_seconds >= self.stable_seconds:
            self._next_seconds = self.first_seconds
        delay = self._next_seconds
        self._next_seconds = min(delay * 2, self.max_seconds)
        return delay

    def reset(self) -> None:
        self._next_seconds = None


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (exit code unknown: an earlier `cluster up` started it)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class _Handle:
    """One running node process: our child, or one adopted from an earlier supervisor."""

    def __init__(
        self, record: PidRecord, started_at: float, process: trio.Process | None = None
    ) -> None:
        self.record = record
        self.started_at = started_at
        self.process = process
        #: Set once the supervisor has handled this process's exit.
        self.gone = trio.Event()
        self.returncode: int | None = None
        self.exit_text = ""
        #: Whether it has answered a status request yet (until then it is "starting").
        self.answered = False

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def adopted(self) -> bool:
        return self.process is None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.returncode is None
        return self.record.is_running()

    async def wait(self) -> int | None:
        """The exit code (negative: the signal); None for an adopted process (unknowable)."""
        if self.process is not None:
            return await self.process.wait()
        while self.record.is_running():
            await trio.sleep(ADOPTED_POLL_SECONDS)
        return None

    def signal(self, signum: int) -> bool:
        """Signal the node's process group, only while it surely is still ours."""
        return self.alive() and signal_group(self.pid, signum)


@attrs.define(eq=False)
class _Node:
    """A supervised process: a node, or a service (``layout`` a ``LocalService``)."""

    layout: LocalNode | LocalService
    state: NodeState = NodeState.DOWN
    handle: _Handle | None = None
    backoff: RestartBackoff = attrs.Factory(RestartBackoff)
    restart_at: float = 0.0
    #: Why the current process is being taken down, when a verb does it.
    taken_down_by: str | None = None
    #: Set by ``cluster pause`` (where /proc cannot tell a stopped process).
    paused: bool = False
    #: Verbs on one node take turns.
    lock: trio.Lock = attrs.Factory(trio.Lock)
    #: Set (and replaced) when a verb changes what the node's watcher should do.
    wake: trio.Event = attrs.Factory(trio.Event)

    @property
    def node_id(self) -> str:
        return self.layout.node_id

    def poke(self) -> None:
        self.wake.set()
        self.wake = trio.Event()

    def shown_state(self) -> NodeState:
        if self.handle is not None and (self.paused or process_is_stopped(self.handle.pid)):
            return NodeState.PAUSED
        if self.handle is not None and not self.handle.answered:
            return NodeState.STARTING
        return self.state


class Supervisor:
    def __init__(
        self,
        layout: ClusterLayout,
        echo: Callable[[str], None],
        *,
        restart: bool = True,
        environment: Mapping[str, str] | None = None,
        command: Callable[[LocalNode], list[str]] = lambda node: node_command(node.config_path),
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        services: Sequence[LocalService] = (),
    ) -> None:
        self.layout = layout
        self.echo = echo
        self.restart = restart
        self.environment = None if environment is None else dict(environment)
        #: What runs as a node (tests stand a plain process in for it).
        self.command = command
        self.nodes = {node.node_id: _Node(node, backoff=backoff()) for node in layout.nodes}
        #: The dashboard, supervised like a node but no member of any group.
        self.services = {service.node_id: _Node(service, backoff=backoff()) for service in services}
        self.backoff = backoff
        self.stopping = False
        #: Where the node watchers run (a node added by `cluster add-replica` gets one too).
        self._nursery: trio.Nursery | None = None
        self.changed = trio.Event()
        #: Whom status probes sign in as (`cluster up`'s admin, once it exists).
        self.credentials: Credentials | None = None
        #: How probes reach a cluster that speaks TLS (its CA).
        self.tls = layout.client_tls()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start (or adopt) every node, supervise them until SIGINT/SIGTERM/SIGHUP or
        cancellation, then stop them all gracefully."""
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for node in self._processes():
                        await self._adopt_or_start(node)
                    for node in self._processes():
                        nursery.start_soon(self._watch, node)
                    await nursery.start(serve_control, self.layout.root, self.handle)
                    nursery.start_soon(self._report)
                    task_status.started()
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()
            self.echo("stopping...")
        finally:
            self.stopping = True
            with trio.CancelScope(shield=True):
                await self._stop_all()
        self.echo("stopped")

    def _processes(self) -> list[_Node]:
        return [*self.nodes.values(), *self.services.values()]

    async def _adopt_or_start(self, node: _Node) -> None:
        record = read_pid_file(node.layout.pid_path)
        if record is not None and record.is_running():
            node.handle = _Handle(record, trio.current_time())
            node.state = NodeState.RUNNING
            self.echo(f"{node.node_id}: already running (pid {record.pid}); supervising it again")
            return
        remove_pid_file(node.layout.pid_path)
        await self._start(node)

    async def _start(self, node: _Node) -> _Handle:
        layout = node.layout
        make_directories(OsDisk(), str(layout.log_path.parent))
        command = list(layout.command) if isinstance(layout, LocalService) else self.command(layout)
        with open(layout.log_path, "ab") as log_file:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=self.environment,
                start_new_session=True,  # its own process group: Ctrl-C here reaches only us
            )
        record = write_pid_file(layout.pid_path, process.pid) or PidRecord(process.pid, "?")
        node.handle = _Handle(record, trio.current_time(), process)
        node.state = NodeState.RUNNING
        node.paused = False
        node.poke()
        self._changed()
        return node.handle

    async def _watch(self, node: _Node) -> None:
        """React to the node's exits for as long as the supervisor runs."""
        while True:
            handle = node.handle
            if handle is None:
                wake = node.wake
                if node.state is NodeState.RESTARTING:
                    with trio.move_on_at(node.restart_at):
                        await wake.wait()
                    async with node.lock:
                        due = trio.current_time() >= node.restart_at
                        if node.handle is None and node.state is NodeState.RESTARTING and due:
                            handle = await self._start(node)
                            self.echo(f"{node.node_id}: started again (pid {handle.pid})")
                else:
                    await wake.wait()
                continue
            returncode = await handle.wait()
            self._handle_exit(node, handle, returncode)

    def _handle_exit(self, node: _Node, handle: _Handle, returncode: int | None) -> None:
        node.handle = None
        node.paused = False
        remove_pid_file(node.layout.pid_path)
        handle.returncode = returncode
        handle.exit_text = describe_exit(returncode)
        node_id, log_path = node.node_id, node.layout.log_path
        error = last_error_line(log_path) if returncode else None
        why = f" ({error})" if error else ""
        if node.taken_down_by is not None:
            node.state = NodeState.DOWN
            self.echo(f"{node_id}: {node.taken_down_by}; {self._stays_down(node)}")
            node.taken_down_by = None
        elif self.stopping:
            pass
        elif not self.restart:
            node.state = NodeState.EXITED
            self.echo(
                f"{node_id}: {handle.exit_text}{why}; see {log_path}; not restarted "
                f"(--no-restart): `dledger-mq cluster start {node_id}` starts it"
            )
        else:
            delay = node.backoff.after_exit(trio.current_time() - handle.started_at)
            node.state = NodeState.RESTARTING
            node.restart_at = trio.current_time() + delay
            self.echo(
                f"{node_id}: {handle.exit_text}{why}; see {log_path}; restarting in {delay:g} s"
            )
        handle.gone.set()
        self._changed()

    async def _stop_all(self) -> None:
        handles = [node.handle for node in self._processes() if node.handle is not None]
        for handle in handles:
            handle.signal(signal.SIGTERM)
            handle.signal(signal.SIGCONT)  # a paused node must run to stop
        with trio.move_on_after(STOP_GRACE_SECONDS):
            async with trio.open_nursery() as nursery:
                for handle in handles:
                    nursery.start_soon(handle.wait)
        for handle in handles:
            if handle.signal(signal.SIGKILL):
                await handle.wait()
        for node in self._processes():
            if node.handle is not None:
                remove_pid_file(node.layout.pid_path)
                node.handle = None
                node.state = NodeState.DOWN

    # -- what the status line and `cluster status` show ----------------------------------------

    def node_states(self) -> list[dict[str, object]]:
        return [self.node_states_of(node_id) for node_id in self.nodes]

    def node_states_of(self, node_id: str) -> dict[str, object]:
        node = self.nodes[node_id]
        return {
            "id": node_id,
            "state": node.shown_state().value,
            "pid": node.handle.pid if node.handle is not None else None,
        }

    async def _report(self) -> None:
        """One line whenever the leader, a role or a node's state changes."""
        last = ""
        while True:
            changed = self.changed
            states = {str(item["id"]): item for item in self.node_states()}
            probes = await probe_all(
                self.layout.endpoints, credentials=self.credentials, tls=self.tls
            )
            for node_id, _, found in probes:
                handle = self.nodes[node_id].handle
                if handle is not None and not handle.answered and not isinstance(found, str):
                    handle.answered = True
                    states[node_id] = self.node_states_of(node_id)
            line = summary_line(status_objects(probes, states))
            if line != last:
                self.echo(line)
                last = line
            with trio.move_on_after(STATUS_LINE_SECONDS):
                await changed.wait()

    # -- the lab verbs ---------------------------------------------------------------------------

    async def handle(self, request: ControlRequest) -> ControlReply:
        if request.verb is Verb.STATUS:
            return ControlReply(True, "", tuple(self.node_states()))
        assert request.node is not None
        if request.verb is Verb.ADD:
            message = await self._add(request.node)
            self._changed()
            return ControlReply(True, message, tuple(self.node_states()))
        if request.verb is Verb.RETIRE:
            message = await self._retire(request.node)
            self._changed()
            return ControlReply(True, message, tuple(self.node_states()))
        node_id, about = request.node, ""
        group_part, _, last = node_id.rpartition("/")
        if last == "leader":
            if request.verb not in LEADER_VERBS:
                raise BadRequest(f"{request.verb.value} takes a node id, not `leader`")
            node_id = await self._leader_id(self._group_named(group_part))
            about = " (the leader)" if not group_part else f" (the leader of {group_part})"
        try:
            node = self.services.get(node_id) or self.nodes[self.layout.node(node_id).node_id]
        except ConfigError:
            known = ", ".join([*self.nodes, *self.services])
            raise BadRequest(
                f"no node {node_id!r} in {self.layout.root} (nodes: {known})"
            ) from None
        verbs = {
            Verb.KILL: self._kill,
            Verb.STOP: self._stop,
            Verb.START: self._start_verb,
            Verb.RESTART: self._restart,
            Verb.PAUSE: self._pause,
            Verb.RESUME: self._resume,
        }
        async with node.lock:
            message = await verbs[request.verb](node, about)
        self._changed()
        return ControlReply(True, message, tuple(self.node_states()))

    async def _add(self, name: str) -> str:
        """A new node (``n4``, ``b/n4``): its folder and config made, started, supervised."""
        group_part, _, member_id = name.rpartition("/")
        group = self._group_named(group_part)
        try:
            local = self.layout.add_node(group, member_id)
        except ConfigError as error:
            raise BadRequest(str(error)) from None
        reloaded = ClusterLayout.load(self.layout.root)
        assert reloaded is not None
        self.layout = reloaded
        node = self.nodes[local.node_id] = _Node(local, backoff=self.backoff())
        handle = await self._start(node)
        assert self._nursery is not None
        self._nursery.start_soon(self._watch, node)
        return (
            f"started {local.node_id} (pid {handle.pid}): peer {local.peer}, client "
            f"{local.client}, data {local.data_dir}"
        )

    async def _retire(self, name: str) -> str:
        """Stop a removed node for good: marked, so that no later `cluster up` starts it."""
        try:
            local = self.layout.node(name)
        except ConfigError as error:
            raise BadRequest(str(error)) from None
        node = self.nodes[local.node_id]
        async with node.lock:
            message = (
                await self._stop(node, "")
                if node.handle is not None and node.handle.alive()
                else f"{local.node_id} was not running"
            )
        (local.directory / REMOVED_FILE_NAME).write_text("removed from its group\n")
        return f"{message.split(';')[0]}; it is no member any more: `cluster up` leaves it down"

    def _group_named(self, name: str) -> str:
        """The broker group ``name`` (``b`` or ``broker-b``) names; "" the only group."""
        groups = self.layout.groups
        if not name:
            if len(groups) > 1:
                shown = " or ".join(f"{short_group_name(g)}/leader" for g in groups)
                raise BadRequest(f"there are {len(groups)} broker groups: say {shown}")
            return groups[0]
        for group in groups:
            if name in (group, short_group_name(group)):
                return group
        raise BadRequest(f"no broker group {name!r} in {self.layout.root}")

    async def _leader_id(self, group: str) -> str:
        endpoints = [
            (node_id, node.layout.client)
            for node_id, node in self.nodes.items()
            if isinstance(node.layout, LocalNode)
            and node.handle is not None
            and node.shown_state() is not NodeState.PAUSED
            and node.layout.group == group
        ]
        with trio.move_on_after(LEADER_WAIT_SECONDS):
            while True:
                probes = await probe_all(endpoints, credentials=self.credentials, tls=self.tls)
                leader = leader_of(probes)
                if leader is not None:
                    return next(name for name, _, found in probes if found is leader)
                await trio.sleep(STATUS_TIMEOUT_SECONDS / 10)
        raise DledgerError(
            f"no node leads right now (asked {len(endpoints)} running nodes for "
            f"{LEADER_WAIT_SECONDS:g} s); name a node instead"
        )

    @staticmethod
    def _stays_down(node: _Node) -> str:
        return f"it stays down until `dledger-mq cluster start {node.node_id}`"

    def _not_running(self, node: _Node) -> str:
        """For kill and stop of a node with no process: a pending restart is called off."""
        if node.state is NodeState.RESTARTING:
            node.state = NodeState.DOWN
            node.poke()
            return f"{node.node_id} was waiting to restart; {self._stays_down(node)}"
        return f"{node.node_id} is already {node.state.value}"

    async def _kill(self, node: _Node, about: str) -> str:
        handle = node.handle
        if handle is None:
            return self._not_running(node)
        node.taken_down_by = "killed by `cluster kill`"
        handle.signal(signal.SIGKILL)
        await handle.gone.wait()
        return f"killed {node.node_id}{about}, pid {handle.pid} (SIGKILL); {self._stays_down(node)}"

    async def _stop(self, node: _Node, about: str) -> str:
        handle = node.handle
        if handle is None:
            return self._not_running(node)
        node.taken_down_by = "stopped by `cluster stop`"
        handle.signal(signal.SIGTERM)
        handle.signal(signal.SIGCONT)  # a paused node must run to stop
        with trio.move_on_after(STOP_GRACE_SECONDS):
            await handle.gone.wait()
        if not handle.gone.is_set():
            handle.signal(signal.SIGKILL)
            await handle.gone.wait()
        return f"stopped {node.node_id}{about} ({handle.exit_text}); {self._stays_down(node)}"

    async def _start_verb(self, node: _Node, about: str) -> str:
        if node.handle is not None:
            return f"{node.node_id} is already running (pid {node.handle.pid})"
        node.backoff.reset()
        handle = await self._start(node)
        return f"started {node.node_id} (pid {handle.pid})"

    async def _restart(self, node: _Node, about: str) -> str:
        stopped = await self._stop(node, about) if node.handle is not None else ""
        node.backoff.reset()
        handle = await self._start(node)
        how = f"{stopped.split(';')[0]}; " if stopped else ""
        return f"{how}started {node.node_id} again (pid {handle.pid})"

    async def _pause(self, node: _Node, about: str) -> str:
        handle = node.handle
        if handle is None:
            raise BadRequest(f"{node.node_id} is {node.state.value}: only a running node pauses")
        if node.shown_state() is NodeState.PAUSED:
            return f"{node.node_id} is already paused"
        handle.signal(signal.SIGSTOP)
        node.paused = True
        return (
            f"paused {node.node_id}{about}, pid {handle.pid} (SIGSTOP); "
            f"`dledger-mq cluster resume {node.node_id}` wakes it"
        )

    async def _resume(self, node: _Node, about: str) -> str:
        handle = node.handle
        if handle is None or node.shown_state() is not NodeState.PAUSED:
            return f"{node.node_id} is not paused ({node.shown_state().value})"
        handle.signal(signal.SIGCONT)
        node.paused = False
        return f"resumed {node.node_id} (pid {handle.pid})"


#: How much of a node's log's end is searched for its last words.
LOG_TAIL_BYTES = 8192


def last_error_line(log_path: Path) -> str | None:
    """What a node that failed said last (its one ``Error: ...`` line), if it said it."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - LOG_TAIL_BYTES))
            tail = log.read().decode(errors="replace")
    except OSError:
        return None
    lines = tail.splitlines()
    if lines and lines[-1].startswith("Error: "):
        return lines[-1].removeprefix("Error: ")
    return None


def local_node_states(layout: ClusterLayout) -> dict[str, dict[str, object]]:
    """Each node's state as its pid file tells, when no supervisor runs: running, paused or
    down."""
    states: dict[str, dict[str, object]] = {}
    for node in layout.nodes:
        record = read_pid_file(node.pid_path)
        if record is not None and record.is_running():
            state = NodeState.PAUSED if process_is_stopped(record.pid) else NodeState.RUNNING
            states[node.node_id] = {"state": state.value, "pid": record.pid}
        else:
            states[node.node_id] = {"state": NodeState.DOWN.value, "pid": None}
    return states


def dashboard_service(layout: ClusterLayout) -> LocalService | None:
    """`cluster up`'s dashboard (on ``dashboard_address``), None if the base port leaves no
    room for it."""
    address = dashboard_address(layout.base_port)
    if not address:
        return None
    command = [sys.executable, "-m", "dledger_mq", "dashboard"]
    command += ["--root", str(layout.root), "--listen", address]
    return LocalService(
        "dashboard", layout.root / DASHBOARD_DIRECTORY_NAME, tuple(command), address
    )


def startup_lines(layout: ClusterLayout) -> list[str]:
    lines = [
        f"{node.node_id}: {node.group}, "
        + (f"naming {node.naming}, " if node.naming else "")
        + f"client {node.client}, peer {node.peer}, "
        + (f"metrics http://{node.http}/metrics, " if node.http else "")
        + f"data {node.data_dir}, log {node.log_path}"
        for node in layout.nodes
    ]
    root = "" if layout.root == Path(".dledger-mq") else f" --root {layout.root}"
    leader = "leader" if len(layout.groups) == 1 else "a/leader"
    lines.append(
        f"Ctrl-C stops all {len(layout.nodes)} nodes. From another terminal in this folder: "
        f"dledger-mq cluster status{root} | cluster kill {leader}{root} | "
        f"cluster start NODE{root} (also stop, restart, pause, resume)"
    )
    return lines


def _layout_for(
    root: Path, node_count: int | None, base_port: int | None, group_count: int | None = None
) -> ClusterLayout:
    """The cluster under ``root``, or a new one; flags that contradict an existing cluster
    are refused rather than ignored. More ``group_count`` than it has adds broker groups."""
    existing = ClusterLayout.load(root)
    if existing is None:
        return ClusterLayout.derive(
            root, node_count or DEFAULT_NODE_COUNT, base_port or DEFAULT_BASE_PORT, group_count or 1
        )
    afresh = f"(remove {root} to start a new cluster)"
    per_group = len(existing.group_nodes(existing.groups[0]))
    groups = len(existing.groups)
    if node_count is not None and node_count != per_group:
        nodes = "nodes" if groups == 1 else "nodes per group"
        raise ConfigError(
            f"{root} holds a cluster of {per_group} {nodes}, not {node_count} {afresh}"
        )
    if group_count is not None and group_count < groups:
        raise ConfigError(f"{root} holds {groups} broker groups: groups are never removed")
    if base_port is not None and base_port != existing.base_port:
        raise ConfigError(
            f"{root} holds a cluster on base port {existing.base_port}, not {base_port} {afresh}"
        )
    if group_count is not None and group_count > groups:
        return existing.with_groups(group_count)
    return existing


async def run_cluster_up(
    root: Path,
    echo: Callable[[str], None],
    node_count: int | None = None,
    base_port: int | None = None,
    flush: str | None = None,
    restart: bool = True,
    tls: bool = False,
    group_count: int | None = None,
) -> None:
    """``dledger-mq cluster up``: create the cluster under ``root`` unless it exists (with
    ``tls``: its CA and node certificates too; ``group_count`` broker groups, adding groups to
    an existing cluster), then supervise it until a signal stops it."""
    harness = HarnessOptions.from_environment()
    # Under the harness's power-loss model the configs go through the same lossy disk as the
    # nodes' logs: what was not fsynced does not survive a kill.
    disk = PowerLossDisk() if harness.lose_unsynced else OsDisk()
    make_directories(disk, str(root))
    with hold_supervisor_lock(root):
        layout = _layout_for(root, node_count, base_port, group_count)
        created = ClusterLayout.load(root) is None
        if tls and not created and not layout.has_tls:
            raise ConfigError(
                f"{root} holds a cluster without TLS: --tls only when a cluster is created "
                f"(remove {root} to start a new cluster)"
            )
        layout.write_configs(flush or "sync", disk, tls=tls)
        what = "a new cluster" if created else "the cluster"
        groups = len(layout.groups)
        of_groups = f" in {groups} broker groups" if groups > 1 else ""
        echo(
            f"{what} in {root}: {len(layout.nodes)} nodes{of_groups}, base port {layout.base_port}"
        )
        for line in startup_lines(layout):
            echo(line)
        if layout.has_tls:
            echo(f"TLS on every port; clients trust {layout.ca_file} (DLEDGER_MQ_TLS_CA)")
        credentials, known = admin_credentials(root, echo)
        dashboard = dashboard_service(layout)
        if dashboard is not None:
            echo(
                f"dashboard http://{dashboard.address} (sign in as {credentials.access_key!r}, "
                f"its secret key in {root / CREDENTIALS_FILE_NAME}; log {dashboard.log_path})"
            )
        else:
            echo(f"no dashboard: base port {layout.base_port} leaves no unprivileged port for it")
        supervisor = Supervisor(
            layout, echo, restart=restart, services=[dashboard] if dashboard else []
        )
        if known:
            supervisor.credentials = credentials  # the user exists: status lines at once

        def signed_in() -> None:
            supervisor.credentials = credentials
            supervisor._changed()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                ensure_admin_user, layout, credentials, echo, signed_in, supervisor.tls, known
            )
            await supervisor.run()
            nursery.cancel_scope.cancel()
