"""Is the client the bottleneck? soaktop measures itself while it measures the server.

A load generator that cannot keep up reports its own delays as the server's: a token that sat
in the socket while the event loop was busy gets a late timestamp, a request sent late starts
its clock late. What it measures, each second:

- **Read lag** (where arrivals are stamped by the kernel, ``http://`` on Linux): for each read
  of a stream's socket, from the kernel's receive stamp of the newest bytes to the moment the
  client read them, p99; and the gap between a stream's successive arrivals, p10 (the short
  end). A kernel stamp does not move when the loop is late, with one exception: one read has
  one stamp, so bytes of a stream that arrived apart but were read together all carry the
  newest one's. That happens only when reads are later than the gap between arrivals.
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

A second is *client-bound*, its latencies upper bounds, for one of these reasons
(:func:`client_bound_reasons`), each guarding against a bias of its own:

- ``reads late`` (kernel stamps): read lag p99 over 1 ms *and* over the short gap (p10)
  between a stream's arrivals. Then arrivals start to share stamps, so ITL and TTFT are off
  by up to the lag; a read late by less than the gap costs nothing, however late the loop.
  A client that keeps reading late also lets socket buffers fill, and the server slows down.
- ``loop late`` (stamps taken in user space: ``https://``, the local engine): loop lag p99
  over 1 ms, since there every stamp waits for the loop.
- ``sends late``: send lateness p99 over 10 ms. The load offered was not the load asked
  for: an open loop's schedule slipped, a closed loop's slots stood idle.
- ``loop saturated``: the loop's thread at 90% of a core or more: no headroom; everything
  above comes next.

A record written before read lag was measured has none; its seconds are judged by the loop's
lag and CPU, as they were when it was written. Memory is fixed: the current second's samples.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

PROBE_S = 0.002
LAG_LIMIT_US = 1000.0  # user-space stamps: loop lag p99 above this moves them
READ_LAG_FLOOR_US = 1000.0  # kernel stamps: a read later than this, and than the short gap
SEND_LATE_LIMIT_US = 10_000.0  # a request sent this late: the offered load slipped
CPU_LIMIT_PERCENT = 90.0  # a Python client near a whole core has no headroom left


def client_bound_reasons(*, kernel_stamps: bool | None, read_lag_p99_us: float | None,
                         read_gap_p10_us: float | None, loop_lag_p99_us: float | None,
                         send_lateness_p99_us: float | None,
                         loop_cpu_percent: float | None) -> tuple[str, ...]:
    """Why a second's numbers are at risk from the client itself (see the module's list);
    empty when they are not. ``kernel_stamps`` None: a record from before it was known,
    judged by the loop's lag and CPU alone, as it was then."""
    reasons = []
    if kernel_stamps:
        limit = max(READ_LAG_FLOOR_US, read_gap_p10_us or 0)
        if read_lag_p99_us is not None and read_lag_p99_us > limit:
            reasons.append("reads late")
    elif (loop_lag_p99_us or 0) > LAG_LIMIT_US:
        reasons.append("loop late")
    if kernel_stamps is not None and (send_lateness_p99_us or 0) > SEND_LATE_LIMIT_US:
        reasons.append("sends late")
    if (loop_cpu_percent or 0) >= CPU_LIMIT_PERCENT:
        reasons.append("loop saturated")
    return tuple(reasons)


def headroom(*, kernel_stamps: bool | None, read_lag_p99_us: float | None,
             read_gap_p10_us: float | None, loop_lag_p99_us: float | None,
             send_lateness_p99_us: float | None, loop_cpu_percent: float | None) -> float:
    """How far the second was from being client-bound, 0 to 1: the smallest margin left to
    any limit :func:`client_bound_reasons` applies (1 - figure / limit); 0 when one was
    crossed. What the dashboard shows as the client's headroom."""
    used = [(loop_cpu_percent or 0) / CPU_LIMIT_PERCENT]
    if kernel_stamps:
        used.append((read_lag_p99_us or 0) / max(READ_LAG_FLOOR_US, read_gap_p10_us or 0))
    else:
        used.append((loop_lag_p99_us or 0) / LAG_LIMIT_US)
    if kernel_stamps is not None:
        used.append((send_lateness_p99_us or 0) / SEND_LATE_LIMIT_US)
    return min(1.0, max(0.0, 1.0 - max(used)))


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """One second of the client's health (None: nothing of that kind happened)."""

    loop_lag_p99_us: int | None
    send_lateness_p99_us: int | None
    cpu_percent: float
    loop_cpu_percent: float
    read_lag_p99_us: int | None
    read_gap_p10_us: int | None
    worker: int | None = None  # the worker process these are of (--workers); None: this one

    def of_worker(self) -> dict[str, Any]:
        """The figures a ``client_sample`` keeps for one worker process (its ``workers``)."""
        return {"worker_id": self.worker, "loop_lag_p99_us": self.loop_lag_p99_us,
                "read_lag_p99_us": self.read_lag_p99_us,
                "read_gap_p10_us": self.read_gap_p10_us,
                "cpu_percent": round(self.cpu_percent, 1),
                "loop_cpu_percent": round(self.loop_cpu_percent, 1)}


class ClientHealth:
    def __init__(self) -> None:
        self._lags_us: list[float] = []
        self._late_us: list[float] = []
        self._read_lags_ns: list[int] = []
        self._read_gaps_ns: list[int] = []
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

    def read(self, lag_ns: int, gap_ns: int) -> None:
        """A kernel-stamped read: its bytes sat ``lag_ns`` in the socket, and came ``gap_ns``
        after the stream's previous ones (-1: its first)."""
        self._read_lags_ns.append(lag_ns)
        if gap_ns >= 0:
            self._read_gaps_ns.append(gap_ns)

    def take(self) -> HealthFigures:
        """The figures since the last call; call it from the event loop's thread."""
        lags, late = self._lags_us, self._late_us
        reads, gaps = self._read_lags_ns, self._read_gaps_ns
        self._lags_us, self._late_us = [], []
        self._read_lags_ns, self._read_gaps_ns = [], []
        cpu, thread, wall = self._cpu_seconds(), time.thread_time(), time.perf_counter()
        elapsed = max(wall - self._wall_s, 1e-9)
        share = 100.0 * (cpu - self._cpu_s) / elapsed
        loop_share = 100.0 * (thread - self._thread_s) / elapsed
        self._cpu_s, self._thread_s, self._wall_s = cpu, thread, wall
        lag = int(np.percentile(lags, 99)) if lags else None
        lateness = int(np.percentile(late, 99)) if late else None
        read_lag = int(np.percentile(reads, 99) / 1e3) if reads else None
        read_gap = int(np.percentile(gaps, 10) / 1e3) if gaps else None
        return HealthFigures(lag, lateness, share, loop_share, read_lag, read_gap)
