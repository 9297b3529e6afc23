"""A topic over two broker groups: real node processes, two Raft groups of three, one naming
service (run by group a's nodes) that both register with.

What issue 16 asks of groups: sends use every group, a group's failover or outage pauses only
its own queues, keyed messages keep their (group, queue), consumers balance over every queue of
every group and pick a group up again when it is back, and the CLI's topic commands span them.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dledger_mq.clients.consumer import Consumer, ReceivedMessage
from dledger_mq.clients.naming import connect_naming
from dledger_mq.clients.producer import Producer
from tests.node.cluster_fixture import ProcessCluster

DEADLINE_SECONDS = 60.0


class TwoGroups:
    def __init__(self, root: Path) -> None:
        self.a = ProcessCluster(root / "a", with_naming=True, group="broker-a")
        self.b = ProcessCluster(
            root / "b",
            group="broker-b",
            register_with=self.a.naming.values(),
            secret_file=self.a.secret_file,
        )
        self.naming = ",".join(self.a.naming.values())

    @property
    def endpoints(self) -> str:
        return ",".join(address for _, address in self.a.endpoints() + self.b.endpoints())

    def dledger(self, *args: str) -> str:
        """A CLI command against both groups, as an operator runs it; its output."""
        result = subprocess.run(
            [sys.executable, "-m", "dledger_mq", *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE_SECONDS,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    async def create_topic(self, name: str, queues: int) -> str:
        """Create ``name`` over both groups (once each has a leader) and wait until every
        naming node routes to both."""
        await self.a.wait_for_leader()
        await self.b.wait_for_leader()
        output = await trio.to_thread.run_sync(
            lambda: self.dledger(
                "topic", "create", name, "--queues", str(queues), "--endpoints", self.endpoints
            )
        )
        for address in self.a.naming.values():
            while True:
                async with connect_naming(address) as naming:
                    routes = await naming.routes(name)
                if {route.group for route in routes} == {"broker-a", "broker-b"}:
                    break
                await trio.sleep(0.05)
        return output

    def kill_all(self) -> None:
        self.a.kill_all()
        self.b.kill_all()


@pytest.fixture
def groups(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TwoGroups]:
    two = TwoGroups(tmp_path)
    atexit.register(two.kill_all)
    try:
        two.a.start_all()
        two.b.start_all()
        yield two
    finally:
        tails = two.a.log_tails() + "\n" + two.b.log_tails()
        two.kill_all()
        atexit.unregister(two.kill_all)
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(tails)


async def consume(consumer: Consumer, count: int) -> list[ReceivedMessage]:
    received = []
    async for message in consumer:
        received.append(message)
        await message.ack()
        if len(received) == count:
            return received
    raise AssertionError("the consumer stopped")


async def test_a_topic_over_two_groups_takes_sends_in_both_and_keyed_ones_keep_their_queue(
    groups: TwoGroups,
) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        created = await groups.create_topic("orders", 8)
        assert created == "topic created orders (8 queues: broker-a 4, broker-b 4)\n"
        async with Producer(groups.naming) as producer:
            receipts = [await producer.send("orders", f"m{n}".encode()) for n in range(40)]
            keyed = [
                await producer.send("orders", b"k", sharding_key=f"order-{n % 5}")
                for n in range(25)
            ]
    # Unkeyed sends take the groups in turn; each group's leader spreads them over its queues.
    assert Counter(r.group for r in receipts) == {"broker-a": 20, "broker-b": 20}
    assert {(r.group, r.queue_id) for r in receipts} == {
        (g, q) for g in ("broker-a", "broker-b") for q in range(4)
    }
    # A key's messages share one (group, queue); five keys land on more than one group.
    places = {(r.group, r.queue_id) for r in keyed}
    by_key: dict[int, set[tuple[str, int]]] = {}
    for n, r in enumerate(keyed):
        by_key.setdefault(n % 5, set()).add((r.group, r.queue_id))
    assert all(len(place) == 1 for place in by_key.values())
    assert len({group for group, _ in places}) == 2

    listed = json.loads(
        await trio.to_thread.run_sync(
            lambda: groups.dledger("topic", "list", "--json", "--endpoints", groups.endpoints)
        )
    )
    assert listed == [
        {
            "name": "orders",
            "queues": 8,
            "fifo": False,
            "messages": 65,
            "groups": {"broker-a": 4, "broker-b": 4},
        }
    ]


async def test_consumers_balance_over_every_queue_of_both_groups_and_rebalance(
    groups: TwoGroups,
) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        await groups.create_topic("orders", 8)
        every_queue = {(g, q) for g in ("broker-a", "broker-b") for q in range(4)}
        async with (
            Consumer(groups.naming, group="billing", topic="orders") as first,
            Consumer(groups.naming, group="billing", topic="orders") as second,
        ):
            # Both read, four queues each, every queue exactly once across them.
            while not (
                len(first.queues) == 4
                and len(second.queues) == 4
                and set(first.queues) | set(second.queues) == every_queue
            ):
                await trio.sleep(0.05)
            # Sent once they are balanced: what one delivered before a rebalance could be
            # delivered again by the next owner (at least once), and this counts exactness.
            async with Producer(groups.naming) as producer:
                sent = {(await producer.send("orders", f"m{n}".encode())).msg_id for n in range(32)}
            received: list[ReceivedMessage] = []

            async def drain(consumer: Consumer) -> None:
                async for message in consumer:
                    received.append(message)
                    await message.ack()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, first)
                nursery.start_soon(drain, second)
                while {m.msg_id for m in received} != sent:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert len(received) == len(sent)  # each once: no queue was read by both
            assert {m.group for m in received} == {"broker-a", "broker-b"}
        # One consumer alone takes all eight queues, and starts where the group committed.
        async with Consumer(groups.naming, group="billing", topic="orders") as alone:
            while set(alone.queues) != every_queue:
                await trio.sleep(0.05)
            async with Producer(groups.naming) as producer:
                more = {(await producer.send("orders", b"more")).msg_id for _ in range(8)}
            got = await consume(alone, 8)
            assert {m.msg_id for m in got} == more


async def test_a_group_leader_killed_is_a_pause_for_that_group_only_and_loses_nothing(
    groups: TwoGroups,
) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        await groups.a.wait_for_leader()
        old = await groups.b.wait_for_leader()
        await groups.create_topic("orders", 8)
        async with Producer(groups.naming) as producer:
            before = [await producer.send("orders", b"before") for _ in range(8)]
            groups.b.kill(old.node_id)
            # Sends go on at once: group b is skipped while it elects, group a takes them.
            during = [await producer.send("orders", b"during") for _ in range(20)]
            await groups.b.wait_for_leader(exclude=[old.node_id], min_term=old.term)
            # Once b has a leader again (and its skip has lapsed), it takes sends again.
            after = []
            while not any(r.group == "broker-b" for r in after):
                after.append(await producer.send("orders", b"after"))
        receipts = before + during + after
        assert Counter(r.group for r in during)["broker-a"] >= 10
        async with Consumer(groups.naming, group="billing", topic="orders") as consumer:
            got = await consume(consumer, len(receipts))
        # Nothing lost, nothing twice.
        assert sorted(m.msg_id for m in got) == sorted(r.msg_id for r in receipts)


async def test_a_whole_group_down_leaves_sends_to_the_other_and_consumers_pick_it_up_again(
    groups: TwoGroups,
) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        await groups.create_topic("orders", 8)
        async with (
            Producer(groups.naming) as producer,
            Consumer(groups.naming, group="billing", topic="orders") as consumer,
        ):
            first = [await producer.send("orders", b"first") for _ in range(8)]
            got = await consume(consumer, 8)
            assert {m.msg_id for m in got} == {r.msg_id for r in first}
            for node_id in groups.b.running:
                groups.b.kill(node_id)
            # Group b is gone: every send lands in group a, none fails, and they are consumed.
            while_down = [await producer.send("orders", b"while b is down") for _ in range(30)]
            assert Counter(r.group for r in while_down[5:]) == {"broker-a": 25}
            got = await consume(consumer, 30)
            assert {m.msg_id for m in got} == {r.msg_id for r in while_down}
            # Group b comes back with its messages; the consumer reads it again.
            groups.b.start_all()
            await groups.b.wait_for_leader()
            back = []
            while not any(r.group == "broker-b" for r in back):
                back.append(await producer.send("orders", b"b is back"))
            got = await consume(consumer, len(back))
            assert {m.msg_id for m in got} == {r.msg_id for r in back}
