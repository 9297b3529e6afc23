"""Errors shared by every layer, and their registry.

Each error class says whether retrying can help (``retriable``) and whether the client should
ask for routes again (``refresh_routes``: the leader moved or is unknown), and carries what the
caller needs to recover as attributes named like its constructor's arguments (``fields``). On
the wire an error travels as its class name (its code), its text and those fields
(``wire/rpc.py``), and comes back as the same class with the same fields
(``DledgerError.from_fields``), as aiokafka's ``errors.py`` does with its codes. Every class is
registered in ``ERRORS`` when it is defined; two classes of one name are refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

#: code (the class name) -> class, for every error class defined.
ERRORS: dict[str, type[DledgerError]] = {}


def _constructor_fields(kind: type[DledgerError]) -> tuple[str, ...]:
    """The arguments of ``kind``'s constructor but ``message``: what travels with it."""
    init = kind.__init__
    if init in (Exception.__init__, object.__init__):
        return ()
    parameters = inspect.signature(init).parameters
    return tuple(name for name in parameters if name not in ("self", "message"))


class DledgerError(Exception):
    """Base class of every error the product raises on purpose."""

    retriable: ClassVar[bool] = False
    refresh_routes: ClassVar[bool] = False
    fields: ClassVar[tuple[str, ...]] = ()
    #: Where the leader is, when the error knows (``NotLeader``); None otherwise.
    leader_address: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.fields = _constructor_fields(cls)
        registered = ERRORS.setdefault(cls.__name__, cls)
        if registered is not cls:
            raise TypeError(f"two error classes are named {cls.__name__}: codes must be unique")

    @property
    def code(self) -> str:
        return type(self).__name__

    def field_values(self) -> dict[str, Any]:
        """The values of ``fields``, as they travel."""
        return {name: getattr(self, name) for name in self.fields}

    @classmethod
    def from_fields(cls, message: str, values: Mapping[str, Any]) -> DledgerError:
        """The error again from its text and field values; raises ``TypeError`` when the
        values are not this class's fields."""
        if set(values) != set(cls.fields):
            raise TypeError(f"{cls.__name__} has fields {cls.fields}, got {sorted(values)}")
        error = cls(**values)
        error.args = (message,)
        return error


ERRORS[DledgerError.__name__] = DledgerError


class NotLeader(DledgerError):
    """This replica does not lead its group; ``leader_hint`` names the one believed to (or None)
    and ``leader_address`` its client address when known."""

    retriable = True
    refresh_routes = True

    def __init__(
        self,
        leader_hint: str | None,
        message: str | None = None,
        leader_address: str | None = None,
    ) -> None:
        self.leader_hint = leader_hint
        self.leader_address = leader_address
        super().__init__(message or f"not the leader; leader hint: {leader_hint}")


class LeadershipTransferInProgress(NotLeader):
    """The leader is handing over to ``leader_hint`` and takes no proposals meanwhile."""

    def __init__(self, leader_hint: str, leader_address: str | None = None) -> None:
        super().__init__(
            leader_hint, f"leadership is being transferred to {leader_hint}", leader_address
        )


class BadRequest(DledgerError):
    """A client asked for something invalid; retrying the same request cannot help."""


class UsageError(DledgerError):
    """This program used an API as no correct caller does: an invalid argument, a call out of
    order, a component or a node configured wrongly. A bug or a misconfiguration here, never
    something a remote side sent (a client's bad request is ``BadRequest``, a peer's or a
    malformed frame ``ProtocolError``); not retriable, and not sent over the wire."""


class StorageError(DledgerError):
    """The disk refused or corrupted data; the replica must not acknowledge anything more."""


class CorruptLog(StorageError):
    """A record on disk failed its checksum or framing check before the tail of the log."""


