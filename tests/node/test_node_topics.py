"""Topics live in the replicated log: every replica applies them, and a restart rebuilds them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import BadRequest, NotLeader
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster


async def topics_on(cluster: ProcessCluster, node_id: str) -> dict[str, int]:
    async with connect_admin(cluster.client_address(node_id)) as admin:
        return {topic.name: topic.queue_count for topic in await admin.list_topics()}


async def wait_for_topics(cluster: ProcessCluster, node_id: str, expected: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        while await topics_on(cluster, node_id) != expected:
            await trio.sleep(0.05)


async def test_a_topic_created_on_the_leader_reaches_every_replica_and_survives_a_restart(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    async with connect_admin(cluster.client_address(leader)) as admin:
        first = await admin.create_topic("orders", 4)
        again = await admin.create_topic("orders", 4)
        await admin.create_topic("refunds", 2)
    assert (first.created, again.created) == (True, False)
    assert first.topic.max_offsets == (0, 0, 0, 0)
    for node_id in cluster.nodes:
        await wait_for_topics(cluster, node_id, {"orders": 4, "refunds": 2})

    for node_id in cluster.nodes:
        assert await cluster.stop(node_id) == 0
    cluster.start_all()
    await cluster.wait_for_leader()
    for node_id in cluster.nodes:
        await wait_for_topics(cluster, node_id, {"orders": 4, "refunds": 2})


async def test_creating_a_topic_on_a_follower_names_the_leader(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    follower = next(node for node in cluster.nodes if node != leader)
    # wait_for_leader counts only the nodes that answer: the follower may not be listening yet.
    await cluster.wait_until(
        lambda statuses: (status := statuses[follower]) is not None and status.leader == leader,
        f"{follower} follows {leader}",
        [follower],
    )
    async with connect_admin(cluster.client_address(follower)) as admin:
        with pytest.raises(NotLeader) as raised:
            await admin.create_topic("orders", 4)
    assert raised.value.leader_hint == leader
    assert raised.value.leader_address == cluster.client_address(leader)  # type: ignore[attr-defined]


async def test_a_bad_topic_is_refused_with_the_reason(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    async with connect_admin(cluster.client_address(leader)) as admin:
        with pytest.raises(BadRequest, match="invalid topic name 'bad name!'"):
            await admin.create_topic("bad name!", 4)
        with pytest.raises(BadRequest):
            await admin.create_topic("orders", 0)
        assert await admin.list_topics() == ()


async def test_a_topic_grows_and_is_deleted_through_the_log(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 2)
        grown = await admin.update_topic("orders", 4)
        assert (grown.queue_count, grown.max_offsets) == (4, (0, 0, 0, 0))
        with pytest.raises(BadRequest):
            await admin.update_topic("orders", 1)  # queues are never removed
        await admin.delete_topic("orders")
        assert await admin.list_topics() == ()
    for node_id in cluster.nodes:
        await wait_for_topics(cluster, node_id, {})


async def test_topic_commands(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    endpoints = ",".join(cluster.client_address(node) for node in cluster.nodes)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dledger_mq", "topic", *args, "--endpoints", endpoints],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def dledger(*args: str) -> str:
        result = await trio.to_thread.run_sync(lambda: run(*args))
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert await dledger("create", "orders", "--queues", "2") == "topic created orders (2 queues)\n"
    assert "3 queues" in await dledger("update", "orders", "--queues", "3")
    assert json.loads(await dledger("list", "--json")) == [
        {
            "name": "orders",
            "queues": 3,
            "fifo": False,
            "messages": 0,
            "groups": {"broker-a": 3},
        }
    ]
    assert "broker-a queue 2: next offset 0" in await dledger("describe", "orders")
    assert json.loads(await dledger("describe", "orders", "--json")) == {
        "name": "orders",
        "queues": 3,
        "fifo": False,
        "groups": {"broker-a": {"queues": 3, "next_offsets": [0, 0, 0]}},
    }
    # A command changes only what it was asked to: the queue count leaves FIFO as it is.
    assert await dledger("update", "orders", "--fifo") == "topic updated: orders (3 queues, fifo)\n"
    assert "(5 queues, fifo)" in await dledger("update", "orders", "--queues", "5")
    assert "(5 queues)\n" in await dledger("update", "orders", "--no-fifo")
    assert await dledger("delete", "orders", "--yes") == "topic deleted: orders\n"
    assert json.loads(await dledger("list", "--json")) == []
    for command in (("describe", "orders"), ("update", "orders", "--queues", "9")):
        missing = await trio.to_thread.run_sync(lambda command=command: run(*command))
        assert missing.returncode == 1
        assert missing.stderr == "Error: topic 'orders' does not exist\n"
