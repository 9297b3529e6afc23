"""The replicated log: a pure Raft core (``core``), its log stores, and later its Trio driver."""
