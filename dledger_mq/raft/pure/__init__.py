"""The pure layer: the Raft core, its messages and log view, and the replica driver's
decisions. No I/O, clock, randomness or Trio."""
