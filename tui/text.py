"""Text output for runs without a screen: the periodic status line and the final table.

Pure formatting over :class:`~soaktop.engine.metrics.live.LiveSnapshot` and the typed summary
(:class:`~soaktop.engine.metrics.results.RunSummary`), so the same lines come from a live run and
a headless replay. The engine returns numbers and codes; the words are written here: how a run
ended, the soak verdict's sentence, the JSON's ``soak.explanation``. Text for the screen goes
through :func:`terminal_safe`; the CSV does not (it is data for a file).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from soaktop.engine.metrics.drift import ALPHA, MIN_JUDGED_S
from soaktop.engine.metrics.live import LiveSnapshot
from soaktop.engine.metrics.results import (
    CUT_SHORT,
    Distribution,
    DriftMeasure,
    Figures,
    RunSummary,
    SoakVerdict,
    SpeedDistribution,
    Verdict,
)
from soaktop.engine.telemetry.live import TelemetrySnapshot
from soaktop.engine.telemetry.reasons import THROTTLING

#: C0 and C1 controls but newline and tab, and the bidirectional controls, which make a
#: terminal show a line's characters in another order than they come (what "Trojan Source"
#: hides code with): untrusted text shows them as escapes.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                      r"\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline and tab, and every bidirectional
    control, written as an escape (``\\x1b``, ``\\u202e``).

    Model names, error classes, exporter reasons and whatever a record holds are untrusted: a
    terminal would obey an ESC sequence in them (recolour, retitle, clear the screen), so every
    line meant for a terminal goes through here.
    """
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def client_bound_text(reasons: tuple[str, ...]) -> str:
    """``CLIENT-BOUND (reads late): latencies are upper bounds``, or "" when not bound."""
    if not reasons:
        return ""
    return f"CLIENT-BOUND ({', '.join(reasons)}): latencies are upper bounds"


