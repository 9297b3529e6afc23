"""A replica registers with every naming node and repeats it as its heartbeat.

One task per naming node, so that a slow or dead one delays no other. Each registers at once
when this replica's role or term changes (a new leader is findable within a round trip), and
otherwise every heartbeat interval. A naming node that cannot be reached is retried with
jittered backoff; it learns everything again from the next registration.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable

import structlog
import trio

from dledger_mq.clients.naming import connect_naming
from dledger_mq.errors import DledgerError
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.naming import BrokerRegistration

logger = structlog.get_logger()


async def register_forever(
    naming_addresses: list[str],
    cluster_id: str,
    registration: Callable[[], BrokerRegistration],
    changed: Callable[[], trio.Event],
    interval_seconds: float,
    rng: random.Random,
    credentials: Credentials | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """``credentials``: the node's sign-in (``client_auth.node_credentials``) when the cluster
    has a secret; ``ssl_context`` when it speaks TLS."""
    async with trio.open_nursery() as nursery:
        for address in naming_addresses:
            nursery.start_soon(
                _register_with,
                address,
                cluster_id,
                registration,
                changed,
                interval_seconds,
                rng,
                credentials,
                ssl_context,
            )


async def _register_with(
    address: str,
    cluster_id: str,
    registration: Callable[[], BrokerRegistration],
    changed: Callable[[], trio.Event],
    interval_seconds: float,
    rng: random.Random,
    credentials: Credentials | None,
    ssl_context: ssl.SSLContext | None,
) -> None:
    log = logger.bind(naming=address)
    backoff = 0.05
    while True:
        try:
            async with connect_naming(
                address, cluster_id, registration().node_id, credentials, ssl_context
            ) as naming:
                log.info("naming_connected")
                backoff = 0.05
                while True:
                    await naming.register(registration())
                    event = changed()
                    with trio.move_on_after(interval_seconds):
                        await event.wait()
        except DledgerError as error:
            log.info("naming_unreachable", reason=str(error))
        await trio.sleep(backoff * (0.5 + rng.random()))
        backoff = min(backoff * 2, interval_seconds)
