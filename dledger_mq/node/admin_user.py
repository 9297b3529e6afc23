"""`cluster up` makes an admin user, so that a laptop cluster is not open to anyone who asks.

The first `cluster up` in a folder writes ``admin.credentials`` (mode 0600) under its root,
prints the keys once, and, as soon as a leader is elected, adds the user ``admin`` with
``admin`` on ``cluster`` through the loopback connection protected mode still lets in. From
then on every client signs in; the CLI run in the same folder reads that file
(``cli/main.py``'s credentials options). A later `cluster up` finds the file and the user.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from dledger_mq.clients.admin import AdminConnection
from dledger_mq.errors import DledgerError, UserExists
from dledger_mq.node.cluster_layout import ClusterLayout
from dledger_mq.node.cluster_status import find_leader_address
from dledger_mq.wire.admin import ADMIN_CODEC, RuleInfo
from dledger_mq.wire.client_auth import (
    ACCESS_KEY_ENVIRONMENT_VARIABLE,
    CREDENTIALS_FILE_NAME,
    SECRET_KEY_ENVIRONMENT_VARIABLE,
    Credentials,
    new_secret_key,
    read_credentials_file,
    write_credentials_file,
)
from dledger_mq.wire.rpc import connect

logger = structlog.get_logger()

ADMIN_ACCESS_KEY = "admin"
RETRY_SECONDS = 0.2


def admin_credentials(root: Path, echo: Callable[[str], None]) -> tuple[Credentials, bool]:
    """The admin credentials under ``root``, and whether they were there; made (and printed
    once) if there were none."""
    path = root / CREDENTIALS_FILE_NAME
    credentials = read_credentials_file(path)
    if credentials is not None:
        echo(f"signing in as {credentials.access_key!r} (keys in {path})")
        return credentials, True
    credentials = Credentials(ADMIN_ACCESS_KEY, new_secret_key())
    write_credentials_file(path, credentials)
    echo(
        f"made user {ADMIN_ACCESS_KEY!r} (admin); keys in {path} (mode 0600), which the CLI "
        "in this folder uses. For your programs: "
        f"{ACCESS_KEY_ENVIRONMENT_VARIABLE}={credentials.access_key} "
        f"{SECRET_KEY_ENVIRONMENT_VARIABLE}={credentials.secret_key}"
    )
    return credentials, False


async def ensure_admin_user(
    layout: ClusterLayout,
    credentials: Credentials,
    echo: Callable[[str], None],
    signed_in: Callable[[], None],
    tls: ssl.SSLContext | None = None,
    known: bool = True,
) -> None:
    """In every broker group (each log holds its own users): wait for a leader; add the admin
    user unless the credentials already sign in there (``known``: they were on disk already,
    so the user likely exists); call ``signed_in`` once they do everywhere. Gives up (with a
    line saying why) only if another user of that name exists."""
    results: list[bool] = []

    async def in_group(group: str) -> None:
        endpoints = [(node.node_id, node.client) for node in layout.group_nodes(group)]
        results.append(await _ensure_in_group(layout, endpoints, credentials, echo, tls, known))

    async with trio.open_nursery() as nursery:
        for group in layout.groups:
            nursery.start_soon(in_group, group)
    if all(results):
        signed_in()


async def _ensure_in_group(
    layout: ClusterLayout,
    endpoints: list[tuple[str, str]],
    credentials: Credentials,
    echo: Callable[[str], None],
    tls: ssl.SSLContext | None,
    known: bool,
) -> bool:
    while True:
        try:
            if known:
                await find_leader_address(endpoints, tls=tls, credentials=credentials)
                return True
        except DledgerError:
            pass  # no leader yet, or no such user yet (a group added since)
        try:
            leader = await find_leader_address(endpoints, tls=tls)
            # Not connect_admin: it would sign in with the environment's credentials, if any.
            async with connect(leader, ADMIN_CODEC, "local", "cluster-up", None, tls) as anonymous:
                await AdminConnection(anonymous).add_user(
                    credentials.access_key, credentials.secret_key, (RuleInfo("cluster", "admin"),)
                )
            logger.info("admin_user_added", access_key=credentials.access_key)
            return True
        except UserExists:
            if not known:
                known = True  # an earlier attempt may have landed with its answer lost
                continue
            echo(
                f"the cluster has a user {credentials.access_key!r} whose secret is not the one in "
                f"{layout.root / CREDENTIALS_FILE_NAME}: sign in as another admin"
            )
            return False
        except DledgerError as error:
            logger.debug("admin_user_waiting", reason=str(error))
        await trio.sleep(RETRY_SECONDS)
