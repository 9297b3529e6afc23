"""The blocking SDK (``dledger_mq.sync``) against a real cluster: sends from several threads at
once with the leader killed while they are in flight (a pause, no error), every message
consumed once and acknowledged, a receive with nothing to get a ``TimeoutError``, and the
shared Trio thread gone once the last client closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import trio

from dledger_mq import sync
from dledger_mq.clients.simple_consumer import SimpleMessage
from dledger_mq.errors import BadRequest
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


@pytest.mark.cluster_options(**NAMING)
async def test_blocking_sends_survive_a_leader_kill_and_are_consumed_once(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    producer = sync.Producer(naming=naming)
    token = trio.lowlevel.current_trio_token()
    killed = threading.Event()

    def send_from_threads(first: int) -> list[str]:
        ids: list[str] = []
        lock = threading.Lock()

        def one(number: int) -> None:
            receipt = producer.send("orders", b"%d" % number, timeout=DEADLINE_SECONDS)
            with lock:
                ids.append(receipt.msg_id)
                if first and not killed.is_set():  # the other threads' sends are in flight
                    killed.set()
                    trio.from_thread.run_sync(lambda: cluster.kill(leader), trio_token=token)

        threads = [threading.Thread(target=one, args=(first + n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ids

    await trio.to_thread.run_sync(producer.__enter__)
    try:
        before = await trio.to_thread.run_sync(send_from_threads, 0)
        after = await trio.to_thread.run_sync(send_from_threads, 10)
    finally:
        await trio.to_thread.run_sync(producer.close)
    assert killed.is_set() and leader not in cluster.running
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


@pytest.mark.cluster_options(**NAMING)
async def test_blocking_admin_simple_consumer_and_a_handler_that_fails_once(
    cluster: ProcessCluster,
) -> None:
    leader = cluster.client_address((await cluster.wait_for_leader()).node_id)
    naming = list(cluster.naming.values())

    def application() -> tuple[list[str], dict[int, list[int]], list[bytes], bool]:
        with sync.Admin(leader) as admin:
            admin.create_topic("jobs", 2, timeout=DEADLINE_SECONDS)
            admin.update_group("workers", 3, [100])
            topics = sorted(info.name for info in admin.list_topics())
            with pytest.raises(BadRequest, match="invalid topic name 'bad name!'"):
                admin.create_topic("bad name!", 1)  # the Trio SDK's class, with its text
        with sync.Producer(naming=naming) as producer:
            for number in range(4):
                producer.send("jobs", b"%d" % number, timeout=DEADLINE_SECONDS)
            producer.send("tasks", b"simple", timeout=DEADLINE_SECONDS)

        attempts: dict[int, list[int]] = {}
        lock = threading.Lock()
        consumer = sync.Consumer(naming=naming, group="workers", topic="jobs")

        def handler(message: sync.Message) -> None:  # even numbers fail the first time
            number = int(message.body)
            with lock:
                attempts.setdefault(number, []).append(message.attempt)
                seen = sum(len(tries) for tries in attempts.values())
            if message.attempt == 1 and number % 2 == 0:
                raise ValueError("not yet")
            if seen == 6:
                threading.Thread(target=consumer.close).start()  # ends run() in every thread

        with consumer:
            consumer.run(handler, concurrency=2)

        with sync.SimpleConsumer(
            naming=naming, group="simple", subscriptions={"tasks": "*"}
        ) as simple:
            received: list[SimpleMessage] = []
            while not received:
                received = simple.receive(4, timedelta(seconds=30), timeout=DEADLINE_SECONDS)
            acked = simple.ack(received[0])
        return topics, attempts, [message.body for message in received], acked

    topics, attempts, bodies, acked = await trio.to_thread.run_sync(application)
    assert topics == ["jobs"]
    assert attempts == {0: [1, 2], 1: [1], 2: [1, 2], 3: [1]}
    assert bodies == [b"simple"] and acked
    assert sync._TRIO._thread is None


CTRL_C_SCRIPT = """
import sys
from dledger_mq.sync import Consumer, Producer

naming = sys.argv[1]
with Consumer(naming=naming, group="g", topic="quiet") as consumer:
    try:
        print("waiting", flush=True)
        consumer.receive()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # The interrupted receive was cancelled underneath; the consumer still works.
    with Producer(naming=naming) as producer:
        producer.send("quiet", b"after", timeout=30)
    print(consumer.receive(timeout=30).body.decode(), flush=True)
print("closed", flush=True)
"""


@pytest.mark.cluster_options(**NAMING)
async def test_ctrl_c_interrupts_a_blocking_receive_and_the_consumer_goes_on(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = next(iter(cluster.naming.values()))
    process = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, naming],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = await trio.to_thread.run_sync(process.stdout.readline)
        assert first == "waiting\n"
        process.send_signal(signal.SIGINT)
        rest, errors = await trio.to_thread.run_sync(
            lambda: process.communicate(timeout=DEADLINE_SECONDS)
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, errors[-2000:]
    assert rest.splitlines() == ["interrupted", "after", "closed"]
