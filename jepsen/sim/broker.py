"""The broker in the simulator: every node applies the log to the production ``BrokerState``,
and simulated clients go through the production ``BrokerService`` of the node they reach.

- **Producers** (idempotent) send small batches to the node they believe leads and retry the
  same batch, same sequences, on a ``NotLeader`` answer or when no answer came in time (the
  first attempt may still commit: the retry must then get the original's receipt).
- **Consumers** of one group heartbeat to the leader for their queues, pull from it, and commit
  what they read through the log.

Checked every run (``BrokerViolation``): a receipt never changes (a retried send gets the
original's place); a node's committed offsets never go back; no two consumers hold one FIFO
queue at once; and once healed, every acknowledged send is readable at its receipt's place on
every replica, and no message is stored twice.
"""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING

from dledger_mq.broker.records import (
    SLOT_BITS,
    BrokerSettings,
    ConfigureBroker,
    CreateTopic,
    encode_command,
)
from dledger_mq.broker.service import (
    BrokerService,
    PreparedSend,
    commit_reply,
    prepare_commit,
    send_reply,
)
from dledger_mq.broker.state import ApplyResult, BrokerState, OffsetsCommitted, OffsetsReset
from dledger_mq.errors import BadRequest, NotLeader, StorageError, TopicNotFound, Unavailable
from dledger_mq.raft.pure.core import RaftCore
from dledger_mq.raft.pure.driver import Proposal, Read, ReplicaDriver
from dledger_mq.raft.pure.log_store import LogStore
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.storage.snapshots import Snapshot, trim_floor
from dledger_mq.wire.broker import (
    CommitOffsetsRequest,
    ConsumerHeartbeat,
    OutgoingMessage,
    PullRequest,
    QueryOffsetsRequest,
    QueueOffset,
    Receipt,
    SendRequest,
)

if TYPE_CHECKING:
    from jepsen.sim.cluster import Cluster, SimNode

TOPIC = "orders"
GROUP_NAME = "billing"
QUEUES = 4
#: Time units (ms) between a producer's sends, and before an unanswered send is retried.
SEND_INTERVAL_UNITS = (20, 120)
#: An attempt not answered within this long is made again (the producer's silence timeout).
RETRY_UNITS = 300
HEARTBEAT_UNITS = 100
#: A FIFO consumer that no leader answered for this long stops reading its queues: less than
#: the three heartbeats after which the leader hands them to another consumer.
FIFO_LEASE_UNITS = 3 * HEARTBEAT_UNITS // 2
PULL_UNITS = 40
COMMIT_UNITS = 60


class BrokerViolation(Exception):
    """A broker guarantee was broken; the message says which."""


StateFactory = type[BrokerState]
#: A node snapshots its broker state every this many applied entries, and trims its log below
#: the older snapshot it keeps: followers that fall further behind get a snapshot.
SNAPSHOT_ENTRIES = 16


class _DriverHandle:
    """The service's view of its replica in the simulator: the driver says who leads; proposals
    go through the driver by the simulator itself, never through the service."""

    def __init__(self, driver: ReplicaDriver) -> None:
        self.driver = driver

    @property
    def is_leader(self) -> bool:
        return self.driver.is_leader

    @property
    def core(self) -> RaftCore:
        return self.driver.core

    async def propose_and_apply(self, data: bytes) -> object:
        raise AssertionError("the simulator proposes through the driver")

    async def read_barrier(self) -> None:
        raise AssertionError("the simulator reads through the driver")


