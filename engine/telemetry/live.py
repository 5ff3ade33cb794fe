"""The live view of telemetry: the latest reading of each source and the derived figures over a
sliding window, in fixed memory.

Each GPU keeps its last ``history`` samples in a ``deque`` (enough for the window and for a
screen's sparklines); the window's figures are recomputed from them when a snapshot is asked
for (a few times a second), never per sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from soaktop.engine.events import GpuSample, HostSample, ServerSample, TelemetryStatus
from soaktop.engine.telemetry.derived import GpuWindow, gpu_key


@dataclass(frozen=True, slots=True)
class GpuNow:
    latest: GpuSample
    window: dict[str, Any]  # GpuWindow.result() over the live window


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    gpus: dict[str, GpuNow] = field(default_factory=dict)
    host: HostSample | None = None
    servers: dict[str, ServerSample] = field(default_factory=dict)
    #: The status of each source or GPU that is unavailable now (its ``reason`` says why).
    unavailable: tuple[TelemetryStatus, ...] = ()


class LiveTelemetry:
    def __init__(self, window_s: float = 10.0, history: int = 1200) -> None:
        self.window_ns = int(window_s * 1e9)
        self._history = history
        self.gpus: dict[str, deque[GpuSample]] = {}
        self.host: HostSample | None = None
        self.servers: dict[str, ServerSample] = {}
        self.status: dict[tuple, TelemetryStatus] = {}
        #: Called with each status as it arrives (the command line prints it): availability
        #: changes are rare, so they are passed on here rather than by a listener that would
        #: look at every token.
        self.on_status: Callable[[TelemetryStatus], None] | None = None

    def add(self, event: Any) -> None:
        if isinstance(event, GpuSample):
            key = gpu_key(event.host, event.gpu_index)
            ring = self.gpus.get(key)
            if ring is None:
                ring = self.gpus[key] = deque(maxlen=self._history)
            ring.append(event)
        elif isinstance(event, HostSample):
            self.host = event
        elif isinstance(event, ServerSample):
            self.servers[f"{event.source} {event.model or ''}".strip()] = event
        elif isinstance(event, TelemetryStatus):
            self.status[(event.source, event.host, event.gpu_index)] = event
            if not event.available and event.gpu_index is not None:
                # a lost GPU's last reading is not "now"
                self.gpus.pop(gpu_key(event.host, event.gpu_index), None)
            if self.on_status is not None:
                self.on_status(event)

    def snapshot(self, now_ns: int) -> TelemetrySnapshot:
        since = now_ns - self.window_ns
        gpus = {}
        for key, ring in sorted(self.gpus.items()):
            window = GpuWindow()
            for sample in ring:
                if sample.t_ns >= since:
                    window.add(sample)
            gpus[key] = GpuNow(ring[-1], window.result())
        unavailable = tuple(s for s in self.status.values() if not s.available)
        return TelemetrySnapshot(gpus, self.host, dict(self.servers), unavailable)
