"""The Python client SDK: producer, consumer and admin, following leaders on their own."""

from dledger_mq.clients.consumer import Consumer, ReceivedMessage
from dledger_mq.clients.producer import Producer

__all__ = ["Consumer", "Producer", "ReceivedMessage"]
