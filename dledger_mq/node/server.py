"""One `dledger-mq node` process: a Raft replica on the CommitLog, its peer listener (TCP) and
its client listener (WebSocket), all in one nursery.

Stopping (SIGTERM or SIGINT): stop accepting clients, hand leadership to the most up-to-date
follower if this node leads, let the in-flight fsync finish, close connections.
"""

from __future__ import annotations

import functools
import posixpath
import random
import signal

import attrs
import structlog
import trio

from dledger_mq.broker.records import CreateTopic, DeleteTopic, UpdateTopic, encode_command
from dledger_mq.broker.service import BrokerService
from dledger_mq.broker.state import (
    BrokerState,
    Refused,
    TopicCreated,
    TopicDeleted,
    TopicUpdated,
)
from dledger_mq.errors import BadRequest, DledgerError, NotLeader, TopicNotFound
from dledger_mq.naming.server import serve_naming
from dledger_mq.node.config import NodeConfig
from dledger_mq.node.harness import NO_HARNESS, UNSAFE_FLUSH_INTERVAL_MS, HarnessOptions
from dledger_mq.node.registration import register_forever
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.messages import Entry
from dledger_mq.raft.pure.progress import ProgressState
from dledger_mq.raft.runtime.log_writer import open_log_writer
from dledger_mq.raft.runtime.replica import Replica
from dledger_mq.raft.runtime.transport import PeerTransport, TransportConfig
from dledger_mq.raft.storage.commitlog import CommitLog, FlushPolicy
from dledger_mq.raft.storage.disk import OsDisk
from dledger_mq.raft.storage.simulated_disks import PowerLossDisk
from dledger_mq.wire.address import Address
from dledger_mq.wire.admin import (
    ADMIN_CODEC,
    CreateTopicReply,
    CreateTopicRequest,
    DeleteTopicRequest,
    DescribeGroupReply,
    DescribeGroupRequest,
    FollowerLag,
    GroupInfo,
    ListGroupsReply,
    ListGroupsRequest,
    ListTopicsReply,
    ListTopicsRequest,
    ProposeBatchReply,
    ProposeBatchRequest,
    ProposeReply,
    ProposeRequest,
    QueueLagInfo,
    ResetOffsetReply,
    ResetOffsetRequest,
    StatusReply,
    StatusRequest,
    TopicChangedReply,
    TopicInfo,
    TransferLeaderReply,
    TransferLeaderRequest,
    UpdateTopicRequest,
)
from dledger_mq.wire.handshake import ErrorReply
from dledger_mq.wire.naming import BrokerRegistration
from dledger_mq.wire.rpc import error_reply as rpc_error_reply
from dledger_mq.wire.rpc import serve_requests
from dledger_mq.wire.websocket import WebSocket, serve_websockets

logger = structlog.get_logger()

#: Upper bound of a graceful stop: leadership hand-over, then the last fsync.
STOP_TIMEOUT_SECONDS = 3.0


