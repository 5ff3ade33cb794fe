"""``soaktop report``: what its charts hold (against a record whose every value is known, and a
loopback server's schedule), the page's safety with hostile strings, overlays, images, and
bad input. The browser's view of the page is tests/tui/test_report_browser.py."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from soaktop.engine.events import Phase, RequestDone, SessionEnd, SessionStart
from soaktop.engine.loopback.process import spawn
from soaktop.engine.loopback.schedule import Schedule
from soaktop.engine.records.format import RecordWriter
from soaktop.tui.report.command import default_output, write_report
from soaktop.tui.report.series import MIDDLES_MS, bin_of, quantile_of_counts, read_series
from tests.tui import report_records as known
from tests.tui.test_cli import soaktop

CHARTS = ("ttft", "tokens_per_s", "itl", "errors", "in_flight", "gpu_temperature",
          "gpu_sm_clock", "gpu_power", "gpu_memory", "gpu_throttle", "host_cpu",
          "client_health", "ttft_cdf", "itl_cdf")
HOSTILE = "<script>alert(1)</script>&amp;\x1b[31m$x$</td><img src=x onerror=alert(2)>"


def _within_bin(value: float, truth: float) -> bool:
    """A quantile read from counts is its bin's middle: within one 6% bin of the truth."""
    return abs(value / truth - 1) < 0.06


def test_quantiles_from_counts_are_the_nearest_rank_bin():
    values = np.array([1.0] * 50 + [10.0] * 45 + [100.0] * 5)
    counts = np.bincount(bin_of(values), minlength=MIDDLES_MS.size)[None, :]
    assert _within_bin(quantile_of_counts(counts, 0.50)[0], 1.0)  # rank 50: still a 1
    assert _within_bin(quantile_of_counts(counts, 0.51)[0], 10.0)
    assert _within_bin(quantile_of_counts(counts, 0.95)[0], 10.0)  # rank 95: the last 10
    assert _within_bin(quantile_of_counts(counts, 0.96)[0], 100.0)
    assert _within_bin(quantile_of_counts(counts, 0.505)[0], 10.0)  # rank 50.5: the 51st
    assert np.isnan(quantile_of_counts(np.zeros((1, MIDDLES_MS.size)), 0.5)[0])


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return known.known_record(tmp_path_factory.mktemp("known") / "known.jsonl.gz")


def test_the_series_hold_the_known_schedule_second_by_second(record):
    r = read_series(record)
    assert r.step_s == 1 and r.duration_s == known.SECONDS
    steady = slice(2, known.SECONDS - 1)  # whole seconds with requests before and after
    per_s = 1000 // known.EVERY_MS
    np.testing.assert_array_equal(r.series["tokens_per_s"][steady], per_s * known.TOKENS
                                  - np.isin(np.arange(known.SECONDS)[steady],
                                            known.ERROR_SECONDS) * known.TOKENS)
    assert all(_within_bin(v, known.TTFT_MS) for v in r.series["ttft_p50_ms"][steady])
    assert all(_within_bin(v, known.TTFT_MS) for v in r.series["ttft_p99_ms"][steady])
    assert all(_within_bin(v, known.ITL_MS) for v in r.series["itl_p99_ms"][steady])
    errors = r.errors["timeout"]
    assert np.flatnonzero(errors).tolist() == list(known.ERROR_SECONDS)
    assert errors.sum() == len(known.ERROR_SECONDS)
    # every token of the record is in some second: nothing lost at the edges
    result = r.summary.result()
    assert r.series["tokens_per_s"].sum() == (
        (result.requests_ok + result.requests_warmup) * known.TOKENS)


