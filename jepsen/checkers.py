"""The checkers: what a history (``jepsen.history``) must satisfy, each a pure function.

Every checker takes the ops of one run and returns one :class:`CheckResult` with a stable
``name``; :func:`check_all` runs them all. They do no I/O and read no clock, and each is
O(n log n) in the number of ops, so a history of a few million ops is checked in one go.

Words used below. A *value* is what one send carries ("p0-17"; unique per send). A send is
*acknowledged* when it completed ``ok``, *failed* when it completed ``fail`` and *indeterminate*
when it completed ``info`` or never completed (the run ended first). A *receive* is a receive op
(type ``ok``). A *queue* is a ``(group, queue)`` pair: the broker group named by the receipt or
the message id, and the queue id in it (queue 0 of broker-a and queue 0 of broker-b are two
queues; ops without a group, as in hand-built histories, share one unnamed group). A *position*
is a ``(group, queue, offset)`` triple; ops without a queue and an offset are ignored wherever
positions are compared. A *fault window* runs from a fault start to the end with the same
``window`` number (or, when the nemesis gave none, the same fault name); a window without an end
lasts until the time of the last op of the history. Windows include both ends.

The checkers, in the order :func:`check_all` runs them:

``summary`` (always valid)
    How many sends were invoked and how many completed ok, fail and info; how many receives,
    and how many distinct values they carried; how many fault windows. Counts: sends, ok, fail,
    info, receives, received_values, faults.

``lost``
    An acknowledged value no receive carries. Valid iff there is none. Each is counted by when
    its acknowledgement happened: ``before`` the first fault window began, ``during`` some fault
    window, or ``after`` (between windows, or after the last one). With no fault at all every
    acknowledgement is "before". When the history has a final read (a ``read`` phase), an
    acknowledged value the read does not find is lost from storage, received or not: counted as
    lost_from_storage, also invalid. Counts: acknowledged (distinct values), lost, lost_before,
    lost_during, lost_after, and lost_from_storage when there was a final read.

``duplicates``
    *Duplicated storage*: a value at two or more positions, taking as evidence the positions its
    receives carry and the position its acknowledgement reported. *Conflicting*: a position
    received with two or more different values. Either makes the history invalid.
    *Redelivery*, a value received again at the position it was received at before, is
    at-least-once delivery working as designed: counted, never invalid. Counts: duplicated
    (values), conflicting (positions), redelivered_values, redeliveries (receipts beyond the
    first of a value at a position).

``unexpected``
    A received value that no send op names (every completion follows its invoke, so this is
    "never invoked"). Valid iff there is none. Counts: unexpected (values),
    unexpected_receives.

``recovered``
    Indeterminate sends split into *recovered* (received after all) and *indeterminate_lost*
    (never received); both are legal, since none of them was acknowledged. A failed send that was
    received anyway (*failed_but_stored*) is invalid: ``fail`` promises it was not stored.
    Counts: indeterminate, recovered, indeterminate_lost, failed, failed_but_stored.

``order`` (valid iff every count is zero)
    *storage_order*: for each producer, take its acknowledged sends in the order it invoked them;
    within one queue their offsets must increase. An acknowledged send whose offset is not above
    the largest offset of the same producer's earlier sends in that queue is a violation.
    *delivery_order*: the first receipt of each position, in history order over all consumers of
    the group, must come in increasing offset order per queue. A first receipt of offset ``o``
    after the first receipt of a larger offset of the same queue is a violation. Receipts of
    positions already received (redeliveries, e.g. from the committed offset after a rebalance)
    are not considered.
    FIFO only (the counts are absent otherwise): *key_delivery_order* is the same per
    (queue, sharding key); every such violation is also a delivery_order one, it names the key.
    *key_order*: for each key, its acknowledged sends in the order they were invoked must all be
    stored in the queue of the key's first acknowledged send, each at an offset above every
    earlier one of the key; each send that is not is a violation.

``fifo_exclusive`` (FIFO only)
    On a FIFO topic each queue is processed one message at a time by one consumer of the group.
    A consumer holds a message from its receive to its ack; two holdings of the same queue by
    different consumers that overlap in time are a violation (a queue read by two consumers at
    once, e.g. during a hand-over). Counts: holdings, overlaps.

``availability`` (informational)
    For each fault window: ``longest_gap``, the longest stretch of the window without an
    acknowledgement (counting from the window's start to the first acknowledgement in it,
    between consecutive ones, and from the last one to the window's end; the whole window when
    it has none), and ``recovery``, the time from the window's end to the first acknowledgement
    at or after it (None when there is none). ``longest_gap`` in the counts is the same measure
    over the whole workload, from the first send invoked to the last send op. Valid, except when
    the history has sends but not a single one was acknowledged. Counts: windows, max_gap and
    max_recovery (the largest over the windows, 0 when none), unrecovered (windows with no
    acknowledgement after them), longest_gap; ``details["windows"]`` has one row per window.

``group_independence`` (runs with several broker groups, not FIFO)
    The fault windows that stopped a majority of one broker group (``majority_down`` and
    ``group`` in the nemesis's record) and lie within the workload (they end after the first
    send was invoked and begin before the last send op). In each, *healthy* acknowledgements:
    unkeyed sends (no sharding key) acknowledged during the window with a receipt naming
    another group. A window is *judged* when it lasts longer than ``patience_s`` (the runner
    passes the send timeout plus 1 s: a producer whose request was already written to the group
    that went down may only retry it there, exactly once, so it is held until that send times
    out; then its next send must go elsewhere). Valid iff every judged window has at least one
    healthy acknowledgement: a group without a majority takes only its own queues away, not the
    topic. Counts: windows (judged), too_short (not judged), starved (judged windows without a
    healthy acknowledgement), min_healthy (the fewest in a judged window; 0 when none), and
    ok_GROUP, every acknowledged send per group over the run. Informational: *rejoin*, the time
    from a window's end to the next acknowledgement by the group it took down (restart,
    election, and producers finding the group again; None when it took none again),
    max_rejoin and not_rejoined. ``details["windows"]`` has one row per window, judged or not
    (healthy and down-group acknowledgements, the longest stretch without a healthy one, the
    rejoin).

``membership`` (runs whose history has membership changes: the ``membership`` fault)
    Each step of each change (``f = "membership"``, invoke paired with its completion by
    change, action and node; a step the history never completes is *open*), and each change
    (from its first invoke to its last completion). Per step and per change: its result, how
    long it took, and the acknowledged sends of the changed group during it (sends without a
    group count for every group) with the longest stretch without one. A change is *judged*
    when it overlaps no fault window: with nothing else going on, replacing a replica must not
    stall its group's sends. Valid iff no judged change has a stretch longer than
    ``patience_s`` without an acknowledgement in its group (*stalled*), and no completion
    records fewer voters than the group's first membership record did (*shrunk*: changes
    never go below the starting voters). Counts: changes, added (add-learner ok), promoted,
    removed (remove ok), failed_steps, indeterminate_steps, open_steps, judged, stalled,
    shrunk, max_gap (over judged changes), min_voters. ``details["steps"]`` and
    ``details["changes"]`` have one row each.

``delay`` (the ``delay`` workload: sends whose invoke has ``delay_ms``)
    A *delayed value* is one whose send invoke asked a delay. Each receive of one must carry the
    message's deliver-at property (*missing_deliver_at* otherwise), equal to the time the send
    asked (``deliver_at_ms`` on the invoke), or, for a ``delay=`` send, within [invoke wall clock
    + delay, completion wall clock + delay] (*wrong_deliver_at*); its store timestamp (when the
    copy became visible) must not be below it (*early*); its ``msg_id`` must be the receipt's
    (*wrong_id*). An acknowledgement that names an offset was stored at once, not as a timer:
    legal when its time had passed by then (a send retried across a failover), so only counted
    (*stored_directly*); early or not is what its store timestamp says. An acknowledged delayed
    value never received is *lost*. A value received at two or more positions (its timer fired
    twice) is *stored_twice*; receipts again at the same position are *redeliveries*
    (at-least-once: counted, never invalid). *Lateness*: store timestamp minus deliver-at, per
    value (its first receive). A value is *judged* when no fault window, extended by
    ``settle_s`` after its end (restarts, elections, clients reconnecting), overlaps [due, due
    + ``bound_s``], the due time taken on the run's clock through the receive's wall clock; a
    judged value later than ``bound_s`` is *late*. Valid iff lost, early, stored_twice,
    missing_deliver_at, wrong_deliver_at, wrong_id and late are all 0. Also counts:
    delayed_sends, acknowledged, received, judged, redeliveries, stored_directly, and the
    lateness in ms at p50 / p90 / p99 / max over judged values (``judged_*_ms``) and over every
    received one (``all_*_ms``); ``details["histogram"]`` the lateness distribution, judged or
    not, ``details["latest"]`` the latest values and ``details["by_fault"]`` the lateness of
    the values due during each kind of fault window, in the settling time after one, and with
    no fault near.

``retry`` (the ``retry`` workload, with the group's ``max_attempts`` and retry delays)
    Per value: its receives (``attempt``, and ``topic`` when read from the retry topic), its
    handler outcomes (``ack``: handled; ``nack``: failed) and its dead letters (``read`` ops
    with a ``topic``, from the final read of the dead-letter topics). Invalid, each counted:
    *lost*, an acknowledged value neither handled nor dead-lettered (never received, a failed
    attempt below the last never retried, or its last attempt failed and no dead letter);
    *unverified*, the same when the last attempt failed but there was no final read to find
    the dead letter; *both*, a value handled and dead-lettered (a handler's verdict is a
    function of the value and the attempt, so even a value delivered twice meets one fate);
    *unearned_retries*, a delivery of attempt ``a`` > 1 with no failed attempt ``a - 1`` of the
    value before it (retried without a failure, an attempt skipped); *beyond_max*, a delivery
    past ``max_attempts``; *misplaced*, a first attempt read from another topic than the
    workload's or a retry read from the workload's topic; *wrong_dead_letters*, a dead letter
    that does not say ``max_attempts`` attempts, whose value never failed its last attempt, whose
    last error is not one its last attempt gave, or whose id is not the receipt's; *wrong_id*,
    a delivery whose ``msg_id`` is not the receipt's; *retried_early*, a retry stored before
    the value's first failure of the previous attempt plus the policy's delay. Informational:
    handled_at_N (values handled at attempt N), dead_lettered, duplicate_retries ((value,
    attempt) pairs stored at two or more positions: a failure told to the broker twice, e.g.
    by a consumer that died before committing), duplicate_dead_letters, redeliveries, and the
    retries' lateness past their due time (``retry_late_p50_ms``, ..._max_ms).

Acknowledgements and receives are compared by value, never by ``msg_id``: the value is what the
workload chose, the id is what the system under test claims. Positions are positions in the
workload's topic: a receive or read that names another ``topic`` (a retry, a dead letter) has
none for the checkers that compare positions.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Sequence
from operator import attrgetter
from typing import Any

import attrs

from jepsen.history import (
    ACK,
    FAIL,
    INFO,
    INVOKE,
    MEMBERSHIP,
    NACK,
    OK,
    PHASE,
    READ,
    RECEIVE,
    SEND,
    CheckResult,
    FaultWindow,
    Op,
    fault_windows,
)

#: Examples kept per checker; the counts say how many there were in all.
MAX_EXAMPLES = 30

#: (group, queue, offset).
Position = tuple[str | None, int, int]
#: (group, queue).
Queue = tuple[str | None, int | None]

_by_index = attrgetter("index")


# --- Small helpers ---------------------------------------------------------------------------


def _is_receive(op: Op) -> bool:
    return op.f == RECEIVE and op.type == OK


def _is_ack(op: Op) -> bool:
    return op.f == SEND and op.type == OK


def _position(op: Op) -> Position | None:
    """Its position in the workload's topic (None for one read from another topic)."""
    if op.queue is None or op.offset is None or op.topic is not None:
        return None
    return (op.group, op.queue, op.offset)


