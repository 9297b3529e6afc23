"""``dledger-mq bench delay`` as docs/benchmarks.md runs it, with small parameters: every
figure reported, every message delivered once and never early (no timing is asserted)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
#: Later options win over the documented ones: the same command, smaller.
SMALL = [
    "--messages", "300", "--lead", "2", "--spread", "1", "--timers", "20000",
    "--kills", "1", "--failover-messages", "100", "--wait", "20",
]  # fmt: skip


def _documented() -> list[str]:
    """The arguments after ``dledger-mq`` of the first ``bench delay`` command line that
    docs/benchmarks.md shows (its ``#`` comment left out)."""
    for line in BENCHMARKS_DOC.read_text().splitlines():
        if line.startswith(".venv/bin/dledger-mq bench delay"):
            return shlex.split(line, comments=True)[1:]
    raise AssertionError("docs/benchmarks.md shows no `dledger-mq bench delay`")


def _nodes_started_under(directory: Path) -> list[int]:
    """PIDs of processes whose command line names a file under ``directory`` (the bench's
    node processes, whose configs live there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in command and "node" in command:
            found.append(int(entry.name))
    return found


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "dledger_mq", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            check=False,
        )
    finally:
        left = _nodes_started_under(tmp_path)
        for pid in left:  # started under this test's directory: ours, killed by PID
            os.kill(pid, signal.SIGKILL)
        assert not left, f"node processes left running: {left}"


def _stats(figures: dict[str, float | None]) -> None:
    assert set(figures) == {"p50", "p99", "max", "min"}
    assert all(isinstance(value, float | int) for value in figures.values())


def test_bench_delay_reports_lateness_memory_and_failover_with_none_lost_or_early(
    tmp_path: Path,
) -> None:
    documented = _documented()
    assert documented[:2] == ["bench", "delay"]
    result = _run(tmp_path, *documented, *SMALL, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"settings", "machine", "lateness", "memory", "failover", "correct"}
    assert report["correct"] is True
    assert report["settings"]["messages"] == 300 and report["settings"]["timers"] == 20000

    lateness = report["lateness"]
    assert lateness["scheduled"] == lateness["delivered"] == 300
    assert lateness["stored_at_once"] == 0  # each one a timer
    assert lateness["lost"] == lateness["early"] == lateness["duplicate_copies"] == 0
    _stats(lateness["receive_late_ms"])
    _stats(lateness["store_late_ms"])
    # Never early: no message was stored (made visible) or received before its time.
    assert lateness["store_late_ms"]["min"] >= 0 and lateness["receive_late_ms"]["min"] >= 0
    assert isinstance(lateness["met"], bool) and lateness["target_p99_ms"] == 100

    memory = report["memory"]
    assert memory["timers"] == 20000 and memory["stored_at_once"] == 0
    assert set(memory["nodes"]) == {"n1", "n2", "n3"}
    for node in memory["nodes"].values():
        assert node["rss_before_mb"] > 0 and node["rss_after_mb"] > 0
        assert node["peak_mb"] >= node["rss_after_mb"]
        assert isinstance(node["rss_mb_per_million"], float | int)
    assert isinstance(memory["met"], bool) and memory["target_mb_per_million"] == 50
    assert memory["elections_during_scheduling"] >= 0
    wheel = memory["wheel"]
    assert wheel["timers"] == 20000 and wheel["mb"] > 0 and wheel["snapshot_seconds"] >= 0

    failover = report["failover"]
    [kill] = failover["kills"]
    assert kill["killed"] != kill["new_leader"] and kill["failover_ms"] > 0
    assert kill["scheduled"] == kill["delivered"] == 100
    assert failover["lost"] == failover["early"] == failover["duplicate_copies"] == 0
    assert set(kill["due"]) == {"before", "during", "after"}
    assert sum(part["messages"] for part in kill["due"].values()) == 100
    _stats(kill["store_late_ms"])
    assert kill["store_late_ms"]["min"] >= 0

    # Progress: a line per phase, and while one runs.
    for line in ("lateness:", "scheduled", "delivered", "kill 1/1", "memory:", "wheel:"):
        assert line in result.stderr
    assert not list(tmp_path.glob("bench-delay-*"))  # the clusters are removed


def test_bench_delay_text_report_and_help(tmp_path: Path) -> None:
    result = _run(
        tmp_path, *_documented(), *SMALL, "--messages", "50", "--timers", "0", "--kills", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lateness, idle cluster: 50 messages")
    assert "received - deliver-at" in lines[1] and "p99" in lines[1] and "target" in lines[1]
    assert "stored - deliver-at" in lines[2]
    assert "early 0, lost 0, duplicate copies 0" in lines[3]
    assert not any(line.startswith(("memory", "failover")) for line in lines)

    help_text = _run(tmp_path, "bench", "delay", "--help")
    assert help_text.returncode == 0
    assert "--json" in help_text.stdout and "--timers" in help_text.stdout
