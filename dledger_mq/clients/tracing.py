"""OpenTelemetry spans for the SDK, when the optional extra is installed (``dledger-mq[otel]``).

Following the messaging semantic conventions (docs/operations.md, "Tracing"):

- ``send TOPIC`` (PRODUCER) around ``Producer.send`` and ``send_batch``; its context is the
  messages' creation context, written into each message's properties by the global propagator
  (W3C ``traceparent`` and ``tracestate`` by default).
- ``process TOPIC`` (CONSUMER) around each handler call of ``Consumer.run`` (or any code in
  ``with processing(group, message)``): a child of the message's creation context, and linked to
  it, so that a consumer's span continues the producer's trace.
- ``receive TOPIC`` (CLIENT) per ``SimpleConsumer.receive``: one span for many messages, so it
  cannot be the child of each; it links to every message's creation context instead.

Without ``opentelemetry-api`` every function here returns at once (``ENABLED`` is False): the
import is tried once, here, and nothing else in the SDK imports OpenTelemetry. With the API but
no SDK configured, the API's tracer is a no-op one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from dledger_mq import __version__

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span

ENABLED = trace is not None

#: ``messaging.system``: the data model (topics, tags, keys, consumer groups, clustering and
#: broadcasting) is RocketMQ's, so the RocketMQ attributes and a backend's views of them apply.
MESSAGING_SYSTEM = "rocketmq"
INSTRUMENTATION_NAME = "dledger_mq.clients"


class TracedMessage(Protocol):
    """What a delivered message shows to the process span (both consumers' messages)."""

    @property
    def topic(self) -> str: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def tags(self) -> str | None: ...
    @property
    def keys(self) -> tuple[str, ...]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def properties(self) -> dict[str, str]: ...


class Outcome:
    """What the traced code tells its span: ``failed(error)`` marks it an error."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def failed(self, error: BaseException) -> None:
        if self._span is not None:
            self._span.record_exception(error)
            self._span.set_status(trace.StatusCode.ERROR, _describe(error))
            self._span.set_attribute("error.type", type(error).__qualname__)

    def attributes(self, values: Mapping[str, Any]) -> None:
        if self._span is not None:
            self._span.set_attributes(values)


class _Untraced(Outcome):
    """Untraced code's outcome, and its context manager: nothing to make, nothing to do."""

    __slots__ = ()

    def __enter__(self) -> Outcome:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


#: What ``sending`` and ``processing`` return without OpenTelemetry: one object for all.
_UNTRACED = _Untraced(None)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@functools.cache
def _tracer() -> trace.Tracer:
    # Before an application sets its tracer provider this is the API's proxy tracer, which
    # follows the provider once set.
    return trace.get_tracer(INSTRUMENTATION_NAME, __version__)


@contextmanager
def _current_span(name: str, **options: Any) -> Iterator[Outcome]:
    """A span current while the block runs; an exception out of the block (not a cancellation:
    that is the caller's doing) marks it an error, with ``error.type``."""
    with _tracer().start_as_current_span(
        name, record_exception=False, set_status_on_exception=False, **options
    ) as span:
        outcome = Outcome(span)
        try:
            yield outcome
        except Exception as error:
            outcome.failed(error)
            raise


def _message_attributes(tags: str | None, keys: Sequence[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if tags is not None:
        attributes["messaging.rocketmq.message.tag"] = tags
    if keys:
        attributes["messaging.rocketmq.message.keys"] = list(keys)
    return attributes


def sending(
    topic: str,
    count: int,
    *,
    tags: str | None,
    keys: Sequence[str],
    body_size: int | None,
    message_type: str,
    client_id: str | None,
) -> AbstractContextManager[Outcome]:
    """The ``send TOPIC`` span: current while the send runs, so that ``inject`` writes its
    context into the messages. ``count`` > 1: a batch (``messaging.batch.message_count``)."""
    if not ENABLED:
        return _UNTRACED
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.rocketmq.message.type": message_type,
        **_message_attributes(tags, keys),
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    if body_size is not None:
        attributes["messaging.message.body.size"] = body_size
    if client_id is not None:
        attributes["messaging.client.id"] = client_id
    return _current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes)


def inject(properties: dict[str, str]) -> dict[str, str]:
    """``properties`` with the current context added (``traceparent``, ``tracestate``): the
    messages' creation context. The same dict when untraced."""
    if not ENABLED:
        return properties
    carrier = dict(properties)
    propagate.inject(carrier)
    return carrier


def _links(messages: Sequence[TracedMessage]) -> list[Link]:
    links = []
    for message in messages:
        context = trace.get_current_span(propagate.extract(message.properties)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    return links


def processing(
    group: str, message: TracedMessage, *, consumption_model: str = "clustering"
) -> AbstractContextManager[Outcome]:
    """The ``process TOPIC`` span of one delivered message: a child of its creation context
    (the producer's ``send`` span) and linked to it, as the conventions recommend. A raised
    exception, or ``Outcome.failed``, marks it an error."""
    if not ENABLED:
        return _UNTRACED
    parent = propagate.extract(message.properties)
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": message.topic,
        "messaging.consumer.group.name": group,
        "messaging.message.id": message.msg_id,
        "messaging.message.body.size": len(message.body),
        "messaging.rocketmq.consumption_model": consumption_model,
        **_message_attributes(message.tags, message.keys),
    }
    return _current_span(
        f"process {message.topic}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=_links([message]),
    )


@contextmanager
def receiving(group: str, topics: Sequence[str]) -> Iterator[_Receive]:
    """The ``receive TOPIC`` span of one receive: started when it is asked, recorded once its
    messages are known (links are given when a span starts), an error if it raised."""
    if not ENABLED:
        yield _Receive(0)
        return
    receive = _Receive(time.time_ns())
    try:
        yield receive
    except Exception as error:
        _record_receive(group, topics, receive, error)
        raise
    except BaseException:
        _record_receive(group, topics, receive, None)  # cancelled: ended, not failed
        raise
    _record_receive(group, topics, receive, None)


class _Receive:
    __slots__ = ("messages", "started_ns")

    def __init__(self, started_ns: int) -> None:
        self.started_ns = started_ns
        self.messages: Sequence[TracedMessage] = ()


def _record_receive(
    group: str, topics: Sequence[str], receive: _Receive, error: BaseException | None
) -> None:
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": "receive",
        "messaging.operation.type": "receive",
        "messaging.consumer.group.name": group,
        "messaging.batch.message_count": len(receive.messages),
    }
    # A receive of one topic names it; of several, only the operation (the conventions' rule).
    if len(topics) == 1:
        attributes["messaging.destination.name"] = topics[0]
    span = _tracer().start_span(
        f"receive {topics[0]}" if len(topics) == 1 else "receive",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        links=_links(receive.messages),
        start_time=receive.started_ns,
    )
    if error is not None:
        Outcome(span).failed(error)
    span.end()
