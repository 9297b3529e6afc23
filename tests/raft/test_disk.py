"""MemoryDisk loses exactly what a power loss would, and OsDisk does what the protocol says."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dledger_mq.raft.storage.disk import Disk, FsyncError, OsDisk, write_file_atomically
from dledger_mq.raft.storage.simulated_disks import (
    TORN_GARBAGE_WINDOW_BYTES,
    MemoryDisk,
    PowerLossDisk,
)


def test_fsynced_bytes_survive_a_crash_and_unsynced_ones_do_not() -> None:
    disk = MemoryDisk()
    file = disk.open("/data", create=True)
    disk.fsync_directory("/")
    file.append(b"durable")
    file.fsync()
    file.append(b" lost")
    disk.crash(random.Random(0), torn_writes=False)
    assert disk.contents("/data") == b"durable"


def test_a_new_file_needs_an_fsync_of_its_directory() -> None:
    disk = MemoryDisk()
    file = disk.open("/data", create=True)
    file.append(b"x")
    file.fsync()
    disk.crash(random.Random(0))
    assert not disk.exists("/data")


def test_rename_and_remove_are_durable_only_after_fsync_of_the_directory() -> None:
    disk = MemoryDisk()
    disk.make_directory("/d")
    disk.fsync_directory("/")
    for name in ("a", "b"):
        file = disk.open(f"/d/{name}", create=True)
        file.append(name.encode())
        file.fsync()
    disk.fsync_directory("/d")
    disk.rename("/d/a", "/d/b")
    disk.crash(random.Random(0))
    assert disk.contents("/d/a") == b"a"
    assert disk.contents("/d/b") == b"b"
    disk.remove("/d/a")
    disk.fsync_directory("/d")
    disk.crash(random.Random(0))
    assert disk.list_directory("/d") == ["b"]


def test_a_directory_not_made_durable_vanishes_with_its_files() -> None:
    disk = MemoryDisk()
    disk.make_directory("/d")
    file = disk.open("/d/f", create=True)
    file.fsync()
    disk.fsync_directory("/d")
    disk.crash(random.Random(0))
    assert not disk.exists("/d")


def test_a_torn_write_keeps_a_prefix_with_garbage_only_near_its_end() -> None:
    prefix_lengths: set[int] = set()
    for seed in range(300):
        disk = MemoryDisk()
        file = disk.open("/f", create=True)
        disk.fsync_directory("/")
        file.append(b"A" * 10)
        file.fsync()
        written = bytes(range(1, 101))
        file.append(written)
        disk.crash(random.Random(seed))
        survived = disk.contents("/f")
        assert survived[:10] == b"A" * 10
        tail = survived[10:]
        prefix_lengths.add(len(tail))
        intact = len(tail) - TORN_GARBAGE_WINDOW_BYTES
        assert tail[: max(intact, 0)] == written[: max(intact, 0)]
        assert sum(a != b for a, b in zip(tail, written, strict=False)) <= 1
    assert 0 in prefix_lengths and len(prefix_lengths) > 20


def test_truncated_durable_bytes_come_back_unless_fsynced() -> None:
    disk = MemoryDisk()
    file = disk.open("/f", create=True)
    disk.fsync_directory("/")
    file.append(b"0123456789")
    file.fsync()
    file.truncate(4)
    file.append(b"xy")
    assert disk.durable_contents("/f") == b"0123456789"
    disk.crash(random.Random(0))
    assert disk.contents("/f") == b"0123456789"
    file = disk.open("/f")
    file.truncate(4)
    file.fsync()
    disk.crash(random.Random(0))
    assert disk.contents("/f") == b"0123"


def test_a_handle_from_before_a_crash_is_refused() -> None:
    disk = MemoryDisk()
    file = disk.open("/f", create=True)
    disk.crash(random.Random(0))
    with pytest.raises(RuntimeError):
        file.append(b"x")


def test_a_full_disk_takes_what_fits_and_raises_enospc() -> None:
    disk = MemoryDisk(capacity_bytes=8)
    file = disk.open("/f", create=True)
    file.append(b"12345")
    with pytest.raises(OSError) as raised:
        file.append(b"6789")
    assert raised.value.errno == errno.ENOSPC
    assert disk.contents("/f") == b"12345678"
    file.truncate(5)
    file.append(b"abc")


def test_injected_faults_raise_the_chosen_errno_the_chosen_number_of_times() -> None:
    disk = MemoryDisk()
    file = disk.open("/f", create=True)
    disk.inject_fault("fsync", errno.EIO, path="/f", count=2)
    for _ in range(2):
        with pytest.raises(OSError) as raised:
            file.fsync()
        assert raised.value.errno == errno.EIO
    file.fsync()
    assert disk.operation_counts["fsync"] == 3


def test_clone_is_independent() -> None:
    disk = MemoryDisk()
    file = disk.open("/f", create=True)
    file.append(b"abc")
    twin = disk.clone()
    file.append(b"def")
    assert twin.contents("/f") == b"abc"
    twin.crash(random.Random(0))
    assert disk.contents("/f") == b"abcdef"


@pytest.mark.parametrize("kind", ["memory", "os"])
def test_write_file_atomically_replaces_the_file(kind: str, tmp_path: Path) -> None:
    disk: Disk = MemoryDisk() if kind == "memory" else OsDisk()
    root = "/" if kind == "memory" else str(tmp_path)
    path = f"{root.rstrip('/')}/state"
    write_file_atomically(disk, path, b"one")
    write_file_atomically(disk, path, b"two")
    file = disk.open(path)
    assert file.read(0, 100) == b"two"
    file.close()
    assert disk.list_directory(root) == ["state"]


def test_write_file_atomically_reports_a_failed_fsync_as_fsync_error() -> None:
    disk = MemoryDisk()
    write_file_atomically(disk, "/state", b"old")
    disk.inject_fault("fsync", errno.EIO)
    with pytest.raises(FsyncError):
        write_file_atomically(disk, "/state", b"new")
    disk.crash(random.Random(0))
    assert disk.contents("/state") == b"old"


def test_os_disk_appends_reads_and_truncates(tmp_path: Path) -> None:
    disk = OsDisk()
    path = str(tmp_path / "f")
    file = disk.open(path, create=True)
    file.append(b"hello world")
    assert file.size() == 11
    assert file.read(6, 100) == b"world"
    file.truncate(5)
    file.append(b"!")
    file.fsync()
    file.close()
    assert (tmp_path / "f").read_bytes() == b"hello!"
    assert disk.list_directory(str(tmp_path)) == ["f"]
    disk.fsync_directory(str(tmp_path))


# -- PowerLossDisk: real files, unsynced appends held in the process -----------------------------


def test_power_loss_disk_reads_through_its_unsynced_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "segment")
    file = PowerLossDisk().open(path, create=True)
    file.append(b"durable-")
    file.fsync()
    file.append(b"pending")

    assert file.size() == 15
    assert file.read(0, 15) == b"durable-pending"
    assert file.read(5, 6) == b"le-pen"
    assert file.read(10, 100) == b"nding"
    assert os.path.getsize(path) == 8  # the OS has only what was fsynced


def test_power_loss_disk_truncates_the_pending_tail_or_the_file(tmp_path: Path) -> None:
    file = PowerLossDisk().open(str(tmp_path / "segment"), create=True)
    file.append(b"0123")
    file.fsync()
    file.append(b"4567")

    file.truncate(6)
    assert file.read(0, 100) == b"012345"
    file.truncate(2)
    assert (file.size(), file.read(0, 100)) == (2, b"01")
    file.append(b"xy")
    file.fsync()
    assert file.read(0, 100) == b"01xy"


def test_a_killed_process_loses_exactly_what_it_did_not_fsync(tmp_path: Path) -> None:
    path = tmp_path / "segment"
    script = (
        "import os, signal\n"
        "from dledger_mq.raft.storage.simulated_disks import PowerLossDisk\n"
        f"f = PowerLossDisk().open({str(path)!r}, create=True)\n"
        "f.append(b'acknowledged'); f.fsync(); f.append(b'-in-flight')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], check=False)

    assert completed.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"acknowledged"
