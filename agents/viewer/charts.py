"""Charts as inline SVG strings, drawn on the server from the viewer's read model:
convergence, error-vs-time with the Pareto front, the roofline with every kernel, bars,
and a per-pipe Gantt. No script runs in the page; each point links to its kernel and
carries a <title> tooltip. Every text that reaches the SVG is escaped here.
"""
from __future__ import annotations

import math
from functools import lru_cache
from html import escape
from typing import Callable

from agents.viewer.data import Point, Roof
from agents.viewer.llm import MISS_FACTOR, Verdict

W, H = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 42
COLOURS = {"S": "#8c564b", "V": "#9467bd", "M": "#d62728", "MTE1": "#2ca02c", "MTE2": "#1f77b4",
           "MTE3": "#ff7f0e"}
Link = Callable[[Point], str]


class Scale:
    """Maps a data interval onto a pixel interval, linearly or by log10."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        if log:
            lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        if hi <= lo:
            lo, hi = (lo / 2, lo * 2) if log else (lo - 1, lo + 1)
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log
        self._start = math.log10(lo) if log else lo            # charts call this thousands of times a page
        self._per_unit = (b - a) / ((math.log10(hi) if log else hi) - self._start)

    def __call__(self, v: float) -> float:
        v = self.lo if v < self.lo else self.hi if v > self.hi else v
        return self.a + ((math.log10(v) if self.log else v) - self._start) * self._per_unit

    def unclamped(self, v: float) -> float:
        """The pixel of a value outside the interval too (for lines the chart clips)."""
        return self.a + ((math.log10(max(v, 1e-300)) if self.log else v) - self._start) * self._per_unit

    def ticks(self) -> list[float]:
        if self.log:
            k0, k1 = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            for steps in ((1,) if k1 - k0 > 3 else (1, 2, 5), (1, 2, 3, 5, 7), range(1, 10)):
                ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in steps if self.lo <= m * 10.0 ** k <= self.hi]
                if len(ticks) >= 3:
                    break
            return ticks
        raw = (self.hi - self.lo) / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step) + 1)]


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        mant, exp = f"{v:.0e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:.3g}"


def _frame(xs: Scale, ys: Scale, xlabel: str, ylabel: str, label: str) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
           f'aria-label="{escape(label)}">',
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="plot"/>']
    for t in xs.ticks():
        x = xs(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" class="tick" text-anchor="middle">{fmt(t)}</text>')
    for t in ys.ticks():
        y = ys(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 5}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(t)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" class="axis" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" class="axis" text-anchor="middle" '
               f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
    return out


@lru_cache(maxsize=8192)
def _tip(p: Point) -> str:
    time = f"{p.time_ns / 1e3:.2f} us" if p.time_ns else "-"
    err = f"{p.error:.2e}" if p.error is not None else "-"
    return escape(f"#{p.seq} {p.strategy_id} {p.family} [{p.origin}]: {p.tflops:.2f} TFLOP/s, {time}, "
                  f"error {err}, {p.bottleneck or p.status}")


def _empty(message: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" class="chart" role="img" '
            f'aria-label="{escape(label)}"><text x="{W / 2}" y="34" text-anchor="middle" class="axis">'
            f'{escape(message)}</text></svg>')


def convergence_svg(points: list[Point], series: list[tuple[int, float]], link: Link) -> str:
    """Best TFLOP/s so far after each evaluation (a step line), every ok kernel as a dot, failures as red ticks."""
    if not points:
        return _empty("no evaluations yet", "convergence")
    xs = Scale(0, max(1, len(points) - 1), LEFT + 6, W - RIGHT - 6)
    ys = Scale(0, max(p.tflops for p in points) * 1.08 or 1.0, H - BOTTOM, TOP)
    out = _frame(xs, ys, "evaluation", "TFLOP/s", "convergence")
    path = [f"M{xs(series[0][0]):.1f},{ys(series[0][1]):.1f}"]
    path += [f"H{xs(i):.1f} V{ys(best):.1f}" for i, best in series[1:]]
    out.append(f'<path d="{" ".join(path)}" class="best-line"/>')
    for i, p in enumerate(points):
        if p.ok:
            out.append(f'<a href="{escape(link(p))}"><circle cx="{xs(i):.1f}" cy="{ys(p.tflops):.1f}" r="3.2" '
                       f'class="conv-pt"><title>{_tip(p)}</title></circle></a>')
        else:
            out.append(f'<a href="{escape(link(p))}"><path d="M{xs(i) - 3:.1f},{H - BOTTOM - 3} l6,6 m0,-6 l-6,6" '
                       f'class="conv-fail"><title>{_tip(p)}</title></path></a>')
    return "".join(out) + "</svg>"


def pareto_svg(points: list[Point], front: list[Point], link: Link) -> str:
    """Worst relative error vs time of every ok kernel (log-log); the front joins the undominated ones."""
    pts = [p for p in points if p.ok and p.time_ns and p.error is not None]
    if not pts:
        return _empty("no ok evaluation yet", "error vs time")
    xs = Scale(min(p.time_ns for p in pts) / 1e3 / 1.3, max(p.time_ns for p in pts) / 1e3 * 1.3,
               LEFT, W - RIGHT, log=True)
    ys = Scale(max(min(p.error for p in pts), 1e-30) / 2, max(max(p.error for p in pts), 1e-30) * 2,
               H - BOTTOM, TOP, log=True)
    out = _frame(xs, ys, "time (us, log)", "worst relative error (log)", "error vs time")
    on_front = {(p.seq, p.attempt) for p in front}
    if front:
        first, *rest = front
        d = [f"M{xs(first.time_ns / 1e3):.1f},{ys(first.error):.1f}"]
        d += [f"H{xs(p.time_ns / 1e3):.1f} V{ys(p.error):.1f}" for p in rest]
        out.append(f'<path d="{" ".join(d)}" class="front-line"/>')
    for p in pts:
        cls = "pt front" if (p.seq, p.attempt) in on_front else "pt"
        out.append(f'<a href="{escape(link(p))}"><circle cx="{xs(p.time_ns / 1e3):.1f}" cy="{ys(p.error):.1f}" '
                   f'r="{4.2 if cls != "pt" else 3.2}" class="{cls}"><title>{_tip(p)}</title></circle></a>')
    return "".join(out) + "</svg>"


def roofline_svg(roof: Roof, points: list[Point], link: Link, shape: str) -> str:
    """The machine's roofs (the task's engine solid, other engines dashed) and every ok kernel at the
    task's arithmetic intensity (FLOPs over compulsory bytes at the run's shape)."""
    ok = [p for p in points if p.ok and p.tflops > 0]
    x_lo, x_hi = min(roof.intensity, roof.ridge) / 10, max(roof.intensity, roof.ridge) * 10
    peaks = [roof.peak_tflops, *roof.other_peaks.values()]
    y_lo = min([x_lo * roof.hbm_gbps / 1e3, *(p.tflops for p in ok)]) / 1.5
    xs = Scale(x_lo, x_hi, LEFT, W - RIGHT, log=True)
    ys = Scale(y_lo, max(peaks) * 1.6, H - BOTTOM, TOP, log=True)
    out = _frame(xs, ys, "arithmetic intensity (FLOP per compulsory byte, log)", "TFLOP/s (log)", "roofline")
    for engine, peak in sorted(roof.other_peaks.items(), key=lambda kv: -kv[1]):
        if not ys.lo <= peak <= ys.hi:
            continue
        ridge = peak * 1e3 / roof.hbm_gbps
        out.append(f'<path d="M{xs(max(x_lo, ridge)):.1f},{ys(peak):.1f} H{W - RIGHT}" class="roof-other"/>'
                   f'<text x="{W - RIGHT - 4}" y="{ys(peak) - 3:.1f}" class="tick" text-anchor="end">'
                   f'{escape(engine)} {peak:.0f}</text>')
    out.append(f'<path d="M{xs(x_lo):.1f},{ys(x_lo * roof.hbm_gbps / 1e3):.1f} L{xs(roof.ridge):.1f},'
               f'{ys(roof.peak_tflops):.1f} H{W - RIGHT}" class="roof"/>'
               f'<text x="{xs(roof.ridge) + 4:.1f}" y="{ys(roof.peak_tflops) - 4:.1f}" class="roof-label">'
               f'{escape(roof.engine)} peak {roof.peak_tflops:.1f}, ridge {roof.ridge:.0f} FLOP/B</text>')
    x = xs(roof.intensity)
    out.append(f'<path d="M{x:.1f},{TOP} V{H - BOTTOM}" class="intensity"/>'
               f'<text x="{x + 4:.1f}" y="{TOP + 12}" class="tick">{escape(shape)}: {roof.intensity:.0f} '
               f'FLOP/B, limit {roof.limit_tflops:.1f}</text>')
    for p in ok:
        out.append(f'<a href="{escape(link(p))}"><circle cx="{x:.1f}" cy="{ys(p.tflops):.1f}" r="3.6" '
                   f'class="roof-pt"><title>{_tip(p)} = {p.pct_roofline:.1f}% of the limit</title></circle></a>')
    return "".join(out) + "</svg>"


def predictions_svg(verdicts: list[Verdict], link: Callable[[str], str | None]) -> str:
    """Each strategy's predicted speed-up over its first parent against the measured one: the
    diagonal is a perfect prediction, the band within MISS_FACTOR of it; misses are red, failed
    kernels red crosses on the bottom edge. Each axis spans its own values (models predict in a
    narrow range), on a log scale where they span more than 4x. `link(strategy_id)`: its kernel page or None."""
    if not verdicts:
        return _empty("no prediction yet", "predicted vs measured")
    predicted = [v.prediction.predicted for v in verdicts]
    measured = [v.prediction.measured for v in verdicts if v.prediction.measured] + [1.0]
    x_log, y_log = max(predicted) > 4 * min(predicted), max(measured) > 4 * min(measured)   # log only if wide
    xs = Scale(min(predicted) / 1.15, max(predicted) * 1.15, LEFT, W - RIGHT, log=x_log)
    ys = Scale(min(measured) / 1.3, max(measured) * 1.3, H - BOTTOM, TOP, log=y_log)
    out = _frame(xs, ys, "predicted speed-up over the first parent" + " (log)" * x_log,
                 "measured speed-up" + " (log)" * y_log, "predicted vs measured")
    along = [xs.lo + (xs.hi - xs.lo) * i / 48 for i in range(49)]       # the band's edges are curves unless log-log
    line = lambda factor: [f"{xs(x):.1f},{ys.unclamped(x * factor):.1f}" for x in along]   # noqa: E731
    out.append(f'<clipPath id="prediction-plot"><rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
               f'height="{H - TOP - BOTTOM}"/></clipPath><g clip-path="url(#prediction-plot)">'
               f'<path d="M{" L".join(line(MISS_FACTOR) + line(1 / MISS_FACTOR)[::-1])}Z" class="band"/>'
               f'<path d="M{" L".join(line(1.0))}" class="diag"/></g>'
               f'<path d="M{LEFT},{ys(1.0):.1f} H{W - RIGHT}" class="unity"/>'
               f'<text x="{W - RIGHT - 4}" y="{ys(1.0) - 4:.1f}" class="tick" text-anchor="end">'
               f'as fast as the parent</text>')
    for v in verdicts:
        p = v.prediction
        what = (f"#{p.seq}{f'.{p.attempt}' if p.attempt else ''} {p.strategy_id}: predicted {p.predicted:.2f}x, "
                + (f"measured {p.measured:.2f}x" if p.measured is not None else "failed")
                + f", attacks {p.bottleneck}" + (" (miss)" if v.miss else ""))
        x = xs(p.predicted)
        if p.measured is None:
            mark = (f'<path d="M{x - 3:.1f},{H - BOTTOM - 3} l6,6 m0,-6 l-6,6" class="pred-fail">'
                    f'<title>{escape(what)}</title></path>')
        else:
            mark = (f'<circle cx="{x:.1f}" cy="{ys(p.measured):.1f}" r="3.6" '
                    f'class="pred-pt{" miss" if v.miss else ""}"><title>{escape(what)}</title></circle>')
        href = link(p.strategy_id)
        out.append(f'<a href="{escape(href)}">{mark}</a>' if href else mark)
    return "".join(out) + "</svg>"


def bars_svg(items: list[tuple[str, float, str, str | None]], vmax: float, label: str, log: bool = False,
             mark: float | None = None) -> str:
    """Horizontal bars: (label, value, text shown after the bar, link or None). `mark` draws a
    vertical reference line at that value (e.g. the error budget as ratio 1)."""
    if not items:
        return _empty("nothing to show", label)
    row, left, right = 22, 150, 190
    height = row * len(items) + 10
    lo = min(v for _, v, _, _ in items if v > 0) / 3 if log and any(v > 0 for _, v, _, _ in items) else 0.0
    xs = Scale(lo or 1e-12, max(vmax, mark or 0) * (1.5 if log else 1.0), left, W - right, log=log) if log \
        else Scale(0, vmax or 1.0, left, W - right)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" class="chart bars" role="img" '
           f'aria-label="{escape(label)}">']
    for i, (name, value, text, href) in enumerate(items):
        y = 5 + i * row
        width = max(0.0, xs(value) - left) if value > 0 else 0.0
        bar = (f'<rect x="{left}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" class="bar">'
               f'<title>{escape(name)}: {escape(text)}</title></rect>')
        out.append(f'<text x="{left - 6}" y="{y + row / 2 + 3}" class="tick" text-anchor="end">{escape(name)}</text>'
                   + (f'<a href="{escape(href)}">{bar}</a>' if href else bar)
                   + f'<text x="{left + width + 5:.1f}" y="{y + row / 2 + 3}" class="tick">{escape(text)}</text>')
    if mark is not None:
        out.append(f'<path d="M{xs(mark):.1f},2 V{height - 2}" class="mark"/>')
    return "".join(out) + "</svg>"


def gantt_svg(timeline: list[tuple[int, str, float, float]], pipes: list[str], clock_ghz: float,
              width: int = 1100, span_us: float | None = None) -> str:
    """One core's ops as intervals per pipe over time; intervals closer than half a pixel are
    merged so a long trace stays a few hundred rectangles. `span_us` fixes the time axis, so
    timelines drawn one above the other compare at a glance."""
    if not timeline:
        return _empty("the core ran no op", "timeline")
    used = [p for p in pipes if any(t[1] == p for t in timeline)]
    end = max(t[3] for t in timeline) or 1.0
    row = 26
    height = TOP + row * len(used) + BOTTOM
    right = 48
    xs = Scale(0, span_us or end / clock_ghz / 1e3, LEFT, width - right)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart gantt" role="img" '
           f'aria-label="timeline">']
    for t in xs.ticks():
        out.append(f'<line x1="{xs(t):.1f}" x2="{xs(t):.1f}" y1="{TOP}" y2="{height - BOTTOM}" class="grid"/>'
                   f'<text x="{xs(t):.1f}" y="{height - BOTTOM + 14}" class="tick" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<text x="{(LEFT + width - right) / 2}" y="{height - 8}" class="axis" text-anchor="middle">time (us)</text>')
    for r, pipe in enumerate(used):
        y = TOP + r * row
        ops = sorted((t for t in timeline if t[1] == pipe), key=lambda t: t[2])
        busy = sum(t[3] - t[2] for t in ops) / end
        out.append(f'<text x="{LEFT - 5}" y="{y + row / 2 + 4}" class="tick" text-anchor="end">{escape(pipe)}</text>')
        merged: list[list] = []
        for i, _, s, e in ops:
            x0, x1 = xs(s / clock_ghz / 1e3), xs(e / clock_ghz / 1e3)
            if merged and x0 - merged[-1][1] < 0.5:
                merged[-1][1] = max(merged[-1][1], x1)
                merged[-1][3] = i
                merged[-1][4] += 1
            else:
                merged.append([x0, x1, i, i, 1])
        colour = COLOURS.get(pipe, "#555")
        for x0, x1, i0, i1, n in merged:
            what = f"op {i0}" if n == 1 else f"{n} ops {i0}..{i1}"
            out.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 0.6):.1f}" height="{row - 8}" '
                       f'fill="{colour}" class="op"><title>{escape(pipe)} {what}</title></rect>')
        out.append(f'<text x="{width - right + 4}" y="{y + row / 2 + 4}" class="tick">{busy:.0%}</text>')
    return "".join(out) + "</svg>"
