"""The route table of one naming node: pure, time passed in by the caller.

Each broker replica's registration lives until three heartbeat intervals pass without it being
repeated. A group's leader is the live replica that says it leads with the highest term, so a
new leader that registers at once replaces the old one at once, even before the old one's
registration expires. Naming nodes never talk to each other: each builds its table from what
the brokers tell it.
"""

from __future__ import annotations

import attrs

from dledger_mq.wire.naming import BrokerRegistration, GroupRoute, TopicRoute


@attrs.define
class _Entry:
    registration: BrokerRegistration
    expires_at_ms: int


class RouteTable:
    def __init__(self, heartbeat_interval_ms: int = 1000, missed_heartbeats: int = 3) -> None:
        self.time_to_live_ms = heartbeat_interval_ms * missed_heartbeats
        self._entries: dict[tuple[str, str], _Entry] = {}

    def register(self, registration: BrokerRegistration, now_ms: int) -> int:
        """Record or refresh a replica; returns how long (ms) the registration lives."""
        key = (registration.group, registration.node_id)
        self._entries[key] = _Entry(registration, now_ms + self.time_to_live_ms)
        return self.time_to_live_ms

    def expire(self, now_ms: int) -> list[BrokerRegistration]:
        """Forget replicas not heard from in time; returns what was forgotten."""
        expired = [key for key, entry in self._entries.items() if entry.expires_at_ms <= now_ms]
        return [self._entries.pop(key).registration for key in expired]

    def routes(self, topic: str, now_ms: int) -> list[TopicRoute]:
        """Where ``topic`` lives (every topic when empty), one route per group serving it."""
        routes = []
        for group, replicas in sorted(self._live_groups(now_ms).items()):
            route = _group_route(group, replicas)
            leaders = [r for r in replicas if r.role == "leader"]
            # The leader's view of the topics is the freshest; followers' may lag behind.
            source = max(leaders or replicas, key=lambda r: r.term)
            for held in source.topics:
                if topic not in ("", held.name):
                    continue
                routes.append(
                    TopicRoute(
                        held.name,
                        group,
                        route.leader_id,
                        route.leader_address,
                        route.term,
                        route.replicas,
                        route.idempotence_window,
                        held.queues,
                    )
                )
        return routes

    def groups(self, now_ms: int) -> list[GroupRoute]:
        """Every live group with its leader and replicas."""
        return [
            _group_route(group, replicas)
            for group, replicas in sorted(self._live_groups(now_ms).items())
        ]

    def registrations(self, now_ms: int) -> list[BrokerRegistration]:
        self.expire(now_ms)
        return [entry.registration for entry in self._entries.values()]

    def _live_groups(self, now_ms: int) -> dict[str, list[BrokerRegistration]]:
        groups: dict[str, list[BrokerRegistration]] = {}
        for registration in self.registrations(now_ms):
            groups.setdefault(registration.group, []).append(registration)
        return groups


def _group_route(group: str, replicas: list[BrokerRegistration]) -> GroupRoute:
    leaders = [r for r in replicas if r.role == "leader"]
    leader = max(leaders, key=lambda r: r.term) if leaders else None
    # The leader's applied settings are the freshest; without one, the most cautious replica's.
    window = leader.idempotence_window if leader else min(r.idempotence_window for r in replicas)
    return GroupRoute(
        group=group,
        leader_id=leader.node_id if leader else None,
        leader_address=leader.address if leader else None,
        term=max(r.term for r in replicas),
        replicas=tuple(sorted(r.address for r in replicas)),
        idempotence_window=window,
    )
