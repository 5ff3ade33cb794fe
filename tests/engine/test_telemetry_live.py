"""The live telemetry view: the latest reading, the window's figures, fixed memory."""

import pytest

from soaktop.engine.events import GpuSample, HostSample, TelemetryStatus
from soaktop.engine.telemetry.live import LiveTelemetry
from soaktop.tui.telemetry_text import describe_status
from soaktop.tui.text import telemetry_part

S = 1_000_000_000


def sample(t_s, reasons, index=0, host=None, **kw):
    return GpuSample(int(t_s * S), index, host=host, temperature_c=70.0,
                     slowdown_temperature_c=87.0, sm_clock_mhz=1500.0, sm_clock_max_mhz=2000.0,
                     power_w=300.0, power_limit_w=700.0, clock_event_reasons=reasons, **kw)


def test_the_window_covers_only_the_last_seconds():
    live = LiveTelemetry(window_s=10.0)
    for t in range(20):  # power-capped for the first 10 s, thermal for the last 10 s
        live.add(sample(t, ("sw_power_cap",) if t < 10 else ("hw_thermal",)))
    snap = live.snapshot(19 * S)
    now = snap.gpus["0"]
    assert now.latest.t_ns == 19 * S
    # the window starts at 9 s: the capped sample at 9 s holds until 10 s, then thermal to 19 s
    assert now.window["clock_event_fraction"] == {"hw_thermal": pytest.approx(0.9),
                                                  "sw_power_cap": pytest.approx(0.1)}
    assert now.window["sm_clock_ratio"]["mean"] == pytest.approx(0.75)


def test_memory_is_fixed_whatever_the_run_length():
    live = LiveTelemetry(history=50)
    for t in range(10_000):
        live.add(sample(t / 10, ()))
    assert len(live.gpus["0"]) == 50


def test_a_lost_gpu_leaves_the_view_and_says_why():
    live = LiveTelemetry()
    said = []
    live.on_status = said.append
    live.add(sample(0, (), index=0))
    live.add(sample(0, (), index=1))
    live.add(TelemetryStatus(S, "nvml", False, "GPU 1: GPU is lost (fell off the bus); no "
                             "longer sampled", gpu_index=1))
    snap = live.snapshot(2 * S)
    assert list(snap.gpus) == ["0"]
    assert [(s.gpu_index, s.available) for s in said] == [(1, False)]
    assert snap.unavailable == (said[0],)  # the status itself: the words are the UI's
    assert describe_status(snap.unavailable[0]) == (
        "nvml GPU 1: unavailable: GPU 1: GPU is lost (fell off the bus); no longer sampled")


def test_status_line_part_for_gpus_and_host():
    live = LiveTelemetry()
    live.add(sample(1, ("gpu_idle",)))
    live.add(sample(1, ("sw_power_cap", "hw_thermal"), index=3, host="node7"))
    live.add(HostSample(S, cpu_percent=45.2, soaktop_cpu_percent=38.0))
    part = telemetry_part(live.snapshot(2 * S))
    assert part == (" | GPU0 70C (margin 17) 1500/2000 MHz 300/700 W"
                    " | node7 GPU3 70C (margin 17) 1500/2000 MHz 300/700 W"
                    " throttled: sw_power_cap,hw_thermal"
                    " | host CPU 45% soaktop 38%")
    live.add(HostSample(2 * S, cpu_percent=45.2, soaktop_cpu_percent=38.0, watched_pid=4242,
                        watched_cpu_percent=110.4))
    assert telemetry_part(live.snapshot(2 * S)).endswith(
        " | host CPU 45% soaktop 38% pid 4242 110%")


def test_describe_status_says_what_is_missing():
    status = TelemetryStatus(0, "nvml", True, gpu_index=0, info={"name": "NVIDIA H100"},
                             unavailable_fields={"energy_mj": "not supported on this GPU"})
    assert describe_status(status) == ("nvml GPU 0 (NVIDIA H100): available; not available: "
                                       "energy_mj (not supported on this GPU)")