def test_gpu_rows_limits_reasons_phases_and_marks_are_where_the_record_put_them(record):
    r = read_series(record)
    assert list(r.gpus) == ["GPU 0", "GPU 1"]
    np.testing.assert_allclose(r.gpus["GPU 0"]["temperature_c"][:known.SECONDS],
                               60.0 + np.arange(known.SECONDS))
    assert r.limits["GPU 1"]["slowdown_temperature_c"] == 87.0
    assert r.limits["GPU 1"]["power_limit_w"] == 700.0
    slowed = np.flatnonzero(np.nan_to_num(r.reasons["GPU 1"]["hw_slowdown"]) > 0).tolist()
    assert slowed == list(known.THROTTLED_SECONDS)
    assert "hw_slowdown" not in r.reasons["GPU 0"]
    clock = r.gpus["GPU 1"]["sm_clock_mhz"]
    assert clock[known.THROTTLED_SECONDS[0]] == 1500.0 and clock[1] == 1980.0
    assert [(p.phase_id, p.warmup, p.start_s, p.end_s) for p in r.phases] == [
        (0, True, 0.0, 1.0), (1, False, 1.0, known.SECONDS)]
    assert r.marks == [(known.MARK_S, "fan swapped")]
    assert np.nanmean(r.series["in_flight"]) == 4.0
    assert np.nanmax(r.series["loop_lag_p99_ms"]) == pytest.approx(0.3)
    # each sampled row as the record put it (GPU memory in GiB: 40 of 80)
    for name, value in (("power_w", 500.0), ("memory_gib", 40.0)):
        assert np.nanmin(r.gpus["GPU 0"][name]) == np.nanmax(r.gpus["GPU 0"][name]) == value
    for name, value in (("host_cpu_percent", 25.0), ("soaktop_cpu_percent", 12.0),
                        ("client_cpu_percent", 12.0)):
        assert np.nanmin(r.series[name]) == np.nanmax(r.series[name]) == value
    # the per-phase distribution holds the measured requests only (not the warm-up's)
    assert sorted(r.ttft_by_phase) == [1]
    assert r.ttft_by_phase[1].sum() == r.summary.result().requests_ok
    # ITL: the gaps after each first token, none before it
    assert r.itl_by_phase[1].sum() == r.summary.result().requests_ok * (known.TOKENS - 1)


def test_a_long_run_widens_its_buckets_and_keeps_every_token(tmp_path, monkeypatch):
    import soaktop.tui.report.series as series

    monkeypatch.setattr(series, "MAX_COLUMNS", 4)  # 12 s no longer fit at 1 s a bucket
    monkeypatch.setattr(series, "_BATCH", 8)  # buckets fill, then merge, as they are read
    r = read_series(known.known_record(tmp_path / "k.jsonl.gz"))
    assert r.step_s == 4 and r.times_s.size <= 4
    result = r.summary.result()
    assert (r.series["tokens_per_s"] * r.step_s).sum() == (
        (result.requests_ok + result.requests_warmup) * known.TOKENS)
    assert r.errors["timeout"].sum() == len(known.ERROR_SECONDS)
    assert r.errors["timeout"][1] == len(known.ERROR_SECONDS)  # seconds 5 and 6: bucket 4-7


def test_an_arrival_of_several_tokens_counts_as_that_many_itl_gaps(tmp_path):
    """As the summary counts ITL (engine/metrics/stats.py ``itl_gaps``): an arrival of 4
    tokens 20 ms after the one before is 4 gaps of 5 ms. Each request here: its first token
    (TTFT), 2 single tokens 20 ms apart, then 4 tokens at once 20 ms later: gaps 20, 20, 5, 5,
    5, 5, so the p50 is 5 ms (counted once an arrival it would be 20) and the p95 20 ms."""
    w = RecordWriter(tmp_path / "chunks.jsonl")
    w.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"model": "m"}, {}, {}, {}))
    w.write(Phase(0, 1, 1, "m", "openai", "start"))
    arrivals, tokens = (40_000, 60_000, 80_000, 100_000), (1, 1, 1, 4)
    requests = 0
    for t_ms in range(0, 5000, 200):
        sent = t_ms * 10**6
        w.write(RequestDone(sent + 10**8, 0, requests, 1, "openai", "m", sent, 8,
                                  arrivals, 100_000, "length", arrival_tokens=tokens))
        requests += 1
    w.write(SessionEnd(5 * known.S, "completed"))
    w.close()
    r = read_series(tmp_path / "chunks.jsonl")
    assert r.summary.result().itl_ms.p50 == pytest.approx(5.0, rel=0.01)  # the summary's
    assert all(_within_bin(v, 5.0) for v in r.series["itl_p50_ms"][:5])
    assert all(_within_bin(v, 20.0) for v in r.series["itl_p95_ms"][:5])
    assert r.itl_by_phase[1].sum() == requests * 6
    assert _within_bin(quantile_of_counts(r.itl_by_phase[1], 0.5)[0], 5.0)
    assert r.series["tokens_per_s"].sum() == requests * 7


