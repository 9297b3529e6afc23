"""Tables of the read-only commands: drawn by ``rich`` on a terminal, plain columns (one row a
line, two spaces between, no colour) when standard output is a pipe or a file, so that
``grep`` and ``awk`` get what a person sees. ``--json`` is the form for programs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import click


def show_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [["-" if value is None else str(value) for value in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, column in enumerate(columns):
            numbers = cells and all(_is_number(row[i]) for row in cells)
            table.add_column(column, justify="right" if numbers else "left")
        for row in cells:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [
        max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)
    ]
    click.echo(title)
    click.echo(
        "  ".join(
            column.ljust(width) for column, width in zip(columns, widths, strict=True)
        ).rstrip()
    )
    for row in cells:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _is_number(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def time_text(epoch_ms: int) -> str | None:
    """An epoch in ms as UTC ISO-8601 to the millisecond; None for 0 (never)."""
    if epoch_ms <= 0:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")
