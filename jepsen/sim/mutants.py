"""Deliberately broken variants, to prove that the simulator catches real bugs.

Each replaces one safety rule; the simulator's default seeds must find every one of them.
"""

from __future__ import annotations

from dledger_mq.raft.core import RaftCore
from dledger_mq.raft.messages import VoteRequest


class VoteWithoutLogCheck(RaftCore):
    """Grants votes without Raft 5.4.1's up-to-date check: a stale node can win and overwrite."""

    def _log_allows_vote(self, request: VoteRequest) -> bool:
        return True


class CommitOldTermByCounting(RaftCore):
    """Commits an earlier term's entry by counting replicas (the Raft paper's figure 8 bug)."""

    def _may_commit(self, index: int) -> bool:
        return True


#: name -> (core class, whether the driver acknowledges before persisting)
MUTANTS: dict[str, tuple[type[RaftCore], bool]] = {
    "vote-without-log-check": (VoteWithoutLogCheck, False),
    "commit-old-term": (CommitOldTermByCounting, False),
    # A follower that acknowledges entries before they are on disk, then crashes and loses them.
    "ack-before-persist": (RaftCore, True),
}
