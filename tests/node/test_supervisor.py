"""The supervisor of `cluster up`, in-process, with plain processes standing in for nodes: a
node that dies is restarted after a doubling back-off and the others keep running; the lab
verbs act through the control socket; a node taken down by a verb stays down until `start`;
nodes left running by a supervisor that was killed are adopted, not started twice."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dledger_mq.node import supervisor as supervisor_module
from dledger_mq.node.cluster_layout import ClusterLayout, LocalNode
from dledger_mq.node.control import (
    ControlRefused,
    ControlRequest,
    SupervisorAlreadyRunning,
    SupervisorNotRunning,
    Verb,
    call_supervisor,
    hold_supervisor_lock,
    socket_path,
)
from dledger_mq.node.processes import (
    process_is_stopped,
    process_start_time,
    read_pid_file,
    write_pid_file,
)
from dledger_mq.node.supervisor import RestartBackoff, Supervisor, describe_exit

DEADLINE_SECONDS = 15.0
#: A stand-in node: runs until SIGTERM, then exits 0 as a node's graceful stop does. Once it
#: handles SIGTERM it writes its pid to ``ready`` in the node's folder.
SLEEPER_CODE = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(sys.argv[1] + ".tmp", "w") as ready:
    ready.write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
"""


def sleeper(node: LocalNode) -> list[str]:
    return [sys.executable, "-c", SLEEPER_CODE, str(node.directory / "ready")]


CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def fast_backoff() -> RestartBackoff:
    return RestartBackoff(first_seconds=0.05, max_seconds=0.4, stable_seconds=60)


def make_layout(root: Path) -> ClusterLayout:
    # Port 1..19: nothing listens there, so the status probes fail fast.
    layout = ClusterLayout.derive(root, base_port=1)
    layout.write_configs("sync")
    return layout


@asynccontextmanager
async def supervising(
    root: Path,
    command: Callable[[LocalNode], list[str]] = sleeper,
    restart: bool = True,
) -> AsyncIterator[tuple[Supervisor, list[str]]]:
    lines: list[str] = []
    layout = make_layout(root)
    supervisor = Supervisor(
        layout, lines.append, restart=restart, command=command, backoff=fast_backoff
    )
    with hold_supervisor_lock(root):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            try:
                yield supervisor, lines
            finally:
                nursery.cancel_scope.cancel()


async def until(supervisor: Supervisor, predicate: Callable[[], bool], what: str) -> None:
    try:
        with trio.fail_after(DEADLINE_SECONDS):
            while True:
                changed = supervisor.changed
                if predicate():
                    return
                with trio.move_on_after(0.05):  # pid files and /proc change without an event
                    await changed.wait()
    except trio.TooSlowError:
        raise AssertionError(f"not within {DEADLINE_SECONDS} s: {what}") from None


async def ready(supervisor: Supervisor, node_id: str) -> int:
    """The node's pid, once that process handles SIGTERM."""
    path = supervisor.layout.node(node_id).directory / "ready"

    def handles_sigterm() -> bool:
        pid = pid_of(supervisor, node_id)
        return pid is not None and path.exists() and path.read_text() == str(pid)

    await until(supervisor, handles_sigterm, f"{node_id} ready")
    pid = pid_of(supervisor, node_id)
    assert pid is not None
    return pid


def pid_of(supervisor: Supervisor, node_id: str) -> int | None:
    handle = supervisor.nodes[node_id].handle
    return None if handle is None else handle.pid


def state_of(supervisor: Supervisor, node_id: str) -> str:
    return supervisor.nodes[node_id].shown_state().value


async def verb(root: Path, name: Verb, node: str) -> str:
    return (await call_supervisor(root, ControlRequest(name, node))).message


def test_the_back_off_doubles_while_a_node_keeps_dying_and_resets_once_it_stayed_up() -> None:
    backoff = RestartBackoff(first_seconds=1, max_seconds=30, stable_seconds=10)
    assert [backoff.after_exit(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after_exit(10) == 1  # it ran long enough: start again from 1 s
    assert backoff.after_exit(0.1) == 2
    backoff.reset()
    assert backoff.after_exit(0.1) == 1


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (-9, "was killed by SIGKILL"),
        (3, "exited with code 3"),
        (None, "exited (exit code unknown: an earlier `cluster up` started it)"),
    ],
)
def test_an_exit_is_described_in_words(returncode: int | None, text: str) -> None:
    assert describe_exit(returncode) == text


async def test_a_node_that_dies_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (supervisor, lines):
        before = {node_id: pid_of(supervisor, node_id) for node_id in supervisor.nodes}
        victim = before["n2"]
        assert victim is not None
        signal_pid(victim, signal.SIGKILL)  # what a user does from another terminal
        await until(supervisor, lambda: pid_of(supervisor, "n2") not in (None, victim), "restart")
        assert any(
            line.startswith("n2: was killed by SIGKILL; see ") and "restarting in 0.05 s" in line
            for line in lines
        ), lines
        assert pid_of(supervisor, "n1") == before["n1"]
        assert pid_of(supervisor, "n3") == before["n3"]
        for node_id in ("n1", "n3"):
            assert process_start_time(before[node_id] or 0) is not None
        record = read_pid_file(supervisor.layout.node("n2").pid_path)
        assert record is not None and record.pid == pid_of(supervisor, "n2")


