"""Pure drawing of the GPU panel: telemetry and the charts' history window in, rows of
(text, kind) runs out, each row at most as wide as asked. No Textual here, so the layout is
tested without an app; :mod:`.gpu_panel` maps each kind to a theme style.

Two layouts, picked by what fits:

- **curves** (one or two GPUs, when the height allows): per GPU a temperature chart with the
  slowdown threshold drawn as a second line (the gap between them is the margin), the SM clock
  against its maximum (the top row is the maximum), power against its limit, memory against
  its size, and the throttle strip. Their columns are the last columns of the charts' window,
  newest on the right: the panel ends at the screen's right edge as the charts do, so each
  column sits under the same bucket of the charts above (zoom and whole run included). A coarse
  column is drawn as band + mean by :func:`.plot.plot`, as in the charts.
- **table** (more GPUs, or too little height): an aggregate row, then one row per GPU with
  its temperature and a one-row chart of it, the range that chart spans (``62–71C``: a row
  has no room for axis labels), the SM clock with its chart and range where the width
  allows, power, memory and throttle cells. What does not fit is summed up in one row
  (``+5 GPUs: hottest 81C``), never cut off mid-word.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from soaktop.engine.events import GpuSample
from soaktop.engine.metrics.history import Window
from soaktop.tui.text import gpu_label
from soaktop.tui.widgets.draw import STRIP_LEGEND, fmt, throttle_strip
from soaktop.tui.widgets.plot import Layer, plot

Run = tuple[str, str]  # (text, kind); kind "" is plain text
Row = list[Run]
#: Left of each curve: the figures now (``GPU0 64C-23``, ``SM 1755/1980``, ...).
GUTTER = 14
#: Rows per GPU in the curves layout at the least: temperature, clock, power, memory, strip.
CURVE_ROWS = 5
SHORT_LEGEND = "T thermal B brake S slowdown P cap"
HOT_MARGIN_C = 5  # a margin to slowdown under this is shown as an alarm


def gpu_order(keys: Sequence[str]) -> list[str]:
    """Keys by host, then GPU index as a number (GPU10 after GPU9, not after GPU1)."""
    def key(k: str) -> tuple[str, int, str]:
        host, _, index = k.rpartition("/")
        return (host, int(index), "") if index.isdigit() else (host, 1 << 30, index)
    return sorted(keys, key=key)


def short_label(key: str) -> str:
    """``GPU3``, without the host: where ``node7 GPU3`` leaves no room for the figures."""
    return f"GPU{key.rpartition('/')[2]}"


def margin_of(s: GpuSample) -> float | None:
    if s.slowdown_temperature_c is None or s.temperature_c is None:
        return None
    return s.slowdown_temperature_c - s.temperature_c


def mhz(value: float | None) -> str:
    """A clock without a thousands comma (``1980``): the gutter has 14 cells for two."""
    return "n/a" if value is None else f"{value:.0f}"


def width_of(row: Row) -> int:
    return sum(len(text) for text, _ in row)


def fields(parts: Sequence[Run], width: int, sep: str = "  ", first_sep: str | None = None
           ) -> Row:
    """``parts`` joined by ``sep`` (``first_sep`` after the first), keeping only the whole
    parts that fit in ``width``: a figure is dropped, never cut in the middle."""
    row: Row = []
    used = 0
    for text, kind in parts:
        gap = "" if not row else first_sep if first_sep is not None and len(row) == 1 else sep
        if used + len(gap) + len(text) > width:
            break
        if gap:
            row.append((gap, ""))
        row.append((text, kind))
        used += len(gap) + len(text)
    return row


def _last(values: np.ndarray | None, n: int) -> np.ndarray:
    """The newest ``n`` columns, NaN-padded on the left."""
    if values is None:
        return np.full(n, np.nan)
    values = np.asarray(values, dtype=np.float64)[-n:] if n else np.zeros(0)
    return np.concatenate([np.full(n - values.size, np.nan), values])


def _edges(size: int, n: int) -> np.ndarray | None:
    """Where each of ``n`` cells starts when ``size`` columns go into them, newest on the
    right, every cell one or two columns more or less than the others; None where they fit
    a cell each."""
    if size <= n or n <= 0:
        return None
    return (np.arange(n) * size) // n


def _squeeze(values: np.ndarray | None, n: int, how: str = "mean") -> np.ndarray:
    """The window's columns in ``n`` cells, newest on the right: where there are more columns
    than cells, each cell is a run of neighbouring columns, their mean (``how="mean"``), their
    lowest (``"min"``) or their highest (``"max"``) value, gaps ignored; so a mini-chart spans
    the same time as the charts above it (in the whole-run view, the whole run), not only
    their newest columns, and a dip or a spike in a run of columns stays in its cell's band."""
    if values is None:
        return np.full(n, np.nan)
    values = np.asarray(values, dtype=np.float64)
    edges = _edges(values.size, n)
    if edges is None:
        return _last(values, n)
    if how == "min":
        return np.fmin.reduceat(values, edges)
    if how == "max":
        return np.fmax.reduceat(values, edges)
    seen = np.isfinite(values)
    sums = np.add.reduceat(np.where(seen, values, 0.0), edges)
    counts = np.add.reduceat(seen.astype(np.int64), edges)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _kinds(rows: list[Row], names: Sequence[str]) -> list[Row]:
    """plot's kinds (``line0``, ``band0``, ``line1``) renamed for the panel's styles."""
    table = {}
    for i, name in enumerate(names):
        table[f"line{i}"], table[f"band{i}"] = name, f"{name}-band"
    return [[(text, table.get(kind, kind)) for text, kind in row] for row in rows]


