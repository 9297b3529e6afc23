"""The dashboard's web server: one page (its views switch without a reload), a sign-in form,
and ``/live``, the WebSocket that pushes every new sample of the collector to the page and
carries the viewer's requests (message queries, admin actions) and their answers.

Served by hypercorn's Trio worker (as the nodes' /metrics are); ``serve_dashboard`` calls
``task_status.started`` with its address once listening.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from dledger_mq.dashboard.actions import run_action
from dledger_mq.dashboard.auth import COOKIE_NAME, SESSION_SECONDS, Sessions, Viewer
from dledger_mq.dashboard.collector import Collector, Target
from dledger_mq.errors import DledgerError
from dledger_mq.node.metrics import hypercorn_config

logger = structlog.get_logger()

STATIC = Path(__file__).parent / "static"
#: No inline script or style, nothing from elsewhere, never in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
MAX_FORM_BYTES = 4096
#: A request from the page larger than this closes its WebSocket (hypercorn's limit).
MAX_REQUEST_BYTES = 16384
#: The WebSocket close code that sends the page to the sign-in form.
CLOSE_SIGN_IN = 4401


class SecurityHeaders:
    """Every HTTP answer says: no framing, no sniffing, no referrer, the policy above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's ``Origin`` is this server (as its ``Host`` names it); a request
    without ``Origin`` (not from a browser's page) passes."""
    if origin is None:
        return True
    return bool(host) and urllib.parse.urlsplit(origin).netloc == host


#: A request that came through a proxy says so in one of these; its peer address (the
#: proxy's, often loopback) is then not the viewer's.
FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _client_host(connection: Request | WebSocket) -> str | None:
    """The viewer's address, as far as protected mode is concerned: None (not on this
    machine) for a request a proxy forwarded."""
    if any(name in connection.headers for name in FORWARDED_HEADERS):
        return None
    return connection.client.host if connection.client else None


def _set_session(response: Response, token: str) -> Response:
    response.set_cookie(
        COOKIE_NAME, token, max_age=SESSION_SECONDS, httponly=True, samesite="strict", path="/"
    )
    return response


def dashboard_app(collector: Collector, sessions: Sessions) -> Starlette:

    async def viewer_of(connection: Request | WebSocket) -> Viewer | None:
        """The connection's viewer; an anonymous one only while protected mode lets this
        client in."""
        viewer = sessions.viewer(connection.cookies.get(COOKIE_NAME))
        if (
            viewer is not None
            and viewer.credentials is None
            and not await sessions.anonymous_allowed(_client_host(connection))
        ):
            sessions.sign_out(connection.cookies.get(COOKIE_NAME))
            return None
        return viewer

    async def index(request: Request) -> Response:
        if await viewer_of(request) is not None:
            return FileResponse(STATIC / "index.html")
        if await sessions.anonymous_allowed(_client_host(request)):
            token = sessions.anonymous_session()
            return _set_session(FileResponse(STATIC / "index.html"), token)
        return RedirectResponse("/login", status_code=303)

    async def login_page(request: Request) -> Response:
        return FileResponse(STATIC / "login.html")

    async def login(request: Request) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return Response("cross-origin sign-in refused", status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return Response("form too large", status_code=413)
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        access_key = (form.get("access_key") or [""])[0].strip()
        secret_key = (form.get("secret_key") or [""])[0].strip()
        try:
            token = await sessions.sign_in(access_key, secret_key)
        except DledgerError as error:
            logger.info("dashboard_sign_in_refused", access_key=access_key, reason=str(error))
            why = urllib.parse.quote(str(error))
            return RedirectResponse(f"/login?failed={why}", status_code=303)
        logger.info("dashboard_signed_in", access_key=access_key)
        return _set_session(RedirectResponse("/", status_code=303), token)

    async def logout(request: Request) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return Response("cross-origin sign-out refused", status_code=403)
        sessions.sign_out(request.cookies.get(COOKIE_NAME))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    async def live(websocket: WebSocket) -> None:
        # A page of another site may open a WebSocket here with the viewer's cookie: only
        # this server's own page may.
        if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            await websocket.close()  # before accepting: the handshake is refused (403)
            return
        viewer = await viewer_of(websocket)
        await websocket.accept()
        if viewer is None:
            # Accepted first, so that the page learns why (a refused handshake tells nothing).
            await websocket.close(code=CLOSE_SIGN_IN, reason="sign in")
            return
        await websocket.send_json({"type": "hello", "viewer": viewer.name, "admin": viewer.admin})
        sender = _Sender(websocket)
        collector.add_viewer()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_push_samples, sender, collector)
                await _answer_requests(websocket, sender, collector, viewer)
                nursery.cancel_scope.cancel()
        except* WebSocketDisconnect:
            pass
        finally:
            collector.remove_viewer()

    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        WebSocketRoute("/live", live),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])


class _Sender:
    """The samples and the replies take turns on the WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.lock = trio.Lock()

    async def send(self, message: dict[str, object]) -> None:
        async with self.lock:
            await self.websocket.send_text(json.dumps(message))


async def _push_samples(sender: _Sender, collector: Collector) -> None:
    while True:
        changed = collector.changed
        await sender.send({"type": "sample", **collector.snapshot})
        await changed.wait()


async def _answer_requests(
    websocket: WebSocket, sender: _Sender, collector: Collector, viewer: Viewer
) -> None:
    """Each request (``{"id": N, "action": ...}``) is answered with ``{"type": "reply",
    "id": N, "ok": ..., "result" or "error"}``; until the page goes."""
    while True:
        text = await websocket.receive_text()
        try:
            request: Any = json.loads(text)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            await sender.send({"type": "reply", "id": None, "ok": False, "error": "not JSON"})
            continue
        answer: dict[str, object] = {"type": "reply", "id": request.get("id")}
        try:
            answer |= {"ok": True, "result": await run_action(collector.target, viewer, request)}
        except DledgerError as error:
            answer |= {"ok": False, "error": str(error)}
        except trio.TooSlowError:
            answer |= {"ok": False, "error": "the cluster did not answer in time"}
        logger.info(
            "dashboard_action",
            viewer=viewer.name,
            action=str(request.get("action"))[:64],
            ok=answer["ok"],
            error=answer.get("error"),
        )
        await sender.send(answer)


async def serve_dashboard(
    target: Target,
    listen: str,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample ``target`` and serve the dashboard on ``listen`` (HOST:PORT) until cancelled."""
    config = hypercorn_config(listen)
    # What the page sends is a small request; nothing bigger is read.
    config.websocket_max_message_size = MAX_REQUEST_BYTES
    collector = Collector(target)
    app = dashboard_app(collector, Sessions(target))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        addresses = await nursery.start(serve, app, config)
        logger.info("dashboard_started", address=listen)
        task_status.started(addresses)
