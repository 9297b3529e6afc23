"""A broadcasting consumer's progress file: several readers save it at once (each on its own
heartbeat, and once more on leaving) and every save must land whole."""

from __future__ import annotations

from pathlib import Path

import trio

from dledger_mq.clients.consumer import Consumer, read_broadcast_offsets


async def test_saves_at_once_each_land_whole_and_the_last_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "progress" / "g.json"
    consumer = Consumer("127.0.0.1:1", group="g", topic="t", broadcasting=True, offsets_path=path)

    async def save(queue_id: int) -> None:
        consumer.save_offset("t", "broker-a", queue_id, queue_id * 10)
        await consumer._save_broadcast_offsets()

    async with trio.open_nursery() as nursery:
        for queue_id in range(32):
            nursery.start_soon(save, queue_id)
    assert read_broadcast_offsets(path) == {("t", "broker-a", q): q * 10 for q in range(32)}
    assert [p.name for p in path.parent.iterdir()] == ["g.json"]
