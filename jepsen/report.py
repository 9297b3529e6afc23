"""One self-contained HTML page per fault-injection run, for an operator to read and to show.

The page holds everything: no external assets, no JavaScript, charts as inline SVG written by
hand. It shows, from top to bottom:

1. the verdict (PASS when every check passed, FAIL otherwise) and the run's facts (``meta``);
2. "Throughput": acknowledged sends and receives per second, failed and indeterminate sends as
   marks under the time axis; with several broker groups also each group's acknowledged sends
   per second, dashed;
3. "Send latency": p50, p99 and max latency of the acknowledged sends per time bucket, on a log
   scale, indeterminate sends as red marks;
4. one row per :class:`CheckResult`: verdict, counts and the first examples;
5. the fault windows as the availability checker measured them, when it did;
6. with several broker groups, the windows that took one group's majority away and what the
   other groups acknowledged meanwhile, as the group_independence checker counted them;
7. with the ``delay`` workload, the lateness distribution of delayed messages (judged or not)
   and the latest ones; with the ``retry`` workload, how many values were handled at each
   attempt and how many were dead-lettered.

Both charts share one time axis, shade each fault window as a translucent band labelled with the
fault and its targets, and draw the runner's phases (heal, drain, ...) as dashed lines. Ops are
aggregated into at most :data:`MAX_BUCKETS` time buckets, so a history of a million ops draws
as fast and as small as a short one. The same input always gives the same page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from jepsen.history import (
    FAIL,
    FAULT,
    INVOKE,
    OK,
    PHASE,
    RECEIVE,
    SEND,
    CheckResult,
    FaultWindow,
    Op,
    fault_windows,
)

MAX_BUCKETS = 600
MAX_EXAMPLES = 20

# Chart geometry, in SVG pixels. Labels of fault windows and phases sit in lanes above the plot.
WIDTH = 960
MARGIN_LEFT = 64
MARGIN_RIGHT = 24
LANES = 4
LANE_HEIGHT = 13
MARGIN_TOP = LANES * LANE_HEIGHT + 8
PLOT_HEIGHT = 220
MARGIN_BOTTOM = 58
HEIGHT = MARGIN_TOP + PLOT_HEIGHT + MARGIN_BOTTOM
PLOT_LEFT = MARGIN_LEFT
PLOT_RIGHT = WIDTH - MARGIN_RIGHT
PLOT_TOP = MARGIN_TOP
PLOT_BOTTOM = MARGIN_TOP + PLOT_HEIGHT
# Width of one character of a 10px label, generously, to keep labels from overlapping.
CHAR_WIDTH = 6.2
MAX_LABEL_CHARS = 32

FAULT_COLORS = ("#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
SENT_COLOR = "#1f77b4"
RECEIVED_COLOR = "#2ca02c"
FAILED_COLOR = "#ff7f0e"
INDETERMINATE_COLOR = "#d62728"
P50_COLOR = "#1f77b4"
P99_COLOR = "#ff7f0e"
MAX_COLOR = "#555555"
GROUP_COLORS = ("#17becf", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")

Scale = Callable[[float], float]


# --- What the charts draw, gathered from the history in one pass --------------------------------


@dataclass(frozen=True)
class Phase:
    time: float
    name: str


@dataclass
class Timeline:
    #: Time of the last op, in seconds since the run started (at least 1, so axes have a span).
    duration: float = 1.0
    #: (completion time, latency or None when its invoke is missing) of each acknowledged send,
    #: in seconds.
    acked: list[tuple[float, float | None]] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    #: (completion time, latency or None when its invoke is missing) of each indeterminate send.
    indeterminate: list[tuple[float, float | None]] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    #: Broker group -> completion times of its acknowledged sends (those whose op names one).
    acked_by_group: dict[str, list[float]] = field(default_factory=dict)
    faults: list[FaultWindow] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)


def collect(ops: Iterable[Op]) -> Timeline:
    """Pair each send's invoke with its completion (per process, in index order) and gather the
    fault windows and phases."""
    timeline = Timeline()
    invoked: dict[str, float] = {}
    fault_ops: list[Op] = []
    last = 0.0
    for op in sorted(ops, key=attrgetter("index")):
        t = op.time
        last = max(last, t)
        if op.f == SEND:
            if op.type == INVOKE:
                invoked[op.process] = t
                continue
            started = invoked.pop(op.process, None)
            latency = t - started if started is not None else None
            if op.type == OK:
                timeline.acked.append((t, latency))
                if op.group is not None:
                    timeline.acked_by_group.setdefault(op.group, []).append(t)
            elif op.type == FAIL:
                timeline.failed.append(t)
            else:
                timeline.indeterminate.append((t, latency))
        elif op.f == RECEIVE:
            if op.type == OK:
                timeline.received.append(t)
        elif op.f == FAULT:
            fault_ops.append(op)
        elif op.f == PHASE:
            timeline.phases.append(Phase(t, str(op.value)))
    timeline.duration = max(last, 1.0)
    timeline.faults = fault_windows(fault_ops, end_of_history=last)
    return timeline


# --- Time buckets ----------------------------------------------------------------------------


def bucket_width(duration: float) -> float:
    """One second, or the smallest round width that keeps the run within MAX_BUCKETS."""
    for width in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration / width <= MAX_BUCKETS:
            return float(width)
    return float(math.ceil(duration / MAX_BUCKETS / 3600) * 3600)


@dataclass(frozen=True)
class Buckets:
    width: float
    count: int

    @classmethod
    def for_duration(cls, duration: float) -> Buckets:
        width = bucket_width(duration)
        return cls(width, max(1, math.ceil(duration / width)))

    def index(self, t: float) -> int:
        return min(self.count - 1, max(0, int(t / self.width)))

    def middle(self, i: int) -> float:
        return (i + 0.5) * self.width

    def tally(self, times: Iterable[float]) -> list[int]:
        counts = [0] * self.count
        for t in times:
            counts[self.index(t)] += 1
        return counts

    def group(self, pairs: Iterable[tuple[float, float]]) -> list[list[float]]:
        groups: list[list[float]] = [[] for _ in range(self.count)]
        for t, value in pairs:
            groups[self.index(t)].append(value)
        return groups


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    rank = max(1, math.ceil(p * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- Scales and axes -------------------------------------------------------------------------


def linear_scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Scale:
    span = hi - lo if hi != lo else 1.0

    def scale(v: float) -> float:
        return out_lo + (v - lo) / span * (out_hi - out_lo)

    return scale


def log_scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Scale:
    """lo and hi must be positive; values at or below lo are drawn at lo."""
    log_lo = math.log10(lo)
    log_span = math.log10(hi) - log_lo or 1.0

    def scale(v: float) -> float:
        return out_lo + (math.log10(max(v, lo)) - log_lo) / log_span * (out_hi - out_lo)

    return scale


def nice_step(span: float, target_ticks: int) -> float:
    """A 1, 2 or 5 times a power of ten step that cuts span into about target_ticks parts."""
    raw = span / target_ticks if span > 0 else 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5):
        if raw <= multiple * magnitude:
            return multiple * magnitude
    return 10 * magnitude


def linear_ticks(hi: float, target_ticks: int) -> list[tuple[float, str]]:
    """Ticks from 0 to at least hi, as (value, label)."""
    step = nice_step(hi, target_ticks)
    decimals = max(0, -math.floor(math.log10(step)))
    count = math.ceil(hi / step - 1e-9)
    return [(i * step, f"{i * step:.{decimals}f}") for i in range(count + 1)]


def log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Decades from lo to hi (both powers of ten), with 2 and 5 between when there are few."""
    first, last = round(math.log10(lo)), round(math.log10(hi))
    multiples = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = []
    for exponent in range(first, last + 1):
        for multiple in multiples:
            value = multiple * 10.0**exponent
            if value <= hi * (1 + 1e-9):
                ticks.append((value, f"{value:g}"))
    return ticks


