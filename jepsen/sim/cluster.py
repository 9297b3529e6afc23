"""A simulated Raft cluster: nodes, a faulty network and a slow disk, all in virtual time.

Each node runs the production driver (``dledger_mq.raft.pure.driver.ReplicaDriver``, the decisions
the Trio runtime makes: what to send before the write, which hard states to write, which
proposals to answer and how) around the production core, on the real CommitLog on a
``MemoryDisk``. Only the doing is simulated, as the runtime does it: a write small enough for
the ``LogWriter`` to make inline blocks the node for the disk's latency (the real one blocks the
event loop), a bigger one goes to the background while the node keeps ticking and receiving.
The batch is written when the work is taken and fsynced when the disk latency has passed, so a
crash loses everything not fsynced, possibly leaving a torn tail that recovery must cut back.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from dledger_mq.broker.consume_queue import FileQueueStore
from dledger_mq.broker.records import BrokerSettings
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import CorruptLog, NotLeader, StorageError
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.driver import Proposal, ReadyWork, ReplicaDriver
from dledger_mq.raft.pure.log_store import LogStore
from dledger_mq.raft.pure.membership import Membership
from dledger_mq.raft.pure.messages import Entry, EntryKind, Message
from dledger_mq.raft.runtime.log_writer import can_write_inline
from dledger_mq.raft.runtime.transport import decode_peer_message, encode_peer_message
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.commitlog_format import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    parse_segment_file_name,
    segment_file_name,
)
from dledger_mq.raft.storage.commitlog_recovery import read_state, scan_segment
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from dledger_mq.raft.storage.snapshots import SnapshotStore, start_from_snapshot
from jepsen.sim.broker import SimBroker, StateFactory
from jepsen.sim.checker import SafetyChecker, SafetyViolation
from jepsen.sim.options import UNITS_PER_TICK, SimOptions


class CoreFactory(Protocol):
    def __call__(
        self,
        config: Config,
        store: LogStore,
        rng: random.Random,
        applied: int = 0,
        *,
        recovering: bool,
        lost_tail: bool,
        membership: Membership | None = None,
    ) -> RaftCore: ...


DriverFactory = Callable[..., ReplicaDriver]
#: Snapshot chunks are tiny here so that a transfer takes many, and loses some.
SNAPSHOT_CHUNK_BYTES = 1024
#: Wall-clock milliseconds at virtual time 0 (store timestamps are drawn from it).
EPOCH_MS = 1_760_000_000_000
#: The Raft group every simulated node serves (peer frames name it).
GROUP = "broker-a"
#: Virtual time units are milliseconds: a tick (``UNITS_PER_TICK``) is the runtime's 10 ms.
SECONDS_PER_UNIT = 0.001


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
        # Made on purpose, as `dledger-mq node --init` does: a voting member's log.
        self.store = self.open_store(recovering_if_created=False)
        self.core: RaftCore | None = None
        self.driver: ReplicaDriver | None = None
        self.broker: SimBroker | None = None
        #: The work taken and not yet finished (its write in flight).
        self.pending: ReadyWork | None = None
        #: An inline write (the event loop blocked) or a pause (SIGSTOP) holds the node until then.
        self.busy_until = 0
        #: Its clock: virtual units between two ticks; its disk: units per write and fsync.
        self.tick_units = UNITS_PER_TICK
        self.disk_latency_units = 1
        #: Bit rot was planted in its log: it must refuse to start, and stays down for good.
        self.rotten = False
        #: It lost power and has not started since: it may come back having lost its tail.
        self.lost_power = False
        self.lost = False
        #: What arrived while the node was blocked, in order (``Cluster._deferred``).
        self.inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.drain_scheduled = False
        self.draining = False
        # Bumped at each crash so that events of an earlier life are ignored.
        self.incarnation = 0
        self.last_role: Role | None = None

    @property
    def snapshots(self) -> SnapshotStore:
        """Its broker snapshots, on its disk beside the log: they survive crashes, not a lost
        disk."""
        return SnapshotStore(self.disk, f"/{self.id}/snapshots")

    def open_store(self, recovering_if_created: bool = True) -> CommitLog:
        # The simulator decides when to fsync (``sync()`` when the disk latency has passed),
        # so the log's own interval never fires.
        return CommitLog.open(
            self.disk,
            f"/{self.id}",
            segment_size_bytes=self.segment_size_bytes,
            flush_policy=FlushPolicy.ASYNC,
            flush_interval_ms=1 << 40,
            clock=_frozen_clock,
            # An empty disk later (amnesia) is a replica that lost its log, as in the node.
            recovering_if_created=recovering_if_created,
        )


class Cluster:
    def __init__(
        self,
        options: SimOptions,
        core_factory: CoreFactory = RaftCore,
        driver_factory: DriverFactory = ReplicaDriver,
        trace: Callable[[str], None] | None = None,
        state_factory: StateFactory = BrokerState,
    ) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.core_factory = core_factory
        self.driver_factory = driver_factory
        self.state_factory = state_factory
        self.group = GROUP
        #: What every node's configuration asks of the replicated broker settings.
        self.broker_settings = BrokerSettings(idempotence_window=options.idempotence_window)
        self.trace = trace
        self.checker = SafetyChecker()
        self.now = 0
        self._events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        voters = tuple(f"n{number}" for number in range(1, options.nodes + 1))
        learners = tuple(
            f"n{number}"
            for number in range(options.nodes + 1, options.nodes + 1 + options.learners)
        )
        # With membership changes, two spare servers: each starts as a node being added
        # would (the voters, itself a learner), and takes part once a leader adds it.
        first_spare = options.nodes + 1 + options.learners
        spares = tuple(
            f"n{number}" for number in range(first_spare, first_spare + 2 * options.membership)
        )
        ids = voters + learners + spares
        #: The bootstrap membership: the spares are outside it.
        self.bootstrap_members = frozenset(voters + learners)
        self.nodes = {
            node_id: SimNode(
                node_id,
                Config(
                    node_id=node_id,
                    members=voters,
                    learners=(node_id,) if node_id in spares else learners,
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
        #: Directed links that are congested: every message on them takes this much longer.
        self.slow_links: dict[tuple[str, str], int] = {}
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
            if number < len(options.tick_units):  # a learner keeps the default
                node.tick_units = options.tick_units[number]
            node.disk_latency_units = (
                options.disk_latency_per_node[number]
                if number < len(options.disk_latency_per_node)
                else options.disk_latency_units
            )
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
        # The state machine is derived from the log: a restarted node restores its newest
        # usable snapshot and applies the entries after it (all of them without one).
        state, membership = self._restored_state(node)
        node.core = self.core_factory(
            node.config,
            node.store,
            rng,
            state.applied_index,
            recovering=node.store.recovering,
            lost_tail=node.store.lost_tail,
            membership=membership,
        )
        broker: SimBroker | None = None

        def apply(entry: Entry) -> object:
            assert broker is not None
            return broker.apply(entry)

        def restore(index: int, term: int) -> None:
            assert broker is not None
            self.log(f"{node.id} installs the snapshot at {index}")
            broker.restore(index, term)

        node.driver = self.driver_factory(
            node.core,
            apply,
            snapshots=node.snapshots,
            restore=restore,
            snapshot_chunk_bytes=SNAPSHOT_CHUNK_BYTES,
        )
        broker = node.broker = SimBroker(
            self, node, node.driver, node.store, self.broker_settings, state
        )
        node.pending = None
        node.busy_until = 0
        node.last_role = None
        self.checker.node_started(node.id, node.store.hard_state().commit, state.applied_index)
        store = node.store
        recovering = " recovering" if store.recovering else ""
        recovering += " (lost its tail)" if store.lost_tail else ""
        self.log(f"{node.id} starts: {store.hard_state()} last={store.last_index()}{recovering}")

    def crash(self, node_id: str) -> None:
        """The process dies; half the time its machine loses power too, but not while a node
        is lost for good: a power loss can leave a tail the log cannot judge (a torn write or
        rot?), and such a replica must hear from every other replica of three to vote."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        permanent_loss = any(other.lost or other.rotten for other in self.nodes.values())
        if not permanent_loss and self.rng.random() < 0.5:
            # Whatever was written but not fsynced is lost, maybe leaving a torn tail.
            node.disk.crash(self.rng)
            node.lost_power = True
            self.log(f"{node_id} loses power")
        node.inbox.clear()  # what a dead process had not read is gone with it
        node.core = None
        node.driver = None
        node.broker = None
        node.pending = None
        node.incarnation += 1
        self.log(f"{node_id} crashes")

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is not None or node.lost:
            return
        if self.options.amnesia and self._may_lose_a_disk(node) and self.rng.random() < 0.3:
            self.log(f"{node_id} comes back with an empty data directory")
            node.disk = MemoryDisk()
            node.rotten = False  # the rot went with the old disk
        injected = node.disk.faults_pending > 0
        try:
            node.store = node.open_store()
        except CorruptLog as error:
            if not node.rotten:
                raise SafetyViolation(f"{node_id} cannot recover its log: {error}") from None
            # Detected, never served: the node stays down until an operator replaces it.
            self.log(f"{node_id} refuses its rotten log: {error}")
            node.lost = True
            return
        except StorageError as error:
            if not injected:
                raise SafetyViolation(f"{node_id} cannot recover its log: {error}") from None
            # An injected disk error met while opening: the start fails, as it would for real,
            # and is tried again (the fault fired, so the next attempt gets past it).
            self.log(f"{node_id} fails to start: {error}")
            self.schedule(5 * UNITS_PER_TICK, self.restart, node_id)
            return
        if node.rotten:
            raise SafetyViolation(f"{node_id} opened a log with a rotten record")
        node.lost_power = False  # its log is judged: recovering (lost its tail) or not
        self._start(node)

    def _may_lose_a_disk(self, node: SimNode) -> bool:
        """One lost disk at a time, as the product promises to survive: not while another
        node is still recovering from one, or lost for good (bit rot)."""
        return not any(
            other is not node
            and (other.lost or other.rotten or other.lost_power or other.store.recovering)
            for other in self.nodes.values()
        )

    def pause(self, node_id: str, duration: int) -> None:
        """SIGSTOP for ``duration``: nothing runs there; what arrives meanwhile waits."""
        node = self.nodes[node_id]
        node.busy_until = max(node.busy_until, self.now + duration)
        self.log(f"{node_id} paused until {node.busy_until}")

    def fail_disk(self, node_id: str, operation: str, error_number: int) -> None:
        """The next ``operation`` (append or fsync) on the node's disk fails."""
        node = self.nodes[node_id]
        node.disk.inject_fault(operation, error_number)  # type: ignore[arg-type]
        self.log(f"{node_id}: the next {operation} fails with errno {error_number}")

    def rot(self, node_id: str) -> bool:
        """Flip a byte of a durable record early in a down node's log (not its tail, where it
        would pass for a torn write); False if there is nothing to rot yet."""
        node = self.nodes[node_id]
        if node.core is not None or node.rotten or any(n.rotten for n in self.nodes.values()):
            return False
        if not self._may_lose_a_disk(node):
            return False  # a rotten log is a lost disk too: one at a time
        directory = f"/{node.id}"
        for name in node.disk.list_directory(directory):
            if parse_segment_file_name(name) is None:
                continue
            path = f"{directory}/{name}"
            data = node.disk.durable_contents(path)
            if len(data) < SEGMENT_HEADER_SIZE + 4 * 64:
                continue
            # Inside the first record's header: never the last record of a log this long.
            position = SEGMENT_HEADER_SIZE + self.rng.randrange(RECORD_HEADER_SIZE)
            self._flip_a_bit(node, path, data, position)
            node.rotten = True
            self.log(f"{node_id}: bit rot at {path}:{position}")
            return True
        return False

    def rot_tail(self, node_id: str) -> bool:
        """Flip a byte in the last record of a down node's log, where recovery cuts it off as
        it would a torn write: the node may have acknowledged it (it lost its tail)."""
        node = self.nodes[node_id]
        if node.core is not None or node.rotten or not self._may_lose_a_disk(node):
            return False
        directory = f"/{node.id}"
        bases = [
            base
            for base in map(parse_segment_file_name, node.disk.list_directory(directory))
            if base is not None
        ]
        if not bases:
            return False
        path = f"{directory}/{segment_file_name(max(bases))}"
        data = node.disk.durable_contents(path)
        node.disk.set_contents(path, data)
        scan = scan_segment(node.disk.open(path), max(bases))
        last_index = max(bases) + len(scan.offsets) - 1
        if not scan.offsets or last_index < read_state(node.disk, directory).first_index:
            return False  # no record the log still holds (all below its trim point)
        last_record = scan.offsets[-1]
        position = last_record + self.rng.randrange(scan.valid_end_offset - last_record)
        self._flip_a_bit(node, path, data, position)
        self.log(f"{node_id}: bit rot in its last record at {path}:{position}")
        return True

    def _flip_a_bit(self, node: SimNode, path: str, data: bytes, position: int) -> None:
        """Rot at ``position`` of the segment ``path`` holding ``data``, durably. A sealed
        segment with its index file (or the last one under its checkpoint) is not read on
        open: its rot would be found when a record is read (tests/raft). The simulator's rot is
        the kind found on open, so the index goes too and the segment is scanned."""
        rotten = bytearray(data)
        rotten[position] ^= 1 << self.rng.randrange(8)
        node.disk.set_contents(path, bytes(rotten))
        index_path = path[: -len(".log")] + ".idx"
        if node.disk.exists(index_path):
            node.disk.remove(index_path)

    def _storage_failed(self, node: SimNode, error: StorageError) -> None:
        """A write or fsync failed: the replica stops (the process exits), and is started
        again a little later."""
        self.log(f"{node.id} stops: {error}")
        self.crash(node.id)
        # What a supervisor does: start it again after a while.
        self.schedule(self.rng.randint(1, 20) * UNITS_PER_TICK, self.restart, node.id)

    def _tick(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self.schedule(node.tick_units, self._tick, node_id)
        if node.driver is not None and not self._deferred(node, self._tick_now, node_id):
            node.driver.tick()
            self._drive(node)

    def _tick_now(self, node_id: str) -> None:
        """A tick that waited for an inline write (the ticker task was not scheduled)."""
        node = self.nodes[node_id]
        if node.driver is not None and not self._deferred(node, self._tick_now, node_id):
            node.driver.tick()
            self._drive(node)

    def _deferred(self, node: SimNode, action: Callable[..., None], *args: Any) -> bool:
        """While the node is blocked (an inline write, a pause), what would run there waits in
        its inbox, in order, and runs when it is free (``_drain``)."""
        if self.now < node.busy_until or (node.inbox and not node.draining):
            node.inbox.append((action, args))
            if not node.drain_scheduled:
                node.drain_scheduled = True
                self.schedule(max(0, node.busy_until - self.now), self._drain, node.id)
            return True
        return False

    def _drain(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.drain_scheduled = False
        node.draining = True
        try:
            while node.inbox and self.now >= node.busy_until:
                action, args = node.inbox.popleft()
                action(*args)
        finally:
            node.draining = False
        if node.inbox and not node.drain_scheduled:
            node.drain_scheduled = True
            self.schedule(max(0, node.busy_until - self.now), self._drain, node.id)

    def _restored_state(self, node: SimNode) -> tuple[BrokerState, Membership | None]:
        """As the node does (``node/snapshots.py``): the newest snapshot with its consume
        queues, the log made to follow it if an install was cut short, or the log's start;
        and the membership the snapshot records."""
        # Files of few entries, written in small pieces: rolled, trimmed and torn often.
        queues = FileQueueStore(
            node.disk, f"/{node.id}/consumequeue", entries_per_file=16, flush_entries=4
        )
        try:
            snapshot, reset = start_from_snapshot(node.store, node.snapshots)
        except StorageError as error:
            raise SafetyViolation(f"{node.id} cannot start: {error}") from None
        if snapshot is None or reset:
            queues.clear()
        if snapshot is None:
            return self.state_factory(self.group, queues), None
        self.log(f"{node.id} restores its snapshot at {snapshot.index}")
        membership = Membership.decode(snapshot.membership) if snapshot.membership else None
        try:
            return self.state_factory.from_snapshot(self.group, snapshot.data, queues), membership
        except StorageError as error:
            raise SafetyViolation(f"{node.id} cannot open its consume queues: {error}") from None

    def drive(self, node_id: str) -> None:
        """Carry out the node's work now (after a client put some there)."""
        node = self.nodes[node_id]
        if node.driver is not None and self.now >= node.busy_until:
            self._drive(node)

    def wall_clock_ms(self, node_id: str) -> int:
        return EPOCH_MS + self.now

    def _drive(self, node: SimNode) -> None:
        driver = node.driver
        core = node.core
        assert driver is not None and core is not None
        self._observe_role(node, core)
        if driver.is_leader and node.broker is not None:
            node.broker.keep_settings()
        if node.pending is not None or not driver.has_work():
            return
        inline = can_write_inline(core.log.unstable)
        work = driver.take(self.now * SECONDS_PER_UNIT)
        ready = work.ready
        if work.snapshot is not None:
            self.checker.snapshot_installed(node.id, *work.snapshot)
        self.checker.entries_appended(node.id, ready.entries, core)
        if ready.hard_state is not None:
            self.checker.commit_seen(node.id, ready.hard_state.commit, core)
        node.pending = work
        self._send_all(work.send_first)
        try:
            self._write(node, work)
        except StorageError as error:
            self._storage_failed(node, error)
            return
        if not work.writes:
            self._persisted(node.id, node.incarnation)
            return
        latency = node.disk_latency_units
        if inline:
            node.busy_until = max(node.busy_until, self.now + latency)
        self.schedule(latency, self._persisted, node.id, node.incarnation)

    def _persisted(self, node_id: str, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation or node.driver is None:
            return
        if self._deferred(node, self._persisted, node_id, incarnation):
            return  # paused: its fsync is done, but nothing runs there to carry on
        work = node.pending
        assert work is not None
        try:
            node.store.sync()
            if work.recovered:
                node.store.finish_recovery()
                self.log(f"{node_id} has caught up: it votes again")
        except StorageError as error:
            self._storage_failed(node, error)
            return
        self._send_all(work.send_after)
        if work.snapshot is not None:
            self.checker.snapshot_applied(node.id, work.snapshot[0])
        committed = work.ready.committed_entries
        if committed:
            self.checker.entries_applied(node.id, committed)
        node.pending = None
        node.driver.finish(work)
        if node.broker is not None and node.broker.trim_to:
            try:
                node.broker.trim()
            except StorageError as error:
                self._storage_failed(node, error)
                return
        self._drive(node)

    def _write(self, node: SimNode, work: ReadyWork) -> None:
        """Write the work's batch to the page cache; ``_persisted`` fsyncs it later."""
        store = node.store
        if work.snapshot is not None:
            # As the node: what was derived from the old log goes first, durably.
            assert node.broker is not None
            node.broker.state.queues.clear()
            store.reset_to_snapshot(*work.snapshot)
        if not work.writes:
            return
        if work.entries and work.entries[0].index <= store.last_index():
            self.log(f"{node.id} truncates from {work.entries[0].index}")
        if work.hard_state is not None:
            self.checker.hard_state_persisted(node.id, store.hard_state(), work.hard_state)
        store.save(list(work.entries), work.hard_state)

    def _observe_role(self, node: SimNode, core: RaftCore) -> None:
        if core.role is not node.last_role:
            node.last_role = core.role
            self.log(f"{node.id} is {core.role.value} in term {core.term}")
            self.checker.role_seen(node.id, core.role, core.term, core)

    # -- network -----------------------------------------------------------------------------

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        """Each message goes out as the payload of a peer link's frame and is decoded and
        checked on arrival as the transport does it (``decode_peer_message``)."""
        rng = self.rng
        options = self.options
        link_clear_at = self.link_clear_at
        for message in messages:
            link = (message.source, message.target)
            if link in self.blocked:
                continue
            if self.drop_rate and rng.random() < self.drop_rate:
                continue
            payload = encode_peer_message(message, GROUP)
            delay = rng.randint(options.min_delay_units, options.max_delay_units)
            delay += self.slow_links.get(link, 0)
            if not (options.reorder_rate and rng.random() < options.reorder_rate):
                delay = max(delay, link_clear_at.get(link, 0) - self.now)
                link_clear_at[link] = self.now + delay
            self.schedule(delay, self._deliver, link, payload)
            if self.duplicate_rate and rng.random() < self.duplicate_rate:
                delay = rng.randint(options.min_delay_units, options.max_delay_units * 2)
                self.schedule(delay, self._deliver, link, payload)

    def _deliver(self, link: tuple[str, str], payload: bytes) -> None:
        if link in self.blocked:
            return
        node = self.nodes[link[1]]
        if node.driver is None or self._deferred(node, self._deliver, link, payload):
            return
        node.driver.step(decode_peer_message(payload, GROUP, link[0], link[1]))
        self._drive(node)

    def heal_network(self) -> None:
        self.blocked.clear()
        self.slow_links.clear()

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
        return self.propose_batch([data])

    def propose_batch(self, batch: list[bytes]) -> bool:
        """A client proposes ``batch`` (entries at consecutive indexes) where it believes the
        leader is, following hints; each value counts as acknowledged when the driver answers
        the proposal without an error."""
        target = self.client_leader_guess
        if target is None or self.nodes[target].driver is None:
            target = self.rng.choice(sorted(self.nodes))
        node = self.nodes[target]
        driver = node.driver
        if driver is None or self.now < node.busy_until:
            return False
        proposal: Proposal | None = None

        def answered() -> None:
            assert proposal is not None
            if proposal.error is None:
                self.acknowledged.update(batch)

        try:
            proposal = driver.propose(batch, answered)
        except NotLeader as error:
            self.client_leader_guess = error.leader_hint
            return False
        self.client_leader_guess = target
        for position, data in enumerate(batch):
            self.proposed[data] = (target, proposal.first + position, proposal.term)
        self._drive(node)
        return True

    def leaders(self) -> list[str]:
        return [
            node.id
            for node in self.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]

    def outsiders(self) -> frozenset[str]:
        """Nodes outside the newest committed membership (spares never added, servers
        removed): nothing reaches them, so nothing is expected of them."""
        members = self.bootstrap_members
        for _, kind, data in reversed(self.checker.committed):
            if kind is EntryKind.CONFIG:
                committed = Membership.decode(data)
                members = frozenset((*committed.voter_ids, *committed.learner_ids))
                break
        return frozenset(self.nodes) - members

    def check_converged(self) -> None:
        """After the liveness phase: every acknowledged proposal is committed, in every log."""
        committed_values = {
            data for _, kind, data in self.checker.committed if kind is EntryKind.NORMAL
        }
        lost = self.acknowledged - committed_values
        if lost:
            raise SafetyViolation(f"acknowledged proposals lost: {sorted(lost)[:5]}")


__all__ = ["Cluster", "LivenessViolation", "SafetyViolation", "SimNode"]
