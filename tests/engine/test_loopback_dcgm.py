"""The loopback's simulated GPUs, read back the way soaktop reads a DCGM exporter.

Every figure is checked through soaktop's own parser (``parse_metrics``), so a wrong field
name, label or unit shows as a wrong GpuSample, and against values computed here from the
model's stated formulas (first-order heating, the lower of two clock limits, a KV cache that
fills and stays), not from the code under test. The model is driven on its own clock where a
moment must be exact; the server and the ``soaktop`` command end to end where the wiring is
what is tested.
"""

import json
import math
import os
import subprocess
import sys

import httpx
import pytest

from soaktop.engine.events import GpuSample
from soaktop.engine.loopback import GpuModel, LoopbackServer, Schedule, SimulatedGpus, spawn
from soaktop.engine.records.format import RecordReader
from soaktop.engine.telemetry.prometheus import parse_metrics

MIB = 1 << 20
TAU = 10.0  # seconds: the tests' thermal time constant (a demo's is minutes)
IDLE_C, RISE_C, SPREAD_C, HOT_RISE_C, SLOWDOWN_C = 32.0, 36.0, 0.5, 58.0, 87.0
MAX_MHZ, IDLE_MHZ, IDLE_W, PEAK_W, LIMIT_W = 1980.0, 345.0, 70.0, 740.0, 700.0
WEIGHTS_MIB, KV_MIB, KV_FILL, TOTAL_MIB = 17000, 52000, 60000, 81559


def gpus_at(sim, t_s):
    """The GpuSamples soaktop makes of the simulated exporter's text at ``t_s``."""
    events = parse_metrics(sim.metrics(t_s), 0, "http://127.0.0.1/metrics", "fallback")
    assert all(isinstance(e, GpuSample) for e in events)
    return events


def feed(sim, tokens_per_s, start_s, end_s, chunks_per_s=20):
    """A steady load: ``tokens_per_s`` in ``chunks_per_s`` chunks a second over [start_s,
    end_s) (whole seconds), each second's chunks inside that second."""
    chunk = tokens_per_s // chunks_per_s
    assert chunk * chunks_per_s == tokens_per_s
    for k in range(round((end_s - start_s) * chunks_per_s)):
        sim.served(start_s + k / chunks_per_s, chunk)


def temperature(gpu, load, t_s, hot=7):
    """The first-order model by hand: idle at 0, a steady load from 0 to ``t_s``."""
    rise = HOT_RISE_C if gpu == hot else RISE_C + SPREAD_C * gpu
    return IDLE_C + rise * load * (1 - math.exp(-t_s / TAU))


def test_an_idle_server_keeps_its_gpus_cool_and_idle():
    sim = SimulatedGpus(GpuModel(gpus=8, tau_s=TAU))
    events = gpus_at(sim, 600.0)
    assert [g.gpu_index for g in events] == list(range(8))
    for g in events:
        assert (g.source, g.host) == ("dcgm", "loopback")  # named by its Hostname label
        assert g.temperature_c == IDLE_C and g.slowdown_temperature_c == SLOWDOWN_C
        assert g.sm_clock_mhz == IDLE_MHZ and g.sm_clock_max_mhz == MAX_MHZ
        assert g.power_w == IDLE_W and g.power_limit_w == LIMIT_W
        assert g.clock_event_reasons == ("gpu_idle",)
        assert g.clock_event_counters_ns == {"sw_power_cap": 0, "sw_thermal": 0}
        assert g.memory_used_bytes == WEIGHTS_MIB * MIB  # the weights, no KV cache yet
        assert g.memory_total_bytes == TOTAL_MIB * MIB
        assert g.energy_mj == IDLE_W * 600 * 1000  # 600 steps of 1 s at 70 W, in mJ
        assert g.gpu_utilization_percent == 0.0


def test_a_loaded_server_warms_its_gpus_toward_the_steady_state_with_the_time_constant():
    """Half load (1,500 of 3,000 tokens/s) for 12 s: each GPU is where the first-order model
    puts it, power and energy are what half the load draws, memory what 18,000 tokens fill."""
    sim = SimulatedGpus(GpuModel(gpus=8, tau_s=TAU, busy_tokens_per_s=3000))
    feed(sim, 1500, 0.0, 12.0)
    events = gpus_at(sim, 12.0)
    power = IDLE_W + (PEAK_W - IDLE_W) * 0.5  # 405 W, under the limit: no cap
    for g in events:
        expected = temperature(g.gpu_index, 0.5, 12.0)
        assert abs(g.temperature_c - expected) <= 0.5  # DCGM reports whole degrees
        assert g.sm_clock_mhz == MAX_MHZ
        assert g.power_w == pytest.approx(power)
        assert g.energy_mj == round(power * 12 * 1000)
        assert g.clock_event_reasons == ()
        assert g.gpu_utilization_percent == 50.0
        assert g.memory_used_bytes == round(WEIGHTS_MIB + KV_MIB * 18000 / KV_FILL) * MIB
        assert g.memory_total_bytes == TOTAL_MIB * MIB
    temps = [g.temperature_c for g in events]
    assert temps[7] > temps[6] > IDLE_C  # the hot GPU leads; every GPU has warmed
    # still warming at 12 s (a time constant of 10 s): later it is warmer, never past steady
    feed(sim, 1500, 12.0, 100.0)
    later = gpus_at(sim, 100.0)
    for g, before in zip(later, events):
        assert g.temperature_c > before.temperature_c
        assert abs(g.temperature_c - temperature(g.gpu_index, 0.5, 100.0)) <= 0.5