def _queue(op: Op) -> Queue:
    return (op.group, op.queue)


def _queue_name(group: str | None, queue: object) -> str:
    return f"{group} queue {queue}" if group is not None else f"queue {queue}"


def _place(position: Position) -> str:
    group, queue, offset = position
    return f"{_queue_name(group, queue)} offset {offset}"


def _where(op: Op) -> str:
    return f"{_queue_name(op.group, op.queue)} offset {op.offset}"


def _at(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _add_example(examples: list[str], line: str) -> None:
    if len(examples) < MAX_EXAMPLES:
        examples.append(line)


class _Cover:
    """The union of some windows, to ask in O(log n) whether a time falls inside any of them."""

    def __init__(self, windows: Iterable[FaultWindow]) -> None:
        merged: list[tuple[float, float]] = []
        for window in sorted(windows, key=attrgetter("start")):
            if merged and window.start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], window.end))
            else:
                merged.append((window.start, window.end))
        self.starts = [start for start, _ in merged]
        self.ends = [end for _, end in merged]

    def __contains__(self, t: float) -> bool:
        i = bisect_right(self.starts, t) - 1
        return i >= 0 and t <= self.ends[i]


# --- summary ---------------------------------------------------------------------------------


def summary(ops: Sequence[Op]) -> CheckResult:
    """What the history holds, by kind of op; always valid."""
    counts: dict[str, int | float] = {"sends": 0, OK: 0, FAIL: 0, INFO: 0, "receives": 0}
    received: set[Any] = set()
    for op in ops:
        if op.f == SEND:
            counts["sends" if op.type == INVOKE else op.type] += 1
        elif _is_receive(op):
            counts["receives"] += 1
            received.add(op.value)
    counts["received_values"] = len(received)
    counts["faults"] = len(fault_windows(ops))
    by_group = _acks_by_group(ops)
    if len(by_group) > 1:
        counts.update({f"ok_{group}": n for group, n in sorted(by_group.items())})
    return CheckResult("summary", True, counts)


