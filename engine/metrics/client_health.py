"""Is the client the bottleneck? soaktop measures itself while it measures the server.

A load generator that cannot keep up reports its own delays as the server's: a token that sat
in the socket while the event loop was busy gets a late timestamp, a request sent late starts
its clock late. Three signs, each second:

- **Event-loop lag**: every 2 ms a probe thread hands the loop a callback and notes how long
  the loop took to run it: how long anything else (a chunk to read, a request to send) could
  have waited. p99 over the second: some 500 samples, so that the p99 is a percentile and not
  the second-largest of 100 (one collector pause or one burst decided a second at 10 ms).
  What it costs, measured on an idle loop (each probe wakes it): 3.0% of a core for the loop's
  thread at 2 ms, 1.2% at 10 ms; a busy loop is awake anyway and pays less.
  (A timer on the loop itself would not do: the loop sleeps in epoll, whose timeout has a
  resolution of 1 ms, so an idle loop's timers already run up to 1 ms late; measured here,
  p50 0.33 ms on an idle machine. A callback handed over from a thread wakes the loop at
  once through its self-pipe.)
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
import threading
import time

import numpy as np
import psutil

PROBE_S = 0.002
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
        # numpy's first percentile loads its machinery, 12 ms measured: here, before the run's
        # clock starts, not in the first second's sample (which it would flag).
        np.percentile([0.0], 99)

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    async def probe(self) -> None:
        """Run for the session: a thread hands the loop a callback every 10 ms; the time from
        handing it over to its running is the loop's lag."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def arrived(handed_ns: int) -> None:
            self._lags_us.append((time.perf_counter_ns() - handed_ns) / 1e3)

        def hand_over() -> None:
            while not stop.wait(PROBE_S):
                try:
                    loop.call_soon_threadsafe(arrived, time.perf_counter_ns())
                except RuntimeError:  # the loop is closed: the session is over
                    return

        thread = threading.Thread(target=hand_over, name="soaktop-lag-probe", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()  # until cancelled with the session
        finally:
            stop.set()

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