class SimBroker:
    """One node's broker: its state (rebuilt from the log on every start) and its service."""

    def __init__(
        self,
        cluster: Cluster,
        node: SimNode,
        driver: ReplicaDriver,
        store: LogStore,
        settings: BrokerSettings,
        state: BrokerState,
    ) -> None:
        self.cluster = cluster
        self.node_id = node.id
        self.node = node
        self.store = store
        self.state = state
        self.last_snapshot = state.applied_index
        #: Where retention trims the log to next (0: nothing to do).
        self.trim_to = 0
        self.service = BrokerService(
            self.state,
            _DriverHandle(driver),
            store,
            settings,
            clock_ms=lambda: cluster.wall_clock_ms(node.id),
            monotonic_ms=lambda: cluster.now,
            # Three heartbeats, as in production (1 s beats, 3 s expiry), at the simulated pace.
            consumer_expiry_ms=3 * HEARTBEAT_UNITS,
        )
        self.driver = driver
        #: The term in which this node last proposed its settings (as ``keep_settings`` does).
        self.settings_proposed_term = -1
        #: The highest committed offset seen per (group, topic, queue) in this life.
        self.offsets_seen: dict[tuple[str, str, int], int] = {}

    def apply(self, entry: Entry) -> ApplyResult:
        result = self.state.apply(entry.index, entry.data)
        if (
            entry.index - self.last_snapshot >= SNAPSHOT_ENTRIES
            and entry.index <= self.node.store.durable_index()
        ):
            snapshots = self.node.snapshots
            try:
                data = self.state.to_snapshot()
                # As the node: the queues as of the snapshot are durable before it is saved.
                self.state.queues.flush()
                self.state.queues.sync()
                membership = self.driver.core.log.memberships.at(entry.index).encode()
                snapshots.save(Snapshot(entry.index, entry.term, data, membership))
            except (OSError, StorageError) as error:
                # As the node's snapshot task: reported, and tried again at the next interval.
                self.cluster.log(f"{self.node_id} could not save a snapshot: {error}")
            else:
                self.last_snapshot = entry.index
                if self.cluster.options.trim_log:
                    self.trim_to = trim_floor(snapshots)
        if isinstance(result, OffsetsCommitted):
            self._check_offsets()
        elif isinstance(result, OffsetsReset):
            for key in list(self.offsets_seen):
                if key[:2] == (result.group, result.topic):
                    del self.offsets_seen[key]
        return result

    def trim(self) -> None:
        """Retention, once the work that applied is finished: whole segments below the
        oldest snapshot kept go. ``StorageError`` as for any write of the log."""
        trim_to, self.trim_to = self.trim_to, 0
        if trim_to > self.node.store.first_index():
            self.node.store.trim_prefix(trim_to)
            self.state.queues.trim(self.node.store.first_index() << SLOT_BITS)

    def restore(self, index: int, term: int) -> None:
        """InstallSnapshot: the state becomes the leader's snapshot, now the newest here."""
        snapshot = self.node.snapshots.get(index, term)
        if snapshot is None:
            newest = self.node.snapshots.latest()
            raise BrokerViolation(
                f"{self.node_id}: the snapshot {index}@{term} to install is gone (newest: "
                f"{None if newest is None else (newest.index, newest.term)})"
            )
        self.state.load_snapshot(snapshot.data)
        self.last_snapshot = index

    def _check_offsets(self) -> None:
        for queue_id in range(QUEUES):
            key = (GROUP_NAME, TOPIC, queue_id)
            offset = self.state.committed_offset(*key)
            if offset is None:
                continue
            if offset > self.state.max_offset(TOPIC, queue_id):
                raise BrokerViolation(
                    f"{self.node_id}: committed offset {offset} of {key} is past the end "
                    f"({self.state.max_offset(TOPIC, queue_id)})"
                )
            seen = self.offsets_seen.get(key, -1)
            if offset < seen:
                raise BrokerViolation(
                    f"{self.node_id}: committed offset of {key} went back from {seen} to {offset}"
                )
            self.offsets_seen[key] = offset

    def keep_settings(self) -> None:
        """While leading, propose this node's settings once per term if the log's differ."""
        driver = self.driver
        term = driver.core.term
        if not driver.is_leader or self.settings_proposed_term == term:
            return
        if self.service.settings_current():
            return
        desired = self.service.desired_settings
        assert desired is not None
        self.settings_proposed_term = term
        with contextlib.suppress(NotLeader):
            driver.propose([encode_command(ConfigureBroker(desired))])


