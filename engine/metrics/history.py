"""What the dashboard draws: one point a second of the session clock, for the last minutes.

:class:`~soaktop.engine.metrics.live.LiveStats` answers "now"; sparklines need "now and the last few
minutes", one column a second, and where the phases changed. :class:`History` keeps that in fixed
memory (rings of ``seconds`` points), and is fed once per second of the session clock: by the
live dashboard's timer, or by a replay's ticks, so a replay draws the same curves the live run
drew. Seconds with no point (a seek, a stall of the screen) stay empty (NaN), never zero.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from soaktop.engine.events import Mark, Phase, PhaseReason
from soaktop.engine.metrics.live import LiveSnapshot

#: The request series, each from the live snapshot of that second.
SERIES = ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s", "speed_p50_tps", "itl_p50_ms",
          "errors")
#: Per GPU.
GPU_SERIES = ("temperature_c", "margin_c", "sm_clock_ratio", "power_w")


@dataclass(frozen=True, slots=True)
class Window:
    """The last ``width`` seconds, oldest first: what one sparkline row shows."""

    end_s: int  # the newest second shown
    series: dict[str, np.ndarray]
    gpus: dict[str, dict[str, np.ndarray]]
    reasons: dict[str, list[tuple[str, ...] | None]]  # per GPU, per second: active reasons
    phases: list[tuple[int, Phase]]  # (column, phase) for phases that began in the window
    marks: list[tuple[int, Mark]]


class History:
    def __init__(self, seconds: int = 900) -> None:
        self.capacity = seconds
        self._seconds = np.full(seconds, -1, dtype=np.int64)  # which second each slot holds
        self._series = {name: np.full(seconds, np.nan) for name in SERIES}
        self._gpus: dict[str, dict[str, np.ndarray]] = {}
        self._reasons: dict[str, list[tuple[str, ...] | None]] = {}
        self._phases: deque[Phase] = deque(maxlen=256)
        self._marks: deque[Mark] = deque(maxlen=256)
        self._failed_before = 0
        self.latest_s = -1

    def reset(self) -> None:
        self.__init__(self.capacity)

    def add(self, event: Any) -> None:
        """Listener: phases and marks, for the markers on the time axis."""
        if isinstance(event, Phase):
            self._phases.append(event)
        elif isinstance(event, Mark):
            self._marks.append(event)

    def record(self, second: int, snap: LiveSnapshot) -> None:
        """The point of ``second`` (the session clock's, counting from 0): ``snap`` as of then."""
        slot = second % self.capacity
        self._seconds[slot] = second
        values = {
            "ttft_p50_ms": snap.ttft_p50_ms, "ttft_p95_ms": snap.ttft_p95_ms,
            "tokens_per_s": snap.tokens_per_s, "speed_p50_tps": snap.speed_p50_tps,
            "itl_p50_ms": snap.itl_p50_ms,
            "errors": max(0, snap.requests_failed - self._failed_before),
        }
        self._failed_before = snap.requests_failed
        for name, value in values.items():
            self._series[name][slot] = np.nan if value is None else value
        for key, now in snap.telemetry.gpus.items():
            rings = self._gpus.get(key)
            if rings is None:
                rings = self._gpus[key] = {n: np.full(self.capacity, np.nan) for n in GPU_SERIES}
                self._reasons[key] = [None] * self.capacity
            s = now.latest
            margin = (None if s.slowdown_temperature_c is None or s.temperature_c is None
                      else s.slowdown_temperature_c - s.temperature_c)
            ratio = (s.sm_clock_mhz / s.sm_clock_max_mhz
                     if s.sm_clock_mhz is not None and s.sm_clock_max_mhz else None)
            for name, value in (("temperature_c", s.temperature_c), ("margin_c", margin),
                                ("sm_clock_ratio", ratio), ("power_w", s.power_w)):
                rings[name][slot] = np.nan if value is None else value
            self._reasons[key][slot] = s.clock_event_reasons or ()
        self.latest_s = max(self.latest_s, second)

    def window(self, width: int, end_s: int | None = None) -> Window:
        """The ``width`` seconds up to ``end_s`` (default: the newest point), oldest first."""
        width = max(1, min(width, self.capacity))
        end = self.latest_s if end_s is None else end_s
        seconds = np.arange(end - width + 1, end + 1)
        slots = seconds % self.capacity
        held = (self._seconds[slots] == seconds) & (seconds >= 0)

        def take(ring: np.ndarray) -> np.ndarray:
            return np.where(held, ring[slots], np.nan)

        start_ns, end_ns = int(seconds[0]) * 10**9, (end + 1) * 10**9

        def column(t_ns: int) -> int:
            return int(t_ns // 10**9 - seconds[0])

        return Window(
            end_s=end,
            series={name: take(ring) for name, ring in self._series.items()},
            gpus={key: {n: take(r) for n, r in rings.items()}
                  for key, rings in self._gpus.items()},
            reasons={key: [reasons[s] if h else None for s, h in zip(slots, held)]
                     for key, reasons in self._reasons.items()},
            phases=[(column(p.t_ns), p) for p in self._phases
                    if start_ns <= p.t_ns < end_ns and p.reason != PhaseReason.START],
            marks=[(column(m.t_ns), m) for m in self._marks if start_ns <= m.t_ns < end_ns],
        )
