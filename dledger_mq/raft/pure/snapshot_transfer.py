"""Sending a leader's snapshot to a follower whose next entries were trimmed: InstallSnapshot.

The core only says *that* a follower needs the snapshot (``SnapshotNeeded``) and, on the
follower, takes it in once it is durable (``InstallSnapshot``). Moving the bytes is this
module's, run by the driver with the replica's snapshot files behind ``SnapshotFiles``:

- The leader sends its newest snapshot file in chunks of at most ``chunk_bytes``, one at a time
  (a snapshot holds no message bodies, so it is small next to the log: one round trip per chunk
  is plenty), each with the CRC32C of its bytes.
- The follower appends a chunk that starts where what it holds of that snapshot ends, and
  answers every chunk with how much it holds (``SnapshotChunkAck``); the leader goes on from
  there. So a transfer resumes where it stopped after a dropped link, a lost message or a
  restart of either side (the follower's partial file survives; the leader starts with an empty
  probe chunk to learn how much the follower holds).
- A chunk not answered within ``resend_ticks`` is sent again; a transfer ends when the follower
  holds the whole file, when this replica stops leading, or when the core no longer needs it.
- The follower checks the whole file (header, checksum, index and term) before it is kept as a
  snapshot; one that does not check is dropped and the transfer starts again from 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from crc32c import crc32c

from dledger_mq.errors import SnapshotError
from dledger_mq.raft.pure.messages import (
    MAX_SNAPSHOT_CHUNK_BYTES,
    InstallSnapshot,
    Message,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotNeeded,
)

#: Ticks without an answer before a chunk is sent again.
RESEND_TICKS = 10


@attrs.frozen
class SnapshotInfo:
    index: int
    term: int
    total_bytes: int


class SnapshotFiles(Protocol):
    """A replica's snapshot files, as the transfer reads and writes them."""

    def newest(self) -> SnapshotInfo | None:
        """The newest whole snapshot this replica has (what a leader sends)."""
        ...

    def read_chunk(self, index: int, offset: int, max_bytes: int) -> bytes | None:
        """Up to ``max_bytes`` of snapshot ``index``'s file from ``offset``; None if it is gone."""
        ...

    def received(self, index: int, term: int) -> int:
        """How many bytes of the snapshot (index, term) being received are held (0: none)."""
        ...

    def receive(self, index: int, term: int, offset: int, data: bytes) -> None:
        """Add ``data`` at ``offset`` (== ``received``); at 0 any other partial one goes."""
        ...

    def finish_receiving(self, index: int, term: int, total_bytes: int) -> bytes | None:
        """Check what was received as a whole snapshot of (index, term) and keep it, durably, as
        the newest; returns the group's membership it records (b"" if none), or None (and the
        partial file goes) if it does not check."""
        ...


@attrs.define
class _Outgoing:
    info: SnapshotInfo
    #: Where the follower's copy ends, as it last told us (0 until it answers).
    next_offset: int = 0
    ticks_unanswered: int = 0


def _ignore(*_: object, **__: object) -> None:
    pass


