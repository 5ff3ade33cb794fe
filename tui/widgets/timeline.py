"""The replay's timeline: where it is in the record, how fast it plays, paused or not."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from soaktop.tui.widgets.draw import clock


class Timeline(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.position_s, self.end_s, self.speed, self.paused = 0.0, 0.0, 1.0, False
        self.stops: list[float] = []

    def show(self, position_s: float, end_s: float, speed: float, paused: bool,
             stops: list[float]) -> None:
        state = (round(position_s, 1), end_s, speed, paused, stops)
        if state == getattr(self, "_state", None):
            return
        self._state = state
        self.position_s, self.end_s, self.speed, self.paused = position_s, end_s, speed, paused
        self.stops = stops
        self.refresh()

    def render(self) -> Content:
        head = f" {'paused' if self.paused else 'playing'} x{self.speed:g} "
        tail = f" {clock(self.position_s)} / {clock(self.end_s)} "
        width = max(10, self.size.width - len(head) - len(tail))
        cells = ["─"] * width
        for stop in self.stops:
            if self.end_s > 0:
                cells[min(width - 1, int(stop / self.end_s * (width - 1)))] = "┃"
        at = 0 if self.end_s <= 0 else min(width - 1, int(self.position_s / self.end_s
                                                         * (width - 1)))
        return Content.assemble((head, "$warning bold" if self.paused else "$success bold"),
                                "".join(cells[:at]), ("●", "$primary bold"),
                                "".join(cells[at + 1:]), tail)
