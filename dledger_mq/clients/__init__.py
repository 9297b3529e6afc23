"""The Python client SDK: producer, consumers and admin, following leaders on their own."""

from dledger_mq.clients.consumer import Consumer, ReceivedMessage
from dledger_mq.clients.producer import Producer
from dledger_mq.clients.simple_consumer import SimpleConsumer, SimpleMessage

__all__ = ["Consumer", "Producer", "ReceivedMessage", "SimpleConsumer", "SimpleMessage"]
