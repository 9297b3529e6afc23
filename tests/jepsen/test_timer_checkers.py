"""The ``delay`` and ``retry`` checkers on small hand-built histories: each case that must pass
and each that must fail; and the generic checkers on those workloads' histories (a delayed
send has no offset; a retry's position is in the retry topic, a dead letter's in the
dead-letter topic)."""

from __future__ import annotations

from typing import Any

from jepsen.checkers import OnTime, RetryRules, check_all, delay, duplicates, lost, retry
from jepsen.history import ACK, FAULT, INFO, INVOKE, NACK, OK, PHASE, READ, RECEIVE, SEND, History
from jepsen.report import render_report

RETRY_TOPIC = "%RETRY%jepsen-checker"
DLQ_TOPIC = "%DLQ%jepsen-checker"
RULES = RetryRules(3, (200, 1000))


class Timeline:
    """A history whose run clock starts at wall clock ``EPOCH_MS``: ``at`` seconds of the run
    are ``EPOCH_MS + 1000 * at`` on the wall clock, as for a real run's ops."""

    EPOCH_MS = 1_000_000

    def __init__(self) -> None:
        self.history = History()

    def wall(self, at: float) -> int:
        return self.EPOCH_MS + round(at * 1000)

    def add(self, at: float, process: str, type: str, f: str, **fields: Any) -> Timeline:
        self.history.add(at, process, type, f, **fields)
        return self

    @property
    def ops(self) -> list[Any]:
        return self.history.ops

    # -- delay -----------------------------------------------------------------------------

    def delayed(
        self,
        value: str,
        at: float,
        delay_s: float,
        deliver_at: bool = False,
        acked_after: float = 0.01,
        offset: int | None = None,
    ) -> Timeline:
        """A delayed send invoked at ``at``, acknowledged ``acked_after`` later."""
        fields: dict[str, Any] = {"delay_ms": round(delay_s * 1000), "wall_ms": self.wall(at)}
        if deliver_at:
            fields["deliver_at_ms"] = self.wall(at + delay_s)
        self.add(at, "p0", INVOKE, SEND, value=value, **fields)
        done = at + acked_after
        return self.add(
            done,
            "p0",
            OK,
            SEND,
            value=value,
            group="broker-a",
            queue=0,
            offset=offset,
            msg_id=f"broker-a:{value}",
            wall_ms=self.wall(done),
        )

    def delivered(
        self,
        value: str,
        due: float,
        late_s: float = 0.005,
        offset: int = 0,
        deliver_at_ms: int | None | str = "due",
        msg_id: str | None = None,
        after_s: float = 0.002,
    ) -> Timeline:
        """A receive of ``value`` due at run time ``due``, visible ``late_s`` after it."""
        visible = due + late_s
        received = visible + after_s
        at_ms = self.wall(due) if deliver_at_ms == "due" else deliver_at_ms
        return self.add(
            received,
            "c0",
            OK,
            RECEIVE,
            value=value,
            group="broker-a",
            queue=0,
            offset=offset,
            msg_id=msg_id or f"broker-a:{value}",
            stored_ms=self.wall(visible),
            deliver_at_ms=at_ms,
            wall_ms=self.wall(received),
        )

    def fault(self, start: float, end: float, window: int = 1) -> Timeline:
        value = {"fault": "kill", "targets": ["n1"], "window": window}
        self.add(start, "nemesis", INFO, FAULT, value={**value, "phase": "start"})
        return self.add(end, "nemesis", INFO, FAULT, value={**value, "phase": "end"})

    # -- retry -----------------------------------------------------------------------------

    def sent(self, value: str, at: float = 0.0, offset: int = 0) -> Timeline:
        self.add(at, "p0", INVOKE, SEND, value=value)
        return self.add(
            at + 0.01,
            "p0",
            OK,
            SEND,
            value=value,
            group="broker-a",
            queue=0,
            offset=offset,
            msg_id=f"broker-a:{value}",
        )

    def attempt(
        self,
        value: str,
        attempt: int,
        at: float,
        fails: bool,
        offset: int = 0,
        topic: str | None | bool = True,
        stored_at: float | None = None,
        msg_id: str | None = None,
    ) -> Timeline:
        """Delivery ``attempt`` of ``value`` received at ``at`` (stored just before), and its
        handler's outcome; ``topic`` True: where that attempt belongs."""
        if topic is True:
            topic = None if attempt == 1 else RETRY_TOPIC
        place = {
            "group": "broker-a",
            "queue": 0,
            "offset": offset,
            "attempt": attempt,
            **({"topic": topic} if topic else {}),
        }
        stored = stored_at if stored_at is not None else at - 0.01
        self.add(
            at,
            "c0",
            OK,
            RECEIVE,
            value=value,
            msg_id=msg_id or f"broker-a:{value}",
            stored_ms=self.wall(stored),
            wall_ms=self.wall(at),
            **place,
        )
        if fails:
            error = f"HandlerFailure: jepsen: {value} attempt {attempt} fails"
            return self.add(
                at + 0.001, "c0", OK, NACK, value=value, error=error, wall_ms=self.wall(at), **place
            )
        return self.add(at + 0.001, "c0", OK, ACK, value=value, **place)

    def read_phase(self, at: float) -> Timeline:
        return self.add(at, "runner", INFO, PHASE, value="read")

    def dead_letter(
        self,
        value: str,
        at: float,
        attempts: int = 3,
        error: str | None = "last",
        msg_id: str | None = None,
        offset: int = 0,
    ) -> Timeline:
        if error == "last":
            error = f"HandlerFailure: jepsen: {value} attempt {attempts} fails"
        return self.add(
            at,
            "reader",
            OK,
            READ,
            value=value,
            topic=DLQ_TOPIC,
            group="broker-a",
            queue=0,
            offset=offset,
            msg_id=msg_id or f"broker-a:{value}",
            attempt=attempts,
            error=error,
        )

    def stored(self, value: str, at: float, offset: int = 0) -> Timeline:
        """The final read finds ``value`` in the workload's topic."""
        return self.add(
            at, "reader", OK, READ, value=value, group="broker-a", queue=0, offset=offset
        )