def _acks_by_group(ops: Iterable[Op]) -> dict[str, int]:
    """Acknowledged sends per broker group their receipt names (ops without one left out)."""
    found: dict[str, int] = {}
    for op in ops:
        if _is_ack(op) and op.group is not None:
            found[op.group] = found.get(op.group, 0) + 1
    return found


# --- lost ------------------------------------------------------------------------------------


WHEN = {
    "before": "before the first fault",
    "during": "during a fault",
    "after": "after a fault ended",
}


def lost(ops: Sequence[Op]) -> CheckResult:
    """Acknowledged values never received, by when they were acknowledged."""
    acks: dict[Any, Op] = {}
    received: set[Any] = set()
    stored: set[Any] | None = None
    for op in ops:
        if _is_ack(op):
            acks.setdefault(op.value, op)
        elif _is_receive(op):
            received.add(op.value)
        elif op.f == PHASE and op.value == "read":
            stored = set() if stored is None else stored
        elif op.f == READ and op.type == OK and op.topic is None:
            stored = set() if stored is None else stored
            stored.add(op.value)
    windows = fault_windows(ops)
    first_fault = min((w.start for w in windows), default=math.inf)
    faulty = _Cover(windows)

    buckets = {"before": 0, "during": 0, "after": 0}
    examples: list[str] = []
    for value, ack in acks.items():
        if value in received:
            continue
        if ack.time < first_fault:
            when = "before"
        elif ack.time in faulty:
            when = "during"
        else:
            when = "after"
        buckets[when] += 1
        _add_example(
            examples,
            f"{value}: acknowledged at {_at(ack.time)} ({WHEN[when]}) as {_where(ack)}, "
            "never received",
        )
    missing = sum(buckets.values())
    counts: dict[str, int | float] = {"acknowledged": len(acks), "lost": missing}
    counts.update({f"lost_{when}": n for when, n in buckets.items()})
    gone = 0
    if stored is not None:
        for value, ack in acks.items():
            if value not in stored:
                gone += 1
                _add_example(
                    examples,
                    f"{value}: acknowledged at {_at(ack.time)} as {_where(ack)}, "
                    "missing from the final read",
                )
        counts["lost_from_storage"] = gone
    return CheckResult("lost", missing == 0 and gone == 0, counts, examples)


# --- duplicates ------------------------------------------------------------------------------


def duplicates(ops: Sequence[Op]) -> CheckResult:
    """Values stored at two positions, positions received with two values; redeliveries."""
    # Nearly every value sits at exactly one position, so keep one position per value, and a set
    # only for the (invalid, rare) values seen elsewhere too: a set per value would take several
    # times the memory of a history of millions of sends.
    stored_at: dict[Any, Position] = {}
    elsewhere: dict[Any, set[Position]] = {}
    # Likewise the value first received at each position, and the others only on conflict.
    holder: dict[Position, Any] = {}
    intruders: dict[Position, set[Any]] = {}
    redelivered: set[Any] = set()
    redeliveries = 0
    for op in ops:
        received = _is_receive(op)
        p = _position(op) if received or _is_ack(op) else None
        if p is None:
            continue
        if stored_at.setdefault(op.value, p) != p:
            elsewhere.setdefault(op.value, set()).add(p)
        if not received:
            continue
        if p not in holder:
            holder[p] = op.value
        elif holder[p] == op.value or op.value in intruders.get(p, ()):
            redeliveries += 1
            redelivered.add(op.value)
        else:
            intruders.setdefault(p, set()).add(op.value)
    examples: list[str] = []
    for value, others in elsewhere.items():
        places = [stored_at[value], *sorted(others)]
        _add_example(
            examples,
            f"{value}: stored at {len(places)} positions: " + ", ".join(map(_place, places)),
        )
    for p, others in intruders.items():
        values = [holder[p], *sorted(others, key=str)]
        _add_example(
            examples,
            f"{_place(p)}: received with {len(values)} different values: "
            + ", ".join(str(v) for v in values),
        )
    counts: dict[str, int | float] = {
        "duplicated": len(elsewhere),
        "conflicting": len(intruders),
        "redelivered_values": len(redelivered),
        "redeliveries": redeliveries,
    }
    return CheckResult("duplicates", not elsewhere and not intruders, counts, examples)


# --- unexpected ------------------------------------------------------------------------------


def unexpected(ops: Sequence[Op]) -> CheckResult:
    """Received values that no send op names."""
    sent = {op.value for op in ops if op.f == SEND}
    strangers: dict[Any, Op] = {}
    receipts = 0
    for op in ops:
        if _is_receive(op) and op.value not in sent:
            strangers.setdefault(op.value, op)
            receipts += 1
    examples: list[str] = []
    for value, op in strangers.items():
        _add_example(
            examples,
            f"{value!r}: received by {op.process} at {_at(op.time)} from {_where(op)}, never sent",
        )
    counts: dict[str, int | float] = {"unexpected": len(strangers), "unexpected_receives": receipts}
    return CheckResult("unexpected", not strangers, counts, examples)


# --- recovered -------------------------------------------------------------------------------


def recovered(ops: Sequence[Op]) -> CheckResult:
    """What became of indeterminate and failed sends; a failed one received is invalid."""
    # value -> how its send ended; INVOKE while it has not (and for good, if the run died).
    outcome: dict[Any, str] = {}
    completions: dict[Any, Op] = {}
    received: set[Any] = set()
    for op in ops:
        if op.f == SEND:
            if op.type == INVOKE:
                outcome.setdefault(op.value, INVOKE)
            else:
                outcome[op.value] = op.type
                completions[op.value] = op
        elif _is_receive(op):
            received.add(op.value)

    indeterminate = [value for value, how in outcome.items() if how in (INFO, INVOKE)]
    failed = [value for value, how in outcome.items() if how == FAIL]
    back = sum(1 for value in indeterminate if value in received)
    stored_anyway = [value for value in failed if value in received]
    examples: list[str] = []
    for value in stored_anyway:
        op = completions[value]
        _add_example(
            examples,
            f"{value}: failed at {_at(op.time)} ({op.error or 'no error given'}), received anyway",
        )
    counts: dict[str, int | float] = {
        "indeterminate": len(indeterminate),
        "recovered": back,
        "indeterminate_lost": len(indeterminate) - back,
        "failed": len(failed),
        "failed_but_stored": len(stored_anyway),
    }
    return CheckResult("recovered", not stored_anyway, counts, examples)


# --- order -----------------------------------------------------------------------------------


