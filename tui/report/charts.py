"""The report's charts, drawn with matplotlib from :class:`~soaktop.tui.report.series.RecordSeries`.

One set of figures serves the page (inlined as SVG) and ``--png``/``--svg`` (saved as files),
so the images and the page never disagree. Every chart over time has the same width, margins
and time range: stacked on the page they read as one shared time axis, phases shaded and
marks drawn on each. Several records (an overlay) share the axes, one colour each, on the
time since each one's start.

Strings from a record (model names, error classes, marks) are untrusted: each goes through
:func:`record_text` (control characters written as escapes) and is drawn with math text
off (``text.parse_math``), so a ``$`` is a dollar and nothing in a name is interpreted.
Figures are made with :class:`matplotlib.figure.Figure`, never pyplot: no global figure
state, so a report can be drawn on a worker thread of the dashboard.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from soaktop.tui.report.series import EDGES_MS, MIDDLES_MS, RecordSeries
from soaktop.tui.text import rate_text, terminal_safe

WIDTH_IN, HEIGHT_IN = 11.0, 2.5
#: Axes position in the figure: the same for every time chart, so their time axes line up.
LEFT, RIGHT, BOTTOM, TOP = 0.07, 0.80, 0.18, 0.88
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
REASON_COLOURS = {"sw_power_cap": "#ff7f0e", "hw_slowdown": "#d62728", "sw_thermal": "#e377c2",
                  "hw_thermal": "#8b0000", "hw_power_brake": "#9467bd", "gpu_idle": "#c7c7c7",
                  "applications_clocks": "#aec7e8", "sync_boost": "#98df8a",
                  "display_clocks": "#dbdb8d"}
RC = {"text.parse_math": False, "svg.fonttype": "none", "font.size": 9,
      "axes.titlesize": 10, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3}


def record_text(value: object, limit: int = 60) -> str:
    """A record's string as a chart shows it: control characters escaped, cut to ``limit``."""
    text = terminal_safe(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclasses.dataclass
class Chart:
    """One chart: ``key`` names it (its file name, its element id on the page)."""

    key: str
    title: str
    section: str  # "time", "distribution", "plan"
    figure: object  # a matplotlib Figure

    def svg(self) -> str:
        """The figure as an ``<svg>`` element (no XML prologue) for inlining in HTML."""
        import matplotlib

        buffer = io.StringIO()
        with matplotlib.rc_context({**RC, "svg.hashsalt": self.key}):
            self.figure.savefig(buffer, format="svg")
        text = buffer.getvalue()
        return text[text.index("<svg"):]

    def save(self, path, fmt: str) -> None:
        import matplotlib

        with matplotlib.rc_context({**RC, "svg.hashsalt": self.key}):
            self.figure.savefig(path, format=fmt, dpi=110)


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def _figure(height: float = HEIGHT_IN):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height))
    # the margins stay the same in inches whatever the height: the axes line up
    bottom, top = BOTTOM * HEIGHT_IN / height, 1 - (1 - TOP) * HEIGHT_IN / height
    ax = fig.add_axes((LEFT, bottom, RIGHT - LEFT, top - bottom))
    return fig, ax


