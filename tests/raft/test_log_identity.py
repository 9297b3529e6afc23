"""A log knows whose it is and is never made because files are missing: the identity recorded
when the log is made is checked on every open, and a missing or incomplete log is refused unless
the caller asks, on purpose, for a new one (and even then never made over records)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.errors import CorruptRecord, DataDirError
from dledger_mq.raft.pure.messages import Entry, HardState
from dledger_mq.raft.storage.commitlog import CommitLog
from dledger_mq.raft.storage.commitlog_format import (
    IDENTITY_FILE_NAME,
    META_FILE_NAME,
    LogIdentity,
    decode_identity,
    encode_identity,
)
from dledger_mq.raft.storage.simulated_disks import MemoryDisk

DIRECTORY = "/data/raft/broker-a"
N1 = LogIdentity("local", "broker-a", "n1")


def made_log(disk: MemoryDisk, identity: LogIdentity | None = N1, entries: int = 3) -> None:
    log = CommitLog.open(disk, DIRECTORY, identity=identity, create=True)
    log.append([Entry(index, 1, b"x") for index in range(1, entries + 1)])
    log.set_hard_state(HardState(1, "n1", entries))
    log.close()


def test_the_log_of_another_node_is_refused_and_left_alone() -> None:
    disk = MemoryDisk()
    made_log(disk)
    for other in (
        LogIdentity("local", "broker-a", "n2"),
        LogIdentity("local", "broker-b", "n1"),
        LogIdentity("prod", "broker-a", "n1"),
    ):
        with pytest.raises(DataDirError, match="is the log of node n1 of group broker-a"):
            CommitLog.open(disk, DIRECTORY, identity=other, create=False)
    reopened = CommitLog.open(disk, DIRECTORY, identity=N1, create=False)
    assert reopened.last_index() == 3
    reopened.close()


def test_a_missing_log_is_not_made_unless_asked() -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        CommitLog.open(MemoryDisk(), DIRECTORY, identity=N1, create=False)


@pytest.mark.parametrize("create", [False, True])
def test_a_log_whose_meta_file_is_gone_is_not_made_again_over_its_records(create: bool) -> None:
    """The amnesia of the old code: deleting only ``meta`` of a one-segment log made it anew."""
    disk = MemoryDisk()
    made_log(disk)
    disk.remove(f"{DIRECTORY}/{META_FILE_NAME}")
    with pytest.raises(DataDirError, match="meta file"):
        CommitLog.open(disk, DIRECTORY, identity=N1, create=create)
    assert disk.exists(f"{DIRECTORY}/00000000000000000001.log")


def test_an_initialisation_cut_short_before_any_record_is_completed_when_asked() -> None:
    disk = MemoryDisk()
    CommitLog.open(disk, DIRECTORY, identity=N1, create=True).close()
    disk.remove(f"{DIRECTORY}/{META_FILE_NAME}")  # the crash came before the meta file
    with pytest.raises(DataDirError, match="no meta file"):
        CommitLog.open(disk, DIRECTORY, identity=N1, create=False)
    CommitLog.open(disk, DIRECTORY, identity=N1, create=True).close()
    CommitLog.open(disk, DIRECTORY, identity=N1, create=False).close()


def test_a_log_made_before_identities_becomes_the_first_openers_own() -> None:
    disk = MemoryDisk()
    made_log(disk, identity=None)
    assert not disk.exists(f"{DIRECTORY}/{IDENTITY_FILE_NAME}")
    CommitLog.open(disk, DIRECTORY, identity=N1, create=False).close()
    with pytest.raises(DataDirError, match="not of node n2"):
        CommitLog.open(disk, DIRECTORY, identity=LogIdentity("local", "broker-a", "n2"))


def test_a_damaged_identity_file_is_detected() -> None:
    disk = MemoryDisk()
    made_log(disk)
    path = f"{DIRECTORY}/{IDENTITY_FILE_NAME}"
    data = bytearray(encode_identity(N1))
    data[6] ^= 0x01
    disk.set_contents(path, bytes(data))
    with pytest.raises(CorruptRecord, match="identity checksum mismatch"):
        CommitLog.open(disk, DIRECTORY, identity=N1, create=False)


PARTS = st.text(max_size=40)


@given(PARTS, PARTS, PARTS)
def test_an_identity_comes_back_as_written(cluster_id: str, group: str, node_id: str) -> None:
    identity = LogIdentity(cluster_id, group, node_id)
    assert decode_identity(encode_identity(identity)) == identity


@given(st.binary(max_size=80))
def test_any_bytes_decode_to_an_identity_or_a_reason(data: bytes) -> None:
    assert isinstance(decode_identity(data), LogIdentity | str)


@given(st.integers(min_value=0, max_value=len(encode_identity(N1)) - 1))
def test_a_cut_identity_is_a_reason(length: int) -> None:
    assert isinstance(decode_identity(encode_identity(N1)[:length]), str)
