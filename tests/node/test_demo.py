"""`dledger-mq demo failover` end to end, shortened: a leader killed, nothing lost."""

from __future__ import annotations

from pathlib import Path

from dledger_mq.demo import run_failover_demo


async def test_the_failover_demo_elects_a_new_leader_and_loses_nothing(tmp_path: Path) -> None:
    lines: list[str] = []

    result = await run_failover_demo(
        lines.append, warmup_s=2, after_kill_s=2, rate=100, directory=tmp_path
    )

    assert result.new_leader != result.killed
    assert result.counts.acknowledged > 100
    assert result.counts.lost == 0
    assert result.counts.consumed_values >= result.counts.acked_values
    assert any(f"SIGKILL {result.killed}" in line for line in lines)
    assert any("caught up" in line for line in lines)
