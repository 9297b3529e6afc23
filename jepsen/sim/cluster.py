"""A simulated Raft cluster: nodes, a faulty network and a slow disk, all in virtual time.

Each node is driven exactly as the real runtime drives it: take a ``Ready``, persist it (which
takes simulated disk time, during which the node keeps ticking and receiving), then send, apply
and advance. Each node's log is the real CommitLog on a ``MemoryDisk``: the batch is written
when the Ready is taken and fsynced when the simulated disk latency has passed, and a crash
loses everything not fsynced, possibly leaving a torn tail that recovery must cut back.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from dledger_mq.errors import NotLeader, StorageError
from dledger_mq.raft.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.core import Config, RaftCore, Ready, Role
from dledger_mq.raft.disk import MemoryDisk
from dledger_mq.raft.log_store import LogStore
from dledger_mq.raft.messages import Entry, EntryKind, Message
from jepsen.sim.checker import SafetyChecker, SafetyViolation
from jepsen.sim.options import UNITS_PER_TICK, SimOptions

CoreFactory = Callable[[Config, LogStore, random.Random], RaftCore]


class LivenessViolation(Exception):
    """The healed cluster did not elect a leader and commit a proposal in time."""


def _frozen_clock() -> float:
    return 0.0


class SimNode:
    def __init__(self, node_id: str, config: Config, segment_size_bytes: int) -> None:
        self.id = node_id
        self.config = config
        self.disk = MemoryDisk()
        self.segment_size_bytes = segment_size_bytes
        self.store = self.open_store()
        self.core: RaftCore | None = None
        self.pending: Ready | None = None
        self.pending_sent = False
        # Bumped at each crash so that events of an earlier life are ignored.
        self.incarnation = 0
        self.last_role: Role | None = None

    def open_store(self) -> CommitLog:
        # The simulator decides when to fsync (``sync()`` when the disk latency has passed),
        # so the log's own interval never fires.
        return CommitLog.open(
            self.disk,
            f"/{self.id}",
            segment_size_bytes=self.segment_size_bytes,
            flush_policy=FlushPolicy.ASYNC,
            flush_interval_ms=1 << 40,
            clock=_frozen_clock,
        )


class Cluster:
    def __init__(
        self,
        options: SimOptions,
        core_factory: CoreFactory = RaftCore,
        ack_before_persist: bool = False,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.core_factory = core_factory
        self.ack_before_persist = ack_before_persist
        self.trace = trace
        self.checker = SafetyChecker()
        self.now = 0
        self._events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        ids = tuple(f"n{number}" for number in range(1, options.nodes + 1))
        self.nodes = {
            node_id: SimNode(
                node_id,
                Config(
                    node_id=node_id,
                    members=ids,
                    election_timeout_ticks=options.election_timeout_ticks,
                    heartbeat_interval_ticks=options.heartbeat_interval_ticks,
                    max_append_bytes=options.max_append_bytes,
                    max_inflight_appends=options.max_inflight_appends,
                ),
                options.segment_size_bytes,
            )
            for node_id in ids
        }
        self.blocked: set[tuple[str, str]] = set()
        # Links behave like TCP (first in, first out) except for a reordered message now and then.
        self.link_clear_at: dict[tuple[str, str], int] = {}
        self.drop_rate = options.drop_rate
        self.duplicate_rate = options.duplicate_rate
        # Client bookkeeping: data -> (node, index, term) of the accepted proposal.
        self.proposed: dict[bytes, tuple[str, int, int]] = {}
        self.acknowledged: set[bytes] = set()
        self.client_leader_guess: str | None = None
        self.next_value = 0
        for number, node in enumerate(self.nodes.values()):
            self._start(node)
            # Spread the nodes' tick phases so that they do not all tick at the same instant.
            self.schedule(number, self._tick, node.id)

    # -- the event loop ----------------------------------------------------------------------

    def schedule(self, delay: int, action: Callable[..., None], *args: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._events, (self.now + delay, self._sequence, action, args))

    def run_until(self, time: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to ``time``; returns True as soon as ``stop()`` holds."""
        events = self._events
        while events and events[0][0] <= time:
            self.now, _, action, args = heapq.heappop(events)
            action(*args)
            if stop is not None and stop():
                return True
        self.now = max(self.now, time)
        return False

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now:>7} {text}")

    # -- nodes -------------------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        rng = random.Random(f"{self.options.seed}-{node.id}-{node.incarnation}")
        node.core = self.core_factory(node.config, node.store, rng)
        node.pending = None
        node.last_role = None
        self.checker.node_started(node.id, node.store.hard_state().commit)
        self.log(f"{node.id} starts: {node.store.hard_state()} last={node.store.last_index()}")

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            return
        # Whatever was written but not fsynced is lost, maybe leaving a torn tail.
        node.disk.crash(self.rng)
        node.core = None
        node.pending = None
        node.incarnation += 1
        self.log(f"{node_id} crashes")

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            try:
                node.store = node.open_store()
            except StorageError as error:
                raise SafetyViolation(f"{node_id} cannot recover its log: {error}") from None
            self._start(node)

    def _tick(self, node_id: str) -> None:
        self.schedule(UNITS_PER_TICK, self._tick, node_id)
        node = self.nodes[node_id]
        if node.core is not None:
            node.core.tick()
            self._drive(node)

    def _drive(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        self._observe_role(node, core)
        if node.pending is not None or not core.has_ready():
            return
        ready = core.ready()
        self.checker.entries_appended(node.id, ready.entries, core)
        if ready.hard_state is not None:
            self.checker.commit_seen(node.id, ready.hard_state.commit, core)
        node.pending = ready
        node.pending_sent = False
        self._send_all(ready.messages_before_persist)
        self._write(node, ready)
        if self.ack_before_persist:
            # The deliberately broken driver: acknowledges what is not yet on disk.
            self._send_all(ready.messages)
            node.pending_sent = True
        if ready.entries or ready.hard_state is not None:
            self.schedule(
                self.options.disk_latency_units, self._persisted, node.id, node.incarnation
            )
        else:
            self._persisted(node.id, node.incarnation)

    def _persisted(self, node_id: str, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation or node.core is None:
            return
        ready = node.pending
        assert ready is not None
        node.store.sync()
        if not node.pending_sent:
            self._send_all(ready.messages)
        if ready.committed_entries:
            self.checker.entries_applied(node.id, ready.committed_entries)
            self._acknowledge(node, ready.committed_entries)
        node.pending = None
        node.core.advance()
        self._drive(node)

    def _write(self, node: SimNode, ready: Ready) -> None:
        """Write the Ready's batch to the page cache; ``_persisted`` fsyncs it later."""
        if not ready.entries and ready.hard_state is None:
            return
        store = node.store
        if ready.entries and ready.entries[0].index <= store.last_index():
            self.log(f"{node.id} truncates from {ready.entries[0].index}")
        if ready.hard_state is not None:
            self.checker.hard_state_persisted(node.id, store.hard_state(), ready.hard_state)
        store.save(list(ready.entries), ready.hard_state)

    def _observe_role(self, node: SimNode, core: RaftCore) -> None:
        if core.role is not node.last_role:
            node.last_role = core.role
            self.log(f"{node.id} is {core.role.value} in term {core.term}")
            self.checker.role_seen(node.id, core.role, core.term, core)

    # -- network -----------------------------------------------------------------------------

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        rng = self.rng
        options = self.options
        link_clear_at = self.link_clear_at
        for message in messages:
            link = (message.source, message.target)
            if link in self.blocked:
                continue
            if self.drop_rate and rng.random() < self.drop_rate:
                continue
            delay = rng.randint(options.min_delay_units, options.max_delay_units)
            if not (options.reorder_rate and rng.random() < options.reorder_rate):
                delay = max(delay, link_clear_at.get(link, 0) - self.now)
                link_clear_at[link] = self.now + delay
            self.schedule(delay, self._deliver, message)
            if self.duplicate_rate and rng.random() < self.duplicate_rate:
                delay = rng.randint(options.min_delay_units, options.max_delay_units * 2)
                self.schedule(delay, self._deliver, message)

    def _deliver(self, message: Message) -> None:
        if (message.source, message.target) in self.blocked:
            return
        node = self.nodes[message.target]
        if node.core is None:
            return
        node.core.step(message)
        self._drive(node)

    def heal_network(self) -> None:
        self.blocked.clear()

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.blocked.add((node_id, other))
                self.blocked.add((other, node_id))

    def split(self, minority: list[str]) -> None:
        majority = [node_id for node_id in self.nodes if node_id not in minority]
        for a in minority:
            for b in majority:
                self.blocked.add((a, b))
                self.blocked.add((b, a))

    # -- clients -----------------------------------------------------------------------------

    def propose(self, data: bytes) -> bool:
        """A client proposes ``data`` where it believes the leader is, following hints."""
        target = self.client_leader_guess
        if target is None or self.nodes[target].core is None:
            target = self.rng.choice(sorted(self.nodes))
        core = self.nodes[target].core
        if core is None:
            return False
        try:
            index = core.propose(data)
        except NotLeader as error:
            self.client_leader_guess = error.leader_hint
            return False
        self.client_leader_guess = target
        self.proposed[data] = (target, index, core.term)
        self._drive(self.nodes[target])
        return True

    def _acknowledge(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.kind is EntryKind.NORMAL:
                proposal = self.proposed.get(entry.data)
                if proposal == (node.id, entry.index, entry.term):
                    self.acknowledged.add(entry.data)

    def leaders(self) -> list[str]:
        return [
            node.id
            for node in self.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]

    def check_converged(self) -> None:
        """After the liveness phase: every acknowledged proposal is committed, in every log."""
        committed_values = {
            data for _, kind, data in self.checker.committed if kind is EntryKind.NORMAL
        }
        lost = self.acknowledged - committed_values
        if lost:
            raise SafetyViolation(f"acknowledged proposals lost: {sorted(lost)[:5]}")


__all__ = ["Cluster", "LivenessViolation", "SafetyViolation", "SimNode"]
