"""Changing a group's members online, with real node processes and the CLI as an operator
uses it (docs/operations.md, "Changing a group's members"): a dead node replaced by an empty
one (added as a learner, caught up, promoted, the dead one removed), and the leader removed
after it hands leadership over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from dledger_mq.node.data_dir import log_directory
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster


def dledger(*arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dledger_mq", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (arguments, result.stdout, result.stderr)
    return result.stdout


async def run(*arguments: str) -> str:
    return await trio.to_thread.run_sync(lambda: dledger(*arguments))


def endpoints(cluster: ProcessCluster) -> str:
    return ",".join(address for _, address in cluster.endpoints(cluster.running))


@pytest.mark.cluster_options(
    segment_size_bytes=4096,
    snapshot_interval_entries=20,
    retention_bytes=8192,
    retention_check_ms=50,
)
async def test_a_dead_node_is_replaced_by_an_empty_one_that_catches_up_and_votes(
    cluster: ProcessCluster,
) -> None:
    """The leader's log is trimmed (retention), so the new node catches up from its snapshot
    (InstallSnapshot), then the tail."""
    leader = await cluster.wait_for_leader()
    for n in range(300):
        await cluster.propose(b"before %03d " % n + b"x" * 100)
    leader_log = Path(log_directory(cluster.nodes[leader.node_id].config))
    await cluster.wait_until(
        lambda _: min(int(path.stem) for path in leader_log.glob("*.log")) > 100,
        "the leader trims its log",
    )
    dead = next(node_id for node_id in ("n3", "n2") if node_id != leader.node_id)
    cluster.kill(dead)  # its disk is gone for good

    new = cluster.add_node("n4")
    cluster.start("n4")
    added = await run(
        "cluster",
        "add-replica",
        "--group",
        "a",
        "--node",
        "n4",
        "--peer",
        new.config.me.peer,
        "--client",
        new.config.me.client,
        "--endpoints",
        endpoints(cluster),
    )
    assert "n4 added as a learner; catching up" in added
    assert "n4 caught up and promoted to voter" in added
    assert [e for e in cluster.log_events("n4") if e["event"] == "snapshot_installed"]
    # Four voters now (quorum three), one of them dead: it goes.
    removed = await run(
        "cluster", "remove-replica", "--node", dead, "--endpoints", endpoints(cluster)
    )
    assert f"broker-a: {dead} removed" in removed
    members = json.loads(
        await run("cluster", "members", "--json", "--endpoints", endpoints(cluster))
    )
    [group] = members
    voters = sorted(member["node_id"] for member in group["voters"])
    assert voters == sorted({"n1", "n2", "n3", "n4"} - {dead})
    assert group["learners"] == []
    assert {m["node_id"]: m["client"] for m in group["voters"]}["n4"] == new.config.me.client

    # The group survives its leader's loss on the two others, one of them the new node: it
    # has every entry and its vote counts.
    current = await cluster.wait_for_leader(exclude=[dead])
    cluster.kill(current.node_id)
    survivors = [node_id for node_id in cluster.running]
    assert "n4" in survivors and len(survivors) == 2
    with trio.fail_after(DEADLINE_SECONDS):
        after = await cluster.wait_for_leader(exclude=[dead, current.node_id])
        index = await cluster.propose(b"after the replacement")
        statuses = await cluster.wait_caught_up(index, survivors)
    assert after.node_id in survivors
    assert statuses["n4"] is not None and statuses["n4"].applied_index >= index


async def test_the_leader_is_removed_after_handing_leadership_over(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    await cluster.propose(b"first")
    removed = await run(
        "cluster", "remove-replica", "--node", leader.node_id, "--endpoints", endpoints(cluster)
    )
    assert f"{leader.node_id} leads; handing leadership to" in removed
    assert f"broker-a: {leader.node_id} removed" in removed
    cluster.kill(leader.node_id)  # as the docs say: stop it afterwards
    with trio.fail_after(DEADLINE_SECONDS):
        new = await cluster.wait_for_leader(exclude=[leader.node_id])
        index = await cluster.propose(b"two voters now")
        await cluster.wait_caught_up(index)
    assert new.node_id != leader.node_id
    members = json.loads(
        await run("cluster", "members", "--json", "--endpoints", endpoints(cluster))
    )
    assert leader.node_id not in [m["node_id"] for m in members[0]["voters"]]


async def test_a_follower_that_missed_an_addition_follows_the_added_node_when_it_leads(
    cluster: ProcessCluster,
) -> None:
    """n3 is down while n4 is added; n4 then leads. Restarted, n3's log does not list n4 yet:
    it must still take n4's connection and follow it (the fault harness found it refused it
    for good, stuck behind)."""
    leader = await cluster.wait_for_leader()
    away = next(node_id for node_id in ("n3", "n2") if node_id != leader.node_id)
    assert await cluster.stop(away) == 0
    new = cluster.add_node("n4")
    cluster.start("n4")
    await run(
        "cluster",
        "add-replica",
        "--node",
        "n4",
        "--peer",
        new.config.me.peer,
        "--client",
        new.config.me.client,
        "--endpoints",
        endpoints(cluster),
    )
    moved = await run("cluster", "transfer-leader", "--to", "n4", "--endpoints", endpoints(cluster))
    assert moved == "leader is now n4\n"
    index = await cluster.propose(b"n4 leads")
    cluster.start(away)
    with trio.fail_after(DEADLINE_SECONDS):
        statuses = await cluster.wait_caught_up(index, [away])
    assert statuses[away] is not None and statuses[away].leader == "n4"
