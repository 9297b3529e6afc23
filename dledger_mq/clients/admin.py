"""An operator's client: node status, raw proposals and leadership transfer, over WebSocket.

Speaks only the wire format. No timeout arguments: callers bound calls with Trio cancel scopes.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from dledger_mq.errors import (
    BadRequest,
    DledgerError,
    HandshakeRefused,
    LeadershipTransferInProgress,
    NotLeader,
    ProtocolError,
    Unavailable,
)
from dledger_mq.wire.admin import (
    ADMIN_CODEC,
    ProposeBatchReply,
    ProposeBatchRequest,
    ProposeReply,
    ProposeRequest,
    StatusReply,
    StatusRequest,
    TransferLeaderReply,
    TransferLeaderRequest,
)
from dledger_mq.wire.handshake import PROTOCOL_VERSION, ErrorReply, Hello, Welcome, check_peer

_ERRORS: dict[str, type[DledgerError]] = {
    "BadRequest": BadRequest,
    "Unavailable": Unavailable,
    "ProtocolError": ProtocolError,
    "HandshakeRefused": HandshakeRefused,
}


def raise_error_reply(reply: ErrorReply) -> None:
    if reply.code in ("NotLeader", "LeadershipTransferInProgress"):
        not_leader = NotLeader(reply.leader_id, reply.message)
        if reply.code == "LeadershipTransferInProgress" and reply.leader_id is not None:
            not_leader = LeadershipTransferInProgress(reply.leader_id)
        not_leader.leader_address = reply.leader_address  # type: ignore[attr-defined]
        raise not_leader
    kind = _ERRORS.get(reply.code, DledgerError)
    error = kind(f"{reply.code}: {reply.message}")
    error.retriable = reply.retriable
    raise error


class AdminConnection:
    """Many requests may be in flight on one connection; replies are matched by request id."""

    def __init__(self, websocket: WebSocketConnection, node_id: str) -> None:
        self.websocket = websocket
        self.node_id = node_id
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[Any]] = {}

    async def _receive_loop(self) -> None:
        try:
            while True:
                payload = await self.websocket.get_message()
                decoded = ADMIN_CODEC.decode(payload)  # type: ignore[arg-type]
                waiting = self._waiting.pop(decoded.request_id, None)
                if waiting is not None:
                    waiting.send_nowait(decoded.message)
        except ConnectionClosed:
            pass
        finally:
            for waiting in self._waiting.values():
                waiting.close()

    async def request(self, message: object) -> Any:
        request_id = next(self._request_ids)
        send, receive = trio.open_memory_channel[Any](1)
        self._waiting[request_id] = send
        try:
            await self.websocket.send_message(ADMIN_CODEC.encode(message, request_id))
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                raise Unavailable(f"connection to {self.node_id} closed") from None
        except ConnectionClosed:
            raise Unavailable(f"connection to {self.node_id} closed") from None
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(reply, ErrorReply):
            raise_error_reply(reply)
        return reply

    async def status(self) -> StatusReply:
        reply: StatusReply = await self.request(StatusRequest())
        return reply

    async def propose(self, data: bytes) -> int:
        reply: ProposeReply = await self.request(ProposeRequest(data))
        return reply.index

    async def propose_batch(self, entries: list[bytes]) -> int:
        """Propose many entries at once; returns the index of the first."""
        reply: ProposeBatchReply = await self.request(ProposeBatchRequest(tuple(entries)))
        return reply.first_index

    async def transfer_leader(self, target: str) -> str:
        reply: TransferLeaderReply = await self.request(TransferLeaderRequest(target))
        return reply.leader


@asynccontextmanager
async def connect_admin(address: str, cluster_id: str = "local") -> AsyncIterator[AdminConnection]:
    """Connect to one node's client address (HOST:PORT) and shake hands.

    Errors raised in the ``async with`` body reach the caller as themselves, not wrapped in the
    exception group of the nursery that runs the connection's receive loop.
    """
    try:
        async with _connect_admin(address, cluster_id) as connection:
            yield connection
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@asynccontextmanager
async def _connect_admin(address: str, cluster_id: str) -> AsyncIterator[AdminConnection]:
    try:
        async with open_websocket_url(f"ws://{address}/") as websocket:
            hello = Hello(cluster_id, "admin-client", PROTOCOL_VERSION)
            await websocket.send_message(ADMIN_CODEC.encode(hello))
            reply = ADMIN_CODEC.decode(await websocket.get_message()).message  # type: ignore[arg-type]
            if isinstance(reply, ErrorReply):
                raise HandshakeRefused(f"{address} refused us: {reply.message}")
            if not isinstance(reply, Welcome):
                raise ProtocolError(f"{address} answered the handshake with {reply!r}")
            check_peer(reply, cluster_id, what="node")
            connection = AdminConnection(websocket, reply.node_id)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection._receive_loop)
                try:
                    yield connection
                finally:
                    nursery.cancel_scope.cancel()
    except (OSError, HandshakeError, ConnectionClosed) as error:
        raise Unavailable(f"cannot reach node at {address}: {error}") from None
