"""The asyncio SDK (``dledger_mq.aio``: the Trio clients in Trio's guest mode on the asyncio
loop) against a real cluster: many concurrent sends from asyncio tasks, as a web handler makes
them, with the leader killed while a round is in flight (a pause, no error); every message
consumed once; ``asyncio.timeout`` around a receive cancels it underneath and the consumer
goes on; the guest run ends with the last client."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
import trio

from dledger_mq import aio
from dledger_mq.clients.simple_consumer import SimpleMessage
from dledger_mq.errors import BadRequest
from tests.node.cluster_fixture import ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


@pytest.mark.cluster_options(**NAMING)
async def test_asyncio_sends_survive_a_leader_kill_and_a_timeout_cancels_a_receive(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    token = trio.lowlevel.current_trio_token()

    async def application() -> tuple[list[str], list[int], bool, int]:
        async with aio.Producer(naming=naming) as producer:
            killed = False

            async def handler(number: int) -> str:  # one web request: one send
                nonlocal killed
                receipt = await producer.send("orders", b"%d" % number)
                if number >= 25 and not killed:  # the rest of the round is in flight
                    killed = True
                    trio.from_thread.run_sync(lambda: cluster.kill(leader), trio_token=token)
                return receipt.msg_id

            ids = await asyncio.gather(*(handler(n) for n in range(25)))
            ids += await asyncio.gather(*(handler(n) for n in range(25, 50)))
            assert killed
        seen: list[int] = []
        async with aio.Consumer(naming=naming, group="billing", topic="orders") as consumer:
            async for message in consumer:
                seen.append(int(message.body))
                await message.ack()
                if len(seen) == 50:
                    break
            timed_out = False
            try:
                async with asyncio.timeout(0.5):
                    await consumer.__anext__()
            except TimeoutError:
                timed_out = True
            # Cancelled underneath, not broken: a new message still arrives.
            async with aio.Producer(naming=naming) as producer:
                await producer.send("orders", b"50")
            late = int((await consumer.__anext__()).body)
        return list(ids), seen, timed_out, late

    ids, seen, timed_out, late = await trio.to_thread.run_sync(asyncio.run, application())
    assert len(set(ids)) == 50
    assert sorted(seen) == list(range(50))
    assert timed_out and late == 50
    assert aio._LOOPS == {}  # the last client closed: the guest run ended


@pytest.mark.cluster_options(**NAMING)
async def test_asyncio_admin_simple_consumer_and_a_handler_that_fails_once(
    cluster: ProcessCluster,
) -> None:
    leader = cluster.client_address((await cluster.wait_for_leader()).node_id)
    naming = list(cluster.naming.values())

    async def application() -> tuple[list[str], dict[int, list[int]], list[bytes], bool]:
        async with aio.Admin(leader) as admin:
            await admin.create_topic("jobs", 2)
            await admin.update_group("workers", 3, [100])
            topics = sorted(info.name for info in await admin.list_topics())
            try:  # the broker's refusal arrives as the Trio SDK's class, with its text
                await admin.create_topic("bad name!", 1)
            except BadRequest as error:
                topics.append(str(error))
        async with aio.Producer(naming=naming) as producer:
            for number in range(4):
                await producer.send("jobs", b"%d" % number)
            await producer.send("tasks", b"simple")

        attempts: dict[int, list[int]] = {}
        finished = asyncio.Event()

        async def handler(message: aio.Message) -> None:  # even numbers fail the first time
            number = int(message.body)
            attempts.setdefault(number, []).append(message.attempt)
            if message.attempt == 1 and number % 2 == 0:
                raise ValueError("not yet")
            if sum(len(seen) for seen in attempts.values()) == 6:
                finished.set()

        async with aio.Consumer(naming=naming, group="workers", topic="jobs") as consumer:
            running = asyncio.create_task(consumer.run(handler, concurrency=2))
            await finished.wait()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        async with aio.SimpleConsumer(
            naming=naming, group="simple", subscriptions={"tasks": "*"}
        ) as simple:
            received: list[SimpleMessage] = []
            while not received:
                received = await simple.receive(4, timedelta(seconds=30))
            acked = await simple.ack(received[0])
        return topics, attempts, [message.body for message in received], acked

    topics, attempts, bodies, acked = await trio.to_thread.run_sync(asyncio.run, application())
    assert topics[0] == "jobs" and "invalid topic name 'bad name!'" in topics[1]
    assert attempts == {0: [1, 2], 1: [1], 2: [1, 2], 3: [1]}
    assert bodies == [b"simple"] and acked
    assert aio._LOOPS == {}


async def test_asyncio_admin_names_its_methods_and_refuses_others() -> None:
    admin = aio.Admin("127.0.0.1:1")
    assert {"create_topic", "list_topics", "update_group"} <= set(dir(admin))
    with pytest.raises(AttributeError, match="no method 'propose_everything'"):
        admin.propose_everything  # noqa: B018
    with pytest.raises(RuntimeError, match="in an `async with` block"):
        await admin.list_topics()