def order(ops: Sequence[Op], fifo: bool = False) -> CheckResult:
    """Storage order per producer and queue, first-delivery order per queue (and per key)."""
    in_history_order = sorted(ops, key=_by_index)
    invoked_at: dict[Any, int] = {}
    acks: list[Op] = []
    receives: list[Op] = []
    for op in in_history_order:
        if op.f == SEND and op.type == INVOKE:
            invoked_at.setdefault(op.value, op.index)
        elif _position(op) is not None:
            if _is_ack(op):
                acks.append(op)
            elif _is_receive(op):
                receives.append(op)
    # Producers send one at a time, so acknowledgement order is send order; sort by the invoke
    # anyway, which is what "the order it sent them" means even for a misbehaving producer.
    acks.sort(key=lambda op: invoked_at.get(op.value, op.index))
    first_receipts = _first_receipts(receives)

    examples: list[str] = []
    storage = _regressions(acks, lambda op: (op.process, op.group, op.queue))
    for op, above in storage:
        _add_example(
            examples,
            f"storage: {op.process} sent {op.value} after {above.value}, but it was stored at "
            f"{_where(op)}, not after offset {above.offset}",
        )
    delivery = _regressions(first_receipts, _queue)
    for op, above in delivery:
        _add_example(examples, "delivery: " + _delivered_late(op, above))
    counts: dict[str, int | float] = {
        "storage_order": len(storage),
        "delivery_order": len(delivery),
    }
    if fifo:
        keyed = [op for op in first_receipts if op.key is not None]
        key_delivery = _regressions(keyed, lambda op: (op.group, op.queue, op.key))
        for op, above in key_delivery:
            _add_example(examples, f"key delivery: key {op.key}: " + _delivered_late(op, above))
        key_storage = _key_order([op for op in acks if op.key is not None], examples)
        counts["key_delivery_order"] = len(key_delivery)
        counts["key_order"] = key_storage
    valid = not any(counts.values())
    return CheckResult("order", valid, counts, examples)


def _regressions(ops: Iterable[Op], group: Callable[[Op], Hashable]) -> list[tuple[Op, Op]]:
    """Each op (taken in the given order) whose offset is not above the largest offset of the
    earlier ops of its group, paired with the op that holds that largest offset."""
    highest: dict[Hashable, tuple[int, Op]] = {}
    found: list[tuple[Op, Op]] = []
    for op in ops:
        if op.offset is None:
            continue
        g = group(op)
        top = highest.get(g)
        if top is None or op.offset > top[0]:
            highest[g] = (op.offset, op)
        else:
            found.append((op, top[1]))
    return found


def _first_receipts(receives: Iterable[Op]) -> list[Op]:
    seen: set[Position] = set()
    first: list[Op] = []
    for op in receives:
        p = _position(op)
        if p is not None and p not in seen:
            seen.add(p)
            first.append(op)
    return first


def _delivered_late(op: Op, above: Op) -> str:
    return (
        f"{_where(op)} ({op.value}) first received by {op.process} at {_at(op.time)}, after "
        f"offset {above.offset} ({above.value}) by {above.process} at {_at(above.time)}"
    )


def _key_order(acks: Sequence[Op], examples: list[str]) -> int:
    """How many of a FIFO topic's acknowledged sends (in send order) left their key's queue or
    were stored before an earlier send of their key."""
    home: dict[Any, Op] = {}
    at_home: list[Op] = []
    strays = 0
    for op in acks:
        first = home.setdefault(op.key, op)
        if _queue(op) == _queue(first):
            at_home.append(op)
            continue
        strays += 1
        _add_example(
            examples,
            f"key order: key {op.key}: {op.value} stored in {_queue_name(op.group, op.queue)}, "
            f"but the key's first send {first.value} in {_queue_name(first.group, first.queue)}",
        )
    behind = _regressions(at_home, attrgetter("key"))
    for op, above in behind:
        _add_example(
            examples,
            f"key order: key {op.key}: {op.value} stored at {_where(op)}, not after "
            f"{above.value} at offset {above.offset}",
        )
    return strays + len(behind)


# --- availability ----------------------------------------------------------------------------


def availability(ops: Sequence[Op]) -> CheckResult:
    """Per fault window, the longest stretch without an acknowledgement and the recovery."""
    acked = sorted(op.time for op in ops if _is_ack(op))
    sends = [op for op in ops if op.f == SEND]
    rows: list[dict[str, Any]] = []
    for window in fault_windows(ops):
        inside = acked[bisect_left(acked, window.start) : bisect_right(acked, window.end)]
        # An acknowledgement exactly at the end counts as immediate recovery (0 s).
        following = bisect_left(acked, window.end)
        rows.append(
            {
                "window": window.window,
                "fault": window.fault,
                "targets": list(window.targets),
                "group": window.group,
                "start": window.start,
                "end": window.end,
                "ended": window.ended,
                "longest_gap": _longest_gap(window.start, inside, window.end),
                "recovery": acked[following] - window.end if following < len(acked) else None,
            }
        )
    overall = 0.0
    if sends:
        began = min((op.time for op in sends if op.type == INVOKE), default=sends[0].time)
        ended = max(op.time for op in sends)
        overall = _longest_gap(
            began, acked[bisect_left(acked, began) : bisect_right(acked, ended)], ended
        )
    recoveries = [row["recovery"] for row in rows if row["recovery"] is not None]
    counts: dict[str, int | float] = {
        "windows": len(rows),
        "max_gap": max((row["longest_gap"] for row in rows), default=0.0),
        "max_recovery": max(recoveries, default=0.0),
        "unrecovered": len(rows) - len(recoveries),
        "longest_gap": overall,
    }
    examples: list[str] = []
    valid = bool(acked) or not sends
    if not valid:
        examples.append(f"none of the {len(sends)} send ops is an acknowledgement")
    return CheckResult("availability", valid, counts, examples, {"windows": rows})


def _longest_gap(start: float, times: Sequence[float], end: float) -> float:
    """The longest stretch of [start, end] between consecutive sorted times (or either end)."""
    longest = 0.0
    previous = start
    for t in times:
        longest = max(longest, t - previous)
        previous = t
    return max(longest, end - previous)


# --- membership -------------------------------------------------------------------------------


