"""Reading a segment back at open: every record's framing and checksum, and what follows damage.

The scan stops at the first record that fails a check (the *damage*), then looks at the rest of
the file for any intact record. The CommitLog decides from that whether the damage is a torn tail
(nothing intact after it, last segment: cut it off) or corruption in the middle (refuse to start
unless asked to repair). See docs/commitlog.md, "Recovery".
"""

from __future__ import annotations

import bisect
import posixpath
from array import array

import attrs
import structlog

from dledger_mq.errors import CorruptRecord, DataDirError, FormatVersionError
from dledger_mq.raft.pure.messages import HardState
from dledger_mq.raft.storage.commitlog_format import (
    CONSUME_QUEUE_DIRECTORY_NAME,
    FORMAT_VERSION,
    IDENTITY_FILE_NAME,
    KEY_INDEX_DIRECTORY_NAME,
    LOST_TAIL_MARK,
    MAX_IDENTITY_PART_BYTES,
    META_FILE_NAME,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC_BYTES,
    RECOVERING_FILE_NAME,
    RESETTING_FILE_NAME,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    SNAPSHOTS_DIRECTORY_NAME,
    STATE_FILE_NAME,
    TEMPORARY_SUFFIX,
    LogIdentity,
    LogState,
    SegmentHeader,
    decode_identity,
    decode_meta_version,
    decode_segment_header,
    decode_state,
    encode_identity,
    encode_meta,
    encode_segment_header,
    encode_state,
    parse_record_header,
    parse_segment_file_name,
    record_checksum_matches,
    segment_file_name,
)
from dledger_mq.raft.storage.disk import (
    Disk,
    DiskFile,
    make_directories,
    read_small_file,
    write_file_atomically,
)
from dledger_mq.raft.storage.location_index import (
    INDEX_SUFFIX,
    SegmentIndex,
    read_index,
    read_offsets,
)
from dledger_mq.raft.storage.published_end import PUBLISHED_END_FILE_NAME, read_published_end

_logger = structlog.get_logger()

#: How much of a segment is read at a time while scanning: bounded memory, few calls.
SCAN_CHUNK_BYTES = 4 << 20


@attrs.frozen(slots=True)
class Damage:
    offset: int
    reason: str
    #: An intact record starts somewhere after ``offset``: so this is not a torn tail.
    intact_record_follows: bool


@attrs.define(slots=True)
class SegmentScan:
    header: SegmentHeader | None
    #: Term and file offset of each intact record, from ``header.base_index`` on.
    terms: array[int]
    offsets: array[int]
    #: Where the intact records end: the file is cut back here if the damage is a torn tail.
    valid_end_offset: int
    file_size: int
    damage: Damage | None


class _Window:
    """A sliding read buffer over a file, so records are parsed without a read call each."""

    __slots__ = ("_file", "_start", "_data", "_view")

    def __init__(self, file: DiskFile) -> None:
        self._file = file
        self._start = 0
        self._data = b""
        self._view = memoryview(self._data)

    def get(self, offset: int, length: int) -> tuple[memoryview, int]:
        """A buffer that holds ``[offset, offset + length)``, and where ``offset`` lies in it."""
        if offset < self._start or offset + length > self._start + len(self._data):
            self._data = self._file.read(offset, max(length, SCAN_CHUNK_BYTES))
            self._view = memoryview(self._data)
            self._start = offset
        return self._view, offset - self._start


@attrs.frozen
class ScanStart:
    """Where a scan of a segment starts when a checkpoint vouches for what is before."""

    offset: int
    index: int
    previous_term: int
    terms: array[int]
    offsets: array[int]


