"""A consumer group's dead letters (``%DLQ%GROUP``) through one broker group's leader: read
them, and send them back to their original topic. `dledger-mq group dlq list|redrive` and the
dashboard's consumer-groups page both use these."""

from __future__ import annotations

import uuid

from dledger_mq.clients.admin import AdminConnection
from dledger_mq.errors import BadRequest
from dledger_mq.wire.broker import (
    ATTEMPT_PROPERTY,
    LAST_ERROR_PROPERTY,
    ORIGIN_MSG_ID_PROPERTY,
    ORIGIN_TOPIC_PROPERTY,
    SYSTEM_PROPERTY_PREFIX,
    OutgoingMessage,
    StoredMessage,
    dead_letter_topic,
)

#: A redriven message says where it came from in this (user) property.
REDRIVEN_FROM_PROPERTY = "DLQ_REDRIVEN_FROM"
#: Dead letters read per request.
_PAGE = 256


def redrive_group(name: str) -> str:
    """The consumer group whose offset in a dead-letter topic marks what was redriven."""
    return f"%REDRIVE%{name}"


async def dead_letters(connection: AdminConnection, name: str) -> tuple[list[StoredMessage], int]:
    """Every dead letter of group ``name`` this broker group holds, and the offset below
    which they were redriven."""
    topic = dead_letter_topic(name)
    if not any(info.name == topic for info in await connection.list_topics()):
        return [], 0
    redriven = (await connection.committed_offsets(redrive_group(name), topic)).get(0, 0)
    found: list[StoredMessage] = []
    offset = 0
    while True:
        reply = await connection.pull(topic, 0, offset, _PAGE)
        found.extend(reply.messages)
        if reply.next_offset >= reply.max_offset or reply.next_offset == offset:
            return found, redriven
        offset = reply.next_offset


def dead_letter_object(
    broker_group: str, message: StoredMessage, redriven_below: int
) -> dict[str, object]:
    properties = message.properties
    return {
        "msg_id": message.msg_id,
        "broker_group": broker_group,
        "offset": message.offset,
        "topic": properties.get(ORIGIN_TOPIC_PROPERTY, ""),
        "attempts": int(properties.get(ATTEMPT_PROPERTY, "1")) - 1,
        "last_error": properties.get(LAST_ERROR_PROPERTY, ""),
        "redriven": message.offset < redriven_below,
        "tags": message.tags,
        "keys": list(message.keys),
        "body": message.body.decode(errors="replace"),
    }


def redriven_message(message: StoredMessage, producer_id: str, sequence: int) -> OutgoingMessage:
    """Dead letter ``message`` as a new message of its original topic, attempt 1."""
    properties = {
        key: value
        for key, value in message.properties.items()
        if not key.startswith(SYSTEM_PROPERTY_PREFIX)
    }
    properties[REDRIVEN_FROM_PROPERTY] = message.properties.get(
        ORIGIN_MSG_ID_PROPERTY, message.msg_id
    )
    return OutgoingMessage(
        topic=message.properties.get(ORIGIN_TOPIC_PROPERTY, message.topic),
        body=message.body,
        tags=message.tags,
        keys=message.keys,
        properties=properties,
        producer_id=producer_id,
        sequence=sequence,
        born_timestamp_ms=message.born_timestamp_ms,
    )


async def redrive(
    admins: dict[str, AdminConnection], name: str, msg_id: str | None = None
) -> list[dict[str, object]]:
    """Send group ``name``'s dead letters back to their topics, through each broker group's
    leader: only ``msg_id``, or every one not redriven before (then marked redriven). One
    object per message sent; ``BadRequest`` if ``msg_id`` is no dead letter of the group."""
    sent: list[dict[str, object]] = []
    producer_id = f"redrive-{uuid.uuid4().hex}"
    sequence = 0
    for broker_group, connection in admins.items():
        found, redriven = await dead_letters(connection, name)
        chosen = [
            m for m in found if (m.msg_id == msg_id if msg_id is not None else m.offset >= redriven)
        ]
        for message in chosen:
            sequence += 1
            receipt = await connection.send(redriven_message(message, producer_id, sequence))
            if receipt.error_code:
                raise BadRequest(f"{message.msg_id}: {receipt.error_message}")
            sent.append(
                {
                    "msg_id": message.msg_id,
                    "broker_group": broker_group,
                    "topic": receipt.topic,
                    "new_msg_id": receipt.msg_id,
                }
            )
        if msg_id is None and chosen:
            await connection.commit_offset(
                redrive_group(name), dead_letter_topic(name), 0, chosen[-1].offset + 1
            )
    if msg_id is not None and not sent:
        raise BadRequest(f"group {name} has no dead letter {msg_id}")
    return sent