class SnapshotTransfers:
    """Both ends of InstallSnapshot for one replica: ``send`` queues messages for the driver."""

    def __init__(
        self,
        node_id: str,
        files: SnapshotFiles,
        send: Callable[[Message], None],
        *,
        chunk_bytes: int = MAX_SNAPSHOT_CHUNK_BYTES,
        resend_ticks: int = RESEND_TICKS,
        on_event: Callable[..., None] = _ignore,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_SNAPSHOT_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes {chunk_bytes} out of range")
        self.node_id = node_id
        self.files = files
        self.send = send
        self.chunk_bytes = chunk_bytes
        self.resend_ticks = resend_ticks
        #: Structured events for the runtime's log: ``on_event(name, **fields)``.
        self.on_event = on_event
        self._outgoing: dict[str, _Outgoing] = {}
        self._term = 0

    @property
    def sending_to(self) -> tuple[str, ...]:
        return tuple(self._outgoing)

    # -- the leader's side -----------------------------------------------------------------

    def needed(self, request: SnapshotNeeded) -> None:
        """The core asks for a transfer to ``request.target`` (again, while one runs: ignored)."""
        if request.term != self._term:
            self._outgoing.clear()
            self._term = request.term
        if request.target in self._outgoing:
            return
        try:
            info = self.files.newest()
        except (OSError, SnapshotError) as error:
            self.on_event("snapshot_unreadable", peer=request.target, error=str(error))
            return
        if info is None:
            self.on_event("snapshot_missing", peer=request.target)
            return
        transfer = _Outgoing(info)
        self._outgoing[request.target] = transfer
        self.on_event("snapshot_send_started", peer=request.target, index=info.index)
        # An empty chunk first: the follower answers how much of this snapshot it holds.
        self._send_chunk(request.target, transfer, probe=True)

    def acked(self, ack: SnapshotChunkAck) -> None:
        transfer = self._outgoing.get(ack.source)
        if (
            transfer is None
            or ack.term != self._term
            or (ack.index, ack.snapshot_term) != (transfer.info.index, transfer.info.term)
        ):
            return
        transfer.ticks_unanswered = 0
        transfer.next_offset = min(ack.next_offset, transfer.info.total_bytes)
        if transfer.next_offset >= transfer.info.total_bytes:
            del self._outgoing[ack.source]
            self.on_event("snapshot_sent", peer=ack.source, index=transfer.info.index)
            return
        self._send_chunk(ack.source, transfer, probe=False)

    def tick(self, still_needed: Callable[[str], bool]) -> None:
        """Send unanswered chunks again; drop transfers the core no longer needs."""
        for peer, transfer in list(self._outgoing.items()):
            if not still_needed(peer):
                del self._outgoing[peer]
                continue
            transfer.ticks_unanswered += 1
            if transfer.ticks_unanswered >= self.resend_ticks:
                transfer.ticks_unanswered = 0
                self._send_chunk(peer, transfer, probe=False)

    def stop_sending(self) -> None:
        """This replica no longer leads."""
        self._outgoing.clear()

    def _send_chunk(self, peer: str, transfer: _Outgoing, probe: bool) -> None:
        info = transfer.info
        data = b""
        if not probe:
            try:
                read = self.files.read_chunk(info.index, transfer.next_offset, self.chunk_bytes)
            except OSError as error:
                self.on_event("snapshot_unreadable", peer=peer, error=str(error))
                read = None
            if read is None:
                # A newer snapshot replaced it meanwhile: send that one instead.
                del self._outgoing[peer]
                self.needed(SnapshotNeeded(term=self._term, source=self.node_id, target=peer))
                return
            data = read
        self.send(
            SnapshotChunk(
                term=self._term,
                source=self.node_id,
                target=peer,
                index=info.index,
                snapshot_term=info.term,
                total_bytes=info.total_bytes,
                offset=transfer.next_offset,
                data=data,
                checksum=crc32c(data),
            )
        )

    # -- the follower's side ---------------------------------------------------------------

    def received_chunk(
        self, chunk: SnapshotChunk, committed: int, install: Callable[[InstallSnapshot], None]
    ) -> None:
        """Take in ``chunk`` (a follower whose log is committed up to ``committed``); once the
        whole snapshot is durable here, ``install`` hands it to the core."""
        key = (chunk.index, chunk.snapshot_term)
        installed = InstallSnapshot(
            term=chunk.term,
            source=chunk.source,
            target=self.node_id,
            index=chunk.index,
            snapshot_term=chunk.snapshot_term,
        )
        if chunk.index <= committed:
            # Held already (its answer may have been lost): the core says so again.
            install(installed)
            self._ack(chunk, chunk.total_bytes)
            return
        try:
            held = self.files.received(*key)
            if chunk.offset == held and chunk.data:
                if crc32c(chunk.data) != chunk.checksum:
                    self.on_event("snapshot_chunk_damaged", peer=chunk.source, offset=chunk.offset)
                    self._ack(chunk, held)
                    return
                self.files.receive(chunk.index, chunk.snapshot_term, chunk.offset, chunk.data)
                held += len(chunk.data)
            membership = (
                self.files.finish_receiving(chunk.index, chunk.snapshot_term, chunk.total_bytes)
                if held >= chunk.total_bytes
                else None
            )
            complete = membership is not None
        except (OSError, SnapshotError) as error:
            # The partial file is not to be trusted now: start over (a later chunk at 0 does).
            self.on_event("snapshot_receive_failed", peer=chunk.source, error=str(error))
            self._ack(chunk, 0)
            return
        if held >= chunk.total_bytes:
            if not complete:
                self.on_event("snapshot_received_damaged", peer=chunk.source, index=chunk.index)
                self._ack(chunk, 0)
                return
            self.on_event("snapshot_received", peer=chunk.source, index=chunk.index)
            install(attrs.evolve(installed, membership=membership or b""))
            self._ack(chunk, chunk.total_bytes)
            return
        self._ack(chunk, held)

    def _ack(self, chunk: SnapshotChunk, next_offset: int) -> None:
        self.send(
            SnapshotChunkAck(
                term=chunk.term,
                source=self.node_id,
                target=chunk.source,
                index=chunk.index,
                snapshot_term=chunk.snapshot_term,
                next_offset=next_offset,
            )
        )