def scan_segment(
    file: DiskFile, base_index_from_name: int, start: ScanStart | None = None
) -> SegmentScan:
    file_size = file.size()
    terms: array[int] = array("Q") if start is None else start.terms
    offsets: array[int] = array("Q") if start is None else start.offsets
    header_or_reason = decode_segment_header(file.read(0, SEGMENT_HEADER_SIZE))
    if isinstance(header_or_reason, SegmentHeader) and (
        header_or_reason.base_index != base_index_from_name
    ):
        header_or_reason = f"header says base index {header_or_reason.base_index}"
    if isinstance(header_or_reason, str):
        follows = _intact_record_after(file, 0, file_size, base_index_from_name)
        return SegmentScan(None, terms, offsets, 0, file_size, Damage(0, header_or_reason, follows))
    header = header_or_reason

    window = _Window(file)
    offset = SEGMENT_HEADER_SIZE
    expected_index = header.base_index
    previous_term = header.previous_term
    if start is not None:
        offset, expected_index, previous_term = start.offset, start.index, start.previous_term
    reason: str | None = None
    while offset < file_size:
        if file_size - offset < RECORD_HEADER_SIZE:
            reason = "record header cut short"
            break
        buffer, position = window.get(offset, RECORD_HEADER_SIZE)
        record = parse_record_header(buffer, position)
        if isinstance(record, str):
            reason = record
            break
        record_size = RECORD_HEADER_SIZE + record.body_length
        if offset + record_size > file_size:
            reason = "record runs past the end of the file"
            break
        buffer, position = window.get(offset, record_size)
        if not record_checksum_matches(buffer, position, record):
            reason = "record checksum mismatch"
            break
        if record.index != expected_index:
            reason = f"record has index {record.index} where {expected_index} was expected"
            break
        if record.term < previous_term:
            reason = f"record term {record.term} is below the term before it ({previous_term})"
            break
        terms.append(record.term)
        offsets.append(offset)
        offset += record_size
        expected_index += 1
        previous_term = record.term
    damage = None
    if reason is not None:
        follows = _intact_record_after(file, offset, file_size, expected_index)
        damage = Damage(offset, reason, follows)
    return SegmentScan(header, terms, offsets, offset, file_size, damage)


def _intact_record_after(file: DiskFile, damage_offset: int, file_size: int, index: int) -> bool:
    """Is there an intact record for ``index`` or later anywhere after ``damage_offset``?

    Every occurrence of the record magic is tried, so a damaged length field cannot hide the
    records behind it.
    """
    magic_size = len(RECORD_MAGIC_BYTES)
    search_from = damage_offset + 1
    while search_from + RECORD_HEADER_SIZE <= file_size:
        chunk = file.read(search_from, SCAN_CHUNK_BYTES)
        found = chunk.find(RECORD_MAGIC_BYTES)
        while found >= 0:
            candidate = search_from + found
            if _is_intact_record(file, candidate, file_size, index):
                return True
            found = chunk.find(RECORD_MAGIC_BYTES, found + 1)
        # Overlap by the magic's size so a magic split across two chunks is still seen.
        search_from += max(len(chunk) - magic_size + 1, 1)
    return False


def _is_intact_record(file: DiskFile, offset: int, file_size: int, index: int) -> bool:
    if offset + RECORD_HEADER_SIZE > file_size:
        return False
    header_bytes = file.read(offset, RECORD_HEADER_SIZE)
    record = parse_record_header(header_bytes, 0)
    if isinstance(record, str) or record.index < index:
        return False
    record_size = RECORD_HEADER_SIZE + record.body_length
    if offset + record_size > file_size:
        return False
    return record_checksum_matches(memoryview(file.read(offset, record_size)), 0, record)


# -- the data directory -------------------------------------------------------------------------

#: What an initialisation interrupted by a crash can leave behind (the meta file comes last).
_INITIALISATION_LEFTOVERS = frozenset(
    {
        IDENTITY_FILE_NAME,
        IDENTITY_FILE_NAME + TEMPORARY_SUFFIX,
        RECOVERING_FILE_NAME,
        RECOVERING_FILE_NAME + TEMPORARY_SUFFIX,
        STATE_FILE_NAME,
        STATE_FILE_NAME + TEMPORARY_SUFFIX,
        META_FILE_NAME + TEMPORARY_SUFFIX,
        # Written by every open: where the log ends, no record in it.
        PUBLISHED_END_FILE_NAME,
        PUBLISHED_END_FILE_NAME + TEMPORARY_SUFFIX,
        segment_file_name(1),
    }
)