def rate_text(rate: float) -> str:
    """An open loop's rate in requests a second as a person reads it: 12.5, 8.17 (a trace's
    mean), 250, 1,200; never 8.17237."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def status_line(snap: LiveSnapshot, in_flight: int, concurrency: int,
                client_bound: tuple[str, ...] = (), rate: float | None = None) -> str:
    """``[  12.0s] in flight 4/4 | 812 tok/s | TTFT p50 15.2 ms p95 20.1 ms | ok 40 | errors 0``
    and, in a second the client was the bottleneck, why (``client_bound``: the reasons)."""
    errors = snap.requests_failed
    detail = ""
    if snap.errors:
        detail = " (" + ", ".join(f"{k} {v}" for k, v in sorted(snap.errors.items())) + ")"
    return terminal_safe(
        f"[{snap.t_ns / 1e9:7.1f}s] in flight {in_flight}"
        + (f"/{concurrency}" if rate is None else f" at {rate_text(rate)} req/s")
        + f" | {snap.tokens_per_s:,.0f} tok/s"
        f" | TTFT p50 {_ms(snap.ttft_p50_ms)} ms p95 {_ms(snap.ttft_p95_ms)} ms"
        f" | ok {snap.requests_ok} | errors {errors}{detail}"
        + telemetry_part(snap.telemetry)
        + (f" | {client_bound_text(client_bound)}" if client_bound else "")
    )


def gpu_label(key: str) -> str:
    """``GPU0`` here, ``node7 GPU3`` for a GPU scraped from node7 (keys of derived.gpu_key)."""
    host, _, index = key.rpartition("/")
    return f"{host} GPU{index}" if host else f"GPU{index}"


def _gpu_part(key: str, now) -> str:
    s = now.latest
    parts = [gpu_label(key)]
    if s.temperature_c is not None:
        margin = ("" if s.slowdown_temperature_c is None
                  else f" (margin {s.slowdown_temperature_c - s.temperature_c:.0f})")
        parts.append(f"{s.temperature_c:.0f}C{margin}")
    if s.sm_clock_mhz is not None:
        top = f"/{s.sm_clock_max_mhz:.0f}" if s.sm_clock_max_mhz else ""
        parts.append(f"{s.sm_clock_mhz:.0f}{top} MHz")
    if s.power_w is not None:
        top = f"/{s.power_limit_w:.0f}" if s.power_limit_w else ""
        parts.append(f"{s.power_w:.0f}{top} W")
    throttled = [r for r in (s.clock_event_reasons or ()) if r in THROTTLING]
    if throttled:
        parts.append("throttled: " + ",".join(throttled))
    return " ".join(parts)


def telemetry_part(t: TelemetrySnapshot) -> str:
    """`` | GPU0 64C (margin 23) 1755/1980 MHz 310/700 W | host CPU 45% soaktop 38% pid 4242
    110%``: the latest readings (the watched process last, when there is one)."""
    out = ""
    if len(t.gpus) <= 2:
        out += "".join(f" | {_gpu_part(key, now)}" for key, now in t.gpus.items())
    else:  # many GPUs: the hottest, the slowest clock and the total power
        temps = [n.latest.temperature_c for n in t.gpus.values() if n.latest.temperature_c]
        ratios = [n.window["sm_clock_ratio"]["min"] for n in t.gpus.values()
                  if n.window["sm_clock_ratio"]["min"] is not None]
        power = sum(n.latest.power_w or 0.0 for n in t.gpus.values())
        out += f" | {len(t.gpus)} GPUs max {_num(max(temps) if temps else None, 0)}C" \
               f" clock min {_num(min(ratios) * 100 if ratios else None, 0)}% {power:,.0f} W"
    for server in t.servers.values():
        kv = None if server.kv_cache_usage is None else server.kv_cache_usage * 100
        out += (f" | {server.engine} running {_num(server.requests_running, 0)}"
                f" waiting {_num(server.requests_waiting, 0)} kv {_num(kv, 0)}%")
    if t.host is not None:
        out += (f" | host CPU {_num(t.host.cpu_percent, 0)}%"
                f" soaktop {_num(t.host.soaktop_cpu_percent, 0)}%")
        if t.host.watched_pid is not None:
            out += f" pid {t.host.watched_pid} {_num(t.host.watched_cpu_percent, 0)}%"
    return out


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    width: int  # at least: a wider cell widens it
    cell: Callable[[Figures], str]


# in the order shown
_TABLE = (
    _Column("ok", 6, lambda s: str(s.requests_ok)),
    _Column("fail", 5, lambda s: str(s.requests_failed)),
    _Column("tok/s", 9, lambda s: _num(s.output_tokens_per_s)),
    _Column("req/s", 7, lambda s: _num(s.requests_per_s, 2)),
    _Column("TTFT p50", 9, lambda s: _ms(s.ttft_ms.p50)),
    _Column("TTFT p95", 9, lambda s: _ms(s.ttft_ms.p95)),
    _Column("TTFT p99", 9, lambda s: _ms(s.ttft_ms.p99)),
    _Column("ITL p50", 8, lambda s: _ms(s.itl_ms.p50)),
    _Column("ITL p95", 8, lambda s: _ms(s.itl_ms.p95)),
    _Column("ITL p99", 8, lambda s: _ms(s.itl_ms.p99)),
    _Column("TPOT p50", 9, lambda s: _ms(s.tpot_ms.p50)),
    _Column("E2E p50", 9, lambda s: _ms(s.e2e_ms.p50)),
    _Column("speed p50", 9, lambda s: _num(s.output_speed_tps.p50)),
)
#: Which columns a narrow terminal keeps, most wanted first: phase, concurrency and model
#: always (they say what a row is), then these while they fit.
_PRIORITY = ("ok", "fail", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "E2E p50", "ITL p95",
             "TPOT p50", "req/s", "speed p50", "TTFT p99", "ITL p99")
_MODEL_CHARS = 12  # a model name is cut to this in the table


def table_width(width: int | None = None) -> int:
    """``width``, or the terminal's (80 where there is none: a pipe, a file)."""
    return width if width is not None else shutil.get_terminal_size().columns


