"""A node snapshots its broker state as it goes and, restarted, restores the newest snapshot
and applies only the entries after it: real node processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dledger_mq.clients.admin import connect_admin
from dledger_mq.node.data_dir import log_directory
from tests.node.cluster_fixture import ProcessCluster


@pytest.mark.cluster_options(snapshot_interval_entries=10)
async def test_a_restarted_node_restores_its_snapshot_and_applies_only_the_tail(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    async with connect_admin(cluster.client_address(leader.node_id)) as admin:
        await admin.create_topic("orders", 3)
    for number in range(40):
        await cluster.propose(b"entry %d" % number)
    follower = next(n for n in cluster.nodes if n != leader.node_id)
    snapshots = Path(log_directory(cluster.nodes[follower].config), "snapshots")
    index = await cluster.propose(b"last")
    await cluster.wait_caught_up(index)
    assert len(list(snapshots.glob("SNAPSHOT-*.snap"))) == 2  # the two newest are kept

    assert await cluster.stop(follower) == 0
    mark = cluster.log_mark(follower)
    cluster.start(follower)
    await cluster.wait_caught_up(index)
    [restored] = [e for e in cluster.log_events(follower, mark) if e["event"] == "state_restored"]
    assert 10 <= int(str(restored["index"])) <= index
    async with connect_admin(cluster.client_address(follower)) as admin:
        assert [(t.name, t.queue_count) for t in await admin.list_topics()] == [("orders", 3)]


@pytest.mark.cluster_options(snapshot_interval_entries=5)
async def test_a_damaged_snapshot_is_skipped_for_the_one_before(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    for number in range(30):
        await cluster.propose(b"entry %d" % number)
    index = await cluster.propose(b"last")
    await cluster.wait_caught_up(index)
    follower = next(n for n in cluster.nodes if n != leader.node_id)
    snapshots = Path(log_directory(cluster.nodes[follower].config), "snapshots")
    assert await cluster.stop(follower) == 0
    newest, older = sorted(snapshots.glob("SNAPSHOT-*.snap"), reverse=True)
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01
    newest.write_bytes(bytes(data))
    mark = cluster.log_mark(follower)
    cluster.start(follower)
    await cluster.wait_caught_up(index)
    events = cluster.log_events(follower, mark)
    assert any(e["event"] == "snapshot_unreadable" for e in events)
    [restored] = [e for e in events if e["event"] == "state_restored"]
    assert f"{int(str(restored['index'])):020d}" in older.name


@pytest.mark.cluster_options(snapshot_interval_entries=1_000_000, snapshot_interval_bytes=2000)
async def test_a_snapshot_is_also_due_after_so_many_bytes(cluster: ProcessCluster) -> None:
    leader = await cluster.wait_for_leader()
    for number in range(12):
        await cluster.propose(b"%04d" % number + b"x" * 500)
    index = await cluster.propose(b"last")
    await cluster.wait_caught_up(index)
    follower = next(n for n in cluster.nodes if n != leader.node_id)
    snapshots = Path(log_directory(cluster.nodes[follower].config), "snapshots")
    assert list(snapshots.glob("SNAPSHOT-*.snap"))


@pytest.mark.cluster_options(
    segment_size_bytes=4096,
    snapshot_interval_entries=20,
    retention_bytes=8192,
    retention_check_ms=50,
)
async def test_a_follower_behind_the_leaders_trimmed_log_installs_its_snapshot(
    cluster: ProcessCluster,
) -> None:
    """Retention trims the leader's log past what a stopped follower holds; restarted, the
    follower gets the leader's snapshot (InstallSnapshot), then the tail, and serves reads."""
    leader = await cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n != leader.node_id)
    async with connect_admin(cluster.client_address(leader.node_id)) as admin:
        await admin.create_topic("orders", 2)
    assert await cluster.stop(follower) == 0
    for number in range(300):
        index = await cluster.propose(b"entry %03d " % number + b"x" * 100)
    leader_log = Path(log_directory(cluster.nodes[leader.node_id].config))

    def leader_log_start() -> int:
        return min(int(path.stem) for path in leader_log.glob("*.log"))

    await cluster.wait_until(lambda _: leader_log_start() > 100, "the leader trims its log")
    mark = cluster.log_mark(follower)
    cluster.start(follower)
    await cluster.wait_caught_up(index)
    events = cluster.log_events(follower, mark)
    [installed] = [e for e in events if e["event"] == "snapshot_installed"]
    assert int(str(installed["index"])) >= leader_log_start() - 1
    async with connect_admin(cluster.client_address(follower)) as admin:
        assert [(t.name, t.queue_count) for t in await admin.list_topics()] == [("orders", 2)]
    # Its log starts after the snapshot too: nothing before it was sent.
    follower_log = Path(log_directory(cluster.nodes[follower].config))
    assert min(int(path.stem) for path in follower_log.glob("*.log")) > 100


async def test_a_graceful_stop_takes_a_last_snapshot_so_the_restart_applies_nothing(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    for number in range(25):  # fewer than a snapshot interval: no periodic one yet
        await cluster.propose(b"entry %d" % number)
    index = await cluster.propose(b"last")
    await cluster.wait_caught_up(index)
    follower = next(n for n in cluster.nodes if n != leader.node_id)
    assert await cluster.stop(follower) == 0
    mark = cluster.log_mark(follower)
    cluster.start(follower)
    await cluster.wait_caught_up(index)
    [restored] = [e for e in cluster.log_events(follower, mark) if e["event"] == "state_restored"]
    assert int(str(restored["index"])) >= index
