"""A node's log is made on purpose, never because it is missing: real `dledger-mq node`
processes, as an operator runs them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio

from dledger_mq.node.config import parse_config, render_config
from dledger_mq.node.data_dir import log_directory
from dledger_mq.node.local_cluster import cluster_on_free_ports
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster


def single_node_config(tmp_path: Path) -> Path:
    members, _ = cluster_on_free_ports(1)
    config = parse_config(
        {
            "node_id": "n1",
            "members": {"n1": {"peer": members["n1"].peer, "client": members["n1"].client}},
            "data_dir": str(tmp_path / "data"),
        }
    )
    path = tmp_path / "node.toml"
    path.write_text(render_config(config))
    return path


def node_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dledger_mq", "node", *arguments]


def run_to_exit(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        node_command(*arguments), capture_output=True, text=True, timeout=30, check=False
    )


def test_a_node_without_a_log_refuses_to_start_and_says_how_to_make_one(tmp_path: Path) -> None:
    path = single_node_config(tmp_path)
    result = run_to_exit("--config", str(path))
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: ") and "does not exist" in line and "--init" in line, line
    assert not (tmp_path / "data").exists()


def test_init_makes_the_log_once(tmp_path: Path) -> None:
    path = single_node_config(tmp_path)
    process = subprocess.Popen(
        node_command("--config", str(path), "--init"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # JSON log lines, one event each
            if '"node_started"' in line:
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "data" / "raft" / "broker-a" / "identity").exists()
    again = run_to_exit("--config", str(path), "--init")
    assert again.returncode != 0
    assert "already holds a log: start the node without --init" in again.stderr.splitlines()[-1]


async def test_a_node_whose_data_directory_was_deleted_does_not_come_back_empty(
    cluster: ProcessCluster,
) -> None:
    """The amnesia the old code allowed: a wiped node restarted as an empty voter. Now it
    refuses to start, and the other two keep serving."""
    leader = await cluster.wait_for_leader()
    await cluster.propose(b"committed before the wipe")
    victim = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    assert await cluster.stop(victim) == 0
    shutil.rmtree(log_directory(cluster.nodes[victim].config))
    mark = cluster.log_mark(victim)
    cluster.start(victim)
    assert await cluster.wait_exit(victim) != 0
    assert "does not exist" in cluster.log_text(victim, since=mark)
    assert not Path(log_directory(cluster.nodes[victim].config)).exists()
    with trio.fail_after(DEADLINE_SECONDS):
        await cluster.propose(b"the others go on")
