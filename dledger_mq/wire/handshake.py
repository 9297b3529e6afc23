"""The first exchange on every connection, and the typed error reply.

The connecting side sends ``Hello``; the accepting side answers ``Welcome`` or ``ErrorReply``
and closes. A peer of another cluster or another protocol version is refused on both sides with
a message that says which.
"""

from __future__ import annotations

import attrs

from dledger_mq.errors import HandshakeRefused

PROTOCOL_VERSION = 1

#: Tags 1-9 belong to this module; each protocol numbers its own messages from 10.
HANDSHAKE_TYPES: dict[int, type] = {}


@attrs.frozen
class Hello:
    cluster_id: str
    node_id: str
    protocol_version: int
    #: On a peer link of a cluster with a secret: the connecting node's challenge
    #: (``peer_auth.py``); empty from clients and from nodes without a secret.
    nonce: bytes = b""


@attrs.frozen
class Welcome:
    cluster_id: str
    node_id: str
    protocol_version: int
    #: On a peer link with a secret: the accepting node's challenge, and its proof over both.
    nonce: bytes = b""
    proof: bytes = b""


@attrs.frozen
class PeerProof:
    """The connecting node's answer to ``Welcome.nonce`` (``peer_auth.py``), before anything."""

    proof: bytes


@attrs.frozen
class Authenticate:
    """A client signs in (``client_auth.py``): its access key and its proof over both nonces.
    Sent after ``Welcome`` by a client whose ``Hello`` carried a nonce; answered
    ``Authenticated`` or an ``ErrorReply`` (``AuthenticationFailed``), then the link closes."""

    access_key: str
    proof: bytes


@attrs.frozen
class Authenticated:
    access_key: str


#: Field values an error may carry on the wire (``DledgerError.field_values``).
ErrorFieldValue = str | int | bool | float | None


@attrs.frozen
class ErrorReply:
    """A typed error for one request: ``code`` is the error class's name (``errors.ERRORS``),
    ``fields`` its constructor's arguments (``NotLeader``: ``leader_hint``,
    ``leader_address``); ``retriable`` says what to do with a code this side does not know."""

    code: str
    message: str
    retriable: bool = False
    fields: dict[str, ErrorFieldValue] = attrs.field(factory=dict)


HANDSHAKE_TYPES.update(
    {1: Hello, 2: Welcome, 3: ErrorReply, 4: PeerProof, 5: Authenticate, 6: Authenticated}
)


def check_peer(hello: Hello | Welcome, cluster_id: str, what: str = "peer") -> None:
    """Raises ``HandshakeRefused`` unless the other side is of our cluster and version."""
    if hello.protocol_version != PROTOCOL_VERSION:
        raise HandshakeRefused(
            f"{what} {hello.node_id!r} speaks protocol version {hello.protocol_version}, "
            f"this node speaks {PROTOCOL_VERSION}"
        )
    if hello.cluster_id != cluster_id:
        # Only what they sent: a refusal must not tell a stranger the cluster's id.
        raise HandshakeRefused(
            f"{what} {hello.node_id!r} belongs to cluster {hello.cluster_id!r}, not this one"
        )
