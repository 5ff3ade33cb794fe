"""Is the client the bottleneck? soaktop measures itself while it measures the server.

A load generator that cannot keep up reports its own delays as the server's: a token that sat
in the socket while the event loop was busy gets a late timestamp, a request sent late starts
its clock late. Three signs, each second:

- **Event-loop lag**: a probe asks to wake every 10 ms; how late it actually wakes is how long
  anything else (a chunk to stamp, a request to send) could have waited. p99 over the second.
- **Send lateness**: from the moment a request was due (its slot freed, or its planned time)
  to the moment it was sent. p99 over the second.
- **CPU share** in % of one core: of soaktop's whole process (recorded), and of the event
  loop's own thread, the client's work (which decides): a loop near a whole core is out of
  headroom. The whole process can be busy for other reasons that cost the client nothing
  (the embedded local engine computes on threads of its own, and stamps tokens there).

A second is *client-bound* when the lag p99 is over 1 ms or the loop's thread used 90% of a
core or more: its latencies are upper bounds (the server may have been faster). Memory is
fixed: the samples of the current second only.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import psutil

PROBE_S = 0.010
LAG_LIMIT_US = 1000.0  # lag p99 above this: the client is the bottleneck
CPU_LIMIT_PERCENT = 90.0  # a Python client near a whole core has no headroom left


def is_client_bound(loop_lag_p99_us: float | None, loop_cpu_percent: float | None) -> bool:
    return (loop_lag_p99_us or 0) > LAG_LIMIT_US or (loop_cpu_percent or 0) >= CPU_LIMIT_PERCENT


class ClientHealth:
    def __init__(self) -> None:
        self._lags_us: list[float] = []
        self._late_us: list[float] = []
        self._process = psutil.Process()
        self._cpu_s = self._cpu_seconds()
        self._thread_s = time.thread_time()  # of the thread that calls take(): the loop's
        self._wall_s = time.perf_counter()

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    async def probe(self) -> None:
        """Run for the session: wake every 10 ms and note how late each wake-up was."""
        while True:
            planned = time.perf_counter_ns() + int(PROBE_S * 1e9)
            await asyncio.sleep(PROBE_S)
            self._lags_us.append(max(0, time.perf_counter_ns() - planned) / 1e3)

    def sent(self, due_ns: int, sent_ns: int) -> None:
        """A request that was due at ``due_ns`` went out at ``sent_ns`` (same clock)."""
        self._late_us.append(max(0, sent_ns - due_ns) / 1e3)

    def take(self) -> tuple[int | None, int | None, float, float]:
        """(loop lag p99 µs, send lateness p99 µs, process CPU %, loop thread CPU %) since
        the last call; call it from the event loop's thread."""
        lags, late = self._lags_us, self._late_us
        self._lags_us, self._late_us = [], []
        cpu, thread, wall = self._cpu_seconds(), time.thread_time(), time.perf_counter()
        elapsed = max(wall - self._wall_s, 1e-9)
        share = 100.0 * (cpu - self._cpu_s) / elapsed
        loop_share = 100.0 * (thread - self._thread_s) / elapsed
        self._cpu_s, self._thread_s, self._wall_s = cpu, thread, wall
        lag = int(np.percentile(lags, 99)) if lags else None
        lateness = int(np.percentile(late, 99)) if late else None
        return lag, lateness, share, loop_share
