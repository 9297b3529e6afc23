"""InstallSnapshot: the log reset to a snapshot (crash-safe), the core's side, and the transfer
of a snapshot file in chunks that resume."""

from __future__ import annotations

import errno
import random

import pytest

from dledger_mq.errors import StorageError
from dledger_mq.raft.pure.core import Config, RaftCore, Role
from dledger_mq.raft.pure.driver import ReplicaDriver
from dledger_mq.raft.pure.log_store import MemoryLogStore
from dledger_mq.raft.pure.messages import (
    AppendResponse,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotNeeded,
)
from dledger_mq.raft.pure.progress import ProgressState
from dledger_mq.raft.pure.snapshot_transfer import SnapshotTransfers
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.simulated_disks import MemoryDisk
from dledger_mq.raft.storage.snapshots import Snapshot, SnapshotStore, start_from_snapshot


def _entries(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(index=i, term=term, data=b"e%d" % i) for i in range(first, last + 1)]


def _log(disk: MemoryDisk) -> CommitLog:
    return CommitLog.open(disk, "/log", segment_size_bytes=256)


# -- the log ----------------------------------------------------------------------------------


def test_a_log_reset_to_a_snapshot_starts_after_it_and_keeps_only_what_follows() -> None:
    disk = MemoryDisk()
    log = _log(disk)
    log.save(_entries(1, 30, 1), HardState(term=2, vote="n1", commit=10))
    log.reset_to_snapshot(40, 2)
    assert (log.first_index(), log.last_index(), log.term(40)) == (41, 40, 2)
    assert log.hard_state().commit == 40
    log.save(_entries(41, 45, 2))
    log.close()
    reopened = _log(disk)
    assert (reopened.first_index(), reopened.last_index()) == (41, 45)
    assert [e.index for e in reopened.entries(41, 46, 1 << 20)] == [41, 42, 43, 44, 45]
    assert reopened.term(40) == 2
    # Only the new segment is left: the old ones, all before the snapshot, are gone.
    assert [n for n in disk.list_directory("/log") if n.endswith(".log")] == [f"{41:020d}.log"]


def test_a_log_that_holds_the_snapshot_entry_is_not_reset() -> None:
    log = _log(MemoryDisk())
    log.save(_entries(1, 5, 1))
    with pytest.raises(Exception, match="holds entry 3@1"):
        log.reset_to_snapshot(3, 1)


@pytest.mark.parametrize("failing_append", range(1, 4))
def test_a_reset_cut_short_by_a_crash_is_finished_or_undone_by_recovery(
    failing_append: int,
) -> None:
    """A write failing at each step of the reset, then a power loss: the log reopens either as
    it was before (up to its commit index) or reset; never anything in between."""
    disk = MemoryDisk()
    log = _log(disk)
    log.save(_entries(1, 30, 1), HardState(term=2, vote="n1", commit=20))
    log.set_hard_state(HardState(term=2, vote="n1", commit=20))
    log.close()
    log = _log(disk)
    # The reset's appends, in order: the mark, the state file, the new segment's header.
    calls = {"n": 0}
    original = disk.check_fault

    def fail_nth(operation: str, path: str) -> None:
        if operation == "append":
            calls["n"] += 1
            if calls["n"] == failing_append:
                raise OSError(errno.EIO, "injected", path)
        original(operation, path)  # type: ignore[arg-type]

    disk.check_fault = fail_nth  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        log.reset_to_snapshot(50, 2)
    disk.check_fault = original  # type: ignore[method-assign]
    disk.crash(random.Random(failing_append))
    reopened = _log(disk)
    if reopened.first_index() == 51:
        assert (reopened.last_index(), reopened.term(50)) == (50, 2)
    else:
        assert reopened.first_index() == 1
        assert 20 <= reopened.last_index() <= 30
        assert reopened.term(20) == 1


def test_a_node_restarted_after_receiving_a_snapshot_finishes_the_install() -> None:
    """The snapshot is durable but the log was not reset yet (a crash in between): starting
    from the snapshot resets the log, as the install would have."""
    disk = MemoryDisk()
    log = _log(disk)
    log.save(_entries(1, 10, 1), HardState(term=1, commit=5))
    store = SnapshotStore(disk, "/log/snapshots")
    store.save(Snapshot(25, 2, b"state at 25"))
    snapshot, reset = start_from_snapshot(log, store)
    assert snapshot is not None and snapshot.index == 25 and reset
    assert (log.first_index(), log.last_index(), log.term(25)) == (26, 25, 2)