def counts_of(result: Any) -> dict[str, Any]:
    return dict(result.counts)


# --- delay -----------------------------------------------------------------------------------


def test_delayed_messages_delivered_on_time_pass() -> None:
    t = Timeline().delayed("p0-1", 1.0, 2.0).delayed("p0-2", 1.5, 1.0, deliver_at=True)
    t.delivered("p0-2", 2.5, late_s=0.004, offset=0).delivered("p0-1", 3.0, offset=1)

    result = delay(t.ops)

    assert result.valid, result.examples
    counts = counts_of(result)
    assert counts["delayed_sends"] == 2 and counts["received"] == 2
    assert counts["judged"] == 2 and counts["late"] == 0
    assert counts["judged_max_ms"] == 5 and counts["judged_p50_ms"] == 4


def test_a_delayed_message_visible_before_its_time_is_early() -> None:
    t = Timeline().delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0, late_s=-0.2)

    result = delay(t.ops)

    assert not result.valid
    assert result.counts["early"] == 1
    assert "200 ms before its time" in result.examples[0]


def test_an_acknowledged_delayed_message_never_delivered_is_lost() -> None:
    t = Timeline().delayed("p0-1", 1.0, 2.0).delayed("p0-2", 1.0, 2.0).delivered("p0-2", 3.0)
    # An indeterminate delayed send never delivered is not a loss.
    t.add(1.1, "p1", INVOKE, SEND, value="p1-1", delay_ms=500, wall_ms=t.wall(1.1))
    t.add(6.0, "p1", INFO, SEND, value="p1-1", error="timeout")

    result = delay(t.ops)

    assert not result.valid
    assert result.counts["lost"] == 1 and result.counts["acknowledged"] == 2
    assert result.examples == ["p0-1: acknowledged at 1.010 s, never delivered"]


def test_a_timer_that_fired_twice_is_stored_twice_and_redelivery_is_only_counted() -> None:
    twice = Timeline().delayed("p0-1", 1.0, 2.0)
    twice.delivered("p0-1", 3.0, offset=4).delivered("p0-1", 3.0, offset=9)
    again = Timeline().delayed("p0-1", 1.0, 2.0)
    again.delivered("p0-1", 3.0, offset=4).delivered("p0-1", 3.0, offset=4, after_s=1.0)

    fired_twice, redelivered = delay(twice.ops), delay(again.ops)

    assert not fired_twice.valid and fired_twice.counts["stored_twice"] == 1
    assert redelivered.valid and redelivered.counts["redeliveries"] == 1


