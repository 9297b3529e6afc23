"""Asking nodes how they are: `cluster status`, the status line of `cluster up`, "who leads?".

Every node is asked at once, each within a second; a node that does not answer is reported with
the reason (connection refused, no answer in time, refused handshake), so that "no leader
reachable" says why for each endpoint.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.errors import DledgerError, Unavailable, UsageError
from dledger_mq.wire.admin import StatusReply
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.tls import TlsOption

_T = TypeVar("_T")

STATUS_TIMEOUT_SECONDS = 1.0
#: How long "who leads?" waits while some node answers but none leads (an election).
LEADER_PATIENCE_SECONDS = 5.0
#: How long it keeps asking while no node answers at all (a cluster that is down).
UNREACHABLE_PATIENCE_SECONDS = 1.0

#: (node id, client address, the node's status or why there is none).
Probe = tuple[str, str, StatusReply | str]


async def probe(
    address: str,
    cluster_id: str = "local",
    credentials: Credentials | None = None,
    tls: TlsOption = None,
) -> StatusReply | str:
    """The node's status, or why it gave none within a second (signed in with
    ``credentials``, over ``tls``: by default the environment's)."""
    with trio.move_on_after(STATUS_TIMEOUT_SECONDS):
        try:
            async with connect_admin(address, cluster_id, credentials, tls) as connection:
                return await connection.status()
        except DledgerError as error:
            return _reason(error, address)
    return f"no answer within {STATUS_TIMEOUT_SECONDS:g} s"


def _reason(error: DledgerError, address: str) -> str:
    text = str(error)
    prefix = f"cannot reach {address}: "
    return text.removeprefix(prefix)


async def fetch_status(address: str, cluster_id: str = "local") -> StatusReply | None:
    """The node's status, or None if it does not answer within a second."""
    found = await probe(address, cluster_id)
    return found if isinstance(found, StatusReply) else None


async def probe_all(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    credentials: Credentials | None = None,
    tls: TlsOption = None,
) -> list[Probe]:
    results: dict[str, StatusReply | str] = {}

    async def one(node_id: str, address: str) -> None:
        results[node_id] = await probe(address, cluster_id, credentials, tls)

    async with trio.open_nursery() as nursery:
        for node_id, address in endpoints:
            nursery.start_soon(one, node_id, address)
    return [(node_id, address, results[node_id]) for node_id, address in endpoints]


async def fetch_all(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    credentials: Credentials | None = None,
    tls: TlsOption = None,
) -> list[tuple[str, str, StatusReply | None]]:
    return [
        (node_id, address, found if isinstance(found, StatusReply) else None)
        for node_id, address, found in await probe_all(endpoints, cluster_id, credentials, tls)
    ]


def leader_of(probes: list[Probe]) -> StatusReply | None:
    """The node that says it leads, in the highest term, if any."""
    leaders = [s for _, _, s in probes if isinstance(s, StatusReply) and s.role == "leader"]
    return max(leaders, key=lambda status: status.term) if leaders else None


async def _probe_until(
    endpoints: list[tuple[str, str]],
    found: Callable[[list[Probe]], _T | None],
    cluster_id: str,
    patience_seconds: float,
    tls: TlsOption,
    credentials: Credentials | None,
) -> tuple[_T | None, list[Probe]]:
    """Probe every endpoint until ``found`` makes something of the answers; gives up after
    ``patience_seconds`` if some node answers, sooner if none does. What was found (None:
    nothing) and the last probes."""
    probes: list[Probe] = []
    started = trio.current_time()
    with trio.move_on_after(patience_seconds):
        while True:
            probes = await probe_all(endpoints, cluster_id, credentials, tls)
            result = found(probes)
            if result is not None:
                return result, probes
            answered = any(isinstance(status, StatusReply) for _, _, status in probes)
            if not answered and trio.current_time() - started >= UNREACHABLE_PATIENCE_SECONDS:
                break
            await trio.sleep(0.05)
    return None, probes


async def find_leader(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    patience_seconds: float = LEADER_PATIENCE_SECONDS,
    tls: TlsOption = None,
    credentials: Credentials | None = None,
) -> StatusReply:
    """The leader's status, waiting a little while an election runs.

    ``Unavailable`` names each endpoint's problem when there is none: after
    ``patience_seconds`` if some node answers, sooner if none does.
    """
    leader, probes = await _probe_until(
        endpoints, leader_of, cluster_id, patience_seconds, tls, credentials
    )
    if leader is None:
        raise Unavailable(f"no leader reachable: {describe_problems(probes)}")
    return leader


