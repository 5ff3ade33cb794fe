"""The top line: what runs where, at what concurrency, for how long, recorded where."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from soaktop.tui.text import rate_text
from soaktop.tui.widgets.draw import clock


class HeaderBar(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.parts: dict[str, str | None] = {}

    def show(self, *, kind: str, backend: str, model: str, target: str, concurrency: int,
             in_flight: int, elapsed_s: float, duration_s: float | None, record: str | None,
             state: str = "", rate: float | None = None) -> None:
        load = (f"concurrency {concurrency}" if rate is None
                else f"rate {rate_text(rate)} req/s")
        left = (f" soaktop {kind} · {model} on {target} ({backend}) · {load}, "
                f"{in_flight} in flight")
        when = f" {clock(elapsed_s)}"
        if duration_s:
            when += f" / {clock(duration_s)} ({clock(duration_s - elapsed_s)} left)"
        parts = {"left": left, "state": state, "record": record, "when": when}
        if parts != self.parts:
            self.parts = parts
            self.refresh()

    def render(self) -> Content:
        """Line 1: what runs and for how long; line 2: its state and where it is recorded."""
        left = self.parts.get("left") or " soaktop: starting ..."
        state = self.parts.get("state") or ""
        when = self.parts.get("when") or ""
        record = self.parts.get("record")
        where = f" · record: {record}" if record else " · not recorded"
        room = self.size.width - len(when) - len(state) - 2
        if len(where) > room:  # keep the file name: the tail
            where = " · record: …" + where[-max(0, room - 12):] if room > 24 else ""
        return Content.assemble((left[: self.size.width], "bold"), "\n",
                                (f" {state} " if state else "", "$warning bold"),
                                (when, "bold"), (where, "$text-muted"))