async def test_a_node_that_keeps_dying_is_restarted_with_a_doubling_back_off(
    tmp_path: Path,
) -> None:
    def command(node: LocalNode) -> list[str]:
        return CRASHER if node.node_id == "n1" else sleeper(node)

    async with supervising(tmp_path, command) as (supervisor, lines):
        await until(
            supervisor,
            lambda: sum(line.startswith("n1: exited with code 3") for line in lines) >= 5,
            "five crashes",
        )
        delays = [line.rsplit(" ", 2)[1] for line in lines if line.startswith("n1: exited")]
        assert delays[:5] == ["0.05", "0.1", "0.2", "0.4", "0.4"]
        assert state_of(supervisor, "n2") == "starting"  # never answered: no real node


async def test_with_no_restart_a_dead_node_stays_exited_until_start(tmp_path: Path) -> None:
    async with supervising(tmp_path, restart=False) as (supervisor, lines):
        victim = pid_of(supervisor, "n1")
        assert victim is not None
        signal_pid(victim, signal.SIGKILL)
        await until(supervisor, lambda: state_of(supervisor, "n1") == "exited", "n1 exited")
        assert "not restarted (--no-restart)" in lines[-1]
        assert "started" in await verb(tmp_path, Verb.START, "n1")
        assert pid_of(supervisor, "n1") not in (None, victim)


