"""Load plans: a ramp over concurrency levels, and the search for the highest concurrency that
meets an SLO.

A plan steers a running :class:`~soaktop.engine.session.Session` with the commands a user has (a new
phase per level, reason :attr:`PhaseReason.RAMP` or :attr:`PhaseReason.SLO_SEARCH`), so what it
did is in the record as phases and needs no events of its own. What a plan *concludes* is
computed from those phases' typed figures
(:class:`~soaktop.engine.metrics.results.PhaseSummary`) by the summary (:func:`ramp_table`,
:func:`slo_report`), so ``soaktop summary`` of the record says the same as the live run. While
it runs, the SLO search reads the figures of the one phase it judges, by its id, from the live
summary: one code path with the final report, without recomputing the whole run at each step.

Each step is one full phase of ``phase_s``. The SLO search judges a step when it ends, on the
requests of that step finished by then (those still in flight finish during the next step and
are added to their own step's figures in the record, but do not change the decision: with a
step of minutes and requests of seconds they are a few percent of it, taken without regard to
their latency). The search doubles the concurrency while the SLO holds, then bisects between
the last level that held and the first that did not, to one request of resolution.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from soaktop.engine.errors import ConfigError
from soaktop.engine.events import EndReason, Phase, PhaseReason
from soaktop.engine.metrics.results import PhaseSummary, RampStep, SloReport, SloStep

PLATEAU_GAIN = 0.05  # a ramp step that adds less than 5% tokens/s has reached a plateau

#: The figures of one phase by its id (None: no such phase yet): what a plan reads as it runs.
PhaseLookup = Callable[[int], "PhaseSummary | None"]

_LATENCIES = ("ttft", "itl", "tpot", "e2e")  # each a distribution in ms: ttft_ms, ...
_CONDITION = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9.]+)\s*(ms|s|%)?\s*$")


@dataclass(frozen=True, slots=True)
class Condition:
    """One term of an SLO: ``ttft_p95 <= 2000`` (ms), ``speed_p25 >= 30`` (tokens/s)..."""

    metric: str
    op: str
    value: float  # in the summary's unit: ms for latencies, tokens/s, or a fraction
    text: str

    def measure(self, phase: PhaseSummary) -> float | None:
        """The phase's value of this metric, in the same unit as ``value``."""
        name, _, quantile = self.metric.rpartition("_p")
        if name in _LATENCIES:
            return getattr(phase, f"{name}_ms").quantile(int(quantile))
        if name == "speed":
            return phase.output_speed_tps.quantile(int(quantile))
        if self.metric == "error_rate":
            return phase.error_rate
        if self.metric == "tokens_per_s":
            return phase.output_tokens_per_s
        return None

    def holds(self, phase: PhaseSummary) -> bool | None:
        """Whether the phase meets it; ``None`` when the phase has no value to judge."""
        v = self.measure(phase)
        if v is None:
            return None
        return {"<=": v <= self.value, "<": v < self.value, ">=": v >= self.value,
                ">": v > self.value}[self.op]


def parse_slo(text: str, what: str = "SLO") -> tuple[Condition, ...]:
    """``"ttft_p95<=2s,speed_p25>=30"``: latencies (ttft/itl/tpot/e2e with p50, p90, p95, p99)
    in ms unless given in s; speed (per-request output tokens/s, p25 to p99); tokens_per_s
    (the system's); error_rate as a fraction or with %. ``what`` names the terms in an error
    (``--stop-when`` reads the same grammar: soaktop.engine.load.stop_when)."""
    conditions = []
    for term in (t for t in text.split(",") if t.strip()):
        match = _CONDITION.match(term)
        if not match:
            example = ("error_rate>5%, ttft_p95>30s" if what != "SLO"
                       else "ttft_p95<=2s, speed_p25>=30, error_rate<=1%")
            raise ConfigError(f"cannot read {what} term {term.strip()!r}: use e.g. {example}")
        metric, op, number, unit = match.groups()
        value = float(number)
        name, _, quantile = metric.rpartition("_p")
        if name in _LATENCIES and quantile in ("50", "90", "95", "99"):
            value *= 1000.0 if unit == "s" else 1.0
            if unit == "%":
                raise ConfigError(f"{metric} is a latency: give ms or s, not % ({term.strip()})")
        elif name == "speed" and quantile in ("25", "50", "90", "95", "99"):
            if unit:
                raise ConfigError(f"{metric} is in tokens/s: give a bare number ({term.strip()})")
        elif metric == "error_rate":
            value = value / 100 if unit == "%" else value
            if not 0 <= value <= 1:
                raise ConfigError(f"error_rate is a fraction from 0 to 1, or a % ({term.strip()})")
        elif metric == "tokens_per_s":
            if unit:
                raise ConfigError(f"tokens_per_s takes a bare number ({term.strip()})")
        else:
            raise ConfigError(f"unknown {what} metric {metric!r} in {term.strip()!r}: use "
                              "ttft/itl/tpot/e2e_p50..p99, speed_p25..p99, tokens_per_s or "
                              "error_rate")
        conditions.append(Condition(metric, op, value, term.strip()))
    if not conditions:
        raise ConfigError(f"{'an SLO' if what == 'SLO' else what} needs at least one term, "
                          f"e.g. {'ttft_p95<=2s' if what == 'SLO' else 'error_rate>5%'}")
    return tuple(conditions)


