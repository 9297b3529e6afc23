"""A naming node: answers "where is topic T?" from what broker replicas register.

Stateless in the sense that matters: it keeps only what brokers told it in the last few
heartbeat intervals, talks to no other naming node, and a restarted one is complete again
after one heartbeat interval. It runs alone (`dledger-mq naming`) or inside a node.
"""

from __future__ import annotations

import structlog
import trio

from dledger_mq.errors import BadRequest
from dledger_mq.naming.route_table import RouteTable
from dledger_mq.wire.naming import (
    NAMING_CODEC,
    GetRoutes,
    RegisterBroker,
    RegisterReply,
    RoutesReply,
)
from dledger_mq.wire.rpc import serve_requests
from dledger_mq.wire.websocket import WebSocket, serve_websockets

logger = structlog.get_logger()


class NamingService:
    def __init__(self, cluster_id: str, name: str, heartbeat_interval_ms: int = 1000) -> None:
        self.cluster_id = cluster_id
        self.name = name
        self.table = RouteTable(heartbeat_interval_ms)
        self.log = logger.bind(naming=name)
        #: Where it listens, once serving (the port the system chose when asked for 0).
        self.address = ""

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    async def handle(self, message: object) -> object:
        if isinstance(message, RegisterBroker):
            registration = message.registration
            known = (registration.group, registration.node_id) in {
                (r.group, r.node_id) for r in self.table.registrations(self.now_ms())
            }
            expires = self.table.register(registration, self.now_ms())
            if not known:
                self.log.info(
                    "broker_registered",
                    group=registration.group,
                    node=registration.node_id,
                    role=registration.role,
                    term=registration.term,
                    address=registration.address,
                )
            return RegisterReply(expires)
        if isinstance(message, GetRoutes):
            now = self.now_ms()
            routes = tuple(self.table.routes(message.topic, now))
            return RoutesReply(routes, tuple(self.table.groups(now)))
        raise BadRequest(f"{type(message).__name__} is not a naming request")

    async def handle_connection(self, websocket: WebSocket) -> None:
        await serve_requests(websocket, NAMING_CODEC, self.cluster_id, self.name, self.handle)


async def serve_naming(
    host: str,
    port: int,
    cluster_id: str = "local",
    name: str = "naming",
    heartbeat_interval_ms: int = 1000,
    *,
    task_status: trio.TaskStatus[NamingService] = trio.TASK_STATUS_IGNORED,
) -> None:
    service = NamingService(cluster_id, name, heartbeat_interval_ms)
    async with trio.open_nursery() as nursery:
        bound_port = await nursery.start(serve_websockets, service.handle_connection, host, port)
        service.address = f"{host}:{bound_port}"
        service.log.info("naming_started", address=service.address)
        task_status.started(service)
