"""Metric definitions: pure functions over numpy arrays, one place for every number shown.

Times are integer microseconds from the moment a request was sent (its ``sent_ns``).

- TTFT: send -> first arrival that carried content.
- ITL: gaps between consecutive content tokens, token-weighted. When one arrival carries k
  tokens, the gap since the previous arrival is shared equally among those k tokens, so a
  stall shows in the tail and a multi-token chunk does not inflate it. Tokens that arrive with
  the very first token have no gap of their own and add no ITL value.
- TPOT: (t_last - t_first) / (n - 1) per request, n = output tokens; undefined for n < 2.
- Output speed (Artificial Analysis): (n - 1) / (t_last - t_first) tokens/s per request.
- E2E: send -> end of the response.

Quantiles of per-request values use numpy's default (linear interpolation); ITL over a whole
run comes from :class:`soaktop.engine.metrics.histogram.LogHistogram` (nearest rank, within 0.1%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soaktop.engine.metrics.results import Distribution, SpeedDistribution

QUANTILES = Distribution.QUANTILES
#: Output speed adds p25: the slow quarter of requests, what an SLO on speed bounds.
SPEED_QUANTILES = SpeedDistribution.QUANTILES


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    output_tokens: int
    ttft_us: float | None
    tpot_us: float | None
    speed_tps: float | None
    e2e_us: float
    itl_us: np.ndarray  # token-weighted gaps


def itl_gaps(arrivals_us: np.ndarray, arrival_tokens: np.ndarray | None = None) -> np.ndarray:
    """Token-weighted inter-token gaps in µs (see the module docstring)."""
    arrivals = np.asarray(arrivals_us, dtype=np.float64)
    if arrivals.size < 2:
        return np.empty(0, dtype=np.float64)
    gaps = np.diff(arrivals)
    if arrival_tokens is None or len(arrival_tokens) == 0:
        return gaps
    tokens = np.asarray(arrival_tokens, dtype=np.int64)[1:]
    return np.repeat(gaps / np.maximum(tokens, 1), np.maximum(tokens, 1))


def request_metrics(
    arrivals_us: np.ndarray, end_us: int, arrival_tokens: np.ndarray | None = None
) -> RequestMetrics:
    """Every per-request metric from one request's arrival offsets."""
    arrivals = np.asarray(arrivals_us, dtype=np.float64)
    if arrival_tokens is not None and len(arrival_tokens):
        n = int(np.sum(arrival_tokens))
    else:
        n = int(arrivals.size)
    ttft = float(arrivals[0]) if arrivals.size else None
    tpot = speed = None
    if n >= 2 and arrivals.size >= 1:
        span = float(arrivals[-1] - arrivals[0])
        tpot = span / (n - 1)
        speed = (n - 1) / (span / 1e6) if span > 0 else None
    return RequestMetrics(
        output_tokens=n,
        ttft_us=ttft,
        tpot_us=tpot,
        speed_tps=speed,
        e2e_us=float(end_us),
        itl_us=itl_gaps(arrivals, arrival_tokens),
    )


def distribution(values: np.ndarray, scale: float = 1.0,
                 kind: type[Distribution] = Distribution) -> Distribution:
    """The quantiles of ``kind`` (p50, p90, p95, p99; a :class:`SpeedDistribution` adds p25)
    and the mean of ``values * scale``, NaNs (undefined values) left out; all ``None`` when
    nothing is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return kind()
    qs = np.percentile(v, kind.QUANTILES) * scale
    return kind(**{f"p{q}": float(x) for q, x in zip(kind.QUANTILES, qs)},
                mean=float(v.mean() * scale))


def histogram_distribution(hist, scale: float = 1.0) -> Distribution:
    """The same :class:`Distribution`, from a :class:`LogHistogram`."""
    qs = hist.quantiles(QUANTILES)
    mean = hist.mean()
    return Distribution(**{f"p{q}": (None if x is None else x * scale)
                           for q, x in zip(QUANTILES, qs)},
                        mean=None if mean is None else mean * scale)


def rate(count: float, duration_s: float) -> float | None:
    """``count / duration_s``, or ``None`` when no time has passed."""
    return count / duration_s if duration_s > 0 else None
