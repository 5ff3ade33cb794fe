"""Runs that stop when they should: ``--stop-when`` over a sliding window, and an open loop's
over-saturation (soaktop.engine.load.saturation), judged as the run goes.

``--stop-when 'error_rate>5%,ttft_p95>30s'`` reads the grammar of ``--slo``
(:func:`soaktop.engine.load.plans.parse_slo`, the same metrics and units), and a term *fires*
when its comparison holds over the last ``--stop-window`` seconds (default 30 s): any term
firing ends the run (``session_end`` reason ``stop_condition``). The window's figures are the
summary's definitions (TTFT, TPOT, speed and E2E per request, ITL per gap, errors over the
requests that ended, warm-up and cancelled requests left out; tokens/s from the tokens
received), over the measured requests that *ended* in the window. No term is judged before
the window holds :data:`MIN_REQUESTS` (20) requests: one early failure is not a 100% error
rate, and one failure in 20 is exactly 5%, so ``error_rate>5%`` needs two.

Fixed memory: each request's figures go to ring buffers of :data:`CAPACITY` requests (the
percentiles of a window with more are those of its latest requests), ITL gaps to one of
65,536 only when a term asks for ITL, and tokens/s comes from the session's token counter
sampled each tick, never from a listener per token. A judgement is a few percentiles over at
most a window's values, once a tick (a second, or a twentieth of a short window).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from soaktop.engine.events import EndReason, Phase, RequestDone
from soaktop.engine.load.plans import Condition, parse_slo
from soaktop.engine.load.saturation import SaturationWatch
from soaktop.engine.metrics.live import Ring
from soaktop.engine.metrics.results import Distribution, SpeedDistribution
from soaktop.engine.metrics.stats import distribution, itl_gaps

STOP_WINDOW_S = 30.0  # --stop-window's default
MIN_REQUESTS = 20  # requests a window needs before a term is judged
CAPACITY = 8192  # requests whose figures are kept (per figure)
ITL_CAPACITY = 65_536  # ITL gaps kept, when a term asks for ITL
ON_SATURATION_DEFAULT = "warn"


def parse_stop_when(text: str) -> tuple[Condition, ...]:
    """``"error_rate>5%,ttft_p95>30s"``: the terms of ``--stop-when`` (the ``--slo`` grammar,
    any of ``>``, ``>=``, ``<``, ``<=``); a ConfigError naming the term it cannot read."""
    return parse_slo(text, what="--stop-when")


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """The figures a :class:`~soaktop.engine.load.plans.Condition` reads, as it reads them
    from a phase's summary, over the window."""

    requests: int
    error_rate: float
    output_tokens_per_s: float | None
    ttft_ms: Distribution
    itl_ms: Distribution
    tpot_ms: Distribution
    e2e_ms: Distribution
    output_speed_tps: SpeedDistribution


@dataclass(frozen=True, slots=True)
class Verdict:
    """A condition that fired: the reason to end with, its one line and the record's detail.
    ``stop`` False: a warning only (a mark and a notice; the run goes on)."""

    reason: EndReason
    stop: bool
    explanation: str
    detail: dict[str, Any]


def _value_text(metric: str, value: float) -> str:
    if metric == "error_rate":
        return f"{value * 100:.1f}%"
    if metric == "tokens_per_s" or metric.startswith("speed_"):
        return f"{value:,.1f} tokens/s"
    return f"{value:,.1f} ms"


