"""The HTML report of a run: verdict, charts (well-formed inline SVG), results and windows."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from jepsen.history import CheckResult, History, Op
from jepsen.report import (
    PLOT_BOTTOM,
    PLOT_LEFT,
    PLOT_RIGHT,
    bucket_width,
    collect,
    render_report,
    write_report,
)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script>"


def history(
    windows: Sequence[tuple[float, float | None, str, list[str]]] = (),
    sends: int = 60,
    duration: float = 60.0,
) -> list[Op]:
    """Sends spread evenly over the run (each acknowledged after 5 ms, every tenth one
    indeterminate), a receive per acknowledged send, the given fault windows (end None: never
    healed) and the runner's phases."""
    h = History()
    h.add(0.0, "runner", "info", "phase", value="workload")
    events = []
    for number, (start, end, fault, targets) in enumerate(windows):
        value = {"fault": fault, "targets": targets, "window": number}
        events.append((start, {**value, "phase": "start"}))
        if end is not None:
            events.append((end, {**value, "phase": "end"}))
    events.sort(key=lambda event: event[0])
    for i in range(sends):
        t = duration * 0.8 * i / sends
        while events and events[0][0] <= t:
            at, value = events.pop(0)
            h.add(at, "nemesis", "info", "fault", value=value)
        process = f"p{i % 3}"
        h.add(t, process, "invoke", "send", value=f"{process}-{i}")
        if i % 10 == 9:
            h.add(t + 2.0, process, "info", "send", value=f"{process}-{i}", error="Timeout")
        else:
            h.add(t + 0.005, process, "ok", "send", value=f"{process}-{i}", queue=0, offset=i)
            h.add(t + 0.01, "c0", "ok", "receive", value=f"{process}-{i}", queue=0, offset=i)
    for at, value in events:
        h.add(at, "nemesis", "info", "fault", value=value)
    h.add(duration * 0.8, "runner", "info", "phase", value="heal")
    h.add(duration * 0.9, "runner", "info", "phase", value="drain")
    h.add(duration, "runner", "info", "phase", value="done")
    return h.ops


def passing() -> list[CheckResult]:
    return [
        CheckResult("lost", True, {"acknowledged": 54, "lost": 0}),
        CheckResult("duplicated", True, {"duplicates": 0}),
    ]


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(text) for text in re.findall(r"<svg\b.*?</svg>", page, re.S)]


def bands(svg: ET.Element) -> list[ET.Element]:
    return [rect for rect in svg.iter(f"{SVG}rect") if rect.get("fill-opacity") == "0.14"]


def texts(svg: ET.Element) -> list[str]:
    return [text.text or "" for text in svg.iter(f"{SVG}text")]


def test_all_valid_results_pass() -> None:
    page = render_report(history(), passing(), {"seed": 7})
    assert '<div class="verdict pass">PASS</div>' in page
    assert "verdict fail" not in page
    assert "All 2 checks passed." in page


def test_one_invalid_result_fails() -> None:
    results = [*passing(), CheckResult("order", False, {"reordered": 2}, ["p1-3 before p1-2"])]
    page = render_report(history(), results, {})
    assert '<div class="verdict fail">FAIL</div>' in page
    assert "2 of 3 checks passed; failed: order" in page


def test_meta_is_a_table_at_the_top() -> None:
    meta = {"command": "python -m jepsen run", "nodes": ["n1", "n2", "n3"], "duration": 61.25}
    page = render_report(history(), passing(), meta)
    assert "<tr><th>command</th><td>python -m jepsen run</td></tr>" in page
    assert "<tr><th>nodes</th><td>n1, n2, n3</td></tr>" in page
    assert "<tr><th>duration</th><td>61.250</td></tr>" in page
    assert page.index('class="meta"') < page.index("<svg")


def test_each_fault_window_is_a_labelled_band_on_both_charts() -> None:
    windows = [(10.0, 20.0, "partition", ["n1", "n2"]), (30.0, None, "kill", ["n3"])]
    page = render_report(history(windows), passing(), {})
    throughput, latency = svgs(page)
    for svg in (throughput, latency):
        shaded = bands(svg)
        assert len(shaded) == 2
        tips = [rect.findtext(f"{SVG}title") for rect in shaded]
        assert tips[0] == "window 0: partition on [n1, n2] from 10.000 s to 20.000 s"
        assert tips[1] == "window 1: kill on [n3] from 30.000 s to 60.000 s (no end recorded)"
        assert "partition [n1, n2]" in texts(svg)
        assert "kill [n3]" in texts(svg)
    # The window without an end is shaded to the end of the history (the right of the plot).
    kill = bands(throughput)[1]
    assert float(kill.get("x", 0)) + float(kill.get("width", 0)) == pytest.approx(PLOT_RIGHT)


