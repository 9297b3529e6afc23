"""`cluster add-replica` and `remove-replica` on the local cluster `cluster up` runs, as a user
types them (docs/operations.md, "Changing a group's members"): the new node is made, started
and supervised, caught up and promoted; the removed one is stopped and stays down, also after
`cluster up` starts again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.node.cluster_up import cluster_up


async def test_a_replica_added_and_one_removed_on_the_local_cluster(tmp_path: Path) -> None:
    with cluster_up(tmp_path) as up:
        leader = await up.wait_for_leader()
        await up.dledger("send", "orders", "before", "--naming", up.naming)
        added = await up.dledger("cluster", "add-replica", "--group", "a", "--node", "n4")
        assert "started n4 (pid" in added
        assert "n4 caught up and promoted to voter" in added
        assert "broker-a: voters n1, n2, n3, n4; learners none" in added
        objects = await up.status()
        assert {o["id"]: o["state"] for o in objects}["n4"] == "running"

        gone = next(node_id for node_id in ("n2", "n3") if node_id != leader.node_id)
        removed = await up.dledger("cluster", "remove-replica", "--node", gone)
        assert f"broker-a: {gone} removed" in removed
        assert "`cluster up` leaves it down" in removed
        members = json.loads(await up.dledger("cluster", "members", "--json"))
        assert sorted(m["node_id"] for m in members[0]["voters"]) == sorted(
            {"n1", "n2", "n3", "n4"} - {gone}
        )
        await up.dledger("send", "orders", "three voters again", "--naming", up.naming)
        up.interrupt()
        assert await up.wait_exit() == 0

        # Started again: the removed node is not, the added one is, and the group serves.
        up.start()
        await up.wait_for_leader(exclude=[gone])
        objects = await up.status()
        assert sorted(str(o["id"]) for o in objects) == sorted({"n1", "n2", "n3", "n4"} - {gone})
        await up.dledger("send", "orders", "after a restart", "--naming", up.naming)
        up.interrupt()
        assert await up.wait_exit() == 0