def _fit(line: str, width: int) -> list[str]:
    """``line``, wrapped to ``width`` with an indent on the lines it continues on."""
    if len(line) <= width:
        return [line]
    return textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]


def summary_table(summary: RunSummary, width: int | None = None) -> str:
    """Per-phase table, then the whole run, latencies in ms; then what else the run says.

    Every line fits ``width`` (the terminal's by default): the table keeps the columns that
    fit, most wanted first (see ``_PRIORITY``), and longer lines wrap.
    """
    width = table_width(width)
    # an open loop's phase holds no concurrency: its planned rate stands there ("r8.17")
    labels = [(f"{p.phase_id}{'w' if p.warmup else ''}",
               str(p.concurrency) if p.rate is None else f"r{rate_text(p.rate)}",
               terminal_safe(p.model)[:_MODEL_CHARS], p) for p in summary.phases]
    labels.append(("all", "", "", summary))
    fixed = [("phase", 5, [row[0] for row in labels]), ("conc", 4, [row[1] for row in labels]),
             ("model", 5, [row[2] for row in labels])]
    cells = {c.name: [c.cell(row[3]) for row in labels] for c in _TABLE}

    def column_width(name: str, least: int, values: list[str]) -> int:
        return max(least, len(name), *(len(v) for v in values))

    used = sum(column_width(*c) + 1 for c in fixed) - 1
    chosen = set()
    by_name = {c.name: c for c in _TABLE}
    for name in _PRIORITY:
        extra = column_width(name, by_name[name].width, cells[name]) + 1
        if used + extra <= width:
            chosen.add(name)
            used += extra
    columns = [*fixed, *((c.name, c.width, cells[c.name]) for c in _TABLE if c.name in chosen)]
    widths = [column_width(*c) for c in columns]
    lines = [" ".join(name.rjust(w) for (name, _, _), w in zip(columns, widths))]
    for i in range(len(labels)):
        lines.append(" ".join(values[i].rjust(w) for (_, _, values), w in zip(columns, widths)))
    left_out = [f"{summary.requests_warmup} warm-up requests not counted (phases marked w)"
                if summary.requests_warmup else "",
                f"{summary.requests_cancelled} cut off at the end"
                if summary.requests_cancelled else ""]
    if any(left_out):  # a trace run has no warm-up; nothing said of what did not happen
        lines.append("; ".join(part for part in left_out if part))
    lines.append(f"ended: {ended_text(summary)}")
    if summary.marks:
        shown = summary.marks[:MARKS_SHOWN]
        more = len(summary.marks) - len(shown)
        lines.append("marks: " + "; ".join(f"{t_s:.1f} s {note}" for t_s, note in shown)
                     + (f"; and {more} more (--json lists them)" if more > 0 else ""))
    if summary.errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary.errors.items()))
    attained = summary.output_length_attained
    if attained is not None and attained < 0.95:
        lines.append(f"warning: only {attained * 100:.0f}% of requests reached the output "
                     f"length asked for: the server stopped early (EOS), so per-token figures "
                     f"cover shorter outputs than configured")
    lines.extend(length_lines(summary))
    lines.extend(input_lines(summary))
    lines.extend(turn_lines(summary))
    if summary.client_bound_s:
        why = ", ".join(f"{reason} {seconds:.0f} s"
                        for reason, seconds in summary.client_bound_reasons.items())
        lines.append(f"client-bound for {summary.client_bound_s:.0f} s of the "
                     f"{_num(summary.duration_s, 0)} s measured ({why}): latencies then are "
                     f"upper bounds")
    lines.extend(plan_lines(summary))
    if summary.soak is not None:
        lines.append(f"soak verdict: {soak_explanation(summary.soak)}")
    lines.extend(telemetry_lines(summary))
    return "\n".join(part for line in lines for part in _fit(terminal_safe(line), width))


