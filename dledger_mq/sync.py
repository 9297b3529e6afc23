"""The SDK for blocking code (issue 19, item 2): Django views, scripts, notebooks.

``Producer`` and ``Consumer`` here take the same arguments and give the same results as the
Trio ones (``dledger_mq.clients``), as blocking calls::

    from dledger_mq.sync import Producer

    with Producer(naming="127.0.0.1:9876") as producer:
        receipt = producer.send("orders", b"hello", timeout=10)

They do not reimplement anything: the Trio clients run in one background thread that every
blocking client of the process shares (started with the first, ended when the last closes), and
each call waits for its result there, so a leader change is the same short pause and the
errors are the same classes. Calls are safe from several threads at once. Blocking code has no
cancel scopes, so each call takes ``timeout=`` (seconds; None waits as long as it takes) and
raises the builtin ``TimeoutError`` when it runs out (what was sent may still be stored; a
retried send is stored once, as always).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio

from dledger_mq.clients.consumer import Consumer as TrioConsumer
from dledger_mq.clients.consumer import ReceivedMessage
from dledger_mq.clients.producer import Producer as TrioProducer
from dledger_mq.wire.broker import Receipt

__all__ = ["Consumer", "Message", "Producer"]

T = TypeVar("T")


class _TrioThread:
    """One ``trio.run`` in a daemon thread, for every blocking client of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(
                target=trio.run, args=(self._main, ready), name="dledger-mq-trio", daemon=True
            )
            self._thread.start()
            ready.wait()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users or self._thread is None:
                return
            thread, stop = self._thread, self._stop
            assert stop is not None
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
            self._thread = self._token = self._nursery = self._stop = None
        thread.join()

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(
        self, function: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        """``await function(*args)`` in the Trio thread; its result or its exception here."""
        if self._token is None:
            raise RuntimeError("this client is closed")

        async def bounded() -> T:
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    return await function(*args)
            except trio.TooSlowError:
                raise TimeoutError(f"no answer within {timeout} s") from None

        return trio.from_thread.run(bounded, trio_token=self._token)

    def hold(self, make_client: Callable[[], Any]) -> _Held:
        """Make a Trio client and enter its ``async with`` in a task of the Trio thread (a
        client's constructor needs a Trio run), kept open until ``let_go``."""
        done = trio.Event()
        closed = trio.Event()
        outcome: dict[str, Any] = {}

        async def holder(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with make_client() as entered:
                    task_status.started(entered)
                    await closed.wait()
            except BaseException as error:  # noqa: BLE001 (handed to the closing thread)
                outcome["error"] = error
            finally:
                done.set()

        async def start() -> Any:
            assert self._nursery is not None
            return await self._nursery.start(holder)

        client = self.call(start)
        return _Held(client, closed, done, outcome)

    def let_go(self, held: _Held) -> None:
        """Leave the ``async with`` that ``hold`` entered; raise what leaving it raised."""
        trio.from_thread.run_sync(held.closed.set, trio_token=self._token)
        trio.from_thread.run(held.done.wait, trio_token=self._token)
        error = held.outcome.get("error")
        if error is not None and not isinstance(error, trio.Cancelled):
            raise error


@attrs.frozen
class _Held:
    client: Any
    closed: trio.Event
    done: trio.Event
    outcome: dict[str, Any]


_TRIO = _TrioThread()


def _enter(make_client: Callable[[], Any]) -> _Held:
    _TRIO.acquire()
    try:
        return _TRIO.hold(make_client)
    except BaseException:
        _TRIO.release()
        raise


def _leave(held: _Held) -> None:
    try:
        _TRIO.let_go(held)
    finally:
        _TRIO.release()


class Producer:
    """``dledger_mq.clients.Producer`` as blocking calls (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioProducer, *args, **kwargs)
        self._held: _Held | None = None

    def __enter__(self) -> Producer:
        self._held = _enter(self._make)
        return self

    @property
    def _client(self) -> TrioProducer:
        if self._held is None:
            raise RuntimeError("use the producer in a `with` block")
        client: TrioProducer = self._held.client
        return client

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            _leave(held)

    def send(
        self, topic: str, body: bytes, *, timeout: float | None = None, **options: Any
    ) -> Receipt:
        """As the Trio ``send`` (``tags``, ``keys``, ``properties``, ``sharding_key``,
        ``delay``, ``deliver_at``); ``TimeoutError`` after ``timeout`` seconds."""
        return _TRIO.call(self._send, topic, body, options, timeout=timeout)

    async def _send(self, topic: str, body: bytes, options: dict[str, Any]) -> Receipt:
        return await self._client.send(topic, body, **options)

    def send_batch(
        self,
        topic: str,
        bodies: Sequence[bytes],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> list[Receipt]:
        return _TRIO.call(self._send_batch, topic, bodies, options, timeout=timeout)

    async def _send_batch(
        self, topic: str, bodies: Sequence[bytes], options: dict[str, Any]
    ) -> list[Receipt]:
        return await self._client.send_batch(topic, bodies, **options)


class Message:
    """A received message: the Trio ``ReceivedMessage``'s fields, and blocking ``ack`` and
    ``nack``."""

    def __init__(self, message: ReceivedMessage) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ack(self, timeout: float | None = None) -> None:
        _TRIO.call(self._message.ack, timeout=timeout)

    def nack(self, error: str | BaseException | None = None, timeout: float | None = None) -> None:
        _TRIO.call(self._message.nack, error, timeout=timeout)


class Consumer:
    """``dledger_mq.clients.Consumer`` as blocking calls: ``for message in consumer`` (each
    message acknowledged with ``message.ack()``), or ``receive(timeout=)`` for one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioConsumer, *args, **kwargs)
        self._held: _Held | None = None

    def __enter__(self) -> Consumer:
        self._held = _enter(self._make)
        return self

    @property
    def _client(self) -> TrioConsumer:
        if self._held is None:
            raise RuntimeError("use the consumer in a `with` block")
        client: TrioConsumer = self._held.client
        return client

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            _leave(held)

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` if none came within ``timeout`` seconds."""
        return Message(_TRIO.call(self._client.__anext__, timeout=timeout))

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.receive()
