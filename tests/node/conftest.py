"""The ``cluster`` fixture: three real node processes, always killed at the end."""

from __future__ import annotations

import atexit
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.node.cluster_fixture import ProcessCluster


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the item: the fixture's teardown reads ``report_call``."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessCluster]:
    """Three nodes started on ephemeral ports; SIGKILLed by process group whatever happens.

    A plain (not async) fixture, so that its teardown runs after the test's report exists and
    can print each node's log tail when the test failed.
    """
    marker = request.node.get_closest_marker("cluster_options")
    cluster = ProcessCluster(tmp_path, **(marker.kwargs if marker else {}))
    atexit.register(cluster.kill_all)  # should pytest itself be interrupted
    try:
        cluster.start_all()
        yield cluster
    finally:
        tails = cluster.log_tails()  # before the kill, so that it shows which nodes had died
        cluster.kill_all()
        atexit.unregister(cluster.kill_all)
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(tails)
