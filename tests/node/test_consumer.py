"""Consumers of a group share the queues, see only matching tags, and resume where acked."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from dledger_mq.clients import Consumer, Producer
from dledger_mq.clients import consumer as consumer_module
from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import BadRequest
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


async def consume(naming: list[str], group: str, count: int, tags: str = "*") -> list[int]:
    """Receive and acknowledge ``count`` messages of topic "orders" as one consumer."""
    seen: list[int] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group=group, topic="orders", tags=tags) as consumer:
            async for message in consumer:
                seen.append(int(message.body))
                await message.ack()
                if len(seen) == count:
                    break
    return seen


@pytest.mark.cluster_options(**NAMING)
async def test_a_group_consumes_every_matching_message_and_resumes_after_its_acks(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        for number in range(40):
            await producer.send("orders", b"%d" % number, tags="paid" if number % 2 else "new")

    paid = await consume(naming, "billing", 20, tags="paid || refunded")
    assert sorted(paid) == list(range(1, 40, 2))
    everything = await consume(naming, "audit", 40)
    assert sorted(everything) == list(range(40))

    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"41", tags="paid")
    # The group committed its acknowledgements when the consumer closed: only the new one.
    assert await consume(naming, "billing", 1, tags="paid") == [41]


@pytest.mark.cluster_options(**NAMING)
async def test_send_and_consume_commands(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    naming = ",".join(cluster.naming.values())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dledger_mq", *args, "--naming", naming],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    sent = await trio.to_thread.run_sync(
        lambda: run(
            "send", "orders", "hello", "--tags", "paid", "--key", "o-1", "--property", "region=eu"
        )
    )
    assert sent.returncode == 0, sent.stderr
    msg_id = sent.stdout.split()[0]
    consumed = await trio.to_thread.run_sync(
        lambda: run("consume", "orders", "--group", "g", "--count", "1", "--json")
    )
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout) == {
        "msg_id": msg_id,
        "topic": "orders",
        "attempt": 1,
        "queue_id": 0,
        "offset": 0,
        "tags": "paid",
        "keys": ["o-1"],
        "properties": {"region": "eu"},
        "body": "hello",
    }
    refused = await trio.to_thread.run_sync(lambda: run("send", "bad topic", "x"))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "Error: invalid topic name 'bad topic': only letters, digits and _ . % - are allowed"
    ]


@pytest.mark.cluster_options(**NAMING)
async def test_group_lag_and_offset_reset(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        for number in range(8):
            await producer.send("orders", b"%d" % number)
    assert sorted(await consume(naming, "billing", 8)) == list(range(8))
    async with connect_admin(cluster.client_address(leader)) as admin:
        described = await admin.describe_group("billing", "orders")
        assert [q.lag for q in described.queues] == [0, 0, 0, 0]
        assert [info.group for info in await admin.list_groups()] == ["billing"]
        reset = await admin.reset_offset("billing", "orders", to_offset=0)
        assert [q.committed_offset for q in reset] == [0, 0, 0, 0]
        assert sum(q.lag for q in reset) == 8
        with pytest.raises(BadRequest, match="exactly one"):
            await admin.reset_offset("billing", "orders")
    # After the reset the group reads everything again.
    assert sorted(await consume(naming, "billing", 8)) == list(range(8))


async def wait_for_committed(
    cluster: ProcessCluster, node_id: str, group: str, at_least: int
) -> None:
    async with connect_admin(cluster.client_address(node_id)) as admin:
        while True:
            described = await admin.describe_group(group, "orders")
            if sum(max(q.committed_offset, 0) for q in described.queues) >= at_least:
                return
            await trio.sleep(0.05)


@pytest.mark.cluster_options(**NAMING)
async def test_a_leader_killed_while_consuming_is_a_pause_and_progress_survives(
    cluster: ProcessCluster,
) -> None:
    old = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        for number in range(60):
            await producer.send("orders", b"%d" % number)
    received: list[int] = []
    with trio.fail_after(4 * DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            async for message in consumer:  # no exception may surface here
                received.append(int(message.body))
                await message.ack()
                if len(received) == 20:
                    # Once the acknowledgements are in the log, kill the leader.
                    await wait_for_committed(cluster, old, "billing", 20)
                    cluster.kill(old)
                if len(set(received)) == 60:
                    break
    # At least once: every message arrived; a redelivery is possible, a gap is not.
    assert set(received) == set(range(60))
    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"60")
    # The group's committed progress survived the failover: only the new message is left.
    assert await consume(naming, "billing", 1) == [60]


@pytest.mark.cluster_options(**NAMING)
async def test_a_fifo_topic_delivers_each_queue_one_at_a_time_in_order(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 4, fifo=True)
    async with Producer(naming=naming) as producer:
        receipts = [
            await producer.send("orders", b"%d" % number, sharding_key="customer-7")
            for number in range(10)
        ]
    assert len({receipt.queue_id for receipt in receipts}) == 1
    received = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            iterator = consumer.__aiter__()
            first = await iterator.__anext__()
            # Not acknowledged yet: the next message of the queue is held back. (A bounded
            # wait is the only way to see that nothing arrives.)
            with trio.move_on_after(0.5) as waited:
                await iterator.__anext__()
            assert waited.cancelled_caught
            await first.ack()
            received.append(int(first.body))
            while len(received) < 10:
                message = await iterator.__anext__()
                received.append(int(message.body))
                await message.ack()
    assert received == list(range(10))


@pytest.mark.cluster_options(**NAMING)
async def test_broadcasting_consumers_each_receive_every_message_and_resume_from_their_file(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 4)
    async with Producer(naming=naming) as producer:
        for number in range(6):
            await producer.send("orders", b"%d" % number)  # before either started
    received: dict[str, list[int]] = {"a": [], "b": []}
    files = {"a": tmp_path / "a.json", "b": tmp_path / "b.json"}

    def broadcasting(name: str) -> Consumer:
        return Consumer(
            naming=naming,
            group="cache",
            topic="orders",
            broadcasting=True,
            offsets_path=files[name],
        )

    with trio.fail_after(DEADLINE_SECONDS):
        async with broadcasting("a") as a, broadcasting("b") as b:
            async with Producer(naming=naming) as producer:
                for number in range(6, 12):
                    await producer.send("orders", b"%d" % number)
            for name, consumer in (("a", a), ("b", b)):
                async for message in consumer:
                    received[name].append(int(message.body))
                    await message.ack()
                    if len(received[name]) == 12:
                        break
    # Each has every message, from the first (start="earliest"), and kept its progress.
    assert sorted(received["a"]) == sorted(received["b"]) == list(range(12))
    saved = consumer_module.read_broadcast_offsets(files["a"])
    assert sum(saved.values()) == 12
    # Started again: only what came since.
    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"12")
    with trio.fail_after(DEADLINE_SECONDS):
        async with broadcasting("a") as a:
            message = await a.__anext__()
            assert message.body == b"12"
            await message.ack()


@pytest.mark.cluster_options(**NAMING)
async def test_a_reset_while_consumers_run_is_followed_not_undone(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        for number in range(20):
            await producer.send("orders", b"%d" % number)
    received: list[int] = []
    async with Consumer(naming=naming, group="replay", topic="orders") as consumer:
        with trio.fail_after(DEADLINE_SECONDS):
            async for message in consumer:
                received.append(int(message.body))
                await message.ack()
                if len(received) == 20:
                    break
            await wait_for_committed(cluster, leader, "replay", 20)
            async with connect_admin(cluster.client_address(leader)) as admin:
                await admin.reset_offset("replay", "orders", to_offset=0)
            # The running consumer notices the reset (heartbeat or a stale commit) and reads
            # everything again, instead of committing its old position over the reset.
            async for message in consumer:
                received.append(int(message.body))
                await message.ack()
                if len(received) == 40:
                    break
    assert sorted(received[20:]) == list(range(20))


@pytest.mark.cluster_options(**NAMING)
async def test_a_fifo_queue_moves_to_a_new_consumer_only_after_the_old_one_lets_go(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 1, fifo=True)
    async with Producer(naming=naming) as producer:
        for number in range(3):
            await producer.send("orders", b"%d" % number, sharding_key="customer-7")
    old = Consumer(naming=naming, group="billing", topic="orders")
    new = Consumer(naming=naming, group="billing", topic="orders")
    # Ids decide the assignment: the one queue goes to the first id, the newcomer.
    old.consumer_id, new.consumer_id = "z-old", "a-new"
    with trio.fail_after(DEADLINE_SECONDS):
        async with old:
            first = await old.__anext__()
            assert first.body == b"0"
            async with new:
                # The queue is now the newcomer's, but the old consumer still holds message 0
                # unacknowledged: nothing may reach the newcomer meanwhile. (A bounded wait
                # is the only way to see that nothing arrives.)
                with trio.move_on_after(2.5) as waited:
                    await new.__anext__()
                assert waited.cancelled_caught
                await first.ack()
                # Let go: the newcomer starts after what the old one acknowledged.
                second = await new.__anext__()
                assert second.body == b"1"
                await second.ack()


@pytest.mark.cluster_options(**NAMING)
async def test_a_consumer_stopped_by_cancellation_still_commits_what_was_acknowledged(
    cluster: ProcessCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual way to stop a Trio consumer is to cancel the scope around it, from outside,
    # here while messages still stream in. Its connections must outlive that cancellation long
    # enough for the final commit. No periodic commit: only the final one records the acks.
    monkeypatch.setattr(consumer_module, "COMMIT_SECONDS", 3600.0)
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    acked: list[int] = []
    enough_acked = trio.Event()

    async def produce_forever() -> None:
        async with Producer(naming=naming) as producer:
            for number in itertools.count():
                await producer.send("orders", b"%d" % number)

    async def consume_until_cancelled() -> None:
        async with Consumer(naming=naming, group="cancelled", topic="orders") as consumer:
            async for message in consumer:
                await message.ack()
                acked.append(int(message.body))
                if len(acked) == 30:
                    enough_acked.set()

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce_forever)
            nursery.start_soon(consume_until_cancelled)
            await enough_acked.wait()
            nursery.cancel_scope.cancel()
    async with connect_admin(cluster.client_address(leader)) as admin:
        described = await admin.describe_group("cancelled", "orders")
    assert sum(max(queue.committed_offset, 0) for queue in described.queues) == len(acked)


@pytest.mark.cluster_options(**NAMING)
async def test_group_commands_and_json_output(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    naming = ",".join(cluster.naming.values())
    endpoints = ",".join(cluster.client_address(node) for node in cluster.nodes)

    async def dledger(*args: str) -> str:
        result = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "dledger_mq", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    receipt = json.loads(await dledger("send", "orders", "one", "--naming", naming, "--json"))
    assert set(receipt) == {
        "msg_id",
        "topic",
        "group",
        "queue_id",
        "offset",
        "duplicate",
        "deliver_at",
    }
    assert (receipt["topic"], receipt["offset"], receipt["duplicate"]) == ("orders", 0, False)
    assert receipt["deliver_at"] is None  # not a delayed message
    await dledger("consume", "orders", "--group", "billing", "--count", "1", "--naming", naming)

    # The consumer's final commit reaches the leader a moment after it printed the message.
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            described = json.loads(
                await dledger(
                    "group",
                    "describe",
                    "billing",
                    "--topic",
                    "orders",
                    "--json",
                    "--endpoints",
                    endpoints,
                )
            )
            if described["lag"] == 0:
                break
            await trio.sleep(0.1)
    assert described["group"] == "billing" and len(described["queues"]) == 4
    assert json.loads(await dledger("group", "list", "--json", "--endpoints", endpoints)) == [
        {"group": "billing", "topics": ["orders"]}
    ]
    assert "billing  topics=orders" in await dledger("group", "list", "--endpoints", endpoints)
    reset = await dledger(
        "group",
        "reset-offset",
        "billing",
        "--topic",
        "orders",
        "--to-offset",
        "0",
        "--endpoints",
        endpoints,
    )
    assert reset.splitlines() == [f"broker-a queue {q}: offset 0" for q in range(4)]
    text = await dledger(
        "group", "describe", "billing", "--topic", "orders", "--endpoints", endpoints
    )
    assert "total lag 1" in text


@pytest.mark.cluster_options(**NAMING)
async def test_consume_of_a_topic_not_created_yet_says_so_and_waits_for_it(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = ",".join(cluster.naming.values())
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "dledger_mq", "consume", "later", "--group", "g", "--count", "1"]
        + ["--naming", naming],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        said = b""
        with trio.fail_after(DEADLINE_SECONDS):
            while b"\n" not in said:
                said += await process.stderr.receive_some(4096)
        assert said.decode() == (
            "waiting for topic 'later': it does not exist yet (the first send creates it)\n"
        )
        async with Producer(naming=list(cluster.naming.values())) as producer:
            await producer.send("later", b"at last")
        with trio.fail_after(DEADLINE_SECONDS):
            assert await process.wait() == 0
        printed = await process.stdout.receive_some(4096)
        assert printed.decode().endswith("] at last\n")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
