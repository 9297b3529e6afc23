"""The log's write histograms: each observation lands in the first bucket whose bound it does
not exceed, and Prometheus' cumulative buckets end with every observation under +Inf."""

from __future__ import annotations

from dledger_mq.raft.storage.write_stats import Histogram


def test_observations_land_in_their_bucket_and_accumulate() -> None:
    histogram = Histogram((1.0, 10.0))
    for value in (0.5, 1.0, 5.0, 50.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 1]
    assert histogram.total == 56.5
    assert histogram.cumulative() == [("1.0", 2), ("10.0", 3), ("+Inf", 4)]