def test_late_is_judged_only_away_from_fault_windows_and_their_settling() -> None:
    def late_at(due: float) -> Timeline:
        t = Timeline().fault(10.0, 20.0).delayed("p0-1", due - 2.0, 2.0)
        return t.delivered("p0-1", due, late_s=2.5)

    rules = OnTime(bound_s=1.0, settle_s=5.0)
    before, during, settling, after = (
        delay(late_at(due).ops, rules) for due in (5.0, 15.0, 24.0, 30.0)
    )
    # 5 s: the window began 5 s later, none overlaps [5, 6]: judged, and late.
    assert not before.valid and before.counts["late"] == 1
    assert during.valid and during.counts["judged"] == 0
    assert settling.valid and settling.counts["judged"] == 0
    assert not after.valid and after.counts["late"] == 1
    # Just short of a window: [due, due + bound] reaches its start.
    assert delay(late_at(9.5).ops, rules).counts["judged"] == 0
    # Within the bound is on time anywhere.
    on_time = Timeline().delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0, late_s=0.9)
    assert delay(on_time.ops, rules).valid


def test_the_lateness_distribution_is_reported_for_judged_and_all_values() -> None:
    t = Timeline().fault(50.0, 60.0)
    for n, late in enumerate([0.001, 0.002, 0.003, 0.004, 0.2]):
        t.delayed(f"p0-{n}", 1.0 + n, 1.0).delivered(f"p0-{n}", 2.0 + n, late, offset=n)
    t.delayed("p0-9", 53.0, 1.0).delivered("p0-9", 54.0, 4.0, offset=9)

    result = delay(t.ops)

    assert result.valid
    counts = counts_of(result)
    assert (counts["judged"], counts["judged_p50_ms"], counts["judged_max_ms"]) == (5, 3, 200)
    assert (counts["all_p50_ms"], counts["all_max_ms"]) == (3, 4000)
    rows = {row["lateness"]: row for row in result.details["histogram"]}
    assert rows["1-10 ms"] == {"lateness": "1-10 ms", "judged": 4, "not_judged": 0}
    assert rows["101-250 ms"]["judged"] == 1 and rows["2001-5000 ms"]["not_judged"] == 1
    assert result.details["latest"][0]["value"] == "p0-9"


def test_the_deliver_at_must_be_the_time_the_send_asked() -> None:
    # deliver_at=: exactly the time asked.
    exact = Timeline().delayed("p0-1", 1.0, 2.0, deliver_at=True)
    exact.delivered("p0-1", 3.0, deliver_at_ms=exact.wall(3.0) + 1)
    # delay=: between the invoke plus the delay and the acknowledgement plus the delay.
    window = Timeline().delayed("p0-1", 1.0, 2.0, acked_after=0.05)
    window.delivered("p0-1", 3.04)
    below = (
        Timeline()
        .delayed("p0-1", 1.0, 2.0)
        .delivered("p0-1", 2.9, deliver_at_ms=Timeline().wall(2.9))
    )
    missing = Timeline().delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0, deliver_at_ms=None)

    assert delay(exact.ops).counts["wrong_deliver_at"] == 1
    assert delay(window.ops).valid
    assert delay(below.ops).counts["wrong_deliver_at"] == 1
    assert delay(missing.ops).counts["missing_deliver_at"] == 1 and not delay(missing.ops).valid


def test_a_delayed_send_stored_at_once_is_judged_by_its_store_time() -> None:
    # Its time had passed when it was stored (a send retried across a failover): stored at
    # once, legal if not visible before its time.
    late = Timeline().delayed("p0-1", 1.0, 0.5, acked_after=1.0, offset=7)
    late.delivered("p0-1", 1.5, late_s=0.5, offset=7)
    early = Timeline().delayed("p0-1", 1.0, 2.0, offset=7).delivered("p0-1", 3.0, -1.9, offset=7)

    assert delay(late.ops).valid and delay(late.ops).counts["stored_directly"] == 1
    assert delay(early.ops).counts["early"] == 1 and not delay(early.ops).valid


def test_a_delayed_message_delivered_under_another_id_is_invalid() -> None:
    other_id = Timeline().delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0, msg_id="broker-a:9")

    assert delay(other_id.ops).counts["wrong_id"] == 1 and not delay(other_id.ops).valid


def test_every_checker_passes_a_correct_delay_history() -> None:
    t = Timeline()
    for n in range(4):
        t.delayed(f"p0-{n}", 1.0 + n, 3.0 - 0.5 * n)
    for n in sorted(range(4), key=lambda n: 4.0 - 0.5 * n):
        t.delivered(f"p0-{n}", 4.0 + 0.5 * n, offset=3 - n)
    t.read_phase(20.0)
    for n in range(4):
        t.stored(f"p0-{n}", 20.0, offset=3 - n)

    results = check_all(t.ops, on_time=OnTime())

    assert [r.name for r in results][-1] == "delay"
    assert all(r.valid for r in results), [(r.name, r.examples) for r in results if not r.valid]
    assert "retry" not in [r.name for r in check_all(t.ops)]
    assert "delay" not in [r.name for r in check_all(t.ops)]


