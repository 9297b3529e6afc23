"""One `dledger-mq node` process, assembled from its parts.

``assemble_node`` builds them in dependency order, each from what exists before it: the broker
state and the signal its long polls wait on, then the replica (its core, its peer transport,
and the ``apply`` that feeds the state), then the broker service on top, then the ``Node``
that answers clients. ``run_node`` runs them: the replica and the peer listener first, the
naming node and the registration, the client listener last.

Stopping, as hypercorn's Trio worker does: the ``shutdown_trigger`` (by default SIGTERM or
SIGINT) returns, and the graceful stop runs under one deadline (``graceful_stop_ms``): stop
accepting clients; if this node leads, hand leadership to the most up-to-date follower while
the open connections still get their answers (a request in flight learns where the leader
went); then close the connections and stop; the last fsync finishes as the log writer closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import random
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import structlog
import trio

from dledger_mq.broker.authorization import BrokerAccess
from dledger_mq.broker.records import BrokerSettings
from dledger_mq.broker.service import AppliedSignal, BrokerService, RequestHandler
from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import BadRequest, DledgerError, NotLeader
from dledger_mq.naming.server import serve_naming
from dledger_mq.node.certificates import NodeTls, node_tls
from dledger_mq.node.config import NodeConfig
from dledger_mq.node.data_dir import RECOVERING_HINT, identity_of, log_directory
from dledger_mq.node.harness import NO_HARNESS, UNSAFE_FLUSH_INTERVAL_MS, HarnessOptions
from dledger_mq.node.key_index_keeper import keep_key_index, open_key_index
from dledger_mq.node.registration import register_forever
from dledger_mq.node.retention import keep_retention
from dledger_mq.node.snapshots import (
    consume_queue_store,
    install_snapshot,
    restore_state,
    snapshot_membership,
    snapshot_store,
    take_final_snapshot,
    take_snapshots,
)
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.membership import (
    ChangeKind,
    GroupMember,
    Membership,
    MembershipChange,
)
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.pure.progress import ProgressState
from dledger_mq.raft.runtime.log_writer import LogWriter, open_log_writer
from dledger_mq.raft.runtime.replica import Replica
from dledger_mq.raft.runtime.transport import TransportConfig
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.simulated_disks import PowerLossDisk
from dledger_mq.raft.storage.snapshots import SnapshotStore
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import (
    ADMIN_CODEC,
    ChangeMembershipRequest,
    FollowerLag,
    MemberInfo,
    MembershipReply,
    MembershipRequest,
    NodeStatsReply,
    NodeStatsRequest,
    ProposeBatchReply,
    ProposeBatchRequest,
    ProposeReply,
    ProposeRequest,
    RuleInfo,
    StatusReply,
    StatusRequest,
    TransferLeaderReply,
    TransferLeaderRequest,
    WhoAmIReply,
    WhoAmIRequest,
)
from dledger_mq.wire.client_auth import Credentials, node_credentials
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.naming import BrokerRegistration, RegisteredTopic
from dledger_mq.wire.peer_auth import load_cluster_secret
from dledger_mq.wire.rpc import ServerLimits, Session, serve_requests
from dledger_mq.wire.rpc import error_reply as rpc_error_reply
from dledger_mq.wire.websocket import ConnectionLimits, WebSocket, serve_websockets

logger = structlog.get_logger()

#: Committed entries applied in one Ready: about 20 ms of applying 100 B messages here, so
#: that the replica yields to the event loop often during a catch-up or a replay.
APPLY_BATCH_BYTES = 256 << 10

#: What ends a node's run: an awaitable that returns when the node should stop.
ShutdownTrigger = Callable[[], Awaitable[None]]


@contextlib.contextmanager
def stop_signals() -> Iterator[ShutdownTrigger]:
    """The default shutdown trigger: SIGTERM or SIGINT, caught from the moment this is entered,
    so that one that arrives while the node is still starting (recovering its log) stops it
    gracefully once it has started, instead of killing it."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def trigger() -> None:
            async for signum in signals:
                logger.info("node_stopping", signal=signal.Signals(signum).name)
                return

        yield trigger


