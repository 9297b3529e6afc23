"""The admin commands at mqadmin's level, as docs/operations.md ("Inspecting a cluster") shows
them, against a real cluster: topic route and status, group progress, create and delete,
cluster list and node status; --json for programs, plain columns when piped, one line and a
non-zero exit for what is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from dledger_mq.clients import Producer
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster
from tests.node.test_consumer import consume

OPTIONS = {"with_naming": True, "naming_heartbeat_ms": 200, "with_http": True}


async def _dledger(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "dledger_mq", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.cluster_options(**OPTIONS)
async def test_route_status_progress_create_delete_list_and_node_status(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = ["--naming", ",".join(cluster.naming.values())]
    endpoints = ["--endpoints", ",".join(cluster.client_address(n) for n in cluster.nodes)]
    async with Producer(naming=list(cluster.naming.values())) as producer:
        for number in range(6):
            await producer.send("orders", b"%d" % number)
        assert len(await consume(list(cluster.naming.values()), "billing", 6)) == 6
        for number in range(6, 9):
            await producer.send("orders", b"%d" % number)

    route = json.loads((await _dledger("topic", "route", "orders", *naming, "--json")).stdout)
    [part] = route["routes"]
    assert (part["broker_group"], part["leader"]) == ("broker-a", leader)
    assert part["queues"] >= 1 and len(part["replicas"]) == 3

    status = json.loads((await _dledger("topic", "status", "orders", *endpoints, "--json")).stdout)
    assert sum(q["messages"] for q in status["queues"]) == 9
    assert all(
        (q["last_store_time_ms"] is None) == (q["max_offset"] == 0) for q in status["queues"]
    )
    plain = (await _dledger("topic", "status", "orders", *endpoints)).stdout.splitlines()
    assert plain[0] == "topic orders"
    assert plain[1].split() == ["broker", "group", "queue", "min", "offset", "max", "offset"] + [
        "messages",
        "last",
        "store",
        "time",
    ]

    progress = json.loads(
        (await _dledger("group", "progress", "billing", *endpoints, "--json")).stdout
    )
    assert progress["lag"] == 3 and {q["topic"] for q in progress["queues"]} == {"orders"}

    created = await _dledger(
        "group", "create", "audit", "--max-attempts", "3", *endpoints, "--json"
    )
    assert [p["max_attempts"] for p in json.loads(created.stdout)] == [3]
    again = await _dledger("group", "create", "audit", *endpoints, ok=False)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "exists in broker-a" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    deleted = await _dledger("group", "delete", "billing", "--yes", *endpoints)
    assert deleted.stdout.strip() == "group deleted: billing (in broker-a)"
    gone = await _dledger("group", "progress", "billing", *endpoints, ok=False)
    assert gone.returncode != 0 and "committed no offsets" in gone.stderr

    replicas = json.loads((await _dledger("cluster", "list", *naming, "--json")).stdout)
    assert sorted(r["node_id"] for r in replicas) == sorted(cluster.nodes)
    assert [r["node_id"] for r in replicas if r["role"] == "leader"] == [leader]

    with trio.fail_after(DEADLINE_SECONDS):
        while True:  # the followers apply the last sends a moment after the leader
            rows = json.loads(
                (await _dledger("node", "status", *endpoints, "--interval", "0", "--json")).stdout
            )
            if all(row["messages_in"] == 9 for row in rows):
                break
            await trio.sleep(0.1)
    by_node = {row["node_id"]: row for row in rows}
    assert set(by_node) == set(cluster.nodes)
    assert by_node[leader]["role"] == "leader" and by_node[leader]["bytes_in"] == 9
    assert all(row["metrics_enabled"] and row["fsync_count"] > 0 for row in rows)
    assert all(row["fsync_p99_us"] >= row["fsync_p50_us"] > 0 for row in rows)

    # A node down: the others are still listed; a node status of it alone fails in one line.
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.kill(follower)
    await _dledger("cluster", "list", *naming)  # text, while naming may still list it
    rows = json.loads(
        (await _dledger("node", "status", *endpoints, "--interval", "0", "--json")).stdout
    )
    assert [row["address"] for row in rows if "error" in row] == [cluster.client_address(follower)]
    alone = await _dledger(
        "node", "status", cluster.client_address(follower), "--interval", "0", ok=False
    )
    assert alone.returncode == 1 and alone.stderr.startswith("Error: no node answered")