async def find_leader_address(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    patience_seconds: float = LEADER_PATIENCE_SECONDS,
    tls: TlsOption = None,
    credentials: Credentials | None = None,
) -> str:
    """The client address of the leader (see ``find_leader``)."""
    leader = await find_leader(endpoints, cluster_id, patience_seconds, tls, credentials)
    return leader.address


def group_leaders_of(probes: list[Probe]) -> dict[str, StatusReply | None]:
    """Every broker group a node answered for, and its leader (the highest term's), if any."""
    groups: dict[str, StatusReply | None] = {}
    for _, _, found in probes:
        if not isinstance(found, StatusReply):
            continue
        current = groups.get(found.group)
        if found.role == "leader" and (current is None or found.term > current.term):
            groups[found.group] = found
        else:
            groups.setdefault(found.group, None)
    return dict(sorted(groups.items()))


async def find_group_leaders(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    patience_seconds: float = LEADER_PATIENCE_SECONDS,
    tls: TlsOption = None,
    credentials: Credentials | None = None,
) -> dict[str, StatusReply]:
    """The leader of every broker group among ``endpoints``, waiting a little while elections
    run. ``Unavailable`` names the groups without one (and each endpoint's problem)."""

    def every_group_led(probes: list[Probe]) -> dict[str, StatusReply] | None:
        groups = group_leaders_of(probes)
        if not groups or any(leader is None for leader in groups.values()):
            return None
        return {group: leader for group, leader in groups.items() if leader is not None}

    leaders, probes = await _probe_until(
        endpoints, every_group_led, cluster_id, patience_seconds, tls, credentials
    )
    if leaders is not None:
        return leaders
    leaderless = [group for group, leader in group_leaders_of(probes).items() if leader is None]
    which = f"group {', '.join(leaderless)} has no leader" if leaderless else "no leader reachable"
    raise Unavailable(f"{which}: {describe_problems(probes)}")


@contextlib.asynccontextmanager
async def group_leader_admins(
    endpoints: list[tuple[str, str]],
    cluster_id: str = "local",
    groups: Sequence[str] = (),
    credentials: Credentials | None = None,
    tls: TlsOption = None,
) -> AsyncIterator[dict[str, AdminConnection]]:
    """Admin connections to the leader of every broker group among ``endpoints`` (or of
    ``groups``, each of which must be there), by group name, signed in with ``credentials``
    (by default the environment's)."""
    leaders = await find_group_leaders(endpoints, cluster_id, tls=tls, credentials=credentials)
    unknown = [group for group in groups if group not in leaders]
    if unknown:
        raise UsageError(
            f"no broker group {', '.join(unknown)} (groups: {', '.join(leaders) or 'none'})"
        )
    async with contextlib.AsyncExitStack() as stack:
        admins = {}
        for group, leader in leaders.items():
            if not groups or group in groups:
                admins[group] = await stack.enter_async_context(
                    connect_admin(leader.address, cluster_id, credentials, tls)
                )
        yield admins


def preferred_leaders(leaders: Mapping[str, StatusReply]) -> dict[str, str]:
    """Group -> the member it prefers as leader: the *i*-th group (by name) its ((*i* mod
    members) + 1)-th member (by id). Where the groups' nodes share machines (node n1 of every
    group on machine 1, and so on), that puts each machine's share of leaders on it, instead
    of every group electing whichever node started first."""
    preferred = {}
    for position, (group, leader) in enumerate(sorted(leaders.items())):
        members = sorted({leader.node_id} | {f.node_id for f in leader.followers})
        preferred[group] = members[position % len(members)]
    return preferred


def describe_problems(probes: list[Probe]) -> str:
    """Per endpoint, why it is not the leader: "127.0.0.1:9881: connection refused; ..."."""
    parts = []
    for _, address, found in probes:
        if isinstance(found, StatusReply):
            leader = f"follows {found.leader}" if found.leader else "knows no leader"
            parts.append(f"{address}: {found.role} in term {found.term}, {leader}")
        else:
            parts.append(f"{address}: {found}")
    return "; ".join(parts) or "no endpoints"


