"""Short harness runs of the ``delay`` and ``retry`` workloads against real nodes, with the
leader killed or paused while timers are pending: every checker must pass, and the faults
must have hit what these workloads are about (timers fired by a leader that did not store
them; retries and dead letters across a leader change)."""

from __future__ import annotations

import json
from pathlib import Path

from jepsen.history import CheckResult, FaultWindow, Op, fault_windows, read_history
from jepsen.nemesis import FaultSpec, Schedule
from jepsen.run import RunOptions, run
from jepsen.workload import DEAD_LETTERS, WorkloadOptions

SEED = 4


def failed(results: list[CheckResult]) -> dict[str, list[str]]:
    return {r.name: r.examples[:5] for r in results if not r.valid}


async def test_delayed_messages_survive_leader_kills_never_early_and_on_time(
    tmp_path: Path,
) -> None:
    options = RunOptions(
        time_s=20,
        nemesis=tuple(FaultSpec.parse_list("kill:leader", 3)),
        workload=WorkloadOptions(
            name="delay", rate=100, delay_min_s=0.5, delay_max_s=3.0, settle_s=3.0
        ),
        schedule=Schedule(2.0, 3.0, 4.0, 5.0),
        seed=SEED,
        out=tmp_path / "run",
        recovery_timeout_s=20,
        drain_timeout_s=20,
    )

    outcome = await run(options, lambda line: None)

    assert not failed(outcome.results), failed(outcome.results)
    assert outcome.recovered
    counts = {r.name: r.counts for r in outcome.results}
    checked = counts["delay"]
    sends = counts["recovered"]
    assert checked["received"] > 1000
    assert checked["received"] == (
        checked["delayed_sends"] - sends["indeterminate_lost"] - sends["failed"]
    )
    assert checked["early"] == 0 and checked["late"] == 0 and checked["lost"] == 0
    # Judged values (no fault near their time) exist, and so do values not judged.
    assert checked["judged"] > 200 and checked["judged"] < checked["received"], checked
    assert counts["lost"]["lost_from_storage"] == 0  # the final read took place
    ops = read_history(outcome.directory / "history.jsonl")
    windows = fault_windows(ops)
    assert windows and all(w.fault == "kill" for w in windows)
    # Messages acknowledged by the leader that was then killed, due after its death, were
    # delivered: another leader fired their timers.
    assert _pending_across_a_kill(ops, windows) > 10
    run_json = json.loads((outcome.directory / "run.json").read_text())
    assert run_json["verdict"] == "PASS" and run_json["workload"] == "delay"
    assert "Delayed messages" in (outcome.directory / "report.html").read_text()


def _pending_across_a_kill(ops: list[Op], windows: list[FaultWindow]) -> int:
    """Delayed values acknowledged before a window began, due after, and received."""
    acked = {op.value: op for op in ops if op.f == "send" and op.type == "ok"}
    found = 0
    for op in ops:
        if op.f != "receive" or op.value not in acked or op.wall_ms is None:
            continue
        assert op.deliver_at_ms is not None
        due = op.time - (op.wall_ms - op.deliver_at_ms) / 1000
        if any(acked[op.value].time < w.start < due for w in windows):
            found += 1
    return found


async def test_retries_and_dead_letters_survive_leader_pauses(tmp_path: Path) -> None:
    options = RunOptions(
        time_s=20,
        nemesis=tuple(FaultSpec.parse_list("pause:leader", 3)),
        workload=WorkloadOptions(name="retry", rate=100),
        schedule=Schedule(2.0, 3.0, 2.0, 3.0),
        seed=SEED,
        out=tmp_path / "run",
        recovery_timeout_s=20,
        drain_timeout_s=30,
    )

    outcome = await run(options, lambda line: None)

    assert not failed(outcome.results), failed(outcome.results)
    assert outcome.recovered
    counts = {r.name: r.counts for r in outcome.results}
    checked = counts["retry"]
    assert checked["acknowledged"] > 1000
    handled = sum(checked[f"handled_at_{n}"] for n in (1, 2, 3))
    # Every acknowledged value has a fate (a few more: indeterminate sends that were stored).
    assert handled + checked["dead_lettered"] >= checked["acknowledged"]
    assert checked["handled_at_2"] > 0 and checked["handled_at_3"] > 0
    assert checked["dead_lettered"] > 5, checked
    ops = read_history(outcome.directory / "history.jsonl")
    letters = [op for op in ops if op.f == "read" and op.topic == DEAD_LETTERS]
    assert letters and all(op.attempt == 3 for op in letters)
    assert all(op.error and op.error.endswith("attempt 3 fails") for op in letters)
    windows = fault_windows(ops)
    assert windows and all(w.fault == "pause" for w in windows)
    # Retries were delivered after a pause ended (the paused leader's retry timers too).
    retries = [op for op in ops if op.f == "receive" and (op.attempt or 1) > 1]
    assert any(op.time > windows[0].end for op in retries)
    run_json = json.loads((outcome.directory / "run.json").read_text())
    assert run_json["verdict"] == "PASS" and run_json["max attempts"] == 3
    assert "handled at attempt 3" in (outcome.directory / "report.html").read_text()
