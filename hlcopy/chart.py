"""A line chart as a standalone SVG document, written by hand (no plotting library).

Used by the backtest for the leader's scaled PnL beside the copy's. Pure: series in, text out.
The document has a white background, a title, a legend, labelled axes (time in UTC, money in
USD), a dashed zero line, and one polyline per series in its own colour. Long series are thinned
to the lowest and highest value of each pixel column, so the shape (and every extreme) survives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from hlcopy.record import record

#: The colours series take in turn: the leader's curve first, then ours, then sweep variants.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


@record
class Series:
    """One line: (time ms, value) points in time order."""

    name: str
    color: str
    points: Sequence[tuple[int, float]]


def _nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2 or 5 x 10^k) giving about ``ticks`` intervals over ``span``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * power:
            return m * power
    return 10.0 * power


def _money(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10 or v == 0:
        return f"{v:.0f}"
    return f"{v:.2f}"


def _when(ms: int, span_ms: int) -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if span_ms <= 2 * 86_400_000:
        return t.strftime("%m-%d %H:%M")
    return t.strftime("%Y-%m-%d")


def _thin(
    points: Sequence[tuple[int, float]], t0: int, t1: int, columns: int
) -> list[tuple[int, float]]:
    """At most two points (lowest, highest) per pixel column, in time order."""
    if len(points) <= 2 * columns:
        return list(points)
    span = max(1, t1 - t0)
    out: list[tuple[int, float]] = []
    bucket: list[tuple[int, float]] = []
    current = -1
    for p in points:
        col = min(columns - 1, (p[0] - t0) * columns // span)
        if col != current and bucket:
            lo = min(bucket, key=lambda q: q[1])
            hi = max(bucket, key=lambda q: q[1])
            out.extend(sorted({lo, hi}))
            bucket = []
        current = col
        bucket.append(p)
    if bucket:
        lo = min(bucket, key=lambda q: q[1])
        hi = max(bucket, key=lambda q: q[1])
        out.extend(sorted({lo, hi}))
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str = "PnL (USD)",
    width: int = 900,
    height: int = 420,
) -> str:
    """The SVG document of ``series`` (at least one point overall)."""
    left, right, top, bottom = 78, 24, 56, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    pts = [p for s in series for p in s.points]
    if not pts:
        raise ValueError("a chart needs at least one point")
    t0 = min(p[0] for p in pts)
    t1 = max(p[0] for p in pts)
    if t1 == t0:
        t1 = t0 + 1
    lo = min(0.0, *(p[1] for p in pts))
    hi = max(0.0, *(p[1] for p in pts))
    if hi - lo < 1e-9:
        hi, lo = hi + 1.0, lo - 1.0
    step = _nice_step(hi - lo, 5)
    lo = math.floor(lo / step) * step
    hi = math.ceil(hi / step) * step

    def x(t: int) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold" fill="#222222">'
        f"{escape(title)}</text>",
    ]
    # Grid and y labels.
    v = lo
    while v <= hi + step / 2:
        yy = y(v)
        out.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
            f'stroke="#e6e6e6" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end" fill="#555555">'
            f"{_money(v)}</text>"
        )
        v += step
    zero = y(0.0)
    out.append(
        f'<line x1="{left}" y1="{zero:.1f}" x2="{left + plot_w}" y2="{zero:.1f}" '
        f'stroke="#999999" stroke-width="1" stroke-dasharray="4 3"/>'
    )
    # X ticks.
    for i in range(6):
        t = t0 + (t1 - t0) * i // 5
        xx = x(t)
        out.append(
            f'<line x1="{xx:.1f}" y1="{top + plot_h}" x2="{xx:.1f}" y2="{top + plot_h + 5}" '
            f'stroke="#555555" stroke-width="1"/>'
        )
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        out.append(
            f'<text x="{xx:.1f}" y="{top + plot_h + 19}" text-anchor="{anchor}" '
            f'fill="#555555">{escape(_when(t, t1 - t0))} </text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#bbbbbb" stroke-width="1"/>'
    )
    out.append(
        f'<text x="16" y="{top + plot_h / 2:.1f}" fill="#555555" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    out.append(
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" fill="#555555">'
        "time (UTC)</text>"
    )
    # Series.
    for s in series:
        if not s.points:
            continue
        thin = _thin(s.points, t0, t1, plot_w)
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in thin)
        if len(thin) == 1:
            (t, v) = thin[0]
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{s.color}"/>')
        else:
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{s.color}" '
                'stroke-width="2.5" stroke-linejoin="round" stroke-linecap="round"/>'
            )
    # Legend.
    lx = left + 10
    for s in series:
        out.append(
            f'<rect x="{lx}" y="{top - 22}" width="18" height="4" fill="{s.color}"/>'
            f'<text x="{lx + 24}" y="{top - 16}" fill="#222222">{escape(s.name)}</text>'
        )
        lx += 34 + 7 * len(s.name)
    out.append("</svg>")
    return "\n".join(out) + "\n"
