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


if __name__ == "__main__":
    main()