# --- SVG pieces ------------------------------------------------------------------------------


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def num(v: float) -> str:
    """A coordinate, rounded so the page stays small and identical from run to run."""
    text = f"{v:.1f}"
    return "0.0" if text == "-0.0" else text


def polyline(points: Sequence[tuple[float, float]], color: str, width: float = 1.5) -> str:
    if len(points) == 1:
        ((x, y),) = points
        return f'<circle cx="{num(x)}" cy="{num(y)}" r="1.8" fill="{color}"/>'
    coords = " ".join(f"{num(x)},{num(y)}" for x, y in points)
    return (
        f'<polyline points="{coords}" fill="none" stroke="{color}" '
        f'stroke-width="{width}" stroke-linejoin="round"/>'
    )


def series(
    values: Sequence[float | None], buckets: Buckets, x: Scale, y: Scale, color: str, width: float
) -> list[str]:
    """One line through the bucket middles, broken where a bucket has no value."""
    lines: list[str] = []
    run: list[tuple[float, float]] = []
    for i, value in enumerate(values):
        if value is None:
            if run:
                lines.append(polyline(run, color, width))
            run = []
        else:
            run.append((x(buckets.middle(i)), y(value)))
    if run:
        lines.append(polyline(run, color, width))
    return lines


def x_axis(x: Scale, duration: float) -> list[str]:
    parts = [
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" '
        f'x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}"/>'
    ]
    for value, label in linear_ticks(duration, 10):
        if value > duration * (1 + 1e-9):
            continue
        px = num(x(value))
        parts.append(
            f'<line class="axis" x1="{px}" y1="{PLOT_BOTTOM}" x2="{px}" y2="{PLOT_BOTTOM + 4}"/>'
            f'<text class="tick" x="{px}" y="{PLOT_BOTTOM + 30}" '
            f'text-anchor="middle">{label}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{num((PLOT_LEFT + PLOT_RIGHT) / 2)}" '
        f'y="{HEIGHT - 8}" text-anchor="middle">time since start (s)</text>'
    )
    return parts


