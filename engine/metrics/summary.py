"""Whole-run and per-phase statistics, built one event at a time.

The live run feeds its events here as they happen; ``soaktop summary`` feeds the same events
read back from the record. One code path, so the two give the same numbers.

Memory grows per request (a handful of floats each), never per token: ITL goes into a
fixed-size :class:`~soaktop.engine.metrics.histogram.LogHistogram` per phase.

Attribution:
- Latencies (TTFT, ITL, TPOT, E2E, output speed) and request counts belong to the phase in
  which the request was *sent*. Warm-up requests are counted apart and in no distribution;
  requests cut off by the end of the run are counted as cancelled, not failed.
- Output tokens and tokens/s are a system view: every token that *arrived* inside a phase's
  time window counts for that phase, whichever request it belongs to. The whole-run figure
  covers the non-warm-up phases, so the tokens of a warm-up request that arrive after warm-up
  ended still count, and a run cut mid-request keeps the tokens it saw.
- Telemetry samples (GPU, host, serving engine) belong to the phase in whose time window they
  were taken; the whole-run figures cover the samples of the non-warm-up phases. What they
  mean is defined in :mod:`soaktop.engine.telemetry.derived`.

:meth:`SessionSummary.result` gives the whole run as a
:class:`~soaktop.engine.metrics.results.RunSummary`; :meth:`SessionSummary.phase` the figures
of one phase alone, which is what a plan judging a step while the run goes on needs (the
whole run, its drift analysis included, is not recomputed for it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soaktop.engine.errors import SoaktopError
from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Phase,
    RequestDone,
    ServerSample,
    SessionEnd,
    SessionStart,
    TelemetryStatus,
    TokensArrived,
)
from soaktop.engine.load.plans import parse_slo, ramp_table, slo_report
from soaktop.engine.metrics.drift import Drift
from soaktop.engine.metrics.histogram import LogHistogram
from soaktop.engine.metrics.results import (
    CUT_SHORT,
    PhaseSummary,
    RunSummary,
    SloReport,
    SourceStatus,
    SpeedDistribution,
)
from soaktop.engine.metrics.stats import (
    distribution,
    histogram_distribution,
    rate,
    request_metrics,
)
from soaktop.engine.telemetry.derived import (
    GpuWindow,
    HostWindow,
    ServerWindow,
    energy_figures,
    gpu_key,
)


class _Column:
    """A float64 array that grows by doubling: compact per-request storage."""

    __slots__ = ("_data", "_size")

    def __init__(self) -> None:
        self._data = np.empty(64, dtype=np.float64)
        self._size = 0

    def append(self, value: float | None) -> None:
        if self._size == self._data.size:
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self._size] = np.nan if value is None else value
        self._size += 1

    def values(self) -> np.ndarray:
        return self._data[: self._size]


_METRICS = ("ttft_us", "ttfo_us", "tpot_us", "e2e_us", "speed_tps", "server_speed_tps",
            "queued_us")


def _server_speed_tps(reported: dict | None) -> float | None:
    """The server's own output speed for one request (Ollama: eval_count / eval_duration)."""
    if not reported:
        return None
    count, duration_ns = reported.get("eval_count"), reported.get("eval_duration")
    if isinstance(count, int) and isinstance(duration_ns, (int, float)) and duration_ns > 0:
        return count / (duration_ns / 1e9)
    return None


class _Telemetry:
    """The derived telemetry of one window (a phase, or the measured run)."""

    __slots__ = ("gpus", "host", "servers")

    def __init__(self) -> None:
        self.gpus: dict[str, GpuWindow] = {}
        self.host = HostWindow()
        self.servers: dict[str, ServerWindow] = {}

    def add(self, sample: GpuSample | HostSample | ServerSample) -> None:
        if isinstance(sample, GpuSample):
            self.gpus.setdefault(gpu_key(sample.host, sample.gpu_index), GpuWindow()).add(sample)
        elif isinstance(sample, HostSample):
            self.host.add(sample)
        else:
            key = f"{sample.source} {sample.model}" if sample.model else sample.source
            self.servers.setdefault(key, ServerWindow()).add(sample)

    def figures(self, tokens: int, duration_s: float) -> dict[str, Any]:
        """The telemetry fields of :class:`~soaktop.engine.metrics.results.Figures`."""
        return {
            "gpus": {key: w.result() for key, w in sorted(self.gpus.items())},
            **energy_figures(self.gpus, tokens, duration_s),
            "host": self.host.result() if self.host.cpu.n else None,
            "servers": {key: w.result() for key, w in sorted(self.servers.items())},
        }