def curve(window: Window | None, key: str, series: str, n: int, height: int,
          lo: float, hi: float, kind: str, extra: np.ndarray | None = None,
          extra_kind: str = "limit") -> list[Row]:
    """``height`` rows of one GPU series in ``n`` cells over ``window``'s columns (the same
    time as the charts above; see :func:`_squeeze`); ``extra`` is a line already in cells."""
    if n <= 0:
        return [[] for _ in range(height)]
    g = window.gpus.get(key, {}) if window else {}
    low = window.gpus_low.get(key, {}) if window else {}
    high = window.gpus_high.get(key, {}) if window else {}
    layers = [Layer(_squeeze(g.get(series), n), _squeeze(low.get(series), n, "min"),
                    _squeeze(high.get(series), n, "max"))]
    names = [kind]
    if extra is not None:
        layers.append(Layer(_last(extra, n)))
        names.append(extra_kind)
    return _kinds(plot(layers, height, lo, hi), names)


def temperature_range(temps: np.ndarray, limits: np.ndarray) -> tuple[float, float]:
    """From 10 C under the coolest reading (a multiple of 10) up to the slowdown threshold or
    the hottest reading, whichever is higher (a multiple of 5): the threshold is the top line,
    so the margin reads as the gap under it. Changes only when the data leaves it."""
    finite = np.concatenate([temps[np.isfinite(temps)], limits[np.isfinite(limits)]])
    if not finite.size:
        return 0.0, 100.0
    t = temps[np.isfinite(temps)]
    lo = math.floor(((float(t.min()) if t.size else float(finite.min())) - 5) / 10) * 10
    hi = math.ceil(float(finite.max()) / 5) * 5
    return float(max(0, lo)), float(max(hi, lo + 10))


def clock_range(ratios: np.ndarray) -> tuple[float, float]:
    """The SM clock as a fraction of its maximum: the top is the maximum; the bottom 50%, or
    lower in steps of 10% when the clock fell further (a dip fills the height, noise does not)."""
    finite = ratios[np.isfinite(ratios)]
    low = float(finite.min()) if finite.size else 1.0
    return min(0.5, math.floor(low * 10) / 10), 1.0


