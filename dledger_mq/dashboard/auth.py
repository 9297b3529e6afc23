"""Who is looking at the dashboard (docs/operations.md, "Dashboard"; docs/security.md).

A viewer signs in with a cluster user's access key and secret key; the dashboard checks them
by signing in to the cluster with them (``who_am_i``) and keeps them, in this process's memory
only, under a random session token that the browser holds in an HttpOnly, SameSite=Strict
cookie. Everything a viewer asks beyond the shared view (a message query, an admin action)
goes to the cluster signed in as that viewer, so the cluster's own rules decide; admin actions
are also refused here unless the viewer holds ``admin`` on ``cluster``.

Protected mode, as the nodes have it: while the cluster lets anonymous clients in (no users
exist), a viewer on this machine (loopback) may look without signing in, acting anonymously;
from elsewhere, or once a user exists, every viewer signs in.
"""

from __future__ import annotations

import ipaddress
import secrets
import time

import attrs
import trio

from dledger_mq.dashboard.collector import Target
from dledger_mq.errors import (
    AuthenticationFailed,
    AuthenticationRequired,
    DledgerError,
    Unavailable,
)
from dledger_mq.wire.admin import ADMIN_CODEC, WhoAmIReply, WhoAmIRequest
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.tls import client_ssl_context

COOKIE_NAME = "dledger_mq_dashboard"
SESSION_SECONDS = 12 * 3600
#: How long "may anonymous viewers look?" is remembered.
ANONYMOUS_CHECK_SECONDS = 2.0
SIGN_IN_TIMEOUT_SECONDS = 5.0
#: At most this many sessions are kept (the oldest go first).
MAX_SESSIONS = 1000


@attrs.frozen(repr=False)
class Viewer:
    """A signed-in viewer (``credentials`` None: anonymous, under protected mode)."""

    name: str
    credentials: Credentials | None
    admin: bool
    expires_at: float

    def __repr__(self) -> str:
        return f"Viewer({self.name!r}, admin={self.admin})"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def holds_cluster_admin(reply: WhoAmIReply) -> bool:
    return any(rule.resource == "cluster" and rule.action == "admin" for rule in reply.rules)


class Sessions:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._viewers: dict[str, Viewer] = {}
        self._anonymous: tuple[float, bool] = (-1e9, False)

    async def _who_am_i(self, credentials: Credentials | None) -> WhoAmIReply:
        """Who ``credentials`` (None: anonymous) are to the cluster: asked of each node in
        turn until one answers (every replica holds the users). ``AuthenticationFailed`` as
        soon as a node refuses them; ``Unavailable`` if none answers."""
        target = self.target
        problems = []
        for _, address in target.endpoints:
            try:
                with trio.fail_after(SIGN_IN_TIMEOUT_SECONDS / max(1, len(target.endpoints))):
                    # Not connect_admin: without credentials it would take the environment's.
                    async with connect(
                        address,
                        ADMIN_CODEC,
                        target.cluster_id,
                        "dashboard",
                        credentials,
                        client_ssl_context(target.tls),
                    ) as connection:
                        return await connection.call(WhoAmIRequest(), WhoAmIReply)
            except (AuthenticationFailed, AuthenticationRequired):
                # One answer for an unknown user and a wrong key, naming no node.
                raise AuthenticationFailed("authentication failed") from None
            except (DledgerError, trio.TooSlowError) as error:
                problems.append(f"{address}: {error or 'no answer in time'}")
        raise Unavailable(f"no node answers: {'; '.join(problems)}")

    async def sign_in(self, access_key: str, secret_key: str) -> str:
        """A new session token for the user, or ``AuthenticationFailed`` (the same for an
        unknown user and a wrong key)."""
        if not access_key or not secret_key:
            raise AuthenticationFailed("authentication failed")
        credentials = Credentials(access_key, secret_key)
        reply = await self._who_am_i(credentials)
        return self._add(Viewer(access_key, credentials, holds_cluster_admin(reply), 0.0))

    async def anonymous_allowed(self, client_host: str | None) -> bool:
        """Whether a viewer at ``client_host`` may look without signing in (protected mode:
        from loopback only, while the cluster lets anonymous clients in)."""
        if not is_loopback(client_host):
            return False
        checked_at, allowed = self._anonymous
        if time.monotonic() - checked_at < ANONYMOUS_CHECK_SECONDS:
            return allowed
        try:
            reply = await self._who_am_i(None)
            allowed = reply.anonymous_allowed
        except DledgerError:
            allowed = False
        self._anonymous = (time.monotonic(), allowed)
        return allowed

    def anonymous_session(self) -> str:
        return self._add(Viewer("anonymous (protected mode)", None, True, 0.0))

    def _add(self, viewer: Viewer) -> str:
        token = secrets.token_urlsafe(32)
        if len(self._viewers) >= MAX_SESSIONS:
            oldest = min(self._viewers, key=lambda key: self._viewers[key].expires_at)
            del self._viewers[oldest]
        self._viewers[token] = attrs.evolve(viewer, expires_at=time.monotonic() + SESSION_SECONDS)
        return token

    def viewer(self, token: str | None) -> Viewer | None:
        if not token:
            return None
        viewer = self._viewers.get(token)
        if viewer is None:
            return None
        if viewer.expires_at < time.monotonic():
            del self._viewers[token]
            return None
        return viewer

    def sign_out(self, token: str | None) -> None:
        if token:
            self._viewers.pop(token, None)