def prepare_directory(
    disk: Disk,
    directory: str,
    *,
    create: bool,
    identity: LogIdentity | None = None,
    recovering: bool = False,
) -> None:
    """Check that ``directory`` is a dledger-mq log of our format version and, when
    ``identity`` is given, that it is that node's log; with ``create``, make a new one where
    there is none.

    A log is never made because files are missing: without ``create`` a missing or incomplete
    directory is a ``DataDirError``; with it, only a missing directory or the leftovers of an
    interrupted initialisation that holds no record are (re)initialised. A replica that came
    back empty and voted could elect a leader without entries it had acknowledged; with
    ``recovering`` a log made here is marked as a recovering replica's (``RaftCore``).
    """
    if not disk.exists(directory):
        if not create:
            raise DataDirError(directory, "does not exist")
        make_directories(disk, directory)
        _initialise(disk, directory, identity, recovering)
        return
    if not disk.is_directory(directory):
        raise DataDirError(directory, "is not a directory")
    names = disk.list_directory(directory)
    if META_FILE_NAME not in names:
        strangers = sorted(set(names) - _INITIALISATION_LEFTOVERS)
        if strangers:
            shown = ", ".join(strangers[:5])
            raise DataDirError(directory, f"not a dledger-mq log (no meta file; holds {shown})")
        if not create:
            raise DataDirError(directory, "is not an initialised dledger-mq log (no meta file)")
        first_segment = posixpath.join(directory, segment_file_name(1))
        if disk.exists(first_segment) and _file_size(disk, first_segment) > SEGMENT_HEADER_SIZE:
            raise DataDirError(
                directory,
                "holds records but no meta file: not initialised again over them "
                "(restore the meta file, or move the directory away)",
            )
        _initialise(disk, directory, identity, recovering)
        return
    meta_path = posixpath.join(directory, META_FILE_NAME)
    file = disk.open(meta_path)
    try:
        version = decode_meta_version(file.read(0, 64))
    finally:
        file.close()
    if isinstance(version, str):
        raise DataDirError(directory, f"not a dledger-mq log ({META_FILE_NAME}: {version})")
    if version != FORMAT_VERSION:
        raise FormatVersionError(directory, version, FORMAT_VERSION)
    if identity is not None:
        _check_identity(disk, directory, identity, IDENTITY_FILE_NAME in names)


def read_identity(disk: Disk, directory: str) -> LogIdentity | None:
    """The identity recorded in ``directory``, None for a log made before identities were."""
    path = posixpath.join(directory, IDENTITY_FILE_NAME)
    data = read_small_file(disk, path, 4 * MAX_IDENTITY_PART_BYTES)
    if data is None:
        return None
    found = decode_identity(data)
    if isinstance(found, str):
        raise CorruptRecord(path, 0, found)
    return found


def read_recovering_mark(disk: Disk, directory: str) -> bytes | None:
    """The recovering mark's content (``LOST_TAIL_MARK`` or empty), None without one."""
    return read_small_file(disk, posixpath.join(directory, RECOVERING_FILE_NAME), 64)


def _check_identity(disk: Disk, directory: str, identity: LogIdentity, recorded: bool) -> None:
    if not recorded:
        # A log made before identities were recorded: it becomes this node's from now on.
        write_file_atomically(
            disk, posixpath.join(directory, IDENTITY_FILE_NAME), encode_identity(identity)
        )
        _logger.info("commitlog.identity_recorded", directory=directory, **attrs.asdict(identity))
        return
    found = read_identity(disk, directory)
    if found != identity:
        assert found is not None
        raise DataDirError(
            directory, f"is the log of {found.describe()}, not of {identity.describe()}"
        )


def _file_size(disk: Disk, path: str) -> int:
    file = disk.open(path)
    try:
        return file.size()
    finally:
        file.close()


def _initialise(disk: Disk, directory: str, identity: LogIdentity | None, recovering: bool) -> None:
    """First segment, then identity, recovering mark and state, then meta: the meta file marks
    a complete initialisation."""
    file = disk.open(posixpath.join(directory, segment_file_name(1)), create=True, truncate=True)
    try:
        file.append(encode_segment_header(SegmentHeader(base_index=1, previous_term=0)))
        file.fsync()
    finally:
        file.close()
    if identity is not None:
        write_file_atomically(
            disk, posixpath.join(directory, IDENTITY_FILE_NAME), encode_identity(identity)
        )
    if recovering:
        write_file_atomically(disk, posixpath.join(directory, RECOVERING_FILE_NAME), b"")
    state = LogState(HardState(), first_index=1, term_before_first=0)
    write_file_atomically(disk, posixpath.join(directory, STATE_FILE_NAME), encode_state(state))
    write_file_atomically(disk, posixpath.join(directory, META_FILE_NAME), encode_meta())
    _logger.info("commitlog.initialised", directory=directory, format_version=FORMAT_VERSION)


