"""The README's "Delays, retries and dead letters" commands as a user types them, against
`cluster up` on free ports: a delayed message comes after its delay, a consumer that nacks sees
it retried with a higher attempt, then it lies in the dead letters, and is sent back."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.node.cluster_up import cluster_up

ROOT = Path(__file__).parents[2]


def readme_commands(marker: str) -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(marker) :]
    block = after[after.index("```sh\n") + 6 :]
    return [shlex.split(line) for line in block[: block.index("```")].splitlines() if line]


async def test_the_readme_delay_retry_and_dead_letter_commands(tmp_path: Path) -> None:
    commands = readme_commands("## Delays, retries and dead letters")
    assert [c[:3] for c in commands] == [
        ["dledger-mq", "send", "orders"],
        ["dledger-mq", "group", "update"],
        ["dledger-mq", "consume", "orders"],
        ["dledger-mq", "group", "dlq"],
        ["dledger-mq", "group", "dlq"],
    ]
    with cluster_up(tmp_path) as up:
        await up.wait_for_leader()
        outputs = [await up.dledger(*command[1:]) for command in commands]
        # The redriven message is a new one in its topic, saying where it came from.
        back = json.loads(
            await up.dledger("consume", "orders", "--group", "billing", "--count", "1", "--json")
        )
    sent, updated, consumed, listed, redriven = outputs
    msg_id = sent.split()[0]
    assert re.fullmatch(r"broker-a:\d+:0 queue=\d+ delivered at \S+\n", sent)
    assert "max attempts 2, retry delays 1s" in updated
    assert consumed.splitlines() == [
        f"{msg_id} [] remind me",
        f"{msg_id} [] remind me (attempt 2)",
    ]
    assert f"{msg_id}  topic orders  attempts 2  error consume --fail" in listed
    assert f"{msg_id} -> orders as " in redriven
    assert "1 dead letters sent back" in redriven
    assert back["body"] == "remind me" and back["attempt"] == 1
    assert back["properties"]["DLQ_REDRIVEN_FROM"] == msg_id