def status_objects(
    probes: list[Probe], states: Mapping[str, Mapping[str, object]] | None = None
) -> list[dict[str, object]]:
    """One JSON-ready object per node. ``states`` (node id -> ``state`` and ``pid``) comes from
    the local cluster's supervisor or pid files; without it a node's state is "unknown"."""
    objects: list[dict[str, object]] = []
    for node_id, address, found in probes:
        known = (states or {}).get(node_id, {})
        common: dict[str, object] = {
            "state": known.get("state", "unknown"),
            "pid": known.get("pid"),
        }
        if not isinstance(found, StatusReply):
            objects.append(
                {
                    "id": node_id,
                    "group": None,
                    "address": address,
                    **common,
                    "role": "unreachable",
                    "problem": found,
                    "term": None,
                    "leader": None,
                    "last_index": None,
                    "commit_index": None,
                    "applied_index": None,
                    "followers": [],
                }
            )
            continue
        role = "candidate" if found.role == "pre-candidate" else found.role
        if common["state"] == "starting":
            # "Starting" means "has not answered yet" (the supervisor learns it on its next
            # status line): this probe's answer is newer.
            common["state"] = "running"
        objects.append(
            {
                # The node's own id where endpoints were given by address (known by no other
                # name); else its name in the local cluster (``b/n1`` with several groups).
                "id": found.node_id if node_id == address else node_id,
                "group": found.group,
                "address": address,
                **common,
                "role": role,
                "problem": None,
                "term": found.term,
                "leader": found.leader,
                "last_index": found.last_index,
                "commit_index": found.commit_index,
                "applied_index": found.applied_index,
                "followers": [
                    {"id": f.node_id, "match_index": f.match_index, "lag": f.lag}
                    for f in found.followers
                ],
            }
        )
    return objects


TABLE_COLUMNS = (
    ("ID", "id"),
    ("ADDRESS", "address"),
    ("STATE", "state"),
    ("PID", "pid"),
    ("ROLE", "role"),
    ("TERM", "term"),
    ("LEADER", "leader"),
    ("LAST", "last_index"),
    ("COMMIT", "commit_index"),
    ("APPLIED", "applied_index"),
    ("GROUP", "group"),
)


def render_table(objects: list[dict[str, object]]) -> str:
    header = tuple(title for title, _ in TABLE_COLUMNS) + ("LAG",)
    rows: list[tuple[str, ...]] = [header]
    for node in objects:
        followers = node["followers"]
        assert isinstance(followers, list)
        lag = ",".join(f"{f['id']}={f['lag']}" for f in followers) or "-"
        rows.append(
            tuple("-" if node[key] is None else str(node[key]) for _, key in TABLE_COLUMNS) + (lag,)
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines += [f"{node['id']}: {node['problem']}" for node in objects if node.get("problem")]
    return "\n".join(lines)


#: States in which a node is not simply up: the status line shows them instead of the role.
_NOT_UP = {"starting", "paused", "restarting", "down", "exited"}


def summary_line(objects: list[dict[str, object]]) -> str:
    """``leader n1 (term 2, commit 7) | n1:leader n2:follower ...``; with several broker
    groups a head per group (``broker-a: leader a/n1 (...); broker-b: no leader yet``)."""
    parts = [
        f"{node['id']}:{node['state'] if node['state'] in _NOT_UP else node['role']}"
        for node in objects
    ]
    named = sorted({str(node["group"]) for node in objects if node["group"] is not None})
    groups: list[str | None] = list(named) or [None]
    heads = []
    for group in groups:
        leaders = [
            node
            for node in objects
            if node["role"] == "leader"
            and node["state"] != "paused"
            and (group is None or node["group"] == group)
        ]
        if leaders:
            leader = max(leaders, key=lambda node: int(str(node["term"] or 0)))
            head = f"leader {leader['id']} (term {leader['term']}, commit {leader['commit_index']})"
        else:
            head = "no leader yet"
        heads.append(head if len(groups) <= 1 else f"{group}: {head}")
    return "; ".join(heads) + " | " + " ".join(parts)


def dump_json(objects: list[dict[str, object]]) -> str:
    return json.dumps(objects, indent=2)
