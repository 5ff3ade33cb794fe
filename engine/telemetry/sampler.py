"""The thread that polls one telemetry source at a fixed rate, off the event loop.

Why a thread: an NVML call can take milliseconds (and much longer on a GPU in trouble), a
scrape of a remote exporter longer still. On the event loop either would delay the reading of
a token and so its timestamp. Each source gets a daemon thread that samples on a fixed
schedule (missed ticks are skipped, never bunched up) and hands its events to ``deliver``,
which the session points at ``loop.call_soon_threadsafe``.

A source never stops the run: an exception from it becomes a :class:`TelemetryStatus`
saying the source is unavailable and why, and the sampler keeps trying on schedule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from soaktop.engine.events import TelemetryStatus

Clock = Callable[[], int]  # nanoseconds since the session started


class Source(Protocol):
    """A telemetry source: opened once, sampled on schedule, closed at the end (its thread)."""

    name: str
    #: The fastest rate worth polling (a remote exporter refreshes once a second at best).
    max_hz: float

    def open(self, clock: Clock) -> list[Any]: ...

    def sample(self, clock: Clock) -> list[Any]: ...

    def close(self) -> None: ...


class Sampler:
    """Runs ``source`` on a thread at ``hz`` (capped at the source's ``max_hz``)."""

    def __init__(
        self, source: Source, hz: float, clock: Clock, deliver: Callable[[list[Any]], None]
    ) -> None:
        self.source = source
        self.interval_s = 1.0 / min(hz, source.max_hz)
        self._clock = clock
        self._deliver = deliver
        self._stop = threading.Event()
        self._failing: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"soaktop-telemetry-{source.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to end and wait for it a little (a hung driver call is let go)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _call(self, method: Callable[[Clock], list[Any]]) -> list[Any]:
        try:
            events = method(self._clock)
        except Exception as exc:  # a source bug or a library surprise costs samples, not the run
            reason = f"{type(exc).__name__}: {exc}"
            if reason == self._failing:
                return []
            self._failing = reason
            return [TelemetryStatus(self._clock(), self.source.name, False, reason)]
        if self._failing is not None:
            self._failing = None
            events = [TelemetryStatus(self._clock(), self.source.name, True), *events]
        return events

    def _run(self) -> None:
        try:
            events = self._call(self.source.open)
            if events:
                self._deliver(events)
            next_tick = time.monotonic()
            while True:
                next_tick += self.interval_s
                now = time.monotonic()
                if next_tick < now:  # late (a slow call): skip the missed ticks
                    next_tick = now + self.interval_s
                if self._stop.wait(next_tick - now):
                    break
                events = self._call(self.source.sample)
                if events:
                    self._deliver(events)
        finally:
            try:
                self.source.close()
            except Exception:  # noqa: S110 - closing a source that failed: nothing left to say
                pass
