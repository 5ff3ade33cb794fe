"""The GPU panel: its drawing without an app (which layout, what each row holds, that nothing
is wider than asked or cut mid-word), then on the live screen (8 GPUs and the host at 100x30,
the curves under the charts' columns)."""

import dataclasses
import re

import numpy as np
import pytest

from soaktop.engine.events import GpuSample
from soaktop.engine.metrics.history import GPU_SERIES, SERIES, Window
from soaktop.tui.widgets.gpu_draw import (
    GUTTER,
    changed_spans,
    curves_for,
    fields,
    fit_row,
    gpu_order,
    panel_rows,
    range_text,
    spark_range,
    strip_row,
    table_rows,
    width_of,
    words,
)
from soaktop.tui.widgets.gpu_panel import GpuPanel
from soaktop.tui.widgets.series import AxisRow, ChartPanel
from tests.tui.dashboard_apps import replay_app

NAN = float("nan")


def sample(i: int, temp: float = 60.0, clock: float = 1980.0, power: float = 300.0,
           reasons: tuple[str, ...] = ()) -> GpuSample:
    return GpuSample(0, i, temperature_c=temp + i, slowdown_temperature_c=87.0,
                     sm_clock_mhz=clock - 10 * i, sm_clock_max_mhz=1980.0, power_w=power,
                     power_limit_w=700.0, memory_used_bytes=40 * 2**30,
                     memory_total_bytes=80 * 2**30, clock_event_reasons=reasons)