def strip_row(window: Window | None, key: str, n: int) -> Row:
    """The throttle strip in ``n`` cells over the window's columns (a cell a column, or a
    group of them where there are more: see :func:`_squeeze`), each the worst reason seen in
    it; a throttling letter warns, ``.`` (none) and gaps are muted."""
    reasons = list(window.reasons.get(key, [])) if window else []
    edges = _edges(len(reasons), n)
    if edges is not None:
        bounds = [*edges.tolist(), len(reasons)]
        grouped = [[r for r in reasons[a:b] if r is not None]
                   for a, b in zip(bounds, bounds[1:], strict=False)]
        reasons = [tuple(sorted({x for r in group for x in r})) if group else None
                   for group in grouped]
    reasons = [None] * max(0, n - len(reasons)) + reasons[-n:] if n else []
    text = throttle_strip(reasons)
    row: Row = []
    for ch in text:
        kind = "muted" if ch in ". " else "throttle"
        if row and row[-1][1] == kind:
            row[-1] = (row[-1][0] + ch, kind)
        else:
            row.append((ch, kind))
    return row


def _pad(row: Row, width: int) -> Row:
    used = width_of(row)
    return row + [(" " * (width - used), "")] if used < width else row


def curves_for(key: str, s: GpuSample, window: Window | None, width: int,
               height: int) -> list[Row]:
    """One GPU's curves in ``height`` rows (at least :data:`CURVE_ROWS`): the extra rows go to
    temperature and clock first, then power and memory."""
    n = max(0, width - GUTTER)
    extra = max(0, height - CURVE_ROWS)
    heights = [1, 1, 1, 1]
    for i in range(extra):
        heights[i % 4] += 1
    g = window.gpus.get(key, {}) if window else {}
    temps = _squeeze(g.get("temperature_c"), n)
    limits = _squeeze(np.asarray(g["temperature_c"]) + np.asarray(g["margin_c"])
                      if "temperature_c" in g and "margin_c" in g else None, n)
    t_lo, t_hi = temperature_range(
        np.concatenate([temps, _squeeze((window.gpus_low.get(key, {}) if window else {})
                                        .get("temperature_c"), n, "min")]), limits)
    c_lo, c_hi = clock_range(_squeeze((window.gpus_low.get(key, {}) if window else {})
                                      .get("sm_clock_ratio", g.get("sm_clock_ratio")), n,
                                      "min"))
    margin = margin_of(s)
    hot = margin is not None and margin < HOT_MARGIN_C
    memory = ("mem " + fmt((s.memory_used_bytes or 0) / 2**30) + "/"
              + fmt(s.memory_total_bytes / 2**30) + "G" if s.memory_total_bytes else "mem n/a")
    labels = [
        [(gpu_label(key) if len(gpu_label(key)) <= 5 else short_label(key), "title"), (" ", ""),
         (f"{fmt(s.temperature_c)}C" + (f"-{fmt(margin)}" if margin is not None else ""),
          "hot" if hot else "")],
        [(f"SM {mhz(s.sm_clock_mhz)}/{mhz(s.sm_clock_max_mhz)}", "")],
        [(f"{fmt(s.power_w)}/{fmt(s.power_limit_w)} W", "")],
        [(memory, "")],
    ]
    charts = [
        curve(window, key, "temperature_c", n, heights[0], t_lo, t_hi, "temp", limits),
        curve(window, key, "sm_clock_ratio", n, heights[1], c_lo, c_hi, "clock"),
        curve(window, key, "power_ratio", n, heights[2], 0.0, 1.0, "power"),
        curve(window, key, "memory_ratio", n, heights[3], 0.0, 1.0, "memory"),
    ]
    # a curve of two rows or more says its bottom on its last row, as the charts above do
    # (its top is in its label: the threshold, the maximum clock, the limit, the size)
    bottoms = [f"{t_lo:.0f}C", f"{mhz(c_lo * s.sm_clock_max_mhz)} MHz" if s.sm_clock_max_mhz
               else f"{c_lo * 100:.0f}%", "0 W", "0 G"]
    rows: list[Row] = []
    for label, chart, bottom in zip(labels, charts, bottoms, strict=True):
        for i, chart_row in enumerate(chart):
            text = label if i == 0 and width_of(label) < GUTTER else []
            if i and i == len(chart) - 1 and len(bottom) < GUTTER:
                text = [(f"{bottom:>{GUTTER - 2}}", "muted")]
            rows.append(_pad(text, min(GUTTER, width)) + chart_row)
    rows.append(_pad([("throttle", "muted")], min(GUTTER, width)) + strip_row(window, key, n))
    return rows