async def test_kill_and_stop_keep_a_node_down_until_start(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (supervisor, lines):
        killed = pid_of(supervisor, "n1")
        reply = await verb(tmp_path, Verb.KILL, "n1")
        assert reply == (
            f"killed n1, pid {killed} (SIGKILL); it stays down until `dledger-mq cluster start n1`"
        )
        assert state_of(supervisor, "n1") == "down" and pid_of(supervisor, "n1") is None
        assert not (tmp_path / "n1" / "node.pid").exists()
        # Another node's crash and restart take longer than n1's back-off would: n1 stays down.
        crashed = pid_of(supervisor, "n2")
        assert crashed is not None
        signal_pid(crashed, signal.SIGKILL)
        await until(supervisor, lambda: pid_of(supervisor, "n2") not in (None, crashed), "n2 back")
        assert state_of(supervisor, "n1") == "down"
        assert await verb(tmp_path, Verb.KILL, "n1") == "n1 is already down"

        await ready(supervisor, "n3")
        stopped = await verb(tmp_path, Verb.STOP, "n3")
        assert stopped.startswith("stopped n3 (exited with code 0); it stays down until")
        assert "n3: stopped by `cluster stop`; it stays down" in lines[-1]

        assert (await verb(tmp_path, Verb.START, "n1")).startswith("started n1 (pid ")
        assert (await verb(tmp_path, Verb.START, "n1")).startswith("n1 is already running")
        assert state_of(supervisor, "n1") in ("starting", "running")
        status = await call_supervisor(tmp_path, ControlRequest(Verb.STATUS))
        assert [node["state"] for node in status.nodes] == ["starting", "starting", "down"]


async def test_restart_starts_a_new_process(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (supervisor, _):
        before = await ready(supervisor, "n2")
        reply = await verb(tmp_path, Verb.RESTART, "n2")
        assert reply.startswith("stopped n2 (exited with code 0); started n2 again (pid ")
        assert pid_of(supervisor, "n2") not in (None, before)


async def test_pause_and_resume(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (supervisor, _):
        pid = await ready(supervisor, "n3")
        assert (await verb(tmp_path, Verb.PAUSE, "n3")).startswith(f"paused n3, pid {pid}")
        await until(supervisor, lambda: process_is_stopped(pid), "n3 stopped by SIGSTOP")
        assert state_of(supervisor, "n3") == "paused"
        assert await verb(tmp_path, Verb.PAUSE, "n3") == "n3 is already paused"
        assert await verb(tmp_path, Verb.RESUME, "n3") == f"resumed n3 (pid {pid})"
        await until(supervisor, lambda: not process_is_stopped(pid), "n3 running again")
        assert state_of(supervisor, "n3") != "paused"
        # A paused node is still stopped gracefully with the others.
        await verb(tmp_path, Verb.PAUSE, "n3")
    assert process_start_time(pid) is None


async def test_stopping_the_supervisor_stops_every_node(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (supervisor, _):
        pids = [await ready(supervisor, node_id) for node_id in supervisor.nodes]
    assert all(pid is not None and process_start_time(pid) is None for pid in pids)
    assert not list(tmp_path.glob("*/node.pid"))
    assert not socket_path(tmp_path).exists()


async def test_nodes_left_running_by_a_killed_supervisor_are_adopted(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    orphans = {}
    for node in layout.nodes:
        process = await trio.lowlevel.open_process(sleeper(node), start_new_session=True)
        write_pid_file(node.pid_path, process.pid)
        orphans[node.node_id] = process
    with trio.fail_after(DEADLINE_SECONDS):
        while not all((node.directory / "ready").exists() for node in layout.nodes):
            await trio.sleep(0.01)
    try:
        async with supervising(tmp_path) as (supervisor, lines):
            assert {node_id: pid_of(supervisor, node_id) for node_id in orphans} == {
                node_id: process.pid for node_id, process in orphans.items()
            }
            assert "n1: already running (pid " in lines[0]
            # An adopted node is not our child: its exit is seen all the same.
            signal_pid(orphans["n2"].pid, signal.SIGKILL)
            await until(supervisor, lambda: state_of(supervisor, "n2") != "starting", "n2 exit")
            await until(supervisor, lambda: pid_of(supervisor, "n2") is not None, "n2 restarted")
            assert pid_of(supervisor, "n2") != orphans["n2"].pid
            assert any("n2: exited (exit code unknown" in line for line in lines)
            assert "killed n1" in await verb(tmp_path, Verb.KILL, "n1")
        # Stopping the supervisor stopped the adopted n3 too.
        with trio.fail_after(DEADLINE_SECONDS):
            assert await orphans["n3"].wait() == 0
    finally:
        for process in orphans.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_verbs_name_what_they_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "LEADER_WAIT_SECONDS", 0.2)
    async with supervising(tmp_path):
        with pytest.raises(ControlRefused, match=r"no node 'n9' in .* \(nodes: n1, n2, n3\)"):
            await verb(tmp_path, Verb.KILL, "n9")
        with pytest.raises(ControlRefused, match="resume takes a node id, not `leader`"):
            await verb(tmp_path, Verb.RESUME, "leader")
        with pytest.raises(ControlRefused, match="no node leads right now"):
            await verb(tmp_path, Verb.KILL, "leader")
        await verb(tmp_path, Verb.KILL, "n1")
        with pytest.raises(ControlRefused, match="n1 is down: only a running node pauses"):
            await verb(tmp_path, Verb.PAUSE, "n1")


async def test_a_second_supervisor_of_one_folder_is_refused(tmp_path: Path) -> None:
    with (
        hold_supervisor_lock(tmp_path),
        pytest.raises(SupervisorAlreadyRunning),
        hold_supervisor_lock(tmp_path),
    ):
        pass
    with hold_supervisor_lock(tmp_path):  # released by the first one's end
        pass


async def test_lab_verbs_refuse_when_no_supervisor_runs(tmp_path: Path) -> None:
    with pytest.raises(SupervisorNotRunning, match="no `dledger-mq cluster up` is running"):
        await call_supervisor(tmp_path, ControlRequest(Verb.KILL, "n1"))
    # A socket file a killed supervisor left behind, that nobody listens on.
    stale = trio.socket.socket(trio.socket.AF_UNIX)
    await stale.bind(str(socket_path(tmp_path)))
    stale.close()
    with pytest.raises(SupervisorNotRunning):
        await call_supervisor(tmp_path, ControlRequest(Verb.KILL, "n1"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"nonsense", "one JSON object"),
        (b'{"verb": "explode", "node": "n1"}', "unknown verb 'explode'"),
        (b'{"verb": "kill"}', "kill needs a node"),
        (b'{"verb": "kill", "node": 7}', "node must be a node id"),
        (b'{"verb": "status", "extra": 1}', '{"verb": ..., "node": ...}'),
    ],
)
def test_a_malformed_control_request_is_refused_with_a_reason(line: bytes, message: str) -> None:
    from dledger_mq.errors import BadRequest

    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        ControlRequest.from_line(line)


async def test_an_overlong_control_line_is_refused(tmp_path: Path) -> None:
    async with supervising(tmp_path):
        stream = await trio.open_unix_socket(str(socket_path(tmp_path)))
        async with stream:
            await stream.send_all(b"x" * (100 << 10))
            reply = await stream.receive_some(4096)
        assert b"a control line is at most" in reply


def signal_pid(pid: int, signum: int) -> None:
    import os

    os.kill(pid, signum)


async def test_the_exit_line_quotes_what_the_node_said_last(tmp_path: Path) -> None:
    says_why = [
        sys.executable,
        "-c",
        "import sys; print('Error: address already in use', file=sys.stderr); sys.exit(1)",
    ]

    def command(node: LocalNode) -> list[str]:
        return says_why if node.node_id == "n3" else sleeper(node)

    async with supervising(tmp_path, command, restart=False) as (supervisor, lines):
        await until(supervisor, lambda: state_of(supervisor, "n3") == "exited", "n3 exited")
        assert lines[-1].startswith("n3: exited with code 1 (address already in use); see "), lines[
            -1
        ]
