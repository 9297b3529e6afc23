"""What the dashboard shows, gathered once a second from the cluster by one collector that every
open page shares: the nodes' status (as `cluster status` asks for it), and through each broker
group's leader its topics, consumer groups, their lag, retries and dead letters.

The collector signs in as the dashboard's own user and asks only what any signed-in user may
ask (status, topic and group list and describe: docs/security.md, "Permissions"), so what it
shows a signed-in viewer is what that viewer could read with the CLI. Throughput is the change
of each group's commit index and each topic's stored messages between two samples, kept for
the last ``HISTORY_SECONDS``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import attrs
import structlog
import trio

from dledger_mq.clients.admin import AdminConnection, connect_admin
from dledger_mq.clients.dead_letters import redrive_group
from dledger_mq.errors import DledgerError
from dledger_mq.node.cluster_layout import ClusterLayout
from dledger_mq.node.cluster_status import (
    Probe,
    group_leaders_of,
    probe_all,
    status_objects,
)
from dledger_mq.node.config import ConfigError
from dledger_mq.wire.admin import StatusReply, TopicInfo
from dledger_mq.wire.broker import dead_letter_topic, retry_topic, system_topic_group
from dledger_mq.wire.client_auth import Credentials
from dledger_mq.wire.tls import TlsOption

logger = structlog.get_logger()

SAMPLE_SECONDS = 1.0
#: While no page is open, a sample this often (the throughput history goes on, coarser).
IDLE_SAMPLE_SECONDS = 5.0
#: A sample that takes longer than this is cut short (a leader killed mid-request).
SAMPLE_TIMEOUT_SECONDS = 3.0
HISTORY_SECONDS = 600
#: Describe requests per broker group per sample (a topic's min offsets, a consumer group's
#: lag in a topic): a cluster with more topics shows the first ones' in full, so that a
#: sample still ends in time.
DESCRIBE_BUDGET = 200
#: A consumer group that no consumer ever committed for: its queues' min offsets.
_NO_GROUP = "%DASHBOARD%"


@attrs.define
class History:
    """Per-second rates over the last ``HISTORY_SECONDS``: entries committed per broker group,
    messages stored per topic."""

    times: deque[float] = attrs.Factory(lambda: deque(maxlen=HISTORY_SECONDS))
    groups: dict[str, deque[float | None]] = attrs.Factory(dict)
    topics: dict[str, deque[float | None]] = attrs.Factory(dict)
    _last: tuple[float, dict[str, int], dict[str, int]] | None = None

    def add(self, now: float, commits: Mapping[str, int], messages: Mapping[str, int]) -> None:
        """One sample: each group's commit index, each topic's stored messages, at ``now``."""
        last, self._last = self._last, (now, dict(commits), dict(messages))
        if last is None or now <= last[0]:
            return
        elapsed = now - last[0]
        self.times.append(now)
        for series, values, before in (
            (self.groups, commits, last[1]),
            (self.topics, messages, last[2]),
        ):
            for name in values.keys() | series.keys():
                column = series.setdefault(
                    name, deque([None] * (len(self.times) - 1), maxlen=HISTORY_SECONDS)
                )
                if name in values and name in before:
                    column.append(max(0, values[name] - before[name]) / elapsed)
                else:
                    column.append(None)

    def latest(self, series: str, name: str) -> float | None:
        column = (self.groups if series == "groups" else self.topics).get(name)
        return column[-1] if column else None

    def as_json(self) -> dict[str, object]:
        return {
            "times": list(self.times),
            "groups": {name: list(values) for name, values in sorted(self.groups.items())},
            "topics": {name: list(values) for name, values in sorted(self.topics.items())},
        }


@attrs.frozen
class Target:
    """Which cluster the dashboard watches, and how it reaches it."""

    endpoints: list[tuple[str, str]]
    cluster_id: str = "local"
    credentials: Credentials | None = None
    tls: TlsOption = None
    #: A local cluster's folder (`cluster up`): the supervisor's node states come with it.
    root: Path | None = None


class Collector:
    """Samples the cluster every ``SAMPLE_SECONDS``; ``changed`` is set (and replaced) after
    each sample, ``snapshot`` is the latest, JSON-ready."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.history = History()
        self.snapshot: dict[str, object] = {"version": 0, "nodes": [], "problem": "starting"}
        self.changed = trio.Event()
        self.version = 0
        #: Pages open now; the first one to open wakes the collector at once.
        self.viewers = 0
        self._viewer_arrived = trio.Event()

    def add_viewer(self) -> None:
        self.viewers += 1
        self._viewer_arrived.set()

    def remove_viewer(self) -> None:
        self.viewers -= 1

    async def run(self) -> None:
        while True:
            started = trio.current_time()
            self._viewer_arrived = trio.Event()
            try:
                with trio.move_on_after(SAMPLE_TIMEOUT_SECONDS) as cut:
                    await self.sample()
            except Exception as error:  # noqa: BLE001 - a bug: said loudly, and on the page
                logger.exception("dashboard_sample_failed")
                self._publish({**self.snapshot, "problem": f"sampling failed: {error!r}"})
                cut = trio.CancelScope()
            if cut.cancelled_caught:
                self._publish(
                    {
                        **self.snapshot,
                        "problem": f"the cluster did not answer within "
                        f"{SAMPLE_TIMEOUT_SECONDS:g} s: showing the last sample",
                    }
                )
            if self.viewers:
                await trio.sleep_until(started + SAMPLE_SECONDS)
            else:
                with trio.move_on_at(started + IDLE_SAMPLE_SECONDS):
                    await self._viewer_arrived.wait()

    async def sample(self) -> None:
        target = self.target
        if target.root is not None:
            # A local cluster's nodes as they are now (`cluster add-replica` adds some).
            try:
                layout = ClusterLayout.load(target.root)
            except (ConfigError, OSError) as error:
                logger.warning("dashboard_layout_unreadable", reason=str(error))
                layout = None
            if layout is not None and layout.endpoints != target.endpoints:
                self.target = target = attrs.evolve(target, endpoints=layout.endpoints)
        probes = await probe_all(
            target.endpoints, target.cluster_id, target.credentials, target.tls
        )
        states = await self._local_states()
        nodes = node_objects(probes, states)
        leaders = {g: s for g, s in group_leaders_of(probes).items() if s is not None}
        problems: list[str] = []
        topics: list[dict[str, object]] = []
        consumer_groups: list[dict[str, object]] = []
        for group, leader in leaders.items():
            try:
                with trio.fail_after(SAMPLE_TIMEOUT_SECONDS):
                    async with connect_admin(
                        leader.address, target.cluster_id, target.credentials, target.tls
                    ) as admin:
                        group_topics, group_consumers, complete = await _group_view(group, admin)
                if not complete:
                    problems.append(
                        f"{group}: more topics and consumer groups than one sample describes "
                        f"({DESCRIBE_BUDGET}): some min offsets and lags are not shown"
                    )
                topics += group_topics
                consumer_groups += group_consumers
            except (DledgerError, trio.TooSlowError) as error:
                problems.append(f"{group}: {error or 'no answer in time'}")
        if not any(isinstance(found, StatusReply) for _, _, found in probes):
            reasons = {str(found) for _, _, found in probes}
            problems.insert(0, "no node answers: " + "; ".join(sorted(reasons)))
        merged_topics = merge_topics(topics)
        merged_groups = merge_consumer_groups(consumer_groups)
        now = time.time()
        self.history.add(
            now,
            {group: leader.commit_index for group, leader in leaders.items()},
            {str(t["name"]): int(str(t["messages"])) for t in merged_topics},
        )
        for item in merged_topics:
            item["rate"] = self.history.latest("topics", str(item["name"]))
        self._publish(
            {
                "time_ms": int(now * 1000),
                "problem": "; ".join(problems) or None,
                "nodes": nodes,
                "groups": group_objects(nodes, leaders, self.history),
                "topics": merged_topics,
                "consumer_groups": merged_groups,
                "history": self.history.as_json(),
            }
        )

    def _publish(self, snapshot: dict[str, object]) -> None:
        self.version += 1
        self.snapshot = {**snapshot, "version": self.version}
        self.changed.set()
        self.changed = trio.Event()

    async def _local_states(self) -> dict[str, dict[str, object]] | None:
        """Each node's state (running, paused, down...) as the local `cluster up` tells."""
        root = self.target.root
        if root is None:
            return None
        from dledger_mq.node.control import (
            ControlRequest,
            SupervisorNotRunning,
            Verb,
            call_supervisor,
        )

        try:
            with trio.fail_after(SAMPLE_TIMEOUT_SECONDS / 3):
                reply = await call_supervisor(root, ControlRequest(Verb.STATUS))
        except (SupervisorNotRunning, DledgerError, OSError, trio.TooSlowError):
            return None
        return {str(node["id"]): dict(node) for node in reply.nodes}


