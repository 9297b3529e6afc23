"""The dashboard keeps the cluster's rules (docs/security.md; docs/operations.md, "Dashboard"):
protected mode lets a viewer on this machine look without signing in only while no user
exists; then every viewer signs in as a cluster user; admin actions need an admin, message
queries and actions run as the viewer; a page of another site can neither sign in nor open
the live connection. The dashboard runs as a real process on a free port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.dashboard.app import same_origin
from dledger_mq.dashboard.auth import COOKIE_NAME, Sessions, is_loopback
from dledger_mq.dashboard.collector import Target
from dledger_mq.node.local_cluster import free_ports
from dledger_mq.wire.admin import ADMIN_CODEC, RuleInfo
from dledger_mq.wire.broker import OutgoingMessage
from dledger_mq.wire.client_auth import (
    ACCESS_KEY_ENVIRONMENT_VARIABLE,
    SECRET_KEY_ENVIRONMENT_VARIABLE,
    new_secret_key,
)
from dledger_mq.wire.rpc import connect
from tests.node.cluster_fixture import DEADLINE_SECONDS, ProcessCluster
from tests.node.cluster_up import dledger_mq_command

Answer = tuple[int, dict[str, str], str]


def _request(
    port: int,
    method: str,
    path: str,
    cookie: str = "",
    body: str = "",
    origin: str = "",
    forwarded_for: str = "",
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    if cookie:
        headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
    if origin:
        headers["Origin"] = origin
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


async def request(port: int, method: str, path: str, **options: str) -> Answer:
    return await trio.to_thread.run_sync(lambda: _request(port, method, path, **options))


def session_cookie(headers: dict[str, str]) -> str:
    cookie = headers.get("set-cookie", "")
    assert cookie.startswith(f"{COOKIE_NAME}="), headers
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    return cookie.split(";", 1)[0].split("=", 1)[1]


async def sign_in(port: int, access_key: str, secret_key: str) -> Answer:
    form = urllib.parse.urlencode({"access_key": access_key, "secret_key": secret_key})
    return await request(port, "POST", "/login", body=form, origin=f"http://127.0.0.1:{port}")


@asynccontextmanager
async def live(port: int, cookie: str) -> AsyncIterator[object]:
    headers = [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())]
    async with open_websocket_url(
        f"ws://127.0.0.1:{port}/live", extra_headers=headers, max_message_size=1 << 24
    ) as websocket:
        yield websocket


async def receive(websocket: object, kind: str) -> dict[str, object]:
    """The next message of ``kind`` (samples arrive between replies)."""
    with trio.fail_after(DEADLINE_SECONDS):
        while True:
            message = json.loads(await websocket.get_message())  # type: ignore[attr-defined]
            if message["type"] == kind:
                return dict(message)


def target_address(cluster: ProcessCluster, node_id: str) -> str:
    return dict(cluster.endpoints())[node_id]


@asynccontextmanager
async def dashboard(cluster: ProcessCluster, tmp_path: Path, own_secret: str) -> AsyncIterator[int]:
    """`dledger-mq dashboard` on a free port, signing in as ``root`` (made later)."""
    [port] = free_ports(1)
    environment = {
        **os.environ,
        ACCESS_KEY_ENVIRONMENT_VARIABLE: "root",
        SECRET_KEY_ENVIRONMENT_VARIABLE: own_secret,
    }
    endpoints = ",".join(address for _, address in cluster.endpoints())
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen(
            [
                *dledger_mq_command(),
                "dashboard",
                "--endpoints",
                endpoints,
                "--listen",
                f"127.0.0.1:{port}",
                "--root",
                str(tmp_path / "no-local-cluster"),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    try:
        with trio.fail_after(DEADLINE_SECONDS):
            while "dashboard http://" not in (tmp_path / "dashboard.log").read_text():
                assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
                await trio.sleep(0.05)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def test_protected_mode_then_users_sign_in_and_only_an_admin_acts(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    leader = await cluster.wait_for_leader()
    root_secret, viewer_secret = new_secret_key(), new_secret_key()
    async with dashboard(cluster, tmp_path, root_secret) as port:
        # No user exists: a viewer on this machine looks without signing in, as an admin.
        status, headers, _ = await request(port, "GET", "/")
        assert status == 200
        anonymous = session_cookie(headers)
        # Through a proxy on this machine, the viewer is elsewhere.
        status, headers, _ = await request(port, "GET", "/", forwarded_for="203.0.113.9")
        assert (status, headers["location"]) == (303, "/login")
        async with live(port, anonymous) as websocket:
            hello = await receive(websocket, "hello")
            assert hello["admin"] is True and "protected mode" in str(hello["viewer"])

        async with connect(leader.address, ADMIN_CODEC, "local", "test", None) as connection:
            await AdminConnection(connection).add_user(
                "root", root_secret, (RuleInfo("cluster", "admin"),)
            )
        root = ("root", root_secret)
        async with connect_admin(leader.address, credentials=root) as admin:
            await admin.add_user("viewer", viewer_secret, (RuleInfo("topic:*", "subscribe"),))

        # A user exists: the anonymous session is over, for the page and its live connection.
        with trio.fail_after(DEADLINE_SECONDS):
            while (await request(port, "GET", "/", cookie=anonymous))[0] != 303:
                await trio.sleep(0.1)
        assert (await request(port, "GET", "/"))[1]["location"] == "/login"
        async with live(port, anonymous) as websocket:
            with pytest.raises(ConnectionClosed) as closed:
                await receive(websocket, "hello")
            assert closed.value.reason.code == 4401

        # Signing in: a wrong key and an unknown user get the same answer.
        for access_key, secret in (("viewer", root_secret), ("nobody", viewer_secret)):
            status, headers, _ = await sign_in(port, access_key, secret)
            assert status == 303
            assert headers["location"] == "/login?failed=authentication%20failed"
            assert "set-cookie" not in headers

        # An ordinary user sees the cluster, and may not act.
        status, headers, _ = await sign_in(port, "viewer", viewer_secret)
        assert (status, headers["location"]) == (303, "/")
        async with live(port, session_cookie(headers)) as websocket:
            hello = await receive(websocket, "hello")
            assert (hello["viewer"], hello["admin"]) == ("viewer", False)
            with trio.fail_after(DEADLINE_SECONDS):
                while True:
                    sample = await receive(websocket, "sample")
                    groups = sample.get("groups") or []
                    assert isinstance(groups, list)
                    if groups and groups[0]["leader"] is not None:
                        break
            await websocket.send_message(  # type: ignore[attr-defined]
                json.dumps(
                    {"id": 7, "action": "transfer_leader", "group": "broker-a", "target": "n2"}
                )
            )
            reply = await receive(websocket, "reply")
            assert reply["id"] == 7 and reply["ok"] is False
            assert "viewer" in str(reply["error"]) and "admin" in str(reply["error"])
            # ... but finds messages, as itself (subscribe on every topic), by key, id and time.
            async with connect_admin(leader.address, credentials=root) as admin:
                await admin.create_topic("audit", 1)
                receipt = await admin.send(OutgoingMessage("audit", b"found me", keys=("k-1",)))
            queries = (
                {"kind": "by_key", "topic": "audit", "key": "k-1"},
                {"kind": "by_id", "message_id": receipt.msg_id},
                {"kind": "by_time", "topic": "audit", "queue_id": 0, "from_time_ms": 0},
            )
            for number, query in enumerate(queries, start=20):
                await websocket.send_message(  # type: ignore[attr-defined]
                    json.dumps({"id": number, "action": "messages", **query})
                )
                reply = await receive(websocket, "reply")
                assert (reply["id"], reply["ok"]) == (number, True), reply
                result = reply["result"]
                assert isinstance(result, dict) and result["truncated"] is False
                [found] = result["messages"]
                assert (found["message_id"], found["body"], found["attempt"]) == (
                    receipt.msg_id,
                    "found me",
                    1,
                )

        # An admin acts.
        status, headers, _ = await sign_in(port, "root", root_secret)
        async with live(port, session_cookie(headers)) as websocket:
            assert (await receive(websocket, "hello"))["admin"] is True
            target = next(n for n in ("n1", "n2", "n3") if n != leader.node_id)
            await websocket.send_message(  # type: ignore[attr-defined]
                json.dumps(
                    {"id": 1, "action": "transfer_leader", "group": "broker-a", "target": target}
                )
            )
            reply = await receive(websocket, "reply")
            assert reply == {
                "type": "reply",
                "id": 1,
                "ok": True,
                "result": {"group": "broker-a", "leader": target},
            }
            # The other admin actions, through the same code as the CLI's.
            async with connect_admin(target_address(cluster, target), credentials=root) as admin:
                await admin.create_topic("orders", 2)
            for number, action, expected in (
                (
                    2,
                    {
                        "action": "reset_offset",
                        "group": "billing",
                        "topic": "orders",
                        "to_offset": 0,
                    },
                    [
                        {"broker_group": "broker-a", "queue_id": 0, "offset": 0},
                        {"broker_group": "broker-a", "queue_id": 1, "offset": 0},
                    ],
                ),
                (3, {"action": "redrive", "group": "billing"}, []),
            ):
                await websocket.send_message(json.dumps({"id": number, **action}))  # type: ignore[attr-defined]
                reply = await receive(websocket, "reply")
                assert (reply["id"], reply["ok"], reply.get("result")) == (number, True, expected)

        # Another site's page can neither sign in nor open the live connection.
        status, _, _ = await request(
            port,
            "POST",
            "/login",
            body=f"access_key=root&secret_key={root_secret}",
            origin="http://evil.example",
        )
        assert status == 403
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(
                f"ws://127.0.0.1:{port}/live",
                extra_headers=[(b"origin", b"http://evil.example")],
            ):
                pass


async def test_a_viewer_elsewhere_never_looks_anonymously() -> None:
    """Protected mode is for this machine only: no cluster is even asked."""
    sessions = Sessions(Target(endpoints=[]))
    for host in ("10.0.0.7", "192.168.1.2", "::ffff:10.0.0.7", None, "not-an-address"):
        assert not await sessions.anonymous_allowed(host)
    assert is_loopback("127.0.0.1") and is_loopback("::1")


def test_only_this_servers_own_page_counts_as_same_origin() -> None:
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin(None, "127.0.0.1:8080")  # not from a browser's page
    assert not same_origin("http://evil.example", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080")
    assert not same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")


def test_the_dashboard_command_fails_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*dledger_mq_command(), "dashboard", "--listen", "nowhere"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ")