def parse_ramp(text: str) -> tuple[int, ...]:
    """``"1,2,4,8,16"``: the concurrency of each step, in order."""
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"cannot read ramp {text!r}: give concurrencies, e.g. 1,2,4,8") from None
    if not levels or min(levels) < 1:
        raise ConfigError(f"a ramp needs concurrencies of at least 1 (got {text!r})")
    return levels


def _steps(phases: Sequence[PhaseSummary], reason: PhaseReason) -> list[PhaseSummary]:
    """The measured phases a plan made: the first after warm-up, then its own."""
    measured = [p for p in phases if not p.warmup]
    return [p for i, p in enumerate(measured) if i == 0 or p.reason == reason]


def ramp_table(phases: Sequence[PhaseSummary]) -> tuple[RampStep, ...]:
    """Per ramp step: system tokens/s, per-request speed p25/p50, TTFT p95, error rate, and a
    plateau flag where tokens/s gained less than 5% over the step before."""
    rows, previous = [], None
    for p in _steps(phases, PhaseReason.RAMP):
        tps = p.output_tokens_per_s
        gain = None if previous in (None, 0) or tps is None else tps / previous - 1
        rows.append(RampStep(
            phase_id=p.phase_id, concurrency=p.concurrency, tokens_per_s=tps,
            speed_p25_tps=p.output_speed_tps.p25, speed_p50_tps=p.output_speed_tps.p50,
            ttft_p95_ms=p.ttft_ms.p95, error_rate=p.error_rate,
            gain=gain, plateau=gain is not None and gain < PLATEAU_GAIN,
        ))
        previous = tps
    return tuple(rows)


def judge(conditions: tuple[Condition, ...], phase: PhaseSummary) -> bool:
    """The phase meets every condition (a condition with nothing to judge does not hold)."""
    return all(c.holds(phase) for c in conditions)


def slo_report(conditions: tuple[Condition, ...], phases: Sequence[PhaseSummary]) -> SloReport:
    """Each search step with its values and whether it met the SLO; the answer (the highest
    concurrency that met it, with no lower level failing above it) and the phases that decided
    it: the answer's step and the first step above it that failed."""
    steps = tuple(
        SloStep(phase_id=p.phase_id, concurrency=p.concurrency, met=judge(conditions, p),
                values={c.metric: c.measure(p) for c in conditions})
        for p in _steps(phases, PhaseReason.SLO_SEARCH))
    passed = [s for s in steps if s.met]
    failed = [s for s in steps if not s.met]
    lowest_fail = min((s.concurrency for s in failed), default=None)
    good = [s for s in passed if lowest_fail is None or s.concurrency < lowest_fail]
    best = max(good, key=lambda s: s.concurrency, default=None)
    above = min((s for s in failed if best is None or s.concurrency > best.concurrency),
                key=lambda s: s.concurrency, default=None)
    return SloReport(
        slo=",".join(c.text for c in conditions),
        answer=best.concurrency if best else None,
        deciding_phases=tuple(s.phase_id for s in (best, above) if s is not None),
        steps=steps,
    )


