"""What a viewer asks of the cluster through the dashboard: message queries and, for an admin,
leadership transfer, offset reset and dead-letter redrive. Each runs signed in as the viewer
(anonymously under protected mode), so the cluster's own permission checks apply; the
functions the CLI uses do the work.

Every request is a small JSON object from the page (``{"action": ..., ...}``); ``run_action``
validates it into one of the frozen requests below (``BadRequest`` names what is wrong) and
returns a JSON-ready result.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import trio

from dledger_mq.clients.admin import AdminConnection
from dledger_mq.clients.dead_letters import redrive
from dledger_mq.dashboard.auth import Viewer
from dledger_mq.dashboard.collector import Target
from dledger_mq.errors import BadRequest, DledgerError, PermissionDenied, TopicNotFound
from dledger_mq.node.cluster_status import find_group_leaders
from dledger_mq.wire.admin import ADMIN_CODEC
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.tls import client_ssl_context

ACTION_TIMEOUT_SECONDS = 30.0
#: Most messages a query returns.
MAX_MESSAGES = 100
#: The admin client's message queries (another branch adds them): the page says "not
#: available" until this AdminConnection has them.
MESSAGE_QUERIES = {
    "by_id": "get_message",
    "by_key": "find_messages",
    "by_time": "list_messages",
}


@contextlib.asynccontextmanager
async def viewer_admins(
    target: Target, viewer: Viewer, groups: tuple[str, ...] = ()
) -> AsyncIterator[dict[str, AdminConnection]]:
    """Connections to every broker group's leader (or ``groups``'), signed in as ``viewer``:
    never as the dashboard itself, so that a viewer can do only what the viewer may."""
    leaders = await find_group_leaders(
        target.endpoints,
        target.cluster_id,
        tls=target.tls,
        credentials=viewer.credentials or target.credentials,
    )
    unknown = [group for group in groups if group not in leaders]
    if unknown:
        raise BadRequest(f"no broker group {', '.join(unknown)} (groups: {', '.join(leaders)})")
    async with contextlib.AsyncExitStack() as stack:
        admins = {}
        for group, leader in leaders.items():
            if groups and group not in groups:
                continue
            connection = await stack.enter_async_context(
                connect(
                    leader.address,
                    ADMIN_CODEC,
                    target.cluster_id,
                    "dashboard-viewer",
                    viewer.credentials,
                    client_ssl_context(target.tls),
                )
            )
            admins[group] = AdminConnection(connection)
        yield admins


def _text(request: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = request.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{key}: give a name")
    return value.strip()


def _integer(request: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = request.get(key)
    if value in (None, "") and default is not None:
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise BadRequest(f"{key}: {value!r} is not a whole number") from None
    if number < -1:
        raise BadRequest(f"{key}: {number} is negative")
    return number


@attrs.frozen
class TransferLeader:
    group: str
    target: str


@attrs.frozen
class ResetOffset:
    group: str
    topic: str
    to_offset: int
    to_time_ms: int


@attrs.frozen
class Redrive:
    group: str
    msg_id: str | None


@attrs.frozen
class MessageQuery:
    kind: str
    message_id: str = ""
    topic: str = ""
    key: str = ""
    queue_id: int = 0
    from_time_ms: int = 0
    to_time_ms: int = 0
    limit: int = 20


ADMIN_ACTIONS = ("transfer_leader", "reset_offset", "redrive")


def parse(request: Mapping[str, Any]) -> TransferLeader | ResetOffset | Redrive | MessageQuery:
    action = request.get("action")
    if action == "transfer_leader":
        return TransferLeader(_text(request, "group"), _text(request, "target"))
    if action == "reset_offset":
        to_offset = _integer(request, "to_offset", -1)
        to_time_ms = _integer(request, "to_time_ms", -1)
        if (to_offset < 0) == (to_time_ms < 0):
            raise BadRequest("give exactly one of an offset and a time")
        return ResetOffset(_text(request, "group"), _text(request, "topic"), to_offset, to_time_ms)
    if action == "redrive":
        msg_id = _text(request, "msg_id", required=False)
        return Redrive(_text(request, "group"), msg_id or None)
    if action == "messages":
        kind = request.get("kind")
        limit = min(max(_integer(request, "limit", 20), 1), MAX_MESSAGES)
        if kind == "by_id":
            return MessageQuery("by_id", message_id=_text(request, "message_id"), limit=limit)
        if kind == "by_key":
            return MessageQuery(
                "by_key", topic=_text(request, "topic"), key=_text(request, "key"), limit=limit
            )
        if kind == "by_time":
            return MessageQuery(
                "by_time",
                topic=_text(request, "topic"),
                queue_id=_integer(request, "queue_id", 0),
                from_time_ms=_integer(request, "from_time_ms", 0),
                to_time_ms=_integer(request, "to_time_ms", 2**62),
                limit=limit,
            )
        raise BadRequest(f"no message query {kind!r}")
    raise BadRequest(f"no action {action!r}")


def message_queries_available() -> bool:
    return all(hasattr(AdminConnection, method) for method in MESSAGE_QUERIES.values())


async def run_action(target: Target, viewer: Viewer, request: Mapping[str, Any]) -> object:
    """Do what ``request`` asks, as ``viewer``; its JSON-ready result."""
    parsed = parse(request)
    if not isinstance(parsed, MessageQuery) and not viewer.admin:
        raise PermissionDenied(viewer.name, "admin", "cluster")
    with trio.fail_after(ACTION_TIMEOUT_SECONDS):
        if isinstance(parsed, TransferLeader):
            async with viewer_admins(target, viewer, (parsed.group,)) as admins:
                leader = await admins[parsed.group].transfer_leader(parsed.target)
            return {"group": parsed.group, "leader": leader}
        if isinstance(parsed, ResetOffset):
            return await _reset_offset(target, viewer, parsed)
        if isinstance(parsed, Redrive):
            async with viewer_admins(target, viewer) as admins:
                return await redrive(admins, parsed.group, parsed.msg_id)
        return await query_messages(target, viewer, parsed)


async def _reset_offset(target: Target, viewer: Viewer, request: ResetOffset) -> object:
    results = []
    async with viewer_admins(target, viewer) as admins:
        for broker_group, admin in admins.items():
            if not any(info.name == request.topic for info in await admin.list_topics()):
                continue
            queues = await admin.reset_offset(
                request.group, request.topic, request.to_offset, request.to_time_ms
            )
            results += [
                {"broker_group": broker_group, "queue_id": q.queue_id, "offset": q.committed_offset}
                for q in queues
            ]
    if not results:
        raise TopicNotFound(request.topic)
    return results


async def query_messages(target: Target, viewer: Viewer, query: MessageQuery) -> object:
    """The messages ``query`` finds in every broker group, as JSON objects; ``{"available":
    false}`` while the admin client has no message queries."""
    method_name = MESSAGE_QUERIES[query.kind]
    if not message_queries_available():
        return {"available": False, "messages": []}
    found: list[dict[str, object]] = []
    async with viewer_admins(target, viewer) as admins:
        for broker_group, admin in admins.items():
            method = getattr(admin, method_name)
            try:
                if query.kind == "by_id":
                    reply = await method(query.message_id)
                elif query.kind == "by_key":
                    reply = await method(query.topic, query.key, query.limit)
                else:
                    reply = await method(
                        query.topic,
                        query.queue_id,
                        query.from_time_ms,
                        query.to_time_ms,
                        query.limit,
                    )
            except TopicNotFound:
                continue
            except DledgerError as error:
                if query.kind == "by_id" and type(error).__name__ in {
                    "MessageNotFound",
                    "NotFound",
                }:
                    continue
                raise
            found += [
                {"broker_group": broker_group, **message_object(item)} for item in _items(reply)
            ]
            if query.kind == "by_id" and found:
                break
    return {"available": True, "messages": found[: query.limit]}


def _items(reply: object) -> list[object]:
    """A query's messages, whatever shape the reply takes (one, None, a sequence, or a reply
    with ``messages`` or ``message``)."""
    if reply is None:
        return []
    for name in ("messages", "message"):
        if hasattr(reply, name) and not hasattr(reply, "body"):
            return _items(getattr(reply, name))
    if isinstance(reply, list | tuple):
        return list(reply)
    return [reply]


def message_object(message: object) -> dict[str, object]:
    """A stored message as JSON: its fields, the body as text, the delivery attempts."""
    fields: dict[str, Any] = (
        attrs.asdict(message, recurse=False)  # type: ignore[arg-type]
        if attrs.has(type(message))
        else dict(getattr(message, "__dict__", {}))
    )
    result: dict[str, object] = {}
    for name, value in fields.items():
        if isinstance(value, bytes):
            result[name] = value.decode(errors="replace")
        elif isinstance(value, tuple | frozenset | set):
            result[name] = [str(item) for item in value]
        elif isinstance(value, dict):
            result[name] = {str(k): str(v) for k, v in value.items()}
        elif isinstance(value, str | int | float | bool) or value is None:
            result[name] = value
        else:
            result[name] = str(value)
    properties = result.get("properties")
    if "attempts" not in result and isinstance(properties, dict):
        from dledger_mq.wire.broker import attempt_of

        result["attempts"] = attempt_of(dict(properties))
    return result
