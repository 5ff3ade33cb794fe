"""Text output for runs without a screen: the periodic status line and the final table.

Pure formatting over :class:`~engine.live.LiveSnapshot` and the summary dictionary, so the
same lines come from a live run and (later) a headless replay.
"""

from __future__ import annotations

from typing import Any

from engine.live import LiveSnapshot


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def status_line(snap: LiveSnapshot, in_flight: int, concurrency: int) -> str:
    """``[  12.0s] in flight 4/4 | 812 tok/s | TTFT p50 15.2 ms p95 20.1 ms | ok 40 | errors 0``"""
    errors = snap.requests_failed
    detail = ""
    if snap.errors:
        detail = " (" + ", ".join(f"{k} {v}" for k, v in sorted(snap.errors.items())) + ")"
    return (
        f"[{snap.t_ns / 1e9:7.1f}s] in flight {in_flight}/{concurrency}"
        f" | {snap.tokens_per_s:,.0f} tok/s"
        f" | TTFT p50 {_ms(snap.ttft_p50_ms)} ms p95 {_ms(snap.ttft_p95_ms)} ms"
        f" | ok {snap.requests_ok} | errors {errors}{detail}"
    )


_COLUMNS = (
    ("phase", 5), ("conc", 4), ("model", 12), ("ok", 6), ("fail", 5), ("tok/s", 9),
    ("req/s", 7), ("TTFT p50", 9), ("TTFT p95", 9), ("ITL p50", 8), ("ITL p95", 8),
    ("TPOT p50", 9), ("E2E p50", 9),
)


def _row(label: str, concurrency: Any, model: str, s: dict[str, Any]) -> list[str]:
    return [
        label, str(concurrency), model[:12], str(s["requests_ok"]), str(s["requests_failed"]),
        _num(s["output_tokens_per_s"]), _num(s["requests_per_s"], 2),
        _ms(s["ttft_ms"]["p50"]), _ms(s["ttft_ms"]["p95"]), _ms(s["itl_ms"]["p50"]),
        _ms(s["itl_ms"]["p95"]), _ms(s["tpot_ms"]["p50"]), _ms(s["e2e_ms"]["p50"]),
    ]


def summary_table(summary: dict[str, Any]) -> str:
    """Per-phase table, then the whole run; latencies in ms."""
    rows = []
    for p in summary["phases"]:
        label = f"{p['phase_id']}{'w' if p['warmup'] else ''}"
        rows.append(_row(label, p["concurrency"], p["model"], p))
    rows.append(_row("all", "", "", summary))
    lines = [" ".join(name.rjust(width) for name, width in _COLUMNS)]
    for row in rows:
        lines.append(" ".join(cell.rjust(width) for cell, (_, width) in zip(row, _COLUMNS)))
    lines.append(
        f"{summary['requests_warmup']} warm-up requests not counted (phases marked w);"
        f" {summary['requests_cancelled']} cut off by the end of the run;"
        f" ended: {summary['ended']}"
    )
    if summary["errors"]:
        lines.append(
            "errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items())
        )
    return "\n".join(lines)
