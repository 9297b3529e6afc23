"""Fault-injection switches that only the jepsen harness sets, through the environment.

They are not config keys or flags on purpose: an operator cannot turn them on by accident, and
``--help`` does not offer them. ``DLEDGER_MQ_HARNESS`` holds a comma-separated list:

- ``lose-unsynced``: the CommitLog writes through ``PowerLossDisk``
  (``dledger_mq/raft/storage/simulated_disks.py``), so killing the process loses every byte not
  yet fsynced, as a power cut would.
- ``ack-before-fsync``: entries count as persisted once written, and fsync waits for an hour:
  the deliberately broken node the harness's negative control must catch losing data.
- ``raw-proposals``: the client port takes ``Propose``/``ProposeBatch`` (raw bytes appended to
  the log, for ``bench raft`` and the harness's register workload). Never in a real cluster: raw
  bytes bypass every check the broker makes (a forged store timestamp, for one).
"""

from __future__ import annotations

import os

import attrs

from dledger_mq.node.config import ConfigError

HARNESS_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_HARNESS"
#: ``ack-before-fsync`` still fsyncs, this rarely: never within a harness run.
UNSAFE_FLUSH_INTERVAL_MS = 3_600_000


@attrs.frozen
class HarnessOptions:
    lose_unsynced: bool = False
    ack_before_fsync: bool = False
    raw_proposals: bool = False

    @property
    def any(self) -> bool:
        return self.lose_unsynced or self.ack_before_fsync or self.raw_proposals

    @classmethod
    def parse(cls, text: str) -> HarnessOptions:
        names = {name.strip() for name in text.split(",") if name.strip()}
        known = {"lose-unsynced", "ack-before-fsync", "raw-proposals"}
        if names - known:
            raise ConfigError(
                f"{HARNESS_ENVIRONMENT_VARIABLE}: unknown {sorted(names - known)}; "
                f"known: {sorted(known)}"
            )
        return cls("lose-unsynced" in names, "ack-before-fsync" in names, "raw-proposals" in names)

    @classmethod
    def from_environment(cls) -> HarnessOptions:
        return cls.parse(os.environ.get(HARNESS_ENVIRONMENT_VARIABLE, ""))


#: A node as operators run it: no fault-injection switch on.
NO_HARNESS = HarnessOptions()
