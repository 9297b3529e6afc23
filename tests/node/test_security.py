"""Issue 15's attacks on a node's client port and on naming, each refused or bounded with no
change of state: a real node in this process, on free ports (the peer-link attack is
``tests/raft/test_peer_auth.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.clients.naming import connect_naming
from dledger_mq.clients.producer import Producer
from dledger_mq.errors import (
    AuthenticationFailed,
    AuthenticationRequired,
    BadRequest,
    HandshakeRefused,
    PermissionDenied,
    TooManyConnections,
    TopicLimitReached,
)
from dledger_mq.naming.server import serve_naming
from dledger_mq.node.config import parse_config
from dledger_mq.node.data_dir import initialise_log
from dledger_mq.node.local_cluster import cluster_on_free_ports
from dledger_mq.node.server import Node, run_node
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import ADMIN_CODEC, ProposeReply, ProposeRequest, RuleInfo
from dledger_mq.wire.client_auth import Credentials, new_secret_key, node_credentials
from dledger_mq.wire.handshake import PROTOCOL_VERSION, Hello
from dledger_mq.wire.naming import BrokerRegistration, RegisteredTopic
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.websocket import MESSAGE_TOO_BIG, WebSocketClosed, connect_websocket

DEADLINE_SECONDS = 20


@asynccontextmanager
async def one_node(
    tmp_path: Path, with_naming: bool = False, **settings: Any
) -> AsyncIterator[Node]:
    """A one-member group (it elects itself) with ``settings`` in its ``node.toml``, and a
    naming node inside it it registers with if ``with_naming``."""
    members, naming = cluster_on_free_ports(1, with_naming)
    table = {node_id: {"peer": m.peer, "client": m.client} for node_id, m in members.items()}
    if with_naming:
        settings = {"naming_listen": naming["n1"], "naming": [naming["n1"]], **settings}
    config = parse_config(
        {"node_id": "n1", "members": table, "data_dir": str(tmp_path / "n1"), **settings}
    )
    initialise_log(config)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(
            lambda task_status: run_node(
                config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        with trio.fail_after(DEADLINE_SECONDS):
            while not node.replica.is_leader or not node.broker.settings_current():
                await trio.sleep(0.01)
        yield node
        stop.set()


def address_of(node: Node) -> str:
    return node.config.me.client


async def raw_websocket(address: str) -> Any:
    host_port = Address.parse(address)
    return await connect_websocket(host_port.host, host_port.port)


async def test_raw_proposals_are_not_part_of_the_client_api(tmp_path: Path) -> None:
    """A forged SendBatch stamped 2^63-1 once pinned the store clock: raw bytes no longer reach
    the log from a client."""
    async with one_node(tmp_path) as node:
        before = node.replica.core.status().last_index
        async with connect_admin(address_of(node), credentials=None) as admin:
            with pytest.raises(BadRequest, match="ProposeRequest is not a request"):
                await admin.connection.call(ProposeRequest(b"\x93\x01\x01"), ProposeReply)
        assert node.replica.core.status().last_index == before
        assert node.state.last_store_timestamp_ms == 0


async def test_a_client_of_another_cluster_is_not_told_this_one(tmp_path: Path) -> None:
    async with one_node(tmp_path, cluster_id="secret-name") as node:
        with pytest.raises(HandshakeRefused) as refused:
            async with connect(address_of(node), ADMIN_CODEC, "guess", "client"):
                pass
        assert "secret-name" not in str(refused.value)


async def test_users_permissions_and_signing_in(tmp_path: Path) -> None:
    admin_keys = Credentials("admin", new_secret_key())
    publisher_keys = Credentials("pub", new_secret_key())
    async with one_node(tmp_path) as node:
        # Protected mode: this machine may add the first user without signing in.
        async with connect(address_of(node), ADMIN_CODEC, "local", "setup") as anonymous:
            admin = AdminConnection(anonymous)
            await admin.add_user("admin", admin_keys.secret_key, (RuleInfo("cluster", "admin"),))
        with pytest.raises(AuthenticationRequired, match="has users"):
            async with connect(address_of(node), ADMIN_CODEC, "local", "anonymous"):
                pass
        async with connect_admin(address_of(node), credentials=admin_keys) as admin:
            await admin.add_user("pub", publisher_keys.secret_key)
            await admin.grant("pub", RuleInfo("topic:orders*", "publish"))
            await admin.grant("pub", RuleInfo("topic:orders*", "create"))
            assert (await admin.who_am_i()).access_key == "admin"
        async with connect_admin(address_of(node), credentials=publisher_keys) as publisher:
            with pytest.raises(PermissionDenied, match="may not admin on cluster"):
                await publisher.add_user("mallory", new_secret_key())
            with pytest.raises(PermissionDenied, match="may not admin on topic:orders"):
                await publisher.create_topic("orders", 1)
        assert node.state.topic("orders") is None
        assert [user.access_key for user in node.state.users()] == ["admin", "pub"]
        wrong = Credentials("pub", new_secret_key())
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            async with connect_admin(address_of(node), credentials=wrong):
                pass
        unknown = Credentials("nobody", new_secret_key())
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            async with connect_admin(address_of(node), credentials=unknown):
                pass
        # A user removed while connected is refused from its next request.
        async with connect_admin(address_of(node), credentials=publisher_keys) as publisher:
            async with connect_admin(address_of(node), credentials=admin_keys) as admin:
                await admin.remove_user("pub")
            with pytest.raises(AuthenticationRequired, match="no longer exists"):
                await publisher.status()


async def test_a_client_that_never_says_hello_is_dropped(tmp_path: Path) -> None:
    async with one_node(tmp_path, client_hello_timeout_ms=200) as node:
        websocket = await raw_websocket(address_of(node))
        with trio.fail_after(DEADLINE_SECONDS), pytest.raises(WebSocketClosed) as closed:
            await websocket.get_message()
        assert "no handshake in time" in str(closed.value)


async def test_bytes_before_the_handshake_are_bounded(tmp_path: Path) -> None:
    """60 MiB of an unfinished message before Hello were once held for an hour."""
    async with one_node(tmp_path, max_pre_auth_bytes=4096) as node:
        websocket = await raw_websocket(address_of(node))
        with trio.fail_after(DEADLINE_SECONDS):
            with pytest.raises(WebSocketClosed) as closed:
                await websocket.send_message(b"x" * (256 << 10))
                await websocket.get_message()
        assert closed.value.code in (MESSAGE_TOO_BIG, 1006)


async def until_no_connection(node: Node) -> None:
    with trio.fail_after(DEADLINE_SECONDS):
        while node.connection_limits.open:
            await trio.sleep(0.01)


async def test_an_idle_client_is_pinged_then_dropped_and_a_trickle_does_not_count(
    tmp_path: Path,
) -> None:
    async with one_node(tmp_path, client_idle_timeout_ms=300) as node:
        # Silent after the handshake, reading nothing (a reader would answer the ping).
        async with connect(address_of(node), ADMIN_CODEC, "local", "idle"):
            assert node.connection_limits.open == 1
            await until_no_connection(node)
        # A byte of an unfinished message now and then is silence too.
        host_port = Address.parse(address_of(node))
        stream = await trio.open_tcp_stream(host_port.host, host_port.port)
        protocol = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(protocol.send(Request(host="x", target="/")))
        protocol.receive_data(await stream.receive_some(4096))
        assert any(isinstance(event, AcceptConnection) for event in protocol.events())
        hello = ADMIN_CODEC.encode(Hello("local", "trickle", PROTOCOL_VERSION))
        await stream.send_all(protocol.send(BytesMessage(data=hello)))

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:
                    await stream.send_all(
                        protocol.send(BytesMessage(data=b"x", message_finished=False))
                    )
                    await trio.sleep(0.03)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(DEADLINE_SECONDS):
                while not node.connection_limits.open:
                    await trio.sleep(0.01)
            await until_no_connection(node)
            nursery.cancel_scope.cancel()
        await stream.aclose()


async def test_connections_from_one_address_are_capped(tmp_path: Path) -> None:
    async with one_node(tmp_path, max_connections_per_address=2) as node:
        async with (
            connect_admin(address_of(node), credentials=None) as first,
            connect_admin(address_of(node), credentials=None),
        ):
            with pytest.raises(TooManyConnections, match="2 connections from 127.0.0.1"):
                async with connect_admin(address_of(node), credentials=None):
                    pass
            await first.status()  # the ones let in go on
        await until_no_connection(node)
        async with connect_admin(address_of(node), credentials=None) as again:
            await again.status()  # a closed one frees its place


async def test_sends_cannot_create_topics_without_end(tmp_path: Path) -> None:
    async with one_node(tmp_path, max_topics=3) as node:
        async with connect_admin(address_of(node), credentials=None) as admin:
            for name in ("a", "b", "c"):
                await admin.create_topic(name, 1)
            with pytest.raises(TopicLimitReached):
                await admin.create_topic("d", 1)
        assert len(node.state.topics()) == 3


async def test_only_members_register_with_naming() -> None:
    secret = bytes(range(32))
    forged = BrokerRegistration(
        "broker-a", "n1", "leader", 2**63 - 1, "6.6.6.6:443", (RegisteredTopic("t", 4),), 1
    )
    async with trio.open_nursery() as nursery:
        service = await nursery.start(serve_naming, "127.0.0.1", 0, "local", "naming", 1000, secret)
        address = service.address
        async with connect_naming(address) as stranger:
            with pytest.raises(AuthenticationRequired):
                await stranger.register(forged)
            assert await stranger.routes() == ()  # anyone may still ask for routes
        wrong = Credentials("node:n1", new_secret_key())
        with pytest.raises(AuthenticationFailed):
            async with connect_naming(address, credentials=wrong):
                pass
        async with connect_naming(address, credentials=node_credentials(secret, "n2")) as n2:
            with pytest.raises(PermissionDenied, match="register on node:n1"):
                await n2.register(forged)  # a member may not speak for another
        assert service.table.registrations(service.now_ms()) == []
        async with connect_naming(address, credentials=node_credentials(secret, "n1")) as n1:
            await n1.register(forged)
        assert [r.node_id for r in service.table.registrations(service.now_ms())] == ["n1"]
        nursery.cancel_scope.cancel()


async def test_without_a_secret_naming_takes_registrations_from_this_machine_only() -> None:
    from dledger_mq.naming.server import NamingAccess
    from dledger_mq.wire.rpc import Session

    access = NamingAccess(None)
    access.check_registration(Session("127.0.0.1"), "n1")
    with pytest.raises(PermissionDenied):
        access.check_registration(Session("192.0.2.7"), "n1")


async def test_an_sdk_client_dropped_for_idleness_carries_on(tmp_path: Path) -> None:
    """A producer silent longer than the idle timeout loses its connection; its next send
    opens another, with no error for the application."""
    async with one_node(tmp_path, with_naming=True, client_idle_timeout_ms=300) as node:
        async with Producer(naming=node.config.naming) as producer:
            first = await producer.send("orders", b"before")
            await until_no_connection(node)
            second = await producer.send("orders", b"after")
        assert second.msg_id != first.msg_id and not second.duplicate
