"""Charts over time: a title with the values now, a multi-row braille chart with its y-range
labelled (max at the top, min at the bottom), and under the charts the time axis, which says
the span and the scale and where each phase began and each mark was dropped.

The widgets are thin: :mod:`.plot` draws, they keep the last drawing and repaint only when it
changed (over SSH each repaint costs bytes). Line API: one ``Strip`` a row, one ``Segment`` per
run of one style, styles from component classes whose colours are theme variables.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from textual.content import Content
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from soaktop.engine.events import Phase
from soaktop.engine.metrics.history import Window
from soaktop.tui.text import rate_text
from soaktop.tui.widgets.draw import axis, fmt
from soaktop.tui.widgets.plot import AutoRange, Layer, axis_number, plot, span_text, step_text

GUTTER = 8  # the y labels' column, left of every chart and of the axis


class ChartPanel(Widget):
    """One chart: ``series`` is a list of (name shown in the title, History series), the first
    drawn on top; ``extras`` are series shown in the title only. ``from_zero`` for rates and
    counts, otherwise a latency's range with a floor (see :class:`.plot.AutoRange`).

    It is two widgets side by side: the body (title, y labels, every column but the newest)
    and the newest column alone. In a coarse view the newest bucket is still filling and
    changes every second while the rest changes only when a bucket completes; a repaint
    re-sends whole lines of the widget repainted, so the body is repainted only when it
    changed, the title line alone when only the values now did, and the newest column is
    one cell a row."""

    DEFAULT_CSS = """
    ChartPanel { layout: horizontal; }
    ChartPanel > ChartBody { width: 1fr; height: 100%; }
    ChartPanel > LiveColumn { width: 1; height: 100%; }
    """
    COMPONENT_CLASSES = {"chart--title", "chart--label", "chart--line0", "chart--band0",
                         "chart--line1", "chart--band1"}

    def __init__(self, title: str, series: list[tuple[str, str]], unit: str = "",
                 digits: int = 0, from_zero: bool = False,
                 extras: list[tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title, self.series, self.unit, self.digits = title, series, unit, digits
        self.extras = extras or []
        self.range = AutoRange(from_zero=from_zero)
        self.rows: list[list[tuple[str, str]]] = []
        self.body_rows: list[list[tuple[str, str]]] = []  # rows less the newest column
        self.head: list[tuple[str, str]] = [(f" {title}", "title")]
        self.lo_text = self.hi_text = ""
        self._key: tuple | None = None

    def compose(self):
        self._body, self._live = ChartBody(self), LiveColumn(self)  # held: no query a frame
        yield self._body
        yield self._live

    @property
    def plot_width(self) -> int:
        """Data columns: the width less the y labels (the newest column included)."""
        return max(1, self.size.width - GUTTER)

    def show(self, window: Window, now: dict[str, float | None]) -> None:
        width, height = self.plot_width, max(1, self.size.height - 1)
        # the title: each drawn series' value now in its line's colour (the legend), then
        # the title-only ones
        head = [(f" {self.title} ", "title")] + [
            (f"{' · ' if i else ' '}{name + ' ' if name else ''}"
             f"{fmt(now.get(s), self.digits, self.unit)}",
             f"line{i}" if i < len(self.series) else "title")
            for i, (name, s) in enumerate([*self.series, *self.extras])]
        if head != self.head:
            self.head = head
            self._body.refresh_title()
        arrays = [fit(a[s], width) for s in (s for _, s in self.series)
                  for a in (window.series, window.low, window.high)]
        key = (width, height, tuple(a.tobytes() for a in arrays))
        if key == self._key:
            return  # nothing new to draw: no repaint
        self._key = key
        layers = [Layer(*arrays[i: i + 3]) for i in range(0, len(arrays), 3)]
        lows = np.concatenate([layer.low for layer in layers])
        highs = np.concatenate([layer.high for layer in layers])
        lo, hi = self.range.fit(lows, highs, layers[0].mean)
        rows = plot(layers, height, lo, hi)
        body = [split_runs(runs, width - 1) for runs in rows]
        body_rows = [left for left, _ in body]
        labels = (axis_number(lo), axis_number(hi))
        self.rows = rows
        if body_rows != self.body_rows or labels != (self.lo_text, self.hi_text):
            self.body_rows = body_rows
            self.lo_text, self.hi_text = labels
            self._body.refresh()
        self._live.show([right for _, right in body])

    def style_of(self, kind: str):
        return self.get_component_rich_style(f"chart--{kind}") if kind else None


class ChartBody(Widget):
    """The title row, then per chart row the y label (max on the first, min on the last) and
    every column but the newest."""

    def __init__(self, chart: ChartPanel) -> None:
        super().__init__()
        self.chart = chart

    def refresh_title(self) -> None:
        self.refresh(Region(0, 0, self.size.width, 1))

    def render_line(self, y: int) -> Strip:
        chart, width = self.chart, self.size.width
        if y == 0:
            return Strip([Segment(text, chart.style_of(kind))
                          for text, kind in chart.head]).crop_extend(0, width, None)
        row = y - 1
        if row >= len(chart.body_rows):
            return Strip.blank(width)
        last = len(chart.body_rows) - 1
        text = chart.hi_text if row == 0 else chart.lo_text if row == last else ""
        gutter = f"{text:>{GUTTER - 1}}{'┤' if text else '│'}"
        segments = [Segment(gutter, chart.style_of("label"))]
        segments += [Segment(run, chart.style_of(kind))
                     for run, kind in chart.body_rows[row]]
        return Strip(segments).crop_extend(0, width, None)


class LiveColumn(Widget):
    """The newest column alone: one cell a row, under a blank title cell."""

    def __init__(self, chart: ChartPanel) -> None:
        super().__init__()
        self.chart = chart
        self.cells: list[list[tuple[str, str]]] = []

    def show(self, cells: list[list[tuple[str, str]]]) -> None:
        if cells != self.cells:
            self.cells = cells
            self.refresh()

    def render_line(self, y: int) -> Strip:
        if not 1 <= y <= len(self.cells):
            return Strip.blank(self.size.width)
        return Strip([Segment(text, self.chart.style_of(kind))
                      for text, kind in self.cells[y - 1]]).crop_extend(0, self.size.width, None)


def split_runs(runs: list[tuple[str, str]], at: int
               ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A row's runs cut at column ``at``: (the columns before it, the rest)."""
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    column = 0
    for text, kind in runs:
        cut = max(0, min(len(text), at - column))
        if cut:
            left.append((text[:cut], kind))
        if cut < len(text):
            right.append((text[cut:], kind))
        column += len(text)
    return left, right


