"""A record read once into what its report draws: per-bucket time series and histograms.

Why not keep requests or tokens: a long soak has millions of tokens, and a page cannot hold
them anyway; a chart has a column per second at most. So every token and request is put in
the bucket of the second it happened in as it is read (a batch of request lines at a time,
whole-array numpy), and memory is bounded by the run's seconds, not its tokens: at most
:data:`MAX_COLUMNS` buckets, whose width doubles (pairs merge) when a run outgrows them.

Latencies are kept as log histograms per bucket (:data:`EDGES_MS`, 40 bins a decade: a
bin is 6% wide), so each second's TTFT p50/p95/p99 and each phase's distribution come out
of counts, never out of a list of values. The exact figures of the run are the summary's
(:class:`~soaktop.engine.metrics.summary.SessionSummary`, fed by the same read), shown in the
page's table; the charts show their shape over time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Mark,
    Phase,
    SessionEnd,
    SessionStart,
)
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.records.format import RecordReader
from soaktop.tui.record_commands import collector_paused

#: Buckets a series holds at most: past this the bucket width doubles (a 30-minute run
#: keeps 1 s buckets; a day's run 32 s ones).
MAX_COLUMNS = 2048
#: Histogram bin edges in ms: 0.01 ms to 1,000 s, 40 bins a decade (values outside are
#: clipped into the first or last bin).
EDGES_MS = 10.0 ** np.arange(-2.0, 6.0 + 1e-9, 1 / 40)
BINS = EDGES_MS.size - 1
#: The middle of each bin (geometric): the value a quantile read from counts is given.
MIDDLES_MS = np.sqrt(EDGES_MS[:-1] * EDGES_MS[1:])
#: Error classes drawn apart; the rest are counted as "other".
MAX_ERROR_CLASSES = 8
_BATCH = 4096  # request lines (or samples) gathered before a whole-array pass


def bin_of(values_ms: np.ndarray) -> np.ndarray:
    """The histogram bin of each value in ms (clipped to the first and last bin)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 ms: -inf, clipped to bin 0
        index = np.floor((np.log10(values_ms) + 2.0) * 40.0 + 1e-9)
    return np.clip(np.nan_to_num(index, nan=0.0, neginf=0.0), 0, BINS - 1).astype(np.int64)


