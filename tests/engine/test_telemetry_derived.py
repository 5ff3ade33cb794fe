"""Reason decoding and the derived thermal and energy figures, against hand-computed values."""

import pynvml
import pytest

from soaktop.engine.events import (
    GpuSample,
    HostSample,
    Phase,
    RequestDone,
    ServerSample,
    SessionEnd,
)
from soaktop.engine.metrics.summary import SessionSummary
from soaktop.engine.telemetry.derived import GpuWindow, ServerWindow, energy_figures
from soaktop.engine.telemetry.reasons import BITS, THROTTLING, decode

S = 1_000_000_000


def test_decode_names_every_bit_and_keeps_unknown_ones():
    assert decode(0) == ()
    assert decode(0x4 | 0x40) == ("sw_power_cap", "hw_thermal")
    assert decode(0x1 | 0x1000) == ("gpu_idle", "bit_12")


def test_the_bit_table_is_nvmls():
    """Our table is written out (DCGM text needs no NVML); it must match the binding's ABI."""
    nvml_names = {
        "gpu_idle": "nvmlClocksEventReasonGpuIdle",
        "applications_clocks": "nvmlClocksEventReasonApplicationsClocksSetting",
        "sw_power_cap": "nvmlClocksEventReasonSwPowerCap",
        "hw_slowdown": "nvmlClocksThrottleReasonHwSlowdown",
        "sync_boost": "nvmlClocksEventReasonSyncBoost",
        "sw_thermal": "nvmlClocksEventReasonSwThermalSlowdown",
        "hw_thermal": "nvmlClocksEventReasonHwThermalSlowdown",
        "hw_power_brake": "nvmlClocksEventReasonHwPowerBrakeSlowdown",
        "display_clocks": "nvmlClocksEventReasonDisplayClockSetting",
    }
    assert {name: bit for bit, name in BITS.items()} == {
        name: getattr(pynvml, constant) for name, constant in nvml_names.items()}
    assert "gpu_idle" not in THROTTLING and "sw_power_cap" in THROTTLING


def gpu(t_s, **kw):
    kw.setdefault("slowdown_temperature_c", 87.0)
    kw.setdefault("sm_clock_max_mhz", 2000.0)
    kw.setdefault("power_limit_w", 700.0)
    return GpuSample(t_ns=int(t_s * S), gpu_index=kw.pop("gpu_index", 0), **kw)


def test_thermal_ratios_margin_and_energy_from_the_counter():
    w = GpuWindow()
    # 3 s at 350 W by the energy counter (mJ); the instantaneous readings (mean 400 W)
    # disagree on purpose: energy and mean power must come from the counter
    for t, temp, clock, power, energy in [(0, 60, 2000, 300, 10_000_000),
                                          (1, 70, 1800, 500, 10_350_000),
                                          (2, 80, 1600, 300, 10_700_000),
                                          (3, 75, 1800, 500, 11_050_000)]:
        w.add(gpu(t, temperature_c=temp, sm_clock_mhz=clock, power_w=power, energy_mj=energy))
    r = w.result()
    assert r["temperature_c"] == {"mean": 71.25, "max": 80}
    assert r["temperature_margin_c"]["min"] == 7  # 87 - 80
    assert r["sm_clock_ratio"]["mean"] == pytest.approx(0.9)
    assert r["sm_clock_ratio"]["min"] == pytest.approx(0.8)
    assert r["energy_j"] == pytest.approx(1050.0)
    assert r["energy_from"] == "counter"
    assert r["power_w"]["mean"] == pytest.approx(350.0)  # 1,050 J over 3 s, not 400
    assert r["power_ratio"]["mean"] == pytest.approx(400 / 700)  # the readings over the limit


def test_without_an_energy_counter_mean_power_is_the_sampled_mean():
    w = GpuWindow()
    for t, p in enumerate([300, 400, 500]):
        w.add(gpu(t, power_w=p))
    r = w.result()
    assert r["power_w"]["mean"] == 400 and r["energy_j"] is None
    assert r["energy_from"] == "power samples"