# --- retry -----------------------------------------------------------------------------------


def three_fates() -> Timeline:
    """p0-1 handled at once; p0-2 failed once, handled at attempt 2; p0-3 failed three times
    and dead-lettered."""
    t = Timeline().sent("p0-1", 0.0, 0).sent("p0-2", 0.1, 1).sent("p0-3", 0.2, 2)
    t.attempt("p0-1", 1, 1.0, fails=False, offset=0)
    t.attempt("p0-2", 1, 1.1, fails=True, offset=1)
    t.attempt("p0-3", 1, 1.2, fails=True, offset=2)
    t.attempt("p0-2", 2, 1.5, fails=False, offset=0)
    t.attempt("p0-3", 2, 1.6, fails=True, offset=1)
    t.attempt("p0-3", 3, 3.0, fails=True, offset=2)
    return t


def finished(t: Timeline, dead: tuple[str, ...] = ("p0-3",)) -> Timeline:
    t.read_phase(10.0)
    for n in range(1, 4):
        t.stored(f"p0-{n}", 10.0, offset=n - 1)
    for offset, value in enumerate(dead):
        t.dead_letter(value, 10.0, offset=offset)
    return t


def test_handled_and_dead_lettered_values_pass_with_their_fates_counted() -> None:
    result = retry(finished(three_fates()).ops, RULES)

    assert result.valid, result.examples
    counts = counts_of(result)
    assert (counts["handled_at_1"], counts["handled_at_2"], counts["handled_at_3"]) == (1, 1, 0)
    assert counts["dead_lettered"] == 1 and counts["acknowledged"] == 3
    assert result.details["fates"][-1] == {"fate": "dead-lettered", "values": 1}
    # Stored 10 ms before each receive: p0-3's attempt 3 came 1,390 - 1,000 = 390 ms late.
    assert counts["retry_late_max_ms"] == 390


def test_a_failure_never_retried_is_lost() -> None:
    t = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True).read_phase(10.0)

    result = retry(t.ops, RULES)

    assert not result.valid and result.counts["lost"] == 1
    assert "failed attempt 1, and attempt 2 was never delivered" in result.examples[0]


def test_a_last_failure_without_a_dead_letter_is_lost_or_unverified_without_a_read() -> None:
    read = retry(finished(three_fates(), dead=()).ops, RULES)
    unread = retry(three_fates().ops, RULES)

    assert not read.valid and read.counts["lost"] == 1
    assert "no dead letter holds it" in read.examples[0]
    assert not unread.valid and unread.counts["unverified"] == 1 and unread.counts["lost"] == 0


def test_never_delivered_is_lost() -> None:
    result = retry(Timeline().sent("p0-1").read_phase(5.0).ops, RULES)

    assert result.counts["lost"] == 1 and "never delivered" in result.examples[0]


def test_a_value_handled_and_dead_lettered_is_invalid() -> None:
    t = finished(three_fates(), dead=("p0-3", "p0-2"))

    result = retry(t.ops, RULES)

    assert not result.valid and result.counts["both"] == 1
    # Its dead letter is also wrong: attempt 3 of p0-2 never failed.
    assert result.counts["wrong_dead_letters"] == 1


def test_a_retry_without_a_failure_before_it_is_unearned() -> None:
    handled = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=False)
    handled.attempt("p0-1", 2, 2.0, fails=False)
    skipped = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    skipped.attempt("p0-1", 3, 3.0, fails=False)

    assert retry(handled.ops, RULES).counts["unearned_retries"] == 1
    assert retry(skipped.ops, RULES).counts["unearned_retries"] == 1
    assert not retry(skipped.ops, RULES).valid


def test_a_delivery_past_the_last_attempt_is_invalid() -> None:
    t = three_fates().attempt("p0-3", 4, 5.0, fails=False)

    assert retry(t.ops, RULES).counts["beyond_max"] == 1


def test_attempts_must_come_from_their_topic() -> None:
    retry_from_topic = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    retry_from_topic.attempt("p0-1", 2, 2.0, fails=False, topic=None)
    first_from_retry = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, False, topic=RETRY_TOPIC)

    assert retry(retry_from_topic.ops, RULES).counts["misplaced"] == 1
    assert retry(first_from_retry.ops, RULES).counts["misplaced"] == 1


