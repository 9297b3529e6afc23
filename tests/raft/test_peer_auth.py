"""Peer links prove the cluster secret (``wire/peer_auth.py``): issue 15's forged append from a
stranger who says ``Hello("local", "n2")`` is refused, and nothing of it is delivered."""

from __future__ import annotations

import functools
import os
import random
import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import HandshakeRefused
from dledger_mq.node.config import ConfigError, parse_config
from dledger_mq.raft.pure.messages import AppendRequest, Entry, Message
from dledger_mq.raft.runtime.transport import PEER_CODEC, PeerTransport, TransportConfig
from dledger_mq.wire.address import Address
from dledger_mq.wire.frames import FrameDecoder, encode_frames
from dledger_mq.wire.handshake import ErrorReply, Hello, PeerProof, Welcome
from dledger_mq.wire.peer_auth import (
    SecretFileError,
    check_proof,
    load_cluster_secret,
    new_nonce,
    peer_proof,
    write_cluster_secret,
)
from tests.raft.test_transport import DEADLINE_SECONDS, listen

SECRET = bytes(range(32))
FORGED = AppendRequest(7, "n2", "n1", 0, 0, (Entry(1, 7, b"forged"), Entry(2, 7, b"x")), 2)


def receiver(delivered: list[Message], secret: bytes | None = SECRET) -> PeerTransport:
    config = TransportConfig("local", "n1", "g", {"n2": Address("127.0.0.1", 1)}, secret=secret)
    return PeerTransport(config, random.Random(0), delivered.append)


async def read_reply(stream: trio.SocketStream, decoder: FrameDecoder) -> object:
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(1 << 16)
        if not data:
            return None
        decoder.receive_data(data)
    return PEER_CODEC.decode(frame).message


async def stranger(address: Address, *frames: object) -> list[object]:
    """Connect, send ``frames`` (then the forged append), and collect what comes back."""
    replies: list[object] = []
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        payloads = [PEER_CODEC.encode(frame) for frame in frames]
        payloads.append(PEER_CODEC.encode(FORGED, 0, "g"))
        await stream.send_all(encode_frames(payloads))
        decoder = FrameDecoder(1 << 20)
        while (reply := await read_reply(stream, decoder)) is not None:
            replies.append(reply)
    return replies


@pytest.mark.parametrize(
    "hello",
    [
        Hello("local", "n2", 1),  # the attack: no secret at all
        Hello("local", "n2", 1, new_nonce()),  # a nonce, then a made-up proof
    ],
)
async def test_a_stranger_without_the_secret_delivers_nothing(hello: Hello) -> None:
    delivered: list[Message] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await listen(nursery, receiver(delivered))
            replies = await stranger(address, hello, PeerProof(bytes(32)))
            nursery.cancel_scope.cancel()
    assert delivered == []
    [*_, refusal] = replies
    assert isinstance(refusal, ErrorReply) and refusal.code == "HandshakeRefused"
    assert refusal.message == "handshake refused"  # no cluster id, no member, no reason


async def test_a_wrong_cluster_id_is_refused_without_naming_the_right_one() -> None:
    delivered: list[Message] = []
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            address = await listen(nursery, receiver(delivered))
            replies = await stranger(address, Hello("guess", "n2", 1, new_nonce()))
            nursery.cancel_scope.cancel()
    assert delivered == []
    assert [reply.message for reply in replies if isinstance(reply, ErrorReply)] == [
        "handshake refused"
    ]
    assert all("local" not in repr(reply) for reply in replies)


async def test_peers_with_the_secret_talk_and_one_with_another_secret_does_not() -> None:
    for sender_secret, arrives in ((SECRET, True), (bytes(32), False), (None, False)):
        delivered: list[Message] = []
        with trio.fail_after(DEADLINE_SECONDS):
            async with trio.open_nursery() as nursery:
                address = await listen(nursery, receiver(delivered))
                config = TransportConfig("local", "n2", "g", {"n1": address}, secret=sender_secret)
                sender = PeerTransport(config, random.Random(0), lambda message: None)
                nursery.start_soon(sender.run_senders)
                message = AppendRequest(1, "n2", "n1", 0, 0, (), 0)
                for _ in range(100):
                    sender.send([message])
                    if delivered:
                        break
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        assert (delivered == [message] * len(delivered) and bool(delivered)) is arrives, (
            sender_secret
        )