def test_a_last_second_the_run_only_partly_reached_charts_its_errors_as_a_rate_over_it(
        tmp_path):
    """A run that ends 0.25 s into its last second, with one failure there: 4 failures a
    second over the part it ran, not 1 (drawn over a whole second, an ending storm of
    errors looked like a lull)."""
    from soaktop.tui.report.charts import time_charts

    w = RecordWriter(tmp_path / "end.jsonl")
    w.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"model": "m"}, {}, {}, {}))
    w.write(Phase(0, 1, 1, "m", "openai", "start"))
    for i, sent_ms in enumerate((500, 1500, 2500, 3100)):
        sent = sent_ms * 10**6
        w.write(RequestDone(sent + 10**8, 0, i, 1, "openai", "m", sent, 8, (), 100_000,
                            "error", error_class="timeout", error_message="boom"))
    w.write(SessionEnd(3_250_000_000, "completed"))
    w.close()
    r = read_series(tmp_path / "end.jsonl")
    np.testing.assert_allclose(r.widths_s, [1, 1, 1, 0.25])
    assert r.errors["timeout"].tolist() == [1, 1, 1, 1]
    (errors,) = [c for c in time_charts([r]) if c.key == "errors"]
    heights = [bar.get_height() for bar in errors.figure.axes[0].patches]
    np.testing.assert_allclose(heights, [1, 1, 1, 4])
    np.testing.assert_allclose(r.series["tokens_per_s"], [0, 0, 0, 0])


def test_an_open_loop_phase_is_labelled_by_its_rate_not_a_concurrency_of_0(tmp_path):
    from soaktop.tui.report.charts import time_charts

    w = RecordWriter(tmp_path / "rate.jsonl")
    w.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"model": "m"}, {}, {}, {}))
    w.write(Phase(0, 1, 0, "m", "openai", "start", rate=8.17237))  # a trace's mean rate
    sent = 10**9
    w.write(RequestDone(sent + 10**8, 0, 0, 1, "openai", "m", sent, 8, (40_000,), 50_000,
                        "length"))
    w.write(SessionEnd(3 * known.S, "completed"))
    w.close()
    charts = time_charts([read_series(tmp_path / "rate.jsonl")])
    labels = {t.get_text() for c in charts for ax in c.figure.axes for t in ax.texts}
    assert "phase 1: 8.17/s" in labels and not any("conc 0" in label for label in labels)


def test_an_open_loops_send_lateness_is_charted_beside_the_loops_own_lag(tmp_path, record):
    from soaktop.engine.events import ClientSample
    from soaktop.tui.report.charts import time_charts

    def legend(r) -> list[str]:
        (chart,) = [c for c in time_charts([r]) if c.key == "client_health"]
        return [t.get_text() for t in chart.figure.axes[0].get_legend().get_texts()]

    w = RecordWriter(tmp_path / "late.jsonl")
    w.write(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"model": "m"}, {}, {}, {}))
    w.write(Phase(0, 1, 0, "m", "openai", "start", rate=20.0))
    for second, late_us in enumerate((300, 12_000, 450)):
        w.write(ClientSample((second + 1) * known.S, in_flight=2, tokens=40,
                             interval_ns=known.S, loop_lag_p99_us=200,
                             send_lateness_p99_us=late_us))
    w.write(SessionEnd(3 * known.S, "completed"))
    w.close()
    r = read_series(tmp_path / "late.jsonl")
    np.testing.assert_allclose(r.series["send_lateness_p99_ms"][1:4], [0.3, 12.0, 0.45])
    assert "send lateness p99" in legend(r)
    assert "send lateness p99" not in legend(read_series(record))  # a closed loop: none