def test_a_dead_letter_must_say_its_attempts_its_last_error_and_its_id() -> None:
    def with_letter(**fields: Any) -> Any:
        t = three_fates().read_phase(10.0).dead_letter("p0-3", 10.0, **fields)
        return retry(t.ops, RULES)

    assert with_letter().valid
    assert with_letter(attempts=2, error="HandlerFailure: jepsen: p0-3 attempt 3 fails").counts[
        "wrong_dead_letters"
    ]
    assert with_letter(error="HandlerFailure: jepsen: p0-3 attempt 2 fails").counts[
        "wrong_dead_letters"
    ]
    assert with_letter(msg_id="broker-a:other").counts["wrong_dead_letters"] == 1


def test_a_retry_stored_before_its_delay_ran_out_is_early() -> None:
    # Attempt 1 failed at 1.0 s; the policy waits 200 ms: stored at 1.15 s is early.
    t = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    t.attempt("p0-1", 2, 1.3, fails=False, stored_at=1.15)
    on_time = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    on_time.attempt("p0-1", 2, 1.3, fails=False, stored_at=1.2)

    assert retry(t.ops, RULES).counts["retried_early"] == 1
    assert retry(on_time.ops, RULES).valid


def test_a_failure_told_twice_is_a_duplicate_retry_not_an_error() -> None:
    # Attempt 1 delivered twice (a rebalance), failed twice: two copies of attempt 2.
    t = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    t.attempt("p0-1", 1, 1.1, fails=True)
    t.attempt("p0-1", 2, 1.5, fails=False, offset=0).attempt("p0-1", 2, 1.6, False, offset=1)
    t.attempt("p0-1", 2, 2.6, fails=False, offset=1)

    result = retry(t.ops, RULES)

    assert result.valid, result.examples
    assert result.counts["duplicate_retries"] == 1
    assert result.counts["redeliveries"] == 2  # attempt 1 again, and offset 1 of attempt 2 again


def test_a_retry_under_another_id_is_invalid() -> None:
    t = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=True)
    t.attempt("p0-1", 2, 1.5, fails=False, msg_id="broker-a:9:0")

    assert retry(t.ops, RULES).counts["wrong_id"] == 1


def test_every_checker_passes_a_correct_retry_history() -> None:
    t = finished(three_fates())

    results = check_all(t.ops, retry_rules=RULES)

    assert [r.name for r in results][-1] == "retry"
    assert all(r.valid for r in results), [(r.name, r.examples) for r in results if not r.valid]
    # The retry topic's and the dead-letter topic's positions are not the topic's.
    assert duplicates(t.ops).counts["duplicated"] == 0
    # A value only in the dead-letter topic is still missing from the final read.
    gone = Timeline().sent("p0-1").attempt("p0-1", 1, 1.0, fails=False).read_phase(5.0)
    gone.dead_letter("p0-1", 5.0, attempts=1, error=None)
    assert lost(gone.ops).counts["lost_from_storage"] == 1


def test_the_report_shows_the_lateness_distribution_and_the_fates() -> None:
    delayed = Timeline().delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0)
    retried = finished(three_fates())

    delay_page = render_report(delayed.ops, check_all(delayed.ops, on_time=OnTime()), {})
    retry_page = render_report(retried.ops, check_all(retried.ops, retry_rules=RULES), {})

    assert "<h2>Delayed messages</h2>" in delay_page and "1-10 ms" in delay_page
    assert "<h2>Retries</h2>" not in delay_page
    assert "<h2>Retries</h2>" in retry_page and "handled at attempt 2" in retry_page


def test_lateness_is_reported_by_the_fault_near_each_due_time() -> None:
    t = Timeline().fault(10.0, 20.0)
    t.delayed("p0-1", 1.0, 2.0).delivered("p0-1", 3.0, late_s=0.004, offset=0)
    t.delayed("p0-2", 12.0, 2.0).delivered("p0-2", 14.0, late_s=3.0, offset=1)
    t.delayed("p0-3", 20.0, 2.0).delivered("p0-3", 22.0, late_s=1.5, offset=2)

    rows = {row["due"]: row for row in delay(t.ops).details["by_fault"]}

    assert set(rows) == {"no fault near", "during kill", "settling after kill"}
    assert rows["during kill"]["values"] == 1 and rows["during kill"]["lateness_max_ms"] == 3000
    assert rows["settling after kill"]["lateness_p50_ms"] == 1500
    assert rows["no fault near"]["lateness_max_ms"] == 4
