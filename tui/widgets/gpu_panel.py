"""Per GPU: temperature and its margin to slowdown, SM clock against its maximum, power
against its limit, memory, and a throttle strip marking when each clock-event reason was
active; then the host. A GPU that cannot be read says why, never shows zeros."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from soaktop.engine.metrics.history import Window
from soaktop.engine.telemetry.live import TelemetrySnapshot
from soaktop.engine.telemetry.reasons import THROTTLING
from soaktop.tui.telemetry_text import describe_status
from soaktop.tui.text import gpu_label
from soaktop.tui.widgets.draw import STRIP_LEGEND, fmt, throttle_strip


class GpuPanel(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.telemetry = TelemetrySnapshot()
        self.window: Window | None = None

    def show(self, telemetry: TelemetrySnapshot, window: Window) -> None:
        self.telemetry, self.window = telemetry, window
        content = self._draw()
        if str(content) != str(getattr(self, "_content", None)):
            self._content = content
            self.refresh()

    def render(self) -> Content:
        return getattr(self, "_content", None) or self._draw()

    def _draw(self) -> Content:
        t, width = self.telemetry, max(10, self.size.width - 10)
        lines: list[Content] = []
        for key, now in t.gpus.items():
            s = now.latest
            margin = (None if s.slowdown_temperature_c is None or s.temperature_c is None
                      else s.slowdown_temperature_c - s.temperature_c)
            hot = margin is not None and margin < 5
            memory = (f" mem {fmt((s.memory_used_bytes or 0) / 2**30, 1)}/"
                      f"{fmt((s.memory_total_bytes or 0) / 2**30, 0)} GiB"
                      if s.memory_total_bytes else "")
            throttled = [r for r in (s.clock_event_reasons or ()) if r in THROTTLING]
            lines.append(Content.assemble(
                (f" {gpu_label(key)} ", "bold"),
                (f"{fmt(s.temperature_c)}C", "$error bold" if hot else ""),
                f" (margin {fmt(margin)})  SM {fmt(s.sm_clock_mhz)}/{fmt(s.sm_clock_max_mhz)}"
                f" MHz  {fmt(s.power_w)}/{fmt(s.power_limit_w)} W{memory}",
                ("  throttled: " + ",".join(throttled), "$warning") if throttled else "",
            ))
            reasons = self.window.reasons.get(key, []) if self.window else []
            strip = throttle_strip(reasons[-width:])
            lines.append(Content.assemble(" throttle ", (strip, "$warning")))
        if t.gpus:
            lines.append(Content.assemble((f" {STRIP_LEGEND}", "$text-muted")))
        for status in t.unavailable:
            lines.append(Content.assemble((f" {describe_status(status)}", "$text-muted")))
        if t.host is not None:
            h = t.host
            lines.append(Content(
                f" host CPU {fmt(h.cpu_percent)}%  soaktop {fmt(h.soaktop_cpu_percent)}% of a "
                f"core, RSS {fmt((h.soaktop_rss_bytes or 0) / 2**20)} MiB"
                + (f"  pid {h.watched_pid} {fmt(h.watched_cpu_percent)}%"
                   if h.watched_pid is not None else "")))
        if not lines:
            lines.append(Content(" no telemetry yet"))
        return Content("\n").join(lines)