class _Producer:
    def __init__(self, workload: BrokerWorkload, number: int) -> None:
        self.workload = workload
        self.producer_id = f"p{number}"
        self.next_sequence = 1
        self.next_body = 0
        #: The batch being sent (retried until answered), and how many attempts it took.
        self.batch: tuple[OutgoingMessage, ...] | None = None
        self.attempt = 0
        #: When the last attempt went out, and whether it was refused (retry at once).
        self.sent_at = 0
        self.refused = False
        self.leader_guess: str | None = None

    def tick(self) -> None:
        workload = self.workload
        if workload.stopped:
            return
        if self.batch is None:
            count = workload.rng.randint(1, 4)
            messages = []
            for _ in range(count):
                self.next_body += 1
                messages.append(
                    OutgoingMessage(
                        topic=TOPIC,
                        body=f"{self.producer_id}-{self.next_body}".encode(),
                        producer_id=self.producer_id,
                        sequence=self.next_sequence,
                    )
                )
                self.next_sequence += 1
            self.batch = tuple(messages)
            self.attempt = 0
        elif not self.refused and workload.cluster.now - self.sent_at < RETRY_UNITS:
            workload.schedule_producer(self)  # the last attempt may still be answered
            return
        self.attempt += 1
        self.sent_at, self.refused = workload.cluster.now, False
        self._send(self.batch, self.attempt)
        workload.schedule_producer(self)

    def _send(self, batch: tuple[OutgoingMessage, ...], attempt: int) -> None:
        workload = self.workload
        node_id = workload.pick_node(self.leader_guess)
        broker = workload.broker_at(node_id)
        if broker is None:
            self.leader_guess = None
            self.refused = True
            return
        try:
            prepared = broker.service.prepare_send(SendRequest(batch))
            proposal: Proposal | None = None

            def answered() -> None:
                assert proposal is not None
                self._answered(batch, attempt, prepared, proposal)

            proposal = broker.driver.propose([prepared.data], answered)
        except NotLeader as error:
            self.leader_guess = error.leader_hint
            self.refused = True
            return
        except Unavailable:
            self.refused = True
            return  # settings being applied: retried at the next tick
        except BadRequest as error:
            raise BrokerViolation(f"{self.producer_id} was refused {batch}: {error!r}") from None
        self.leader_guess = node_id
        workload.cluster.drive(node_id)

    def _answered(
        self,
        batch: tuple[OutgoingMessage, ...],
        attempt: int,
        prepared: PreparedSend,
        proposal: Proposal,
    ) -> None:
        if proposal.error is not None:
            if batch is self.batch:
                self.refused = True
            return  # not stored here (maybe elsewhere): the retry finds out
        try:
            reply = send_reply(prepared, proposal.result)
        except BadRequest as error:
            raise BrokerViolation(f"{self.producer_id}'s send was refused: {error!r}") from None
        for message, receipt in zip(batch, reply.receipts, strict=True):
            if receipt.error_code:
                raise BrokerViolation(
                    f"{self.producer_id} sequence {message.sequence} refused: "
                    f"{receipt.error_code} {receipt.error_message}"
                )
            self.workload.acknowledged(message.body, receipt)
        if batch is self.batch:
            self.batch = None