def test_the_series_match_a_loopback_servers_schedule(tmp_path):
    ttft_ms, itl_ms, tokens, concurrency = 30.0, 8.0, 24, 3
    record = tmp_path / "loop.jsonl.gz"
    with spawn(Schedule(ttft_ms=ttft_ms, itl_ms=itl_ms, tokens=tokens)) as url:
        out = soaktop("run", "--headless", "--backend", "openai", "--url", url, "--model",
                      "loopback", "--concurrency", str(concurrency), "--duration", "6s",
                      "--output-tokens", str(tokens), "--record", str(record),
                      "--telemetry", "host", timeout=120)
    assert out.returncode == 0, out.stderr
    r = read_series(record)
    result = r.summary.result()
    steady = slice(2, int(r.duration_s) - 1)
    # a token the busy 2-core box made late is followed by one on time: single gaps scatter
    # around the schedule, a request's mean gap (TPOT) keeps it; the per-second ITL is the
    # summary's own (exact) ITL, bin for bin
    assert result.tpot_ms.p50 == pytest.approx(itl_ms, rel=0.15)
    assert known_median(r.series["itl_p50_ms"][steady]) == pytest.approx(result.itl_ms.p50,
                                                                          rel=0.12)
    assert known_median(r.series["ttft_p50_ms"][steady]) >= ttft_ms * 0.94
    assert known_median(r.series["ttft_p50_ms"][steady]) < ttft_ms * 2
    per_request_s = (ttft_ms + (tokens - 1) * itl_ms) / 1000
    expected = concurrency * tokens / per_request_s
    assert known_median(r.series["tokens_per_s"][steady]) == pytest.approx(expected, rel=0.25)
    assert np.nanmax(r.series["in_flight"]) <= concurrency


def known_median(values: np.ndarray) -> float:
    return float(np.nanmedian(values))


def test_the_page_holds_every_chart_the_summary_and_the_run_facts(record, tmp_path):
    out = tmp_path / "r.html"
    written = write_report([read_series(record)], out)
    page = out.read_text()
    assert written.page_bytes == len(page.encode())
    for key in CHARTS:
        assert f'data-chart="{key}"' in page
    assert page.count("<svg") == len(CHARTS)
    assert "soak verdict" in page and "fan swapped" in page
    assert "errors: timeout 2" in page  # the terminal summary's own line
    assert "http://a:8000" in page and "vllm" in page
    assert "Content-Security-Policy" in page and "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched


def test_a_ramp_draws_its_steps_and_plateau(tmp_path):
    r = read_series(known.known_record(tmp_path / "ramp.jsonl.gz", ramp=True))
    ramp = r.summary.result().ramp
    assert ramp and [s.concurrency for s in ramp] == [1, 2, 4]
    written = write_report([r], tmp_path / "ramp.html")
    page = written.page.read_text()
    assert 'data-chart="plan"' in page and "c=4" in page


def test_hostile_strings_from_a_record_are_text_never_markup(tmp_path):
    record = known.known_record(tmp_path / "evil.jsonl.gz", model=HOSTILE, server=HOSTILE,
                                url=HOSTILE, note=HOSTILE, error_class=HOSTILE)
    out = tmp_path / "evil.html"
    write_report([read_series(record)], out, tmp_path / "png", tmp_path / "svg")
    page = out.read_text()
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "\x1b" not in page  # a terminal escape reaches no one
    assert ("&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;\\x1b[31m$x$&lt;/td&gt;&lt;img "
            "src=x onerror=alert(2)&gt;") in page
    # inside the charts (SVG text: the mark's note, the error class) escaped the same way
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert any("&lt;script&gt;alert(1)" in svg for svg in svgs)
    for svg in svgs:
        ET.fromstring(svg)  # each is well-formed XML: nothing broke out of a text node
    for image in (tmp_path / "svg").glob("*.svg"):
        assert "<script" not in image.read_text().lower()


