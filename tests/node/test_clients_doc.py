"""docs/clients.md's examples as written, each in its own Python process against a real cluster
(only the ports changed): the three that send one message and print one they read back, and
the three workers (admin, producer, simple consumer, a consumer's handler) that run until
Ctrl-C and then leave cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def doc_examples(cluster: ProcessCluster) -> list[str]:
    naming = next(iter(cluster.naming.values()))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [
        block.replace("127.0.0.1:9876", naming).replace(
            "127.0.0.1:9881", cluster.client_address("n1")
        )
        for block in blocks
    ]


@pytest.mark.cluster_options(with_naming=True, naming_heartbeat_ms=200)
async def test_every_example_of_the_clients_doc_runs_as_written(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    examples = doc_examples(cluster)
    assert len(examples) == 6
    for script in examples[:3]:
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

    for number, script in enumerate(examples[3:]):
        worker = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert worker.stdout is not None
            lines: list[str] = []
            with trio.fail_after(DEADLINE_SECONDS):
                while not lines or lines[-1] and not lines[-1].startswith("handled"):
                    lines.append((await trio.to_thread.run_sync(worker.stdout.readline)).strip())
            worker.send_signal(signal.SIGINT)  # Ctrl-C
            rest, errors = await trio.to_thread.run_sync(
                lambda worker=worker: worker.communicate(timeout=DEADLINE_SECONDS)
            )
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        assert worker.returncode == 0, errors[-2000:]
        # Each worker's job and task are its own: the earlier workers took theirs.
        assert lines[0] == "broker-a", (number, lines)
        assert lines[1:] == ["received task 1", "handled job 1"], (number, lines)
        assert rest.splitlines() == ["stopped"], (number, rest, errors[-2000:])