@dataclass
class _PhaseStats:
    phase: Phase
    columns: dict[str, _Column] = field(default_factory=lambda: {m: _Column() for m in _METRICS})
    itl: LogHistogram = field(default_factory=LogHistogram)
    chunk_gaps: LogHistogram = field(default_factory=LogHistogram)  # arrival to arrival
    attained: int = 0  # measured requests that produced the output length asked for
    reasoning_tokens: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    warmup: int = 0
    errors: Counter = field(default_factory=Counter)
    tokens_in_window: int = 0
    telemetry: _Telemetry = field(default_factory=_Telemetry)


class SessionSummary:
    """Feed events with :meth:`add`; read the numbers at any time: the whole run with
    :meth:`result`, one phase with :meth:`phase`, every phase with :meth:`phases`."""

    def __init__(self) -> None:
        self.header: SessionStart | None = None
        self.end: SessionEnd | None = None
        self._phases: dict[int, int] = {}  # phase_id -> its index in _order
        self._order: list[_PhaseStats] = []
        self._starts = np.empty(0, dtype=np.int64)
        self._last_t_ns = 0
        self._run_telemetry = _Telemetry()  # samples of the measured (non-warm-up) phases
        self._status: dict[tuple, TelemetryStatus] = {}
        self._drift = Drift()  # the soak verdict: the last minutes against the first
        self._client_bound_ns = 0  # measured time the client itself was the bottleneck
        self._measured_from_ns: int | None = None  # when the warm-up ended

    def add(self, event: Any) -> None:
        if type(event) is TokensArrived:
            # live only and most of the stream: a record has none, so ignoring them keeps
            # live and replayed summaries equal, and costs one check per token
            return
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > self._last_t_ns:
            self._last_t_ns = t_ns
        if isinstance(event, (RequestDone, GpuSample, Phase, SessionEnd)):
            self._drift.add(event)
        if isinstance(event, RequestDone):
            self._add_request(event)
        elif isinstance(event, Phase):
            stats = _PhaseStats(event)
            if not event.warmup and self._measured_from_ns is None:
                # the warm-up ended here; a run without one is measured from its start
                self._measured_from_ns = event.t_ns if self._order else 0
            self._phases[event.phase_id] = len(self._order)
            self._order.append(stats)
            self._starts = np.append(self._starts, event.t_ns)
        elif isinstance(event, (GpuSample, HostSample, ServerSample)):
            self._add_sample(event)
        elif isinstance(event, TelemetryStatus):
            self._status[(event.source, event.host, event.gpu_index)] = event
        elif isinstance(event, SessionStart):
            self.header = event
        elif isinstance(event, SessionEnd):
            self.end = event
        elif isinstance(event, ClientSample):
            # a second counts when all of it was measured: the one the warm-up ended in
            # holds the warm-up's start-of-run turbulence too
            start = self._measured_from_ns
            if event.client_bound and start is not None and event.t_ns - event.interval_ns >= start:
                self._client_bound_ns += event.interval_ns

    def _add_request(self, done: RequestDone) -> None:
        if done.arrivals_us and self._order:
            arrived_ns = done.sent_ns + np.asarray(done.arrivals_us, dtype=np.int64) * 1000
            slot = np.searchsorted(self._starts, arrived_ns, side="right") - 1
            weights = np.asarray(done.arrival_tokens) if done.arrival_tokens else None
            if done.reasoning_tokens:  # thinking is not output: it streams first, count past it
                w = weights if weights is not None else np.ones(len(done.arrivals_us))
                weights = np.clip(np.cumsum(w) - done.reasoning_tokens, 0, w)
            per_phase = np.bincount(np.maximum(slot, 0), weights=weights)
            for i in np.flatnonzero(per_phase):
                self._order[i].tokens_in_window += int(per_phase[i])
        index = self._phases.get(done.phase_id)
        if index is None:
            return  # a request from a phase this summary never saw (a cut record)
        stats = self._order[index]
        if done.warmup:
            stats.warmup += 1
        elif done.finish_reason == "cancelled":
            stats.cancelled += 1
        elif done.error_class is not None:
            stats.failed += 1
            stats.errors[done.error_class] += 1
        else:
            stats.ok += 1
            m = request_metrics(
                done.arrivals_us, done.end_us, done.arrival_tokens if done.arrival_tokens else None
            )
            stats.reasoning_tokens += done.reasoning_tokens
            ttfo = done.first_output_us if done.reasoning_tokens else m.ttft_us
            values = {"ttft_us": m.ttft_us, "ttfo_us": ttfo, "tpot_us": m.tpot_us,
                      "e2e_us": m.e2e_us,
                      "speed_tps": m.speed_tps,
                      "queued_us": done.queued_us if stats.phase.rate is not None else None,
                      "server_speed_tps": _server_speed_tps(done.server_reported)}
            for name, value in values.items():
                if value is not None:  # a metric a run does not have costs nothing
                    stats.columns[name].append(value)
            stats.itl.add(m.itl_us)
            if len(done.arrivals_us) > 1:
                stats.chunk_gaps.add(np.diff(np.asarray(done.arrivals_us, dtype=np.float64)))
            if self.header is None or m.output_tokens >= self.header.config.get(
                    "output_tokens", 0):
                stats.attained += 1

    def _add_sample(self, sample: GpuSample | HostSample | ServerSample) -> None:
        slot = int(np.searchsorted(self._starts, sample.t_ns, side="right")) - 1
        if slot < 0:
            return  # taken before the first phase began
        stats = self._order[slot]
        stats.telemetry.add(sample)
        if not stats.phase.warmup:
            self._run_telemetry.add(sample)

    def request_values(self, metric: str) -> np.ndarray:
        """Per-request values of ``metric`` (``ttft_us``, ``tpot_us``, ``e2e_us``,
        ``speed_tps``) over the measured phases, NaNs removed: what ``compare`` tests."""
        arrays = [s.columns[metric].values() for s in self._order if not s.phase.warmup]
        values = np.concatenate(arrays) if arrays else np.empty(0)
        return values[~np.isnan(values)]

    def telemetry_status(self) -> tuple[SourceStatus, ...]:
        """The last word on each source (and GPU): available or not, and what is missing."""
        return tuple(
            SourceStatus(source=status.source, available=status.available,
                         gpu_index=status.gpu_index, host=status.host, reason=status.reason,
                         unavailable_fields=dict(status.unavailable_fields))
            for status in self._status.values())

    def _window_ns(self, index: int) -> int:
        start = self._order[index].phase.t_ns
        if index + 1 < len(self._order):
            return self._order[index + 1].phase.t_ns - start
        end = self.end.t_ns if self.end is not None else self._last_t_ns
        return max(end - start, 0)

    def _phase_summary(self, index: int) -> PhaseSummary:
        stats, window_ns = self._order[index], self._window_ns(index)
        phase = stats.phase
        return PhaseSummary(
            phase_id=phase.phase_id, concurrency=phase.concurrency, model=phase.model,
            backend=phase.backend, reason=phase.reason, warmup=phase.warmup,
            start_s=phase.t_ns / 1e9, **_figures([(stats, window_ns)]),
            **stats.telemetry.figures(stats.tokens_in_window, window_ns / 1e9),
        )

    def phase(self, phase_id: int) -> PhaseSummary | None:
        """The figures of one phase so far (``None`` for a phase not seen): the work of that
        phase alone, for a plan that judges it while the run goes on."""
        index = self._phases.get(phase_id)
        return None if index is None else self._phase_summary(index)

    def phases(self) -> list[PhaseSummary]:
        """Every phase so far, in order, without the whole-run figures."""
        return [self._phase_summary(i) for i in range(len(self._order))]

    def result(self) -> RunSummary:
        """The whole run and each phase so far (README: "What each number means")."""
        phases = self.phases()
        measured = [(stats, self._window_ns(i)) for i, stats in enumerate(self._order)
                    if not stats.phase.warmup]
        figures = _figures(measured)
        ended_ns = self.end.t_ns if self.end is not None else self._last_t_ns
        return RunSummary(
            **figures,
            **self._run_telemetry.figures(figures["output_tokens"], figures["duration_s"]),
            telemetry=self.telemetry_status(),
            requests_warmup=sum(s.warmup for s in self._order),
            ended=self.end.reason if self.end is not None else CUT_SHORT,
            ended_at_s=ended_ns / 1e9,
            phases=tuple(phases),
            **self._plans(phases),
            soak=self._drift.result(),
            client_bound_s=self._client_bound_ns / 1e9,
        )

    def _plans(self, phases: list[PhaseSummary]) -> dict[str, Any]:
        """What a ramp or an SLO search concluded, from the phases (see
        soaktop.engine.load.plans)."""
        config = self.header.config if self.header is not None else {}
        out: dict[str, Any] = {}
        if config.get("ramp"):
            out["ramp"] = ramp_table(phases)
        if config.get("slo"):
            try:
                out["slo"] = slo_report(parse_slo(str(config["slo"])), phases)
            except SoaktopError as exc:  # a record with an SLO this soaktop cannot read
                out["slo"] = SloReport(slo=str(config["slo"]), error=str(exc))
        return out


