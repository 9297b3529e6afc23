"""``sole_error_unwrapped``: a nursery of the SDK's own (``Consumer.run``'s handlers) lets one
error out as itself, so that an application's ``except KeyboardInterrupt`` around
``trio.run`` still works; several errors stay a group."""

from __future__ import annotations

import pytest
import trio

from dledger_mq.clients.producer import Producer
from dledger_mq.errors import TopicNotFound, sole_error_unwrapped


async def _fail(error: BaseException) -> None:
    raise error


async def test_one_error_of_a_nested_nursery_comes_out_as_itself() -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as raised, sole_error_unwrapped():
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                inner.start_soon(_fail, interrupt)
            outer.start_soon(trio.sleep_forever)
    assert raised.value is interrupt


async def test_several_errors_stay_a_group_and_no_error_passes_through() -> None:
    with pytest.raises(BaseExceptionGroup) as raised, sole_error_unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fail, TopicNotFound("a"))
            nursery.start_soon(_fail, TopicNotFound("b"))
    assert len(raised.value.exceptions) == 2
    with sole_error_unwrapped():
        pass


async def test_ctrl_c_in_a_client_task_leaves_its_async_with_as_a_keyboard_interrupt() -> None:
    """Trio raises KeyboardInterrupt in whichever task runs when the signal comes: here one of
    the client's own background tasks, while the application waits in the ``async with``."""
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as raised:
        async with Producer("127.0.0.1:1") as producer:
            producer.nursery.start_soon(_fail, interrupt)
            await trio.sleep_forever()
    assert raised.value is interrupt
