"""Socket reads and writes that skip the scheduler when the socket is ready at once.

Trio's ``SocketStream.receive_some`` and ``send_all`` pass through the scheduler after every
call, even when the socket was ready; on this machine one pass costs tens of microseconds. Here
a read or write is tried first, and the task waits for the socket only when it must. A reader
whose data is always there already still yields now and then, so it cannot starve the other
tasks. Used by the client WebSocket (``websocket.py``) and the peer link's direct writes
(``raft/transport.py``); the peer link's reads stay on the stream, where measuring showed no
difference.
"""

from __future__ import annotations

import os
import select

import trio

#: A reader that never had to wait yields to the other tasks once per this many reads.
YIELD_EVERY_READS = 16


class SocketReader:
    """Reads from one connected socket; one task at a time."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._reads_without_waiting = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream. Raises ``OSError`` for a broken
        connection and ``trio.ClosedResourceError`` if the socket is closed meanwhile."""
        self._reads_without_waiting += 1
        if self._reads_without_waiting >= YIELD_EVERY_READS:
            self._reads_without_waiting = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return os.read(self.sock.fileno(), max_bytes)
            except BlockingIOError:
                pass
            self._reads_without_waiting = 0
            await trio.lowlevel.wait_readable(self.sock)


def write_now(sock: trio.socket.SocketType, data: bytes) -> int:
    """Write what the socket takes without waiting; returns how many bytes (0 if none).
    Only for a socket no task is writing to. Raises ``OSError`` for a broken connection."""
    try:
        return os.write(sock.fileno(), data)
    except BlockingIOError:
        return 0


def peer_has_closed(sock: trio.socket.SocketType) -> bool:
    """Whether the other side has closed or reset the connection, seen now without waiting
    or reading anything (Linux's ``POLLRDHUP``; elsewhere, a hang-up or error only)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | _POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (_POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return True
    return False


_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