class RegistrationSignal:
    """Fired whenever what this replica tells naming changes: its role or term (a new leader
    is findable within a round trip), or its topics and their queue counts (a topic created
    or extended onto this group is routed to at once, not a heartbeat later)."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def changed(self) -> None:
        self.event.set()
        self.event = trio.Event()

    async def follow_leader_changes(self, replica: Replica) -> None:
        while True:
            await replica.leader_changed.wait()
            self.changed()


class Node:
    """One replica of a broker group as its clients see it: one table from request type to
    handler, the broker's requests and the replica's own (status, raw proposals, transfers)."""

    def __init__(
        self,
        config: NodeConfig,
        replica: Replica,
        state: BrokerState,
        broker: BrokerService,
        rng: random.Random,
        snapshots: SnapshotStore,
        harness: HarnessOptions = NO_HARNESS,
        tls: NodeTls | None = None,
        registration_signal: RegistrationSignal | None = None,
    ) -> None:
        self.registration_signal = registration_signal or RegistrationSignal()
        #: TLS contexts (``node/certificates.py``); None: plain connections.
        self.tls = tls
        self.config = config
        self.snapshots = snapshots
        self.replica = replica
        self.state = state
        self.broker = broker
        self.rng = rng
        self.log = logger.bind(node=config.node_id, group=config.group)
        self.access = BrokerAccess(state, config.protected_mode)
        self.limits = ServerLimits(
            hello_timeout_seconds=config.client_hello_timeout_ms / 1000,
            idle_timeout_seconds=config.client_idle_timeout_ms / 1000,
            max_pre_auth_bytes=config.max_pre_auth_bytes,
        )
        self.connection_limits = ConnectionLimits(
            config.max_client_connections, config.max_connections_per_address
        )
        self.handlers: dict[type, RequestHandler] = {
            **broker.handlers(),
            StatusRequest: self._status,
            TransferLeaderRequest: self._transfer_leader,
            ChangeMembershipRequest: self._change_membership,
            MembershipRequest: self._membership,
            NodeStatsRequest: self._node_stats,
        }
        if harness.raw_proposals:
            # Raw bytes skip every check the broker makes: for benchmarks and the harness only.
            self.handlers[ProposeRequest] = self._propose
            self.handlers[ProposeBatchRequest] = self._propose_batch

    # -- the client API ------------------------------------------------------------------------

    async def handle_client(self, websocket: WebSocket) -> None:
        """Serve one client connection; nothing a client does can stop the node."""
        await serve_requests(
            websocket,
            ADMIN_CODEC,
            self.config.cluster_id,
            self.config.node_id,
            self.serve,
            lambda error: error_reply(error, self.client_address),
            access=self.access,
            limits=self.limits,
        )

    async def serve(self, message: object, session: Session) -> object:
        """The reply to one request of ``session``, once it is allowed (``authorization.py``)."""
        self.access.authorize(session, message)
        if isinstance(message, WhoAmIRequest):
            return self._who_am_i(session)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise BadRequest(f"{type(message).__name__} is not a request")
        reply = await handler(message)
        # A message read by id: only now is its topic known, and with it who may read it.
        self.access.authorize_reply(session, reply)
        return reply

    def _who_am_i(self, session: Session) -> WhoAmIReply:
        user = self.access.user_of(session)
        rules = sorted(user.rules) if user is not None else []
        return WhoAmIReply(
            session.user,
            tuple(RuleInfo(rule.resource, rule.action) for rule in rules),
            self.access.anonymous_allowed(session),
        )

    async def _status(self, request: StatusRequest) -> StatusReply:
        return self.status()

    async def _propose(self, request: ProposeRequest) -> ProposeReply:
        return ProposeReply(await self.replica.propose(request.data))

    async def _propose_batch(self, request: ProposeBatchRequest) -> ProposeBatchReply:
        if not request.entries:
            raise BadRequest("a batch needs at least one entry")
        first = await self.replica.propose_batch(list(request.entries))
        return ProposeBatchReply(first, len(request.entries))

    async def _transfer_leader(self, request: TransferLeaderRequest) -> TransferLeaderReply:
        if request.target == self.config.node_id and self.replica.core.role is Role.LEADER:
            return TransferLeaderReply(self.config.node_id)
        self.replica.transfer_leadership(request.target)
        with trio.move_on_after(self._election_timeout_seconds() * 2):
            while self.replica.core.leader != request.target:
                await self.replica.leader_changed.wait()
        leader = self.replica.core.leader
        if leader != request.target:
            raise NotLeader(leader, f"transfer to {request.target} did not complete")
        return TransferLeaderReply(leader)

    async def _change_membership(self, request: ChangeMembershipRequest) -> MembershipReply:
        try:
            kind = ChangeKind(request.action)
        except ValueError:
            raise BadRequest(
                f"membership action {request.action!r}: one of "
                f"{', '.join(kind.value for kind in ChangeKind)}"
            ) from None
        if kind is ChangeKind.ADD_LEARNER:
            for name, address in (("peer", request.peer), ("client", request.client)):
                try:
                    Address.parse(address)
                except ValueError as error:
                    raise BadRequest(f"{name} address of {request.node_id}: {error}") from None
        member = GroupMember(request.node_id, request.peer, request.client)
        index = await self.replica.change_membership(MembershipChange(kind, member))
        reply = await self._membership(MembershipRequest())
        return attrs.evolve(reply, index=index)

    async def _membership(self, request: MembershipRequest) -> MembershipReply:
        log = self.replica.core.log
        membership = log.membership

        def info(member: GroupMember) -> MemberInfo:
            return MemberInfo(member.node_id, member.peer, self.client_address(member.node_id))

        return MembershipReply(
            tuple(info(m) for m in membership.voters),
            tuple(info(m) for m in membership.learners),
            log.memberships.newest_index,
        )

    def client_address(self, node_id: str) -> str:
        """Where clients reach ``node_id``: as its membership entry says, else as configured."""
        member = self.replica.core.membership.member(node_id)
        if member is not None and member.client:
            return member.client
        configured = self.config.members.get(node_id)
        return configured.client if configured is not None else ""

    def _election_timeout_seconds(self) -> float:
        return self.replica.core.config.election_timeout_ticks * self.config.tick_ms / 1000

    def membership_at(self, index: int) -> bytes:
        """The group's membership at ``index``, encoded, for a snapshot taken there."""
        return self.replica.core.log.memberships.at(index).encode()

    def registration(self) -> BrokerRegistration:
        """How this replica describes itself to naming nodes."""
        core = self.replica.core
        role = "candidate" if core.role.value == "pre-candidate" else core.role.value
        return BrokerRegistration(
            group=self.config.group,
            node_id=self.config.node_id,
            role=role,
            term=core.term,
            address=self.config.me.client,
            topics=tuple(
                RegisteredTopic(topic.name, topic.queue_count) for topic in self.state.topics()
            ),
            # The smaller of what is applied and what this node will make it when it leads: a
            # producer told the larger one while a smaller one is being applied would be
            # refused its retries.
            idempotence_window=min(
                self.state.settings.idempotence_window, self.config.idempotence_window
            ),
        )

    async def _node_stats(self, request: NodeStatsRequest) -> NodeStatsReply:
        from dledger_mq.node.metrics import node_stats  # with the HTTP parts: loaded on use

        return node_stats(self)

    def status(self) -> StatusReply:
        status = self.replica.core.status()
        # A follower that lost its log and does not vote until caught up says so.
        recovering = self.replica.core.recovering and status.role is Role.FOLLOWER
        return StatusReply(
            node_id=status.node_id,
            group=self.config.group,
            address=self.client_address(status.node_id),
            role="recovering" if recovering else status.role.value,
            term=status.term,
            leader=status.leader,
            leader_address=self.client_address(status.leader) if status.leader else None,
            last_index=status.last_index,
            commit_index=status.commit,
            applied_index=status.applied,
            followers=tuple(
                FollowerLag(f.node_id, f.match, status.last_index - f.match)
                for f in status.followers
            ),
        )

    # -- stopping ------------------------------------------------------------------------------

    async def hand_over_leadership(self) -> None:
        """If this node leads, make the most up-to-date answering follower lead instead, and
        wait (at most an election timeout) until this node knows it does."""
        core = self.replica.core
        if core.role is not Role.LEADER or not core.progress:
            return
        # The most up-to-date of the followers that are answering: one that was just
        # restarted may still hold a high match index but miss the TimeoutNow.
        target = max(
            core.progress,
            key=lambda peer: (
                core.progress[peer].recent_active,
                core.progress[peer].state is ProgressState.REPLICATE,
                core.progress[peer].match,
            ),
        )
        self.log.info("leadership_handover", target=target)
        try:
            self.replica.transfer_leadership(target)
        except DledgerError:
            return
        with trio.move_on_after(self._election_timeout_seconds()):
            # Until another node is known to lead: a request answered meanwhile learns where.
            while core.leader in (None, core.id):
                await self.replica.leader_changed.wait()


