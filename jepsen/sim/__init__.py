"""A deterministic simulator: one seed drives Raft clusters in virtual time under faults.

Trio's scheduler is not deterministic, so the simulator drives the pure core synchronously from
a seeded PRNG instead. ``python -m jepsen sim --help`` runs it.
"""
