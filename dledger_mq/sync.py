"""The SDK for blocking code (issue 19, item 2): Django views, scripts, notebooks.

``Producer``, ``Consumer``, ``SimpleConsumer`` and ``Admin`` here take the same arguments and
give the same results as the Trio ones (``dledger_mq.clients``; ``Admin`` is
``dledger_mq.clients.admin.connect_admin``'s connection to one node), as blocking calls::

    from dledger_mq.sync import Producer

    with Producer(naming="127.0.0.1:9876") as producer:
        receipt = producer.send("orders", b"hello", timeout=10)

They do not reimplement anything: the Trio clients run in one background thread that every
blocking client of the process shares (started with the first, ended when the last closes), and
each call waits for its result there, so a leader change is the same short pause and the
errors are the same classes. Calls are safe from several threads at once. Blocking code has no
cancel scopes, so each call takes ``timeout=`` (seconds; None waits as long as it takes) and
raises the builtin ``TimeoutError`` when it runs out (what was sent may still be stored; a
retried send is stored once, as always). Ctrl-C (``KeyboardInterrupt``) during a call cancels
the operation underneath, and the client goes on working.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import trio

from dledger_mq.clients import tracing
from dledger_mq.clients.admin import ADMIN_METHODS, AdminConnection, connect_admin
from dledger_mq.clients.consumer import Consumer as TrioConsumer
from dledger_mq.clients.consumer import ReceivedMessage
from dledger_mq.clients.held import HeldClient
from dledger_mq.clients.producer import Producer as TrioProducer
from dledger_mq.clients.simple_consumer import RECEIVE_WAIT, SimpleMessage
from dledger_mq.clients.simple_consumer import SimpleConsumer as TrioSimpleConsumer
from dledger_mq.errors import UsageError
from dledger_mq.wire.broker import Receipt
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.tls import TlsOption

__all__ = ["Admin", "Consumer", "Message", "Producer", "SimpleConsumer", "SimpleMessage"]

T = TypeVar("T")

#: How often ``Consumer.run``'s threads look up from an empty queue to see whether to stop.
RUN_POLL_SECONDS = 1.0


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
        """``await function(*args)`` in the Trio thread; its result or its exception here. If
        the waiting thread is interrupted (Ctrl-C), the operation is cancelled there."""
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            raise RuntimeError("this client is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking call from inside the client's own Trio thread")
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()

        async def run() -> None:
            try:
                with scope:
                    if timeout is not None:
                        scope.deadline = trio.current_time() + timeout
                    try:
                        value = await function(*args)
                    except trio.Cancelled:
                        raise
                    except BaseException as error:  # noqa: BLE001 (handed to the caller)
                        result.set_exception(error)
                    else:
                        result.set_result(value)
                if not result.done():
                    result.set_exception(TimeoutError(f"no answer within {timeout} s"))
            finally:
                if not result.done():  # the Trio thread itself is ending
                    result.set_exception(RuntimeError("the client closed"))

        token.run_sync_soon(nursery.start_soon, run)
        try:
            return result.result()
        except BaseException:
            if not result.done():  # interrupted while waiting: stop it there
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)
            raise

    def hold(self, make_client: Callable[[], Any]) -> HeldClient:
        """A Trio client made and entered in a task of the Trio thread, kept open until
        ``let_go``."""
        holder = HeldClient(make_client)

        async def open_in_thread() -> Any:
            assert self._nursery is not None
            return await holder.open(self._nursery)

        self.call(open_in_thread)
        return holder

    def let_go(self, holder: HeldClient) -> None:
        """Leave the ``async with`` that ``hold`` entered; raise what leaving it raised."""
        trio.from_thread.run(holder.release, trio_token=self._token)


_TRIO = _TrioThread()


class _Client:
    """One Trio client, entered in the shared Trio thread for the length of a ``with``."""

    _held: HeldClient | None = None
    _make: Callable[[], Any]

    def __enter__(self) -> Self:
        if self._held is not None:
            raise RuntimeError(f"this {type(self).__name__} is open already")
        _TRIO.acquire()
        try:
            self._held = _TRIO.hold(self._make)
        except BaseException:
            _TRIO.release()
            raise
        return self

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
            try:
                _TRIO.let_go(held)
            finally:
                _TRIO.release()

    @property
    def _client(self) -> Any:
        if self._held is None:
            raise RuntimeError(f"use the {type(self).__name__} in a `with` block")
        return self._held.client

    def _call(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """``await client.name(*args, **kwargs)`` on the Trio client, in the Trio thread."""
        method = functools.partial(getattr(self._client, name), *args, **kwargs)
        return _TRIO.call(method, timeout=timeout)


class Producer(_Client):
    """``dledger_mq.clients.Producer`` as blocking calls (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioProducer, *args, **kwargs)

    def send(
        self, topic: str, body: bytes, *, timeout: float | None = None, **options: Any
    ) -> Receipt:
        """As the Trio ``send`` (``tags``, ``keys``, ``properties``, ``sharding_key``,
        ``delay``, ``deliver_at``); ``TimeoutError`` after ``timeout`` seconds."""
        receipt: Receipt = self._call("send", topic, body, timeout=timeout, **options)
        return receipt

    def send_batch(
        self,
        topic: str,
        bodies: Sequence[bytes],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> list[Receipt]:
        receipts: list[Receipt] = self._call(
            "send_batch", topic, bodies, timeout=timeout, **options
        )
        return receipts


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


class Consumer(_Client):
    """``dledger_mq.clients.Consumer`` as blocking calls: ``for message in consumer`` (each
    message acknowledged with ``message.ack()``), ``receive(timeout=)`` for one, or
    ``run(handler)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioConsumer, *args, **kwargs)

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` if none came within ``timeout`` seconds."""
        return Message(self._call("__anext__", timeout=timeout))

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.receive()

    def run(self, handler: Callable[[Message], object], *, concurrency: int = 1) -> None:
        """As the Trio ``run``: hand every message to ``handler`` (a plain function),
        ``concurrency`` threads at a time (this one and ``concurrency - 1`` more); acknowledged
        when it returns (unless it settled the message itself), nacked with the exception when
        it raises. Runs until interrupted (Ctrl-C) or the consumer is closed; then the other
        threads finish the message they hold and stop."""
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        trio_consumer: TrioConsumer = self._client
        model = "broadcasting" if trio_consumer.broadcasting else "clustering"
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set() and self._held is not None:
                try:
                    message = self.receive(timeout=RUN_POLL_SECONDS)
                except TimeoutError:
                    continue
                except RuntimeError:
                    if self._held is None:
                        return  # closed meanwhile
                    raise
                with tracing.processing(trio_consumer.group, message, consumption_model=model) as (
                    outcome
                ):
                    try:
                        handler(message)
                    except Exception as error:  # the application's failure: a retry
                        outcome.failed(error)
                        message.nack(error)
                    else:
                        message.ack()

        failures: list[BaseException] = []

        def helper() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 (raised again in the calling thread)
                failures.append(error)
            finally:
                stop.set()

        helpers = [
            threading.Thread(target=helper, name=f"dledger-mq-handler-{number}", daemon=True)
            for number in range(1, concurrency)
        ]
        for thread in helpers:
            thread.start()
        try:
            work()
        finally:
            stop.set()
            for thread in helpers:
                thread.join()
        if failures:
            raise failures[0]


class SimpleConsumer(_Client):
    """``dledger_mq.clients.SimpleConsumer`` as blocking calls (RocketMQ 5's receive, ack and
    change-invisible-duration); the messages are the Trio ``SimpleMessage``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioSimpleConsumer, *args, **kwargs)

    def receive(
        self,
        max_messages: int = 16,
        invisible_duration: timedelta = timedelta(seconds=30),
        wait: timedelta = RECEIVE_WAIT,
        *,
        timeout: float | None = None,
    ) -> list[SimpleMessage]:
        received: list[SimpleMessage] = self._call(
            "receive", max_messages, invisible_duration, wait, timeout=timeout
        )
        return received

    def ack(self, message: SimpleMessage, *, timeout: float | None = None) -> bool:
        acked: bool = self._call("ack", message, timeout=timeout)
        return acked

    def change_invisible_duration(
        self, message: SimpleMessage, duration: timedelta, *, timeout: float | None = None
    ) -> bool:
        changed: bool = self._call("change_invisible_duration", message, duration, timeout=timeout)
        return changed


class Admin(_Client):
    """``dledger_mq.clients.admin.connect_admin`` as blocking calls: a connection to one
    node's client address, with every method of ``AdminConnection`` (``admin.create_topic(
    "orders", 8)``, ``admin.list_topics()``, ...), each also taking ``timeout=``."""

    def __init__(
        self,
        address: str,
        cluster_id: str = "local",
        credentials: Credentials | tuple[str, str] | None = None,
        tls: TlsOption = None,
    ) -> None:
        self._make = functools.partial(connect_admin, address, cluster_id, credentials, tls)

    def __getattr__(self, name: str) -> Any:
        if name not in ADMIN_METHODS:
            raise AttributeError(f"{type(self).__name__!r} has no method {name!r}")

        def call(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            return self._call(name, *args, timeout=timeout, **kwargs)

        call.__name__ = name
        call.__doc__ = getattr(AdminConnection, name).__doc__
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *ADMIN_METHODS})