def test_phases_are_dashed_lines_with_labels() -> None:
    page = render_report(history(), passing(), {})
    for svg in svgs(page):
        phases = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "phase"]
        assert [line.findtext(f"{SVG}title") for line in phases] == [
            "phase workload at 0.000 s",
            "phase heal at 48.000 s",
            "phase drain at 54.000 s",
            "phase done at 60.000 s",
        ]
        assert {"workload", "heal", "drain", "done"} <= set(texts(svg))


def test_labels_of_close_windows_do_not_overlap() -> None:
    windows = [(float(t), t + 0.5, "partition-majority", ["n1", "n2", "n3"]) for t in range(5, 40)]
    windows.append((41.0, 45.0, "kill", ["n3"]))
    svg = svgs(render_report(history(windows), passing(), {}))[0]
    lanes: dict[str, list[tuple[float, float]]] = {}
    written = []
    for text in svg.iter(f"{SVG}text"):
        if text.get("class") in ("fault-label", "phase-label"):
            left = float(text.get("x", 0))
            lanes.setdefault(text.get("y", ""), []).append((left, left + len(text.text or "") * 6))
            written.append(text.text)
    for spans in lanes.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    # The same fault is not written again over itself, and a later fault still gets its label.
    assert 2 <= written.count("partition-majority [n1, n2, n3]") <= 5
    assert "kill [n3]" in written
    # Every window is still shaded, with its tooltip.
    assert len(bands(svg)) == len(windows)


def test_both_charts_share_the_time_axis() -> None:
    throughput, latency = svgs(render_report(history(), passing(), {}))

    def ticks(svg: ET.Element) -> list[tuple[str | None, str | None]]:
        return [
            (text.get("x"), text.text)
            for text in svg.iter(f"{SVG}text")
            if text.get("y") == f"{PLOT_BOTTOM + 30}"
        ]

    assert ticks(throughput) == ticks(latency)
    assert ticks(throughput)[0] == (f"{PLOT_LEFT:.1f}", "0")
    assert ticks(throughput)[-1] == (f"{PLOT_RIGHT:.1f}", "60")


def test_latency_axis_is_logarithmic_in_milliseconds() -> None:
    latency = svgs(render_report(history(), passing(), {}))[1]
    labels = texts(latency)
    # 5 ms acknowledgements, 2 s indeterminate sends: decades from 1 to 10000 ms.
    assert {"1", "10", "100", "1000", "10000"} <= set(labels)
    assert "latency (ms, log)" in labels
    marks = [c for c in latency.iter(f"{SVG}circle") if c.get("fill") == "#d62728"]
    assert marks and all("indeterminate" in (c.findtext(f"{SVG}title") or "") for c in marks)


def test_send_latency_pairs_each_completion_with_its_process_invoke() -> None:
    h = History()
    h.add(1.0, "p1", "invoke", "send", value="p1-0")
    h.add(1.1, "p2", "invoke", "send", value="p2-0")
    h.add(1.3, "p2", "ok", "send", value="p2-0")
    h.add(2.0, "p1", "ok", "send", value="p1-0")
    h.add(2.5, "p1", "invoke", "send", value="p1-1")
    h.add(4.5, "p1", "info", "send", value="p1-1", error="Timeout")
    h.add(5.0, "p2", "fail", "send", value="p2-1")
    h.add(6.0, "p3", "ok", "send", value="p3-0")  # its invoke is missing: no latency
    timeline = collect(reversed(h.ops))  # in index order, whatever order they are given in
    latencies = [(t, None if d is None else round(d, 6)) for t, d in timeline.acked]
    assert latencies == [(1.3, 0.2), (2.0, 1.0), (6.0, None)]
    assert timeline.indeterminate == [(4.5, 2.0)]
    assert timeline.failed == [5.0]
    assert timeline.duration == 6.0


def test_bucket_width_keeps_long_runs_under_600_buckets() -> None:
    assert bucket_width(1.0) == 1.0
    assert bucket_width(600.0) == 1.0
    assert bucket_width(601.0) == 2.0
    assert bucket_width(3600.0) == 10.0
    for duration in (86_400.0, 10_000_000.0):
        assert duration / bucket_width(duration) <= 600


