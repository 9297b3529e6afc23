"""The SDK for asyncio applications (issue 19, item 1): FastAPI, aiohttp, bots and workers.

``Producer``, ``Consumer``, ``SimpleConsumer`` and ``Admin`` here take the same arguments and
give the same results as the Trio ones (``dledger_mq.clients``; ``Admin`` is
``dledger_mq.clients.admin.connect_admin``'s connection to one node), as asyncio coroutines::

    from dledger_mq.aio import Producer

    async with Producer(naming="127.0.0.1:9876") as producer:
        receipt = await producer.send("orders", b"hello")

They do not reimplement anything: the Trio clients run in Trio's guest mode on the running
asyncio loop (``trio.lowlevel.start_guest_run``: Trio's scheduler driven by the loop, in the
loop's thread), one guest run per loop shared by all its clients, started with the first and
ended when the last closes. So a leader change is the same short pause and the errors are the
same classes. Cancelling the asyncio task that awaits a call (``asyncio.timeout``,
``task.cancel()``) cancels the Trio operation underneath.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import attrs
import trio

from dledger_mq.clients import tracing
from dledger_mq.clients.admin import ADMIN_METHODS, AdminConnection, connect_admin
from dledger_mq.clients.consumer import Consumer as TrioConsumer
from dledger_mq.clients.consumer import ReceivedMessage
from dledger_mq.clients.held import HeldClient
from dledger_mq.clients.producer import Producer as TrioProducer
from dledger_mq.clients.simple_consumer import RECEIVE_WAIT, SimpleMessage
from dledger_mq.clients.simple_consumer import SimpleConsumer as TrioSimpleConsumer
from dledger_mq.errors import UsageError, sole_error_unwrapped
from dledger_mq.wire.broker import Receipt
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.tls import TlsOption

__all__ = ["Admin", "Consumer", "Message", "Producer", "SimpleConsumer", "SimpleMessage"]

T = TypeVar("T")


class _GuestRun:
    """Trio as a guest of one asyncio loop, for every client of that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self.stop: trio.Event | None = None
        self.ended: asyncio.Future[None] = loop.create_future()

    async def start(self) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()

        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                ready.set_result(None)
                await self.stop.wait()
                nursery.cancel_scope.cancel()

        def done(outcome: Any) -> None:
            if not self.ended.done():
                self.ended.set_result(None)
            if not ready.done():
                ready.set_exception(RuntimeError(f"Trio's guest run ended: {outcome!r}"))

        trio.lowlevel.start_guest_run(
            main,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            # From the loop's own thread, Trio schedules without the self-pipe.
            run_sync_soon_not_threadsafe=self.loop.call_soon,
            done_callback=done,
        )
        await ready

    async def end(self) -> None:
        assert self.token is not None and self.stop is not None
        self.token.run_sync_soon(self.stop.set)
        await self.ended

    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)`` in Trio; cancelling the caller cancels it there."""
        assert self.token is not None and self.nursery is not None
        nursery = self.nursery
        result: asyncio.Future[T] = self.loop.create_future()
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    value = await function(*args)
                except trio.Cancelled:
                    raise
                except BaseException as error:  # noqa: BLE001 (handed to the asyncio caller)
                    if not result.done():
                        result.set_exception(error)
                    return
                if not result.done():
                    result.set_result(value)
            if not result.done():
                result.cancel()  # cancelled from the asyncio side

        self.token.run_sync_soon(nursery.start_soon, run)
        try:
            return await result
        except asyncio.CancelledError:
            self.token.run_sync_soon(scope.cancel)
            raise


@attrs.define
class _LoopState:
    """The guest run of one loop, and who is starting or ending it right now."""

    lock: asyncio.Lock
    run: _GuestRun | None = None
    #: Coroutines inside ``_acquire`` or ``_release`` for this loop.
    busy: int = 0


#: Only loops with a guest run, or a client starting or closing: an entry left for every loop
#: that ever had a client would keep each loop alive (an asyncio.Lock holds its loop), and a
#: program that calls ``asyncio.run`` per request would grow without bound.
_LOOPS: dict[asyncio.AbstractEventLoop, _LoopState] = {}


def _state_of(loop: asyncio.AbstractEventLoop) -> _LoopState:
    state = _LOOPS.get(loop)
    if state is None:
        state = _LOOPS[loop] = _LoopState(asyncio.Lock())
    state.busy += 1
    return state


def _done_with(loop: asyncio.AbstractEventLoop, state: _LoopState) -> None:
    state.busy -= 1
    if state.run is None and not state.busy:
        _LOOPS.pop(loop, None)


async def _acquire() -> _GuestRun:
    loop = asyncio.get_running_loop()
    state = _state_of(loop)
    try:
        async with state.lock:
            if state.run is None:
                run = _GuestRun(loop)
                await run.start()
                state.run = run
            state.run.users += 1
            return state.run
    finally:
        _done_with(loop, state)


async def _release(run: _GuestRun) -> None:
    state = _state_of(run.loop)
    try:
        async with state.lock:
            run.users -= 1
            if run.users:
                return
            state.run = None
            await run.end()
    finally:
        _done_with(run.loop, state)


@attrs.frozen
class _Held:
    run: _GuestRun
    holder: HeldClient

    @property
    def client(self) -> Any:
        return self.holder.client


async def _enter(make_client: Callable[[], Any]) -> _Held:
    """A Trio client made and entered in a task of the loop's guest run, kept open until
    ``_leave``."""
    run = await _acquire()
    holder = HeldClient(make_client)

    async def open_in_guest() -> Any:
        assert run.nursery is not None
        return await holder.open(run.nursery)

    try:
        await run.call(open_in_guest)
    except BaseException:
        await _release(run)
        raise
    return _Held(run, holder)


async def _leave(held: _Held) -> None:
    try:
        await held.run.call(held.holder.release)
    finally:
        await _release(held.run)


class _Client:
    """One Trio client, entered in the loop's guest run for the length of an ``async with``."""

    _held: _Held | None = None
    _make: Callable[[], Any]

    async def __aenter__(self) -> Self:
        if self._held is not None:
            raise RuntimeError(f"this {type(self).__name__} is open already")
        self._held = await _enter(self._make)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await _leave(held)

    @property
    def _entered(self) -> _Held:
        if self._held is None:
            raise RuntimeError(f"use the {type(self).__name__} in an `async with` block")
        return self._held

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``await client.name(*args, **kwargs)`` on the Trio client, in the guest run."""
        held = self._entered
        return await held.run.call(functools.partial(getattr(held.client, name), *args, **kwargs))


class Producer(_Client):
    """``dledger_mq.clients.Producer`` for asyncio (same arguments and results)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioProducer, *args, **kwargs)

    async def send(self, topic: str, body: bytes, **options: Any) -> Receipt:
        """As the Trio ``send`` (``tags``, ``keys``, ``properties``, ``sharding_key``,
        ``delay``, ``deliver_at``)."""
        receipt: Receipt = await self._call("send", topic, body, **options)
        return receipt

    async def send_batch(
        self, topic: str, bodies: Sequence[bytes], **options: Any
    ) -> list[Receipt]:
        receipts: list[Receipt] = await self._call("send_batch", topic, bodies, **options)
        return receipts


