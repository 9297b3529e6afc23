"""``python -m jepsen``: the deterministic simulator (``sim``) and real-node runs (``run``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from jepsen.sim.mutants import MUTANTS
from jepsen.sim.options import FAULTS, SimOptions
from jepsen.sim.runner import SimRequest, replay_command, run_seed, run_seeds

#: Most broker groups ``run --groups`` starts (as ``cluster up --groups``).
MAX_RUN_GROUPS = 8


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
@click.option(
    "--learners",
    type=click.IntRange(min=0, max=2),
    default=0,
    show_default=True,
    help="Non-voting members besides the voters (replicated to, never counted).",
)
@click.option(
    "--membership",
    is_flag=True,
    help="Membership changes under the faults: two spare servers added as learners, promoted, "
    "voters removed (3-5 voters).",
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
    learners: int,
    membership: bool,
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
        return SimRequest(number, node_count, ticks, fault_names, mutant, learners, membership)

    if seed is not None:
        options = SimOptions.draw(
            seed, node_count, ticks, fault_names, learners=learners, membership=membership
        )
        click.echo(f"seed {seed}: {options.describe()}")
        result = run_seed(request(seed), trace=None if quiet else click.echo)
        if result.passed:
            click.echo(
                f"seed {seed} passed: {result.committed} committed, "
                f"{result.acknowledged} acknowledged, {result.elections} terms with a leader, "
                f"{result.sends} messages sent through the broker ({result.duplicates} retries "
                "answered with the original)"
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


@main.command("mutants")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Seeds (0, 1, ...) tried per mutant before it counts as not caught.",
)
@click.option("--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True)
@click.argument("names", nargs=-1)
def mutants(seeds: int, jobs: int, names: tuple[str, ...]) -> None:
    """The first default seeds that catch each deliberately broken variant (NAMES, or all).

    Prints `SEED MUTANT` lines for tests/jepsen/sim_regressions.txt; exits non-zero if a
    mutant without a documented reason escapes every seed. Run it after changing how the
    simulator draws or uses its random numbers: that reshuffles what every seed means.
    """
    chosen = names or tuple(sorted(MUTANTS))
    unknown = [name for name in chosen if name not in MUTANTS]
    if unknown:
        raise click.BadParameter(f"unknown mutants {unknown}; choose from {sorted(MUTANTS)}")
    escaped = []
    for name in chosen:
        mutant = MUTANTS[name]
        if mutant.uncaught_reason is not None:
            click.echo(f"# {name}: not expected to be caught: {mutant.uncaught_reason}")
            continue
        caught: list[int] = []
        for first in range(0, seeds, 40):
            requests = (
                SimRequest(number, mutant=name) for number in range(first, min(seeds, first + 40))
            )
            caught += sorted(r.seed for r in run_seeds(requests, jobs) if not r.passed)
            if len(caught) >= 2:
                break
        for number in caught[:2]:
            click.echo(f"{number} {name}")
        if not caught:
            click.echo(f"# {name}: NOT CAUGHT by seeds 0..{seeds - 1}")
            escaped.append(name)
    if escaped:
        sys.exit(1)


def _fault_help() -> str:
    from jepsen.nemesis import TARGETS

    return "; ".join(f"{fault} ({'|'.join(targets)})" for fault, targets in TARGETS.items())


@main.command("run")
@click.option(
    "--time",
    "time_s",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds of workload under faults (then heal, recover, drain, check).",
)
@click.option(
    "--nodes",
    type=click.Choice(["3", "5"]),
    default="3",
    show_default=True,
    help="Nodes per broker group.",
)
@click.option(
    "--groups",
    type=click.IntRange(min=1, max=MAX_RUN_GROUPS),
    default=1,
    show_default=True,
    help="Broker groups, each a Raft group of --nodes nodes (named a/n1, b/n1, ...); the "
    "topic spans them all. With 2 or more, each fault window acts in one group, drawn per "
    "window (kill:majority or pause:majority takes one group's majority away), and the "
    "group_independence check runs.",
)
@click.option(
    "--nemesis",
    default="kill,pause,partition",
    show_default=True,
    help="Comma-separated faults, each NAME or NAME:TARGET, or 'none'. Faults and "
    "their targets: " + _fault_help() + ".",
)
@click.option(
    "--workload",
    type=click.Choice(["queue", "fifo", "delay", "retry"]),
    default="queue",
    show_default=True,
    help="queue: unique values through one consumer group; fifo: the same with "
    "sharding keys, checking order per key; delay: every send delayed (--delay-seconds), "
    "checked never early, once, on time outside faults; retry: handlers fail at random "
    "(--fail-rate) under a small retry policy (--max-attempts, --retry-delays), checked "
    "handled or dead-lettered, never both, attempts counting up.",
)
@click.option("--producers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--consumers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=200,
    show_default=True,
    help="Sends per second over all producers (0: as fast as they can).",
)
@click.option(
    "--send-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="A send unanswered this long is recorded as indeterminate.",
)
@click.option(
    "--fault-seconds",
    default="5-15",
    show_default=True,
    metavar="MIN-MAX",
    help="Length of each fault window, drawn uniformly.",
)
@click.option(
    "--quiet-seconds",
    default="5-10",
    show_default=True,
    metavar="MIN-MAX",
    help="Quiet period before each fault window, drawn uniformly.",
)
@click.option(
    "--membership-seconds",
    default="5-10",
    show_default=True,
    metavar="MIN-MAX",
    help="With the membership fault: quiet period before each membership change (a spare "
    "added, promoted, a voter removed), drawn uniformly; changes run alongside the windows.",
)
@click.option(
    "--delay-seconds",
    default="0.5-5",
    show_default=True,
    metavar="MIN-MAX",
    help="delay workload: each send's delay, drawn uniformly.",
)
@click.option(
    "--on-time",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="delay workload: seconds past its time a message may become visible when no fault "
    "window is near its due time.",
)
@click.option(
    "--settle-seconds",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="delay workload: after a fault window's end, seconds in which lateness is not judged "
    "(restarts, an election, clients reconnecting).",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1, max=100),
    default=3,
    show_default=True,
    help="retry workload: the consumer group's deliveries of a message in all before it is "
    "dead-lettered.",
)
@click.option(
    "--retry-delays",
    default="200ms,1s",
    show_default=True,
    metavar="D1,D2,...",
    help="retry workload: the group's wait before each retry (the last one repeats).",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(min=0, max=1),
    default=0.3,
    show_default=True,
    help="retry workload: the probability that a handler fails a delivery.",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: drawn, printed).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (default: ./jepsen-runs/<timestamp>/).",
)
@click.option(
    "--recovery-timeout",
    type=click.FloatRange(min=1),
    default=30,
    show_default=True,
    help="Seconds to wait after the heal for every node to catch up.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for consumers to see every acknowledged value.",
)
@click.option(
    "--secure",
    is_flag=True,
    help="TLS on every port (a CA made for the run) and clients that sign in as a user.",
)
@click.option(
    "--unsafe-ack-before-fsync",
    is_flag=True,
    help="Negative control: nodes acknowledge before fsync and lose unsynced writes "
    "when killed; with lose-unsynced faults the checkers must report loss.",
)
def run_command(
    time_s: float,
    nodes: str,
    groups: int,
    nemesis: str,
    workload: str,
    producers: int,
    consumers: int,
    rate: float,
    send_timeout: float,
    fault_seconds: str,
    quiet_seconds: str,
    membership_seconds: str,
    delay_seconds: str,
    on_time: float,
    settle_seconds: float,
    max_attempts: int,
    retry_delays: str,
    fail_rate: float,
    seed: int | None,
    out: Path | None,
    recovery_timeout: float,
    drain_timeout: float,
    secure: bool,
    unsafe_ack_before_fsync: bool,
) -> None:
    """Attack a real cluster of `dledger-mq node` processes and check what it acknowledged.

    Starts the nodes on 127.0.0.1 (every peer link through a fault proxy), runs the workload
    and the nemesis for --time seconds, heals everything, waits for recovery, drains the
    consumers, checks the history and writes the run directory: history.jsonl, node logs,
    results.json and report.html. Exits 0 only when every checker passes.
    """
    import random as random_module
    import signal

    import trio

    from dledger_mq.cli.main import parse_duration_ms
    from jepsen.nemesis import FaultSpec, Schedule
    from jepsen.run import RunOptions, run
    from jepsen.workload import WorkloadOptions

    size = int(nodes)
    try:
        specs = tuple(FaultSpec.parse_list(nemesis, size))
        fault_min, fault_max = _seconds_range(fault_seconds, "--fault-seconds")
        quiet_min, quiet_max = _seconds_range(quiet_seconds, "--quiet-seconds")
        membership_min, membership_max = _seconds_range(membership_seconds, "--membership-seconds")
        delay_min, delay_max = _seconds_range(delay_seconds, "--delay-seconds")
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    delays_ms = tuple(
        parse_duration_ms(item, "--retry-delays")
        for item in retry_delays.split(",")
        if item.strip()
    )
    if not delays_ms:
        raise click.BadParameter("needs at least one delay", param_hint="--retry-delays")
    if seed is None:
        seed = random_module.randrange(1 << 31)
    options = RunOptions(
        time_s=time_s,
        nodes=size,
        groups=groups,
        nemesis=specs,
        workload=WorkloadOptions(
            name=workload,
            producers=producers,
            consumers=consumers,
            rate=rate,
            send_timeout_s=send_timeout,
            delay_min_s=delay_min,
            delay_max_s=delay_max,
            on_time_s=on_time,
            settle_s=settle_seconds,
            max_attempts=max_attempts,
            retry_delays_ms=delays_ms,
            fail_rate=fail_rate,
        ),
        schedule=Schedule(
            fault_min, fault_max, quiet_min, quiet_max, membership_min, membership_max
        ),
        seed=seed,
        out=out,
        ack_before_fsync=unsafe_ack_before_fsync,
        secure=secure,
        recovery_timeout_s=recovery_timeout,
        drain_timeout_s=drain_timeout,
    )
    click.echo(f"seed {seed}")
    # SIGTERM stops the run as Ctrl-C does: the nodes it started are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = trio.run(run, options, click.echo)
    except (OSError, trio.TooSlowError) as error:
        click.echo(f"error: the run could not complete: {error or type(error).__name__}", err=True)
        sys.exit(2)
    for result in outcome.results:
        figures = ", ".join(f"{key} {value}" for key, value in result.counts.items())
        click.echo(f"{'ok  ' if result.valid else 'FAIL'} {result.name}: {figures}")
    click.echo(f"report: {outcome.directory / 'report.html'}")
    if not outcome.valid:
        sys.exit(1)


def _seconds_range(text: str, option: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        low_value, high_value = float(low), float(high or low)
    except ValueError:
        raise ValueError(f"{option}: expected MIN-MAX seconds, got {text!r}") from None
    if not 0 < low_value <= high_value:
        raise ValueError(f"{option}: expected 0 < MIN <= MAX, got {text!r}")
    return low_value, high_value


if __name__ == "__main__":
    main()
