"""The typed results of a session: a run, its phases, a ramp, an SLO search, the soak verdict.

:class:`~soaktop.engine.metrics.summary.SessionSummary` builds them; everything that reads a
summary (the text and CSV of ``soaktop.tui``, compare, the plans, the benchmarks) reads their
attributes, so a renamed or missing figure is an error where it is read, not a ``KeyError``
or a silent ``None`` somewhere later. ``to_dict`` gives the JSON form ``--json`` prints and
the README documents ("What each number means"), key for key and in the same order.

The telemetry figures of a window (``gpus``, ``host``, ``servers``) stay the plain
dictionaries :mod:`soaktop.engine.telemetry.derived` builds: the live view reads the same
dictionaries over its own window, and nothing here computes with them.

Numbers only: no sentence is written here. ``ended`` is an
:class:`~soaktop.engine.events.EndReason` (``cut_short`` for a record with no
``session_end``), and the soak verdict holds its windows and changes, not prose;
``soaktop.tui`` writes the words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from soaktop.engine.events import EndReason, PhaseReason

#: ``ended`` of a record with no ``session_end``: its writer was killed, or recording stopped.
CUT_SHORT = EndReason.CUT_SHORT


@dataclass(frozen=True, slots=True)
class Distribution:
    """Quantiles and mean of one metric over the requests (or tokens) of a window; all
    ``None`` where there is no value."""

    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 95, 99)

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None

    def quantile(self, q: int) -> float | None:
        """The ``q``-th percentile; a ``KeyError`` for one this distribution does not keep."""
        if q not in self.QUANTILES:
            raise KeyError(f"p{q}")
        return getattr(self, f"p{q}")

    def to_dict(self) -> dict[str, float | None]:
        return {**{f"p{q}": getattr(self, f"p{q}") for q in self.QUANTILES}, "mean": self.mean}


@dataclass(frozen=True, slots=True)
class SpeedDistribution(Distribution):
    """Per-request output speed: p25 too, the slow quarter of requests an SLO on speed bounds."""

    QUANTILES: ClassVar[tuple[int, ...]] = (25, 50, 90, 95, 99)

    p25: float | None = None


@dataclass(frozen=True, slots=True)
class InputTokens:
    """A request's prompt length, on average over the successful requests of a window:
    ``asked`` as soaktop counted it (the tokenizer's count with ``--tokenizer``, else the
    prompt's words), ``server`` as the server did (its tokenizer; ``None`` where it reports
    no count). A server whose tokenizer splits soaktop's words counts more."""

    asked: float | None = None
    server: float | None = None

    @property
    def ratio(self) -> float | None:
        """The server's count over soaktop's (``None`` where either is missing or 0)."""
        return self.server / self.asked if self.asked and self.server is not None else None

    def to_dict(self) -> dict[str, float | None]:
        return {"asked": self.asked, "server": self.server}


@dataclass(frozen=True, slots=True)
class TurnSplit:
    """``--turns``: TTFT of conversations' first turns apart from their later ones (which
    resend the history, so a prefix cache serves most of their prompt), over the successful
    measured requests of each kind."""

    first_ttft_ms: Distribution = field(default_factory=Distribution)
    later_ttft_ms: Distribution = field(default_factory=Distribution)
    first: int = 0
    later: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"first": {"requests": self.first, "ttft_ms": self.first_ttft_ms.to_dict()},
                "later": {"requests": self.later, "ttft_ms": self.later_ttft_ms.to_dict()}}


@dataclass(frozen=True, slots=True)
class InputLengths:
    """The prompt lengths the successful requests of a window had, in tokens, over the
    requests: ``asked`` as soaktop counted each (as :class:`InputTokens`), ``server`` as the
    server did, over those it reported a count for (all ``None`` where none)."""

    asked: Distribution = field(default_factory=Distribution)
    server: Distribution = field(default_factory=Distribution)

    def to_dict(self) -> dict[str, dict[str, float | None]]:
        return {"asked": self.asked.to_dict(), "server": self.server.to_dict()}