def membership(ops: Sequence[Op], patience_s: float = 0.0) -> CheckResult:
    """Each membership change step and change: result, duration, sends acknowledged meanwhile."""
    acked: dict[str | None, list[float]] = {}
    for op in ops:
        if _is_ack(op):
            acked.setdefault(op.group, []).append(op.time)
    every = sorted(t for times in acked.values() for t in times)

    def acks_of(group: str | None) -> list[float]:
        if group is None:
            return every
        return sorted([*acked.get(group, []), *acked.get(None, [])])

    end_of_history = max((op.time for op in ops), default=0.0)
    opened: dict[tuple[Any, Any, Any], Op] = {}
    steps: list[dict[str, Any]] = []
    for op in sorted((o for o in ops if o.f == MEMBERSHIP), key=attrgetter("index")):
        value = op.value if isinstance(op.value, dict) else {}
        key = (value.get("change"), value.get("action"), value.get("node"))
        if op.type == INVOKE:
            opened[key] = op
        elif key in opened:
            steps.append(_step_row(opened.pop(key), op, value))
    for invoke in opened.values():
        steps.append(_step_row(invoke, None, invoke.value, end_of_history))
    steps.sort(key=lambda row: (row["start"], row["end"]))
    windows = fault_windows(ops)
    changes: dict[Any, dict[str, Any]] = {}
    for row in steps:
        times = acks_of(row["group"])
        inside = times[bisect_left(times, row["start"]) : bisect_right(times, row["end"])]
        row["acknowledged"] = len(inside)
        row["longest_gap"] = round(_longest_gap(row["start"], inside, row["end"]), 6)
        change = changes.setdefault(
            row["change"],
            {"change": row["change"], "group": row["group"], "start": row["start"], "end": 0.0},
        )
        change["start"] = min(change["start"], row["start"])
        change["end"] = max(change["end"], row["end"])
        change.setdefault("steps", []).append(f"{row['action']} {row['node']}: {row['result']}")
    examples: list[str] = []
    stalled = 0
    max_gap = 0.0
    for change in changes.values():
        times = acks_of(change["group"])
        inside = times[bisect_left(times, change["start"]) : bisect_right(times, change["end"])]
        gap = _longest_gap(change["start"], inside, change["end"])
        overlapping = [
            w.window
            for w in windows
            if w.start <= change["end"]
            and w.end >= change["start"]
            and (w.group is None or change["group"] is None or w.group == change["group"])
        ]
        change.update(
            acknowledged=len(inside),
            longest_gap=round(gap, 6),
            took_s=round(change["end"] - change["start"], 6),
            fault_windows=overlapping,
            judged=not overlapping,
        )
        if not overlapping:
            max_gap = max(max_gap, gap)
            if gap > patience_s:
                stalled += 1
                _add_example(
                    examples,
                    f"change {change['change']} ({change['group']}, {_at(change['start'])} to "
                    f"{_at(change['end'])}, no fault window): {gap:.3f} s without an "
                    "acknowledged send in its group",
                )
    first_voters: dict[Any, int] = {}
    shrunk = 0
    for row in steps:
        if row["voters"] is None:
            continue
        baseline = first_voters.setdefault(row["group"], len(row["voters"]))
        if len(row["voters"]) < baseline:
            shrunk += 1
            _add_example(
                examples,
                f"change {row['change']} {row['action']} {row['node']}: voters "
                f"{row['voters']}, fewer than the {baseline} the group started with",
            )

    def counted(action: str, result: str = OK) -> int:
        return sum(1 for row in steps if row["action"] == action and row["result"] == result)

    all_voters = [len(row["voters"]) for row in steps if row["voters"] is not None]
    counts: dict[str, int | float] = {
        "changes": len(changes),
        "added": counted("add-learner"),
        "promoted": counted("promote"),
        "removed": counted("remove"),
        "failed_steps": sum(1 for row in steps if row["result"] == FAIL),
        "indeterminate_steps": sum(1 for row in steps if row["result"] == INFO),
        "open_steps": sum(1 for row in steps if row["result"] == "open"),
        "judged": sum(1 for change in changes.values() if change["judged"]),
        "stalled": stalled,
        "shrunk": shrunk,
        "max_gap": round(max_gap, 6),
        "min_voters": min(all_voters, default=0),
    }
    return CheckResult(
        "membership",
        stalled == 0 and shrunk == 0,
        counts,
        examples,
        {"steps": steps, "changes": list(changes.values())},
    )


def _step_row(
    invoke: Op, completion: Op | None, value: dict[str, Any], end: float | None = None
) -> dict[str, Any]:
    voters = value.get("voters") if completion is not None else None
    return {
        "change": value.get("change"),
        "action": value.get("action"),
        "node": value.get("node"),
        "group": value.get("group", invoke.group),
        "start": invoke.time,
        "end": completion.time if completion is not None else (end or invoke.time),
        "took_s": round(
            (completion.time if completion is not None else (end or invoke.time)) - invoke.time,
            6,
        ),
        "result": completion.type if completion is not None else "open",
        "error": completion.error if completion is not None else None,
        "voters": list(voters) if isinstance(voters, list) else None,
        "learners": list(value.get("learners") or []) if completion is not None else None,
    }


# --- delay ---------------------------------------------------------------------------------


@attrs.frozen
class OnTime:
    """When the ``delay`` checker calls a delayed message late."""

    #: Later than this (store timestamp past deliver-at) is late, when judged.
    bound_s: float = 1.0
    #: After a fault window's end the cluster may still be recovering this long: not judged.
    settle_s: float = 5.0


#: Upper ends (ms) of the lateness histogram's buckets (the last is open).
LATENESS_BUCKETS_MS = (0, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 30000)


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank; 0 for no values."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _spread(prefix: str, values: Iterable[float]) -> dict[str, int | float]:
    ordered = sorted(values)
    return {
        f"{prefix}_p50_ms": _percentile(ordered, 50),
        f"{prefix}_p90_ms": _percentile(ordered, 90),
        f"{prefix}_p99_ms": _percentile(ordered, 99),
        f"{prefix}_max_ms": ordered[-1] if ordered else 0,
    }


def _bucket_label(index: int) -> str:
    if index == 0:
        return "<= 0 ms"
    if index == len(LATENESS_BUCKETS_MS):
        return f"> {LATENESS_BUCKETS_MS[-1]} ms"
    return f"{LATENESS_BUCKETS_MS[index - 1] + 1}-{LATENESS_BUCKETS_MS[index]} ms"


class _Extended(_Cover):
    """Fault windows, each extended by ``settle_s`` after its end: does [a, b] meet one?"""

    def __init__(self, windows: Iterable[FaultWindow], settle_s: float) -> None:
        super().__init__(attrs.evolve(w, end=w.end + settle_s) for w in windows)

    def meets(self, a: float, b: float) -> bool:
        # The last merged window starting at or before b: does it reach a?
        i = bisect_right(self.starts, b) - 1
        return i >= 0 and self.ends[i] >= a


