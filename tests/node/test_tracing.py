"""Traces across a real three-node cluster: the broker keeps ``traceparent`` with the message,
so the consumer's process span continues the producer's trace, and a simple consumer's receive
links every message it got. Without tracing the messages carry no trace context at all."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from dledger_mq.clients import (
    Consumer,
    Producer,
    ReceivedMessage,
    SimpleConsumer,
    SimpleMessage,
    tracing,
)
from dledger_mq.clients.admin import connect_admin
from dledger_mq.errors import DledgerError
from tests.clients.otel import named, spans
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # isort: skip
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # isort: skip

__all__ = ["spans"]

NAMING = {"with_naming": True, "naming_heartbeat_ms": 200}


async def consume(
    naming: list[str], count: int, fail: bytes | None = None
) -> list[ReceivedMessage]:
    """The first ``count`` messages ``Consumer.run`` handles; the handler raises for ``fail``."""
    handled: list[ReceivedMessage] = []
    enough = trio.Event()

    async def handler(message: ReceivedMessage) -> None:
        handled.append(message)
        if len(handled) >= count:
            enough.set()
        if message.body == fail:
            raise ValueError("no such customer")

    with trio.fail_after(DEADLINE_SECONDS):
        async with (
            Consumer(naming=naming, group="billing", topic="orders") as consumer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(consumer.run, handler)
            await enough.wait()
            nursery.cancel_scope.cancel()
    return handled


@pytest.mark.cluster_options(**NAMING)
async def test_the_process_span_continues_the_producer_trace_and_a_failure_is_an_error(
    cluster: ProcessCluster, spans: InMemorySpanExporter
) -> None:
    leader = (await cluster.wait_for_leader()).node_id
    naming = list(cluster.naming.values())
    async with connect_admin(cluster.client_address(leader)) as admin:
        await admin.create_topic("orders", 1)
    async with Producer(naming=naming) as producer:
        good = await producer.send("orders", b"good", tags="paid", keys=["o-1"])
        bad = await producer.send("orders", b"bad", tags="paid", keys=["o-2"])
        # Refused by the broker: only it writes a group's dead letters.
        with pytest.raises(DledgerError) as refused:
            await producer.send("%DLQ%billing", b"forged")
    [failed_send] = named(spans, "send %DLQ%billing")
    assert failed_send.status.status_code is StatusCode.ERROR
    assert (failed_send.attributes or {})["error.type"] == type(refused.value).__qualname__
    handled = await consume(naming, 2, fail=b"bad")
    assert [m.body for m in handled] == [b"good", b"bad"]
    assert "traceparent" in handled[0].properties

    sends = {
        (span.attributes or {})["messaging.message.id"]: span
        for span in named(spans, "send orders")
    }
    processes = {
        (span.attributes or {})["messaging.message.id"]: span
        for span in named(spans, "process orders")
    }
    for receipt in (good, bad):
        send, process = sends[receipt.msg_id], processes[receipt.msg_id]
        assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
        assert send.context is not None and process.context is not None
        assert process.context.trace_id == send.context.trace_id
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
        assert (process.attributes or {})["messaging.consumer.group.name"] == "billing"
    assert processes[good.msg_id].status.status_code is StatusCode.UNSET
    assert processes[bad.msg_id].status.status_code is StatusCode.ERROR
    assert processes[bad.msg_id].status.description == "ValueError: no such customer"


@pytest.mark.cluster_options(**NAMING)
async def test_a_batch_is_one_send_span_and_a_receive_links_each_message(
    cluster: ProcessCluster, spans: InMemorySpanExporter
) -> None:
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        await producer.send_batch("orders", [b"a", b"b", b"c"], sharding_key="o-9")
    [send] = named(spans, "send orders")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    got: list[SimpleMessage] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with SimpleConsumer(
            naming=naming, group="billing", subscriptions={"orders": "*"}
        ) as consumer:
            while len(got) < 3:
                got += await consumer.receive(3 - len(got), timedelta(seconds=60))
    assert send.context is not None
    receives = [span for span in named(spans, "receive orders") if span.links]
    assert {link.context.span_id for span in receives for link in span.links} == {
        send.context.span_id
    }
    assert sum(len(span.links) for span in receives) == 3
    assert all(span.kind is SpanKind.CLIENT for span in receives)


@pytest.mark.cluster_options(**NAMING)
async def test_without_tracing_messages_carry_no_trace_context(
    cluster: ProcessCluster, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As without the otel extra: tracing.py found no OpenTelemetry.
    monkeypatch.setattr(tracing, "ENABLED", False)
    await cluster.wait_for_leader()
    naming = list(cluster.naming.values())
    async with Producer(naming=naming) as producer:
        await producer.send("orders", b"plain", properties={"region": "eu"})
    [message] = await consume(naming, 1)
    assert message.properties == {"region": "eu"}
    assert spans.get_finished_spans() == ()
