"""The soak verdict against runs whose drift the test makes: stable, degrading, throttled,
too short to judge; when steady state began; each threshold from both sides.

The runs are built from events directly (fast): requests sent on a schedule, their TTFT and
gaps chosen by the test (with seeded noise where the point is noise), GPU samples at 4 Hz.
The verdict is data; its sentence is written by soaktop.tui.text
(tests/tui/test_summary_text.py).
"""

from dataclasses import replace

import numpy as np
import pytest

from soaktop.engine.events import GpuSample, Phase, RequestDone, SessionEnd, SessionStart
from soaktop.engine.metrics.drift import RECENT_REQUESTS, Drift, hodges_lehmann, mser

S = 10**9
START_S = 30  # the warm-up ends here; the measured run's seconds count from it


def requests(drift, start_s, end_s, ttft_ms=50.0, itl_ms=20.0, every_s=0.1, tokens=20,
             first_id=0, noise=None):
    """Requests sent one every ``every_s``: tokens/s is ``tokens / every_s``. ``noise``: a
    seeded generator whose lognormal factor (median 1) multiplies each TTFT."""
    n = int(round((end_s - start_s) / every_s))
    for i in range(n):
        sent = int((start_s + i * every_s) * S)
        ttft = ttft_ms(start_s + i * every_s) if callable(ttft_ms) else ttft_ms
        if noise is not None:
            ttft *= float(noise.lognormal(0.0, 0.3))
        offsets = tuple(int((ttft + k * itl_ms) * 1000) for k in range(tokens))
        drift.add(RequestDone(sent + offsets[-1] * 1000, 0, first_id + i, 1, "f", "m", sent, 8,
                              offsets, offsets[-1], "length"))
    return first_id + n


def gpus(drift, start_s, end_s, clock, temp, reasons=(), gpu=0, reason_every=1):
    """4 samples a second of GPU ``gpu``; ``reasons`` active in one sample of ``reason_every``
    (``reason_every=(k, n)``: in k of every n)."""
    k, n = reason_every if isinstance(reason_every, tuple) else (1, reason_every)
    for t in range(int(start_s * 4), int(end_s * 4)):
        active = tuple(reasons) if t % n < k else ()
        drift.add(GpuSample(t * S // 4, gpu, temperature_c=temp, sm_clock_mhz=clock,
                            clock_event_reasons=active))


def run(phases, drift=None, header=None):
    """Warm-up to 30 s, then ``phases``: (start, end, request kwargs, gpu args or None).
    The requests start a second before the warm-up's end (as a real run's are in flight by
    then), so the first measured second is as full as the rest."""
    drift = drift or Drift()
    if header is not None:
        drift.add(header)
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    next_id = 0
    for i, (start, end, kwargs, gpu) in enumerate(phases):
        next_id = requests(drift, start - (i == 0), end, first_id=next_id, **kwargs)
        if gpu:
            gpus(drift, start, end, *gpu)
    drift.add(SessionEnd(int(phases[-1][1] * S), "completed"))
    return drift.result()


def test_a_steady_run_is_stable_and_steady_from_its_start():
    result = run([(30, 1230, {}, (1980.0, 65.0))])
    assert result.verdict == "stable" and result.deciding == ()
    assert result.window_s == 300 and result.measured_s == pytest.approx(1200, abs=0.5)
    assert result.steady_state_s == 0 and result.settled
    assert (result.early_from_s, result.late_from_s) == (0, 900)
    assert abs(result.measures["tokens_per_s"].change) < 1e-12
    assert all(m.direction == "same" for m in result.measures.values())
    assert result.gpus["0"].throttle_reasons == {} and not result.gpus["0"].held_back


