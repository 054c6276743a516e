"""Small server-side SVG charts for the UI page: line charts (learning curves, score over time) and grouped bars.

No JavaScript and nothing fetched: each chart is an inline ``<figure>`` holding an ``<svg role="img">``
with a ``<title>`` and a ``<desc>`` that says what it shows, axes with ticks and labels, and a
tooltip (``<title>``) on every point or bar. Colours are CSS classes (``s0``..``s3``) that the page
styles for light and dark mode; axes and text use ``currentColor``. Every text is escaped.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from markupsafe import Markup, escape

#: How many series get their own colour class; later ones reuse them.
COLOURS = 4
WIDTH, HEIGHT = 460, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 12, 42
_ids = itertools.count(1)


@dataclass
class Series:
    """One line: ``points`` are (x, y); ``notes`` (same length) become the points' tooltips."""

    name: str
    points: list[tuple[float, float]]
    notes: list[str] = field(default_factory=list)
    #: Indices of points drawn hollow (e.g. a decision that kept the champion).
    hollow: frozenset[int] = frozenset()
    emphasis: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.floor(lo / step + 1e-9) * step
    ticks = [round(first, 10)]
    while ticks[-1] < hi - step * 1e-6 or len(ticks) < 2:  # up to the first tick at or above hi
        ticks.append(round(first + len(ticks) * step, 10))
    return ticks


