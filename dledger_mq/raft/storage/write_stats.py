"""How the log's writes went: fsync latency and batch sizes, as histograms the node's
``/metrics`` exports (issue 18). Plain counters here, so that storage knows nothing of
Prometheus; an observation is a bisect and two additions, nothing beside an fsync.

Written by the log's writer thread and read by a scrape on the event loop without a lock: a
scrape may see a bucket one observation ahead of the sum, which Prometheus tolerates.
"""

from __future__ import annotations

from bisect import bisect_left

import attrs

#: Seconds: 0.1 ms (page cache, a fast NVMe) to 2.5 s (a disk in trouble).
FSYNC_SECONDS_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: Entries per write: one proposal alone to the largest group-committed batches.
BATCH_ENTRIES_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Bytes per write.
BATCH_BYTES_BOUNDS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)


@attrs.define
class Histogram:
    """Observations counted by the first bound they do not exceed (the last bucket: above
    every bound), and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.field()
    total: float = 0.0

    @counts.default
    def _no_counts(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def quantile_bound(self, quantile: float) -> float | None:
        """The upper bound of the bucket the ``quantile`` observation falls in (the last bound
        for one above every bound); None with no observations."""
        count = sum(self.counts)
        if not count:
            return None
        rank, running = quantile * count, 0
        for bound, bucket in zip(self.bounds, self.counts, strict=False):
            running += bucket
            if running >= rank:
                return bound
        return self.bounds[-1]

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (upper bound as text, observations at or below it), ``+Inf``
        last."""
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


@attrs.define
class WriteStats:
    fsync_seconds: Histogram = attrs.Factory(lambda: Histogram(FSYNC_SECONDS_BOUNDS))
    batch_entries: Histogram = attrs.Factory(lambda: Histogram(BATCH_ENTRIES_BOUNDS))
    batch_bytes: Histogram = attrs.Factory(lambda: Histogram(BATCH_BYTES_BOUNDS))
    #: Off (a node without /metrics): the log records nothing, not even the fsync's clock.
    enabled: bool = True
