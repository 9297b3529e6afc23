"""Every CLI failure is one readable line on stderr and a non-zero exit, never a traceback:
bad addresses, unreachable clusters, refused requests; a command that waits says why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from dledger_mq.cli.main import explain
from dledger_mq.errors import Unavailable
from tests.node.cluster_up import dledger_mq_command

#: Ports where nothing listens (below 1024, never handed out as ephemeral ones).
DEAD = "127.0.0.1:1"


def run(*arguments: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dledger_mq_command(), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (("cluster", "status", "--endpoints", "nonsense"), "--endpoints: expected HOST:PORT"),
        (("topic", "list", "--endpoints", "127.0.0.1:99999"), "--endpoints: expected HOST:PORT"),
        (("send", "t", "b", "--naming", "x"), "--naming: expected HOST:PORT, got 'x'"),
        (("send", "t", "b", "--property", "novalue"), "--property: expected NAME=VALUE"),
        (("topic", "update", "orders"), "give --queues, --fifo, --no-fifo or --add-group"),
        (("cluster", "up", "--nodes", "4"), "'4' is not one of '3', '5'"),
        (("nonsense",), "No such command 'nonsense'"),
        (
            ("message", "list", "--topic", "t", "--queue", "0", "--from-time", "yesterday"),
            "--from-time: 'yesterday' is neither ISO 8601 nor milliseconds",
        ),
        (
            (
                "message",
                "list",
                "--topic",
                "t",
                "--queue",
                "0",
                "--from-time",
                "5",
                "--to-time",
                "5",
            ),
            "--to-time: must be after --from-time",
        ),
        (("message", "find", "--topic", "t", "--key", "k", "--limit", "0"), "--limit"),
    ],
)
def test_bad_arguments_are_one_line_with_where_to_look(
    tmp_path: Path, arguments: tuple[str, ...], text: str
) -> None:
    result = run(*arguments, cwd=tmp_path)
    assert_one_line(result, 2, text)
    assert "--help`)" in result.stderr


def test_a_message_id_that_does_not_parse_is_refused_before_any_connection(
    tmp_path: Path,
) -> None:
    result = run("message", "get", "broker-a:01:0", "--endpoints", DEAD, cwd=tmp_path)
    assert_one_line(result, 1, "invalid message id 'broker-a:01:0'")


def test_a_node_config_that_does_not_exist(tmp_path: Path) -> None:
    assert_one_line(
        run("node", "--config", "missing.toml", cwd=tmp_path), 1, "missing.toml: no such file"
    )


def test_an_unreachable_cluster_names_the_cause_per_endpoint(tmp_path: Path) -> None:
    result = run("topic", "list", "--endpoints", f"{DEAD},127.0.0.1:2", cwd=tmp_path)
    assert_one_line(
        result,
        1,
        f"no leader reachable: {DEAD}: connection refused; 127.0.0.1:2: connection refused",
    )
    result = run("cluster", "status", "--endpoints", DEAD, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"Error: no node reachable: {DEAD}: connection refused\n"
    assert f"{DEAD}: connection refused" in result.stdout  # under the table


def test_send_says_what_it_waits_for_and_gives_up_after_its_timeout(tmp_path: Path) -> None:
    result = run("send", "orders", "hi", "--naming", DEAD, "--timeout", "2.5", cwd=tmp_path)
    waiting = f"waiting for a route to topic 'orders': {DEAD}: connection refused"
    assert result.returncode == 1
    assert result.stderr == f"{waiting}\nError: gave up after 2.5 s: {waiting}\n"
    assert result.stdout == ""


async def test_consume_keeps_waiting_and_says_why(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [*dledger_mq_command(), "consume", "orders", "--group", "g", "--naming", DEAD],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert process.stderr is not None
        said = b""
        with trio.fail_after(30):
            while b"\n" not in said:
                said += await process.stderr.receive_some(4096)
        assert said.decode().splitlines()[0] == (
            f"waiting for a route to topic 'orders': {DEAD}: connection refused"
        )
        assert process.returncode is None  # still waiting, as asked
    finally:
        process.kill()
        await process.wait()


def test_lab_verbs_refuse_when_no_cluster_up_runs_here(tmp_path: Path) -> None:
    for verb in ("kill", "stop", "start", "restart", "pause", "resume"):
        assert_one_line(
            run("cluster", verb, "n1", cwd=tmp_path),
            1,
            "no `dledger-mq cluster up` is running in .dledger-mq; start one there first",
        )


def test_an_unexpected_error_is_one_line_too() -> None:
    assert explain(ZeroDivisionError("division by zero")) == (
        "unexpected ZeroDivisionError: division by zero (a bug; DLEDGER_MQ_TRACEBACK=1 shows where)"
    )
    group = BaseExceptionGroup("nursery", [ValueError("x"), Unavailable("no leader")])
    assert explain(group) == "no leader"
    assert explain(ConnectionRefusedError(111, "Connect call failed")) == "connection refused"


def test_every_command_has_help() -> None:
    from click import Group
    from click.testing import CliRunner

    from dledger_mq.cli import main

    def walk(group: Group, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, command in group.commands.items():
            if isinstance(command, Group):
                found += walk(command, [*path, name])
            else:
                found.append([*path, name])
        return found

    paths = walk(main, [])
    assert len(paths) > 25
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(main, [*path, "--help"], prog_name="dledger-mq")
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith(f"Usage: dledger-mq {' '.join(path)}".rstrip()), path


def test_bench_transport_without_the_test_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from click.testing import CliRunner

    from dledger_mq.cli import main

    monkeypatch.setitem(sys.modules, "trio_websocket", None)  # as if not installed
    result = CliRunner().invoke(main, ["bench", "transport"], prog_name="dledger-mq")
    assert result.exit_code == 1
    assert "trio-websocket, which only the tests install: pip install -e '.[test]'" in (
        result.output
    )
