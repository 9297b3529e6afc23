"""A node's HTTP endpoints for operators (issue 18, item 1): ``GET /metrics`` in Prometheus'
text format, ``GET /healthz`` (the process answers) and ``GET /readyz`` (it knows a leader and
has applied everything it knows committed), on ``http_listen`` (node.toml; "" for none).

Metrics are read from the node's state when scraped (a collector), so recording them costs the
hot path nothing: messages stored per topic are the consume queues' ends, the replication
figures are the Raft core's status. Names follow RocketMQ 5's where one exists
(``rocketmq_messages_in_total``, ``rocketmq_consumer_lag_messages``, ``rocketmq_topic_number``,
...), with its labels; the replication ones are ``dledger_*``. docs/operations.md, "Metrics",
lists them all.

``/metrics`` follows the node's own rules for clients (docs/security.md): while no user exists
it answers clients on the node's machine only (protected mode; anyone with ``protected_mode =
false``), and once one exists it asks for a user's access key and secret key as HTTP Basic
credentials (Prometheus' ``basic_auth``), checked against the stored key the node already
holds. ``/healthz`` and ``/readyz`` say no more than "up" and "ready": they stay open, for
the probes of a service manager.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import NodeStatsReply
from dledger_mq.wire.client_auth import stored_key

if TYPE_CHECKING:
    from dledger_mq.node.server import Node

logger = structlog.get_logger()

_ROLES = ("follower", "pre-candidate", "candidate", "leader", "learner", "recovering")


class NodeCollector(Collector):
    """Every metric of one node, computed from its state at each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(
        self,
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        node = self.node
        status = node.status()
        labels = {"node_id": status.node_id, "cluster": node.config.group}
        names, values = list(labels), list(labels.values())

        term = GaugeMetricFamily("dledger_term", "The Raft term this node is in.", labels=names)
        term.add_metric(values, status.term)
        yield term
        role = GaugeMetricFamily(
            "dledger_role",
            "1 for the role this node has now, 0 for the others.",
            labels=[*names, "role"],
        )
        for name in _ROLES:
            role.add_metric([*values, name], 1 if status.role == name else 0)
        yield role
        for metric, help_text, value in (
            ("dledger_last_index", "The last index of this node's log.", status.last_index),
            ("dledger_commit_index", "The highest index known committed.", status.commit_index),
            ("dledger_applied_index", "The highest index applied.", status.applied_index),
            (
                "dledger_apply_lag_entries",
                "Entries known committed, not yet applied.",
                status.commit_index - status.applied_index,
            ),
            (
                "dledger_has_leader",
                "1 when this node knows a leader of its group.",
                1 if status.leader else 0,
            ),
            (
                "dledger_pending_timers",
                "Delayed and retried messages waiting for their time.",
                node.state.pending_timers,
            ),
        ):
            gauge = GaugeMetricFamily(metric, help_text, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        snapshots = node.snapshots.indexes()
        for metric, help_text, value in (
            (
                "dledger_snapshot_age_entries",
                "Entries applied since the newest snapshot (a restart applies them again).",
                status.applied_index - (snapshots[0] if snapshots else 0),
            ),
            (
                "dledger_log_bytes",
                "Bytes of this node's log on disk.",
                node.replica.log.size_bytes(),
            ),
            (
                "dledger_log_first_index",
                "The first index this node's log still holds (retention moves it).",
                node.replica.log.first_index(),
            ),
        ):
            gauge = GaugeMetricFamily(metric, help_text, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        usage = shutil.disk_usage(node.replica.log.directory)
        for metric, help_text, value in (
            ("dledger_disk_used_bytes", "Bytes used on the volume of the data dir.", usage.used),
            ("dledger_disk_free_bytes", "Bytes free on the volume of the data dir.", usage.free),
        ):
            gauge = GaugeMetricFamily(metric, help_text, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        replica = node.replica
        for metric, help_text, value in (
            (
                "dledger_elections",
                "Elections this node started (as a candidate).",
                replica.elections_started,
            ),
            (
                "dledger_leader_changes",
                "Times the leader this node knows changed to another node.",
                replica.leader_changes,
            ),
        ):
            counter = CounterMetricFamily(metric, help_text, labels=names)
            counter.add_metric(values, value)
            yield counter
        stats = replica.log.write_stats
        for metric, help_text, histogram in (
            ("dledger_fsync_seconds", "Time each fsync of the log took.", stats.fsync_seconds),
            (
                "dledger_write_batch_entries",
                "Entries in each write to the log (group commit).",
                stats.batch_entries,
            ),
            ("dledger_write_batch_bytes", "Bytes in each write to the log.", stats.batch_bytes),
        ):
            family = HistogramMetricFamily(metric, help_text, labels=names)
            family.add_metric(values, histogram.cumulative(), histogram.total)
            yield family
        lag = GaugeMetricFamily(
            "dledger_follower_lag_entries",
            "On the leader: entries each follower is behind its log.",
            labels=[*names, "follower"],
        )
        for follower in status.followers:
            lag.add_metric([*values, follower.node_id], follower.lag)
        yield lag

        topics = node.state.topics()
        topic_number = GaugeMetricFamily(
            "rocketmq_topic_number", "Topics this broker group holds.", labels=names
        )
        topic_number.add_metric(values, len(topics))
        yield topic_number
        messages_in = CounterMetricFamily(
            "rocketmq_messages_in",
            "Messages stored, per topic (the consume queues' ends).",
            labels=[*names, "topic"],
        )
        for topic in topics:
            stored = sum(
                node.state.max_offset(topic.name, queue_id) for queue_id in range(topic.queue_count)
            )
            messages_in.add_metric([*values, topic.name], stored)
        yield messages_in
        consumer_lag = GaugeMetricFamily(
            "rocketmq_consumer_lag_messages",
            "Messages stored but not yet consumed by the group, per topic.",
            labels=[*names, "topic", "consumer_group"],
        )
        for group in node.state.groups():
            for topic_name in node.state.group_topics(group):
                if node.state.topic(topic_name) is None:
                    continue
                behind = sum(queue.lag for queue in node.state.lag(group, topic_name))
                consumer_lag.add_metric([*values, topic_name, group], behind)
        yield consumer_lag
        traffic = node.broker.traffic
        throughput_in = CounterMetricFamily(
            "rocketmq_throughput_in",
            "Bytes of message bodies this node stored as leader, per topic.",
            labels=[*names, "topic"],
        )
        for topic_name, size in sorted(traffic.bytes_in.items()):
            throughput_in.add_metric([*values, topic_name], size)
        yield throughput_in
        for metric, help_text, counts in (
            (
                "rocketmq_messages_out",
                "Messages this node handed to consumers (pulls and receives).",
                traffic.messages_out,
            ),
            (
                "rocketmq_throughput_out",
                "Bytes of message bodies this node handed to consumers.",
                traffic.bytes_out,
            ),
        ):
            out = CounterMetricFamily(metric, help_text, labels=[*names, "topic", "consumer_group"])
            for (topic_name, group), value in sorted(counts.items()):
                out.add_metric([*values, topic_name, group], value)
            yield out


def node_stats(node: Node) -> NodeStatsReply:
    """The figures ``dledger-mq node status`` shows: the sums of what /metrics breaks down."""
    status = node.status()
    state, log = node.state, node.replica.log
    usage = shutil.disk_usage(log.directory)
    snapshots = node.snapshots.indexes()
    traffic = node.broker.traffic
    fsyncs = log.write_stats.fsync_seconds

    def micros(bound: float | None) -> int:
        return -1 if bound is None else round(bound * 1_000_000)

    return NodeStatsReply(
        node_id=status.node_id,
        group=node.config.group,
        role=status.role,
        term=status.term,
        commit_index=status.commit_index,
        applied_index=status.applied_index,
        messages_in=sum(
            state.max_offset(topic.name, queue_id)
            for topic in state.topics()
            for queue_id in range(topic.queue_count)
        ),
        bytes_in=sum(traffic.bytes_in.values()),
        messages_out=sum(traffic.messages_out.values()),
        bytes_out=sum(traffic.bytes_out.values()),
        log_bytes=log.size_bytes(),
        log_first_index=log.first_index(),
        disk_used_bytes=usage.used,
        disk_free_bytes=usage.free,
        snapshot_index=snapshots[0] if snapshots else 0,
        fsync_count=sum(fsyncs.counts),
        fsync_p50_us=micros(fsyncs.quantile_bound(0.5)),
        fsync_p99_us=micros(fsyncs.quantile_bound(0.99)),
        metrics_enabled=log.write_stats.enabled,
    )


def readiness(node: Node) -> tuple[bool, str]:
    """Ready: the node knows its group's leader and has applied all it knows committed."""
    status = node.status()
    if not status.leader:
        return False, "no leader known"
    if status.applied_index < status.commit_index:
        return False, f"applied {status.applied_index} of {status.commit_index} committed"
    return True, "ready"


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    access_key, colon, secret_key = decoded.partition(":")
    return (access_key, secret_key) if colon else None


def metrics_refusal(node: Node, request: Request) -> Response | None:
    """Why ``request`` may not read /metrics (the response to send), or None if it may."""
    if not node.state.user_count:
        host = request.client.host if request.client else None
        if _is_loopback(host) or not node.config.protected_mode:
            return None
        return Response(
            "protected mode: no users exist, so only clients on the node's machine may read "
            "metrics; add a user (dledger-mq user add) and scrape with its keys\n",
            status_code=403,
        )
    credentials = _basic_credentials(request.headers.get("authorization"))
    if credentials is not None:
        access_key, secret_key = credentials
        known = node.access.stored_key(access_key)
        if known is not None and hmac.compare_digest(known, stored_key(secret_key)):
            return None
    return Response(
        "this cluster has users: give a user's access key and secret key (HTTP Basic)\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="dledger-mq metrics"'},
    )


def operator_app(node: Node) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))

    async def metrics(request: Request) -> Response:
        refusal = metrics_refusal(node, request)
        if refusal is not None:
            return refusal
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node_id": node.config.node_id})

    async def readyz(request: Request) -> Response:
        ready, why = readiness(node)
        return JSONResponse(
            {"ready": ready, "reason": why, "node_id": node.config.node_id},
            status_code=200 if ready else 503,
        )

    routes = [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    return Starlette(routes=routes)


def hypercorn_config(listen: str) -> HypercornConfig:
    """Hypercorn bound to ``listen`` (HOST:PORT), its own logs off (ours are structured), and
    half a second for requests in flight at a stop."""
    address = Address.parse(listen)
    config = HypercornConfig()
    config.bind = [f"{address.host}:{address.port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    return config


async def serve_operator_http(
    node: Node,
    listen: str,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``operator_app`` on ``listen`` (HOST:PORT) until cancelled."""
    config = hypercorn_config(listen)
    logger.info("http_started", node=node.config.node_id, address=listen)
    await serve(operator_app(node), config, task_status=task_status)  # type: ignore[arg-type]
