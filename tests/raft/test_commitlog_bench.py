"""`dledger-mq bench log` runs end to end and prints its tables (a smoke test, tiny budget)."""

from __future__ import annotations

from pathlib import Path

import structlog
from click.testing import CliRunner

from dledger_mq.cli import main


def test_bench_log_prints_append_and_read_tables(tmp_path: Path) -> None:
    saved_config = structlog.get_config()
    try:
        result = CliRunner().invoke(
            main,
            [
                "bench",
                "log",
                "--dir",
                str(tmp_path),
                "--count",
                "3",
                "--entry-sizes",
                "100",
                "--batch-sizes",
                "1,4",
            ],
        )
    finally:
        structlog.configure(**saved_config)
    assert result.exit_code == 0, result.output
    assert "| sync | 100 B | 4 |" in result.output
    assert "| async | 100 B | 1 |" in result.output
    assert "| 100 B | 12 |" in result.output  # sequential read of the last case: 3 x 4 entries
