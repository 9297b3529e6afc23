"""Stateful: any sequence of append / truncate / trim / hard state / reopen / crash leaves the
CommitLog equal to MemoryLogStore, the model (under ``sync`` flush nothing acknowledged is lost)."""

from __future__ import annotations

import random
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable, MemoryLogStore
from dledger_mq.raft.pure.messages import Entry, EntryKind, HardState
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.disk import Disk, OsDisk
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

SEGMENT_SIZE_BYTES = 256


class CommitLogAgainstModel(RuleBasedStateMachine):
    disk: Disk
    directory: str

    def __init__(self) -> None:
        super().__init__()
        self.model = MemoryLogStore()
        self.current_term = 1

    def make_disk(self) -> None:
        self.disk = MemoryDisk()
        self.directory = "/log"

    @initialize()
    def open_log(self) -> None:
        self.make_disk()
        self.log = self.reopen_log()

    def reopen_log(self) -> CommitLog:
        return CommitLog.open(self.disk, self.directory, segment_size_bytes=SEGMENT_SIZE_BYTES)

    @rule(
        data=st.data(),
        count=st.integers(1, 6),
        bump_term=st.booleans(),
        sizes=st.lists(st.integers(0, 60), min_size=6, max_size=6),
    )
    def append(self, data: st.DataObject, count: int, bump_term: bool, sizes: list[int]) -> None:
        # Raft never truncates a committed entry.
        lowest = max(self.model.first_index(), self.model.hard_state().commit + 1)
        first = data.draw(st.integers(lowest, self.model.last_index() + 1), label="first")
        if bump_term:
            self.current_term += 1
        entries = [
            Entry(
                first + offset,
                self.current_term,
                random.Random(first * 7 + offset).randbytes(sizes[offset]),
                EntryKind.NOOP if sizes[offset] == 0 else EntryKind.NORMAL,
            )
            for offset in range(count)
        ]
        self.model.append(entries)
        self.log.append(entries)

    @rule(term_bump=st.integers(0, 1), vote=st.sampled_from([None, "n1", "n2"]), data=st.data())
    def set_hard_state(self, term_bump: int, vote: str | None, data: st.DataObject) -> None:
        self.current_term += term_bump
        # The commit index never moves back and never passes the log.
        commit = data.draw(
            st.integers(self.model.hard_state().commit, self.model.last_index()), label="commit"
        )
        hard_state = HardState(self.current_term, vote, commit)
        self.model.set_hard_state(hard_state)
        self.log.set_hard_state(hard_state)

    @rule(data=st.data())
    def trim_prefix(self, data: st.DataObject) -> None:
        index = data.draw(
            st.integers(self.model.first_index(), self.model.last_index() + 1), label="index"
        )
        self.model.trim_prefix(index)
        self.log.trim_prefix(index)

    @rule(max_total_bytes=st.integers(0, 2000), data=st.data())
    def trim_by_size(self, max_total_bytes: int, data: st.DataObject) -> None:
        floor = data.draw(
            st.integers(self.model.first_index(), self.model.last_index() + 1), label="floor"
        )
        first_index = self.log.trim_by_size(max_total_bytes, floor)
        assert first_index <= max(floor, self.model.first_index())
        self.model.trim_prefix(first_index)

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = self.reopen_log()

    @precondition(lambda self: isinstance(self.disk, MemoryDisk))
    @rule(seed=st.integers(0, 2**32))
    def crash(self, seed: int) -> None:
        assert isinstance(self.disk, MemoryDisk)
        self.disk.crash(random.Random(seed))
        self.log = self.reopen_log()
        recovered, expected = self.log.hard_state(), self.model.hard_state()
        # Term and vote are fsynced when set; the commit index alone is written lazily.
        assert (recovered.term, recovered.vote) == (expected.term, expected.vote)
        assert recovered.commit <= expected.commit
        self.model.set_hard_state(recovered)

    @rule(data=st.data(), max_bytes=st.integers(0, 300))
    def read_a_range(self, data: st.DataObject, max_bytes: int) -> None:
        low = data.draw(st.integers(self.model.first_index() - 2, self.model.last_index() + 2))
        high = data.draw(st.integers(low, self.model.last_index() + 3))
        assert outcome(lambda: self.log.entries(low, high, max_bytes)) == outcome(
            lambda: self.model.entries(low, high, max_bytes)
        )

    @invariant()
    def matches_the_model(self) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        assert (self.log.first_index(), self.log.last_index()) == (first, last)
        assert self.log.hard_state() == self.model.hard_state()
        for index in range(first - 2, last + 2):
            assert outcome(lambda i=index: self.log.term(i)) == outcome(
                lambda i=index: self.model.term(i)
            )
        assert self.log.entries(first, last + 1, 1 << 30) == self.model.entries(
            first, last + 1, 1 << 30
        )

    def teardown(self) -> None:
        self.log.close()


def outcome(call: object) -> object:
    """The value of ``call()``, or the type of the LogStore error it raised."""
    assert callable(call)
    try:
        return call()
    except (LogCompacted, LogUnavailable) as error:
        return type(error)


class CommitLogOnRealFilesAgainstModel(CommitLogAgainstModel):
    def make_disk(self) -> None:
        self.disk = OsDisk()
        self.directory = tempfile.mkdtemp(prefix="commitlog-stateful-")

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.directory, ignore_errors=True)


def test_commit_log_on_memory_disk_matches_the_model() -> None:
    run_state_machine_as_test(
        CommitLogAgainstModel,
        settings=settings(
            max_examples=200,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_commit_log_on_real_files_matches_the_model() -> None:
    run_state_machine_as_test(
        CommitLogOnRealFilesAgainstModel,
        settings=settings(
            max_examples=15,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