def quantile_of_counts(counts: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile (0..1) of each row of bin counts, as its bin's middle; NaN for a row
    with no count. The bin holding the value ranked ``ceil(q * n)`` (the nearest-rank one)."""
    counts = np.atleast_2d(counts)
    total = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)
    rank = np.maximum(np.ceil(q * total), 1)
    index = np.argmax(cum >= rank[:, None], axis=1)
    return np.where(total > 0, MIDDLES_MS[index], np.nan)


class _Buckets:
    """Named per-bucket arrays that grow with the run; ``sum`` arrays add, ``max`` arrays
    keep the largest. Past :data:`MAX_COLUMNS` neighbouring buckets merge, twice as wide."""

    def __init__(self) -> None:
        self.step_s = 1
        self.columns = 0  # buckets in use
        self.sums: dict[str, np.ndarray] = {}
        self.maxes: dict[str, np.ndarray] = {}
        self._capacity = 64

    def column(self, seconds: np.ndarray) -> np.ndarray:
        """The bucket of each second (non-negative), growing or widening the buckets to fit."""
        seconds = np.maximum(np.asarray(seconds, dtype=np.int64), 0)
        if seconds.size:
            last = int(seconds.max())
            while last // self.step_s >= MAX_COLUMNS:
                self._widen()
            self._grow(last // self.step_s + 1)
        return seconds // self.step_s

    def _array(self, table: dict[str, np.ndarray], name: str, shape: tuple[int, ...],
               fill: float) -> np.ndarray:
        if name not in table:
            table[name] = np.full((self._capacity, *shape), fill)
        return table[name]

    def add(self, name: str, columns: np.ndarray, values: Any, shape: tuple[int, ...] = (),
            bins: np.ndarray | None = None) -> None:
        """Add ``values`` (or 1 each) into ``name`` at ``columns`` (and ``bins``)."""
        array = self._array(self.sums, name, shape, 0.0)
        flat = columns if bins is None else columns * shape[0] + bins
        size = array.size
        array.reshape(-1)[:] += np.bincount(flat, weights=values, minlength=size)[:size]

    def maximum(self, name: str, columns: np.ndarray, values: np.ndarray) -> None:
        array = self._array(self.maxes, name, (), -np.inf)
        np.maximum.at(array, columns, values)

    def _grow(self, columns: int) -> None:
        self.columns = max(self.columns, columns)
        if columns <= self._capacity:
            return
        capacity = min(MAX_COLUMNS, max(columns, self._capacity * 2))
        for table, fill in ((self.sums, 0.0), (self.maxes, -np.inf)):
            for name, array in table.items():
                extra = np.full((capacity - self._capacity, *array.shape[1:]), fill)
                table[name] = np.concatenate([array, extra])
        self._capacity = capacity

    def _widen(self) -> None:
        self._grow(MAX_COLUMNS)
        half = MAX_COLUMNS // 2
        for table, merge, fill in ((self.sums, np.add, 0.0), (self.maxes, np.fmax, -np.inf)):
            for array in table.values():
                array[:half] = merge(array[0:MAX_COLUMNS:2], array[1:MAX_COLUMNS:2])
                array[half:] = fill
        self.step_s *= 2
        self.columns = (self.columns + 1) // 2

    def sum(self, name: str, shape: tuple[int, ...] = ()) -> np.ndarray:
        if name not in self.sums:
            return np.zeros((self.columns, *shape))
        return self.sums[name][: self.columns]

    def mean(self, name: str) -> np.ndarray:
        """``name`` summed over ``name#n`` (its count): NaN where a bucket has none."""
        total, count = self.sum(name), self.sum(name + "#n")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def max(self, name: str) -> np.ndarray:
        if name not in self.maxes:
            return np.full(self.columns, np.nan)
        array = self.maxes[name][: self.columns]
        return np.where(np.isfinite(array), array, np.nan)


@dataclasses.dataclass
class PhaseSpan:
    phase_id: int
    start_s: float
    end_s: float
    concurrency: int
    warmup: bool
    model: str
    reason: str
    rate: float | None


@dataclasses.dataclass
class RecordSeries:
    """What a report draws of one record (see the module's docstring); times in seconds of
    the session clock. Per GPU (by its label): ``limits`` holds its slowdown temperature,
    maximum SM clock and power limit as last sampled."""

    path: Path
    header: SessionStart | None
    end: SessionEnd | None
    summary: SessionSummary
    warnings: list[str]
    step_s: int
    duration_s: float
    series: dict[str, np.ndarray]  # per bucket: tokens_per_s, ttft_p50_ms, ..., in_flight
    errors: dict[str, np.ndarray]  # per error class: requests failed per bucket
    gpus: dict[str, dict[str, np.ndarray]]  # per GPU: temperature_c, sm_clock_mhz, ...
    limits: dict[str, dict[str, float | None]]
    reasons: dict[str, dict[str, np.ndarray]]  # per GPU, per clock-event reason: share
    phases: list[PhaseSpan]
    marks: list[tuple[float, str]]
    ttft_by_phase: dict[int, np.ndarray]  # per phase: TTFT bin counts (measured requests)
    itl_by_phase: dict[int, np.ndarray]

    @property
    def times_s(self) -> np.ndarray:
        """Each bucket's middle, in seconds of the session clock."""
        n = next(iter(self.series.values())).size
        return (np.arange(n) + 0.5) * self.step_s

    @property
    def widths_s(self) -> np.ndarray:
        """Each bucket's width in seconds: ``step_s``, the last only as far as the run went
        (a count in it is a rate over that part)."""
        return bucket_widths(next(iter(self.series.values())).size, self.step_s,
                             self.duration_s)


def bucket_widths(columns: int, step_s: int, end_s: float) -> np.ndarray:
    """``columns`` buckets of ``step_s``, the last holding only the part of its width the run
    reached (at least 1 ms)."""
    widths = np.full(columns, float(step_s))
    if columns:
        widths[-1] = min(step_s, max(end_s - (columns - 1) * step_s, 1e-3))
    return widths


class SeriesBuilder:
    """Feed a record's events with :meth:`add` (``request_done`` as record lines or events);
    :meth:`result` gives the :class:`RecordSeries`."""

    def __init__(self) -> None:
        self._b = _Buckets()
        self._lines: list[dict[str, Any]] = []
        self._samples: dict[str, list[tuple[int, float]]] = {}
        self._error_classes: dict[str, str] = {}
        self._gpu_labels: dict[tuple, str] = {}
        self._limits: dict[str, dict[str, float | None]] = {}
        self._reason_names: set[tuple[str, str]] = set()
        self._ttft_phase: dict[int, np.ndarray] = {}
        self._itl_phase: dict[int, np.ndarray] = {}
        self._phases: list[Phase] = []
        self._marks: list[tuple[float, str]] = []
        self._warmup_phases: set[int] = set()
        self.header: SessionStart | None = None
        self.end: SessionEnd | None = None
        self._last_ns = 0

    # -- in ---------------------------------------------------------------------------
    def add(self, event: Any) -> None:
        if type(event) is dict:
            self._lines.append(event)
            if len(self._lines) >= _BATCH:
                self._flush_lines()
            return
        t_ns = getattr(event, "t_ns", 0)
        self._last_ns = max(self._last_ns, t_ns)
        second = t_ns // 10**9
        if isinstance(event, GpuSample):
            self._add_gpu(second, event)
        elif isinstance(event, HostSample):
            self._sample("host_cpu_percent", second, event.cpu_percent)
            self._sample("soaktop_cpu_percent", second, event.soaktop_cpu_percent)
            if event.memory_used_bytes is not None and event.memory_total_bytes:
                self._sample("host_memory_ratio", second,
                             event.memory_used_bytes / event.memory_total_bytes)
        elif isinstance(event, ClientSample):
            self._sample("in_flight", second, event.in_flight)
            self._sample("client_cpu_percent", second, event.cpu_percent)
            self._sample("loop_lag_p99_ms", second, _ms(event.loop_lag_p99_us))
            self._sample("read_lag_p99_ms", second, _ms(event.read_lag_p99_us))
            # an open loop's: how late its sends left after their planned times
            self._sample("send_lateness_p99_ms", second, _ms(event.send_lateness_p99_us))
            self._sample("client_bound", second, 1.0 if event.client_bound else 0.0)
        elif isinstance(event, Phase):
            self._phases.append(event)
            if event.warmup:
                self._warmup_phases.add(event.phase_id)
        elif isinstance(event, Mark):
            self._marks.append((t_ns / 1e9, event.note))
        elif isinstance(event, SessionStart):
            self.header = event
        elif isinstance(event, SessionEnd):
            self.end = event
        elif hasattr(event, "arrivals_us"):  # a RequestDone event: as its record line
            self.add(_line_of(event))

    def _sample(self, name: str, second: int, value: float | None) -> None:
        if value is None:
            return
        waiting = self._samples.setdefault(name, [])
        waiting.append((second, float(value)))
        if len(waiting) >= _BATCH:
            self._flush_samples(name)

    def _add_gpu(self, second: int, s: GpuSample) -> None:
        key = (s.host, s.gpu_index)
        label = self._gpu_labels.get(key)
        if label is None:
            label = f"GPU {s.gpu_index}" if s.host is None else f"{s.host} GPU {s.gpu_index}"
            self._gpu_labels[key] = label
        limits = self._limits.setdefault(label, {})
        for name, value in (("slowdown_temperature_c", s.slowdown_temperature_c),
                            ("sm_clock_max_mhz", s.sm_clock_max_mhz),
                            ("power_limit_w", s.power_limit_w),
                            ("memory_total_bytes", s.memory_total_bytes)):
            if value is not None:
                limits[name] = value
        prefix = f"gpu\x00{label}\x00"
        self._sample(prefix + "temperature_c", second, s.temperature_c)
        self._sample(prefix + "sm_clock_mhz", second, s.sm_clock_mhz)
        self._sample(prefix + "power_w", second, s.power_w)
        if s.memory_used_bytes is not None:
            self._sample(prefix + "memory_gib", second, s.memory_used_bytes / 2**30)
        if s.clock_event_reasons is not None:
            self._sample(prefix + "reasons#samples", second, 1.0)
            for reason in s.clock_event_reasons:
                self._reason_names.add((label, reason))
                self._sample(prefix + "reason\x00" + reason, second, 1.0)

    def _flush_samples(self, name: str) -> None:
        waiting = self._samples.get(name)
        if not waiting:
            return
        seconds, values = np.array(waiting).T
        self._samples[name] = []
        columns = self._b.column(seconds.astype(np.int64))
        self._b.add(name, columns, values)
        self._b.add(name + "#n", columns, None)
        self._b.maximum(name, columns, values)

    def _flush_lines(self) -> None:
        """A batch of request lines: tokens, TTFT, ITL and errors into their buckets."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        k = len(lines)
        deltas = [d.get("arrivals_dus") or () for d in lines]
        lens = np.fromiter(map(len, deltas), dtype=np.int64, count=k)
        sent = np.array([d["sent_ns"] for d in lines], dtype=np.int64)
        done = np.array([d["t_ns"] for d in lines], dtype=np.int64)
        self._last_ns = max(self._last_ns, int(done.max()))
        cums = np.cumsum(np.fromiter(chain.from_iterable(deltas), dtype=np.int64,
                                     count=int(lens.sum())))
        ends = np.cumsum(lens)
        starts = ends - lens
        before = np.concatenate([[0], cums])[starts]
        offsets_us = cums - np.repeat(before, lens)  # each token's offset from its send
        owner = np.repeat(np.arange(k), lens)
        at_ns = np.repeat(sent, lens) + offsets_us * 1000
        weights = np.ones(offsets_us.size)
        if any(d.get("arrival_tokens") for d in lines):  # arrivals of several tokens
            weights = np.array([float(n) for d, length in zip(lines, lens.tolist())
                                for n in (d.get("arrival_tokens") or (1,) * length)])
        b = self._b
        if offsets_us.size:
            token_columns = b.column(at_ns // 10**9)
            b.add("tokens", token_columns, weights)
        # which requests count for latency: succeeded (not failed, not cancelled)
        ok = np.array([d.get("error_class") is None and d["finish_reason"] != "cancelled"
                       for d in lines])
        phase = np.array([d["phase_id"] for d in lines], dtype=np.int64)
        measured = ok & ~np.array([bool(d.get("warmup")) for d in lines])
        has = lens > 0
        first = ok & has
        if first.any():
            ttft_ms = offsets_us[starts[first]] / 1000.0
            bins = bin_of(ttft_ms)
            columns = b.column((sent[first] + offsets_us[starts[first]] * 1000) // 10**9)
            b.add("ttft", columns, None, (BINS,), bins)
            self._by_phase(self._ttft_phase, phase[first], measured[first], bins)
        # ITL: a token's gap to the one before it in its request, over the tokens it brought
        later = np.ones(offsets_us.size, dtype=bool)
        later[starts[has]] = False
        later &= ok[owner]
        if later.any():
            # an arrival of n tokens is n gaps of its gap / n, as the summary counts them
            # (:func:`~soaktop.engine.metrics.stats.itl_gaps`): each bin gets n, not 1
            tokens = weights[later]
            gaps_ms = np.diff(offsets_us, prepend=0)[later] / 1000.0 / tokens
            bins = bin_of(gaps_ms)
            columns = b.column(at_ns[later] // 10**9)
            b.add("itl", columns, tokens, (BINS,), bins)
            self._by_phase(self._itl_phase, phase[owner[later]], measured[owner[later]], bins,
                           tokens)
        for i, d in enumerate(lines):
            error_class = d.get("error_class")
            if error_class is None:
                continue
            name = self._error_classes.get(error_class)
            if name is None:
                name = (str(error_class) if len(self._error_classes) < MAX_ERROR_CLASSES
                        else "other")
                self._error_classes[error_class] = name
            b.add("errors\x00" + name, b.column(done[i: i + 1] // 10**9), None)

    @staticmethod
    def _by_phase(table: dict[int, np.ndarray], phases: np.ndarray, measured: np.ndarray,
                  bins: np.ndarray, weights: np.ndarray | None = None) -> None:
        for phase_id in np.unique(phases[measured]).tolist():
            counts = table.setdefault(phase_id, np.zeros(BINS))
            chosen = measured & (phases == phase_id)
            counts += np.bincount(bins[chosen], minlength=BINS,
                                  weights=None if weights is None else weights[chosen])

    # -- out ----------------------------------------------------------------------------
    def result(self, path: Path, summary: SessionSummary,
               warnings: list[str]) -> RecordSeries:
        self._flush_lines()
        for name in list(self._samples):
            self._flush_samples(name)
        b = self._b
        end_ns = self.end.t_ns if self.end is not None else self._last_ns
        b.column(np.array([end_ns // 10**9]))  # the buckets reach the end of the run
        step = b.step_s
        ttft, itl = b.sum("ttft", (BINS,)), b.sum("itl", (BINS,))
        widths = bucket_widths(b.columns, step, end_ns / 1e9)
        series = {
            "tokens_per_s": b.sum("tokens") / widths,
            "ttft_p50_ms": quantile_of_counts(ttft, 0.50),
            "ttft_p95_ms": quantile_of_counts(ttft, 0.95),
            "ttft_p99_ms": quantile_of_counts(ttft, 0.99),
            "itl_p50_ms": quantile_of_counts(itl, 0.50),
            "itl_p95_ms": quantile_of_counts(itl, 0.95),
            "itl_p99_ms": quantile_of_counts(itl, 0.99),
        }
        for name in ("in_flight", "client_cpu_percent", "host_cpu_percent",
                     "soaktop_cpu_percent", "host_memory_ratio", "client_bound"):
            series[name] = b.mean(name)
        for name in ("loop_lag_p99_ms", "read_lag_p99_ms", "send_lateness_p99_ms"):
            series[name] = b.max(name)
        errors = {name: b.sum("errors\x00" + name) for name in
                  dict.fromkeys(self._error_classes.values())}
        gpus: dict[str, dict[str, np.ndarray]] = {}
        reasons: dict[str, dict[str, np.ndarray]] = {}
        for label in self._gpu_labels.values():
            prefix = f"gpu\x00{label}\x00"
            gpus[label] = {name: b.mean(prefix + name) for name in
                           ("temperature_c", "sm_clock_mhz", "power_w", "memory_gib")}
            samples = b.sum(prefix + "reasons#samples")
            with np.errstate(invalid="ignore", divide="ignore"):
                reasons[label] = {
                    reason: np.where(samples > 0, b.sum(prefix + "reason\x00" + reason)
                                     / np.maximum(samples, 1), np.nan)
                    for gpu, reason in sorted(self._reason_names) if gpu == label}
        duration_s = end_ns / 1e9
        return RecordSeries(
            path=Path(path), header=self.header, end=self.end, summary=summary,
            warnings=warnings, step_s=step, duration_s=duration_s, series=series,
            errors=errors, gpus=gpus, limits=self._limits, reasons=reasons,
            phases=_spans(self._phases, duration_s), marks=self._marks,
            ttft_by_phase=self._ttft_phase, itl_by_phase=self._itl_phase)


def _ms(value_us: float | None) -> float | None:
    return None if value_us is None else value_us / 1000.0


def _line_of(event: Any) -> dict[str, Any]:
    """A ``RequestDone`` event as the record line the builder reads."""
    arrivals = event.arrivals_us
    return {"t_ns": event.t_ns, "sent_ns": event.sent_ns, "phase_id": event.phase_id,
            "arrivals_dus": np.diff(arrivals, prepend=0).tolist() if arrivals else [],
            "arrival_tokens": list(event.arrival_tokens), "warmup": event.warmup,
            "finish_reason": event.finish_reason, "error_class": event.error_class}


def _spans(phases: list[Phase], end_s: float) -> list[PhaseSpan]:
    spans = []
    for i, p in enumerate(phases):
        stop = phases[i + 1].t_ns / 1e9 if i + 1 < len(phases) else end_s
        spans.append(PhaseSpan(p.phase_id, p.t_ns / 1e9, max(stop, p.t_ns / 1e9),
                               p.concurrency, p.warmup, str(p.model), str(p.reason), p.rate))
    return spans


def feed(events: Iterable[Any], builder: SeriesBuilder, summary: SessionSummary) -> None:
    for event in events:
        summary.add(event)
        builder.add(event)


def read_series(path: Path) -> RecordSeries:
    """Read the record at ``path`` once into its series and its summary."""
    reader = RecordReader(Path(path))
    builder, summary = SeriesBuilder(), SessionSummary()
    with collector_paused():  # millions of short-lived containers, no cycles: as `summary`
        feed(reader.events(raw_requests=True), builder, summary)
    return builder.result(path, summary, reader.warnings)
