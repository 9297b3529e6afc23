"""Who may read a node's /metrics (docs/operations.md, "Metrics and health"): in protected mode
only clients on its machine; once users exist, a user's keys as HTTP Basic credentials."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

from starlette.requests import Request

from dledger_mq.node.metrics import metrics_refusal
from dledger_mq.wire.client_auth import new_secret_key, stored_key

SECRET = new_secret_key()


def _node(users: int, protected_mode: bool = True) -> Any:
    keys = {"prometheus": stored_key(SECRET)} if users else {}
    return SimpleNamespace(
        state=SimpleNamespace(user_count=users),
        config=SimpleNamespace(protected_mode=protected_mode),
        access=SimpleNamespace(stored_key=keys.get),
    )


def _request(host: str, authorization: str | None = None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "headers": headers,
            "client": (host, 5),
        }
    )


def _basic(access_key: str, secret_key: str) -> str:
    return "Basic " + base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()


def _status(node: Any, request: Request) -> int:
    refusal = metrics_refusal(node, request)
    return 200 if refusal is None else refusal.status_code


def test_protected_mode_lets_only_this_machine_read_metrics() -> None:
    assert _status(_node(users=0), _request("127.0.0.1")) == 200
    assert _status(_node(users=0), _request("::1")) == 200
    assert _status(_node(users=0), _request("10.0.0.8")) == 403
    assert _status(_node(users=0, protected_mode=False), _request("10.0.0.8")) == 200


def test_once_users_exist_metrics_need_a_users_keys() -> None:
    node = _node(users=1)
    assert _status(node, _request("127.0.0.1")) == 401
    refusal = metrics_refusal(node, _request("127.0.0.1"))
    assert refusal is not None and refusal.headers["www-authenticate"].startswith("Basic")
    assert _status(node, _request("10.0.0.8", _basic("prometheus", SECRET))) == 200
    for wrong in (
        _basic("prometheus", "not-the-key"),
        _basic("nobody", SECRET),
        "Basic !!!",
        "Bearer " + SECRET,
        "Basic " + base64.b64encode(b"no colon").decode(),
    ):
        assert _status(node, _request("127.0.0.1", wrong)) == 401