@dataclass(frozen=True, slots=True)
class OutputLengths:
    """The output lengths the successful requests of a window had, in tokens, over the
    requests: ``received`` as soaktop counted what arrived (the server's usage where it gave
    one, reasoning included), ``server`` the server's own count (OpenAI
    ``usage.completion_tokens``, Ollama's ``eval_count``) over those it reported one for."""

    received: Distribution = field(default_factory=Distribution)
    server: Distribution = field(default_factory=Distribution)

    def to_dict(self) -> dict[str, dict[str, float | None]]:
        return {"received": self.received.to_dict(), "server": self.server.to_dict()}


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The numbers of one window: a phase, or the measured phases of the run taken together
    (README: "What each number means")."""

    requests_ok: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_rate: float = 0.0
    output_tokens: int = 0
    duration_s: float = 0.0
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    output_length_attained: float | None = None
    input_tokens: InputTokens = field(default_factory=InputTokens)
    #: Of the prompt tokens the server counted, the share its prefix cache served (where it
    #: reports hits: vLLM, SGLang); what shared prefixes and later turns buy.
    cached_share: float | None = None
    #: What a distribution of lengths (``--input-tokens 50-150``) sent and got, per request.
    input_lengths: InputLengths = field(default_factory=InputLengths)
    output_lengths: OutputLengths = field(default_factory=OutputLengths)
    ttft_ms: Distribution = field(default_factory=Distribution)
    ttfo_ms: Distribution = field(default_factory=Distribution)
    reasoning_tokens: int = 0
    itl_ms: Distribution = field(default_factory=Distribution)
    inter_chunk_ms: Distribution = field(default_factory=Distribution)
    tpot_ms: Distribution = field(default_factory=Distribution)
    e2e_ms: Distribution = field(default_factory=Distribution)
    output_speed_tps: SpeedDistribution = field(default_factory=SpeedDistribution)
    server_speed_tps: Distribution = field(default_factory=Distribution)
    queue_ms: Distribution = field(default_factory=Distribution)
    # telemetry of the window (soaktop.engine.telemetry.derived)
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    power_w: float | None = None
    energy_j_per_token: float | None = None
    tokens_per_s_per_w: float | None = None
    host: dict[str, Any] | None = None
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def figures_dict(self) -> dict[str, Any]:
        """The window's numbers in JSON form, in the documented order."""
        out: dict[str, Any] = {}
        for name in _FIGURES:
            value = getattr(self, name)
            out[name] = (value.to_dict() if isinstance(
                value, (Distribution, InputTokens, InputLengths, OutputLengths)) else value)
        return out


_FIGURES = (
    "requests_ok", "requests_failed", "requests_cancelled", "errors", "error_rate",
    "output_tokens", "duration_s", "output_tokens_per_s", "requests_per_s",
    "output_length_attained", "input_tokens", "cached_share", "input_lengths",
    "output_lengths", "ttft_ms", "ttfo_ms",
    "reasoning_tokens", "itl_ms",
    "inter_chunk_ms", "tpot_ms", "e2e_ms", "output_speed_tps", "server_speed_tps", "queue_ms",
    "gpus", "power_w", "energy_j_per_token", "tokens_per_s_per_w", "host", "servers",
)


@dataclass(frozen=True, kw_only=True)
class PhaseSummary(Figures):
    """One phase: what ran (concurrency, model, backend), why it began, and its numbers."""

    phase_id: int
    concurrency: int
    model: str = ""
    backend: str = ""
    reason: PhaseReason | str = PhaseReason.START
    warmup: bool = False
    start_s: float = 0.0
    #: An open loop's planned requests a second (a trace's: its mean); None for a closed
    #: loop, whose ``concurrency`` is what it held (an open loop's phases say 0 there).
    rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase_id": self.phase_id, "concurrency": self.concurrency, "rate": self.rate,
            "model": self.model, "backend": self.backend, "reason": _plain(self.reason),
            "warmup": self.warmup, "start_s": self.start_s, **self.figures_dict(),
        }


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A telemetry source's (or one GPU's) last word: available or not, and what is missing."""

    source: str
    available: bool
    gpu_index: int | None = None
    host: str | None = None
    reason: str | None = None
    unavailable_fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "available": self.available}
        for name in ("gpu_index", "host", "reason"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.unavailable_fields:
            out["unavailable_fields"] = dict(self.unavailable_fields)
        return out


@dataclass(frozen=True, slots=True)
class RampStep:
    """One step of a ramp: system tokens/s, per-request speed, TTFT p95, errors, and the gain
    in tokens/s over the step before (``plateau`` where it is under 5%)."""

    phase_id: int
    concurrency: int
    tokens_per_s: float | None
    speed_p25_tps: float | None
    speed_p50_tps: float | None
    ttft_p95_ms: float | None
    error_rate: float
    gain: float | None
    plateau: bool

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class SloStep:
    """One step of an SLO search: its concurrency, whether it met the SLO, and the value of
    each term's metric (``None`` where the phase had none)."""

    phase_id: int
    concurrency: int
    met: bool
    values: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"phase_id": self.phase_id, "concurrency": self.concurrency, "met": self.met,
                "values": dict(self.values)}


