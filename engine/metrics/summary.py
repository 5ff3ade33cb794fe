"""Whole-run and per-phase statistics, built one event at a time.

The live run feeds its events here as they happen; ``soaktop summary`` feeds the same events
read back from the record. One code path, so the two give the same numbers.

Memory grows per request (a handful of floats each), never per token: ITL goes into a
fixed-size :class:`~soaktop.engine.metrics.histogram.LogHistogram` per phase.

A record read back may hand its ``request_done`` lines over as the dicts they were read as
(``RecordReader.events(raw_requests=True)``): :meth:`SessionSummary.add` takes both forms and
counts a line exactly as its event, a batch of lines at a time with whole-array numpy, so a
30-minute soak's 200,000 requests are never made into events (the tests compare the two forms
bit for bit).

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

import copy
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from soaktop.engine.errors import SoaktopError
from soaktop.engine.events import (
    ClientSample,
    GpuSample,
    HostSample,
    Mark,
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
    InputLengths,
    InputTokens,
    OutputLengths,
    PhaseSummary,
    RunSummary,
    SloReport,
    SourceStatus,
    SpeedDistribution,
    TurnSplit,
)
from soaktop.engine.metrics.stats import (
    distribution,
    histogram_distribution,
    itl_gaps,
    rate,
)
from soaktop.engine.records.format import decode
from soaktop.engine.telemetry.derived import (
    GpuWindow,
    HostWindow,
    ServerWindow,
    energy_figures,
    gpu_key,
)


class _Column:
    """Per-request values as C doubles, 8 bytes each (NaN for None): compact storage;
    ``single``: as C floats, 4 bytes, for token counts (whole numbers below 2**24, which a
    float holds exactly).

    An ``array.array``, not a numpy array: appending a float to it costs a fifth of storing
    one into a numpy element, and a long soak appends a million (four columns a request).
    """

    __slots__ = ("_data", "_dtype")

    def __init__(self, single: bool = False) -> None:
        self._data = array("f" if single else "d")
        self._dtype = np.float32 if single else np.float64

    def __len__(self) -> int:
        return len(self._data)

    def append(self, value: float | None) -> None:
        self._data.append(_NAN if value is None else value)

    def extend(self, values: np.ndarray) -> None:
        """Append an array's values."""
        self._data.frombytes(np.ascontiguousarray(values, dtype=self._dtype).tobytes())

    def values(self) -> np.ndarray:
        """The values so far, as a float64 array of their own (a copy: the column goes on
        growing, and an array.array cannot grow while numpy views its memory)."""
        return np.array(self._data, dtype=np.float64)


_NAN = float("nan")

MAX_MARKS = 100  # marks a summary lists (a user may drop thousands): the first ones

#: The arrival offsets, and the requests, gathered before their tokens are counted together
#: (see SessionSummary._add_request): fixed buffers, so memory holds the same however long
#: the requests are.
BUFFER_TOKENS = 1 << 14
BUFFER_REQUESTS = 4096
#: Events whose counting neither depends on requests counted before them nor changes how
#: later ones are counted: record lines waiting to be counted may stay waiting past them
#: (telemetry comes every few milliseconds in a record with many GPUs).
_BESIDE_REQUESTS = frozenset({GpuSample, HostSample, ServerSample, ClientSample,
                              TelemetryStatus, SessionEnd})
#: Record lines gathered before they are counted together (see SessionSummary._add_line):
#: a few MB of dicts at most.
BATCH_LINES = 4096

#: Each successful request's lengths in tokens (a column each, as the latencies): the prompt
#: by soaktop's count and the server's, the output received and the server's count of it.
_LENGTHS = ("input_asked", "input_server", "output_received", "output_server")
_METRICS = ("ttft_us", "tpot_us", "e2e_us", "speed_tps", "server_speed_tps",
            "queued_us", *_LENGTHS)


def server_output_tokens(reported: dict | None) -> int | None:
    """The server's own count of one request's output tokens (OpenAI
    ``usage.completion_tokens``, Ollama's ``eval_count``); ``None`` where it gave none."""
    if not reported:
        return None
    count = reported.get("completion_tokens")
    if count is None:
        count = reported.get("eval_count")
    return count if type(count) is int else None


