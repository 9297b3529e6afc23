"""Safety invariants, checked after every step of a simulation.

- Election safety: at most one leader per term.
- Leader completeness: a new leader's log holds every entry committed in an earlier term.
- Log matching: two entries with the same index and term have the same content and the same
  term before them (so, by induction, identical logs up to there).
- State machine safety: a committed entry is never lost or changed, and every node applies the
  same sequence, in order, with no gaps.
- A node's commit index never goes back.
- A learner never campaigns or leads.
"""

from __future__ import annotations

from dledger_mq.raft.pure.core import RaftCore, Role
from dledger_mq.raft.pure.messages import Entry, EntryKind, HardState


class SafetyViolation(Exception):
    """A Raft safety property was broken; the message says which and where."""


class SafetyChecker:
    def __init__(self) -> None:
        self.leader_by_term: dict[int, str] = {}
        # (index, term) -> (kind, data, term of the entry before it)
        self.entry_at: dict[tuple[int, int], tuple[EntryKind, bytes, int]] = {}
        # committed[i - 1] is (term, kind, data) of the entry committed at index i.
        self.committed: list[tuple[int, EntryKind, bytes]] = []
        #: commit_terms[i - 1]: the term of the node that first reported index i committed (its
        #: leader's, or later): the entry was committed in that term or an earlier one.
        self.commit_terms: list[int] = []
        self.applied_index: dict[str, int] = {}
        self.commit_index: dict[str, int] = {}

    def node_started(self, node_id: str, durable_commit: int, applied: int = 0) -> None:
        # A restarted node rebuilds its state machine from its snapshot (at ``applied``) and
        # the log after it, and its commit index starts from the durable one (written lazily,
        # so maybe behind, but never behind what it applied).
        self.applied_index[node_id] = applied
        self.commit_index[node_id] = max(durable_commit, applied)

    def hard_state_persisted(self, node_id: str, old: HardState, new: HardState) -> None:
        if new.term < old.term or new.commit < old.commit:
            raise SafetyViolation(f"{node_id} persisted {new} over {old}: term or commit went back")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            raise SafetyViolation(
                f"{node_id} voted twice in term {new.term}: {old.vote}, {new.vote}"
            )

    def became_leader(self, node_id: str, term: int, core: RaftCore) -> None:
        elected = self.leader_by_term.setdefault(term, node_id)
        if elected != node_id:
            raise SafetyViolation(f"two leaders in term {term}: {elected} and {node_id}")
        log = core.log
        # Below its log's start the leader holds the committed entries in its snapshot.
        start = max(1, log.first_index() - 1)
        for index, (committed_term, _, _) in enumerate(self.committed[start - 1 :], start=start):
            if self.commit_terms[index - 1] >= term:
                # Committed in this term or a later one: not this leader's to hold. A leader of
                # an old term can appear late (a candidate paused with its votes on the way).
                continue
            if log.term(index) != committed_term:
                raise SafetyViolation(
                    f"leader {node_id} of term {term} lacks committed entry {index} "
                    f"(term {committed_term}; it has term {log.term(index)})"
                )

    def entries_appended(self, node_id: str, entries: tuple[Entry, ...], core: RaftCore) -> None:
        if not entries:
            return
        prev_term = core.log.term(entries[0].index - 1)
        entry_at = self.entry_at
        for entry in entries:
            key = (entry.index, entry.term)
            seen = entry_at.setdefault(key, (entry.kind, entry.data, prev_term))
            if seen != (entry.kind, entry.data, prev_term):
                raise SafetyViolation(
                    f"log matching: {node_id} holds entry {key} as {entry.kind.name} "
                    f"{entry.data!r} after term {prev_term}, another node as "
                    f"{seen[0].name} {seen[1]!r} after term {seen[2]}"
                )
            prev_term = entry.term

    def commit_seen(self, node_id: str, commit: int, core: RaftCore) -> None:
        """A node's commit index reached ``commit``: those entries are committed, whatever
        happens to the node next, so record them (or check them against what was recorded)."""
        previous = self.commit_index.get(node_id, 0)
        if commit < previous:
            raise SafetyViolation(
                f"commit index of {node_id} went back from {previous} to {commit}"
            )
        self.commit_index[node_id] = commit
        committed = self.committed
        for entry in core.log.slice(previous + 1, commit + 1, 1 << 62):
            record = (entry.term, entry.kind, entry.data)
            if entry.index <= len(committed):
                if committed[entry.index - 1] != record:
                    raise SafetyViolation(
                        f"{node_id} committed {record} at {entry.index}, but "
                        f"{committed[entry.index - 1]} was committed there"
                    )
            else:
                assert entry.index == len(committed) + 1
                committed.append(record)
                self.commit_terms.append(core.term)

    def snapshot_installed(self, node_id: str, index: int, term: int) -> None:
        """A follower starts over from a leader's snapshot at (index, term): it must be of
        committed state; the node's commit index is then at ``index`` (and its state machine,
        once ``snapshot_applied``)."""
        committed = self.committed
        if index > len(committed) or committed[index - 1][0] != term:
            raise SafetyViolation(
                f"{node_id} installed a snapshot at {index}@{term}, not a committed entry"
            )
        self.commit_index[node_id] = max(self.commit_index.get(node_id, 0), index)

    def snapshot_applied(self, node_id: str, index: int) -> None:
        """The follower's state machine became the snapshot's."""
        self.applied_index[node_id] = max(self.applied_index.get(node_id, 0), index)

    def entries_applied(self, node_id: str, entries: tuple[Entry, ...]) -> None:
        applied = self.applied_index[node_id]
        committed = self.committed
        for entry in entries:
            if entry.index != applied + 1:
                raise SafetyViolation(
                    f"{node_id} applied entry {entry.index} after {applied}: a gap or a repeat"
                )
            applied = entry.index
            record = (entry.term, entry.kind, entry.data)
            if entry.index <= len(committed):
                if committed[entry.index - 1] != record:
                    raise SafetyViolation(
                        f"{node_id} applied {record} at {entry.index}, but "
                        f"{committed[entry.index - 1]} was committed there"
                    )
            else:
                committed.append(record)
                self.commit_terms.append(1 << 62)  # learned by applying: its term unknown here
        self.applied_index[node_id] = applied

    def role_seen(self, node_id: str, role: Role, term: int, core: RaftCore) -> None:
        if core.is_learner and role is not Role.FOLLOWER:
            raise SafetyViolation(f"learner {node_id} became {role.value} in term {term}")
        if role is Role.LEADER:
            self.became_leader(node_id, term, core)