def y_axis(y: Scale, ticks: Sequence[tuple[float, str]], title: str) -> list[str]:
    parts = [
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{PLOT_BOTTOM}"/>'
    ]
    for value, label in ticks:
        py = num(y(value))
        parts.append(
            f'<line class="grid" x1="{PLOT_LEFT}" y1="{py}" x2="{PLOT_RIGHT}" y2="{py}"/>'
            f'<line class="axis" x1="{PLOT_LEFT - 4}" y1="{py}" x2="{PLOT_LEFT}" y2="{py}"/>'
            f'<text class="tick" x="{PLOT_LEFT - 7}" y="{py}" text-anchor="end" '
            f'dominant-baseline="middle">{esc(label)}</text>'
        )
    middle = num((PLOT_TOP + PLOT_BOTTOM) / 2)
    parts.append(
        f'<text class="axis-title" x="16" y="{middle}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle})">{esc(title)}</text>'
    )
    return parts


def fault_colors(faults: Sequence[FaultWindow]) -> dict[str, str]:
    names = sorted({w.fault for w in faults})
    return {name: FAULT_COLORS[i % len(FAULT_COLORS)] for i, name in enumerate(names)}


def _targets(w: FaultWindow) -> str:
    return ", ".join(str(target) for target in w.targets)


def fault_tooltip(w: FaultWindow) -> str:
    end = f"{w.end:.3f} s" if w.ended else f"{w.end:.3f} s (no end recorded)"
    number = f"window {w.window}: " if w.window is not None else ""
    return f"{number}{w.fault} on [{_targets(w)}] from {w.start:.3f} s to {end}"


def fault_label(w: FaultWindow) -> str:
    text = f"{w.fault} [{_targets(w)}]" if w.targets else w.fault
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def band(w: FaultWindow, x: Scale, color: str) -> str:
    left = x(w.start)
    right = max(x(w.end), left + 1.0)
    return (
        f'<rect x="{num(left)}" y="{PLOT_TOP}" width="{num(right - left)}" '
        f'height="{PLOT_HEIGHT}" fill="{color}" fill-opacity="0.14">'
        f"<title>{esc(fault_tooltip(w))}</title></rect>"
    )


def phase_line(phase: Phase, x: Scale) -> str:
    px = num(x(phase.time))
    return (
        f'<line class="phase" x1="{px}" y1="{PLOT_TOP}" x2="{px}" y2="{PLOT_BOTTOM}">'
        f"<title>{esc(f'phase {phase.name} at {phase.time:.3f} s')}</title></line>"
    )


def lane_baseline(lane: int) -> float:
    """Lane 0 is just above the plot; higher lanes stack upwards."""
    return PLOT_TOP - 4 - lane * LANE_HEIGHT


@dataclass(frozen=True)
class Marker:
    """A label for a band's start or a phase line, drawn in a lane above the plot."""

    x: float
    text: str
    css: str
    color: str


