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

from dledger_mq.broker.message_id import parse_message_id
from dledger_mq.clients.admin import AdminConnection, topic_parts
from dledger_mq.clients.dead_letters import redrive
from dledger_mq.dashboard.auth import Viewer
from dledger_mq.dashboard.collector import Target
from dledger_mq.errors import BadRequest, MessageNotFound, PermissionDenied, TopicNotFound
from dledger_mq.node.cluster_status import find_group_leaders
from dledger_mq.wire.admin import ADMIN_CODEC
from dledger_mq.wire.broker import MessageView
from dledger_mq.wire.rpc import connect
from dledger_mq.wire.tls import client_ssl_context

ACTION_TIMEOUT_SECONDS = 30.0
#: Most messages a query returns.
MAX_MESSAGES = 100


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
    #: None: up to the newest.
    to_time_ms: int | None = None
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
            queue_id = _integer(request, "queue_id", 0)
            from_time_ms = max(_integer(request, "from_time_ms", 0), 0)
            to_time_ms = _integer(request, "to_time_ms", -1)  # -1 (or none): up to the newest
            if queue_id < 0:
                raise BadRequest(f"queue_id: {queue_id} is negative")
            if 0 <= to_time_ms <= from_time_ms:
                raise BadRequest("to_time_ms: must be after from_time_ms")
            return MessageQuery(
                "by_time",
                topic=_text(request, "topic"),
                queue_id=queue_id,
                from_time_ms=from_time_ms,
                to_time_ms=None if to_time_ms < 0 else to_time_ms,
                limit=limit,
            )
        raise BadRequest(f"no message query {kind!r}")
    raise BadRequest(f"no action {action!r}")


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


async def query_messages(target: Target, viewer: Viewer, query: MessageQuery) -> dict[str, object]:
    """The messages ``query`` finds, as JSON: ``messages``, and ``truncated`` when more may
    match than were shown; a message id no stored message has gives no messages and
    ``not_found``, why."""
    if query.kind == "by_id":
        # Only the group the id names holds it (ids are ``group:raft_index:slot``).
        group = parse_message_id(query.message_id).group
        async with viewer_admins(target, viewer, (group,)) as admins:
            try:
                view = await admins[group].get_message(query.message_id)
            except MessageNotFound as error:
                return {"messages": [], "truncated": False, "not_found": error.reason}
        return {"messages": [message_object(group, view)], "truncated": False}
    found: list[tuple[str, MessageView]] = []
    truncated = False
    async with viewer_admins(target, viewer) as admins:
        parts = await topic_parts(admins, query.topic)
        if not parts:
            raise TopicNotFound(query.topic)
        for group, info in parts.items():
            admin = admins[group]
            if query.kind == "by_key":
                reply = await admin.find_messages_reply(query.topic, query.key, query.limit)
                found += [(group, view) for view in reply.messages]
                truncated = truncated or reply.truncated
            elif query.queue_id < info.queue_count:
                views = await admin.list_messages(
                    query.topic, query.queue_id, query.from_time_ms, query.to_time_ms, query.limit
                )
                found += [(group, view) for view in views]
                # A group's list stops at the limit: more of that queue may follow.
                truncated = truncated or len(views) >= query.limit
        if query.kind == "by_time" and not any(
            query.queue_id < info.queue_count for info in parts.values()
        ):
            raise BadRequest(f"topic {query.topic!r} has no queue {query.queue_id}")
    found.sort(key=lambda item: (item[1].store_time_ms, item[0], item[1].queue_id, item[1].offset))
    truncated = truncated or len(found) > query.limit
    # By key: the newest (as `message find`); by time: the first from the time on.
    shown = found[-query.limit :] if query.kind == "by_key" else found[: query.limit]
    return {
        "messages": [message_object(group, view) for group, view in shown],
        "truncated": truncated,
    }


def message_object(broker_group: str, view: MessageView) -> dict[str, object]:
    """A stored message as the page shows it (the fields of `message get --json`): the body as
    text, its delivery ``attempt`` (1: the first; a retry copy says 2, 3, ...), ``offset`` -1
    for a delayed or retried message that is in no queue under its id."""
    return {
        "message_id": view.message_id,
        "broker_group": broker_group,
        "topic": view.topic,
        "queue_id": view.queue_id,
        "offset": view.offset,
        "keys": list(view.keys),
        "tags": view.tags,
        "properties": dict(view.properties),
        "body": view.body.decode(errors="replace"),
        "body_bytes": len(view.body),
        "born_time_ms": view.born_time_ms,
        "store_time_ms": view.store_time_ms,
        "attempt": view.attempt,
    }
