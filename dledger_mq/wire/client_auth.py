"""Clients prove who they are without sending their secret: a signature over both nonces.

A user holds an access key (its name) and a secret key. The node keeps neither the secret nor
anything that signs in its place: only ``stored_key = SHA-256(client_key)``, where
``client_key = HMAC(secret_key, "dledger-mq client key")`` (SCRAM's construction, RFC 5802,
without the salted hashing a password needs: secret keys are 256 random bits). In the
handshake the client sends a fresh nonce in ``Hello``; the node answers ``Welcome`` with its
own; the client sends ``Authenticate(access_key, proof)`` where ``proof = client_key XOR
HMAC(stored_key, auth_message)`` and ``auth_message`` binds the cluster id, the access key and
both nonces. The node recovers ``client_key`` from the proof and checks its hash against the
stored key. So neither the wire nor the replicated log (where users live) holds what signs in.

Nodes sign in to naming nodes the same way, as ``node:<id>`` with a secret derived from the
cluster secret, so that only members of the cluster can register as a group's replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

import attrs

from dledger_mq.errors import AuthenticationFailed, UsageError
from dledger_mq.wire.files import write_file_durably

ACCESS_KEY_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_ACCESS_KEY"
SECRET_KEY_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_SECRET_KEY"
#: The identity a member node signs in to naming nodes with: this prefix and its node id.
NODE_IDENTITY_PREFIX = "node:"
STORED_KEY_BYTES = 32
PROOF_BYTES = 32
MAX_ACCESS_KEY_LENGTH = 128
MAX_SECRET_KEY_LENGTH = 256
_CLIENT_KEY_LABEL = b"dledger-mq client key"
_MAX_CREDENTIALS_FILE_BYTES = 4096


@attrs.frozen(repr=False)
class Credentials:
    """What a client signs in with. ``repr`` leaves the secret out (it ends up in logs)."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r})"

    @classmethod
    def from_environment(cls) -> Credentials | None:
        """``DLEDGER_MQ_ACCESS_KEY`` and ``DLEDGER_MQ_SECRET_KEY``, if both are set."""
        access_key = os.environ.get(ACCESS_KEY_ENVIRONMENT_VARIABLE, "")
        secret_key = os.environ.get(SECRET_KEY_ENVIRONMENT_VARIABLE, "")
        if not access_key and not secret_key:
            return None
        if not access_key or not secret_key:
            raise UsageError(
                f"set both {ACCESS_KEY_ENVIRONMENT_VARIABLE} and "
                f"{SECRET_KEY_ENVIRONMENT_VARIABLE}, or neither"
            )
        return cls(access_key, secret_key)


def as_credentials(value: Credentials | tuple[str, str] | None) -> Credentials | None:
    """The SDK's ``credentials=`` argument (a pair or ``Credentials``), else the environment's."""
    if value is None:
        return Credentials.from_environment()
    if isinstance(value, Credentials):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(part, str) and part for part in value)
    ):
        return Credentials(value[0], value[1])
    raise UsageError("credentials must be (access_key, secret_key), two non-empty strings")


def new_secret_key() -> str:
    return secrets.token_hex(32)


def _client_key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), _CLIENT_KEY_LABEL, hashlib.sha256).digest()


def stored_key(secret_key: str) -> bytes:
    """What a node keeps of a user's secret: enough to check a proof, not to make one."""
    return hashlib.sha256(_client_key(secret_key)).digest()


def node_secret_key(cluster_secret: bytes, node_id: str) -> str:
    """The secret member ``node_id`` signs in to naming nodes with (any holder of the cluster
    secret can derive it, and no one else)."""
    return hmac.new(cluster_secret, b"dledger-mq node " + node_id.encode(), "sha256").hexdigest()


def node_credentials(cluster_secret: bytes, node_id: str) -> Credentials:
    return Credentials(NODE_IDENTITY_PREFIX + node_id, node_secret_key(cluster_secret, node_id))


def _auth_message(
    cluster_id: str, access_key: str, client_nonce: bytes, server_nonce: bytes
) -> bytes:
    parts = [b"dledger-mq client", cluster_id.encode(), access_key.encode()]
    parts += [client_nonce, server_nonce]
    # Length-prefixed, so that no two different tuples give the same bytes.
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def client_proof(
    credentials: Credentials, cluster_id: str, client_nonce: bytes, server_nonce: bytes
) -> bytes:
    client_key = _client_key(credentials.secret_key)
    message = _auth_message(cluster_id, credentials.access_key, client_nonce, server_nonce)
    signature = hmac.new(hashlib.sha256(client_key).digest(), message, hashlib.sha256).digest()
    return _xor(client_key, signature)


def check_client_proof(
    stored: bytes | None,
    access_key: str,
    proof: bytes,
    cluster_id: str,
    client_nonce: bytes,
    server_nonce: bytes,
) -> None:
    """``AuthenticationFailed`` unless ``proof`` was made with the secret behind ``stored``
    (``None``: no such user; checked all the same, so that timing tells nothing)."""
    if len(proof) != PROOF_BYTES:
        raise AuthenticationFailed("authentication failed")
    key = stored if stored is not None else bytes(STORED_KEY_BYTES)
    message = _auth_message(cluster_id, access_key, client_nonce, server_nonce)
    signature = hmac.new(key, message, hashlib.sha256).digest()
    recovered = hashlib.sha256(_xor(proof, signature)).digest()
    if not hmac.compare_digest(recovered, key) or stored is None:
        raise AuthenticationFailed("authentication failed")


# -- the credentials file `cluster up` writes ------------------------------------------------------

#: Where `cluster up` keeps the admin user it made, in its folder.
CREDENTIALS_FILE_NAME = "admin.credentials"


def write_credentials_file(path: Path, credentials: Credentials) -> None:
    """``access_key:secret_key`` in a new file of mode 0600, durably."""
    line = f"{credentials.access_key}:{credentials.secret_key}\n"
    write_file_durably(path, line.encode())


def read_credentials_file(path: Path) -> Credentials | None:
    """The credentials in ``path``, None if there is no such file; ``UsageError`` if others may
    read it or it does not hold ``access_key:secret_key``."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(_MAX_CREDENTIALS_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UsageError(f"credentials file {path}: {error.strerror or error}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"credentials file {path}: mode {stat.S_IMODE(mode):04o}: others may read it "
            "(chmod 600)"
        )
    access_key, colon, secret_key = data.decode("utf-8", "replace").strip().partition(":")
    if not colon or not access_key or not secret_key:
        raise UsageError(f"credentials file {path}: must hold access_key:secret_key")
    return Credentials(access_key, secret_key)
