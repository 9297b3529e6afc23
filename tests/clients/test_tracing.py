"""The SDK's spans (clients/tracing.py) without a cluster: the producer's context travels in
the message's properties and the process span continues it; a failure is an error span; and
without OpenTelemetry installed the SDK neither imports nor needs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import attrs
import pytest
import trio

from dledger_mq.clients import tracing
from dledger_mq.errors import UsageError
from tests.clients.otel import named, spans

from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # isort: skip
    InMemorySpanExporter,
)

from opentelemetry.trace import SpanKind, StatusCode  # isort: skip

__all__ = ["spans"]


@attrs.frozen
class Delivered:
    """A delivered message, as the process span reads it."""

    properties: dict[str, str]
    topic: str = "orders"
    msg_id: str = "g1:7:0"
    tags: str | None = "paid"
    keys: tuple[str, ...] = ("o-1",)
    body: bytes = b"body"


def sent_properties() -> dict[str, str]:
    with tracing.sending(
        "orders",
        1,
        tags="paid",
        keys=("o-1",),
        body_size=4,
        message_type="normal",
        client_id="p-1",
    ) as outcome:
        properties = tracing.inject({"region": "eu"})
        outcome.attributes({"messaging.message.id": "g1:7:0"})
    return properties


def test_the_send_span_follows_the_messaging_conventions(spans: InMemorySpanExporter) -> None:
    properties = sent_properties()
    [send] = named(spans, "send orders")
    assert send.kind is SpanKind.PRODUCER
    assert dict(send.attributes or {}) == {
        "messaging.system": "rocketmq",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "orders",
        "messaging.rocketmq.message.type": "normal",
        "messaging.rocketmq.message.tag": "paid",
        "messaging.rocketmq.message.keys": ("o-1",),
        "messaging.message.body.size": 4,
        "messaging.client.id": "p-1",
        "messaging.message.id": "g1:7:0",
    }
    # W3C trace context: version, trace id, the send span's id, flags (sampled).
    assert send.context is not None
    version, trace_id, span_id, flags = properties["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{send.context.trace_id:032x}",
        f"{send.context.span_id:016x}",
    )
    assert int(flags, 16) & 1
    assert properties["region"] == "eu"


def test_the_process_span_is_a_child_of_the_send_span_and_linked_to_it(
    spans: InMemorySpanExporter,
) -> None:
    message = Delivered(sent_properties())
    with tracing.processing("billing", message):
        pass
    [send] = named(spans, "send orders")
    [process] = named(spans, "process orders")
    assert send.context is not None and process.context is not None
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    attributes = dict(process.attributes or {})
    assert attributes["messaging.consumer.group.name"] == "billing"
    assert attributes["messaging.message.id"] == "g1:7:0"
    assert attributes["messaging.rocketmq.consumption_model"] == "clustering"
    assert process.status.status_code is StatusCode.UNSET


def test_a_failed_handler_marks_the_process_span_an_error(spans: InMemorySpanExporter) -> None:
    message = Delivered(sent_properties())
    with tracing.processing("billing", message) as outcome:
        outcome.failed(ValueError("no such customer"))
    with pytest.raises(KeyError), tracing.processing("billing", message):
        raise KeyError("raised through")
    first, second = named(spans, "process orders")
    for span, kind in ((first, "ValueError"), (second, "KeyError")):
        assert span.status.status_code is StatusCode.ERROR
        assert [event.name for event in span.events] == ["exception"]
        assert span.events[0].attributes is not None
        assert span.events[0].attributes["exception.type"] == kind
    assert first.status.description == "ValueError: no such customer"


def test_a_message_without_a_trace_context_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.processing("billing", Delivered({})):
        pass
    [process] = named(spans, "process orders")
    assert process.parent is None and process.links == ()


def test_the_receive_span_links_every_message_and_counts_them(spans: InMemorySpanExporter) -> None:
    messages = [Delivered(sent_properties()) for _ in range(3)]
    with tracing.receiving("billing", ["orders"]) as receive:
        receive.messages = messages
    with pytest.raises(RuntimeError), tracing.receiving("billing", ["orders", "refunds"]):
        raise RuntimeError("no leader")
    sends = named(spans, "send orders")
    [receive_span] = named(spans, "receive orders")
    [failed] = named(spans, "receive")
    assert receive_span.kind is SpanKind.CLIENT
    assert [link.context.span_id for link in receive_span.links] == [
        send.context.span_id for send in sends if send.context is not None
    ]
    assert receive_span.attributes is not None
    assert receive_span.attributes["messaging.batch.message_count"] == 3
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert "messaging.destination.name" not in failed.attributes


def test_without_opentelemetry_the_sdk_imports_and_traces_nothing() -> None:
    # A fresh interpreter where ``import opentelemetry`` fails, as without the extra.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None
        from dledger_mq.clients import Consumer, Producer, SimpleConsumer, tracing
        assert not tracing.ENABLED
        properties = {"region": "eu"}
        with tracing.sending(
            "orders", 1, tags=None, keys=(), body_size=1, message_type="normal", client_id=None
        ) as outcome:
            assert tracing.inject(properties) is properties
            outcome.failed(ValueError("ignored"))
            outcome.attributes({"messaging.message.id": "x"})
        with tracing.receiving("billing", ["orders"]) as receive:
            receive.messages = []
        loaded = [n for n, m in sys.modules.items() if n.startswith("opentelemetry") and m]
        print("imported", not loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported True"


def test_a_failed_send_marks_the_send_span_an_error(spans: InMemorySpanExporter) -> None:
    with (
        pytest.raises(UsageError),
        tracing.sending(
            "orders", 3, tags=None, keys=(), body_size=None, message_type="fifo", client_id=None
        ),
    ):
        raise UsageError("the topic has no queues yet")
    [send] = named(spans, "send orders")
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["error.type"] == "UsageError"
    assert send.attributes["messaging.batch.message_count"] == 3
    assert [event.name for event in send.events] == ["exception"]


async def test_a_cancelled_handler_ends_its_span_without_an_error(
    spans: InMemorySpanExporter,
) -> None:
    with trio.CancelScope() as scope, tracing.processing("billing", Delivered(sent_properties())):
        scope.cancel()  # as a consumer that is closed while its handler runs
        await trio.sleep_forever()
    [process] = named(spans, "process orders")
    assert process.status.status_code is StatusCode.UNSET
    assert process.end_time is not None