def test_a_log_trimmed_past_every_snapshot_is_refused() -> None:
    disk = MemoryDisk()
    log = _log(disk)
    log.save(_entries(1, 40, 1), HardState(term=1, commit=40))
    log.trim_prefix(30)
    with pytest.raises(StorageError, match="no snapshot is left"):
        start_from_snapshot(log, SnapshotStore(disk, "/log/snapshots"))


# -- the core ---------------------------------------------------------------------------------


def _core(node_id: str, store: MemoryLogStore, applied: int = 0) -> RaftCore:
    config = Config(
        node_id=node_id, members=("n1", "n2"), election_timeout_ticks=10, pre_vote=False
    )
    return RaftCore(config, store, random.Random(1), applied)


def test_a_leader_asks_for_the_snapshot_when_a_follower_needs_trimmed_entries() -> None:
    store = MemoryLogStore()
    store.append(_entries(1, 20, 1))
    store.set_hard_state(HardState(term=1, commit=20))
    store.trim_prefix(15)
    leader = _core("n1", store, applied=20)
    leader.campaign()
    leader.step(_vote_granted(leader))
    assert leader.role is Role.LEADER
    ready = leader.ready()
    store.append(list(ready.entries))
    leader.advance()
    # The follower answers that it has nothing: probing goes back below the log's start.
    leader.step(
        AppendResponse(
            term=leader.term,
            source="n2",
            target="n1",
            success=False,
            rejected_index=20,
            hint_index=0,
        )
    )
    ready = leader.ready()
    assert [m for m in ready.messages if isinstance(m, SnapshotNeeded)] == [
        SnapshotNeeded(term=leader.term, source="n1", target="n2")
    ]
    assert leader.progress["n2"].state is ProgressState.SNAPSHOT
    leader.advance()
    # Once it acknowledges the snapshot's index, appends go on from there.
    leader.step(
        AppendResponse(term=leader.term, source="n2", target="n1", success=True, match_index=20)
    )
    assert leader.progress["n2"].state is ProgressState.REPLICATE


def _vote_granted(core: RaftCore) -> Message:
    from dledger_mq.raft.pure.messages import VoteResponse

    ready = core.ready()
    core.advance()
    request = next(m for m in ready.messages if m.target == "n2")
    return VoteResponse(
        term=request.term, source="n2", target="n1", granted=True, pre_vote=request.pre_vote
    )


def test_a_follower_installs_a_snapshot_and_answers_once_its_log_starts_after_it() -> None:
    store = MemoryLogStore()
    store.append(_entries(1, 8, 1))
    follower = _core("n2", store)
    follower.step(InstallSnapshot(term=3, source="n1", target="n2", index=30, snapshot_term=2))
    ready = follower.ready()
    assert ready.snapshot == (30, 2)
    assert ready.committed_entries == ()
    assert ready.messages == (
        AppendResponse(term=3, source="n2", target="n1", success=True, match_index=30),
    )
    assert ready.must_sync
    assert follower.log.first_index() == 31 and follower.log.term(30) == 2
    store.reset_to_snapshot(30, 2)
    follower.advance()
    assert (follower.log.applied, follower.log.committed) == (30, 30)
    assert follower.log.pending_snapshot is None
    # A snapshot it holds already (a duplicate) is answered from the commit index.
    follower.step(InstallSnapshot(term=3, source="n1", target="n2", index=20, snapshot_term=2))
    ready = follower.ready()
    assert ready.snapshot is None
    assert ready.messages[0] == AppendResponse(
        term=3, source="n2", target="n1", success=True, match_index=30
    )


# -- the transfer -----------------------------------------------------------------------------