def test_an_energy_counter_reset_skips_the_gap():
    w = GpuWindow()
    for t, e in [(0, 5_000), (1, 6_000), (2, 100), (3, 1_100)]:  # driver reloaded at t=2
        w.add(gpu(t, energy_mj=e))
    assert w.result()["energy_j"] == pytest.approx(2.0)
    assert w.mean_power_w() == pytest.approx(1.0)  # 2 J over the 2 s that were measured


def test_reason_fractions_from_samples_hold_each_reading_until_the_next():
    w = GpuWindow()
    # power cap at 0 s (held 1 s), none at 1 s (held 2 s), cap+thermal at 3 s (held 1 s)
    for t, reasons in [(0, ("sw_power_cap",)), (1, ()), (3, ("sw_power_cap", "hw_thermal")),
                       (4, ())]:
        w.add(gpu(t, clock_event_reasons=reasons))
    fractions, source = w.clock_event_fractions()
    assert source == "samples"
    assert fractions == {"hw_thermal": pytest.approx(0.25), "sw_power_cap": pytest.approx(0.5)}


def test_reason_fractions_from_the_drivers_counters_win_over_samples():
    w = GpuWindow()
    w.add(gpu(0, clock_event_reasons=("sw_power_cap",),
              clock_event_counters_ns={"sw_power_cap": 7 * S, "hw_thermal": 0}))
    w.add(gpu(2, clock_event_reasons=("sw_power_cap",),
              clock_event_counters_ns={"sw_power_cap": 7 * S + S // 2, "hw_thermal": S}))
    fractions, source = w.clock_event_fractions()
    assert source == "counters"
    assert fractions == {"sw_power_cap": pytest.approx(0.25), "hw_thermal": pytest.approx(0.5)}


def test_an_implausible_counter_falls_back_to_the_samples():
    """A counter that grows faster than time (a renumbered field id) is not believed."""
    w = GpuWindow()
    w.add(gpu(0, clock_event_reasons=(), clock_event_counters_ns={"sw_power_cap": 0}))
    w.add(gpu(1, clock_event_reasons=(), clock_event_counters_ns={"sw_power_cap": 9 * S}))
    assert w.clock_event_fractions() == ({}, "samples")


def test_energy_per_token_and_tokens_per_watt_sum_the_gpus():
    a, b = GpuWindow(), GpuWindow()
    for t in range(3):
        a.add(gpu(t, energy_mj=t * 300_000))  # 300 W
        b.add(gpu(t, gpu_index=1, energy_mj=t * 100_000))  # 100 W
    out = energy_figures({"0": a, "1": b}, tokens=8000, duration_s=10.0)
    assert out["power_w"] == pytest.approx(400)
    assert out["energy_j_per_token"] == pytest.approx(400 * 10 / 8000)
    assert out["tokens_per_s_per_w"] == pytest.approx(800 / 400)
    assert energy_figures({}, 8000, 10.0)["energy_j_per_token"] is None


def test_server_window_rate_from_its_own_counter():
    w = ServerWindow()
    for t, running, total in [(0, 4, 1000), (1, 6, 1500), (2, 8, 2200)]:
        w.add(ServerSample(t * S, "http://x/metrics", "vllm", "m", requests_running=running,
                           generation_tokens_total=total))
    r = w.result()
    assert r["requests_running"] == {"mean": 6, "max": 8}
    assert r["generation_tokens_per_s"] == pytest.approx(600)


def test_summary_puts_samples_in_their_phase_and_leaves_warmup_out_of_the_run():
    summary = SessionSummary()
    summary.add(Phase(0, 0, 2, "m", "fake", "start", warmup=True))
    summary.add(gpu(0.5, temperature_c=40, energy_mj=0))
    summary.add(gpu(0.9, temperature_c=40, energy_mj=100_000))
    summary.add(HostSample(int(0.5 * S), cpu_percent=10))
    summary.add(Phase(1 * S, 1, 2, "m", "fake", "warm-up done"))
    for t, temp, e in [(1.5, 60, 1_000_000), (2.5, 70, 1_500_000), (3.5, 80, 2_000_000)]:
        summary.add(gpu(t, temperature_c=temp, energy_mj=e))
    summary.add(HostSample(int(1.5 * S), cpu_percent=50))
    summary.add(SessionEnd(4 * S, "completed"))
    result = summary.result()
    warm, measured = result.phases
    assert warm.gpus["0"]["temperature_c"]["mean"] == 40
    assert measured.gpus["0"]["temperature_c"]["mean"] == 70
    assert result.gpus["0"]["temperature_c"]["max"] == 80  # the run: measured phases only
    assert result.gpus["0"]["energy_j"] == pytest.approx(1000)
    assert result.power_w == pytest.approx(500)
    assert result.host["cpu_percent"]["mean"] == 50
    assert warm.host["cpu_percent"]["mean"] == 10


def test_a_stuck_energy_counter_is_not_believed_against_the_power_readings():
    w = GpuWindow()
    for t in range(3):
        w.add(gpu(t, power_w=400.0, energy_mj=5_000))
    r = w.result()
    assert r["power_w"]["mean"] == 400 and r["energy_from"] == "power samples"
    assert r["energy_j"] is None
    idle = GpuWindow()  # a counter that does not move while nothing is drawn is fine
    for t in range(3):
        idle.add(gpu(t, power_w=0.0, energy_mj=5_000))
    assert idle.result()["energy_from"] == "counter" and idle.mean_power_w() == 0


def test_the_summary_table_says_what_the_figures_are():
    from soaktop.tui.text import telemetry_lines

    summary = SessionSummary()
    summary.add(Phase(0, 0, 2, "m", "fake", "start"))
    for t, temp, clock, e, reasons in [(0, 70, 1800, 0, ("sw_power_cap",)),
                                       (1, 80, 1600, 500_000, ()), (2, 75, 2000, 1_000_000, ())]:
        summary.add(gpu(t, temperature_c=temp, sm_clock_mhz=clock, power_w=500.0,
                        energy_mj=e, clock_event_reasons=reasons))
    # 100 tokens, 10 ms apart, all inside the 2 s window: 50 tok/s at 500 W
    summary.add(RequestDone(int(1.5 * S), 0, 0, 0, "fake", "m", 0, 8,
                            tuple(range(10_000, 1_010_000, 10_000)), 1_000_000, "length"))
    for t, running, total in [(0, 2, 1000), (2, 4, 1100)]:
        summary.add(ServerSample(t * S, "http://x/metrics", "vllm", "m", requests_running=running,
                                 requests_waiting=0, kv_cache_usage=0.5,
                                 generation_tokens_total=total))
    summary.add(HostSample(S, cpu_percent=40, soaktop_cpu_percent=90, soaktop_rss_bytes=2**30,
                           watched_cpu_percent=150, watched_rss_bytes=3 * 2**30))
    summary.add(SessionEnd(2 * S, "completed"))
    result = summary.result()
    assert telemetry_lines(result) == [
        "phase 0 GPU0: 75C mean, 80C max (margin to slowdown 7C); SM clock 90% of max"
        " (lowest 80%); 500 W (71% of limit); throttled: sw_power_cap 50% (from samples)",
        "phase 0: 10.000 J/token, 0.10 tok/s per W (500 W for all GPUs)",
        "phase 0 server http://x/metrics m: running 3.0, waiting 0.0, KV cache 50% mean,"
        " 50.0 tok/s by its own count",
        "host: CPU 40% mean; soaktop 90% of a core, RSS 1024 MiB max;"
        " watched process 150% of a core, RSS 3072 MiB max",
    ]


def test_a_counter_a_thousand_times_off_the_readings_is_not_believed():
    w = GpuWindow()
    for t, energy in [(0, 10_000), (1, 10_350), (2, 10_700), (3, 11_050)]:  # "0.35 W"
        w.add(gpu(t, power_w=350.0, energy_mj=energy))
    r = w.result()
    assert r["energy_from"] == "power samples"
    assert r["power_w"]["mean"] == pytest.approx(350.0)
    assert r["energy_j"] is None  # energy is measured by a counter or not at all
