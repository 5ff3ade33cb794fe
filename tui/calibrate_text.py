"""The ``soaktop calibrate`` table: soaktop's timing error against the wire, one row a rate.

:mod:`soaktop.engine.metrics.fidelity` measures, one ``Fidelity`` per rate; this writes it for a
terminal, the header apart so that each row can be printed as soon as its rate is measured.
"""

from __future__ import annotations

from soaktop.engine.metrics.fidelity import QUANTILES, Fidelity

_METRICS = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"))


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
