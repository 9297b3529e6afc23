"""Asking naming nodes for routes, and registering with them (brokers use the same client)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.naming import (
    NAMING_CODEC,
    BrokerRegistration,
    GetRoutes,
    GroupRoute,
    RegisterBroker,
    RegisterReply,
    RoutesReply,
    TopicRoute,
)
from dledger_mq.wire.rpc import RpcConnection, connect


class NamingConnection:
    def __init__(self, connection: RpcConnection) -> None:
        self.connection = connection

    async def routes(self, topic: str = "") -> tuple[TopicRoute, ...]:
        reply = await self.connection.call(GetRoutes(topic), RoutesReply)
        return reply.routes

    async def routes_and_groups(
        self, topic: str = ""
    ) -> tuple[tuple[TopicRoute, ...], tuple[GroupRoute, ...]]:
        """The topic's routes and every live group (where a new topic can be created)."""
        reply = await self.connection.call(GetRoutes(topic), RoutesReply)
        return reply.routes, reply.groups

    async def register(self, registration: BrokerRegistration) -> int:
        """Register (or heartbeat); returns how many ms the registration lives."""
        reply = await self.connection.call(RegisterBroker(registration), RegisterReply)
        return reply.expires_in_ms


@asynccontextmanager
async def connect_naming(
    address: str,
    cluster_id: str = "local",
    client_name: str = "client",
    credentials: Credentials | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[NamingConnection]:
    async with connect(
        address, NAMING_CODEC, cluster_id, client_name, credentials, ssl_context
    ) as connection:
        yield NamingConnection(connection)
