"""The simple consumer (RocketMQ 5's POP model) on a real three-node cluster: consumers of one
group share every queue without rebalancing and never get a message another holds; what is
not acknowledged comes back (attempt + 1), and after the last attempt lies in the dead letters;
a leader kill changes none of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from dledger_mq.clients import Producer, SimpleConsumer, SimpleMessage
from dledger_mq.clients.admin import connect_admin
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}
LONG = timedelta(seconds=60)


async def _receive_all(
    consumer: SimpleConsumer, count: int, invisible: timedelta = LONG
) -> list[SimpleMessage]:
    got: list[SimpleMessage] = []
    while len(got) < count:
        got += await consumer.receive(count - len(got), invisible)
    return got


@pytest.mark.cluster_options(**NAMING)
async def test_simple_consumers_share_queues_and_never_get_a_held_message(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 2)
    async with Producer(naming=naming) as producer:
        sent = {(await producer.send("orders", b"%d" % n)).msg_id for n in range(20)}
    with trio.fail_after(DEADLINE_SECONDS):
        async with (
            SimpleConsumer(naming=naming, group="billing", subscriptions={"orders": "*"}) as a,
            SimpleConsumer(naming=naming, group="billing", subscriptions={"orders": "*"}) as b,
        ):
            got_a = await a.receive(7, LONG)
            got_b = await _receive_all(b, 20 - len(got_a))
            assert {m.msg_id for m in got_a}.isdisjoint({m.msg_id for m in got_b})
            assert {m.msg_id for m in got_a} | {m.msg_id for m in got_b} == sent
            # Everything is held: nothing more to receive.
            assert await a.receive(5, LONG, wait=timedelta(milliseconds=300)) == []
            for message in got_a:
                assert await a.ack(message)
            for message in got_b:
                assert await b.ack(message)
    async with connect_admin(cluster.client_address(leader)) as admin:
        lag = sum(q.lag for q in (await admin.describe_group("billing", "orders")).queues)
    assert lag == 0


@pytest.mark.cluster_options(**NAMING)
async def test_an_unacknowledged_message_comes_back_then_goes_to_the_dead_letters(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 1)
        await admin.update_group("billing", 3, [1000])
    async with Producer(naming=naming) as producer:
        sent = await producer.send("orders", b"poison")
    short = timedelta(milliseconds=300)
    attempts = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with SimpleConsumer(
            naming=naming, group="billing", subscriptions={"orders": "*"}
        ) as consumer:
            for _ in range(3):
                [message] = await _receive_all(consumer, 1, short)
                attempts.append((message.msg_id, message.attempt))
            [third] = [message]
            # Asking for more time keeps it; a nack-like change brings it back at once.
            assert await consumer.change_invisible_duration(third, timedelta(0))
            # Its attempts are used up: the next receive sends it to the dead letters.
            assert await consumer.receive(1, short, wait=timedelta(milliseconds=500)) == []
    assert attempts == [(sent.msg_id, 1), (sent.msg_id, 2), (sent.msg_id, 3)]
    async with connect_admin(cluster.client_address(leader)) as admin:
        letters = await admin.pull("%DLQ%billing", 0, 0, 10)
    [letter] = letters.messages
    assert letter.msg_id == sent.msg_id and letter.properties["__ORIGIN_TOPIC"] == "orders"


@pytest.mark.cluster_options(**NAMING)
async def test_what_a_receive_holds_survives_a_leader_kill(cluster: ProcessCluster) -> None:
    old = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(old)) as admin:
        await admin.create_topic("orders", 2)
    async with Producer(naming=naming) as producer:
        sent = {(await producer.send("orders", b"%d" % n)).msg_id for n in range(6)}
    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with SimpleConsumer(
            naming=naming, group="billing", subscriptions={"orders": "*"}
        ) as consumer:
            held = await _receive_all(consumer, 6, timedelta(seconds=3))
            for message in held[:3]:
                assert await consumer.ack(message)
            cluster.kill(old)
            await cluster.wait_for_leader(exclude=[old])
            # The acknowledged ones never come back; the others do once invisible no longer.
            back = await _receive_all(consumer, 3, LONG)
            assert {m.msg_id for m in back} == {m.msg_id for m in held[3:]}
            assert all(m.attempt == 2 for m in back)
            for message in back:
                assert await consumer.ack(message)
    assert {m.msg_id for m in held} == sent