def test_a_steady_run_with_a_noisy_p95_is_stable():
    # one request every 2 s, TTFTs from one heavy-tailed distribution all run long: a window
    # holds 150, and its p95 moves with the few slowest; here it rose by half (past the old
    # verdict's fixed +25% line) while nothing changed
    rng = np.random.default_rng(20)
    ttfts = 50.0 * (1 + rng.pareto(1.5, 600))
    drift = Drift()
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    for i, ttft in enumerate(ttfts):
        requests(drift, START_S - 1 + 2 * i, START_S + 1 + 2 * i, ttft_ms=float(ttft),
                 every_s=2.0, first_id=i)
    drift.add(SessionEnd((START_S + 1200) * S, "completed"))
    result = drift.result()
    sent = 2 * np.arange(600) - 1  # seconds from the warm-up's end
    early = ttfts[(sent >= result.early_from_s) & (sent < result.early_from_s + 300)]
    late = ttfts[sent >= result.late_from_s]
    assert len(early) == 150 and len(late) == 149
    assert np.percentile(late, 95) / np.percentile(early, 95) - 1 > 0.4  # noisy
    assert result.measures["ttft_ms"].p_value > 0.5
    assert result.verdict == "stable"


def test_a_ttft_that_rises_15_percent_is_degrading_beyond_noise():
    rng = np.random.default_rng(3)
    result = run([(30, 900, {"noise": rng}, None),
                  (900, 1230, {"ttft_ms": 50.0 * 1.15, "noise": rng}, None)])
    ttft = result.measures["ttft_ms"]
    assert ttft.p_value < 0.001
    assert ttft.change == pytest.approx(0.15, abs=0.03)
    assert ttft.low < ttft.change < ttft.high and ttft.high - ttft.low < 0.06
    assert ttft.direction == "worse" and ttft.test == "requests"
    assert ttft.n_early == pytest.approx(3000, abs=2) and ttft.n_late == pytest.approx(3000, abs=2)
    assert result.verdict == "degrading" and result.deciding == ("ttft_ms",)


def test_a_run_faster_at_the_end_is_not_degrading():
    result = run([(30, 900, {}, None),
                  (900, 1230, {"every_s": 0.08, "ttft_ms": 35.0, "itl_ms": 15.0}, None)])
    m = result.measures
    assert m["tokens_per_s"].change == pytest.approx(0.25, abs=0.01)
    assert m["ttft_ms"].change == pytest.approx(-0.3, abs=0.001)
    assert m["itl_ms"].change == pytest.approx(-0.25, abs=0.001)
    assert all(x.direction == "better" and x.p_value < 0.01 for x in m.values())
    assert result.verdict == "stable"


def test_fewer_tokens_a_second_alone_is_degrading():
    result = run([(30, 900, {}, None), (900, 1230, {"every_s": 0.125}, None)])
    tps = result.measures["tokens_per_s"]
    assert tps.early == pytest.approx(200, rel=0.001) and tps.test == "blocks"
    assert tps.n_early == tps.n_late == 10  # block means, not seconds
    assert tps.change == pytest.approx(-0.2, abs=0.005)
    assert result.measures["ttft_ms"].change == 0
    assert result.verdict == "degrading" and result.deciding == ("tokens_per_s",)


def test_a_4_minute_run_is_too_short_to_judge():
    result = run([(30, 270, {}, (1980.0, 65.0))])
    assert result.verdict == "too short to judge"
    assert result.measured_s < 241 and result.window_s is None and result.measures == {}


# The thresholds are the verdict's definition, so they are written out here, not imported: a
# test that read them from the module would move with them. Each is tested just short of
# its edge and just past it, with the difference beyond noise both times (so the size alone
# decides).
@pytest.mark.parametrize(("measured_s", "verdict"),
                         [(299, "too short to judge"), (300, "stable")])
def test_a_verdict_needs_300_s_of_steady_running(measured_s, verdict):
    result = run([(30, 30 + measured_s, {}, None)])
    assert result.steady_state_s == 0
    assert result.verdict == verdict


@pytest.mark.parametrize(("drop", "verdict"), [(0.045, "stable"), (0.055, "degrading")])
def test_tokens_per_s_degrade_past_a_5_percent_drop_and_not_before(drop, verdict):
    # the same requests sent 1/(1 - drop) times further apart: tokens/s falls by ``drop``
    result = run([(30, 900, {}, None), (900, 1230, {"every_s": 0.1 / (1 - drop)}, None)])
    tps = result.measures["tokens_per_s"]
    assert tps.change == pytest.approx(-drop, abs=0.002) and tps.p_value < 0.001
    assert result.measures["ttft_ms"].change == 0
    assert result.verdict == verdict