class Ramp:
    """Steps through ``levels``, ``phase_s`` each, from the end of warm-up; then ends the run."""

    reason = PhaseReason.RAMP

    def __init__(self, levels: tuple[int, ...], phase_s: float) -> None:
        self.levels, self.phase_s = levels, phase_s

    async def run(self, session) -> None:
        start = await _measured_start(session)
        for i, level in enumerate(self.levels[1:], start=1):
            await _sleep_until(session, start + int(i * self.phase_s * 1e9))
            session.change(concurrency=level, reason=self.reason)
        await _sleep_until(session, start + int(len(self.levels) * self.phase_s * 1e9))
        session.stop(EndReason.COMPLETED)


class SloSearch:
    """Doubles concurrency from ``start`` while the SLO holds, then bisects; ends the run when
    the answer is known to one request (or at ``limit``). ``phase`` gives the figures of a
    phase by its id from the session's own statistics (one code path with the final report);
    a step is judged on the phase current when it ends."""

    reason = PhaseReason.SLO_SEARCH

    def __init__(self, conditions: tuple[Condition, ...], phase_s: float,
                 phase: PhaseLookup, start: int = 1, limit: int = 1024) -> None:
        self.conditions, self.phase_s, self.phase = conditions, phase_s, phase
        self.start, self.limit = start, limit
        self.decisions: list[tuple[int, bool]] = []

    def next_level(self, level: int, met: bool, lower: int | None,
                   upper: int | None) -> tuple[int | None, int | None, int | None]:
        """(next concurrency or None when done, the new lower and upper bounds)."""
        if met:
            lower = level
            nxt = min(level * 2, self.limit) if upper is None else (level + upper) // 2
        else:
            upper = level
            if lower is None:  # failed from the start: halve until something holds
                nxt = level // 2 if level > 1 else None
            else:
                nxt = (lower + level) // 2
        if nxt is None or nxt == level or nxt == lower or (upper is not None and nxt >= upper) \
                or nxt < 1:
            return None, lower, upper
        return nxt, lower, upper

    async def run(self, session) -> None:
        start = await _measured_start(session)
        level, lower, upper = self.start, None, None
        step_start = start
        while True:
            await _sleep_until(session, step_start + int(self.phase_s * 1e9))
            current = session.current_phase
            phase = self.phase(current.phase_id) if current is not None else None
            met = phase is not None and judge(self.conditions, phase)
            self.decisions.append((level, met))
            level, lower, upper = self.next_level(level, met, lower, upper)
            if level is None:
                break
            session.change(concurrency=level, reason=self.reason)
            step_start = session.now_ns()
        session.stop(EndReason.COMPLETED)


async def _measured_start(session) -> int:
    """When the first measured phase began (warm-up over), on the session clock."""
    await session.started.wait()
    done = asyncio.Event()
    start: list[int] = []

    def watch(event: Any) -> None:
        if isinstance(event, Phase) and not event.warmup and not start:
            start.append(event.t_ns)
            done.set()

    session.add_listener(watch)
    if session.current_phase is not None and not session.current_phase.warmup:
        return session.current_phase.t_ns
    await done.wait()
    return start[0]


async def _sleep_until(session, t_ns: int) -> None:
    await asyncio.sleep(max(0.0, (t_ns - session.now_ns()) / 1e9))


async def run_with_plan(session, plan: Ramp | SloSearch | None) -> None:
    """Run ``session``, steered by ``plan`` when there is one; the plan stops with the run."""
    if plan is None:
        await session.run()
        return
    steer = asyncio.ensure_future(plan.run(session))
    try:
        await session.run()
    finally:
        steer.cancel()
        await asyncio.gather(steer, return_exceptions=True)


def plan_for(config, phase: PhaseLookup, limit: int = 1024) -> Ramp | SloSearch | None:
    """The plan a RunConfig asks for; ``phase`` gives a phase's figures by id from the live
    summary (``SessionSummary.phase``)."""
    if config.ramp:
        return Ramp(tuple(config.ramp), config.phase_s)
    if config.slo:
        return SloSearch(parse_slo(config.slo), config.phase_s, phase,
                         start=config.concurrency, limit=limit)
    return None
