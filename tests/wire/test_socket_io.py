"""Reads that skip the scheduler when data is there, yet wait when it is not and never starve
the other tasks; writes that take what the socket takes."""

from __future__ import annotations

import trio
import trio.testing

from dledger_mq.wire.socket_io import YIELD_EVERY_READS, SocketReader, write_now


async def test_reads_what_is_there_waits_for_what_is_not_and_sees_the_end() -> None:
    left, right = trio.socket.socketpair()
    reader = SocketReader(left)
    await right.send(b"already there")
    assert await reader.receive_some(100) == b"already there"
    async with trio.open_nursery() as nursery:

        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await right.send(b"later")

        nursery.start_soon(send_later)
        assert await reader.receive_some(100) == b"later"
    right.close()
    assert await reader.receive_some(100) == b""
    left.close()


async def test_a_reader_that_never_waits_still_lets_other_tasks_run() -> None:
    left, right = trio.socket.socketpair()
    reader = SocketReader(left)
    reads = 64
    assert reads >= 3 * YIELD_EVERY_READS
    await right.send(b"x" * reads)
    others_ran = 0

    async def other() -> None:
        nonlocal others_ran
        while True:
            others_ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        ran_before = others_ran
        for _ in range(reads):
            assert await reader.receive_some(1) == b"x"
        assert others_ran - ran_before >= 2
        nursery.cancel_scope.cancel()
    left.close()
    right.close()


async def test_write_now_takes_what_fits_and_zero_when_full() -> None:
    left, right = trio.socket.socketpair()
    chunk = b"y" * (1 << 16)
    written = 0
    while (sent := write_now(left, chunk)) > 0:
        written += sent
    assert written > 0
    assert write_now(left, chunk) == 0
    received = 0
    while received < written:
        received += len(await right.recv(1 << 20))
    assert received == written
    left.close()
    right.close()