@dataclass(frozen=True, slots=True)
class SloReport:
    """What an SLO search concluded: the highest concurrency that met the SLO (``None``: none
    did), the phases that decided it, and every step. ``error`` instead, for a record whose
    SLO this soaktop cannot read."""

    slo: str
    answer: int | None = None
    deciding_phases: tuple[int, ...] = ()
    steps: tuple[SloStep, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"slo": self.slo, "error": self.error}
        return {"slo": self.slo, "answer": self.answer,
                "deciding_phases": list(self.deciding_phases),
                "steps": [s.to_dict() for s in self.steps]}


class Verdict(str, Enum):
    """The soak verdict (soaktop.engine.metrics.drift)."""

    STABLE = "stable"
    DEGRADING = "degrading"
    THROTTLED = "throttled"
    TOO_SHORT = "too short to judge"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Direction(str, Enum):
    """Which way a measure moved from the early window to the late one, as the user feels
    it: fewer tokens/s, a longer TTFT, a slower clock or a hotter GPU are ``worse``."""

    BETTER = "better"
    WORSE = "worse"
    SAME = "same"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DriftMeasure:
    """One measure of the soak verdict, the late window against the early one.

    ``early`` and ``late`` are the windows' levels: the mean for a per-second series
    (tokens/s, SM clock, temperature), the median for a per-request value (TTFT, ITL).
    ``change`` is the Hodges-Lehmann shift (the median of every late-minus-early difference)
    over the early level, so ``-0.05`` is 5% down; for the temperature it is the shift
    itself, in °C. ``low`` and ``high`` bound it (95%, Moses' interval from the rank test's
    own distribution); ``p_value`` is the two-sided Mann-Whitney test's. ``test`` says what
    was ranked: ``requests`` (each request's value) or ``blocks`` (block means of a
    per-second series: neighbouring seconds are not independent, block means nearly are);
    ``n_early``/``n_late`` how many of them. ``None`` where there was nothing to measure."""

    early: float | None
    late: float | None
    change: float | None
    low: float | None
    high: float | None
    p_value: float | None
    direction: Direction | None
    test: str
    n_early: int
    n_late: int

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class GpuDrift:
    """One GPU across the soak: its SM clock and temperature, early against late, and the
    throttling clock-event reasons active in the late window (share of its samples, largest
    first; ``reasons_reported`` False where its source gives none). ``held_back``: its clock
    fell significantly, by more than the verdict's threshold, with a throttling reason
    active (or none reported) then: what turns ``degrading`` into ``throttled``."""

    key: str  # gpu_key: "3", or "node7/3" for a GPU scraped from node7
    name: str | None
    sm_clock_mhz: DriftMeasure
    temperature_c: DriftMeasure
    throttle_reasons: dict[str, float]
    reasons_reported: bool
    held_back: bool

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name,
                "sm_clock_mhz": self.sm_clock_mhz.to_dict(),
                "temperature_c": self.temperature_c.to_dict(),
                "throttle_reasons": dict(self.throttle_reasons),
                "reasons_reported": self.reasons_reported, "held_back": self.held_back}


