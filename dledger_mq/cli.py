"""The ``dledger-mq`` command line."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dledger-mq")
def main() -> None:
    """dledger-mq: a message queue whose broker groups are Raft groups."""


@main.group()
def bench() -> None:
    """Benchmarks whose figures go into docs/benchmarks.md."""


@bench.command("log")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write (default: a temporary directory under the current one, removed after).",
)
@click.option(
    "--seconds",
    type=float,
    default=1.5,
    show_default=True,
    help="Per case for the log; the raw loop beside it runs as long again.",
)
@click.option("--count", type=int, default=None, help="Batches per case instead of --seconds.")
@click.option(
    "--entry-sizes", default="100,1024", show_default=True, help="Bytes, comma-separated."
)
@click.option("--batch-sizes", default="1,16,256", show_default=True, help="Comma-separated.")
@click.option("--policies", default="sync,async", show_default=True, help="Flush policies.")
def bench_log(
    directory: str | None,
    seconds: float,
    count: int | None,
    entry_sizes: str,
    batch_sizes: str,
    policies: str,
) -> None:
    """CommitLog append throughput and latency beside a raw write+fsync loop, and reads."""
    from dledger_mq.bench.log_bench import main as bench_log_main

    bench_log_main(
        directory=directory,
        seconds=seconds,
        count=count,
        entry_sizes=entry_sizes,
        batch_sizes=batch_sizes,
        policies=policies,
    )


if __name__ == "__main__":
    main()