class Message:
    """A received message: the Trio ``ReceivedMessage``'s fields, and ``await ack()`` and
    ``await nack()``."""

    def __init__(self, message: ReceivedMessage, run: _GuestRun) -> None:
        self._message = message
        self._guest = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    async def ack(self) -> None:
        await self._guest.call(self._message.ack)

    async def nack(self, error: str | BaseException | None = None) -> None:
        await self._guest.call(self._message.nack, error)


class Consumer(_Client):
    """``dledger_mq.clients.Consumer`` for asyncio: ``async for message in consumer``, each
    message acknowledged with ``await message.ack()``, or ``await consumer.run(handler)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioConsumer, *args, **kwargs)

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        return Message(await self._call("__anext__"), self._entered.run)

    async def run(
        self, handler: Callable[[Message], Awaitable[object]], *, concurrency: int = 1
    ) -> None:
        """As the Trio ``run``: hand every message to the coroutine function ``handler`` (an
        asyncio one), ``concurrency`` at a time, until cancelled; acknowledged when it returns
        (unless it settled the message itself), nacked with the exception when it raises."""
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        trio_consumer: TrioConsumer = self._entered.client
        model = "broadcasting" if trio_consumer.broadcasting else "clustering"

        async def work() -> None:
            async for message in self:
                with tracing.processing(trio_consumer.group, message, consumption_model=model) as (
                    outcome
                ):
                    try:
                        await handler(message)
                    except Exception as error:  # the application's failure: a retry
                        outcome.failed(error)
                        await message.nack(error)
                    else:
                        await message.ack()

        with sole_error_unwrapped():  # as the Trio run: one error comes out as itself
            async with asyncio.TaskGroup() as tasks:
                for _ in range(concurrency):
                    tasks.create_task(work())


class SimpleConsumer(_Client):
    """``dledger_mq.clients.SimpleConsumer`` for asyncio (RocketMQ 5's receive, ack and
    change-invisible-duration); the messages are the Trio ``SimpleMessage``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioSimpleConsumer, *args, **kwargs)

    async def receive(
        self,
        max_messages: int = 16,
        invisible_duration: timedelta = timedelta(seconds=30),
        wait: timedelta = RECEIVE_WAIT,
    ) -> list[SimpleMessage]:
        received: list[SimpleMessage] = await self._call(
            "receive", max_messages, invisible_duration, wait
        )
        return received

    async def ack(self, message: SimpleMessage) -> bool:
        acked: bool = await self._call("ack", message)
        return acked

    async def change_invisible_duration(self, message: SimpleMessage, duration: timedelta) -> bool:
        changed: bool = await self._call("change_invisible_duration", message, duration)
        return changed


class Admin(_Client):
    """``dledger_mq.clients.admin.connect_admin`` for asyncio: a connection to one node's
    client address, with every method of ``AdminConnection`` as a coroutine (``await
    admin.create_topic("orders", 8)``, ``await admin.list_topics()``, ...)."""

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

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(name, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = getattr(AdminConnection, name).__doc__
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *ADMIN_METHODS})