def _aggregate(items: list[tuple[str, GpuSample]], width: int, head: str,
               label: Callable[[str], str] = gpu_label) -> Row:
    """``head``, then the hottest, the lowest SM clock and the total power of ``items``; the
    GPUs' names (``label``) are left out where the row is too narrow for them, then whole
    figures."""
    temps = [(s.temperature_c, k) for k, s in items if s.temperature_c is not None]
    clocks = [(s.sm_clock_mhz, k) for k, s in items if s.sm_clock_mhz is not None]
    powers = [s.power_w for _, s in items if s.power_w is not None]
    best: Row = []
    for style in ("named", "plain", "short"):
        parts: list[Run] = [(head, "title")]
        if temps:
            t, k = max(temps)
            parts.append((f"hottest {fmt(t)}C" + (f" {label(k)}" if style == "named"
                                                  else ""), ""))
        if clocks:
            c, k = min(clocks)
            word = "min" if style == "short" else "lowest"
            parts.append((f"{word} {mhz(c)} MHz" + (f" {label(k)}" if style == "named"
                                                   else ""), ""))
        if powers:
            total = f"{fmt(sum(powers))} W"
            parts.append((total if style == "short" else f"total {total}", ""))
        row = fields(parts, width, sep=" · ", first_sep=": ")
        if len(row) == 2 * len(parts) - 1:
            return row  # every figure fits
        best = best if len(best) >= len(row) else row
    return best


#: A one-row chart's y-range never spans less than this (C, MHz): a reading's noise of a
#: degree or a few MHz is then a level of the row's four, not all of them (a flat line would
#: read as a swing), and the range stated beside it says how far the dots go.
TEMP_FLOOR_C = 4.0
CLOCK_FLOOR_MHZ = 60.0


def spark_range(low: np.ndarray, high: np.ndarray, floor: float, top: float | None = None
                ) -> tuple[float, float] | None:
    """The y-range of a one-row chart: its columns' min to max, out to whole units, widened
    evenly to ``floor`` but never above ``top`` (a clock's maximum: a range past it would
    read as headroom there is not); None with no data. A row has four dot levels and no room
    for axis labels, so the dots span the data (a 7 C warming fills the row) and the row
    states the range in words (``62–71C``): without it, a dot's height would mean nothing."""
    lows, highs = low[np.isfinite(low)], high[np.isfinite(high)]
    if not lows.size or not highs.size:
        return None
    lo, hi = math.floor(float(lows.min())), math.ceil(float(highs.max()))
    data_hi = hi
    short = floor - (hi - lo)
    if short > 0:
        lo, hi = lo - math.floor(short / 2), hi + math.ceil(short / 2)
    if top is not None and hi > top >= data_hi:
        lo, hi = lo - (hi - math.floor(top)), math.floor(top)
    return float(lo), float(hi)


def range_text(span: tuple[float, float] | None, unit: str = "") -> str:
    """``62–71C``: the range a one-row chart spans, stated in its row."""
    return "" if span is None else f"{span[0]:.0f}–{span[1]:.0f}{unit}"


def spark(window: Window | None, key: str, series: str, n: int, kind: str,
          floor: float, scale: float = 1.0, unit: str = "", top: float | None = None
          ) -> tuple[Row, str]:
    """A one-row chart of ``series`` in ``n`` cells over the window's columns (times
    ``scale``: a ratio in MHz; see :func:`_squeeze`), and its range as text (see
    :func:`spark_range`)."""
    g = window.gpus.get(key, {}) if window else {}
    low = window.gpus_low.get(key, {}) if window else {}
    high = window.gpus_high.get(key, {}) if window else {}
    mean = _squeeze(g.get(series), n) * scale
    lows = _squeeze(low.get(series, g.get(series)), n, "min") * scale
    highs = _squeeze(high.get(series, g.get(series)), n, "max") * scale
    span = spark_range(np.fmin(lows, mean), np.fmax(highs, mean), floor, top)
    lo, hi = span or (0.0, 1.0)
    row = _kinds(plot([Layer(mean, lows, highs)], 1, lo, hi), [kind])[0]
    return row, range_text(span, unit)


