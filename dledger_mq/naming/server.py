"""A naming node: answers "where is topic T?" from what broker replicas register.

Stateless in the sense that matters: it keeps only what brokers told it in the last few
heartbeat intervals, talks to no other naming node, and a restarted one is complete again
after one heartbeat interval. It runs alone (`dledger-mq naming`) or inside a node.
"""

from __future__ import annotations

import functools
import ssl

import structlog
import trio

from dledger_mq.errors import AuthenticationRequired, BadRequest, PermissionDenied
from dledger_mq.naming.route_table import RouteTable
from dledger_mq.wire.client_auth import NODE_IDENTITY_PREFIX, node_secret_key, stored_key
from dledger_mq.wire.naming import (
    NAMING_CODEC,
    GetRoutes,
    RegisterBroker,
    RegisterReply,
    RoutesReply,
)
from dledger_mq.wire.rpc import Session, serve_requests
from dledger_mq.wire.websocket import WebSocket, serve_websockets

logger = structlog.get_logger()


class NamingAccess:
    """Anyone may ask for routes (they name addresses, which clients need before they can sign
    in anywhere); only a member may register, signed in as ``node:<its id>`` with the cluster
    secret, or, with no secret configured, from this machine."""

    def __init__(self, cluster_secret: bytes | None) -> None:
        self.cluster_secret = cluster_secret

    def stored_key(self, access_key: str) -> bytes | None:
        if self.cluster_secret is None or not access_key.startswith(NODE_IDENTITY_PREFIX):
            return None
        node_id = access_key.removeprefix(NODE_IDENTITY_PREFIX)
        return stored_key(node_secret_key(self.cluster_secret, node_id))

    def admit(self, session: Session) -> None:
        return None

    def check_registration(self, session: Session, node_id: str) -> None:
        if self.cluster_secret is None:
            if not session.loopback:
                raise PermissionDenied("anonymous", "register", f"node:{node_id}")
            return
        if session.user is None:
            raise AuthenticationRequired("registering needs the cluster secret")
        if session.user != NODE_IDENTITY_PREFIX + node_id:
            raise PermissionDenied(session.user, "register", f"node:{node_id}")


class NamingService:
    def __init__(
        self,
        cluster_id: str,
        name: str,
        heartbeat_interval_ms: int = 1000,
        cluster_secret: bytes | None = None,
    ) -> None:
        self.access = NamingAccess(cluster_secret)
        self.cluster_id = cluster_id
        self.name = name
        self.table = RouteTable(heartbeat_interval_ms)
        self.log = logger.bind(naming=name)
        #: Where it listens, once serving (the port the system chose when asked for 0).
        self.address = ""

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    async def handle(self, message: object, session: Session) -> object:
        if isinstance(message, RegisterBroker):
            registration = message.registration
            self.access.check_registration(session, registration.node_id)
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
        await serve_requests(
            websocket, NAMING_CODEC, self.cluster_id, self.name, self.handle, access=self.access
        )


async def serve_naming(
    host: str,
    port: int,
    cluster_id: str = "local",
    name: str = "naming",
    heartbeat_interval_ms: int = 1000,
    cluster_secret: bytes | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[NamingService] = trio.TASK_STATUS_IGNORED,
) -> None:
    service = NamingService(cluster_id, name, heartbeat_interval_ms, cluster_secret)
    async with trio.open_nursery() as nursery:
        bound_port = await nursery.start(
            functools.partial(serve_websockets, ssl_context=ssl_context),
            service.handle_connection,
            host,
            port,
        )
        service.address = f"{host}:{bound_port}"
        service.log.info("naming_started", address=service.address)
        task_status.started(service)
