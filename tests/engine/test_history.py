"""The dashboard's history: what goes in comes out in the right column at every resolution, in
fixed memory however long the run, with gaps left empty and each phase saying what changed."""

import math

import numpy as np

from soaktop.engine.events import GpuSample, Mark, Phase
from soaktop.engine.metrics.history import WHOLE_BUCKETS, History
from soaktop.engine.metrics.live import LiveSnapshot
from soaktop.engine.telemetry.live import GpuNow, TelemetrySnapshot


def snap(t_s, ttft=None, tokens=0.0, failed=0, gpu=None):
    telemetry = TelemetrySnapshot(gpus={"0": GpuNow(gpu, {})} if gpu else {})
    return LiveSnapshot(t_ns=int(t_s * 1e9), tokens_per_s=tokens, requests_ok=0,
                        requests_failed=failed, errors={}, ttft_p50_ms=ttft, ttft_p95_ms=ttft,
                        itl_p50_ms=None, itl_p95_ms=None, e2e_p50_ms=None,
                        telemetry=telemetry)


def gpu_sample(clock=1500.0, reasons=()):
    return GpuSample(0, 0, temperature_c=70.0, slowdown_temperature_c=90.0, sm_clock_mhz=clock,
                     sm_clock_max_mhz=2000.0, power_w=300.0, power_limit_w=600.0,
                     clock_event_reasons=reasons)


def test_points_land_in_their_seconds_and_gaps_stay_empty():
    h = History(seconds=100)
    for second in (1, 2, 4):  # second 3 never recorded (a seek, a stalled screen)
        h.record(second, snap(second, ttft=10.0 * second, tokens=100.0 * second))
    w = h.window(6)
    assert (w.start_s, w.end_s, w.step_s) == (-1, 4, 1)
    ttft = w.series["ttft_p50_ms"]
    assert math.isnan(ttft[0]) and math.isnan(ttft[1])  # seconds -1 and 0
    assert ttft[2] == 10.0 and ttft[3] == 20.0 and math.isnan(ttft[4]) and ttft[5] == 40.0
    assert w.series["tokens_per_s"][5] == 400.0
    assert w.low["tokens_per_s"][5] == w.high["tokens_per_s"][5] == 400.0


def test_errors_are_per_second_not_cumulative():
    h = History()
    for second, failed in enumerate([0, 2, 2, 5]):
        h.record(second, snap(second, failed=failed))
    assert h.window(4).series["errors"].tolist() == [0, 2, 0, 3]


def test_the_fine_ring_forgets_old_seconds_but_coarser_ones_keep_them():
    h = History(seconds=10)
    for second in range(25):
        h.record(second, snap(second, tokens=float(second)))
    w = h.window(30)  # more than it holds: the capacity
    assert len(w.series["tokens_per_s"]) == 10
    assert w.series["tokens_per_s"].tolist() == [float(s) for s in range(15, 25)]
    coarse = h.window(3, step_s=10)  # seconds 0-9, 10-19, 20-24 (the last still filling)
    assert coarse.start_s == 0 and coarse.step_s == 10
    assert coarse.series["tokens_per_s"].tolist() == [4.5, 14.5, 22.0]
    assert coarse.low["tokens_per_s"].tolist() == [0.0, 10.0, 20.0]
    assert coarse.high["tokens_per_s"].tolist() == [9.0, 19.0, 24.0]


def test_a_coarse_column_keeps_a_spike_and_a_dip_the_mean_would_hide():
    h = History()
    for second in range(120):
        ttft = 500.0 if second == 75 else 100.0
        clock = 900.0 if second == 30 else 1800.0
        h.record(second, snap(second, ttft=ttft, gpu=gpu_sample(clock)))
    w = h.window(2, step_s=60)
    assert w.high["ttft_p95_ms"].tolist() == [100.0, 500.0]
    assert w.series["ttft_p95_ms"][1] < 110.0  # the mean alone would hide it
    assert w.gpus_low["0"]["sm_clock_ratio"].tolist() == [0.45, 0.9]
    assert w.gpus["0"]["power_ratio"][0] == 0.5


