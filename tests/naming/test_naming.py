"""The naming node: routes expire after three missed heartbeats, a new leader wins at once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
import trio.testing

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import BadRequest, HandshakeRefused
from dledger_mq.naming.route_table import RouteTable
from dledger_mq.naming.server import serve_naming
from dledger_mq.wire.naming import BrokerRegistration, RegisteredTopic, RegisterReply


def replica(
    node: str,
    role: str,
    term: int,
    topics: tuple[str, ...] = ("orders",),
    group: str = "broker-a",
    idempotence_window: int = 1024,
) -> BrokerRegistration:
    return BrokerRegistration(
        group=group,
        node_id=node,
        role=role,
        term=term,
        address=f"127.0.0.1:{9000 + int(node[1:])}",
        topics=tuple(RegisteredTopic(name, 4) for name in topics),
        idempotence_window=idempotence_window,
    )


def test_a_route_lives_three_heartbeat_intervals() -> None:
    table = RouteTable(heartbeat_interval_ms=100)
    assert table.register(replica("n1", "leader", 1), now_ms=0) == 300
    assert [r.leader_id for r in table.routes("orders", now_ms=299)] == ["n1"]
    assert table.routes("orders", now_ms=300) == []


def test_a_heartbeat_keeps_the_route_alive() -> None:
    table = RouteTable(heartbeat_interval_ms=100)
    for now in range(0, 1000, 100):
        table.register(replica("n1", "leader", 1), now_ms=now)
    assert [r.leader_id for r in table.routes("orders", now_ms=1100)] == ["n1"]


def test_a_new_leader_replaces_the_old_one_at_once() -> None:
    table = RouteTable(heartbeat_interval_ms=1000)
    table.register(replica("n1", "leader", 3), now_ms=0)
    table.register(replica("n2", "follower", 3), now_ms=0)
    table.register(replica("n2", "leader", 4), now_ms=10)
    [route] = table.routes("orders", now_ms=20)
    assert (route.leader_id, route.leader_address, route.term) == ("n2", "127.0.0.1:9002", 4)
    assert route.replicas == ("127.0.0.1:9001", "127.0.0.1:9002")


def test_routes_carry_the_leaders_idempotence_window_or_the_smallest_without_one() -> None:
    table = RouteTable()
    table.register(replica("n1", "leader", 2, idempotence_window=2048), now_ms=0)
    table.register(replica("n2", "follower", 2, idempotence_window=512), now_ms=0)
    [route] = table.routes("orders", now_ms=1)
    [group] = table.groups(now_ms=1)
    assert route.idempotence_window == group.idempotence_window == 2048
    table.register(replica("n1", "follower", 3, idempotence_window=2048), now_ms=2)
    [route] = table.routes("orders", now_ms=3)
    assert route.idempotence_window == 512


def test_a_group_without_a_leader_still_has_a_route_without_one() -> None:
    table = RouteTable()
    table.register(replica("n1", "follower", 2), now_ms=0)
    [route] = table.routes("orders", now_ms=1)
    assert route.leader_id is None and route.leader_address is None
    assert route.replicas == ("127.0.0.1:9001",)


def test_routes_of_every_topic_and_of_an_unknown_topic() -> None:
    table = RouteTable()
    table.register(replica("n1", "leader", 1, ("orders", "refunds")), now_ms=0)
    table.register(replica("n4", "leader", 1, ("audit",), group="broker-b"), now_ms=0)
    assert sorted((r.topic, r.group) for r in table.routes("", now_ms=1)) == [
        ("audit", "broker-b"),
        ("orders", "broker-a"),
        ("refunds", "broker-a"),
    ]
    assert table.routes("missing", now_ms=1) == []


async def test_the_server_answers_routes_and_forgets_silent_brokers(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        service = await nursery.start(serve_naming, "127.0.0.1", 0, "local", "naming-1", 50)
        async with connect_naming(service.address) as naming:
            assert await naming.register(replica("n1", "leader", 1)) == 150
            [route] = await naming.routes("orders")
            assert route.leader_address == "127.0.0.1:9001"
            # Virtual time, moved by hand: three heartbeat intervals pass in silence. (An
            # autojump clock could also jump while a request is on the wire.)
            mock_clock.jump(0.2)
            assert await naming.routes("orders") == ()
        nursery.cancel_scope.cancel()


async def test_the_server_refuses_another_cluster_and_bad_requests() -> None:
    async with trio.open_nursery() as nursery:
        service = await nursery.start(serve_naming, "127.0.0.1", 0, "local", "naming-1", 50)
        with pytest.raises(HandshakeRefused, match="cluster 'other'"):
            async with connect_naming(service.address, cluster_id="other"):
                pass
        async with connect_naming(service.address) as naming:
            with pytest.raises(BadRequest, match="RegisterReply is not a naming request"):
                await naming.connection.request(RegisterReply(5))
            # The connection survives a refused request.
            assert await naming.routes() == ()
        nursery.cancel_scope.cancel()


def test_the_naming_command_refuses_a_bad_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dledger_mq", "naming", "--listen", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "expected HOST:PORT" in result.stderr
