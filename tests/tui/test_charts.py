"""The chart drawing, without an app: where the dots go, how rows split into runs of one kind,
and how the y-range floors and waits before it shrinks."""

import numpy as np

from soaktop.engine.events import Phase
from soaktop.tui.widgets.plot import (
    AutoRange,
    Layer,
    axis_number,
    plot,
    span_text,
    step_text,
)
from soaktop.tui.widgets.series import place_label, tick_label

NAN = float("nan")


def cells(rows):
    return ["".join(text for text, _ in runs) for runs in rows]


def test_a_line_puts_each_mean_at_its_height_and_leaves_gaps_blank():
    rows = plot([Layer(np.array([0.0, NAN, 7.0]))], height=2, lo=0.0, hi=7.0)
    # 8 dot rows: 0 is the bottom pair of dots, 7 the top pair
    assert cells(rows) == [" " + " " + chr(0x2800 + 0x09), chr(0x2800 + 0xC0) + "  "]
    assert rows[0] == [("  ", ""), (chr(0x2809), "line0")]


def test_a_step_is_joined_to_the_column_before():
    rows = plot([Layer(np.array([0.0, 7.0]))], height=2, lo=0.0, hi=7.0)
    top = ord(cells(rows)[0][1]) - 0x2800
    bottom = ord(cells(rows)[1][1]) - 0x2800
    assert top == 0x01 | 0x08 | 0x10 | 0x20 | 0x80  # the mean, the right dot column below it
    assert bottom == 0x08 | 0x10 | 0x20  # the join goes down to just above the first point


def test_a_coarse_column_draws_its_min_max_as_a_band_under_the_mean():
    layer = Layer(np.array([2.0]), low=np.array([0.0]), high=np.array([7.0]))
    rows = plot([layer], height=2, lo=0.0, hi=7.0)
    assert [runs[0][1] for runs in rows] == ["band0", "line0"]  # the mean sits in the bottom row
    top = ord(cells(rows)[0]) - 0x2800
    assert top == 0x01 | 0x02 | 0x04 | 0x40  # the whole left dot column: the band


def test_the_first_layer_wins_a_cell_and_a_row_is_runs_of_one_kind():
    p95 = Layer(np.array([7.0, 7.0, 7.0, 0.0]))
    p50 = Layer(np.array([0.0, 0.0, 7.0, 0.0]))
    rows = plot([p95, p50], height=2, lo=0.0, hi=7.0)
    assert rows[0] == [(rows[0][0][0], "line0")] and len(rows[0][0][0]) == 4  # one run
    # the last column holds both means at 0 (and p95's join): p95, the first layer, wins it
    assert [(len(text), kind) for text, kind in rows[1]] == [(3, "line1"), (1, "line0")]


def test_values_outside_the_range_are_drawn_at_its_edge():
    rows = plot([Layer(np.array([-5.0, 50.0]))], height=1, lo=0.0, hi=3.0)
    assert rows[0][0][1] == "line0" and len(rows[0]) == 1


def test_a_latency_range_has_a_floor_so_noise_does_not_fill_the_chart():
    r = AutoRange()
    ttft = np.array([100.4, 100.6, 101.0, 100.5])
    lo, hi = r.fit(ttft, ttft, ttft)
    assert lo <= 95.0 and hi >= 105.0  # at least +-5% of the median around the data
    assert (101.0 - 100.4) / (hi - lo) < 0.1  # the noise fills under a tenth of the height


def test_a_range_grows_at_once_but_shrinks_only_after_several_fits():
    r = AutoRange(patience=3)
    wide = np.array([100.0, 400.0])
    assert r.fit(wide, wide, wide)[1] >= 400.0
    first = (r.lo, r.hi)
    narrow = np.array([200.0, 202.0])
    assert r.fit(narrow, narrow, narrow) == first  # fits inside: kept
    assert r.fit(narrow, narrow, narrow) == first
    lo, hi = r.fit(narrow, narrow, narrow)  # the third time in a row: it shrinks
    assert hi - lo < (first[1] - first[0]) / 2
    high = np.array([500.0])
    assert r.fit(high, high, high)[1] >= 500.0  # data above the range: at once


def test_rates_start_at_zero_and_an_idle_rate_still_has_a_range():
    r = AutoRange(from_zero=True)
    tokens = np.array([2900.0, 3100.0])
    assert r.fit(tokens, tokens, tokens) == (0.0, 3500.0)  # 10% headroom, a round number
    idle = AutoRange(from_zero=True)
    zeros = np.zeros(3)
    assert idle.fit(zeros, zeros, zeros) == (0.0, 1.0)
    assert AutoRange().fit(np.full(2, NAN), np.full(2, NAN), np.full(2, NAN)) == (0.0, 1.0)


def test_labels_fit_their_columns():
    assert [axis_number(v) for v in (0, 7.5, 45.0, 1250.0, 12_500.0, 250_000.0)] == [
        "0", "7.50", "45.0", "1,250", "12.5k", "250k"]
    assert [span_text(s) for s in (45, 152, 600, 5400, 7200 + 1800)] == [
        "45s", "2m32s", "10m", "90m", "2h30m"]
    assert [step_text(s) for s in (1, 20, 60, 128)] == ["1s", "20s", "1m", "2m08s"]


def test_a_phase_tick_says_what_changed():
    def phase(**kw):
        return Phase(**{"t_ns": 0, "phase_id": 1, "concurrency": 8, "model": "tiny",
                        "backend": "local", "reason": "key", **kw})

    assert tick_label(phase(), "concurrency") == "c8"
    assert tick_label(phase(model="llama-1b"), "model") == "llama-1b"
    assert tick_label(phase(rate=5.0, concurrency=0), "rate") == "r5/s"
    assert tick_label(phase(concurrency=0, reason="paused"), "pause") == "pause"
    assert tick_label(phase(), "warmup_done") == "warmed"


def test_the_scale_label_never_covers_a_tick():
    assert place_label("──────────", " 1m ") == ("─────", " 1m ", "─")
    assert place_label("─────┃c8──", " 1m ") == ("─", " 1m ", "┃c8──")
    assert place_label("┃c8┃c9────", " 1m ") == ("┃c8┃c9────", "", "")


def test_a_tick_near_the_right_end_puts_its_label_on_its_left():
    from soaktop.tui.widgets.draw import axis

    assert axis(12, [(2, "c8")], [6]) == "──┃c8─*─────"
    assert axis(12, [(10, "llama")]) == "─────llama┃─"
    assert axis(4, [(1, "llama")]) == "─┃ll"  # no room either side: cut on the right


def test_a_row_splits_into_the_body_and_the_newest_column():
    from soaktop.tui.widgets.series import split_runs

    runs = [("ab", "line0"), ("  ", ""), ("c", "band0")]
    assert split_runs(runs, 4) == ([("ab", "line0"), ("  ", "")], [("c", "band0")])
    assert split_runs(runs, 3) == ([("ab", "line0"), (" ", "")], [(" ", ""), ("c", "band0")])
    assert split_runs(runs, 0) == ([], runs)


def test_every_strip_code_names_a_reason_the_decoder_gives():
    """A misspelt reason in the strip's table would never show its letter."""
    from soaktop.engine.telemetry.reasons import decode
    from soaktop.tui.widgets.draw import STRIP_CODES, throttle_strip

    known = set(decode(0xFFFFFFFF))
    assert {name for name, _ in STRIP_CODES} <= known
    assert throttle_strip([("display_clocks",), ("sw_thermal", "sw_power_cap"), (), None]) \
        == "DT. "