def _server_speed_tps(reported: dict | None) -> float | None:
    """The server's own output speed for one request (Ollama: eval_count / eval_duration)."""
    if not reported:
        return None
    count, duration_ns = reported.get("eval_count"), reported.get("eval_duration")
    if isinstance(count, int) and isinstance(duration_ns, (int, float)) and duration_ns > 0:
        return count / (duration_ns / 1e9)
    return None


def server_input_tokens(reported: dict | None) -> tuple[int | None, int | None]:
    """The server's own count of one request's prompt tokens (OpenAI ``usage.prompt_tokens``,
    Ollama's ``prompt_eval_count``) and, of those, the prefix-cache hits it reports
    (``usage.prompt_tokens_details.cached_tokens``: vLLM and SGLang); ``None`` for what it
    does not say (the record's ``server_reported`` keeps them as the server sent them)."""
    if not reported:
        return None, None
    prompt = reported.get("prompt_tokens")
    if prompt is None:
        prompt = reported.get("prompt_eval_count")
    if type(prompt) is not int:
        return None, None
    details = reported.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return prompt, cached if type(cached) is int else None


class _Telemetry:
    """The derived telemetry of one window (a phase, or the measured run)."""

    __slots__ = ("gpus", "host", "servers")

    def __init__(self) -> None:
        self.gpus: dict[str, GpuWindow] = {}
        self.host = HostWindow()
        self.servers: dict[str, ServerWindow] = {}

    def add(self, sample: GpuSample | HostSample | ServerSample) -> None:
        # get, then make only when missing: setdefault(key, GpuWindow()) made (and threw away)
        # a window of a dozen running figures for every sample
        if isinstance(sample, GpuSample):
            key = gpu_key(sample.host, sample.gpu_index)
            window = self.gpus.get(key)
            if window is None:
                window = self.gpus[key] = GpuWindow()
            window.add(sample)
        elif isinstance(sample, HostSample):
            self.host.add(sample)
        else:
            key = f"{sample.source} {sample.model}" if sample.model else sample.source
            server = self.servers.get(key)
            if server is None:
                server = self.servers[key] = ServerWindow()
            server.add(sample)

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
    # token counts in 4 bytes a request, latencies in 8
    columns: dict[str, _Column] = field(default_factory=lambda: {
        m: _Column(single=m in _LENGTHS) for m in _METRICS})
    #: TTFO is kept as its differences from the TTFT column (8 bytes a request less): for
    #: each request that reasoned, (its index in the TTFT column, its TTFO or None, whether
    #: it replaces that TTFT or comes before it)
    ttfo_edits: list = field(default_factory=list)
    itl: LogHistogram = field(default_factory=LogHistogram)
    chunk_gaps: LogHistogram = field(default_factory=LogHistogram)  # arrival to arrival
    attained: int = 0  # measured requests that produced the output length asked for
    # input tokens of the successful measured requests: soaktop's count (every one), the
    # server's (those it reported for), and the prefix-cache hits among the server's count
    # (those it reported hits for: cached of cached_of)
    asked_tokens: int = 0
    server_tokens: int = 0
    server_reports: int = 0
    cached_tokens: int = 0
    cached_of: int = 0
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
    #: :meth:`add` takes a ``request_done`` as its record line too (see :meth:`_add_line`)
    takes_record_lines = True

    def __init__(self) -> None:
        self.header: SessionStart | None = None
        self.end: SessionEnd | None = None
        self._marks: list[tuple[float, str]] = []  # (s, note), the first MAX_MARKS
        self._phases: dict[int, int] = {}  # phase_id -> its index in _order
        self._order: list[_PhaseStats] = []
        self._starts = np.empty(0, dtype=np.int64)  # each phase's start, for numpy ...
        self._start_list: list[int] = []  # ... and for one sample at a time (bisect)
        self._last_t_ns = 0
        # the samples of the measured (non-warm-up) phases: while they are all one phase's,
        # that phase's window stands for them (see _add_sample)
        self._run_telemetry: _Telemetry | None = None
        self._run_alias: _PhaseStats | None = None
        self._status: dict[tuple, TelemetryStatus] = {}
        self._target: int | None = None  # output tokens asked for (header); None: no header
        self._drift = Drift()  # the soak verdict: the last minutes against the first
        self._client_bound_ns = 0  # measured time the client itself was the bottleneck
        self._client_bound_by: Counter[str] = Counter()  # that time by reason (overlapping)
        self._measured_from_ns: int | None = None  # when the warm-up ended
        # one-token-an-arrival requests whose tokens are not counted yet (see _add_request)
        self._offsets = np.empty(BUFFER_TOKENS, dtype=np.int64)  # their offsets end to end
        self._lens = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # how many each has
        self._sent = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # when each was sent
        self._feeds = np.empty(BUFFER_REQUESTS, dtype=np.int64)  # the phase whose ITL: -1 none
        self._n_offsets = 0
        self._n_requests = 0
        self._lines: list[dict[str, Any]] = []  # record lines not counted yet (_add_line)
        #: Conversations (--turns): the TTFT (µs) of successful measured first turns, and of
        #: later ones; None until a request of a conversation comes
        self._turn_ttft: tuple[_Column, _Column] | None = None

    def add(self, event: Any) -> None:
        if type(event) is dict:  # a request_done's record line (see _add_line)
            self._add_line(event)
            return
        if type(event) is TokensArrived:
            # live only and most of the stream: a record has none, so ignoring them keeps
            # live and replayed summaries equal, and costs one check per token
            return
        if self._lines and type(event) not in _BESIDE_REQUESTS:
            self._flush_lines()  # record lines before this event are counted before it
        t_ns = getattr(event, "t_ns", 0)
        if t_ns > self._last_t_ns:
            self._last_t_ns = t_ns
        if type(event) is RequestDone:  # most of a record: the shortest way through
            self._drift.add(event)
            self._add_request(event)
            if event.conversation is not None and event.ok and not event.warmup:
                self._add_turn(event.turn, event.arrivals_us[0] if event.arrivals_us else None)
            return
        if isinstance(event, (RequestDone, GpuSample, Phase, SessionEnd, SessionStart)):
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
            target = event.config.get("output_tokens", 0)
            # a distribution (text): its shortest length (a normal's: 1), since the record
            # does not hold each request's asked length; nor does it hold a trace line's
            # output_length or a prompt file entry's output_tokens, which override the
            # config's per request: then any output counts as attained (the shortest, 1)
            per_request = bool(event.workload.get("trace_file") or event.config.get("prompts"))
            self._target = 1 if per_request else (
                target if isinstance(target, int) else _shortest(target))
        elif isinstance(event, SessionEnd):
            self.end = event
        elif isinstance(event, Mark) and len(self._marks) < MAX_MARKS:
            self._marks.append((event.t_ns / 1e9, event.note))
        elif isinstance(event, ClientSample):
            # a second counts when all of it was measured: the one the warm-up ended in
            # holds the warm-up's start-of-run turbulence too
            start = self._measured_from_ns
            reasons = event.client_bound_reasons
            if reasons and start is not None and event.t_ns - event.interval_ns >= start:
                self._client_bound_ns += event.interval_ns
                for reason in reasons:
                    self._client_bound_by[reason] += event.interval_ns

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
        if not done.arrival_tokens and not done.reasoning_tokens:
            self._add_plain(done.phase_id, done.warmup, done.finish_reason, done.error_class,
                            done.arrivals_us, done.sent_ns, done.end_us, done.queued_us,
                            done.server_reported, done.prompt_tokens)
            return
        order = self._order
        arrivals = done.arrivals_us
        if arrivals and order:
            self._add_tokens(done)
        index = self._phases.get(done.phase_id)  # None: a phase never seen (a cut record)
        if index is not None and _count_outcome(order[index], done.warmup, done.finish_reason,
                                                done.error_class):
            stats = order[index]
            tokens = done.arrival_tokens if done.arrival_tokens else None
            n = sum(tokens) if tokens else len(arrivals)
            self._add_ok(stats, arrivals, n, done.end_us, done.queued_us, done.server_reported,
                         done.reasoning_tokens, done.first_output_us, done.prompt_tokens)
            if len(arrivals) > 1:
                span = arrivals[-1] - arrivals[0]  # what the gaps add up to, exactly
                stats.itl.add(itl_gaps(arrivals, tokens), total=span)
                stats.chunk_gaps.add(np.diff(np.asarray(arrivals, dtype=np.int64)), total=span)

    def _add_turn(self, turn: int, ttft_us: int | None) -> None:
        """A successful measured conversation turn's TTFT, first turns apart from later."""
        if self._turn_ttft is None:
            self._turn_ttft = (_Column(), _Column())
        if ttft_us is not None:
            self._turn_ttft[1 if turn else 0].append(float(ttft_us))

    def _turn_split(self) -> TurnSplit | None:
        if self._turn_ttft is None:
            return None
        first, later = (c.values() for c in self._turn_ttft)
        return TurnSplit(distribution(first, 1e-3), distribution(later, 1e-3),
                         len(first), len(later))

    def _add_line(self, data: dict[str, Any]) -> None:
        """One ``request_done`` as its record line (see :meth:`RecordReader.events
        <soaktop.engine.records.format.RecordReader.events>`): the same counts as :meth:`add`
        of its event, without making the event (a 19-field frozen dataclass costs several
        microseconds: a second of a 30-minute soak). Lines wait in a list of at most
        :data:`BATCH_LINES` and are counted together (:meth:`_flush_lines`) before any other
        event or reading. A request whose arrivals carry several tokens, or reasoning, is rare:
        it is made into its event and counted as one, in its place."""
        if data.get("arrival_tokens") or data.get("reasoning_tokens"):
            if self._lines:
                self._flush_lines()
            self.add(decode(data))
            return
        if (data.get("conversation") is not None and not data.get("warmup")
                and data.get("error_class") is None and data["finish_reason"] != "cancelled"):
            deltas = data["arrivals_dus"]
            self._add_turn(data.get("turn", 0), deltas[0] if deltas else None)
        self._lines.append(data)
        if len(self._lines) == BATCH_LINES:
            self._flush_lines()

    def _flush_lines(self) -> None:
        """Count the waiting record lines: what :meth:`_add_plain` does for each, with whole-
        array numpy calls where it does a request at a time (per request, the Python left
        is reading its fields from the dict). The values are the same, bit for bit: integer
        offsets are summed exactly, and each float is made by the same operations on the
        same doubles; columns take them in the order the requests came."""
        lines, self._lines = self._lines, []
        k = len(lines)
        t_max = max([d["t_ns"] for d in lines])
        if t_max > self._last_t_ns:
            self._last_t_ns = t_max
        deltas = [d["arrivals_dus"] or () for d in lines]
        lens = np.fromiter(map(len, deltas), dtype=np.int64, count=k)
        sent = np.array([d["sent_ns"] for d in lines], dtype=np.int64)
        # each request's arrival offsets from its send: its deltas summed within it
        cums = np.cumsum(np.array(list(chain.from_iterable(deltas)), dtype=np.int64))
        ends = np.cumsum(lens)
        starts = ends - lens
        before = np.concatenate([[0], cums])[starts]  # the sum of the requests before
        offsets = cums - np.repeat(before, lens)
        has = lens > 0
        first = np.zeros(k, dtype=np.int64)
        last = np.zeros(k, dtype=np.int64)
        first[has] = offsets[starts[has]]
        last[has] = offsets[ends[has] - 1]
        # what each is: counted now, as _add_plain counts it; the successful measured ones
        # have their figures below, whole-array
        order, phases = self._order, self._phases
        feed_list, ok_list, warmup_list = [], [], []
        for d in lines:
            is_warmup = d.get("warmup", False)
            finish_reason, error_class = d["finish_reason"], d.get("error_class")
            warmup_list.append(True if is_warmup else False)
            ok_list.append(error_class is None and finish_reason != "cancelled")
            index = phases.get(d["phase_id"])  # None: a phase never seen
            feed_list.append(index if index is not None and _count_outcome(
                order[index], is_warmup, finish_reason, error_class) else -1)
        feeds = np.array(feed_list, dtype=np.int64)
        ok = np.array(ok_list, dtype=bool)
        warmup = np.array(warmup_list, dtype=bool)
        self._drift.add_lines(t_max, sent, lens, offsets, first, last, warmup,
                              ok & has & ~warmup)
        counted = feeds >= 0
        for index in np.unique(feeds[counted]).tolist():
            mine = np.flatnonzero(feeds == index)
            self._add_ok_lines(order[index], [lines[i] for i in mine.tolist()], lens[mine],
                               first[mine], last[mine])
        if order:
            self._add_bulk(offsets, lens, sent, feeds)

    def _add_ok_lines(self, stats: _PhaseStats, lines: list[dict[str, Any]], n: np.ndarray,
                      first: np.ndarray, last: np.ndarray) -> None:
        """:meth:`_add_ok` for many successful measured requests of one phase (record lines
        whose arrivals carry one token each), in order: ``n`` their tokens, ``first`` and
        ``last`` their first and last arrival offsets."""
        stats.ok += len(lines)
        columns = stats.columns
        has = n > 0
        columns["ttft_us"].extend(first[has].astype(np.float64))
        two = n >= 2
        span = (last - first)[two]
        gaps = (n[two] - 1).astype(np.float64)
        columns["tpot_us"].extend(span.astype(np.float64) / gaps)
        moving = span > 0
        columns["speed_tps"].extend(gaps[moving] / (span[moving].astype(np.float64) / 1e6))
        columns["e2e_us"].extend(np.array([d["end_us"] for d in lines], dtype=np.float64))
        if stats.phase.rate is not None:
            columns["queued_us"].extend(
                np.array([d.get("queued_us", 0) for d in lines], dtype=np.float64))
        asked = [d["prompt_tokens"] for d in lines]
        stats.asked_tokens += sum(asked)
        columns["input_asked"].extend(np.array(asked, dtype=np.float64))
        columns["output_received"].extend(n.astype(np.float64))
        # most servers report their usage with every request: its plain OpenAI form is
        # counted here, inline (a call a request cost a tenth of a 30-minute soak's summary);
        # anything else (Ollama's durations, prefix-cache details, odd values) goes through
        # _add_reported, as an event's does
        server_tokens = server_reports = 0
        # the server's lengths, as _add_reported keeps them: gathered, and put in the columns
        # before any request _add_reported counts, so they stay in the order requests came
        prompts: list[int] = []
        completions: list[int] = []
        for d in lines:
            reported = d.get("server_reported")
            if not reported:
                continue
            if len(reported) == 2 or (len(reported) == 3 and "total_tokens" in reported):
                prompt = reported.get("prompt_tokens")
                completion = reported.get("completion_tokens")
                if type(prompt) is int and type(completion) is int:
                    server_tokens += prompt
                    server_reports += 1
                    prompts.append(prompt)
                    completions.append(completion)
                    continue
            if prompts:
                _extend_server_lengths(stats, prompts, completions)
            _add_reported(stats, reported)
        stats.server_tokens += server_tokens
        stats.server_reports += server_reports
        if prompts:
            _extend_server_lengths(stats, prompts, completions)
        target = self._target
        stats.attained += len(lines) if target is None else int(np.count_nonzero(n >= target))

    def _add_plain(self, phase_id: int, warmup: bool, finish_reason: str,
                   error_class: str | None, arrivals: tuple[int, ...], sent_ns: int,
                   end_us: int, queued_us: int, server_reported: dict | None,
                   prompt_tokens: int) -> None:
        """A request whose arrivals carry one token each and that did not reason (nearly
        every one): its figures now, its tokens in the buffers (see :meth:`_add_request`)."""
        order = self._order
        index = self._phases.get(phase_id)
        feed = -1
        # index None: a request from a phase this summary never saw (a cut record)
        if index is not None and _count_outcome(order[index], warmup, finish_reason,
                                                error_class):
            self._add_ok(order[index], arrivals, len(arrivals), end_us, queued_us,
                         server_reported, 0, None, prompt_tokens)
            feed = index
        if not (arrivals and order):
            return
        n = len(arrivals)
        if self._n_offsets + n > BUFFER_TOKENS or self._n_requests == BUFFER_REQUESTS:
            self._flush()
        if n > BUFFER_TOKENS:  # longer than the buffer: on its own
            self._add_bulk(np.asarray(arrivals, dtype=np.int64), np.array([n]),
                           np.array([sent_ns]), np.array([feed]))
            return
        at, i = self._n_offsets, self._n_requests
        self._offsets[at : at + n] = arrivals
        self._lens[i], self._sent[i], self._feeds[i] = n, sent_ns, feed
        self._n_offsets, self._n_requests = at + n, i + 1

    def _flush(self) -> None:
        """Count the record lines, and the tokens of the requests, waiting in the buffers."""
        if self._lines:
            self._flush_lines()
        if self._n_requests:
            n, offsets = self._n_requests, self._n_offsets
            self._n_requests = self._n_offsets = 0
            self._add_bulk(self._offsets[:offsets], self._lens[:n], self._sent[:n],
                           self._feeds[:n])

    def _add_ok(self, stats: _PhaseStats, arrivals: tuple[int, ...], n: int, end_us: int,
                queued_us: int, server_reported: dict | None, reasoning_tokens: int,
                first_output_us: int | None, prompt_tokens: int) -> None:
        """One successful measured request's figures (the definitions of
        :func:`~soaktop.engine.metrics.stats.request_metrics`, in plain Python); ``n`` is
        its output tokens."""
        stats.ok += 1
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
        if reasoning_tokens:  # TTFO is TTFT but where a model reasoned (see _ttfo)
            stats.reasoning_tokens += reasoning_tokens
            ttft_index = len(columns["ttft_us"])
            if ttft is not None:
                stats.ttfo_edits.append((ttft_index - 1, first_output_us, True))
            elif first_output_us is not None:
                stats.ttfo_edits.append((ttft_index, first_output_us, False))
        columns["e2e_us"].append(float(end_us))
        if stats.phase.rate is not None:
            columns["queued_us"].append(queued_us)
        stats.asked_tokens += prompt_tokens
        columns["input_asked"].append(prompt_tokens)
        columns["output_received"].append(n)
        if server_reported:
            _add_reported(stats, server_reported)
        if self._target is None or n >= self._target:
            stats.attained += 1

    def _add_bulk(self, offsets: np.ndarray, lens: np.ndarray, sent: np.ndarray,
                  feeds: np.ndarray) -> None:
        """Tokens per phase window, and the ITL and inter-chunk gaps, of many requests whose
        arrivals carry one token each: ``offsets`` are their arrival offsets end to end.
        Two shortcuts for the usual batch (every token after the last phase began, every
        request feeding one phase) skip the per-token searches; they give the same counts."""
        if offsets.size == 0:
            return
        owner = np.repeat(np.arange(lens.size), lens)
        arrived_ns = offsets * 1000 + sent[owner]
        if arrived_ns.min() >= self._starts[-1]:
            self._order[-1].tokens_in_window += int(arrived_ns.size)
        else:
            slot = np.searchsorted(self._starts, arrived_ns, side="right") - 1
            per_phase = np.bincount(np.maximum(slot, 0), minlength=len(self._order))
            for i in np.flatnonzero(per_phase):
                self._order[i].tokens_in_window += int(per_phase[i])
        gaps = np.diff(offsets)
        within = owner[1:] == owner[:-1]
        lowest, highest = int(feeds.min()), int(feeds.max())
        if lowest == highest:  # one phase's requests (or none measured)
            if lowest < 0:
                return
            gaps, indices, feed = gaps[within], [lowest], None
        else:
            feed = feeds[owner[1:]]
            keep = within & (feed >= 0)  # within one measured ok request
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
        if stats.phase.warmup:
            return
        # The run's window gets the same samples as its measured phases' windows, so while
        # every measured sample so far is one phase's (a soak: one phase after warm-up), that
        # phase's window is the run's: each sample goes into one window, not two (a 30-minute
        # soak's 65,000 samples cost 0.3 s a window). A sample of another measured phase
        # gives the run a window of its own, a copy of that phase's: the same state as had it
        # been fed the same samples all along.
        if self._run_telemetry is not None:
            self._run_telemetry.add(sample)
        elif self._run_alias is None:
            self._run_alias = stats
        elif self._run_alias is not stats:
            self._run_telemetry = copy.deepcopy(self._run_alias.telemetry)
            self._run_alias = None
            self._run_telemetry.add(sample)

    def _run_window(self) -> _Telemetry:
        """The telemetry of the measured phases' samples (see :meth:`_add_sample`)."""
        if self._run_telemetry is not None:
            return self._run_telemetry
        return self._run_alias.telemetry if self._run_alias is not None else _Telemetry()

    def request_values(self, metric: str) -> np.ndarray:
        """Per-request values of ``metric`` (``ttft_us``, ``tpot_us``, ``e2e_us``,
        ``speed_tps``) over the measured phases, NaNs removed: what ``compare`` tests."""
        self._flush()
        arrays = [_ttfo(s) if metric == "ttfo_us" else s.columns[metric].values()
                  for s in self._order if not s.phase.warmup]
        values = np.concatenate(arrays) if arrays else np.empty(0)
        return values[~np.isnan(values)]

    def input_tokens(self) -> InputTokens:
        """The measured run's ``input_tokens``, without the rest of :meth:`result`."""
        self._flush()
        return _input_figures([s for s in self._order if not s.phase.warmup])["input_tokens"]

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
            start_s=phase.t_ns / 1e9, rate=phase.rate, **_figures([(stats, window_ns)]),
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
            **self._run_window().figures(figures["output_tokens"], figures["duration_s"]),
            telemetry=self.telemetry_status(),
            requests_warmup=sum(s.warmup for s in self._order),
            ended=self.end.reason if self.end is not None else CUT_SHORT,
            ended_at_s=ended_ns / 1e9,
            ended_explanation=self._ended_explanation(),
            marks=tuple(self._marks),
            phases=tuple(phases),
            **self._plans(phases),
            soak=self._drift.result(),
            client_bound_s=self._client_bound_ns / 1e9,
            client_bound_reasons={reason: ns / 1e9
                                  for reason, ns in sorted(self._client_bound_by.items())},
            turns=self._turn_split(),
        )

    def _ended_explanation(self) -> str | None:
        """The session_end's one line, where its reason has one: why a run ``failed``, or
        which stop condition ended it (``stop_condition``, ``saturated``)."""
        detail = self.end.detail if self.end is not None else {}
        line = detail.get("explanation") or detail.get("failure")
        return str(line) if line else None

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