@dataclass(frozen=True, slots=True)
class SoakVerdict:
    """Did the run hold up? (:mod:`soaktop.engine.metrics.drift`.)

    ``measured_s``: the run after warm-up; ``steady_state_s``: when, counted from the
    warm-up's end, it reached steady state (MSER-5), ``settled`` False where the search
    range ended first (the early window then starts at its end). ``window_s``, and the
    windows' starts ``early_from_s``/``late_from_s`` (same origin): ``None`` for a run
    ``too short to judge``. ``measures``: tokens/s, TTFT and ITL, by name; ``gpus``: each
    GPU, by key; ``worst_gpu`` the one named (its clock fell most, held-back ones first);
    ``deciding`` the measures that made it degrading (or throttled)."""

    verdict: Verdict
    measured_s: float
    steady_state_s: float
    settled: bool
    window_s: float | None = None
    early_from_s: float | None = None
    late_from_s: float | None = None
    measures: dict[str, DriftMeasure] = field(default_factory=dict)
    gpus: dict[str, GpuDrift] = field(default_factory=dict)
    worst_gpu: str | None = None
    deciding: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "measured_s": self.measured_s,
                "steady_state_s": self.steady_state_s, "settled": self.settled,
                "window_s": self.window_s, "early_from_s": self.early_from_s,
                "late_from_s": self.late_from_s,
                "measures": {k: m.to_dict() for k, m in self.measures.items()},
                "gpus": {k: g.to_dict() for k, g in self.gpus.items()},
                "worst_gpu": self.worst_gpu, "deciding": list(self.deciding)}


@dataclass(frozen=True, kw_only=True)
class RunSummary(Figures):
    """The whole run: the numbers of its measured phases taken together, then the telemetry
    sources' status, the warm-up count, how it ended, each phase, what a plan concluded, the
    soak verdict and the seconds the client was the bottleneck."""

    telemetry: tuple[SourceStatus, ...] = ()
    requests_warmup: int = 0
    ended: EndReason | str = CUT_SHORT  # a SessionEnd's reason, or CUT_SHORT
    ended_at_s: float = 0.0  # the session_end's time; for CUT_SHORT the last event's
    #: The session_end's one line: why it ``failed``, or the stop condition that ended it
    #: (``stop_condition``, ``saturated``) with its measured value; None for other reasons.
    ended_explanation: str | None = None
    #: The run's marks, (seconds, note), the first 100: a user's, a lost worker's, an
    #: over-saturation warning's.
    marks: tuple[tuple[float, str], ...] = ()
    phases: tuple[PhaseSummary, ...] = ()
    ramp: tuple[RampStep, ...] | None = None  # a ramp's steps; None: no ramp
    slo: SloReport | None = None  # an SLO search's report; None: no search
    soak: SoakVerdict | None = None  # None: no measured phase (warm-up only)
    client_bound_s: float = 0.0
    #: Of those seconds, how many each reason fired in (a second may have several).
    client_bound_reasons: dict[str, float] = field(default_factory=dict)
    turns: TurnSplit | None = None  # conversations (--turns): first turns against later

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``ramp``, ``slo`` and ``turns`` are left out for a run without
        them."""
        out = self.figures_dict()
        out["telemetry"] = [s.to_dict() for s in self.telemetry]
        out["requests_warmup"] = self.requests_warmup
        out["ended"] = self.ended
        out["ended_at_s"] = self.ended_at_s
        out["ended_explanation"] = self.ended_explanation
        out["marks"] = [{"t_s": t_s, "note": note} for t_s, note in self.marks]
        out["phases"] = [p.to_dict() for p in self.phases]
        if self.ramp is not None:
            out["ramp"] = [r.to_dict() for r in self.ramp]
        if self.slo is not None:
            out["slo"] = self.slo.to_dict()
        out["soak"] = None if self.soak is None else self.soak.to_dict()
        out["client_bound_s"] = self.client_bound_s
        out["client_bound_reasons"] = dict(self.client_bound_reasons)
        if self.turns is not None:
            out["turns"] = self.turns.to_dict()
        return out


def _plain(value: Any) -> Any:
    """An Enum member as the plain value it stands for (JSON and CSV hold those)."""
    return value.value if isinstance(value, Enum) else value
