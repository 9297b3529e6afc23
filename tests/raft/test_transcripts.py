"""Readable scenario transcripts; see tests/raft/interaction.py for the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.raft.interaction import run_transcript

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda path: path.stem)
def test_transcript(path: Path) -> None:
    expected, actual = run_transcript(path)
    assert actual == expected, "rerun with REWRITE_TRANSCRIPTS=1 and review the diff"