@pytest.mark.parametrize(("rise", "verdict"), [(0.09, "stable"), (0.11, "degrading")])
def test_the_median_ttft_degrades_past_a_10_percent_rise_and_not_before(rise, verdict):
    result = run([(30, 900, {}, None), (900, 1230, {"ttft_ms": 50.0 * (1 + rise)}, None)])
    ttft = result.measures["ttft_ms"]
    assert ttft.change == pytest.approx(rise, abs=0.001) and ttft.p_value < 0.001
    assert abs(result.measures["tokens_per_s"].change) < 0.002  # the same sends
    assert result.verdict == verdict


@pytest.mark.parametrize(("rise", "verdict"), [(0.09, "stable"), (0.11, "degrading")])
def test_the_median_itl_degrades_past_a_10_percent_rise_and_not_before(rise, verdict):
    result = run([(30, 900, {}, None), (900, 1230, {"itl_ms": 20.0 * (1 + rise)}, None)])
    itl = result.measures["itl_ms"]
    assert itl.change == pytest.approx(rise, abs=0.001) and itl.p_value < 0.001
    assert result.measures["ttft_ms"].change == 0
    assert result.verdict == verdict


def test_a_rise_past_the_threshold_that_noise_could_make_is_not_degrading():
    # ten requests a window, TTFTs spread wide: the late median 30% higher, p well above 0.01
    rng = np.random.default_rng(11)
    values = rng.lognormal(np.log(50.0), 1.0, 60)
    drift = Drift()
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    for i, ttft in enumerate(values):
        factor = 1.3 if i >= 30 else 1.0
        requests(drift, START_S + 20 * i, START_S + 20 * i + 1, ttft_ms=float(ttft) * factor,
                 every_s=1.0, first_id=i)
    drift.add(SessionEnd((START_S + 1200) * S, "completed"))
    result = drift.result()
    ttft = result.measures["ttft_ms"]
    assert ttft.change > 0.10 and ttft.direction == "worse"
    assert ttft.p_value > 0.01
    assert "ttft_ms" not in result.deciding


SLOW = {"every_s": 0.125}  # tokens/s down 20%: degrading; throttled or not is the GPUs' say


@pytest.mark.parametrize(("drop", "verdict"), [(0.025, "degrading"), (0.035, "throttled")])
def test_a_gpu_is_held_back_past_a_3_percent_clock_drop_and_not_before(drop, verdict):
    result = run([(30, 900, {}, (1980.0, 70.0)),
                  (900, 1230, SLOW, (1980.0 * (1 - drop), 80.0, ("sw_thermal",)))])
    clock = result.gpus["0"].sm_clock_mhz
    assert clock.change == pytest.approx(-drop, abs=1e-9) and clock.p_value < 0.001
    assert result.gpus["0"].throttle_reasons == {"sw_thermal": 1.0}
    assert result.verdict == verdict


@pytest.mark.parametrize(("k", "verdict"), [(2, "degrading"), (3, "throttled")])
def test_a_reason_counts_in_5_percent_of_samples_and_not_fewer(k, verdict):
    # a throttling reason in k of every 50 samples: 4%, 6%
    drift = Drift()
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    requests(drift, 29, 900)
    requests(drift, 900, 1230, first_id=10**6, **SLOW)
    gpus(drift, 30, 900, 1980.0, 70.0)
    gpus(drift, 900, 1230, 1500.0, 85.0, ("hw_slowdown",), reason_every=(k, 50))
    drift.add(SessionEnd(1230 * S, "completed"))
    result = drift.result()
    shares = result.gpus["0"].throttle_reasons
    assert shares == ({} if k == 2 else {"hw_slowdown": pytest.approx(0.06)})
    assert result.verdict == verdict


def test_slower_clocks_without_a_loss_of_throughput_stay_stable():
    result = run([(30, 900, {}, (1980.0, 70.0)),
                  (900, 1230, {}, (1700.0, 80.0, ("sw_power_cap",)))])
    assert result.gpus["0"].held_back
    assert result.verdict == "stable"  # held back, but it cost nothing measurable


def test_a_clock_drop_with_no_reason_active_is_not_throttling():
    result = run([(30, 900, {}, (1980.0, 70.0)), (900, 1230, SLOW, (1500.0, 70.0, ()))])
    assert result.gpus["0"].reasons_reported and not result.gpus["0"].held_back
    assert result.verdict == "degrading"


