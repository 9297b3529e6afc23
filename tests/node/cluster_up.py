"""`dledger-mq cluster up` run as a user runs it: the installed command, in its own folder, on a
base port whose twenty ports are free, with the lab verbs and `cluster status` as further
commands. Everything it started is killed at the end by PID (the supervisor's process group and
every node's and the dashboard's, as their pid files and statuses named them), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import trio

from dledger_mq.node.cluster_layout import HTTP_PORTS_BELOW_BASE, PORT_SPAN, ClusterLayout
from dledger_mq.node.cluster_status import fetch_all
from dledger_mq.node.processes import process_start_time, read_pid_file
from dledger_mq.wire.admin import StatusReply
from dledger_mq.wire.client_auth import (
    CREDENTIALS_FILE_NAME,
    Credentials,
    read_credentials_file,
)

DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.05


def dledger_mq_command() -> list[str]:
    """The `dledger-mq` the README's install put beside this Python, else the module."""
    script = Path(sys.executable).with_name("dledger-mq")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dledger_mq"]


def free_base_port(rng: random.Random | None = None, groups: int = 1) -> int:
    """A base port whose ``PORT_SPAN`` ports (per group) are all free now, all bound at once
    to check, and below the kernel's ephemeral range, where other tests' client ports come
    from."""
    rng = rng or random.Random()
    span = PORT_SPAN * groups
    for _ in range(100):
        base = rng.randrange(10_000, 32_000 - span)
        sockets = []
        http_ports = range(base - HTTP_PORTS_BELOW_BASE, base - HTTP_PORTS_BELOW_BASE + 5 * groups)
        try:
            for port in [*http_ports, *range(base, base + span)]:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no free block of ports")