def read_state(disk: Disk, directory: str) -> LogState:
    path = posixpath.join(directory, STATE_FILE_NAME)
    if not disk.exists(path):
        raise CorruptRecord(path, 0, "state file missing")
    file = disk.open(path)
    try:
        state = decode_state(file.read(0, file.size()))
    finally:
        file.close()
    if isinstance(state, str):
        raise CorruptRecord(path, 0, state)
    return state


# -- segments -----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Cut:
    """Bytes recovery removed: a torn tail, or (with ``repair``) a corrupt record and all after."""

    path: str
    offset: int
    bytes_dropped: int
    reason: str
    repaired: bool


@attrs.define(slots=True)
class RecoveredSegment:
    path: str
    file: DiskFile
    base_index: int
    previous_term: int
    end_offset: int
    terms: array[int]
    offsets: array[int]
    #: A sealed segment's index file, trusted instead of a scan (``terms``/``offsets`` empty).
    index: SegmentIndex | None = None
    index_path: str = ""

    @property
    def count(self) -> int:
        return self.index.count if self.index is not None else len(self.terms)

    @property
    def last_index(self) -> int:
        return self.base_index + self.count - 1

    @property
    def last_term(self) -> int:
        if self.index is not None:
            return self.index.last_term
        return self.terms[-1] if self.terms else self.previous_term

    def term_at(self, index: int) -> int:
        if self.index is None:
            return self.terms[index - self.base_index]
        runs = self.index.runs
        return runs[bisect.bisect_right([start for start, _ in runs], index) - 1][1]


@attrs.define(slots=True)
class RecoveredLog:
    state: LogState
    #: The state file must be rewritten: recovery moved the trim point or clamped the commit.
    state_changed: bool
    segments: list[RecoveredSegment]
    cuts: list[Cut]
    #: With ``repair``, the first index before recovery moved it (the log lost entries there).
    trim_point_moved_from: int | None


def recover_segments(disk: Disk, directory: str, state: LogState, *, repair: bool) -> RecoveredLog:
    """Scan every segment, cut a torn tail, refuse (or with ``repair`` cut) corruption before it."""
    recovery = _Recovery(disk, directory, state, repair)
    return recovery.run()