def _count_outcome(stats: _PhaseStats, warmup: bool, finish_reason: str,
                   error_class: str | None) -> bool:
    """Count one request of ``stats``'s phase as warm-up, cancelled or failed, or say that it
    is none of these (True): a successful measured request, whose figures the caller counts.
    The one definition each way a request is counted (its event, its record line) uses."""
    if warmup:
        stats.warmup += 1
    elif finish_reason == "cancelled":
        stats.cancelled += 1
    elif error_class is not None:
        stats.failed += 1
        stats.errors[error_class] += 1
    else:
        return True
    return False


def _extend_server_lengths(stats: _PhaseStats, prompts: list[int],
                           completions: list[int]) -> None:
    """The server's prompt and output lengths gathered on the record-line path, into their
    columns (the lists emptied for the next)."""
    stats.columns["input_server"].extend(np.array(prompts, dtype=np.float64))
    stats.columns["output_server"].extend(np.array(completions, dtype=np.float64))
    prompts.clear()
    completions.clear()


def _add_reported(stats: _PhaseStats, reported: dict) -> None:
    """What a successful measured request's server said of it (its ``server_reported``),
    counted: its own output speed, its count of the prompt and its prefix-cache hits. Both
    ways a request is counted (its event, its record line) come through here."""
    server_speed = _server_speed_tps(reported)
    if server_speed is not None:
        stats.columns["server_speed_tps"].append(server_speed)
    output = server_output_tokens(reported)
    if output is not None:
        stats.columns["output_server"].append(output)
    prompt, cached = server_input_tokens(reported)
    if prompt is not None:
        stats.columns["input_server"].append(prompt)
        stats.server_tokens += prompt
        stats.server_reports += 1
        if cached is not None:
            stats.cached_tokens += cached
            stats.cached_of += prompt