def error_reply(error: DledgerError, client_address: Callable[[str], str]) -> ErrorReply:
    """The typed error reply, with the leader's client address when the error names a leader
    (``client_address``: node id -> its client address, "" if unknown)."""
    leader_address = None
    if isinstance(error, NotLeader) and error.leader_hint:
        leader_address = client_address(error.leader_hint) or None
    return rpc_error_reply(error, leader_address)


# -- the parts -------------------------------------------------------------------------------------


def open_commit_log(config: NodeConfig, harness: HarnessOptions) -> CommitLog:
    """This node's log (``node/data_dir.py``): refused if it is another node's or damaged; made
    as a recovering replica's if it is missing (it lost its log: it votes again only once a
    leader has caught it up)."""
    flush_policy, flush_interval_ms = FlushPolicy(config.flush), config.flush_interval_ms
    if harness.ack_before_fsync:
        flush_policy, flush_interval_ms = FlushPolicy.ASYNC, UNSAFE_FLUSH_INTERVAL_MS
    return CommitLog.open(
        PowerLossDisk() if harness.lose_unsynced else OsDisk(),
        log_directory(config),
        segment_size_bytes=config.segment_size_bytes,
        flush_policy=flush_policy,
        flush_interval_ms=flush_interval_ms,
        create=True,
        recovering_if_created=True,
        identity=identity_of(config),
    )


