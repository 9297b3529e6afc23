"""The file system the CommitLog writes through, and the real one.

The CommitLog does all its I/O through :class:`Disk`, so the same code runs on real files
(:class:`OsDisk`) and in the deterministic simulator (``MemoryDisk`` in ``simulated_disks.py``,
with the other disks that fail on purpose).

Paths are POSIX strings (``"/node1/00000000000000000001.log"``).
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable
from typing import Protocol


class DiskFile(Protocol):
    """An open file. Writes only ever go to the end: the log is append-only."""

    @property
    def path(self) -> str: ...

    def size(self) -> int: ...

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at the end, or raise ``OSError`` (some of it may have landed)."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the file)."""
        ...

    def truncate(self, size: int) -> None: ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...


class Disk(Protocol):
    def open(self, path: str, *, create: bool = False, truncate: bool = False) -> DiskFile:
        """Open for reading and appending; ``create`` makes a missing file (in the cache only)."""
        ...

    def exists(self, path: str) -> bool: ...

    def is_directory(self, path: str) -> bool: ...

    def list_directory(self, path: str) -> list[str]:
        """Names in the directory, sorted."""
        ...

    def make_directory(self, path: str) -> None:
        """Create one directory whose parent exists; durable once the parent is fsynced."""
        ...

    def rename(self, source: str, target: str) -> None:
        """Atomically replace ``target``; durable once the directory is fsynced."""
        ...

    def remove(self, path: str) -> None: ...

    def fsync_directory(self, path: str) -> None: ...

    def modified_time_seconds(self, path: str) -> float: ...

    def boot_id(self) -> str:
        """Changes whenever what was written but not fsynced may have been lost (a reboot, a
        power loss); "" if unknown. Within one boot, the page cache outlives any process."""
        ...


class FsyncError(OSError):
    """An fsync of a file or directory failed inside :func:`write_file_atomically`."""


def write_file_atomically(disk: Disk, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Write a temporary file, fsync it, rename it over ``path``, fsync the directory: without the
    first fsync the rename may reach the disk before the data; without the second, the rename
    itself may be lost.
    """
    temporary_path = path + ".tmp"
    file = disk.open(temporary_path, create=True, truncate=True)
    try:
        file.append(data)
        _fsync(file.fsync, temporary_path)
    finally:
        file.close()
    disk.rename(temporary_path, path)
    _fsync(lambda: disk.fsync_directory(posixpath.dirname(path) or "/"), path)


def read_small_file(disk: Disk, path: str, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` of ``path`` from its start (a bound: the file may be damaged); None
    if there is no such file."""
    if not disk.exists(path):
        return None
    file = disk.open(path)
    try:
        return file.read(0, min(file.size(), max_bytes))
    finally:
        file.close()


def make_directories(disk: Disk, directory: str) -> None:
    """Create ``directory`` and its missing parents so that they survive a crash: each new
    directory is durable only once its parent's entry for it is fsynced."""
    missing: list[str] = []
    path = posixpath.normpath(directory)
    while not disk.exists(path):
        missing.append(path)
        parent = posixpath.dirname(path) or "."
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        disk.make_directory(path)
        _fsync(functools.partial(disk.fsync_directory, posixpath.dirname(path) or "."), path)


def _fsync(call: Callable[[], None], path: str) -> None:
    try:
        call()
    except OSError as error:
        raise FsyncError(error.errno, error.strerror, path) from error


# -- real files ---------------------------------------------------------------------------------


class OsFile:
    __slots__ = ("_path", "_descriptor", "_size")

    def __init__(self, path: str, descriptor: int) -> None:
        self._path = path
        self._descriptor = descriptor
        self._size = os.fstat(descriptor).st_size

    @property
    def path(self) -> str:
        return self._path

    def size(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            # pwrite at our own end offset: O_APPEND would make pwrite ignore the offset on Linux.
            written = os.pwrite(self._descriptor, view, self._size)
            self._size += written
            view = view[written:]

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._descriptor, length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._descriptor, size)
        self._size = size

    def fsync(self) -> None:
        os.fsync(self._descriptor)

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


class OsDisk:
    """Real files through ``os``; every call may raise ``OSError``."""

    def open(self, path: str, *, create: bool = False, truncate: bool = False) -> OsFile:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        if truncate:
            flags |= os.O_TRUNC
        return OsFile(path, os.open(path, flags, 0o644))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_directory(self, path: str) -> bool:
        return os.path.isdir(path)

    def list_directory(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def make_directory(self, path: str) -> None:
        os.mkdir(path)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def remove(self, path: str) -> None:
        os.remove(path)

    def fsync_directory(self, path: str) -> None:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def modified_time_seconds(self, path: str) -> float:
        return os.stat(path).st_mtime

    def boot_id(self) -> str:
        return _BOOT_ID


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read(64).strip()
    except OSError:
        return ""  # not Linux: every unsynced byte is treated as possibly lost


_BOOT_ID = _read_boot_id()
