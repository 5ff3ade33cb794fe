"""The soak verdict: did the run hold up? The late window against the early one, by statistics.

Why statistics: two windows of one steady run never give the same p95, and a fixed "+25%"
line on a few dozen requests is crossed by noise (a 53-second run was once called
``degrading`` while its tokens/s rose). So each measure is tested, and a verdict needs both a
significant difference and one large enough to matter.

How, in order:

1. **Steady state** (MSER-5, the Marginal Standard Error Rule of simulation output analysis,
   White 1997): tokens/s and log TTFT (a few very slow requests must not look like a
   transient) are taken as series of 5-second batch means from
   the warm-up's end; for each candidate start ``d`` within the first ``min(10 min, half the
   run)``, the squared standard error of the mean of the batches after ``d`` is
   ``sum((x - mean)^2) / m^2`` (``m`` batches kept); the ``d`` that minimises it is where
   the start-up transient ends. Steady state is the later of the two series' points.
   ``settled`` is False where the minimum lies at the end of the range: still settling.
2. **Too short to judge** below :data:`MIN_JUDGED_S` of steady running: windows of a third
   of that, 100 s, are the shortest in which 10 blocks of 10 s each can be ranked (the rank
   test needs 8 a side) with blocks long enough to hold a server's batching and scheduling
   cycles (seconds), and GPU heating shows over minutes, not seconds.
3. **Windows**: ``min(5 min, a third of the steady span)``, whole blocks of 10, the early one
   starting at steady state, the late one ending with the run.
4. **Tests**, each two-sided Mann-Whitney (:func:`soaktop.engine.metrics.compare.
   mann_whitney_p`, the one ``compare`` uses) with the Hodges-Lehmann shift and Moses' 95%
   interval as the effect size: TTFT and ITL (each request's mean gap, its TPOT) on the
   requests of each window; tokens/s, SM clock and temperature, per-second series whose
   neighbouring seconds are correlated, on the means of the window's 10 blocks.
5. **Verdict**: ``degrading`` when tokens/s fell (significantly, p < :data:`ALPHA`) by more
   than :data:`TPS_DROP`, or the median TTFT or ITL rose by more than :data:`TTFT_RISE` /
   :data:`ITL_RISE`; a measure that got *better* never degrades. ``throttled`` when it
   degraded and a GPU was held back: judged per GPU (an average over eight hides one GPU's
   fall), its SM clock fell significantly by more than :data:`CLOCK_DROP` with a throttling
   clock-event reason (thermal, power cap, HW slowdown...) active in :data:`REASON_SHARE` or
   more of its late samples (or none reported by its source); the worst such GPU is named
   with its reasons. ``stable`` otherwise.

Per-request p-values take requests as independent, which requests sent in the same second
are not quite; with thousands of them the p-value is small for any real shift, and the
effect-size thresholds are what keep a trivial one from counting.

The result is data (:class:`~soaktop.engine.metrics.results.SoakVerdict`);
``soaktop.tui.text`` writes the sentence.

Memory is bounded by the run's length in seconds and by the requests of its first
:data:`FIRST_S`, never by tokens: tokens, requests and their log TTFTs per second (24 bytes
a second); the first 15 minutes' requests take 12 bytes each (send time, TTFT, ITL), the
latest ones a fixed ring; each GPU's samples are summed per second over the first 15 minutes
and a ring of the last 10 (fixed, 120 KB a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from soaktop.engine.events import GpuSample, Phase, RequestDone, SessionEnd, SessionStart
from soaktop.engine.metrics.results import (
    Direction,
    DriftMeasure,
    GpuDrift,
    SoakVerdict,
    Verdict,
)
from soaktop.engine.telemetry.derived import gpu_key
from soaktop.engine.telemetry.reasons import THROTTLING

WINDOW_S = 300  # the windows' longest
MIN_JUDGED_S = 300  # steady running a verdict needs (see the module docstring, 2.)
BLOCKS = 10  # a window's blocks, for the per-second series' test
SETTLE_MAX_S = 600  # steady state is looked for this long after warm-up (or half the run)
MSER_BATCH_S = 5  # MSER-5: batches of 5 seconds
#: Per-request values, and GPU seconds, are kept from the warm-up's end this long: enough for
#: an early window that starts at the latest steady state.
FIRST_S = SETTLE_MAX_S + WINDOW_S
#: The latest requests' values kept for the late window: at more than this many requests in
#: a late window (218 a second over 5 minutes) it is taken over its latest 65,536.
RECENT_REQUESTS = 65_536
ALPHA = 0.01  # significance, as compare's
TPS_DROP = 0.05
TTFT_RISE = 0.10  # of the median: a p95 is too noisy to judge on (+15% in a steady run)
ITL_RISE = 0.10
CLOCK_DROP = 0.03
REASON_SHARE = 0.05
CONFIDENCE = 0.95
#: Arrival offsets, and requests, gathered before their tokens are counted together.
BUFFER_TOKENS = 1 << 14
BUFFER_REQUESTS = 4096

#: How far each deciding measure may move the wrong way before it matters.
THRESHOLDS = {"tokens_per_s": TPS_DROP, "ttft_ms": TTFT_RISE, "itl_ms": ITL_RISE}

# a GPU second's sums: SM clock (sum, samples), temperature (sum, samples), samples that
# reported clock-event reasons, then how many of those had each throttling reason active
_REASONS = tuple(sorted(THROTTLING))
_CLOCK, _CLOCK_N, _TEMP, _TEMP_N, _REPORTED = range(5)
_COLUMNS = 5 + len(_REASONS)


class _GpuSeconds:
    """One GPU's samples summed per second of the measured run: every second of the first
    :data:`FIRST_S`, and a ring of the latest ``recent_s`` (an early window lies in the
    first, a late one in the ring), so memory is fixed however long the run."""

    def __init__(self, first_s: int, recent_s: int) -> None:
        self.first = np.zeros((first_s, _COLUMNS))
        self.ring = np.zeros((recent_s, _COLUMNS))
        self.ring_second = np.full(recent_s, -1, dtype=np.int64)

    def add(self, second: int, row: np.ndarray) -> None:
        if second < len(self.first):
            self.first[second] += row
        slot = second % len(self.ring)
        held = int(self.ring_second[slot])
        if held > second:  # a sample older than the ring: its second is gone
            return
        if held != second:
            self.ring[slot] = 0.0
            self.ring_second[slot] = second
        self.ring[slot] += row

    def seconds(self, lo: int, hi: int) -> np.ndarray:
        """The sums of seconds ``lo`` to ``hi`` (excluded), a row each."""
        if hi <= len(self.first):
            return self.first[lo:hi]
        wanted = np.arange(lo, hi)
        slots = wanted % len(self.ring)
        out = np.zeros((hi - lo, _COLUMNS))
        held = self.ring_second[slots] == wanted
        out[held] = self.ring[slots[held]]
        return out


class Drift:
    """The soak verdict's state, fed events (:meth:`add`) or a summary's batches of
    record lines (:meth:`add_lines`); :meth:`result` judges it (the module docstring)."""

    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = int(window_s)
        self.first_ns = (SETTLE_MAX_S + self.window_s) * 10**9
        self.start_ns: int | None = None  # the measured run's start (warm-up over)
        self.end_ns = 0
        # per second since start_ns: tokens that arrived, and the requests sent in it: how
        # many, and the sum of their TTFTs' logarithms (a few very slow requests move a log
        # little, so they do not pass for a start-up transient)
        self._tokens = np.zeros(256, dtype=np.int64)
        self._ttft_log_sum = np.zeros(256, dtype=np.float64)
        self._ttft_n = np.zeros(256, dtype=np.int64)
        # the first FIRST_S's requests, in arrays that grow by doubling (12 bytes a request:
        # float32 seconds-from-start, TTFT and ITL in ms, NaN where a request has one token);
        # the latest ones in a fixed ring
        self._first_t = np.empty(1024, dtype=np.float32)
        self._first_ttft = np.empty(1024, dtype=np.float32)
        self._first_itl = np.empty(1024, dtype=np.float32)
        self._first_n = 0
        self._ring_t = np.full(RECENT_REQUESTS, -np.inf, dtype=np.float64)
        self._ring_ttft = np.empty(RECENT_REQUESTS, dtype=np.float32)
        self._ring_itl = np.empty(RECENT_REQUESTS, dtype=np.float32)
        self._ring_next = 0
        self._gpus: dict[str, _GpuSeconds] = {}
        self._gpu_names: dict[str, str] = {}
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
        elif isinstance(event, SessionStart):
            self._name_gpus(event.environment)
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > self.end_ns:
            self.end_ns = t_ns

    def _name_gpus(self, environment: dict[str, Any]) -> None:
        """This machine's GPUs' names, from the header (a scraped GPU has none there)."""
        nvidia = environment.get("nvidia") or {}
        for gpu in nvidia.get("gpus") or ():
            if isinstance(gpu, dict) and "index" in gpu and gpu.get("name"):
                self._gpu_names[gpu_key(None, gpu["index"])] = str(gpu["name"])

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
            arrivals = done.arrivals_us
            tokens = sum(done.arrival_tokens) if done.arrival_tokens else n
            # the request's mean gap (its TPOT), as soaktop.engine.metrics.stats has it
            itl_ms = (arrivals[-1] - arrivals[0]) / (tokens - 1) / 1e3 if tokens >= 2 \
                else math.nan
            second = (done.sent_ns - self.start_ns) // 10**9
            if second >= 0:
                self._grow(second)
                self._ttft_log_sum[second] += math.log(max(arrivals[0], 1))
                self._ttft_n[second] += 1
            t_s, ttft_ms = (done.sent_ns - self.start_ns) / 1e9, arrivals[0] / 1e3
            if done.sent_ns < self.start_ns + self.first_ns:
                self._make_room(1)
                i = self._first_n
                self._first_t[i], self._first_ttft[i], self._first_itl[i] = t_s, ttft_ms, itl_ms
                self._first_n += 1
            slot = self._ring_next % RECENT_REQUESTS
            self._ring_t[slot], self._ring_ttft[slot] = t_s, ttft_ms
            self._ring_itl[slot] = itl_ms
            self._ring_next += 1

    def add_lines(self, t_max: int, sent: np.ndarray, lens: np.ndarray, offsets: np.ndarray,
                  first: np.ndarray, last: np.ndarray, warmup: np.ndarray,
                  with_ttft: np.ndarray) -> None:
        """What :meth:`add` does for requests whose arrivals carry one token each, in
        order: ``sent`` their send times, ``lens`` their arrivals, ``offsets`` those end to
        end (µs from each send), ``first`` and ``last`` each one's first and last,
        ``warmup`` which were warm-up, ``with_ttft`` which were successful measured ones with
        arrivals (their TTFT and ITL count).

        The summary's record-line path (:meth:`SessionSummary._flush_lines
        <soaktop.engine.metrics.summary.SessionSummary._flush_lines>`) calls it with a batch's
        arrays; it sits here, beside :meth:`_add_request`, because it fills the same state the
        same way (the summary tests compare the two, bit for bit)."""
        if t_max > self.end_ns:
            self.end_ns = t_max
        if self.start_ns is None:
            return
        measured = np.repeat(~warmup, lens)
        if measured.any():
            self._count_tokens(np.repeat(sent, lens)[measured] + offsets[measured] * 1000, None)
        m = int(np.count_nonzero(with_ttft))
        if not m:
            return
        sent, first, last, n = sent[with_ttft], first[with_ttft], last[with_ttft], lens[with_ttft]
        # the same arithmetic, in the same order, as _add_request's, so the same bits
        itl_ms = np.full(m, np.nan)
        two = n >= 2
        itl_ms[two] = (last[two] - first[two]) / (n[two] - 1) / 1e3
        seconds = (sent - self.start_ns) // 10**9
        counted = seconds >= 0
        if counted.any():
            self._grow(int(seconds[counted].max()))
            # math.log, as _add_request takes it (numpy's vectorised log is not promised
            # to round as the C library's), added in order by np.add.at: the same bits
            logs = np.fromiter(map(math.log, np.maximum(first[counted], 1).tolist()),
                               dtype=np.float64, count=int(np.count_nonzero(counted)))
            np.add.at(self._ttft_log_sum, seconds[counted], logs)
            np.add.at(self._ttft_n, seconds[counted], 1)
        t_s = (sent - self.start_ns) / 1e9
        ttft_ms = first / 1e3
        early = sent < self.start_ns + self.first_ns
        e = int(np.count_nonzero(early))
        if e:
            self._make_room(e)
            at = slice(self._first_n, self._first_n + e)
            self._first_t[at], self._first_ttft[at] = t_s[early], ttft_ms[early]
            self._first_itl[at] = itl_ms[early]
            self._first_n += e
        if m > RECENT_REQUESTS:  # only the latest fit
            t_s, ttft_ms = t_s[-RECENT_REQUESTS:], ttft_ms[-RECENT_REQUESTS:]
            itl_ms = itl_ms[-RECENT_REQUESTS:]
            self._ring_next += m - RECENT_REQUESTS
            m = RECENT_REQUESTS
        slots = (self._ring_next + np.arange(m)) % RECENT_REQUESTS
        self._ring_t[slots], self._ring_ttft[slots] = t_s, ttft_ms
        self._ring_itl[slots] = itl_ms
        self._ring_next += m

    def _make_room(self, more: int) -> None:
        """The first requests' arrays grown (doubling) to hold ``more``."""
        while self._first_n + more > self._first_t.size:
            self._first_t = np.concatenate([self._first_t, np.empty_like(self._first_t)])
            self._first_ttft = np.concatenate([self._first_ttft,
                                               np.empty_like(self._first_ttft)])
            self._first_itl = np.concatenate([self._first_itl, np.empty_like(self._first_itl)])

    def _grow(self, top: int) -> None:
        """The per-second arrays grown to hold second ``top``: with the run's seconds, not its
        tokens or requests."""
        if top < self._tokens.size:
            return
        size = max(top + 1, self._tokens.size * 2)
        for name in ("_tokens", "_ttft_log_sum", "_ttft_n"):
            old = getattr(self, name)
            grown = np.zeros(size, dtype=old.dtype)
            grown[: old.size] = old
            setattr(self, name, grown)

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
            self._grow(int(seconds.max()))
            self._tokens += np.bincount(seconds, weights=weights,
                                        minlength=self._tokens.size).astype(np.int64)

    def _add_gpu(self, sample: GpuSample) -> None:
        if self.start_ns is None or sample.t_ns < self.start_ns:
            return
        row = np.zeros(_COLUMNS)
        if sample.sm_clock_mhz is not None:
            row[_CLOCK], row[_CLOCK_N] = sample.sm_clock_mhz, 1
        if sample.temperature_c is not None:
            row[_TEMP], row[_TEMP_N] = sample.temperature_c, 1
        if sample.clock_event_reasons is not None:
            row[_REPORTED] = 1
            for i, reason in enumerate(_REASONS):
                if reason in sample.clock_event_reasons:
                    row[5 + i] = 1
        key = gpu_key(sample.host, sample.gpu_index)
        seconds = self._gpus.get(key)
        if seconds is None:
            seconds = self._gpus[key] = _GpuSeconds(SETTLE_MAX_S + self.window_s,
                                                    2 * self.window_s)
        seconds.add((sample.t_ns - self.start_ns) // 10**9, row)

    def result(self) -> SoakVerdict | None:
        """The comparison and the verdict; None when no phase after warm-up began."""
        self._count_pending()
        if self.start_ns is None:
            return None
        measured_s = (self.end_ns - self.start_ns) / 1e9
        end_s = int((self.end_ns - self.start_ns) // 10**9)  # whole seconds
        steady_s, settled = self._steady_state(end_s)
        span = end_s - steady_s
        if span < MIN_JUDGED_S:
            return SoakVerdict(Verdict.TOO_SHORT, measured_s, float(steady_s), settled)
        window = min(self.window_s, span // 3) // BLOCKS * BLOCKS
        early, late = (steady_s, steady_s + window), (end_s - window, end_s)
        tokens = self._per_second(self._tokens, end_s).astype(np.float64)
        blocks = _blocks(tokens[slice(*early)]), _blocks(tokens[slice(*late)])
        ttft = self._requests(self._ttft_columns(), early, late)
        itl = self._requests(self._itl_columns(), early, late)
        measures = {
            "tokens_per_s": _compare(*blocks, _levels(*blocks, np.mean), -1),
            "ttft_ms": _compare(*ttft, _levels(*ttft, np.median), +1, test="requests"),
            "itl_ms": _compare(*itl, _levels(*itl, np.median), +1, test="requests"),
        }
        gpus = {key: self._gpu_drift(key, early, late) for key in sorted(self._gpus)}
        deciding = tuple(name for name, m in measures.items()
                         if _matters(m, THRESHOLDS[name]))
        worst = _worst(gpus)
        verdict = Verdict.STABLE
        if deciding:
            throttled = worst is not None and gpus[worst].held_back
            verdict = Verdict.THROTTLED if throttled else Verdict.DEGRADING
        return SoakVerdict(
            verdict=verdict, measured_s=measured_s, steady_state_s=float(steady_s),
            settled=settled, window_s=float(window), early_from_s=float(early[0]),
            late_from_s=float(late[0]), measures=measures, gpus=gpus, worst_gpu=worst,
            deciding=deciding)

    @staticmethod
    def _per_second(values: np.ndarray, n: int) -> np.ndarray:
        """The first ``n`` seconds of a per-second array (zeros past what it has grown to)."""
        if values.size >= n:
            return values[:n]
        return np.concatenate([values, np.zeros(n - values.size, dtype=values.dtype)])

    def _steady_state(self, end_s: int) -> tuple[int, bool]:
        """When steady state began (whole seconds from the warm-up's end), by MSER-5 on
        tokens/s and on the TTFTs' mean logarithm, the later of the two; and whether it was
        found before the end of the range searched."""
        batches = end_s // MSER_BATCH_S
        limit = min(SETTLE_MAX_S, end_s // 2) // MSER_BATCH_S
        if batches < 2:
            return 0, False
        shape = (batches, MSER_BATCH_S)
        cut = batches * MSER_BATCH_S
        tokens = self._per_second(self._tokens, cut).reshape(shape).sum(axis=1) / MSER_BATCH_S
        ttft_sum = self._per_second(self._ttft_log_sum, cut).reshape(shape).sum(axis=1)
        ttft_n = self._per_second(self._ttft_n, cut).reshape(shape).sum(axis=1)
        ttft = np.full(batches, np.nan)
        np.divide(ttft_sum, ttft_n, out=ttft, where=ttft_n > 0)
        # to a billionth of a log: sums of logs differ in their last bits, which would make
        # a perfectly steady series look noisy and MSER's minimum fall anywhere
        ttft = np.round(ttft, 9)
        d = max(mser(tokens.astype(np.float64), limit), mser(ttft, limit))
        return d * MSER_BATCH_S, d < limit

    def _ttft_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (self._first_t[: self._first_n], self._first_ttft[: self._first_n],
                self._ring_t, self._ring_ttft)

    def _itl_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (self._first_t[: self._first_n], self._first_itl[: self._first_n],
                self._ring_t, self._ring_itl)

    @staticmethod
    def _requests(columns: tuple[np.ndarray, ...], early: tuple[int, int],
                  late: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The values of the requests sent in each window (the early from the first
        requests' arrays, the late from the ring), as float64, NaNs left out."""
        first_t, first_v, ring_t, ring_v = columns
        a = first_v[(first_t >= early[0]) & (first_t < early[1])].astype(np.float64)
        b = ring_v[(ring_t >= late[0]) & (ring_t < late[1])].astype(np.float64)
        return a[~np.isnan(a)], b[~np.isnan(b)]

    def _gpu_drift(self, key: str, early: tuple[int, int], late: tuple[int, int]) -> GpuDrift:
        seconds = self._gpus[key]
        first, last = seconds.seconds(*early), seconds.seconds(*late)
        clock = _compare(*_gpu_blocks(first, last, _CLOCK), _gpu_levels(first, last, _CLOCK),
                         -1)
        temp = _compare(*_gpu_blocks(first, last, _TEMP), _gpu_levels(first, last, _TEMP), +1,
                        relative=False)
        totals = last.sum(axis=0)
        reported = totals[_REPORTED]
        shares = {reason: float(totals[5 + i] / reported) for i, reason in enumerate(_REASONS)
                  if reported and totals[5 + i] / reported >= REASON_SHARE}
        shares = dict(sorted(shares.items(), key=lambda kv: -kv[1]))
        held_back = (_matters(clock, CLOCK_DROP) and (bool(shares) or not reported))
        return GpuDrift(key=key, name=self._gpu_names.get(key), sm_clock_mhz=clock,
                        temperature_c=temp, throttle_reasons=shares,
                        reasons_reported=bool(reported), held_back=held_back)


def mser(values: np.ndarray, limit: int) -> int:
    """MSER's truncation point of a series of batch means (NaN: a batch with no value): the
    ``d`` in ``0..limit`` that minimises ``sum((x - mean)^2) / m^2`` over the ``m`` values
    after it; the first such ``d`` where several tie (a perfectly steady series: 0)."""
    valid = ~np.isnan(values)
    if not valid.any():
        return 0
    # centred on a value of its own first: a constant series is then exactly 0, not the
    # rounding noise of its mean, which would put the minimum anywhere
    values = values - np.median(values[valid])
    best, best_d = math.inf, 0
    for d in range(min(limit, values.size - 2) + 1):
        tail = values[d:][valid[d:]]
        if tail.size < 2:
            break
        statistic = float(((tail - tail.mean()) ** 2).sum()) / tail.size**2
        if statistic < best:
            best, best_d = statistic, d
    return best_d


def _blocks(seconds: np.ndarray) -> np.ndarray:
    """A window's per-second values as the means of its :data:`BLOCKS` blocks."""
    return seconds.reshape(BLOCKS, -1).mean(axis=1)


def _gpu_blocks(first: np.ndarray, last: np.ndarray, column: int) -> tuple[np.ndarray, ...]:
    """Each window's block means of a GPU's column (sum over samples), blocks without a
    sample left out."""
    out = []
    for seconds in (first, last):
        blocks = seconds.reshape(BLOCKS, -1, _COLUMNS).sum(axis=1)
        n = blocks[:, column + 1]
        out.append(blocks[n > 0, column] / n[n > 0])
    return tuple(out)


def _gpu_levels(first: np.ndarray, last: np.ndarray, column: int) -> tuple[float | None, ...]:
    """Each window's mean of a GPU's column over its samples (not over its blocks, which
    may hold unequal numbers of samples); ``None`` where it had none."""
    out = []
    for seconds in (first, last):
        total = seconds.sum(axis=0)
        out.append(float(total[column] / total[column + 1]) if total[column + 1] else None)
    return tuple(out)


def _compare(early: np.ndarray, late: np.ndarray, levels: tuple[float | None, ...],
             worse: int, relative: bool = True, test: str = "blocks") -> DriftMeasure:
    """One measure, ``late`` against ``early`` with the windows' ``levels``: the
    Hodges-Lehmann shift (over the early level where ``relative``) with its interval, the
    rank test's p, and which way it moved (``worse``: +1 where higher is worse, -1 where
    lower is)."""
    from soaktop.engine.metrics.compare import mann_whitney_p  # compare imports summary

    a, b = levels
    change = low = high = None
    direction = None
    if early.size and late.size:
        shift, lo, hi = hodges_lehmann(early, late)
        scale = a if relative else 1.0
        if scale:
            change, low, high = shift / scale, lo / scale, hi / scale
            # a shift within rounding of zero (block means that differ in their last bits)
            # is no move either way
            level = max(abs(a or 0.0), abs(b or 0.0))
            direction = (Direction.SAME if abs(shift) <= 1e-9 * level else
                         Direction.WORSE if shift * worse > 0 else Direction.BETTER)
    return DriftMeasure(
        early=a, late=b, change=change, low=low, high=high,
        p_value=mann_whitney_p(early, late), direction=direction, test=test,
        n_early=int(early.size), n_late=int(late.size))


def _levels(early: np.ndarray, late: np.ndarray,
            level: Callable[[np.ndarray], Any]) -> tuple[float | None, ...]:
    return tuple(float(level(v)) if v.size else None for v in (early, late))


def hodges_lehmann(early: np.ndarray, late: np.ndarray,
                   confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The Hodges-Lehmann shift of ``late`` from ``early`` (the median of all late-minus-early
    differences) and Moses' interval for it: the differences at the ranks ``k`` and
    ``N - k + 1`` of the ``N = n1 n2``, ``k`` from the Mann-Whitney statistic's normal
    approximation.

    Without making the N differences: a difference's quantile is found by bisection on its
    value, counting the differences at or below a value with a binary search per late value.
    Past :data:`HL_MOST` values a side, each side is first thinned to that many of its own
    quantiles (evenly spaced in rank), which keeps the distribution of the differences, and
    the quantiles are read at the fractions ``k / N`` of the full sizes: the interval is the
    full samples' to the thinning's resolution, at a hundredth of the cost."""
    n1, n2 = early.size, late.size
    pairs = n1 * n2
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    k = max(1, math.floor(pairs / 2 - z * math.sqrt(pairs * (n1 + n2 + 1) / 12)))
    x, y = _thin(np.sort(early)), _thin(np.sort(late))
    m = x.size * y.size
    scale = pairs / m  # each thinned difference stands for this many

    def kth(rank: int) -> float:
        """The difference of rank ``rank`` (1-based) among the full samples' ``pairs``."""
        want = math.ceil(rank / scale - 1e-9)
        lo, hi = float(y[0] - x[-1]), float(y[-1] - x[0])
        if lo == hi:
            return lo
        for _ in range(64):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if int((x.size - np.searchsorted(x, y - mid, side="left")).sum()) >= want:
                hi = mid
            else:
                lo = mid
        return hi

    middle = (kth((pairs + 1) // 2) + kth(pairs // 2 + 1)) / 2
    return middle, kth(k), kth(pairs - k + 1)


#: The most values a side :func:`hodges_lehmann` bisects over (see there).
HL_MOST = 4096


def _thin(values: np.ndarray) -> np.ndarray:
    """Sorted ``values``, or :data:`HL_MOST` of their quantiles evenly spaced in rank."""
    if values.size <= HL_MOST:
        return values
    return values[np.round(np.linspace(0, values.size - 1, HL_MOST)).astype(np.int64)]


def _matters(measure: DriftMeasure, threshold: float) -> bool:
    """Worse, beyond noise, and by more than ``threshold``: both, or it does not count."""
    return (measure.direction is Direction.WORSE and measure.p_value is not None
            and measure.p_value < ALPHA and measure.change is not None
            and abs(measure.change) > threshold)


def _worst(gpus: dict[str, GpuDrift]) -> str | None:
    """The GPU to name: the held-back one whose clock fell most, else any whose fell most."""
    measured = [g for g in gpus.values() if g.sm_clock_mhz.change is not None]
    if not measured:
        return None
    return min(measured, key=lambda g: (not g.held_back, g.sm_clock_mhz.change)).key