def test_an_overlay_shows_both_records_and_how_they_ran_differently(tmp_path):
    a = known.known_record(tmp_path / "a.jsonl.gz", model="llama-8b", url="http://one:8000")
    b = known.known_record(tmp_path / "b.jsonl.gz", model="qwen-7b", url="http://two:9000")
    out = soaktop("report", str(a), str(b), "-o", str(tmp_path / "ab.html"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "ab.html").read_text()
    assert "ran differently: " in page and "llama-8b" in page and "qwen-7b" in page
    assert "TTFT p50" in page  # the compare table
    ttft = re.search(r'data-chart="ttft">(.*?)</svg>', page, flags=re.S).group(1)
    assert "A: a.jsonl.gz p50" in ttft and "B: b.jsonl.gz p50" in ttft  # one colour each


def test_png_and_svg_images_of_every_chart(record, tmp_path):
    written = write_report([read_series(record)], None, tmp_path / "png", tmp_path / "svg")
    assert written.page is None
    for key in CHARTS:
        png = (tmp_path / "png" / f"{key}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 500 and height > 200
        ET.parse(tmp_path / "svg" / f"{key}.svg")


def test_the_cli_writes_beside_the_record_and_refuses_bad_input_in_one_line(record, tmp_path):
    assert default_output([Path("/x/run.jsonl.gz")]) == Path("/x/run.html")
    assert default_output([Path("/x/a.jsonl"), Path("/y/b.jsonl.gz")]) == Path("/x/a-vs-b.html")
    local = tmp_path / "known.jsonl.gz"
    local.write_bytes(record.read_bytes())
    out = soaktop("report", str(local))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "known.html").exists() and str(tmp_path / "known.html") in out.stdout
    for args, message in (
            ([str(tmp_path / "missing.jsonl")], "no such record"),
            ([str(local), "-o", str(tmp_path / "no" / "dir" / "r.html")], "cannot write"),
            ([str(tmp_path)], "is a folder"),
            ([str(local), "-o", ""], "cannot write"),
            ([str(local), "-o", str(tmp_path / "known.html" / "r.html")], "cannot write"),
            ([str(local), "--png", str(tmp_path / "known.html")], "cannot make folder"),
            ([str(local), "-o", str(local)], "would overwrite it")):
        bad = soaktop("report", *args)
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in bad.stderr
    assert local.read_bytes() == record.read_bytes()  # the record is never written over


async def test_r_on_the_dashboard_writes_the_report_beside_the_record_and_says_where(tmp_path):
    import asyncio
    import shutil

    from soaktop.tui.app import SoaktopApp
    from soaktop.tui.feeds import ReplayFeed
    from tests.tui.dashboard_apps import sample_events

    record = tmp_path / "sample.jsonl"
    shutil.copy(Path(__file__).parents[2] / "sessions" / "sample.jsonl", record)
    feed = ReplayFeed(sample_events(), speed=1.0, path=record)
    feed.replay.pause()
    app = SoaktopApp(feed, fps=4, theme="dark")
    page = tmp_path / "sample.html"
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        for _ in range(600):  # drawn on a worker thread: the screen is not held meanwhile
            if any("report written" in n.message for n in app._notifications):
                break
            await asyncio.sleep(0.1)
        messages = [n.message for n in app._notifications]
        assert f"report written to {page}" in messages, messages
        assert 'data-chart="ttft"' in page.read_text()
        feed.record_path = None
        await pilot.press("r")
        await pilot.pause(0.1)
        assert "no report: this session keeps no record (--no-record)" in [
            n.message for n in app._notifications]
        app.exit()


def test_the_report_command_never_imports_textual():
    import subprocess
    import sys
    import tempfile

    code = ("import sys; from soaktop.tui.cli import main; "
            "main(['report', 'sessions/sample.jsonl', '-o', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, f"{tmp}/r.html"], capture_output=True,
                             text=True, cwd=Path(__file__).parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