class CorruptRecord(CorruptLog):
    """A record in ``path`` at byte ``offset`` failed its checksum or framing check."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path} at offset {offset}: {reason}")


class SnapshotError(StorageError):
    """A snapshot that cannot be read (``reason``): damaged, of another format version or group;
    the replica rebuilds its state from the log instead."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DataDirError(StorageError):
    """``path`` is missing, not a directory, or not a dledger-mq log; nothing was changed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FormatVersionError(DataDirError):
    """The data directory was written in a format version this build cannot read."""

    def __init__(self, path: str, found_version: int, supported_version: int) -> None:
        self.found_version = found_version
        self.supported_version = supported_version
        super().__init__(
            path, f"format version {found_version}; this build reads version {supported_version}"
        )


class DiskFull(StorageError):
    """A write to ``path`` failed for lack of space; nothing of it counts, retry once freed."""

    retriable = True

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: no space left on device")


class FsyncFailed(StorageError):
    """An fsync of ``path`` failed: the page cache may have dropped the data, so the log stops.

    Not retriable: after a failed fsync the kernel may mark the pages clean, and a second fsync
    would "succeed" without the data (PostgreSQL's fsyncgate, 2018). Restart and recover instead.
    """

    def __init__(self, path: str, error_number: int | None) -> None:
        self.path = path
        self.error_number = error_number
        super().__init__(f"{path}: fsync failed (errno {error_number}); the log refuses writes")


class ProtocolError(DledgerError):
    """A peer or client sent bytes that are not a valid frame or message; the link is closed."""


class FrameTooLarge(ProtocolError):
    """A frame announced more bytes than the configured limit."""


class HandshakeRefused(DledgerError):
    """The other side belongs to another cluster or speaks another protocol version."""


class Unavailable(DledgerError):
    """The replica cannot serve right now (starting, stopping, no quorum, unreachable); try
    again later, maybe elsewhere."""

    retriable = True
    refresh_routes = True


class InternalError(DledgerError):
    """The node failed to handle a request because of a bug on its side; it logged the details
    and carries on. Not retriable: the same request would fail the same way."""


class MalformedCommand(BadRequest):
    """Bytes that are not a broker command this build can read; ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed broker command: {reason}")


class UnsupportedCommandVersion(MalformedCommand):
    """A broker command written in a format version this build does not read."""

    def __init__(self, found_version: int, supported_version: int) -> None:
        self.found_version = found_version
        self.supported_version = supported_version
        super().__init__(
            f"format version {found_version}; this build reads version {supported_version}"
        )


class InvalidName(BadRequest):
    """A topic, group, producer or other name (``kind``) breaks the naming rules."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        self.kind = kind
        self.name = name
        self.reason = reason
        shown = name if len(name) <= 40 else name[:37] + "..."
        super().__init__(f"invalid {kind} name {shown!r}: {reason}")


class InvalidMessage(BadRequest):
    """A message's ``field`` breaks a rule or a limit; the message was not stored."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid message {field}: {reason}")


class MessageTooLarge(InvalidMessage):
    """A message body of ``body_bytes`` exceeds the broker's ``max_body_bytes``."""

    def __init__(self, body_bytes: int, max_body_bytes: int) -> None:
        self.body_bytes = body_bytes
        self.max_body_bytes = max_body_bytes
        super().__init__("body", f"{body_bytes} bytes, more than the limit of {max_body_bytes}")


class InvalidTagExpression(BadRequest):
    """A subscription's tag expression cannot be parsed."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"invalid tag expression {expression!r}: {reason}")


class InvalidMessageId(BadRequest):
    """Text that is not a message id in the canonical ``group:raft_index:slot`` form."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        shown = text if len(text) <= 60 else text[:57] + "..."
        super().__init__(f"invalid message id {shown!r}: {reason}")


class MessageNotFound(BadRequest):
    """No stored message has id ``message_id`` here: ``reason`` says why (another group's id,
    not written yet, deleted by retention, or refused when it was sent)."""

    def __init__(self, message_id: str, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        shown = message_id if len(message_id) <= 60 else message_id[:57] + "..."
        super().__init__(f"message {shown}: {reason}")


class InvalidSettings(BadRequest):
    """Broker settings out of their allowed range."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"invalid broker setting {setting}: {reason}")


class TopicNotFound(BadRequest):
    """The topic does not exist (and auto-creation is off, where a send would create it)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic!r} does not exist")


class TopicExists(BadRequest):
    """A topic of that name already exists with another configuration."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic!r} already exists with another configuration")


class InvalidTopicConfig(BadRequest):
    """A topic configuration or change of configuration that the broker refuses."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"topic {topic!r}: {reason}")


class QueueNotFound(BadRequest):
    """``queue_id`` is not one of the ``queue_count`` queues of ``topic``."""

    def __init__(self, topic: str, queue_id: int, queue_count: int) -> None:
        self.topic = topic
        self.queue_id = queue_id
        self.queue_count = queue_count
        super().__init__(f"topic {topic!r} has {queue_count} queues; no queue {queue_id}")


class InvalidOffset(BadRequest):
    """An offset outside ``[min_offset, max_offset]`` of its queue."""

    def __init__(
        self, topic: str, queue_id: int, offset: int, min_offset: int, max_offset: int
    ) -> None:
        self.topic = topic
        self.queue_id = queue_id
        self.offset = offset
        self.min_offset = min_offset
        self.max_offset = max_offset
        super().__init__(
            f"offset {offset} of {topic!r} queue {queue_id} is outside [{min_offset}, {max_offset}]"
        )


class SequenceOutsideWindow(BadRequest):
    """An idempotent send whose sequence is older than the broker remembers.

    The broker cannot tell whether it was stored already, so it refuses rather than risk storing
    it twice. Not retriable: the same sequence stays too old.
    """

    def __init__(self, producer_id: str, sequence: int, highest_sequence: int, window: int) -> None:
        self.producer_id = producer_id
        self.sequence = sequence
        self.highest_sequence = highest_sequence
        self.window = window
        super().__init__(
            f"producer {producer_id!r} sequence {sequence} is older than the last {window} "
            f"sequences remembered (highest {highest_sequence})"
        )


class AuthenticationFailed(HandshakeRefused):
    """The client's credentials were not accepted. Deliberately vague: it does not say whether
    the access key is unknown or the proof wrong."""


class AuthenticationRequired(DledgerError):
    """This request needs a user: connect with credentials (``--access-key``/``--secret-key``,
    ``DLEDGER_MQ_ACCESS_KEY``/``DLEDGER_MQ_SECRET_KEY``, or ``credentials=`` in the SDK)."""


class PermissionDenied(DledgerError):
    """``user`` may not do ``action`` on ``resource`` (docs/security.md, "Permissions")."""

    def __init__(self, user: str, action: str, resource: str) -> None:
        self.user = user
        self.action = action
        self.resource = resource
        super().__init__(f"user {user!r} may not {action} on {resource}")


class UserNotFound(BadRequest):
    def __init__(self, user: str) -> None:
        self.user = user
        super().__init__(f"no user {user!r}")


class UserExists(BadRequest):
    def __init__(self, user: str) -> None:
        self.user = user
        super().__init__(f"user {user!r} exists already")


class InvalidRule(BadRequest):
    """A permission rule that does not parse: ``problem`` says why."""

    def __init__(self, rule: str, problem: str) -> None:
        self.rule = rule
        self.problem = problem
        super().__init__(f"rule {rule!r}: {problem}")


class TopicLimitReached(BadRequest):
    """The group holds ``max_topics`` topics already (the ``max_topics`` setting)."""

    def __init__(self, topic: str, max_topics: int) -> None:
        self.topic = topic
        self.max_topics = max_topics
        super().__init__(f"cannot create topic {topic!r}: the group holds {max_topics} topics")


class TimerLimitReached(BadRequest):
    """The group holds ``max_timers`` pending timers (delayed and retried messages) already:
    the ``max_timers`` setting. Retry once some are delivered."""

    retriable = True

    def __init__(self, max_timers: int) -> None:
        self.max_timers = max_timers
        super().__init__(f"the group holds {max_timers} pending timers (max_timers); retry later")


class TooManyConnections(Unavailable):
    """The listener holds as many connections as it takes (in all, or from this address)."""


class InvalidMembershipChange(BadRequest):
    """A change that would make a membership no group can have, or that does not apply to the
    current one (promoting a voter, removing a stranger): ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"membership change refused: {reason}")


class MembershipChangeInProgress(BadRequest):
    """A change cannot be made yet: an earlier one is not committed, this leader has not
    committed an entry of its term, or a learner to promote has not caught up. Retry."""

    retriable = True

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"membership change not yet possible: {reason}")


@contextmanager
def sole_error_unwrapped() -> Iterator[None]:
    """Raise a group of one error (of a nursery or task group that the caller did not make,
    such as ``Consumer.run``'s handlers) as that error, so that the application's ``except
    KeyboardInterrupt`` or ``except SomeError`` sees it; a group of several stays a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, BaseExceptionGroup):
            raise
        raise error from None