def clock_spark(window: Window | None, key: str, s: GpuSample, n: int) -> tuple[Row, str]:
    """The SM clock's one-row chart in MHz (the window holds it as a ratio of the maximum),
    its range never above the maximum."""
    top = s.sm_clock_max_mhz
    return spark(window, key, "sm_clock_ratio", n, "clock", CLOCK_FLOOR_MHZ,
                 scale=top or float("nan"), top=top)


#: Cells of a table row's fixed figures after its name: " 64C", " 1755", "  310W  51%".
ROW_FIGURES = 4 + 5 + 12
SPARK_MIN, SPARK_MAX = 2, 12
THROTTLE_MIN = 4  # throttle cells a row keeps before the SM clock gets a chart


@dataclass(frozen=True)
class TableLayout:
    """How a table row's width is shared: the name, the temperature chart's cells and the
    width of its range, the same for the SM clock's (0: no chart), and the throttle cells."""

    label_w: int
    temp_cells: int
    temp_range_w: int
    clock_cells: int
    clock_range_w: int
    throttle: int


def table_layout(width: int, label_w: int, temp_range_w: int, clock_range_w: int
                 ) -> TableLayout | None:
    """Every row's figures first, then, while they fit: the temperature's chart and its range
    (what a soak watches: a GPU warming towards its slowdown threshold), a few throttle cells,
    the SM clock's chart and its range; the cells left over widen the charts (up to
    :data:`SPARK_MAX`), then go to the throttle cells. A chart that does not fit with its
    range is left out whole: a chart without its range would be dots without a scale.
    None where not even the figures fit."""
    rest = width - (label_w + 1 + ROW_FIGURES)
    if rest < 0:
        return None
    temp = clock = 0
    if rest >= 2 + SPARK_MIN + temp_range_w:
        temp = SPARK_MIN
        rest -= 2 + SPARK_MIN + temp_range_w
    if temp and rest >= 1 + THROTTLE_MIN + 2 + SPARK_MIN + clock_range_w:
        clock = SPARK_MIN
        rest -= 2 + SPARK_MIN + clock_range_w
    while temp and rest > 1 + THROTTLE_MIN:
        if temp < SPARK_MAX and (not clock or temp <= clock):
            temp += 1
        elif clock and clock < SPARK_MAX:
            clock += 1
        else:
            break
        rest -= 1
    return TableLayout(label_w, temp, temp_range_w if temp else 0, clock,
                       clock_range_w if clock else 0, max(0, rest - 1))


def header_text(lay: TableLayout) -> str:
    """The table's column names, each over its figures (a chart's cells and range are under
    its figure's name's column, unnamed)."""
    # the strip's name no wider than its cells: a header wider than the rows is dropped
    strip = next(name for name in ("throttle", "thr", "") if len(name) <= lay.throttle)
    temp = 2 + lay.temp_cells + lay.temp_range_w if lay.temp_cells else 0
    clock = 2 + lay.clock_cells + lay.clock_range_w if lay.clock_cells else 0
    return (f"{'':<{lay.label_w + 1}}{'temp':>4}{'':<{temp}}{'SM':>5}{'':<{clock}}"
            f"{'power':>7}{'mem':>5}" + (f" {strip}" if strip else "")).rstrip()


