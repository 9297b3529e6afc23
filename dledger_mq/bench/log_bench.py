"""``dledger-mq bench log``: CommitLog append and read throughput beside a raw write+fsync loop.

Each append case runs right after the raw Python ``os.write`` + ``os.fsync`` loop for the same
entry and batch size (one write of the batch's bytes, one fsync), so the ratio is measured under
the same disk conditions; the machine is noisy, figures far apart in time are not comparable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs

from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.disk import OsDisk

#: Bytes per read request in the sequential read case.
READ_CHUNK_BYTES = 1 << 20


@attrs.frozen
class AppendResult:
    policy: str
    entry_size_bytes: int
    batch_size: int
    entries_per_second: float
    p50_ms: float
    p99_ms: float
    raw_entries_per_second: float
    raw_p50_ms: float

    @property
    def ratio_to_raw(self) -> float:
        return self.entries_per_second / self.raw_entries_per_second

    @property
    def megabytes_per_second(self) -> float:
        return self.entries_per_second * self.entry_size_bytes / 1e6


@attrs.frozen
class ReadResult:
    entry_size_bytes: int
    entries: int
    entries_per_second: float
    open_seconds: float

    @property
    def megabytes_per_second(self) -> float:
        return self.entries_per_second * self.entry_size_bytes / 1e6


@attrs.frozen
class Budget:
    """How long each case runs: ``seconds`` of wall time, or exactly ``count`` batches."""

    seconds: float
    count: int | None


#: The log and the raw loop take turns in slices this long, so that both see the same disk: on
#: this machine fsync latency drifts by 20x over minutes, and a ratio of figures taken seconds
#: apart measures the drift more than the log.
SLICE_SECONDS = 0.05
SLICES_PER_COUNT_CASE = 20


class _Runner:
    """Times one batch per ``step``; ``latencies`` holds the timed part of each."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.latencies: list[float] = []

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def entries_per_second(self) -> float:
        busy_seconds = sum(self.latencies)
        return len(self.latencies) * self.batch_size / busy_seconds if busy_seconds else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(sorted(self.latencies), fraction) * 1000


class _RawWriteFsync(_Runner):
    """The floor: one ``os.write`` of the batch's bytes and one ``os.fsync``."""

    def __init__(self, path: str, entry_size_bytes: int, batch_size: int) -> None:
        super().__init__(batch_size)
        self._path = path
        self._payload = os.urandom(entry_size_bytes * batch_size)
        self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def step(self) -> None:
        before = time.perf_counter()
        os.write(self._descriptor, self._payload)
        os.fsync(self._descriptor)
        self.latencies.append(time.perf_counter() - before)

    def close(self) -> None:
        os.close(self._descriptor)
        os.remove(self._path)


class _LogAppend(_Runner):
    """``CommitLog.append`` of one batch on real files."""

    def __init__(
        self, directory: str, policy: FlushPolicy, entry_size_bytes: int, batch_size: int
    ) -> None:
        super().__init__(batch_size)
        self.log = CommitLog.open(OsDisk(), directory, flush_policy=policy)
        self._body = os.urandom(entry_size_bytes)
        self._next_index = 1

    def step(self) -> None:
        # Building entries is the caller's work, not the log's: keep it out of the timing.
        first = self._next_index
        batch = [Entry(first + offset, 1, self._body) for offset in range(self.batch_size)]
        before = time.perf_counter()
        self.log.append(batch)
        self.latencies.append(time.perf_counter() - before)
        self._next_index += self.batch_size

    def close(self) -> None:
        self.log.close()


