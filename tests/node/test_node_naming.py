"""Nodes run naming nodes and register with all of them; a new leader is findable at once."""

from __future__ import annotations

import pytest
import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError
from dledger_mq.wire.naming import GroupRoute
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster


async def groups_seen_by(naming_address: str) -> tuple[GroupRoute, ...]:
    try:
        async with connect_naming(naming_address) as naming:
            _, groups = await naming.routes_and_groups()
            return groups
    except DledgerError:
        return ()


async def wait_for_group(
    cluster: ProcessCluster, naming_address: str, leader: str, replicas: int
) -> GroupRoute:
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            groups = await groups_seen_by(naming_address)
            if (
                len(groups) == 1
                and groups[0].leader_id == leader
                and len(groups[0].replicas) == replicas
            ):
                return groups[0]
            await trio.sleep(0.05)


@pytest.mark.cluster_options(with_naming=True, naming_heartbeat_ms=200)
async def test_every_naming_node_knows_the_leader_and_every_replica(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    for naming_address in cluster.naming.values():
        group = await wait_for_group(cluster, naming_address, leader, replicas=3)
        assert group.group == "broker-a"
        assert group.leader_address == cluster.client_address(leader)
        assert set(group.replicas) == {cluster.client_address(n) for n in cluster.nodes}


@pytest.mark.cluster_options(with_naming=True, naming_heartbeat_ms=200)
async def test_a_new_leader_replaces_a_killed_one_and_the_dead_replica_expires(
    cluster: ProcessCluster,
) -> None:
    old = (await cluster.wait_for_leader()).node_id
    survivor = next(node for node in cluster.nodes if node != old)
    naming_address = cluster.naming[survivor]
    before = await wait_for_group(cluster, naming_address, old, replicas=3)
    cluster.kill(old)
    new = (await cluster.wait_for_leader(exclude=[old])).node_id
    after = await wait_for_group(cluster, naming_address, new, replicas=2)
    assert after.term > before.term
    assert cluster.client_address(old) not in after.replicas