def _log_axis(ax, which: str) -> None:
    """A log scale labelled in plain numbers (1, 10, 100): math text is off (see above), and
    matplotlib's own log labels are math text."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labels in one decade
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _record_label(s: RecordSeries, i: int) -> str:
    return f"{chr(ord('A') + i)}: {record_text(s.path.name, 40)}"


class _TimeChart:
    """Draws one chart over time for one or several records, phases and marks on it."""

    def __init__(self, records: list[RecordSeries]) -> None:
        self.records = records
        self.overlay = len(records) > 1
        self.end_s = max(max(r.duration_s for r in records), 1.0)

    def colour(self, i: int, j: int = 0) -> str:
        return PALETTE[(i if self.overlay else j) % len(PALETTE)]

    def frame(self, title: str, ylabel: str, height: float = HEIGHT_IN):
        fig, ax = _figure(height)
        ax.set_title(title, loc="left")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, self.end_s)
        ax.set_xlabel("seconds since the start of the run")
        for i, r in enumerate(self.records):
            measured = 0
            for k, span in enumerate(r.phases):
                if self.overlay:
                    if k:
                        ax.axvline(span.start_s, color=self.colour(i), lw=0.6, alpha=0.5)
                    continue
                measured += not span.warmup
                if span.warmup or measured % 2 == 0:  # every other measured phase shaded
                    ax.axvspan(span.start_s, span.end_s, lw=0, zorder=0,
                               color="#d0d0d0" if span.warmup else "#eeeeee")
            for t_s, _note in r.marks:
                ax.axvline(t_s, color=self.colour(i) if self.overlay else "#7b1fa2",
                           ls="--", lw=0.9, zorder=3)
        return fig, ax

    def annotate_phases(self, ax) -> None:
        """Phase labels and mark notes along the top of the first chart."""
        if self.overlay:
            return
        r = self.records[0]
        room = self.end_s * 0.08  # a label needs about this much of the axis
        last = np.inf
        for span in reversed(r.phases):  # the later phase wins (a warm-up gives way)
            if last - span.start_s < room:
                continue  # too close to the next one: its label would cover this one
            last = span.start_s
            load = (f"{rate_text(span.rate)}/s" if span.rate is not None  # an open loop
                    else f"conc {span.concurrency}")
            label = f"phase {span.phase_id}{'w' if span.warmup else ''}: {load}"
            ax.text(span.start_s, 1.0, label, transform=ax.get_xaxis_transform(),
                    fontsize=7, va="bottom", ha="left", color="#555555", clip_on=False)
        ax.set_title(ax.get_title(loc="left"), loc="left", pad=11)
        for t_s, note in r.marks:
            ax.text(t_s, 0.97, record_text(note, 40), transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", ha="left", color="#7b1fa2", rotation=0,
                    bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})

    def lines(self, key: str, title: str, ylabel: str,
              rows: Callable[[RecordSeries], list[tuple[str, str, np.ndarray, dict]]],
              log: bool = False) -> Chart:
        fig, ax = self.frame(title, ylabel)
        for i, r in enumerate(self.records):
            t = r.times_s
            for j, (label, _name, values, style) in enumerate(rows(r)):
                style = dict(style)
                overlay_ls = style.pop("overlay_ls", "-")  # one colour a record: p50/p95/p99
                if self.overlay:                           # told apart by their line style
                    label = f"{_record_label(r, i)} {label}".strip()
                    style["ls"] = overlay_ls
                ax.plot(t, values, color=style.pop("color", self.colour(i, j)), lw=1.0,
                        label=label, **style)
        if log:
            _log_axis(ax, "y")
        else:
            ax.set_ylim(bottom=0)
        _legend(ax)
        return Chart(key, title, "time", fig)


def _quantile_rows(prefix: str) -> Callable[[RecordSeries], list]:
    def rows(r: RecordSeries) -> list:
        return [(f"p{q}", f"{prefix}_p{q}_ms", r.series[f"{prefix}_p{q}_ms"],
                 {"alpha": a, "overlay_ls": ls})
                for q, a, ls in ((50, 1.0, "-"), (95, 0.8, "--"), (99, 0.6, ":"))]
    return rows


def time_charts(records: list[RecordSeries]) -> list[Chart]:
    tc = _TimeChart(records)
    charts = []

    ttft = tc.lines("ttft", "TTFT (time to first token) per second", "ms",
                    _quantile_rows("ttft"))
    tc.annotate_phases(ttft.figure.axes[0])
    charts.append(ttft)
    charts.append(tc.lines("tokens_per_s", "Output tokens/s (all requests)", "tokens/s",
                           lambda r: [("tokens/s", "", r.series["tokens_per_s"], {})]))
    charts.append(tc.lines("itl", "ITL (inter-token latency) per second", "ms",
                           _quantile_rows("itl")))
    charts.append(_errors_chart(tc))
    charts.append(tc.lines("in_flight", "Requests in flight", "requests",
                           lambda r: [("in flight", "", r.series["in_flight"], {})]))
    charts.extend(_gpu_charts(tc))
    charts.append(tc.lines(
        "host_cpu", "Host CPU", "% (soaktop: of one core)",
        lambda r: [("host CPU %", "", r.series["host_cpu_percent"], {}),
                   ("soaktop CPU %", "", r.series["soaktop_cpu_percent"], {"ls": "--"})]))
    charts.append(_client_chart(tc))
    return charts


def _errors_chart(tc: _TimeChart) -> Chart:
    fig, ax = tc.frame("Errors by class (failed requests a second)", "requests/s")
    for i, r in enumerate(tc.records):
        t = r.times_s
        bottom = np.zeros(t.size)
        widths = r.widths_s  # a last bucket the run only partly reached: its own width
        for j, (name, counts) in enumerate(r.errors.items()):
            rate = counts / widths
            label = record_text(name, 40)
            if tc.overlay:
                label = f"{_record_label(r, i)} {label}"
            ax.bar(t, rate, width=r.step_s, bottom=bottom, align="center", label=label,
                   color=PALETTE[(j + 1 + i) % len(PALETTE)], alpha=0.8 if not i else 0.5)
            bottom = bottom + rate
    if not any(r.errors for r in tc.records):
        ax.text(0.5, 0.5, "no failed requests", transform=ax.transAxes, ha="center",
                va="center", color="#2ca02c")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return Chart("errors", "Errors by class", "time", fig)


def _gpu_rows(r: RecordSeries, name: str) -> list:
    return [(record_text(label, 30), name, values[name], {}) for label, values in r.gpus.items()]


def _gpu_charts(tc: _TimeChart) -> list[Chart]:
    charts = []
    has_gpu = any(r.gpus for r in tc.records)

    def with_limit(key: str, title: str, ylabel: str, name: str, limit: str,
                   limit_label: str, ratio: bool = False) -> Chart:
        def rows(r: RecordSeries) -> list:
            out = []
            for label, values in r.gpus.items():
                y = values[name]
                top = r.limits.get(label, {}).get(limit)
                if ratio:
                    y = y / top * 100 if top else y * np.nan
                out.append((record_text(label, 30), name, y, {}))
            return out

        chart = tc.lines(key, title, ylabel, rows)
        ax = chart.figure.axes[0]
        drawn = set()
        for i, r in enumerate(tc.records):
            for label in r.gpus:
                top = r.limits.get(label, {}).get(limit)
                if top is None:
                    continue
                value = 100.0 if ratio else top
                if value in drawn:
                    continue
                drawn.add(value)
                ax.axhline(value, color="#d62728" if not tc.overlay else tc.colour(i), ls=":",
                           lw=1.2, label=f"{limit_label} ({top:g})")
        if not has_gpu:
            ax.text(0.5, 0.5, "no GPU telemetry in this record", transform=ax.transAxes,
                    ha="center", va="center", color="#777777")
        _legend(ax)
        return chart

    charts.append(with_limit("gpu_temperature", "GPU temperature, against its slowdown "
                             "threshold", "°C", "temperature_c", "slowdown_temperature_c",
                             "slowdown"))
    charts.append(with_limit("gpu_sm_clock", "GPU SM clock, % of its maximum", "% of max",
                             "sm_clock_mhz", "sm_clock_max_mhz", "max MHz", ratio=True))
    charts.append(with_limit("gpu_power", "GPU power, against its limit", "W", "power_w",
                             "power_limit_w", "limit W"))
    memory = tc.lines("gpu_memory", "GPU memory used", "GiB",
                      lambda r: _gpu_rows(r, "memory_gib"))
    if not has_gpu:
        memory.figure.axes[0].text(0.5, 0.5, "no GPU telemetry in this record",
                                   transform=memory.figure.axes[0].transAxes, ha="center",
                                   va="center", color="#777777")
    charts.append(memory)
    charts.append(_throttle_chart(tc))
    return charts


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in ``on`` as (first, past-the-last) indices: one band each."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _throttle_chart(tc: _TimeChart) -> Chart:
    """Clock-event reasons as coloured bands: a row per GPU (and record), a colour per reason,
    drawn where any sample of the bucket had it (darker the larger the share)."""
    rows = [(i, r, label) for i, r in enumerate(tc.records) for label in r.gpus]
    height = max(HEIGHT_IN, 0.9 + 0.22 * len(rows))
    fig, ax = tc.frame("GPU clock-event (throttle) reasons", "", height=height)
    ax.grid(False)
    seen = set()
    for y, (_i, r, label) in enumerate(rows):
        t0 = r.times_s - r.step_s / 2
        for reason, share in r.reasons.get(label, {}).items():
            runs = _runs(np.nan_to_num(share) > 0)
            if not runs:
                continue
            colour = REASON_COLOURS.get(reason, "#444444")
            ax.broken_barh([(float(t0[a]), float((b - a) * r.step_s)) for a, b in runs],
                           (y + 0.1, 0.8),
                           color=colour, lw=0,
                           label=None if reason in seen else record_text(reason, 30))
            seen.add(reason)
    ax.set_yticks(range(len(rows)))
    ax.set_yticks([y + 0.5 for y in range(len(rows))],
                  [(f"{chr(ord('A') + i)} " if tc.overlay else "") + record_text(label, 24)
                   for i, _, label in rows])
    ax.set_ylim(0, max(1, len(rows)))
    if not rows:
        ax.text(0.5, 0.5, "no GPU telemetry in this record", transform=ax.transAxes,
                ha="center", va="center", color="#777777")
    elif not seen:
        ax.text(0.5, 0.5, "no clock-event reason reported", transform=ax.transAxes,
                ha="center", va="center", color="#2ca02c")
    _legend(ax)
    return Chart("gpu_throttle", "GPU throttle reasons", "time", fig)


def _client_chart(tc: _TimeChart) -> Chart:
    fig, ax = tc.frame("soaktop's own health: event-loop lag, read lag and, in an open loop, "
                       "send lateness (p99)", "ms")
    drew = False
    for i, r in enumerate(tc.records):
        t = r.times_s
        prefix = f"{_record_label(r, i)} " if tc.overlay else ""
        for j, (name, label) in enumerate((("loop_lag_p99_ms", "loop lag p99"),
                                           ("read_lag_p99_ms", "read lag p99"),
                                           ("send_lateness_p99_ms", "send lateness p99"))):
            values = r.series[name]
            if np.isfinite(values).any():
                ax.plot(t, values, color=tc.colour(i, j), lw=1.0, label=prefix + label,
                        ls=("-", "--", ":")[j])
                drew = True
        bound = np.nan_to_num(r.series["client_bound"]) > 0
        if bound.any():
            for a in (t[bound] - r.step_s / 2).tolist():
                ax.axvspan(a, a + r.step_s, color="#d62728", alpha=0.25, lw=0)
            ax.plot([], [], color="#d62728", alpha=0.4, lw=6, label=prefix + "client-bound")
    if not drew:
        ax.text(0.5, 0.5, "this record holds no client health samples",
                transform=ax.transAxes, ha="center", va="center", color="#777777")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return Chart("client_health", "soaktop's own health", "time", fig)


def _cdf_chart(key: str, title: str, records: list[RecordSeries], attr: str) -> Chart:
    """The distribution per phase (per record in an overlay) as a CDF on a log axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN / 2, 3.2))
    ax = fig.add_axes((0.12, 0.15, 0.84, 0.75))
    ax.set_title(title, loc="left")
    overlay = len(records) > 1
    drew = False
    for i, r in enumerate(records):
        by_phase = getattr(r, attr)
        spans = {s.phase_id: s for s in r.phases}
        if overlay:  # one curve a record: its measured phases together
            total = sum(by_phase.values()) if by_phase else None
            curves = [] if total is None else [(_record_label(r, i), total, PALETTE[i])]
        else:
            curves = [(f"phase {pid}" + (f" (conc {spans[pid].concurrency})"
                                         if pid in spans else ""), counts,
                       PALETTE[j % len(PALETTE)])
                      for j, (pid, counts) in enumerate(sorted(by_phase.items()))]
        for label, counts, colour in curves:
            n = counts.sum()
            if n == 0:
                continue
            ax.plot(EDGES_MS[1:], np.cumsum(counts) / n, color=colour, lw=1.2,
                    label=f"{label}, n={int(n):,}")  # the share at or below each bin's top
            drew = True
    _log_axis(ax, "x")
    ax.set_xlabel("ms")
    ax.set_ylabel("share of values ≤ x")
    ax.set_ylim(0, 1.02)
    if drew:
        values = [MIDDLES_MS[np.flatnonzero(c)] for r in records
                  for c in getattr(r, attr).values() if c.sum()]
        ax.set_xlim(min(v.min() for v in values) / 1.5, max(v.max() for v in values) * 1.5)
    else:
        ax.text(0.5, 0.5, "no successful measured request", transform=ax.transAxes,
                ha="center", va="center", color="#777777")
    if drew:
        ax.legend(loc="lower right", fontsize=7)
    return Chart(key, title, "distribution", fig)


