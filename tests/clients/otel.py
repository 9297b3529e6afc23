"""An in-memory span exporter behind the SDK's tracer, for one test: the SDK's spans go to a
tracer provider of the test's own (the global one can be set once per process, and would keep
recording every later test's sends)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the test extra installs opentelemetry-sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from dledger_mq.clients import tracing  # noqa: E402


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """What the test's code ends is in ``get_finished_spans()``."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(tracing.INSTRUMENTATION_NAME)
    monkeypatch.setattr(tracing, "_tracer", lambda: tracer)
    return exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]
