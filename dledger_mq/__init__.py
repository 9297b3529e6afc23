"""dledger-mq: a distributed message queue where every broker group is a Raft group."""

__version__ = "0.1.0"
