"""The status ticker: one status line every ``--status-every``, for the live run, a replay and
an attach alike.

A replayed run must print the lines its live run printed, at the same times on the session
clock, so one class makes every line from the same figures: the statistics a run feeds
(:class:`~soaktop.engine.metrics.live.LiveStats`: latencies, tokens/s, the phase's concurrency
or rate, whether the client was the bottleneck) and the requests in flight. Only where those
come from differs, hence the three constructors:

- a live session: its own count of requests in flight; ticks on the session clock
  (:meth:`StatusTicker.follow`);
- a replay: the record's timeline says what was in flight; the replay calls the ticker at each
  tick of the record, whatever its speed, pauses and seeks;
- a record another soaktop is writing: its tokens reach the record only when a request ends,
  so in flight and tokens/s come from the run's once-a-second client samples, as of the latest
  event read; ticks on the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TextIO

from soaktop.engine.metrics.live import LiveSnapshot, LiveStats
from soaktop.tui.text import status_line


class StatusTicker:
    def __init__(self, stats: Callable[[], LiveStats],
                 figures: Callable[[LiveStats, int], tuple[LiveSnapshot, int, bool]],
                 out: TextIO, every_s: float,
                 after_each: Callable[[], None] = lambda: None) -> None:
        """``figures(stats, t_ns)``: (snapshot, requests in flight, client-bound) at a tick;
        ``stats`` is read at each tick (a replay that seeks back starts afresh);
        ``after_each`` runs after each line (a check to report once, as soon as it is known)."""
        self._stats, self._figures = stats, figures
        self.out, self.every_ns, self.after_each = out, int(every_s * 1e9), after_each

    @classmethod
    def for_session(cls, session, live: LiveStats, out: TextIO, every_s: float,
                    after_each: Callable[[], None] = lambda: None) -> StatusTicker:
        """A live session's lines; ``live`` is one of its listeners."""
        return cls(lambda: live, lambda stats, t_ns: (
            stats.snapshot(t_ns), session.in_flight, stats.client_bound_at(t_ns)),
            out, every_s, after_each)

    @classmethod
    def for_replay(cls, stats: Callable[[], LiveStats], in_flight: Callable[[int], int],
                   out: TextIO, every_s: float) -> StatusTicker:
        """A replay's lines: ``in_flight(t_ns)`` from the record's timeline."""
        return cls(stats, lambda live, t_ns: (
            live.snapshot(t_ns), in_flight(t_ns), live.client_bound_at(t_ns)), out, every_s)

    @classmethod
    def for_writer(cls, live: LiveStats, latest_ns: Callable[[], int], out: TextIO,
                   every_s: float, after_each: Callable[[], None] = lambda: None
                   ) -> StatusTicker:
        """The lines of a record being written, as of its latest event (``latest_ns()``)."""
        return cls(lambda: live, lambda stats, _: (
            stats.client_snapshot(latest_ns()),
            stats.client.in_flight if stats.client else 0, stats.client_bound_reasons),
            out, every_s, after_each)

    def line(self, t_ns: int) -> str:
        live = self._stats()
        snap, in_flight, client_bound = self._figures(live, t_ns)
        phase = live.phase
        return status_line(snap, in_flight, phase.concurrency if phase else 0, client_bound,
                           phase.rate if phase else None)

    def tick(self, t_ns: int) -> None:
        """Print the line for ``t_ns``."""
        print(self.line(t_ns), file=self.out, flush=True)
        self.after_each()

    async def follow(self, clock_ns: Callable[[], int]) -> None:
        """A line at each multiple of the interval on ``clock_ns``, until cancelled."""
        t_ns = self.every_ns
        while True:
            await asyncio.sleep(max(0.0, (t_ns - clock_ns()) / 1e9))
            self.tick(t_ns)
            t_ns += self.every_ns
