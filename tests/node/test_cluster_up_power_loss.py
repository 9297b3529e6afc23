"""All nodes of `cluster up` lose power at once (every process killed; with the harness's
`lose-unsynced` disk, every byte not fsynced is gone): `cluster up` in the same folder comes
back by itself, with every acknowledged message."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from dledger_mq.clients.admin import connect_admin
from dledger_mq.clients.producer import Producer
from dledger_mq.errors import TopicNotFound
from dledger_mq.node.harness import HARNESS_ENVIRONMENT_VARIABLE
from dledger_mq.wire.broker import PullReply, PullRequest
from tests.node.cluster_up import DEADLINE_SECONDS, ClusterUp, cluster_up, power_cut

POWER_LOSS = {**os.environ, HARNESS_ENVIRONMENT_VARIABLE: "lose-unsynced"}


async def stored_bodies(up: ClusterUp, topic: str) -> list[bytes]:
    """Every body of ``topic`` as the leader has it, every queue read to its end."""
    leader = await up.wait_for_leader()
    bodies: list[bytes] = []
    async with connect_admin(leader.address, credentials=up.credentials) as admin:
        for queue_id in range(4):
            offset = 0
            while True:
                try:
                    reply: PullReply = await admin.connection.request(
                        PullRequest(topic, queue_id, offset, 256)
                    )
                except TopicNotFound:
                    return []  # lost with everything else
                bodies += [message.body for message in reply.messages]
                if reply.next_offset >= reply.max_offset:
                    break
                offset = reply.next_offset
    return bodies


async def test_a_power_cut_right_after_the_cluster_was_created(tmp_path: Path) -> None:
    with cluster_up(tmp_path, environment=POWER_LOSS) as up:
        with trio.fail_after(DEADLINE_SECONDS):
            while len(list(up.root.glob("*/node.pid"))) < 3:
                await trio.sleep(0.01)
        power_cut(up)

        up.start()
        await up.wait_for_leader()
        sent = await up.dledger("send", "orders", "after the power cut", "--naming", up.naming)
        assert sent.startswith("broker-a:")
        assert "node.toml" not in up.output()  # no config came back damaged


async def test_a_power_cut_under_load_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    acknowledged: list[bytes] = []
    with cluster_up(tmp_path, environment=POWER_LOSS) as up:
        await up.wait_for_leader()
        naming = up.naming.split(",")
        async with (
            trio.open_nursery() as nursery,
            Producer(naming=naming, credentials=up.credentials) as producer,
        ):

            async def send_forever(writer: int) -> None:
                for number in range(1_000_000):
                    body = f"{writer}-{number}".encode()
                    await producer.send("orders", body)
                    acknowledged.append(body)

            for writer in range(4):
                nursery.start_soon(send_forever, writer)
            with trio.fail_after(DEADLINE_SECONDS):
                while len(acknowledged) < 300:
                    await trio.sleep(0.01)
            power_cut(up)  # in the middle of the sends
            nursery.cancel_scope.cancel()

        up.start()
        stored = await stored_bodies(up, "orders")
        missing = set(acknowledged) - set(stored)
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
        assert len(stored) == len(set(stored)), "a message was stored twice"