class ClusterUp:
    def __init__(
        self,
        folder: Path,
        *arguments: str,
        environment: Mapping[str, str] | None = None,
        base_port: int | None = None,
    ) -> None:
        self.folder = folder
        self.base_port = base_port or free_base_port()
        self.arguments = ["--base-port", str(self.base_port), *arguments]
        self.environment = dict(os.environ if environment is None else environment)
        self.output_path = folder / "cluster-up.out"
        self.process: subprocess.Popen[bytes] | None = None
        #: Every (pid, start time) of a node seen, so that the end kills each one still running.
        self.node_pids: set[tuple[int, str]] = set()

    @property
    def root(self) -> Path:
        return self.folder / ".dledger-mq"

    # -- the supervisor --------------------------------------------------------------------------

    def start(self) -> None:
        """`dledger-mq cluster up --base-port N ...` in ``folder``, its output to a file."""
        assert self.process is None or self.process.poll() is not None
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(
                [*dledger_mq_command(), "cluster", "up", *self.arguments],
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def interrupt(self) -> None:
        """Ctrl-C in the terminal that runs `cluster up`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)

    def kill_supervisor(self) -> None:
        """SIGKILL `cluster up` alone; its nodes, in process groups of their own, run on."""
        assert self.process is not None
        self.remember_node_pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    async def wait_exit(self, timeout: float = DEADLINE_SECONDS) -> int:
        assert self.process is not None
        with trio.fail_after(timeout):
            while self.process.poll() is None:
                await trio.sleep(POLL_SECONDS)
        return self.process.returncode

    # -- what a user types in another terminal ---------------------------------------------------

    def run(self, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`dledger-mq ARGUMENTS` in the cluster's folder."""
        return subprocess.run(
            [*dledger_mq_command(), *arguments],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment,
            check=False,
        )

    async def dledger(self, *arguments: str) -> str:
        """`dledger-mq ARGUMENTS`, which must succeed; its standard output."""
        result = await trio.to_thread.run_sync(lambda: self.run(*arguments))
        assert result.returncode == 0, (arguments, result.stdout, result.stderr)
        return result.stdout

    async def status(self) -> list[dict[str, object]]:
        """`dledger-mq cluster status --json` (it exits 1 while no node answers)."""
        result = await trio.to_thread.run_sync(lambda: self.run("cluster", "status", "--json"))
        objects = json.loads(result.stdout)
        assert isinstance(objects, list), result
        for node in objects:
            if isinstance(node.get("pid"), int):
                self._remember(node["pid"])
        return objects

    @property
    def naming(self) -> str:
        layout = ClusterLayout.load(self.root)
        assert layout is not None
        return ",".join(layout.naming.values())

    # -- watching the nodes directly (fast enough to time an election) ---------------------------

    @property
    def credentials(self) -> Credentials | None:
        """The admin `cluster up` made (None until it wrote them)."""
        return read_credentials_file(self.root / CREDENTIALS_FILE_NAME)

    async def statuses(self) -> dict[str, StatusReply | None]:
        layout = ClusterLayout.load(self.root)
        if layout is None:
            return {}
        statuses = await fetch_all(
            layout.endpoints, credentials=self.credentials, tls=layout.client_tls()
        )
        return {node_id: status for node_id, _, status in statuses}

    async def wait_until(
        self,
        predicate: Callable[[dict[str, StatusReply | None]], bool],
        what: str,
        timeout: float = DEADLINE_SECONDS,
    ) -> dict[str, StatusReply | None]:
        statuses: dict[str, StatusReply | None] = {}
        try:
            with trio.fail_after(timeout):
                while True:
                    statuses = await self.statuses()
                    if statuses and predicate(statuses):
                        return statuses
                    await trio.sleep(POLL_SECONDS)
        except trio.TooSlowError:
            raise AssertionError(
                f"not within {timeout} s: {what}\n{statuses}\n{self.output()[-3000:]}"
            ) from None

    async def wait_for_leader(
        self, exclude: Sequence[str] = (), timeout: float = DEADLINE_SECONDS
    ) -> StatusReply:
        def one_leader(statuses: dict[str, StatusReply | None]) -> bool:
            leaders = [
                s for n, s in statuses.items() if s and s.role == "leader" and n not in exclude
            ]
            return len(leaders) == 1

        statuses = await self.wait_until(one_leader, f"a leader other than {exclude}", timeout)
        [leader] = [s for n, s in statuses.items() if s and s.role == "leader" and n not in exclude]
        return leader

    async def wait_caught_up(self, node_id: str, index: int) -> StatusReply:
        statuses = await self.wait_until(
            lambda statuses: (
                (status := statuses.get(node_id)) is not None
                and status.role == "follower"
                and status.applied_index >= index
            ),
            f"{node_id} following and applied up to {index}",
        )
        status = statuses[node_id]
        assert status is not None
        return status

    # -- the end ---------------------------------------------------------------------------------

    def _remember(self, pid: int) -> None:
        start_time = process_start_time(pid)
        if start_time is not None:
            self.node_pids.add((pid, start_time))

    def remember_node_pids(self) -> None:
        pid_files = [*self.root.glob("*/node.pid"), *self.root.glob("*/*/node.pid")]
        pid_files += self.root.glob("dashboard/dashboard.pid")  # supervised like the nodes
        for path in pid_files:
            record = read_pid_file(path)
            if record is not None:
                self._remember(record.pid)

    def kill_everything(self) -> None:
        """SIGKILL the supervisor's group and every node group ever seen, by PID, when the
        PID is still the same process."""
        if self.process is not None and self.process.poll() is None:
            self.remember_node_pids()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.remember_node_pids()
        for pid, start_time in self.node_pids:
            if process_start_time(pid) == start_time:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster_up(folder: Path, *arguments: str, **options: object) -> Iterator[ClusterUp]:
    """A started `cluster up` that is always killed, with all its nodes, at the end; its
    output is printed when the test fails."""
    up = ClusterUp(folder, *arguments, **options)  # type: ignore[arg-type]
    try:
        up.start()
        yield up
    except BaseException:
        print(up.output()[-5000:])
        raise
    finally:
        up.kill_everything()


def power_cut(up: ClusterUp) -> None:
    """Every process of the cluster killed at once; with ``DLEDGER_MQ_HARNESS=lose-unsynced``
    each loses what it had not fsynced, as in a power cut. Waits first until the dashboard's
    pid file is written: the dashboard runs in a process group of its own, and one started but
    not yet written down would outlive the cut (it did, once, in CI)."""
    dashboard_pid = up.root / "dashboard" / "dashboard.pid"
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not dashboard_pid.exists():
        assert time.monotonic() < deadline, "cluster up wrote no dashboard.pid"
        time.sleep(0.01)
    up.kill_everything()
    deadline = time.monotonic() + DEADLINE_SECONDS
    for pid, start_time in up.node_pids:
        while process_start_time(pid) == start_time:  # SIGKILL lands a moment later
            assert time.monotonic() < deadline, f"node {pid} survived the power cut"
            time.sleep(0.01)
