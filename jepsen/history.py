"""The history of a run: every operation the workload and the nemesis performed, in order.

A history is a list of :class:`Op`, written one JSON object a line to ``history.jsonl`` as the run
goes (so a run that dies still leaves its evidence). The checkers (``jepsen.checkers``) and the
report (``jepsen.report``) read only this.

Operations, by ``f``:

- ``send``: a producer sends one unique value. ``invoke`` first, then exactly one completion from
  the same process: ``ok`` (acknowledged; ``group``, ``queue``, ``offset`` and ``msg_id`` say
  where it was stored: a queue is (group, queue)), ``fail`` (definitely not stored: the broker
  refused it) or ``info`` (indeterminate: a timeout or a cancel; it may or may not have been
  stored).
- ``receive``: a consumer was handed a message (``ok`` only, no invoke): ``value``, ``key``,
  ``group``, ``queue``, ``offset``, ``msg_id``. The same value may be received more than once
  (at-least-once delivery); the checkers tell redelivery from duplicated storage.
- ``ack``: a consumer acknowledged a message it had received (``ok`` only; ``value``,
  ``group``, ``queue``, ``offset``): with the receive, it bounds the time the consumer held the
  message. In the ``retry`` workload: the handler succeeded with it (``attempt``).
- ``nack``: ``retry`` workload only: the handler failed on a message it had received (``ok``
  only; ``value``, ``attempt``, ``wall_ms``, ``error``, the position as its receive's): the
  consumer has the broker store it again for the next attempt, or as a dead letter.
- ``read``: the final read after the drain (process ``"reader"``, ``ok`` only): every message
  still stored, read from offset 0 of every queue of each group's leader: ``value``, ``key``,
  ``group``, ``queue``, ``offset``, ``msg_id``. It shows storage loss that consumers had already
  seen past.
- Delayed messages and retries (the ``delay`` and ``retry`` workloads). A delayed send's
  ``invoke`` has ``delay_ms`` (the delay asked) and ``wall_ms`` (the wall clock, ms since the
  epoch, when it was invoked), and ``deliver_at_ms`` when it named the time itself
  (``deliver_at=``); its ``ok`` has no ``offset`` (the receipt's is -1: stored as a timer,
  in no queue yet) unless the broker gave one. A ``receive`` carries ``stored_ms`` (the copy's
  store timestamp: when it became visible), ``deliver_at_ms`` (the message's
  ``__DELIVER_AT_MS`` property), ``attempt`` (which delivery), ``wall_ms`` (when it was
  received), and ``topic`` when it was read from another topic than the workload's (the
  group's retry topic): its position is then in that topic, which the checkers that compare
  positions leave aside. A ``read`` with ``topic`` set is a dead letter found by the final read
  of ``%DLQ%group`` (``attempt``: the attempts it says were made, ``error``: its last error,
  ``msg_id``: the id it keeps).
- ``fault``: the nemesis (process ``"nemesis"``), type ``info``; ``value`` is
  ``{"fault": name, "phase": "start" | "end", "targets": [node ids], ...}``. Every start has an
  end with the same ``fault`` and a ``window`` number shared by both. With several broker
  groups also ``"group"`` (the one the window acts in) and ``"majority_down"`` (whether it
  stops a majority of that group's nodes).
- ``membership``: one step of a membership change (process ``"membership"``): ``invoke``,
  then ``ok`` (committed), ``fail`` (refused, or given up on before it was asked) or ``info``
  (asked, and its outcome unknown). ``value`` is ``{"change": n, "action": "start-spare" |
  "add-learner" | "catch-up" | "promote" | "transfer-leader" | "remove" | "stop",
  "node": harness name, "group": broker group}``; a completion adds ``"took_s"`` and, once
  known, ``"voters"`` and ``"learners"`` (the member ids the leader's log then held). The steps
  of one change share its number (``jepsen.nemesis``, "membership").
- ``phase``: the runner's milestones (process ``"runner"``, type ``info``): ``value`` is one of
  ``"workload"``, ``"heal"``, ``"recovered"``, ``"drain"``, ``"done"``.

``time`` is seconds since the run started (monotonic clock), so histories from different runs
line up at zero. ``group`` is the broker group named by the receipt or the message id
(``broker-a``); ops from before groups existed, or hand-built ones, may have none: positions
are then compared by queue alone.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Iterator, Sequence
from operator import attrgetter
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
ACK = "ack"
NACK = "nack"
READ = "read"
FAULT = "fault"
PHASE = "phase"
MEMBERSHIP = "membership"
FUNCTIONS = (SEND, RECEIVE, ACK, NACK, READ, FAULT, PHASE, MEMBERSHIP)

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
    #: The broker group of the queue (from the receipt or the message id).
    group: str | None = None
    queue: int | None = None
    offset: int | None = None
    msg_id: str | None = None
    #: Why a send failed or is indeterminate (the error's class and message); why a handler
    #: failed (nack); a dead letter's last error (read).
    error: str | None = None
    #: The topic a receive or read was read from, when not the workload's (retry, dead letters).
    topic: str | None = None
    #: Which delivery a receive, ack or nack is (1: the first); a dead letter's attempts made.
    attempt: int | None = None
    #: The delay a delayed send asked for, in ms (on its invoke).
    delay_ms: int | None = None
    #: When a delayed message is to be delivered, ms since the epoch: on a deliver_at send's
    #: invoke, what it asked; on a receive, the message's ``__DELIVER_AT_MS`` property.
    deliver_at_ms: int | None = None
    #: A received message's store timestamp (ms since the epoch): when it became visible.
    stored_ms: int | None = None
    #: The wall clock when the op was recorded (ms since the epoch), where a checker compares
    #: it with the broker's timestamps (the same machine's clock).
    wall_ms: int | None = None

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


@attrs.frozen
class FaultWindow:
    #: The number the nemesis gave both ends (None when it gave none).
    window: Any
    fault: str
    targets: tuple[Any, ...]
    start: float
    end: float
    #: False when the history has no end for it: it then lasts until the last op.
    ended: bool
    #: The broker group it acted in (runs with several groups), and whether it stopped a
    #: majority of that group's nodes.
    group: str | None = None
    majority_down: bool = False


def fault_windows(ops: Sequence[Op], end_of_history: float | None = None) -> list[FaultWindow]:
    """Each fault start matched with its end, sorted by start time; a window without an end
    lasts until ``end_of_history`` (default: the time of the last op)."""
    last = max((op.time for op in ops), default=0.0) if end_of_history is None else end_of_history
    fault_ops = sorted(
        (op for op in ops if op.f == FAULT and isinstance(op.value, dict)), key=attrgetter("index")
    )
    opened: dict[Hashable, Op] = {}
    windows: list[FaultWindow] = []
    for op in fault_ops:
        number = op.value.get("window")
        match = ("window", number) if number is not None else ("fault", op.value.get("fault"))
        phase = op.value.get("phase")
        if phase == "start":
            # A repeated start of an open window does not move its beginning.
            opened.setdefault(match, op)
        elif phase == "end" and match in opened:
            windows.append(_window(opened.pop(match), op.time, ended=True))
    for start in opened.values():
        windows.append(_window(start, max(last, start.time), ended=False))
    windows.sort(key=lambda w: (w.start, w.end))
    return windows


def _window(start: Op, end: float, ended: bool) -> FaultWindow:
    value = start.value
    return FaultWindow(
        window=value.get("window"),
        fault=str(value.get("fault")),
        targets=tuple(value.get("targets") or ()),
        start=start.time,
        end=end,
        ended=ended,
        group=value.get("group"),
        majority_down=bool(value.get("majority_down")),
    )


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
