"""The on-disk Raft log: segmented, checksummed, fsynced, and recovered on open.

A ``CommitLog`` is a :class:`~dledger_mq.raft.pure.log_store.LogStore` whose entries live in
append-only segment files named after their first index; a small state file holds the hard state
and the trim point. docs/commitlog.md describes the format, the flush policies and recovery.

Threads: one writer at a time (``save``, ``append``, ``set_hard_state``, ``trim_prefix``,
``sync``, ``close`` hold a write lock), any number of readers alongside it. The writer does its
file I/O outside the lock that readers take, and only publishes entries (moves ``last_index``)
once they are written (``async``) or fsynced (``sync``). So a reader never sees a partly written
entry, and ``LogWriter`` can write in a worker thread while the Trio thread reads.

Invariant: first_index() - 1 <= durable_index() <= last_index(), and every published entry
between first_index() and last_index() is on disk with a valid checksum as of its write.
"""

from __future__ import annotations

import enum
import errno
import posixpath
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn

import attrs
import structlog

from dledger_mq.errors import (
    CorruptRecord,
    DiskFull,
    FsyncFailed,
    StorageError,
    UsageError,
)
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable
from dledger_mq.raft.pure.messages import ENTRY_OVERHEAD_BYTES, Entry, HardState
from dledger_mq.raft.storage.commitlog_format import (
    LOST_TAIL_MARK,
    RECORD_HEADER_SIZE,
    RECOVERING_FILE_NAME,
    RESETTING_FILE_NAME,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    STATE_FILE_NAME,
    LogIdentity,
    LogState,
    SegmentHeader,
    decode_entries,
    encode_entries,
    encode_segment_header,
    encode_state,
    segment_file_name,
)
from dledger_mq.raft.storage.commitlog_recovery import (
    Cut,
    RecoveredLog,
    prepare_directory,
    read_recovering_mark,
    read_state,
    recover_segments,
)
from dledger_mq.raft.storage.disk import Disk, DiskFile, FsyncError, write_file_atomically
from dledger_mq.raft.storage.location_index import INDEX_SUFFIX, LocationIndex, encode_index
from dledger_mq.raft.storage.published_end import PublishedEndWriter
from dledger_mq.raft.storage.term_runs import TermRuns
from dledger_mq.raft.storage.write_stats import WriteStats

__all__ = ["CommitLog", "Cut", "FlushPolicy", "RecoveryReport"]

_logger = structlog.get_logger()

DEFAULT_SEGMENT_SIZE_BYTES = 1 << 30
DEFAULT_FLUSH_INTERVAL_MS = 100

# A location packs (segment slot, byte offset) into one array element: the index stays one
# flat array('Q') of 8 bytes per entry instead of a list of tuples.
_OFFSET_BITS = 40
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
#: Leaves room for one batch to overshoot a segment without overflowing the offset bits.
MAX_SEGMENT_SIZE_BYTES = 1 << (_OFFSET_BITS - 1)

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _index_path(segment_path: str) -> str:
    return segment_path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX


class FlushPolicy(enum.Enum):
    #: One write and one fsync per batch; an entry is published (and acknowledged) once fsynced.
    SYNC = "sync"
    #: Write now, fsync every ``flush_interval_ms``: a power loss or OS crash loses what was
    #: acknowledged since the last fsync. A process crash alone loses nothing (page cache).
    ASYNC = "async"


@attrs.frozen
class RecoveryReport:
    """What opening the log cut away: torn tails, and with ``repair=True`` corruption."""

    cuts: tuple[Cut, ...] = ()
    #: Set when ``repair`` had to move the first index (entries before it were lost).
    first_index_moved_from: int | None = None

    @property
    def bytes_dropped(self) -> int:
        return sum(cut.bytes_dropped for cut in self.cuts)

    @property
    def repaired(self) -> bool:
        """Did ``repair=True`` drop anything a torn tail does not explain?"""
        return self.first_index_moved_from is not None or any(cut.repaired for cut in self.cuts)


