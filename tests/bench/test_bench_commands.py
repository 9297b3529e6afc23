"""The benchmark commands run end to end and report every figure (tests never assert speed)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dledger_mq", "bench", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )


def test_bench_raft_reports_throughput_latency_and_failover(tmp_path: Path) -> None:
    result = _bench(
        tmp_path, "raft", "--seconds", "0.5", "--kills", "1", "--window", "2", "--batch", "16"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for label in ("raw write+fsync", "one at a time", "pipelined 2x16", "failover"):
        assert label in result.stdout
    assert "p999" in result.stdout
    # The temporary cluster is removed afterwards.
    assert not list(tmp_path.glob("bench-raft-*"))


def test_bench_transport_compares_tcp_and_websocket(tmp_path: Path) -> None:
    result = _bench(tmp_path, "transport", "--seconds", "0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "raw Trio TCP" in result.stdout
    assert "trio-websocket" in result.stdout
    assert "wire/websocket" in result.stdout
    assert "ours / trio-ws" in result.stdout


def test_bench_produce_reports_sends_and_failover_pauses(tmp_path: Path) -> None:
    result = _bench(
        tmp_path,
        "produce",
        "--seconds",
        "0.5",
        "--kills",
        "1",
        "--batch",
        "8",
        "--concurrency",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for label in ("one at a time", "batched 2x8", "sends paused", "no error"):
        assert label in result.stdout
    assert not list(tmp_path.glob("bench-produce-*"))


def _documented(command: str) -> list[str]:
    """The arguments of the first command line of docs/benchmarks.md that starts with
    ``dledger-mq bench COMMAND`` (after ``dledger-mq bench``; its ``#`` comment left out)."""
    for line in BENCHMARKS_DOC.read_text().splitlines():
        if line.startswith(f".venv/bin/dledger-mq {command}"):
            return shlex.split(line, comments=True)[2:]
    raise AssertionError(f"docs/benchmarks.md shows no `dledger-mq {command}`")


def test_bench_produce_groups_measures_one_group_beside_two_in_one_run(tmp_path: Path) -> None:
    documented = _documented("bench produce --groups")
    # As the docs run it, shorter: later options win.
    fast = ["--seconds", "0.4", "--batch", "8", "--concurrency", "2"]
    result = _bench(tmp_path, *documented, *fast)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    for kind in ("one at a time", "batched 2x8"):
        one, two = rows[f"{kind}, 1 group"], rows[f"{kind}, 2 groups"]
        assert "/s" in one and "p50" in one and "/s" in two and "p50" in two
        # Each phase says where its messages were stored: one group, then both.
        assert "[broker-a " in one and "broker-b" not in one
        assert "[broker-a " in two and ", broker-b " in two
    [ratios] = [line for line in result.stdout.splitlines() if line.startswith("2 groups / 1")]
    assert "one at a time " in ratios and "batched 2x8 " in ratios and "same run" in ratios
    cores = [line for line in result.stdout.splitlines() if line.startswith("  batched 2x8")]
    assert len(cores) == 2 and all("broker-b" in line and "machine" in line for line in cores)
    assert "waiting for their leaders" in result.stderr  # progress
    assert "naming routes both" in result.stderr
    assert not list(tmp_path.glob("bench-produce-*"))

    as_json = _bench(tmp_path, *documented, *fast, "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    report = json.loads(as_json.stdout)
    assert report["groups"] == 2
    phases = {(phase["name"], phase["groups"]): phase for phase in report["phases"]}
    assert set(phases) == {(kind, n) for kind in ("one at a time", "batched 2x8") for n in (1, 2)}
    for (_, groups), phase in phases.items():
        assert phase["messages"] > 0 and phase["per_second"] > 0
        assert set(phase["stored"]) == ({"broker-a"} if groups == 1 else {"broker-a", "broker-b"})
    assert set(report["ratios"]) == {"one at a time", "batched 2x8"}


def test_bench_consume_and_e2e_report_their_figures(tmp_path: Path) -> None:
    consume = _bench(tmp_path, "consume", "--seconds", "0.5", "--batch", "8", "--concurrency", "2")
    assert consume.returncode == 0, consume.stderr[-2000:]
    assert "consume" in consume.stdout and "each acknowledged" in consume.stdout
    e2e = _bench(tmp_path, "e2e", "--seconds", "1", "--batch", "8", "--concurrency", "2")
    assert e2e.returncode == 0, e2e.stderr[-2000:]
    assert "end to end 2x8" in e2e.stdout and "p99" in e2e.stdout
    assert "not yet delivered" in e2e.stdout
    paced = _bench(
        tmp_path, "e2e", "--seconds", "1", "--batch", "8", "--concurrency", "2", "--rate", "800"
    )
    assert paced.returncode == 0, paced.stderr[-2000:]
    [sent_line] = [line for line in paced.stdout.splitlines() if line.startswith("sent")]
    # Paced at 800/s for about a second: nowhere near what the producers could send.
    assert int(sent_line.split("(")[1].split()[0]) < 2400


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        children.update(int(child) for child in text.split())
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_bench_stopped_by_sigterm_stops_the_nodes_it_started(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "dledger_mq", "bench", "raft", "--seconds", "60", "--kills", "0"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    nodes: set[int] = set()
    try:
        assert bench.stderr is not None
        for line in bench.stderr:  # progress lines; the leader is known once the nodes run
            if line.startswith("leader"):
                break
        nodes = _children(bench.pid)
        assert len(nodes) == 3
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=30)
        assert not [pid for pid in nodes if _alive(pid)]
    finally:
        bench.kill()
        bench.wait()
        for pid in nodes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_bench_soak_reports_memory_disk_and_restart_time_at_each_checkpoint(
    tmp_path: Path,
) -> None:
    result = _bench(tmp_path, "soak", "--messages", "3000", "--checkpoints", "2", "--batch", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["messages", "node", "RSS"]
    # An empty cluster, then two checkpoints: three nodes each.
    assert [row.split()[0] for row in rows] == ["0"] * 3 + ["1,500"] * 3 + ["3,000"] * 3
    disks = [float(row.split()[4]) for row in rows]
    assert disks[-1] > disks[0]  # the log grew
    assert all(float(row.split()[2]) > 0 for row in rows)  # RSS measured
    assert "ready" in result.stderr
    assert not list(tmp_path.glob("bench-soak-*"))


def test_bench_open_reports_the_open_with_and_without_index_files(tmp_path: Path) -> None:
    result = _bench(tmp_path, "open", "--entries", "20000", "--runs", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    *_, row = result.stdout.splitlines()
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:2] == ["20,000", "100"]
    assert cells[2].count("/") == 2 and cells[3].endswith(" s")
    assert not list(tmp_path.glob("bench-open-*"))


def test_bench_soak_takes_the_retention_settings(tmp_path: Path) -> None:
    result = _bench(
        tmp_path,
        "soak",
        "--messages",
        "2000",
        "--checkpoints",
        "1",
        "--batch",
        "64",
        "--retention-bytes",
        "1048576",
        "--segment-size-bytes",
        "1048576",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1 + 2 * 3


def test_bench_produce_metrics_measures_off_beside_on_and_sees_the_counters_move(
    tmp_path: Path,
) -> None:
    documented = _documented("bench produce --metrics")
    fast = ["--seconds", "0.6", "--batch", "8", "--concurrency", "2", "--json"]
    result = _bench(tmp_path, *documented, *fast)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    phases = {(phase["name"], phase["metrics"]): phase for phase in report["phases"]}
    kinds = ("one at a time", "batched 2x8")
    assert set(phases) == {(kind, metrics) for kind in kinds for metrics in ("off", "on")}
    assert all(phase["messages"] > 0 for phase in phases.values())
    assert set(report["ratios_on_off"]) == set(kinds)
    # Scraped while the producer sent: the leader's counters moved between scrapes.
    assert report["scrapes"] > 0 and report["failed_scrapes"] == 0
    assert report["moved_on_leader"]["rocketmq_messages_in_total"] > 0
    assert report["moved_on_leader"]["rocketmq_throughput_in_total"] > 0
    assert report["moved_on_leader"]["dledger_fsync_seconds_count"] > 0
    assert "waiting for their leaders" in result.stderr  # progress
    assert not list(tmp_path.glob("bench-metrics-*"))


def test_bench_produce_api_measures_trio_asyncio_and_sync_side_by_side(tmp_path: Path) -> None:
    documented = _documented("bench produce --api")
    fast = ["--seconds", "0.6", "--batch", "8", "--concurrency", "2", "--json"]
    result = _bench(tmp_path, *documented, *fast)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    phases = {(phase["name"], phase["api"]): phase for phase in report["phases"]}
    kinds = ("one at a time", "batched 2x8")
    apis = ("trio", "asyncio", "sync")
    assert set(phases) == {(kind, api) for kind in kinds for api in apis}
    assert all(phase["messages"] > 0 for phase in phases.values())
    for kind in kinds:
        assert phases[(kind, "trio")]["ratio_to_trio"] == 1.0
        assert phases[(kind, "sync")]["ratio_to_trio"] > 0
    assert "a producer per API" in result.stderr  # progress
    assert "one at a time, asyncio:" in result.stderr
    assert not list(tmp_path.glob("bench-api-*"))

    wrong = _bench(tmp_path, "produce", "--api", "trio,curio")
    assert wrong.returncode == 2
    assert "'curio' is not one of trio, asyncio, sync" in wrong.stderr
    assert "Traceback" not in wrong.stderr
