"""The ``dledger-mq`` command line: one module per group of commands, all on ``main``."""

from dledger_mq.cli import cluster, messages, servers, tools, topics, users  # noqa: F401 (registers)
from dledger_mq.cli.main import main

__all__ = ["main"]
