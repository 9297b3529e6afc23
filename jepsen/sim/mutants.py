"""Deliberately broken variants, to prove that the simulator catches real bugs.

Each breaks one rule of the core, the driver or the broker state machine; the simulator's
default seeds must catch every one of them (``tests/jepsen/test_simulator.py``). Each is the
smallest change that plants its bug: an override of one of the hooks the production classes
keep for this, or of one method of the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from dledger_mq.broker.state import BrokerState
from dledger_mq.errors import NotLeader
from dledger_mq.raft.pure.core import RaftCore, Ready, Role
from dledger_mq.raft.pure.driver import ReadyWork, ReplicaDriver
from dledger_mq.raft.pure.membership import MembershipChange
from dledger_mq.raft.pure.messages import (
    AppendResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    Message,
    VoteRequest,
)
from dledger_mq.raft.pure.progress import Progress
from dledger_mq.raft.pure.raft_log import RaftLog

# -- the core ------------------------------------------------------------------------------------


class VoteWithoutLogCheck(RaftCore):
    """Grants votes without Raft 5.4.1's up-to-date check: a stale node can win and overwrite."""

    def _log_allows_vote(self, request: VoteRequest) -> bool:
        return True


class CommitOldTermByCounting(RaftCore):
    """Commits an earlier term's entry by counting replicas (the Raft paper's figure 8 bug)."""

    def _may_commit(self, index: int) -> bool:
        return True


class VoteTwiceInATerm(RaftCore):
    """Forgets whom it voted for when another candidate of the same term asks."""

    def _handle_vote_request(self, request: VoteRequest) -> None:
        if not request.pre_vote and request.term == self.term:
            self.vote, self.leader = None, None
        super()._handle_vote_request(request)


class VoteWhileRecovering(RaftCore):
    """Ignores that it lost its log (amnesia): votes and campaigns with an empty one, and can
    help elect a leader that lacks entries committed with its forgotten acknowledgements."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "recovering": False})


class VoteAfterLostTail(RaftCore):
    """Ignores that recovery cut entries it may have acknowledged (rot in the last records):
    votes with the shorter log at once, as a plain torn write would allow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        recovering = kwargs.get("recovering", False) and not kwargs.get("lost_tail", False)
        super().__init__(*args, **{**kwargs, "recovering": recovering})


class LostTailAsksTooFew(RaftCore):
    """A replica that lost its tail votes once it heard where one other log ends, not
    ``members - quorum + 1``: that one may be the member that lacked the lost entries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_ends_needed = 1


class LearnerCounts(RaftCore):
    """Counts a learner like a voter in every quorum (commit, check-quorum, reads, votes): an
    entry can commit on the leader and the learner alone, and a voter elected without it
    loses it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.voters = frozenset((*self.config.members, *self.config.learners))


class UnclampedHeartbeatCommit(RaftCore):
    """Tells every follower the leader's commit index in heartbeats, also one whose entries up
    there are another leader's: it commits them."""

    def _heartbeat_commit(self, progress: Progress) -> int:
        return self.log.committed


class LeaderCountsUnpersistedEntries(RaftCore):
    """Counts its own entries towards a commit before they are on its disk."""

    def _own_match(self) -> int:
        return self.log.last_index()


class InstallWithoutReset(RaftCore):
    """Answers a leader's snapshot as installed without starting its log over after it: the
    leader then counts this replica for entries it never held."""

    def _handle_install_snapshot(self, message: InstallSnapshot) -> None:
        log = self.log
        if message.index <= log.committed or log.match_term(message.index, message.snapshot_term):
            super()._handle_install_snapshot(message)
            return
        self._send(
            AppendResponse(
                term=self.term,
                source=self.id,
                target=message.source,
                success=True,
                match_index=message.index,
            )
        )


class _BrokenLog(RaftLog):
    """A log whose follower side of AppendEntries breaks one rule (see the subclasses)."""


class _NoPrevTermCheckLog(_BrokenLog):
    def match_term(self, index: int, term: int) -> bool:
        return index <= self.last_index()


class _TruncateOnStaleAppendLog(_BrokenLog):
    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        if not self.match_term(prev_index, prev_term):
            return None
        if entries and entries[0].index > self.committed:
            self.append(list(entries))  # even when they all match: newer entries go
        last_new = prev_index + len(entries)
        self.commit_to(min(leader_commit, last_new))
        return last_new


class _CommitToLastIndexLog(_BrokenLog):
    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        last_new = super().maybe_append(prev_index, prev_term, leader_commit, entries)
        if last_new is not None:
            self.commit_to(min(leader_commit, self.last_index()))
        return last_new


class _AcknowledgeLastIndexLog(_BrokenLog):
    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        last_new = super().maybe_append(prev_index, prev_term, leader_commit, entries)
        return None if last_new is None else self.last_index()


