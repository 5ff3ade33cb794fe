"""Two sessions side by side: each metric, the ratio, and whether the difference is beyond noise.

A soak result is usually read against another one (yesterday's build, the other GPU, twice the
concurrency), and two runs of the same thing never give the same p95. So for every latency
and speed that exists per request, the two sets of per-request values get a Mann–Whitney U
test (two-sided, normal approximation with the tie correction; numpy only): a difference
counts as beyond noise when p < 0.01. Whole-run rates (tokens/s, requests/s, error rate) have
one value per run, so they get the ratio and no verdict: one run per side cannot tell noise.

Alongside, the facts that make two records not comparable are listed: a different backend,
URL, model, device, concurrency, prompt or output length (soaktop's and the server's count),
soaktop version or GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from soaktop.engine.metrics.results import RunSummary
from soaktop.engine.metrics.summary import SessionSummary

ALPHA = 0.01

#: (label, the run's figure, per-request column, scale to the shown unit)
_PER_REQUEST: tuple[tuple[str, Callable[[RunSummary], float | None], str, float], ...] = (
    ("TTFT p50 (ms)", lambda r: r.ttft_ms.p50, "ttft_us", 1e-3),
    ("TTFT p95 (ms)", lambda r: r.ttft_ms.p95, "ttft_us", 1e-3),
    ("TPOT p50 (ms)", lambda r: r.tpot_ms.p50, "tpot_us", 1e-3),
    ("E2E p50 (ms)", lambda r: r.e2e_ms.p50, "e2e_us", 1e-3),
    ("output speed p50 (tok/s)", lambda r: r.output_speed_tps.p50, "speed_tps", 1.0),
)
#: (label, the run's figure)
_WHOLE_RUN: tuple[tuple[str, Callable[[RunSummary], float | None]], ...] = (
    ("output tokens/s", lambda r: r.output_tokens_per_s),
    ("requests/s", lambda r: r.requests_per_s),
    ("error rate", lambda r: r.error_rate),
    ("ITL p50 (ms)", lambda r: r.itl_ms.p50),  # from the run's histogram: no per-request values
    ("ITL p99 (ms)", lambda r: r.itl_ms.p99),
)


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p-value of the Mann–Whitney U test (normal approximation, ties corrected);
    ``None`` when either side has fewer than 8 values (the approximation is not good)."""
    n1, n2 = a.size, b.size
    if n1 < 8 or n2 < 8:
        return None
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size)
    sorted_values = both[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], both.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    ties = (ends - starts).astype(np.float64)
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    if variance <= 0:
        return 1.0  # every value equal
    z = (u1 - n1 * n2 / 2.0) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2.0))


@dataclass(frozen=True)
class Row:
    metric: str
    a: float | None
    b: float | None
    ratio: float | None  # b / a
    p_value: float | None
    verdict: str  # "beyond noise", "within noise", "one run each", "too few to test"


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def compare(a: SessionSummary, b: SessionSummary) -> list[Row]:
    ra, rb = a.result(), b.result()
    rows = []
    for label, figure, column, scale in _PER_REQUEST:
        va, vb = figure(ra), figure(rb)
        p = mann_whitney_p(a.request_values(column) * scale, b.request_values(column) * scale)
        verdict = ("too few to test" if p is None
                   else "beyond noise" if p < ALPHA else "within noise")
        rows.append(Row(label, va, vb, _ratio(va, vb), p, verdict))
    for label, figure in _WHOLE_RUN:
        va, vb = figure(ra), figure(rb)
        rows.append(Row(label, va, vb, _ratio(va, vb), None, "one run each"))
    return rows


def _facts(summary: SessionSummary) -> dict[str, Any]:
    header = summary.header
    if header is None:
        return {}
    config, env, backend = header.config, header.environment, header.backend
    nvidia = env.get("nvidia") or {}
    return {
        "backend": config.get("backend"), "url": config.get("url"), "model": config.get("model"),
        "server version": (backend.get("server") or {}).get("version"),
        "server": (backend.get("server") or {}).get("header"),
        "prompts": (header.workload or {}).get("prompts_sha256"),
        "prompt file": _prompt_file((header.workload or {}).get("prompt_file")),
        "trace": _prompt_file((header.workload or {}).get("trace_file")),
        "trace speed": (header.workload or {}).get("trace_speed"),
        "turns": config.get("turns", 1), "think time": config.get("think_time", 0.0),
        "unique prefix": config.get("unique_prefix", True),
        # keys newer than some records: their defaults, so an older record compares fairly
        "shared prefix": config.get("shared_prefix", 0),
        "rate": config.get("rate"), "arrival": config.get("arrival", "constant"),
        "device": backend.get("device"), "concurrency": config.get("concurrency"),
        "input tokens": config.get("input_tokens"), "output tokens": config.get("output_tokens"),
        # the server's count of them (its tokenizer), to the token: another tokenizer (model,
        # server) makes per-token figures of two runs measure different work
        "server input tokens": _whole(summary.input_tokens().server),
        "seed": config.get("seed"), "soaktop": env.get("soaktop_version"),
        "workers": config.get("workers") or 1,  # processes reading streams; older: 1
        "torch": env.get("torch"), "host": env.get("hostname"),
        "GPUs": [g.get("name") for g in nvidia.get("gpus", [])] or None,
    }


def _whole(value: float | None) -> int | None:
    return None if value is None else round(value)


def _prompt_file(info: dict[str, Any] | None) -> str | None:
    """A prompt file as two runs compare it: its name and the start of its sha256."""
    if not info:
        return None
    return f"{info.get('name')} ({str(info.get('sha256'))[:12]}, {info.get('size')} B)"


@dataclass(frozen=True)
class Difference:
    """One fact about how two sessions ran that is not the same in both."""

    fact: str
    a: Any
    b: Any


def differences(a: SessionSummary, b: SessionSummary) -> list[Difference]:
    """What differs between how the two sessions ran, in the order of the facts."""
    fa, fb = _facts(a), _facts(b)
    return [Difference(k, fa.get(k), fb.get(k)) for k in fa if fa.get(k) != fb.get(k)]