def summarise(events: Iterable[Any]) -> SessionSummary:
    """The summary of a whole stream of events (a record read back, a run's collected events)."""
    summary = SessionSummary()
    for event in events:
        summary.add(event)
    return summary


def _figures(parts: list[tuple[_PhaseStats, int]]) -> dict[str, Any]:
    """The numbers of one phase, or of several phases taken together: the request and latency
    fields of :class:`~soaktop.engine.metrics.results.Figures`."""
    ok = sum(s.ok for s, _ in parts)
    failed = sum(s.failed for s, _ in parts)
    tokens = sum(s.tokens_in_window for s, _ in parts)
    duration_s = sum(w for _, w in parts) / 1e9
    errors: Counter = Counter()
    itl, chunk_gaps = LogHistogram(), LogHistogram()
    for s, _ in parts:
        errors.update(s.errors)
        itl.merge(s.itl)
        chunk_gaps.merge(s.chunk_gaps)

    def column(name: str) -> np.ndarray:
        arrays = [s.columns[name].values() for s, _ in parts]
        return np.concatenate(arrays) if arrays else np.empty(0)

    return {
        "requests_ok": ok,
        "requests_failed": failed,
        "requests_cancelled": sum(s.cancelled for s, _ in parts),
        "errors": dict(sorted(errors.items())),
        "error_rate": failed / (ok + failed) if ok + failed else 0.0,
        "output_tokens": tokens,
        "duration_s": duration_s,
        "output_tokens_per_s": rate(tokens, duration_s),
        "requests_per_s": rate(ok, duration_s),
        # the share of successful requests that produced the output length asked for: a
        # server stopping early (EOS) makes every per-token figure look different
        "output_length_attained": sum(s.attained for s, _ in parts) / ok if ok else None,
        "ttft_ms": distribution(column("ttft_us"), 1e-3),
        # time to first *output* token: the answer, after any reasoning (= TTFT without it)
        "ttfo_ms": distribution(column("ttfo_us"), 1e-3),
        "reasoning_tokens": sum(s.reasoning_tokens for s, _ in parts),
        "itl_ms": histogram_distribution(itl, 1e-3),
        # gaps between arrivals, however many tokens each carried (what a chunked stream's
        # reader waits); equal to itl_ms when every arrival is one token
        "inter_chunk_ms": histogram_distribution(chunk_gaps, 1e-3),
        "tpot_ms": distribution(column("tpot_us"), 1e-3),
        "e2e_ms": distribution(column("e2e_us"), 1e-3),
        "output_speed_tps": distribution(column("speed_tps"), kind=SpeedDistribution),
        # the server's own view, where it reports one (Ollama), beside the client's above
        "server_speed_tps": distribution(column("server_speed_tps")),
        # open loop: planned time -> sent (already inside every latency above), apart
        "queue_ms": distribution(column("queued_us"), 1e-3),
    }
