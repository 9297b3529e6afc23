"""The producer end to end: sends, pulls, and a leader killed mid-stream seen as a pause only."""

from __future__ import annotations

import pytest
import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.clients.consumer import Consumer
from dledger_mq.clients.producer import Producer
from dledger_mq.errors import TopicNotFound, Unavailable, UsageError
from dledger_mq.wire.broker import PullReply, PullRequest, StoredMessage
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


async def pull_everything(
    cluster: ProcessCluster, node_id: str, topic: str, queues: int
) -> dict[int, list[StoredMessage]]:
    result: dict[int, list[StoredMessage]] = {}
    async with connect_admin(cluster.client_address(node_id)) as admin:
        for queue_id in range(queues):
            offset, messages = 0, []
            while True:
                reply: PullReply = await admin.connection.request(
                    PullRequest(topic, queue_id, offset, 256)
                )
                messages += reply.messages
                if reply.next_offset >= reply.max_offset:
                    break
                offset = reply.next_offset
            result[queue_id] = messages
    return result


@pytest.mark.cluster_options(**NAMING)
async def test_sent_messages_are_pulled_back_with_everything_they_carried(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    async with Producer(naming=list(cluster.naming.values())) as producer:
        receipt = await producer.send(
            "orders", b"first", tags="paid", keys=["o-1"], properties={"region": "eu"}
        )
        batch = await producer.send_batch("orders", [b"a", b"b", b"c"], sharding_key="o-2")
    # Same sharding key, same queue, consecutive offsets.
    assert len({r.queue_id for r in batch}) == 1
    assert [r.offset for r in batch] == list(range(batch[0].offset, batch[0].offset + 3))
    # The leader has applied what it acknowledged (followers catch up a heartbeat later).
    pulled = await pull_everything(cluster, leader, "orders", 4)
    [first] = [m for m in pulled[receipt.queue_id] if m.msg_id == receipt.msg_id]
    assert (first.body, first.tags, first.keys, first.properties) == (
        b"first",
        "paid",
        ("o-1",),
        {"region": "eu"},
    )
    assert [m.body for m in pulled[batch[0].queue_id] if m.body in (b"a", b"b", b"c")] == [
        b"a",
        b"b",
        b"c",
    ]


@pytest.mark.cluster_options(**NAMING)
async def test_a_leader_killed_during_sends_loses_nothing_and_stores_nothing_twice(
    cluster: ProcessCluster,
) -> None:
    old = (await cluster.wait_for_leader()).node_id
    acknowledged: list[bytes] = []
    async with (
        Producer(naming=list(cluster.naming.values())) as producer,
        trio.open_nursery() as nursery,
    ):
        stop = trio.Event()

        async def send_forever() -> None:
            number = 0
            while not stop.is_set():
                body = f"m-{number}".encode()
                await producer.send("events", body)  # no exception may surface here
                acknowledged.append(body)
                number += 1

        nursery.start_soon(send_forever)
        with trio.fail_after(DEADLINE_SECONDS):
            while len(acknowledged) < 50:
                await trio.sleep(0.01)
        cluster.kill(old)
        await cluster.wait_for_leader(exclude=[old])
        cluster.start(old)  # it rejoins, as a follower, while the sends go on
        with trio.fail_after(DEADLINE_SECONDS):
            mark = len(acknowledged)
            while len(acknowledged) < mark + 50:
                await trio.sleep(0.01)
        stop.set()
    survivor = next(node for node in cluster.nodes if node != old)
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            pulled = await pull_everything(cluster, survivor, "events", 4)
            stored = [m.body for queue in pulled.values() for m in queue]
            if set(acknowledged) <= set(stored):
                break
            await trio.sleep(0.05)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    for queue in pulled.values():
        numbers = [int(m.body.split(b"-")[1]) for m in queue]
        assert numbers == sorted(numbers), "per-queue order broken"


@pytest.mark.cluster_options(**NAMING)
async def test_a_restarted_follower_applies_what_it_catches_up_on(cluster: ProcessCluster) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    follower = next(node for node in cluster.nodes if node != leader)
    async with Producer(naming=list(cluster.naming.values())) as producer:
        await producer.send_batch("events", [b"before"] * 20)
        cluster.kill(follower)
        await producer.send_batch("events", [b"while down"] * 20)
        cluster.start(follower)
        await producer.send_batch("events", [b"after"] * 20)

    async def max_offsets(node_id: str) -> tuple[int, ...]:
        try:
            async with connect_admin(cluster.client_address(node_id)) as admin:
                topics = await admin.list_topics()
        except Unavailable:  # still starting
            return ()
        return topics[0].max_offsets if topics else ()

    expected = await max_offsets(leader)
    assert sum(expected) == 60
    # Its log catches up by replication; its broker state must follow (it was once left at
    # what it had before the crash, so that as a new leader it reused offsets).
    with trio.fail_after(DEADLINE_SECONDS):
        while await max_offsets(follower) != expected:
            await trio.sleep(0.05)


@pytest.mark.cluster_options(**NAMING)
async def test_a_paused_leader_is_left_behind_without_an_error(cluster: ProcessCluster) -> None:
    old = (await cluster.wait_for_leader()).node_id
    async with Producer(naming=list(cluster.naming.values())) as producer:
        first = await producer.send("events", b"before")
        cluster.pause(old)  # its connections stay open; it just never answers
        try:
            with trio.fail_after(DEADLINE_SECONDS):
                second = await producer.send("events", b"during")
        finally:
            cluster.resume(old)
    assert (second.queue_id, second.offset) != (first.queue_id, first.offset)
    new = (await cluster.wait_for_leader()).node_id
    pulled = await pull_everything(cluster, new, "events", 4)
    assert sorted(m.body for queue in pulled.values() for m in queue) == [b"before", b"during"]


@pytest.mark.cluster_options(**NAMING, auto_create_topics=False)
async def test_with_auto_creation_off_a_send_to_an_unknown_topic_is_refused(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    async with Producer(naming=list(cluster.naming.values())) as producer:
        with pytest.raises(TopicNotFound, match="missing"):
            await producer.send("missing", b"x")
        async with connect_admin(cluster.client_address(leader)) as admin:
            await admin.create_topic("missing", 2)
        receipt = await producer.send("missing", b"x")
    assert receipt.queue_id in (0, 1)


@pytest.mark.cluster_options(**NAMING)
async def test_messages_up_to_the_body_limit_go_through_and_pulls_stay_bounded(
    cluster: ProcessCluster,
) -> None:
    # 4 MiB is the default body limit; a pull carries at most 4 MiB of bodies (but always one).
    bodies = [bytes([number]) * (3 << 20) for number in range(3)] + [b"y" * (4 << 20)]
    leader = (await cluster.wait_for_leader()).node_id
    async with Producer(naming=list(cluster.naming.values())) as producer:
        receipts = [await producer.send("big", body, sharding_key="one queue") for body in bodies]
    [queue_id] = {receipt.queue_id for receipt in receipts}
    offset, pulls = receipts[0].offset, []
    async with connect_admin(cluster.client_address(leader)) as admin:
        while offset <= receipts[-1].offset:
            reply: PullReply = await admin.connection.request(
                PullRequest("big", queue_id, offset, 32)
            )
            pulls.append([message.body for message in reply.messages])
            offset = reply.next_offset
    assert pulls == [[body] for body in bodies]


# -- many sends in flight on one producer: the idempotence window is the producer's to keep ------


async def stored_once(cluster: ProcessCluster, topic: str, expected: set[bytes]) -> None:
    """Every expected body is stored, and none twice, as the leader sees the topic."""
    leader = (await cluster.wait_for_leader()).node_id
    pulled = await pull_everything(cluster, leader, topic, 4)
    stored = [m.body for queue in pulled.values() for m in queue]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(stored) == expected, f"{len(expected - set(stored))} missing"


@pytest.mark.cluster_options(**NAMING)
async def test_eight_concurrent_batches_of_256_to_a_new_topic_are_each_stored_once(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    expected = {f"{batch}-{number}".encode() for batch in range(8) for number in range(256)}
    async with Producer(naming=list(cluster.naming.values())) as producer:

        async def send(batch: int) -> None:
            bodies = [f"{batch}-{number}".encode() for number in range(256)]
            receipts = await producer.send_batch("fresh", bodies)
            assert len(receipts) == 256 and not any(r.duplicate for r in receipts)

        with trio.fail_after(DEADLINE_SECONDS):
            async with trio.open_nursery() as nursery:
                for batch in range(8):
                    nursery.start_soon(send, batch)
        assert producer.sequences.span == 0
    await stored_once(cluster, "fresh", expected)


@pytest.mark.cluster_options(**NAMING)
async def test_two_thousand_concurrent_sends_on_one_producer_are_each_stored_once(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    async with Producer(naming=list(cluster.naming.values())) as producer:
        with trio.fail_after(DEADLINE_SECONDS * 2):
            async with trio.open_nursery() as nursery:
                for number in range(2000):
                    nursery.start_soon(producer.send, "fresh", f"m-{number}".encode())
    await stored_once(cluster, "fresh", {f"m-{number}".encode() for number in range(2000)})


@pytest.mark.cluster_options(**NAMING)
async def test_concurrent_batches_and_sends_through_a_leader_kill_are_each_stored_once(
    cluster: ProcessCluster,
) -> None:
    old = (await cluster.wait_for_leader()).node_id
    expected: set[bytes] = set()
    acknowledged: list[bytes] = []
    async with Producer(naming=list(cluster.naming.values())) as producer:

        async def batches(writer: int) -> None:
            for round_number in range(6):
                bodies = [f"b{writer}-{round_number}-{n}".encode() for n in range(256)]
                expected.update(bodies)
                await producer.send_batch("fresh", bodies)
                acknowledged.extend(bodies)

        async def one_at_a_time(writer: int) -> None:
            for number in range(40):
                body = f"s{writer}-{number}".encode()
                expected.add(body)
                await producer.send("fresh", body)
                acknowledged.append(body)

        with trio.fail_after(DEADLINE_SECONDS * 3):
            async with trio.open_nursery() as nursery:
                for writer in range(8):
                    nursery.start_soon(batches, writer)
                for writer in range(50):
                    nursery.start_soon(one_at_a_time, writer)
                while len(acknowledged) < 3000:
                    await trio.sleep(0.01)
                cluster.kill(old)  # with sends of both kinds in flight
                await cluster.wait_for_leader(exclude=[old])
                cluster.start(old)
    assert len(acknowledged) == len(expected) == 8 * 6 * 256 + 50 * 40
    await stored_once(cluster, "fresh", expected)


@pytest.mark.cluster_options(**NAMING, idempotence_window=64)
async def test_the_window_the_producer_keeps_is_the_brokers(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    expected = {f"{batch}-{number}".encode() for batch in range(8) for number in range(32)}
    async with Producer(naming=list(cluster.naming.values())) as producer:
        with pytest.raises(UsageError, match="exceeds the broker's idempotence window of 64"):
            await producer.send_batch("fresh", [b"x"] * 65)

        async def send(batch: int) -> None:
            await producer.send_batch("fresh", [f"{batch}-{n}".encode() for n in range(32)])

        with trio.fail_after(DEADLINE_SECONDS):
            async with trio.open_nursery() as nursery:
                for batch in range(8):
                    nursery.start_soon(send, batch)
    await stored_once(cluster, "fresh", expected)


@pytest.mark.cluster_options(**NAMING)
async def test_clients_that_know_only_the_leaders_naming_node_ride_out_its_death(
    cluster: ProcessCluster,
) -> None:
    """As the README's examples run against `cluster up`: one naming address, which is the
    leader's own node. When that node dies, the clients find the new leader through the
    replicas naming listed (a follower names its leader), not by waiting for naming."""
    old = (await cluster.wait_for_leader()).node_id
    naming = cluster.naming[old]
    received: list[bytes] = []
    async with (
        Producer(naming=naming) as producer,
        Consumer(naming=naming, group="g", topic="events") as consumer,
        trio.open_nursery() as nursery,
    ):

        async def receive_all() -> None:
            async for message in consumer:
                received.append(message.body)
                await message.ack()

        nursery.start_soon(receive_all)
        for number in range(20):
            await producer.send("events", b"%d" % number)
        cluster.kill(old)
        with trio.fail_after(DEADLINE_SECONDS):  # hung for good before: naming was gone
            for number in range(20, 40):
                await producer.send("events", b"%d" % number)
            while len(set(received)) < 40:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert set(received) == {b"%d" % number for number in range(40)}
    assert old not in cluster.running
