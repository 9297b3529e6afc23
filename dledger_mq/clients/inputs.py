"""What an application passes to the SDK, checked where it comes in: a wrong type is the
application's bug, a ``UsageError`` at once. Sent as it was, it would make a frame the broker
cannot decode; the broker closes a connection that sends one, and the request would be
retried on a new connection for ever."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dledger_mq.errors import UsageError


def _wrong(what: str, value: object, expected: str) -> UsageError:
    return UsageError(f"{what} must be {expected}, got {type(value).__name__}")


def check_message_input(
    topic: object,
    bodies: Sequence[object],
    tags: object,
    keys: Sequence[object],
    properties: Mapping[Any, object] | None,
    sharding_key: object,
) -> None:
    """A send's arguments, typed as the wire needs them."""
    if not isinstance(topic, str):
        raise _wrong("the topic", topic, "a str")
    for body in bodies:
        if not isinstance(body, bytes):
            raise _wrong("a message body", body, "bytes (encode text first: text.encode())")
    if tags is not None and not isinstance(tags, str):
        raise _wrong("tags", tags, "a str or None")
    if isinstance(keys, str | bytes):
        raise _wrong("keys", keys, "a sequence of str (keys=[key] for one)")
    for key in keys:
        if not isinstance(key, str):
            raise _wrong("a key", key, "a str")
    for name, value in (properties or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise _wrong(f"property {name!r}", value if isinstance(name, str) else name, "str")
    if sharding_key is not None and not isinstance(sharding_key, str):
        raise _wrong("sharding_key", sharding_key, "a str or None")


def check_subscriptions(group: object, subscriptions: Mapping[Any, object]) -> None:
    """A consumer's group and its topic -> tag expression pairs."""
    if not isinstance(group, str) or not group:
        raise _wrong("a consumer's group", group, "a non-empty str")
    if not subscriptions:
        raise UsageError("a consumer needs a topic (topic=) or subscriptions")
    for topic, tags in subscriptions.items():
        if not isinstance(topic, str):
            raise _wrong("a topic", topic, "a str")
        if not isinstance(tags, str):
            raise _wrong(f"the tag expression of {topic!r}", tags, 'a str ("*": every message)')