def place_labels(markers: Sequence[Marker]) -> list[tuple[float, int, bool] | None]:
    """Give each marker's label the lowest lane where it overlaps no label placed before it, and
    the x where it starts: just right of the marker, or just left of it near the right edge.
    Also say whether a line can join it to the plot without crossing a label in the lanes
    below. None when no lane is free there, or when the same text is already written there."""
    taken: list[list[tuple[float, float]]] = [[] for _ in range(LANES)]
    written: dict[str, list[tuple[float, float]]] = {}
    placed: list[tuple[float, int, bool] | None] = []

    def clear(spans: Iterable[tuple[float, float]], left: float, right: float) -> bool:
        return all(right + 4 <= a or left >= b + 4 for a, b in spans)

    for marker in markers:
        width = len(marker.text) * CHAR_WIDTH
        left = marker.x + 3
        if left + width > WIDTH - 2:
            left = max(2.0, marker.x - 3 - width)
        right = left + width
        line = (marker.x - 0.5, marker.x + 0.5)
        spot = None
        if clear(written.get(marker.text, []), left, right):
            lane = next((n for n in range(LANES) if clear(taken[n], left, right)), None)
            if lane is not None:
                joined = all(clear(taken[low], *line) for low in range(lane))
                for low in range(lane) if joined else ():
                    taken[low].append(line)
                taken[lane].append((left, right))
                written.setdefault(marker.text, []).append((left, right))
                spot = (left, lane, joined)
        placed.append(spot)
    return placed


def labels(faults: Sequence[FaultWindow], phases: Sequence[Phase], x: Scale) -> list[str]:
    """Label the phases first (there are few and they matter), then the first window of each
    fault, then the other windows in time order. A label that finds no room is left out: its
    band or line still has the tooltip."""
    colors = fault_colors(faults)
    markers = [Marker(x(p.time), p.name, "phase-label", "#333333") for p in phases]
    firsts: dict[str, Marker] = {}
    others: list[Marker] = []
    for w in faults:
        marker = Marker(x(w.start), fault_label(w), "fault-label", colors[w.fault])
        if marker.text in firsts:
            others.append(marker)
        else:
            firsts[marker.text] = marker
    markers += [*firsts.values(), *others]
    parts = []
    for marker, spot in zip(markers, place_labels(markers), strict=True):
        if spot is None:
            continue
        left, lane, joined = spot
        baseline = lane_baseline(lane)
        if joined:
            px = num(marker.x)
            parts.append(
                f'<line x1="{px}" y1="{PLOT_TOP}" x2="{px}" y2="{num(baseline - 9)}" '
                f'stroke="{marker.color}" stroke-width="0.8" stroke-opacity="0.6"/>'
            )
        parts.append(
            f'<text class="{marker.css}" x="{num(left)}" y="{num(baseline)}" '
            f'fill="{marker.color}">{esc(marker.text)}</text>'
        )
    return parts


def svg(title: str, parts: Iterable[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(title)}">'
        + "".join(parts)
        + "</svg>"
    )


def no_data(title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="80" '
        f'viewBox="0 0 {WIDTH} 80" role="img" aria-label="{esc(title)}">'
        f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="79" fill="none" stroke="#cccccc"/>'
        f'<text class="no-data" x="{WIDTH // 2}" y="45" text-anchor="middle">no data</text></svg>'
    )


def chart(title: str, timeline: Timeline, x: Scale, body: Iterable[str]) -> str:
    """Bands under everything, then the series, then the phase lines and labels on top."""
    colors = fault_colors(timeline.faults)
    parts = [band(w, x, colors[w.fault]) for w in timeline.faults]
    parts += body
    parts += [phase_line(p, x) for p in timeline.phases]
    parts += labels(timeline.faults, timeline.phases, x)
    return svg(title, parts)


def time_scale(timeline: Timeline) -> Scale:
    return linear_scale(0.0, timeline.duration, PLOT_LEFT, PLOT_RIGHT)


# --- The two charts --------------------------------------------------------------------------


def throughput_chart(timeline: Timeline) -> str:
    if not (timeline.acked or timeline.failed or timeline.indeterminate or timeline.received):
        return no_data("Throughput")
    buckets = Buckets.for_duration(timeline.duration)
    sent = [n / buckets.width for n in buckets.tally(t for t, _ in timeline.acked)]
    received = [n / buckets.width for n in buckets.tally(timeline.received)]
    ticks = linear_ticks(max(max(sent), max(received), 1.0), 5)
    x = time_scale(timeline)
    y = linear_scale(0.0, ticks[-1][0], PLOT_BOTTOM, PLOT_TOP)
    body = y_axis(y, ticks, "ops/s") + x_axis(x, timeline.duration)
    body += series(sent, buckets, x, y, SENT_COLOR, 1.5)
    body += series(received, buckets, x, y, RECEIVED_COLOR, 1.5)
    for color, times in group_series(timeline):
        per_group: list[float | None] = [n / buckets.width for n in buckets.tally(times)]
        body += [
            line.replace("<polyline ", '<polyline stroke-dasharray="4 2" ', 1)
            for line in series(per_group, buckets, x, y, color, 1.0)
        ]
    body += under_axis_marks(timeline.failed, buckets, x, 6, FAILED_COLOR, "failed sends")
    body += under_axis_marks(
        [t for t, _ in timeline.indeterminate],
        buckets,
        x,
        12,
        INDETERMINATE_COLOR,
        "indeterminate sends",
    )
    return chart("Throughput", timeline, x, body)