def test_hours_of_seconds_hold_fixed_memory_and_the_whole_run_stays_from_its_start():
    h = History()
    h.record(0, snap(0, tokens=1.0, gpu=gpu_sample(1800.0)))
    sizes = [(r.lo.nbytes, r.hi.nbytes, r.sum.nbytes, r.count.nbytes, r.bits.nbytes,
              r.bucket.nbytes) for r in h.rings()]
    hours = 6
    for second in range(1, hours * 3600):
        clock = 1000.0 if 3600 <= second < 3660 else 1800.0  # one minute's dip, an hour in
        reasons = ("sw_thermal",) if second == 3630 else ()
        h.record(second, snap(second, tokens=100.0 + second % 7, failed=second // 600,
                              gpu=gpu_sample(clock, reasons)))
    assert [(r.lo.nbytes, r.hi.nbytes, r.sum.nbytes, r.count.nbytes, r.bits.nbytes,
             r.bucket.nbytes) for r in h.rings()] == sizes
    assert h.whole_bucket_s == 32  # 21,600 s in 1,024 buckets: 1, 2, 4, ... 32 s each
    w = h.whole(120)
    assert w.start_s == 0 and w.step_s == 192  # six buckets a column fit 6 h into 120 - 8
    columns = math.ceil(hours * 3600 / w.step_s)
    tokens = w.series["tokens_per_s"]
    assert np.isfinite(tokens[:columns]).all() and np.isnan(tokens[columns:]).all()
    assert w.low["tokens_per_s"][0] == 1.0  # the very first second is still there
    dip = 3600 // w.step_s
    assert w.gpus_low["0"]["sm_clock_ratio"][dip] == 0.5
    assert np.nanmin(np.delete(w.gpus_low["0"]["sm_clock_ratio"], [dip, dip + 1])) == 0.9
    assert "sw_thermal" in w.reasons["0"][3630 // w.step_s]
    assert w.reasons["0"][0] == () and w.reasons["0"][-1] is None  # no sample after the end
    assert np.nansum(w.series["errors"] * w.step_s) <= hours * 6 + 1
    assert np.nanmax(w.high["errors"]) == 1.0
    assert h.window(3, step_s=60).end_s == hours * 3600 - 1


def test_the_whole_run_is_exact_while_it_fits():
    h = History()
    for second in range(50):
        h.record(second, snap(second, tokens=float(second)))
    w = h.whole(100)
    assert w.step_s == 1 and w.series["tokens_per_s"][:50].tolist() == list(map(float, range(50)))
    assert h.whole(10).step_s == 5
    h2 = History()
    for second in range(WHOLE_BUCKETS + 1):  # one more than the ring: it halves once
        h2.record(second, snap(second, tokens=float(second)))
    assert h2.whole_bucket_s == 2
    w2 = h2.whole(WHOLE_BUCKETS)
    assert w2.series["tokens_per_s"][0] == 0.5 and w2.high["tokens_per_s"][0] == 1.0
    assert w2.series["tokens_per_s"][WHOLE_BUCKETS // 2] == float(WHOLE_BUCKETS)


def test_phases_and_marks_fall_in_their_columns_and_gpus_are_kept():
    h = History()
    h.add(Phase(0, 0, 2, "m", "fake", "start"))
    h.add(Phase(int(3.5e9), 1, 4, "m", "fake", "key"))
    h.add(Mark(int(4.2e9), "fan"))
    for second in range(6):
        h.record(second, snap(second, gpu=gpu_sample(reasons=("sw_power_cap",))))
    w = h.window(6)
    assert [(c, p.concurrency) for c, p, _ in w.phases] == [(3, 4)]  # "start" is no tick
    assert [(c, m.note) for c, m in w.marks] == [(4, "fan")]
    assert w.gpus["0"]["margin_c"][5] == 20.0
    assert w.gpus["0"]["sm_clock_ratio"][5] == 0.75
    assert w.reasons["0"][5] == ("sw_power_cap",)
    assert np.isnan(h.window(8).gpus["0"]["power_w"][0])
    assert [(c, p.phase_id) for c, p, _ in h.whole(3).phases] == [(1, 1)]  # 2 s a column


def test_each_phase_says_what_it_changed():
    h = History()
    for phase in (Phase(0, 0, 2, "tiny", "local", "start", warmup=True),
                  Phase(1, 1, 2, "tiny", "local", "warm-up done"),
                  Phase(2, 2, 8, "tiny", "local", "key"),
                  Phase(3, 3, 8, "llama-1b", "local", "key"),
                  Phase(4, 4, 0, "llama-1b", "local", "paused"),
                  Phase(5, 5, 8, "llama-1b", "local", "resumed"),
                  Phase(6, 6, 0, "llama-1b", "local", "key", rate=5.0),
                  Phase(7, 7, 0, "llama-1b", "local", "key", rate=6.0),
                  Phase(8, 8, 0, "llama-1b", "local", "key: paused", rate=0.0),  # the p key
                  Phase(9, 9, 0, "llama-1b", "local", "key: resumed", rate=6.0)):
        h.add(phase)
    h.record(0, snap(0))
    assert [change for _, _, change in h.window(1).phases] == [
        "warmup_done", "concurrency", "model", "pause", "concurrency", "rate", "rate", "pause",
        "rate"]


def test_an_outline_then_the_rest_is_the_history_of_whole_points():
    """attach's two passes: tokens/s and the GPUs of every point first, then the rest of each
    point, in order, leave the History that recording each point whole leaves, to the bit
    (the whole-run ring halves twice on the way, so sums in another order would differ)."""
    rng = np.random.default_rng(3)
    seconds = list(range(1, 3000)) + [3000, 3000]  # a second with two points in it
    points = [snap(s, ttft=float(rng.gamma(3.0, 20.0)), tokens=float(rng.uniform(90, 110)),
                   failed=s // 97, gpu=gpu_sample(1500.0 + float(rng.normal(0, 50)),
                                                  ("sw_power_cap",) if s % 11 == 0 else ()))
              for s in seconds]
    ticks = [Phase(0, 0, 2, "m", "fake", "start"), Phase(10**12, 1, 4, "m", "fake", "key"),
             Mark(2 * 10**12, "here")]

    whole = History()
    for tick in ticks:
        whole.add(tick)
    for second, point in zip(seconds, points):
        whole.record(second, point)

    two = History()
    for tick in ticks:
        two.outline_tick(tick)
    for second, point in zip(seconds, points):
        two.outline(second, point.tokens_per_s,
                    {key: now.latest for key, now in point.telemetry.gpus.items()})
    assert two.outline_ahead == len(points)
    outlined = two.whole(100)
    columns = math.ceil((outlined.end_s + 1) / outlined.step_s)  # the whole run, at once
    assert np.isfinite(outlined.series["tokens_per_s"][:columns]).all()
    assert np.isnan(outlined.series["ttft_p50_ms"]).all()
    for tick in ticks:  # the full read brings them again: not counted twice
        two.add(tick)
    for i, (second, point) in enumerate(zip(seconds, points)):
        two.record(second, point)
        if i == 1500:  # half way: the first half's detail is drawn, the rest outlined
            half = two.whole(100).series["ttft_p50_ms"]
            assert np.isfinite(half[:40]).all() and np.isnan(half[60:]).all()
    assert two.outline_ahead == 0
    for a, b in zip(whole.rings(), two.rings(), strict=True):
        assert a.width_s == b.width_s
        for name in ("bucket", "lo", "hi", "sum", "count", "bits"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert list(two._phases) == list(whole._phases) and list(two._marks) == list(whole._marks)
    assert two.latest_s == whole.latest_s and two._gpu_rows == whole._gpu_rows
    w1, w2 = whole.whole(100), two.whole(100)
    for name in ("ttft_p50_ms", "tokens_per_s", "errors"):
        np.testing.assert_array_equal(w1.series[name], w2.series[name])
