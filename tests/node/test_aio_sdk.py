"""The asyncio SDK (``dledger_mq.aio``: the Trio clients in Trio's guest mode on the asyncio
loop) against a real cluster: many concurrent sends from asyncio tasks, as a web handler makes
them, with a leader kill between two rounds a pause and no error; every message consumed once;
``asyncio.timeout`` around a receive cancels it underneath and the consumer goes on; the guest
run ends with the last client."""

from __future__ import annotations

import asyncio

import pytest
import trio

from dledger_mq import aio
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

            async def handler(number: int) -> str:  # one web request: one send
                return (await producer.send("orders", b"%d" % number)).msg_id

            ids = await asyncio.gather(*(handler(n) for n in range(25)))
            trio.from_thread.run_sync(lambda: cluster.kill(leader), trio_token=token)
            ids += await asyncio.gather(*(handler(n) for n in range(25, 50)))
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
    assert aio._RUNS == {}  # the last client closed: the guest run ended
