"""Peer links between replicas: raw Trio TCP streams carrying length-prefixed msgpack frames.

Raw TCP rather than WebSocket for the peer link: measured on this machine a request/response
round trip costs about 125 us over Trio TCP and 430 us over trio-websocket, and one-way about
80k and 26k frames/s (docs/benchmarks.md).

Each node opens one outgoing connection to each peer and sends on it only; what a peer sends us
arrives on the connection that peer opened. One sender task per peer connects, reconnects, and
drains a bounded queue, writing everything queued in one ``send_all``, so a burst becomes one
syscall. When that task is idle (connected, nothing queued) ``send`` writes straight to the
socket instead, with a non-blocking write, sparing a task switch per message: on this machine
each hop between tasks or threads costs about as much as the loopback send itself. Whatever does
not fit in the socket buffer is queued for the task. A slow or dead peer fills only its own queue:
when full, messages to it are dropped, which Raft tolerates (the leader re-sends on the next
heartbeat reply).
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from dledger_mq.errors import DledgerError, HandshakeRefused, ProtocolError
from dledger_mq.raft.pure.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    SnapshotChunk,
    SnapshotChunkAck,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    check_peer_message,
)
from dledger_mq.wire.address import Address
from dledger_mq.wire.codec import Codec
from dledger_mq.wire.frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frames
from dledger_mq.wire.handshake import (
    HANDSHAKE_TYPES,
    PROTOCOL_VERSION,
    ErrorReply,
    Hello,
    PeerProof,
    Welcome,
    check_peer,
)
from dledger_mq.wire.peer_auth import check_nonce, check_proof, new_nonce, peer_proof
from dledger_mq.wire.rpc import error_reply
from dledger_mq.wire.socket_io import write_now

logger = structlog.get_logger()

RAFT_MESSAGE_TYPES = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
    SnapshotChunk,
    SnapshotChunkAck,
)


@attrs.frozen
class PeerAddress:
    """Where the dialing node takes connections (its peer address), sent once right after the
    handshake: a node that does not know it yet (it missed the membership change that added
    the dialer, which may now lead) can still answer it."""

    address: str


PEER_CODEC = Codec(
    {
        **HANDSHAKE_TYPES,
        10: VoteRequest,
        11: VoteResponse,
        12: AppendRequest,
        13: AppendResponse,
        14: Heartbeat,
        15: HeartbeatResponse,
        16: TimeoutNow,
        17: SnapshotChunk,
        18: SnapshotChunkAck,
        19: PeerAddress,
    }
)

HANDSHAKE_TIMEOUT_SECONDS = 5.0
READ_BYTES = 1 << 16


@attrs.frozen
class TransportConfig:
    cluster_id: str
    node_id: str
    group: str
    peers: dict[str, Address]
    #: The cluster secret (``wire/peer_auth.py``): every link proves both ends hold it. None
    #: only where every member is on loopback (``node.toml``'s ``cluster_secret_file``).
    secret: bytes | None = None
    #: Mutual TLS (``node/certificates.py``): the accepting end's context and the connecting
    #: end's, each requiring the other's certificate from the cluster's CA. None: plain TCP.
    tls_server: ssl.SSLContext | None = None
    tls_client: ssl.SSLContext | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: This node's own peer address, told to every node it dials ("" : not told).
    own_address: str = ""
    queue_messages: int = 4096
    reconnect_min_seconds: float = 0.02
    reconnect_max_seconds: float = 1.0


class PeerTransport:
    def __init__(
        self, config: TransportConfig, rng: random.Random, deliver: Callable[[Message], None]
    ) -> None:
        self.config = config
        #: Where received messages go (the replica's ``deliver``).
        self.deliver = deliver
        self.rng = rng
        # A queued item is a message, or bytes already framed (the rest of a direct write).
        self._queues: dict[
            str, tuple[trio.MemorySendChannel[_Queued], trio.MemoryReceiveChannel[_Queued]]
        ] = {
            peer: trio.open_memory_channel[_Queued](config.queue_messages) for peer in config.peers
        }
        #: peer -> its connection's socket, while its sender task waits with nothing queued:
        #: only then may ``send`` write to it directly without interleaving with the task.
        self._idle_sockets: dict[str, trio.socket.SocketType] = {}
        #: Batches written straight to a socket, and items queued for a sender task (tests).
        self.direct_writes = 0
        self.queued = 0
        self.connected: dict[str, bool] = dict.fromkeys(config.peers, False)
        self.log = logger.bind(node=config.node_id, group=config.group)
        #: Where a peer that joined since the start is (from the group's membership): None if
        #: unknown. The replica sets it.
        self.resolve: Callable[[str], Address | None] = lambda peer: None
        #: Whether a peer may connect to us (a member now); the replica sets it.
        self.accepts: Callable[[str], bool] = lambda peer: peer in config.peers
        self._addresses: dict[str, Address] = dict(config.peers)
        self._senders: trio.Nursery | None = None
        #: Peer addresses nodes told us when they dialed (``PeerAddress``).
        self._learned: dict[str, Address] = {}

    def send(self, messages: tuple[Message, ...] | list[Message]) -> None:
        """Send messages to their targets, or queue them; never blocks."""
        by_peer: dict[str, list[Message]] = {}
        for message in messages:
            by_peer.setdefault(message.target, []).append(message)
        for peer, batch in by_peer.items():
            if peer not in self._queues and not self._add_peer(peer):
                continue  # no address known for it (yet): Raft sends again
            sock = self._idle_sockets.get(peer)
            if sock is not None:
                data = encode_peer_messages(batch, self.config.group)
                try:
                    sent = write_now(sock, data)
                except OSError:
                    pass  # a broken connection: the sender task finds out when it sends these
                else:
                    self.direct_writes += 1
                    if sent == len(data):
                        continue
                    self._queue(peer, data[sent:])
                    continue
            for message in batch:
                self._queue(peer, message)

    def _queue(self, peer: str, item: _Queued) -> None:
        # From now on the sender task owns the socket until it has written this.
        self._idle_sockets.pop(peer, None)
        self.queued += 1
        # When the peer is not keeping up the message is dropped; Raft re-sends what matters.
        with contextlib.suppress(trio.WouldBlock):
            self._queues[peer][0].send_nowait(item)

    def _add_peer(self, peer: str) -> bool:
        """Start links to a peer that joined the group since the start (its address from the
        membership); False if its address is not known."""
        address = self.resolve(peer) or self._learned.get(peer)
        if address is None or self._senders is None:
            return False
        self._addresses[peer] = address
        self._queues[peer] = trio.open_memory_channel[_Queued](self.config.queue_messages)
        self.connected[peer] = False
        self._senders.start_soon(self._sender, peer)
        self.log.info("peer_added", peer=peer, address=str(address))
        return True

    async def run_senders(self) -> None:
        async with trio.open_nursery() as nursery:
            self._senders = nursery
            for peer in self.config.peers:
                nursery.start_soon(self._sender, peer)

    async def _sender(self, peer: str) -> None:
        receive = self._queues[peer][1]
        address = self._addresses[peer]
        backoff = self.config.reconnect_min_seconds
        while True:
            try:
                stream = await self._connect(peer, address)
            except (OSError, DledgerError, trio.BrokenResourceError, trio.TooSlowError) as error:
                if isinstance(error, HandshakeRefused):
                    self.log.error("peer_refused", peer=peer, reason=str(error))
                await trio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, self.config.reconnect_max_seconds)
                continue
            backoff = self.config.reconnect_min_seconds
            self.connected[peer] = True
            self.log.info("peer_connected", peer=peer, address=str(address))
            try:
                async with stream:
                    await self._pump(peer, stream, receive)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self.log.info("peer_disconnected", peer=peer, reason=str(error) or "closed")
            finally:
                self._idle_sockets.pop(peer, None)
                self.connected[peer] = False

    async def _connect(self, peer: str, address: Address) -> trio.abc.Stream:
        with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
            stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
            try:
                config = self.config
                if config.tls_client is not None:
                    stream = trio.SSLStream(stream, config.tls_client, server_hostname=address.host)
                    await stream.do_handshake()
                    _check_certificate_names(stream, peer)
                secret = config.secret
                nonce = new_nonce() if secret is not None else b""
                hello = Hello(config.cluster_id, config.node_id, PROTOCOL_VERSION, nonce)
                await stream.send_all(encode_frames([PEER_CODEC.encode(hello)]))
                reply = await _read_one(stream, FrameDecoder(config.max_frame_bytes))
                if isinstance(reply, ErrorReply):
                    raise HandshakeRefused(f"{peer} refused us: {reply.message}")
                if not isinstance(reply, Welcome):
                    raise ProtocolError(f"{peer} answered the handshake with {reply!r:.80}")
                check_peer(reply, config.cluster_id)
                if reply.node_id != peer:
                    raise HandshakeRefused(f"{address} is node {reply.node_id!r}, not {peer!r}")
                if secret is not None:
                    # Before anything of ours goes to it: it must hold the secret too.
                    check_nonce(reply.nonce)
                    proof = (config.cluster_id, config.node_id, peer, nonce, reply.nonce)
                    check_proof(peer_proof(secret, "welcome", *proof), reply.proof)
                    answer = PeerProof(peer_proof(secret, "hello", *proof))
                    await stream.send_all(encode_frames([PEER_CODEC.encode(answer)]))
                if config.own_address:
                    told = PeerAddress(config.own_address)
                    await stream.send_all(encode_frames([PEER_CODEC.encode(told, 0, config.group)]))
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return stream

    async def _pump(
        self, peer: str, stream: trio.abc.Stream, receive: trio.MemoryReceiveChannel[_Queued]
    ) -> None:
        group = self.config.group
        encode = PEER_CODEC.encode
        while True:
            try:
                batch = [receive.receive_nowait()]
            except trio.WouldBlock:
                if isinstance(stream, trio.SocketStream):  # TLS writes go through its stream
                    self._idle_sockets[peer] = stream.socket
                batch = [await receive.receive()]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await stream.send_all(
                b"".join(
                    item if isinstance(item, bytes) else encode_frames([encode(item, 0, group)])
                    for item in batch
                )
            )

    async def handle_incoming(self, tcp: trio.SocketStream) -> None:
        """Serve one connection a peer opened to us: handshake, then deliver its messages."""
        decoder = FrameDecoder(self.config.max_frame_bytes)
        peer = "?"
        stream: trio.abc.Stream = tcp
        if self.config.tls_server is not None:
            stream = trio.SSLStream(tcp, self.config.tls_server, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                # Under TLS, the TLS handshake (the peer's certificate checked) comes first.
                hello = await _read_one(stream, decoder)
            if not isinstance(hello, Hello):
                raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
            peer = hello.node_id
            config = self.config
            try:
                check_peer(hello, config.cluster_id)
                if not self.accepts(peer):
                    raise HandshakeRefused(f"{peer!r} is not a member of group {config.group}")
                if isinstance(stream, trio.SSLStream):
                    _check_certificate_names(stream, peer)
                nonce, proof = b"", b""
                if config.secret is not None:
                    check_nonce(hello.nonce)
                    nonce = new_nonce()
                    fields = (config.cluster_id, peer, config.node_id, hello.nonce, nonce)
                    proof = peer_proof(config.secret, "welcome", *fields)
                welcome = Welcome(config.cluster_id, config.node_id, PROTOCOL_VERSION, nonce, proof)
                await stream.send_all(encode_frames([PEER_CODEC.encode(welcome)]))
                if config.secret is not None:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                        answer = await _read_one(stream, decoder)
                    if not isinstance(answer, PeerProof):
                        raise HandshakeRefused(f"expected PeerProof, got {type(answer).__name__}")
                    check_proof(peer_proof(config.secret, "hello", *fields), answer.proof)
            except HandshakeRefused as error:
                # The reason stays here: a stranger learns nothing of the cluster from it.
                self.log.warning("peer_refused", peer=peer, reason=str(error))
                await _send_error(stream, HandshakeRefused("handshake refused"))
                return
            while True:
                # Frames that came in the same packet as the Hello are already buffered.
                for payload in decoder.next_frames():
                    frame = decode_peer_frame(payload, config.group, peer, config.node_id)
                    if isinstance(frame, Address):
                        self._learned[peer] = frame
                    else:
                        self.deliver(frame)
                data = await stream.receive_some(READ_BYTES)
                if not data:
                    return
                decoder.receive_data(data)
        except ProtocolError as error:
            self.log.warning("peer_protocol_error", peer=peer, reason=str(error))
            await _send_error(stream, error)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            return
        finally:
            await trio.aclose_forcefully(stream)


_Queued = Message | bytes


def _check_certificate_names(stream: trio.SSLStream[Any], peer: str) -> None:
    """``HandshakeRefused`` unless the other end's certificate (checked against the CA by the
    TLS handshake) was issued to ``peer``: a member cannot pose as another one."""
    certificate = stream.getpeercert()
    names = [
        value
        for entry in (certificate or {}).get("subject", ())
        for key, value in entry
        if key == "commonName"
    ]
    if names != [peer]:
        raise HandshakeRefused(f"the certificate is {names}'s, not {peer!r}'s")


def encode_peer_message(message: Message, group: str) -> bytes:
    """The payload of the frame that carries ``message`` on a peer link."""
    return PEER_CODEC.encode(message, 0, group)


def encode_peer_messages(messages: list[Message] | tuple[Message, ...], group: str) -> bytes:
    """``messages`` as the frames a peer link carries."""
    return encode_frames([encode_peer_message(message, group) for message in messages])


def decode_peer_frame(payload: bytes, group: str, peer: str, me: str) -> Message | Address:
    """One frame's payload from ``peer``'s link to ``me``, checked: a Raft message of our
    group, from that peer to us, every field in range (``check_peer_message``), or the peer
    address a ``PeerAddress`` tells. Raises ``ProtocolError`` otherwise (the link is then
    closed); nothing of it reaches the core. Decoded once: this is the hot path."""
    decoded = PEER_CODEC.decode(payload)
    message = decoded.message
    if not isinstance(message, (*RAFT_MESSAGE_TYPES, PeerAddress)):
        raise ProtocolError(f"{type(message).__name__} is not a Raft message (after the handshake)")
    if decoded.group != group:
        raise ProtocolError(f"a message for group {decoded.group!r} on {peer}'s link")
    if isinstance(message, PeerAddress):
        try:
            return Address.parse(message.address)
        except ValueError as error:
            raise ProtocolError(f"PeerAddress from {peer}: {error}") from None
    check_peer_message(message, peer, me)
    return message


def decode_peer_message(payload: bytes, group: str, peer: str, me: str) -> Message:
    """``decode_peer_frame`` where only a Raft message may come (the simulator's links)."""
    message = decode_peer_frame(payload, group, peer, me)
    if isinstance(message, Address):
        raise ProtocolError("PeerAddress is not a Raft message")
    return message


async def _read_one(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> object:
    """The next message; whatever arrived after it stays in ``decoder``."""
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return PEER_CODEC.decode(frame).message
        data = await stream.receive_some(READ_BYTES)
        if not data:
            raise trio.BrokenResourceError("connection closed during the handshake")
        decoder.receive_data(data)


async def _send_error(stream: trio.abc.SendStream, error: DledgerError) -> None:
    reply = error_reply(error)
    with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(encode_frames([PEER_CODEC.encode(reply)]))
