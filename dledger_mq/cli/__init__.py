"""The ``dledger-mq`` command line: one module per group of commands, all on ``main``."""

from dledger_mq.cli import (  # noqa: F401 (registers)
    cluster,
    dashboard,
    inspect,
    messages,
    queries,
    retries,
    servers,
    tools,
    topics,
    users,
)
from dledger_mq.cli.main import main

__all__ = ["main", "run"]


def run() -> None:
    """The `dledger-mq` command, as the console script and `python -m dledger_mq` run it."""
    from dledger_mq.logs import configure_logging

    # The SDK's own events (a retried message dead-lettered, a route lost) go to standard
    # error, warnings and worse only: standard output is the command's (and --json's). The
    # commands that run servers set their own level. Here, not in `main`, so that a test
    # that runs `main` in its own process does not change that process's logging.
    configure_logging("warning")
    main()