class Node:
    def __init__(
        self, config: NodeConfig, replica: Replica, state: BrokerState, broker: BrokerService
    ) -> None:
        self.config = config
        self.replica = replica
        self.state = state
        self.broker = broker
        self.log = logger.bind(node=config.node_id, group=config.group)

    # -- the client API ------------------------------------------------------------------------

    async def handle_client(self, websocket: WebSocket) -> None:
        """Serve one client connection; nothing a client does can stop the node."""
        await serve_requests(
            websocket,
            ADMIN_CODEC,
            self.config.cluster_id,
            self.config.node_id,
            self.serve,
            lambda error: error_reply(error, self.config),
        )

    async def serve(self, message: object) -> object:
        reply = await self.broker.handle(message)
        if reply is not None:
            return reply
        if isinstance(message, StatusRequest):
            return self.status()
        if isinstance(message, ProposeRequest):
            return ProposeReply(await self.replica.propose(message.data))
        if isinstance(message, ProposeBatchRequest):
            first = await self.replica.propose_batch(list(message.entries))
            return ProposeBatchReply(first, len(message.entries))
        if isinstance(message, CreateTopicRequest):
            return await self.create_topic(message)
        if isinstance(message, UpdateTopicRequest):
            if not self.replica.is_leader:
                raise NotLeader(self.replica.core.leader)  # its topics may be behind
            current = self.state.topic(message.name)
            if current is None:
                raise TopicNotFound(message.name)
            result = await self._propose_topic_change(
                UpdateTopic(
                    message.name,
                    current.queue_count if message.queue_count is None else message.queue_count,
                    current.fifo if message.fifo is None else message.fifo,
                )
            )
            assert isinstance(result, TopicUpdated), result
            return TopicChangedReply(self.topic_info(result.topic.name))
        if isinstance(message, DeleteTopicRequest):
            result = await self._propose_topic_change(DeleteTopic(message.name))
            assert isinstance(result, TopicDeleted), result
            return TopicChangedReply(None)
        if isinstance(message, ListTopicsRequest):
            return ListTopicsReply(tuple(self.topic_info(t.name) for t in self.state.topics()))
        if isinstance(message, ListGroupsRequest):
            return ListGroupsReply(
                tuple(GroupInfo(g, self.state.group_topics(g)) for g in self.state.groups())
            )
        if isinstance(message, DescribeGroupRequest):
            return DescribeGroupReply(
                tuple(
                    QueueLagInfo(
                        lag.queue_id, _or_minus_one(lag.committed_offset), lag.max_offset, lag.lag
                    )
                    for lag in self.state.lag(message.group, message.topic)
                ),
                self.broker.live_consumers(message.group, message.topic),
            )
        if isinstance(message, ResetOffsetRequest):
            await self.broker.reset_offsets(
                message.group, message.topic, message.to_offset, message.to_time_ms
            )
            return ResetOffsetReply(
                tuple(
                    QueueLagInfo(
                        lag.queue_id, _or_minus_one(lag.committed_offset), lag.max_offset, lag.lag
                    )
                    for lag in self.state.lag(message.group, message.topic)
                )
            )
        if isinstance(message, TransferLeaderRequest):
            if message.target == self.config.node_id and self.replica.core.role is Role.LEADER:
                return TransferLeaderReply(self.config.node_id)
            self.replica.transfer_leadership(message.target)
            with trio.move_on_after(
                self.replica.core.config.election_timeout_ticks * self.config.tick_ms / 1000 * 2
            ):
                while self.replica.core.leader != message.target:
                    await self.replica.leader_changed.wait()
            leader = self.replica.core.leader
            if leader != message.target:
                raise NotLeader(leader, f"transfer to {message.target} did not complete")
            return TransferLeaderReply(leader)
        raise BadRequest(f"{type(message).__name__} is not a request")

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
            topics=self.topics(),
            # The smaller of what is applied and what this node will make it when it leads: a
            # producer told the larger one while a smaller one is being applied would be
            # refused its retries.
            idempotence_window=min(
                self.state.settings.idempotence_window, self.config.idempotence_window
            ),
        )

    def topics(self) -> tuple[str, ...]:
        return tuple(topic.name for topic in self.state.topics())

    async def create_topic(self, request: CreateTopicRequest) -> CreateTopicReply:
        command = CreateTopic(request.name, request.queue_count, request.fifo)
        result = await self.replica.propose_and_apply(encode_command(command))
        if isinstance(result, Refused):
            raise result.error
        assert isinstance(result, TopicCreated), result
        return CreateTopicReply(self.topic_info(result.topic.name), result.created)

    async def _propose_topic_change(self, command: UpdateTopic | DeleteTopic) -> object:
        result = await self.replica.propose_and_apply(encode_command(command))
        if isinstance(result, Refused):
            raise result.error
        return result

    def topic_info(self, name: str) -> TopicInfo:
        description = self.state.describe_topic(name)
        return TopicInfo(
            name=description.name,
            queue_count=description.queue_count,
            fifo=description.fifo,
            max_offsets=tuple(queue.max_offset for queue in description.queues),
        )

    def status(self) -> StatusReply:
        status = self.replica.core.status()
        members = self.config.members
        return StatusReply(
            node_id=status.node_id,
            group=self.config.group,
            address=members[status.node_id].client,
            role=status.role.value,
            term=status.term,
            leader=status.leader,
            leader_address=members[status.leader].client if status.leader else None,
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
        with trio.move_on_after(core.config.election_timeout_ticks * self.config.tick_ms / 1000):
            while core.role is Role.LEADER:
                await self.replica.leader_changed.wait()


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


def error_reply(error: DledgerError, config: NodeConfig) -> ErrorReply:
    """The typed error reply, with the leader's client address when the error names a leader."""
    leader_address = None
    if isinstance(error, NotLeader) and error.leader_hint in config.members:
        leader_address = config.members[error.leader_hint].client
    return rpc_error_reply(error, leader_address)


async def run_node(
    config: NodeConfig,
    *,
    harness: HarnessOptions = NO_HARNESS,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    log = logger.bind(node=config.node_id, group=config.group)
    directory = posixpath.join(config.data_dir, "raft", config.group)
    flush_policy = FlushPolicy(config.flush)
    flush_interval_ms = config.flush_interval_ms
    if harness.any:
        log.warning("harness_options", **attrs.asdict(harness))
    if harness.ack_before_fsync:
        flush_policy, flush_interval_ms = FlushPolicy.ASYNC, UNSAFE_FLUSH_INTERVAL_MS
    commit_log = CommitLog.open(
        PowerLossDisk() if harness.lose_unsynced else OsDisk(),
        directory,
        segment_size_bytes=config.segment_size_bytes,
        flush_policy=flush_policy,
        flush_interval_ms=flush_interval_ms,
    )
    rng = random.Random()
    core = RaftCore(
        Config(
            node_id=config.node_id,
            members=tuple(config.members),
            election_timeout_ticks=config.election_ticks,
            heartbeat_interval_ticks=config.heartbeat_ticks,
            max_append_bytes=config.max_append_bytes,
            max_inflight_appends=config.max_inflight_appends,
        ),
        commit_log,
        rng,
    )
    transport = PeerTransport(
        TransportConfig(
            cluster_id=config.cluster_id,
            node_id=config.node_id,
            group=config.group,
            peers=config.peers,
            max_frame_bytes=config.max_frame_bytes,
        ),
        rng,
    )
    try:
        async with open_log_writer(commit_log) as writer:
            # The broker state is derived from the log: rebuilt by re-applying it after a restart.
            state = BrokerState(config.group)

            def apply(entry: Entry) -> object:
                result = state.apply(entry.index, entry.data)
                broker.entry_applied()
                return result

            replica = Replica(
                core, commit_log, writer, transport, config.group, config.tick_ms / 1000, apply
            )
            broker = BrokerService(
                state,
                replica,
                commit_log,
                attrs.evolve(
                    state.settings,
                    auto_create_topics=config.auto_create_topics,
                    default_queue_count=config.default_queue_count,
                    max_body_bytes=config.max_body_bytes,
                    idempotence_window=config.idempotence_window,
                ),
            )
            transport.deliver = replica.deliver
            node = Node(config, replica, state, broker)
            async with trio.open_nursery() as nursery:
                await nursery.start(replica.run)
                nursery.start_soon(broker.keep_settings, lambda: replica.leader_changed)
                peer_address = Address.parse(config.me.peer)
                client_address = Address.parse(config.me.client)
                # The peer listener outlives the client one: a stopping leader still needs its
                # followers' answers to hand leadership over.
                await nursery.start(
                    functools.partial(
                        trio.serve_tcp,
                        transport.handle_incoming,
                        peer_address.port,
                        host=peer_address.host,
                    )
                )
                if config.naming_listen:
                    naming_address = Address.parse(config.naming_listen)
                    await nursery.start(
                        serve_naming,
                        naming_address.host,
                        naming_address.port,
                        config.cluster_id,
                        f"naming@{config.node_id}",
                        config.naming_heartbeat_ms,
                    )
                if config.naming:
                    nursery.start_soon(
                        register_forever,
                        config.naming,
                        config.cluster_id,
                        node.registration,
                        lambda: replica.leader_changed,
                        config.naming_heartbeat_ms / 1000,
                        rng,
                    )
                async with trio.open_nursery() as clients:
                    await clients.start(
                        functools.partial(
                            serve_websockets,
                            node.handle_client,
                            client_address.host,
                            client_address.port,
                            max_message_bytes=config.max_frame_bytes,
                        )
                    )
                    log.info(
                        "node_started",
                        peer=config.me.peer,
                        client=config.me.client,
                        data_dir=config.data_dir,
                        flush=config.flush,
                    )
                    task_status.started(node)
                    if not handle_signals:
                        await trio.sleep_forever()
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            log.info("node_stopping", signal=signal.Signals(signum).name)
                            break
                    clients.cancel_scope.cancel()
                with trio.move_on_after(STOP_TIMEOUT_SECONDS):
                    await node.hand_over_leadership()
                nursery.cancel_scope.cancel()
    finally:
        commit_log.close()
        log.info("node_stopped")
