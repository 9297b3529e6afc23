"""Message queries on a real three-node cluster, through the CLI exactly as docs/operations.md
("Finding a message") shows it: `message get` by the id `send` printed, `message find` by key,
`message list` by queue and store time; failures are one line and a non-zero exit; and the key
index is back after every node restarts, without a rebuild from the log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from dledger_mq.broker.key_index import JOURNAL_NAME, RECORD_BYTES
from dledger_mq.node.data_dir import log_directory
from dledger_mq.raft.storage.commitlog_format import KEY_INDEX_DIRECTORY_NAME
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


async def _cli(*arguments: str, expect_ok: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = await trio.run_process(
        [sys.executable, "-m", "dledger_mq", *arguments],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if expect_ok:
        assert done.returncode == 0, done.stderr.decode()
    return done


class Cli:
    def __init__(self, cluster: ProcessCluster, root: Path) -> None:
        self.naming = ",".join(cluster.naming.values())
        self.endpoints = ",".join(address for _, address in cluster.endpoints())
        self.root = str(root)

    async def send(self, topic: str, body: str, *options: str) -> str:
        done = await _cli(
            "send", topic, body, *options, "--naming", self.naming, "--root", self.root, "--json"
        )
        return str(json.loads(done.stdout)["msg_id"])

    async def message(self, *arguments: str, expect_ok: bool = True) -> str:
        done = await _cli(
            "message",
            *arguments,
            "--endpoints",
            self.endpoints,
            "--root",
            self.root,
            expect_ok=expect_ok,
        )
        if not expect_ok:
            assert done.returncode != 0
            error = done.stderr.decode()
            assert error.startswith("Error: ") and error.count("\n") == 1, error
            assert "Traceback" not in error
            return error
        return done.stdout.decode()


@pytest.mark.cluster_options(**NAMING)
async def test_the_documented_message_commands_find_what_was_sent(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    await cluster.wait_for_leader()
    cli = Cli(cluster, tmp_path / "cli")
    with trio.fail_after(DEADLINE_SECONDS * 4):
        before = datetime.now(UTC).isoformat(timespec="milliseconds")
        first = await cli.send("orders", "paid 17", "--key", "order-17", "--tags", "paid")
        await cli.send("orders", "paid 18", "--key", "order-18")
        second = await cli.send("orders", "shipped 17", "--key", "order-17", "--key", "x")

        got = json.loads(await cli.message("get", first, "--json"))
        assert got["message_id"] == first
        assert (got["topic"], got["body"], got["keys"], got["tags"]) == (
            "orders",
            "paid 17",
            ["order-17"],
            "paid",
        )
        assert got["offset"] >= 0 and got["attempt"] == 1 and got["store_time_ms"] > 0
        shown = await cli.message("get", first)
        assert f"message {first}" in shown and "paid 17" in shown

        found = json.loads(
            await cli.message("find", "--topic", "orders", "--key", "order-17", "--json")
        )
        assert [m["message_id"] for m in found["messages"]] == [first, second]
        assert found["truncated"] is False
        assert "shipped 17" in await cli.message("find", "--topic", "orders", "--key", "order-17")

        queue = str(got["queue_id"])
        listed = json.loads(
            await cli.message(
                "list", "--topic", "orders", "--queue", queue, "--from-time", before, "--json"
            )
        )
        assert first in [m["message_id"] for m in listed["messages"]]
        later = str(got["store_time_ms"] + 1)
        listed_later = json.loads(
            await cli.message(
                "list", "--topic", "orders", "--queue", queue, "--from-time", later, "--json"
            )
        )
        assert first not in [m["message_id"] for m in listed_later["messages"]]

        assert "queue" in await cli.message(
            "list", "--topic", "orders", "--queue", "99", "--from-time", before, expect_ok=False
        )
        group = first.rsplit(":", 2)[0]
        missing = await cli.message("get", f"{group}:999999:0", expect_ok=False)
        assert "no such entry" in missing
        assert "invalid message id" in await cli.message("get", "nonsense", expect_ok=False)
        assert "does not exist" in await cli.message(
            "find", "--topic", "nothing-here", "--key", "k", expect_ok=False
        )

        # Every node restarts: the index is reopened where it stood, not rebuilt.
        marks = {node_id: cluster.log_mark(node_id) for node_id in cluster.nodes}
        for node_id in cluster.nodes:
            assert await cluster.stop(node_id) == 0
        cluster.start_all()
        await cluster.wait_for_leader()
        while True:
            done = await _cli(
                "message",
                "find",
                "--topic",
                "orders",
                "--key",
                "order-17",
                "--json",
                "--endpoints",
                cli.endpoints,
                "--root",
                cli.root,
                expect_ok=False,
            )
            if done.returncode == 0:
                break
            await trio.sleep(0.1)  # a leader elected and the route known: poll until served
        again = json.loads(done.stdout)
        assert [m["message_id"] for m in again["messages"]] == [first, second]
        for node_id, mark in marks.items():
            events = [e["event"] for e in cluster.log_events(node_id, since=mark)]
            assert "key_index_behind" not in events and "key_index_damaged" not in events


@pytest.mark.cluster_options(**NAMING)
async def test_a_damaged_or_lost_key_index_is_rebuilt_from_the_log_and_never_served(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Every node stops; on each, the index is damaged (a record rotted before its tail) or
    lost (its directory deleted). On restart each node rebuilds it from the CommitLog in the
    background, and `message find` answers in full once it is live."""
    await cluster.wait_for_leader()
    cli = Cli(cluster, tmp_path / "cli")
    with trio.fail_after(DEADLINE_SECONDS * 4):
        sent = [await cli.send("orders", f"m{n}", "--key", "order-1") for n in range(3)]
        for node_id in cluster.nodes:
            assert await cluster.stop(node_id) == 0
        marks = {node_id: cluster.log_mark(node_id) for node_id in cluster.nodes}
        for number, node in enumerate(cluster.nodes.values()):
            directory = Path(log_directory(node.config)) / KEY_INDEX_DIRECTORY_NAME
            if number == 0:
                shutil.rmtree(directory)
                continue
            journal = directory / JOURNAL_NAME
            data = bytearray(journal.read_bytes())
            assert len(data) >= 3 * RECORD_BYTES  # three keys and a checkpoint, at least
            data[RECORD_BYTES + 2] ^= 0x20  # record 1 rots; records after it are good
            journal.write_bytes(bytes(data))
        cluster.start_all()
        await cluster.wait_for_leader()
        while True:
            done = await _cli(
                "message",
                "find",
                "--topic",
                "orders",
                "--key",
                "order-1",
                "--json",
                "--endpoints",
                cli.endpoints,
                "--root",
                cli.root,
                expect_ok=False,
            )
            if done.returncode == 0:
                break
            assert b"Traceback" not in done.stderr
            await trio.sleep(0.1)  # rebuilding (Unavailable) or electing: poll until served
        assert [m["message_id"] for m in json.loads(done.stdout)["messages"]] == sent
        for number, (node_id, mark) in enumerate(marks.items()):
            while "key_index_live" not in _events(cluster, node_id, mark):
                await trio.sleep(0.1)
            events = _events(cluster, node_id, mark)
            # Dropped when found damaged, then behind the restored state like a lost one.
            assert "key_index_behind" in events
            assert ("key_index_damaged" in events) == (number > 0)


def _events(cluster: ProcessCluster, node_id: str, since: int) -> list[object]:
    return [event.get("event") for event in cluster.log_events(node_id, since=since)]