def test_one_gpu_of_eight_throttling_is_named_with_its_reasons_and_its_own_drop():
    header = SessionStart(0, 1, "2026-12-01T00:00:00+00:00", {}, {"nvidia": {"gpus": [
        {"index": i, "name": "NVIDIA H100 80GB HBM3"} for i in range(8)]}}, {})
    drift = Drift()
    drift.add(header)
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    requests(drift, 29, 900)
    requests(drift, 900, 1230, first_id=10**6, **SLOW)
    for gpu in range(8):
        falls = gpu == 3
        gpus(drift, 30, 900, 1980.0, 70.0, gpu=gpu)
        gpus(drift, 900, 1230, 1500.0 if falls else 1980.0, 88.0 if falls else 70.0,
             ("sw_thermal", "hw_thermal") if falls else (), gpu=gpu)
    drift.add(SessionEnd(1230 * S, "completed"))
    result = drift.result()
    assert result.verdict == "throttled" and result.worst_gpu == "3"
    worst = result.gpus["3"]
    assert worst.name == "NVIDIA H100 80GB HBM3"
    assert worst.sm_clock_mhz.early == 1980 and worst.sm_clock_mhz.late == 1500
    assert worst.sm_clock_mhz.change == pytest.approx(1500 / 1980 - 1)
    assert worst.temperature_c.change == pytest.approx(18.0)  # °C, not relative
    assert worst.throttle_reasons == {"hw_thermal": 1.0, "sw_thermal": 1.0}
    assert [k for k, g in result.gpus.items() if g.held_back] == ["3"]
    # averaged over the eight, the same fall would read as a few percent
    mean = np.mean([g.sm_clock_mhz.late / g.sm_clock_mhz.early for g in result.gpus.values()])
    assert mean - 1 == pytest.approx(-0.0303, abs=0.001)


