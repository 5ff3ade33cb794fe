"""The dashboard's per-second history: what goes in comes out in the right column, in fixed
memory, with gaps left empty."""

import math

import numpy as np

from soaktop.engine.events import GpuSample, Mark, Phase
from soaktop.engine.metrics.history import History
from soaktop.engine.metrics.live import LiveSnapshot
from soaktop.engine.telemetry.live import GpuNow, TelemetrySnapshot


def snap(t_s, ttft=None, tokens=0.0, failed=0, gpu=None):
    telemetry = TelemetrySnapshot(gpus={"0": GpuNow(gpu, {})} if gpu else {})
    return LiveSnapshot(t_ns=int(t_s * 1e9), tokens_per_s=tokens, requests_ok=0,
                        requests_failed=failed, errors={}, ttft_p50_ms=ttft, ttft_p95_ms=ttft,
                        itl_p50_ms=None, itl_p95_ms=None, e2e_p50_ms=None,
                        telemetry=telemetry)


def test_points_land_in_their_seconds_and_gaps_stay_empty():
    h = History(seconds=100)
    for second in (1, 2, 4):  # second 3 never recorded (a seek, a stalled screen)
        h.record(second, snap(second, ttft=10.0 * second, tokens=100.0 * second))
    w = h.window(6)
    assert w.end_s == 4
    ttft = w.series["ttft_p50_ms"]
    assert math.isnan(ttft[0]) and math.isnan(ttft[1])  # seconds -1 and 0
    assert ttft[2] == 10.0 and ttft[3] == 20.0 and math.isnan(ttft[4]) and ttft[5] == 40.0
    assert w.series["tokens_per_s"][5] == 400.0


def test_errors_are_per_second_not_cumulative():
    h = History()
    for second, failed in enumerate([0, 2, 2, 5]):
        h.record(second, snap(second, failed=failed))
    assert h.window(4).series["errors"].tolist() == [0, 2, 0, 3]


def test_memory_is_fixed_and_old_seconds_are_forgotten():
    h = History(seconds=10)
    for second in range(25):
        h.record(second, snap(second, tokens=float(second)))
    w = h.window(30)  # more than it holds: the capacity
    assert len(w.series["tokens_per_s"]) == 10
    assert w.series["tokens_per_s"].tolist() == [float(s) for s in range(15, 25)]
    assert all(a.size == 10 for a in h._series.values())


def test_phases_and_marks_fall_in_their_columns_and_gpus_are_kept():
    h = History()
    h.add(Phase(0, 0, 2, "m", "fake", "start"))
    h.add(Phase(int(3.5e9), 1, 4, "m", "fake", "key"))
    h.add(Mark(int(4.2e9), "fan"))
    gpu = GpuSample(0, 0, temperature_c=70.0, slowdown_temperature_c=90.0, sm_clock_mhz=1500.0,
                    sm_clock_max_mhz=2000.0, power_w=300.0,
                    clock_event_reasons=("sw_power_cap",))
    for second in range(6):
        h.record(second, snap(second, gpu=gpu))
    w = h.window(6)
    assert [(c, p.concurrency) for c, p in w.phases] == [(3, 4)]  # "start" is no marker
    assert [(c, m.note) for c, m in w.marks] == [(4, "fan")]
    assert w.gpus["0"]["margin_c"][5] == 20.0
    assert w.gpus["0"]["sm_clock_ratio"][5] == 0.75
    assert w.reasons["0"][5] == ("sw_power_cap",)
    assert np.isnan(h.window(8).gpus["0"]["power_w"][0])