def delay(ops: Sequence[Op], on_time: OnTime = OnTime()) -> CheckResult:
    """Delayed messages: delivered, never early, once per timer, on time outside faults."""
    invokes: dict[Any, Op] = {}
    completions: dict[Any, Op] = {}
    receives: dict[Any, list[Op]] = {}
    for op in sorted(ops, key=_by_index):
        if op.f == SEND:
            if op.type == INVOKE:
                if op.delay_ms is not None:
                    invokes.setdefault(op.value, op)
            elif op.value in invokes:
                completions[op.value] = op
        elif _is_receive(op):
            receives.setdefault(op.value, []).append(op)
    windows = fault_windows(ops)
    cover = _Extended(windows, on_time.settle_s)
    starts = [w.start for w in windows]
    by_when: dict[str, list[float]] = {}
    bound_ms = on_time.bound_s * 1000
    examples: list[str] = []
    counts: dict[str, int | float] = dict.fromkeys(
        (
            "lost",
            "early",
            "stored_twice",
            "missing_deliver_at",
            "wrong_deliver_at",
            "wrong_id",
            "late",
            "judged",
            "redeliveries",
            "stored_directly",
        ),
        0,
    )
    judged_ms: list[float] = []
    all_ms: list[float] = []
    histogram = [[0, 0] for _ in range(len(LATENESS_BUCKETS_MS) + 1)]
    rows: list[dict[str, Any]] = []
    for value, invoke in invokes.items():
        done = completions.get(value)
        acked = done is not None and done.type == OK
        if acked and done is not None and done.offset is not None:
            counts["stored_directly"] += 1
        got = receives.get(value, [])
        if not got:
            if acked:
                counts["lost"] += 1
                assert done is not None
                _add_example(
                    examples, f"{value}: acknowledged at {_at(done.time)}, never delivered"
                )
            continue
        positions: dict[tuple[Any, ...], int] = {}
        for op in got:
            positions[(op.group, op.queue, op.offset)] = (
                positions.get((op.group, op.queue, op.offset), 0) + 1
            )
            _check_delayed_receive(op, invoke, done, examples, counts)
        counts["redeliveries"] += sum(n - 1 for n in positions.values())
        if len(positions) > 1:
            counts["stored_twice"] += 1
            _add_example(
                examples,
                f"{value}: delivered from {len(positions)} positions (its timer fired more "
                "than once): " + ", ".join(_where(op) for op in _firsts(got)),
            )
        first = got[0]
        if first.stored_ms is None or first.deliver_at_ms is None:
            continue
        lateness = first.stored_ms - first.deliver_at_ms
        all_ms.append(lateness)
        judged = False
        when = "no wall clock"
        if first.wall_ms is not None:
            due = first.time - (first.wall_ms - first.deliver_at_ms) / 1000
            judged = not cover.meets(due, due + on_time.bound_s)
            when = "no fault near" if judged else _near(windows, starts, due, on_time)
        by_when.setdefault(when, []).append(lateness)
        bucket = bisect_left(LATENESS_BUCKETS_MS, lateness)
        histogram[bucket][0 if judged else 1] += 1
        if judged:
            counts["judged"] += 1
            judged_ms.append(lateness)
            if lateness > bound_ms:
                counts["late"] += 1
                _add_example(
                    examples,
                    f"{value}: visible {lateness} ms after its time (due at about "
                    f"{_at(due)}, no fault near it), more than {bound_ms:g} ms",
                )
        rows.append(
            {
                "value": value,
                "lateness_ms": lateness,
                "judged": judged,
                "due": when,
                "received": first.time,
            }
        )
    failures = (
        "lost",
        "early",
        "stored_twice",
        "missing_deliver_at",
        "wrong_deliver_at",
        "wrong_id",
        "late",
    )
    valid = not any(counts[name] for name in failures)
    acknowledged = sum(1 for v in invokes if (c := completions.get(v)) is not None and c.type == OK)
    result_counts: dict[str, int | float] = {
        "delayed_sends": len(invokes),
        "acknowledged": acknowledged,
        "received": sum(1 for v in invokes if v in receives),
        **counts,
        **_spread("judged", judged_ms),
        **_spread("all", all_ms),
    }
    rows.sort(key=lambda row: -row["lateness_ms"])
    details = {
        "histogram": [
            {"lateness": _bucket_label(i), "judged": judged_n, "not_judged": other_n}
            for i, (judged_n, other_n) in enumerate(histogram)
        ],
        "latest": rows[:20],
        "by_fault": [
            {"due": when, "values": len(values), **_spread("lateness", values)}
            for when, values in sorted(by_when.items())
        ],
    }
    return CheckResult("delay", valid, result_counts, examples, details)


def _near(
    windows: Sequence[FaultWindow], starts: Sequence[float], due: float, on_time: OnTime
) -> str:
    """Which fault window a value due at ``due`` was not judged for: due during it, or in
    the settling time after it."""
    i = bisect_right(starts, due + on_time.bound_s) - 1
    while i >= 0:
        window = windows[i]
        if window.end + on_time.settle_s >= due:
            return f"{'during' if due <= window.end else 'settling after'} {window.fault}"
        i -= 1
    return "near a fault"


def _firsts(receives: Sequence[Op]) -> list[Op]:
    """The first receive at each position."""
    seen: set[tuple[Any, ...]] = set()
    firsts = []
    for op in receives:
        place = (op.group, op.queue, op.offset)
        if place not in seen:
            seen.add(place)
            firsts.append(op)
    return firsts


def _check_delayed_receive(
    op: Op, invoke: Op, done: Op | None, examples: list[str], counts: dict[str, int | float]
) -> None:
    """One receive of a delayed value: its deliver-at, its store time, its id."""
    value = op.value
    if done is not None and done.type == OK and done.msg_id and op.msg_id != done.msg_id:
        counts["wrong_id"] += 1
        _add_example(
            examples, f"{value}: delivered as {op.msg_id}, but its receipt said {done.msg_id}"
        )
    at = op.deliver_at_ms
    if at is None:
        counts["missing_deliver_at"] += 1
        _add_example(examples, f"{value}: delivered at {_where(op)} without its deliver-at time")
        return
    if invoke.deliver_at_ms is not None:
        wrong = at != invoke.deliver_at_ms
        asked = f"{invoke.deliver_at_ms}"
    else:
        assert invoke.delay_ms is not None
        low = (invoke.wall_ms or 0) + invoke.delay_ms
        high = done.wall_ms + invoke.delay_ms if done is not None and done.wall_ms else None
        wrong = at < low or (high is not None and at > high)
        asked = f"{low}..{high if high is not None else ''}"
    if wrong:
        counts["wrong_deliver_at"] += 1
        _add_example(examples, f"{value}: deliver-at {at}, but the send asked {asked}")
    if op.stored_ms is not None and op.stored_ms < at:
        counts["early"] += 1
        _add_example(
            examples,
            f"{value}: visible at {op.stored_ms}, {at - op.stored_ms} ms before its time {at} "
            f"({_where(op)}, received by {op.process} at {_at(op.time)})",
        )


# --- retry -----------------------------------------------------------------------------------


@attrs.frozen
class RetryRules:
    """The consumer group's retry policy the ``retry`` workload set."""

    max_attempts: int = 3
    #: The wait before each retry, ms; the last one repeats.
    delays_ms: tuple[int, ...] = (200, 1000)

    def delay_before(self, attempt: int) -> int:
        """The wait before delivery number ``attempt`` (2 or more)."""
        return self.delays_ms[min(attempt - 2, len(self.delays_ms) - 1)]


