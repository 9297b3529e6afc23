"""Property tests of the Raft core's log view (``RaftLog``) and follower tracking (``Progress``).

``RaftLog`` is compared with two plain lists: the log the core should see, and what the store
holds. Terms are written the way Raft writes them (an overwrite always brings a newer term), so
an index and a term identify one entry, as the Log Matching property promises.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.pure.progress import Progress, ProgressState
from dledger_mq.raft.pure.raft_log import RaftLog
from tests.raft.network import store_with, stored_entries

ALL_BYTES = 1 << 62


def entry(index: int, term: int) -> Entry:
    # One (index, term), one entry: the data is a function of both.
    return Entry(index=index, term=term, data=b"%d@%d" % (index, term))


def prefix_within(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes``, but at least one entry."""
    result: list[Entry] = []
    size = 0
    for candidate in entries:
        size += candidate.size_bytes
        if result and size > max_bytes:
            break
        result.append(candidate)
    return result


class RaftLogMachine(RuleBasedStateMachine):
    """Appends (extending or overwriting), a Ready taken then persisted, commits, applies and
    restarts, against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryLogStore()
        self.log = RaftLog(self.store, applied=0)
        self.model: list[Entry] = []  # the log as the core must see it
        self.disk: list[Entry] = []  # what the store holds
        self.taken: tuple[list[Entry], int] | None = None  # a Ready's entries and commit
        self.term = 1
        self.committed = 0
        self.applied = 0

    def _append(self, first: int, count: int, term: int) -> None:
        entries = [entry(first + offset, term) for offset in range(count)]
        self.log.append(entries)
        self.model[first - 1 :] = entries

    @rule(count=st.integers(min_value=1, max_value=4))
    def extend(self, count: int) -> None:
        """The current leader appends after the last entry."""
        self._append(len(self.model) + 1, count, self.term)

    @rule(data=st.data(), count=st.integers(min_value=1, max_value=4))
    def overwrite(self, data: st.DataObject, count: int) -> None:
        """A leader of a newer term replaces everything from some uncommitted index on."""
        self.term += 1
        first = data.draw(st.integers(min_value=self.committed + 1, max_value=len(self.model) + 1))
        self._append(first, count, self.term)

    @rule()
    def take_ready(self) -> None:
        if self.taken is None:
            self.taken = (self.log.unstable_entries(), self.log.committed)

    @precondition(lambda self: self.taken is not None)
    @rule()
    def persist(self) -> None:
        assert self.taken is not None
        entries, commit = self.taken
        self.taken = None
        self.store.append(entries)
        self.store.set_hard_state(HardState(term=self.term, commit=commit))
        if entries:
            self.disk[entries[0].index - 1 :] = entries
            self.log.stable_to(entries[-1].index, entries[-1].term)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(self.model)))
        advanced = self.log.commit_to(index)
        assert advanced is (index > self.committed)
        self.committed = max(self.committed, index)

    @rule(max_bytes=st.integers(min_value=0, max_value=120))
    def apply(self, max_bytes: int) -> None:
        entries = self.log.next_committed_entries(max_bytes)
        assert entries == prefix_within(self.model[self.applied : self.committed], max_bytes)
        if entries:
            self.log.applied_to(entries[-1].index)
            self.applied = entries[-1].index

    @rule()
    def restart(self) -> None:
        """A crash: the taken Ready and everything unpersisted are lost; the store remains."""
        self.taken = None
        self.log = RaftLog(self.store, applied=0)
        self.model = list(self.disk)
        self.committed = self.store.hard_state().commit
        self.applied = 0

    @rule(data=st.data())
    def read_a_slice(self, data: st.DataObject) -> None:
        last = len(self.model)
        low = data.draw(st.integers(min_value=1, max_value=last + 1))
        high = data.draw(st.integers(min_value=low, max_value=last + 1))
        max_bytes = data.draw(st.integers(min_value=0, max_value=120))
        expected = prefix_within(self.model[low - 1 : high - 1], max_bytes) if low < high else []
        assert self.log.slice(low, high, max_bytes) == expected

    @rule(data=st.data())
    def find_conflict_by_term(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(self.model) + 3))
        term = data.draw(st.integers(min_value=0, max_value=self.term + 1))
        candidate = min(index, len(self.model))
        while candidate > 0 and self.model[candidate - 1].term > term:
            candidate -= 1
        expected_term = self.model[candidate - 1].term if candidate else 0
        assert self.log.find_conflict_by_term(index, term) == (candidate, expected_term)

    @rule(data=st.data())
    def compare_up_to_date(self, data: st.DataObject) -> None:
        last_index = data.draw(st.integers(min_value=0, max_value=len(self.model) + 2))
        last_term = data.draw(st.integers(min_value=0, max_value=self.term + 1))
        our_term = self.model[-1].term if self.model else 0
        expected = (last_term, last_index) >= (our_term, len(self.model))
        assert self.log.is_up_to_date(last_index, last_term) is expected

    @invariant()
    def matches_the_model(self) -> None:
        log = self.log
        assert log.last_index() == len(self.model)
        assert log.last_term() == (self.model[-1].term if self.model else 0)
        for index in range(len(self.model) + 3):
            expected = self.model[index - 1].term if 1 <= index <= len(self.model) else 0
            assert log.term(index) == expected, index
            # Nothing beyond the end matches, not even a term of 0.
            assert log.match_term(index, expected) is (index <= len(self.model))
        assert log.slice(1, len(self.model) + 1, ALL_BYTES) == self.model
        # Invariant: applied <= committed <= last_index.
        assert (log.applied, log.committed) == (self.applied, self.committed)
        assert log.applied <= log.committed <= log.last_index()

    @invariant()
    def stable_part_is_on_disk(self) -> None:
        stable = self.log.unstable_offset - 1
        assert stored_entries(self.store) == self.disk
        assert self.disk[:stable] == self.model[:stable]
        assert self.log.unstable_entries() == self.model[stable:]


RaftLogMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_raft_log_matches_a_list = RaftLogMachine.TestCase


@st.composite
def nondecreasing_terms(draw: st.DrawFn, min_term: int = 1, max_size: int = 8) -> list[int]:
    terms = draw(st.lists(st.integers(min_value=min_term, max_value=5), max_size=max_size))
    return sorted(terms)


@given(
    follower_terms=nondecreasing_terms(),
    data=st.data(),
)
@settings(max_examples=300)
def test_maybe_append_follows_the_append_entries_receiver_rules(
    follower_terms: list[int], data: st.DataObject
) -> None:
    """Raft figure 2, AppendEntries receiver rules 2-5, against a list."""
    log = RaftLog(store_with(follower_terms), applied=0)
    model = [entry(index, term) for index, term in enumerate(follower_terms, start=1)]
    prev_index = data.draw(st.integers(min_value=0, max_value=len(model) + 1), "prev_index")
    # Real entries have terms >= 1, and so does every leader's prev_term after index 0 (see
    # test_raft_paper's xfail about prev_term 0 beyond the follower's log).
    prev_term = data.draw(st.integers(min_value=1 if prev_index else 0, max_value=5), "prev_term")
    new_terms = data.draw(nondecreasing_terms(min_term=max(prev_term, 1), max_size=4), "terms")
    entries = tuple(entry(prev_index + k, term) for k, term in enumerate(new_terms, start=1))
    leader_commit = data.draw(st.integers(min_value=0, max_value=prev_index + len(entries) + 2))

    result = log.maybe_append(prev_index, prev_term, leader_commit, entries)

    terms_with_index_0 = [0, *follower_terms]
    prev_matches = prev_index <= len(model) and terms_with_index_0[prev_index] == prev_term
    if not prev_matches:
        # 2. Reply false if the log does not contain an entry at prevLogIndex of prevLogTerm.
        assert result is None
        assert log.slice(1, log.last_index() + 1, ALL_BYTES) == model
        assert log.committed == 0
        return
    expected = list(model)
    for new in entries:
        position = new.index - 1
        if position < len(expected) and expected[position].term != new.term:
            # 3. A conflicting entry goes, with all that follow it.
            del expected[position:]
        if position >= len(expected):
            # 4. Append any new entries not already in the log.
            expected.append(new)
    last_new = prev_index + len(entries)
    assert result == last_new
    assert log.slice(1, log.last_index() + 1, ALL_BYTES) == expected
    # 5. commitIndex = min(leaderCommit, index of last new entry).
    assert log.committed == min(leader_commit, last_new)
    # Only what changed is handed to the driver to write.
    written = log.unstable_entries()
    assert expected[len(expected) - len(written) :] == written
    assert not written or written[0].index > len(model) or model[written[0].index - 1] != written[0]


class ProgressMachine(RuleBasedStateMachine):
    """A leader's Progress for one follower, driven as the leader drives it, against the rules
    of probing and pipelining."""

    @initialize(
        leader_last=st.integers(min_value=0, max_value=10),
        max_inflight=st.integers(min_value=1, max_value=4),
    )
    def start(self, leader_last: int, max_inflight: int) -> None:
        self.leader_last = leader_last
        self.max_inflight = max_inflight
        self.progress = Progress(next_index=leader_last + 1)
        #: Appends in flight as (prev_index, last_index); an empty append has last == prev.
        self.outstanding: list[tuple[int, int]] = []
        self.highest_match = 0

    @rule(count=st.integers(min_value=1, max_value=5))
    def leader_appends(self, count: int) -> None:
        self.leader_last += count

    @rule(batch=st.integers(min_value=1, max_value=4))
    def send(self, batch: int) -> None:
        progress = self.progress
        if progress.is_paused(self.max_inflight):
            return
        prev_index = progress.next - 1
        if progress.next <= self.leader_last:
            last = min(self.leader_last, progress.next + batch - 1)
            state = progress.state
            progress.sent(last)
            self.outstanding.append((prev_index, last))
            if state is ProgressState.REPLICATE:
                assert progress.next == last + 1 and progress.inflight[-1] == last
            else:
                assert progress.next == prev_index + 1 and progress.probe_sent
        elif progress.state is ProgressState.PROBE:
            progress.sent(None)
            self.outstanding.append((prev_index, prev_index))
            assert progress.probe_sent

    @precondition(lambda self: self.outstanding)
    @rule(choice=st.integers(min_value=0, max_value=64))
    def acknowledge(self, choice: int) -> None:
        _, last = self.outstanding.pop(choice % len(self.outstanding))
        progress = self.progress
        old_match = progress.match
        learned = progress.acknowledged(last)
        assert learned is (last > old_match)
        assert progress.match == max(old_match, last)
        if learned and progress.state is ProgressState.PROBE:
            progress.become_replicate()
            assert progress.next == progress.match + 1 and not progress.inflight

    @precondition(lambda self: self.outstanding)
    @rule(choice=st.integers(min_value=0, max_value=64), data=st.data())
    def reject(self, choice: int, data: st.DataObject) -> None:
        prev_index, _ = self.outstanding.pop(choice % len(self.outstanding))
        if prev_index == 0:
            return  # index 0 always matches: never rejected
        hint = data.draw(st.integers(min_value=0, max_value=prev_index - 1), "hint")
        progress = self.progress
        before = (progress.state, progress.match, progress.next, list(progress.inflight))
        if progress.state is ProgressState.REPLICATE:
            fresh = prev_index > progress.match
            assert progress.rejected(prev_index, hint) is fresh
            if fresh:
                assert progress.state is ProgressState.PROBE
                assert progress.next == progress.match + 1 and not progress.probe_sent
        else:
            fresh = progress.next - 1 == prev_index
            expected_next = max(min(prev_index, hint + 1), progress.match + 1)
            assert progress.rejected(prev_index, hint) is fresh
            if fresh:
                assert progress.next == expected_next and not progress.probe_sent
        if not fresh:
            after = (progress.state, progress.match, progress.next, list(progress.inflight))
            assert after == before, "a stale rejection changed the progress"

    @precondition(lambda self: self.outstanding)
    @rule(choice=st.integers(min_value=0, max_value=64))
    def lose(self, choice: int) -> None:
        self.outstanding.pop(choice % len(self.outstanding))

    @rule()
    def heartbeat_response(self) -> None:
        progress = self.progress
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.is_paused(self.max_inflight):
            progress.inflight.popleft()
        assert not progress.is_paused(self.max_inflight)

    @invariant()
    def progress_is_consistent(self) -> None:
        progress = self.progress
        # Invariant: match < next.
        assert progress.match < progress.next <= self.leader_last + 1
        assert progress.match >= self.highest_match, "match went back"
        self.highest_match = progress.match
        inflight = list(progress.inflight)
        assert inflight == sorted(set(inflight))
        assert all(progress.match < index <= progress.next - 1 for index in inflight)
        if progress.state is ProgressState.PROBE:
            assert not inflight
            assert progress.is_paused(self.max_inflight) is progress.probe_sent
        else:
            assert progress.is_paused(self.max_inflight) is (len(inflight) >= self.max_inflight)
            assert len(inflight) <= self.max_inflight


ProgressMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_progress_rules = ProgressMachine.TestCase
