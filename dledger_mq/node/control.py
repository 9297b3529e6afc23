"""The control socket of ``cluster up``: how ``cluster kill|stop|start|...`` reach the supervisor.

The supervisor listens on a Unix socket ``ROOT/control.sock`` (mode 0600: only its owner may
take nodes down). One request per connection, one JSON line each way::

    {"verb": "kill", "node": "leader"}
    {"ok": true, "message": "killed n2 (the leader, pid 4242) ...", "nodes": [...]}

Only one supervisor runs per root: it holds an exclusive lock on ``ROOT/supervisor.lock`` for
its lifetime (released by the kernel however it ends), so a socket file left behind by a
supervisor that was killed is known to be stale and replaced.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from dledger_mq.errors import BadRequest, DledgerError

CONTROL_SOCKET_NAME = "control.sock"
LOCK_FILE_NAME = "supervisor.lock"
#: A request or reply line is far shorter; anything longer is refused.
MAX_LINE_BYTES = 64 << 10
#: A client that does not finish its request line within this long is dropped.
REQUEST_READ_SECONDS = 5.0
#: The longest a verb may take: a graceful stop waits for the node's hand-over and last fsync.
REPLY_WAIT_SECONDS = 60.0
#: Unix socket paths are limited to about 108 bytes (``sun_path``).
MAX_SOCKET_PATH_BYTES = 100


class Verb(enum.Enum):
    STATUS = "status"
    KILL = "kill"
    STOP = "stop"
    START = "start"
    RESTART = "restart"
    PAUSE = "pause"
    RESUME = "resume"
    #: Make a new node of a group and start it (`cluster add-replica` on a local cluster).
    ADD = "add"
    #: Stop a node for good: it was removed from its group (`cluster remove-replica`).
    RETIRE = "retire"


#: Verbs that take ``leader`` for "whichever node leads now".
LEADER_VERBS = frozenset({Verb.KILL, Verb.PAUSE, Verb.STOP, Verb.RESTART})


class SupervisorNotRunning(DledgerError):
    """No ``cluster up`` runs on ``root``: there is nobody to act on the nodes."""

    def __init__(self, root: Path, detail: str = "") -> None:
        self.root = root
        super().__init__(
            f"no `dledger-mq cluster up` is running in {root}{detail}; "
            f"start one there first (from the folder that holds {root})"
        )


class SupervisorAlreadyRunning(DledgerError):
    def __init__(self, root: Path, pid: str) -> None:
        self.root = root
        self.pid = pid
        shown = f" (pid {pid})" if pid else ""
        super().__init__(
            f"a `dledger-mq cluster up` already runs in {root}{shown}; "
            "use `dledger-mq cluster status` or its lab verbs from here"
        )


class ControlRefused(DledgerError):
    """The supervisor refused a verb; the message says why."""


@attrs.frozen
class ControlRequest:
    verb: Verb
    node: str | None = None

    def to_line(self) -> bytes:
        return json.dumps({"verb": self.verb.value, "node": self.node}).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> ControlRequest:
        """Raises ``BadRequest`` for anything that is not a well-formed request."""
        try:
            values = json.loads(line)
        except ValueError:
            raise BadRequest("a control request must be one JSON object") from None
        if not isinstance(values, dict) or set(values) - {"verb", "node"}:
            raise BadRequest('a control request is {"verb": ..., "node": ...}')
        try:
            verb = Verb(values.get("verb"))
        except ValueError:
            known = ", ".join(v.value for v in Verb)
            raise BadRequest(f"unknown verb {values.get('verb')!r}; known: {known}") from None
        node = values.get("node")
        if node is not None and not (isinstance(node, str) and 0 < len(node) <= 255):
            raise BadRequest("node must be a node id")
        if verb is not Verb.STATUS and node is None:
            raise BadRequest(f"{verb.value} needs a node")
        return cls(verb, node)


@attrs.frozen
class ControlReply:
    ok: bool
    message: str
    #: Every node: {"id", "state", "pid"}.
    nodes: tuple[dict[str, Any], ...] = ()

    def to_line(self) -> bytes:
        return (
            json.dumps({"ok": self.ok, "message": self.message, "nodes": list(self.nodes)}).encode()
            + b"\n"
        )

    @classmethod
    def from_line(cls, line: bytes) -> ControlReply:
        try:
            values = json.loads(line)
            return cls(bool(values["ok"]), str(values["message"]), tuple(values["nodes"]))
        except (ValueError, KeyError, TypeError):
            raise DledgerError("the supervisor answered with something unreadable") from None


def socket_path(root: Path) -> Path:
    return root / CONTROL_SOCKET_NAME


def _bindable(path: Path) -> str:
    """``path`` as short as it can be said: relative when that fits ``sun_path`` better."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    shortest = min(absolute, relative, key=len)
    if len(os.fsencode(shortest)) > MAX_SOCKET_PATH_BYTES:
        raise DledgerError(f"{absolute}: too long a path for a Unix socket; use a shorter --root")
    return shortest