@attrs.define
class _Fate:
    """What the history says became of one value in the retry workload."""

    receives: list[Op] = attrs.Factory(list)
    handled: list[Op] = attrs.Factory(list)
    #: attempt -> the nacks of that attempt.
    failed: dict[int, list[Op]] = attrs.Factory(dict)
    dead_letters: list[Op] = attrs.Factory(list)


def retry(ops: Sequence[Op], rules: RetryRules = RetryRules()) -> CheckResult:
    """Every acknowledged send handled or dead-lettered after exactly max_attempts attempts,
    never both; attempts counting up one at a time, each after a failure."""
    acks: dict[Any, Op] = {}
    fates: dict[Any, _Fate] = {}
    read_done = False
    for op in sorted(ops, key=_by_index):
        if _is_ack(op):
            acks.setdefault(op.value, op)
        elif op.f == PHASE and op.value == "read":
            read_done = True
        elif op.type != OK:
            continue
        elif op.f == RECEIVE:
            fates.setdefault(op.value, _Fate()).receives.append(op)
        elif op.f == ACK:
            fates.setdefault(op.value, _Fate()).handled.append(op)
        elif op.f == NACK:
            fate = fates.setdefault(op.value, _Fate())
            fate.failed.setdefault(op.attempt or 0, []).append(op)
        elif op.f == READ and op.topic is not None:
            read_done = True
            fates.setdefault(op.value, _Fate()).dead_letters.append(op)
    last = rules.max_attempts
    names = (
        "lost",
        "unverified",
        "both",
        "unearned_retries",
        "beyond_max",
        "misplaced",
        "wrong_dead_letters",
        "wrong_id",
        "retried_early",
    )
    counts: dict[str, int | float] = dict.fromkeys(names, 0)
    info: dict[str, int | float] = {f"handled_at_{n}": 0 for n in range(1, last + 1)}
    info.update(dead_lettered=0, duplicate_retries=0, duplicate_dead_letters=0, redeliveries=0)
    examples: list[str] = []
    retry_late: list[float] = []
    for value in sorted({*acks, *fates}, key=str):
        fate = fates.get(value, _Fate())
        ack = acks.get(value)
        _check_deliveries(value, fate, ack, rules, counts, info, examples, retry_late)
        handled = bool(fate.handled)
        dead = bool(fate.dead_letters)
        if handled:
            at = min(op.attempt or 0 for op in fate.handled)
            if 1 <= at <= last:
                info[f"handled_at_{at}"] += 1
        if dead:
            info["dead_lettered"] += 1
            info["duplicate_dead_letters"] += int(len(fate.dead_letters) > 1)
            _check_dead_letters(value, fate, ack, last, counts, examples)
        if handled and dead:
            counts["both"] += 1
            _add_example(
                examples,
                f"{value}: handled at attempt {min(op.attempt or 0 for op in fate.handled)} "
                f"and dead-lettered ({fate.dead_letters[0].group} offset "
                f"{fate.dead_letters[0].offset})",
            )
        if ack is None or handled or dead:
            continue
        failed_last = any(attempt >= last for attempt in fate.failed)
        if failed_last and not read_done:
            counts["unverified"] += 1
            _add_example(
                examples,
                f"{value}: failed its last attempt; no final read looked for its dead letter",
            )
            continue
        counts["lost"] += 1
        _add_example(examples, f"{value}: acknowledged at {_at(ack.time)}, " + _stuck(fate, last))
    valid = not any(counts.values())
    counts.update(info)
    counts.update(
        {
            key.replace("retry_", "retry_late_", 1): number
            for key, number in _spread("retry", retry_late).items()
        }
    )
    counts["acknowledged"] = len(acks)
    fate_rows = [
        {"fate": f"handled at attempt {n}", "values": info[f"handled_at_{n}"]}
        for n in range(1, last + 1)
    ] + [{"fate": "dead-lettered", "values": info["dead_lettered"]}]
    return CheckResult("retry", valid, counts, examples, {"fates": fate_rows})


def _stuck(fate: _Fate, last: int) -> str:
    """Where an acknowledged value that was neither handled nor dead-lettered stopped."""
    if not fate.receives:
        return "never delivered"
    failed = max(fate.failed, default=0)
    if failed >= last:
        return f"failed its last attempt ({failed}), and no dead letter holds it"
    if failed:
        return f"failed attempt {failed}, and attempt {failed + 1} was never delivered"
    return "delivered, but no handler outcome was recorded"


def _check_deliveries(
    value: Any,
    fate: _Fate,
    ack: Op | None,
    rules: RetryRules,
    counts: dict[str, int | float],
    info: dict[str, int | float],
    examples: list[str],
    retry_late: list[float],
) -> None:
    """Each delivery of one value: its attempt earned by a failure, its topic, id and time."""
    places: dict[int, dict[tuple[Any, ...], int]] = {}
    for op in fate.receives:
        attempt = op.attempt or 0
        where = places.setdefault(attempt, {})
        place = (op.topic, op.group, op.queue, op.offset)
        where[place] = where.get(place, 0) + 1
        if ack is not None and ack.msg_id and op.msg_id != ack.msg_id:
            counts["wrong_id"] += 1
            _add_example(
                examples,
                f"{value}: attempt {attempt} delivered as {op.msg_id}, but its receipt said "
                f"{ack.msg_id}",
            )
        if (attempt == 1) != (op.topic is None):
            counts["misplaced"] += 1
            _add_example(
                examples,
                f"{value}: attempt {attempt} read from {op.topic or 'the workload topic'}",
            )
        if attempt > rules.max_attempts:
            counts["beyond_max"] += 1
            _add_example(
                examples,
                f"{value}: delivered for attempt {attempt}, past max_attempts {rules.max_attempts}",
            )
        if attempt == 1:
            continue
        before = [nack for nack in fate.failed.get(attempt - 1, []) if nack.index < op.index]
        if attempt < 1 or not before:
            counts["unearned_retries"] += 1
            _add_example(
                examples,
                f"{value}: attempt {attempt} delivered at {_at(op.time)} by {op.process}, "
                f"but attempt {attempt - 1} had not failed",
            )
            continue
        failed_ms = min((n.wall_ms for n in before if n.wall_ms is not None), default=None)
        if op.stored_ms is not None and failed_ms is not None:
            due = failed_ms + rules.delay_before(attempt)
            retry_late.append(op.stored_ms - due)
            if op.stored_ms < due:
                counts["retried_early"] += 1
                _add_example(
                    examples,
                    f"{value}: attempt {attempt} stored at {op.stored_ms}, "
                    f"{due - op.stored_ms} ms before attempt {attempt - 1}'s failure "
                    f"({failed_ms}) plus the delay {rules.delay_before(attempt)} ms",
                )
    for where in places.values():
        info["redeliveries"] += sum(n - 1 for n in where.values())
        info["duplicate_retries"] += int(len(where) > 1)


