"""Short harness runs against real nodes: a fault smoke that must pass (with TLS on every port
and clients that sign in, as a real deployment runs), and the negative control (nodes that
acknowledge before fsync, all killed at once) that must be caught."""

from __future__ import annotations

import json
from pathlib import Path

from jepsen.history import read_history
from jepsen.nemesis import FaultSpec, Schedule
from jepsen.run import RunOptions, run
from jepsen.workload import WorkloadOptions

#: Drawn so that both kill and partition windows occur (the nemesis's choices follow the seed).
SMOKE_SEED = 3


async def test_a_short_run_with_kills_and_partitions_passes_every_checker(tmp_path: Path) -> None:
    options = RunOptions(
        time_s=30,
        nemesis=tuple(FaultSpec.parse_list("kill,partition", 3)),
        workload=WorkloadOptions(rate=150),
        schedule=Schedule(2.0, 4.0, 1.5, 3.0),
        seed=SMOKE_SEED,
        out=tmp_path / "run",
        recovery_timeout_s=20,
        drain_timeout_s=20,
        secure=True,
    )

    outcome = await run(options, lambda line: None)

    failed = {r.name: r.examples[:5] for r in outcome.results if not r.valid}
    assert not failed, failed
    assert outcome.recovered
    run_json = json.loads((outcome.directory / "run.json").read_text())
    assert run_json["tls and users"] is True
    assert (outcome.directory / "nodes" / "tls" / "ca.pem").exists()
    faults = {
        op.value["fault"]
        for op in read_history(outcome.directory / "history.jsonl")
        if op.f == "fault" and op.value["phase"] == "start"
    }
    assert faults == {"kill", "partition"}
    counts = {r.name: r.counts for r in outcome.results}
    assert counts["summary"]["ok"] > 500
    assert counts["lost"]["lost_from_storage"] == 0  # the final read took place
    assert (outcome.directory / "report.html").read_text().count("<svg") >= 2
    assert json.loads((outcome.directory / "run.json").read_text())["verdict"] == "PASS"


async def test_a_short_run_with_lost_disks_passes_every_checker(tmp_path: Path) -> None:
    """The ``wipe`` fault: a node's data directory deleted while it is down; it rejoins
    recovering and nothing acknowledged is lost."""
    options = RunOptions(
        time_s=20,
        nemesis=tuple(FaultSpec.parse_list("wipe", 3)),
        workload=WorkloadOptions(rate=150),
        schedule=Schedule(2.0, 3.0, 1.5, 2.5),
        seed=SMOKE_SEED,
        out=tmp_path / "run",
        recovery_timeout_s=20,
        drain_timeout_s=20,
    )

    outcome = await run(options, lambda line: None)

    failed = {r.name: r.examples[:5] for r in outcome.results if not r.valid}
    assert not failed, failed
    assert outcome.recovered
    wipes = [
        op.value
        for op in read_history(outcome.directory / "history.jsonl")
        if op.f == "fault" and op.value["phase"] == "start"
    ]
    assert wipes and all(value["fault"] == "wipe" for value in wipes)
    logs = "".join(path.read_text() for path in outcome.directory.rglob("node.log"))
    assert '"recovery_finished"' in logs
    assert json.loads((outcome.directory / "run.json").read_text())["verdict"] == "PASS"


async def test_the_negative_control_is_caught_losing_acknowledged_messages(
    tmp_path: Path,
) -> None:
    options = RunOptions(
        time_s=8,
        nemesis=tuple(FaultSpec.parse_list("lose-unsynced:all", 3)),
        workload=WorkloadOptions(rate=150),
        schedule=Schedule(1.0, 1.5, 3.0, 3.5),
        seed=1,
        out=tmp_path / "run",
        ack_before_fsync=True,
        recovery_timeout_s=10,
        drain_timeout_s=5,
    )

    outcome = await run(options, lambda line: None)

    lost = next(r for r in outcome.results if r.name == "lost")
    assert not lost.valid
    # Every node lost what it had acknowledged and never fsynced: the final read misses it
    # (consumers may have seen some of it before the crash).
    assert lost.counts["lost_from_storage"] > 0
    assert not outcome.valid
