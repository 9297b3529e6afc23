"""Message ids: ``group:raft_index:slot``, unique in the cluster and derived, never stored.

A committed Raft index holds one entry forever, and a slot is a message's place in its entry, so
(raft index, slot) names one message of a group, and the group's name makes it unique among
groups. Every replica derives the same id from the same entry. The id also says where the message
is: its group, and the entry to read, so a lookup by id needs no index.

Decimal, without padding: readable next to the indexes of ``cluster status``. The group comes
first and may itself hold ``:``, so parsing splits from the right. Each id has exactly one
spelling (no leading zeros or signs), so ids compare equal exactly when they name one message.
"""

from __future__ import annotations

import attrs

from dledger_mq.broker.records import MAX_BATCH_MESSAGES, MAX_RAFT_INDEX
from dledger_mq.errors import InvalidMessageId

#: Longest text accepted by ``parse_message_id`` (a group name of 255 and two numbers).
MAX_MESSAGE_ID_LENGTH = 300


@attrs.frozen
class MessageId:
    group: str
    raft_index: int
    slot: int

    def __str__(self) -> str:
        return format_message_id(self.group, self.raft_index, self.slot)


def format_message_id(group: str, raft_index: int, slot: int) -> str:
    return f"{group}:{raft_index}:{slot}"


def parse_message_id(text: str) -> MessageId:
    """The parts of a message id. Raises ``InvalidMessageId`` on anything else."""
    if type(text) is not str:
        raise InvalidMessageId(repr(text), "must be a string")
    if len(text) > MAX_MESSAGE_ID_LENGTH:
        raise InvalidMessageId(text, f"longer than {MAX_MESSAGE_ID_LENGTH} characters")
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise InvalidMessageId(text, "expected group:raft_index:slot")
    group, raft_index_text, slot_text = parts
    raft_index = _canonical_number(text, raft_index_text, "raft index")
    slot = _canonical_number(text, slot_text, "slot")
    if not 1 <= raft_index <= MAX_RAFT_INDEX:
        raise InvalidMessageId(text, f"raft index must be in [1, {MAX_RAFT_INDEX}]")
    if slot >= MAX_BATCH_MESSAGES:
        raise InvalidMessageId(text, f"slot must be below {MAX_BATCH_MESSAGES}")
    return MessageId(group, raft_index, slot)


def _canonical_number(text: str, part: str, what: str) -> int:
    # str.isdigit accepts other scripts' digits ("١"); only ASCII has one spelling per number.
    if not part or not (part.isascii() and part.isdigit()) or (len(part) > 1 and part[0] == "0"):
        raise InvalidMessageId(text, f"{what} must be a decimal number without leading zeros")
    return int(part)
