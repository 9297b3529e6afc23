"""The blocking SDK (``dledger_mq.sync``) against a real cluster: sends from several threads at
once, a leader kill between them a pause and no error, every message consumed once and
acknowledged, a receive with nothing to get a ``TimeoutError``, and the shared Trio thread gone
once the last client closed."""

from __future__ import annotations

import threading

import pytest
import trio

from dledger_mq import sync
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


@pytest.mark.cluster_options(**NAMING)
async def test_blocking_sends_survive_a_leader_kill_and_are_consumed_once(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    producer = sync.Producer(naming=naming)

    def send_from_threads(first: int) -> list[str]:
        ids: list[str] = []
        lock = threading.Lock()

        def one(number: int) -> None:
            receipt = producer.send("orders", b"%d" % number, timeout=DEADLINE_SECONDS)
            with lock:
                ids.append(receipt.msg_id)

        threads = [threading.Thread(target=one, args=(first + n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ids

    await trio.to_thread.run_sync(producer.__enter__)
    try:
        before = await trio.to_thread.run_sync(send_from_threads, 0)
        cluster.kill(leader)
        after = await trio.to_thread.run_sync(send_from_threads, 10)
    finally:
        await trio.to_thread.run_sync(producer.close)
    assert len(set(before + after)) == 20

    def consume_all() -> tuple[list[int], str]:
        seen: list[int] = []
        with sync.Consumer(naming=naming, group="billing", topic="orders") as consumer:
            for message in consumer:
                seen.append(int(message.body))
                message.ack()
                if len(seen) == 20:
                    break
            try:
                consumer.receive(timeout=0.5)
            except TimeoutError as error:
                return seen, str(error)
        return seen, "a 21st message"

    seen, nothing_more = await trio.to_thread.run_sync(consume_all)
    assert sorted(seen) == list(range(20))
    assert nothing_more == "no answer within 0.5 s"
    assert sync._TRIO._thread is None  # the last client closed: the Trio thread ended
