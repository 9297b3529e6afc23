"""A node's log is made on purpose, never because it is missing: real `dledger-mq node`
processes, as an operator runs them."""

from __future__ import annotations

import json
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


def _event_of(line: str) -> str | None:
    try:
        return str(json.loads(line).get("event"))
    except ValueError:
        return None


def run_until_logged(event: str, *arguments: str) -> str:
    """Run `dledger-mq node ARGUMENTS` until it logs ``event`` (JSON lines on standard error),
    then stop it with SIGTERM, which must end it with code 0; returns that log line."""
    process = subprocess.Popen(
        node_command(*arguments),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        line = next(line for line in process.stderr if _event_of(line) == event)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_SECONDS) == 0
        return line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_node_without_a_log_starts_recovering_and_says_so(tmp_path: Path) -> None:
    """Alone and without a log it can never lead (it lost what it had, as far as it knows):
    it says so, and what a node of a new cluster needs instead."""
    path = single_node_config(tmp_path)
    warning = run_until_logged("recovering", "--config", str(path))
    assert "--init" in warning
    assert (tmp_path / "data" / "raft" / "broker-a" / "recovering").exists()


def test_init_makes_the_log_once(tmp_path: Path) -> None:
    path = single_node_config(tmp_path)
    run_until_logged("node_started", "--config", str(path), "--init")
    assert (tmp_path / "data" / "raft" / "broker-a" / "identity").exists()
    assert not (tmp_path / "data" / "raft" / "broker-a" / "recovering").exists()
    again = run_to_exit("--config", str(path), "--init")
    assert again.returncode != 0
    assert "already holds a log: start the node without --init" in again.stderr.splitlines()[-1]


async def test_a_node_whose_data_directory_was_deleted_rejoins_and_then_votes_again(
    cluster: ProcessCluster,
) -> None:
    """The amnesia the old code allowed: a wiped node restarted as an empty voter. Now it
    comes back recovering, is caught up by the leader, and only then votes: after that, with
    the leader killed, it and the third node elect a new one, which holds everything."""
    leader = await cluster.wait_for_leader()
    for number in range(20):
        await cluster.propose(b"before the wipe %d" % number)
    victim = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    assert await cluster.stop(victim) == 0
    directory = log_directory(cluster.nodes[victim].config)
    shutil.rmtree(directory)
    cluster.start(victim)
    index = await cluster.propose(b"after the wipe")
    await cluster.wait_caught_up(index)
    with trio.fail_after(DEADLINE_SECONDS):
        while Path(directory, "recovering").exists():
            await trio.sleep(0.05)
    events = [e["event"] for e in cluster.log_events(victim)]
    assert "recovering" in events and "recovery_finished" in events

    cluster.kill(leader.node_id)
    new = await cluster.wait_for_leader(exclude=[leader.node_id], min_term=leader.term)
    index = await cluster.propose(b"after the failover")
    statuses = await cluster.wait_caught_up(index, [new.node_id, victim])
    assert all(status is not None for status in statuses.values())


async def test_a_node_whose_last_record_rotted_recovers_before_it_votes_again(
    cluster: ProcessCluster,
) -> None:
    """Rot in the last record looks like a torn write, and recovery cuts it; but the node had
    acknowledged it (it was published before the kill): it comes back having lost its tail,
    votes only once caught up, and then helps elect a new leader."""
    leader = await cluster.wait_for_leader()
    for number in range(20):
        index = await cluster.propose(b"before the rot %d" % number)
    # Every node applied it, so wrote and published it: a kill now cannot tear that record
    # (one still being written when the kill came is a torn write, rightly not a lost tail).
    await cluster.wait_caught_up(index)
    victim = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    cluster.kill(victim)
    directory = Path(log_directory(cluster.nodes[victim].config))
    last_segment = max(directory.glob("*.log"))
    data = bytearray(last_segment.read_bytes())
    data[-3] ^= 0x10  # inside the last record: nothing intact follows it
    last_segment.write_bytes(bytes(data))
    cluster.start(victim)
    index = await cluster.propose(b"after the rot")
    await cluster.wait_caught_up(index)
    with trio.fail_after(DEADLINE_SECONDS):
        while not any(e["event"] == "recovery_finished" for e in cluster.log_events(victim)):
            await trio.sleep(0.05)
    events = {e["event"]: e for e in cluster.log_events(victim)}
    assert "rot" in events["commitlog.lost_tail"]["reason"]
    assert events["commitlog.opened"]["lost_tail"] is True
    assert not Path(directory, "recovering").exists()

    cluster.kill(leader.node_id)
    new = await cluster.wait_for_leader(exclude=[leader.node_id], min_term=leader.term)
    index = await cluster.propose(b"after the failover")
    statuses = await cluster.wait_caught_up(index, [new.node_id, victim])
    assert all(status is not None for status in statuses.values())
