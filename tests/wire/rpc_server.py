"""An RPC server on a free port for tests: ``answer`` handles every request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from dledger_mq.wire.admin import ADMIN_CODEC
from dledger_mq.wire.rpc import serve_requests
from dledger_mq.wire.websocket import WebSocket, serve_websockets


async def serve_admin_requests(
    nursery: trio.Nursery, answer: Callable[[object], Awaitable[object]]
) -> str:
    """Start serving in ``nursery``; returns the address (HOST:PORT)."""

    async def handler(websocket: WebSocket) -> None:
        await serve_requests(
            websocket, ADMIN_CODEC, "local", "n1", lambda message, session: answer(message)
        )

    port = await nursery.start(serve_websockets, handler, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"
