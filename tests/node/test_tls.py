"""TLS (``node/certificates.py``): peer links verify both ends against the cluster's CA and the
name in each certificate; clients verify the node; plain clients and strangers' certificates are
refused. The certificates are the ones `cluster up --tls` makes."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import pytest
import trio

from dledger_mq.errors import Unavailable, UsageError
from dledger_mq.node.certificates import (
    CA_FILE_NAME,
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    NodeTls,
    make_local_ca,
    make_node_certificate,
    node_tls,
)
from dledger_mq.node.config import parse_config
from dledger_mq.raft.pure.messages import AppendRequest, Entry, Message
from dledger_mq.raft.runtime.transport import PeerTransport, TransportConfig
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import ADMIN_CODEC, StatusReply, StatusRequest
from dledger_mq.wire.rpc import connect, serve_requests
from dledger_mq.wire.tls import client_ssl_context
from dledger_mq.wire.websocket import WebSocket, serve_websockets
from tests.raft.test_transport import DEADLINE_SECONDS, listen


def make_cluster_tls(root: Path, node_ids: list[str]) -> dict[str, NodeTls]:
    make_local_ca(root / "ca")
    contexts = {}
    for node_id in node_ids:
        make_node_certificate(root / "ca", root / node_id, node_id, ["127.0.0.1", "localhost"])
        config = parse_config(
            {
                "node_id": node_id,
                "members": {node_id: {"peer": "127.0.0.1:1", "client": "127.0.0.1:2"}},
                "data_dir": str(root / node_id / "data"),
                "tls_cert_file": str(root / node_id / CERT_FILE_NAME),
                "tls_key_file": str(root / node_id / KEY_FILE_NAME),
                "tls_ca_file": str(root / "ca" / CA_FILE_NAME),
            }
        )
        found = node_tls(config)
        assert found is not None
        contexts[node_id] = found
    return contexts


def test_keys_are_private_and_a_readable_key_is_refused(tmp_path: Path) -> None:
    make_cluster_tls(tmp_path, ["n1"])
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "n1" / KEY_FILE_NAME):
        assert os.stat(key).st_mode & 0o777 == 0o600
    os.chmod(tmp_path / "n1" / KEY_FILE_NAME, 0o644)
    config = parse_config(
        {
            "node_id": "n1",
            "members": {"n1": {"peer": "127.0.0.1:1", "client": "127.0.0.1:2"}},
            "data_dir": str(tmp_path / "data"),
            "tls_cert_file": str(tmp_path / "n1" / CERT_FILE_NAME),
            "tls_key_file": str(tmp_path / "n1" / KEY_FILE_NAME),
            "tls_ca_file": str(tmp_path / "ca" / CA_FILE_NAME),
        }
    )
    with pytest.raises(UsageError, match="others may read it"):
        node_tls(config)


def transport(
    node_id: str, peers: dict[str, Address], tls: NodeTls, sink: list[Message]
) -> PeerTransport:
    config = TransportConfig(
        "local", node_id, "g", peers, tls_server=tls.peer_server, tls_client=tls.peer_client
    )
    return PeerTransport(config, random.Random(0), sink.append)


async def deliver_one(receiver_tls: NodeTls, sender_tls: NodeTls, sender_id: str) -> list[Message]:
    """What n1 (with ``receiver_tls``) delivered of one append from ``sender_id`` (with
    ``sender_tls``) within a second."""
    delivered: list[Message] = []
    async with trio.open_nursery() as nursery:
        receiver = transport("n1", {sender_id: Address("127.0.0.1", 1)}, receiver_tls, delivered)
        address = await listen(nursery, receiver)
        sender = transport(sender_id, {"n1": address}, sender_tls, [])
        nursery.start_soon(sender.run_senders)
        message = AppendRequest(1, sender_id, "n1", 0, 0, (Entry(1, 1, b"x"),), 0)
        with trio.move_on_after(1):
            while not delivered:
                sender.send([message])
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return delivered


async def test_peers_with_the_clusters_certificates_talk(tmp_path: Path) -> None:
    tls = make_cluster_tls(tmp_path, ["n1", "n2"])
    with trio.fail_after(DEADLINE_SECONDS):
        delivered = await deliver_one(tls["n1"], tls["n2"], "n2")
    assert delivered and delivered[0].source == "n2"


async def test_a_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ours = make_cluster_tls(tmp_path / "ours", ["n1", "n2"])
    theirs = make_cluster_tls(tmp_path / "theirs", ["n2"])
    with trio.fail_after(DEADLINE_SECONDS):
        assert await deliver_one(ours["n1"], theirs["n2"], "n2") == []


async def test_a_member_cannot_pose_as_another(tmp_path: Path) -> None:
    """n3's certificate is the CA's too, but it names n3: it may not speak as n2."""
    tls = make_cluster_tls(tmp_path, ["n1", "n3"])
    with trio.fail_after(DEADLINE_SECONDS):
        assert await deliver_one(tls["n1"], tls["n3"], "n2") == []


async def test_clients_verify_the_node_and_plain_clients_get_nowhere(tmp_path: Path) -> None:
    tls = make_cluster_tls(tmp_path, ["n1"])

    async def answer(message: object, session: object) -> object:
        assert isinstance(message, StatusRequest)
        return StatusReply("n1", "g", "", "leader", 1, None, None, 0, 0, 0, ())

    async def handler(websocket: WebSocket) -> None:
        await serve_requests(websocket, ADMIN_CODEC, "local", "n1", answer)

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(serve_websockets, ssl_context=tls["n1"].server),
                handler,
                "127.0.0.1",
                0,
            )
            address = f"127.0.0.1:{port}"
            trusted = client_ssl_context(str(tmp_path / "ca" / CA_FILE_NAME))
            async with connect(address, ADMIN_CODEC, "local", "c", None, trusted) as connection:
                assert (await connection.call(StatusRequest(), StatusReply)).role == "leader"
            with pytest.raises(Unavailable, match="speaks TLS"):
                async with connect(address, ADMIN_CODEC, "local", "plain"):
                    pass
            make_cluster_tls(tmp_path / "other", ["x"])
            stranger_ca = client_ssl_context(str(tmp_path / "other" / "ca" / CA_FILE_NAME))
            with pytest.raises(Unavailable, match="certificate verify failed"):
                async with connect(address, ADMIN_CODEC, "local", "c", None, stranger_ca):
                    pass
            nursery.cancel_scope.cancel()