class _Link:
    """Two replicas' transfers with the messages between them in a queue."""

    def __init__(self, chunk_bytes: int = 100) -> None:
        self.leader_disk, self.follower_disk = MemoryDisk(), MemoryDisk()
        self.leader_files = SnapshotStore(self.leader_disk, "/a/snapshots")
        self.follower_files = SnapshotStore(self.follower_disk, "/b/snapshots")
        self.queue: list[Message] = []
        self.installed: list[InstallSnapshot] = []
        self.leader = SnapshotTransfers("n1", self.leader_files, self.queue.append, chunk_bytes=100)
        self.follower = self.make_follower()
        self.committed = 0

    def make_follower(self) -> SnapshotTransfers:
        return SnapshotTransfers("n2", self.follower_files, self.queue.append, chunk_bytes=100)

    def deliver(self, drop: bool = False) -> Message:
        message = self.queue.pop(0)
        if drop:
            return message
        if isinstance(message, SnapshotChunk):
            self.follower.received_chunk(message, self.committed, self.installed.append)
        elif isinstance(message, SnapshotChunkAck):
            self.leader.acked(message)
        return message

    def run(self) -> list[Message]:
        seen = []
        while self.queue:
            seen.append(self.deliver())
        return seen


def test_a_snapshot_goes_over_in_chunks_and_is_installed_once_whole() -> None:
    link = _Link()
    body = bytes(range(256)) * 4
    link.leader_files.save(Snapshot(50, 3, body))
    link.leader.needed(SnapshotNeeded(term=4, source="n1", target="n2"))
    seen = link.run()
    chunks = [m for m in seen if isinstance(m, SnapshotChunk)]
    assert len(chunks) > 10 and all(len(c.data) <= 100 for c in chunks)
    assert link.installed == [
        InstallSnapshot(term=4, source="n1", target="n2", index=50, snapshot_term=3)
    ]
    received = link.follower_files.latest()
    assert received is not None and (received.index, received.term, received.data) == (
        50,
        3,
        body,
    )
    assert link.leader.sending_to == ()


def test_a_transfer_resumes_where_the_follower_stopped_after_a_drop_and_a_restart() -> None:
    link = _Link()
    link.leader_files.save(Snapshot(50, 3, b"x" * 1000))
    link.leader.needed(SnapshotNeeded(term=4, source="n1", target="n2"))
    for _ in range(8):  # the probe, its answer, three chunks and their answers
        link.deliver()
    held = link.follower_files.received(50, 3)
    assert held == 300
    link.deliver(drop=True)  # a chunk is lost
    assert not link.queue
    link.follower = link.make_follower()  # the follower restarts; its partial file stays
    for _ in range(10):  # nothing answered for a while: the chunk goes again
        link.leader.tick(lambda peer: True)
    resent = link.queue[0]
    assert isinstance(resent, SnapshotChunk) and resent.offset == held
    link.run()
    assert len(link.installed) == 1


def test_a_damaged_chunk_is_not_kept_and_is_sent_again() -> None:
    link = _Link()
    link.leader_files.save(Snapshot(50, 3, b"y" * 500))
    link.leader.needed(SnapshotNeeded(term=4, source="n1", target="n2"))
    link.deliver()  # probe
    link.deliver()  # its answer: the first chunk goes
    chunk = link.queue.pop(0)
    assert isinstance(chunk, SnapshotChunk)
    link.queue.insert(0, SnapshotChunk(**{**_fields(chunk), "data": b"z" * len(chunk.data)}))
    link.deliver()
    ack = link.queue[0]
    assert isinstance(ack, SnapshotChunkAck) and ack.next_offset == 0
    link.run()
    received = link.follower_files.latest()
    assert received is not None and received.data == b"y" * 500


def _fields(chunk: SnapshotChunk) -> dict[str, object]:
    import attrs

    return attrs.asdict(chunk)


def test_a_driver_sends_chunks_for_a_needed_snapshot_and_drops_them_when_not_leading() -> None:
    disk = MemoryDisk()
    files = SnapshotStore(disk, "/a/snapshots")
    files.save(Snapshot(10, 1, b"s" * 300))
    store = MemoryLogStore()
    core = _core("n1", store)
    driver = ReplicaDriver(core, snapshots=files, snapshot_chunk_bytes=100)
    assert driver.transfers is not None
    driver.transfers.needed(SnapshotNeeded(term=1, source="n1", target="n2"))
    assert driver.has_work()
    work = driver.take(0.0)
    assert [type(m) for m in work.send_first] == [SnapshotChunk]
    driver.finish(work)
    driver.tick()  # a follower core: no transfer is needed any more
    assert driver.transfers.sending_to == ()