def raft_core(
    config: NodeConfig,
    commit_log: CommitLog,
    rng: random.Random,
    applied: int = 0,
    membership: Membership | None = None,
) -> RaftCore:
    """``membership``: the one the snapshot at ``applied`` records (None: the bootstrap,
    ``members`` with ``learners``, addresses and all)."""
    voters = tuple(node_id for node_id in config.members if node_id not in config.learners)
    bootstrap = Membership(
        tuple(_group_member(node_id, config) for node_id in voters),
        tuple(_group_member(node_id, config) for node_id in config.learners),
    )
    return RaftCore(
        Config(
            node_id=config.node_id,
            members=voters,
            learners=tuple(config.learners),
            election_timeout_ticks=config.election_ticks,
            heartbeat_interval_ticks=config.heartbeat_ticks,
            max_append_bytes=config.max_append_bytes,
            max_inflight_appends=config.max_inflight_appends,
            max_apply_bytes=APPLY_BATCH_BYTES,
        ),
        commit_log,
        rng,
        applied=applied,
        recovering=commit_log.recovering,
        lost_tail=commit_log.lost_tail,
        membership=membership or bootstrap,
    )


def _group_member(node_id: str, config: NodeConfig) -> GroupMember:
    member = config.members[node_id]
    return GroupMember(node_id, member.peer, member.client)


def cluster_secret(config: NodeConfig) -> bytes | None:
    return load_cluster_secret(config.cluster_secret_file) if config.cluster_secret_file else None


def transport_config(config: NodeConfig, tls: NodeTls | None = None) -> TransportConfig:
    return TransportConfig(
        cluster_id=config.cluster_id,
        node_id=config.node_id,
        group=config.group,
        peers=config.peers,
        secret=cluster_secret(config),
        tls_server=tls.peer_server if tls is not None else None,
        tls_client=tls.peer_client if tls is not None else None,
        max_frame_bytes=config.max_frame_bytes,
        own_address=config.me.peer,
    )


def desired_settings(config: NodeConfig, state: BrokerState) -> BrokerSettings:
    """What this node's configuration asks of the replicated broker settings."""
    return attrs.evolve(
        state.settings,
        auto_create_topics=config.auto_create_topics,
        default_queue_count=config.default_queue_count,
        max_body_bytes=config.max_body_bytes,
        idempotence_window=config.idempotence_window,
        max_topics=config.max_topics,
        max_delay_ms=config.max_delay_ms,
        max_timers=config.max_timers,
    )


