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
            out[name] = (value.to_dict() if isinstance(value, (Distribution, InputTokens))
                         else value)
        return out


_FIGURES = (
    "requests_ok", "requests_failed", "requests_cancelled", "errors", "error_rate",
    "output_tokens", "duration_s", "output_tokens_per_s", "requests_per_s",
    "output_length_attained", "input_tokens", "cached_share", "ttft_ms", "ttfo_ms",
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase_id": self.phase_id, "concurrency": self.concurrency, "model": self.model,
            "backend": self.backend, "reason": _plain(self.reason), "warmup": self.warmup,
            "start_s": self.start_s, **self.figures_dict(),
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

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True, slots=True)
class DriftFigures:
    """The four figures a soak verdict compares: tokens/s, TTFT p95, SM clock (mean of the
    samples) and GPU temperature (max). As ``first`` and ``last``, a window's values; as
    ``change``, last against first: relative (``-0.19`` is 19% down), except the temperature,
    whose difference is in °C. ``None`` where there was nothing to measure."""

    tokens_per_s: float | None
    ttft_p95_ms: float | None
    sm_clock_mhz: float | None
    temperature_c: float | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class SoakVerdict:
    """The last ``window_s`` of the measured run against its first: the figures of each, the
    changes, the verdict, and the throttling reasons active in the last window (share of its
    samples, largest first)."""

    window_s: float
    first: DriftFigures
    last: DriftFigures
    change: DriftFigures
    verdict: Verdict
    throttle_reasons: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"window_s": self.window_s, "first": self.first.to_dict(),
                "last": self.last.to_dict(), "change": self.change.to_dict(),
                "verdict": self.verdict.value, "throttle_reasons": dict(self.throttle_reasons)}


@dataclass(frozen=True, kw_only=True)
class RunSummary(Figures):
    """The whole run: the numbers of its measured phases taken together, then the telemetry
    sources' status, the warm-up count, how it ended, each phase, what a plan concluded, the
    soak verdict and the seconds the client was the bottleneck."""

    telemetry: tuple[SourceStatus, ...] = ()
    requests_warmup: int = 0
    ended: EndReason | str = CUT_SHORT  # a SessionEnd's reason, or CUT_SHORT
    ended_at_s: float = 0.0  # the session_end's time; for CUT_SHORT the last event's
    phases: tuple[PhaseSummary, ...] = ()
    ramp: tuple[RampStep, ...] | None = None  # a ramp's steps; None: no ramp
    slo: SloReport | None = None  # an SLO search's report; None: no search
    soak: SoakVerdict | None = None  # None: a measured run too short to judge
    client_bound_s: float = 0.0
    #: Of those seconds, how many each reason fired in (a second may have several).
    client_bound_reasons: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``ramp`` and ``slo`` are left out for a run without them."""
        out = self.figures_dict()
        out["telemetry"] = [s.to_dict() for s in self.telemetry]
        out["requests_warmup"] = self.requests_warmup
        out["ended"] = self.ended
        out["ended_at_s"] = self.ended_at_s
        out["phases"] = [p.to_dict() for p in self.phases]
        if self.ramp is not None:
            out["ramp"] = [r.to_dict() for r in self.ramp]
        if self.slo is not None:
            out["slo"] = self.slo.to_dict()
        out["soak"] = None if self.soak is None else self.soak.to_dict()
        out["client_bound_s"] = self.client_bound_s
        out["client_bound_reasons"] = dict(self.client_bound_reasons)
        return out


def _plain(value: Any) -> Any:
    """An Enum member as the plain value it stands for (JSON and CSV hold those)."""
    return value.value if isinstance(value, Enum) else value
