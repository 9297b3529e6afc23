"""The simulator itself: clean on the default seeds, deterministic, and able to catch bugs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jepsen.sim.mutants import MUTANTS
from jepsen.sim.options import SimOptions
from jepsen.sim.runner import SimRequest, run_seed, run_seeds

REGRESSIONS = Path(__file__).parent / "sim_regressions.txt"
DEFAULT_TEST_SEEDS = 300


def test_default_seeds_keep_every_safety_and_liveness_property() -> None:
    results = list(run_seeds((SimRequest(seed) for seed in range(DEFAULT_TEST_SEEDS)), jobs=2))
    failures = [f"seed {r.seed}: {r.failure}" for r in results if not r.passed]
    assert failures == []
    # The seeds must actually exercise the cluster, not pass vacuously.
    assert sum(r.committed for r in results) > 50 * DEFAULT_TEST_SEEDS
    assert sum(r.elections > 3 for r in results) > DEFAULT_TEST_SEEDS // 2


def test_a_seed_replays_identically() -> None:
    traces: list[list[str]] = [[], []]
    for trace in traces:
        result = run_seed(SimRequest(7), trace=trace.append)
        assert result.passed
    assert len(traces[0]) > 20
    assert traces[0] == traces[1]


def test_options_are_drawn_from_the_seed_alone() -> None:
    assert SimOptions.draw(11) == SimOptions.draw(11)
    assert len({SimOptions.draw(seed) for seed in range(20)}) == 20
    assert {SimOptions.draw(seed).nodes for seed in range(50)} == {3, 5}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_mutant_is_caught_by_a_default_seed_or_says_why_not(mutant: str) -> None:
    """The default seeds (0..999) catch it: the regression file names the seeds that do, and
    ``test_regression_seed`` runs them. A mutant they cannot catch carries the reason."""
    reason = MUTANTS[mutant].uncaught_reason
    seeds = [seed for seed, name in _regressions() if name == mutant]
    if reason is not None:
        assert not seeds and len(reason) > 40
        pytest.skip(reason)
    assert seeds and all(seed < 1000 for seed in seeds), (
        f"no default seed known to catch {mutant}: python -m jepsen mutants {mutant}"
    )


def test_the_seeds_exercise_the_broker() -> None:
    results = list(run_seeds((SimRequest(seed) for seed in range(60)), jobs=2))
    assert all(r.passed for r in results), [r.failure for r in results if not r.passed]
    assert sum(r.sends for r in results) > 10 * 60
    assert sum(r.duplicates for r in results) > 20  # retries answered with the original


def _regressions() -> list[tuple[int, str | None]]:
    cases = []
    for line in REGRESSIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            seed, *mutant = line.split()
            cases.append((int(seed), mutant[0] if mutant else None))
    return cases


@pytest.mark.parametrize(("seed", "mutant"), _regressions())
def test_regression_seed(seed: int, mutant: str | None) -> None:
    # The seed as the mutant runs it (a learner's mutant with a learner, a membership
    # mutant's with membership changes), but correct.
    learners = MUTANTS[mutant].learners if mutant is not None else 0
    membership = MUTANTS[mutant].membership if mutant is not None else False
    assert run_seed(SimRequest(seed, learners=learners, membership=membership)).passed
    if mutant is not None:
        assert not run_seed(SimRequest(seed, mutant=mutant)).passed


def _jepsen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jepsen", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_runs_seeds_and_summarises() -> None:
    result = _jepsen("sim", "--seeds", "20", "--jobs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 seeds: 20 passed, 0 failed" in result.stdout


def test_cli_prints_the_replay_command_of_a_failing_seed() -> None:
    result = _jepsen(
        "sim", "--seeds", "2", "--start", "1", "--jobs", "1", "--mutant", "vote-without-log-check"
    )
    # Of seeds 1..2, this mutant is caught by seed 2 (tests/jepsen/sim_regressions.txt).
    assert result.returncode == 1, result.stdout
    assert "replay: python -m jepsen sim --seed 2 --mutant vote-without-log-check" in result.stdout
    replay = _jepsen("sim", "--seed", "2", "--mutant", "vote-without-log-check", "--quiet")
    assert replay.returncode == 1
    assert "seed 2 FAILED: SafetyViolation" in replay.stdout
    assert replay.stdout.splitlines()[0].startswith("seed 2: seed=2 nodes=")


def test_cli_finds_the_seeds_that_catch_a_mutant() -> None:
    result = _jepsen("mutants", "--seeds", "40", "--jobs", "1", "vote-twice", "apply-twice")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["vote-twice"] * 2 + ["apply-twice"] * 2
    assert all(f"{line}" in REGRESSIONS.read_text() for line in lines)
    skipped = _jepsen("mutants", "--seeds", "1", "--jobs", "1", "leader-counts-unpersisted")
    assert skipped.returncode == 0
    assert "not expected to be caught: unreachable: the driver takes no Ready" in skipped.stdout


def test_cli_rejects_an_unknown_fault() -> None:
    result = _jepsen("sim", "--seeds", "1", "--faults", "meteor")
    assert result.returncode != 0
    assert "unknown faults" in result.stderr


def test_seeds_with_a_learner_keep_every_safety_and_liveness_property() -> None:
    """A fourth (or sixth) node that does not vote, under every fault: it never campaigns or
    leads (the checker), and counts in no quorum, so what is committed survives anyway."""
    seeds = 100
    results = list(run_seeds((SimRequest(seed, learners=1) for seed in range(seeds)), jobs=2))
    failures = [f"seed {r.seed}: {r.failure}" for r in results if not r.passed]
    assert failures == []
    assert all("learners=1" in r.options for r in results)
    assert sum(r.committed for r in results) > 50 * seeds


def test_seeds_with_membership_changes_keep_every_safety_and_liveness_property() -> None:
    """Spare servers added as learners, promoted, voters removed, under every fault: one
    leader per term whatever each node's view, nothing committed lost, and the members of
    the last committed membership converge."""
    seeds = 60
    requests = (SimRequest(seed, membership=True) for seed in range(seeds))
    results = list(run_seeds(requests, jobs=2))
    failures = [f"seed {r.seed}: {r.failure}" for r in results if not r.passed]
    assert failures == []
    assert all("membership=True" in r.options for r in results)


@pytest.mark.parametrize("seed", [15, 187])
def test_a_group_whose_members_views_lag_still_elects(seed: int) -> None:
    """Seed 15: a voter promoted in entries it had not received refused to vote (a learner's
    lease never lapsed, and it answered no one). Seed 187: voters refused candidates outside
    their own stale view. Both lost every election after healing."""
    assert run_seed(SimRequest(seed, membership=True)).passed


def test_a_snapshot_is_never_saved_after_a_failed_fsync_of_the_queues() -> None:
    """Seed 1553 with a learner: a queue file's fsync failed (ENOSPC) while saving a snapshot;
    the next one "succeeded" without the dropped pages, and after a power loss the snapshot
    needed queue entries the files no longer held (``FileQueueStore.sync``)."""
    assert run_seed(SimRequest(1553, learners=1)).passed


@pytest.mark.parametrize("seed", [915, 1275])
def test_an_install_overtaken_by_a_newer_snapshot_still_finds_its_own(seed: int) -> None:
    """Five voters and a learner, messages reordered: a snapshot transfer completed while the
    install of an older one was being written; the broker then looked for the older one as
    the newest and failed (``SnapshotStore.get``)."""
    assert run_seed(SimRequest(seed, learners=1)).passed
