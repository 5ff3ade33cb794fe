"""The run's summary table on the screen, once the run has ended.

A soak's screen is left open at its end (an SSH session nobody watched for 30 minutes): what the
user comes back to must be the answer, not a frozen "now". This panel shows the same table the
terminal gets after the screen closes (:func:`soaktop.tui.text.summary_table`), laid out for the
panel's own width, so nothing is clipped mid-word. It takes at most 40% of the screen, so the
whole-run charts above (the soak's picture) keep most of it; a taller table scrolls with the
mouse wheel. It never takes focus: the arrows and the other keys stay the screen's (a replay
seeks with them).
"""

from __future__ import annotations

from collections.abc import Callable

from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from soaktop.engine.metrics.results import RunSummary
from soaktop.tui.text import summary_table


class SummaryPanel(VerticalScroll, can_focus=False):
    DEFAULT_CSS = """
    SummaryPanel {
        height: auto;
        max-height: 40%;
        min-height: 4;
        border-top: solid $panel;
        padding: 0 0 0 1;
        scrollbar-size-vertical: 1;
    }
    SummaryPanel > Static {
        width: auto;
        color: $foreground;
    }
    """

    def __init__(self, summary: Callable[[], RunSummary], **kwargs) -> None:
        """``summary`` is called once, when the panel is shown: the run is over, its numbers no
        longer change, and a long record's summary is not worth computing twice."""
        super().__init__(**kwargs)
        self._summary_of = summary
        self._summary: RunSummary | None = None
        self._width = 0
        self.text = ""

    def compose(self):
        yield Static(id="summary-text")

    def on_resize(self) -> None:
        self.fill()

    def fill(self) -> None:
        """Lay the table out for the width there is now (the terminal may have been resized)."""
        width = max(20, self.size.width - 2)  # the left padding and the scrollbar's column
        if self._summary is None:
            self._summary = self._summary_of()
        if width == self._width:
            return
        self._width = width
        self.text = summary_table(self._summary, width)
        self.query_one("#summary-text", Static).update(Content(self.text))