def test_one_results_row_per_check_with_counts_and_examples() -> None:
    examples = [f"p0-{i} lost" for i in range(25)]
    results = [
        CheckResult("lost", False, {"acknowledged": 54, "lost": 25}, examples),
        CheckResult("duplicated", True, {"duplicates": 0, "rate": 0.125}),
        CheckResult("order", True),
    ]
    page = render_report(history(), results, {})
    table = re.search(r'<table class="results">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r"<tr><td>(.*?)</td>", table.group(1))
    assert rows == ["lost", "duplicated", "order"]
    assert "<code>acknowledged=54, lost=25</code>" in page
    assert "<code>duplicates=0, rate=0.125</code>" in page
    assert table.group(1).count('class="badge fail"') == 1
    assert table.group(1).count('class="badge pass"') == 2
    assert "<summary>25 examples</summary>" in page
    assert "<li>p0-19 lost</li>" in page
    assert "<li>p0-20 lost</li>" not in page
    assert "<li>... and 5 more</li>" in page


def test_availability_windows_table() -> None:
    windows = [
        {
            "window": 0,
            "fault": "partition",
            "targets": ["n1", "n2"],
            "start": 10.0,
            "end": 20.0,
            "longest_gap": 3.25,
            "recovery": 1.5,
        },
        {
            "window": 1,
            "fault": "kill",
            "targets": ["n3"],
            "start": 30.0,
            "end": None,
            "longest_gap": 0.0,
            "recovery": None,
        },
    ]
    results = [*passing(), CheckResult("availability", True, {}, [], {"windows": windows})]
    page = render_report(history(), results, {})
    table = re.search(r'<table class="windows">(.*?)</table>', page, re.S)
    assert table is not None
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.group(1).split("</tr>")]
    assert cells[1] == ["0", "partition", "n1, n2", "10.000", "20.000", "3.250", "1.500"]
    assert cells[2] == ["1", "kill", "n3", "30.000", "-", "0.000", "-"]


def test_no_windows_table_without_availability_details() -> None:
    page = render_report(history(), [CheckResult("availability", True, {"windows": 0})], {})
    assert 'class="windows"' not in page


def test_hostile_strings_are_escaped() -> None:
    h = History()
    h.add(0.0, "runner", "info", "phase", value=HOSTILE)
    h.add(
        1.0,
        "nemesis",
        "info",
        "fault",
        value={"fault": HOSTILE, "phase": "start", "targets": [HOSTILE], "window": 0},
    )
    h.add(1.5, "p0", "invoke", "send", value=HOSTILE)
    h.add(1.6, "p0", "ok", "send", value=HOSTILE)
    h.add(
        2.0,
        "nemesis",
        "info",
        "fault",
        value={"fault": HOSTILE, "phase": "end", "targets": [HOSTILE], "window": 0},
    )
    results = [
        CheckResult(HOSTILE, False, {HOSTILE: 1}, [f"value {HOSTILE} lost"]),
        CheckResult(
            "availability",
            True,
            {},
            [],
            {"windows": [{"window": 0, "fault": HOSTILE, "targets": [HOSTILE], "start": HOSTILE}]},
        ),
    ]
    page = render_report(h.ops, results, {HOSTILE: HOSTILE, "command": f"run '{HOSTILE}\""})
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    throughput = svgs(page)[0]  # both charts parse as XML
    assert HOSTILE in (bands(throughput)[0].findtext(f"{SVG}title") or "")
    assert any(HOSTILE in text for text in texts(throughput))


def test_empty_history_renders_with_no_data() -> None:
    page = render_report([], [], {})
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert "NO VERDICT" in page
    assert [texts(svg) for svg in svgs(page)] == [["no data"], ["no data"]]


def test_history_without_sends_or_faults_renders() -> None:
    h = History()
    h.add(0.0, "runner", "info", "phase", value="workload")
    h.add(5.0, "runner", "info", "phase", value="done")
    page = render_report(h.ops, passing(), {})
    assert [texts(svg) for svg in svgs(page)] == [["no data"], ["no data"]]

    throughput, latency = svgs(render_report(history(sends=30), passing(), {}))
    assert bands(throughput) == [] and bands(latency) == []
    assert "ops/s" in texts(throughput)


def test_only_failed_sends_draw_marks_and_no_latency() -> None:
    h = History()
    for i in range(5):
        h.add(float(i), "p0", "invoke", "send", value=f"p0-{i}")
        h.add(i + 0.1, "p0", "fail", "send", value=f"p0-{i}", error="NotLeader")
    throughput, latency = svgs(render_report(h.ops, passing(), {}))
    marks = [r for r in throughput.iter(f"{SVG}rect") if r.get("fill") == "#ff7f0e"]
    assert len(marks) == 5
    assert texts(latency) == ["no data"]


def test_output_is_deterministic(tmp_path: Path) -> None:
    windows = [(10.0, 20.0, "partition", ["n1", "n2"])]
    ops, meta = history(windows), {"seed": 3, "nodes": ["n1", "n2", "n3"]}
    write_report(tmp_path / "a.html", ops, passing(), meta)
    write_report(tmp_path / "b.html", list(ops), passing(), dict(meta))
    first = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert first == (tmp_path / "b.html").read_text(encoding="utf-8")
    assert first == render_report(ops, passing(), meta)


def test_a_large_history_stays_small() -> None:
    windows = [(float(t), t + 20.0, "partition", ["n1", "n2"]) for t in range(100, 3000, 60)]
    ops = history(windows, sends=110_000, duration=3600.0)
    assert len(ops) > 300_000
    page = render_report(ops, passing(), {})
    assert len(page.encode("utf-8")) < 2_000_000
    throughput, latency = svgs(page)
    assert len(bands(throughput)) == len(windows)
    for svg in (throughput, latency):
        for line in svg.iter(f"{SVG}polyline"):
            assert len(line.get("points", "").split()) <= 600