def length_lines(summary: RunSummary) -> list[str]:
    """``lengths in tokens, p50/p90/p99 (mean): input 98/138/148 (99.2), server 98/138/148
    (99.2); output 20/26/29 (20.1), server 20/26/29 (20.1)``: what the successful requests
    sent and got, by soaktop's count and, where it reported one, the server's; none without
    a successful request."""
    def spread(d: Distribution) -> str:
        return f"{d.p50:,.0f}/{d.p90:,.0f}/{d.p99:,.0f} ({d.mean:,.1f})"

    sent, got = summary.input_lengths, summary.output_lengths
    if sent.asked.p50 is None:
        return []
    parts = [f"input {spread(sent.asked)}"]
    if sent.server.p50 is not None:
        parts[-1] += f", server {spread(sent.server)}"
    if got.received.p50 is not None:
        parts.append(f"output {spread(got.received)}")
        if got.server.p50 is not None:
            parts[-1] += f", server {spread(got.server)}"
    return ["lengths in tokens, p50/p90/p99 (mean): " + "; ".join(parts)]


#: The server's count of the input tokens may differ from soaktop's by this share before the
#: summary warns (its tokenizer is not soaktop's: a chat template adds a few tokens).
INPUT_TOKENS_TOLERANCE = 0.10


def input_lines(summary: RunSummary) -> list[str]:
    """A warning where the server counted the prompts otherwise than soaktop (more than
    :data:`INPUT_TOKENS_TOLERANCE` apart), and the prefix cache's share of the prompt tokens,
    per phase, where the server reports it."""
    lines = []
    counted = summary.input_tokens
    ratio = counted.ratio
    if ratio is not None and abs(counted.server - counted.asked) > (
            INPUT_TOKENS_TOLERANCE * counted.asked):
        lines.append(
            f"warning: the server counted {ratio:.1f}x the input tokens asked "
            f"({counted.server:,.0f} vs {counted.asked:,.0f} a request): its tokenizer is not "
            f"the one soaktop counted with; give --tokenizer for the server's model, or read "
            f"input lengths and per-token figures accordingly")
    shares = [(p, p.cached_share) for p in summary.phases if p.cached_share is not None]
    if shares:
        lines.append("prefix cache: " + ", ".join(
            f"phase {p.phase_id}{'w' if p.warmup else ''} {_pct(share)}" for p, share in shares)
            + f" of prompt tokens served from it (run {_pct(summary.cached_share)})")
    return lines


def turn_lines(summary: RunSummary) -> list[str]:
    """Conversations (``--turns``): TTFT of first turns against later ones, which resend
    the history (where a prefix cache serves most of the prompt)."""
    split = summary.turns
    if split is None:
        return []

    def part(label: str, d: Distribution, n: int) -> str:
        if not n:  # none succeeded yet (a run of one turn a conversation has no later ones)
            return f"no {label}"
        return f"{label} p50 {_ms(d.p50)} ms, p95 {_ms(d.p95)} ms ({n:,} requests)"

    return ["conversations: TTFT " + part("first turns", split.first_ttft_ms, split.first)
            + "; " + part("later turns", split.later_ttft_ms, split.later)]


def ended_text(summary: RunSummary) -> str:
    """How the run ended, in words: the ``session_end`` reason, or why there was none; with
    its one line where it has one (``stop_condition: error_rate>5%: 12.5% over ...``)."""
    if summary.ended == CUT_SHORT:
        return (f"cut short at {summary.ended_at_s:.1f} s: no session_end (the writer was "
                f"killed, or recording stopped)")
    if summary.ended_explanation:
        return f"{summary.ended}: {summary.ended_explanation}"
    return summary.ended


MARKS_SHOWN = 5  # marks the summary table lists; --json has them all (the first 100)


