"""``python -m jepsen``: the deterministic simulator (``sim``)."""

from __future__ import annotations

import os
import sys
import time

import click

from jepsen.sim.mutants import MUTANTS
from jepsen.sim.options import FAULTS, SimOptions
from jepsen.sim.runner import SimRequest, replay_command, run_seed, run_seeds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fault injection and checking for dledger-mq."""


@main.command()
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Run this many seeds, starting at --start.",
)
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First seed of the range.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Replay one seed, printing every event of it.",
)
@click.option(
    "--nodes",
    type=click.Choice(["3", "5"]),
    default=None,
    help="Cluster size (default: drawn from the seed).",
)
@click.option(
    "--ticks",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Ticks of the fault-heavy safety phase.",
)
@click.option(
    "--faults",
    default=",".join(FAULTS),
    show_default=True,
    help="Comma-separated faults to inject, or 'none'.",
)
@click.option(
    "--mutant",
    type=click.Choice(sorted(MUTANTS)),
    default=None,
    help="Run a deliberately broken variant (the seeds should catch it).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Worker processes.",
)
@click.option("--quiet", is_flag=True, help="With --seed: print only the result.")
def sim(
    seeds: int,
    start: int,
    seed: int | None,
    nodes: str | None,
    ticks: int,
    faults: str,
    mutant: str | None,
    jobs: int,
    quiet: bool,
) -> None:
    """Run the deterministic Raft simulator over a range of seeds (or replay one).

    Each seed draws every option (printed first) and runs a fault-heavy safety phase, checking
    the Raft safety invariants after every step, then a liveness phase with faults healed.
    Exits non-zero if any seed fails, printing the command that replays it.
    """
    fault_names = () if faults == "none" else tuple(f for f in faults.split(",") if f)
    unknown = [fault for fault in fault_names if fault not in FAULTS]
    if unknown:
        raise click.BadParameter(f"unknown faults {unknown}; choose from {list(FAULTS)}")
    node_count = int(nodes) if nodes else None

    def request(number: int) -> SimRequest:
        return SimRequest(number, node_count, ticks, fault_names, mutant)

    if seed is not None:
        options = SimOptions.draw(seed, node_count, ticks, fault_names)
        click.echo(f"seed {seed}: {options.describe()}")
        result = run_seed(request(seed), trace=None if quiet else click.echo)
        if result.passed:
            click.echo(
                f"seed {seed} passed: {result.committed} committed, "
                f"{result.acknowledged} acknowledged, {result.elections} terms with a leader"
            )
            return
        click.echo(f"seed {seed} FAILED: {result.failure}")
        sys.exit(1)

    began = time.monotonic()
    failures = []
    results = run_seeds((request(n) for n in range(start, start + seeds)), jobs)
    for done, result in enumerate(results, start=1):
        if not result.passed:
            failures.append(result)
            click.echo(f"seed {result.seed} FAILED: {result.failure}\n  options: {result.options}")
        if sys.stderr.isatty() and done % 25 == 0:
            click.echo(f"\r{done}/{seeds} seeds, {len(failures)} failed", nl=False, err=True)
    if sys.stderr.isatty():
        click.echo("", err=True)
    elapsed = time.monotonic() - began
    click.echo(
        f"{seeds} seeds: {seeds - len(failures)} passed, {len(failures)} failed in {elapsed:.1f} s"
    )
    if failures:
        for result in sorted(failures, key=lambda r: r.seed)[:10]:
            click.echo(f"replay: {replay_command(request(result.seed))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
