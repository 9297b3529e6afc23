"""Bad input from the application is a ``UsageError`` at once, in every face of the SDK: a
wrong-typed send (which, sent as it was, made a frame the broker closes the link on, and was
retried for ever) and a client that cannot be made (a bad naming address), no cluster needed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import trio

from dledger_mq import aio, sync
from dledger_mq.clients.consumer import Consumer
from dledger_mq.clients.producer import Producer
from dledger_mq.clients.simple_consumer import SimpleConsumer
from dledger_mq.errors import UsageError

WRONG_SENDS: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
    (("t", "text"), {}, "a message body must be bytes .encode text first.*got str"),
    (("t", 17), {}, "a message body must be bytes.*got int"),
    ((b"t", b"x"), {}, "the topic must be a str, got bytes"),
    (("t", b"x"), {"tags": 3}, "tags must be a str or None, got int"),
    (("t", b"x"), {"keys": "k-1"}, r"keys must be a sequence of str \(keys=\[key\]"),
    (("t", b"x"), {"keys": ["k", 2]}, "a key must be a str, got int"),
    (("t", b"x"), {"properties": {"a": 1}}, "property 'a' must be str, got int"),
    (("t", b"x"), {"sharding_key": 5}, "sharding_key must be a str or None, got int"),
]


@pytest.mark.parametrize(("arguments", "options", "message"), WRONG_SENDS)
async def test_a_wrong_typed_send_is_a_usage_error_before_anything_is_sent(
    arguments: tuple[Any, ...], options: dict[str, Any], message: str
) -> None:
    async with Producer("127.0.0.1:1") as producer:  # nothing listens there: nothing is sent
        with trio.fail_after(5), pytest.raises(UsageError, match=message):
            await producer.send(*arguments, **options)


async def test_a_wrong_typed_batch_is_a_usage_error() -> None:
    async with Producer("127.0.0.1:1") as producer:
        with trio.fail_after(5), pytest.raises(UsageError, match="got str"):
            await producer.send_batch("t", [b"a", "b"])


def test_the_blocking_and_asyncio_clients_raise_what_opening_the_trio_one_raised() -> None:
    with pytest.raises(UsageError, match="naming address"), sync.Producer(naming="no-port"):
        pass
    assert sync._TRIO._thread is None  # nothing left running

    async def application() -> None:
        async with aio.Producer(naming="no-port"):
            pass

    with pytest.raises(UsageError, match="naming address"):
        asyncio.run(application())
    assert aio._LOOPS == {}

    with (
        sync.Producer(naming="127.0.0.1:1") as producer,
        pytest.raises(UsageError, match="a message body must be bytes"),
    ):
        producer.send("t", "text", timeout=5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group": "", "topic": "t"}, "a consumer's group must be a non-empty str, got str"),
        ({"group": 7, "topic": "t"}, "a consumer's group must be a non-empty str, got int"),
        ({"group": "g"}, r"a consumer needs a topic \(topic=\) or subscriptions"),
        ({"group": "g", "topic": 7}, "a topic must be a str, got int"),
        ({"group": "g", "subscriptions": {"t": None}}, "the tag expression of 't' must be"),
    ],
)
def test_a_consumer_with_a_wrong_group_or_subscription_is_refused_when_made(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        Consumer("127.0.0.1:1", **options)
    if "subscriptions" in options or options.get("topic") is not None:
        subscriptions = options.get("subscriptions") or {options["topic"]: "*"}
        with pytest.raises(UsageError, match=message):
            SimpleConsumer("127.0.0.1:1", group=options["group"], subscriptions=subscriptions)


def test_a_loop_that_had_clients_is_not_kept_alive_after_they_closed() -> None:
    """A program may call ``asyncio.run`` per request, each with its own clients."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def request() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with aio.Producer("127.0.0.1:1"), aio.Producer("127.0.0.1:1"):
            assert len(aio._LOOPS) == 1  # one guest run for both

    for _ in range(3):
        asyncio.run(request())
        assert aio._LOOPS == {}
    gc.collect()
    assert [loop() for loop in loops] == [None, None, None]
