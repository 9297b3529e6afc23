"""One RpcConnection, many requests in flight: every reply reaches its own request, whoever
reads it, and a request given up on does not disturb the others."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dledger_mq.errors import InternalError, Unavailable
from dledger_mq.wire import rpc
from dledger_mq.wire.admin import ADMIN_CODEC, ProposeReply, ProposeRequest
from dledger_mq.wire.rpc import connect
from tests.wire.rpc_server import serve_admin_requests

DEADLINE_SECONDS = 10


async def answer_after_a_while(message: object) -> object:
    """Replies come back out of order: request n is answered after (10 - n) ms. A request for
    "bug" meets a bug in the handler."""
    assert isinstance(message, ProposeRequest)
    if message.data == b"bug":
        raise RuntimeError("a bug in a handler")
    number = int(message.data)
    await trio.sleep((10 - number % 10) / 1000)
    return ProposeReply(number)


async def start_server(nursery: trio.Nursery) -> str:
    return await serve_admin_requests(nursery, answer_after_a_while)


async def test_concurrent_requests_each_get_their_own_reply() -> None:
    replies: dict[int, int] = {}
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:

                async def ask(number: int) -> None:
                    reply = await connection.request(ProposeRequest(b"%d" % number))
                    replies[number] = reply.index

                async with trio.open_nursery() as requests:
                    for number in range(50):
                        requests.start_soon(ask, number)
                # A request given up on mid-way leaves the connection usable for the next.
                with trio.move_on_after(0.001):
                    await connection.request(ProposeRequest(b"0"))
                assert (await connection.request(ProposeRequest(b"7"))).index == 7
            nursery.cancel_scope.cancel()
    assert replies == {number: number for number in range(50)}


async def test_requests_on_a_closed_connection_raise_unavailable() -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:
                await connection.websocket.aclose()
                with pytest.raises(Unavailable):
                    await connection.request(ProposeRequest(b"1"))
            nursery.cancel_scope.cancel()


async def test_a_bug_in_a_handler_is_an_internal_error_and_the_connection_carries_on() -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:
                with pytest.raises(InternalError, match="ProposeRequest"):
                    await connection.request(ProposeRequest(b"bug"))
                assert (await connection.request(ProposeRequest(b"3"))).index == 3
            nursery.cancel_scope.cancel()


async def test_a_client_that_pipelines_without_end_meets_the_in_flight_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rpc, "MAX_REQUESTS_IN_FLIGHT", 4)
    release = trio.Event()
    running = 0
    most_running = 0

    async def wait_for_release(message: object) -> object:
        nonlocal running, most_running
        assert isinstance(message, ProposeRequest)
        running += 1
        most_running = max(most_running, running)
        await release.wait()
        running -= 1
        return ProposeReply(int(message.data))

    replies: list[int] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await serve_admin_requests(nursery, wait_for_release)
            async with connect(address, ADMIN_CODEC, "local", "test") as connection:

                async def ask(number: int) -> None:
                    reply = await connection.request(ProposeRequest(b"%d" % number))
                    replies.append(reply.index)

                async with trio.open_nursery() as requests:
                    for number in range(10):
                        requests.start_soon(ask, number)
                    await trio.testing.wait_all_tasks_blocked()
                    assert (running, most_running) == (4, 4)
                    release.set()
            nursery.cancel_scope.cancel()
    assert sorted(replies) == list(range(10))
    assert most_running == 4