class _Consumer:
    def __init__(self, workload: BrokerWorkload, number: int) -> None:
        self.workload = workload
        self.consumer_id = f"c{number}"
        self.leader_guess: str | None = None
        self.queues: tuple[int, ...] = ()
        #: queue -> the next offset to read, once known.
        self.offsets: dict[int, int] = {}
        self.fifo = False
        #: When a leader last answered a heartbeat.
        self.last_reply = 0

    def heartbeat(self) -> None:
        workload = self.workload
        if workload.stopped:
            return
        workload.cluster.schedule(HEARTBEAT_UNITS, self.heartbeat)
        if self.fifo and self.queues and workload.cluster.now - self.last_reply > FIFO_LEASE_UNITS:
            # Unheard by the leader for longer than its lease: it may hand our queues to
            # another consumer any moment, so stop reading them first (RocketMQ's client lock
            # expires before the broker's for the same reason).
            self._release_all()
        node_id = workload.pick_node(self.leader_guess)
        broker = workload.broker_at(node_id)
        if broker is None:
            self.leader_guess = None
            return
        # As the production service does: a read barrier first, so that a deposed leader
        # that does not know it yet answers nothing (no FIFO grant, no stale membership).
        sent_at = workload.cluster.now
        read: list[Read] = []
        try:
            read.append(
                broker.driver.read(lambda: self._answered(node_id, broker, read[0], sent_at))
            )
        except NotLeader as error:
            self.leader_guess = error.leader_hint
            return
        workload.cluster.drive(node_id)

    def _answered(self, node_id: str, broker: SimBroker, read: Read, sent_at: int) -> None:
        """The read barrier of a heartbeat passed (or failed): the service answers it now."""
        workload = self.workload
        if workload.stopped or workload.broker_at(node_id) is not broker:
            return
        if read.error is not None:
            self.leader_guess = None
            return
        try:
            reply = broker.service.consumer_heartbeat_now(
                ConsumerHeartbeat(GROUP_NAME, TOPIC, self.consumer_id, held=self.queues)
            )
        except NotLeader as error:
            self.leader_guess = error.leader_hint
            return
        except TopicNotFound:
            return
        self.leader_guess = node_id
        # The lease runs from when the heartbeat was sent: the leader counted it from then.
        self.last_reply = sent_at
        self.fifo = reply.fifo
        if reply.queue_ids != self.queues:
            workload.cluster.log(
                f"{self.consumer_id} heartbeat at {node_id} (term {broker.driver.core.term}): "
                f"queues {self.queues} -> {reply.queue_ids}"
            )
            for queue_id in set(self.queues) - set(reply.queue_ids):
                self.offsets.pop(queue_id, None)
            self.queues = reply.queue_ids
        if reply.fifo:
            workload.holding(self, reply.queue_ids)

    def _release_all(self) -> None:
        self.workload.cluster.log(f"{self.consumer_id} lets go of {self.queues}: leader unheard")
        self.queues = ()
        self.offsets.clear()
        self.workload.holding(self, ())

    def pull(self) -> None:
        workload = self.workload
        if workload.stopped:
            return
        workload.cluster.schedule(PULL_UNITS, self.pull)
        if not self.queues or self.leader_guess is None:
            return
        broker = workload.broker_at(self.leader_guess)
        if broker is None:
            return
        service = broker.service
        try:
            if any(queue_id not in self.offsets for queue_id in self.queues):
                reply = service.query_offsets_now(QueryOffsetsRequest(GROUP_NAME, TOPIC))
                for item in reply.offsets:
                    if item.queue_id in self.queues:
                        self.offsets.setdefault(item.queue_id, max(item.offset, 0))
            for queue_id in self.queues:
                pulled = service.pull_now(PullRequest(TOPIC, queue_id, self.offsets[queue_id], 8))
                self.offsets[queue_id] = pulled.next_offset
        except (BadRequest, KeyError):
            return  # the topic is not there yet, or this node is behind: later

    def commit(self) -> None:
        workload = self.workload
        if workload.stopped:
            return
        workload.cluster.schedule(COMMIT_UNITS, self.commit)
        if not self.offsets or self.leader_guess is None:
            return
        broker = workload.broker_at(self.leader_guess)
        if broker is None:
            return
        offsets = dict(self.offsets)
        if workload.rng.random() < 0.1:
            # A client bug the broker must refuse: an offset past the end of the queue.
            queue_id = workload.rng.choice(sorted(offsets))
            offsets[queue_id] += 1000
        request = CommitOffsetsRequest(
            GROUP_NAME,
            TOPIC,
            tuple(QueueOffset(queue_id, offset) for queue_id, offset in sorted(offsets.items())),
        )
        proposal: Proposal | None = None

        def answered() -> None:
            assert proposal is not None
            if proposal.error is None:
                commit_reply(proposal.result)

        try:
            proposal = broker.driver.propose([prepare_commit(request)], answered)
        except NotLeader as error:
            self.leader_guess = error.leader_hint
            return
        workload.cluster.drive(self.leader_guess)