def table_row(key: str, s: GpuSample, window: Window | None, lay: TableLayout) -> Row:
    """One GPU in one row: id, temperature now, its chart and range, SM clock now, its chart
    and range, power, memory, then throttle cells."""
    margin = margin_of(s)
    hot = margin is not None and margin < HOT_MARGIN_C
    memory = (f"{fmt(100 * (s.memory_used_bytes or 0) / s.memory_total_bytes)}%"
              if s.memory_total_bytes else "n/a")
    name = gpu_label(key) if len(gpu_label(key)) <= lay.label_w else short_label(key)
    row: Row = [(f"{name:<{lay.label_w}} ", "title"),
                (f"{fmt(s.temperature_c):>3}C", "hot" if hot else "")]
    if lay.temp_cells:
        chart, span = spark(window, key, "temperature_c", lay.temp_cells, "temp", TEMP_FLOOR_C,
                            unit="C")
        row += [(" ", "")] + chart + [(f" {span:<{lay.temp_range_w}}", "muted")]
    row += [(f" {mhz(s.sm_clock_mhz):>4}", "")]
    if lay.clock_cells:
        chart, span = clock_spark(window, key, s, lay.clock_cells)
        row += [(" ", "")] + chart + [(f" {span:<{lay.clock_range_w}}", "muted")]
    row += [(f"  {fmt(s.power_w):>4}W  {memory:>3}", "")]
    if lay.throttle:
        row += [(" ", "")] + strip_row(window, key, lay.throttle)
    return row


def table_rows(items: list[tuple[str, GpuSample]], window: Window | None, width: int,
               rows: int) -> list[Row]:
    """At most ``rows`` rows: the aggregate, a row per GPU while they fit, and one row summing
    up the GPUs left out. The charts' ranges are as wide as the widest GPU's, so the columns
    line up."""
    if rows <= 0 or not items:
        return []
    temp_w = max(len(spark(window, k, "temperature_c", SPARK_MAX, "temp", TEMP_FLOOR_C,
                           unit="C")[1]) for k, _ in items)
    clock_w = max(len(clock_spark(window, k, s, SPARK_MAX)[1]) for k, s in items)
    # GPUs of one host scraped from its exporter: the host is said once, in the aggregate
    # row, and each row keeps its columns for the figures
    hosts = {k.rpartition("/")[0] for k, _ in items}
    host = hosts.pop() if len(hosts) == 1 else ""
    label = short_label if host else gpu_label
    head = f"{len(items)} GPUs" + (f" on {host}" if host else "")
    lay = table_layout(width, max(len(label(k)) for k, _ in items), max(temp_w, 5),
                       max(clock_w, 7))
    if lay is None or not lay.temp_cells:  # a host name leaves no room: the index alone
        short = table_layout(width, max(len(short_label(k)) for k, _ in items),
                             max(temp_w, 5), max(clock_w, 7))
        lay = short if short is not None and (lay is None or short.temp_cells) else lay
    out: list[Row] = [_aggregate(items, width, head, label)]
    room = rows - 1
    if lay is not None and room >= len(items) + 1:  # room to say what each column is
        out.append(fit_row([(header_text(lay), "muted")], width))
        room -= 1
    shown = (items if len(items) <= room else items[: max(0, room - 1)]) if lay else []
    out += [table_row(k, s, window, lay) for k, s in shown]
    left = items[len(shown):]
    if left and len(out) < rows:
        out.append(_aggregate(left, width, f"+{len(left)} GPUs", label))
    return out[:rows]


