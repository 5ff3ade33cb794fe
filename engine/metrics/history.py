"""What the dashboard draws: the whole session, at several resolutions, in fixed memory.

:class:`~soaktop.engine.metrics.live.LiveStats` answers "now"; charts need "now and before",
and a soak needs *all* of before: what a 30-minute run exists to show (a GPU warming until its
clock falls, TTFT creeping up) takes minutes to appear, and its start must still be there at the
end. :class:`History` is fed one point a second of the session clock (by the live dashboard's
timer, by a replay's ticks, by an attached record's client samples, so every screen draws the
same curves) and keeps every point in several rings at once:

- :data:`LEVELS`: per second for the last 15 minutes, per 10 s for the last 2 hours, per minute
  for the last day: a window at 1 s, 10 s or 1 min a column, ending where asked;
- the whole run from its first second, in :data:`WHOLE_BUCKETS` buckets whose width doubles
  (pairs merge) each time the ring fills, so any run, however long, fits, at a resolution
  that only gets coarser as the run gets longer.

A bucket keeps min, max, sum and count per series (and the OR of the GPUs' clock-event reasons),
not a mean alone: a chart of a coarse view draws each column's min–max as a band with the mean
on it, so a clock dip or a TTFT spike never averages away. A second with no point (a seek, a
stall of the screen) stays empty (NaN), never zero. Phases and marks are kept (the last
:data:`TICKS` of each) for the ticks on the time axis, each phase with what it changed.

An outline first (``attach`` on a long record): a record holds once a second what tokens/s and
the GPU rows need (a ``client_sample``, the GPUs' samples), and those are a few percent of its
lines, while TTFT, ITL and errors need every ``request_done``. :meth:`History.outline` puts
those rows of a point in at once, so the whole run draws in a second or two; the
:meth:`History.record` calls that follow, for the same points in the same order, add only the
rest. Each row of a point comes from one of the two, and empty rows change no bucket, so the
History that results is the one recording every point whole gives (the request rows of the
whole-run ring are gathered apart meanwhile and laid in once the outline is caught up, so its
buckets add them in the order a plain read does).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from soaktop.engine.events import GpuSample, Mark, Phase, PhaseReason
from soaktop.engine.metrics.live import LiveSnapshot

#: The request series, each from the live snapshot of that second.
SERIES = ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s", "speed_p50_tps", "itl_p50_ms",
          "errors")
#: Per GPU (ratios are of the clock's maximum, the power limit, the memory's size).
GPU_SERIES = ("temperature_c", "margin_c", "sm_clock_ratio", "power_w", "power_ratio",
              "memory_ratio")
#: (seconds a bucket, buckets) of the fixed-step rings: 15 min at 1 s, 2 h at 10 s, 1 day at 1 min.
LEVELS = ((1, 900), (10, 720), (60, 1440))
#: The column widths a window can be read at (besides the whole run).
STEPS = tuple(step for step, _ in LEVELS)
#: Buckets of the whole-run ring (even: it merges pairs).
WHOLE_BUCKETS = 1024
#: Phases and marks kept for the axis ticks.
TICKS = 1024
_SAMPLED = 1 << 62  # in a GPU's reason bits: the bucket holds at least one sample of it


class PhaseTick(NamedTuple):
    """A phase that began inside a window: its column, the phase, and what it changed since the
    one before: ``concurrency``, ``model``, ``rate``, ``pause``, ``warmup_done`` (or ``start``)."""

    column: int
    phase: Phase
    change: str


@dataclass(frozen=True, slots=True)
class Window:
    """``width`` columns of ``step_s`` seconds each, oldest first, the first starting at
    ``start_s``: what one chart shows. ``series`` holds each column's mean, ``low``/``high`` its
    min and max (equal to the mean at 1 s a column); NaN where the column has no point."""

    start_s: int
    end_s: int  # the newest second the window covers
    step_s: int
    series: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    gpus: dict[str, dict[str, np.ndarray]]  # per GPU, per GPU_SERIES: the column means
    gpus_low: dict[str, dict[str, np.ndarray]]
    gpus_high: dict[str, dict[str, np.ndarray]]
    reasons: dict[str, list[tuple[str, ...] | None]]  # per GPU, per column: every reason active
    phases: list[PhaseTick]  # phases that began in the window
    marks: list[tuple[int, Mark]]

    @property
    def width(self) -> int:
        return len(next(iter(self.series.values())))

    @property
    def span_s(self) -> int:
        return self.width * self.step_s


class _Ring:
    """Buckets of ``width_s`` seconds: min, max, sum and count per row, reason bits per GPU.
    Bucket ``b`` lives in slot ``b % capacity``; ``bucket`` says which one a slot holds."""

    def __init__(self, width_s: int, capacity: int, rows: int, gpus: int) -> None:
        self.width_s, self.capacity = width_s, capacity
        self.bucket = np.full(capacity, -1, dtype=np.int64)
        self.lo = np.full((rows, capacity), np.inf)
        self.hi = np.full((rows, capacity), -np.inf)
        self.sum = np.zeros((rows, capacity))
        self.count = np.zeros((rows, capacity), dtype=np.int64)
        self.bits = np.zeros((gpus, capacity), dtype=np.int64)

    def grow(self, rows: int, gpus: int) -> None:
        """Room for a GPU seen for the first time (its rows start empty)."""
        extra, extra_gpus = rows - self.lo.shape[0], gpus - self.bits.shape[0]
        cap = self.capacity
        self.lo = np.vstack([self.lo, np.full((extra, cap), np.inf)])
        self.hi = np.vstack([self.hi, np.full((extra, cap), -np.inf)])
        self.sum = np.vstack([self.sum, np.zeros((extra, cap))])
        self.count = np.vstack([self.count, np.zeros((extra, cap), dtype=np.int64)])
        self.bits = np.vstack([self.bits, np.zeros((extra_gpus, cap), dtype=np.int64)])

    def _clear(self, slot: int | slice) -> None:
        self.lo[:, slot], self.hi[:, slot] = np.inf, -np.inf
        self.sum[:, slot], self.count[:, slot], self.bits[:, slot] = 0.0, 0, 0

    def put(self, second: int, values: np.ndarray, bits: np.ndarray) -> None:
        b = second // self.width_s
        slot = b % self.capacity
        held = self.bucket[slot]
        if held > b:
            return  # a second older than the ring reaches: nothing to put it in
        if held != b:
            self._clear(slot)
            self.bucket[slot] = b
        ok = np.isfinite(values)
        self.lo[:, slot] = np.fmin(self.lo[:, slot], values)  # fmin/fmax pass over NaN
        self.hi[:, slot] = np.fmax(self.hi[:, slot], values)
        self.sum[:, slot] += np.where(ok, values, 0.0)
        self.count[:, slot] += ok
        self.bits[:, slot] |= bits

    def read(self, first: int, n: int) -> tuple[np.ndarray, ...]:
        """Buckets ``first`` .. ``first + n - 1``, raw (empty: +inf, -inf, 0, 0, 0)."""
        buckets = np.arange(first, first + n)
        slots = buckets % self.capacity
        held = (self.bucket[slots] == buckets) & (buckets >= 0)
        lo = np.where(held, self.lo[:, slots], np.inf)
        hi = np.where(held, self.hi[:, slots], -np.inf)
        total = np.where(held, self.sum[:, slots], 0.0)
        count = np.where(held, self.count[:, slots], 0)
        bits = np.where(held, self.bits[:, slots], 0)
        return lo, hi, total, count, bits

    def halve(self) -> None:
        """The whole-run ring is full: merge neighbouring buckets, twice as wide each."""
        half = self.capacity // 2
        for name, merge in (("lo", np.fmin), ("hi", np.fmax), ("sum", np.add),
                            ("count", np.add), ("bits", np.bitwise_or)):
            array = getattr(self, name)
            array[:, :half] = merge(array[:, 0::2], array[:, 1::2])
        held = (self.bucket[0::2] >= 0) | (self.bucket[1::2] >= 0)
        self.bucket[:half] = np.where(held, np.arange(half), -1)
        self.bucket[half:] = -1
        self._clear(slice(half, None))
        self.width_s *= 2


class History:
    def __init__(self, seconds: int = LEVELS[0][1]) -> None:
        self.capacity = seconds  # seconds held at 1 s a column (a replay redraws that far back)
        self._levels = [_Ring(1, seconds, len(SERIES), 0)]
        self._levels += [_Ring(step, buckets, len(SERIES), 0) for step, buckets in LEVELS[1:]]
        self._whole = _Ring(1, WHOLE_BUCKETS, len(SERIES), 0)
        self._gpu_rows: dict[str, int] = {}  # GPU key -> its first row
        self._reason_bit: dict[str, int] = {}  # reason name -> bit, in order of first sight
        self._phases: deque[tuple[Phase, str]] = deque(maxlen=TICKS)
        self._marks: deque[Mark] = deque(maxlen=TICKS)
        self._last_phase: Phase | None = None
        self._failed_before = 0
        self.latest_s = -1
        # an outline not yet caught up: its points' seconds, the phases and marks it has put
        # in (their second arrival is skipped), the whole-run ring of the rows still to come
        self._outlined: deque[int] = deque()
        self._ticks_ahead = 0
        self._rest: _Ring | None = None

    def reset(self) -> None:
        self.__init__(self.capacity)

    @property
    def whole_bucket_s(self) -> int:
        """Seconds a bucket of the whole-run ring holds now (1, 2, 4, ... as the run grows)."""
        return self._whole.width_s

    @property
    def outline_ahead(self) -> int:
        """Points outlined whose :meth:`record` has not come yet (0: nothing pending)."""
        return len(self._outlined)

    def rings(self) -> list[_Ring]:
        return [*self._levels, self._whole, *([self._rest] if self._rest else [])]

    # -- in ------------------------------------------------------------------------------
    def add(self, event: Any) -> None:
        """Listener: phases and marks, for the ticks on the time axis."""
        if isinstance(event, (Phase, Mark)) and self._ticks_ahead:
            self._ticks_ahead -= 1  # the outline put it in already
            return
        self._tick(event)

    def _tick(self, event: Any) -> None:
        if isinstance(event, Phase):
            self._phases.append((event, _change(self._last_phase, event)))
            self._last_phase = event
        elif isinstance(event, Mark):
            self._marks.append(event)

    def outline_tick(self, event: Any) -> None:
        """A phase or mark read by an outline: in now, and skipped when :meth:`add` sees it
        again (the full read brings every event, in the same order)."""
        if isinstance(event, (Phase, Mark)):
            self._tick(event)
            self._ticks_ahead += 1

    def outline(self, second: int, tokens_per_s: float | None,
                gpus: Mapping[str, GpuSample]) -> None:
        """The rows of the point of ``second`` that a record's per-second samples give:
        tokens/s (from its ``client_sample``) and each GPU's latest sample (``gpus``, by
        key, as a snapshot's telemetry holds them). The :meth:`record` of this point, which
        must follow in the order the outlines came, adds only the other rows."""
        if second < 0:
            return
        row, bits = self._row(None, tokens_per_s, sorted(gpus.items()))
        self._outlined.append(second)
        self._put(self._whole, second, row, bits)

    def record(self, second: int, snap: LiveSnapshot) -> None:
        """The point of ``second`` (the session clock's, counting from 0): ``snap`` as of then."""
        if second < 0:
            return
        if not self._outlined:
            gpus = [(key, now.latest) for key, now in snap.telemetry.gpus.items()]
            row, bits = self._row(snap, snap.tokens_per_s, gpus)
            self._put(self._whole, second, row, bits)
            return
        # the rest of an outlined point: the request rows but tokens/s, no GPU row; the
        # whole-run ring's part waits in a ring of its own until the outline is caught up
        self._outlined.popleft()
        row, bits = self._row(snap, None, [])
        if self._rest is None:
            self._rest = _Ring(1, WHOLE_BUCKETS, row.size, len(self._gpu_rows))
        self._put(self._rest, second, row, bits)
        if not self._outlined:
            self._lay_rest()

    def _row(self, snap: LiveSnapshot | None, tokens_per_s: float | None,
             gpus: list[tuple[str, GpuSample]]) -> tuple[np.ndarray, np.ndarray]:
        """A point's rows (NaN where not given: an outline's request rows, the rest's
        tokens/s and GPU rows) and its GPUs' reason bits; a GPU seen first gets its rows."""
        values: dict[str, float | None] = {"tokens_per_s": tokens_per_s}
        if snap is not None:
            values.update(ttft_p50_ms=snap.ttft_p50_ms, ttft_p95_ms=snap.ttft_p95_ms,
                          speed_p50_tps=snap.speed_p50_tps, itl_p50_ms=snap.itl_p50_ms,
                          errors=max(0, snap.requests_failed - self._failed_before))
            self._failed_before = snap.requests_failed
        gpu_values: dict[str, list] = {}
        gpu_bits: dict[str, int] = {}
        for key, s in gpus:
            margin = (None if s.slowdown_temperature_c is None or s.temperature_c is None
                      else s.slowdown_temperature_c - s.temperature_c)
            gpu_values[key] = [s.temperature_c, margin, _ratio(s.sm_clock_mhz, s.sm_clock_max_mhz),
                               s.power_w, _ratio(s.power_w, s.power_limit_w),
                               _ratio(s.memory_used_bytes, s.memory_total_bytes)]
            gpu_bits[key] = _SAMPLED | self._bits(s.clock_event_reasons or ())
            if key not in self._gpu_rows:
                self._gpu_rows[key] = len(SERIES) + len(GPU_SERIES) * len(self._gpu_rows)
                rows = len(SERIES) + len(GPU_SERIES) * len(self._gpu_rows)
                for ring in self.rings():
                    ring.grow(rows, len(self._gpu_rows))
        row = np.full(len(SERIES) + len(GPU_SERIES) * len(self._gpu_rows), np.nan)
        row[: len(SERIES)] = [np.nan if values.get(name) is None else values[name]
                              for name in SERIES]
        bits = np.zeros(len(self._gpu_rows), dtype=np.int64)
        for i, (key, first) in enumerate(self._gpu_rows.items()):
            if key in gpu_values:
                row[first: first + len(GPU_SERIES)] = [np.nan if v is None else v
                                                       for v in gpu_values[key]]
                bits[i] = gpu_bits[key]
        return row, bits

    def _put(self, whole: _Ring, second: int, row: np.ndarray, bits: np.ndarray) -> None:
        for ring in self._levels:
            ring.put(second, row, bits)
        while second // whole.width_s >= whole.capacity:
            whole.halve()
        whole.put(second, row, bits)
        self.latest_s = max(self.latest_s, second)

    def _lay_rest(self) -> None:
        """The outline is caught up: its rest's whole-run buckets go into the whole-run
        ring, whose request rows (but tokens/s) are empty, so each bucket ends as a plain
        read leaves it, sums added in the same order."""
        rest, whole, self._rest = self._rest, self._whole, None
        while rest.width_s < whole.width_s:  # the rest saw every outlined second: never
            rest.halve()
        whole.lo[:] = np.fmin(whole.lo, rest.lo)
        whole.hi[:] = np.fmax(whole.hi, rest.hi)
        whole.sum += rest.sum
        whole.count += rest.count
        whole.bits |= rest.bits
        whole.bucket[:] = np.maximum(whole.bucket, rest.bucket)

    def _whole_raw(self, n: int) -> tuple[np.ndarray, ...]:
        """The whole-run ring's first ``n`` buckets, raw; while an outline is being caught
        up, with the rest's buckets read at the same width and folded in."""
        raw = self._whole.read(0, n)
        rest = self._rest
        if rest is None:
            return raw
        k = max(1, self._whole.width_s // rest.width_s)  # the rest: as wide or finer
        lo, hi, total, count, bits = rest.read(0, n * k)
        if k > 1:
            shape = (lo.shape[0], n, k)
            lo, hi = lo.reshape(shape).min(axis=2), hi.reshape(shape).max(axis=2)
            total, count = total.reshape(shape).sum(axis=2), count.reshape(shape).sum(axis=2)
            bits = np.bitwise_or.reduce(bits.reshape(bits.shape[0], n, k), axis=2)
        return (np.fmin(raw[0], lo), np.fmax(raw[1], hi), raw[2] + total, raw[3] + count,
                raw[4] | bits)

    def _bits(self, reasons: tuple[str, ...]) -> int:
        bits = 0
        for name in reasons:
            bit = self._reason_bit.get(name)
            if bit is None:
                if len(self._reason_bit) >= 62:
                    continue  # more reason names than bits: NVML has nine
                bit = self._reason_bit[name] = len(self._reason_bit)
            bits |= 1 << bit
        return bits

    # -- out -----------------------------------------------------------------------------
    def window(self, width: int, end_s: int | None = None, step_s: int = 1) -> Window:
        """``width`` columns of ``step_s`` seconds (one of :data:`STEPS`) up to the column that
        holds ``end_s`` (default: the newest point), oldest first. No wider than the ring."""
        ring = self._levels[STEPS.index(step_s)]
        width = max(1, min(width, ring.capacity))
        end = self.latest_s if end_s is None else end_s
        last = end // step_s
        first = last - width + 1
        return self._window(ring.read(first, width), first * step_s, end, step_s)

    def whole(self, width: int) -> Window:
        """The run from its first second, fitted to at most ``width`` columns: each column is a
        whole number of the whole-run ring's buckets (the fewest that fit), so the columns after
        the run's newest second are empty."""
        width = max(1, width)
        ring = self._whole
        span = max(1, self.latest_s + 1)
        k = max(1, math.ceil(span / (width * ring.width_s)))
        lo, hi, total, count, bits = self._whole_raw(width * k)
        if k > 1:
            shape = (lo.shape[0], width, k)
            lo, hi = lo.reshape(shape).min(axis=2), hi.reshape(shape).max(axis=2)
            total, count = total.reshape(shape).sum(axis=2), count.reshape(shape).sum(axis=2)
            bits = np.bitwise_or.reduce(bits.reshape(bits.shape[0], width, k), axis=2)
        return self._window((lo, hi, total, count, bits), 0, max(0, self.latest_s),
                            ring.width_s * k)

    def _window(self, raw: tuple[np.ndarray, ...], start_s: int, end_s: int,
                step_s: int) -> Window:
        lo, hi, total, count, bits = raw
        empty = count == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(empty, np.nan, total / np.maximum(count, 1))
        lo, hi = np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)

        def rows(array: np.ndarray, first: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
            return {name: array[first + i] for i, name in enumerate(names)}

        names = {bit: name for name, bit in self._reason_bit.items()}

        def reasons(column_bits: np.ndarray) -> list[tuple[str, ...] | None]:
            return [None if not b & _SAMPLED else
                    tuple(names[i] for i in sorted(names) if b >> i & 1)
                    for b in column_bits.tolist()]

        width = lo.shape[1]
        stop_s = start_s + width * step_s

        def column(t_ns: int) -> int:
            return int((t_ns // 10**9 - start_s) // step_s)

        return Window(
            start_s=start_s, end_s=end_s, step_s=step_s,
            series=rows(mean, 0, SERIES), low=rows(lo, 0, SERIES), high=rows(hi, 0, SERIES),
            gpus={k: rows(mean, r, GPU_SERIES) for k, r in self._gpu_rows.items()},
            gpus_low={k: rows(lo, r, GPU_SERIES) for k, r in self._gpu_rows.items()},
            gpus_high={k: rows(hi, r, GPU_SERIES) for k, r in self._gpu_rows.items()},
            reasons={k: reasons(bits[i]) for i, k in enumerate(self._gpu_rows)},
            phases=[PhaseTick(column(p.t_ns), p, change) for p, change in self._phases
                    if start_s * 10**9 <= p.t_ns < stop_s * 10**9 and change != "start"],
            marks=[(column(m.t_ns), m) for m in self._marks
                   if start_s * 10**9 <= m.t_ns < stop_s * 10**9],
        )


def _ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def _change(before: Phase | None, phase: Phase) -> str:
    """What a phase changed since the one before: the tick on the time axis says it."""
    if before is None or phase.reason == PhaseReason.START:
        return "start"
    if phase.reason in (PhaseReason.PAUSED, PhaseReason.KEY_PAUSED):
        return "pause"
    if phase.model != before.model or phase.backend != before.backend:
        return "model"
    if phase.rate is not None and phase.rate != before.rate:
        return "rate"
    if phase.concurrency == before.concurrency and phase.reason == PhaseReason.WARMUP_DONE:
        return "warmup_done"
    return "concurrency"