def test_gpus_of_other_hosts_are_kept_apart():
    drift = Drift()
    drift.add(Phase(0, 0, 4, "m", "f", "start", True))
    drift.add(Phase(START_S * S, 1, 4, "m", "f", "warm-up done"))
    requests(drift, 29, 1230)
    for t in range(30 * 4, 1230 * 4):
        for host, clock in (("a", 1980.0), ("b", 1980.0 if t < 900 * 4 else 1400.0)):
            drift.add(GpuSample(t * S // 4, 0, source="dcgm", host=host, sm_clock_mhz=clock))
    drift.add(SessionEnd(1230 * S, "completed"))
    result = drift.result()
    assert set(result.gpus) == {"a/0", "b/0"} and result.worst_gpu == "b/0"
    assert not result.gpus["b/0"].reasons_reported and result.gpus["b/0"].name is None


def test_steady_state_starts_after_a_start_up_transient_and_the_early_window_with_it():
    # the first 2 minutes slow (a cold cache): TTFT 3x, fewer tokens
    result = run([(30, 150, {"ttft_ms": 150.0, "every_s": 0.2}, None), (150, 1230, {}, None)])
    assert result.steady_state_s == pytest.approx(120, abs=5) and result.settled
    assert result.early_from_s == result.steady_state_s
    assert result.verdict == "stable"
    assert abs(result.measures["ttft_ms"].change) < 0.01  # the transient is not compared


def test_a_run_that_keeps_drifting_never_settles():
    # TTFT rising all run long: no start after which it stays put; the search range's end
    result = run([(30, 1230, {"ttft_ms": lambda t: 50.0 + (t - 30) * 0.05}, None)])
    assert not result.settled and result.steady_state_s == 600  # min(10 min, half the run)
    assert result.verdict == "degrading"


def test_mser_finds_the_end_of_a_transient_and_zero_for_a_flat_series():
    assert mser(np.full(100, 3.0), 50) == 0
    assert mser(np.r_[np.linspace(10, 1, 20), np.ones(80)], 50) in (19, 20)
    flat_after_nan = np.r_[np.nan, np.nan, np.full(20, 2.0)]
    assert mser(flat_after_nan, 10) == 0  # batches with no value do not count


def test_the_hodges_lehmann_shift_and_its_interval():
    # against the n1 x n2 differences made out in full
    rng = np.random.default_rng(5)
    a, b = rng.normal(10, 2, 40), rng.normal(12, 2, 50)
    shift, low, high = hodges_lehmann(a, b)
    differences = np.sort((b[:, None] - a[None, :]).ravel())
    assert shift == pytest.approx(np.median(differences), abs=1e-9)
    # Moses: the k-th smallest and k-th largest, k = floor(n1 n2 / 2 - 1.96 sqrt(n1 n2
    # (n1 + n2 + 1) / 12)) = floor(1000 - 1.96 * 123.15) = 758
    assert low == pytest.approx(differences[758 - 1], abs=1e-9)
    assert high == pytest.approx(differences[2000 - 758], abs=1e-9)


def test_a_shift_within_rounding_is_no_move_either_way():
    from soaktop.engine.metrics.drift import _compare

    early = np.linspace(197.0, 198.0, 10)
    rounding = _compare(early, early * (1 - 1e-15), (197.5, 197.5), -1)
    assert rounding.change != 0 and rounding.direction == "same"
    assert _compare(early, early * (1 - 1e-6), (197.5, 197.5), -1).direction == "worse"
    assert _compare(early, early * (1 + 1e-6), (197.5, 197.5), -1).direction == "better"


def test_the_shift_of_large_samples_thinned_is_that_of_the_samples_whole(monkeypatch):
    import soaktop.engine.metrics.drift as drift_module

    rng = np.random.default_rng(6)
    a, b = rng.lognormal(4.0, 0.3, 9000), rng.lognormal(4.05, 0.3, 13000)
    thinned = hodges_lehmann(a, b)
    monkeypatch.setattr(drift_module, "HL_MOST", 10**6)  # every value: the exact answer
    whole = hodges_lehmann(a, b)
    width = whole[2] - whole[1]
    assert thinned == pytest.approx(whole, abs=0.01 * width)
    # and as wide as theory says for a normal shift: 1.96 * 2 sigma sqrt(1/n1 + 1/n2) over
    # the rank test's efficiency, sqrt(3 / pi)
    x, y = rng.normal(10, 2, 20000), rng.normal(12, 2, 30000)
    shift, low, high = hodges_lehmann(x, y)
    assert low < 2.0 < high
    assert high - low == pytest.approx(3.92 * 2 * np.sqrt(1 / 20000 + 1 / 30000)
                                       * np.sqrt(np.pi / 3), rel=0.05)


def test_memory_is_bounded_by_the_first_minutes_and_fixed_rings_not_by_the_run():
    drift = Drift(window_s=60)
    drift.add(Phase(0, 0, 4, "m", "f", "start"))
    requests(drift, 0, 3600, every_s=0.1)
    gpus(drift, 0, 3600, 1980.0, 70.0)
    assert drift._first_n == 6600 and drift._first_t.size <= 2 * 6600  # the first 11 min
    assert drift._ring_t.size == RECENT_REQUESTS  # the latest ones: a fixed ring
    assert drift._tokens.size <= 2 * 3601  # a count per second, not per token
    assert drift._ttft_n.size == drift._tokens.size
    seconds = drift._gpus["0"]
    assert seconds.first.shape[0] == 660 and seconds.ring.shape[0] == 120  # fixed


def test_tokens_counted_in_bulk_are_those_counted_one_request_at_a_time():
    # requests of one token an arrival are counted a few thousand at a time; the same
    # requests with their token counts spelled out (1 each) take the per-request path
    bulk, each = Drift(window_s=60), Drift(window_s=60)
    for d in (bulk, each):
        d.add(Phase(0, 0, 4, "m", "f", "warm-up done"))
    for i in range(5000):
        sent = i * 100_000_000
        offsets = tuple(range(30_000 + i % 7, 900_000, 29_000 + i % 13))
        done = RequestDone(sent + offsets[-1] * 1000, 0, i, 0, "f", "m", sent, 8, offsets,
                           offsets[-1], "length")
        bulk.add(done)
        each.add(replace(done, arrival_tokens=(1,) * len(offsets)))
    for d in (bulk, each):
        d.add(SessionEnd(501 * S, "completed"))
    assert bulk.result() == each.result()
    assert bulk.result().measures["tokens_per_s"].early > 0
    assert bulk._tokens.tolist() == each._tokens.tolist()