def soak_explanation(soak: SoakVerdict) -> str:
    """``degrading: steady from 15 s after warm-up (MSER-5); the last 300 s against 300 s
    from 15 s: tokens/s ... (-0.1% [-0.3, +0.2], p=0.52, within noise), TTFT median ...``:
    the verdict, when steady state began, each measure's change with its interval, p and
    direction, and the GPU whose clock fell most, with its throttling reasons."""
    if soak.verdict is Verdict.TOO_SHORT:
        return (f"{soak.verdict}: {soak.measured_s:.0f} s measured after warm-up, "
                f"{_settling(soak)}; a verdict needs {MIN_JUDGED_S} s of steady running")
    m = soak.measures
    parts = [_measure_text("tokens/s", m.get("tokens_per_s"), "", 0),
             _measure_text("TTFT median", m.get("ttft_ms"), " ms", 1),
             _measure_text("ITL median", m.get("itl_ms"), " ms", 2)]
    text = (f"{soak.verdict}: {_settling(soak)}; the last {soak.window_s:.0f} s against "
            f"{soak.window_s:.0f} s from {soak.early_from_s:.0f} s: "
            + ", ".join(p for p in parts if p))
    gpu = soak.gpus.get(soak.worst_gpu) if soak.worst_gpu is not None else None
    if gpu is None:
        return text + "; no GPU telemetry to tell throttling from other causes"
    name = f" ({gpu.name})" if gpu.name else ""
    if not gpu.held_back:
        who = f"worst GPU {gpu.key}{name}"
    elif soak.verdict is Verdict.THROTTLED:
        who = f"throttled GPU {gpu.key}{name}"
    else:  # its clock fell, but tokens/s and latency held: not to be read as "throttled"
        who = f"GPU {gpu.key}{name} held back (no loss beyond the thresholds)"
    text += (f"; {who}: "
             + ", ".join(p for p in (_measure_text("SM clock", gpu.sm_clock_mhz, " MHz", 0),
                                     _measure_text("temperature", gpu.temperature_c, " C", 0,
                                                   relative=False)) if p))
    if gpu.throttle_reasons:
        text += "; throttling then: " + ", ".join(
            f"{r} {f * 100:.0f}% of samples" for r, f in gpu.throttle_reasons.items())
    elif not gpu.reasons_reported:
        text += "; its clock-event reasons are not reported"
    return text


def _settling(soak: SoakVerdict) -> str:
    if soak.settled:
        return f"steady from {soak.steady_state_s:.0f} s after warm-up (MSER-5)"
    if not soak.steady_state_s:  # under two 5 s batches: nothing to search for it in
        return "too short to look for a steady state"
    return f"no steady state within the first {soak.steady_state_s:.0f} s (still settling)"


def _measure_text(label: str, m: DriftMeasure | None, unit: str, digits: int,
                  relative: bool = True) -> str:
    """``TTFT median 50.0 -> 57.5 ms (+15.0% [+14.8, +15.2], p<0.001, worse)``; "" where
    the measure has no values."""
    if m is None or m.change is None or m.early is None or m.late is None:
        return ""
    if relative:
        size = f"{m.change * 100:+.1f}% [{m.low * 100:+.1f}, {m.high * 100:+.1f}]"
    else:
        size = f"{m.change:+.1f}{unit} [{m.low:+.1f}, {m.high:+.1f}]"
    if m.p_value is None:
        p, word = "too few to test", ""
    else:
        p = "p<0.001" if m.p_value < 0.001 else f"p={m.p_value:.2g}"
        word = f", {m.direction}" if m.p_value < ALPHA else ", within noise"
    return f"{label} {m.early:,.{digits}f} -> {m.late:,.{digits}f}{unit} ({size}, {p}{word})"


