"""Requests: in flight, done, failed by class, and the last errors. Error messages come from
servers: untrusted text, shown as plain text (Content never parses markup from it)."""

from __future__ import annotations

from collections.abc import Iterable

from textual.content import Content
from textual.geometry import Region
from textual.widget import Widget

from soaktop.engine.events import RequestDone
from soaktop.engine.metrics.live import LiveSnapshot


class RequestsPanel(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lines: list[Content] = [Content(" waiting for the first request")]

    def show(self, snap: LiveSnapshot, in_flight: int, concurrency: int,
             errors: Iterable[RequestDone], paused: bool = False,
             open_loop: bool = False) -> None:
        """``open_loop``: the load is a rate or a trace, which keeps no concurrency (its phases
        say 0): in flight is shown alone."""
        classes = ", ".join(f"{k} {v}" for k, v in sorted(snap.errors.items()))
        held = "" if open_loop else f"/{concurrency}"
        lines = [
            Content.assemble(f" in flight {in_flight}{held}",
                             ("  paused: no new requests", "$warning bold") if paused else ""),
            Content(f" done {snap.requests_ok}  ·  E2E p50 "
                    f"{'n/a' if snap.e2e_p50_ms is None else f'{snap.e2e_p50_ms:,.0f} ms'}"),
            Content.assemble(f" failed {snap.requests_failed}",
                             (f"  ({classes})", "$error") if classes else ""),
        ]
        width = max(20, self.size.width - 2)
        for done in list(errors)[-3:][::-1]:
            text = f" {done.t_ns / 1e9:7.1f}s {done.error_class}: {done.error_message or ''}"
            lines.append(Content.assemble((text[:width], "$error")))
        before = [str(line) for line in self.lines]
        after = [str(line) for line in lines]
        if after == before:
            return
        self.lines = lines
        if len(after) != len(before):
            self.refresh()
            return
        # only the lines that changed go to the terminal again: the done count changes every
        # frame, and over SSH a whole panel each frame is most of what the screen writes
        width = self.size.width
        self.refresh(*(Region(0, row, width, 1)
                       for row, (old, new) in enumerate(zip(before, after)) if old != new))

    def render(self) -> Content:
        return Content("\n").join(self.lines)