def test_processes_sharing_a_ledger_heat_their_gpus_with_the_load_of_all(tmp_path):
    """Two processes of one loopback (``--processes 2``), each streaming 750 tokens/s: the
    GPUs either one serves are those of 1,500 tokens/s, half load, as the first-order model
    puts them by hand; a process's own share alone would be a quarter."""
    from soaktop.engine.loopback.shared import Shared, TokenLedger

    model = GpuModel(gpus=8, tau_s=TAU, busy_tokens_per_s=3000)
    ledgers = [TokenLedger(Shared(tmp_path, i, 2, 0)) for i in (0, 1)]
    try:
        sims = [SimulatedGpus(model, ledger) for ledger in ledgers]
        for sim in sims:
            feed(sim, 750, 0.0, 12.0, chunks_per_s=25)
        for sim in sims:
            for g in gpus_at(sim, 12.0):
                assert abs(g.temperature_c - temperature(g.gpu_index, 0.5, 12.0)) <= 0.5
                assert g.gpu_utilization_percent == 50.0
    finally:
        for ledger in ledgers:
            ledger.close()


def test_a_ledger_cell_of_an_older_step_reads_as_no_tokens(tmp_path):
    """Each process's column wraps after LEDGER_STEPS steps: a cell holding another step's
    count is stale and counts nothing, in the writer's column or another's."""
    from soaktop.engine.loopback.shared import LEDGER_STEPS, Shared, TokenLedger

    ledgers = [TokenLedger(Shared(tmp_path, i, 2, 0)) for i in (0, 1)]
    try:
        ledgers[0].add(5, 10)
        ledgers[1].add(5, 7)
        ledgers[1].add(5, 1)
        assert [ledger.total(5) for ledger in ledgers] == [18, 18]  # every column, summed
        ledgers[0].add(5 + LEDGER_STEPS, 3)  # the same cell, a wrap later: 10 is gone
        assert ledgers[1].total(5 + LEDGER_STEPS) == 3
        assert ledgers[1].total(5) == 8  # only column 1 still holds step 5
        assert ledgers[0].total(6) == 0
    finally:
        for ledger in ledgers:
            ledger.close()


def test_the_hot_gpu_throttles_only_after_it_crosses_its_slowdown_threshold():
    """Full load: every GPU is power-capped (740 W asked, 700 allowed: clock 1980 x 700/740);
    the hot one crosses 87 C at 10 ln(58/3) = 29.6 s, then its thermal limit takes the clock
    below the capped neighbours' and the sw_thermal reason and counter start."""
    sim = SimulatedGpus(GpuModel(gpus=8, tau_s=TAU, busy_tokens_per_s=3000))
    feed(sim, 3000, 0.0, 60.0)
    crossing = -TAU * math.log(1 - (SLOWDOWN_C - IDLE_C) / HOT_RISE_C)
    assert 29 < crossing < 30
    capped_mhz = MAX_MHZ * LIMIT_W / PEAK_W
    before = gpus_at(sim, 29.0)
    for g in before:
        assert g.temperature_c <= SLOWDOWN_C  # the hot one at 86.8, reported as 87
        assert g.clock_event_reasons == ("sw_power_cap",)
        assert g.sm_clock_mhz == round(capped_mhz) and g.power_w == pytest.approx(LIMIT_W)
        assert g.clock_event_counters_ns == {"sw_power_cap": 29 * 10**9, "sw_thermal": 0}
    after = gpus_at(sim, 60.0)
    hot = after[7]
    hot_c = temperature(7, 1.0, 60.0)
    thermal_ratio = 1 - 0.06 * (hot_c - SLOWDOWN_C)  # 2.86 C over: 0.83 of the maximum
    assert abs(hot.temperature_c - hot_c) <= 0.5 and hot.temperature_c > SLOWDOWN_C
    assert hot.clock_event_reasons == ("sw_thermal",)  # heat, not power, holds it now
    assert abs(hot.sm_clock_mhz - MAX_MHZ * thermal_ratio) <= 0.5
    assert hot.sm_clock_mhz < capped_mhz - 200
    assert hot.power_w == pytest.approx(PEAK_W * thermal_ratio, abs=1e-5)
    assert hot.power_w < LIMIT_W
    # steps ending above 87 C: those ending at 30 s through 60 s
    assert hot.clock_event_counters_ns["sw_thermal"] == 31 * 10**9
    assert hot.memory_used_bytes == (WEIGHTS_MIB + KV_MIB) * MIB  # 180,000 tokens: KV full
    for g in after[:7]:
        assert g.temperature_c < SLOWDOWN_C and g.clock_event_reasons == ("sw_power_cap",)
        assert g.sm_clock_mhz == round(capped_mhz)
    # the load stops: the GPUs idle and cool, memory stays where the KV cache took it
    cool = gpus_at(sim, 200.0)
    for g in cool:
        assert g.temperature_c == IDLE_C and g.sm_clock_mhz == IDLE_MHZ
        assert g.clock_event_reasons == ("gpu_idle",)
        assert g.memory_used_bytes == (WEIGHTS_MIB + KV_MIB) * MIB