def summary_document(summary: RunSummary) -> dict[str, Any]:
    """The summary as ``--json`` prints it: the engine's JSON form, and the soak verdict's
    sentence beside its figures (``soak.explanation``)."""
    out = summary.to_dict()
    if summary.soak is not None:
        out["soak"]["explanation"] = soak_explanation(summary.soak)
    return out


def plan_lines(summary: RunSummary) -> list[str]:
    """The ramp table, or the SLO search's steps and answer, where the run had one."""
    lines = []
    if summary.ramp:
        lines.append("ramp:  conc     tok/s  speed p25  speed p50  TTFT p95  errors  gain")
        for r in summary.ramp:
            gain = "" if r.gain is None else f"{r.gain * 100:+.0f}%"
            lines.append(
                f"      {r.concurrency:>5} {_num(r.tokens_per_s):>9} "
                f"{_num(r.speed_p25_tps):>10} {_num(r.speed_p50_tps):>10} "
                f"{_ms(r.ttft_p95_ms):>9} {r.error_rate * 100:>6.1f}% {gain:>5}"
                + ("  plateau" if r.plateau else ""))
    slo = summary.slo
    if slo is not None and slo.error is not None:
        lines.append(f"SLO {slo.slo}: {slo.error}")
    elif slo is not None:
        for step in slo.steps:
            values = ", ".join(f"{k} {_num(v)}" for k, v in step.values.items())
            lines.append(f"SLO step: concurrency {step.concurrency:>4} "
                         f"{'met' if step.met else 'missed'} ({values})")
        lines.append(f"SLO {slo.slo}: " + (
            f"highest concurrency that meets it: {slo.answer} (decided by phases "
            f"{', '.join(map(str, slo.deciding_phases))})" if slo.answer is not None
            else "not met at any concurrency tried"))
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _gpu_line(label: str, key: str, g: dict[str, Any]) -> str:
    throttled = ", ".join(f"{r} {_pct(f)}" for r, f in g["clock_event_fraction"].items()
                          if r in THROTTLING and f > 0)
    return (
        f"{label} {gpu_label(key)}: {_num(g['temperature_c']['mean'], 0)}C mean,"
        f" {_num(g['temperature_c']['max'], 0)}C max"
        f" (margin to slowdown {_num(g['temperature_margin_c']['min'], 0)}C);"
        f" SM clock {_pct(g['sm_clock_ratio']['mean'])} of max"
        f" (lowest {_pct(g['sm_clock_ratio']['min'])});"
        f" {_num(g['power_w']['mean'], 0)} W ({_pct(g['power_ratio']['mean'])} of limit);"
        f" throttled: {throttled or 'never'}"
        + (f" (from {g['clock_events_from']})" if g["clock_events_from"] else "")
    )


def telemetry_lines(summary: RunSummary) -> list[str]:
    """Per phase and GPU: heat, clocks, power, throttling; energy per token; host; sources."""
    lines = []
    for p in summary.phases:
        label = f"phase {p.phase_id}{'w' if p.warmup else ''}"
        for key, g in p.gpus.items():
            lines.append(_gpu_line(label, key, g))
        if p.energy_j_per_token is not None:
            lines.append(f"{label}: {_num(p.energy_j_per_token, 3)} J/token,"
                         f" {_num(p.tokens_per_s_per_w, 2)} tok/s per W"
                         f" ({_num(p.power_w, 0)} W for all GPUs)")
        for name, server in p.servers.items():
            lines.append(
                f"{label} server {name}: running {_num(server['requests_running']['mean'])},"
                f" waiting {_num(server['requests_waiting']['mean'])},"
                f" KV cache {_pct(server['kv_cache_usage']['mean'])} mean,"
                f" {_num(server['generation_tokens_per_s'])} tok/s by its own count"
            )
    host = summary.host
    if host:
        rss = host["soaktop_rss_bytes"]["max"]
        watched = host["watched_rss_bytes"]["max"]
        lines.append(
            f"host: CPU {_num(host['cpu_percent']['mean'], 0)}% mean;"
            f" soaktop {_num(host['soaktop_cpu_percent']['mean'], 0)}% of a core,"
            f" RSS {_num(None if rss is None else rss / 2**20, 0)} MiB max"
            + ("" if watched is None else
               f"; watched process {_num(host['watched_cpu_percent']['mean'], 0)}% of a core,"
               f" RSS {watched / 2**20:.0f} MiB max")
        )
    for item in summary.telemetry:
        if not item.available:
            where = item.source + (f" GPU {item.gpu_index}" if item.gpu_index is not None
                                   else "")
            lines.append(f"telemetry: {where} unavailable: {item.reason}")
    return lines