class BrokerWorkload:
    """Producers and consumers of one topic, through the brokers of the simulated nodes."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.fifo = rng.random() < 0.5
        self.producers = [_Producer(self, number) for number in range(rng.randint(1, 3))]
        self.consumers = [_Consumer(self, number) for number in range(rng.randint(1, 2))]
        #: body -> the receipt of its first acknowledgement.
        self.receipts: dict[bytes, Receipt] = {}
        #: Acknowledgements of a retried send that answered with the original's receipt.
        self.duplicates = 0
        #: FIFO queue -> the consumer that holds it.
        self.holders: dict[int, _Consumer] = {}
        self.topic_created = False
        #: Once stopped (the liveness phase), clients start nothing new.
        self.stopped = False

    def start(self) -> None:
        for producer in self.producers:
            self.schedule_producer(producer)
        for consumer in self.consumers:
            self.cluster.schedule(self.rng.randint(1, HEARTBEAT_UNITS), consumer.heartbeat)
            self.cluster.schedule(self.rng.randint(1, PULL_UNITS), consumer.pull)
            self.cluster.schedule(self.rng.randint(1, COMMIT_UNITS), consumer.commit)
        self.cluster.schedule(1, self._create_topic)

    def schedule_producer(self, producer: _Producer) -> None:
        # Each producer at the raw client's pace or slower, so that the drawn pipeline keeps
        # up (the liveness phase measures recovery, not the draining of a backlog).
        interval = self.cluster.options.propose_interval_units
        low = max(SEND_INTERVAL_UNITS[0], interval)
        high = max(SEND_INTERVAL_UNITS[1], 3 * interval)
        self.cluster.schedule(self.rng.randint(low, high), producer.tick)

    def _create_topic(self) -> None:
        """The topic is created once, explicitly (FIFO or not), before the first send lands:
        retried until a leader takes it."""
        if self.topic_created or self.stopped:
            return
        self.cluster.schedule(50, self._create_topic)
        for node_id in self.cluster.leaders():
            broker = self.broker_at(node_id)
            if broker is None:
                continue
            try:
                broker.driver.propose(
                    [encode_command(CreateTopic(TOPIC, QUEUES, self.fifo))], self._topic_answered
                )
            except NotLeader:
                continue
            self.cluster.drive(node_id)
            return

    def _topic_answered(self) -> None:
        self.topic_created = True

    # -- where clients go ------------------------------------------------------------------------

    def pick_node(self, guess: str | None) -> str:
        if guess is not None and guess in self.cluster.nodes:
            return guess
        return self.rng.choice(sorted(self.cluster.nodes))

    def broker_at(self, node_id: str) -> SimBroker | None:
        """The broker of ``node_id`` if a client can reach it now (it runs, it is not busy)."""
        node = self.cluster.nodes[node_id]
        if node.broker is None or self.cluster.now < node.busy_until:
            return None
        return node.broker

    # -- what the clients saw ------------------------------------------------------------------

    def acknowledged(self, body: bytes, receipt: Receipt) -> None:
        self.duplicates += receipt.duplicate
        first = self.receipts.setdefault(body, receipt)
        where = (first.msg_id, first.queue_id, first.offset)
        if (receipt.msg_id, receipt.queue_id, receipt.offset) != where:
            raise BrokerViolation(
                f"{body!r} acknowledged at {where}, then at "
                f"{(receipt.msg_id, receipt.queue_id, receipt.offset)}"
            )

    def holding(self, consumer: _Consumer, queues: tuple[int, ...]) -> None:
        for queue_id, holder in list(self.holders.items()):
            if holder is consumer and queue_id not in queues:
                del self.holders[queue_id]
        for queue_id in queues:
            holder = self.holders.setdefault(queue_id, consumer)
            if holder is not consumer:
                raise BrokerViolation(
                    f"FIFO queue {queue_id} granted to {consumer.consumer_id} while "
                    f"{holder.consumer_id} holds it"
                )

    def check_converged(self) -> None:
        """Every acknowledged send is where its receipt says on every replica; none twice."""
        try:
            self._check_converged()
        except StorageError as error:
            raise BrokerViolation(f"a replica cannot read its messages: {error}") from None

    def _check_converged(self) -> None:
        outsiders = self.cluster.outsiders()
        for node in self.cluster.nodes.values():
            if node.lost:
                continue  # refused its rotten log: down until an operator replaces it
            if node.id in outsiders:
                continue  # not a member: it holds what it had when it was one, if ever
            broker = node.broker
            assert broker is not None
            stored: dict[bytes, tuple[int, int]] = {}
            state = broker.state
            if state.topic(TOPIC) is None:
                if self.receipts:
                    raise BrokerViolation(f"{node.id} lost topic {TOPIC}")
                continue
            # Retention deleted the messages below each queue's held offset: their bodies can no
            # longer be read, only their places counted.
            held = [broker.service.held_offset(TOPIC, queue_id) for queue_id in range(QUEUES)]
            for queue_id in range(QUEUES):
                offset = held[queue_id]
                while offset < state.max_offset(TOPIC, queue_id):
                    reply = broker.service.pull_now(PullRequest(TOPIC, queue_id, offset, 256))
                    for message in reply.messages:
                        if message.body in stored:
                            raise BrokerViolation(
                                f"{node.id} stores {message.body!r} twice: at "
                                f"{stored[message.body]} and {(queue_id, message.offset)}"
                            )
                        stored[message.body] = (queue_id, message.offset)
                    offset = reply.next_offset
            for body, receipt in self.receipts.items():
                if receipt.offset < held[receipt.queue_id]:
                    continue
                if stored.get(body) != (receipt.queue_id, receipt.offset):
                    raise BrokerViolation(
                        f"{node.id}: acknowledged {body!r} at {(receipt.queue_id, receipt.offset)}"
                        f" but holds it at {stored.get(body)}"
                    )
