"""The Trio runtime of one Raft group replica: the thin driver around the pure core.

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

from collections.abc import Callable

import attrs
import structlog
import trio

from dledger_mq.errors import BadRequest, NotLeader
from dledger_mq.raft.commitlog import CommitLog
from dledger_mq.raft.core import RaftCore, Ready, Role, SoftState
from dledger_mq.raft.log_writer import LogWriter
from dledger_mq.raft.messages import Entry, EntryKind, HardState, Message
from dledger_mq.raft.transport import PeerTransport

logger = structlog.get_logger()

#: A commit-index-only hard state is written at most this often; the rest is relearned.
COMMIT_SAVE_INTERVAL_SECONDS = 1.0


@attrs.define(eq=False)
class _Waiter:
    term: int
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None
    #: What the state machine's ``apply`` returned for the entry.
    result: object = None


class Replica:
    def __init__(
        self,
        core: RaftCore,
        log: CommitLog,
        writer: LogWriter,
        transport: PeerTransport,
        group: str,
        tick_seconds: float,
        apply: Callable[[Entry], object] | None = None,
    ) -> None:
        self.core = core
        self.log = log
        self.writer = writer
        self.transport = transport
        self.group = group
        self.tick_seconds = tick_seconds
        self.apply = apply
        self._wakeup = trio.Event()
        #: The Ready loop is inside ``_handle`` (it may be waiting for a write): no one else may
        #: take a Ready until it is done.
        self._handling = False
        #: What broke a Ready handled outside the loop; the loop raises it.
        self._failure: BaseException | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._last_commit_save = -COMMIT_SAVE_INTERVAL_SECONDS
        self._saved_hard_state = log.hard_state()
        self.log_events = logger.bind(node=core.id, group=group)
        self.leader_changed = trio.Event()

    # -- inputs ------------------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        try:
            self.core.step(message)
        except BadRequest as error:
            self.log_events.warning("peer_message_refused", reason=str(error))
            return
        self._handle_ready_now()

    async def propose(self, data: bytes) -> int:
        """Replicate ``data``; returns its index once committed and applied here.

        Raises ``NotLeader`` (with the leader hint) if this replica does not lead, or if it lost
        leadership before the entry committed: the entry may or may not commit later.
        """
        return await self.propose_batch([data])

    async def propose_batch(self, batch: list[bytes]) -> int:
        """Replicate every entry of ``batch`` at consecutive indexes; returns the first index.

        The entries commit together: a log commits a prefix, so waiting for the last suffices.
        """
        first, _ = await self._propose(batch)
        return first

    async def propose_and_apply(self, data: bytes) -> object:
        """Replicate ``data`` and return what the state machine's ``apply`` made of it."""
        _, result = await self._propose([data])
        return result

    async def _propose(self, batch: list[bytes]) -> tuple[int, object]:
        if not batch:
            raise BadRequest("an empty batch")
        first = self.core.propose(batch[0])
        last = first
        for data in batch[1:]:
            last = self.core.propose(data)
        waiter = _Waiter(self.core.term)
        self._waiters[last] = waiter
        self._handle_ready_now()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return first, waiter.result

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    def _handle_ready_now(self) -> None:
        """Handle Readies in the calling task while no write must wait; else wake the loop."""
        core = self.core
        if not self._handling:
            while core.has_ready() and self.writer.can_write_now(core.log.unstable):
                try:
                    self._handle_now(core.ready())
                except BaseException as error:
                    # A Ready taken and not handled wedges the core: stop the replica (the
                    # Ready loop re-raises this), as a failure inside the loop itself would.
                    self._failure = error
                    self._wakeup.set()
                    raise
                core.advance()
        if core.has_ready():
            self._wakeup.set()

    def transfer_leadership(self, target: str) -> None:
        self.core.transfer_leadership(target)
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
            self.core.tick()
            self._wakeup.set()

    async def _ready_loop(self) -> None:
        core = self.core
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._failure is not None:
                raise self._failure
            while core.has_ready():
                self._handling = True
                try:
                    await self._handle(core.ready())
                finally:
                    self._handling = False
                core.advance()

    async def _handle(self, ready: Ready) -> None:
        write = self._before_write(ready)
        if write is not None:
            await self.writer.append(*write)
        self._after_write(ready)

    def _handle_now(self, ready: Ready) -> None:
        write = self._before_write(ready)
        if write is not None:
            self.writer.write_now(*write)
        self._after_write(ready)

    def _before_write(self, ready: Ready) -> tuple[list[Entry], HardState | None] | None:
        """Send what may go before the write; returns what to write, if anything."""
        if ready.soft_state is not None:
            self._soft_state_changed(ready.soft_state)
        # The leader's appends go out now, so that followers write while the leader does.
        self.transport.send(ready.messages_before_persist)
        hard_state = self._hard_state_to_save(ready)
        if not ready.entries and hard_state is None:
            return None
        if ready.entries and ready.entries[0].index <= self.log.last_index():
            self.log_events.warning(
                "log_truncated",
                from_index=ready.entries[0].index,
                dropped=self.log.last_index() - ready.entries[0].index + 1,
                term=self.core.term,
            )
        return list(ready.entries), hard_state

    def _after_write(self, ready: Ready) -> None:
        self.transport.send(ready.messages)
        for entry in ready.committed_entries:
            result = None
            if self.apply is not None and entry.kind == EntryKind.NORMAL:
                result = self.apply(entry)
            waiter = self._waiters.pop(entry.index, None)
            if waiter is not None:
                if entry.term != waiter.term:
                    waiter.error = NotLeader(self.core.leader, "entry overwritten by a new leader")
                waiter.result = result
                waiter.done.set()

    def _hard_state_to_save(self, ready: Ready) -> HardState | None:
        if ready.hard_state is None:
            return None
        now = trio.current_time()
        if ready.vote_changed or now - self._last_commit_save >= COMMIT_SAVE_INTERVAL_SECONDS:
            self._last_commit_save = now
            return ready.hard_state
        return None

    def _soft_state_changed(self, soft: SoftState) -> None:
        self.log_events.info(
            "role_changed", role=soft.role.value, term=soft.term, leader=soft.leader
        )
        self.leader_changed.set()
        self.leader_changed = trio.Event()
        if soft.role is not Role.LEADER and self._waiters:
            # Proposals of a deposed leader may still commit under the next one; say so.
            for waiter in self._waiters.values():
                waiter.error = NotLeader(soft.leader, "leadership lost before the entry committed")
                waiter.done.set()
            self._waiters.clear()
