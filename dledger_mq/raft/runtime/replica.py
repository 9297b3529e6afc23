"""The Trio runtime of one Raft group replica: the thin shell around the pure core and driver.

What to do with each Ready is decided by ``driver.py`` (the simulator runs the same decisions);
this module does it: the writes through the ``LogWriter``, the sends through the peer
transport, the waiting of proposals, the ticks.

Tasks (one nursery, each owned): a ticker, the Ready loop (persist → send → apply → advance)
and the peer senders; the CommitLog writer runs beside it (``open_log_writer``). Messages from
peers are stepped into the core as they arrive; proposals are appended at once. While one
Ready's fsync is in flight everything that arrives piles up in the core and goes out as the
next Ready: one write, one fsync and one send per peer for many entries (group commit).

When the writer can write at once (inline writes, nothing queued), a Ready is handled right in
the task that caused it — the peer receive task that stepped a message, the request that
proposed — rather than by waking the Ready loop: on this machine each hop between tasks costs
about 0.1 ms, and a proposal crosses this point twice (the follower's append, the leader's ack).
The Ready loop handles whatever remains, and everything while a write must wait.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import structlog
import trio

from dledger_mq.errors import DiskFull, ProtocolError, UsageError
from dledger_mq.raft.pure.core import RaftCore, Role, SoftState
from dledger_mq.raft.pure.driver import ReadyWork, ReplicaDriver
from dledger_mq.raft.pure.membership import MembershipChange
from dledger_mq.raft.pure.messages import Entry, Message
from dledger_mq.raft.pure.snapshot_transfer import SnapshotFiles
from dledger_mq.raft.runtime.log_writer import LogWriter
from dledger_mq.raft.runtime.transport import PeerTransport, TransportConfig
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.wire.address import Address

logger = structlog.get_logger()

#: The longest a task other than the Ready loop handles Readies before it leaves the rest to
#: the loop, which yields to the event loop between Readies: with Readies whose committed
#: entries are bounded (``Config.max_apply_bytes``), a long catch-up or a replay after a
#: restart never holds the event loop for long, and heartbeats are answered meanwhile.
INLINE_BUDGET_SECONDS = 0.01
#: A write refused for lack of space is tried again after this long, doubling up to the most:
#: the replica waits for space (retention frees it) rather than stop.
DISK_FULL_RETRY_SECONDS = (0.05, 1.0)


def _no_restore(index: int, term: int) -> None:
    raise UsageError(f"a snapshot at {index}@{term} to install, and no state machine to restore")


class Replica:
    def __init__(
        self,
        core: RaftCore,
        log: CommitLog,
        writer: LogWriter,
        transport: TransportConfig,
        rng: random.Random,
        tick_seconds: float,
        apply: Callable[[Entry], object] | None = None,
        *,
        snapshots: SnapshotFiles | None = None,
        restore: Callable[[int, int], None] | None = None,
        before_reset: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.log = log
        self.writer = writer
        #: This replica's peer links; what they receive is stepped into the core at once.
        self.transport = PeerTransport(transport, rng, self.deliver)
        # Members that join later are reached at the address their membership entry gives.
        # Any node of the cluster may connect (the handshake proves the cluster secret, and
        # TLS the name): one that this replica's log does not list yet may be the leader of a
        # membership it has not received (it missed the change while down), and refusing it
        # would leave this replica behind for good (the fault harness found that). The core
        # listens to a non-member's leadership, never to its acknowledgements.
        self.transport.resolve = self._peer_address
        self.transport.accepts = lambda peer: peer != self.core.id
        self.group = transport.group
        self.tick_seconds = tick_seconds
        self.log_events = logger.bind(node=core.id, group=self.group)
        self.driver = ReplicaDriver(
            core,
            apply,
            on_soft_state=self._soft_state_changed,
            on_refused=self._refused,
            snapshots=snapshots,
            restore=restore if restore is not None else _no_restore,
            on_event=self._snapshot_event,
        )
        self._wakeup = trio.Event()
        #: The Ready loop is inside ``_handle`` (it may be waiting for a write): no one else may
        #: take a Ready until it is done.
        self._handling = False
        #: What broke a Ready handled outside the loop; the loop raises it.
        self._failure: BaseException | None = None
        #: A Ready taken outside the loop whose write met a full disk: the loop retries it.
        self._stalled: ReadyWork | None = None
        self.leader_changed = trio.Event()
        #: Elections this node started (it became a candidate), and times the leader it knows
        #: changed to another node, since the process started (metrics).
        self.elections_started = 0
        self.leader_changes = 0
        self._known_leader: str | None = None
        #: Drops, durably, what was derived from the log before a leader's snapshot is
        #: installed (the broker's consume queues): called before the log starts over.
        self.before_reset = before_reset

    def _peer_address(self, peer: str) -> Address | None:
        member = self.core.membership.member(peer)
        if member is None or not member.peer:
            return None
        try:
            return Address.parse(member.peer)
        except ValueError:
            return None

    # -- inputs ------------------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        self.driver.step(message)
        self._handle_ready_now()

    async def propose(self, data: bytes) -> int:
        """Replicate ``data``; returns its index once committed and applied here.

        Raises ``NotLeader`` (with the leader hint) if this replica does not lead, or if it lost
        leadership before the entry committed: the entry may or may not commit later.
        """
        return await self.propose_batch([data])

    async def propose_batch(self, batch: list[bytes]) -> int:
        """Replicate every entry of ``batch`` at consecutive indexes; returns the first index."""
        first, _ = await self._propose(batch)
        return first

    async def propose_and_apply(self, data: bytes) -> object:
        """Replicate ``data`` and return what the state machine's ``apply`` made of it."""
        _, result = await self._propose([data])
        return result

    async def _propose(self, batch: list[bytes]) -> tuple[int, object]:
        done = trio.Event()
        proposal = self.driver.propose(batch, done.set)
        self._handle_ready_now()
        await done.wait()
        if proposal.error is not None:
            raise proposal.error
        return proposal.first, proposal.result

    async def change_membership(self, change: MembershipChange) -> int:
        """Replicate a membership change; returns its index once committed (the new
        membership was in force here from its append on)."""
        done = trio.Event()
        proposal = self.driver.propose_membership_change(change, done.set)
        self._handle_ready_now()
        await done.wait()
        if proposal.error is not None:
            raise proposal.error
        return proposal.first

    async def read_barrier(self) -> None:
        """Return once this replica's state may be read linearizably: it led when the barrier
        began (a quorum confirmed it) and has applied everything committed then. Raises
        ``NotLeader`` on a follower, or if leadership is lost first."""
        done = trio.Event()
        read = self.driver.read(done.set)
        self._handle_ready_now()
        await done.wait()
        if read.error is not None:
            raise read.error

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    def _handle_ready_now(self) -> None:
        """Handle Readies in the calling task while no write must wait; else wake the loop."""
        driver = self.driver
        if not self._handling:
            started = time.perf_counter()
            while (
                driver.has_work()
                # Resetting the log to a snapshot fsyncs several files: the loop does that.
                and self.core.log.pending_snapshot is None
                and self.writer.can_write_now(self.core.log.unstable)
                and time.perf_counter() - started < INLINE_BUDGET_SECONDS
            ):
                try:
                    work = driver.take(trio.current_time())
                    self._send_first(work)
                    if work.writes:
                        try:
                            self.writer.write_now(work.entries, work.hard_state)
                        except DiskFull:
                            # Not a failure: the loop writes it once there is space, and takes
                            # nothing else meanwhile.
                            self._stalled = work
                            self._handling = True
                            self._wakeup.set()
                            return
                    self._finish_recovery(work)
                    self.transport.send(work.send_after)
                    driver.finish(work)
                except BaseException as error:
                    # A Ready taken and not handled wedges the core: stop the replica (the
                    # Ready loop re-raises this), as a failure inside the loop itself would.
                    self._failure = error
                    self._wakeup.set()
                    raise
        if driver.has_work():
            self._wakeup.set()

    def transfer_leadership(self, target: str) -> None:
        self.driver.transfer_leadership(target)
        self._wakeup.set()

    # -- the runtime -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.transport.run_senders)
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._ready_loop)
            task_status.started()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_seconds)
            self.driver.tick()
            self._wakeup.set()

    async def _ready_loop(self) -> None:
        driver = self.driver
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._failure is not None:
                raise self._failure
            if self._stalled is not None:
                work, self._stalled = self._stalled, None
                try:
                    await self._persist_and_send(work)
                finally:
                    self._handling = False
                driver.finish(work)
            while driver.has_work():
                self._handling = True
                try:
                    work = driver.take(trio.current_time())
                    self._send_first(work)
                    if work.snapshot is not None:
                        await trio.to_thread.run_sync(self._reset_to_snapshot, *work.snapshot)
                    await self._persist_and_send(work)
                finally:
                    self._handling = False
                driver.finish(work)
                # Between two Readies, whatever else waits runs (heartbeats, clients).
                await trio.lowlevel.checkpoint()
                if self._failure is not None:
                    raise self._failure

    async def _persist_and_send(self, work: ReadyWork) -> None:
        """The rest of a Ready once its early messages went: write, then what may follow."""
        if work.writes:
            await self._write(work)
        self._finish_recovery(work)
        self.transport.send(work.send_after)

    async def _write(self, work: ReadyWork) -> None:
        """Write the work's entries and hard state; while the disk is full, wait and try again
        (nothing of a refused write counts). The node stays up (retention frees space) but
        sends nothing new meanwhile: a leader stops heartbeating, so one with space takes over;
        a follower acknowledges nothing it has not written."""
        delay, longest = DISK_FULL_RETRY_SECONDS
        waiting = False
        while True:
            try:
                await self.writer.append(work.entries, work.hard_state)
            except DiskFull as error:
                if not waiting:
                    self.log_events.error("disk_full_write_waiting", path=error.path)
                    waiting = True
                await trio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            if waiting:
                self.log_events.info("disk_full_write_done")
            return

    def _reset_to_snapshot(self, index: int, term: int) -> None:
        if self.before_reset is not None:
            self.before_reset()
        self.log.reset_to_snapshot(index, term)

    def _finish_recovery(self, work: ReadyWork) -> None:
        if work.recovered:
            self.log.finish_recovery()
            self.log_events.info("recovery_finished", term=self.core.term, vote=self.core.vote)

    def _send_first(self, work: ReadyWork) -> None:
        self.transport.send(work.send_first)
        entries = work.entries
        if entries and entries[0].index <= self.log.last_index():
            self.log_events.warning(
                "log_truncated",
                from_index=entries[0].index,
                dropped=self.log.last_index() - entries[0].index + 1,
                term=self.core.term,
            )

    def _snapshot_event(self, event: str, **fields: object) -> None:
        self.log_events.info(event, **fields)

    def _refused(self, message: Message, error: ProtocolError) -> None:
        self.log_events.warning("peer_message_refused", reason=str(error))

    def _soft_state_changed(self, soft: SoftState) -> None:
        if soft.role is Role.CANDIDATE:
            self.elections_started += 1
        if soft.leader is not None and soft.leader != self._known_leader:
            self.leader_changes += 1
            self._known_leader = soft.leader
        self.log_events.info(
            "role_changed", role=soft.role.value, term=soft.term, leader=soft.leader
        )
        self.leader_changed.set()
        self.leader_changed = trio.Event()
