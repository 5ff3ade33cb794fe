"""The GPUs and the host, below the charts. The drawing is :mod:`.gpu_draw`'s; this widget
draws once a second, keeps the last drawing and repaints only the cells that changed (over
SSH a repaint costs bytes), and asks its row for the height the GPUs need: 8 GPUs and the
host line must fit at 100x30, where the row's default (30% of the screen) would cut GPUs off.
The charts give up those rows, and get back the rows a table does not need.

Line API: one ``Strip`` a row, one ``Segment`` per run of one kind, styles from component
classes whose colours are theme variables."""

from __future__ import annotations

from rich.segment import Segment
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from soaktop.engine.metrics.history import Window
from soaktop.engine.telemetry.live import TelemetrySnapshot
from soaktop.tui.telemetry_text import describe_status
from soaktop.tui.widgets.draw import fmt
from soaktop.tui.widgets.gpu_draw import (
    Row,
    changed_spans,
    gpu_order,
    panel_rows,
    rows_wanted,
)

#: Rows the charts above keep whatever the GPUs ask: four charts of a title and a row, the axis.
CHARTS_MIN = 9
#: Rows the requests panel beside the GPUs needs: three lines, three errors, the border.
REQUESTS_ROWS = 7
KINDS = ("title", "hot", "muted", "throttle", "temp", "temp-band", "limit", "limit-band",
         "clock", "clock-band", "power", "power-band", "memory", "memory-band")


def host_row(telemetry: TelemetrySnapshot) -> Row | None:
    """The host's figures, each kept whole or left out where the row is narrow."""
    h = telemetry.host
    if h is None:
        return None
    row = [(f"host CPU {fmt(h.cpu_percent)}%", ""),
           (f"soaktop {fmt(h.soaktop_cpu_percent)}% of a core", ""),
           (f"RSS {fmt((h.soaktop_rss_bytes or 0) / 2**20)} MiB", "")]
    if h.watched_pid is not None:
        row.append((f"pid {h.watched_pid} {fmt(h.watched_cpu_percent)}%", ""))
    return row


class GpuPanel(Widget):
    COMPONENT_CLASSES = {f"gpu--{kind}" for kind in KINDS}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.telemetry = TelemetrySnapshot()
        self.window: Window | None = None
        self.rows: list[Row] = []
        self._wanted: tuple = ()
        self._wanted_set: int | None = None  # the height set on the row, None: the stylesheet's
        self._shown: tuple = ()  # what the rows were drawn for (see show)

    def show(self, telemetry: TelemetrySnapshot, window: Window) -> None:
        """Draw once a second of the session's clock (the window's newest second), or at
        once when what is listed changed (GPUs, sources, the host), the view or the zoom:
        the figures now change with every sample, 4 a second for each GPU, and each change
        re-sends its row up to it; like the charts' titles, the panel gives the values now
        once a second, which over SSH halves what 8 GPUs cost."""
        self.telemetry, self.window = telemetry, window
        self._ask_height()
        key = (window.end_s, window.start_s, window.step_s, tuple(telemetry.gpus),
               telemetry.host is None, telemetry.unavailable)
        if key != self._shown:
            self._shown = key
            self._draw()

    def on_resize(self) -> None:
        self._draw(whole=True)

    def _tail(self) -> list[str | Row]:
        tail: list[str | Row] = [describe_status(s) for s in self.telemetry.unavailable]
        host = host_row(self.telemetry)
        return tail + ([host] if host else [])

    def _ask_height(self) -> None:
        """The row's height: its default share of the screen, or what the GPUs need, up to
        what the charts can give (they keep :data:`CHARTS_MIN` rows); a table that needs
        less than the default share takes only its rows (and the requests panel's)."""
        if not self.is_attached:  # a frame can come while the panel is being removed
            return
        row, screen = self.parent, self.screen
        if not isinstance(row, Widget) or row.id != "below":
            return
        count = len(self.telemetry.gpus)
        wanted = rows_wanted(count, len(self._tail())) + 1  # + border
        if (wanted, screen.size) == self._wanted:
            return  # asked already, at this size of the terminal
        self._wanted = (wanted, screen.size)
        others = sum(w.outer_size.height for w in screen.children
                     if w is not row and w.id != "curves" and w.display)
        cap = screen.size.height - others - CHARTS_MIN
        default = int(screen.size.height * 0.3)  # the stylesheet's 30%
        if wanted > default:
            height = max(5, default, min(wanted, cap))
        elif count > 2:
            # the table: its rows and its column names, the rest to the charts, which grow
            # with the terminal, rather than blank rows under the table
            height = max(REQUESTS_ROWS, wanted + 1)
        else:
            height = None  # curves (or none) grow into the stylesheet's share
        if height != self._wanted_set:
            row.styles.height = height  # None: the stylesheet's again
            self._wanted_set = height
            # the charts were drawn for their old height in this frame: draw the frame again
            # once the layout has settled, not a frame later
            again = getattr(screen, "refresh_frame", None)
            if again is not None:
                self.call_after_refresh(again)

    def _draw(self, whole: bool = False) -> None:
        """Draw, and repaint the cells that changed (all of them after a resize)."""
        width, height = self.size.width - 1, self.size.height  # a blank first column
        gpus = [(k, self.telemetry.gpus[k].latest) for k in gpu_order(list(self.telemetry.gpus))]
        rows = panel_rows(gpus, self.window, width, height, self._tail())
        if whole:
            self.rows = rows
            self.refresh()
        elif rows != self.rows:
            old, self.rows = self.rows, rows
            self.refresh(*(Region(1 + x, y, end - x, 1)  # + the blank first column
                           for y, x, end in changed_spans(old, rows, width)))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y >= len(self.rows):
            return Strip.blank(width)
        segments = [Segment(" ")] + [
            Segment(text, self.get_component_rich_style(f"gpu--{kind}") if kind else None)
            for text, kind in self.rows[y]]
        return Strip(segments).crop_extend(0, width, None)
