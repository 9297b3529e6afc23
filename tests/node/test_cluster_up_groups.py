"""`dledger-mq cluster up --groups 2` as a user runs it (docs/operations.md, "Broker groups"):
six nodes in two Raft groups, a topic spread over both, the lab verbs per group, and a
one-group cluster grown by a second `cluster up --groups 2`."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from dledger_mq.node.processes import process_start_time
from dledger_mq.wire.admin import StatusReply
from tests.node.cluster_up import ClusterUp, cluster_up, free_base_port

GROUPS = ("broker-a", "broker-b")


async def wait_for_group_leaders(
    up: ClusterUp, exclude: tuple[str, ...] = ()
) -> dict[str, tuple[str, StatusReply]]:
    """Group -> (node name, status) of its one leader, once both groups have one."""

    def leaders(statuses: dict[str, StatusReply | None]) -> dict[str, tuple[str, StatusReply]]:
        found: dict[str, list[tuple[str, StatusReply]]] = {}
        for name, status in statuses.items():
            if status is not None and status.role == "leader" and name not in exclude:
                found.setdefault(status.group, []).append((name, status))
        return {group: items[0] for group, items in found.items() if len(items) == 1}

    statuses = await up.wait_until(
        lambda statuses: set(leaders(statuses)) == set(GROUPS), "a leader in each group"
    )
    return leaders(statuses)


async def send(up: ClusterUp, body: str) -> dict[str, object]:
    receipt = json.loads(await up.dledger("send", "orders", body, "--naming", up.naming, "--json"))
    assert isinstance(receipt, dict)
    return receipt


async def test_two_groups_share_a_topic_and_a_group_leader_kill_leaves_sends_going(
    tmp_path: Path,
) -> None:
    with cluster_up(tmp_path, "--groups", "2", base_port=free_base_port(groups=2)) as up:
        leaders = await wait_for_group_leaders(up)
        assert "a new cluster in .dledger-mq: 6 nodes in 2 broker groups" in up.output()
        assert (up.root / "broker-b" / "n1" / "node.toml").exists()

        created = await up.dledger("topic", "create", "orders", "--queues", "8")
        assert created == "topic created orders (8 queues: broker-a 4, broker-b 4)\n"
        receipts = [await send(up, f"m{n}") for n in range(6)]
        assert {receipt["group"] for receipt in receipts} == set(GROUPS)

        # `leader` alone names no node when there are two groups.
        refused = up.run("cluster", "kill", "leader")
        assert refused.returncode == 1
        assert "say a/leader or b/leader" in refused.stderr

        b_leader, _ = leaders["broker-b"]
        killed = await up.dledger("cluster", "kill", "b/leader")
        assert killed.startswith(f"killed {b_leader} (the leader of b)")
        # Group b elects again; meanwhile (and after) sends go on, none refused (each is a new
        # producer: whether it lands in a or in b's new leader is its random start's to say).
        during = [await send(up, f"during {n}") for n in range(6)]
        assert all(str(r["msg_id"]).startswith(str(r["group"])) for r in during)
        new_leaders = await wait_for_group_leaders(up, exclude=(b_leader,))
        # Leadership of group b handed to its third node (neither the dead one nor the leader).
        _, b_status = new_leaders["broker-b"]
        [target] = {"n1", "n2", "n3"} - {b_status.node_id, b_leader.removeprefix("b/")}
        moved = await up.dledger("cluster", "transfer-leader", "--group", "b", "--to", target)
        assert moved == f"leader is now {target}\n"

        objects = await up.status()
        assert sorted((o["id"], o["group"]) for o in objects if o["state"] == "running") == sorted(
            (f"{short}/n{n}", f"broker-{short}")
            for short in "ab"
            for n in (1, 2, 3)
            if f"{short}/n{n}" != b_leader
        )
        messages = json.loads(await up.dledger("topic", "list", "--json"))
        assert messages[0]["messages"] == 12
        assert messages[0]["groups"] == {"broker-a": 4, "broker-b": 4}

        up.interrupt()
        assert await up.wait_exit() == 0
        assert all(process_start_time(int(str(o["pid"]))) is None for o in objects if o["pid"])


async def test_a_second_group_added_to_a_running_cluster_takes_an_extended_topic(
    tmp_path: Path,
) -> None:
    base_port = free_base_port(groups=2)
    with cluster_up(tmp_path, base_port=base_port) as up:
        await up.wait_for_leader()
        await up.dledger("topic", "create", "orders", "--queues", "4")
        await send(up, "one group")
        up.interrupt()
        assert await up.wait_exit() == 0
        # The same folder, one group more: the first group's data stays, group b is new.
        up.arguments = ["--groups", "2"]
        up.start()
        await wait_for_group_leaders(up)
        assert "the cluster in .dledger-mq: 6 nodes in 2 broker groups" in up.output()
        extended = await up.dledger("topic", "update", "orders", "--add-group", "b")
        assert extended == "topic updated: orders (8 queues: broker-a 4, broker-b 4)\n"
        # Leaders spread: group a prefers n1, group b n2 (their nodes would share machines).
        balanced = await up.dledger("cluster", "balance-leaders")
        assert len(balanced.splitlines()) == 2, balanced
        leaders = await wait_for_group_leaders(up)
        assert (leaders["broker-a"][1].node_id, leaders["broker-b"][1].node_id) == ("n1", "n2")
        again = json.loads(await up.dledger("cluster", "balance-leaders", "--json"))
        assert [(r["group"], r["before"], r["after"]) for r in again] == [
            ("broker-a", "n1", "n1"),
            ("broker-b", "n2", "n2"),
        ]
        # The admin user exists in the new group too: the CLI signs in there.
        users = json.loads(await up.dledger("user", "list", "--json"))
        assert [user["access_key"] for user in users] == ["admin"]
        with trio.fail_after(30):
            groups: set[object] = set()
            while groups != set(GROUPS):
                groups.add((await send(up, "two groups"))["group"])
        described = json.loads(await up.dledger("topic", "describe", "orders", "--json"))
        assert sum(described["groups"]["broker-a"]["next_offsets"]) >= 2
        up.interrupt()
        assert await up.wait_exit() == 0
