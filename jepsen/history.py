"""The history of a run: every operation the workload and the nemesis performed, in order.

A history is a list of :class:`Op`, written one JSON object a line to ``history.jsonl`` as the run
goes (so a run that dies still leaves its evidence). The checkers (``jepsen.checkers``) and the
report (``jepsen.report``) read only this.

Operations, by ``f``:

- ``send``: a producer sends one unique value. ``invoke`` first, then exactly one completion from
  the same process: ``ok`` (acknowledged; ``queue``, ``offset`` and ``msg_id`` say where it was
  stored), ``fail`` (definitely not stored: the broker refused it) or ``info`` (indeterminate: a
  timeout or a cancel; it may or may not have been stored).
- ``receive``: a consumer was handed a message (``ok`` only, no invoke): ``value``, ``key``,
  ``queue``, ``offset``, ``msg_id``. The same value may be received more than once
  (at-least-once delivery); the checkers tell redelivery from duplicated storage.
- ``read``: the final read after the drain (process ``"reader"``, ``ok`` only): every message
  still stored, read from offset 0 of every queue of the leader: ``value``, ``key``, ``queue``,
  ``offset``, ``msg_id``. It shows storage loss that consumers had already seen past.
- ``fault``: the nemesis (process ``"nemesis"``), type ``info``; ``value`` is
  ``{"fault": name, "phase": "start" | "end", "targets": [node ids], ...}``. Every start has an
  end with the same ``fault`` and a ``window`` number shared by both.
- ``phase``: the runner's milestones (process ``"runner"``, type ``info``): ``value`` is one of
  ``"workload"``, ``"heal"``, ``"recovered"``, ``"drain"``, ``"done"``.

``time`` is seconds since the run started (monotonic clock), so histories from different runs
line up at zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
TYPES = (INVOKE, OK, FAIL, INFO)

SEND = "send"
RECEIVE = "receive"
READ = "read"
FAULT = "fault"
PHASE = "phase"
FUNCTIONS = (SEND, RECEIVE, READ, FAULT, PHASE)

NEMESIS = "nemesis"
RUNNER = "runner"
READER = "reader"


@attrs.frozen
class Op:
    index: int
    time: float
    process: str
    type: str = attrs.field(validator=attrs.validators.in_(TYPES))
    f: str = attrs.field(validator=attrs.validators.in_(FUNCTIONS))
    #: send/receive: the unique value ("p3-17"); fault: a dict; phase: the phase name.
    value: Any = None
    #: The sharding key of a FIFO send (None for the plain queue workload).
    key: str | None = None
    queue: int | None = None
    offset: int | None = None
    msg_id: str | None = None
    #: Why a send failed or is indeterminate (the error's class and message).
    error: str | None = None

    def to_json(self) -> str:
        fields = {name: value for name, value in attrs.asdict(self).items() if value is not None}
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Op:
        return cls(**json.loads(line))


class History:
    """Appends operations with increasing indexes; optionally mirrors each to a JSONL file."""

    def __init__(self, path: Path | None = None) -> None:
        self.ops: list[Op] = []
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def add(self, time: float, process: str, type: str, f: str, **fields: Any) -> Op:
        op = Op(len(self.ops), time, process, type, f, **fields)
        self.ops.append(op)
        if self._file is not None:
            self._file.write(op.to_json() + "\n")
            self._file.flush()
        return op

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_history(path: Path, ops: Iterable[Op]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for op in ops:
            out.write(op.to_json() + "\n")


def read_history(path: Path) -> list[Op]:
    return list(_read_lines(path))


def _read_lines(path: Path) -> Iterator[Op]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield Op.from_json(line)


@attrs.frozen
class CheckResult:
    """What one checker concluded about a history; JSON-able through ``attrs.asdict``."""

    name: str
    valid: bool
    #: Summary figures, e.g. {"lost": 0, "acknowledged": 1234}.
    counts: dict[str, int | float] = attrs.field(factory=dict)
    #: Up to a few dozen readable lines naming the offending values, for the report.
    examples: list[str] = attrs.field(factory=list)
    #: Anything structured the report draws (JSON-able: dicts, lists, numbers, strings).
    details: dict[str, Any] = attrs.field(factory=dict)