def group_series(timeline: Timeline) -> list[tuple[str, list[float]]]:
    """(color, acknowledgement times) per broker group, when the sends went to several."""
    if len(timeline.acked_by_group) < 2:
        return []
    return [
        (GROUP_COLORS[i % len(GROUP_COLORS)], timeline.acked_by_group[group])
        for i, group in enumerate(sorted(timeline.acked_by_group))
    ]


def group_legend(timeline: Timeline) -> list[tuple[str, str]]:
    if len(timeline.acked_by_group) < 2:
        return []
    return [
        (GROUP_COLORS[i % len(GROUP_COLORS)], f"acknowledged by {group}/s (dashed)")
        for i, group in enumerate(sorted(timeline.acked_by_group))
    ]


def under_axis_marks(
    times: Sequence[float], buckets: Buckets, x: Scale, offset: float, color: str, what: str
) -> list[str]:
    """A small mark under the time axis for each bucket with such sends; the tooltip counts."""
    marks = []
    for i, n in enumerate(buckets.tally(times) if times else []):
        if n:
            left, right = x(i * buckets.width), x((i + 1) * buckets.width)
            start = i * buckets.width
            tooltip = f"{n} {what} in {start:g}-{start + buckets.width:g} s"
            marks.append(
                f'<rect x="{num(left)}" y="{num(PLOT_BOTTOM + offset)}" '
                f'width="{num(max(right - left - 0.3, 1.2))}" height="4" fill="{color}">'
                f"<title>{esc(tooltip)}</title></rect>"
            )
    return marks


def latency_chart(timeline: Timeline) -> str:
    if not any(latency is not None for _, latency in timeline.acked) and not timeline.indeterminate:
        return no_data("Send latency")
    buckets = Buckets.for_duration(timeline.duration)
    p50: list[float | None] = []
    p99: list[float | None] = []
    top: list[float | None] = []
    acked = [(t, latency * 1000) for t, latency in timeline.acked if latency is not None]
    for group in buckets.group(acked):
        group.sort()
        p50.append(percentile(group, 0.50) if group else None)
        p99.append(percentile(group, 0.99) if group else None)
        top.append(group[-1] if group else None)
    unknown = [t for t, latency in timeline.indeterminate if latency is None]
    known = [(t, latency * 1000) for t, latency in timeline.indeterminate if latency is not None]
    longest_info = [max(group) if group else None for group in buckets.group(known)]

    plotted = [v for v in p50 + top + longest_info if v is not None]
    lo_value = max(min(plotted, default=1.0), 0.001)
    hi_value = max(max(plotted, default=1.0), lo_value)
    lo = 10.0 ** math.floor(math.log10(lo_value))
    hi = 10.0 ** math.ceil(math.log10(hi_value))
    if hi <= lo:
        hi = lo * 10
    x = time_scale(timeline)
    y = log_scale(lo, hi, PLOT_BOTTOM, PLOT_TOP)
    body = y_axis(y, log_ticks(lo, hi), "latency (ms, log)") + x_axis(x, timeline.duration)
    body += series(top, buckets, x, y, MAX_COLOR, 1.0)
    body += series(p99, buckets, x, y, P99_COLOR, 1.5)
    body += series(p50, buckets, x, y, P50_COLOR, 1.5)
    body += indeterminate_marks(known, unknown, buckets, x, y)
    return chart("Send latency", timeline, x, body)


def indeterminate_marks(
    known: Sequence[tuple[float, float]],
    unknown: Sequence[float],
    buckets: Buckets,
    x: Scale,
    y: Scale,
) -> list[str]:
    """Per bucket, a red mark at the longest wait of its indeterminate sends (at the top of the
    plot when the invoke is missing, so the wait is unknown)."""
    marks = []
    groups = buckets.group(known)
    unknown_counts = buckets.tally(unknown)
    for i, group in enumerate(groups):
        px = num(x(buckets.middle(i)))
        if group:
            longest = max(group)
            tooltip = f"{len(group)} indeterminate sends, longest wait {longest:.1f} ms"
            marks.append(
                f'<circle cx="{px}" cy="{num(y(longest))}" r="2.5" '
                f'fill="{INDETERMINATE_COLOR}"><title>{esc(tooltip)}</title></circle>'
            )
        if unknown_counts[i]:
            tooltip = f"{unknown_counts[i]} indeterminate sends without an invoke"
            marks.append(
                f'<circle cx="{px}" cy="{PLOT_TOP + 3}" r="2.5" fill="none" '
                f'stroke="{INDETERMINATE_COLOR}"><title>{esc(tooltip)}</title></circle>'
            )
    return marks


