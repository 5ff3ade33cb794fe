"""Pure drawing of multi-row charts: numbers in, rows of (text, kind) runs out. No Textual here,
so each part is tested on its own; the widget (:mod:`.series`) maps each kind to a theme style.

A chart is braille (asciimoo/drawille's encoding: U+2800 plus a bit per dot, 2x4 dots a cell),
one column of data a cell, four dot rows a cell row. Each column draws, per layer:

- its **mean** as two dots side by side (the line), joined to the column before by a run of
  dots in the right dot column (so a step reads as a line, not as scattered points);
- its **min–max** (in a coarse view a column is a bucket of many seconds) as a run of dots in
  the left dot column: the band, so a spike or a dip inside a bucket never averages away.

A cell with a line dot is of the layer's ``line`` kind, one with band dots only of its ``band``
kind; the widget colours kinds, not cells, and each row comes out as runs of one kind, so it
costs one segment (one escape pair) per run, not one per cell: over SSH every escape costs.

:class:`AutoRange` is the y-range: rates start at 0; latencies get a floor on the span (±5% of
the median by default), so noise never fills the chart and looks like a trend, and the range
changes with hysteresis: at once when the data leaves it, only after several calls in a row
when it is much wider than needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLANK = " "
# dot bits of a braille cell, top dot row first: (left column, right column)
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


@dataclass(frozen=True)
class Layer:
    """One curve of a chart: per column the mean, and the min and max (NaN: no data)."""

    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


Run = tuple[str, str]  # (text, kind): kind "" for empty cells, "line0", "band0", "line1", ...


def plot(layers: Sequence[Layer], height: int, lo: float, hi: float) -> list[list[Run]]:
    """``height`` rows, top first, each a list of runs; as wide as the layers' arrays. Values
    outside ``lo``..``hi`` are drawn at the edge (the range is the caller's choice)."""
    width = len(layers[0].mean) if layers else 0
    height = max(1, height)
    levels = height * 4
    bits = np.zeros((height, width), dtype=np.int64)
    kinds = np.full((height, width), -1, dtype=np.int64)  # 2*layer (line) or 2*layer + 1 (band)
    span = hi - lo if hi > lo else 1.0

    def level(values: np.ndarray) -> np.ndarray:
        scaled = np.round((np.clip(values, lo, hi) - lo) / span * (levels - 1))
        return np.where(np.isfinite(values), scaled, -1).astype(np.int64)

    def put(y: int, x: int, side: int, kind: int) -> None:
        row, dot = height - 1 - y // 4, 3 - y % 4
        bits[row, x] |= _DOTS[dot][side]
        if kinds[row, x] < 0 or kind < kinds[row, x]:  # the first layer's line wins a cell
            kinds[row, x] = kind

    for index in reversed(range(len(layers))):  # later layers first: earlier ones win ties
        layer = layers[index]
        means = level(np.asarray(layer.mean, dtype=np.float64))
        lows = level(np.asarray(layer.low if layer.low is not None else layer.mean, float))
        highs = level(np.asarray(layer.high if layer.high is not None else layer.mean, float))
        before = -1
        for x in range(width):
            m, low, high = int(means[x]), int(lows[x]), int(highs[x])
            if low >= 0 and high > low:
                for y in range(low, high + 1):
                    put(y, x, 0, 2 * index + 1)
            if m < 0:
                before = -1
                continue
            put(m, x, 0, 2 * index)
            put(m, x, 1, 2 * index)
            if before >= 0 and abs(before - m) > 1:  # join to the column before
                step = 1 if before > m else -1
                for y in range(m + step, before, step):
                    put(y, x, 1, 2 * index)
            before = m
    rows: list[list[Run]] = []
    for r in range(height):
        runs: list[Run] = []
        text: list[str] = []
        current = None
        for x in range(width):
            k = int(kinds[r, x])
            name = "" if k < 0 else f"{'band' if k % 2 else 'line'}{k // 2}"
            char = BLANK if k < 0 else chr(0x2800 + int(bits[r, x]))
            if name != current and text:
                runs.append(("".join(text), current or ""))
                text = []
            current = name
            text.append(char)
        if text:
            runs.append(("".join(text), current or ""))
        rows.append(runs)
    return rows


def axis_number(value: float) -> str:
    """A y-axis label in at most 6 characters: ``0``, ``12.5``, ``1,250``, ``12.5k``."""
    a = abs(value)
    if a >= 100_000:
        return f"{value / 1000:,.0f}k" if a < 10**7 else f"{value / 10**6:,.0f}M"
    if a >= 10_000:
        return f"{value / 1000:.1f}k"
    if a >= 100 or value == 0:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _nice(value: float) -> float:
    """A round step near ``value``: 1, 2 or 5 times a power of ten."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if value <= m * power:
            return m * power
    return 10 * power


class AutoRange:
    """A chart's y-range, kept between calls. ``from_zero`` for rates and counts (their level
    is the news); otherwise the range follows the data with a floor on its span: at least
    ``floor_ratio`` of the median on either side, and ``min_span`` in all."""

    def __init__(self, from_zero: bool = False, floor_ratio: float = 0.05,
                 min_span: float = 0.0, patience: int = 5) -> None:
        self.from_zero, self.floor_ratio, self.min_span = from_zero, floor_ratio, min_span
        self.patience = patience
        self.lo: float | None = None
        self.hi: float | None = None
        self._too_wide = 0

    def fit(self, low: np.ndarray, high: np.ndarray, middle: np.ndarray) -> tuple[float, float]:
        """The range for data whose columns span ``low``..``high``, centred on ``middle`` (the
        means: their median is the floor's reference)."""
        finite_lo, finite_hi = low[np.isfinite(low)], high[np.isfinite(high)]
        if not finite_lo.size or not finite_hi.size:
            return (self.lo, self.hi) if self.lo is not None else (0.0, 1.0)
        d_lo, d_hi = float(finite_lo.min()), float(finite_hi.max())
        if self.from_zero:
            want_lo, want_hi = 0.0, d_hi * 1.1 if d_hi > 0 else max(1.0, self.min_span)
        else:
            mids = middle[np.isfinite(middle)]
            median = float(np.median(mids)) if mids.size else (d_lo + d_hi) / 2
            half = max((d_hi - d_lo) / 2 * 1.1, abs(median) * self.floor_ratio,
                       self.min_span / 2, 1e-9)
            centre = (d_lo + d_hi) / 2
            want_lo, want_hi = centre - half, centre + half
            if d_lo >= 0:
                want_lo = max(0.0, want_lo)
        fits = (self.lo is not None and self.hi is not None
                and self.lo <= d_lo and d_hi <= self.hi)
        if fits:
            too_wide = (self.hi - self.lo) > 2.5 * (want_hi - want_lo)
            self._too_wide = self._too_wide + 1 if too_wide else 0
            if self._too_wide < self.patience:
                return self.lo, self.hi
        step = _nice((want_hi - want_lo) / 10)  # round ends, within a tenth of the span
        self.lo = 0.0 if self.from_zero else math.floor(want_lo / step) * step
        self.hi = math.ceil(want_hi / step) * step
        if self.hi <= self.lo:
            self.hi = self.lo + step
        self._too_wide = 0
        return self.lo, self.hi


def span_text(seconds: float) -> str:
    """``45s``, ``12m``, ``1h30m``: how much time a view covers."""
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600 and seconds % 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 3600 * 2:
        return f"{seconds // 60}m"
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if rest // 60 else f"{h}h"


def step_text(seconds: int) -> str:
    """``1s``, ``20s``, ``1m``, ``2m08s`` a column."""
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if s else f"{m}m"