def node_objects(
    probes: list[Probe], states: Mapping[str, Mapping[str, object]] | None
) -> list[dict[str, object]]:
    """`cluster status --json`'s objects, each with its commit lag (behind its group's
    leader) and apply lag (committed, not yet applied)."""
    nodes = status_objects(probes, states)
    leader_commits: dict[str, int] = {}
    for node in nodes:
        if node["role"] == "leader" and node["group"] is not None:
            commit = int(str(node["commit_index"]))
            group = str(node["group"])
            leader_commits[group] = max(leader_commits.get(group, 0), commit)
    for node in nodes:
        if node["commit_index"] is None:
            node["commit_lag"] = node["apply_lag"] = None
            continue
        commit, applied = int(str(node["commit_index"])), int(str(node["applied_index"]))
        leader_commit = leader_commits.get(str(node["group"]))
        node["commit_lag"] = None if leader_commit is None else max(0, leader_commit - commit)
        node["apply_lag"] = commit - applied
    return nodes


def group_objects(
    nodes: list[dict[str, object]], leaders: Mapping[str, StatusReply], history: History
) -> list[dict[str, object]]:
    names = sorted({str(node["group"]) for node in nodes if node["group"] is not None})
    groups: list[dict[str, object]] = []
    for name in names:
        leader = leaders.get(name)
        groups.append(
            {
                "group": name,
                "leader": leader.node_id if leader else None,
                "term": leader.term if leader else None,
                "commit_index": leader.commit_index if leader else None,
                "entries_per_second": history.latest("groups", name),
            }
        )
    return groups