def _input_figures(stats: list[_PhaseStats]) -> dict[str, Any]:
    """``input_tokens`` and ``cached_share`` of one phase, or of several taken together: means
    a successful request, soaktop's count over all of them, the server's over those it
    reported for; the cached share over the prompt tokens of those it reported hits for."""
    ok = sum(s.ok for s in stats)
    reports = sum(s.server_reports for s in stats)
    cached_of = sum(s.cached_of for s in stats)
    return {
        "input_tokens": InputTokens(
            asked=sum(s.asked_tokens for s in stats) / ok if ok else None,
            server=sum(s.server_tokens for s in stats) / reports if reports else None),
        "cached_share": sum(s.cached_tokens for s in stats) / cached_of if cached_of else None,
    }


def _shortest(lengths: Any) -> int:
    """The shortest output length a recorded distribution asks for (0: unreadable)."""
    from soaktop.engine.load.workloads import parse_lengths

    try:
        parsed = parse_lengths(lengths)
    except SoaktopError:
        return 0
    return 1 if parsed.kind == "normal" else int(min(parsed.values))


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
        # the prompt's length as soaktop counted it and as the server did (its tokenizer), and
        # the share of the server's count its prefix cache served
        **_input_figures([s for s, _ in parts]),
        # each request's lengths, as distributions: what a length distribution sent and got
        "input_lengths": InputLengths(asked=distribution(column("input_asked")),
                                      server=distribution(column("input_server"))),
        "output_lengths": OutputLengths(received=distribution(column("output_received")),
                                        server=distribution(column("output_server"))),
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