def time_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Evenly spaced timestamps (epoch seconds) across [lo, hi]."""
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def time_label(span: float) -> Callable[[float], str]:
    """A tick formatter for epoch seconds: dates for long spans, times of day for short ones (UTC)."""
    fmt = "%Y-%m-%d" if span > 3 * 86400 else "%m-%d %H:%M"
    return lambda value: dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime(fmt)


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


class _Frame:
    """Maps data coordinates onto the plot area of one SVG."""

    def __init__(self, x_ticks: Sequence[float], y_ticks: Sequence[float], width: int, height: int) -> None:
        self.x0, self.x1 = min(x_ticks), max(x_ticks)
        self.y0, self.y1 = min(y_ticks), max(y_ticks)
        self.width, self.height = width, height
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - BOTTOM - (value - self.y0) / span * (self.height - TOP - BOTTOM)


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_format: Callable[[float], str],
          y_format: Callable[[float], str], x_label: str, y_label: str) -> list[str]:
    out = ['<g class="axis">']
    bottom, top = frame.height - BOTTOM, TOP
    for t in y_ticks:
        y = frame.y(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{frame.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(t))}</text>')
    for i, t in enumerate(x_ticks):
        x, label = frame.x(t), x_format(t)
        # long labels at the ends are anchored inwards, so they stay inside the picture
        anchor = "middle" if len(label) <= 4 or 0 < i < len(x_ticks) - 1 else ("start" if i == 0 else "end")
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
                   f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="{anchor}">{escape(label)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}"/>'
               f'<line x1="{LEFT}" x2="{frame.width - RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    mid_x, mid_y = (LEFT + frame.width - RIGHT) / 2, (top + bottom) / 2
    out.append(f'<text class="label" x="{mid_x:.1f}" y="{frame.height - 6}" text-anchor="middle">'
               f'{escape(x_label)}</text>'
               f'<text class="label" transform="translate(13 {mid_y:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)}</text></g>')
    return out


def _figure(svg_body: list[str], *, title: str, desc: str, legend: Sequence[tuple[str, int, bool]],
            width: int, height: int, chart_id: str) -> Markup:
    items = "".join(f'<li><span class="key s{i % COLOURS}{" hollow" if hollow else ""}"></span>{escape(name)}</li>'
                    for name, i, hollow in legend)
    svg = (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
           f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>'
           + "".join(svg_body) + "</svg>")
    caption = f'<figcaption><b>{escape(title)}</b>{f"<ul class=legend>{items}</ul>" if items else ""}</figcaption>'
    return Markup(f'<figure class="chart" id="{chart_id}">{svg}{caption}</figure>')


def empty_chart(title: str, message: str) -> Markup:
    """A placeholder of the same size that says why there is nothing to draw."""
    return Markup(f'<figure class="chart empty"><div class="nodata">{escape(message)}</div>'
                  f'<figcaption><b>{escape(title)}</b></figcaption></figure>')


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, desc: str = "",
               x_ticks: Sequence[float] | None = None, x_format: Callable[[float], str] = _fmt,
               y_format: Callable[[float], str] = _fmt, y_floor: float | None = None, integer_x: bool = False,
               step: bool = False, width: int = WIDTH, height: int = HEIGHT, chart_id: str | None = None) -> Markup:
    """Lines with a marker per point; ``step`` holds each value until the next point (a score over time)."""
    points = [p for s in series for p in s.points if math.isfinite(p[1])]
    if not points:
        return empty_chart(title, "no data yet")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo = min(ys) if y_floor is None else min(y_floor, min(ys))
    y_ticks = nice_ticks(lo, max(ys))
    x_ticks = list(x_ticks) if x_ticks is not None else nice_ticks(min(xs), max(xs), integer=integer_x)
    frame = _Frame(x_ticks, y_ticks, width, height)
    body = _axes(frame, x_ticks, y_ticks, x_format, y_format, x_label, y_label)
    for i, s in enumerate(series):
        pts = [(frame.x(x), frame.y(y), j) for j, (x, y) in enumerate(s.points) if math.isfinite(y)]
        if not pts:
            continue
        cls = f"s{i % COLOURS}{' strong' if s.emphasis else ''}"
        path = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
        for (_, py, _), (x, y, _) in zip(pts, pts[1:]):
            path.append(f"H{x:.1f}V{y:.1f}" if step else f"L{x:.1f},{y:.1f}")
        body.append(f'<g class="series {cls}"><path d="{"".join(path)}"/>')
        for x, y, j in pts:
            note = s.notes[j] if j < len(s.notes) else f"{s.name}: {y_format(s.points[j][1])}"
            hollow = ' class="hollow"' if j in s.hollow else ""
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2"{hollow}><title>{escape(note)}</title></circle>')
        body.append("</g>")
    legend = [(s.name, i, False) for i, s in enumerate(series)]
    return _figure(body, title=title, desc=desc or title, legend=legend, width=width, height=height,
                   chart_id=chart_id or f"chart{next(_ids)}")


def bar_chart(categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float | None]]], *, title: str,
              x_label: str, y_label: str, desc: str = "", notes: Sequence[Sequence[str]] | None = None,
              y_format: Callable[[float], str] = _fmt, width: int = WIDTH, height: int = HEIGHT,
              chart_id: str | None = None) -> Markup:
    """Grouped bars: one group of bars per category, one bar per (name, values) group, from zero."""
    values = [v for _, vals in groups for v in vals if v is not None and math.isfinite(v)]
    if not categories or not values:
        return empty_chart(title, "no data yet")
    y_ticks = nice_ticks(0.0, max(max(values), 1e-9))
    frame = _Frame([0, len(categories)], y_ticks, width, height)
    body = _axes(frame, [], y_ticks, _fmt, y_format, x_label, y_label)
    slot = (frame.x(1) - frame.x(0))
    bar = slot * 0.8 / max(1, len(groups))
    for c, name in enumerate(categories):
        left = frame.x(c) + slot * 0.1
        body.append(f'<text x="{frame.x(c) + slot / 2:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" '
                    f'class="tick">{escape(name)}</text>')
        for g, (group, vals) in enumerate(groups):
            v = vals[c] if c < len(vals) else None
            if v is None or not math.isfinite(v):
                continue
            top = frame.y(v)
            note = notes[g][c] if notes else f"{group}, {name}: {y_format(v)}"
            body.append(f'<rect class="bar s{g % COLOURS}" x="{left + g * bar:.1f}" y="{top:.1f}" '
                        f'width="{max(1.0, bar - 1):.1f}" height="{frame.y(0) - top:.1f}">'
                        f'<title>{escape(note)}</title></rect>')
    legend = [(name, g, False) for g, (name, _) in enumerate(groups)]
    return _figure(body, title=title, desc=desc or title, legend=legend, width=width, height=height,
                   chart_id=chart_id or f"chart{next(_ids)}")


__all__ = ["Series", "bar_chart", "empty_chart", "line_chart", "nice_ticks", "time_label", "time_ticks"]