def panel_rows(gpus: list[tuple[str, GpuSample]], window: Window | None, width: int,
               height: int, tail: Sequence[str | Row]) -> list[Row]:
    """The whole panel in at most ``height`` rows of at most ``width`` cells: the GPUs (curves
    for one or two when they fit, else the table), then ``tail`` (unavailable sources, the
    host): a line of text is cut at a word, a row of figures drops whole figures."""
    if width <= 0 or height <= 0:
        return []
    tail_rows = [words(line, width) if isinstance(line, str) else fields(line, width)
                 for line in tail][-height:]  # the host (last) is kept the longest
    room = height - len(tail_rows)
    gpu_rows: list[Row] = []
    if gpus and room > 0:
        legend = room >= len(gpus) * CURVE_ROWS + 1
        per = (room - legend) // len(gpus)
        if len(gpus) <= 2 and per >= CURVE_ROWS and width >= GUTTER + 8:
            for key, s in gpus:
                gpu_rows += curves_for(key, s, window, width, per)
            if legend:
                gpu_rows.append(legend_row(width))
        else:
            gpu_rows = table_rows(gpus, window, width, room)
    elif not gpus and not tail_rows:
        gpu_rows = [words("no telemetry yet", width, "muted")]
    spare = height - len(gpu_rows) - len(tail_rows)
    if spare > 0:  # rows left over: a long status (why a GPU cannot be read) in full
        wrapped: list[Row] = []
        for line in tail:
            if isinstance(line, str):
                lines = wrap(line, width, 1 + spare)
                spare -= len(lines) - 1
                wrapped += lines
            else:
                wrapped.append(fields(line, width))
        tail_rows = wrapped
    return [fit_row(row, width) for row in gpu_rows + tail_rows][:height]


def wrap(line: str, width: int, rows: int) -> list[Row]:
    """``line`` over at most ``rows`` rows, broken at spaces; the last cut by :func:`words`."""
    out: list[Row] = []
    rest = line
    while len(rest) > width and len(out) < rows - 1:
        cut = rest.rfind(" ", 0, width + 1)
        if cut <= 0:
            break
        out.append([(rest[:cut], "")])
        rest = rest[cut + 1:].lstrip()
    return out + [words(rest, width)]


def fit_row(row: Row, width: int) -> Row:
    """A row no wider than ``width``: whole runs from the right dropped first (a figure wider
    than planned, such as a five-digit power, pushes out throttle cells, not text)."""
    while row and width_of(row) > width:
        text, kind = row[-1]
        over = width_of(row) - width
        row = row[:-1] + ([(text[:-over], kind)] if len(text) > over and kind in
                          ("throttle", "muted", "") and text.strip(".TBSPYD ") == "" else [])
    return row


def legend_row(width: int) -> Row:
    """What the strip's letters mean, in full or short; nothing where neither fits."""
    for text in (STRIP_LEGEND, SHORT_LEGEND):
        if len(text) <= width:
            return [(text, "muted")]
    return []


def words(line: str, width: int, kind: str = "") -> Row:
    """``line`` cut at the last space that fits (``…`` marks the cut): never mid-word."""
    if len(line) <= width:
        return [(line, kind)]
    cut = line.rfind(" ", 0, max(0, width - 1))
    return [(line[:cut].rstrip() + "…", kind)] if cut > 0 else [("…"[:width], kind)]


def cells(row: Row, width: int) -> list[tuple[str, str]]:
    """``row`` as ``width`` cells of (character, kind), blank-padded."""
    out = [(ch, kind) for text, kind in row for ch in text][:width]
    return out + [(" ", "")] * (width - len(out))


def changed_spans(old: list[Row], new: list[Row], width: int) -> list[tuple[int, int, int]]:
    """Where ``new`` differs from ``old``: per row that changed, (row, first changed cell,
    one past the last), for a repaint of that row's changed cells alone. One span a row: the
    terminal is sent a repainted row from the widget's left edge to the span's end whatever
    its start (Textual crops a partial update at its end only), so a second span would send
    the row's start again. Why at all: an unchanged row costs nothing, and a row whose last
    change is a figure stops there instead of sending its throttle cells too."""
    spans = []
    for y in range(max(len(old), len(new))):
        a = cells(old[y] if y < len(old) else [], width)
        b = cells(new[y] if y < len(new) else [], width)
        changed = [x for x in range(width) if a[x] != b[x]]
        if changed:
            spans.append((y, changed[0], changed[-1] + 1))
    return spans


def rows_wanted(count: int, tail: int) -> int:
    """Rows the table layout needs for ``count`` GPUs and ``tail`` lines: the panel asks for
    at least this much height, so 8 GPUs and the host line fit at 100x30."""
    return (count + 1 if count > 2 else count * (CURVE_ROWS + 1)) + tail
