"""The soak verdict against runs whose drift the test makes: stable, degrading, throttled.

The verdict is data; its sentence is written by soaktop.tui.text (tests/tui/test_summary_text.py).
"""

from dataclasses import replace

import pytest

from soaktop.engine.events import GpuSample, Phase, RequestDone, SessionEnd
from soaktop.engine.metrics.drift import RECENT_REQUESTS, Drift

S = 10**9


def requests(drift, start_s, end_s, ttft_ms=50.0, itl_ms=20.0, every_s=0.1, tokens=20,
             first_id=0):
    """Closed-loop-like requests, one sent every ``every_s``: tokens/s is set by ``itl_ms``."""
    n = int((end_s - start_s) / every_s)
    for i in range(n):
        sent = int((start_s + i * every_s) * S)
        offsets = tuple(int((ttft_ms + k * itl_ms) * 1000) for k in range(tokens))
        drift.add(RequestDone(sent + offsets[-1] * 1000, 0, first_id + i, 1, "f", "m", sent, 8,
                              offsets, offsets[-1], "length"))
    return first_id + n


def gpus(drift, start_s, end_s, clock, temp, reasons=()):
    for t in range(int(start_s * 4), int(end_s * 4)):
        drift.add(GpuSample(t * S // 4, 0, temperature_c=temp, sm_clock_mhz=clock,
                            clock_event_reasons=tuple(reasons)))


def run(phases):
    drift = Drift()
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(30 * S, 1, 4, "m", "f", "warm-up done"))
    next_id = 0
    for start, end, kwargs, gpu in phases:
        next_id = requests(drift, start, end, first_id=next_id, **kwargs)
        if gpu:
            gpus(drift, start, end, *gpu)
    drift.add(SessionEnd(int(phases[-1][1] * S), "completed"))
    return drift.result()


def test_a_steady_run_is_stable():
    result = run([(30, 1230, {}, (1980.0, 65.0))])
    assert result.verdict == "stable"
    assert result.window_s == 300
    assert abs(result.change.tokens_per_s) < 0.02
    assert result.throttle_reasons == {}


def test_throughput_that_falls_without_gpu_data_is_degrading_and_says_why_not_more():
    result = run([(30, 900, {}, None), (900, 1230, {"itl_ms": 30.0, "ttft_ms": 80.0}, None)])
    assert result.verdict == "degrading"
    assert result.change.ttft_p95_ms == pytest.approx(80 / 50 - 1, abs=0.01)
    assert abs(result.change.tokens_per_s) < 0.02  # the same sends: TTFT decided it
    # no GPU figures, so nothing to tell throttling from another cause (the text says so)
    assert result.first.sm_clock_mhz is None and result.last.sm_clock_mhz is None
    assert result.change.sm_clock_mhz is None and result.throttle_reasons == {}


def test_fewer_tokens_a_second_alone_is_degrading():
    result = run([(30, 900, {}, None), (900, 1230, {"every_s": 0.125}, None)])
    assert result.first.tokens_per_s == pytest.approx(200, rel=0.01)
    assert result.change.tokens_per_s == pytest.approx(-0.2, abs=0.02)
    assert abs(result.change.ttft_p95_ms) < 0.01
    assert result.verdict == "degrading"


def test_a_gpu_that_heats_and_slows_while_throughput_falls_is_throttled_with_its_reason():
    result = run([(30, 900, {}, (1980.0, 70.0)),
                  (900, 1230, {"every_s": 0.125}, (1600.0, 87.0, ("sw_thermal",)))])
    assert result.verdict == "throttled"
    assert result.change.sm_clock_mhz < -0.15
    assert -0.25 < result.change.tokens_per_s < -0.15  # one request every 125 ms, not 100
    assert result.change.temperature_c == 17.0
    assert result.throttle_reasons == {"sw_thermal": 1.0}


def test_slower_clocks_without_a_loss_of_throughput_stay_stable():
    result = run([(30, 900, {}, (1980.0, 70.0)),
                  (900, 1230, {}, (1700.0, 80.0, ("sw_power_cap",)))])
    assert result.verdict == "stable"  # held back, but it cost nothing measurable


def test_short_runs_get_no_verdict_and_windows_shrink_for_medium_ones():
    assert run([(30, 50, {}, None)]) is None  # 20 s measured: windows under 10 s
    assert abs(run([(30, 120, {}, None)]).window_s - 30) < 0.5  # a third of 90 s


def test_memory_is_bounded_by_two_windows_not_by_the_run():
    drift = Drift(window_s=60)
    drift.add(Phase(0, 0, 4, "m", "f", "start"))
    requests(drift, 0, 3600, every_s=0.1)
    assert drift._first_n == 600 and drift._first_t.size <= 2 * 600  # the first window's
    assert drift._ring_t.size == RECENT_REQUESTS  # the latest ones: a fixed ring
    assert drift._tokens.size <= 2 * 3601  # a count per second, not per token


def test_tokens_counted_in_bulk_are_those_counted_one_request_at_a_time():
    # requests of one token an arrival are counted a few thousand at a time; the same
    # requests with their token counts spelled out (1 each) take the per-request path
    bulk, each = Drift(window_s=60), Drift(window_s=60)
    for d in (bulk, each):
        d.add(Phase(0, 0, 4, "m", "f", "warm-up done"))
    for i in range(5000):
        sent = i * 40_000_000
        offsets = tuple(range(30_000 + i % 7, 900_000, 29_000 + i % 13))
        done = RequestDone(sent + offsets[-1] * 1000, 0, i, 0, "f", "m", sent, 8, offsets,
                           offsets[-1], "length")
        bulk.add(done)
        each.add(replace(done, arrival_tokens=(1,) * len(offsets)))
    for d in (bulk, each):
        d.add(SessionEnd(201 * S, "completed"))
    assert bulk.result() == each.result() and bulk.result().first.tokens_per_s > 0
    assert bulk._tokens.tolist() == each._tokens.tolist()


# The thresholds are the verdict's definition (5% fewer tokens/s, a TTFT p95 25% higher), so
# they are written out here, not imported: a test that read them from the module would move
# with them. Each is tested just short of its edge and just past it.
@pytest.mark.parametrize(("drop", "verdict"), [(0.045, "stable"), (0.055, "degrading")])
def test_tokens_per_s_degrade_past_a_5_percent_drop_and_not_before(drop, verdict):
    # the same requests sent 1/(1 - drop) times further apart: tokens/s falls by ``drop``
    result = run([(30, 900, {}, None), (900, 1230, {"every_s": 0.1 / (1 - drop)}, None)])
    assert result.change.tokens_per_s == pytest.approx(-drop, abs=0.002)
    assert result.change.ttft_p95_ms == pytest.approx(0.0, abs=1e-6)
    assert result.verdict == verdict


@pytest.mark.parametrize(("rise", "verdict"), [(0.23, "stable"), (0.27, "degrading")])
def test_ttft_p95_degrades_past_a_25_percent_rise_and_not_before(rise, verdict):
    result = run([(30, 900, {}, None), (900, 1230, {"ttft_ms": 50.0 * (1 + rise)}, None)])
    assert result.change.ttft_p95_ms == pytest.approx(rise, abs=0.002)
    assert abs(result.change.tokens_per_s) < 0.002  # the same sends: TTFT alone decides
    assert result.verdict == verdict