# --- HTML ------------------------------------------------------------------------------------

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1000px; margin: 24px auto; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; }
.verdict { font-size: 44px; font-weight: bold; margin: 8px 0; }
.verdict.pass { color: #1a7f37; } .verdict.fail { color: #cf222e; }
.verdict.unknown { color: #6e7781; }
.summary { color: #444; margin-bottom: 16px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { width: 140px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
         font-weight: bold; font-size: 12px; }
.badge.pass { background: #1a7f37; } .badge.fail { background: #cf222e; }
code, .examples li { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.examples { margin: 4px 0; padding-left: 18px; }
.legend { font-size: 13px; color: #444; margin: 4px 0; }
.swatch { display: inline-block; width: 14px; height: 4px; vertical-align: middle;
          margin: 0 4px 0 10px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
svg .tick { font-size: 11px; fill: #444; }
svg .axis-title { font-size: 12px; fill: #222; }
svg .axis { stroke: #444; stroke-width: 1; }
svg .grid { stroke: #e5e5e5; stroke-width: 1; }
svg .phase { stroke: #333; stroke-width: 1; stroke-dasharray: 5 3; }
svg .phase-label { font-size: 10px; font-weight: bold; }
svg .fault-label { font-size: 10px; }
svg .no-data { font-size: 14px; fill: #888; }
"""


def format_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={format_value(item)}" for key, item in value.items())
    return str(value)


def format_count(value: object) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.6g}"
    if isinstance(value, float):
        return str(int(value))
    return str(value)


def seconds(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3f}"
    return str(value)


def badge(valid: bool) -> str:
    return (
        '<span class="badge pass">PASS</span>' if valid else '<span class="badge fail">FAIL</span>'
    )


def overall_verdict(results: Sequence[CheckResult]) -> str:
    if not results:
        return "NO VERDICT"
    return "PASS" if all(r.valid for r in results) else "FAIL"


def verdict_section(results: Sequence[CheckResult]) -> str:
    if not results:
        return (
            '<div class="verdict unknown">NO VERDICT</div>'
            '<div class="summary">No checker results were given.</div>'
        )
    failed = [r.name for r in results if not r.valid]
    passed = len(results) - len(failed)
    if failed:
        summary = f"{passed} of {len(results)} checks passed; failed: " + ", ".join(
            esc(name) for name in failed
        )
        return f'<div class="verdict fail">FAIL</div><div class="summary">{summary}</div>'
    return (
        '<div class="verdict pass">PASS</div>'
        f'<div class="summary">All {len(results)} checks passed.</div>'
    )


def meta_table(meta: dict[str, object]) -> str:
    if not meta:
        return ""
    rows = "".join(
        f"<tr><th>{esc(key)}</th><td>{esc(format_value(value))}</td></tr>"
        for key, value in meta.items()
    )
    return f'<table class="meta">{rows}</table>'


def legend(*entries: tuple[str, str]) -> str:
    swatches = "".join(
        f'<span class="swatch" style="background:{color}"></span>{esc(text)}'
        for color, text in entries
    )
    return f'<div class="legend">{swatches}</div>'


def charts_section(timeline: Timeline) -> str:
    width = bucket_width(timeline.duration)
    counts = (
        f"{len(timeline.acked)} acknowledged, {len(timeline.failed)} failed and "
        f"{len(timeline.indeterminate)} indeterminate sends; {len(timeline.received)} receives; "
        f"{len(timeline.faults)} fault windows. Buckets of {width:g} s."
    )
    return (
        "<h2>Throughput</h2>"
        + legend(
            (SENT_COLOR, "acknowledged sends/s"),
            *group_legend(timeline),
            (RECEIVED_COLOR, "receives/s"),
            (FAILED_COLOR, "failed sends (under the axis)"),
            (INDETERMINATE_COLOR, "indeterminate sends (under the axis)"),
        )
        + throughput_chart(timeline)
        + f'<div class="legend">{esc(counts)} Shaded bands: fault windows; dashed lines: '
        "phases. Hover a band, line or mark for details.</div>"
        + "<h2>Send latency</h2>"
        + legend(
            (P50_COLOR, "p50"),
            (P99_COLOR, "p99"),
            (MAX_COLOR, "max"),
            (INDETERMINATE_COLOR, "indeterminate sends (longest wait per bucket)"),
        )
        + latency_chart(timeline)
    )


def examples_cell(examples: Sequence[str]) -> str:
    if not examples:
        return ""
    shown = "".join(f"<li>{esc(example)}</li>" for example in examples[:MAX_EXAMPLES])
    more = len(examples) - MAX_EXAMPLES
    if more > 0:
        shown += f"<li>... and {more} more</li>"
    return (
        f"<details><summary>{len(examples)} examples</summary>"
        f'<ul class="examples">{shown}</ul></details>'
    )


def results_section(results: Sequence[CheckResult]) -> str:
    if not results:
        return "<h2>Checks</h2><p>No checker results.</p>"
    rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td>{badge(r.valid)}</td>"
        f"<td><code>{counts_text(r.counts)}</code></td><td>{examples_cell(r.examples)}</td></tr>"
        for r in results
    )
    return (
        '<h2>Checks</h2><table class="results">'
        "<tr><th>check</th><th>verdict</th><th>counts</th><th>examples</th></tr>"
        f"{rows}</table>"
    )


def counts_text(counts: dict[str, int | float]) -> str:
    return ", ".join(f"{esc(key)}={esc(format_count(value))}" for key, value in counts.items())


WINDOW_COLUMNS = ("window", "fault", "targets", "start", "end", "longest_gap", "recovery")
WINDOW_SECONDS = ("start", "end", "longest_gap", "recovery")
GROUP_WINDOW_COLUMNS = (
    "window",
    "fault",
    "group",
    "targets",
    "start",
    "end",
    "judged",
    "healthy_acks",
    "down_group_acks",
    "longest_healthy_gap",
    "rejoin",
)
GROUP_WINDOW_SECONDS = ("start", "end", "longest_healthy_gap", "rejoin")
GROUP_WINDOW_COUNTS = ("healthy_acks", "down_group_acks")


def window_rows(results: Sequence[CheckResult], name: str) -> list[dict[str, object]]:
    windows = next((r.details.get("windows") for r in results if r.name == name), None)
    if not isinstance(windows, list):
        return []
    return [window for window in windows if isinstance(window, dict)]


def window_table(
    windows: Sequence[dict[str, object]],
    columns: Sequence[str],
    in_seconds: Sequence[str],
    css: str,
    counted: Sequence[str] = (),
) -> str:
    header = "".join(f"<th>{column}</th>" for column in columns)
    rows = []
    for window in windows:
        cells = []
        for column in columns:
            value = window.get(column)
            if column in in_seconds:
                cells.append(f'<td class="num">{esc(seconds(value))}</td>')
            elif column in counted:
                cells.append(f'<td class="num">{esc(format_value(value))}</td>')
            else:
                cells.append(f"<td>{esc(format_value(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{css}"><tr>{header}</tr>{"".join(rows)}</table>'


def windows_section(results: Sequence[CheckResult]) -> str:
    windows = window_rows(results, "availability")
    if not windows:
        return ""
    columns = list(WINDOW_COLUMNS)
    if any(window.get("group") is not None for window in windows):
        columns.insert(2, "group")
    return (
        "<h2>Fault windows</h2><p>Seconds since the start of the run, as measured by the "
        "availability check.</p>" + window_table(windows, columns, WINDOW_SECONDS, "windows")
    )


def group_windows_section(results: Sequence[CheckResult]) -> str:
    result = next((r for r in results if r.name == "group_independence"), None)
    if result is None:
        return ""
    windows = window_rows(results, "group_independence")
    intro = (
        "<h2>Group outages</h2><p>Windows that took one broker group's majority away "
        "(seconds since the start of the run) and the unkeyed sends the other groups "
        "acknowledged meanwhile (healthy_acks, which must not be 0 in a judged window: one "
        "longer than the send timeout plus 1 s), as the group_independence check counted "
        "them; rejoin: from the window's end to the next send the group it took down "
        "acknowledged (informational).</p>"
    )
    if not windows:
        return intro + "<p>No such window during the workload.</p>"
    return intro + window_table(
        windows, GROUP_WINDOW_COLUMNS, GROUP_WINDOW_SECONDS, "group-windows", GROUP_WINDOW_COUNTS
    )


MEMBERSHIP_STEP_COLUMNS = (
    "change",
    "group",
    "action",
    "node",
    "start",
    "took_s",
    "result",
    "voters",
    "learners",
    "acknowledged",
    "longest_gap",
    "error",
)
MEMBERSHIP_STEP_SECONDS = ("start", "took_s", "longest_gap")
MEMBERSHIP_CHANGE_COLUMNS = (
    "change",
    "group",
    "start",
    "end",
    "took_s",
    "acknowledged",
    "longest_gap",
    "fault_windows",
    "judged",
    "steps",
)
MEMBERSHIP_CHANGE_SECONDS = ("start", "end", "took_s", "longest_gap")


def membership_section(results: Sequence[CheckResult]) -> str:
    result = next((r for r in results if r.name == "membership"), None)
    if result is None:
        return ""
    steps = [row for row in result.details.get("steps", []) if isinstance(row, dict)]
    changes = [row for row in result.details.get("changes", []) if isinstance(row, dict)]
    return (
        "<h2>Membership changes</h2><p>Each change replaces a replica of one group: a spare "
        "started, added as a learner, caught up, promoted, a voter removed (after a leadership "
        "hand-over when it led) and stopped. Seconds since the start of the run; acknowledged "
        "and longest_gap: the changed group's acknowledged sends meanwhile, and the longest "
        "stretch without one (a judged change, one that overlaps no fault window, must not "
        "have one longer than the send timeout plus 1 s).</p>"
        + window_table(
            changes,
            MEMBERSHIP_CHANGE_COLUMNS,
            MEMBERSHIP_CHANGE_SECONDS,
            "membership-changes",
            ("acknowledged",),
        )
        + "<h3>Steps</h3>"
        + window_table(
            steps,
            MEMBERSHIP_STEP_COLUMNS,
            MEMBERSHIP_STEP_SECONDS,
            "membership-steps",
            ("acknowledged",),
        )
    )


def _rows(result: CheckResult, key: str) -> list[dict[str, object]]:
    rows = result.details.get(key)
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def delay_section(results: Sequence[CheckResult]) -> str:
    result = next((r for r in results if r.name == "delay"), None)
    if result is None:
        return ""
    return (
        "<h2>Delayed messages</h2><p>Lateness: a delayed message's store timestamp (when it "
        "became visible) minus the time it was asked for, per value. Judged: no fault window "
        "(extended by the settle time after its end) was near its due time; a judged value "
        "must not be later than the on-time bound, and no value may be early.</p>"
        + window_table(
            _rows(result, "histogram"),
            ("lateness", "judged", "not_judged"),
            (),
            "delay-histogram",
            ("judged", "not_judged"),
        )
        + "<h3>By fault</h3>"
        + window_table(
            _rows(result, "by_fault"),
            (
                "due",
                "values",
                "lateness_p50_ms",
                "lateness_p90_ms",
                "lateness_p99_ms",
                "lateness_max_ms",
            ),
            (),
            "delay-by-fault",
            ("values", "lateness_p50_ms", "lateness_p90_ms", "lateness_p99_ms", "lateness_max_ms"),
        )
        + "<h3>The latest</h3>"
        + window_table(
            _rows(result, "latest"),
            ("value", "lateness_ms", "judged", "due", "received"),
            ("received",),
            "delay-latest",
            ("lateness_ms",),
        )
    )


def retry_section(results: Sequence[CheckResult]) -> str:
    result = next((r for r in results if r.name == "retry"), None)
    if result is None:
        return ""
    return (
        "<h2>Retries</h2><p>What became of each value: handled by a handler at an attempt, or "
        "dead-lettered after its last attempt failed (found by the final read of the "
        "dead-letter topics).</p>"
        + window_table(_rows(result, "fates"), ("fate", "values"), (), "retry-fates", ("values",))
    )


def render_report(ops: list[Op], results: list[CheckResult], meta: dict[str, object]) -> str:
    """The whole page, as HTML text."""
    timeline = collect(ops)
    verdict = overall_verdict(results)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dledger-mq fault-injection run: {verdict}</title>"
        f"<style>{STYLE}</style></head><body>\n"
        "<h1>dledger-mq fault-injection run</h1>\n"
        + verdict_section(results)
        + "\n"
        + meta_table(meta)
        + "\n"
        + charts_section(timeline)
        + "\n"
        + results_section(results)
        + "\n"
        + windows_section(results)
        + "\n"
        + group_windows_section(results)
        + "\n"
        + membership_section(results)
        + "\n"
        + delay_section(results)
        + "\n"
        + retry_section(results)
        + "\n</body></html>\n"
    )


def write_report(
    path: Path, ops: list[Op], results: list[CheckResult], meta: dict[str, object]
) -> None:
    path.write_text(render_report(ops, results, meta), encoding="utf-8")