# -- the supervisor's side -----------------------------------------------------------------------


@contextlib.contextmanager
def hold_supervisor_lock(root: Path) -> Any:
    """Be the only supervisor of ``root`` while inside; raises ``SupervisorAlreadyRunning``."""
    path = root / LOCK_FILE_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            raise SupervisorAlreadyRunning(root, holder) from None
        # Who holds it, for the message above; nothing reads it back after a restart.
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


Handler = Callable[[ControlRequest], Awaitable[ControlReply]]


async def serve_control(
    root: Path, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer control requests on ``ROOT/control.sock`` until cancelled; call it only while
    holding the supervisor lock (a socket file found there is a dead supervisor's)."""
    path = socket_path(root)
    bind_path = _bindable(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener_socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await listener_socket.bind(bind_path)
        os.chmod(path, 0o600)
        listener_socket.listen(16)
    except BaseException:
        listener_socket.close()
        raise
    listener = trio.SocketListener(listener_socket)
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_answer, stream, handle)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _answer(stream: trio.SocketStream, handle: Handler) -> None:
    async with stream:
        try:
            with trio.fail_after(REQUEST_READ_SECONDS):
                line = await _read_line(stream)
            reply = await handle(ControlRequest.from_line(line))
        except trio.TooSlowError:
            return
        except DledgerError as error:
            reply = ControlReply(False, str(error))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(reply.to_line())


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE_BYTES:
            raise BadRequest(f"a control line is at most {MAX_LINE_BYTES} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest("the connection closed before the end of the line")
        buffer += chunk
    return bytes(buffer[: buffer.index(b"\n")])


# -- the lab verbs' side -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connect(root: Path) -> AsyncIterator[trio.SocketStream]:
    path = socket_path(root)
    if not path.exists():
        raise SupervisorNotRunning(root)
    try:
        stream = await trio.open_unix_socket(_bindable(path))
    except OSError as error:
        if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise SupervisorNotRunning(root) from None
        raise DledgerError(f"cannot reach the supervisor at {path}: {error.strerror}") from None
    async with stream:
        yield stream


async def call_supervisor(root: Path, request: ControlRequest) -> ControlReply:
    """The supervisor's answer to ``request``; raises ``ControlRefused`` when it says no."""
    async with _connect(root) as stream:
        await stream.send_all(request.to_line())
        try:
            with trio.fail_after(REPLY_WAIT_SECONDS):
                line = await _read_line(stream)
        except trio.TooSlowError:
            raise DledgerError(
                f"the supervisor did not answer within {REPLY_WAIT_SECONDS:.0f} s"
            ) from None
        except BadRequest:
            raise DledgerError("the supervisor closed the connection without answering") from None
    reply = ControlReply.from_line(line)
    if not reply.ok:
        raise ControlRefused(reply.message)
    return reply
