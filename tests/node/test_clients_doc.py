"""docs/clients.md's three examples (Trio, asyncio, blocking) as written, each in its own
Python process against a real cluster (only the naming port changed): each sends its message
and prints one it read back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.node.cluster_fixture import ProcessCluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


@pytest.mark.cluster_options(with_naming=True, naming_heartbeat_ms=200)
async def test_every_example_of_the_clients_doc_sends_and_reads_back(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    naming = next(iter(cluster.naming.values()))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3
    for block in blocks:
        script = block.replace("127.0.0.1:9876", naming)
        done = await trio.to_thread.run_sync(
            lambda script=script: subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "order 1"