class _Recovery:
    def __init__(self, disk: Disk, directory: str, state: LogState, repair: bool) -> None:
        self.disk = disk
        self.directory = directory
        self.state = state
        self.state_changed = False
        self.repair = repair
        self.segments: list[RecoveredSegment] = []
        self.cuts: list[Cut] = []
        self.trim_point_moved_from: int | None = None

    def path(self, base_index: int) -> str:
        return posixpath.join(self.directory, segment_file_name(base_index))

    def run(self) -> RecoveredLog:
        """Scan and decide everything first, then change the files: a refusal changes nothing."""
        try:
            self.plan()
        except BaseException:
            for segment in self.segments:
                segment.file.close()
            raise
        self.mark_lost_tail()
        self.apply_cuts()
        if not self.segments:
            self.segments.append(self.create_empty_segment())
        self.remove_stale_indexes()
        # What we read may have come from the page cache of a process that crashed before its
        # fsync; make it durable before counting it as such.
        self.segments[-1].file.fsync()
        return RecoveredLog(
            self.state, self.state_changed, self.segments, self.cuts, self.trim_point_moved_from
        )

    def plan(self) -> None:
        names = self.disk.list_directory(self.directory)
        bases: list[int] = []
        for name in names:
            base_index = parse_segment_file_name(name)
            if base_index is not None:
                bases.append(base_index)
            elif name.endswith(INDEX_SUFFIX):
                pass  # a sealed segment's index: ``remove_stale_indexes`` decides
            elif name.endswith(TEMPORARY_SUFFIX):
                # An atomic write interrupted before its rename: the old file is still in place.
                self.disk.remove(posixpath.join(self.directory, name))
            elif name not in (
                META_FILE_NAME,
                STATE_FILE_NAME,
                IDENTITY_FILE_NAME,
                RECOVERING_FILE_NAME,
                RESETTING_FILE_NAME,
                SNAPSHOTS_DIRECTORY_NAME,
                CONSUME_QUEUE_DIRECTORY_NAME,
                KEY_INDEX_DIRECTORY_NAME,
                PUBLISHED_END_FILE_NAME,
            ):
                _logger.warning(
                    "commitlog.unknown_file_ignored", directory=self.directory, name=name
                )
        bases.sort()
        bases = self.drop_segments_before_trim_point(bases)
        resetting = self.disk.exists(posixpath.join(self.directory, RESETTING_FILE_NAME))
        if not bases and not self.repair and not resetting:
            # (A reset to a snapshot may have removed every segment before making its new one:
            # ``run`` makes it, at the trim point.)
            raise CorruptRecord(self.directory, 0, "no segment files")
        for position, base_index in enumerate(bases):
            if not self.recover_one(base_index, is_last=position == len(bases) - 1):
                self.plan_removals(bases[position + 1 :])
                break
        if self.segments and self.segments[-1].index is not None:
            # The segment after it was cut away: this one is written again, so it is read
            # whole like any last segment (and its index goes).
            self.rescan_last()
        if self.segments:
            # With no segment left, an empty one is made at the trim point: consistent as is.
            self.check_trim_point()
        self.check_commit()

    def mark_lost_tail(self) -> None:
        """Before anything is cut: if the cut may take entries this replica acknowledged, mark
        it recovering (it lost its tail: ``RaftCore``) durably, so that it does not vote on a
        log that forgot them, even if it crashes again once the bytes are gone.

        A repaired corruption always loses entries. A torn tail loses none if it starts at or
        after where the log was published, as a record exact for this boot says
        (``published_end.py``); without one (a power loss, a reboot, an old log) it cannot be
        judged, and the replica asks the cluster instead.
        """
        cuts = [cut for cut in self.cuts if cut.bytes_dropped > 0]
        mark = posixpath.join(self.directory, RECOVERING_FILE_NAME)
        if not cuts or self.disk.exists(mark):
            return
        published = read_published_end(self.disk, self.directory)
        reason = ""
        if any(cut.repaired for cut in cuts):
            reason = "a corrupt record and everything after it were cut"
        elif published is None or not published.is_exact_on(self.disk):
            reason = "a torn tail was cut and the log cannot tell if it was acknowledged"
        elif any(
            (parse_segment_file_name(posixpath.basename(cut.path)) or 0, cut.offset)
            < (published.base_index, published.end_offset)
            for cut in cuts
        ):
            reason = "damage was cut before where the log had been published: rot"
        if not reason:
            return
        write_file_atomically(self.disk, mark, LOST_TAIL_MARK)
        _logger.warning(
            "commitlog.lost_tail",
            directory=self.directory,
            reason=reason,
            published=None if published is None else attrs.asdict(published),
        )

    def apply_cuts(self) -> None:
        """Whole segments go newest first, each removal durable before the next; then the cut
        segment is truncated. A crash part way leaves a shorter but contiguous log."""
        for cut in sorted(self.cuts, key=lambda cut: cut.path, reverse=True):
            if cut.offset == 0:
                self.disk.remove(cut.path)
                self.disk.fsync_directory(self.directory)
        for segment in self.segments:
            if any(cut.path == segment.path and cut.offset > 0 for cut in self.cuts):
                segment.file.truncate(segment.end_offset)
                segment.file.fsync()
        for cut in self.cuts:
            _logger.warning(
                "commitlog.corruption_repaired" if cut.repaired else "commitlog.torn_tail_cut",
                file=cut.path,
                offset=cut.offset,
                bytes=cut.bytes_dropped,
                reason=cut.reason,
            )

    def drop_segments_before_trim_point(self, bases: list[int]) -> list[int]:
        """Remove segments wholly before the trim point: a trim whose removals were not durable."""
        first_index = self.state.first_index
        removed = 0
        while len(bases) > 1 and bases[1] <= first_index:
            self.disk.remove(self.path(bases[0]))
            _logger.info(
                "commitlog.segment_before_trim_point_removed",
                file=self.path(bases[0]),
                first_index=first_index,
            )
            bases = bases[1:]
            removed += 1
        if removed:
            self.disk.fsync_directory(self.directory)
        return bases

    def recover_one(self, base_index: int, *, is_last: bool) -> bool:
        """Scan one segment and keep what is intact; False once nothing after it can be kept.
        A sealed segment (not the last) with a whole index file that agrees is not scanned: it
        was fsynced before the log moved on, so no crash can have touched it (rot in it is
        found when it is read: every record is checked then)."""
        path = self.path(base_index)
        file = self.disk.open(path)
        if not is_last and self.recover_indexed(path, file, base_index):
            return True
        scan = scan_segment(file, base_index, self.checkpoint_of(path, file, base_index))
        damage = scan.damage
        header = scan.header
        if header is not None:
            discontinuity = self.check_continuity(header)
            if discontinuity is not None:
                # Missing or mismatched data between segments is never a torn write.
                damage = Damage(0, discontinuity, intact_record_follows=True)
        if damage is None or damage.offset > 0:
            assert header is not None
            end_offset = damage.offset if damage is not None else scan.file_size
            self.segments.append(
                RecoveredSegment(
                    path,
                    file,
                    header.base_index,
                    header.previous_term,
                    end_offset,
                    scan.terms,
                    scan.offsets,
                )
            )
        if damage is None:
            return True
        torn = is_last and not damage.intact_record_follows
        if not torn and not self.repair:
            file.close()
            raise CorruptRecord(path, damage.offset, damage.reason)
        if damage.offset == 0:
            file.close()
        bytes_dropped = scan.file_size - damage.offset
        self.cuts.append(Cut(path, damage.offset, bytes_dropped, damage.reason, repaired=not torn))
        return torn

    def rescan_last(self) -> None:
        last = self.segments[-1]
        scan = scan_segment(last.file, last.base_index)
        if scan.damage is not None:
            # It was sealed (fsynced whole): damage in it is rot, never a torn write.
            last.file.close()
            self.segments.pop()
            raise CorruptRecord(last.path, scan.damage.offset, scan.damage.reason)
        self.segments[-1] = RecoveredSegment(
            last.path,
            last.file,
            last.base_index,
            last.previous_term,
            scan.file_size,
            scan.terms,
            scan.offsets,
        )

    def remove_stale_indexes(self) -> None:
        """Index files of segments that are gone or were cut."""
        # The last segment's is its checkpoint: kept unless the segment was cut.
        sealed = {segment.path for segment in self.segments}
        cut = {c.path for c in self.cuts}
        for name in self.disk.list_directory(self.directory):
            if not name.endswith(INDEX_SUFFIX):
                continue
            segment_path = posixpath.join(
                self.directory, name[: -len(INDEX_SUFFIX)] + SEGMENT_SUFFIX
            )
            if segment_path not in sealed or segment_path in cut:
                self.disk.remove(posixpath.join(self.directory, name))

    def checkpoint_of(self, path: str, file: DiskFile, base_index: int) -> ScanStart | None:
        """The last segment's checkpoint (``CommitLog.checkpoint``): what it vouches for is
        durable, so the scan starts after it."""
        index_path = path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX
        if not self.disk.exists(index_path):
            return None
        index_file = self.disk.open(index_path)
        try:
            index = read_index(index_file, base_index, file.size(), checkpoint=True)
            if index is None or index.count == 0:
                return None
            offsets = read_offsets(index_file, index.count)
        finally:
            index_file.close()
        terms = array("Q")
        bounds = [start for start, _ in index.runs[1:]] + [base_index + index.count]
        for (start, term), end in zip(index.runs, bounds, strict=True):
            terms.extend(array("Q", [term]) * (end - start))
        if len(terms) != index.count or len(offsets) != index.count:
            return None
        return ScanStart(
            index.end_offset, base_index + index.count, index.last_term, terms, offsets
        )

    def recover_indexed(self, path: str, file: DiskFile, base_index: int) -> bool:
        index_path = path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX
        if not self.disk.exists(index_path):
            return False
        index_file = self.disk.open(index_path)
        try:
            index = read_index(index_file, base_index, file.size())
        finally:
            index_file.close()
        if index is None or index.count == 0:
            return False
        header = decode_segment_header(file.read(0, SEGMENT_HEADER_SIZE))
        if isinstance(header, str) or header.base_index != base_index:
            return False
        if self.check_continuity(header) is not None:
            return False  # the scan reports it
        self.segments.append(
            RecoveredSegment(
                path,
                file,
                header.base_index,
                header.previous_term,
                index.end_offset,
                array("Q"),
                array("Q"),
                index,
                index_path,
            )
        )
        return True

    def check_continuity(self, header: SegmentHeader) -> str | None:
        if self.segments:
            previous = self.segments[-1]
            if header.base_index != previous.last_index + 1:
                return (
                    f"segment begins at index {header.base_index} "
                    f"but the one before ends at {previous.last_index}"
                )
            if header.previous_term != previous.last_term:
                return (
                    f"segment says term {header.previous_term} precedes it "
                    f"but the one before ends in term {previous.last_term}"
                )
            return None
        first_index = self.state.first_index
        if header.base_index > first_index:
            if not self.repair:
                return (
                    f"log begins at index {header.base_index}, after its trim point {first_index}"
                )
            self.move_trim_point(header.base_index, header.previous_term, "log begins later")
        elif header.base_index == first_index and (
            header.previous_term != self.state.term_before_first
        ):
            if not self.repair:
                return (
                    f"segment says term {header.previous_term} precedes it "
                    f"but the state file says {self.state.term_before_first}"
                )
            self.move_trim_point(first_index, header.previous_term, "term before first differs")
        return None

    def plan_removals(self, bases: list[int]) -> None:
        """Every segment after a repaired corruption goes too."""
        for base_index in bases:
            path = self.path(base_index)
            file = self.disk.open(path)
            size = file.size()
            file.close()
            self.cuts.append(Cut(path, 0, size, "after a repaired corruption", repaired=True))

    def create_empty_segment(self) -> RecoveredSegment:
        base_index = self.state.first_index
        previous_term = self.state.term_before_first
        path = self.path(base_index)
        file = self.disk.open(path, create=True, truncate=True)
        file.append(encode_segment_header(SegmentHeader(base_index, previous_term)))
        file.fsync()
        self.disk.fsync_directory(self.directory)
        return RecoveredSegment(
            path, file, base_index, previous_term, SEGMENT_HEADER_SIZE, array("Q"), array("Q")
        )

    def check_trim_point(self) -> None:
        """The entry before the trim point must still be on disk, with the term recorded."""
        first_index = self.state.first_index
        first = self.segments[0]
        last = self.segments[-1]
        if last.last_index < first_index - 1:
            if self.disk.exists(posixpath.join(self.directory, RESETTING_FILE_NAME)):
                # A reset to a snapshot stopped before its new segment (the state file has the
                # new start): finish it. Every old segment goes; ``run`` makes the new one.
                for segment in self.segments:
                    segment.file.close()
                    self.disk.remove(segment.path)
                self.disk.fsync_directory(self.directory)
                self.segments = []
                _logger.info("commitlog.reset_finished", directory=self.directory)
                return
            if not self.repair:
                raise CorruptRecord(
                    last.path,
                    last.end_offset,
                    f"log ends at index {last.last_index}, before its trim point {first_index}",
                )
            self.move_trim_point(last.last_index + 1, last.last_term, "log ends before it")
            return
        if first.base_index < first_index:
            term = first.term_at(first_index - 1)
            if term != self.state.term_before_first:
                if not self.repair:
                    raise CorruptRecord(
                        posixpath.join(self.directory, STATE_FILE_NAME),
                        0,
                        f"term before the trim point is {self.state.term_before_first} "
                        f"in the state file but {term} in {first.path}",
                    )
                self.move_trim_point(first_index, term, "term before first differs")

    def move_trim_point(self, first_index: int, term_before_first: int, reason: str) -> None:
        _logger.warning(
            "commitlog.trim_point_repaired",
            directory=self.directory,
            old_first_index=self.state.first_index,
            first_index=first_index,
            reason=reason,
        )
        if self.trim_point_moved_from is None:
            self.trim_point_moved_from = self.state.first_index
        self.state = attrs.evolve(
            self.state, first_index=first_index, term_before_first=term_before_first
        )
        self.state_changed = True

    def check_commit(self) -> None:
        last_index = self.segments[-1].last_index if self.segments else self.state.first_index - 1
        hard_state = self.state.hard_state
        if hard_state.commit > last_index:
            # Only damage can do this: the commit written is never above what was fsynced.
            _logger.warning(
                "commitlog.commit_clamped",
                directory=self.directory,
                commit=hard_state.commit,
                last_index=last_index,
            )
            self.state = attrs.evolve(
                self.state, hard_state=attrs.evolve(hard_state, commit=last_index)
            )
            self.state_changed = True
