"""A client's held connections outlive the cancellation of the code around the client, so that
its last words (a consumer's final offset commit) still go out; the client's close ends them."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dledger_mq.clients.routing import Connections
from dledger_mq.errors import Unavailable
from dledger_mq.wire.admin import ProposeReply, ProposeRequest
from tests.wire.rpc_server import serve_admin_requests

DEADLINE_SECONDS = 10


async def test_shielded_last_words_go_out_after_the_scope_around_is_cancelled() -> None:
    release = trio.Event()

    async def answer_when_released(message: object) -> object:
        assert isinstance(message, ProposeRequest)
        await release.wait()
        return ProposeReply(int(message.data))

    replies: list[int] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as server:
            address = await serve_admin_requests(server, answer_when_released)
            with trio.CancelScope() as around_the_client:
                async with trio.open_nursery() as client:
                    connections = Connections(client, "local", "test")
                    connection = await connections.get(address)
                    around_the_client.cancel()
                    with trio.CancelScope(shield=True):
                        async with trio.open_nursery() as last_words:

                            async def ask() -> None:
                                reply = await connection.request(ProposeRequest(b"7"))
                                replies.append(reply.index)

                            last_words.start_soon(ask)
                            # Every task that the cancellation reaches has seen it by now.
                            await trio.testing.wait_all_tasks_blocked()
                            release.set()
                    connections.close()
            assert around_the_client.cancelled_caught
            server.cancel_scope.cancel()
    assert replies == [7]


async def test_racing_gets_keep_one_connection_and_close_ends_every_held_one() -> None:
    async def echo_number(message: object) -> object:
        assert isinstance(message, ProposeRequest)
        return ProposeReply(int(message.data))

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as server:
            address = await serve_admin_requests(server, echo_number)
            with trio.CancelScope() as around_the_client:
                async with trio.open_nursery() as client:
                    connections = Connections(client, "local", "test")
                    got = []

                    async def get() -> None:
                        got.append(await connections.get(address))

                    async with trio.open_nursery() as racers:
                        for _ in range(3):
                            racers.start_soon(get)
                    assert len({id(connection) for connection in got}) == 1
                    await trio.testing.wait_all_tasks_blocked()
                    # The losers' connections are closed: one task holds one connection.
                    assert len(client.child_tasks) == 1
                    around_the_client.cancel()
                    # Shielded from that cancellation; only close() ends it, and then the
                    # client's nursery can finish.
                    with trio.CancelScope(shield=True):
                        await trio.testing.wait_all_tasks_blocked()
                        assert len(client.child_tasks) == 1
                        connections.close()
                        with pytest.raises(Unavailable):
                            await connections.get(address)
            server.cancel_scope.cancel()
