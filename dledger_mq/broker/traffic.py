"""What this node's broker served since it started: bytes stored per topic, and messages and
bytes handed to each consumer group (issue 18, metrics).

Counted where the leader answers (a send's reply, a pull's, a receive's), not in the state
machine: they describe this process's work, so they start at zero with it, like RocketMQ's
broker counters, and Prometheus' ``rate()`` takes the restart as a counter reset. One dict
addition per reply: nothing a benchmark can see (docs/benchmarks.md, "Metrics").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import attrs

#: Label sets kept at most; beyond, the rest counts under ``OTHER`` (a client can name any
#: group, and every label set is a series kept forever by whoever scrapes).
MAX_SERIES = 10_000
OTHER = "_other"


@attrs.define
class Traffic:
    #: topic -> bytes of message bodies stored through this node's sends.
    bytes_in: Counter[str] = attrs.Factory(Counter)
    #: (topic, consumer group) -> messages handed out by pulls and receives ("" for a pull
    #: that named no group).
    messages_out: Counter[tuple[str, str]] = attrs.Factory(Counter)
    #: (topic, consumer group) -> bytes of those messages' bodies.
    bytes_out: Counter[tuple[str, str]] = attrs.Factory(Counter)
    #: Off (a node without ``http_listen``): nothing is counted.
    enabled: bool = True

    def stored(self, topic: str, size: int) -> None:
        if not self.enabled:
            return
        if topic not in self.bytes_in and len(self.bytes_in) >= MAX_SERIES:
            topic = OTHER
        self.bytes_in[topic] += size

    def delivered(self, topic: str, group: str, sizes: Iterable[int]) -> None:
        if not self.enabled:
            return
        key = (topic, group)
        if key not in self.messages_out and len(self.messages_out) >= MAX_SERIES:
            key = (OTHER, OTHER)
        count = total = 0
        for size in sizes:
            count += 1
            total += size
        if count:
            self.messages_out[key] += count
            self.bytes_out[key] += total
