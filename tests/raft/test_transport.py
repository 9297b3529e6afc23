"""PeerTransport over loopback TCP: order kept whether a batch is written directly or queued."""

from __future__ import annotations

import functools
import random

import trio

from dledger_mq.raft.pure.messages import AppendRequest, Entry, Message
from dledger_mq.raft.runtime.transport import PeerTransport, TransportConfig
from dledger_mq.wire.address import Address

DEADLINE_SECONDS = 20


async def listen(nursery: trio.Nursery, transport: PeerTransport) -> Address:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, transport.handle_incoming, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return Address("127.0.0.1", port)


def append(number: int, size: int) -> AppendRequest:
    return AppendRequest(1, "a", "b", number, 1, (Entry(number + 1, 1, b"x" * size),), 0)


async def test_messages_arrive_in_order_through_direct_writes_and_the_queue() -> None:
    received: list[Message] = []
    got_all = trio.Event()
    total = 3000
    with trio.fail_after(DEADLINE_SECONDS):
        async with trio.open_nursery() as nursery:

            def deliver(message: Message) -> None:
                received.append(message)
                if len(received) == total:
                    got_all.set()

            receiver = PeerTransport(
                TransportConfig("c", "b", "g", {"a": Address("127.0.0.1", 1)}),
                random.Random(0),
                deliver,
            )
            address = await listen(nursery, receiver)
            sender = PeerTransport(
                TransportConfig("c", "a", "g", {"b": address}, queue_messages=total),
                random.Random(0),
                received.append,
            )
            nursery.start_soon(sender.run_senders)
            while not sender.connected["b"]:
                await trio.sleep(0.01)
            # Small batches with pauses go straight to the socket; big bursts (64 KiB entries)
            # overflow the socket buffer, so their tails are queued behind and later batches
            # must wait for them.
            number = 0
            for burst in range(30):
                size = 64 << 10 if burst % 3 == 0 else 100
                batch = [append(number + i, size) for i in range(100)]
                number += len(batch)
                sender.send(batch)
                await trio.sleep(0 if burst % 2 else 0.01)
            await got_all.wait()
            nursery.cancel_scope.cancel()
    assert [m.prev_index for m in received if isinstance(m, AppendRequest)] == list(range(total))
    assert sender.direct_writes > 0 and sender.queued > 0


async def test_a_batch_for_a_disconnected_peer_is_queued_not_lost_in_a_dead_socket() -> None:
    sender = PeerTransport(
        TransportConfig("c", "a", "g", {"b": Address("127.0.0.1", 1)}),
        random.Random(0),
        lambda message: None,
    )
    sender.send([append(0, 10)])
    assert (sender.direct_writes, sender.queued) == (0, 1)