def window(keys, width: int = 20, step_s: int = 1, band: bool = False,
           reasons=None) -> Window:
    """A window over ``width`` columns: temperatures rising 60 -> 79 C under an 87 C threshold,
    the clock falling in its last quarter; ``band`` gives each column a min-max of +-5."""
    t = np.linspace(60.0, 79.0, width)
    per = {"temperature_c": t, "margin_c": 87.0 - t, "power_w": np.full(width, 300.0),
           "power_ratio": np.full(width, 300 / 700), "memory_ratio": np.full(width, 0.5),
           "sm_clock_ratio": np.where(np.arange(width) >= width * 3 // 4, 0.8, 1.0)}
    assert set(per) == set(GPU_SERIES)
    spread = 5.0 if band else 0.0
    empty = {name: np.full(width, NAN) for name in SERIES}
    return Window(0, width * step_s - 1, step_s, empty, empty, empty,
                  gpus={k: per for k in keys},
                  gpus_low={k: {n: v - spread for n, v in per.items()} for k in keys},
                  gpus_high={k: {n: v + spread for n, v in per.items()} for k in keys},
                  reasons={k: reasons or [()] * width for k in keys}, phases=[], marks=[])


def text(row) -> str:
    return "".join(t for t, _ in row)


def test_gpus_are_ordered_by_index_as_a_number_and_by_host():
    assert gpu_order(["10", "2", "1", "node/3", "0"]) == ["0", "1", "2", "10", "node/3"]


def test_figures_that_do_not_fit_are_left_out_whole_and_text_is_cut_at_a_word():
    row = fields([("host CPU 53%", ""), ("soaktop 104%", ""), ("RSS 376 MiB", "")], 28)
    assert text(row) == "host CPU 53%  soaktop 104%"
    assert text(words("nvml: unavailable: no NVIDIA GPU found", 25)) == "nvml: unavailable: no…"


def test_a_row_too_wide_loses_throttle_cells_first_then_whole_figures():
    row = [("GPU0 ", "title"), ("12,345W", ""), ("..P", "muted"), ("T", "throttle")]
    assert fit_row(row, 14) == [("GPU0 ", "title"), ("12,345W", ""), ("..", "muted")]
    assert fit_row(row, 10) == [("GPU0 ", "title")]


def test_one_gpu_s_curves_show_the_threshold_the_clock_dip_and_the_strip():
    reasons = [()] * 18 + [("sw_power_cap",), ("sw_thermal", "sw_power_cap")]
    w = window(["0"], reasons=reasons)
    rows = curves_for("0", sample(0, temp=79.0), w, GUTTER + 20, 5)
    assert [text(r)[:GUTTER].rstrip() for r in rows] == [
        "GPU0 79C-8", "SM 1980/1980", "300/700 W", "mem 40/80G", "throttle"]
    assert all(width_of(r) == GUTTER + 20 for r in rows)
    # one row, four dot levels: the 87 C threshold is the top dots of every cell (in the
    # temperature's colour: a cell has one), the temperature under it
    assert all(ord(c) - 0x2800 & 0x09 == 0x09 for c in text(rows[0])[GUTTER:])
    clock = text(rows[1])[GUTTER:]
    assert len(set(clock[:15])) == 1 and clock[15] != clock[0]  # the dip in the last quarter
    assert text(rows[4])[GUTTER:] == "." * 18 + "PT"  # the worst reason, column by column


def test_a_coarse_column_draws_a_band_around_its_mean_as_the_charts_do():
    rows = curves_for("0", sample(0), window(["0"], step_s=10, band=True), GUTTER + 20, 9)
    kinds = {k for r in rows for _, k in r}
    assert {"temp", "temp-band", "clock", "power-band"} <= kinds


def test_extra_height_makes_the_curves_taller_temperature_first():
    rows = curves_for("0", sample(0), window(["0"]), GUTTER + 20, 7)
    # a curve of two rows says its bottom on the second: 50 C, half the maximum clock
    assert [text(r)[:GUTTER].strip() for r in rows] == [
        "GPU0 60C-27", "50C", "SM 1980/1980", "990 MHz", "300/700 W", "mem 40/80G",
        "throttle"]
    # two rows: the threshold is on the top row in its own colour where the temperature is
    # not, and the cooler past is on the row below
    assert [k for _, k in rows[0]][-2:] == ["limit", "temp"]
    assert "limit" not in {k for _, k in rows[1]} and "temp" in {k for _, k in rows[1]}


def test_the_strip_keeps_the_newest_column_on_the_right_and_groups_what_is_wider():
    w = window(["0"], width=4, reasons=[None, (), ("hw_slowdown",), ("sw_thermal",)])
    assert text(strip_row(w, "0", 6)) == "   .ST"
    # two cells over the window's four columns: the worst of each half, the gap ignored
    assert text(strip_row(w, "0", 2)) == ".T"
    w = window(["0"], width=5, reasons=[("sw_power_cap",), None, None, (), ()])
    assert text(strip_row(w, "0", 2)) == "P."  # a lone reason is not averaged away


def test_a_mini_chart_spans_the_whole_window_in_runs_of_columns():
    from soaktop.tui.widgets.gpu_draw import _squeeze

    values = np.array([1.0, np.nan, 3.0, 10.0, 20.0, np.nan, np.nan])  # runs of 2, 2, 3
    assert _squeeze(values, 3).tolist() == [1.0, 6.5, 20.0]  # gaps ignored
    assert _squeeze(values, 3, "min").tolist() == [1.0, 3.0, 20.0]
    assert _squeeze(values, 3, "max").tolist() == [1.0, 10.0, 20.0]
    gaps = _squeeze(np.array([np.nan, np.nan, 5.0, 6.0]), 2)
    assert np.isnan(gaps[0]) and gaps[1] == 5.5  # a run of gaps stays a gap
    fewer = _squeeze(values[:2], 4)  # fewer columns than cells: a cell each, newest right
    assert np.isnan(fewer[:2]).all() and fewer[2] == 1.0 and np.isnan(fewer[3])


def test_eight_gpus_are_a_table_with_an_aggregate_row_and_sixteen_are_summed_up():
    keys = [str(i) for i in range(16)]
    items = [(k, sample(int(k))) for k in keys]
    w = window(keys[:8])
    w.reasons["3"] = [()] * 19 + [("sw_thermal",)]  # GPU3 throttled thermally in the newest
    rows = table_rows(items[:8], w, 49, 9)
    assert len(rows) == 9
    assert text(rows[0]) == "8 GPUs: hottest 67C · min 1910 MHz · 2,400 W"
    assert [text(r).split()[0] for r in rows[1:]] == [f"GPU{i}" for i in range(8)]
    assert text(rows[4]).endswith(".T") and text(rows[3]).endswith("..")
    rows = table_rows(items, window(keys), 49, 10)
    assert text(rows[-1]) == "+8 GPUs: hottest 75C · min 1830 MHz · 2,400 W"  # GPUs 8-15
    assert [text(r).split()[0] for r in rows[1:-1]] == [f"GPU{i}" for i in range(8)]


def dot_level(cell: str) -> int:
    """The highest dot row of a braille cell, 0 (bottom) to 3 (top); -1 for a blank."""
    bits = ord(cell) - 0x2800 if cell.strip() else 0
    rows = [(0x40 | 0x80), (0x04 | 0x20), (0x02 | 0x10), (0x01 | 0x08)]  # bottom row first
    return max((i for i, mask in enumerate(rows) if bits & mask), default=-1)


def test_a_one_row_chart_spans_its_data_out_to_whole_units_and_at_least_its_floor():
    assert spark_range(np.array([62.3, 66.0]), np.array([68.0, 70.6]), 4) == (62, 71)
    # a flat 69 C: widened evenly to the floor, so the line sits mid-row, not at an edge
    assert spark_range(np.array([69.0]), np.array([69.0]), 4) == (67, 71)
    # a clock at its maximum: the range goes down from the top, never above the maximum
    assert spark_range(np.array([1980.0]), np.array([1980.0]), 60, top=1980) == (1920, 1980)
    assert spark_range(np.array([NAN]), np.array([NAN]), 4) is None
    assert range_text((62.0, 71.0), "C") == "62–71C" and range_text(None) == ""


def test_at_80x24_each_gpu_row_states_the_range_its_temperature_chart_spans():
    """At 80x24 the table has 39 columns: a GPU's chart is one row of a few cells, with no
    room for axis labels, so the row says what the dots span (``60–79C``: the window's 20
    columns, 60 to 79 C, in two cells of ten, each the mean of its columns and its band
    their range)."""
    keys = [str(i) for i in range(8)]
    rows = table_rows([(k, sample(int(k))) for k in keys], window(keys), 39, 9)
    assert [text(r).split()[0] for r in rows[1:]] == [f"GPU{i}" for i in range(8)]
    for row in rows[1:]:
        line = text(row)
        assert width_of(row) <= 39
        found = re.search(r"C (\S+) (\d+)–(\d+)C ", line)
        assert found, line
        chart, lo, hi = found.group(1), int(found.group(2)), int(found.group(3))
        assert (lo, hi) == (60, 79)
        # the dots rise with the temperatures, on the chart's scale: each cell's band reaches
        # the highest of its ten columns (69, then 79 C)
        halves = np.linspace(60.0, 79.0, 20).reshape(2, 10).max(axis=1)
        assert [dot_level(c) for c in chart] == [round((t - lo) / (hi - lo) * 3)
                                                 for t in halves]
        assert line.endswith("..")  # throttle cells still there, after the figures


def test_the_sm_clock_gets_a_chart_only_where_its_range_fits_too_and_names_head_columns():
    keys = [str(i) for i in range(8)]
    items = [(k, sample(int(k))) for k in keys]
    narrow = [text(r) for r in table_rows(items, window(keys), 49, 10)]
    assert not any(re.search(r"\d{4}–\d{4}", line) for line in narrow)  # no clock chart
    wide = [text(r) for r in table_rows(items, window(keys), 79, 11)]
    header, first = wide[1], wide[2]
    # the clock dipped to 0.8 of 1980 in the last quarter: the range says so
    assert re.search(r" 1980 \S{12} 1584–1980 ", first), first
    assert first.index("60C") == header.index("temp") + 1  # "temp" over " 60C"
    assert header.index("SM") + 1 == first.index("1980") + 3  # "SM" ends over the clock
    assert header.index("power") + 4 == first.index("W")  # "power" ends over "300W"
    assert header.endswith("throttle") and first.endswith(".........")


def test_a_repaint_is_one_span_a_changed_row_up_to_its_last_change():
    """A repaint goes to the terminal from the widget's left edge to the span's end, so a row
    is one span (a second would send the row's start again), and a row unchanged none."""
    old = [[("GPU0 ", "title"), ("69C", "")], [("host 5%", "")]]
    new = [[("GPU0 ", "title"), ("70C", "")], [("host 5%", "")], [("x", "")]]
    assert changed_spans(old, new, 10) == [(0, 5, 7), (2, 0, 1)]
    assert changed_spans(new, new, 10) == []
    # a change of kind alone is a change: the cell's colour goes out again
    hot = [[("GPU0 ", "title"), ("70C", "hot")], [("host 5%", "")], [("x", "")]]
    assert changed_spans(new, hot, 10) == [(0, 5, 8)]
    # two changes in a row: one span from the first to the last
    far = [[("GPU0 ", "title"), ("71C", "")], [("host 6%", "")], [("y", "")]]
    assert changed_spans(new, far, 10)[0] == (0, 6, 7)
    assert changed_spans([[("a   b", "")]], [[("c   d", "")]], 10) == [(0, 0, 5)]


def test_a_remote_host_s_name_gives_way_to_the_index_where_the_row_is_narrow():
    keys = [f"gpu-node-0{i // 2}/{i % 2}" for i in range(4)]  # two hosts, two GPUs each
    items = [(k, sample(i)) for i, k in enumerate(keys)]
    wide = table_rows(items, window(keys), 80, 6)
    narrow = table_rows(items, window(keys), 39, 6)
    assert text(wide[1]).split() == ["temp", "SM", "power", "mem", "thr"]  # column names
    assert max(len(text(r)) for r in wide) <= 80
    assert [text(r)[:16] for r in wide[2:]] == [
        f"gpu-node-0{i // 2} GPU{i % 2}" for i in range(4)]
    assert [text(r).split()[0] for r in narrow[2:6]] == [f"GPU{i % 2}" for i in range(4)]


def test_the_gpus_of_one_exporter_name_their_host_once_and_keep_the_row_for_figures():
    keys = [f"loopback/{i}" for i in range(8)]
    items = [(k, sample(i)) for i, k in enumerate(keys)]
    local = table_rows([(str(i), s) for i, (_, s) in enumerate(items)],
                       window([str(i) for i in range(8)]), 49, 9)
    rows = table_rows(items, window(keys), 49, 9)
    assert text(rows[0]).startswith("8 GPUs on loopback: ")
    assert [text(r).split()[0] for r in rows[1:]] == [f"GPU{i}" for i in range(8)]
    assert [text(r) for r in rows[1:]] == [text(r) for r in local[1:]]  # as wide as NVML's


@pytest.mark.parametrize("count", [0, 1, 2, 3, 8, 16])
def test_no_row_is_wider_than_the_panel_and_the_host_line_is_always_there(count):
    keys = [str(i) for i in range(count)]
    items = [(k, sample(int(k))) for k in keys]
    host = [("host CPU 53%", ""), ("soaktop 104% of a core", ""), ("RSS 376 MiB", "")]
    whole_host = {"host CPU 53%", "host CPU 53%  soaktop 104% of a core",
                  "host CPU 53%  soaktop 104% of a core  RSS 376 MiB"}
    status = "nvml: unavailable: no NVIDIA GPU found"
    for width in range(12, 121, 6):  # the panel is half the screen: 39 columns at 80
        for height in range(1, 24, 2):
            rows = panel_rows(items, window(keys), width, height, [status, host])
            assert len(rows) <= height
            assert all(width_of(r) <= width for r in rows), (width, height)
            assert text(rows[-1]) in whole_host  # the host last, each figure whole
            lines = [text(r) for r in rows]
            first = next((i for i, line in enumerate(lines) if line.startswith("nvml")), None)
            if first is not None:  # wrapped and cut after whole words, or whole
                shown = " ".join(lines[first:-1])
                assert shown == status or status.startswith(shown.removesuffix("…").rstrip() + " ")


def test_a_long_status_is_wrapped_at_words_where_rows_are_left_over():
    status = "nvml: unavailable: no NVIDIA GPU found: no NVIDIA driver (libnvidia-ml.so.1)"
    host = [("host CPU 53%", "")]
    rows = [text(r) for r in panel_rows([], None, 30, 6, [status, host])]
    assert rows == ["nvml: unavailable: no NVIDIA", "GPU found: no NVIDIA driver",
                    "(libnvidia-ml.so.1)", "host CPU 53%"]
    rows = [text(r) for r in panel_rows([], None, 30, 3, [status, host])]
    assert rows == ["nvml: unavailable: no NVIDIA", "GPU found: no NVIDIA driver…",
                    "host CPU 53%"]


def test_two_gpus_get_curves_when_they_fit_and_the_table_when_not():
    keys = ["0", "1"]
    items = [(k, sample(int(k))) for k in keys]
    curves = panel_rows(items, window(keys), 40, 11, [])
    assert [text(r)[:4] for r in curves[::5]] == ["GPU0", "GPU1", "T th"]
    table = panel_rows(items, window(keys), 40, 6, [])
    assert text(table[0]).startswith("2 GPUs: hottest 61C")


@pytest.mark.parametrize(("gpus", "size"), [(8, (100, 30)), (16, (160, 45))])
async def test_every_gpu_and_the_host_line_appear_8_at_100x30_and_16_at_160x45(gpus, size):
    app = replay_app(kind="live", gpus=gpus)
    async with app.run_test(size=size) as pilot:
        await pilot.press("Z")
        await pilot.pause(0.3)
        panel = app.screen.query_one(GpuPanel)
        shown = [text(r) for r in panel.rows]
        assert [line.split()[0] for line in shown if line.startswith("GPU")] == [
            f"GPU{i}" for i in range(gpus)]
        assert not any(line.startswith("+") for line in shown)  # none summed up
        assert shown[-1].startswith("host CPU")
        assert panel.size.height >= len(shown)  # every row drawn is on the screen
        assert all(c.size.height >= 2 for c in app.screen.query(ChartPanel))


@pytest.mark.parametrize("size", [(80, 24), (160, 45), (240, 60)])
async def test_eight_gpus_take_the_rows_they_need_and_the_charts_the_rest(size):
    """Where the table needs fewer rows than the panel's default share (30% of the screen),
    it takes only its rows, so the charts grow with the terminal instead of blank rows
    under the table; at 80x24 each GPU's row says what its chart spans."""
    app = replay_app(kind="live", gpus=8)
    async with app.run_test(size=size) as pilot:
        await pilot.press("Z")
        await pilot.pause(0.3)
        panel = app.screen.query_one(GpuPanel)
        shown = [text(r) for r in panel.rows]
        gpu_rows = [line for line in shown if line.startswith("GPU")]
        assert len(gpu_rows) == 8 and shown[-1].startswith("host CPU")
        assert panel.size.height == len(shown)  # no blank row under the table
        assert all(re.search(r"C [ \u2800-\u28ff]+ \d+–\d+C ", line) for line in gpu_rows), gpu_rows
        if size[1] >= 45:  # the column names too
            assert shown[1].split()[:2] == ["temp", "SM"]


async def test_one_gpu_s_curves_end_under_the_charts_newest_column():
    app = replay_app(kind="live", gpus=1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("Z")
        await pilot.pause(0.3)
        panel = app.screen.query_one(GpuPanel)
        chart = app.screen.query_one(ChartPanel)
        assert text(panel.rows[0]).startswith("GPU0")
        assert len(panel.rows) >= 6
        # the same column of the screen is the newest bucket in both
        assert panel.region.right == chart.region.right
        assert all(width_of(r) == panel.size.width - 1 for r in panel.rows[:5])
        await pilot.press("z", "z", "z")  # out to the whole run: the curves follow
        await pilot.pause(0.3)
        assert panel.window is not None and panel.window.start_s == 0
        scale = app.screen.query_one(AxisRow).scale  # "run 8s · 1s/col": the charts' window
        assert scale.startswith("run ") and scale.endswith(f" {panel.window.step_s}s/col")


async def test_the_figures_now_are_drawn_once_a_second_not_at_every_sample():
    """A GPU's figures change with every sample (4 a second), and each change re-sends its
    row: like the charts' titles, the panel shows the values now once a second of the
    session's clock, and at once when the GPUs listed change."""
    app = replay_app(kind="live", gpus=8)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        panel = app.screen.query_one(GpuPanel)
        telemetry, window = panel.telemetry, panel.window
        before = [text(r) for r in panel.rows]
        gpu0 = telemetry.gpus["0"]
        hotter = dataclasses.replace(telemetry, gpus={**telemetry.gpus, "0": dataclasses.replace(
            gpu0, latest=dataclasses.replace(gpu0.latest, temperature_c=75.0))})
        panel.show(hotter, window)  # a new sample in the same second
        assert [text(r) for r in panel.rows] == before
        panel.show(hotter, dataclasses.replace(window, end_s=window.end_s + 1))  # the next
        assert "GPU0  75C" in text(panel.rows[1]) and "GPU0  75C" not in before[1]
        fewer = dataclasses.replace(hotter, gpus={k: v for k, v in hotter.gpus.items()
                                                  if k != "7"})
        panel.show(fewer, dataclasses.replace(window, end_s=window.end_s + 1))
        assert not any(text(r).startswith("GPU7") for r in panel.rows)  # at once