_CSV_SCOPE = ("scope", "phase_id", "concurrency", "rate", "model", "backend", "reason",
              "warmup", "start_s")
_CSV_COUNTS = ("requests_ok", "requests_failed", "requests_cancelled", "error_rate",
               "output_tokens", "duration_s", "output_tokens_per_s", "requests_per_s")
_CSV_DISTRIBUTIONS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "output_speed_tps",
                      "server_speed_tps")
_CSV_ENERGY = ("power_w", "energy_j_per_token", "tokens_per_s_per_w")
_CSV_INPUT = ("input_tokens_asked", "input_tokens_server", "cached_share")
#: The per-request length distributions (``--input-tokens 50-150``, a prompt file, a trace):
#: ``input_lengths_asked_p50`` is ``input_lengths.asked.p50``.
_CSV_LENGTHS = (("input_lengths", "asked"), ("input_lengths", "server"),
                ("output_lengths", "received"), ("output_lengths", "server"))


def summary_csv(summary: RunSummary) -> str:
    """The summary as CSV for a spreadsheet: one row for the run, one per phase.

    The same numbers as ``--json`` (``repr`` of each float, so nothing is rounded away),
    flattened: ``ttft_ms_p95`` is ``ttft_ms.p95``; empty where there is no value. Text cells
    (model names) are written as they are: the file is data, and a spreadsheet is no terminal.
    """
    def quantiles(d: str) -> tuple[str, ...]:  # output speed has a p25 too
        kind = SpeedDistribution if d == "output_speed_tps" else Distribution
        return (*(f"p{q}" for q in kind.QUANTILES), "mean")

    lengths = quantiles("lengths")  # a plain Distribution's
    columns = [*_CSV_SCOPE, *_CSV_COUNTS,
               *(f"{d}_{q}" for d in _CSV_DISTRIBUTIONS for q in quantiles(d)), *_CSV_ENERGY,
               *_CSV_INPUT, *(f"{a}_{b}_{q}" for a, b in _CSV_LENGTHS for q in lengths)]

    def row(scope: str, s: Figures) -> dict[str, Any]:
        out = {"scope": scope, **{k: getattr(s, k, None) for k in (*_CSV_SCOPE[1:],
                                                                   *_CSV_COUNTS, *_CSV_ENERGY)}}
        for d in _CSV_DISTRIBUTIONS:
            values = getattr(s, d).to_dict()
            for q in quantiles(d):
                out[f"{d}_{q}"] = values[q]
        out["input_tokens_asked"] = s.input_tokens.asked
        out["input_tokens_server"] = s.input_tokens.server
        out["cached_share"] = s.cached_share
        for a, b in _CSV_LENGTHS:
            values = getattr(getattr(s, a), b).to_dict()
            for q in lengths:
                out[f"{a}_{b}_{q}"] = values[q]
        return {k: ("" if v is None else v.value if isinstance(v, Enum) else v)
                for k, v in out.items()}

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerow(row("run", summary))
    for phase in summary.phases:
        writer.writerow(row("phase", phase))
    return buffer.getvalue()


def difference_lines(differences: list) -> list[str]:
    """How two runs ran differently, one line each (``compare``'s ``ran differently``)."""
    return [f"{d.fact}: {d.a!r} vs {d.b!r}" for d in differences]
