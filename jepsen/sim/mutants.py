"""Deliberately broken variants, to prove that the simulator catches real bugs.

Each replaces one safety rule; the simulator's default seeds must find every one of them.
"""

from __future__ import annotations

from dledger_mq.raft.core import RaftCore, Ready
from dledger_mq.raft.driver import ReplicaDriver
from dledger_mq.raft.messages import Message, VoteRequest


class VoteWithoutLogCheck(RaftCore):
    """Grants votes without Raft 5.4.1's up-to-date check: a stale node can win and overwrite."""

    def _log_allows_vote(self, request: VoteRequest) -> bool:
        return True


class CommitOldTermByCounting(RaftCore):
    """Commits an earlier term's entry by counting replicas (the Raft paper's figure 8 bug)."""

    def _may_commit(self, index: int) -> bool:
        return True


class AckBeforePersist(ReplicaDriver):
    """Sends every message before the write: a follower acknowledges entries that are not on
    disk yet, then crashes and loses them."""

    def _sends(self, ready: Ready) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        return ready.messages_before_persist + ready.messages, ()


#: name -> (core class, driver class)
MUTANTS: dict[str, tuple[type[RaftCore], type[ReplicaDriver]]] = {
    "vote-without-log-check": (VoteWithoutLogCheck, ReplicaDriver),
    "commit-old-term": (CommitOldTermByCounting, ReplicaDriver),
    "ack-before-persist": (RaftCore, AckBeforePersist),
}