class StopWhen:
    """The ``--stop-when`` terms over the last ``window_s`` of requests (a listener: feed it
    the session's events; then :meth:`check` once a tick)."""

    def __init__(self, conditions: tuple[Condition, ...], window_s: float = STOP_WINDOW_S,
                 min_requests: int = MIN_REQUESTS) -> None:
        self.conditions = conditions
        self.window_ns = int(window_s * 1e9)
        self.min_requests = min_requests
        self._failed = Ring(CAPACITY)  # 1.0 failed, 0.0 ok, per request that ended
        self._ttft, self._tpot = Ring(CAPACITY), Ring(CAPACITY)
        self._speed, self._e2e = Ring(CAPACITY), Ring(CAPACITY)
        wants_itl = any(c.metric.startswith("itl_") for c in conditions)
        self._itl = Ring(ITL_CAPACITY) if wants_itl else None
        self._tokens: deque[tuple[int, int]] = deque(maxlen=4096)  # (t, tokens so far)

    def add(self, event: Any) -> None:
        if type(event) is not RequestDone or event.warmup or event.finish_reason == "cancelled":
            return
        t = event.t_ns
        if event.error_class is not None:
            self._failed.append(t, 1.0)
            return
        self._failed.append(t, 0.0)
        arrivals, tokens = event.arrivals_us, event.arrival_tokens
        self._e2e.append(t, event.end_us / 1e3)
        if not arrivals:
            return
        self._ttft.append(t, arrivals[0] / 1e3)
        n = sum(tokens) if tokens else len(arrivals)
        span = arrivals[-1] - arrivals[0]
        if n >= 2:
            self._tpot.append(t, span / (n - 1) / 1e3)
            if span > 0:
                self._speed.append(t, (n - 1) / (span / 1e6))
        if self._itl is not None and len(arrivals) > 1:
            self._itl.extend(t, itl_gaps(np.asarray(arrivals), np.asarray(tokens) if tokens
                                         else None) / 1e3)

    def figures(self, now_ns: int, tokens_total: int) -> WindowFigures:
        """The window's figures at ``now_ns``; ``tokens_total``: content tokens received so
        far (the session's counter), for tokens/s."""
        since = now_ns - self.window_ns
        self._tokens.append((now_ns, tokens_total))
        while len(self._tokens) > 1 and self._tokens[1][0] <= since:
            self._tokens.popleft()
        t0, k0 = self._tokens[0]
        tps = (tokens_total - k0) / ((now_ns - t0) / 1e9) if now_ns > t0 else None
        failed = self._failed.since(since)
        return WindowFigures(
            requests=int(failed.size),
            error_rate=float(failed.mean()) if failed.size else 0.0,
            output_tokens_per_s=tps,
            ttft_ms=distribution(self._ttft.since(since)),
            itl_ms=distribution(self._itl.since(since)) if self._itl else Distribution(),
            tpot_ms=distribution(self._tpot.since(since)),
            e2e_ms=distribution(self._e2e.since(since)),
            output_speed_tps=distribution(self._speed.since(since), kind=SpeedDistribution),
        )

    def check(self, now_ns: int, tokens_total: int) -> Verdict | None:
        """The first term that holds over the window, as a verdict to stop; None when none
        does, or the window has fewer than ``min_requests`` requests."""
        window = self.figures(now_ns, tokens_total)
        if window.requests < self.min_requests:
            return None
        for condition in self.conditions:
            if condition.holds(window):  # type: ignore[arg-type]  # a phase's figures' shape
                value = condition.measure(window)  # type: ignore[arg-type]
                window_s = self.window_ns / 1e9
                line = (f"{condition.text}: {_value_text(condition.metric, value)} over the "
                        f"last {window_s:g} s ({window.requests} requests)")
                return Verdict(EndReason.STOP_CONDITION, True, line, {
                    "explanation": line, "condition": condition.text, "value": value,
                    "window_s": window_s, "requests": window.requests})
        return None


class RunWatch:
    """What a session judges as it runs, from its config: the ``--stop-when`` terms, and an
    open loop's over-saturation (``--on-saturation stop|warn``). A listener for the session's
    events; :meth:`tick` every :attr:`every_s` with what the load owes."""

    def __init__(self, config) -> None:
        window_s = config.stop_window_s
        #: A tick: a second, or a twentieth of a short window (a trend needs its samples).
        self.every_s = min(1.0, window_s / 20)
        self.stop_when = (StopWhen(parse_stop_when(config.stop_when), window_s)
                          if config.stop_when else None)
        self.on_saturation = config.on_saturation or ON_SATURATION_DEFAULT
        self.saturation = (SaturationWatch(window_s, self.every_s)
                           if config.rate is not None else None)
        self._rate = config.rate
        self._completed = 0  # requests that ended (ok or failed), warm-up included
        self._warned_phase: int | None = None
        self._phase_id = 0

    @property
    def needed(self) -> bool:
        return self.stop_when is not None or self.saturation is not None

    def add(self, event: Any) -> None:
        if type(event) is RequestDone:
            if event.finish_reason != "cancelled":
                self._completed += 1
            if self.stop_when is not None:
                self.stop_when.add(event)
        elif type(event) is Phase:
            self._rate, self._phase_id = event.rate, event.phase_id
            if self.saturation is not None:
                self.saturation.reset(self._completed)

    def tick(self, now_ns: int, owed: int, tokens_total: int) -> Verdict | None:
        """A verdict to act on now, or None: a stop condition, else saturation (once a phase
        when it only warns)."""
        if self.stop_when is not None:
            verdict = self.stop_when.check(now_ns, tokens_total)
            if verdict is not None:
                return verdict
        if self.saturation is None:
            return None
        self.saturation.sample(now_ns, owed, self._completed)
        if self._warned_phase == self._phase_id:
            return None
        found = self.saturation.judge(self._rate)
        if found is None:
            return None
        stop = self.on_saturation == "stop"
        if not stop:
            self._warned_phase = self._phase_id
        return Verdict(EndReason.SATURATED, stop, f"saturated: {found.explanation}",
                       found.detail())