def test_what_a_scrape_sees_does_not_depend_on_when_it_scraped():
    """Scraped every 0.3 s or only at the end, the same load gives the same text."""
    often, once = (SimulatedGpus(GpuModel(gpus=2, tau_s=TAU)) for _ in range(2))
    for k in range(400):
        t = k * 0.05
        for sim in (often, once):
            sim.served(t, 40 + k % 7)
        if k % 6 == 0:
            often.metrics(t)
    assert often.metrics(20.0) == once.metrics(20.0)


def test_the_hot_gpu_is_chosen_by_index_and_a_bad_model_is_refused():
    sim = SimulatedGpus(GpuModel(gpus=4, tau_s=TAU, hot_gpu=1))
    feed(sim, 3000, 0.0, 60.0)
    temps = [g.temperature_c for g in gpus_at(sim, 60.0)]
    assert temps[1] > SLOWDOWN_C > max(temps[:1] + temps[2:])
    for bad in ({"gpus": 0}, {"hot_gpu": 8}, {"tau_s": 0}, {"weights_mib": 80000}):
        with pytest.raises(ValueError):
            GpuModel(**bad)


async def test_the_server_serves_its_gpus_at_metrics_heated_by_what_it_streams():
    schedule = Schedule(ttft_ms=1, itl_ms=1, tokens=50)
    model = GpuModel(gpus=8, tau_s=0.5, step_s=0.1, busy_tokens_per_s=500)
    async with LoopbackServer(schedule, gpus=model) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            idle = await client.get("/metrics")
            body = {"model": "m", "prompt": "hi", "stream": True}
            for _ in range(10):  # ~500 tokens/s for ~1 s: busy
                await client.post("/v1/completions", json=body)
            warm = await client.get("/metrics")
    assert idle.status_code == 200 and idle.headers["content-type"].startswith("text/plain")
    cold = parse_metrics(idle.text, 0, server.url, "x")
    hot = parse_metrics(warm.text, 0, server.url, "x")
    assert len(cold) == len(hot) == 8
    assert all(g.temperature_c == IDLE_C for g in cold)
    assert all(g.temperature_c > IDLE_C + 5 for g in hot)
    assert all(g.memory_used_bytes > WEIGHTS_MIB * MIB for g in hot)


async def test_without_gpus_there_is_no_metrics_route():
    async with LoopbackServer(Schedule()) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/metrics")).status_code == 404


def test_soaktop_run_records_eight_gpus_scraped_from_the_loopback(tmp_path):
    """End to end: ``soaktop run --telemetry prom=<loopback>/metrics`` against the loopback it
    loads, which serves 8 GPUs; the record holds every GPU's samples, warming, hot one first."""
    record = tmp_path / "run.jsonl"
    model = GpuModel(gpus=8, tau_s=2.0, busy_tokens_per_s=400)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    with spawn(Schedule(ttft_ms=5, itl_ms=5, tokens=32, model="loopback"), gpus=model) as url:
        run = subprocess.run(
            [sys.executable, "-m", "soaktop.tui.cli", "run", "--headless", "--backend",
             "openai", "--url", url, "--model", "loopback", "--concurrency", "4",
             "--duration", "5s", "--output-tokens", "32", "--json", "--record", str(record),
             "--telemetry", f"prom={url}/metrics"],
            capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    samples = [e for e in RecordReader(record).events() if isinstance(e, GpuSample)]
    by_gpu = {}
    for s in samples:
        by_gpu.setdefault(s.gpu_index, []).append(s)
    assert sorted(by_gpu) == list(range(8))
    assert {s.host for s in samples} == {"loopback"}
    for series in by_gpu.values():
        assert len(series) >= 3  # 1 Hz over a 5 s run
        assert series[-1].temperature_c > series[0].temperature_c
        last = series[-1]
        for field in ("temperature_c", "slowdown_temperature_c", "sm_clock_mhz",
                      "sm_clock_max_mhz", "power_w", "power_limit_w", "memory_used_bytes",
                      "memory_total_bytes", "energy_mj", "clock_event_reasons"):
            assert getattr(last, field) is not None, field
    assert by_gpu[7][-1].temperature_c > by_gpu[0][-1].temperature_c
    result = json.loads(run.stdout)
    assert set(result["gpus"]) == {f"loopback/{i}" for i in range(8)}
