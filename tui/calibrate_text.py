"""The ``soaktop calibrate`` table: soaktop's timing error against the wire, one row a rate.

:mod:`soaktop.engine.metrics.fidelity` measures, one ``Fidelity`` per rate; this writes it for a
terminal, the header apart so that each row can be printed as soon as its rate is measured.
With several worker counts (``--workers 1,2``) the rows put the counts side by side, p99 only,
so that the one question they answer, how many readers this box needs, fits on one line.
"""

from __future__ import annotations

from soaktop.engine.metrics.fidelity import QUANTILES, Fidelity

_METRICS = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"))
_CELL = f"{'got':>7} {'TTFT p99':>8} {'ITL p99':>8} {'bound':>5}"


def calibration_header() -> str:
    head = " ".join(f"{name} p{q:<2}" for name, _ in _METRICS for q in QUANTILES)
    return f"{'got tok/s':>9} {'reqs':>5}  {head}  client-bound"


def calibration_row(f: Fidelity) -> str:
    """One rate: tokens/s received, requests compared, the error (ms) at each quantile of TTFT
    and ITL, and the seconds soaktop flagged itself client-bound."""
    errors = [f.error_ms(metric, q) for _, metric in _METRICS for q in QUANTILES]
    return (f"{f.tokens_per_s:>9,.0f} {f.requests:>5}  " + " ".join(f"{e:>+8.3f}" for e in errors)
            + f"  {f.client_bound_s:>5.0f} s")


def calibration_table(results: list[Fidelity]) -> list[str]:
    """The header, then a row per rate."""
    return [calibration_header(), *(calibration_row(f) for f in results)]


def workers_name(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


def workers_header(counts: list[int]) -> list[str]:
    """Two lines: each worker count over its columns, then the columns' names."""
    return [(f"{'asked':>7} | "
             + " | ".join(f"{workers_name(n):<{len(_CELL)}}" for n in counts)).rstrip(),
            f"{'tok/s':>7} | " + " | ".join(_CELL for _ in counts)]


def workers_row(rate: float, results: list[Fidelity]) -> str:
    """One rate asked: per worker count, the tokens/s received, the TTFT and ITL p99 errors
    (ms) and the seconds soaktop flagged itself client-bound."""
    return f"{rate:>7,.0f} | " + " | ".join(
        f"{f.tokens_per_s:>7,.0f} {f.error_ms('ttft_ms', 99):>+8.3f} "
        f"{f.error_ms('itl_ms', 99):>+8.3f} {f.client_bound_s:>3.0f} s" for f in results)


def trusted_line(trusted: dict[int, float | None]) -> str:
    """``trusted to 1 ms: 1 worker 5,691 tok/s, 2 workers 7,409 tok/s`` (``none`` where no
    rate kept both p99 errors under 1 ms)."""
    return "trusted to 1 ms: " + ", ".join(
        f"{workers_name(n)} " + ("none" if rate is None else f"{rate:,.0f} tok/s")
        for n, rate in trusted.items())


def processes_note(processes: dict[float, int]) -> str:
    """How many loopback processes served each rate asked, for the header: ``1 loopback
    process`` when one served all, else ``loopback processes: 1 at 1,000-4,000 tok/s, 2 at
    6,000-8,000 tok/s``."""
    groups: dict[int, list[float]] = {}
    for rate, p in sorted(processes.items()):
        groups.setdefault(p, []).append(rate)
    if len(groups) == 1:
        (p,) = groups
        return f"{p} loopback process{'es' if p > 1 else ''}"
    spans = [f"{p} at {rates[0]:,.0f}" + (f"-{rates[-1]:,.0f}" if len(rates) > 1 else "")
             for p, rates in groups.items()]
    return "loopback processes: " + ", ".join(spans) + " tok/s"
