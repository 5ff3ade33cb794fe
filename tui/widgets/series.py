"""One curve over time: a label, the value now, and a sparkline of the last minutes, one
column a second (gaps left blank); and the time axis under the curves, with phase markers."""

from __future__ import annotations

import numpy as np
from textual.content import Content
from textual.widget import Widget

from soaktop.engine.events import PhaseReason
from soaktop.engine.metrics.history import Window
from soaktop.tui.widgets.draw import axis, fmt, sparkline

LABEL_WIDTH = 26


class SeriesPanel(Widget):
    """``series`` names a :data:`soaktop.engine.metrics.history.SERIES` entry; ``floor`` starts the
    scale at 0 (rates, counts) rather than at the window's minimum (latencies: their drift
    matters)."""

    def __init__(self, label: str, series: str, unit: str = "", digits: int = 0,
                 floor: bool = False, style: str = "$primary", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label, self.series, self.unit, self.digits = label, series, unit, digits
        self.floor, self.style = floor, style
        self.now: float | None = None
        self.values = np.empty(0)

    @property
    def spark_width(self) -> int:
        return max(1, self.size.width - LABEL_WIDTH - 1)

    def show(self, now: float | None, window: Window) -> None:
        values = window.series[self.series][-self.spark_width:]
        if now == self.now and np.array_equal(values, self.values, equal_nan=True):
            return  # unchanged: no repaint (over SSH each one costs bytes)
        self.now, self.values = now, values
        self.refresh()

    def render(self) -> Content:
        head = f" {self.label:<13}{fmt(self.now, self.digits, self.unit):>11}"[:LABEL_WIDTH]
        finite = self.values[np.isfinite(self.values)] if self.values.size else self.values
        line = sparkline(self.values, lo=0.0 if self.floor else None)
        peak = f" max {fmt(float(finite.max()), self.digits)}" if finite.size else ""
        return Content.assemble((head.ljust(LABEL_WIDTH), "bold"), " ", (line, self.style),
                                ("" if len(line) + len(peak) + LABEL_WIDTH >= self.size.width
                                 else peak, "$text-muted"))


class AxisRow(Widget):
    """Under the curves: where each phase began (``┃c8``) and each mark (``*``)."""

    DEFAULT_CSS = "AxisRow { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = ""

    def show(self, window: Window, width: int) -> None:
        offset = len(window.series["tokens_per_s"]) - width  # columns before the sparklines'
        phases = [(c - offset, _phase_label(p)) for c, p in window.phases]
        marks = [c - offset for c, _ in window.marks]
        text = axis(width, phases, marks)
        if text != self.text:
            self.text = text
            self.refresh()

    def render(self) -> Content:
        label = " time (1 column = 1 s)"[:LABEL_WIDTH].ljust(LABEL_WIDTH)
        return Content.assemble((label, "$text-muted"), " ", (self.text, "$secondary"))


def _phase_label(phase) -> str:
    if phase.reason == PhaseReason.PAUSED:
        return "pause"
    return f"c{phase.concurrency}"
