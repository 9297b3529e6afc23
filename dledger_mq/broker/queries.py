"""Message queries: by id and by key (docs/operations.md, "Finding a message").

Both are answered by the group's leader through a read barrier, as offset queries are: a
message whose send was acknowledged is found, even right after a leader change. By id needs
no index: the id names the entry and the slot (``broker/message_id.py``). By key asks the key
index (``key_index.py``) for candidates and checks each against the message itself, read from
the CommitLog (its topic and keys) and its queue (it was stored, not refused): the index only
saves reading the log, it never decides an answer. Listing by store time needs no request of
its own: ``OffsetForTimeRequest`` and pulls (``clients/admin.py`` ``list_messages``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import structlog

from dledger_mq.broker.key_index import KeyIndex
from dledger_mq.broker.message_id import format_message_id, parse_message_id
from dledger_mq.broker.records import SLOT_BITS, Message, read_messages
from dledger_mq.errors import (
    BadRequest,
    CorruptRecord,
    MessageNotFound,
    NotLeader,
    Unavailable,
)
from dledger_mq.raft.pure.log_store import LogCompacted, LogUnavailable
from dledger_mq.wire.broker import (
    DELIVER_AT_PROPERTY,
    ORIGIN_MSG_ID_PROPERTY,
    RETRY_TOPIC_PREFIX,
    FindMessagesReply,
    FindMessagesRequest,
    GetMessageReply,
    GetMessageRequest,
    MessageView,
    attempt_of,
    dead_letter_topic,
    system_topic_group,
)

if TYPE_CHECKING:
    from dledger_mq.broker.service import BrokerService

logger = structlog.get_logger()

_SLOT_MASK = (1 << SLOT_BITS) - 1
#: ``max_bytes`` when one entry is read: ``entries`` returns at least one entry, whole, so the
#: smallest bound reads exactly the one asked for.
_ENTRY_READ_BYTES = 1


class MessageQueries:
    """The query handlers of one replica's broker service."""

    def __init__(self, service: BrokerService, key_index: KeyIndex | None) -> None:
        self.service = service
        #: None where no index is kept (the simulator): finding by key is then refused.
        self.key_index = key_index

    async def _leader_barrier(self) -> None:
        replica = self.service.replica
        if not replica.is_leader:
            raise NotLeader(replica.core.leader)
        await replica.read_barrier()

    # -- by id ---------------------------------------------------------------------------------

    async def get_message(self, request: GetMessageRequest) -> GetMessageReply:
        await self._leader_barrier()
        return GetMessageReply(self.get_message_now(request.message_id))

    def get_message_now(self, text: str) -> MessageView:
        state = self.service.state
        message_id = parse_message_id(text)
        if message_id.group != state.group:
            raise MessageNotFound(
                text, f"the id names broker group {message_id.group}, this is {state.group}"
            )
        if message_id.raft_index > state.applied_index:
            raise MessageNotFound(text, "no such entry in the log yet")
        read = self._read(message_id.raft_index, message_id.slot)
        if read is None:
            raise MessageNotFound(text, "its entry holds no message at that slot")
        message, store_time_ms = read
        offset = self._offset_of(message, message_id.raft_index, message_id.slot)
        group = system_topic_group(message.topic)
        if offset is None and group is not None and message.topic.startswith(RETRY_TOPIC_PREFIX):
            # A retry past its group's last attempt went straight to the dead-letter topic.
            dead = attrs.evolve(message, topic=dead_letter_topic(group))
            offset = self._offset_of(dead, message_id.raft_index, message_id.slot)
            message = dead if offset is not None else message
        if offset is None and not _scheduled(message):
            raise MessageNotFound(
                text, "not stored: refused or a duplicate when sent, or its topic was deleted"
            )
        return _view(text, message, -1 if offset is None else offset, store_time_ms)

    def _read(self, raft_index: int, slot: int) -> tuple[Message, int] | None:
        """The message at (raft index, slot) and its store time; None if that entry holds no
        message there. ``MessageNotFound`` when retention deleted the entry."""
        try:
            [entry] = self.service.log.entries(raft_index, raft_index + 1, _ENTRY_READ_BYTES)
        except (LogCompacted, LogUnavailable):
            text = format_message_id(self.service.state.group, raft_index, slot)
            raise MessageNotFound(
                text, "deleted by retention (or not in this replica's log)"
            ) from None
        try:
            stored = read_messages(entry.data, [slot])
        except BadRequest:
            return None
        return stored.messages[0], stored.store_timestamp_ms

    def _offset_of(self, message: Message, raft_index: int, slot: int) -> int | None:
        try:
            return self.service.state.offset_of(message.topic, message.queue_id, raft_index, slot)
        except BadRequest:  # the topic (or that queue) is gone
            return None

    # -- by key --------------------------------------------------------------------------------

    async def find_messages(self, request: FindMessagesRequest) -> FindMessagesReply:
        await self._leader_barrier()
        return self.find_messages_now(request)

    def find_messages_now(self, request: FindMessagesRequest) -> FindMessagesReply:
        index = self.key_index
        if index is None:
            raise Unavailable("this node keeps no key index")
        if not index.live:
            raise Unavailable(
                f"the key index is being built from the log (indexed through entry "
                f"{index.covered_index} of {self.service.state.applied_index}); try again"
            )
        try:
            lookup = index.lookup(request.topic, request.key)
        except (CorruptRecord, OSError) as error:
            # Never answered from a damaged index: the node drops it and rebuilds it.
            index.fail(error)
            raise Unavailable("the key index was damaged and is being rebuilt; try again") from None
        first_index = self.service.log.first_index()
        applied_index = self.service.state.applied_index
        found: list[MessageView] = []
        truncated = lookup.truncated
        for number, position in enumerate(lookup.positions):
            raft_index, slot = position >> SLOT_BITS, position & _SLOT_MASK
            if raft_index < first_index:
                break  # older candidates are older still: retention deleted them all
            if raft_index > applied_index:
                continue  # indexed before a crash cut this log's tail: not applied here yet
            try:
                read = self._read(raft_index, slot)
            except MessageNotFound:
                break
            if read is None:
                continue
            message, store_time_ms = read
            if message.topic != request.topic or request.key not in message.keys:
                continue  # another key with the same hash
            offset = self._offset_of(message, raft_index, slot)
            if offset is None:
                continue  # refused, a duplicate, or a delayed one whose copy is the stored one
            # As a pull shows it: a delivered delayed or retried copy keeps its origin's id.
            own_id = format_message_id(self.service.state.group, raft_index, slot)
            shown_id = message.properties.get(ORIGIN_MSG_ID_PROPERTY) or own_id
            found.append(_view(shown_id, message, offset, store_time_ms))
            if len(found) >= request.limit:
                truncated = truncated or number + 1 < len(lookup.positions)
                break
        found.reverse()
        return FindMessagesReply(tuple(found), truncated)


def _scheduled(message: Message) -> bool:
    """A message that waits for a timer rather than going to its queue under its own id."""
    return DELIVER_AT_PROPERTY in message.properties or message.topic.startswith(RETRY_TOPIC_PREFIX)


def _view(message_id: str, message: Message, offset: int, store_time_ms: int) -> MessageView:
    properties = dict(message.properties)
    return MessageView(
        message_id=message_id,
        topic=message.topic,
        queue_id=message.queue_id,
        offset=offset,
        keys=message.keys,
        tags=message.tags,
        properties=properties,
        body=message.body,
        born_time_ms=message.born_timestamp_ms,
        store_time_ms=store_time_ms,
        attempt=attempt_of(properties),
    )
