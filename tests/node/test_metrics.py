"""A node's operator endpoints on a real cluster (docs/operations.md, "Metrics"): /metrics in
Prometheus' text format with the counters moving as messages are stored and consumed,
/healthz, and /readyz that says not ready while the group has no leader."""

from __future__ import annotations

import http.client
import json

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dledger_mq.clients import Consumer, Producer
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

OPTIONS = {"with_naming": True, "naming_heartbeat_ms": 200, "with_http": True}


def _get(address: str, path: str) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await trio.to_thread.run_sync(_get, address, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _values(samples: dict, name: str, **labels: str) -> list[float]:  # type: ignore[type-arg]
    return [
        float(value)
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    ]


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    found = _values(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.mark.cluster_options(**OPTIONS)
async def test_metrics_move_with_the_messages_and_readiness_follows_the_leader(
    cluster: ProcessCluster,
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    follower = next(n for n in cluster.nodes if n != leader)
    naming = list(cluster.naming.values())
    before = await _scrape(cluster.http[leader])
    assert _value(before, "dledger_role", role="leader", node_id=leader) == 1
    assert _value(before, "rocketmq_topic_number") == 0
    async with Producer(naming=naming) as producer:
        for number in range(10):
            await producer.send("orders", b"%d" % number)
    with trio.fail_after(DEADLINE_SECONDS):
        async with Consumer(naming=naming, group="billing", topic="orders") as consumer:
            received = 0
            async for message in consumer:
                await message.ack()
                received += 1
                if received == 10:
                    break
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            after = await _scrape(cluster.http[follower])  # a follower's view, applied
            # (No sample until the group's first commit is applied there.)
            if _values(after, "rocketmq_consumer_lag_messages", consumer_group="billing") == [0]:
                break
            await trio.sleep(0.1)
    assert _value(after, "rocketmq_messages_in_total", topic="orders") == 10
    assert _value(after, "rocketmq_topic_number") == 1
    assert _value(after, "dledger_apply_lag_entries") >= 0
    assert _value(after, "dledger_log_bytes") > 0
    assert _value(after, "dledger_log_first_index") == 1
    assert _value(after, "dledger_snapshot_age_entries") == _value(after, "dledger_applied_index")
    assert _value(after, "dledger_leader_changes_total") >= 1
    assert _value(after, "dledger_disk_free_bytes") > 0
    # What the leader served: the bodies' bytes stored, the messages handed to the group.
    on_leader = await _scrape(cluster.http[leader])
    assert _value(on_leader, "rocketmq_throughput_in_total", topic="orders") == 10
    assert _value(on_leader, "rocketmq_messages_out_total", consumer_group="billing") >= 10
    assert _value(on_leader, "rocketmq_throughput_out_total", consumer_group="billing") >= 10
    assert _value(on_leader, "dledger_elections_total") >= 1
    # Histograms: every write was fsynced (flush "sync") and counted with its batch size.
    writes = _value(on_leader, "dledger_write_batch_entries_count")
    assert writes >= 1
    assert _value(on_leader, "dledger_fsync_seconds_count") >= writes
    assert _value(on_leader, "dledger_write_batch_entries_sum") >= _value(
        on_leader, "dledger_last_index"
    ) - _value(on_leader, "dledger_log_first_index")
    assert _value(on_leader, "dledger_fsync_seconds_bucket", le="+Inf") == _value(
        on_leader, "dledger_fsync_seconds_count"
    )

    status, body = await trio.to_thread.run_sync(_get, cluster.http[follower], "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = await trio.to_thread.run_sync(_get, cluster.http[follower], "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True

    # The other two paused: the follower loses its leader and says it is not ready.
    others = [n for n in cluster.nodes if n != follower]
    for node_id in others:
        cluster.pause(node_id)
    try:
        with trio.fail_after(DEADLINE_SECONDS):
            while True:
                status, body = await trio.to_thread.run_sync(
                    _get, cluster.http[follower], "/readyz"
                )
                if status == 503:
                    break
                await trio.sleep(0.1)
        assert json.loads(body) == {
            "ready": False,
            "reason": "no leader known",
            "node_id": follower,
        }
    finally:
        for node_id in others:
            cluster.resume(node_id)
    with trio.fail_after(DEADLINE_SECONDS):
        while (await trio.to_thread.run_sync(_get, cluster.http[follower], "/readyz"))[0] != 200:
            await trio.sleep(0.1)