def take_turns(runners: list[_Runner], budget: Budget) -> None:
    """Run the runners in alternating slices until the budget is spent."""
    if budget.count is not None:
        per_slice = max(1, budget.count // SLICES_PER_COUNT_CASE)
        remaining = budget.count
        while remaining > 0:
            steps = min(per_slice, remaining)
            for runner in runners:
                for _ in range(steps):
                    runner.step()
            remaining -= steps
        return
    deadline = time.perf_counter() + budget.seconds * len(runners)
    while time.perf_counter() < deadline:
        for runner in runners:
            slice_end = time.perf_counter() + SLICE_SECONDS
            runner.step()
            while time.perf_counter() < slice_end:
                runner.step()


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    position = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[position]


def case_directory(directory: str, policy: FlushPolicy, entry_size_bytes: int, batch: int) -> str:
    return os.path.join(directory, f"log-{policy.value}-{entry_size_bytes}-{batch}")


def append_case(
    directory: str, policy: FlushPolicy, entry_size_bytes: int, batch_size: int, budget: Budget
) -> AppendResult:
    """The log's appends and the raw loop, in alternating slices of one run."""
    raw = _RawWriteFsync(os.path.join(directory, "raw.bin"), entry_size_bytes, batch_size)
    log_directory = case_directory(directory, policy, entry_size_bytes, batch_size)
    log = _LogAppend(log_directory, policy, entry_size_bytes, batch_size)
    try:
        take_turns([raw, log], budget)
    finally:
        raw.close()
        log.close()
    return AppendResult(
        policy.value,
        entry_size_bytes,
        batch_size,
        log.entries_per_second(),
        log.latency_ms(0.5),
        log.latency_ms(0.99),
        raw.entries_per_second(),
        raw.latency_ms(0.5),
    )


def sequential_read(directory: str, entry_size_bytes: int) -> ReadResult:
    """Open (the recovery scan) and read the whole log front to back in 1 MiB requests."""
    started = time.perf_counter()
    log = CommitLog.open(OsDisk(), directory)
    open_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index = log.first_index()
    last_index = log.last_index()
    while index <= last_index:
        index += len(log.entries(index, last_index + 1, READ_CHUNK_BYTES))
    elapsed = time.perf_counter() - started
    log.close()
    entries = last_index - log.first_index() + 1
    return ReadResult(
        entry_size_bytes, entries, entries / elapsed if elapsed else 0.0, open_seconds
    )


@contextmanager
def bench_directory(directory: str | None) -> Iterator[str]:
    """``directory``, or a temporary one beside the current directory (same disk), removed after."""
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        yield directory
        return
    temporary = tempfile.mkdtemp(prefix=".dledger-mq-bench-log-", dir=os.getcwd())
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def run(
    directory: str,
    *,
    policies: list[FlushPolicy],
    entry_sizes_bytes: list[int],
    batch_sizes: list[int],
    budget: Budget,
    progress: Callable[[str], None],
) -> tuple[list[AppendResult], list[ReadResult]]:
    appends: list[AppendResult] = []
    reads: list[ReadResult] = []
    cases = len(entry_sizes_bytes) * len(batch_sizes) * len(policies)
    done = 0
    for entry_size_bytes in entry_sizes_bytes:
        read_source: str | None = None
        for batch_size in batch_sizes:
            for policy in policies:
                label = f"{policy.value} {entry_size_bytes} B x {batch_size}"
                progress(f"[{done}/{cases}] {label} beside raw write+fsync ...")
                result = append_case(directory, policy, entry_size_bytes, batch_size, budget)
                appends.append(result)
                done += 1
                progress(
                    f"[{done}/{cases}] {label}: {result.entries_per_second:,.0f} entries/s, "
                    f"raw {result.raw_entries_per_second:,.0f}/s"
                )
                if read_source is not None:
                    shutil.rmtree(read_source, ignore_errors=True)
                read_source = case_directory(directory, policy, entry_size_bytes, batch_size)
        if read_source is not None:
            progress(f"[{done}/{cases}] sequential read {entry_size_bytes} B ...")
            reads.append(sequential_read(read_source, entry_size_bytes))
            shutil.rmtree(read_source, ignore_errors=True)
    return appends, reads


def format_report(appends: list[AppendResult], reads: list[ReadResult]) -> str:
    lines = [
        "| policy | entry | batch | entries/s | MB/s | p50 ms | p99 ms "
        "| raw write+fsync entries/s | raw p50 ms | log / raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in appends:
        lines.append(
            f"| {result.policy} | {result.entry_size_bytes} B | {result.batch_size} "
            f"| {result.entries_per_second:,.0f} | {result.megabytes_per_second:,.1f} "
            f"| {result.p50_ms:.3f} | {result.p99_ms:.3f} "
            f"| {result.raw_entries_per_second:,.0f} | {result.raw_p50_ms:.3f} "
            f"| {result.ratio_to_raw:.2f} |"
        )
    lines += [
        "",
        "| sequential read | entries | entries/s | MB/s | open (recovery scan) s |",
        "|---|---|---|---|---|",
    ]
    for read in reads:
        lines.append(
            f"| {read.entry_size_bytes} B | {read.entries:,} | {read.entries_per_second:,.0f} "
            f"| {read.megabytes_per_second:,.1f} | {read.open_seconds:.3f} |"
        )
    return "\n".join(lines)


def main(
    *,
    directory: str | None,
    seconds: float,
    count: int | None,
    entry_sizes: str,
    batch_sizes: str,
    policies: str,
) -> None:
    """The ``bench log`` command: run every case, a progress line on stderr, a table on stdout."""
    import logging
    import platform
    import sys

    import click
    import structlog

    # The log's own info events (one per open) would drown the progress line.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def progress(line: str) -> None:
        click.echo(f"\r\033[K{line}", err=True, nl=False)

    with bench_directory(directory) as where:
        click.echo(
            f"# bench log: {platform.platform()}, {os.cpu_count()} cpus, Python "
            f"{platform.python_version()}, dir {where}"
        )
        appends, reads = run(
            where,
            policies=[FlushPolicy(name.strip()) for name in policies.split(",")],
            entry_sizes_bytes=[int(size) for size in entry_sizes.split(",")],
            batch_sizes=[int(size) for size in batch_sizes.split(",")],
            budget=Budget(seconds, count),
            progress=progress,
        )
    click.echo("\r\033[K", err=True, nl=False)
    click.echo(format_report(appends, reads))
    sys.stdout.flush()
