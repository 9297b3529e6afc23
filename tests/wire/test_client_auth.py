"""Signing in (``wire/client_auth.py``): the proof checks only with the right secret, over these
nonces; what a node stores cannot sign in; credentials files must be private."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dledger_mq.errors import AuthenticationFailed, AuthenticationRequired, UsageError
from dledger_mq.wire.admin import ADMIN_CODEC, StatusReply, StatusRequest
from dledger_mq.wire.client_auth import (
    ACCESS_KEY_ENVIRONMENT_VARIABLE,
    SECRET_KEY_ENVIRONMENT_VARIABLE,
    Credentials,
    as_credentials,
    check_client_proof,
    client_proof,
    new_secret_key,
    node_credentials,
    read_credentials_file,
    stored_key,
    write_credentials_file,
)
from dledger_mq.wire.handshake import PROTOCOL_VERSION, Authenticate, Hello
from dledger_mq.wire.rpc import ServerLimits, Session, serve_requests
from dledger_mq.wire.websocket import (
    WebSocket,
    WebSocketClosed,
    connect_websocket,
    serve_websockets,
)

ALICE = Credentials("alice", new_secret_key())
CLIENT_NONCE = bytes(range(16))
SERVER_NONCE = bytes(range(16, 32))


def check(proof: bytes, stored: bytes | None = None, **changes: object) -> None:
    arguments: dict[str, object] = {
        "stored": stored_key(ALICE.secret_key) if stored is None else stored,
        "access_key": "alice",
        "proof": proof,
        "cluster_id": "local",
        "client_nonce": CLIENT_NONCE,
        "server_nonce": SERVER_NONCE,
    }
    arguments.update(changes)
    check_client_proof(**arguments)  # type: ignore[arg-type]


def test_the_right_secret_signs_in() -> None:
    check(client_proof(ALICE, "local", CLIENT_NONCE, SERVER_NONCE))


@pytest.mark.parametrize(
    "changes",
    [
        {"server_nonce": bytes(16)},  # a proof replayed on another connection
        {"client_nonce": bytes(16)},
        {"cluster_id": "other"},
        {"access_key": "mallory"},  # alice's proof presented as another user's
        {"stored": None},  # no such user
    ],
)
def test_a_proof_is_bound_to_its_connection_and_user(changes: dict[str, object]) -> None:
    proof = client_proof(ALICE, "local", CLIENT_NONCE, SERVER_NONCE)
    if "stored" in changes and changes["stored"] is None:
        with pytest.raises(AuthenticationFailed, match="^authentication failed$"):
            check_client_proof(None, "alice", proof, "local", CLIENT_NONCE, SERVER_NONCE)
        return
    with pytest.raises(AuthenticationFailed, match="^authentication failed$"):
        check(proof, **changes)


def test_a_wrong_secret_does_not_sign_in() -> None:
    wrong = Credentials("alice", new_secret_key())
    with pytest.raises(AuthenticationFailed):
        check(client_proof(wrong, "local", CLIENT_NONCE, SERVER_NONCE))


def test_what_a_node_stores_cannot_sign_in() -> None:
    """Whoever reads the log (where users live) learns the stored key: it must not sign in."""
    stored = stored_key(ALICE.secret_key)
    as_secret = Credentials("alice", stored.hex())
    with pytest.raises(AuthenticationFailed):
        check(client_proof(as_secret, "local", CLIENT_NONCE, SERVER_NONCE))


@given(st.binary(max_size=64))
def test_no_made_up_proof_signs_in(proof: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        check(proof)


def test_node_credentials_differ_per_node_and_secret() -> None:
    secret = bytes(32)
    assert node_credentials(secret, "n1").access_key == "node:n1"
    assert node_credentials(secret, "n1") != node_credentials(secret, "n2")
    assert node_credentials(secret, "n1") != node_credentials(bytes(31) + b"\1", "n1")


def test_credentials_never_show_their_secret() -> None:
    assert ALICE.secret_key not in repr(ALICE)


def test_the_sdk_takes_a_pair_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCESS_KEY_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.delenv(SECRET_KEY_ENVIRONMENT_VARIABLE, raising=False)
    assert as_credentials(None) is None
    assert as_credentials(("a", "b")) == Credentials("a", "b")
    with pytest.raises(UsageError):
        as_credentials(("a", ""))  # type: ignore[arg-type]
    monkeypatch.setenv(ACCESS_KEY_ENVIRONMENT_VARIABLE, "bob")
    with pytest.raises(UsageError, match="both"):
        as_credentials(None)
    monkeypatch.setenv(SECRET_KEY_ENVIRONMENT_VARIABLE, "s")
    assert as_credentials(None) == Credentials("bob", "s")


def test_a_credentials_file_is_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "admin.credentials"
    assert read_credentials_file(path) is None
    write_credentials_file(path, ALICE)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_credentials_file(path) == ALICE
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match="others may read it"):
        read_credentials_file(path)
    os.chmod(path, 0o600)
    path.write_text("no colon\n")
    with pytest.raises(UsageError, match="access_key:secret_key"):
        read_credentials_file(path)


# -- the handshake, fuzzed -------------------------------------------------------------------


class OneUser:
    """Alice may sign in; no one gets in without signing in."""

    def stored_key(self, access_key: str) -> bytes | None:
        return stored_key(ALICE.secret_key) if access_key == "alice" else None

    def admit(self, session: Session) -> None:
        if session.user is None:
            raise AuthenticationRequired("sign in")


SIGN_INS = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda key, proof: ADMIN_CODEC.encode(Authenticate(key, proof)),
        st.sampled_from(["alice", "bob", "", "a" * 200]),
        st.binary(min_size=0, max_size=40),
    ),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(SIGN_INS, max_size=3), st.booleans())
def test_no_fuzzed_sign_in_gets_a_request_answered(frames: list[bytes], nonce: bool) -> None:
    answered: list[object] = []

    async def answer(message: object, session: Session) -> object:
        answered.append(message)
        return StatusReply("n1", "g", "", "leader", 1, None, None, 0, 0, 0, ())

    async def handler(websocket: WebSocket) -> None:
        limits = ServerLimits(hello_timeout_seconds=2)
        await serve_requests(
            websocket, ADMIN_CODEC, "local", "n1", answer, access=OneUser(), limits=limits
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_websockets, handler, "127.0.0.1", 0)
            websocket = await connect_websocket("127.0.0.1", port)
            hello = Hello("local", "fuzz", PROTOCOL_VERSION, bytes(16) if nonce else b"")
            with trio.fail_after(10), contextlib.suppress(WebSocketClosed):
                await websocket.send_message(ADMIN_CODEC.encode(hello))
                for frame in [*frames, ADMIN_CODEC.encode(StatusRequest(), 1)]:
                    await websocket.send_message(frame)
                while True:
                    await websocket.get_message()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert answered == []