@attrs.define
class _Budget:
    left: int = DESCRIBE_BUDGET

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


async def _group_view(
    broker_group: str, admin: AdminConnection
) -> tuple[list[dict[str, object]], list[dict[str, object]], bool]:
    """One broker group's topics (its queues' min and max offsets) and consumer groups (lag
    per queue, live consumers, retries and dead letters waiting), and whether the describe
    budget covered them all (else a min offset is None, a lag left out)."""
    budget = _Budget()
    infos = {info.name: info for info in await admin.list_topics()}
    topics = []
    for info in infos.values():
        if system_topic_group(info.name) is not None:
            continue
        minimum: dict[int, int | None] = {}
        if budget.take():
            described = await admin.describe_group(_NO_GROUP, info.name)
            minimum = {queue.queue_id: queue.min_offset for queue in described.queues}
        topics.append(
            {
                "name": info.name,
                "fifo": info.fifo,
                "queues": [
                    {
                        "broker_group": broker_group,
                        "queue_id": queue_id,
                        "min_offset": minimum.get(queue_id),
                        "max_offset": max_offset,
                    }
                    for queue_id, max_offset in enumerate(info.max_offsets)
                ],
            }
        )
    groups: list[dict[str, object]] = []
    for group_info in await admin.list_groups():
        name = group_info.group
        if name.startswith("%"):
            continue  # the broker's own (a redrive's mark)
        queues: list[dict[str, object]] = []
        consumers: set[str] = set()
        for topic in group_info.topics:
            if system_topic_group(topic) is not None or topic not in infos:
                continue
            if not budget.take():
                continue
            reply = await admin.describe_group(name, topic)
            consumers.update(reply.consumers)
            queues += [
                {
                    "broker_group": broker_group,
                    "topic": topic,
                    "queue_id": queue.queue_id,
                    "committed_offset": (
                        None if queue.committed_offset < 0 else queue.committed_offset
                    ),
                    "max_offset": queue.max_offset,
                    "lag": queue.lag,
                }
                for queue in reply.queues
            ]
        groups.append(
            {
                "group": name,
                "queues": queues,
                "consumers": sorted(consumers),
                "retrying": await _waiting(admin, budget, infos.get(retry_topic(name)), name, name),
                "dead_letters": await _waiting(
                    admin, budget, infos.get(dead_letter_topic(name)), name, redrive_group(name)
                ),
            }
        )
    return topics, groups, budget.left >= 0


async def _waiting(
    admin: AdminConnection, budget: _Budget, topic: TopicInfo | None, name: str, reader: str
) -> int | None:
    """Messages of a group's retry or dead-letter ``topic`` that ``reader`` (the group
    itself; a redrive's mark) has not passed yet (None: beyond the budget)."""
    if topic is None:
        return 0
    if not budget.take():
        return None
    reply = await admin.describe_group(reader, topic.name)
    return sum(queue.lag for queue in reply.queues)


def merge_topics(parts: list[dict[str, object]]) -> list[dict[str, object]]:
    """A topic spread over several broker groups, as one: its queues from all of them."""
    merged: dict[str, dict[str, object]] = {}
    for part in parts:
        name = str(part["name"])
        entry = merged.setdefault(name, {"name": name, "fifo": part["fifo"], "queues": []})
        queues = entry["queues"]
        assert isinstance(queues, list) and isinstance(part["queues"], list)
        queues.extend(part["queues"])
    for entry in merged.values():
        queues = entry["queues"]
        assert isinstance(queues, list)
        entry["messages"] = sum(int(queue["max_offset"]) for queue in queues)
        entry["held"] = (
            None
            if any(queue["min_offset"] is None for queue in queues)
            else sum(int(queue["max_offset"]) - int(queue["min_offset"]) for queue in queues)
        )
    return [merged[name] for name in sorted(merged)]


def merge_consumer_groups(parts: list[dict[str, object]]) -> list[dict[str, object]]:
    merged: dict[str, dict[str, object]] = {}
    for part in parts:
        name = str(part["group"])
        entry = merged.setdefault(
            name,
            {"group": name, "queues": [], "consumers": [], "retrying": 0, "dead_letters": 0},
        )
        for key in ("queues", "consumers"):
            values, more = entry[key], part[key]
            assert isinstance(values, list) and isinstance(more, list)
            values.extend(more)
        for key in ("retrying", "dead_letters"):
            known = entry[key] is not None and part[key] is not None
            entry[key] = int(str(entry[key])) + int(str(part[key])) if known else None
    for entry in merged.values():
        consumers = entry["consumers"]
        queues = entry["queues"]
        assert isinstance(consumers, list) and isinstance(queues, list)
        entry["consumers"] = sorted(set(consumers))
        entry["lag"] = sum(int(queue["lag"]) for queue in queues)
    return [merged[name] for name in sorted(merged)]
