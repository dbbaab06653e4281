"""The overview's chart: PKIOperations per hour as stacked bars (successes, pending answers,
failures by error code), computed here as plain geometry and drawn as inline SVG by the
template, so that it needs no script and every label passes Jinja2's escaping."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from scepd.service.activity import Hour

WIDTH, HEIGHT = 720, 240
LEFT, BOTTOM, TOP = 40, 28, 10
NAMED_FAILURES = 4  # the most frequent codes get a colour each; the rest share one


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    css: str
    title: str


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    baseline: float
    bars: tuple[Bar, ...]
    y_ticks: tuple[tuple[float, int], ...]
    x_labels: tuple[tuple[float, str], ...]
    legend: tuple[tuple[str, str, int], ...]  # (css class, label, count over the period)
    total: int


def _scale_top(peak: int) -> int:
    """A round number at or above `peak` for the y axis."""
    for step in (1, 2, 5):
        for power in range(0, 9):
            top = step * 10**power
            if top >= peak:
                return max(top, 1)
    return peak


def chart(hours: list[Hour]) -> Chart:
    failures = sum((h.failures for h in hours), Counter())
    named = [code for code, _ in failures.most_common(NAMED_FAILURES)]
    css_of = {code: f"fail{i}" for i, code in enumerate(named)}
    top = _scale_top(max((h.total for h in hours), default=0))
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(len(hours), 1)
    baseline = HEIGHT - BOTTOM
    bars = []
    for i, hour in enumerate(hours):
        parts = [("success", "successes", hour.successes), ("pending", "pending", hour.pending)]
        parts += [(css_of.get(code, "failother"), code, n) for code, n in sorted(hour.failures.items())]
        y, segments = baseline, []
        for css, label, count in parts:
            if not count:
                continue
            height = plot_h * count / top
            y -= height
            segments.append(Segment(round(y, 1), round(height, 1), css, f"{hour.start:%H}:00 {label}: {count}"))
        bars.append(Bar(round(LEFT + i * slot + 2, 1), round(slot - 4, 1), tuple(segments)))
    ticks = tuple((round(baseline - plot_h * v / top, 1), v) for v in sorted({0, top // 2, top}))
    labels = tuple((round(LEFT + i * slot + slot / 2, 1), f"{h.start:%H}") for i, h in enumerate(hours) if i % 3 == 0)
    legend = [("success", "successes", sum(h.successes for h in hours)), ("pending", "pending", sum(h.pending for h in hours))]
    legend += [(css_of[code], code, failures[code]) for code in named]
    other = sum(n for code, n in failures.items() if code not in css_of)
    if other:
        legend.append(("failother", "other failures", other))
    return Chart(WIDTH, HEIGHT, baseline, tuple(bars), ticks, labels, tuple(legend), sum(h.total for h in hours))
