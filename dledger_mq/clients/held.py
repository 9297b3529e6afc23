"""A Trio client held open across calls from outside Trio: how ``dledger_mq.aio`` and
``dledger_mq.sync`` keep a client's ``async with`` open between the application's calls.

A task of its own enters the client's ``async with`` (a client's constructor and its
connections need a Trio run) and waits there until ``release``; leaving it is the client's
usual close (a consumer's final commit included)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio


class HeldClient:
    def __init__(self, make_client: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._make_client = make_client
        self.client: Any = None
        self._release = trio.Event()
        self._left = trio.Event()
        self._error: BaseException | None = None

    async def open(self, nursery: trio.Nursery) -> Any:
        """Make and enter the client in a task of ``nursery``; raises what making or entering
        it raised."""
        self.client = await nursery.start(self._hold)
        return self.client

    async def release(self) -> None:
        """Leave the client's ``async with``; raises what leaving it raised."""
        self._release.set()
        await self._left.wait()
        if self._error is not None and not isinstance(self._error, trio.Cancelled):
            raise self._error

    async def _hold(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        entered = False
        try:
            async with self._make_client() as client:
                task_status.started(client)
                entered = True
                await self._release.wait()
        except BaseException as error:  # noqa: BLE001 (handed to whoever releases it)
            if not entered:
                raise  # the client could not be made or opened: the caller's error
            self._error = error
        finally:
            self._left.set()
