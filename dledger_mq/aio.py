"""The SDK for asyncio applications (issue 19, item 1): FastAPI, aiohttp, bots and workers.

``Producer`` and ``Consumer`` here take the same arguments and give the same results as the
Trio ones (``dledger_mq.clients``), as asyncio coroutines::

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


_RUNS: dict[asyncio.AbstractEventLoop, _GuestRun] = {}
_STARTING: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


async def _acquire() -> _GuestRun:
    loop = asyncio.get_running_loop()
    lock = _STARTING.setdefault(loop, asyncio.Lock())
    async with lock:
        run = _RUNS.get(loop)
        if run is None:
            run = _RUNS[loop] = _GuestRun(loop)
            try:
                await run.start()
            except BaseException:
                del _RUNS[loop]
                raise
        run.users += 1
        return run


async def _release(run: _GuestRun) -> None:
    async with _STARTING[run.loop]:
        run.users -= 1
        if run.users:
            return
        del _RUNS[run.loop]
        await run.end()


@attrs.frozen
class _Held:
    run: _GuestRun
    client: Any
    closed: trio.Event
    done: trio.Event
    outcome: dict[str, Any]


async def _enter(make_client: Callable[[], Any]) -> _Held:
    """A Trio client made and entered (``async with``) in a task of the guest run, kept open
    until ``_leave``."""
    run = await _acquire()
    closed, done, outcome = trio.Event(), trio.Event(), {}

    async def holder(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with make_client() as entered:
                task_status.started(entered)
                await closed.wait()
        except BaseException as error:  # noqa: BLE001 (handed to the closing task)
            outcome["error"] = error
        finally:
            done.set()

    async def start() -> Any:
        assert run.nursery is not None
        return await run.nursery.start(holder)

    try:
        client = await run.call(start)
    except BaseException:
        await _release(run)
        raise
    return _Held(run, client, closed, done, outcome)


async def _leave(held: _Held) -> None:
    async def close() -> None:
        held.closed.set()
        await held.done.wait()

    try:
        await held.run.call(close)
    finally:
        await _release(held.run)
    error = held.outcome.get("error")
    if error is not None and not isinstance(error, trio.Cancelled):
        raise error


class _Client:
    _held: _Held | None = None

    @property
    def _entered(self) -> _Held:
        if self._held is None:
            raise RuntimeError(f"use the {type(self).__name__.lower()} in an `async with` block")
        return self._held

    async def aclose(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await _leave(held)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class Producer(_Client):
    """``dledger_mq.clients.Producer`` for asyncio (same arguments and results)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioProducer, *args, **kwargs)

    async def __aenter__(self) -> Producer:
        self._held = await _enter(self._make)
        return self

    async def send(self, topic: str, body: bytes, **options: Any) -> Receipt:
        """As the Trio ``send`` (``tags``, ``keys``, ``properties``, ``sharding_key``,
        ``delay``, ``deliver_at``)."""
        held = self._entered
        return await held.run.call(functools.partial(held.client.send, topic, body, **options))

    async def send_batch(
        self, topic: str, bodies: Sequence[bytes], **options: Any
    ) -> list[Receipt]:
        held = self._entered
        return await held.run.call(
            functools.partial(held.client.send_batch, topic, bodies, **options)
        )


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
    message acknowledged with ``await message.ack()``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make = functools.partial(TrioConsumer, *args, **kwargs)

    async def __aenter__(self) -> Consumer:
        self._held = await _enter(self._make)
        return self

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        held = self._entered
        return Message(await held.run.call(held.client.__anext__), held.run)
