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

from bisect import bisect_right
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
    itl_gaps,
    rate,
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


#: The arrival offsets, and the requests, gathered before their tokens are counted together
#: (see SessionSummary._add_request): fixed buffers, so memory holds the same however long
#: the requests are.
BUFFER_TOKENS = 1 << 14
BUFFER_REQUESTS = 4096

_METRICS = ("ttft_us", "tpot_us", "e2e_us", "speed_tps", "server_speed_tps",
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
    #: TTFO is kept as its differences from the TTFT column (8 bytes a request less): for
    #: each request that reasoned, (its index in the TTFT column, its TTFO or None, whether
    #: it replaces that TTFT or comes before it)
    ttfo_edits: list = field(default_factory=list)
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

    #: A record holds no TokensArrived, so the summary counts none (tokens come from each
    #: request_done): a replay need not hand it the millions it re-derives.
    ignores_tokens = True

    def __init__(self) -> None:
        self.header: SessionStart | None = None
        self.end: SessionEnd | None = None
        self._phases: dict[int, int] = {}  # phase_id -> its index in _order
        self._order: list[_PhaseStats] = []
        self._starts = np.empty(0, dtype=np.int64)  # each phase's start, for numpy ...
        self._start_list: list[int] = []  # ... and for one sample at a time (bisect)
        self._last_t_ns = 0
        self._run_telemetry = _Telemetry()  # samples of the measured (non-warm-up) phases
        self._status: dict[tuple, TelemetryStatus] = {}
        self._drift = Drift()  # the soak verdict: the last minutes against the first
        self._client_bound_ns = 0  # measured time the client itself was the bottleneck
        self._measured_from_ns: int | None = None  # when the warm-up ended
        # one-token-an-arrival requests whose tokens are not counted yet (see _add_request)
        self._offsets = np.empty(BUFFER_TOKENS, dtype=np.int64)  # their offsets end to end
        self._lens = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # how many each has
        self._sent = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # when each was sent
        self._feeds = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # the phase whose ITL: -1 none
        self._n_offsets = 0
        self._n_requests = 0

    def add(self, event: Any) -> None:
        if type(event) is TokensArrived:
            # live only and most of the stream: a record has none, so ignoring them keeps
            # live and replayed summaries equal, and costs one check per token
            return
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > self._last_t_ns:
            self._last_t_ns = t_ns
        if type(event) is RequestDone:  # most of a record: the shortest way through
            self._drift.add(event)
            self._add_request(event)
            return
        if isinstance(event, (RequestDone, GpuSample, Phase, SessionEnd)):
            self._drift.add(event)
        if isinstance(event, RequestDone):
            self._add_request(event)
        elif isinstance(event, Phase):
            self._flush()  # the requests before it are counted with the phases they saw
            stats = _PhaseStats(event)
            if not event.warmup and self._measured_from_ns is None:
                # the warm-up ended here; a run without one is measured from its start
                self._measured_from_ns = event.t_ns if self._order else 0
            self._phases[event.phase_id] = len(self._order)
            self._order.append(stats)
            self._starts = np.append(self._starts, event.t_ns)
            self._start_list.append(event.t_ns)
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
        """Count one request: its figures now, its tokens now or in the next batch.

        Why batches: a long soak has hundreds of thousands of short requests, and numpy calls
        on one request's few dozen offsets cost ~100 µs a request, far more than the
        arithmetic. So the per-request figures are plain Python, here, in the order requests
        come; and the per-token work (ITL and inter-chunk histograms, tokens per phase
        window) of a request whose arrivals carry one token each waits in fixed buffers and
        is done for many at once (:meth:`_flush`). Every result is the same whenever the
        buffers are flushed (a live run reads its summary at other moments than ``soaktop
        summary`` does): histogram and token counts are integers, and histogram sums are
        exact (see :meth:`LogHistogram.add`). A request whose arrivals carry several tokens,
        or reasoning tokens, is counted whole here (both are rare).
        """
        order = self._order
        arrivals = done.arrivals_us
        bulk = not done.arrival_tokens and not done.reasoning_tokens
        if arrivals and order and not bulk:
            self._add_tokens(done)
        index = self._phases.get(done.phase_id)
        feed = -1
        if index is None:
            pass  # a request from a phase this summary never saw (a cut record)
        elif done.warmup:
            order[index].warmup += 1
        elif done.finish_reason == "cancelled":
            order[index].cancelled += 1
        elif done.error_class is not None:
            stats = order[index]
            stats.failed += 1
            stats.errors[done.error_class] += 1
        else:
            stats = order[index]
            target = None if self.header is None else self.header.config.get("output_tokens", 0)
            self._add_ok(stats, done, target)
            if bulk:
                feed = index
            elif len(arrivals) > 1:
                tokens = done.arrival_tokens if done.arrival_tokens else None
                span = arrivals[-1] - arrivals[0]  # what the gaps add up to, exactly
                stats.itl.add(itl_gaps(arrivals, tokens), total=span)
                stats.chunk_gaps.add(np.diff(np.asarray(arrivals, dtype=np.int64)), total=span)
        if not (bulk and arrivals and order):
            return
        n = len(arrivals)
        if self._n_offsets + n > BUFFER_TOKENS or self._n_requests == BUFFER_REQUESTS:
            self._flush()
        if n > BUFFER_TOKENS:  # longer than the buffer: on its own
            self._add_bulk(np.asarray(arrivals, dtype=np.int64), np.array([n]),
                           np.array([done.sent_ns]), np.array([feed]))
            return
        at, i = self._n_offsets, self._n_requests
        self._offsets[at : at + n] = arrivals
        self._lens[i], self._sent[i], self._feeds[i] = n, done.sent_ns, feed
        self._n_offsets, self._n_requests = at + n, i + 1

    def _flush(self) -> None:
        """Count the tokens of the requests waiting in the buffers."""
        if self._n_requests:
            n, offsets = self._n_requests, self._n_offsets
            self._n_requests = self._n_offsets = 0
            self._add_bulk(self._offsets[:offsets], self._lens[:n], self._sent[:n],
                           self._feeds[:n])

    def _add_ok(self, stats: _PhaseStats, done: RequestDone, target: int | None) -> None:
        """One successful measured request's figures (the definitions of
        :func:`~soaktop.engine.metrics.stats.request_metrics`, in plain Python)."""
        stats.ok += 1
        arrivals = done.arrivals_us
        n = sum(done.arrival_tokens) if done.arrival_tokens else len(arrivals)
        columns = stats.columns
        ttft = None
        if arrivals:
            ttft = float(arrivals[0])
            columns["ttft_us"].append(ttft)
            if n >= 2:
                span = arrivals[-1] - arrivals[0]
                columns["tpot_us"].append(span / (n - 1))
                if span > 0:
                    columns["speed_tps"].append((n - 1) / (span / 1e6))
        stats.reasoning_tokens += done.reasoning_tokens
        if done.reasoning_tokens:  # TTFO is TTFT but where a model reasoned (see _ttfo)
            ttft_index = columns["ttft_us"]._size
            if ttft is not None:
                stats.ttfo_edits.append((ttft_index - 1, done.first_output_us, True))
            elif done.first_output_us is not None:
                stats.ttfo_edits.append((ttft_index, done.first_output_us, False))
        columns["e2e_us"].append(float(done.end_us))
        if stats.phase.rate is not None:
            columns["queued_us"].append(done.queued_us)
        if done.server_reported:
            server_speed = _server_speed_tps(done.server_reported)
            if server_speed is not None:
                columns["server_speed_tps"].append(server_speed)
        if target is None or n >= target:
            stats.attained += 1

    def _add_bulk(self, offsets: np.ndarray, lens: np.ndarray, sent: np.ndarray,
                  feeds: np.ndarray) -> None:
        """Tokens per phase window, and the ITL and inter-chunk gaps, of many requests whose
        arrivals carry one token each: ``offsets`` are their arrival offsets end to end."""
        owner = np.repeat(np.arange(lens.size), lens)
        arrived_ns = offsets * 1000 + sent[owner]
        slot = np.searchsorted(self._starts, arrived_ns, side="right") - 1
        per_phase = np.bincount(np.maximum(slot, 0), minlength=len(self._order))
        for i in np.flatnonzero(per_phase):
            self._order[i].tokens_in_window += int(per_phase[i])
        gaps = np.diff(offsets)
        feed = feeds[owner[1:]]
        keep = (owner[1:] == owner[:-1]) & (feed >= 0)  # within one measured ok request
        gaps, feed = gaps[keep], feed[keep]
        indices = np.unique(feed).tolist()
        for index in indices:
            mine = gaps[feed == index] if len(indices) > 1 else gaps
            gathered = LogHistogram()  # one token an arrival: its ITL is its chunk gaps
            gathered.add(mine, total=int(mine.sum()))  # integers: exact in any order
            stats = self._order[index]
            stats.itl.merge(gathered)
            stats.chunk_gaps.merge(gathered)

    def _add_tokens(self, done: RequestDone) -> None:
        """The tokens of one request whose arrivals carry several tokens, or reasoning, to the
        phase windows they arrived in."""
        arrived_ns = done.sent_ns + np.asarray(done.arrivals_us, dtype=np.int64) * 1000
        slot = np.searchsorted(self._starts, arrived_ns, side="right") - 1
        weights = np.asarray(done.arrival_tokens) if done.arrival_tokens else None
        if done.reasoning_tokens:  # thinking is not output: it streams first, count past it
            w = weights if weights is not None else np.ones(len(done.arrivals_us))
            weights = np.clip(np.cumsum(w) - done.reasoning_tokens, 0, w)
        per_phase = np.bincount(np.maximum(slot, 0), weights=weights)
        for i in np.flatnonzero(per_phase):
            self._order[i].tokens_in_window += int(per_phase[i])

    def _add_sample(self, sample: GpuSample | HostSample | ServerSample) -> None:
        slot = bisect_right(self._start_list, sample.t_ns) - 1
        if slot < 0:
            return  # taken before the first phase began
        stats = self._order[slot]
        stats.telemetry.add(sample)
        if not stats.phase.warmup:
            self._run_telemetry.add(sample)

    def request_values(self, metric: str) -> np.ndarray:
        """Per-request values of ``metric`` (``ttft_us``, ``tpot_us``, ``e2e_us``,
        ``speed_tps``) over the measured phases, NaNs removed: what ``compare`` tests."""
        self._flush()
        arrays = [_ttfo(s) if metric == "ttfo_us" else s.columns[metric].values()
                  for s in self._order if not s.phase.warmup]
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
        self._flush()
        index = self._phases.get(phase_id)
        return None if index is None else self._phase_summary(index)

    def phases(self) -> list[PhaseSummary]:
        """Every phase so far, in order, without the whole-run figures."""
        self._flush()
        return [self._phase_summary(i) for i in range(len(self._order))]

    def result(self) -> RunSummary:
        """The whole run and each phase so far (README: "What each number means")."""
        self._flush()
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


def _ttfo(stats: _PhaseStats) -> np.ndarray:
    """A phase's TTFO column: its TTFT column with the edits of the requests that reasoned."""
    ttft = stats.columns["ttft_us"].values()
    if not stats.ttfo_edits:
        return ttft
    parts, start = [], 0
    for index, value, replaces in stats.ttfo_edits:
        parts.append(ttft[start:index])
        if value is not None:
            parts.append(np.array([value], dtype=np.float64))
        start = index + 1 if replaces else index
    parts.append(ttft[start:])
    return np.concatenate(parts)


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
        arrays = [_ttfo(s) if name == "ttfo_us" else s.columns[name].values() for s, _ in parts]
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
