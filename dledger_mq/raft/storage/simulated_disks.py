"""Disks that can fail on purpose: for the simulator, the tests and the fault-injection harness.

``MemoryDisk`` keeps, for every file and directory, what is durable apart from what only sits in
the page cache, and :meth:`MemoryDisk.crash` throws the page cache away the way a power loss
would. ``PowerLossDisk`` is real files whose unsynced appends live in process memory, so that
killing the process loses them (``DLEDGER_MQ_HARNESS=lose-unsynced``). Neither is a product
setting; the product writes through ``OsDisk`` (``disk.py``).
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Literal

import attrs

from dledger_mq.raft.storage.disk import OsDisk, OsFile


class PowerLossFile:
    """An :class:`OsFile` whose appends stay in this process until ``fsync``.

    Only the harness uses it (``PowerLossDisk``): a SIGKILL of the process then loses exactly the
    bytes a power cut would have lost, which a real kill (the kernel keeps the page cache) never
    does. The CommitLog's writer thread appends while the Trio thread reads, hence the lock.
    """

    __slots__ = ("_file", "_pending", "_lock")

    def __init__(self, file: OsFile) -> None:
        self._file = file
        self._pending = bytearray()
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._file.path

    def size(self) -> int:
        with self._lock:
            return self._file.size() + len(self._pending)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._pending += data

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            durable_size = self._file.size()
            head = b""
            if offset < durable_size:
                head = self._file.read(offset, min(length, durable_size - offset))
            start = max(offset - durable_size, 0)
            return head + bytes(self._pending[start : start + length - len(head)])

    def truncate(self, size: int) -> None:
        with self._lock:
            durable_size = self._file.size()
            if size >= durable_size:
                del self._pending[size - durable_size :]
            else:
                self._pending.clear()
                self._file.truncate(size)

    def fsync(self) -> None:
        with self._lock:
            if self._pending:
                self._file.append(self._pending)
                self._pending.clear()
            self._file.fsync()

    def close(self) -> None:
        # What was never fsynced is lost, as it may be after a power cut.
        with self._lock:
            self._pending.clear()
            self._file.close()


class PowerLossDisk(OsDisk):
    """Real files whose unsynced appends live in process memory: killing the process loses them.

    A fault-injection device (``DLEDGER_MQ_HARNESS=lose-unsynced``), never a product setting.
    It models lost file data only; directory operations (create, rename, remove) go to the OS
    at once.
    """

    def __init__(self) -> None:
        # Each process is a new boot: what it did not fsync is gone when it dies.
        self._boot_id = f"power-loss-{os.getpid()}-{random.getrandbits(64):016x}"

    def open(  # type: ignore[override]
        self, path: str, *, create: bool = False, truncate: bool = False
    ) -> PowerLossFile:
        return PowerLossFile(super().open(path, create=create, truncate=truncate))

    def boot_id(self) -> str:
        return self._boot_id


# -- an in-memory file system with a page cache -------------------------------------------------

Operation = Literal["append", "fsync", "fsync_directory", "rename", "remove", "open", "truncate"]


@attrs.define
class _Fault:
    operation: Operation
    error_number: int
    path: str | None
    remaining: int


class _Inode:
    """A file's bytes. Durable is ``data[:synced_size]`` unless a truncate or overwrite since the
    last fsync forced a copy into ``durable_snapshot`` (rare, so fsync stays O(1))."""

    __slots__ = ("data", "synced_size", "durable_snapshot", "modified_time_seconds")

    def __init__(self, modified_time_seconds: float) -> None:
        self.data = bytearray()
        self.synced_size = 0
        self.durable_snapshot: bytes | None = None
        self.modified_time_seconds = modified_time_seconds

    def before_non_append_change(self) -> None:
        if self.durable_snapshot is None:
            self.durable_snapshot = bytes(self.data[: self.synced_size])

    def fsync(self) -> None:
        self.durable_snapshot = None
        self.synced_size = len(self.data)

    def durable_bytes(self) -> bytes:
        if self.durable_snapshot is not None:
            return self.durable_snapshot
        return bytes(self.data[: self.synced_size])


class _Directory:
    __slots__ = ("entries", "durable_entries")

    def __init__(self) -> None:
        self.entries: dict[str, _Inode | _Directory] = {}
        self.durable_entries: dict[str, _Inode | _Directory] = {}


def _os_error(error_number: int, path: str) -> OSError:
    return OSError(error_number, os.strerror(error_number), path)


class MemoryFile:
    __slots__ = ("_disk", "_inode", "_path", "_generation")

    def __init__(self, disk: MemoryDisk, inode: _Inode, path: str) -> None:
        self._disk = disk
        self._inode = inode
        self._path = path
        self._generation = disk.generation

    @property
    def path(self) -> str:
        return self._path

    def _live_inode(self) -> _Inode:
        if self._generation != self._disk.generation:
            # A handle that survived a simulated crash would let a dead process keep writing.
            raise RuntimeError(f"{self._path}: file handle used after MemoryDisk.crash()")
        return self._inode

    def size(self) -> int:
        return len(self._live_inode().data)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        inode = self._live_inode()
        disk = self._disk
        disk.operation_counts["append"] += 1
        disk.check_fault("append", self._path)
        if disk.capacity_bytes is not None:
            room = disk.capacity_bytes - disk.used_bytes
            if len(data) > room:
                # A full disk takes what fits and then refuses, like a short write + ENOSPC.
                if room > 0:
                    inode.data += data[:room]
                    disk.used_bytes += room
                raise _os_error(errno.ENOSPC, self._path)
        inode.data += data
        disk.used_bytes += len(data)
        inode.modified_time_seconds = disk.clock()

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._live_inode().data[offset : offset + length])

    def truncate(self, size: int) -> None:
        inode = self._live_inode()
        self._disk.operation_counts["truncate"] += 1
        self._disk.check_fault("truncate", self._path)
        if size < inode.synced_size:
            # Cutting into durable bytes: until the next fsync, a crash brings them back.
            inode.before_non_append_change()
            inode.synced_size = size
        old_size = len(inode.data)
        if size < old_size:
            del inode.data[size:]
        else:
            inode.data += bytes(size - old_size)
        self._disk.used_bytes += size - old_size
        inode.modified_time_seconds = self._disk.clock()

    def fsync(self) -> None:
        inode = self._live_inode()
        self._disk.operation_counts["fsync"] += 1
        self._disk.check_fault("fsync", self._path)
        inode.fsync()

    def close(self) -> None:
        pass


class MemoryDisk:
    """An in-memory file system that loses what was not fsynced when it :meth:`crash` es.

    File contents are durable after ``DiskFile.fsync``; a directory's entries (files created,
    renamed, removed, subdirectories made) are durable after ``fsync_directory`` of that
    directory. Faults: ``capacity_bytes`` makes appends fail with ``ENOSPC`` once the disk is full;
    :meth:`inject_fault` makes the next calls of one operation fail with a chosen errno.
    """

    def __init__(
        self, *, capacity_bytes: int | None = None, clock: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.clock = clock
        self.used_bytes = 0
        #: Bumped by :meth:`crash`; handles opened before it refuse further use.
        self.generation = 0
        #: Calls per operation since creation: group-commit tests count fsyncs with it.
        self.operation_counts: Counter[str] = Counter()
        self._root = _Directory()
        self._faults: list[_Fault] = []

    # -- faults --------------------------------------------------------------------------------

    def inject_fault(
        self, operation: Operation, error_number: int, *, path: str | None = None, count: int = 1
    ) -> None:
        """Make the next ``count`` calls of ``operation`` (on ``path``, if given) raise OSError."""
        self._faults.append(_Fault(operation, error_number, path, count))

    def check_fault(self, operation: Operation, path: str) -> None:
        if not self._faults:
            return
        for fault in self._faults:
            if fault.operation == operation and fault.path in (None, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                raise _os_error(fault.error_number, path)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def faults_pending(self) -> int:
        """Injected faults that have not fired yet."""
        return sum(fault.remaining for fault in self._faults)

    # -- crash ---------------------------------------------------------------------------------

    def crash(self, rng: random.Random, *, torn_writes: bool = True) -> None:
        """Lose everything not fsynced, as after a power loss; ``rng`` decides the torn tails.

        With ``torn_writes``, a file that was only appended to since its last fsync may keep a
        random prefix of the unsynced bytes, and half of those keep a garbage byte among the last
        ``TORN_GARBAGE_WINDOW_BYTES`` that survived (a write torn inside its last record). Files
        truncated since their last fsync go back to their durable bytes.
        """
        self.generation += 1
        self.used_bytes = 0
        self._crash_directory(self._root, rng, torn_writes)

    def _crash_directory(self, directory: _Directory, rng: random.Random, torn: bool) -> None:
        directory.entries = dict(directory.durable_entries)
        for node in directory.entries.values():
            if isinstance(node, _Directory):
                self._crash_directory(node, rng, torn)
            else:
                self._crash_inode(node, rng, torn)
                self.used_bytes += len(node.data)

    @staticmethod
    def _crash_inode(inode: _Inode, rng: random.Random, torn: bool) -> None:
        if inode.durable_snapshot is not None:
            inode.data = bytearray(inode.durable_snapshot)
            inode.durable_snapshot = None
        elif len(inode.data) > inode.synced_size:
            unsynced_bytes = len(inode.data) - inode.synced_size
            kept_bytes = rng.randint(0, unsynced_bytes) if torn and rng.random() < 0.5 else 0
            del inode.data[inode.synced_size + kept_bytes :]
            if kept_bytes and rng.random() < 0.5:
                window = min(kept_bytes, TORN_GARBAGE_WINDOW_BYTES)
                position = len(inode.data) - 1 - rng.randrange(window)
                inode.data[position] ^= rng.randint(1, 255)
        inode.synced_size = len(inode.data)

    # -- inspection and tampering, for tests ---------------------------------------------------

    def clone(self) -> MemoryDisk:
        """A deep copy (page cache included): try several crashes from one state."""
        twin = MemoryDisk(capacity_bytes=self.capacity_bytes, clock=self.clock)
        twin.used_bytes = self.used_bytes
        copies: dict[int, _Inode | _Directory] = {}

        def copy(node: _Inode | _Directory) -> _Inode | _Directory:
            if id(node) in copies:
                return copies[id(node)]
            if isinstance(node, _Directory):
                new_directory = _Directory()
                copies[id(node)] = new_directory
                new_directory.entries = {name: copy(n) for name, n in node.entries.items()}
                new_directory.durable_entries = {
                    name: copy(n) for name, n in node.durable_entries.items()
                }
                return new_directory
            new_inode = _Inode(node.modified_time_seconds)
            new_inode.data = bytearray(node.data)
            new_inode.synced_size = node.synced_size
            new_inode.durable_snapshot = node.durable_snapshot
            copies[id(node)] = new_inode
            return new_inode

        root = copy(self._root)
        assert isinstance(root, _Directory)
        twin._root = root
        return twin

    def contents(self, path: str) -> bytes:
        """The file's bytes as a reader sees them now (page cache included)."""
        return bytes(self._file(path).data)

    def durable_contents(self, path: str) -> bytes:
        return self._file(path).durable_bytes()

    def set_contents(self, path: str, data: bytes) -> None:
        """Replace an existing file's bytes, durably: a disk that rotted or was cut while off."""
        inode = self._file(path)
        self.used_bytes += len(data) - len(inode.data)
        inode.data = bytearray(data)
        inode.synced_size = len(data)
        inode.durable_snapshot = None

    # -- the Disk protocol ---------------------------------------------------------------------

    def open(self, path: str, *, create: bool = False, truncate: bool = False) -> MemoryFile:
        self.operation_counts["open"] += 1
        self.check_fault("open", path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            if not create:
                raise _os_error(errno.ENOENT, path)
            node = _Inode(self.clock())
            parent.entries[name] = node
        elif isinstance(node, _Directory):
            raise _os_error(errno.EISDIR, path)
        if truncate and node.data:
            MemoryFile(self, node, path).truncate(0)
        return MemoryFile(self, node, path)

    def exists(self, path: str) -> bool:
        return self._lookup(path) is not None

    def is_directory(self, path: str) -> bool:
        return isinstance(self._lookup(path), _Directory)

    def list_directory(self, path: str) -> list[str]:
        return sorted(self._directory(path).entries)

    def make_directory(self, path: str) -> None:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _os_error(errno.EEXIST, path)
        parent.entries[name] = _Directory()

    def rename(self, source: str, target: str) -> None:
        self.operation_counts["rename"] += 1
        self.check_fault("rename", source)
        source_parent, source_name = self._parent(source)
        target_parent, target_name = self._parent(target)
        node = source_parent.entries.get(source_name)
        if node is None:
            raise _os_error(errno.ENOENT, source)
        replaced = target_parent.entries.get(target_name)
        if isinstance(replaced, _Inode):
            self.used_bytes -= len(replaced.data)
        del source_parent.entries[source_name]
        target_parent.entries[target_name] = node

    def remove(self, path: str) -> None:
        self.operation_counts["remove"] += 1
        self.check_fault("remove", path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _os_error(errno.ENOENT, path)
        if isinstance(node, _Directory):
            raise _os_error(errno.EISDIR, path)
        self.used_bytes -= len(node.data)
        del parent.entries[name]

    def fsync_directory(self, path: str) -> None:
        self.operation_counts["fsync_directory"] += 1
        self.check_fault("fsync_directory", path)
        directory = self._directory(path)
        directory.durable_entries = dict(directory.entries)

    def modified_time_seconds(self, path: str) -> float:
        return self._file(path).modified_time_seconds

    def boot_id(self) -> str:
        # A crash here is a power loss: the page cache does not survive it.
        return f"memory-disk-{self.generation}"

    # -- path walking --------------------------------------------------------------------------

    def _lookup(self, path: str) -> _Inode | _Directory | None:
        node: _Inode | _Directory = self._root
        for name in _split(path):
            if not isinstance(node, _Directory):
                return None
            found = node.entries.get(name)
            if found is None:
                return None
            node = found
        return node

    def _directory(self, path: str) -> _Directory:
        node = self._lookup(path)
        if node is None:
            raise _os_error(errno.ENOENT, path)
        if not isinstance(node, _Directory):
            raise _os_error(errno.ENOTDIR, path)
        return node

    def _file(self, path: str) -> _Inode:
        node = self._lookup(path)
        if node is None:
            raise _os_error(errno.ENOENT, path)
        if isinstance(node, _Directory):
            raise _os_error(errno.EISDIR, path)
        return node

    def _parent(self, path: str) -> tuple[_Directory, str]:
        head, name = posixpath.split(posixpath.normpath(path))
        if not name:
            raise _os_error(errno.EINVAL, path)
        return self._directory(head or "/"), name


def _split(path: str) -> list[str]:
    return [name for name in posixpath.normpath(path).split("/") if name and name != "."]


#: How far back from the end of a torn write its garbage byte may land. Kept under the smallest
#: record (a 32-byte header), so the damage stays in the last record or two and nothing intact
#: follows it; see docs/commitlog.md on why damage followed by intact records is not a torn tail.
TORN_GARBAGE_WINDOW_BYTES = 16
