"""What a replica does with its Raft core's work, decided without doing it: the one driver.

The pure core (``core.py``) says what must happen, one ``Ready`` at a time. This module decides
how a replica carries a Ready out, with no I/O, clock, randomness or Trio of its own, so that
the Trio runtime (``replica.py``) and the simulator (``jepsen/sim``) run the same decisions:

- the order: send what may go before the write (a leader's appends, so that followers write
  while it does), write the entries and the hard state worth saving, send the rest, apply the
  committed entries, advance;
- which hard states are written: a term or vote change always; a commit-index-only change at
  most every ``commit_save_interval`` (a restarted node relearns the rest from its leader);
- which proposals are answered, and how: by the index of their last entry once it is applied
  here, with what the state machine made of it, or ``NotLeader`` when another leader's entry
  took that index or leadership was lost first;
- moving snapshots to followers whose next entries were trimmed (``snapshot_transfer.py``),
  and, on a follower, starting its log and state machine over from one.

A runtime calls :meth:`ReplicaDriver.take` for the next piece of work, carries out its
``send_first``, its write and its ``send_after`` in that order, and then :meth:`finish`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from dledger_mq.errors import NotLeader, ProtocolError, UsageError
from dledger_mq.raft.pure.core import RaftCore, Ready, Role, SoftState
from dledger_mq.raft.pure.membership import MembershipChange
from dledger_mq.raft.pure.messages import (
    MAX_SNAPSHOT_CHUNK_BYTES,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotNeeded,
)
from dledger_mq.raft.pure.progress import ProgressState
from dledger_mq.raft.pure.snapshot_transfer import SnapshotFiles, SnapshotTransfers

#: A commit-index-only hard state is written at most this often (seconds of the runtime's clock).
COMMIT_SAVE_INTERVAL_SECONDS = 1.0


@attrs.define(eq=False)
class Proposal:
    """A proposal waiting for its last entry to be applied; ``notify`` is called once, when
    ``result`` or ``error`` is set."""

    term: int
    first: int
    last: int
    notify: Callable[[], None]
    error: Exception | None = None
    #: What the state machine's ``apply`` returned for the last entry.
    result: object = None
    done: bool = False

    def _resolve(self, result: object = None, error: Exception | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.notify()


@attrs.define(eq=False)
class Read:
    """A linearizable read waiting for its index to be confirmed by a quorum and applied here
    (``RaftCore.read_index``); ``notify`` is called once, when it is ``done`` (``error`` set if
    leadership was lost first)."""

    context: int
    term: int
    notify: Callable[[], None]
    index: int | None = None
    error: Exception | None = None
    done: bool = False

    def _resolve(self, error: Exception | None = None) -> None:
        self.error, self.done = error, True
        self.notify()


@attrs.frozen
class ReadyWork:
    """One Ready as the runtime carries it out, in this order: send ``send_first``; if
    ``snapshot``, make the log start after it (``CommitLog.reset_to_snapshot``); write
    ``entries`` then ``hard_state`` (durably, when ``must_sync``); if ``recovered``, make the
    end of the recovery durable; send ``send_after``; call ``ReplicaDriver.finish`` (which
    restores the state machine from the snapshot before applying anything)."""

    ready: Ready
    send_first: tuple[Message, ...]
    entries: tuple[Entry, ...]
    hard_state: HardState | None
    send_after: tuple[Message, ...]

    @property
    def writes(self) -> bool:
        return bool(self.entries) or self.hard_state is not None

    @property
    def snapshot(self) -> tuple[int, int] | None:
        return self.ready.snapshot

    @property
    def must_sync(self) -> bool:
        return self.ready.must_sync

    @property
    def recovered(self) -> bool:
        return self.ready.recovered


def _ignore(*_: object, **__: object) -> None:
    pass


class ReplicaDriver:
    def __init__(
        self,
        core: RaftCore,
        apply: Callable[[Entry], object] | None = None,
        *,
        commit_save_interval: float = COMMIT_SAVE_INTERVAL_SECONDS,
        on_soft_state: Callable[[SoftState], None] = _ignore,
        on_refused: Callable[[Message, ProtocolError], None] = _ignore,
        snapshots: SnapshotFiles | None = None,
        restore: Callable[[int, int], None] = _ignore,
        snapshot_chunk_bytes: int = MAX_SNAPSHOT_CHUNK_BYTES,
        on_event: Callable[..., None] = _ignore,
    ) -> None:
        self.core = core
        self.apply = apply
        #: Makes the state machine the snapshot's (index, term), now in ``snapshots``.
        self.restore = restore
        self.commit_save_interval = commit_save_interval
        #: Called with every change of role, term or leader, before its Ready is written.
        self.on_soft_state = on_soft_state
        #: Called with a peer message the core refused (it changed nothing).
        self.on_refused = on_refused
        self._proposals: dict[int, Proposal] = {}
        #: Reads by context, until they are answered.
        self._reads: dict[int, Read] = {}
        self._last_commit_save = -math.inf
        self._work: ReadyWork | None = None
        #: What the driver itself sends (snapshot chunks and their answers), with the next work.
        self._outbox: list[Message] = []
        self.transfers = (
            SnapshotTransfers(
                core.id,
                snapshots,
                self._outbox.append,
                chunk_bytes=snapshot_chunk_bytes,
                on_event=on_event,
            )
            if snapshots is not None
            else None
        )

    # -- inputs ------------------------------------------------------------------------------

    def step(self, message: Message) -> None:
        try:
            if isinstance(message, SnapshotChunk | SnapshotChunkAck):
                self._step_transfer(message)
            else:
                self.core.step(message)
        except ProtocolError as error:
            self.on_refused(message, error)

    def _step_transfer(self, message: SnapshotChunk | SnapshotChunkAck) -> None:
        if self.transfers is None:
            raise ProtocolError("this replica takes no snapshots")
        if isinstance(message, SnapshotChunkAck):
            self.transfers.acked(message)
        else:
            self.transfers.received_chunk(message, self.core.log.committed, self._install)

    def _install(self, message: InstallSnapshot) -> None:
        self.core.step(message)

    def tick(self) -> None:
        self.core.tick()
        if self.transfers is not None:
            self.transfers.tick(self._needs_snapshot)

    def _needs_snapshot(self, peer: str) -> bool:
        progress = self.core.progress.get(peer)
        return (
            self.core.role is Role.LEADER
            and progress is not None
            and progress.state is ProgressState.SNAPSHOT
        )

    def propose(self, batch: list[bytes], notify: Callable[[], None] = _ignore) -> Proposal:
        """Append every entry of ``batch`` at consecutive indexes. Raises ``NotLeader`` (or
        ``LeadershipTransferInProgress``) at once if this replica cannot take proposals."""
        if not batch:
            raise UsageError("an empty batch")
        first = last = self.core.propose(batch[0])
        for data in batch[1:]:
            last = self.core.propose(data)
        # The entries commit together: a log commits a prefix, so the last one is enough.
        proposal = Proposal(self.core.term, first, last, notify)
        self._proposals[last] = proposal
        return proposal

    def propose_membership_change(
        self, change: MembershipChange, notify: Callable[[], None] = _ignore
    ) -> Proposal:
        """Append the membership ``change`` makes (``RaftCore.propose_membership_change``,
        whose refusals it raises at once); done once the change is committed."""
        index = self.core.propose_membership_change(change)
        proposal = Proposal(self.core.term, index, index, notify)
        self._proposals[index] = proposal
        return proposal

    def read(self, notify: Callable[[], None] = _ignore) -> Read:
        """A linearizable read barrier: done once this replica, still leading when the read
        began as a quorum confirmed, has applied the commit index of that moment; the state
        machine may then be read. Raises ``NotLeader`` at once on a follower."""
        context = self.core.read_index()
        read = Read(context, self.core.term, notify)
        self._reads[context] = read
        return read

    def transfer_leadership(self, target: str) -> None:
        self.core.transfer_leadership(target)

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    # -- the work ----------------------------------------------------------------------------

    def has_work(self) -> bool:
        """A Ready can be taken (none is being carried out, and the core has one)."""
        return self._work is None and (self.core.has_ready() or bool(self._outbox))

    @property
    def handling(self) -> bool:
        """A Ready was taken and is not finished yet."""
        return self._work is not None

    def take(self, now: float) -> ReadyWork:
        """The next Ready as work to carry out; ``now`` (seconds) decides commit saves."""
        assert self._work is None, "take() again before finish()"
        ready = self.core.ready()
        if ready.soft_state is not None:
            self._soft_state_changed(ready.soft_state)
        for state in ready.read_states:
            read = self._reads.get(state.context)
            if read is not None:
                read.index = state.index
        if self._reads:
            self._fail_unconfirmed_reads()
        ready = self._start_transfers(ready)
        send_first, send_after = self._sends(ready)
        if self._outbox:
            send_first += tuple(self._outbox)
            self._outbox.clear()
        work = ReadyWork(
            ready=ready,
            send_first=send_first,
            entries=ready.entries,
            hard_state=self._hard_state_to_save(ready, now),
            send_after=send_after,
        )
        self._work = work
        return work

    def finish(self, work: ReadyWork) -> None:
        """``work``'s write is done (durable when it must be) and ``send_after`` went out:
        apply its committed entries, answer their proposals, advance the core."""
        assert work is self._work, "finish() of work that was not taken last"
        if work.snapshot is not None:
            self.restore(*work.snapshot)
        for entry in work.ready.committed_entries:
            result = None
            if self.apply is not None and entry.kind == EntryKind.NORMAL:
                result = self.apply(entry)
            proposal = self._proposals.pop(entry.index, None)
            if proposal is not None:
                if entry.term != proposal.term:
                    proposal._resolve(
                        error=NotLeader(self.core.leader, "entry overwritten by a new leader")
                    )
                else:
                    proposal._resolve(result)
        self._work = None
        self.core.advance()
        if self._reads:
            self._answer_reads()

    def _answer_reads(self) -> None:
        """Answer the reads whose confirmed index is applied here."""
        applied = self.core.log.applied
        for context, read in list(self._reads.items()):
            if read.index is not None and read.index <= applied:
                del self._reads[context]
                read._resolve()

    def _fail_unconfirmed_reads(self) -> None:
        """A read not confirmed in the term and leadership it began in never will be."""
        core = self.core
        for context, read in list(self._reads.items()):
            if read.index is None and (core.role is not Role.LEADER or core.term != read.term):
                del self._reads[context]
                read._resolve(NotLeader(core.leader, "leadership lost before the read"))

    def _sends(self, ready: Ready) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """What goes before the write, and what only once it is durable: a vote or an
        acknowledgement promises that what it answers for survives a crash."""
        return ready.messages_before_persist, ready.messages

    def _start_transfers(self, ready: Ready) -> Ready:
        """A follower that needs the snapshot is the transfer's (its chunks promise nothing,
        so they go first); the Ready without those requests."""
        if not any(isinstance(message, SnapshotNeeded) for message in ready.messages):
            return ready
        others: list[Message] = []
        for message in ready.messages:
            if isinstance(message, SnapshotNeeded):
                if self.transfers is not None:
                    self.transfers.needed(message)
            else:
                others.append(message)
        return attrs.evolve(ready, messages=tuple(others))

    def _hard_state_to_save(self, ready: Ready, now: float) -> HardState | None:
        if ready.hard_state is None:
            return None
        if ready.vote_changed or now - self._last_commit_save >= self.commit_save_interval:
            self._last_commit_save = now
            return ready.hard_state
        return None

    def _soft_state_changed(self, soft: SoftState) -> None:
        self.on_soft_state(soft)
        if soft.role is not Role.LEADER and self.transfers is not None:
            self.transfers.stop_sending()
        if soft.role is not Role.LEADER and self._proposals:
            # Proposals of a deposed leader may still commit under the next one; say so.
            proposals, self._proposals = self._proposals, {}
            for proposal in proposals.values():
                proposal._resolve(
                    error=NotLeader(soft.leader, "leadership lost before the entry committed")
                )