def fit(values: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` columns, empty ones (NaN) in front when there are fewer."""
    values = np.asarray(values, dtype=np.float64)[-width:]
    if values.size < width:
        values = np.concatenate([np.full(width - values.size, np.nan), values])
    return values


class AxisRow(Widget):
    """Under the charts: the span and scale (``15m · 10s/col``), where each phase began (``┃c8``,
    ``┃pause``, ``┃llama-1b``, ``┃r5/s``) and each mark (``*``)."""

    DEFAULT_CSS = "AxisRow { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = ""
        self.scale = ""

    def show(self, window: Window, width: int, whole: bool = False) -> None:
        offset = window.width - width  # columns of the window left of the charts'
        phases = [(c - offset, tick_label(p, change)) for c, p, change in window.phases]
        marks = [c - offset for c, _ in window.marks]
        run_s = window.end_s - window.start_s + 1
        scale = (f"run {span_text(run_s)} · {step_text(window.step_s)}/col" if whole
                 else f"{span_text(window.span_s)} · {step_text(window.step_s)}/col")
        text = axis(width, phases, marks)
        if (text, scale) != (self.text, self.scale):
            self.text, self.scale = text, scale
            self.refresh()

    def render(self) -> Content:
        before, label, after = place_label(self.text, f" {self.scale} ")
        return Content.assemble((" time".ljust(GUTTER), "$text-muted"), (before, "$secondary"),
                                (label, "$text-muted"), (after, "$secondary"))


def place_label(text: str, label: str) -> tuple[str, str, str]:
    """The axis ``text`` with ``label`` over its right end, or else its left end, where only
    plain axis runs (a tick is never covered); left out where neither has room."""
    n = len(label)
    for start in (len(text) - n - 1, 1):
        if start >= 0 and set(text[start: start + n]) <= {"─"}:
            return text[:start], label, text[start + n:]
    return text, "", ""


def tick_label(phase: Phase, change: str) -> str:
    """What a phase tick says: what changed at it."""
    if change == "pause":
        return "pause"
    if change == "model":
        return phase.model
    if change == "rate" and phase.rate is not None:
        return f"r{rate_text(phase.rate)}/s"
    if change == "warmup_done":
        return "warmed"
    return f"c{phase.concurrency}"
