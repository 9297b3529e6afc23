"""Benchmarks behind ``dledger-mq bench``; their figures go into docs/benchmarks.md."""