def distribution_charts(records: list[RecordSeries]) -> list[Chart]:
    return [_cdf_chart("ttft_cdf", "TTFT distribution (CDF)", records, "ttft_by_phase"),
            _cdf_chart("itl_cdf", "ITL distribution (CDF)", records, "itl_by_phase")]


def plan_charts(records: list[RecordSeries]) -> list[Chart]:
    """A ramp's or an SLO search's steps: throughput against TTFT p95, one point a step, the
    plateau and the answer marked. None for records without either."""
    from matplotlib.figure import Figure

    charts = []
    for i, r in enumerate(records):
        result = r.summary.result()
        steps = []
        if result.ramp:
            steps = [(s.concurrency, s.tokens_per_s, s.ttft_p95_ms,
                      "plateau" if s.plateau else "") for s in result.ramp]
            what = "Ramp"
        elif result.slo is not None and result.slo.error is None and result.slo.steps:
            phases = {p.phase_id: p for p in result.phases}
            steps = [(s.concurrency, phases[s.phase_id].output_tokens_per_s,
                      phases[s.phase_id].ttft_ms.p95, "met" if s.met else "missed")
                     for s in result.slo.steps if s.phase_id in phases]
            what = "SLO search"
        if not steps:
            continue
        fig = Figure(figsize=(WIDTH_IN / 2, 3.4))
        ax = fig.add_axes((0.14, 0.15, 0.6, 0.72))
        suffix = f" ({_record_label(r, i)})" if len(records) > 1 else ""
        title = f"{what}: tokens/s against TTFT p95 per step{suffix}"
        ax.set_title(title, loc="left", fontsize=9)
        xs = [np.nan if s[2] is None else s[2] for s in steps]
        ys = [np.nan if s[1] is None else s[1] for s in steps]
        ax.plot(xs, ys, "-", color="#999999", lw=1)
        for conc, tps, ttft, flag in steps:
            if tps is None or ttft is None:
                continue
            colour = {"plateau": "#ff7f0e", "met": "#2ca02c", "missed": "#d62728"}.get(
                flag, "#1f77b4")
            ax.plot([ttft], [tps], "o", color=colour, ms=6)
            ax.annotate(f"c={conc}{' ' + flag if flag else ''}", (ttft, tps),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        answer = ""
        if what == "SLO search":
            slo = result.slo
            answer = (f"answer: concurrency {slo.answer}" if slo.answer is not None
                      else "answer: not met at any concurrency")
            ax.text(0.02, 0.95, f"SLO {record_text(slo.slo)}\n{answer}", transform=ax.transAxes,
                    va="top", fontsize=8)
        elif any(s[3] == "plateau" for s in steps):
            first = next(s for s in steps if s[3] == "plateau")
            ax.text(0.02, 0.95, f"plateau from concurrency {first[0]}", transform=ax.transAxes,
                    va="top", fontsize=8)
        ax.set_xlabel("TTFT p95 (ms)")
        ax.set_ylabel("tokens/s")
        charts.append(Chart(f"plan{'_' + chr(ord('a') + i) if len(records) > 1 else ''}",
                            title, "plan", fig))
    return charts


def all_charts(records: list[RecordSeries]) -> list[Chart]:
    with _style():
        return [*time_charts(records), *distribution_charts(records), *plan_charts(records)]