def assemble_node(
    config: NodeConfig,
    commit_log: CommitLog,
    writer: LogWriter,
    harness: HarnessOptions = NO_HARNESS,
) -> Node:
    """Every part of a node, each built from the ones before it."""
    rng = random.Random()
    tls = node_tls(config)
    # The broker state is derived from the log: after a restart, the newest usable snapshot
    # and then the entries after it, applied again.
    snapshots = snapshot_store(config)
    state = restore_state(config, commit_log, snapshots, consume_queue_store(config))
    # A follower is sent a snapshot from before the oldest pending timer, whose message it
    # must get as an entry (docs/broker.md, "Timers").
    snapshots.pin = state.lowest_timer_index
    applied = AppliedSignal()
    registration = RegistrationSignal()
    topics_seen = state.topics_changed
    key_index = open_key_index(config, state)

    def apply(entry: Entry) -> object:
        nonlocal topics_seen
        result = state.apply(entry.index, entry.data)
        key_index.apply(entry.index, state.last_unpacked or entry.data)
        applied.notify(len(entry.data))
        if state.topics_changed != topics_seen:
            topics_seen = state.topics_changed
            registration.changed()  # naming learns a new topic (or queue count) at once
        return result

    replica = Replica(
        raft_core(
            config,
            commit_log,
            rng,
            applied=state.applied_index,
            membership=snapshot_membership(commit_log, snapshots, state.applied_index),
        ),
        commit_log,
        writer,
        transport_config(config, tls),
        rng,
        config.tick_ms / 1000,
        apply,
        snapshots=snapshots,
        restore=functools.partial(install_snapshot, state, snapshots),
        before_reset=state.queues.clear,
    )
    broker = BrokerService(
        state,
        replica,
        commit_log,
        desired_settings(config, state),
        applied=applied,
        broker_group=config.group,
        key_index=key_index,
    )
    # Counted only where someone can read them: with no /metrics, the hot path records nothing.
    broker.traffic.enabled = commit_log.write_stats.enabled = bool(config.http_listen)
    return Node(config, replica, state, broker, rng, snapshots, harness, tls, registration)


