"""The broker: state derived from committed entries (topics, queues, offsets), and its handlers."""