async def test_the_connecting_side_sends_nothing_to_a_node_that_cannot_prove_the_secret() -> None:
    """An impostor listening where a peer should be answers Welcome without a valid proof."""
    heard: list[object] = []
    finished: list[Hello] = []
    gave_up_twice = trio.Event()

    async def impostor(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(1 << 20)
        hello = await read_reply(stream, decoder)
        welcome = Welcome("local", "n1", 1, new_nonce(), bytes(32))
        await stream.send_all(encode_frames([PEER_CODEC.encode(welcome)]))
        while (message := await read_reply(stream, decoder)) is not None:
            heard.append(message)
        assert isinstance(hello, Hello)
        finished.append(hello)
        if len(finished) == 2:
            gave_up_twice.set()  # it closed the link and tried again: it sent what it would

    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, impostor, 0, host="127.0.0.1")
            )
            address = Address("127.0.0.1", listeners[0].socket.getsockname()[1])
            config = TransportConfig("local", "n2", "g", {"n1": address}, secret=SECRET)
            sender = PeerTransport(config, random.Random(0), lambda message: None)
            nursery.start_soon(sender.run_senders)
            sender.send([AppendRequest(1, "n2", "n1", 0, 0, (), 0)])
            await gave_up_twice.wait()
            nursery.cancel_scope.cancel()
    assert heard == []  # no PeerProof, no append


def test_proofs_are_bound_to_their_label_ids_and_nonces() -> None:
    fields = ("local", "n2", "n1", b"a" * 16, b"b" * 16)
    welcome = peer_proof(SECRET, "welcome", *fields)
    check_proof(peer_proof(SECRET, "welcome", *fields), welcome)
    for other in (
        peer_proof(SECRET, "hello", *fields),
        peer_proof(SECRET, "welcome", "local", "n3", "n1", b"a" * 16, b"b" * 16),
        peer_proof(SECRET, "welcome", "local", "n2", "n1", b"a" * 16, b"c" * 16),
        peer_proof(bytes(32), "welcome", *fields),
    ):
        with pytest.raises(HandshakeRefused):
            check_proof(welcome, other)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_handshake_fuzz_never_delivers(frames: list[bytes]) -> None:
    """Random frames (and random Hellos) before the forged append: never delivered."""
    delivered: list[Message] = []

    async def main() -> None:
        with trio.fail_after(DEADLINE_SECONDS):
            async with trio.open_nursery() as nursery:
                address = await listen(nursery, receiver(delivered))
                stream = await trio.open_tcp_stream(address.host, address.port)
                async with stream:
                    hello = PEER_CODEC.encode(
                        Hello("local", "n2", 1, frames[0][:16] if frames else b"")
                    )
                    payloads = [hello, *frames, PEER_CODEC.encode(FORGED, 0, "g")]
                    await stream.send_all(encode_frames(payloads))
                    with trio.move_on_after(1):
                        while await stream.receive_some(1 << 16):
                            pass
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert delivered == []


def test_the_secret_file_must_be_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    write_cluster_secret(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_cluster_secret(str(path))) == 32
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_cluster_secret(str(path))
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(SecretFileError, match="64 hex digits"):
        load_cluster_secret(str(path))
    with pytest.raises(SecretFileError):
        load_cluster_secret(str(tmp_path / "missing"))


def test_members_off_loopback_need_a_secret() -> None:
    members = {
        "n1": {"peer": "10.0.0.1:9891", "client": "10.0.0.1:9881"},
        "n2": {"peer": "10.0.0.2:9891", "client": "10.0.0.2:9881"},
    }
    with pytest.raises(ConfigError, match="cluster_secret_file: required"):
        parse_config({"node_id": "n1", "members": members, "data_dir": "d"})
    config = parse_config(
        {"node_id": "n1", "members": members, "data_dir": "d", "cluster_secret_file": "s"}
    )
    assert config.cluster_secret_file == "s"


def test_the_command_in_docs_security_makes_a_secret_a_node_accepts(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    [command] = [line for line in doc.splitlines() if "token_hex" in line]
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True)
    path = tmp_path / "cluster.secret"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_cluster_secret(str(path))) == 32