class _Segment:
    __slots__ = ("path", "file", "base_index", "previous_term", "end_offset")

    def __init__(
        self, path: str, file: DiskFile, base_index: int, previous_term: int, end_offset: int
    ) -> None:
        self.path = path
        self.file = file
        self.base_index = base_index
        self.previous_term = previous_term
        #: End of the published records; bytes beyond it are being written or were cut.
        self.end_offset = end_offset


class CommitLog:
    """The Raft log on disk. Open it with :meth:`open`; it implements ``LogStore``."""

    def __init__(
        self,
        disk: Disk,
        directory: str,
        recovered: RecoveredLog,
        *,
        segment_size_bytes: int,
        flush_policy: FlushPolicy,
        flush_interval_ms: int,
        clock: Callable[[], float],
    ) -> None:
        """Use :meth:`open`; this only assembles what recovery found."""
        self._disk = disk
        self._directory = directory
        self._segment_size_bytes = segment_size_bytes
        self._flush_policy = flush_policy
        self._flush_interval_seconds = flush_interval_ms / 1000
        self._clock = clock
        #: fsync latency and write batch sizes (the node's /metrics).
        self.write_stats = WriteStats()
        self.recovery = RecoveryReport(tuple(recovered.cuts), recovered.trim_point_moved_from)
        #: This replica lost its log and must not vote until a leader has caught it up
        #: (``RaftCore``'s "recovering"); set by ``open``, cleared by ``finish_recovery``.
        self.recovering = False
        #: ... and what it lost is only the end of its log (recovery cut entries it may have
        #: acknowledged); its term and vote are intact (``RaftCore``'s ``lost_tail``).
        self.lost_tail = False

        state = recovered.state
        self._persisted_state = state
        self._hard_state = state.hard_state
        self._first_index = state.first_index
        self._term_before_first = state.term_before_first
        # Entry first_index + i sits at _locations[i] (slot, offset); its term is in _terms;
        # segment slot s is _segments[s - _first_slot].
        self._terms = TermRuns()
        self._locations = LocationIndex(disk, self._first_index, _OFFSET_BITS)
        self._segments: list[_Segment] = []
        self._first_slot = 0
        for slot, found in enumerate(recovered.segments):
            self._segments.append(
                _Segment(
                    found.path, found.file, found.base_index, found.previous_term, found.end_offset
                )
            )
            if found.index is not None:
                for start, term in found.index.runs:
                    self._terms.extend(max(start, self._first_index), (term,))
                self._locations.add_segment(
                    slot, found.base_index, None, found.count, found.index_path
                )
            else:
                skip = max(0, self._first_index - found.base_index)
                self._terms.extend(found.base_index + skip, found.terms[skip:])
                self._locations.add_segment(slot, found.base_index, found.offsets, found.count, "")
        self._durable_index = self._first_index + len(self._locations) - 1
        self._unsynced = False
        self._last_sync_seconds = clock()
        self._failure: StorageError | None = None
        self._closed = False
        # _lock guards what readers see; _write_lock makes writers take turns. A writer holds
        # _lock only to publish, never across file I/O, so readers never wait on an fsync.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Where the published log ends, after each write: recovery tells torn from rotten by it.
        self._published_end = PublishedEndWriter(disk, directory)
        self._published_end.record(self._segments[-1].base_index, self._segments[-1].end_offset)

    @classmethod
    def open(
        cls,
        disk: Disk,
        directory: str,
        *,
        segment_size_bytes: int = DEFAULT_SEGMENT_SIZE_BYTES,
        flush_policy: FlushPolicy = FlushPolicy.SYNC,
        flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
        create: bool = True,
        repair: bool = False,
        identity: LogIdentity | None = None,
        recovering_if_created: bool = False,
    ) -> CommitLog:
        """Open (or with ``create``, make) the log in ``directory`` and recover it; with
        ``identity``, only if it is that node's log (recorded when the log is made).

        Raises ``DataDirError`` for a missing, incomplete or foreign directory or another
        node's log. With ``recovering_if_created``, a log made here is a recovering replica's
        (``recovering``; ``finish_recovery`` ends it). ``FormatVersionError`` for
        another format version, and ``CorruptLog`` for damage before the tail, unless ``repair``
        (which cuts the log at the damage; see ``.recovery`` for what was dropped).
        """
        if not 0 < segment_size_bytes <= MAX_SEGMENT_SIZE_BYTES:
            raise ValueError(f"segment_size_bytes {segment_size_bytes} out of range")
        directory = posixpath.normpath(directory)
        try:
            prepare_directory(
                disk, directory, create=create, identity=identity, recovering=recovering_if_created
            )
            state = read_state(disk, directory)
            recovered = recover_segments(disk, directory, state, repair=repair)
            if recovered.state_changed:
                path = posixpath.join(directory, STATE_FILE_NAME)
                write_file_atomically(disk, path, encode_state(recovered.state))
            mark = read_recovering_mark(disk, directory)
        except OSError as error:
            if error.errno in _DISK_FULL_ERRNOS:
                raise DiskFull(error.filename or directory) from error
            raise StorageError(f"{directory}: cannot open the log: {error}") from error
        log = cls(
            disk,
            directory,
            recovered,
            segment_size_bytes=segment_size_bytes,
            flush_policy=flush_policy,
            flush_interval_ms=flush_interval_ms,
            clock=clock,
        )
        log.recovering = mark is not None
        log.lost_tail = mark == LOST_TAIL_MARK
        resetting = posixpath.join(directory, RESETTING_FILE_NAME)
        if disk.exists(resetting):
            # A reset to a snapshot that recovery has finished (or that never started).
            try:
                disk.remove(resetting)
                disk.fsync_directory(directory)
            except OSError as error:
                raise StorageError(f"{resetting}: cannot end the reset: {error}") from error
        _logger.info(
            "commitlog.opened",
            directory=directory,
            first_index=log.first_index(),
            last_index=log.last_index(),
            segments=len(log._segments),
            bytes_dropped=log.recovery.bytes_dropped,
            recovering=log.recovering,
            lost_tail=log.lost_tail,
        )
        return log

    def finish_recovery(self) -> None:
        """Make the end of this replica's recovery durable: it votes again after a restart.
        Call only once the entries and hard state that ended it are persisted."""
        if not self.recovering:
            return
        path = posixpath.join(self._directory, RECOVERING_FILE_NAME)
        try:
            self._disk.remove(path)
            self._disk.fsync_directory(self._directory)
        except OSError as error:
            raise StorageError(f"{path}: cannot end the recovery: {error}") from error
        self.recovering = False
        self.lost_tail = False
        _logger.info("commitlog.recovery_finished", directory=self._directory)

    @property
    def flush_policy(self) -> FlushPolicy:
        return self._flush_policy

    @property
    def flush_interval_seconds(self) -> float:
        return self._flush_interval_seconds

    @property
    def directory(self) -> str:
        return self._directory

    # -- LogStore: reading -----------------------------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._first_index

    def last_index(self) -> int:
        with self._lock:
            return self._first_index + len(self._locations) - 1

    def durable_index(self) -> int:
        """The last index known to be fsynced; equals ``last_index()`` under ``sync``."""
        return self._durable_index

    def term(self, index: int) -> int:
        with self._lock:
            return self._term(index)

    def _term(self, index: int) -> int:
        position = index - self._first_index
        if position < -1:
            raise LogCompacted(index)
        if position >= len(self._locations):
            raise LogUnavailable(index)
        if position == -1:
            return self._term_before_first
        return self._terms.term(index)

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        with self._lock:
            if low < self._first_index:
                raise LogCompacted(low)
            if high > self._first_index + len(self._locations):
                raise LogUnavailable(high)
            if low >= high:
                return []
            return self._read(low - self._first_index, high - self._first_index, max_bytes)

    def _read(self, start: int, stop: int, max_bytes: int) -> list[Entry]:
        """Entries at array positions [start, stop), cut by size first so we read no more."""
        locations = self._locations
        total_bytes = 0
        end = start
        while end < stop:
            total_bytes += self._record_end(end) - (locations[end] & _OFFSET_MASK)
            total_bytes += ENTRY_OVERHEAD_BYTES - RECORD_HEADER_SIZE
            if end > start and total_bytes > max_bytes:
                break
            end += 1
        result: list[Entry] = []
        position = start
        while position < end:
            slot = locations[position] >> _OFFSET_BITS
            run_end = position + 1
            while run_end < end and locations[run_end] >> _OFFSET_BITS == slot:
                run_end += 1
            self._read_run(position, run_end, result)
            position = run_end
        return result

    def _record_end(self, position: int) -> int:
        location = self._locations[position]
        if position + 1 < len(self._locations):
            following = self._locations[position + 1]
            if following >> _OFFSET_BITS == location >> _OFFSET_BITS:
                return following & _OFFSET_MASK
        return self._segments[(location >> _OFFSET_BITS) - self._first_slot].end_offset

    def _read_run(self, start: int, stop: int, into: list[Entry]) -> None:
        """Read and check entries at [start, stop), all in one segment, with one read call."""
        slot = self._locations[start] >> _OFFSET_BITS
        segment = self._segments[slot - self._first_slot]
        begin = self._locations[start] & _OFFSET_MASK
        length = self._record_end(stop - 1) - begin
        try:
            data = segment.file.read(begin, length)
        except OSError as error:
            raise StorageError(f"{segment.path}: read failed: {error}") from error
        offsets = [
            (location & _OFFSET_MASK) - begin for location in self._locations.slice(start, stop)
        ]
        decoded = decode_entries(
            data,
            offsets,
            self._first_index + start,
            self._terms.terms(self._first_index + start, self._first_index + stop),
        )
        if isinstance(decoded, tuple):
            offset, reason = decoded
            raise CorruptRecord(segment.path, begin + offset, reason)
        into += decoded

    # -- LogStore: writing -----------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Write ``entries``, first dropping any entry at or after ``entries[0].index``."""
        self.save(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self.save([], hard_state)

    def save(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        """Append ``entries`` then record ``hard_state``, as one group-committed batch.

        Returns once both are durable under the flush policy. A change of term or vote is always
        fsynced before this returns; a change of commit alone is kept in memory and written with
        the next term/vote change, trim or close (Raft does not need it durable; docs explain).
        """
        with self._write_lock:
            self._check_writable()
            if entries:
                self._append(entries)
            if hard_state is not None and hard_state != self._hard_state:
                persisted = self._persisted_state.hard_state
                if (hard_state.term, hard_state.vote) != (persisted.term, persisted.vote):
                    self._write_state(hard_state, self._first_index, self._term_before_first)
                self._hard_state = hard_state

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._directory}: the log is closed")
        if self._failure is not None:
            raise self._failure.with_traceback(None)

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        last_index = self._first_index + len(self._locations) - 1
        assert self._first_index <= first <= last_index + 1, (first, self._first_index, last_index)
        # Where the batch will start: at the first entry it replaces, or at the end of the log.
        if first <= last_index:
            base_location = self._locations[first - self._first_index]
        else:
            slot = self._first_slot + len(self._segments) - 1
            base_location = (slot << _OFFSET_BITS) | self._segments[-1].end_offset
        # Encoding first means a malformed batch is refused before anything changes on disk.
        batch, locations = encode_entries(entries, first, self._term(first - 1), base_location)
        if first <= last_index:
            self._truncate_suffix(first)
        segment = self._segments[-1]
        start = segment.end_offset
        if start > SEGMENT_HEADER_SIZE and start + len(batch) > self._segment_size_bytes:
            segment = self._roll(first)
            start = segment.end_offset
            slot = self._first_slot + len(self._segments) - 1
            shift = ((slot << _OFFSET_BITS) | start) - base_location
            locations = [location + shift for location in locations]
        try:
            segment.file.append(batch)
        except OSError as error:
            self._undo_failed_write(segment, start, error)
        if self.write_stats.enabled:
            self.write_stats.batch_entries.observe(len(entries))
            self.write_stats.batch_bytes.observe(len(batch))
        if self._flush_policy is FlushPolicy.SYNC:
            self._fsync(segment)
        term = entries[0].term
        with self._lock:
            if entries[-1].term == term:
                # Terms never decrease (checked while encoding): same at both ends, throughout.
                self._terms.extend(first, (term,))
            else:
                self._terms.extend(first, [entry.term for entry in entries])
            self._locations.extend(locations)
            segment.end_offset = start + len(batch)
        if self._flush_policy is FlushPolicy.SYNC:
            # Under async, at each fsync instead (``_sync``): a record per write cost a third
            # of the throughput of one-entry batches (docs/benchmarks.md).
            self._published_end.record(segment.base_index, segment.end_offset)
            self._durable_index = entries[-1].index
        else:
            self._unsynced = True
            self._sync_if_due()

    def _undo_failed_write(self, segment: _Segment, start: int, error: OSError) -> NoReturn:
        """A write failed part way: cut the partial bytes so the next write starts clean."""
        try:
            segment.file.truncate(start)
        except OSError as truncate_error:
            self._fail(
                StorageError(f"{segment.path}: cannot undo a failed write: {truncate_error}")
            )
        if error.errno in _DISK_FULL_ERRNOS:
            _logger.warning("commitlog.disk_full", file=segment.path, offset=start)
            raise DiskFull(segment.path) from error
        self._fail(StorageError(f"{segment.path}: write failed: {error}"))

    def _fsync(self, segment: _Segment) -> None:
        timed = self.write_stats.enabled
        started = self._clock() if timed else 0.0
        try:
            segment.file.fsync()
        except OSError as error:
            self._fail(FsyncFailed(segment.path, error.errno))
        if timed:
            self.write_stats.fsync_seconds.observe(self._clock() - started)

    def _fail(self, failure: StorageError) -> NoReturn:
        """Stop accepting writes: what is on disk no longer matches what we believe."""
        self._failure = failure
        _logger.error("commitlog.failed", directory=self._directory, error=str(failure))
        raise failure

    def _truncate_suffix(self, first: int) -> None:
        """Drop entries from ``first`` on (a Raft conflict), durably, before appending.

        Later segments go newest first, each removal made durable before the next, so a crash
        part way leaves a shorter but contiguous log. The fsync of the cut is what keeps a torn
        new write from landing over the old suffix (docs, "Truncation").
        """
        with self._lock:
            position = first - self._first_index
            location = self._locations[position]
            self._terms.truncate(first)
            self._locations.truncate(position)
            keep = (location >> _OFFSET_BITS) - self._first_slot
            doomed = self._segments[keep + 1 :]
            del self._segments[keep + 1 :]
            segment = self._segments[-1]
            cut_offset = location & _OFFSET_MASK
            segment.end_offset = cut_offset
        self._durable_index = min(self._durable_index, first - 1)
        try:
            for doomed_segment in reversed(doomed):
                doomed_segment.file.close()
                self._remove_index_of(doomed_segment.path)
                self._disk.remove(doomed_segment.path)
                self._disk.fsync_directory(self._directory)
            # The cut segment is written again: its index (if sealed) no longer says what it
            # holds, and goes first.
            if self._remove_index_of(segment.path):
                self._disk.fsync_directory(self._directory)
            segment.file.truncate(cut_offset)
            segment.file.fsync()
        except OSError as error:
            self._fail(StorageError(f"{segment.path}: truncating the log failed: {error}"))
        self._unsynced = False

    def _roll(self, first: int) -> _Segment:
        """Start a new segment at ``first``; the old one is fsynced first so only the last
        segment can ever have a torn tail."""
        current = self._segments[-1]
        if self._unsynced:
            self._fsync(current)
            self._durable_index = self._first_index + len(self._locations) - 1
            self._unsynced = False
        self._seal(current, self._first_slot + len(self._segments) - 1)
        segment = self._create_segment(first)
        with self._lock:
            self._segments.append(segment)
        _logger.debug("commitlog.segment_rolled", file=segment.path, base_index=first)
        # After trimming the whole log, the segment before this one holds only trimmed entries.
        self._remove_segments_before_first_index()
        return segment

    def checkpoint(self) -> None:
        """Record where the segment being written stands (what is durable of it), so that the
        next open reads only what came after (RocketMQ's store checkpoint). The node takes one
        with each snapshot and on a graceful stop."""
        with self._write_lock:
            self._check_writable()
            if self._unsynced:
                self._sync()
            self._seal(self._segments[-1], self._first_slot + len(self._segments) - 1, live=True)

    def _seal(self, segment: _Segment, slot: int, live: bool = False) -> None:
        """Write the index file of a segment no longer written (fsynced already), and let its
        offsets leave memory. Failing to is no harm: the offsets stay, the next open scans."""
        base, offsets = self._locations.offsets_of(slot)
        last = base + len(offsets) - 1
        if not offsets or last < self._first_index:
            return  # nothing, or only trimmed entries: the segment goes soon
        try:
            runs = self._terms.runs(max(base, self._first_index), last + 1)
            data = encode_index(base, offsets, segment.end_offset, self._term(last), runs)
            path = _index_path(segment.path)
            write_file_atomically(self._disk, path, data)
        except (OSError, LogCompacted) as error:
            _logger.warning("commitlog.index_not_written", file=segment.path, error=str(error))
            return
        if not live:
            with self._lock:
                self._locations.seal(slot, path)

    def _remove_index_of(self, segment_path: str) -> bool:
        path = _index_path(segment_path)
        if not self._disk.exists(path):
            return False
        self._disk.remove(path)
        return True

    def _create_segment(self, first: int) -> _Segment:
        """A new, empty, durable segment file whose first entry will be ``first``."""
        header = SegmentHeader(first, self._term(first - 1))
        path = posixpath.join(self._directory, segment_file_name(first))
        try:
            file = self._disk.open(path, create=True, truncate=True)
        except OSError as error:
            self._fail(StorageError(f"{path}: cannot create a segment: {error}"))
        try:
            file.append(encode_segment_header(header))
        except OSError as error:
            file.close()
            self._remove_quietly(path)
            if error.errno in _DISK_FULL_ERRNOS:
                raise DiskFull(path) from error
            self._fail(StorageError(f"{path}: cannot write a segment header: {error}"))
        try:
            file.fsync()
            self._disk.fsync_directory(self._directory)
        except OSError as error:
            self._fail(FsyncFailed(path, error.errno))
        return _Segment(path, file, first, header.previous_term, SEGMENT_HEADER_SIZE)

    def _remove_quietly(self, path: str) -> None:
        try:
            self._disk.remove(path)
        except OSError as error:
            _logger.warning("commitlog.remove_failed", file=path, error=str(error))

    def _write_state(self, hard_state: HardState, first_index: int, term_before_first: int) -> None:
        # The commit written never exceeds what is fsynced, so recovery never finds a commit
        # index beyond the recovered log.
        commit = min(hard_state.commit, self._durable_index)
        state = LogState(attrs.evolve(hard_state, commit=commit), first_index, term_before_first)
        path = posixpath.join(self._directory, STATE_FILE_NAME)
        try:
            write_file_atomically(self._disk, path, encode_state(state))
        except FsyncError as error:
            self._fail(FsyncFailed(path, error.errno))
        except OSError as error:
            if error.errno in _DISK_FULL_ERRNOS:
                self._remove_quietly(path + ".tmp")
                raise DiskFull(path) from error
            self._fail(StorageError(f"{path}: writing the state failed: {error}"))
        self._persisted_state = state

    # -- flushing ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Fsync what was written and not yet fsynced (``async`` policy; a no-op under sync)."""
        with self._write_lock:
            self._check_writable()
            if self._unsynced:
                self._sync()

    def sync_if_due(self) -> None:
        """Fsync if ``flush_interval_ms`` passed since the last one: the ``async`` timer."""
        with self._write_lock:
            self._check_writable()
            self._sync_if_due()

    def _sync_if_due(self) -> None:
        if self._unsynced and (
            self._clock() - self._last_sync_seconds >= self._flush_interval_seconds
        ):
            self._sync()

    def _sync(self) -> None:
        last_index = self._first_index + len(self._locations) - 1
        segment = self._segments[-1]
        self._fsync(segment)
        self._published_end.record(segment.base_index, segment.end_offset)
        self._durable_index = last_index
        self._unsynced = False
        self._last_sync_seconds = self._clock()

    # -- retention --------------------------------------------------------------------------

    def trim_prefix(self, index: int) -> None:
        """Forget entries before ``index``; whole segments before it are deleted.

        The caller never trims past what it still needs (the state machine's snapshot).
        """
        with self._write_lock:
            self._check_writable()
            first_index = self._first_index
            if index <= first_index:
                return
            assert index <= first_index + len(self._locations), (index, first_index)
            if self._unsynced and index - 1 > self._durable_index:
                # The trim point must never be durable ahead of the entry before it.
                self._sync()
            term_before_first = self._term(index - 1)
            self._write_state(self._hard_state, index, term_before_first)
            with self._lock:
                self._terms.drop_before(index)
                self._locations.drop_prefix(index - first_index)
                self._first_index = index
                self._term_before_first = term_before_first
            self._remove_segments_before_first_index()

    def reset_to_snapshot(self, index: int, term: int) -> None:
        """Start the log after a snapshot of the state at (index, term) that it does not hold
        (a leader's, InstallSnapshot): entries after it follow; every entry held goes.

        Crash-safe in durable steps, each leaving a log recovery accepts: the entries after
        the commit index go first (they may conflict with the snapshot; committed ones match
        every leader's log); a ``resetting`` mark is made; the state file records the new start;
        the old segments go and a new one starts after the snapshot; the mark goes. Recovery
        that finds the mark and a log ending before its trim point finishes the reset.
        """
        with self._write_lock:
            self._check_writable()
            last_index = self._first_index + len(self._locations) - 1
            if self._first_index - 1 <= index <= last_index and self._term(index) == term:
                raise UsageError(f"the log holds entry {index}@{term}: trim it instead")
            if index < self._first_index - 1:
                raise UsageError(f"snapshot {index} is before the log's start {self._first_index}")
            commit = min(self._hard_state.commit, self._durable_index)
            cut = max(self._first_index, commit + 1)
            if cut <= last_index:
                self._truncate_suffix(cut)
            if self._unsynced:
                self._sync()
            mark = posixpath.join(self._directory, RESETTING_FILE_NAME)
            try:
                write_file_atomically(self._disk, mark, b"")
            except OSError as error:
                self._fail(StorageError(f"{mark}: cannot mark the reset: {error}"))
            hard_state = attrs.evolve(self._hard_state, commit=max(self._hard_state.commit, index))
            self._durable_index = index
            self._write_state(hard_state, index + 1, term)
            with self._lock:
                old_segments = list(self._segments)
                self._terms.clear()
                self._locations.reset(index + 1)
                self._first_slot += len(self._segments)
                self._segments = []
                self._first_index = index + 1
                self._term_before_first = term
                self._hard_state = hard_state
            try:
                for segment in old_segments:
                    segment.file.close()
                    self._remove_index_of(segment.path)
                    self._disk.remove(segment.path)
                self._disk.fsync_directory(self._directory)
            except OSError as error:
                self._fail(StorageError(f"{self._directory}: dropping the old log failed: {error}"))
            segment = self._create_segment(index + 1)
            with self._lock:
                self._segments.append(segment)
            try:
                self._disk.remove(mark)
                self._disk.fsync_directory(self._directory)
            except OSError as error:
                self._fail(StorageError(f"{mark}: cannot end the reset: {error}"))
        _logger.info(
            "commitlog.reset_to_snapshot", directory=self._directory, index=index, term=term
        )

    def _remove_segments_before_first_index(self) -> None:
        """Delete segments wholly before the trim point (never the last one).

        Recovery deletes such segments too, so these removals may be lost to a crash without
        harm: one fsync of the directory at the end, none per file, and failures only logged.
        """
        with self._lock:
            removable: list[_Segment] = []
            while len(self._segments) > 1 and self._segments[1].base_index <= self._first_index:
                removable.append(self._segments.pop(0))
                self._first_slot += 1
        for segment in removable:
            segment.file.close()
            if self._disk.exists(_index_path(segment.path)):
                self._remove_quietly(_index_path(segment.path))
            self._remove_quietly(segment.path)
        if removable:
            try:
                self._disk.fsync_directory(self._directory)
            except OSError as error:
                _logger.warning("commitlog.fsync_directory_failed", error=str(error))

    def trim_by_size(self, max_total_bytes: int, floor_index: int) -> int:
        """Delete the oldest whole segments while the log holds more than ``max_total_bytes``.

        Never trims at or past ``floor_index`` (the first entry the caller still needs) and
        never the last segment. Returns the new ``first_index()``.
        """
        with self._lock:
            total_bytes = sum(segment.end_offset for segment in self._segments)
            trim_to = None
            for segment, following in zip(self._segments, self._segments[1:], strict=False):
                if total_bytes <= max_total_bytes or following.base_index > floor_index:
                    break
                total_bytes -= segment.end_offset
                trim_to = following.base_index
        if trim_to is not None:
            self.trim_prefix(trim_to)
        return self._first_index

    def trim_by_age(self, max_age_seconds: float, now_seconds: float, floor_index: int) -> int:
        """Delete the oldest whole segments last written more than ``max_age_seconds`` ago.

        ``now_seconds`` is on the disk's clock (wall time for ``OsDisk``). Never trims at or
        past ``floor_index`` nor the last segment. Returns the new ``first_index()``.
        """
        with self._lock:
            candidates = [
                (segment.path, following.base_index)
                for segment, following in zip(self._segments, self._segments[1:], strict=False)
            ]
        trim_to = None
        for path, following_base_index in candidates:
            if following_base_index > floor_index:
                break
            try:
                age_seconds = now_seconds - self._disk.modified_time_seconds(path)
            except OSError:
                break  # removed by a concurrent trim
            if age_seconds < max_age_seconds:
                break
            trim_to = following_base_index
        if trim_to is not None:
            self.trim_prefix(trim_to)
        return self._first_index

    def size_bytes(self) -> int:
        """Bytes held in segment files (published records and headers)."""
        with self._lock:
            return sum(segment.end_offset for segment in self._segments)

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Fsync pending writes, persist the latest commit, and close the files."""
        with self._write_lock:
            if self._closed:
                return
            try:
                if self._failure is None:
                    if self._unsynced:
                        self._sync()
                    last = self._segments[-1]
                    self._seal(last, self._first_slot + len(self._segments) - 1, live=True)
                    self._published_end.close(last.base_index, last.end_offset)
                    if self._hard_state != self._persisted_state.hard_state:
                        self._write_state(
                            self._hard_state, self._first_index, self._term_before_first
                        )
            finally:
                self._closed = True
                self._published_end.abandon()
                for segment in self._segments:
                    segment.file.close()

    def __enter__(self) -> CommitLog:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<CommitLog {self._directory} [{self._first_index}..{self.last_index()}] "
            f"{self._flush_policy.value}>"
        )
