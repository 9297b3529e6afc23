"""Peers prove they hold the cluster secret: HMAC-SHA256 challenge–response in the handshake.

The connecting node sends a fresh nonce in ``Hello``; the accepting node answers ``Welcome`` with
its own nonce and a proof over both nonces and both node ids; the connecting node checks it and
answers ``PeerProof``, the same with another label (so that neither proof can be replayed as the
other, or on another connection: each side's nonce is new). No message of the link is delivered
before the accepting node has checked that proof. The secret itself never crosses the wire.

What it does not do: protect the bytes after the handshake from someone who can rewrite the
connection (use TLS for that), nor hide them. docs/security.md has the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from typing import Literal

from dledger_mq.errors import HandshakeRefused, UsageError

#: Bytes of the secret (written as hex) and of each side's nonce; a proof is a SHA-256 HMAC.
SECRET_BYTES = 32
NONCE_BYTES = 16
PROOF_BYTES = 32
_MAX_SECRET_FILE_BYTES = 1024


class SecretFileError(UsageError):
    """The cluster secret file is missing, unreadable, readable by others, or malformed."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cluster secret file {path}: {problem}")
        self.path = path
        self.problem = problem


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


#: What `cluster up` names the secret it makes, in its folder.
CLUSTER_SECRET_FILE_NAME = "cluster.secret"


def new_cluster_secret_text() -> str:
    return secrets.token_hex(SECRET_BYTES) + "\n"


def write_cluster_secret(path: str) -> None:
    """A new random secret in a new file of mode 0600, durably (fsync, directory fsync)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, new_cluster_secret_text().encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_cluster_secret(path: str) -> bytes:
    """The secret in ``path``; ``SecretFileError`` unless only its owner can read it (as ssh
    asks of a private key) and it holds 64 hex digits."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as error:
        raise SecretFileError(path, error.strerror or str(error)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            path, f"mode {stat.S_IMODE(mode):04o}: others may read it (chmod 600)"
        )
    text = data.strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise SecretFileError(path, f"must hold {2 * SECRET_BYTES} hex digits")
    return secret


def peer_proof(
    secret: bytes,
    label: Literal["welcome", "hello"],
    cluster_id: str,
    connecting: str,
    accepting: str,
    connecting_nonce: bytes,
    accepting_nonce: bytes,
) -> bytes:
    """The HMAC one side sends: ``welcome`` from the accepting node, ``hello`` from the other."""
    parts = [b"dledger-mq peer " + label.encode(), cluster_id.encode(), connecting.encode()]
    parts += [accepting.encode(), connecting_nonce, accepting_nonce]
    # Length-prefixed, so that no two different tuples give the same bytes.
    message = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_proof(expected: bytes, received: bytes) -> None:
    """``HandshakeRefused`` unless ``received`` is ``expected`` (compared in constant time)."""
    if len(received) != PROOF_BYTES or not hmac.compare_digest(expected, received):
        raise HandshakeRefused("the peer did not prove it holds the cluster secret")


def check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise HandshakeRefused("the peer did not send a nonce: it holds no cluster secret")