async def serve_peers_and_naming(
    node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The replica, the peer listener, the settings keeper, the naming node this node runs (if
    any) and the registration with every naming node; returns when cancelled."""
    config, replica = node.config, node.replica
    peer_address = Address.parse(config.me.peer)
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.run)
        nursery.start_soon(node.broker.keep_settings, lambda: replica.leader_changed)
        nursery.start_soon(node.broker.deliver_timers, lambda: replica.leader_changed)
        nursery.start_soon(
            take_snapshots,
            config,
            node.state,
            replica.log,
            node.broker.applied,
            node.snapshots,
            node.membership_at,
            node.broker.queries.key_index,
        )
        nursery.start_soon(keep_retention, config, replica.log, node.snapshots, node.broker)
        if node.broker.queries.key_index is not None:
            nursery.start_soon(
                keep_key_index,
                node.broker.queries.key_index,
                node.state,
                replica.log,
                node.broker.applied,
            )
        await nursery.start(
            functools.partial(
                trio.serve_tcp,
                replica.transport.handle_incoming,
                peer_address.port,
                host=peer_address.host,
            )
        )
        if config.naming_listen:
            naming_address = Address.parse(config.naming_listen)
            await nursery.start(
                functools.partial(
                    serve_naming,
                    naming_address.host,
                    naming_address.port,
                    config.cluster_id,
                    f"naming@{config.node_id}",
                    config.naming_heartbeat_ms,
                    node.replica.transport.config.secret,
                    ssl_context=node.tls.server if node.tls is not None else None,
                )
            )
        if config.http_listen:
            from dledger_mq.node.metrics import serve_operator_http

            await nursery.start(serve_operator_http, node, config.http_listen)
        if config.naming:
            signal = node.registration_signal
            nursery.start_soon(signal.follow_leader_changes, replica)
            nursery.start_soon(
                register_forever,
                config.naming,
                config.cluster_id,
                node.registration,
                lambda: signal.event,
                config.naming_heartbeat_ms / 1000,
                node.rng,
                _naming_credentials(node),
                node.tls.client if node.tls is not None else None,
            )
        task_status.started()


def _naming_credentials(node: Node) -> Credentials | None:
    secret = node.replica.transport.config.secret
    return node_credentials(secret, node.config.node_id) if secret is not None else None


async def run_node(
    config: NodeConfig,
    *,
    harness: HarnessOptions = NO_HARNESS,
    shutdown_trigger: ShutdownTrigger | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until ``shutdown_trigger`` returns (by default: SIGTERM or SIGINT), then
    stop it gracefully within ``config.graceful_stop_ms`` (module docstring)."""
    give_large_blocks_back()
    with contextlib.ExitStack() as stack:
        if shutdown_trigger is None:
            shutdown_trigger = stack.enter_context(stop_signals())
        await _run_node(config, harness, shutdown_trigger, task_status)


#: glibc's ``mallopt`` parameter for the size above which blocks are mapped on their own.
_M_MMAP_THRESHOLD = -3


def give_large_blocks_back() -> None:
    """Once a large block is freed, glibc raises its mmap threshold to that size, and later
    blocks as large come from the heap, which keeps them when freed: every snapshot's tens of
    MB (a million pending timers are 16 MB, packed more than once) would stay in the node's
    RSS for good. A fixed threshold maps blocks over 128 KiB on their own, and gives them back
    when freed. Elsewhere than glibc: nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


async def _run_node(
    config: NodeConfig,
    harness: HarnessOptions,
    shutdown_trigger: ShutdownTrigger,
    task_status: trio.TaskStatus[Node],
) -> None:
    log = logger.bind(node=config.node_id, group=config.group)
    if harness.any:
        log.warning("harness_options", **attrs.asdict(harness))
    commit_log = open_commit_log(config, harness)
    try:
        async with open_log_writer(commit_log) as writer:
            node = assemble_node(config, commit_log, writer, harness)
            async with trio.open_nursery() as nursery:
                # The peer side outlives the client side: a stopping leader still needs its
                # followers' answers to hand leadership over.
                await nursery.start(serve_peers_and_naming, node)
                async with trio.open_nursery() as connections:
                    listener = await _start_client_listener(nursery, connections, node)
                    log.info(
                        "node_started",
                        peer=config.me.peer,
                        client=config.me.client,
                        data_dir=config.data_dir,
                        flush=config.flush,
                    )
                    if node.replica.core.recovering:
                        log.warning("recovering", hint=RECOVERING_HINT)
                    _say_how_clients_get_in(node, log)
                    task_status.started(node)
                    await shutdown_trigger()
                    with trio.move_on_after(config.graceful_stop_ms / 1000) as graceful:
                        listener.cancel()
                        await node.hand_over_leadership()
                    if graceful.cancelled_caught:
                        log.warning("graceful_stop_cut_short", limit_ms=config.graceful_stop_ms)
                    connections.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
            # Nothing applies any more: a restart then applies nothing again.
            take_final_snapshot(
                config,
                node.state,
                commit_log,
                node.snapshots,
                node.membership_at,
                node.broker.queries.key_index,
            )
    finally:
        commit_log.close()
        log.info("node_stopped")


def _say_how_clients_get_in(node: Node, log: Any) -> None:
    """One line at start: whether clients must sign in, or who is let in without."""
    if node.state.user_count:
        log.info("clients_sign_in", users=node.state.user_count)
    elif node.config.protected_mode:
        log.warning(
            "protected_mode",
            detail="no users exist: clients are let in from loopback only, without signing in; "
            "add a user (dledger-mq user add) to let others in",
        )
    else:
        log.warning("open_to_anonymous_clients", detail="no users and protected_mode = false")


async def _start_client_listener(
    nursery: trio.Nursery, connections: trio.Nursery, node: Node
) -> trio.CancelScope:
    """Accept clients in ``nursery`` and serve each connection in ``connections``; returns the
    scope that stops accepting (the connections go on until their nursery is cancelled)."""
    address = Address.parse(node.config.me.client)
    accepting = trio.CancelScope()

    async def accept(*, task_status: trio.TaskStatus[int]) -> None:
        with accepting:
            await serve_websockets(
                node.handle_client,
                address.host,
                address.port,
                max_message_bytes=node.config.max_frame_bytes,
                handler_nursery=connections,
                limits=node.connection_limits,
                ssl_context=node.tls.server if node.tls is not None else None,
                task_status=task_status,
            )

    await nursery.start(accept)
    return accepting
