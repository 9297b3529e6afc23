"""The ``dledger-mq`` command line: one module per group of commands, all on ``main``."""

from dledger_mq.cli import (  # noqa: F401 (registers)
    cluster,
    messages,
    retries,
    servers,
    tools,
    topics,
    users,
)
from dledger_mq.cli.main import main

__all__ = ["main"]