def _check_dead_letters(
    value: Any,
    fate: _Fate,
    ack: Op | None,
    last: int,
    counts: dict[str, int | float],
    examples: list[str],
) -> None:
    errors = {nack.error for nack in fate.failed.get(last, [])}
    for letter in fate.dead_letters:
        problems = []
        if letter.attempt != last:
            problems.append(f"says {letter.attempt} attempts, not {last}")
        if not errors:
            problems.append(f"its attempt {last} never failed")
        elif letter.error not in errors:
            problems.append(f"its last error {letter.error!r} is not its last attempt's")
        if ack is not None and ack.msg_id and letter.msg_id != ack.msg_id:
            problems.append(f"its id {letter.msg_id} is not the receipt's {ack.msg_id}")
        if problems:
            counts["wrong_dead_letters"] += 1
            _add_example(
                examples,
                f"{value}: dead letter at {letter.group} offset {letter.offset}: "
                + "; ".join(problems),
            )


# --- All of them -----------------------------------------------------------------------------


def fifo_exclusive(ops: Sequence[Op]) -> CheckResult:
    """Overlapping holdings of one queue by two consumers (receive to ack)."""
    received: dict[tuple[str, Position | None], Op] = {}
    holdings: dict[Queue, list[tuple[float, float, str, Op]]] = {}
    for op in sorted(ops, key=attrgetter("index")):
        if _is_receive(op):
            received[(op.process, _position(op))] = op
        elif op.f == ACK and op.type == OK:
            start = received.pop((op.process, _position(op)), None)
            if start is not None:
                holdings.setdefault(_queue(op), []).append((start.time, op.time, op.process, start))
    examples: list[str] = []
    overlaps = 0
    for queue, spans in holdings.items():
        spans.sort(key=lambda span: span[0])
        latest: tuple[float, float, str, Op] | None = None  # the span reaching furthest so far
        for span in spans:
            if latest is not None and span[0] < latest[1] and span[2] != latest[2]:
                overlaps += 1
                _add_example(
                    examples,
                    f"{_queue_name(*queue)}: {span[2]} received offset {span[3].offset} at "
                    f"{_at(span[0])} while {latest[2]} held offset {latest[3].offset} "
                    f"until {_at(latest[1])}",
                )
            if latest is None or span[1] > latest[1]:
                latest = span
    count = sum(len(spans) for spans in holdings.values())
    return CheckResult(
        "fifo_exclusive", overlaps == 0, {"holdings": count, "overlaps": overlaps}, examples
    )


def group_independence(ops: Sequence[Op], patience_s: float = 0.0) -> CheckResult:
    """While a fault keeps one broker group's majority down, the others acknowledge unkeyed
    sends: each such window longer than ``patience_s`` has at least one acknowledgement from
    another group."""
    healthy_times: dict[str, list[float]] = {}
    #: Every acknowledgement per group, keyed or not: when the group took sends again.
    ack_times: dict[str, list[float]] = {}
    for op in ops:
        if _is_ack(op) and op.group is not None:
            ack_times.setdefault(op.group, []).append(op.time)
            if op.key is None:
                healthy_times.setdefault(op.group, []).append(op.time)
    for times in [*healthy_times.values(), *ack_times.values()]:
        times.sort()
    sends = [op for op in ops if op.f == SEND]
    began = min((op.time for op in sends if op.type == INVOKE), default=math.inf)
    ended = max((op.time for op in sends), default=-math.inf)
    rows: list[dict[str, Any]] = []
    examples: list[str] = []
    for window in fault_windows(ops):
        if not window.majority_down or window.group is None:
            continue
        if window.end < began or window.start > ended:
            continue  # no producer was running: nothing to judge
        judged = window.end - window.start > patience_s
        own = ack_times.get(window.group, [])
        back = bisect_left(own, window.end)
        inside = {
            group: times[bisect_left(times, window.start) : bisect_right(times, window.end)]
            for group, times in healthy_times.items()
        }
        healthy = sorted(
            t for group, times in inside.items() if group != window.group for t in times
        )
        rows.append(
            {
                "window": window.window,
                "fault": window.fault,
                "group": window.group,
                "targets": list(window.targets),
                "start": window.start,
                "end": window.end,
                "judged": judged,
                "healthy_acks": len(healthy),
                "down_group_acks": len(inside.get(window.group, [])),
                "longest_healthy_gap": _longest_gap(window.start, healthy, window.end),
                "rejoin": own[back] - window.end if back < len(own) else None,
            }
        )
        if judged and not healthy:
            _add_example(
                examples,
                f"window {window.window}: {window.fault} of {', '.join(map(str, window.targets))} "
                f"took {window.group}'s majority away from {_at(window.start)} to "
                f"{_at(window.end)}, and no other group acknowledged an unkeyed send meanwhile",
            )
    judged_rows = [row for row in rows if row["judged"]]
    starved = sum(1 for row in judged_rows if row["healthy_acks"] == 0)
    counts: dict[str, int | float] = {
        "windows": len(judged_rows),
        "too_short": len(rows) - len(judged_rows),
        "starved": starved,
        "min_healthy": min((row["healthy_acks"] for row in judged_rows), default=0),
        "max_rejoin": max(
            (row["rejoin"] for row in rows if row["rejoin"] is not None), default=0.0
        ),
        "not_rejoined": sum(1 for row in rows if row["rejoin"] is None),
    }
    counts.update({f"ok_{group}": n for group, n in sorted(_acks_by_group(ops).items())})
    return CheckResult("group_independence", starved == 0, counts, examples, {"windows": rows})


def check_all(
    ops: Sequence[Op],
    fifo: bool = False,
    groups: int = 1,
    patience_s: float = 0.0,
    on_time: OnTime | None = None,
    retry_rules: RetryRules | None = None,
) -> list[CheckResult]:
    """Every checker, summary first, in the order the module docstring lists them;
    ``group_independence`` (with ``patience_s``) when there are several broker ``groups``
    (unless ``fifo``: keyed sends wait for their own group); ``membership`` (with
    ``patience_s``) when the history has membership changes; ``delay`` with ``on_time`` (the
    ``delay`` workload); ``retry`` with ``retry_rules`` (the ``retry`` workload)."""
    results = [
        summary(ops),
        lost(ops),
        duplicates(ops),
        unexpected(ops),
        recovered(ops),
        order(ops, fifo),
    ]
    if fifo:
        results.append(fifo_exclusive(ops))
    results.append(availability(ops))
    if groups > 1 and not fifo:
        results.append(group_independence(ops, patience_s))
    if any(op.f == MEMBERSHIP for op in ops):
        results.append(membership(ops, patience_s))
    if on_time is not None:
        results.append(delay(ops, on_time))
    if retry_rules is not None:
        results.append(retry(ops, retry_rules))
    return results
