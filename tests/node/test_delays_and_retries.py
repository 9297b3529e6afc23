"""Delayed messages, retries, dead letters and start positions on a real three-node cluster
(docs/broker.md, "Timers"): a delayed message is delivered at its time, never before, also
across a leader kill and a restart from snapshots; a failing message is retried after its
group's delays with ``attempt`` counting up, and after the last attempt lies in the
dead-letter topic, from where the CLI lists it and sends it back."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from dledger_mq.clients import Consumer, Producer
from dledger_mq.clients.admin import connect_admin
from dledger_mq.clients.consumer import ReceivedMessage
from dledger_mq.node.data_dir import log_directory
from dledger_mq.wire.broker import DELIVER_AT_PROPERTY
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


def _never_early(message: ReceivedMessage) -> None:
    """The copy was stored (made visible) at or after the time the producer asked for."""
    deliver_at = int(message.properties[DELIVER_AT_PROPERTY])
    assert message.stored.store_timestamp_ms >= deliver_at


async def _receive(consumer: Consumer, count: int) -> list[ReceivedMessage]:
    got = []
    async for message in consumer:
        got.append(message)
        await message.ack()
        if len(got) == count:
            break
    return got


@pytest.mark.cluster_options(**NAMING)
async def test_a_delayed_message_is_stored_at_once_and_delivered_at_its_time(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        later = await producer.send("orders", b"later", delay=timedelta(milliseconds=1500))
        at = datetime.now(UTC) + timedelta(milliseconds=700)
        sooner = await producer.send("orders", b"sooner", deliver_at=at)
        now = await producer.send("orders", b"now")
    assert later.offset == -1 and sooner.offset == -1 and now.offset >= 0
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            got = await _receive(consumer, 3)
    assert [m.body for m in got] == [b"now", b"sooner", b"later"]  # (each in time order)
    for message in got[1:]:
        _never_early(message)
    # The id is the one the producer was given, though a copy is what was delivered.
    assert [m.msg_id for m in got[1:]] == [sooner.msg_id, later.msg_id]


@pytest.mark.cluster_options(**NAMING)
async def test_a_delayed_message_survives_a_leader_kill_and_is_delivered_once(
    cluster: ProcessCluster,
) -> None:
    old = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        receipts = [
            await producer.send("orders", b"%d" % n, delay=timedelta(milliseconds=1500 + 100 * n))
            for n in range(5)
        ]
    cluster.kill(old)
    await cluster.wait_for_leader(exclude=[old])
    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            got = await _receive(consumer, 5)
            # Nothing more: each timer fired once, whichever leader fired it.
            with trio.move_on_after(2):
                extra = await consumer.__anext__()
                pytest.fail(f"delivered twice: {extra.msg_id}")
    assert sorted(m.msg_id for m in got) == sorted(r.msg_id for r in receipts)
    for message in got:
        _never_early(message)


@pytest.mark.cluster_options(**NAMING, snapshot_interval_entries=5)
async def test_pending_timers_survive_a_restart_of_every_node_from_snapshots(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        delayed = await producer.send("orders", b"delayed", delay=timedelta(seconds=3))
        for number in range(20):  # past several snapshots
            await producer.send("orders", b"%d" % number)
    for node_id in list(cluster.running):
        await cluster.stop(node_id)
    cluster.start_all()
    await cluster.wait_for_leader()
    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            got = await _receive(consumer, 21)
    assert [m.msg_id for m in got if m.body == b"delayed"] == [delayed.msg_id]
    _never_early(next(m for m in got if m.body == b"delayed"))


@pytest.mark.cluster_options(**NAMING)
async def test_a_failing_message_is_retried_then_dead_lettered_and_redriven(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        # Configured before any consumer of the group exists.
        await admin.update_group("billing", 3, [300, 600])
        await admin.create_topic("orders", 2)
    async with Producer(naming=naming) as producer:
        poison = await producer.send("orders", b"poison")
        flaky = await producer.send("orders", b"flaky")
        good = await producer.send("orders", b"good")
    attempts: dict[bytes, list[int]] = {}
    ids: dict[bytes, set[str]] = {}
    done = trio.Event()

    async def handle(message: ReceivedMessage) -> None:
        attempts.setdefault(message.body, []).append(message.attempt)
        ids.setdefault(message.body, set()).add(message.msg_id)
        assert message.topic == "orders"  # also when read from the retry topic
        if (
            attempts.get(b"poison") == [1, 2, 3]
            and b"good" in attempts
            and (attempts.get(b"flaky") == [1, 2])
        ):
            done.set()
        if message.body == b"poison" or (message.body == b"flaky" and message.attempt == 1):
            raise RuntimeError(f"cannot handle {message.body!r}")

    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with (
            Consumer(naming=naming, group="billing", topic="orders") as consumer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(consumer.run, handle)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert attempts == {b"poison": [1, 2, 3], b"flaky": [1, 2], b"good": [1]}
    assert ids == {b"poison": {poison.msg_id}, b"flaky": {flaky.msg_id}, b"good": {good.msg_id}}

    # The poison message lies in the dead-letter topic; the CLI lists it and sends it back.
    endpoints = ",".join(cluster.client_address(n) for n in cluster.running)
    listed = await _cli("group", "dlq", "list", "billing", "--endpoints", endpoints, "--json")
    [letter] = json.loads(listed)
    assert letter["msg_id"] == poison.msg_id
    assert letter["topic"] == "orders" and letter["attempts"] == 3 and not letter["redriven"]
    assert "RuntimeError: cannot handle b'poison'" in letter["last_error"]
    sent = await _cli("group", "dlq", "redrive", "billing", "--endpoints", endpoints)
    assert f"{poison.msg_id} -> orders" in sent
    listed = await _cli("group", "dlq", "list", "billing", "--endpoints", endpoints, "--json")
    assert [item["redriven"] for item in json.loads(listed)] == [True]
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            [again] = await _receive(consumer, 1)
    assert again.body == b"poison" and again.attempt == 1
    assert again.properties["DLQ_REDRIVEN_FROM"] == poison.msg_id


@pytest.mark.cluster_options(**NAMING)
async def test_a_message_not_settled_within_its_invisible_duration_comes_again(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.update_group("billing", 5, [200])
    async with Producer(naming=naming) as producer:
        sent = await producer.send("orders", b"slow")
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(
            naming=naming,
            group="billing",
            topic="orders",
            invisible_duration=timedelta(milliseconds=500),
        ) as consumer:
            first = await consumer.__anext__()  # and never settled in time
            second = await consumer.__anext__()
            await first.ack()  # too late: ignored
            await second.ack()
    assert first.outcome == "nack"
    assert (second.msg_id, second.attempt) == (sent.msg_id, 2)


@pytest.mark.cluster_options(**NAMING)
async def test_a_fifo_queue_retries_in_place_and_the_queue_waits(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("ledger", 1, fifo=True)
        await admin.update_group("billing", 3, [200])
    async with Producer(naming=naming) as producer:
        for body in (b"a", b"b", b"c"):
            await producer.send("ledger", body)
    seen: list[tuple[bytes, int]] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="ledger") as consumer:
            async for message in consumer:
                seen.append((message.body, message.attempt))
                if message.body == b"a" and message.attempt == 1:
                    await message.nack("not yet")
                elif message.body == b"b":
                    await message.nack("never")  # three attempts, then a dead letter
                else:
                    await message.ack()
                if message.body == b"c":
                    break
    assert seen == [(b"a", 1), (b"a", 2), (b"b", 1), (b"b", 2), (b"b", 3), (b"c", 1)]


@pytest.mark.cluster_options(**NAMING)
async def test_a_new_group_starts_where_start_says(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"old")
        await trio.sleep(0.05)  # a store time strictly after the old message's
        middle = datetime.now(UTC)
        await trio.sleep(0.05)
        await producer.send("orders", b"middle")
    with trio.fail_after(DEADLINE_SECONDS):
        async with (
            Consumer(naming=naming, group="from-start", topic="orders") as earliest,
            Consumer(naming=naming, group="from-time", topic="orders", start=middle) as timed,
            Consumer(naming=naming, group="from-now", topic="orders", start="latest") as latest,
        ):
            while not latest.queues:
                await trio.sleep(0.05)  # it read where the queues end: now send
            async with Producer(naming=naming) as producer:
                await producer.send("orders", b"new")
            # (In any order: they may lie in different queues.)
            assert sorted(m.body for m in await _receive(earliest, 3)) == [
                b"middle",
                b"new",
                b"old",
            ]
            assert sorted(m.body for m in await _receive(timed, 2)) == [b"middle", b"new"]
            assert [m.body for m in await _receive(latest, 1)] == [b"new"]


async def _cli(*arguments: str) -> str:
    done = await trio.run_process(
        [sys.executable, "-m", "dledger_mq", *arguments],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.cluster_options(
    **NAMING,
    segment_size_bytes=4096,
    snapshot_interval_entries=20,
    retention_bytes=8192,
    retention_check_ms=50,
)
async def test_a_follower_that_installs_a_snapshot_gets_the_pending_timers_message(
    cluster: ProcessCluster,
) -> None:
    """The log is trimmed, but not past a pending timer's entry, and the follower that needs
    a snapshot is sent one from before that entry: it gets the message as an entry, and fires
    it once it leads (without the pin it would get the newest snapshot and lack the body)."""
    leader = (await cluster.wait_for_leader()).node_id
    follower = next(n for n in cluster.nodes if n != leader)
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 1)
    assert await cluster.stop(follower) == 0
    for number in range(100):
        await cluster.propose(b"entry %03d " % number + b"x" * 100)
    async with Producer(naming=naming) as producer:
        delayed = await producer.send("orders", b"delayed", delay=timedelta(seconds=15))
    timer_index = int(delayed.msg_id.split(":")[1])
    for number in range(300):
        index = await cluster.propose(b"entry %03d " % number + b"x" * 100)
    leader_log = Path(log_directory(cluster.nodes[leader].config))

    def leader_log_start() -> int:
        return min(int(path.stem) for path in leader_log.glob("*.log"))

    await cluster.wait_until(lambda _: leader_log_start() > 50, "the leader trims its log")
    assert leader_log_start() <= timer_index  # the timer's entry is kept
    mark = cluster.log_mark(follower)
    cluster.start(follower)
    await cluster.wait_caught_up(index)
    [installed] = [
        e for e in cluster.log_events(follower, mark) if e["event"] == "snapshot_installed"
    ]
    assert int(str(installed["index"])) < timer_index
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.transfer_leader(follower)
    await cluster.wait_for_leader(exclude=[n for n in cluster.nodes if n != follower])
    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            [message] = await _receive(consumer, 1)
    assert message.msg_id == delayed.msg_id
    _never_early(message)


@pytest.mark.cluster_options(**NAMING)
async def test_retries_go_on_across_a_leader_kill(cluster: ProcessCluster) -> None:
    old = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(old)) as admin:
        await admin.update_group("billing", 4, [1000])
    async with Producer(naming=naming) as producer:
        sent = await producer.send("orders", b"flaky")
    attempts: list[int] = []
    with trio.fail_after(2 * DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            async for message in consumer:
                assert message.msg_id == sent.msg_id
                attempts.append(message.attempt)
                if message.attempt == 1:
                    await message.nack("once")
                    cluster.kill(old)  # the send-back goes to whoever leads next
                else:
                    await message.ack()
                    break
    assert attempts[0] == 1 and attempts[-1] == 2 and set(attempts) == {1, 2}


@pytest.mark.cluster_options(**NAMING)
async def test_one_consumer_reads_several_topics(cluster: ProcessCluster) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"o", tags="paid")
        await producer.send("orders", b"skipped", tags="draft")
        await producer.send("refunds", b"r")
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(
            naming=naming, group="billing", subscriptions={"orders": "paid", "refunds": "*"}
        ) as consumer:
            got = await _receive(consumer, 2)
    assert sorted((m.topic, m.body) for m in got) == [("orders", b"o"), ("refunds", b"r")]