def _core_with_log(log_class: type[_BrokenLog], doc: str) -> type[RaftCore]:
    class Core(RaftCore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.log.__class__ = log_class

    Core.__doc__ = doc
    Core.__name__ = Core.__qualname__ = log_class.__name__.strip("_").replace("Log", "")
    return Core


NoPrevTermCheck = _core_with_log(
    _NoPrevTermCheckLog,
    "Accepts an append whenever it has an entry at prev_index, whatever its term.",
)
TruncateOnStaleAppend = _core_with_log(
    _TruncateOnStaleAppendLog,
    "Rewrites its log from a stale append's first entry, dropping newer entries it had "
    "already acknowledged.",
)
FollowerCommitsToLastIndex = _core_with_log(
    _CommitToLastIndexLog,
    "Advances its commit index up to its own last index, past what the leader's append "
    "vouched for.",
)
AcknowledgeLastIndex = _core_with_log(
    _AcknowledgeLastIndexLog,
    "Acknowledges its last index instead of the last index it knows matches the leader's.",
)

# -- the driver ----------------------------------------------------------------------------------


class AckBeforePersist(ReplicaDriver):
    """Sends every message before the write: a follower acknowledges entries that are not on
    disk yet, then crashes and loses them."""

    def _sends(self, ready: Ready) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        return ready.messages_before_persist + ready.messages, ()


class ApplyTwice(ReplicaDriver):
    """Applies the first committed entry of each batch twice."""

    def finish(self, work: ReadyWork) -> None:
        committed = work.ready.committed_entries
        if committed and self.apply is not None:
            self.apply(committed[0])
        super().finish(work)


class AnswerBeforeCommit(ReplicaDriver):
    """Answers a proposal as soon as the leader has written its entries, before they commit."""

    def finish(self, work: ReadyWork) -> None:
        written = {entry.index for entry in work.entries}
        for index in sorted(written & set(self._proposals)):
            self._proposals.pop(index)._resolve()
        super().finish(work)


class InstallWithoutRestore(ReplicaDriver):
    """Starts the log over after a leader's snapshot but keeps its old state machine."""

    def finish(self, work: ReadyWork) -> None:
        if work.snapshot is not None:
            restore, self.restore = self.restore, lambda index, term: None
            try:
                super().finish(work)
            finally:
                self.restore = restore
            return
        super().finish(work)


# -- the broker ----------------------------------------------------------------------------------


class SkipIdempotenceCheck(BrokerState):
    """Stores a retried send again instead of answering with the original's receipt."""

    def _find_original(self, producer_id: str, window: object, sequence: int) -> None:
        return None


class CommitOffsetPastTheEnd(BrokerState):
    """Takes a group's committed offset beyond the end of its queue."""

    @staticmethod
    def _offset_in_queue(offset: int, queue: object) -> bool:
        return True


@attrs.frozen
class Mutant:
    core: Callable[..., RaftCore] = RaftCore
    driver: Callable[..., ReplicaDriver] = ReplicaDriver
    state: type[BrokerState] = BrokerState
    #: Why the default seeds do not catch it, if they do not (None: they must).
    uncaught_reason: str | None = None
    #: Learners its seeds run with (a learner bug needs one).
    learners: int = 0
    #: Its seeds run membership changes (a membership bug needs them).
    membership: bool = False


_STALE_TAIL_REASON = (
    "unreachable with this leader: the bug shows only when a follower holds a deposed "
    "leader's entries beyond an append from the new leader that it accepts; but it heard "
    "nothing of the new term before those entries (else it would refuse them), the new "
    "leader's first append probes at its own no-op (a term the follower cannot hold yet), and "
    "its later ones start at the first index where the two logs differ (found from the "
    "follower's refusals), so the first append it accepts truncates them; a follower that "
    "acknowledges beyond the leader's last index is refused by the leader's range check"
)


class MembershipChangeEarly(RaftCore):
    """Drops rule 2 of single-server changes (docs/architecture.md): a leader proposes a
    change before an entry of its term has committed, and while an earlier change is still
    uncommitted. With a leader change in between, two changes from different leaders can each
    have a majority the other does not see (Ongaro, raft-dev 2015)."""

    def propose_membership_change(self, change: MembershipChange) -> int:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        membership = self.membership.changed(change)
        index = self.log.last_index() + 1
        self.log.append(
            [Entry(index=index, term=self.term, data=membership.encode(), kind=EntryKind.CONFIG)]
        )
        self._broadcast_pending = True
        return index


MUTANTS: dict[str, Mutant] = {
    "vote-without-log-check": Mutant(core=VoteWithoutLogCheck),
    "commit-old-term": Mutant(core=CommitOldTermByCounting),
    "vote-twice": Mutant(core=VoteTwiceInATerm),
    "learner-counts": Mutant(core=LearnerCounts, learners=1),
    "membership-change-early": Mutant(core=MembershipChangeEarly, membership=True),
    "vote-while-recovering": Mutant(core=VoteWhileRecovering),
    "vote-after-lost-tail": Mutant(core=VoteAfterLostTail),
    "lost-tail-asks-too-few": Mutant(core=LostTailAsksTooFew),
    "no-prev-term-check": Mutant(core=NoPrevTermCheck),
    "unclamped-heartbeat-commit": Mutant(core=UnclampedHeartbeatCommit),
    "truncate-on-stale-append": Mutant(core=TruncateOnStaleAppend),
    "follower-commits-to-last-index": Mutant(
        core=FollowerCommitsToLastIndex, uncaught_reason=_STALE_TAIL_REASON
    ),
    "acknowledge-last-index": Mutant(core=AcknowledgeLastIndex, uncaught_reason=_STALE_TAIL_REASON),
    "leader-counts-unpersisted": Mutant(
        core=LeaderCountsUnpersistedEntries,
        uncaught_reason=(
            "unreachable: the driver takes no Ready while a write is in flight, so a commit "
            "the leader decides before its own write is durable leaves the node (messages, "
            "applies) only after that write is done; it would matter with etcd-style "
            "asynchronous writes"
        ),
    ),
    "install-without-reset": Mutant(core=InstallWithoutReset),
    "install-without-restore": Mutant(driver=InstallWithoutRestore),
    "ack-before-persist": Mutant(driver=AckBeforePersist),
    "apply-twice": Mutant(driver=ApplyTwice),
    "answer-before-commit": Mutant(driver=AnswerBeforeCommit),
    "skip-idempotence-check": Mutant(state=SkipIdempotenceCheck),
    "commit-offset-past-the-end": Mutant(state=CommitOffsetPastTheEnd),
}
