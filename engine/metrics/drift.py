"""The soak verdict: did the run hold up? The last minutes against the first after warm-up.

For tokens/s, TTFT p95, SM clock and GPU temperature, the first ``window`` of the measured
run (after warm-up) is compared with the last (``min(5 min, a third of the run)``), and the
run is called:

- ``degrading`` when tokens/s fell more than 5% or TTFT p95 rose more than 25%;
- ``throttled`` when it degraded and the GPUs were held back: the SM clock fell more than 3%,
  or a throttling clock-event reason (thermal, power cap, HW slowdown...) was active in 5% or
  more of the last window's samples; the reasons active then are named;
- ``stable`` otherwise.

The result is data (:class:`~soaktop.engine.metrics.results.SoakVerdict`): the windows, the
changes, the verdict and the reasons; ``soaktop.tui.text`` writes the sentence.

Memory is bounded by the run's length in seconds and by the requests of the first window,
never by tokens: tokens are counted per second, the first window's TTFTs take 8 bytes a
request, the latest ones a fixed ring, and GPU samples those of two windows.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from soaktop.engine.events import GpuSample, Phase, RequestDone, SessionEnd
from soaktop.engine.metrics.results import DriftFigures, SoakVerdict, Verdict
from soaktop.engine.telemetry.reasons import THROTTLING

WINDOW_S = 300.0
MIN_WINDOW_S = 10.0  # shorter runs get no verdict: too little to compare
#: The latest requests' TTFTs kept for the last window: at more than this many requests in
#: two windows (110 a second over 10 minutes) the last window's p95 is taken over its latest
#: 65,536 requests, still thousands of samples.
RECENT_REQUESTS = 65_536
TPS_DROP = 0.05
TTFT_RISE = 0.25  # a p95 is noisy: +15% came and went in a steady 7-minute run here
CLOCK_DROP = 0.03
REASON_SHARE = 0.05
#: Arrival offsets, and requests, gathered before their tokens are counted together.
BUFFER_TOKENS = 1 << 14
BUFFER_REQUESTS = 4096


class Drift:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_ns = int(window_s * 1e9)
        self.start_ns: int | None = None  # the measured run's start (warm-up over)
        self.end_ns = 0
        self._tokens = np.zeros(256, dtype=np.int64)  # per second since start_ns
        # TTFTs: the first window's all, in arrays that grow by doubling (8 bytes a request,
        # as float32 seconds-from-start and ms); the latest ones in a fixed ring
        self._first_t = np.empty(1024, dtype=np.float32)
        self._first_v = np.empty(1024, dtype=np.float32)
        self._first_n = 0
        self._ring_t = np.full(RECENT_REQUESTS, -np.inf, dtype=np.float64)
        self._ring_v = np.empty(RECENT_REQUESTS, dtype=np.float32)
        self._ring_next = 0
        self._gpu_first: list[GpuSample] = []
        self._gpu_recent: deque[GpuSample] = deque()
        # one-token-an-arrival requests whose tokens are not counted yet: counted a few
        # thousand at a time with whole-array numpy calls (per request they cost ~7 µs), from
        # fixed buffers, so memory holds the same however long the requests are
        self._offsets = np.empty(BUFFER_TOKENS, dtype=np.int64)
        self._lens = np.empty(BUFFER_REQUESTS, dtype=np.int64)
        self._sent = np.empty(BUFFER_REQUESTS, dtype=np.int64)
        self._n_offsets = 0
        self._n_requests = 0

    def add(self, event: Any) -> None:
        if isinstance(event, Phase):
            if not event.warmup and self.start_ns is None:
                self.start_ns = event.t_ns
        elif isinstance(event, RequestDone):
            self._add_request(event)
        elif isinstance(event, GpuSample):
            self._add_gpu(event)
        elif isinstance(event, SessionEnd):
            self.end_ns = max(self.end_ns, event.t_ns)
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > self.end_ns:
            self.end_ns = t_ns

    def _add_request(self, done: RequestDone) -> None:
        if self.start_ns is None or done.warmup:
            return
        n = len(done.arrivals_us)
        if n and not done.arrival_tokens and n <= BUFFER_TOKENS:
            if self._n_offsets + n > BUFFER_TOKENS or self._n_requests == BUFFER_REQUESTS:
                self._count_pending()
            at, i = self._n_offsets, self._n_requests
            self._offsets[at : at + n] = done.arrivals_us
            self._lens[i], self._sent[i] = n, done.sent_ns
            self._n_offsets, self._n_requests = at + n, i + 1
        elif done.arrivals_us:
            t = done.sent_ns + np.asarray(done.arrivals_us, dtype=np.int64) * 1000
            weights = np.asarray(done.arrival_tokens, dtype=np.int64) \
                if done.arrival_tokens else None
            self._count_tokens(t, weights)
        if done.ok and done.arrivals_us:
            t_s, ttft_ms = (done.sent_ns - self.start_ns) / 1e9, done.arrivals_us[0] / 1e3
            if done.sent_ns < self.start_ns + self.window_ns:
                if self._first_n == self._first_t.size:
                    self._first_t = np.concatenate([self._first_t, np.empty_like(self._first_t)])
                    self._first_v = np.concatenate([self._first_v, np.empty_like(self._first_v)])
                self._first_t[self._first_n], self._first_v[self._first_n] = t_s, ttft_ms
                self._first_n += 1
            slot = self._ring_next % RECENT_REQUESTS
            self._ring_t[slot], self._ring_v[slot] = t_s, ttft_ms
            self._ring_next += 1

    def _count_pending(self) -> None:
        if not self._n_requests:
            return
        n, offsets = self._n_requests, self._n_offsets
        self._n_requests = self._n_offsets = 0
        lens = self._lens[:n]
        self._count_tokens(np.repeat(self._sent[:n], lens) + self._offsets[:offsets] * 1000,
                           None)

    def _count_tokens(self, t: np.ndarray, weights: np.ndarray | None) -> None:
        """Arrivals at times ``t`` (ns), of ``weights`` tokens each (one when None), into
        the seconds of the measured run they fell in."""
        seconds = (t - self.start_ns) // 10**9
        keep = seconds >= 0
        weights = weights[keep] if weights is not None else None
        seconds = seconds[keep]
        if seconds.size:
            top = int(seconds.max())
            if top >= self._tokens.size:  # grows with the run's seconds, not its tokens
                grown = np.zeros(max(top + 1, self._tokens.size * 2), dtype=np.int64)
                grown[: self._tokens.size] = self._tokens
                self._tokens = grown
            self._tokens += np.bincount(seconds, weights=weights,
                                        minlength=self._tokens.size).astype(np.int64)

    def _add_gpu(self, sample: GpuSample) -> None:
        if self.start_ns is None or sample.t_ns < self.start_ns:
            return
        if sample.t_ns < self.start_ns + self.window_ns:
            self._gpu_first.append(sample)
        self._gpu_recent.append(sample)
        self._evict(self._gpu_recent, sample.t_ns, key=lambda s: s.t_ns)

    def _evict(self, recent: deque, now_ns: int, key) -> None:
        # a little more than a window, so that the last window is whole whenever the run ends
        while recent and key(recent[0]) < now_ns - 2 * self.window_ns:
            recent.popleft()

    def result(self) -> SoakVerdict | None:
        """The comparison and the verdict; None when the measured run is too short."""
        self._count_pending()
        if self.start_ns is None:
            return None
        measured_ns = self.end_ns - self.start_ns
        window_ns = min(self.window_ns, measured_ns // 3)
        if window_ns < MIN_WINDOW_S * 1e9:
            return None
        first, _ = self._figures(self.start_ns, self.start_ns + window_ns)
        # what held the GPUs back is judged in the last window only
        last, reasons = self._figures(self.end_ns - window_ns, self.end_ns)
        change = DriftFigures(
            tokens_per_s=_relative(first.tokens_per_s, last.tokens_per_s),
            ttft_p95_ms=_relative(first.ttft_p95_ms, last.ttft_p95_ms),
            sm_clock_mhz=_relative(first.sm_clock_mhz, last.sm_clock_mhz),
            temperature_c=_difference(first.temperature_c, last.temperature_c),
        )
        throttling = {r: f for r, f in reasons.items() if r in THROTTLING and f >= REASON_SHARE}
        degrading = ((change.tokens_per_s or 0) < -TPS_DROP
                     or (change.ttft_p95_ms or 0) > TTFT_RISE)
        held_back = (change.sm_clock_mhz or 0) < -CLOCK_DROP or bool(throttling)
        verdict = Verdict.THROTTLED if degrading and held_back else (
            Verdict.DEGRADING if degrading else Verdict.STABLE)
        return SoakVerdict(
            window_s=window_ns / 1e9, first=first, last=last, change=change, verdict=verdict,
            throttle_reasons=dict(sorted(throttling.items(), key=lambda kv: -kv[1])),
        )

    def _figures(self, start: int, end: int) -> tuple[DriftFigures, dict[str, float]]:
        """The window's figures, and the share of its GPU samples each clock-event reason
        was active in."""
        lo = max(0, (start - self.start_ns) // 10**9)
        hi = max(lo, (end - self.start_ns) // 10**9)
        seconds = self._tokens[lo:hi]
        tps = float(seconds.sum()) / max(1, hi - lo) if hi > lo else None
        lo_s, hi_s = (start - self.start_ns) / 1e9, (end - self.start_ns) / 1e9
        if start == self.start_ns:
            times, values = self._first_t[: self._first_n], self._first_v[: self._first_n]
        else:
            times, values = self._ring_t, self._ring_v
        ttfts = values[(times >= lo_s) & (times < hi_s)]
        samples = self._gpu_first if start == self.start_ns else self._gpu_recent
        samples = [s for s in samples if start <= s.t_ns < end]
        clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
        temps = [s.temperature_c for s in samples if s.temperature_c is not None]
        counted: dict[str, int] = {}
        with_reasons = [s for s in samples if s.clock_event_reasons is not None]
        for s in with_reasons:
            for reason in s.clock_event_reasons:
                counted[reason] = counted.get(reason, 0) + 1
        window = DriftFigures(
            tokens_per_s=tps,
            ttft_p95_ms=float(np.percentile(ttfts, 95)) if ttfts.size else None,
            sm_clock_mhz=float(np.mean(clocks)) if clocks else None,
            temperature_c=float(np.max(temps)) if temps else None,
        )
        return window, {r: n / len(with_reasons) for r, n in counted.items()}


def _relative(a: float | None, b: float | None) -> float | None:
    return None if a in (None, 0) or b is None else b / a - 1


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a
